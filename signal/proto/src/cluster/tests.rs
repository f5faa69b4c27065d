//! Two or three instances' cluster cores on a fake clock, joined by a bus played by hand that
//! carries each published payload to the instances its channel names (and can lose them):
//! presence, gaps and snapshots, liveness, the proxy table, and the bus's loss and return.

use super::*;
use crate::protocol::RoomId;

const A: InstanceId = InstanceId(0xa);
const B: InstanceId = InstanceId(0xb);
const C: InstanceId = InstanceId(0xc);

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// Cluster cores, what each told its hub and its sessions, and the bus between them.
struct Net {
    now: Instant,
    nodes: Vec<Cluster>,
    hub: Vec<Vec<ToHub>>,
    sessions: Vec<Vec<(SessionId, ServerMessage)>>,
    /// While set, published payloads are dropped instead of carried.
    lossy: bool,
    /// Nodes whose subscription hears nothing, while what they publish still goes out.
    deaf: Vec<InstanceId>,
    /// The nodes that asked for a reconnect, in order.
    reconnects: Vec<InstanceId>,
}

impl Net {
    fn new(instances: &[InstanceId]) -> Net {
        let mut net = Net {
            now: Instant::now(),
            nodes: instances
                .iter()
                .map(|id| Cluster::new(ClusterConfig::new(*id)))
                .collect(),
            hub: instances.iter().map(|_| Vec::new()).collect(),
            sessions: instances.iter().map(|_| Vec::new()).collect(),
            lossy: false,
            deaf: Vec::new(),
            reconnects: Vec::new(),
        };
        for index in 0..instances.len() {
            net.nodes[index].connected(net.now);
            net.pump();
        }
        for hub in &mut net.hub {
            hub.clear();
        }
        net
    }

    fn index(&self, id: InstanceId) -> usize {
        self.nodes.iter().position(|n| n.instance() == id).unwrap()
    }

    /// Moves outputs until nothing is left to carry.
    fn pump(&mut self) {
        loop {
            let mut carried = Vec::new();
            for (index, node) in self.nodes.iter_mut().enumerate() {
                while let Some(output) = node.poll_output() {
                    match output {
                        Output::Publish { channel, payload } => carried.push((channel, payload)),
                        Output::Session { session, message } => {
                            self.sessions[index].push((session, message))
                        }
                        Output::Hub(message) => self.hub[index].push(message),
                        Output::Reconnect => self.reconnects.push(node.instance()),
                        Output::Log(_) => {}
                    }
                }
            }
            if carried.is_empty() {
                return;
            }
            if self.lossy {
                continue;
            }
            for (channel, payload) in carried {
                for node in &mut self.nodes {
                    let to_it = match channel {
                        Channel::All => true,
                        Channel::Instance(id) => id == node.instance(),
                    };
                    if to_it && node.is_connected() && !self.deaf.contains(&node.instance()) {
                        node.handle_bus(payload.as_bytes(), self.now).unwrap();
                    }
                }
            }
        }
    }

