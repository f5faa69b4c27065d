//! Raising RLIMIT_NOFILE so every relay port the configuration allows can have its socket.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// File descriptors the process needs besides relay sockets: listeners, TCP clients, logs.
const HEADROOM: u64 = 4096;

/// What [`raise_nofile`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// What the configuration needs.
    pub wanted: u64,
}

/// Raises the soft RLIMIT_NOFILE to fit `relay_sockets` plus headroom, up to the hard limit
/// (raising the hard limit too when the process may, i.e. as root).
pub fn raise_nofile(relay_sockets: u64) -> nix::Result<NofileLimit> {
    let wanted = relay_sockets.saturating_add(HEADROOM);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(NofileLimit { soft, wanted });
    }
    if hard < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Ok(NofileLimit {
            soft: wanted,
            wanted,
        });
    }
    let target = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    Ok(NofileLimit {
        soft: target,
        wanted,
    })
}
