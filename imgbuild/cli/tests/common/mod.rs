//! Shared helpers of the CLI's end-to-end tests: fixtures built once per test binary, a runner
//! for the real `imgbuild` binary, and read-back helpers over the testkit oracles.
#![allow(dead_code)]

use imgbuild_testkit::{build_fixture, run, Fixture, FixtureOptions, Layout};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// A test key (valid base64 body; not used for anything).
pub const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb7k6bq8i1Yc0v1c5nQ5W0Zf2m7tV4o3l0yJ0oHq4oD test@imgbuild";

/// Built fixtures by (layout, block size, filler MiB), with the directory that holds each.
type FixtureCache = Mutex<HashMap<(u8, u32, u64), (tempfile::TempDir, Fixture)>>;

/// Fixtures by (layout, block size, filler), built once per test binary.
pub fn fixture(layout: Layout, block_size: u32, filler_mib: u64) -> Fixture {
    static CACHE: OnceLock<FixtureCache> = OnceLock::new();
    let key = (layout as u8, block_size, filler_mib);
    let mut map = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((_, f)) = map.get(&key) {
        return f.clone();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FixtureOptions {
        layout,
        ext4_block_size: block_size,
        root_filler_mib: filler_mib,
        ..FixtureOptions::default()
    };
    let f = build_fixture(dir.path(), &opts);
    map.insert(key, (dir, f.clone()));
    f
}

/// Copies a fixture's image to `dir/name` (sparse) so a test can change or compress it.
pub fn copy_base(f: &Fixture, dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    let out = run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&f.path)
        .arg(&dst));
    assert!(
        out.status.success(),
        "cp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dst
}

/// One download/chunk cache per test binary (never the user's own cache).
pub fn test_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("cache tempdir"))
        .path()
}

/// Runs the real binary in `cwd`.
pub fn imgbuild(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(cwd)
        .args(args)
        .env_remove("RUST_LOG")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("IMGBUILD_CACHE_DIR", test_cache())
        .output()
        .expect("run imgbuild")
}

/// Runs `imgbuild --board BOARD --base BASE EXTRA…` (a build) in `cwd`.
pub fn run_build(cwd: &Path, board: &str, base: &str, extra: &[&str]) -> Output {
    imgbuild(
        cwd,
        &[&["--board", board, "--base", base][..], extra].concat(),
    )
}

/// Asserts a run succeeded (its stderr in the message if not) and returns its stderr.
pub fn assert_ok(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "imgbuild failed: {stderr}");
    stderr
}

/// A fresh project directory holding a sparse copy of the fixture (`layout`, `block_size`, no
/// filler) as `base.img`: the fixture, the directory and the copy's path.
pub fn fixture_base(layout: Layout, block_size: u32) -> (Fixture, tempfile::TempDir, PathBuf) {
    let f = fixture(layout, block_size, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let base = copy_base(&f, dir.path(), "base.img");
    (f, dir, base)
}

/// Writes the project config `dir/imgbuild.toml`.
pub fn write_config(dir: &Path, toml: &str) {
    std::fs::write(dir.join("imgbuild.toml"), toml)
        .unwrap_or_else(|e| panic!("write {}/imgbuild.toml: {e}", dir.display()));
}

/// Parses the JSON file at `path` (a build's `manifest.json`, say).
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Makes a self-signed EC certificate `dir/NAME.EXT` on `curve` for `subject`, valid `days`,
/// and its key `dir/NAME.key`, with the real openssl (`req -x509` marks it CA:TRUE through
/// Debian's v3_ca).
pub fn self_signed(dir: &Path, name: &str, ext: &str, curve: &str, subject: &str, days: u32) {
    let o = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg(format!("ec_paramgen_curve:{curve}"))
        .args(["-nodes", "-subj", subject, "-days", &days.to_string()])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.{ext}"))));
    assert!(
        o.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Makes a P-256 claim certificate `dir/NAME.crt` and key `dir/NAME.key` valid `days`.
pub fn claim(dir: &Path, name: &str, days: u32) {
    self_signed(dir, name, "crt", "P-256", "/CN=claim", days);
}

/// The project config of `tests/data/greengrass.toml` (hostname and a `[greengrass]` section,
/// last, so a caller may append keys to it) with the claim certificate `cert` and key `key`.
pub fn greengrass_config(cert: &str, key: &str) -> String {
    include_str!("../data/greengrass.toml")
        .replace("{claim_cert}", cert)
        .replace("{claim_key}", key)
}

/// Runs the real binary in `cwd` with the AWS environment of `moto` (no profile, `HOME` = `cwd`,
/// no terminal on stdin) and the test cache.
pub fn imgbuild_aws(moto: &imgbuild_testkit::moto::Moto, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(cwd)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .envs(moto.env())
        .env("HOME", cwd)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("IMGBUILD_CACHE_DIR", test_cache())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run imgbuild")
}

/// Asserts a run failed with exactly one `imgbuild: error:` line containing every needle,
/// and left nothing in `out`.
pub fn assert_fails(o: &Output, out: &Path, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("imgbuild: error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
    if out.exists() {
        let left: Vec<_> = std::fs::read_dir(out)
            .expect("read out")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "failed build left files behind: {left:?}");
    }
}

/// Decompresses an `.img.xz` artifact with the real `xz` into `dir/name`.
pub fn unxz(xz: &Path, dir: &Path) -> PathBuf {
    let raw = dir.join("result.img");
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "xz -dc '{}' > '{}'",
        xz.display(),
        raw.display()
    )));
    assert!(
        out.status.success(),
        "xz -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    raw
}

/// Asserts both file systems of `img` are clean for e2fsck and fsck.vfat.
pub fn assert_fs_clean(img: &Path, f: &Fixture) {
    let (ok, text) = imgbuild_testkit::e2fsck_clean(img, f.root.offset_bytes);
    assert!(ok, "e2fsck -fn not clean:\n{text}");
    let (ok, text) = imgbuild_testkit::fsck_vfat_clean(img, f.boot.offset_bytes);
    assert!(ok, "fsck.vfat -n not clean:\n{text}");
}

/// A static HTTP/1.1 server on 127.0.0.1 serving the files of `dir` (no Range support: clients
/// must cope with a plain 200). Returns its base URL and a counter of requests served.
pub fn serve_dir(dir: &Path) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&count);
    let root = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let name = first
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string();
            let body = std::fs::read(root.join(name)).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s
                .write_all(head.as_bytes())
                .and_then(|_| s.write_all(&body));
        }
    });
    (format!("http://{addr}"), count)
}
