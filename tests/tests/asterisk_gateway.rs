//! icegate-signal's Asterisk gateway end to end: browsers (WebSocket clients of the signal
//! protocol) call through icegate-signal to the Asterisk stand-in (SIP over WebSocket with
//! digest, ARI REST and events), and the stand-in calls them.
#![deny(unsafe_code)]

use std::time::Duration;

use icegate_tests::asterisk::pbx_calls::{self, call, OFFER};
use icegate_tests::asterisk::sip::SipMessage;
use icegate_tests::asterisk::{AsteriskStandIn, Config, Faults};
use icegate_tests::server::write_self_signed_cert;
use icegate_tests::signal::{eventually, Signal, SignalConfig, WsClient};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    pbx: AsteriskStandIn,
    signal: Signal,
}

fn start() -> Rig {
    start_with(&[])
}

fn start_with(extra: &[&str]) -> Rig {
    start_pbx(Config::default(), extra)
}

fn start_pbx(config: Config, extra: &[&str]) -> Rig {
    let pbx = AsteriskStandIn::start(config);
    let mut args = pbx.gateway_args();
    args.extend(["--candidate-gather-timeout".into(), "300".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let signal = Signal::start(SignalConfig {
        args,
        ..SignalConfig::default()
    });
    let rig = Rig { pbx, signal };
    rig.wait_available();
    rig
}

impl Rig {
    fn wait_available(&self) {
        self.signal.assert_gateway_up(WAIT);
    }

    fn browser(&self, name: &str) -> WsClient {
        let mut client = self.signal.connect(&format!("name={name}"));
        client.expect("welcome");
        client
    }

    /// Waits until the gateway has handled every ARI event the stand-in has sent so far
    /// (`events_sent` says only what was sent): icegate-signal counts each one it handled in
    /// `icegate_signal_asterisk_ari_events_total`.
    fn wait_ari_events_handled(&self) {
        let sent = self.pbx.events_sent().len() as f64;
        assert!(
            eventually(WAIT, || self
                .signal
                .metrics()
                .sum("icegate_signal_asterisk_ari_events_total", &[])
                >= sent),
            "the gateway did not count the {sent} ARI events the stand-in sent"
        );
    }

    /// The stand-in and icegate-signal hold no call any more.
    fn assert_no_leaks(&self) {
        let clean = eventually(WAIT, || {
            let metrics = self.signal.metrics();
            let started = metrics.sum("icegate_signal_calls_started_total", &[]);
            let ended = metrics.sum("icegate_signal_calls_ended_total", &[]);
            self.pbx.idle()
                && started == ended
                && metrics.sum("icegate_signal_asterisk_calls_active", &[]) == 0.0
        });
        if !clean {
            self.signal.dump_log(80);
            panic!("calls left over: stand-in {:?}", self.pbx.channels());
        }
    }
}

/// Calls `extension`, expects the answer, and returns the call id, the INVITE Asterisk got
/// (the last one: digest auth sends two) and the channel Asterisk made for it.
fn answered_call(
    rig: &Rig,
    browser: &mut WsClient,
    extension: &str,
) -> (String, SipMessage, String) {
    let call = call(browser, extension);
    let answer = after_ringing(browser);
    assert_eq!(answer["type"], "answer", "{answer}");
    let invite = rig.pbx.sip_requests("INVITE").pop().expect("an INVITE");
    let channel = rig
        .pbx
        .channel_for_call_id(invite.call_id())
        .expect("a channel");
    (call, invite, channel)
}

/// The next message that is not a `ringing`.
fn after_ringing(browser: &mut WsClient) -> Value {
    pbx_calls::after_ringing(browser).0
}

fn expect_hangup(browser: &mut WsClient, reason: &str) {
    pbx_calls::expect_hangup(browser, reason);
}

#[test]
fn browser_calls_echo_and_stasis_with_dtmf_then_hangs_up() {
    let rig = start();
    let mut alice = rig.browser("alice");

    // 600: the dialplan answers and echoes.
    let call600 = call(&mut alice, "600");
    let answer = after_ringing(&mut alice);
    assert_eq!(answer["type"], "answer", "{answer}");
    assert!(answer["sdp"].as_str().unwrap().contains("m=audio"));
    let invite = rig.pbx.sip_requests("INVITE").pop().expect("an INVITE");
    let sdp = &invite.body;
    assert!(
        sdp.contains("a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"),
        "{sdp}"
    );
    assert!(sdp.contains("a=end-of-candidates"), "{sdp}");
    // The browser's placeholder address (it trickles) gives way to its candidate: Asterisk
    // takes `c=0.0.0.0` for hold and would answer `a=recvonly`.
    assert!(
        sdp.contains("m=audio 50000 ") && sdp.contains("c=IN IP4 127.0.0.1\r\n"),
        "{sdp}"
    );
    assert!(sdp.contains("a=rtcp:50000 IN IP4 127.0.0.1\r\n"), "{sdp}");
    assert!(!sdp.contains("0.0.0.0\r\n"), "{sdp}");
    let answer_sdp = answer["sdp"].as_str().unwrap();
    assert!(answer_sdp.contains("a=sendrecv"), "{answer_sdp}");
    // The dialplan, not Stasis, has this channel: DTMF goes as SIP INFO.
    alice.send(json!({"v":1,"type":"dtmf","id":"i","call":call600,"digits":"5*"}));
    assert_eq!(alice.expect("ack")["id"], "i");
    assert!(eventually(WAIT, || rig.pbx.sip_requests("INFO").len() == 2));
    let infos: Vec<String> = rig
        .pbx
        .sip_requests("INFO")
        .iter()
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(
        infos,
        [
            "Signal=5\r\nDuration=160\r\n",
            "Signal=*\r\nDuration=160\r\n"
        ]
    );
    alice.send(json!({"v":1,"type":"hangup","call":call600}));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("BYE").len() == 1));

    // 700: into Stasis, where the gateway's ARI controller rings and answers it.
    let (call700, _, channel) = answered_call(&rig, &mut alice, "700");
    let holds: Vec<Value> = rig
        .pbx
        .events_sent()
        .into_iter()
        .filter(|e| e["type"] == "ChannelHold")
        .collect();
    assert!(holds.is_empty(), "not on hold: {holds:?}");
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call700,"digits":"12#"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    assert!(
        eventually(WAIT, || rig.pbx.dtmf_sent(&channel).as_deref()
            == Some("12#")),
        "{:?}",
        rig.pbx.ari_requests()
    );
    // A digit Asterisk receives on the browser's channel came from the browser: it is not
    // sent back. A key pressed on the PBX side, as SIP INFO, is.
    assert!(rig.pbx.inject_dtmf(&channel, "5"));
    assert!(rig.pbx.send_dtmf_info(&channel, "7"));
    let dtmf = alice.expect("dtmf");
    assert_eq!(dtmf["digits"], "7");
    let info_ok = eventually(WAIT, || {
        rig.pbx
            .sip_received()
            .iter()
            .any(|m| m.status() == Some(200) && m.method() == "INFO")
    });
    assert!(info_ok, "the gateway answers the INFO 200");
    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("BYE").len() == 2));
    rig.assert_no_leaks();
    let answered = rig.signal.metrics().sum(
        "icegate_signal_asterisk_calls_total",
        &[("result", "answered")],
    );
    assert_eq!(answered, 2.0);
}

