//! Legs on other instances of the cluster: remote sessions rung with local ones, their
//! requests, and the ends of a remote session, of its instance and of the bus.

use super::harness::*;

const B: InstanceId = InstanceId(0xb);

fn remote(session: u64) -> RemoteSession {
    RemoteSession {
        instance: B,
        session: SessionId(session),
    }
}

/// What the hub addressed to remote sessions since the last call, in order.
fn take_remote(world: &mut World) -> Vec<(RemoteSession, ServerMessage)> {
    let (remote, other): (Vec<Output>, Vec<Output>) =
        std::mem::take(&mut world.pbx).into_iter().partition(|o| {
            matches!(
                o,
                Output::Send {
                    to: Endpoint::Remote(_),
                    ..
                }
            )
        });
    world.pbx = other;
    remote
        .into_iter()
        .map(|output| match output {
            Output::Send {
                to: Endpoint::Remote(to),
                message,
            } => (to, message),
            _ => unreachable!("partitioned above"),
        })
        .collect()
}

fn remote_request(world: &mut World, from: RemoteSession, id: u64, message: ClientMessage) {
    world
        .hub
        .handle_remote_message(from, Some(RequestId::Number(id)), message, world.now);
    world.drain();
}

#[test]
fn a_user_is_rung_here_and_on_other_instances_and_a_remote_answer_wins() {
    let mut world = World::new();
    let alice = world.open("alice");
    let bob_here = world.open("bob");
    world
        .hub
        .open_remote_session(remote(1), UserId::new("bob").unwrap());
    let call = world.call_user(alice, "bob");
    assert!(world.take().contains(&(bob_here, incoming(call, "alice"))));
    assert_eq!(
        take_remote(&mut world),
        [(remote(1), incoming(call, "alice"))]
    );

    remote_request(&mut world, remote(1), 4, ClientMessage::Ringing { call });
    assert_eq!(world.take(), [(alice, ServerMessage::Ringing { call })]);
    assert_eq!(take_remote(&mut world), [(remote(1), ack(4))]);

    remote_request(
        &mut world,
        remote(1),
        5,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    let sent = world.take();
    assert!(sent.contains(&(bob_here, hangup(call, HangupReason::AnsweredElsewhere))));
    assert!(sent.contains(&(
        alice,
        ServerMessage::Answer {
            call,
            sdp: "answer".into()
        }
    )));
    assert_eq!(take_remote(&mut world), [(remote(1), ack(5))]);

    // Candidates both ways, then the remote end hangs up.
    world.request(
        alice,
        6,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    assert_eq!(
        take_remote(&mut world),
        [(
            remote(1),
            ServerMessage::Candidate {
                call,
                candidate: None
            }
        )]
    );
    remote_request(
        &mut world,
        remote(1),
        7,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert!(world
        .take()
        .contains(&(alice, hangup(call, HangupReason::Normal))));
    assert_eq!(world.hub.call_count(), 0);
}

#[test]
fn a_lost_instance_ends_its_sessions_calls_with_unavailable_and_forgets_its_users() {
    let mut world = World::new();
    let alice = world.open("alice");
    world
        .hub
        .open_remote_session(remote(1), UserId::new("bob").unwrap());
    let call = world.call_user(alice, "bob");
    world.take();
    take_remote(&mut world);

    world.hub.close_instance(B, HangupReason::Unavailable);
    world.drain();
    assert_eq!(
        world.take(),
        [(alice, hangup(call, HangupReason::Unavailable))]
    );
    assert_eq!(world.hub.call_count(), 0);
    assert_eq!(world.hub.remote_session_count(), 0);

    world.request(
        alice,
        2,
        ClientMessage::Call {
            to: Target::User(UserId::new("bob").unwrap()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&world.take()[0].1), Some(ErrorCode::UnknownUser));
}

#[test]
fn a_closed_remote_session_ends_its_call_with_disconnected() {
    let mut world = World::new();
    let alice = world.open("alice");
    world
        .hub
        .open_remote_session(remote(1), UserId::new("bob").unwrap());
    let call = world.call_user(alice, "bob");
    world.take();
    world
        .hub
        .close_remote_session(remote(1), HangupReason::Disconnected);
    world.drain();
    assert_eq!(
        world.take(),
        [(alice, hangup(call, HangupReason::Disconnected))]
    );
}

#[test]
fn while_the_cluster_is_unreachable_absent_users_are_cluster_unavailable_and_local_ones_ring() {
    let mut world = World::new();
    let alice = world.open("alice");
    let carol = world.open("carol");
    world.hub.set_cluster_reachable(false);
    world.request(
        alice,
        1,
        ClientMessage::Call {
            to: Target::User(UserId::new("bob").unwrap()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(
        error_code(&world.take()[0].1),
        Some(ErrorCode::ClusterUnavailable)
    );
    let call = world.call_user(alice, "carol");
    assert!(world.take().contains(&(carol, incoming(call, "alice"))));

    world.hub.set_cluster_reachable(true);
    world.request(
        alice,
        3,
        ClientMessage::Call {
            to: Target::User(UserId::new("bob").unwrap()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&world.take()[0].1), Some(ErrorCode::UnknownUser));
}

#[test]
fn requests_of_unknown_remote_sessions_and_strangers_to_a_call_are_refused() {
    let mut world = World::new();
    let alice = world.open("alice");
    world
        .hub
        .open_remote_session(remote(1), UserId::new("bob").unwrap());
    world
        .hub
        .open_remote_session(remote(2), UserId::new("mallory").unwrap());
    let call = world.call_user(alice, "bob");
    world.take();
    take_remote(&mut world);

    // Never told of: dropped without a word.
    remote_request(&mut world, remote(3), 1, ClientMessage::Ringing { call });
    assert!(take_remote(&mut world).is_empty());
    // Known, but not a leg of the call.
    remote_request(&mut world, remote(2), 2, ClientMessage::Ringing { call });
    let replies = take_remote(&mut world);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, remote(2));
    assert_eq!(error_code(&replies[0].1), Some(ErrorCode::UnknownCall));
    // A remote session cannot start calls or join rooms through another instance.
    remote_request(
        &mut world,
        remote(2),
        3,
        ClientMessage::Join {
            room: RoomId::new("r").unwrap(),
        },
    );
    assert_eq!(
        error_code(&take_remote(&mut world)[0].1),
        Some(ErrorCode::BadMessage)
    );
    assert!(world.take().is_empty());
}

#[test]
fn a_call_to_a_room_rings_its_members_on_other_instances_and_they_leave_with_their_session() {
    let mut world = World::new();
    let alice = world.open("alice");
    let standup = RoomId::new("standup").unwrap();
    world.request(
        alice,
        1,
        ClientMessage::Join {
            room: standup.clone(),
        },
    );
    assert_eq!(world.rooms, [(alice, standup.clone(), true)]);
    world.take();
    // Nobody else in the room yet.
    world.request(
        alice,
        2,
        ClientMessage::Call {
            to: Target::Room(standup.clone()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&world.take()[0].1), Some(ErrorCode::UnknownRoom));

    world
        .hub
        .open_remote_session(remote(1), UserId::new("bob").unwrap());
    world.hub.join_remote_room(remote(1), standup.clone());
    world.request(
        alice,
        3,
        ClientMessage::Call {
            to: Target::Room(standup.clone()),
            sdp: "offer".into(),
        },
    );
    let ringing = take_remote(&mut world);
    assert!(
        matches!(&ringing[..], [(to, ServerMessage::Incoming { room: Some(room), .. })]
            if *to == remote(1) && *room == standup),
        "{ringing:?}"
    );
    world.take();

    // Its session gone, the remote member is out of the room too.
    world
        .hub
        .close_remote_session(remote(1), HangupReason::Disconnected);
    world.drain();
    world.take();
    world.request(
        alice,
        4,
        ClientMessage::Call {
            to: Target::Room(standup.clone()),
            sdp: "offer".into(),
        },
    );
    assert_eq!(error_code(&world.take()[0].1), Some(ErrorCode::UnknownRoom));

    // Leaving here is reported for the cluster.
    world.rooms.clear();
    world.request(
        alice,
        5,
        ClientMessage::Leave {
            room: standup.clone(),
        },
    );
    assert_eq!(world.rooms, [(alice, standup, false)]);
}
