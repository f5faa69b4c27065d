//! The harness's errors.

use std::path::Path;

/// Anything that stops a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A /proc file did not have the expected shape.
    #[error("/proc: {0}")]
    Proc(String),
    /// A server did not start or answer.
    #[error("{0}")]
    Contender(String),
    /// A TURN exchange went wrong.
    #[error("TURN: {0}")]
    Turn(String),
    /// Bad arguments.
    #[error("configuration: {0}")]
    Config(String),
}

impl BenchError {
    /// An I/O error while doing `what` (a path or a short description).
    pub fn io(what: impl AsRef<Path>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.as_ref().display().to_string(),
            source,
        }
    }
}
