//! Replays of the recorded Asterisk 22 flows (`fixtures/asterisk/` at the repository root):
//! Asterisk's messages are fed to the UA with the recording's identifiers (branches, tags,
//! Call-IDs, cnonces) rewritten to the UA's own, and every message the recorded client sent
//! is compared with what the UA sends at that point.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sip::call_key::CallKey;
use crate::sip::digest::Challenge;
use crate::sip::header::NameAddr;
use crate::sip::message::Message;
use crate::sip::method::Method;
use crate::sip::ua::{EndedBy, Event, Output, UaConfig, UserAgent};

/// One recorded SIP frame: sent by the client (`to_asterisk`) or by Asterisk.
struct Frame {
    t_ms: u64,
    to_asterisk: bool,
    text: String,
}

fn load(json: &str) -> Vec<Frame> {
    let v: serde_json::Value = serde_json::from_str(json).expect("fixture is JSON");
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["channel"] == "sip-ws" && m["dir"] != "note")
        .map(|m| Frame {
            t_ms: m["t_ms"].as_u64().unwrap_or_default(),
            to_asterisk: m["dir"] == "to-asterisk",
            text: m["data"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

const FLOWS: [(&str, &str); 10] = [
    (
        "register",
        include_str!("../../../../fixtures/asterisk/register.json"),
    ),
    (
        "sip-wrong-password",
        include_str!("../../../../fixtures/asterisk/sip-wrong-password.json"),
    ),
    (
        "unregister",
        include_str!("../../../../fixtures/asterisk/unregister.json"),
    ),
    (
        "browser-calls-echo",
        include_str!("../../../../fixtures/asterisk/browser-calls-echo.json"),
    ),
    (
        "browser-calls-stasis",
        include_str!("../../../../fixtures/asterisk/browser-calls-stasis.json"),
    ),
    (
        "browser-calls-busy",
        include_str!("../../../../fixtures/asterisk/browser-calls-busy.json"),
    ),
    (
        "browser-calls-unknown",
        include_str!("../../../../fixtures/asterisk/browser-calls-unknown.json"),
    ),
    (
        "browser-cancels-ringing",
        include_str!("../../../../fixtures/asterisk/browser-cancels-ringing.json"),
    ),
    (
        "asterisk-calls-browser",
        include_str!("../../../../fixtures/asterisk/asterisk-calls-browser.json"),
    ),
    (
        "asterisk-call-rejected",
        include_str!("../../../../fixtures/asterisk/asterisk-call-rejected.json"),
    ),
];

fn flow(name: &str) -> Vec<Frame> {
    let (_, json) = FLOWS.iter().find(|(n, _)| *n == name).expect("known flow");
    load(json)
}

/// Drives a UA through a recording, mapping the recording's identifiers to the UA's.
struct Replay {
    ua: UserAgent,
    start: Instant,
    /// (recorded, ours) identifier pairs, applied to everything Asterisk sends.
    map: Vec<(String, String)>,
    sent: VecDeque<Message>,
    events: Vec<Event>,
    call: CallKey,
    password: String,
}

impl Replay {
    fn new(password: &str) -> Replay {
        let mut config = UaConfig::new("icegate", password, "127.0.0.1");
        config.contact_host = Some("baf1a066.invalid".into());
        Replay {
            ua: UserAgent::new(config, 7),
            start: Instant::now(),
            map: Vec::new(),
            sent: VecDeque::new(),
            events: Vec::new(),
            call: CallKey::Outgoing(1),
            password: password.to_owned(),
        }
    }

    /// Replay `frames`; returns what the UA sent beyond the recording.
    fn run(&mut self, frames: &[Frame]) -> Vec<Message> {
        for frame in frames {
            let now = self.start + Duration::from_millis(frame.t_ms);
            if self.ua.poll_timeout().is_some_and(|t| t <= now) {
                self.ua.handle_timeout(now);
                self.drain();
            }
            let recorded = Message::parse(frame.text.as_bytes()).expect("recorded SIP parses");
            if frame.to_asterisk {
                if recorded.code() != Some(100)
                    && self.sent.front().is_some_and(|m| m.code() == Some(100))
                {
                    // The UA always sends 100 Trying for an INVITE (RFC 3261 §17.2.1); the
                    // recorded client skipped it when it rejected at once.
                    self.sent.pop_front();
                }
                if self.sent.is_empty() {
                    self.command(&recorded, now);
                    self.drain();
                }
                let ours = self.sent.pop_front().unwrap_or_else(|| {
                    panic!("the UA sent nothing where the client sent\n{}", frame.text)
                });
                self.compare(&recorded, &ours);
                self.learn(&recorded, &ours);
            } else {
                let text = self.rewrite(&frame.text);
                self.ua
                    .handle_message(text.as_bytes(), now)
                    .expect("rewritten frame parses");
                self.drain();
            }
        }
        self.sent.drain(..).collect()
    }

    fn drain(&mut self) {
        while let Some(out) = self.ua.poll_output() {
            match out {
                Output::Send(text) => {
                    let m = Message::parse(text.as_bytes()).expect("the UA sends valid SIP");
                    self.sent.push_back(m);
                }
                Output::Event(event) => {
                    if let Event::IncomingCall { call_key, .. } = &event {
                        self.call = *call_key;
                    }
                    self.events.push(event);
                }
            }
        }
    }

    /// The call layer's command that made the recorded client send `recorded`.
    fn command(&mut self, recorded: &Message, now: Instant) {
        let key = self.call;
        let result = match (recorded.method(), recorded.code()) {
            (Some(Method::Register), _) => {
                let contact = recorded.header("Contact").and_then(NameAddr::parse);
                let expires = recorded
                    .header("Expires")
                    .or_else(|| contact.as_ref()?.param("expires").flatten())
                    .and_then(|e| e.parse().ok())
                    .expect("REGISTER has an expiry");
                self.ua.register(expires, now);
                Ok(())
            }
            (Some(Method::Invite), _) => {
                let uri = recorded.request_uri().unwrap_or_default();
                let user = uri
                    .trim_start_matches("sip:")
                    .split('@')
                    .next()
                    .unwrap_or_default();
                self.ua.invite(key, user, &recorded.body, now)
            }
            (Some(Method::Cancel), _) => self.ua.cancel(key, now),
            (Some(Method::Bye), _) => self.ua.bye(key, now),
            (None, Some(180)) => self.ua.ringing_incoming(key, now),
            (None, Some(200)) => self.ua.answer_incoming(key, &recorded.body, now),
            (None, Some(code)) if code >= 300 => self.ua.reject_incoming(key, code, now),
            other => panic!("no command makes the client send {other:?}"),
        };
        result.expect("command accepted");
    }

    fn learn(&mut self, recorded: &Message, ours: &Message) {
        let tag = |m: &Message, h: &str| {
            m.header(h)
                .and_then(NameAddr::parse)
                .and_then(|a| a.tag().map(str::to_owned))
        };
        let pairs = [
            (
                recorded.top_branch().map(str::to_owned),
                ours.top_branch().map(str::to_owned),
            ),
            (
                Some(recorded.call_id().to_owned()),
                Some(ours.call_id().to_owned()),
            ),
            (tag(recorded, "From"), tag(ours, "From")),
            (tag(recorded, "To"), tag(ours, "To")),
        ];
        for (r, o) in pairs {
            if let (Some(r), Some(o)) = (r, o) {
                if r != o && !self.map.iter().any(|(known, _)| *known == r) {
                    self.map.push((r, o));
                }
            }
        }
    }

    fn rewrite(&self, text: &str) -> String {
        self.map
            .iter()
            .fold(text.to_owned(), |t, (r, o)| t.replace(r.as_str(), o))
    }

    /// The essential headers must agree, identifiers compared through the map.
    fn compare(&self, recorded: &Message, ours: &Message) {
        let ctx = format!("recorded:\n{}\nours:\n{}", recorded.encode(), ours.encode());
        assert_eq!(ours.start, recorded.start, "start line\n{ctx}");
        assert_eq!(ours.cseq(), recorded.cseq(), "CSeq\n{ctx}");
        let call_id = self.rewrite(recorded.call_id());
        assert!(
            call_id == ours.call_id() || call_id == recorded.call_id(),
            "Call-ID\n{ctx}"
        );
        for name in ["From", "To"] {
            let r = NameAddr::parse(recorded.header(name).unwrap_or_default()).expect("party");
            let o = NameAddr::parse(ours.header(name).unwrap_or_default()).expect("party");
            assert_eq!(o.uri, r.uri, "{name} URI\n{ctx}");
            match (r.tag(), o.tag()) {
                (None, None) => {}
                (Some(rt), Some(ot)) => {
                    // A tag first seen here is learned from this very message.
                    let mapped = self.rewrite(rt);
                    assert!(mapped == ot || mapped == rt, "{name} tag\n{ctx}");
                }
                _ => panic!("{name} tag presence differs\n{ctx}"),
            }
        }
        if let (Some(r), Some(o)) = (recorded.top_branch(), ours.top_branch()) {
            let mapped = self.rewrite(r);
            assert!(
                mapped == o || mapped == r,
                "a branch the UA reused wrongly\n{ctx}"
            );
        }
        assert_eq!(
            ours.header("Content-Type"),
            recorded.header("Content-Type"),
            "{ctx}"
        );
        assert_eq!(ours.header("Expires"), recorded.header("Expires"), "{ctx}");
        let contact_uri =
            |m: &Message| m.header("Contact").and_then(NameAddr::parse).map(|c| c.uri);
        if ours.code().is_none_or(|c| c >= 200) {
            // The UA also puts Contact in 180 (RFC 3261 §12.1.1); the recorded client did not.
            assert_eq!(contact_uri(ours), contact_uri(recorded), "Contact\n{ctx}");
        }
        assert_eq!(
            ours.header("Authorization").is_some(),
            recorded.header("Authorization").is_some(),
            "Authorization presence\n{ctx}"
        );
        if let (Some(r), Some(o)) = (
            recorded.header("Authorization"),
            ours.header("Authorization"),
        ) {
            self.compare_authorization(r, o, ours, &ctx);
        }
    }

    /// Same fields and values as the recorded client except cnonce and response; the response
    /// is recomputed from the UA's cnonce.
    fn compare_authorization(&self, recorded: &str, ours: &str, request: &Message, ctx: &str) {
        let fields = |v: &str| -> Vec<(String, String)> {
            crate::sip::header::split_list(v.trim_start_matches("Digest "))
                .into_iter()
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
                .collect()
        };
        let (r, o) = (fields(recorded), fields(ours));
        let names = |f: &[(String, String)]| f.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(&o), names(&r), "Authorization fields\n{ctx}");
        for ((rk, rv), (_, ov)) in r.iter().zip(&o) {
            if rk != "cnonce" && rk != "response" {
                assert_eq!(ov, rv, "Authorization {rk}\n{ctx}");
            }
        }
        let get = |k: &str| {
            o.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let challenge = Challenge::parse(&format!(
            r#"Digest realm="{}",nonce="{}",opaque="{}",qop="auth""#,
            get("realm"),
            get("nonce"),
            get("opaque")
        ))
        .unwrap();
        let expected = challenge.authorize(
            "icegate",
            &self.password,
            request.method().map(Method::as_str).unwrap_or_default(),
            &get("uri"),
            &get("cnonce"),
            1,
        );
        assert_eq!(ours, expected, "digest response\n{ctx}");
    }

    fn assert_clean(&self) {
        assert_eq!(self.ua.live_calls(), 0, "calls left");
        assert_eq!(self.ua.live_transactions(), 0, "transactions left");
        assert_eq!(self.ua.stats().malformed, 0);
    }
}

#[test]
fn every_recorded_message_parses_and_reencodes() {
    let mut count = 0;
    for (name, json) in FLOWS {
        for frame in load(json) {
            let m = Message::parse(frame.text.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: {e}\n{}", frame.text));
            assert_eq!(
                Message::parse(m.encode().as_bytes()).as_ref(),
                Ok(&m),
                "{name}"
            );
            count += 1;
        }
    }
    assert_eq!(count, 62);
}

#[test]
fn register_with_digest() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("register")).is_empty());
    assert_eq!(r.events, [Event::Registered { expires: 599 }]);
    assert!(r.ua.is_registered());
    // The refresh goes out before the 599 s lapse, with a fresh challenge cycle.
    let refresh = r.ua.poll_timeout().expect("refresh timer");
    assert!(refresh < r.start + Duration::from_secs(599));
    r.ua.handle_timeout(refresh);
    r.drain();
    let again = r.sent.pop_front().expect("refresh REGISTER");
    assert_eq!(again.cseq(), Some((3, Method::Register)));
    assert_eq!(again.call_id(), r.rewrite("68226a2b8a58bfc1d77478af"));
    r.assert_clean_calls();
}

#[test]
fn wrong_password_fails_after_one_retry() {
    let mut r = Replay::new("not-the-password");
    assert!(r.run(&flow("sip-wrong-password")).is_empty());
    assert_eq!(r.events, [Event::RegistrationFailed { code: 401 }]);
    assert!(!r.ua.is_registered());
    r.assert_clean();
}

#[test]
fn unregister() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("unregister")).is_empty());
    assert_eq!(r.events, [Event::Unregistered]);
    assert_eq!(r.ua.poll_timeout(), None, "no refresh of a removed binding");
    r.assert_clean();
}

