//! Who may allocate: static users and TURN REST API secrets.

use std::collections::HashMap;

use icegate_common::credentials::{self, RestUsername, Secret};

use crate::integrity::{KeyAlgorithm, LongTermKey};
use crate::metrics::AuthFailure;

/// The users and REST secrets the relay accepts. Reloadable as a whole.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, Secret>,
    rest_secrets: Vec<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("rest_secrets", &self.rest_secrets.len())
            .finish()
    }
}

/// What `--check-config` prints: the static users by name and how many REST secrets, never a
/// password or a secret.
impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        let secrets = self.rest_secrets.len();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(f, "{} static user{}", names.len(), plural(names.len()))?;
        if !names.is_empty() {
            write!(f, " ({})", names.join(", "))?;
        }
        write!(f, ", {secrets} REST secret{}", plural(secrets))
    }
}

impl Credentials {
    /// No users, no secrets: every request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a static user.
    pub fn add_user(&mut self, name: impl Into<String>, password: impl Into<Vec<u8>>) {
        self.users.insert(name.into(), Secret::new(password));
    }

    /// Adds a TURN REST API shared secret; several may be valid at once during rotation.
    pub fn add_rest_secret(&mut self, secret: Secret) {
        self.rest_secrets.push(secret);
    }

    /// Whether any user or secret is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.rest_secrets.is_empty()
    }

    /// Whom an allocation of `username` counts against for `user-quota`: the user, not the
    /// credential.
    ///
    /// A static user is itself. A TURN REST username (`EXPIRY:USER` or `USER:EXPIRY`) is its
    /// `USER`, so that one user cannot multiply the quota by asking for a fresh credential a
    /// second later. A REST username without a user (`EXPIRY`, or an empty `USER`) names no
    /// one but itself, so it is counted as itself. Static users take precedence, as in
    /// [`Self::candidate_keys`], so a static user and a REST user of the same name share one
    /// count.
    pub fn quota_key<'a>(&self, username: &'a str) -> &'a str {
        if self.users.contains_key(username) || self.rest_secrets.is_empty() {
            return username;
        }
        match RestUsername::parse(username) {
            Some(RestUsername {
                user: Some(user), ..
            }) if !user.is_empty() => user,
            _ => username,
        }
    }

    /// The keys a request from `username` may be signed with: one for a static user, one per
    /// REST secret for an ephemeral username. Static users take precedence, as in coturn.
    pub fn candidate_keys(
        &self,
        username: &str,
        realm: &str,
        algorithm: KeyAlgorithm,
        now_unix: u64,
    ) -> Result<Vec<LongTermKey>, AuthFailure> {
        if let Some(password) = self.users.get(username) {
            let password = String::from_utf8_lossy(password.expose());
            return Ok(vec![LongTermKey::derive(
                algorithm, username, realm, &password,
            )]);
        }
        if self.rest_secrets.is_empty() {
            return Err(AuthFailure::UnknownUser);
        }
        let parsed = RestUsername::parse(username).ok_or(AuthFailure::UnknownUser)?;
        if parsed.is_expired(now_unix) {
            return Err(AuthFailure::ExpiredCredential);
        }
        Ok(self
            .rest_secrets
            .iter()
            .map(|secret| {
                let password = credentials::rest_password(secret, username);
                LongTermKey::derive(algorithm, username, realm, &password)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_users_and_counts_secrets_without_showing_them() {
        let mut c = Credentials::new();
        assert_eq!(c.to_string(), "0 static users, 0 REST secrets");
        c.add_user("bob", "pw-b");
        c.add_user("alice", "pw-a");
        c.add_rest_secret(Secret::new("s3cr3t"));
        let text = c.to_string();
        assert_eq!(text, "2 static users (alice, bob), 1 REST secret");
        assert!(!text.contains("pw-") && !text.contains("s3cr3t"));
    }

    #[test]
    fn static_user_and_rest_keys() {
        let mut creds = Credentials::new();
        creds.add_user("alice", "pw");
        creds.add_rest_secret(Secret::new("s1"));
        creds.add_rest_secret(Secret::new("s2"));
        let keys = creds
            .candidate_keys("alice", "r", KeyAlgorithm::Md5, 0)
            .unwrap();
        assert_eq!(
            keys,
            vec![LongTermKey::derive(KeyAlgorithm::Md5, "alice", "r", "pw")]
        );
        let rest = credentials::issue(&Secret::new("s2"), Some("bob"), 100, 10);
        let keys = creds
            .candidate_keys(&rest.username, "r", KeyAlgorithm::Md5, 105)
            .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&LongTermKey::derive(
            KeyAlgorithm::Md5,
            &rest.username,
            "r",
            &rest.password
        )));
        assert_eq!(
            creds.candidate_keys(&rest.username, "r", KeyAlgorithm::Md5, 111),
            Err(AuthFailure::ExpiredCredential)
        );
        assert_eq!(
            creds.candidate_keys("mallory", "r", KeyAlgorithm::Md5, 0),
            Err(AuthFailure::UnknownUser)
        );
    }

    #[test]
    fn the_quota_key_of_a_rest_username_is_its_user() {
        let mut creds = Credentials::new();
        creds.add_user("alice", "pw");
        creds.add_user("1700000000:static", "pw");
        // Without REST secrets a username is only ever a static user's (or unknown).
        assert_eq!(creds.quota_key("1700000000:bob"), "1700000000:bob");
        creds.add_rest_secret(Secret::new("s1"));
        assert_eq!(creds.quota_key("alice"), "alice");
        // Both orders coturn accepts, and a user id with the separator in it.
        assert_eq!(creds.quota_key("1700000000:bob"), "bob");
        assert_eq!(creds.quota_key("1700000001:bob"), "bob");
        assert_eq!(creds.quota_key("bob:1700000002"), "bob");
        assert_eq!(creds.quota_key("1700000000:a:b"), "a:b");
        assert_eq!(creds.quota_key("a:b:1700000000"), "a:b");
        // No user in the username: the credential is all there is to count.
        assert_eq!(creds.quota_key("1700000000"), "1700000000");
        assert_eq!(creds.quota_key("1700000000:"), "1700000000:");
        // A static user whose name looks like a REST username stays itself.
        assert_eq!(creds.quota_key("1700000000:static"), "1700000000:static");
        // Not a REST username at all (it fails authentication anyway).
        assert_eq!(creds.quota_key("mallory"), "mallory");
    }

    #[test]
    fn debug_output_hides_passwords() {
        let mut creds = Credentials::new();
        creds.add_user("alice", "hunter2");
        creds.add_rest_secret(Secret::new("topsecret"));
        let shown = format!("{creds:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2") && !shown.contains("topsecret"));
    }
}
