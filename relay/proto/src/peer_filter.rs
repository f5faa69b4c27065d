//! Which peer addresses a TURN allocation may relay to.
//!
//! A TURN relay sends traffic from its own network position, so without a
//! filter any client could use it as a proxy into the operator's private
//! network, loopback services or the cloud metadata endpoint. The server
//! consults [`PeerFilter::check`] for CreatePermission, ChannelBind and Send
//! and answers 403 (Forbidden) for a denied peer.
//!
//! # Decision order
//!
//! The semantics follow coturn's `allowed-peer-ip` / `denied-peer-ip`:
//!
//! 1. **Normalisation.** An IPv4-mapped address `::ffff:a.b.c.d` *is* the
//!    IPv4 address `a.b.c.d` (a dual-stack socket sends it there), so it is
//!    checked exactly as that IPv4 address, with the same verdict and the same
//!    reason. Other IPv6 forms that embed an IPv4 address are checked against
//!    their own IPv6 rules *and* against the embedded IPv4 address:
//!    IPv4-compatible `::a.b.c.d` (except `::` and `::1`), IPv4-translated
//!    `::ffff:0:a.b.c.d`, NAT64 well-known `64:ff9b::a.b.c.d` and 6to4
//!    `2002:AABB:CCDD::/48`.
//! 2. **Allowed.** An address inside any allowed net is allowed; this
//!    overrides everything below, including the default deny list, so an
//!    operator can allow e.g. the private address of their media server. An
//!    allowed IPv4 net also allows the `::ffff:` mapped forms of its
//!    addresses, but *not* the NAT64, 6to4 or compatible forms: those reach a
//!    translator or tunnel endpoint, which is a different host than the one
//!    the operator vouched for.
//! 3. **Denied.** An address inside any denied net is denied with
//!    [`DenyReason::Configured`]. A denied IPv4 net also denies every IPv6
//!    form that embeds one of its addresses.
//! 4. **Loopback.** `127.0.0.0/8` and `::1` (and their mapped forms) are
//!    allowed if `allow_loopback` is set. Other embeddings of `127/8` (NAT64,
//!    6to4, ...) stay denied: they do not lead to this host's loopback.
//! 5. **Default deny list.** Special-purpose ranges (see below) are denied
//!    with a reason per range. An IPv6 form other than `::ffff:` whose
//!    embedded IPv4 address is on the default list is denied with
//!    [`DenyReason::Translated`], so that such bypass attempts are visible as
//!    their own metric label.
//! 6. Anything else is allowed.
//!
//! Before all of these, a peer that is one of the relay's own listening addresses
//! ([`SelfAddresses`], IP *and* port) is denied with [`DenyReason::SelfAddress`], whatever
//! `allowed-peer-ip` or `allow_loopback` say: relaying to the relay's own TURN port nests TURN
//! in TURN (a client could bounce its traffic off the relay forever, or reach its metrics
//! listener from outside). Other ports of the same address, including the relayed
//! addresses of other allocations, are left to the rules above.
//!
//! A configured IPv6 net inside `::ffff:0:0/96` (prefix length 96 or more)
//! is treated as the IPv4 net it maps; a shorter IPv6 net such as `::/0` does
//! not cover IPv4 peers.
//!
//! # Default deny list
//!
//! IPv4: `0.0.0.0/8` unspecified; `10/8`, `172.16/12`, `192.168/16` private;
//! `100.64/10` CGNAT; `127/8` loopback; `169.254/16` link-local (includes the
//! cloud metadata endpoint `169.254.169.254`); `224/4` multicast;
//! `255.255.255.255` broadcast; `192.0.0.0/24`, `192.0.2.0/24`,
//! `198.18/15`, `198.51.100.0/24`, `203.0.113.0/24`, `240/4` reserved.
//!
//! IPv6: `::/128` unspecified; `::1` loopback; `fc00::/7` unique local;
//! `fe80::/10` link-local; `fec0::/10` site-local (private); `ff00::/8`
//! multicast; `2001:db8::/32`, `100::/64`, `3fff::/20` reserved;
//! `64:ff9b:1::/48` local-use NAT64 (translated); `2001::/32` Teredo (it
//! embeds an obfuscated client address, so it cannot be checked reliably).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a peer address was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// Matched an operator-configured `denied-peer-ip` entry.
    Configured,
    /// Loopback address (`127/8`, `::1`) while loopback peers are not allowed.
    Loopback,
    /// RFC 1918 private IPv4 range or deprecated IPv6 site-local range.
    Private,
    /// Carrier-grade NAT shared address space (`100.64/10`).
    Cgnat,
    /// Link-local address, including the cloud metadata endpoint.
    LinkLocal,
    /// Multicast address.
    Multicast,
    /// Unspecified or "this network" address.
    Unspecified,
    /// IPv4 limited broadcast address.
    Broadcast,
    /// Documentation, benchmarking, discard or otherwise reserved range.
    Reserved,
    /// IPv6 unique local address (`fc00::/7`).
    UniqueLocal,
    /// IPv6 form embedding a denied IPv4 address, or local-use NAT64.
    Translated,
    /// Teredo tunnel address (`2001::/32`).
    Teredo,
    /// One of the relay's own listening addresses (IP and port).
    SelfAddress,
}

