//! TCP/TLS connections cannot pile up: a slowloris (connections that send one byte of a frame
//! and stall, over TCP or after a TLS handshake) is closed after the partial-frame deadline,
//! a source beyond
//! `max-connections-per-ip` is refused at accept, a silent connection is closed after
//! `stream-idle-timeout`, and meanwhile an authenticated client still allocates over TCP.
//! The descriptor budget is checked against the relay's own RLIMIT_NOFILE.
#![deny(unsafe_code)]

use icegate_tests::streams::{allocate_over_tcp, connect_from, is_closed, tls_connect};
use icegate_tests::stun::{
    assert_success, decode, encode, request, stream_transact, BINDING, REFRESH,
};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

/// The attacker's source address: another loopback address, so that the per-IP cap it hits
/// is not the one the legitimate client (127.0.0.1) counts under.
const ATTACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

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
