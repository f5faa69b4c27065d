//! Socket construction: SO_REUSEPORT listeners (one per worker) and relay sockets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

fn domain(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
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
    // Bursts of small packets from many clients: a deep receive queue absorbs scheduling hiccups.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A TCP listener that several workers can bind at once.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(domain(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
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
