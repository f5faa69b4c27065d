//! The `icegate-bench` command: `run` (the benchmark, the default) and `floor` (the bare UDP
//! forwarder the harness starts as a contender).
#![deny(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use icegate_bench::contender::{relay_binary, signal_binary, Kind, ServerSpec};
use icegate_bench::error::BenchError;
use icegate_bench::harness::{self, Plan};
use icegate_bench::report::{self, RunInfo};
use icegate_bench::scenario::{Params, Scenario};
use icegate_bench::uclient::UclientParams;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "icegate-bench",
    about = "Benchmarks icegate-relay against coturn and a bare UDP forwarder, and icegate-signal against Janus"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmark (the default).
    Run(Box<RunArgs>),
    /// Be the floor: a bare UDP forwarder (started by `run`).
    Floor(FloorArgs),
}

#[derive(Args)]
struct FloorArgs {
    /// Address of the listener.
    #[arg(long)]
    listen: SocketAddrV4,
    /// Address the per-client relay sockets bind to.
    #[arg(long)]
    relay_ip: Ipv4Addr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Contenders, comma-separated: icegate, coturn, floor, janus (janus runs the signal
    /// scenarios only, coturn and floor the TURN ones).
    #[arg(
        long,
        default_value = "icegate,coturn,floor,janus",
        value_delimiter = ','
    )]
    contenders: Vec<String>,
    /// Scenarios, comma-separated: calls, blast, allocations, idle, attack, signal (wss),
    /// signal-ws (plain ws), signal-cluster (ws, two icegate-signal instances over Redis).
    #[arg(
        long,
        default_value = "calls,blast,allocations,idle,attack,signal,signal-ws,signal-cluster",
        value_delimiter = ','
    )]
    scenarios: Vec<String>,
    /// Repetitions of everything; the report shows medians.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Worker threads of every server (icegate --workers, coturn --relay-threads).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// CPUs the servers are pinned to (taskset list); "none" to not pin.
    #[arg(long, default_value = "1")]
    server_cpus: String,
    /// CPU the load generator is pinned to; negative to not pin.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    generator_cpu: i64,
    /// Concurrent calls.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Measured seconds of the calls scenario.
    #[arg(long, default_value_t = 8.0)]
    call_secs: f64,
    /// Allocations of the blast scenario.
    #[arg(long, default_value_t = 4)]
    blast_allocs: usize,
    /// Seconds per blast step.
    #[arg(long, default_value_t = 1.5)]
    blast_step_secs: f64,
    /// Offered packets/s (client → peer, echoed back) of the first blast step.
    #[arg(long, default_value_t = 20_000.0)]
    blast_start_pps: f64,
    /// Offered packets/s (each echoed) at which every contender's blast latency is measured;
    /// the default (210,000 relayed/s) is about half of icegate-relay's and the floor's
    /// sustained rate on a 2-core VM.
    #[arg(long, default_value_t = 105_000.0)]
    latency_pps: f64,
    /// Steps narrowing the blast's sustained rate down after the first lossy step.
    #[arg(long, default_value_t = 4)]
    blast_refine: usize,
    /// Seconds of allocation cycles.
    #[arg(long, default_value_t = 4.0)]
    alloc_secs: f64,
    /// Clients cycling allocations at once.
    #[arg(long, default_value_t = 128)]
    alloc_concurrency: usize,
    /// Allocations held by the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Seconds of legitimate allocations without the attack (the attack scenario's baseline).
    #[arg(long, default_value_t = 5.0)]
    attack_baseline_secs: f64,
    /// Seconds of legitimate allocations under attack.
    #[arg(long, default_value_t = 10.0)]
    attack_secs: f64,
    /// Stalled TCP connections the slowloris attacker keeps open (or tries to).
    #[arg(long, default_value_t = 1000)]
    attack_slowloris: usize,
    /// Legitimate clients per transport (UDP, TCP) in the attack scenario, each starting an
    /// allocation every 400 ms; all share 127.0.0.1, so keep them under icegate-relay's 20
    /// unauthenticated requests/s per address.
    #[arg(long, default_value_t = 2)]
    attack_clients: usize,
    /// Signaling sessions opened and held by the signal scenarios (a descriptor each in the
    /// server and in this process).
    #[arg(long, default_value_t = 3000)]
    signal_sessions: usize,
    /// Signaling sessions being set up at once.
    #[arg(long, default_value_t = 32)]
    signal_window: usize,
    /// Connections that stop after the WebSocket upgrade (no hello / create), opened after
    /// the sessions.
    #[arg(long, default_value_t = 1000)]
    signal_prehello: usize,
    /// Rooms of 32 sessions in icegate-signal's fan-out (0 skips it).
    #[arg(long, default_value_t = 20)]
    fanout_rooms: usize,
    /// Seconds of fan-out.
    #[arg(long, default_value_t = 4.0)]
    fanout_secs: f64,
    /// icegate-signal binary; default target/release/icegate-signal, built if missing.
    #[arg(long)]
    signal_bin: Option<PathBuf>,
    /// Janus's binary.
    #[arg(long, default_value = "/usr/bin/janus")]
    janus_bin: PathBuf,
    /// Relay addresses 127.0.0.2, 127.0.0.3, ... (16,384 ports each); more than one for
    /// --idle above 16,000.
    #[arg(long, default_value_t = 1)]
    relay_ips: u8,
    /// turnutils_uclient clients (0 to skip it).
    #[arg(long, default_value_t = 100)]
    uclient_clients: usize,
    /// turnutils_uclient messages per client (20 ms apart).
    #[arg(long, default_value_t = 500)]
    uclient_messages: usize,
    /// Address the servers listen on; with 0.0.0.0 (a wildcard listener) clients still reach
    /// them at 127.0.0.1.
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    listen_ip: Ipv4Addr,
    /// icegate-relay binary; default target/release/icegate-relay, built if missing.
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// coturn's server binary.
    #[arg(long, default_value = "/usr/bin/turnserver")]
    coturn_bin: PathBuf,
    /// Where the report goes.
    #[arg(long, default_value = "benchmarks/RESULTS.md")]
    out: PathBuf,
    /// A remark for the report's header (e.g. "preliminary: machine busy").
    #[arg(long)]
    note: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Floor(f)) => icegate_bench::floor::serve(f.listen, f.relay_ip, f.workers),
        Some(Cmd::Run(r)) => run(&r),
        None => run(&cli.run),
    };
    if let Err(e) = result {
        eprintln!("icegate-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &RunArgs) -> Result<(), BenchError> {
    let contenders = a
        .contenders
        .iter()
        .map(|s| Kind::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let scenarios = a
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let relay_bin = match &a.relay_bin {
        Some(p) => p.clone(),
        None => relay_binary("release")?,
    };
    let signal_bin = match &a.signal_bin {
        Some(p) => p.clone(),
        None if scenarios.iter().any(|s| s.is_signal()) && contenders.contains(&Kind::Icegate) => {
            signal_binary("release")?
        }
        None => PathBuf::new(),
    };
    let bench_bin = std::env::current_exe().map_err(|e| BenchError::io("current_exe", e))?;
    let secret = "icegate-bench-secret".to_string();
    let spec = ServerSpec {
        relay_bin,
        coturn_bin: a.coturn_bin.clone(),
        bench_bin,
        signal_bin,
        janus_bin: a.janus_bin.clone(),
        listen_ip: a.listen_ip,
        relay_ips: (0..a.relay_ips.max(1))
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
            .collect(),
        min_port: 49152,
        max_port: 65535,
        workers: a.workers,
        cpus: (a.server_cpus != "none").then(|| a.server_cpus.clone()),
        secret: secret.clone(),
        realm: "bench.icegate".into(),
    };
    let params = Params {
        calls: a.calls,
        call_pps: 50.0,
        call_secs: a.call_secs,
        warmup_secs: 1.0,
        blast_allocs: a.blast_allocs,
        blast_step_secs: a.blast_step_secs,
        blast_start_pps: a.blast_start_pps,
        blast_factor: 1.3,
        blast_max_steps: 14,
        blast_refine: a.blast_refine,
        latency_pps: a.latency_pps,
        alloc_secs: a.alloc_secs,
        alloc_concurrency: a.alloc_concurrency,
        idle: a.idle,
        idle_hold_secs: 2.0,
        setup_window: 256,
        tick: Duration::from_micros(200),
        attack_baseline_secs: a.attack_baseline_secs,
        attack_secs: a.attack_secs,
        attack_slowloris: a.attack_slowloris,
        attack_clients: a.attack_clients,
        signal_sessions: a.signal_sessions,
        signal_window: a.signal_window,
        signal_prehello: a.signal_prehello,
        fanout_rooms: a.fanout_rooms,
        fanout_secs: a.fanout_secs,
        secret: secret.clone(),
    };
    let generator_cpu = usize::try_from(a.generator_cpu).ok();
    let plan = Plan {
        contenders,
        scenarios,
        repeat: a.repeat.max(1),
        spec: spec.clone(),
        params: params.clone(),
        uclient: (a.uclient_clients > 0).then(|| UclientParams {
            clients: a.uclient_clients,
            messages: a.uclient_messages,
            cpus: generator_cpu.map(|c| c.to_string()),
            secret: secret.clone(),
        }),
        generator_cpu,
    };
    let machine = report::machine();
    let started = std::time::Instant::now();
    let outcome = harness::run(&plan, |line| eprintln!("{line}"))?;
    let mut notes = a.note.clone();
    notes.extend(outcome.errors.iter().map(|e| format!("error: {e}")));
    let info = RunInfo {
        machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        settings: vec![
            format!(
                "servers: {} worker thread(s), pinned to CPU(s) {}; generator (one thread) pinned to {}",
                spec.workers,
                spec.cpus.as_deref().unwrap_or("none"),
                generator_cpu.map_or("none".into(), |c| c.to_string())
            ),
            format!("icegate-relay: {}", spec.relay_bin.display()),
            format!(
                "servers listen on {} (clients send to {})",
                spec.listen_ip,
                spec.reached_at()
            ),
            format!(
                "calls: {} allocations × {} packets/s each way, {}-byte payload over ChannelData (UDP), {} s measured after 1 s warm-up",
                params.calls, params.call_pps, icegate_bench::generator::PAYLOAD, params.call_secs
            ),
            format!(
                "blast: {} allocations, steps of {} s from {} packets/s offered (each echoed, so relayed = 2×), ×{} per step, then {} steps narrowing the sustained rate down; latency at {} packets/s offered for every contender",
                params.blast_allocs, params.blast_step_secs, params.blast_start_pps, params.blast_factor, params.blast_refine, params.latency_pps
            ),
            format!(
                "allocations: {} clients cycling Allocate (401 challenge, then authenticated) + Refresh(0) for {} s, a new socket per cycle",
                params.alloc_concurrency, params.alloc_secs
            ),
            format!(
                "idle: {} allocations with a permission and a channel each, relay IPs {:?}",
                params.idle, spec.relay_ips
            ),
            format!(
                "attack: {} legitimate client(s) per transport (UDP, TCP; no TLS: no contender is given a certificate) on 127.0.0.1, each starting Allocate (401 challenge, then authenticated) + Refresh(0) every {} ms with a {} s limit, on a new socket or connection each time; {} s without the attack, then {} s under attack from {}–{}: a flood of unauthenticated Allocates over UDP (one thread, {} sockets) and slowloris over TCP ({} connections, one byte of a STUN header each, reopened {} ms after the server closes them); attacker threads at nice 19 on the generator's CPU",
                params.attack_clients,
                icegate_bench::scenario::attack::INTERVAL.as_millis(),
                icegate_bench::scenario::attack::TIMEOUT.as_secs(),
                params.attack_baseline_secs,
                params.attack_secs,
                icegate_bench::scenario::attack::ATTACKER_IPS[0],
                icegate_bench::scenario::attack::ATTACKER_IPS[3],
                icegate_bench::scenario::attack::FLOOD_SOCKETS,
                params.attack_slowloris,
                icegate_bench::scenario::attack::RECONNECT_AFTER.as_millis(),
            ),
            "attack, limits in force: both servers listen on UDP and TCP with their defaults; icegate-relay's rate limit is on only here (20 Binding or failed-authentication requests/s per source address, bursts of 40, beyond that no answer), max-connections-per-ip 128, stream-frame-timeout 5 s, stream-idle-timeout 30 s; coturn 4.6 has no per-address connection cap, no request rate limit and no frame timeout, and closes a connection without an allocation after max-allocate-timeout (60 s)".to_string(),
            format!(
                "signal, signal-ws: icegate-signal ({}; anonymous, TURN credentials in every welcome, max-connections-per-ip 1,000,000, idle-timeout 3600 s, max-message-rate 1,000,000) and Janus ({}, websockets transport and echotest plugin only, session_timeout 0, debug_level 1), over wss (signal; one self-signed ECDSA P-256 certificate for both) and ws (signal-ws); {} sessions set up {} at a time by one client thread (tokio-tungstenite, tokio-rustls), a session being icegate's connect to /ws?name= + welcome and Janus's connect + create + attach to janus.plugin.echotest; RSS read {} s after the last; then {} connections that stop after the upgrade; then, icegate only, {} rooms of {} sessions, one caller per room sending call to the room and hangup in a loop for {} s",
                spec.signal_bin.display(),
                spec.janus_bin.display(),
                params.signal_sessions,
                params.signal_window,
                1,
                params.signal_prehello,
                params.fanout_rooms,
                icegate_bench::scenario::signal::ROOM_MEMBERS,
                params.fanout_secs,
            ),
            format!(
                "signal-cluster: as signal-ws, icegate-signal only, with two instances sharing one redis-server ({}, no persistence; --redis-url): session n on instance n mod 2; the fan-out's rooms take their members from the two instances in turn, the caller on the first, so half of each room's members are reached through Redis; CPU and RSS are those of the two instances and the redis-server together, all three pinned like the servers",
                "/usr/bin/redis-server"
            ),
            format!("wall time of the whole run: {:.0} s", started.elapsed().as_secs_f64()),
        ],
        notes,
        repeats: plan.repeat,
    };
    let text = report::render(&outcome.records, &info);
    std::fs::write(&a.out, &text).map_err(|e| BenchError::io(&a.out, e))?;
    println!("{text}");
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
