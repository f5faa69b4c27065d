//! The gateway's connections and lifetime: losing ARI or SIP, malformed input, shutdown.

use super::harness::*;

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
        assert_eq!(
            rig.gw.handle_ari_event(junk, rig.now),
            UNREADABLE_ARI_EVENT,
            "{junk}"
        );
    }
    // A well-formed event of a type the gateway does not read is no error: `other`.
    let unknown = r#"{"type":"DeviceStateChanged","application":"icegate"}"#;
    assert_eq!(rig.gw.handle_ari_event(unknown, rig.now), "other");
    rig.gw
        .handle_ari_response(AriRequestId(999), 500, "{", rig.now);
    rig.drain();
    assert!(!rig.logs.is_empty());
    assert!(rig.gw.is_available());
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
