//! The gateway driven without sockets: Asterisk's SIP side is built from the UA's own
//! requests, ARI events are written by hand in the recorded shapes.

use super::*;
use crate::ari::controller::Routing;
use crate::sip::builder::response;
use crate::sip::message::Message;
use crate::sip::method::Method as SipMethod;
use icegate_signal_proto::hub::{Endpoint, Output as HubOutput};
use icegate_signal_proto::protocol::{Digits, ErrorCode};
use proptest::prelude::*;
use serde_json::json;

const AST_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nt=0 0\r\n\
    m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 127.0.0.1 4000 typ host\r\n\
    a=end-of-candidates\r\n";
const BROWSER_SDP: &str = "v=0\r\no=- 9 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n";

struct Rig {
    gw: Gateway,
    now: Instant,
    sip: Vec<Message>,
    hub: Vec<ToHub>,
    ari: Vec<(AriRequestId, Method, String)>,
    results: Vec<CallResult>,
    logs: Vec<String>,
    connects: usize,
}

fn config() -> GatewayConfig {
    GatewayConfig {
        sip: UaConfig::new("icegate", "sip-secret", "pbx.example"),
        ari: ControllerConfig {
            routing: Routing::Answer,
            ..ControllerConfig::default()
        },
        gather_timeout: Duration::from_secs(2),
        register_expires: 600,
    }
}

impl Rig {
    fn new() -> Rig {
        let now = Instant::now();
        let mut rig = Rig {
            gw: Gateway::new(config(), 7, now),
            now,
            sip: vec![],
            hub: vec![],
            ari: vec![],
            results: vec![],
            logs: vec![],
            connects: 0,
        };
        rig.drain();
        rig
    }

    /// SIP registered and ARI connected.
    fn up() -> Rig {
        let mut rig = Rig::new();
        assert_eq!(rig.connects, 1);
        rig.register();
        assert!(rig.gw.is_registered());
        assert!(!rig.gw.is_available(), "ARI is not connected yet");
        rig.gw.ari_connected(rig.now);
        rig.drain();
        assert_eq!(rig.hub, [ToHub::Available(true)]);
        rig.hub.clear();
        rig
    }

    /// The SIP WebSocket connects and Asterisk accepts the REGISTER.
    fn register(&mut self) {
        self.gw.sip_connected(self.now);
        self.drain();
        let register = self.take_sip(SipMethod::Register);
        self.reply(&register, 200, None);
    }

    /// The SIP WebSocket is lost: the hub hears once that the PBX is unavailable, and every
    /// call ends with `Unavailable`, leaving nothing behind.
    fn lose_sip(&mut self) {
        self.gw.sip_disconnected(self.now);
        self.drain();
        assert!(self.hub.contains(&ToHub::Available(false)));
        assert_eq!(hangup_of(&self.hub), Some(HangupReason::Unavailable));
        self.assert_empty();
    }

    fn drain(&mut self) {
        while let Some(output) = self.gw.poll_output() {
            match output {
                Output::Sip(text) => self.sip.push(Message::parse(text.as_bytes()).unwrap()),
                Output::AriConnect(path) => {
                    assert!(path.starts_with("/ari/events?app=icegate"));
                    self.connects += 1;
                }
                Output::AriRequest {
                    id, method, path, ..
                } => self.ari.push((id, method, path)),
                Output::Hub(m) => self.hub.push(m),
                Output::Result(r) => self.results.push(r),
                Output::Log(l) => self.logs.push(l),
            }
        }
    }

    fn take_sip(&mut self, method: SipMethod) -> Message {
        let i = self
            .sip
            .iter()
            .position(|m| m.method() == Some(&method))
            .unwrap_or_else(|| panic!("no {method:?} in {:?}", self.sip));
        self.sip.remove(i)
    }

    fn feed_sip(&mut self, m: &Message) {
        self.gw.handle_sip(m.encode().as_bytes(), self.now);
        self.drain();
    }

    fn reply(&mut self, request: &Message, code: u16, sdp: Option<&str>) {
        let mut r = response(request, code, Some("ast-tag"));
        if let Some(sdp) = sdp {
            r.push("Contact", "<sip:asterisk@127.0.0.1:5060;transport=ws>");
            r.set_body("application/sdp", sdp);
        }
        self.feed_sip(&r);
    }

    fn ari_event(&mut self, kind: &str, channel: serde_json::Value) {
        let e = json!({"type": kind, "timestamp": "2026-11-24T20:24:55.021+0000",
                       "application": "icegate", "channel": channel, "args": ["700"]});
        self.gw.handle_ari_event(&e.to_string(), self.now);
        self.drain();
    }

    fn answer_ari(&mut self, status: u16) {
        for (id, _, _) in std::mem::take(&mut self.ari) {
            self.gw.handle_ari_response(id, status, "", self.now);
        }
        self.drain();
    }

