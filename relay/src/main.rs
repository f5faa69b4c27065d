//! icegate-relay: the runtime shell around the sans-IO TURN core in `icegate-relay-proto`.
//!
//! ```text
//!   main thread                          worker threads (one per core)
//!   ───────────                          ─────────────────────────────
//!   config, logging, RLIMIT_NOFILE       current-thread tokio runtime each, owning:
//!   bind listeners (SO_REUSEPORT) ──────▶  its UDP/TCP/TLS listeners
//!   drop privileges                        one proto::Server (no locks)
//!   /metrics /healthz /readyz              the relay sockets of its allocations
//!   sd_notify: READY, STATUS, WATCHDOG
//!   SIGHUP → new config ── watch ───────▶  set_config
//!   SIGTERM → drain     ── watch ───────▶  set_draining
//! ```
//!
//! Workers share only the [`Ledger`] (ports, quotas, nonce key, CONNECTION-IDs), touched when
//! allocations are made or freed, the admission of TCP/TLS connections, the TCP peer
//! connections of TCP allocations on their way from one worker to another
//! ([`peer_streams`]), and their own counter shards, summed when `/metrics` is scraped.
#![deny(unsafe_code)]

mod config;
#[allow(unsafe_code)]
mod dtls;
mod framing;
mod host_addresses;
mod limits;
mod metrics;
#[allow(unsafe_code)]
mod mmsg;
mod own_addresses;
mod peer_streams;
mod privileges;
#[allow(unsafe_code)]
mod relay_set;
#[allow(unsafe_code)]
mod sockets;
mod stats;
mod stream_admission;
mod stream_deadline;
#[allow(unsafe_code)]
mod worker;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use icegate_common::clock::unix_now;
use icegate_common::config::check_config;
use icegate_common::logging;
use icegate_common::metrics_http::{self, Health};
use icegate_common::signals::{control_signals, ControlSignal};
use icegate_common::systemd;
use icegate_common::tls::{self, ReloadableCert};
use icegate_relay_proto::metrics::{Counters, PeerDenials};
use icegate_relay_proto::nonce::NonceKey;
use icegate_relay_proto::peer_filter::PeerFilter;
use icegate_relay_proto::rate_limit::RateTable;
use icegate_relay_proto::{Ledger, Server};
use tokio::sync::watch;

use crate::config::{Cli, Settings};
use crate::stats::{HeartbeatWatch, RuntimeCounters};
use crate::worker::{Control, WorkerSetup};

