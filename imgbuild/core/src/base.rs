//! Where the base image comes from: a local file, a URL, or the board's pinned URL. Downloads
//! go through `imgbuild-fetch` (verified against a pinned sha256, cached content-addressed),
//! and the decompressed raw image is cached by the same hash so a rebuild skips decompression.

use crate::board::Board;
use crate::error::{Error, Result};
use imgbuild_fetch::{Cache, Options, SignatureSource, Source};
use std::path::{Path, PathBuf};

/// How to obtain the base image.
#[derive(Debug, Clone, Default)]
pub struct BaseRequest {
    /// `--base`: a path or an `http(s)://` URL; `None` means the board's pinned URL.
    pub base: Option<String>,
    /// `--base-sha256` for a URL (or to check a local file).
    pub sha256: Option<String>,
    /// `--base-sha512` for a URL (or to check a local file); both are checked when both given.
    pub sha512: Option<String>,
    /// `--cache-dir`; default `$XDG_CACHE_HOME/imgbuild`.
    pub cache_dir: Option<PathBuf>,
    /// `--offline`: never touch the network.
    pub offline: bool,
    /// `--insecure-no-verify`: allow a URL without a hash (recorded in the manifest).
    pub insecure_no_verify: bool,
    /// Receives the download's progress (the CLI draws it); shows nothing by default.
    pub progress: imgbuild_progress::Reporter,
    /// Directory holding board key files (`boards/`), for signature checks.
    pub boards_dir: Option<PathBuf>,
}

/// A base image ready to build from.
#[derive(Debug, Clone)]
pub struct ResolvedBase {
    /// The (compressed) file on disk.
    pub path: PathBuf,
    /// URL or path, for the manifest.
    pub origin: String,
    /// sha256 of the file when known (downloads always; local files when `--base-sha256`, or
    /// once [`cached_raw`] has hashed a compressed one).
    pub sha256: Option<String>,
    /// True when an unpinned download was allowed by `--insecure-no-verify`.
    pub insecure: bool,
    /// The cache, when one is in use (for the raw-image cache).
    pub cache: Option<PathBuf>,
}

/// The cache directory to use.
pub fn cache_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p.to_path_buf()),
        None => imgbuild_fetch::default_cache_dir().ok_or_else(|| {
            Error::msg("no cache directory: set XDG_CACHE_HOME or HOME, or pass --cache-dir DIR")
        }),
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Resolves `req` for `board`: a local file is checked (against `--base-sha256` when given);
/// a URL or the board's pinned base is fetched, verified and cached.
pub fn resolve(board: &Board, req: &BaseRequest) -> Result<ResolvedBase> {
    if let Some(b) = req.base.as_deref().filter(|b| !is_url(b)) {
        let path = PathBuf::from(b);
        if !path.is_file() {
            crate::bail!("--base {b}: no such file");
        }
        let mut sha = None;
        if let Some(want) = &req.sha256 {
            let want = imgbuild_fetch::normalize_sha256(want)?;
            let have = imgbuild_fetch::sha256_file(&path)?;
            if have != want {
                crate::bail!("--base {b}: sha256 is {have}, --base-sha256 says {want}");
            }
            sha = Some(have);
        }
        if let Some(want) = &req.sha512 {
            let want = imgbuild_fetch::normalize_sha512(want)?;
            let have = imgbuild_fetch::sha512_file(&path)?;
            if have != want {
                crate::bail!("--base {b}: sha512 is {have}, --base-sha512 says {want}");
            }
        }
        return Ok(ResolvedBase {
            path,
            origin: b.to_string(),
            sha256: sha,
            insecure: false,
            cache: None,
        });
    }
    let (url, sha256, sha512, signature) = match req.base.as_deref() {
        Some(u) => (u.to_string(), req.sha256.clone(), req.sha512.clone(), None),
        None => {
            let pin = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
            if !board.base.is_pinned() && !req.insecure_no_verify {
                crate::bail!(
                    "board {} pins no sha256 or sha512 for {}; download and check it yourself and pass --base FILE",
                    board.name,
                    board.base.url
                );
            }
            (
                board.base.url.clone(),
                pin(&board.base.sha256),
                pin(&board.base.sha512),
                signature_source(board, req.boards_dir.as_deref())?,
            )
        }
    };
    let cache = cache_dir(req.cache_dir.as_deref())?;
    let mut opts = Options::new(&cache);
    opts.offline = req.offline;
    opts.insecure_no_verify = req.insecure_no_verify;
    opts.progress = req.progress.clone();
    let src = Source {
        url: url.clone(),
        sha256,
        sha512,
        signature,
    };
    let got = imgbuild_fetch::fetch(&src, &opts)?;
    Ok(ResolvedBase {
        path: got.path,
        origin: url,
        sha256: Some(got.sha256),
        insecure: !got.hash_verified,
        cache: Some(cache),
    })
}

/// The board's signature check, when it names one and its key file is available.
fn signature_source(board: &Board, boards_dir: Option<&Path>) -> Result<Option<SignatureSource>> {
    let (Some(url), Some(fpr)) = (
        &board.base.signature_url,
        &board.base.signing_key_fingerprint,
    ) else {
        return Ok(None);
    };
    let Some(key_file) = &board.base.signing_key else {
        tracing::warn!(
            "board {}: no signing key file shipped, so the OpenPGP signature is not checked; the pinned sha256 still is",
            board.name
        );
        return Ok(None);
    };
    let dir = boards_dir.unwrap_or(Path::new("boards"));
    let path = dir.join(key_file);
    let key = std::fs::read(&path).map_err(|e| {
        Error::msg(format!(
            "board {}: signing key {}: {e}",
            board.name,
            path.display()
        ))
    })?;
    Ok(Some(SignatureSource {
        url: url.clone(),
        key,
        fingerprint: fpr.clone(),
    }))
}

/// Returns a raw copy of the image from the cache, or decompresses `base` into the cache first.
/// A compressed local file is cached too, under `cache_dir`, by its sha256 (remembered by the
/// file's identity, see [`crate::pack::hash_base`]), which is then recorded in `base`: a rebuild
/// from the same `.img.xz` does not decompress it again. `None` for a raw local file (used as
/// it is) and when no cache is in use.
pub fn cached_raw(
    base: &mut ResolvedBase,
    cache_dir: Option<&Path>,
    progress: &dyn Fn(u64),
) -> Result<Option<PathBuf>> {
    let dir = match (&base.cache, cache_dir) {
        (Some(downloads), _) => downloads.clone(),
        (None, Some(dir)) => {
            // A local file: a raw one is used as it is.
            if crate::source::detect(&base.path)? == crate::source::Compression::Raw {
                return Ok(None);
            }
            if base.sha256.is_none() {
                base.sha256 = Some(crate::pack::hash_base(&base.path, Some(dir))?);
            }
            dir.to_path_buf()
        }
        (None, None) => return Ok(None),
    };
    let Some(sha) = &base.sha256 else {
        return Ok(None);
    };
    let cache = Cache::open(&dir)?;
    if let Some(p) = cache.raw_path(sha) {
        tracing::info!(raw = %p.display(), "base: raw image from the cache");
        return Ok(Some(p));
    }
    tracing::info!(base = %base.path.display(), "base: decompressing into the cache");
    let scratch = cache.scratch_path(sha);
    crate::source::decompress_to_sparse(&base.path, &scratch, progress)?;
    let stored = cache.store_raw(sha, &scratch)?;
    Ok(Some(stored))
}
