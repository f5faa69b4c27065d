//! icegate-signal's `metrics-listen` has no access control, so an address off loopback is
//! warned about, at start and by `--check-config`, as icegate-relay does; a loopback one is not.
#![deny(unsafe_code)]

use icegate_tests::signal::{signal_binary, Signal, SignalConfig};
use icegate_tests::{http, PortBlock};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The words of the warning, whatever the address.
const WARNING: &str = "is not a loopback address and has no access control";

/// A child process killed when dropped, also when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_metrics_listener_off_loopback_is_warned_about_at_start() {
    let ports = PortBlock::claim();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("signal.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The harness's Signal always listens for metrics on loopback; this one is started by
    // hand on the wildcard address, which loopback reaches too.
    let metrics = format!("0.0.0.0:{}", ports.signal_metrics());
    let mut child = Killed(
        Command::new(signal_binary())
            .args([
                "--listen",
                &format!("127.0.0.1:{}", ports.signal()),
                "--plain-http",
                "--anonymous",
                "--metrics-listen",
                &metrics,
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn icegate-signal"),
    );
    let on_loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, ports.signal_metrics()));
    let ready = http::wait_ready(
        on_loopback,
        Duration::from_secs(10),
        Duration::from_millis(50),
        || matches!(child.0.try_wait(), Ok(None)),
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(ready, "icegate-signal did not become ready:\n{log}");
    // Started, not refused: a management network is a legitimate place for it.
    let warning = log
        .lines()
        .find(|line| line.contains(&format!("metrics-listen {metrics} {WARNING}")))
        .unwrap_or_else(|| panic!("no warning about {metrics}:\n{log}"));
    assert!(warning.contains("WARN"), "not a warning: {warning}");
}

#[test]
fn a_metrics_listener_on_loopback_is_not_warned_about() {
    // The harness listens for metrics on 127.0.0.1.
    let signal = Signal::start(SignalConfig::default());
    assert!(signal.metrics_addr().ip().is_loopback());
    let log = signal.log();
    assert!(!log.contains(WARNING), "warning for loopback:\n{log}");
}

#[test]
fn check_config_warns_about_a_metrics_listener_off_loopback() {
    let check = |metrics: &str| {
        let output = Command::new(signal_binary())
            .args(["--check-config", "--anonymous", "--metrics-listen", metrics])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(output.status.code(), Some(0), "{metrics}:\n{stdout}");
        stdout
    };
    for open in ["0.0.0.0:9642", "[::]:9642"] {
        let out = check(open);
        assert!(
            out.contains(&format!("warning: metrics-listen {open} {WARNING}")),
            "no warning for {open}:\n{out}"
        );
    }
    let out = check("127.0.0.1:9642");
    assert!(!out.contains("warning"), "warning for loopback:\n{out}");
}
