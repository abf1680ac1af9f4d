//! Cutting a raw image into fixed-size chunks: ranges, reading, zero and hole detection, hashing.

use crate::error::{bail, IoContext, Result};
use crate::parallel::{default_threads, for_each_ordered};
use imgbuild_overlay::ImageRead;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Smallest chunk size accepted (one 4 KiB block).
pub const MIN_CHUNK_SIZE: u64 = 4096;
/// Largest chunk size accepted (chunks are held in memory, several per thread).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// A buffer of zeros to compare chunks against (memcmp is faster than a byte loop).
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Checks that a chunk size is within [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
pub(crate) fn check_chunk_size(chunk_size: u64) -> Result<()> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        bail!(InvalidInput,
            "chunk size {chunk_size} is out of range: use {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes"
        );
    }
    Ok(())
}

/// Number of chunks of `chunk_size` in an image of `len` bytes (the last one may be shorter).
pub(crate) fn chunk_count(len: u64, chunk_size: u64) -> usize {
    len.div_ceil(chunk_size) as usize
}

/// Byte range of chunk `i`.
pub(crate) fn chunk_range(i: usize, len: u64, chunk_size: u64) -> Range<u64> {
    let start = i as u64 * chunk_size;
    start..(start + chunk_size).min(len)
}

/// Whether every byte of `buf` is zero.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// Whether `range` of the image `src` lies entirely in a hole (so reads as zeros without being
/// read). File systems without hole support report everything as data, which is merely slower.
pub(crate) fn is_hole(src: &dyn ImageRead, range: &Range<u64>) -> bool {
    src.image_hole(range.start, range.end - range.start)
}

/// Reads `range` of the image `src` (named `path` in errors) into `buf` (resized to fit).
pub(crate) fn read_range(
    src: &dyn ImageRead,
    range: &Range<u64>,
    buf: &mut Vec<u8>,
    path: &Path,
) -> Result<()> {
    buf.resize((range.end - range.start) as usize, 0);
    src.read_image_at(buf, range.start).on(path, || {
        format!("reading bytes {}..{} of", range.start, range.end)
    })
}

/// SHA-256 of a whole file as `sha256sum` computes it, read in 1 MiB pieces; pieces that lie
/// in a hole of a sparse file are hashed as zeros without being read.
pub fn file_sha256(path: &Path) -> Result<Hash> {
    const PIECE: u64 = 1 << 20;
    let file = File::open(path).on(path, || "opening".into())?;
    let len = file
        .metadata()
        .on(path, || "reading the size of".into())?
        .len();
    let zeros = vec![0u8; PIECE as usize];
    let mut buf = Vec::with_capacity(PIECE as usize);
    let mut hasher = Sha256::new();
    let mut start = 0;
    while start < len {
        let range = start..len.min(start + PIECE);
        let n = (range.end - range.start) as usize;
        if is_hole(&file, &range) {
            hasher.update(&zeros[..n]);
        } else {
            read_range(&file, &range, &mut buf, path)?;
            hasher.update(&buf);
        }
        start = range.end;
    }
    Ok(hasher.finalize().into())
}

/// SHA-256 of `buf`.
pub(crate) fn sha256(buf: &[u8]) -> Hash {
    Sha256::digest(buf).into()
}

/// SHA-256 of `len` zero bytes, memoised per length (an image has at most two chunk lengths).
#[derive(Default)]
pub(crate) struct ZeroHashes(Mutex<Vec<(u64, Hash)>>);

impl ZeroHashes {
    /// The hash of `len` zeros.
    pub(crate) fn get(&self, len: u64) -> Hash {
        if let Ok(memo) = self.0.lock() {
            if let Some(&(_, h)) = memo.iter().find(|(l, _)| *l == len) {
                return h;
            }
        }
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            hasher.update(&ZEROS[..n]);
            left -= n as u64;
        }
        let h: Hash = hasher.finalize().into();
        if let Ok(mut memo) = self.0.lock() {
            memo.push((len, h));
        }
        h
    }
}

/// Opens a raw image and returns it with its length.
pub(crate) fn open_raw(raw: &Path) -> Result<(File, u64)> {
    let file = File::open(raw).on(raw, || "opening raw image".into())?;
    let len = file
        .metadata()
        .on(raw, || "reading the size of raw image".into())?
        .len();
    Ok((file, len))
}

/// SHA-256 of every `chunk_size` chunk of `raw` (the last one may be shorter), computed on all
/// cores. Chunks that lie in a hole are not read.
pub fn chunk_hashes(raw: &Path, chunk_size: u64) -> Result<Vec<Hash>> {
    check_chunk_size(chunk_size)?;
    let (file, len) = open_raw(raw)?;
    let count = chunk_count(len, chunk_size);
    let threads = default_threads();
    let zeros = ZeroHashes::default();
    let mut hashes = Vec::with_capacity(count);
    for_each_ordered(
        count,
        threads,
        2 * threads,
        Vec::new,
        |i, buf| {
            let range = chunk_range(i, len, chunk_size);
            if is_hole(&file, &range) {
                return Ok(zeros.get(range.end - range.start));
            }
            read_range(&file, &range, buf, raw)?;
            Ok(sha256(buf))
        },
        |h| {
            hashes.push(h);
            Ok(())
        },
    )?;
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_image_once() {
        assert_eq!(chunk_count(0, 4096), 0);
        assert_eq!(chunk_count(10_000, 4096), 3);
        assert_eq!(chunk_range(2, 10_000, 4096), 8192..10_000);
    }

    #[test]
    fn zero_detection_and_zero_hashes() {
        let mut buf = vec![0u8; 200_000];
        assert!(is_zero(&buf));
        buf[199_999] = 1;
        assert!(!is_zero(&buf));
        assert_eq!(
            ZeroHashes::default().get(200_000),
            sha256(&vec![0u8; 200_000])
        );
    }
}
