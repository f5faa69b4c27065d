use std::collections::VecDeque;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::ari::fixtures::{self, Message};

const K: CallKey = CallKey(7);

fn t0() -> Instant {
    Instant::now()
}

fn drain(c: &mut Controller) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// A controller whose events connection is up, with nothing left to drain.
fn connected(config: ControllerConfig, now: Instant) -> Controller {
    let mut c = Controller::new(config, 1);
    assert_eq!(drain(&mut c), vec![Output::Connect]);
    c.connected(now);
    assert!(drain(&mut c).is_empty());
    c
}

fn requests(outputs: &[Output]) -> Vec<(RequestId, &'static str, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Request {
                id, method, path, ..
            } => Some((*id, method.as_str(), path.clone())),
            _ => None,
        })
        .collect()
}

fn paths(outputs: &[Output]) -> Vec<String> {
    requests(outputs)
        .into_iter()
        .map(|(_, m, p)| format!("{m} {p}"))
        .collect()
}

fn events(outputs: &[Output]) -> Vec<CallEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Call { event, .. } => Some(event.clone()),
            _ => None,
        })
        .collect()
}

fn assert_nothing_left(c: &Controller) {
    assert_eq!(
        (
            c.call_count(),
            c.channel_count(),
            c.bridge_count(),
            c.pending_requests()
        ),
        (0, 0, 0, 0)
    );
}

fn channel(id: &str, state: &str, protocol_id: &str) -> serde_json::Value {
    json!({"id": id, "name": "PJSIP/icegate-00000009", "state": state, "protocol_id": protocol_id,
           "caller": {"name": "Alice", "number": "100"}, "connected": {"name": "", "number": ""},
           "dialplan": {"context": "from-icegate", "exten": "201", "priority": 1,
                        "app_name": "Stasis", "app_data": "icegate,201"}})
}

fn event(kind: &str, channel: serde_json::Value, extra: serde_json::Value) -> String {
    let mut e = json!({"type": kind, "timestamp": "2026-11-24T20:24:55.021+0000",
                       "application": "icegate", "channel": channel});
    for (k, v) in extra.as_object().unwrap() {
        e[k] = v.clone();
    }
    e.to_string()
}

/// Answers every request in `outputs` with `status` and `body`.
fn answer_all(c: &mut Controller, outputs: &[Output], status: u16, body: &str, now: Instant) {
    for (id, _, _) in requests(outputs) {
        c.handle_response(id, status, body, now);
    }
}

