//! Packing a raw disk image into the artifacts users flash: a multi-block `.img.xz` compressed on
//! all cores with a content cache, and a bmaptool `.bmap`.
//!
//! # The .xz file
//! [`compress_xz`] cuts the raw image into fixed chunks ([`XzOptions::chunk_size`], 4 MiB by
//! default; the last one may be shorter) and compresses each independently on its own worker
//! thread into one xz *block*. The blocks are framed, in order, as one single-stream multi-block
//! .xz file with its index — what `xz -T0` writes: every xz decoder reads it, and since each block
//! header records the block's compressed and uncompressed sizes (as `xz -T` does), xz ≥ 5.4
//! decompresses it in parallel too. Block headers are even padded the way `xz -T` pads them, so
//! the output is byte for byte what `xz -T2 -<preset> --block-size=<chunk size>` writes for the
//! same raw bytes (a test checks this against the system's xz). An empty image gives a valid
//! stream with no blocks, byte for byte what `xz` writes for empty input.
//!
//! No LZMA2 is implemented here: each chunk is compressed by liblzma's easy encoder (the
//! `liblzma` crate, CRC64 check) into a complete single-block stream, which is then parsed (stream
//! header, block, index, footer, all CRCs checked) so that only its block is kept, with its header
//! rewritten to carry the sizes; this crate writes the stream header, index and footer itself.
//!
//! Output is written in order while workers run ahead at most two chunks per thread, so memory is
//! bounded by the number of threads, not by the image size: per thread about one liblzma encoder
//! (94 MiB at presets 5–6) plus three chunks ([`XzOptions::memory_per_thread`]);
//! [`XzOptions::memory_limit`] lowers the thread count to fit a budget.
//!
//! All-zero chunks (holes found with `SEEK_DATA`, or zero bytes found by comparison) are not
//! compressed: the zero block is made once per chunk length and reused.
//!
//! The output depends only on the raw bytes, the options (preset, extreme, chunk size) and the
//! liblzma the crate was built with (fixed by `Cargo.lock`): xz has no timestamps, and threads
//! only change when blocks are made, never their bytes or order.
//!
//! # The chunk cache
//! With a [`ChunkCache`], every non-zero chunk is hashed (SHA-256) and its block is looked up in
//! the cache before being compressed, and stored after. Keys also cover the preset, chunk size,
//! the crate's [`FORMAT_VERSION`] and a fingerprint of the encoder (see [`ChunkCache`]), so a
//! cached block is exactly what compressing would give. Files are written atomically (temporary
//! file + rename); damaged files are treated as misses.
//!
//! # Dirty tracking
//! Hashing a 2 GiB image still reads 2 GiB. The build pipeline avoids that for rebuilds on the
//! same base:
//! 1. When the base raw image is first decompressed, it computes its [`ChunkIndex`] (the SHA-256
//!    of every chunk, [`chunk_hashes`], on all cores) and stores it with
//!    [`ChunkCache::store_index`], keyed by the base image's SHA-256 and the chunk size.
//! 2. Each build copies the base raw image and records every byte range it writes (at the
//!    block-device layer under the FAT and ext4 writers) in a [`DirtyMap`] made from that index.
//! 3. [`compress_xz`] with the dirty map takes the base hash of each chunk that no write touched
//!    (without reading it), and reads and hashes only the touched chunks. Untouched chunks then
//!    come from the cache — populated by the build that first compressed the base contents — so
//!    a rebuild reads, hashes and compresses only what changed.
//!
//! # bmap
//! [`write_bmap`] writes bmaptool's XML format 2.0 with SHA-256 range checksums from the sparse
//! map of the raw image, byte for byte as `bmaptool create` would on the same file.

#![forbid(unsafe_code)]

mod bmap;
mod cache;
mod chunks;
mod compress;
mod dirty;
mod encode;
pub mod error;
mod parallel;
mod xzformat;

pub use bmap::{write_bmap, BmapStats, BMAP_VERSION};
pub use cache::{ChunkCache, ChunkIndex, FORMAT_VERSION};
pub use chunks::{chunk_hashes, file_sha256, Hash, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use compress::{compress_xz, XzOptions, XzStats, DEFAULT_CHUNK_SIZE};
pub use dirty::DirtyMap;
pub use error::{Error, Result};
pub use imgbuild_ranges::ByteRanges;
