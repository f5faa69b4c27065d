//! TCP allocations (RFC 6062) in a worker: the relayed address's listener, connecting out
//! for Connect, parking peer connections until a ConnectionBind takes them
//! ([`crate::peer_streams`]), and carrying the bytes between a data connection and its peer.
//!
//! Bytes are carried with one buffer per direction, allocated once per connection (and grown
//! at most twice, for a bulk transfer); every
//! peer connection takes a place in the descriptor budget
//! ([`crate::stream_admission::SharedAdmission::admit_peer`]).

#![deny(unsafe_code)]

use super::*;
use crate::peer_streams::Parked;
use icegate_relay_proto::metrics::Direction;
use tokio::net::{TcpSocket, TcpStream};

/// How long the relay tries to connect to a peer for a Connect before answering 447.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The buffer each direction of a carried connection starts with: one page, enough for the
/// media and signalling most TCP relays carry.
const CARRY_FIRST: usize = 4 * 1024;
/// What it grows to, doubling each time a read fills it (a bulk transfer).
const CARRY_MAX: usize = 16 * 1024;

impl Worker {
    /// Opens the TCP listener of a TCP allocation's relay and accepts peers on it until the
    /// relay is closed.
    pub(super) fn open_tcp_relay(self: &Rc<Self>, relay: RelayId, addr: SocketAddr) -> bool {
        let listener = sockets::tcp_relay_listener(addr).and_then(TcpListener::from_std);
        let listener = match listener {
            Ok(l) => l,
            Err(error) => {
                // Another process may hold the port; the core tries another one.
                tracing::debug!(%error, %addr, "cannot listen on a TCP relayed address");
                return false;
            }
        };
        let task = tokio::task::spawn_local(accept_peers(Rc::clone(self), relay, listener));
        self.tcp_relays.borrow_mut().insert(relay, task);
        true
    }

    /// Closes a TCP relay's listener; false if `relay` is not one.
    pub(super) fn close_tcp_relay(&self, relay: RelayId) -> bool {
        match self.tcp_relays.borrow_mut().remove(&relay) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Connects to `peer` from the relayed address `from` for a Connect, in a task of its own.
    pub(super) fn connect_peer(
        self: &Rc<Self>,
        connection: u32,
        relay: RelayId,
        from: SocketAddr,
        peer: SocketAddr,
    ) {
        let worker = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let connected = match worker.admission.admit_peer(Instant::now()) {
                Ok(ticket) => match connect(from, peer).await {
                    Ok(stream) => Some((stream, ticket)),
                    Err(error) => {
                        tracing::debug!(%error, %from, %peer, "Connect failed (447)");
                        None
                    }
                },
                Err(refused) => {
                    log_peer_refusal(refused, peer);
                    None
                }
            };
            let now = Instant::now();
            let keep = worker.server.borrow_mut().peer_connected(
                relay,
                connection,
                connected.is_some(),
                now,
            );
            if let (true, Some((stream, ticket))) = (keep, connected) {
                worker.park(connection, stream, ticket);
            }
            worker.drain(now);
        });
    }

    /// Parks a peer connection for the ConnectionBind that will take it, on any worker.
    fn park(&self, connection: u32, stream: TcpStream, ticket: Ticket) {
        match stream.into_std() {
            Ok(stream) => self
                .peer_streams
                .park(connection, Parked { stream, ticket }),
            Err(error) => {
                tracing::debug!(%error, "cannot hand a peer connection over");
                self.server.borrow_mut().connection_closed(connection);
            }
        }
    }

    /// The stream `client` is to carry peer connection `connection` once its ConnectionBind
    /// answer is out; if it has gone meanwhile, so does the peer connection.
    pub(super) fn join(&self, client: FiveTuple, connection: u32) {
        let joined = self
            .streams
            .borrow()
            .get(&client)
            .is_some_and(|out| out.join(connection));
        if !joined {
            self.close_peer(connection);
        }
    }

    /// Closes a peer connection wherever it is, and forgets its id.
    pub(super) fn close_peer(&self, connection: u32) {
        self.peer_streams.close(connection);
        self.server.borrow_mut().connection_closed(connection);
    }
}

async fn connect(from: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(sockets::tcp_relay_socket(from)?);
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Accepts the peers that connect to a TCP relayed address: the core says which may.
async fn accept_peers(worker: Rc<Worker>, relay: RelayId, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Usually out of file descriptors; retrying at once would spin.
                tracing::debug!(%error, "accept on a TCP relayed address failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = Instant::now();
        let ticket = match worker.admission.admit_peer(now) {
            Ok(ticket) => ticket,
            Err(refused) => {
                log_peer_refusal(refused, peer);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = worker.server.borrow_mut().peer_connection(relay, peer, now);
        if let Some(connection) = connection {
            worker.park(connection, stream, ticket);
        }
        worker.drain(now);
    }
}

fn log_peer_refusal(refused: Refused, peer: SocketAddr) {
    if let Some(count) = refused.log {
        tracing::warn!(
            %peer,
            refused = count,
            "refusing TCP peer connections: the descriptor budget is spent \
             (see icegate_relay_stream_refused_total)"
        );
    }
}

/// Carries the bytes of peer connection `connection` over a client's data connection until
/// either side has closed both ways, or an error, or the allocation ends.
pub(super) async fn carry<R, W>(
    worker: &Rc<Worker>,
    connection: u32,
    client_read: R,
    client_write: W,
    leftover: Vec<u8>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let close = Arc::new(Notify::new());
    let parked = worker.peer_streams.take(connection, Arc::clone(&close));
    let peer = parked.and_then(|Parked { stream, ticket }| {
        let stream = TcpStream::from_std(stream).ok()?;
        Some((stream, ticket))
    });
    if let Some((peer, _ticket)) = peer {
        let (peer_read, mut peer_write) = peer.into_split();
        let counters = &worker.counters;
        let to_peer = async {
            // Whatever the client sent right behind its ConnectionBind.
            if !leftover.is_empty() {
                peer_write.write_all(&leftover).await?;
                counters.relayed(Direction::ClientToPeer, leftover.len());
            }
            pump(client_read, peer_write, counters, Direction::ClientToPeer).await
        };
        let to_client = pump(peer_read, client_write, counters, Direction::PeerToClient);
        tokio::select! {
            _ = async { tokio::try_join!(to_peer, to_client) } => {}
            () = close.notified() => {}
        }
    }
    worker.peer_streams.finished(connection);
    worker.server.borrow_mut().connection_closed(connection);
}

/// Copies one direction until end of stream, which it passes on (a half-close).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    counters: &Counters,
    direction: Direction,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CARRY_FIRST];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        counters.relayed(direction, n);
        if n == buf.len() && buf.len() < CARRY_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}
