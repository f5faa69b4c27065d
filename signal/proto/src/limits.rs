//! What one client may consume: messages per second (the [`Rate`] of a token bucket per
//! connection), SDP and frame sizes, connections per IP address. Sessions per user are
//! counted by the hub, which knows the users.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use icegate_common::token_bucket::Rate;

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

    /// The token bucket of a connection's messages
    /// (an `icegate_common::token_bucket::TokenBucket`): `messages_per_sec`, and at least one
    /// message of burst.
    pub fn message_rate(&self) -> Rate {
        Rate {
            per_second: u64::from(self.messages_per_sec),
            burst: u64::from(self.message_burst.max(1)),
        }
    }

    /// How often the server pings a connection, so that a live one is never idle.
    pub fn ping_interval(&self) -> Duration {
        self.idle_timeout / 3
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
