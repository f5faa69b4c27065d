//! allocations: Allocate (with the 401 challenge) + Refresh(0) cycles, each by a new
//! client on a fresh socket, as fast as the server answers.

use super::{per, Metric, Metrics, Params};
use crate::contender::Contender;
use crate::error::BenchError;
use crate::measure::Window;
use std::time::Duration;

/// Runs the scenario.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    let mut gen = p.generator(c)?;
    let w = Window::start(c.pid)?;
    let r = gen.cycles(p.alloc_concurrency, Duration::from_secs_f64(p.alloc_secs))?;
    let wr = w.finish()?;
    if r.ok == 0 {
        return Err(BenchError::Turn(format!(
            "{}: no allocation cycle completed: {}",
            c.kind.name(),
            gen.first_error.clone().unwrap_or_default()
        )));
    }
    if let Some(e) = &gen.first_error {
        eprintln!("{} allocations: first failure: {e}", c.kind.name());
    }
    Ok(vec![
        (Metric::AllocsPerSec, per(r.ok as f64, r.secs)),
        (Metric::SetupFailures, r.failed as f64),
        (Metric::ServerCpu, wr.server_cpu),
        (Metric::CpuPerAlloc, per(wr.server_cpu * 1e6, r.ok as f64)),
        (Metric::GeneratorCpu, wr.own_cpu),
    ])
}
