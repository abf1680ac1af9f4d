//! Downloads, verifies and caches the base images (and other payloads) imgbuild builds from.
//!
//! [`fetch`] returns the path of a verified file in the [`Cache`]:
//!
//! * A cache hit (the pinned sha256 is already stored) makes no network request at all.
//! * Otherwise the file is streamed with reqwest (rustls with the ring provider, no OpenSSL) to
//!   `CACHE/tmp/<sha256>.part`, its sha256 computed while the bytes arrive. An interrupted
//!   transfer is resumed with `Range` (by the next attempt, or by the next run, which re-hashes the
//!   kept bytes from disk); a server that ignores `Range` makes it start over cleanly.
//!   Connection errors, timeouts and 5xx/429/408 answers are retried with exponential backoff,
//!   [`Options::retries`] times at most. Proxies come from the standard environment variables
//!   (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, lowercase too), and every request
//!   carries the User-Agent [`USER_AGENT`].
//! * The pinned sha256 must match, else the partial file is deleted and the error names the URL,
//!   the expected and the actual hash. Without a pinned sha256 the download is refused unless
//!   [`Options::insecure_no_verify`] is set.
//! * When the source names a detached OpenPGP signature, it is fetched first and checked (with
//!   the pure-Rust rPGP crate `pgp`) against a signing key that the caller supplies — typically a
//!   key file shipped in the repository under `boards/keys/` and named by the board — whose
//!   primary fingerprint must equal the fingerprint pinned in the board file. The key is never
//!   downloaded: a key fetched from the same place as the image would prove nothing.
//! * Only then is the file renamed into `CACHE/blobs/<sha256>`. Concurrent fetches of the same
//!   file (threads or processes) serialize on `CACHE/locks/<sha256>.lock`; the later ones find
//!   the finished entry.
//!
//! The functions block; they run their own single-threaded tokio runtime and must not be called
//! from inside an async runtime.

mod cache;
mod download;
mod error;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::{process_start, Cache, Entry, EntryKind, EntryLock, PruneReport};
pub use download::USER_AGENT;
pub use error::FetchError;
pub use verify::{normalize_sha256, normalize_sha512, sha256_file, sha512_file, SigningKey};

use sha2::{Digest, Sha256};

/// Largest detached signature accepted (real ones are a few hundred bytes).
pub const SIGNATURE_LIMIT: usize = 1 << 20;

/// What to fetch.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The http(s) URL of the file.
    pub url: String,
    /// The pinned sha256 of the file (64 hex digits). This or [`Source::sha512`] is required
    /// unless [`Options::insecure_no_verify`] is set.
    pub sha256: Option<String>,
    /// The pinned sha512 of the file (128 hex digits), for publishers that list only
    /// `SHA512SUMS` (Debian's cloud images). Checked in addition to a sha256 when both are set;
    /// the cache stays keyed by sha256 (both are computed while the file streams).
    pub sha512: Option<String>,
    /// A detached OpenPGP signature to check, if the publisher provides one.
    pub signature: Option<SignatureSource>,
}

