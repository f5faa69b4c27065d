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
//! A relay that is full (the total cap or the descriptor budget, not a source's own cap)
//! makes room by evicting its oldest connection that has no allocation yet, rather than turn
//! the newcomer away: otherwise anyone with enough source addresses could hold every place
//! with idle connections and keep real clients out for as long as the idle timeout, again and
//! again. A real client allocates within a round trip or two of connecting, so it is among the
//! newest and the last to go; a connection that holds an allocation is not evicted.
//!
//! [`Admission`] is the pure bookkeeping, on a clock passed in. The workers share one, behind
//! [`SharedAdmission`]'s mutex: it is taken once per accepted connection, once when it first
//! holds an allocation and once when it closes, never on the data path.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Refusals of one reason (and evictions) are logged at most this often, with how many there
/// were since.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Evicted connections that may still be closing while newcomers take their places: the
/// descriptors they hold until then come out of the fixed reserve
/// ([`crate::limits::stream_budget`] keeps 128 plus 16 per worker, of which listeners, epoll
/// sets and logs take a few dozen), so this stays well below it.
pub const EVICTION_SLACK: usize = 64;

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

/// An admitted connection: its id, and the connection evicted to make room for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted<T> {
    /// What [`Admission::prove`] and [`Admission::release`] take.
    pub id: u64,
    /// The evicted connection's handle, to be told to close.
    pub evict: Option<T>,
    /// As [`Refused::log`], for evictions.
    pub log: Option<u64>,
}

/// Open stream connections per source and in total, against [`StreamLimits`]; `T` is how
/// the caller tells a connection to close when it is evicted.
#[derive(Debug)]
pub struct Admission<T> {
    limits: StreamLimits,
    per_source: HashMap<IpAddr, u32>,
    total: u64,
    next_id: u64,
    /// Connections without an allocation, oldest (smallest id) first: eviction candidates.
    unproven: BTreeMap<u64, T>,
    /// Evicted connections that have not closed yet.
    evicted: HashSet<u64>,
    /// Per reason: when a refusal was last logged, and refusals since.
    logged: [(Option<Instant>, u64); 3],
    /// The same for evictions.
    evictions_logged: (Option<Instant>, u64),
}

