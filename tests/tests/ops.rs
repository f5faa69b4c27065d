//! Operating icegate-relay: `--check-config`, configuration errors, the health endpoints,
//! graceful shutdown on SIGTERM and the Prometheus metric families. icegate only: these
//! are icegate's own interfaces, coturn has no equivalent to validate against.
#![deny(unsafe_code)]

use icegate_tests::server::{run_icegate_once, write_self_signed_cert};
use icegate_tests::stun::{assert_success, TurnClient};
use icegate_tests::{PortBlock, Relay, RelayConfig, ServerKind};
use std::time::{Duration, Instant};

const RUN_ONCE: Duration = Duration::from_secs(10);

#[test]
fn check_config_prints_a_summary_and_exits_0() {
    let started = Instant::now();
    let (status, out) = run_icegate_once(
        &[
            "--check-config",
            "--listening-ip",
            "127.0.0.1",
            "--listening-port",
            "13478",
            "--min-port",
            "40100",
            "--max-port",
            "40199",
            "--realm",
            "check.example",
            "--user",
            "carol:do-not-print-me",
        ],
        RUN_ONCE,
    );
    let status = status.unwrap_or_else(|| panic!("--check-config did not exit:\n{out}"));
    assert_eq!(
        status.code(),
        Some(0),
        "--check-config exit status; output:\n{out}"
    );
    // The summary reflects what was configured...
    for expected in ["127.0.0.1", "13478", "40100", "40199", "check.example"] {
        assert!(out.contains(expected), "summary lacks {expected:?}:\n{out}");
    }
    // ...without leaking the secret, and without starting to serve.
    assert!(
        !out.contains("do-not-print-me"),
        "summary prints a password:\n{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "--check-config took {:?}",
        started.elapsed()
    );
}

#[test]
fn check_config_warns_about_a_metrics_listener_off_loopback() {
    let check = |metrics: &str| {
        let (status, out) = run_icegate_once(
            &[
                "--check-config",
                "--listening-ip",
                "127.0.0.1",
                "--user",
                "carol:pw",
                "--metrics-listen",
                metrics,
            ],
            RUN_ONCE,
        );
        // A warning, not an error: a management network is a legitimate place for it.
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{metrics}:\n{out}");
        out
    };
    let out = check("0.0.0.0:9641");
    assert!(
        out.contains("warning: metrics-listen 0.0.0.0:9641") && out.contains("access control"),
        "no warning for 0.0.0.0:\n{out}"
    );
    let out = check("127.0.0.1:9641");
    assert!(!out.contains("warning"), "warning for loopback:\n{out}");
}

/// coturn's default: with a wildcard listener and no `relay-ip`, the relay relays from the
/// host's addresses. Which ones is read independently with `ip -j addr` (scope global: not
/// loopback, not link-local); a host without one must be refused, naming `relay-ip`.
#[test]
fn check_config_without_relay_ip_shows_the_hosts_addresses() {
    let ip = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .expect("ip (iproute2) is installed by scripts/install-deps");
    let interfaces: serde_json::Value =
        serde_json::from_slice(&ip.stdout).expect("ip -j prints JSON");
    let expected: Vec<String> = interfaces
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| a["local"].as_str().map(str::to_owned))
        .collect();
    let (status, out) = run_icegate_once(&["--check-config", "--user", "carol:pw"], RUN_ONCE);
    if expected.is_empty() {
        assert_ne!(status.and_then(|s| s.code()), Some(0), "{out}");
        assert!(out.contains("relay-ip"), "{out}");
        return;
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("relay:"))
        .unwrap_or_else(|| panic!("no relay line:\n{out}"));
    assert_eq!(
        line.trim(),
        format!(
            "relay: {} (relay-ip unset: the host's addresses) ports 49152-65535",
            expected.join(", ")
        ),
        "ip -j addr says {expected:?}"
    );
}

/// Runs `--check-config` and a real start on a config file with `body`; both must fail,
/// naming the file and `key`.
fn assert_config_rejected(body: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, body).unwrap();
    let path_str = path.to_str().unwrap();
    for extra in [&["--check-config"][..], &[][..]] {
        let mut args = vec!["--config", path_str];
        args.extend_from_slice(extra);
        let (status, out) = run_icegate_once(&args, RUN_ONCE);
        let status = status.unwrap_or_else(|| panic!("{args:?} did not exit:\n{out}"));
        assert!(
            !status.success(),
            "{args:?} with {body:?} exited {status}:\n{out}"
        );
        assert!(
            out.contains(path_str),
            "{args:?}: error does not name the file:\n{out}"
        );
        assert!(
            out.contains(key),
            "{args:?}: error does not name `{key}`:\n{out}"
        );
    }
}

