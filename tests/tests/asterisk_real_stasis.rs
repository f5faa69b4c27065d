//! Calls that a real Asterisk (the sample configuration of docs/asterisk/) hands to
//! icegate-signal's Stasis application: `_X.` → `Stasis(icegate,${EXTEN})`, where the gateway
//! rings and answers (its default routing), and then `play`, `transfer` and `dtmf` go to ARI.
//! Also a re-INVITE from Asterisk, which reaches the browser as an `offer`.
//!
//! Each test checks what the browser is told and what Asterisk did: the ARI observer's
//! events, ARI GETs, Asterisk's messages log (its `dtmf` level) and, where the SIP or RTP
//! itself is the evidence, a trace channel of Asterisk's logger with `pjsip set logger on` /
//! `rtp set debug on` ([`Trace`]).
//!
//! Facts of the real Asterisk these tests rely on (22.10.1):
//! - The observer (`subscribeAll=true`) never gets `StasisStart`/`StasisEnd` of another
//!   application: entering and leaving Stasis show as `ChannelDialplan` events and in
//!   `GET /ari/applications/icegate`'s `channel_ids`.
//! - Digits Asterisk *sends* (ARI `POST /channels/{id}/dtmf`) leave no line at the `dtmf`
//!   log level, which only logs digits *received* ("DTMF end '5' received on …"), and raise no
//!   ARI event. With RFC 4733 negotiated they are RTP; the media test receives them.
//! - A `tone:` playback never ends by itself, and the channel's ARI `continue` (a transfer)
//!   waits behind it until it is stopped: the gateway stops it (`DELETE /playbacks/{id}`).
//!
//! The media test (real RTP through icegate-relay, webrtc-rs) needs the `media-echo` feature,
//! as scripts/test builds it. Each test starts its own Asterisk (about 2 s). Without an Asterisk (`ASTERISK_BIN`), each
//! says SKIPPED and passes.
#![deny(unsafe_code)]

use icegate_tests::asterisk::pbx_calls::{after_ringing, call, OFFER};
use icegate_tests::asterisk::real_rig::{RealRig, RigOptions, WAIT};
use icegate_tests::signal::{eventually, WsClient};
use serde_json::{json, Value};
use std::path::PathBuf;

fn start(test: &str) -> Option<RealRig> {
    RealRig::start(test, RigOptions::default())
}

/// Asterisk's verbose output up to level 5 in a log file of its own. The messages log logs
/// verbose messages only at the console level of the foreground Asterisk (0), so the SIP of
/// `pjsip set logger on` and the RTP of `rtp set debug on` appear only here.
struct Trace {
    path: PathBuf,
}

