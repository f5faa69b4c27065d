//! Feeds fuzzer input to `Server::handle_client_packet` as one datagram, as a stream of
//! length-prefixed packets, or as a peer payload that is routed and framed back to the client
//! as ChannelData or a Data indication.
//!
//! Beyond "no panic", it checks what the property tests check: a dropped packet is always
//! counted, a relayed payload range lies inside the packet, every answer parses as a STUN
//! response, and framed peer data parses back to the same payload.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icegate_relay_proto::auth::Credentials;
use icegate_relay_proto::metrics::{Counters, PeerDenials};
use icegate_relay_proto::nonce::NonceKey;
use icegate_relay_proto::wire;
use icegate_relay_proto::{
    ClientOutcome, Command, FiveTuple, Ledger, RelayId, Server, ServerConfig, Transport,
};
use libfuzzer_sys::fuzz_target;
use stun_types::attribute::{AttributeWrite, Nonce, RawAttribute, Realm, Username};
use stun_types::message::{
    IntegrityAlgorithm, LongTermKeyCredentials, Message, MessageClass, MessageWrite,
    MessageWriteExt, MessageWriteVec, Method, TransactionId,
};
use turn_types::attribute::{ChannelNumber, Data, RequestedTransport, XorPeerAddress};
use turn_types::channel::ChannelData;

const REALM: &str = "example.org";
const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

fn peer() -> SocketAddr {
    SocketAddr::from(([8, 8, 8, 8], 4000))
}

/// A server holding one allocation with a permission and channel 0x4000 for `client`.
struct World {
    server: Server,
    counters: Arc<Counters>,
    client: FiveTuple,
    relay: RelayId,
    now: Instant,
}

