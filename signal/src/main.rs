//! icegate-signal: the runtime shell around the sans-IO cores `icegate_signal_proto` and
//! `icegate_signal_asterisk`.
//!
//! ```text
//!   accept loop ──► per TCP connection: TLS, HTTP/1.1 ──► /ws upgrade ──► connection task
//!                                                    └─► /v1/ice-servers, /        │ bounded
//!   relay health tasks (poll /readyz) ──► relay_up flags ──► ICE servers           ▼
//!   switchboard task (owns Hub + Gateway) ◄── bounded inbox ── connection tasks ◄── bounded outbox each
//!        ▲ └─► SIP WebSocket task, ARI events task, ARI REST request tasks ─► bounded io ─┘
//!        └───► bus task (redis-url: Redis pub/sub to the other instances) ─► bounded events
//!   main: signals (SIGHUP reloads certificate and keys, SIGTERM closes with 1001), /metrics
//! ```
//!
//! The switchboard task never waits on a client: it writes to each session's outbox with
//! `try_send` and disconnects a session whose outbox is full. The hub and the Asterisk gateway
//! meet only inside its core (`icegate_signal_asterisk::switchboard`), with no channel between.
#![deny(unsafe_code)]

mod shell {
    pub mod asterisk_io;
    pub mod bus;
    pub mod config;
    pub mod heap;
    pub mod inbox;
    pub mod metrics;
    pub mod relay_health;
    pub mod server;
    pub mod state;
    pub mod switchboard_task;
    pub mod ws;
}

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use icegate_common::config::check_config;
use icegate_common::logging;
use icegate_common::metrics_http::{self, Health};
use icegate_common::signals::{control_signals, ControlSignal};
use icegate_common::systemd;
use icegate_common::tls::{self, ReloadableCert};
use icegate_signal_proto::hub::Hub;
use icegate_signal_proto::origin::{own_origins, AllowedOrigins, OriginPolicy};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use shell::config::{Cli, Settings, TlsMode};
use shell::metrics::Metrics;
use shell::state::Shared;

