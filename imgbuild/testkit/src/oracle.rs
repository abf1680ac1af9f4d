//! Oracles: the real tools (e2fsprogs, dosfstools, mtools, util-linux, gdisk) run against an
//! image, their output parsed into plain values.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output};

/// Runs `cmd` and returns its output, whatever the exit status; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e} (is the Debian package installed?)"),
    }
}

/// Runs `cmd` and panics with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    out
}

/// A tool's stdout followed by its stderr, as text (the order the checks print in).
fn stdout_and_stderr(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `IMG?offset=N`, the way e2fsprogs address a file system inside a disk image.
fn e2_spec(img: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", img.display())
}

/// `IMG@@N`, the way mtools address a FAT file system inside a disk image.
fn mtools_spec(img: &Path, offset: u64) -> String {
    format!("{}@@{offset}", img.display())
}

/// Runs `e2fsck -fn` on the ext file system at `offset`: `(clean, full output)`.
/// Panics if e2fsck itself fails to run the check (exit status 8 or more).
pub fn e2fsck_clean(img: &Path, offset: u64) -> (bool, String) {
    let out = run(Command::new("e2fsck").arg("-fn").arg(e2_spec(img, offset)));
    let text = stdout_and_stderr(&out);
    match out.status.code() {
        Some(0) => (true, text),
        Some(1..=7) => (false, text),
        _ => panic!(
            "e2fsck -fn could not check {}: {text}",
            e2_spec(img, offset)
        ),
    }
}

/// Size in bytes of the FAT file system whose boot sector is at `offset`, from its BPB.
fn fat_size_from_bpb(img: &Path, offset: u64) -> u64 {
    let mut sector = [0u8; 512];
    let mut f = File::open(img).unwrap_or_else(|e| panic!("open {}: {e}", img.display()));
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut sector))
        .unwrap_or_else(|e| panic!("read FAT boot sector of {} at {offset}: {e}", img.display()));
    let bytes_per_sector = u64::from(u16::from_le_bytes([sector[11], sector[12]]));
    let total16 = u64::from(u16::from_le_bytes([sector[19], sector[20]]));
    let total32 = u64::from(u32::from_le_bytes([
        sector[32], sector[33], sector[34], sector[35],
    ]));
    let total = if total16 != 0 { total16 } else { total32 };
    assert!(
        bytes_per_sector >= 512 && total > 0,
        "no FAT boot sector in {} at offset {offset}",
        img.display()
    );
    bytes_per_sector * total
}

/// Runs `fsck.vfat -n` on the FAT file system at `offset`: `(clean, full output)`.
///
/// fsck.vfat has no offset option, so the file system (its size read from the boot sector) is
/// first copied into a temporary file. Panics if fsck.vfat fails to run the check.
pub fn fsck_vfat_clean(img: &Path, offset: u64) -> (bool, String) {
    let size = fat_size_from_bpb(img, offset);
    let mut tmp = tempfile::NamedTempFile::new().expect("create a temporary file");
    let mut src = File::open(img).unwrap_or_else(|e| panic!("open {}: {e}", img.display()));
    src.seek(SeekFrom::Start(offset)).expect("seek");
    let copied = std::io::copy(&mut src.take(size), tmp.as_file_mut()).expect("copy FAT");
    assert_eq!(
        copied, size,
        "FAT file system at {offset} runs past the image end"
    );
    tmp.as_file_mut().flush().expect("flush");
    let out = run(Command::new("fsck.vfat").arg("-n").arg(tmp.path()));
    let text = stdout_and_stderr(&out);
    match out.status.code() {
        Some(0) => (true, text),
        Some(1) => (false, text),
        _ => panic!("fsck.vfat -n could not check the FAT at {offset}: {text}"),
    }
}

/// Kind of an ext inode, as `debugfs stat` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device, block device, FIFO or socket.
    Special,
}

/// What `debugfs stat` tells about an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtStat {
    /// Inode number.
    pub inode: u32,
    /// File type.
    pub kind: ExtKind,
    /// Permission bits including setuid/setgid/sticky (e.g. `0o640`), without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Inode flags (`0x1000` = hashed/indexed directory, `0x80000` = extents).
    pub flags: u32,
    /// Link count.
    pub links: u32,
}

/// Runs one debugfs request against the file system at `offset`: `(stdout, stderr without
/// the version banner)`.
fn debugfs(img: &Path, offset: u64, request: &str) -> (Vec<u8>, String) {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(e2_spec(img, offset)));
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (out.stdout, stderr)
}

/// Quotes a path for debugfs' command line parser.
fn quote(path: &str) -> String {
    format!("\"{path}\"")
}

/// The whitespace-separated value following `key` in debugfs output.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pos = text.find(key)?;
    text[pos + key.len()..].split_whitespace().next()
}

fn parse_num<T: std::str::FromStr>(text: &str, key: &str) -> T {
    field(text, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("debugfs stat output without a number for {key:?}: {text}"))
}

fn parse_radix(text: &str, key: &str, radix: u32) -> u64 {
    let value =
        field(text, key).unwrap_or_else(|| panic!("debugfs stat output without {key:?}: {text}"));
    let digits = value.trim_start_matches("0x");
    let digits = digits.split(':').next().unwrap_or(digits);
    u64::from_str_radix(digits, radix)
        .unwrap_or_else(|e| panic!("debugfs {key:?} value {value:?}: {e}"))
}

