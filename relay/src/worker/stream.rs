//! TCP and TLS client connections of a worker: accepting them (admission, eviction, the TLS
//! handshake), reading their frames into the core, and writing what the core sends them.

#![deny(unsafe_code)]

use super::*;
/// Bytes queued for a slow TCP/TLS client before further packets to it are dropped, as UDP
/// would drop them; keeps one stalled client from holding unbounded memory.
const MAX_STREAM_BACKLOG: usize = 256 * 1024;
/// The first read of a TCP/TLS connection with nothing buffered goes here, inside the
/// connection's task, so that an idle connection holds no read buffer; only a frame split
/// across reads is copied to one allocated for it ([`serve_stream`]).
const FIRST_READ: usize = 2048;
/// Reads into a partial frame's buffer take at least this much room while the client streams
/// (its last read filled all the room it had), so that frames sent back to back are read in
/// few system calls.
const READ_CHUNK: usize = 16 * 1024;

/// A TLS client that has not finished its handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the accept loop waits for evicted connections to close before it admits the next
/// connection (and refuses it if too many are still closing).
const EVICTION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes waiting to be written to a TCP/TLS client.
pub(super) struct StreamOut {
    pending: RefCell<Vec<u8>>,
    /// Where each frame in `pending` ends, kept only for TLS (see [`write_loop`]).
    frame_ends: RefCell<Vec<usize>>,
    record_per_frame: bool,
    wake: Notify,
    closed: Cell<bool>,
    /// The peer connection this stream carries once what is pending is written (RFC 6062
    /// ConnectionBind): the writer is then handed back rather than shut down.
    joined: Cell<Option<u32>>,
}

impl StreamOut {
    pub(super) fn push(&self, bytes: &[u8]) -> bool {
        let mut pending = self.pending.borrow_mut();
        if self.closed.get() || pending.len() + bytes.len() > MAX_STREAM_BACKLOG {
            return false;
        }
        pending.extend_from_slice(bytes);
        if self.record_per_frame {
            self.frame_ends.borrow_mut().push(pending.len());
        }
        self.wake.notify_one();
        true
    }

    fn new(record_per_frame: bool) -> Self {
        Self {
            pending: RefCell::default(),
            frame_ends: RefCell::default(),
            record_per_frame,
            wake: Notify::new(),
            closed: Cell::new(false),
            joined: Cell::new(None),
        }
    }

    /// From now on the stream carries peer connection `connection`; false if it is closing.
    pub(super) fn join(&self, connection: u32) -> bool {
        if self.closed.get() || self.joined.get().is_some() {
            return false;
        }
        self.joined.set(Some(connection));
        true
    }

    /// The peer connection the stream carries, once joined.
    pub(super) fn joined(&self) -> Option<u32> {
        self.joined.get()
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }
}

