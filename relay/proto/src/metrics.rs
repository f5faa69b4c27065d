//! Every instrument the core updates, defined once.
//!
//! Each worker owns one [`Counters`] shard and is its only writer, so the relaxed atomic
//! increments never contend; the runtime sums all shards when Prometheus scrapes.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::transport::{Family, Transport};

/// STUN/TURN request methods, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    /// Binding.
    Binding,
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Any other method (answered 400).
    Other,
    /// Connect (RFC 6062).
    Connect,
    /// ConnectionBind (RFC 6062).
    ConnectionBind,
}

impl MethodLabel {
    /// All labels, in index order.
    pub const ALL: [MethodLabel; 8] = [
        MethodLabel::Binding,
        MethodLabel::Allocate,
        MethodLabel::Refresh,
        MethodLabel::CreatePermission,
        MethodLabel::ChannelBind,
        MethodLabel::Other,
        MethodLabel::Connect,
        MethodLabel::ConnectionBind,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Binding => "binding",
            MethodLabel::Allocate => "allocate",
            MethodLabel::Refresh => "refresh",
            MethodLabel::CreatePermission => "create_permission",
            MethodLabel::ChannelBind => "channel_bind",
            MethodLabel::Other => "other",
            MethodLabel::Connect => "connect",
            MethodLabel::ConnectionBind => "connection_bind",
        }
    }
}

/// Request results, as metric labels: success or the error code.
pub const RESULTS: [u16; 17] = [
    0, 300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508,
];

/// The label value for an entry of [`RESULTS`].
pub fn result_label(code: u16) -> String {
    if code == 0 {
        "success".to_owned()
    } else {
        code.to_string()
    }
}

pub(crate) fn result_index(code: u16) -> usize {
    // A code not listed counts as 500: it is a bug here, not the client's doing.
    const INTERNAL: usize = 15;
    debug_assert_eq!(RESULTS[INTERNAL], 500);
    RESULTS.iter().position(|&c| c == code).unwrap_or(INTERNAL)
}

/// Why a request failed authentication, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the normal first step of a client, answered 401.
    MissingIntegrity,
    /// The nonce was expired or not ours (438).
    StaleNonce,
    /// The user is not known, or a REST username is malformed.
    UnknownUser,
    /// A REST credential past its expiry time.
    ExpiredCredential,
    /// The MESSAGE-INTEGRITY did not verify: wrong password.
    BadIntegrity,
    /// A different user than the allocation's owner (441).
    WrongCredentials,
    /// USERNAME, REALM or NONCE missing or malformed (400).
    Malformed,
}

impl AuthFailure {
    /// All reasons, in index order.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::MissingIntegrity,
        AuthFailure::StaleNonce,
        AuthFailure::UnknownUser,
        AuthFailure::ExpiredCredential,
        AuthFailure::BadIntegrity,
        AuthFailure::WrongCredentials,
        AuthFailure::Malformed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::MissingIntegrity => "missing_integrity",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::ExpiredCredential => "expired_credential",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::WrongCredentials => "wrong_credentials",
            AuthFailure::Malformed => "malformed",
        }
    }
}

/// Which quota refused an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// The per-user quota.
    User,
    /// The relay-wide quota.
    Total,
    /// The relay port range is exhausted.
    Ports,
}

impl QuotaKind {
    /// All kinds, in index order.
    pub const ALL: [QuotaKind; 3] = [QuotaKind::User, QuotaKind::Total, QuotaKind::Ports];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::User => "user",
            QuotaKind::Total => "total",
            QuotaKind::Ports => "ports",
        }
    }
}

/// Direction of relayed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client, out through the relay socket.
    ClientToPeer,
    /// From a peer, back to the client.
    PeerToClient,
}

impl Direction {
    /// Both directions, in index order.
    pub const ALL: [Direction; 2] = [Direction::ClientToPeer, Direction::PeerToClient];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToPeer => "client_to_peer",
            Direction::PeerToClient => "peer_to_client",
        }
    }
}

/// Why a relayed packet was dropped without being malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No permission for the peer (or no allocation for the client).
    NoPermission,
    /// The allocation's bandwidth cap was exceeded.
    Bandwidth,
    /// ChannelData on a channel that is not bound.
    UnboundChannel,
}

