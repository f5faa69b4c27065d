//! Batched UDP I/O for the data path: `recvmmsg` takes up to [`BATCH`] datagrams from a
//! socket in one system call, and `sendmmsg` sends a listener's queued datagrams, each to its
//! own client, in one system call (a relay's for its peers likewise). Consecutive datagrams of one size to one client (a burst
//! of one stream) leave as a single UDP GSO message (`UDP_SEGMENT`), which the kernel splits
//! again for a fraction of the per-datagram cost.
//!
//! A receive that fills fewer slots than asked drained the socket, so it tells tokio the
//! socket is no longer readable (`try_io` with `WouldBlock`): the read loop stops without the
//! extra system call that would only return `EAGAIN`, and the next datagram's edge wakes it.
//!
//! A wildcard listener (`0.0.0.0`, `::`) has IP_PKTINFO / IPV6_RECVPKTINFO set
//! ([`crate::sockets::udp_listener`]): its receives ask for control messages, one buffer per
//! slot, and each datagram carries the local address it was sent to ([`RecvBatch::local_addr`]);
//! its sends name that address as their source with an IP_PKTINFO / IPV6_PKTINFO control
//! message of their own, beside UDP_SEGMENT's. Other sockets are read and written without
//! control messages, as before.
//!
//! The system calls are made here with libc rather than through nix: nix's `recvmmsg` wants a
//! fresh `IoSliceMut` per slot on every call, and its `sendmmsg` can only report how many
//! datagrams left by reading addresses it never initialized; its control-message parser only
//! reads what its own calls received. The headers are rebuilt for the messages of each call,
//! so no pointer outlives the call that uses it.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = u16::MAX as usize;

/// Room in a send slot: relayed frames up to this size are queued, larger ones go at once.
const SEND_SLOT: usize = 2048;

/// Room for one datagram's control messages: UDP_SEGMENT's (CMSG_SPACE(2), 24 bytes) and
/// IPV6_PKTINFO's (CMSG_SPACE(20), 40 bytes; IP_PKTINFO's is 32).
const CONTROL_LEN: usize = 64;
/// Where a control message's data starts: after its header, aligned.
// SAFETY: CMSG_LEN only computes a size.
const CMSG_HEADER: usize = unsafe { libc::CMSG_LEN(0) } as usize;
/// The bytes of `in_pktinfo` (ifindex, spec_dst, addr) and of `in6_pktinfo` (addr, ifindex).
const IN_PKTINFO: usize = 12;
const IN6_PKTINFO: usize = 20;

/// One datagram's control messages, aligned for `cmsghdr` as the kernel wants them.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL_LEN]);

impl Control {
    const EMPTY: Control = Control([0; CONTROL_LEN]);