    fn hub_call(&mut self, call: CallId, extension: &str, sdp: &str) {
        self.gw.handle_hub(
            HubOutput::PbxCall {
                call,
                from: UserId::new("alice").unwrap(),
                extension: Extension::new(extension).unwrap(),
                sdp: sdp.into(),
            },
            self.now,
        );
        self.drain();
    }

    fn hub_send(&mut self, message: ServerMessage) {
        self.gw.handle_hub(
            HubOutput::Send {
                to: Endpoint::Pbx,
                message,
            },
            self.now,
        );
        self.drain();
    }

    fn assert_empty(&self) {
        assert_eq!(
            (
                self.gw.call_count(),
                self.gw.sip_call_count(),
                self.gw.ari_call_count()
            ),
            (0, 0, 0)
        );
    }
}

fn channel(id: &str, state: &str, protocol_id: &str) -> serde_json::Value {
    json!({"id": id, "name": "PJSIP/icegate-00000009", "state": state, "protocol_id": protocol_id,
           "caller": {"name": "", "number": "icegate"}, "connected": {"name": "", "number": ""},
           "dialplan": {"context": "from-icegate", "exten": "700", "priority": 1,
                        "app_name": "Stasis", "app_data": "icegate,700"}})
}

fn cand(line: &str) -> Option<IceCandidate> {
    Some(IceCandidate {
        candidate: line.into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    })
}

const CALL: CallId = CallId(0xc0ffee);

fn hangup_of(hub: &[ToHub]) -> Option<HangupReason> {
    hub.iter().find_map(|m| match m {
        ToHub::Event(PbxEvent::Hangup { reason, .. }) => Some(*reason),
        _ => None,
    })
}

#[test]
fn candidates_are_gathered_into_the_invite_then_ring_answer_dtmf_bye() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "700", BROWSER_SDP);
    assert!(rig.sip.is_empty(), "the INVITE waits for the candidates");
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: cand("candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host"),
    });
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: cand(""),
    });
    let invite = rig.take_sip(SipMethod::Invite);
    let sdp = invite.sdp().unwrap();
    assert!(sdp.contains("a=candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host\r\n"));
    assert!(sdp.ends_with("a=end-of-candidates\r\n"));
    assert_eq!(invite.request_uri(), Some("sip:700@pbx.example"));

    // The channel lands in Stasis: the controller links it, rings and answers it.
    rig.ari_event("StasisStart", channel("ch1", "Ring", invite.call_id()));
    assert!(rig.ari.iter().any(|(_, _, p)| p == "/channels/ch1/ring"));
    rig.answer_ari(204);
    rig.reply(&invite, 180, None);
    assert_eq!(rig.hub, [ToHub::Event(PbxEvent::Ringing { call: CALL })]);
    rig.hub.clear();
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.take_sip(SipMethod::Ack);
    assert_eq!(
        rig.hub,
        [ToHub::Event(PbxEvent::Answer {
            call: CALL,
            sdp: AST_SDP.into()
        })]
    );
    assert_eq!(rig.results, [CallResult::Answered]);
    rig.answer_ari(204);
    rig.hub.clear();

    // DTMF both ways.
    rig.hub_send(ServerMessage::Dtmf {
        call: CALL,
        digits: Digits::new("12#").unwrap(),
    });
    assert!(rig
        .ari
        .iter()
        .any(|(_, _, p)| p == "/channels/ch1/dtmf?dtmf=12%23"));
    rig.answer_ari(204);
    let dtmf = json!({"type": "ChannelDtmfReceived", "digit": "5", "duration_ms": 100,
        "application": "icegate", "timestamp": "2026-11-24T20:24:55.021+0000",
        "channel": channel("ch1", "Up", invite.call_id())});
    rig.gw.handle_ari_event(&dtmf.to_string(), rig.now);
    rig.drain();
    // Digits Asterisk received on the call's own channel are the browser's: not echoed back.
    assert_eq!(rig.hub, []);
    // A key pressed on the PBX side as SIP INFO (dtmf_mode=info) reaches the browser; INFO of
    // another kind is refused.
    let info = |content_type: &str, body: &str, cseq: u32| {
        let text = format!(
            "INFO sip:icegate@h SIP/2.0\r\nVia: SIP/2.0/WS 127.0.0.1:8088;branch=z9hG4bKinfo{cseq}\r\n\
             From: {};tag=ast-tag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INFO\r\n\
             Content-Type: {content_type}\r\n\r\n{body}",
            invite.header("To").unwrap(),
            invite.header("From").unwrap(),
            invite.call_id()
        );
        Message::parse(text.as_bytes()).unwrap()
    };
    rig.feed_sip(&info(
        "application/dtmf-relay",
        "Signal=7\r\nDuration=100\r\n",
        20,
    ));
    assert_eq!(rig.sip.pop().and_then(|m| m.code()), Some(200));
    assert_eq!(
        rig.hub,
        [ToHub::Event(PbxEvent::Dtmf {
            call: CALL,
            digits: Digits::new("7").unwrap()
        })]
    );
    rig.hub.clear();
    rig.feed_sip(&info("application/media_control+xml", "<x/>", 21));
    let refused = rig.sip.pop().unwrap();
    assert_eq!(refused.code(), Some(415));
    assert_eq!(
        refused.header("Accept"),
        Some("application/dtmf-relay, application/dtmf")
    );
    assert_eq!(rig.hub, []);

    // The browser hangs up: BYE.
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Normal,
    });
    let bye = rig.take_sip(SipMethod::Bye);
    rig.reply(&bye, 200, None);
    assert_eq!(rig.gw.call_count(), 0);
    assert_eq!(rig.gw.sip_call_count(), 0);
}

