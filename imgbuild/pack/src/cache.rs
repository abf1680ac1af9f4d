//! The on-disk cache of compressed blocks and of base-image chunk indexes.
//!
//! Layout under the cache directory:
//! - `chunks/xx/<key>`: one compressed block; `<key>` is the hex SHA-256 of the crate's
//!   [`FORMAT_VERSION`], an encoder fingerprint (the hash of a fixed sample compressed at the
//!   preset, so a liblzma that encodes differently never mixes its blocks with older ones), the
//!   preset, the chunk size and the SHA-256 of the raw chunk; `xx` is the key's first byte.
//!   The file is a 32-byte header (`IBPKBLK1`, unpadded size, uncompressed size, CRC32 of the
//!   block, reserved) followed by the block bytes. A file that fails these checks is a miss.
//! - `index/<base-sha256>-<chunk-size>.json`: a [`ChunkIndex`] of a base raw image.
//!
//! Every file is written to a temporary name in its final directory and renamed into place, so
//! readers see either nothing or a complete file, even with concurrent builds.

use crate::chunks::{check_chunk_size, chunk_count, chunk_hashes, sha256, Hash};
use crate::error::{bail, Context, Result};
use crate::xzformat::Block;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the cache layout and of the block format; part of every cache key.
pub const FORMAT_VERSION: u32 = 1;
const BLOCK_MAGIC: &[u8; 8] = b"IBPKBLK1";
const BLOCK_HEADER: usize = 32;
const INDEX_FORMAT: &str = "imgbuild-pack chunk index 1";

/// A directory of compressed xz blocks keyed by raw chunk content (see the module docs).
#[derive(Debug, Clone)]
pub struct ChunkCache {
    dir: PathBuf,
}

/// Everything besides the chunk's content that decides the bytes of its compressed block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockParams {
    /// Encoder fingerprint (see the module docs).
    pub encoder: Hash,
    /// Preset number 0..=9.
    pub preset: u32,
    /// Whether the extreme variant of the preset is used.
    pub extreme: bool,
    /// Chunk size of the image being compressed.
    pub chunk_size: u64,
}