/// A failure that stops the relay at start-up, with what it was doing.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot listen on {addr} ({transport}, {key}): {source}{}", in_use_hint(.source, .key))]
    Listen {
        addr: SocketAddr,
        transport: &'static str,
        /// The setting that chose the address, for the operator to change.
        key: &'static str,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Dtls(#[from] dtls::DtlsError),
    #[error("cannot drop privileges: {0}")]
    Privileges(#[from] privileges::PrivilegeError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What to do about a port that is taken: it is never shared, even with another relay.
fn in_use_hint(source: &std::io::Error, key: &str) -> String {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        format!("; another process (another icegate-relay?) listens there: stop it or change {key}")
    } else {
        String::new()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("icegate-relay: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        let tls = settings
            .tls
            .as_ref()
            .or(settings.dtls.as_ref())
            .map(|(c, k)| (c.as_path(), k.as_path()));
        return check_config("icegate-relay", tls, &settings.summary());
    }
    if let Err(error) = logging::init(settings.log_format, "info") {
        eprintln!("icegate-relay: {error}");
        return ExitCode::from(2);
    }
    match run(cli, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("icegate-relay: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The listeners of one worker.
#[derive(Default)]
struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    dtls: Vec<std::net::UdpSocket>,
}

/// Claims every listening address for this process ([`sockets::PortLock`], then
/// [`sockets::probe_exclusive`]): a port something else listens on fails the start instead of
/// being shared through SO_REUSEPORT. The locks are held until the process ends.
fn claim_listening_ports(settings: &Settings) -> Result<Vec<sockets::PortLock>, StartError> {
    use sockets::Listening;
    let mut wanted = Vec::new();
    for &ip in &settings.listening_ips {
        let turn = SocketAddr::new(ip, settings.port);
        if settings.udp {
            wanted.push((Listening::Udp, turn, "udp", "listening-port"));
        }
        if settings.tcp {
            wanted.push((Listening::Tcp, turn, "tcp", "listening-port"));
        }
        if settings.tls.is_some() {
            let tls = SocketAddr::new(ip, settings.tls_port);
            wanted.push((Listening::Tcp, tls, "tls", "tls-listening-port"));
        }
        if settings.dtls.is_some() {
            let dtls = SocketAddr::new(ip, settings.tls_port);
            wanted.push((Listening::Udp, dtls, "dtls", "tls-listening-port"));
        }
    }
    for addr in alt_udp_listeners(settings) {
        wanted.push((Listening::Udp, addr, "udp", "alt-listening-port"));
    }
    if let Some(addr) = settings.metrics_listen {
        wanted.push((Listening::Tcp, addr, "metrics http", "metrics-listen"));
    }
    let mut locks = Vec::new();
    for (transport, addr, name, key) in wanted {
        let err = |source| StartError::Listen {
            addr,
            transport: name,
            key,
            source,
        };
        locks.push(sockets::PortLock::claim(transport, addr).map_err(err)?);
        sockets::probe_exclusive(transport, addr).map_err(err)?;
    }
    Ok(locks)
}

fn bind_listeners(settings: &Settings) -> Result<Vec<Listeners>, StartError> {
    let listen_err = |addr, transport, key| {
        move |source| StartError::Listen {
            addr,
            transport,
            key,
            source,
        }
    };
    let mut all = Vec::new();
    for _ in 0..settings.workers {
        let mut l = Listeners::default();
        for &ip in &settings.listening_ips {
            let addr = SocketAddr::new(ip, settings.port);
            if settings.udp {
                l.udp.push(sockets::udp_listener(addr).map_err(listen_err(
                    addr,
                    "udp",
                    "listening-port",
                ))?);
            }
            if settings.tcp {
                l.tcp.push(sockets::tcp_listener(addr).map_err(listen_err(
                    addr,
                    "tcp",
                    "listening-port",
                ))?);
            }
            if settings.tls.is_some() {
                let addr = SocketAddr::new(ip, settings.tls_port);
                l.tls.push(sockets::tcp_listener(addr).map_err(listen_err(
                    addr,
                    "tls",
                    "tls-listening-port",
                ))?);
            }
            if settings.dtls.is_some() {
                let addr = SocketAddr::new(ip, settings.tls_port);
                l.dtls.push(sockets::udp_listener(addr).map_err(listen_err(
                    addr,
                    "dtls",
                    "tls-listening-port",
                ))?);
            }
        }
        for addr in alt_udp_listeners(settings) {
            l.udp.push(sockets::udp_listener(addr).map_err(listen_err(
                addr,
                "udp",
                "alt-listening-port",
            ))?);
        }
        all.push(l);
    }
    Ok(all)
}

/// The UDP listeners RFC 5780 adds: `alt-listening-port` on each address of a pair. (The
/// listening port on them is bound as for every listening address.)
fn alt_udp_listeners(settings: &Settings) -> Vec<SocketAddr> {
    let Some(nat) = &settings.server.nat_discovery else {
        return Vec::new();
    };
    nat.ip_pairs
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .map(|ip| SocketAddr::new(ip, nat.ports.1))
        .collect()
}

fn run(cli: Cli, mut settings: Settings) -> Result<(), StartError> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    settings.server.peer_filter = refuse_own_addresses(&settings, &settings.server.peer_filter);
    let relay_ips: Vec<IpAddr> = settings
        .server
        .relay_addresses
        .iter()
        .map(|r| r.local)
        .collect();
    if settings.relay_ip_auto {
        tracing::info!(
            relay = ?relay_ips,
            "relay-ip not set: relaying from the host's addresses of the wildcard listening-ip's \
             family (listed at start; set relay-ip to choose)"
        );
    }
    let ports = relay_ips.len() as u64 * (u64::from(settings.max_port - settings.min_port) + 1);
    let nofile = match limits::raise_nofile(ports) {
        Ok(limit) if limit.soft < limit.wanted => {
            tracing::warn!(
                soft = limit.soft,
                wanted = limit.wanted,
                "RLIMIT_NOFILE is below what the relay port range needs; allocations beyond it \
                 get 508"
            );
            limit.soft
        }
        Ok(limit) => {
            tracing::debug!(soft = limit.soft, "RLIMIT_NOFILE");
            limit.soft
        }
        Err(error) => {
            tracing::warn!(%error, "cannot raise RLIMIT_NOFILE");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft)
        }
    };
    let budget = limits::stream_budget(nofile, ports, settings.workers as u64);
    if budget.relay_short {
        tracing::warn!(
            nofile,
            relay_sockets = budget.relay_sockets,
            stream_connections = budget.streams,
            "RLIMIT_NOFILE cannot hold the relay port range and TCP/TLS clients: a quarter of \
             it is kept for TCP/TLS connections; raise LimitNOFILE or narrow the port range"
        );
    } else {
        tracing::info!(
            nofile,
            relay_sockets = budget.relay_sockets,
            stream_connections = budget.streams,
            "file descriptors reserved for relay sockets; the rest is for TCP/TLS connections"
        );
    }
    let admission = stream_admission::SharedAdmission::new(stream_admission::StreamLimits {
        per_ip: settings.streams.per_ip,
        total: settings.streams.total,
        descriptors: budget.streams,
    });

    let peer_streams = Arc::new(peer_streams::PeerStreams::default());

    let now = Instant::now();
    let ledger = Arc::new(Ledger::new(
        &relay_ips,
        settings.min_port,
        settings.max_port,
        NonceKey::new(rand::random()),
        now,
        unix_now(),
    ));
    // One table for all workers: the kernel spreads a source's packets over them, and
    // `rate-limit` is a budget per source, not per worker.
    let rate_table = Arc::new(RateTable::new(
        RateTable::DEFAULT_SLOTS,
        rand::random(),
        now,
    ));

    // Held until the process ends, which is never by returning from here.
    let _port_locks = claim_listening_ports(&settings)?;
    let listeners = bind_listeners(&settings)?;
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|source| StartError::Listen {
                addr,
                transport: "metrics http",
                key: "metrics-listen",
                source,
            })?;
            l.set_nonblocking(true).map_err(|source| StartError::Io {
                what: "metrics listener",
                source,
            })?;
            Some(l)
        }
        None => None,
    };
    let cert = match &settings.tls {
        Some((cert, key)) => Some(Arc::new(ReloadableCert::new(cert, key)?)),
        None => None,
    };
    let tls_config = cert
        .as_ref()
        .map(|c| tls::server_config(Arc::clone(c), &[]));
    let dtls_context = match &settings.dtls {
        Some((cert, key)) => Some(Arc::new(dtls::DtlsContext::new(cert, key)?)),
        None => None,
    };

    if settings.proc_user.is_some() || settings.proc_group.is_some() {
        if privileges::is_root() {
            privileges::drop_to(
                settings.proc_user.as_deref(),
                settings.proc_group.as_deref(),
            )?;
            tracing::info!(user = ?settings.proc_user, group = ?settings.proc_group, "dropped privileges");
        } else {
            tracing::warn!("proc-user/proc-group ignored: not running as root");
        }
    }

    let config = Arc::new(settings.server.clone());
    let (control_tx, control_rx) = watch::channel(Control {
        config: Arc::clone(&config),
        draining: false,
        stream_timeouts: stream_timeouts(&settings),
    });
    let mut shards = Vec::new();
    let mut denials = Vec::new();
    let mut stats = Vec::new();
    let mut threads = Vec::new();
    for (index, l) in listeners.into_iter().enumerate() {
        let counters = Arc::new(Counters::default());
        let denied = Arc::new(PeerDenials::default());
        let runtime_stats = Arc::new(RuntimeCounters::default());
        let server = Server::new(
            Arc::clone(&config),
            Arc::clone(&ledger),
            Arc::clone(&counters),
            Arc::clone(&denied),
            rand::random(),
            Instant::now(),
        )
        .with_rate_table(Arc::clone(&rate_table));
        let thread = worker::spawn(WorkerSetup {
            index,
            server,
            udp: l.udp,
            tcp: l.tcp,
            tls: l.tls,
            tls_config: tls_config.clone(),
            dtls: l.dtls,
            dtls_context: dtls_context.clone(),
            control: control_rx.clone(),
            counters: Arc::clone(&counters),
            stats: Arc::clone(&runtime_stats),
            admission: Arc::clone(&admission),
            peer_streams: Arc::clone(&peer_streams),
        })
        .map_err(|source| StartError::Io {
            what: "cannot start worker thread",
            source,
        })?;
        threads.push(thread);
        shards.push(counters);
        denials.push(denied);
        stats.push(runtime_stats);
    }

    let registry = prometheus::Registry::new();
    let collector =
        metrics::RelayCollector::new(shards.clone(), denials, stats.clone(), Arc::clone(&ledger))
            .with_streams(Arc::clone(&admission), budget.streams);
    let stats_for_watchdog = stats;
    registry
        .register(Box::new(collector))
        .expect("the relay collector registers once");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StartError::Io {
            what: "cannot start the control runtime",
            source,
        })?;
    runtime.block_on(async move {
        let health = Health::new();
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        if let Some(l) = metrics_listener {
            let listener =
                tokio::net::TcpListener::from_std(l).map_err(|source| StartError::Io {
                    what: "metrics listener",
                    source,
                })?;
            let health = health.clone();
            tokio::spawn(metrics_http::serve(listener, registry, health, async {
                let _ = metrics_stopped.await;
            }));
        }
        let mut signals = control_signals().map_err(|source| StartError::Io {
            what: "cannot install signal handlers",
            source,
        })?;
        health.set_ready(true);
        // Every listener was bound before the workers started, so the kernel already queues
        // what clients send: READY=1 cannot come too early.
        systemd::ready(&status_line(&shards, false));
        systemd::spawn_watchdog(workers_alive(threads, stats_for_watchdog));
        let status_shards = shards.clone();
        let status_control = control_tx.subscribe();
        systemd::spawn_status(STATUS_PERIOD, move || {
            status_line(&status_shards, status_control.borrow().draining)
        });
        tracing::info!(
            workers = settings.workers,
            listening = ?settings.listening_ips,
            port = settings.port,
            tls_port = settings.tls.as_ref().map(|_| settings.tls_port),
            dtls_port = settings.dtls.as_ref().map(|_| settings.tls_port),
            relay = ?relay_ips,
            min_port = settings.min_port,
            max_port = settings.max_port,
            realm = %settings.server.realm,
            "icegate-relay ready"
        );
        while let Some(ControlSignal::Reload) = signals.recv().await {
            systemd::reloading();
            reload(
                &cli,
                &mut settings,
                &control_tx,
                &admission,
                cert.as_deref(),
                dtls_context.as_deref(),
            );
            systemd::ready(&status_line(&shards, false));
        }
        health.set_ready(false);
        control_tx.send_modify(|c| c.draining = true);
        systemd::stopping(&status_line(&shards, true));
        drain(&shards, settings.drain_timeout, &mut signals).await;
        let _ = stop_metrics.send(());
        Ok::<(), StartError>(())
    })?;
    // Workers hold sockets and run forever; the process ending closes them all.
    std::process::exit(0);
}

