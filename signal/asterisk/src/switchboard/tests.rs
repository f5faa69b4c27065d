//! The hub and the gateway joined, on a fake clock: browser sessions on one side, Asterisk's
//! SIP and ARI sides played by hand (with the gateway tests' SDPs, channels and INVITE) on the
//! other, and the time passed in. Nothing between the hub and the gateway is visible here: a
//! browser's request comes out as SIP, and Asterisk's SIP comes out as browser messages.

use std::time::Duration;

use icegate_signal_proto::hub::HubConfig;
use icegate_signal_proto::protocol::{CallId, Extension, HangupReason, Target};
use serde_json::json;

use super::*;
use crate::ari::backoff;
use crate::gateway::tests::harness::{
    cand, channel, config, incoming_invite, AST_SDP, BROWSER_SDP,
};
use crate::sip::builder::response;
use crate::sip::message::Message;
use crate::sip::method::Method as SipMethod;
use crate::sip::registration::RETRY_FIRST;

mod cluster;

/// A switchboard on a fake clock, and what it said to each side.
struct Board {
    sb: Switchboard,
    now: Instant,
    /// Messages to browser sessions.
    sent: Vec<(SessionId, ServerMessage)>,
    sip: Vec<Message>,
    ari: Vec<(AriRequestId, Method, String)>,
    connects: usize,
    events: Vec<CallEvent>,
    results: Vec<CallResult>,
    /// What it published on the cluster bus.
    bus: Vec<(Channel, String)>,
}

impl Board {
    /// A hub with a PBX and a gateway whose SIP and ARI are not connected yet.
    fn new() -> Board {
        let now = Instant::now();
        let hub = Hub::new(
            HubConfig {
                pbx: true,
                ..HubConfig::default()
            },
            7,
        );
        Board::with(
            Switchboard::new(hub, Some(Gateway::new(config(), 7, now)), now),
            now,
        )
    }

    fn with(sb: Switchboard, now: Instant) -> Board {
        let mut board = Board {
            sb,
            now,
            sent: vec![],
            sip: vec![],
            ari: vec![],
            connects: 0,
            events: vec![],
            results: vec![],
            bus: vec![],
        };
        board.drain();
        board
    }

    /// SIP registered and ARI connected: the hub takes calls to extensions.
    fn up() -> Board {
        let mut board = Board::new();
        assert_eq!(board.connects, 1, "the gateway asks for ARI at once");
        board.sb.sip_connected(board.now);
        board.drain();
        let register = board.take_sip(SipMethod::Register);
        board.reply(&register, 200, None);
        board.sb.ari_connected(board.now);
        board.drain();
        assert!(board.sb.gateway().unwrap().is_available());
        board
    }

    fn drain(&mut self) {
        while let Some(output) = self.sb.poll_output() {
            match output {
                Output::Session { session, message } => self.sent.push((session, message)),
                Output::Sip(text) => self.sip.push(Message::parse(text.as_bytes()).unwrap()),
                Output::AriConnect(path) => {
                    assert!(path.starts_with("/ari/events?app=icegate"));
                    self.connects += 1;
                }
                Output::AriRequest {
                    id, method, path, ..
                } => self.ari.push((id, method, path)),
                Output::Call(event) => self.events.push(event),
                Output::PbxResult(result) => self.results.push(result),
                Output::Bus { channel, payload } => self.bus.push((channel, payload)),
                Output::BusReconnect => {
                    panic!("no test here leaves the bus deaf for an instance timeout")
                }
                Output::Log(_) => {}
            }
        }
    }

    fn open(&mut self, user: &str) -> SessionId {
        let session = self
            .sb
            .open_session(UserId::new(user).unwrap(), self.now)
            .unwrap();
        self.drain();
        session
    }

    fn request(&mut self, session: SessionId, id: u64, message: ClientMessage) {
        self.sb
            .handle_message(session, Some(RequestId::Number(id)), message, self.now);
        self.drain();
    }

