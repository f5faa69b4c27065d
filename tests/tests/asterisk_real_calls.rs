//! Calls between browsers and a real Asterisk (the sample configuration of docs/asterisk/),
//! through icegate-signal's gateway, for the flows of the `from-icegate` dialplan and calls
//! Asterisk places to browsers. Each test checks what the browser is told and, through an
//! ARI observer and ARI requests, what Asterisk did: the channel it made, the digits it
//! received, how and why the channel ended, and that none is left.
//!
//! Browsers are signal-protocol clients with a Chromium-shaped offer and no media
//! (asterisk_real.rs has the Chromium calls with audio). Each test starts its own Asterisk
//! (about 2 s). Without an Asterisk (`ASTERISK_BIN`), each says SKIPPED and passes.
#![deny(unsafe_code)]

use icegate_tests::asterisk::pbx_calls::{after_ringing, call, expect_hangup, OFFER};
use icegate_tests::asterisk::real_rig::{RealRig, RigOptions, WAIT};
use icegate_tests::signal::eventually;
use serde_json::{json, Value};

fn start(test: &str) -> Option<RealRig> {
    RealRig::start(test, RigOptions::default())
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

#[test]
fn asterisk_real_browser_calls_echo_sends_dtmf_and_hangs_up() {
    let Some(rig) = start("asterisk_real_browser_calls_echo_sends_dtmf_and_hangs_up") else {
        return;
    };
    let mut alice = rig.browser("alice");
    let call600 = call(&mut alice, "600");
    let (answer, _) = after_ringing(&mut alice);
    assert_eq!(answer["type"], "answer", "{answer}");
    let sdp = answer["sdp"].as_str().unwrap();
    // Asterisk's answer: PCMU (the first of `allow` the offer has), DTLS as the active side,
    // and its one relayed candidate on the test's icegate-relay (rtp.conf's ice_deny).
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000"), "{sdp}");
    assert!(sdp.contains("a=setup:active"), "{sdp}");
    // OFFER has a trickling browser's placeholder `c=IN IP4 0.0.0.0` and port 9, which
    // Asterisk takes for hold (`a=recvonly`, ChannelHold); the gateway sends its candidate's
    // address instead, so Asterisk's answer is sendrecv.
    assert!(sdp.contains("a=sendrecv"), "{sdp}");
    assert!(!sdp.contains("a=recvonly"), "{sdp}");
    let candidates: Vec<&str> = sdp
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(
        !candidates.is_empty() && candidates.iter().all(|c| c.contains("typ relay")),
        "Asterisk's candidates should all be relayed: {candidates:?}"
    );
    let (lo, hi) = rig.relay.ports.relay_range();
    assert!(
        candidates.iter().all(|c| {
            let port: u16 = c
                .split(' ')
                .nth(5)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            c.contains(" 127.0.0.1 ") && (lo..=hi).contains(&port)
        }),
        "Asterisk's candidates are not on this test's relay ({lo}-{hi}): {candidates:?}"
    );

    // Asterisk: the channel is up in Echo(), called by the gateway's endpoint.
    let channel = rig.newest_channel(0);
    let id = channel["id"].as_str().unwrap().to_owned();
    assert!(
        channel["name"]
            .as_str()
            .unwrap()
            .starts_with("PJSIP/icegate-"),
        "{channel}"
    );
    assert_eq!(channel["dialplan"]["exten"], "600", "{channel}");
    let up = eventually(WAIT, || {
        let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{id}"));
        status == 200 && ch["state"] == "Up" && ch["dialplan"]["app_name"] == "Echo"
    });
    assert!(
        up,
        "{:?}",
        rig.ast.ari("GET", &format!("/ari/channels/{id}"))
    );

    // DTMF without `#` (Echo() would end): SIP INFO, one per digit, which Asterisk raises as
    // received DTMF on the channel.
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call600,"digits":"12*9"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    assert!(
        eventually(WAIT, || dtmf_received(&rig, &id) == "12*9"),
        "Asterisk received DTMF {:?}",
        dtmf_received(&rig, &id)
    );
    // Still up: Echo() goes on, and never on hold.
    let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{id}"));
    assert_eq!((status, &ch["state"]), (200, &Value::from("Up")), "{ch}");
    let holds: Vec<Value> = rig
        .observer
        .of_type("ChannelHold")
        .into_iter()
        .filter(|e| e["channel"]["id"] == id.as_str())
        .collect();
    assert!(holds.is_empty(), "{holds:#?}");

    alice.send(json!({"v":1,"type":"hangup","call":call600}));
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    // The gateway's BYE carries no Reason: Asterisk records cause 0, as the recordings show.
    assert_eq!(destroyed["cause"], 0, "{destroyed}");
    rig.assert_no_leaks();
    assert_eq!(
        rig.signal.metrics().sum(
            "icegate_signal_asterisk_calls_total",
            &[("result", "answered")]
        ),
        1.0
    );
}

#[test]
fn asterisk_real_hash_ends_the_echo_test() {
    let Some(rig) = start("asterisk_real_hash_ends_the_echo_test") else {
        return;
    };
    let mut alice = rig.browser("alice");
    let (call600, id) = rig.answered_call(&mut alice, "600", 0);

    // Echo() returns on `#`; the dialplan's next step hangs up, and Asterisk sends BYE.
    alice.send(json!({"v":1,"type":"dtmf","id":"d","call":call600,"digits":"1#"}));
    assert_eq!(alice.expect("ack")["id"], "d");
    let hangup = alice.expect("hangup");
    assert_eq!(hangup["call"], call600.as_str(), "{hangup}");
    assert_eq!(hangup["reason"], "normal", "{hangup}");
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    assert_eq!(destroyed["cause"], 16, "{destroyed}");
    assert_eq!(dtmf_received(&rig, &id), "1#");
    rig.assert_no_leaks();
}

#[test]
fn asterisk_real_busy_ringing_cancelled_and_unknown_extensions() {
    let Some(rig) = start("asterisk_real_busy_ringing_cancelled_and_unknown_extensions") else {
        return;
    };
    let mut alice = rig.browser("alice");

    // 601: Busy() answers 486; the browser hears busy, Asterisk ends the channel with 17.
    let c = call(&mut alice, "601");
    let hangup = expect_hangup(&mut alice, "busy");
    assert_eq!(hangup["call"], c.as_str());
    let busy = rig.newest_channel(0);
    let id = busy["id"].as_str().unwrap();
    assert_eq!(busy["dialplan"]["exten"], "601", "{busy}");
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", id, WAIT);
    assert_eq!(destroyed["cause"], 17, "user busy: {destroyed}");
    rig.assert_no_leaks();

    // 602: Ringing() then Wait(60); the browser sees ringing, then cancels.
    let c = call(&mut alice, "602");
    assert_eq!(alice.expect("ringing")["call"], c.as_str());
    let ringing = rig.newest_channel(1);
    let id = ringing["id"].as_str().unwrap().to_owned();
    let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{id}"));
    assert_eq!(status, 200, "{ch}");
    assert_eq!(ch["dialplan"]["exten"], "602", "{ch}");
    assert_ne!(ch["state"], "Up", "602 never answers: {ch}");
    alice.send(json!({"v":1,"type":"hangup","call":c}));
    // The CANCEL ends the channel in Asterisk.
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    rig.assert_no_leaks();

    // A name the dialplan does not have: 404, `not_found`, and Asterisk made no channel.
    let created = rig.observer.of_type("ChannelCreated").len();
    let c = call(&mut alice, "nosuchuser");
    let hangup = expect_hangup(&mut alice, "not_found");
    assert_eq!(hangup["call"], c.as_str());
    assert_eq!(rig.observer.of_type("ChannelCreated").len(), created);
    rig.assert_no_leaks();

    // The browser's connection is fine after all three.
    alice.ping(1);
    let m = rig.signal.metrics();
    for (result, n) in [("busy", 1.0), ("not_found", 1.0)] {
        assert_eq!(
            m.sum("icegate_signal_asterisk_calls_total", &[("result", result)]),
            n,
            "{result}: {}",
            m.raw
        );
    }
}

/// The browser's answer to an offer from Asterisk: [`OFFER`] turned into an answer.
fn answer_sdp() -> String {
    OFFER.replace("a=setup:actpass", "a=setup:active")
}

#[test]
fn asterisk_real_calls_a_browser_answered_declined_and_cancelled() {
    let Some(rig) = start("asterisk_real_calls_a_browser_answered_declined_and_cancelled") else {
        return;
    };
    let mut bob = rig.browser("bob");

    // Answered: originate to PJSIP/bob@icegate; once bob answers, the channel runs Echo().
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let incoming = bob.expect("incoming");
    let call_id = incoming["call"].as_str().unwrap().to_owned();
    let offer = incoming["sdp"].as_str().unwrap();
    assert!(offer.contains("a=setup:actpass"), "{offer}");
    assert!(offer.contains("typ relay"), "{offer}");
    bob.send(json!({"v":1,"type":"answer","id":"a","call":call_id,"sdp":answer_sdp()}));
    assert_eq!(bob.expect("ack")["id"], "a");
    bob.send(json!({"v":1,"type":"candidate","call":call_id,"candidate":null}));
    let up = eventually(WAIT, || {
        let (status, ch) = rig.ast.ari("GET", &format!("/ari/channels/{id}"));
        status == 200 && ch["state"] == "Up"
    });
    assert!(
        up,
        "{:?}",
        rig.ast.ari("GET", &format!("/ari/channels/{id}"))
    );
    // Asterisk hangs up (ARI DELETE): bob is told, normal clearing.
    let (status, _) = rig.ast.ari("DELETE", &format!("/ari/channels/{id}"));
    assert_eq!(status, 204);
    let hangup = bob.expect("hangup");
    assert_eq!(
        (&hangup["call"], &hangup["reason"]),
        (&Value::from(call_id.as_str()), &Value::from("normal")),
        "{hangup}"
    );
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    rig.assert_no_leaks();

    // Declined: bob hangs up while ringing; Asterisk's channel ends as rejected.
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let call_id = bob.expect("incoming")["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"hangup","call":call_id,"reason":"declined"}));
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    // 603 Decline is Q.850 21 (call rejected).
    assert_eq!(destroyed["cause"], 21, "{destroyed}");
    rig.assert_no_leaks();

    // Busy: bob says busy; Asterisk sees 486, cause 17.
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let call_id = bob.expect("incoming")["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"hangup","call":call_id,"reason":"busy"}));
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    assert_eq!(destroyed["cause"], 17, "{destroyed}");
    rig.assert_no_leaks();

    // Cancelled: Asterisk gives up before bob answers (ARI DELETE while ringing: CANCEL).
    let channel = rig.originate("PJSIP/bob@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let call_id = bob.expect("incoming")["call"].as_str().unwrap().to_owned();
    let (status, _) = rig.ast.ari("DELETE", &format!("/ari/channels/{id}"));
    assert_eq!(status, 204);
    let hangup = bob.expect("hangup");
    assert_eq!(hangup["call"], call_id.as_str(), "{hangup}");
    // Asterisk's CANCEL: the caller hung up before bob answered, as a browser caller's
    // hangup while ringing is told to the callee.
    assert_eq!(hangup["reason"], "normal", "{hangup}");
    rig.observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    rig.assert_no_leaks();

    // A user nobody is signed in as: the gateway answers 404; Asterisk's channel ends.
    let channel = rig.originate("PJSIP/nobody@icegate", "600");
    let id = channel["id"].as_str().unwrap().to_owned();
    let destroyed = rig
        .observer
        .expect_channel_event("ChannelDestroyed", &id, WAIT);
    assert_eq!(destroyed["cause"], 1, "unallocated number: {destroyed}");
    rig.assert_no_leaks();
    bob.ping(2);
}

/// extensions.conf's `[to-browsers]`: `Dial(PJSIP/${EXTEN}@icegate,30)` rings the browser
/// user named by the extension. Asterisk originates a Local channel into it (as a call from
/// any phone routed there would arrive); once bob answers, its other half runs Echo().
#[test]
fn asterisk_real_dialplan_dials_a_browser_user() {
    let Some(rig) = start("asterisk_real_dialplan_dials_a_browser_user") else {
        return;
    };
    let mut bob = rig.browser("bob");
    let local = rig.originate("Local/bob@to-browsers", "600");
    let incoming = bob.expect("incoming");
    let call_id = incoming["call"].as_str().unwrap().to_owned();
    bob.send(json!({"v":1,"type":"answer","id":"a","call":call_id,"sdp":answer_sdp()}));
    assert_eq!(bob.expect("ack")["id"], "a");
    bob.send(json!({"v":1,"type":"candidate","call":call_id,"candidate":null}));

    // Dial() made a PJSIP channel to the gateway's contact; it is up and bridged.
    let mut dialled = Value::Null;
    let up = eventually(WAIT, || {
        dialled = rig
            .ast
            .channels()
            .into_iter()
            .find(|c| {
                c["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("PJSIP/icegate-")
            })
            .unwrap_or(Value::Null);
        dialled["state"] == "Up"
    });
    assert!(up, "no answered PJSIP channel: {:#?}", rig.ast.channels());
    let dial = rig
        .observer
        .wait_for(WAIT, |e| e["type"] == "Dial" && e["dialstatus"] == "ANSWER")
        .unwrap_or_else(|| panic!("no answered Dial: {:#?}", rig.observer.events()));
    // The caller is the Local channel's half in `[to-browsers]`, running its Dial().
    assert_eq!(
        dial["caller"]["dialplan"]["context"], "to-browsers",
        "{dial}"
    );
    assert_eq!(
        dial["caller"]["dialplan"]["app_data"], "PJSIP/bob@icegate,30",
        "{dial}"
    );
    assert!(
        rig.observer
            .wait_for(WAIT, |e| e["type"] == "ChannelEnteredBridge")
            .is_some(),
        "Dial() did not bridge the two"
    );

    // bob hangs up: every channel of the call goes, the Local pair included.
    bob.send(json!({"v":1,"type":"hangup","call":call_id}));
    rig.observer
        .expect_channel_event("ChannelDestroyed", local["id"].as_str().unwrap(), WAIT);
    rig.assert_no_leaks();
}
