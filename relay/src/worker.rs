//! One worker: a thread with its own single-threaded tokio runtime that owns a sans-IO
//! [`Server`], its share of the SO_REUSEPORT listeners and the relay sockets of its allocations.
//!
//! The kernel hashes each client's 4-tuple to one worker's listener, and the relay sockets of
//! that client's allocation are opened by the same worker, so both directions of an allocation
//! are handled on one thread with no lock. Tasks of a worker never run concurrently; state is in
//! `RefCell`s that are never borrowed across an `.await`.
//!
//! Priorities inside a worker are those of tokio's scheduler; every read loop handles at most
//! [`BUDGET`] datagrams before yielding, so one busy socket cannot starve the others.
//!
//! A TCP allocation (RFC 6062, [`tcp_relay`]) listens on its relayed address in a task of its
//! own; its peer connections are carried by the worker that took the client's ConnectionBind,
//! which the kernel may have handed any worker.
//!
//! UDP data moves in batches ([`crate::mmsg`]): listeners and relay sockets are read with
//! `recvmmsg`. The relay sockets sit in one epoll set of the worker's ([`RelaySet`]), read by
//! one task per round rather than one task per socket, and the datagrams a round relays to
//! UDP clients leave with one `sendmmsg` per listener at the end of the round. Towards peers,
//! consecutive datagrams for one relay socket (a client's burst) leave in one `sendmmsg`.
//!
//! A wildcard listener (`0.0.0.0`, `::`) serves every address of the host: each datagram it
//! reads says which one it was sent to, which becomes the server side of the client's
//! [`FiveTuple`], and everything for that client (answers, relayed data) leaves the listener
//! from that address (see [`crate::mmsg`]). Listeners bound to one address need none of it.

use std::cell::{Cell, RefCell};

use icegate_common::collections::FastMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use icegate_relay_proto::metrics::Counters;
use icegate_relay_proto::wire::{self, PAYLOAD_OFFSET};
use icegate_relay_proto::{
    ClientOutcome, Command, FiveTuple, RelayId, Server, ServerConfig, Transport,
};
use nix::sys::epoll::EpollEvent;
use stun_types::message::TransactionId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::framing::{self, Frame};
use crate::mmsg::{self, RecvBatch, SendBatch, BATCH};
use crate::peer_streams::PeerStreams;
use crate::relay_set::{self, RelaySet};
use crate::sockets;
use crate::stats::RuntimeCounters;
use crate::stream_admission::{Refused, SharedAdmission, Ticket};
use crate::stream_deadline::{StreamDeadline, StreamTimeouts};

mod dtls;
mod stream;
use dtls::{dtls_listener, DtlsSession};
mod tcp_relay;
use stream::{accept_loop, StreamOut};

/// Datagrams one read loop handles before yielding to the worker's other tasks.
const BUDGET: usize = 64;
/// Readable relay sockets taken from the epoll set at a time.
const RELAY_EVENTS: usize = 256;
/// Added to the longest allocation lifetime to get the idle limit of a TCP/TLS connection
/// with an allocation:
/// a client silent for longer than any allocation can live without a Refresh has nothing left
/// on the relay.
const STREAM_IDLE_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);
/// After this many TCP/TLS connections or DTLS sessions have closed, the worker's heartbeat asks the
/// allocator to give free memory back to the system ([`trim_heap`]).
const TRIM_AFTER_CLOSES: usize = 64;
/// How often a worker's heartbeat task beats (see [`RuntimeCounters::heartbeats`]).
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the main thread tells every worker.
#[derive(Debug, Clone)]
pub struct Control {
    /// The current configuration.
    pub config: Arc<ServerConfig>,
    /// Refuse new allocations (SIGTERM).
    pub draining: bool,
    /// The deadlines of TCP/TLS connections (`stream-frame-timeout`, `stream-idle-timeout`,
    /// and [`stream_idle`] of `config`), read each time a connection sets its deadline.
    pub stream_timeouts: StreamTimeouts,
}