pub(super) async fn accept_loop(
    worker: Rc<Worker>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(error) => {
            tracing::error!(%error, "TCP listener has no address");
            return;
        }
    };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors; retrying at once would spin.
                tracing::warn!(%error, %local, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // Evicted connections close in their own tasks, on any worker. While too many are
        // still closing, this connection (and those behind it in the backlog) waits for them
        // rather than be refused: under a flood of connections, a real client's gets in.
        let _ = tokio::time::timeout(EVICTION_WAIT, worker.admission.evictions_settled()).await;
        let ticket = match worker.admission.admit(client.ip(), Instant::now()) {
            Ok(entry) => {
                if let Some(count) = entry.evictions_to_log {
                    tracing::warn!(
                        %client,
                        %local,
                        evicted = count,
                        "TCP/TLS connections full: evicting the oldest without an allocation \
                         (see icegate_relay_stream_evicted_total)"
                    );
                }
                entry.ticket
            }
            Err(refused) => {
                // Closed at once: a refused connection must cost nothing while it waits.
                drop(stream);
                log_refusal(refused, client, local);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // On a wildcard listener the connection's own address is the server side of its
        // 5-tuple, as for UDP (see `FiveTuple::server`).
        let server = match local.ip().is_unspecified() {
            true => stream.local_addr().unwrap_or(local),
            false => local,
        };
        let worker = Rc::clone(&worker);
        match &tls {
            None => {
                let from = FiveTuple {
                    transport: Transport::Tcp,
                    client,
                    server,
                };
                let halves = tokio::io::split(stream);
                tokio::task::spawn_local(serve_stream(worker, halves, from, ticket));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let serve = async move {
                    let from = FiveTuple {
                        transport: Transport::Tls,
                        client,
                        server,
                    };
                    let handshake = tls_handshake(&worker, &acceptor, stream, &ticket, client);
                    if let Some(halves) = handshake.await {
                        serve_stream(worker, halves, from, ticket).await;
                    }
                };
                tokio::task::spawn_local(serve);
            }
        }
    }
}

/// The TLS handshake of a connection accepted from `client`, within
/// [`TLS_HANDSHAKE_TIMEOUT`] and unless the connection is evicted meanwhile; the stream is
/// returned split for [`serve_stream`].
///
/// A function of its own, so that nothing of the handshake (the TLS stream is 1.2 KiB, its
/// `Accept` future as much) keeps a place in the connection's task once it is served: only
/// the halves, pointers to the stream `split` moved to the heap, come out of it.
async fn tls_handshake(
    worker: &Worker,
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
    ticket: &Ticket,
    client: SocketAddr,
) -> Option<Halves<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let handshake = tokio::select! {
        done = handshake => done,
        () = ticket.evicted() => return None,
    };
    match handshake {
        Ok(Ok(tls)) => Some(tokio::io::split(tls)),
        Ok(Err(error)) => {
            worker.stats.tls_handshake_failed();
            tracing::debug!(%error, %client, "TLS handshake failed");
            None
        }
        Err(_) => {
            worker.stats.tls_handshake_failed();
            tracing::debug!(%client, "TLS handshake timed out");
            None
        }
    }
}

/// The two halves of a split TCP or TLS stream.
type Halves<S> = (ReadHalf<S>, WriteHalf<S>);

/// Says why connections are refused, at most once per interval per reason.
pub(super) fn log_refusal(refused: Refused, client: SocketAddr, local: SocketAddr) {
    let Some(count) = refused.log else { return };
    let reason = refused.reason.as_str();
    tracing::warn!(
        %client,
        %local,
        reason,
        refused = count,
        "refusing TCP/TLS connections ({reason}; see icegate_relay_stream_refused_total)"
    );
}

