//! The ICE servers handed to clients: the configured relay URIs with fresh TURN REST
//! credentials, leaving out relays whose health check says they are down.
//!
//! Relays are grouped by host: every `--relay` URI with the same host is one relay, and a
//! `--relay-health` URL belongs to the relay with its host. One relay becomes one
//! `RTCIceServer` entry, so a browser that finds a relay unreachable drops all its URIs at once.

use std::time::{Duration, Instant};

use icegate_common::credentials::{self, Secret};
use serde::{Deserialize, Serialize};

/// How many failed checks in a row mark a relay down once it has passed a check, so that one
/// lost probe does not take a working relay out of every new call.
pub const FAILURES_TO_DOWN: u32 = 2;

/// One `RTCIceServer` dictionary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` and `turns:` URIs of one relay.
    pub urls: Vec<String>,
    /// The TURN REST username `EXPIRY:USER`, when the relay has `turn:`/`turns:` URIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN REST password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `{"iceServers": [...], "ttl": N}`: what `/v1/ice-servers` returns and `welcome` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServers {
    /// Usable as `RTCConfiguration.iceServers` as it is.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// Why a relay URI or health URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IceConfigError {
    /// The URI is not `stun:`, `stuns:`, `turn:` or `turns:` with a host.
    #[error("{0:?} is not a stun:, stuns:, turn: or turns: URI with a host (RFC 7064/7065)")]
    BadUri(String),
    /// The health URL is not `http://HOST[:PORT]/PATH`.
    #[error("{0:?} is not an http://HOST[:PORT]/PATH URL")]
    BadHealthUrl(String),
    /// A health URL's host is the host of no relay URI.
    #[error("{0:?}: its host is the host of no relay URI")]
    HealthWithoutRelay(String),
    /// Two health URLs name the same host, so which relay each checks is ambiguous.
    #[error("{0:?}: another relay-health URL already checks this host")]
    DuplicateHealth(String),
    /// `turn:`/`turns:` URIs are configured but no secret to sign their credentials.
    #[error("turn: and turns: URIs need static-auth-secret to sign credentials")]
    NoSecret,
}

/// One relay: its URIs and, if configured, the URL of its `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// The host shared by all of its URIs, as written in them.
    pub host: String,
    /// The URIs, in configuration order.
    pub uris: Vec<String>,
    /// Its health URL, when it is checked.
    pub health_url: Option<HealthUrl>,
}

impl Relay {
    /// Whether any URI needs credentials.
    fn needs_credentials(&self) -> bool {
        self.uris.iter().any(|uri| uri.starts_with("turn"))
    }
}

/// A parsed `http://HOST[:PORT]/PATH` health URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl {
    /// The URL as configured.
    pub url: String,
    /// The host, as written (brackets kept for IPv6).
    pub host: String,
    /// The port, 80 when absent.
    pub port: u16,
    /// The path, `/` when absent.
    pub path: String,
}

