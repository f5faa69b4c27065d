//! Which TCP/TLS client connections the relay takes: a cap per source address, a cap on all
//! of them, and the descriptor budget (what `RLIMIT_NOFILE` leaves once the relay sockets of
//! the port range are reserved, see [`crate::limits::stream_budget`]).
//!
//! Stream connections cost a descriptor and memory each, for as long as the client keeps
//! them open, so one source must not be able to hold them all, and none of them may take a
//! descriptor a relay socket will need: an Allocate over UDP would otherwise fail with 508
//! once enough idle connections pile up. A connection is admitted (or refused, and closed at
//! once) when it is accepted, before its TLS handshake.
//!
//! [`Admission`] is the pure bookkeeping, on a clock passed in. The workers share one, behind
//! [`SharedAdmission`]'s mutex: it is taken once per accepted and once per closed connection,
//! never on the data path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refusals of one reason are logged at most this often, with how many there were since.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The caps on stream connections; `0` means no cap of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connections from one IPv4 address or IPv6 /64 (`max-connections-per-ip`).
    pub per_ip: u32,
    /// Connections in total (`max-connections`).
    pub total: u32,
    /// Connections the descriptor budget leaves room for.
    pub descriptors: u64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source already holds `max-connections-per-ip`.
    PerIp,
    /// The relay already holds `max-connections`.
    Total,
    /// Another connection would take a descriptor reserved for relay sockets.
    Descriptors,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 3] = [Refusal::PerIp, Refusal::Total, Refusal::Descriptors];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::Total => "total",
            Refusal::Descriptors => "descriptors",
        }
    }
}

/// A refused connection, and whether the caller should log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub reason: Refusal,
    /// `Some(n)`: log now, `n` refusals of this reason (this one included) since the last
    /// log line; `None`: stay quiet, a log line was written less than [`LOG_INTERVAL`] ago.
    pub log: Option<u64>,
}

/// The key a source is counted under: the IPv4 address, or the IPv6 /64 (one subscriber's
/// prefix, whose addresses cost an attacker nothing). An IPv4-mapped IPv6 address counts as
/// its IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// Open stream connections per source and in total, against [`StreamLimits`].
#[derive(Debug)]
pub struct Admission {
    limits: StreamLimits,
    per_source: HashMap<IpAddr, u32>,
    total: u64,
    /// Per reason: when a refusal was last logged, and refusals since.
    logged: [(Option<Instant>, u64); 3],
}

impl Admission {
    /// No connections yet.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::new(),
            total: 0,
            logged: [(None, 0); 3],
        }
    }

    /// Admits a connection from `ip` at `now`, or says why not. An admitted connection must
    /// be [`Admission::release`]d when it closes.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refused> {
        let key = source_key(ip);
        let from_source = self.per_source.get(&key).copied().unwrap_or(0);
        // The descriptor budget first: it is the hard limit, the others are policy.
        let reason = if self.total >= self.limits.descriptors {
            Some(Refusal::Descriptors)
        } else if self.limits.total != 0 && self.total >= u64::from(self.limits.total) {
            Some(Refusal::Total)
        } else if self.limits.per_ip != 0 && from_source >= self.limits.per_ip {
            Some(Refusal::PerIp)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(self.refuse(reason, now));
        }
        *self.per_source.entry(key).or_insert(0) += 1;
        self.total += 1;
        Ok(())
    }

    /// A connection [`Admission::admit`] took from `ip` has closed.
    pub fn release(&mut self, ip: IpAddr) {
        let key = source_key(ip);
        if let Some(n) = self.per_source.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                // Sources come and go: an entry per address ever seen would grow forever.
                self.per_source.remove(&key);
            }
            self.total -= 1;
        }
    }

    /// Connections now open.
    #[cfg(test)]
    fn open(&self) -> u64 {
        self.total
    }

    fn refuse(&mut self, reason: Refusal, now: Instant) -> Refused {
        let (last, since) = &mut self.logged[reason as usize];
        *since += 1;
        let due = last.is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
        let log = due.then(|| {
            *last = Some(now);
            std::mem::take(since)
        });
        Refused { reason, log }
    }
}

/// The workers' one [`Admission`], and the count of what it refused for `/metrics`.
#[derive(Debug)]
pub struct SharedAdmission {
    inner: Mutex<Admission>,
    refused: [AtomicU64; 3],
}

/// An admitted connection; dropping it releases its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<SharedAdmission>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().release(self.ip);
    }
}