#[test]
fn play_and_transfer_go_to_ari() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (call700, _, channel) = answered_call(&rig, &mut alice, "700");
    alice
        .send(json!({"v":1,"type":"play","id":"p","call":call700,"media":"tone:ring;tonezone=us"}));
    assert_eq!(alice.expect("ack")["id"], "p");
    let play = format!("/channels/{channel}/play");
    assert!(
        eventually(WAIT, || rig
            .pbx
            .ari_requests()
            .iter()
            .any(|(m, p)| m == "POST" && p.starts_with(&play))),
        "{:?}",
        rig.pbx.ari_requests()
    );
    alice.send(json!({"v":1,"type":"transfer","id":"t","call":call700,"to":"600"}));
    assert_eq!(alice.expect("ack")["id"], "t");
    let transfer = format!("/channels/{channel}/continue");
    assert!(
        eventually(WAIT, || rig
            .pbx
            .ari_requests()
            .iter()
            .any(|(m, p)| m == "POST"
                && p.starts_with(&transfer)
                && p.contains("extension=600"))),
        "{:?}",
        rig.pbx.ari_requests()
    );
    // The tone plays until stopped and `continue` waits behind it (as in Asterisk): the
    // gateway stops it first, and the channel leaves Stasis for Echo().
    let stopped = eventually(WAIT, || {
        rig.pbx
            .ari_requests()
            .iter()
            .any(|(m, p)| m == "DELETE" && p.starts_with("/playbacks/"))
    });
    assert!(stopped, "{:?}", rig.pbx.ari_requests());
    assert!(
        eventually(WAIT, || rig.pbx.events_sent().iter().any(|e| e["type"]
            == "StasisEnd"
            && e["channel"]["id"] == channel.as_str())),
        "{:?}",
        rig.pbx.log()
    );
    let finished: Vec<Value> = rig
        .pbx
        .events_sent()
        .into_iter()
        .filter(|e| e["type"] == "PlaybackFinished")
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0]["playback"]["state"], "done");
    // Out of Stasis, DTMF goes as SIP INFO, once the gateway has the StasisEnd too.
    rig.wait_ari_events_handled();
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call700,"digits":"5"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    assert!(eventually(WAIT, || rig.pbx.sip_requests("INFO").len() == 1));
    // The SIP call goes on in the dialplan until the browser hangs up.
    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("BYE").len() == 1));
    rig.assert_no_leaks();
}

