//! Write operations checked with e2fsck and debugfs.

mod common;

use common::*;
use imgbuild_ext2fs::{ErrorKind, FileKind, Fs};

const T0: i64 = 1_700_000_000;

/// Create, replace (bigger, smaller), read back and check with debugfs on one block size.
fn create_and_replace(block_size: u32) {
    let img = mkfs(&Spec {
        block_size: Some(block_size),
        ..Spec::default()
    });
    let mut fs = img.open(true);
    assert_eq!(fs.block_size(), u64::from(block_size));
    fs.set_time(T0);
    let small = noise(100, 1);
    let big = noise(3 * block_size as usize + 17, 2);
    let smaller = noise(10, 3);
    fs.write_file("/a.txt", &small, &meta(0o644, 1000, 1001, T0 - 50))
        .unwrap();
    fs.write_file("/b.bin", &small, &meta(0o600, 0, 0, T0 - 60))
        .unwrap();
    fs.write_file("/b.bin", &big, &meta(0o4755, 2000, 2001, T0 - 70))
        .unwrap();
    fs.write_file("/c.bin", &big, &meta(0o640, 5, 6, T0 - 80))
        .unwrap();
    fs.write_file("/c.bin", &smaller, &meta(0o640, 7, 8, T0 - 90))
        .unwrap();
    fs.write_file("/empty", b"", &meta(0o644, 0, 0, T0))
        .unwrap();
    assert_eq!(fs.read_file("/b.bin").unwrap(), big);
    let st = fs.stat("/c.bin").unwrap().unwrap();
    assert_eq!(
        (st.kind, st.size, st.uid, st.gid, st.mtime),
        (FileKind::Regular, 10, 7, 8, T0 - 90)
    );
    assert_eq!(st.mode, 0o100640);
    fs.close().unwrap();

    img.assert_fsck_clean();
    assert_eq!(img.cat("/a.txt"), small);
    assert_eq!(img.cat("/b.bin"), big);
    assert_eq!(img.cat("/c.bin"), smaller);
    assert_eq!(img.cat("/empty"), b"");
    let a = img.stat("/a.txt").unwrap();
    assert_eq!(
        (a.mode, a.uid, a.gid, a.mtime, a.ctime),
        (0o644, 1000, 1001, T0 - 50, T0)
    );
    let b = img.stat("/b.bin").unwrap();
    assert_eq!(
        (b.mode, b.uid, b.gid, b.mtime, b.size),
        (0o4755, 2000, 2001, T0 - 70, big.len() as u64)
    );
    assert_ne!(
        b.flags & 0x80000,
        0,
        "extents flag expected on an ext4 file"
    );
    let c = img.stat("/c.bin").unwrap();
    assert_eq!((c.uid, c.gid, c.mtime, c.size), (7, 8, T0 - 90, 10));
}

#[test]
fn create_and_replace_1k_blocks() {
    create_and_replace(1024);
}

#[test]
fn create_and_replace_4k_blocks() {
    create_and_replace(4096);
}

#[test]
fn five_mib_file_round_trips() {
    let img = mkfs(&Spec {
        block_size: Some(1024),
        ..Spec::default()
    });
    let data = noise(5 << 20, 42);
    let mut fs = img.open(true);
    let free_before = fs.free_bytes();
    fs.write_file("/big.bin", &data, &meta(0o644, 0, 0, T0))
        .unwrap();
    assert!(free_before - fs.free_bytes() >= data.len() as u64);
    assert_eq!(fs.read_file("/big.bin").unwrap(), data);
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert_eq!(img.cat("/big.bin"), data);
    // The reader agrees after a fresh open.
    assert_eq!(img.open(false).read_file("/big.bin").unwrap(), data);
}

