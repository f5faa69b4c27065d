//! What connection tasks send to the switchboard task, and the bounds of the queues both ways.
//! A module of its own, below both `state.rs` (which holds the sender) and
//! `switchboard_task.rs` (which holds the receiver), so that neither imports the other.

use icegate_signal_proto::hub::OpenError;
use icegate_signal_proto::protocol::{ClientMessage, RequestId, ServerMessage, SessionId, UserId};
use tokio::sync::{mpsc, oneshot};

/// Messages queued for one connection before it counts as too slow.
pub const OUTBOX_CAPACITY: usize = 256;
/// Requests queued for the switchboard task; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 1024;

/// What connections ask of the hub.
pub enum HubInput {
    /// Open a session; the switchboard task keeps `outbox` to send it messages.
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
}
