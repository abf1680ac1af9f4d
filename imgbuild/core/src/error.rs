//! The error type of the pipeline: always one line, naming what failed and where.
//!
//! One enum (like rust-vmm's per-module errors): the errors of the crates below keep their type
//! through [`From`] (so a caller can still tell a full root file system from a corrupt one, or a
//! failed download from a bad config), [`Error::context`] says what was being done without
//! losing the cause, and [`Error::msg`] is for the errors this crate raises itself.

use std::fmt;

/// A pipeline error. `Display` is a single line that names what failed, where, and when
/// possible what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An error this crate raises itself: the user's input or the base image does not allow
    /// the build (`boot.cmdline_append: /cmdline.txt is missing on the boot partition`).
    Message(String),
    /// The root file system has no room for what the plan writes.
    RootFull {
        /// What was being written when space ran out (path and origin).
        writing: String,
        /// Bytes still missing for the rest of the plan (an estimate, at least 1 MiB).
        more_bytes: u64,
    },
    /// An ext2/3/4 operation failed (its kind is kept: [`imgbuild_ext2fs::ErrorKind`]).
    Ext4(imgbuild_ext2fs::Error),
    /// Downloading, verifying or caching failed.
    Fetch(imgbuild_fetch::FetchError),
    /// Compressing, hashing or writing the bmap failed.
    Pack(imgbuild_pack::Error),
    /// The Greengrass section, claim material or payload is not usable.
    Greengrass(imgbuild_greengrass::GgError),
    /// An I/O error of the host.
    Io(std::io::Error),
    /// An error of a library this crate uses for a format (JSON, templates, zip, MBR).
    Format(Box<dyn std::error::Error + Send + Sync>),
    /// `what` was being done when `source` happened.
    Context {
        /// What was being done.
        what: String,
        /// What went wrong.
        source: Box<Error>,
    },
}

/// Result alias used throughout imgbuild-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Makes an error from a message; newlines are folded so the message stays one line.
    pub fn msg(message: impl Into<String>) -> Error {
        Error::Message(one_line(&message.into()))
    }

    /// Prefixes the error with what was being done (`"{what}: {self}"`), keeping its kind.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error::Context {
            what: one_line(&what.to_string()),
            source: Box::new(self),
        }
    }

    /// The one-line message (what `Display` shows).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The error under all the [`Error::Context`] layers.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root_cause(),
            e => e,
        }
    }

    /// For a full root file system: the bytes still missing (grow the image by at least this).
    pub fn root_full(&self) -> Option<u64> {
        match self.root_cause() {
            Error::RootFull { more_bytes, .. } => Some(*more_bytes),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Message(m) => f.write_str(m),
            Error::RootFull {
                writing,
                more_bytes,
            } => write!(
                f,
                "root file system full: {} MiB more needed (writing {writing}); use [image] size or \
                 [image] grow_root in the config to grow the image",
                more_bytes.div_ceil(1 << 20).max(1)
            ),
            Error::Ext4(e) => write!(f, "root file system: {}", one_line(&e.to_string())),
            Error::Fetch(e) => f.write_str(&one_line(&e.to_string())),
            Error::Pack(e) => f.write_str(&one_line(&e.to_string())),
            Error::Greengrass(e) => f.write_str(&one_line(&e.to_string())),
            Error::Io(e) => f.write_str(&one_line(&e.to_string())),
            Error::Format(e) => f.write_str(&one_line(&e.to_string())),
            Error::Context { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Ext4(e) => Some(e),
            Error::Fetch(e) => Some(e),
            Error::Pack(e) => Some(e),
            Error::Greengrass(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Format(e) => Some(e.as_ref()),
            Error::Context { source, .. } => Some(source.as_ref()),
            Error::Message(_) | Error::RootFull { .. } => None,
        }
    }
}

impl From<imgbuild_ext2fs::Error> for Error {
    fn from(e: imgbuild_ext2fs::Error) -> Error {
        Error::Ext4(e)
    }
}

impl From<imgbuild_fetch::FetchError> for Error {
    fn from(e: imgbuild_fetch::FetchError) -> Error {
        Error::Fetch(e)
    }
}

impl From<imgbuild_pack::Error> for Error {
    fn from(e: imgbuild_pack::Error) -> Error {
        Error::Pack(e)
    }
}

impl From<imgbuild_greengrass::GgError> for Error {
    fn from(e: imgbuild_greengrass::GgError) -> Error {
        Error::Greengrass(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

/// Errors of the format libraries: kept (as [`Error::Format`]) with their source.
macro_rules! format_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Format(Box::new(e))
            }
        }
    )*};
}

format_error!(
    serde_json::Error,
    tera::Error,
    zip::result::ZipError,
    mbrman::Error
);

/// `text` with every run of whitespace (newlines included) folded into one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Adds "what was being done" to any error, turning it into an [`Error`] that keeps the
/// cause's type when it has a [`From`] conversion.
pub trait Context<T> {
    /// Wraps the error as `"{what}: {cause}"`; `what` is computed only on failure.
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(what()))
    }
}

/// Returns early with an [`Error`] built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::msg(format!($($arg)*))) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_stays_one_line() {
        let e = Error::RootFull {
            writing: "/big (overlay)".into(),
            more_bytes: 3 * (1 << 20) + 1,
        }
        .context("patch")
        .context("build\nstage");
        assert_eq!(e.root_full(), Some(3 * (1 << 20) + 1));
        assert_eq!(
            e.to_string(),
            "build stage: patch: root file system full: 4 MiB more needed (writing /big \
             (overlay)); use [image] size or [image] grow_root in the config to grow the image"
        );
        let io: Result<()> = Err(std::io::Error::other("disk on fire")).context(|| "writing x");
        let io = io.expect_err("an error");
        assert!(matches!(io.root_cause(), Error::Io(_)));
        assert_eq!(io.to_string(), "writing x: disk on fire");
        assert_eq!(io.root_full(), None);
    }
}
