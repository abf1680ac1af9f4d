//! Secrets at rest, crash safety and cache integrity of real builds (the real binary on a tiny
//! fixture, checked with xz, sha256sum, e2fsck and fsck.vfat).
//!
//! * A build with a claim key leaves no copy of the key anywhere but in its 0600 outputs: every
//!   file under the cache is read (chunk blocks decoded with `xz`), and none holds the key's
//!   PEM body nor any 64-byte window of the key file.
//! * Crash matrix: for every crash point of a build (`imgbuild_core::crashpoint::POINTS`, debug
//!   builds only) × {SIGKILL, SIGTERM}: the build stops there; `--out` then holds the previous
//!   complete set or the new one (after the next run's sweep finishes an interrupted publish),
//!   no file under `--out` or the cache holds the key outside 0600 files, and the next build's
//!   four outputs are byte for byte a cold build's.
//! * A tampered cache (swapped blocks, a flipped byte, a truncated index) gives a cold build's
//!   output; two builds at once into one `--out` leave a matching set; SIGINT, and SIGTERM to
//!   imgbuild running as PID 1 of a PID namespace, remove the working copy and exit 128+signal.

mod common;

use common::*;
use imgbuild_testkit::{run, FixtureOptions, Layout};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// One tiny fixture for the whole binary (72 MiB image, few files): builds stay fast.
fn tiny() -> &'static imgbuild_testkit::Fixture {
    static F: OnceLock<(tempfile::TempDir, imgbuild_testkit::Fixture)> = OnceLock::new();
    &F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = imgbuild_testkit::build_fixture(
            dir.path(),
            &FixtureOptions {
                layout: Layout::RpiOs,
                image_mib: 72,
                boot_mib: 36,
                big_dir_entries: 20,
                ..FixtureOptions::default()
            },
        );
        (dir, f)
    })
    .1
}

/// A project in `dir` with a `[greengrass]` section and a claim certificate and key made by
/// the real openssl; returns the key file.
fn greengrass_project(dir: &Path) -> PathBuf {
    claim(dir, "claim", 365);
    write_config(dir, &greengrass_config("claim.crt", "claim.key"));
    dir.join("claim.key")
}

/// Runs a build of the tiny fixture in `dir` into `out` with `cache` (xz level 0: fast).
fn build_cmd(dir: &Path, out: &Path, cache: &Path) -> Command {
    build_cmd_with(
        Command::new(env!("CARGO_BIN_EXE_imgbuild")),
        dir,
        out,
        cache,
    )
}

/// [`build_cmd`]'s arguments added to `c` (a wrapper such as `unshare` may come first).
fn build_cmd_with(c: Command, dir: &Path, out: &Path, cache: &Path) -> Command {
    build_cmd_base(c, dir, out, cache, &tiny().path)
}

