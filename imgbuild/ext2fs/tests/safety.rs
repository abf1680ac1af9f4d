//! Refusals, out-of-space handling, determinism, garbage input and write tracking.

mod common;

use std::fs;

use common::*;
use imgbuild_ext2fs::{ErrorKind, Fs};

const T0: i64 = 1_700_000_000;

fn open_err(img: &Img, writable: bool) -> imgbuild_ext2fs::Error {
    match Fs::open(&img.path, img.offset, writable) {
        Ok(_) => panic!("open(writable={writable}) should fail"),
        Err(e) => e,
    }
}

/// Reads a little-endian u32 of the primary superblock.
fn sb_u32(img: &Img, field: u64) -> u32 {
    let bytes = img.bytes();
    let at = (img.offset + 1024 + field) as usize;
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn refuses_journal_needing_recovery() {
    let img = mkfs(&Spec::default());
    let (_, err) = img.debugfs("feature needs_recovery", true);
    assert!(!err.contains("Unknown"), "{err}");
    let before = img.bytes();
    let e = open_err(&img, true);
    assert_eq!(*e.kind(), ErrorKind::NeedsRecovery, "{e}");
    assert!(img.bytes() == before, "a refused open must not write");
    assert!(e.to_string().starts_with("ext4: open "), "{e}");
    assert!(!e.to_string().contains('\n'));
    // Reading is still possible.
    let fs = Fs::open(&img.path, 0, false).unwrap();
    assert!(fs.read_dir("/").unwrap().contains(&"lost+found".to_owned()));
}

#[test]
fn refuses_errors_and_unclean_state() {
    let img = mkfs(&Spec::default());
    img.debugfs("ssv state 2", true);
    let e = open_err(&img, true);
    assert_eq!(*e.kind(), ErrorKind::HasErrors, "{e}");
    assert!(e.to_string().contains("errors"), "{e}");
    img.debugfs("ssv state 0", true);
    let e = open_err(&img, true);
    assert_eq!(*e.kind(), ErrorKind::HasErrors, "{e}");
    assert!(e.to_string().contains("cleanly unmounted"), "{e}");
    img.debugfs("ssv state 1", true);
    img.open(true).close().unwrap();
}

#[test]
fn refuses_features_libext2fs_cannot_handle() {
    // INCOMPAT_DIRDATA (0x1000) is unknown to libext2fs 1.47: refused even read-only.
    let img = mkfs(&Spec::default());
    let incompat = sb_u32(&img, 0x60);
    img.debugfs(&format!("ssv feature_incompat {}", incompat | 0x1000), true);
    assert_eq!(sb_u32(&img, 0x60), incompat | 0x1000);
    for writable in [false, true] {
        let e = open_err(&img, writable);
        assert_eq!(*e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("incompatible feature"), "{e}");
    }
    // RO_COMPAT_HAS_SNAPSHOT (0x80): readable, not writable.
    let img = mkfs(&Spec::default());
    let ro = sb_u32(&img, 0x64);
    img.debugfs(&format!("ssv feature_ro_compat {}", ro | 0x80), true);
    let e = open_err(&img, true);
    assert_eq!(*e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("read-only"), "{e}");
    Fs::open(&img.path, 0, false).unwrap();
    // quota: libext2fs opens it, but this wrapper would not update the quota files.
    let img = mkfs(&Spec {
        extra_args: &["-O", "quota"],
        ..Spec::default()
    });
    let e = open_err(&img, true);
    assert_eq!(*e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("quota"), "{e}");
}

#[test]
fn no_space_is_reported_and_leaves_a_clean_fs() {
    let img = mkfs(&Spec {
        size_mib: 8,
        block_size: Some(1024),
        extra_args: &["-O", "^has_journal"],
        ..Spec::default()
    });
    let mut fs = img.open(true);
    let free = fs.free_bytes();
    let too_big = noise(free as usize + 4096, 1);
    let e = fs
        .write_file("/etc/huge.bin", &too_big, &meta(0o644, 0, 0, T0))
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::NotFound),
        "parent missing first: {e}"
    );
    let e = fs
        .write_file("/huge.bin", &too_big, &meta(0o644, 0, 0, T0))
        .unwrap_err();
    match e.kind() {
        ErrorKind::NoSpace {
            needed_bytes,
            free_bytes,
        } => {
            assert!(*needed_bytes > too_big.len() as u64);
            assert_eq!(*free_bytes, free);
        }
        other => panic!("expected NoSpace, got {other:?}: {e}"),
    }
    assert!(e.to_string().starts_with("ext4: write /huge.bin: "), "{e}");
    assert_eq!(fs.free_bytes(), free, "nothing allocated");
    // Fill the fs with 512 KiB files until it refuses.
    let chunk = noise(512 << 10, 2);
    let mut written = 0;
    let refused = loop {
        match fs.write_file(&format!("/fill-{written}"), &chunk, &meta(0o644, 0, 0, T0)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(written >= 10, "only {written} files fit");
    assert!(
        matches!(refused.kind(), ErrorKind::NoSpace { .. }),
        "{refused}"
    );
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert_eq!(img.cat(&format!("/fill-{}", written - 1)), chunk);
}

#[test]
fn running_out_of_inodes_is_no_space() {
    let img = mkfs(&Spec {
        size_mib: 8,
        extra_args: &["-N", "32"],
        ..Spec::default()
    });
    let mut fs = img.open(true);
    let mut n = 0;
    let err = loop {
        match fs.write_file(&format!("/f{n}"), b"x", &meta(0o644, 0, 0, T0)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "inodes never ran out");
    };
    assert!(matches!(err.kind(), ErrorKind::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("inode"), "{err}");
    assert_eq!(fs.free_inodes(), 0);
    fs.close().unwrap();
    img.assert_fsck_clean();
}

fn scripted_changes(fs: &mut Fs) {
    fs.set_time(T0);
    fs.mkdir_p("/etc/greengrass/config", &meta(0o750, 0, 0, T0))
        .unwrap();
    fs.write_file(
        "/etc/greengrass/config/config.yaml",
        &noise(20_000, 4),
        &meta(0o640, 0, 0, T0),
    )
    .unwrap();
    fs.write_file("/etc/hostname", b"device-1\n", &meta(0o644, 0, 0, T0))
        .unwrap();
    fs.write_file("/etc/hostname", b"device-22\n", &meta(0o644, 0, 0, T0))
        .unwrap();
    fs.symlink("/etc/link", &"x/".repeat(120), &meta(0, 0, 0, T0))
        .unwrap();
    fs.remove("/etc/link").unwrap();
    fs.set_meta("/etc", &meta(0o755, 0, 0, T0)).unwrap();
}

#[test]
fn identical_operations_give_identical_images() {
    let t = tree();
    write_tree_file(t.path(), "etc/hosts", b"127.0.0.1 localhost\n");
    let img = mkfs(&Spec {
        tree: Some(t.path()),
        offset: 1 << 20,
        ..Spec::default()
    });
    let copy = img.dir.path().join("copy.img");
    fs::copy(&img.path, &copy).unwrap();
    let mut a = img.open(true);
    scripted_changes(&mut a);
    a.close().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // a different wall-clock second
    let mut b = Fs::open(&copy, img.offset, true).unwrap();
    scripted_changes(&mut b);
    b.close().unwrap();
    let (x, y) = (img.bytes(), fs::read(&copy).unwrap());
    assert!(x == y, "images differ after identical operations");
    assert_eq!(sb_u32(&img, 0x30) as i64, T0, "s_wtime follows set_time");
    img.assert_fsck_clean();
}

#[test]
fn garbage_and_truncated_images_give_errors() {
    let dir = tempfile::TempDir::new().unwrap();
    let random = dir.path().join("random.img");
    fs::write(&random, noise(8 << 20, 77)).unwrap();
    let empty = dir.path().join("empty.img");
    fs::write(&empty, b"").unwrap();
    for (p, off) in [
        (&random, 0),
        (&empty, 0),
        (&random, 1 << 40),
        (&dir.path().join("missing"), 0),
    ] {
        for writable in [false, true] {
            let e = Fs::open(p, off, writable)
                .err()
                .expect("garbage must not open");
            let msg = e.to_string();
            assert!(msg.starts_with("ext4: open "), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }
    // A real image cut short: opening or reading must fail cleanly (never panic).
    let t = tree();
    write_tree_file(t.path(), "data/blob", &noise(3 << 20, 8));
    let img = mkfs(&Spec {
        size_mib: 32,
        tree: Some(t.path()),
        ..Spec::default()
    });
    for cut in [2048u64, 300 << 10, 4 << 20] {
        let short = dir.path().join(format!("short-{cut}.img"));
        fs::write(&short, &img.bytes()[..cut as usize]).unwrap();
        match Fs::open(&short, 0, false) {
            Err(e) => assert!(e.to_string().starts_with("ext4: open "), "{e}"),
            Ok(fs) => {
                let read = fs.read_file("/data/blob");
                assert!(
                    read.is_err(),
                    "reading past the end of a {cut}-byte image must fail"
                );
            }
        }
    }
    // Random bytes written over the inode tables: no panic, errors or garbage data only.
    let mut bytes = img.bytes();
    let len = bytes.len();
    bytes[len / 4..len / 2].copy_from_slice(&noise(len / 4, 99));
    let corrupt = dir.path().join("corrupt.img");
    fs::write(&corrupt, &bytes).unwrap();
    if let Ok(fs) = Fs::open(&corrupt, 0, false) {
        let _ = fs.read_dir("/");
        let _ = fs.read_file("/data/blob");
        let _ = fs.stat("/data/blob");
    }
}

#[test]
fn tracked_ranges_cover_every_changed_byte() {
    let img = mkfs(&Spec {
        offset: 2 << 20,
        tail: 1 << 20,
        ..Spec::default()
    });
    let before = img.bytes();
    let mut fs = Fs::open_tracked(&img.path, img.offset).unwrap();
    scripted_changes(&mut fs);
    assert!(
        !fs.written_ranges().is_empty(),
        "data writes are visible before close"
    );
    let ranges = fs.close_tracked().unwrap();
    let after = img.bytes();
    let fs_end = img.offset + (64 << 20);
    for (start, len) in &ranges {
        assert!(
            start >= img.offset && start + len <= fs_end,
            "range {start}+{len} outside the fs"
        );
    }
    assert!(
        ranges
            .as_slice()
            .windows(2)
            .all(|w| w[0].0 + w[0].1 < w[1].0),
        "sorted and merged"
    );
    let covered = |i: u64| ranges.iter().any(|(s, l)| i >= s && i < s + l);
    let changed: Vec<u64> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .map(|i| i as u64)
        .collect();
    assert!(!changed.is_empty());
    let missed: Vec<&u64> = changed.iter().filter(|&&i| !covered(i)).collect();
    assert!(
        missed.is_empty(),
        "{} changed bytes not reported, first at {}",
        missed.len(),
        missed[0]
    );
    let total = ranges.total_bytes();
    assert!(
        total < 8 << 20,
        "tracking reports {total} bytes for a few small changes"
    );
    img.assert_fsck_clean();
    assert_eq!(img.cat("/etc/hostname"), b"device-22\n");
}