/// Everything a worker starts with. Sockets are bound by the main thread, before privileges
/// are dropped.
pub struct WorkerSetup {
    /// Index, for the thread name.
    pub index: usize,
    /// The worker's protocol core.
    pub server: Server,
    /// UDP listeners.
    pub udp: Vec<std::net::UdpSocket>,
    /// TCP listeners.
    pub tcp: Vec<std::net::TcpListener>,
    /// TLS listeners, with the acceptor configuration.
    pub tls: Vec<std::net::TcpListener>,
    /// TLS server configuration, when TLS listeners exist.
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
    /// DTLS listeners (UDP on the TLS port).
    pub dtls: Vec<std::net::UdpSocket>,
    /// DTLS server context, when DTLS listeners exist.
    pub dtls_context: Option<Arc<crate::dtls::DtlsContext>>,
    /// Configuration updates and draining.
    pub control: watch::Receiver<Control>,
    /// The core's counters (the same shard the [`Server`] was made with).
    pub counters: Arc<Counters>,
    /// The runtime's own counters (send failures, connections).
    pub stats: Arc<RuntimeCounters>,
    /// Admission of TCP/TLS connections, shared by all workers.
    pub admission: Arc<SharedAdmission>,
    /// TCP allocations' peer connections on their way to a data connection, shared by all
    /// workers.
    pub peer_streams: Arc<PeerStreams>,
}

/// Starts a worker thread.
pub fn spawn(setup: WorkerSetup) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("relay-worker-{}", setup.index))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(error) => {
                    tracing::error!(%error, "worker runtime failed to start");
                    std::process::exit(1);
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(setup));
        })
}

/// The state of one worker, shared by its tasks.
struct Worker {
    server: RefCell<Server>,
    udp: Vec<(SocketAddr, Rc<UdpSocket>)>,
    /// The relay sockets of this worker's allocations.
    relays: RelaySet,
    streams: RefCell<FastMap<FiveTuple, Rc<StreamOut>>>,
    dtls: RefCell<FastMap<FiveTuple, Rc<DtlsSession>>>,
    /// Where DTLS records are decrypted, for one session at a time; made at the first one.
    dtls_record: RefCell<Option<Box<[u8]>>>,
    /// One receive batch for the whole worker: its tasks never run at once. Room for a
    /// ChannelData or Data indication header is left in front of each datagram, so that a
    /// relay socket's datagram is framed for its client in place.
    recv: RefCell<RecvBatch>,
    /// Relayed datagrams for UDP clients, one batch per listener (as `udp`), sent at the end
    /// of each round of [`relay_loop`].
    to_clients: Vec<RefCell<SendBatch>>,
    /// Datagrams for peers from the relay that sent the last one, queued while a batch of
    /// client packets keeps naming that relay (a burst of one stream), so that they leave in
    /// one `sendmmsg`.
    to_peers: RefCell<PeerSends>,
    timer: Notify,
    /// The deadlines of TCP/TLS connections, as the last [`Control`] said: a copy, so that
    /// setting a deadline takes no lock.
    stream_timeouts: Cell<StreamTimeouts>,
    admission: Arc<SharedAdmission>,
    peer_streams: Arc<PeerStreams>,
    /// The listeners of this worker's TCP allocations, by the tasks that accept on them.
    tcp_relays: RefCell<FastMap<RelayId, tokio::task::JoinHandle<()>>>,
    /// TCP/TLS connections and DTLS sessions closed since the heap was last trimmed.
    closed_since_trim: Cell<usize>,
    counters: Arc<Counters>,
    stats: Arc<RuntimeCounters>,
}

