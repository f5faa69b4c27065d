//! The JSON messages carried in `/ws` text frames, version [`VERSION`].
//!
//! Every message is an object with `"v"` (the protocol version) and `"type"`. A client message
//! may carry an `"id"` (a string or a number); the server answers every message that has one
//! with exactly one reply carrying the same `id`: `ack`, `welcome`, `ice-servers`, `pong` or
//! `error`. Unknown fields are ignored so that newer clients keep working. The human-readable
//! form, with examples, is `docs/signal-protocol.md`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ice::IceServers;

/// The protocol version this server speaks; messages with another `v` are refused.
pub const VERSION: u32 = 1;

/// The longest request id accepted, in bytes: ids are echoed, so they must stay small.
pub const MAX_ID_LEN: usize = 64;

/// The longest user or room name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

pub mod close;
mod error_code;

pub use error_code::ErrorCode;

/// A client's request id: a string or a non-negative integer, echoed verbatim in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Number(u64),
    /// A string id of at most [`MAX_ID_LEN`] bytes.
    Text(String),
}

impl RequestId {
    /// Reads an id from a JSON value; `None` for anything that is not a usable id.
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_u64().map(RequestId::Number),
            Value::String(s) if s.len() <= MAX_ID_LEN => Some(RequestId::Text(s.clone())),
            _ => None,
        }
    }
}

/// Declares a 64-bit id that travels as a 16-digit lowercase hex string.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <::std::borrow::Cow<'de, str> as ::serde::Deserialize>::deserialize(d)?;
                if text.len() != 16 {
                    return Err(serde::de::Error::custom(concat!(
                        stringify!($name),
                        " must be 16 hex digits"
                    )));
                }
                u64::from_str_radix(&text, 16).map($name).map_err(|_| {
                    serde::de::Error::custom(concat!(stringify!($name), " must be 16 hex digits"))
                })
            }
        }
    };
}

/// For the cluster's instance ids (`hub::InstanceId`), which travel the same way.
pub(crate) use hex_id;

hex_id!(
    /// One authenticated WebSocket connection.
    SessionId
);
hex_id!(
    /// One call, from `call` to the last `hangup`.
    CallId
);

/// Declares a text value checked on the way in: `$valid` decides, `$error` is the refusal.
/// Deserializing goes through the same check, so an invalid value in a message is a typed
/// `bad_message` for that request rather than a value the hub has to re-check.
macro_rules! checked_text {
    ($(#[$doc:meta])* $name:ident, $error:ident, $valid:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks and wraps the text.
            pub fn new(text: impl Into<String>) -> Result<Self, $error> {
                let text = text.into();
                if $valid(&text) {
                    Ok(Self(text))
                } else {
                    Err($error)
                }
            }

            /// The value as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = $error;
            fn try_from(text: String) -> Result<Self, $error> {
                Self::new(text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

checked_text!(
    /// A user id: a JWT's `sub`, or the name an anonymous client picked. 1 to
    /// [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ @ + -`, which keeps it safe inside a TURN
    /// REST username (`EXPIRY:USER`, where coturn splits on `:`), in logs and in HTML.
    UserId,
    InvalidName,
    valid_name
);
checked_text!(
    /// A room that sessions join; a call to a room rings every other member. Same rules as
    /// [`UserId`].
    RoomId,
    InvalidName,
    valid_name
);

/// A user or room name outside the allowed characters or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("names are 1 to 64 characters of A-Z a-z 0-9 . _ @ + -")]
pub struct InvalidName;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
}

/// The longest PBX extension, in bytes.
pub const MAX_EXTENSION_LEN: usize = 32;

checked_text!(
    /// A PBX extension (what a dialplan matches): 1 to [`MAX_EXTENSION_LEN`] bytes of
    /// `0-9 A-Z a-z * # + . _ -`, so it is safe inside a SIP Request-URI and an ARI query.
    Extension,
    InvalidExtension,
    valid_extension
);

fn valid_extension(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_EXTENSION_LEN
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'*' | b'#' | b'+' | b'.' | b'_' | b'-')
        })
}

/// An extension outside the allowed characters or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("extensions are 1 to 32 characters of 0-9 A-Z a-z * # + . _ -")]
pub struct InvalidExtension;

/// The longest DTMF string one `dtmf` message may carry.
pub const MAX_DTMF_LEN: usize = 32;

checked_text!(
    /// DTMF digits (RFC 4733 events): 1 to [`MAX_DTMF_LEN`] of `0-9 * # A-D`.
    Digits,
    InvalidDigits,
    valid_digits
);

fn valid_digits(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_DTMF_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'*' | b'#' | b'A'..=b'D'))
}