    /// Advances the clock by `by`, one heartbeat-sized step at a time, firing due timers.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(500)).min(end);
            for node in &mut self.nodes {
                if node.poll_timeout().is_some_and(|due| due <= self.now) {
                    node.handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }

    fn hub_of(&mut self, id: InstanceId) -> Vec<ToHub> {
        let index = self.index(id);
        std::mem::take(&mut self.hub[index])
    }

    fn sessions_of(&mut self, id: InstanceId) -> Vec<(SessionId, ServerMessage)> {
        let index = self.index(id);
        std::mem::take(&mut self.sessions[index])
    }

    fn node(&mut self, id: InstanceId) -> &mut Cluster {
        let index = self.index(id);
        &mut self.nodes[index]
    }
}

fn opened(instance: InstanceId, session: u64, name: &str) -> ToHub {
    ToHub::RemoteOpened {
        session: RemoteSession {
            instance,
            session: SessionId(session),
        },
        user: user(name),
    }
}

#[test]
fn sessions_opened_and_closed_on_one_instance_are_known_to_the_others() {
    let mut net = Net::new(&[A, B, C]);
    let now = net.now;
    net.node(B).session_opened(SessionId(1), user("bob"), now);
    net.pump();
    assert_eq!(net.hub_of(A), [opened(B, 1, "bob")]);
    assert_eq!(net.hub_of(C), [opened(B, 1, "bob")]);
    assert!(
        net.hub_of(B).is_empty(),
        "its own broadcasts come back and are ignored"
    );

    net.node(B).session_closed(SessionId(1), now);
    net.pump();
    let gone = ToHub::RemoteClosed(RemoteSession {
        instance: B,
        session: SessionId(1),
    });
    assert_eq!(net.hub_of(A), std::slice::from_ref(&gone));
    assert_eq!(net.hub_of(C), [gone]);
}

#[test]
fn an_instance_that_connects_later_learns_the_others_sessions_and_they_learn_its() {
    let mut net = Net::new(&[A]);
    let now = net.now;
    net.node(A).session_opened(SessionId(1), user("alice"), now);
    net.pump();
    net.nodes.push(Cluster::new(ClusterConfig::new(B)));
    net.hub.push(Vec::new());
    net.sessions.push(Vec::new());
    net.node(B).session_opened(SessionId(2), user("bob"), now);
    net.node(B).connected(now);
    net.pump();
    assert_eq!(
        net.hub_of(B),
        [
            ToHub::Reachable(false),
            ToHub::Reachable(true),
            opened(A, 1, "alice")
        ]
    );
    assert_eq!(net.hub_of(A), [opened(B, 2, "bob")]);
}

#[test]
fn a_missed_presence_change_is_repaired_by_a_snapshot_at_the_next_heartbeat() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    net.lossy = true;
    net.node(B).session_opened(SessionId(1), user("bob"), now);
    net.node(B).session_opened(SessionId(2), user("bob"), now);
    net.pump();
    net.lossy = false;
    net.node(B).session_closed(SessionId(1), now);
    net.pump();
    // The `Left` of 1 is applied, and its number shows a gap: A asks B for a snapshot.
    assert_eq!(
        net.hub_of(A),
        [
            ToHub::RemoteClosed(RemoteSession {
                instance: B,
                session: SessionId(1)
            }),
            opened(B, 2, "bob"),
        ]
    );

    // Lost again, then only the heartbeat tells A that it is behind.
    net.lossy = true;
    net.node(B).session_opened(SessionId(3), user("bob"), now);
    net.pump();
    net.lossy = false;
    assert!(net.hub_of(A).is_empty());
    net.advance(HEARTBEAT);
    assert_eq!(net.hub_of(A), [opened(B, 3, "bob")]);
}

#[test]
fn a_silent_instance_is_lost_within_the_timeout_and_the_calls_it_owned_end_here() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    net.node(B).session_opened(SessionId(2), user("bob"), now);
    net.pump();
    net.hub_of(A);
    // A's hub rings bob on B: B records that the call is owned by A.
    let call = CallId(77);
    net.node(A).send(
        RemoteSession {
            instance: B,
            session: SessionId(2),
        },
        ServerMessage::Incoming {
            call,
            from: user("alice"),
            room: None,
            sdp: "offer".into(),
        },
        now,
    );
    net.pump();
    assert_eq!(net.sessions_of(B).len(), 1);
    let answer = ClientMessage::Answer {
        call,
        sdp: "answer".into(),
    };
    assert_eq!(net.node(B).owner(SessionId(2), &answer), Some(A));
    assert_eq!(net.node(B).owner(SessionId(9), &answer), None);

    // A stops (no heartbeats, no goodbye) while B's heartbeats go on: B lets A go after the
    // timeout, not before.
    let a = net.nodes.remove(0);
    let (hub_a, sessions_a) = (net.hub.remove(0), net.sessions.remove(0));
    net.advance(INSTANCE_TIMEOUT - Duration::from_secs(1));
    assert!(net.hub_of(B).is_empty());
    net.advance(Duration::from_secs(1));
    assert_eq!(net.hub_of(B), [ToHub::InstanceLost(A)]);
    assert_eq!(
        net.sessions_of(B),
        [(
            SessionId(2),
            ServerMessage::Hangup {
                call,
                reason: HangupReason::Unavailable
            }
        )]
    );
    assert_eq!(net.node(B).owner(SessionId(2), &answer), None);
    drop((a, hub_a, sessions_a));
}