/// How often `systemctl status` learns the allocation count.
const STATUS_PERIOD: Duration = Duration::from_secs(5);
/// How long a worker may go without a heartbeat (it beats every second) before the watchdog
/// pings stop: long enough that a slow moment under load is not a stall.
const WORKER_STALL: Duration = Duration::from_secs(10);

/// Allocations now open on all workers.
fn active_allocations(shards: &[Arc<Counters>]) -> i64 {
    shards
        .iter()
        .flat_map(|s| s.allocations_active.iter().flatten())
        .map(|a| a.load(Ordering::Relaxed))
        .sum()
}

/// The `STATUS=` line for systemd.
fn status_line(shards: &[Arc<Counters>], draining: bool) -> String {
    let verb = if draining { "draining" } else { "relaying" };
    format!("{verb}: {} allocations", active_allocations(shards))
}

/// The watchdog's health check: every worker thread still runs, and its event loop still
/// beats.
///
/// A worker that exits (its runtime or epoll set failed, or it panicked) or whose event loop
/// is stuck (a task that never yields, a blocking call) stops the pings, so systemd restarts
/// the relay instead of leaving its share of clients unanswered.
fn workers_alive(
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Vec<Arc<RuntimeCounters>>,
) -> impl FnMut() -> bool + Send {
    let mut heartbeats = HeartbeatWatch::new(stats, WORKER_STALL, Instant::now());
    move || {
        if let Some(index) = threads.iter().position(|t| t.is_finished()) {
            tracing::error!(worker = index, "relay worker thread ended");
            return false;
        }
        if let Some((index, stalled)) = heartbeats.stalled(Instant::now()) {
            tracing::error!(worker = index, ?stalled, "relay worker stopped beating");
            return false;
        }
        true
    }
}

