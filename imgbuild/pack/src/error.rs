//! The error type of this crate: one enum whose `Display` is always one line naming what
//! failed, where (the file, when there is one), and when possible what to do. Causes keep their
//! type (`io::Error`, liblzma's error, serde's) and are reachable through
//! [`std::error::Error::source`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A packing error.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file (the raw image, a cache file, the bmap) could not be opened, read, written or
    /// inspected.
    Io {
        /// What was being done (`"writing bmap"`, `"reading bytes 0..4096 of"`).
        doing: String,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// Writing the compressed stream to the caller's writer failed.
    Output {
        /// What was being written.
        doing: &'static str,
        /// What went wrong.
        source: io::Error,
    },
    /// liblzma refused to start or to compress.
    Lzma {
        /// What was being done.
        doing: String,
        /// liblzma's error.
        source: liblzma::stream::Error,
    },
    /// liblzma produced output this crate does not expect (a liblzma that changed its format).
    Encoder(String),
    /// An xz stream or block does not follow the .xz file format.
    XzFormat(String),
    /// A chunk index file is not the JSON this crate writes.
    IndexJson(serde_json::Error),
    /// A chunk index parses but is damaged or does not fit its image.
    CorruptIndex(String),
    /// An argument is out of range (chunk size, xz preset, bmap block size) or does not fit
    /// the others (a dirty map made for another chunk size).
    InvalidInput(String),
    /// The raw image cannot be packed as it is (empty, or changed while it was read).
    Image {
        /// The raw image.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A worker thread stopped before its work was done.
    Worker(String),
    /// `doing` was under way when `source` happened.
    Context {
        /// What was being done.
        doing: String,
        /// What went wrong.
        source: Box<Error>,
    },
}

/// Result alias used throughout imgbuild-pack.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path` while `doing`.
    pub(crate) fn io(doing: impl Into<String>, path: &Path, source: io::Error) -> Error {
        Error::Io {
            doing: doing.into(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// Says what was being done when this error happened, keeping its kind.
    pub fn context(self, doing: impl Into<String>) -> Error {
        Error::Context {
            doing: doing.into(),
            source: Box::new(self),
        }
    }

    /// The error under all the [`Error::Context`] layers.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root_cause(),
            e => e,
        }
    }

    /// The one-line message (what `Display` shows).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// `text` with every whitespace run (newlines included) folded to one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Error::Io {
                doing,
                path,
                source,
            } => format!("{doing} {}: {source}", path.display()),
            Error::Output { doing, source } => format!("{doing}: {source}"),
            Error::Lzma { doing, source } => format!("{doing}: liblzma: {source}"),
            Error::Encoder(m)
            | Error::XzFormat(m)
            | Error::CorruptIndex(m)
            | Error::InvalidInput(m)
            | Error::Worker(m) => m.clone(),
            Error::IndexJson(e) => format!("chunk index is not valid JSON of its format: {e}"),
            Error::Image { path, reason } => format!("{}: {reason}", path.display()),
            Error::Context { doing, source } => format!("{doing}: {source}"),
        };
        f.write_str(&one_line(&text))
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Output { source, .. } => Some(source),
            Error::Lzma { source, .. } => Some(source),
            Error::IndexJson(e) => Some(e),
            Error::Context { source, .. } => Some(source.as_ref()),
            Error::Encoder(_)
            | Error::XzFormat(_)
            | Error::CorruptIndex(_)
            | Error::InvalidInput(_)
            | Error::Image { .. }
            | Error::Worker(_) => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::IndexJson(e)
    }
}

/// Attaches what was being done, and on which file, to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Turns the error into [`Error::Io`]; `doing` is computed only on failure.
    fn on(self, path: &Path, doing: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn on(self, path: &Path, doing: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(doing(), path, e))
    }
}

/// Returns early with an error: `bail!(Variant, "format", args…)` for the variants that hold
/// a message.
macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$variant(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn display_is_one_line_naming_what_and_where_and_keeps_the_cause() {
        let e = Error::io(
            "writing bmap",
            Path::new("/out/x.bmap"),
            io::Error::other("disk\nfull"),
        )
        .context("packing image.img");
        assert_eq!(
            e.to_string(),
            "packing image.img: writing bmap /out/x.bmap: disk full"
        );
        assert!(matches!(e.root_cause(), Error::Io { .. }));
        let io = e.source().and_then(|s| s.source()).expect("io cause");
        assert_eq!(io.to_string(), "disk\nfull");
        let json = serde_json::from_str::<u32>("{").unwrap_err();
        assert!(matches!(Error::from(json), Error::IndexJson(_)));
    }
}
