//! The one task that owns the [`Hub`]. Connections talk to it over a bounded channel; it
//! answers each over that connection's own bounded outbox with `try_send`, so a client that
//! does not read can never hold the hub up: when its outbox is full, it is disconnected.

use std::collections::HashMap;
use std::time::Instant;

use icegate_signal_asterisk::gateway::ToHub;
use icegate_signal_proto::hub::{Endpoint, Hub, OpenError, Output, PbxEvent};
use icegate_signal_proto::protocol::{
    ClientMessage, HangupReason, RequestId, ServerMessage, SessionId, UserId,
};
use tokio::sync::{mpsc, oneshot};

use super::gateway_task::GatewayInput;
use super::metrics::Metrics;

/// Messages queued for one connection before it counts as too slow.
pub const OUTBOX_CAPACITY: usize = 256;
/// Requests queued for the hub; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 1024;

/// What connections ask of the hub.
pub enum HubInput {
    /// Open a session; the hub keeps `outbox` to send it messages.
    Open {
        /// The authenticated user.
        user: UserId,
        /// Where the session's messages go.
        outbox: mpsc::Sender<ServerMessage>,
        /// The new session's id, or why there is none.
        reply: oneshot::Sender<Result<SessionId, OpenError>>,
    },
    /// A request from a session.
    Message {
        /// The session.
        session: SessionId,
        /// The request's id.
        id: Option<RequestId>,
        /// The request.
        message: ClientMessage,
    },
    /// The session's connection ended.
    Close {
        /// The session.
        session: SessionId,
    },
    /// What the Asterisk gateway says.
    Pbx(ToHub),
}

/// Runs the hub until every sender is gone.
pub async fn run(
    mut hub: Hub,
    mut inbox: mpsc::Receiver<HubInput>,
    gateway: Option<mpsc::Sender<GatewayInput>>,
    metrics: Metrics,
) {
    let mut outboxes: HashMap<SessionId, mpsc::Sender<ServerMessage>> = HashMap::new();
    loop {
        let deadline = hub.poll_timeout();
        let input = tokio::select! {
            input = inbox.recv() => match input {
                Some(input) => Some(input),
                None => break,
            },
            () = sleep_until(deadline) => None,
        };
        let now = Instant::now();
        match input {
            None => hub.handle_timeout(now),
            Some(HubInput::Open {
                user,
                outbox,
                reply,
            }) => {
                let result = hub.open_session(user, now);
                if let Ok(session) = result {
                    outboxes.insert(session, outbox);
                    metrics.sessions_active.set(outboxes.len() as i64);
                }
                if reply.send(result).is_err() {
                    // The connection went away while waiting: forget the session again.
                    if let Ok(session) = result {
                        outboxes.remove(&session);
                        hub.close_session(session, now);
                    }
                }
            }
            Some(HubInput::Message {
                session,
                id,
                message,
            }) => hub.handle_message(session, id, message, now),
            Some(HubInput::Close { session }) => {
                outboxes.remove(&session);
                hub.close_session(session, now);
            }
            Some(HubInput::Pbx(ToHub::Event(event))) => {
                // A refusal means the call is already gone here; nothing to undo.
                let _ = hub.handle_pbx(event, now);
            }
            Some(HubInput::Pbx(ToHub::Available(available))) => {
                hub.set_pbx_available(available, now)
            }
            Some(HubInput::Pbx(ToHub::Paused)) => hub.pause_pbx(now),
            Some(HubInput::Pbx(ToHub::Offer {
                token,
                from,
                to,
                sdp,
            })) => {
                let result = hub
                    .handle_pbx(PbxEvent::Call { from, to, sdp }, now)
                    .and_then(|call| {
                        call.ok_or((icegate_signal_proto::protocol::ErrorCode::UnknownCall, ""))
                    })
                    .map_err(|(code, _)| code);
                if let Some(gateway) = &gateway {
                    let reply = GatewayInput::OfferResult { token, result };
                    if gateway.try_send(reply).is_err() {
                        tracing::warn!(
                            "the Asterisk gateway is too busy to take an offer's result"
                        );
                        if let Ok(call) = result {
                            let _ = hub.handle_pbx(
                                PbxEvent::Hangup {
                                    call,
                                    reason: HangupReason::Unavailable,
                                },
                                now,
                            );
                        }
                    }
                }
            }
        }
        deliver(&mut hub, &mut outboxes, gateway.as_ref(), &metrics, now);
        metrics.sessions_active.set(outboxes.len() as i64);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Drains the hub's outputs. A session whose outbox is full is dropped from the hub (its
/// calls end for the other parties) and loses its outbox, which tells its connection task
/// to close; the hangups that this causes are delivered in the same loop.
fn deliver(
    hub: &mut Hub,
    outboxes: &mut HashMap<SessionId, mpsc::Sender<ServerMessage>>,
    gateway: Option<&mpsc::Sender<GatewayInput>>,
    metrics: &Metrics,
    now: Instant,
) {
    loop {
        let mut overflowed = Vec::new();
        while let Some(output) = hub.poll_output() {
            match output {
                Output::Send {
                    to: Endpoint::Session(session),
                    message,
                } => {
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
                Output::Event(event) => metrics.call(event),
                // Without a gateway HubConfig::pbx is false and the hub never addresses the PBX.
                output @ (Output::Send {
                    to: Endpoint::Pbx, ..
                }
                | Output::PbxCall { .. }
                | Output::PbxRequest { .. }) => {
                    let failed_call = match &output {
                        Output::PbxCall { call, .. } => Some(*call),
                        _ => None,
                    };
                    let sent =
                        gateway.is_some_and(|g| g.try_send(GatewayInput::Hub(output)).is_ok());
                    if !sent {
                        tracing::warn!(
                            "the Asterisk gateway is not keeping up; dropping a PBX message"
                        );
                        if let Some(call) = failed_call {
                            let _ = hub.handle_pbx(
                                PbxEvent::Hangup {
                                    call,
                                    reason: HangupReason::Unavailable,
                                },
                                now,
                            );
                        }
                    }
                }
            }
        }
        if overflowed.is_empty() {
            return;
        }
        for session in overflowed {
            if outboxes.remove(&session).is_some() {
                tracing::info!(%session, "session too slow to read its messages; disconnecting");
                hub.close_session(session, now);
            }
        }
    }
}