impl DenyReason {
    /// Every reason, for pre-registering metric label values.
    pub const ALL: [DenyReason; 13] = [
        DenyReason::Configured,
        DenyReason::Loopback,
        DenyReason::Private,
        DenyReason::Cgnat,
        DenyReason::LinkLocal,
        DenyReason::Multicast,
        DenyReason::Unspecified,
        DenyReason::Broadcast,
        DenyReason::Reserved,
        DenyReason::UniqueLocal,
        DenyReason::Translated,
        DenyReason::Teredo,
        DenyReason::SelfAddress,
    ];

    /// Stable snake_case label, used as a Prometheus label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::Configured => "configured",
            DenyReason::Loopback => "loopback",
            DenyReason::Private => "private",
            DenyReason::Cgnat => "cgnat",
            DenyReason::LinkLocal => "link_local",
            DenyReason::Multicast => "multicast",
            DenyReason::Unspecified => "unspecified",
            DenyReason::Broadcast => "broadcast",
            DenyReason::Reserved => "reserved",
            DenyReason::UniqueLocal => "unique_local",
            DenyReason::Translated => "translated",
            DenyReason::Teredo => "teredo",
            DenyReason::SelfAddress => "self",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The relay's own listening addresses, which are never a peer.
///
/// Each entry is a net and a port: an exact listener is its address alone, a wildcard
/// listener is every local address (which only the runtime can list) on its port. An
/// IPv4-mapped peer is checked as its IPv4 address, as the filter does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelfAddresses {
    entries: Vec<(IpNet, u16)>,
}

impl SelfAddresses {
    /// The listening addresses, as nets of local addresses and the port on them.
    pub fn new(entries: impl IntoIterator<Item = (IpNet, u16)>) -> Self {
        let mut entries: Vec<(IpNet, u16)> = entries
            .into_iter()
            .map(|(net, port)| match net {
                IpNet::V6(n) => (mapped_net_to_v4(n).map_or(net, IpNet::V4), port),
                IpNet::V4(_) => (net.trunc(), port),
            })
            .collect();
        entries.sort_unstable_by_key(|&(net, port)| (port, net));
        entries.dedup();
        Self { entries }
    }

    /// Whether `peer` is one of the relay's own listening addresses.
    pub fn contains(&self, peer: SocketAddr) -> bool {
        let ip = normalise(peer.ip());
        self.entries
            .iter()
            .any(|&(net, port)| port == peer.port() && net.contains(&ip))
    }

    /// Whether there is no address at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `::ffff:a.b.c.d` is `a.b.c.d`: a dual-stack socket sends it there.
fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Decides which peer addresses an allocation may relay to.
#[derive(Debug, Clone)]
pub struct PeerFilter {
    // Split by family up front so `check` never has to convert per packet.
    allowed_v4: Vec<Ipv4Net>,
    allowed_v6: Vec<Ipv6Net>,
    denied_v4: Vec<Ipv4Net>,
    denied_v6: Vec<Ipv6Net>,
    allow_loopback: bool,
    own: SelfAddresses,
}

impl Default for PeerFilter {
    /// Secure default: nothing extra allowed, no loopback, default deny list.
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new(), false)
    }
}

