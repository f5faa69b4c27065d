//! The hub on a fake clock: every call flow, checked message by message.

use super::*;

const SEED: u64 = 7;

/// A hub, a fake clock, and what the hub said, split by recipient.
struct World {
    hub: Hub,
    now: Instant,
    sent: Vec<(SessionId, ServerMessage)>,
    events: Vec<CallEvent>,
}

impl World {
    fn new() -> Self {
        Self::with(HubConfig::default())
    }

    fn with(config: HubConfig) -> Self {
        World {
            hub: Hub::new(config, SEED),
            now: Instant::now(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn open(&mut self, user: &str) -> SessionId {
        let session = self
            .hub
            .open_session(UserId::new(user).unwrap(), self.now)
            .unwrap();
        self.drain();
        session
    }

    fn drain(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Send {
                    to: Endpoint::Session(to),
                    message,
                } => self.sent.push((to, message)),
                Output::Event(event) => self.events.push(event),
            }
        }
    }

    fn request(&mut self, session: SessionId, id: u64, message: ClientMessage) {
        self.hub
            .handle_message(session, Some(RequestId::Number(id)), message, self.now);
        self.drain();
    }

    /// Everything sent since the last call, in order.
    fn take(&mut self) -> Vec<(SessionId, ServerMessage)> {
        std::mem::take(&mut self.sent)
    }

    /// Starts a call from `caller` to `user` and returns its id, checking the ack.
    fn call_user(&mut self, caller: SessionId, user: &str) -> CallId {
        self.request(
            caller,
            1,
            ClientMessage::Call {
                to: Target::User(UserId::new(user).unwrap()),
                sdp: "offer".into(),
            },
        );
        let sent = self.take();
        let call = sent
            .iter()
            .find_map(|(to, message)| match message {
                ServerMessage::Ack {
                    id: RequestId::Number(1),
                    call: Some(call),
                } if *to == caller => Some(*call),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no ack with a call id in {sent:?}"));
        self.sent = sent;
        call
    }
}

fn ack(id: u64) -> ServerMessage {
    ServerMessage::Ack {
        id: RequestId::Number(id),
        call: None,
    }
}

fn error_code(message: &ServerMessage) -> Option<ErrorCode> {
    match message {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

fn incoming(call: CallId, from: &str) -> ServerMessage {
    ServerMessage::Incoming {
        call,
        from: UserId::new(from).unwrap(),
        room: None,
        sdp: "offer".into(),
    }
}

fn hangup(call: CallId, reason: HangupReason) -> ServerMessage {
    ServerMessage::Hangup { call, reason }
}

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

#[test]
fn room_and_call_limits() {
    let config = HubConfig {
        max_calls_per_session: 1,
        max_rooms_per_session: 1,
        max_room_members: 2,
        ..HubConfig::default()
    };
    let mut w = World::with(config);
    let alice = w.open("alice");
    let bob = w.open("bob");
    let carol = w.open("carol");
    let one = RoomId::new("one").unwrap();
    let two = RoomId::new("two").unwrap();
    w.request(alice, 1, ClientMessage::Join { room: one.clone() });
    w.request(alice, 2, ClientMessage::Join { room: one.clone() });
    assert_eq!(
        w.take(),
        vec![(alice, ack(1)), (alice, ack(2))],
        "joining twice is fine"
    );
    w.request(alice, 3, ClientMessage::Join { room: two });
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::TooManyRooms));
    w.request(bob, 4, ClientMessage::Join { room: one.clone() });
    w.request(carol, 5, ClientMessage::Join { room: one });
    let sent = w.take();
    assert_eq!(sent[0], (bob, ack(4)));
    assert_eq!(
        error_code(&sent[1].1),
        Some(ErrorCode::TooManyRooms),
        "room full"
    );

    w.call_user(alice, "bob");
    w.take();
    w.request(
        alice,
        6,
        ClientMessage::Call {
            to: Target::User(UserId::new("carol").unwrap()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&w.take()[0].1), Some(ErrorCode::TooManyCalls));
}

#[test]
fn sessions_per_user_are_limited_and_freed_on_close() {
    let config = HubConfig {
        max_sessions_per_user: 2,
        ..HubConfig::default()
    };
    let mut w = World::with(config);
    let user = UserId::new("alice").unwrap();
    let first = w.hub.open_session(user.clone(), w.now).unwrap();
    let second = w.hub.open_session(user.clone(), w.now).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        w.hub.open_session(user.clone(), w.now),
        Err(OpenError::TooManySessions)
    );
    assert!(w
        .hub
        .open_session(UserId::new("bob").unwrap(), w.now)
        .is_ok());
    w.hub.close_session(first, w.now);
    w.hub.close_session(first, w.now);
    assert!(w.hub.open_session(user, w.now).is_ok());
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