#[test]
fn the_gather_timeout_sends_what_there_is() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", BROWSER_SDP);
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: cand("candidate:7 1 udp 1 192.0.2.7 7 typ relay raddr 0.0.0.0 rport 0"),
    });
    let deadline = rig.gw.poll_timeout().unwrap();
    assert!(deadline <= rig.now + Duration::from_secs(2));
    rig.gw.handle_timeout(rig.now + Duration::from_secs(2));
    rig.drain();
    let invite = rig.take_sip(SipMethod::Invite);
    assert!(invite.sdp().unwrap().contains("typ relay"));
}

#[test]
fn a_complete_sdp_goes_at_once() {
    let mut rig = Rig::up();
    let complete = sdp::with_candidates(BROWSER_SDP, &[]);
    rig.hub_call(CALL, "600", &complete);
    rig.take_sip(SipMethod::Invite);
}

#[test]
fn failures_map_to_hangup_reasons() {
    for (code, reason) in [
        (486, HangupReason::Busy),
        (404, HangupReason::NotFound),
        (484, HangupReason::NotFound),
        (603, HangupReason::Declined),
        (480, HangupReason::Unavailable),
        (503, HangupReason::Unavailable),
        (408, HangupReason::NoAnswer),
    ] {
        let mut rig = Rig::up();
        rig.hub_call(CALL, "601", &sdp::with_candidates(BROWSER_SDP, &[]));
        let invite = rig.take_sip(SipMethod::Invite);
        rig.reply(&invite, code, None);
        assert_eq!(hangup_of(&rig.hub), Some(reason), "{code}");
        assert_eq!(rig.results, [CallResult::Failed(reason)]);
        rig.assert_empty();
    }
}

#[test]
fn hangup_while_ringing_cancels() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "602", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 180, None);
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Normal,
    });
    let cancel = rig.take_sip(SipMethod::Cancel);
    assert_eq!(cancel.call_id(), invite.call_id());
    assert_eq!(rig.gw.call_count(), 0);
    rig.reply(&cancel, 200, None);
    rig.reply(&invite, 487, None);
    rig.take_sip(SipMethod::Ack);
    rig.assert_empty();
}

#[test]
fn hangup_while_gathering_sends_nothing() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", BROWSER_SDP);
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Normal,
    });
    assert!(rig.sip.is_empty());
    rig.assert_empty();
    // Only the registration refresh is left to wait for.
    assert!(rig.gw.poll_timeout().unwrap() > rig.now + Duration::from_secs(60));
}

#[test]
fn asterisk_hangs_up_an_answered_call() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.sip.clear();
    rig.hub.clear();
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
    rig.gw.handle_sip(bye.as_bytes(), rig.now);
    rig.drain();
    assert_eq!(hangup_of(&rig.hub), Some(HangupReason::Normal));
    assert!(rig
        .sip
        .iter()
        .any(|m| m.encode().starts_with("SIP/2.0 200")));
    rig.assert_empty();
}

fn incoming_invite(to_user: &str) -> String {
    format!(
        "INVITE sip:icegate@127.0.0.1:48126;transport=WS SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjin1;alias\r\n\
         From: \"Reception\" <sip:100@pbx.example>;tag=ast\r\n\
         To: <sip:{to_user}@127.0.0.1>\r\n\
         Contact: <sip:asterisk@pbx.example:5060;transport=ws>\r\n\
         Call-ID: in-1\r\n\
         CSeq: 100 INVITE\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{AST_SDP}",
        AST_SDP.len()
    )
}

