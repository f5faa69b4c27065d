//! One benchmark run: every scenario against every contender, repeated, then the report.

use crate::contender::{Contender, Kind, ServerSpec};
use crate::error::BenchError;
use crate::report::{Record, Section};
use crate::scenario::{self, Params, Scenario};
use crate::uclient::{self, UclientParams};
use std::time::Instant;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Servers, in order.
    pub contenders: Vec<Kind>,
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Repetitions of the whole set.
    pub repeat: usize,
    /// Server settings.
    pub spec: ServerSpec,
    /// Scenario knobs.
    pub params: Params,
    /// turnutils_uclient runs, if any.
    pub uclient: Option<UclientParams>,
    /// CPU the generator thread is pinned to.
    pub generator_cpu: Option<usize>,
}

/// Records, and remarks on what did not work.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every measured run.
    pub records: Vec<Record>,
    /// Failures, one line each (the run goes on without them).
    pub errors: Vec<String>,
}

/// Raises RLIMIT_NOFILE as far as allowed: the idle scenario holds a socket per client,
/// and the servers (which inherit the limit) one per allocation.
pub fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // As root the hard limit can go up too; otherwise settle for the hard limit.
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(want.max(soft)), hard);
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_self(cpu: usize) -> Result<(), BenchError> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu)
        .map_err(|e| BenchError::Config(format!("CPU {cpu}: {e}")))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| BenchError::Config(format!("pin to CPU {cpu}: {e}")))
}

/// No core dumps from this process or the servers it starts (which inherit the limit): a
/// server that aborts with tens of thousands of connections open (Janus does when it runs out
/// of descriptors) would write tens of GB into its working directory.
pub fn no_core_dumps() {
    use nix::sys::resource::{setrlimit, Resource};
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
}

/// Runs the plan; `progress` gets one line per step.
pub fn run(plan: &Plan, mut progress: impl FnMut(&str)) -> Result<Outcome, BenchError> {
    no_core_dumps();
    // The signal scenarios hold a client socket and a server socket per connection, each in
    // its own process (the limit is per process); Janus holds two descriptors per session
    // (its socket and an eventfd), and aborts when it runs out.
    let signal = 2 * (plan.params.signal_sessions + plan.params.signal_prehello) as u64 + 100;
    raise_fd_limit(((plan.params.idle as u64) * 3 + 10_000).max(signal));
    if let Some(cpu) = plan.generator_cpu {
        pin_self(cpu)?;
    }
    let mut out = Outcome::default();
    for repeat in 0..plan.repeat {
        for &kind in &plan.contenders {
            for &scenario in &plan.scenarios {
                if !scenario.runs_against(kind) {
                    continue;
                }
                let t = Instant::now();
                let res = Contender::start_with(kind, &plan.spec, scenario.setup())
                    .and_then(|mut c| scenario::run(scenario, &mut c, &plan.params));
                match res {
                    Ok(metrics) => {
                        progress(&format!(
                            "run {}/{}: {} {} ({:.1} s): {}",
                            repeat + 1,
                            plan.repeat,
                            kind.name(),
                            scenario.name(),
                            t.elapsed().as_secs_f64(),
                            metrics
                                .iter()
                                .map(|(m, v)| format!("{} {v:.3}", m.label()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        out.records.push(Record {
                            section: Section::Scenario(scenario),
                            kind,
                            repeat,
                            metrics,
                        });
                    }
                    Err(e) => {
                        let line = format!(
                            "run {}: {} {}: {e}",
                            repeat + 1,
                            kind.name(),
                            scenario.name()
                        );
                        progress(&line);
                        out.errors.push(line);
                    }
                }
            }
        }
        if let Some(u) = &plan.uclient {
            if !uclient::available() {
                continue;
            }
            for &kind in &plan.contenders {
                if matches!(kind, Kind::Floor | Kind::Janus) {
                    continue;
                }
                let res = Contender::start(kind, &plan.spec).and_then(|c| uclient::run(&c, u));
                match res {
                    Ok(metrics) => {
                        progress(&format!(
                            "run {}: {} uclient: {metrics:?}",
                            repeat + 1,
                            kind.name()
                        ));
                        out.records.push(Record {
                            section: Section::Uclient,
                            kind,
                            repeat,
                            metrics,
                        });
                    }
                    Err(e) => {
                        let line = format!("run {}: {} uclient: {e}", repeat + 1, kind.name());
                        progress(&line);
                        out.errors.push(line);
                    }
                }
            }
        }
    }
    Ok(out)
}
