//! Bad inputs: each gives one clear error line, a non-zero exit, no artifact, and leaves the
//! base file untouched.

mod common;

use common::*;
use imgbuild_testkit::{compress, random_bytes_file, run, sha256_file, Compression, Layout};
use std::path::Path;
use std::process::Command;

/// Runs a build of `base` with `config` in a fresh dir and checks the failure.
fn fails(base: &Path, board: &str, config: &str, needles: &[&str]) {
    let dir = base.parent().expect("parent");
    std::fs::write(dir.join("imgbuild.toml"), config).expect("write config");
    let before = sha256_file(base);
    let o = imgbuild(
        dir,
        &[
            "--board",
            board,
            "--base",
            base.to_str().expect("utf8"),
            "--out",
            "dist",
        ],
    );
    assert_fails(&o, &dir.join("dist"), needles);
    assert_eq!(sha256_file(base), before, "the base file changed");
    let strays: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".work") || n.contains(".tmp") || n.ends_with(".part"))
        .collect();
    assert!(strays.is_empty(), "left temporary files: {strays:?}");
}

fn rpi_base(dir: &Path) -> std::path::PathBuf {
    copy_base(&fixture(Layout::RpiOs, 4096, 0), dir, "base.img")
}

#[test]
fn truncated_xz_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let xz = compress(&rpi_base(dir.path()), Compression::Xz);
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
    let dir = tempfile::tempdir().expect("tempdir");
    let base = copy_base(
        &fixture(Layout::DebianRaspi, 4096, 0),
        dir.path(),
        "base.img",
    );
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
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(Layout::RpiOs, 4096, 0);
    let base = copy_base(&f, dir.path(), "base.img");
    let spec = format!("{}?offset={}", base.display(), f.root.offset_bytes);
    let o = run(Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(&spec));
    assert!(o.status.success());
    fails(&base, "rpi4", "hostname = \"x\"\n", &["needs recovery"]);
}

#[test]
fn root_fs_too_full_for_the_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(Layout::RpiOs, 4096, 0);
    let base = copy_base(&f, dir.path(), "base.img");
    let free = {
        let o = run(Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["inspect", "--json"])
            .arg(&base));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect json");
        v["partitions"][1]["free"].as_u64().expect("free bytes")
    };
    let big = dir.path().join("big.bin");
    random_bytes_file(&big, free + (8 << 20));
    fails(
        &base,
        "rpi4",
        "[[file]]\npath = \"/var/big.bin\"\nsource = \"big.bin\"\n",
        &["/var/big.bin", "free"],
    );
}

#[test]
fn config_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = rpi_base(dir.path());
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
