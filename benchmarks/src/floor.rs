//! The floor: a bare UDP forwarder with TURN's socket layout and none of its protocol.
//!
//! Each worker thread owns one SO_REUSEPORT listener (as icegate-relay's workers do). A
//! client asks for a mapping with a 10-byte control datagram naming its peer; the worker
//! binds a fresh "relay" socket and answers with its address. From then on a datagram from
//! the client to the listener goes out of that relay socket to the peer, and a datagram
//! from the peer to the relay socket goes out of the listener to the client: one hash
//! lookup, one receive and one send per packet, as in TURN, minus parsing, authentication,
//! permissions, channel numbers and headers. What a TURN server spends beyond this is the
//! cost of being a TURN server.

use crate::error::BenchError;
use crate::mmsg::{Batch, BATCH};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use icegate_common::collections::FastMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};

/// First bytes of every control datagram; data never starts with 0xFF.
pub const MAGIC: [u8; 3] = [0xFF, b'F', b'L'];
/// Control: create a mapping to the peer in the datagram.
pub const OP_MAP: u8 = 1;
/// Control: remove the sender's mapping.
pub const OP_UNMAP: u8 = 2;
/// Control: are you there (readiness probe).
pub const OP_PING: u8 = 3;
/// Set in the op byte of a reply.
pub const REPLY: u8 = 0x80;

/// A control datagram: MAGIC, op, IPv4 address, port.
pub fn control(op: u8, addr: SocketAddrV4) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[..3].copy_from_slice(&MAGIC);
    b[3] = op;
    b[4..8].copy_from_slice(&addr.ip().octets());
    b[8..10].copy_from_slice(&addr.port().to_be_bytes());
    b
}

/// The op and address of a control datagram, if `bytes` is one.
pub fn parse_control(bytes: &[u8]) -> Option<(u8, SocketAddrV4)> {
    if bytes.len() != 10 || bytes[..3] != MAGIC {
        return None;
    }
    let ip = Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]);
    let port = u16::from_be_bytes([bytes[8], bytes[9]]);
    Some((bytes[3], SocketAddrV4::new(ip, port)))
}

/// One client's mapping.
struct Mapping {
    relay: UdpSocket,
    client: SocketAddrV4,
    peer: SocketAddrV4,
}

const LISTENER: Token = Token(usize::MAX - 1);
/// Runs `workers` forwarding threads on `listen` until the process is killed.
pub fn serve(listen: SocketAddrV4, relay_ip: Ipv4Addr, workers: usize) -> Result<(), BenchError> {
    let mut handles = Vec::new();
    for _ in 0..workers.max(1) {
        let sock = reuseport_socket(listen)?;
        handles.push(std::thread::spawn(move || worker(sock, relay_ip)));
    }
    for h in handles {
        h.join()
            .map_err(|_| BenchError::Contender("floor worker panicked".into()))??;
    }
    Ok(())
}

fn reuseport_socket(addr: SocketAddrV4) -> Result<UdpSocket, BenchError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let io = |e| BenchError::io(format!("floor listener {addr}"), e);
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    s.set_reuse_port(true).map_err(io)?;
    s.set_nonblocking(true).map_err(io)?;
    // The same deep queues as icegate-relay's listeners, so buffer policy is not a difference.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(addr).into()).map_err(io)?;
    Ok(UdpSocket::from_std(s.into()))
}