/// Replays one recording against the controller. Recorded requests the controller does not
/// make itself are made by `command` (the call layer's part); `skip` names the recorder's own
/// diagnostics. `rename` maps the recorded channel id to the one the controller chose.
fn replay(
    c: &mut Controller,
    file: &str,
    mut command: impl FnMut(&mut Controller, &str, &str, Instant),
    skip: &[&str],
    now: Instant,
) -> Vec<CallEvent> {
    let flow = fixtures::load(file);
    let mut outstanding: VecDeque<(RequestId, &'static str, String)> = VecDeque::new();
    let mut seen = Vec::new();
    let mut waiting: Option<RequestId> = None;
    let mut skipping = false;
    let mut rename: Option<(String, String)> = None;
    let fix = |text: &str, rename: &Option<(String, String)>| match rename {
        Some((from, to)) => text.replace(from.as_str(), to.as_str()),
        None => text.to_owned(),
    };
    for message in flow.messages {
        match message {
            Message::Event(text) => {
                c.handle_event(&fix(&text, &rename), now).unwrap();
            }
            Message::Request { method, path } => {
                if skip.contains(&path.as_str()) {
                    skipping = true;
                    continue;
                }
                let path = fix(&path, &rename);
                if outstanding.is_empty() {
                    command(c, &method, &path, now);
                    let outs = drain(c);
                    seen.extend(events(&outs));
                    outstanding.extend(requests(&outs));
                }
                let (id, m, p) = outstanding
                    .pop_front()
                    .unwrap_or_else(|| panic!("{file}: controller did not send {method} {path}"));
                assert_eq!(m, method, "{file}");
                if path.starts_with("/channels?") {
                    // The controller names the channels it originates; the recorder did not.
                    let (recorded, ours) = p.split_once("&channelId=").expect("a channelId");
                    assert_eq!(recorded, path, "{file}");
                    let recorded_id = flow_channel_id(file);
                    rename = Some((recorded_id, ours.to_owned()));
                } else {
                    assert_eq!(p, path, "{file}");
                }
                waiting = Some(id);
            }
            Message::Response { status, body } => {
                if std::mem::take(&mut skipping) {
                    continue;
                }
                let id = waiting.take().expect("a response to a request");
                c.handle_response(id, status, &fix(&body, &rename), now);
            }
        }
        let outs = drain(c);
        seen.extend(events(&outs));
        outstanding.extend(requests(&outs));
    }
    assert!(outstanding.is_empty(), "{file}: unanswered {outstanding:?}");
    seen
}

fn flow_channel_id(file: &str) -> String {
    match file {
        "asterisk-calls-browser.json" => "1795551898.2".into(),
        "asterisk-call-rejected.json" => "1795551899.3".into(),
        other => panic!("no originate in {other}"),
    }
}

#[test]
fn replays_a_browser_call_answered_in_stasis() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.expect_call(K, "f18b6cd4179effe0e4277c58", now).unwrap();
    let seen = replay(
        &mut c,
        "browser-calls-stasis.json",
        |c, method, path, now| match (method, path) {
            ("POST", p) if p.contains("/play?media=") => {
                c.play(K, p.split_once("media=").unwrap().1, now).unwrap()
            }
            ("DELETE", _) => c.hangup(K, HangupReason::Normal, now).unwrap(),
            other => panic!("unexpected recorded request {other:?}"),
        },
        &["/channels/1795551895.1"],
        now,
    );
    // The recorded ChannelDtmfReceived (1, 2, #) are the SIP client's own digits, received by
    // Asterisk on the call's channel: not reported back to the caller.
    assert_eq!(
        seen,
        vec![
            CallEvent::Linked {
                channel: "1795551895.1".into(),
                protocol_id: Some("f18b6cd4179effe0e4277c58".into())
            },
            CallEvent::StateChanged(ChannelState::Ring),
            CallEvent::Answered,
            CallEvent::StateChanged(ChannelState::Up),
            CallEvent::HungUp {
                cause: Some(32),
                cause_txt: None
            },
        ]
    );
    assert_nothing_left(&c);
}

#[test]
fn replays_a_call_to_a_browser() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    let seen = replay(
        &mut c,
        "asterisk-calls-browser.json",
        |c, method, path, now| match (method, path) {
            ("POST", p) if p.starts_with("/channels?") => {
                let args = OriginateArgs {
                    app_args: Some("to-browser".into()),
                    caller_id: Some("Reception <100>".into()),
                };
                c.originate(K, args, now).unwrap()
            }
            ("POST", p) if p.contains("/play?media=") => {
                c.play(K, p.split_once("media=").unwrap().1, now).unwrap()
            }
            other => panic!("unexpected recorded request {other:?}"),
        },
        &[],
        now,
    );
    let CallEvent::Linked {
        channel,
        protocol_id,
    } = &seen[0]
    else {
        panic!("{seen:?}")
    };
    assert!(channel.starts_with("icegate-"));
    // The Call-ID of the INVITE Asterisk sends to icegate's SIP UA for this channel.
    assert_eq!(
        protocol_id.as_deref(),
        Some("40fd80cc-5cc7-4a04-8c62-7645b169efe2")
    );
    assert_eq!(
        seen[1..],
        [
            CallEvent::Ringing,
            CallEvent::StateChanged(ChannelState::Ringing),
            CallEvent::Answered,
            CallEvent::StateChanged(ChannelState::Up),
            CallEvent::HungUp {
                cause: Some(0),
                cause_txt: Some("Unknown".into())
            },
        ]
    );
    assert_nothing_left(&c);
}