/// Datagrams queued for peers, all from one relay socket.
#[derive(Default)]
struct PeerSends {
    relay: Option<RelayId>,
    batch: SendBatch,
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        server,
        udp,
        tcp,
        tls,
        tls_config,
        dtls,
        dtls_context,
        control,
        counters,
        stats,
        admission,
        peer_streams,
    } = setup;
    let mut udp_sockets = Vec::new();
    for socket in udp {
        let addr = match socket.local_addr() {
            Ok(a) => a,
            Err(error) => {
                tracing::error!(%error, "worker {index}: UDP listener has no address");
                continue;
            }
        };
        match UdpSocket::from_std(socket) {
            Ok(s) => udp_sockets.push((addr, Rc::new(s))),
            Err(error) => {
                tracing::error!(%error, %addr, "worker {index}: cannot register UDP listener")
            }
        }
    }
    let relays = match RelaySet::new() {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "worker {index}: cannot create the relay epoll set");
            return;
        }
    };
    let worker = Rc::new(Worker {
        counters,
        server: RefCell::new(server),
        relays,
        streams: RefCell::new(FastMap::default()),
        dtls: RefCell::new(FastMap::default()),
        dtls_record: RefCell::new(None),
        recv: RefCell::new(RecvBatch::new(PAYLOAD_OFFSET)),
        to_clients: (0..udp_sockets.len())
            .map(|_| RefCell::new(SendBatch::default()))
            .collect(),
        to_peers: RefCell::new(PeerSends::default()),
        udp: udp_sockets,
        timer: Notify::new(),
        stream_timeouts: Cell::new(control.borrow().stream_timeouts),
        admission,
        peer_streams,
        tcp_relays: RefCell::new(FastMap::default()),
        closed_since_trim: Cell::new(0),
        stats,
    });

    for i in 0..worker.udp.len() {
        tokio::task::spawn_local(udp_listener(Rc::clone(&worker), i));
    }
    tokio::task::spawn_local(relay_loop(Rc::clone(&worker)));
    for listener in tcp {
        spawn_acceptor(&worker, listener, None);
    }
    if let Some(config) = tls_config {
        let acceptor = TlsAcceptor::from(config);
        for listener in tls {
            spawn_acceptor(&worker, listener, Some(acceptor.clone()));
        }
    }
    if let Some(context) = dtls_context {
        for socket in dtls {
            match UdpSocket::from_std(socket) {
                Ok(s) => {
                    let listener =
                        dtls_listener(Rc::clone(&worker), Rc::new(s), Arc::clone(&context));
                    tokio::task::spawn_local(listener);
                }
                Err(error) => {
                    tracing::error!(%error, "worker {index}: cannot register DTLS listener")
                }
            }
        }
    }
    tokio::task::spawn_local(control_loop(Rc::clone(&worker), control));
    tokio::task::spawn_local(heartbeat(Rc::clone(&worker)));
    timer_loop(worker).await;
}

fn spawn_acceptor(worker: &Rc<Worker>, listener: std::net::TcpListener, tls: Option<TlsAcceptor>) {
    match TcpListener::from_std(listener) {
        Ok(l) => {
            tokio::task::spawn_local(accept_loop(Rc::clone(worker), l, tls));
        }
        Err(error) => tracing::error!(%error, "cannot register TCP listener"),
    }
}

/// Beats every [`HEARTBEAT`] while the worker's event loop runs its tasks, and gives memory
/// back once many stream connections have closed.
async fn heartbeat(worker: Rc<Worker>) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    loop {
        ticks.tick().await;
        worker.stats.beat();
        if worker.closed_since_trim.get() >= TRIM_AFTER_CLOSES {
            worker.closed_since_trim.set(0);
            trim_heap();
        }
    }
}

/// Returns the allocator's free pages to the system. glibc keeps what a burst of connections
/// freed (their tasks and buffers) in the worker thread's arena, where it counts as the
/// relay's memory until reused; after a flood of connections has gone, it should not.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reorganises the allocator's own free lists and has no
    // preconditions; it locks each arena while it works on it.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn control_loop(worker: Rc<Worker>, mut control: watch::Receiver<Control>) {
    while control.changed().await.is_ok() {
        let c = control.borrow_and_update().clone();
        // Connections take them up from the next deadline they set (their next read, or when
        // the one they wait for passes and is checked against these).
        worker.stream_timeouts.set(c.stream_timeouts);
        let mut server = worker.server.borrow_mut();
        server.set_config(c.config, Instant::now());
        server.set_draining(c.draining);
    }
}

/// How long a TCP/TLS connection with an allocation may stay silent under `config`.
pub fn stream_idle(config: &ServerConfig) -> std::time::Duration {
    config.timers.max_lifetime + STREAM_IDLE_MARGIN
}

async fn timer_loop(worker: Rc<Worker>) {
    loop {
        let deadline = worker.server.borrow().poll_timeout();
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = worker.timer.notified() => continue,
        }
        let now = Instant::now();
        worker.server.borrow_mut().handle_timeout(now);
        worker.drain(now);
    }
}