/// How long connections get to send their close frames at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How often `systemctl status` learns the connection count.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// A failure that stops the server at start-up.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Switchboard(shell::switchboard_task::SpawnError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("icegate-signal: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        let tls = match &settings.tls {
            TlsMode::Files { cert, key } => Some((cert.as_path(), key.as_path())),
            _ => None,
        };
        return check_config("icegate-signal", tls, &settings.summary());
    }
    if let Err(error) = logging::init(settings.log_format, "info") {
        eprintln!("icegate-signal: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("icegate-signal: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("icegate-signal: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, settings: Settings) -> Result<(), StartError> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let Settings {
        listen,
        tls: tls_mode,
        keys,
        relays,
        health_interval,
        health_grace,
        credential_ttl,
        anonymous,
        allowed_origins,
        metrics_listen,
        log_format: _,
        limits,
        hub: hub_config,
        asterisk,
        redis_url,
    } = settings;

    let listen_error = |addr, what| move |source| StartError::Listen { addr, what, source };
    let scheme = if matches!(tls_mode, TlsMode::Plain) {
        "http"
    } else {
        "https"
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(listen_error(listen, scheme))?;
    let metrics_listener = match metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(listen_error(addr, "metrics http"))?,
        ),
        None => None,
    };
    let cert = match &tls_mode {
        TlsMode::Files { cert, key } => Some(Arc::new(ReloadableCert::new(cert, key)?)),
        TlsMode::SelfSigned(dir) => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            let ip = listen.ip().to_string();
            if !names.contains(&ip) {
                names.push(ip);
            }
            let (cert, key) = tls::generate_self_signed(dir, &names)?;
            tracing::info!(cert = %cert.display(), "using a self-signed certificate");
            Some(Arc::new(ReloadableCert::new(cert, key)?))
        }
        TlsMode::Plain => None,
    };
    let tls_config = cert
        .as_ref()
        .map(|cert| tls::server_config(Arc::clone(cert), &[b"http/1.1"]));

    let metrics = Metrics::new();
    let (stop, stopped) = watch::channel(false);
    let (hub_tx, hub_rx) = mpsc::channel(shell::inbox::INBOX_CAPACITY);
    let shutdown_done = shell::switchboard_task::spawn(
        Hub::new(hub_config, rand::random()),
        asterisk,
        redis_url,
        hub_rx,
        metrics.clone(),
        stopped.clone(),
    )
    .map_err(StartError::Switchboard)?;
    let origins = origin_policy(listen, cert.as_deref(), &allowed_origins);
    let shared = Arc::new(Shared::new(
        anonymous,
        keys,
        origins,
        relays,
        credential_ttl,
        limits,
        hub_tx,
        metrics.clone(),
        stopped.clone(),
    ));
    shell::relay_health::spawn(
        &shared,
        shell::relay_health::Timing {
            interval: health_interval,
            grace: health_grace,
        },
    );

    let health = Health::new();
    if let Some(listener) = metrics_listener {
        let mut stopped = stopped.clone();
        tokio::spawn(metrics_http::serve(
            listener,
            metrics.registry.clone(),
            health.clone(),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
    }
    shell::heap::spawn(metrics.clone(), stopped.clone());
    tokio::spawn(shell::server::serve(
        listener,
        tls_config,
        Arc::clone(&shared),
    ));

    let mut signals = control_signals().map_err(StartError::Signals)?;
    health.set_ready(true);
    // Both listeners were bound above, so the kernel already queues connections.
    systemd::ready(&status_line(&metrics, false));
    // A task on the runtime that serves every connection: pings stop when it stops.
    systemd::spawn_watchdog(|| true);
    let (status_metrics, status_stopped) = (metrics.clone(), stopped.clone());
    systemd::spawn_status(STATUS_PERIOD, move || {
        status_line(&status_metrics, *status_stopped.borrow())
    });
    let scheme = if cert.is_some() { "https" } else { "http" };
    tracing::info!(
        url = %format!("{scheme}://{listen}/"),
        anonymous,
        relays = shared.relays.len(),
        "icegate-signal ready"
    );
    while let Some(ControlSignal::Reload) = signals.recv().await {
        systemd::reloading();
        reload(&cli, &shared, listen, cert.as_deref());
        systemd::ready(&status_line(&metrics, false));
    }

    tracing::info!("shutting down: closing connections");
    systemd::stopping(&status_line(&metrics, true));
    health.set_ready(false);
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while metrics.connections_active.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The gateway's BYEs and unregistration (bounded by its own wait) and the cluster's
    // goodbye.
    let _ = tokio::time::timeout_at(deadline, shutdown_done).await;
    Ok(())
}

/// The `STATUS=` line for systemd.
fn status_line(metrics: &Metrics, stopping: bool) -> String {
    let connections = metrics.connections_active.get();
    if stopping {
        format!("closing {connections} connections")
    } else {
        format!("serving: {connections} connections")
    }
}

/// The origins allowed: the server's own (from `listen` and the certificate's names) and
/// the configured ones.
fn origin_policy(
    listen: SocketAddr,
    cert: Option<&ReloadableCert>,
    configured: &AllowedOrigins,
) -> OriginPolicy {
    let names = cert.map(ReloadableCert::dns_names).unwrap_or_default();
    OriginPolicy::new(own_origins(listen, cert.is_some(), &names), configured)
}

/// Re-reads the certificate, the keys and the allowed origins; a broken file keeps what is
/// running.
fn reload(cli: &Cli, shared: &Shared, listen: SocketAddr, cert: Option<&ReloadableCert>) {
    let allowed_origins = match Settings::load(cli) {
        Ok(fresh) => {
            shared.set_keys(fresh.keys);
            tracing::info!(
                "JWT keys and TURN secret reloaded, and allowed-origins; other settings change \
                 only on restart"
            );
            Some(fresh.allowed_origins)
        }
        Err(error) => {
            tracing::error!("reload failed, keeping the running configuration: {error}");
            None
        }
    };
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
    // After the certificate, whose names are origins of the server's own.
    if let Some(configured) = allowed_origins {
        shared.set_origins(origin_policy(listen, cert, &configured));
    }
}
