//! Socket construction: SO_REUSEPORT listeners (one per worker) and relay sockets.
//!
//! # Exclusive listening ports
//!
//! Linux lets any socket with SO_REUSEPORT of the same user join a group of SO_REUSEPORT
//! sockets, so a second relay started as the same user would bind the same port, say it is
//! ready, and silently take a share of the clients. Before a listening address is bound, it
//! is therefore claimed twice:
//!
//! - [`PortLock`]: an abstract Unix socket named after the transport and address, which only
//!   one process at a time can hold and the kernel frees when the process ends. It makes two
//!   relays started at the same moment exclusive, where checking and binding are two steps.
//! - [`probe_exclusive`]: a socket without SO_REUSEPORT bound to the address and closed again.
//!   The kernel refuses it while any other socket holds the port (with SO_REUSEPORT or not,
//!   on that address or the wildcard), so whatever already listens there, icegate or not,
//!   makes the start fail with "Address already in use".
//!
//! The worker listeners are bound right after, still with SO_REUSEPORT among themselves.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixDatagram;

use socket2::{Domain, Protocol, Socket, Type};

fn domain(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// The transport of a listening address, for [`PortLock`] and [`probe_exclusive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listening {
    /// UDP.
    Udp,
    /// TCP (TURN over TCP or TLS, or HTTP).
    Tcp,
}

/// This process's claim on a listening address, held until the process ends.
#[derive(Debug)]
pub struct PortLock {
    _socket: UnixDatagram,
}

impl PortLock {
    /// Claims `addr` for this process among icegate-relays in this network namespace; fails
    /// with `AddrInUse` while another process holds it.
    pub fn claim(transport: Listening, addr: SocketAddr) -> io::Result<PortLock> {
        let name = format!("icegate-relay {transport:?} {addr}");
        let name = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        Ok(PortLock {
            _socket: UnixDatagram::bind_addr(&name)?,
        })
    }
}

/// Fails with `AddrInUse` if any other socket holds `addr`, by binding a socket without
/// SO_REUSEPORT there and closing it.
pub fn probe_exclusive(transport: Listening, addr: SocketAddr) -> io::Result<()> {
    let socket = match transport {
        Listening::Udp => Socket::new(domain(addr), Type::DGRAM, Some(Protocol::UDP))?,
        Listening::Tcp => {
            let socket = Socket::new(domain(addr), Type::STREAM, Some(Protocol::TCP))?;
            // Connections of a previous run in TIME_WAIT must not count as a listener; with
            // SO_REUSEADDR a TCP bind still fails against a listening socket.
            socket.set_reuse_address(true)?;
            socket
        }
    };
    if addr.is_ipv6() {
        // As the listeners: `[::]` does not claim the IPv4 port.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// A UDP listener that several workers can bind at once; the kernel spreads clients over them
/// by 4-tuple hash, so each client's packets always reach the same worker.
pub fn udp_listener(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if addr.ip().is_unspecified() {
        // A wildcard listener answers from the address each request came to, which the
        // kernel then tells with each datagram (see `crate::mmsg`).
        set_packet_info(&socket, addr.is_ipv6())?;
    }
    // Bursts of small packets from many clients: a deep receive queue absorbs scheduling hiccups.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Has the kernel tell, with each datagram received, the local address it was sent to
/// (IP_PKTINFO, IPV6_RECVPKTINFO).
fn set_packet_info(socket: &Socket, ipv6: bool) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let set = if ipv6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)
    };
    set.map_err(io::Error::from)
}

/// A TCP listener that several workers can bind at once.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = shared_tcp_socket(addr)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A non-blocking TCP socket bound to `addr` with SO_REUSEADDR and SO_REUSEPORT, so that
/// other sockets (other workers' listeners, a TCP allocation's outgoing connections) can bind
/// the same address and port; Nagle off, since what goes over it is frames or relayed bytes
/// that someone waits for.
fn shared_tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(domain(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The UDP socket of one relayed transport address.
pub fn relay_socket(addr: SocketAddr, dont_fragment: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    if dont_fragment {
        set_dont_fragment(&socket, addr.is_ipv6())?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The TCP listener of a TCP allocation's relayed address (RFC 6062).
///
/// SO_REUSEPORT (with SO_REUSEADDR) so that the allocation's outgoing peer connections
/// ([`tcp_relay_socket`]) can bind the same address and port while it listens: RFC 6062 has
/// a peer see one relayed address whichever side connected.
pub fn tcp_relay_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = shared_tcp_socket(addr)?;
    socket.listen(128)?;
    Ok(socket.into())
}

/// An unconnected TCP socket bound to a TCP allocation's relayed address, to connect to a
/// peer from (RFC 6062 Connect); see [`tcp_relay_listener`].
pub fn tcp_relay_socket(from: SocketAddr) -> io::Result<std::net::TcpStream> {
    Ok(shared_tcp_socket(from)?.into())
}

/// Sets the DF bit on everything the socket sends (RFC 8656 DONT-FRAGMENT).
fn set_dont_fragment(socket: &Socket, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        return nix::sys::socket::setsockopt(
            socket,
            nix::sys::socket::sockopt::Ipv6DontFrag,
            &true,
        )
        .map_err(io::Error::from);
    }
    let value: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: `socket` is an open socket for the duration of the call, and `value` is a
    // c_int living on the stack whose size is passed alongside its address.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
