//! Property tests of `Server::handle_client_packet` on hostile input.
//!
//! Whatever a client sends, the core must not panic, and every packet must be accounted for:
//! either it was handled (a request, answered or deliberately ignored), relayed with a payload
//! range inside the packet, or dropped with a counter (`malformed`, `dropped`, `rate_limited`)
//! going up, so an operator can see it. Every answer must itself be a well-formed STUN message.
//!
//! Input comes from three generators: raw bytes, valid messages with byte-level mutations,
//! and structurally valid messages with arbitrary attributes, correctly signed, so that the
//! fuzzed values reach the method handlers rather than dying at FINGERPRINT or integrity.
#![deny(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icegate_relay_proto::auth::Credentials;
use icegate_relay_proto::metrics::{Counters, PeerDenials};
use icegate_relay_proto::nonce::NonceKey;
use icegate_relay_proto::{
    ClientOutcome, Command, FiveTuple, Ledger, RelayId, Server, ServerConfig, Transport,
};
use proptest::prelude::*;
use stun_types::attribute::{Attribute, AttributeType, Nonce, RawAttribute, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageType, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use turn_types::attribute::{ChannelNumber, Lifetime, RequestedTransport, XorPeerAddress};

const REALM: &str = "example.org";
const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

/// A server holding one allocation (with a permission and a channel) for `client`.
struct World {
    server: Server,
    counters: Arc<Counters>,
    client: FiveTuple,
    nonce: String,
    now: Instant,
    next_tid: u128,
}

fn relay_ip() -> IpAddr {
    IpAddr::from([192, 0, 2, 10])
}

fn peer() -> SocketAddr {
    SocketAddr::from(([8, 8, 8, 8], 4000))
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let mut credentials = Credentials::new();
        credentials.add_user(USER, PASSWORD);
        let mut config = ServerConfig::new(
            REALM,
            credentials,
            &[relay_ip(), "2001:db8::10".parse().unwrap()],
        );
        // RFC 5780 on for the listener the client reaches, so that CHANGE-REQUEST,
        // RESPONSE-PORT and PADDING reach the answers from elsewhere.
        config.nat_discovery = Some(icegate_relay_proto::config::NatDiscovery {
            ip_pairs: vec![(IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]))],
            ports: (3478, 3479),
        });
        let relay_ips: Vec<IpAddr> = config.relay_addresses.iter().map(|r| r.local).collect();
        let ledger = Arc::new(Ledger::new(
            &relay_ips,
            50_000,
            50_063,
            NonceKey::new([3; 32]),
            now,
            1_700_000_000,
        ));
        let counters = Arc::new(Counters::default());
        let server = Server::new(
            Arc::new(config),
            ledger,
            Arc::clone(&counters),
            Arc::new(PeerDenials::default()),
            7,
            now,
        );
        let mut world = Self {
            server,
            counters,
            client: FiveTuple {
                transport: Transport::Udp,
                client: SocketAddr::from(([198, 51, 100, 1], 40_000)),
                server: SocketAddr::from(([192, 0, 2, 1], 3478)),
            },
            nonce: String::new(),
            now,
            next_tid: 1,
        };
        world.set_up();
        world
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        TransactionId::from(self.next_tid)
    }

    fn answers(&mut self) -> Vec<Vec<u8>> {
        let mut answers = Vec::new();
        while let Some(command) = self.server.poll_command() {
            match command {
                Command::SendToClient { data, .. } | Command::SendFrom { data, .. } => {
                    answers.push(data)
                }
                Command::BindRelay { relay, .. } => self.server.relay_bound(relay, true, self.now),
                Command::ConnectPeer {
                    relay, connection, ..
                } => {
                    self.server
                        .peer_connected(relay, connection, true, self.now);
                }
                Command::CloseRelay { .. }
                | Command::JoinConnection { .. }
                | Command::CloseConnection { .. } => {}
            }
        }
        answers
    }

    /// Challenge, Allocate, CreatePermission, ChannelBind: the state hostile packets then hit.
    fn set_up(&mut self) {
        let tid = self.tid();
        let challenge = request(ALLOCATE_METHOD, tid, &[transport_udp()], None);
        self.server
            .handle_client_packet(self.client, &challenge, self.now);
        let answer = self.answers().pop().expect("401");
        let msg = Message::from_bytes(&answer).expect("401 parses");
        self.nonce = msg.attribute::<Nonce>().expect("NONCE").nonce().to_owned();

        for method in [
            ALLOCATE_METHOD,
            turn_types::message::CREATE_PERMISSION,
            turn_types::message::CHANNEL_BIND,
        ] {
            let tid = self.tid();
            let attrs = match method {
                ALLOCATE_METHOD => vec![transport_udp()],
                turn_types::message::CREATE_PERMISSION => vec![peer_attr(tid, peer())],
                _ => vec![raw(&ChannelNumber::new(0x4000)), peer_attr(tid, peer())],
            };
            let bytes = request(method, tid, &attrs, Some(&self.nonce));
            self.server
                .handle_client_packet(self.client, &bytes, self.now);
            let answer = self.answers().pop().expect("an answer");
            let msg = Message::from_bytes(&answer).expect("answer parses");
            assert!(
                msg.has_class(MessageClass::Success),
                "set-up step {method:?} failed"
            );
        }
    }

    fn counted(&self) -> u64 {
        Counters::get(&self.counters.malformed)
            + Counters::get(&self.counters.rate_limited)
            + self.counters.dropped.iter().map(Counters::get).sum::<u64>()
    }

    /// Feeds one packet and checks the invariants.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
        let before = self.counted();
        let outcome = self
            .server
            .handle_client_packet(self.client, bytes, self.now);
        match &outcome {
            ClientOutcome::Relay { payload, .. } => {
                prop_assert!(
                    payload.start <= payload.end && payload.end <= bytes.len(),
                    "{payload:?} outside {} bytes",
                    bytes.len()
                );
            }
            ClientOutcome::Handled => {}
            ClientOutcome::Dropped => {
                prop_assert!(
                    self.counted() > before,
                    "dropped without being counted: {bytes:02x?}"
                );
            }
        }
        for answer in self.answers() {
            let msg = Message::from_bytes(&answer);
            prop_assert!(
                msg.is_ok(),
                "unparseable answer {answer:02x?} to {bytes:02x?}"
            );
            let msg = msg.unwrap();
            prop_assert!(
                msg.has_class(MessageClass::Success) || msg.has_class(MessageClass::Error)
            );
        }
        // Time moves a little between packets so timers and rate limits play their part.
        self.now += Duration::from_millis(50);
        self.server.handle_timeout(self.now);
        let _ = self.server.handle_peer_packet(
            RelayId {
                slot: 0,
                generation: 0,
                family: icegate_relay_proto::Family::V4,
            },
            peer(),
            bytes.len(),
            self.now,
        );
        Ok(())
    }
}

