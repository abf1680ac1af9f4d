//! Refusing a broken base before the first write.
//!
//! A base whose file systems are inconsistent (a corrupt block bitmap, used blocks marked free,
//! cross-linked FAT clusters...) would make the patch stage overwrite live data. So before
//! anything is written, every partition the build writes to is checked by the file system's
//! own checker, read-only:
//!
//! * ext2/3/4: `e2fsck -fn IMAGE?offset=N` (e2fsprogs) - all passes: group descriptors,
//!   inode/extent trees, directory structure, reference counts, and the block and inode bitmaps
//!   against what the trees use (pass 5).
//! * FAT: `fsck.vfat -n` (dosfstools). It has no offset option and needs a file, so the
//!   partition is first copied into a private temporary file next to the working copy - only
//!   its data extents, by the kernel (`copy_file_range`; shared, not copied, on btrfs/XFS).
//!
//! Before either, the file system must fit inside its partition (its superblock/boot sector
//! size is compared with the partition size). Both checkers run at the same time.
//!
//! A clean verdict is remembered under `CACHE/verdicts/` by the base's sha256 and the
//! partitions checked, so a rebuild from the same base does not pay for the check again. A
//! failed check is not remembered (it is rechecked, and the error shown again, every time).

use crate::board::Role;
use crate::error::{Context, Error, Result};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Which checker a partition needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsFamily {
    /// ext2/3/4, checked with `e2fsck -fn`.
    Ext,
    /// FAT12/16/32, checked with `fsck.vfat -n`.
    Fat,
}

/// One partition to check.
#[derive(Debug, Clone, Copy)]
pub struct PartCheck {
    /// Partition number (as the table numbers it).
    pub index: u32,
    /// What the board uses it for.
    pub role: Role,
    /// Its file system.
    pub family: FsFamily,
    /// Byte offset in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Where a clean verdict is remembered: the cache directory and the base's sha256.
#[derive(Debug, Clone, Copy)]
pub struct VerdictKey<'a> {
    /// The cache root (verdicts live in its `verdicts/` folder).
    pub cache_dir: &'a Path,
    /// sha256 of the base file the image was made from.
    pub base_sha256: &'a str,
}

/// Bumped whenever what is checked changes, so older verdicts are not trusted.
const VERDICT_VERSION: u32 = 1;

/// Longest checker message quoted in an error.
const PROBLEM_MAX: usize = 240;

/// Checks every partition in `parts` of `image` (a fresh copy of the base) and fails with one
/// line naming the partition and the first problem found. `scratch_dir` receives the temporary
/// copy of a FAT partition (use the working copy's directory). With `verdict`, a clean result
/// is remembered and a remembered one skips the checks.
pub fn check_partitions(
    image: &Path,
    parts: &[PartCheck],
    scratch_dir: &Path,
    verdict: Option<VerdictKey>,
) -> Result<()> {
    let entry = verdict.map(|v| verdict_path(&v, parts));
    if let Some(e) = &entry {
        if std::fs::read_to_string(e).is_ok_and(|s| s == "clean\n") {
            tracing::info!(verdict = %e.display(), "base: file systems known clean");
            return Ok(());
        }
    }
    for p in parts {
        check_fits(image, p)?;
    }
    // Start every e2fsck first, then do the FAT checks while they run.
    let mut running = Vec::new();
    for p in parts.iter().filter(|p| p.family == FsFamily::Ext) {
        running.push((p, spawn_e2fsck(image, p)?));
    }
    let fat_result = parts
        .iter()
        .filter(|p| p.family == FsFamily::Fat)
        .try_for_each(|p| check_fat(image, p, scratch_dir));
    let mut ext_result = Ok(());
    for (p, child) in running {
        let out = child
            .wait_with_output()
            .context(|| format!("{}: waiting for e2fsck", what(p)));
        let r = out.and_then(|o| verdict_of(p, "e2fsck -fn", &o, 1..=7));
        if ext_result.is_ok() {
            ext_result = r;
        }
    }
    fat_result?;
    ext_result?;
    if let Some(e) = &entry {
        remember(e);
    }
    Ok(())
}

/// `partition N (role, fs)`.
fn what(p: &PartCheck) -> String {
    let fs = match p.family {
        FsFamily::Ext => "ext4",
        FsFamily::Fat => "vfat",
    };
    format!("partition {} ({}, {fs})", p.index, p.role)
}

