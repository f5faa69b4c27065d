//! Per-source rate limit for unauthenticated STUN/TURN requests, shared by all workers.
//!
//! Binding requests and the first (401-answered) Allocate cost the server
//! work before any credential is checked, so a flood of them from many
//! addresses is cheap for an attacker. A [`RateTable`] keeps a token bucket
//! per source and refuses requests once a source's bucket is empty.
//!
//! Sources are keyed by IPv4 address, or by IPv6 /64 prefix because a single
//! subscriber is routinely handed a whole /64 and can pick any address in it.
//! IPv4-mapped IPv6 addresses (what a dual-stack socket reports for IPv4
//! clients) are keyed as the IPv4 address; keying them by /64 would put every
//! IPv4 client into one shared bucket.
//!
//! # One budget per source, whatever the worker count
//!
//! The kernel spreads one source's packets over the workers by 4-tuple, so a
//! table per worker would hand a source one budget per worker. The process
//! therefore has one table, shared by every worker's [`crate::Server`]: a
//! fixed array of `AtomicU64` buckets, each updated with `compare_exchange`,
//! so checking a request allocates nothing and takes no lock.
//!
//! The array is indexed by a keyed hash of the source and holds no keys: two
//! sources whose hashes land on one bucket share its budget. That is the price
//! of a table that never grows, never needs purging and cannot be filled up by
//! an attacker cycling through addresses (the earlier per-worker map had to
//! refuse newcomers once full). The key is random per process, so which
//! sources share cannot be chosen from outside; with 65,536 buckets
//! ([`RateTable::DEFAULT_SLOTS`]) and a few hundred sources in their first
//! seconds at once, a given source shares a bucket with another well under 1 % of
//! the time; when it does, the two draw on one budget (so a flooding neighbour can
//! use it up, as a neighbour in the same IPv6 /64 always can).
//!
//! # A bucket in 64 bits
//!
//! A bucket packs the time it was last refilled (milliseconds since the
//! table's origin, 40 bits: 34 years) and what its source has *spent*
//! (24 bits, in thousandths of a request). Storing what was spent rather than
//! what is left makes a zeroed bucket a full one, and a lowered `burst` (on
//! reload) applies at once to what sources already spent. Thousandths make the
//! arithmetic exact: a source regains `per_second` thousandths per
//! millisecond, so there is no drift and a source never gets more than
//! `burst + per_second * elapsed_seconds` requests through, over all workers
//! together. 24 bits cap `burst` at [`MAX_BURST`] requests.
//!
//! The arithmetic is the shared one of `icegate_common::token_bucket` ([`spend`], on
//! [`Millis`]); only the storage is this module's own, since a `TokenBucket` value could not
//! be updated with one `compare_exchange`.
//!
//! Time only ever comes in as `Instant` arguments. Workers read the clock
//! separately, so one may pass a `now` a little earlier than another already
//! did; the table then uses the latest time it has seen, so no interval is
//! ever credited twice.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use foldhash::quality::FixedState;
use icegate_common::token_bucket::{spend, Millis, Timestamp};

/// One request in fixed-point units: regaining `per_second` units per millisecond gives
/// `per_second` requests per second.
const UNITS_PER_TOKEN: u64 = Millis::TICKS_PER_SECOND;
/// Bits of a bucket holding the units spent; the rest hold the refill time.
const SPENT_BITS: u32 = 24;
const SPENT_MASK: u64 = (1 << SPENT_BITS) - 1;
/// The latest refill time a bucket can hold, in milliseconds (about 34 years).
const MAX_MILLIS: u64 = (1 << (64 - SPENT_BITS)) - 1;
/// The largest `burst` a bucket can hold.
pub const MAX_BURST: u32 = (SPENT_MASK / UNITS_PER_TOKEN) as u32;

/// Rate limit settings. They may change on reload; the table they apply to does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per source; 0 disables the limiter.
    pub per_second: u32,
    /// Bucket size: requests a fresh or idle source may send at once (at least 1 and at
    /// most [`MAX_BURST`] are used).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    /// 20 requests/s, burst of 40.
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 40,
        }
    }
}