/// DTMF outside `0-9 * # A-D` or longer than 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("DTMF digits are 1 to 32 of 0-9 * # A-D")]
pub struct InvalidDigits;

checked_text!(
    /// A sound the PBX plays into a call: `sound:NAME` or `tone:NAME` (Asterisk's media URIs),
    /// at most 128 bytes of `A-Z a-z 0-9 / _ - . : ; =`, never climbing out with `..`.
    Media,
    InvalidMedia,
    valid_media
);

fn valid_media(text: &str) -> bool {
    (text.starts_with("sound:") || text.starts_with("tone:"))
        && text.len() <= 128
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.' | b':' | b';' | b'=')
        })
        && !text.contains("..")
}

/// A media URI that is not `sound:NAME` or `tone:NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("media is sound:NAME or tone:NAME, at most 128 characters of A-Z a-z 0-9 / _ - . : ; =")]
pub struct InvalidMedia;

/// Whom a `call` rings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every session of a user (forking: the first answer wins).
    User(UserId),
    /// Every other session in a room the caller has joined.
    Room(RoomId),
    /// An extension of the PBX (Asterisk), through the gateway.
    Extension(Extension),
}

/// One trickled ICE candidate, as `RTCIceCandidate.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:` attribute line; empty for a browser's end-of-candidates marker.
    pub candidate: String,
    /// The media stream identification tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The index of the m-line.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "sdpMLineIndex"
    )]
    pub sdp_m_line_index: Option<u16>,
    /// The ICE username fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Why a call, or one leg of it, ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    /// A party hung up.
    #[default]
    Normal,
    /// The callee is busy.
    Busy,
    /// The callee declined.
    Declined,
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// Another session of the callee answered first.
    AnsweredElsewhere,
    /// The other party's connection went away.
    Disconnected,
    /// The PBX could not be reached, failed the call, or went away.
    Unavailable,
    /// The PBX has no such extension.
    NotFound,
}

impl HangupReason {
    /// Every reason, for metric labels.
    pub const ALL: [HangupReason; 8] = [
        HangupReason::Normal,
        HangupReason::Busy,
        HangupReason::Declined,
        HangupReason::NoAnswer,
        HangupReason::AnsweredElsewhere,
        HangupReason::Disconnected,
        HangupReason::Unavailable,
        HangupReason::NotFound,
    ];

    /// The wire name, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::Normal => "normal",
            HangupReason::Busy => "busy",
            HangupReason::Declined => "declined",
            HangupReason::NoAnswer => "no_answer",
            HangupReason::AnsweredElsewhere => "answered_elsewhere",
            HangupReason::Disconnected => "disconnected",
            HangupReason::Unavailable => "unavailable",
            HangupReason::NotFound => "not_found",
        }
    }
}

/// A message from a client, without its envelope (`v`, `id`). It serializes too, in the same
/// shape, for the cluster bus (`cluster::wire`), which carries a session's call requests to
/// the instance that owns the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// Authenticates a connection that gave no credentials in the URL.
    Hello {
        /// A JWT.
        #[serde(default)]
        token: Option<String>,
        /// The name to use, in anonymous mode.
        #[serde(default)]
        name: Option<UserId>,
    },
    /// Starts a call with an SDP offer.
    Call {
        /// Whom to ring.
        to: Target,
        /// The SDP offer.
        sdp: String,
    },
    /// The callee tells the caller that it is alerting its user.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// The callee accepts with an SDP answer.
    Answer {
        /// The call.
        call: CallId,
        /// The SDP answer.
        sdp: String,
    },
    /// A new offer in an answered call (ICE restart, hold, a changed media set); the other
    /// end replies with `answer`, or the offer fails with `offer-failed`.
    Offer {
        /// The call.
        call: CallId,
        /// The SDP offer.
        sdp: String,
    },
    /// A trickled candidate for the other end; `null` (or absent) means end-of-candidates.
    Candidate {
        /// The call.
        call: CallId,
        /// The candidate, or `None` for end-of-candidates.
        #[serde(default)]
        candidate: Option<IceCandidate>,
    },
    /// Ends the call (caller, or answered callee) or declines it (ringing callee).
    Hangup {
        /// The call.
        call: CallId,
        /// Why; `normal` when absent.
        #[serde(default)]
        reason: HangupReason,
    },
    /// Joins a room.
    Join {
        /// The room.
        room: RoomId,
    },
    /// Leaves a room.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// Sends DTMF digits to the other end of an answered call.
    Dtmf {
        /// The call.
        call: CallId,
        /// The digits.
        digits: Digits,
    },
    /// Asks the PBX to transfer an answered call with it to another extension.
    Transfer {
        /// The call.
        call: CallId,
        /// Where to.
        to: Extension,
    },
    /// Asks the PBX to play a sound into an answered call with it.
    Play {
        /// The call.
        call: CallId,
        /// `sound:NAME` or `tone:NAME`.
        media: Media,
    },
    /// Asks for fresh ICE servers (new TURN credentials), e.g. before they expire.
    RefreshIce,
    /// Application-level keepalive, for clients that cannot send WebSocket pings.
    Ping,
}

