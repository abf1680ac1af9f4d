//! bmap files against bmaptool: same bytes as `bmaptool create`, accepted by `bmaptool copy`.

mod common;

use common::*;
use imgbuild_pack::write_bmap;
use std::path::{Path, PathBuf};

const K: u64 = 1024;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A sparse image whose data regions are whole 4 KiB blocks, plus a short tail block.
fn sparse_image(path: &Path) -> u64 {
    let len = 8 * K * K + 1000;
    make_image(
        path,
        len,
        &[
            (0, 64 * K, Part::Data(1)),
            (64 * K, 64 * K, Part::Zeros),
            (1024 * K, 4 * K, Part::Data(2)),
            (3000 * K, 900 * K, Part::Data(3)),
            (len - 1000, 1000, Part::Data(4)),
        ],
    );
    len
}

/// In `dir`: `disk.img`, a [`sparse_image`], and its bmap `disk.bmap` (4 KiB blocks).
fn sparse_image_and_bmap(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.img");
    sparse_image(&raw);
    let bmap = dir.join("disk.bmap");
    write_bmap(&raw, &bmap, 4096).expect("write_bmap");
    (raw, bmap)
}

/// Whether `bmaptool copy --bmap BMAP IMAGE TARGET` succeeds (its complaints on stderr dropped).
fn bmaptool_copy_succeeds(bmap: &Path, image: &Path, target: &Path) -> bool {
    std::process::Command::new("bmaptool")
        .args(["copy", "--bmap", s(bmap), s(image), s(target)])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run bmaptool")
        .success()
}

#[test]
fn bmap_is_byte_identical_to_bmaptool_create_and_maps_only_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    let len = sparse_image(&raw);
    let ours = dir.path().join("ours.bmap");
    let stats = write_bmap(&raw, &ours, 4096).expect("write_bmap");
    let theirs = dir.path().join("theirs.bmap");
    run("bmaptool", &["create", "-o", s(&theirs), s(&raw)], None);
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(&ours).expect("read")),
        String::from_utf8_lossy(&std::fs::read(&theirs).expect("read"))
    );
    let last = len.div_ceil(4096) - 1;
    assert_eq!(
        stats.ranges,
        vec![0..=31, 256..=256, 750..=974, last..=last]
    );
    assert_eq!(stats.mapped_blocks, 32 + 1 + 225 + 1);
    assert_eq!(stats.blocks, last + 1);
}

#[test]
fn bmaptool_copy_of_our_xz_with_our_bmap_reproduces_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raw, bmap) = sparse_image_and_bmap(dir.path());
    let (xz, _) = compress(&raw, &opts(1 << 20), None, None);
    let xz_file = write_to(dir.path(), "disk.img.xz", &xz);
    let target = dir.path().join("target.img");
    run(
        "bmaptool",
        &["copy", "--bmap", s(&bmap), s(&xz_file), s(&target)],
        None,
    );
    assert_eq!(
        std::fs::metadata(&target).expect("target").len(),
        std::fs::metadata(&raw).expect("raw").len()
    );
    assert_eq!(file_sha256(&target), file_sha256(&raw));
}

#[test]
fn bmaptool_copy_rejects_data_that_does_not_match_the_checksums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raw, bmap) = sparse_image_and_bmap(dir.path());
    patch(&raw, 3000 * K + 5, b"changed after the bmap was written");
    let target = dir.path().join("target.img");
    assert!(
        !bmaptool_copy_succeeds(&bmap, &raw, &target),
        "bmaptool must notice the range checksum mismatch"
    );

    // A bmap whose own checksum no longer matches is refused too.
    let text = std::fs::read_to_string(&bmap)
        .expect("read bmap")
        .replace("<BlockSize> 4096", "<BlockSize>  4096");
    std::fs::write(&bmap, text).expect("write bmap");
    assert!(
        !bmaptool_copy_succeeds(&bmap, &raw, &target),
        "bmaptool must notice the bmap checksum mismatch"
    );
}

#[test]
fn fully_written_and_empty_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("dense.img");
    make_image(&raw, 10_000, &[(0, 10_000, Part::Data(5))]);
    let bmap = dir.path().join("dense.bmap");
    let stats = write_bmap(&raw, &bmap, 4096).expect("write_bmap");
    assert_eq!(stats.ranges, vec![0..=2]);
    let theirs = dir.path().join("theirs.bmap");
    run("bmaptool", &["create", "-o", s(&theirs), s(&raw)], None);
    assert_eq!(
        std::fs::read(&bmap).expect("read"),
        std::fs::read(&theirs).expect("read")
    );

    let empty = dir.path().join("empty.img");
    make_image(&empty, 0, &[]);
    let err = write_bmap(&empty, &bmap, 4096).expect_err("empty image must fail");
    assert!(err.message().contains("empty.img"), "{err}");
}
