//! What one client may consume: messages per second (a token bucket per connection), SDP and
//! frame sizes, connections per IP address. Sessions per user are counted by the hub, which
//! knows the users.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sustained messages per second per connection.
    pub messages_per_sec: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Rate-limited messages in a row after which the connection is closed.
    pub max_strikes: u32,
    /// The largest SDP in a `call` or `answer`, in bytes.
    pub max_sdp_bytes: usize,
    /// WebSocket connections per client IP address (IPv6: per /64).
    pub max_connections_per_ip: u32,
    /// Sessions per user.
    pub max_sessions_per_user: usize,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
    /// A connection must authenticate within this time.
    pub auth_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            messages_per_sec: 20,
            message_burst: 40,
            max_strikes: 10,
            max_sdp_bytes: 64 * 1024,
            max_connections_per_ip: 20,
            max_sessions_per_user: 8,
            idle_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The largest WebSocket message accepted: an SDP at the limit plus room for the envelope
    /// and JSON escaping (SDP lines end in `\r\n`, which JSON doubles to `\\r\\n`).
    pub fn max_message_bytes(&self) -> usize {
        self.max_sdp_bytes.saturating_mul(2).saturating_add(4096)
    }

    /// How often the server pings a connection, so that a live one is never idle.
    pub fn ping_interval(&self) -> Duration {
        self.idle_timeout / 3
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        // `saturating_duration_since`: an earlier `now` than last time must not panic.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Open connections per client address.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    open: HashMap<IpAddr, u32>,
}

impl ConnectionCounter {
    /// The key an address is counted under: IPv6 clients get a /64 each, as one host
    /// usually owns a whole /64 and could otherwise open connections from every address.
    pub fn key(ip: IpAddr) -> IpAddr {
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

    /// Counts a new connection from `ip`, unless `ip` already has `max`.
    pub fn try_acquire(&mut self, ip: IpAddr, max: u32) -> bool {
        let count = self.open.entry(Self::key(ip)).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets a connection counted by [`try_acquire`](Self::try_acquire).
    pub fn release(&mut self, ip: IpAddr) {
        let key = Self::key(ip);
        if let Some(count) = self.open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.open.remove(&key);
            }
        }
    }

    /// Addresses with at least one connection.
    pub fn addresses(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!((0..8).filter(|_| bucket.try_take(start)).count(), 5);
        // 10/s: one token every 100 ms.
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
        assert!(!bucket.try_take(start + Duration::from_millis(120)));
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.try_take(later)).count(), 5);
        // Time going backwards takes nothing and panics nowhere.
        assert!(!bucket.try_take(start));
    }

    #[test]
    fn counts_connections_per_address_and_per_ipv6_64() {
        let mut counter = ConnectionCounter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(counter.try_acquire(a, 2));
        assert!(counter.try_acquire(a, 2));
        assert!(!counter.try_acquire(a, 2));
        assert!(counter.try_acquire("192.0.2.2".parse().unwrap(), 2));
        counter.release(a);
        assert!(counter.try_acquire(a, 2));

        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(counter.try_acquire(v6a, 1));
        assert!(!counter.try_acquire(v6b, 1), "same /64");
        assert!(counter.try_acquire("2001:db8:0:1::1".parse().unwrap(), 1));
        let mapped: IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        assert!(!counter.try_acquire(mapped, 1), "mapped v4 counts as v4");

        counter.release(v6b);
        counter.release(v6b);
        assert_eq!(counter.addresses(), 3);
    }

    #[test]
    fn message_limit_leaves_room_for_an_escaped_sdp() {
        let limits = Limits::default();
        assert!(limits.max_message_bytes() > 2 * limits.max_sdp_bytes);
        assert_eq!(limits.ping_interval(), Duration::from_secs(20));
    }
}