#[test]
fn mkdir_p_symlinks_and_set_meta() {
    let img = mkfs(&Spec::default());
    let mut fs = img.open(true);
    fs.set_time(T0);
    fs.mkdir_p("/a/b/c", &meta(0o750, 10, 20, T0 - 5)).unwrap();
    fs.mkdir_p("/a/b/c/", &meta(0o700, 1, 1, 1)).unwrap(); // existing: untouched
    fs.mkdir_p("/a/b2", &meta(0o755, 0, 0, T0)).unwrap();
    let long_target = format!("/opt/{}", "long-component/".repeat(14));
    assert!(long_target.len() > 200);
    fs.symlink("/a/short", "b/c", &meta(0o644, 3, 4, T0 - 7))
        .unwrap();
    fs.symlink("/a/long", &long_target, &meta(0o644, 5, 6, T0 - 8))
        .unwrap();
    // Replacing a symlink and a file with a symlink.
    fs.write_file("/a/file", b"x", &meta(0o644, 0, 0, T0))
        .unwrap();
    fs.symlink("/a/file", "short-again", &meta(0, 0, 0, T0))
        .unwrap();
    fs.symlink("/a/short", "b/c/", &meta(0, 3, 4, T0 - 7))
        .unwrap();
    assert_eq!(fs.read_link("/a/long").unwrap(), long_target);
    assert_eq!(
        fs.stat("/a/short").unwrap().unwrap().kind,
        FileKind::Symlink
    );
    // A symlink to a directory is followed by mkdir_p and in parent paths.
    fs.mkdir_p("/a/short/d", &meta(0o755, 0, 0, T0)).unwrap();
    assert_eq!(
        fs.stat("/a/b/c/d").unwrap().unwrap().kind,
        FileKind::Directory
    );
    fs.set_meta("/a/b2", &meta(0o1777, 42, 43, T0 - 100))
        .unwrap();
    let err = fs.symlink("/a/b", "x", &meta(0, 0, 0, T0)).unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::WrongType, "{err}");
    fs.close().unwrap();

    img.assert_fsck_clean();
    let c = img.stat("/a/b/c").unwrap();
    assert_eq!(
        (c.kind.as_str(), c.mode, c.uid, c.gid, c.mtime),
        ("directory", 0o750, 10, 20, T0)
    );
    assert_eq!(c.links, 3, "c holds one subdirectory (d)");
    let a = img.stat("/a").unwrap();
    assert_eq!(a.links, 4, "a holds b and b2");
    let b2 = img.stat("/a/b2").unwrap();
    assert_eq!(
        (b2.mode, b2.uid, b2.gid, b2.mtime),
        (0o1777, 42, 43, T0 - 100)
    );
    let short = img.stat("/a/short").unwrap();
    assert_eq!(short.fast_link.as_deref(), Some("b/c/"));
    assert_eq!(
        (
            short.kind.as_str(),
            short.mode,
            short.uid,
            short.gid,
            short.mtime
        ),
        ("symlink", 0o777, 3, 4, T0 - 7)
    );
    assert_eq!(
        img.stat("/a/file").unwrap().fast_link.as_deref(),
        Some("short-again")
    );
    let long = img.stat("/a/long").unwrap();
    assert_eq!(
        (long.size, long.uid, long.gid, long.mtime),
        (long_target.len() as u64, 5, 6, T0 - 8)
    );
    assert!(long.fast_link.is_none());
    assert_eq!(img.cat("/a/long"), long_target.as_bytes());
}

#[test]
fn remove_frees_files_symlinks_and_empty_dirs() {
    let img = mkfs(&Spec::default());
    let mut fs = img.open(true);
    fs.mkdir_p("/d/sub", &meta(0o755, 0, 0, T0)).unwrap();
    let free0 = fs.free_bytes();
    let inodes0 = fs.free_inodes();
    fs.write_file("/d/f", &noise(300_000, 5), &meta(0o644, 0, 0, T0))
        .unwrap();
    fs.symlink("/d/l", &"t".repeat(300), &meta(0, 0, 0, T0))
        .unwrap();
    fs.symlink("/d/s", "short", &meta(0, 0, 0, T0)).unwrap();
    assert!(fs.free_bytes() < free0);
    let err = fs.remove("/d").unwrap_err();
    assert_eq!(*err.kind(), ErrorKind::WrongType, "{err}");
    for p in ["/d/f", "/d/l", "/d/s"] {
        fs.remove(p).unwrap();
    }
    assert_eq!(fs.free_bytes(), free0, "all data blocks are back");
    assert_eq!(fs.free_inodes(), inodes0);
    fs.remove("/d/sub").unwrap();
    assert_eq!(fs.read_dir("/d").unwrap(), Vec::<String>::new());
    assert_eq!(*fs.remove("/d/f").unwrap_err().kind(), ErrorKind::NotFound);
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert!(img.stat("/d/f").is_none());
    assert!(img.stat("/d/sub").is_none());
    assert_eq!(img.stat("/d").unwrap().links, 2);
}