    /// The browser calls extension `700`; returns the call from the `ack`.
    fn call_extension(&mut self, session: SessionId) -> CallId {
        self.request(
            session,
            1,
            ClientMessage::Call {
                to: Target::Extension(Extension::new("700").unwrap()),
                sdp: BROWSER_SDP.into(),
            },
        );
        match self.sent.pop() {
            Some((
                to,
                ServerMessage::Ack {
                    call: Some(call), ..
                },
            )) if to == session => call,
            other => panic!("no ack: {other:?}"),
        }
    }

    /// Moves the clock to `to` and fires what is due.
    fn at(&mut self, to: Instant) {
        self.now = to;
        self.sb.handle_timeout(self.now);
        self.drain();
    }

    fn take_sip(&mut self, method: SipMethod) -> Message {
        let i = self
            .sip
            .iter()
            .position(|m| m.method() == Some(&method))
            .unwrap_or_else(|| panic!("no {method:?} in {:?}", self.sip));
        self.sip.remove(i)
    }

    fn feed_sip(&mut self, text: &str) {
        self.sb.handle_sip(text.as_bytes(), self.now);
        self.drain();
    }

    fn reply(&mut self, request: &Message, code: u16, sdp: Option<&str>) {
        let mut r = response(request, code, Some("ast-tag"));
        if let Some(sdp) = sdp {
            r.push("Contact", "<sip:asterisk@127.0.0.1:5060;transport=ws>");
            r.set_body("application/sdp", sdp);
        }
        self.feed_sip(&r.encode());
    }

    fn ari_event(&mut self, kind: &str, channel: serde_json::Value) {
        let e = json!({"type": kind, "timestamp": "2026-11-24T20:24:55.021+0000",
                       "application": "icegate", "channel": channel, "args": ["700"]});
        self.sb.handle_ari_event(&e.to_string(), self.now);
        self.drain();
    }

    fn answer_ari(&mut self, status: u16) {
        for (id, _, _) in std::mem::take(&mut self.ari) {
            self.sb.handle_ari_response(id, status, "", self.now);
        }
        self.drain();
    }

    /// What `session` was sent, taken out.
    fn take_sent(&mut self, session: SessionId) -> Vec<ServerMessage> {
        let (mine, others) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(to, _)| *to == session);
        self.sent = others;
        mine.into_iter().map(|(_, message)| message).collect()
    }

    /// A browser calls 700, its candidates are gathered until the gather timeout, the channel
    /// is answered in Stasis, and Asterisk answers; returns the session, the call and the
    /// INVITE.
    fn answered_call(&mut self) -> (SessionId, CallId, Message) {
        let alice = self.open("alice");
        let call = self.call_extension(alice);
        assert!(self.sip.is_empty(), "the INVITE waits for the candidates");
        self.request(
            alice,
            2,
            ClientMessage::Candidate {
                call,
                candidate: cand("candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host"),
            },
        );
        assert!(self.sip.is_empty());
        // No end-of-candidates: the gather timeout (2 s, on the clock passed in) sends it.
        let gather = self.now + Duration::from_secs(2);
        assert_eq!(self.sb.poll_timeout(), Some(gather));
        self.at(gather - Duration::from_millis(1));
        assert!(self.sip.is_empty());
        self.at(gather);
        let invite = self.take_sip(SipMethod::Invite);
        assert_eq!(invite.request_uri(), Some("sip:700@pbx.example"));
        assert!(invite
            .sdp()
            .unwrap()
            .contains("a=candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host\r\n"));

        self.ari_event("StasisStart", channel("ch1", "Ring", invite.call_id()));
        self.answer_ari(204);
        self.reply(&invite, 180, None);
        self.sent
            .retain(|(_, m)| !matches!(m, ServerMessage::Ack { .. }));
        assert_eq!(self.take_sent(alice), [ServerMessage::Ringing { call }]);
        self.reply(&invite, 200, Some(AST_SDP));
        self.take_sip(SipMethod::Ack);
        self.answer_ari(204);
        assert_eq!(
            self.take_sent(alice),
            [ServerMessage::Answer {
                call,
                sdp: AST_SDP.into()
            }]
        );
        assert_eq!(self.results, [CallResult::Answered]);
        assert_eq!(self.events, [CallEvent::Started, CallEvent::Answered]);
        (alice, call, invite)
    }

    fn assert_no_calls(&self) {
        let gateway = self.sb.gateway().unwrap();
        assert_eq!(
            (
                self.sb.hub().call_count(),
                self.sb.hub().pbx_call_count(),
                gateway.call_count(),
                gateway.sip_call_count(),
                gateway.ari_call_count()
            ),
            (0, 0, 0, 0, 0)
        );
    }
}

