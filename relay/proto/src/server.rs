//! The TURN server state machine of one worker.
//!
//! [`Server`] methods, grouped as quinn groups them:
//! - inputs: [`Server::handle_client_packet`], [`Server::handle_peer_packet`],
//!   [`Server::relay_bound`], [`Server::handle_timeout`];
//! - outputs: [`Server::poll_command`] (drain after every input), [`Server::poll_timeout`];
//! - control: [`Server::with_rate_table`], [`Server::set_config`], [`Server::set_draining`].
//!
//! The two data-path inputs return a route instead of queueing a command, so relaying a packet
//! allocates nothing.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stun_types::attribute::{
    Attribute, AttributeStaticType, AttributeType, ErrorCode, MessageIntegrity,
    MessageIntegritySha256, Nonce, PasswordAlgorithm, PasswordAlgorithmValue, PasswordAlgorithms,
    Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_types::message::{
    Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec, Method, BINDING,
};
use stun_types::AddressFamily;
use turn_types::attribute::{
    AdditionalAddressFamily, AddressErrorCode, ChannelNumber, Data, DontFragment, EvenPort,
    Lifetime, RequestedAddressFamily, RequestedTransport, ReservationToken, XorPeerAddress,
    XorRelayedAddress,
};
use turn_types::message::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};

use crate::allocation::{Allocation, Bandwidth, PendingAllocate, Relay};
use crate::config::ServerConfig;
use crate::integrity::{self, HmacAlgorithm, KeyAlgorithm, LongTermKey};
use crate::ledger::Ledger;
use crate::metrics::{
    AuthFailure, Counters, Direction, DropReason, MethodLabel, PeerDenials, QuotaKind,
};
use crate::nonce;
use crate::peer_filter::DenyReason;
use crate::rate_limit::RateTable;
use crate::transport::{Family, FiveTuple};

