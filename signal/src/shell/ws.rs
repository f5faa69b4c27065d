//! One WebSocket connection's task: reads frames into the [`Connection`] gatekeeper, carries
//! out its actions, and writes what the hub sends to the session.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use icegate_signal_proto::conn::{Action, Connection};
use icegate_signal_proto::hub::OpenError;
use icegate_signal_proto::protocol::{
    close, ErrorCode, RequestId, ServerMessage, SessionId, UserId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::inbox::{HubInput, Outbox, OutboxReceiver};
use super::metrics::INVALID_KIND;
use super::state::{Admission, Shared};

/// How long a closing connection waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Credentials from the upgrade request: a token (query or `Authorization`) or a name.
#[derive(Debug, Default)]
pub struct UrlCredentials {
    /// A JWT.
    pub token: Option<String>,
    /// An anonymous client's name.
    pub name: Option<UserId>,
}

/// tungstenite's read buffer, per connection. It is allocated with the connection and
/// zero-filled on the first read, which every connection makes at once (it waits for the
/// next frame), so its size is what every connection holds for its whole life, idle or not:
/// the default 128 KiB made an idle session cost 146 KB of RSS. A frame longer than the
/// buffer grows it to the frame's length while it is read, in reads of at most this size,
/// which [`SpillRead`] serves from memory rather than one system call each.
pub const READ_BUFFER_BYTES: usize = 64;

/// What [`SpillRead`] reads from the socket at once, into the stack of the poll.
const SPILL_CHUNK: usize = 4096;

/// Lets tungstenite read in small pieces without a system call per piece and without a
/// buffer per connection: a read smaller than [`SPILL_CHUNK`] reads up to that much from the
/// socket into the stack, hands over what fits, and keeps the rest on the heap only until it
/// has been handed over too. An idle connection holds nothing here.
pub struct SpillRead<S> {
    inner: S,
    spilled: Vec<u8>,
    taken: usize,
}

impl<S> SpillRead<S> {
    /// Wraps a stream.
    pub fn new(inner: S) -> Self {
        SpillRead {
            inner,
            spilled: Vec::new(),
            taken: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SpillRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.spilled.len() {
            let n = buf.remaining().min(this.spilled.len() - this.taken);
            buf.put_slice(&this.spilled[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.spilled.len() {
                this.spilled = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= SPILL_CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); SPILL_CHUNK];
        let mut read = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
        let filled = read.filled();
        let n = buf.remaining().min(filled.len());
        buf.put_slice(&filled[..n]);
        if n < filled.len() {
            this.spilled = filled[n..].to_vec();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SpillRead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The WebSocket settings for `limits`: oversized messages and frames are refused while
/// being read, before they are buffered whole; buffers are small (see [`READ_BUFFER_BYTES`];
/// the stream must be wrapped in a [`SpillRead`]).
pub fn websocket_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Each message is written at once (the sink flushes after every message anyway), so
        // the write buffer only ever holds the message being written, not 128 KiB of them.
        .write_buffer_size(0)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// Why the loop ended: who closes, and with what.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The socket failed or the client vanished without a close: nothing more to send.
    Gone,
    /// The client sent a close frame, which tungstenite has queued its reply to.
    ClientClosed,
    /// The server closes with this code.
    Close(u16, &'static str),
    /// The client broke the protocol: the server closes with this code. The reader has
    /// stopped at the fault, so what the client sends after it is drained unread.
    Broken(u16, &'static str),
}

/// How a failed read ends the connection: the close code for what the client got wrong
/// (RFC 6455 §7.4.1), or nothing to send when the connection itself is gone.
fn read_error_end(error: &WsError) -> End {
    match error {
        WsError::Capacity(_) => End::Broken(close::TOO_BIG, "message too big"),
        WsError::Utf8(_) => End::Broken(close::INVALID_PAYLOAD, "text frame is not UTF-8"),
        // The client dropped the TCP connection: there is nobody to tell.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        WsError::Protocol(_) => End::Broken(close::PROTOCOL_ERROR, "protocol error"),
        _ => End::Gone,
    }
}

/// Everything one connection owns. It lives in a box that the connection's task points to:
/// the arguments of an async fn are kept twice in its future (as passed and as moved into
/// the body) for the future's whole life, which for a 360-byte WebSocket stream was 700
/// bytes of every idle session; a box is 8 bytes, twice.
pub struct Task<S> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    conn: Connection,
    session: Option<Session>,
    /// Taken by the first authentication, from the upgrade request.
    credentials: Option<UrlCredentials>,
    /// Held for the connection's lifetime: it counts the connection against its address.
    _admission: Admission,
}

struct Session {
    id: SessionId,
    user: UserId,
    anonymous: bool,
    outbox: OutboxReceiver,
}

/// A connection's task state, before [`run`].
pub fn task<S>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    credentials: UrlCredentials,
    admission: Admission,
) -> Box<Task<S>> {
    let conn = Connection::new(shared.limits.clone(), Instant::now());
    Box::new(Task {
        ws,
        shared,
        conn,
        session: None,
        credentials: Some(credentials),
        _admission: admission,
    })
}

/// Runs one connection to its end.
pub async fn run<S>(mut task: Box<Task<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Arc::clone(&task.shared);
    shared.metrics.connections_total.inc();
    shared.metrics.connections_active.inc();
    let authenticated = match task.credentials.take() {
        // Boxed, like `act` in `serve`: see there.
        Some(credentials) if credentials.token.is_some() || credentials.name.is_some() => {
            Box::pin(task.authenticate_from_url(credentials)).await
        }
        _ => Ok(()),
    };
    let end = match authenticated {
        Ok(()) => task.serve().await,
        Err(end) => end,
    };
    if end == End::ClientClosed {
        // Sends tungstenite's reply to the client's close (its code echoed) before the socket
        // is dropped, so the browser sees a clean close (RFC 6455 §5.5.1).
        if let Err(error) = task.ws.flush().await {
            tracing::debug!(%error, "close reply not sent");
        }
    }
    if let End::Close(code, reason) | End::Broken(code, reason) = end {
        shared.metrics.closed(code);
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        // Best effort: the client may already be gone. Then read until the client's close
        // (or a short timeout) before dropping the socket: closing with unread data in the
        // receive buffer makes the kernel send a reset, and a reset can destroy the close
        // frame, and with it the close code, before the client reads it.
        if task.ws.send(Message::Close(Some(frame))).await.is_ok() {
            let broken = matches!(end, End::Broken(..));
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                if broken {
                    // The WebSocket reader ends at its first error: drain the socket itself.
                    // On the heap: an array here would be part of every connection's future
                    // for its whole life (4 KiB each), not only while it closes.
                    let mut sink = vec![0u8; 4096];
                    while let Ok(1..) = task.ws.get_mut().read(&mut sink).await {}
                } else {
                    while let Some(Ok(_)) = task.ws.next().await {}
                }
            })
            .await;
        }
    }
    if let Some(session) = task.session {
        // Waits if the hub is busy, but only this ending connection waits. Boxed, as in
        // `serve`, so that the room for it is not part of every idle session.
        let _ = Box::pin(shared.hub.send(HubInput::Close {
            session: session.id,
        }))
        .await;
    }
    shared.metrics.connections_active.dec();
}

impl<S> Task<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn serve(&mut self) -> End {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let deadline = tokio::time::Instant::from_std(self.conn.poll_timeout());
            // Separate borrows of the socket and the outbox, so both can be awaited at once.
            let ws = &mut self.ws;
            let session = &mut self.session;
            let outbox = async move {
                match session {
                    Some(session) => session.outbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                frame = ws.next() => Step::Frame(frame),
                message = outbox => Step::Outbox(message),
                () = tokio::time::sleep_until(deadline) => Step::Timer,
                () = super::state::shutdown(&mut shutdown) => {
                    return End::Close(close::GOING_AWAY, "server shutting down")
                }
            };
            let now = Instant::now();
            let action = match step {
                Step::Frame(None) => return End::Gone,
                Step::Frame(Some(Ok(Message::Close(_)))) => return End::ClientClosed,
                Step::Frame(Some(Ok(Message::Text(text)))) => {
                    let action = self.conn.handle_text(text.as_str(), now);
                    self.shared.metrics.received(kind_of(&action));
                    action
                }
                Step::Frame(Some(Ok(Message::Binary(_)))) => {
                    self.shared.metrics.received(INVALID_KIND);
                    self.conn.handle_binary(now)
                }
                Step::Frame(Some(Ok(_))) => {
                    // Ping, pong: tungstenite answers pings itself; either shows life.
                    self.conn.handle_heard(now);
                    Action::None
                }
                Step::Frame(Some(Err(error))) => {
                    tracing::debug!(%error, "websocket read failed");
                    return read_error_end(&error);
                }
                Step::Outbox(Some(message)) => {
                    if !self.send(*message).await {
                        return End::Gone;
                    }
                    Action::None
                }
                // The hub dropped this session's outbox: it did not keep up with its messages.
                Step::Outbox(None) => return End::Close(close::TRY_AGAIN_LATER, "too slow"),
                Step::Timer => self.conn.handle_timeout(now),
            };
            // Boxed: this task's future is as large as its largest state, and carrying out an
            // action (authenticating, sending) needs far more room than waiting, where every
            // session spends its life. Boxed, that room is allocated while an action runs
            // and given back after.
            if let Err(end) = Box::pin(self.act(action)).await {
                return end;
            }
        }
    }

    /// Carries out one action of the gatekeeper.
    async fn act(&mut self, action: Action) -> Result<(), End> {
        match action {
            Action::None => Ok(()),
            Action::Reply(message) => self.reply(message).await,
            Action::Hello { id, token, name } => {
                self.authenticate(id, token.as_deref(), name).await
            }
            Action::RefreshIce { id } => {
                let ice = self.ice_servers("ws");
                self.reply(ServerMessage::IceServers { id, ice }).await
            }
            Action::Forward { id, message } => {
                let session = self
                    .session
                    .as_ref()
                    .expect("forwarded only when authenticated");
                let input = HubInput::Message {
                    session: session.id,
                    id,
                    message,
                };
                // The hub's inbox is bounded: a full one slows this client's reading, nobody else's.
                self.shared
                    .hub
                    .send(input)
                    .await
                    .map_err(|_| End::Close(close::GOING_AWAY, "server shutting down"))
            }
            Action::Ping => {
                if self
                    .ws
                    .send(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    return Err(End::Gone);
                }
                Ok(())
            }
            Action::Close { code, reason } => Err(End::Close(code, reason)),
        }
    }

    async fn reply(&mut self, message: ServerMessage) -> Result<(), End> {
        if self.send(message).await {
            Ok(())
        } else {
            Err(End::Gone)
        }
    }

    /// Writes one message; false when the socket failed.
    async fn send(&mut self, message: ServerMessage) -> bool {
        self.shared.metrics.sent(&message);
        self.ws.send(Message::text(message.encode())).await.is_ok()
    }

    /// ICE servers for this session: each anonymous session gets a TURN user of its own.
    fn ice_servers(&self, via: &str) -> icegate_signal_proto::ice::IceServers {
        let session = self
            .session
            .as_ref()
            .expect("only sessions get ICE servers");
        let turn_user = if session.anonymous {
            format!("anon-{}", session.id)
        } else {
            session.user.to_string()
        };
        self.shared.ice_servers(&turn_user, via)
    }

    /// [`Task::authenticate`] with the credentials of the upgrade request.
    async fn authenticate_from_url(&mut self, credentials: UrlCredentials) -> Result<(), End> {
        self.authenticate(None, credentials.token.as_deref(), credentials.name)
            .await
    }

    /// Authenticates, opens the session in the hub and sends `welcome`; on failure sends the
    /// `error` and returns how to close.
    async fn authenticate(
        &mut self,
        id: Option<RequestId>,
        token: Option<&str>,
        name: Option<UserId>,
    ) -> Result<(), End> {
        let identity = match self.shared.authenticate(token, name) {
            Ok(identity) => identity,
            Err(error) => {
                let message = if self.shared.anonymous && token.is_none() {
                    "a name is required in anonymous mode".to_string()
                } else {
                    error.to_string()
                };
                self.reply(ServerMessage::error(id, error.code(), message))
                    .await?;
                return Err(End::Close(close::UNAUTHORIZED, "authentication failed"));
            }
        };
        let (outbox_tx, outbox_rx) = Outbox::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let open = HubInput::Open {
            user: identity.user.clone(),
            outbox: outbox_tx,
            reply: reply_tx,
        };
        let gone = || End::Close(close::GOING_AWAY, "server shutting down");
        self.shared.hub.send(open).await.map_err(|_| gone())?;
        let session = match reply_rx.await.map_err(|_| gone())? {
            Ok(session) => session,
            Err(OpenError::TooManySessions) => {
                let error = ServerMessage::error(
                    id,
                    ErrorCode::TooManySessions,
                    "this user has too many sessions",
                );
                self.reply(error).await?;
                return Err(End::Close(close::TOO_MANY_CONNECTIONS, "too many sessions"));
            }
        };
        self.conn.authenticated(session);
        self.session = Some(Session {
            id: session,
            user: identity.user.clone(),
            anonymous: identity.anonymous,
            outbox: outbox_rx,
        });
        let ice = self.ice_servers("ws");
        self.reply(ServerMessage::Welcome {
            id,
            session,
            user: identity.user,
            ice,
        })
        .await
    }
}

enum Step {
    Frame(Option<Result<Message, WsError>>),
    Outbox(Option<Box<ServerMessage>>),
    Timer,
}

/// The metric label of a received frame, from what the gatekeeper made of it.
fn kind_of(action: &Action) -> &'static str {
    match action {
        Action::Hello { .. } => "hello",
        Action::RefreshIce { .. } => "refresh-ice",
        Action::Forward { message, .. } => message.kind(),
        Action::Reply(ServerMessage::Pong { .. }) => "ping",
        Action::Reply(ServerMessage::Error { code, .. })
            if *code == ErrorCode::AlreadyAuthenticated =>
        {
            "hello"
        }
        _ => INVALID_KIND,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::error::CapacityError;

    #[test]
    fn read_errors_map_to_close_codes() {
        let code = |error: WsError| match read_error_end(&error) {
            End::Broken(code, _) => Some(code),
            End::Gone | End::ClientClosed | End::Close(..) => None,
        };
        let too_big = CapacityError::MessageTooLong {
            size: 2,
            max_size: 1,
        };
        assert_eq!(code(WsError::Capacity(too_big)), Some(1009));
        assert_eq!(code(WsError::Utf8("\\xff".into())), Some(1007));
        for violation in [
            ProtocolError::UnmaskedFrameFromClient,
            ProtocolError::NonZeroReservedBits,
            ProtocolError::FragmentedControlFrame,
            ProtocolError::ControlFrameTooBig,
            ProtocolError::InvalidOpcode(3),
            ProtocolError::UnknownDataFrameType(3),
            ProtocolError::UnknownControlFrameType(11),
            ProtocolError::UnexpectedContinueFrame,
            ProtocolError::InvalidCloseSequence,
        ] {
            assert_eq!(code(WsError::Protocol(violation)), Some(1002));
        }
        let reset = ProtocolError::ResetWithoutClosingHandshake;
        assert_eq!(code(WsError::Protocol(reset)), None);
        assert_eq!(code(WsError::ConnectionClosed), None);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(code(WsError::Io(io)), None);
    }

    #[tokio::test]
    async fn spill_read_hands_over_everything_in_small_reads_and_keeps_nothing_after() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut reader = SpillRead::new(server);
        let mut got = Vec::new();
        let mut piece = [0u8; READ_BUFFER_BYTES];
        loop {
            let n = reader.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= READ_BUFFER_BYTES);
            got.extend_from_slice(&piece[..n]);
            if reader.spilled.is_empty() {
                assert_eq!(reader.taken, 0);
            }
        }
        assert_eq!(got, sent);
        assert_eq!(
            reader.spilled.capacity(),
            0,
            "nothing kept once handed over"
        );
    }
}