impl<T> Admission<T> {
    /// No connections yet.
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            per_source: HashMap::new(),
            total: 0,
            next_id: 0,
            unproven: BTreeMap::new(),
            evicted: HashSet::new(),
            logged: [(None, 0); 3],
            evictions_logged: (None, 0),
        }
    }

    /// Admits a connection from `ip` at `now`, evicting the oldest connection without an
    /// allocation if the relay is full, or says why not. `handle` is what is handed back if
    /// this one is evicted later. An admitted connection must be [`Admission::release`]d
    /// when it closes.
    pub fn admit(&mut self, ip: IpAddr, now: Instant, handle: T) -> Result<Admitted<T>, Refused> {
        let key = source_key(ip);
        let from_source = self.per_source.get(&key).copied().unwrap_or(0);
        // A source past its own cap gets nothing, not even by eviction: that cap is its share.
        if self.limits.per_ip != 0 && from_source >= self.limits.per_ip {
            return Err(self.refuse(Refusal::PerIp, now));
        }
        // What stays open once the evicted connections have closed. The descriptor budget is
        // checked first: it is the hard limit, the total cap is policy.
        let settled = self.total - self.evicted.len() as u64;
        let full = if settled >= self.limits.descriptors {
            Some(Refusal::Descriptors)
        } else if self.limits.total != 0 && settled >= u64::from(self.limits.total) {
            Some(Refusal::Total)
        } else {
            None
        };
        let mut evict = None;
        let mut log = None;
        if let Some(reason) = full {
            if self.evictions_pending() {
                return Err(self.refuse(reason, now));
            }
            let Some((victim, victim_handle)) = self.unproven.pop_first() else {
                return Err(self.refuse(reason, now));
            };
            self.evicted.insert(victim);
            evict = Some(victim_handle);
            log = due(&mut self.evictions_logged, now);
        }
        *self.per_source.entry(key).or_insert(0) += 1;
        self.total += 1;
        let id = self.next_id;
        self.next_id += 1;
        self.unproven.insert(id, handle);
        Ok(Admitted { id, evict, log })
    }

    /// Sets `max-connections-per-ip` and `max-connections` anew (a reload); the descriptor
    /// budget stays. Connections already open beyond a lowered cap stay open: the cap
    /// applies to those accepted from now on, as it does when the relay fills up.
    pub fn set_caps(&mut self, per_ip: u32, total: u32) {
        self.limits.per_ip = per_ip;
        self.limits.total = total;
    }

    /// Whether as many evicted connections are still closing as may be: a full relay refuses
    /// newcomers until some have.
    pub fn evictions_pending(&self) -> bool {
        self.evicted.len() >= EVICTION_SLACK
    }

    /// Admits a TCP peer connection of a TCP allocation (RFC 6062) against the descriptor
    /// budget alone: a peer is not a client, so the per-source and total caps, which bound
    /// what clients may hold, do not apply, and it is never evicted (its allocation holds it).
    /// Released with [`Admission::release_peer`].
    pub fn admit_peer(&mut self, now: Instant) -> Result<u64, Refused> {
        let settled = self.total - self.evicted.len() as u64;
        if settled >= self.limits.descriptors {
            return Err(self.refuse(Refusal::Descriptors, now));
        }
        self.total += 1;
        let id = self.next_id;
        self.next_id += 1;
        Ok(id)
    }

    /// A peer connection [`Admission::admit_peer`] took has closed.
    pub fn release_peer(&mut self) {
        self.total -= 1;
    }

    /// Connection `id` holds an allocation now: it is not evicted while it does.
    pub fn prove(&mut self, id: u64) {
        self.unproven.remove(&id);
    }

    /// Connection `id`'s allocation has ended and the connection stays open: it may be
    /// evicted again, by its age since it was admitted, unless it has been evicted already.
    pub fn unprove(&mut self, id: u64, handle: T) {
        if !self.evicted.contains(&id) {
            self.unproven.insert(id, handle);
        }
    }

    /// Connection `id`, which [`Admission::admit`] took from `ip`, has closed; whether it
    /// was one that had been evicted.
    pub fn release(&mut self, ip: IpAddr, id: u64) -> bool {
        let key = source_key(ip);
        let Some(n) = self.per_source.get_mut(&key) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            // Sources come and go: an entry per address ever seen would grow forever.
            self.per_source.remove(&key);
        }
        self.total -= 1;
        let was_evicted = self.evicted.remove(&id);
        if !was_evicted {
            self.unproven.remove(&id);
        }
        was_evicted
    }

    /// Connections now open.
    #[cfg(test)]
    fn open(&self) -> u64 {
        self.total
    }

    fn refuse(&mut self, reason: Refusal, now: Instant) -> Refused {
        let log = due(&mut self.logged[reason as usize], now);
        Refused { reason, log }
    }
}

/// Counts one more event in `(last logged, events since)`; `Some(events)` if a log line is
/// due at `now`.
fn due((last, since): &mut (Option<Instant>, u64), now: Instant) -> Option<u64> {
    *since += 1;
    let due = last.is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
    due.then(|| {
        *last = Some(now);
        std::mem::take(since)
    })
}

/// The workers' one [`Admission`], and the count of what it refused and evicted for
/// `/metrics`.
#[derive(Debug)]
pub struct SharedAdmission {
    inner: Mutex<Admission<Arc<Notify>>>,
    refused: [AtomicU64; 3],
    evicted: AtomicU64,
    /// Woken when an evicted connection has closed.
    eviction_done: Notify,
}

/// An admitted connection; dropping it releases its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<SharedAdmission>,
    /// The client's address; `None` for a peer connection ([`SharedAdmission::admit_peer`]).
    ip: Option<IpAddr>,
    id: u64,
    evicted: Arc<Notify>,
    /// Whether [`Ticket::set_allocated`] last said the connection holds an allocation.
    allocated: std::sync::atomic::AtomicBool,
}

impl Ticket {
    /// Tells the admission whether the connection holds an allocation (and so is not
    /// evicted); its lock is taken only when that changed since the last call.
    pub fn set_allocated(&self, allocated: bool) {
        if self.allocated.swap(allocated, Ordering::Relaxed) != allocated {
            if allocated {
                self.prove();
            } else {
                self.unprove();
            }
        }
    }

    /// Completes when the connection has been evicted to make room for another.
    pub async fn evicted(&self) {
        self.evicted.notified().await
    }

    /// The connection holds an allocation now, and is not evicted while it does.
    pub fn prove(&self) {
        self.admission.lock().prove(self.id);
    }

