//! The file-system layer: the two file systems of an image behind one trait, [`FileSystem`] —
//! FAT through the vendored, patched `fatfs` ([`fat::FatFs`]), ext4 through libext2fs
//! ([`ext4::Ext4`]) — whose [`close`](FileSystem::close) returns every byte range of the image
//! file that was written, as one [`ByteRanges`] type.
//!
//! What is in the trait is what both file systems do the same way: read, write (content only),
//! create directories, remove, list, tell a file from a directory, free space, close. What only
//! ext4 has stays on [`ext4::Ext4`]: permission bits and owners (FAT has none, so a trait method
//! taking them would silently drop them on one side), symlinks (FAT cannot hold them) and the
//! full `stat`. Time stamps are not per call on either side: each file system is opened with
//! the one build time stamp and gives it to everything it writes.

pub mod ext4;
pub mod fat;
mod fatfix;
pub mod window;

use crate::error::Result;

pub use imgbuild_ranges::ByteRanges;

/// What a path names, as far as both file systems can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (ext4 only).
    Symlink,
    /// A device node, FIFO or socket (ext4 only).
    Other,
}

/// A file system of the image, open for reading and writing.
///
/// Paths are absolute and `/`-separated (`"/"` is the root directory); FAT compares names
/// without case, ext4 exactly. Every change goes to the image file at once and is recorded;
/// [`close`](FileSystem::close) must be called to finish cleanly.
pub trait FileSystem {
    /// The content of the regular file at `path` (on ext4 a symlink is followed), or `None`
    /// if nothing is there. Fails if `path` is a directory.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;

    /// Creates the regular file at `path`, or replaces the content of an existing one,
    /// creating missing parent directories. On ext4 a new file is `0644` and new parents
    /// `0755`, owned by root; a replaced file keeps its mode and owner.
    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()>;

    /// Creates the directory `path` and its missing parents (ext4: `0755`, root); existing
    /// directories are left alone.
    fn mkdir_p(&mut self, path: &str) -> Result<()>;

    /// Removes the file (or empty directory) at `path`; `Ok(false)` if nothing was there.
    fn remove(&mut self, path: &str) -> Result<bool>;

    /// Names in the directory `dir`, without `.` and `..` (FAT: on-disk order; ext4: sorted).
    fn list(&self, dir: &str) -> Result<Vec<String>>;

    /// What `path` is (the last component is not followed), or `None` if it does not exist.
    fn kind(&self, path: &str) -> Result<Option<Kind>>;

    /// Free space in bytes.
    fn free_bytes(&self) -> Result<u64>;

    /// Finishes the file system cleanly and returns every byte range of the image file that
    /// was written while it was open.
    fn close(self) -> Result<ByteRanges>
    where
        Self: Sized;
}
