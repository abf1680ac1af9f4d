//! Bad inputs: each gives one clear error line, a non-zero exit, no artifact, and leaves the
//! base file untouched.

mod common;

use common::*;
use imgbuild_testkit::{compress, random_bytes_file, run, sha256_file, Compression, Layout};
use std::path::Path;
use std::process::Command;

/// Runs a build of `base` with `config` in a fresh dir and checks the failure.
/// Builds `base` with `config`, expects a clean failure naming `needles`; returns stderr.
fn fails(base: &Path, board: &str, config: &str, needles: &[&str]) -> String {
    let dir = base.parent().expect("parent");
    write_config(dir, config);
    let before = sha256_file(base);
    let o = run_build(dir, board, base.to_str().expect("utf8"), &["--out", "dist"]);
    assert_fails(&o, &dir.join("dist"), needles);
    assert_eq!(sha256_file(base), before, "the base file changed");
    let strays: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".work") || n.contains(".tmp") || n.ends_with(".part"))
        .collect();
    assert!(strays.is_empty(), "left temporary files: {strays:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn truncated_xz_is_refused() {
    let (_, _dir, base) = fixture_base(Layout::RpiOs, 4096);
    let xz = compress(&base, Compression::Xz);
    let len = std::fs::metadata(&xz).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&xz)
        .expect("open");
    f.set_len(len / 2).expect("truncate");
    fails(&xz, "rpi4", "", &["xz", "truncated"]);
}

#[test]
fn random_bytes_have_no_partition_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("random.img");
    random_bytes_file(&p, 8 << 20);
    fails(&p, "rpi4", "", &["no partition table"]);
}

#[test]
fn zeros_have_no_partition_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("zeros.img");
    std::fs::File::create(&p)
        .expect("create")
        .set_len(16 << 20)
        .expect("len");
    fails(&p, "rpi4", "", &["no partition table"]);
}

#[test]
fn labels_that_do_not_match_the_board() {
    let (_, _dir, base) = fixture_base(Layout::DebianRaspi, 4096);
    fails(
        &base,
        "rpi4",
        "",
        &["does not match board rpi4", "RASPIFIRM", "bootfs"],
    );
    fails(
        &base,
        "generic-arm64",
        "",
        &["does not match board generic-arm64", "Gpt"],
    );
}

#[test]
fn ext4_needing_journal_recovery_is_refused() {
    let (f, _dir, base) = fixture_base(Layout::RpiOs, 4096);
    debugfs_write(&base, f.root.offset_bytes, "feature needs_recovery");
    fails(&base, "rpi4", "hostname = \"x\"\n", &["needs recovery"]);
}

#[test]
fn root_fs_too_full_for_the_payload() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    let free = {
        let o = run(Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["inspect", "--json"])
            .arg(&base));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
        v["partitions"][1]["free"].as_u64().expect("free bytes")
    };
    let big = dir.path().join("big.bin");
    random_bytes_file(&big, free + (8 << 20));
    let err = fails(
        &base,
        "rpi4",
        "[[file]]\npath = \"/var/big.bin\"\nsource = \"big.bin\"\n",
        &[
            "root file system full: ",
            "/var/big.bin",
            "use [image] size",
        ],
    );
    // 8 MiB more than is free, plus the metadata blocks of the file and the rest of the plan.
    let mib: u64 = err
        .split("full: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MiB count in {err:?}"));
    assert!((8..=10).contains(&mib), "{mib} MiB more needed: {err}");
}

