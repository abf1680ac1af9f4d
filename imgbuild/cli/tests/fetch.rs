//! `imgbuild build --base http://…` downloads through the cache: a first build makes requests,
//! a repeated build makes none (and skips decompression through the raw cache); a wrong hash
//! fails with no artifact and no cache entry.

mod common;

use common::*;
use imgbuild_testkit::{compress, sha256_file, Compression, Fixture, Layout};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The RpiOs fixture's image served as `base.img.xz` by [`serve_dir`], and a project directory
/// with its own download cache.
struct Served {
    f: Fixture,
    /// The served directory, kept while the server runs.
    _srv: tempfile::TempDir,
    /// The served file.
    xz: PathBuf,
    /// Its URL.
    url: String,
    /// Requests served so far.
    count: Arc<AtomicUsize>,
    /// The project directory.
    dir: tempfile::TempDir,
    /// `dir/cache`, the `--cache-dir` of [`Served::build`].
    cache: String,
}

impl Served {
    /// Serves the fixture; `hostname`, if any, goes into the project's `imgbuild.toml`.
    fn new(hostname: Option<&str>) -> Self {
        let f = fixture(Layout::RpiOs, 4096, 0);
        let srv = tempfile::tempdir().expect("tempdir");
        let xz = compress(&copy_base(&f, srv.path(), "base.img"), Compression::Xz);
        let (root, count) = serve_dir(srv.path());
        let dir = tempfile::tempdir().expect("tempdir");
        if let Some(h) = hostname {
            write_config(dir.path(), &format!("hostname = \"{h}\"\n"));
        }
        let cache = dir.path().join("cache").to_str().expect("utf8").to_string();
        Self {
            f,
            _srv: srv,
            xz,
            url: format!("{root}/base.img.xz"),
            count,
            dir,
            cache,
        }
    }

    /// `imgbuild --board rpi4 --base URL --cache-dir CACHE EXTRA…` in the project directory.
    fn build(&self, extra: &[&str]) -> Output {
        let cache = ["--cache-dir", self.cache.as_str()];
        run_build(
            self.dir.path(),
            "rpi4",
            &self.url,
            &[&cache[..], extra].concat(),
        )
    }

    /// Requests served so far.
    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// `DIR/name` of the project directory.
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn url_base_is_downloaded_once_then_served_from_the_cache() {
    let s = Served::new(Some("dl"));
    let sha = sha256_file(&s.xz);
    let args = ["--base-sha256", &sha, "--name", "a"];
    assert_ok(&s.build(&args));
    let first = s.requests();
    assert!(first >= 1, "no request was made");
    let manifest = read_json(&s.path("dist/manifest.json"));
    assert_eq!(manifest["base"]["origin"], s.url.as_str());
    assert_eq!(manifest["base"]["sha256"], sha.as_str());
    assert_eq!(manifest["base"]["insecure_no_verify"], false);

    assert_ok(&s.build(&args));
    assert_eq!(s.requests(), first, "the second build made a request");
    let ls = imgbuild(s.dir.path(), &["cache", "ls", "--cache-dir", &s.cache]);
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
    let o = s.build(&["--base-sha256", &sha, "--offline", "--name", "b"]);
    assert!(
        o.status.success(),
        "offline build from cache: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn wrong_hash_or_no_hash_is_refused() {
    let s = Served::new(None);
    let wrong = "0".repeat(64);
    let o = s.build(&["--base-sha256", &wrong]);
    assert_fails(&o, &s.path("dist"), &[&s.url, &wrong]);
    let o = s.build(&[]);
    assert_fails(&o, &s.path("dist"), &["--insecure-no-verify"]);
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
    let s = Served::new(Some("s5"));
    let sha512 = sha512_file(&s.xz);
    let wrong = sha512_file(&s.f.path);
    let o = s.build(&["--base-sha512", &wrong]);
    assert_fails(&o, &s.path("dist"), &["sha512 mismatch", &s.url, &wrong]);
    assert_ok(&s.build(&["--base-sha512", &sha512]));
    let manifest = read_json(&s.path("dist/manifest.json"));
    assert_eq!(manifest["base"]["sha256"], sha256_file(&s.xz).as_str());
    // The second run finds the download by its sha512 alone, offline.
    let before = s.requests();
    assert_ok(&s.build(&["--base-sha512", &sha512, "--offline", "--out", "again"]));
    assert_eq!(s.requests(), before, "no request");
    // A local file is checked against --base-sha512 too.
    let local = s.xz.to_str().expect("utf8");
    let o = run_build(
        s.dir.path(),
        "rpi4",
        local,
        &["--base-sha512", &wrong, "--out", "local"],
    );
    assert_fails(&o, &s.path("local"), &["sha512 is", &sha512, &wrong]);
}
