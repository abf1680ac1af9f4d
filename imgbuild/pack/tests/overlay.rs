//! Packing a copy-on-write overlay instead of a file: the bmap is byte for byte what
//! `bmaptool create` writes for the materialized image, and the .xz (with the base's chunk index
//! and cache) is the one compressing the materialized image gives, reading only dirty chunks.

mod common;

use common::*;
use imgbuild_pack::{
    compress_xz_from, write_bmap, write_bmap_from, ChunkCache, ChunkIndex, DirtyMap, Overlay,
};
use std::path::Path;

const K: u64 = 1024;
const CHUNK: u64 = 64 * K;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn overlay_packs_like_its_materialized_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    let len = standard_image(&base);
    let base_before = std::fs::read(&base).expect("read base");
    let ov = Overlay::create(&base, &dir.path().join("overlay")).expect("overlay");
    // Writes into data, into explicit zeros, into holes (unaligned), and across the tail.
    for (offset, bytes) in [
        (100u64, data(300, 7)),
        (800 * K + 5, data(10, 8)),
        (2000 * K + 4095, data(2, 9)),
        (4200 * K + 1, data(9000, 10)),
        (len - 3, data(3, 11)),
    ] {
        ov.write_at(&bytes, offset).expect("write");
    }
    let image = dir.path().join("image.img");
    ov.materialize(&image).expect("materialize");

    // bmap: over the overlay, identical to bmaptool's on the materialized image.
    let ours = dir.path().join("ours.bmap");
    write_bmap_from(&ov, &base, &ours, 4096).expect("bmap over the overlay");
    let theirs = dir.path().join("theirs.bmap");
    run("bmaptool", &["create", "-o", s(&theirs), s(&image)], None);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&ours).expect("read")),
        String::from_utf8_lossy(&std::fs::read(&theirs).expect("read"))
    );
    let on_file = dir.path().join("file.bmap");
    write_bmap(&image, &on_file, 4096).expect("bmap over the file");
    assert_eq!(
        std::fs::read(&on_file).expect("read"),
        std::fs::read(&ours).expect("read")
    );

    // xz: the base's index + cache (warmed by compressing the base), dirty = the overlay's writes.
    let cache = ChunkCache::new(dir.path().join("cache")).expect("cache");
    let opts = opts(CHUNK);
    let (_, _) = compress(&base, &opts, Some(&cache), None);
    let mut dirty = DirtyMap::new(ChunkIndex::compute(&base, CHUNK).expect("index"));
    dirty.mark_all(&ov.written());
    let mut xz = Vec::new();
    let stats = compress_xz_from(&ov, &base, &mut xz, &opts, Some(&cache), Some(&dirty))
        .expect("compress the overlay");
    let (plain, _) = compress(&image, &opts, None, None);
    assert!(xz == plain, "the overlay's .xz differs from the image's");
    let touched = ov
        .written()
        .iter()
        .flat_map(|(o, l)| (o / CHUNK)..=((o + l - 1) / CHUNK))
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_eq!(stats.read_chunks, touched, "only dirty chunks are read");
    let xz_path = dir.path().join("image.img.xz");
    std::fs::write(&xz_path, &xz).expect("write xz");
    run("xz", &["-t", s(&xz_path)], None);
    assert_eq!(
        run("xz", &["-dc", s(&xz_path)], None),
        std::fs::read(&image).expect("read image")
    );
    assert_eq!(std::fs::read(&base).expect("read base"), base_before);
}
