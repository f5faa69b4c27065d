//! The load generator: one thread, many client sockets and one echo peer, all driven by one
//! epoll set. Pacing uses a timerfd (microsecond resolution) so that the thread sleeps in
//! epoll and still wakes at once for arriving packets, which keeps round-trip times honest.

use crate::error::BenchError;
use crate::measure::Histogram;
use crate::mmsg::{Batch, BATCH, SLOT};
use crate::turn_client::{Credentials, Phase, Plan, Protocol, Session};
use icegate_common::credentials::Secret;
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes of the audio-like payload (an Opus frame with RTP and SRTP overhead).
pub const PAYLOAD: usize = 172;
/// First payload byte: tells data from STUN (0x00/0x01) and floor control (0xFF).
const DATA_MARK: u8 = 0xBE;
/// The channel every allocation binds (channels are per allocation).
pub const CHANNEL: u16 = 0x4000;
/// Client sockets per client IP, below the 28,232 ports of Linux's default ephemeral range.
const CLIENTS_PER_IP: usize = 20_000;

const PEER: Token = Token(usize::MAX - 1);
const TIMER: Token = Token(usize::MAX - 2);

/// One client: a socket connected to the server and its control session.
struct Client {
    sock: UdpSocket,
    session: Session,
}

/// Counts of one paced stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamResult {
    /// Packets the clients sent.
    pub sent: u64,
    /// Packets the kernel refused to take from the clients (full buffers).
    pub send_drops: u64,
    /// Packets the peer received (relayed client → peer).
    pub peer_rx: u64,
    /// Packets the clients received back (relayed peer → client).
    pub rx: u64,
    /// Wall time from the first send to the last one.
    pub send_secs: f64,
}

impl StreamResult {
    /// Packets the server relayed, both directions.
    pub fn relayed(&self) -> u64 {
        self.peer_rx + self.rx
    }

    /// Fraction of round trips that did not come back.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return f64::NAN;
        }
        1.0 - (self.rx as f64 / self.sent as f64).min(1.0)
    }
}

/// How a setup went.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupResult {
    /// Clients ready (or cycles done).
    pub ok: usize,
    /// Clients that failed.
    pub failed: usize,
    /// Wall time.
    pub secs: f64,
}

/// The generator's sockets and state.
pub struct Generator {
    poll: Poll,
    events: Events,
    server: SocketAddrV4,
    proto: Protocol,
    clients: Vec<Client>,
    peer: UdpSocket,
    peer_addr: SocketAddrV4,
    timer: OwnedFd,
    batch: Batch,
    tx: Batch,
    secret: Secret,
    expiry: u64,
    client_base: Ipv4Addr,
    epoch: Instant,
    /// Round trips of the current stream.
    pub rtt: Histogram,
    /// Why the first failed client failed.
    pub first_error: Option<String>,
    /// Sockets opened for allocation cycles so far (picks their address and port).
    cycle_sockets: u32,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError::io(what, e)
}