/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT RFC 8656 relays.
const UDP_PROTOCOL: u8 = 17;
/// How often expiry is checked. TURN timers are minutes long; a second is precise enough.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Buckets of the rate table a server makes for itself when not given a shared one.
const OWN_RATE_SLOTS: usize = 4_096;
/// Ports tried for one relay socket before giving up with 508.
const MAX_BIND_ATTEMPTS: u8 = 8;

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
    /// Bind a UDP socket for a relay and report with [`Server::relay_bound`].
    BindRelay {
        /// The relay it serves.
        relay: RelayId,
        /// The local address to bind.
        addr: SocketAddr,
        /// Whether to set the DF bit on what it sends (DONT-FRAGMENT).
        dont_fragment: bool,
    },
    /// Close a relay socket.
    CloseRelay {
        /// The relay it served.
        relay: RelayId,
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

#[derive(Debug)]
struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// A successfully authenticated request.
struct Authed {
    username: String,
    key: LongTermKey,
    hmac: HmacAlgorithm,
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

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

    // ----- inputs: data path -----

    /// Handles a STUN message or ChannelData frame from a client.
    pub fn handle_client_packet(
        &mut self,
        from: FiveTuple,
        packet: &[u8],
        now: Instant,
    ) -> ClientOutcome {
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
        let max_bps = self.config.max_bps;
        let slot = self.slots.get_mut(relay.slot as usize)?;
        if slot.generation != relay.generation {
            return None;
        }
        let a = slot.allocation.as_mut()?;
        if !a.permissions.allows(peer.ip(), now) {
            self.counters.dropped(DropReason::NoPermission);
            return None;
        }
        if !a.bandwidth[1].take(len, max_bps, now) {
            self.counters.dropped(DropReason::Bandwidth);
            return None;
        }
        self.counters.relayed(Direction::PeerToClient, len);
        Some(PeerRoute {
            client: a.five_tuple,
            channel: a.channels.number(peer, now),
        })
    }

    fn channel_data(&mut self, from: FiveTuple, packet: &[u8], now: Instant) -> ClientOutcome {
        if packet.len() < 4 {
            return self.malformed();
        }
        let number = u16::from_be_bytes([packet[0], packet[1]]);
        let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
        if 4 + len > packet.len() {
            return self.malformed();
        }
        let Some(&slot) = self.by_client.get(&from) else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        let max_bps = self.config.max_bps;
        let generation = self.slots[slot as usize].generation;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        let Some(peer) = a.channels.peer(number, now) else {
            self.counters.dropped(DropReason::UnboundChannel);
            return ClientOutcome::Dropped;
        };
        self.route_to_peer(slot, generation, peer, 4..4 + len, max_bps, now)
    }

    fn route_to_peer(
        &mut self,
        slot: u32,
        generation: u32,
        peer: SocketAddr,
        payload: Range<usize>,
        max_bps: u64,
        now: Instant,
    ) -> ClientOutcome {
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        };
        let family = Family::of(peer.ip());
        if !a.permissions.allows(peer.ip(), now) || !a.relay(family).is_some_and(|r| r.bound) {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        }
        if !a.bandwidth[0].take(payload.len(), max_bps, now) {
            self.counters.dropped(DropReason::Bandwidth);
            return ClientOutcome::Dropped;
        }
        self.counters
            .relayed(Direction::ClientToPeer, payload.len());
        ClientOutcome::Relay {
            relay: RelayId {
                slot,
                generation,
                family,
            },
            peer,
            payload,
        }
    }

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

    fn send_indication(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> ClientOutcome {
        let Some(&slot) = self.by_client.get(&from) else {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        };
        let Ok(peer) = msg.attribute::<XorPeerAddress>() else {
            return self.malformed();
        };
        let peer = peer.addr(msg.transaction_id());
        // A permission names an address, not a port: one made for another port of the relay's
        // own address must not carry a Send to its listener.
        if self.config.peer_filter.is_self(peer) {
            self.counters.dropped(DropReason::NoPermission);
            return ClientOutcome::Dropped;
        }
        let Some((offset, data)) = msg.raw_attribute_and_offset(Data::TYPE) else {
            return self.malformed();
        };
        let start = offset + 4;
        let payload = start..start + data.value.len();
        let generation = self.slots[slot as usize].generation;
        let max_bps = self.config.max_bps;
        self.route_to_peer(slot, generation, peer, payload, max_bps, now)
    }

    // ----- inputs: control path -----

    fn handle_request(&mut self, from: FiveTuple, msg: &Message<'_>, now: Instant) {
        let method = msg.method();
        let label = method_label(method);
        if let Some(unknown) = unknown_required_attributes(msg) {
            if !self.rate_ok(from, now) {
                return;
            }
            let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(64));
            push_error(&mut out, ErrorCode::UNKNOWN_ATTRIBUTE);
            let _ = out.add_attribute(&UnknownAttributes::new(&unknown));
            self.send(from, out, None, label, ErrorCode::UNKNOWN_ATTRIBUTE);
            return;
        }
        match method {
            BINDING => self.binding(from, msg, now),
            ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND => {
                let Some(authed) = self.authenticate(from, msg, label, now) else {
                    return;
                };
                match method {
                    ALLOCATE => self.allocate(from, msg, authed, now),
                    REFRESH => self.refresh(from, msg, authed, now),
                    CREATE_PERMISSION => self.create_permission(from, msg, authed, now),
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

    fn rate_ok(&mut self, from: FiveTuple, now: Instant) -> bool {
        let ok = self
            .limiter
            .check(&self.config.rate_limit, from.client.ip(), now);
        if !ok {
            self.counters.rate_limited();
        }
        ok
    }

    fn binding(&mut self, from: FiveTuple, msg: &Message<'_>, now: Instant) {
        if !self.rate_ok(from, now) {
            return;
        }
        let mut out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        let _ = out.add_attribute(&XorMappedAddress::new(from.client, msg.transaction_id()));
        self.send(from, out, None, MethodLabel::Binding, 0);
    }

    /// Long-term credential authentication (RFC 8489 §9.2.4). Answers and returns `None` when
    /// the request does not pass.
    fn authenticate(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        label: MethodLabel,
        now: Instant,
    ) -> Option<Authed> {
        if integrity::find(msg).is_none() {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::MissingIntegrity);
                self.challenge(from, msg, ErrorCode::UNAUTHORIZED, label, now);
            }
            return None;
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            msg.attribute::<Username>(),
            msg.attribute::<Realm>(),
            msg.attribute::<Nonce>(),
        ) else {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::Malformed);
                self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
            }
            return None;
        };
        let unix = self.ledger.unix_time(now);
        if self
            .ledger
            .nonce_key()
            .check(nonce.nonce(), from.client.ip(), unix)
            .is_err()
        {
            if self.rate_ok(from, now) {
                self.counters.auth_failure(AuthFailure::StaleNonce);
                self.challenge(from, msg, ErrorCode::STALE_NONCE, label, now);
            }
            return None;
        }
        let key_algorithm = match password_algorithm(msg, nonce.nonce()) {
            Ok(a) => a,
            Err(()) => {
                if self.rate_ok(from, now) {
                    self.counters.auth_failure(AuthFailure::Malformed);
                    self.error(from, msg, ErrorCode::BAD_REQUEST, None, label);
                }
                return None;
            }
        };
        let failure = if realm.realm() != self.config.realm {
            AuthFailure::UnknownUser
        } else {
            match self.config.credentials.candidate_keys(
                username.username(),
                &self.config.realm,
                key_algorithm,
                unix,
            ) {
                Ok(keys) => {
                    for key in keys {
                        if let Ok(hmac) = integrity::verify(msg, &key) {
                            return Some(Authed {
                                username: username.username().to_owned(),
                                key,
                                hmac,
                            });
                        }
                    }
                    AuthFailure::BadIntegrity
                }
                Err(failure) => failure,
            }
        };
        if self.rate_ok(from, now) {
            self.counters.auth_failure(failure);
            self.challenge(from, msg, ErrorCode::UNAUTHORIZED, label, now);
        }
        None
    }

    /// A 401 or 438 with a fresh nonce, the realm and the password algorithms on offer.
    fn challenge(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        code: u16,
        label: MethodLabel,
        now: Instant,
    ) {
        let expiry = self.ledger.unix_time(now) + self.config.timers.nonce_lifetime.as_secs();
        let nonce = self.ledger.nonce_key().issue(from.client.ip(), expiry);
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(128));
        push_error(&mut out, code);
        if let Ok(realm) = Realm::new(&self.config.realm) {
            let _ = out.add_attribute(&realm);
        }
        if let Ok(nonce) = Nonce::new(&nonce) {
            let _ = out.add_attribute(&nonce);
        }
        let _ = out.add_attribute(&offered_algorithms());
        self.send(from, out, None, label, code);
    }

    fn allocate(&mut self, from: FiveTuple, msg: &Message<'_>, authed: Authed, now: Instant) {
        let label = MethodLabel::Allocate;
        if let Some(&slot) = self.by_client.get(&from) {
            let a = self.slots[slot as usize]
                .allocation
                .as_ref()
                .expect("by_client only names occupied slots");
            if a.allocate_transaction == msg.transaction_id() {
                // A retransmission: resend the answer, or stay quiet while it is being made.
                if let Some(response) = a.allocate_response.clone() {
                    self.commands.push_back(Command::SendToClient {
                        to: from,
                        data: response,
                    });
                }
                return;
            }
            return self.error(
                from,
                msg,
                ErrorCode::ALLOCATION_MISMATCH,
                Some(&authed),
                label,
            );
        }
        if self.draining {
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        match msg.attribute::<RequestedTransport>() {
            Ok(t) if t.protocol() == UDP_PROTOCOL => {}
            Ok(_) => {
                return self.error(
                    from,
                    msg,
                    ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL,
                    Some(&authed),
                    label,
                )
            }
            Err(_) => return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label),
        }
        let dont_fragment = msg.has_attribute(DontFragment::TYPE);
        let even_port = msg.attribute::<EvenPort>().ok();
        let token = msg.attribute::<ReservationToken>().ok().map(|t| t.token());
        let requested = msg
            .attribute::<RequestedAddressFamily>()
            .ok()
            .map(|f| f.family());
        let (additional, malformed_additional) = additional_family(msg);
        let malformed_family = msg.has_attribute(RequestedAddressFamily::TYPE)
            && requested.is_none()
            || malformed_additional;
        // RFC 8656 §7.2: these combinations are contradictory.
        if malformed_family
            || token.is_some()
                && (even_port.is_some() || requested.is_some() || additional.is_some())
            || requested.is_some() && additional.is_some()
            || additional.is_some_and(|f| f != AddressFamily::IPV6)
        {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        let primary = match requested {
            Some(AddressFamily::IPV6) => Family::V6,
            _ => Family::V4,
        };
        if token.is_none() && !self.has_relay_family(primary) {
            return self.error(
                from,
                msg,
                ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                Some(&authed),
                label,
            );
        }
        let want_v6_too = additional.is_some();
        let additional_family_refused = want_v6_too && !self.has_relay_family(Family::V6);

        let config = Arc::clone(&self.config);
        let quota_key = config.credentials.quota_key(&authed.username).to_owned();
        if let Err(kind) = self
            .ledger
            .admit(&quota_key, config.user_quota, config.total_quota)
        {
            self.counters.quota(kind);
            let code = match kind {
                QuotaKind::User => ErrorCode::ALLOCATION_QUOTA_REACHED,
                _ => ErrorCode::INSUFFICIENT_CAPACITY,
            };
            return self.error(from, msg, code, Some(&authed), label);
        }

        let mut relays: [Option<Relay>; 2] = [None, None];
        let mut reservation = None;
        let mut ok = true;
        if let Some(token) = token {
            match self.ledger.take_reserved(token, now) {
                Some((ip, port)) => {
                    let family = Family::of(ip);
                    relays[family.index()] = Some(self.relay_for(ip, port));
                }
                None => ok = false,
            }
        } else {
            let (even, reserve) = match even_port {
                Some(e) => (true, e.requested()),
                None => (false, false),
            };
            match self.take_port(primary, even, reserve, now) {
                Some((relay, token)) => {
                    relays[primary.index()] = Some(relay);
                    reservation = token;
                }
                None => ok = false,
            }
            if ok && want_v6_too && !additional_family_refused {
                match self.take_port(Family::V6, false, false, now) {
                    Some((relay, _)) => relays[Family::V6.index()] = Some(relay),
                    None => ok = false,
                }
            }
        }
        if !ok {
            for r in relays.iter().flatten() {
                self.ledger.release_port(r.local.ip(), r.local.port());
            }
            self.ledger.release(&quota_key);
            let code = if token.is_some() {
                ErrorCode::INSUFFICIENT_CAPACITY
            } else {
                self.counters.quota(QuotaKind::Ports);
                ErrorCode::INSUFFICIENT_CAPACITY
            };
            return self.error(from, msg, code, Some(&authed), label);
        }

        let requested_lifetime = msg
            .attribute::<Lifetime>()
            .map(|l| Duration::from_secs(l.seconds() as u64))
            .unwrap_or(config.timers.default_lifetime);
        let lifetime = requested_lifetime
            .min(config.timers.max_lifetime)
            .max(config.timers.default_lifetime);

        let allocation = Allocation {
            five_tuple: from,
            username: authed.username,
            quota_key,
            relays,
            expires: now + lifetime,
            permissions: Default::default(),
            channels: Default::default(),
            allocate_transaction: msg.transaction_id(),
            allocate_response: None,
            pending: Some(PendingAllocate {
                transaction: msg.transaction_id(),
                key: authed.key,
                hmac: authed.hmac,
                reservation,
                additional_family_refused,
                dont_fragment,
                lifetime,
            }),
            bandwidth: [
                Bandwidth::new(now, config.max_bps),
                Bandwidth::new(now, config.max_bps),
            ],
        };
        let slot = self.insert(allocation);
        self.by_client.insert(from, slot);
        let generation = self.slots[slot as usize].generation;
        for family in Family::ALL {
            if let Some(r) = self.slots[slot as usize]
                .allocation
                .as_ref()
                .and_then(|a| a.relay(family))
            {
                self.commands.push_back(Command::BindRelay {
                    relay: RelayId {
                        slot,
                        generation,
                        family,
                    },
                    addr: r.local,
                    dont_fragment,
                });
            }
        }
    }

    fn has_relay_family(&self, family: Family) -> bool {
        self.config
            .relay_addresses
            .iter()
            .any(|r| Family::of(r.local) == family)
    }

    fn relay_for(&self, local_ip: std::net::IpAddr, port: u16) -> Relay {
        let advertised = self
            .config
            .relay_addresses
            .iter()
            .find(|r| r.local == local_ip)
            .map(|r| r.advertised)
            .unwrap_or(local_ip);
        Relay {
            local: SocketAddr::new(local_ip, port),
            advertised: SocketAddr::new(advertised, port),
            bound: false,
            attempts: 0,
        }
    }

    /// Takes a port on one of the relay addresses of `family`, starting at a random one so
    /// several relay IPs fill evenly.
    fn take_port(
        &mut self,
        family: Family,
        even: bool,
        reserve: bool,
        now: Instant,
    ) -> Option<(Relay, Option<u64>)> {
        let ips: Vec<_> = self
            .config
            .relay_addresses
            .iter()
            .filter(|r| Family::of(r.local) == family)
            .map(|r| r.local)
            .collect();
        if ips.is_empty() {
            return None;
        }
        let start = self.rng.random_range(0..ips.len());
        let lifetime = self.config.timers.reservation_lifetime;
        for i in 0..ips.len() {
            let ip = ips[(start + i) % ips.len()];
            let random = self.rng.random::<u64>();
            if let Some(taken) = self
                .ledger
                .take_port(ip, even, reserve, random, now, lifetime)
            {
                return Some((self.relay_for(ip, taken.port), taken.reservation));
            }
        }
        None
    }

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

    /// The runtime's answer to [`Command::BindRelay`].
    pub fn relay_bound(&mut self, relay: RelayId, ok: bool, now: Instant) {
        let Some(slot) = self.slots.get_mut(relay.slot as usize) else {
            return;
        };
        if slot.generation != relay.generation {
            return;
        }
        let Some(a) = slot.allocation.as_mut() else {
            return;
        };
        let Some(r) = a.relays[relay.family.index()].as_mut() else {
            return;
        };
        if ok {
            r.bound = true;
            if a.all_bound() && a.pending.is_some() {
                self.finish_allocate(relay.slot, now);
            }
            return;
        }
        // The port is taken by another process; try another before giving up.
        self.ledger.release_port(r.local.ip(), r.local.port());
        r.attempts += 1;
        let attempts = r.attempts;
        let dont_fragment = a.pending.as_ref().is_some_and(|p| p.dont_fragment);
        if attempts < MAX_BIND_ATTEMPTS {
            if let Some((mut fresh, _)) = self.take_port(relay.family, false, false, now) {
                fresh.attempts = attempts;
                let addr = fresh.local;
                if let Some(a) = self.slots[relay.slot as usize].allocation.as_mut() {
                    a.relays[relay.family.index()] = Some(fresh);
                }
                self.commands.push_back(Command::BindRelay {
                    relay,
                    addr,
                    dont_fragment,
                });
                return;
            }
        }
        // Mark the failed relay as gone so destroy does not release its port twice.
        if let Some(a) = self.slots[relay.slot as usize].allocation.as_mut() {
            a.relays[relay.family.index()] = None;
        }
        self.counters.quota(QuotaKind::Ports);
        self.fail_pending(relay.slot, ErrorCode::INSUFFICIENT_CAPACITY);
    }

    fn fail_pending(&mut self, slot: u32, code: u16) {
        let Some(a) = self.slots[slot as usize].allocation.as_ref() else {
            return;
        };
        let Some(p) = a.pending.clone() else {
            return;
        };
        let to = a.five_tuple;
        let mut out = MessageWriteVec::with_capacity(64);
        write_header(&mut out, MessageClass::Error, ALLOCATE, p.transaction);
        push_error(&mut out, code);
        self.send(to, out, Some((&p.key, p.hmac)), MethodLabel::Allocate, code);
        self.destroy(slot);
    }

    fn finish_allocate(&mut self, slot: u32, now: Instant) {
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        let Some(p) = a.pending.take() else {
            return;
        };
        a.expires = now + p.lifetime;
        let tid = p.transaction;
        let mut out = MessageWriteVec::with_capacity(160);
        write_header(&mut out, MessageClass::Success, ALLOCATE, tid);
        for r in a.relays.iter().flatten() {
            let _ = out.add_attribute(&XorRelayedAddress::new(r.advertised, tid));
        }
        let _ = out.add_attribute(&Lifetime::new(p.lifetime.as_secs() as u32));
        if let Some(token) = p.reservation {
            let _ = out.add_attribute(&ReservationToken::new(token));
        }
        if p.additional_family_refused {
            if let Ok(code) = ErrorCode::builder(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED).build() {
                let _ = out.add_attribute(&AddressErrorCode::new(AddressFamily::IPV6, code));
            }
        }
        let _ = out.add_attribute(&XorMappedAddress::new(a.five_tuple.client, tid));
        if let Some(software) = self
            .config
            .software
            .as_deref()
            .and_then(|s| Software::new(s).ok())
        {
            let _ = out.add_attribute(&software);
        }
        integrity::sign(&mut out, &p.key, p.hmac);
        let _ = out.add_fingerprint();
        let data = out.finish();
        a.allocate_response = Some(data.clone());
        let to = a.five_tuple;
        let family = a.primary_family();
        self.counters.allocation_opened(to.transport, family);
        self.counters.request(MethodLabel::Allocate, 0);
        self.commands.push_back(Command::SendToClient { to, data });
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
        self.ledger.release(&a.quota_key);
        if a.pending.is_none() {
            self.counters
                .allocation_closed(a.five_tuple.transport, a.primary_family());
        }
    }

    /// The allocation of `from`, checked against the requester (437, 441).
    fn owned_allocation(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: &Authed,
        label: MethodLabel,
    ) -> Option<u32> {
        // An allocation whose sockets are still binding is one the client cannot know yet.
        let found = self.by_client.get(&from).and_then(|&slot| {
            let a = self.slots[slot as usize].allocation.as_ref()?;
            a.pending.is_none().then_some((slot, a))
        });
        let Some((slot, a)) = found else {
            self.error(
                from,
                msg,
                ErrorCode::ALLOCATION_MISMATCH,
                Some(authed),
                label,
            );
            return None;
        };
        if a.username != authed.username {
            self.counters.auth_failure(AuthFailure::WrongCredentials);
            self.error(from, msg, ErrorCode::WRONG_CREDENTIALS, Some(authed), label);
            return None;
        }
        Some(slot)
    }

    fn refresh(&mut self, from: FiveTuple, msg: &Message<'_>, authed: Authed, now: Instant) {
        let label = MethodLabel::Refresh;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        if let Ok(requested) = msg.attribute::<RequestedAddressFamily>() {
            let family = match requested.family() {
                AddressFamily::IPV4 => Family::V4,
                AddressFamily::IPV6 => Family::V6,
            };
            let has = self.slots[slot as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.relay(family).is_some());
            if !has {
                return self.error(
                    from,
                    msg,
                    ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                    Some(&authed),
                    label,
                );
            }
        }
        let timers = self.config.timers;
        let requested = msg
            .attribute::<Lifetime>()
            .map(|l| Duration::from_secs(l.seconds() as u64))
            .unwrap_or(timers.default_lifetime);
        let lifetime = if requested.is_zero() {
            self.destroy(slot);
            Duration::ZERO
        } else {
            // RFC 8656 §7.3: as for Allocate, never less than the default lifetime.
            let lifetime = requested
                .min(timers.max_lifetime)
                .max(timers.default_lifetime);
            if let Some(a) = self.slots[slot as usize].allocation.as_mut() {
                a.expires = now + lifetime;
            }
            lifetime
        };
        let mut out = Message::builder_success(msg, MessageWriteVec::with_capacity(96));
        let _ = out.add_attribute(&Lifetime::new(lifetime.as_secs() as u32));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
    }

    /// Checks peers against the allocation's families (443) and the peer filter (403).
    fn check_peers(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        slot: u32,
        peers: &[SocketAddr],
        authed: &Authed,
        label: MethodLabel,
    ) -> bool {
        for peer in peers {
            let family = Family::of(peer.ip());
            let has_family = self.slots[slot as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.relay(family).is_some());
            if !has_family {
                self.error(
                    from,
                    msg,
                    ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH,
                    Some(authed),
                    label,
                );
                return false;
            }
            if let Err(reason) = self.config.peer_filter.check_peer(*peer) {
                self.denials.inc(reason.as_str());
                if reason == DenyReason::SelfAddress {
                    tracing::info!(
                        %peer,
                        user = %authed.username,
                        "peer is one of the relay's own listening addresses (403)"
                    );
                } else {
                    tracing::info!(
                        %peer,
                        reason = reason.as_str(),
                        user = %authed.username,
                        "peer address denied by the peer filter (403); allow it with allowed-peer-ip if intended"
                    );
                }
                self.error(from, msg, ErrorCode::FORBIDDEN, Some(authed), label);
                return false;
            }
        }
        true
    }

    fn create_permission(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::CreatePermission;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        let mut peers = Vec::new();
        for (_, raw) in msg.iter_attributes() {
            if raw.get_type() == XorPeerAddress::TYPE {
                match XorPeerAddress::try_from(&raw) {
                    Ok(p) => peers.push(p.addr(msg.transaction_id())),
                    Err(_) => {
                        return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label)
                    }
                }
            }
        }
        if peers.is_empty() {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        if !self.check_peers(from, msg, slot, &peers, &authed, label) {
            return;
        }
        let ips: Vec<_> = peers.iter().map(|p| p.ip()).collect();
        let max = self.config.max_permissions;
        let expires = now + self.config.timers.permission_lifetime;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if !a.permissions.has_room_for(&ips, max) {
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        for ip in ips {
            let _ = a.permissions.install(ip, expires, max);
        }
        let out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
    }

    fn channel_bind(&mut self, from: FiveTuple, msg: &Message<'_>, authed: Authed, now: Instant) {
        let label = MethodLabel::ChannelBind;
        let Some(slot) = self.owned_allocation(from, msg, &authed, label) else {
            return;
        };
        let (Ok(number), Ok(peer)) = (
            msg.attribute::<ChannelNumber>(),
            msg.attribute::<XorPeerAddress>(),
        ) else {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        };
        let peer = peer.addr(msg.transaction_id());
        if !self.check_peers(from, msg, slot, &[peer], &authed, label) {
            return;
        }
        let timers = self.config.timers;
        let max = self.config.max_permissions;
        let Some(a) = self.slots[slot as usize].allocation.as_mut() else {
            return;
        };
        if !a.permissions.has_room_for(&[peer.ip()], max) {
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        if a.channels
            .bind(number.channel(), peer, now + timers.channel_lifetime)
            .is_err()
        {
            return self.error(from, msg, ErrorCode::BAD_REQUEST, Some(&authed), label);
        }
        let _ = a
            .permissions
            .install(peer.ip(), now + timers.permission_lifetime, max);
        let out = Message::builder_success(msg, MessageWriteVec::with_capacity(64));
        self.send(from, out, Some((&authed.key, authed.hmac)), label, 0);
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
            }
        }
        self.ledger.expire_reservations(now);
    }

    // ----- responses -----

    fn error(
        &mut self,
        to: FiveTuple,
        msg: &Message<'_>,
        code: u16,
        authed: Option<&Authed>,
        label: MethodLabel,
    ) {
        let mut out = Message::builder_error(msg, MessageWriteVec::with_capacity(96));
        push_error(&mut out, code);
        self.send(to, out, authed.map(|a| (&a.key, a.hmac)), label, code);
    }

    /// Signs (when the request was authenticated), adds FINGERPRINT, counts and queues.
    fn send(
        &mut self,
        to: FiveTuple,
        mut out: MessageWriteVec,
        signer: Option<(&LongTermKey, HmacAlgorithm)>,
        label: MethodLabel,
        code: u16,
    ) {
        match signer {
            Some((key, hmac)) => {
                // Authenticated answers may name our software; unauthenticated ones stay minimal
                // so the relay is no amplifier (SOFTWARE still goes on Binding, RFC 8489 asks for it).
                if let Some(s) = self
                    .config
                    .software
                    .as_deref()
                    .and_then(|s| Software::new(s).ok())
                {
                    let _ = out.add_attribute(&s);
                }
                integrity::sign(&mut out, key, hmac);
            }
            None if label == MethodLabel::Binding && code == 0 => {
                if let Some(s) = self
                    .config
                    .software
                    .as_deref()
                    .and_then(|s| Software::new(s).ok())
                {
                    let _ = out.add_attribute(&s);
                }
            }
            None => {}
        }
        let _ = out.add_fingerprint();
        self.counters.request(label, code);
        self.commands.push_back(Command::SendToClient {
            to,
            data: out.finish(),
        });
    }
}

