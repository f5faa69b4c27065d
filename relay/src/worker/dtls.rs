//! DTLS client sessions of a worker: the UDP listener on `tls-listening-port`, the
//! stateless cookie exchange in front of it, one task per session for its handshake and its
//! records, and what the core sends a DTLS client.
//!
//! A session is keyed by the client's 5-tuple in [`Worker::dtls`] and admitted like a TCP/TLS
//! connection ([`crate::stream_admission`]: the per-address and total caps, eviction of the
//! oldest without an allocation), once its ClientHello carries a valid cookie and the source
//! has a token of its `rate-limit` budget left. Its handshake must finish within
//! [`HANDSHAKE_TIMEOUT`]; after it, the session closes like a stream connection when idle
//! ([`crate::stream_deadline`]). Each record carries one STUN message or ChannelData frame,
//! both ways.

#![deny(unsafe_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};

use openssl::ssl::{ErrorCode, SslStream};

use super::*;
use crate::dtls::{self, DtlsContext, Listened};
use crate::stats::DtlsHandshake;
use crate::stream_deadline::Expiry;

/// A DTLS client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a handshake checks whether its last flight is due for retransmission.
const RETRANSMIT_CHECK: std::time::Duration = std::time::Duration::from_millis(250);
/// Datagrams held for a session that has not read them yet; more are dropped, as a full
/// socket buffer would drop them.
const MAX_QUEUED: usize = 64;
/// The largest datagram read: a DTLS record holds at most 2^14 bytes of plaintext, plus its
/// header, MAC and padding.
const MAX_DATAGRAM: usize = 16 * 1024 + 512;
/// The largest plaintext of one record.
const MAX_RECORD: usize = 16 * 1024;
/// A DTLSPlaintext header is 13 bytes; a handshake header (type first) follows it.
const RECORD_HEADER: usize = 13;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// Where a ClientHello's random starts: after the record header, the handshake header (12
/// bytes) and the client version (2).
const CLIENT_RANDOM: usize = RECORD_HEADER + 12 + 2;

/// The datagrams of one client, as OpenSSL reads and writes them: reads take what the
/// listener queued, writes go out of the listener's socket at once.
struct Datagrams {
    socket: Rc<UdpSocket>,
    client: SocketAddr,
    /// The local address the client sent to, when the listener is a wildcard one: what goes
    /// back leaves from there (see `crate::mmsg`), not from the kernel's choice.
    source: Option<SocketAddr>,
    inbound: Rc<RefCell<VecDeque<Vec<u8>>>>,
    stats: Arc<RuntimeCounters>,
    /// Datagrams OpenSSL has written: after the cookie exchange, whether it answered.
    written: usize,
}

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(datagram) = self.inbound.borrow_mut().pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        // OpenSSL reads with room for the largest record; a longer datagram is cut and then
        // fails its MAC, as it would have on a real datagram socket.
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        Ok(n)
    }
}

impl Write for Datagrams {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A datagram the kernel will not take is lost, as on any UDP path: DTLS retransmits
        // handshake flights, and what the core sends is as unreliable over UDP.
        if mmsg::send_one(&self.socket, self.source, self.client, buf).is_err() {
            self.stats.send_failed();
        }
        self.written += 1;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One DTLS client.
pub(super) struct DtlsSession {
    stream: RefCell<SslStream<Datagrams>>,
    inbound: Rc<RefCell<VecDeque<Vec<u8>>>>,
    wake: Notify,
    established: Cell<bool>,
    /// A new handshake from the same address took its place ([`first_datagram`]): its task
    /// ends without touching the table or the core, which already let it go.
    replaced: Cell<bool>,
}

impl DtlsSession {
    /// Whether `datagram` starts a new association (RFC 6347 §4.2.8): an unencrypted
    /// ClientHello (epoch 0) to an established session, other than a late copy of the one
    /// that started it (same client random). A client that restarted behind the same address
    /// and port sends one.
    fn is_new_client_hello(&self, datagram: &[u8]) -> bool {
        if !self.established.get()
            || datagram.len() < CLIENT_RANDOM + 32
            || datagram[0] != CONTENT_HANDSHAKE
            || datagram[3..5] != [0, 0]
            || datagram[RECORD_HEADER] != CLIENT_HELLO
        {
            return false;
        }
        let mut random = [0u8; 32];
        let Ok(stream) = self.stream.try_borrow() else {
            return false;
        };
        stream.ssl().client_random(&mut random) != 32
            || random[..] != datagram[CLIENT_RANDOM..CLIENT_RANDOM + 32]
    }

    /// A datagram from the client, for its task.
    fn deliver(&self, datagram: &[u8]) {
        let mut inbound = self.inbound.borrow_mut();
        if inbound.len() < MAX_QUEUED {
            inbound.push_back(datagram.to_vec());
        }
        drop(inbound);
        self.wake.notify_one();
    }

