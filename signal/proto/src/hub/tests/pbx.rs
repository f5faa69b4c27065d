//! Calls with the PBX leg: to extensions and from the PBX, its loss, pause and ring timeout.

use super::harness::*;

#[test]
fn a_call_to_an_extension_goes_to_the_pbx_and_back() {
    let mut w = with_pbx();
    let alice = w.open("alice");
    let call = call_extension(&mut w, alice, "600");
    assert_eq!(
        std::mem::take(&mut w.pbx),
        vec![Output::PbxCall {
            call,
            from: UserId::new("alice").unwrap(),
            extension: Extension::new("600").unwrap(),
            sdp: "offer".into(),
        }]
    );
    // Trickled candidates go to the PBX leg (the gateway gathers them for the INVITE).
    w.request(
        alice,
        2,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    assert!(matches!(
        &w.pbx[..],
        [Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::Candidate {
                candidate: None,
                ..
            }
        }]
    ));
    w.pbx.clear();
    w.take();

    w.hub.handle_pbx(PbxEvent::Ringing { call }, w.now).unwrap();
    w.pbx_answer(call, "answer");
    w.drain();
    assert_eq!(
        w.take(),
        vec![
            (alice, ServerMessage::Ringing { call }),
            (
                alice,
                ServerMessage::Answer {
                    call,
                    sdp: "answer".into()
                }
            ),
        ]
    );
    // DTMF both ways, and PBX-only requests.
    let digits = Digits::new("12#").unwrap();
    w.request(
        alice,
        3,
        ClientMessage::Dtmf {
            call,
            digits: digits.clone(),
        },
    );
    w.hub
        .handle_pbx(
            PbxEvent::Dtmf {
                call,
                digits: digits.clone(),
            },
            w.now,
        )
        .unwrap();
    w.drain();
    let media = Media::new("tone:ring;tonezone=us").unwrap();
    w.request(
        alice,
        4,
        ClientMessage::Play {
            call,
            media: media.clone(),
        },
    );
    let to = Extension::new("700").unwrap();
    w.request(
        alice,
        5,
        ClientMessage::Transfer {
            call,
            to: to.clone(),
        },
    );
    assert_eq!(
        std::mem::take(&mut w.pbx),
        vec![
            Output::Send {
                to: Endpoint::Pbx,
                message: ServerMessage::Dtmf {
                    call,
                    digits: digits.clone()
                }
            },
            Output::PbxRequest {
                call,
                request: PbxRequest::Play(media)
            },
            Output::PbxRequest {
                call,
                request: PbxRequest::Transfer(to)
            },
        ]
    );
    assert!(w
        .take()
        .contains(&(alice, ServerMessage::Dtmf { call, digits })));
    // The PBX hangs up.
    w.hub
        .handle_pbx(
            PbxEvent::Hangup {
                call,
                reason: HangupReason::Normal,
            },
            w.now,
        )
        .unwrap();
    w.drain();
    assert_eq!(
        w.take(),
        vec![(
            alice,
            ServerMessage::Hangup {
                call,
                reason: HangupReason::Normal
            }
        )]
    );
    assert_eq!((w.hub.call_count(), w.hub.pbx_call_count()), (0, 0));
}

#[test]
fn extensions_are_refused_without_a_reachable_pbx() {
    for (pbx, available) in [(false, false), (true, false)] {
        let mut w = World::with(HubConfig {
            pbx,
            ..HubConfig::default()
        });
        w.hub.set_pbx_available(available, w.now);
        let alice = w.open("alice");
        w.request(
            alice,
            1,
            ClientMessage::Call {
                to: extension("600"),
                sdp: "o".into(),
            },
        );
        let sent = w.take();
        assert!(
            matches!(
                &sent[..],
                [(
                    _,
                    ServerMessage::Error {
                        code: ErrorCode::PbxUnavailable,
                        ..
                    }
                )]
            ),
            "{sent:?}"
        );
        assert!(w.pbx.is_empty());
        assert_eq!(w.hub.call_count(), 0);
    }
}