#[test]
fn requests_in_a_call_owned_elsewhere_go_to_the_owner_and_its_messages_come_back() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    net.node(B).session_opened(SessionId(2), user("bob"), now);
    net.pump();
    net.hub_of(A);
    let call = CallId(5);
    let bob = RemoteSession {
        instance: B,
        session: SessionId(2),
    };
    net.node(A).send(
        bob,
        ServerMessage::Incoming {
            call,
            from: user("alice"),
            room: None,
            sdp: "offer".into(),
        },
        now,
    );
    net.pump();
    net.sessions_of(B);
    let hangup = ClientMessage::Hangup {
        call,
        reason: HangupReason::Busy,
    };
    let owner = net.node(B).owner(SessionId(2), &hangup).unwrap();
    net.node(B).forward(
        owner,
        SessionId(2),
        Some(RequestId::Number(3)),
        hangup.clone(),
        now,
    );
    net.pump();
    assert_eq!(
        net.hub_of(A),
        [ToHub::Request {
            from: bob,
            id: Some(RequestId::Number(3)),
            message: hangup.clone()
        }]
    );
    // A declined call is no longer the session's elsewhere.
    assert_eq!(net.node(B).owner(SessionId(2), &hangup), None);
    // Messages for a session that is gone are dropped.
    net.node(B).session_closed(SessionId(2), now);
    net.node(A).send(bob, ServerMessage::Ringing { call }, now);
    net.pump();
    assert!(net.sessions_of(B).is_empty());
}

#[test]
fn losing_the_bus_ends_cross_instance_calls_and_a_reconnect_announces_everything_again() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    net.node(A).session_opened(SessionId(1), user("alice"), now);
    net.node(B).session_opened(SessionId(2), user("bob"), now);
    net.pump();
    net.hub_of(A);
    net.hub_of(B);
    let call = CallId(8);
    net.node(A).send(
        RemoteSession {
            instance: B,
            session: SessionId(2),
        },
        ServerMessage::Incoming {
            call,
            from: user("alice"),
            room: None,
            sdp: "offer".into(),
        },
        now,
    );
    net.pump();
    net.sessions_of(B);

    // Only B's connection to Redis breaks.
    net.node(B).disconnected(now);
    net.pump();
    assert_eq!(
        net.hub_of(B),
        [ToHub::InstanceLost(A), ToHub::Reachable(false)]
    );
    assert_eq!(
        net.sessions_of(B),
        [(
            SessionId(2),
            ServerMessage::Hangup {
                call,
                reason: HangupReason::Unavailable
            }
        )]
    );
    // A hears nothing more from B, and lets it go after the timeout.
    net.advance(INSTANCE_TIMEOUT);
    assert_eq!(net.hub_of(A), [ToHub::InstanceLost(B)]);

    // Redis is back for B: both sides know each other's sessions again.
    let now = net.now;
    net.node(B).connected(now);
    net.pump();
    assert_eq!(
        net.hub_of(B),
        [ToHub::Reachable(true), opened(A, 1, "alice")]
    );
    assert_eq!(net.hub_of(A), [opened(B, 2, "bob")]);
}

#[test]
fn bus_messages_of_another_version_or_shape_are_refused() {
    let mut cluster = Cluster::new(ClusterConfig::new(A));
    let now = Instant::now();
    cluster.connected(now);
    assert!(matches!(
        cluster.handle_bus(
            br#"{"v":2,"from":"000000000000000b","body":{"t":"new"}}"#,
            now
        ),
        Err(WireError::Version(2))
    ));
    assert!(matches!(
        cluster.handle_bus(b"not json", now),
        Err(WireError::Malformed(_))
    ));
    assert_eq!(cluster.peer_count(), 0);
}

#[test]
fn every_bus_message_reads_back_as_it_was_written() {
    let bodies = [
        Body::Heartbeat { seq: 3 },
        Body::Joined {
            seq: 4,
            session: SessionId(1),
            user: user("bob"),
        },
        Body::Left {
            seq: 5,
            session: SessionId(1),
        },
        Body::Sync,
        Body::Snapshot {
            seq: 5,
            sessions: vec![(SessionId(2), user("carol"))],
            rooms: vec![(SessionId(2), RoomId::new("standup").unwrap())],
        },
        Body::Room {
            seq: 6,
            session: SessionId(2),
            room: RoomId::new("standup").unwrap(),
            joined: false,
        },
        Body::Deliver {
            session: SessionId(2),
            message: ServerMessage::error(
                Some(RequestId::Text("x".into())),
                crate::protocol::ErrorCode::Glare,
                "the other end's offer goes first",
            ),
        },
        Body::Request {
            session: SessionId(2),
            id: Some(RequestId::Number(7)),
            message: ClientMessage::Candidate {
                call: CallId(9),
                candidate: None,
            },
        },
    ];
    for body in bodies {
        let envelope = Envelope {
            v: wire::WIRE_VERSION,
            from: B,
            body,
        };
        assert_eq!(
            Envelope::decode(envelope.encode().as_bytes()).unwrap(),
            envelope
        );
    }
}

