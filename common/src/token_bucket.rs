//! The token bucket of every rate limit in both binaries: the relay's per-source limit on
//! unauthenticated requests (`icegate_relay_proto::rate_limit`), its per-allocation bandwidth
//! cap (`max-bps`), and the signal server's per-connection message rate
//! (`icegate_signal_proto::limits`).
//!
//! A bucket records what was *spent* rather than what is left, in fixed point: one token is
//! [`Timestamp::TICKS_PER_SECOND`] units, and every tick of time gives `per_second` units
//! back. So the arithmetic is exact (no drift, no rounding: a bucket never lets more than
//! `burst + per_second × elapsed seconds` tokens through), a zeroed bucket is a full one, and
//! a burst lowered on reload applies at once to what was already spent.
//!
//! [`TokenBucket`] is the bucket as a value, for a single owner. The relay's rate table keeps
//! its buckets packed into atomic words instead and uses only [`spend`], the pure arithmetic
//! underneath (see there why).
//!
//! Pure: the time is always passed in, as an [`Instant`] or as [`Millis`] since an origin the
//! caller chose.

use std::time::Instant;

/// A point in time a bucket can be refilled against.
pub trait Timestamp: Copy + Ord {
    /// Ticks of this clock in a second; also the fixed-point units of one token.
    const TICKS_PER_SECOND: u64;

    /// Ticks from `earlier` to `self`; 0 when `earlier` is later (time going backwards
    /// regains nothing), saturating at `u64::MAX`.
    fn ticks_since(self, earlier: Self) -> u64;
}

impl Timestamp for Instant {
    /// Nanoseconds.
    const TICKS_PER_SECOND: u64 = 1_000_000_000;

    fn ticks_since(self, earlier: Self) -> u64 {
        u64::try_from(self.saturating_duration_since(earlier).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Milliseconds since an origin of the caller's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Timestamp for Millis {
    const TICKS_PER_SECOND: u64 = 1_000;

    fn ticks_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// How fast a bucket refills and how much it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens regained per second.
    pub per_second: u64,
    /// Tokens a full bucket holds.
    pub burst: u64,
}

impl Rate {
    /// A full bucket in the fixed-point units of `T` (saturating at `u64::MAX`).
    pub fn capacity<T: Timestamp>(&self) -> u64 {
        self.burst.saturating_mul(T::TICKS_PER_SECOND)
    }
}

/// The arithmetic of every bucket: what a bucket that had `spent` units spent has spent after
/// `elapsed` ticks at `per_second` (never less than nothing, so never more than full), plus
/// `cost` units; or `None` when that would be more than `capacity`.
///
/// [`TokenBucket`] stores the result in a struct; the relay's rate table
/// (`icegate_relay_proto::rate_limit`) stores it in 24 bits of an `AtomicU64` beside the
/// refill time and swaps it in with `compare_exchange`, which is how one table of buckets is
/// shared by every worker without a lock. A `TokenBucket` cannot be updated atomically, so the
/// table shares this function instead of the type.
pub fn spend(spent: u64, elapsed: u64, per_second: u64, cost: u64, capacity: u64) -> Option<u64> {
    let regained = elapsed.saturating_mul(per_second);
    let spent = spent.saturating_sub(regained).saturating_add(cost);
    (spent <= capacity).then_some(spent)
}

/// A token bucket with one owner; see the module docs.
///
/// Its [`Rate`] is passed to every [`take`](Self::take), so a reloaded configuration applies
/// to buckets that already exist.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket<T> {
    /// Fixed-point units spent, as of `last`.
    spent: u64,
    /// The latest time passed in.
    last: T,
}

impl<T: Timestamp> TokenBucket<T> {
    /// A full bucket.
    pub fn full(now: T) -> Self {
        TokenBucket {
            spent: 0,
            last: now,
        }
    }

    /// Takes `tokens` from the bucket if it holds them at `now`. An earlier `now` than before
    /// regains nothing and panics nowhere.
    pub fn take(&mut self, tokens: u64, rate: Rate, now: T) -> bool {
        // The refill is kept even when the take fails, so that the time up to `now` is credited
        // at the rate of its own calls (a reload may change the rate).
        let elapsed = now.ticks_since(self.last);
        self.last = self.last.max(now);
        // Nothing is added and `u64::MAX` holds anything: always `Some`.
        self.spent = spend(self.spent, elapsed, rate.per_second, 0, u64::MAX).unwrap_or(0);
        let cost = tokens.saturating_mul(T::TICKS_PER_SECOND);
        match spend(self.spent, 0, rate.per_second, cost, rate.capacity::<T>()) {
            Some(spent) => {
                self.spent = spent;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let rate = Rate {
            per_second: 10,
            burst: 5,
        };
        let mut bucket = TokenBucket::full(start);
        assert_eq!((0..8).filter(|_| bucket.take(1, rate, start)).count(), 5);
        // 10/s: one token every 100 ms.
        assert!(!bucket.take(1, rate, start + Duration::from_millis(50)));
        assert!(bucket.take(1, rate, start + Duration::from_millis(110)));
        assert!(!bucket.take(1, rate, start + Duration::from_millis(120)));
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(1, rate, later)).count(), 5);
        // Time going backwards takes nothing and panics nowhere.
        assert!(!bucket.take(1, rate, start));
    }

    #[test]
    fn many_tokens_at_once_on_either_clock_without_overflow() {
        // Bytes: 1000 B/s with a burst of one second, as the relay's `max-bps`.
        let rate = Rate {
            per_second: 1000,
            burst: 1000,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::full(t0);
        assert!(b.take(1000, rate, t0));
        assert!(!b.take(1, rate, t0));
        assert!(b.take(500, rate, t0 + Duration::from_millis(500)));
        assert!(!b.take(10, rate, t0 + Duration::from_millis(500)));
        assert!(b.take(1000, rate, t0 + Duration::from_secs(100)));
        // Millisecond ticks count the same.
        let mut m = TokenBucket::full(Millis(0));
        assert!(m.take(1000, rate, Millis(0)));
        assert!(!m.take(1, rate, Millis(0)));
        assert!(m.take(500, rate, Millis(500)));
        assert!(!m.take(10, rate, Millis(500)));
        // No overflow at the extremes.
        let huge = Rate {
            per_second: u64::MAX,
            burst: u64::MAX,
        };
        assert!(b.take(u64::MAX, huge, t0 + Duration::from_secs(200)));
        assert_eq!(spend(5, u64::MAX, u64::MAX, 1, 1), Some(1));
        assert_eq!(spend(0, 0, 0, 2, 1), None);
    }
}
