//! Calls between browsers: offer, ringing, answer, trickle and hangup; refusals, disconnects,
//! the ring timeout, who sees a call, reproducible ids.

use super::harness::*;

#[test]
fn offer_ringing_answer_trickle_hangup() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let call = w.call_user(alice, "bob");
    assert_eq!(
        w.take(),
        vec![
            (bob, incoming(call, "alice")),
            (
                alice,
                ServerMessage::Ack {
                    id: RequestId::Number(1),
                    call: Some(call)
                }
            ),
        ]
    );
    assert_eq!(w.events, vec![CallEvent::Started]);

    w.request(bob, 2, ClientMessage::Ringing { call });
    assert_eq!(
        w.take(),
        vec![(alice, ServerMessage::Ringing { call }), (bob, ack(2))]
    );

    // The caller trickles before the answer: candidates go to the ringing callee.
    let candidate = IceCandidate {
        candidate: "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    };
    w.request(
        alice,
        3,
        ClientMessage::Candidate {
            call,
            candidate: Some(candidate.clone()),
        },
    );
    assert_eq!(
        w.take(),
        vec![
            (
                bob,
                ServerMessage::Candidate {
                    call,
                    candidate: Some(candidate.clone())
                }
            ),
            (alice, ack(3)),
        ]
    );

    w.request(
        bob,
        4,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    assert_eq!(
        w.take(),
        vec![
            (
                alice,
                ServerMessage::Answer {
                    call,
                    sdp: "answer".into()
                }
            ),
            (bob, ack(4)),
        ]
    );
    assert_eq!(
        w.hub.poll_timeout(),
        None,
        "answered calls have no ring timer"
    );

    // End-of-candidates from the callee, without an id: forwarded, not acknowledged.
    w.hub.handle_message(
        bob,
        None,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
        w.now,
    );
    w.drain();
    assert_eq!(
        w.take(),
        vec![(
            alice,
            ServerMessage::Candidate {
                call,
                candidate: None
            }
        )]
    );

    w.request(
        bob,
        5,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert_eq!(
        w.take(),
        vec![(alice, hangup(call, HangupReason::Normal)), (bob, ack(5))]
    );
    assert_eq!(
        w.events,
        vec![
            CallEvent::Started,
            CallEvent::Answered,
            CallEvent::Ended(HangupReason::Normal)
        ]
    );
    assert_eq!(w.hub.call_count(), 0);

    // The call is gone for both ends.
    w.request(alice, 6, ClientMessage::Ringing { call });
    let sent = w.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(error_code(&sent[0].1), Some(ErrorCode::UnknownCall));
}

#[test]
fn unknown_user_and_calling_only_oneself_are_refused() {
    let mut w = World::new();
    let alice = w.open("alice");
    for user in ["nobody", "alice"] {
        w.request(
            alice,
            1,
            ClientMessage::Call {
                to: Target::User(UserId::new(user).unwrap()),
                sdp: "offer".into(),
            },
        );
        let sent = w.take();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].0, alice);
        assert_eq!(error_code(&sent[0].1), Some(ErrorCode::UnknownUser));
    }
    assert!(w.events.is_empty());
    // Another session of the same user can be called, e.g. from one tab to another.
    let alice2 = w.open("alice");
    let call = w.call_user(alice, "alice");
    assert!(w.take().contains(&(alice2, incoming(call, "alice"))));
}

#[test]
fn callee_disconnect_mid_call_hangs_up_the_caller() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let call = w.call_user(alice, "bob");
    w.request(
        bob,
        2,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    w.take();
    w.hub.close_session(bob, w.now);
    w.drain();
    assert_eq!(
        w.take(),
        vec![(alice, hangup(call, HangupReason::Disconnected))]
    );
    assert_eq!(w.hub.call_count(), 0);
    assert_eq!(w.hub.session_count(), 1);
    // Bob is gone: calling him again is an unknown user.
    w.request(
        alice,
        3,
        ClientMessage::Call {
            to: Target::User(UserId::new("bob").unwrap()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::UnknownUser));
}

#[test]
fn caller_disconnect_while_ringing_tells_every_fork() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob1 = w.open("bob");
    let bob2 = w.open("bob");
    let call = w.call_user(alice, "bob");
    w.take();
    w.hub.close_session(alice, w.now);
    w.drain();
    let mut sent = w.take();
    sent.sort_by_key(|(to, _)| *to);
    let mut expected = vec![
        (bob1, hangup(call, HangupReason::Disconnected)),
        (bob2, hangup(call, HangupReason::Disconnected)),
    ];
    expected.sort_by_key(|(to, _)| *to);
    assert_eq!(sent, expected);
}

#[test]
fn ring_timeout_ends_unanswered_calls() {
    let config = HubConfig {
        ring_timeout: Duration::from_secs(30),
        ..HubConfig::default()
    };
    let mut w = World::with(config);
    let alice = w.open("alice");
    let bob = w.open("bob");
    assert_eq!(w.hub.poll_timeout(), None);
    let call = w.call_user(alice, "bob");
    w.take();
    let deadline = w.hub.poll_timeout().expect("a ringing call arms the timer");
    assert_eq!(deadline, w.now + Duration::from_secs(30));

    w.hub.handle_timeout(deadline - Duration::from_millis(1));
    w.drain();
    assert!(w.take().is_empty(), "nothing before the deadline");

    w.hub.handle_timeout(deadline);
    w.drain();
    assert_eq!(
        w.take(),
        vec![
            (alice, hangup(call, HangupReason::NoAnswer)),
            (bob, hangup(call, HangupReason::NoAnswer)),
        ]
    );
    assert_eq!(w.hub.poll_timeout(), None);
    assert_eq!(w.hub.call_count(), 0);
}

#[test]
fn only_callees_ring_and_answer_and_strangers_see_no_call() {
    let mut w = World::new();
    let alice = w.open("alice");
    let _bob = w.open("bob");
    let eve = w.open("eve");
    let call = w.call_user(alice, "bob");
    w.take();
    w.request(alice, 2, ClientMessage::Ringing { call });
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::InvalidState));
    for message in [
        ClientMessage::Ringing { call },
        ClientMessage::Answer {
            call,
            sdp: "x".into(),
        },
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    ] {
        w.request(eve, 3, message);
        let sent = w.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, eve);
        assert_eq!(error_code(&sent[0].1), Some(ErrorCode::UnknownCall));
    }
    assert_eq!(w.hub.call_count(), 1);
}

#[test]
fn ids_are_reproducible_from_the_seed() {
    let ids = || {
        let mut w = World::new();
        let alice = w.open("alice");
        w.open("bob");
        (alice, w.call_user(alice, "bob"))
    };
    assert_eq!(ids(), ids());
}

#[test]
fn connection_level_messages_are_refused_by_the_hub() {
    let mut w = World::new();
    let alice = w.open("alice");
    w.request(alice, 1, ClientMessage::Ping);
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::BadMessage));
}