fn verdict_path(v: &VerdictKey, parts: &[PartCheck]) -> PathBuf {
    let which: Vec<String> = parts
        .iter()
        .map(|p| format!("p{}-{}-{}", p.index, p.offset, p.size))
        .collect();
    v.cache_dir.join("verdicts").join(format!(
        "{}.v{VERDICT_VERSION}.{}",
        v.base_sha256,
        which.join(".")
    ))
}

/// Stores a clean verdict; failing to is only logged (the check runs again next time).
fn remember(entry: &Path) {
    let stored = entry
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, "clean\n").and_then(|()| std::fs::rename(&tmp, entry))
        });
    if let Err(e) = stored {
        tracing::warn!("not remembering the base check in {}: {e}", entry.display());
    }
}

/// The file system's own idea of its size must fit in the partition, and an ext journal must
/// not need recovery (e2fsck -n would skip the recovery and judge a stale state).
fn check_fits(image: &Path, p: &PartCheck) -> Result<()> {
    let file = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
    let mut head = [0u8; 2048];
    file.read_exact_at(&mut head, p.offset)
        .context(|| format!("{}: cannot read its first sectors", what(p)))?;
    let le16 = |at: usize| u64::from(u16::from_le_bytes([head[at], head[at + 1]]));
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            head[at],
            head[at + 1],
            head[at + 2],
            head[at + 3],
        ]))
    };
    let fs_size = match p.family {
        FsFamily::Ext => {
            const SB: usize = 1024;
            const INCOMPAT_64BIT: u64 = 0x80;
            const INCOMPAT_RECOVER: u64 = 0x4;
            if le32(SB + 0x60) & INCOMPAT_RECOVER != 0 {
                crate::bail!(
                    "{}: the journal needs recovery (needs_recovery is set) - the image was \
                     taken from a running system; mount it once (or run `e2fsck -f` on a copy) \
                     and use that",
                    what(p)
                );
            }
            let log = le32(SB + 0x18);
            let blocks_hi = if le32(SB + 0x60) & INCOMPAT_64BIT != 0 {
                le32(SB + 0x150)
            } else {
                0
            };
            let blocks = le32(SB + 0x04) | (blocks_hi << 32);
            (log <= 6).then(|| blocks.saturating_mul(1024 << log))
        }
        FsFamily::Fat => {
            let total = match le16(19) {
                0 => le32(32),
                n => n,
            };
            Some(total.saturating_mul(le16(11)))
        }
    };
    match fs_size {
        Some(n) if n <= p.size => Ok(()),
        Some(n) => crate::bail!(
            "{}: the file system says it is {n} bytes but the partition has {} - the partition \
             table or the file system is corrupt; use an intact image",
            what(p),
            p.size
        ),
        None => crate::bail!(
            "{}: the superblock is corrupt (impossible block size); use an intact image",
            what(p)
        ),
    }
}

fn spawn_e2fsck(image: &Path, p: &PartCheck) -> Result<Child> {
    let tool = find_tool("e2fsck", "e2fsprogs")?;
    let mut spec = image.as_os_str().to_os_string();
    spec.push(format!("?offset={}", p.offset));
    Command::new(tool)
        .arg("-fn")
        .arg(spec)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| format!("{}: cannot run e2fsck", what(p)))
}

fn check_fat(image: &Path, p: &PartCheck, scratch_dir: &Path) -> Result<()> {
    let tool = find_tool("fsck.vfat", "dosfstools")?;
    let copy = tempfile::Builder::new()
        .prefix(".fatcheck-")
        .tempfile_in(scratch_dir)
        .context(|| format!("{}: cannot create a scratch file", scratch_dir.display()))?;
    let src = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
    copy_range(&src, p.offset, p.size, copy.as_file(), 0)
        .and_then(|()| copy.as_file().set_len(p.size))
        .context(|| format!("{}: cannot copy it for checking", what(p)))?;
    let out = Command::new(tool)
        .arg("-n")
        .arg(copy.path())
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .context(|| format!("{}: cannot run fsck.vfat", what(p)))?;
    verdict_of(p, "fsck.vfat -n", &out, 1..=1)
}

/// Turns a checker's exit status into the verdict: 0 is clean, `unclean` codes name the first
/// problem it reported, anything else means it could not check.
fn verdict_of(
    p: &PartCheck,
    tool: &str,
    out: &Output,
    unclean: std::ops::RangeInclusive<i32>,
) -> Result<()> {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(()),
        Some(c) if unclean.contains(&c) => Err(Error::msg(format!(
            "{} is not clean: {tool} reports \"{}\" - the base image is damaged; refusing to \
             write into it (repair a copy with `{}` or use an intact image)",
            what(p),
            first_problem(&text),
            if tool.starts_with("e2fsck") {
                "e2fsck -f"
            } else {
                "fsck.vfat -a"
            }
        ))),
        code => Err(Error::msg(format!(
            "{}: {tool} could not check it (exit {}): {}",
            what(p),
            code.map_or_else(|| "by a signal".to_string(), |c| c.to_string()),
            first_problem(&text)
        ))),
    }
}