impl RateLimitConfig {
    /// A full bucket, in fixed-point units.
    fn capacity(&self) -> u64 {
        // burst 0 would deny everything forever; one request keeps the rate usable.
        u64::from(self.burst.clamp(1, MAX_BURST)) * UNITS_PER_TOKEN
    }
}

/// Who a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    /// The upper 64 bits of the address.
    V6Prefix(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.to_bits()),
                // Truncation keeps exactly the /64 prefix.
                None => SourceKey::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// The decision for one request: the bucket after taking a request from it at `now_ms`, or
/// `None` when the bucket is empty. Pure, so that it is tested without threads.
fn take(bucket: u64, now_ms: u64, per_second: u32, capacity: u64) -> Option<u64> {
    let last = bucket >> SPENT_BITS;
    // Time going backwards regains nothing, and `last` never moves back, so the same
    // interval can't be credited twice.
    let elapsed = Millis(now_ms).ticks_since(Millis(last));
    let spent = spend(
        bucket & SPENT_MASK,
        elapsed,
        u64::from(per_second),
        UNITS_PER_TOKEN,
        capacity,
    )?;
    // `capacity` fits in SPENT_BITS, so `spent` does.
    Some((last.max(now_ms) << SPENT_BITS) | spent)
}

/// Token buckets of every source, shared by all workers of a process; see the module docs.
#[derive(Debug)]
pub struct RateTable {
    buckets: Box<[AtomicU64]>,
    /// Keyed hasher: the keys are attacker-chosen source addresses.
    hasher: FixedState,
    /// Zero point of the millisecond timestamps in the buckets.
    origin: Instant,
    /// The latest time any caller passed, in milliseconds since `origin`.
    latest: AtomicU64,
}

impl RateTable {
    /// Buckets of the table the relay shares between its workers: 512 KiB.
    pub const DEFAULT_SLOTS: usize = 65_536;

    /// A table of `slots` buckets (at least one), all full. `key` keys the hash that maps
    /// sources to buckets and must be random in production; `origin` is the time base for
    /// later calls.
    pub fn new(slots: usize, key: u64, origin: Instant) -> Self {
        Self {
            buckets: (0..slots.max(1)).map(|_| AtomicU64::new(0)).collect(),
            hasher: FixedState::with_seed(key),
            origin,
            latest: AtomicU64::new(0),
        }
    }

    /// The number of buckets.
    pub fn slots(&self) -> usize {
        self.buckets.len()
    }

