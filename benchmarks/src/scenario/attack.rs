//! attack: how long a legitimate client waits for an allocation while attackers flood and
//! stall the server, next to the same clients without the attack (the baseline).
//!
//! Legitimate clients on 127.0.0.1, over UDP and over TCP, each start a whole cycle every
//! 400 ms: Allocate, the 401 challenge, the authenticated Allocate and Refresh(0), within
//! 3 s. The attackers, from [`ATTACKER_IPS`], all at once: a flood of unauthenticated
//! Allocates over UDP from [`FLOOD_SOCKETS`] sockets, as fast as one thread sends; and slowloris, TCP
//! connections that send one byte of a STUN header and then nothing, reopened when the
//! server closes them. No TLS stall: the harness starts no contender with a certificate.

use super::{Metric, Metrics, Params};
use crate::contender::Contender;
use crate::error::BenchError;
use crate::measure::{median, process_cpu_secs};
use crate::turn_client::{Credentials, Phase, Plan, Protocol, Session};
use icegate_common::credentials::Secret;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest a legitimate allocation cycle may take before it counts as timed out.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Time between the starts of one legitimate client's cycles.
pub const INTERVAL: Duration = Duration::from_millis(400);
/// The attackers' source addresses: past the relay addresses (127.0.0.2 and up), so that
/// their ephemeral ports never take a relay port, and not 127.0.0.1, so that per-address
/// limits count them apart from the legitimate clients.
pub const ATTACKER_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 240),
    Ipv4Addr::new(127, 0, 0, 241),
    Ipv4Addr::new(127, 0, 0, 242),
    Ipv4Addr::new(127, 0, 0, 243),
];
/// Flood sockets, spread over the attacker addresses.
pub const FLOOD_SOCKETS: usize = 64;
/// Wait before a closed slowloris connection is opened again, so that a server closing
/// every connection at accept meets a steady stream of connects, not a busy loop.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(100);
/// Legitimate UDP clients bind ports counting up from here, below the ephemeral range,
/// so that no 5-tuple comes back soon (coturn answers 437 to one it just released).
const LEGIT_PORT_BASE: u32 = 20_000;
const LEGIT_PORTS: u32 = 12_000;
static NEXT_LEGIT_PORT: AtomicU32 = AtomicU32::new(0);

/// Transport of a legitimate client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// STUN over UDP.
    Udp,
    /// STUN over TCP.
    Tcp,
}

/// A statistic of legitimate allocation cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stat {
    /// Cycles completed within the timeout.
    Completed,
    /// Median latency of completed cycles.
    P50,
    /// 99th percentile latency of completed cycles.
    P99,
    /// Longest completed cycle.
    Max,
    /// Cycles refused or failed (an error answer, a refused or closed connection).
    Failed,
    /// Cycles without an answer within [`TIMEOUT`].
    TimedOut,
}

/// One legitimate-allocation figure: transport, statistic, baseline or under attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Figure {
    /// The clients' transport.
    pub transport: Transport,
    /// Which statistic.
    pub stat: Stat,
    /// Whether the attack was running.
    pub under_attack: bool,
}

impl Figure {
    /// Row label with unit.
    pub fn label(self) -> String {
        let t = match self.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        };
        let s = match self.stat {
            Stat::Completed => "allocations completed",
            Stat::P50 => "allocation p50 ms",
            Stat::P99 => "allocation p99 ms",
            Stat::Max => "allocation max ms",
            Stat::Failed => "allocations failed",
            Stat::TimedOut => "allocations timed out (3 s)",
        };
        let when = if self.under_attack {
            "under attack"
        } else {
            "baseline"
        };
        format!("{t} {s}, {when}")
    }
}