impl World {
    fn new() -> Self {
        let now = Instant::now();
        let mut credentials = Credentials::new();
        credentials.add_user(USER, PASSWORD);
        let relay_ip = IpAddr::from([192, 0, 2, 10]);
        let mut config = ServerConfig::new(REALM, credentials, &[relay_ip]);
        // RFC 5780 on for the listener the client reaches, so that CHANGE-REQUEST,
        // RESPONSE-PORT and PADDING reach the answers from elsewhere.
        config.nat_discovery = Some(icegate_relay_proto::config::NatDiscovery {
            ip_pairs: vec![(IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]))],
            ports: (3478, 3479),
        });
        let ledger = Arc::new(Ledger::new(
            &[relay_ip],
            50_000,
            50_015,
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
            relay: RelayId {
                slot: 0,
                generation: 0,
                family: icegate_relay_proto::Family::V4,
            },
            now,
        };
        world.set_up();
        world
    }

    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut answers = Vec::new();
        while let Some(command) = self.server.poll_command() {
            match command {
                Command::SendToClient { data, .. } | Command::SendFrom { data, .. } => {
                    answers.push(data)
                }
                Command::BindRelay { relay, .. } => {
                    self.relay = relay;
                    self.server.relay_bound(relay, true, self.now);
                }
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

    fn set_up(&mut self) {
        let udp = RequestedTransport::new(RequestedTransport::UDP)
            .to_raw()
            .into_owned();
        let challenge = request(
            turn_types::message::ALLOCATE,
            1,
            std::slice::from_ref(&udp),
            None,
        );
        self.server
            .handle_client_packet(self.client, &challenge, self.now);
        let answer = self.drain().pop().expect("401");
        let nonce = Message::from_bytes(&answer)
            .expect("401 parses")
            .attribute::<Nonce>()
            .expect("NONCE")
            .nonce()
            .to_owned();
        let tid = |n: u128| TransactionId::from(n);
        let steps = [
            (turn_types::message::ALLOCATE, vec![udp]),
            (
                turn_types::message::CHANNEL_BIND,
                vec![
                    ChannelNumber::new(0x4000).to_raw().into_owned(),
                    XorPeerAddress::new(peer(), tid(3)).to_raw().into_owned(),
                ],
            ),
        ];
        for (n, (method, attrs)) in (2u128..).zip(steps) {
            let bytes = request(method, n, &attrs, Some(&nonce));
            self.server
                .handle_client_packet(self.client, &bytes, self.now);
            let answer = self.drain().pop().expect("an answer");
            let msg = Message::from_bytes(&answer).expect("answer parses");
            assert!(msg.has_class(MessageClass::Success), "set-up failed");
        }
    }

    fn counted(&self) -> u64 {
        Counters::get(&self.counters.malformed)
            + Counters::get(&self.counters.rate_limited)
            + self.counters.dropped.iter().map(Counters::get).sum::<u64>()
    }

    fn client_packet(&mut self, packet: &[u8]) {
        let before = self.counted();
        match self
            .server
            .handle_client_packet(self.client, packet, self.now)
        {
            ClientOutcome::Relay { payload, .. } => {
                assert!(payload.start <= payload.end && payload.end <= packet.len());
            }
            ClientOutcome::Handled => {}
            ClientOutcome::Dropped => assert!(self.counted() > before, "uncounted drop"),
        }
        for answer in self.drain() {
            let msg = Message::from_bytes(&answer).expect("answers parse");
            assert!(msg.has_class(MessageClass::Success) || msg.has_class(MessageClass::Error));
        }
        self.now += Duration::from_millis(20);
        self.server.handle_timeout(self.now);
    }

    /// Routes `payload` from the peer and frames it the way the runtime does.
    fn peer_payload(&mut self, from_port: u16, payload: &[u8]) {
        let from = SocketAddr::new(peer().ip(), from_port);
        let Some(route) = self
            .server
            .handle_peer_packet(self.relay, from, payload.len(), self.now)
        else {
            return;
        };
        assert_eq!(route.client, self.client);
        // ChannelData and Data lengths are 16 bits; the runtime never reads more than that.
        let payload = &payload[..payload.len().min(u16::MAX as usize - 64)];
        let mut buf = vec![0u8; wire::PAYLOAD_OFFSET + payload.len() + 3];
        buf[wire::PAYLOAD_OFFSET..wire::PAYLOAD_OFFSET + payload.len()].copy_from_slice(payload);
        match route.channel {
            Some(channel) => {
                assert_eq!(from_port, peer().port(), "a channel names one peer port");
                let start = wire::write_channel_header(&mut buf, channel, payload.len());
                let frame = &buf[start..wire::PAYLOAD_OFFSET + payload.len()];
                let parsed = ChannelData::parse(frame).expect("ChannelData parses");
                assert_eq!(parsed.id(), channel);
                assert_eq!(parsed.data(), payload);
            }
            None => {
                let tid = TransactionId::from(0x77_u128);
                let (start, end) = wire::write_data_indication(&mut buf, from, payload.len(), tid);
                let msg = Message::from_bytes(&buf[start..end]).expect("Data indication parses");
                assert_eq!(msg.attribute::<XorPeerAddress>().unwrap().addr(tid), from);
                assert_eq!(msg.attribute::<Data>().unwrap().data(), payload);
            }
        }
    }
}

fn request(method: Method, tid: u128, attrs: &[RawAttribute<'_>], nonce: Option<&str>) -> Vec<u8> {
    let mut msg = Message::builder(
        stun_types::message::MessageType::from_class_method(MessageClass::Request, method),
        TransactionId::from(tid),
        MessageWriteVec::new(),
    );
    for attr in attrs {
        msg.add_attribute(attr).unwrap();
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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut world = World::new();
    match mode % 3 {
        // One datagram.
        0 => world.client_packet(rest),
        // Several packets, each prefixed by a one-byte length, so state carries over.
        1 => {
            let mut rest = rest;
            while let Some((&len, tail)) = rest.split_first() {
                let (packet, tail) = tail.split_at(usize::from(len).min(tail.len()));
                world.client_packet(packet);
                rest = tail;
            }
        }
        // A peer payload, from the channel's port or another one.
        _ => {
            let port = if mode & 0x80 != 0 {
                5000
            } else {
                peer().port()
            };
            world.peer_payload(port, rest);
            world.client_packet(rest);
        }
    }
});
