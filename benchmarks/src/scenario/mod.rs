//! The five load shapes, each run against one started contender.

pub mod allocations;
#[allow(unsafe_code)]
pub mod attack;
pub mod blast;
pub mod calls;
pub mod idle;

use crate::contender::{Contender, Kind, Setup};
use crate::error::BenchError;
use crate::generator::Generator;
use crate::turn_client::Protocol;
use icegate_common::credentials::Secret;
use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::time::Duration;

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Many concurrent audio-like calls.
    Calls,
    /// A few allocations at the highest rate the server sustains.
    Blast,
    /// Allocate + Refresh(0) cycles as fast as possible.
    Allocations,
    /// Many allocations held open without traffic.
    Idle,
    /// Legitimate allocations while attackers flood and stall the server.
    Attack,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 5] = [
        Scenario::Calls,
        Scenario::Blast,
        Scenario::Allocations,
        Scenario::Idle,
        Scenario::Attack,
    ];

    /// The name used in arguments and tables.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calls => "calls",
            Scenario::Blast => "blast",
            Scenario::Allocations => "allocations",
            Scenario::Idle => "idle",
            Scenario::Attack => "attack",
        }
    }

    /// Whether the scenario means anything for `kind` (the floor speaks no TURN to attack).
    pub fn runs_against(self, kind: Kind) -> bool {
        !(self == Scenario::Attack && kind == Kind::Floor)
    }

    /// How the servers are started for this scenario.
    pub fn setup(self) -> Setup {
        match self {
            // Attacked as deployed: TCP on, icegate-relay's limits at their defaults.
            Scenario::Attack => Setup {
                tcp: true,
                default_limits: true,
            },
            _ => Setup::default(),
        }
    }

    /// Parses a name given on the command line.
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| BenchError::Config(format!("unknown scenario {s:?}")))
    }
}

/// One measured figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Allocations that carried the load.
    Allocations,
    /// Allocations that failed to set up.
    SetupFailures,
    /// Packets relayed per second, both directions.
    RelayedPps,
    /// Round trips lost, percent.
    LossPct,
    /// Round trip p50, µs.
    RttP50,
    /// Round trip p99, µs.
    RttP99,
    /// Round trip p99.9, µs.
    RttP999,
    /// Round trip average, µs (as turnutils_uclient reports it).
    RttAvg,
    /// Server CPU seconds in the window.
    ServerCpu,
    /// Server CPU µs per relayed packet.
    CpuPerPacket,
    /// Highest relayed rate with loss ≤ 0.1 %.
    SustainedPps,
    /// 1 when the blast stopped because the generator could not offer more.
    GeneratorLimited,
    /// Round trip p50 at half the sustained rate, µs.
    HalfRateP50,
    /// Round trip p99 at half the sustained rate, µs.
    HalfRateP99,
    /// Allocations per second.
    AllocsPerSec,
    /// Server CPU µs per allocation.
    CpuPerAlloc,
    /// Server RSS growth, MiB.
    RssDeltaMib,
    /// Server RSS growth per allocation, bytes.
    BytesPerAlloc,
    /// Server CPU while the allocations sit idle, percent of one core.
    IdleCpuPct,
    /// Allocations whose one probe packet did not come back, percent.
    ProbeLossPct,
    /// Load generator CPU seconds in the window.
    GeneratorCpu,
    /// A legitimate-allocation figure of the attack scenario.
    Attack(attack::Figure),
    /// Unauthenticated Allocates the flood sent per second.
    FloodPps,
    /// Stalled slowloris connections open, median of the once-a-second samples.
    SlowlorisHeld,
    /// Slowloris connections the server closed (or refused) during the attack.
    SlowlorisClosed,
    /// Server CPU during the attack, percent of one core.
    AttackCpuPct,
}

impl Metric {
    /// Row label with unit.
    pub fn label(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Metric::Allocations => "allocations",
            Metric::SetupFailures => "setup failures",
            Metric::RelayedPps => "relayed packets/s",
            Metric::LossPct => "loss %",
            Metric::RttP50 => "round trip p50 µs",
            Metric::RttP99 => "round trip p99 µs",
            Metric::RttP999 => "round trip p99.9 µs",
            Metric::RttAvg => "round trip average µs (the tool's own, ms-granular)",
            Metric::ServerCpu => "server CPU s",
            Metric::CpuPerPacket => "server CPU µs/packet",
            Metric::SustainedPps => "sustained relayed packets/s (loss ≤ 0.1 %)",
            Metric::GeneratorLimited => "stopped by the generator (1 = yes)",
            Metric::HalfRateP50 => "p50 at the latency rate µs",
            Metric::HalfRateP99 => "p99 at the latency rate µs",
            Metric::AllocsPerSec => "allocations/s",
            Metric::CpuPerAlloc => "server CPU µs/allocation",
            Metric::RssDeltaMib => "server RSS growth MiB",
            Metric::BytesPerAlloc => "server RSS bytes/allocation",
            Metric::IdleCpuPct => "server CPU while idle, % of a core",
            Metric::ProbeLossPct => "probe loss %",
            Metric::GeneratorCpu => "generator CPU s",
            Metric::Attack(f) => return Cow::Owned(f.label()),
            Metric::FloodPps => "flood: unauthenticated Allocates sent/s",
            Metric::SlowlorisHeld => "slowloris: stalled connections held open (median)",
            Metric::SlowlorisClosed => "slowloris: connections closed or refused by the server",
            Metric::AttackCpuPct => "server CPU under attack, % of a core",
        })
    }
}