/// Where a detached signature is and which key must have made it.
#[derive(Debug, Clone, Default)]
pub struct SignatureSource {
    /// The http(s) URL of the detached signature (armored or binary), e.g. `…img.xz.sig`.
    pub url: String,
    /// The signer's OpenPGP public key, armored or binary: the contents of the key file the board
    /// names (e.g. `boards/keys/raspberrypi.asc`). It is not downloaded.
    pub key: Vec<u8>,
    /// The pinned fingerprint of the key's primary key (hex, spaces allowed).
    pub fingerprint: String,
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cache root (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Fail instead of using the network on a cache miss.
    pub offline: bool,
    /// Allow a source without a sha256 and skip signature checks (a pinned sha256 is still
    /// checked). The caller should record that this was used.
    pub insecure_no_verify: bool,
    /// Receives the download's progress (stage: the file name); shows nothing by default.
    pub progress: imgbuild_progress::Reporter,
    /// How many times a failed attempt is retried (so at most `retries + 1` attempts).
    pub retries: u32,
    /// The pause before the first retry; doubled for each further one, at most 30 s.
    pub backoff: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any single read (headers or a piece of the body).
    pub read_timeout: Duration,
}

impl Options {
    /// Defaults: online, verifying, no progress reports, 5 retries from 1 s, connect timeout 30 s,
    /// read timeout 60 s.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Options {
        Options {
            cache_dir: cache_dir.into(),
            offline: false,
            insecure_no_verify: false,
            progress: imgbuild_progress::Reporter::none(),
            retries: 5,
            backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A fetched file.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its path in the cache (`CACHE/blobs/<sha256>`). Take [`Cache::lock_shared`] on
    /// [`Fetched::sha256`] while using it to keep a concurrent prune away.
    pub path: PathBuf,
    /// Its sha256 (lowercase hex).
    pub sha256: String,
    /// Its sha512 (lowercase hex), when known: always for a fresh download, and for a cached one
    /// recorded by a version that computed it.
    pub sha512: Option<String>,
    /// The last segment of the URL's path (e.g. `image.img.xz`), or `download`.
    pub file_name: String,
    /// Whether it came from the cache without any network request.
    pub from_cache: bool,
    /// Whether its sha256 was checked against a pinned value (false only for an unpinned
    /// download allowed by [`Options::insecure_no_verify`]).
    pub hash_verified: bool,
    /// Whether a detached signature by the pinned key was verified for these bytes (now, or when
    /// they entered the cache).
    pub signature_verified: bool,
}

/// The default cache root: `$XDG_CACHE_HOME/imgbuild`, else `$HOME/.cache/imgbuild`; None when
/// neither variable holds an absolute path (the caller should then ask for `--cache-dir`).
pub fn default_cache_dir() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    absolute("XDG_CACHE_HOME")
        .or_else(|| absolute("HOME").map(|home| home.join(".cache")))
        .map(|base| base.join("imgbuild"))
}

/// Returns a verified copy of `source` from the cache, downloading it first on a miss
/// (see the crate documentation for the rules).
pub fn fetch(source: &Source, opts: &Options) -> Result<Fetched, FetchError> {
    let pins = Pins {
        sha256: source.sha256.as_deref().map(normalize_sha256).transpose()?,
        sha512: source.sha512.as_deref().map(normalize_sha512).transpose()?,
    };
    let cache = Cache::open(&opts.cache_dir)?;
    if pins.sha256.is_some() || pins.sha512.is_some() {
        fetch_pinned(source, &pins, &cache, opts)
    } else if opts.insecure_no_verify {
        fetch_unpinned(source, &cache, opts)
    } else {
        Err(FetchError::MissingHash {
            url: source.url.clone(),
        })
    }
}

/// The pinned digests of a source (normalized); at least one is set.
struct Pins {
    sha256: Option<String>,
    sha512: Option<String>,
}

impl Pins {
    /// The lock (and partial file) key: the sha256, or `sha512-` and half the sha512.
    fn key(&self) -> String {
        match (&self.sha256, &self.sha512) {
            (Some(sha256), _) => sha256.clone(),
            (None, Some(sha512)) => format!("sha512-{}", &sha512[..64]),
            (None, None) => String::new(),
        }
    }

    /// The sha256 of the pinned file if the cache already knows it.
    fn known_sha256(&self, cache: &Cache) -> Option<String> {
        match (&self.sha256, &self.sha512) {
            (Some(sha256), _) => Some(sha256.clone()),
            (None, Some(sha512)) => cache.sha256_of_sha512(sha512),
            (None, None) => None,
        }
    }
}

/// Fetches a pinned file: cache hit, or download + verify + store under its lock.
fn fetch_pinned(
    source: &Source,
    pins: &Pins,
    cache: &Cache,
    opts: &Options,
) -> Result<Fetched, FetchError> {
    let wanted = signature_check(source, opts)?;
    if let Some(hit) = cache_hit(source, pins, cache, wanted.as_ref()) {
        return Ok(hit);
    }
    if opts.offline {
        return Err(FetchError::Offline {
            url: source.url.clone(),
            sha256: Some(pins.key()),
            cache_dir: cache.root().to_path_buf(),
        });
    }
    let key = pins.key();
    let _lock = cache.lock(&key)?;
    // Another process may have stored it while this one waited for the lock.
    if let Some(hit) = cache_hit(source, pins, cache, wanted.as_ref()) {
        return Ok(hit);
    }
    let http = download::Http::new(opts)?;
    let signature = match &wanted {
        Some((sig, _)) => Some(http.get_small(&sig.url, SIGNATURE_LIMIT)?),
        None => None,
    };
    let part = cache.part_path(&key);
    let file_name = file_name(&source.url);
    // Bytes left by an earlier run may belong to an older upload at the same URL: if the resumed
    // file is wrong, try once more from scratch before blaming the server.
    let had_partial = std::fs::metadata(&part).is_ok_and(|m| m.len() > 0);
    let mut actual = http.download(&source.url, &part, true, &file_name)?;
    if mismatch(source, pins, &actual).is_some() && had_partial {
        actual = http.download(&source.url, &part, false, &file_name)?;
    }
    let checked = check_download(source, pins, &actual, &part, &wanted, signature.as_deref());
    if let Err(error) = checked {
        cache::remove_if_exists(&part)?;
        return Err(error);
    }
    // A sha512-only pin was locked under its own key: the blob is stored under its sha256.
    let _blob_lock = match pins.sha256 {
        Some(_) => None,
        None => Some(cache.lock(&actual.sha256)?),
    };
    let signer = wanted.as_ref().map(|(_, key)| key.fingerprint());
    store_download(cache, &part, source, signer.as_deref(), actual, true)
}

/// Stores the finished download of `source` at `part` as the cache blob of its digests `actual`
/// (recording its URL and `signer`) and describes it: fresh from the network, its hash checked
/// against a pin when `hash_verified`, its signature verified when there is a `signer`.
fn store_download(
    cache: &Cache,
    part: &std::path::Path,
    source: &Source,
    signer: Option<&str>,
    actual: download::Digests,
    hash_verified: bool,
) -> Result<Fetched, FetchError> {
    let path = cache.store_blob(&actual.sha256, part, &source.url, signer, &actual.sha512)?;
    Ok(Fetched {
        path,
        sha256: actual.sha256,
        sha512: Some(actual.sha512),
        file_name: file_name(&source.url),
        from_cache: false,
        hash_verified,
        signature_verified: signer.is_some(),
    })
}

/// The first pinned digest the download does not match, as an error.
fn mismatch(source: &Source, pins: &Pins, actual: &download::Digests) -> Option<FetchError> {
    if let Some(expected) = pins.sha256.as_ref().filter(|e| **e != actual.sha256) {
        return Some(FetchError::HashMismatch {
            url: source.url.clone(),
            expected: expected.clone(),
            actual: actual.sha256.clone(),
        });
    }
    pins.sha512
        .as_ref()
        .filter(|e| **e != actual.sha512)
        .map(|expected| FetchError::Sha512Mismatch {
            url: source.url.clone(),
            expected: expected.clone(),
            actual: actual.sha512.clone(),
        })
}

/// The signature to check and the parsed, fingerprint-checked key, unless there is none or
/// checks are disabled.
fn signature_check<'a>(
    source: &'a Source,
    opts: &Options,
) -> Result<Option<(&'a SignatureSource, SigningKey)>, FetchError> {
    match &source.signature {
        Some(sig) if !opts.insecure_no_verify => {
            let key = SigningKey::parse(&sig.key, &sig.fingerprint)?;
            Ok(Some((sig, key)))
        }
        _ => Ok(None),
    }
}