    /// Sends one STUN message or ChannelData frame in a record of its own. `false` if the
    /// session cannot take it (handshake not done, or busy: never while the core runs).
    pub(super) fn send(&self, bytes: &[u8]) -> bool {
        if !self.established.get() {
            return false;
        }
        let Ok(mut stream) = self.stream.try_borrow_mut() else {
            return false;
        };
        stream.ssl_write(bytes).is_ok()
    }
}

/// Serves one DTLS listener socket until it fails.
pub(super) async fn dtls_listener(
    worker: Rc<Worker>,
    socket: Rc<UdpSocket>,
    context: Arc<DtlsContext>,
) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(error) => {
            tracing::error!(%error, "DTLS listener has no address");
            return;
        }
    };
    // On a wildcard listener each datagram says which local address it was sent to: the
    // server side of the client's 5-tuple, and where the session answers from.
    let wildcard = local.ip().is_unspecified();
    let mut batch = RecvBatch::new(0);
    loop {
        if socket.readable().await.is_err() {
            tracing::error!(%local, "DTLS listener failed");
            return;
        }
        let mut handled = 0;
        loop {
            // Errors queued by ICMP for an earlier send say nothing about this socket: read on.
            let (n, drained) = batch.recv(&socket, 0, BATCH, wildcard).unwrap_or_default();
            for i in 0..n {
                let server = batch.destination(i, local);
                let Some((client, len, slot)) = batch.get_mut(i) else {
                    continue;
                };
                let from = FiveTuple {
                    transport: Transport::Dtls,
                    client,
                    server,
                };
                let source = wildcard.then_some(server);
                let datagram = &slot[..len.min(MAX_DATAGRAM)];
                let session = worker.dtls.borrow().get(&from).cloned();
                match session {
                    Some(old) if old.is_new_client_hello(datagram) => first_datagram(
                        &worker,
                        &socket,
                        &context,
                        from,
                        source,
                        datagram,
                        Some(old),
                    ),
                    Some(session) => session.deliver(datagram),
                    None => {
                        first_datagram(&worker, &socket, &context, from, source, datagram, None)
                    }
                }
            }
            handled += n.max(1);
            if drained {
                break;
            }
            if handled >= BUDGET {
                tokio::task::yield_now().await;
                handled = 0;
            }
        }
    }
}

/// A datagram from a client without a session: a ClientHello goes through the cookie
/// exchange, and one with a valid cookie starts a session; anything else is dropped.
///
/// With `replacing`, the client's established session: a new handshake that gets past the
/// cookie, the rate limit and the admission ends it (its allocation with it), as RFC 6347
/// §4.2.8 asks; until then it goes on.
fn first_datagram(
    worker: &Rc<Worker>,
    socket: &Rc<UdpSocket>,
    context: &DtlsContext,
    from: FiveTuple,
    source: Option<SocketAddr>,
    datagram: &[u8],
    replacing: Option<Rc<DtlsSession>>,
) {
    if datagram.len() <= RECORD_HEADER
        || datagram[0] != CONTENT_HANDSHAKE
        || datagram[RECORD_HEADER] != CLIENT_HELLO
    {
        worker.counters.malformed();
        return;
    }
    let inbound = Rc::new(RefCell::new(VecDeque::from([datagram.to_vec()])));
    let io = Datagrams {
        socket: Rc::clone(socket),
        client: from.client,
        source,
        inbound: Rc::clone(&inbound),
        stats: Arc::clone(&worker.stats),
        written: 0,
    };
    let mut stream = match context.session(from.client, io) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot make a DTLS session");
            return;
        }
    };
    if dtls::listen(&mut stream) == Listened::Stateless {
        if stream.get_ref().written > 0 {
            worker.stats.dtls_handshake(DtlsHandshake::CookieSent);
        } else {
            // Not a ClientHello OpenSSL could answer.
            worker.counters.malformed();
        }
        return;
    }
    // The source has proven it receives at its address: now it costs a handshake.
    let now = Instant::now();
    if !worker
        .server
        .borrow_mut()
        .allow_handshake(from.client.ip(), now)
    {
        return;
    }
    let ticket = match worker.admission.admit(from.client.ip(), now) {
        Ok(entry) => {
            if let Some(count) = entry.evictions_to_log {
                tracing::warn!(
                    client = %from.client,
                    local = %from.server,
                    evicted = count,
                    "TCP/TLS/DTLS sessions full: evicting the oldest without an allocation \
                     (see icegate_relay_stream_evicted_total)"
                );
            }
            entry.ticket
        }
        Err(refused) => {
            stream::log_refusal(refused, from.client, from.server);
            return;
        }
    };
    if let Some(old) = replacing {
        old.replaced.set(true);
        old.established.set(false);
        old.wake.notify_one();
        worker.dtls.borrow_mut().remove(&from);
        // What it relayed goes before its allocation closes.
        worker.flush_to_peers();
        worker.server.borrow_mut().handle_disconnect(from);
        worker.drain(now);
        tracing::debug!(client = %from.client, "a new DTLS handshake replaces the session");
    }
    worker.stats.dtls_handshake(DtlsHandshake::Started);
    let session = Rc::new(DtlsSession {
        stream: RefCell::new(stream),
        inbound,
        wake: Notify::new(),
        established: Cell::new(false),
        replaced: Cell::new(false),
    });
    worker.dtls.borrow_mut().insert(from, Rc::clone(&session));
    worker.stats.dtls_sessions_add(1);
    tokio::task::spawn_local(serve_dtls(Rc::clone(worker), session, from, ticket));
}