/// docs/signal-protocol.md's own example: a transfer to an extension that runs
/// `Stasis(icegate,...)` again brings the channel back into the application, where it is the
/// same browser call (ARI controls it again), not a stranger hung up after the claim timeout.
#[test]
fn a_transfer_back_into_stasis_keeps_the_call() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (call700, _, channel) = answered_call(&rig, &mut alice, "700");
    alice.send(json!({"v":1,"type":"transfer","id":"t","call":call700,"to":"701"}));
    assert_eq!(alice.expect("ack")["id"], "t");
    let starts = |rig: &Rig| {
        rig.pbx
            .events_sent()
            .iter()
            .filter(|e| e["type"] == "StasisStart" && e["channel"]["id"] == channel.as_str())
            .count()
    };
    assert!(
        eventually(WAIT, || starts(&rig) == 2),
        "{:?}",
        rig.pbx.log()
    );
    rig.wait_ari_events_handled();
    // DTMF goes over ARI again (not as SIP INFO): the gateway has the channel back.
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call700,"digits":"4"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    assert!(
        eventually(WAIT, || rig.pbx.dtmf_sent(&channel).as_deref() == Some("4")),
        "{:?}",
        rig.pbx.ari_requests()
    );
    assert!(rig.pbx.sip_requests("INFO").is_empty());
    // Answered already: no second answer, and nothing hangs it up.
    let answers = rig
        .pbx
        .ari_requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/answer"))
        .count();
    assert_eq!(answers, 1, "{:?}", rig.pbx.ari_requests());
    alice.ping(1);
    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("BYE").len() == 1));
    let deletes = rig
        .pbx
        .ari_requests()
        .iter()
        .filter(|(m, _)| m == "DELETE")
        .count();
    assert_eq!(deletes, 0, "{:?}", rig.pbx.ari_requests());
    rig.assert_no_leaks();
}

#[test]
fn busy_unknown_and_cancel_while_ringing() {
    let rig = start();
    let mut alice = rig.browser("alice");
    call(&mut alice, "601");
    expect_hangup(&mut alice, "busy");
    call(&mut alice, "9");
    expect_hangup(&mut alice, "not_found");

    let call602 = call(&mut alice, "602");
    assert_eq!(alice.expect("ringing")["call"], call602.as_str());
    alice.send(json!({"v":1,"type":"hangup","call":call602}));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("CANCEL").len() == 1));
    rig.assert_no_leaks();
    alice.ping(1);
}

#[test]
fn asterisk_hangs_up() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (_, _, channel) = answered_call(&rig, &mut alice, "700");
    assert!(rig.pbx.hangup(&channel, 16));
    expect_hangup(&mut alice, "normal");
    rig.assert_no_leaks();
}

