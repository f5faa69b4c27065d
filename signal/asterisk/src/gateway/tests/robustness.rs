//! Random hub, SIP and ARI input never panics and leaves no call behind (regressions in
//! `proptest-regressions/gateway/tests/robustness.txt`).

use proptest::prelude::*;

use super::harness::*;

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