impl ClientMessage {
    /// The wire name of the message's type, also the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Call { .. } => "call",
            ClientMessage::Ringing { .. } => "ringing",
            ClientMessage::Answer { .. } => "answer",
            ClientMessage::Offer { .. } => "offer",
            ClientMessage::Candidate { .. } => "candidate",
            ClientMessage::Hangup { .. } => "hangup",
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::Dtmf { .. } => "dtmf",
            ClientMessage::Transfer { .. } => "transfer",
            ClientMessage::Play { .. } => "play",
            ClientMessage::RefreshIce => "refresh-ice",
            ClientMessage::Ping => "ping",
        }
    }

    /// The call the message is about, if it is about one.
    pub fn call(&self) -> Option<CallId> {
        match self {
            ClientMessage::Ringing { call }
            | ClientMessage::Answer { call, .. }
            | ClientMessage::Offer { call, .. }
            | ClientMessage::Candidate { call, .. }
            | ClientMessage::Hangup { call, .. }
            | ClientMessage::Dtmf { call, .. }
            | ClientMessage::Transfer { call, .. }
            | ClientMessage::Play { call, .. } => Some(*call),
            ClientMessage::Hello { .. }
            | ClientMessage::Call { .. }
            | ClientMessage::Join { .. }
            | ClientMessage::Leave { .. }
            | ClientMessage::RefreshIce
            | ClientMessage::Ping => None,
        }
    }

    /// The SDP the message carries, if any, for the size limit.
    pub fn sdp(&self) -> Option<&str> {
        match self {
            ClientMessage::Call { sdp, .. }
            | ClientMessage::Answer { sdp, .. }
            | ClientMessage::Offer { sdp, .. } => Some(sdp),
            _ => None,
        }
    }
}

/// Every `type` a client may send, for metric labels.
pub const CLIENT_KINDS: [&str; 14] = [
    "hello",
    "call",
    "ringing",
    "answer",
    "offer",
    "candidate",
    "hangup",
    "join",
    "leave",
    "dtmf",
    "transfer",
    "play",
    "refresh-ice",
    "ping",
];

/// A client message with its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The id to echo in the reply; `None` when the client wants no reply.
    pub id: Option<RequestId>,
    /// The message.
    pub message: ClientMessage,
}

