//! A server-side TLS stream, over rustls's unbuffered API, that holds no buffer while idle.
//!
//! rustls's buffered `ServerConnection`, and so tokio-rustls, keeps a 4 KiB read buffer for
//! every connection for as long as it lives. For a server holding tens of thousands of idle
//! WebSockets that is most of what a session costs. Here, bytes read from the socket land in
//! a buffer on the stack of the poll; only what cannot be dealt with at once moves to the
//! heap (a partial record, plaintext the reader has not taken yet, ciphertext the socket has
//! not accepted yet), and each of those buffers is released as soon as it is empty again.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at once, into the stack of the poll: a typical client flight
/// or a few WebSocket messages, in one system call.
const READ_CHUNK: usize = 8 * 1024;
/// A partial record (or handshake message, which rustls joins in place) larger than this is
/// refused. rustls's limits are 16 KiB plus overhead per record and 64 KiB per handshake
/// message; this is a backstop so that no peer can make the buffer grow without bound.
const MAX_INCOMING: usize = 80 * 1024;
/// Ciphertext queued for a peer that does not read before `poll_write` waits for the socket.
const MAX_QUEUED: usize = 64 * 1024;
/// Room for one record's header, content type, padding and tag (TLS 1.2 GCM takes 29 bytes,
/// TLS 1.3 22); a bad guess only costs a second try.
const RECORD_OVERHEAD: usize = 64;
/// rustls's largest plaintext fragment per record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// A thread's scratch buffer larger than this (after a large write) is given back.
const MAX_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where writes are encrypted before they go to the socket: one per thread rather than
    /// one per connection, since a write is encrypted and sent within one poll.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Why a write failed.
enum Failure {
    Tls(rustls::Error),
    Io(io::Error),
}

/// A TLS server connection over `IO`, with the handshake done by [`TlsServerStream::accept`].
pub struct TlsServerStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received bytes that do not make a whole record yet.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet, from `taken` on.
    plaintext: Vec<u8>,
    taken: usize,
    /// Ciphertext the socket has not accepted yet, from `written` on.
    outgoing: Vec<u8>,
    written: usize,
    /// The peer sent close_notify or closed its side of the connection.
    eof: bool,
    /// Our close_notify is queued (by `poll_shutdown`).
    close_queued: bool,
}

