//! The flags over the file, checked, into [`Settings`]: one helper per section, called in the
//! order their errors have always been reported. An error names the flag when the value came
//! from the command line, else the file and its key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use icegate_common::config::{pick, pick_vec, ConfigError};
use icegate_common::credentials::{self, Secret};
use icegate_relay_proto::auth::Credentials;
use icegate_relay_proto::config::{Alternates, NatDiscovery, RedirectWhen, RelayAddress, Timers};
use icegate_relay_proto::peer_filter::{parse_ip_range, PeerFilter};
use icegate_relay_proto::rate_limit::RateLimitConfig;
use icegate_relay_proto::ServerConfig;
use ipnet::IpNet;

use super::{Cli, FileConfig, Redirect, Settings, StreamSettings};
use crate::host_addresses::usable_for_relaying;

/// Builds the error about `key`: `true` for a value from the command line, `false` for one
/// from the file.
type Invalid<'a> = &'a dyn Fn(bool, &str, String) -> ConfigError;

/// Lists the host's interface addresses (asked only when `relay-ip` must be chosen for a
/// wildcard listener).
pub(super) type HostIps<'a> = &'a dyn Fn() -> std::io::Result<Vec<IpAddr>>;

pub(super) fn merge(
    cli: &Cli,
    f: FileConfig,
    path: Option<&Path>,
    host_ips: HostIps<'_>,
) -> Result<Settings, ConfigError> {
    // Where a value came from decides what the error names.
    let src = |from_cli: bool| if from_cli { None } else { path };
    let invalid =
        |from_cli: bool, key: &str, msg: String| ConfigError::invalid(src(from_cli), key, msg);

    let (listening_ips, _) = pick_vec(&cli.listening_ip, f.listening_ip.clone());
    let listening_ips = if listening_ips.is_empty() {
        vec![IpAddr::from([0, 0, 0, 0])]
    } else {
        listening_ips
    };
    let port = pick(cli.listening_port, f.listening_port).0.unwrap_or(3478);
    let tls_port = pick(cli.tls_listening_port, f.tls_listening_port)
        .0
        .unwrap_or(5349);
    let (min_port, max_port) = port_range(cli, &f, &invalid)?;
    let (relay_addresses, relay_ip_auto) =
        relay_addresses(cli, &f, &listening_ips, host_ips, &invalid)?;
    let realm = pick(cli.realm.clone(), f.realm.clone())
        .0
        .unwrap_or_else(|| "icegate".into());
    let credentials = credentials(cli, &f, path, &invalid)?;
    let peer_filter = peer_filter(cli, &f, &invalid)?;
    let timers = timers(cli, &f, &invalid)?;
    let mut rate_limit = RateLimitConfig::default();
    if let Some(per_second) = pick(cli.rate_limit, f.rate_limit).0 {
        rate_limit.per_second = per_second;
        rate_limit.burst = per_second.saturating_mul(2);
    }
    let streams = streams(cli, &f, &invalid)?;
    let (tls, dtls) = tls(cli, &f, &invalid)?;
    let workers = match pick(cli.workers, f.workers).0.unwrap_or(0) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };

    let mut server = ServerConfig::new(realm, credentials, &[]);
    server.relay_addresses = relay_addresses;
    server.peer_filter = peer_filter;
    server.timers = timers;
    server.rate_limit = rate_limit;
    server.user_quota = pick(cli.user_quota, f.user_quota).0.unwrap_or(0);
    server.total_quota = pick(cli.total_quota, f.total_quota).0.unwrap_or(0);
    server.max_bps = pick(cli.max_bps, f.max_bps).0.unwrap_or(0);
    server.alternates = alternates(cli, &f, &invalid)?;
    server.tcp_relay = !(cli.no_tcp_relay || f.no_tcp_relay.unwrap_or(false));
    let udp = !(cli.no_udp || f.no_udp.unwrap_or(false));
    let dtls_port = dtls.as_ref().map(|_| tls_port);
    server.nat_discovery =
        nat_discovery(cli, &f, &listening_ips, (port, dtls_port), udp, &invalid)?;

    let process = f.process.unwrap_or_default();
    Ok(Settings {
        server,
        listening_ips,
        port,
        tls_port,
        min_port,
        max_port,
        udp,
        tcp: !(cli.no_tcp || f.no_tcp.unwrap_or(false)),
        tls,
        dtls,
        metrics_listen: pick(cli.metrics_listen, f.metrics_listen).0,
        log_format: pick(cli.log_format, f.log_format).0.unwrap_or_default(),
        workers,
        drain_timeout: Duration::from_secs(
            pick(cli.drain_timeout, f.drain_timeout).0.unwrap_or(30),
        ),
        proc_user: pick(cli.proc_user.clone(), process.user).0,
        proc_group: pick(cli.proc_group.clone(), process.group).0,
        streams,
        relay_ip_auto,
    })
}

