//! The one task that owns the [`Switchboard`]: the hub and, when Asterisk is configured, the
//! gateway, joined in one sans-IO core. It is the only place where hub and gateway meet, and
//! it drives both from one loop over five inputs: the connections' inbox, the Asterisk
//! connections' events, the cluster bus's events (with `redis-url`), the core's timer and the
//! shutdown signal.
//!
//! ```text
//!   connection tasks ──► inbox (bounded, send may wait) ─┐                    ┌─► session outboxes (try_send;
//!   SIP WebSocket task ─► io (bounded) ─────────────────┤  switchboard task  │    full → disconnected, 1013)
//!   ARI events task(s) ─► io ───────────────────────────┤ (owns Switchboard: ├─► SIP WebSocket task (outbox)
//!   ARI REST request tasks ► io ────────────────────────┤  Hub ⇄ Gateway)    ├─► ARI events task (per connect)
//!   bus task (Redis) ─► events (bounded) ───────────────┤                    ├─► one task per REST request
//!   timer (poll_timeout), shutdown ─────────────────────┘                    └─► bus task (outbox, try_send)
//! ```
//!
//! The task never waits on a client: it answers each session over that session's own bounded
//! outbox with `try_send`, and a session whose outbox is full is closed in the hub (its calls
//! end for the other parties) and disconnected. Nor does it wait on Asterisk: SIP frames go to
//! the SIP WebSocket task's outbox with `try_send` (dropped while it is not writable, as SIP
//! over a lost connection is), and ARI requests are spawned. Nor on Redis: bus messages go to
//! the bus task's outbox with `try_send` (dropped and counted when it is full).
//!
//! Module dependencies point one way, with no cycle: `main → switchboard_task → {asterisk_io,
//! bus, inbox, state, metrics, config}`, `bus → config`, `main → server → ws → {inbox, state, metrics}`,
//! `asterisk_io → {state, config}`, `state → {inbox, config, metrics}`; `inbox`, `config` and
//! `metrics` import no other shell module.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use icegate_signal_asterisk::ari::controller::{ControllerConfig, RequestId};
use icegate_signal_asterisk::gateway::{CallResult, Gateway, GatewayConfig};
use icegate_signal_asterisk::sip::UaConfig;
use icegate_signal_asterisk::switchboard::{Output, Switchboard};
use icegate_signal_proto::cluster::{Channel, Cluster, ClusterConfig};
use icegate_signal_proto::hub::{Hub, InstanceId};
use icegate_signal_proto::protocol::SessionId;
use tokio::sync::{mpsc, oneshot, watch};

use super::asterisk_io::{self, Clients, Io};
use super::bus::{self, BusEvent, BusLink, Outgoing};
use super::config::{Asterisk, RedisUrl};
use super::inbox::{HubInput, Outbox};
use super::metrics::Metrics;
use super::state;

