//! The flags over the file, checked, into [`Settings`]: one helper per section, called in the
//! order their errors have always been reported. An error names the flag when the value came
//! from the command line, else the file and its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use icegate_common::config::{pick, pick_vec, ConfigError};
use icegate_common::credentials::{self, Secret};
use icegate_signal_proto::auth::{Authenticator, KeyError};
use icegate_signal_proto::hub::HubConfig;
use icegate_signal_proto::ice::{self, IceConfigError, Relay};
use icegate_signal_proto::limits::Limits;
use icegate_signal_proto::origin::AllowedOrigins;

use super::asterisk::asterisk;
use super::cli::{Cli, FileConfig};
use super::redis::redis_url;
use super::{
    Keys, Settings, TlsMode, DEFAULT_CREDENTIAL_TTL, DEFAULT_HEALTH_GRACE, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_LISTEN,
};

/// Builds the error about `key`: `true` for a value from the command line, `false` for one
/// from the file.
pub(super) type Invalid<'a> = &'a dyn Fn(bool, &str, String) -> ConfigError;

pub(super) fn merge(
    cli: &Cli,
    f: FileConfig,
    path: Option<&Path>,
) -> Result<Settings, ConfigError> {
    let invalid = |from_cli: bool, key: &str, message: String| {
        ConfigError::invalid(if from_cli { None } else { path }, key, message)
    };

    let asterisk = asterisk(cli, &f, &invalid)?;
    let (listen, tls) = listener(cli, &f, path, &invalid)?;
    let (auth, anonymous) = authentication(cli, &f, listen, path, &invalid)?;
    let (origins, origins_cli) = pick_vec(&cli.allowed_origins, f.allowed_origins.clone());
    let allowed_origins = AllowedOrigins::parse(&origins)
        .map_err(|error| invalid(origins_cli, "allowed-origins", error.to_string()))?;
    let (turn_secret, relays) = relays(cli, &f, &invalid)?;
    let timers = timers(cli, &f, &invalid)?;
    let limits = limits(cli, &f, timers.idle, &invalid)?;
    let redis_url = redis_url(cli, &f, &invalid)?;

    Ok(Settings {
        listen,
        tls,
        keys: Keys { auth, turn_secret },
        relays,
        health_interval: Duration::from_secs(timers.health_interval),
        health_grace: Duration::from_secs(timers.health_grace),
        credential_ttl: timers.credential_ttl,
        anonymous,
        allowed_origins,
        metrics_listen: pick(cli.metrics_listen, f.metrics_listen).0,
        log_format: pick(cli.log_format, f.log_format).0.unwrap_or_default(),
        hub: HubConfig {
            max_sessions_per_user: limits.max_sessions_per_user,
            ring_timeout: Duration::from_secs(timers.ring),
            pbx: asterisk.is_some(),
            ..HubConfig::default()
        },
        limits,
        asterisk,
        redis_url,
    })
}

/// `listen`, and TLS from `cert`, `pkey`, `plain-http` and `state-dir`.
fn listener(
    cli: &Cli,
    f: &FileConfig,
    path: Option<&Path>,
    invalid: Invalid<'_>,
) -> Result<(SocketAddr, TlsMode), ConfigError> {
    let (listen, listen_cli) = pick(cli.listen, f.listen);
    let listen =
        listen.unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("the default address parses"));
    let (cert, cert_cli) = pick(cli.cert.clone(), f.cert.clone());
    let (key, key_cli) = pick(cli.pkey.clone(), f.pkey.clone());
    let plain = cli.plain_http || f.plain_http.unwrap_or(false);
    let state_dir = pick(cli.state_dir.clone(), f.state_dir.clone())
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
    Ok((listen, tls))
}

