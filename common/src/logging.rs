//! Logs go to stderr so that stdout stays free for anything a binary prints on purpose, and so
//! that systemd's journal or a container runtime picks them up without configuration.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The environment variable whose filter, when set, replaces the default one.
const FILTER_VARIABLE: &str = "RUST_LOG";

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The name used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`, expected `text` or `json`")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// A filter directive string does not parse.
    #[error("invalid log filter in {origin} `{value}`: {source}")]
    InvalidFilter {
        /// Where the filter came from: `RUST_LOG` or the default.
        origin: &'static str,
        /// The filter as given.
        value: String,
        /// What the parser said.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// `RUST_LOG` is set but is not valid Unicode.
    #[error("invalid log filter in RUST_LOG: not valid Unicode")]
    NotUnicode,
    /// A global subscriber (or `log` logger) was already installed, e.g. by an earlier call.
    #[error("logging is already initialised: {0}")]
    AlreadyInitialized(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Installs a global stderr subscriber; `RUST_LOG`, when set, overrides `default_filter`.
///
/// A second call returns [`LoggingError::AlreadyInitialized`] and leaves the first setup in place.
pub fn init(format: LogFormat, default_filter: &str) -> Result<(), LoggingError> {
    let from_env = match std::env::var(FILTER_VARIABLE) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(LoggingError::NotUnicode),
    };
    let filter = build_filter(from_env.as_deref(), default_filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        // Escape codes in a file or the journal are noise, so colour only a terminal.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(LoggingError::AlreadyInitialized)
}

/// Chooses and parses the filter; an empty `RUST_LOG` counts as unset, as it does for most tools.
fn build_filter(from_env: Option<&str>, default_filter: &str) -> Result<EnvFilter, LoggingError> {
    let (origin, value) = match from_env {
        Some(value) if !value.trim().is_empty() => (FILTER_VARIABLE, value),
        _ => ("the default", default_filter),
    };
    EnvFilter::try_new(value).map_err(|source| LoggingError::InvalidFilter {
        origin,
        value: value.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.to_string().parse::<LogFormat>(), Ok(format));
        }
        assert_eq!(
            "JSON".parse::<LogFormat>(),
            Err(UnknownLogFormat("JSON".into()))
        );
    }

    #[test]
    fn format_deserializes_lowercase() {
        #[derive(serde::Deserialize)]
        struct Logging {
            format: LogFormat,
        }
        let parsed: Logging = toml::from_str("format = \"json\"").unwrap();
        assert_eq!(parsed.format, LogFormat::Json);
        assert!(toml::from_str::<Logging>("format = \"Json\"").is_err());
    }

    #[test]
    fn environment_overrides_default() {
        let filter = build_filter(Some("icegate=trace"), "info").unwrap();
        assert_eq!(filter.to_string(), "icegate=trace");
        let filter = build_filter(None, "info").unwrap();
        assert_eq!(filter.to_string(), "info");
        let filter = build_filter(Some("  "), "warn").unwrap();
        assert_eq!(filter.to_string(), "warn");
    }

    #[test]
    fn bad_filter_says_where_it_came_from() {
        let err = build_filter(Some("icegate=loud"), "info").unwrap_err();
        assert!(err.to_string().contains("RUST_LOG `icegate=loud`"), "{err}");
        let err = build_filter(None, "=][").unwrap_err();
        assert!(err.to_string().contains("the default"), "{err}");
    }

    #[test]
    fn second_init_is_an_error_not_a_panic() {
        // Other tests in this process may have installed a subscriber first, so only the
        // second call's outcome is certain.
        let _ = init(LogFormat::Text, "info");
        assert!(matches!(
            init(LogFormat::Json, "info"),
            Err(LoggingError::AlreadyInitialized(_))
        ));
    }
}