    /// Writes the control messages of a message: UDP_SEGMENT when `segment` is given (a GSO
    /// run of datagrams of that size), IP_PKTINFO / IPV6_PKTINFO when `source` is (the local
    /// address to send from: its IP, and for IPv6 its scope as the interface). Returns the
    /// length to put in `msg_controllen`: 0 when there is nothing to say.
    fn encode(&mut self, segment: Option<u16>, source: Option<SocketAddr>) -> usize {
        let mut at = 0;
        if let Some(size) = segment {
            at = self.put(at, libc::SOL_UDP, libc::UDP_SEGMENT, &size.to_ne_bytes());
        }
        match source {
            // ipi_ifindex 0 (routed as usual), ipi_spec_dst the source; ipi_addr is ignored.
            Some(SocketAddr::V4(a)) => {
                let mut info = [0u8; IN_PKTINFO];
                info[4..8].copy_from_slice(&a.ip().octets());
                at = self.put(at, libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
            }
            Some(SocketAddr::V6(a)) => {
                let mut info = [0u8; IN6_PKTINFO];
                info[..16].copy_from_slice(&a.ip().octets());
                info[16..].copy_from_slice(&a.scope_id().to_ne_bytes());
                at = self.put(at, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info);
            }
            None => {}
        }
        at
    }

    /// Writes one control message `at` bytes in (a multiple of 8); returns where the next goes.
    fn put(&mut self, at: usize, level: libc::c_int, kind: libc::c_int, data: &[u8]) -> usize {
        let len = CMSG_HEADER + data.len();
        // The messages `encode` writes fit by the choice of CONTROL_LEN.
        assert!(at + len <= CONTROL_LEN, "control messages overflow");
        // SAFETY: cmsghdr is a plain C struct, for which all-zero is a valid value.
        let mut header: libc::cmsghdr = unsafe { mem::zeroed() };
        header.cmsg_len = len as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        // SAFETY: the header's bytes lie inside the buffer (asserted above); the write needs
        // no alignment.
        unsafe {
            std::ptr::write_unaligned(self.0.as_mut_ptr().add(at).cast::<libc::cmsghdr>(), header)
        };
        self.0[at + CMSG_HEADER..at + len].copy_from_slice(data);
        at + len.next_multiple_of(mem::size_of::<usize>())
    }

    /// The local address a datagram was sent to, from the first `len` bytes of control
    /// messages the kernel wrote (IP_PKTINFO's or IPV6_PKTINFO's), with the interface it came
    /// in on. `None` when there is none, or none a reply can come from.
    fn local(&self, len: usize) -> Option<(IpAddr, u32)> {
        let control = &self.0[..len.min(CONTROL_LEN)];
        let mut at = 0;
        while at + CMSG_HEADER <= control.len() {
            // SAFETY: the header's bytes lie inside `control` (the loop's condition); the
            // read needs no alignment.
            let header: libc::cmsghdr =
                unsafe { std::ptr::read_unaligned(control.as_ptr().add(at).cast()) };
            let len = header.cmsg_len as usize;
            if len < CMSG_HEADER || at + len > control.len() {
                return None;
            }
            let data = &control[at + CMSG_HEADER..at + len];
            match (header.cmsg_level, header.cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= IN_PKTINFO => {
                    let word = |i: usize| [data[i], data[i + 1], data[i + 2], data[i + 3]];
                    let ifindex = u32::from_ne_bytes(word(0));
                    // ipi_addr, the header's destination, is the address the client sent to;
                    // for a broadcast it is no address to answer from, but ipi_spec_dst (the
                    // local address the kernel would answer from) is.
                    let addr = Ipv4Addr::from(word(8));
                    let spec_dst = Ipv4Addr::from(word(4));
                    let unicast =
                        |a: Ipv4Addr| !(a.is_unspecified() || a.is_broadcast() || a.is_multicast());
                    let ip = [addr, spec_dst].into_iter().find(|&a| unicast(a))?;
                    return Some((IpAddr::V4(ip), ifindex));
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if data.len() >= IN6_PKTINFO => {
                    let mut octets = [0u8; 16];
                    octets.copy_from_slice(&data[..16]);
                    let ip = Ipv6Addr::from(octets);
                    let ifindex = u32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
                    if ip.is_unspecified() || ip.is_multicast() {
                        return None;
                    }
                    return Some((IpAddr::V6(ip), ifindex));
                }
                _ => {}
            }
            at += len.next_multiple_of(mem::size_of::<usize>());
        }
        None
    }
}

/// The local address `(ip, ifindex)` as a socket address on `port`. An IPv6 link-local
/// address keeps its interface as its scope (a reply must leave by it); any other address
/// gets none, so a client's 5-tuple stays the same whichever interface its datagrams take.
fn local_socket_addr((ip, ifindex): (IpAddr, u32), port: u16) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        IpAddr::V6(v6) => {
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            let scope = if link_local { ifindex } else { 0 };
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope))
        }
    }
}