/// The cached entry for the pinned file, if any. A sha512 pin finds its entry through the
/// sha512 recorded when the file was downloaded and verified.
fn cache_hit(
    source: &Source,
    pins: &Pins,
    cache: &Cache,
    wanted: Option<&(&SignatureSource, SigningKey)>,
) -> Option<Fetched> {
    let sha256 = pins.known_sha256(cache)?;
    let path = cache.blob_path(&sha256)?;
    let recorded512 = cache.recorded_sha512(&sha256);
    if let Some(want) = &pins.sha512 {
        if recorded512.as_ref() != Some(want) {
            return None;
        }
    }
    let signature_verified = match (wanted, cache.recorded_signer(&sha256)) {
        (Some((_, key)), Some(signer)) => signer == key.fingerprint(),
        _ => false,
    };
    Some(Fetched {
        path,
        sha256,
        sha512: recorded512,
        file_name: file_name(&source.url),
        from_cache: true,
        hash_verified: true,
        signature_verified,
    })
}

/// Compares the hashes and checks the signature of a finished download.
fn check_download(
    source: &Source,
    pins: &Pins,
    actual: &download::Digests,
    part: &std::path::Path,
    wanted: &Option<(&SignatureSource, SigningKey)>,
    signature: Option<&[u8]>,
) -> Result<(), FetchError> {
    if let Some(error) = mismatch(source, pins, actual) {
        return Err(error);
    }
    match (wanted, signature) {
        (Some((_, key)), Some(sig)) => key.verify_file(part, sig, &source.url),
        _ => Ok(()),
    }
}

/// Downloads a file nobody pinned (insecure mode): always from the network, from the start.
fn fetch_unpinned(source: &Source, cache: &Cache, opts: &Options) -> Result<Fetched, FetchError> {
    if opts.offline {
        return Err(FetchError::Offline {
            url: source.url.clone(),
            sha256: None,
            cache_dir: cache.root().to_path_buf(),
        });
    }
    let key = format!("url-{}", hex::encode(Sha256::digest(source.url.as_bytes())));
    let _lock = cache.lock(&key)?;
    let http = download::Http::new(opts)?;
    let part = cache.part_path(&key);
    let file_name = file_name(&source.url);
    let actual = http.download(&source.url, &part, false, &file_name)?;
    let _blob_lock = cache.lock(&actual.sha256)?;
    store_download(cache, &part, source, None, actual, false)
}

/// The last non-empty segment of the URL's path, or `download`.
fn file_name(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut segments| segments.rfind(|s| !s.is_empty()).map(str::to_string))
        })
        .unwrap_or_else(|| "download".to_string())
}
