//! What icegate-relay and icegate-signal share.
//!
//! Without the default `runtime` feature only [`credentials`], [`collections`],
//! [`token_bucket`] and [`clock`] are built, so the sans-IO cores can depend on this crate
//! without pulling in tokio.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod collections;
pub mod credentials;
pub mod token_bucket;

/// Loading the TOML configuration files, with errors that name the file and key.
#[cfg(feature = "runtime")]
pub mod config;

/// Setting up `tracing` output (text or JSON) on stderr.
#[cfg(feature = "runtime")]
pub mod logging;

/// The HTTP listener for Prometheus metrics and health probes.
#[cfg(feature = "runtime")]
pub mod metrics_http;

/// SIGHUP, SIGTERM and SIGINT as reload and terminate requests.
#[cfg(feature = "runtime")]
pub mod signals;

/// systemd notifications: readiness, reload, stop, status and watchdog.
#[cfg(feature = "runtime")]
pub mod systemd;

/// TLS server setup: PEM loading, reloadable certificates, self-signed certificates.
#[cfg(feature = "runtime")]
pub mod tls;

/// A server-side TLS stream that holds no buffer while idle (rustls's unbuffered API).
#[cfg(feature = "runtime")]
pub mod tls_stream;
