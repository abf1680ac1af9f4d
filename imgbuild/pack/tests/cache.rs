//! The chunk cache and dirty tracking: what is read, hashed and compressed, and that the output
//! stays byte-identical to a cold run.

mod common;

use common::*;
use imgbuild_pack::{chunk_hashes, compress_xz, ByteRanges, ChunkCache, ChunkIndex, DirtyMap};

const CHUNK: u64 = 256 * 1024;

#[test]
fn a_second_run_with_the_cache_compresses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    standard_image(&raw);
    let cache = ChunkCache::new(dir.path().join("cache")).expect("cache");
    let (cold, first) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    let zeros = zero_chunks(&raw, CHUNK);
    let data_chunks = first.chunks - zeros;
    assert_eq!(first.cache_hits, 0);
    assert_eq!(
        first.hashed_chunks, data_chunks,
        "only non-zero chunks are hashed"
    );
    assert_eq!(first.compressed_chunks, data_chunks + 1);

    let (warm, second) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    assert_eq!(second.compressed_chunks, 0, "{second:?}");
    assert_eq!(
        second.cache_hits,
        data_chunks + 1,
        "every data block and the zero block are hits"
    );
    assert_eq!(warm, cold, "cached output differs from the cold output");

    let (uncached, _) = compress(&raw, &opts(CHUNK), None, None);
    assert_eq!(uncached, cold, "the cache changed the output");
}

#[test]
fn damaged_cache_files_are_recompressed_not_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    standard_image(&raw);
    let cache_dir = dir.path().join("cache");
    let cache = ChunkCache::new(&cache_dir).expect("cache");
    let (cold, _) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    let mut damaged = 0;
    for sub in std::fs::read_dir(cache_dir.join("chunks")).expect("ls") {
        for f in std::fs::read_dir(sub.expect("entry").path()).expect("ls") {
            let path = f.expect("entry").path();
            let mut bytes = std::fs::read(&path).expect("read");
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            std::fs::write(&path, bytes).expect("write");
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let (again, stats) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    assert_eq!(stats.cache_hits, 0);
    assert_eq!(again, cold);
}

/// Chunks of an image of `len` bytes that overlap any of `ranges`.
fn touched(len: u64, ranges: &ByteRanges) -> u64 {
    (0..len.div_ceil(CHUNK))
        .filter(|i| {
            let (s, e) = (i * CHUNK, ((i + 1) * CHUNK).min(len));
            ranges.overlaps(s, e - s)
        })
        .count() as u64
}

#[test]
fn dirty_map_reads_only_touched_chunks_and_matches_a_cold_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    let len = standard_image(&base);
    let cache = ChunkCache::new(dir.path().join("cache")).expect("cache");

    // Base build: index the base image and fill the cache with its blocks.
    let index = ChunkIndex::compute(&base, CHUNK).expect("index");
    assert_eq!(index.hashes, chunk_hashes(&base, CHUNK).expect("hashes"));
    let base_sha = [0xAB; 32];
    cache.store_index(&base_sha, &index).expect("store index");
    compress(&base, &opts(CHUNK), Some(&cache), None);

    // Rebuild: a copy of the base with a few writes, recorded in the dirty map.
    let image = dir.path().join("image.img");
    std::fs::copy(&base, &image).expect("copy base");
    let loaded = cache.load_index(&base_sha, CHUNK).expect("index present");
    assert_eq!(loaded, index);
    let mut dirty = DirtyMap::new(loaded);
    let writes: [(u64, &[u8]); 3] = [
        (100_000, b"new file contents"),
        (2 * CHUNK - 3, b"straddles two chunks"),
        (1200 * 1024, b"into zeros"),
    ];
    for (offset, bytes) in writes {
        patch(&image, offset, bytes);
        dirty.mark(offset, bytes.len() as u64);
    }
    let ranges = dirty.ranges().clone();
    let (warm, stats) = compress(&image, &opts(CHUNK), Some(&cache), Some(&dirty));

    let n = touched(len, &ranges);
    assert_eq!(n, 4);
    assert_eq!(stats.read_chunks, n, "{stats:?}");
    assert_eq!(stats.hashed_chunks, n);
    assert_eq!(stats.reused_hashes, stats.chunks - n);
    assert_eq!(
        stats.compressed_chunks, n,
        "only the changed chunks are compressed"
    );

    let (cold, _) = compress(&image, &opts(CHUNK), None, None);
    assert_eq!(
        warm, cold,
        "incremental output differs from a cold build of the same bytes"
    );
    assert_eq!(
        sha256_hex(&run("xz", &["-dc"], Some(&warm))),
        file_sha256(&image)
    );
}

