//! Forking: a user with several sessions and rooms ring every fork; the first answer wins,
//! the last refusal ends the call.

use super::harness::*;

#[test]
fn forking_first_answer_wins() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob1 = w.open("bob");
    let bob2 = w.open("bob");
    let bob3 = w.open("bob");
    let call = w.call_user(alice, "bob");
    let sent = w.take();
    for bob in [bob1, bob2, bob3] {
        assert!(sent.contains(&(bob, incoming(call, "alice"))), "{sent:?}");
    }

    // One fork declines: the others keep ringing and the caller hears nothing yet.
    w.request(
        bob3,
        2,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Busy,
        },
    );
    assert_eq!(w.take(), vec![(bob3, ack(2))]);

    w.request(
        bob2,
        3,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    assert_eq!(
        w.take(),
        vec![
            (bob1, hangup(call, HangupReason::AnsweredElsewhere)),
            (
                alice,
                ServerMessage::Answer {
                    call,
                    sdp: "answer".into()
                }
            ),
            (bob2, ack(3)),
        ]
    );

    // The late answer from the losing fork is refused; the call stays up.
    w.request(
        bob1,
        4,
        ClientMessage::Answer {
            call,
            sdp: "late".into(),
        },
    );
    let sent = w.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(error_code(&sent[0].1), Some(ErrorCode::UnknownCall));
    // The winner cannot answer twice.
    w.request(
        bob2,
        5,
        ClientMessage::Answer {
            call,
            sdp: "again".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::InvalidState));

    // After the answer the caller's candidates reach only the winner.
    w.request(
        alice,
        6,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    assert_eq!(
        w.take(),
        vec![
            (
                bob2,
                ServerMessage::Candidate {
                    call,
                    candidate: None
                }
            ),
            (alice, ack(6)),
        ]
    );

    // The caller hangs up: only the winner is told.
    w.request(
        alice,
        7,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert_eq!(
        w.take(),
        vec![(bob2, hangup(call, HangupReason::Normal)), (alice, ack(7))]
    );
}

#[test]
fn last_fork_declining_ends_the_call_with_its_reason() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let call = w.call_user(alice, "bob");
    w.take();
    w.request(
        bob,
        2,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Declined,
        },
    );
    assert_eq!(
        w.take(),
        vec![(alice, hangup(call, HangupReason::Declined)), (bob, ack(2))]
    );
    assert_eq!(
        w.events.last(),
        Some(&CallEvent::Ended(HangupReason::Declined))
    );
}

#[test]
fn rooms_fork_to_every_other_member() {
    let mut w = World::new();
    let alice = w.open("alice");
    let bob = w.open("bob");
    let carol = w.open("carol");
    let _dave = w.open("dave");
    let lobby = RoomId::new("lobby").unwrap();
    let call_room = |w: &mut World, session| {
        w.request(
            session,
            9,
            ClientMessage::Call {
                to: Target::Room(lobby.clone()),
                sdp: "offer".into(),
            },
        );
        w.take()
    };
    // Not a member yet.
    assert_eq!(
        error_code(&call_room(&mut w, alice)[0].1),
        Some(ErrorCode::UnknownRoom)
    );
    w.request(
        alice,
        1,
        ClientMessage::Join {
            room: lobby.clone(),
        },
    );
    assert_eq!(w.take(), vec![(alice, ack(1))]);
    // Alone in the room.
    assert_eq!(
        error_code(&call_room(&mut w, alice)[0].1),
        Some(ErrorCode::UnknownRoom)
    );
    for session in [bob, carol] {
        w.request(
            session,
            1,
            ClientMessage::Join {
                room: lobby.clone(),
            },
        );
    }
    w.take();
    let sent = call_room(&mut w, alice);
    let recipients: Vec<SessionId> = sent
        .iter()
        .filter(|(_, m)| matches!(m, ServerMessage::Incoming { room: Some(r), .. } if *r == lobby))
        .map(|(to, _)| *to)
        .collect();
    assert_eq!(recipients, vec![bob, carol], "dave is not in the room");

    w.request(
        carol,
        2,
        ClientMessage::Leave {
            room: lobby.clone(),
        },
    );
    assert_eq!(w.take(), vec![(carol, ack(2))]);
    w.request(
        carol,
        3,
        ClientMessage::Leave {
            room: lobby.clone(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::UnknownRoom));
}