#[test]
fn asterisk_calls_a_browser_that_answers() {
    let rig = start();
    let mut bob = rig.browser("bob");
    let invite = incoming_invite(&rig, "bob", "gateway-test-in-1");
    rig.pbx.send_sip_raw(&invite);
    let incoming = bob.expect("incoming");
    assert_eq!(incoming["from"], "100");
    assert!(incoming["sdp"].as_str().unwrap().contains("m=audio 4000"));
    let call = incoming["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"ringing","call":call}));
    bob.send(json!({"v":1,"type":"answer","call":call,"sdp":OFFER.replace("actpass", "active")}));
    bob.send(json!({"v":1,"type":"candidate","call":call,"candidate":null}));
    let ok = eventually(WAIT, || {
        rig.pbx.sip_received().iter().any(|m| {
            !m.is_request() && m.call_id() == "gateway-test-in-1" && m.status() == Some(200)
        })
    });
    assert!(ok, "no 200 OK for the INVITE");
    let ringing =
        rig.pbx.sip_received().iter().any(|m| {
            !m.is_request() && m.call_id() == "gateway-test-in-1" && m.status() == Some(180)
        });
    assert!(ringing);
}

const PBX_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=Asterisk\r\nt=0 0\r\n\
    m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n\
    a=candidate:1 1 udp 2130706431 127.0.0.1 4000 typ host\r\na=end-of-candidates\r\n";

/// An INVITE as Asterisk sends it to icegate's contact, for browser user `user`.
fn incoming_invite(rig: &Rig, user: &str, call_id: &str) -> String {
    let contact = rig
        .pbx
        .registrations()
        .last()
        .map(|r| r.aor.clone())
        .expect("registered");
    format!(
        "INVITE {contact} SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:5060;rport;branch=z9hG4bKPj{call_id};alias\r\n\
         From: \"Reception\" <sip:100@127.0.0.1>;tag=standin1\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Contact: <sip:asterisk@127.0.0.1:5060;transport=ws>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 10 INVITE\r\n\
         Max-Forwards: 70\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{PBX_OFFER}",
        PBX_OFFER.len()
    )
}

/// Whether icegate-signal answered the INVITE `call_id` with `status`.
fn responded(rig: &Rig, call_id: &str, status: u16) -> bool {
    eventually(WAIT, || {
        rig.pbx
            .sip_received()
            .iter()
            .any(|m| !m.is_request() && m.call_id() == call_id && m.status() == Some(status))
    })
}

#[test]
fn asterisk_calls_a_browser_that_declines_or_is_cancelled_or_absent() {
    let rig = start();
    let mut bob = rig.browser("bob");
    rig.pbx
        .send_sip_raw(&incoming_invite(&rig, "bob", "in-declined"));
    let call = bob.expect("incoming")["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"hangup","call":call,"reason":"declined"}));
    assert!(responded(&rig, "in-declined", 603));

    let invite = incoming_invite(&rig, "bob", "in-cancelled");
    rig.pbx.send_sip_raw(&invite);
    let call = bob.expect("incoming")["call"].as_str().unwrap().to_owned();
    let via = invite.lines().find(|l| l.starts_with("Via:")).unwrap();
    let contact = invite.lines().next().unwrap().split(' ').nth(1).unwrap();
    rig.pbx.send_sip_raw(&format!(
        "CANCEL {contact} SIP/2.0\r\n{via}\r\n\
         From: \"Reception\" <sip:100@127.0.0.1>;tag=standin1\r\nTo: <sip:bob@127.0.0.1>\r\n\
         Call-ID: in-cancelled\r\nCSeq: 10 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    let hangup = bob.expect("hangup");
    assert_eq!(hangup["call"], call.as_str());
    assert!(responded(&rig, "in-cancelled", 487));

    rig.pbx
        .send_sip_raw(&incoming_invite(&rig, "nobody", "in-nobody"));
    assert!(responded(&rig, "in-nobody", 404));
    bob.ping(1);
    rig.assert_no_leaks();
}

#[test]
fn asterisk_never_answers() {
    let rig = start_with(&["--ring-timeout", "1"]);
    rig.pbx.set_faults(Faults {
        never_answer: true,
        ..Faults::default()
    });
    let mut alice = rig.browser("alice");
    call(&mut alice, "600");
    expect_hangup(&mut alice, "no_answer");
    assert!(eventually(WAIT, || rig.pbx.sip_requests("CANCEL").len() == 1));
    rig.pbx.set_faults(Faults::default());
    rig.assert_no_leaks();
}

#[test]
fn losing_ari_keeps_answered_calls_and_losing_sip_ends_them() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (call700, _, channel) = answered_call(&rig, &mut alice, "700");
    rig.pbx.drop_ari_events(true);
    assert!(eventually(WAIT, || rig
        .signal
        .log()
        .contains("ARI is down: answered calls go on")));
    // The call goes on (nothing but the pong arrives) and, once ARI is back, its channel is
    // found again: DTMF through ARI works.
    alice.ping(3);
    rig.wait_available();
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call700,"digits":"7"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    assert!(
        eventually(WAIT, || rig.pbx.dtmf_sent(&channel).as_deref() == Some("7")),
        "{:?}",
        rig.pbx.ari_requests()
    );
    alice.send(json!({"v":1,"type":"hangup","call":call700}));
    rig.assert_no_leaks();

    call(&mut alice, "600");
    assert_eq!(after_ringing(&mut alice)["type"], "answer");
    rig.pbx.drop_sip(true);
    expect_hangup(&mut alice, "unavailable");
    rig.wait_available();
    assert!(rig.pbx.sip_requests("REGISTER").len() >= 2);
    rig.assert_no_leaks();
    // And calls work again.
    call(&mut alice, "601");
    expect_hangup(&mut alice, "busy");
}

#[test]
fn malformed_sip_and_ari_input_changes_nothing() {
    let rig = start();
    for junk in [
        "garbage",
        "SIP/2.0 200 OK\r\n\r\n",
        "INVITE sip:x SIP/2.0\r\nContent-Length: 99999\r\n\r\n",
        "\u{0}\u{1}",
    ] {
        rig.pbx.send_sip_raw(junk);
    }
    for junk in [
        "{",
        "[]",
        "{\"type\":\"StasisStart\"}",
        "{\"type\":\"Nope\"}",
    ] {
        rig.pbx.send_ari_raw(junk);
    }
    let mut alice = rig.browser("alice");
    call(&mut alice, "601");
    expect_hangup(&mut alice, "busy");
    rig.wait_available();
    rig.assert_no_leaks();
}

/// The final responses the stand-in received to INVITEs of `call_id`, in order.
fn invite_statuses(rig: &Rig, call_id: &str) -> Vec<u16> {
    rig.pbx
        .sip_received()
        .iter()
        .filter(|m| m.call_id() == call_id && m.method() == "INVITE")
        .filter_map(|m| m.status().filter(|s| *s >= 200))
        .collect()
}

#[test]
fn renegotiation_maps_to_reinvites_both_ways() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (call, invite, channel) = answered_call(&rig, &mut alice, "600");

    // Hold (same ICE credentials): a re-INVITE at once, with the candidates Asterisk has.
    let hold = OFFER
        .replace("a=sendrecv", "a=sendonly")
        .replace(" 2 IN IP4", " 3 IN IP4");
    alice.send(json!({"v":1,"type":"offer","id":"h","call":call,"sdp":hold}));
    assert_eq!(alice.expect("ack")["id"], "h");
    let answer = alice.expect("answer");
    assert_eq!(answer["call"], call.as_str());
    let invites = rig.pbx.sip_requests("INVITE");
    let before = invites.len() - 1;
    let reinvite = &invites[before];
    assert_eq!(reinvite.call_id(), invite.call_id(), "in the same dialog");
    assert!(reinvite.body.contains("a=sendonly"), "{}", reinvite.body);
    assert!(
        reinvite
            .body
            .contains("a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"),
        "{}",
        reinvite.body
    );
    assert!(
        eventually(WAIT, || rig
            .pbx
            .sip_requests("ACK")
            .iter()
            .any(|a| a.cseq().map(|c| c.0) == reinvite.cseq().map(|c| c.0))),
        "the gateway ACKs the re-INVITE's 200"
    );

    // ICE restart (new credentials): the re-INVITE waits for the new candidates.
    let restart = OFFER
        .replace("a=ice-ufrag:Ab12", "a=ice-ufrag:Cd34")
        .replace(" 2 IN IP4", " 4 IN IP4");
    alice.send(json!({"v":1,"type":"offer","call":call,"sdp":restart}));
    alice.send(json!({"v":1,"type":"candidate","call":call,"candidate":{
        "candidate":"candidate:9 1 udp 41885439 127.0.0.1 50009 typ relay raddr 0.0.0.0 rport 0",
        "sdpMid":"0","sdpMLineIndex":0}}));
    alice.send(json!({"v":1,"type":"candidate","call":call,"candidate":null}));
    alice.expect("answer");
    // The answer comes from the 200 to the last re-INVITE, which the gateway sends over the
    // one SIP connection after any it sent before: so every re-INVITE of this restart has
    // reached the stand-in by now. Exactly one, carrying the candidate trickled after the
    // offer, proves that the gateway waited for the candidates rather than re-INVITEing at
    // the offer (the gateway's unit test
    // `browser_offers_become_reinvites_and_asterisk_reinvites_become_offers` holds the rule).
    let mut invites = rig.pbx.sip_requests("INVITE");
    assert_eq!(
        invites.len(),
        before + 2,
        "one re-INVITE for the ICE restart, sent once its candidates were in"
    );
    let restarted = invites.pop().unwrap();
    assert!(restarted.body.contains("a=ice-ufrag:Cd34"));
    assert!(restarted.body.contains("candidate:9 ") && !restarted.body.contains("candidate:1 "));

    // Asterisk re-INVITEs: the browser gets an offer; its answer becomes the 200.
    assert!(rig.pbx.reinvite(&channel));
    let offer = alice.expect("offer");
    assert_eq!(offer["call"], call.as_str());
    assert!(offer["sdp"].as_str().unwrap().contains("m=audio"));
    let browser_answer = restart.replace("a=setup:actpass", "a=setup:active");
    alice.send(json!({"v":1,"type":"answer","call":call,"sdp":browser_answer}));
    assert!(
        eventually(WAIT, || invite_statuses(&rig, invite.call_id()) == [200]),
        "{:?}",
        rig.pbx.log()
    );
    let ok = rig
        .pbx
        .sip_received()
        .into_iter()
        .rfind(|m| m.status() == Some(200) && m.method() == "INVITE")
        .unwrap();
    assert!(ok.body.contains("a=setup:active"), "{}", ok.body);
    assert!(
        ok.body.contains("candidate:9 "),
        "the restarted candidates: {}",
        ok.body
    );

    // A browser offer crossing Asterisk's is glare; hanging up while Asterisk's offer is
    // open answers its re-INVITE with 488, then says BYE.
    assert!(rig.pbx.reinvite(&channel));
    alice.expect("offer");
    alice.send(json!({"v":1,"type":"offer","id":"x","call":call,"sdp":OFFER}));
    let glare = alice.expect("error");
    assert_eq!(
        (glare["id"].as_str(), glare["code"].as_str()),
        (Some("x"), Some("glare"))
    );
    alice.send(json!({"v":1,"type":"hangup","call":call}));
    assert!(eventually(WAIT, || invite_statuses(&rig, invite.call_id())
        == [200, 488]));
    assert!(eventually(WAIT, || rig.pbx.sip_requests("BYE").len() == 1));
    rig.assert_no_leaks();
}

#[test]
fn sigterm_hangs_up_calls_with_asterisk_and_unregisters() {
    let mut rig = start();
    let mut alice = rig.browser("alice");
    let call = call(&mut alice, "600");
    assert_eq!(after_ringing(&mut alice)["type"], "answer", "{call}");
    assert_eq!(rig.pbx.registrations().len(), 1);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rig.signal.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        eventually(WAIT, || !rig.signal.is_running()),
        "icegate-signal still runs after SIGTERM"
    );
    // Before its SIP WebSocket closed, it said BYE and took its contact away: Asterisk keeps
    // no channel and routes no call to a contact that is gone.
    assert_eq!(rig.pbx.sip_requests("BYE").len(), 1, "{:?}", rig.pbx.log());
    let unregister = rig.pbx.sip_requests("REGISTER").pop().unwrap();
    assert!(
        unregister
            .header("Contact")
            .is_some_and(|c| c.contains("expires=0")),
        "{unregister:?}"
    );
    assert!(rig.pbx.registrations().is_empty());
    assert!(
        eventually(WAIT, || rig.pbx.idle()),
        "{:?}",
        rig.pbx.channels()
    );
    assert!(
        rig.signal
            .log()
            .contains("Asterisk calls ended and unregistered"),
        "{}",
        rig.signal.log()
    );
}

#[test]
fn wss_and_https_to_asterisk_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed_cert(dir.path());
    let ca = cert.to_str().unwrap().to_owned();
    let rig = start_pbx(
        Config {
            tls: Some((cert, key)),
            ..Config::default()
        },
        &["--asterisk-ca", &ca],
    );
    assert!(rig.pbx.sip_ws_url().starts_with("wss://"));
    assert!(rig.pbx.ari_url().starts_with("https://"));
    let mut alice = rig.browser("alice");
    let call = call(&mut alice, "700");
    assert_eq!(after_ringing(&mut alice)["type"], "answer");
    alice.send(json!({"v":1,"type":"hangup","call":call}));
    rig.assert_no_leaks();
    assert!(
        !rig.pbx.ari_requests().is_empty(),
        "ARI REST went over https"
    );
}

