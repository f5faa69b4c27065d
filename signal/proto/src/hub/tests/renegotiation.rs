//! Renegotiation of answered calls (ICE restart, hold): one offer at a time, between browsers
//! and with the PBX both ways.

use super::harness::*;

#[test]
fn either_end_renegotiates_an_answered_call_one_offer_at_a_time() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let call = w.call_user(alice, "bob");
    w.take();
    // Not before the call is answered.
    w.request(alice, 2, offer(call, "early"));
    assert_eq!(
        error_code(&w.take()[0].1),
        Some(ErrorCode::InvalidState),
        "an offer before the answer"
    );
    answer_call(&mut w, bob, call);

    // The callee restarts ICE: the caller gets the offer and answers it.
    w.request(bob, 3, offer(call, "restart"));
    assert_eq!(
        w.take(),
        vec![
            (
                alice,
                ServerMessage::Offer {
                    call,
                    sdp: "restart".into()
                }
            ),
            (bob, ack(3)),
        ]
    );
    // The offerer cannot answer its own offer nor offer twice; the other end cannot cross it.
    w.request(
        bob,
        4,
        ClientMessage::Answer {
            call,
            sdp: "x".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::InvalidState));
    w.request(bob, 5, offer(call, "again"));
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::InvalidState));
    w.request(alice, 6, offer(call, "crossing"));
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::Glare));
    w.request(
        alice,
        7,
        ClientMessage::Answer {
            call,
            sdp: "restarted".into(),
        },
    );
    assert_eq!(
        w.take(),
        vec![
            (
                bob,
                ServerMessage::Answer {
                    call,
                    sdp: "restarted".into()
                }
            ),
            (alice, ack(7)),
        ]
    );
    // A second answer to the same offer is refused; the caller may offer now.
    w.request(
        alice,
        8,
        ClientMessage::Answer {
            call,
            sdp: "x".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::InvalidState));
    w.request(alice, 10, offer(call, "hold"));
    assert_eq!(
        w.take(),
        vec![
            (
                bob,
                ServerMessage::Offer {
                    call,
                    sdp: "hold".into()
                }
            ),
            (alice, ack(10)),
        ]
    );
    // Strangers see no call; a hangup mid-offer ends the call as usual.
    let eve = w.open("eve");
    w.request(eve, 11, offer(call, "x"));
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::UnknownCall));
    w.request(
        bob,
        12,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert_eq!(
        w.take(),
        vec![(alice, hangup(call, HangupReason::Normal)), (bob, ack(12))]
    );
    assert_eq!(w.hub.call_count(), 0);
}

#[test]
fn renegotiation_with_the_pbx_both_ways() {
    let mut w = with_pbx();
    let alice = w.open("alice");
    let call = call_extension(&mut w, alice, "600");
    w.pbx_answer(call, "answer");
    w.drain();
    w.take();
    w.pbx.clear();

    // The browser restarts ICE; the PBX (a re-INVITE) answers.
    w.request(alice, 2, offer(call, "restart"));
    assert_eq!(w.take(), vec![(alice, ack(2))]);
    assert_eq!(
        std::mem::take(&mut w.pbx),
        vec![Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::Offer {
                call,
                sdp: "restart".into()
            }
        }]
    );
    w.pbx_answer(call, "restarted");
    w.drain();
    assert_eq!(
        w.take(),
        vec![(
            alice,
            ServerMessage::Answer {
                call,
                sdp: "restarted".into()
            }
        )]
    );

    // The browser's next offer is refused by the PBX (488): it rolls back.
    w.request(alice, 3, offer(call, "video"));
    w.take();
    w.pbx.clear();
    w.hub
        .handle_pbx(PbxEvent::OfferFailed { call }, w.now)
        .unwrap();
    w.drain();
    assert_eq!(w.take(), vec![(alice, ServerMessage::OfferFailed { call })]);
    assert!(w
        .hub
        .handle_pbx(PbxEvent::OfferFailed { call }, w.now)
        .is_err());

    // The PBX offers (Asterisk's re-INVITE); the browser answers.
    w.hub
        .handle_pbx(
            PbxEvent::Offer {
                call,
                sdp: "pbx-offer".into(),
            },
            w.now,
        )
        .unwrap();
    w.drain();
    assert_eq!(
        w.take(),
        vec![(
            alice,
            ServerMessage::Offer {
                call,
                sdp: "pbx-offer".into()
            }
        )]
    );
    // A crossing PBX offer is refused back to the PBX, so that its re-INVITE gets an answer.
    assert_eq!(
        w.hub
            .handle_pbx(
                PbxEvent::Offer {
                    call,
                    sdp: "again".into()
                },
                w.now
            )
            .unwrap_err()
            .0,
        ErrorCode::InvalidState
    );
    w.drain();
    assert_eq!(
        std::mem::take(&mut w.pbx),
        vec![Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::OfferFailed { call }
        }]
    );
    w.request(
        alice,
        4,
        ClientMessage::Answer {
            call,
            sdp: "browser-answer".into(),
        },
    );
    assert_eq!(w.take(), vec![(alice, ack(4))]);
    assert_eq!(
        std::mem::take(&mut w.pbx),
        vec![Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::Answer {
                call,
                sdp: "browser-answer".into()
            }
        }]
    );

    // A PBX offer the browser never answers is given up by the gateway: nothing is sent,
    // and the browser may offer again.
    w.hub
        .handle_pbx(
            PbxEvent::Offer {
                call,
                sdp: "unanswered".into(),
            },
            w.now,
        )
        .unwrap();
    w.hub
        .handle_pbx(PbxEvent::OfferFailed { call }, w.now)
        .unwrap();
    w.drain();
    w.take();
    w.pbx.clear();
    w.request(alice, 5, offer(call, "after"));
    assert_eq!(w.take(), vec![(alice, ack(5))]);
}