/// `debugfs stat PATH`, parsed; `None` if the path does not exist.
pub fn debugfs_stat(img: &Path, offset: u64, path: &str) -> Option<ExtStat> {
    let (stdout, stderr) = debugfs(img, offset, &format!("stat {}", quote(path)));
    if stderr.contains("File not found") {
        return None;
    }
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        text.contains("Inode:"),
        "debugfs stat {path}: {stderr}{text}"
    );
    let kind = match field(&text, "Type:") {
        Some("regular") => ExtKind::File,
        Some("directory") => ExtKind::Dir,
        Some("symlink") => ExtKind::Symlink,
        _ => ExtKind::Special,
    };
    Some(ExtStat {
        inode: parse_num(&text, "Inode:"),
        kind,
        mode: parse_radix(&text, "Mode:", 8) as u32,
        uid: parse_num(&text, "User:"),
        gid: parse_num(&text, "Group:"),
        size: parse_num(&text, "Size:"),
        mtime: parse_radix(&text, "mtime:", 16) as i64,
        flags: parse_radix(&text, "Flags:", 16) as u32,
        links: parse_num(&text, "Links:"),
    })
}

/// Contents of a regular file (or slow symlink), via `debugfs cat`; panics if it is missing.
pub fn debugfs_cat(img: &Path, offset: u64, path: &str) -> Vec<u8> {
    let (stdout, stderr) = debugfs(img, offset, &format!("cat {}", quote(path)));
    assert!(stderr.is_empty(), "debugfs cat {path}: {stderr}");
    stdout
}

/// Target of a symbolic link; panics if `path` is not one.
pub fn debugfs_readlink(img: &Path, offset: u64, path: &str) -> String {
    let stat = debugfs_stat(img, offset, path)
        .unwrap_or_else(|| panic!("debugfs readlink: {path} does not exist"));
    assert_eq!(stat.kind, ExtKind::Symlink, "{path} is not a symlink");
    let (stdout, _) = debugfs(img, offset, &format!("stat {}", quote(path)));
    let text = String::from_utf8_lossy(&stdout);
    const FAST: &str = "Fast link dest: \"";
    if let Some(pos) = text.find(FAST) {
        let rest = &text[pos + FAST.len()..];
        if let Some(end) = rest.rfind('"') {
            return rest[..end].to_string();
        }
    }
    String::from_utf8_lossy(&debugfs_cat(img, offset, path)).into_owned()
}

/// Names in directory `dir` (without `.` and `..`), via `debugfs ls -p`; panics if missing.
pub fn debugfs_ls(img: &Path, offset: u64, dir: &str) -> Vec<String> {
    let (stdout, stderr) = debugfs(img, offset, &format!("ls -p {}", quote(dir)));
    assert!(stderr.is_empty(), "debugfs ls {dir}: {stderr}");
    // Each line is `/inode/mode/uid/gid/name/size/`; a name cannot contain '/'. Unused
    // directory entries (inode 0, e.g. the empty slots in hashed directories) are skipped.
    String::from_utf8_lossy(&stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('/').collect();
            match fields.as_slice() {
                [_, inode, _, _, _, name, ..] if *inode != "0" => Some(name.to_string()),
                _ => None,
            }
        })
        .filter(|name| name != "." && name != "..")
        .collect()
}

/// Contents of a file in the FAT file system at `offset` (`mtype ::/path`, raw bytes).
pub fn mtype(img: &Path, offset: u64, path: &str) -> Vec<u8> {
    let out = run_ok(
        Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(mtools_spec(img, offset))
            .arg(format!("::/{}", path.trim_start_matches('/'))),
    );
    out.stdout
}

/// Long names in directory `dir` of the FAT file system at `offset` (`mdir -b`); directories
/// keep no trailing slash.
pub fn mdir_names(img: &Path, offset: u64, dir: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("mdir")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-b")
            .arg("-i")
            .arg(mtools_spec(img, offset))
            .arg(format!("::/{}", dir.trim_start_matches('/'))),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('/')
                .rsplit('/')
                .next()
                .map(str::to_string)
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// `sfdisk --dump IMG`.
pub fn sfdisk_dump(img: &Path) -> String {
    let out = run_ok(Command::new("sfdisk").arg("--dump").arg(img));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sfdisk --json IMG`, parsed.
pub fn sfdisk_json(img: &Path) -> serde_json::Value {
    let out = run_ok(Command::new("sfdisk").arg("--json").arg(img));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sfdisk --json {}: {e}", img.display()))
}

/// `sgdisk --verify IMG` output (stdout and stderr). It reports "No problems found." when the
/// GPT (both headers, both partition arrays) is consistent.
pub fn sgdisk_verify(img: &Path) -> String {
    stdout_and_stderr(&run(Command::new("sgdisk").arg("--verify").arg(img)))
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Writes `len` random bytes (from /dev/urandom) to `path`.
pub fn random_bytes_file(path: &Path, len: u64) {
    let mut urandom = File::open("/dev/urandom").expect("open /dev/urandom");
    let mut out = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let copied = std::io::copy(&mut (&mut urandom).take(len), &mut out).expect("copy random");
    assert_eq!(copied, len);
}

/// `blkid -p -O OFFSET -o export IMG` as key/value pairs (`TYPE`, `LABEL`, `UUID`, `VERSION`,
/// ...); empty when blkid recognises nothing there.
pub fn blkid(img: &Path, offset: u64) -> std::collections::BTreeMap<String, String> {
    let out = run(Command::new("blkid")
        .args(["-p", "-o", "export", "-O"])
        .arg(offset.to_string())
        .arg(img));
    match out.status.code() {
        Some(0) | Some(2) => {}
        _ => panic!(
            "blkid -p -O {offset} {} failed: {}",
            img.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