/// Datagrams received by one [`RecvBatch::recv`], each in its own slot at the offset asked for.
///
/// Every slot holds a whole datagram (64 KiB): a datagram is never truncated. The slots are
/// zeroed memory the kernel maps lazily, so only the bytes datagrams touch use RAM.
pub struct RecvBatch {
    slots: Box<[u8]>,
    slot_len: usize,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    /// Each slot's control messages, asked for on wildcard listeners only.
    controls: Box<[Control; BATCH]>,
    iovs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

impl RecvBatch {
    /// A batch whose slots leave `headroom` bytes before each datagram (for a header to be
    /// written in place in front of it).
    pub fn new(headroom: usize) -> Self {
        // Room for the 4 padding bytes a ChannelData frame may need after the payload.
        let slot_len = (headroom + MAX_DATAGRAM + 4).next_multiple_of(64);
        RecvBatch {
            slots: vec![0u8; slot_len * BATCH].into_boxed_slice(),
            slot_len,
            // SAFETY: sockaddr_storage is a plain C struct, for which all-zero is valid.
            names: Box::new(unsafe { mem::zeroed() }),
            controls: Box::new([Control::EMPTY; BATCH]),
            // SAFETY: iovec is a plain C struct, for which all-zero is a valid value.
            iovs: unsafe { mem::zeroed() },
            // SAFETY: mmsghdr is a plain C struct, for which all-zero is a valid value.
            headers: unsafe { mem::zeroed() },
        }
    }

