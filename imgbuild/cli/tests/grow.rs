//! `[image]` through the binary: a grown image is clean for e2fsck/fsck.vfat, its table and
//! file system fill the new size, a warm rebuild equals a cold build, and a shrink or a bad
//! size is one error line with no output.

mod common;

use common::*;
use imgbuild_testkit::{
    build_fixture, debugfs_cat, run_ok, sfdisk_json, sha256_file, Fixture, FixtureOptions, Layout,
};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;

/// Raspberry Pi OS shape, 128 MiB (boot 64 MiB at 4 MiB, root 60 MiB from 68 MiB), with
/// `filler_mib` MiB of data in the root.
fn small_fixture_with(dir: &Path, filler_mib: u64) -> Fixture {
    let opts = FixtureOptions {
        layout: Layout::RpiOs,
        image_mib: 128,
        boot_mib: 64,
        big_dir_entries: 40,
        root_filler_mib: filler_mib,
        ..FixtureOptions::default()
    };
    build_fixture(dir, &opts)
}

fn small_fixture(dir: &Path) -> Fixture {
    small_fixture_with(dir, 0)
}

fn build(dir: &Path, base: &Path, cache: &Path, out: &str, extra: &[&str]) -> String {
    let (base, cache) = (base.to_str().expect("utf8"), cache.to_str().expect("utf8"));
    let mut args = vec!["--board", "rpi4", "--base", base, "--cache-dir", cache];
    args.extend(["--out", out, "--name", "g", "-v"]);
    args.extend_from_slice(extra);
    let o = imgbuild(dir, &args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build {out} failed: {stderr}");
    stderr
}

fn config(dir: &Path, hostname: &str, image: &str) {
    std::fs::write(
        dir.join("imgbuild.toml"),
        format!("hostname = \"{hostname}\"\n\n[image]\n{image}\n"),
    )
    .expect("config");
}

#[test]
fn a_grown_image_is_clean_and_a_warm_rebuild_equals_a_cold_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = small_fixture(dir.path());
    let warm = dir.path().join("warm-cache");
    let cold = dir.path().join("cold-cache");

    // A build without [image] fills the warm cache with the base's chunks (the old partition
    // table and superblock among them); the grown rebuild must not reuse those.
    std::fs::write(dir.path().join("imgbuild.toml"), "hostname = \"first\"\n").expect("config");
    build(dir.path(), &f.path, &warm, "a", &[]);
    config(dir.path(), "second", "size = \"192MiB\"");
    let log = build(dir.path(), &f.path, &warm, "b", &[]);
    assert!(log.contains("stage=\"grow\""), "{log}");
    build(dir.path(), &f.path, &cold, "c", &[]);
    assert_eq!(
        sha256_file(&dir.path().join("b/g.img.xz")),
        sha256_file(&dir.path().join("c/g.img.xz")),
        "a warm rebuild of a grown image differs from a cold build"
    );
    // The base file is only read.
    assert_eq!(std::fs::metadata(&f.path).expect("stat").len(), 128 * MIB);

    let raw = unxz(&dir.path().join("b/g.img.xz"), dir.path());
    assert_eq!(std::fs::metadata(&raw).expect("stat").len(), 192 * MIB);
    assert_fs_clean(&raw, &f);
    let json = sfdisk_json(&raw);
    let root = &json["partitiontable"]["partitions"][1];
    assert_eq!(root["start"].as_u64(), Some(f.root.offset_bytes / 512));
    assert_eq!(
        root["size"].as_u64(),
        Some((192 * MIB - f.root.offset_bytes) / 512)
    );
    let dump = run_ok(Command::new("dumpe2fs").arg("-h").arg(format!(
        "{}?offset={}",
        raw.display(),
        f.root.offset_bytes
    )));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "Block",
                    "count:",
                    &((192 * MIB - f.root.offset_bytes) / 4096).to_string()
                ]),
        "{dump}"
    );
    assert_eq!(
        debugfs_cat(&raw, f.root.offset_bytes, "/etc/hostname"),
        b"second\n"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("b/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["raw_size"].as_u64(), Some(192 * MIB));
    assert_eq!(
        manifest["partition_table"]["partitions"][1]["size"].as_u64(),
        Some(192 * MIB - f.root.offset_bytes)
    );

    // Uncompressed: the sparse image itself, grown by grow_root.
    config(dir.path(), "second", "grow_root = \"+64MiB\"");
    build(dir.path(), &f.path, &warm, "d", &["--compress", "none"]);
    let img = dir.path().join("d/g.img");
    assert_eq!(std::fs::metadata(&img).expect("stat").len(), 192 * MIB);
    assert_fs_clean(&img, &f);
}

#[test]
fn shrinking_or_a_bad_size_is_one_error_line_and_no_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = small_fixture(dir.path());
    let base = f.path.to_str().expect("utf8");
    let run = |out: &str| {
        imgbuild(
            dir.path(),
            &["--board", "rpi4", "--base", base, "--out", out],
        )
    };
    config(dir.path(), "x", "size = \"64MiB\"");
    let out = dir.path().join("shrink");
    assert_fails(
        &run("shrink"),
        &out,
        &["[image] size", "shrinking is not supported"],
    );
    config(dir.path(), "x", "size = \"4GB\"");
    let out = dir.path().join("bad");
    assert_fails(
        &run("bad"),
        &out,
        &["imgbuild.toml", "image.size", "\"4GB\""],
    );
    assert_eq!(std::fs::metadata(&f.path).expect("stat").len(), 128 * MIB);
}

#[test]
fn a_payload_larger_than_the_free_space_fits_once_the_root_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    // About 10 MiB free in the root; the payload is 24 MiB.
    let f = small_fixture_with(dir.path(), 44);
    imgbuild_testkit::random_bytes_file(&dir.path().join("payload.bin"), 24 * MIB);
    let file = "[[file]]\npath = \"/opt/payload.bin\"\nsource = \"payload.bin\"\n";
    std::fs::write(dir.path().join("imgbuild.toml"), file).expect("config");
    let base = f.path.to_str().expect("utf8");
    let args = ["--board", "rpi4", "--base", base, "--compress", "none"];
    let o = imgbuild(dir.path(), &[&args[..], &["--out", "full"]].concat());
    assert_fails(
        &o,
        &dir.path().join("full"),
        &[
            "root file system full",
            "use [image] size or [image] grow_root",
        ],
    );

    std::fs::write(
        dir.path().join("imgbuild.toml"),
        format!("{file}\n[image]\ngrow_root = \"+32MiB\"\n"),
    )
    .expect("config");
    let o = imgbuild(
        dir.path(),
        &[&args[..], &["--out", "grown", "--name", "g"]].concat(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = dir.path().join("grown/g.img");
    assert_eq!(std::fs::metadata(&img).expect("stat").len(), 160 * MIB);
    assert_fs_clean(&img, &f);
    assert_eq!(
        debugfs_cat(&img, f.root.offset_bytes, "/opt/payload.bin"),
        std::fs::read(dir.path().join("payload.bin")).expect("payload")
    );
}
