//! `imgbuild build --base http://…` downloads through the cache: a first build makes requests,
//! a repeated build makes none (and skips decompression through the raw cache); a wrong hash
//! fails with no artifact and no cache entry.

mod common;

use common::*;
use imgbuild_testkit::{compress, sha256_file, Compression, Layout};
use std::sync::atomic::Ordering;

#[test]
fn url_base_is_downloaded_once_then_served_from_the_cache() {
    let f = fixture(Layout::RpiOs, 4096, 0);
    let srv = tempfile::tempdir().expect("tempdir");
    let xz = compress(&copy_base(&f, srv.path(), "base.img"), Compression::Xz);
    let sha = sha256_file(&xz);
    let (root, count) = serve_dir(srv.path());
    let url = format!("{root}/base.img.xz");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("imgbuild.toml"), "hostname = \"dl\"\n").expect("config");
    let cache = dir.path().join("cache");
    let args = [
        "--board",
        "rpi4",
        "--base",
        &url,
        "--base-sha256",
        &sha,
        "--cache-dir",
        cache.to_str().expect("utf8"),
        "--name",
        "a",
    ];
    let o = imgbuild(dir.path(), &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = count.load(Ordering::SeqCst);
    assert!(first >= 1, "no request was made");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("dist/manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["base"]["origin"], url.as_str());
    assert_eq!(manifest["base"]["sha256"], sha.as_str());
    assert_eq!(manifest["base"]["insecure_no_verify"], false);

    let o = imgbuild(dir.path(), &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        count.load(Ordering::SeqCst),
        first,
        "the second build made a request"
    );
    let ls = imgbuild(
        dir.path(),
        &["cache", "ls", "--cache-dir", cache.to_str().expect("utf8")],
    );
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(
        ls.lines()
            .any(|l| l.contains(&sha) && l.starts_with("download")),
        "{ls}"
    );
    assert!(
        ls.lines().any(|l| l.contains(&sha) && l.starts_with("raw")),
        "raw image not cached: {ls}"
    );
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--base-sha256",
            &sha,
            "--cache-dir",
            cache.to_str().expect("utf8"),
            "--offline",
            "--name",
            "b",
        ],
    );
    assert!(
        o.status.success(),
        "offline build from cache: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn wrong_hash_or_no_hash_is_refused() {
    let f = fixture(Layout::RpiOs, 4096, 0);
    let srv = tempfile::tempdir().expect("tempdir");
    compress(&copy_base(&f, srv.path(), "base.img"), Compression::Xz);
    let (root, _count) = serve_dir(srv.path());
    let url = format!("{root}/base.img.xz");
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let wrong = "0".repeat(64);
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--base-sha256",
            &wrong,
            "--cache-dir",
            cache.to_str().expect("utf8"),
        ],
    );
    assert_fails(&o, &dir.path().join("dist"), &[&url, &wrong]);
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--cache-dir",
            cache.to_str().expect("utf8"),
        ],
    );
    assert_fails(&o, &dir.path().join("dist"), &["--insecure-no-verify"]);
}

/// `sha512sum FILE`, the oracle.
fn sha512_file(path: &std::path::Path) -> String {
    let o = imgbuild_testkit::run_ok(std::process::Command::new("sha512sum").arg(path));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

#[test]
fn sha512_pins_check_urls_and_local_files() {
    let f = fixture(Layout::RpiOs, 4096, 0);
    let srv = tempfile::tempdir().expect("tempdir");
    let xz = compress(&copy_base(&f, srv.path(), "base.img"), Compression::Xz);
    let sha512 = sha512_file(&xz);
    let (root, count) = serve_dir(srv.path());
    let url = format!("{root}/base.img.xz");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("imgbuild.toml"), "hostname = \"s5\"\n").expect("config");
    let cache = dir.path().join("cache");
    let cache_arg = cache.to_str().expect("utf8");
    let wrong = sha512_file(&f.path);
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--base-sha512",
            &wrong,
            "--cache-dir",
            cache_arg,
        ],
    );
    assert_fails(
        &o,
        &dir.path().join("dist"),
        &["sha512 mismatch", &url, &wrong],
    );
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--base-sha512",
            &sha512,
            "--cache-dir",
            cache_arg,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("dist/manifest.json")).expect("manifest"),
    )
    .expect("json");
    assert_eq!(manifest["base"]["sha256"], sha256_file(&xz).as_str());
    // The second run finds the download by its sha512 alone, offline.
    let before = count.load(Ordering::SeqCst);
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            &url,
            "--base-sha512",
            &sha512,
            "--cache-dir",
            cache_arg,
            "--offline",
            "--out",
            "again",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(count.load(Ordering::SeqCst), before, "no request");
    // A local file is checked against --base-sha512 too.
    let local = xz.to_str().expect("utf8");
    let o = imgbuild(
        dir.path(),
        &[
            "--board",
            "rpi4",
            "--base",
            local,
            "--base-sha512",
            &wrong,
            "--out",
            "local",
        ],
    );
    assert_fails(
        &o,
        &dir.path().join("local"),
        &["sha512 is", &sha512, &wrong],
    );
}