    /// Returns `true` (and takes a request from the source's bucket) if a request from `ip`
    /// at `now` may be processed under `config`. Lock-free and allocation-free.
    pub fn check(&self, config: &RateLimitConfig, ip: IpAddr, now: Instant) -> bool {
        if config.per_second == 0 {
            return true;
        }
        let now_ms = self.millis(now);
        let capacity = config.capacity();
        let bucket = &self.buckets[self.slot_of(ip)];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let Some(next) = take(current, now_ms, config.per_second, capacity) else {
                return false;
            };
            // Relaxed is enough: the bucket is the only data, and compare_exchange makes
            // every take see the one before it.
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    fn slot_of(&self, ip: IpAddr) -> usize {
        let hash = self.hasher.hash_one(SourceKey::of(ip));
        // Multiply-shift maps the hash onto any table size without a division.
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    fn millis(&self, now: Instant) -> u64 {
        // An `Instant` before the origin counts as the origin; past 34 years the clock
        // stops, which only stops refills.
        let ms = now.saturating_duration_since(self.origin).as_millis();
        let ms = u64::try_from(ms).map_or(MAX_MILLIS, |ms| ms.min(MAX_MILLIS));
        // Clamping to the latest time any worker passed keeps a stale `now` from starting an
        // untouched bucket in the past, which a later call would then credit with time that
        // other buckets already had. The store happens at most once per millisecond, so the
        // shared word is read far more often than written and stays cheap to share.
        let latest = self.latest.load(Ordering::Relaxed);
        if ms > latest {
            self.latest.fetch_max(ms, Ordering::Relaxed);
            ms
        } else {
            latest
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cfg(per_second: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig { per_second, burst }
    }

    fn table(t0: Instant) -> RateTable {
        RateTable::new(RateTable::DEFAULT_SLOTS, 0x5eed, t0)
    }

    fn count_allowed(
        t: &RateTable,
        config: &RateLimitConfig,
        addr: IpAddr,
        now: Instant,
        n: usize,
    ) -> usize {
        (0..n).filter(|_| t.check(config, addr, now)).count()
    }

    /// Two addresses whose buckets differ in `t`, so that tests about separate budgets do not
    /// depend on the hash key.
    fn separate(t: &RateTable, a: &str, b: &str) -> (IpAddr, IpAddr) {
        let (a, b) = (ip(a), ip(b));
        assert_ne!(t.slot_of(a), t.slot_of(b), "pick other test addresses");
        (a, b)
    }

    #[test]
    fn default_config() {
        assert_eq!(RateLimitConfig::default(), cfg(20, 40));
    }

    #[test]
    fn take_is_exact_fixed_point() {
        let capacity = cfg(10, 2).capacity();
        // A zeroed bucket is full: two requests, then none at the same millisecond.
        let b = take(0, 5, 10, capacity).expect("first");
        let b = take(b, 5, 10, capacity).expect("second");
        assert_eq!(take(b, 5, 10, capacity), None);
        // 10/s regains 10 thousandths per millisecond: a request after exactly 100 ms.
        assert_eq!(take(b, 104, 10, capacity), None);
        let b = take(b, 105, 10, capacity).expect("refilled");
        assert_eq!(b >> SPENT_BITS, 105);
        assert_eq!(b & SPENT_MASK, 2 * UNITS_PER_TOKEN);
        // An earlier `now` regains nothing and leaves the time where it was.
        assert_eq!(take(b, 50, 10, capacity), None);
    }

    #[test]
    fn burst_then_deny() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(10, 5);
        let (a, b) = separate(&t, "203.0.113.7", "203.0.113.8");
        assert_eq!(count_allowed(&t, &c, a, t0, 20), 5);
        assert!(!t.check(&c, a, t0));
        // Another source is unaffected.
        assert!(t.check(&c, b, t0));
    }

    #[test]
    fn refill_after_time() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(10, 5);
        let a = ip("198.51.100.1");
        assert_eq!(count_allowed(&t, &c, a, t0, 5), 5);
        // 10/s: one request per 100 ms, exactly, with no rounding loss.
        assert!(!t.check(&c, a, t0 + Duration::from_millis(99)));
        assert!(t.check(&c, a, t0 + Duration::from_millis(100)));
        assert!(!t.check(&c, a, t0 + Duration::from_millis(100)));
        assert_eq!(
            count_allowed(&t, &c, a, t0 + Duration::from_millis(350), 10),
            2
        );
        // Refill stops at the burst size.
        assert_eq!(
            count_allowed(&t, &c, a, t0 + Duration::from_secs(60), 100),
            5
        );
    }

    #[test]
    fn non_integer_rate_has_no_drift() {
        let t0 = Instant::now();
        let t = table(t0);
        // 3/s: a request every 333.33... ms, which whole milliseconds can't hold.
        // Burst 2 so the sub-request surplus after each refill is kept, not capped.
        let c = cfg(3, 2);
        let a = ip("192.0.2.1");
        let allowed = (0..=10_000u64)
            .filter(|&ms| t.check(&c, a, t0 + Duration::from_millis(ms)))
            .count();
        // 2 burst + 3/s over 10 s.
        assert_eq!(allowed, 32);
    }

    #[test]
    fn ipv6_same_64_shares_bucket() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(1, 4);
        let addrs = [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:1234::9",
        ];
        for a in addrs {
            assert!(t.check(&c, ip(a), t0), "{a}");
        }
        assert!(!t.check(&c, ip("2001:db8:1:2::5"), t0));
        // A neighbouring /64 has its own bucket.
        let (_, neighbour) = separate(&t, "2001:db8:1:2::1", "2001:db8:1:3::1");
        assert!(t.check(&c, neighbour, t0));
    }

    #[test]
    fn ipv4_mapped_keyed_as_ipv4() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(1, 2);
        assert_eq!(
            t.slot_of(ip("192.0.2.1")),
            t.slot_of(ip("::ffff:192.0.2.1"))
        );
        assert!(t.check(&c, ip("192.0.2.1"), t0));
        assert!(t.check(&c, ip("::ffff:192.0.2.1"), t0));
        assert!(!t.check(&c, ip("192.0.2.1"), t0));
        // Distinct IPv4 clients behind a dual-stack socket must not share a bucket.
        let (_, other) = separate(&t, "192.0.2.1", "::ffff:192.0.2.2");
        assert!(t.check(&c, other, t0));
    }