#[test]
fn browser_calls_echo_and_hangs_up() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("browser-calls-echo")).is_empty());
    let [Event::Answered { sdp, .. }, Event::Ended {
        by: EndedBy::Local, ..
    }] = &r.events[..]
    else {
        panic!("{:?}", r.events)
    };
    assert!(sdp.contains("a=setup:active") && sdp.contains("typ relay"));
    r.assert_clean();
}

#[test]
fn browser_calls_stasis_and_asterisk_hangs_up() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("browser-calls-stasis")).is_empty());
    let kinds: Vec<_> = r.events.iter().map(std::mem::discriminant).collect();
    assert_eq!(kinds.len(), 3, "{:?}", r.events);
    assert_eq!(
        r.events[0],
        Event::Provisional {
            call_key: CallKey::Outgoing(1),
            code: 180
        }
    );
    assert!(matches!(r.events[1], Event::Answered { .. }));
    assert_eq!(
        r.events[2],
        Event::Ended {
            call_key: CallKey::Outgoing(1),
            by: EndedBy::Remote
        }
    );
    r.assert_clean();
}

/// The recordings of busy and unknown stop at the final response; RFC 3261 §17.1.1.3 requires
/// the ACK, which the UA sends.
fn assert_failure_ack(left: &[Message], code: u16) {
    let [ack] = left else {
        panic!("expected one ACK, got {left:?}")
    };
    assert_eq!(ack.method(), Some(&Method::Ack));
    assert_eq!(ack.cseq(), Some((2, Method::Ack)), "code {code}");
    assert!(NameAddr::parse(ack.header("To").unwrap())
        .unwrap()
        .tag()
        .is_some());
}