/// Runs the scenario: the baseline, then the same clients under attack.
pub fn run(c: &Contender, p: &Params) -> Result<Metrics, BenchError> {
    // A socket per stalled connection here and one per accepted connection in the server,
    // which inherits this process's limit.
    crate::harness::raise_fd_limit(p.attack_slowloris as u64 * 2 + 1024);
    let secret = Secret::new(p.secret.as_bytes());
    let server = c.addr;
    let baseline = legit(server, &secret, p.attack_clients, p.attack_baseline_secs);
    let stop = AtomicBool::new(false);
    let (attacked, cpu, flood, slow) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| flood(server, &stop));
        let slow = scope.spawn(|| slowloris(server, p.attack_slowloris, &stop));
        // Let the stalled connections pile up before the legitimate clients start.
        std::thread::sleep(Duration::from_secs_f64((p.attack_secs / 4.0).min(1.0)));
        let cpu_before = process_cpu_secs(c.pid);
        let t = Instant::now();
        let attacked = legit(server, &secret, p.attack_clients, p.attack_secs);
        let cpu =
            cpu_before.and_then(|b| Ok((process_cpu_secs(c.pid)? - b) / t.elapsed().as_secs_f64()));
        stop.store(true, Ordering::Relaxed);
        let joined = |what: &str| BenchError::Contender(format!("{what} thread panicked"));
        (
            attacked,
            cpu,
            flood.join().map_err(|_| joined("flood")),
            slow.join().map_err(|_| joined("slowloris")),
        )
    });
    let (sent, flood_secs) = flood??;
    let slow = slow??;
    let mut m = Metrics::new();
    for (under_attack, tallies) in [(false, &baseline), (true, &attacked)] {
        for (transport, t) in tallies {
            if let Some(e) = &t.first_error {
                eprintln!(
                    "{} attack: {} first failure {}: {e}",
                    c.kind.name(),
                    transport_name(*transport),
                    if under_attack {
                        "under attack"
                    } else {
                        "in the baseline"
                    },
                );
            }
            let fig = |stat| {
                Metric::Attack(Figure {
                    transport: *transport,
                    stat,
                    under_attack,
                })
            };
            let mut ms = t.ms.clone();
            ms.sort_by(|a, b| a.total_cmp(b));
            m.extend([
                (fig(Stat::Completed), ms.len() as f64),
                (fig(Stat::P50), quantile(&ms, 0.5)),
                (fig(Stat::P99), quantile(&ms, 0.99)),
                (fig(Stat::Max), ms.last().copied().unwrap_or(f64::NAN)),
                (fig(Stat::Failed), t.failed as f64),
                (fig(Stat::TimedOut), t.timed_out as f64),
            ]);
        }
    }
    let held: Vec<f64> = slow.held.iter().map(|&h| h as f64).collect();
    m.extend([
        (Metric::FloodPps, super::per(sent as f64, flood_secs)),
        (Metric::SlowlorisHeld, median(&held)),
        (Metric::SlowlorisClosed, slow.closed as f64),
        (Metric::AttackCpuPct, super::pct(cpu?)),
    ]);
    Ok(m)
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "UDP",
        Transport::Tcp => "TCP",
    }
}

/// The `q` quantile of sorted `v`; NaN when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Cycles of one transport's legitimate clients.
#[derive(Debug, Default)]
struct Tally {
    ms: Vec<f64>,
    failed: u64,
    timed_out: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ms.extend(other.ms);
        self.failed += other.failed;
        self.timed_out += other.timed_out;
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// How one cycle ended.
enum Outcome {
    Done(Duration),
    Failed(String),
    TimedOut,
}

/// Runs `clients` legitimate clients per transport for `secs`; a cycle begun before the end
/// is finished (or times out).
fn legit(
    server: SocketAddrV4,
    secret: &Secret,
    clients: usize,
    secs: f64,
) -> Vec<(Transport, Tally)> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let clients = clients.max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = [Transport::Udp, Transport::Tcp]
            .into_iter()
            .enumerate()
            .flat_map(|(ti, t)| (0..clients).map(move |k| (ti, t, k)))
            .map(|(ti, t, k)| {
                // Spread the clients' starts over the interval, so cycles do not line up.
                let offset = INTERVAL * (2 * k + ti) as u32 / (2 * clients) as u32;
                let id = ((ti * clients + k) as u32) << 20;
                (
                    t,
                    scope.spawn(move || legit_client(t, server, secret, id, offset, until)),
                )
            })
            .collect();
        let mut out = vec![
            (Transport::Udp, Tally::default()),
            (Transport::Tcp, Tally::default()),
        ];
        for (t, h) in handles {
            let tally = h.join().unwrap_or_else(|_| Tally {
                failed: 1,
                first_error: Some("client thread panicked".into()),
                ..Tally::default()
            });
            if let Some((_, sum)) = out.iter_mut().find(|(x, _)| *x == t) {
                sum.merge(tally);
            }
        }
        out
    })
}