fn worker(mut listener: UdpSocket, relay_ip: Ipv4Addr) -> Result<(), BenchError> {
    let io = |what: &str, e| BenchError::io(what, e);
    let mut poll = Poll::new().map_err(|e| io("epoll", e))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| io("register", e))?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<Mapping>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut by_client: FastMap<SocketAddrV4, usize> = FastMap::default();
    let mut inb = Batch::new();
    // Client-bound datagrams leave as icegate-relay's do: runs merged by UDP GSO.
    let mut out = Batch::segmenting();
    // Peer-bound datagrams of one burst (consecutive ones of a client), as icegate-relay
    // queues them: one sendmmsg from their relay socket.
    let mut to_peer = Batch::segmenting();
    let mut to_peer_fd: RawFd = -1;
    let lfd = listener.as_raw_fd();
    loop {
        poll.poll(&mut events, None)
            .map_err(|e| io("epoll_wait", e))?;
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    let n = inb.recv(lfd).map_err(|e| io("recvmmsg", e))?;
                    for i in 0..n {
                        let from = inb.addr(i);
                        let bytes = inb.get(i);
                        if let Some((op, addr)) = parse_control(bytes) {
                            // A control op may close the socket the queue is for.
                            flush_to_peer(&mut to_peer, to_peer_fd);
                            let reply = control_op(
                                op,
                                addr,
                                from,
                                relay_ip,
                                &poll,
                                &mut slots,
                                &mut free,
                                &mut by_client,
                            );
                            if out.is_full() {
                                out.send(lfd, true).map_err(|e| io("sendmmsg", e))?;
                            }
                            out.push(Some(from), &reply);
                        } else if let Some(m) =
                            by_client.get(&from).and_then(|&s| slots[s].as_ref())
                        {
                            let rfd = m.relay.as_raw_fd();
                            if rfd != to_peer_fd || to_peer.is_full() {
                                flush_to_peer(&mut to_peer, to_peer_fd);
                                to_peer_fd = rfd;
                            }
                            to_peer.push(Some(m.peer), bytes);
                        }
                    }
                    flush_to_peer(&mut to_peer, to_peer_fd);
                    // A short batch drained the socket (edge-triggered: new packets wake us).
                    if n < BATCH {
                        break;
                    }
                }
            } else if let Some(m) = slots.get(ev.token().0).and_then(|m| m.as_ref()) {
                let rfd = m.relay.as_raw_fd();
                loop {
                    let n = inb.recv(rfd).map_err(|e| io("recvmmsg", e))?;
                    for i in 0..n {
                        // The permission check of the floor: only the mapped peer gets through.
                        if inb.addr(i) != m.peer {
                            continue;
                        }
                        if out.is_full() {
                            out.send(lfd, true).map_err(|e| io("sendmmsg", e))?;
                        }
                        out.push(Some(m.client), inb.get(i));
                    }
                    if n < BATCH {
                        break;
                    }
                }
            }
        }
        if !out.is_empty() {
            out.send(lfd, true).map_err(|e| io("sendmmsg", e))?;
        }
    }
}

/// Sends what is queued for peers from relay socket `fd`.
fn flush_to_peer(batch: &mut Batch, fd: RawFd) {
    if !batch.is_empty() {
        // A full relay socket drops the packets, as a relay would.
        let _ = batch.send(fd, true);
        batch.clear();
    }
}

/// Handles a control datagram from `from`; returns the reply.
#[allow(clippy::too_many_arguments)]
fn control_op(
    op: u8,
    addr: SocketAddrV4,
    from: SocketAddrV4,
    relay_ip: Ipv4Addr,
    poll: &Poll,
    slots: &mut Vec<Option<Mapping>>,
    free: &mut Vec<usize>,
    by_client: &mut FastMap<SocketAddrV4, usize>,
) -> [u8; 10] {
    let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    match op {
        OP_MAP => {
            if let Some(&slot) = by_client.get(&from) {
                // A retransmitted request: answer with the existing mapping.
                let relay = slots[slot].as_ref().and_then(|m| m.relay.local_addr().ok());
                if let Some(SocketAddr::V4(r)) = relay {
                    return control(OP_MAP | REPLY, r);
                }
            }
            let bound = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(relay_ip, 0)));
            let Ok(mut relay) = bound else {
                return control(OP_MAP | REPLY, unspecified);
            };
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            if poll
                .registry()
                .register(&mut relay, Token(slot), Interest::READABLE)
                .is_err()
            {
                free.push(slot);
                return control(OP_MAP | REPLY, unspecified);
            }
            let local = match relay.local_addr() {
                Ok(SocketAddr::V4(a)) => a,
                _ => unspecified,
            };
            slots[slot] = Some(Mapping {
                relay,
                client: from,
                peer: addr,
            });
            by_client.insert(from, slot);
            control(OP_MAP | REPLY, local)
        }
        OP_UNMAP => {
            if let Some(slot) = by_client.remove(&from) {
                if let Some(mut m) = slots[slot].take() {
                    let _ = poll.registry().deregister(&mut m.relay);
                }
                free.push(slot);
            }
            control(OP_UNMAP | REPLY, unspecified)
        }
        _ => control(OP_PING | REPLY, unspecified),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_round_trip() {
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 2, 1), 4000);
        let b = control(OP_MAP, a);
        assert_eq!(parse_control(&b), Some((OP_MAP, a)));
        assert_eq!(parse_control(&b[..9]), None);
    }
}
