//! Which web pages may use the server: the browser's `Origin` on a WebSocket upgrade or a
//! CORS request, against the server's own origins and those of `allowed-origins`.
//!
//! A browser lets any page open a WebSocket to any server and sends the page's origin along;
//! without this check a page on another site could use a visitor's connection (and, in
//! anonymous mode, hand out TURN credentials to anyone's page). Clients that are not browsers
//! send no `Origin` and are not concerned.
//!
//! Origins are compared in their ASCII serialization (RFC 6454 §6.2):
//! `scheme "://" host [ ":" port ]`, scheme and host in lower case, the port left out when it
//! is the scheme's default, never a path.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Why an `allowed-origins` entry (or an `Origin` header) is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// Not `http://` or `https://`.
    #[error("{0:?}: an origin starts with http:// or https://")]
    Scheme(String),
    /// Something after the authority: browsers never send a path, not even `/`.
    #[error("{0:?}: an origin has no path, not even a final /: write it as SCHEME://HOST[:PORT]")]
    Path(String),
    /// No host, or characters a host name cannot have.
    #[error("{0:?}: the host must be a DNS name (letters, digits, '.', '-'), an IPv4 address or a bracketed IPv6 address")]
    Host(String),
    /// A wildcard in a host name, which is not supported.
    #[error("{0:?}: wildcards in host names are not supported: list each origin, or \"*\" alone for any")]
    Wildcard(String),
    /// A port that is not 1 to 65535.
    #[error("{0:?}: the port must be 1 to 65535")]
    Port(String),
    /// `*` together with other entries.
    #[error("\"*\" allows every origin: give it alone")]
    StarWithOthers,
}

/// The `allowed-origins` setting, checked: every origin, or these (normalized) ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    any: bool,
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// Checks and normalizes the entries; `["*"]` allows every origin.
    pub fn parse(entries: &[String]) -> Result<Self, OriginError> {
        if entries.iter().any(|entry| entry.trim() == "*") {
            return if entries.len() == 1 {
                Ok(AllowedOrigins {
                    any: true,
                    origins: Vec::new(),
                })
            } else {
                Err(OriginError::StarWithOthers)
            };
        }
        let mut origins = Vec::new();
        for entry in entries {
            let origin = normalize(entry.trim())?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(AllowedOrigins {
            any: false,
            origins,
        })
    }

    /// Whether `*` was given.
    pub fn any(&self) -> bool {
        self.any
    }

    /// The listed origins, normalized, in configuration order.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }
}

/// Decides about one request's `Origin`: the server's own origins and the configured ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    allowed: BTreeSet<String>,
}

impl OriginPolicy {
    /// The server's own origins (see [`own_origins`]) plus `configured`.
    pub fn new(own: Vec<String>, configured: &AllowedOrigins) -> Self {
        let mut allowed: BTreeSet<String> = own.into_iter().collect();
        allowed.extend(configured.origins.iter().cloned());
        OriginPolicy {
            any: configured.any,
            allowed,
        }
    }

    /// Whether a request whose `Origin` header is `header` may go on. `None` (no header: not a
    /// browser) always may; a header that is not a valid origin (including `null`, which
    /// browsers send for `file:` pages and sandboxed frames) only with `*`.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else {
            return true;
        };
        if self.any {
            return true;
        }
        std::str::from_utf8(header)
            .ok()
            .and_then(|text| normalize(text).ok())
            .is_some_and(|origin| self.allowed.contains(&origin))
    }

    /// Whether `*` was configured.
    pub fn any(&self) -> bool {
        self.any
    }

    /// Every allowed origin, sorted (empty with `*`).
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }
}