fn write_header(
    out: &mut MessageWriteVec,
    class: MessageClass,
    method: Method,
    tid: stun_types::message::TransactionId,
) {
    let mtype = stun_types::message::MessageType::from_class_method(class, method);
    *out = Message::builder(mtype, tid, std::mem::take(out));
}

fn push_error(out: &mut MessageWriteVec, code: u16) {
    if let Ok(attr) = ErrorCode::builder(code).build() {
        let _ = out.add_attribute(&attr);
    }
}

fn offered_algorithms() -> PasswordAlgorithms {
    PasswordAlgorithms::new(&[PasswordAlgorithmValue::MD5, PasswordAlgorithmValue::SHA256])
}

/// The key derivation a request asks for (RFC 8489 §9.2.4): MD5 unless it echoes our
/// PASSWORD-ALGORITHMS and picks one with PASSWORD-ALGORITHM. Anything inconsistent is 400.
fn password_algorithm(msg: &Message<'_>, nonce: &str) -> Result<KeyAlgorithm, ()> {
    let algorithms = msg.attribute::<PasswordAlgorithms>().ok();
    let algorithm = msg.attribute::<PasswordAlgorithm>().ok();
    let has_algorithms = msg.has_attribute(PasswordAlgorithms::TYPE);
    let has_algorithm = msg.has_attribute(PasswordAlgorithm::TYPE);
    if !has_algorithms && !has_algorithm {
        return Ok(KeyAlgorithm::Md5);
    }
    if !nonce::has_password_algorithms_feature(nonce) || has_algorithms != has_algorithm {
        return Err(());
    }
    let (Some(algorithms), Some(algorithm)) = (algorithms, algorithm) else {
        return Err(());
    };
    if algorithms.algorithms() != offered_algorithms().algorithms() {
        return Err(());
    }
    match algorithm.algorithm() {
        PasswordAlgorithmValue::MD5 => Ok(KeyAlgorithm::Md5),
        PasswordAlgorithmValue::SHA256 => Ok(KeyAlgorithm::Sha256),
    }
}

