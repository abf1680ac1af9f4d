//! The ext4 side of the file-system layer: a thin adapter over [`imgbuild_ext2fs::Fs`] (opened
//! with write tracking) that implements [`FileSystem`], and keeps what only ext4 has — modes,
//! owners, symlinks, the full `stat` — as methods of its own. Those return the library's own
//! [`imgbuild_ext2fs::Error`]; the trait's methods wrap it in [`Error::Ext4`], which keeps its
//! kind (a full file system above all) and names the root file system.

use std::path::Path;

use imgbuild_ext2fs::{Error as Ext4Error, FileKind, Fs, Meta, Stat};

use super::{ByteRanges, FileSystem, Kind};
use crate::error::{Error, Result};

/// An ext4 (or ext2/3) file system inside a partition of a disk image, open for writing with
/// every write recorded. Everything it creates gets the time stamp given at [`Ext4::open`].
pub struct Ext4 {
    fs: Fs,
    epoch: i64,
}

impl std::fmt::Debug for Ext4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4").field("epoch", &self.epoch).finish()
    }
}

impl Ext4 {
    /// Opens the file system at byte `offset` of `image` for writing (see
    /// [`Fs::open_tracked`] for what is refused); `epoch` (Unix seconds) is the time stamp of
    /// everything written.
    pub fn open(image: &Path, offset: u64, epoch: i64) -> Result<Ext4, Ext4Error> {
        let mut fs = Fs::open_tracked(image, offset)?;
        fs.set_time(epoch);
        Ok(Ext4 { fs, epoch })
    }

    /// The metadata `mode`, `uid`, `gid` with the file system's time stamp.
    pub fn meta(&self, mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime: self.epoch,
        }
    }

    /// Kind, mode, owner and size of `path` (the last component not followed); `None` if it
    /// does not exist.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>, Ext4Error> {
        self.fs.stat(path)
    }

    /// Creates or replaces the regular file `path` (its parent must exist) with `data` and
    /// `meta`.
    pub fn write_file_as(&mut self, path: &str, data: &[u8], meta: &Meta) -> Result<(), Ext4Error> {
        self.fs.write_file(path, data, meta)
    }

    /// Creates the directory `path` and its missing parents, each with `meta`.
    pub fn mkdir_p_as(&mut self, path: &str, meta: &Meta) -> Result<(), Ext4Error> {
        self.fs.mkdir_p(path, meta)
    }

    /// Creates the symlink `path` → `target` with `meta` (its parent must exist).
    pub fn symlink(&mut self, path: &str, target: &str, meta: &Meta) -> Result<(), Ext4Error> {
        self.fs.symlink(path, target, meta)
    }

    /// Gives the existing `path` the mode, owner and time of `meta`.
    pub fn set_meta(&mut self, path: &str, meta: &Meta) -> Result<(), Ext4Error> {
        self.fs.set_meta(path, meta)
    }

    /// The target of the symlink at `path`.
    pub fn read_link(&self, path: &str) -> Result<String, Ext4Error> {
        self.fs.read_link(path)
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u64 {
        self.fs.block_size()
    }

    /// The wrapped libext2fs file system.
    pub fn inner(&self) -> &Fs {
        &self.fs
    }
}

impl FileSystem for Ext4 {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.fs.read_file(path) {
            Ok(data) => Ok(Some(data)),
            Err(e) if *e.kind() == imgbuild_ext2fs::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e)),
        }
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let meta = match self.stat(path).map_err(Error::from)? {
            Some(s) if s.kind == FileKind::Regular => self.meta(s.mode & 0o7777, s.uid, s.gid),
            _ => self.meta(0o644, 0, 0),
        };
        if let Some((parent, _)) = path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            let dir = self.meta(0o755, 0, 0);
            self.mkdir_p_as(parent, &dir).map_err(Error::from)?;
        }
        self.write_file_as(path, data, &meta).map_err(Error::from)
    }

    fn mkdir_p(&mut self, path: &str) -> Result<()> {
        let meta = self.meta(0o755, 0, 0);
        self.mkdir_p_as(path, &meta).map_err(Error::from)
    }

    fn remove(&mut self, path: &str) -> Result<bool> {
        match self.fs.remove(path) {
            Ok(()) => Ok(true),
            Err(e) if *e.kind() == imgbuild_ext2fs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::from(e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        self.fs.read_dir(dir).map_err(Error::from)
    }

    fn kind(&self, path: &str) -> Result<Option<Kind>> {
        Ok(self.stat(path).map_err(Error::from)?.map(|s| match s.kind {
            FileKind::Regular => Kind::File,
            FileKind::Directory => Kind::Dir,
            FileKind::Symlink => Kind::Symlink,
            FileKind::Other => Kind::Other,
        }))
    }

    fn free_bytes(&self) -> Result<u64> {
        Ok(self.fs.free_bytes())
    }

    fn close(self) -> Result<ByteRanges> {
        self.fs.close_tracked().map_err(Error::from)
    }
}
