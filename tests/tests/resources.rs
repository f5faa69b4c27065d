//! Ports and sockets come back the moment an allocation ends: Refresh with lifetime 0, or the
//! end of a TCP client's connection (RFC 8656 §3.2: a stream allocation dies with its
//! connection). Idle TCP and TLS connections of the relay, and idle WebSocket sessions of
//! icegate-signal, cost little memory.
#![deny(unsafe_code)]

use icegate_tests::dtls::dtls_connect;
use icegate_tests::streams::{tls_client_config, tls_over};
use icegate_tests::stun::{assert_success, stream_transact, xor_relayed, TurnClient};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

fn ports_in_use(relay: &Relay) -> f64 {
    relay.metrics().sum("icegate_relay_ports_in_use", &[])
}

/// True once the test itself can bind `addr`, i.e. the relay closed its socket.
fn port_is_free(addr: SocketAddr) -> bool {
    wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        UdpSocket::bind(addr).ok().map(|_| ())
    })
    .is_some()
}

#[test]
fn refresh_to_zero_frees_port_and_socket_at_once() {
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let resp = client.allocate();
    assert_success(&resp, "allocate");
    let relayed = xor_relayed(&resp).expect("XOR-RELAYED-ADDRESS");
    assert_eq!(ports_in_use(&relay), 1.0);
    assert!(
        UdpSocket::bind(relayed).is_err(),
        "the relay must hold a socket on its relayed address {relayed}"
    );

    assert_success(&client.deallocate(), "refresh lifetime 0");
    assert_eq!(ports_in_use(&relay), 0.0, "ledger still counts the port");
    assert!(
        port_is_free(relayed),
        "socket on {relayed} still open after Refresh(0)"
    );
    let active = relay.metrics().sum("icegate_relay_allocations_active", &[]);
    assert_eq!(active, 0.0);
}

#[test]
fn closing_a_tcp_connection_ends_its_allocation() {
    use icegate_tests::stun::{decode, encode, requested_transport_udp, ALLOCATE};
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    let mut stream = TcpStream::connect(relay.tcp_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // The UDP helper only builds and signs messages here; the bytes go over TCP.
    let mut client = TurnClient::new(relay.udp_addr(), "alice", "secret");
    let challenge = icegate_tests::stun::request(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(&mut stream, &encode(&challenge));
    client.learn(&decode(&raw, None).unwrap());
    let request = client.build_authed(ALLOCATE, &[requested_transport_udp()]);
    let raw = stream_transact(&mut stream, &encode(&request));
    let resp = decode(&raw, client.key().as_ref()).unwrap();
    assert_success(&resp, "allocate over TCP");
    let relayed = xor_relayed(&resp).unwrap();
    assert_eq!(
        relay
            .metrics()
            .sum("icegate_relay_allocations_active", &[("transport", "tcp")]),
        1.0
    );

    drop(stream);
    let gone = wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        (ports_in_use(&relay) == 0.0).then_some(())
    });
    assert!(gone.is_some(), "allocation outlived its TCP connection");
    assert!(
        port_is_free(relayed),
        "socket on {relayed} still open after disconnect"
    );
}

/// Idle TCP connections cost little: no read buffer until a frame is split across reads,
/// and what a flood of them took is given back when they close. A release build measures
/// about 4 KiB each (docs/operations.md, "Limits"); the bound here is generous, for debug
/// builds and allocator noise, and far below the 64 KiB buffer each once had.
#[test]
fn idle_tcp_connections_cost_little_memory_and_give_it_back() {
    const CONNECTIONS: usize = 1000;
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--max-connections-per-ip".into(), "0".into()],
            ..RelayConfig::default()
        },
    );
    let before = relay.rss_kib();
    let streams: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            let mut s = TcpStream::connect(relay.tcp_addr()).unwrap();
            // Half say nothing, half start a frame (within the 5 s frame deadline).
            if i % 2 == 0 {
                s.write_all(&[0x00]).unwrap();
            }
            s
        })
        .collect();
    let open = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let n = relay.metrics().sum("icegate_relay_stream_connections", &[]);
        (n >= CONNECTIONS as f64).then_some(())
    });
    assert!(
        open.is_some(),
        "the relay did not take {CONNECTIONS} connections"
    );
    let with = relay.rss_kib();
    let per_connection = with.saturating_sub(before) as f64 / CONNECTIONS as f64;
    eprintln!("RSS {before} KiB -> {with} KiB: {per_connection:.1} KiB per idle connection");
    assert!(
        per_connection <= 24.0,
        "{per_connection:.1} KiB per idle TCP connection ({before} -> {with} KiB)"
    );

    drop(streams);
    let given_back = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = relay.rss_kib();
        (now <= before + (with - before) / 4).then_some(now)
    });
    assert!(
        given_back.is_some(),
        "RSS {} KiB after the connections closed (was {before} KiB before, {with} KiB with them)",
        relay.rss_kib()
    );
}