/// How clients authenticate: `jwt-secret`, `jwt-public-key`, `anonymous`,
/// `anonymous-public`; and whether anonymous clients are let in.
fn authentication(
    cli: &Cli,
    f: &FileConfig,
    listen: SocketAddr,
    path: Option<&Path>,
    invalid: Invalid<'_>,
) -> Result<(Authenticator, bool), ConfigError> {
    let (jwt_secret, jwt_cli) = pick(cli.jwt_secret.clone(), f.jwt_secret.clone());
    let (public_key, public_cli) = pick(cli.jwt_public_key.clone(), f.jwt_public_key.clone());
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
        KeyError::EmptySecret => invalid(jwt_cli, "jwt-secret", error.to_string()),
        KeyError::BadPublicKey | KeyError::UnsupportedCurve => invalid(
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
    Ok((auth, anonymous))
}

/// The TURN REST secret (`static-auth-secret` or `static-auth-secret-file`) and the relays
/// handed out (`relay`, `relay-health`).
fn relays(
    cli: &Cli,
    f: &FileConfig,
    invalid: Invalid<'_>,
) -> Result<(Option<Secret>, Vec<Relay>), ConfigError> {
    let (secret, secret_cli) = pick(cli.static_auth_secret.clone(), f.static_auth_secret.clone());
    if secret.as_deref() == Some("") {
        return Err(invalid(
            secret_cli,
            "static-auth-secret",
            "empty secret".into(),
        ));
    }
    let (secret_file, secret_file_cli) = pick(
        cli.static_auth_secret_file.clone(),
        f.static_auth_secret_file.clone(),
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
    let (uris, uris_cli) = pick_vec(&cli.relay, f.relay.clone());
    let (health, health_cli) = pick_vec(&cli.relay_health, f.relay_health.clone());
    let relays =
        ice::group_relays(&uris, &health, turn_secret.is_some()).map_err(|error| match error {
            IceConfigError::BadUri(_) => invalid(uris_cli, "relay", error.to_string()),
            IceConfigError::NoSecret => {
                invalid(secret_cli, "static-auth-secret", error.to_string())
            }
            _ => invalid(health_cli, "relay-health", error.to_string()),
        })?;
    Ok((turn_secret, relays))
}

/// The timers, in seconds.
struct Timers {
    health_interval: u64,
    health_grace: u64,
    credential_ttl: u64,
    idle: u64,
    ring: u64,
}

/// A setting that must be at least 1 when given.
fn positive(
    value: (Option<u64>, bool),
    key: &str,
    default: u64,
    invalid: Invalid<'_>,
) -> Result<u64, ConfigError> {
    match value {
        (Some(0), from_cli) => Err(invalid(from_cli, key, "must be at least 1".into())),
        (value, _) => Ok(value.unwrap_or(default)),
    }
}

/// `relay-health-interval`, `relay-health-grace`, `credential-ttl`, `idle-timeout`,
/// `ring-timeout`.
fn timers(cli: &Cli, f: &FileConfig, invalid: Invalid<'_>) -> Result<Timers, ConfigError> {
    let health_interval = positive(
        pick(cli.relay_health_interval, f.relay_health_interval),
        "relay-health-interval",
        DEFAULT_HEALTH_INTERVAL,
        invalid,
    )?;
    let health_grace = pick(cli.relay_health_grace, f.relay_health_grace)
        .0
        .unwrap_or(DEFAULT_HEALTH_GRACE);
    let credential_ttl = positive(
        pick(cli.credential_ttl, f.credential_ttl),
        "credential-ttl",
        DEFAULT_CREDENTIAL_TTL,
        invalid,
    )?;
    let idle = positive(
        pick(cli.idle_timeout, f.idle_timeout),
        "idle-timeout",
        Limits::default().idle_timeout.as_secs(),
        invalid,
    )?;
    let ring = positive(
        pick(cli.ring_timeout, f.ring_timeout),
        "ring-timeout",
        HubConfig::default().ring_timeout.as_secs(),
        invalid,
    )?;
    Ok(Timers {
        health_interval,
        health_grace,
        credential_ttl,
        idle,
        ring,
    })
}

/// What one client may consume: `max-message-rate`, `max-sdp-bytes`,
/// `max-connections-per-ip`, `max-sessions-per-user`; `idle` seconds of idle timeout.
fn limits(
    cli: &Cli,
    f: &FileConfig,
    idle: u64,
    invalid: Invalid<'_>,
) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
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
    Ok(Limits {
        messages_per_sec: rate,
        message_burst: rate.saturating_mul(2),
        max_sdp_bytes,
        max_connections_per_ip: per_ip.unwrap_or(defaults.max_connections_per_ip),
        max_sessions_per_user: per_user.unwrap_or(defaults.max_sessions_per_user),
        idle_timeout: Duration::from_secs(idle),
        ..defaults
    })
}