#[test]
fn config_errors_name_what_is_wrong() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    fails(
        &base,
        "rpi4",
        "[[file]]\npath = \"/etc/../x\"\ncontent = \"\"\n",
        &["/etc/../x", ".."],
    );
    fails(
        &base,
        "rpi4",
        "[[file]]\npath = \"etc/x\"\ncontent = \"\"\n",
        &["etc/x", "absolute"],
    );
    fails(
        &base,
        "rpi4",
        "[user]\nname = \"admin\"\npassword = \"hunter2\"\n",
        &["plaintext"],
    );
    fails(&base, "rpi4", "colour = \"blue\"\n", &["colour"]);
    std::fs::create_dir_all(dir.path().join("templates")).expect("mkdir");
    std::fs::write(dir.path().join("templates/t.tera"), "{{ nope }}").expect("write");
    fails(
        &base,
        "rpi4",
        "[[template]]\nsource = \"t.tera\"\npath = \"/etc/t\"\n",
        &["nope"],
    );
    let ov = dir.path().join("ov");
    std::fs::create_dir_all(&ov).expect("mkdir");
    std::fs::write(
        ov.join("overlay.toml"),
        "[\"/../etc/shadow\"]\nmode = \"0600\"\n",
    )
    .expect("write");
    fails(
        &base,
        "rpi4",
        "overlays = [\"ov\"]\n",
        &["overlay.toml", ".."],
    );
    fails(
        &base,
        "rpi4",
        "[systemd]\nenable = [\"nope.service\"]\n",
        &["nope.service", "not found"],
    );
    fails(&base, "nosuchboard", "", &["unknown board", "rpi4-debian"]);
}

/// Runs debugfs with a write request on the root file system of `base`.
fn debugfs_write(base: &Path, offset: u64, request: &str) {
    let spec = format!("{}?offset={offset}", base.display());
    let o = run(Command::new("debugfs")
        .args(["-w", "-R", request])
        .arg(&spec));
    assert!(o.status.success(), "debugfs {request}: {o:?}");
}

/// The first data block of `path` in the root file system of `base`, from debugfs.
fn first_block(base: &Path, offset: u64, path: &str) -> u64 {
    let spec = format!("{}?offset={offset}", base.display());
    let o = run(Command::new("debugfs")
        .args(["-R", &format!("blocks {path}")])
        .arg(&spec));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no data block of {path} in debugfs output: {o:?}"))
}

/// The first block of the block bitmap of group 0 of the root file system, from debugfs.
fn block_bitmap_block(base: &Path, offset: u64) -> u64 {
    let spec = format!("{}?offset={offset}", base.display());
    let o = run(Command::new("debugfs").args(["-R", "stats"]).arg(&spec));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("block bitmap at"))
        .unwrap_or_else(|| panic!("no group 0 in debugfs stats: {text}"));
    let after = line.split("block bitmap at ").nth(1).expect("field");
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad debugfs line {line}"))
}

#[test]
fn root_with_used_blocks_marked_free_is_refused() {
    let (f, _dir, base) = fixture_base(Layout::RpiOs, 4096);
    // Blocks of a file in use, marked free with valid checksums: exactly what would make the
    // patch stage allocate (and overwrite) live data.
    let first = first_block(&base, f.root.offset_bytes, "/etc/passwd");
    debugfs_write(&base, f.root.offset_bytes, &format!("freeb {first} 1"));
    assert!(!imgbuild_testkit::e2fsck_clean(&base, f.root.offset_bytes).0);
    fails(
        &base,
        "rpi4",
        "hostname = \"x\"\n",
        &["partition 2 (root, ext4) is not clean", "e2fsck", "bitmap"],
    );
}

#[test]
fn root_with_a_corrupt_block_bitmap_is_refused() {
    let (f, _dir, base) = fixture_base(Layout::RpiOs, 4096);
    // Overwrite group 0's block bitmap with zeros behind libext2fs's back (no checksum update).
    let bitmap = block_bitmap_block(&base, f.root.offset_bytes);
    let at = f.root.offset_bytes + bitmap * u64::from(f.ext4_block_size);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 512], at).expect("write");
    drop(file);
    assert!(!imgbuild_testkit::e2fsck_clean(&base, f.root.offset_bytes).0);
    fails(
        &base,
        "rpi4",
        "hostname = \"x\"\n",
        &["partition 2 (root, ext4) is not clean", "e2fsck"],
    );
}

