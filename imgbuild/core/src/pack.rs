//! Pack: turn the patched working copy into the artifacts users flash and verify —
//! `NAME.img.xz` (or a sparse `NAME.img`), `NAME.img.xz.sha256`, `NAME.bmap` — written under
//! temporary names and renamed into place only when all of them are complete.

use crate::error::{Context, Error, Result};
use imgbuild_ranges::ByteRanges;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Upper bound for the xz encoders' memory (threads are reduced to stay below it).
pub const MEMORY_LIMIT: u64 = 300 << 20;

/// How the image is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Multi-block .xz at this preset (0-9).
    Xz {
        /// xz preset level.
        level: u32,
    },
    /// The raw image, sparse.
    None,
}

/// One artifact of a build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Artifact {
    /// Final path.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the file.
    pub sha256: String,
}

/// Files staged under temporary names; removed on drop unless [`Staged::commit`] renamed them.
#[derive(Debug, Default)]
pub struct Staged {
    /// `(temporary, final)` pairs, renamed in order by `commit`.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// A temporary path in the final file's directory for `final_path`.
    pub fn add(&mut self, final_path: &Path) -> PathBuf {
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = final_path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        self.files.push((tmp.clone(), final_path.to_path_buf()));
        tmp
    }

    /// Renames every staged file into place (the first one added is renamed last, so the image
    /// appears only once its side files are there).
    pub fn commit(mut self) -> Result<()> {
        let files = std::mem::take(&mut self.files);
        for (tmp, fin) in files.iter().rev() {
            std::fs::rename(tmp, fin)
                .context(|| format!("renaming {} to {}", tmp.display(), fin.display()))?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `raw` compressed (or copied sparsely) to `tmp`; returns (size, sha256) of what was
/// written. `progress` gets the number of raw bytes consumed so far.
pub fn write_image(
    raw: &Path,
    tmp: &Path,
    how: Compress,
    incremental: Option<&Incremental>,
    progress: &dyn Fn(u64),
) -> Result<(u64, String)> {
    let file = File::create(tmp).context(|| format!("creating {}", tmp.display()))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    match how {
        Compress::Xz { level } => {
            // Memory grows with threads (~142 MiB each at preset 6), not with image size: cap
            // it so a many-core machine stays within the 300 MiB budget.
            let opts = imgbuild_pack::XzOptions {
                preset: level,
                memory_limit: Some(MEMORY_LIMIT),
                never_cache: incremental
                    .map(|i| i.never_cache.clone())
                    .unwrap_or_default(),
                ..Default::default()
            };
            let (cache, dirty) = match incremental {
                Some(i) => (Some(&i.cache), Some(&i.dirty)),
                None => (None, None),
            };
            let stats = imgbuild_pack::compress_xz(raw, &mut out, &opts, cache, dirty)
                .context(|| format!("compressing {}", raw.display()))?;
            tracing::info!(
                chunks = stats.chunks,
                compressed = stats.compressed_chunks,
                cache_hits = stats.cache_hits,
                hashed = stats.hashed_chunks,
                uncached = stats.uncached_chunks,
                "compressed"
            );
            if let Some(e) = &stats.first_cache_error {
                tracing::warn!(
                    "chunk cache: {} block(s) not stored ({e}); the build goes on without them",
                    stats.cache_write_errors
                );
            }
        }
        Compress::None => {
            // Only used when the raw image could not simply be renamed; copies sparsely.
            crate::source::decompress_to_sparse(raw, tmp, progress)?;
            return hash_file(tmp)
                .map(|h| (std::fs::metadata(tmp).map(|m| m.len()).unwrap_or(0), h));
        }
    }
    let (inner, size, sha) = out.finish();
    let file = inner
        .into_inner()
        .map_err(|e| Error::msg(format!("writing {}: {}", tmp.display(), e.error())))?;
    file.sync_all()
        .context(|| format!("syncing {}", tmp.display()))?;
    progress(std::fs::metadata(raw).map(|m| m.len()).unwrap_or(0));
    Ok((size, sha))
}

/// What an incremental compression reuses: compressed chunks cached by content, and the map of
/// chunks the apply stage wrote (the others keep the base image's chunk hashes).
pub struct Incremental {
    /// Compressed-chunk cache.
    pub cache: imgbuild_pack::ChunkCache,
    /// Base chunk index plus written ranges.
    pub dirty: imgbuild_pack::DirtyMap,
    /// Byte ranges of the image holding secret bytes: their chunks never enter the cache.
    pub never_cache: ByteRanges,
}

impl Incremental {
    /// Prepares incremental packing of the working copy `raw` (still equal to the base image)
    /// under `cache_dir`: loads the base's chunk index (keyed by `base_sha256`) or computes and
    /// stores it. The cache is an optimisation: when it cannot be used (no permission, full
    /// disk) this warns and returns `Ok(None)`, and the build compresses everything.
    pub fn prepare(cache_dir: &Path, base_sha256: &str, raw: &Path) -> Result<Option<Incremental>> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(base_sha256, &mut key)
            .map_err(|e| Error::msg(format!("base sha256 {base_sha256:?}: {e}")))?;
        let cache = match imgbuild_pack::ChunkCache::new(cache_dir.join("chunks")) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("chunk cache not used: {e}");
                return Ok(None);
            }
        };
        let size = imgbuild_pack::DEFAULT_CHUNK_SIZE;
        let index = match cache.load_index(&key, size) {
            Some(i) => i,
            None => {
                let i = imgbuild_pack::ChunkIndex::compute(raw, size)
                    .context(|| format!("hashing {}", raw.display()))?;
                if let Err(e) = cache.store_index(&key, &i) {
                    tracing::warn!("chunk index not stored: {e}");
                }
                i
            }
        };
        Ok(Some(Incremental {
            cache,
            dirty: imgbuild_pack::DirtyMap::new(index),
            never_cache: ByteRanges::new(),
        }))
    }

