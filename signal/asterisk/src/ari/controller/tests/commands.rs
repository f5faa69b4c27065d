//! The call layer's commands as REST requests: refusals, transfers (playbacks stopped first,
//! the call coming back into Stasis), request timeouts.

use super::harness::*;

fn playback(id: &str, state: &str) -> String {
    json!({"id": id, "media_uri": "tone:ring;tonezone=us", "target_uri": "channel:c1",
           "language": "en", "state": state})
    .to_string()
}

#[test]
fn commands_become_requests_and_bad_ones_are_refused() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.send_dtmf(K, "12#", now).unwrap();
    c.play(K, "sound:hello-world", now).unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        [
            "POST /channels/c1/dtmf?dtmf=12%23",
            "POST /channels/c1/play?media=sound:hello-world"
        ]
    );
    answer_all(&mut c, &outs[..1], 204, "", now);
    // A failed playback is reported; the call goes on.
    answer_all(&mut c, &outs[1..], 500, r#"{"message":"boom"}"#, now);
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::CommandFailed {
            command: "play",
            error: RestError::Status {
                status: 500,
                message: "boom".into()
            }
        }]
    );
    assert_eq!(
        c.send_dtmf(K, "12&x", now),
        Err(CommandError::Invalid("dtmf"))
    );
    assert_eq!(
        c.play(K, "http://x", now),
        Err(CommandError::Invalid("media"))
    );
    assert_eq!(
        c.transfer(K, "6 0", now),
        Err(CommandError::Invalid("extension"))
    );
    assert_eq!(
        c.send_dtmf(CallKey(99), "1", now),
        Err(CommandError::UnknownCall)
    );
    assert_eq!(
        c.expect_call(K, "sip-2", now),
        Err(CommandError::DuplicateCall)
    );
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.call_count(), 1);
}

#[test]
fn transfer_continues_in_the_dialplan_and_releases_the_call() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.transfer(K, "600", now).unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        ["POST /channels/c1/continue?context=from-icegate&extension=600&priority=1"]
    );
    answer_all(&mut c, &outs, 204, "", now);
    c.handle_event(
        &event("StasisEnd", channel("c1", "Up", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    assert_eq!(events(&drain(&mut c)), [CallEvent::Released]);
    assert_nothing_left(&c);
}

/// A tone plays until stopped and Asterisk runs `continue` only after it: a transfer stops the
/// call's playbacks first, those known from the play reply or PlaybackStarted, and one whose
/// reply comes after the transfer at once. Finished ones are not stopped.
#[test]
fn a_transfer_stops_the_playbacks_first() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.play(K, "tone:ring;tonezone=us", now).unwrap();
    c.play(K, "sound:hello", now).unwrap();
    let outs = drain(&mut c);
    answer_all(&mut c, &outs[..1], 201, &playback("pb1", "queued"), now);
    answer_all(&mut c, &outs[1..], 201, &playback("pb2", "queued"), now);
    let started = |id: &str, kind: &str, state: &str| {
        let mut e: serde_json::Value =
            serde_json::from_str(&event(kind, json!({}), json!({}))).unwrap();
        e.as_object_mut().unwrap().remove("channel");
        e["playback"] = serde_json::from_str(&playback(id, state)).unwrap();
        e.to_string()
    };
    // pb3 was started by someone else on this channel; pb2 is over.
    for text in [
        started("pb1", "PlaybackStarted", "playing"),
        started("pb3", "PlaybackStarted", "playing"),
        started("pb2", "PlaybackFinished", "done"),
    ] {
        c.handle_event(&text, now).unwrap();
    }
    assert!(drain(&mut c).is_empty());
    c.transfer(K, "600", now).unwrap();
    assert_eq!(
        paths(&drain(&mut c)),
        [
            "DELETE /playbacks/pb1",
            "DELETE /playbacks/pb3",
            "POST /channels/c1/continue?context=from-icegate&extension=600&priority=1"
        ]
    );

    // A play whose reply comes after the transfer is stopped then.
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.play(K, "tone:ring;tonezone=us", now).unwrap();
    let play = drain(&mut c);
    c.transfer(K, "600", now).unwrap();
    let transfer = drain(&mut c);
    assert_eq!(paths(&transfer).len(), 1, "{transfer:?}");
    answer_all(&mut c, &play, 201, &playback("pb9", "queued"), now);
    assert_eq!(paths(&drain(&mut c)), ["DELETE /playbacks/pb9"]);
}

#[test]
fn a_transferred_call_that_enters_stasis_again_is_the_same_call() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.transfer(K, "701", now).unwrap();
    let outs = drain(&mut c);
    answer_all(&mut c, &outs, 204, "", now);
    let up = channel("c1", "Up", "sip-1");
    c.handle_event(&event("StasisEnd", up.clone(), json!({})), now)
        .unwrap();
    assert_eq!(events(&drain(&mut c)), [CallEvent::Released]);
    // 701 runs Stasis(icegate,701): the channel is back, up, and is the call again.
    c.handle_event(
        &event("StasisStart", up.clone(), json!({"args": ["701"]})),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    assert_eq!(
        events(&outs)[0],
        CallEvent::Linked {
            channel: "c1".into(),
            protocol_id: Some("sip-1".into())
        }
    );
    assert!(paths(&outs).is_empty(), "answered already: {outs:?}");
    assert_eq!((c.call_count(), c.channel_count()), (1, 1));
    // Not an unclaimed channel: nothing is hung up after the claim timeout.
    c.handle_timeout(now + Duration::from_secs(60));
    assert!(drain(&mut c).is_empty());
    c.send_dtmf(K, "1", now).unwrap();
    assert_eq!(paths(&drain(&mut c)), ["POST /channels/c1/dtmf?dtmf=1"]);

    // Transferred again and the SIP side ends: a later StasisStart of the channel is a
    // stranger's, held unclaimed and then hung up.
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.transfer(K, "701", now).unwrap();
    let outs = drain(&mut c);
    answer_all(&mut c, &outs, 204, "", now);
    c.handle_event(&event("StasisEnd", up.clone(), json!({})), now)
        .unwrap();
    drain(&mut c);
    c.forget(K, now);
    c.handle_event(&event("StasisStart", up, json!({"args": ["701"]})), now)
        .unwrap();
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(now + Duration::from_secs(60));
    assert_eq!(paths(&drain(&mut c)), ["DELETE /channels/c1?reason=normal"]);
}

#[test]
fn requests_time_out() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.hangup(K, HangupReason::Normal, now).unwrap();
    assert_eq!(paths(&drain(&mut c)), ["DELETE /channels/c1?reason=normal"]);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(10)));
    c.handle_timeout(now + Duration::from_secs(9));
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::HungUp {
            cause: None,
            cause_txt: Some("hangup failed: no response in time".into())
        }]
    );
    assert_nothing_left(&c);
    assert_eq!(c.poll_timeout(), None);
}
