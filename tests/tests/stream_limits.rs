//! TCP/TLS connections cannot pile up: a slowloris (connections that send one byte of a frame
//! and stall, over TCP or after a TLS handshake) is closed after the partial-frame deadline,
//! a source beyond
//! `max-connections-per-ip` is refused at accept, a silent connection is closed after
//! `stream-idle-timeout`, and meanwhile an authenticated client still allocates over TCP.
//! The descriptor budget is checked against the relay's own RLIMIT_NOFILE.

use icegate_tests::stun::{
    assert_success, decode, encode, request, requested_transport_udp, stream_transact, TurnClient,
    ALLOCATE, BINDING, REFRESH,
};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// The attacker's source address: another loopback address, so that the per-IP cap it hits
/// is not the one the legitimate client (127.0.0.1) counts under.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A TCP connection to `to` from `from` (port chosen by the kernel).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .expect("bind");
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    TcpStream::from(fd)
}

/// Whether the relay has closed `stream` (end of stream or reset), without waiting; what it
/// sent before (a TLS close_notify) is read and dropped.
fn is_closed(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() != ErrorKind::WouldBlock,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// Allocates over TCP from 127.0.0.1 as alice; returns the connection and the client that
/// signs its requests.
fn allocate_over_tcp(relay: &Relay) -> (TcpStream, TurnClient) {
    let mut stream = TcpStream::connect(relay.tcp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // The UDP helper only builds and signs messages here; the bytes go over TCP.
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let challenge = request(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(&mut stream, &encode(&challenge));
    client.learn(&decode(&raw, None).unwrap());
    let allocate = client.build_authed(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(&mut stream, &encode(&allocate));
    let resp = decode(&raw, client.key().as_ref()).unwrap();
    assert_success(&resp, "allocate over TCP");
    (stream, client)
}

fn metric(relay: &Relay, name: &str, labels: &[(&str, &str)]) -> f64 {
    relay.metrics().sum(name, labels)
}

#[test]
fn slowloris_is_closed_and_capped_while_a_client_allocates_over_tcp() {
    const CAP: usize = 30;
    const EXTRA: usize = 10;
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--max-connections-per-ip".into(), CAP.to_string()],
            ..RelayConfig::default()
        },
    );
    let started = Instant::now();
    let attackers: Vec<TcpStream> = (0..CAP + EXTRA)
        .map(|_| {
            let mut s = connect_from(ATTACKER, relay.tcp_addr());
            // One byte of a STUN header: a frame begins and never completes.
            s.write_all(&[0x00]).unwrap();
            s
        })
        .collect();

    // Beyond the cap, connections are closed at once and counted.
    let refused = wait_for(Duration::from_secs(3), Duration::from_millis(50), || {
        (metric(
            &relay,
            "icegate_relay_stream_refused_total",
            &[("reason", "per_ip")],
        ) >= EXTRA as f64)
            .then_some(())
    });
    assert!(refused.is_some(), "the per-IP cap refused nothing");
    let closed_at_once = wait_for(Duration::from_secs(2), Duration::from_millis(50), || {
        let closed = attackers.iter().filter(|s| is_closed(s)).count();
        (closed >= EXTRA).then_some(closed)
    });
    assert_eq!(
        closed_at_once,
        Some(EXTRA),
        "exactly the connections beyond max-connections-per-ip are closed at accept"
    );

    // Meanwhile a real client allocates over TCP, promptly.
    let t = Instant::now();
    let (mut legit, client) = allocate_over_tcp(&relay);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "allocating took {:?}",
        t.elapsed()
    );

    // The stalled ones are closed by the partial-frame deadline (default 5 s), not before.
    assert!(
        attackers.iter().filter(|s| is_closed(s)).count() == EXTRA
            || started.elapsed() >= Duration::from_secs(4),
        "stalled connections closed before the frame deadline"
    );
    let all_closed = wait_for(Duration::from_secs(9), Duration::from_millis(100), || {
        attackers.iter().all(is_closed).then_some(started.elapsed())
    });
    let took = all_closed.expect("stalled connections still open 9 s after their first byte");
    assert!(took >= Duration::from_secs(4), "closed after {took:?}");
    assert!(
        metric(
            &relay,
            "icegate_relay_stream_timeouts_total",
            &[("reason", "frame")]
        ) >= CAP as f64
    );

    // The client's connection, with its allocation, is untouched and still answers.
    let refresh = client.build_authed(REFRESH, &[]);
    let raw = stream_transact(&mut legit, &encode(&refresh));
    assert_success(
        &decode(&raw, client.key().as_ref()).unwrap(),
        "refresh over the same TCP connection",
    );
    // And the attacker's address has its places back.
    let mut again = connect_from(ATTACKER, relay.tcp_addr());
    again
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let raw = stream_transact(&mut again, &encode(&request(BINDING, &[])));
    assert_success(&decode(&raw, None).unwrap(), "binding after the slowloris");
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout_but_one_with_an_allocation_stays() {
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--stream-idle-timeout".into(), "2".into()],
            ..RelayConfig::default()
        },
    );
    let started = Instant::now();
    let silent = TcpStream::connect(relay.tcp_addr()).unwrap();
    let mut answered = TcpStream::connect(relay.tcp_addr()).unwrap();
    answered
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let raw = stream_transact(&mut answered, &encode(&request(BINDING, &[])));
    assert_success(&decode(&raw, None).unwrap(), "binding over TCP");
    let (mut allocated, client) = allocate_over_tcp(&relay);

    let closed = wait_for(Duration::from_secs(6), Duration::from_millis(100), || {
        (is_closed(&silent) && is_closed(&answered)).then_some(started.elapsed())
    });
    let took = closed.expect("connections without an allocation still open after 6 s");
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");
    assert!(
        metric(
            &relay,
            "icegate_relay_stream_timeouts_total",
            &[("reason", "idle")]
        ) >= 2.0
    );
    assert!(
        !is_closed(&allocated),
        "the allocation's connection was closed"
    );
    let refresh = client.build_authed(REFRESH, &[]);
    let raw = stream_transact(&mut allocated, &encode(&refresh));
    assert_success(
        &decode(&raw, client.key().as_ref()).unwrap(),
        "refresh after the idle timeout",
    );
}

