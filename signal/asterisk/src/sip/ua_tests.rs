//! Scenarios the recordings do not cover: timers, crossing requests, re-INVITEs, a lost
//! WebSocket, malformed input. Asterisk's side is built from the UA's own requests.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::sip::builder::response;
use crate::sip::call_key::CallKey;
use crate::sip::message::Message;
use crate::sip::method::Method;
use crate::sip::ua::{EndedBy, Event, Output, UaConfig, UserAgent};

const KEY: CallKey = CallKey::Outgoing(9);

fn ua() -> UserAgent {
    UserAgent::new(UaConfig::new("icegate", "sip-secret", "pbx.example"), 1)
}

/// Everything the UA produced: parsed messages and events.
fn drain(ua: &mut UserAgent) -> (Vec<Message>, Vec<Event>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    while let Some(out) = ua.poll_output() {
        match out {
            Output::Send(text) => sent.push(Message::parse(text.as_bytes()).unwrap()),
            Output::Event(e) => events.push(e),
        }
    }
    (sent, events)
}

fn feed(ua: &mut UserAgent, m: &Message, now: Instant) -> (Vec<Message>, Vec<Event>) {
    ua.handle_message(m.encode().as_bytes(), now).unwrap();
    drain(ua)
}

fn asterisk_reply(request: &Message, code: u16) -> Message {
    let mut r = response(request, code, Some("ast-tag"));
    if code == 200 {
        r.push("Contact", "<sip:127.0.0.1:8088;transport=ws>");
        r.set_body("application/sdp", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n");
    }
    r
}

fn incoming_invite(sdp_version: u32) -> Message {
    let text = format!(
        "INVITE sip:icegate@127.0.0.1:48126;transport=WS SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPj{sdp_version};alias\r\n\
         From: \"Reception\" <sip:100@vm>;tag=ast\r\n\
         To: <sip:icegate@127.0.0.1>\r\n\
         Contact: <sip:asterisk@vm:5060;transport=ws>\r\n\
         Call-ID: in-1\r\n\
         CSeq: 100 INVITE\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 28\r\n\r\n\
         v=0\r\no=- 5 {sdp_version} IN IP4 0.0.0.0\r\n"
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// An established outgoing call; returns the UA and the INVITE it sent.
fn established(now: Instant) -> (UserAgent, Message) {
    let mut ua = ua();
    ua.invite(KEY, "600", "v=0\r\n", now).unwrap();
    let (sent, _) = drain(&mut ua);
    let (sent2, events) = feed(&mut ua, &asterisk_reply(&sent[0], 200), now);
    assert_eq!(sent2[0].method(), Some(&Method::Ack));
    assert!(matches!(events[..], [Event::Answered { .. }]));
    (ua, sent[0].clone())
}

#[test]
fn invite_without_any_answer_fails_with_408_after_timer_b() {
    let now = Instant::now();
    let mut ua = ua();
    ua.invite(KEY, "600", "v=0\r\n", now).unwrap();
    drain(&mut ua);
    assert_eq!(ua.poll_timeout(), Some(now + Duration::from_secs(32)));
    ua.handle_timeout(now + Duration::from_secs(31));
    assert!(drain(&mut ua).1.is_empty());
    ua.handle_timeout(now + Duration::from_secs(32));
    let (_, events) = drain(&mut ua);
    assert!(matches!(events[..], [Event::Failed { code: 408, .. }]));
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
}

#[test]
fn cancel_waits_for_a_provisional_then_487_is_acked() {
    let now = Instant::now();
    let mut ua = ua();
    ua.invite(KEY, "602", "v=0\r\n", now).unwrap();
    let invite = drain(&mut ua).0.remove(0);
    ua.cancel(KEY, now).unwrap();
    assert!(
        drain(&mut ua).0.is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    let (sent, events) = feed(&mut ua, &response(&invite, 100, None), now);
    assert_eq!(sent[0].method(), Some(&Method::Cancel));
    assert_eq!(sent[0].top_branch(), invite.top_branch());
    assert!(events.is_empty());
    let (sent, _) = feed(&mut ua, &asterisk_reply(&sent[0], 200), now);
    assert!(sent.is_empty());
    let (sent, events) = feed(&mut ua, &asterisk_reply(&invite, 487), now);
    assert_eq!(sent[0].method(), Some(&Method::Ack));
    assert!(matches!(events[..], [Event::Failed { code: 487, .. }]));
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
}

#[test]
fn unanswered_ringing_is_cancelled_at_max_ring() {
    let now = Instant::now();
    let mut ua = ua();
    ua.invite(KEY, "602", "v=0\r\n", now).unwrap();
    let invite = drain(&mut ua).0.remove(0);
    let (_, events) = feed(&mut ua, &asterisk_reply(&invite, 180), now);
    assert!(matches!(events[..], [Event::Provisional { code: 180, .. }]));
    let limit = now + Duration::from_secs(180);
    assert_eq!(ua.poll_timeout(), Some(limit));
    ua.handle_timeout(limit);
    let (sent, events) = drain(&mut ua);
    assert_eq!(sent[0].method(), Some(&Method::Cancel));
    assert!(matches!(events[..], [Event::Failed { code: 408, .. }]));
    feed(&mut ua, &asterisk_reply(&sent[0], 200), limit);
    let (_, events) = feed(&mut ua, &asterisk_reply(&invite, 487), limit);
    assert!(events.is_empty(), "the failure was already reported");
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
}

#[test]
fn our_2xx_is_resent_until_ack_and_the_call_ends_without_one() {
    let now = Instant::now();
    let mut ua = ua();
    let (sent, events) = feed(&mut ua, &incoming_invite(1), now);
    assert_eq!(sent[0].code(), Some(100));
    let [Event::IncomingCall { call_key, .. }] = events[..] else {
        panic!("{events:?}")
    };
    ua.answer_incoming(call_key, "v=0\r\no=- 9 1 IN IP4 0.0.0.0\r\n", now)
        .unwrap();
    let ok = drain(&mut ua).0.remove(0);
    assert_eq!(ok.code(), Some(200));
    assert_eq!(ua.bye(call_key, now), Ok(()), "queued until the ACK");
    let mut resent = 0;
    let mut t = now;
    while let Some(next) = ua.poll_timeout() {
        t = next;
        ua.handle_timeout(t);
        let (sent, events) = drain(&mut ua);
        if let Some(Event::Ended { by, .. }) = events.first() {
            assert_eq!(*by, EndedBy::Lost);
            assert_eq!(sent[0].method(), Some(&Method::Bye));
            break;
        }
        assert_eq!(sent[0].code(), Some(200));
        resent += 1;
    }
    assert_eq!(t, now + Duration::from_secs(32));
    // T1 doubling to T2: 0.5, 1, 2, 4, then every 4 s up to 32 s.
    assert_eq!(resent, 10);
    assert_eq!(ua.live_calls(), 0);
}

#[test]
fn ack_confirms_and_a_queued_bye_follows() {
    let now = Instant::now();
    let mut ua = ua();
    let invite = incoming_invite(1);
    let (_, events) = feed(&mut ua, &invite, now);
    let [Event::IncomingCall { call_key, .. }] = events[..] else {
        panic!()
    };
    ua.ringing_incoming(call_key, now).unwrap();
    let ringing = drain(&mut ua).0.remove(0);
    assert_eq!(ringing.code(), Some(180));
    ua.answer_incoming(call_key, "v=0\r\n", now).unwrap();
    let ok = drain(&mut ua).0.remove(0);
    ua.bye(call_key, now).unwrap();
    assert!(drain(&mut ua).0.is_empty());
    let mut ack = response(&ok, 200, None);
    ack.start = crate::sip::message::StartLine::Request {
        method: Method::Ack,
        uri: "sip:icegate@h".into(),
    };
    ack.set("CSeq", "100 ACK");
    let (sent, _) = feed(&mut ua, &ack, now);
    assert_eq!(sent[0].method(), Some(&Method::Bye));
    assert_eq!(
        sent[0].request_uri(),
        Some("sip:asterisk@vm:5060;transport=ws")
    );
    let (_, events) = feed(&mut ua, &asterisk_reply(&sent[0], 200), now);
    assert_eq!(
        events,
        [Event::Ended {
            call_key,
            by: EndedBy::Local
        }]
    );
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
}

/// A re-INVITE from Asterisk in the dialog of `established`.
fn asterisk_reinvite(ours: &Message, cseq: u32, origin: &str) -> Message {
    let text = format!(
        "INVITE sip:icegate@h SIP/2.0\r\nVia: SIP/2.0/WS 127.0.0.1:8088;branch=z9hG4bKre{cseq}\r\n\
         From: <sip:600@pbx.example>;tag=ast-tag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INVITE\r\n\
         Contact: <sip:127.0.0.1:8088;transport=ws>\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n{origin}\r\n",
        ours.header("From").unwrap(),
        ours.call_id()
    );
    Message::parse(text.as_bytes()).unwrap()
}

#[test]
fn asterisk_reinvites_refresh_silently_or_ask_the_call_layer() {
    let now = Instant::now();
    let (mut ua, invite) = established(now);
    // Same o= line as its answer: a session refresh, answered with our last SDP.
    let refresh = asterisk_reinvite(&invite, 5, "o=- 1 1 IN IP4 0.0.0.0");
    let (sent, events) = feed(&mut ua, &refresh, now);
    assert!(events.is_empty());
    assert_eq!(sent[0].code(), Some(200));
    assert_eq!(sent[0].body, "v=0\r\n");
    // A stale CSeq is refused.
    let (sent, _) = feed(
        &mut ua,
        &asterisk_reinvite(&invite, 4, "o=- 1 2 IN IP4 0.0.0.0"),
        now,
    );
    assert_eq!(sent[0].code(), Some(491), "the 200 still waits for its ACK");

    let mut ack = asterisk_reinvite(&invite, 5, "");
    ack.start = crate::sip::message::StartLine::Request {
        method: Method::Ack,
        uri: "sip:icegate@h".into(),
    };
    ack.set("CSeq", "5 ACK");
    ack.body.clear();
    assert!(feed(&mut ua, &ack, now).0.is_empty());

    let changed = asterisk_reinvite(&invite, 6, "o=- 1 2 IN IP4 0.0.0.0");
    let (sent, events) = feed(&mut ua, &changed, now);
    assert_eq!(sent[0].code(), Some(100));
    assert!(matches!(
        &events[..],
        [Event::ReinviteOffer {
            call_key: KEY,
            sdp: Some(_)
        }]
    ));
    ua.answer_incoming(KEY, "v=0\r\no=- 9 2\r\n", now).unwrap();
    assert_eq!(drain(&mut ua).0[0].code(), Some(200));
}

#[test]
fn our_reinvite_gets_an_answer_and_its_own_ack() {
    let now = Instant::now();
    let (mut ua, _) = established(now);
    ua.reinvite(KEY, "v=0\r\nICE restart\r\n", now).unwrap();
    assert!(
        ua.reinvite(KEY, "v=0\r\n", now).is_err(),
        "one offer at a time"
    );
    let reinvite = drain(&mut ua).0.remove(0);
    assert_eq!(reinvite.cseq(), Some((2, Method::Invite)));
    assert_eq!(
        reinvite.request_uri(),
        Some("sip:127.0.0.1:8088;transport=ws")
    );
    let (sent, events) = feed(&mut ua, &asterisk_reply(&reinvite, 200), now);
    assert_eq!(sent[0].cseq(), Some((2, Method::Ack)));
    assert!(matches!(events[..], [Event::ReinviteAnswered { .. }]));
    // Asterisk retransmits its 2xx: the same ACK goes out again.
    let (again, _) = feed(&mut ua, &asterisk_reply(&reinvite, 200), now);
    assert_eq!(again, sent);
    // A 481 to a later re-INVITE ends the call.
    ua.reinvite(KEY, "v=0\r\n", now).unwrap();
    let second = drain(&mut ua).0.remove(0);
    let (_, events) = feed(&mut ua, &asterisk_reply(&second, 481), now);
    assert!(matches!(
        events[..],
        [Event::Ended {
            by: EndedBy::Lost,
            ..
        }]
    ));
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
}

#[test]
fn a_lost_websocket_ends_everything() {
    let now = Instant::now();
    let (mut ua, _) = established(now);
    ua.register(600, now);
    ua.invite(CallKey::Outgoing(10), "601", "v=0\r\n", now)
        .unwrap();
    drain(&mut ua);
    feed(&mut ua, &incoming_invite(1), now);
    ua.handle_disconnect();
    let (sent, mut events) = drain(&mut ua);
    assert!(sent.is_empty());
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(events.contains(&Event::RegistrationFailed { code: 503 }));
    assert!(events.contains(&Event::Ended {
        call_key: KEY,
        by: EndedBy::Lost
    }));
    assert!(events.contains(&Event::IncomingCancelled {
        call_key: CallKey::Incoming(1)
    }));
    assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
    assert_eq!(ua.poll_timeout(), None);
}

#[test]
fn strays_and_garbage_are_counted_and_answered() {
    let now = Instant::now();
    let mut ua = ua();
    assert!(ua.handle_message(b"not sip", now).is_err());
    let mut bye = incoming_invite(1);
    bye.start = crate::sip::message::StartLine::Request {
        method: Method::Bye,
        uri: "sip:icegate@h".into(),
    };
    bye.set("CSeq", "101 BYE");
    bye.set("To", "<sip:icegate@127.0.0.1>;tag=nope");
    let (sent, _) = feed(&mut ua, &bye, now);
    assert_eq!(sent[0].code(), Some(481));
    let stats = ua.stats();
    assert_eq!((stats.malformed, stats.unmatched), (1, 1));
    assert_eq!(ua.bye(KEY, now), Err(crate::sip::CommandError::UnknownCall));
    assert_eq!(
        ua.invite(KEY, "6 00", "", now),
        Err(crate::sip::CommandError::InvalidTarget)
    );
}

fn recorded_frames() -> Vec<String> {
    let json = include_str!("../../../../fixtures/asterisk/asterisk-calls-browser.json");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["channel"] == "sip-ws" && m["dir"] == "from-asterisk")
        .filter_map(|m| m["data"].as_str().map(str::to_owned))
        .collect()
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut ua = ua();
        let _ = ua.handle_message(&frame, Instant::now());
        drain(&mut ua);
    }

    /// Recorded Asterisk messages cut, spliced and corrupted: no panic, and whatever the UA
    /// ends up holding is released by a disconnect.
    #[test]
    fn mangled_recordings_never_panic_or_leak(
        cuts in proptest::collection::vec((0usize..4, 0usize..4000, any::<u8>()), 1..8)
    ) {
        let frames = recorded_frames();
        let now = Instant::now();
        let mut ua = ua();
        for (which, at, byte) in cuts {
            let mut bytes = frames[which % frames.len()].clone().into_bytes();
            let at = at % (bytes.len() + 1);
            if byte % 2 == 0 {
                bytes.truncate(at);
            } else if at < bytes.len() {
                bytes[at] = byte;
            }
            let _ = ua.handle_message(&bytes, now);
            drain(&mut ua);
        }
        ua.handle_timeout(now + Duration::from_secs(3600));
        ua.handle_disconnect();
        drain(&mut ua);
        prop_assert_eq!((ua.live_calls(), ua.live_transactions()), (0, 0));
    }
}

/// Asterisk still loading accepts the WebSocket and drops the REGISTER: after
/// `register_timeout` (not Timer F's 32 s) it fails with 408 and goes again a second later
/// on the same connection, and again with a longer wait if that is refused too.
#[test]
fn an_unanswered_register_times_out_early_and_is_retried_with_backoff() {
    let now = Instant::now();
    let mut ua = ua();
    ua.register(600, now);
    let (sent, _) = drain(&mut ua);
    assert_eq!(sent[0].method(), Some(&Method::Register));
    assert_eq!(ua.poll_timeout(), Some(now + Duration::from_secs(5)));
    ua.handle_timeout(now + Duration::from_secs(5));
    let (sent, events) = drain(&mut ua);
    assert!(sent.is_empty());
    assert!(matches!(
        events[..],
        [Event::RegistrationFailed { code: 408 }]
    ));

    let retry = now + Duration::from_secs(6);
    assert_eq!(ua.poll_timeout(), Some(retry));
    ua.handle_timeout(retry);
    let (sent, _) = drain(&mut ua);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method(), Some(&Method::Register));
    assert_eq!(sent[0].cseq().map(|c| c.0), Some(2));

    // Refused outright (Asterisk's 503 while it loads): the next try waits twice as long.
    let (_, events) = feed(&mut ua, &asterisk_reply(&sent[0], 503), retry);
    assert!(matches!(
        events[..],
        [Event::RegistrationFailed { code: 503 }]
    ));
    assert_eq!(ua.poll_timeout(), Some(retry + Duration::from_secs(2)));
    ua.handle_timeout(retry + Duration::from_secs(2));
    let (sent, _) = drain(&mut ua);
    let (_, events) = feed(&mut ua, &asterisk_reply(&sent[0], 200), retry);
    assert!(matches!(events[..], [Event::Registered { .. }]));

    // A lost connection retries nothing by itself: the next connection registers.
    ua.handle_disconnect();
    drain(&mut ua);
    assert_eq!(ua.poll_timeout(), None);
}

/// RFC 7118 §5.2: over `wss://` the Via transport is WSS; the Contact keeps `transport=ws`.
#[test]
fn over_tls_the_via_says_wss() {
    let now = Instant::now();
    let config = UaConfig {
        secure: true,
        ..UaConfig::new("icegate", "sip-secret", "pbx.example")
    };
    let mut ua = UserAgent::new(config, 1);
    ua.register(600, now);
    let (sent, _) = drain(&mut ua);
    let via = sent[0].header("Via").unwrap();
    assert!(via.starts_with("SIP/2.0/WSS "), "{via}");
    assert!(sent[0]
        .header("Contact")
        .unwrap()
        .contains(";transport=ws>"));
    let mut plain = UserAgent::new(UaConfig::new("icegate", "sip-secret", "pbx.example"), 1);
    plain.register(600, now);
    let (sent, _) = drain(&mut plain);
    assert!(sent[0].header("Via").unwrap().starts_with("SIP/2.0/WS "));
}