#[test]
fn wss_to_asterisk_with_the_wrong_ca_stays_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_self_signed_cert(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (wrong, _) = write_self_signed_cert(other.path());
    let pbx = AsteriskStandIn::start(Config {
        tls: Some((cert, key)),
        ..Config::default()
    });
    let mut args = pbx.gateway_args();
    args.extend(["--asterisk-ca".into(), wrong.to_str().unwrap().into()]);
    let signal = Signal::start(SignalConfig {
        args,
        ..SignalConfig::default()
    });
    let complained = eventually(WAIT, || {
        let log = signal.log();
        log.contains("SIP WebSocket") && log.to_lowercase().contains("certificate")
    });
    assert!(complained, "{}", signal.log());
    assert!(pbx.registrations().is_empty());
    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum("icegate_signal_asterisk_sip_registered", &[]),
        0.0
    );
    // A browser's call to an extension is refused at once.
    let mut alice = signal.connect("name=alice");
    alice.expect("welcome");
    alice.send(json!({"v":1,"type":"call","id":"c","to":{"extension":"600"},"sdp":OFFER}));
    alice.expect_error("pbx_unavailable");
}

#[test]
fn asterisk_dials_a_browser_user_through_the_endpoint() {
    let rig = start();
    let mut bob = rig.browser("bob");
    // Dial(PJSIP/bob@icegate), or ARI originate to that endpoint: the INVITE goes to
    // icegate's registered contact with `bob` as the user of its Request-URI and To.
    let channel = rig
        .pbx
        .lock()
        .originate(
            "PJSIP/bob@icegate",
            None,
            vec![],
            Some("\"Reception\" <100>"),
            None,
        )
        .expect("originate");
    let invite = rig.pbx.lock().log.iter().rev().find_map(|e| {
        e.data
            .starts_with("INVITE sip:bob@")
            .then(|| e.data.clone())
    });
    assert!(invite.is_some_and(|i| i.contains("To: <sip:bob@")));
    let incoming = bob.expect("incoming");
    assert_eq!(incoming["from"], "100");
    let call = incoming["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"answer","call":call,"sdp":OFFER.replace("actpass", "active")}));
    bob.send(json!({"v":1,"type":"candidate","call":call,"candidate":null}));
    let id = channel["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(WAIT, || rig
            .pbx
            .channels()
            .iter()
            .any(|c| c["id"] == id.as_str() && c["state"] == "Up")),
        "{:?}",
        rig.pbx.channels()
    );
    assert!(rig.pbx.hangup(&id, 16));
    expect_hangup(&mut bob, "normal");
    rig.assert_no_leaks();

    // The endpoint alone names nobody: 404, and nobody is rung.
    rig.pbx
        .lock()
        .originate("PJSIP/icegate", None, vec![], None, None)
        .expect("originate");
    assert!(eventually(WAIT, || rig
        .pbx
        .sip_received()
        .iter()
        .any(|m| m.status() == Some(404))));
    bob.ping(7);
}

/// As Asterisk's `Echo()` does (asterisk_real_calls.rs checks the real one): `#` ends the
/// echo test, the dialplan hangs up with a BYE (cause 16), and the browser hears `normal`.
#[test]
fn hash_ends_the_echo_test_with_a_normal_hangup() {
    let rig = start();
    let mut alice = rig.browser("alice");
    let (call600, invite, _) = answered_call(&rig, &mut alice, "600");
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call600,"digits":"1#"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    let hangup = alice.expect("hangup");
    assert_eq!(hangup["call"], call600.as_str(), "{hangup}");
    assert_eq!(hangup["reason"], "normal", "{hangup}");
    // The BYE came from the stand-in, in the call's dialog; the gateway sent none.
    assert_eq!(rig.pbx.sip_requests("BYE").len(), 0);
    let sent_bye = rig
        .pbx
        .lock()
        .log
        .iter()
        .any(|e| e.data.starts_with("BYE ") && e.data.contains(invite.call_id()));
    assert!(sent_bye, "the stand-in sent no BYE");
    rig.assert_no_leaks();
}
