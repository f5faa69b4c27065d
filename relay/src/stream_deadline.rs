//! When a TCP/TLS client connection is closed for taking too long, on a clock passed in.
//!
//! Three limits apply, whichever is due:
//!
//! - **A started frame must complete** within `frame` (default 5 s) of its first byte: a
//!   client that sends part of a STUN message or ChannelData frame and stalls (slowloris)
//!   holds a descriptor and a buffer for nothing, and a real client sends a frame in one go.
//! - **A connection without an allocation** must send a complete frame every `idle`
//!   (default 30 s, also the time it has to send its first one).
//! - **A connection with an allocation** may stay silent for the longest allocation lifetime
//!   plus a margin: past that, its allocation has expired without a Refresh.
//!
//! Only complete frames count as activity: bytes of a frame that never completes reset
//! nothing, so a client cannot keep a connection with one byte at a time.

use std::time::{Duration, Instant};

/// The limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// How long a started frame may take to complete (`stream-frame-timeout`).
    pub frame: Duration,
    /// How long a connection without an allocation may go without a frame
    /// (`stream-idle-timeout`).
    pub idle: Duration,
    /// How long a connection with an allocation may go without a frame.
    pub allocated: Duration,
}

/// Which limit closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A partial frame did not complete in time.
    Frame,
    /// No complete frame for too long.
    Idle,
}

impl Expiry {
    /// Every kind, in label order.
    pub const ALL: [Expiry; 2] = [Expiry::Frame, Expiry::Idle];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Frame => "frame",
            Expiry::Idle => "idle",
        }
    }
}

/// The activity of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamDeadline {
    last_frame: Instant,
    partial_since: Option<Instant>,
}

impl StreamDeadline {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            last_frame: now,
            partial_since: None,
        }
    }

    /// Bytes arrived at `now`: `frames` complete frames were taken from the buffer, and
    /// `partial` says whether the bytes left over start another one.
    pub fn on_read(&mut self, now: Instant, frames: usize, partial: bool) {
        if frames > 0 {
            self.last_frame = now;
        }
        self.partial_since = match (partial, self.partial_since) {
            (false, _) => None,
            // Still the same frame: its clock keeps running.
            (true, Some(since)) if frames == 0 => Some(since),
            (true, _) => Some(now),
        };
    }

    /// When the connection is to be closed, and why, given whether it has an allocation.
    pub fn deadline(&self, limits: &StreamTimeouts, allocated: bool) -> (Instant, Expiry) {
        let quiet = if allocated {
            limits.allocated
        } else {
            limits.idle
        };
        let idle = (self.last_frame + quiet, Expiry::Idle);
        match self.partial_since.map(|since| since + limits.frame) {
            Some(frame) if frame < idle.0 => (frame, Expiry::Frame),
            _ => idle,
        }
    }

    /// Whether the connection is due to close at `now`, and why.
    pub fn expired(
        &self,
        limits: &StreamTimeouts,
        allocated: bool,
        now: Instant,
    ) -> Option<Expiry> {
        let (at, why) = self.deadline(limits, allocated);
        (now >= at).then_some(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: StreamTimeouts = StreamTimeouts {
        frame: Duration::from_secs(5),
        idle: Duration::from_secs(30),
        allocated: Duration::from_secs(3660),
    };

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_silent_connection_closes_after_the_idle_limit() {
        let t0 = Instant::now();
        let d = StreamDeadline::new(t0);
        assert_eq!(d.deadline(&LIMITS, false), (t0 + s(30), Expiry::Idle));
        assert_eq!(d.expired(&LIMITS, false, t0 + s(29)), None);
        assert_eq!(d.expired(&LIMITS, false, t0 + s(30)), Some(Expiry::Idle));
    }

    #[test]
    fn a_stalled_partial_frame_closes_after_the_frame_limit_whatever_trickles_in() {
        let t0 = Instant::now();
        let mut d = StreamDeadline::new(t0);
        d.on_read(t0 + s(1), 0, true);
        // More bytes of the same frame do not move its deadline.
        d.on_read(t0 + s(3), 0, true);
        assert_eq!(d.deadline(&LIMITS, false), (t0 + s(6), Expiry::Frame));
        // Even with an allocation, a frame must complete.
        assert_eq!(d.expired(&LIMITS, true, t0 + s(6)), Some(Expiry::Frame));
        assert_eq!(d.expired(&LIMITS, false, t0 + s(5)), None);
    }

    #[test]
    fn complete_frames_reset_the_idle_clock_and_start_a_new_frame_clock() {
        let t0 = Instant::now();
        let mut d = StreamDeadline::new(t0);
        d.on_read(t0 + s(2), 0, true);
        // The frame completes and the next one begins in the same read.
        d.on_read(t0 + s(4), 1, true);
        assert_eq!(d.deadline(&LIMITS, false), (t0 + s(9), Expiry::Frame));
        d.on_read(t0 + s(6), 1, false);
        assert_eq!(d.deadline(&LIMITS, false), (t0 + s(36), Expiry::Idle));
    }

    #[test]
    fn an_allocation_extends_the_idle_limit_only() {
        let t0 = Instant::now();
        let mut d = StreamDeadline::new(t0);
        d.on_read(t0 + s(1), 1, false);
        assert_eq!(d.deadline(&LIMITS, true), (t0 + s(3661), Expiry::Idle));
        // The allocation is gone (expired): the short limit applies again.
        assert_eq!(d.expired(&LIMITS, false, t0 + s(31)), Some(Expiry::Idle));
    }

    #[test]
    fn the_earlier_limit_wins() {
        let t0 = Instant::now();
        let short = StreamTimeouts {
            frame: s(20),
            idle: s(10),
            allocated: s(10),
        };
        let mut d = StreamDeadline::new(t0);
        d.on_read(t0 + s(5), 0, true);
        assert_eq!(d.deadline(&short, false), (t0 + s(10), Expiry::Idle));
    }
}
