//! The signal server's configuration: a TOML file whose keys are the long flag names, and the
//! flags, which override it. Errors name the file (or the command line) and the key.

use icegate_common::metrics_http::exposure_warning;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use icegate_common::config::{load_toml, ConfigError};
use icegate_common::credentials::Secret;
use icegate_common::logging::LogFormat;
use icegate_signal_proto::auth::Authenticator;
use icegate_signal_proto::hub::HubConfig;
use icegate_signal_proto::ice::Relay;
use icegate_signal_proto::limits::Limits;
use icegate_signal_proto::origin::{own_origins, AllowedOrigins};

mod asterisk;
mod cli;
mod merge;
mod redis;

pub use asterisk::{Asterisk, ServerUrl};
pub use cli::{Cli, FileConfig};
pub use redis::RedisUrl;

/// Where the server listens by default: loopback, so a first run exposes nothing.
const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// TURN credentials last a day by default, as coturn's documentation suggests: long enough
/// for any call, since an allocation is refreshed with the credential it was made with.
const DEFAULT_CREDENTIAL_TTL: u64 = 86_400;
const DEFAULT_HEALTH_INTERVAL: u64 = 5;
/// A relay that has not passed a health check yet is handed out for this long from the
/// start: enough for relays started at the same time (a boot, a restart of both, a relay
/// that takes a `RestartSec=` or two to come up) to answer, six checks at the default
/// interval; short enough that a relay that is really missing is out within half a minute.
const DEFAULT_HEALTH_GRACE: u64 = 30;

/// How the listener speaks HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS with the certificate and key in these files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// TLS with a self-signed certificate generated (once) in this directory.
    SelfSigned(PathBuf),
    /// Plain HTTP.
    Plain,
}

/// The secrets and keys, which SIGHUP reloads.
#[derive(Debug)]
pub struct Keys {
    /// Verifies client tokens.
    pub auth: Authenticator,
    /// Signs TURN credentials.
    pub turn_secret: Option<Secret>,
}

/// Everything the runtime needs, checked.
#[derive(Debug)]
pub struct Settings {
    /// The HTTP(S) listener.
    pub listen: SocketAddr,
    /// TLS or not.
    pub tls: TlsMode,
    /// Secrets and keys.
    pub keys: Keys,
    /// Relays handed out, with their health URLs.
    pub relays: Vec<Relay>,
    /// Between health checks.
    pub health_interval: Duration,
    /// How long a relay that has never passed a check is handed out, from the start.
    pub health_grace: Duration,
    /// TURN credential lifetime, seconds.
    pub credential_ttl: u64,
    /// Whether clients may connect without a token.
    pub anonymous: bool,
    /// Web origins allowed besides the server's own (`allowed-origins`); SIGHUP reloads them.
    pub allowed_origins: AllowedOrigins,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Per-connection limits.
    pub limits: Limits,
    /// Hub limits and timers.
    pub hub: HubConfig,
    /// The Asterisk gateway, when configured.
    pub asterisk: Option<Asterisk>,
    /// The cluster's Redis, when several processes serve as one.
    pub redis_url: Option<RedisUrl>,
}

