//! The command line, as parsed: every value optional, nothing checked yet.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use icegate_common::logging::LogFormat;

use super::Redirect;

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
    /// The second UDP port of RFC 5780 NAT behaviour discovery, on with two listening-ip of
    /// one family; 0 = listening-port + 1 (coturn's default). Default: 0.
    #[arg(long)]
    pub alt_listening_port: Option<u16>,
    /// No RFC 5780 NAT behaviour discovery, even with two listening-ip of one family.
    #[arg(long)]
    pub no_rfc5780: bool,
    /// No TCP allocations (RFC 6062): REQUESTED-TRANSPORT TCP is refused with 442.
    #[arg(long)]
    pub no_tcp_relay: bool,
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
    /// Another relay Allocates over UDP and TCP are sent to (300 Try Alternate), `IP` or
    /// `IP:PORT` (port 3478 by default; repeatable; round-robin).
    #[arg(long = "alternate-server")]
    pub alternate_server: Vec<String>,
    /// The same for Allocates over TLS (port 5349 by default).
    #[arg(long = "tls-alternate-server")]
    pub tls_alternate_server: Vec<String>,
    /// When Allocates go to an alternate server: `always` (as coturn) or `when-full` (only
    /// those the total quota or a drain would refuse). Default: always.
    #[arg(long)]
    pub redirect: Option<Redirect>,
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
    /// Do not listen on DTLS (UDP on tls-listening-port).
    #[arg(long)]
    pub no_dtls: bool,
    /// User to switch to after binding ports, when started as root.
    #[arg(long)]
    pub proc_user: Option<String>,
    /// Group to switch to after binding ports, when started as root.
    #[arg(long)]
    pub proc_group: Option<String>,
}
