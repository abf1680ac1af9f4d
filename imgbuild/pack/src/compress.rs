//! The chunked parallel xz compressor.

use crate::cache::{BlockParams, ChunkCache};
use crate::chunks::{
    check_chunk_size, chunk_count, chunk_range, is_hole, is_zero, open_raw, read_range, sha256,
    Hash, ZeroHashes,
};
use crate::dirty::DirtyMap;
use crate::encode::{compress_block, encoder_memory, STREAM_FLAGS};
use crate::error::{bail, Error, IoContext, Result};
use crate::parallel::{default_threads, for_each_ordered};
use crate::xzformat::{index_and_footer, stream_header, Block};
use imgbuild_overlay::ImageRead;
use imgbuild_ranges::ByteRanges;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default chunk (= xz block) size: 4 MiB. Measured against 8 and 16 MiB at preset 6 on a
/// 600 MiB image (bench/RESULTS.md): 18 % less CPU than 16 MiB, half the encoder memory, and a
/// warm rebuild recompresses 4x fewer bytes per changed chunk; the output is ~4 % larger.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// How [`compress_xz`] compresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XzOptions {
    /// xz preset 0..=9 (default 6, like `xz`).
    pub preset: u32,
    /// The slower "extreme" variant of the preset (`xz -e`).
    pub extreme: bool,
    /// Bytes of raw image per xz block (default [`DEFAULT_CHUNK_SIZE`]).
    pub chunk_size: u64,
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// If set, fewer threads are used so that the estimate of
    /// [`XzOptions::memory_per_thread`] × threads stays below this many bytes (at least one).
    pub memory_limit: Option<u64>,
    /// Byte ranges of the raw image whose chunks never go through the cache (neither looked up
    /// nor stored): they hold secret bytes, which must not outlive the build in a cache file.
    pub never_cache: ByteRanges,
}

impl Default for XzOptions {
    fn default() -> XzOptions {
        XzOptions {
            preset: 6,
            extreme: false,
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            memory_limit: None,
            never_cache: ByteRanges::new(),
        }
    }
}

impl XzOptions {
    /// Estimated peak memory of one worker thread: the liblzma encoder (94 MiB at preset 6),
    /// the raw chunk, its compressed block and one finished block waiting to be written.
    pub fn memory_per_thread(&self) -> u64 {
        encoder_memory(self.preset) + 3 * self.chunk_size
    }

    /// The number of worker threads these options give on this machine.
    pub fn effective_threads(&self) -> usize {
        let wanted = if self.threads == 0 {
            default_threads()
        } else {
            self.threads
        };
        match self.memory_limit {
            Some(limit) => wanted.min((limit / self.memory_per_thread().max(1)).max(1) as usize),
            None => wanted,
        }
    }
}

/// What [`compress_xz`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XzStats {
    /// Chunks (= xz blocks) in the output.
    pub chunks: u64,
    /// Size of the raw image.
    pub raw_bytes: u64,
    /// Size of the .xz written.
    pub xz_bytes: u64,
    /// Worker threads used.
    pub threads: usize,
    /// Chunks that were all zeros (hole, zero bytes, or a base hash equal to the zero hash).
    pub zero_chunks: u64,
    /// Chunks whose bytes were read from the raw image.
    pub read_chunks: u64,
    /// Chunks whose SHA-256 was computed (only done when a cache is given).
    pub hashed_chunks: u64,
    /// Chunks whose SHA-256 was taken from the dirty map's base index instead.
    pub reused_hashes: u64,
    /// Blocks taken from the cache.
    pub cache_hits: u64,
    /// Times the encoder ran (the zero block counts once per chunk length, if not cached).
    pub compressed_chunks: u64,
    /// Chunks kept out of the cache because they overlap [`XzOptions::never_cache`].
    pub uncached_chunks: u64,
    /// Blocks that could not be stored in the cache (full disk, no permission): the build goes
    /// on without them.
    pub cache_write_errors: u64,
    /// The first of those errors, for a warning.
    pub first_cache_error: Option<String>,
}

/// Compresses the raw image at `raw` into `out` as one multi-block .xz stream, one block per
/// `opts.chunk_size` bytes, compressed on several threads; see the crate docs for the format,
/// the cache and dirty tracking. Returns what was done.
pub fn compress_xz(
    raw: &Path,
    out: &mut dyn Write,
    opts: &XzOptions,
    cache: Option<&ChunkCache>,
    dirty: Option<&DirtyMap>,
) -> Result<XzStats> {
    let (file, _) = open_raw(raw)?;
    compress_xz_from(&file, raw, out, opts, cache, dirty)
}

