//! Checks the Asterisk stand-in (tests/src/asterisk/) against the recordings of a real
//! Asterisk 22.10.1: each recorded flow's client side is replayed against the stand-in
//! (identifiers the server chose are rewritten to the stand-in's, digests recomputed for
//! its nonces) and every answer is compared in shape with what Asterisk sent: exact status
//! lines, header sets, identifier-free header values, SDP attribute sequence, event types
//! in order, JSON keys and the values that carry meaning (states, causes, args).
//! What the recordings do not show is in asterisk_standin.rs.
#![deny(unsafe_code)]

use futures_util::SinkExt;
use icegate_tests::asterisk::client::{ws_connect, HttpReply, Ws};
use icegate_tests::asterisk::recording::{self, json_shape_diff, sip_shape_diff, Recorded};
use icegate_tests::asterisk::sip::{self, SipMessage};
use icegate_tests::asterisk::{digest, AsteriskStandIn, Config};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use icegate_tests::asterisk::client::checked::{
    http, options_answered_next, recv_event, recv_sip, register,
};

/// Replays one recorded flow against a fresh stand-in.
struct Replay {
    pbx: AsteriskStandIn,
    sip: Ws,
    events: Ws,
    /// Recorded identifier → the stand-in's.
    subst: Vec<(String, String)>,
    challenge: Option<String>,
    rest: Option<HttpReply>,
}

impl Replay {
    async fn new(preregister: bool) -> Replay {
        let pbx = AsteriskStandIn::start(Config::default());
        let addr = pbx.addr();
        let events = ws_connect(
            addr,
            "/ari/events?app=icegate&api_key=icegate:ari-secret&subscribeAll=false",
            None,
        )
        .await
        .expect("events socket");
        let mut sip = ws_connect(addr, "/ws", Some("sip"))
            .await
            .expect("SIP socket");
        if preregister {
            assert_eq!(register(&mut sip).await.status(), Some(200));
        }
        Replay {
            pbx,
            sip,
            events,
            subst: vec![],
            challenge: None,
            rest: None,
        }
    }

    fn learn(&mut self, recorded: &str, live: &str) {
        if !recorded.is_empty()
            && recorded != live
            && !self.subst.iter().any(|(r, _)| r == recorded)
        {
            self.subst.push((recorded.to_string(), live.to_string()));
            // Longest first, so that a whole header value wins over a tag inside it.
            self.subst.sort_by_key(|(r, _)| std::cmp::Reverse(r.len()));
        }
    }

    fn rewrite(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (r, l) in &self.subst {
            out = out.replace(r, l);
        }
        out
    }

    fn learn_sip(&mut self, rec: &SipMessage, live: &SipMessage) {
        for h in ["From", "To", "Via", "CSeq", "Call-ID"] {
            if let (Some(r), Some(l)) = (rec.header(h), live.header(h)) {
                if !rec.is_request() && h == "Via" {
                    continue; // the client's own Via, with the recorder's port in it
                }
                self.learn(r, l);
            }
        }
        for (r, l) in [
            (rec.to_tag(), live.to_tag()),
            (rec.from_tag(), live.from_tag()),
        ] {
            if let (Some(r), Some(l)) = (r, l) {
                self.learn(&r, &l);
            }
        }
        if let (Some(r), Some(l)) = (rec.header("Contact"), live.header("Contact")) {
            self.learn(sip::addr_uri(r), sip::addr_uri(l));
        }
        if let Some(c) = live.header("WWW-Authenticate") {
            self.challenge = Some(c.to_string());
        }
    }

    fn learn_json(&mut self, rec: &Value, live: &Value) {
        for key in ["id", "protocol_id"] {
            if let (Some(r), Some(l)) = (rec[key].as_str(), live[key].as_str()) {
                self.learn(r, l);
            }
        }
        for key in ["channel", "peer", "playback"] {
            if rec.get(key).is_some() {
                self.learn_json(&rec[key], &live[key]);
            }
        }
    }

