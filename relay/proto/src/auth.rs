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
    fn debug_output_hides_passwords() {
        let mut creds = Credentials::new();
        creds.add_user("alice", "hunter2");
        creds.add_rest_secret(Secret::new("topsecret"));
        let shown = format!("{creds:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("hunter2") && !shown.contains("topsecret"));
    }
}
