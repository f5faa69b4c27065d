//! Batches of datagrams moved with one `recvmmsg`/`sendmmsg` system call (IPv4 only).
//!
//! The load generator and the floor forwarder spend most of their time in system calls;
//! batching is what keeps them cheap enough not to be the bottleneck of a measurement.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Datagrams per batch.
pub const BATCH: usize = 32;
/// Bytes reserved per datagram: enough for any packet the benchmarks exchange.
pub const SLOT: usize = 2048;

/// A fixed set of buffers, addresses and message headers, reused for every call.
pub struct Batch {
    bufs: Box<[u8]>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    len: usize,
    /// Control buffers carrying `UDP_SEGMENT`, one per message (aligned for `cmsghdr`).
    ctrl: [[u64; 3]; BATCH],
    /// Datagrams in each message of the last [`Batch::send`].
    counts: [usize; BATCH],
    /// Whether sends merge runs of datagrams into one UDP GSO message.
    gso: bool,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

fn empty_sockaddr() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

/// The `sockaddr_in` of `addr`.
fn to_raw(addr: SocketAddrV4) -> libc::sockaddr_in {
    let mut raw = empty_sockaddr();
    raw.sin_family = libc::AF_INET as libc::sa_family_t;
    raw.sin_port = addr.port().to_be();
    raw.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    raw
}

/// Points `hdr` at `addr` (a send's destination, a receive's source), or at none on a
/// connected socket.
fn set_name(hdr: &mut libc::msghdr, addr: Option<&mut libc::sockaddr_in>) {
    match addr {
        Some(addr) => {
            hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        None => {
            hdr.msg_name = std::ptr::null_mut();
            hdr.msg_namelen = 0;
        }
    }
}

fn same_addr(a: &libc::sockaddr_in, b: &libc::sockaddr_in) -> bool {
    a.sin_port == b.sin_port && a.sin_addr.s_addr == b.sin_addr.s_addr
}

fn from_raw(raw: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    )
}

impl Batch {
    /// An empty batch with its buffers allocated once.
    pub fn new() -> Self {
        Self {
            bufs: vec![0u8; BATCH * SLOT].into_boxed_slice(),
            lens: [0; BATCH],
            addrs: [empty_sockaddr(); BATCH],
            // SAFETY: iovec is plain old data (null pointers, zero lengths).
            iovs: unsafe { mem::zeroed() },
            // SAFETY: mmsghdr is plain old data (null pointers, zero lengths).
            hdrs: unsafe { mem::zeroed() },
            len: 0,
            ctrl: [[0; 3]; BATCH],
            counts: [0; BATCH],
            gso: false,
        }
    }

    /// An empty batch whose sends merge runs (see [`Batch::set_gso`]).
    pub fn segmenting() -> Self {
        let mut batch = Self::new();
        batch.set_gso(true);
        batch
    }

    /// Makes sends merge consecutive datagrams of one size to one address into a single
    /// UDP GSO message (`UDP_SEGMENT`): the kernel splits it again, at a fraction of the
    /// per-datagram cost. The receiver still sees ordinary datagrams.
    pub fn set_gso(&mut self, on: bool) {
        self.gso = on;
    }

    /// Datagrams held (received, or queued for sending).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether no more datagrams can be queued.
    pub fn is_full(&self) -> bool {
        self.len == BATCH
    }

    /// Datagram `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bufs[i * SLOT..i * SLOT + self.lens[i]]
    }

