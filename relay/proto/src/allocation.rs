//! One allocation (RFC 8656 §2.2): its relayed transport addresses, owner, lifetime,
//! permissions, channels and bandwidth budget.

use std::net::SocketAddr;
use std::time::Instant;

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

/// A token bucket over bytes, for the optional per-allocation bandwidth cap.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    tokens: u64,
    last: Instant,
}

impl Bandwidth {
    /// A full bucket.
    pub fn new(now: Instant, rate: u64) -> Self {
        Self {
            tokens: rate,
            last: now,
        }
    }

    /// Takes `len` bytes if the budget allows; `rate` bytes/s, burst of one second.
    pub fn take(&mut self, len: usize, rate: u64, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let refill = (elapsed.as_nanos().min(u64::MAX as u128) as u64 / 1000)
                .saturating_mul(rate)
                / 1_000_000;
            if refill > 0 {
                self.tokens = self.tokens.saturating_add(refill).min(rate);
                self.last = now;
            }
        }
        if self.tokens >= len as u64 {
            self.tokens -= len as u64;
            true
        } else {
            false
        }
    }
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
    /// Bandwidth budgets: client→peer, peer→client.
    pub bandwidth: [Bandwidth; 2],
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
        let mut b = Bandwidth::new(t0, 1000);
        assert!(b.take(1000, 1000, t0));
        assert!(!b.take(1, 1000, t0));
        assert!(b.take(500, 1000, t0 + Duration::from_millis(500)));
        assert!(!b.take(10, 1000, t0 + Duration::from_millis(500)));
        assert!(b.take(1000, 1000, t0 + Duration::from_secs(100)));
        assert!(b.take(usize::MAX, 0, t0), "0 means unlimited");
    }
}
