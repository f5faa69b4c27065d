//! Harness for icegate's cross-process tests.
//!
//! The tests start a real server process (the `icegate-relay` binary, or coturn's
//! `turnserver` as a reference implementation used to validate the tests themselves),
//! wait until it is ready, and talk to it with independent clients: coturn's
//! `turnutils_*` tools, the webrtc-rs `turn` crate and raw `stun-rs` messages.
//!
//! Everything here only ever talks to loopback addresses, or to addresses inside network
//! namespaces a test makes itself ([`netns`]).
#![deny(unsafe_code)]

pub mod asterisk;
pub mod browser;
pub mod debian;
pub mod dtls;
pub mod http;
pub mod metrics;
#[allow(unsafe_code)]
pub mod netns;
pub mod ports;
pub mod redis;
pub mod server;
pub mod signal;
pub mod streams;
pub mod stun;
pub mod tools;

pub use metrics::Metrics;
pub use ports::PortBlock;
pub use server::{Relay, RelayConfig, ServerKind};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The path of one of the workspace's binaries (`target/debug/NAME`, or `$ENV_OVERRIDE`),
/// building it once per test process if it is missing. `scripts/test` builds everything
/// first; the fallback keeps a lone `cargo nextest run` working on a fresh checkout.
pub fn workspace_binary(name: &str, env_override: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_override) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join(name);
    if !bin.exists() {
        // One build at a time per process: tests in one binary may ask concurrently.
        static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            eprintln!("[harness] {} missing; building it", bin.display());
            let status = std::process::Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "-p", name, "--bin", name])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p {name} failed");
        }
    }
    assert!(bin.exists(), "{name} binary not found at {}", bin.display());
    bin
}

/// Polls `f` every `every` until it returns `Some` or `timeout` elapses.
pub fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// True if an executable called `name` is on PATH.
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Panics with an actionable message when a required external tool is missing.
pub fn require_tool(name: &str) {
    assert!(
        have_tool(name),
        "`{name}` is not installed; run ./scripts/install-deps (Debian package coturn)"
    );
}

/// Declares, for each named `fn NAME(kind: ServerKind)`, a module `NAME` with two tests:
/// `NAME::icegate` (the real target) and `NAME::coturn`, an ignored reference run against
/// coturn's turnserver that validates the test itself
/// (`cargo nextest run -p icegate-tests --run-ignored all`).
#[macro_export]
macro_rules! server_tests {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[test]
            fn icegate() {
                super::$name($crate::ServerKind::Icegate)
            }
            #[test]
            #[ignore = "reference run against coturn; run with --run-ignored all"]
            fn coturn() {
                super::$name($crate::ServerKind::Coturn)
            }
        }
    )* };
}