/// [`build_cmd_with`] from the base image `base`.
fn build_cmd_base(mut c: Command, dir: &Path, out: &Path, cache: &Path, base: &Path) -> Command {
    c.current_dir(dir)
        .args(["--board", "rpi4", "--base"])
        .arg(base)
        .arg("--out")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--name", "gg", "--xz-level", "0"])
        .env_remove("RUST_LOG")
        .env_remove("IMGBUILD_TEST_CRASH_POINT")
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn build(dir: &Path, out: &Path, cache: &Path) -> Output {
    build_cmd(dir, out, cache).output().expect("run imgbuild")
}

/// Pieces of the key file such that any 64-byte window of it contains one: its 32-byte
/// pieces at multiples of 32 (a window starting at i holds the piece starting at the next
/// multiple of 32, which ends before i + 64).
fn key_pieces(key: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(key).expect("key");
    assert!(text.len() >= 64, "key too short for the window check");
    let bytes = text.as_bytes();
    (0..bytes.len() / 32)
        .map(|j| String::from_utf8_lossy(&bytes[32 * j..32 * j + 32]).into_owned())
        .collect()
}

/// The first piece of the key found in `data`, if any. ASCII runs survive a lossy UTF-8
/// conversion unchanged, and std's substring search is fast even in a debug build.
fn find_key(data: &[u8], pieces: &[String]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    pieces.iter().find(|p| text.contains(p.as_str())).cloned()
}

/// Wraps a cached block file (32-byte header + one xz block) into a single-block .xz stream
/// and decodes it with the real `xz`. A `partial` file (a temporary one, maybe cut short by a
/// kill or still being written) gives whatever `xz` could decode.
fn decode_cached_block(file: &[u8], partial: bool) -> Vec<u8> {
    if file.len() < 32 {
        return file.to_vec();
    }
    let word = |at: usize| u64::from_le_bytes(file[at..at + 8].try_into().expect("8 bytes"));
    let (unpadded, uncompressed) = (word(8), word(16));
    let flags = [0x00u8, 0x04];
    let mut xz = vec![0xFD, b'7', b'z', b'X', b'Z', 0x00];
    xz.extend_from_slice(&flags);
    xz.extend_from_slice(&crc32(&flags).to_le_bytes());
    xz.extend_from_slice(&file[32..]);
    let mut index = vec![0x00];
    for v in [1, unpadded, uncompressed] {
        varint(&mut index, v);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    let crc = crc32(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    let mut tail = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    tail.extend_from_slice(&flags);
    xz.extend_from_slice(&index);
    xz.extend_from_slice(&crc32(&tail).to_le_bytes());
    xz.extend_from_slice(&tail);
    xz.extend_from_slice(b"YZ");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("block.xz");
    std::fs::write(&path, &xz).expect("write");
    let o = run(Command::new("xz").arg("-dc").arg(&path));
    if !partial {
        assert!(
            o.status.success(),
            "xz -dc of a cached block: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(o.stdout.len() as u64, uncompressed);
    }
    o.stdout
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let t = e.file_type().expect("type");
        if t.is_dir() {
            out.extend(files_under(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out.sort();
    out
}

/// The content of `path` as a reader would get it: cached blocks and .xz files decoded.
fn readable_content(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).unwrap_or_default();
    if data.starts_with(b"IBPKBLK1") {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let partial = name.is_some_and(|n| n.starts_with('.'));
        return decode_cached_block(&data, partial);
    }
    if data.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        let o = run(Command::new("xz").arg("-dc").arg(path));
        return o.stdout;
    }
    data
}

/// Files under `dirs` that hold a piece of the key and are not mode 0600 (files of the
/// chunk cache count whatever their mode: no block may hold the key).
fn key_outside_private_files(dirs: &[&Path], pieces: &[String]) -> Vec<String> {
    // Files already found clean, by inode, size and modification time: cache files are
    // written once (renamed into place) and the previous set is hard-linked into each case's
    // --out, so the matrix does not decode them again per case.
    type Seen = std::collections::HashSet<(u64, u64, u64, std::time::SystemTime)>;
    static CLEAN: OnceLock<std::sync::Mutex<Seen>> = OnceLock::new();
    let clean = CLEAN.get_or_init(Default::default);
    let mut found = Vec::new();
    for d in dirs {
        for f in files_under(d) {
            let Ok(meta) = std::fs::metadata(&f) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode == 0o600 && !f.starts_with(d.join("chunks")) {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            let id = (
                meta.dev(),
                meta.ino(),
                meta.len(),
                meta.modified().expect("mtime"),
            );
            if clean.lock().expect("seen").contains(&id) {
                continue;
            }
            match find_key(&readable_content(&f), pieces) {
                Some(p) => found.push(format!("{} ({mode:o}) holds {p:?}", f.display())),
                None => {
                    clean.lock().expect("seen").insert(id);
                }
            }
        }
    }
    found
}

#[test]
fn no_cache_file_holds_the_claim_key_and_outputs_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = greengrass_project(dir.path());
    let (out, cache) = (dir.path().join("dist"), dir.path().join("cache"));
    // Twice: the second build is warm (cache hits) and must not add the key either.
    for _ in 0..2 {
        let o = build(dir.path(), &out, &cache);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let pieces = key_pieces(&key);
    // The scan works: the image holds the key (positive control).
    let image = readable_content(&out.join("gg.img.xz"));
    assert!(
        find_key(&image, &pieces).is_some(),
        "the key is not in the image"
    );
    let blocks: Vec<PathBuf> = files_under(&cache.join("chunks/chunks"));
    assert!(blocks.len() > 2, "the cache holds blocks: {blocks:?}");
    // Every cache file, whatever its mode; chunk blocks decoded.
    for f in files_under(&cache) {
        let content = readable_content(&f);
        assert_eq!(
            find_key(&content, &pieces),
            None,
            "{} holds the key",
            f.display()
        );
    }
    for name in ["gg.img.xz", "gg.img.xz.sha256", "gg.bmap", "manifest.json"] {
        let mode = std::fs::metadata(out.join(name))
            .expect("output")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let files = m["files"].as_array().expect("files");
    let k = files
        .iter()
        .find(|e| e["path"] == "/greengrass/v2/claim.private.pem.key")
        .expect("key listed");
    assert_eq!(k["secret"], true);
    assert!(k.get("sha256").is_none(), "{k}");
    let text = std::fs::read_to_string(out.join("manifest.json")).expect("manifest");
    let key_sha = imgbuild_testkit::sha256_file(&key);
    assert!(
        !text.contains(&key_sha),
        "the manifest holds the key's sha256"
    );
    let crt = files
        .iter()
        .find(|e| e["path"] == "/greengrass/v2/claim.pem.crt")
        .expect("cert listed");
    assert!(
        crt["sha256"].is_string() && crt.get("secret").is_none(),
        "{crt}"
    );
    assert!(key_outside_private_files(&[&out, &cache], &pieces).is_empty());

    // `cache ls` shows every kind of entry, `cache prune` removes them all, with the scratch
    // file a killed decompression would leave (its writer is gone).
    let mut child = Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    let part = cache.join(format!("tmp/{}.{dead}-1.0.tmp.part", "ab".repeat(32)));
    std::fs::write(&part, vec![1u8; 8192]).expect("part");
    let cache_cmd = |what: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
            .args(["cache", what, "--cache-dir"])
            .arg(&cache)
            .output()
            .expect("cache");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ls = cache_cmd("ls");
    for kind in ["chunk", "index", "verdict", "scratch (writer gone)"] {
        let line = ls.lines().find(|l| l.starts_with(kind)).unwrap_or("");
        assert!(
            !line.is_empty() && !line.ends_with(" 0 files"),
            "{kind}: {ls}"
        );
    }
    let pruned = cache_cmd("prune");
    assert!(pruned.starts_with("removed "), "{pruned}");
    assert_eq!(
        files_under(&cache),
        Vec::<PathBuf>::new(),
        "prune left files"
    );
}

#[test]
fn outputs_without_a_secret_follow_the_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("imgbuild.toml"), "hostname = \"plain\"\n").expect("config");
    let (out, cache) = (dir.path().join("dist"), dir.path().join("cache"));
    let mut cmd = build_cmd(dir.path(), &out, &cache);
    // Through sh so the child gets umask 022 whatever the test runner's is.
    let o = run(Command::new("sh")
        .arg("-c")
        .arg("umask 022 && exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .current_dir(dir.path())
        .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))));
    let _ = &mut cmd;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in ["gg.img.xz", "gg.img.xz.sha256", "gg.bmap", "manifest.json"] {
        let mode = std::fs::metadata(out.join(name))
            .expect("output")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{name}");
    }
    let mode = std::fs::metadata(&out).expect("out").permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "a new --out directory");
    let mode = std::fs::metadata(cache.join("chunks"))
        .expect("cache")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "cache directories are private");
}

/// The four outputs of a build named `gg`.
const OUTPUTS: [&str; 4] = ["gg.img.xz", "gg.img.xz.sha256", "gg.bmap", "manifest.json"];

/// The bytes of the four outputs in `out` (`None` for a missing one).
fn output_set(out: &Path) -> Vec<Option<Vec<u8>>> {
    OUTPUTS
        .iter()
        .map(|n| std::fs::read(out.join(n)).ok())
        .collect()
}

/// Puts a set of outputs into `out` (which is created): hard links to the files of `from`
/// when given (a build replaces them by renaming, never writes into them), else copies.
fn put_set(out: &Path, set: &[Option<Vec<u8>>], from: Option<&Path>) {
    std::fs::create_dir_all(out).expect("mkdir");
    for (name, data) in OUTPUTS.iter().zip(set) {
        match from {
            Some(dir) => std::fs::hard_link(dir.join(name), out.join(name)).expect("link"),
            None => {
                std::fs::write(out.join(name), data.as_ref().expect("complete set")).expect("write")
            }
        }
    }
}

/// Checks a complete set with the oracles: `sha256sum -c` and the manifest's image hash.
fn assert_set_consistent(out: &Path) {
    let check = run(Command::new("sha256sum")
        .arg("-c")
        .arg("gg.img.xz.sha256")
        .current_dir(out));
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(
        m["image"]["sha256"].as_str(),
        Some(imgbuild_testkit::sha256_file(&out.join("gg.img.xz")).as_str())
    );
}

/// A project with a claim key (`imgbuild.toml`) and a plain one (`prev.toml`) in one folder.
struct Matrix {
    dir: tempfile::TempDir,
    pieces: Vec<String>,
    prev: Vec<Option<Vec<u8>>>,
    cold: Vec<Option<Vec<u8>>>,
}

fn matrix() -> &'static Matrix {
    static M: OnceLock<Matrix> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = greengrass_project(dir.path());
        std::fs::write(dir.path().join("prev.toml"), "hostname = \"prev\"\n").expect("config");
        let (out, cache) = (dir.path().join("prev-out"), dir.path().join("prev-cache"));
        let o = build_cmd(dir.path(), &out, &cache)
            .args(["--config", "prev.toml"])
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let prev = output_set(&out);
        let (out, cache) = (dir.path().join("cold-out"), dir.path().join("cold-cache"));
        let o = build(dir.path(), &out, &cache);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_set_consistent(&out);
        let cold = output_set(&out);
        assert_ne!(prev, cold);
        Matrix {
            pieces: key_pieces(&key),
            dir,
            prev,
            cold,
        }
    })
}

