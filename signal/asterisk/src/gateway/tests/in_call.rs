//! Answered calls: re-INVITEs both ways (browser offers, Asterisk's re-INVITEs) and DTMF as
//! SIP INFO for a call outside Stasis.

use super::harness::*;

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