fn room_change(instance: InstanceId, session: u64, room: &str, joined: bool) -> ToHub {
    ToHub::RemoteRoom {
        session: RemoteSession {
            instance,
            session: SessionId(session),
        },
        room: RoomId::new(room).unwrap(),
        joined,
    }
}

#[test]
fn room_memberships_travel_with_presence_and_are_repaired_by_snapshots() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    let standup = RoomId::new("standup").unwrap();
    net.node(B).session_opened(SessionId(1), user("bob"), now);
    net.node(B)
        .room_changed(SessionId(1), standup.clone(), true, now);
    // Joining twice says nothing new.
    net.node(B)
        .room_changed(SessionId(1), standup.clone(), true, now);
    net.pump();
    assert_eq!(
        net.hub_of(A),
        [opened(B, 1, "bob"), room_change(B, 1, "standup", true)]
    );

    // Leaving is lost; the next heartbeat's snapshot repairs it.
    net.lossy = true;
    net.node(B)
        .room_changed(SessionId(1), standup.clone(), false, now);
    net.pump();
    net.lossy = false;
    net.advance(HEARTBEAT);
    assert_eq!(net.hub_of(A), [room_change(B, 1, "standup", false)]);

    // A newcomer learns rooms from the snapshot, after the sessions they belong to.
    let now = net.now;
    net.node(B).room_changed(SessionId(1), standup, true, now);
    net.pump();
    net.nodes.push(Cluster::new(ClusterConfig::new(C)));
    net.hub.push(Vec::new());
    net.sessions.push(Vec::new());
    net.node(C).connected(now);
    net.pump();
    let heard = net.hub_of(C);
    let bob = heard
        .iter()
        .position(|m| *m == opened(B, 1, "bob"))
        .unwrap();
    let room = heard
        .iter()
        .position(|m| *m == room_change(B, 1, "standup", true))
        .unwrap();
    assert!(bob < room, "{heard:?}");
}

#[test]
fn a_deaf_subscription_is_noticed_by_its_own_heartbeats_not_coming_back() {
    let mut net = Net::new(&[A, B]);
    // While A hears its own broadcasts, it stays: a whole timeout and more of heartbeats.
    net.advance(INSTANCE_TIMEOUT * 2);
    assert!(net.reconnects.is_empty());
    assert!(net.node(A).is_connected());

    // A's subscription goes deaf while its publishing still works: B keeps hearing A (so A
    // seems fine to the others), and A hears no one, not even itself.
    net.deaf.push(A);
    net.advance(INSTANCE_TIMEOUT - Duration::from_secs(1));
    assert!(net.reconnects.is_empty(), "too early");
    net.advance(Duration::from_secs(1));
    assert_eq!(net.reconnects, [A], "A asks for a new connection");
    assert!(!net.node(A).is_connected());
    assert_eq!(
        net.hub_of(A),
        [ToHub::InstanceLost(B), ToHub::Reachable(false)],
        "A's calls with B end as on any loss of the bus"
    );
    assert!(net.node(B).is_connected() && net.reconnects.len() == 1);

    // Reconnected, A hears again: B is back in its view, and nothing more is asked.
    net.deaf.clear();
    let now = net.now;
    net.node(A).connected(now);
    net.pump();
    assert_eq!(net.node(A).peer_count(), 1);
    net.advance(INSTANCE_TIMEOUT * 2);
    assert_eq!(net.reconnects, [A]);
}

#[test]
fn goodbye_drops_the_instance_at_once_and_it_stays_silent() {
    let mut net = Net::new(&[A, B]);
    let now = net.now;
    net.node(A).session_opened(SessionId(1), user("alice"), now);
    net.pump();
    assert_eq!(net.hub_of(B), [opened(A, 1, "alice")], "B knows alice on A");
    net.node(A).leave(now);
    assert!(net.node(A).has_left());
    net.pump();
    assert_eq!(
        net.hub_of(B),
        [ToHub::InstanceLost(A)],
        "no waiting out the timeout"
    );
    assert_eq!(net.node(B).peer_count(), 0);
    // A publishes nothing more: no heartbeat brings it back, a late session change is not
    // announced, and it does not count its own silence as a deaf bus.
    net.node(A).session_closed(SessionId(1), now);
    net.advance(INSTANCE_TIMEOUT * 2);
    assert_eq!(net.node(B).peer_count(), 0);
    assert!(net.hub_of(B).is_empty());
    assert!(net.reconnects.is_empty());
}