/// [`compress_xz`] over any [`ImageRead`] (a file, or an `imgbuild_overlay::Overlay`: its dirty
/// chunks are read from the overlay, clean ones come from the cache by the base's hashes);
/// `name` names the image in errors.
pub fn compress_xz_from(
    src: &dyn ImageRead,
    name: &Path,
    out: &mut dyn Write,
    opts: &XzOptions,
    cache: Option<&ChunkCache>,
    dirty: Option<&DirtyMap>,
) -> Result<XzStats> {
    let raw = name;
    check_chunk_size(opts.chunk_size)?;
    if opts.preset > 9 {
        bail!(
            InvalidInput,
            "xz preset {} is out of range: use 0..=9",
            opts.preset
        );
    }
    if let Some(d) = dirty {
        if d.base().chunk_size != opts.chunk_size {
            bail!(
                InvalidInput,
                "dirty map's base index uses {}-byte chunks but compression uses {}: recompute the index",
                d.base().chunk_size,
                opts.chunk_size
            );
        }
    }
    let len = src
        .image_len()
        .on(raw, || "reading the size of raw image".into())?;
    let job = Job::new(raw, src, len, opts, cache, dirty)?;
    let count = chunk_count(len, opts.chunk_size);
    let threads = opts.effective_threads().clamp(1, count.max(1));

    let mut written = 0u64;
    let mut emit = |bytes: &[u8]| -> Result<()> {
        written += bytes.len() as u64;
        out.write_all(bytes).map_err(|source| Error::Output {
            doing: "writing the .xz output",
            source,
        })
    };
    emit(&stream_header(STREAM_FLAGS))?;
    let mut records = Vec::with_capacity(count);
    for_each_ordered(
        count,
        threads,
        2 * threads,
        Vec::new,
        |i, buf| job.chunk(i, buf),
        |block| {
            records.push((block.unpadded, block.uncompressed));
            emit(&block.bytes)
        },
    )?;
    emit(&index_and_footer(&records, STREAM_FLAGS))?;
    out.flush().map_err(|source| Error::Output {
        doing: "flushing the .xz output",
        source,
    })?;

    let c = &job.counters;
    Ok(XzStats {
        chunks: count as u64,
        raw_bytes: len,
        xz_bytes: written,
        threads,
        zero_chunks: c.zero.load(Ordering::Relaxed),
        read_chunks: c.read.load(Ordering::Relaxed),
        hashed_chunks: c.hashed.load(Ordering::Relaxed),
        reused_hashes: c.reused.load(Ordering::Relaxed),
        cache_hits: c.hits.load(Ordering::Relaxed),
        compressed_chunks: c.compressed.load(Ordering::Relaxed),
        uncached_chunks: c.uncached.load(Ordering::Relaxed),
        cache_write_errors: c.write_errors.load(Ordering::Relaxed),
        first_cache_error: job.first_error.lock().ok().and_then(|mut e| e.take()),
    })
}

/// Shared counters behind [`XzStats`].
#[derive(Default)]
struct Counters {
    zero: AtomicU64,
    read: AtomicU64,
    hashed: AtomicU64,
    reused: AtomicU64,
    hits: AtomicU64,
    compressed: AtomicU64,
    uncached: AtomicU64,
    write_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Everything a worker needs to turn chunk `i` into its block.
struct Job<'a> {
    raw: &'a Path,
    file: &'a dyn ImageRead,
    len: u64,
    opts: &'a XzOptions,
    cache: Option<(&'a ChunkCache, BlockParams)>,
    dirty: Option<&'a DirtyMap>,
    zero_hashes: ZeroHashes,
    /// The zero block per chunk length (at most two lengths).
    zero_blocks: Mutex<Vec<Arc<Block>>>,
    counters: Counters,
    /// The first cache write error.
    first_error: Mutex<Option<String>>,
}

impl<'a> Job<'a> {
    fn new(
        raw: &'a Path,
        file: &'a dyn ImageRead,
        len: u64,
        opts: &'a XzOptions,
        cache: Option<&'a ChunkCache>,
        dirty: Option<&'a DirtyMap>,
    ) -> Result<Job<'a>> {
        let cache = match cache {
            Some(c) => Some((c, block_params(opts)?)),
            None => None,
        };
        Ok(Job {
            raw,
            file,
            len,
            opts,
            cache,
            dirty,
            zero_hashes: ZeroHashes::default(),
            zero_blocks: Mutex::new(Vec::new()),
            counters: Counters::default(),
            first_error: Mutex::new(None),
        })
    }

