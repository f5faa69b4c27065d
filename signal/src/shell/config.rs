//! The signal server's configuration: a TOML file whose keys are the long flag names, and the
//! flags, which override it. Errors name the file (or the command line) and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use icegate_common::config::{load_toml, pick, pick_vec, ConfigError};
use icegate_common::credentials::{self, Secret};
use icegate_common::logging::LogFormat;
use icegate_signal_asterisk::ari::controller::Routing;
use icegate_signal_proto::auth::Authenticator;
use icegate_signal_proto::hub::HubConfig;
use icegate_signal_proto::ice::{self, IceConfigError, Relay};
use icegate_signal_proto::limits::Limits;
use serde::Deserialize;

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

/// Command-line flags.
#[derive(Debug, Default, Parser)]
#[command(
    name = "icegate-signal",
    version,
    about = "WebSocket signaling for WebRTC: authenticates clients, hands out ICE servers, carries JSEP"
)]
pub struct Cli {
    /// TOML configuration file; flags given here override it.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Check the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,
    /// HTTPS (or, with --plain-http, HTTP) address. Default: 127.0.0.1:8443.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM). Without cert and pkey, a loopback listener gets a
    /// self-signed certificate in the state directory.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    pub pkey: Option<PathBuf>,
    /// Serve plain HTTP: for tests, or behind a reverse proxy that terminates TLS.
    #[arg(long)]
    pub plain_http: bool,
    /// Directory for generated state (the self-signed certificate). Default: ./run.
    #[arg(long, env = "ICEGATE_STATE")]
    pub state_dir: Option<PathBuf>,
    /// The TURN REST API shared secret of the relays (signs TURN credentials).
    #[arg(long)]
    pub static_auth_secret: Option<String>,
    /// A file holding that secret instead, e.g. one generated and shared with icegate-relay.
    #[arg(long)]
    pub static_auth_secret_file: Option<PathBuf>,
    /// A stun:, turn: or turns: URI handed to clients (repeatable).
    #[arg(long = "relay")]
    pub relay: Vec<String>,
    /// A relay's /readyz URL (repeatable); relays that fail it are left out.
    #[arg(long = "relay-health")]
    pub relay_health: Vec<String>,
    /// Seconds between relay health checks. Default: 5.
    #[arg(long)]
    pub relay_health_interval: Option<u64>,
    /// Seconds from the start that a relay whose health checks have never passed is still
    /// handed out; 0 leaves it out at its first failed check. Default: 30.
    #[arg(long)]
    pub relay_health_grace: Option<u64>,
    /// Lifetime of TURN credentials in seconds. Default: 86400.
    #[arg(long)]
    pub credential_ttl: Option<u64>,
    /// HS256 secret that client JWTs are signed with.
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA for RS256, EC P-256 for ES256) that client JWTs are signed with.
    #[arg(long)]
    pub jwt_public_key: Option<PathBuf>,
    /// Accept clients without a token; each picks its name (demos and local tests).
    #[arg(long)]
    pub anonymous: bool,
    /// Allow `anonymous` on a listen address that is not loopback.
    #[arg(long)]
    pub anonymous_public: bool,
    /// Address of the Prometheus /metrics, /healthz, /readyz listener.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// Messages per second per connection. Default: 20 (bursts of twice that).
    #[arg(long)]
    pub max_message_rate: Option<u32>,
    /// Largest SDP in bytes. Default: 65536.
    #[arg(long)]
    pub max_sdp_bytes: Option<usize>,
    /// WebSocket connections per client IP (IPv6: per /64). Default: 20.
    #[arg(long)]
    pub max_connections_per_ip: Option<u32>,
    /// Sessions per user. Default: 8.
    #[arg(long)]
    pub max_sessions_per_user: Option<usize>,
    /// Seconds without any frame from a client before it is closed. Default: 60.
    #[arg(long)]
    pub idle_timeout: Option<u64>,
    /// Seconds a call may ring unanswered. Default: 60.
    #[arg(long)]
    pub ring_timeout: Option<u64>,
    /// Asterisk's SIP WebSocket (`ws://HOST:8088/ws` or `wss://HOST:8089/ws`); setting it
    /// turns the Asterisk gateway on.
    #[arg(long)]
    pub asterisk_sip_ws: Option<String>,
    /// The PJSIP endpoint (and digest user) icegate registers as. Default: icegate.
    #[arg(long)]
    pub asterisk_sip_user: Option<String>,
    /// The PJSIP endpoint's digest password.
    #[arg(long)]
    pub asterisk_sip_password: Option<String>,
    /// The SIP domain (REGISTER goes to sip:DOMAIN). Default: the host of asterisk-sip-ws.
    #[arg(long)]
    pub asterisk_sip_domain: Option<String>,
    /// Asterisk's HTTP server for ARI (`http://HOST:8088` or `https://HOST:8089`).
    #[arg(long)]
    pub asterisk_ari_url: Option<String>,
    /// The ARI user (ari.conf). Default: icegate.
    #[arg(long)]
    pub asterisk_ari_user: Option<String>,
    /// The ARI user's password.
    #[arg(long)]
    pub asterisk_ari_password: Option<String>,
    /// The Stasis application's name. Default: icegate.
    #[arg(long)]
    pub asterisk_app: Option<String>,
    /// What a browser's call does in Stasis: answer, continue (into asterisk-context) or dial
    /// (asterisk-dial-endpoint, then bridge). Default: answer.
    #[arg(long)]
    pub asterisk_routing: Option<String>,
    /// The dialplan context for routing `continue` and for transfers. Default: from-icegate.
    #[arg(long)]
    pub asterisk_context: Option<String>,
    /// The endpoint routing `dial` rings; `{exten}` is the extension. Default: PJSIP/{exten}.
    #[arg(long)]
    pub asterisk_dial_endpoint: Option<String>,
    /// PEM CA certificates that Asterisk's wss:// and https:// certificates must chain to.
    #[arg(long)]
    pub asterisk_ca: Option<PathBuf>,
    /// Milliseconds to wait for a browser's end-of-candidates before its SDP goes to
    /// Asterisk (which does not trickle). Default: 2000.
    #[arg(long)]
    pub candidate_gather_timeout: Option<u64>,
}

