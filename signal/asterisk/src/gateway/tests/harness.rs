//! What every gateway test shares: the [`Rig`] (a gateway on a fake clock, with helpers that
//! play Asterisk's SIP and ARI sides and the hub), the SDPs, ARI channels, candidates, and an
//! INVITE from Asterisk.
//!
//! Its imports are re-exported, so a test module needs only `use super::harness::*;`.

pub(super) use icegate_signal_proto::hub::{Endpoint, Output as HubOutput};
pub(super) use icegate_signal_proto::protocol::{Digits, ErrorCode};
pub(super) use serde_json::json;

pub(super) use super::super::*;
pub(super) use crate::ari::controller::Routing;
pub(super) use crate::sip::builder::response;
pub(super) use crate::sip::message::Message;
pub(super) use crate::sip::method::Method as SipMethod;

pub(crate) const AST_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nt=0 0\r\n\
    m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 127.0.0.1 4000 typ host\r\n\
    a=end-of-candidates\r\n";
pub(crate) const BROWSER_SDP: &str = "v=0\r\no=- 9 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
    m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n";

pub(super) struct Rig {
    pub(super) gw: Gateway,
    pub(super) now: Instant,
    pub(super) sip: Vec<Message>,
    pub(super) hub: Vec<ToHub>,
    pub(super) ari: Vec<(AriRequestId, Method, String)>,
    pub(super) results: Vec<CallResult>,
    pub(super) logs: Vec<String>,
    pub(super) connects: usize,
}

pub(crate) fn config() -> GatewayConfig {
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
    pub(super) fn new() -> Rig {
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
    pub(super) fn up() -> Rig {
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
    pub(super) fn register(&mut self) {
        self.gw.sip_connected(self.now);
        self.drain();
        let register = self.take_sip(SipMethod::Register);
        self.reply(&register, 200, None);
    }

    /// The SIP WebSocket is lost: the hub hears once that the PBX is unavailable, and every
    /// call ends with `Unavailable`, leaving nothing behind.
    pub(super) fn lose_sip(&mut self) {
        self.gw.sip_disconnected(self.now);
        self.drain();
        assert!(self.hub.contains(&ToHub::Available(false)));
        assert_eq!(hangup_of(&self.hub), Some(HangupReason::Unavailable));
        self.assert_empty();
    }

    pub(super) fn drain(&mut self) {
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

    pub(super) fn take_sip(&mut self, method: SipMethod) -> Message {
        let i = self
            .sip
            .iter()
            .position(|m| m.method() == Some(&method))
            .unwrap_or_else(|| panic!("no {method:?} in {:?}", self.sip));
        self.sip.remove(i)
    }

    pub(super) fn feed_sip(&mut self, m: &Message) {
        self.gw.handle_sip(m.encode().as_bytes(), self.now);
        self.drain();
    }

    pub(super) fn reply(&mut self, request: &Message, code: u16, sdp: Option<&str>) {
        let mut r = response(request, code, Some("ast-tag"));
        if let Some(sdp) = sdp {
            r.push("Contact", "<sip:asterisk@127.0.0.1:5060;transport=ws>");
            r.set_body("application/sdp", sdp);
        }
        self.feed_sip(&r);
    }

    pub(super) fn ari_event(&mut self, kind: &str, channel: serde_json::Value) {
        let e = json!({"type": kind, "timestamp": "2026-11-24T20:24:55.021+0000",
                       "application": "icegate", "channel": channel, "args": ["700"]});
        self.gw.handle_ari_event(&e.to_string(), self.now);
        self.drain();
    }

    pub(super) fn answer_ari(&mut self, status: u16) {
        for (id, _, _) in std::mem::take(&mut self.ari) {
            self.gw.handle_ari_response(id, status, "", self.now);
        }
        self.drain();
    }

    pub(super) fn hub_call(&mut self, call: CallId, extension: &str, sdp: &str) {
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

    pub(super) fn hub_send(&mut self, message: ServerMessage) {
        self.gw.handle_hub(
            HubOutput::Send {
                to: Endpoint::Pbx,
                message,
            },
            self.now,
        );
        self.drain();
    }

    pub(super) fn assert_empty(&self) {
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

pub(crate) fn channel(id: &str, state: &str, protocol_id: &str) -> serde_json::Value {
    json!({"id": id, "name": "PJSIP/icegate-00000009", "state": state, "protocol_id": protocol_id,
           "caller": {"name": "", "number": "icegate"}, "connected": {"name": "", "number": ""},
           "dialplan": {"context": "from-icegate", "exten": "700", "priority": 1,
                        "app_name": "Stasis", "app_data": "icegate,700"}})
}

pub(crate) fn cand(line: &str) -> Option<IceCandidate> {
    Some(IceCandidate {
        candidate: line.into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    })
}

pub(super) const CALL: CallId = CallId(0xc0ffee);

pub(super) fn hangup_of(hub: &[ToHub]) -> Option<HangupReason> {
    hub.iter().find_map(|m| match m {
        ToHub::Event(PbxEvent::Hangup { reason, .. }) => Some(*reason),
        _ => None,
    })
}

pub(crate) fn incoming_invite(to_user: &str) -> String {
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

/// The browser's SDP with ICE credentials and one relay candidate, as Asterisk got it.
pub(super) fn browser_ice(ufrag: &str, extra: &str) -> String {
    format!("{BROWSER_SDP}a=ice-ufrag:{ufrag}\r\n{extra}")
}
