//! One WebSocket connection's gatekeeping, as a sans-IO state machine: rate limit, parsing,
//! SDP size, authentication state, idle and authentication timeouts, keepalive pings.
//!
//! The shell feeds it every frame and its timer, and carries out the [`Action`] it returns:
//! replying, authenticating a `hello`, forwarding a request to the hub, pinging or closing.

use std::time::Instant;

use icegate_common::token_bucket::TokenBucket;

use crate::limits::Limits;
use crate::protocol::{
    self, close, ClientMessage, ErrorCode, RequestId, ServerMessage, SessionId, UserId,
};

/// What the shell should do after a frame or a timeout.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing.
    None,
    /// Send this message back on the same connection.
    Reply(ServerMessage),
    /// Authenticate with a `hello`'s token or name; then call
    /// [`Connection::authenticated`] or close with [`close::UNAUTHORIZED`].
    Hello {
        /// The `hello`'s id, for the `welcome` or `error`.
        id: Option<RequestId>,
        /// The token, if given.
        token: Option<String>,
        /// The anonymous name, if given.
        name: Option<UserId>,
    },
    /// Send fresh ICE servers.
    RefreshIce {
        /// The request's id.
        id: Option<RequestId>,
    },
    /// Hand the request to the hub.
    Forward {
        /// The request's id.
        id: Option<RequestId>,
        /// The request.
        message: ClientMessage,
    },
    /// Send a WebSocket ping.
    Ping,
    /// Close the connection with this code.
    Close {
        /// The WebSocket close code.
        code: u16,
        /// The close frame's reason text.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingHello,
    Authenticated(SessionId),
}

/// The gatekeeper of one connection.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    state: State,
    bucket: TokenBucket<Instant>,
    strikes: u32,
    opened: Instant,
    last_heard: Instant,
    next_ping: Instant,
}

