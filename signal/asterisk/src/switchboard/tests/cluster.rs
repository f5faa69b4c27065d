//! Two switchboards, two instances of a cluster, joined by a bus played by hand: calls between
//! browsers on different instances, an instance that dies, the bus lost and back, and the PBX
//! calling a user connected to the other instance through this instance's gateway.

use icegate_signal_proto::cluster::{ClusterConfig, INSTANCE_TIMEOUT};
use icegate_signal_proto::hub::InstanceId;
use icegate_signal_proto::protocol::{Digits, RoomId};

use super::*;

const A: InstanceId = InstanceId(0xa);
const B: InstanceId = InstanceId(0xb);

/// A hub without a PBX, seeded with `seed` so that the two instances' ids differ.
fn plain(seed: u64, now: Instant) -> Board {
    Board::with(
        Switchboard::new(Hub::new(HubConfig::default(), seed), None, now),
        now,
    )
}

/// Instance A and instance B, and whether the bus carries what they publish.
struct Pair {
    a: Board,
    b: Board,
    /// Whether B is alive: a dead B neither hears, says, nor keeps time.
    b_alive: bool,
}

impl Pair {
    fn new(mut a: Board, mut b: Board) -> Pair {
        b.now = a.now;
        for (board, id) in [(&mut a, A), (&mut b, B)] {
            board
                .sb
                .join_cluster(Cluster::new(ClusterConfig::new(id)), board.now);
            board.sb.bus_connected(board.now);
            board.drain();
        }
        let mut pair = Pair {
            a,
            b,
            b_alive: true,
        };
        pair.carry();
        pair
    }

    fn plain() -> Pair {
        let now = Instant::now();
        Pair::new(plain(7, now), plain(8, now))
    }

    /// Carries what both published to whom each channel names, until nothing is left.
    fn carry(&mut self) {
        loop {
            let from_a = std::mem::take(&mut self.a.bus);
            let from_b = std::mem::take(&mut self.b.bus);
            if from_a.is_empty() && (from_b.is_empty() || !self.b_alive) {
                return;
            }
            let from_b = if self.b_alive { from_b } else { Vec::new() };
            for (channel, payload) in from_a.into_iter().chain(from_b) {
                for (board, id, alive) in [(&mut self.a, A, true), (&mut self.b, B, self.b_alive)] {
                    let to_it = match channel {
                        Channel::All => true,
                        Channel::Instance(to) => to == id,
                    };
                    if to_it && alive {
                        board.sb.handle_bus(payload.as_bytes(), board.now).unwrap();
                        board.drain();
                    }
                }
            }
        }
    }

    /// Moves both clocks on by `by` in half-second steps, firing timers and carrying.
    fn advance(&mut self, by: Duration) {
        let end = self.a.now + by;
        while self.a.now < end {
            let next = (self.a.now + Duration::from_millis(500)).min(end);
            self.a.at(next);
            if self.b_alive {
                self.b.at(next);
            }
            self.carry();
        }
    }

    fn request(&mut self, on_b: bool, session: SessionId, id: u64, message: ClientMessage) {
        let board = if on_b { &mut self.b } else { &mut self.a };
        board.request(session, id, message);
        self.carry();
    }
}

fn call_user(to: &str) -> ClientMessage {
    ClientMessage::Call {
        to: Target::User(UserId::new(to).unwrap()),
        sdp: "offer".into(),
    }
}