impl SharedAdmission {
    /// One admission for all workers.
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Admission::new(limits)),
            refused: Default::default(),
        })
    }

    /// [`Admission::admit`], with a [`Ticket`] that releases the place when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        match self.lock().admit(ip, now) {
            Ok(()) => Ok(Ticket {
                admission: Arc::clone(self),
                ip,
            }),
            Err(refused) => {
                self.refused[refused.reason as usize].fetch_add(1, Ordering::Relaxed);
                Err(refused)
            }
        }
    }

    /// Connections refused so far, by reason (in [`Refusal::ALL`] order), without the lock.
    pub fn refused(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admission> {
        // The bookkeeping is a few integer updates that cannot panic half-way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, total: u32, descriptors: u64) -> StreamLimits {
        StreamLimits {
            per_ip,
            total,
            descriptors,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(2, 0, 1000));
        assert_eq!(a.admit(ip("192.0.2.1"), t0), Ok(()));
        assert_eq!(a.admit(ip("192.0.2.1"), t0), Ok(()));
        let refused = a.admit(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(refused.reason, Refusal::PerIp);
        // Another source is not affected; a closed connection frees a place.
        assert_eq!(a.admit(ip("192.0.2.2"), t0), Ok(()));
        a.release(ip("192.0.2.1"));
        assert_eq!(a.admit(ip("192.0.2.1"), t0), Ok(()));
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 1000));
        assert_eq!(a.admit(ip("2001:db8:1:2::1"), t0), Ok(()));
        let refused = a.admit(ip("2001:db8:1:2:ffff::9"), t0).unwrap_err();
        assert_eq!(refused.reason, Refusal::PerIp);
        assert_eq!(a.admit(ip("2001:db8:1:3::1"), t0), Ok(()));
        assert_eq!(a.admit(ip("198.51.100.7"), t0), Ok(()));
        let refused = a.admit(ip("::ffff:198.51.100.7"), t0).unwrap_err();
        assert_eq!(refused.reason, Refusal::PerIp);
    }

    #[test]
    fn the_total_cap_and_the_descriptor_budget_hold_for_all_sources() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(0, 2, 1000));
        for i in 1..=2 {
            assert_eq!(a.admit(ip(&format!("192.0.2.{i}")), t0), Ok(()));
        }
        assert_eq!(
            a.admit(ip("192.0.2.3"), t0).unwrap_err().reason,
            Refusal::Total
        );
        // The budget is the harder limit, so it is what a full relay reports.
        let mut a = Admission::new(limits(0, 5, 2));
        for i in 1..=2 {
            assert_eq!(a.admit(ip(&format!("192.0.2.{i}")), t0), Ok(()));
        }
        assert_eq!(
            a.admit(ip("192.0.2.3"), t0).unwrap_err().reason,
            Refusal::Descriptors
        );
        a.release(ip("192.0.2.1"));
        assert_eq!(a.admit(ip("192.0.2.3"), t0), Ok(()));
        // No budget at all: nothing is admitted.
        let mut a = Admission::new(limits(0, 0, 0));
        assert_eq!(
            a.admit(ip("192.0.2.1"), t0).unwrap_err().reason,
            Refusal::Descriptors
        );
    }

    #[test]
    fn releasing_forgets_sources_and_ignores_strangers() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 10));
        a.admit(ip("192.0.2.1"), t0).unwrap();
        a.release(ip("192.0.2.1"));
        a.release(ip("192.0.2.1"));
        a.release(ip("192.0.2.9"));
        assert_eq!(a.open(), 0);
        assert!(a.per_source.is_empty());
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_since() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 1000));
        a.admit(ip("192.0.2.1"), t0).unwrap();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(a.admit(ip("192.0.2.1"), at(0)).unwrap_err().log, Some(1));
        for s in [1, 5, 9] {
            assert_eq!(a.admit(ip("192.0.2.1"), at(s)).unwrap_err().log, None);
        }
        // Another reason has its own interval.
        let mut full = Admission::new(limits(0, 0, 0));
        assert_eq!(full.admit(ip("192.0.2.1"), at(1)).unwrap_err().log, Some(1));
        assert_eq!(a.admit(ip("192.0.2.1"), at(10)).unwrap_err().log, Some(4));
        assert_eq!(a.admit(ip("192.0.2.1"), at(11)).unwrap_err().log, None);
    }

    #[test]
    fn tickets_release_their_place_when_dropped() {
        let t0 = Instant::now();
        let shared = SharedAdmission::new(limits(1, 0, 10));
        let ticket = shared.admit(ip("192.0.2.1"), t0).unwrap();
        assert!(shared.admit(ip("192.0.2.1"), t0).is_err());
        assert_eq!(shared.refused(), [1, 0, 0]);
        drop(ticket);
        assert!(shared.admit(ip("192.0.2.1"), t0).is_ok());
    }
}