/// The soft RLIMIT_NOFILE of a process, from /proc.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files in /proc/PID/limits");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn stream_connections_get_only_the_descriptors_relay_sockets_leave() {
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--workers".into(), "2".into()],
            ..RelayConfig::default()
        },
    );
    let (min, max) = relay.ports.relay_range();
    let relay_sockets = u64::from(max - min) + 1;
    let nofile = soft_nofile(relay.pid().expect("pid"));
    // The reserve of relay/src/limits.rs: 128, and 16 per worker.
    let fixed = 128 + 16 * 2;
    let budget = metric(&relay, "icegate_relay_stream_connection_budget", &[]);
    assert_eq!(
        budget as u64,
        (nofile - fixed - relay_sockets).max((nofile - fixed) / 4),
        "RLIMIT_NOFILE {nofile}, {relay_sockets} relay ports"
    );
}

/// A TLS client of the relay's self-signed certificate (written in the relay's directory).
fn tls_connect(relay: &Relay) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(relay.dir().join("cert.pem")).expect("read cert");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body is base64");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("trust the test certificate");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(relay.tls_addr()).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// TLS connections that finish the handshake and then send one byte of a frame are closed
/// by the partial-frame deadline too, and a TLS client still allocates meanwhile.
#[test]
fn stalled_tls_connections_are_closed_after_the_frame_deadline() {
    const STALLED: usize = 20;
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            ..RelayConfig::default()
        },
    );
    let started = Instant::now();
    let stalled: Vec<_> = (0..STALLED)
        .map(|_| {
            let mut tls = tls_connect(&relay);
            // Completes the handshake, then one byte of a STUN header in a record.
            tls.write_all(&[0x00]).unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();

    let mut client_tls = tls_connect(&relay);
    client_tls
        .sock
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let raw = stream_transact(&mut client_tls, &encode(&request(BINDING, &[])));
    assert_success(
        &decode(&raw, None).unwrap(),
        "binding over TLS next to stalled connections",
    );

    let all_closed = wait_for(Duration::from_secs(9), Duration::from_millis(100), || {
        stalled
            .iter()
            .all(|s| is_closed(&s.sock))
            .then_some(started.elapsed())
    });
    let took = all_closed.expect("stalled TLS connections still open after 9 s");
    assert!(took >= Duration::from_secs(4), "closed after {took:?}");
    assert!(
        metric(
            &relay,
            "icegate_relay_stream_timeouts_total",
            &[("reason", "frame")]
        ) >= STALLED as f64
    );
}
