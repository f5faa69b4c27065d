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
//! The system calls are made here with libc rather than through nix: nix's `recvmmsg` wants a
//! fresh `IoSliceMut` per slot on every call, and its `sendmmsg` can only report how many
//! datagrams left by reading addresses it never initialized. The headers are rebuilt for the
//! messages of each call, so no pointer outlives the call that uses it.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// Datagrams received by one [`RecvBatch::recv`], each in its own slot at the offset asked for.
///
/// Every slot holds a whole datagram (64 KiB): a datagram is never truncated. The slots are
/// zeroed memory the kernel maps lazily, so only the bytes datagrams touch use RAM.
pub struct RecvBatch {
    slots: Box<[u8]>,
    slot_len: usize,
    names: Box<[libc::sockaddr_storage; BATCH]>,
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
            // SAFETY: iovec is a plain C struct, for which all-zero is a valid value.
            iovs: unsafe { mem::zeroed() },
            // SAFETY: mmsghdr is a plain C struct, for which all-zero is a valid value.
            headers: unsafe { mem::zeroed() },
        }
    }

    /// Receives up to `max` (at most [`BATCH`]) datagrams into the slots, each `offset` bytes
    /// in. Returns how many came and whether the socket is drained (fewer than `max`: stop
    /// reading until it is readable again). An error is the first datagram's (an ICMP error
    /// queued for an earlier send, say); the caller may read again.
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        offset: usize,
        max: usize,
    ) -> io::Result<(usize, bool)> {
        let max = max.clamp(1, BATCH);
        let mut count = 0;
        let result = socket.try_io(Interest::READABLE, || {
            count = self.recvmmsg(socket.as_raw_fd(), offset, max)?;
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
        match self.recvmmsg(fd, offset, max.clamp(1, BATCH)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    fn recvmmsg(&mut self, fd: RawFd, offset: usize, max: usize) -> io::Result<usize> {
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
                header.msg_hdr.msg_control = std::ptr::null_mut();
                header.msg_hdr.msg_controllen = 0;
                header.msg_hdr.msg_flags = 0;
            }
            // SAFETY: headers `0..max` point at `max` distinct slots and address buffers that
            // live in `self` for the whole call, with their true lengths.
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
        let i = self.to.len();
        if i == BATCH || bytes.len() > SEND_SLOT {
            return false;
        }
        self.slots[i * SEND_SLOT..i * SEND_SLOT + bytes.len()].copy_from_slice(bytes);
        self.lens[i] = bytes.len();
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
    /// address with the same length (the last may be shorter), as one GSO message can carry.
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
        // One `cmsghdr` and a u16 per message (CMSG_SPACE(2) is 24 bytes), 8-byte aligned.
        let mut controls: [[u64; 3]; BATCH] = [[0; 3]; BATCH];
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
            if end - i > 1 {
                // SAFETY: the control buffer has room for CMSG_SPACE(2) bytes and outlives
                // the call; CMSG_FIRSTHDR of a header with that buffer points into it.
                unsafe {
                    header.msg_control = controls[messages].as_mut_ptr().cast();
                    header.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(header);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(c).cast::<u16>(),
                        self.lens[i] as u16,
                    );
                }
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
            let (n, drained) = batch.recv(&client, 36, BATCH).unwrap();
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
        assert_eq!(batch.recv(&client, 36, BATCH).unwrap(), (0, true));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_of_64_kib_is_received_whole() {
        let (a, b) = pair().await;
        let big = vec![7u8; 65_000];
        a.send_to(&big, b.local_addr().unwrap()).await.unwrap();
        b.readable().await.unwrap();
        let mut batch = RecvBatch::new(0);
        let (n, _) = batch.recv(&b, 0, 4).unwrap();
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
}
