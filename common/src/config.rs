//! An operator who gets a configuration error should not have to guess which file or which
//! setting is wrong, so every [`ConfigError`](crate::config::ConfigError) names the file (or
//! the command line) and, when it is known, the dotted key path of the offending setting.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration could not be loaded or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The configuration file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not fit the expected structure.
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The dotted key path of the offending setting, when it is known.
        key: Option<String>,
        /// 1-based line and column of the error, when it is known.
        position: Option<(usize, usize)>,
        /// What is wrong, without the location.
        message: String,
    },
    /// A setting parsed but its value is not acceptable.
    Invalid {
        /// The configuration file, or `None` when the value came from the command line.
        file: Option<PathBuf>,
        /// The dotted key path in the file, or the flag name on the command line.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

impl ConfigError {
    /// A semantic error found after parsing; `file: None` means the command line.
    ///
    /// For the command line, `key` is the flag's name, with or without its leading `--`.
    pub fn invalid(file: Option<&Path>, key: &str, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            file: file.map(Path::to_path_buf),
            key: key.to_owned(),
            message: message.to_string(),
        }
    }

    /// The file the error is about, or `None` for the command line.
    pub fn file(&self) -> Option<&Path> {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Parse { path, .. } => Some(path),
            ConfigError::Invalid { file, .. } => file.as_deref(),
        }
    }

    /// The dotted key path (or command-line flag) the error is about, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } => key.as_deref(),
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "{}: cannot read: {source}", path.display())
            }
            ConfigError::Parse {
                path,
                key,
                position,
                message,
            } => {
                write!(f, "{}: ", path.display())?;
                match (key, position) {
                    (Some(key), _) => write!(f, "key `{key}`: ")?,
                    // Syntax errors have no key; the position is then the only pointer.
                    (None, Some((line, column))) => write!(f, "line {line}, column {column}: ")?,
                    (None, None) => {}
                }
                f.write_str(message)
            }
            ConfigError::Invalid {
                file: Some(file),
                key,
                message,
            } => write!(f, "{}: key `{key}`: {message}", file.display()),
            ConfigError::Invalid {
                file: None,
                key,
                message,
            } => {
                let flag = key.trim_start_matches('-');
                write!(f, "command line: --{flag}: {message}")
            }
        }
    }
}

/// Reads `path` and deserializes it as TOML, reporting the key path of any error.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Deserializes `text` as if read from `path`; split out so tests need no files.
fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let parse_error = |key: Option<String>, error: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        position: error.span().map(|span| line_column(text, span.start)),
        // `message()` rather than `Display`: the latter repeats the source line in a
        // multi-line snippet, which reads badly inside a one-line log message.
        message: redact_strings(error.message().trim_end()),
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| parse_error(None, e))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        // An error at the document root has the path ".", which names nothing.
        let key = (key != ".").then_some(key);
        parse_error(key, e.into_inner())
    })
}

