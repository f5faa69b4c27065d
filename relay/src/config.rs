//! The relay's configuration: a TOML file and coturn-named command-line flags, merged and
//! checked into [`Settings`]. Flags override the file; errors name the key and the file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use icegate_common::config::{load_toml, pick, pick_vec, ConfigError};
use icegate_common::credentials::{self, Secret};
use icegate_common::logging::LogFormat;
use icegate_relay_proto::auth::Credentials;
use icegate_relay_proto::config::{RelayAddress, Timers};
use icegate_relay_proto::peer_filter::{parse_ip_range, PeerFilter};
use icegate_relay_proto::rate_limit::RateLimitConfig;
use icegate_relay_proto::ServerConfig;
use ipnet::IpNet;
use serde::Deserialize;

/// Command-line flags. Names follow coturn's `turnserver` where one exists.
#[derive(Debug, Default, Parser)]
#[command(
    name = "icegate-relay",
    version,
    about = "A high-throughput STUN/TURN server"
)]
pub struct Cli {
    /// TOML configuration file; flags given here override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Address to listen on (repeatable). Default: 0.0.0.0.
    #[arg(long = "listening-ip", short = 'L')]
    pub listening_ip: Vec<IpAddr>,
    /// UDP and TCP port. Default: 3478.
    #[arg(long, short = 'p')]
    pub listening_port: Option<u16>,
    /// TLS port (TLS is on when a certificate is configured). Default: 5349.
    #[arg(long)]
    pub tls_listening_port: Option<u16>,
    /// Address relay sockets bind to (repeatable). Default: the listening IPs.
    #[arg(long = "relay-ip", short = 'E')]
    pub relay_ip: Vec<IpAddr>,
    /// Public address to advertise, as `PUBLIC` or `PUBLIC/PRIVATE` (repeatable).
    #[arg(long = "external-ip", short = 'X')]
    pub external_ip: Vec<String>,
    /// Lowest relay port. Default: 49152.
    #[arg(long)]
    pub min_port: Option<u16>,
    /// Highest relay port. Default: 65535.
    #[arg(long)]
    pub max_port: Option<u16>,
    /// Realm of long-term credentials. Default: icegate.
    #[arg(long, short = 'r')]
    pub realm: Option<String>,
    /// A static user, `NAME:PASSWORD` (repeatable).
    #[arg(long = "user", short = 'u')]
    pub user: Vec<String>,
    /// Accept TURN REST API credentials signed with a static-auth-secret.
    #[arg(long)]
    pub use_auth_secret: bool,
    /// A TURN REST API shared secret (repeatable, for rotation).
    #[arg(long = "static-auth-secret")]
    pub static_auth_secret: Vec<String>,
    /// A file holding one more TURN REST API secret, e.g. a generated one shared with
    /// icegate-signal; accepted alongside static-auth-secret.
    #[arg(long)]
    pub static_auth_secret_file: Option<PathBuf>,
    /// Allocations per user; 0 = unlimited.
    #[arg(long)]
    pub user_quota: Option<u32>,
    /// Allocations in total; 0 = unlimited.
    #[arg(long)]
    pub total_quota: Option<u32>,
    /// Bandwidth cap per allocation in bytes per second; 0 = unlimited.
    #[arg(long)]
    pub max_bps: Option<u64>,
    /// Allow peers on loopback addresses (tests, local demos).
    #[arg(long)]
    pub allow_loopback_peers: bool,
    /// Peer addresses to deny, CIDR or `A-B` range (repeatable).
    #[arg(long = "denied-peer-ip")]
    pub denied_peer_ip: Vec<String>,
    /// Peer addresses to allow despite the default deny list (repeatable).
    #[arg(long = "allowed-peer-ip")]
    pub allowed_peer_ip: Vec<String>,
    /// TLS certificate chain (PEM).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub pkey: Option<PathBuf>,
    /// Address of the Prometheus /metrics, /healthz, /readyz listener.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Worker threads; 0 = one per core.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Nonce lifetime in seconds.
    #[arg(long)]
    pub stale_nonce: Option<u64>,
    /// Maximum allocation lifetime in seconds.
    #[arg(long)]
    pub lifetime_max: Option<u64>,
    /// Seconds to wait for allocations to end after SIGTERM.
    #[arg(long)]
    pub drain_timeout: Option<u64>,
    /// Unauthenticated requests per second per source IP (IPv6: per /64); 0 = unlimited.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// TCP/TLS connections from one IP address (IPv6: per /64); 0 = unlimited. Default: 128.
    #[arg(long)]
    pub max_connections_per_ip: Option<u32>,
    /// TCP/TLS connections in total, besides the descriptor budget; 0 = only that budget.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Seconds a started STUN or ChannelData frame may take to arrive in full. Default: 5.
    #[arg(long)]
    pub stream_frame_timeout: Option<u64>,
    /// Seconds a TCP/TLS connection without an allocation may go without a complete
    /// message. Default: 30.
    #[arg(long)]
    pub stream_idle_timeout: Option<u64>,
    /// Do not listen on UDP.
    #[arg(long)]
    pub no_udp: bool,
    /// Do not listen on TCP.
    #[arg(long)]
    pub no_tcp: bool,
    /// Do not listen on TLS.
    #[arg(long)]
    pub no_tls: bool,
    /// User to switch to after binding ports, when started as root.
    #[arg(long)]
    pub proc_user: Option<String>,
    /// Group to switch to after binding ports, when started as root.
    #[arg(long)]
    pub proc_group: Option<String>,
}

