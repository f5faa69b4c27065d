//! The cluster bus over Redis: one task that keeps a pub/sub connection subscribed to this
//! instance's two channels and a second connection for PUBLISH, reports what it hears to the
//! switchboard task, and publishes what the switchboard's cluster core says. It decides
//! nothing: the cluster core (`icegate_signal_proto::cluster`) does, on what this reports.
//!
//! ```text
//!   switchboard task ── outbox (bounded, try_send) ──► bus task ── PUBLISH (pipelined) ──► Redis
//!   switchboard task ◄── events (bounded) ── Connected / Message / Lost ◄── SUBSCRIBE ──┘
//! ```
//!
//! A lost connection (an error, a closed socket, a PUBLISH unanswered within
//! [`RESPONSE_TIMEOUT`], or the cluster core finding that this instance's own broadcasts no
//! longer come back) is reported as `Lost`, then the task reconnects with backoff, from
//! [`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`], and reports `Connected` once subscribed
//! again; the cluster core re-announces this instance's sessions then. What was queued while
//! the bus was down is dropped: the core publishes nothing while it is down. The task ends
//! when the switchboard task drops the outbox.

use std::time::Duration;

use std::sync::Arc;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use tokio::sync::{mpsc, oneshot, Notify};

use super::config::RedisUrl;

/// Messages queued for publishing; past that the switchboard task drops and counts them.
pub const OUTBOX_CAPACITY: usize = 4096;
/// Reports queued for the switchboard task; the bus task waits when it is full.
const EVENTS_CAPACITY: usize = 4096;
/// The most messages sent in one pipeline.
const BATCH: usize = 64;
/// How long connecting, subscribing or a PUBLISH may take before the connection counts as lost:
/// shorter than a heartbeat, so a hung Redis is noticed before the other instances would
/// notice this one's silence.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before reconnecting.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// The longest wait between reconnects.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the bus task reports.
#[derive(Debug)]
pub enum BusEvent {
    /// Subscribed and able to publish.
    Connected,
    /// A message on one of this instance's channels.
    Message(Vec<u8>),
    /// The connection is gone; reconnecting.
    Lost,
}

/// What the switchboard task gives the bus task.
#[derive(Debug)]
pub enum Outgoing {
    /// Publish the payload on the channel of this name.
    Publish(String, String),
    /// Answer once everything queued before has been published (at shutdown, so that the
    /// goodbye is out before the process ends). Dropped unanswered while the bus is down.
    Flush(oneshot::Sender<()>),
}

/// The switchboard task's ends of the bus.
pub struct BusLink {
    /// Where messages to publish go (`try_send`).
    pub outbox: mpsc::Sender<Outgoing>,
    /// What the bus task reports.
    pub events: mpsc::Receiver<BusEvent>,
    /// Told when the cluster core finds the subscription deaf: the task drops both
    /// connections, reports `Lost` and connects again.
    pub reconnect: Arc<Notify>,
}

/// Starts the bus task for `url`, subscribed to `channels`.
pub fn spawn(url: &RedisUrl, channels: Vec<String>) -> Result<BusLink, redis::RedisError> {
    let client = Client::open(url.expose())?;
    let (outbox_tx, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (events_tx, events_rx) = mpsc::channel(EVENTS_CAPACITY);
    let reconnect = Arc::new(Notify::new());
    tokio::spawn(run(
        client,
        url.redacted(),
        channels,
        outbox_rx,
        events_tx,
        Arc::clone(&reconnect),
    ));
    Ok(BusLink {
        outbox: outbox_tx,
        events: events_rx,
        reconnect,
    })
}

/// Connects, serves, and reconnects until the outbox or the events receiver is gone.
async fn run(
    client: Client,
    name: String,
    channels: Vec<String>,
    mut outbox: mpsc::Receiver<Outgoing>,
    events: mpsc::Sender<BusEvent>,
    reconnect: Arc<Notify>,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut warned = false;
    loop {
        match connect(&client, &channels).await {
            Ok((pubsub, publisher)) => {
                tracing::info!(redis = %name, "cluster bus connected");
                backoff = BACKOFF_FIRST;
                warned = false;
                // Anything queued belongs to before the outage, which the core has handled.
                while outbox.try_recv().is_ok() {}
                if events.send(BusEvent::Connected).await.is_err() {
                    return;
                }
                match serve(pubsub, publisher, &mut outbox, &events, &reconnect).await {
                    Served::Done => return,
                    Served::Lost(reason) => {
                        tracing::warn!(redis = %name, %reason, "cluster bus lost; reconnecting");
                        if events.send(BusEvent::Lost).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Err(error) => {
                // Once per outage at warn; the retries are for debugging.
                if warned {
                    tracing::debug!(redis = %name, %error, "cluster bus: Redis unreachable");
                } else {
                    tracing::warn!(redis = %name, %error, "cluster bus: Redis unreachable; retrying");
                    warned = true;
                }
            }
        }
        // Wait, but notice the switchboard task going away meanwhile.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = outbox_closed(&mut outbox) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A subscribed pub/sub connection and a connection to publish on.
async fn connect(
    client: &Client,
    channels: &[String],
) -> Result<(redis::aio::PubSub, MultiplexedConnection), redis::RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let publisher = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        let mut pubsub = client.get_async_pubsub().await?;
        for channel in channels {
            pubsub.subscribe(channel).await?;
        }
        Ok::<_, redis::RedisError>(pubsub)
    })
    .await
    .map_err(|_| {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "subscribing timed out",
        ))
    })??;
    Ok((pubsub, publisher))
}

enum Served {
    /// The switchboard task is gone.
    Done,
    /// The connection broke, for this reason.
    Lost(String),
}

/// Relays both ways until the connection breaks or the switchboard task is gone.
async fn serve(
    pubsub: redis::aio::PubSub,
    mut publisher: MultiplexedConnection,
    outbox: &mut mpsc::Receiver<Outgoing>,
    events: &mpsc::Sender<BusEvent>,
    reconnect: &Notify,
) -> Served {
    let (_sink, mut messages) = pubsub.split();
    loop {
        tokio::select! {
            () = reconnect.notified() => {
                return Served::Lost("this instance's own messages stopped coming back".into());
            }
            message = messages.next() => match message {
                Some(message) => {
                    let payload = message.get_payload_bytes().to_vec();
                    if events.send(BusEvent::Message(payload)).await.is_err() {
                        return Served::Done;
                    }
                }
                None => return Served::Lost("the subscription connection closed".into()),
            },
            first = outbox.recv() => {
                let Some(first) = first else {
                    return Served::Done;
                };
                // Everything queued goes in one pipeline, in order; flushes are answered once
                // it has been sent.
                let mut pipe = redis::pipe();
                let mut flushes = Vec::new();
                let mut next = Some(first);
                let mut queued = 0;
                while let Some(item) = next.take() {
                    match item {
                        Outgoing::Publish(channel, payload) => {
                            pipe.publish(channel, payload).ignore();
                            queued += 1;
                        }
                        Outgoing::Flush(done) => flushes.push(done),
                    }
                    if queued < BATCH {
                        next = outbox.try_recv().ok();
                    }
                }
                if queued > 0 {
                    if let Err(error) = pipe.query_async::<()>(&mut publisher).await {
                        return Served::Lost(error.to_string());
                    }
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Completes once the outbox's sender is gone.
async fn outbox_closed(outbox: &mut mpsc::Receiver<Outgoing>) {
    // Messages that arrive meanwhile are from before a reconnect: dropped, as above.
    while outbox.recv().await.is_some() {}
}
