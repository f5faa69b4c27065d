//! How long to wait before reconnecting the events WebSocket.
//!
//! Doubling from 250 ms, capped at 30 s: a restarting Asterisk is back within seconds, and an
//! unreachable one is retried twice a minute without flooding its log. No jitter: there is one
//! icegate-signal per Asterisk, so there is no herd to spread out.

use std::time::Duration;

/// The first delay.
pub const FIRST: Duration = Duration::from_millis(250);
/// The longest delay.
pub const MAX: Duration = Duration::from_secs(30);

/// The delay before reconnect attempt `attempt` (0 = the first attempt after a loss).
pub fn reconnect_delay(attempt: u32) -> Duration {
    // 2^7 * 250 ms = 32 s is past the cap; larger shifts would only overflow.
    let factor = 1u32 << attempt.min(7);
    (FIRST * factor).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let ms: Vec<u128> = (0..10).map(|a| reconnect_delay(a).as_millis()).collect();
        assert_eq!(
            ms,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(reconnect_delay(u32::MAX), MAX);
    }
}
