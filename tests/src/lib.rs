//! Harness for icegate's cross-process tests.
//!
//! The tests start a real server process (the `icegate-relay` binary, or coturn's
//! `turnserver` as a reference implementation used to validate the tests themselves),
//! wait until it is ready, and talk to it with independent clients: coturn's
//! `turnutils_*` tools, the webrtc-rs `turn` crate and raw `stun-rs` messages.
//!
//! Everything here only ever talks to loopback addresses.

pub mod http;
pub mod metrics;
pub mod ports;
pub mod server;
pub mod signal;
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