/// `alt-listening-port` and `no-rfc5780`: RFC 5780 NAT behaviour discovery is on, as in
/// coturn, when UDP is and two listening IPs share a family (the first two exact ones of each
/// family make a pair; a wildcard cannot be answered from as one address).
/// `ports` are `listening-port` and, while DTLS is on, `tls-listening-port`: UDP ports the
/// alternate one must not be.
fn nat_discovery(
    cli: &Cli,
    f: &FileConfig,
    listening_ips: &[IpAddr],
    (port, dtls_port): (u16, Option<u16>),
    udp: bool,
    invalid: Invalid<'_>,
) -> Result<Option<NatDiscovery>, ConfigError> {
    if cli.no_rfc5780 || f.no_rfc5780.unwrap_or(false) || !udp {
        return Ok(None);
    }
    let mut ip_pairs = Vec::new();
    for v4 in [true, false] {
        let mut family = listening_ips
            .iter()
            .filter(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified());
        if let (Some(&a), Some(&b)) = (family.next(), family.next()) {
            ip_pairs.push((a, b));
        }
    }
    if ip_pairs.is_empty() {
        return Ok(None);
    }
    let (alt, alt_cli) = pick(cli.alt_listening_port, f.alt_listening_port);
    let alt = match alt.unwrap_or(0) {
        // coturn's default: the port after listening-port.
        0 => port.checked_add(1).ok_or_else(|| {
            invalid(
                alt_cli,
                "alt-listening-port",
                "0 means listening-port + 1, and listening-port is 65535: set it".into(),
            )
        })?,
        p if p == port => {
            return Err(invalid(
                alt_cli,
                "alt-listening-port",
                format!("must differ from listening-port ({port})"),
            ))
        }
        p => p,
    };
    if dtls_port == Some(alt) {
        return Err(invalid(
            alt_cli,
            "alt-listening-port",
            format!(
                "must differ from tls-listening-port ({alt}), where DTLS listens on UDP \
                 (or set no-dtls)"
            ),
        ));
    }
    Ok(Some(NatDiscovery {
        ip_pairs,
        ports: (port, alt),
    }))
}

