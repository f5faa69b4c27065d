//! Every resource attack at once, while real clients allocate: a slowloris over TCP, stalled
//! TLS connections (half mid-handshake, half after it), a flood of unauthenticated Allocates
//! over UDP and a descriptor-starvation flood of idle TCP connections from many addresses all
//! run against one relay, and meanwhile authenticated clients allocate over UDP, TCP and TLS
//! within 3 s each, again and again, and the relay's memory stays bounded.
//!
//! Each attack comes from loopback addresses of its own (127.0.0.2 and up, 127.0.1.x for the
//! descriptor flood), the real clients from 127.0.0.1, so the per-source limits that stop an
//! attacker are not the ones the clients count under. The test also checks that every attack
//! reached the limit meant to stop it (the counters in `/metrics`), so that it cannot pass
//! because an attack silently did nothing.
//!
//! The relay runs with RLIMIT_NOFILE at [`NOFILE`] through `server::limit_relay_nofile` (as
//! `descriptor_budget.rs` does, and for the same reason a binary of its own), so that the
//! descriptor flood can fill the stream budget with a few hundred connections.
#![deny(unsafe_code)]

use icegate_tests::streams::{
    allocate_over, is_closed, tls_client_config, tls_over, try_connect_from,
};
use icegate_tests::stun::{assert_success, encode, request, requested_transport_udp, TurnClient};
use icegate_tests::stun::{ALLOCATE, REFRESH};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The relay's descriptor limit: its stream budget comes to a few hundred connections.
const NOFILE: u64 = 900;
/// How long a real client may take to allocate, whatever the transport.
const ALLOCATE_WITHIN: Duration = Duration::from_secs(3);
/// Rounds of real allocations (one per transport each), spread over the attack.
const ROUNDS: usize = 5;

const SLOWLORIS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const TLS_STALL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const UDP_FLOOD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

/// Starts `icegate-relay` with RLIMIT_NOFILE at [`NOFILE`], TLS on and its default limits.
fn relay_with_nofile() -> Relay {
    // This binary's only test: no other relay reads the variable the wrapper is chosen by.
    let wrapper = icegate_tests::server::limit_relay_nofile(NOFILE);
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            ..RelayConfig::default()
        },
    );
    // The wrapper is only needed to start the relay.
    drop(wrapper);
    relay
}

/// The attacks' threads, the flag that stops them, and what each saw the relay close.
#[derive(Default)]
struct Attacks {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    closed: Closed,
}

/// Attack connections the relay closed, per attack: counted on the attacker's side, so that
/// the test sees each attack answered whatever the relay's counters say.
#[derive(Default, Clone)]
struct Closed {
    slowloris: Arc<AtomicU64>,
    in_handshake: Arc<AtomicU64>,
    after_handshake: Arc<AtomicU64>,
    idle: Arc<AtomicU64>,
}

/// Drops the connections `is_closed` says the relay closed, counting them in `closed`.
fn forget_closed(open: &mut Vec<TcpStream>, closed: &AtomicU64) {
    let before = open.len();
    open.retain(|s| !is_closed(s));
    closed.fetch_add((before - open.len()) as u64, Ordering::Relaxed);
}

impl Attacks {
    fn spawn(&mut self, f: impl FnOnce(Closed, Arc<AtomicBool>) + Send + 'static) {
        let stop = Arc::clone(&self.stop);
        let closed = self.closed.clone();
        self.threads
            .push(std::thread::spawn(move || f(closed, stop)));
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("an attack thread panicked");
        }
    }
}