impl PeerFilter {
    /// Builds a filter from `allowed-peer-ip`, `denied-peer-ip` and `allow-loopback-peers`.
    pub fn new(allowed: Vec<IpNet>, denied: Vec<IpNet>, allow_loopback: bool) -> Self {
        let (allowed_v4, allowed_v6) = split_nets(allowed);
        let (denied_v4, denied_v6) = split_nets(denied);
        Self {
            allowed_v4,
            allowed_v6,
            denied_v4,
            denied_v6,
            allow_loopback,
            own: SelfAddresses::default(),
        }
    }

    /// The same filter, also denying the relay's own listening addresses.
    pub fn with_self_addresses(mut self, own: SelfAddresses) -> Self {
        self.own = own;
        self
    }

    /// The relay's own listening addresses this filter denies.
    pub fn self_addresses(&self) -> &SelfAddresses {
        &self.own
    }

    /// Returns `Ok(())` if relaying to `peer` (address and port) is permitted, or why it is
    /// not: [`Self::check`] of its address, after refusing the relay's own addresses.
    pub fn check_peer(&self, peer: SocketAddr) -> Result<(), DenyReason> {
        if self.own.contains(peer) {
            return Err(DenyReason::SelfAddress);
        }
        self.check(peer.ip())
    }

    /// Whether `peer` is one of the relay's own listening addresses; what a Send indication
    /// to a port its permission does not name must be checked against.
    pub fn is_self(&self, peer: SocketAddr) -> bool {
        self.own.contains(peer)
    }

    /// Returns `Ok(())` if relaying to `ip` is permitted, or why it is not.
    pub fn check(&self, ip: IpAddr) -> Result<(), DenyReason> {
        match ip {
            IpAddr::V4(v4) => self.check_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.check_v4(v4),
                None => self.check_v6(v6),
            },
        }
    }

    /// Returns `true` if relaying to `ip` is permitted.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        self.check(ip).is_ok()
    }

    fn check_v4(&self, ip: Ipv4Addr) -> Result<(), DenyReason> {
        if self.allowed_v4.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if self.denied_v4.iter().any(|n| n.contains(&ip)) {
            return Err(DenyReason::Configured);
        }
        match default_v4_reason(ip) {
            Some(DenyReason::Loopback) if self.allow_loopback => Ok(()),
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn check_v6(&self, ip: Ipv6Addr) -> Result<(), DenyReason> {
        let embedded = embedded_ipv4(ip);
        if self.allowed_v6.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        let denied_embedded =
            embedded.is_some_and(|v4| self.denied_v4.iter().any(|n| n.contains(&v4)));
        if denied_embedded || self.denied_v6.iter().any(|n| n.contains(&ip)) {
            return Err(DenyReason::Configured);
        }
        match default_v6_reason(ip) {
            Some(DenyReason::Loopback) if self.allow_loopback => return Ok(()),
            Some(reason) => return Err(reason),
            None => {}
        }
        if embedded.is_some_and(|v4| default_v4_reason(v4).is_some()) {
            return Err(DenyReason::Translated);
        }
        Ok(())
    }
}

/// `::ffff:0:0/96`, the IPv4-mapped range, as (network bits, prefix length).
const MAPPED_PREFIX: (u128, u8) = (0xffff_0000_0000, 96);

fn split_nets(nets: Vec<IpNet>) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in nets {
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => match mapped_net_to_v4(n) {
                // Mapped addresses are checked as IPv4, so a v6 copy would never match.
                Some(n4) => v4.push(n4),
                None => v6.push(n),
            },
        }
    }
    (v4, v6)
}

fn mapped_net_to_v4(net: Ipv6Net) -> Option<Ipv4Net> {
    let prefix = net.prefix_len();
    if prefix < MAPPED_PREFIX.1 || !in_v6(u128::from(net.network()), MAPPED_PREFIX) {
        return None;
    }
    let v4 = net.network().to_ipv4_mapped()?;
    Ipv4Net::new(v4, prefix - MAPPED_PREFIX.1).ok()
}