    /// The block of chunk `i`, using `buf` for its raw bytes when they must be read.
    fn chunk(&self, i: usize, buf: &mut Vec<u8>) -> Result<Arc<Block>> {
        let range = chunk_range(i, self.len, self.opts.chunk_size);
        let size = range.end - range.start;
        if self.secret(&range) {
            bump(&self.counters.uncached);
            self.read(&range, buf)?;
            return self.compress(buf, None);
        }
        if let Some(hash) = self.dirty.and_then(|d| d.clean_hash(i, &range)) {
            bump(&self.counters.reused);
            if hash == self.zero_hashes.get(size) {
                return self.zero_block(size);
            }
            if let Some(block) = self.cached(&hash, size)? {
                return Ok(block);
            }
            self.read(&range, buf)?;
            return self.compress(buf, Some(&hash));
        }
        if is_hole(self.file, &range) {
            return self.zero_block(size);
        }
        self.read(&range, buf)?;
        if is_zero(buf) {
            return self.zero_block(size);
        }
        if self.cache.is_none() {
            return self.compress(buf, None);
        }
        bump(&self.counters.hashed);
        let hash = sha256(buf);
        match self.cached(&hash, size)? {
            Some(block) => Ok(block),
            None => self.compress(buf, Some(&hash)),
        }
    }

    /// Whether chunk `range` overlaps a [`XzOptions::never_cache`] range (only matters with a
    /// cache).
    fn secret(&self, range: &Range<u64>) -> bool {
        self.cache.is_some()
            && self
                .opts
                .never_cache
                .overlaps(range.start, range.end - range.start)
    }

    fn read(&self, range: &Range<u64>, buf: &mut Vec<u8>) -> Result<()> {
        bump(&self.counters.read);
        read_range(self.file, range, buf, self.raw)
    }

    /// The cached block for content `hash`, if there is a cache and it has one.
    fn cached(&self, hash: &Hash, size: u64) -> Result<Option<Arc<Block>>> {
        let Some((cache, params)) = &self.cache else {
            return Ok(None);
        };
        let block = cache.load_block(hash, size, params);
        if block.is_some() {
            bump(&self.counters.hits);
        }
        Ok(block.map(Arc::new))
    }

    /// Compresses `data`, storing the block in the cache under `hash` when both are present.
    fn compress(&self, data: &[u8], hash: Option<&Hash>) -> Result<Arc<Block>> {
        bump(&self.counters.compressed);
        let block = compress_block(
            data,
            self.opts.preset,
            self.opts.extreme,
            self.opts.chunk_size,
        )
        .map_err(|e| e.context(format!("compressing {}", self.raw.display())))?;
        if let (Some((cache, params)), Some(hash)) = (&self.cache, hash) {
            if let Err(e) = cache.store_block(hash, &block, params) {
                bump(&self.counters.write_errors);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        Ok(Arc::new(block))
    }

    /// The block of `size` zero bytes: made (or fetched from the cache) once, then shared.
    fn zero_block(&self, size: u64) -> Result<Arc<Block>> {
        bump(&self.counters.zero);
        let Ok(mut memo) = self.zero_blocks.lock() else {
            bail!(Worker, "a worker thread failed while making the zero block");
        };
        if let Some(block) = memo.iter().find(|b| b.uncompressed == size) {
            return Ok(Arc::clone(block));
        }
        let hash = self.zero_hashes.get(size);
        let block = match self.cached(&hash, size)? {
            Some(block) => block,
            None => self.compress(&vec![0u8; size as usize], Some(&hash))?,
        };
        memo.push(Arc::clone(&block));
        Ok(block)
    }
}

/// Fixed sample compressed to fingerprint the encoder (text-like with repeats, then noise).
fn fingerprint_sample() -> Vec<u8> {
    let mut seed = 0x9E37_79B9_u32;
    let mut sample: Vec<u8> = b"imgbuild-pack encoder fingerprint: the quick brown fox. "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    sample.extend((0..64 * 1024).map(|i| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        if i % 3 == 0 {
            (seed >> 24) as u8
        } else {
            b'a' + (seed % 7) as u8
        }
    }));
    sample
}

/// The parameters of cache keys for `opts`, with the encoder fingerprint.
fn block_params(opts: &XzOptions) -> Result<BlockParams> {
    let block = compress_block(
        &fingerprint_sample(),
        opts.preset,
        opts.extreme,
        opts.chunk_size,
    )
    .map_err(|e| e.context("fingerprinting the xz encoder"))?;
    Ok(BlockParams {
        encoder: sha256(&block.bytes),
        preset: opts.preset,
        extreme: opts.extreme,
        chunk_size: opts.chunk_size,
    })
}