#[test]
fn dirty_map_handles_a_grown_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    let len = standard_image(&base);
    let image = dir.path().join("image.img");
    std::fs::copy(&base, &image).expect("copy base");
    let grown = len + 3 * CHUNK;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .expect("open")
        .set_len(grown)
        .expect("grow");
    patch(&image, grown - 10, b"tail bytes");
    let mut dirty = DirtyMap::new(ChunkIndex::compute(&base, CHUNK).expect("index"));
    dirty.mark(len, grown - len);
    let (warm, stats) = compress(&image, &opts(CHUNK), None, Some(&dirty));
    let (cold, _) = compress(&image, &opts(CHUNK), None, None);
    assert_eq!(warm, cold);
    assert_eq!(
        stats.reused_hashes,
        len / CHUNK,
        "all full base chunks are reused"
    );
}

#[test]
fn dirty_map_with_another_chunk_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    standard_image(&raw);
    let dirty = DirtyMap::new(ChunkIndex::compute(&raw, 2 * CHUNK).expect("index"));
    let err = compress_xz(&raw, &mut Vec::new(), &opts(CHUNK), None, Some(&dirty))
        .expect_err("must fail");
    assert!(err.message().contains("chunk"), "{err}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("ls") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn never_cache_ranges_stay_out_of_the_cache_and_the_output_is_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    let len = standard_image(&raw);
    // A "secret" in the middle of chunk 2: text no other chunk holds.
    let secret = b"-----BEGIN PRIVATE KEY-----never cache me-----END PRIVATE KEY-----";
    let at = 2 * CHUNK + 1000;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, secret, at).expect("write");
    drop(f);
    let cache_dir = dir.path().join("cache");
    let cache = ChunkCache::new(&cache_dir).expect("cache");
    let secret_opts = imgbuild_pack::XzOptions {
        never_cache: std::iter::once((at, secret.len() as u64)).collect(),
        ..opts(CHUNK)
    };
    let (with_secret, stats) = compress(&raw, &secret_opts, Some(&cache), None);
    assert_eq!(stats.uncached_chunks, 1, "{stats:?}");
    let (plain, _) = compress(&raw, &opts(CHUNK), None, None);
    assert_eq!(with_secret, plain, "never_cache changed the output");
    // No cached block decodes to the chunk holding the secret.
    let (again, second) = compress(&raw, &secret_opts, Some(&cache), None);
    assert_eq!(again, plain);
    assert_eq!(
        second.compressed_chunks, 1,
        "only the secret chunk is compressed again"
    );
    // Without never_cache exactly one more block lands in the cache: the secret chunk's.
    let before = files_under(&cache_dir.join("chunks")).len();
    let (_, third) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    assert_eq!(third.compressed_chunks, 1);
    assert_eq!(files_under(&cache_dir.join("chunks")).len(), before + 1);
    assert!(len > 3 * CHUNK);
}

#[test]
fn cache_write_errors_are_counted_and_the_output_is_still_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    standard_image(&raw);
    let cache_dir = dir.path().join("cache");
    let cache = ChunkCache::new(&cache_dir).expect("cache");
    // Every block folder `chunks/xx` is a file: storing fails even for root (ENOTDIR), as
    // on a full or read-only disk.
    let chunks = cache_dir.join("chunks");
    for b in 0..=255u8 {
        std::fs::write(chunks.join(format!("{b:02x}")), b"").expect("block the folder");
    }
    let (out, stats) = compress(&raw, &opts(CHUNK), Some(&cache), None);
    let (plain, _) = compress(&raw, &opts(CHUNK), None, None);
    assert_eq!(out, plain);
    assert_eq!(
        stats.cache_write_errors, stats.compressed_chunks,
        "{stats:?}"
    );
    assert!(stats.cache_write_errors > 0);
    assert!(
        stats
            .first_cache_error
            .as_deref()
            .is_some_and(|e| e.contains("chunks")),
        "{stats:?}"
    );
}
