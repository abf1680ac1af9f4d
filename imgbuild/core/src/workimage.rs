//! The image a build writes: a copy-on-write [`Overlay`] over the cached raw base (the usual
//! case: nothing is copied, writes go to a sparse overlay file in the build's scratch
//! directory), or a full working copy of the base (a plain file) when the image must grow
//! (resize2fs works on files) or the base has no raw copy in the cache (a raw `--base` file
//! without a cache is never written, so it is copied).
//!
//! Every stage that opens the image's file systems or reads its bytes after the patch goes
//! through a [`WorkImage`], so it does not care which of the two it is.

use crate::error::{Context, Result};
use crate::fs::fat::FatFs;
use imgbuild_ext2fs::Fs;
use imgbuild_overlay::{ImageRead, Overlay};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The image being built.
#[derive(Debug, Clone)]
pub enum WorkImage {
    /// A full working copy of the base: a plain sparse file.
    Copy(PathBuf),
    /// A copy-on-write view of the cached raw base.
    Overlay(Arc<Overlay>),
}

impl WorkImage {
    /// A file holding this image's bytes *as long as nothing was written to it*: the working
    /// copy itself, or the raw base under the overlay. Only for the read-only stages before
    /// the patch (partition table, probes, checks, chunk index), and for messages.
    pub fn unwritten_path(&self) -> &Path {
        match self {
            WorkImage::Copy(path) => path,
            WorkImage::Overlay(ov) => ov.base_path(),
        }
    }

    /// Opens the ext2/3/4 file system at `offset`: read-only, or writable with every write
    /// recorded (see [`Fs::close_tracked`]).
    pub fn open_root(&self, offset: u64, writable: bool) -> Result<Fs> {
        Ok(match (self, writable) {
            (WorkImage::Copy(path), false) => Fs::open(path, offset, false)?,
            (WorkImage::Copy(path), true) => Fs::open_tracked(path, offset)?,
            (WorkImage::Overlay(ov), _) => Fs::open_overlay(ov, offset, writable)?,
        })
    }

    /// Opens the FAT file system in the `len` bytes at `offset` (see [`FatFs::open`]).
    pub fn open_boot(&self, offset: u64, len: u64, timestamp: i64) -> Result<FatFs> {
        match self {
            WorkImage::Copy(path) => FatFs::open(path, offset, len, timestamp),
            WorkImage::Overlay(ov) => {
                FatFs::open_on(ov.clone(), ov.base_path(), offset, len, timestamp)
            }
        }
    }

    /// Positioned reads of the whole image, for the packer and the block map.
    pub fn reader(&self) -> Result<Arc<dyn ImageRead>> {
        Ok(match self {
            WorkImage::Copy(path) => Arc::new(
                std::fs::File::open(path).context(|| format!("opening {}", path.display()))?,
            ),
            WorkImage::Overlay(ov) => ov.clone(),
        })
    }
}
