//! The servers under test, started with equivalent settings: icegate-relay, coturn, and the
//! floor forwarder (this binary's `floor` subcommand); for the signal scenarios,
//! icegate-signal and Janus (`src/janus.rs`).

use crate::error::BenchError;
use crate::floor;
use crate::janus;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's redis-server (`scripts/install-deps` installs it), for the cluster scenario.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// icegate-relay.
    Icegate,
    /// coturn's turnserver.
    Coturn,
    /// The bare UDP forwarder.
    Floor,
    /// The Janus WebRTC server (signal scenarios only; icegate means icegate-signal there).
    Janus,
}

impl Kind {
    /// The name used in arguments and tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Icegate => "icegate",
            Kind::Coturn => "coturn",
            Kind::Floor => "floor",
            Kind::Janus => "janus",
        }
    }

    /// Parses a name given on the command line.
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        match s {
            "icegate" => Ok(Kind::Icegate),
            "coturn" => Ok(Kind::Coturn),
            "floor" => Ok(Kind::Floor),
            "janus" => Ok(Kind::Janus),
            _ => Err(BenchError::Config(format!(
                "unknown contender {s:?} (icegate, coturn, floor, janus)"
            ))),
        }
    }
}

/// Settings every contender gets, translated into its own flags.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The icegate-relay binary.
    pub relay_bin: PathBuf,
    /// coturn's turnserver binary.
    pub coturn_bin: PathBuf,
    /// This harness's binary (for the floor).
    pub bench_bin: PathBuf,
    /// The icegate-signal binary (signal scenarios).
    pub signal_bin: PathBuf,
    /// Janus's binary (signal scenarios).
    pub janus_bin: PathBuf,
    /// Address the servers listen on.
    pub listen_ip: Ipv4Addr,
    /// Relay addresses.
    pub relay_ips: Vec<Ipv4Addr>,
    /// Relay port range.
    pub min_port: u16,
    /// Relay port range.
    pub max_port: u16,
    /// Worker (relay) threads.
    pub workers: usize,
    /// CPUs the server is pinned to (taskset list), if any.
    pub cpus: Option<String>,
    /// TURN REST shared secret.
    pub secret: String,
    /// Realm.
    pub realm: String,
}

impl ServerSpec {
    /// Where clients send to: the listening address, or 127.0.0.1 for a wildcard listener.
    pub fn reached_at(&self) -> Ipv4Addr {
        if self.listen_ip.is_unspecified() {
            Ipv4Addr::LOCALHOST
        } else {
            self.listen_ip
        }
    }
}

/// What a scenario needs of a server beyond the shared settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Setup {
    /// Listen on TCP as well as UDP.
    pub tcp: bool,
    /// Leave icegate-relay's rate limit at its default instead of turning it off.
    pub default_limits: bool,
    /// Start the signaling server (icegate-signal, Janus) instead of the TURN server.
    pub signal: bool,
    /// Signaling over TLS (wss), with a certificate the harness makes.
    pub tls: bool,
    /// Two icegate-signal instances sharing one redis-server (`redis-url`), instead of one.
    pub cluster: bool,
}

/// A running server.
pub struct Contender {
    /// Which server.
    pub kind: Kind,
    /// Its process id (taskset execs the server, so this is the server itself).
    pub pid: u32,
    /// Where clients reach it.
    pub addr: SocketAddrV4,
    /// Whether clients must speak TLS (signal scenarios).
    pub tls: bool,
    child: Child,
    /// A directory of the harness's (certificate, Janus's configuration), removed on drop.
    dir: Option<PathBuf>,
    /// The processes that run beside it in a cluster setup: the redis-server first, then
    /// the other icegate-signal instances.
    companions: Vec<Companion>,
}

/// A process started next to a contender (see [`Setup::cluster`]), killed with it.
struct Companion {
    child: Child,
    /// Where clients reach it, for a signaling instance; `None` for the redis-server.
    addr: Option<SocketAddrV4>,
    dir: Option<PathBuf>,
}

