//! Counters of the runtime shell itself (the core counts protocol events in
//! [`icegate_relay_proto::metrics::Counters`]). One shard per worker, summed at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// One worker's runtime counters.
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    /// Datagrams or frames the kernel (or a full TCP backlog) would not take.
    pub send_failures: AtomicU64,
    /// TCP and TLS client connections now open.
    pub streams_open: AtomicI64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
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

    /// Counts a failed TLS handshake.
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}
