//! The on-disk cache of compressed blocks and of base-image chunk indexes.
//!
//! Layout under the cache directory:
//! - `chunks/xx/<key>`: one compressed block; `<key>` is the hex SHA-256 of the crate's
//!   [`FORMAT_VERSION`], an encoder fingerprint (the hash of a fixed sample compressed at the
//!   preset, so a liblzma that encodes differently never mixes its blocks with older ones), the
//!   preset, the chunk size and the SHA-256 of the raw chunk; `xx` is the key's first byte.
//!   The file is a 32-byte header (`IBPKBLK1`, unpadded size, uncompressed size, CRC32 of the
//!   block, reserved) followed by the block bytes.
//! - `index/<base-sha256>-<chunk-size>.json`: a [`ChunkIndex`] of a base raw image, with a
//!   checksum over its fields.
//!
//! Integrity: a block is used only after it has been decompressed and the SHA-256 of what it
//! decodes to equals the content hash it was looked up by, so a swapped, truncated or
//! bit-flipped file can never put other bytes into an image: it is a miss, and it is deleted.
//! The verdict is remembered as `verified/xx/<key>` = the SHA-256 of the block file's bytes:
//! a later use hashes the compressed bytes and decodes again only when they changed (a
//! writer of the cache directory could forge the memo, as it could forge any check stored
//! there; the directories are 0700).
//! An index that does not parse or whose checksum does not match is a miss too (deleted, then
//! recomputed from the image).
//!
//! Every file is written to a temporary name in its final directory and renamed into place, so
//! readers see either nothing or a complete file, even with concurrent builds; an index is
//! synced to disk before the rename, and the directory after it. Directories are created 0700.

