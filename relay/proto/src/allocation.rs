//! One allocation (RFC 8656 §2.2): its relayed transport addresses, owner, lifetime,
//! permissions, channels and bandwidth budget, and for a TCP allocation (RFC 6062) its peer
//! connections.

use std::net::SocketAddr;
use std::time::Instant;

use icegate_common::token_bucket::{Rate, TokenBucket};
use stun_types::message::TransactionId;

use crate::channels::Channels;
use crate::integrity::{HmacAlgorithm, LongTermKey};
use crate::permissions::Permissions;
use crate::transport::{Family, FiveTuple};

/// One relayed transport address of an allocation.
#[derive(Debug, Clone, Copy)]
pub struct Relay {
    /// The local address the relay socket binds to.
    pub local: SocketAddr,
    /// The address advertised to the client (differs behind 1:1 NAT).
    pub advertised: SocketAddr,
    /// Whether the runtime has bound the socket.
    pub bound: bool,
    /// Bind attempts made so far (ports taken by other processes are skipped).
    pub attempts: u8,
}

/// The Allocate request an allocation still owes a response to, while its sockets are bound.
#[derive(Debug, Clone)]
pub struct PendingAllocate {
    /// The request's transaction.
    pub transaction: TransactionId,
    /// The key and HMAC the response is signed with.
    pub key: LongTermKey,
    /// The HMAC the request used.
    pub hmac: HmacAlgorithm,
    /// The RESERVATION-TOKEN to return, if EVEN-PORT asked for one.
    pub reservation: Option<u64>,
    /// IPv6 was asked for with ADDITIONAL-ADDRESS-FAMILY but is not available.
    pub additional_family_refused: bool,
    /// Whether to set DONT-FRAGMENT on the relay sockets.
    pub dont_fragment: bool,
    /// The lifetime granted.
    pub lifetime: std::time::Duration,
}

/// A Connect still owed its answer, while the relay connects out to the peer.
#[derive(Debug, Clone)]
pub struct PendingConnect {
    /// The request's transaction.
    pub transaction: TransactionId,
    /// The key the response is signed with.
    pub key: LongTermKey,
    /// The HMAC the request used.
    pub hmac: HmacAlgorithm,
}

/// A TCP peer connection of a TCP allocation, as its owner's worker keeps it; where it is in
/// its life is in [`crate::peer_connections::PeerConnections`], shared by all workers.
#[derive(Debug, Clone)]
pub struct PeerConnection {
    /// Its CONNECTION-ID.
    pub id: u32,
    /// The peer.
    pub peer: SocketAddr,
    /// The Connect to answer once connected (`None` for a connection the peer made).
    pub connect: Option<PendingConnect>,
    /// When it is closed unless a ConnectionBind has claimed it (RFC 6062: 30 s).
    pub bind_by: Option<Instant>,
}

/// Takes `len` bytes from one direction's `bandwidth` budget if it allows them: `max_bps`
/// bytes per second with a burst of one second; 0 is unlimited.
pub fn take_bandwidth(
    budget: &mut TokenBucket<Instant>,
    len: usize,
    max_bps: u64,
    now: Instant,
) -> bool {
    let rate = Rate {
        per_second: max_bps,
        burst: max_bps,
    };
    max_bps == 0 || budget.take(len as u64, rate, now)
}

/// One allocation.
#[derive(Debug)]
pub struct Allocation {
    /// The client's 5-tuple.
    pub five_tuple: FiveTuple,
    /// The user who made it; other users get 441 on it.
    pub username: String,
    /// What it counts against in `user-quota` ([`crate::auth::Credentials::quota_key`]), kept
    /// so that a reload changing the users releases the count it took.
    pub quota_key: String,
    /// Relayed addresses, indexed by [`Family`].
    pub relays: [Option<Relay>; 2],
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// Its permissions.
    pub permissions: Permissions,
    /// Its channel bindings.
    pub channels: Channels,
    /// The Allocate transaction, to recognise retransmissions.
    pub allocate_transaction: TransactionId,
    /// The success response, resent on a retransmitted Allocate.
    pub allocate_response: Option<Vec<u8>>,
    /// The response still owed, while relay sockets are being bound.
    pub pending: Option<PendingAllocate>,
    /// Bandwidth budgets in bytes ([`take_bandwidth`]): client→peer, peer→client.
    pub bandwidth: [TokenBucket<Instant>; 2],
    /// A TCP allocation (RFC 6062): its relayed address listens for TCP connections.
    pub tcp: bool,
    /// A TCP allocation's peer connections.
    pub connections: Vec<PeerConnection>,
}

impl Allocation {
    /// The relay of `family`, if this allocation has one.
    pub fn relay(&self, family: Family) -> Option<&Relay> {
        self.relays[family.index()].as_ref()
    }

    /// Whether every relay socket is bound.
    pub fn all_bound(&self) -> bool {
        self.relays.iter().flatten().all(|r| r.bound)
    }

    /// The family of the first relay, for metrics.
    pub fn primary_family(&self) -> Family {
        if self.relays[0].is_some() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bandwidth_bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(t0);
        assert!(take_bandwidth(&mut b, 1000, 1000, t0));
        assert!(!take_bandwidth(&mut b, 1, 1000, t0));
        assert!(take_bandwidth(
            &mut b,
            500,
            1000,
            t0 + Duration::from_millis(500)
        ));
        assert!(!take_bandwidth(
            &mut b,
            10,
            1000,
            t0 + Duration::from_millis(500)
        ));
        assert!(take_bandwidth(
            &mut b,
            1000,
            1000,
            t0 + Duration::from_secs(100)
        ));
        assert!(
            take_bandwidth(&mut b, usize::MAX, 0, t0),
            "0 means unlimited"
        );
    }
}
