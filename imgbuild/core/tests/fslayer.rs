//! The file-system layer: one script of operations through the `FileSystem` trait, run on a FAT
//! and on an ext4 file system inside a disk image, checked with the standard tools
//! (`fsck.vfat -n` + mtools, `e2fsck -fn` + debugfs) and against the written ranges that
//! `close` returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use imgbuild_core::fs::ext4::Ext4;
use imgbuild_core::fs::fat::FatFs;
use imgbuild_core::fs::{ByteRanges, FileSystem, Kind};
use imgbuild_testkit::{
    debugfs_cat, debugfs_ls, debugfs_stat, e2fsck_clean, fsck_vfat_clean, mdir_names, mtype, noise,
    run_ok,
};

/// 2024-02-29 13:14:15 UTC.
const TS: i64 = 1_709_212_455;
const MIB: u64 = 1 << 20;
/// Where the partition starts in the image.
const OFFSET: u64 = MIB;
const FS_LEN: u64 = 32 * MIB;

/// An image of noise with the file system made by `mkfs` (given the path of a file to format)
/// at [`OFFSET`], and noise behind it.
fn image(dir: &Path, mkfs: impl FnOnce(&Path)) -> PathBuf {
    let fs = dir.join("fs.img");
    std::fs::write(&fs, vec![0u8; FS_LEN as usize]).unwrap();
    mkfs(&fs);
    let mut bytes = noise(1, OFFSET as usize);
    bytes.extend(std::fs::read(&fs).unwrap());
    bytes.extend(noise(2, MIB as usize));
    let img = dir.join("disk.img");
    std::fs::write(&img, bytes).unwrap();
    img
}

/// The same operations on either file system; returns what `close` reported.
fn script<F: FileSystem>(mut fs: F, big: &[u8]) -> ByteRanges {
    assert_eq!(fs.read_file("/missing.txt").unwrap(), None);
    assert_eq!(fs.kind("/missing.txt").unwrap(), None);
    assert_eq!(fs.kind("/").unwrap(), Some(Kind::Dir));
    assert!(!fs.remove("/missing.txt").unwrap());
    let free = fs.free_bytes().unwrap();

    fs.mkdir_p("/boot/firmware/overlays").unwrap();
    fs.mkdir_p("/boot/firmware").unwrap();
    assert_eq!(fs.kind("/boot/firmware").unwrap(), Some(Kind::Dir));
    fs.write_file("/boot/firmware/config.txt", b"arm_64bit=0\n")
        .unwrap();
    fs.write_file("/boot/firmware/config.txt", b"arm_64bit=1\n")
        .unwrap();
    // Missing parents are created.
    fs.write_file("/firstboot/claim/big.bin", big).unwrap();
    fs.write_file("/gone.txt", b"short-lived").unwrap();
    assert_eq!(fs.kind("/gone.txt").unwrap(), Some(Kind::File));
    assert!(fs.remove("/gone.txt").unwrap());
    assert_eq!(fs.kind("/gone.txt").unwrap(), None);

    assert_eq!(
        fs.read_file("/boot/firmware/config.txt")
            .unwrap()
            .as_deref(),
        Some(&b"arm_64bit=1\n"[..])
    );
    assert_eq!(
        fs.read_file("/firstboot/claim/big.bin").unwrap().as_deref(),
        Some(big)
    );
    assert!(
        fs.read_file("/firstboot").is_err(),
        "a directory is not a file"
    );
    let mut names = fs.list("/boot/firmware").unwrap();
    names.sort();
    assert_eq!(names, ["config.txt", "overlays"]);
    assert!(fs.free_bytes().unwrap() < free - big.len() as u64);
    fs.close().unwrap()
}

/// Every changed byte of the image lies in `ranges`, and `ranges` lie inside the partition.
fn assert_ranges_cover_changes(before: &[u8], after: &[u8], ranges: &ByteRanges) {
    assert!(!ranges.is_empty());
    for (start, len) in ranges {
        assert!(
            start >= OFFSET && start + len <= OFFSET + FS_LEN,
            "{start}+{len}"
        );
    }
    let missed = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(i, (a, b))| a != b && !ranges.contains(*i as u64))
        .count();
    assert_eq!(missed, 0, "changed bytes outside the reported ranges");
}

#[test]
fn fat_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), |fs| {
        run_ok(Command::new("mkfs.vfat").arg("-F").arg("16").arg(fs));
    });
    let before = std::fs::read(&img).unwrap();
    let big = noise(3, 300_000);
    let ranges = script(FatFs::open(&img, OFFSET, FS_LEN, TS).unwrap(), &big);
    assert_ranges_cover_changes(&before, &std::fs::read(&img).unwrap(), &ranges);

    let (clean, report) = fsck_vfat_clean(&img, OFFSET);
    assert!(clean, "{report}");
    assert_eq!(
        mtype(&img, OFFSET, "/boot/firmware/config.txt"),
        b"arm_64bit=1\n"
    );
    assert_eq!(mtype(&img, OFFSET, "/firstboot/claim/big.bin"), big);
    let mut root = mdir_names(&img, OFFSET, "/");
    root.sort();
    assert_eq!(root, ["boot", "firstboot"]);
}

#[test]
fn ext4_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), |fs| {
        run_ok(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-b", "4096"])
                .arg(fs),
        );
    });
    // A file with its own mode and owner, written through the ext4-only API first: replacing
    // its content through the trait keeps them.
    let mut ext4 = Ext4::open(&img, OFFSET, TS).unwrap();
    ext4.mkdir_p_as("/etc", &ext4.meta(0o755, 0, 0)).unwrap();
    ext4.write_file_as("/etc/secret", b"old", &ext4.meta(0o600, 1000, 1000))
        .unwrap();
    ext4.write_file("/etc/secret", b"new").unwrap();
    ext4.close().unwrap();

    let before = std::fs::read(&img).unwrap();
    let big = noise(3, 300_000);
    let ranges = script(Ext4::open(&img, OFFSET, TS).unwrap(), &big);
    assert_ranges_cover_changes(&before, &std::fs::read(&img).unwrap(), &ranges);

    let (clean, report) = e2fsck_clean(&img, OFFSET);
    assert!(clean, "{report}");
    assert_eq!(
        debugfs_cat(&img, OFFSET, "/boot/firmware/config.txt"),
        b"arm_64bit=1\n"
    );
    assert_eq!(debugfs_cat(&img, OFFSET, "/firstboot/claim/big.bin"), big);
    assert_eq!(debugfs_cat(&img, OFFSET, "/etc/secret"), b"new");
    let secret = debugfs_stat(&img, OFFSET, "/etc/secret").unwrap();
    assert_eq!((secret.mode, secret.uid, secret.gid), (0o600, 1000, 1000));
    let file = debugfs_stat(&img, OFFSET, "/boot/firmware/config.txt").unwrap();
    assert_eq!(
        (file.mode, file.uid, file.gid, file.mtime),
        (0o644, 0, 0, TS)
    );
    let parent = debugfs_stat(&img, OFFSET, "/firstboot/claim").unwrap();
    assert_eq!((parent.mode, parent.uid, parent.mtime), (0o755, 0, TS));
    let mut root = debugfs_ls(&img, OFFSET, "/");
    root.sort();
    assert_eq!(root, ["boot", "etc", "firstboot", "lost+found"]);
}
