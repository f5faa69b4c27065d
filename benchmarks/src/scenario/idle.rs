//! idle: K allocations with a permission and a channel each, held open: memory per
//! allocation, setup rate, the CPU of holding them, and one probe packet through each.

use super::{pct, per, Metric, Metrics, Params};
use crate::contender::Contender;
use crate::error::BenchError;
use crate::measure::{rss_bytes, Window};
use std::time::Duration;

/// Runs the scenario.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    let mut gen = p.generator(c)?;
    let before = rss_bytes(c.pid)?;
    let w = Window::start(c.pid)?;
    let setup = gen.setup(p.idle, p.setup_window, p.setup_timeout(p.idle))?;
    let wr = w.finish()?;
    if setup.ok == 0 {
        return Err(BenchError::Turn(format!(
            "{}: no allocation: {}",
            c.kind.name(),
            gen.first_error.clone().unwrap_or_default()
        )));
    }
    let hold = Window::start(c.pid)?;
    std::thread::sleep(Duration::from_secs_f64(p.idle_hold_secs));
    let held = hold.finish()?;
    let after = rss_bytes(c.pid)?;
    let grown = after.saturating_sub(before) as f64;
    // One packet through every allocation, at a rate any contender takes without loss.
    let rate = 20_000f64.min(setup.ok as f64 * 10.0);
    let probe_len = Duration::from_secs_f64(setup.ok as f64 / rate);
    let probe = gen.stream(rate, probe_len, Duration::from_millis(500), 1, p.tick)?;
    if let Some(e) = &gen.first_error {
        eprintln!("{} idle: first failure: {e}", c.kind.name());
    }
    Ok(vec![
        (Metric::Allocations, setup.ok as f64),
        (Metric::SetupFailures, setup.failed as f64),
        (Metric::AllocsPerSec, per(setup.ok as f64, setup.secs)),
        (
            Metric::CpuPerAlloc,
            per(wr.server_cpu * 1e6, setup.ok as f64),
        ),
        (Metric::RssDeltaMib, grown / (1024.0 * 1024.0)),
        (Metric::BytesPerAlloc, per(grown, setup.ok as f64)),
        (Metric::IdleCpuPct, pct(per(held.server_cpu, held.secs))),
        (Metric::ProbeLossPct, pct(probe.loss())),
        (Metric::GeneratorCpu, wr.own_cpu),
    ])
}