/// Keeps `n` connections from `from` open that each sent one byte of a STUN header (a frame
/// begins and never completes), opening new ones as the relay closes them.
fn slowloris(relay_tcp: std::net::SocketAddr, n: usize, closed: &AtomicU64, stop: &AtomicBool) {
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        forget_closed(&mut open, closed);
        while open.len() < n {
            match try_connect_from(SLOWLORIS, relay_tcp) {
                Ok(mut s) => {
                    let _ = s.write_all(&[0x00]);
                    open.push(s);
                }
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unauthenticated Allocates from [`UDP_FLOOD`], `per_second` of them from 16 source ports,
/// each with a fresh transaction ID (as a flood of distinct clients would send).
fn udp_flood(relay_udp: std::net::SocketAddr, per_second: u32, stop: &AtomicBool) {
    let sockets: Vec<UdpSocket> = (0..16)
        .map(|_| UdpSocket::bind((UDP_FLOOD, 0)).unwrap())
        .collect();
    let allocate = encode(&request(ALLOCATE, &[requested_transport_udp()]));
    let mut packet = allocate.clone();
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start.elapsed().as_secs_f64() * f64::from(per_second);
        while (sent as f64) < due {
            packet[8..16].copy_from_slice(&sent.to_be_bytes());
            let _ = sockets[sent as usize % sockets.len()].send_to(&packet, relay_udp);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Keeps `total` silent TCP connections open from 127.0.1.1, 127.0.1.2, … (`per_address`
/// each, under the per-IP cap), opening new ones as the relay closes them: more than the
/// relay has room for, all the time.
fn descriptor_flood(
    relay_tcp: std::net::SocketAddr,
    total: usize,
    per_address: usize,
    closed: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut held = Vec::with_capacity(total);
    let mut next = 0usize;
    while !stop.load(Ordering::Relaxed) {
        forget_closed(&mut held, closed);
        while held.len() < total {
            let from = Ipv4Addr::new(127, 0, 1, 1 + (next / per_address % 200) as u8);
            next += 1;
            match try_connect_from(from, relay_tcp) {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one real allocation took, or why it failed.
fn timed(what: &str, f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    let took = t.elapsed();
    assert!(
        took <= ALLOCATE_WITHIN,
        "{what} took {took:?} under attack (limit {ALLOCATE_WITHIN:?})"
    );
    took
}

/// Allocates over UDP as alice from 127.0.0.1, then frees the allocation.
fn allocate_udp(relay: &Relay) {
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    assert_success(&client.allocate(), "UDP allocation under attack");
    client.deallocate();
}

/// Allocates over a new TCP connection from 127.0.0.1, then frees it.
fn allocate_tcp(relay: &Relay) {
    let mut tcp = TcpStream::connect(relay.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(ALLOCATE_WITHIN)).unwrap();
    let client = allocate_over(relay, &mut tcp);
    free_over(&client, &mut tcp);
}

/// Allocates over a new TLS connection from 127.0.0.1, then frees it.
fn allocate_tls(relay: &Relay, config: &Arc<rustls::ClientConfig>) {
    let tcp = TcpStream::connect(relay.tls_addr()).unwrap();
    tcp.set_read_timeout(Some(ALLOCATE_WITHIN)).unwrap();
    let mut tls = tls_over(config, tcp);
    let client = allocate_over(relay, &mut tls);
    free_over(&client, &mut tls);
}

/// Refresh with lifetime 0 over the stream the allocation was made on.
fn free_over<S: std::io::Read + Write>(client: &TurnClient, stream: &mut S) {
    use icegate_tests::stun::{decode, stream_transact};
    let lifetime: stun_rs::StunAttribute = stun_rs::attributes::turn::LifeTime::new(0).into();
    let refresh = client.build_authed(REFRESH, &[lifetime]);
    let raw = stream_transact(stream, &encode(&refresh));
    assert_success(
        &decode(&raw, client.key().as_ref()).unwrap(),
        "refresh to 0",
    );
}

#[test]
fn real_clients_allocate_over_udp_tcp_and_tls_while_every_attack_runs_at_once() {
    let relay = relay_with_nofile();
    let rss_before = relay.rss_kib();
    let budget = relay
        .metrics()
        .sum("icegate_relay_stream_connection_budget", &[]) as usize;
    assert!(
        (200..NOFILE as usize).contains(&budget),
        "stream budget {budget} with RLIMIT_NOFILE {NOFILE}"
    );

    let mut attacks = Attacks::default();
    let tcp = relay.tcp_addr();
    // Past the per-IP cap (128), so that it refuses some at every refill.
    attacks.spawn(move |closed, stop| slowloris(tcp, 160, &closed.slowloris, &stop));
    let config = tls_client_config(&relay);
    let tls = relay.tls_addr();
    attacks.spawn(move |closed, stop| tls_stall(tls, config, 100, &closed, &stop));
    let udp = relay.udp_addr();
    attacks.spawn(move |_, stop| udp_flood(udp, 20_000, &stop));
    // More idle connections than the whole budget, 100 per address.
    let flood = budget + 200;
    attacks.spawn(move |closed, stop| descriptor_flood(tcp, flood, 100, &closed.idle, &stop));

    // The descriptor flood has filled the budget before the real clients start.
    // (Connections in a TLS handshake hold a place too, but are not yet in the
    // `icegate_relay_stream_connections` gauge: the budget shows full by what it turns away.)
    let full = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let m = relay.metrics();
        let turned_away = m.sum(
            "icegate_relay_stream_refused_total",
            &[("reason", "descriptors")],
        ) + m.sum("icegate_relay_stream_evicted_total", &[]);
        (turned_away > 0.0).then_some(())
    });
    assert!(
        full.is_some(),
        "the attacks never filled the stream budget of {budget}"
    );

    let tls_config = tls_client_config(&relay);
    let mut rss_max = relay.rss_kib();
    let mut took = Vec::new();
    for round in 0..ROUNDS {
        took.push((
            "udp",
            timed(&format!("UDP allocation {round}"), || allocate_udp(&relay)),
        ));
        took.push((
            "tcp",
            timed(&format!("TCP allocation {round}"), || allocate_tcp(&relay)),
        ));
        took.push((
            "tls",
            timed(&format!("TLS allocation {round}"), || {
                allocate_tls(&relay, &tls_config)
            }),
        ));
        rss_max = rss_max.max(relay.rss_kib());
        std::thread::sleep(Duration::from_secs(2));
    }
    rss_max = rss_max.max(relay.rss_kib());
    let m = relay.metrics();
    let attacks_closed = attacks.closed.clone();
    attacks.stop();
    let closed = |what: &Arc<AtomicU64>| what.load(Ordering::Relaxed);

    for (transport, t) in &took {
        eprintln!("{transport}: allocated in {:.1} ms", t.as_secs_f64() * 1e3);
    }
    eprintln!(
        "RSS {rss_before} KiB before, at most {rss_max} KiB under attack; stream budget {budget}"
    );

    // Every attack met the limit meant for it: the relay closed connections of each kind
    // (by a deadline or to make room), refused the slowloris's excess, evicted idle
    // connections to let the real clients in, and rate-limited the flood.
    eprintln!(
        "closed by the relay: slowloris {}, TLS in handshake {}, TLS after it {}, idle {}",
        closed(&attacks_closed.slowloris),
        closed(&attacks_closed.in_handshake),
        closed(&attacks_closed.after_handshake),
        closed(&attacks_closed.idle)
    );
    assert!(
        closed(&attacks_closed.slowloris) > 0,
        "no slowloris connection was closed"
    );
    assert!(
        closed(&attacks_closed.in_handshake) > 0,
        "no stalled TLS handshake was closed"
    );
    assert!(
        closed(&attacks_closed.after_handshake) > 0,
        "no TLS connection stalled after its handshake was closed"
    );
    assert!(
        closed(&attacks_closed.idle) > 0,
        "no idle connection of the flood was closed"
    );
    let refused = |reason| m.sum("icegate_relay_stream_refused_total", &[("reason", reason)]);
    assert!(
        refused("per_ip") > 0.0,
        "the slowloris never hit the per-IP cap"
    );
    let evicted = m.sum("icegate_relay_stream_evicted_total", &[]);
    assert!(evicted > 0.0, "the relay was never full");
    let limited = m.sum("icegate_relay_rate_limited_total", &[]);
    assert!(
        limited > 1000.0,
        "the flood was not rate-limited ({limited})"
    );
    eprintln!(
        "evicted {evicted}, rate-limited {limited}, refused per IP {}",
        refused("per_ip")
    );

    // Memory is bounded by the budget: a generous 64 KiB per connection it allows (a debug
    // build, TLS sessions among them; a release build measures 8 to 18 KiB) plus 32 MiB for
    // the rest.
    let bound = rss_before + budget as u64 * 64 + 32 * 1024;
    assert!(
        rss_max <= bound,
        "RSS {rss_max} KiB under attack, bound {bound} KiB ({rss_before} KiB before)"
    );
}

/// Keeps `n` TLS connections to `addr` from [`TLS_STALL`] stalled: half stop in the
/// handshake after the first bytes of a ClientHello record, half finish it and then send one
/// byte of a frame.
fn tls_stall(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    n: usize,
    closed: &Closed,
    stop: &AtomicBool,
) {
    let mut in_handshake: Vec<TcpStream> = Vec::new();
    let mut after_handshake: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        forget_closed(&mut in_handshake, &closed.in_handshake);
        forget_closed(&mut after_handshake, &closed.after_handshake);
        while in_handshake.len() < n / 2 {
            let Ok(mut s) = try_connect_from(TLS_STALL, addr) else {
                break;
            };
            // A handshake record's header and nothing more.
            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00]);
            in_handshake.push(s);
        }
        while after_handshake.len() < n / 2 && !stop.load(Ordering::Relaxed) {
            let Ok(tcp) = try_connect_from(TLS_STALL, addr) else {
                break;
            };
            tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut tls = tls_over(&config, tcp);
            if tls.write_all(&[0x00]).and_then(|()| tls.flush()).is_err() {
                break;
            }
            let (_, tcp) = tls.into_parts();
            after_handshake.push(tcp);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
