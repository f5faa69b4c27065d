//! WebSocket close codes the server uses (RFC 6455 §7.4; 4000–4999 are ours).

/// The server is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol (an unmasked frame, reserved bits, a bad
/// opcode, a fragmented control frame, ...).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A text frame that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// A frame or message exceeded the size limit.
pub const TOO_BIG: u16 = 1009;
/// The client does not read fast enough: its outgoing queue overflowed.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// No valid credentials were presented, or none in time.
pub const UNAUTHORIZED: u16 = 4401;
/// Too many connections from this address or sessions for this user.
pub const TOO_MANY_CONNECTIONS: u16 = 4403;
/// Nothing was received for the idle timeout, not even a pong.
pub const IDLE_TIMEOUT: u16 = 4408;
/// The client kept sending after being told it is rate limited.
pub const RATE_LIMITED: u16 = 4429;
