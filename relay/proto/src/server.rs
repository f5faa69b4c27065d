//! The TURN server state machine of one worker.
//!
//! [`Server`] methods, grouped as quinn groups them:
//! - inputs: [`Server::handle_client_packet`], [`Server::handle_peer_packet`],
//!   [`Server::relay_bound`], [`Server::handle_timeout`], [`Server::handle_disconnect`], and
//!   for TCP allocations [`Server::peer_connected`], [`Server::peer_connection`],
//!   [`Server::connection_closed`];
//! - outputs: [`Server::poll_command`] (drain after every input), [`Server::poll_timeout`];
//! - control: [`Server::with_rate_table`], [`Server::set_config`], [`Server::set_draining`].
//!
//! The two data-path inputs return a route instead of queueing a command, so relaying a packet
//! allocates nothing.
//!
//! This file holds the type, its public API and the dispatch of what arrives; the work is in
//! one submodule per concept, each adding to `impl Server`:
//!
//! | module | what it handles |
//! |---|---|
//! | `data_path` | ChannelData and Send out to peers, peer datagrams back to clients |
//! | `authenticate` | a request's long-term credentials (nonce, integrity, ...); 401/438 |
//! | `allocate` | Allocate, parsed into a checked request, then carried out |
//! | `requests` | the other requests: Binding, Refresh, CreatePermission, ChannelBind |
//! | `tcp_allocations` | RFC 6062: Connect, ConnectionBind, ConnectionAttempt, peer connections |
//! | `nat_discovery` | RFC 5780 on Binding: CHANGE-REQUEST, RESPONSE-PORT, PADDING, OTHER-ADDRESS |
//! | `replies` | building, signing, counting and queueing responses |

use std::collections::VecDeque;

use icegate_common::collections::FastMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun_types::attribute::{
    Attribute, AttributeStaticType, AttributeType, ErrorCode, MessageIntegrity,
    MessageIntegritySha256,
};
use stun_types::message::{Message, MessageClass, Method, BINDING};
use turn_types::message::{
    ALLOCATE, CHANNEL_BIND, CONNECT, CONNECTION_BIND, CREATE_PERMISSION, REFRESH, SEND,
};

use crate::allocation::Allocation;
use crate::config::ServerConfig;
use crate::ledger::Ledger;
use crate::metrics::{Counters, MethodLabel, PeerDenials};
use crate::rate_limit::RateTable;
use crate::transport::{Family, FiveTuple};

mod allocate;
mod authenticate;
mod data_path;
mod nat_discovery;
mod redirect;
mod replies;
mod requests;
mod tcp_allocations;

pub use tcp_allocations::CONNECTION_BIND_TIMEOUT;

/// How often expiry is checked. TURN timers are minutes long; a second is precise enough.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Buckets of the rate table a server makes for itself when not given a shared one.
const OWN_RATE_SLOTS: usize = 4_096;

/// Names one relay socket: an allocation slot, its generation, and the address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayId {
    /// The allocation's slot.
    pub slot: u32,
    /// Bumped each time the slot is reused, so stale ids miss.
    pub generation: u32,
    /// Which of the allocation's relays.
    pub family: Family,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a STUN message to a client.
    SendToClient {
        /// Where to.
        to: FiveTuple,
        /// The message.
        data: Vec<u8>,
    },
    /// Send a STUN message over UDP from the listener bound to `from`: a Binding answered
    /// from another of the relay's addresses or to another port of the client (RFC 5780).
    SendFrom {
        /// The listening address (IP and port) to send from.
        from: SocketAddr,
        /// Where to.
        to: SocketAddr,
        /// The message.
        data: Vec<u8>,
    },
    /// Bind a UDP socket for a relay and report with [`Server::relay_bound`].
    BindRelay {
        /// The relay it serves.
        relay: RelayId,
        /// The local address to bind.
        addr: SocketAddr,
        /// Whether to set the DF bit on what it sends (DONT-FRAGMENT).
        dont_fragment: bool,
        /// A TCP allocation (RFC 6062): a TCP listener rather than a UDP socket; what
        /// connects to it is reported with [`Server::peer_connection`].
        tcp: bool,
    },
    /// Close a relay socket.
    CloseRelay {
        /// The relay it served.
        relay: RelayId,
    },
    /// Connect to `peer` over TCP from the relayed address `from` of the TCP allocation
    /// `relay`, and report with [`Server::peer_connected`] (RFC 6062 Connect).
    ConnectPeer {
        /// The connection's CONNECTION-ID.
        connection: u32,
        /// The allocation's relay.
        relay: RelayId,
        /// The relayed address to connect from.
        from: SocketAddr,
        /// The peer to connect to.
        peer: SocketAddr,
    },
    /// The stream connection `client` now carries the bytes of peer connection
    /// `connection`, both ways, unframed; the answer queued before this goes out first
    /// (RFC 6062 ConnectionBind).
    JoinConnection {
        /// The client's data connection.
        client: FiveTuple,
        /// The peer connection's CONNECTION-ID.
        connection: u32,
    },
    /// Close peer connection `connection`, and its client data connection if it has one.
    CloseConnection {
        /// The connection's CONNECTION-ID.
        connection: u32,
    },
}

