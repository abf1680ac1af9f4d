//! The fixtures have the promised shape, and each oracle reads known files correctly.

use imgbuild_testkit::*;
use std::process::Command;

fn build(layout: Layout, block: u32) -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FixtureOptions {
        layout,
        ext4_block_size: block,
        ..FixtureOptions::default()
    };
    let fixture = build_fixture(dir.path(), &opts);
    (dir, fixture)
}

fn check_root(f: &Fixture) {
    let (img, off) = (&f.path, f.root.offset_bytes);
    let shadow = debugfs_stat(img, off, "/etc/shadow").expect("/etc/shadow exists");
    assert_eq!(
        (shadow.kind, shadow.mode, shadow.uid, shadow.gid),
        (ExtKind::File, 0o640, 0, 42)
    );
    let passwd = debugfs_cat(img, off, "/etc/passwd");
    assert!(shadow.size > 0);
    assert!(passwd.starts_with(b"root:x:0:0:"));
    let passwd_stat = debugfs_stat(img, off, "/etc/passwd").expect("/etc/passwd exists");
    assert_eq!(passwd_stat.size, passwd.len() as u64);
    assert!(
        passwd_stat.mtime > 1_600_000_000,
        "mtime {}",
        passwd_stat.mtime
    );

    let tmp = debugfs_stat(img, off, "/tmp").expect("/tmp exists");
    assert_eq!((tmp.kind, tmp.mode), (ExtKind::Dir, 0o1777));
    let root_home = debugfs_stat(img, off, "/root").expect("/root exists");
    assert_eq!(root_home.mode, 0o700);
    assert_eq!(debugfs_stat(img, off, "/no/such/file"), None);

    for (link, target) in [
        ("/lib", "usr/lib"),
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
    ] {
        assert_eq!(debugfs_readlink(img, off, link), target);
    }
    assert_eq!(
        debugfs_readlink(img, off, "/etc/os-release"),
        "../usr/lib/os-release"
    );

    let etc = debugfs_ls(img, off, "/etc");
    assert!(etc.len() >= 300, "/etc has {} entries", etc.len());
    assert!(etc.iter().any(|n| n == "hostname"));
    let doc = debugfs_ls(img, off, &f.big_dir);
    assert_eq!(doc.len(), FixtureOptions::default().big_dir_entries);
    let big = debugfs_stat(img, off, &f.big_dir).expect("big dir");
    assert_ne!(big.flags & 0x1000, 0, "big dir is hashed");
    let units = debugfs_ls(img, off, "/usr/lib/systemd/system");
    assert!(units.iter().any(|n| n == "ssh.service"));
    let (clean, report) = e2fsck_clean(img, off);
    assert!(clean, "{report}");
}

#[test]
fn rpios_fixture_and_oracles() {
    let (_dir, f) = build(Layout::RpiOs, 4096);
    assert_eq!(f.boot.offset_bytes, 8192 * 512);
    assert_eq!((f.boot.index, f.root.index), (1, 2));
    assert_eq!(f.root.offset_bytes, f.boot.offset_bytes + f.boot.size_bytes);
    let dump = sfdisk_dump(&f.path);
    assert!(
        dump.contains(&format!("label-id: 0x{}", f.disk_id)),
        "{dump}"
    );
    assert!(dump.contains("type=c, bootable"), "{dump}");

    let cmdline =
        String::from_utf8(mtype(&f.path, f.boot.offset_bytes, "cmdline.txt")).expect("utf8");
    assert!(
        cmdline.contains(&format!("root=PARTUUID={}-02 ", f.disk_id)),
        "{cmdline}"
    );
    assert_eq!(cmdline.lines().count(), 1);
    let config =
        String::from_utf8(mtype(&f.path, f.boot.offset_bytes, "/config.txt")).expect("utf8");
    assert!(config.contains("dtparam=audio=on") && config.contains("[all]"));
    let names = mdir_names(&f.path, f.boot.offset_bytes, "/");
    for want in ["cmdline.txt", "config.txt", "kernel8.img", "overlays"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let overlays = mdir_names(&f.path, f.boot.offset_bytes, "overlays");
    assert!(
        overlays.iter().any(|n| n == "vc4-kms-v3d.dtbo"),
        "{overlays:?}"
    );
    let fstab =
        String::from_utf8(debugfs_cat(&f.path, f.root.offset_bytes, "/etc/fstab")).expect("utf8");
    assert!(fstab.contains(&f.boot.partuuid) && fstab.contains(&f.root.partuuid));
    let (clean, report) = fsck_vfat_clean(&f.path, f.boot.offset_bytes);
    assert!(clean, "{report}");
    check_root(&f);
}

#[test]
fn debian_raspi_fixture_with_1k_blocks() {
    let (_dir, f) = build(Layout::DebianRaspi, 1024);
    assert_eq!(f.boot.offset_bytes, 4 << 20);
    assert_eq!(
        (f.boot_label.as_str(), f.root_label.as_str()),
        ("RASPIFIRM", "RASPIROOT")
    );
    let dump = sfdisk_dump(&f.path);
    assert!(!dump.contains("bootable"), "{dump}");
    let sysconf = mtype(&f.path, f.boot.offset_bytes, "sysconf.txt");
    assert!(String::from_utf8_lossy(&sysconf).contains("#root_authorized_key="));
    // mke2fs records the block size as log2(size) - 10 in the superblock at offset 24.
    let sb = std::fs::read(&f.path).expect("read image");
    let at = f.root.offset_bytes as usize + 1024 + 24;
    assert_eq!(sb[at], 0, "1 KiB blocks");
    check_root(&f);
}

#[test]
fn generic_gpt_fixture() {
    let (_dir, f) = build(Layout::GenericGpt, 4096);
    assert_eq!((f.boot.index, f.root.index), (15, 1));
    assert_eq!(
        (f.boot.offset_bytes, f.boot.size_bytes),
        (2048 * 512, 260096 * 512)
    );
    assert_eq!(f.root.offset_bytes, 262144 * 512);
    let verify = sgdisk_verify(&f.path);
    assert!(verify.contains("No problems found"), "{verify}");
    let names = mdir_names(&f.path, f.boot.offset_bytes, "EFI/BOOT");
    assert!(names.iter().any(|n| n == "BOOTAA64.EFI"), "{names:?}");
    check_root(&f);
}

#[test]
fn compress_round_trips_with_the_cli_tools() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("data.img");
    random_bytes_file(&raw, 3 << 20);
    let sum = sha256_file(&raw);
    for (how, tool) in [
        (Compression::Xz, "xz"),
        (Compression::Gzip, "gzip"),
        (Compression::Zstd, "zstd"),
    ] {
        let packed = compress(&raw, how);
        assert_eq!(sha256_file(&raw), sum, "original kept");
        let out = run_ok(Command::new(tool).arg("-dc").arg(&packed));
        let back = dir.path().join("back.img");
        std::fs::write(&back, &out.stdout).expect("write");
        assert_eq!(sha256_file(&back), sum, "{tool} round trip");
    }
    let zipped = compress(&raw, Compression::Zip);
    let out = run_ok(Command::new("python3")
        .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); print(z.namelist()); sys.stdout.flush(); z.testzip() is None or sys.exit(3)"])
        .arg(&zipped));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "['data.img']");
}