const ALLOCATE_METHOD: Method = turn_types::message::ALLOCATE;

fn raw<A: stun_types::attribute::AttributeWrite>(attr: &A) -> RawAttribute<'static> {
    attr.to_raw().into_owned()
}

fn transport_udp() -> RawAttribute<'static> {
    raw(&RequestedTransport::new(RequestedTransport::UDP))
}

fn peer_attr(tid: TransactionId, peer: SocketAddr) -> RawAttribute<'static> {
    raw(&XorPeerAddress::new(peer, tid))
}

/// A request with `attrs`, signed with alice's MD5 key when a nonce is given.
fn request(
    method: Method,
    tid: TransactionId,
    attrs: &[RawAttribute<'_>],
    nonce: Option<&str>,
) -> Vec<u8> {
    message(MessageClass::Request, method, tid, attrs, nonce)
}

fn message(
    class: MessageClass,
    method: Method,
    tid: TransactionId,
    attrs: &[RawAttribute<'_>],
    nonce: Option<&str>,
) -> Vec<u8> {
    let mtype = MessageType::from_class_method(class, method);
    let mut msg = Message::builder(mtype, tid, MessageWriteVec::new());
    for attr in attrs {
        // The builder panics on integrity and FINGERPRINT types (they have their own calls),
        // and refuses anything after them; neither is what this input is about.
        if ![0x0008, 0x001C, 0x8028].contains(&attr.get_type().value()) {
            let _ = msg.add_attribute(attr);
        }
    }
    if let Some(nonce) = nonce {
        msg.add_attribute(&Username::new(USER).unwrap()).unwrap();
        msg.add_attribute(&Realm::new(REALM).unwrap()).unwrap();
        msg.add_attribute(&Nonce::new(nonce).unwrap()).unwrap();
        let credentials = LongTermKeyCredentials::new(USER.into(), PASSWORD.into(), REALM.into());
        msg.add_message_integrity(&credentials.into(), IntegrityAlgorithm::Sha1)
            .unwrap();
    }
    msg.add_fingerprint().unwrap();
    msg.finish()
}

/// Valid packets of every kind the core parses, to be mutated.
fn seeds(nonce: &str) -> Vec<Vec<u8>> {
    let tid = TransactionId::from(0xABCD_u128);
    let mut channel_data = vec![0x40, 0x00, 0x00, 0x05];
    channel_data.extend_from_slice(b"hello\0\0\0");
    vec![
        request(stun_types::message::BINDING, tid, &[], None),
        request(ALLOCATE_METHOD, tid, &[transport_udp()], None),
        request(
            ALLOCATE_METHOD,
            tid,
            &[transport_udp(), raw(&Lifetime::new(1200))],
            Some(nonce),
        ),
        request(
            turn_types::message::REFRESH,
            tid,
            &[raw(&Lifetime::new(700))],
            Some(nonce),
        ),
        request(
            turn_types::message::CREATE_PERMISSION,
            tid,
            &[peer_attr(tid, peer())],
            Some(nonce),
        ),
        request(
            turn_types::message::CHANNEL_BIND,
            tid,
            &[
                raw(&ChannelNumber::new(0x4001)),
                peer_attr(tid, SocketAddr::from(([1, 1, 1, 1], 9))),
            ],
            Some(nonce),
        ),
        message(
            MessageClass::Indication,
            turn_types::message::SEND,
            tid,
            &[
                peer_attr(tid, peer()),
                RawAttribute::new(AttributeType::new(0x0013), b"payload"),
            ],
            None,
        ),
        channel_data,
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Truncate {
        to: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    /// Overwrites a 16-bit field, e.g. a length or a type.
    Set16 {
        at: usize,
        value: u16,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        (any::<usize>(), any::<u16>()).prop_map(|(at, value)| Mutation::Set16 { at, value }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip { at, mask } if len > 0 => bytes[at % len] ^= mask,
            Mutation::Truncate { to } => bytes.truncate(to % (len + 1)),
            Mutation::Insert { at, bytes: extra } => {
                let at = at % (len + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            Mutation::Remove { at, len: n } if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Set16 { at, value } if len >= 2 => {
                let at = at % (len - 1);
                bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Attribute types the core looks at, so structured input mostly hits real handlers.
const INTERESTING_TYPES: [u16; 22] = [
    0x0001, 0x0003, 0x0006, 0x000A, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015, 0x0016, 0x0017,
    0x0018, 0x0019, 0x001A, 0x001D, 0x0020, 0x0022, 0x8000, 0x8002, 0x8022, 0x8032,
];

fn attribute_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => proptest::sample::select(&INTERESTING_TYPES[..]),
        1 => any::<u16>(),
    ]
}

/// Method, class (0-3), attributes as (type, value), and whether to sign.
type Structured = (u16, u8, Vec<(u16, Vec<u8>)>, bool);

/// A method the core knows (or not), class, attributes with arbitrary values, and whether to
/// sign it with the valid key and nonce.
fn structured() -> impl Strategy<Value = Structured> {
    (
        prop_oneof![
            proptest::sample::select(&[0x001u16, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009][..]),
            0u16..0x1000,
        ],
        0u8..4,
        proptest::collection::vec(
            (
                attribute_type(),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..6,
        ),
        any::<bool>(),
    )
}

fn build_structured(world: &World, (method, class, attrs, sign): &Structured) -> Vec<u8> {
    let class = match class {
        0 => MessageClass::Request,
        1 => MessageClass::Indication,
        2 => MessageClass::Success,
        _ => MessageClass::Error,
    };
    let raws: Vec<RawAttribute<'_>> = attrs
        .iter()
        .map(|(t, v)| RawAttribute::new(AttributeType::new(*t), v))
        .collect();
    let nonce = sign.then_some(world.nonce.as_str());
    message(
        class,
        Method::new(*method),
        TransactionId::from(0x5151_u128),
        &raws,
        nonce,
    )
}

/// Bytes whose first 20 look like a STUN header (cookie, consistent length) or a ChannelData
/// header, so random bodies get past the first check.
fn framed() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..200)).prop_map(
            |(mtype, mut body)| {
                body.truncate(body.len() / 4 * 4);
                let mut out = (mtype & 0x3FFF).to_be_bytes().to_vec();
                out.extend_from_slice(&(body.len() as u16).to_be_bytes());
                out.extend_from_slice(&0x2112_A442u32.to_be_bytes());
                out.extend_from_slice(&[0x11; 12]);
                out.extend_from_slice(&body);
                out
            }
        ),
        (
            0x4000u16..0x8000,
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(channel, len, payload)| {
                let mut out = channel.to_be_bytes().to_vec();
                out.extend_from_slice(&(len % 80).to_be_bytes());
                out.extend_from_slice(&payload);
                out
            }),
    ]
}

proptest! {
    // 256 cases each by default; PROPTEST_CASES=10000 for a longer run.

    #[test]
    fn arbitrary_bytes_are_handled_or_counted(
        packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..8),
    ) {
        let mut world = World::new();
        for packet in packets {
            world.feed(&packet)?;
        }
    }

    #[test]
    fn framed_random_bodies_are_handled_or_counted(packets in proptest::collection::vec(framed(), 1..8)) {
        let mut world = World::new();
        for packet in packets {
            world.feed(&packet)?;
        }
    }

    #[test]
    fn mutated_valid_messages_are_handled_or_counted(
        picks in proptest::collection::vec(
            (any::<proptest::sample::Index>(), proptest::collection::vec(mutation(), 1..4)),
            1..8,
        ),
    ) {
        let mut world = World::new();
        let seeds = seeds(&world.nonce);
        for (pick, mutations) in picks {
            let packet = mutate(pick.get(&seeds).clone(), &mutations);
            world.feed(&packet)?;
        }
    }

    #[test]
    fn signed_messages_with_arbitrary_attributes_are_handled_or_counted(
        messages in proptest::collection::vec(structured(), 1..8),
    ) {
        let mut world = World::new();
        for m in &messages {
            let packet = build_structured(&world, m);
            world.feed(&packet)?;
        }
    }
}

#[test]
fn unmutated_seeds_are_all_handled() {
    // Guards the generators above: if the seeds stopped being valid, the mutation test would
    // only ever exercise the malformed path.
    let mut world = World::new();
    let seeds = seeds(&world.nonce);
    for (i, seed) in seeds.iter().enumerate() {
        let before = Counters::get(&world.counters.malformed);
        let outcome = world
            .server
            .handle_client_packet(world.client, seed, world.now);
        assert_ne!(outcome, ClientOutcome::Dropped, "seed {i} dropped");
        assert_eq!(
            Counters::get(&world.counters.malformed),
            before,
            "seed {i} malformed"
        );
        world.answers();
    }
}