/// coturn (and its `turnutils_uclient -Z`) sends ADDITIONAL-ADDRESS-FAMILY under the type the
/// TURN drafts used before IANA assigned 0x8000.
const LEGACY_ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType::new(0x8032);

/// ADDITIONAL-ADDRESS-FAMILY under its RFC 8656 type or coturn's draft type, and whether what
/// was there could not be parsed.
fn additional_family(msg: &Message<'_>) -> (Option<AddressFamily>, bool) {
    if msg.has_attribute(AdditionalAddressFamily::TYPE) {
        let family = msg
            .attribute::<AdditionalAddressFamily>()
            .ok()
            .map(|f| f.family());
        return (family, family.is_none());
    }
    match msg.raw_attribute(LEGACY_ADDITIONAL_ADDRESS_FAMILY) {
        None => (None, false),
        Some(raw) => match raw.value.first() {
            Some(0x01) => (Some(AddressFamily::IPV4), false),
            Some(0x02) => (Some(AddressFamily::IPV6), false),
            _ => (None, true),
        },
    }
}

fn method_label(method: Method) -> MethodLabel {
    match method {
        BINDING => MethodLabel::Binding,
        ALLOCATE => MethodLabel::Allocate,
        REFRESH => MethodLabel::Refresh,
        CREATE_PERMISSION => MethodLabel::CreatePermission,
        CHANNEL_BIND => MethodLabel::ChannelBind,
        _ => MethodLabel::Other,
    }
}

/// Comprehension-required attributes we do not understand (answered 420).
fn unknown_required_attributes(msg: &Message<'_>) -> Option<Vec<AttributeType>> {
    const KNOWN: [u16; 25] = [
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
        0x0003, // CHANGE-REQUEST (RFC 5780; answered as a plain Binding)
        0x0026, // PADDING (RFC 5780)
        0x0027, // RESPONSE-PORT (RFC 5780)
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
