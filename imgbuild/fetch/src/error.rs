//! The error type of imgbuild-fetch: every variant displays as one line naming what failed, where,
//! and what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Why a fetch, a cache operation or a verification failed.
#[derive(Debug)]
pub enum FetchError {
    /// The source has no sha256 and `insecure_no_verify` was not given.
    MissingHash {
        /// The URL that would have been downloaded.
        url: String,
    },
    /// A sha256 given by the caller is not 64 hexadecimal digits.
    BadHash {
        /// The value as given.
        value: String,
    },
    /// A sha512 given by the caller is not 128 hexadecimal digits.
    BadSha512 {
        /// The value as given.
        value: String,
    },
    /// The downloaded bytes do not have the pinned sha512; the partial file has been deleted.
    Sha512Mismatch {
        /// The URL that was downloaded.
        url: String,
        /// The pinned sha512.
        expected: String,
        /// The sha512 of what was received.
        actual: String,
    },
    /// The URL is not an http(s) URL.
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The file is not in the cache and offline mode forbids the network.
    Offline {
        /// The URL of the missing file.
        url: String,
        /// Its pinned sha256, if any.
        sha256: Option<String>,
        /// The cache that was searched.
        cache_dir: PathBuf,
    },
    /// No connection could be made (DNS failure, refused, no route) after all retries.
    Unreachable {
        /// The URL being fetched.
        url: String,
        /// The underlying cause.
        detail: String,
    },
    /// The server stopped answering for longer than the read timeout, after all retries.
    Timeout {
        /// The URL being fetched.
        url: String,
        /// The underlying cause.
        detail: String,
    },
    /// The connection broke during the transfer, after all retries.
    Transfer {
        /// The URL being fetched.
        url: String,
        /// The underlying cause.
        detail: String,
    },
    /// The server answered with an HTTP status that is not a success.
    HttpStatus {
        /// The URL being fetched.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The server answered in a way the protocol does not allow (e.g. a bad `Content-Range`).
    Protocol {
        /// The URL being fetched.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The downloaded bytes do not have the pinned sha256; the partial file has been deleted.
    HashMismatch {
        /// The URL that was downloaded.
        url: String,
        /// The pinned sha256.
        expected: String,
        /// The sha256 of what was received.
        actual: String,
    },
    /// The signing key could not be parsed or does not have the pinned fingerprint.
    SigningKey {
        /// What was wrong.
        detail: String,
    },
    /// The detached signature could not be parsed or does not verify.
    Signature {
        /// The signed file's URL (or path).
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A file-system operation failed.
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP client or its runtime could not be set up.
    Setup {
        /// What was wrong.
        detail: String,
    },
}

impl FetchError {
    /// Builds an [`FetchError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        FetchError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The message for a download of `url` whose `algorithm` digest is `actual`, not the pinned
/// `expected` (the partial file is already deleted).
fn digest_mismatch(algorithm: &str, url: &str, expected: &str, actual: &str) -> String {
    format!(
        "{algorithm} mismatch for {url}: expected {expected}, got {actual}; \
         the download was deleted: check the pinned hash or the mirror"
    )
}

/// Folds all whitespace runs (including newlines) into single spaces, so messages stay on one line.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            FetchError::MissingHash { url } => format!(
                "refusing to download {url} without a sha256 to check it against: \
                 pin one (e.g. --base-sha256 HASH) or pass --insecure-no-verify"
            ),
            FetchError::BadHash { value } => format!(
                "'{value}' is not a sha256: expected 64 hexadecimal digits"
            ),
            FetchError::BadUrl { url, detail } => {
                format!("'{url}' is not a usable download URL: {detail}")
            }
            FetchError::Offline {
                url,
                sha256,
                cache_dir,
            } => format!(
                "{url} (sha256 {}) is not in cache {} and --offline given: \
                 fetch it once with network access or build from a local file with --base FILE",
                sha256.as_deref().unwrap_or("not pinned"),
                cache_dir.display()
            ),
            FetchError::Unreachable { url, detail } => format!(
                "cannot connect to fetch {url}: {detail}; the network or server looks unreachable: \
                 check the connection and proxy settings, or build from a local file with --base FILE"
            ),
            FetchError::Timeout { url, detail } => format!(
                "download of {url} timed out: {detail}; retry later, raise the timeout, \
                 or build from a local file with --base FILE"
            ),
            FetchError::Transfer { url, detail } => format!(
                "download of {url} kept failing: {detail}; run again to resume \
                 or build from a local file with --base FILE"
            ),
            FetchError::HttpStatus { url, status } => {
                let reason = reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("");
                format!("server answered HTTP {status} {reason} for {url}: check the URL")
            }
            FetchError::Protocol { url, detail } => {
                format!("unexpected answer from the server for {url}: {detail}")
            }
            FetchError::HashMismatch {
                url,
                expected,
                actual,
            } => digest_mismatch("sha256", url, expected, actual),
            FetchError::BadSha512 { value } => format!(
                "{value:?} is not a sha512: expected 128 hexadecimal digits (as in SHA512SUMS)"
            ),
            FetchError::Sha512Mismatch {
                url,
                expected,
                actual,
            } => digest_mismatch("sha512", url, expected, actual),
            FetchError::SigningKey { detail } => format!("signing key: {detail}"),
            FetchError::Signature { what, detail } => {
                format!("OpenPGP signature check of {what} failed: {detail}")
            }
            FetchError::Io {
                action,
                path,
                source,
            } => format!("cannot {action} {}: {source}", path.display()),
            FetchError::Setup { detail } => format!("cannot set up the HTTP client: {detail}"),
        };
        f.write_str(&one_line(&text))
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
