//! The safe public API: [`Fs`] and its value types. No `unsafe` here; every library call goes
//! through [`crate::raw`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use imgbuild_ranges::ByteRanges;

use crate::error::{Error, ErrorKind};
use crate::path;
use crate::raw::{code, Code, Inode, RawFs};
use crate::sys;

/// Owner, permissions and modification time given to created or changed inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777`: rwx for user/group/other plus setuid, setgid, sticky).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch (1901..2446 are representable).
    pub mtime: i64,
}

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A device node, FIFO or socket.
    Other,
}

/// What [`Fs::stat`] reports about an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: u32,
    /// Inode type.
    pub kind: FileKind,
    /// Full `i_mode` (type and permission bits).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Hard link count.
    pub links: u32,
}

/// The root directory's inode number.
const ROOT: u32 = sys::EXT2_ROOT_INO;
/// Symlinks followed while resolving one path before giving up (as Linux's ELOOP limit).
const MAX_SYMLINKS: u32 = 40;
/// Mask of the type bits in `i_mode`.
const S_IFMT: u32 = 0o170000;
/// Largest symlink target read back (the kernel limits targets to one block).
const MAX_LINK_LEN: u64 = 65536;

/// Why a file system may not be opened for writing, checked on the superblock.
fn refuse_writing(sb: &sys::ext2_super_block) -> Option<(ErrorKind, String)> {
    let incompat = sb.s_feature_incompat;
    let ro_compat = sb.s_feature_ro_compat;
    let state = u32::from(sb.s_state);
    if incompat & sys::EXT3_FEATURE_INCOMPAT_RECOVER != 0 {
        return Some((
            ErrorKind::NeedsRecovery,
            "the journal needs recovery (needs_recovery is set): mount the file system once or run \
             `e2fsck -fy` on it first"
                .to_owned(),
        ));
    }
    if sb.s_last_orphan != 0 || ro_compat & sys::EXT4_FEATURE_RO_COMPAT_ORPHAN_PRESENT != 0 {
        return Some((
            ErrorKind::NeedsRecovery,
            "orphaned inodes are pending cleanup: run `e2fsck -fy` on the file system first"
                .to_owned(),
        ));
    }
    if state & sys::EXT2_ERROR_FS != 0 {
        return Some((
            ErrorKind::HasErrors,
            "the file system is marked as having errors: run `e2fsck -fy` on it first".to_owned(),
        ));
    }
    if state & sys::EXT2_VALID_FS == 0 {
        return Some((
            ErrorKind::HasErrors,
            "the file system was not cleanly unmounted: run `e2fsck -fy` on it first".to_owned(),
        ));
    }
    let unsupported = [
        (
            incompat & sys::EXT3_FEATURE_INCOMPAT_JOURNAL_DEV,
            "journal_dev (an external journal device)",
        ),
        (
            ro_compat & sys::EXT4_FEATURE_RO_COMPAT_QUOTA,
            "quota (usage accounting is not updated)",
        ),
        (
            ro_compat & sys::EXT4_FEATURE_RO_COMPAT_READONLY,
            "read-only",
        ),
        (
            ro_compat & sys::EXT4_FEATURE_RO_COMPAT_SHARED_BLOCKS,
            "shared_blocks",
        ),
    ];
    unsupported
        .iter()
        .find(|(bit, _)| *bit != 0)
        .map(|(_, name)| {
            (
                ErrorKind::Unsupported,
                format!(
                    "the file system uses the feature {name}, which imgbuild cannot write safely"
                ),
            )
        })
}

/// Seconds to the `(low 32 bits, epoch bits)` pair of the ext4 on-disk time format.
fn encode_time(t: i64) -> (u32, u32) {
    let lo = t as u32;
    let epoch = ((t - i64::from(lo as i32)) >> 32) & 3;
    (lo, epoch as u32)
}

/// The ext4 on-disk time format back to seconds (`extra` is `None` for small inodes).
fn decode_time(lo: u32, extra: Option<u32>) -> i64 {
    i64::from(lo as i32) + extra.map_or(0, |e| i64::from(e & 3) << 32)
}

/// Byte offset, within `ext2_inode_large`, of the end of each "extra" time field.
const EXTRA_CTIME_END: u16 = 8;
const EXTRA_MTIME_END: u16 = 12;
const EXTRA_ATIME_END: u16 = 16;
const EXTRA_CRTIME_END: u16 = 24;