impl HealthUrl {
    /// Parses a plain-HTTP URL: relays serve `/readyz` on their metrics listener, without TLS.
    pub fn parse(url: &str) -> Result<Self, IceConfigError> {
        let bad = || IceConfigError::BadHealthUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        let (host, port) = split_host_port(authority).ok_or_else(bad)?;
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad())?,
            None => 80,
        };
        Ok(HealthUrl {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`; `None` when the host is empty or malformed.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (host_ok && port_ok).then_some((host, port))
}

/// The host of a `stun:`/`stuns:`/`turn:`/`turns:` URI (RFC 7064, RFC 7065).
pub fn uri_host(uri: &str) -> Result<&str, IceConfigError> {
    let bad = || IceConfigError::BadUri(uri.to_owned());
    let (scheme, rest) = uri.split_once(':').ok_or_else(bad)?;
    if !matches!(scheme, "stun" | "stuns" | "turn" | "turns") {
        return Err(bad());
    }
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query {
        let transport_ok = matches!(query, "transport=udp" | "transport=tcp");
        if !scheme.starts_with("turn") || !transport_ok {
            return Err(bad());
        }
    }
    let (host, _) = split_host_port(authority).ok_or_else(bad)?;
    Ok(host)
}

/// Groups relay URIs by host and attaches each health URL to its relay.
pub fn group_relays(
    uris: &[String],
    health_urls: &[String],
    secret_configured: bool,
) -> Result<Vec<Relay>, IceConfigError> {
    let mut relays: Vec<Relay> = Vec::new();
    for uri in uris {
        let host = uri_host(uri)?;
        match relays.iter_mut().find(|relay| relay.host == host) {
            Some(relay) => relay.uris.push(uri.clone()),
            None => relays.push(Relay {
                host: host.to_owned(),
                uris: vec![uri.clone()],
                health_url: None,
            }),
        }
    }
    for url in health_urls {
        let health = HealthUrl::parse(url)?;
        let relay = relays
            .iter_mut()
            .find(|relay| relay.host == health.host)
            .ok_or_else(|| IceConfigError::HealthWithoutRelay(url.clone()))?;
        if relay.health_url.is_some() {
            return Err(IceConfigError::DuplicateHealth(url.clone()));
        }
        relay.health_url = Some(health);
    }
    if !secret_configured && relays.iter().any(Relay::needs_credentials) {
        return Err(IceConfigError::NoSecret);
    }
    Ok(relays)
}

/// What the health checks have said about one relay.
///
/// A relay that has never passed a check is *unconfirmed*: it is handed out, because a
/// signal server that starts together with its relays (a boot, `systemctl start` of both)
/// would otherwise take them out at checks made before they listen, and hand browsers no
/// TURN server. It stays handed out while its checks fail until the start-up grace period
/// has run out; the first check that fails after that takes it out. Once a check has
/// passed, it goes down after [`FAILURES_TO_DOWN`] failed checks in a row, and any passing
/// check brings it back.
///
/// Time is an input: [`Health::new`] and [`Health::record`] take `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    state: State,
    failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No check has passed yet. Handed out until the first failed check at or after
    /// `grace_end` (never, when the grace period reaches past what `Instant` can hold).
    Unconfirmed { grace_end: Option<Instant> },
    /// A check has passed, and fewer than [`FAILURES_TO_DOWN`] have failed since.
    Up,
    /// Left out of the ICE servers.
    Down,
}

/// What a check changed, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// The first check that passed: the relay is confirmed (it was handed out already).
    Answered,
    /// The grace period ran out without a passing check: left out from now on.
    NeverAnswered {
        /// Failed checks so far.
        failures: u32,
    },
    /// A relay that had passed checks failed [`FAILURES_TO_DOWN`] in a row: left out.
    Down,
    /// A relay that was left out passed a check: handed out again.
    Up,
}

impl Health {
    /// A relay not checked yet, at `now` (the server's start), with a start-up grace period.
    pub fn new(now: Instant, grace: Duration) -> Self {
        Health {
            state: State::Unconfirmed {
                grace_end: now.checked_add(grace),
            },
            failures: 0,
        }
    }

    /// Records the result of a check made at `now`; returns what changed, if anything.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<HealthChange> {
        if ok {
            self.failures = 0;
            let change = match self.state {
                State::Unconfirmed { .. } => Some(HealthChange::Answered),
                State::Down => Some(HealthChange::Up),
                State::Up => None,
            };
            self.state = State::Up;
            return change;
        }
        self.failures = self.failures.saturating_add(1);
        let change = match self.state {
            State::Unconfirmed { grace_end } if grace_end.is_some_and(|end| now >= end) => {
                HealthChange::NeverAnswered {
                    failures: self.failures,
                }
            }
            State::Up if self.failures >= FAILURES_TO_DOWN => HealthChange::Down,
            State::Unconfirmed { .. } | State::Up | State::Down => return None,
        };
        self.state = State::Down;
        Some(change)
    }

    /// Whether the relay is handed out: up, or unconfirmed within its grace period.
    pub fn is_up(&self) -> bool {
        self.state != State::Down
    }

    /// Whether it is handed out without a check of it having passed yet.
    pub fn is_unconfirmed(&self) -> bool {
        matches!(self.state, State::Unconfirmed { .. })
    }
}

