//! The error type of this crate: always one line, naming what failed, where, and what to do.

use std::fmt;

/// A Greengrass payload error: one line naming what failed and where, and when possible what to do.
///
/// Messages never contain private key material: errors about the claim key name the file and the
/// problem only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgError(String);

/// Result alias of this crate.
pub type Result<T, E = GgError> = std::result::Result<T, E>;

impl GgError {
    /// Makes an error from a message; line breaks and runs of whitespace fold to single spaces.
    pub fn msg(message: impl Into<String>) -> GgError {
        let message: String = message.into();
        GgError(message.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GgError {}

/// Returns early with a [`GgError`] built from a format string.
macro_rules! gg_bail {
    ($($arg:tt)*) => { return Err($crate::error::GgError::msg(format!($($arg)*))) };
}
pub(crate) use gg_bail;