impl Trace {
    /// Adds the logger channel, then runs each of `commands` (`pjsip set logger on`, …).
    fn start(rig: &RealRig, commands: &[&str]) -> Trace {
        let out = rig
            .ast
            .cli("logger add channel icegate-trace.log notice,warning,error,verbose(5),dtmf");
        assert!(!out.contains("Failed"), "logger add channel: {out}");
        for command in commands {
            let out = rig.ast.cli(command);
            assert!(
                out.contains("nabled"),
                "{command} did not say Enabled/enabled: {out}"
            );
        }
        Trace {
            path: rig.ast.dir.path().join("log/icegate-trace.log"),
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The log entries (a `[date] LEVEL[…]` line and, for SIP, the message after it) from
    /// byte `mark` on, with the SIP messages' CRs removed.
    fn entries_since(&self, mark: usize) -> Vec<String> {
        let text = self.text();
        let text = text.get(mark..).unwrap_or_default().replace('\r', "");
        let mut entries: Vec<String> = vec![];
        for line in text.lines() {
            match entries.last_mut() {
                Some(entry) if !line.starts_with('[') => {
                    entry.push('\n');
                    entry.push_str(line);
                }
                _ => entries.push(line.to_owned()),
            }
        }
        entries
    }
}

/// `GET /ari/channels/{id}`, which must exist.
fn channel(rig: &RealRig, id: &str) -> Value {
    let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{id}"));
    assert_eq!(status, 200, "GET channel {id}: {ch}");
    ch
}

/// Whether the channel is in the application `icegate` now.
fn in_icegate_app(rig: &RealRig, id: &str) -> bool {
    let (status, app) = rig.ast.ari("GET", "/ari/applications/icegate");
    assert_eq!(status, 200, "{app}");
    app["channel_ids"]
        .as_array()
        .is_some_and(|ids| ids.iter().any(|c| c == id))
}

/// Waits for the observer's `ChannelDialplan` of channel `id` entering `app`.
fn expect_dialplan_app(rig: &RealRig, id: &str, app: &str) -> Value {
    rig.observer
        .wait_for(WAIT, |e| {
            e["type"] == "ChannelDialplan" && e["channel"]["id"] == id && e["dialplan_app"] == app
        })
        .unwrap_or_else(|| {
            panic!(
                "channel {id} never ran {app}(): {:#?}",
                rig.observer.events()
            )
        })
}

/// The digits of the `ChannelDtmfReceived` events Asterisk raised for `channel`, in order.
fn dtmf_received(rig: &RealRig, channel: &str) -> String {
    rig.observer
        .of_type("ChannelDtmfReceived")
        .iter()
        .filter(|e| e["channel"]["id"] == channel)
        .filter_map(|e| e["digit"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until Asterisk's channel `id` is `Up`; returns it.
fn expect_up(rig: &RealRig, id: &str) -> Value {
    let mut ch = Value::Null;
    let up = eventually(WAIT, || {
        ch = channel(rig, id);
        ch["state"] == "Up"
    });
    assert!(up, "channel {id} never came up: {ch}");
    ch
}

/// Sends a `dtmf` and expects its `ack`.
fn send_dtmf(browser: &mut WsClient, call: &str, digits: &str) {
    browser.send(json!({"v":1,"type":"dtmf","id":"dtmf","call":call,"digits":digits}));
    assert_eq!(browser.expect("ack")["id"], "dtmf");
}

#[test]
fn asterisk_real_stasis_rings_answers_plays_and_transfers_to_echo() {
    let Some(rig) = start("asterisk_real_stasis_rings_answers_plays_and_transfers_to_echo") else {
        return;
    };
    let mut alice = rig.browser("alice");

    // 700 matches `_X.`: Stasis(icegate,700). The gateway rings (180) and answers (200).
    let call700 = call(&mut alice, "700");
    let (answer, rang) = after_ringing(&mut alice);
    assert!(rang, "ARI ring should reach the browser as ringing first");
    assert_eq!(answer["type"], "answer", "{answer}");
    assert_eq!(answer["call"], call700.as_str(), "{answer}");
    assert!(answer["sdp"].as_str().unwrap().contains("a=setup:active"));

    let channel0 = rig.newest_channel(0);
    let id = channel0["id"].as_str().unwrap().to_owned();
    let name = channel0["name"].as_str().unwrap().to_owned();
    let entered = expect_dialplan_app(&rig, &id, "Stasis");
    assert_eq!(entered["dialplan_app_data"], "icegate,700", "{entered}");
    assert_eq!(entered["channel"]["dialplan"]["exten"], "700", "{entered}");
    let ch = expect_up(&rig, &id);
    assert_eq!(ch["dialplan"]["app_name"], "Stasis", "{ch}");
    assert_eq!(ch["dialplan"]["app_data"], "icegate,700", "{ch}");
    assert!(in_icegate_app(&rig, &id), "700's channel is not in icegate");
    rig.observer
        .expect_channel_event("ChannelStateChange", &id, WAIT);

    // DTMF in Stasis goes to ARI (POST /channels/{id}/dtmf): Asterisk sends the digits, it
    // does not receive them, so unlike SIP INFO they raise no ChannelDtmfReceived (checked
    // at the end). The media test sees them arrive as RFC 4733.
    send_dtmf(&mut alice, &call700, "12");

    // play: Asterisk starts the tone; the observer sees the playback on this channel.
    alice
        .send(json!({"v":1,"type":"play","id":"p","call":call700,"media":"tone:ring;tonezone=us"}));
    assert_eq!(alice.expect("ack")["id"], "p");
    let target = format!("channel:{id}");
    let started = rig
        .observer
        .wait_for(WAIT, |e| {
            e["type"] == "PlaybackStarted" && e["playback"]["target_uri"] == target.as_str()
        })
        .unwrap_or_else(|| panic!("no PlaybackStarted: {:#?}", rig.observer.events()));
    let playback = &started["playback"];
    assert_eq!(playback["media_uri"], "tone:ring;tonezone=us", "{started}");
    assert_eq!(playback["state"], "playing", "{started}");
    let playback_id = playback["id"].as_str().unwrap().to_owned();
    let (status, pb) = rig.ast.ari("GET", &format!("/ari/playbacks/{playback_id}"));
    assert_eq!((status, &pb["state"]), (200, &json!("playing")), "{pb}");

    // A tone plays until it is stopped, and Asterisk runs the channel's later ARI commands
    // (the transfer's `continue`) only after it. The gateway stops the call's playbacks
    // before it transfers: PlaybackFinished (`done`), then the channel leaves for 600.
    alice.send(json!({"v":1,"type":"transfer","id":"t","call":call700,"to":"600"}));
    assert_eq!(alice.expect("ack")["id"], "t");
    let finished = rig
        .observer
        .wait_for(WAIT, |e| {
            e["type"] == "PlaybackFinished" && e["playback"]["id"] == playback_id.as_str()
        })
        .expect("PlaybackFinished");
    assert_eq!(finished["playback"]["state"], "done", "{finished}");
    let (status, _) = rig.ast.ari("GET", &format!("/ari/playbacks/{playback_id}"));
    assert_eq!(status, 404, "the tone still plays");

    // transfer: ARI `continue` to from-icegate,600,1: the channel leaves icegate's Stasis
    // and runs Answer() and Echo() there, and the browser's call goes on.
    let echo = expect_dialplan_app(&rig, &id, "Echo");
    assert_eq!(echo["channel"]["dialplan"]["exten"], "600", "{echo}");
    let ch = channel(&rig, &id);
    assert_eq!(ch["state"], "Up", "{ch}");
    assert_eq!(
        (
            &ch["dialplan"]["context"],
            &ch["dialplan"]["exten"],
            &ch["dialplan"]["app_name"]
        ),
        (&json!("from-icegate"), &json!("600"), &json!("Echo")),
        "{ch}"
    );
    assert!(
        !in_icegate_app(&rig, &id),
        "still in icegate after the transfer"
    );
    alice.ping(1);

    // Out of Stasis, the gateway sends DTMF as SIP INFO, which Asterisk receives: a
    // ChannelDtmfReceived (INFO's Duration=160) and a line at the `dtmf` log level.
    send_dtmf(&mut alice, &call700, "5");
    let five = rig
        .observer
        .expect_channel_event("ChannelDtmfReceived", &id, WAIT);
    assert_eq!(
        (&five["digit"], &five["duration_ms"]),
        (&json!("5"), &json!(160))
    );
    let line = format!("DTMF end '5' received on {name}, duration 160 ms");
    assert!(
        eventually(WAIT, || rig.ast.messages().contains(&line)),
        "no {line:?} in the messages log:\n{}",
        rig.ast.messages()
    );

    // `#` ends Echo(); Hangup() follows, Asterisk says BYE, the browser hears normal.
    send_dtmf(&mut alice, &call700, "#");
    let hangup = alice.expect("hangup");
    assert_eq!(
        (&hangup["call"], &hangup["reason"]),
        (&json!(call700), &json!("normal")),
        "{hangup}"
    );
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    assert_eq!(
        (&destroyed["cause"], &destroyed["cause_txt"]),
        (&json!(16), &json!("Normal Clearing")),
        "{destroyed}"
    );
    // Everything Asterisk received is the two INFO digits; the ARI ones ("12") were sent.
    assert_eq!(dtmf_received(&rig, &id), "5#");
    let messages = rig.ast.messages();
    for digit in ['1', '2'] {
        assert!(
            !messages.contains(&format!("DTMF end '{digit}' received")),
            "ARI's digit {digit} came back as received:\n{messages}"
        );
    }
    rig.assert_no_leaks();
    let answered = [("result", "answered")];
    let m = rig.signal.metrics();
    assert_eq!(
        m.sum("icegate_signal_asterisk_calls_total", &answered),
        1.0,
        "{}",
        m.raw
    );
}

/// docs/signal-protocol.md's example transfers to 700: with the sample dialplan that runs
/// `Stasis(icegate,...)` again, so the channel comes back into the application. It is the
/// same browser call: the gateway controls the channel again (a `play` reaches it), so it is
/// not a stranger's, which the gateway would hang up after its claim timeout. That timer is
/// the ARI controller's unit test `a_transferred_call_that_enters_stasis_again_is_the_same_call`.
#[test]
fn asterisk_real_stasis_transfer_back_into_stasis_keeps_the_call() {
    let Some(rig) = start("asterisk_real_stasis_transfer_back_into_stasis_keeps_the_call") else {
        return;
    };
    let mut alice = rig.browser("alice");
    let (call700, id) = rig.answered_call(&mut alice, "700", 0);
    expect_up(&rig, &id);

    alice.send(json!({"v":1,"type":"transfer","id":"t","call":call700,"to":"701"}));
    assert_eq!(alice.expect("ack")["id"], "t");
    let again = rig
        .observer
        .wait_for(WAIT, |e| {
            e["type"] == "ChannelDialplan"
                && e["channel"]["id"] == id.as_str()
                && e["dialplan_app_data"] == "icegate,701"
        })
        .unwrap_or_else(|| panic!("never back in Stasis: {:#?}", rig.observer.events()));
    assert_eq!(again["dialplan_app"], "Stasis", "{again}");
    assert!(eventually(WAIT, || in_icegate_app(&rig, &id)));
    // The gateway has claimed the channel again: a `play` of the browser's, which the gateway
    // sends over ARI only for a channel linked to the call, starts on it. (A stranger's
    // channel is never linked: the play would fail and the claim timeout hang it up.)
    alice
        .send(json!({"v":1,"type":"play","id":"p","call":call700,"media":"tone:ring;tonezone=us"}));
    assert_eq!(alice.expect("ack")["id"], "p");
    let target = format!("channel:{id}");
    let started = rig
        .observer
        .wait_for(WAIT, |e| {
            e["type"] == "PlaybackStarted" && e["playback"]["target_uri"] == target.as_str()
        })
        .unwrap_or_else(|| panic!("no PlaybackStarted: {:#?}", rig.observer.events()));
    let playback_id = started["playback"]["id"].as_str().unwrap().to_owned();
    let (status, body) = rig
        .ast
        .ari("DELETE", &format!("/ari/playbacks/{playback_id}"));
    assert_eq!(status, 204, "{body}");
    rig.observer
        .wait_for(WAIT, |e| {
            e["type"] == "PlaybackFinished" && e["playback"]["id"] == playback_id.as_str()
        })
        .expect("PlaybackFinished");
    // Still up, still in icegate, and the browser heard nothing (the pong is the next message).
    let ch = expect_up(&rig, &id);
    assert_eq!(ch["dialplan"]["app_data"], "icegate,701", "{ch}");
    assert!(in_icegate_app(&rig, &id));
    alice.ping(1);
    // The gateway controls it again: DTMF goes over ARI, which Asterisk sends rather than
    // receives (no ChannelDtmfReceived, unlike SIP INFO).
    send_dtmf(&mut alice, &call700, "3");
    alice.ping(2);
    assert_eq!(dtmf_received(&rig, &id), "");

    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    assert_eq!(destroyed["cause"], 0, "{destroyed}");
    rig.assert_no_leaks();
}

/// The browser's answer to Asterisk's offer: PCMU, the DTLS client, the same ICE
/// credentials as its first offer (no ICE restart). Its placeholder `c=IN IP4 0.0.0.0` and
/// port 9 are a trickling browser's; the gateway writes its candidate's address in, or
/// Asterisk would take the answer for hold (RFC 2543) and raise ChannelHold.
fn answer_sdp() -> String {
    OFFER
        .replace("a=setup:actpass", "a=setup:active")
        .replace("o=- 4611731400430051336 2 ", "o=- 4611731400430051336 3 ")
        .replace(" 111 0 8\r\n", " 0\r\n")
        .replace("a=rtpmap:111 opus/48000/2\r\n", "")
        .replace("a=rtpmap:8 PCMA/8000\r\n", "")
}

/// `o=`'s session id and version.
fn origin(sdp: &str) -> (String, u64) {
    let o: Vec<&str> = sdp
        .lines()
        .find(|l| l.starts_with("o="))
        .expect("o= line")
        .split(' ')
        .collect();
    (o[1].to_owned(), o[2].parse().expect("o= version"))
}

fn sdp_line<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn asterisk_real_stasis_reinvite_from_asterisk_reaches_the_browser_as_an_offer() {
    let Some(rig) =
        start("asterisk_real_stasis_reinvite_from_asterisk_reaches_the_browser_as_an_offer")
    else {
        return;
    };
    let trace = Trace::start(&rig, &["pjsip set logger on"]);
    let mut alice = rig.browser("alice");
    alice.send(
        json!({"v":1,"type":"call","id":"c","to":{"extension":"700"},
        "sdp":OFFER}),
    );
    let call700 = alice.expect("ack")["call"].as_str().unwrap().to_owned();
    alice.send(json!({"v":1,"type":"candidate","call":call700,"candidate":{
        "candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "sdpMid":"0","sdpMLineIndex":0}}));
    alice.send(json!({"v":1,"type":"candidate","call":call700,"candidate":null}));
    let (answer, _) = after_ringing(&mut alice);
    assert_eq!(answer["type"], "answer", "{answer}");
    let first = answer["sdp"].as_str().unwrap().to_owned();
    assert!(first.contains("a=sendrecv"), "{first}");
    let channel0 = rig.newest_channel(0);
    let id = channel0["id"].as_str().unwrap().to_owned();
    let sip_call_id = expect_up(&rig, &id)["protocol_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mark = trace.text().len();
    let messages_mark = rig.ast.messages().len();

    // Asterisk re-INVITEs when its media offer changes: PJSIP_MEDIA_OFFER(audio)=ulaw, then
    // PJSIP_SEND_SESSION_REFRESH()=invite. (The refresh alone sends nothing: Asterisk skips
    // a re-INVITE whose streams equal the active ones.)
    for (variable, value) in [
        ("PJSIP_MEDIA_OFFER%28audio%29", "ulaw"),
        ("PJSIP_SEND_SESSION_REFRESH%28%29", "invite"),
    ] {
        let path = format!("/ari/channels/{id}/variable?variable={variable}&value={value}");
        let (status, body) = rig.ast.ari("POST", &path);
        assert_eq!(status, 204, "{path}: {body}");
    }

    // The browser: an offer in the call: Asterisk's session, the next version, PCMU only
    // (and telephone-event), Asterisk still offering both DTLS roles, the same ICE.
    let offer = alice.expect("offer");
    assert_eq!(offer["call"], call700.as_str(), "{offer}");
    let sdp = offer["sdp"].as_str().unwrap();
    let (session, version) = origin(&first);
    assert_eq!(origin(sdp), (session, version + 1), "{sdp}");
    let m = sdp_line(sdp, "m=audio ").expect("m=audio");
    assert!(m.ends_with(" UDP/TLS/RTP/SAVPF 0 101"), "{m}");
    for line in [
        "a=setup:actpass",
        "a=sendrecv",
        "a=rtpmap:101 telephone-event/8000",
    ] {
        assert!(sdp.contains(line), "no {line}: {sdp}");
    }
    assert_eq!(
        sdp_line(sdp, "a=ice-ufrag:"),
        sdp_line(&first, "a=ice-ufrag:"),
        "{sdp}"
    );
    assert!(sdp.contains("typ relay"), "{sdp}");

    alice.send(json!({"v":1,"type":"answer","id":"a","call":call700,"sdp":answer_sdp()}));
    assert_eq!(alice.expect("ack")["id"], "a");

    // Asterisk: its INVITE in the dialog got our 200 OK with the browser's answer (and the
    // candidate Asterisk already had), and it ACKed.
    let mut entries = vec![];
    let acked = eventually(WAIT, || {
        entries = trace.entries_since(mark);
        entries
            .iter()
            .any(|e| e.contains("Transmitting SIP request") && e.contains("\nACK sip:"))
    });
    assert!(acked, "no ACK from Asterisk:\n{}", entries.join("\n"));
    let invite = entries
        .iter()
        .find(|e| e.contains("Transmitting SIP request") && e.contains("\nINVITE sip:"))
        .unwrap_or_else(|| panic!("no re-INVITE:\n{}", entries.join("\n")));
    assert!(
        invite.contains(&format!("Call-ID: {sip_call_id}")),
        "{invite}"
    );
    let cseq = invite
        .lines()
        .find_map(|l| l.strip_prefix("CSeq: "))
        .and_then(|c| c.strip_suffix(" INVITE"))
        .unwrap_or_else(|| panic!("no CSeq: {invite}"));
    // The gateway's 100 Trying, then its 200 OK.
    let responses: Vec<&String> = entries
        .iter()
        .filter(|e| {
            e.contains("Received SIP response") && e.contains(&format!("CSeq: {cseq} INVITE"))
        })
        .collect();
    let statuses: Vec<&str> = responses.iter().filter_map(|e| e.lines().nth(1)).collect();
    assert_eq!(
        statuses,
        ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"],
        "{responses:#?}"
    );
    let ok = responses[1];
    for line in [
        "a=setup:active",
        "a=ice-ufrag:Ab12",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "m=audio 50000 UDP/TLS/RTP/SAVPF 0",
    ] {
        assert!(ok.contains(line), "no {line} in the 200 OK: {ok}");
    }
    assert!(
        entries
            .iter()
            .any(|e| e.contains("\nACK sip:") && e.contains(&format!("CSeq: {cseq} ACK"))),
        "{}",
        entries.join("\n")
    );

    // The call goes on: up, still in Stasis, not on hold, nothing for the browser, and
    // Asterisk complained about nothing.
    let ch = expect_up(&rig, &id);
    assert_eq!(ch["dialplan"]["app_name"], "Stasis", "{ch}");
    assert!(in_icegate_app(&rig, &id));
    alice.ping(1);
    let holds: Vec<Value> = rig
        .observer
        .of_type("ChannelHold")
        .into_iter()
        .filter(|e| e["channel"]["id"] == id.as_str())
        .collect();
    assert!(holds.is_empty(), "{holds:#?}");
    let since = rig
        .ast
        .messages()
        .get(messages_mark..)
        .unwrap_or_default()
        .to_owned();
    let complaints: Vec<&str> = since
        .lines()
        .filter(|l| l.contains("WARNING[") || l.contains("ERROR["))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");

    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    rig.assert_no_leaks();
}

/// A browser with real media: a webrtc-rs peer connection, relay-only through the rig's
/// icegate-relay, offering PCMU and telephone-event, whose only track sends RFC 4733 events.
#[cfg(feature = "media-echo")]
mod media {
    use serde_json::Value;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use webrtc::api::interceptor_registry::register_default_interceptors;
    use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_PCMU, MIME_TYPE_TELEPHONE_EVENT};
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::api::APIBuilder;
    use webrtc::ice_transport::ice_server::RTCIceServer;
    use webrtc::interceptor::registry::Registry;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
    use webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy;
    use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
    use webrtc::peer_connection::RTCPeerConnection;
    use webrtc::rtp::packet::Packet;
    use webrtc::rtp_transceiver::rtp_codec::{
        RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
    };
    use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
    use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

    /// The telephone-event payload type offered.
    pub const EVENT_PT: u8 = 101;
    const DIGITS: &str = "0123456789*#ABCD";

    fn codec(mime: &str, fmtp: &str) -> RTCRtpCodecCapability {
        RTCRtpCodecCapability {
            mime_type: mime.into(),
            clock_rate: 8000,
            channels: 0,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: vec![],
        }
    }

    /// One RFC 4733 packet received: its timestamp (one per event), event code, end bit.
    type Event = (u32, u8, bool);

    pub struct MediaBrowser {
        rt: tokio::runtime::Runtime,
        pc: Arc<RTCPeerConnection>,
        keys: Arc<TrackLocalStaticRTP>,
        received: Arc<Mutex<Vec<Event>>>,
        /// The offer, complete with its relayed candidate.
        pub offer: String,
        /// The relayed candidate's port (what Asterisk sends to).
        pub relay_port: u16,
    }

    impl MediaBrowser {
        /// Gathers (relay only, with the TURN server of `welcome`) and makes the offer.
        pub fn new(welcome: &Value) -> MediaBrowser {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let server = &welcome["iceServers"][0];
            let urls: Vec<String> = server["urls"]
                .as_array()
                .expect("urls")
                .iter()
                .filter_map(|u| u.as_str())
                .filter(|u| u.starts_with("turn:"))
                .map(str::to_owned)
                .collect();
            let ice = RTCIceServer {
                urls,
                username: server["username"].as_str().expect("username").into(),
                credential: server["credential"].as_str().expect("credential").into(),
            };
            let received: Arc<Mutex<Vec<Event>>> = Arc::default();
            let sink = received.clone();
            let (pc, keys, sdp) = rt.block_on(async move {
                let mut media = MediaEngine::default();
                for (mime, fmtp, pt) in [
                    (MIME_TYPE_PCMU, "", 0),
                    (MIME_TYPE_TELEPHONE_EVENT, "0-16", EVENT_PT),
                ] {
                    let params = RTCRtpCodecParameters {
                        capability: codec(mime, fmtp),
                        payload_type: pt,
                        ..Default::default()
                    };
                    media
                        .register_codec(params, RTPCodecType::Audio)
                        .expect("codec");
                }
                let registry =
                    register_default_interceptors(Registry::new(), &mut media).expect("registry");
                let mut settings = SettingEngine::default();
                settings.set_include_loopback_candidate(true);
                let api = APIBuilder::new()
                    .with_media_engine(media)
                    .with_interceptor_registry(registry)
                    .with_setting_engine(settings)
                    .build();
                let config = RTCConfiguration {
                    ice_servers: vec![ice],
                    ice_transport_policy: RTCIceTransportPolicy::Relay,
                    ..Default::default()
                };
                let pc = Arc::new(api.new_peer_connection(config).await.expect("pc"));
                // The track's codec is telephone-event, so what it sends is RFC 4733.
                let keys = Arc::new(TrackLocalStaticRTP::new(
                    codec(MIME_TYPE_TELEPHONE_EVENT, "0-16"),
                    "keys".into(),
                    "browser".into(),
                ));
                let sender = pc
                    .add_track(keys.clone() as Arc<dyn TrackLocal + Send + Sync>)
                    .await
                    .expect("track");
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1500];
                    while sender.read(&mut buf).await.is_ok() {}
                });
                pc.on_track(Box::new(move |track, _, _| {
                    let sink = sink.clone();
                    Box::pin(async move {
                        tokio::spawn(async move {
                            while let Ok((p, _)) = track.read_rtp().await {
                                if p.header.payload_type == EVENT_PT && p.payload.len() >= 4 {
                                    let end = p.payload[1] & 0x80 != 0;
                                    let event = (p.header.timestamp, p.payload[0], end);
                                    sink.lock().expect("events").push(event);
                                }
                            }
                        });
                    })
                }));
                let offer = pc.create_offer(None).await.expect("offer");
                let mut gathered = pc.gathering_complete_promise().await;
                pc.set_local_description(offer).await.expect("local");
                let _ = tokio::time::timeout(Duration::from_secs(10), gathered.recv()).await;
                let sdp = pc.local_description().await.expect("local").sdp;
                (pc, keys, sdp)
            });
            // webrtc-rs leaves `c=IN IP4 0.0.0.0` and port 9 in a complete offer; Chromium
            // writes its default candidate there, and Asterisk reads 0.0.0.0 as hold.
            let candidate: Vec<String> = sdp
                .lines()
                .find(|l| l.starts_with("a=candidate:") && l.contains("typ relay"))
                .expect("a relayed candidate")
                .split(' ')
                .map(str::to_owned)
                .collect();
            let relay_port: u16 = candidate[5].parse().expect("port");
            let offer = sdp
                .replace("c=IN IP4 0.0.0.0", &format!("c=IN IP4 {}", candidate[4]))
                .replace("m=audio 9 ", &format!("m=audio {relay_port} "));
            MediaBrowser {
                rt,
                pc,
                keys,
                received,
                offer,
                relay_port,
            }
        }

        /// Takes Asterisk's answer and waits (bounded) for ICE and DTLS to connect.
        pub fn accept(&self, answer: &str, timeout: Duration) -> RTCPeerConnectionState {
            // webrtc-rs compares the fingerprint's hash name case-sensitively, and Asterisk
            // writes `SHA-256` (RFC 8122 says case-insensitive; Chromium accepts it).
            let answer = answer.replace("a=fingerprint:SHA-256", "a=fingerprint:sha-256");
            let desc = RTCSessionDescription::answer(answer).expect("answer");
            self.rt
                .block_on(self.pc.set_remote_description(desc))
                .expect("remote description");
            let deadline = Instant::now() + timeout;
            while self.pc.connection_state() != RTCPeerConnectionState::Connected
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.pc.connection_state()
        }

        /// The digits whose RFC 4733 end packet has arrived, in order (one per event).
        pub fn digits_received(&self) -> String {
            let received = self.received.lock().expect("events");
            let mut seen: Vec<u32> = vec![];
            let mut digits = String::new();
            for (ts, event, end) in received.iter() {
                if *end && !seen.contains(ts) {
                    seen.push(*ts);
                    digits.push(DIGITS.chars().nth(*event as usize).unwrap_or('?'));
                }
            }
            digits
        }

        /// Presses `digit` in the media, as RTCDTMFSender does: one event of 100 ms, three
        /// end packets.
        pub fn press(&self, digit: char) {
            let event = DIGITS.find(digit).expect("a DTMF digit") as u8;
            let keys = self.keys.clone();
            self.rt.block_on(async move {
                let timestamp = 8000;
                for (i, duration) in [160u16, 320, 480, 800, 800, 800].into_iter().enumerate() {
                    let end = i >= 3;
                    let mut p = Packet::default();
                    p.header.version = 2;
                    p.header.marker = i == 0;
                    p.header.sequence_number = 100 + i as u16;
                    p.header.timestamp = timestamp;
                    let flags = if end { 0x80 | 10 } else { 10 };
                    let [hi, lo] = duration.to_be_bytes();
                    p.payload = vec![event, flags, hi, lo].into();
                    keys.write_rtp(&p).await.expect("write RTP");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }

        pub fn close(self) {
            let _ = self.rt.block_on(self.pc.close());
        }
    }
}

#[cfg(feature = "media-echo")]
#[test]
fn asterisk_real_stasis_dtmf_travels_in_the_media_both_ways() {
    use media::{MediaBrowser, EVENT_PT};
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

    let Some(rig) = start("asterisk_real_stasis_dtmf_travels_in_the_media_both_ways") else {
        return;
    };
    let trace = Trace::start(&rig, &["rtp set debug on"]);
    let mut alice = rig.signal.connect("name=alice");
    let welcome = alice.expect("welcome");
    let browser = MediaBrowser::new(&welcome);

    // The whole offer at once (its candidate is in it), then end-of-candidates.
    alice.send(json!({"v":1,"type":"call","id":"c","to":{"extension":"700"},"sdp":browser.offer}));
    let call700 = alice.expect("ack")["call"].as_str().unwrap().to_owned();
    alice.send(json!({"v":1,"type":"candidate","call":call700,"candidate":null}));
    let (answer, _) = after_ringing(&mut alice);
    assert_eq!(answer["type"], "answer", "{answer}");
    let sdp = answer["sdp"].as_str().unwrap();
    for line in [
        format!("a=rtpmap:{EVENT_PT} telephone-event/8000"),
        "a=sendrecv".into(),
    ] {
        assert!(sdp.contains(&line), "no {line} in Asterisk's answer: {sdp}");
    }
    let state = browser.accept(sdp, WAIT);
    assert_eq!(
        state,
        RTCPeerConnectionState::Connected,
        "ICE and DTLS with Asterisk through icegate-relay"
    );
    let channel0 = rig.newest_channel(0);
    let id = channel0["id"].as_str().unwrap().to_owned();
    let name = channel0["name"].as_str().unwrap().to_owned();
    expect_up(&rig, &id);

    // The browser's `dtmf` in Stasis: the gateway asks ARI, Asterisk sends RFC 4733 events
    // to the browser's relayed address, and the browser's peer connection receives them.
    send_dtmf(&mut alice, &call700, "12#");
    assert!(
        eventually(WAIT, || browser.digits_received() == "12#"),
        "the browser's media got {:?}",
        browser.digits_received()
    );
    let sent_to = format!(
        "Sent RTP DTMF packet to 127.0.0.1:{} (via ICE) (type {EVENT_PT},",
        browser.relay_port
    );
    let mut timestamps: Vec<String> = trace
        .text()
        .lines()
        .filter(|l| l.contains(&sent_to))
        .filter_map(|l| l.split(", ts ").nth(1))
        .filter_map(|t| t.split(',').next())
        .map(str::to_owned)
        .collect();
    timestamps.dedup();
    assert_eq!(
        timestamps.len(),
        3,
        "Asterisk's RTP trace should show three events sent:\n{}",
        trace.text()
    );
    // Sent, not received: no ChannelDtmfReceived, and the `dtmf` log level says nothing.
    assert_eq!(dtmf_received(&rig, &id), "");
    assert!(
        !rig.ast.messages().contains("DTMF end"),
        "{}",
        rig.ast.messages()
    );
    alice.ping(1);

    // A key pressed in the browser's media: Asterisk receives it on the browser's channel
    // (ChannelDtmfReceived and the `dtmf` log level)...
    // (The gateway counts the ARI events it has handled: the proof below waits for this one.)
    let handled = || {
        rig.signal.metrics().sum(
            "icegate_signal_asterisk_ari_events_total",
            &[("event", "ChannelDtmfReceived")],
        )
    };
    let dtmf_events_before = handled();
    browser.press('5');
    let five = rig
        .observer
        .expect_channel_event("ChannelDtmfReceived", &id, WAIT);
    assert_eq!(five["digit"], "5", "{five}");
    let line = format!("DTMF end '5' received on {name}");
    assert!(
        eventually(WAIT, || rig.ast.messages().contains(&line)),
        "{}",
        rig.ast.messages()
    );
    // ... and it is the browser's own digit: the gateway does not send it back as `dtmf`.
    // Once the gateway has counted the event as handled, the ping's pong is the next message.
    assert!(
        eventually(WAIT, || handled() > dtmf_events_before),
        "the gateway never handled the ChannelDtmfReceived"
    );
    alice.ping(2);

    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    browser.close();
    rig.assert_no_leaks();
}