/// `filter`, also refusing the listening addresses of `settings` as peers.
fn refuse_own_addresses(settings: &Settings, filter: &PeerFilter) -> PeerFilter {
    let (own, error) = own_addresses::own_addresses(settings);
    if let Some(error) = error {
        tracing::warn!(
            %error,
            "cannot list the local addresses; a wildcard listener is refused as a peer on \
             loopback only"
        );
    }
    filter.clone().with_self_addresses(own)
}

/// The deadlines of TCP/TLS connections under `settings`.
fn stream_timeouts(settings: &Settings) -> stream_deadline::StreamTimeouts {
    stream_deadline::StreamTimeouts {
        frame: settings.streams.frame_timeout,
        idle: settings.streams.idle_timeout,
        allocated: worker::stream_idle(&settings.server),
    }
}

/// Re-reads the configuration and certificates; a broken file keeps the running setup.
/// `running` keeps the stream limits in force, for the next reload to say what it changed.
fn reload(
    cli: &Cli,
    running: &mut Settings,
    control: &watch::Sender<Control>,
    admission: &stream_admission::SharedAdmission,
    cert: Option<&ReloadableCert>,
    dtls: Option<&dtls::DtlsContext>,
) {
    match Settings::load(cli) {
        Ok(mut fresh) => {
            if fresh.server.relay_addresses != running.server.relay_addresses
                || fresh.listening_ips != running.listening_ips
                || fresh.port != running.port
                || (fresh.min_port, fresh.max_port) != (running.min_port, running.max_port)
                || fresh.server.nat_discovery != running.server.nat_discovery
            {
                tracing::warn!(
                    "listening and relay addresses, the port range and RFC 5780 change only on \
                     restart; keeping the running ones"
                );
            }
            fresh.server.relay_addresses = running.server.relay_addresses.clone();
            // The listeners RFC 5780 answers from are the running ones.
            fresh.server.nat_discovery = running.server.nat_discovery.clone();
            // The listeners are the running ones; the local addresses are listed again.
            fresh.server.peer_filter = refuse_own_addresses(running, &fresh.server.peer_filter);
            let changed = running.streams.changes(&fresh.streams);
            if !changed.is_empty() {
                admission.set_caps(fresh.streams.per_ip, fresh.streams.total);
                tracing::info!("TCP/TLS connection limits changed: {}", changed.join(", "));
            }
            running.streams = fresh.streams;
            let timeouts = stream_timeouts(&fresh);
            let config = Arc::new(fresh.server);
            control.send_modify(|c| {
                c.config = config;
                c.stream_timeouts = timeouts;
            });
            tracing::info!(
                "configuration reloaded (users, secrets, peer filter, quotas, timers, stream \
                 limits)"
            );
        }
        Err(error) => tracing::error!("reload failed, keeping the running configuration: {error}"),
    }
    if let Some(cert) = cert {
        match cert.reload() {
            Ok(()) => {
                tracing::info!(cert = %cert.cert_path().display(), "TLS certificate reloaded")
            }
            Err(error) => {
                tracing::error!("TLS certificate reload failed, keeping the old one: {error}")
            }
        }
    }
    if let Some(dtls) = dtls {
        match dtls.reload() {
            Ok(()) => tracing::info!("DTLS: certificate reloaded"),
            Err(error) => {
                tracing::error!("DTLS: certificate reload failed, keeping the old one: {error}")
            }
        }
    }
}

/// Waits until no allocation is left or `timeout` passes; a second SIGTERM cuts it short.
async fn drain(
    shards: &[Arc<Counters>],
    timeout: Duration,
    signals: &mut tokio::sync::mpsc::Receiver<ControlSignal>,
) {
    let active = || active_allocations(shards);
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        allocations = active(),
        ?timeout,
        "draining: no new allocations"
    );
    loop {
        let left = active();
        if left <= 0 {
            tracing::info!("drained");
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(allocations = left, "drain timeout; stopping");
                return;
            }
            Some(ControlSignal::Terminate) = signals.recv() => {
                tracing::info!(allocations = left, "second termination signal; stopping");
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}