/// Idle TLS connections cost little more than TCP ones: past the handshake the relay keeps
/// the session (its keys, and rustls's 4 KiB read buffer), but not the stream twice, nor a
/// 16 KiB buffer for a frame that stopped after its first byte. A release build measures
/// 12.2 KiB each (18.6 KiB before; docs/operations.md, "Limits"; the target is at most
/// 18 KiB); the bound here is generous, for debug builds and allocator noise.
#[test]
fn idle_tls_connections_cost_little_memory_and_give_it_back() {
    const CONNECTIONS: usize = 1000;
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            icegate_args: [
                "--max-connections-per-ip",
                "0",
                // Making 1,000 handshakes takes a debug build longer than the default 5 s a
                // started frame may take.
                "--stream-frame-timeout",
                "300",
                "--stream-idle-timeout",
                "300",
            ]
            .map(String::from)
            .to_vec(),
            ..RelayConfig::default()
        },
    );
    let config = tls_client_config(&relay);
    let before = relay.rss_kib();
    let streams: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let mut tls = tls_over(&config, TcpStream::connect(relay.tls_addr()).unwrap());
            // Completes the handshake, then one byte of a STUN header in a record.
            tls.write_all(&[0x00]).unwrap();
            tls.flush().unwrap();
            tls
        })
        .collect();
    let open = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        let n = relay.metrics().sum("icegate_relay_stream_connections", &[]);
        (n >= CONNECTIONS as f64).then_some(())
    });
    assert!(
        open.is_some(),
        "the relay did not take {CONNECTIONS} TLS connections"
    );
    // The last byte sent has been read too.
    std::thread::sleep(Duration::from_millis(300));
    let with = relay.rss_kib();
    let per_connection = with.saturating_sub(before) as f64 / CONNECTIONS as f64;
    eprintln!("RSS {before} KiB -> {with} KiB: {per_connection:.1} KiB per idle TLS connection");
    assert!(
        per_connection <= 32.0,
        "{per_connection:.1} KiB per idle TLS connection ({before} -> {with} KiB)"
    );

    drop(streams);
    // Less comes back than for TCP: the handshakes' short-lived allocations spread the
    // sessions over more of the heap, and only whole free pages go back.
    let given_back = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = relay.rss_kib();
        (now <= before + (with - before) / 2).then_some(now)
    });
    assert!(
        given_back.is_some(),
        "RSS {} KiB after the TLS connections closed (was {before} KiB before, {with} KiB with \
         them)",
        relay.rss_kib()
    );
}

#[test]
fn idle_dtls_sessions_cost_little_memory_and_give_it_back() {
    const SESSIONS: usize = 500;
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            icegate_args: [
                "--max-connections-per-ip",
                "0",
                "--rate-limit",
                "10000",
                "--stream-idle-timeout",
                "300",
            ]
            .map(String::from)
            .to_vec(),
            ..RelayConfig::default()
        },
    );
    let before = relay.rss_kib();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| dtls_connect(relay.tls_addr()).expect("DTLS handshake"))
        .collect();
    let open = relay.metrics().sum("icegate_relay_dtls_sessions", &[]);
    assert_eq!(open, SESSIONS as f64);
    let with = relay.rss_kib();
    let per_session = with.saturating_sub(before) as f64 / SESSIONS as f64;
    eprintln!("RSS {before} KiB -> {with} KiB: {per_session:.1} KiB per idle DTLS session");
    assert!(
        per_session <= 64.0,
        "{per_session:.1} KiB per idle DTLS session ({before} -> {with} KiB)"
    );
    // close_notify from each: the relay ends the sessions at once.
    for mut session in sessions {
        let _ = session.shutdown();
    }
    let closed = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let n = relay.metrics().sum("icegate_relay_dtls_sessions", &[]);
        (n == 0.0).then_some(())
    });
    assert!(closed.is_some(), "DTLS sessions left after close_notify");
    let given_back = wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
        let now = relay.rss_kib();
        (now <= before + (with - before) / 2).then_some(now)
    });
    assert!(
        given_back.is_some(),
        "RSS {} KiB after the DTLS sessions closed (was {before} KiB before, {with} KiB with \
         them)",
        relay.rss_kib()
    );
}

