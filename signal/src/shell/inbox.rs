//! What connection tasks send to the switchboard task, and the bounds of the queues both ways.
//! A module of its own, below both `state.rs` (which holds the sender) and
//! `switchboard_task.rs` (which holds the receiver), so that neither imports the other.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use icegate_signal_proto::hub::OpenError;
use icegate_signal_proto::protocol::{ClientMessage, RequestId, ServerMessage, SessionId, UserId};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{oneshot, Notify};

/// Messages queued for one connection before it counts as too slow.
pub const OUTBOX_CAPACITY: usize = 256;
/// Requests queued for the switchboard task; senders wait when it is full.
pub const INBOX_CAPACITY: usize = 1024;

/// The sending half of a session's outbox, held by the switchboard task: a bounded queue
/// with one sender and one receiver, which tells each side when the other is gone.
///
/// Not tokio's `mpsc`: its channel allocates about 500 bytes of cache-padded state and its
/// first block of 32 slots when it is made (3 KiB for 32 `ServerMessage`s of 96 bytes), and
/// every session holds one for its whole life, most of it idle. This one is a lock, a
/// `Notify` and a `VecDeque` of boxes that allocates only while messages wait (about 150
/// bytes per idle session in all). The lock is held for a push or a pop, by the switchboard
/// task and the session's own task only.
#[derive(Debug)]
pub struct Outbox(Arc<OutboxShared>);

/// The receiving half, read by the session's connection task.
#[derive(Debug)]
pub struct OutboxReceiver(Arc<OutboxShared>);

#[derive(Debug, Default)]
struct OutboxShared {
    queue: Mutex<OutboxQueue>,
    /// Woken on every push and when the sender goes; a wake-up with nobody waiting is kept
    /// for the next wait, so none is lost between a check and the wait.
    notify: Notify,
}

#[derive(Debug, Default)]
struct OutboxQueue {
    messages: VecDeque<Box<ServerMessage>>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Queued messages are boxed, so an emptied queue keeps 8 bytes per slot; beyond this many
/// slots it gives them back.
const KEPT_SLOTS: usize = 8;

impl OutboxShared {
    fn lock(&self) -> MutexGuard<'_, OutboxQueue> {
        // A push or a pop cannot leave the queue half-changed; a panic elsewhere while the
        // lock was held leaves it usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Outbox {
    /// A session's outbox, `OUTBOX_CAPACITY` messages deep.
    pub fn channel() -> (Outbox, OutboxReceiver) {
        let shared = Arc::new(OutboxShared::default());
        (Outbox(Arc::clone(&shared)), OutboxReceiver(shared))
    }

    /// Queues `message` without waiting; fails when the outbox is full or its receiver gone.
    pub fn try_send(&self, message: ServerMessage) -> Result<(), TrySendError<Box<ServerMessage>>> {
        let message = Box::new(message);
        {
            let mut queue = self.0.lock();
            if queue.receiver_gone {
                return Err(TrySendError::Closed(message));
            }
            if queue.messages.len() >= OUTBOX_CAPACITY {
                return Err(TrySendError::Full(message));
            }
            queue.messages.push_back(message);
        }
        self.0.notify.notify_one();
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.0.lock().sender_gone = true;
        self.0.notify.notify_one();
    }
}

impl OutboxReceiver {
    /// The next message; `None` once the queue is empty and the sender gone. Cancel-safe: a
    /// message is taken out only when it is returned.
    pub async fn recv(&mut self) -> Option<Box<ServerMessage>> {
        loop {
            {
                let mut queue = self.0.lock();
                if let Some(message) = queue.messages.pop_front() {
                    if queue.messages.is_empty() && queue.messages.capacity() > KEPT_SLOTS {
                        queue.messages.shrink_to(KEPT_SLOTS);
                    }
                    return Some(message);
                }
                if queue.sender_gone {
                    return None;
                }
            }
            self.0.notify.notified().await;
        }
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.0.lock();
        queue.receiver_gone = true;
        // What nobody will read goes now, not when the sender goes.
        queue.messages = VecDeque::new();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn pong(id: u64) -> ServerMessage {
        ServerMessage::Pong {
            id: Some(RequestId::Number(id)),
        }
    }

    fn id_of(message: &ServerMessage) -> Option<RequestId> {
        match message {
            ServerMessage::Pong { id } => id.clone(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn delivers_in_order_until_full_then_ends_when_the_sender_goes() {
        let (tx, mut rx) = Outbox::channel();
        for i in 0..OUTBOX_CAPACITY as u64 {
            tx.try_send(pong(i)).expect("room");
        }
        assert!(matches!(tx.try_send(pong(999)), Err(TrySendError::Full(_))));
        for i in 0..OUTBOX_CAPACITY as u64 {
            let message = rx.recv().await.expect("queued");
            assert_eq!(id_of(&message), Some(RequestId::Number(i)));
        }
        // Emptied, the queue gives back its slots.
        assert!(rx.0.lock().messages.capacity() <= KEPT_SLOTS);
        tx.try_send(pong(1000)).expect("room again");
        drop(tx);
        // What was queued before the sender went still arrives, then the end.
        assert!(rx.recv().await.is_some());
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_a_gone_receiver_refuses() {
        let (tx, mut rx) = Outbox::channel();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await.map(|m| id_of(&m));
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(pong(7)).expect("room");
        let (first, rx) = waiting.await.expect("receiver task");
        assert_eq!(first, Some(Some(RequestId::Number(7))));
        drop(rx);
        assert!(matches!(tx.try_send(pong(8)), Err(TrySendError::Closed(_))));
    }
}