impl Generator {
    /// A generator for `server`; clients bind to `client_base` (and the addresses after it
    /// every 20,000 clients), the echo peer to `peer_ip`.
    pub fn new(
        server: SocketAddrV4,
        proto: Protocol,
        secret: Secret,
        client_base: Ipv4Addr,
        peer_ip: Ipv4Addr,
    ) -> Result<Self, BenchError> {
        let poll = Poll::new().map_err(io("epoll"))?;
        let mut peer = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(peer_ip, 0)))
            .map_err(io("bind peer"))?;
        big_buffers(peer.as_raw_fd());
        let peer_addr = match peer.local_addr().map_err(io("peer address"))? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(BenchError::Config("peer must be IPv4".into())),
        };
        poll.registry()
            .register(&mut peer, PEER, Interest::READABLE)
            .map_err(io("register peer"))?;
        // SAFETY: timerfd_create has no memory preconditions; the fd is owned below.
        let tfd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if tfd < 0 {
            return Err(BenchError::io("timerfd", std::io::Error::last_os_error()));
        }
        // SAFETY: tfd is a fresh descriptor nobody else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(tfd) };
        poll.registry()
            .register(&mut SourceFd(&tfd), TIMER, Interest::READABLE)
            .map_err(io("register timer"))?;
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + 86_400;
        Ok(Self {
            poll,
            events: Events::with_capacity(4096),
            server,
            proto,
            clients: Vec::new(),
            peer,
            peer_addr,
            timer,
            batch: Batch::segmenting(),
            tx: Batch::segmenting(),
            secret,
            expiry,
            client_base,
            epoch: Instant::now(),
            rtt: Histogram::new(),
            first_error: None,
            cycle_sockets: 0,
        })
    }

    /// Where the echo peer listens.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer_addr
    }

    /// Clients that are ready to carry data.
    pub fn ready(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.session.phase == Phase::Ready)
            .count()
    }

    /// Closes every client socket (the server keeps the allocations until it is stopped).
    pub fn drop_clients(&mut self) {
        self.clients.clear();
    }

    fn new_socket(&self, index: usize) -> Result<UdpSocket, BenchError> {
        let ip = u32::from(self.client_base) + (index / CLIENTS_PER_IP) as u32;
        let local = SocketAddrV4::new(Ipv4Addr::from(ip), 0);
        let sock = UdpSocket::bind(SocketAddr::V4(local)).map_err(io("bind client"))?;
        sock.connect(SocketAddr::V4(self.server))
            .map_err(io("connect client"))?;
        Ok(sock)
    }

    /// A socket for one allocation cycle. Its address and port walk through 127.0.3.1 and
    /// up, ports 2000-61999, so a 5-tuple comes back only after 15 million cycles: a server
    /// that keeps some state of a released allocation for a while (coturn answers 437
    /// Allocation Mismatch) is not charged for the kernel reusing a recent ephemeral port.
    fn cycle_socket(&mut self) -> Result<UdpSocket, BenchError> {
        const PORTS: u32 = 60_000;
        loop {
            let k = self.cycle_sockets;
            self.cycle_sockets = self.cycle_sockets.wrapping_add(1);
            let ip = Ipv4Addr::new(127, 0, 3, 1 + ((k / PORTS) % 250) as u8);
            let local = SocketAddrV4::new(ip, 2000 + (k % PORTS) as u16);
            // A port some other program holds is skipped.
            let Ok(sock) = UdpSocket::bind(SocketAddr::V4(local)) else {
                continue;
            };
            sock.connect(SocketAddr::V4(self.server))
                .map_err(io("connect client"))?;
            return Ok(sock);
        }
    }

    fn plan(&self, cycle: bool) -> Plan {
        if cycle {
            Plan::Cycle {
                peer: self.peer_addr,
            }
        } else {
            Plan::Channel {
                peer: self.peer_addr,
                channel: CHANNEL,
            }
        }
    }

    /// Adds a client and sends its first request.
    fn add_client(&mut self, cycle: bool, now: Instant) -> Result<usize, BenchError> {
        let index = self.clients.len();
        let mut sock = if cycle {
            self.cycle_socket()?
        } else {
            self.new_socket(index)?
        };
        self.poll
            .registry()
            .register(&mut sock, Token(index), Interest::READABLE)
            .map_err(io("register client"))?;
        let creds = Credentials::rest(&self.secret, &format!("bench{index}"), self.expiry);
        let session = Session::new(self.proto, self.plan(cycle), creds, index as u32);
        self.clients.push(Client { sock, session });
        let c = &mut self.clients[index];
        let _ = c.sock.send(c.session.begin(now));
        Ok(index)
    }

    /// Gives client `i` a new socket and starts it over (a new client).
    fn renew_client(&mut self, i: usize, now: Instant) -> Result<(), BenchError> {
        let mut sock = self.cycle_socket()?;
        self.poll
            .registry()
            .register(&mut sock, Token(i), Interest::READABLE)
            .map_err(io("register client"))?;
        let c = &mut self.clients[i];
        let mut old = std::mem::replace(&mut c.sock, sock);
        let _ = self.poll.registry().deregister(&mut old);
        c.session.restart();
        let _ = c.sock.send(c.session.begin(now));
        Ok(())
    }

    /// Feeds client `i`'s waiting datagrams to its session.
    fn drain_control(&mut self, i: usize, now: Instant) {
        let mut buf = [0u8; SLOT];
        loop {
            let c = &mut self.clients[i];
            let n = match c.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            if let Some(next) = c.session.on_datagram(&buf[..n], now) {
                let _ = c.sock.send(next);
            }
        }
    }

    fn note_failure(&mut self, i: usize) {
        if self.first_error.is_none() {
            self.first_error = self.clients[i].session.error.clone();
        }
    }

    /// Allocates `count` more clients with channels to the peer, at most `window` at a time,
    /// giving up at `timeout`.
    pub fn setup(
        &mut self,
        count: usize,
        window: usize,
        timeout: Duration,
    ) -> Result<SetupResult, BenchError> {
        let start = Instant::now();
        let first = self.clients.len();
        let target = first + count;
        let mut in_flight: Vec<usize> = Vec::with_capacity(window);
        let (mut ok, mut failed) = (0, 0);
        let mut last_scan = start;
        while ok + failed < count && start.elapsed() < timeout {
            let now = Instant::now();
            while in_flight.len() < window && self.clients.len() < target {
                in_flight.push(self.add_client(false, now)?);
            }
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(20)))
                .map_err(io("epoll_wait"))?;
            let now = Instant::now();
            let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for t in tokens {
                if t < self.clients.len() {
                    self.drain_control(t, now);
                } else if t == PEER.0 {
                    self.echo(u8::MAX);
                }
            }
            if now.duration_since(last_scan) >= Duration::from_millis(50) {
                last_scan = now;
                for &i in &in_flight {
                    let c = &mut self.clients[i];
                    if let Some(again) = c.session.on_timer(now) {
                        let _ = c.sock.send(again);
                    }
                }
            }
            let mut k = 0;
            while k < in_flight.len() {
                let i = in_flight[k];
                match self.clients[i].session.phase {
                    Phase::Ready => {
                        ok += 1;
                        in_flight.swap_remove(k);
                    }
                    Phase::Failed => {
                        failed += 1;
                        self.note_failure(i);
                        in_flight.swap_remove(k);
                    }
                    _ => k += 1,
                }
            }
        }
        failed += count - ok - failed;
        Ok(SetupResult {
            ok,
            failed,
            secs: start.elapsed().as_secs_f64(),
        })
    }

    /// Allocate + release cycles on `concurrency` clients for `duration`, each cycle on a
    /// fresh socket (a new client, so the full 401 challenge every time).
    pub fn cycles(
        &mut self,
        concurrency: usize,
        duration: Duration,
    ) -> Result<SetupResult, BenchError> {
        let start = Instant::now();
        let now = Instant::now();
        let first = self.clients.len();
        for _ in 0..concurrency {
            self.add_client(true, now)?;
        }
        let (mut ok, mut failed) = (0, 0);
        let mut last_scan = start;
        while start.elapsed() < duration {
            self.poll
                .poll(&mut self.events, Some(Duration::from_millis(20)))
                .map_err(io("epoll_wait"))?;
            let now = Instant::now();
            let tokens: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
            for i in tokens {
                if i < first || i >= self.clients.len() {
                    continue;
                }
                self.drain_control(i, now);
                match self.clients[i].session.phase {
                    Phase::Done => {
                        ok += 1;
                        self.renew_client(i, now)?;
                    }
                    Phase::Failed => {
                        failed += 1;
                        self.note_failure(i);
                        self.renew_client(i, now)?;
                    }
                    _ => {}
                }
            }
            if now.duration_since(last_scan) >= Duration::from_millis(50) {
                last_scan = now;
                for i in first..self.clients.len() {
                    let c = &mut self.clients[i];
                    if let Some(again) = c.session.on_timer(now) {
                        let _ = c.sock.send(again);
                    }
                    if c.session.phase == Phase::Failed {
                        failed += 1;
                        self.note_failure(i);
                        self.renew_client(i, now)?;
                    }
                }
            }
        }
        // Leave no client half-way: their allocations expire with the server.
        for mut c in self.clients.drain(first..) {
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
        Ok(SetupResult {
            ok,
            failed,
            secs: start.elapsed().as_secs_f64(),
        })
    }

    fn arm_timer(&self, at: Duration) {
        // The timer runs on CLOCK_MONOTONIC; `at` is relative to now.
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: at.as_secs() as libc::time_t,
                tv_nsec: at.subsec_nanos().max(1) as libc::c_long,
            },
        };
        // SAFETY: the fd is our timerfd and spec is a valid itimerspec.
        unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut());
        }
    }

    fn clear_timer(&self) {
        let mut ticks = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a local buffer.
        unsafe {
            libc::read(
                self.timer.as_raw_fd(),
                ticks.as_mut_ptr().cast(),
                ticks.len(),
            );
        }
    }

    /// Echoes every waiting datagram at the peer; returns how many carried data of `step`.
    fn echo(&mut self, step: u8) -> u64 {
        let fd = self.peer.as_raw_fd();
        let mut mine = 0;
        while let Ok(n) = self.batch.recv(fd) {
            if n == 0 {
                break;
            }
            for i in 0..n {
                let p = self.batch.get(i);
                if p.len() >= 2 && p[0] == DATA_MARK && p[1] == step {
                    mine += 1;
                }
            }
            let _ = self.batch.echo(fd);
            // A short batch drained the socket; the next packet raises a new edge.
            if n < BATCH {
                break;
            }
        }
        mine
    }

    /// Takes the data packets waiting on client `i`; returns how many were of `step`.
    fn receive_data(&mut self, i: usize, step: u8) -> u64 {
        let fd = self.clients[i].sock.as_raw_fd();
        let turn = self.proto == Protocol::Turn;
        let mut got = 0;
        while let Ok(n) = self.batch.recv(fd) {
            if n == 0 {
                break;
            }
            let now = self.epoch.elapsed().as_nanos() as u64;
            for k in 0..n {
                let d = self.batch.get(k);
                let payload = if turn {
                    // ChannelData: channel number 0x4000-0x7FFF, then the length.
                    if d.len() < 4 || d[0] & 0xC0 != 0x40 {
                        continue;
                    }
                    &d[4..]
                } else {
                    d
                };
                if payload.len() < 12 || payload[0] != DATA_MARK || payload[1] != step {
                    continue;
                }
                let sent = u64::from_be_bytes(payload[4..12].try_into().unwrap_or_default());
                self.rtt
                    .record(Duration::from_nanos(now.saturating_sub(sent)));
                got += 1;
            }
            if n < BATCH {
                break;
            }
        }
        got
    }

    /// Sends `count` packets of `step` from client `i`; returns how many the kernel refused.
    fn send_data(&mut self, i: usize, count: u32, step: u8) -> u64 {
        let fd = self.clients[i].sock.as_raw_fd();
        let turn = self.proto == Protocol::Turn;
        let mut drops = 0;
        let mut left = count;
        while left > 0 {
            let now = self.epoch.elapsed().as_nanos() as u64;
            while left > 0 && !self.tx.is_full() {
                self.tx.push_with(None, |slot| {
                    let at = if turn {
                        slot[..2].copy_from_slice(&CHANNEL.to_be_bytes());
                        slot[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
                        4
                    } else {
                        0
                    };
                    let body = &mut slot[at..at + PAYLOAD];
                    body[0] = DATA_MARK;
                    body[1] = step;
                    body[2..4].fill(0);
                    body[4..12].copy_from_slice(&now.to_be_bytes());
                    body[12..16].copy_from_slice(&(i as u32).to_be_bytes());
                    body[16..].fill(0);
                    at + PAYLOAD
                });
                left -= 1;
            }
            drops += self.tx.send(fd, false).unwrap_or(0) as u64;
        }
        drops
    }

    /// Sends `rate` packets/s in total, spread evenly over the ready clients (round robin,
    /// so each client's packets are evenly spaced), for `duration`, with every packet echoed
    /// by the peer; then waits `drain` for stragglers. Only packets tagged `step` count, so
    /// late packets of an earlier stream are ignored.
    pub fn stream(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        step: u8,
        tick: Duration,
    ) -> Result<StreamResult, BenchError> {
        let ready: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].session.phase == Phase::Ready)
            .collect();
        let mut res = StreamResult::default();
        if ready.is_empty() || rate <= 0.0 {
            return Ok(res);
        }
        let mut pending = vec![0u32; self.clients.len()];
        let mut touched: Vec<usize> = Vec::with_capacity(ready.len());
        let total = (duration.as_secs_f64() * rate).round() as u64;
        let interval = 1e9 / rate;
        let start = Instant::now();
        let mut emitted = 0u64;
        let mut drain_until: Option<Instant> = None;
        let mut tokens: Vec<usize> = Vec::with_capacity(4096);
        loop {
            let now = Instant::now();
            if emitted < total {
                let elapsed = now.duration_since(start).as_nanos() as f64;
                let due = ((elapsed / interval) as u64 + 1).min(total);
                for k in emitted..due {
                    let c = ready[(k % ready.len() as u64) as usize];
                    if pending[c] == 0 {
                        touched.push(c);
                    }
                    pending[c] += 1;
                }
                emitted = due;
                for &c in &touched {
                    res.send_drops += self.send_data(c, pending[c], step);
                    res.sent += u64::from(pending[c]);
                    pending[c] = 0;
                }
                touched.clear();
                if emitted < total {
                    let next = Duration::from_nanos((emitted as f64 * interval) as u64);
                    let wait = next.saturating_sub(start.elapsed()).max(tick);
                    self.arm_timer(wait);
                } else {
                    res.send_secs = start.elapsed().as_secs_f64();
                    drain_until = Some(Instant::now() + drain);
                }
            }
            let timeout = match drain_until {
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    Some(left)
                }
                None => None,
            };
            self.poll
                .poll(&mut self.events, timeout)
                .map_err(io("epoll_wait"))?;
            tokens.clear();
            tokens.extend(self.events.iter().map(|e| e.token().0));
            for &t in &tokens {
                if t == TIMER.0 {
                    self.clear_timer();
                } else if t == PEER.0 {
                    res.peer_rx += self.echo(step);
                } else if t < self.clients.len() {
                    res.rx += self.receive_data(t, step);
                }
            }
        }
        Ok(res)
    }
}

/// Asks for 4 MiB socket buffers (SO_*BUFFORCE as root, else capped by the sysctls), so
/// that the generator's own sockets are not where packets get lost.
pub fn big_buffers(fd: RawFd) {
    let size: libc::c_int = 4 << 20;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt reads an int from a valid pointer.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}
