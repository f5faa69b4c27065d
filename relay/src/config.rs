//! The relay's configuration: a TOML file and coturn-named command-line flags, merged and
//! checked into [`Settings`]. Flags override the file; errors name the key and the file.

use icegate_common::metrics_http::exposure_warning;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use icegate_common::config::{load_toml, ConfigError};
use icegate_common::logging::LogFormat;
use icegate_relay_proto::ServerConfig;

mod cli;
mod file;
mod merge;

pub use cli::Cli;
use file::FileConfig;

/// `redirect`: when Allocates go to an alternate server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Redirect {
    /// Every Allocate, as coturn does with `alternate-server`.
    #[default]
    Always,
    /// Only those the total quota or a drain would refuse.
    WhenFull,
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
    /// Certificate and key, when DTLS is on (the same files as TLS).
    pub dtls: Option<(PathBuf, PathBuf)>,
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
    /// `relay-ip` was not set and a listening address is a wildcard: the relay addresses are
    /// the host's, as listed at start.
    pub relay_ip_auto: bool,
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
        merge::merge(
            cli,
            file,
            cli.config.as_deref(),
            &crate::host_addresses::host_ips,
        )
    }

    /// What is allowed but risky in this configuration, one sentence each, for the start-up
    /// log and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        self.metrics_listen
            .and_then(|addr| exposure_warning(addr, "Health checks"))
            .into_iter()
            .collect()
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
            "configuration OK\n  listening: {:?} port {} (udp: {}, tcp: {}), tls: {}, dtls: {}\n  relay: {}{} ports {}-{}\n  realm: {}\n  credentials: {}\n  quotas: user {}, total {}\n  stream connections: {} per IP, {} in total, frame timeout {} s, idle timeout {} s\n  metrics: {}\n  workers: {}",
            self.listening_ips,
            self.port,
            self.udp,
            self.tcp,
            match &self.tls {
                Some(_) => format!("port {}", self.tls_port),
                None => "off".into(),
            },
            match &self.dtls {
                Some(_) => format!("port {}", self.tls_port),
                None => "off".into(),
            },
            relays.join(", "),
            if self.relay_ip_auto {
                " (relay-ip unset: the host's addresses)"
            } else {
                ""
            },
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
        summary.push_str("\n  rfc5780 (NAT behaviour discovery): ");
        match &self.server.nat_discovery {
            Some(nat) => {
                let pairs: Vec<String> = nat
                    .ip_pairs
                    .iter()
                    .map(|(a, b)| format!("{a} and {b}"))
                    .collect();
                summary.push_str(&format!(
                    "on over UDP, addresses {}, ports {} and {} (alt-listening-port)",
                    pairs.join("; "),
                    nat.ports.0,
                    nat.ports.1
                ));
            }
            None => {
                summary.push_str("off (on with two listening-ip of one family, unless no-rfc5780)")
            }
        }
        summary.push_str(if self.server.tcp_relay {
            "\n  tcp allocations (RFC 6062): on, over TCP and TLS"
        } else {
            "\n  tcp allocations (RFC 6062): off (no-tcp-relay)"
        });
        let alternates = &self.server.alternates;
        if !alternates.plain.is_empty() || !alternates.tls.is_empty() {
            let list = |l: &[SocketAddr]| {
                l.iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            summary.push_str(&format!(
                "\n  alternate servers ({}): udp/tcp [{}], tls [{}]",
                match alternates.when {
                    icegate_relay_proto::config::RedirectWhen::Always => "every Allocate",
                    icegate_relay_proto::config::RedirectWhen::Full => "when full",
                },
                list(&alternates.plain),
                list(&alternates.tls),
            ));
        }
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

    /// Loads with `host` as the host's interface addresses.
    fn load_on_host(args: &[&str], host: &[&str]) -> Result<Settings, ConfigError> {
        let host: Vec<IpAddr> = host.iter().map(|ip| ip.parse().unwrap()).collect();
        merge::merge(
            &cli(args),
            FileConfig::default(),
            None,
            &|| Ok(host.clone()),
        )
    }

    #[test]
    fn a_wildcard_listener_without_relay_ip_relays_from_the_hosts_reachable_addresses() {
        let host = [
            "127.0.0.1",
            "192.0.2.2",
            "169.254.1.1",
            "10.0.0.5",
            "::1",
            "fe80::1",
            "2001:db8::2",
        ];
        let relays = |s: &Settings| -> Vec<String> {
            s.server
                .relay_addresses
                .iter()
                .map(|r| r.local.to_string())
                .collect()
        };
        let v4 = load_on_host(&["--user", "a:b"], &host).unwrap();
        assert_eq!(relays(&v4), ["192.0.2.2", "10.0.0.5"]);
        assert!(v4.relay_ip_auto);
        assert!(v4.summary().contains("relay-ip unset"), "{}", v4.summary());
        let both = load_on_host(&["--user", "a:b", "-L", "0.0.0.0", "-L", "::"], &host).unwrap();
        assert_eq!(relays(&both), ["192.0.2.2", "10.0.0.5", "2001:db8::2"]);
        // A wildcard next to an exact address keeps the exact one.
        let mixed = load_on_host(&["--user", "a:b", "-L", "::", "-L", "192.0.2.2"], &host).unwrap();
        assert_eq!(relays(&mixed), ["2001:db8::2", "192.0.2.2"]);

        // Set by hand, or listening on exact addresses: no guessing.
        let set = load_on_host(&["--user", "a:b", "-E", "192.0.2.9"], &host).unwrap();
        assert_eq!(relays(&set), ["192.0.2.9"]);
        assert!(!set.relay_ip_auto);
        let exact = load_on_host(&["--user", "a:b", "-L", "127.0.0.1"], &host).unwrap();
        assert_eq!(relays(&exact), ["127.0.0.1"]);
        assert!(!exact.summary().contains("relay-ip unset"));

        // Only loopback and link-local: nothing to relay from, and the error says what to set.
        let e = load_on_host(&["--user", "a:b"], &["127.0.0.1", "169.254.1.1", "::1"]).unwrap_err();
        assert_eq!(e.key(), Some("relay-ip"), "{e}");
        let e = merge::merge(
            &cli(&["--user", "a:b"]),
            FileConfig::default(),
            None,
            &|| Err(std::io::Error::other("no netlink")),
        )
        .unwrap_err();
        assert!(
            e.key() == Some("relay-ip") && e.to_string().contains("no netlink"),
            "{e}"
        );
    }
    use clap::Parser;
    use icegate_common::credentials::Secret;
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
    fn rfc5780_is_on_with_two_listening_ips_of_one_family_as_in_coturn() {
        use icegate_relay_proto::config::NatDiscovery;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let two = [
            "--user",
            "a:b",
            "-L",
            "127.0.0.1",
            "-L",
            "::1",
            "-L",
            "127.0.0.2",
        ];
        let s = Settings::load(&cli(&two)).unwrap();
        assert_eq!(
            s.server.nat_discovery,
            Some(NatDiscovery {
                ip_pairs: vec![(ip("127.0.0.1"), ip("127.0.0.2"))],
                ports: (3478, 3479),
            })
        );
        assert!(
            s.summary()
                .contains("rfc5780 (NAT behaviour discovery): on over UDP, addresses 127.0.0.1 and 127.0.0.2, ports 3478 and 3479"),
            "{}",
            s.summary()
        );
        let mut args = two.to_vec();
        args.extend_from_slice(&["--alt-listening-port", "4000"]);
        let s = Settings::load(&cli(&args)).unwrap();
        assert_eq!(s.server.nat_discovery.unwrap().ports, (3478, 4000));

        // One address per family, a wildcard, no-rfc5780 or no UDP: off.
        for off in [
            &["--user", "a:b", "-L", "127.0.0.1", "-L", "::1"][..],
            &[
                "--user",
                "a:b",
                "-L",
                "0.0.0.0",
                "-L",
                "127.0.0.1",
                "-E",
                "127.0.0.1",
            ],
            &[
                "--user",
                "a:b",
                "-L",
                "127.0.0.1",
                "-L",
                "127.0.0.2",
                "--no-rfc5780",
            ],
            &[
                "--user",
                "a:b",
                "-L",
                "127.0.0.1",
                "-L",
                "127.0.0.2",
                "--no-udp",
            ],
        ] {
            let s = Settings::load(&cli(off)).unwrap();
            assert_eq!(s.server.nat_discovery, None, "{off:?}");
            assert!(s
                .summary()
                .contains("rfc5780 (NAT behaviour discovery): off"));
        }

        // The alternate port must be another port; the error names it and the file.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "listening-ip = [\"127.0.0.1\", \"127.0.0.2\"]\nuser = [\"a:b\"]\n\
             listening-port = 3478\nalt-listening-port = 3478"
        )
        .unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let e = Settings::load(&cli(&["--config", &path])).unwrap_err();
        assert!(
            e.key() == Some("alt-listening-port") && e.to_string().contains(&path),
            "{e}"
        );
        let e = Settings::load(&cli(&["--config", &path, "--no-rfc5780"]));
        assert!(e.is_ok(), "off, the alternate port is not used: {e:?}");
    }

    #[test]
    fn dtls_takes_the_tls_certificate_unless_no_dtls() {
        let base = ["--user", "a:b", "--cert", "/c.pem", "--pkey", "/k.pem"];
        let with = |extra: &[&str]| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            Settings::load(&cli(&args))
        };
        let pair = Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")));
        let both = with(&[]).unwrap();
        assert_eq!(
            (both.tls.clone(), both.dtls.clone()),
            (pair.clone(), pair.clone())
        );
        assert!(
            both.summary().contains("tls: port 5349, dtls: port 5349"),
            "{}",
            both.summary()
        );
        let no_dtls = with(&["--no-dtls"]).unwrap();
        assert_eq!(
            (no_dtls.tls.clone(), no_dtls.dtls.clone()),
            (pair.clone(), None)
        );
        assert!(no_dtls.summary().contains("tls: port 5349, dtls: off"));
        let no_tls = with(&["--no-tls"]).unwrap();
        assert_eq!((no_tls.tls, no_tls.dtls), (None, pair));
        let neither = with(&["--no-tls", "--no-dtls"]).unwrap();
        assert_eq!((neither.tls, neither.dtls), (None, None));
        // Without a certificate, neither runs.
        let plain = Settings::load(&cli(&["--user", "a:b"])).unwrap();
        assert_eq!((plain.tls, plain.dtls), (None, None));
        // A lone cert is an error while either would use it.
        let lone = ["--user", "a:b", "--cert", "/c.pem", "--no-tls"];
        assert_eq!(Settings::load(&cli(&lone)).unwrap_err().key(), Some("cert"));

        // RFC 5780's alternate port cannot be the DTLS port.
        let rfc5780 = [
            "-L",
            "127.0.0.1",
            "-L",
            "127.0.0.2",
            "--alt-listening-port",
            "5349",
        ];
        let e = with(&rfc5780).unwrap_err();
        assert!(
            e.key() == Some("alt-listening-port") && e.to_string().contains("no-dtls"),
            "{e}"
        );
        let mut args = rfc5780.to_vec();
        args.push("--no-dtls");
        assert!(with(&args).is_ok());
    }

    #[test]
    fn no_tcp_relay_from_the_flag_or_the_file() {
        let s = Settings::load(&cli(&["--user", "a:b"])).unwrap();
        assert!(s.server.tcp_relay, "on by default, as in coturn");
        assert!(s.summary().contains("tcp allocations (RFC 6062): on"));
        let s = Settings::load(&cli(&["--user", "a:b", "--no-tcp-relay"])).unwrap();
        assert!(!s.server.tcp_relay);
        assert!(s.summary().contains("tcp allocations (RFC 6062): off"));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "user = [\"a:b\"]\nno-tcp-relay = true").unwrap();
        let path = file.path().to_str().unwrap().to_owned();
        let s = Settings::load(&cli(&["--config", &path])).unwrap();
        assert!(!s.server.tcp_relay);
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