#[test]
fn asterisk_calls_a_browser_that_answers() {
    let mut rig = Rig::up();
    rig.gw
        .handle_sip(incoming_invite("bob").as_bytes(), rig.now);
    rig.drain();
    let Some(ToHub::Offer {
        token,
        from,
        to,
        sdp,
    }) = rig.hub.pop()
    else {
        panic!("no offer: {:?}", rig.hub);
    };
    assert_eq!(
        (from.as_str(), to.as_str(), sdp.as_str()),
        ("100", "bob", AST_SDP)
    );
    rig.sip.clear();
    rig.gw.offer_result(token, Ok(CALL), rig.now);
    rig.hub_send(ServerMessage::Ringing { call: CALL });
    assert!(rig.sip.pop().unwrap().encode().starts_with("SIP/2.0 180"));
    rig.hub_send(ServerMessage::Answer {
        call: CALL,
        sdp: BROWSER_SDP.into(),
    });
    assert!(rig.sip.is_empty(), "the answer waits for candidates");
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: cand("candidate:1 1 udp 1 10.0.0.1 5000 typ host"),
    });
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: None,
    });
    let ok = rig.sip.pop().unwrap();
    assert!(ok.encode().starts_with("SIP/2.0 200"));
    assert!(ok
        .sdp()
        .unwrap()
        .contains("a=candidate:1 1 udp 1 10.0.0.1 5000 typ host"));
    assert_eq!(rig.results, [CallResult::Answered]);
    // The browser hangs up later: BYE (after the ACK).
    let ack = "ACK sip:icegate@x.invalid;transport=ws SIP/2.0\r\n\
        Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjack\r\n\
        From: \"Reception\" <sip:100@pbx.example>;tag=ast\r\n";
    let ack = format!(
        "{ack}To: {}\r\nCall-ID: in-1\r\nCSeq: 100 ACK\r\nContent-Length: 0\r\n\r\n",
        ok.header("To").unwrap()
    );
    rig.gw.handle_sip(ack.as_bytes(), rig.now);
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Normal,
    });
    let bye = rig.take_sip(SipMethod::Bye);
    rig.reply(&bye, 200, None);
    rig.assert_empty();
}

#[test]
fn incoming_refusals() {
    // No such user at the hub: 404.
    let mut rig = Rig::up();
    rig.gw
        .handle_sip(incoming_invite("nobody").as_bytes(), rig.now);
    rig.drain();
    let Some(ToHub::Offer { token, .. }) = rig.hub.pop() else {
        panic!()
    };
    rig.sip.clear();
    rig.gw
        .offer_result(token, Err(ErrorCode::UnknownUser), rig.now);
    rig.drain();
    assert!(rig.sip.pop().unwrap().encode().starts_with("SIP/2.0 404"));
    rig.assert_empty();

    // Addressed to our own SIP user: nobody to ring.
    rig.gw
        .handle_sip(incoming_invite("icegate").as_bytes(), rig.now);
    rig.drain();
    assert!(rig.sip.pop().unwrap().encode().starts_with("SIP/2.0 404"));

    // The browser declines: 603.
    let mut rig = Rig::up();
    rig.gw
        .handle_sip(incoming_invite("bob").as_bytes(), rig.now);
    rig.drain();
    let Some(ToHub::Offer { token, .. }) = rig.hub.pop() else {
        panic!()
    };
    rig.gw.offer_result(token, Ok(CALL), rig.now);
    rig.sip.clear();
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Declined,
    });
    assert!(rig.sip.pop().unwrap().encode().starts_with("SIP/2.0 603"));
    rig.assert_empty();
}

#[test]
fn asterisk_cancels_an_offer_before_the_hub_took_it() {
    let mut rig = Rig::up();
    rig.gw
        .handle_sip(incoming_invite("bob").as_bytes(), rig.now);
    rig.drain();
    let Some(ToHub::Offer { token, .. }) = rig.hub.pop() else {
        panic!()
    };
    let cancel = "CANCEL sip:icegate@127.0.0.1:48126;transport=WS SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjin1;alias\r\n\
         From: \"Reception\" <sip:100@pbx.example>;tag=ast\r\n\
         To: <sip:bob@127.0.0.1>\r\nCall-ID: in-1\r\nCSeq: 100 CANCEL\r\n\
         Content-Length: 0\r\n\r\n";
    rig.gw.handle_sip(cancel.as_bytes(), rig.now);
    rig.drain();
    rig.assert_empty();
    // The hub made the call meanwhile: it is ended at once.
    rig.gw.offer_result(token, Ok(CALL), rig.now);
    rig.drain();
    assert_eq!(hangup_of(&rig.hub), Some(HangupReason::Normal));
}