impl Inode {
    fn kind(&self) -> FileKind {
        match u32::from(self.0.i_mode) & S_IFMT {
            sys::LINUX_S_IFREG => FileKind::Regular,
            sys::LINUX_S_IFDIR => FileKind::Directory,
            sys::LINUX_S_IFLNK => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }

    fn has_extra(&self, end: u16, inode_size: usize) -> bool {
        inode_size > sys::EXT2_GOOD_OLD_INODE_SIZE as usize && self.0.i_extra_isize >= end
    }

    fn mtime(&self, inode_size: usize) -> i64 {
        let extra = self
            .has_extra(EXTRA_MTIME_END, inode_size)
            .then_some(self.0.i_mtime_extra);
        decode_time(self.0.i_mtime, extra)
    }

    fn set_mtime(&mut self, t: i64, inode_size: usize) {
        let (lo, epoch) = encode_time(t);
        self.0.i_mtime = lo;
        if self.has_extra(EXTRA_MTIME_END, inode_size) {
            self.0.i_mtime_extra = epoch;
        }
    }

    fn set_ctime(&mut self, t: i64, inode_size: usize) {
        let (lo, epoch) = encode_time(t);
        self.0.i_ctime = lo;
        if self.has_extra(EXTRA_CTIME_END, inode_size) {
            self.0.i_ctime_extra = epoch;
        }
    }

    /// Sets atime, ctime and crtime (the creation-time fields) to `t`.
    fn set_creation_times(&mut self, t: i64, inode_size: usize) {
        let (lo, epoch) = encode_time(t);
        self.set_ctime(t, inode_size);
        self.0.i_atime = lo;
        if self.has_extra(EXTRA_ATIME_END, inode_size) {
            self.0.i_atime_extra = epoch;
        }
        if self.has_extra(EXTRA_CRTIME_END, inode_size) {
            self.0.i_crtime = lo;
            self.0.i_crtime_extra = epoch;
        }
    }

    fn stat(&self, ino: u32, inode_size: usize) -> Stat {
        Stat {
            ino,
            kind: self.kind(),
            mode: u32::from(self.0.i_mode),
            uid: self.uid(),
            gid: self.gid(),
            size: self.size(),
            mtime: self.mtime(inode_size),
            links: u32::from(self.0.i_links_count),
        }
    }
}

/// Directory-entry file type for an inode kind (`filetype` feature).
fn file_type(kind: FileKind) -> u32 {
    match kind {
        FileKind::Regular => sys::EXT2_FT_REG_FILE,
        FileKind::Directory => sys::EXT2_FT_DIR,
        FileKind::Symlink => sys::EXT2_FT_SYMLINK,
        FileKind::Other => sys::EXT2_FT_UNKNOWN,
    }
}

/// The operation and path an error is reported against.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    op: &'static str,
    path: &'a str,
}

impl Ctx<'_> {
    fn err(&self, kind: ErrorKind, reason: impl Into<String>) -> Error {
        Error::new(self.op, self.path, kind, reason)
    }

    fn invalid(&self, reason: String) -> Error {
        self.err(ErrorKind::InvalidInput, reason)
    }
}

/// A directory entry to link: `name` in the directory `dir`, naming the inode `ino` of kind
/// `kind`.
#[derive(Clone, Copy)]
struct Link<'a> {
    dir: u32,
    name: &'a [u8],
    ino: u32,
    kind: FileKind,
}

impl<'a> Link<'a> {
    fn new(dir: u32, name: &'a [u8], ino: u32, kind: FileKind) -> Self {
        Link {
            dir,
            name,
            ino,
            kind,
        }
    }
}

/// An open ext2/3/4 file system inside an image file (optionally at a byte offset, e.g. a
/// partition inside a disk image). Writes go straight to the image file; [`Fs::close`] (or
/// dropping the value) flushes bitmaps, group descriptors and the superblock.
pub struct Fs {
    raw: RawFs,
    writable: bool,
    image: String,
}

impl Fs {
    /// Opens the file system that starts `offset` bytes into `image`. With `writable`, the
    /// allocation bitmaps are loaded and the file system is refused (with a clear error) when
    /// its journal needs recovery, it has errors or was not cleanly unmounted, or it uses a
    /// feature that cannot be written safely.
    pub fn open(image: &Path, offset: u64, writable: bool) -> Result<Fs, Error> {
        Fs::open_inner(image, offset, writable, false)
    }

    /// Like [`Fs::open`] with `writable`, and records the byte range of every write the library
    /// makes to the image file; see [`Fs::written_ranges`].
    pub fn open_tracked(image: &Path, offset: u64) -> Result<Fs, Error> {
        Fs::open_inner(image, offset, true, true)
    }

    /// Opens the file system that starts `offset` bytes into the image `overlay`, a
    /// copy-on-write view of a base image: reads fall through to the base, which is never
    /// written; writes (only `writable`) go to the overlay file and are recorded, so
    /// [`Fs::written_ranges`] and [`Fs::close_tracked`] work as with [`Fs::open_tracked`].
    /// Refusals as for [`Fs::open`].
    pub fn open_overlay(
        overlay: &std::sync::Arc<imgbuild_overlay::Overlay>,
        offset: u64,
        writable: bool,
    ) -> Result<Fs, Error> {
        let shown = overlay.base_path().display().to_string();
        let raw = RawFs::open_overlay(std::sync::Arc::clone(overlay), offset, writable);
        Fs::finish_open(raw, shown, offset, writable)
    }