    /// The connection's allocation has ended: it may be evicted again.
    pub fn unprove(&self) {
        self.admission
            .lock()
            .unprove(self.id, Arc::clone(&self.evicted));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            self.admission.lock().release_peer();
            return;
        };
        let was_evicted = self.admission.lock().release(ip, self.id);
        if was_evicted {
            self.admission.eviction_done.notify_waiters();
        }
    }
}

/// A ticket, and `Some(n)` when a log line about `n` evictions is due.
#[derive(Debug)]
pub struct Entry {
    /// The admitted connection's place.
    pub ticket: Ticket,
    /// As [`Refused::log`], for evictions.
    pub evictions_to_log: Option<u64>,
}

impl SharedAdmission {
    /// One admission for all workers.
    pub fn new(limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Admission::new(limits)),
            refused: Default::default(),
            evicted: AtomicU64::new(0),
            eviction_done: Notify::new(),
        })
    }

    /// [`Admission::admit`], with a [`Ticket`] that releases the place when dropped; an
    /// evicted connection is told to close.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Entry, Refused> {
        let evicted = Arc::new(Notify::new());
        let admitted = self.lock().admit(ip, now, Arc::clone(&evicted));
        match admitted {
            Ok(Admitted { id, evict, log }) => {
                if let Some(victim) = evict {
                    // A stored permit: the victim closes even if it is not waiting right now.
                    victim.notify_one();
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Entry {
                    ticket: Ticket {
                        admission: Arc::clone(self),
                        ip: Some(ip),
                        id,
                        evicted,
                        allocated: Default::default(),
                    },
                    evictions_to_log: log,
                })
            }
            Err(refused) => {
                self.refused[refused.reason as usize].fetch_add(1, Ordering::Relaxed);
                Err(refused)
            }
        }
    }

    /// [`Admission::admit_peer`], with a [`Ticket`] that releases the place when dropped.
    pub fn admit_peer(self: &Arc<Self>, now: Instant) -> Result<Ticket, Refused> {
        let admitted = self.lock().admit_peer(now);
        match admitted {
            Ok(id) => Ok(Ticket {
                admission: Arc::clone(self),
                ip: None,
                id,
                evicted: Arc::new(Notify::new()),
                allocated: Default::default(),
            }),
            Err(refused) => {
                self.refused[refused.reason as usize].fetch_add(1, Ordering::Relaxed);
                Err(refused)
            }
        }
    }

    /// [`Admission::set_caps`]. The caps live with the counts they bound, behind the mutex
    /// every accept already takes, so a reload takes it once and no accept sees half of it.
    pub fn set_caps(&self, per_ip: u32, total: u32) {
        self.lock().set_caps(per_ip, total);
    }

    /// Connections refused so far, by reason (in [`Refusal::ALL`] order), without the lock.
    pub fn refused(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Completes once fewer evicted connections are closing than
    /// [`Admission::evictions_pending`] allows (at once if they are).
    pub async fn evictions_settled(&self) {
        loop {
            // Registered before the check, so a close in between is not missed.
            let closed = self.eviction_done.notified();
            if !self.lock().evictions_pending() {
                return;
            }
            closed.await;
        }
    }

    /// Connections evicted so far to make room for others, without the lock.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Admission<Arc<Notify>>> {
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

    /// Admits `from` with its id as its handle; the id, and the evicted one's.
    fn admit(
        a: &mut Admission<u64>,
        from: &str,
        now: Instant,
    ) -> Result<(u64, Option<u64>), Refusal> {
        let handle = a.next_id;
        a.admit(ip(from), now, handle)
            .map(|admitted| {
                assert_eq!(admitted.id, handle);
                (admitted.id, admitted.evict)
            })
            .map_err(|refused| refused.reason)
    }

    #[test]
    fn peer_connections_count_against_the_descriptor_budget_only() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 1, 3));
        admit(&mut a, "192.0.2.1", t0).unwrap();
        // Past the client caps (one per source, one in all), peers still get descriptors.
        a.admit_peer(t0).unwrap();
        a.admit_peer(t0).unwrap();
        assert_eq!(a.open(), 3);
        let refused = a.admit_peer(t0).unwrap_err();
        assert_eq!(refused.reason, Refusal::Descriptors);
        // A full relay evicts the client without an allocation, never a peer connection.
        assert_eq!(admit(&mut a, "192.0.2.2", t0).map(|(_, e)| e), Ok(Some(0)));
        a.release_peer();
        assert_eq!(a.open(), 3, "the evicted client is still closing");
    }

    #[test]
    fn lowered_caps_keep_open_connections_and_refuse_new_ones() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(3, 0, 1000));
        for _ in 0..3 {
            a.admit(ip("192.0.2.1"), t0, ()).unwrap();
        }
        a.set_caps(2, 0);
        assert_eq!(a.open(), 3, "open connections stay");
        let refused = a.admit(ip("192.0.2.1"), t0, ()).unwrap_err();
        assert_eq!(refused.reason, Refusal::PerIp);
        // Raised again, or off: the source is admitted.
        a.set_caps(0, 0);
        assert!(a.admit(ip("192.0.2.1"), t0, ()).is_ok());
        assert_eq!(
            a.limits.descriptors, 1000,
            "the descriptor budget is not a setting"
        );
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(2, 0, 1000));
        let (first, _) = admit(&mut a, "192.0.2.1", t0).unwrap();
        admit(&mut a, "192.0.2.1", t0).unwrap();
        assert_eq!(admit(&mut a, "192.0.2.1", t0), Err(Refusal::PerIp));
        // Another source is not affected; a closed connection frees a place.
        admit(&mut a, "192.0.2.2", t0).unwrap();
        a.release(ip("192.0.2.1"), first);
        admit(&mut a, "192.0.2.1", t0).unwrap();
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 1000));
        admit(&mut a, "2001:db8:1:2::1", t0).unwrap();
        assert_eq!(
            admit(&mut a, "2001:db8:1:2:ffff::9", t0),
            Err(Refusal::PerIp)
        );
        admit(&mut a, "2001:db8:1:3::1", t0).unwrap();
        admit(&mut a, "198.51.100.7", t0).unwrap();
        assert_eq!(
            admit(&mut a, "::ffff:198.51.100.7", t0),
            Err(Refusal::PerIp)
        );
    }

    #[test]
    fn a_full_relay_refuses_when_every_connection_holds_an_allocation() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(0, 2, 1000));
        for i in 1..=2 {
            let (id, _) = admit(&mut a, &format!("192.0.2.{i}"), t0).unwrap();
            a.prove(id);
        }
        assert_eq!(admit(&mut a, "192.0.2.3", t0), Err(Refusal::Total));
        // The budget is the harder limit, so it is what a full relay reports.
        let mut a = Admission::new(limits(0, 5, 2));
        let mut ids = Vec::new();
        for i in 1..=2 {
            let (id, _) = admit(&mut a, &format!("192.0.2.{i}"), t0).unwrap();
            a.prove(id);
            ids.push(id);
        }
        assert_eq!(admit(&mut a, "192.0.2.3", t0), Err(Refusal::Descriptors));
        a.release(ip("192.0.2.1"), ids[0]);
        admit(&mut a, "192.0.2.3", t0).unwrap();
        // No budget at all: nothing is admitted.
        let mut a = Admission::new(limits(0, 0, 0));
        assert_eq!(admit(&mut a, "192.0.2.1", t0), Err(Refusal::Descriptors));
    }

    #[test]
    fn a_full_relay_evicts_its_oldest_connection_without_an_allocation() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(0, 0, 3));
        let (oldest, _) = admit(&mut a, "192.0.2.1", t0).unwrap();
        let (allocated, _) = admit(&mut a, "192.0.2.2", t0).unwrap();
        let (newer, _) = admit(&mut a, "192.0.2.3", t0).unwrap();
        a.prove(allocated);
        // Full: the newcomer gets the place of the oldest idle connection, not the one with
        // an allocation, though that is older than `newer`.
        let (fourth, evicted) = admit(&mut a, "192.0.2.4", t0).unwrap();
        assert_eq!(evicted, Some(oldest));
        assert_eq!(
            a.open(),
            4,
            "the evicted one holds its place until it closes"
        );
        let (_, evicted) = admit(&mut a, "192.0.2.5", t0).unwrap();
        assert_eq!(evicted, Some(newer));
        a.release(ip("192.0.2.1"), oldest);
        a.release(ip("192.0.2.3"), newer);
        assert_eq!(a.open(), 3);
        // Now only `fourth` and the fifth have no allocation; the oldest of them goes.
        let (_, evicted) = admit(&mut a, "192.0.2.6", t0).unwrap();
        assert_eq!(evicted, Some(fourth));
        // An allocation that ended leaves its connection evictable again, by its age.
        a.unprove(allocated, allocated);
        let (_, evicted) = admit(&mut a, "192.0.2.7", t0).unwrap();
        assert_eq!(evicted, Some(allocated));
    }

    #[test]
    fn evictions_in_flight_are_bounded_and_a_source_cap_is_not_bypassed() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 100));
        for i in 0..100 {
            admit(&mut a, &format!("10.0.{}.{}", i / 200, i % 200 + 1), t0).unwrap();
        }
        // Nobody closes the evicted: after EVICTION_SLACK of them the relay refuses.
        for i in 0..EVICTION_SLACK {
            let (_, evicted) = admit(&mut a, &format!("10.1.0.{}", i + 1), t0).unwrap();
            assert_eq!(evicted, Some(i as u64));
        }
        assert_eq!(admit(&mut a, "10.2.0.1", t0), Err(Refusal::Descriptors));
        // A source at its cap is refused as such, full relay or not.
        assert_eq!(admit(&mut a, "10.0.0.1", t0), Err(Refusal::PerIp));
        // An evicted connection that closes lets one more in.
        assert!(a.release(ip("10.0.0.1"), 0), "it was an evicted one");
        let (_, evicted) = admit(&mut a, "10.2.0.1", t0).unwrap();
        assert_eq!(evicted, Some(EVICTION_SLACK as u64));
    }

    #[test]
    fn releasing_forgets_sources_and_ignores_strangers() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 10));
        let (id, _) = admit(&mut a, "192.0.2.1", t0).unwrap();
        a.release(ip("192.0.2.1"), id);
        a.release(ip("192.0.2.1"), id);
        a.release(ip("192.0.2.9"), 7);
        assert_eq!(a.open(), 0);
        assert!(a.per_source.is_empty());
        assert!(a.unproven.is_empty());
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_since() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(1, 0, 1000));
        a.admit(ip("192.0.2.1"), t0, ()).unwrap();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let log = |a: &mut Admission<()>, s| a.admit(ip("192.0.2.1"), at(s), ()).unwrap_err().log;
        assert_eq!(log(&mut a, 0), Some(1));
        for s in [1, 5, 9] {
            assert_eq!(log(&mut a, s), None);
        }
        // Another reason has its own interval.
        let mut full = Admission::new(limits(0, 0, 0));
        assert_eq!(log(&mut full, 1), Some(1));
        assert_eq!(log(&mut a, 10), Some(4));
        assert_eq!(log(&mut a, 11), None);
    }

    #[tokio::test]
    async fn tickets_release_their_place_when_dropped_and_hear_of_their_eviction() {
        let t0 = Instant::now();
        let shared = SharedAdmission::new(limits(1, 0, 2));
        let first = shared.admit(ip("192.0.2.1"), t0).unwrap().ticket;
        assert!(shared.admit(ip("192.0.2.1"), t0).is_err());
        assert_eq!(shared.refused(), [1, 0, 0]);
        drop(first);
        let first = shared.admit(ip("192.0.2.1"), t0).unwrap().ticket;
        let second = shared.admit(ip("192.0.2.2"), t0).unwrap().ticket;
        second.prove();
        let entry = shared.admit(ip("192.0.2.3"), t0).unwrap();
        assert_eq!(entry.evictions_to_log, Some(1));
        assert_eq!(shared.evicted(), 1);
        // The permit waits for the victim, whenever it next listens.
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest connection without an allocation is told it was evicted");
    }

    #[tokio::test]
    async fn newcomers_wait_while_too_many_evicted_connections_are_closing() {
        let t0 = Instant::now();
        let shared = SharedAdmission::new(limits(0, 0, 1));
        // One place; every newcomer evicts the one before, and none of them closes.
        let mut tickets = vec![shared.admit(ip("192.0.2.1"), t0).unwrap().ticket];
        for _ in 0..EVICTION_SLACK {
            tickets.push(shared.admit(ip("192.0.2.1"), t0).unwrap().ticket);
        }
        let refused = shared.admit(ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(refused.reason, Refusal::Descriptors);
        let waiter = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { shared.evictions_settled().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "settled with every evicted one still open"
        );
        // The oldest, evicted first, closes: there is room to evict again.
        drop(tickets.remove(0));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter hears that an evicted connection closed")
            .unwrap();
        assert!(shared.admit(ip("192.0.2.1"), t0).is_ok());
    }
}
