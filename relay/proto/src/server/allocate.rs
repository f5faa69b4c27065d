//! Allocate (RFC 8656 §7): the request is parsed into an [`AllocateRequest`] whose attributes
//! agree with each other, and only then carried out, so that nothing is reserved for a request
//! that was going to be refused anyway.
//!
//! Carrying it out takes a quota and ports from the ledger and asks the runtime to bind the
//! relay sockets; the response is sent once they are bound ([`Server::relay_bound`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use icegate_common::token_bucket::TokenBucket;
use rand::Rng;
use stun_types::attribute::{AttributeStaticType, AttributeType, ErrorCode, XorMappedAddress};
use stun_types::message::{Message, MessageClass, MessageWrite, MessageWriteExt, MessageWriteVec};
use stun_types::AddressFamily;
use turn_types::attribute::{
    AdditionalAddressFamily, AddressErrorCode, DontFragment, EvenPort, Lifetime,
    RequestedAddressFamily, RequestedTransport, ReservationToken, XorRelayedAddress,
};
use turn_types::message::ALLOCATE;

use super::authenticate::Authed;
use super::redirect::Reason;
use super::replies::{add_software, push_error, write_header};
use super::{Command, RelayId, Server};
use crate::allocation::{Allocation, PendingAllocate, Relay};
use crate::integrity;
use crate::metrics::{MethodLabel, QuotaKind};
use crate::transport::{Family, FiveTuple, Transport};

/// IANA protocol number of UDP, the REQUESTED-TRANSPORT of RFC 8656.
const UDP_PROTOCOL: u8 = 17;
/// IANA protocol number of TCP, the REQUESTED-TRANSPORT of RFC 6062.
const TCP_PROTOCOL: u8 = 6;
/// Ports tried for one relay socket before giving up with 508.
pub(super) const MAX_BIND_ATTEMPTS: u8 = 8;
/// coturn (and its `turnutils_uclient -Z`) sends ADDITIONAL-ADDRESS-FAMILY under the type the
/// TURN drafts used before IANA assigned 0x8000.
const LEGACY_ADDITIONAL_ADDRESS_FAMILY: AttributeType = AttributeType::new(0x8032);

/// An Allocate request whose attributes are consistent (RFC 8656 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AllocateRequest {
    /// Where the relayed addresses come from.
    ports: Ports,
    /// DONT-FRAGMENT: the relay sockets set DF on what they send.
    dont_fragment: bool,
    /// LIFETIME as asked; clamped to the configured bounds when carried out.
    lifetime: Option<Duration>,
    /// REQUESTED-TRANSPORT TCP (RFC 6062): the relayed address is a TCP listener.
    tcp: bool,
}

/// Where an allocation's relayed addresses come from. A RESERVATION-TOKEN excludes every
/// attribute that chooses a port or family, so the two cases share no fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ports {
    /// The port an earlier EVEN-PORT request reserved, in that port's family.
    Reserved { token: u64 },
    /// Fresh ports.
    Fresh {
        /// REQUESTED-ADDRESS-FAMILY, IPv4 when absent.
        primary: Family,
        /// EVEN-PORT: the primary port is even.
        even: bool,
        /// EVEN-PORT's R bit: the next port up is reserved for a later Allocate.
        reserve_next: bool,
        /// ADDITIONAL-ADDRESS-FAMILY (only IPv6 may be asked for): an IPv6 relay as well.
        also_ipv6: bool,
    },
}

impl AllocateRequest {
    /// The request's attributes, or the error code to answer with (442 for a transport other
    /// than UDP and TCP, or TCP while `no-tcp-relay`; 400 for anything missing, malformed or
    /// contradictory, and for TCP asked over UDP).
    fn parse(msg: &Message<'_>, over: Transport, tcp_relay: bool) -> Result<Self, u16> {
        let tcp = match msg.attribute::<RequestedTransport>() {
            Ok(t) if t.protocol() == UDP_PROTOCOL => false,
            Ok(t) if t.protocol() == TCP_PROTOCOL && tcp_relay => {
                // RFC 6062 §5.1: a TCP allocation is only made over a TCP or TLS connection.
                if !over.is_stream() {
                    return Err(ErrorCode::BAD_REQUEST);
                }
                true
            }
            Ok(_) => return Err(ErrorCode::UNSUPPORTED_TRANSPORT_PROTOCOL),
            Err(_) => return Err(ErrorCode::BAD_REQUEST),
        };
        let dont_fragment = msg.has_attribute(DontFragment::TYPE);
        // RFC 6062 §5.1: none of these means anything for a TCP relayed address. A dual-stack
        // TCP allocation is not defined either.
        if tcp
            && (dont_fragment
                || msg.has_attribute(EvenPort::TYPE)
                || msg.has_attribute(ReservationToken::TYPE)
                || msg.has_attribute(AdditionalAddressFamily::TYPE)
                || msg
                    .raw_attribute(LEGACY_ADDITIONAL_ADDRESS_FAMILY)
                    .is_some())
        {
            return Err(ErrorCode::BAD_REQUEST);
        }
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
            return Err(ErrorCode::BAD_REQUEST);
        }
        let ports = match token {
            Some(token) => Ports::Reserved { token },
            None => {
                let (even, reserve_next) = match even_port {
                    Some(e) => (true, e.requested()),
                    None => (false, false),
                };
                Ports::Fresh {
                    primary: match requested {
                        Some(AddressFamily::IPV6) => Family::V6,
                        _ => Family::V4,
                    },
                    even,
                    reserve_next,
                    also_ipv6: additional.is_some(),
                }
            }
        };
        let lifetime = msg
            .attribute::<Lifetime>()
            .ok()
            .map(|l| Duration::from_secs(l.seconds() as u64));
        Ok(Self {
            ports,
            dont_fragment,
            lifetime,
            tcp,
        })
    }
}