#[test]
fn losing_ari_pauses_new_calls_and_losing_sip_ends_them_all() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    // A second call is still ringing.
    rig.hub_call(CallId(9), "602", &sdp::with_candidates(BROWSER_SDP, &[]));
    let ringing = rig.take_sip(SipMethod::Invite);
    rig.reply(&ringing, 180, None);
    rig.sip.clear();
    rig.hub.clear();
    rig.gw.ari_connection_lost(rig.now);
    rig.drain();
    // ARI alone: the answered call goes on, the one being set up ends (CANCEL).
    assert_eq!(
        rig.hub,
        [
            ToHub::Paused,
            ToHub::Event(PbxEvent::Hangup {
                call: CallId(9),
                reason: HangupReason::Unavailable
            })
        ]
    );
    rig.take_sip(SipMethod::Cancel);
    assert!(rig.sip.iter().all(|m| m.method() != Some(&SipMethod::Bye)));
    assert_eq!(rig.gw.call_count(), 1);
    // New calls are refused while down.
    rig.hub.clear();
    rig.hub_call(CallId(2), "600", BROWSER_SDP);
    assert_eq!(hangup_of(&rig.hub), Some(HangupReason::Unavailable));
    // ARI comes back after the backoff.
    let retry = rig.gw.poll_timeout().unwrap();
    rig.gw.handle_timeout(retry);
    rig.drain();
    assert_eq!(rig.connects, 2);
    rig.hub.clear();
    rig.gw.ari_connected(retry);
    rig.drain();
    assert_eq!(rig.hub, [ToHub::Available(true)]);

    // Now SIP goes: every call ends (the answered one too), the hub is told once.
    rig.hub.clear();
    rig.hub_call(CallId(3), "602", &sdp::with_candidates(BROWSER_SDP, &[]));
    assert_eq!(rig.gw.call_count(), 2);
    rig.lose_sip();
    // SIP lost while ARI is already down ends the answered calls too.
    rig.sip.clear();
    rig.register();
    rig.hub_call(CALL, "600", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.gw.ari_connection_lost(rig.now);
    rig.drain();
    assert_eq!(rig.gw.call_count(), 1);
    rig.hub.clear();
    rig.lose_sip();
    // SIP registers again, but new calls wait for ARI too.
    rig.sip.clear();
    rig.hub.clear();
    rig.register();
    assert_eq!(rig.hub, []);
    let retry = rig.gw.poll_timeout().unwrap();
    rig.gw.handle_timeout(retry);
    rig.gw.ari_connected(retry);
    rig.drain();
    assert_eq!(rig.hub, [ToHub::Available(true)]);
}

#[test]
fn malformed_input_is_logged_not_fatal() {
    let mut rig = Rig::up();
    for junk in ["", "garbage", "SIP/2.0 200\r\n\r\n", "INVITE x\r\n\r\n"] {
        rig.gw.handle_sip(junk.as_bytes(), rig.now);
    }
    for junk in ["", "{", "[]", "{\"type\":\"StasisStart\"}", "{\"type\":42}"] {
        rig.gw.handle_ari_event(junk, rig.now);
    }
    rig.gw
        .handle_ari_response(AriRequestId(999), 500, "{", rig.now);
    rig.drain();
    assert!(!rig.logs.is_empty());
    assert!(rig.gw.is_available());
    rig.assert_empty();
}

#[test]
fn uri_users() {
    assert_eq!(uri_user("sip:alice@h;transport=ws"), Some("alice"));
    assert_eq!(uri_user("sips:bob;x=1@h"), Some("bob"));
    assert_eq!(uri_user("sip:h"), None);
    assert_eq!(uri_user("tel:123"), None);
    assert_eq!(failure_reason(500), HangupReason::Unavailable);
}

