//! Recorded Asterisk flows (`fixtures/asterisk/`) replayed through the controller.

use super::harness::*;

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