/// What to do with a packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Send `packet[payload]` from the relay socket `relay` to `peer`.
    Relay {
        /// The relay socket to send from.
        relay: RelayId,
        /// The peer to send to.
        peer: SocketAddr,
        /// The payload's position in the packet.
        payload: Range<usize>,
    },
    /// A request was handled; drain [`Server::poll_command`].
    Handled,
    /// Nothing to do (dropped and counted).
    Dropped,
}

/// Where a peer's datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    /// The client to send to.
    pub client: FiveTuple,
    /// Frame as ChannelData on this channel, or as a Data indication when `None`.
    pub channel: Option<u16>,
}

/// A reusable place for an allocation; [`RelayId`]s carry its generation so that a socket
/// event arriving after the slot was reused finds nothing.
#[derive(Debug)]
struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// The TURN server of one worker.
#[derive(Debug)]
pub struct Server {
    config: Arc<ServerConfig>,
    ledger: Arc<Ledger>,
    counters: Arc<Counters>,
    denials: Arc<PeerDenials>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_client: FastMap<FiveTuple, u32>,
    /// Unauthenticated request budgets; shared with the other workers in a relay process.
    limiter: Arc<RateTable>,
    commands: VecDeque<Command>,
    rng: StdRng,
    next_sweep: Instant,
    draining: bool,
    /// Where the round-robin over the alternate servers goes on.
    next_alternate: usize,
}

impl Server {
    /// A server with no allocations. `seed` makes its randomness (ports, tokens) repeatable.
    pub fn new(
        config: Arc<ServerConfig>,
        ledger: Arc<Ledger>,
        counters: Arc<Counters>,
        denials: Arc<PeerDenials>,
        seed: u64,
        now: Instant,
    ) -> Self {
        // A key of its own, so that the server's own random sequence stays what `seed` gives.
        let rate_key = StdRng::seed_from_u64(!seed).random();
        Self {
            limiter: Arc::new(RateTable::new(OWN_RATE_SLOTS, rate_key, now)),
            config,
            ledger,
            counters,
            denials,
            slots: Vec::new(),
            free: Vec::new(),
            by_client: FastMap::default(),
            commands: VecDeque::new(),
            rng: StdRng::seed_from_u64(seed),
            next_sweep: now + SWEEP_INTERVAL,
            draining: false,
            next_alternate: 0,
        }
    }

    /// Counts unauthenticated requests in `table` instead of a table of this server's own.
    ///
    /// The kernel spreads one source's packets over a relay's workers, so every worker's
    /// server is given the same table: a source then has one `rate-limit` budget however many
    /// workers there are. A server not given one (a test, the fuzzer) keeps its own.
    pub fn with_rate_table(mut self, table: Arc<RateTable>) -> Self {
        self.limiter = table;
        self
    }

    // ----- control -----

    /// Replaces users, secrets, peer filter, quotas, rate limit and timers; allocations are
    /// kept, and so is what each source has spent of its rate limit.
    pub fn set_config(&mut self, config: Arc<ServerConfig>, _now: Instant) {
        self.config = config;
    }

    /// While draining, new allocations are refused with 508; existing ones carry on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// How many allocations this worker holds (including ones still binding sockets).
    pub fn allocation_count(&self) -> usize {
        self.by_client.len()
    }

    /// Whether `client` holds an allocation (or is having one made): the runtime keeps such
    /// a stream connection open longer.
    pub fn has_allocation(&self, client: &FiveTuple) -> bool {
        self.by_client.contains_key(client)
    }

    // ----- outputs -----

    /// The next thing the runtime must do.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    // ----- inputs -----

