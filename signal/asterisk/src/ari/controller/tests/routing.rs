//! What happens to a channel that enters the application: routing `Continue` and `Dial`
//! (bridged, busy, refused, failed), and channels no call claims.

use super::harness::*;

/// A browser's call in Stasis with routing `Dial`: returns the peer's channel id.
fn dialing(c: &mut Controller, now: Instant) -> String {
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["201"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(c);
    let sent = paths(&outs);
    assert_eq!(sent[0], "POST /channels/c1/ring");
    let (head, peer) = sent[1].split_once("&channelId=").unwrap();
    assert_eq!(
        head,
        "POST /channels?endpoint=PJSIP/201&app=icegate&appArgs=dialed&callerId=Alice%20%3C100%3E&timeout=30"
    );
    answer_all(c, &outs[..1], 204, "", now);
    let peer_json = channel(peer, "Down", "sip-peer");
    answer_all(c, &outs[1..], 200, &peer_json.to_string(), now);
    peer.to_owned()
}

fn outs_channel_id(outs: &[Output]) -> String {
    let (_, _, path) = &requests(outs)[0];
    path.split_once("&channelId=").unwrap().1.to_owned()
}

#[test]
fn routing_continue_sends_the_call_on_at_once() {
    let now = t0();
    let config = ControllerConfig {
        routing: Routing::Continue {
            context: "internal".into(),
            priority: 1,
        },
        ..ControllerConfig::default()
    };
    let mut c = connected(config, now);
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["201"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        ["POST /channels/c1/continue?context=internal&extension=201&priority=1"]
    );
    answer_all(&mut c, &outs, 204, "", now);
    c.handle_event(
        &event("StasisEnd", channel("c1", "Ring", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    assert_eq!(events(&drain(&mut c)).last(), Some(&CallEvent::Released));
    assert_nothing_left(&c);
}

#[test]
fn routing_dial_bridges_the_answered_peer_and_cleans_up_on_hangup() {
    let now = t0();
    let mut c = connected(dial_config(), now);
    let peer = dialing(&mut c, now);
    c.handle_event(
        &event(
            "ChannelStateChange",
            channel(&peer, "Ringing", "sip-peer"),
            json!({}),
        ),
        now,
    )
    .unwrap();
    assert!(events(&drain(&mut c)).contains(&CallEvent::Ringing));

    c.handle_event(
        &event(
            "StasisStart",
            channel(&peer, "Up", "sip-peer"),
            json!({"args": ["dialed"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    let sent = paths(&outs);
    assert_eq!(sent[0], "POST /channels/c1/answer");
    let bridge = sent[1]
        .strip_prefix("POST /bridges?type=mixing&bridgeId=")
        .unwrap()
        .to_owned();
    assert_eq!(c.bridge_count(), 1);
    answer_all(&mut c, &outs[..1], 204, "", now);
    answer_all(
        &mut c,
        &outs[1..],
        200,
        &json!({"id": bridge, "bridge_type": "mixing"}).to_string(),
        now,
    );
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        [format!(
            "POST /bridges/{bridge}/addChannel?channel=c1,{peer}"
        )]
    );
    answer_all(&mut c, &outs, 204, "", now);
    c.handle_event(
        &event(
            "ChannelStateChange",
            channel("c1", "Up", "sip-1"),
            json!({}),
        ),
        now,
    )
    .unwrap();
    assert!(events(&drain(&mut c)).contains(&CallEvent::Answered));

    // Keys pressed on the dialed side are the call's DTMF; the browser's own (received on its
    // channel) are not sent back to it.
    for id in ["c1", peer.as_str()] {
        let dtmf = event(
            "ChannelDtmfReceived",
            channel(id, "Up", "sip-x"),
            json!({"digit": "7", "duration_ms": 100}),
        );
        c.handle_event(&dtmf, now).unwrap();
    }
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::Dtmf {
            digit: '7',
            duration_ms: 100
        }]
    );

    // The browser hangs up (SIP BYE): its channel leaves; the peer and the bridge go too.
    c.handle_event(
        &event(
            "ChannelHangupRequest",
            channel("c1", "Up", "sip-1"),
            json!({}),
        ),
        now,
    )
    .unwrap();
    c.handle_event(
        &event("StasisEnd", channel("c1", "Up", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        [
            format!("DELETE /channels/{peer}?reason=normal"),
            format!("DELETE /bridges/{bridge}")
        ]
    );
    assert_eq!(
        events(&outs),
        [CallEvent::HungUp {
            cause: None,
            cause_txt: None
        }]
    );
    answer_all(&mut c, &outs, 204, "", now);
    assert_nothing_left(&c);
}

#[test]
fn routing_dial_passes_a_busy_peer_on() {
    let now = t0();
    let mut c = connected(dial_config(), now);
    let peer = dialing(&mut c, now);
    c.handle_event(
        &event(
            "ChannelDestroyed",
            channel(&peer, "Down", "sip-peer"),
            json!({"cause": 17, "cause_txt": "User busy"}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["DELETE /channels/c1?reason=busy"]);
    assert_eq!(
        events(&outs),
        [CallEvent::HungUp {
            cause: Some(17),
            cause_txt: Some("User busy".into())
        }]
    );
    answer_all(&mut c, &outs, 204, "", now);
    assert_nothing_left(&c);
}

#[test]
fn routing_dial_refuses_a_bad_extension() {
    let now = t0();
    let mut c = connected(dial_config(), now);
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["2&01"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["DELETE /channels/c1?reason=unallocated"]);
    answer_all(&mut c, &outs, 204, "", now);
    c.handle_event(
        &event("StasisEnd", channel("c1", "Ring", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    assert!(matches!(
        events(&drain(&mut c)).last(),
        Some(CallEvent::HungUp { .. })
    ));
    assert_nothing_left(&c);
}

#[test]
fn a_failed_dial_ends_the_call() {
    let now = t0();
    let mut c = connected(dial_config(), now);
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["201"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    answer_all(&mut c, &outs[..1], 204, "", now);
    answer_all(
        &mut c,
        &outs[1..],
        400,
        r#"{"message":"Invalid endpoint"}"#,
        now,
    );
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["DELETE /channels/c1?reason=failure"]);
    answer_all(&mut c, &outs, 204, "", now);
    assert_nothing_left(&c);
}

#[test]
fn an_early_stasis_start_waits_to_be_claimed_then_is_hung_up() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.handle_event(
        &event("StasisStart", channel("c1", "Ring", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.channel_count(), 1);
    c.expect_call(K, "sip-1", now).unwrap();
    assert_eq!(paths(&drain(&mut c)), ["POST /channels/c1/ring"]);

    // Nobody claims this one.
    c.handle_event(
        &event("StasisStart", channel("c2", "Ring", "sip-2"), json!({})),
        now,
    )
    .unwrap();
    let later = now + Duration::from_secs(5);
    assert!(c.poll_timeout().unwrap() <= later);
    c.handle_timeout(later);
    let outs = drain(&mut c);
    let sent = paths(&outs);
    assert!(
        sent.contains(&"DELETE /channels/c2?reason=normal".to_owned()),
        "{sent:?}"
    );
    assert_eq!(c.channel_count(), 1);
}

#[test]
fn a_channel_created_for_an_ended_call_is_hung_up() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.originate(K, OriginateArgs::default(), now).unwrap();
    let outs = drain(&mut c);
    let id = outs_channel_id(&outs);
    c.forget(K, now);
    answer_all(
        &mut c,
        &outs,
        200,
        &channel(&id, "Down", "x").to_string(),
        now,
    );
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        [format!("DELETE /channels/{id}?reason=normal")]
    );
    answer_all(&mut c, &outs, 204, "", now);
    assert_nothing_left(&c);
}
