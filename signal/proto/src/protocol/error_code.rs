//! The error codes of `error` messages: stable, for clients to branch on.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. Clients branch on these; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// `v` is missing or not a version this server speaks.
    UnsupportedVersion,
    /// `type` names no message this server knows.
    UnknownType,
    /// The message's fields do not fit its type.
    BadMessage,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// A credential is needed (a token, or a name in anonymous mode) and none was given.
    TokenRequired,
    /// The token is malformed, its signature is wrong or its claims are unusable.
    InvalidToken,
    /// The token's `exp` has passed.
    TokenExpired,
    /// The message needs an authenticated session; send `hello` first.
    NotAuthenticated,
    /// `hello` on a session that is already authenticated.
    AlreadyAuthenticated,
    /// The called user has no connected session.
    UnknownUser,
    /// The called room has no other member, or the caller is not in it.
    UnknownRoom,
    /// No such call, or this session is not part of it.
    UnknownCall,
    /// The message does not fit the call's state (e.g. a second answer).
    InvalidState,
    /// The SDP is larger than the configured limit.
    SdpTooLarge,
    /// Too many messages per second; this one was dropped.
    RateLimited,
    /// This session already has the maximum number of calls.
    TooManyCalls,
    /// Too many rooms for this session, or the room is full.
    TooManyRooms,
    /// Too many connections from this address.
    TooManyConnections,
    /// Too many sessions for this user.
    TooManySessions,
    /// A call to an extension, but no PBX is configured or it cannot be reached now.
    PbxUnavailable,
    /// An `offer` crossed one from the other end, which goes first: roll back and answer it.
    Glare,
    /// The called user has no session on this instance, and the other instances cannot be
    /// reached now (the cluster bus, Redis, is down).
    ClusterUnavailable,
    /// The page's origin may not use this server (`allowed-origins`).
    OriginNotAllowed,
}

impl ErrorCode {
    /// The wire name, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::SdpTooLarge => "sdp_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyCalls => "too_many_calls",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::PbxUnavailable => "pbx_unavailable",
            ErrorCode::Glare => "glare",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
        }
    }
}
