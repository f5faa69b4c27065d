//! What is measured: CPU time and memory of processes from /proc, and round-trip times.

use crate::error::BenchError;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime, in seconds, from a `/proc/.../stat` file.
fn stat_cpu_secs(path: &str) -> Result<f64, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Proc(format!("{path}: no ')'")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<f64, BenchError> {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| BenchError::Proc(format!("{path}: field {i}")))
    };
    Ok((tick(11)? + tick(12)?) / clock_ticks())
}

/// CPU seconds (user + system) used so far by process `pid`, all threads.
pub fn process_cpu_secs(pid: u32) -> Result<f64, BenchError> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// CPU seconds used so far by the calling thread (the load generator).
pub fn own_thread_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/thread-self/stat").unwrap_or(0.0)
}

/// Resident memory of process `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Proc(format!("{path}: no VmRSS")))
}

/// The CPU seconds of all of `pids`.
fn cpu_secs(pids: &[u32]) -> Result<f64, BenchError> {
    pids.iter().map(|&pid| process_cpu_secs(pid)).sum()
}

/// The resident memory of all of `pids`, in bytes.
pub fn rss_bytes_all(pids: &[u32]) -> Result<u64, BenchError> {
    pids.iter().map(|&pid| rss_bytes(pid)).sum()
}

/// CPU of the server and of the load generator over one measurement window.
pub struct Window {
    pids: Vec<u32>,
    started: Instant,
    server_cpu: f64,
    own_cpu: f64,
}

/// What a [`Window`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowResult {
    /// Wall-clock length of the window.
    pub secs: f64,
    /// Server CPU seconds (all threads) in the window.
    pub server_cpu: f64,
    /// Load generator CPU seconds in the window.
    pub own_cpu: f64,
}

impl Window {
    /// Starts a window on server `pid`.
    pub fn start(pid: u32) -> Result<Self, BenchError> {
        Self::start_all(&[pid])
    }

    /// Starts a window on a server of several processes, whose CPU is added up.
    pub fn start_all(pids: &[u32]) -> Result<Self, BenchError> {
        Ok(Self {
            pids: pids.to_vec(),
            started: Instant::now(),
            server_cpu: cpu_secs(pids)?,
            own_cpu: own_thread_cpu_secs(),
        })
    }

    /// Ends the window.
    pub fn finish(&self) -> Result<WindowResult, BenchError> {
        Ok(WindowResult {
            secs: self.started.elapsed().as_secs_f64(),
            server_cpu: cpu_secs(&self.pids)? - self.server_cpu,
            own_cpu: own_thread_cpu_secs() - self.own_cpu,
        })
    }
}

/// Round-trip times at 1 µs resolution up to 100 ms (beyond: the last bucket), allocated
/// once so that recording a sample costs an increment.
pub struct Histogram {
    buckets: Vec<u32>,
    count: u64,
}

const HIST_US: usize = 100_000;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: vec![0; HIST_US + 1],
            count: 0,
        }
    }

    /// Records one round trip.
    pub fn record(&mut self, rtt: Duration) {
        let us = (rtt.as_micros() as usize).min(HIST_US);
        self.buckets[us] += 1;
        self.count += 1;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Forgets every sample.
    pub fn reset(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.count = 0;
    }

    /// The `q` quantile (0..1) in microseconds; NaN when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (us, &n) in self.buckets.iter().enumerate() {
            seen += n as u64;
            if seen >= rank {
                return us as f64;
            }
        }
        HIST_US as f64
    }
}

/// The median of `values`, ignoring NaN; NaN when nothing is left.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_median() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.quantile_us(0.5), 500.0);
        assert_eq!(h.quantile_us(0.99), 990.0);
        assert_eq!(h.quantile_us(0.999), 999.0);
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(process_cpu_secs(pid).unwrap() >= 0.0);
        assert!(rss_bytes(pid).unwrap() > 0);
    }
}