    /// A recorded client request, rewritten; a recorded digest is recomputed for the live
    /// nonce with the right password if it was right, with a wrong one if it was wrong.
    fn client_sip(&self, rec: &Recorded) -> String {
        let mut msg = SipMessage::parse(&self.rewrite(rec.text())).expect("rewritten SIP parses");
        if let Some(auth) = rec.sip().header("Authorization") {
            let was_right = digest::verify(
                auth,
                &msg.method(),
                "asterisk",
                |_| Some("sip-secret".into()),
                |_| true,
            )
            .is_ok();
            let params = digest::parse_params(auth).unwrap();
            let uri = &params.iter().find(|(k, _)| k == "uri").unwrap().1;
            let pw = if was_right {
                "sip-secret"
            } else {
                "not-the-secret"
            };
            let challenge = self.challenge.as_deref().expect("a challenge came before");
            let fresh =
                digest::authorization(challenge, &msg.method(), uri, "icegate", pw).unwrap();
            msg.set_header("Authorization", fresh);
        }
        msg.to_string()
    }

    /// Returns the replay with its sockets still open (closing the SIP socket would
    /// remove the registration a test may want to look at).
    async fn run(mut self, flow: &str) -> Replay {
        let rec = recording::load(flow);
        let msgs = rec.messages.clone();
        let mut compared = 0;
        for (i, m) in msgs.iter().enumerate() {
            let ctx = format!(
                "{flow} message {i} ({} {} at {} ms)",
                m.channel, m.dir, m.t_ms
            );
            match (m.channel.as_str(), m.dir.as_str()) {
                ("sip-ws", "to-asterisk") => {
                    let text = self.client_sip(m);
                    self.sip.send(Message::text(text)).await.unwrap();
                }
                ("sip-ws", "from-asterisk") => {
                    let live = recv_sip(&mut self.sip).await;
                    let expected = m.sip();
                    let diff = sip_shape_diff(&expected, &live);
                    assert!(
                        diff.is_empty(),
                        "{ctx}: {diff:#?}\nexpected:\n{}\ngot:\n{live}",
                        m.text()
                    );
                    self.learn_sip(&expected, &live);
                    compared += 1;
                }
                ("ari-events", "from-asterisk") => {
                    if m.data["type"] == "ChannelDtmfReceived" {
                        // DTMF comes from the caller's RTP, which a replay has not got.
                        let ch = self.rewrite(m.data["channel"]["id"].as_str().unwrap());
                        assert!(
                            self.pbx.inject_dtmf(&ch, m.data["digit"].as_str().unwrap()),
                            "{ctx}"
                        );
                    }
                    let live = recv_event(&mut self.events).await;
                    assert_eq!(
                        live["type"], m.data["type"],
                        "{ctx}: event order\ngot {live}"
                    );
                    let diff = json_shape_diff(&m.data, &live, "event");
                    assert!(
                        diff.is_empty(),
                        "{ctx}: {diff:#?}\nexpected {}\ngot {live}",
                        m.data
                    );
                    self.learn_json(&m.data, &live);
                    let expected: Value =
                        serde_json::from_str(&self.rewrite(&m.data.to_string())).unwrap();
                    for path in [
                        "/args",
                        "/digit",
                        "/cause",
                        "/cause_txt",
                        "/tech_cause",
                        "/soft",
                        "/dialstatus",
                        "/variable",
                        "/channel/state",
                        "/channel/dialplan",
                        "/channel/caller",
                        "/peer/state",
                        "/playback/state",
                        "/playback/media_uri",
                        "/playback/target_uri",
                    ] {
                        assert_eq!(
                            live.pointer(path),
                            expected.pointer(path),
                            "{ctx}: {path}\ngot {live}"
                        );
                    }
                    compared += 1;
                }
                ("ari-rest", "to-asterisk") => {
                    let method = m.data["method"].as_str().unwrap();
                    let path = self.rewrite(m.data["path"].as_str().unwrap());
                    // The recording's 401 came from a wrong password.
                    let next_is_401 = msgs[i + 1..]
                        .iter()
                        .find(|n| n.channel == "ari-rest")
                        .is_some_and(|n| n.data["status"] == 401);
                    let auth = if next_is_401 {
                        ("icegate", "wrong")
                    } else {
                        ("icegate", "ari-secret")
                    };
                    self.rest = Some(
                        http(self.pbx.addr(), method, &format!("/ari{path}"), Some(auth)).await,
                    );
                }
                ("ari-rest", "from-asterisk") => {
                    let live = self.rest.take().expect("a request before the response");
                    assert_eq!(
                        u64::from(live.status),
                        m.data["status"].as_u64().unwrap(),
                        "{ctx}: {}",
                        live.body
                    );
                    assert_eq!(
                        live.content_type.as_deref(),
                        m.data["content_type"].as_str(),
                        "{ctx}"
                    );
                    let body: Value = if live.body.is_empty() {
                        Value::String(String::new())
                    } else {
                        serde_json::from_str(&live.body).expect("JSON body")
                    };
                    let diff = json_shape_diff(&m.data["body"], &body, "body");
                    assert!(diff.is_empty(), "{ctx}: {diff:#?}\ngot {body}");
                    if live.status >= 400 {
                        assert_eq!(body, m.data["body"], "{ctx}: error bodies are fixed texts");
                    }
                    self.learn_json(&m.data["body"], &body);
                    compared += 1;
                }
                _ => {}
            }
        }
        assert!(compared > 0, "{flow}: nothing compared");
        // Nothing more than the recording: no stray SIP messages before the answer to an
        // OPTIONS sent now.
        options_answered_next(&mut self.sip, flow).await;
        self
    }
}

