//! calls: N concurrent allocations, each an audio-like stream echoed by the peer, so every
//! allocation relays `call_pps` packets/s each way.

use super::{pct, per, Metric, Metrics, Params};
use crate::contender::Contender;
use crate::error::BenchError;
use crate::measure::Window;
use std::time::Duration;

/// Runs the scenario.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    let mut gen = p.generator(c)?;
    let setup = gen.setup(p.calls, p.setup_window, p.setup_timeout(p.calls))?;
    if setup.ok == 0 {
        return Err(BenchError::Turn(format!(
            "{}: no call set up: {}",
            c.kind.name(),
            gen.first_error.clone().unwrap_or_default()
        )));
    }
    let rate = p.call_pps * setup.ok as f64;
    let drain = Duration::from_millis(200);
    gen.stream(
        rate,
        Duration::from_secs_f64(p.warmup_secs),
        drain,
        1,
        p.tick,
    )?;
    gen.rtt.reset();
    let w = Window::start(c.pid)?;
    let r = gen.stream(rate, Duration::from_secs_f64(p.call_secs), drain, 2, p.tick)?;
    let wr = w.finish()?;
    let relayed = r.relayed() as f64;
    if let Some(e) = &gen.first_error {
        eprintln!("{} calls: first failure: {e}", c.kind.name());
    }
    Ok(vec![
        (Metric::Allocations, setup.ok as f64),
        (Metric::SetupFailures, setup.failed as f64),
        (Metric::RelayedPps, per(relayed, r.send_secs)),
        (Metric::LossPct, pct(r.loss())),
        (Metric::RttP50, gen.rtt.quantile_us(0.50)),
        (Metric::RttP99, gen.rtt.quantile_us(0.99)),
        (Metric::RttP999, gen.rtt.quantile_us(0.999)),
        (Metric::ServerCpu, wr.server_cpu),
        (Metric::CpuPerPacket, per(wr.server_cpu * 1e6, relayed)),
        (Metric::GeneratorCpu, wr.own_cpu),
    ])
}