/// Runs one session: its handshake, then its records, until it closes, times out or is
/// evicted; its allocation ends with it.
async fn serve_dtls(worker: Rc<Worker>, session: Rc<DtlsSession>, from: FiveTuple, ticket: Ticket) {
    if handshake(&worker, &session, &ticket, from.client).await {
        session.established.set(true);
        worker.stats.dtls_handshake(DtlsHandshake::Completed);
        serve_records(&worker, &session, from, &ticket).await;
        if !session.replaced.get() {
            // close_notify, so that the client knows at once.
            let _ = session.stream.borrow_mut().shutdown();
        }
    }
    session.established.set(false);
    if !session.replaced.get() {
        worker.flush_to_peers();
        worker.dtls.borrow_mut().remove(&from);
        worker.server.borrow_mut().handle_disconnect(from);
        worker.drain(Instant::now());
    }
    worker.stats.dtls_sessions_add(-1);
    worker
        .closed_since_trim
        .set(worker.closed_since_trim.get() + 1);
}

/// The handshake, within [`HANDSHAKE_TIMEOUT`] and unless evicted meanwhile.
async fn handshake(
    worker: &Worker,
    session: &DtlsSession,
    ticket: &Ticket,
    client: SocketAddr,
) -> bool {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let result = session.stream.borrow_mut().accept();
        match result {
            Ok(()) => return true,
            Err(e) if e.code() == ErrorCode::WANT_READ => {}
            Err(error) => {
                worker.stats.dtls_handshake(DtlsHandshake::Failed);
                tracing::debug!(%error, %client, "DTLS handshake failed");
                return false;
            }
        }
        let check = deadline.min(tokio::time::Instant::now() + RETRANSMIT_CHECK);
        tokio::select! {
            () = session.wake.notified() => {}
            () = tokio::time::sleep_until(check) => {
                if tokio::time::Instant::now() >= deadline {
                    worker.stats.dtls_handshake(DtlsHandshake::TimedOut);
                    tracing::debug!(%client, "DTLS handshake timed out");
                    return false;
                }
                dtls::handle_timeout(&mut session.stream.borrow_mut());
            }
            () = ticket.evicted() => return false,
        }
    }
}

/// Hands the records OpenSSL has for the session to the core, each one STUN message or
/// ChannelData frame; returns how many, or `None` once the session has ended (close_notify,
/// a fatal alert).
///
/// They are decrypted into the worker's one record buffer, rather than one per session (an
/// idle session would hold 16 KiB): nothing the core does reads another session meanwhile,
/// and no `.await` comes between.
fn read_records(
    worker: &Rc<Worker>,
    session: &DtlsSession,
    from: FiveTuple,
    now: Instant,
) -> Option<usize> {
    let mut record = worker.dtls_record.borrow_mut();
    let record = record.get_or_insert_with(|| vec![0u8; MAX_RECORD].into_boxed_slice());
    let mut records = 0;
    loop {
        // Not borrowed while the core runs: what it answers is written to this session.
        let read = session.stream.borrow_mut().ssl_read(record);
        match read {
            Ok(0) => return None,
            Ok(n) => {
                worker.on_client_packet(from, &record[..n], now);
                records += 1;
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => return Some(records),
            Err(_) => return None,
        }
    }
}

/// Hands the client's records to the core until the session ends.
async fn serve_records(
    worker: &Rc<Worker>,
    session: &DtlsSession,
    from: FiveTuple,
    ticket: &Ticket,
) {
    let mut deadline = StreamDeadline::new(Instant::now());
    loop {
        if session.replaced.get() {
            return;
        }
        let now = Instant::now();
        let Some(records) = read_records(worker, session, from, now) else {
            return;
        };
        worker.flush_to_peers();
        if records > 0 {
            deadline.on_read(now, records, false);
        }
        let allocated = worker.server.borrow().has_allocation(&from);
        ticket.set_allocated(allocated);
        let (at, _) = deadline.deadline(&worker.stream_timeouts.get(), allocated);
        tokio::select! {
            () = session.wake.notified() => {}
            () = tokio::time::sleep_until(at.into()) => {
                let allocated = worker.server.borrow().has_allocation(&from);
                let limits = worker.stream_timeouts.get();
                if let Some(why) = deadline.expired(&limits, allocated, Instant::now()) {
                    debug_assert_eq!(why, Expiry::Idle);
                    worker.stats.stream_timed_out(why);
                    tracing::debug!(client = %from.client, "closing idle DTLS session");
                    return;
                }
            }
            () = ticket.evicted(), if !allocated => {
                tracing::debug!(client = %from.client, "evicting DTLS session");
                return;
            }
        }
    }
}
