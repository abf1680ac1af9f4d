//! Pack: turn the patched working copy into the artifacts users flash and verify —
//! `NAME.img.xz` (or a sparse `NAME.img`), `NAME.img.xz.sha256`, `NAME.bmap` — written under
//! temporary names and renamed into place only when all of them are complete.

use crate::error::{Context, Error, Result};
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
                ..Default::default()
            };
            let (cache, dirty) = match incremental {
                Some(i) => (Some(&i.cache), Some(&i.dirty)),
                None => (None, None),
            };
            let stats = imgbuild_pack::compress_xz(raw, &mut out, &opts, cache, dirty)
                .map_err(|e| Error::msg(format!("compressing {}: {e}", raw.display())))?;
            tracing::info!(
                chunks = stats.chunks,
                compressed = stats.compressed_chunks,
                cache_hits = stats.cache_hits,
                hashed = stats.hashed_chunks,
                "compressed"
            );
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
}

impl Incremental {
    /// Prepares incremental packing of the working copy `raw` (still equal to the base image)
    /// under `cache_dir`: loads the base's chunk index (keyed by `base_sha256`) or computes and
    /// stores it.
    pub fn prepare(cache_dir: &Path, base_sha256: &str, raw: &Path) -> Result<Incremental> {
        let err = |e: imgbuild_pack::Error| {
            Error::msg(format!("chunk cache {}: {e}", cache_dir.display()))
        };
        let cache = imgbuild_pack::ChunkCache::new(cache_dir.join("chunks")).map_err(err)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(base_sha256, &mut key)
            .map_err(|e| Error::msg(format!("base sha256 {base_sha256:?}: {e}")))?;
        let size = imgbuild_pack::DEFAULT_CHUNK_SIZE;
        let index = match cache.load_index(&key, size).map_err(err)? {
            Some(i) => i,
            None => {
                let i = imgbuild_pack::ChunkIndex::compute(raw, size).map_err(err)?;
                cache.store_index(&key, &i).map_err(err)?;
                i
            }
        };
        Ok(Incremental {
            cache,
            dirty: imgbuild_pack::DirtyMap::new(index),
        })
    }

    /// Records the byte ranges the apply stage wrote.
    pub fn mark(&mut self, ranges: &[(u64, u64)]) {
        for (off, len) in ranges {
            self.dirty.mark(*off, *len);
        }
    }
}

/// The `sha256sum -c` line for a file: `HASH  NAME\n`.
pub fn sha256sum_line(sha: &str, file_name: &str) -> String {
    format!("{sha}  {file_name}\n")
}

/// sha256 of a whole file, streamed.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
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