/// The resident memory of process `pid`, KiB.
fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Opens a WebSocket on icegate-signal's `/ws?QUERY` by hand (no client library, whose own
/// buffers would only cost this process memory) and, with `welcome`, waits for the session's
/// `welcome`.
fn open_signal_socket(addr: SocketAddr, query: &str, welcome: bool) -> TcpStream {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /ws{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let done = |seen: &[u8]| {
        let text = String::from_utf8_lossy(seen);
        let upgraded = text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n");
        upgraded && (!welcome || text.contains("\"welcome\""))
    };
    while !done(&seen) {
        let n = stream.read(&mut buf).expect("read the upgrade and welcome");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Idle signaling sessions cost little: tungstenite's read buffer is small (it was 128 KiB,
/// zero-filled on the first read, and an idle session cost 141 KB), nothing is buffered for
/// writing, the outbox's first block holds pointers rather than messages, and the connection
/// task holds no room for what it does only briefly. The benchmark measures 4.4–4.7 KB per
/// session and 1.4–3.2 KB per connection that has not said `hello` on a release build
/// (docs/operations.md, "Sizing icegate-signal"); this test measured 4.8 and 2.9 KiB on a
/// debug build. The bounds leave room for allocator
/// noise, and are low enough that a 4 KiB buffer per connection coming back would break them.
#[test]
fn idle_signal_sessions_cost_little_memory() {
    use icegate_tests::signal::{Signal, SignalConfig};
    const SESSIONS: usize = 2000;
    // Both ends of every connection are in this test: a descriptor each here and in the
    // server, which inherits the limit.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let want = (3 * SESSIONS as u64 + 200).min(hard);
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, want, hard)
        .expect("setrlimit");
    assert!(
        want >= 2 * SESSIONS as u64 + 100,
        "RLIMIT_NOFILE hard limit {hard} too low"
    );
    let signal = Signal::start(SignalConfig {
        args: vec!["--max-connections-per-ip".into(), "100000".into()],
        ..SignalConfig::default()
    });
    let pid = signal.pid();
    let addr = signal.addr();
    let active = |name: &str| signal.metrics().sum(name, &[]);

    let before = rss_kib_of(pid);
    let sessions: Vec<TcpStream> = (0..SESSIONS)
        .map(|i| open_signal_socket(addr, &format!("?name=idle{i}"), true))
        .collect();
    // The switchboard task updates the gauge after it opened the sessions.
    let all_open = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        (active("icegate_signal_sessions_active") == SESSIONS as f64).then_some(())
    });
    assert!(all_open.is_some(), "not every session is open");
    let with = rss_kib_of(pid);
    let per_session = with.saturating_sub(before) as f64 / SESSIONS as f64;
    eprintln!("RSS {before} KiB -> {with} KiB: {per_session:.2} KiB per idle session");
    assert!(
        per_session <= 8.0,
        "{per_session:.2} KiB per idle signal session ({before} -> {with} KiB)"
    );

    // Connections that never send `hello`, measured well within their 10 s hello deadline
    // (checked below: all of them still open after the reading).
    let bare: Vec<TcpStream> = (0..SESSIONS)
        .map(|_| open_signal_socket(addr, "", false))
        .collect();
    // The last upgrades' tasks have started reading.
    std::thread::sleep(Duration::from_millis(300));
    let with_bare = rss_kib_of(pid);
    assert_eq!(
        active("icegate_signal_connections_active"),
        (2 * SESSIONS) as f64,
        "every connection still open when RSS was read"
    );
    let per_bare = with_bare.saturating_sub(with) as f64 / SESSIONS as f64;
    eprintln!("RSS {with} KiB -> {with_bare} KiB: {per_bare:.2} KiB per connection without hello");
    assert!(
        per_bare <= 6.0,
        "{per_bare:.2} KiB per connection without hello ({with} -> {with_bare} KiB)"
    );
    drop((sessions, bare));
}
