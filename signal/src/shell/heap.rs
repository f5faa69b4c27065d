//! Gives the allocator's free memory back to the system once a burst of connections settles.
//!
//! Setting a connection up allocates far more than the idle session keeps (the HTTP request
//! and its buffers, the TLS handshake, the hub's first messages). glibc keeps what was freed
//! in its arenas, interleaved with the sessions that stay, where it counts as the server's
//! memory until reused: measured on 3,000 idle sessions, about a third of the server's memory
//! per session was such free space. `malloc_trim` hands the free pages inside the arenas back.
//! It takes each arena's lock while it works, so it runs once the churn has stopped for a
//! period, and at most every [`MAX_DELAY`] while it goes on.

#![allow(unsafe_code)]

use std::time::Duration;

use tokio::sync::watch;

use super::metrics::Metrics;

/// How often the connection counters are looked at.
const PERIOD: Duration = Duration::from_secs(1);
/// The longest a trim waits while connections keep coming and going.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Trims the heap once WebSocket connections have been opened or closed and then a period
/// passed without any, until `stopped` turns true.
pub fn spawn(metrics: Metrics, mut stopped: watch::Receiver<bool>) {
    let counts = move || {
        (
            metrics.connections_total.get(),
            metrics.connections_active.get(),
        )
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = counts();
        let mut churn_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                now = ticks.tick() => {
                    let now_counts = counts();
                    let churned = now_counts != seen;
                    seen = now_counts;
                    match (churned, churn_since) {
                        (true, None) => churn_since = Some(now),
                        (true, Some(since)) if now.duration_since(since) < MAX_DELAY => {}
                        (false, None) => {}
                        _ => {
                            trim();
                            churn_since = churned.then_some(now);
                        }
                    }
                }
                _ = stopped.wait_for(|stop| *stop) => return,
            }
        }
    });
}

/// Returns the allocator's free pages to the system.
fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganises the allocator's own free lists and has no
    // preconditions; it locks each arena while it works on it.
    unsafe {
        libc::malloc_trim(0);
    }
}