async fn udp_listener(worker: Rc<Worker>, index: usize) {
    let (local, socket) = worker.udp[index].clone();
    // Its datagrams say which of the host's addresses they were sent to (IP_PKTINFO).
    let wildcard = local.ip().is_unspecified();
    loop {
        if let Err(error) = socket.readable().await {
            tracing::error!(%error, %local, "UDP listener failed");
            return;
        }
        let mut drained = false;
        for _ in 0..BUDGET.div_ceil(BATCH) {
            let mut batch = worker.recv.borrow_mut();
            let n = match batch.recv(&socket, 0, BATCH, wildcard) {
                Ok((n, empty)) => {
                    drained = empty;
                    n
                }
                // Errors queued by ICMP for an earlier send say nothing about this socket.
                Err(_) => continue,
            };
            // One clock reading per batch: its datagrams arrived together.
            let now = Instant::now();
            for i in 0..n {
                // On a wildcard listener the address the client sent to is the server side
                // of its 5-tuple, and what answers it or is relayed to it leaves from there.
                let server = batch.destination(i, local);
                let Some((client, len, slot)) = batch.get_mut(i) else {
                    continue;
                };
                let from = FiveTuple {
                    transport: Transport::Udp,
                    client,
                    server,
                };
                let _ = worker.on_client_packet(from, &slot[..len], now);
            }
            worker.flush_to_peers();
            if drained {
                break;
            }
        }
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// Reads the relay sockets that have datagrams, a round at a time: the epoll set says which,
/// each is read with `recvmmsg`, and what goes to UDP clients leaves at the end of the round.
async fn relay_loop(worker: Rc<Worker>) {
    let mut events = vec![EpollEvent::empty(); RELAY_EVENTS];
    loop {
        let mut guard = match worker.relays.watcher().readable().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(%error, "relay epoll set failed");
                return;
            }
        };
        let mut handled = 0;
        let mut idle = false;
        while handled < BUDGET * 4 {
            let n = match worker.relays.ready(&mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::error!(%error, "relay epoll set failed");
                    return;
                }
            };
            let mut drained = n < events.len();
            // One clock reading per round: the datagrams of a round arrived together.
            let now = Instant::now();
            for event in &events[..n] {
                let (count, empty) = worker.read_relay(relay_set::relay_of(event), now);
                handled += count;
                drained &= empty;
            }
            worker.flush_to_clients();
            if drained {
                // Every readable socket was read empty. A datagram arriving since woke the
                // set again (the set signals tokio on each arrival), so waiting for the next
                // readiness edge loses nothing and saves asking the set once more.
                guard.clear_ready();
                idle = true;
                break;
            }
        }
        drop(guard);
        if !idle {
            // Busy sockets (level-triggered, still readable) wait while the others run.
            tokio::task::yield_now().await;
        }
    }
}

impl Worker {
    /// Hands the complete frames at the start of `bytes` to the core. Returns the bytes they
    /// took (padding included) and how many there were, or `None` when the stream holds
    /// something that is neither STUN nor ChannelData and cannot be resynchronised.
    fn take_frames(
        self: &Rc<Self>,
        from: FiveTuple,
        bytes: &[u8],
        now: Instant,
    ) -> Option<(usize, usize)> {
        let mut start = 0;
        let mut frames = 0;
        let result = loop {
            match framing::next_frame(&bytes[start..]) {
                Frame::Incomplete => break Some((start, frames)),
                Frame::Invalid => {
                    self.counters.malformed();
                    break None;
                }
                frame @ Frame::Complete { len, .. } => {
                    let handled = self.on_client_packet(from, &bytes[start..start + len], now);
                    start += frame.stream_len().unwrap_or(len);
                    frames += 1;
                    // After a ConnectionBind's answer, what follows is the peer's, unframed.
                    if handled && self.joined(from) {
                        break Some((start, frames));
                    }
                }
            }
        };
        self.flush_to_peers();
        result
    }

    /// A datagram or frame from a client; `now` may be shared by a batch read at once.
    /// Whether it was a request (or anything else the core handled rather than relayed).
    fn on_client_packet(self: &Rc<Self>, from: FiveTuple, packet: &[u8], now: Instant) -> bool {
        let outcome = self
            .server
            .borrow_mut()
            .handle_client_packet(from, packet, now);
        match outcome {
            ClientOutcome::Relay {
                relay,
                peer,
                payload,
            } => self.send_to_peer(relay, peer, &packet[payload]),
            ClientOutcome::Handled => {
                // What the core does next may close a relay: what went before goes first.
                self.flush_to_peers();
                self.drain(now);
                return true;
            }
            ClientOutcome::Dropped => {}
        }
        false
    }