impl Server {
    /// Allocate: a retransmission is answered again, a second allocation on the same 5-tuple
    /// is 437, and a draining server refuses with 508, all before the request is parsed.
    pub(super) fn allocate(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        authed: Authed,
        now: Instant,
    ) {
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
        if self.try_redirect(from, msg, &authed, Reason::Arrived) {
            return;
        }
        if self.draining {
            if self.try_redirect(from, msg, &authed, Reason::Full) {
                return;
            }
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }
        match AllocateRequest::parse(msg, from.transport, self.config.tcp_relay) {
            Ok(request) => self.open(from, msg, request, authed, now),
            Err(code) => self.error(from, msg, code, Some(&authed), label),
        }
    }

    /// Carries out a parsed Allocate: families, quota, ports, then the sockets to bind.
    fn open(
        &mut self,
        from: FiveTuple,
        msg: &Message<'_>,
        request: AllocateRequest,
        authed: Authed,
        now: Instant,
    ) {
        let label = MethodLabel::Allocate;
        // Only a missing primary family is an error; a missing additional one is reported in
        // the success response (ADDRESS-ERROR-CODE).
        let mut additional_family_refused = false;
        if let Ports::Fresh {
            primary, also_ipv6, ..
        } = request.ports
        {
            if !self.has_relay_family(primary) {
                return self.error(
                    from,
                    msg,
                    ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED,
                    Some(&authed),
                    label,
                );
            }
            additional_family_refused = also_ipv6 && !self.has_relay_family(Family::V6);
        }

        let config = Arc::clone(&self.config);
        let quota_key = config.credentials.quota_key(&authed.username).to_owned();
        if let Err(kind) = self
            .ledger
            .admit(&quota_key, config.user_quota, config.total_quota)
        {
            self.counters.quota(kind);
            if kind == QuotaKind::Total && self.try_redirect(from, msg, &authed, Reason::Full) {
                return;
            }
            let code = match kind {
                QuotaKind::User => ErrorCode::ALLOCATION_QUOTA_REACHED,
                _ => ErrorCode::INSUFFICIENT_CAPACITY,
            };
            return self.error(from, msg, code, Some(&authed), label);
        }

        let mut relays: [Option<Relay>; 2] = [None, None];
        let mut reservation = None;
        let mut ok = true;
        match request.ports {
            Ports::Reserved { token } => match self.ledger.take_reserved(token, now) {
                Some((ip, port)) => {
                    let family = Family::of(ip);
                    relays[family.index()] = Some(self.relay_for(ip, port));
                }
                None => ok = false,
            },
            Ports::Fresh {
                primary,
                even,
                reserve_next,
                also_ipv6,
            } => {
                match self.take_port(primary, even, reserve_next, now) {
                    Some((relay, token)) => {
                        relays[primary.index()] = Some(relay);
                        reservation = token;
                    }
                    None => ok = false,
                }
                if ok && also_ipv6 && !additional_family_refused {
                    match self.take_port(Family::V6, false, false, now) {
                        Some((relay, _)) => relays[Family::V6.index()] = Some(relay),
                        None => ok = false,
                    }
                }
            }
        }
        if !ok {
            for r in relays.iter().flatten() {
                self.ledger.release_port(r.local.ip(), r.local.port());
            }
            self.ledger.release(&quota_key);
            // A token that no longer names a reservation is not a shortage of ports.
            if matches!(request.ports, Ports::Fresh { .. }) {
                self.counters.quota(QuotaKind::Ports);
            }
            return self.error(
                from,
                msg,
                ErrorCode::INSUFFICIENT_CAPACITY,
                Some(&authed),
                label,
            );
        }

        // RFC 8656 §7.2: never less than the default lifetime, never more than the maximum.
        let lifetime = request
            .lifetime
            .unwrap_or(config.timers.default_lifetime)
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
                dont_fragment: request.dont_fragment,
                lifetime,
            }),
            bandwidth: [TokenBucket::full(now), TokenBucket::full(now)],
            tcp: request.tcp,
            connections: Vec::new(),
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
                    dont_fragment: request.dont_fragment,
                    tcp: request.tcp,
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

    /// The relay for a port on `local_ip`, advertised under the configured external address
    /// when the relay sits behind 1:1 NAT.
    fn relay_for(&self, local_ip: IpAddr, port: u16) -> Relay {
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

    /// What [`Server::relay_bound`] does: answers the Allocate once every relay is bound, and
    /// moves a relay whose port another process holds to a fresh port.
    pub(super) fn bind_result(&mut self, relay: RelayId, ok: bool, now: Instant) {
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
        let tcp = a.tcp;
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
                    tcp,
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

    /// Answers a pending Allocate with `code` and frees what it held.
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

    /// Every relay is bound: the allocation's lifetime starts and the success response is
    /// sent, and kept for retransmissions of the request.
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
        add_software(&self.config, &mut out);
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
}

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