    /// Source (after a receive) or destination (queued) address of datagram `i`.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        from_raw(&self.addrs[i])
    }

    /// Drops everything held.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues a datagram of `len` bytes written by `fill` into its slot; `to` is `None` on a
    /// connected socket. The caller checks `is_full` first.
    pub fn push_with(&mut self, to: Option<SocketAddrV4>, fill: impl FnOnce(&mut [u8]) -> usize) {
        let i = self.len;
        let slot = &mut self.bufs[i * SLOT..(i + 1) * SLOT];
        self.lens[i] = fill(slot).min(SLOT);
        self.addrs[i] = to.map_or_else(empty_sockaddr, to_raw);
        self.len += 1;
    }

    /// Queues a copy of `bytes` for `to` (`None` on a connected socket).
    pub fn push(&mut self, to: Option<SocketAddrV4>, bytes: &[u8]) {
        self.push_with(to, |slot| {
            let n = bytes.len().min(slot.len());
            slot[..n].copy_from_slice(&bytes[..n]);
            n
        });
    }

    /// Points headers `0..n` at the slots; with `capacity` the iovecs span whole slots (for
    /// receiving), otherwise the queued lengths; `named` sets the addresses.
    fn prepare(&mut self, n: usize, capacity: bool, named: bool) {
        for i in 0..n {
            let base = self.bufs[i * SLOT..].as_mut_ptr();
            self.iovs[i] = libc::iovec {
                iov_base: base.cast(),
                iov_len: if capacity { SLOT } else { self.lens[i] },
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            set_name(hdr, named.then_some(&mut self.addrs[i]));
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Receives up to [`BATCH`] datagrams without blocking; 0 when none is waiting.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.prepare(BATCH, true, true);
        // SAFETY: the headers point into self's buffers, which outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            self.len = 0;
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                // ICMP port unreachable from an earlier send surfaces here; not our datagram.
                io::ErrorKind::ConnectionRefused => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        self.len = n;
        Ok(n)
    }

    /// Sends everything queued (to the queued addresses when `named`), then empties the
    /// batch. Returns how many datagrams the kernel refused (full buffer): they are dropped,
    /// as a real-time sender would drop them.
    pub fn send(&mut self, fd: RawFd, named: bool) -> io::Result<usize> {
        let total = self.len;
        let messages = if self.gso {
            self.prepare_segmented(total, named)
        } else {
            self.prepare(total, false, named);
            self.counts[..total].fill(1);
            total
        };
        let mut done = 0;
        let mut refused = 0;
        while done < messages {
            // SAFETY: headers done..messages point into self's buffers, alive for the call.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (messages - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused => {
                        // Skip the message that failed, keep the rest.
                        refused += self.counts[done];
                        done += 1;
                        continue;
                    }
                    _ => {
                        self.len = 0;
                        return Err(err);
                    }
                }
            }
            if n == 0 {
                refused += self.counts[done..messages].iter().sum::<usize>();
                break;
            }
            done += n as usize;
        }
        self.len = 0;
        Ok(refused)
    }

    /// Points one header at each run of datagrams that share a destination and a length (the
    /// run's last may be shorter), with a `UDP_SEGMENT` control message when the run has
    /// more than one; returns the number of headers.
    fn prepare_segmented(&mut self, n: usize, named: bool) -> usize {
        // The kernel caps one GSO message at 64 segments and 64 KiB of payload.
        const MAX_BYTES: usize = 65_000;
        let mut m = 0;
        let mut i = 0;
        while i < n {
            let size = self.lens[i];
            let mut j = i + 1;
            while j < n
                && size > 0
                && (j - i + 1) * size <= MAX_BYTES
                && (!named || same_addr(&self.addrs[j], &self.addrs[i]))
            {
                let len = self.lens[j];
                if len > size {
                    break;
                }
                j += 1;
                if len < size {
                    break;
                }
            }
            for k in i..j {
                self.iovs[k] = libc::iovec {
                    iov_base: self.bufs[k * SLOT..].as_mut_ptr().cast(),
                    iov_len: self.lens[k],
                };
            }
            let hdr = &mut self.hdrs[m].msg_hdr;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = j - i;
            set_name(hdr, named.then_some(&mut self.addrs[i]));
            if j - i > 1 {
                let ctrl = &mut self.ctrl[m];
                // SAFETY: ctrl is 24 bytes, 8-aligned: room for one cmsghdr and a u16 (the
                // CMSG_SPACE of 2 bytes), which the CMSG_* helpers lay out.
                unsafe {
                    hdr.msg_control = ctrl.as_mut_ptr().cast();
                    hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), size as u16);
                }
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            hdr.msg_flags = 0;
            self.hdrs[m].msg_len = 0;
            self.counts[m] = j - i;
            m += 1;
            i = j;
        }
        m
    }

    /// Sends every received datagram back to where it came from (the echo peer).
    pub fn echo(&mut self, fd: RawFd) -> io::Result<usize> {
        self.send(fd, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn batch_round_trip_and_echo() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(b_addr) = b.local_addr().unwrap() else {
            panic!("v4")
        };
        let mut out = Batch::new();
        for i in 0..5u8 {
            out.push(Some(b_addr), &[i; 10]);
        }
        assert_eq!(out.send(a.as_raw_fd(), true).unwrap(), 0);
        let mut inb = Batch::new();
        let mut got = 0;
        for _ in 0..100 {
            got += inb.recv(b.as_raw_fd()).unwrap();
            if got == 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 5);
        assert_eq!(inb.get(4), &[4u8; 10]);
        assert_eq!(
            std::net::SocketAddr::V4(inb.addr(0)),
            a.local_addr().unwrap()
        );
        assert_eq!(inb.echo(b.as_raw_fd()).unwrap(), 0);
        let mut buf = [0u8; 64];
        a.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let n = a.recv(&mut buf).unwrap();
        assert_eq!(n, 10);
    }

    #[test]
    fn gso_runs_arrive_as_the_datagrams_queued() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = |s: &UdpSocket| match s.local_addr().unwrap() {
            std::net::SocketAddr::V4(v4) => v4,
            _ => panic!("v4"),
        };
        let mut out = Batch::new();
        out.set_gso(true);
        // A run of four to b (the last shorter), one to c, then two of another size to b.
        for (to, len, tag) in [
            (addr(&b), 100, 0u8),
            (addr(&b), 100, 1),
            (addr(&b), 100, 2),
            (addr(&b), 40, 3),
            (addr(&c), 100, 4),
            (addr(&b), 60, 5),
            (addr(&b), 60, 6),
        ] {
            out.push(Some(to), &vec![tag; len]);
        }
        assert_eq!(out.send(a.as_raw_fd(), true).unwrap(), 0);
        b.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(1)))
            .unwrap();
        let mut buf = [0u8; 2048];
        for (len, tag) in [(100, 0u8), (100, 1), (100, 2), (40, 3), (60, 5), (60, 6)] {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!((n, buf[0]), (len, tag));
        }
        let n = c.recv(&mut buf).unwrap();
        assert_eq!((n, buf[0]), (100, 4));
    }
}