impl Drop for Companion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A port free for UDP and TCP on `ip` (the relay listens on both).
pub fn free_port(ip: Ipv4Addr) -> Result<u16, BenchError> {
    for _ in 0..50 {
        let udp =
            UdpSocket::bind(SocketAddrV4::new(ip, 0)).map_err(|e| BenchError::io("bind", e))?;
        let port = udp
            .local_addr()
            .map_err(|e| BenchError::io("bind", e))?
            .port();
        if std::net::TcpListener::bind(SocketAddrV4::new(ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BenchError::Contender("no free port".into()))
}

impl Contender {
    /// Starts `kind` and waits until it answers.
    pub fn start(kind: Kind, spec: &ServerSpec) -> Result<Self, BenchError> {
        Self::start_with(kind, spec, Setup::default())
    }

    /// Starts `kind` with a scenario's `setup` and waits until it answers.
    pub fn start_with(kind: Kind, spec: &ServerSpec, setup: Setup) -> Result<Self, BenchError> {
        let mut companions = Vec::new();
        let redis_url = if setup.cluster {
            let (redis, url) = start_redis(spec)?;
            companions.push(redis);
            Some(url)
        } else {
            None
        };
        let port = free_port(spec.listen_ip)?;
        let addr = SocketAddrV4::new(spec.reached_at(), port);
        let (program, args, dir) = if setup.signal {
            janus::signal_command(kind, spec, addr, setup.tls, redis_url.as_deref())?
        } else {
            let (program, args) = Self::command(kind, spec, port, setup)?;
            (program, args, None)
        };
        let child = spawn(spec, &program, &args, dir.as_deref())?;
        let mut me = Self {
            kind,
            pid: child.id(),
            addr,
            tls: setup.tls,
            child,
            dir,
            companions,
        };
        if setup.signal {
            me.wait_listening(Duration::from_secs(10))?;
        } else {
            me.wait_ready(Duration::from_secs(10))?;
        }
        if setup.cluster {
            // The second instance: the same settings, its own port, the same Redis.
            let addr = SocketAddrV4::new(spec.listen_ip, free_port(spec.listen_ip)?);
            let (program, args, dir) =
                janus::signal_command(kind, spec, addr, setup.tls, redis_url.as_deref())?;
            let child = spawn(spec, &program, &args, dir.as_deref())?;
            me.companions.push(Companion {
                child,
                addr: Some(addr),
                dir,
            });
            wait_accepting(addr, Duration::from_secs(10))?;
        }
        Ok(me)
    }

    /// Where clients reach the server: its own address, then the other instances' of a
    /// cluster.
    pub fn instances(&self) -> Vec<SocketAddrV4> {
        std::iter::once(self.addr)
            .chain(self.companions.iter().filter_map(|c| c.addr))
            .collect()
    }

    /// Every process of the contender (the server, then its companions), whose CPU and
    /// memory count as the contender's.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid)
            .chain(self.companions.iter().map(|c| c.child.id()))
            .collect()
    }

    fn command(
        kind: Kind,
        spec: &ServerSpec,
        port: u16,
        setup: Setup,
    ) -> Result<(PathBuf, Vec<String>), BenchError> {
        let s = |v: &str| v.to_string();
        let listen = spec.listen_ip.to_string();
        let workers = spec.workers.to_string();
        // The settings both TURN servers share, under the names both take (icegate-relay
        // reads coturn's); then each one's thread flag and its own extras.
        let turn_args = |threads: &str| {
            let mut a = vec![
                s("--listening-ip"),
                listen.clone(),
                s("--listening-port"),
                port.to_string(),
            ];
            for ip in &spec.relay_ips {
                a.extend([s("--relay-ip"), ip.to_string()]);
            }
            a.extend([
                s("--min-port"),
                spec.min_port.to_string(),
                s("--max-port"),
                spec.max_port.to_string(),
                s("--use-auth-secret"),
                s("--static-auth-secret"),
                spec.secret.clone(),
                s("--realm"),
                spec.realm.clone(),
                s("--allow-loopback-peers"),
                s(threads),
                workers.clone(),
                s("--user-quota"),
                s("0"),
                s("--total-quota"),
                s("0"),
            ]);
            if !setup.tcp {
                a.push(s("--no-tcp"));
            }
            a
        };
        Ok(match kind {
            Kind::Icegate => {
                let mut a = turn_args("--workers");
                if !setup.default_limits {
                    // Every client's first Allocate fails authentication by design; the
                    // default limit of 20/s per source IP would throttle the load itself.
                    a.extend([s("--rate-limit"), s("0")]);
                }
                a.extend([s("--drain-timeout"), s("0")]);
                (spec.relay_bin.clone(), a)
            }
            Kind::Janus => {
                return Err(BenchError::Contender(
                    "Janus runs the signal scenarios only".into(),
                ))
            }
            Kind::Coturn => {
                if !spec.coturn_bin.exists() {
                    return Err(BenchError::Contender(format!(
                        "{} not found (apt-get install coturn)",
                        spec.coturn_bin.display()
                    )));
                }
                let mut a = vec![s("-n")];
                a.extend(turn_args("--relay-threads"));
                a.extend([
                    s("--no-cli"),
                    s("--no-tls"),
                    s("--no-dtls"),
                    s("--no-tcp-relay"),
                    s("--no-multicast-peers"),
                    s("--no-stdout-log"),
                    s("--log-file"),
                    s("/dev/null"),
                    s("--pidfile"),
                    format!("/tmp/icegate-bench-coturn-{port}.pid"),
                ]);
                (spec.coturn_bin.clone(), a)
            }
            Kind::Floor => {
                let relay = spec.relay_ips.first().copied().unwrap_or(spec.listen_ip);
                (
                    spec.bench_bin.clone(),
                    vec![
                        s("floor"),
                        s("--listen"),
                        SocketAddrV4::new(spec.listen_ip, port).to_string(),
                        s("--relay-ip"),
                        relay.to_string(),
                        s("--workers"),
                        workers,
                    ],
                )
            }
        })
    }

    /// Probes until the server answers: a STUN Binding request, or a floor ping.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| BenchError::io("probe socket", e))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| BenchError::io("probe socket", e))?;
        let probe: Vec<u8> = match self.kind {
            Kind::Floor => {
                floor::control(floor::OP_PING, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).to_vec()
            }
            _ => {
                // Binding request: type 0x0001, length 0, magic cookie, transaction id.
                let mut b = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
                b.extend_from_slice(b"benchprobe01");
                b
            }
        };
        let start = Instant::now();
        let mut buf = [0u8; 1500];
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Contender(format!(
                    "{} exited at start: {status}",
                    self.kind.name()
                )));
            }
            let _ = sock.send_to(&probe, SocketAddr::V4(self.addr));
            if let Ok(n) = sock.recv(&mut buf) {
                if n > 0 {
                    return Ok(());
                }
            }
        }
        Err(BenchError::Contender(format!(
            "{} did not answer on {} within {timeout:?}",
            self.kind.name(),
            self.addr
        )))
    }

    /// Waits until the server accepts TCP connections (the signaling servers, which answer
    /// no STUN).
    fn wait_listening(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Contender(format!(
                    "{} exited at start: {status}",
                    self.kind.name()
                )));
            }
            let addr = SocketAddr::V4(self.addr);
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(BenchError::Contender(format!(
            "{} did not listen on {} within {timeout:?}",
            self.kind.name(),
            self.addr
        )))
    }

    /// The harness's directory of this server (certificate, configuration), if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Starts `program` as a server: pinned to the servers' CPUs when taskset is there, quiet,