const VALID: &str = "listening-ip = [\"127.0.0.1\"]\nuser = [\"alice:secret\"]\n";

#[test]
fn bad_config_file_exits_nonzero_naming_file_and_key() {
    // Each kind of mistake: a bad value, a wrong type, a misspelt key, an inverted range.
    assert_config_rejected(
        &format!("{VALID}denied-peer-ip = [\"10.0.0.0/33\"]\n"),
        "denied-peer-ip",
    );
    assert_config_rejected(
        &format!("{VALID}listening-port = \"high\"\n"),
        "listening-port",
    );
    assert_config_rejected(
        &format!("{VALID}relay-ipp = [\"127.0.0.1\"]\n"),
        "relay-ipp",
    );
    assert_config_rejected(
        &format!("{VALID}min-port = 50000\nmax-port = 40000\n"),
        "min-port",
    );
    // The same file without the mistake is fine: the failures above are about the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, VALID).unwrap();
    let (status, out) = run_icegate_once(
        &["--config", path.to_str().unwrap(), "--check-config"],
        RUN_ONCE,
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "valid file rejected:\n{out}"
    );
}

/// Starts a relay on 127.0.0.1 with these ports and waits for it to exit.
fn run_second_relay(
    dir: &std::path::Path,
    ports: &PortBlock,
    (turn, tls, metrics): (u16, u16, u16),
    extra: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let (cert, key) = write_self_signed_cert(dir);
    let (min, max) = ports.relay_range();
    let strings = [
        turn.to_string(),
        tls.to_string(),
        format!("127.0.0.1:{metrics}"),
        min.to_string(),
        max.to_string(),
    ];
    let mut args = vec![
        "--listening-ip",
        "127.0.0.1",
        "--user",
        "bob:pw",
        "--listening-port",
        &strings[0],
        "--tls-listening-port",
        &strings[1],
        "--metrics-listen",
        &strings[2],
        "--min-port",
        &strings[3],
        "--max-port",
        &strings[4],
        "--cert",
        cert.to_str().unwrap(),
        "--pkey",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_icegate_once(&args, RUN_ONCE)
}

/// SO_REUSEPORT would let a second relay of the same user bind the same ports and silently
/// take a share of the clients: each port must be refused instead, naming the address and
/// the setting, while the first relay keeps serving.
#[test]
fn a_second_relay_on_a_port_in_use_fails_at_start() {
    let relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            tls: true,
            ..RelayConfig::default()
        },
    );
    let (listen, tls, metrics) = (
        relay.ports.listen(),
        relay.ports.tls(),
        relay.ports.metrics(),
    );
    let free = PortBlock::claim();
    let dir = tempfile::tempdir().unwrap();
    // (TURN, TLS, metrics ports), extra flags, what the error names.
    type Case<'a> = ((u16, u16, u16), &'a [&'a str], String);
    let cases: [Case; 4] = [
        (
            (listen, free.tls(), free.metrics()),
            &[],
            format!("127.0.0.1:{listen} (udp, listening-port)"),
        ),
        (
            (listen, free.tls(), free.metrics()),
            &["--no-udp"],
            format!("127.0.0.1:{listen} (tcp, listening-port)"),
        ),
        (
            (free.listen(), tls, free.metrics()),
            &[],
            format!("127.0.0.1:{tls} (tls, tls-listening-port)"),
        ),
        (
            (free.listen(), free.tls(), metrics),
            &[],
            format!("127.0.0.1:{metrics} (metrics http, metrics-listen)"),
        ),
    ];
    let (u, p) = relay.config.users[0].clone();
    for (ports, extra, expected) in cases {
        let (status, out) = run_second_relay(dir.path(), &free, ports, extra);
        let status = status.unwrap_or_else(|| panic!("second relay still runs: {expected}\n{out}"));
        assert_eq!(status.code(), Some(1), "{expected}:\n{out}");
        assert!(
            out.contains(&expected) && out.contains("Address already in use"),
            "no {expected:?} in use:\n{out}"
        );
        // The first relay still answers, on the contested port too.
        let mut c = TurnClient::new(relay.udp_addr(), &u, &p);
        assert_success(&c.allocate(), &format!("first relay after {expected}"));
    }

    // Not only relays: a port held by any other program with SO_REUSEPORT is refused too.
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let squatter = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )
    .unwrap();
    setsockopt(&squatter, sockopt::ReusePort, &true).unwrap();
    let addr = SockaddrIn::new(127, 0, 0, 1, free.listen());
    bind(std::os::fd::AsRawFd::as_raw_fd(&squatter), &addr).unwrap();
    let (status, out) = run_second_relay(
        dir.path(),
        &free,
        (free.listen(), free.tls(), free.metrics()),
        &[],
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    let expected = format!("127.0.0.1:{} (udp, listening-port)", free.listen());
    assert!(out.contains(&expected), "{out}");
}

