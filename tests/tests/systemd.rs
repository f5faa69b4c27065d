//! systemd integration of both binaries: the unit files pass `systemd-analyze verify` and rate
//! at most 2.0 in `systemd-analyze security`, and the daemons speak `sd_notify(3)` to a
//! `$NOTIFY_SOCKET` the test listens on: READY=1 only once every listener answers, WATCHDOG=1
//! at half of `$WATCHDOG_USEC`, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.
//!
//! systemd itself is not needed (nor running, in CI's container); `systemd-analyze` is, from
//! Debian's `systemd` package, which `scripts/install-deps` installs.
#![deny(unsafe_code)]

use icegate_tests::server::{icegate_binary, stun_binding_probe, write_self_signed_cert};
use icegate_tests::signal::signal_binary;
use icegate_tests::stun::{assert_success, TurnClient};
use icegate_tests::{have_tool, http, workspace_root, PortBlock};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The highest `systemd-analyze security` exposure the units may have ("OK" ends at 3.9).
const MAX_EXPOSURE: f64 = 2.0;
/// What the daemons get as `$WATCHDOG_USEC`: pings are expected every 100 ms.
const WATCHDOG_USEC: &str = "200000";
/// How long a daemon may take to say READY=1 (a debug build, on a shared machine).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long any other notification may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// One unit file and the binary it starts.
struct Unit {
    file: &'static str,
    /// Where the Debian package installs the binary; the unit must start it from there.
    installed: &'static str,
    config: &'static str,
    built: fn() -> PathBuf,
}

const UNITS: [Unit; 2] = [
    Unit {
        file: "icegate-relay.service",
        installed: "/usr/bin/icegate-relay",
        config: "/etc/icegate/relay.toml",
        built: icegate_binary,
    },
    Unit {
        file: "icegate-signal.service",
        installed: "/usr/bin/icegate-signal",
        config: "/etc/icegate/signal.toml",
        built: signal_binary,
    },
];

impl Unit {
    fn path(&self) -> PathBuf {
        workspace_root().join("systemd").join(self.file)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.path())
            .unwrap_or_else(|e| panic!("read {}: {e}", self.path().display()))
    }
}

/// `systemd-analyze`, or a panic that says where it comes from.
fn systemd_analyze() -> &'static str {
    assert!(
        have_tool("systemd-analyze"),
        "`systemd-analyze` is not installed; run ./scripts/install-deps (Debian package systemd)"
    );
    "systemd-analyze"
}

fn run_analyze(args: &[&str], unit: &Path) -> Output {
    Command::new(systemd_analyze())
        .args(args)
        .arg(unit)
        .output()
        .unwrap_or_else(|e| panic!("run systemd-analyze: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn units_start_the_packaged_binaries_as_notify_services() {
    for unit in &UNITS {
        let text = unit.text();
        for line in [
            "Type=notify".to_string(),
            "NotifyAccess=main".into(),
            "WatchdogSec=30s".into(),
            "ExecReload=/bin/kill -HUP $MAINPID".into(),
            "User=icegate".into(),
            "Group=icegate".into(),
            format!("ExecStart={} --config {}", unit.installed, unit.config),
            format!(
                "ExecStartPre={} --check-config --config {}",
                unit.installed, unit.config
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{} lacks the line {line:?}",
                unit.file
            );
        }
        assert!(
            !text.contains("/usr/local/"),
            "{} still names /usr/local/",
            unit.file
        );
    }
}

/// Started together (a boot, `systemctl start icegate-relay icegate-signal`), the signal
/// server waits for the relay's READY=1, so that its first health check finds the relay
/// answering; but neither needs the other, since relays usually run on other hosts.
#[test]
fn signal_unit_is_ordered_after_the_relay_without_needing_it() {
    let signal = UNITS[1].text();
    let relay = UNITS[0].file;
    assert!(
        signal.lines().any(|l| l == format!("After={relay}")),
        "{} lacks After={relay}",
        UNITS[1].file
    );
    for unit in &UNITS {
        let other = UNITS
            .iter()
            .find(|u| u.file != unit.file)
            .expect("two units");
        for line in unit.text().lines().filter(|l| !l.starts_with('#')) {
            let needs = ["Requires=", "Wants=", "BindsTo=", "Requisite=", "PartOf="]
                .iter()
                .any(|key| line.starts_with(key));
            assert!(
                !(needs && line.contains(other.file)),
                "{} must not need {}: {line}",
                unit.file,
                other.file
            );
        }
    }
}

/// `systemd-analyze verify` checks that every `Exec*=` program exists, and no package is
/// installed here: the unit is verified as it is, except that its binary's installed path
/// points at the one just built (the test above checks the installed path itself).
#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in &UNITS {
        let built = (unit.built)();
        assert!(built.is_file(), "{} is not built", built.display());
        let text = unit.text();
        assert!(
            text.contains(unit.installed),
            "{} lacks {}",
            unit.file,
            unit.installed
        );
        let copy = dir.path().join(unit.file);
        std::fs::write(
            &copy,
            text.replace(unit.installed, built.to_str().expect("UTF-8 path")),
        )
        .expect("write unit copy");
        let output = run_analyze(&["verify"], &copy);
        // Unknown keys are only warned about, with exit status 0: any output is a failure.
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "systemd-analyze verify {}: {}",
            unit.file,
            describe(&output)
        );
    }
}

