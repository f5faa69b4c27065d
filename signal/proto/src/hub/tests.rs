//! The hub on a fake clock: every call flow, checked message by message.

use super::*;

const SEED: u64 = 7;

/// A hub, a fake clock, and what the hub said, split by recipient.
struct World {
    hub: Hub,
    now: Instant,
    sent: Vec<(SessionId, ServerMessage)>,
    /// What the hub addressed to the PBX: `Send`s to it, `PbxCall`s and `PbxRequest`s.
    pbx: Vec<Output>,
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
            pbx: Vec::new(),
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
                other => self.pbx.push(other),
            }
        }
    }

    fn request(&mut self, session: SessionId, id: u64, message: ClientMessage) {
        self.hub
            .handle_message(session, Some(RequestId::Number(id)), message, self.now);
        self.drain();
    }

    /// The PBX answers `call` with `sdp`.
    fn pbx_answer(&mut self, call: CallId, sdp: &str) {
        self.hub
            .handle_pbx(
                PbxEvent::Answer {
                    call,
                    sdp: sdp.into(),
                },
                self.now,
            )
            .unwrap();
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

/// A world whose hub has a PBX gateway that can reach the PBX.
fn with_pbx() -> World {
    let mut world = World::with(HubConfig {
        pbx: true,
        ..HubConfig::default()
    });
    world.hub.set_pbx_available(true, world.now);
    world
}

fn extension(ext: &str) -> Target {
    Target::Extension(Extension::new(ext).unwrap())
}

/// Calls extension `ext` from `caller`; returns the call id from the ack.
fn call_extension(world: &mut World, caller: SessionId, ext: &str) -> CallId {
    world.request(
        caller,
        1,
        ClientMessage::Call {
            to: extension(ext),
            sdp: "offer".into(),
        },
    );
    let sent = world.take();
    let [(
        to,
        ServerMessage::Ack {
            call: Some(call), ..
        },
    )] = &sent[..]
    else {
        panic!("expected only an ack, got {sent:?}");
    };
    assert_eq!(*to, caller);
    *call
}

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

/// Answers `call` (made by `call_user`) from `callee` and forgets what that sent.
fn answer_call(world: &mut World, callee: SessionId, call: CallId) {
    world.request(
        callee,
        9,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    world.take();
}

fn offer(call: CallId, sdp: &str) -> ClientMessage {
    ClientMessage::Offer {
        call,
        sdp: sdp.into(),
    }
}

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
