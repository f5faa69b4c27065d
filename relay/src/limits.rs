//! Raising RLIMIT_NOFILE so every relay port the configuration allows can have its socket,
//! and sharing the descriptors out between relay sockets and TCP/TLS client connections.

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

/// Descriptors kept for everything that is neither a relay socket nor a client connection:
/// listeners, epoll sets, eventfds, the metrics listener and its clients, logs.
const FIXED_RESERVE: u64 = 128;
/// Descriptors kept per worker on top: its listeners and its runtime's own.
const PER_WORKER_RESERVE: u64 = 16;

/// How `RLIMIT_NOFILE` is shared out (see [`stream_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// Kept for listeners, epoll sets, logs.
    pub fixed: u64,
    /// Kept for relay sockets.
    pub relay_sockets: u64,
    /// Left for TCP/TLS client connections.
    pub streams: u64,
    /// Whether the relay sockets got fewer than the port range needs.
    pub relay_short: bool,
}

/// Shares `nofile` descriptors out: the fixed reserve first, then one per relay port
/// (`relay_sockets`), then what is left to stream connections, so that however many
/// clients connect over TCP or TLS, an Allocate still finds a descriptor for its relay socket.
///
/// When the limit cannot hold the whole port range, relay sockets get what it can hold but
/// stream connections keep a quarter of it: without any, no TCP or TLS client could connect
/// at all (and a TCP client's allocation needs a relay socket too).
pub fn stream_budget(nofile: u64, relay_sockets: u64, workers: u64) -> DescriptorBudget {
    let fixed = FIXED_RESERVE
        .saturating_add(PER_WORKER_RESERVE.saturating_mul(workers))
        .min(nofile);
    let usable = nofile - fixed;
    let floor = usable / 4;
    let streams = usable.saturating_sub(relay_sockets).max(floor);
    DescriptorBudget {
        fixed,
        relay_sockets: usable - streams,
        streams,
        relay_short: usable - streams < relay_sockets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_sockets_are_reserved_before_stream_connections() {
        // The packaged LimitNOFILE and the full port range: plenty for both.
        let b = stream_budget(1_048_576, 16_384, 4);
        assert_eq!(b.fixed, 192);
        assert_eq!(b.relay_sockets, 16_384);
        assert_eq!(b.streams, 1_048_576 - 192 - 16_384);
        assert!(!b.relay_short);
        // What raise_nofile asks for when it can: the headroom goes to streams.
        let b = stream_budget(1000 + HEADROOM, 1000, 1);
        assert_eq!(b.streams, HEADROOM - 144);
        assert_eq!(b.relay_sockets + b.streams + b.fixed, 1000 + HEADROOM);
    }

    #[test]
    fn a_limit_below_the_port_range_leaves_streams_a_quarter() {
        // ulimit -n 2600 with the default range of 16,384 ports.
        let b = stream_budget(2600, 16_384, 1);
        assert_eq!(b.fixed, 144);
        assert_eq!(b.streams, (2600 - 144) / 4);
        assert_eq!(b.relay_sockets, 2600 - 144 - b.streams);
        assert!(b.relay_short);
        // A limit below the reserve leaves nothing, without overflow.
        assert_eq!(stream_budget(100, 10, 1).streams, 0);
    }
}