#[test]
fn units_rate_at_most_2_in_systemd_analyze_security() {
    for unit in &UNITS {
        let output = run_analyze(&["security", "--offline=true", "--no-pager"], &unit.path());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let exposure = overall_exposure(&stdout).unwrap_or_else(|| {
            panic!(
                "no overall exposure level for {}: {}",
                unit.file,
                describe(&output)
            )
        });
        eprintln!("{}: exposure {exposure}", unit.file);
        assert!(
            exposure <= MAX_EXPOSURE,
            "{} rates {exposure} in systemd-analyze security, above {MAX_EXPOSURE}:\n{stdout}",
            unit.file
        );
    }
}

/// The number in `→ Overall exposure level for NAME.service: 1.4 OK 🙂`.
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for"))?;
    let (_, rest) = line.rsplit_once(".service: ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn overall_exposure_is_read_from_the_report() {
    let report = "✓ UMask= fine\n\n→ Overall exposure level for icegate-relay.service: 2.1 OK 🙂\n";
    assert_eq!(overall_exposure(report), Some(2.1));
    assert_eq!(overall_exposure("✓ UMask= fine\n"), None);
}

/// The test's end of `$NOTIFY_SOCKET`.
struct NotifySocket {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
    /// Every message received, in order, for failure reports.
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        // A socket path must fit in 108 bytes: a short temp dir.
        let dir = tempfile::Builder::new()
            .prefix("icegate-notify-")
            .tempdir()
            .expect("tempdir");
        let socket = UnixDatagram::bind(dir.path().join("notify")).expect("bind notify socket");
        NotifySocket {
            dir,
            socket,
            seen: Vec::new(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("notify")
    }

    /// The next message, if one comes within `timeout`.
    fn recv(&mut self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.push(message.clone());
        Some(message)
    }

    /// Receives until a message has the line `wanted`, and returns that message. Panics after
    /// `timeout`, or if `daemon` exits first.
    fn expect(&mut self, daemon: &mut Daemon, wanted: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                daemon.dump_log();
                panic!(
                    "no {wanted:?} from {} within {timeout:?}; received: {:?}",
                    daemon.name, self.seen
                );
            }
            if let Some(message) = self.recv(left.min(Duration::from_millis(200))) {
                if message.lines().any(|l| l == wanted) {
                    return message;
                }
            } else if let Some(status) = daemon.child.try_wait().expect("try_wait") {
                daemon.dump_log();
                panic!("{} exited with {status} before {wanted:?}", daemon.name);
            }
        }
    }

    /// Counts WATCHDOG=1 messages over `window`.
    fn count_watchdog_pings(&mut self, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut pings = 0;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Some(message) = self.recv(left) {
                pings += message.lines().filter(|l| *l == "WATCHDOG=1").count();
            }
        }
        pings
    }
}

