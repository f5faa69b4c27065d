//! TCP connections cannot starve relay sockets of file descriptors: with RLIMIT_NOFILE at
//! 600, a flood of idle TCP connections fills the stream connection budget and no more (each
//! one beyond it takes the place of the oldest idle one, or is refused at accept with
//! `reason="descriptors"`), and UDP clients still allocate.
//!
//! The relay is started through a wrapper that sets its limit with `prlimit`; as root it also
//! drops CAP_SYS_RESOURCE (`setpriv`), which would otherwise let the relay raise its hard
//! limit past the test's. A binary of its own: the wrapper is chosen through an environment
//! variable, which must not reach other tests' relays.
#![deny(unsafe_code)]

use icegate_tests::stun::{assert_success, TurnClient};
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use std::net::TcpStream;
use std::time::Duration;

const NOFILE: u64 = 600;

#[test]
fn a_tcp_flood_cannot_take_the_descriptors_of_relay_sockets() {
    // This binary's only test: no other relay reads the variable the wrapper is chosen by.
    let _wrapper = icegate_tests::server::limit_relay_nofile(NOFILE);

    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec![
                "--workers".into(),
                "1".into(),
                "--max-connections-per-ip".into(),
                "0".into(),
            ],
            ..RelayConfig::default()
        },
    );
    let budget = relay
        .metrics()
        .sum("icegate_relay_stream_connection_budget", &[]) as usize;
    let (min, max) = relay.ports.relay_range();
    let relay_ports = usize::from(max - min) + 1;
    // 128 + 16 per worker kept for listeners and the like (relay/src/limits.rs).
    assert_eq!(budget, NOFILE as usize - 144 - relay_ports);

    // As many connections as the limit itself, which without the budget would leave no
    // descriptor for relay sockets: each one beyond the budget either evicts an older idle
    // one or, while too many evicted ones are still closing, is refused at accept.
    let extra = NOFILE as usize - budget;
    let flood: Vec<TcpStream> = (0..budget + extra)
        .map(|_| TcpStream::connect(relay.tcp_addr()).unwrap())
        .collect();
    let capped = wait_for(Duration::from_secs(5), Duration::from_millis(50), || {
        let m = relay.metrics();
        let refused = m.sum(
            "icegate_relay_stream_refused_total",
            &[("reason", "descriptors")],
        );
        let evicted = m.sum("icegate_relay_stream_evicted_total", &[]);
        let open = m.sum("icegate_relay_stream_connections", &[]);
        (refused + evicted >= extra as f64 && open == budget as f64).then_some((refused, evicted))
    });
    let (refused, evicted) = capped.expect("the flood was not capped by the descriptor budget");
    assert_eq!(
        (refused + evicted) as usize,
        extra,
        "connections beyond the budget: {refused} refused, {evicted} evicted"
    );
    let log = relay.log();
    assert!(
        log.contains("refusing TCP/TLS connections (descriptors") || log.contains("evicting"),
        "no log line says why connections are closed"
    );

    // Every relay port still finds its descriptor.
    let mut clients: Vec<TurnClient> = (0..relay_ports)
        .map(|_| TurnClient::new(relay.udp_addr(), "alice", "secret"))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_success(
            &client.allocate(),
            &format!("UDP allocation {i} during the flood"),
        );
    }
    drop(flood);
}
