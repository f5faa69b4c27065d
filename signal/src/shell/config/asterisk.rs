//! The Asterisk gateway's settings (`asterisk-*`, `candidate-gather-timeout`) and the URLs
//! they are given as.

use std::path::PathBuf;
use std::time::Duration;

use icegate_common::config::{pick, ConfigError};
use icegate_common::credentials::Secret;
use icegate_signal_asterisk::ari::controller::Routing;

use super::cli::{Cli, FileConfig};
use super::merge::Invalid;

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

/// The `asterisk-*` keys: all or nothing, decided by `asterisk-sip-ws`.
pub(super) fn asterisk(
    cli: &Cli,
    f: &FileConfig,
    invalid: Invalid<'_>,
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