#[test]
fn offset_image_keeps_bytes_outside_the_fs() {
    let offset = 4 << 20;
    let tail = 1 << 20;
    let img = mkfs(&Spec {
        size_mib: 48,
        offset,
        tail,
        ..Spec::default()
    });
    let before = img.bytes();
    let mut fs = img.open(true);
    assert_eq!(fs.total_bytes(), 48 << 20);
    fs.mkdir_p("/etc/app", &meta(0o755, 0, 0, T0)).unwrap();
    fs.write_file("/etc/app/conf", &noise(70_000, 9), &meta(0o600, 0, 0, T0))
        .unwrap();
    fs.symlink("/etc/app/link", "conf", &meta(0, 0, 0, T0))
        .unwrap();
    fs.close().unwrap();
    let after = img.bytes();
    assert_eq!(after.len(), before.len());
    let end = (offset + (48 << 20)) as usize;
    assert!(
        after[..offset as usize] == before[..offset as usize],
        "bytes before the fs changed"
    );
    assert!(after[end..] == before[end..], "bytes after the fs changed");
    assert!(after[offset as usize..end] != before[offset as usize..end]);
    img.assert_fsck_clean();
    assert_eq!(img.cat("/etc/app/conf"), noise(70_000, 9));
}

#[test]
fn hashed_directory_takes_500_more_entries() {
    let img = hashed_dir_image();
    let mut fs = img.open(true);
    add_new_entries(&mut fs, T0);
    fs.mkdir_p("/big/zz-new-dir", &meta(0o755, 0, 0, T0))
        .unwrap();
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert_ne!(img.stat("/big").unwrap().flags & 0x1000, 0, "still indexed");
    let fs = img.open(false);
    let names = fs.read_dir("/big").unwrap();
    assert_eq!(names.len(), 3501);
    for i in (0..500).step_by(7) {
        let name = new_entry(i);
        assert_eq!(fs.read_file(&name).unwrap(), name.as_bytes());
    }
    assert!(fs.stat("/big/existing-file-02999").unwrap().is_some());
    let (listing, _) = img.debugfs("ls /big", false);
    assert_lists_new_entries(&listing);
    assert_eq!(
        img.cat("/big/new-entry-with-a-longer-name-0499"),
        b"/big/new-entry-with-a-longer-name-0499"
    );
}

#[test]
fn merged_usr_parent_symlink_is_followed() {
    let t = tree();
    write_tree_file(
        t.path(),
        "usr/lib/systemd/system/existing.service",
        b"[Unit]\n",
    );
    std::os::unix::fs::symlink("usr/lib", t.path().join("lib")).unwrap();
    std::os::unix::fs::symlink("/usr/bin", t.path().join("bin")).unwrap();
    std::fs::create_dir_all(t.path().join("usr/bin")).unwrap();
    let img = mkfs(&Spec {
        tree: Some(t.path()),
        ..Spec::default()
    });
    let mut fs = img.open(true);
    fs.write_file(
        "/lib/systemd/system/x.service",
        b"[Service]\n",
        &meta(0o644, 0, 0, T0),
    )
    .unwrap();
    fs.write_file("/bin/tool", b"#!/bin/sh\n", &meta(0o755, 0, 0, T0))
        .unwrap();
    assert_eq!(fs.stat("/lib").unwrap().unwrap().kind, FileKind::Symlink);
    assert_eq!(
        fs.read_file("/lib/systemd/system/existing.service")
            .unwrap(),
        b"[Unit]\n"
    );
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert_eq!(img.cat("/usr/lib/systemd/system/x.service"), b"[Service]\n");
    assert_eq!(img.cat("/usr/bin/tool"), b"#!/bin/sh\n");
    assert_eq!(
        img.stat("/lib").unwrap().fast_link.as_deref(),
        Some("usr/lib")
    );
}

#[test]
fn large_times_and_ids_round_trip() {
    let img = mkfs(&Spec::default());
    let mut fs = img.open(true);
    let y2100 = 4_102_444_800;
    fs.write_file("/future", b"f", &meta(0o644, 100_000, 200_000, y2100))
        .unwrap();
    fs.write_file("/past", b"p", &meta(0o644, 0, 0, -86_400))
        .unwrap();
    let st = fs.stat("/future").unwrap().unwrap();
    assert_eq!((st.uid, st.gid, st.mtime), (100_000, 200_000, y2100));
    fs.close().unwrap();
    img.assert_fsck_clean();
    let f = img.stat("/future").unwrap();
    assert_eq!((f.uid, f.gid, f.mtime), (100_000, 200_000, y2100));
    assert_eq!(img.stat("/past").unwrap().mtime, -86_400);
}