    /// Receives up to `max` (at most [`BATCH`]) datagrams into the slots, each `offset` bytes
    /// in, with the local address each was sent to when `local` (a socket with IP_PKTINFO or
    /// IPV6_RECVPKTINFO set: see [`RecvBatch::local_addr`]). Returns how many came and whether
    /// the socket is drained (fewer than `max`: stop reading until it is readable again). An
    /// error is the first datagram's (an ICMP error queued for an earlier send, say); the
    /// caller may read again.
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        offset: usize,
        max: usize,
        local: bool,
    ) -> io::Result<(usize, bool)> {
        let max = max.clamp(1, BATCH);
        let mut count = 0;
        let result = socket.try_io(Interest::READABLE, || {
            count = self.recvmmsg(socket.as_raw_fd(), offset, max, local)?;
            if count < max {
                // Drained: have tokio wait for the next readiness edge instead of a recv
                // that would only say EAGAIN.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok((count, false)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((count, true)),
            Err(e) => Err(e),
        }
    }

    /// Receives up to `max` datagrams from a non-blocking socket tokio does not watch; 0 when
    /// none is waiting.
    pub fn recv_fd(&mut self, fd: RawFd, offset: usize, max: usize) -> io::Result<usize> {
        match self.recvmmsg(fd, offset, max.clamp(1, BATCH), false) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn recvmmsg(&mut self, fd: RawFd, offset: usize, max: usize, local: bool) -> io::Result<usize> {
        let offset = offset.min(self.slot_len);
        {
            for i in 0..max {
                let slot = &mut self.slots[i * self.slot_len..(i + 1) * self.slot_len];
                self.iovs[i] = libc::iovec {
                    iov_base: slot[offset..].as_mut_ptr().cast(),
                    iov_len: self.slot_len - offset,
                };
                let header = &mut self.headers[i];
                header.msg_len = 0;
                header.msg_hdr.msg_iov = &mut self.iovs[i];
                header.msg_hdr.msg_iovlen = 1;
                header.msg_hdr.msg_name =
                    (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
                header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
                if local {
                    header.msg_hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
                    header.msg_hdr.msg_controllen = CONTROL_LEN as _;
                } else {
                    header.msg_hdr.msg_control = std::ptr::null_mut();
                    header.msg_hdr.msg_controllen = 0;
                }
                header.msg_hdr.msg_flags = 0;
            }
            // SAFETY: headers `0..max` point at `max` distinct slots, address buffers and
            // control buffers that live in `self` for the whole call, with their true lengths.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    max as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last receive: its sender, and its slot with the datagram at
    /// `offset..offset + len`. `None` when the kernel gave no usable sender address.
    pub fn get_mut(&mut self, i: usize) -> Option<(SocketAddr, usize, &mut [u8])> {
        let header = self.headers.get(i)?;
        let len = header.msg_len as usize;
        let from = from_storage(&self.names[i], header.msg_hdr.msg_namelen)?;
        let slot = &mut self.slots[i * self.slot_len..(i + 1) * self.slot_len];
        Some((from, len, slot))
    }
}

impl RecvBatch {
    /// The address datagram `i` of the last receive reached on the listener bound to
    /// `listener`: on a wildcard listener the one its control message names (the
    /// listener's own if the kernel gave none), else the listener's.
    pub fn destination(&self, i: usize, listener: SocketAddr) -> SocketAddr {
        if listener.ip().is_unspecified() {
            self.local_addr(i, listener.port()).unwrap_or(listener)
        } else {
            listener
        }
    }

    /// The local address datagram `i` of the last receive was sent to, on `port` (the
    /// listener's): `None` unless the receive asked for it and the kernel gave one.
    pub fn local_addr(&self, i: usize, port: u16) -> Option<SocketAddr> {
        let header = &self.headers.get(i)?.msg_hdr;
        if header.msg_control.is_null() {
            return None;
        }
        let local = self.controls[i].local(header.msg_controllen)?;
        Some(local_socket_addr(local, port))
    }
}

/// The socket address the kernel wrote into `storage`.
fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(storage.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in; sockaddr_storage is
            // large and aligned enough for any socket address.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Relayed datagrams leaving one socket (a listener's for its clients, or a relay's for its
/// peers), queued until a flush sends them with one `sendmmsg`.
pub struct SendBatch {
    slots: Box<[u8]>,
    lens: [usize; BATCH],
    to: Vec<SockAddr>,
    /// The local address each datagram leaves from on a wildcard socket (see
    /// [`Control::encode`]); `None` where the kernel chooses.
    sources: [Option<SocketAddr>; BATCH],
    /// Whether runs are merged into GSO messages: off after the kernel refused one.
    gso: bool,
}

/// The kernel's limits on one GSO message: segments, and bytes of payload in all.
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams dropped: a full socket buffer or an unreachable destination, as UDP drops.
    pub failed: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            slots: vec![0u8; SEND_SLOT * BATCH].into_boxed_slice(),
            lens: [0; BATCH],
            to: Vec::with_capacity(BATCH),
            sources: [None; BATCH],
            gso: true,
        }
    }
}

impl SendBatch {
    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.to.is_empty()
    }

    /// No room for another datagram: flush first.
    pub fn is_full(&self) -> bool {
        self.to.len() == BATCH
    }

    /// Queues `bytes` for `to`; false (nothing queued) when the datagram is too large for a
    /// slot or the batch is full.
    pub fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        self.push_from(None, to, bytes)
    }

    /// [`SendBatch::push`] from the local address `source` of a wildcard socket (its IP, and
    /// for IPv6 its scope as the interface; its port is the socket's).
    pub fn push_from(&mut self, source: Option<SocketAddr>, to: SocketAddr, bytes: &[u8]) -> bool {
        let i = self.to.len();
        if i == BATCH || bytes.len() > SEND_SLOT {
            return false;
        }
        self.slots[i * SEND_SLOT..i * SEND_SLOT + bytes.len()].copy_from_slice(bytes);
        self.lens[i] = bytes.len();
        self.sources[i] = source;
        self.to.push(SockAddr::from(to));
        true
    }

    /// Sends everything queued from `socket` (a listener tokio watches) and empties the
    /// batch. After a partial send the rest is sent again; a message the kernel refuses is
    /// skipped.
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let fd = socket.as_raw_fd();
        self.flush_with(|batch, start| {
            socket.try_io(Interest::WRITABLE, || batch.send_from(fd, start))
        })
    }

    /// [`SendBatch::flush`] from a socket tokio does not watch (a relay socket).
    pub fn flush_fd(&mut self, fd: RawFd) -> Flushed {
        self.flush_with(|batch, start| batch.send_from(fd, start))
    }

    /// Drops everything queued, counting it as failed.
    pub fn discard(&mut self) -> Flushed {
        let failed = self.to.len();
        self.to.clear();
        Flushed { sent: 0, failed }
    }

    fn flush_with(&mut self, send: impl Fn(&Self, usize) -> io::Result<usize>) -> Flushed {
        let mut done = Flushed::default();
        let total = self.to.len();
        let mut start = 0;
        while start < total {
            match send(self, start) {
                Ok(0) => {
                    done.failed += total - start;
                    break;
                }
                Ok(k) => {
                    done.sent += k;
                    start += k;
                }
                // The socket buffer is full: the rest is dropped, as UDP would drop it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.failed += total - start;
                    break;
                }
                // A kernel or device without UDP GSO refused a merged run: send datagram by
                // datagram from now on.
                Err(e) if gso_unsupported(&e) && self.run_end(start) - start > 1 => {
                    self.gso = false;
                }
                // The first message was refused (an ICMP error, an unroutable address): drop
                // its datagrams and send the others.
                Err(_) => {
                    let skipped = self.run_end(start) - start;
                    done.failed += skipped;
                    start += skipped;
                }
            }
        }
        self.to.clear();
        done
    }

