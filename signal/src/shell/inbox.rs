//! What connection tasks send to the switchboard task, and the bounds of the queues both ways.
//! A module of its own, below both `state.rs` (which holds the sender) and
//! `switchboard_task.rs` (which holds the receiver), so that neither imports the other.

use icegate_signal_proto::hub::OpenError;
use icegate_signal_proto::protocol::{ClientMessage, RequestId, ServerMessage, SessionId, UserId};
use tokio::sync::{mpsc, oneshot};

/// Messages queued for one connection before it counts as too slow.
pub const OUTBOX_CAPACITY: usize = 256;

/// The sending half of a session's outbox, held by the switchboard task.
///
/// Messages travel boxed: tokio's channel allocates its slots in blocks of 32 up front, the
/// first block when the channel is made, so every idle session holds one block. A block of
/// `ServerMessage`s (96 bytes each) is about 3 KiB; a block of boxes is 256 bytes. The box is
/// one allocation per message sent, next to the JSON encoding that follows it anyway.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<Box<ServerMessage>>);

/// The receiving half, read by the session's connection task.
pub type OutboxReceiver = mpsc::Receiver<Box<ServerMessage>>;

impl Outbox {
    /// A session's outbox, `OUTBOX_CAPACITY` messages deep.
    pub fn channel() -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (Outbox(tx), rx)
    }

    /// Queues `message` without waiting; fails when the outbox is full or its session gone.
    pub fn try_send(
        &self,
        message: ServerMessage,
    ) -> Result<(), mpsc::error::TrySendError<Box<ServerMessage>>> {
        self.0.try_send(Box::new(message))
    }
}
/// Requests queued for the switchboard task; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 1024;

/// What connections ask of the hub.
pub enum HubInput {
    /// Open a session; the switchboard task keeps `outbox` to send it messages.
    Open {
        /// The authenticated user.
        user: UserId,
        /// Where the session's messages go.
        outbox: Outbox,
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
