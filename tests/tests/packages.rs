//! The Debian packages: `cargo deb` packages icegate-relay and icegate-signal (the debug
//! binaries the other tests run: see `icegate_tests::debian`), `dpkg -i` installs them on
//! this machine, and the installed system is checked: paths, owners and modes, the `icegate` system user, the generated secret both
//! configurations use, conffiles, `--check-config` as user icegate, a relay and a signal
//! server started as icegate from the installed files (a TURN credential handed out by the
//! signal server allocates on the relay). Then a reinstall keeps the secret, the certificate
//! and an edited conffile, and `dpkg --purge` removes everything the packages made.
//!
//! It changes the system it runs on, so: it needs root and dpkg (skipped with a message
//! otherwise); it refuses to start when either package or /etc/icegate is already there
//! rather than purge someone's installation; and a guard purges both packages (and removes
//! the `icegate` user if this test's install created it) even when an assertion fails.
#![deny(unsafe_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use icegate_tests::debian::{self, run, PACKAGES};
use icegate_tests::stun::{assert_success, TurnClient};
use icegate_tests::{http, server::stun_binding_probe, wait_for, workspace_root, PortBlock};

const ETC: &str = "/etc/icegate";
const SECRET: &str = "/etc/icegate/rest-secret";
const CERT: &str = "/etc/icegate/tls/self-signed.pem";
const KEY: &str = "/etc/icegate/tls/self-signed.key";
const RELAY_TOML: &str = "/etc/icegate/relay.toml";
const SIGNAL_TOML: &str = "/etc/icegate/signal.toml";
/// What `setpriv` needs to run a command as the services' user.
const AS_ICEGATE: [&str; 5] = ["--reuid", "icegate", "--regid", "icegate", "--init-groups"];
const READY: Duration = Duration::from_secs(15);

#[test]
fn debian_packages_install_run_reinstall_and_purge() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED packages: installing Debian packages needs root; run as root to test them"
        );
        return;
    }
    if !Path::new("/usr/bin/dpkg").exists() {
        eprintln!("SKIPPED packages: no dpkg here, so this is no Debian system");
        return;
    }
    // Another test run on this machine may be installing them right now: wait for it.
    let _machine = debian::machine_lock("dpkg");
    for package in PACKAGES {
        let status = dpkg_status(package);
        assert!(
            status.is_empty() || status == "not-installed",
            "{package} is already on this machine (dpkg status {status:?}); this test installs \
             and purges it, so it refuses to run: `dpkg --purge {package}` first if that \
             installation can go"
        );
    }
    assert!(
        !Path::new(ETC).exists(),
        "{ETC} exists (an installation by hand?); this test's purge would remove files in \
         it, so it refuses to run"
    );
    assert!(
        debian::cargo_deb_available(),
        "cargo-deb is missing: scripts/install-deps installs it (cargo install cargo-deb --locked)"
    );

    let out = tempfile::Builder::new()
        .prefix("icegate-packages-")
        .tempdir()
        .expect("tempdir");
    // The units as they are packaged, read before the build: the packages must carry them
    // unchanged.
    let units: Vec<(String, String)> = PACKAGES
        .iter()
        .map(|p| {
            let path = workspace_root().join(format!("systemd/{p}.service"));
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (p.to_string(), text)
        })
        .collect();
    let debs = debian::build_packages(out.path(), "packages");

    let user_existed = run_status(Command::new("getent").args(["passwd", "icegate"]));
    let _cleanup = Cleanup { user_existed };
    install(&debs);

    let icegate = check_user();
    check_installed(&icegate, &units);
    let secret = fs::read_to_string(SECRET).expect("read the secret");
    assert!(
        secret.len() == 65
            && secret.ends_with('\n')
            && secret[..64].bytes().all(|b| b.is_ascii_hexdigit()),
        "{SECRET} should hold 32 random bytes in hex and a newline ({} bytes)",
        secret.len()
    );
    let secret = secret.trim_end().to_owned();
    check_as_icegate(&secret, &out.path().join("logs"));

    // Reinstall, as `apt install --reinstall` or a repeated `dpkg -i` would, after the
    // operator edited one configuration file.
    let edited = format!(
        "{}\n# edited by the operator\n",
        fs::read_to_string(RELAY_TOML).unwrap()
    );
    fs::write(RELAY_TOML, &edited).unwrap();
    let kept: Vec<(&str, Vec<u8>)> = [SECRET, CERT, KEY, SIGNAL_TOML, RELAY_TOML]
        .into_iter()
        .map(|path| (path, fs::read(path).unwrap()))
        .collect();
    install(&debs);
    for (path, before) in &kept {
        assert!(
            fs::read(path).unwrap() == *before,
            "the reinstall changed {path}"
        );
    }
    assert!(
        !Path::new(&format!("{RELAY_TOML}.dpkg-dist")).exists()
            && !Path::new(&format!("{RELAY_TOML}.dpkg-new")).exists(),
        "the reinstall left a new version of the unchanged relay.toml beside the edited one"
    );
    check_installed(&icegate, &units);

    // Purging one package keeps what the other one still uses.
    dpkg(&["--purge", "icegate-signal"]);
    for gone in [SIGNAL_TOML, "/usr/bin/icegate-signal"] {
        assert!(
            !Path::new(gone).exists(),
            "{gone} is left after purging icegate-signal"
        );
    }
    for kept in [SECRET, CERT, KEY, RELAY_TOML] {
        assert!(
            Path::new(kept).exists(),
            "purging icegate-signal removed {kept}, which icegate-relay still uses"
        );
    }
    dpkg(&["--purge", "icegate-relay"]);
    assert!(
        !Path::new(ETC).exists(),
        "{ETC} is left after purging both packages: {:?}",
        walk(Path::new(ETC))
    );
    for package in PACKAGES {
        let status = dpkg_status(package);
        assert!(
            status.is_empty() || status == "not-installed",
            "{package} is not purged: dpkg status {status:?}"
        );
        for path in [
            format!("/usr/bin/{package}"),
            format!("/lib/systemd/system/{package}.service"),
            format!("/usr/lib/systemd/system/{package}.service"),
        ] {
            assert!(!Path::new(&path).exists(), "{path} is left after the purge");
        }
    }
}