/// The TOML file; keys are the flags' long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    pkey: Option<PathBuf>,
    plain_http: Option<bool>,
    state_dir: Option<PathBuf>,
    static_auth_secret: Option<String>,
    static_auth_secret_file: Option<PathBuf>,
    relay: Option<Vec<String>>,
    relay_health: Option<Vec<String>>,
    relay_health_interval: Option<u64>,
    relay_health_grace: Option<u64>,
    credential_ttl: Option<u64>,
    jwt_secret: Option<String>,
    jwt_public_key: Option<PathBuf>,
    anonymous: Option<bool>,
    anonymous_public: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    max_message_rate: Option<u32>,
    max_sdp_bytes: Option<usize>,
    max_connections_per_ip: Option<u32>,
    max_sessions_per_user: Option<usize>,
    idle_timeout: Option<u64>,
    ring_timeout: Option<u64>,
    asterisk_sip_ws: Option<String>,
    asterisk_sip_user: Option<String>,
    asterisk_sip_password: Option<String>,
    asterisk_sip_domain: Option<String>,
    asterisk_ari_url: Option<String>,
    asterisk_ari_user: Option<String>,
    asterisk_ari_password: Option<String>,
    asterisk_app: Option<String>,
    asterisk_routing: Option<String>,
    asterisk_context: Option<String>,
    asterisk_dial_endpoint: Option<String>,
    asterisk_ca: Option<PathBuf>,
    candidate_gather_timeout: Option<u64>,
}

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
}

/// Where a WebSocket or HTTP server is: `ws://`, `wss://`, `http://` or `https://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `wss://` or `https://`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (the scheme's default when not given).
    pub port: u16,
    /// Path, `/` at least; without a trailing `/` for HTTP bases.
    pub path: String,
}

