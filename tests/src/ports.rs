//! Per-test loopback port blocks that never overlap between tests running in parallel.
//!
//! nextest runs every test in its own process, so an in-process counter is not enough.
//! The port space 10000..32000 (below Linux's default ephemeral range, 32768..60999, so
//! that client sockets bound to port 0 never land in a block) is cut into blocks of
//! [`BLOCK_SIZE`] ports. A test owns a block while it holds an exclusive `flock` on the
//! block's lock file in the temp dir; the kernel drops the lock when the process dies,
//! so a crashed test never leaks its block. Every port of a claimed block is also probed
//! (bound and closed, UDP and TCP) so that a block used by some unrelated program is
//! skipped.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;

/// Ports per block.
pub const BLOCK_SIZE: u16 = 64;
const FIRST_PORT: u16 = 10_000;
const LAST_PORT: u16 = 32_000;

/// Offsets inside a block.
const OFF_LISTEN: u16 = 0;
const OFF_TLS: u16 = 1;
const OFF_METRICS: u16 = 2;
/// `turnutils_peer` listens on its port and the next one.
const OFF_PEER: u16 = 3;
/// A real Asterisk's HTTPS port; shares the peer's second port, as no test runs both.
const OFF_ASTERISK_TLS: u16 = 4;
/// icegate-signal's HTTP(S) listener.
const OFF_SIGNAL: u16 = 5;
/// icegate-signal's metrics listener.
const OFF_SIGNAL_METRICS: u16 = 6;
/// The Asterisk stand-in's HTTP port (tests/src/asterisk/).
const OFF_ASTERISK: u16 = 7;
/// First port of the relay range; the range runs to the end of the block.
const OFF_RELAY: u16 = 8;

/// A claimed block of ports. Released when dropped.
#[derive(Debug)]
pub struct PortBlock {
    base: u16,
    _lock: Flock<File>,
}

impl PortBlock {
    /// Claims a free block. Panics if none is free (that would take ~340 tests at once).
    pub fn claim() -> PortBlock {
        let dir = lock_dir();
        std::fs::create_dir_all(&dir).expect("create port lock dir");
        let blocks = (LAST_PORT - FIRST_PORT) / BLOCK_SIZE;
        // Start at a random block so parallel processes rarely contend for the same lock.
        let start: u16 = rand::random::<u16>() % blocks;
        for i in 0..blocks {
            let idx = (start + i) % blocks;
            let base = FIRST_PORT + idx * BLOCK_SIZE;
            let path = dir.join(format!("block-{base}.lock"));
            let file = match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(_) => continue,
            };
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err(_) => continue,
            };
            if block_is_free(base) {
                return PortBlock { base, _lock: lock };
            }
        }
        panic!("no free loopback port block in {FIRST_PORT}..{LAST_PORT}");
    }

    /// First port of the block.
    pub fn base(&self) -> u16 {
        self.base
    }
    /// The relay's UDP+TCP listening port.
    pub fn listen(&self) -> u16 {
        self.base + OFF_LISTEN
    }
    /// The relay's TLS listening port.
    pub fn tls(&self) -> u16 {
        self.base + OFF_TLS
    }
    /// The relay's metrics HTTP port.
    pub fn metrics(&self) -> u16 {
        self.base + OFF_METRICS
    }
    /// A port for a peer (`turnutils_peer` also uses `peer() + 1`).
    pub fn peer(&self) -> u16 {
        self.base + OFF_PEER
    }
    /// icegate-signal's HTTP(S) port.
    pub fn signal(&self) -> u16 {
        self.base + OFF_SIGNAL
    }
    /// icegate-signal's metrics port.
    pub fn signal_metrics(&self) -> u16 {
        self.base + OFF_SIGNAL_METRICS
    }
    /// The Asterisk stand-in's HTTP (SIP WebSocket + ARI) port.
    pub fn asterisk(&self) -> u16 {
        self.base + OFF_ASTERISK
    }
    /// A real Asterisk's HTTPS (`wss://`, `https://`) port (tests/src/asterisk/real.rs).
    pub fn asterisk_tls(&self) -> u16 {
        self.base + OFF_ASTERISK_TLS
    }
    /// The default relay port range, inclusive.
    pub fn relay_range(&self) -> (u16, u16) {
        (self.base + OFF_RELAY, self.base + BLOCK_SIZE - 1)
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("icegate-tests-ports")
}

fn block_is_free(base: u16) -> bool {
    (base..base + BLOCK_SIZE).all(|port| {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
    })
}

/// A free ephemeral UDP port on 127.0.0.1 (bind port 0, read, close). Only for things
/// that cannot live in a [`PortBlock`]; the port may be reused by someone else later.
pub fn ephemeral_udp_port() -> u16 {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp 0");
    s.local_addr().expect("local addr").port()
}