#[test]
fn replays_a_call_to_a_browser_that_is_busy() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    let seen = replay(
        &mut c,
        "asterisk-call-rejected.json",
        |c, _, _, now| c.originate(K, OriginateArgs::default(), now).unwrap(),
        &[],
        now,
    );
    assert!(matches!(seen[0], CallEvent::Linked { .. }));
    assert_eq!(
        seen[1..],
        [CallEvent::HungUp {
            cause: Some(17),
            cause_txt: Some("User busy".into())
        }]
    );
    assert_nothing_left(&c);
}

/// A browser's call linked and answered in Stasis (routing `Answer`), nothing left to drain.
fn answered_call(c: &mut Controller, now: Instant) {
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event(
            "StasisStart",
            channel("c1", "Ring", "sip-1"),
            json!({"args": ["700"]}),
        ),
        now,
    )
    .unwrap();
    let outs = drain(c);
    assert_eq!(paths(&outs), ["POST /channels/c1/ring"]);
    answer_all(c, &outs, 204, "", now);
    let outs = drain(c);
    assert_eq!(paths(&outs), ["POST /channels/c1/answer"]);
    answer_all(c, &outs, 204, "", now);
    c.handle_event(
        &event(
            "ChannelStateChange",
            channel("c1", "Up", "sip-1"),
            json!({}),
        ),
        now,
    )
    .unwrap();
    assert!(events(&drain(c)).contains(&CallEvent::Answered));
}

#[test]
fn the_recorded_404_on_answer_ends_the_call() {
    let basics = fixtures::load("ari-basics.json");
    let (_, path, status, body) = basics
        .exchanges()
        .into_iter()
        .find(|(_, _, status, _)| *status == 404)
        .unwrap();
    assert_eq!(path, "/channels/nope/answer");
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.expect_call(K, "sip-1", now).unwrap();
    c.handle_event(
        &event("StasisStart", channel("nope", "Ring", "sip-1"), json!({})),
        now,
    )
    .unwrap();
    let outs = drain(&mut c);
    answer_all(&mut c, &outs, 204, "", now);
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["POST /channels/nope/answer"]);
    answer_all(&mut c, &outs, status, &body, now);
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::HungUp {
            cause: None,
            cause_txt: Some("not found: Channel not found".into())
        }]
    );
    assert_nothing_left(&c);
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

fn playback(id: &str, state: &str) -> String {
    json!({"id": id, "media_uri": "tone:ring;tonezone=us", "target_uri": "channel:c1",
           "language": "en", "state": state})
    .to_string()
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

fn dial_config() -> ControllerConfig {
    ControllerConfig {
        routing: Routing::Dial {
            endpoint: "PJSIP/{exten}".into(),
            timeout: 30,
        },
        ..ControllerConfig::default()
    }
}

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

fn outs_channel_id(outs: &[Output]) -> String {
    let (_, _, path) = &requests(outs)[0];
    path.split_once("&channelId=").unwrap().1.to_owned()
}

#[test]
fn reconnect_backoff_and_reconciliation() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    // A second call still being set up: it cannot survive the loss.
    c.expect_call(CallKey(8), "sip-9", now).unwrap();

    c.connection_lost(now);
    let outs = drain(&mut c);
    assert_eq!(
        outs,
        [Output::Call {
            call: CallKey(8),
            event: CallEvent::HungUp {
                cause: None,
                cause_txt: Some("ARI connection lost".into())
            }
        }]
    );
    assert!(!c.is_connected());
    assert_eq!(
        c.expect_call(CallKey(9), "sip-10", now),
        Err(CommandError::NotConnected)
    );
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_millis(250)));
    c.handle_timeout(now + Duration::from_millis(250));
    assert_eq!(drain(&mut c), [Output::Connect]);
    // That attempt fails: the next waits twice as long.
    let t1 = now + Duration::from_millis(300);
    c.connection_lost(t1);
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_millis(500)));
    c.handle_timeout(t1 + Duration::from_millis(500));
    assert_eq!(drain(&mut c), [Output::Connect]);

    c.connected(t1);
    let outs = drain(&mut c);
    assert_eq!(paths(&outs), ["GET /channels"]);
    let list = json!([channel("c1", "Up", "sip-1")]).to_string();
    answer_all(&mut c, &outs, 200, &list, t1);
    let outs = drain(&mut c);
    assert_eq!(
        paths(&outs),
        ["POST /applications/icegate/subscription?eventSource=channel:c1"]
    );
    answer_all(&mut c, &outs, 200, "{}", t1);
    assert_eq!(c.call_count(), 1);
    assert_eq!(c.poll_timeout(), None);

    // Lost again; this time Asterisk restarted and the channel is gone (the recorded empty list).
    let (_, _, status, body) = fixtures::load("ari-basics.json")
        .exchanges()
        .into_iter()
        .find(|(_, p, _, _)| p == "/channels")
        .unwrap();
    c.connection_lost(t1);
    c.handle_timeout(t1 + Duration::from_millis(250));
    assert_eq!(drain(&mut c), [Output::Connect]);
    c.connected(t1);
    let outs = drain(&mut c);
    answer_all(&mut c, &outs, status, &body, t1);
    assert_eq!(
        events(&drain(&mut c)),
        [CallEvent::HungUp {
            cause: None,
            cause_txt: Some("channel gone after ARI reconnect".into())
        }]
    );
    assert_nothing_left(&c);
}

