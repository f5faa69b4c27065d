//! The TURN REST API credential scheme, as coturn implements `use-auth-secret`.
//!
//! A credential is minted by whoever holds the shared secret (icegate-signal, or any web
//! service): the username is `EXPIRY[:USER]` with `EXPIRY` a Unix time in seconds, and the
//! password is `base64(HMAC-SHA1(secret, username))`. The relay recomputes the password from
//! the username, so it needs no user database; several secrets may be valid at once so that
//! a secret can be rotated without cutting off credentials already handed out.

use base64::Engine;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

type HmacSha1 = Hmac<sha1::Sha1>;

/// The character between the expiry time and the user id, as in coturn's default.
pub const SEPARATOR: char = ':';

/// A shared secret. Its `Debug` output never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A parsed TURN REST username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Unix time (seconds) after which the credential is no longer valid.
    pub expiry_unix: u64,
    /// The user id after the separator, if any.
    pub user: Option<&'a str>,
}

impl<'a> RestUsername<'a> {
    /// Parses `EXPIRY`, `EXPIRY:USER` or, as coturn also accepts, `USER:EXPIRY`.
    ///
    /// Returns `None` when no part is a decimal timestamp.
    pub fn parse(username: &'a str) -> Option<Self> {
        fn timestamp(s: &str) -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        match username.split_once(SEPARATOR) {
            None => timestamp(username).map(|expiry_unix| Self {
                expiry_unix,
                user: None,
            }),
            Some((first, rest)) => {
                if let Some(expiry_unix) = timestamp(first) {
                    return Some(Self {
                        expiry_unix,
                        user: Some(rest),
                    });
                }
                let (user, last) = username.rsplit_once(SEPARATOR)?;
                timestamp(last).map(|expiry_unix| Self {
                    expiry_unix,
                    user: Some(user),
                })
            }
        }
    }

    /// Whether the credential has expired at `now_unix`.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expiry_unix < now_unix
    }
}

/// The password for `username` under `secret`: `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &Secret, username: &str) -> String {
    let mut mac = HmacSha1::new_from_slice(secret.expose()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A freshly minted credential.
#[derive(Clone, PartialEq, Eq)]
pub struct RestCredential {
    /// `EXPIRY:USER`, or `EXPIRY` without a user.
    pub username: String,
    /// The password derived from the username.
    pub password: String,
    /// The expiry as a Unix time in seconds.
    pub expiry_unix: u64,
}

impl std::fmt::Debug for RestCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCredential")
            .field("username", &self.username)
            .field("password", &"***")
            .field("expiry_unix", &self.expiry_unix)
            .finish()
    }
}

/// Mints a credential for `user` valid for `ttl_secs` from `now_unix`.
pub fn issue(secret: &Secret, user: Option<&str>, now_unix: u64, ttl_secs: u64) -> RestCredential {
    let expiry_unix = now_unix.saturating_add(ttl_secs);
    let username = match user {
        Some(user) => format!("{expiry_unix}{SEPARATOR}{user}"),
        None => expiry_unix.to_string(),
    };
    let password = rest_password(secret, &username);
    RestCredential {
        username,
        password,
        expiry_unix,
    }
}

/// Why a REST credential was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestError {
    /// The username is not in the `EXPIRY[:USER]` form.
    Malformed,
    /// The expiry time has passed.
    Expired,
    /// No configured secret produces this password.
    BadPassword,
}

/// Checks `password` for `username` against every secret, in constant time per secret.
pub fn verify(
    secrets: &[Secret],
    username: &str,
    password: &str,
    now_unix: u64,
) -> Result<(), RestError> {
    let parsed = RestUsername::parse(username).ok_or(RestError::Malformed)?;
    if parsed.is_expired(now_unix) {
        return Err(RestError::Expired);
    }
    let mut matched = subtle::Choice::from(0);
    // Every secret is tried, so the time taken does not say which one matched.
    for secret in secrets {
        let expected = rest_password(secret, username);
        matched |= expected.as_bytes().ct_eq(password.as_bytes());
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(RestError::BadPassword)
    }
}

/// Reads a secret kept in a file of its own: the whole file, without surrounding whitespace
/// (so the newline `openssl rand -hex 32 >FILE` ends it with is not part of the secret).
/// Errors never quote the file's content.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("{}: cannot read: {error}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    // One secret per file: a second line is more likely a mistake than a second secret.
    if secret.contains(['\n', '\r']) {
        return Err(format!(
            "{}: the file must hold one secret on one line",
            path.display()
        ));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_coturn_reference() {
        // Computed with: printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
        let secret = Secret::new("secret");
        assert_eq!(
            rest_password(&secret, "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn parses_all_username_forms() {
        assert_eq!(
            RestUsername::parse("1700000000:alice"),
            Some(RestUsername {
                expiry_unix: 1_700_000_000,
                user: Some("alice")
            })
        );
        assert_eq!(
            RestUsername::parse("alice:1700000000"),
            Some(RestUsername {
                expiry_unix: 1_700_000_000,
                user: Some("alice")
            })
        );
        assert_eq!(
            RestUsername::parse("1700000000"),
            Some(RestUsername {
                expiry_unix: 1_700_000_000,
                user: None
            })
        );
        assert_eq!(
            RestUsername::parse("1700000000:a:b"),
            Some(RestUsername {
                expiry_unix: 1_700_000_000,
                user: Some("a:b")
            })
        );
        assert_eq!(RestUsername::parse("alice"), None);
        assert_eq!(RestUsername::parse(""), None);
        assert_eq!(RestUsername::parse("99999999999999999999999:x"), None);
    }

    #[test]
    fn verify_accepts_any_configured_secret_and_rejects_the_rest() {
        let old = Secret::new("old");
        let new = Secret::new("new");
        let cred = issue(&old, Some("bob"), 1_000, 60);
        assert_eq!(cred.username, "1060:bob");
        let both = [new.clone(), old.clone()];
        assert_eq!(verify(&both, &cred.username, &cred.password, 1_000), Ok(()));
        assert_eq!(
            verify(&[new], &cred.username, &cred.password, 1_000),
            Err(RestError::BadPassword)
        );
        assert_eq!(
            verify(&both, &cred.username, &cred.password, 1_061),
            Err(RestError::Expired)
        );
        assert_eq!(
            verify(&both, "bob", &cred.password, 1_000),
            Err(RestError::Malformed)
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let cred = issue(&Secret::new("topsecret"), None, 0, 1);
        let shown = format!("{:?} {:?}", Secret::new("topsecret"), cred);
        assert!(!shown.contains("topsecret"));
        assert!(!shown.contains(&cred.password));
    }
}