/// Which complete set `out` holds: "prev", "new", or a description of what is wrong.
fn which_set(out: &Path, m: &Matrix) -> String {
    let set = output_set(out);
    if set == m.prev {
        "prev".into()
    } else if set == m.cold {
        "new".into()
    } else {
        let same: Vec<String> = OUTPUTS
            .iter()
            .zip(set.iter().zip(m.prev.iter().zip(&m.cold)))
            .map(|(n, (s, (p, c)))| {
                let what = match (s, s == p, s == c) {
                    (None, ..) => "missing",
                    (_, true, _) => "prev",
                    (_, _, true) => "new",
                    _ => "other",
                };
                format!("{n}={what}")
            })
            .collect();
        format!("mixed: {}", same.join(" "))
    }
}

/// Names in `out` besides the four outputs.
fn extra_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .expect("ls out")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !OUTPUTS.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// One crash case: a previous set in `out`, a build stopped at `point` by `signal`, the sweep
/// of the next run, the checks, and the next build.
fn crash_case(m: &Matrix, cache: &Path, point: &str, signal: &str) {
    let out = m.dir.path().join(format!("out-{point}-{signal}"));
    put_set(&out, &m.prev, Some(&m.dir.path().join("prev-out")));
    let o = build_cmd(m.dir.path(), &out, cache)
        .env("IMGBUILD_TEST_CRASH_POINT", format!("{point}:{signal}"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    match signal {
        "kill" => {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                o.status.signal(),
                Some(9),
                "{point}: not killed there: {stderr}"
            );
        }
        _ => {
            assert_eq!(
                o.status.code(),
                Some(143),
                "{point}: no SIGTERM exit: {stderr}"
            );
            assert!(
                stderr.contains("interrupted by signal 15"),
                "{point}: {stderr}"
            );
        }
    }
    let leaks = key_outside_private_files(&[&out, cache], &m.pieces);
    assert!(leaks.is_empty(), "{point}/{signal}: {leaks:?}");
    if signal == "term" {
        // The handler cleaned up: nothing of the build is left in --out.
        assert_eq!(extra_names(&out), Vec::<String>::new(), "{point}/{signal}");
        let set = which_set(&out, m);
        assert!(set == "prev" || set == "new", "{point}/{signal}: {set}");
    }
    // The next run sweeps (finishing an interrupted publish) before anything else: stop it
    // right after, and look at --out.
    let o = build_cmd(m.dir.path(), &out, cache)
        .env("IMGBUILD_TEST_CRASH_POINT", "scratch-created:kill")
        .output()
        .expect("run");
    assert!(
        !o.status.success(),
        "{point}/{signal}: the sweeping run was not stopped"
    );
    let set = which_set(&out, m);
    assert!(set == "prev" || set == "new", "{point}/{signal}: {set}");
    assert_set_consistent(&out);
    let o = build(m.dir.path(), &out, cache);
    assert!(
        o.status.success(),
        "{point}/{signal}: next build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        which_set(&out, m),
        "new",
        "{point}/{signal}: next build differs from a cold one"
    );
    assert_eq!(
        extra_names(&out),
        Vec::<String>::new(),
        "{point}/{signal}: leftovers"
    );
    std::fs::remove_dir_all(&out).expect("rm out");
}

#[test]
fn killed_or_terminated_at_every_crash_point_out_stays_complete_and_no_key_leaks() {
    let m = matrix();
    let cache = m.dir.path().join("matrix-cache");
    let points = imgbuild_core::crashpoint::POINTS;
    assert!(points.len() >= 20);
    // "decompressing" needs a compressed base: see the test below.
    let cases: Vec<(&str, &str)> = points
        .iter()
        .filter(|p| **p != "decompressing")
        .flat_map(|p| [(*p, "kill"), (*p, "term")])
        .collect();
    // Two lanes sharing the cache (concurrent builds share it in real use too).
    std::thread::scope(|scope| {
        let lanes: Vec<_> = [0, 1]
            .map(|lane| {
                let (cases, cache) = (&cases, &cache);
                scope.spawn(move || {
                    for (point, signal) in cases.iter().skip(lane).step_by(2) {
                        crash_case(m, cache, point, signal);
                    }
                })
            })
            .into_iter()
            .collect();
        for l in lanes {
            if let Err(e) = l.join() {
                std::panic::resume_unwind(e);
            }
        }
    });
    // Nothing of any crashed build survives in the cache's scratch area either.
    let ls = cache_ls(&cache);
    assert!(!ls.contains("writer gone"), "{ls}");
}

#[test]
fn a_tampered_cache_gives_a_cold_builds_output() {
    let m = matrix();
    let cache = m.dir.path().join("tamper-cache");
    let out = m.dir.path().join("tamper-out");
    let o = build(m.dir.path(), &out, &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let blocks = files_under(&cache.join("chunks/chunks"));
    assert!(blocks.len() >= 2, "{blocks:?}");
    let index = files_under(&cache.join("chunks/index"));
    assert_eq!(index.len(), 1, "{index:?}");
    let tampers: [(&str, &dyn Fn()); 3] = [
        ("swap two blocks", &|| {
            let (a, b) = (
                std::fs::read(&blocks[0]).expect("a"),
                std::fs::read(&blocks[1]).expect("b"),
            );
            std::fs::write(&blocks[0], b).expect("write");
            std::fs::write(&blocks[1], a).expect("write");
        }),
        ("flip a byte", &|| {
            for f in files_under(&cache.join("chunks/chunks")) {
                let mut d = std::fs::read(&f).expect("read");
                let at = d.len() / 2;
                d[at] ^= 0x20;
                std::fs::write(&f, d).expect("write");
            }
        }),
        ("truncate the index", &|| {
            let d = std::fs::read(&index[0]).expect("read");
            std::fs::write(&index[0], &d[..d.len() / 3]).expect("write");
        }),
    ];
    for (what, tamper) in tampers {
        tamper();
        let o = build(m.dir.path(), &out, &cache);
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            which_set(&out, m),
            "new",
            "{what}: output differs from a cold build"
        );
    }
    let img = unxz(&out.join("gg.img.xz"), m.dir.path());
    assert_fs_clean(&img, tiny());
}

#[test]
fn two_builds_at_once_into_one_out_leave_a_matching_set() {
    let m = matrix();
    let out = m.dir.path().join("concurrent-out");
    let cache = m.dir.path().join("concurrent-cache");
    for round in 0..2 {
        let a = build_cmd(m.dir.path(), &out, &cache).spawn().expect("a");
        let b = build_cmd(m.dir.path(), &out, &cache)
            .args(["--config", "prev.toml"])
            .spawn()
            .expect("b");
        for (name, child) in [("a", a), ("b", b)] {
            let o = child.wait_with_output().expect("wait");
            assert!(o.status.success(), "round {round} build {name}");
        }
        let set = which_set(&out, m);
        assert!(set == "prev" || set == "new", "round {round}: {set}");
        assert_set_consistent(&out);
        assert_eq!(extra_names(&out), Vec::<String>::new());
    }
}

/// Starts a build that stops at `point` (crash point `sleep`) and returns it once it is there.
fn start_sleeping(
    mut cmd: Command,
    point: &str,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .env("IMGBUILD_TEST_CRASH_POINT", format!("{point}:sleep"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let want = format!("crash point {point} reached");
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(&want) => break,
            Some(Ok(_)) => {}
            _ => panic!("the build ended before {point}: {:?}", child.wait()),
        }
    }
    (child, lines)
}

/// The scratch directories in `out` (each holds one build's working copy).
fn scratch_dirs(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out.join(".imgbuild-scratch"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn sigint_and_sigterm_to_pid_1_remove_the_working_copy() {
    let m = matrix();
    let cache = m.dir.path().join("signal-cache");
    // SIGINT, as Ctrl-C sends it.
    let out = m.dir.path().join("sigint-out");
    put_set(&out, &m.prev, None);
    let (mut child, lines) = start_sleeping(build_cmd(m.dir.path(), &out, &cache), "patch-done");
    let dirs = scratch_dirs(&out);
    assert_eq!(dirs.len(), 1);
    assert!(
        dirs[0].join("work.img").exists(),
        "the working copy is in the scratch directory"
    );
    let mode = std::fs::metadata(&dirs[0])
        .expect("scratch")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let mode = std::fs::metadata(dirs[0].join("work.img"))
        .expect("work")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    run(Command::new("kill").args(["-INT", &child.id().to_string()]));
    let status = child.wait().expect("wait");
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert_eq!(rest.len(), 1, "one error line: {rest:?}");
    assert_eq!(which_set(&out, m), "prev");
    assert_eq!(extra_names(&out), Vec::<String>::new());

    // SIGTERM to imgbuild as PID 1 of a PID namespace (as in a container without an init).
    let out = m.dir.path().join("pid1-out");
    put_set(&out, &m.prev, None);
    let mut unshare = Command::new("unshare");
    let uid = run(Command::new("id").arg("-u")).stdout;
    if String::from_utf8_lossy(&uid).trim() != "0" {
        // Unprivileged: a user namespace makes the PID namespace possible.
        unshare.args(["--user", "--map-root-user"]);
    }
    unshare.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_imgbuild"),
    ]);
    let (mut child, _lines) = start_sleeping(
        build_cmd_with(unshare, m.dir.path(), &out, &cache),
        "patch-done",
    );
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .expect("unshare's children");
    let pid1 = children
        .split_whitespace()
        .next()
        .expect("imgbuild under unshare")
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "imgbuild is not PID 1 in its namespace: {status}"
    );
    assert_eq!(scratch_dirs(&out).len(), 1);
    run(Command::new("kill").args(["-TERM", &pid1]));
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(143),
        "unshare passes on imgbuild's exit status"
    );
    assert_eq!(which_set(&out, m), "prev");
    assert_eq!(extra_names(&out), Vec::<String>::new());
}

