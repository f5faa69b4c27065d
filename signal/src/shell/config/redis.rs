//! `redis-url`: the Redis (7 or later) or Valkey server that joins several icegate-signal
//! processes into one cluster.

use icegate_common::config::{pick, ConfigError};
use redis::IntoConnectionInfo;

use super::cli::{Cli, FileConfig};
use super::merge::Invalid;

/// A checked `redis://` URL (`redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`), which may hold a
/// password: print [`RedisUrl::redacted`], never the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Checks `text` the way the Redis client will read it.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let scheme = text.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "valkey")) {
            // rediss:// (TLS) would need the client's TLS support, which is not built in.
            return Err("must be a redis:// or valkey:// URL".into());
        }
        text.into_connection_info()
            .map_err(|error| format!("not a usable Redis URL: {error}"))?;
        Ok(RedisUrl(text.to_owned()))
    }

    /// The URL, for the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and summaries.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
            }
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `redis-url`, when set.
pub(super) fn redis_url(
    cli: &Cli,
    f: &FileConfig,
    invalid: Invalid<'_>,
) -> Result<Option<RedisUrl>, ConfigError> {
    match pick(cli.redis_url.clone(), f.redis_url.clone()) {
        (Some(text), from_cli) => RedisUrl::parse(&text)
            // The message never repeats the URL: it may hold a password.
            .map(Some)
            .map_err(|message| invalid(from_cli, "redis-url", message)),
        (None, _) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        let url = RedisUrl::parse("redis://:s3cret@10.0.0.5:6380/2").unwrap();
        assert_eq!(url.redacted(), "redis://:***@10.0.0.5:6380/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        let url = RedisUrl::parse("redis://icegate:pw@redis.example").unwrap();
        assert_eq!(url.redacted(), "redis://icegate:***@redis.example");
        let url = RedisUrl::parse("valkey://127.0.0.1").unwrap();
        assert_eq!(url.redacted(), "valkey://127.0.0.1");
        for bad in [
            "127.0.0.1:6379",
            "http://127.0.0.1",
            "rediss://h",
            "redis://h:notaport",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