impl Connection {
    /// A new connection, not authenticated yet.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Connection {
            bucket: TokenBucket::full(now),
            next_ping: now + limits.ping_interval(),
            limits,
            state: State::AwaitingHello,
            strikes: 0,
            opened: now,
            last_heard: now,
        }
    }

    /// The session, once authenticated.
    pub fn session(&self) -> Option<SessionId> {
        match self.state {
            State::AwaitingHello => None,
            State::Authenticated(session) => Some(session),
        }
    }

    /// Marks the connection authenticated as `session`.
    pub fn authenticated(&mut self, session: SessionId) {
        self.state = State::Authenticated(session);
    }

    /// Any frame arrived (including pings, pongs and close): the client is alive.
    pub fn handle_heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// A text frame arrived.
    pub fn handle_text(&mut self, text: &str, now: Instant) -> Action {
        self.handle_heard(now);
        if let Some(action) = self.rate_limit(now) {
            return action;
        }
        let request = match protocol::parse(text) {
            Ok(request) => request,
            Err(error) => {
                return Action::Reply(ServerMessage::error(error.id, error.code, error.message))
            }
        };
        let id = request.id;
        if request
            .message
            .sdp()
            .is_some_and(|sdp| sdp.len() > self.limits.max_sdp_bytes)
        {
            let message = format!("SDP larger than {} bytes", self.limits.max_sdp_bytes);
            return Action::Reply(ServerMessage::error(id, ErrorCode::SdpTooLarge, message));
        }
        match (request.message, self.state) {
            (ClientMessage::Ping, _) => Action::Reply(ServerMessage::Pong { id }),
            (ClientMessage::Hello { token, name }, State::AwaitingHello) => {
                Action::Hello { id, token, name }
            }
            (ClientMessage::Hello { .. }, State::Authenticated(_)) => Action::Reply(
                ServerMessage::error(id, ErrorCode::AlreadyAuthenticated, "already authenticated"),
            ),
            (_, State::AwaitingHello) => Action::Reply(ServerMessage::error(
                id,
                ErrorCode::NotAuthenticated,
                "send hello first",
            )),
            (ClientMessage::RefreshIce, State::Authenticated(_)) => Action::RefreshIce { id },
            (message, State::Authenticated(_)) => Action::Forward { id, message },
        }
    }

    /// A binary frame arrived: not part of the protocol, but counted like any message.
    pub fn handle_binary(&mut self, now: Instant) -> Action {
        self.handle_heard(now);
        if let Some(action) = self.rate_limit(now) {
            return action;
        }
        Action::Reply(ServerMessage::error(
            None,
            ErrorCode::BinaryNotSupported,
            "send JSON text frames",
        ))
    }

    /// `None` when the message may pass; otherwise what to do instead.
    ///
    /// A limited message is dropped unparsed (parsing is the cost being limited), so its
    /// error carries no id. A client that keeps sending regardless is closed.
    fn rate_limit(&mut self, now: Instant) -> Option<Action> {
        if self.bucket.take(1, self.limits.message_rate(), now) {
            self.strikes = 0;
            return None;
        }
        self.strikes += 1;
        if self.strikes > self.limits.max_strikes {
            return Some(Action::Close {
                code: close::RATE_LIMITED,
                reason: "rate limit exceeded",
            });
        }
        Some(Action::Reply(ServerMessage::error(
            None,
            ErrorCode::RateLimited,
            format!(
                "more than {} messages per second; message dropped",
                self.limits.messages_per_sec
            ),
        )))
    }

    /// Runs the timers due at `now`: authentication timeout, idle timeout, keepalive ping.
    pub fn handle_timeout(&mut self, now: Instant) -> Action {
        if self.state == State::AwaitingHello && now >= self.opened + self.limits.auth_timeout {
            return Action::Close {
                code: close::UNAUTHORIZED,
                reason: "no hello in time",
            };
        }
        if now >= self.last_heard + self.limits.idle_timeout {
            return Action::Close {
                code: close::IDLE_TIMEOUT,
                reason: "idle timeout",
            };
        }
        if now >= self.next_ping {
            self.next_ping = now + self.limits.ping_interval();
            return Action::Ping;
        }
        Action::None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Instant {
        let idle = self.last_heard + self.limits.idle_timeout;
        let mut next = idle.min(self.next_ping);
        if self.state == State::AwaitingHello {
            next = next.min(self.opened + self.limits.auth_timeout);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            messages_per_sec: 10,
            message_burst: 3,
            max_strikes: 2,
            max_sdp_bytes: 10,
            idle_timeout: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            ..Limits::default()
        }
    }

    fn error_code(action: &Action) -> Option<ErrorCode> {
        match action {
            Action::Reply(ServerMessage::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn hello_first_then_requests_are_forwarded() {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), now);
        let call = r#"{"v":1,"id":2,"type":"call","to":{"user":"bob"},"sdp":"v=0"}"#;
        assert_eq!(
            error_code(&conn.handle_text(call, now)),
            Some(ErrorCode::NotAuthenticated)
        );
        assert_eq!(
            conn.handle_text(r#"{"v":1,"id":1,"type":"ping"}"#, now),
            Action::Reply(ServerMessage::Pong {
                id: Some(RequestId::Number(1))
            }),
            "pings work before hello"
        );
        assert_eq!(
            conn.handle_text(r#"{"v":1,"id":"h","type":"hello","token":"t"}"#, now),
            Action::Hello {
                id: Some(RequestId::Text("h".into())),
                token: Some("t".into()),
                name: None
            }
        );
        conn.authenticated(SessionId(5));
        assert_eq!(conn.session(), Some(SessionId(5)));
        let later = now + Duration::from_secs(1);
        assert!(matches!(
            conn.handle_text(call, later),
            Action::Forward {
                id: Some(RequestId::Number(2)),
                message: ClientMessage::Call { .. }
            }
        ));
        assert_eq!(
            conn.handle_text(r#"{"v":1,"type":"refresh-ice"}"#, later),
            Action::RefreshIce { id: None }
        );
        assert_eq!(
            error_code(&conn.handle_text(r#"{"v":1,"type":"hello"}"#, later)),
            Some(ErrorCode::AlreadyAuthenticated)
        );
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), now);
        conn.authenticated(SessionId(1));
        let mut at = now;
        let mut send = |text: &str| {
            // Spaced out so that the rate limit stays out of this test.
            at += Duration::from_secs(1);
            error_code(&conn.handle_text(text, at))
        };
        assert_eq!(send("{"), Some(ErrorCode::BadJson));
        assert_eq!(send(r#"{"v":1,"type":"x"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(
            send(r#"{"v":1,"type":"call","to":{"user":"b"},"sdp":"12345678901"}"#),
            Some(ErrorCode::SdpTooLarge)
        );
        assert_eq!(
            send(r#"{"v":1,"type":"call","to":{"user":"b"},"sdp":"1234567890"}"#),
            None,
            "an SDP at the limit passes"
        );
        at += Duration::from_secs(1);
        assert_eq!(
            error_code(&conn.handle_binary(at)),
            Some(ErrorCode::BinaryNotSupported)
        );
    }

    #[test]
    fn rate_limit_drops_then_closes() {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), now);
        let ping = r#"{"v":1,"type":"ping"}"#;
        for _ in 0..3 {
            assert!(matches!(
                conn.handle_text(ping, now),
                Action::Reply(ServerMessage::Pong { .. })
            ));
        }
        assert_eq!(
            error_code(&conn.handle_text(ping, now)),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(
            error_code(&conn.handle_text(ping, now)),
            Some(ErrorCode::RateLimited)
        );
        assert_eq!(
            conn.handle_text(ping, now),
            Action::Close {
                code: close::RATE_LIMITED,
                reason: "rate limit exceeded"
            }
        );

        // A client that slows down after a strike is forgiven.
        let mut conn = Connection::new(limits(), now);
        for _ in 0..3 {
            conn.handle_text(ping, now);
        }
        assert_eq!(
            error_code(&conn.handle_binary(now)),
            Some(ErrorCode::RateLimited)
        );
        let later = now + Duration::from_millis(150);
        assert!(matches!(
            conn.handle_text(ping, later),
            Action::Reply(ServerMessage::Pong { .. })
        ));
        assert_eq!(conn.strikes, 0);
    }

    #[test]
    fn authentication_timeout() {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), now);
        assert_eq!(conn.poll_timeout(), now + Duration::from_secs(5));
        assert_eq!(
            conn.handle_timeout(now + Duration::from_secs(4)),
            Action::None
        );
        assert_eq!(
            conn.handle_timeout(now + Duration::from_secs(5)),
            Action::Close {
                code: close::UNAUTHORIZED,
                reason: "no hello in time"
            }
        );
    }

    #[test]
    fn pings_keep_time_and_silence_closes() {
        let now = Instant::now();
        let mut conn = Connection::new(limits(), now);
        conn.authenticated(SessionId(1));
        let ping_at = now + Duration::from_secs(10);
        assert_eq!(conn.poll_timeout(), ping_at);
        assert_eq!(conn.handle_timeout(ping_at), Action::Ping);
        assert_eq!(conn.poll_timeout(), now + Duration::from_secs(20));
        // The pong arrives: the idle clock restarts.
        conn.handle_heard(ping_at + Duration::from_millis(5));
        assert_eq!(
            conn.handle_timeout(now + Duration::from_secs(20)),
            Action::Ping
        );
        assert_eq!(
            conn.handle_timeout(now + Duration::from_secs(30)),
            Action::Ping
        );
        // No pong to these: 30 s after the last frame heard, the connection is closed.
        assert_eq!(
            conn.handle_timeout(ping_at + Duration::from_secs(30) + Duration::from_millis(5)),
            Action::Close {
                code: close::IDLE_TIMEOUT,
                reason: "idle timeout"
            }
        );
    }
}