/// The TOML file. Keys are the flags' long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    listening_ip: Option<Vec<IpAddr>>,
    listening_port: Option<u16>,
    tls_listening_port: Option<u16>,
    relay_ip: Option<Vec<IpAddr>>,
    external_ip: Option<Vec<String>>,
    min_port: Option<u16>,
    max_port: Option<u16>,
    realm: Option<String>,
    user: Option<Vec<String>>,
    use_auth_secret: Option<bool>,
    static_auth_secret: Option<Vec<String>>,
    static_auth_secret_file: Option<PathBuf>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    max_bps: Option<u64>,
    allow_loopback_peers: Option<bool>,
    denied_peer_ip: Option<Vec<String>>,
    allowed_peer_ip: Option<Vec<String>>,
    cert: Option<PathBuf>,
    pkey: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    workers: Option<usize>,
    stale_nonce: Option<u64>,
    lifetime_max: Option<u64>,
    drain_timeout: Option<u64>,
    rate_limit: Option<u32>,
    max_connections_per_ip: Option<u32>,
    max_connections: Option<u32>,
    stream_frame_timeout: Option<u64>,
    stream_idle_timeout: Option<u64>,
    no_udp: Option<bool>,
    no_tcp: Option<bool>,
    no_tls: Option<bool>,
    process: Option<ProcessConfig>,
}

/// `[process]`: whom to run as after binding privileged ports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    user: Option<String>,
    group: Option<String>,
}

/// Everything the runtime needs, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The core's configuration.
    pub server: ServerConfig,
    /// Addresses to listen on.
    pub listening_ips: Vec<IpAddr>,
    /// UDP/TCP port.
    pub port: u16,
    /// TLS port.
    pub tls_port: u16,
    /// Relay port range.
    pub min_port: u16,
    /// Relay port range.
    pub max_port: u16,
    /// Which listeners run.
    pub udp: bool,
    /// Which listeners run.
    pub tcp: bool,
    /// Certificate and key, when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Worker threads.
    pub workers: usize,
    /// Drain time after SIGTERM.
    pub drain_timeout: Duration,
    /// User to switch to.
    pub proc_user: Option<String>,
    /// Group to switch to.
    pub proc_group: Option<String>,
    /// Caps and timeouts of TCP/TLS client connections.
    pub streams: StreamSettings,
}

/// Caps and timeouts of TCP/TLS client connections (`crate::stream_admission`,
/// `crate::stream_deadline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// `max-connections-per-ip`; 0 = unlimited.
    pub per_ip: u32,
    /// `max-connections`; 0 = only the descriptor budget.
    pub total: u32,
    /// `stream-frame-timeout`.
    pub frame_timeout: Duration,
    /// `stream-idle-timeout`.
    pub idle_timeout: Duration,
}