    fn open_inner(image: &Path, offset: u64, writable: bool, track: bool) -> Result<Fs, Error> {
        let shown = image.display().to_string();
        let ctx = Ctx {
            op: "open",
            path: &shown,
        };
        let c_image = CString::new(image.as_os_str().as_bytes())
            .map_err(|_| ctx.invalid("the image path contains a NUL byte".to_owned()))?;
        let mut fs = Fs::finish_open(
            RawFs::open(&c_image, offset, writable),
            shown.clone(),
            offset,
            writable,
        )?;
        if track {
            fs.raw
                .track_writes(offset)
                .map_err(|rc| Error::from_code("open", &shown, rc, 0, 0))?;
        }
        Ok(fs)
    }

    /// Turns a raw open into an [`Fs`]: errors named, a file system that may not be written
    /// refused, bitmaps loaded for writing.
    fn finish_open(
        raw: crate::raw::RawResult<RawFs>,
        shown: String,
        offset: u64,
        writable: bool,
    ) -> Result<Fs, Error> {
        let ctx = Ctx {
            op: "open",
            path: &shown,
        };
        let mut raw = raw.map_err(|rc| {
            let mut e = Error::from_code("open", &shown, rc, 0, 0);
            if rc == code(sys::EXT2_ET_SHORT_READ) || rc == code(sys::EXT2_ET_BAD_MAGIC) {
                e = ctx.err(
                    e.kind().clone(),
                    format!("{} at byte offset {offset}", crate::error::describe(rc)),
                );
            }
            e
        })?;
        if writable {
            if let Some((kind, reason)) = refuse_writing(raw.superblock()) {
                return Err(ctx.err(kind, reason));
            }
            raw.read_bitmaps()
                .map_err(|rc| Error::from_code("open", &shown, rc, 0, 0))?;
        }
        Ok(Fs {
            raw,
            writable,
            image: shown,
        })
    }

    /// The volume label (empty when unset).
    pub fn label(&self) -> String {
        let name = &self.raw.superblock().s_volume_name;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    }

    /// The file system UUID in the usual `8-4-4-4-12` lowercase hex form.
    pub fn uuid(&self) -> String {
        let u = &self.raw.superblock().s_uuid;
        let hex: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
        [
            &hex[0..4],
            &hex[4..6],
            &hex[6..8],
            &hex[8..10],
            &hex[10..16],
        ]
        .map(|group| group.concat())
        .join("-")
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.raw.block_size()
    }

    /// Free space in bytes (all free blocks, including those reserved for root).
    pub fn free_bytes(&self) -> u64 {
        self.raw
            .free_blocks_count()
            .saturating_mul(self.block_size())
    }

    /// Number of free inodes.
    pub fn free_inodes(&self) -> u64 {
        u64::from(self.raw.superblock().s_free_inodes_count)
    }

