//! ICE servers from icegate-signal: their shape, their credentials (checked by HMAC here and
//! by a real icegate-relay), relays left out while their health check fails, and relays that
//! have not answered yet handed out for the start-up grace period.
#![deny(unsafe_code)]

use icegate_tests::signal::{eventually, rest_password, unix_now, Signal, SignalConfig};
use icegate_tests::stun::{assert_success, TurnClient};
use icegate_tests::{Relay, RelayConfig, ServerKind};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &str = "shared-rest-secret";

/// Checks one `{"iceServers":[...],"ttl":N}` object and returns its TURN username.
fn check_shape(servers: &Value, ttl: u64) -> String {
    assert_eq!(servers["ttl"], ttl, "{servers}");
    let list = servers["iceServers"].as_array().expect("iceServers array");
    assert_eq!(list.len(), 1, "{servers}");
    let entry = &list[0];
    assert_eq!(
        entry["urls"],
        serde_json::json!(["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"])
    );
    let username = entry["username"].as_str().expect("username").to_owned();
    let credential = entry["credential"].as_str().expect("credential");
    assert_eq!(
        credential,
        rest_password(SECRET, &username),
        "HMAC-SHA1 over the username"
    );
    let (expiry, _user) = username.split_once(':').expect("EXPIRY:USER");
    let expiry: u64 = expiry.parse().expect("expiry is a Unix time");
    let now = unix_now();
    assert!(
        expiry >= now + ttl - 5 && expiry <= now + ttl + 5,
        "expiry {expiry} is not now + {ttl}"
    );
    username
}

#[test]
fn ice_servers_shape_and_credentials() {
    let signal = Signal::start(SignalConfig {
        static_auth_secret: Some(SECRET.into()),
        args: vec!["--credential-ttl".into(), "600".into()],
        ..SignalConfig::default()
    });
    let response = signal.get("/v1/ice-servers", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let first = check_shape(&serde_json::from_str(&response.body).unwrap(), 600);
    let second = check_shape(&signal.ice_servers(&[]), 600);
    assert_ne!(
        first, second,
        "each anonymous request gets its own TURN username"
    );

    // The welcome carries the same shape; each anonymous session its own username.
    let mut one = signal.connect("name=alice");
    let mut two = signal.connect("name=alice");
    let a = check_shape(&one.expect("welcome"), 600);
    let b = check_shape(&two.expect("welcome"), 600);
    assert_ne!(a, b);
    assert!(a.contains(":anon-"), "{a}");

    let metrics = signal.metrics();
    assert_eq!(
        metrics.sum(
            "icegate_signal_ice_credentials_issued_total",
            &[("via", "http")]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "icegate_signal_ice_credentials_issued_total",
            &[("via", "ws")]
        ),
        2.0
    );
}

/// A fake relay `/readyz` answering with whatever status `status` holds.
fn fake_health_server(status: Arc<AtomicU16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 1024];
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let code = status.load(Ordering::Relaxed);
            let reply =
                format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

fn relay_hosts(servers: &Value) -> Vec<String> {
    servers["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["urls"][0].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn relays_failing_their_health_check_are_left_out() {
    let status = Arc::new(AtomicU16::new(200));
    let port = fake_health_server(Arc::clone(&status));
    let signal = Signal::start(SignalConfig {
        relays: vec![
            "turn:127.0.0.1:3478?transport=udp".into(),
            "stun:127.0.0.2:3478".into(),
        ],
        relay_health: vec![format!("http://127.0.0.1:{port}/readyz")],
        args: vec!["--relay-health-interval".into(), "1".into()],
        ..SignalConfig::default()
    });
    let both = vec![
        "turn:127.0.0.1:3478?transport=udp".to_string(),
        "stun:127.0.0.2:3478".to_string(),
    ];
    assert_eq!(relay_hosts(&signal.ice_servers(&[])), both);

    status.store(503, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || relay_hosts(
            &signal.ice_servers(&[])
        )
        .len()
            == 1),
        "the failing relay is still handed out"
    );
    assert_eq!(
        relay_hosts(&signal.ice_servers(&[])),
        vec!["stun:127.0.0.2:3478"]
    );
    let mut client = signal.connect("name=alice");
    assert_eq!(
        relay_hosts(&client.expect("welcome")),
        vec!["stun:127.0.0.2:3478"]
    );
    let metrics = signal.metrics();
    assert_eq!(metrics.sum("icegate_signal_relays_healthy", &[]), 1.0);
    assert_eq!(metrics.sum("icegate_signal_relays_configured", &[]), 2.0);
    assert_eq!(
        metrics.sum("icegate_signal_relay_up", &[("relay", "127.0.0.1")]),
        0.0
    );

    status.store(200, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || relay_hosts(
            &signal.ice_servers(&[])
        ) == both),
        "the recovered relay is not handed out again"
    );
}