impl ServerUrl {
    /// Parses `scheme://host[:port][/path]` for one of `schemes` (plain, TLS).
    pub fn parse(text: &str, schemes: (&str, &str)) -> Result<ServerUrl, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("{text}: not a URL"))?;
        let tls = if scheme.eq_ignore_ascii_case(schemes.0) {
            false
        } else if scheme.eq_ignore_ascii_case(schemes.1) {
            true
        } else {
            return Err(format!(
                "{text}: the scheme must be {} or {}",
                schemes.0, schemes.1
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(format!("{text}: credentials belong in their own keys"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{text}: unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(format!("{text}: no host"));
        }
        let default_port = if tls { 8089 } else { 8088 };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{text}: bad port"))?,
            None => default_port,
        };
        Ok(ServerUrl {
            tls,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// `host:port`, with brackets for IPv6, for Host headers.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The Asterisk gateway's settings.
#[derive(Debug)]
pub struct Asterisk {
    /// The SIP WebSocket.
    pub sip_ws: ServerUrl,
    /// The SIP user.
    pub sip_user: String,
    /// Its password.
    pub sip_password: Secret,
    /// The SIP domain.
    pub sip_domain: String,
    /// The ARI base (path without a trailing `/`, e.g. empty or `/asterisk`).
    pub ari: ServerUrl,
    /// The ARI user.
    pub ari_user: String,
    /// Its password.
    pub ari_password: Secret,
    /// The Stasis application.
    pub app: String,
    /// Routing in Stasis.
    pub routing: Routing,
    /// The transfer context.
    pub context: String,
    /// CA certificates for TLS, if set.
    pub ca: Option<PathBuf>,
    /// The candidate gather timeout.
    pub gather_timeout: Duration,
}

impl Settings {
    /// Loads the file named by `--config` (if any), applies the flags and checks the result.
    pub fn load(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_toml::<FileConfig>(path)?,
            None => FileConfig::default(),
        };
        merge(cli, file, cli.config.as_deref())
    }

    /// What is allowed but risky in this configuration, one sentence each, for the start-up
    /// log and `--check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(addr) = self.metrics_listen.filter(|a| !a.ip().is_loopback()) {
            // The listener has no authentication: whoever reaches it learns the load (open
            // connections, calls, the relays' health) and can scrape it as often as it likes.
            warnings.push(format!(
                "metrics-listen {addr} is not a loopback address and has no access control: \
                 /metrics, /healthz and /readyz answer anyone who reaches it; bind it to \
                 127.0.0.1 or a management network, firewall it, or put an authenticating \
                 reverse proxy in front (docs/operations.md, \"Health checks and metrics of \
                 icegate-signal\")"
            ));
        }
        warnings
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
             credential-ttl: {} s\n  metrics: {}\n  asterisk: {}",
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
        );
        for warning in self.warnings() {
            summary.push_str("\n  warning: ");
            summary.push_str(&warning);
        }
        summary
    }
}

fn merge(cli: &Cli, f: FileConfig, path: Option<&Path>) -> Result<Settings, ConfigError> {
    let invalid = |from_cli: bool, key: &str, message: String| {
        ConfigError::invalid(if from_cli { None } else { path }, key, message)
    };

    let asterisk = asterisk(cli, &f, &invalid)?;
    let (listen, listen_cli) = pick(cli.listen, f.listen);
    let listen =
        listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
    let (cert, cert_cli) = pick(cli.cert.clone(), f.cert);
    let (key, key_cli) = pick(cli.pkey.clone(), f.pkey);
    let plain = cli.plain_http || f.plain_http.unwrap_or(false);
    let state_dir = pick(cli.state_dir.clone(), f.state_dir)
        .0
        .unwrap_or_else(|| PathBuf::from("run"));
    let tls = match (cert, key, plain) {
        (Some(_), _, true) | (_, Some(_), true) => {
            return Err(invalid(
                cli.plain_http,
                "plain-http",
                "cannot be combined with cert and pkey".into(),
            ))
        }
        (Some(cert), Some(key), false) => TlsMode::Files { cert, key },
        (Some(_), None, false) => {
            return Err(invalid(
                cert_cli,
                "pkey",
                "cert is set but pkey is not".into(),
            ))
        }
        (None, Some(_), false) => {
            return Err(invalid(
                key_cli,
                "cert",
                "pkey is set but cert is not".into(),
            ))
        }
        (None, None, true) => TlsMode::Plain,
        (None, None, false) if listen.ip().is_loopback() => {
            TlsMode::SelfSigned(state_dir.join("tls"))
        }
        (None, None, false) => {
            return Err(invalid(
                listen_cli || path.is_none(),
                "cert",
                format!(
                    "{listen} is not a loopback address: set cert and pkey (or plain-http behind \
                     a TLS-terminating proxy)"
                ),
            ))
        }
    };

    let (jwt_secret, jwt_cli) = pick(cli.jwt_secret.clone(), f.jwt_secret);
    let (public_key, public_cli) = pick(cli.jwt_public_key.clone(), f.jwt_public_key);
    let public_pem = match &public_key {
        Some(file) => Some(std::fs::read(file).map_err(|error| {
            invalid(
                public_cli,
                "jwt-public-key",
                format!("{}: cannot read: {error}", file.display()),
            )
        })?),
        None => None,
    };
    let auth = Authenticator::new(
        jwt_secret.as_deref().map(str::as_bytes),
        public_pem.as_deref(),
    )
    .map_err(|error| match error {
        icegate_signal_proto::auth::KeyError::EmptySecret => {
            invalid(jwt_cli, "jwt-secret", error.to_string())
        }
        icegate_signal_proto::auth::KeyError::BadPublicKey
        | icegate_signal_proto::auth::KeyError::UnsupportedCurve => invalid(
            public_cli,
            "jwt-public-key",
            format!(
                "{}: {error}",
                public_key.as_deref().unwrap_or(Path::new("")).display()
            ),
        ),
    })?;
    let anonymous = cli.anonymous || f.anonymous.unwrap_or(false);
    let anonymous_public = cli.anonymous_public || f.anonymous_public.unwrap_or(false);
    if anonymous && !anonymous_public && !listen.ip().is_loopback() {
        // Anonymous clients get TURN credentials: on a public address, anyone could relay
        // through the relays. A demo is meant to be reached from loopback (or a tunnel).
        return Err(invalid(
            cli.anonymous || path.is_none(),
            "anonymous",
            format!(
                "{listen} is not a loopback address, and anonymous clients get TURN credentials: \
                 set jwt-secret or jwt-public-key (or anonymous-public = true to allow it)"
            ),
        ));
    }
    if !anonymous && !auth.is_configured() {
        // Nothing set anywhere: name the file when there is one, as that is where it belongs.
        return Err(invalid(
            path.is_none(),
            "jwt-secret",
            "no way to authenticate clients: set jwt-secret or jwt-public-key, or anonymous".into(),
        ));
    }

    let (secret, secret_cli) = pick(cli.static_auth_secret.clone(), f.static_auth_secret);
    if secret.as_deref() == Some("") {
        return Err(invalid(
            secret_cli,
            "static-auth-secret",
            "empty secret".into(),
        ));
    }
    let (secret_file, secret_file_cli) = pick(
        cli.static_auth_secret_file.clone(),
        f.static_auth_secret_file,
    );
    let secret = match (secret, secret_file) {
        // The server signs with one secret: two sources would leave a doubt which one.
        (Some(_), Some(_)) => {
            return Err(invalid(
                secret_file_cli,
                "static-auth-secret-file",
                "cannot be combined with static-auth-secret: set one of them".into(),
            ))
        }
        (None, Some(file)) => Some(
            credentials::read_secret_file(&file)
                .map_err(|message| invalid(secret_file_cli, "static-auth-secret-file", message))?,
        ),
        (secret, None) => secret,
    };
    // A missing secret is reported under the key that would hold it: the file key when that
    // was what the operator used.
    let secret_cli = secret_cli || secret_file_cli;
    let turn_secret = secret.map(Secret::new);
    let (uris, uris_cli) = pick_vec(&cli.relay, f.relay);
    let (health, health_cli) = pick_vec(&cli.relay_health, f.relay_health);
    let relays =
        ice::group_relays(&uris, &health, turn_secret.is_some()).map_err(|error| match error {
            IceConfigError::BadUri(_) => invalid(uris_cli, "relay", error.to_string()),
            IceConfigError::NoSecret => {
                invalid(secret_cli, "static-auth-secret", error.to_string())
            }
            _ => invalid(health_cli, "relay-health", error.to_string()),
        })?;

    let positive = |value: (Option<u64>, bool), key: &str, default: u64| match value {
        (Some(0), from_cli) => Err(invalid(from_cli, key, "must be at least 1".into())),
        (value, _) => Ok(value.unwrap_or(default)),
    };
    let health_interval = positive(
        pick(cli.relay_health_interval, f.relay_health_interval),
        "relay-health-interval",
        DEFAULT_HEALTH_INTERVAL,
    )?;
    let health_grace = pick(cli.relay_health_grace, f.relay_health_grace)
        .0
        .unwrap_or(DEFAULT_HEALTH_GRACE);
    let credential_ttl = positive(
        pick(cli.credential_ttl, f.credential_ttl),
        "credential-ttl",
        DEFAULT_CREDENTIAL_TTL,
    )?;
    let defaults = Limits::default();
    let idle = positive(
        pick(cli.idle_timeout, f.idle_timeout),
        "idle-timeout",
        defaults.idle_timeout.as_secs(),
    )?;
    let hub_defaults = HubConfig::default();
    let ring = positive(
        pick(cli.ring_timeout, f.ring_timeout),
        "ring-timeout",
        hub_defaults.ring_timeout.as_secs(),
    )?;
    let (rate, rate_cli) = pick(cli.max_message_rate, f.max_message_rate);
    let rate = match rate {
        Some(0) => {
            return Err(invalid(
                rate_cli,
                "max-message-rate",
                "must be at least 1".into(),
            ))
        }
        rate => rate.unwrap_or(defaults.messages_per_sec),
    };
    let (sdp, sdp_cli) = pick(cli.max_sdp_bytes, f.max_sdp_bytes);
    let max_sdp_bytes = match sdp {
        Some(bytes) if !(256..=1 << 20).contains(&bytes) => {
            return Err(invalid(
                sdp_cli,
                "max-sdp-bytes",
                format!("must be between 256 and {}", 1 << 20),
            ))
        }
        sdp => sdp.unwrap_or(defaults.max_sdp_bytes),
    };
    let (per_ip, per_ip_cli) = pick(cli.max_connections_per_ip, f.max_connections_per_ip);
    if per_ip == Some(0) {
        return Err(invalid(
            per_ip_cli,
            "max-connections-per-ip",
            "must be at least 1".into(),
        ));
    }
    let (per_user, per_user_cli) = pick(cli.max_sessions_per_user, f.max_sessions_per_user);
    if per_user == Some(0) {
        return Err(invalid(
            per_user_cli,
            "max-sessions-per-user",
            "must be at least 1".into(),
        ));
    }
    let max_sessions_per_user = per_user.unwrap_or(defaults.max_sessions_per_user);

    Ok(Settings {
        listen,
        tls,
        keys: Keys { auth, turn_secret },
        relays,
        health_interval: Duration::from_secs(health_interval),
        health_grace: Duration::from_secs(health_grace),
        credential_ttl,
        anonymous,
        metrics_listen: pick(cli.metrics_listen, f.metrics_listen).0,
        log_format: pick(cli.log_format, f.log_format).0.unwrap_or_default(),
        limits: Limits {
            messages_per_sec: rate,
            message_burst: rate.saturating_mul(2),
            max_sdp_bytes,
            max_connections_per_ip: per_ip.unwrap_or(defaults.max_connections_per_ip),
            max_sessions_per_user,
            idle_timeout: Duration::from_secs(idle),
            ..defaults
        },
        hub: HubConfig {
            max_sessions_per_user,
            ring_timeout: Duration::from_secs(ring),
            pbx: asterisk.is_some(),
            ..hub_defaults
        },
        asterisk,
    })
}

/// The `asterisk-*` keys: all or nothing, decided by `asterisk-sip-ws`.
fn asterisk(
    cli: &Cli,
    f: &FileConfig,
    invalid: &dyn Fn(bool, &str, String) -> ConfigError,
) -> Result<Option<Asterisk>, ConfigError> {
    let text = |c: &Option<String>, f: &Option<String>| pick(c.clone(), f.clone());
    let (sip_ws, sip_ws_cli) = text(&cli.asterisk_sip_ws, &f.asterisk_sip_ws);
    let (ari, ari_cli) = text(&cli.asterisk_ari_url, &f.asterisk_ari_url);
    let Some(sip_ws) = sip_ws else {
        if ari.is_some() {
            return Err(invalid(
                ari_cli,
                "asterisk-sip-ws",
                "asterisk-ari-url is set but asterisk-sip-ws is not".into(),
            ));
        }
        return Ok(None);
    };
    let sip_ws = ServerUrl::parse(&sip_ws, ("ws", "wss"))
        .map_err(|e| invalid(sip_ws_cli, "asterisk-sip-ws", e))?;
    let Some(ari_text) = ari else {
        return Err(invalid(
            sip_ws_cli,
            "asterisk-ari-url",
            "asterisk-sip-ws is set but asterisk-ari-url is not".into(),
        ));
    };
    let mut ari = ServerUrl::parse(&ari_text, ("http", "https"))
        .map_err(|e| invalid(ari_cli, "asterisk-ari-url", e))?;
    let trimmed = ari.path.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/ari").unwrap_or(trimmed);
    ari.path = trimmed.to_owned();
    let secret = |c: &Option<String>, fv: &Option<String>, key: &str| match text(c, fv) {
        (Some(value), _) if !value.is_empty() => Ok(Secret::new(value)),
        (_, from_cli) => Err(invalid(from_cli, key, "must be set (and not empty)".into())),
    };
    let sip_password = secret(
        &cli.asterisk_sip_password,
        &f.asterisk_sip_password,
        "asterisk-sip-password",
    )?;
    let ari_password = secret(
        &cli.asterisk_ari_password,
        &f.asterisk_ari_password,
        "asterisk-ari-password",
    )?;
    let name = |c: &Option<String>, fv: &Option<String>, key: &str, default: &str| {
        let (value, from_cli) = text(c, fv);
        let value = value.unwrap_or_else(|| default.to_owned());
        let ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
        if ok {
            Ok(value)
        } else {
            Err(invalid(
                from_cli,
                key,
                format!("{value:?}: use letters, digits and - _ . +"),
            ))
        }
    };
    let sip_user = name(
        &cli.asterisk_sip_user,
        &f.asterisk_sip_user,
        "asterisk-sip-user",
        "icegate",
    )?;
    let ari_user = name(
        &cli.asterisk_ari_user,
        &f.asterisk_ari_user,
        "asterisk-ari-user",
        "icegate",
    )?;
    let app = name(
        &cli.asterisk_app,
        &f.asterisk_app,
        "asterisk-app",
        "icegate",
    )?;
    let context = name(
        &cli.asterisk_context,
        &f.asterisk_context,
        "asterisk-context",
        "from-icegate",
    )?;
    let sip_domain = name(
        &cli.asterisk_sip_domain,
        &f.asterisk_sip_domain,
        "asterisk-sip-domain",
        &sip_ws.host,
    )
    .or_else(|e| {
        if sip_ws.host.contains(':') {
            Ok(format!("[{}]", sip_ws.host))
        } else {
            Err(e)
        }
    })?;
    let (endpoint, _) = text(&cli.asterisk_dial_endpoint, &f.asterisk_dial_endpoint);
    let (routing, routing_cli) = text(&cli.asterisk_routing, &f.asterisk_routing);
    let routing = match routing.as_deref().unwrap_or("answer") {
        "answer" => Routing::Answer,
        "continue" => Routing::Continue {
            context: context.clone(),
            priority: 1,
        },
        "dial" => Routing::Dial {
            endpoint: endpoint.unwrap_or_else(|| "PJSIP/{exten}".into()),
            timeout: 30,
        },
        other => {
            return Err(invalid(
                routing_cli,
                "asterisk-routing",
                format!("{other:?}: use answer, continue or dial"),
            ))
        }
    };
    let (ca, _) = pick(cli.asterisk_ca.clone(), f.asterisk_ca.clone());
    if (sip_ws.tls || ari.tls) && ca.is_none() {
        return Err(invalid(
            sip_ws_cli,
            "asterisk-ca",
            "wss:// and https:// need the CA that signed Asterisk's certificate".into(),
        ));
    }
    let (gather, gather_cli) = pick(cli.candidate_gather_timeout, f.candidate_gather_timeout);
    let gather = match gather {
        Some(ms) if !(1..=30_000).contains(&ms) => {
            return Err(invalid(
                gather_cli,
                "candidate-gather-timeout",
                "must be between 1 and 30000 ms".into(),
            ))
        }
        ms => Duration::from_millis(ms.unwrap_or(2000)),
    };
    Ok(Some(Asterisk {
        sip_ws,
        sip_user,
        sip_password,
        sip_domain,
        ari,
        ari_user,
        ari_password,
        app,
        routing,
        context,
        ca,
        gather_timeout: gather,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