fn acked_call(sent: &[ServerMessage]) -> CallId {
    sent.iter()
        .find_map(|m| match m {
            ServerMessage::Ack {
                call: Some(call), ..
            } => Some(*call),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no ack with a call in {sent:?}"))
}

fn error_code(sent: &[ServerMessage]) -> Option<ErrorCode> {
    sent.iter().find_map(|m| match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    })
}

fn hangup(call: CallId, reason: HangupReason) -> ServerMessage {
    ServerMessage::Hangup { call, reason }
}

fn ack(id: u64) -> ServerMessage {
    ServerMessage::Ack {
        id: RequestId::Number(id),
        call: None,
    }
}

/// alice on A calls bob on B, who answers; returns both sessions and the call.
fn answered(pair: &mut Pair) -> (SessionId, SessionId, CallId) {
    let alice = pair.a.open("alice");
    let bob = pair.b.open("bob");
    pair.carry();
    pair.request(false, alice, 1, call_user("bob"));
    let call = acked_call(&pair.a.take_sent(alice));
    assert!(matches!(
        pair.b.take_sent(bob).as_slice(),
        [ServerMessage::Incoming { call: c, from, .. }] if *c == call && from.as_str() == "alice"
    ));
    pair.request(
        true,
        bob,
        2,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    assert_eq!(pair.b.take_sent(bob), [ack(2)]);
    assert_eq!(
        pair.a.take_sent(alice),
        [ServerMessage::Answer {
            call,
            sdp: "answer".into()
        }]
    );
    (alice, bob, call)
}

#[test]
fn a_call_between_instances_rings_answers_trickles_renegotiates_and_hangs_up() {
    let mut pair = Pair::plain();
    let alice = pair.a.open("alice");
    let bob = pair.b.open("bob");
    pair.carry();
    pair.request(false, alice, 1, call_user("bob"));
    let call = acked_call(&pair.a.take_sent(alice));
    assert_eq!(pair.b.take_sent(bob).len(), 1, "incoming");
    assert_eq!(pair.b.sb.hub().call_count(), 0, "the call lives on A");

    pair.request(true, bob, 2, ClientMessage::Ringing { call });
    assert_eq!(pair.b.take_sent(bob), [ack(2)]);
    assert_eq!(pair.a.take_sent(alice), [ServerMessage::Ringing { call }]);

    // The caller trickles to the ringing callee, the callee answers and trickles back.
    let candidate = cand("candidate:1 1 udp 1 192.0.2.1 5000 typ host");
    pair.request(
        false,
        alice,
        3,
        ClientMessage::Candidate {
            call,
            candidate: candidate.clone(),
        },
    );
    assert_eq!(
        pair.b.take_sent(bob),
        [ServerMessage::Candidate {
            call,
            candidate: candidate.clone()
        }]
    );
    pair.request(
        true,
        bob,
        4,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    pair.b.take_sent(bob);
    pair.a.take_sent(alice);
    pair.request(
        true,
        bob,
        5,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    assert_eq!(
        pair.a.take_sent(alice),
        [ServerMessage::Candidate {
            call,
            candidate: None
        }]
    );

    // Renegotiation from the remote end, DTMF from the local one.
    pair.request(
        true,
        bob,
        6,
        ClientMessage::Offer {
            call,
            sdp: "hold".into(),
        },
    );
    assert_eq!(
        pair.a.take_sent(alice),
        [ServerMessage::Offer {
            call,
            sdp: "hold".into()
        }]
    );
    pair.request(
        false,
        alice,
        7,
        ClientMessage::Answer {
            call,
            sdp: "held".into(),
        },
    );
    assert_eq!(pair.a.take_sent(alice), [ack(7)]);
    assert!(pair.b.take_sent(bob).contains(&ServerMessage::Answer {
        call,
        sdp: "held".into()
    }));
    pair.request(
        false,
        alice,
        8,
        ClientMessage::Dtmf {
            call,
            digits: Digits::new("12#").unwrap(),
        },
    );
    assert!(pair.b.take_sent(bob).contains(&ServerMessage::Dtmf {
        call,
        digits: Digits::new("12#").unwrap()
    }));

    pair.request(
        true,
        bob,
        9,
        ClientMessage::Hangup {
            call,
            reason: HangupReason::Normal,
        },
    );
    assert_eq!(pair.b.take_sent(bob), [ack(9)]);
    assert_eq!(
        pair.a.take_sent(alice),
        [ack(8), hangup(call, HangupReason::Normal)]
    );
    assert_eq!(pair.a.sb.hub().call_count(), 0);
    assert_eq!(pair.b.sb.cluster().unwrap().proxy_count(), 0);
}

#[test]
fn a_dead_instances_users_are_gone_within_the_timeout_and_its_calls_end_unavailable() {
    let mut pair = Pair::plain();
    let (alice, _bob, call) = answered(&mut pair);
    // B dies: it says nothing more, not even goodbye.
    pair.b_alive = false;
    pair.advance(INSTANCE_TIMEOUT - Duration::from_secs(1));
    assert!(pair.a.take_sent(alice).is_empty(), "not before the timeout");
    pair.advance(Duration::from_secs(1));
    assert_eq!(
        pair.a.take_sent(alice),
        [hangup(call, HangupReason::Unavailable)]
    );
    pair.request(false, alice, 3, call_user("bob"));
    assert_eq!(
        error_code(&pair.a.take_sent(alice)),
        Some(ErrorCode::UnknownUser)
    );
}

#[test]
fn the_owner_of_a_call_dying_ends_it_for_the_remote_leg_too() {
    let mut pair = Pair::plain();
    let (_alice, bob, call) = answered(&mut pair);
    // Seen from B, A is the one that goes silent: swap the roles.
    std::mem::swap(&mut pair.a, &mut pair.b);
    pair.b_alive = false;
    pair.advance(INSTANCE_TIMEOUT);
    assert_eq!(
        pair.a.take_sent(bob),
        [hangup(call, HangupReason::Unavailable)]
    );
}

#[test]
fn without_the_bus_local_calls_work_and_remote_users_are_refused_until_it_returns() {
    let mut pair = Pair::plain();
    let (alice, bob, call) = answered(&mut pair);
    let carol = pair.a.open("carol");
    pair.carry();
    pair.a.sb.bus_disconnected(pair.a.now);
    pair.a.drain();
    pair.b.sb.bus_disconnected(pair.b.now);
    pair.b.drain();
    assert_eq!(
        pair.a.take_sent(alice),
        [hangup(call, HangupReason::Unavailable)]
    );
    assert_eq!(
        pair.b.take_sent(bob),
        [hangup(call, HangupReason::Unavailable)]
    );
    assert!(pair.a.bus.is_empty() && pair.b.bus.is_empty());

    pair.a.request(alice, 3, call_user("bob"));
    assert_eq!(
        error_code(&pair.a.take_sent(alice)),
        Some(ErrorCode::ClusterUnavailable)
    );
    pair.a.request(alice, 4, call_user("carol"));
    acked_call(&pair.a.take_sent(alice));
    assert_eq!(pair.a.take_sent(carol).len(), 1, "carol, on A too, rings");

    // The bus comes back: the two instances find each other without anyone reconnecting.
    pair.a.sb.bus_connected(pair.a.now);
    pair.a.drain();
    pair.b.sb.bus_connected(pair.b.now);
    pair.b.drain();
    pair.carry();
    pair.request(false, alice, 5, call_user("bob"));
    acked_call(&pair.a.take_sent(alice));
    assert_eq!(pair.b.take_sent(bob).len(), 1, "incoming");
}

#[test]
fn the_pbx_calls_a_user_on_the_other_instance_through_this_instances_gateway() {
    let a = Board::up();
    let now = a.now;
    let mut pair = Pair::new(a, plain(8, now));
    let bob = pair.b.open("bob");
    pair.carry();
    pair.a.feed_sip(&incoming_invite("bob"));
    pair.carry();
    let call = match pair.b.take_sent(bob).as_slice() {
        [ServerMessage::Incoming { call, sdp, .. }] => {
            assert_eq!(sdp, AST_SDP);
            *call
        }
        other => panic!("no incoming on B: {other:?}"),
    };
    pair.a.sip.clear();
    pair.request(true, bob, 1, ClientMessage::Ringing { call });
    assert!(pair
        .a
        .sip
        .pop()
        .unwrap()
        .encode()
        .starts_with("SIP/2.0 180"));
    pair.request(
        true,
        bob,
        2,
        ClientMessage::Answer {
            call,
            sdp: BROWSER_SDP.into(),
        },
    );
    pair.request(
        true,
        bob,
        3,
        ClientMessage::Candidate {
            call,
            candidate: None,
        },
    );
    let ok = pair.a.sip.pop().unwrap();
    assert!(ok.encode().starts_with("SIP/2.0 200"), "{}", ok.encode());
    assert_eq!(pair.a.results, [CallResult::Answered]);

    let ack = format!(
        "ACK sip:icegate@x.invalid;transport=ws SIP/2.0\r\n\
         Via: SIP/2.0/WS 127.0.0.1:8088;rport;branch=z9hG4bKPjack\r\n\
         From: \"Reception\" <sip:100@pbx.example>;tag=ast\r\n\
         To: {}\r\nCall-ID: in-1\r\nCSeq: 100 ACK\r\nContent-Length: 0\r\n\r\n",
        ok.header("To").unwrap()
    );
    pair.a.feed_sip(&ack);

    // bob's connection to B ends: A's gateway hangs up with Asterisk (after the ACK).
    pair.b.sb.close_session(bob, pair.b.now);
    pair.b.drain();
    pair.carry();
    assert_eq!(pair.a.sb.hub().call_count(), 0, "{:?}", pair.a.sent);
    let sip: Vec<String> = pair.a.sip.iter().map(|m| m.encode()).collect();
    assert!(sip.iter().any(|m| m.starts_with("BYE ")), "{sip:?}");
}

#[test]
fn a_call_to_a_room_rings_its_members_on_both_instances() {
    let mut pair = Pair::plain();
    let alice = pair.a.open("alice");
    let carol = pair.a.open("carol");
    let bob = pair.b.open("bob");
    let join = ClientMessage::Join {
        room: RoomId::new("standup").unwrap(),
    };
    for (on_b, session) in [(false, alice), (false, carol), (true, bob)] {
        pair.request(on_b, session, 1, join.clone());
    }
    pair.a.sent.clear();
    pair.b.sent.clear();
    pair.request(
        false,
        alice,
        2,
        ClientMessage::Call {
            to: Target::Room(RoomId::new("standup").unwrap()),
            sdp: "offer".into(),
        },
    );
    let call = acked_call(&pair.a.take_sent(alice));
    assert_eq!(pair.a.take_sent(carol).len(), 1, "incoming");
    let incoming = pair.b.take_sent(bob);
    assert!(
        matches!(&incoming[..], [ServerMessage::Incoming { call: c, room: Some(_), .. }] if *c == call),
        "{incoming:?}"
    );
    // bob answers from B: carol's leg ends, alice gets the answer.
    pair.request(
        true,
        bob,
        3,
        ClientMessage::Answer {
            call,
            sdp: "answer".into(),
        },
    );
    assert_eq!(
        pair.a.take_sent(carol),
        [hangup(call, HangupReason::AnsweredElsewhere)]
    );
    assert!(pair.a.take_sent(alice).contains(&ServerMessage::Answer {
        call,
        sdp: "answer".into()
    }));
}