/// What [`process`] does when the connection is ready for application data.
enum Action<'a> {
    /// Nothing: only take what arrived and answer what the protocol needs answered.
    None,
    /// Encrypt these bytes as application data.
    Encrypt(&'a [u8]),
    /// Queue our close_notify.
    CloseNotify,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsServerStream<IO> {
    /// Runs the server side of a TLS handshake over `io`.
    pub async fn accept(config: Arc<ServerConfig>, io: IO) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
        let mut stream = TlsServerStream {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            taken: 0,
            outgoing: Vec::new(),
            written: 0,
            eof: false,
            close_queued: false,
        };
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    /// The underlying IO and the TLS connection (ALPN, SNI, protocol version).
    pub fn get_ref(&self) -> (&IO, &UnbufferedServerConnection) {
        (&self.io, &self.conn)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_out(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_fill(cx, None))?;
        }
    }

    /// Reads once from the socket and processes what arrived, decrypting into `reader` as
    /// far as it has room.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        reader: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut read = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            self.eof = true;
            if !self.incoming.is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection inside a TLS record",
                )));
            }
            return Poll::Ready(Ok(()));
        }
        let result = if self.incoming.is_empty() {
            // The common case: whole records, processed where they were read.
            let result = process(
                &mut self.conn,
                &mut chunk[..n],
                Action::None,
                reader,
                &mut self.plaintext,
                &mut self.outgoing,
                &mut self.eof,
            );
            if let Ok(consumed) = result {
                self.incoming.extend_from_slice(&chunk[consumed..n]);
            }
            result.map(drop)
        } else {
            self.incoming.extend_from_slice(&chunk[..n]);
            self.run(Action::None, reader, None)
        };
        if let Err(error) = result {
            return Poll::Ready(Err(self.fail(cx, error)));
        }
        if self.incoming.len() > MAX_INCOMING {
            return Poll::Ready(Err(invalid_data("TLS record larger than allowed")));
        }
        Poll::Ready(Ok(()))
    }

    /// Processes the bytes kept in `incoming`, handling `action` once the connection is
    /// ready for application data; what must be sent goes to `out`, or by default to
    /// `outgoing`.
    fn run(
        &mut self,
        action: Action<'_>,
        reader: Option<&mut ReadBuf<'_>>,
        out: Option<&mut Vec<u8>>,
    ) -> Result<(), rustls::Error> {
        let out = match out {
            Some(out) => out,
            None => &mut self.outgoing,
        };
        let consumed = process(
            &mut self.conn,
            &mut self.incoming,
            action,
            reader,
            &mut self.plaintext,
            out,
            &mut self.eof,
        )?;
        self.incoming.drain(..consumed);
        release_if_empty(&mut self.incoming);
        Ok(())
    }

    /// Turns a TLS error into an I/O error, first trying to send the alert rustls queued for
    /// it, so that the peer learns why (a browser shows it; a bare close says nothing).
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error) -> io::Error {
        let mut no_bytes = [0u8; 0];
        let _ = process(
            &mut self.conn,
            &mut no_bytes,
            Action::None,
            None,
            &mut self.plaintext,
            &mut self.outgoing,
            &mut self.eof,
        );
        let _ = self.poll_write_out(cx);
        invalid_data(error)
    }

    /// Writes queued ciphertext until none is left or the socket is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.outgoing = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn queued(&self) -> usize {
        self.outgoing.len() - self.written
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsServerStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.taken);
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // What processing queued (a session ticket, the answer to a key update) goes out
            // first; a peer that does not read must not stop us reading, so Pending is fine.
            if let Poll::Ready(Err(error)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(error));
            }
            let before = buf.filled().len();
            ready!(this.poll_fill(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsServerStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.queued() >= MAX_QUEUED {
            ready!(this.poll_write_out(cx))?;
        }
        if this.queued() > 0 {
            // Behind what waits already, in order.
            if let Err(error) = this.run(Action::Encrypt(data), None, None) {
                return Poll::Ready(Err(this.fail(cx, error)));
            }
            if let Poll::Ready(Err(error)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(data.len()));
        }
        // The common case, nothing waiting: encrypted into the thread's scratch buffer and
        // written from there, so that only what the socket does not take now is copied to a
        // buffer of the connection's.
        let written = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            this.run(Action::Encrypt(data), None, Some(&mut scratch))
                .map_err(Failure::Tls)?;
            let mut sent = 0;
            while sent < scratch.len() {
                match Pin::new(&mut this.io).poll_write(cx, &scratch[sent..]) {
                    Poll::Ready(Ok(0)) => return Err(Failure::Io(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(error)) => return Err(Failure::Io(error)),
                    Poll::Pending => break,
                }
            }
            this.outgoing.extend_from_slice(&scratch[sent..]);
            if scratch.capacity() > MAX_SCRATCH {
                *scratch = Vec::new();
            }
            Ok(())
        });
        match written {
            Ok(()) => Poll::Ready(Ok(data.len())),
            Err(Failure::Tls(error)) => Poll::Ready(Err(this.fail(cx, error))),
            Err(Failure::Io(error)) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            if let Err(error) = this.run(Action::CloseNotify, None, None) {
                return Poll::Ready(Err(invalid_data(error)));
            }
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Runs `conn` over `incoming` until it waits for more bytes from the peer: decrypted
/// application data goes to `reader` as far as it has room, the rest to `plaintext`, what
/// must be sent to `outgoing`, and `action` is
/// done once the connection may send application data. Returns how many bytes of `incoming`
/// were used; the rest is the start of a record still to come.
fn process(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    mut action: Action<'_>,
    mut reader: Option<&mut ReadBuf<'_>>,
    plaintext: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    eof: &mut bool,
) -> Result<usize, rustls::Error> {
    let mut consumed = 0;
    loop {
        let UnbufferedStatus { discard, state } =
            conn.process_tls_records(&mut incoming[consumed..]);
        let waiting = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let payload = record?.payload;
                    // Straight to the reader while nothing is waiting before it.
                    let direct = match reader.as_deref_mut() {
                        Some(buf) if plaintext.is_empty() => {
                            let n = buf.remaining().min(payload.len());
                            buf.put_slice(&payload[..n]);
                            n
                        }
                        _ => 0,
                    };
                    plaintext.extend_from_slice(&payload[direct..]);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut data) => {
                encode(outgoing, 0, |buffer| data.encode(buffer))?;
                false
            }
            // The flight stays in `outgoing`, ahead of anything written after it.
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                false
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                match std::mem::replace(&mut action, Action::None) {
                    Action::None => {}
                    Action::Encrypt(bytes) => {
                        let records = bytes.len().div_ceil(MAX_FRAGMENT).max(1);
                        encrypt(
                            outgoing,
                            bytes.len() + records * RECORD_OVERHEAD,
                            |buffer| traffic.encrypt(bytes, buffer),
                        )?;
                    }
                    Action::CloseNotify => {
                        encrypt(outgoing, RECORD_OVERHEAD, |buffer| {
                            traffic.queue_close_notify(buffer)
                        })?;
                    }
                }
                true
            }
            ConnectionState::PeerClosed => {
                *eof = true;
                false
            }
            ConnectionState::Closed => {
                *eof = true;
                true
            }
            // Early data is not enabled in any config here; a handshake that is not done
            // cannot carry what `action` asks for, which `poll_write` reports.
            ConnectionState::BlockedHandshake => {
                if matches!(action, Action::Encrypt(_)) {
                    return Err(rustls::Error::HandshakeNotComplete);
                }
                true
            }
            _ => true,
        };
        consumed += discard;
        if waiting {
            return Ok(consumed);
        }
    }
}