/// Purges both packages when the test ends, passed or not, and removes the user the install
/// created (the packages keep it on purge, as Debian's do, but this test leaves the machine
/// as it found it).
struct Cleanup {
    user_existed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let output = Command::new("dpkg")
            .args(["--purge", PACKAGES[0], PACKAGES[1]])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "[packages] cleanup: dpkg --purge failed: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("[packages] cleanup: cannot run dpkg: {e}"),
        }
        if !self.user_existed {
            // userdel also removes the user's group of the same name.
            let _ = Command::new("userdel").arg("icegate").status();
            let _ = Command::new("groupdel")
                .arg("icegate")
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A process started from the installed files; killed when dropped, its log printed if the
/// test fails.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(name: &'static str, args: &[String], logs: &Path) -> Service {
        fs::create_dir_all(logs).unwrap();
        let log = logs.join(format!("{name}.log"));
        let file = fs::File::create(&log).unwrap();
        let child = Command::new("setpriv")
            .args(AS_ICEGATE)
            .arg(format!("/usr/bin/{name}"))
            .args(args)
            // Somewhere the icegate user may not write: nothing may need the working directory.
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Service { name, child, log }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for `/readyz` on `metrics` to answer 200.
    fn wait_ready(&mut self, metrics: SocketAddr) {
        let ready = http::wait_ready(metrics, READY, Duration::from_millis(100), || {
            self.running()
        });
        assert!(
            ready,
            "{} did not become ready within {READY:?} (exited: {:?})",
            self.name,
            self.child.try_wait()
        );
    }

    /// The real user id of the process (setpriv execs the service, so the pid is the same).
    fn uid(&self) -> u32 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} log ---\n{}",
                self.name,
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// The `icegate` account as the packages made it: (uid, gid).
fn check_user() -> (u32, u32) {
    let passwd = run(Command::new("getent").args(["passwd", "icegate"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "getent passwd icegate: {passwd:?}");
    let uid: u32 = fields[2].parse().unwrap();
    let gid: u32 = fields[3].parse().unwrap();
    // Debian's system accounts are 100-999 (adduser.conf FIRST/LAST_SYSTEM_UID).
    assert!(
        (100..1000).contains(&uid),
        "icegate is no system user: uid {uid}"
    );
    assert_eq!(fields[6], "/usr/sbin/nologin", "icegate's shell");
    let group = run(Command::new("getent").args(["group", "icegate"]));
    assert_eq!(
        group.split(':').nth(2).and_then(|g| g.parse::<u32>().ok()),
        Some(gid),
        "icegate's primary group should be the group icegate: {group:?}"
    );
    (uid, gid)
}

/// Paths, owners, modes, conffiles and units of both installed packages.
fn check_installed(&(_, gid): &(u32, u32), units: &[(String, String)]) {
    let expect = |path: &str, uid: u32, gid: u32, mode: u32| {
        let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (uid, gid, mode),
            "{path}: (owner, group, mode) should be ({uid}, {gid}, {mode:o}), is \
             ({}, {}, {:o})",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        );
    };
    expect("/usr/bin/icegate-relay", 0, 0, 0o755);
    expect("/usr/bin/icegate-signal", 0, 0, 0o755);
    expect(ETC, 0, gid, 0o750);
    expect(RELAY_TOML, 0, gid, 0o640);
    expect(SIGNAL_TOML, 0, gid, 0o640);
    expect(SECRET, 0, gid, 0o640);
    expect(&format!("{ETC}/tls"), 0, gid, 0o750);
    expect(KEY, 0, gid, 0o640);
    expect(CERT, 0, gid, 0o644);

    let root = workspace_root();
    for (config, packaged) in [(RELAY_TOML, "relay.toml"), (SIGNAL_TOML, "signal.toml")] {
        // Both name the one generated secret and certificate (the relay's as a conffile may
        // carry the operator's edit of the reinstall step, which only appends).
        let text = fs::read_to_string(config).unwrap();
        let source = fs::read_to_string(root.join("packaging").join(packaged)).unwrap();
        assert!(
            text.starts_with(&source),
            "{config} is not packaging/{packaged}"
        );
        for line in [
            format!("static-auth-secret-file = \"{SECRET}\""),
            format!("cert = \"{CERT}\""),
            format!("pkey = \"{KEY}\""),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{config} lacks the line {line}"
            );
        }
    }

    for (package, unit) in units {
        let conffiles =
            run(Command::new("dpkg-query").args(["--control-show", package, "conffiles"]));
        let name = package.trim_start_matches("icegate-");
        assert_eq!(
            conffiles.trim(),
            format!("{ETC}/{name}.toml"),
            "{package}'s conffiles"
        );
        let listed = run(Command::new("dpkg").args(["-L", package]));
        let path = listed
            .lines()
            .find(|l| l.ends_with(&format!("/systemd/system/{package}.service")))
            .unwrap_or_else(|| panic!("{package} has no systemd unit:\n{listed}"));
        assert_eq!(
            &fs::read_to_string(path).unwrap(),
            unit,
            "{path} differs from systemd/{package}.service"
        );
        // Installed, not enabled: the operator starts it.
        for wants in ["multi-user.target.wants", "default.target.wants"] {
            let link = format!("/etc/systemd/system/{wants}/{package}.service");
            assert!(
                fs::symlink_metadata(&link).is_err(),
                "{link} exists: the package enabled the unit"
            );
        }
    }
}

