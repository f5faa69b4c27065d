//! The task that owns the Asterisk [`Gateway`]: it takes the hub's PBX outputs and the
//! connections' frames, and performs the gateway's outputs. The hub hands it work with
//! `try_send` only; this task may wait for the hub's inbox, never the other way round.
//!
//! ```text
//!   hub task ──try_send──► inbox ─┐                  ┌─► SIP connection task (outbox)
//!   SIP connection task ──► io ───┤ gateway task ────┼─► ARI events task (spawned per Connect)
//!   ARI events / REST tasks ► io ─┘  (owns Gateway)  ├─► REST request tasks (one per request)
//!                                                    └─► hub inbox (send, may wait)
//! ```

use std::time::{Duration, Instant};

use icegate_signal_asterisk::ari::controller::{ControllerConfig, RequestId};
use icegate_signal_asterisk::gateway::{CallResult, Gateway, GatewayConfig, Output};
use icegate_signal_asterisk::sip::UaConfig;
use icegate_signal_proto::hub::Output as HubOutput;
use icegate_signal_proto::protocol::{CallId, ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::asterisk_io::{self, Clients, Io};
use super::config::Asterisk;
use super::hub_task::HubInput;
use super::metrics::Metrics;

/// Hub outputs queued for the gateway before the hub starts dropping them.
pub const INBOX_CAPACITY: usize = 1024;

/// What the hub task gives the gateway.
#[derive(Debug)]
pub enum GatewayInput {
    /// A hub output addressed to the PBX.
    Hub(HubOutput),
    /// What became of an offer the gateway made.
    OfferResult {
        /// The gateway's token.
        token: u64,
        /// The new call, or why not.
        result: Result<CallId, ErrorCode>,
    },
}

/// Why the gateway cannot start.
pub type SpawnError = asterisk_io::IoError;

/// The gateway's configuration from the settings.
fn gateway_config(settings: &Asterisk) -> GatewayConfig {
    let password = String::from_utf8_lossy(settings.sip_password.expose()).into_owned();
    GatewayConfig {
        sip: UaConfig {
            secure: settings.sip_ws.tls,
            ..UaConfig::new(&settings.sip_user, &password, &settings.sip_domain)
        },
        ari: ControllerConfig {
            app: settings.app.clone(),
            routing: settings.routing.clone(),
            transfer_context: settings.context.clone(),
            originate_endpoint: format!("PJSIP/{}", settings.sip_user),
            ..ControllerConfig::default()
        },
        gather_timeout: settings.gather_timeout,
        register_expires: 300,
    }
}

/// How long the gateway may take at shutdown for Asterisk to answer its BYEs and the
/// unregistration.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Starts the gateway task and the SIP connection task; returns the gateway's inbox and the
/// task, which ends after its shutdown work (BYEs, unregistration) once `shutdown` is set.
pub fn spawn(
    settings: Asterisk,
    hub: mpsc::Sender<HubInput>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(mpsc::Sender<GatewayInput>, JoinHandle<()>), SpawnError> {
    let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
    let (io_tx, io_rx) = mpsc::channel(asterisk_io::IO_CAPACITY);
    let clients = Clients::new(&settings, io_tx.clone())?;
    tokio::spawn(asterisk_io::sip_loop(
        clients.clone(),
        io_tx,
        shutdown.clone(),
    ));
    let gateway = Gateway::new(gateway_config(&settings), rand::random(), Instant::now());
    metrics.asterisk_configured.set(1);
    let task = tokio::spawn(run(gateway, rx, io_rx, clients, hub, metrics, shutdown));
    Ok((tx, task))
}

async fn run(
    mut gateway: Gateway,
    mut inbox: mpsc::Receiver<GatewayInput>,
    mut io: mpsc::Receiver<Io>,
    clients: Clients,
    hub: mpsc::Sender<HubInput>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sip_outbox: Option<mpsc::Sender<String>> = None;
    let mut ari_generation: u64 = 0;
    // Set at shutdown: the gateway ends its calls and unregisters until quiet or this passes.
    let mut closing: Option<Instant> = None;
    loop {
        // Outputs first: `new` may have queued the first ARI connect.
        while let Some(output) = gateway.poll_output() {
            match output {
                Output::Sip(frame) => {
                    let sent = sip_outbox
                        .as_ref()
                        .is_some_and(|outbox| outbox.try_send(frame).is_ok());
                    if !sent {
                        tracing::debug!("SIP frame dropped: the SIP WebSocket is not writable");
                    }
                }
                Output::AriConnect(path) => {
                    ari_generation += 1;
                    clients.connect_events(path, ari_generation);
                }
                Output::AriRequest {
                    id,
                    method,
                    path,
                    body,
                } => clients.request(id, method, path, body),
                Output::Hub(message) => {
                    if hub.send(HubInput::Pbx(message)).await.is_err() {
                        return;
                    }
                }
                Output::Result(result) => {
                    let label = match result {
                        CallResult::Answered => "answered",
                        CallResult::Failed(reason) => reason.as_str(),
                    };
                    metrics.pbx_calls.with_label_values(&[label]).inc();
                }
                Output::Log(text) => tracing::info!(target: "icegate_signal::gateway", "{text}"),
            }
        }
        metrics
            .sip_registered
            .set(i64::from(gateway.is_registered()));
        metrics
            .ari_connected
            .set(i64::from(gateway.is_ari_connected()));
        metrics.pbx_calls_active.set(gateway.call_count() as i64);
        if let Some(give_up) = closing {
            let quiet = gateway.is_quiet();
            if quiet || sip_outbox.is_none() || Instant::now() >= give_up {
                if quiet {
                    tracing::info!("Asterisk calls ended and unregistered");
                } else {
                    tracing::warn!("Asterisk did not answer the shutdown BYEs or unregistration");
                }
                // Dropping the outbox lets the SIP connection close.
                return;
            }
        }

        let deadline = match (gateway.poll_timeout(), closing) {
            (Some(timer), Some(give_up)) => Some(timer.min(give_up)),
            (timer, give_up) => timer.or(give_up),
        };
        tokio::select! {
            input = inbox.recv() => {
                let now = Instant::now();
                match input {
                    Some(GatewayInput::Hub(output)) => gateway.handle_hub(output, now),
                    Some(GatewayInput::OfferResult { token, result }) => {
                        gateway.offer_result(token, result, now)
                    }
                    None => return,
                }
            }
            event = io.recv() => {
                let now = Instant::now();
                match event {
                    Some(Io::SipConnected(outbox)) => {
                        tracing::info!("SIP WebSocket to Asterisk open; registering");
                        sip_outbox = Some(outbox);
                        gateway.sip_connected(now);
                    }
                    Some(Io::SipFrame(frame)) => gateway.handle_sip(frame.as_bytes(), now),
                    Some(Io::SipClosed) => {
                        if sip_outbox.take().is_some() {
                            tracing::warn!("SIP WebSocket to Asterisk closed");
                        }
                        gateway.sip_disconnected(now);
                    }
                    Some(Io::AriConnected(generation)) if generation == ari_generation => {
                        tracing::info!("ARI events WebSocket open");
                        gateway.ari_connected(now);
                    }
                    Some(Io::AriEvent(generation, text)) if generation == ari_generation => {
                        gateway.handle_ari_event(&text, now)
                    }
                    Some(Io::AriClosed(generation)) if generation == ari_generation => {
                        if gateway.is_ari_connected() {
                            tracing::warn!("ARI events WebSocket closed");
                        }
                        gateway.ari_connection_lost(now);
                    }
                    Some(Io::AriResponse { id, status, body }) => {
                        gateway.handle_ari_response(RequestId(id), status, &body, now)
                    }
                    // Frames of an events connection that was replaced.
                    Some(Io::AriConnected(_) | Io::AriEvent(..) | Io::AriClosed(_)) => {}
                    None => return,
                }
            }
            () = sleep_until(deadline) => gateway.handle_timeout(Instant::now()),
            () = super::state::shutdown(&mut shutdown), if closing.is_none() => {
                let now = Instant::now();
                closing = Some(now + SHUTDOWN_WAIT);
                gateway.shutdown(now);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