#[derive(Debug, Clone)]
enum Op {
    Call(u8),
    Candidate(u8, bool),
    Hangup(u8),
    Respond(u16),
    Incoming(u8),
    Offer(bool),
    AnswerIncoming(u8),
    AriLost,
    AriBack,
    SipLost,
    SipBack,
    Garbage(Vec<u8>),
    Wait(u16),
    /// The browser renegotiates call N, restarting ICE or not.
    Renegotiate(u8, bool),
    /// The hub refuses an offer in call N.
    OfferFailed(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Call),
        ((0u8..4), any::<bool>()).prop_map(|(c, end)| Op::Candidate(c, end)),
        (0u8..4).prop_map(Op::Hangup),
        prop::sample::select(vec![100u16, 180, 183, 200, 404, 480, 486, 487, 503, 603])
            .prop_map(Op::Respond),
        (0u8..4).prop_map(Op::Incoming),
        any::<bool>().prop_map(Op::Offer),
        (0u8..4).prop_map(Op::AnswerIncoming),
        Just(Op::AriLost),
        Just(Op::AriBack),
        Just(Op::SipLost),
        Just(Op::SipBack),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        (0u16..5000).prop_map(Op::Wait),
        ((0u8..4), any::<bool>()).prop_map(|(c, restart)| Op::Renegotiate(c, restart)),
        (0u8..4).prop_map(Op::OfferFailed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any sequence of hub, SIP and ARI inputs: no panic, and once the hub has hung every
    /// call up and time has passed, nothing is left in the gateway, the UA or the controller.
    #[test]
    fn random_inputs_never_panic_or_leak(ops in prop::collection::vec(op(), 1..40)) {
        let mut rig = Rig::up();
        let mut incoming = 0u32;
        for op in ops {
            match op {
                Op::Call(c) => rig.hub_call(CallId(u64::from(c)), "700", BROWSER_SDP),
                Op::Candidate(c, end) => rig.hub_send(ServerMessage::Candidate {
                    call: CallId(u64::from(c)),
                    candidate: if end { None } else { cand("candidate:1 1 udp 1 10.0.0.1 1 typ host") },
                }),
                Op::Hangup(c) => rig.hub_send(ServerMessage::Hangup {
                    call: CallId(u64::from(c)),
                    reason: HangupReason::Normal,
                }),
                Op::Respond(code) => {
                    if let Some(i) = rig.sip.iter().rposition(|m| {
                        matches!(m.method(), Some(SipMethod::Invite | SipMethod::Cancel | SipMethod::Bye))
                    }) {
                        let request = rig.sip.remove(i);
                        let sdp = (code == 200 && request.method() == Some(&SipMethod::Invite)).then_some(AST_SDP);
                        rig.reply(&request, code, sdp);
                    }
                }
                Op::Incoming(user) => {
                    incoming += 1;
                    let text = incoming_invite(["bob", "carol", "icegate", "x"][usize::from(user)])
                        .replace("Call-ID: in-1", &format!("Call-ID: in-{incoming}"))
                        .replace("branch=z9hG4bKPjin1", &format!("branch=z9hG4bKPjin{incoming}"));
                    rig.gw.handle_sip(text.as_bytes(), rig.now);
                    rig.drain();
                }
                Op::Offer(accept) => {
                    let offer = rig.hub.iter().rev().find_map(|m| match m {
                        ToHub::Offer { token, .. } => Some(*token),
                        _ => None,
                    });
                    if let Some(token) = offer {
                        rig.hub.retain(|m| !matches!(m, ToHub::Offer { token: t, .. } if *t == token));
                        let result = if accept { Ok(CallId(100 + token)) } else { Err(ErrorCode::UnknownUser) };
                        rig.gw.offer_result(token, result, rig.now);
                        rig.drain();
                    }
                }
                Op::AnswerIncoming(c) => rig.hub_send(ServerMessage::Answer {
                    call: CallId(101 + u64::from(c)),
                    sdp: BROWSER_SDP.into(),
                }),
                Op::AriLost => { rig.gw.ari_connection_lost(rig.now); rig.drain(); }
                Op::AriBack => { rig.gw.ari_connected(rig.now); rig.drain(); }
                Op::SipLost => { rig.gw.sip_disconnected(rig.now); rig.drain(); }
                Op::SipBack => {
                    rig.gw.sip_connected(rig.now);
                    rig.drain();
                    if let Some(i) = rig.sip.iter().rposition(|m| m.method() == Some(&SipMethod::Register)) {
                        let register = rig.sip.remove(i);
                        rig.reply(&register, 200, None);
                    }
                }
                Op::Garbage(bytes) => {
                    rig.gw.handle_sip(&bytes, rig.now);
                    rig.gw.handle_ari_event(&String::from_utf8_lossy(&bytes), rig.now);
                    rig.drain();
                }
                Op::Wait(ms) => {
                    rig.now += Duration::from_millis(u64::from(ms));
                    rig.gw.handle_timeout(rig.now);
                    rig.drain();
                }
                Op::Renegotiate(c, restart) => rig.hub_send(ServerMessage::Offer {
                    call: CallId(u64::from(c)),
                    sdp: browser_ice(if restart { "new" } else { "" }, ""),
                }),
                Op::OfferFailed(c) => rig.hub_send(ServerMessage::OfferFailed {
                    call: CallId(u64::from(c)),
                }),
            }
        }
        // The hub hangs up everything it may still hold, then time passes.
        for c in (0..4).chain(100..110) {
            rig.hub_send(ServerMessage::Hangup { call: CallId(c), reason: HangupReason::Normal });
        }
        for _ in 0..400 {
            rig.now += Duration::from_secs(1);
            rig.gw.handle_timeout(rig.now);
            rig.drain();
            rig.answer_ari(404);
        }
        prop_assert_eq!(rig.gw.call_count(), 0);
        prop_assert_eq!(rig.gw.ari_call_count(), 0);
        prop_assert_eq!(rig.gw.sip_call_count(), 0);
    }
}

/// The browser's SDP with ICE credentials and one relay candidate, as Asterisk got it.
fn browser_ice(ufrag: &str, extra: &str) -> String {
    format!("{BROWSER_SDP}a=ice-ufrag:{ufrag}\r\n{extra}")
}

/// A re-INVITE from Asterisk in the dialog of our `invite`, offering `origin`'s version.
fn asterisk_reinvite(invite: &Message, cseq: u32, version: u32) -> Message {
    let sdp = AST_SDP.replace("o=- 1 1", &format!("o=- 1 {version}"));
    let text = format!(
        "INVITE sip:icegate@h SIP/2.0\r\nVia: SIP/2.0/WS 127.0.0.1:8088;branch=z9hG4bKre{cseq}\r\n\
         From: <sip:600@pbx.example>;tag=ast-tag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} INVITE\r\n\
         Contact: <sip:127.0.0.1:8088;transport=ws>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        invite.header("From").unwrap(),
        invite.call_id(),
        sdp.len()
    );
    Message::parse(text.as_bytes()).unwrap()
}

/// Asterisk's ACK for our 2xx to its re-INVITE `cseq`.
fn asterisk_ack(rig: &mut Rig, invite: &Message, cseq: u32) {
    let text = format!(
        "ACK sip:icegate@h SIP/2.0\r\nVia: SIP/2.0/WS 127.0.0.1:8088;branch=z9hG4bKack{cseq}\r\n\
         From: <sip:600@pbx.example>;tag=ast-tag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} ACK\r\n\
         Content-Length: 0\r\n\r\n",
        invite.header("From").unwrap(),
        invite.call_id(),
    );
    rig.gw.handle_sip(text.as_bytes(), rig.now);
    rig.drain();
}

fn final_status(rig: &mut Rig) -> u16 {
    let response = rig
        .sip
        .iter()
        .position(|m| m.code().is_some_and(|c| c >= 200))
        .unwrap_or_else(|| panic!("no final response in {:?}", rig.sip));
    rig.sip.remove(response).code().unwrap()
}

#[test]
fn browser_offers_become_reinvites_and_asterisk_reinvites_become_offers() {
    let mut rig = Rig::up();
    let first = browser_ice("brws", "a=candidate:7 1 udp 1 192.0.2.7 7000 typ relay\r\n");
    rig.hub_call(CALL, "600", &sdp::with_candidates(&first, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.sip.clear();
    rig.hub.clear();

    // Hold (same ICE credentials): the re-INVITE goes at once with the candidates kept.
    rig.hub_send(ServerMessage::Offer {
        call: CALL,
        sdp: browser_ice("brws", "a=sendonly\r\n"),
    });
    let reinvite = rig.take_sip(SipMethod::Invite);
    let offered = reinvite.sdp().unwrap();
    assert!(offered.contains("a=sendonly"), "{offered}");
    assert!(offered.contains("a=candidate:7 1 udp 1 192.0.2.7 7000 typ relay"));
    assert!(sdp::is_complete(offered));
    let held = AST_SDP.replace("o=- 1 1", "o=- 1 2");
    rig.reply(&reinvite, 200, Some(&held));
    rig.take_sip(SipMethod::Ack);
    assert_eq!(
        rig.hub,
        [ToHub::Event(PbxEvent::Answer {
            call: CALL,
            sdp: held.clone()
        })]
    );
    rig.hub.clear();

    // An ICE restart waits for the new candidates; Asterisk refuses it: the browser rolls back.
    rig.hub_send(ServerMessage::Offer {
        call: CALL,
        sdp: browser_ice("rstr", ""),
    });
    assert!(rig.sip.is_empty(), "the re-INVITE waits for candidates");
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: cand("candidate:8 1 udp 1 192.0.2.8 8000 typ relay"),
    });
    rig.hub_send(ServerMessage::Candidate {
        call: CALL,
        candidate: None,
    });
    let restart = rig.take_sip(SipMethod::Invite);
    let offered = restart.sdp().unwrap();
    assert!(offered.contains("candidate:8 ") && !offered.contains("candidate:7 "));
    rig.reply(&restart, 488, None);
    rig.take_sip(SipMethod::Ack);
    assert_eq!(
        rig.hub,
        [ToHub::Event(PbxEvent::OfferFailed { call: CALL })]
    );
    rig.hub.clear();

    // Asterisk offers: the browser gets it and answers with the same ICE credentials, so the
    // 200 goes at once and carries the candidates agreed before (the held offer's).
    rig.feed_sip(&asterisk_reinvite(&invite, 10, 3));
    let [ToHub::Event(PbxEvent::Offer { call, sdp: offer })] = &rig.hub[..] else {
        panic!("no offer for the hub: {:?}", rig.hub);
    };
    assert_eq!(*call, CALL);
    assert!(offer.contains("o=- 1 3"));
    rig.hub.clear();
    rig.sip.clear();
    rig.hub_send(ServerMessage::Answer {
        call: CALL,
        sdp: browser_ice("brws", "a=recvonly\r\n"),
    });
    let ok = rig.sip.pop().expect("a 200 for the re-INVITE");
    assert_eq!(ok.code(), Some(200));
    let answered = ok.sdp().unwrap();
    assert!(answered.contains("a=recvonly") && answered.contains("candidate:7 "));
    asterisk_ack(&mut rig, &invite, 10);

    // The hub refuses Asterisk's next offer (glare): 488, and the call stays up.
    rig.feed_sip(&asterisk_reinvite(&invite, 11, 4));
    assert!(matches!(
        rig.hub[..],
        [ToHub::Event(PbxEvent::Offer { .. })]
    ));
    rig.hub.clear();
    rig.sip.clear();
    rig.hub_send(ServerMessage::OfferFailed { call: CALL });
    assert_eq!(final_status(&mut rig), 488);

    // A browser that never answers: 488 after the timeout, and the hub forgets the offer.
    rig.feed_sip(&asterisk_reinvite(&invite, 12, 5));
    rig.hub.clear();
    rig.sip.clear();
    rig.now += RENEGOTIATION_TIMEOUT;
    rig.gw.handle_timeout(rig.now);
    rig.drain();
    assert_eq!(final_status(&mut rig), 488);
    assert_eq!(
        rig.hub,
        [ToHub::Event(PbxEvent::OfferFailed { call: CALL })]
    );
    assert_eq!(rig.gw.call_count(), 1, "the call goes on");

    // Hanging up while Asterisk's offer is open answers it, then says BYE.
    rig.feed_sip(&asterisk_reinvite(&invite, 13, 6));
    rig.sip.clear();
    rig.hub_send(ServerMessage::Hangup {
        call: CALL,
        reason: HangupReason::Normal,
    });
    assert_eq!(final_status(&mut rig), 488);
    let bye = rig.take_sip(SipMethod::Bye);
    rig.reply(&bye, 200, None);
    rig.assert_empty();
}

#[test]
fn dtmf_to_a_call_outside_stasis_goes_as_sip_info() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.sip.clear();
    // No StasisStart: the dialplan (Echo) has the channel, ARI cannot send to it.
    rig.hub_send(ServerMessage::Dtmf {
        call: CALL,
        digits: Digits::new("1#").unwrap(),
    });
    assert!(rig.ari.is_empty(), "{:?}", rig.ari);
    let infos: Vec<Message> = std::mem::take(&mut rig.sip);
    let bodies: Vec<&str> = infos.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "Signal=1\r\nDuration=160\r\n",
            "Signal=#\r\nDuration=160\r\n"
        ]
    );
    for info in &infos {
        assert_eq!(info.method(), Some(&SipMethod::Other("INFO".into())));
        assert_eq!(info.header("Content-Type"), Some("application/dtmf-relay"));
        assert_eq!(info.call_id(), invite.call_id());
    }
    let seqs: Vec<u32> = infos.iter().map(|m| m.cseq().unwrap().0).collect();
    assert!(seqs[0] < seqs[1], "{seqs:?}");
    // A refused digit is counted; a 481 means the dialog is gone.
    rig.reply(&infos[0], 415, None);
    assert_eq!(rig.gw.sip_stats().info_refused, 1);
    assert_eq!(rig.gw.call_count(), 1);
    rig.reply(&infos[1], 481, None);
    assert_eq!(hangup_of(&rig.hub), Some(HangupReason::Unavailable));
    rig.assert_empty();
}

