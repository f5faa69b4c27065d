//! Counters of the runtime shell itself (the core counts protocol events in
//! [`icegate_relay_proto::metrics::Counters`]). One shard per worker, summed at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stream_deadline::Expiry;

/// One worker's runtime counters.
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Datagrams or frames the kernel (or a full TCP backlog) would not take.
    pub send_failures: AtomicU64,
    /// TCP and TLS client connections now open.
    pub streams_open: AtomicI64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// DTLS handshakes by [`DtlsHandshake`] (in [`DtlsHandshake::ALL`] order).
    pub dtls_handshakes: [AtomicU64; 5],
    /// DTLS sessions now open (handshaking or established).
    pub dtls_sessions: AtomicI64,
    /// TCP/TLS connections closed by a deadline, by [`Expiry`] (in [`Expiry::ALL`] order).
    pub stream_timeouts: [AtomicU64; 2],
    /// Ticks of the worker's heartbeat task: it stops advancing when the worker's event
    /// loop is stuck, which the systemd watchdog check notices.
    pub heartbeats: AtomicU64,
}

impl RuntimeCounters {
    /// Counts a packet that could not be sent.
    pub fn send_failed(&self) {
        self.sends_failed(1);
    }

    /// Counts `n` packets that could not be sent.
    pub fn sends_failed(&self, n: usize) {
        if n > 0 {
            self.send_failures.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Counts a new TCP/TLS client connection.
    pub fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TCP/TLS client connection that ended.
    pub fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a TCP/TLS connection closed by a deadline.
    pub fn stream_timed_out(&self, why: Expiry) {
        self.stream_timeouts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The worker's event loop ran its heartbeat task once more.
    pub fn beat(&self) {
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
    }

    /// Heartbeats so far.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.load(Ordering::Relaxed)
    }

    /// Counts a DTLS ClientHello or handshake outcome.
    pub fn dtls_handshake(&self, what: DtlsHandshake) {
        self.dtls_handshakes[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a DTLS session opened (`1`) or closed (`-1`).
    pub fn dtls_sessions_add(&self, n: i64) {
        self.dtls_sessions.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// What became of a DTLS ClientHello or handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtlsHandshake {
    /// A ClientHello without a valid cookie, answered with a HelloVerifyRequest (no state).
    CookieSent,
    /// A ClientHello with a valid cookie started a handshake.
    Started,
    /// A handshake finished.
    Completed,
    /// A handshake failed (an alert, a bad message).
    Failed,
    /// A handshake did not finish within its time.
    TimedOut,
}

impl DtlsHandshake {
    /// Every outcome, in label order.
    pub const ALL: [DtlsHandshake; 5] = [
        DtlsHandshake::CookieSent,
        DtlsHandshake::Started,
        DtlsHandshake::Completed,
        DtlsHandshake::Failed,
        DtlsHandshake::TimedOut,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DtlsHandshake::CookieSent => "cookie_sent",
            DtlsHandshake::Started => "started",
            DtlsHandshake::Completed => "completed",
            DtlsHandshake::Failed => "failed",
            DtlsHandshake::TimedOut => "timed_out",
        }
    }
}

/// Watches the workers' heartbeats: which one, if any, has not beaten for longer than `stall`.
pub struct HeartbeatWatch {
    shards: Vec<Arc<RuntimeCounters>>,
    /// Per worker: the heartbeat count last seen, and when it was first seen.
    seen: Vec<(u64, Instant)>,
    stall: Duration,
}

impl HeartbeatWatch {
    /// Starts watching at `now`: every worker counts as having just beaten.
    pub fn new(shards: Vec<Arc<RuntimeCounters>>, stall: Duration, now: Instant) -> Self {
        let seen = shards.iter().map(|s| (s.heartbeats(), now)).collect();
        HeartbeatWatch {
            shards,
            seen,
            stall,
        }
    }

    /// The first worker that has not beaten since `stall` before `now`, and for how long.
    pub fn stalled(&mut self, now: Instant) -> Option<(usize, Duration)> {
        for (index, (shard, (beats, since))) in self.shards.iter().zip(&mut self.seen).enumerate() {
            let current = shard.heartbeats();
            if current != *beats {
                (*beats, *since) = (current, now);
            } else if now.saturating_duration_since(*since) > self.stall {
                return Some((index, now.saturating_duration_since(*since)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_stops_beating_is_named_after_the_stall_time() {
        let shards: Vec<_> = (0..2)
            .map(|_| Arc::new(RuntimeCounters::default()))
            .collect();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut watch = HeartbeatWatch::new(shards.clone(), s(10), t0);
        assert_eq!(watch.stalled(t0 + s(5)), None);
        // Both beat; then only worker 0 goes on beating.
        shards[0].beat();
        shards[1].beat();
        assert_eq!(watch.stalled(t0 + s(8)), None);
        for t in [12, 16] {
            shards[0].beat();
            assert_eq!(watch.stalled(t0 + s(t)), None, "at {t} s");
        }
        shards[0].beat();
        assert_eq!(watch.stalled(t0 + s(19)), Some((1, s(11))));
        // It beats again: healthy again.
        shards[1].beat();
        assert_eq!(watch.stalled(t0 + s(20)), None);
    }
}
