//! The TOML file, as parsed: every value optional, nothing checked yet.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use icegate_common::logging::LogFormat;
use serde::Deserialize;

/// The TOML file. Keys are the flags' long names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub(super) listening_ip: Option<Vec<IpAddr>>,
    pub(super) listening_port: Option<u16>,
    pub(super) tls_listening_port: Option<u16>,
    pub(super) alt_listening_port: Option<u16>,
    pub(super) no_rfc5780: Option<bool>,
    pub(super) no_tcp_relay: Option<bool>,
    pub(super) relay_ip: Option<Vec<IpAddr>>,
    pub(super) external_ip: Option<Vec<String>>,
    pub(super) min_port: Option<u16>,
    pub(super) max_port: Option<u16>,
    pub(super) realm: Option<String>,
    pub(super) user: Option<Vec<String>>,
    pub(super) use_auth_secret: Option<bool>,
    pub(super) static_auth_secret: Option<Vec<String>>,
    pub(super) static_auth_secret_file: Option<PathBuf>,
    pub(super) user_quota: Option<u32>,
    pub(super) total_quota: Option<u32>,
    pub(super) max_bps: Option<u64>,
    pub(super) alternate_server: Option<Vec<String>>,
    pub(super) tls_alternate_server: Option<Vec<String>>,
    pub(super) redirect: Option<super::Redirect>,
    pub(super) allow_loopback_peers: Option<bool>,
    pub(super) denied_peer_ip: Option<Vec<String>>,
    pub(super) allowed_peer_ip: Option<Vec<String>>,
    pub(super) cert: Option<PathBuf>,
    pub(super) pkey: Option<PathBuf>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) workers: Option<usize>,
    pub(super) stale_nonce: Option<u64>,
    pub(super) lifetime_max: Option<u64>,
    pub(super) drain_timeout: Option<u64>,
    pub(super) rate_limit: Option<u32>,
    pub(super) max_connections_per_ip: Option<u32>,
    pub(super) max_connections: Option<u32>,
    pub(super) stream_frame_timeout: Option<u64>,
    pub(super) stream_idle_timeout: Option<u64>,
    pub(super) no_udp: Option<bool>,
    pub(super) no_tcp: Option<bool>,
    pub(super) no_tls: Option<bool>,
    pub(super) no_dtls: Option<bool>,
    pub(super) process: Option<ProcessConfig>,
}

/// `[process]`: whom to run as after binding privileged ports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
}