#[test]
fn healthz_and_readyz_answer_200() {
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    for path in ["/healthz", "/readyz"] {
        let resp = relay
            .http_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.body);
    }
    let resp = relay
        .http_get("/no-such-endpoint")
        .expect("GET /no-such-endpoint");
    assert_eq!(resp.status, 404, "unknown path: {}", resp.body);
}

#[test]
fn sigterm_exits_within_the_drain_timeout() {
    let mut relay = Relay::start(
        ServerKind::Icegate,
        RelayConfig {
            icegate_args: vec!["--drain-timeout".into(), "1".into()],
            ..RelayConfig::default()
        },
    );
    // An open allocation makes the relay wait (up to the drain timeout) before exiting.
    let (u, p) = relay.config.users[0].clone();
    let mut c = TurnClient::new(relay.udp_addr(), &u, &p);
    assert_success(&c.allocate(), "Allocate");

    let started = Instant::now();
    let status = relay.terminate(Duration::from_secs(4));
    let took = started.elapsed();
    let status = status
        .unwrap_or_else(|| panic!("still running {took:?} after SIGTERM with --drain-timeout 1"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; log:\n{}",
        relay.log()
    );
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?} with --drain-timeout 1"
    );
    assert!(!relay.is_running());
}

#[test]
fn metrics_has_the_relay_families() {
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    // Some traffic, so that label sets created on first use exist too.
    let _allocation = relay.first_traffic();

    let resp = relay.http_get("/metrics").expect("GET /metrics");
    assert_eq!(resp.status, 200, "{}", resp.body);
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "Content-Type {ctype:?}");
    let m = relay.metrics();
    // Prometheus naming: `_total` families are counters, the rest here are gauges.
    let families = [
        ("icegate_relay_requests_total", "counter"),
        ("icegate_relay_auth_failures_total", "counter"),
        ("icegate_relay_peer_denied_total", "counter"),
        ("icegate_relay_quota_rejections_total", "counter"),
        ("icegate_relay_malformed_packets_total", "counter"),
        ("icegate_relay_allocations_active", "gauge"),
        ("icegate_relay_packets_total", "counter"),
    ];
    let mut wrong = Vec::new();
    for (name, kind) in families {
        let type_line = format!("# TYPE {name} ");
        match m.raw.lines().find_map(|l| l.strip_prefix(&type_line)) {
            None => wrong.push(format!("{name}: no TYPE line")),
            Some(t) if t.trim() != kind => wrong.push(format!("{name}: TYPE {t}, expected {kind}")),
            Some(_) => {}
        }
        if !m.has(name) {
            wrong.push(format!("{name}: no samples"));
        }
    }
    assert!(wrong.is_empty(), "{}\nscrape:\n{}", wrong.join("\n"), m.raw);

    let labels = [("method", "allocate"), ("result", "success")];
    assert!(
        m.sum("icegate_relay_requests_total", &labels) >= 1.0,
        "{}",
        m.raw
    );
    assert!(
        m.sum(
            "icegate_relay_requests_total",
            &[("method", "binding"), ("result", "success")]
        ) >= 1.0
    );
    let active = m.get_exact(
        "icegate_relay_allocations_active",
        &[("transport", "udp"), ("family", "ipv4")],
    );
    assert_eq!(
        active,
        Some(1.0),
        "allocations_active{{udp,ipv4}}:\n{}",
        m.raw
    );
    for dir in ["client_to_peer", "peer_to_client"] {
        assert!(
            m.get_exact("icegate_relay_packets_total", &[("direction", dir)])
                .is_some(),
            "packets_total{{direction={dir}}} missing:\n{}",
            m.raw
        );
    }
}