#[test]
fn answered_calls_end_when_the_grace_runs_out() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    answered_call(&mut c, now);
    c.connection_lost(now);
    assert!(drain(&mut c).is_empty());
    let mut t = now;
    // Asterisk stays away: attempts keep failing until the grace is over.
    while c.call_count() > 0 {
        t = c.poll_timeout().unwrap();
        c.handle_timeout(t);
        for o in drain(&mut c) {
            if o == Output::Connect {
                c.connection_lost(t);
            } else if let Output::Request { id, .. } = o {
                c.handle_response(id, 204, "", t);
            }
        }
    }
    assert_eq!(t, now + Duration::from_secs(30));
    assert_eq!(c.channel_count(), 0);
}

#[test]
fn application_replaced_is_reported() {
    let now = t0();
    let mut c = connected(ControllerConfig::default(), now);
    c.handle_event(
        r#"{"type":"ApplicationReplaced","application":"icegate"}"#,
        now,
    )
    .unwrap();
    assert_eq!(drain(&mut c), [Output::ApplicationReplaced]);
    assert_eq!(
        c.events_path(),
        "/ari/events?app=icegate&subscribeAll=false"
    );
}

/// A random JSON value, biased towards ARI-shaped objects.
fn random_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    const KINDS: [&str; 16] = [
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelDtmfReceived",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "ChannelVarset",
        "PlaybackStarted",
        "PlaybackFinished",
        "Dial",
        "ChannelEnteredBridge",
        "ChannelLeftBridge",
        "BridgeDestroyed",
        "ApplicationReplaced",
        "Unheard",
        "",
    ];
    const KEYS: [&str; 12] = [
        "type",
        "channel",
        "peer",
        "id",
        "state",
        "protocol_id",
        "args",
        "digit",
        "cause",
        "cause_txt",
        "bridge",
        "playback",
    ];
    match rng.random_range(0..if depth == 0 { 5 } else { 8 }) {
        0 => serde_json::Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(["c1", "c2", "sip-1", "Up", "Ringing", "1", "", "é#&"][rng.random_range(0..8)]),
        4 => json!(KINDS[rng.random_range(0..KINDS.len())]),
        5 => json!((0..rng.random_range(0..3))
            .map(|_| random_json(rng, depth - 1))
            .collect::<Vec<_>>()),
        _ => {
            let mut o = serde_json::Map::new();
            if rng.random_bool(0.8) {
                o.insert(
                    "type".into(),
                    json!(KINDS[rng.random_range(0..KINDS.len())]),
                );
            }
            for _ in 0..rng.random_range(0..6) {
                let key = KEYS[rng.random_range(0..KEYS.len())];
                o.insert(key.into(), random_json(rng, depth - 1));
            }
            serde_json::Value::Object(o)
        }
    }
}