    /// Where the run of datagrams starting at `start` ends: those after it that go to the same
    /// address from the same source with the same length (the last may be shorter), as one
    /// GSO message can carry.
    fn run_end(&self, start: usize) -> usize {
        let total = self.to.len();
        let size = self.lens[start];
        let mut end = start + 1;
        if !self.gso || size == 0 {
            return end;
        }
        while end < total
            && end - start < GSO_MAX_SEGMENTS
            && (end - start + 1) * size <= GSO_MAX_BYTES
            && self.lens[end] <= size
            && self.to[end] == self.to[start]
            && self.sources[end] == self.sources[start]
        {
            end += 1;
            if self.lens[end - 1] < size {
                break;
            }
        }
        end
    }

    /// One `sendmmsg` of the datagrams from `start` on, a message per run; how many
    /// datagrams the messages the kernel took carried.
    fn send_from(&self, fd: RawFd, start: usize) -> io::Result<usize> {
        // SAFETY: iovec is a plain C struct, for which all-zero is a valid value.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: mmsghdr is a plain C struct, for which all-zero is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        // Each message's UDP_SEGMENT and source: on the stack, as the headers are.
        let mut controls = [Control::EMPTY; BATCH];
        let mut counts = [0usize; BATCH];
        let queued = start..self.to.len();
        for ((iov, slot), &len) in iovs[queued.clone()]
            .iter_mut()
            .zip(self.slots.chunks_exact(SEND_SLOT).skip(start))
            .zip(&self.lens[queued])
        {
            // The kernel only reads through it: sendmmsg does not write the data.
            *iov = libc::iovec {
                iov_base: slot.as_ptr().cast_mut().cast(),
                iov_len: len,
            };
        }
        let mut messages = 0;
        let mut i = start;
        while i < self.to.len() {
            let end = self.run_end(i);
            let header = &mut headers[messages].msg_hdr;
            header.msg_iov = &mut iovs[i];
            header.msg_iovlen = end - i;
            header.msg_name = self.to[i].as_ptr().cast_mut().cast();
            header.msg_namelen = self.to[i].len();
            let segment = (end - i > 1).then_some(self.lens[i] as u16);
            let control = &mut controls[messages];
            let len = control.encode(segment, self.sources[i]);
            if len > 0 {
                header.msg_control = control.0.as_mut_ptr().cast();
                header.msg_controllen = len as _;
            }
            counts[messages] = end - i;
            messages += 1;
            i = end;
        }
        // SAFETY: headers `0..messages` point at slots, lengths, addresses and control
        // buffers that live in `self` or on this stack frame for the whole call.
        let sent = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), messages as libc::c_uint, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(counts[..sent as usize].iter().sum())
    }
}