    /// Keeps the chunks overlapping `ranges` out of the cache.
    pub fn never_cache(&mut self, ranges: &ByteRanges) {
        self.never_cache.merge(ranges);
    }

    /// Records byte ranges written since the working copy was a copy of the base (the apply
    /// stage's, or any other stage's that changes the image).
    pub fn mark(&mut self, ranges: &ByteRanges) {
        self.dirty.mark_all(ranges);
    }
}

/// The `sha256sum -c` line for a file: `HASH  NAME\n`.
pub fn sha256sum_line(sha: &str, file_name: &str) -> String {
    format!("{sha}  {file_name}\n")
}

/// sha256 of a whole file (holes of a sparse file are not read).
pub fn hash_file(path: &Path) -> Result<String> {
    imgbuild_pack::file_sha256(path)
        .map(hex::encode)
        .map_err(Error::from)
}

/// sha256 of a local base image, remembered in `cache` (when given) by the file's identity:
/// device, inode, size, modification and change times. Any write to the file changes its change
/// time (which, unlike the modification time, cannot be set back), so a stale entry is never used;
/// a rebuild from the same file then skips reading it whole.
pub fn hash_base(path: &Path, cache: Option<&Path>) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let Some(cache) = cache else {
        return hash_file(path);
    };
    let meta = std::fs::metadata(path).context(|| format!("reading {}", path.display()))?;
    let identity = format!(
        "{} {} {} {}.{} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let dir = cache.join("base-sha256");
    let entry = dir.join(hex::encode(Sha256::digest(identity.as_bytes())));
    if let Ok(known) = std::fs::read_to_string(&entry) {
        if known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(known);
        }
    }
    let sha = hash_file(path)?;
    // Time stamps are coarse (a clock tick): a file changed within the last two seconds could
    // change again without its change time moving, so its hash is not remembered (as git does).
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    let settled = changed
        .elapsed()
        .is_ok_and(|age| age >= std::time::Duration::from_secs(2));
    if !settled {
        return Ok(sha);
    }
    // The entry is an optimisation: failing to store it must not fail the build.
    let stored = std::fs::create_dir_all(&dir).and_then(|()| {
        let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &sha).and_then(|()| std::fs::rename(&tmp, &entry))
    });
    if let Err(e) = stored {
        tracing::debug!(
            "not remembering the base's sha256 in {}: {e}",
            entry.display()
        );
    }
    Ok(sha)
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
    fn finish(mut self) -> (W, u64, String) {
        let _ = self.inner.flush();
        (self.inner, self.count, hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sha256sum(path: &Path) -> String {
        let out = Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    }

    #[test]
    fn base_hash_matches_sha256sum_is_remembered_and_follows_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        let base = dir.path().join("base.img");
        // sparse: data, a 3 MiB hole, data
        let f = File::create(&base).expect("base");
        f.set_len(5 << 20).expect("size");
        std::os::unix::fs::FileExt::write_all_at(&f, b"head", 0).expect("write");
        std::os::unix::fs::FileExt::write_all_at(&f, b"tail", (5 << 20) - 4).expect("write");
        drop(f);
        // a file changed in the last two seconds is hashed but not remembered
        let first = hash_base(&base, Some(&cache)).expect("hash");
        assert!(!cache.join("base-sha256").exists());
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(hash_base(&base, Some(&cache)).expect("hash"), first);
        assert_eq!(first, sha256sum(&base));
        let entries: Vec<_> = std::fs::read_dir(cache.join("base-sha256"))
            .expect("entries")
            .collect();
        assert_eq!(entries.len(), 1);
        // the remembered value is what a rebuild uses (the file is not read again)
        let entry = entries[0].as_ref().expect("entry").path();
        std::fs::write(&entry, "ab".repeat(32)).expect("tamper");
        assert_eq!(
            hash_base(&base, Some(&cache)).expect("hash"),
            "ab".repeat(32)
        );
        std::fs::write(&entry, &first).expect("restore");
        // same size, same mtime set back: the change time still moves
        let mtime = std::fs::metadata(&base)
            .expect("meta")
            .modified()
            .expect("mtime");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&base)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&f, b"HEAD", 0).expect("write");
        f.set_modified(mtime).expect("set mtime");
        drop(f);
        let second = hash_base(&base, Some(&cache)).expect("hash");
        assert_eq!(second, sha256sum(&base));
        assert_ne!(second, first);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert_eq!(hash_base(&base, Some(&cache)).expect("hash"), second);
        let entries = std::fs::read_dir(cache.join("base-sha256"))
            .expect("entries")
            .count();
        assert_eq!(entries, 2, "one entry per identity");
        assert_eq!(hash_base(&base, None).expect("hash"), second);
    }
}