/// Appends what `write` produces to `out`, giving it `guess` bytes of room first and, if that
/// was too little, as much as it asked for (`too_small` reads that from its error).
fn append<E: std::fmt::Display>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> Result<(), rustls::Error> {
    let failed = |error: E| rustls::Error::General(error.to_string());
    let start = out.len();
    out.resize(start + guess, 0);
    let written = match write(&mut out[start..]) {
        Ok(written) => written,
        Err(error) => match too_small(&error) {
            Some(required_size) => {
                out.resize(start + required_size, 0);
                write(&mut out[start..]).map_err(failed)?
            }
            None => return Err(failed(error)),
        },
    };
    out.truncate(start + written);
    Ok(())
}

/// [`append`] for handshake records.
fn encode(
    out: &mut Vec<u8>,
    guess: usize,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    append(out, guess, write, |error| match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// [`append`] for application data and alerts.
fn encrypt(
    out: &mut Vec<u8>,
    guess: usize,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    append(out, guess, write, |error| match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

/// Gives an emptied buffer's memory back, so that an idle connection holds none.
fn release_if_empty(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        *buffer = Vec::new();
    }
}

fn invalid_data(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::BufReader;
    use std::path::Path;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_rustls::client::TlsStream;

    use super::*;
    use crate::tls::{self, ReloadableCert};

    /// A server config for `localhost` and a client that trusts it, for `version`.
    fn pair(
        dir: &Path,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ServerConfig>, tokio_rustls::TlsConnector) {
        let (cert, key) = tls::generate_self_signed(dir, &["localhost".to_owned()]).unwrap();
        let server = tls::server_config(Arc::new(ReloadableCert::new(&cert, key).unwrap()), &[]);
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut BufReader::new(File::open(&cert).unwrap())) {
            roots.add(der.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, tokio_rustls::TlsConnector::from(Arc::new(client)))
    }

    /// A client and the server stream it is connected to, handshake done.
    async fn connect(
        version: &'static rustls::SupportedProtocolVersion,
        pipe: usize,
    ) -> (TlsStream<DuplexStream>, TlsServerStream<DuplexStream>) {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = pair(dir.path(), version);
        let (client_io, server_io) = tokio::io::duplex(pipe);
        let accept = tokio::spawn(TlsServerStream::accept(server, server_io));
        let name = ServerName::try_from("localhost").unwrap();
        let client = client.connect(name, client_io).await.unwrap();
        (client, accept.await.unwrap().unwrap())
    }

    fn holds_no_buffer(stream: &TlsServerStream<DuplexStream>) -> bool {
        stream.incoming.capacity() == 0
            && stream.plaintext.capacity() == 0
            && stream.outgoing.capacity() == 0
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_an_idle_stream_holds_no_buffer() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut client, mut server) = connect(version, 64 * 1024).await;
            assert!(
                holds_no_buffer(&server),
                "{version:?}: buffers kept after the handshake"
            );

            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            client.flush().await.unwrap();
            let mut request = [0u8; 18];
            server.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"GET / HTTP/1.1\r\n\r\n");

            server.write_all(b"HTTP/1.1 101\r\n\r\n").await.unwrap();
            server.flush().await.unwrap();
            let mut response = [0u8; 16];
            client.read_exact(&mut response).await.unwrap();
            assert_eq!(&response, b"HTTP/1.1 101\r\n\r\n");
            assert!(
                holds_no_buffer(&server),
                "{version:?}: buffers kept while idle"
            );
        }
    }

    #[tokio::test]
    async fn large_writes_and_records_split_across_reads_arrive_whole() {
        // A pipe far smaller than a record makes every record arrive in pieces.
        let (mut client, mut server) = connect(&rustls::version::TLS13, 1000).await;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

        let expected = data.clone();
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; expected.len()];
            // Small reads, as the WebSocket layer's are.
            for piece in received.chunks_mut(61) {
                server.read_exact(piece).await.unwrap();
            }
            assert_eq!(received, expected);
            server.write_all(&expected).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        client.write_all(&data).await.unwrap();
        client.flush().await.unwrap();
        let mut echoed = vec![0u8; data.len()];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, data);
        let server = reader.await.unwrap();
        assert!(holds_no_buffer(&server));
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_cleanly_both_ways() {
        let (mut client, mut server) = connect(&rustls::version::TLS13, 64 * 1024).await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut all = Vec::new();
        // A clean end (close_notify) reads as end of stream, not as an error.
        client.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bye");

        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn garbage_instead_of_a_client_hello_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = pair(dir.path(), &rustls::version::TLS13);
        let (mut client_io, server_io) = tokio::io::duplex(4096);
        let accept = tokio::spawn(TlsServerStream::accept(server, server_io));
        client_io
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let error = accept
            .await
            .unwrap()
            .err()
            .expect("plain HTTP is not a handshake");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // The alert rustls queued for it was sent: a TLS alert record (content type 21).
        let mut alert = [0u8; 1];
        client_io.read_exact(&mut alert).await.unwrap();
        assert_eq!(alert[0], 21);
    }

    #[tokio::test]
    async fn a_peer_that_closes_mid_handshake_ends_the_accept() {
        let dir = tempfile::tempdir().unwrap();
        let (server, _) = pair(dir.path(), &rustls::version::TLS13);
        let (mut client_io, server_io) = tokio::io::duplex(4096);
        let accept = tokio::spawn(TlsServerStream::accept(server, server_io));
        // The start of a handshake record, then nothing.
        client_io.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
        drop(client_io);
        let error = accept.await.unwrap().err().expect("no handshake");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