impl StreamSettings {
    /// What differs in `new`, one `key old -> new` per setting, for the log of a reload.
    pub fn changes(&self, new: &Self) -> Vec<String> {
        let mut changes = Vec::new();
        let mut compare = |key: &str, old: String, new: String| {
            if old != new {
                changes.push(format!("{key} {old} -> {new}"));
            }
        };
        compare(
            "max-connections-per-ip",
            self.per_ip.to_string(),
            new.per_ip.to_string(),
        );
        compare(
            "max-connections",
            self.total.to_string(),
            new.total.to_string(),
        );
        let secs = |d: Duration| format!("{} s", d.as_secs());
        compare(
            "stream-frame-timeout",
            secs(self.frame_timeout),
            secs(new.frame_timeout),
        );
        compare(
            "stream-idle-timeout",
            secs(self.idle_timeout),
            secs(new.idle_timeout),
        );
        changes
    }
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            per_ip: 128,
            total: 0,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl Settings {
    /// Loads the file named by `--config` (if any), applies the flags and checks the result.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_toml::<FileConfig>(path)?,
            None => FileConfig::default(),
        };
        Self::merge(cli, file, cli.config.as_deref())
    }

    fn merge(cli: &Cli, f: FileConfig, path: Option<&Path>) -> Result<Self, ConfigError> {
        // Where a value came from decides what the error names.
        let src = |from_cli: bool| if from_cli { None } else { path };
        let invalid =
            |from_cli: bool, key: &str, msg: String| ConfigError::invalid(src(from_cli), key, msg);
        let (listening_ips, _) = pick_vec(&cli.listening_ip, f.listening_ip);
        let listening_ips = if listening_ips.is_empty() {
            vec![IpAddr::from([0, 0, 0, 0])]
        } else {
            listening_ips
        };
        let port = pick(cli.listening_port, f.listening_port).0.unwrap_or(3478);
        let tls_port = pick(cli.tls_listening_port, f.tls_listening_port)
            .0
            .unwrap_or(5349);
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

        let (relay_ips, relay_cli) = pick_vec(&cli.relay_ip, f.relay_ip);
        let relay_ips = if relay_ips.is_empty() {
            listening_ips.clone()
        } else {
            relay_ips
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
        let (external, ext_cli) = pick_vec(&cli.external_ip, f.external_ip);
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

        let realm = pick(cli.realm.clone(), f.realm)
            .0
            .unwrap_or_else(|| "icegate".into());
        let mut credentials = Credentials::new();
        let (users, users_cli) = pick_vec(&cli.user, f.user);
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
        let (secrets, secrets_cli) = pick_vec(&cli.static_auth_secret, f.static_auth_secret);
        let (secret_file, secret_file_cli) = pick(
            cli.static_auth_secret_file.clone(),
            f.static_auth_secret_file,
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
        let (denied, denied_cli) = pick_vec(&cli.denied_peer_ip, f.denied_peer_ip);
        let (allowed, allowed_cli) = pick_vec(&cli.allowed_peer_ip, f.allowed_peer_ip);
        let peer_filter = PeerFilter::new(
            parse_nets(&allowed, "allowed-peer-ip", allowed_cli)?,
            parse_nets(&denied, "denied-peer-ip", denied_cli)?,
            cli.allow_loopback_peers || f.allow_loopback_peers.unwrap_or(false),
        );

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

        let mut rate_limit = RateLimitConfig::default();
        if let Some(per_second) = pick(cli.rate_limit, f.rate_limit).0 {
            rate_limit.per_second = per_second;
            rate_limit.burst = per_second.saturating_mul(2);
        }

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

        let (cert, cert_cli) = pick(cli.cert.clone(), f.cert);
        let (pkey, _) = pick(cli.pkey.clone(), f.pkey);
        let no_tls = cli.no_tls || f.no_tls.unwrap_or(false);
        let tls = match (cert, pkey) {
            (Some(c), Some(k)) if !no_tls => Some((c, k)),
            (Some(_), None) | (None, Some(_)) if !no_tls => {
                return Err(invalid(
                    cert_cli,
                    "cert",
                    "cert and pkey must be given together".into(),
                ))
            }
            _ => None,
        };

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

        let process = f.process.unwrap_or_default();
        Ok(Settings {
            server,
            listening_ips,
            port,
            tls_port,
            min_port,
            max_port,
            udp: !(cli.no_udp || f.no_udp.unwrap_or(false)),
            tcp: !(cli.no_tcp || f.no_tcp.unwrap_or(false)),
            tls,
            metrics_listen: pick(cli.metrics_listen, f.metrics_listen).0,
            log_format: pick(cli.log_format, f.log_format).0.unwrap_or_default(),
            workers,
            drain_timeout: Duration::from_secs(
                pick(cli.drain_timeout, f.drain_timeout).0.unwrap_or(30),
            ),
            proc_user: pick(cli.proc_user.clone(), process.user).0,
            proc_group: pick(cli.proc_group.clone(), process.group).0,
            streams,
        })
    }

    /// What is allowed but risky in this configuration, one sentence each, for the start-up
    /// log and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(addr) = self.metrics_listen.filter(|a| !a.ip().is_loopback()) {
            // The listener has no authentication: whoever reaches it learns the load, the
            // traffic and what the peer filter refuses, and can scrape it as often as it likes.
            warnings.push(format!(
                "metrics-listen {addr} is not a loopback address and has no access control: \
                 /metrics, /healthz and /readyz answer anyone who reaches it; bind it to \
                 127.0.0.1 or a management network, firewall it, or put an authenticating \
                 reverse proxy in front (docs/operations.md, \"Health checks\")"
            ));
        }
        warnings
    }

    /// A one-screen summary for `--check-config`, without secrets.
    pub fn summary(&self) -> String {
        let relays: Vec<String> = self
            .server
            .relay_addresses
            .iter()
            .map(|r| {
                if r.local == r.advertised {
                    r.local.to_string()
                } else {
                    format!("{} (advertised as {})", r.local, r.advertised)
                }
            })
            .collect();
        let mut summary = format!(
            "configuration OK\n  listening: {:?} port {} (udp: {}, tcp: {}), tls: {}\n  relay: {} ports {}-{}\n  realm: {}\n  credentials: {}\n  quotas: user {}, total {}\n  stream connections: {} per IP, {} in total, frame timeout {} s, idle timeout {} s\n  metrics: {}\n  workers: {}",
            self.listening_ips,
            self.port,
            self.udp,
            self.tcp,
            match &self.tls {
                Some(_) => format!("port {}", self.tls_port),
                None => "off".into(),
            },
            relays.join(", "),
            self.min_port,
            self.max_port,
            self.server.realm,
            self.server.credentials,
            self.server.user_quota,
            self.server.total_quota,
            self.streams.per_ip,
            self.streams.total,
            self.streams.frame_timeout.as_secs(),
            self.streams.idle_timeout.as_secs(),
            self.metrics_listen.map_or("off".into(), |a| a.to_string()),
            self.workers,
        );
        for warning in self.warnings() {
            summary.push_str("\n  warning: ");
            summary.push_str(&warning);
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["icegate-relay"];
        all.extend_from_slice(args);
        Cli::parse_from(all)
    }

    #[test]
    fn flags_make_settings() {
        let s = Settings::load(&cli(&[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "alice:pw",
            "--min-port",
            "50000",
            "--max-port",
            "50010",
            "--external-ip",
            "203.0.113.5",
        ]))
        .unwrap();
        assert_eq!(s.port, 3478);
        assert_eq!(
            s.server.relay_addresses[0].local,
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.server.relay_addresses[0].advertised,
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        assert!(s.tls.is_none());
        assert!(!s.summary().contains("pw"));
    }

    #[test]
    fn errors_name_the_flag_or_the_file_and_key() {
        let e = Settings::load(&cli(&["--listening-ip", "127.0.0.1"])).unwrap_err();
        assert!(e.to_string().contains("user"), "{e}");
        let e = Settings::load(&cli(&[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--min-port",
            "60000",
            "--max-port",
            "50000",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("min-port"), "{e}");

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listening-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\ndenied-peer-ip = [\"10.0.0.0/33\"]"
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let e = Settings::load(&cli(&["--config", &path])).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&path) && text.contains("denied-peer-ip"),
            "{text}"
        );

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "listening-port = \"x\"").unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let text = Settings::load(&cli(&["--config", &path]))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&path) && text.contains("listening-port"),
            "{text}"
        );
    }

    #[test]
    fn secret_from_a_file_is_accepted_alongside_listed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "listening-ip = [\"127.0.0.1\"]\nuse-auth-secret = true\n\
                 static-auth-secret = [\"listed\"]\nstatic-auth-secret-file = {:?}\n",
                secret.to_str().unwrap()
            ),
        )
        .unwrap();
        let path = config.to_str().unwrap().to_owned();
        let s = Settings::load(&cli(&["--config", &path])).unwrap();
        // Both secrets sign credentials the relay accepts; the file's newline is not part of it.
        use icegate_common::credentials::rest_password;
        use icegate_relay_proto::integrity::{KeyAlgorithm, LongTermKey};
        let keys = s
            .server
            .credentials
            .candidate_keys("2000000000:u", "icegate", KeyAlgorithm::Md5, 0)
            .unwrap();
        for listed in ["listed", "from-file"] {
            let password = rest_password(&Secret::new(listed), "2000000000:u");
            let key = LongTermKey::derive(KeyAlgorithm::Md5, "2000000000:u", "icegate", &password);
            assert!(keys.contains(&key), "no key for the secret {listed:?}");
        }

        // Empty, multi-line and missing files are errors naming the key, never the content.
        std::fs::write(&secret, "\n").unwrap();
        let e = Settings::load(&cli(&["--config", &path])).unwrap_err();
        assert_eq!(e.key(), Some("static-auth-secret-file"), "{e}");
        std::fs::write(&secret, "one\ntwo\n").unwrap();
        let e = Settings::load(&cli(&["--config", &path])).unwrap_err();
        assert!(!e.to_string().contains("two"), "{e}");
        std::fs::remove_file(&secret).unwrap();
        let e = Settings::load(&cli(&["--config", &path])).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_metrics_listener_off_loopback_is_warned_about() {
        let base = ["--listening-ip", "127.0.0.1", "--user", "a:b"];
        let with = |metrics: &str| {
            let mut args = base.to_vec();
            args.extend_from_slice(&["--metrics-listen", metrics]);
            Settings::load(&cli(&args)).unwrap()
        };
        for quiet in ["127.0.0.1:9641", "[::1]:9641"] {
            let s = with(quiet);
            assert!(s.warnings().is_empty(), "{quiet}: {:?}", s.warnings());
            assert!(!s.summary().contains("warning"), "{}", s.summary());
        }
        assert!(Settings::load(&cli(&base)).unwrap().warnings().is_empty());
        for open in ["0.0.0.0:9641", "[::]:9641", "10.0.0.5:9641"] {
            let s = with(open);
            let warnings = s.warnings();
            assert_eq!(warnings.len(), 1, "{open}: {warnings:?}");
            assert!(
                warnings[0].contains("metrics-listen") && warnings[0].contains("access control"),
                "{}",
                warnings[0]
            );
            assert!(
                s.summary().contains("warning: metrics-listen"),
                "{}",
                s.summary()
            );
        }
    }

    #[test]
    fn stream_limits_come_from_the_file_or_the_flags() {
        let base = ["--listening-ip", "127.0.0.1", "--user", "a:b"];
        let s = Settings::load(&cli(&base)).unwrap();
        assert_eq!(s.streams, StreamSettings::default());

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "max-connections-per-ip = 4\nmax-connections = 900\nstream-frame-timeout = 2\n\
             stream-idle-timeout = 0"
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let mut args = base.to_vec();
        args.extend_from_slice(&["--config", &path]);
        let e = Settings::load(&cli(&args)).unwrap_err();
        assert!(
            e.to_string().contains(&path) && e.key() == Some("stream-idle-timeout"),
            "{e}"
        );
        args.extend_from_slice(&["--stream-idle-timeout", "7", "--max-connections", "10"]);
        let s = Settings::load(&cli(&args)).unwrap();
        assert_eq!(
            s.streams,
            StreamSettings {
                per_ip: 4,
                total: 10,
                frame_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(7),
            }
        );
        assert!(s.summary().contains("4 per IP"), "{}", s.summary());
        let e = Settings::load(&cli(&[
            "--listening-ip",
            "127.0.0.1",
            "--user",
            "a:b",
            "--stream-frame-timeout",
            "0",
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("stream-frame-timeout"), "{e}");
    }

    #[test]
    fn stream_limit_changes_name_each_setting_with_old_and_new_value() {
        let old = StreamSettings::default();
        assert!(old.changes(&old).is_empty());
        let new = StreamSettings {
            per_ip: 4,
            idle_timeout: Duration::from_secs(10),
            ..old
        };
        assert_eq!(
            old.changes(&new),
            [
                "max-connections-per-ip 128 -> 4",
                "stream-idle-timeout 30 s -> 10 s"
            ]
        );
    }

    #[test]
    fn file_then_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listening-ip = [\"127.0.0.1\"]\nrealm = \"file\"\nuse-auth-secret = true\nstatic-auth-secret = [\"s\"]\n[process]\nuser = \"nobody\""
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let s = Settings::load(&cli(&["--config", &path, "--realm", "flag"])).unwrap();
        assert_eq!(s.server.realm, "flag");
        assert_eq!(s.proc_user.as_deref(), Some("nobody"));
    }
}