/// Sends one datagram from `socket` to `to`, from the local address `source` of a wildcard
/// socket (as [`SendBatch::push_from`]) or, without one, from the kernel's choice.
pub fn send_one(
    socket: &UdpSocket,
    source: Option<SocketAddr>,
    to: SocketAddr,
    bytes: &[u8],
) -> io::Result<usize> {
    let Some(source) = source else {
        return socket.try_send_to(bytes, to);
    };
    let to = SockAddr::from(to);
    let mut control = Control::EMPTY;
    let control_len = control.encode(None, Some(source));
    socket.try_io(Interest::WRITABLE, || {
        let mut iov = libc::iovec {
            // The kernel only reads through it.
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        };
        // SAFETY: msghdr is a plain C struct, for which all-zero is a valid value.
        let mut header: libc::msghdr = unsafe { mem::zeroed() };
        header.msg_name = to.as_ptr().cast_mut().cast();
        header.msg_namelen = to.len();
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.0.as_mut_ptr().cast();
        header.msg_controllen = control_len as _;
        // SAFETY: the header points at the address, the data and the control messages, all
        // alive for the call, with their true lengths.
        let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    })
}

/// Whether a send failed because UDP GSO is not available (old kernel, or a device without
/// checksum offload), rather than because of the destination.
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A sending socket (writable, as tokio sees it) and a receiving one.
    async fn pair() -> (Rc<UdpSocket>, UdpSocket) {
        let a = Rc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        a.writable().await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (a, b)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_go_out_and_come_in_with_their_addresses() {
        let (listener, client) = pair().await;
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to_client = client.local_addr().unwrap();
        let to_other = other.local_addr().unwrap();
        let listener_addr = listener.local_addr().unwrap();
        let mut out = SendBatch::default();
        for i in 0..40u8 {
            if out.is_full() {
                assert_eq!(out.flush(&listener).sent, BATCH);
            }
            let to = if i % 2 == 0 { to_client } else { to_other };
            assert!(out.push(to, &[i; 100]));
        }
        assert!(
            !out.push(to_client, &[0; SEND_SLOT + 1]),
            "too big for a slot"
        );
        assert_eq!(out.flush(&listener), Flushed { sent: 8, failed: 0 });
        assert!(out.is_empty());

        // The client got the even ones, in order, all from the listener.
        client.readable().await.unwrap();
        let mut batch = RecvBatch::new(36);
        let mut got = Vec::new();
        loop {
            let (n, drained) = batch.recv(&client, 36, BATCH, false).unwrap();
            for i in 0..n {
                let (from, len, slot) = batch.get_mut(i).unwrap();
                assert_eq!(from, listener_addr);
                assert_eq!(len, 100);
                got.push(slot[36]);
            }
            if drained {
                break;
            }
        }
        let even: Vec<u8> = (0..40).step_by(2).collect();
        assert_eq!(got, even);
        // Drained: nothing more, and no error.
        assert_eq!(batch.recv(&client, 36, BATCH, false).unwrap(), (0, true));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_of_64_kib_is_received_whole() {
        let (a, b) = pair().await;
        let big = vec![7u8; 65_000];
        a.send_to(&big, b.local_addr().unwrap()).await.unwrap();
        b.readable().await.unwrap();
        let mut batch = RecvBatch::new(0);
        let (n, _) = batch.recv(&b, 0, 4, false).unwrap();
        assert_eq!(n, 1);
        let (_, len, slot) = batch.get_mut(0).unwrap();
        assert_eq!(len, 65_000);
        assert!(slot[..len].iter().all(|&x| x == 7));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_destination_drops_one_datagram_not_the_batch() {
        let (listener, client) = pair().await;
        let mut out = SendBatch::default();
        // Port 0 is not a destination: the kernel refuses that one datagram.
        assert!(out.push("127.0.0.1:0".parse().unwrap(), b"x"));
        assert!(out.push(client.local_addr().unwrap(), b"y"));
        assert_eq!(out.flush(&listener), Flushed { sent: 1, failed: 1 });
        let mut buf = [0u8; 8];
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"y");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_to_one_client_arrive_as_the_datagrams_queued() {
        let (listener, client) = pair().await;
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (c, o) = (client.local_addr().unwrap(), other.local_addr().unwrap());
        let mut out = SendBatch::default();
        // Runs: four to the client (the last shorter, so the run ends there), two more of
        // another size, one to the other socket, then one to the client again.
        let queued = [
            (c, 100, 0u8),
            (c, 100, 1),
            (c, 100, 2),
            (c, 30, 3),
            (c, 100, 4),
            (c, 100, 5),
            (o, 100, 6),
            (c, 100, 7),
        ];
        for (to, len, tag) in queued {
            assert!(out.push(to, &vec![tag; len]));
        }
        assert_eq!(out.run_end(0), 4);
        assert_eq!(out.run_end(4), 6);
        assert_eq!(out.flush(&listener), Flushed { sent: 8, failed: 0 });
        let mut buf = [0u8; 2048];
        for (to, len, tag) in queued {
            let socket = if to == c { &client } else { &other };
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            assert_eq!(
                (n, buf[0], from),
                (len, tag, listener.local_addr().unwrap())
            );
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_written_for_sending_reads_back_as_the_local_address() {
        let mut control = Control::EMPTY;
        // A GSO run from 127.0.0.2: both messages, the source second.
        let len = control.encode(Some(1200), Some(sa("127.0.0.2:9")));
        assert_eq!(len, 24 + 32);
        assert_eq!(control.local(len), Some(("127.0.0.2".parse().unwrap(), 0)));
        // The UDP_SEGMENT message comes first and says the segment size.
        let header: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control.0.as_ptr().cast()) };
        assert_eq!(
            (header.cmsg_level, header.cmsg_type),
            (libc::SOL_UDP, libc::UDP_SEGMENT)
        );
        assert_eq!(
            control.0[CMSG_HEADER..CMSG_HEADER + 2],
            1200u16.to_ne_bytes()
        );

        // IPv6, link-local: the scope is the interface, both ways.
        let mut control = Control::EMPTY;
        let len = control.encode(None, Some(sa("[fe80::1%3]:9")));
        assert_eq!(len, 40);
        let local = control.local(len).unwrap();
        assert_eq!(local, ("fe80::1".parse().unwrap(), 3));
        assert_eq!(local_socket_addr(local, 3478), sa("[fe80::1%3]:3478"));
        // A global address keeps no interface: its 5-tuple is the same whichever it came by.
        assert_eq!(
            local_socket_addr(("2001:db8::1".parse().unwrap(), 3), 3478),
            sa("[2001:db8::1]:3478")
        );

        // Nothing to say: no control messages at all.
        assert_eq!({ Control::EMPTY }.encode(None, None), 0);
        assert_eq!(Control::EMPTY.local(0), None);
    }

    #[test]
    fn the_received_destination_is_the_local_address_unless_it_is_a_broadcast() {
        // IP_PKTINFO as the kernel writes it: ifindex, ipi_spec_dst, ipi_addr.
        let pktinfo = |spec_dst: [u8; 4], addr: [u8; 4]| {
            let mut info = [0u8; IN_PKTINFO];
            info[..4].copy_from_slice(&2u32.to_ne_bytes());
            info[4..8].copy_from_slice(&spec_dst);
            info[8..].copy_from_slice(&addr);
            let mut control = Control::EMPTY;
            let len = control.put(0, libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
            control.local(len)
        };
        let ip = |s: &str| Some((s.parse().unwrap(), 2));
        assert_eq!(pktinfo([192, 0, 2, 1], [192, 0, 2, 7]), ip("192.0.2.7"));
        assert_eq!(
            pktinfo([192, 0, 2, 1], [255, 255, 255, 255]),
            ip("192.0.2.1")
        );
        assert_eq!(pktinfo([192, 0, 2, 1], [224, 0, 0, 1]), ip("192.0.2.1"));
        assert_eq!(pktinfo([0, 0, 0, 0], [255, 255, 255, 255]), None);
    }

    #[test]
    fn malformed_control_messages_give_no_address() {
        let mut control = Control::EMPTY;
        let len = control.encode(None, Some(sa("127.0.0.2:9")));
        // Cut short: the message claims more than there is.
        assert_eq!(control.local(len - 8), None);
        // A header whose length is shorter than a header.
        let mut bad = control;
        bad.0[..8].copy_from_slice(&4usize.to_ne_bytes());
        assert_eq!(bad.local(len), None);
        // Another level's message with the same type number is not IP_PKTINFO.
        let mut other = Control::EMPTY;
        let len = other.put(0, libc::SOL_UDP, libc::IP_PKTINFO, &[1; IN_PKTINFO]);
        assert_eq!(other.local(len), None);
    }

    /// Two clients on 127.0.0.1, connected to a wildcard listener's port on 127.0.0.2 and
    /// 127.0.0.1: a connected socket takes only what comes from the address it sent to.
    #[tokio::test(flavor = "current_thread")]
    async fn a_wildcard_socket_learns_and_answers_from_the_address_each_datagram_came_to() {
        let listener = crate::sockets::udp_listener(sa("0.0.0.0:0")).unwrap();
        let listener = UdpSocket::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
        let mut clients = Vec::new();
        for ip in ["127.0.0.2", "127.0.0.1"] {
            let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            c.connect(at(ip)).await.unwrap();
            c.send(ip.as_bytes()).await.unwrap();
            clients.push(c);
        }
        let mut batch = RecvBatch::new(0);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            listener.readable().await.unwrap();
            let (n, _) = batch.recv(&listener, 0, BATCH, true).unwrap();
            for i in 0..n {
                let local = batch.local_addr(i, port).unwrap();
                let (from, len, slot) = batch.get_mut(i).unwrap();
                assert_eq!(slot[..len], *local.ip().to_string().as_bytes());
                seen.push((local, from));
            }
        }
        // A read that does not ask for addresses has none, whatever the one before had.
        clients[0].send(b"again").await.unwrap();
        listener.readable().await.unwrap();
        assert_eq!(batch.recv(&listener, 0, BATCH, false).unwrap(), (1, true));
        assert_eq!(batch.local_addr(0, port), None);

        // Answers: a GSO-sized run of three to each client from its own address, then one
        // more each by itself. Same client, other source: never one run.
        let mut out = SendBatch::default();
        for &(local, from) in &seen {
            for _ in 0..3 {
                assert!(out.push_from(Some(local), from, &[7; 100]));
            }
        }
        assert_eq!(out.run_end(0), 3);
        assert_eq!(out.flush(&listener), Flushed { sent: 6, failed: 0 });
        for &(local, from) in &seen {
            assert_eq!(send_one(&listener, Some(local), from, b"one").unwrap(), 3);
        }
        for (client, ip) in clients.iter().zip(["127.0.0.2", "127.0.0.1"]) {
            let mut buf = [0u8; 256];
            // A connected socket drops what comes from elsewhere: a wrong source times out.
            let wait = std::time::Duration::from_secs(5);
            for _ in 0..3 {
                let got = tokio::time::timeout(wait, client.recv_from(&mut buf)).await;
                let (n, from) = got.expect("an answer").unwrap();
                assert_eq!((n, from), (100, at(ip)));
            }
            let got = tokio::time::timeout(wait, client.recv_from(&mut buf)).await;
            let (n, from) = got.expect("an answer").unwrap();
            assert_eq!((&buf[..n], from), (&b"one"[..], at(ip)));
        }
    }

    /// The same over IPv6 on ::1 (the only IPv6 loopback address).
    #[tokio::test(flavor = "current_thread")]
    async fn a_wildcard_ipv6_socket_answers_from_the_address_it_was_sent_to() {
        let listener = crate::sockets::udp_listener(sa("[::]:0")).unwrap();
        let listener = UdpSocket::from_std(listener).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = UdpSocket::bind("[::1]:0").await.unwrap();
        client.connect(sa(&format!("[::1]:{port}"))).await.unwrap();
        client.send(b"hi").await.unwrap();
        listener.readable().await.unwrap();
        let mut batch = RecvBatch::new(0);
        let (n, _) = batch.recv(&listener, 0, BATCH, true).unwrap();
        assert_eq!(n, 1);
        let local = batch.local_addr(0, port).unwrap();
        assert_eq!(local, sa(&format!("[::1]:{port}")));
        let (from, _, _) = batch.get_mut(0).unwrap();
        let mut out = SendBatch::default();
        assert!(out.push_from(Some(local), from, b"back"));
        assert_eq!(out.flush(&listener).sent, 1);
        let mut buf = [0u8; 16];
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"back");
    }
}
