//! The hub's limits: rooms, calls and sessions per user.

use super::harness::*;

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
