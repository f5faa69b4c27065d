//! The limits on TCP/TLS connections follow the configuration file on SIGHUP: a lowered
//! `max-connections-per-ip` refuses the connection it accepted before, while those already
//! open stay, and a lowered `stream-idle-timeout` closes a silent newcomer sooner.
#![deny(unsafe_code)]

use icegate_tests::streams::is_closed;
use icegate_tests::{wait_for, Relay, RelayConfig, ServerKind};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn refused_per_ip(relay: &Relay) -> f64 {
    relay.metrics().sum(
        "icegate_relay_stream_refused_total",
        &[("reason", "per_ip")],
    )
}

fn open_connections(relay: &Relay) -> f64 {
    relay.metrics().sum("icegate_relay_stream_connections", &[])
}

#[test]
fn sighup_applies_new_stream_limits_to_new_connections_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        "max-connections-per-ip = 3\nstream-idle-timeout = 60\n",
    )
    .unwrap();
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--config".into(), config.to_str().unwrap().into()],
            ..RelayConfig::default()
        },
    );

    // Three connections from 127.0.0.1: within the cap of 3, the third too.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(relay.tcp_addr()).unwrap())
        .collect();
    let taken = wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        (open_connections(&relay) == 3.0).then_some(())
    });
    assert!(taken.is_some(), "the relay did not take 3 connections");
    assert_eq!(
        refused_per_ip(&relay),
        0.0,
        "nothing refused under the cap of 3"
    );

    std::fs::write(
        &config,
        "max-connections-per-ip = 2\nstream-idle-timeout = 1\n",
    )
    .unwrap();
    kill(Pid::from_raw(relay.pid().unwrap() as i32), Signal::SIGHUP).unwrap();
    let logged = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        relay
            .log()
            .contains(
                "TCP/TLS connection limits changed: max-connections-per-ip 3 -> 2, \
                 stream-idle-timeout 60 s -> 1 s",
            )
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "no reload of the limits logged:\n{}",
        relay.log()
    );

    // The three stay: a lowered cap does not close what it would not admit now.
    assert!(
        held.iter().all(|s| !is_closed(s)),
        "a connection opened before the reload was closed"
    );
    // A fourth is beyond the new cap of 2: refused at accept, and closed.
    let beyond = TcpStream::connect(relay.tcp_addr()).unwrap();
    let refused = wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        (refused_per_ip(&relay) == 1.0).then_some(())
    });
    assert!(
        refused.is_some(),
        "a connection beyond the reloaded max-connections-per-ip was not refused"
    );
    let closed = wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        is_closed(&beyond).then_some(())
    });
    assert!(closed.is_some(), "the refused connection is still open");

    // Once two have gone, one more fits again; silent, it meets the new idle timeout of
    // 1 s rather than the 60 s the connections before the reload wait for.
    drop(held);
    let room = wait_for(Duration::from_secs(3), Duration::from_millis(20), || {
        (open_connections(&relay) == 0.0).then_some(())
    });
    assert!(room.is_some(), "the closed connections were not released");
    let connected = Instant::now();
    let silent = TcpStream::connect(relay.tcp_addr()).unwrap();
    let timed_out = wait_for(Duration::from_secs(5), Duration::from_millis(20), || {
        is_closed(&silent).then(|| connected.elapsed())
    });
    let took = timed_out.expect("a silent connection outlived the reloaded idle timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}, with stream-idle-timeout 1 s"
    );
    assert_eq!(refused_per_ip(&relay), 1.0);
    assert!(
        relay
            .metrics()
            .sum("icegate_relay_stream_timeouts_total", &[("reason", "idle")])
            >= 1.0
    );
}
