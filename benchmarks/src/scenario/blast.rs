//! blast: a few allocations, the offered rate stepped up until more than 0.1 % of round
//! trips are lost (or the generator cannot offer more), then narrowed down between the last
//! clean step and the first lossy one; then one step at the latency rate, the same for every
//! contender, for latency under load.

use super::{pct, per, Metric, Metrics, Params};
use crate::contender::Contender;
use crate::error::BenchError;
use crate::measure::Window;
use std::time::Duration;

/// Loss above which a step counts as not sustained.
const MAX_LOSS: f64 = 0.001;

/// Runs the scenario.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    let mut gen = p.generator(c)?;
    let setup = gen.setup(
        p.blast_allocs,
        p.setup_window,
        p.setup_timeout(p.blast_allocs),
    )?;
    if setup.ok == 0 {
        return Err(BenchError::Turn(format!(
            "{}: no allocation: {}",
            c.kind.name(),
            gen.first_error.clone().unwrap_or_default()
        )));
    }
    let step_len = Duration::from_secs_f64(p.blast_step_secs);
    let drain = Duration::from_millis(150);
    let mut rate = p.blast_start_pps;
    // (offered rate, relayed/s, server CPU µs per packet, generator CPU s)
    let mut best: Option<(f64, f64, f64, f64)> = None;
    let mut last_loss = f64::NAN;
    let mut generator_limited = 0.0;
    // The first offered rate that lost too much, once one did.
    let mut lossy: Option<f64> = None;
    let mut step: u8 = 0;
    let mut refined = 0;
    for _ in 0..p.blast_max_steps + p.blast_refine {
        step = step.wrapping_add(1).max(1);
        let w = Window::start(c.pid)?;
        let r = gen.stream(rate, step_len, drain, step, p.tick)?;
        let wr = w.finish()?;
        last_loss = r.loss();
        let offered = per(r.sent as f64, r.send_secs);
        if last_loss > MAX_LOSS {
            lossy = Some(rate);
        } else {
            best = Some((
                rate,
                per(r.relayed() as f64, r.send_secs),
                per(wr.server_cpu * 1e6, r.relayed() as f64),
                wr.own_cpu,
            ));
            // Sends came late: the generator, not the server, is the limit from here on.
            if offered < 0.95 * rate || r.send_secs > 1.1 * p.blast_step_secs {
                generator_limited = 1.0;
                break;
            }
        }
        rate = match (lossy, best) {
            // Still climbing.
            (None, _) => rate * p.blast_factor,
            // Narrowing: halfway (geometrically) between the best clean and the first lossy.
            (Some(bad), Some((good, ..))) if refined < p.blast_refine && bad / good > 1.02 => {
                refined += 1;
                (good * bad).sqrt()
            }
            _ => break,
        };
    }
    let Some((best_rate, sustained, cpu_per_packet, own_cpu)) = best else {
        return Ok(vec![
            (Metric::SustainedPps, 0.0),
            (Metric::LossPct, pct(last_loss)),
        ]);
    };
    let _ = best_rate;
    gen.rtt.reset();
    gen.stream(
        p.latency_pps,
        step_len,
        drain,
        step.wrapping_add(1).max(1),
        p.tick,
    )?;
    if let Some(e) = &gen.first_error {
        eprintln!("{} blast: first failure: {e}", c.kind.name());
    }
    Ok(vec![
        (Metric::Allocations, setup.ok as f64),
        (Metric::SustainedPps, sustained),
        (Metric::CpuPerPacket, cpu_per_packet),
        (Metric::LossPct, pct(last_loss)),
        (Metric::GeneratorLimited, generator_limited),
        (Metric::HalfRateP50, gen.rtt.quantile_us(0.50)),
        (Metric::HalfRateP99, gen.rtt.quantile_us(0.99)),
        (Metric::GeneratorCpu, own_cpu),
    ])
}
