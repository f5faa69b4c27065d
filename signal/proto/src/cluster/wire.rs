//! What goes over the cluster bus: one JSON object per Redis pub/sub message, with the wire
//! version and the sending instance, so that instances of two releases side by side (a rolling
//! upgrade) refuse each other's messages by version instead of misreading them.

use serde::{Deserialize, Serialize};

use crate::hub::InstanceId;
use crate::protocol::{ClientMessage, RequestId, RoomId, ServerMessage, SessionId, UserId};

/// The version of the bus format; messages with another are dropped.
pub const WIRE_VERSION: u32 = 1;

/// One bus message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The sending instance.
    pub from: InstanceId,
    /// What it says.
    pub body: Body,
}

/// What an instance says on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub enum Body {
    /// Broadcast every heartbeat interval: the sender is alive, and `seq` is the number of its
    /// last presence change, so that a receiver that missed one asks for a snapshot.
    Heartbeat {
        /// The sender's presence sequence number.
        seq: u64,
    },
    /// Broadcast: a session opened on the sender.
    Joined {
        /// The sender's presence sequence number after this change.
        seq: u64,
        /// The session.
        session: SessionId,
        /// Its user.
        user: UserId,
    },
    /// Broadcast: a session closed on the sender.
    Left {
        /// The sender's presence sequence number after this change.
        seq: u64,
        /// The session.
        session: SessionId,
    },
    /// Broadcast: a session of the sender joined (`joined`) or left a room.
    Room {
        /// The sender's presence sequence number after this change.
        seq: u64,
        /// The session.
        session: SessionId,
        /// The room.
        room: RoomId,
        /// Joined, or left.
        joined: bool,
    },
    /// "Send me your sessions": broadcast by an instance that (re)connected, or sent to one
    /// instance whose presence a receiver lost track of. Answered with a [`Body::Snapshot`]
    /// to the asker.
    Sync,
    /// Every session of the sender, replacing what the receiver knew of it.
    Snapshot {
        /// The sender's presence sequence number the list is current at.
        seq: u64,
        /// Its sessions and their users.
        sessions: Vec<(SessionId, UserId)>,
        /// The rooms its sessions are in.
        #[serde(default)]
        rooms: Vec<(SessionId, RoomId)>,
    },
    /// To the instance a session is connected to: a message for that session from the hub
    /// that owns one of its calls.
    Deliver {
        /// The session, on the receiving instance.
        session: SessionId,
        /// The message.
        message: ServerMessage,
    },
    /// Broadcast once, last, by an instance that is stopping: its sessions are gone and its
    /// calls with the receiver's sessions end now, not after the silence of
    /// [`INSTANCE_TIMEOUT`](super::INSTANCE_TIMEOUT).
    Goodbye,
    /// To the instance that owns a call: what a session of the sender says in it.
    Request {
        /// The session, on the sending instance.
        session: SessionId,
        /// The request's id, for the `ack` or `error` that comes back as a `Deliver`.
        id: Option<RequestId>,
        /// The request.
        message: ClientMessage,
    },
}

/// A bus message that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not JSON, or not a message of this format.
    #[error("malformed bus message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Another version of the format.
    #[error("bus message of wire version {0}, this instance speaks {WIRE_VERSION}")]
    Version(u32),
}

impl Envelope {
    /// The JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self)
            .expect("bus messages always serialize: string keys, no non-finite floats")
    }

    /// Reads one bus message.
    pub fn decode(payload: &[u8]) -> Result<Envelope, WireError> {
        /// The version alone, read first: another version's bodies may not parse as ours.
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let Version { v } = serde_json::from_slice(payload)?;
        if v != WIRE_VERSION {
            return Err(WireError::Version(v));
        }
        Ok(serde_json::from_slice(payload)?)
    }
}