use crate::chunks::{check_chunk_size, chunk_count, chunk_hashes, sha256, Hash};
use crate::encode::STREAM_FLAGS;
use crate::error::{bail, IoContext, Result};
use crate::xzformat::{index_and_footer, stream_header, Block};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the cache layout and of the block format; part of every cache key.
pub const FORMAT_VERSION: u32 = 1;
const BLOCK_MAGIC: &[u8; 8] = b"IBPKBLK1";
const BLOCK_HEADER: usize = 32;
const INDEX_FORMAT: &str = "imgbuild-pack chunk index 2";

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
            create_private_dir(&d).on(&d, || "creating chunk cache directory".into())?;
        }
        Ok(ChunkCache { dir })
    }

    /// The cache's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached block for a chunk with content hash `content` and `len` bytes, if present and
    /// intact: its header checks pass and it decompresses to `len` bytes whose SHA-256 is
    /// `content`. A file that fails any check is deleted (a miss); a file that cannot be read is
    /// a miss too (the cache is an optimisation).
    pub(crate) fn load_block(&self, content: &Hash, len: u64, p: &BlockParams) -> Option<Block> {
        let path = self.block_path(content, p);
        let memo = self.verified_path(&path);
        let bytes = fs::read(&path).ok()?;
        // A block file whose exact bytes were verified before needs no second decoding: hashing
        // the compressed bytes is several times cheaper than decompressing and hashing them.
        let file_hash = sha256(&bytes);
        let verified = fs::read(&memo).is_ok_and(|m| m == file_hash);
        let block = decode_block(bytes, len).filter(|b| verified || decodes_to(b, content, len));
        match &block {
            None => {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_file(&memo);
            }
            // Not synced: a torn memo does not match and the block is verified again.
            Some(_) if !verified => {
                let _ = write_atomically(&memo, &file_hash, false);
            }
            Some(_) => {}
        }
        block
    }

    /// Where the verdict "these exact block-file bytes decode to their content hash" is kept:
    /// `verified/xx/<key>`, holding the SHA-256 of the block file that passed.
    fn verified_path(&self, block: &Path) -> PathBuf {
        let key = block.file_name().map(PathBuf::from).unwrap_or_default();
        let sub = block
            .parent()
            .and_then(Path::file_name)
            .map(PathBuf::from)
            .unwrap_or_default();
        self.dir.join("verified").join(sub).join(key)
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
        // Not synced: a block torn by a crash fails its checks on load and is a miss.
        write_atomically(&path, &file, false)
    }

    /// The chunk index stored for the base image whose raw SHA-256 is `base`, if there is an
    /// intact one for `chunk_size`. A damaged index (does not parse, checksum or chunk size does
    /// not match) is deleted and `None` returned, as is any file that cannot be read: the caller
    /// recomputes it.
    pub fn load_index(&self, base: &Hash, chunk_size: u64) -> Option<ChunkIndex> {
        let path = self.index_path(base, chunk_size);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(_) => {
                let _ = fs::remove_file(&path);
                return None;
            }
        };
        match ChunkIndex::from_json(&text) {
            Ok(i) if i.chunk_size == chunk_size => Some(i),
            _ => {
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `index` as the chunk index of the base image whose raw SHA-256 is `base`: written
    /// to a temporary file, synced, renamed into place, and the directory synced.
    pub fn store_index(&self, base: &Hash, index: &ChunkIndex) -> Result<()> {
        let path = self.index_path(base, index.chunk_size);
        write_atomically(&path, index.to_json().as_bytes(), true)
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

/// Whether `block` decompresses to exactly `len` bytes whose SHA-256 is `content`.
fn decodes_to(block: &Block, content: &Hash, len: u64) -> bool {
    let mut stream = Vec::with_capacity(block.bytes.len() + 64);
    stream.extend_from_slice(&stream_header(STREAM_FLAGS));
    stream.extend_from_slice(&block.bytes);
    stream.extend_from_slice(&index_and_footer(
        &[(block.unpadded, block.uncompressed)],
        STREAM_FLAGS,
    ));
    let Ok(capacity) = usize::try_from(len) else {
        return false;
    };
    let mut out = Vec::with_capacity(capacity);
    // One byte more than expected is read so that a longer output is noticed, not truncated.
    let decoded = liblzma::read::XzDecoder::new(stream.as_slice())
        .take(len.saturating_add(1))
        .read_to_end(&mut out);
    decoded.is_ok() && out.len() as u64 == len && sha256(&out) == *content
}

/// Creates `dir` and its missing parents with mode 0700 (existing ones keep their mode).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename; with
/// `durable`, the file is synced before the rename and the directory after it.
fn write_atomically(path: &Path, data: &[u8], durable: bool) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir).on(dir, || "creating cache directory".into())?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            if durable {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| match durable {
            true => fs::File::open(dir).and_then(|d| d.sync_all()),
            false => Ok(()),
        })
        .on(path, || "writing cache file".into());
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
    /// SHA-256 over the chunk size, image length and hashes ([`ChunkIndex::checksum`]).
    check: String,
}

impl ChunkIndex {
    /// Hashes every chunk of `raw` (on all cores).
    pub fn compute(raw: &Path, chunk_size: u64) -> Result<ChunkIndex> {
        let image_len = fs::metadata(raw)
            .on(raw, || "reading the size of raw image".into())?
            .len();
        let hashes = chunk_hashes(raw, chunk_size)?;
        ChunkIndex::new(chunk_size, image_len, hashes)
    }

    /// Builds an index from hashes, checking that their number fits the image length.
    pub fn new(chunk_size: u64, image_len: u64, hashes: Vec<Hash>) -> Result<ChunkIndex> {
        check_chunk_size(chunk_size)?;
        let want = chunk_count(image_len, chunk_size);
        if hashes.len() != want {
            bail!(CorruptIndex,
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
            check: hex::encode(self.checksum()),
        };
        serde_json::to_string(&file).unwrap_or_default()
    }

    /// Parses the JSON written by [`ChunkIndex::to_json`].
    pub fn from_json(text: &str) -> Result<ChunkIndex> {
        let file: IndexFile = serde_json::from_str(text)?;
        if file.format != INDEX_FORMAT {
            bail!(
                CorruptIndex,
                "chunk index format is {:?}, expected {INDEX_FORMAT:?}",
                file.format
            );
        }
        let hashes = file
            .hashes
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                if hex::decode_to_slice(h, &mut out).is_err() {
                    bail!(CorruptIndex, "chunk index hash {h:?} is not 64 hex digits");
                }
                Ok(out)
            })
            .collect::<Result<Vec<Hash>>>()?;
        let index = ChunkIndex::new(file.chunk_size, file.image_len, hashes)?;
        if file.check != hex::encode(index.checksum()) {
            bail!(
                CorruptIndex,
                "chunk index checksum does not match its contents"
            );
        }
        Ok(index)
    }

    /// SHA-256 over the chunk size, the image length and every hash: detects a damaged index
    /// (one that parses but had bytes changed).
    fn checksum(&self) -> Hash {
        let mut all = Vec::with_capacity(16 + 32 * self.hashes.len());
        all.extend_from_slice(&self.chunk_size.to_le_bytes());
        all.extend_from_slice(&self.image_len.to_le_bytes());
        for h in &self.hashes {
            all.extend_from_slice(h);
        }
        sha256(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_swapped_or_foreign_block_files_are_misses_and_deleted() {
        let a_data = b"chunk a ".repeat(512);
        let b_data = b"chunk b ".repeat(512);
        let (a, b) = (sha256(&a_data), sha256(&b_data));
        let block_of = |d: &[u8]| crate::encode::compress_block(d, 1, false, 4096).expect("xz");
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::new(dir.path()).expect("cache");
        let p = BlockParams {
            encoder: [7; 32],
            preset: 1,
            extreme: false,
            chunk_size: 4096,
        };
        cache
            .store_block(&a, &block_of(&a_data), &p)
            .expect("store");
        cache
            .store_block(&b, &block_of(&b_data), &p)
            .expect("store");
        let len = a_data.len() as u64;
        assert_eq!(cache.load_block(&a, len, &p), Some(block_of(&a_data)));
        assert_eq!(cache.load_block(&a, len - 1, &p), None, "length mismatch");
        // A wrong length is a miss that deletes the entry.
        assert!(!cache.block_path(&a, &p).exists());
        // Swapped files: valid blocks, but for the other content.
        cache
            .store_block(&a, &block_of(&a_data), &p)
            .expect("store");
        let (pa, pb) = (cache.block_path(&a, &p), cache.block_path(&b, &p));
        let (fa, fb) = (fs::read(&pa).expect("read"), fs::read(&pb).expect("read"));
        fs::write(&pa, &fb).expect("write");
        fs::write(&pb, &fa).expect("write");
        assert_eq!(cache.load_block(&a, len, &p), None);
        assert_eq!(cache.load_block(&b, len, &p), None);
        assert!(!pa.exists() && !pb.exists(), "bad entries are removed");
        // A flipped byte whose CRC32 is fixed up: only decoding and hashing catch it.
        cache
            .store_block(&a, &block_of(&a_data), &p)
            .expect("store");
        let mut bytes = fs::read(&pa).expect("read");
        let at = BLOCK_HEADER + 20;
        bytes[at] ^= 1;
        let crc = crc32fast::hash(&bytes[BLOCK_HEADER..]).to_le_bytes();
        bytes[24..28].copy_from_slice(&crc);
        fs::write(&pa, &bytes).expect("write");
        assert_eq!(cache.load_block(&a, len, &p), None);
        // A block verified once (memo written), then flipped with its CRC32 fixed up: the memo
        // no longer matches the file's bytes, so it is decoded again and refused.
        cache
            .store_block(&a, &block_of(&a_data), &p)
            .expect("store");
        assert_eq!(cache.load_block(&a, len, &p), Some(block_of(&a_data)));
        assert!(
            cache.verified_path(&pa).exists(),
            "the verdict is remembered"
        );
        assert_eq!(cache.load_block(&a, len, &p), Some(block_of(&a_data)));
        let mut bytes = fs::read(&pa).expect("read");
        bytes[at] ^= 1;
        let crc = crc32fast::hash(&bytes[BLOCK_HEADER..]).to_le_bytes();
        bytes[24..28].copy_from_slice(&crc);
        fs::write(&pa, &bytes).expect("write");
        assert_eq!(cache.load_block(&a, len, &p), None);
        assert!(
            !cache.verified_path(&pa).exists(),
            "the stale verdict is removed"
        );
        // Truncated.
        cache
            .store_block(&a, &block_of(&a_data), &p)
            .expect("store");
        let bytes = fs::read(&pa).expect("read");
        fs::write(&pa, &bytes[..10]).expect("write");
        assert_eq!(cache.load_block(&a, len, &p), None);
        assert!(!pa.exists());
    }

    #[test]
    fn damaged_index_is_a_miss_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::new(dir.path()).expect("cache");
        let index = ChunkIndex::new(4096, 10_000, vec![[1; 32], [2; 32], [3; 32]]).expect("index");
        let base = [9u8; 32];
        cache.store_index(&base, &index).expect("store");
        assert_eq!(cache.load_index(&base, 4096), Some(index.clone()));
        assert_eq!(cache.load_index(&base, 8192), None);
        let path = cache.index_path(&base, 4096);
        let text = fs::read_to_string(&path).expect("read");
        // Two hashes swapped: still valid JSON, the checksum no longer matches.
        let swapped = text
            .replace(&"01".repeat(32), "XX")
            .replace(&"02".repeat(32), &"01".repeat(32))
            .replace("XX", &"02".repeat(32));
        fs::write(&path, swapped).expect("write");
        assert_eq!(cache.load_index(&base, 4096), None);
        assert!(!path.exists(), "a damaged index is removed");
        cache.store_index(&base, &index).expect("store");
        fs::write(&path, &text[..text.len() / 2]).expect("truncate");
        assert_eq!(cache.load_index(&base, 4096), None);
        fs::write(&path, "").expect("empty");
        assert_eq!(cache.load_index(&base, 4096), None);
        assert!(!path.exists());
        let stray: Vec<_> = fs::read_dir(dir.path().join("index"))
            .expect("ls")
            .collect();
        assert!(stray.is_empty(), "no temporary files left: {stray:?}");
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
