//! Starting and stopping a STUN/TURN server process for one test.

use crate::metrics::Metrics;
use crate::ports::PortBlock;
use crate::{http, wait_for};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The system under test: `target/debug/icegate-relay` (or `$ICEGATE_RELAY_BIN`).
    Icegate,
    /// coturn's `turnserver`, the reference the tests are validated against.
    Coturn,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Icegate => "icegate-relay",
            ServerKind::Coturn => "turnserver (coturn)",
        }
    }
}

/// Server settings shared by both implementations (coturn option names).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub realm: String,
    /// Static long-term users (`--user NAME:PASSWORD`).
    pub users: Vec<(String, String)>,
    /// TURN REST API secrets (`--use-auth-secret --static-auth-secret S`).
    pub auth_secrets: Vec<String>,
    pub allow_loopback_peers: bool,
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub stale_nonce: Option<u32>,
    /// Relay port range; must lie inside the test's [`PortBlock`]. `None`: the block's range.
    pub port_range: Option<(u16, u16)>,
    /// Start a TLS listener with a freshly generated self-signed certificate.
    pub tls: bool,
    /// `--denied-peer-ip` values.
    pub denied_peers: Vec<String>,
    /// Extra arguments, for icegate-relay only.
    pub icegate_args: Vec<String>,
    /// Extra arguments, for coturn only.
    pub coturn_args: Vec<String>,
    /// A second listening address of 127.0.0.1's family (e.g. 127.0.0.2), which turns RFC 5780
    /// NAT behaviour discovery on in both servers, with the block's TLS port (so no TLS) as
    /// `alt-listening-port`: see [`Relay::alt_port`].
    pub second_listening_ip: Option<Ipv4Addr>,
    /// The (first) listening address: 127.0.0.1, or 0.0.0.0 for a wildcard listener, which
    /// clients still reach at 127.0.0.1 ([`Relay::udp_addr`]) or any other loopback address.
    pub listening_ip: Ipv4Addr,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            realm: "icegate.test".into(),
            users: vec![("alice".into(), "secret".into())],
            auth_secrets: vec![],
            allow_loopback_peers: true,
            user_quota: None,
            total_quota: None,
            stale_nonce: None,
            port_range: None,
            tls: false,
            denied_peers: vec![],
            icegate_args: vec![],
            coturn_args: vec![],
            second_listening_ip: None,
            listening_ip: Ipv4Addr::LOCALHOST,
        }
    }
}

/// Makes the icegate-relay processes this test process starts from now on run with
/// RLIMIT_NOFILE at `nofile`, through a wrapper script (in the returned directory, which must
/// outlive the relay's start) that sets it with `prlimit`; as root it also drops
/// CAP_SYS_RESOURCE (`setpriv`), which would otherwise let the relay raise its hard limit
/// past it.
///
/// The wrapper is chosen through `$ICEGATE_RELAY_BIN`, which every later relay of the process
/// reads: use it only in a test binary of one test.
pub fn limit_relay_nofile(nofile: u64) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("relay-with-nofile");
    let relay_bin = icegate_binary();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             if [ \"$(id -u)\" = 0 ]; then\n\
             exec prlimit --nofile={nofile}:{nofile} setpriv --inh-caps=-sys_resource \
             --bounding-set=-sys_resource {bin} \"$@\"\n\
             fi\n\
             exec prlimit --nofile={nofile}:{nofile} {bin} \"$@\"\n",
            bin = relay_bin.display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("make the wrapper executable");
    std::env::set_var("ICEGATE_RELAY_BIN", &wrapper);
    dir
}

/// The path of the icegate-relay binary (or `$ICEGATE_RELAY_BIN`).
pub fn icegate_binary() -> PathBuf {
    crate::workspace_binary("icegate-relay", "ICEGATE_RELAY_BIN")
}

/// A running server. Killed when dropped; its log is printed if the test is panicking.
pub struct Relay {
    pub kind: ServerKind,
    pub config: RelayConfig,
    pub ports: PortBlock,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    exit_status: Option<ExitStatus>,
}

impl Relay {
    /// Starts a server and waits until it is ready. Panics (printing the log) on failure.
    pub fn start(kind: ServerKind, config: RelayConfig) -> Relay {
        Relay::start_with_ports(kind, config, PortBlock::claim())
    }