/// Why the switchboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The Asterisk gateway's clients.
    #[error("Asterisk gateway: {0}")]
    Asterisk(#[from] asterisk_io::IoError),
    /// The Redis client of the cluster bus.
    #[error("cluster bus (redis-url): {0}")]
    Redis(#[from] redis::RedisError),
}

/// How long the gateway may take at shutdown for Asterisk to answer its BYEs and the
/// unregistration.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

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

/// The Asterisk side's I/O, while the gateway runs.
struct Links {
    clients: Clients,
    io: mpsc::Receiver<Io>,
    /// The open SIP WebSocket's outbox; dropping it lets that connection close.
    sip_outbox: Option<mpsc::Sender<String>>,
    /// Names the current ARI events connection; frames of replaced ones are ignored.
    ari_generation: u64,
    /// Set at shutdown: the gateway ends its calls and unregisters until quiet or this passes.
    closing: Option<Instant>,
}

/// How long after the shutdown signal the cluster says goodbye even if sessions are still
/// closing (within icegate-signal's own grace for closing connections).
const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// Shutdown's progress: the gateway's BYEs and unregistration (in [`Links`]), then the
/// cluster's goodbye once the sessions have closed, flushed to Redis.
struct Stopping {
    /// When the goodbye goes even with sessions left.
    leave_by: Instant,
    /// The bus task's answer once the goodbye is published.
    flushed: Option<oneshot::Receiver<()>>,
    /// Told when all of it is done.
    done: Option<oneshot::Sender<()>>,
}

/// Starts the switchboard task (and, with Asterisk, the SIP connection task; with `redis`, the
/// cluster bus task). Returns a receiver that completes once the shutdown work is done after
/// `shutdown` is set: the gateway's BYEs and unregistration, and the cluster's goodbye once
/// the sessions have closed. The hub goes on serving the connections still closing.
pub fn spawn(
    hub: Hub,
    asterisk: Option<Asterisk>,
    redis: Option<RedisUrl>,
    inbox: mpsc::Receiver<HubInput>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<oneshot::Receiver<()>, SpawnError> {
    let now = Instant::now();
    let (mut board, links) = match asterisk {
        Some(settings) => {
            let (io_tx, io_rx) = mpsc::channel(asterisk_io::IO_CAPACITY);
            let clients = Clients::new(&settings, io_tx.clone())?;
            tokio::spawn(asterisk_io::sip_loop(
                clients.clone(),
                io_tx,
                shutdown.clone(),
            ));
            let gateway = Gateway::new(gateway_config(&settings), rand::random(), now);
            metrics.asterisk_configured.set(1);
            let links = Links {
                clients,
                io: io_rx,
                sip_outbox: None,
                ari_generation: 0,
                closing: None,
            };
            (Switchboard::new(hub, Some(gateway), now), Some(links))
        }
        None => (Switchboard::new(hub, None, now), None),
    };
    let bus = match redis {
        Some(url) => {
            // Random at each start: a restarted process is a new instance to the others.
            let instance = InstanceId(rand::random());
            let channels = vec![Channel::All.name(), Channel::Instance(instance).name()];
            let link = bus::spawn(&url, channels)?;
            tracing::info!(%instance, redis = %url.redacted(), "joining the cluster");
            board.join_cluster(Cluster::new(ClusterConfig::new(instance)), now);
            metrics.cluster_configured.set(1);
            Some(link)
        }
        None => None,
    };
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(run(board, inbox, links, bus, metrics, shutdown, done_tx));
    Ok(done_rx)
}

/// Runs the switchboard until every inbox sender is gone.
async fn run(
    mut board: Switchboard,
    mut inbox: mpsc::Receiver<HubInput>,
    mut links: Option<Links>,
    mut bus: Option<BusLink>,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) {
    let mut done = Some(done);
    let mut stopping: Option<Stopping> = None;
    let mut outboxes: HashMap<SessionId, Outbox> = HashMap::new();
    loop {
        // Outputs first: `Switchboard::new` may have queued the first ARI connect.
        perform(
            &mut board,
            &mut outboxes,
            &mut links,
            bus.as_ref(),
            &metrics,
        );
        metrics.sessions_active.set(outboxes.len() as i64);
        if let Some(cluster) = board.cluster() {
            metrics
                .redis_connected
                .set(i64::from(cluster.is_connected()));
            metrics.cluster_instances.set(cluster.peer_count() as i64);
        }
        if let Some(gateway) = board.gateway() {
            metrics
                .sip_registered
                .set(i64::from(gateway.is_registered()));
            metrics
                .ari_connected
                .set(i64::from(gateway.is_ari_connected()));
            metrics.pbx_calls_active.set(gateway.call_count() as i64);
        }
        finish_gateway(&board, &mut links);
        if let Some(stop) = stopping.as_mut() {
            finish(
                &mut board,
                stop,
                &mut outboxes,
                &mut links,
                bus.as_ref(),
                &metrics,
            );
        }

        let closing = links.as_ref().and_then(|l| l.closing);
        // While a goodbye is still to come, wake up for it even if no session closes.
        let leave_by = stopping
            .as_ref()
            .filter(|_| board.cluster().is_some_and(|c| !c.has_left()))
            .map(|stop| stop.leave_by);
        let deadline = [board.poll_timeout(), closing, leave_by]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            input = inbox.recv() => match input {
                Some(input) => handle_input(&mut board, &mut outboxes, input),
                None => return,
            },
            Some(event) = next_io(&mut links) => {
                if let Some(links) = links.as_mut() {
                    handle_io(&mut board, links, event, &metrics);
                }
            }
            Some(event) = next_bus(&mut bus) => handle_bus(&mut board, event, &metrics),
            () = sleep_until(deadline) => board.handle_timeout(Instant::now()),
            Ok(()) | Err(_) = flushed(&mut stopping) => {
                if let Some(stop) = stopping.as_mut() {
                    stop.flushed = None;
                }
            }
            () = state::shutdown(&mut shutdown), if stopping.is_none() => {
                let now = Instant::now();
                if let Some(links) = links.as_mut() {
                    links.closing = Some(now + SHUTDOWN_WAIT);
                }
                board.shutdown(now);
                stopping = Some(Stopping {
                    leave_by: now + LEAVE_WAIT,
                    flushed: None,
                    done: done.take(),
                });
            }
        }
    }
}

/// A connection's request.
fn handle_input(
    board: &mut Switchboard,
    outboxes: &mut HashMap<SessionId, Outbox>,
    input: HubInput,
) {
    let now = Instant::now();
    match input {
        HubInput::Open {
            user,
            outbox,
            reply,
        } => {
            let result = board.open_session(user, now);
            if let Ok(session) = result {
                outboxes.insert(session, outbox);
            }
            if reply.send(result).is_err() {
                // The connection went away while waiting: forget the session again.
                if let Ok(session) = result {
                    outboxes.remove(&session);
                    board.close_session(session, now);
                }
            }
        }
        HubInput::Message {
            session,
            id,
            message,
        } => board.handle_message(session, id, message, now),
        HubInput::Close { session } => {
            outboxes.remove(&session);
            board.close_session(session, now);
        }
    }
}

/// What the bus task reports.
fn handle_bus(board: &mut Switchboard, event: BusEvent, metrics: &Metrics) {
    let now = Instant::now();
    match event {
        BusEvent::Connected => board.bus_connected(now),
        BusEvent::Message(payload) => {
            metrics.bus_messages.with_label_values(&["in"]).inc();
            if let Err(error) = board.handle_bus(&payload, now) {
                metrics.bus_messages.with_label_values(&["invalid"]).inc();
                tracing::warn!(%error, "cluster bus message dropped");
            }
        }
        BusEvent::Lost => board.bus_disconnected(now),
    }
}

/// What an Asterisk connection reports.
fn handle_io(board: &mut Switchboard, links: &mut Links, event: Io, metrics: &Metrics) {
    let now = Instant::now();
    match event {
        Io::SipConnected(outbox) => {
            tracing::info!("SIP WebSocket to Asterisk open; registering");
            links.sip_outbox = Some(outbox);
            board.sip_connected(now);
        }
        Io::SipFrame(frame) => board.handle_sip(frame.as_bytes(), now),
        Io::SipClosed => {
            if links.sip_outbox.take().is_some() {
                tracing::warn!("SIP WebSocket to Asterisk closed");
            }
            board.sip_disconnected(now);
        }
        Io::AriConnected(generation) if generation == links.ari_generation => {
            tracing::info!("ARI events WebSocket open");
            board.ari_connected(now);
        }
        Io::AriEvent(generation, text) if generation == links.ari_generation => {
            if let Some(event) = board.handle_ari_event(&text, now) {
                metrics.ari_events.with_label_values(&[event]).inc();
            }
        }
        Io::AriClosed(generation) if generation == links.ari_generation => {
            if board.gateway().is_some_and(Gateway::is_ari_connected) {
                tracing::warn!("ARI events WebSocket closed");
            }
            board.ari_connection_lost(now);
        }
        Io::AriResponse { id, status, body } => {
            board.handle_ari_response(RequestId(id), status, &body, now)
        }
        // Frames of an events connection that was replaced.
        Io::AriConnected(_) | Io::AriEvent(..) | Io::AriClosed(_) => {}
    }
}

/// Drains the switchboard's outputs. A session whose outbox is full is closed in the hub (its
/// calls end for the other parties) and loses its outbox, which tells its connection task to
/// close; the hangups that this causes are delivered in the same loop.
fn perform(
    board: &mut Switchboard,
    outboxes: &mut HashMap<SessionId, Outbox>,
    links: &mut Option<Links>,
    bus: Option<&BusLink>,
    metrics: &Metrics,
) {
    loop {
        let mut overflowed = Vec::new();
        while let Some(output) = board.poll_output() {
            match output {
                Output::Session { session, message } => {
                    let Some(outbox) = outboxes.get(&session) else {
                        continue;
                    };
                    match outbox.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => overflowed.push(session),
                        // The connection is ending; its Close input is on the way.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                Output::Call(event) => metrics.call(event),
                Output::Sip(frame) => {
                    let sent = links
                        .as_ref()
                        .and_then(|l| l.sip_outbox.as_ref())
                        .is_some_and(|outbox| outbox.try_send(frame).is_ok());
                    if !sent {
                        tracing::debug!("SIP frame dropped: the SIP WebSocket is not writable");
                    }
                }
                Output::AriConnect(path) => {
                    if let Some(links) = links.as_mut() {
                        links.ari_generation += 1;
                        links.clients.connect_events(path, links.ari_generation);
                    }
                }
                Output::AriRequest {
                    id,
                    method,
                    path,
                    body,
                } => {
                    if let Some(links) = links.as_ref() {
                        links.clients.request(id, method, path, body);
                    }
                }
                Output::PbxResult(result) => {
                    let label = match result {
                        CallResult::Answered => "answered",
                        CallResult::Failed(reason) => reason.as_str(),
                    };
                    metrics.pbx_calls.with_label_values(&[label]).inc();
                }
                Output::Bus { channel, payload } => {
                    let sent = bus.is_some_and(|bus| {
                        bus.outbox
                            .try_send(Outgoing::Publish(channel.name(), payload))
                            .is_ok()
                    });
                    let direction = if sent { "out" } else { "dropped" };
                    metrics.bus_messages.with_label_values(&[direction]).inc();
                }
                Output::BusReconnect => {
                    if let Some(bus) = bus {
                        bus.reconnect.notify_one();
                    }
                }
                Output::Log(text) => tracing::info!(target: "icegate_signal::gateway", "{text}"),
            }
        }
        if overflowed.is_empty() {
            return;
        }
        let now = Instant::now();
        for session in overflowed {
            if outboxes.remove(&session).is_some() {
                tracing::info!(%session, "session too slow to read its messages; disconnecting");
                board.close_session(session, now);
            }
        }
    }
}

/// At shutdown, once the gateway is quiet (or the SIP WebSocket is gone, or the wait is
/// over), lets go of the Asterisk connections and says so; the hub keeps serving.
fn finish_gateway(board: &Switchboard, links: &mut Option<Links>) {
    let Some(give_up) = links.as_ref().and_then(|l| l.closing) else {
        return;
    };
    let quiet = board.gateway().is_some_and(Gateway::is_quiet);
    let sip_gone = links.as_ref().is_some_and(|l| l.sip_outbox.is_none());
    if !(quiet || sip_gone || Instant::now() >= give_up) {
        return;
    }
    if quiet {
        tracing::info!("Asterisk calls ended and unregistered");
    } else {
        tracing::warn!("Asterisk did not answer the shutdown BYEs or unregistration");
    }
    // Dropping the SIP outbox lets the SIP connection close; dropping the io receiver ends
    // the ARI tasks.
    *links = None;
}

/// At shutdown: once the sessions have closed (or [`LEAVE_WAIT`] has passed), the cluster's
/// goodbye, with a flush of the bus behind it; once that is out (or the bus is down) and the
/// gateway is finished, shutdown's work is done.
fn finish(
    board: &mut Switchboard,
    stop: &mut Stopping,
    outboxes: &mut HashMap<SessionId, Outbox>,
    links: &mut Option<Links>,
    bus: Option<&BusLink>,
    metrics: &Metrics,
) {
    let now = Instant::now();
    let leave = board.cluster().is_some_and(|c| !c.has_left())
        && (outboxes.is_empty() || now >= stop.leave_by);
    if leave {
        board.leave_cluster(now);
        // The goodbye into the bus task's queue, then the flush behind it.
        perform(board, outboxes, links, bus, metrics);
        if let Some(bus) = bus {
            let (tx, rx) = oneshot::channel();
            if bus.outbox.try_send(Outgoing::Flush(tx)).is_ok() {
                stop.flushed = Some(rx);
            }
        }
    }
    let cluster_done = board.cluster().is_none_or(Cluster::has_left) && stop.flushed.is_none();
    if links.is_none() && cluster_done {
        if let Some(done) = stop.done.take() {
            let _ = done.send(());
        }
    }
}

/// Completes when the bus task has published the goodbye (or dropped the flush); never while
/// there is none to wait for.
async fn flushed(stopping: &mut Option<Stopping>) -> Result<(), oneshot::error::RecvError> {
    match stopping.as_mut().and_then(|s| s.flushed.as_mut()) {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// The next report of the bus task; never without a cluster.
async fn next_bus(bus: &mut Option<BusLink>) -> Option<BusEvent> {
    match bus {
        Some(bus) => bus.events.recv().await,
        None => std::future::pending().await,
    }
}

/// The next report of an Asterisk connection; never, once there are none.
async fn next_io(links: &mut Option<Links>) -> Option<Io> {
    match links {
        Some(links) => links.io.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
