//! Per-source rate limit for unauthenticated STUN/TURN requests.
//!
//! Binding requests and the first (401-answered) Allocate cost the server
//! work before any credential is checked, so a flood of them from many
//! addresses is cheap for an attacker. [`RateLimiter`] keeps one token bucket
//! per source and refuses requests once a source's bucket is empty.
//!
//! Sources are keyed by IPv4 address, or by IPv6 /64 prefix because a single
//! subscriber is routinely handed a whole /64 and can pick any address in it.
//! IPv4-mapped IPv6 addresses (what a dual-stack socket reports for IPv4
//! clients) are keyed as the IPv4 address; keying them by /64 would put every
//! IPv4 client into one shared bucket.
//!
//! Token arithmetic is exact integer fixed point (one token is 10^9 units and
//! a bucket gains `per_second` units per elapsed nanosecond), so there is no
//! drift and a source can never get more than
//! `burst + per_second * elapsed_seconds` requests through. Time only ever
//! comes in as `Instant` arguments; a `now` earlier than one already seen
//! counts as no time passing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use foldhash::fast::RandomState;

/// One token in fixed-point units: refilling `per_second` units per nanosecond gives `per_second` tokens per second.
const UNITS_PER_TOKEN: u64 = 1_000_000_000;

/// Rate limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per source; 0 disables the limiter.
    pub per_second: u32,
    /// Bucket size: requests a fresh or idle source may send at once (at least 1 is used).
    pub burst: u32,
    /// Most sources tracked at once; new sources beyond this are refused.
    pub max_tracked: usize,
}

impl Default for RateLimitConfig {
    /// 20 requests/s, burst of 40, up to 100 000 tracked sources.
    fn default() -> Self {
        Self {
            per_second: 20,
            burst: 40,
            max_tracked: 100_000,
        }
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

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Fixed-point tokens, at most `capacity`.
    units: u64,
    /// Nanoseconds since the limiter's origin up to which `units` is current.
    last: u64,
}

/// Token bucket per source address with bounded memory.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    config: RateLimitConfig,
    /// Zero point for the compact nanosecond timestamps stored per bucket.
    origin: Instant,
    /// Full bucket in fixed-point units.
    capacity: u64,
    /// Keyed hasher: the keys are attacker-chosen source addresses.
    buckets: HashMap<SourceKey, Bucket, RandomState>,
    /// Latest time seen, in nanoseconds since `origin`; the clock never runs back past it.
    latest: u64,
    /// When a table-full purge last ran, to bound how often one can be forced.
    last_full_purge: Option<u64>,
}

impl RateLimiter {
    /// Creates a limiter; `now` is the time base for later calls.
    pub fn new(config: RateLimitConfig, now: Instant) -> Self {
        // burst 0 would deny everything forever; one token keeps the rate usable.
        let capacity = u64::from(config.burst.max(1)) * UNITS_PER_TOKEN;
        Self {
            config,
            origin: now,
            capacity,
            buckets: HashMap::with_hasher(RandomState::default()),
            latest: 0,
            last_full_purge: None,
        }
    }

    /// The configuration this limiter was built with.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Returns `true` (and consumes a token) if a request from `ip` at `now` may be processed.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.config.per_second == 0 {
            return true;
        }
        let now = self.nanos(now);
        let key = SourceKey::of(ip);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            refill(bucket, now, self.config.per_second, self.capacity);
            return match bucket.units.checked_sub(UNITS_PER_TOKEN) {
                Some(rest) => {
                    bucket.units = rest;
                    true
                }
                None => false,
            };
        }
        if self.buckets.len() >= self.config.max_tracked {
            self.purge_when_full(now);
            // Fail closed: evicting a busy source would hand it a fresh full
            // bucket on its next packet, so an attacker cycling through more
            // addresses than `max_tracked` would escape the limit entirely.
            // Refusing newcomers keeps every tracked source limited and only
            // delays new legitimate clients until idle entries are purged.
            if self.buckets.len() >= self.config.max_tracked {
                return false;
            }
        }
        self.buckets.insert(
            key,
            Bucket {
                units: self.capacity - UNITS_PER_TOKEN,
                last: now,
            },
        );
        true
    }

    /// Forgets sources whose bucket has refilled completely; call periodically.
    ///
    /// A forgotten source starts again with a full bucket, which is exactly
    /// the state it was in, so purging never changes a verdict.
    pub fn purge(&mut self, now: Instant) {
        let now = self.nanos(now);
        self.purge_at(now);
    }

    /// Number of sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn purge_at(&mut self, now: u64) {
        let (rate, capacity) = (self.config.per_second, self.capacity);
        self.buckets.retain(|_, bucket| {
            let mut b = *bucket;
            refill(&mut b, now, rate, capacity);
            b.units < capacity
        });
    }

    /// Purges unless a table-full purge already ran within one token interval.
    fn purge_when_full(&mut self, now: u64) {
        // Each purge scans the whole table, so without a floor a flood of new
        // sources against a full table of busy ones would cost a full scan per
        // packet. Capping it at `per_second` scans per second bounds that work.
        let interval = UNITS_PER_TOKEN / u64::from(self.config.per_second.max(1));
        if let Some(last) = self.last_full_purge {
            if now.saturating_sub(last) < interval {
                return;
            }
        }
        self.last_full_purge = Some(now);
        self.purge_at(now);
    }

    fn nanos(&mut self, now: Instant) -> u64 {
        // An `Instant` before the origin counts as the origin; u64 nanoseconds
        // last 584 years, and saturating past that is harmless.
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        // Clamping to the latest time seen keeps a stale `now` from creating a
        // bucket in the past that a later call would then credit twice.
        self.latest = self.latest.max(nanos);
        self.latest
    }
}

