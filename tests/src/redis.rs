//! A throwaway `redis-server` on a loopback port, for the cluster tests: no persistence, its
//! own directory, stopped and started again on the same port to play a Redis outage, and
//! killed when dropped.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::PortBlock;

/// How long redis-server may take to answer PING after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of `redis-server` (or `$REDIS_SERVER_BIN`); `scripts/install-deps` installs
/// Debian's.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

/// A running (or stopped) redis-server that the test owns.
pub struct RedisServer {
    ports: PortBlock,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let binary = redis_server_binary();
        assert!(
            binary.exists(),
            "{} is missing: run scripts/install-deps (Debian's redis-server)",
            binary.display()
        );
        let mut server = RedisServer {
            ports: PortBlock::claim(),
            dir: tempfile::Builder::new()
                .prefix("icegate-redis-test-")
                .tempdir()
                .expect("tempdir"),
            child: None,
        };
        server.restart();
        server
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.listen()))
    }

    /// The `redis-url` for icegate-signal.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("[harness] redis-server pid {} stopped", child.id());
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::stop`]), empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = Command::new(redis_server_binary())
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.ports.listen().to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn redis-server");
        eprintln!(
            "[harness] started redis-server pid {} on {}",
            child.id(),
            self.addr()
        );
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING within {READY_TIMEOUT:?}: {}",
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the server answers `PING` with `+PONG` now.
    pub fn answers_ping(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        tcp.write_all(b"PING\r\n").is_ok()
            && tcp.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