    #[test]
    fn colliding_sources_share_a_budget() {
        let t0 = Instant::now();
        // One bucket: every source collides.
        let t = RateTable::new(1, 1, t0);
        let c = cfg(1, 3);
        assert_eq!(t.slots(), 1);
        assert!(t.check(&c, ip("192.0.2.1"), t0));
        assert!(t.check(&c, ip("2001:db8::1"), t0));
        assert!(t.check(&c, ip("198.51.100.9"), t0));
        assert!(!t.check(&c, ip("192.0.2.1"), t0));
        assert!(!t.check(&c, ip("203.0.113.1"), t0));
    }

    #[test]
    fn the_key_decides_which_sources_share() {
        let t0 = Instant::now();
        let (a, b) = (RateTable::new(1024, 1, t0), RateTable::new(1024, 2, t0));
        let moved = (0..64u8)
            .map(|i| IpAddr::from([192, 0, 2, i]))
            .filter(|&ip| a.slot_of(ip) != b.slot_of(ip))
            .count();
        assert!(
            moved > 48,
            "{moved} of 64 sources changed bucket with the key"
        );
    }

    #[test]
    fn unlimited_mode_touches_nothing() {
        let t0 = Instant::now();
        let t = RateTable::new(1, 1, t0);
        let c = cfg(0, 0);
        for i in 0..1000u32 {
            assert!(t.check(&c, IpAddr::from(i.to_be_bytes()), t0));
        }
        assert_eq!(t.buckets[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn zero_burst_still_allows_the_rate() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(2, 0);
        let a = ip("192.0.2.3");
        assert_eq!(count_allowed(&t, &c, a, t0, 5), 1);
        assert_eq!(
            count_allowed(&t, &c, a, t0 + Duration::from_millis(500), 5),
            1
        );
    }

    #[test]
    fn burst_is_capped_at_what_a_bucket_holds() {
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(u32::MAX, u32::MAX);
        let a = ip("192.0.2.5");
        assert_eq!(
            count_allowed(&t, &c, a, t0, MAX_BURST as usize + 10),
            MAX_BURST as usize
        );
        // A huge rate refills it within a millisecond, with no overflow.
        assert!(t.check(&c, a, t0 + Duration::from_millis(1)));
    }

    #[test]
    fn a_lowered_burst_applies_to_what_was_spent() {
        let t0 = Instant::now();
        let t = table(t0);
        let a = ip("192.0.2.6");
        assert_eq!(count_allowed(&t, &cfg(1, 10), a, t0, 6), 6);
        // Reloaded with burst 4: 6 spent is already over it, until 3 s regain 3.
        assert!(!t.check(&cfg(1, 4), a, t0 + Duration::from_secs(2)));
        assert!(t.check(&cfg(1, 4), a, t0 + Duration::from_secs(3)));
        assert!(!t.check(&cfg(1, 4), a, t0 + Duration::from_secs(3)));
    }

    #[test]
    fn huge_time_jump_and_backwards_time() {
        let t0 = Instant::now();
        let t = table(t0);
        let a = ip("192.0.2.4");
        let far = t0 + Duration::from_secs(3600 * 24 * 365 * 100);
        assert!(t.check(&cfg(u32::MAX, u32::MAX), a, far));
        // Before the origin and before the last seen time: no panic, no credit.
        let t = table(t0 + Duration::from_secs(10));
        let c = cfg(1, 1);
        assert!(t.check(&c, a, t0 + Duration::from_secs(20)));
        assert!(!t.check(&c, a, t0));
        assert!(!t.check(&c, a, t0 + Duration::from_secs(20)));
        assert!(t.check(&c, a, t0 + Duration::from_secs(21)));
    }

    #[test]
    fn threads_hitting_one_source_together_get_the_budget_once() {
        const THREADS: usize = 8;
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(5, 40);
        let a = ip("203.0.113.50");
        let allowed = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    start.wait();
                    let n = count_allowed(&t, &c, a, t0, 1_000);
                    allowed.fetch_add(n, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(allowed.into_inner(), 40);
    }

    #[test]
    fn threads_on_a_shared_fake_clock_never_exceed_burst_plus_rate() {
        const THREADS: usize = 8;
        let t0 = Instant::now();
        let t = table(t0);
        let c = cfg(50, 10);
        let a = ip("2001:db8:77::1");
        // The fake clock, in ms; every thread moves it on now and then, and each reads it
        // at its own moment, so they pass slightly different (and stale) times.
        let clock = AtomicU64::new(0);
        let allowed = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|s| {
            for i in 0..THREADS {
                let (t, c, clock, allowed, start) = (&t, &c, &clock, &allowed, &start);
                s.spawn(move || {
                    start.wait();
                    for n in 0..20_000usize {
                        if n % (THREADS + i) == 0 {
                            clock.fetch_add(1, Ordering::Relaxed);
                        }
                        let now = t0 + Duration::from_millis(clock.load(Ordering::Relaxed));
                        if t.check(c, a, now) {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let elapsed_ms = clock.into_inner();
        let allowed = allowed.into_inner() as u64;
        // 10 burst + 50/s, to the thousandth, over the time the clock moved.
        let limit = 10 + 50 * elapsed_ms / 1_000;
        assert!(allowed <= limit, "{allowed} > {limit} over {elapsed_ms} ms");
        // Nor stingy: only what the last readers of the clock had no time to use is lost.
        assert!(
            allowed * 10 >= limit * 9,
            "{allowed} << {limit} over {elapsed_ms} ms"
        );
    }

    /// Small address pool so that sources repeat and /64s collide.
    fn pool_ip(i: u8) -> IpAddr {
        match i % 6 {
            0 => ip("192.0.2.1"),
            1 => ip("::ffff:192.0.2.1"),
            2 => ip("192.0.2.2"),
            3 => ip("2001:db8::1"),
            4 => ip("2001:db8::ffff"),
            _ => ip("2001:db8:0:1::1"),
        }
    }

    proptest! {
        #[test]
        fn never_exceeds_burst_plus_rate(
            per_second in 1u32..50,
            burst in 0u32..20,
            slots in 1usize..4,
            ops in proptest::collection::vec((any::<u8>(), -2_000i64..3_000, 0u8..20), 1..300),
        ) {
            let base = Instant::now();
            let t = RateTable::new(slots, 9, base);
            let c = cfg(per_second, burst);
            // Start mid-way so that deltas can move the clock backwards.
            let mut offset_ms: u64 = 10_000;
            // Mirrors the table's clock, which starts at `base`.
            let mut max_ms = 0;
            // bucket -> (first allowed at, allowed count); colliding sources count together.
            let mut seen: HashMap<usize, (u64, u64)> = HashMap::new();
            for (who, delta, action) in ops {
                offset_ms = offset_ms.saturating_add_signed(delta);
                if action == 0 {
                    // An occasional jump of hours.
                    offset_ms += 5 * 3600 * 1000;
                }
                max_ms = max_ms.max(offset_ms);
                let now = base + Duration::from_millis(offset_ms);
                let addr = pool_ip(who);
                if t.check(&c, addr, now) {
                    let entry = seen.entry(t.slot_of(addr)).or_insert((max_ms, 0));
                    entry.1 += 1;
                }
                for &(first_ms, count) in seen.values() {
                    let limit = u64::from(burst.max(1))
                        + u64::from(per_second) * (max_ms - first_ms) / 1_000;
                    prop_assert!(count <= limit, "{} > {}", count, limit);
                }
            }
        }
    }
}
