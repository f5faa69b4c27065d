//! Asterisk calling browser users: answered, refused, cancelled before the hub took it, and
//! which user an INVITE is for.

use super::harness::*;

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
fn uri_users() {
    assert_eq!(uri_user("sip:alice@h;transport=ws"), Some("alice"));
    assert_eq!(uri_user("sips:bob;x=1@h"), Some("bob"));
    assert_eq!(uri_user("sip:h"), None);
    assert_eq!(uri_user("tel:123"), None);
    assert_eq!(failure_reason(500), HangupReason::Unavailable);
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