#[test]
fn shutdown_ends_calls_and_unregisters() {
    let mut rig = Rig::up();
    rig.hub_call(CALL, "600", &sdp::with_candidates(BROWSER_SDP, &[]));
    let invite = rig.take_sip(SipMethod::Invite);
    rig.reply(&invite, 200, Some(AST_SDP));
    rig.sip.clear();
    rig.hub.clear();
    assert!(rig.gw.is_quiet());

    rig.gw.shutdown(rig.now);
    rig.drain();
    assert_eq!(rig.hub, [ToHub::Available(false)]);
    let bye = rig.take_sip(SipMethod::Bye);
    let register = rig.take_sip(SipMethod::Register);
    assert!(
        register.header("Contact").unwrap().contains("expires=0"),
        "{}",
        register.encode()
    );
    assert!(!rig.gw.is_quiet(), "the BYE and the REGISTER are open");
    rig.reply(&bye, 200, None);
    rig.reply(&register, 200, None);
    assert!(rig.gw.is_quiet());
    assert!(!rig.gw.is_registered());
    rig.assert_empty();
    // Asterisk's calls are refused from now on.
    rig.gw
        .handle_sip(incoming_invite("bob").as_bytes(), rig.now);
    rig.drain();
    assert!(rig.hub.iter().all(|m| !matches!(m, ToHub::Offer { .. })));
}

#[test]
fn the_browser_user_comes_from_the_to_uri_or_else_the_request_uri() {
    let mut rig = Rig::up();
    // To names only the endpoint; the Request-URI names the user (Dial(PJSIP/carol@icegate)
    // on an Asterisk that leaves To alone).
    let invite = incoming_invite("icegate").replace("INVITE sip:icegate@", "INVITE sip:carol@");
    rig.gw.handle_sip(invite.as_bytes(), rig.now);
    rig.drain();
    let Some(ToHub::Offer { to, .. }) = rig.hub.pop() else {
        panic!("no offer: {:?}", rig.hub);
    };
    assert_eq!(to.as_str(), "carol");
}