/// Replaces every double-quoted value in a parser message with `"…"`: serde quotes the
/// offending value (`invalid type: string "…", expected a sequence`), and that value may be
/// a password or a shared secret, which must never reach a log.
fn redact_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        match (c, inside) {
            ('"', false) => {
                out.push_str("\"…");
                inside = true;
            }
            ('"', true) => {
                out.push('"');
                inside = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary_compat(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `str::floor_char_boundary` is not stable on the minimum supported Rust version.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, index: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, index: usize) -> usize {
        let mut index = index.min(self.len());
        while !self.is_char_boundary(index) {
            index -= 1;
        }
        index
    }
}

/// What `--check-config` does for either binary, once the settings loaded: the configured
/// certificate and key must load too, then the summary goes to stdout. Returns the exit
/// status; errors go to stderr, prefixed with `program`.
pub fn check_config(
    program: &str,
    tls: Option<(&Path, &Path)>,
    summary: &str,
) -> std::process::ExitCode {
    use std::io::Write;
    if let Some((cert, key)) = tls {
        if let Err(error) = crate::tls::load_certified_key(cert, key) {
            eprintln!("{program}: configuration error: TLS: {error}");
            return std::process::ExitCode::from(2);
        }
    }
    // `--check-config | head` closes the pipe early; that is not an error worth a panic.
    let _ = writeln!(std::io::stdout(), "{summary}");
    std::process::ExitCode::SUCCESS
}

/// The command line's value when it gave one, else the file's; and whether it came from the
/// command line, which decides what an error about it names.
pub fn pick<T>(cli: Option<T>, file: Option<T>) -> (Option<T>, bool) {
    match cli {
        Some(value) => (Some(value), true),
        None => (file, false),
    }
}

/// [`pick`] for a repeatable flag: the command line's values when it gave any, else the
/// file's (or none); and whether they came from the command line.
pub fn pick_vec<T: Clone>(cli: &[T], file: Option<Vec<T>>) -> (Vec<T>, bool) {
    if cli.is_empty() {
        (file.unwrap_or_default(), false)
    } else {
        (cli.to_vec(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct File {
        relay: Relay,
        #[serde(default)]
        listeners: Vec<Listener>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Relay {
        min_port: u16,
        #[serde(default)]
        realm: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Listener {
        address: String,
    }

    fn parse(text: &str) -> Result<File, ConfigError> {
        parse_toml(Path::new("/etc/icegate/relay.toml"), text)
    }

    #[test]
    fn offending_string_values_are_not_repeated() {
        // A secret written where a number belongs must not end up in the error (and the log).
        let error = parse("[relay]\nmin-port = \"hunter2-secret\"\n").unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("relay.min-port") && text.contains("invalid type"),
            "{text}"
        );
        assert_eq!(redact_strings(r#"a "b" c "d""#), r#"a "…" c "…""#);
    }

    #[test]
    fn loads_a_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "[relay]\nmin-port = 49152\nrealm = \"example.org\"\n",
        )
        .unwrap();
        let file: File = load_toml(&path).unwrap();
        assert_eq!(
            file,
            File {
                relay: Relay {
                    min_port: 49152,
                    realm: Some("example.org".into())
                },
                listeners: vec![],
            }
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[relay]\nmin-port = 70000\n").unwrap_err();
        assert_eq!(err.key(), Some("relay.min-port"));
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/icegate/relay.toml: key `relay.min-port`: "),
            "{shown}"
        );
        assert!(shown.contains("70000"), "{shown}");

        let err = parse("[relay]\nmin-port = \"high\"\n").unwrap_err();
        assert_eq!(err.key(), Some("relay.min-port"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[relay]\nmin-port = 1\nmax-prot = 2\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("relay.max-prot"), "{shown}");
        assert!(shown.contains("unknown field"), "{shown}");
    }

    #[test]
    fn unknown_top_level_table_is_named() {
        let err = parse("[relay]\nmin-port = 1\n[rleay]\n").unwrap_err();
        assert!(err.to_string().contains("`rleay`"), "{err}");
    }

    #[test]
    fn array_elements_are_indexed() {
        let err = parse(
            "[relay]\nmin-port = 1\n[[listeners]]\naddress = \"a\"\n[[listeners]]\naddress = 5\n",
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("listeners[1].address"), "{err}");
    }

    #[test]
    fn missing_key_names_its_table() {
        let err = parse("[relay]\nrealm = \"x\"\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("min-port"), "{shown}");
        assert!(shown.contains("relay"), "{shown}");
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let err = parse("[relay]\nmin-port = = 1\n").unwrap_err();
        assert_eq!(err.key(), None);
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/icegate/relay.toml: line 2, column "),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown:?}");
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let err = load_toml::<File>(Path::new("/nonexistent/icegate.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/icegate.toml: cannot read: "));
    }

    #[test]
    fn invalid_reads_well_for_file_and_command_line() {
        let err = ConfigError::invalid(
            Some(Path::new("/etc/icegate/relay.toml")),
            "relay.min-port",
            "must not be above relay.max-port (40000)",
        );
        assert_eq!(
            err.to_string(),
            "/etc/icegate/relay.toml: key `relay.min-port`: must not be above relay.max-port (40000)"
        );
        let err = ConfigError::invalid(None, "min-port", "must not be 0");
        assert_eq!(err.to_string(), "command line: --min-port: must not be 0");
        let err = ConfigError::invalid(None, "--min-port", "must not be 0");
        assert_eq!(err.to_string(), "command line: --min-port: must not be 0");
        assert_eq!(err.file(), None);
    }

    #[test]
    fn line_column_counts_characters() {
        assert_eq!(line_column("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncdé\nx", 8), (3, 1));
        // An offset inside a multi-byte character rounds down rather than panicking.
        assert_eq!(line_column("é", 1), (1, 1));
    }
}