    /// [`Relay::start`] on a block the caller claimed first, so that settings which must
    /// lie inside the block (`port_range`) can be derived from it.
    pub fn start_with_ports(kind: ServerKind, config: RelayConfig, ports: PortBlock) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("icegate-test-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("server.log");
        let mut relay = Relay {
            kind,
            config,
            ports,
            child: None,
            dir,
            log_path,
            exit_status: None,
        };
        let (program, args) = relay.command_line();
        let log = File::create(&relay.log_path).expect("create log file");
        let child = Command::new(&program)
            .args(&args)
            .current_dir(relay.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        eprintln!(
            "[harness] started {} pid {} ({} {})",
            kind.name(),
            child.id(),
            program.display(),
            args.join(" ")
        );
        relay.child = Some(child);
        relay.wait_ready();
        relay
    }

    /// Program and arguments for this server.
    fn command_line(&self) -> (PathBuf, Vec<String>) {
        let c = &self.config;
        let (min, max) = c.port_range.unwrap_or_else(|| self.ports.relay_range());
        assert!(
            min >= self.ports.base() && max < self.ports.base() + crate::ports::BLOCK_SIZE,
            "port range {min}-{max} outside the test's port block"
        );
        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        let listen = self.ports.listen().to_string();
        let (min, max) = (min.to_string(), max.to_string());
        let listening_ip = c.listening_ip.to_string();
        push(&["--listening-ip", &listening_ip, "--listening-port", &listen]);
        let rfc5780 = c.second_listening_ip.is_some();
        if let Some(ip) = c.second_listening_ip {
            assert!(
                !c.tls,
                "RFC 5780's alt-listening-port takes the block's TLS port"
            );
            let alt = self.alt_port().to_string();
            push(&[
                "--listening-ip",
                &ip.to_string(),
                "--alt-listening-port",
                &alt,
            ]);
        }
        push(&[
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            &min,
            "--max-port",
            &max,
        ]);
        push(&["--realm", &c.realm]);
        for (u, p) in &c.users {
            push(&["--user", &format!("{u}:{p}")]);
        }
        if !c.auth_secrets.is_empty() {
            push(&["--use-auth-secret"]);
            for s in &c.auth_secrets {
                push(&["--static-auth-secret", s]);
            }
        }
        if c.allow_loopback_peers {
            push(&["--allow-loopback-peers"]);
        }
        if let Some(q) = c.user_quota {
            push(&["--user-quota", &q.to_string()]);
        }
        if let Some(q) = c.total_quota {
            push(&["--total-quota", &q.to_string()]);
        }
        for d in &c.denied_peers {
            push(&["--denied-peer-ip", d]);
        }
        if c.tls {
            let (cert, key) = write_self_signed_cert(self.dir.path());
            push(&["--tls-listening-port", &self.ports.tls().to_string()]);
            push(&[
                "--cert",
                cert.to_str().unwrap(),
                "--pkey",
                key.to_str().unwrap(),
            ]);
        }
        match self.kind {
            ServerKind::Icegate => {
                push(&[
                    "--metrics-listen",
                    &format!("127.0.0.1:{}", self.ports.metrics()),
                ]);
                if let Some(s) = c.stale_nonce {
                    push(&["--stale-nonce", &s.to_string()]);
                }
                a.extend(c.icegate_args.iter().cloned());
                (icegate_binary(), a)
            }
            ServerKind::Coturn => {
                let pid = self.dir.path().join("turnserver.pid");
                push(&["-n", "--no-cli", "--fingerprint"]);
                if !rfc5780 {
                    push(&["--no-rfc5780"]);
                }
                push(&["--log-file", "stdout", "--simple-log"]);
                push(&["--pidfile", pid.to_str().unwrap()]);
                if !rfc5780 {
                    push(&["--alt-listening-port", "0"]);
                }
                push(&["--alt-tls-listening-port", "0"]);
                if !c.users.is_empty() && c.auth_secrets.is_empty() {
                    push(&["--lt-cred-mech"]);
                }
                // With TLS, coturn serves DTLS on the same port (UDP), as icegate-relay does.
                if !c.tls {
                    push(&["--no-tls", "--no-dtls"]);
                }
                if let Some(s) = c.stale_nonce {
                    push(&[&format!("--stale-nonce={s}")]);
                }
                a.extend(c.coturn_args.iter().cloned());
                (PathBuf::from("turnserver"), a)
            }
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.exit_status = Some(status);
                self.dump_log(200);
                panic!("{} exited during startup with {status}", self.kind.name());
            }
            if self.probe_ready() {
                return;
            }
            if Instant::now() >= deadline {
                self.dump_log(200);
                panic!(
                    "{} not ready within {READY_TIMEOUT:?} (ports {}..)",
                    self.kind.name(),
                    self.ports.base()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn probe_ready(&self) -> bool {
        match self.kind {
            ServerKind::Icegate => {
                matches!(self.http_get("/readyz"), Ok(r) if r.status == 200)
            }
            ServerKind::Coturn => {
                let tcp_ok =
                    TcpStream::connect_timeout(&self.tcp_addr(), Duration::from_millis(200))
                        .is_ok();
                let tls_ok = !self.config.tls
                    || TcpStream::connect_timeout(&self.tls_addr(), Duration::from_millis(200))
                        .is_ok();
                tcp_ok && tls_ok && stun_binding_probe(self.udp_addr())
            }
        }
    }

    pub fn udp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.listen()))
    }
    pub fn tcp_addr(&self) -> SocketAddr {
        self.udp_addr()
    }
    /// RFC 5780's second port (`alt-listening-port`) with [`RelayConfig::second_listening_ip`].
    pub fn alt_port(&self) -> u16 {
        self.ports.tls()
    }
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.tls()))
    }
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.metrics()))
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// The server process's resident memory now, in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS in /proc/PID/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The temp dir the server runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True if this server exports icegate's metrics endpoint.
    pub fn has_metrics(&self) -> bool {
        self.kind == ServerKind::Icegate
    }

    /// A Binding and an Allocate (by the first static user), so that the metric series created
    /// on first use exist; the client holds the allocation while it lives.
    pub fn first_traffic(&self) -> crate::stun::TurnClient {
        use crate::stun::{assert_success, request, StunUdp, TurnClient, BINDING};
        let udp = StunUdp::new(self.udp_addr());
        assert_success(&udp.transact(&request(BINDING, &[]), None), "Binding");
        let (user, password) = self.config.users[0].clone();
        let mut client = TurnClient::new(self.udp_addr(), &user, &password);
        assert_success(&client.allocate(), "Allocate");
        client
    }

    pub fn http_get(&self, path: &str) -> Result<http::Response, String> {
        http::get(self.metrics_addr(), path, Duration::from_secs(2))
    }

    /// Scrapes `/metrics`. Panics for servers without the endpoint.
    pub fn metrics(&self) -> Metrics {
        assert!(
            self.has_metrics(),
            "{} has no metrics endpoint",
            self.kind.name()
        );
        let resp = self.http_get("/metrics").expect("GET /metrics");
        assert_eq!(resp.status, 200, "GET /metrics status; body: {}", resp.body);
        Metrics::parse(&resp.body).expect("valid Prometheus text")
    }

    /// Scrapes `/metrics` if the server has it.
    pub fn try_metrics(&self) -> Option<Metrics> {
        self.has_metrics().then(|| self.metrics())
    }

    /// Waits until `metric{labels}` (summed) is at least `min`, polling `/metrics` for up to
    /// 3 s (counters may be updated asynchronously). Returns the last value seen.
    pub fn wait_metric_at_least(&self, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
        let mut last = 0.0;
        let ok = wait_for(Duration::from_secs(3), Duration::from_millis(50), || {
            last = self.metrics().sum(name, labels);
            (last >= min).then_some(())
        });
        if ok.is_none() {
            eprintln!(
                "[harness] metric {name}{labels:?} = {last}, expected >= {min}; scrape:\n{}",
                self.metrics().raw
            );
        }
        last
    }

    /// Waits until, since the scrape `before`, at least `allocations` UDP allocations were made
    /// and at least `packets` packets were relayed in each direction; panics otherwise.
    /// Returns the packet totals (client→peer, peer→client) for further checks.
    pub fn assert_relayed(&self, before: &Metrics, allocations: f64, packets: f64) -> [f64; 2] {
        let udp = [("transport", "udp")];
        let min = before.sum("icegate_relay_allocations_total", &udp) + allocations;
        let made = self.wait_metric_at_least("icegate_relay_allocations_total", &udp, min);
        assert!(
            made >= min,
            "icegate_relay_allocations_total{{transport=udp}} is {made}, expected >= {min}"
        );
        ["client_to_peer", "peer_to_client"].map(|direction| {
            let labels = [("direction", direction)];
            let min = before.sum("icegate_relay_packets_total", &labels) + packets;
            let relayed = self.wait_metric_at_least("icegate_relay_packets_total", &labels, min);
            assert!(
                relayed >= min,
                "icegate_relay_packets_total{{direction={direction}}} is {relayed}, expected >= {min}"
            );
            relayed
        })
    }

    /// The server's combined stdout/stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Prints the last `n` lines of the server log to stderr.
    pub fn dump_log(&self, n: usize) {
        let lines: Vec<String> = File::open(&self.log_path)
            .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
            .unwrap_or_default();
        let start = lines.len().saturating_sub(n);
        eprintln!(
            "----- last {} of {} lines of {} log ({}) -----",
            lines.len() - start,
            lines.len(),
            self.kind.name(),
            self.log_path.display()
        );
        for l in &lines[start..] {
            eprintln!("{l}");
        }
        eprintln!("----- end of server log -----");
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(st)) => {
                    self.exit_status = Some(st);
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit. `None` if it did not exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.exit_status = Some(st);
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let show = std::thread::panicking() || std::env::var_os("ICEGATE_TEST_SHOW_LOGS").is_some();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if show {
            self.dump_log(150);
        }
    }
}

/// Sends a bare STUN Binding request (built by hand, no attributes) and waits for a
/// Binding success response with the same transaction id.
pub fn stun_binding_probe(server: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let txid: [u8; 12] = rand::random();
    let req = icegate_testkit::Message::request(icegate_testkit::method::BINDING, txid).finish();
    if sock.send_to(&req, server).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == txid,
        Err(_) => false,
    }
}

/// Writes a self-signed certificate for `localhost`/127.0.0.1 and its key as PEM files.
pub fn write_self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate certificate");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("write key");
    (cert, key)
}

/// Runs `icegate-relay ARGS` to completion (for `--check-config` and friends), with a
/// timeout. Returns (status, combined output).
pub fn run_icegate_once(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
    crate::tools::run_with_timeout(Command::new(icegate_binary()).args(args), timeout)
}
