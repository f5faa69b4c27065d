//! The packaged services under a real systemd. A minimal Debian 12 (debootstrap, kept between
//! runs under /var/tmp) boots in a `systemd-nspawn` container with a network namespace of its
//! own, installs both packages with dpkg, and its systemd runs the units as shipped: start
//! (`Type=notify`: `systemctl start` returns once READY=1 came, and the listeners answer at
//! once), the status line, reload (`ExecReload`, `RELOADING=1`), the watchdog (a frozen relay
//! is killed and restarted), `systemd-analyze security` on the loaded units, and stop.
//!
//! tests/systemd.rs checks the notify protocol without systemd and the unit files offline;
//! this is the one place the hardening (system-call filter, `ProtectSystem=strict`, ...) meets
//! the daemons for real. Needs root, `systemd-nspawn` and `debootstrap` (scripts/install-deps
//! installs them); the first run downloads the Debian base system.
#![deny(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use icegate_tests::debian::{self, run};
use icegate_tests::signal::eventually;

/// The Debian root the container boots, made once and reused (each boot works on a copy).
const ROOT: &str = "/var/tmp/icegate-test-bookworm";
/// What the root needs beyond minbase: systemd to boot, the packages' dependencies (adduser,
/// openssl, procps) and curl for the checks.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,adduser,openssl,procps,curl";
const MIRROR: &str = "http://deb.debian.org/debian";
const BOOT: Duration = Duration::from_secs(90);