impl ChunkCache {
    /// Opens (creating if needed) a cache rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<ChunkCache> {
        let dir = dir.into();
        for sub in ["chunks", "index"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)
                .context(|| format!("creating chunk cache directory {}", d.display()))?;
        }
        Ok(ChunkCache { dir })
    }

    /// The cache's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached block for a chunk with content hash `content` and `len` bytes, if present and
    /// intact.
    pub(crate) fn load_block(
        &self,
        content: &Hash,
        len: u64,
        p: &BlockParams,
    ) -> Result<Option<Block>> {
        let path = self.block_path(content, p);
        match fs::read(&path) {
            Ok(bytes) => Ok(decode_block(bytes, len)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => bail!("reading cached block {}: {e}", path.display()),
        }
    }

    /// Stores the block of a chunk with content hash `content`.
    pub(crate) fn store_block(&self, content: &Hash, block: &Block, p: &BlockParams) -> Result<()> {
        let path = self.block_path(content, p);
        let mut file = Vec::with_capacity(BLOCK_HEADER + block.bytes.len());
        file.extend_from_slice(BLOCK_MAGIC);
        file.extend_from_slice(&block.unpadded.to_le_bytes());
        file.extend_from_slice(&block.uncompressed.to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&block.bytes).to_le_bytes());
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&block.bytes);
        write_atomically(&path, &file)
    }

    /// The chunk index stored for the base image whose raw SHA-256 is `base`, if any.
    pub fn load_index(&self, base: &Hash, chunk_size: u64) -> Result<Option<ChunkIndex>> {
        let path = self.index_path(base, chunk_size);
        match fs::read_to_string(&path) {
            Ok(text) => ChunkIndex::from_json(&text).map(Some).context(|| {
                format!(
                    "reading chunk index {} (delete it to rebuild)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => bail!("reading chunk index {}: {e}", path.display()),
        }
    }

    /// Stores `index` as the chunk index of the base image whose raw SHA-256 is `base`.
    pub fn store_index(&self, base: &Hash, index: &ChunkIndex) -> Result<()> {
        write_atomically(
            &self.index_path(base, index.chunk_size),
            index.to_json().as_bytes(),
        )
    }

    fn block_path(&self, content: &Hash, p: &BlockParams) -> PathBuf {
        let mut key = Vec::with_capacity(96);
        key.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        key.extend_from_slice(&p.encoder);
        key.extend_from_slice(&p.preset.to_le_bytes());
        key.push(u8::from(p.extreme));
        key.extend_from_slice(&p.chunk_size.to_le_bytes());
        key.extend_from_slice(content);
        let key = hex::encode(sha256(&key));
        self.dir.join("chunks").join(&key[..2]).join(key)
    }

    fn index_path(&self, base: &Hash, chunk_size: u64) -> PathBuf {
        self.dir
            .join("index")
            .join(format!("{}-{chunk_size}.json", hex::encode(base)))
    }
}

/// Parses a cached block file; `None` when it is damaged or not for a chunk of `len` bytes.
fn decode_block(mut file: Vec<u8>, len: u64) -> Option<Block> {
    let header = file.get(..BLOCK_HEADER)?;
    let word = |at: usize| header[at..at + 8].try_into().ok().map(u64::from_le_bytes);
    let (unpadded, uncompressed) = (word(8)?, word(16)?);
    let crc: [u8; 4] = header[24..28].try_into().ok()?;
    if &header[..8] != BLOCK_MAGIC || uncompressed != len {
        return None;
    }
    let bytes = file.split_off(BLOCK_HEADER);
    let fits = unpadded.checked_add(3).map(|u| u & !3) == Some(bytes.len() as u64);
    (fits && crc32fast::hash(&bytes).to_le_bytes() == crc).then_some(Block {
        bytes,
        unpadded,
        uncompressed,
    })
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).context(|| format!("creating cache directory {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, path))
        .context(|| format!("writing cache file {}", path.display()));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The SHA-256 of every chunk of one raw image: computed once for a base image and stored beside
/// the cache, it lets [`crate::DirtyMap`] skip reading and hashing chunks no write touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    /// Chunk size the hashes were computed with.
    pub chunk_size: u64,
    /// Length of the image in bytes.
    pub image_len: u64,
    /// SHA-256 of each chunk, in order (the last chunk may be shorter than `chunk_size`).
    pub hashes: Vec<Hash>,
}

/// JSON form of a [`ChunkIndex`].
#[derive(Serialize, Deserialize)]
struct IndexFile {
    format: String,
    chunk_size: u64,
    image_len: u64,
    hashes: Vec<String>,
}

impl ChunkIndex {
    /// Hashes every chunk of `raw` (on all cores).
    pub fn compute(raw: &Path, chunk_size: u64) -> Result<ChunkIndex> {
        let image_len = fs::metadata(raw)
            .context(|| format!("reading the size of raw image {}", raw.display()))?
            .len();
        let hashes = chunk_hashes(raw, chunk_size)?;
        ChunkIndex::new(chunk_size, image_len, hashes)
    }

    /// Builds an index from hashes, checking that their number fits the image length.
    pub fn new(chunk_size: u64, image_len: u64, hashes: Vec<Hash>) -> Result<ChunkIndex> {
        check_chunk_size(chunk_size)?;
        let want = chunk_count(image_len, chunk_size);
        if hashes.len() != want {
            bail!(
                "chunk index has {} hashes but a {image_len}-byte image has {want} chunks of {chunk_size} bytes",
                hashes.len()
            );
        }
        Ok(ChunkIndex {
            chunk_size,
            image_len,
            hashes,
        })
    }

    /// The index as JSON (`format`, `chunk_size`, `image_len`, `hashes` as hex strings).
    pub fn to_json(&self) -> String {
        let file = IndexFile {
            format: INDEX_FORMAT.to_string(),
            chunk_size: self.chunk_size,
            image_len: self.image_len,
            hashes: self.hashes.iter().map(hex::encode).collect(),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// Parses the JSON written by [`ChunkIndex::to_json`].
    pub fn from_json(text: &str) -> Result<ChunkIndex> {
        let file: IndexFile = serde_json::from_str(text).context(|| "parsing chunk index JSON")?;
        if file.format != INDEX_FORMAT {
            bail!(
                "chunk index format is {:?}, expected {INDEX_FORMAT:?}",
                file.format
            );
        }
        let hashes = file
            .hashes
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .context(|| format!("chunk index hash {h:?} is not 64 hex digits"))?;
                Ok(out)
            })
            .collect::<Result<Vec<Hash>>>()?;
        ChunkIndex::new(file.chunk_size, file.image_len, hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_block_files_are_misses() {
        let block = Block {
            bytes: vec![1, 2, 3, 4, 5, 6, 7, 8],
            unpadded: 7,
            uncompressed: 99,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::new(dir.path()).expect("cache");
        let p = BlockParams {
            encoder: [7; 32],
            preset: 6,
            extreme: false,
            chunk_size: 4096,
        };
        let content = [1u8; 32];
        cache.store_block(&content, &block, &p).expect("store");
        assert_eq!(
            cache.load_block(&content, 99, &p).ok().flatten(),
            Some(block.clone())
        );
        assert_eq!(cache.load_block(&content, 98, &p).ok().flatten(), None);
        let path = cache.block_path(&content, &p);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert_eq!(cache.load_block(&content, 99, &p).ok().flatten(), None);
        fs::write(&path, &bytes[..10]).expect("write");
        assert_eq!(cache.load_block(&content, 99, &p).ok().flatten(), None);
    }

    #[test]
    fn index_json_round_trips_and_rejects_mismatches() {
        let index = ChunkIndex::new(4096, 10_000, vec![[1; 32], [2; 32], [3; 32]]).expect("index");
        assert_eq!(
            ChunkIndex::from_json(&index.to_json()).ok(),
            Some(index.clone())
        );
        assert!(ChunkIndex::new(4096, 10_000, vec![[1; 32]]).is_err());
        assert!(ChunkIndex::from_json("{").is_err());
        assert!(ChunkIndex::from_json(&index.to_json().replace("01", "zz")).is_err());
    }
}