#[test]
fn reading_api_matches_debugfs() {
    let t = tree();
    write_tree_file(t.path(), "etc/os-release", b"ID=debian\n");
    write_tree_file(t.path(), "etc/ssh/sshd_config", &noise(5000, 3));
    std::os::unix::fs::symlink("os-release", t.path().join("etc/os-link")).unwrap();
    let img = mkfs(&Spec {
        tree: Some(t.path()),
        extra_args: &["-L", "rootfs", "-U", "0b7e37b8-3d6e-4b1c-9b5e-2f6f3a0c1d2e"],
        ..Spec::default()
    });
    let fs = Fs::open(&img.path, 0, false).unwrap();
    assert_eq!(fs.label(), "rootfs");
    assert_eq!(fs.uuid(), "0b7e37b8-3d6e-4b1c-9b5e-2f6f3a0c1d2e");
    assert_eq!(
        fs.read_dir("/etc").unwrap(),
        ["os-link", "os-release", "ssh"]
    );
    assert_eq!(
        fs.read_file("/etc/ssh/sshd_config").unwrap(),
        img.cat("/etc/ssh/sshd_config")
    );
    assert_eq!(fs.read_link("/etc/os-link").unwrap(), "os-release");
    assert_eq!(fs.read_file("/etc/os-link").unwrap(), b"ID=debian\n");
    let st = fs.stat("/etc/ssh/sshd_config").unwrap().unwrap();
    let dbg = img.stat("/etc/ssh/sshd_config").unwrap();
    assert_eq!(
        (st.mode & 0o7777, st.uid, st.gid, st.size, st.mtime),
        (dbg.mode, dbg.uid, dbg.gid, dbg.size, dbg.mtime)
    );
    assert_eq!(fs.stat("/nope/x").unwrap(), None);
    assert_eq!(fs.stat("/").unwrap().unwrap().ino, 2);
    assert!(fs.free_bytes() < fs.total_bytes());
    assert!(fs.free_inodes() > 0);
    // Read-only handles refuse writes.
    let mut ro = fs;
    let err = ro.write_file("/x", b"", &meta(0o644, 0, 0, 0)).unwrap_err();
    assert!(err.to_string().starts_with("ext4: write /x: "), "{err}");
    assert_eq!(
        *ro.read_file("/etc").unwrap_err().kind(),
        ErrorKind::WrongType
    );
    assert_eq!(
        *ro.read_link("/etc/os-release").unwrap_err().kind(),
        ErrorKind::WrongType
    );
    assert_eq!(
        *ro.read_file("relative").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// The same operations on other flavours: ext2/ext3 (block maps, no extents), inline data,
/// 128-byte inodes (no extra time fields).
fn flavour(fs_type: &str, extra_args: &[&str]) {
    let img = mkfs(&Spec {
        size_mib: 32,
        extra_args,
        ..Spec::default()
    });
    if fs_type != "ext4" {
        let out = std::process::Command::new("mke2fs")
            .args(["-q", "-F", "-t", fs_type])
            .args(extra_args)
            .arg(&img.path)
            .arg("32M")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let big = noise(600_000, 11);
    let mut fs = img.open(true);
    fs.set_time(T0);
    fs.mkdir_p("/x/y", &meta(0o755, 1, 2, T0 - 1)).unwrap();
    fs.write_file("/x/y/big", &big, &meta(0o644, 3, 4, T0 - 2))
        .unwrap();
    fs.write_file("/x/y/small", b"tiny", &meta(0o600, 5, 6, T0 - 3))
        .unwrap();
    fs.write_file("/x/y/big", &big[..5000], &meta(0o644, 3, 4, T0 - 2))
        .unwrap();
    fs.symlink("/x/long", &"L".repeat(100), &meta(0, 0, 0, T0))
        .unwrap();
    fs.symlink("/x/short", "y/small", &meta(0, 0, 0, T0))
        .unwrap();
    for i in 0..150 {
        fs.write_file(
            &format!("/x/y/f{i:03}-with-a-long-name-to-fill-blocks"),
            b"",
            &meta(0o644, 0, 0, T0),
        )
        .unwrap();
    }
    fs.remove("/x/y/small").unwrap();
    assert_eq!(
        fs.read_file("/x/short").unwrap_err().kind(),
        &ErrorKind::NotFound
    );
    fs.close().unwrap();
    img.assert_fsck_clean();
    assert_eq!(img.cat("/x/y/big"), &big[..5000]);
    assert_eq!(img.cat("/x/long"), "L".repeat(100).as_bytes());
    let st = img.stat("/x/y/big").unwrap();
    assert_eq!((st.uid, st.gid, st.mtime), (3, 4, T0 - 2));
    let fs = img.open(false);
    assert_eq!(fs.read_dir("/x/y").unwrap().len(), 151);
    assert_eq!(fs.read_link("/x/long").unwrap(), "L".repeat(100));
}

#[test]
fn ext2_block_maps() {
    flavour("ext2", &[]);
}

#[test]
fn ext3_block_maps_with_journal() {
    flavour("ext3", &[]);
}

#[test]
fn ext4_inline_data() {
    flavour("ext4", &["-O", "inline_data"]);
}

#[test]
fn ext4_small_inodes() {
    flavour("ext4", &["-I", "128"]);
}

/// Names of every length 1..=255 in a 1 KiB-block directory: many entries end exactly at the end
/// of their block (where a full-size `ext2_dir_entry` would run past it); every name reads back
/// whole, as debugfs lists it.
#[test]
fn read_dir_returns_names_of_every_length_up_to_block_ends() {
    let img = mkfs(&Spec {
        block_size: Some(1024),
        ..Spec::default()
    });
    let mut fs = img.open(true);
    fs.mkdir_p("/n", &meta(0o755, 0, 0, T0)).unwrap();
    let mut want: Vec<String> = (1..=255)
        .map(|len| {
            (0..len)
                .map(|i| char::from(b'a' + ((len + i) % 26) as u8))
                .collect()
        })
        .collect();
    for name in &want {
        fs.write_file(&format!("/n/{name}"), b"x", &meta(0o644, 0, 0, T0))
            .unwrap();
    }
    fs.close().unwrap();
    img.assert_fsck_clean();
    let fs = img.open(false);
    let mut names = fs.read_dir("/n").unwrap();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    let (listing, _) = img.debugfs("ls -p /n", false);
    let listed = String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| n != "." && n != "..")
        .count();
    assert_eq!(listed, 255, "debugfs lists the same entries");
}

/// `data_ranges` names exactly the blocks debugfs lists for a file, and reading the image at
/// those ranges gives the file's content (both block sizes, extents and a fragmented file).
#[test]
fn data_ranges_match_debugfs_blocks_and_hold_the_content() {
    for block_size in [1024u32, 4096] {
        let img = mkfs(&Spec {
            block_size: Some(block_size),
            offset: 1 << 20,
            ..Spec::default()
        });
        let mut fs = img.open(true);
        let secret = noise(5 * block_size as usize + 123, 9);
        // Interleave writes so the file is not one run.
        fs.write_file(
            "/pad1",
            &noise(block_size as usize, 1),
            &meta(0o644, 0, 0, T0),
        )
        .unwrap();
        fs.write_file(
            "/key",
            &secret[..block_size as usize],
            &meta(0o600, 0, 0, T0),
        )
        .unwrap();
        fs.write_file(
            "/pad2",
            &noise(3 * block_size as usize, 2),
            &meta(0o644, 0, 0, T0),
        )
        .unwrap();
        fs.write_file("/key", &secret, &meta(0o600, 0, 0, T0))
            .unwrap();
        let ranges = fs.data_ranges("/key").unwrap();
        assert!(matches!(
            fs.data_ranges("/").map_err(|e| e.kind().clone()),
            Err(ErrorKind::WrongType)
        ));
        fs.close().unwrap();
        img.assert_fsck_clean();
        let (out, _) = img.debugfs("blocks /key", false);
        let listed: Vec<u64> = String::from_utf8_lossy(&out)
            .split_whitespace()
            .map(|b| b.parse().expect("block number"))
            .collect();
        let bs = u64::from(block_size);
        let mapped: Vec<u64> = ranges
            .iter()
            .flat_map(|&(off, len)| (off / bs..(off + len) / bs).collect::<Vec<_>>())
            .collect();
        assert_eq!(mapped, listed);
        let bytes = img.bytes();
        let mut content = Vec::new();
        for (off, len) in &ranges {
            let at = (img.offset + off) as usize;
            content.extend_from_slice(&bytes[at..at + *len as usize]);
        }
        assert_eq!(&content[..secret.len()], &secret[..]);
    }
}