    /// Size of the file system in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.raw.blocks_count().saturating_mul(self.block_size())
    }

    /// Sets the time (seconds since the epoch) used for the ctime/atime/crtime of created or
    /// changed inodes, the mtime of changed directories and the superblock's write time. Without
    /// it the wall clock is used (or `E2FSPROGS_FAKE_TIME`); with it, identical operations on
    /// identical images give byte-identical images.
    pub fn set_time(&mut self, epoch: i64) {
        self.raw.set_now(epoch);
    }

    /// Flushes everything to the image and closes the file system.
    pub fn close(self) -> Result<(), Error> {
        let image = self.image;
        self.raw
            .close()
            .map_err(|rc| Error::from_code("close", &image, rc, 0, 0))
    }

    /// Byte ranges of the image file (offsets from its start) written so far.
    /// Empty unless opened with [`Fs::open_tracked`]. Writes still buffered in the library
    /// (bitmaps, group descriptors, superblock, the block cache) are missing until they are
    /// flushed at close; [`Fs::close_tracked`] returns the complete set.
    pub fn written_ranges(&self) -> ByteRanges {
        self.raw.tracker().map(|t| t.ranges()).unwrap_or_default()
    }

    /// Closes the file system and returns every byte range written to the image file, including
    /// the final flush. Equivalent to [`Fs::close`] for untracked file systems (empty set).
    pub fn close_tracked(self) -> Result<ByteRanges, Error> {
        let tracker = self.raw.tracker().cloned();
        self.close()?;
        Ok(tracker.map(|t| t.ranges()).unwrap_or_default())
    }

    // ----- reading -----

    /// Information about `path` (absolute; the last component is not followed if it is a
    /// symlink). `None` when the path or one of its parents does not exist.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>, Error> {
        let ctx = Ctx { op: "stat", path };
        match self.resolve(ctx, false) {
            Ok(ino) => Ok(Some(
                self.read_inode(ctx, ino)?.stat(ino, self.raw.inode_size()),
            )),
            Err(e) if *e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The content of the regular file at `path` (symlinks are followed).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let ctx = Ctx { op: "read", path };
        let ino = self.resolve(ctx, true)?;
        let inode = self.read_inode(ctx, ino)?;
        if inode.kind() != FileKind::Regular {
            return Err(ctx.err(ErrorKind::WrongType, "not a regular file"));
        }
        self.raw
            .read_data(ino, inode.size())
            .map_err(|rc| self.code_err(ctx, rc, 0))
    }

    /// Where the content of the regular file at `path` lies: byte ranges `(offset, length)`
    /// relative to the start of the file system, one per run of consecutive blocks, in file
    /// order (whole blocks; holes take no range). Used to keep a secret file's bytes out of
    /// caches. A file whose data lives inside its inode (`inline_data`) is refused with
    /// [`ErrorKind::Unsupported`], since its bytes share a block with other inodes.
    pub fn data_ranges(&self, path: &str) -> Result<Vec<(u64, u64)>, Error> {
        let ctx = Ctx { op: "map", path };
        let ino = self.resolve(ctx, true)?;
        let inode = self.read_inode(ctx, ino)?;
        if inode.kind() != FileKind::Regular {
            return Err(ctx.err(ErrorKind::WrongType, "not a regular file"));
        }
        if inode.0.i_flags & sys::EXT4_INLINE_DATA_FL != 0 {
            return Err(ctx.err(
                ErrorKind::Unsupported,
                "its data is stored inline in the inode",
            ));
        }
        let bs = self.block_size();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for lblk in 0..inode.size().div_ceil(bs) {
            let phys = self
                .raw
                .bmap(ino, lblk)
                .map_err(|rc| self.code_err(ctx, rc, 0))?;
            if phys == 0 {
                continue;
            }
            let off = phys * bs;
            match out.last_mut() {
                Some((o, l)) if *o + *l == off => *l += bs,
                _ => out.push((off, bs)),
            }
        }
        Ok(out)
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &str) -> Result<String, Error> {
        let ctx = Ctx {
            op: "readlink",
            path,
        };
        let ino = self.resolve(ctx, false)?;
        let target = self.link_target(ctx, ino)?;
        Ok(String::from_utf8_lossy(&target).into_owned())
    }

    /// Names in the directory at `path` (symlinks are followed), sorted, without `.` and `..`.
    /// Names that are not UTF-8 are converted lossily.
    pub fn read_dir(&self, path: &str) -> Result<Vec<String>, Error> {
        let ctx = Ctx {
            op: "readdir",
            path,
        };
        let ino = self.resolve(ctx, true)?;
        let mut names: Vec<String> = self
            .children(ctx, ino)?
            .into_iter()
            .map(|(name, _)| String::from_utf8_lossy(&name).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    // ----- writing -----

    /// Creates the directory `path` and any missing parents, giving each created directory
    /// `meta`. Existing directories (and symlinks to directories) are left untouched.
    pub fn mkdir_p(&mut self, path: &str, meta: &Meta) -> Result<(), Error> {
        let ctx = Ctx { op: "mkdir", path };
        self.check_writable(ctx)?;
        let names = path::components(path).map_err(|r| ctx.invalid(r))?;
        let mut dir = ROOT;
        for name in names {
            dir = match self.lookup(ctx, dir, name)? {
                Some(_) => {
                    let mut budget = MAX_SYMLINKS;
                    let ino = self.walk(ctx, dir, vec![name.to_vec()], true, &mut budget)?;
                    self.expect_dir(ctx, ino)?;
                    ino
                }
                None => self.create_dir(ctx, dir, name, meta)?,
            };
        }
        Ok(())
    }

    /// Creates or replaces the regular file `path` (its parent must exist) with `data` and
    /// `meta`. A replaced file's inode is released (its blocks are freed once no other hard link
    /// refers to it) and a new inode is written; extents are used when the file system has them.
    pub fn write_file(&mut self, path: &str, data: &[u8], meta: &Meta) -> Result<(), Error> {
        let ctx = Ctx { op: "write", path };
        self.check_writable(ctx)?;
        let (dir, name) = self.parent_of(ctx)?;
        let existing = self.lookup(ctx, dir, name)?;
        let reclaimable = match existing {
            Some(ino) => self.reclaimable_bytes(ctx, ino)?,
            None => 0,
        };
        self.ensure_space(ctx, self.bytes_needed(data.len() as u64), reclaimable)?;
        if let Some(old) = existing {
            self.remove_entry(ctx, dir, name, old)?;
        }
        self.create_file(ctx, dir, name, data, meta)
    }

    /// Creates the symlink `path -> target`, replacing an existing non-directory. Targets
    /// shorter than 60 bytes are stored in the inode, longer ones in a block. Symlink permission
    /// bits are always `0777` (as Linux creates them); `meta` gives owner and mtime.
    pub fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<(), Error> {
        let ctx = Ctx {
            op: "symlink",
            path,
        };
        self.check_writable(ctx)?;
        if target.is_empty() || target.contains('\0') {
            return Err(ctx
                .invalid("the symlink target must be non-empty and free of NUL bytes".to_owned()));
        }
        if target.len() as u64 >= self.block_size() {
            return Err(ctx.invalid(format!(
                "the symlink target is {} bytes; at most {} fit in one block",
                target.len(),
                self.block_size() - 1
            )));
        }
        let (dir, name) = self.parent_of(ctx)?;
        let existing = self.lookup(ctx, dir, name)?;
        if let Some(old) = existing {
            if self.read_inode(ctx, old)?.kind() == FileKind::Directory {
                return Err(ctx.err(ErrorKind::WrongType, "is a directory"));
            }
        }
        self.ensure_space(ctx, self.bytes_needed(target.len() as u64), 0)?;
        if let Some(old) = existing {
            self.remove_entry(ctx, dir, name, old)?;
        }
        let c_target = CString::new(target).map_err(|_| ctx.invalid("NUL in target".to_owned()))?;
        let ino = self.alloc_inode(ctx, dir, sys::LINUX_S_IFLNK | 0o777)?;
        self.raw
            .symlink_unlinked(dir, ino, &c_target)
            .map_err(|rc| self.code_err(ctx, rc, self.block_size()))?;
        self.finish_create(ctx, Link::new(dir, name, ino, FileKind::Symlink), meta)
    }

    /// Changes permission bits, owner and mtime of the inode at `path` (a final symlink is not
    /// followed; a symlink's permission bits stay `0777`).
    pub fn set_meta(&mut self, path: &str, meta: &Meta) -> Result<(), Error> {
        let ctx = Ctx {
            op: "set_meta",
            path,
        };
        self.check_writable(ctx)?;
        let ino = self.resolve(ctx, false)?;
        let mut inode = self.read_inode(ctx, ino)?;
        self.apply_meta(&mut inode, meta);
        let size = self.raw.inode_size();
        inode.set_ctime(self.now(), size);
        self.write_inode(ctx, ino, &inode)
    }

    /// Removes the file, symlink or empty directory at `path`. The inode and its blocks are
    /// freed when its link count drops to zero.
    pub fn remove(&mut self, path: &str) -> Result<(), Error> {
        let ctx = Ctx { op: "remove", path };
        self.check_writable(ctx)?;
        let (dir, name) = self.parent_of(ctx)?;
        let ino = self
            .lookup(ctx, dir, name)?
            .ok_or_else(|| ctx.err(ErrorKind::NotFound, "no such file or directory"))?;
        self.remove_entry(ctx, dir, name, ino)
    }

    // ----- helpers: errors, space, time -----

    fn code_err(&self, ctx: Ctx, rc: Code, needed_bytes: u64) -> Error {
        Error::from_code(ctx.op, ctx.path, rc, needed_bytes, self.free_bytes())
    }

    fn check_writable(&self, ctx: Ctx) -> Result<(), Error> {
        if self.writable {
            Ok(())
        } else {
            Err(ctx.err(
                ErrorKind::InvalidInput,
                "the file system was opened read-only",
            ))
        }
    }

    /// "Now" for inode times: the time set with [`Fs::set_time`], else the wall clock.
    fn now(&self) -> i64 {
        match self.raw.now() {
            0 => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            t => t,
        }
    }

    /// Bytes a file of `len` bytes needs: its data blocks, a margin for extent (or indirect)
    /// blocks, and two blocks for directory growth.
    fn bytes_needed(&self, len: u64) -> u64 {
        let bs = self.block_size();
        let data = len.div_ceil(bs);
        let per_meta_block = (bs / 12).max(1);
        (data + data.div_ceil(per_meta_block) + 2).saturating_mul(bs)
    }

    /// Refuses with [`ErrorKind::NoSpace`] unless `needed` bytes (minus `reclaimable` bytes that
    /// the operation frees first) and one inode are available.
    fn ensure_space(&self, ctx: Ctx, needed: u64, reclaimable: u64) -> Result<(), Error> {
        let free = self.free_bytes();
        if needed > free.saturating_add(reclaimable) {
            return Err(self.code_err(ctx, code(sys::EXT2_ET_BLOCK_ALLOC_FAIL), needed));
        }
        if self.free_inodes() == 0 {
            return Err(self.code_err(ctx, code(sys::EXT2_ET_INODE_ALLOC_FAIL), needed));
        }
        Ok(())
    }

    /// Bytes freed by releasing `ino` (its blocks, when this is its last link).
    fn reclaimable_bytes(&self, ctx: Ctx, ino: u32) -> Result<u64, Error> {
        let inode = self.read_inode(ctx, ino)?;
        if inode.kind() == FileKind::Directory {
            return Err(ctx.err(ErrorKind::WrongType, "is a directory"));
        }
        if inode.0.i_links_count > 1 {
            return Ok(0);
        }
        // i_blocks counts 512-byte sectors (without huge_file's block-unit mode, which only very
        // large files use; an underestimate is harmless here).
        Ok(u64::from(inode.0.i_blocks) * 512)
    }

    // ----- helpers: inodes -----

    fn read_inode(&self, ctx: Ctx, ino: u32) -> Result<Inode, Error> {
        self.raw
            .read_inode(ino)
            .map_err(|rc| self.code_err(ctx, rc, 0))
    }

    fn write_inode(&mut self, ctx: Ctx, ino: u32, inode: &Inode) -> Result<(), Error> {
        self.raw
            .write_inode(ino, inode)
            .map_err(|rc| self.code_err(ctx, rc, 0))
    }

    fn apply_meta(&self, inode: &mut Inode, meta: &Meta) {
        let ty = u32::from(inode.0.i_mode) & S_IFMT;
        let perm = if ty == sys::LINUX_S_IFLNK {
            0o777
        } else {
            meta.mode & 0o7777
        };
        inode.0.i_mode = (ty | perm) as u16;
        inode.set_owner(meta.uid, meta.gid);
        inode.set_mtime(meta.mtime, self.raw.inode_size());
    }

    /// Finds a free inode for a new `mode` inode in `dir` (not yet marked in use).
    fn alloc_inode(&mut self, ctx: Ctx, dir: u32, mode: u32) -> Result<u32, Error> {
        self.raw
            .new_inode(dir, mode)
            .map_err(|rc| self.code_err(ctx, rc, self.block_size()))
    }

    /// Sets `meta` and the creation times on the new inode `link.ino`, then links it (see
    /// [`Fs::add_entry`]); on failure the inode is released again.
    fn finish_create(&mut self, ctx: Ctx, link: Link, meta: &Meta) -> Result<(), Error> {
        let result = self
            .stamp_new(ctx, link.ino, meta)
            .and_then(|()| self.add_entry(ctx, link));
        if result.is_err() {
            // Best effort: the error being reported matters more than a failed cleanup.
            let _ = self.release_inode(ctx, link.ino, link.kind == FileKind::Directory);
        }
        result
    }

    fn stamp_new(&mut self, ctx: Ctx, ino: u32, meta: &Meta) -> Result<(), Error> {
        let mut inode = self.read_inode(ctx, ino)?;
        self.apply_meta(&mut inode, meta);
        inode.set_creation_times(self.now(), self.raw.inode_size());
        self.write_inode(ctx, ino, &inode)
    }

    fn create_file(
        &mut self,
        ctx: Ctx,
        dir: u32,
        name: &[u8],
        data: &[u8],
        meta: &Meta,
    ) -> Result<(), Error> {
        let ino = self.alloc_inode(ctx, dir, sys::LINUX_S_IFREG | (meta.mode & 0o7777))?;
        let mut inode = Inode::default();
        inode.0.i_mode = (sys::LINUX_S_IFREG | (meta.mode & 0o7777)) as u16;
        inode.0.i_links_count = 1;
        if self.raw.superblock().s_feature_incompat & sys::EXT3_FEATURE_INCOMPAT_EXTENTS != 0 {
            self.raw
                .init_extents(ino, &mut inode)
                .map_err(|rc| self.code_err(ctx, rc, 0))?;
        }
        self.raw
            .write_new_inode(ino, &inode)
            .map_err(|rc| self.code_err(ctx, rc, 0))?;
        self.raw.inode_alloc_stats(ino, 1, false);
        let needed = self.bytes_needed(data.len() as u64);
        if let Err(rc) = self.raw.write_data(ino, data) {
            let _ = self.release_inode(ctx, ino, false);
            return Err(self.code_err(ctx, rc, needed));
        }
        self.finish_create(ctx, Link::new(dir, name, ino, FileKind::Regular), meta)
    }

    fn create_dir(
        &mut self,
        ctx: Ctx,
        parent: u32,
        name: &[u8],
        meta: &Meta,
    ) -> Result<u32, Error> {
        self.check_dir_writable(ctx, parent)?;
        self.ensure_space(ctx, 2 * self.block_size(), 0)?;
        let parent_links = self.read_inode(ctx, parent)?.0.i_links_count;
        let overflow = parent_links == 1 || u32::from(parent_links) >= sys::EXT2_LINK_MAX - 1;
        let dir_nlink =
            self.raw.superblock().s_feature_ro_compat & sys::EXT4_FEATURE_RO_COMPAT_DIR_NLINK != 0;
        if overflow && !dir_nlink {
            return Err(ctx.err(
                ErrorKind::Other,
                "the parent directory has the maximum number of subdirectories",
            ));
        }
        let ino = self.alloc_inode(ctx, parent, sys::LINUX_S_IFDIR | (meta.mode & 0o7777))?;
        self.raw
            .mkdir_unlinked(parent, ino)
            .map_err(|rc| self.code_err(ctx, rc, 2 * self.block_size()))?;
        self.set_parent_links(ctx, parent, if overflow { 1 } else { parent_links + 1 })?;
        let link = Link::new(parent, name, ino, FileKind::Directory);
        if let Err(e) = self.finish_create(ctx, link, meta) {
            let _ = self.set_parent_links(ctx, parent, parent_links);
            return Err(e);
        }
        Ok(ino)
    }

    fn set_parent_links(&mut self, ctx: Ctx, parent: u32, links: u16) -> Result<(), Error> {
        let mut inode = self.read_inode(ctx, parent)?;
        inode.0.i_links_count = links;
        self.write_inode(ctx, parent, &inode)
    }

    /// Drops one link of `ino` (all of them for a directory) and frees it with its blocks and
    /// extended-attribute block when none is left.
    fn release_inode(&mut self, ctx: Ctx, ino: u32, is_dir: bool) -> Result<(), Error> {
        let mut inode = self.read_inode(ctx, ino)?;
        let size = self.raw.inode_size();
        let now = self.now();
        inode.0.i_links_count = if is_dir {
            0
        } else {
            inode.0.i_links_count.saturating_sub(1)
        };
        inode.set_ctime(now, size);
        if inode.0.i_links_count == 0 {
            inode.0.i_dtime = encode_time(now).0;
            self.raw
                .free_ext_attr(ino, &mut inode)
                .map_err(|rc| self.code_err(ctx, rc, 0))?;
            if self.raw.has_valid_blocks(&inode) {
                self.raw
                    .punch_all(ino, &mut inode)
                    .map_err(|rc| self.code_err(ctx, rc, 0))?;
            }
            self.raw.inode_alloc_stats(ino, -1, is_dir);
        }
        self.write_inode(ctx, ino, &inode)
    }

    // ----- helpers: directories -----

    fn lookup(&self, ctx: Ctx, dir: u32, name: &[u8]) -> Result<Option<u32>, Error> {
        self.raw
            .lookup(dir, name)
            .map_err(|rc| self.code_err(ctx, rc, 0))
    }

    /// Live entries of directory `dir` except `.` and `..`.
    fn children(&self, ctx: Ctx, dir: u32) -> Result<Vec<(Vec<u8>, u32)>, Error> {
        self.expect_dir(ctx, dir)?;
        let mut entries = self
            .raw
            .dir_entries(dir)
            .map_err(|rc| self.code_err(ctx, rc, 0))?;
        entries.retain(|(name, _)| name != b"." && name != b"..");
        Ok(entries)
    }

    fn expect_dir(&self, ctx: Ctx, ino: u32) -> Result<Inode, Error> {
        let inode = self.read_inode(ctx, ino)?;
        if inode.kind() == FileKind::Directory {
            Ok(inode)
        } else {
            Err(ctx.err(ErrorKind::WrongType, "a path component is not a directory"))
        }
    }

    /// Refuses directories whose entry names are encrypted or case-folded: entries written here
    /// would not match what the kernel expects.
    fn check_dir_writable(&self, ctx: Ctx, dir: u32) -> Result<Inode, Error> {
        let inode = self.expect_dir(ctx, dir)?;
        if inode.0.i_flags & (sys::EXT4_ENCRYPT_FL | sys::EXT4_CASEFOLD_FL) != 0 {
            return Err(ctx.err(
                ErrorKind::Unsupported,
                "the parent directory is encrypted or case-insensitive; imgbuild cannot add entries to it",
            ));
        }
        Ok(inode)
    }

    /// Links `name -> ino` into `dir`, growing the directory by a block when it is full, and
    /// updates the directory's mtime/ctime.
    fn add_entry(&mut self, ctx: Ctx, link: Link) -> Result<(), Error> {
        let Link {
            dir,
            name,
            ino,
            kind,
        } = link;
        let c_name = CString::new(name).map_err(|_| ctx.invalid("NUL in name".to_owned()))?;
        let mut expanded = false;
        loop {
            match self.raw.link(dir, &c_name, ino, file_type(kind)) {
                Ok(()) => break,
                Err(rc) if rc == code(sys::EXT2_ET_DIR_NO_SPACE) && !expanded => {
                    self.raw
                        .expand_dir(dir)
                        .map_err(|rc| self.code_err(ctx, rc, self.block_size()))?;
                    expanded = true;
                }
                Err(rc) => return Err(self.code_err(ctx, rc, self.block_size())),
            }
        }
        self.touch_dir(ctx, dir)
    }

    fn touch_dir(&mut self, ctx: Ctx, dir: u32) -> Result<(), Error> {
        let mut inode = self.read_inode(ctx, dir)?;
        let (now, size) = (self.now(), self.raw.inode_size());
        inode.set_mtime(now, size);
        inode.set_ctime(now, size);
        self.write_inode(ctx, dir, &inode)
    }

    /// Removes entry `name` (inode `ino`) from `dir` and releases the inode. Directories must be
    /// empty; the parent's link count drops with them.
    fn remove_entry(&mut self, ctx: Ctx, dir: u32, name: &[u8], ino: u32) -> Result<(), Error> {
        self.check_dir_writable(ctx, dir)?;
        let is_dir = self.read_inode(ctx, ino)?.kind() == FileKind::Directory;
        if is_dir && !self.children(ctx, ino)?.is_empty() {
            return Err(ctx.err(ErrorKind::WrongType, "the directory is not empty"));
        }
        let c_name = CString::new(name).map_err(|_| ctx.invalid("NUL in name".to_owned()))?;
        self.raw
            .unlink(dir, &c_name)
            .map_err(|rc| self.code_err(ctx, rc, 0))?;
        self.release_inode(ctx, ino, is_dir)?;
        if is_dir {
            let links = self.read_inode(ctx, dir)?.0.i_links_count;
            if links > 2 {
                self.set_parent_links(ctx, dir, links - 1)?;
            }
        }
        self.touch_dir(ctx, dir)
    }

    // ----- helpers: path resolution -----

    /// The directory holding `ctx.path`'s last name (symlinks in the parent path are followed)
    /// and that name. The directory is checked to accept new entries.
    fn parent_of<'p>(&self, ctx: Ctx<'p>) -> Result<(u32, &'p [u8]), Error> {
        let (parents, name) = path::split_last(ctx.path).map_err(|r| ctx.invalid(r))?;
        let mut budget = MAX_SYMLINKS;
        let names = parents.iter().map(|n| n.to_vec()).collect();
        let dir = self.walk(ctx, ROOT, names, true, &mut budget)?;
        self.check_dir_writable(ctx, dir)?;
        Ok((dir, name))
    }

    /// The inode of `ctx.path`; symlinks in the parents are followed, the last one only with
    /// `follow_last`.
    fn resolve(&self, ctx: Ctx, follow_last: bool) -> Result<u32, Error> {
        let names = path::components(ctx.path).map_err(|r| ctx.invalid(r))?;
        let mut budget = MAX_SYMLINKS;
        self.walk(
            ctx,
            ROOT,
            names.iter().map(|n| n.to_vec()).collect(),
            follow_last,
            &mut budget,
        )
    }

    /// Resolves `names` starting in directory `start`. Symlinks met before the last name are
    /// followed (absolute targets from the file system's root), the last one only with
    /// `follow_last`; `budget` bounds the number of symlinks followed.
    fn walk(
        &self,
        ctx: Ctx,
        start: u32,
        names: Vec<Vec<u8>>,
        follow_last: bool,
        budget: &mut u32,
    ) -> Result<u32, Error> {
        let mut pending: std::collections::VecDeque<Vec<u8>> = names.into();
        let mut cur = start;
        while let Some(name) = pending.pop_front() {
            self.expect_dir(ctx, cur)?;
            let ino = self
                .lookup(ctx, cur, &name)?
                .ok_or_else(|| ctx.err(ErrorKind::NotFound, "no such file or directory"))?;
            let inode = self.read_inode(ctx, ino)?;
            if inode.kind() != FileKind::Symlink || (pending.is_empty() && !follow_last) {
                cur = ino;
                continue;
            }
            *budget = budget
                .checked_sub(1)
                .ok_or_else(|| ctx.err(ErrorKind::Other, "too many levels of symbolic links"))?;
            let target = self.link_target(ctx, ino)?;
            if target.first() == Some(&b'/') {
                cur = ROOT;
            }
            let target_names: Vec<&[u8]> = target
                .split(|&b| b == b'/')
                .filter(|n| !n.is_empty() && *n != b".")
                .collect();
            for n in target_names.into_iter().rev() {
                pending.push_front(n.to_vec());
            }
        }
        Ok(cur)
    }

    /// The raw target of symlink inode `ino`.
    fn link_target(&self, ctx: Ctx, ino: u32) -> Result<Vec<u8>, Error> {
        let inode = self.read_inode(ctx, ino)?;
        if inode.kind() != FileKind::Symlink {
            return Err(ctx.err(ErrorKind::WrongType, "not a symbolic link"));
        }
        let size = inode.size();
        if size > MAX_LINK_LEN {
            return Err(ctx.err(ErrorKind::Other, format!("corrupt symlink: size {size}")));
        }
        if RawFs::is_fast_symlink(&inode) {
            let bytes: Vec<u8> = inode
                .0
                .i_block
                .iter()
                .flat_map(|w| w.to_ne_bytes())
                .collect();
            return Ok(bytes[..size as usize].to_vec());
        }
        self.raw
            .read_data(ino, size)
            .map_err(|rc| self.code_err(ctx, rc, 0))
    }
}