/// `--check-config` and a real start of both services as user icegate, from the installed
/// configuration (with this test's ports): the relay answers STUN, the signal server hands
/// out a TURN credential made with the generated secret, and the relay accepts it.
fn check_as_icegate(secret: &str, logs: &Path) {
    for (name, config) in [
        ("icegate-relay", RELAY_TOML),
        ("icegate-signal", SIGNAL_TOML),
    ] {
        let out = run(Command::new("setpriv").args(AS_ICEGATE).args([
            &format!("/usr/bin/{name}"),
            "--check-config",
            "--config",
            config,
        ]));
        assert!(
            out.contains("configuration OK"),
            "{name} --check-config:\n{out}"
        );
    }
    // And the secret is not for everyone: mode 0640 keeps other users out.
    assert!(
        !run_status(
            Command::new("setpriv")
                .args([
                    "--reuid",
                    "nobody",
                    "--regid",
                    "nogroup",
                    "--clear-groups",
                    "cat",
                    SECRET
                ])
                .stderr(Stdio::null())
        ),
        "user nobody can read {SECRET}"
    );

    let ports = PortBlock::claim();
    let local = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (min, max) = ports.relay_range();
    let mut relay = Service::start(
        "icegate-relay",
        &[
            "--config".into(),
            RELAY_TOML.into(),
            "--listening-port".into(),
            ports.listen().to_string(),
            "--tls-listening-port".into(),
            ports.tls().to_string(),
            "--min-port".into(),
            min.to_string(),
            "--max-port".into(),
            max.to_string(),
            "--metrics-listen".into(),
            local(ports.metrics()).to_string(),
        ],
        logs,
    );
    relay.wait_ready(local(ports.metrics()));
    let icegate_uid = check_user().0;
    assert_eq!(
        relay.uid(),
        icegate_uid,
        "the relay does not run as icegate"
    );
    assert!(
        wait_for(Duration::from_secs(5), Duration::from_millis(100), || {
            stun_binding_probe(local(ports.listen())).then_some(())
        })
        .is_some(),
        "the installed relay does not answer a STUN Binding on {}",
        local(ports.listen())
    );
    // TLS is on with the generated certificate: the listener accepts connections.
    assert!(
        std::net::TcpStream::connect_timeout(&local(ports.tls()), Duration::from_secs(2)).is_ok(),
        "no TLS listener on {}",
        local(ports.tls())
    );

    let mut signal = Service::start(
        "icegate-signal",
        &[
            "--config".into(),
            SIGNAL_TOML.into(),
            "--listen".into(),
            local(ports.signal()).to_string(),
            "--metrics-listen".into(),
            local(ports.signal_metrics()).to_string(),
            // The packaged relay URIs name the relay's default ports; this test's relay
            // listens elsewhere.
            "--relay".into(),
            format!("turn:127.0.0.1:{}?transport=udp", ports.listen()),
            "--relay-health".into(),
            format!("http://{}/readyz", local(ports.metrics())),
        ],
        logs,
    );
    signal.wait_ready(local(ports.signal_metrics()));
    assert_eq!(
        signal.uid(),
        icegate_uid,
        "the signal server does not run as icegate"
    );
    // curl checks the generated certificate: it must be valid for 127.0.0.1.
    let body = run(Command::new("curl").args([
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "--cacert",
        CERT,
        &format!("https://127.0.0.1:{}/v1/ice-servers", ports.signal()),
    ]));
    let servers: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("/v1/ice-servers is not JSON ({e}): {body}"));
    let turn = servers["iceServers"]
        .as_array()
        .and_then(|list| list.iter().find(|s| s["username"].is_string()))
        .unwrap_or_else(|| panic!("no TURN credential in /v1/ice-servers: {body}"));
    let username = turn["username"].as_str().unwrap();
    let credential = turn["credential"].as_str().unwrap();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        credential, expected,
        "the signal server does not sign with {SECRET}"
    );
    let mut client = TurnClient::new(local(ports.listen()), username, credential);
    let response = client.allocate();
    assert_success(&response, "Allocate with the signal server's credential");
    assert!(relay.running() && signal.running());
}

/// Runs dpkg without a terminal, asserting success: a conffile question it cannot ask fails
/// the test rather than being answered for it.
fn dpkg(args: &[&str]) {
    run(Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()));
}

/// `dpkg -i` of both packages at once, as `apt install ./A.deb ./B.deb` does it.
fn install(debs: &[PathBuf]) {
    let mut args = vec!["-i"];
    args.extend(debs.iter().map(|d| d.to_str().expect("UTF-8 path")));
    dpkg(&args);
}

/// dpkg's status of `package` ("installed", "config-files", ...), empty when it knows none.
fn dpkg_status(package: &str) -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .stderr(Stdio::null())
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn run_status(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What is left under `dir`, for the purge's failure message.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            found.push(entry.path());
            found.extend(walk(&entry.path()));
        }
    }
    found
}