/// Builds the ICE servers for `user` from the relays that `is_up` says are up.
///
/// Credentials are `EXPIRY:USER` signed with `secret`, as icegate-relay and coturn's
/// `use-auth-secret` check them; `now_unix` is the wall-clock time in seconds.
pub fn ice_servers(
    relays: &[Relay],
    is_up: impl Fn(usize) -> bool,
    secret: Option<&Secret>,
    user: &str,
    now_unix: u64,
    ttl: u64,
) -> IceServers {
    let credential = secret.map(|secret| credentials::issue(secret, Some(user), now_unix, ttl));
    let ice_servers = relays
        .iter()
        .enumerate()
        .filter(|(index, _)| is_up(*index))
        .map(|(_, relay)| {
            let credential = credential.as_ref().filter(|_| relay.needs_credentials());
            IceServer {
                urls: relay.uris.clone(),
                username: credential.map(|c| c.username.clone()),
                credential: credential.map(|c| c.password.clone()),
            }
        })
        .collect();
    IceServers { ice_servers, ttl }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_relay_uris() {
        for (uri, host) in [
            ("stun:127.0.0.1:3478", "127.0.0.1"),
            ("turn:relay.example.org?transport=tcp", "relay.example.org"),
            (
                "turns:relay.example.org:5349?transport=tcp",
                "relay.example.org",
            ),
            ("turn:[::1]:3478?transport=udp", "[::1]"),
            ("stuns:[2001:db8::1]", "[2001:db8::1]"),
        ] {
            assert_eq!(uri_host(uri), Ok(host), "{uri}");
        }
        for bad in [
            "http://x",
            "turn:",
            "turn::3478",
            "stun:x?transport=udp",
            "turn:x?transport=sctp",
            "turn:x:port",
            "turn:[::1",
            "turn:a b",
        ] {
            assert!(uri_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_health_urls() {
        assert_eq!(
            HealthUrl::parse("http://127.0.0.1:9641/readyz"),
            Ok(HealthUrl {
                url: "http://127.0.0.1:9641/readyz".into(),
                host: "127.0.0.1".into(),
                port: 9641,
                path: "/readyz".into(),
            })
        );
        let url = HealthUrl::parse("http://[::1]").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("[::1]", 80, "/")
        );
        for bad in ["https://x/readyz", "http:///readyz", "http://x:99999/", "x"] {
            assert!(HealthUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_uris_by_host_and_attaches_health() {
        let relays = group_relays(
            &strings(&[
                "stun:10.0.0.1:3478",
                "turn:10.0.0.2:3478?transport=udp",
                "turn:10.0.0.1:3478?transport=udp",
                "turns:10.0.0.1:5349?transport=tcp",
            ]),
            &strings(&["http://10.0.0.1:9641/readyz"]),
            true,
        )
        .unwrap();
        assert_eq!(relays.len(), 2);
        assert_eq!(relays[0].host, "10.0.0.1");
        assert_eq!(relays[0].uris.len(), 3);
        assert_eq!(relays[0].health_url.as_ref().unwrap().port, 9641);
        assert_eq!(relays[1].health_url, None);

        let uris = strings(&["turn:10.0.0.1"]);
        assert_eq!(
            group_relays(&uris, &strings(&["http://10.0.0.9/readyz"]), true),
            Err(IceConfigError::HealthWithoutRelay(
                "http://10.0.0.9/readyz".into()
            ))
        );
        assert!(matches!(
            group_relays(
                &uris,
                &strings(&["http://10.0.0.1:1/", "http://10.0.0.1:2/"]),
                true
            ),
            Err(IceConfigError::DuplicateHealth(_))
        ));
        assert_eq!(
            group_relays(&uris, &[], false),
            Err(IceConfigError::NoSecret)
        );
        assert!(group_relays(&strings(&["stun:10.0.0.1"]), &[], false).is_ok());
    }

    #[test]
    fn credentials_verify_and_down_relays_are_left_out() {
        let secret = Secret::new("s3cret");
        let relays = group_relays(
            &strings(&[
                "stun:10.0.0.1",
                "turn:10.0.0.1?transport=udp",
                "turn:10.0.0.2",
                "stun:10.0.0.3",
            ]),
            &[],
            true,
        )
        .unwrap();
        let servers = ice_servers(&relays, |i| i != 1, Some(&secret), "alice", 1_000, 600);
        assert_eq!(servers.ttl, 600);
        assert_eq!(servers.ice_servers.len(), 2);
        let first = &servers.ice_servers[0];
        assert_eq!(
            first.urls,
            strings(&["stun:10.0.0.1", "turn:10.0.0.1?transport=udp"])
        );
        assert_eq!(first.username.as_deref(), Some("1600:alice"));
        assert_eq!(
            credentials::verify(
                std::slice::from_ref(&secret),
                first.username.as_deref().unwrap(),
                first.credential.as_deref().unwrap(),
                1_000
            ),
            Ok(())
        );
        // A STUN-only relay needs no credentials, and browsers need none for it.
        assert_eq!(servers.ice_servers[1].urls, strings(&["stun:10.0.0.3"]));
        assert_eq!(servers.ice_servers[1].username, None);
    }

    /// A fake clock: the start, and `secs` after it.
    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn health_goes_down_after_repeated_failures_and_up_at_once() {
        let start = Instant::now();
        let mut health = Health::new(start, Duration::from_secs(30));
        assert!(health.is_up(), "unchecked relays are handed out");
        assert!(health.is_unconfirmed());
        assert_eq!(health.record(true, start), Some(HealthChange::Answered));
        assert!(health.is_up() && !health.is_unconfirmed());
        assert_eq!(health.record(true, at(start, 5)), None);
        assert_eq!(
            health.record(false, at(start, 10)),
            None,
            "one lost probe is tolerated"
        );
        assert!(health.is_up());
        assert_eq!(
            health.record(false, at(start, 15)),
            Some(HealthChange::Down)
        );
        assert!(!health.is_up());
        assert_eq!(health.record(false, at(start, 20)), None);
        assert_eq!(health.record(true, at(start, 25)), Some(HealthChange::Up));
        assert!(health.is_up() && !health.is_unconfirmed());
    }

    #[test]
    fn a_relay_that_never_answered_is_handed_out_for_the_grace_period() {
        let start = Instant::now();
        let mut health = Health::new(start, Duration::from_secs(30));
        // Checks every 5 s from the start fail: still handed out, however many fail.
        for secs in (0..30).step_by(5) {
            assert_eq!(health.record(false, at(start, secs)), None, "at {secs} s");
            assert!(health.is_up() && health.is_unconfirmed(), "at {secs} s");
        }
        // The first failure once the grace period has run out takes it out, once.
        assert_eq!(
            health.record(false, at(start, 30)),
            Some(HealthChange::NeverAnswered { failures: 7 })
        );
        assert!(!health.is_up() && !health.is_unconfirmed());
        assert_eq!(health.record(false, at(start, 35)), None);
        // It comes up with its first passing check, and then counts as any relay.
        assert_eq!(health.record(true, at(start, 40)), Some(HealthChange::Up));
        assert_eq!(health.record(false, at(start, 45)), None);
        assert_eq!(
            health.record(false, at(start, 50)),
            Some(HealthChange::Down)
        );
    }

    #[test]
    fn a_relay_that_answers_late_in_the_grace_period_is_confirmed() {
        let start = Instant::now();
        let mut health = Health::new(start, Duration::from_secs(30));
        assert_eq!(health.record(false, start), None);
        assert_eq!(health.record(false, at(start, 5)), None);
        assert_eq!(
            health.record(true, at(start, 10)),
            Some(HealthChange::Answered)
        );
        // From now on two failures in a row take it out, grace period or not.
        assert_eq!(health.record(false, at(start, 15)), None);
        assert_eq!(
            health.record(false, at(start, 20)),
            Some(HealthChange::Down)
        );
        assert!(!health.is_up());
    }

    #[test]
    fn without_a_grace_period_a_failed_first_check_decides_at_once() {
        let start = Instant::now();
        let mut first = Health::new(start, Duration::ZERO);
        assert!(first.is_up(), "handed out until its first check");
        assert_eq!(
            first.record(false, start),
            Some(HealthChange::NeverAnswered { failures: 1 })
        );
        assert!(!first.is_up());

        // A grace period past what Instant can hold never runs out.
        let mut forever = Health::new(start, Duration::MAX);
        assert_eq!(forever.record(false, at(start, 1_000_000)), None);
        assert!(forever.is_up());
    }
}