/// The origins of pages the server itself serves at `listen`: scheme `https` with TLS, else
/// `http`; as hosts the listen IP (for an unspecified address `0.0.0.0` or `::`: `localhost`,
/// `127.0.0.1` and `[::1]`) and every DNS name of the TLS certificate except wildcard
/// names; the listen port, left out when it is the scheme's default (443, 80).
pub fn own_origins(listen: SocketAddr, tls: bool, cert_dns_names: &[String]) -> Vec<String> {
    let scheme = if tls { "https" } else { "http" };
    let mut hosts: Vec<String> = if listen.ip().is_unspecified() {
        vec![
            "localhost".into(),
            "127.0.0.1".into(),
            format!("[{}]", Ipv6Addr::LOCALHOST),
        ]
    } else {
        vec![host_of(listen.ip())]
    };
    for name in cert_dns_names {
        // A name that is no valid host (or a wildcard) cannot be any page's origin exactly.
        if let Ok(origin) = normalize(&format!("{scheme}://{name}")) {
            let host = origin[scheme.len() + 3..].to_string();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    let port = if listen.port() == default_port(scheme) {
        String::new()
    } else {
        format!(":{}", listen.port())
    };
    hosts
        .into_iter()
        .map(|host| format!("{scheme}://{host}{port}"))
        .collect()
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The ASCII serialization of `text` as an origin, or why it is none.
pub fn normalize(text: &str) -> Result<String, OriginError> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| OriginError::Scheme(text.into()))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(OriginError::Scheme(text.into()));
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(OriginError::Path(text.into()));
    }
    // A bracketed IPv6 host contains colons of its own: the port follows the bracket.
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (address, after) = inner
            .split_once(']')
            .ok_or_else(|| OriginError::Host(text.into()))?;
        let address: Ipv6Addr = address
            .parse()
            .map_err(|_| OriginError::Host(text.into()))?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| OriginError::Host(text.into()))?,
            ),
        };
        (format!("[{address}]"), port)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        if host.contains('*') {
            return Err(OriginError::Wildcard(text.into()));
        }
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !host.starts_with(['.', '-']);
        if !valid {
            return Err(OriginError::Host(text.into()));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port != 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(port),
            _ => return Err(OriginError::Port(text.into())),
        },
    };
    Ok(match port {
        Some(port) if port != default_port(&scheme) => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins_are_normalized_as_browsers_send_them() {
        for (written, normal) in [
            ("https://App.Example.COM", "https://app.example.com"),
            ("HTTPS://app.example.com:443", "https://app.example.com"),
            ("http://app.example.com:80", "http://app.example.com"),
            ("http://app.example.com:443", "http://app.example.com:443"),
            ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://[0:0:0:0:0:0:0:1]", "https://[::1]"),
            ("http://localhost:3000", "http://localhost:3000"),
        ] {
            assert_eq!(normalize(written).as_deref(), Ok(normal), "{written}");
        }
        for bad in [
            "app.example.com",
            "ws://app.example.com",
            "null",
            "https://",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app example.com",
            "https://.example.com",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:+80",
            "https://app.example.com:",
            "https://[::1",
            "https://[nope]:1",
            "https://[::1]8443",
            "https://*.example.com",
        ] {
            assert!(normalize(bad).is_err(), "{bad} was accepted");
        }
        assert!(matches!(
            normalize("https://*.example.com"),
            Err(OriginError::Wildcard(_))
        ));
    }

    #[test]
    fn own_origins_follow_listen_tls_and_certificate() {
        let listen = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            own_origins(listen("127.0.0.1:8443"), true, &strings(&["localhost"])),
            strings(&["https://127.0.0.1:8443", "https://localhost:8443"])
        );
        assert_eq!(
            own_origins(listen("127.0.0.1:8080"), false, &[]),
            strings(&["http://127.0.0.1:8080"])
        );
        // Default ports are left out, as browsers leave them out.
        assert_eq!(
            own_origins(
                listen("0.0.0.0:443"),
                true,
                &strings(&[
                    "Signal.Example.com",
                    "*.example.com",
                    "localhost",
                    "bad name"
                ])
            ),
            strings(&[
                "https://localhost",
                "https://127.0.0.1",
                "https://[::1]",
                "https://signal.example.com",
            ])
        );
        assert_eq!(
            own_origins(listen("[::]:80"), false, &[]),
            strings(&["http://localhost", "http://127.0.0.1", "http://[::1]"])
        );
        assert_eq!(
            own_origins(listen("[2001:db8::5]:8443"), true, &[]),
            strings(&["https://[2001:db8::5]:8443"])
        );
    }

    #[test]
    fn policy_allows_own_and_configured_origins_and_clients_without_origin() {
        let configured = AllowedOrigins::parse(&strings(&[
            "https://app.example.com",
            " https://APP.example.com:443 ",
        ]))
        .unwrap();
        assert_eq!(configured.origins(), ["https://app.example.com"]);
        let policy = OriginPolicy::new(strings(&["https://127.0.0.1:8443"]), &configured);
        assert!(policy.allows(None));
        assert!(policy.allows(Some(b"https://127.0.0.1:8443")));
        assert!(policy.allows(Some(b"https://app.example.com")));
        assert!(policy.allows(Some(b"https://App.Example.com:443")));
        for refused in [
            &b"https://127.0.0.1:8444"[..],
            b"http://127.0.0.1:8443",
            b"https://evil.example.com",
            b"https://app.example.com.evil.example",
            b"null",
            b"",
            b"\xff",
        ] {
            assert!(!policy.allows(Some(refused)), "{refused:?}");
        }
        assert!(!policy.any());
        assert_eq!(
            policy.allowed().collect::<Vec<_>>(),
            ["https://127.0.0.1:8443", "https://app.example.com"]
        );
    }

    #[test]
    fn star_allows_everything_but_only_alone() {
        let any = AllowedOrigins::parse(&strings(&["*"])).unwrap();
        assert!(any.any());
        let policy = OriginPolicy::new(Vec::new(), &any);
        assert!(policy.allows(Some(b"https://evil.example.com")));
        assert!(policy.allows(Some(b"null")));
        assert_eq!(
            AllowedOrigins::parse(&strings(&["*", "https://a.example"])),
            Err(OriginError::StarWithOthers)
        );
        assert_eq!(AllowedOrigins::parse(&[]), Ok(AllowedOrigins::default()));
        assert!(AllowedOrigins::parse(&strings(&["https://a.example/"])).is_err());
    }
}