#[test]
fn a_browser_calls_an_extension_and_hangs_up() {
    let mut board = Board::up();
    let (alice, call, _) = board.answered_call();
    board.request(
        alice,
        3,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    let bye = board.take_sip(SipMethod::Bye);
    board.reply(&bye, 200, None);
    assert_eq!(
        board.take_sent(alice),
        [ServerMessage::Ack {
            id: RequestId::Number(3),
            call: None
        }]
    );
    assert_eq!(
        board.events.last(),
        Some(&CallEvent::Ended(HangupReason::Normal))
    );
    board.assert_no_calls();
}

#[test]
fn asterisk_hangs_up_a_call_a_browser_made() {
    let mut board = Board::up();
    let (alice, call, invite) = board.answered_call();
    let bye = format!(
        "BYE sip:icegate@x.invalid;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjbye\r\n\
         From: <sip:700@pbx.example>;tag=ast-tag\r\n\
         To: {}\r\n\
         Call-ID: {}\r\n\
         CSeq: 5 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        invite.header("From").unwrap(),
        invite.call_id()
    );
    board.feed_sip(&bye);
    assert_eq!(board.sip.pop().and_then(|m| m.code()), Some(200));
    assert_eq!(
        board.take_sent(alice),
        [ServerMessage::Hangup {
            call,
            reason: HangupReason::Normal
        }]
    );
    board.ari_event("StasisEnd", channel("ch1", "Up", invite.call_id()));
    board.answer_ari(204);
    board.assert_no_calls();
}

#[test]
fn a_busy_extension_ends_the_browsers_call_as_busy() {
    let mut board = Board::up();
    let alice = board.open("alice");
    let call = board.call_extension(alice);
    board.request(
        alice,
        2,
        ClientMessage::Candidate {
            call,
            candidate: cand(""),
        },
    );
    let invite = board.take_sip(SipMethod::Invite);
    board.reply(&invite, 486, None);
    board.take_sip(SipMethod::Ack);
    let sent = board.take_sent(alice);
    assert!(
        sent.contains(&ServerMessage::Hangup {
            call,
            reason: HangupReason::Busy
        }),
        "{sent:?}"
    );
    assert_eq!(board.results, [CallResult::Failed(HangupReason::Busy)]);
    board.answer_ari(204);
    board.assert_no_calls();
}

#[test]
fn asterisk_calls_a_browser_that_answers_then_hangs_up() {
    let mut board = Board::up();
    let bob = board.open("bob");
    board.feed_sip(&incoming_invite("bob"));
    // The offer went through the hub at once: bob's `incoming`, in the same input.
    let call = match board.take_sent(bob).as_slice() {
        [ServerMessage::Incoming {
            call, from, sdp, ..
        }] => {
            assert_eq!((from.as_str(), sdp.as_str()), ("100", AST_SDP));
            *call
        }
        other => panic!("no incoming: {other:?}"),
    };
    board.sip.clear();
    board.request(bob, 1, ClientMessage::Ringing { call });
    assert!(board.sip.pop().unwrap().encode().starts_with("SIP/2.0 180"));
    board.request(
        bob,
        2,
        ClientMessage::Answer {
            call,
            sdp: BROWSER_SDP.into(),
        },
    );
    assert!(board.sip.is_empty(), "the 200 waits for the candidates");
    board.request(
        bob,
        3,
        ClientMessage::Candidate {
            call,
            candidate: cand("candidate:1 1 udp 1 10.0.0.1 5000 typ host"),
        },
    );
    board.request(
        bob,
        4,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    let ok = board.sip.pop().unwrap();
    assert!(ok.encode().starts_with("SIP/2.0 200"));
    assert!(ok
        .sdp()
        .unwrap()
        .contains("a=candidate:1 1 udp 1 10.0.0.1 5000 typ host"));
    assert_eq!(board.results, [CallResult::Answered]);
    assert_eq!(board.sb.hub().pbx_call_count(), 1);

    // Asterisk hangs up.
    let bye = format!(
        "BYE sip:icegate@x.invalid;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjbye2\r\n\
         From: \"Reception\" <sip:100@pbx.example>;tag=ast\r\n\
         To: {}\r\n\
         Call-ID: in-1\r\n\
         CSeq: 101 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        ok.header("To").unwrap()
    );
    board.sent.clear();
    board.feed_sip(&bye);
    assert_eq!(
        board.take_sent(bob),
        [ServerMessage::Hangup {
            call,
            reason: HangupReason::Normal
        }]
    );
    assert_eq!(board.sb.hub().call_count(), 0);
    assert_eq!(board.sb.gateway().unwrap().call_count(), 0);
}

#[test]
fn asterisk_calling_a_user_who_is_not_connected_gets_404() {
    let mut board = Board::up();
    board.feed_sip(&incoming_invite("nobody"));
    let codes: Vec<_> = board.sip.iter().filter_map(Message::code).collect();
    assert!(codes.contains(&404), "{codes:?}");
    assert_eq!(board.results, [CallResult::Failed(HangupReason::NotFound)]);
    assert_eq!(board.sb.gateway().unwrap().call_count(), 0);
}

#[test]
fn the_gateway_being_down_answers_pbx_unavailable() {
    let pbx_unavailable = |sent: &[ServerMessage]| {
        matches!(
            sent,
            [ServerMessage::Error {
                code: ErrorCode::PbxUnavailable,
                ..
            }]
        )
    };
    let call = ClientMessage::Call {
        to: Target::Extension(Extension::new("700").unwrap()),
        sdp: BROWSER_SDP.into(),
    };

    // Configured but neither registered nor connected to ARI.
    let mut board = Board::new();
    let alice = board.open("alice");
    board.request(alice, 1, call.clone());
    let sent = board.take_sent(alice);
    assert!(pbx_unavailable(&sent), "{sent:?}");
    assert!(board.sip.is_empty());

    // Registered, but ARI is down.
    board.sb.sip_connected(board.now);
    board.drain();
    let register = board.take_sip(SipMethod::Register);
    board.reply(&register, 200, None);
    board.request(alice, 2, call.clone());
    let sent = board.take_sent(alice);
    assert!(pbx_unavailable(&sent), "{sent:?}");

    // No gateway at all.
    let now = Instant::now();
    let mut board = Board::with(
        Switchboard::new(Hub::new(HubConfig::default(), 7), None, now),
        now,
    );
    let alice = board.open("alice");
    board.request(alice, 1, call);
    let sent = board.take_sent(alice);
    assert!(pbx_unavailable(&sent), "{sent:?}");
    assert_eq!(board.sb.poll_timeout(), None);
}

#[test]
fn losing_sip_ends_the_browsers_call_as_unavailable() {
    let mut board = Board::up();
    let (alice, call, _) = board.answered_call();
    board.sb.sip_disconnected(board.now);
    board.drain();
    assert_eq!(
        board.take_sent(alice),
        [ServerMessage::Hangup {
            call,
            reason: HangupReason::Unavailable
        }]
    );
    board.answer_ari(204);
    board.assert_no_calls();
}

#[test]
fn register_retries_follow_the_clock_passed_in() {
    let mut board = Board::new();
    board.sb.sip_connected(board.now);
    board.drain();
    let register = board.take_sip(SipMethod::Register);
    board.reply(&register, 503, None);
    assert!(!board.sb.gateway().unwrap().is_registered());
    let retry = board.now + RETRY_FIRST;
    assert_eq!(board.sb.poll_timeout(), Some(retry));
    board.at(retry - Duration::from_millis(1));
    assert!(board.sip.is_empty(), "{:?}", board.sip);
    board.at(retry);
    let register = board.take_sip(SipMethod::Register);
    board.reply(&register, 200, None);
    assert!(board.sb.gateway().unwrap().is_registered());
}

#[test]
fn ari_reconnects_back_off_on_the_clock_passed_in() {
    let mut board = Board::up();
    let alice = board.open("alice");
    board.sb.ari_connection_lost(board.now);
    board.drain();
    assert_eq!(board.connects, 1);
    for attempt in 0..3 {
        let retry = board.now + backoff::reconnect_delay(attempt);
        assert_eq!(board.sb.poll_timeout(), Some(retry));
        board.at(retry - Duration::from_millis(1));
        assert_eq!(board.connects, 1 + attempt as usize);
        board.at(retry);
        assert_eq!(board.connects, 2 + attempt as usize);
        board.sb.ari_connection_lost(board.now);
        board.drain();
    }
    // Meanwhile calls to extensions wait for ARI.
    board.request(
        alice,
        1,
        ClientMessage::Call {
            to: Target::Extension(Extension::new("700").unwrap()),
            sdp: BROWSER_SDP.into(),
        },
    );
    assert!(matches!(
        board.take_sent(alice).as_slice(),
        [ServerMessage::Error {
            code: ErrorCode::PbxUnavailable,
            ..
        }]
    ));
    // Back: the next call goes through.
    let retry = board.sb.poll_timeout().unwrap();
    board.at(retry);
    board.sb.ari_connected(board.now);
    board.drain();
    let call = board.call_extension(alice);
    board.request(
        alice,
        2,
        ClientMessage::Candidate {
            call,
            candidate: cand(""),
        },
    );
    board.take_sip(SipMethod::Invite);
}

#[test]
fn a_ring_timeout_of_the_hub_cancels_the_invite() {
    let mut board = Board::up();
    let alice = board.open("alice");
    let started = board.now;
    let call = board.call_extension(alice);
    board.request(
        alice,
        2,
        ClientMessage::Candidate {
            call,
            candidate: cand(""),
        },
    );
    let invite = board.take_sip(SipMethod::Invite);
    board.reply(&invite, 180, None);
    board.sent.clear();
    let ring_timeout = HubConfig::default().ring_timeout;
    board.at(started + ring_timeout - Duration::from_millis(1));
    assert_eq!(board.sent, []);
    assert!(board.sip.is_empty(), "{:?}", board.sip);
    board.at(started + ring_timeout);
    assert_eq!(
        board.take_sent(alice),
        [ServerMessage::Hangup {
            call,
            reason: HangupReason::NoAnswer
        }]
    );
    board.take_sip(SipMethod::Cancel);
}

#[test]
fn shutdown_ends_calls_both_ways_and_unregisters_until_quiet() {
    let mut board = Board::up();
    let (alice, call, _) = board.answered_call();
    board.sb.shutdown(board.now);
    board.drain();
    assert_eq!(
        board.take_sent(alice),
        [ServerMessage::Hangup {
            call,
            reason: HangupReason::Unavailable
        }]
    );
    assert!(!board.sb.gateway().unwrap().is_quiet());
    let bye = board.take_sip(SipMethod::Bye);
    board.reply(&bye, 200, None);
    let unregister = board.take_sip(SipMethod::Register);
    assert!(
        unregister.encode().contains("Expires: 0") || unregister.encode().contains("expires=0")
    );
    board.reply(&unregister, 200, None);
    assert!(board.sb.gateway().unwrap().is_quiet());
    board.answer_ari(204);
    board.assert_no_calls();
}