fn refill(bucket: &mut Bucket, now: u64, per_second: u32, capacity: u64) {
    // Time going backwards adds nothing, and `last` never moves back, so the
    // same interval can't be credited twice.
    let elapsed = now.saturating_sub(bucket.last);
    let gained = u128::from(elapsed) * u128::from(per_second);
    let gained = u64::try_from(gained).unwrap_or(u64::MAX);
    bucket.units = bucket.units.saturating_add(gained).min(capacity);
    bucket.last = bucket.last.max(now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap as StdHashMap;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn cfg(per_second: u32, burst: u32, max_tracked: usize) -> RateLimitConfig {
        RateLimitConfig {
            per_second,
            burst,
            max_tracked,
        }
    }

    fn count_allowed(rl: &mut RateLimiter, addr: IpAddr, now: Instant, n: usize) -> usize {
        (0..n).filter(|_| rl.check(addr, now)).count()
    }

    #[test]
    fn default_config() {
        assert_eq!(RateLimitConfig::default(), cfg(20, 40, 100_000));
    }

    #[test]
    fn burst_then_deny() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(10, 5, 100), t0);
        let a = ip("203.0.113.7");
        assert_eq!(count_allowed(&mut rl, a, t0, 20), 5);
        assert!(!rl.check(a, t0));
        // Another source is unaffected.
        assert!(rl.check(ip("203.0.113.8"), t0));
        assert_eq!(rl.tracked(), 2);
    }

    #[test]
    fn refill_after_time() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(10, 5, 100), t0);
        let a = ip("198.51.100.1");
        assert_eq!(count_allowed(&mut rl, a, t0, 5), 5);
        // 10/s: one token per 100 ms, exactly, with no rounding loss.
        assert!(!rl.check(a, t0 + Duration::from_millis(99)));
        assert!(rl.check(a, t0 + Duration::from_millis(100)));
        assert!(!rl.check(a, t0 + Duration::from_millis(100)));
        assert_eq!(
            count_allowed(&mut rl, a, t0 + Duration::from_millis(350), 10),
            2
        );
        // Refill stops at the burst size.
        assert_eq!(
            count_allowed(&mut rl, a, t0 + Duration::from_secs(60), 100),
            5
        );
    }

    #[test]
    fn non_integer_rate_has_no_drift() {
        let t0 = Instant::now();
        // 3/s: a token every 333.33... ms, which integer nanoseconds can't hold.
        // Burst 2 so the sub-token surplus after each refill is kept, not capped.
        let mut rl = RateLimiter::new(cfg(3, 2, 10), t0);
        let a = ip("192.0.2.1");
        let mut allowed = 0;
        for ms in 0..=10_000u64 {
            if rl.check(a, t0 + Duration::from_millis(ms)) {
                allowed += 1;
            }
        }
        // 2 burst + 3/s over 10 s.
        assert_eq!(allowed, 32);
    }

    #[test]
    fn ipv6_same_64_shares_bucket() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(1, 4, 100), t0);
        let addrs = [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:1234::9",
        ];
        for a in addrs {
            assert!(rl.check(ip(a), t0), "{a}");
        }
        assert!(!rl.check(ip("2001:db8:1:2::5"), t0));
        // A neighbouring /64 has its own bucket.
        assert!(rl.check(ip("2001:db8:1:3::1"), t0));
        assert_eq!(rl.tracked(), 2);
    }

    #[test]
    fn ipv4_mapped_keyed_as_ipv4() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(1, 2, 100), t0);
        assert!(rl.check(ip("192.0.2.1"), t0));
        assert!(rl.check(ip("::ffff:192.0.2.1"), t0));
        assert!(!rl.check(ip("192.0.2.1"), t0));
        // Distinct IPv4 clients behind a dual-stack socket must not share a bucket.
        assert!(rl.check(ip("::ffff:192.0.2.2"), t0));
        assert_eq!(rl.tracked(), 2);
    }

    #[test]
    fn max_tracked_fails_closed_and_recovers() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(10, 2, 3), t0);
        for i in 1..=3u8 {
            assert!(rl.check(IpAddr::from([10, 0, 0, i]), t0));
        }
        assert_eq!(rl.tracked(), 3);
        let newcomer = ip("10.0.0.4");
        assert!(!rl.check(newcomer, t0));
        assert!(!rl.check(newcomer, t0 + Duration::from_millis(10)));
        assert_eq!(rl.tracked(), 3);
        // Tracked sources keep working while newcomers are refused.
        assert!(rl.check(ip("10.0.0.1"), t0 + Duration::from_millis(10)));

        // 10.0.0.2 and .3 are full again after 100 ms; .1 is not yet.
        let t1 = t0 + Duration::from_millis(150);
        rl.purge(t1);
        assert_eq!(rl.tracked(), 1);
        assert!(rl.check(newcomer, t1));
        assert_eq!(rl.tracked(), 2);
    }

    #[test]
    fn table_full_purges_idle_sources_implicitly() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(10, 2, 2), t0);
        assert!(rl.check(ip("10.0.0.1"), t0));
        assert!(rl.check(ip("10.0.0.2"), t0));
        assert!(!rl.check(ip("10.0.0.3"), t0));
        // No explicit purge: the newcomer triggers one once the others are idle.
        assert!(rl.check(ip("10.0.0.3"), t0 + Duration::from_secs(1)));
        assert_eq!(rl.tracked(), 1);
    }

    #[test]
    fn purge_keeps_busy_sources() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(1, 3, 10), t0);
        let a = ip("192.0.2.9");
        assert_eq!(count_allowed(&mut rl, a, t0, 3), 3);
        rl.purge(t0 + Duration::from_secs(2));
        assert_eq!(rl.tracked(), 1);
        // Purging must not reset the bucket: only 2 tokens came back.
        assert_eq!(count_allowed(&mut rl, a, t0 + Duration::from_secs(2), 5), 2);
        rl.purge(t0 + Duration::from_secs(5));
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn unlimited_mode() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(0, 0, 0), t0);
        for i in 0..1000u32 {
            assert!(rl.check(IpAddr::from(i.to_be_bytes()), t0));
        }
        assert_eq!(rl.tracked(), 0);
        rl.purge(t0);
        assert_eq!(rl.tracked(), 0);
    }

    #[test]
    fn zero_burst_still_allows_the_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(2, 0, 10), t0);
        let a = ip("192.0.2.3");
        assert_eq!(count_allowed(&mut rl, a, t0, 5), 1);
        assert_eq!(
            count_allowed(&mut rl, a, t0 + Duration::from_millis(500), 5),
            1
        );
    }

    #[test]
    fn huge_time_jump_and_backwards_time() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(cfg(u32::MAX, u32::MAX, 10), t0);
        let a = ip("192.0.2.4");
        let far = t0 + Duration::from_secs(3600 * 24 * 365 * 100);
        assert!(rl.check(a, far));
        // Before the origin and before the last seen time: no panic, no credit.
        let mut rl = RateLimiter::new(cfg(1, 1, 10), t0 + Duration::from_secs(10));
        assert!(rl.check(a, t0 + Duration::from_secs(20)));
        assert!(!rl.check(a, t0));
        assert!(!rl.check(a, t0 + Duration::from_secs(20)));
        assert!(rl.check(a, t0 + Duration::from_secs(21)));
        rl.purge(t0);
        assert_eq!(rl.tracked(), 1);
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
            max_tracked in 0usize..4,
            ops in proptest::collection::vec((any::<u8>(), -2_000i64..3_000, 0u8..20), 1..300),
        ) {
            let base = Instant::now();
            let mut rl = RateLimiter::new(cfg(per_second, burst, max_tracked), base);
            // Start mid-way so that deltas can move the clock backwards.
            let mut offset_ms: u64 = 10_000;
            // Mirrors the limiter's clock, which starts at `base`.
            let mut max_ms = 0;
            // key -> (first allowed at, allowed count)
            let mut seen: StdHashMap<SourceKey, (u64, u64)> = StdHashMap::new();
            for (who, delta, action) in ops {
                offset_ms = offset_ms.saturating_add_signed(delta);
                if action == 0 {
                    // An occasional jump of hours.
                    offset_ms += 5 * 3600 * 1000;
                }
                max_ms = max_ms.max(offset_ms);
                let now = base + Duration::from_millis(offset_ms);
                if action == 1 {
                    rl.purge(now);
                    continue;
                }
                let addr = pool_ip(who);
                if rl.check(addr, now) {
                    let entry = seen.entry(SourceKey::of(addr)).or_insert((max_ms, 0));
                    entry.1 += 1;
                }
                prop_assert!(rl.tracked() <= max_tracked);
                for &(first_ms, count) in seen.values() {
                    let elapsed_ns = u128::from(max_ms - first_ms) * 1_000_000;
                    let limit = u128::from(burst.max(1))
                        + u128::from(per_second) * elapsed_ns / u128::from(UNITS_PER_TOKEN);
                    prop_assert!(u128::from(count) <= limit, "{} > {}", count, limit);
                }
            }
        }
    }
}