#[test]
fn an_unwritable_cache_only_warns_and_dead_scratch_files_are_swept_at_start() {
    let m = matrix();
    let out = m.dir.path().join("unwritable-out");
    // Block folders that are files: no block can be stored (ENOTDIR, even for root).
    let cache = m.dir.path().join("unwritable-cache");
    std::fs::create_dir_all(cache.join("chunks/chunks")).expect("mkdir");
    for b in 0..=255u8 {
        std::fs::write(cache.join(format!("chunks/chunks/{b:02x}")), b"").expect("block");
    }
    // What a decompression killed with its process leaves (the pid is of an exited child).
    let mut child = Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("wait");
    std::fs::create_dir_all(cache.join("tmp")).expect("mkdir");
    let part = cache.join(format!("tmp/{}.{dead}-1.0.tmp.part", "cd".repeat(32)));
    std::fs::write(&part, vec![1u8; 4096]).expect("part");
    let o = build(m.dir.path(), &out, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("not stored"), "no warning: {stderr}");
    assert_eq!(which_set(&out, m), "new");
    assert!(
        !part.exists(),
        "the dead writer's scratch file was not swept"
    );
    // The whole chunk cache unusable (its folder is a file).
    let cache = m.dir.path().join("no-chunk-cache");
    std::fs::create_dir_all(&cache).expect("mkdir");
    std::fs::write(cache.join("chunks"), b"").expect("block");
    let o = build(m.dir.path(), &out, &cache);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("chunk cache not used"),
        "no warning: {stderr}"
    );
    assert_eq!(which_set(&out, m), "new");
}