#[test]
fn the_pbx_calls_a_browser_user() {
    let mut w = with_pbx();
    let bob = w.open("bob");
    let bob2 = w.open("bob");
    let from = UserId::new("6001").unwrap();
    let call = w
        .hub
        .handle_pbx(
            PbxEvent::Call {
                from: from.clone(),
                to: UserId::new("bob").unwrap(),
                sdp: "offer".into(),
            },
            w.now,
        )
        .unwrap()
        .unwrap();
    w.drain();
    let incoming = |to| {
        (
            to,
            ServerMessage::Incoming {
                call,
                from: from.clone(),
                room: None,
                sdp: "offer".into(),
            },
        )
    };
    assert_eq!(w.take(), vec![incoming(bob), incoming(bob2)]);
    w.request(bob, 2, ClientMessage::Ringing { call });
    w.request(
        bob2,
        3,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    let pbx = std::mem::take(&mut w.pbx);
    assert_eq!(
        pbx,
        vec![
            Output::Send {
                to: Endpoint::Pbx,
                message: ServerMessage::Ringing { call }
            },
            Output::Send {
                to: Endpoint::Pbx,
                message: ServerMessage::Answer {
                    call,
                    sdp: "answer".into()
                }
            },
        ]
    );
    assert!(w.take().contains(&(
        bob,
        ServerMessage::Hangup {
            call,
            reason: HangupReason::AnsweredElsewhere
        }
    )));
    // The browser hangs up: the PBX is told.
    w.request(
        bob2,
        4,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert_eq!(
        w.pbx,
        vec![Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::Hangup {
                call,
                reason: HangupReason::Normal
            }
        }]
    );
    assert_eq!((w.hub.call_count(), w.hub.pbx_call_count()), (0, 0));
    // A user who is not connected is refused, for the gateway to answer 480/404.
    let refused = w.hub.handle_pbx(
        PbxEvent::Call {
            from,
            to: UserId::new("carol").unwrap(),
            sdp: "o".into(),
        },
        w.now,
    );
    assert_eq!(refused.unwrap_err().0, ErrorCode::UnknownUser);
}

#[test]
fn losing_the_pbx_ends_its_calls_and_pbx_requests_need_a_pbx_call() {
    let mut w = with_pbx();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let ringing = call_extension(&mut w, alice, "602");
    let answered = call_extension(&mut w, bob, "600");
    w.pbx_answer(answered, "a");
    w.drain();
    w.take();
    w.pbx.clear();

    w.hub.set_pbx_available(false, w.now);
    w.drain();
    let mut sent = w.take();
    sent.sort_by_key(|(to, _)| *to == bob);
    assert_eq!(
        sent,
        vec![
            (
                alice,
                ServerMessage::Hangup {
                    call: ringing,
                    reason: HangupReason::Unavailable
                }
            ),
            (
                bob,
                ServerMessage::Hangup {
                    call: answered,
                    reason: HangupReason::Unavailable
                }
            ),
        ]
    );
    assert_eq!((w.hub.call_count(), w.hub.pbx_call_count()), (0, 0));

    // Between two browsers, transfer and play are refused; DTMF needs an answered call.
    let call = w.call_user(alice, "bob");
    w.request(
        alice,
        7,
        ClientMessage::Dtmf {
            call,
            digits: Digits::new("1").unwrap(),
        },
    );
    w.request(
        bob,
        8,
        ClientMessage::Answer {
            call,
            sdp: "a".into(),
        },
    );
    w.take();
    w.request(
        alice,
        9,
        ClientMessage::Transfer {
            call,
            to: Extension::new("700").unwrap(),
        },
    );
    w.request(
        alice,
        10,
        ClientMessage::Dtmf {
            call,
            digits: Digits::new("5").unwrap(),
        },
    );
    let sent = w.take();
    assert!(
        matches!(
            &sent[0],
            (
                _,
                ServerMessage::Error {
                    code: ErrorCode::InvalidState,
                    ..
                }
            )
        ),
        "{sent:?}"
    );
    assert!(
        sent.contains(&(
            bob,
            ServerMessage::Dtmf {
                call,
                digits: Digits::new("5").unwrap()
            }
        )),
        "{sent:?}"
    );
    assert!(w.pbx.is_empty());
}

#[test]
fn a_ringing_pbx_call_times_out_for_both_ends() {
    let mut w = with_pbx();
    let alice = w.open("alice");
    let call = call_extension(&mut w, alice, "602");
    w.pbx.clear();
    w.now += HubConfig::default().ring_timeout;
    w.hub.handle_timeout(w.now);
    w.drain();
    assert_eq!(
        w.take(),
        vec![(
            alice,
            ServerMessage::Hangup {
                call,
                reason: HangupReason::NoAnswer
            }
        )]
    );
    assert_eq!(
        w.pbx,
        vec![Output::Send {
            to: Endpoint::Pbx,
            message: ServerMessage::Hangup {
                call,
                reason: HangupReason::NoAnswer
            }
        }]
    );
    assert_eq!(w.hub.pbx_call_count(), 0);
}

#[test]
fn a_paused_pbx_keeps_its_calls_but_takes_no_new_ones() {
    let mut w = with_pbx();
    let alice = w.open("alice");
    let call = call_extension(&mut w, alice, "700");
    w.hub.pause_pbx(w.now);
    w.drain();
    assert!(w.take().is_empty(), "nothing ends");
    assert_eq!(w.hub.pbx_call_count(), 1);
    w.request(
        alice,
        2,
        ClientMessage::Call {
            to: extension("600"),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::PbxUnavailable));
    // The PBX still answers its call; once back, new calls go through again.
    w.pbx_answer(call, "answer");
    w.hub.set_pbx_available(true, w.now);
    w.drain();
    w.take();
    call_extension(&mut w, alice, "600");
    assert_eq!(w.hub.pbx_call_count(), 2);
}
