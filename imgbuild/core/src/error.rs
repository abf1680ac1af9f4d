//! The error type of the pipeline: always one line, naming what failed and where.

use std::fmt;

/// A pipeline error: a single line that names what failed, where, and when possible what to do.
#[derive(Debug)]
pub struct Error(String);

/// Result alias used throughout imgbuild-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Makes an error from a message; newlines are folded so the message stays one line.
    pub fn msg(message: impl Into<String>) -> Error {
        let m: String = message.into();
        Error(m.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// Prefixes the error with what was being done (`"{what}: {self}"`).
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error::msg(format!("{what}: {}", self.0))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Adds "what was being done" to any error, turning it into an [`Error`].
pub trait Context<T> {
    /// Wraps the error as `"{what}: {cause}"`; `what` is computed only on failure.
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{}: {e}", what())))
    }
}

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::msg(format!($($arg)*))) };
}