/// in `dir` when given (anything it writes there goes with the directory).
fn spawn(
    spec: &ServerSpec,
    program: &Path,
    args: &[String],
    dir: Option<&Path>,
) -> Result<Child, BenchError> {
    let mut cmd = match (&spec.cpus, Path::new("/usr/bin/taskset").exists()) {
        (Some(cpus), true) => {
            let mut c = Command::new("/usr/bin/taskset");
            c.arg("-c").arg(cpus).arg(program);
            c
        }
        _ => Command::new(program),
    };
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::Contender(format!("start {}: {e}", program.display())))
}

/// A redis-server on a free loopback port, without persistence, pinned like the servers
/// (its CPU counts as the cluster's); returns it and its `redis-url`.
fn start_redis(spec: &ServerSpec) -> Result<(Companion, String), BenchError> {
    let port = free_port(spec.listen_ip)?;
    let dir =
        std::env::temp_dir().join(format!("icegate-bench-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    let args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        &spec.listen_ip.to_string(),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(String::from)
    .into();
    let child = spawn(spec, Path::new(REDIS_SERVER), &args, Some(&dir))?;
    let addr = SocketAddrV4::new(spec.listen_ip, port);
    let redis = Companion {
        child,
        addr: None,
        dir: Some(dir),
    };
    wait_accepting(addr, Duration::from_secs(10))?;
    Ok((redis, format!("redis://{addr}")))
}

/// Waits until something accepts TCP connections on `addr`.
fn wait_accepting(addr: SocketAddrV4, timeout: Duration) -> Result<(), BenchError> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let target = SocketAddr::V4(addr);
        if std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::Contender(format!(
        "nothing listened on {addr} within {timeout:?}"
    )))
}

impl Drop for Contender {
    fn drop(&mut self) {
        // SIGKILL: a benchmark has nothing to drain, and coturn can take seconds to stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.kind == Kind::Coturn {
            let _ = std::fs::remove_file(format!(
                "/tmp/icegate-bench-coturn-{}.pid",
                self.addr.port()
            ));
        }
    }
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, else `target/` beside the
/// workspace's Cargo.toml.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("."))
                .join("target")
        })
}

/// The icegate-relay binary of `profile` (`release` or `debug`): `$ICEGATE_RELAY_BIN`, or
/// the target directory's, built with cargo when missing.
pub fn relay_binary(profile: &str) -> Result<PathBuf, BenchError> {
    workspace_binary("icegate-relay", "ICEGATE_RELAY_BIN", profile)
}

/// The icegate-signal binary of `profile`: `$ICEGATE_SIGNAL_BIN`, or the target directory's,
/// built with cargo when missing.
pub fn signal_binary(profile: &str) -> Result<PathBuf, BenchError> {
    workspace_binary("icegate-signal", "ICEGATE_SIGNAL_BIN", profile)
}

fn workspace_binary(name: &str, env: &str, profile: &str) -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let target = target_dir();
    let bin = target.join(profile).join(name);
    if bin.exists() {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "-p", name, "--bin", name])
        .env("CARGO_TARGET_DIR", &target);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .map_err(|e| BenchError::Contender(format!("cargo build: {e}")))?;
    if !status.success() || !bin.exists() {
        return Err(BenchError::Contender(format!(
            "cargo build -p {name} failed; {} missing",
            bin.display()
        )));
    }
    Ok(bin)
}