impl DropReason {
    /// All reasons, in index order.
    pub const ALL: [DropReason; 3] = [
        DropReason::NoPermission,
        DropReason::Bandwidth,
        DropReason::UnboundChannel,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoPermission => "no_permission",
            DropReason::Bandwidth => "bandwidth",
            DropReason::UnboundChannel => "unbound_channel",
        }
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Active allocations by transport × family (a gauge).
    pub allocations_active: [[AtomicI64; 2]; 4],
    /// Allocations ever made by transport × family.
    pub allocations_total: [[AtomicU64; 2]; 4],
    /// Requests by method × result.
    pub requests: [[AtomicU64; RESULTS.len()]; MethodLabel::ALL.len()],
    /// Authentication failures by reason.
    pub auth_failures: [AtomicU64; 7],
    /// Allocations refused by quota.
    pub quota_rejections: [AtomicU64; 3],
    /// Relayed packets by direction.
    pub packets: [AtomicU64; 2],
    /// Relayed payload bytes by direction.
    pub bytes: [AtomicU64; 2],
    /// Relayed packets dropped, by reason.
    pub dropped: [AtomicU64; 3],
    /// Packets that could not be parsed.
    pub malformed: AtomicU64,
    /// Unauthenticated requests dropped by the rate limiter.
    pub rate_limited: AtomicU64,
    /// TCP peer connections of TCP allocations (RFC 6062) made, by [`PeerConnection`].
    pub peer_connections: [AtomicU64; 2],
    /// Peer connections refused or failed, by [`PeerConnection`].
    pub peer_connections_failed: [AtomicU64; 2],
}

/// How a TCP peer connection of a TCP allocation came about, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerConnection {
    /// The client asked with Connect; the relay connected out.
    Outgoing,
    /// A peer connected to the relayed address.
    Incoming,
}

impl PeerConnection {
    /// Both, in index order.
    pub const ALL: [PeerConnection; 2] = [PeerConnection::Outgoing, PeerConnection::Incoming];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerConnection::Outgoing => "outgoing",
            PeerConnection::Incoming => "incoming",
        }
    }
}

/// Peer-filter rejections are labelled by [`crate::peer_filter::DenyReason::as_str`]; the
/// label set is open, so they are counted in a small map rather than a fixed array.
#[derive(Debug, Default)]
pub struct PeerDenials {
    counts: std::sync::Mutex<Vec<(&'static str, u64)>>,
}

impl PeerDenials {
    /// Counts one denial. Control plane only: a permission request, never a relayed packet.
    pub fn inc(&self, reason: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => counts.push((reason, 1)),
        }
    }

    /// A snapshot of all counts.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn request(&self, method: MethodLabel, code: u16) {
        bump(&self.requests[method as usize][result_index(code)], 1);
    }

    pub(crate) fn auth_failure(&self, reason: AuthFailure) {
        bump(&self.auth_failures[reason as usize], 1);
    }

    pub(crate) fn quota(&self, kind: QuotaKind) {
        bump(&self.quota_rejections[kind as usize], 1);
    }

    pub(crate) fn allocation_opened(&self, transport: Transport, family: Family) {
        let (t, f) = (transport.index(), family.index());
        bump(&self.allocations_total[t][f], 1);
        self.allocations_active[t][f].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn allocation_closed(&self, transport: Transport, family: Family) {
        self.allocations_active[transport.index()][family.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one relayed packet of `len` payload bytes.
    pub fn relayed(&self, direction: Direction, len: usize) {
        bump(&self.packets[direction as usize], 1);
        bump(&self.bytes[direction as usize], len as u64);
    }

    /// Counts one dropped relayed packet.
    pub fn dropped(&self, reason: DropReason) {
        bump(&self.dropped[reason as usize], 1);
    }

    /// Counts one packet that could not be parsed.
    pub fn malformed(&self) {
        bump(&self.malformed, 1);
    }

    pub(crate) fn peer_connection(&self, kind: PeerConnection, made: bool) {
        let counters = if made {
            &self.peer_connections
        } else {
            &self.peer_connections_failed
        };
        bump(&counters[kind as usize], 1);
    }

    pub(crate) fn rate_limited(&self) {
        bump(&self.rate_limited, 1);
    }

    /// Reads a counter (for tests and the scrape).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
