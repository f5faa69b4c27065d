//! The load shapes, each run against one started contender: five TURN ones, and the
//! signaling one (over wss and over ws).

pub mod allocations;
#[allow(unsafe_code)]
pub mod attack;
pub mod blast;
pub mod calls;
pub mod idle;
pub mod signal;

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
    /// WebSocket signaling sessions over TLS (icegate-signal and Janus).
    Signal,
    /// The same over plain WebSocket (ws).
    SignalPlain,
    /// Plain WebSocket sessions over two icegate-signal instances sharing one Redis.
    SignalCluster,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Calls,
        Scenario::Blast,
        Scenario::Allocations,
        Scenario::Idle,
        Scenario::Attack,
        Scenario::Signal,
        Scenario::SignalPlain,
        Scenario::SignalCluster,
    ];

    /// The name used in arguments and tables.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Calls => "calls",
            Scenario::Blast => "blast",
            Scenario::Allocations => "allocations",
            Scenario::Idle => "idle",
            Scenario::Attack => "attack",
            Scenario::Signal => "signal",
            Scenario::SignalPlain => "signal-ws",
            Scenario::SignalCluster => "signal-cluster",
        }
    }

    /// Whether the scenario means anything for `kind` (the floor speaks no TURN to attack;
    /// the signal scenarios compare icegate-signal with Janus, the others TURN servers).
    pub fn runs_against(self, kind: Kind) -> bool {
        match self {
            Scenario::Signal | Scenario::SignalPlain => matches!(kind, Kind::Icegate | Kind::Janus),
            // Janus has no equivalent: its instances share nothing.
            Scenario::SignalCluster => kind == Kind::Icegate,
            Scenario::Attack => matches!(kind, Kind::Icegate | Kind::Coturn),
            _ => kind != Kind::Janus,
        }
    }

    /// Whether this is a signaling scenario (icegate-signal rather than icegate-relay).
    pub fn is_signal(self) -> bool {
        matches!(
            self,
            Scenario::Signal | Scenario::SignalPlain | Scenario::SignalCluster
        )
    }

    /// How the servers are started for this scenario.
    pub fn setup(self) -> Setup {
        match self {
            // Attacked as deployed: TCP on, icegate-relay's limits at their defaults.
            Scenario::Attack => Setup {
                tcp: true,
                default_limits: true,
                ..Setup::default()
            },
            Scenario::Signal => Setup {
                signal: true,
                tls: true,
                ..Setup::default()
            },
            Scenario::SignalPlain => Setup {
                signal: true,
                ..Setup::default()
            },
            Scenario::SignalCluster => Setup {
                signal: true,
                cluster: true,
                ..Setup::default()
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
    /// Signaling sessions open at once.
    Sessions,
    /// Sessions opened per second.
    SessionsPerSec,
    /// Server CPU µs per session setup.
    CpuPerSession,
    /// Server RSS growth per idle session, bytes.
    BytesPerSession,
    /// Server RSS growth per connection that stopped after the upgrade, bytes.
    BytesPerUnauthenticated,
    /// Fan-out messages delivered per second.
    FanoutPerSec,
    /// Of those, delivered to members on another instance than the caller's, per second.
    FanoutRemotePerSec,
    /// Server CPU µs per delivered fan-out message.
    CpuPerFanout,
    /// The clients' CPU seconds during the fan-out window.
    FanoutGeneratorCpu,
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
            Metric::Sessions => "sessions held",
            Metric::SessionsPerSec => "sessions set up/s",
            Metric::CpuPerSession => "server CPU µs per session setup",
            Metric::BytesPerSession => "server RSS bytes per idle session",
            Metric::BytesPerUnauthenticated => {
                "server RSS bytes per connection without hello (icegate) or create (Janus)"
            }
            Metric::FanoutPerSec => "fan-out: messages delivered/s",
            Metric::FanoutRemotePerSec => "fan-out: of those, to another instance/s",
            Metric::CpuPerFanout => "fan-out: server CPU µs per delivered message",
            Metric::FanoutGeneratorCpu => "fan-out: generator CPU s",
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
    /// Signaling sessions opened and held (signal scenarios).
    pub signal_sessions: usize,
    /// Signaling sessions being set up at once.
    pub signal_window: usize,
    /// Connections that stop after the upgrade, opened after the sessions.
    pub signal_prehello: usize,
    /// Rooms of 32 sessions in the fan-out (icegate-signal only); 0 skips it.
    pub fanout_rooms: usize,
    /// Seconds of fan-out.
    pub fanout_secs: f64,
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
        Scenario::Signal | Scenario::SignalPlain | Scenario::SignalCluster => signal::run(c, p)?,
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