/// A message from the server. It deserializes too, for the cluster bus (`cluster::wire`),
/// which carries messages for a session to the instance it is connected to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    /// The session is authenticated; the first message after `hello` or a URL credential.
    Welcome {
        /// The `hello`'s id, when authentication came from a `hello`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// This session.
        session: SessionId,
        /// The user the session belongs to.
        user: UserId,
        /// ICE servers for `RTCConfiguration`, and their lifetime.
        #[serde(flatten)]
        ice: IceServers,
    },
    /// The request with this id was carried out.
    Ack {
        /// The request's id.
        id: RequestId,
        /// The new call's id, in the reply to `call`.
        #[serde(skip_serializing_if = "Option::is_none")]
        call: Option<CallId>,
    },
    /// Someone calls this session.
    Incoming {
        /// The call, to use in `ringing`, `answer`, `candidate` and `hangup`.
        call: CallId,
        /// The caller's user id.
        from: UserId,
        /// The room the call was made to, if it was.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// The SDP offer.
        sdp: String,
    },
    /// A callee is alerting its user.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// The callee answered.
    Answer {
        /// The call.
        call: CallId,
        /// The SDP answer.
        sdp: String,
    },
    /// The other end renegotiates an answered call: reply with `answer`.
    Offer {
        /// The call.
        call: CallId,
        /// The SDP offer.
        sdp: String,
    },
    /// The other end refused this session's `offer`; the call goes on with the previous
    /// session description (roll the offer back).
    OfferFailed {
        /// The call.
        call: CallId,
    },
    /// A candidate from the other end; `null` is end-of-candidates.
    Candidate {
        /// The call.
        call: CallId,
        /// The candidate, or `None` for end-of-candidates.
        candidate: Option<IceCandidate>,
    },
    /// The call ended for this session.
    Hangup {
        /// The call.
        call: CallId,
        /// Why.
        reason: HangupReason,
    },
    /// DTMF digits from the other end of an answered call.
    Dtmf {
        /// The call.
        call: CallId,
        /// The digits.
        digits: Digits,
    },
    /// Fresh ICE servers, in reply to `refresh-ice`.
    IceServers {
        /// The request's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The servers and their lifetime.
        #[serde(flatten)]
        ice: IceServers,
    },
    /// The reply to `ping`.
    Pong {
        /// The ping's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// A request failed or a message was refused; the connection stays up.
    Error {
        /// The id of the failed request, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// What went wrong, stable.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
}

impl ServerMessage {
    /// An error reply.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            id,
            code,
            message: message.into(),
        }
    }

    /// The wire name of the message's type, also the metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::Ack { .. } => "ack",
            ServerMessage::Incoming { .. } => "incoming",
            ServerMessage::Ringing { .. } => "ringing",
            ServerMessage::Answer { .. } => "answer",
            ServerMessage::Offer { .. } => "offer",
            ServerMessage::OfferFailed { .. } => "offer-failed",
            ServerMessage::Candidate { .. } => "candidate",
            ServerMessage::Hangup { .. } => "hangup",
            ServerMessage::Dtmf { .. } => "dtmf",
            ServerMessage::IceServers { .. } => "ice-servers",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Error { .. } => "error",
        }
    }

    /// The JSON text frame, with the version.
    pub fn encode(&self) -> String {
        #[derive(Serialize)]
        struct Envelope<'a> {
            v: u32,
            #[serde(flatten)]
            message: &'a ServerMessage,
        }
        serde_json::to_string(&Envelope {
            v: VERSION,
            message: self,
        })
        .expect("server messages always serialize: string keys, no non-finite floats")
    }
}

/// Why a text frame is not a usable client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The frame's request id, when it could be read, so that the error can echo it.
    pub id: Option<RequestId>,
    /// The code for the `error` reply.
    pub code: ErrorCode,
    /// A description for people.
    pub message: String,
}

/// Parses one text frame: checks the version, reads the id, then the typed message.
pub fn parse(text: &str) -> Result<Request, ParseError> {
    let fail = |id: Option<RequestId>, code, message: String| ParseError { id, code, message };
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(text) else {
        return Err(fail(
            None,
            ErrorCode::BadJson,
            "expected a JSON object".into(),
        ));
    };
    let id = match object.remove("id") {
        None | Some(Value::Null) => None,
        Some(value) => Some(RequestId::from_value(&value).ok_or_else(|| {
            fail(
                None,
                ErrorCode::BadMessage,
                format!("id must be a string of at most {MAX_ID_LEN} bytes or an unsigned integer"),
            )
        })?),
    };
    match object.remove("v") {
        Some(v) if v.as_u64() == Some(u64::from(VERSION)) => {}
        _ => {
            return Err(fail(
                id,
                ErrorCode::UnsupportedVersion,
                format!("\"v\" must be {VERSION}"),
            ))
        }
    }
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => {
            return Err(fail(
                id,
                ErrorCode::BadMessage,
                "\"type\" must be a string".into(),
            ))
        }
    };
    if !CLIENT_KINDS.contains(&kind) {
        return Err(fail(
            id,
            ErrorCode::UnknownType,
            // Echoing the client's own type back is safe, but bound its length.
            format!(
                "unknown message type {:?}",
                kind.chars().take(32).collect::<String>()
            ),
        ));
    }
    match ClientMessage::deserialize(Value::Object(object)) {
        Ok(message) => Ok(Request { id, message }),
        Err(error) => Err(fail(id, ErrorCode::BadMessage, error.to_string())),
    }
}

#[cfg(test)]
mod tests;