    /// Whether stream `from` has become a TCP allocation's data connection.
    fn joined(&self, from: FiveTuple) -> bool {
        from.transport.is_stream()
            && self
                .streams
                .borrow()
                .get(&from)
                .is_some_and(|out| out.joined().is_some())
    }

    /// A datagram from a peer, at `PAYLOAD_OFFSET` in `buf`; `now` may be shared by a batch.
    fn on_peer_packet(
        &self,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        len: usize,
        now: Instant,
    ) {
        let Some(route) = self
            .server
            .borrow_mut()
            .handle_peer_packet(relay, peer, len, now)
        else {
            return;
        };
        let (start, end) = match route.channel {
            Some(channel) => {
                let start = wire::write_channel_header(buf, channel, len);
                let mut end = PAYLOAD_OFFSET + len;
                if route.client.transport.is_stream() {
                    let padding = wire::stream_padding(len);
                    buf[end..end + padding].fill(0);
                    end += padding;
                }
                (start, end)
            }
            None => wire::write_data_indication(buf, peer, len, TransactionId::generate()),
        };
        self.send_relayed(route.client, &buf[start..end]);
    }

    /// A relayed datagram for a client: queued for the next `sendmmsg` when it goes out of a
    /// UDP listener, written to the stream otherwise.
    fn send_relayed(&self, to: FiveTuple, bytes: &[u8]) {
        if to.transport != Transport::Udp {
            return self.send_to_client(to, bytes);
        }
        let Some((listener, source)) = self.listener(to.server) else {
            self.stats.send_failed();
            return;
        };
        let mut batch = self.to_clients[listener].borrow_mut();
        if batch.is_full() {
            let flushed = batch.flush(&self.udp[listener].1);
            self.stats.sends_failed(flushed.failed);
        }
        if !batch.push_from(source, to.client, bytes) {
            drop(batch);
            self.send_to_client(to, bytes);
        }
    }

    fn flush_to_clients(&self) {
        for (batch, (_, socket)) in self.to_clients.iter().zip(&self.udp) {
            let mut batch = batch.borrow_mut();
            if !batch.is_empty() {
                let flushed = batch.flush(socket);
                self.stats.sends_failed(flushed.failed);
            }
        }
    }

    /// Queues a datagram for `peer` from `relay`, sending what was queued for another relay
    /// first; [`Worker::flush_to_peers`] sends the rest at the end of the batch.
    fn send_to_peer(&self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        let mut pending = self.to_peers.borrow_mut();
        if pending.relay != Some(relay) || pending.batch.is_full() {
            self.send_pending(&mut pending);
            pending.relay = Some(relay);
        }
        if !pending.batch.push(peer, payload) {
            // Too large for a slot: after the ones queued before it, at once.
            self.send_pending(&mut pending);
            // A full socket buffer drops the datagram, as UDP does.
            if !matches!(self.relays.send_to(relay, payload, peer), Some(Ok(_))) {
                self.stats.send_failed();
            }
        }
    }

    /// Sends the datagrams queued for peers.
    fn flush_to_peers(&self) {
        self.send_pending(&mut self.to_peers.borrow_mut());
    }

    fn send_pending(&self, pending: &mut PeerSends) {
        if pending.batch.is_empty() {
            return;
        }
        let flushed = match pending.relay.and_then(|relay| self.relays.fd(relay)) {
            Some(fd) => pending.batch.flush_fd(fd),
            None => pending.batch.discard(),
        };
        self.stats.sends_failed(flushed.failed);
    }