/// Serves one TCP or TLS client until it disconnects, a deadline of
/// [`crate::stream_deadline`] passes or it is evicted; its allocation ends with it, and its
/// place in the admission with `ticket`.
///
/// It takes the stream already split: the halves are pointers to it, where the stream
/// itself (a TLS session is 1.2 KiB) would keep a place in the task's future for as long as
/// the connection lives.
async fn serve_stream<S>(
    worker: Rc<Worker>,
    (mut reader, writer): Halves<S>,
    from: FiveTuple,
    ticket: Ticket,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let out = Rc::new(StreamOut::new(from.transport == Transport::Tls));
    worker.streams.borrow_mut().insert(from, Rc::clone(&out));
    worker.stats.stream_opened();
    let writer = tokio::task::spawn_local(write_loop(writer, Rc::clone(&out)));

    // A partial frame, in a buffer allocated for it and freed once it is handed on.
    let mut partial: Vec<u8> = Vec::new();
    let mut first = [0u8; FIRST_READ];
    let mut joined = None;
    let mut deadline = StreamDeadline::new(Instant::now());
    // Whether the last read filled all the room it had, so that more is likely waiting.
    let mut streaming = false;
    loop {
        let allocated = worker.server.borrow().has_allocation(&from);
        // While the connection holds an allocation, the admission does not evict it.
        ticket.set_allocated(allocated);
        let (at, _) = deadline.deadline(&worker.stream_timeouts.get(), allocated);
        let room = if partial.is_empty() {
            FIRST_READ
        } else {
            // Never more than one frame is left over, so this stays bounded.
            debug_assert!(partial.len() < framing::MAX_FRAME);
            // A client sending back to back gets room for many frames per read; one that
            // stopped within a frame (the client was slow, or a slowloris) gets room for
            // the rest of that frame only, rather than 16 KiB held while it waits.
            let wanted = framing::bytes_wanted(&partial).max(1);
            partial.reserve(if streaming {
                wanted.max(READ_CHUNK)
            } else {
                wanted
            });
            partial.capacity() - partial.len()
        };
        let read = async {
            if partial.is_empty() {
                tokio::time::timeout_at(at.into(), reader.read(&mut first)).await
            } else {
                tokio::time::timeout_at(at.into(), reader.read_buf(&mut partial)).await
            }
        };
        let read = tokio::select! {
            read = read => read,
            () = ticket.evicted(), if !allocated => {
                tracing::debug!(client = %from.client, "evicting stream connection");
                break;
            }
        };
        let n = match read {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => {
                streaming = n == room;
                n
            }
            Err(_) => {
                // The deadline was computed before the wait; the allocation may have gone.
                let allocated = worker.server.borrow().has_allocation(&from);
                let limits = worker.stream_timeouts.get();
                match deadline.expired(&limits, allocated, Instant::now()) {
                    Some(why) => {
                        worker.stats.stream_timed_out(why);
                        tracing::debug!(client = %from.client, reason = why.as_str(), "closing stream connection");
                        break;
                    }
                    None => continue,
                }
            }
        };
        let now = Instant::now();
        let taken = if partial.is_empty() {
            let taken = worker.take_frames(from, &first[..n], now);
            if let Some((consumed, _)) = taken {
                partial.extend_from_slice(&first[consumed..n]);
            }
            taken
        } else {
            let taken = worker.take_frames(from, &partial, now);
            if let Some((consumed, _)) = taken {
                partial.drain(..consumed);
            }
            taken
        };
        let Some((_, frames)) = taken else { break };
        if let Some(connection) = out.joined() {
            joined = Some((connection, std::mem::take(&mut partial)));
            break;
        }
        if partial.is_empty() {
            // Given back: an idle connection holds no buffer.
            partial = Vec::new();
        }
        deadline.on_read(now, frames, !partial.is_empty());
    }

    worker.flush_to_peers();
    worker.streams.borrow_mut().remove(&from);
    worker.server.borrow_mut().handle_disconnect(from);
    worker.drain(Instant::now());
    out.close();
    let writer = writer.await.ok().flatten();
    if let Some((connection, leftover)) = joined {
        match writer {
            Some(writer) => {
                // A data connection holds its allocation's traffic: not to be evicted.
                ticket.prove();
                tcp_relay::carry(&worker, connection, reader, writer, leftover).await;
            }
            None => worker.close_peer(connection),
        }
    }
    worker.stats.stream_closed();
    worker
        .closed_since_trim
        .set(worker.closed_since_trim.get() + 1);
}

/// Writes what the worker queues for one stream client.
///
/// Over TLS every frame goes out in a TLS record of its own, as coturn sends them: some
/// clients (coturn's own `turnutils_uclient` among them) read one record per message and
/// leave a second message in the same record unread until more data arrives.
///
/// Once the stream is joined to a peer connection and closed for STUN, what was pending is
/// written and the writer is handed back for [`tcp_relay::carry`].
async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, out: Rc<StreamOut>) -> Option<W> {
    // Buffers swapped back and forth: steady-state writing allocates nothing. They start
    // empty, as most connections never carry more than a few responses.
    let mut sending = Vec::new();
    let mut ends = Vec::new();
    loop {
        if out.pending.borrow().is_empty() {
            if out.closed.get() {
                break;
            }
            out.wake.notified().await;
            continue;
        }
        std::mem::swap(&mut *out.pending.borrow_mut(), &mut sending);
        std::mem::swap(&mut *out.frame_ends.borrow_mut(), &mut ends);
        let written = if out.record_per_frame {
            write_frames(&mut writer, &sending, &ends).await
        } else {
            writer.write_all(&sending).await
        };
        if written.is_err() || writer.flush().await.is_err() {
            out.closed.set(true);
            let _ = writer.shutdown().await;
            return None;
        }
        sending.clear();
        ends.clear();
        if sending.capacity() > READ_CHUNK {
            // A burst is over: its buffer goes back rather than stay with an idle client.
            sending = Vec::new();
        }
    }
    if out.joined.get().is_some() {
        return Some(writer);
    }
    let _ = writer.shutdown().await;
    None
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    ends: &[usize],
) -> io::Result<()> {
    let mut start = 0;
    for &end in ends {
        writer.write_all(&bytes[start..end]).await?;
        start = end;
    }
    Ok(())
}
