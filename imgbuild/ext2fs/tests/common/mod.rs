//! Test fixtures made with the real Debian tools (mke2fs, e2fsck, debugfs) and oracles that read
//! the results back with them.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use imgbuild_ext2fs::{Fs, Meta};
use tempfile::TempDir;

/// A disk image holding one ext4 file system at `offset`.
pub struct Img {
    pub dir: TempDir,
    pub path: PathBuf,
    pub offset: u64,
}

/// How to make a fixture.
pub struct Spec<'a> {
    pub size_mib: u64,
    pub block_size: Option<u32>,
    pub offset: u64,
    /// Bytes after the file system (filled with a pattern, like another partition).
    pub tail: u64,
    pub tree: Option<&'a Path>,
    pub extra_args: &'a [&'a str],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            size_mib: 64,
            block_size: None,
            offset: 0,
            tail: 0,
            tree: None,
            extra_args: &[],
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

/// A byte pattern that differs at every offset modulo 251 (for "untouched" checks).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// Pseudo-random bytes (xorshift) so file contents are not trivially compressible/aligned.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    imgbuild_testkit::xorshift_bytes(seed, len)
}

pub fn mkfs(spec: &Spec) -> Img {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("disk.img");
    let fs_bytes = spec.size_mib << 20;
    let mut content = pattern(spec.offset as usize, 0x5a);
    content.resize((spec.offset + fs_bytes) as usize, 0);
    content.extend(pattern(spec.tail as usize, 0xa5));
    fs::write(&path, &content).unwrap();
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4"]);
    if let Some(bs) = spec.block_size {
        cmd.args(["-b", &bs.to_string()]);
    }
    if spec.offset > 0 {
        cmd.args(["-E", &format!("offset={}", spec.offset)]);
    }
    if let Some(tree) = spec.tree {
        cmd.arg("-d").arg(tree);
    }
    cmd.args(spec.extra_args);
    cmd.arg(&path).arg(format!("{}k", fs_bytes >> 10));
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Img {
        dir,
        path,
        offset: spec.offset,
    }
}

impl Img {
    /// `image?offset=N` as e2fsck and debugfs accept it.
    pub fn spec(&self) -> String {
        format!("{}?offset={}", self.path.display(), self.offset)
    }

    pub fn open(&self, writable: bool) -> Fs {
        Fs::open(&self.path, self.offset, writable).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `e2fsck -fn` must find nothing to fix.
    pub fn assert_fsck_clean(&self) {
        let out = run(Command::new("e2fsck").args(["-fn", &self.spec()]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "e2fsck -fn is not clean:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `e2fsck -fyD`: optimises (hashes) directories; exit 0 or 1 ("fixed") are fine.
    pub fn fsck_optimize_dirs(&self) {
        let out = run(Command::new("e2fsck").args(["-fyD", &self.spec()]));
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck -fyD: {out:?}"
        );
    }

    /// Runs one debugfs request (read-only unless `write`); returns (stdout, stderr).
    pub fn debugfs(&self, request: &str, write: bool) -> (Vec<u8>, String) {
        let mut cmd = Command::new("debugfs");
        if write {
            cmd.arg("-w");
        }
        let out = run(cmd.args(["-R", request, &self.spec()]));
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// debugfs `cat`: the bytes of a file (or of a slow symlink's block).
    pub fn cat(&self, path: &str) -> Vec<u8> {
        let (out, err) = self.debugfs(&format!("cat {path}"), false);
        assert!(!err.contains("not found"), "debugfs cat {path}: {err}");
        out
    }

    /// debugfs `stat`, parsed.
    pub fn stat(&self, path: &str) -> Option<DebugStat> {
        let (out, err) = self.debugfs(&format!("stat {path}"), false);
        if err.contains("not found") {
            return None;
        }
        Some(DebugStat::parse(&String::from_utf8_lossy(&out)))
    }

    pub fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }
}

/// Fields of `debugfs -R 'stat PATH'`.
#[derive(Debug, Default)]
pub struct DebugStat {
    pub kind: String,
    pub mode: u32,
    pub flags: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u32,
    pub mtime: i64,
    pub ctime: i64,
    pub fast_link: Option<String>,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    text[start..].split_whitespace().next()
}

/// A `key: 0xLO[:EXTRA] -- date` line (indented for large inodes, not for 128-byte ones).
fn hex_time(text: &str, key: &str) -> i64 {
    let v = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {text}"));
    let v = v.trim_start_matches("0x");
    let (lo, extra) = v.split_once(':').unwrap_or((v, "0"));
    let lo = u32::from_str_radix(lo, 16).unwrap();
    let extra = u32::from_str_radix(extra, 16).unwrap();
    i64::from(lo as i32) + (i64::from(extra & 3) << 32)
}

impl DebugStat {
    fn parse(text: &str) -> DebugStat {
        let num = |key: &str| field(text, key).unwrap_or_else(|| panic!("no {key} in {text}"));
        DebugStat {
            kind: num("Type:").to_owned(),
            mode: u32::from_str_radix(num("Mode:"), 8).unwrap(),
            flags: u32::from_str_radix(num("Flags:").trim_start_matches("0x"), 16).unwrap(),
            uid: num("User:").parse().unwrap(),
            gid: num("Group:").parse().unwrap(),
            size: num("Size:").parse().unwrap(),
            links: num("Links:").parse().unwrap(),
            mtime: hex_time(text, "mtime:"),
            ctime: hex_time(text, "ctime:"),
            fast_link: text.find("Fast link dest: \"").map(|i| {
                let rest = &text[i + "Fast link dest: \"".len()..];
                rest[..rest.rfind('"').unwrap()].to_owned()
            }),
        }
    }
}

pub fn meta(mode: u32, uid: u32, gid: u32, mtime: i64) -> Meta {
    Meta {
        mode,
        uid,
        gid,
        mtime,
    }
}

/// A directory tree for `mke2fs -d`.
pub fn tree() -> TempDir {
    TempDir::new().unwrap()
}

pub fn write_tree_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// A 1 KiB-block file system whose `/big` holds 3000 empty files, indexed (hashed) by
/// `e2fsck -D`.
pub fn hashed_dir_image() -> Img {
    let t = tree();
    for i in 0..3000 {
        write_tree_file(t.path(), &format!("big/existing-file-{i:05}"), b"");
    }
    let img = mkfs(&Spec {
        block_size: Some(1024),
        tree: Some(t.path()),
        ..Spec::default()
    });
    img.fsck_optimize_dirs();
    assert_ne!(
        img.stat("/big").unwrap().flags & 0x1000,
        0,
        "e2fsck -D should index /big"
    );
    img
}

/// The path of the `i`th entry [`add_new_entries`] adds to `/big`.
pub fn new_entry(i: usize) -> String {
    format!("/big/new-entry-with-a-longer-name-{i:04}")
}

/// Adds the 500 files [`new_entry`] names to `/big`, each holding its own path.
pub fn add_new_entries(fs: &mut Fs, mtime: i64) {
    for i in 0..500 {
        let name = new_entry(i);
        fs.write_file(&name, name.as_bytes(), &meta(0o644, 0, 0, mtime))
            .unwrap();
    }
}

/// Asserts that a `debugfs -R 'ls /big'` listing names every entry [`add_new_entries`] added.
pub fn assert_lists_new_entries(listing: &[u8]) {
    let listing = String::from_utf8_lossy(listing);
    for i in 0..500 {
        assert!(
            listing.contains(&new_entry(i)["/big/".len()..]),
            "debugfs misses entry {i}"
        );
    }
}