async fn replay(flow: &str) -> Replay {
    Replay::new(flow != "register").await.run(flow).await
}

#[tokio::test]
async fn asterisk_recording_register() {
    let r = replay("register").await;
    let pbx = &r.pbx;
    assert_eq!(pbx.registrations().len(), 1);
}

#[tokio::test]
async fn asterisk_recording_sip_wrong_password() {
    let r = replay("sip-wrong-password").await;
    let pbx = &r.pbx;
    // Only the pre-registration; the wrong digest registered nothing new.
    assert_eq!(pbx.registrations().len(), 1);
    assert_eq!(
        pbx.registrations()[0].contact,
        "sip:icegate@c.invalid;transport=ws"
    );
}

#[tokio::test]
async fn asterisk_recording_unregister() {
    let r = replay("unregister").await;
    let pbx = &r.pbx;
    // The recorded "unregister" keeps `;expires=600` on its Contact, which wins over
    // `Expires: 0` (RFC 3261 10.2.1.1): Asterisk answered expires=599, and so does this.
    assert!(pbx
        .registrations()
        .iter()
        .any(|r| r.contact.contains("baf1a066.invalid")));
}

#[tokio::test]
async fn asterisk_recording_ari_basics() {
    replay("ari-basics").await;
}

#[tokio::test]
async fn asterisk_recording_browser_calls_echo() {
    let r = replay("browser-calls-echo").await;
    let pbx = &r.pbx;
    assert!(pbx.idle(), "the BYE ended the channel");
}

#[tokio::test]
async fn asterisk_recording_browser_calls_stasis() {
    let r = replay("browser-calls-stasis").await;
    let pbx = &r.pbx;
    assert!(pbx.channels().is_empty());
    let reqs = pbx.ari_requests();
    assert!(reqs
        .iter()
        .any(|(m, p)| m == "DELETE" && p.ends_with("?reason=normal")));
}

#[tokio::test]
async fn asterisk_recording_asterisk_calls_browser() {
    let r = replay("asterisk-calls-browser").await;
    let pbx = &r.pbx;
    assert!(pbx.channels().is_empty());
}

#[tokio::test]
async fn asterisk_recording_asterisk_call_rejected() {
    let r = replay("asterisk-call-rejected").await;
    let pbx = &r.pbx;
    assert!(pbx.channels().is_empty());
}

#[tokio::test]
async fn asterisk_recording_browser_calls_busy() {
    replay("browser-calls-busy").await;
}

#[tokio::test]
async fn asterisk_recording_browser_cancels_ringing() {
    let r = replay("browser-cancels-ringing").await;
    let pbx = &r.pbx;
    assert!(pbx.channels().is_empty());
    assert_eq!(
        pbx.sip_requests("ACK").len(),
        2,
        "the 401 and the 487 were both ACKed"
    );
}

#[tokio::test]
async fn asterisk_recording_browser_calls_unknown() {
    replay("browser-calls-unknown").await;
}

/// Every recording is replayed by one of the tests above.
#[test]
fn asterisk_every_recording_is_replayed() {
    let src = include_str!("asterisk_recordings.rs");
    for entry in std::fs::read_dir(recording::dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(flow) = name.strip_suffix(".json") {
            let test = format!("fn asterisk_recording_{}()", flow.replace('-', "_"));
            assert!(src.contains(&test), "no replay test for {name}");
        }
    }
}