fn legit_client(
    t: Transport,
    server: SocketAddrV4,
    secret: &Secret,
    id: u32,
    offset: Duration,
    until: Instant,
) -> Tally {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let mut tally = Tally::default();
    std::thread::sleep(offset);
    let mut cycle = 0u32;
    loop {
        let start = Instant::now();
        cycle += 1;
        let creds = Credentials::rest(secret, &format!("legit{id}"), expiry);
        let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let mut session = Session::new(Protocol::Turn, Plan::Cycle { peer }, creds, id + cycle);
        let outcome = match t {
            Transport::Udp => udp_cycle(server, &mut session, start),
            Transport::Tcp => tcp_cycle(server, &mut session, start),
        };
        match outcome {
            Outcome::Done(d) => tally.ms.push(d.as_secs_f64() * 1e3),
            Outcome::Failed(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert(e);
            }
            Outcome::TimedOut => {
                tally.timed_out += 1;
                tally.first_error.get_or_insert_with(|| "timed out".into());
            }
        }
        let next = start + INTERVAL;
        if next >= until {
            break;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    tally
}

/// Where a session stands after a message: finished, or still going.
fn settled(s: &mut Session, start: Instant) -> Option<Outcome> {
    match s.phase {
        Phase::Done => Some(Outcome::Done(start.elapsed())),
        Phase::Failed => Some(Outcome::Failed(
            s.error.take().unwrap_or_else(|| "failed".into()),
        )),
        _ => None,
    }
}

/// A UDP socket on 127.0.0.1 with a port not used for a while, connected to `server`.
fn legit_udp_socket(server: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let mut last = None;
    for _ in 0..64 {
        let n = NEXT_LEGIT_PORT.fetch_add(1, Ordering::Relaxed) % LEGIT_PORTS;
        // Below 32768 and fixed: fits in u16.
        let port = (LEGIT_PORT_BASE + n) as u16;
        match UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
            Ok(s) => {
                s.connect(server)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

fn udp_cycle(server: SocketAddrV4, s: &mut Session, start: Instant) -> Outcome {
    let deadline = start + TIMEOUT;
    let sock = match legit_udp_socket(server) {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(format!("UDP socket: {e}")),
    };
    if let Err(e) = sock.send(s.begin(start)) {
        return Outcome::Failed(format!("UDP send: {e}"));
    }
    let mut buf = [0u8; 1500];
    loop {
        if let Some(o) = settled(s, start) {
            return o;
        }
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut;
        }
        // A lost request goes again after 500 ms, as a real client's would.
        if let Some(req) = s.on_timer(now) {
            let _ = sock.send(req);
        }
        // Wake often enough for the retransmission timer.
        let wait = (deadline - now).min(Duration::from_millis(50));
        if let Err(e) = sock.set_read_timeout(Some(wait)) {
            return Outcome::Failed(format!("UDP: {e}"));
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(req) = s.on_datagram(&buf[..n], Instant::now()) {
                    let _ = sock.send(req);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Outcome::Failed(format!("UDP receive: {e}")),
        }
    }
}

/// Length of the STUN message at the start of `buf`, once all of it is there.
fn stun_frame(buf: &[u8]) -> Option<usize> {
    let len = 20 + usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]));
    (buf.len() >= len).then_some(len)
}

fn tcp_outcome(what: &str, e: &std::io::Error) -> Outcome {
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        Outcome::TimedOut
    } else {
        Outcome::Failed(format!("TCP {what}: {e}"))
    }
}

fn tcp_cycle(server: SocketAddrV4, s: &mut Session, start: Instant) -> Outcome {
    let deadline = start + TIMEOUT;
    let mut stream = match TcpStream::connect_timeout(&SocketAddr::V4(server), TIMEOUT) {
        Ok(x) => x,
        Err(e) => return tcp_outcome("connect", &e),
    };
    let _ = stream.set_nodelay(true);
    let send = |stream: &mut TcpStream, bytes: &[u8]| {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .and_then(|()| stream.write_all(bytes))
    };
    if let Err(e) = send(&mut stream, s.begin(start)) {
        return tcp_outcome("write", &e);
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1500];
    loop {
        if let Some(o) = settled(s, start) {
            return o;
        }
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut;
        }
        // No retransmission over TCP (RFC 8489 §6.2.2): wait for the answer.
        if let Err(e) = stream.set_read_timeout(Some(deadline - now)) {
            return Outcome::Failed(format!("TCP: {e}"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Outcome::Failed("TCP: closed by the server".into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Some(len) = stun_frame(&buf) {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if let Some(req) = s.on_datagram(&msg, Instant::now()) {
                        if let Err(e) = send(&mut stream, req) {
                            return tcp_outcome("write", &e);
                        }
                    }
                }
            }
            Err(e) => return tcp_outcome("read", &e),
        }
    }
}

/// Gives the calling attacker thread the lowest priority: it shares the generator's CPU with
/// the legitimate clients, whose latency should be the server's, not this machine's.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; failure only leaves the priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

/// An Allocate request without credentials (REQUESTED-TRANSPORT UDP only).
fn unauthenticated_allocate() -> Vec<u8> {
    let mut m = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(b"icegateflood");
    m.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    m
}

/// Floods `server` with unauthenticated Allocates until `stop`; returns the requests sent
/// and the seconds it ran.
fn flood(server: SocketAddrV4, stop: &AtomicBool) -> Result<(u64, f64), BenchError> {
    lower_priority();
    let mut socks = Vec::new();
    for ip in ATTACKER_IPS {
        for _ in 0..FLOOD_SOCKETS / ATTACKER_IPS.len() {
            let s = UdpSocket::bind(SocketAddrV4::new(ip, 0))
                .map_err(|e| BenchError::io("bind flood socket", e))?;
            s.connect(server)
                .and_then(|()| s.set_nonblocking(true))
                .map_err(|e| BenchError::io("flood socket", e))?;
            socks.push(s);
        }
    }
    let mut msg = unauthenticated_allocate();
    let mut sent = 0u64;
    let mut serial = 0u32;
    let t = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for s in &socks {
            serial = serial.wrapping_add(1);
            msg[16..20].copy_from_slice(&serial.to_be_bytes());
            // Full buffers and ICMP refusals do not stop a flood; the answers are never read.
            if s.send(&msg).is_ok() {
                sent += 1;
            }
        }
    }
    Ok((sent, t.elapsed().as_secs_f64()))
}

/// What the slowloris attacker saw.
#[derive(Debug, Default)]
struct Slowloris {
    /// Stalled connections open, sampled once a second.
    held: Vec<usize>,
    /// Connections the server closed, reset or refused.
    closed: u64,
}

/// One slowloris connection.
#[derive(Default)]
struct Slot {
    stream: Option<mio::net::TcpStream>,
    stalled: bool,
    closed_at: Option<Instant>,
}

/// A non-blocking connect from `ip` to `server`.
fn stall_connect(ip: Ipv4Addr, server: SocketAddrV4) -> std::io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddrV4::new(ip, 0).into())?;
    match s.connect(&SocketAddrV4::into(server)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

/// Keeps up to `count` TCP connections to `server` that each sent one byte of a STUN header
/// and nothing after, until `stop`.
fn slowloris(
    server: SocketAddrV4,
    count: usize,
    stop: &AtomicBool,
) -> Result<Slowloris, BenchError> {
    lower_priority();
    let mut poll = Poll::new().map_err(|e| BenchError::io("epoll", e))?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Slot> = (0..count).map(|_| Slot::default()).collect();
    let mut out = Slowloris::default();
    let mut next_sample = Instant::now() + Duration::from_secs(1);
    let mut scratch = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.stream.is_some() || slot.closed_at.is_some_and(|t| now - t < RECONNECT_AFTER) {
                continue;
            }
            let opened =
                stall_connect(ATTACKER_IPS[i % ATTACKER_IPS.len()], server).and_then(|mut st| {
                    poll.registry()
                        .register(&mut st, Token(i), Interest::READABLE | Interest::WRITABLE)
                        .map(|()| st)
                });
            match opened {
                Ok(st) => slot.stream = Some(st),
                // Out of ports or descriptors: try again later.
                Err(_) => slot.closed_at = Some(now),
            }
        }
        match poll.poll(&mut events, Some(Duration::from_millis(20))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(BenchError::io("epoll_wait", e)),
        }
        for ev in events.iter() {
            let Some(slot) = slots.get_mut(ev.token().0) else {
                continue;
            };
            let Some(st) = slot.stream.as_mut() else {
                continue;
            };
            let mut closed = ev.is_error();
            if !closed && ev.is_writable() && !slot.stalled {
                // Connected (no pending error): the first byte of a STUN header, then stall.
                closed = !matches!(st.take_error(), Ok(None));
                if !closed {
                    match st.write(&[0x00]) {
                        Ok(1) => slot.stalled = true,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => closed = true,
                    }
                }
            }
            if !closed && (ev.is_readable() || ev.is_read_closed()) {
                loop {
                    match st.read(&mut scratch) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            if closed {
                let _ = poll.registry().deregister(st);
                slot.stream = None;
                slot.stalled = false;
                slot.closed_at = Some(Instant::now());
                out.closed += 1;
            }
        }
        if Instant::now() >= next_sample {
            out.held.push(slots.iter().filter(|s| s.stalled).count());
            next_sample += Duration::from_secs(1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_quantiles() {
        let m = unauthenticated_allocate();
        assert_eq!(stun_frame(&m), Some(28));
        assert_eq!(stun_frame(&m[..27]), None);
        assert_eq!(stun_frame(&m[..3]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert!(quantile(&[], 0.5).is_nan());
        let a = Figure {
            transport: Transport::Udp,
            stat: Stat::P50,
            under_attack: false,
        };
        let b = Figure {
            under_attack: true,
            ..a
        };
        assert!(a < b);
        assert_eq!(b.label(), "UDP allocation p50 ms, under attack");
    }
}