#[test]
fn stopped_while_decompressing_the_base_into_the_cache() {
    let m = matrix();
    let base = m.dir.path().join("xz-base/base.img");
    std::fs::create_dir_all(base.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&tiny().path, &base).expect("copy");
    let xz = imgbuild_testkit::compress(&base, imgbuild_testkit::Compression::Xz);
    std::fs::remove_file(&base).expect("rm raw");
    let cmd = |out: &Path, cache: &Path| {
        let c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
        build_cmd_base(c, m.dir.path(), out, cache, &xz)
    };
    let cold_out = m.dir.path().join("xz-cold-out");
    let o = cmd(&cold_out, &m.dir.path().join("xz-cold-cache"))
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cold = output_set(&cold_out);
    for signal in ["kill", "term"] {
        let out = m.dir.path().join(format!("xz-out-{signal}"));
        let cache = m.dir.path().join(format!("xz-cache-{signal}"));
        let o = cmd(&out, &cache)
            .env(
                "IMGBUILD_TEST_CRASH_POINT",
                format!("decompressing:{signal}"),
            )
            .output()
            .expect("run");
        assert!(
            !o.status.success(),
            "{signal}: not stopped while decompressing"
        );
        // Killed: the half-written raw image is in the cache's scratch area, its writer gone;
        // terminated: the handler removed it.
        let ls = cache_ls(&cache);
        match signal {
            "kill" => assert!(ls.contains("scratch (writer gone)"), "{signal}: {ls}"),
            _ => assert!(!ls.contains("scratch"), "{signal}: {ls}"),
        }
        assert!(!ls.lines().any(|l| l.starts_with("raw")), "{signal}: {ls}");
        let o = cmd(&out, &cache).output().expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            output_set(&out),
            cold,
            "{signal}: differs from a cold build"
        );
        let ls = cache_ls(&cache);
        assert!(!ls.contains("scratch"), "{signal}: swept at start: {ls}");
        assert!(ls.lines().any(|l| l.starts_with("raw")), "{signal}: {ls}");
    }
}

/// `imgbuild cache ls --cache-dir CACHE`'s standard output.
fn cache_ls(cache: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .args(["cache", "ls", "--cache-dir"])
        .arg(cache)
        .output()
        .expect("cache ls");
    String::from_utf8_lossy(&o.stdout).into_owned()
}