/// Figures of one run of one scenario against one contender.
pub type Metrics = Vec<(Metric, f64)>;

/// The knobs of every scenario.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent calls.
    pub calls: usize,
    /// Packets per second each way per call.
    pub call_pps: f64,
    /// Measured seconds of the calls scenario.
    pub call_secs: f64,
    /// Unmeasured seconds before.
    pub warmup_secs: f64,
    /// Allocations of the blast scenario.
    pub blast_allocs: usize,
    /// Seconds per blast step.
    pub blast_step_secs: f64,
    /// Offered packets/s (client → peer) of the first step.
    pub blast_start_pps: f64,
    /// Rate factor between steps.
    pub blast_factor: f64,
    /// Most steps.
    pub blast_max_steps: usize,
    /// Steps that narrow the sustained rate down between the last clean and the first lossy
    /// step (each halves the gap, geometrically).
    pub blast_refine: usize,
    /// Offered packets/s (each echoed) of the latency step, the same for every contender.
    pub latency_pps: f64,
    /// Seconds of Allocate/Refresh cycles.
    pub alloc_secs: f64,
    /// Clients cycling at once.
    pub alloc_concurrency: usize,
    /// Allocations of the idle scenario.
    pub idle: usize,
    /// Seconds the idle allocations are held.
    pub idle_hold_secs: f64,
    /// Allocations being set up at once.
    pub setup_window: usize,
    /// Shortest pacing sleep.
    pub tick: Duration,
    /// Seconds of legitimate allocations before the attack (the baseline).
    pub attack_baseline_secs: f64,
    /// Seconds of legitimate allocations under attack.
    pub attack_secs: f64,
    /// Slowloris connections the attack keeps open (or tries to).
    pub attack_slowloris: usize,
    /// Legitimate clients per transport, each starting an allocation every 400 ms.
    pub attack_clients: usize,
    /// The TURN REST secret.
    pub secret: String,
}

impl Params {
    fn generator(&self, c: &Contender) -> Result<Generator, BenchError> {
        let proto = if c.kind == Kind::Floor {
            Protocol::Floor
        } else {
            Protocol::Turn
        };
        // Clients and the peer live on their own loopback addresses, so their ports never
        // collide with relay ports (the relays bind 127.0.0.2 and up).
        Generator::new(
            c.addr,
            proto,
            Secret::new(self.secret.as_bytes()),
            Ipv4Addr::new(127, 0, 1, 1),
            Ipv4Addr::new(127, 0, 2, 1),
        )
    }

    fn setup_timeout(&self, count: usize) -> Duration {
        Duration::from_secs(10 + count as u64 / 200)
    }
}

/// Runs `scenario` against `contender`.
pub fn run(scenario: Scenario, c: &mut Contender, p: &Params) -> Result<Metrics, BenchError> {
    let m = match scenario {
        Scenario::Calls => calls::run(c, p)?,
        Scenario::Blast => blast::run(c, p)?,
        Scenario::Allocations => allocations::run(c, p)?,
        Scenario::Idle => idle::run(c, p)?,
        Scenario::Attack => attack::run(c, p)?,
    };
    let failures = m
        .iter()
        .find(|(x, _)| *x == Metric::SetupFailures)
        .map_or(0.0, |(_, v)| *v);
    if failures > 0.0 {
        // Kept out of the tables; the progress output shows why.
        eprintln!(
            "{} {}: {failures} setup failures",
            c.kind.name(),
            scenario.name()
        );
    }
    if !c.alive() {
        return Err(BenchError::Contender(format!(
            "{} died during {}",
            c.kind.name(),
            scenario.name()
        )));
    }
    Ok(m)
}

fn pct(x: f64) -> f64 {
    x * 100.0
}

fn per(value: f64, count: f64) -> f64 {
    if count > 0.0 {
        value / count
    } else {
        f64::NAN
    }
}