/// `min-port` and `max-port`.
fn port_range(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<(u16, u16), ConfigError> {
    let (min_port, min_cli) = pick(cli.min_port, f.min_port);
    let (max_port, _) = pick(cli.max_port, f.max_port);
    let (min_port, max_port) = (min_port.unwrap_or(49152), max_port.unwrap_or(65535));
    if min_port == 0 || min_port > max_port {
        return Err(invalid(
            min_cli,
            "min-port",
            format!("must be between 1 and max-port ({max_port}), got {min_port}"),
        ));
    }
    Ok((min_port, max_port))
}

/// `alternate-server`, `tls-alternate-server` and `redirect`.
fn alternates(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<Alternates, ConfigError> {
    let list = |key: &str, flags: &[String], file: Option<Vec<String>>, default_port: u16| {
        let (entries, from_cli) = pick_vec(flags, file);
        entries
            .iter()
            .map(|entry| {
                alternate_address(entry, default_port).ok_or_else(|| {
                    invalid(
                        from_cli,
                        key,
                        format!("{entry:?} is not IP, IP:PORT or [IPv6]:PORT"),
                    )
                })
            })
            .collect::<Result<Vec<SocketAddr>, ConfigError>>()
    };
    let redirect = pick(cli.redirect, f.redirect).0.unwrap_or_default();
    Ok(Alternates {
        plain: list(
            "alternate-server",
            &cli.alternate_server,
            f.alternate_server.clone(),
            3478,
        )?,
        tls: list(
            "tls-alternate-server",
            &cli.tls_alternate_server,
            f.tls_alternate_server.clone(),
            5349,
        )?,
        when: match redirect {
            Redirect::Always => RedirectWhen::Always,
            Redirect::WhenFull => RedirectWhen::Full,
        },
    })
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT` (coturn's forms), with `default_port` when none is given.
fn alternate_address(entry: &str, default_port: u16) -> Option<SocketAddr> {
    let entry = entry.trim();
    entry
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            entry
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, default_port))
        })
        .filter(|a| a.port() != 0 && !a.ip().is_unspecified())
}

/// `relay-ip` (by default the listening addresses; for a wildcard one, the host's addresses of
/// its family that peers can reach, as coturn does) and what `external-ip` advertises for
/// them; and whether the host's addresses were chosen.
fn relay_addresses(
    cli: &Cli,
    f: &FileConfig,
    listening_ips: &[IpAddr],
    host_ips: HostIps<'_>,
    invalid: Invalid<'_>,
) -> Result<(Vec<RelayAddress>, bool), ConfigError> {
    let (relay_ips, relay_cli) = pick_vec(&cli.relay_ip, f.relay_ip.clone());
    let auto = relay_ips.is_empty() && listening_ips.iter().any(IpAddr::is_unspecified);
    let relay_ips = if !relay_ips.is_empty() {
        relay_ips
    } else if auto {
        let host = host_ips().map_err(|error| {
            invalid(
                relay_cli,
                "relay-ip",
                format!(
                    "not set, and the host's addresses cannot be listed for a wildcard \
                     listening-ip ({error}): set relay-ip"
                ),
            )
        })?;
        let mut chosen: Vec<IpAddr> = Vec::new();
        for listening in listening_ips {
            let candidates: Vec<IpAddr> = if listening.is_unspecified() {
                host.iter()
                    .copied()
                    .filter(|ip| ip.is_ipv4() == listening.is_ipv4() && usable_for_relaying(*ip))
                    .collect()
            } else {
                vec![*listening]
            };
            for ip in candidates {
                if !chosen.contains(&ip) {
                    chosen.push(ip);
                }
            }
        }
        if chosen.is_empty() {
            return Err(invalid(
                relay_cli,
                "relay-ip",
                "not set, and the host has no address peers could reach (only loopback or \
                 link-local) for a wildcard listening-ip: set relay-ip (or listening-ip)"
                    .into(),
            ));
        }
        chosen
    } else {
        listening_ips.to_vec()
    };
    if let Some(ip) = relay_ips.iter().find(|ip| ip.is_unspecified()) {
        return Err(invalid(
            relay_cli,
            "relay-ip",
            format!(
                "{ip} is not a usable relay address: set relay-ip (or listening-ip) to the \
                 host's own address"
            ),
        ));
    }
    let (external, ext_cli) = pick_vec(&cli.external_ip, f.external_ip.clone());
    let mut relay_addresses: Vec<RelayAddress> = relay_ips
        .iter()
        .map(|&ip| RelayAddress {
            local: ip,
            advertised: ip,
        })
        .collect();
    for entry in &external {
        let (public, private) = match entry.split_once('/') {
            Some((p, q)) => (p, Some(q)),
            None => (entry.as_str(), None),
        };
        let public: IpAddr = public.trim().parse().map_err(|_| {
            invalid(
                ext_cli,
                "external-ip",
                format!("{entry:?} is not an IP address"),
            )
        })?;
        let private: Option<IpAddr> = match private {
            Some(p) => Some(p.trim().parse().map_err(|_| {
                invalid(
                    ext_cli,
                    "external-ip",
                    format!("{entry:?}: bad private address"),
                )
            })?),
            None => None,
        };
        // Without a private part, the public address stands in for every relay address of
        // its family, as coturn's single `external-ip` does.
        for r in relay_addresses.iter_mut() {
            let applies = match private {
                Some(private) => r.local == private,
                None => r.local.is_ipv4() == public.is_ipv4(),
            };
            if applies {
                r.advertised = public;
            }
        }
    }
    Ok((relay_addresses, auto))
}

/// Static users (`user`) and TURN REST secrets (`use-auth-secret`, `static-auth-secret`,
/// `static-auth-secret-file`); at least one of them.
fn credentials(
    cli: &Cli,
    f: &FileConfig,
    path: Option<&Path>,
    invalid: Invalid<'_>,
) -> Result<Credentials, ConfigError> {
    let mut credentials = Credentials::new();
    let (users, users_cli) = pick_vec(&cli.user, f.user.clone());
    for user in &users {
        let Some((name, password)) = user.split_once(':') else {
            return Err(invalid(
                users_cli,
                "user",
                // The entry may be a password typed without its name: never echo it.
                "expected NAME:PASSWORD, got an entry without ':'".into(),
            ));
        };
        if name.is_empty() {
            return Err(invalid(users_cli, "user", "empty user name".into()));
        }
        credentials.add_user(name, password);
    }
    let use_secret = cli.use_auth_secret || f.use_auth_secret.unwrap_or(false);
    let (secrets, secrets_cli) = pick_vec(&cli.static_auth_secret, f.static_auth_secret.clone());
    let (secret_file, secret_file_cli) = pick(
        cli.static_auth_secret_file.clone(),
        f.static_auth_secret_file.clone(),
    );
    if use_secret && secrets.is_empty() && secret_file.is_none() {
        return Err(invalid(
            secrets_cli,
            "static-auth-secret",
            "use-auth-secret is on but no static-auth-secret or static-auth-secret-file is set"
                .into(),
        ));
    }
    if use_secret {
        for s in secrets {
            if s.is_empty() {
                return Err(invalid(
                    secrets_cli,
                    "static-auth-secret",
                    "empty secret".into(),
                ));
            }
            credentials.add_rest_secret(Secret::new(s));
        }
        if let Some(file) = &secret_file {
            let secret = credentials::read_secret_file(file)
                .map_err(|msg| invalid(secret_file_cli, "static-auth-secret-file", msg))?;
            credentials.add_rest_secret(Secret::new(secret));
        }
    }
    if credentials.is_empty() {
        // Nothing set anywhere: name the file when there is one, as that is where it belongs.
        return Err(invalid(
            path.is_none(),
            "user",
            "no credentials: set user = [\"NAME:PASSWORD\"] or use-auth-secret with \
             static-auth-secret"
                .into(),
        ));
    }
    Ok(credentials)
}

/// `allowed-peer-ip`, `denied-peer-ip`, `allow-loopback-peers`.
fn peer_filter(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<PeerFilter, ConfigError> {
    let parse_nets =
        |list: &[String], key: &str, from_cli: bool| -> Result<Vec<IpNet>, ConfigError> {
            let mut nets = Vec::new();
            for entry in list {
                nets.extend(
                    parse_ip_range(entry)
                        .map_err(|e| invalid(from_cli, key, format!("{entry:?}: {e}")))?,
                );
            }
            Ok(nets)
        };
    let (denied, denied_cli) = pick_vec(&cli.denied_peer_ip, f.denied_peer_ip.clone());
    let (allowed, allowed_cli) = pick_vec(&cli.allowed_peer_ip, f.allowed_peer_ip.clone());
    Ok(PeerFilter::new(
        parse_nets(&allowed, "allowed-peer-ip", allowed_cli)?,
        parse_nets(&denied, "denied-peer-ip", denied_cli)?,
        cli.allow_loopback_peers || f.allow_loopback_peers.unwrap_or(false),
    ))
}

/// `stale-nonce` and `lifetime-max`.
fn timers(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<Timers, ConfigError> {
    let mut timers = Timers::default();
    let (stale, stale_cli) = pick(cli.stale_nonce, f.stale_nonce);
    if let Some(secs) = stale {
        if secs == 0 {
            return Err(invalid(
                stale_cli,
                "stale-nonce",
                "must be at least 1 second".into(),
            ));
        }
        timers.nonce_lifetime = Duration::from_secs(secs);
    }
    let (lmax, lmax_cli) = pick(cli.lifetime_max, f.lifetime_max);
    if let Some(secs) = lmax {
        if secs < 600 {
            return Err(invalid(
                lmax_cli,
                "lifetime-max",
                format!("must be at least the default lifetime, 600 s; got {secs}"),
            ));
        }
        timers.max_lifetime = Duration::from_secs(secs);
    }
    Ok(timers)
}

/// `max-connections-per-ip`, `max-connections`, `stream-frame-timeout`,
/// `stream-idle-timeout`.
fn streams(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<StreamSettings, ConfigError> {
    let mut streams = StreamSettings::default();
    if let Some(n) = pick(cli.max_connections_per_ip, f.max_connections_per_ip).0 {
        streams.per_ip = n;
    }
    if let Some(n) = pick(cli.max_connections, f.max_connections).0 {
        streams.total = n;
    }
    let seconds = |value: (Option<u64>, bool), key: &str| match value {
        (Some(0), from_cli) => Err(invalid(from_cli, key, "must be at least 1 second".into())),
        (Some(secs), _) => Ok(Some(Duration::from_secs(secs))),
        (None, _) => Ok(None),
    };
    let frame = pick(cli.stream_frame_timeout, f.stream_frame_timeout);
    if let Some(d) = seconds(frame, "stream-frame-timeout")? {
        streams.frame_timeout = d;
    }
    let idle = pick(cli.stream_idle_timeout, f.stream_idle_timeout);
    if let Some(d) = seconds(idle, "stream-idle-timeout")? {
        streams.idle_timeout = d;
    }
    Ok(streams)
}

/// `cert` and `pkey` for TLS (unless `no-tls`) and for DTLS (unless `no-dtls`).
fn tls(
    cli: &Cli,
    f: &FileConfig,
    invalid: Invalid<'_>,
) -> Result<(CertPair, CertPair), ConfigError> {
    let (cert, cert_cli) = pick(cli.cert.clone(), f.cert.clone());
    let (pkey, _) = pick(cli.pkey.clone(), f.pkey.clone());
    let no_tls = cli.no_tls || f.no_tls.unwrap_or(false);
    let no_dtls = cli.no_dtls || f.no_dtls.unwrap_or(false);
    let pair = match (cert, pkey) {
        (Some(c), Some(k)) => Some((c, k)),
        (Some(_), None) | (None, Some(_)) if !(no_tls && no_dtls) => {
            return Err(invalid(
                cert_cli,
                "cert",
                "cert and pkey must be given together".into(),
            ))
        }
        _ => None,
    };
    let unless = |off: bool| pair.clone().filter(|_| !off);
    Ok((unless(no_tls), unless(no_dtls)))
}

/// A certificate and its key, when a listener uses them.
type CertPair = Option<(PathBuf, PathBuf)>;