    /// Handles a STUN message or ChannelData frame from a client.
    pub fn handle_client_packet(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        now: Instant,
    ) -> ClientOutcome {
        // RFC 8656 §12: the first two bits tell ChannelData (01) from STUN (00).
        match packet.first() {
            Some(b) if b & 0xC0 == 0x40 => self.channel_data(from, packet, now),
            Some(b) if b & 0xC0 == 0x00 => match Message::from_bytes(packet) {
                Ok(msg) => self.handle_message(from, &msg, now),
                Err(_) => self.malformed(),
            },
            _ => self.malformed(),
        }
    }

    /// Routes `len` bytes that `peer` sent to the relay socket `relay`, or `None` to drop them.
    pub fn handle_peer_packet(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        len: usize,
        now: Instant,
    ) -> Option<PeerRoute> {
        self.route_to_client(relay, peer, len, now)
    }

    /// The runtime's answer to [`Command::BindRelay`].
    pub fn relay_bound(&mut self, relay: RelayId, ok: bool, now: Instant) {
        self.bind_result(relay, ok, now);
    }

    /// The runtime's answer to [`Command::ConnectPeer`]: whether the peer connection is to be
    /// kept (false: close it; the allocation or the connection went meanwhile, or it failed).
    pub fn peer_connected(
        &mut self,
        relay: RelayId,
        connection: u32,
        ok: bool,
        now: Instant,
    ) -> bool {
        self.connect_result(relay, connection, ok, now)
    }

    /// A peer connected to the TCP relayed address of `relay`: its CONNECTION-ID, or `None`
    /// to close it (no permission, or no room).
    pub fn peer_connection(
        &mut self,
        relay: RelayId,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<u32> {
        self.incoming_connection(relay, peer, now)
    }

    /// A peer connection closed, on whichever worker carried it: its id is free again.
    pub fn connection_closed(&mut self, connection: u32) {
        self.ledger.connections().remove(connection);
    }

    /// A stream client's connection closed: its allocation goes with it (RFC 8656 §3.2).
    pub fn handle_disconnect(&mut self, from: FiveTuple) {
        if let Some(&slot) = self.by_client.get(&from) {
            self.destroy(slot);
        }
    }

    /// Expires allocations, permissions, channels and reservations.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        for slot in 0..self.slots.len() {
            let expired = match self.slots[slot].allocation.as_mut() {
                // A pending allocation's clock starts when its sockets are bound.
                Some(a) if a.pending.is_none() => {
                    if a.expires <= now {
                        true
                    } else {
                        a.permissions.expire(now);
                        a.channels.expire(now);
                        false
                    }
                }
                _ => false,
            };
            if expired {
                self.destroy(slot as u32);
            } else {
                self.expire_connections(slot as u32, now);
            }
        }
        self.ledger.expire_reservations(now);
    }

    // ----- dispatch -----

    fn malformed(&mut self) -> ClientOutcome {
        self.counters.malformed();
        ClientOutcome::Dropped
    }

    fn handle_message(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> ClientOutcome {
        match msg.class() {
            MessageClass::Request => {
                self.handle_request(from, msg, now);
                ClientOutcome::Handled
            }
            MessageClass::Indication if msg.has_method(SEND) => {
                self.send_indication(from, msg, now)
            }
            // A Binding indication is a keepalive (RFC 8489 §6.3.2): receiving it is all it asks.
            MessageClass::Indication if msg.has_method(BINDING) => ClientOutcome::Handled,
            // Responses and other indications mean nothing to a server; counted so that every
            // dropped packet shows up somewhere.
            _ => self.malformed(),
        }
    }

    fn handle_request(&mut self, from: FiveTuple, msg: &Message<'_>, now: Instant) {
        let method = msg.method();
        let label = method_label(method);
        if let Some(unknown) = unknown_required_attributes(msg) {
            if self.rate_ok(from, now) {
                self.unknown_attributes(from, msg, &unknown, label);
            }
            return;
        }
        match method {
            BINDING => self.binding(from, msg, now),
            ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND | CONNECT | CONNECTION_BIND => {
                let Some(authed) = self.authenticate(from, msg, label, now) else {
                    return;
                };
                match method {
                    ALLOCATE => self.allocate(from, msg, authed, now),
                    REFRESH => self.refresh(from, msg, authed, now),
                    CREATE_PERMISSION => self.create_permission(from, msg, authed, now),
                    CONNECT => self.connect(from, msg, authed, now),
                    CONNECTION_BIND => self.connection_bind(from, msg, authed, now),
                    _ => self.channel_bind(from, msg, authed, now),
                }
            }
            _ => {
                if self.rate_ok(from, now) {
                    self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
                }
            }
        }
    }

    /// Whether an unauthenticated answer may go to `from`: each one costs the source a token,
    /// so the relay cannot be used to reflect traffic at someone else.
    /// Whether `ip` may start a new (D)TLS handshake now: it spends one token of the source's
    /// `rate-limit` budget, as an unauthenticated request does (a refusal counts as one).
    pub fn allow_handshake(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ok = self.limiter.check(&self.config.rate_limit, ip, now);
        if !ok {
            self.counters.rate_limited();
        }
        ok
    }

    fn rate_ok(&mut self, from: FiveTuple, now: Instant) -> bool {
        let ok = self
            .limiter
            .check(&self.config.rate_limit, from.client.ip(), now);
        if !ok {
            self.counters.rate_limited();
        }
        ok
    }

    // ----- the allocation table -----

    fn insert(&mut self, allocation: Allocation) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].allocation = Some(allocation);
                slot
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    allocation: Some(allocation),
                });
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn destroy(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        let Some(a) = entry.allocation.take() else {
            return;
        };
        let generation = entry.generation;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(slot);
        self.by_client.remove(&a.five_tuple);
        for family in Family::ALL {
            if let Some(r) = a.relay(family) {
                self.ledger.release_port(r.local.ip(), r.local.port());
                self.commands.push_back(Command::CloseRelay {
                    relay: RelayId {
                        slot,
                        generation,
                        family,
                    },
                });
            }
        }
        for c in &a.connections {
            self.ledger.connections().remove(c.id);
            self.commands
                .push_back(Command::CloseConnection { connection: c.id });
        }
        self.ledger.release(&a.quota_key);
        // One that never finished binding was never counted as opened.
        if a.pending.is_none() {
            self.counters
                .allocation_closed(a.five_tuple.transport, a.primary_family());
        }
    }
}

