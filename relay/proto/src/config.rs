//! What the core needs to know about its deployment. Parsed and validated by the runtime.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::auth::Credentials;
use crate::peer_filter::PeerFilter;
use crate::rate_limit::RateLimitConfig;
use crate::transport::Transport;

/// The core's configuration. Everything here may change on reload except the relay addresses.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The REALM of long-term credentials.
    pub realm: String,
    /// The SOFTWARE attribute sent in responses, if any.
    pub software: Option<String>,
    /// Users and REST secrets.
    pub credentials: Credentials,
    /// Which peers allocations may talk to.
    pub peer_filter: PeerFilter,
    /// The limit on unauthenticated requests per source.
    pub rate_limit: RateLimitConfig,
    /// Protocol timers.
    pub timers: Timers,
    /// Allocations one user may hold at once; 0 means no limit.
    pub user_quota: u32,
    /// Allocations the whole relay may hold at once; 0 means no limit.
    pub total_quota: u32,
    /// Bytes per second one allocation may relay in each direction; 0 means no limit.
    pub max_bps: u64,
    /// Permissions one allocation may hold, bounding its memory.
    pub max_permissions: usize,
    /// Relay addresses advertised to clients, by the local address their sockets bind to.
    pub relay_addresses: Vec<RelayAddress>,
    /// Other relays Allocates are sent to (300 Try Alternate), and when.
    pub alternates: Alternates,
    /// RFC 5780 NAT behaviour discovery over UDP, when on: the addresses Bindings may be
    /// answered from.
    pub nat_discovery: Option<NatDiscovery>,
    /// Whether TCP allocations (RFC 6062) are made; off, they are refused with 442.
    pub tcp_relay: bool,
}

/// RFC 5780 NAT behaviour discovery (coturn's, on with two listening IPs of one family): the
/// two IPs and two ports a Binding over UDP can be answered from, each listened on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatDiscovery {
    /// Pairs of listening IPs of one family: each is the other's "other" IP.
    pub ip_pairs: Vec<(IpAddr, IpAddr)>,
    /// `listening-port` and `alt-listening-port`: each is the other's "other" port.
    pub ports: (u16, u16),
}

impl NatDiscovery {
    /// The IP paired with `ip`, if it is in a pair.
    pub fn other_ip(&self, ip: IpAddr) -> Option<IpAddr> {
        self.ip_pairs.iter().find_map(|&(a, b)| {
            if a == ip {
                Some(b)
            } else if b == ip {
                Some(a)
            } else {
                None
            }
        })
    }

    /// The port paired with `port`, if it is one of the two.
    pub fn other_port(&self, port: u16) -> Option<u16> {
        match self.ports {
            (p, alt) if p == port => Some(alt),
            (p, alt) if alt == port => Some(p),
            _ => None,
        }
    }

    /// OTHER-ADDRESS (RFC 5780 §7.4) for a request received at `local`: the other IP and the
    /// other port, or `None` when `local` is not one of the discovery addresses.
    pub fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(
            self.other_ip(local.ip())?,
            self.other_port(local.port())?,
        ))
    }
}

/// Other relays that Allocates are redirected to with 300 (Try Alternate) and ALTERNATE-SERVER
/// (RFC 8489 §10), round-robin, as coturn's `alternate-server` and `tls-alternate-server`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alternates {
    /// For clients over UDP and TCP.
    pub plain: Vec<SocketAddr>,
    /// For clients over TLS and DTLS (coturn's `tls-alternate-server` serves both).
    pub tls: Vec<SocketAddr>,
    /// When an Allocate is redirected.
    pub when: RedirectWhen,
}

impl Alternates {
    /// The list for clients over `transport`.
    pub fn for_transport(&self, transport: Transport) -> &[SocketAddr] {
        match transport {
            Transport::Tls | Transport::Dtls => &self.tls,
            Transport::Udp | Transport::Tcp => &self.plain,
        }
    }
}

/// When Allocates go to an alternate server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedirectWhen {
    /// Every Allocate, as coturn does: this relay only hands clients out.
    #[default]
    Always,
    /// Only an Allocate this relay would refuse for capacity: the total quota is reached, or
    /// it is draining for shutdown.
    Full,
}

/// A local address relay sockets bind to, and the address clients are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    /// The local address relay sockets bind to.
    pub local: IpAddr,
    /// The public address advertised in XOR-RELAYED-ADDRESS (`external-ip` behind 1:1 NAT).
    pub advertised: IpAddr,
}

/// The protocol timers of RFC 8656 and the nonce lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Allocation lifetime when the client asks for less (RFC 8656: 10 minutes).
    pub default_lifetime: Duration,
    /// The most a client can ask for (RFC 8656 suggests 1 hour).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656: 300 s, not configurable).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656: 600 s).
    pub channel_lifetime: Duration,
    /// How long a nonce stays valid before 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// How long an EVEN-PORT reservation is held (RFC 8656: about 30 s).
    pub reservation_lifetime: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            reservation_lifetime: Duration::from_secs(30),
        }
    }
}

impl ServerConfig {
    /// A configuration with the RFC defaults, the given realm and credentials, and relay
    /// addresses equal to their local addresses.
    pub fn new(realm: impl Into<String>, credentials: Credentials, relay_ips: &[IpAddr]) -> Self {
        Self {
            realm: realm.into(),
            software: Some(concat!("icegate-relay/", env!("CARGO_PKG_VERSION")).to_owned()),
            credentials,
            peer_filter: PeerFilter::default(),
            rate_limit: RateLimitConfig::default(),
            timers: Timers::default(),
            user_quota: 0,
            total_quota: 0,
            max_bps: 0,
            max_permissions: 256,
            relay_addresses: relay_ips
                .iter()
                .map(|&ip| RelayAddress {
                    local: ip,
                    advertised: ip,
                })
                .collect(),
            alternates: Alternates::default(),
            nat_discovery: None,
            tcp_relay: true,
        }
    }
}
