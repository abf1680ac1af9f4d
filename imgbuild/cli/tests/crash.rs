//! Secrets at rest, crash safety and cache integrity of real builds (the real binary on a tiny
//! fixture, checked with xz, sha256sum, e2fsck and fsck.vfat).
//!
//! * A build with a claim key leaves no copy of the key anywhere but in its 0600 outputs: every
//!   file under the cache is read (chunk blocks decoded with `xz`), and none holds the key's
//!   PEM body nor any 64-byte window of the key file.

mod common;

#[allow(unused_imports)]
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
    let o = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=claim"])
        .args(["-days", "365", "-keyout"])
        .arg(dir.join("claim.key"))
        .arg("-out")
        .arg(dir.join("claim.crt")));
    assert!(
        o.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(
        dir.join("imgbuild.toml"),
        r#"hostname = "gg-1"
[greengrass]
region = "eu-west-1"
data_endpoint = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com"
credential_endpoint = "c1d2e3f4g5h6i7.credentials.iot.eu-west-1.amazonaws.com"
role_alias = "GreengrassCoreTokenExchangeRoleAlias"
provisioning_template = "FleetTemplate"
claim_cert = "claim.crt"
claim_key = "claim.key"
"#,
    )
    .expect("config");
    dir.join("claim.key")
}

/// Runs a build of the tiny fixture in `dir` into `out` with `cache` (xz level 0: fast).
fn build_cmd(dir: &Path, out: &Path, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.current_dir(dir)
        .args(["--board", "rpi4", "--base"])
        .arg(&tiny().path)
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
/// and decodes it with the real `xz`.
fn decode_cached_block(file: &[u8]) -> Vec<u8> {
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
    assert!(
        o.status.success(),
        "xz -dc of a cached block: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.stdout.len() as u64, uncompressed);
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
        return decode_cached_block(&data);
    }
    if data.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        let o = run(Command::new("xz").arg("-dc").arg(path));
        return o.stdout;
    }
    data
}

/// Files under `dirs` that hold a piece of the key and are not mode 0600.
fn key_outside_private_files(dirs: &[&Path], pieces: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for d in dirs {
        for f in files_under(d) {
            let mode = std::fs::metadata(&f).map(|m| m.permissions().mode() & 0o777);
            if mode.as_ref().is_ok_and(|m| *m == 0o600) && !f.starts_with(d.join("chunks")) {
                continue;
            }
            if let Some(p) = find_key(&readable_content(&f), pieces) {
                found.push(format!("{} ({mode:?}) holds {p:?}", f.display()));
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
