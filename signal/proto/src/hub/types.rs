//! The hub's API types: its configuration, the two kinds of [`Endpoint`] a call leg ends at,
//! what it asks the shell to do ([`Output`]), what the PBX tells it ([`PbxEvent`]) and may be
//! asked ([`PbxRequest`]), call events for metrics, and why a session is refused; and the ids
//! of the cluster ([`InstanceId`], [`RemoteSession`]) for legs on other instances.

use std::time::Duration;

use crate::protocol::{
    CallId, Digits, Extension, HangupReason, Media, RoomId, ServerMessage, SessionId, UserId,
};

/// The hub's limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Sessions one user may have at once.
    pub max_sessions_per_user: usize,
    /// Calls one session may take part in at once.
    pub max_calls_per_session: usize,
    /// Rooms one session may be in.
    pub max_rooms_per_session: usize,
    /// Sessions in one room; it bounds how many legs a call to a room forks into.
    pub max_room_members: usize,
    /// How long a call may ring unanswered.
    pub ring_timeout: Duration,
    /// Whether a PBX gateway is configured, i.e. whether calls to extensions can be made.
    pub pbx: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_sessions_per_user: 8,
            max_calls_per_session: 8,
            max_rooms_per_session: 8,
            max_room_members: 32,
            ring_timeout: Duration::from_secs(60),
            pbx: false,
        }
    }
}

crate::protocol::hex_id!(
    /// One icegate-signal process of a cluster (`redis-url`): random at each start, so a
    /// restarted process is a new instance.
    InstanceId
);

/// A session connected to another instance of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteSession {
    /// The instance the session's WebSocket is connected to.
    pub instance: InstanceId,
    /// The session, as that instance named it.
    pub session: SessionId,
}

/// Where one leg of a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A WebSocket session.
    Session(SessionId),
    /// The PBX, through the gateway.
    Pbx,
    /// A session on another instance of the cluster: its messages go over the bus.
    Remote(RemoteSession),
}

/// What happened to calls, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// A call started ringing.
    Started,
    /// A call was answered.
    Answered,
    /// A call ended.
    Ended(HangupReason),
}

/// What the hub asks the shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `message` to `to`.
    Send {
        /// The recipient.
        to: Endpoint,
        /// The message.
        message: ServerMessage,
    },
    /// Ask the PBX to ring `extension` with `sdp`; its progress comes back as
    /// [`PbxEvent`]s for `call`.
    PbxCall {
        /// The call, to name it in later events.
        call: CallId,
        /// The calling user.
        from: UserId,
        /// The extension dialled.
        extension: Extension,
        /// The browser's SDP offer.
        sdp: String,
    },
    /// Ask the PBX for something only it can do in an answered call.
    PbxRequest {
        /// The call.
        call: CallId,
        /// What to do.
        request: PbxRequest,
    },
    /// Count a call event.
    Event(CallEvent),
    /// A local session joined or left a room: for the cluster, so that calls to the room
    /// from other instances ring it.
    Membership {
        /// The session.
        session: SessionId,
        /// The room.
        room: RoomId,
        /// Joined, or left (also by closing).
        joined: bool,
    },
}

/// What a browser may ask of the PBX in a call with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbxRequest {
    /// Transfer the call to another extension.
    Transfer(Extension),
    /// Play a sound or tone into the call.
    Play(Media),
}

/// What the PBX (through the gateway) says about calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PbxEvent {
    /// The PBX calls a browser user; [`Hub::handle_pbx`](super::Hub::handle_pbx) returns the new
    /// call's id.
    Call {
        /// The caller, as the PBX names it (its caller id), made a valid user id.
        from: UserId,
        /// The user to ring.
        to: UserId,
        /// The PBX's SDP offer.
        sdp: String,
    },
    /// The extension rings.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// The extension answered.
    Answer {
        /// The call.
        call: CallId,
        /// The PBX's SDP answer.
        sdp: String,
    },
    /// The PBX ended the call or refused it.
    Hangup {
        /// The call.
        call: CallId,
        /// Why.
        reason: HangupReason,
    },
    /// The PBX renegotiates an answered call (Asterisk's re-INVITE with a new offer); a
    /// refused one comes back to the PBX as `offer-failed`.
    Offer {
        /// The call.
        call: CallId,
        /// The PBX's new SDP offer.
        sdp: String,
    },
    /// The offer in progress in this call failed (the PBX refused the browser's, or the
    /// browser never answered the PBX's); the previous session description stays.
    OfferFailed {
        /// The call.
        call: CallId,
    },
    /// DTMF from the PBX's side of an answered call.
    Dtmf {
        /// The call.
        call: CallId,
        /// The digits.
        digits: Digits,
    },
}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The user already has the maximum number of sessions.
    #[error("too many sessions for this user")]
    TooManySessions,
}