#[test]
fn a_relay_that_has_not_answered_yet_is_handed_out_for_the_grace_period() {
    // The relay is not ready yet (a boot, both units started at once): its checks fail.
    let status = Arc::new(AtomicU16::new(503));
    let port = fake_health_server(Arc::clone(&status));
    let grace = Duration::from_secs(5);
    let started = Instant::now();
    let signal = Signal::start(SignalConfig {
        relays: vec!["stun:127.0.0.1:3478".into()],
        relay_health: vec![format!("http://127.0.0.1:{port}/readyz")],
        args: vec![
            "--relay-health-interval".into(),
            "1".into(),
            "--relay-health-grace".into(),
            grace.as_secs().to_string(),
        ],
        ..SignalConfig::default()
    });
    let relay = vec!["stun:127.0.0.1:3478".to_string()];
    let up = |metric: &str| signal.metrics().sum(metric, &[("relay", "127.0.0.1")]);
    let (hosts, relay_up, unconfirmed) = (
        relay_hosts(&signal.ice_servers(&[])),
        up("icegate_signal_relay_up"),
        up("icegate_signal_relay_unconfirmed"),
    );
    // The server's grace period began after `started`: asked before `started + grace`, it
    // had not ended. (A machine so busy that the start took longer cannot tell.)
    if started.elapsed() < grace {
        assert_eq!(
            hosts, relay,
            "a relay that has not answered yet is left out within the grace period"
        );
        assert_eq!((relay_up, unconfirmed), (1.0, 1.0), "up, but unconfirmed");
    } else {
        eprintln!("the start took longer than the grace period; its first half is not checked");
    }

    assert!(
        eventually(Duration::from_secs(15), || relay_hosts(
            &signal.ice_servers(&[])
        )
        .is_empty()),
        "a relay that never answered is still handed out after the grace period"
    );
    assert!(
        started.elapsed() >= grace,
        "left out after {:?}, within the grace period",
        started.elapsed()
    );
    assert_eq!(up("icegate_signal_relay_up"), 0.0);
    assert_eq!(up("icegate_signal_relay_unconfirmed"), 0.0);
    let warning = "relay has not answered a health check within the start-up grace period";
    assert_eq!(signal.log().matches(warning).count(), 1, "{}", signal.log());

    // Its first passing check hands it out.
    status.store(200, Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(10), || relay_hosts(
            &signal.ice_servers(&[])
        ) == relay),
        "the relay is not handed out once it answers"
    );
    assert_eq!(up("icegate_signal_relay_unconfirmed"), 0.0);
}

#[test]
fn icegate_relay_accepts_the_credentials_and_its_outage_is_noticed() {
    let mut relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            users: vec![],
            auth_secrets: vec![SECRET.into()],
            // The allocations below would otherwise hold the relay in its drain for 30 s.
            icegate_args: vec!["--drain-timeout".into(), "1".into()],
            ..RelayConfig::default()
        },
    );
    let turn = format!("turn:127.0.0.1:{}?transport=udp", relay.udp_addr().port());
    let signal = Signal::start(SignalConfig {
        static_auth_secret: Some(SECRET.into()),
        relays: vec![turn.clone()],
        relay_health: vec![format!("http://{}/readyz", relay.metrics_addr())],
        args: vec!["--relay-health-interval".into(), "1".into()],
        ..SignalConfig::default()
    });

    let servers = signal.ice_servers(&[]);
    let entry = &servers["iceServers"][0];
    assert_eq!(entry["urls"][0], turn.as_str());
    let mut client = TurnClient::new(
        relay.udp_addr(),
        entry["username"].as_str().unwrap(),
        entry["credential"].as_str().unwrap(),
    );
    assert_success(
        &client.allocate(),
        "allocate with icegate-signal's credentials",
    );

    // A session's credentials from the welcome work too.
    let mut ws = signal.connect("name=bob");
    let welcome = ws.expect("welcome");
    let entry = &welcome["iceServers"][0];
    let mut client = TurnClient::new(
        relay.udp_addr(),
        entry["username"].as_str().unwrap(),
        entry["credential"].as_str().unwrap(),
    );
    assert_success(
        &client.allocate(),
        "allocate with the welcome's credentials",
    );

    relay.terminate(Duration::from_secs(10));
    assert!(
        eventually(Duration::from_secs(10), || signal.ice_servers(&[])
            ["iceServers"]
            .as_array()
            .unwrap()
            .is_empty()),
        "a stopped relay is still handed out"
    );
}

/// An operator keeping coturn (with `use-auth-secret` and the same secret) gets the same
/// credentials accepted: the scheme is coturn's, not a look-alike.
#[test]
fn coturn_accepts_the_credentials() {
    icegate_tests::require_tool("turnserver");
    let relay = Relay::start(
        ServerKind::Coturn,
        RelayConfig {
            users: vec![],
            auth_secrets: vec![SECRET.into()],
            ..RelayConfig::default()
        },
    );
    let turn = format!("turn:127.0.0.1:{}?transport=udp", relay.udp_addr().port());
    let signal = Signal::start(SignalConfig {
        static_auth_secret: Some(SECRET.into()),
        relays: vec![turn],
        ..SignalConfig::default()
    });
    let servers = signal.ice_servers(&[]);
    let entry = &servers["iceServers"][0];
    let mut client = TurnClient::new(
        relay.udp_addr(),
        entry["username"].as_str().unwrap(),
        entry["credential"].as_str().unwrap(),
    );
    assert_success(
        &client.allocate(),
        "coturn allocates with icegate-signal's credentials",
    );
    let mut forged = TurnClient::new(
        relay.udp_addr(),
        entry["username"].as_str().unwrap(),
        "bm90LXRoZS1yaWdodC1wYXNzd29yZA==",
    );
    let refused = forged.allocate();
    assert_eq!(
        icegate_tests::stun::error_code(&refused),
        Some(401),
        "coturn must refuse a wrong credential, or this test proves nothing"
    );
}