#[test]
fn browser_calls_busy() {
    let mut r = Replay::new("sip-secret");
    let left = r.run(&flow("browser-calls-busy"));
    assert_failure_ack(&left, 486);
    assert_eq!(
        r.events,
        [Event::Failed {
            call_key: CallKey::Outgoing(1),
            code: 486,
            reason: "Busy Here".into()
        }]
    );
    r.assert_clean();
}

#[test]
fn browser_calls_unknown() {
    let mut r = Replay::new("sip-secret");
    let left = r.run(&flow("browser-calls-unknown"));
    assert_failure_ack(&left, 404);
    assert!(matches!(r.events[..], [Event::Failed { code: 404, .. }]));
    r.assert_clean();
}

#[test]
fn browser_cancels_ringing() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("browser-cancels-ringing")).is_empty());
    assert!(matches!(
        r.events[..],
        [
            Event::Provisional { code: 180, .. },
            Event::Failed { code: 487, .. }
        ]
    ));
    r.assert_clean();
}

#[test]
fn asterisk_calls_browser_and_browser_hangs_up() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("asterisk-calls-browser")).is_empty());
    let [Event::IncomingCall {
        call_key,
        from,
        sdp,
        ..
    }, Event::Ended {
        by: EndedBy::Local, ..
    }] = &r.events[..]
    else {
        panic!("{:?}", r.events)
    };
    assert_eq!(*call_key, CallKey::Incoming(1));
    assert_eq!(from.display.as_deref(), Some("Reception"));
    assert_eq!(from.uri, "sip:100@vm");
    assert!(sdp
        .as_deref()
        .is_some_and(|s| s.contains("a=setup:actpass")));
    r.assert_clean();
}

#[test]
fn asterisk_call_rejected_busy() {
    let mut r = Replay::new("sip-secret");
    assert!(r.run(&flow("asterisk-call-rejected")).is_empty());
    assert!(matches!(r.events[..], [Event::IncomingCall { .. }]));
    r.assert_clean();
}

impl Replay {
    fn assert_clean_calls(&self) {
        assert_eq!(self.ua.live_calls(), 0);
        assert_eq!(self.ua.stats().malformed, 0);
    }
}