/// The IPv4 address embedded in a non-mapped IPv6 form, if any.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let upper96 = bits >> 32;
    // Truncation is the point: the low 32 bits are the embedded address.
    let low32 = Ipv4Addr::from(bits as u32);
    // `::` and `::1` are not IPv4-compatible addresses (RFC 4291 2.5.5.1).
    if upper96 == 0 && bits > 1 {
        return Some(low32);
    }
    // IPv4-translated (RFC 2765) and NAT64 well-known prefix (RFC 6052).
    if upper96 == 0xffff_0000 || upper96 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32);
    }
    // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if bits >> 112 == 0x2002 {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    Ipv4Addr::new(a, b, c, d).to_bits()
}

// More specific entries come first where ranges nest (broadcast inside 240/4).
const DEFAULT_V4: [(u32, u8, DenyReason); 15] = [
    (v4(255, 255, 255, 255), 32, DenyReason::Broadcast),
    (v4(0, 0, 0, 0), 8, DenyReason::Unspecified),
    (v4(10, 0, 0, 0), 8, DenyReason::Private),
    (v4(100, 64, 0, 0), 10, DenyReason::Cgnat),
    (v4(127, 0, 0, 0), 8, DenyReason::Loopback),
    (v4(169, 254, 0, 0), 16, DenyReason::LinkLocal),
    (v4(172, 16, 0, 0), 12, DenyReason::Private),
    (v4(192, 0, 0, 0), 24, DenyReason::Reserved),
    (v4(192, 0, 2, 0), 24, DenyReason::Reserved),
    (v4(192, 168, 0, 0), 16, DenyReason::Private),
    (v4(198, 18, 0, 0), 15, DenyReason::Reserved),
    (v4(198, 51, 100, 0), 24, DenyReason::Reserved),
    (v4(203, 0, 113, 0), 24, DenyReason::Reserved),
    (v4(224, 0, 0, 0), 4, DenyReason::Multicast),
    (v4(240, 0, 0, 0), 4, DenyReason::Reserved),
];

#[allow(clippy::too_many_arguments)]
const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, g: u16, h: u16) -> u128 {
    Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits()
}