    /// Reads one relay socket: up to [`BUDGET`] datagrams, relayed to its client. Returns how
    /// many, and whether the socket was read empty (if not, the set reports it again).
    fn read_relay(&self, relay: RelayId, now: Instant) -> (usize, bool) {
        let mut handled = 0;
        let mut empty = false;
        while handled < BUDGET {
            // Looked up each time: nothing here closes it, but it costs nothing to be sure.
            let Some(fd) = self.relays.fd(relay) else {
                empty = true;
                break;
            };
            let mut batch = self.recv.borrow_mut();
            let n = match batch.recv_fd(fd, PAYLOAD_OFFSET, BATCH) {
                Ok(n) => n,
                // An ICMP error for an earlier send: the next read gets the datagrams.
                Err(_) => {
                    handled += 1;
                    continue;
                }
            };
            for i in 0..n {
                if let Some((peer, len, slot)) = batch.get_mut(i) {
                    self.on_peer_packet(relay, peer, slot, len, now);
                }
            }
            handled += n;
            if n < BATCH {
                empty = true;
                break;
            }
        }
        (handled, empty)
    }

    /// The UDP listener that sends from `server` (the relay's side of a client's 5-tuple), and
    /// the source address to name in what it sends: the listener bound to `server` itself
    /// (none to name), else the wildcard listener of its family and port, which is told
    /// `server` so that the answer comes from the address the client sent to.
    fn listener(&self, server: SocketAddr) -> Option<(usize, Option<SocketAddr>)> {
        if let Some(i) = self.udp.iter().position(|(addr, _)| *addr == server) {
            return Some((i, None));
        }
        let i = self.udp.iter().position(|(addr, _)| {
            addr.ip().is_unspecified()
                && addr.is_ipv4() == server.is_ipv4()
                && addr.port() == server.port()
        })?;
        Some((i, Some(server)))
    }

    fn send_to_client(&self, to: FiveTuple, bytes: &[u8]) {
        if to.transport == Transport::Udp {
            let sent = self.listener(to.server).map(|(i, source)| {
                mmsg::send_one(&self.udp[i].1, source, to.client, bytes).is_ok()
            });
            if sent != Some(true) {
                self.stats.send_failed();
            }
            return;
        }
        if to.transport == Transport::Dtls {
            let session = self.dtls.borrow().get(&to).cloned();
            if !session.is_some_and(|s| s.send(bytes)) {
                self.stats.send_failed();
            }
            return;
        }
        let streams = self.streams.borrow();
        let pushed = streams.get(&to).is_some_and(|out| out.push(bytes));
        if !pushed {
            self.stats.send_failed();
        }
    }

    /// A datagram from the UDP listener bound to `from` (RFC 5780: another address or port
    /// of the relay's than the one the request reached); every worker has one of each.
    fn send_from(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let sent = self
            .listener(from)
            .map(|(i, source)| mmsg::send_one(&self.udp[i].1, source, to, bytes).is_ok());
        if sent != Some(true) {
            self.stats.send_failed();
        }
    }

    /// Carries out what the core asked for, then re-arms the timer.
    fn drain(self: &Rc<Self>, now: Instant) {
        loop {
            let command = self.server.borrow_mut().poll_command();
            let Some(command) = command else { break };
            match command {
                Command::SendToClient { to, data } => self.send_to_client(to, &data),
                Command::SendFrom { from, to, data } => self.send_from(from, to, &data),
                Command::BindRelay {
                    relay,
                    addr,
                    dont_fragment,
                    tcp,
                } => {
                    let ok = if tcp {
                        self.open_tcp_relay(relay, addr)
                    } else {
                        self.open_relay(relay, addr, dont_fragment)
                    };
                    self.server.borrow_mut().relay_bound(relay, ok, now);
                }
                Command::CloseRelay { relay } => self.close_relay(relay),
                Command::ConnectPeer {
                    connection,
                    relay,
                    from,
                    peer,
                } => self.connect_peer(connection, relay, from, peer),
                Command::JoinConnection { client, connection } => self.join(client, connection),
                Command::CloseConnection { connection } => self.close_peer(connection),
            }
        }
        self.timer.notify_one();
    }

    fn open_relay(&self, relay: RelayId, addr: SocketAddr, dont_fragment: bool) -> bool {
        let opened = sockets::relay_socket(addr, dont_fragment)
            .and_then(|socket| self.relays.insert(relay, socket));
        if let Err(error) = opened {
            // Another process may hold the port; the core tries another one.
            tracing::debug!(%error, %addr, "cannot bind relay socket");
            return false;
        }
        true
    }

    fn close_relay(&self, relay: RelayId) {
        if !self.close_tcp_relay(relay) {
            self.relays.remove(relay);
        }
    }
}
