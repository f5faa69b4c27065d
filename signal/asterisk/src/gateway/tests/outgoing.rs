//! Browser calls to extensions: candidates gathered into the INVITE, ringing, answer, DTMF,
//! BYE; failures as hangup reasons, hangups while gathering or ringing, Asterisk's BYE.

use super::harness::*;

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
    assert_eq!(
        rig.gw.handle_ari_event(&dtmf.to_string(), rig.now),
        "ChannelDtmfReceived"
    );
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