/// The first line of a checker's output that reports something, without the banner, pass
/// headers, prompts and summary.
fn first_problem(text: &str) -> String {
    let noise = |l: &str| {
        l.is_empty()
            || l.starts_with("e2fsck ")
            || l.starts_with("fsck.fat ")
            || l.starts_with("fsck.vfat ")
            || l.starts_with("Pass ")
            || l.starts_with("Fix? ")
            || l.starts_with("Ignore error? ")
            || l.ends_with("? no")
            || l.starts_with("Leaving filesystem unchanged")
            || l.contains("WARNING: Filesystem still has errors")
            || l.chars().all(|c| c == '*' || c == ' ')
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !noise(l))
        .unwrap_or("no message");
    let mut s: String = line
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(PROBLEM_MAX)
        .collect();
    if line.chars().count() > PROBLEM_MAX {
        s.push('…');
    }
    s
}

/// Finds a checker program: in `PATH`, then in `/usr/sbin` and `/sbin` (where Debian installs
/// them, and which a normal user's `PATH` lacks).
pub(crate) fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
    for dir in dirs {
        let candidate = dir.join(name);
        if std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        {
            return Ok(candidate);
        }
    }
    crate::bail!(
        "{name} not found (looked in PATH, /usr/sbin and /sbin): install the {package} package \
         (e.g. `apt-get install {package}`) - imgbuild checks (and with [image], grows) the \
         base's file systems with it"
    )
}

/// Copies `len` bytes of `src` from `offset` to `dst` at `dst_offset`, leaving holes where `src`
/// has them: data extents are found with SEEK_DATA/SEEK_HOLE and copied with
/// `copy_file_range` (through user space where the kernel cannot). `dst`'s length is only
/// changed by the data written.
pub(crate) fn copy_range(
    src: &File,
    offset: u64,
    len: u64,
    dst: &File,
    dst_offset: u64,
) -> io::Result<()> {
    use rustix::fs::{seek, SeekFrom};
    let end = offset.saturating_add(len);
    let mut pos = offset;
    let mut in_kernel = true;
    while pos < end {
        let data = match seek(src, SeekFrom::Data(pos)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            Err(_) => pos,
        };
        if data >= end {
            break;
        }
        let hole = match seek(src, SeekFrom::Hole(data)) {
            Ok(h) if h > data => h.min(end),
            _ => end,
        };
        let mut at = data;
        while at < hole {
            let want = usize::try_from(hole - at).map_or(1 << 30, |n| n.min(1 << 30));
            if in_kernel {
                let (mut off_in, mut off_out) = (at, at - offset + dst_offset);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut off_in),
                    dst,
                    Some(&mut off_out),
                    want,
                ) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the image ended early",
                        ))
                    }
                    Ok(n) => at += n as u64,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(_) => in_kernel = false,
                }
                continue;
            }
            let mut buf = vec![0u8; want.min(1 << 20)];
            src.read_exact_at(&mut buf, at)?;
            dst.write_all_at(&buf, at - offset + dst_offset)?;
            at += buf.len() as u64;
        }
        pos = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_problem_skips_banners_and_prompts() {
        let e2 = "e2fsck 1.47.0 (5-Feb-2023)\nPass 1: Checking inodes, blocks, and sizes\nPass 5: Checking group summary information\nBlock bitmap differences:  -(1234--1240)\nFix? no\n\nd.img: ********** WARNING: Filesystem still has errors **********\n";
        assert_eq!(
            first_problem(e2),
            "Block bitmap differences:  -(1234--1240)"
        );
        assert_eq!(first_problem(""), "no message");
        let long = format!("x{}\u{1b}", "y".repeat(400));
        let p = first_problem(&long);
        assert!(p.chars().count() == PROBLEM_MAX + 1 && !p.contains('\u{1b}'));
    }

    #[test]
    fn a_missing_checker_names_its_package() {
        let e = find_tool("no-such-fsck-tool", "some-package")
            .unwrap_err()
            .to_string();
        assert!(e.contains("install the some-package package"), "{e}");
    }
}