// Teredo (2001::/32) sits inside 2001::/23 but no other entry overlaps it.
const DEFAULT_V6: [(u128, u8, DenyReason); 11] = [
    (0, 128, DenyReason::Unspecified),
    (1, 128, DenyReason::Loopback),
    (v6(0x100, 0, 0, 0, 0, 0, 0, 0), 64, DenyReason::Reserved),
    (
        v6(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        DenyReason::Translated,
    ),
    (v6(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, DenyReason::Teredo),
    (
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        DenyReason::Reserved,
    ),
    (v6(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, DenyReason::Reserved),
    (v6(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, DenyReason::UniqueLocal),
    (v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, DenyReason::LinkLocal),
    (v6(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, DenyReason::Private),
    (v6(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, DenyReason::Multicast),
];

fn in_v4(addr: u32, (net, prefix): (u32, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    addr & mask == net
}

fn in_v6(addr: u128, (net, prefix): (u128, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    addr & mask == net
}

fn default_v4_reason(ip: Ipv4Addr) -> Option<DenyReason> {
    let bits = ip.to_bits();
    DEFAULT_V4
        .iter()
        .find(|&&(net, prefix, _)| in_v4(bits, (net, prefix)))
        .map(|&(_, _, reason)| reason)
}

fn default_v6_reason(ip: Ipv6Addr) -> Option<DenyReason> {
    let bits = ip.to_bits();
    DEFAULT_V6
        .iter()
        .find(|&&(net, prefix, _)| in_v6(bits, (net, prefix)))
        .map(|&(_, _, reason)| reason)
}

/// What was wrong with a peer IP range string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerFilterParseError {
    /// The string was empty or only whitespace.
    #[error("empty IP range")]
    Empty,
    /// A part that should be an IP address is not one.
    #[error("`{0}` is not a valid IPv4 or IPv6 address")]
    InvalidAddress(String),
    /// The part after `/` is not a decimal prefix length.
    #[error("`{0}` is not a valid prefix length")]
    InvalidPrefix(String),
    /// The prefix length is longer than the address (e.g. `/33` for IPv4).
    #[error("prefix length /{prefix} is too long for {addr} (maximum /{max})")]
    PrefixTooLong {
        /// The address the prefix was applied to.
        addr: IpAddr,
        /// The prefix length given.
        prefix: u8,
        /// The longest prefix valid for the address family.
        max: u8,
    },
    /// The two ends of a range are of different address families.
    #[error("range `{start}-{end}` mixes IPv4 and IPv6")]
    MixedFamilies {
        /// First address of the range.
        start: IpAddr,
        /// Last address of the range.
        end: IpAddr,
    },
    /// The range's first address is after its last address.
    #[error("range `{start}-{end}` is reversed: start is after end")]
    ReversedRange {
        /// First address of the range.
        start: IpAddr,
        /// Last address of the range.
        end: IpAddr,
    },
}

/// Parses `"10.0.0.5"`, `"10.0.0.0/8"`, `"2001:db8::/32"` or `"10.0.0.1-10.0.0.9"` into CIDRs.
///
/// A range becomes the minimal list of CIDRs covering exactly it, in
/// ascending order. A CIDR with host bits set (`10.0.0.1/8`) is truncated to
/// its network, since it denotes the same set of addresses.
pub fn parse_ip_range(s: &str) -> Result<Vec<IpNet>, PeerFilterParseError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(PeerFilterParseError::Empty);
    }
    if let Some((start, end)) = s.split_once('-') {
        let start = parse_addr(start)?;
        let end = parse_addr(end)?;
        return range_to_cidrs(start, end);
    }
    if let Some((addr, prefix)) = s.split_once('/') {
        let addr = parse_addr(addr)?;
        let prefix_str = prefix.trim();
        // `u8::from_str` accepts a leading `+`, which no CIDR notation uses.
        if !prefix_str.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PeerFilterParseError::InvalidPrefix(prefix_str.to_owned()));
        }
        let prefix = prefix_str
            .parse::<u8>()
            .map_err(|_| PeerFilterParseError::InvalidPrefix(prefix_str.to_owned()))?;
        return make_net(addr, prefix).map(|n| vec![n.trunc()]);
    }
    let addr = parse_addr(s)?;
    make_net(addr, max_prefix(addr)).map(|n| vec![n])
}

fn parse_addr(s: &str) -> Result<IpAddr, PeerFilterParseError> {
    let s = s.trim();
    s.parse()
        .map_err(|_| PeerFilterParseError::InvalidAddress(s.to_owned()))
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn make_net(addr: IpAddr, prefix: u8) -> Result<IpNet, PeerFilterParseError> {
    IpNet::new(addr, prefix).map_err(|_| PeerFilterParseError::PrefixTooLong {
        addr,
        prefix,
        max: max_prefix(addr),
    })
}

fn range_to_cidrs(start: IpAddr, end: IpAddr) -> Result<Vec<IpNet>, PeerFilterParseError> {
    let (lo, hi, width) = match (start, end) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return Err(PeerFilterParseError::MixedFamilies { start, end }),
    };
    if lo > hi {
        return Err(PeerFilterParseError::ReversedRange { start, end });
    }
    let to_addr = |bits: u128| -> IpAddr {
        if width == 32 {
            // Values stay below 2^32 because both ends were IPv4.
            IpAddr::V4(Ipv4Addr::from_bits(bits as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from_bits(bits))
        }
    };
    let mut out = Vec::new();
    let mut cur = lo;
    loop {
        // Largest block that is aligned at `cur` and does not pass `hi`.
        let align = cur.trailing_zeros().min(width);
        let span = hi - cur;
        let fits = if span == u128::MAX {
            128
        } else {
            (span + 1).ilog2()
        };
        let bits = align.min(fits);
        let mask = u128::MAX.checked_shr(128 - bits).unwrap_or(0);
        // `bits <= width`, so the prefix is always valid for the family.
        out.push(make_net(to_addr(cur), (width - bits) as u8)?);
        let block_end = cur | mask;
        if block_end >= hi {
            break;
        }
        cur = block_end + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