#[test]
fn boot_fat_with_a_broken_cluster_chain_is_refused() {
    let (f, _dir, base) = fixture_base(Layout::RpiOs, 4096);
    // Mark every cluster of the first FAT free except the reserved entries (the second FAT
    // still has the chains): files now point at free clusters.
    let mut sector = [0u8; 512];
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&base)
        .expect("open");
    use std::os::unix::fs::FileExt;
    file.read_exact_at(&mut sector, f.boot.offset_bytes)
        .expect("read boot sector");
    let bytes_per_sector = u64::from(u16::from_le_bytes([sector[11], sector[12]]));
    let reserved = u64::from(u16::from_le_bytes([sector[14], sector[15]]));
    let fat = f.boot.offset_bytes + reserved * bytes_per_sector;
    file.write_all_at(&[0u8; 4096], fat + 16).expect("write");
    drop(file);
    assert!(!imgbuild_testkit::fsck_vfat_clean(&base, f.boot.offset_bytes).0);
    fails(
        &base,
        "rpi4",
        "hostname = \"x\"\n",
        &["partition 1 (boot, vfat) is not clean", "fsck.vfat"],
    );
}

#[test]
fn install_section_naming_a_path_is_refused() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    for (key, value) in [
        ("Alias", "../../../etc/shadow"),
        ("WantedBy", "../../../etc/x.target"),
        ("Alias", "../../.."),
    ] {
        let units = dir.path().join("ov/etc/systemd/system");
        std::fs::create_dir_all(&units).expect("mkdir");
        std::fs::write(
            units.join("evil.service"),
            format!("[Service]\nExecStart=/bin/true\n[Install]\n{key}={value}\n"),
        )
        .expect("write");
        fails(
            &base,
            "rpi4",
            "overlays = [\"ov\"]\n[systemd]\nenable = [\"evil.service\"]\n",
            &["evil.service", &format!("{key}={value}"), "not a unit name"],
        );
    }
}

#[test]
fn templates_cannot_read_the_environment() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    std::fs::create_dir_all(dir.path().join("templates")).expect("mkdir");
    std::fs::write(
        dir.path().join("templates/t.tera"),
        "{{ get_env(name=\"HOME\") }}",
    )
    .expect("write");
    fails(
        &base,
        "rpi4",
        "[[template]]\nsource = \"t.tera\"\npath = \"/etc/t\"\n",
        &["t.tera", "get_env() is disabled"],
    );
}

#[test]
fn a_clean_verdict_is_remembered_by_the_base_sha256() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    let cache = dir.path().join("cache");
    let (base_arg, cache_arg) = (base.to_str().expect("utf8"), cache.to_str().expect("utf8"));
    write_config(dir.path(), "hostname = \"v\"\n");
    let build = |out: &str| {
        let args = ["-v", "--cache-dir", cache_arg, "--out", out];
        assert_ok(&run_build(dir.path(), "rpi4", base_arg, &args))
    };
    let first = build("a");
    assert!(!first.contains("known clean"), "{first}");
    let verdicts: Vec<String> = std::fs::read_dir(cache.join("verdicts"))
        .expect("verdicts dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert!(
        verdicts[0].starts_with(&sha256_file(&base)),
        "keyed by the base's sha256: {verdicts:?}"
    );
    let second = build("b");
    assert!(second.contains("file systems known clean"), "{second}");
    // A damaged copy (another sha256) is checked, refused, and not remembered.
    let f = fixture(Layout::RpiOs, 4096, 0);
    let bad = copy_base(&f, dir.path(), "bad.img");
    let block = first_block(&bad, f.root.offset_bytes, "/etc/passwd");
    debugfs_write(&bad, f.root.offset_bytes, &format!("freeb {block} 1"));
    for _ in 0..2 {
        let bad = bad.to_str().expect("utf8");
        let o = run_build(
            dir.path(),
            "rpi4",
            bad,
            &["--cache-dir", cache_arg, "--out", "c"],
        );
        assert_fails(&o, &dir.path().join("c"), &["is not clean"]);
    }
    assert_eq!(
        std::fs::read_dir(cache.join("verdicts"))
            .expect("dir")
            .count(),
        1
    );
}
