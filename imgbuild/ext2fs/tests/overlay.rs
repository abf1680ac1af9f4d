//! Writing through a copy-on-write overlay ([`Fs::open_overlay`]): the base stays byte-identical,
//! the materialized image is clean for e2fsck and holds what debugfs reads back, and it is the
//! very image the same writes give on a plain copy through unix_io.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use imgbuild_ext2fs::{ByteRanges, FileKind, Fs, Overlay};

const T0: i64 = 1_700_000_000;

/// The same edits on any open file system.
fn edit(fs: &mut Fs, block_size: u32) {
    fs.set_time(T0);
    fs.write_file("/a.txt", b"hello\n", &meta(0o644, 1000, 1000, T0))
        .unwrap();
    fs.write_file(
        "/b.bin",
        &noise(3 * block_size as usize + 17, 2),
        &meta(0o600, 0, 0, T0),
    )
    .unwrap();
    fs.write_file("/b.bin", &noise(5000, 3), &meta(0o600, 0, 0, T0))
        .unwrap();
    fs.mkdir_p("/etc/deep/dir", &meta(0o755, 0, 0, T0)).unwrap();
    fs.write_file(
        "/etc/deep/dir/big",
        &noise(300_000, 4),
        &meta(0o640, 5, 6, T0),
    )
    .unwrap();
    fs.symlink("/etc/link", "deep/dir/big", &meta(0o777, 0, 0, T0))
        .unwrap();
    fs.write_file("/gone", b"x", &meta(0o644, 0, 0, T0))
        .unwrap();
    fs.remove("/gone").unwrap();
}

/// `e2fsck -fn IMAGE?offset=N` must exit 0.
fn assert_clean(image: &Path, offset: u64) {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "e2fsck -fn {}:\n{}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn debugfs_cat(image: &Path, offset: u64, path: &str) -> Vec<u8> {
    Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .unwrap()
        .stdout
}

fn overlay_edits(block_size: u32) {
    let img = mkfs(&Spec {
        block_size: Some(block_size),
        offset: 1 << 20,
        tail: 64 << 10,
        ..Spec::default()
    });
    let before = img.bytes();
    let dir = img.dir.path();
    let ov = Arc::new(Overlay::create(&img.path, &dir.join("overlay")).unwrap());

    // The same edits on a plain copy through unix_io + the write tracker: the reference.
    let copy: PathBuf = dir.join("copy.img");
    std::fs::write(&copy, &before).unwrap();
    let mut reference = Fs::open_tracked(&copy, img.offset).unwrap();
    edit(&mut reference, block_size);
    let reference_ranges = reference.close_tracked().unwrap();

    let mut fs = Fs::open_overlay(&ov, img.offset, true).unwrap();
    assert_eq!(fs.block_size(), u64::from(block_size));
    edit(&mut fs, block_size);
    // Reads through the overlay see the writes.
    assert_eq!(fs.read_file("/a.txt").unwrap(), b"hello\n");
    assert_eq!(
        fs.stat("/etc/link").unwrap().map(|s| s.kind),
        Some(FileKind::Symlink)
    );
    let ranges = fs.close_tracked().unwrap();

    assert_eq!(img.bytes(), before, "the base must not change");
    assert_eq!(ranges, ov.written(), "the channel records what it wrote");
    assert_eq!(ranges, reference_ranges, "same writes as through unix_io");
    assert!(ranges
        .iter()
        .all(|(o, l)| o >= img.offset && o + l <= img.offset + (64 << 20)));

    let out = dir.join("out.img");
    ov.materialize(&out).unwrap();
    let out_bytes = std::fs::read(&out).unwrap();
    let copy_bytes = std::fs::read(&copy).unwrap();
    let differ: Vec<usize> = (0..out_bytes.len())
        .filter(|&i| out_bytes[i] != copy_bytes[i])
        .take(20)
        .collect();
    assert!(
        differ.is_empty(),
        "the overlay image differs from the same edits on a copy at {differ:?}"
    );
    let outside = ByteRanges::from_unsorted(vec![(0, before.len() as u64)]);
    for (o, l) in outside.iter() {
        for i in o..o + l {
            if out_bytes[i as usize] != before[i as usize] {
                assert!(ranges.contains(i), "byte {i} changed but was not recorded");
            }
        }
    }
    assert_clean(&out, img.offset);
    assert_eq!(debugfs_cat(&out, img.offset, "/a.txt"), b"hello\n");
    assert_eq!(
        debugfs_cat(&out, img.offset, "/etc/deep/dir/big"),
        noise(300_000, 4)
    );
    assert_eq!(debugfs_cat(&out, img.offset, "/b.bin"), noise(5000, 3));

    // A read-only open through the overlay reads the edits and refuses to write.
    let mut ro = Fs::open_overlay(&ov, img.offset, false).unwrap();
    assert_eq!(ro.read_file("/etc/link").unwrap(), noise(300_000, 4));
    assert!(ro
        .write_file("/nope", b"x", &meta(0o644, 0, 0, T0))
        .is_err());
    drop(ro);
    assert_eq!(ov.written(), ranges, "a read-only open writes nothing");
    assert_eq!(img.bytes(), before);
}

#[test]
fn overlay_edits_1k_blocks() {
    overlay_edits(1024);
}

#[test]
fn overlay_edits_4k_blocks() {
    overlay_edits(4096);
}

#[test]
fn hashed_directory_grows_through_the_overlay() {
    let img = hashed_dir_image();
    let before = img.bytes();
    let ov = Arc::new(Overlay::create(&img.path, &img.dir.path().join("ov")).unwrap());
    let mut fs = Fs::open_overlay(&ov, 0, true).unwrap();
    add_new_entries(&mut fs, T0);
    fs.close().unwrap();
    assert_eq!(img.bytes(), before, "the base must not change");
    let out = img.dir.path().join("out.img");
    ov.materialize(&out).unwrap();
    assert_clean(&out, 0);
    let listing = Command::new("debugfs")
        .args(["-R", "ls /big"])
        .arg(&out)
        .output()
        .unwrap()
        .stdout;
    assert_lists_new_entries(&listing);
    let fs = Fs::open_overlay(&ov, 0, false).unwrap();
    assert_eq!(fs.read_dir("/big").unwrap().len(), 3500);
}

#[test]
fn a_missing_file_system_is_a_clear_error() {
    let img = mkfs(&Spec::default());
    let ov = Arc::new(Overlay::create(&img.path, &img.dir.path().join("ov")).unwrap());
    let e = Fs::open_overlay(&ov, 4096, false)
        .err()
        .expect("no fs at 4096");
    assert!(e.to_string().contains("4096"), "{e}");
    assert!(e.to_string().contains("disk.img"), "{e}");
    assert!(ov.written().is_empty());
}