impl Settings {
    /// Loads the file named by `--config` (if any), applies the flags and checks the result.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_toml::<FileConfig>(path)?,
            None => FileConfig::default(),
        };
        merge::merge(cli, file, cli.config.as_deref())
    }

    /// What is allowed but risky in this configuration, one sentence each, for the start-up
    /// log and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .metrics_listen
            .and_then(|addr| exposure_warning(addr, "Health checks and metrics of icegate-signal"))
            .into_iter()
            .collect();
        if self.allowed_origins.any() && self.anonymous {
            warnings.push(
                "allowed-origins = [\"*\"] with anonymous: a page on any web site a visitor opens \
                 can use this server, and get TURN credentials for its relays"
                    .into(),
            );
        }
        warnings
    }

    /// The origins of pages this server serves itself, from `listen` and TLS, and the DNS names
    /// of the certificate (see [`own_origins`]).
    pub fn own_origins(&self, cert_dns_names: &[String]) -> Vec<String> {
        own_origins(
            self.listen,
            !matches!(self.tls, TlsMode::Plain),
            cert_dns_names,
        )
    }

    /// A summary for `--check-config`, without any secret, and the [`Settings::warnings`].
    pub fn summary(&self) -> String {
        let tls = match &self.tls {
            TlsMode::Files { cert, .. } => format!("TLS with {}", cert.display()),
            TlsMode::SelfSigned(dir) => format!("TLS, self-signed in {}", dir.display()),
            TlsMode::Plain => "plain HTTP".into(),
        };
        let relays: Vec<String> = self
            .relays
            .iter()
            .map(|relay| {
                let health = relay
                    .health_url
                    .as_ref()
                    .map_or(String::from("unchecked"), |h| {
                        format!("checked at {}", h.url)
                    });
                format!("{} ({})", relay.uris.join(" "), health)
            })
            .collect();
        let mut summary = format!(
            "icegate-signal configuration OK\n  listen: {} ({tls})\n  auth: {}\n  relays: {}\n  \
             origins: {}\n  credential-ttl: {} s\n  metrics: {}\n  asterisk: {}\n  cluster: {}",
            self.listen,
            match (self.anonymous, self.keys.auth.is_configured()) {
                (true, true) => "anonymous, or JWT",
                (true, false) => "anonymous",
                (false, _) => "JWT",
            },
            if relays.is_empty() {
                "none".into()
            } else {
                relays.join("; ")
            },
            self.origins_summary(),
            self.credential_ttl,
            self.metrics_listen
                .map_or("off".into(), |address| address.to_string()),
            self.asterisk.as_ref().map_or("off".into(), |a| format!(
                "SIP {}://{}{} as {}, ARI {}://{}{} app {}",
                if a.sip_ws.tls { "wss" } else { "ws" },
                a.sip_ws.authority(),
                a.sip_ws.path,
                a.sip_user,
                if a.ari.tls { "https" } else { "http" },
                a.ari.authority(),
                a.ari.path,
                a.app
            )),
            self.redis_url
                .as_ref()
                .map_or("off (one process)".into(), |url| format!(
                    "Redis at {}",
                    url.redacted()
                )),
        );
        for warning in self.warnings() {
            summary.push_str("\n  warning: ");
            summary.push_str(&warning);
        }
        summary
    }

    /// The allowed origins for the summary: the certificate is not read here, so its names
    /// are mentioned, not listed.
    fn origins_summary(&self) -> String {
        if self.allowed_origins.any() {
            return "any (\"*\")".into();
        }
        let mut parts = self.own_origins(&[]);
        if !matches!(self.tls, TlsMode::Plain) {
            parts.push("the certificate's DNS names".into());
        }
        parts.extend(self.allowed_origins.origins().iter().cloned());
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use icegate_signal_asterisk::ari::controller::Routing;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("icegate-signal").chain(args.iter().copied())).unwrap()
    }

    fn load_file(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signal.toml");
        std::fs::write(&path, text).unwrap();
        let mut cli = cli(args);
        cli.config = Some(path);
        Settings::load(&cli)
    }

    #[test]
    fn redis_url_from_the_file_or_the_flag_never_shown_with_its_password() {
        let base = "anonymous = true\n";
        assert!(
            load_file(base, &[]).unwrap().redis_url.is_none(),
            "off by default"
        );
        let file = format!("{base}redis-url = \"redis://:hunter2@10.0.0.5:6379\"\n");
        let settings = load_file(&file, &[]).unwrap();
        let summary = settings.summary();
        assert!(
            summary.contains("cluster: Redis at redis://:***@10.0.0.5:6379"),
            "{summary}"
        );
        assert!(!summary.contains("hunter2"));
        let settings = load_file(&file, &["--redis-url", "redis://127.0.0.1:7000"]).unwrap();
        assert_eq!(
            settings.redis_url.unwrap().expose(),
            "redis://127.0.0.1:7000",
            "the flag wins"
        );
        let error =
            load_file(&format!("{base}redis-url = \"http://:hunter2@x\"\n"), &[]).unwrap_err();
        assert_eq!(error.key(), Some("redis-url"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn turn_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let file_key = format!(
            "anonymous = true\nstatic-auth-secret-file = {:?}\nrelay = [\"turn:127.0.0.1:3478\"]\n",
            secret.to_str().unwrap()
        );
        let settings = load_file(&file_key, &[]).unwrap();
        let turn_secret = settings.keys.turn_secret.expect("the file's secret");
        assert_eq!(turn_secret.expose(), b"from-file");

        let both = format!("{file_key}static-auth-secret = \"s\"\n");
        let error = load_file(&both, &[]).unwrap_err();
        assert_eq!(error.key(), Some("static-auth-secret-file"), "{error}");

        // Empty, multi-line and missing files are errors naming the key, never the content.
        std::fs::write(&secret, " \n").unwrap();
        let error = load_file(&file_key, &[]).unwrap_err();
        assert_eq!(error.key(), Some("static-auth-secret-file"), "{error}");
        std::fs::write(&secret, "one\ntwo\n").unwrap();
        let error = load_file(&file_key, &[]).unwrap_err();
        assert!(!error.to_string().contains("two"), "{error}");
        std::fs::remove_file(&secret).unwrap();
        let error = load_file(&file_key, &[]).unwrap_err();
        assert!(error.to_string().contains("cannot read"), "{error}");
    }

    #[test]
    fn a_metrics_listener_off_loopback_is_warned_about() {
        let with = |metrics: &str| {
            Settings::load(&cli(&["--anonymous", "--metrics-listen", metrics])).unwrap()
        };
        for quiet in ["127.0.0.1:9642", "[::1]:9642"] {
            let s = with(quiet);
            assert!(s.warnings().is_empty(), "{quiet}: {:?}", s.warnings());
            assert!(!s.summary().contains("warning"), "{}", s.summary());
        }
        let off = Settings::load(&cli(&["--anonymous"])).unwrap();
        assert!(off.warnings().is_empty());
        for open in ["0.0.0.0:9642", "[::]:9642", "10.0.0.5:9642"] {
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
    fn loopback_default_is_self_signed_tls() {
        let settings = Settings::load(&cli(&["--anonymous"])).unwrap();
        assert_eq!(settings.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(settings.tls, TlsMode::SelfSigned(PathBuf::from("run/tls")));
        assert!(settings.relays.is_empty());
        assert_eq!(settings.health_grace, Duration::from_secs(30));
        assert!(settings.summary().contains("anonymous"));
    }

    #[test]
    fn public_address_needs_a_certificate_or_explicit_plain_http() {
        let error = Settings::load(&cli(&["--anonymous", "--listen", "0.0.0.0:443"])).unwrap_err();
        assert_eq!(error.key(), Some("cert"));
        let settings = Settings::load(&cli(&[
            "--anonymous",
            "--anonymous-public",
            "--listen",
            "0.0.0.0:80",
            "--plain-http",
        ]))
        .unwrap();
        assert_eq!(settings.tls, TlsMode::Plain);
    }

    #[test]
    fn anonymous_clients_only_on_loopback_unless_allowed() {
        let public = ["--anonymous", "--listen", "0.0.0.0:80", "--plain-http"];
        let error = Settings::load(&cli(&public)).unwrap_err();
        assert_eq!(error.key(), Some("anonymous"));
        assert!(
            error.to_string().contains("not a loopback address"),
            "{error}"
        );
        let error = load_file(
            "anonymous = true\nlisten = \"[::]:8443\"\nplain-http = true\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.key(), Some("anonymous"));
        assert!(
            load_file(
                "anonymous = true\nanonymous-public = true\nlisten = \"[::]:8443\"\nplain-http = true\n",
                &[]
            )
            .is_ok()
        );
        // With a JWT key as well, anonymous is still what a stranger would use.
        let error = load_file(
            "anonymous = true\njwt-secret = \"k\"\nlisten = \"10.0.0.5:8443\"\nplain-http = true\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.key(), Some("anonymous"));
        let error = Settings::load(&cli(&["--anonymous", "--cert", "c.pem"])).unwrap_err();
        assert_eq!(error.key(), Some("pkey"));
    }

    #[test]
    fn allowed_origins_from_flags_or_file() {
        let settings = Settings::load(&cli(&["--anonymous"])).unwrap();
        assert!(!settings.allowed_origins.any());
        assert!(settings.allowed_origins.origins().is_empty());
        assert!(
            settings
                .summary()
                .contains("origins: https://127.0.0.1:8443, the certificate's DNS names\n"),
            "{}",
            settings.summary()
        );
        let settings = Settings::load(&cli(&[
            "--anonymous",
            "--plain-http",
            "--listen",
            "127.0.0.1:80",
            "--allowed-origins",
            "https://A.example,https://b.example:443",
            "--allowed-origins",
            "http://c.example:8080",
        ]))
        .unwrap();
        assert_eq!(
            settings.allowed_origins.origins(),
            [
                "https://a.example",
                "https://b.example",
                "http://c.example:8080"
            ]
        );
        assert!(
            settings.summary().contains(
                "origins: http://127.0.0.1, https://a.example, https://b.example, http://c.example:8080\n"
            ),
            "{}",
            settings.summary()
        );

        // Flags replace the file's list; errors name the key, and the file or the flag.
        let file = "anonymous = true\nallowed-origins = [\"https://file.example\"]\n";
        let settings = load_file(file, &[]).unwrap();
        assert_eq!(settings.allowed_origins.origins(), ["https://file.example"]);
        let settings = load_file(file, &["--allowed-origins", "https://flag.example"]).unwrap();
        assert_eq!(settings.allowed_origins.origins(), ["https://flag.example"]);
        let error = load_file(
            "anonymous = true\nallowed-origins = [\"https://app.example/\"]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.key(), Some("allowed-origins"));
        assert!(error.file().is_some(), "{error}");
        assert!(error.to_string().contains("no path"), "{error}");
        let error = load_file(file, &["--allowed-origins", "*.example"]).unwrap_err();
        assert_eq!((error.key(), error.file()), (Some("allowed-origins"), None));

        // "*" is explicit, and in anonymous mode warned about.
        let any = load_file("anonymous = true\nallowed-origins = [\"*\"]\n", &[]).unwrap();
        assert!(any.allowed_origins.any());
        assert!(
            any.summary().contains("origins: any (\"*\")"),
            "{}",
            any.summary()
        );
        assert_eq!(any.warnings().len(), 1, "{:?}", any.warnings());
        assert!(any.warnings()[0].contains("allowed-origins"));
        let jwt = Settings::load(&cli(&["--jwt-secret", "k", "--allowed-origins", "*"])).unwrap();
        assert!(jwt.warnings().is_empty(), "{:?}", jwt.warnings());
    }

    #[test]
    fn some_authentication_is_required() {
        let error = Settings::load(&cli(&[])).unwrap_err();
        assert_eq!(error.key(), Some("jwt-secret"));
        assert!(Settings::load(&cli(&["--jwt-secret", "x"])).is_ok());
    }

    #[test]
    fn file_errors_name_file_and_key_and_hide_secrets() {
        let error = load_file("anonymous = true\nrelay = [\"turn:10.0.0.1\"]\n", &[]).unwrap_err();
        assert_eq!(error.key(), Some("static-auth-secret"));
        assert!(error.file().is_some(), "{error}");

        let error = load_file("anonymous = true\ncredential-ttl = \"hunter2\"\n", &[]).unwrap_err();
        assert_eq!(error.key(), Some("credential-ttl"));
        assert!(!error.to_string().contains("hunter2"), "{error}");

        let error = load_file("anonymous = true\nrelay-helth = []\n", &[]).unwrap_err();
        assert!(error.to_string().contains("relay-helth"), "{error}");
    }

    #[test]
    fn flags_override_the_file_and_relays_group() {
        let settings = load_file(
            "jwt-secret = \"file-secret\"\nstatic-auth-secret = \"s\"\ncredential-ttl = 10\n\
             relay = [\"turn:10.0.0.1?transport=udp\", \"turns:10.0.0.1:5349?transport=tcp\"]\n\
             relay-health = [\"http://10.0.0.1:9641/readyz\"]\nrelay-health-grace = 0\n",
            &["--credential-ttl", "20"],
        )
        .unwrap();
        assert_eq!(settings.credential_ttl, 20);
        assert_eq!(settings.health_interval, Duration::from_secs(5));
        assert_eq!(
            settings.health_grace,
            Duration::ZERO,
            "0 is allowed: no grace"
        );
        assert_eq!(settings.relays.len(), 1);
        assert!(settings.relays[0].health_url.is_some());
        let summary = settings.summary();
        assert!(!summary.contains("file-secret"), "{summary}");
        assert!(
            summary.contains("checked at http://10.0.0.1:9641/readyz"),
            "{summary}"
        );
        assert!(!format!("{settings:?}").contains("file-secret"));

        let error = load_file("anonymous = true\n", &["--credential-ttl", "0"]).unwrap_err();
        assert_eq!(error.file(), None, "a flag's error names the command line");
        assert_eq!(error.key(), Some("credential-ttl"));
    }

    #[test]
    fn asterisk_keys() {
        let settings = Settings::load(&cli(&["--anonymous"])).unwrap();
        assert!(settings.asterisk.is_none());
        assert!(!settings.hub.pbx);
        let settings = load_file(
            "anonymous = true\nasterisk-sip-ws = \"ws://127.0.0.1:8088/ws\"\n\
             asterisk-sip-password = \"sip-pw\"\nasterisk-ari-url = \"http://127.0.0.1:8088/ari\"\n\
             asterisk-ari-password = \"ari-pw\"\nasterisk-routing = \"continue\"\n",
            &["--candidate-gather-timeout", "500"],
        )
        .unwrap();
        assert!(settings.hub.pbx);
        let a = settings.asterisk.as_ref().unwrap();
        assert_eq!((a.sip_ws.port, a.sip_ws.path.as_str()), (8088, "/ws"));
        assert_eq!(a.ari.path, "");
        assert_eq!(a.sip_domain, "127.0.0.1");
        assert_eq!(a.gather_timeout, Duration::from_millis(500));
        assert!(matches!(a.routing, Routing::Continue { .. }));
        let shown = format!("{} {settings:?}", settings.summary());
        assert!(
            !shown.contains("sip-pw") && !shown.contains("ari-pw"),
            "{shown}"
        );

        let error =
            load_file("anonymous = true\nasterisk-sip-ws = \"ws://h/ws\"\n", &[]).unwrap_err();
        assert_eq!(error.key(), Some("asterisk-ari-url"));
        assert!(error.file().is_some());
        let error =
            load_file("anonymous = true\nasterisk-sip-ws = \"http://h/ws\"\n", &[]).unwrap_err();
        assert_eq!(error.key(), Some("asterisk-sip-ws"));
        let error = load_file(
            "anonymous = true\nasterisk-sip-ws = \"ws://h/ws\"\nasterisk-ari-url = \"http://h\"\n\
             asterisk-ari-password = \"x\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.key(), Some("asterisk-sip-password"));
        let error = load_file(
            "anonymous = true\n",
            &[
                "--asterisk-sip-ws",
                "ws://h",
                "--asterisk-ari-url",
                "http://h",
                "--asterisk-sip-password",
                "a",
                "--asterisk-ari-password",
                "b",
                "--asterisk-routing",
                "x",
            ],
        )
        .unwrap_err();
        assert_eq!(
            (error.key(), error.file()),
            (Some("asterisk-routing"), None)
        );
        let error = load_file(
            "anonymous = true\nasterisk-sip-ws = \"wss://h/ws\"\nasterisk-ari-url = \"https://h\"\n\
             asterisk-sip-password = \"a\"\nasterisk-ari-password = \"b\"\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(error.key(), Some("asterisk-ca"));
    }
}