fn method_label(method: Method) -> MethodLabel {
    match method {
        BINDING => MethodLabel::Binding,
        ALLOCATE => MethodLabel::Allocate,
        REFRESH => MethodLabel::Refresh,
        CREATE_PERMISSION => MethodLabel::CreatePermission,
        CHANNEL_BIND => MethodLabel::ChannelBind,
        CONNECT => MethodLabel::Connect,
        CONNECTION_BIND => MethodLabel::ConnectionBind,
        _ => MethodLabel::Other,
    }
}

/// Comprehension-required attributes we do not understand (answered 420).
fn unknown_required_attributes(msg: &Message<'_>) -> Option<Vec<AttributeType>> {
    const KNOWN: [u16; 26] = [
        0x0001, // MAPPED-ADDRESS
        0x0006, // USERNAME
        0x0008, // MESSAGE-INTEGRITY
        0x0009, // ERROR-CODE
        0x000A, // UNKNOWN-ATTRIBUTES
        0x000C, // CHANNEL-NUMBER
        0x000D, // LIFETIME
        0x0012, // XOR-PEER-ADDRESS
        0x0013, // DATA
        0x0014, // REALM
        0x0015, // NONCE
        0x0016, // XOR-RELAYED-ADDRESS
        0x0017, // REQUESTED-ADDRESS-FAMILY
        0x0018, // EVEN-PORT
        0x0019, // REQUESTED-TRANSPORT
        0x001A, // DONT-FRAGMENT
        0x001C, // MESSAGE-INTEGRITY-SHA256
        0x001D, // PASSWORD-ALGORITHM
        0x0020, // XOR-MAPPED-ADDRESS
        0x0022, // RESERVATION-TOKEN
        0x0024, // PRIORITY (ICE)
        0x0025, // USE-CANDIDATE (ICE)
        0x0003, // CHANGE-REQUEST (RFC 5780, server/nat_discovery.rs)
        0x0026, // PADDING (RFC 5780)
        0x0027, // RESPONSE-PORT (RFC 5780)
        0x002A, // CONNECTION-ID (RFC 6062, server/tcp_allocations.rs)
    ];
    let unknown: Vec<AttributeType> = msg
        .iter_attributes()
        .map(|(_, a)| a.get_type())
        .filter(|t| t.comprehension_required() && !KNOWN.contains(&t.value()))
        .collect();
    (!unknown.is_empty()).then_some(unknown)
}

// Keep the integrity attribute types referenced so the KNOWN table above stays in step.
const _: [AttributeType; 2] = [MessageIntegrity::TYPE, MessageIntegritySha256::TYPE];

#[cfg(test)]
mod tests;
