//! The command line and the TOML file, as parsed: every value optional, nothing checked yet.
//! The file's keys are the flags' long names.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use icegate_common::logging::LogFormat;
use serde::Deserialize;

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
    /// A web origin (`https://app.example.com[:PORT]`) whose pages may open /ws and read
    /// /v1/ice-servers, besides the server's own (repeatable or comma-separated); "*" for any.
    #[arg(long = "allowed-origins", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
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
    /// Redis 7 (or Valkey) that joins several icegate-signal processes into one cluster
    /// (`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`); without it, one process serves alone.
    #[arg(long)]
    pub redis_url: Option<String>,
}

/// The TOML file; keys are the flags' long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub(super) listen: Option<SocketAddr>,
    pub(super) cert: Option<PathBuf>,
    pub(super) pkey: Option<PathBuf>,
    pub(super) plain_http: Option<bool>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) static_auth_secret: Option<String>,
    pub(super) static_auth_secret_file: Option<PathBuf>,
    pub(super) relay: Option<Vec<String>>,
    pub(super) relay_health: Option<Vec<String>>,
    pub(super) relay_health_interval: Option<u64>,
    pub(super) relay_health_grace: Option<u64>,
    pub(super) credential_ttl: Option<u64>,
    pub(super) jwt_secret: Option<String>,
    pub(super) jwt_public_key: Option<PathBuf>,
    pub(super) anonymous: Option<bool>,
    pub(super) anonymous_public: Option<bool>,
    pub(super) allowed_origins: Option<Vec<String>>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) max_message_rate: Option<u32>,
    pub(super) max_sdp_bytes: Option<usize>,
    pub(super) max_connections_per_ip: Option<u32>,
    pub(super) max_sessions_per_user: Option<usize>,
    pub(super) idle_timeout: Option<u64>,
    pub(super) ring_timeout: Option<u64>,
    pub(super) asterisk_sip_ws: Option<String>,
    pub(super) asterisk_sip_user: Option<String>,
    pub(super) asterisk_sip_password: Option<String>,
    pub(super) asterisk_sip_domain: Option<String>,
    pub(super) asterisk_ari_url: Option<String>,
    pub(super) asterisk_ari_user: Option<String>,
    pub(super) asterisk_ari_password: Option<String>,
    pub(super) asterisk_app: Option<String>,
    pub(super) asterisk_routing: Option<String>,
    pub(super) asterisk_context: Option<String>,
    pub(super) asterisk_dial_endpoint: Option<String>,
    pub(super) asterisk_ca: Option<PathBuf>,
    pub(super) candidate_gather_timeout: Option<u64>,
    pub(super) redis_url: Option<String>,
}
