//! The error type of this crate: always one line, naming what failed, where, and what to do.
//!
//! It mirrors `imgbuild_core::Error` (this crate cannot depend on the core crate, which depends
//! on it); it implements [`std::error::Error`], so the core crate's `Context` trait wraps it.

use std::fmt;

/// A packing error: a single line that names what failed, where, and when possible what to do.
#[derive(Debug)]
pub struct Error(String);

/// Result alias used throughout imgbuild-pack.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Makes an error from a message; whitespace runs (newlines included) are folded to one space.
    pub fn msg(message: impl Into<String>) -> Error {
        let m: String = message.into();
        Error(m.split_whitespace().collect::<Vec<_>>().join(" "))
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
pub(crate) trait Context<T> {
    /// Wraps the error as `"{what}: {cause}"`; `what` is computed only on failure.
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{}: {e}", what())))
    }
}

/// Returns early with an [`Error`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::msg(format!($($arg)*))) };
}
pub(crate) use bail;