/// Arbitrary text and JSON never panic, and whatever happens, a controller that is finally
/// disconnected for good, with every request answered, holds nothing.
#[test]
fn arbitrary_input_never_panics_or_leaks() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut peak = 0;
    for case in 0..300 {
        let now = t0();
        let mut c = connected(dial_config(), now);
        let mut t = now;
        let mut open: Vec<RequestId> = Vec::new();
        let mut known: Vec<String> = vec!["c1".into(), "c2".into()];
        for _ in 0..40 {
            t += Duration::from_millis(rng.random_range(0..3000));
            let key = CallKey(rng.random_range(0..3));
            match rng.random_range(0..12) {
                0 => {
                    let bytes: Vec<u8> =
                        (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                    let _ = c.handle_event(&String::from_utf8_lossy(&bytes), t);
                }
                1 | 2 => {
                    let _ = c.handle_event(&random_json(&mut rng, 3).to_string(), t);
                }
                3 | 4 => {
                    // Well-formed events on the channels this run knows, in any order.
                    let _ = c.handle_event(&random_event(&mut rng, &known), t);
                }
                5 => {
                    let sip = ["sip-1", "sip-2"][rng.random_range(0..2)];
                    let _ = c.expect_call(key, sip, t);
                }
                6 => {
                    let _ = c.originate(key, OriginateArgs::default(), t);
                }
                7 => {
                    let _ = match rng.random_range(0..4) {
                        0 => c.hangup(key, HangupReason::Normal, t),
                        1 => c.send_dtmf(key, "1#", t),
                        2 => c.play(key, "tone:ring", t),
                        _ => c.transfer(key, "600", t),
                    };
                }
                8 => c.forget(key, t),
                9 => {
                    if rng.random_bool(0.5) {
                        c.connection_lost(t)
                    } else {
                        c.connected(t)
                    }
                }
                10 => {
                    if !open.is_empty() {
                        let id = open.swap_remove(rng.random_range(0..open.len()));
                        let status = [200, 204, 404, 500][rng.random_range(0..4)];
                        let body = random_json(&mut rng, 2).to_string();
                        c.handle_response(id, status, &body, t);
                    }
                }
                _ => c.handle_timeout(t),
            }
            for o in drain(&mut c) {
                if let Output::Request { id, path, .. } = o {
                    open.push(id);
                    // Learn the channel and bridge ids the controller chose.
                    if let Some((_, id)) = path.split_once("Id=") {
                        known.push(id.to_owned());
                    }
                }
            }
            peak = peak.max(c.bridge_count() + c.call_count());
        }
        // The end: the events connection is gone for good and Asterisk answers 404 to all.
        c.connection_lost(t);
        for _ in 0..1000 {
            for o in drain(&mut c) {
                match o {
                    Output::Request { id, .. } => c.handle_response(id, 404, "{}", t),
                    Output::Connect => c.connection_lost(t),
                    _ => {}
                }
            }
            match c.poll_timeout() {
                Some(next) => {
                    t = t.max(next);
                    c.handle_timeout(t);
                }
                None => break,
            }
            if c.call_count() == 0 && c.pending_requests() == 0 && c.channel_count() == 0 {
                break;
            }
        }
        assert_eq!(
            (
                c.call_count(),
                c.channel_count(),
                c.bridge_count(),
                c.pending_requests()
            ),
            (0, 0, 0, 0),
            "case {case}"
        );
    }
    // The runs did build calls and bridges, so the check above means something.
    assert!(peak >= 3, "peak {peak}");
}

fn random_event(rng: &mut StdRng, known: &[String]) -> String {
    const KINDS: [&str; 7] = [
        "StasisStart",
        "StasisEnd",
        "ChannelStateChange",
        "ChannelDtmfReceived",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "BridgeDestroyed",
    ];
    let id = &known[rng.random_range(0..known.len())];
    let state = ["Ring", "Ringing", "Up", "Down"][rng.random_range(0..4)];
    let sip = ["sip-1", "sip-2"][rng.random_range(0..2)];
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    let extra = json!({"args": ["201"], "digit": "5", "cause": 17, "cause_txt": "User busy",
                       "bridge": {"id": id}});
    event(kind, channel(id, state, sip), extra)
}