#[test]
fn packaged_units_start_reload_watchdog_and_stop_under_systemd() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED systemd_boot: booting a systemd container needs root");
        return;
    }
    for tool in ["systemd-nspawn", "debootstrap", "nsenter"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is missing: scripts/install-deps installs it (systemd-container, debootstrap)"
        );
    }
    assert!(
        debian::cargo_deb_available(),
        "cargo-deb is missing: scripts/install-deps installs it"
    );
    let root = debian_root();
    let debs_dir = tempfile::Builder::new()
        .prefix("icegate-systemd-boot-")
        .tempdir()
        .expect("tempdir");
    let debs = debian::build_packages(debs_dir.path(), "systemd_boot");

    let container = Container::boot(&root, debs_dir.path());
    let names: Vec<String> = debs
        .iter()
        .map(|d| format!("/debs/{}", d.file_name().unwrap().to_string_lossy()))
        .collect();
    container.ok(&format!("dpkg -i {}", names.join(" ")));

    // Type=notify: start returns when READY=1 came, so the listeners must answer right away.
    container.ok("systemctl start icegate-relay icegate-signal");
    let ready = container.ok("curl -sS --max-time 2 http://127.0.0.1:9641/readyz");
    assert_eq!(ready.trim(), "ready", "relay /readyz right after start");
    let ice = container.ok(
        "curl -sS --max-time 2 --cacert /etc/icegate/tls/self-signed.pem \
         https://localhost:8443/v1/ice-servers",
    );
    assert!(
        ice.contains("\"iceServers\"") && ice.contains("turn:127.0.0.1:3478"),
        "ICE servers right after start: {ice}"
    );
    assert!(container
        .show("icegate-relay", "StatusText")
        .starts_with("relaying: 0 allocations"));
    assert!(container
        .show("icegate-signal", "StatusText")
        .starts_with("serving: 0 connections"));

    // The hardening of the loaded units, as an operator would check it.
    for unit in debian::PACKAGES {
        let report = container.ok(&format!("systemd-analyze security --no-pager {unit}"));
        let score = exposure(&report).unwrap_or_else(|| panic!("no exposure level:\n{report}"));
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0\n{report}");
    }

    // Reload: ExecReload sends SIGHUP; systemctl waits for RELOADING=1 … READY=1.
    container.ok("systemctl reload icegate-relay icegate-signal");
    // The daemons log the reload before READY=1, but journald reads their output and the
    // notification socket separately: the line can reach the journal after reload returns.
    let mut journal = String::new();
    let reloaded = eventually(Duration::from_secs(10), || {
        journal = container.ok("journalctl --no-pager -u icegate-relay -u icegate-signal");
        journal.contains("configuration reloaded")
            && journal.contains("JWT keys and TURN secret reloaded")
    });
    assert!(reloaded, "both daemons log their reload:\n{journal}");
    for unit in debian::PACKAGES {
        assert_eq!(container.show(unit, "ActiveState"), "active", "{unit}");
    }

    // Watchdog: a relay that stops answering (frozen) is killed and started again.
    let frozen = container.show("icegate-relay", "MainPID");
    container.ok(&format!("kill -STOP {frozen}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while container.show("icegate-relay", "NRestarts") != "1" {
        assert!(
            Instant::now() < deadline,
            "the frozen relay was not restarted within 60 s (WatchdogSec=30s):\n{}",
            container.ok("journalctl --no-pager -u icegate-relay -n 30")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let journal = container.ok("journalctl --no-pager -u icegate-relay");
    assert!(
        journal.contains("Watchdog timeout"),
        "restarted by the watchdog:\n{journal}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while container.show("icegate-relay", "ActiveState") != "active" {
        assert!(Instant::now() < deadline, "the relay did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(container.show("icegate-relay", "MainPID"), frozen);
    let ready = container.ok("curl -sS --max-time 2 http://127.0.0.1:9641/readyz");
    assert_eq!(ready.trim(), "ready", "relay /readyz after the restart");

    // Stop: SIGTERM, drain, exit 0.
    container.ok("systemctl stop icegate-relay icegate-signal");
    for unit in debian::PACKAGES {
        assert_eq!(container.show(unit, "Result"), "success", "{unit} stop");
        assert_eq!(container.show(unit, "ExecMainStatus"), "0", "{unit} exit");
    }
}

/// The Debian root, made with debootstrap on first use.
fn debian_root() -> PathBuf {
    // Another test run may be making it right now: wait for it, then use what it made.
    let _machine = debian::machine_lock("debian-root");
    let root = PathBuf::from(ROOT);
    let done = root.join(".icegate-complete");
    if done.exists() {
        return root;
    }
    let partial = PathBuf::from(format!("{ROOT}.partial"));
    let _ = fs::remove_dir_all(&partial);
    let started = Instant::now();
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            "bookworm",
        ])
        .arg(&partial)
        .arg(MIRROR)
        .stdin(Stdio::null()));
    let _ = fs::remove_dir_all(&root);
    fs::rename(&partial, &root).expect("move the Debian root into place");
    fs::write(&done, "").expect("mark the Debian root complete");
    eprintln!("[systemd_boot] debootstrap: {:.0?}", started.elapsed());
    root
}

/// "Overall exposure level for X.service: 1.4 OK" → 1.4.
fn exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    line.rsplit(':')
        .next()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A booted container: `systemd-nspawn -b` on a throwaway copy of the root.
struct Container {
    nspawn: Child,
    /// PID 1 of the container, as the host sees it.
    init: u32,
    log: PathBuf,
}

impl Container {
    fn boot(root: &Path, debs: &Path) -> Container {
        let log = debs.join("console.log");
        let console = fs::File::create(&log).expect("console log");
        let nspawn = Command::new("systemd-nspawn")
            .args(["--quiet", "--register=no", "--keep-unit", "--ephemeral"])
            // Its own network namespace: the units' fixed ports meet nothing on the host.
            .arg("--private-network")
            .arg("--directory")
            .arg(root)
            .arg(format!("--bind-ro={}:/debs", debs.display()))
            .arg("--boot")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        let mut container = Container {
            init: 0,
            nspawn,
            log,
        };
        let deadline = Instant::now() + BOOT;
        let mut state = String::new();
        loop {
            // Looked up again each time: nspawn's first child is a short-lived helper that
            // sets up the namespaces and exits, and the container's init replaces it as
            // nspawn's child; a pid kept from too early would point at nothing.
            container.init = child_of(container.nspawn.id()).unwrap_or(0);
            if container.init != 0 {
                state = container.exec("systemctl is-system-running").1;
                if matches!(state.trim(), "running" | "degraded") {
                    return container;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot within {BOOT:?} (init pid {}, \
                 `systemctl is-system-running`: {:?}):\n{}",
                container.init,
                state.trim(),
                fs::read_to_string(&container.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs `script` with sh inside the container; whether it succeeded, and its output.
    fn exec(&self, script: &str) -> (bool, String) {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.init.to_string(),
                "--all",
                "--",
                "sh",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs `script`, asserting success; its output.
    fn ok(&self, script: &str) -> String {
        let (ok, text) = self.exec(script);
        assert!(ok, "in the container, `{script}` failed:\n{text}");
        text
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value {unit}"))
            .trim()
            .to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks the container's systemd to power off; nspawn then removes the copy.
        let pid = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The first child process of `pid` (the container's init, for nspawn).
fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