/// A daemon started as systemd would start a `Type=notify` unit with `WatchdogSec=`.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, binary: &Path, args: &[String], notify: &NotifySocket) -> Daemon {
        let log = notify.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("create log");
        let child = Command::new(binary)
            .args(args)
            .env("NOTIFY_SOCKET", notify.path())
            .env("WATCHDOG_USEC", WATCHDOG_USEC)
            .env_remove("WATCHDOG_PID")
            .current_dir(notify.dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        eprintln!(
            "[systemd] started {name} pid {}: {}",
            child.id(),
            args.join(" ")
        );
        Daemon { name, child, log }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("kill");
    }

    /// Waits for the exit after SIGTERM; panics if it takes longer than `timeout`.
    fn assert_exits_0(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "{} exited with {status}", self.name);
                return;
            }
            if Instant::now() >= deadline {
                self.dump_log();
                panic!("{} still runs {timeout:?} after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump_log(&self) {
        eprintln!(
            "----- {} log -----\n{}----- end -----",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// After `ready` (the READY=1 notification, with its STATUS=), `/readyz` on `metrics`
/// answers 200 and the status is `status`.
fn assert_ready(daemon: &str, metrics: SocketAddr, ready: &str, status: &str) {
    let readyz = http::get(metrics, "/readyz", Duration::from_secs(2));
    assert!(
        matches!(&readyz, Ok(r) if r.status == 200),
        "{daemon} said READY=1 but /readyz answers {readyz:?}"
    );
    assert!(
        ready.lines().any(|l| l == format!("STATUS={status}")),
        "READY=1 without the status {status:?}: {ready:?}"
    );
}

fn assert_accepts(name: &str, what: &str, addr: SocketAddr) {
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        panic!("{name} said READY=1 but its {what} listener {addr} refuses: {e}");
    }
}

/// Asserts that pings keep coming at about the rate `WATCHDOG_USEC` asks for (every 100 ms).
fn assert_watchdog_pings(notify: &mut NotifySocket, name: &str) {
    let pings = notify.count_watchdog_pings(Duration::from_secs(1));
    // 10 expected; a loaded machine may delay some, but 3 missed in a row would be fatal.
    assert!(
        pings >= 4,
        "{name}: {pings} WATCHDOG=1 in 1 s with WATCHDOG_USEC={WATCHDOG_USEC}; received: {:?}",
        notify.seen
    );
}

/// RELOADING=1 with MONOTONIC_USEC, then READY=1.
fn assert_reload_notified(notify: &mut NotifySocket, daemon: &mut Daemon) {
    daemon.signal(Signal::SIGHUP);
    let reloading = notify.expect(daemon, "RELOADING=1", NOTIFY_TIMEOUT);
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 without MONOTONIC_USEC: {reloading:?}"
    );
    notify.expect(daemon, "READY=1", NOTIFY_TIMEOUT);
}

#[test]
fn relay_notifies_ready_watchdog_reload_and_stop() {
    let ports = PortBlock::claim();
    let mut notify = NotifySocket::new();
    let (cert, key) = write_self_signed_cert(notify.dir.path());
    let (min, max) = ports.relay_range();
    let args: Vec<String> = [
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        &ports.listen().to_string(),
        "--tls-listening-port",
        &ports.tls().to_string(),
        "--cert",
        cert.to_str().unwrap(),
        "--pkey",
        key.to_str().unwrap(),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        &min.to_string(),
        "--max-port",
        &max.to_string(),
        "--realm",
        "icegate.test",
        "--user",
        "alice:secret",
        "--metrics-listen",
        &localhost(ports.metrics()).to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut relay = Daemon::start("icegate-relay", &icegate_binary(), &args, &notify);

    let ready = notify.expect(&mut relay, "READY=1", READY_TIMEOUT);
    // Right after READY=1, without retrying: one STUN Binding answered within its 200 ms.
    assert!(
        stun_binding_probe(localhost(ports.listen())),
        "icegate-relay said READY=1 but did not answer a STUN Binding request over UDP"
    );
    assert_accepts("icegate-relay", "TCP", localhost(ports.listen()));
    assert_accepts("icegate-relay", "TLS", localhost(ports.tls()));
    assert_ready(
        "icegate-relay",
        localhost(ports.metrics()),
        &ready,
        "relaying: 0 allocations",
    );

    assert_watchdog_pings(&mut notify, "icegate-relay");

    // STATUS= follows the allocations (it is refreshed every 5 s).
    let mut client = TurnClient::new(localhost(ports.listen()), "alice", "secret");
    assert_success(&client.allocate(), "Allocate");
    notify.expect(
        &mut relay,
        "STATUS=relaying: 1 allocations",
        Duration::from_secs(10),
    );

    assert_reload_notified(&mut notify, &mut relay);

    // SIGTERM: STOPPING=1 while the allocation still drains; pings go on during the drain.
    relay.signal(Signal::SIGTERM);
    let stopping = notify.expect(&mut relay, "STOPPING=1", NOTIFY_TIMEOUT);
    assert!(
        stopping
            .lines()
            .any(|l| l == "STATUS=draining: 1 allocations"),
        "STOPPING=1 without the drain status: {stopping:?}"
    );
    assert_watchdog_pings(&mut notify, "icegate-relay (draining)");
    assert_success(&client.deallocate(), "Deallocate");
    relay.assert_exits_0(Duration::from_secs(5));
}

#[test]
fn signal_notifies_ready_watchdog_reload_and_stop() {
    let ports = PortBlock::claim();
    let mut notify = NotifySocket::new();
    let listen = localhost(ports.signal());
    let metrics = localhost(ports.signal_metrics());
    let args: Vec<String> = [
        "--listen",
        &listen.to_string(),
        "--metrics-listen",
        &metrics.to_string(),
        "--plain-http",
        "--anonymous",
        "--static-auth-secret",
        "systemd-test-secret",
        "--relay",
        "stun:127.0.0.1:3478",
    ]
    .map(String::from)
    .to_vec();
    let mut signal = Daemon::start("icegate-signal", &signal_binary(), &args, &notify);

    let ready = notify.expect(&mut signal, "READY=1", READY_TIMEOUT);
    let ice = http::get(listen, "/v1/ice-servers", Duration::from_secs(2));
    assert!(
        matches!(&ice, Ok(r) if r.status == 200),
        "icegate-signal said READY=1 but GET /v1/ice-servers gives {ice:?}"
    );
    assert_ready("icegate-signal", metrics, &ready, "serving: 0 connections");

    assert_watchdog_pings(&mut notify, "icegate-signal");
    assert_reload_notified(&mut notify, &mut signal);

    signal.signal(Signal::SIGTERM);
    let stopping = notify.expect(&mut signal, "STOPPING=1", NOTIFY_TIMEOUT);
    assert!(
        stopping
            .lines()
            .any(|l| l == "STATUS=closing 0 connections"),
        "STOPPING=1 without the shutdown status: {stopping:?}"
    );
    signal.assert_exits_0(Duration::from_secs(5));
}
