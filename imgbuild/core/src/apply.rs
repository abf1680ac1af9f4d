//! Apply: execute the planned writes ([`crate::writes`]) on the working copy of the image — the
//! root file system through libext2fs, the boot partition through `fatfs` — and record every
//! file written. Nothing here decides what to write; errors are the file systems' own (full,
//! corrupt), plus a guard against a plan that disagrees with the image.

use crate::board::Role;
use crate::error::{Error, Result};
use crate::fs::ext4::Ext4;
use crate::fs::fat::FatFs;
use crate::fs::{FileSystem, Kind};
use crate::writes::{Op, Owned, Write};
use imgbuild_ext2fs::Meta;
use imgbuild_ranges::ByteRanges;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where a partition lives inside the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Byte offset of the partition.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// One file, directory or link written into the image, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    /// `boot` or `root`.
    pub partition: Role,
    /// Path inside that partition's file system.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: &'static str,
    /// Size in bytes (files), target length (links), 0 (dirs).
    pub size: u64,
    /// sha256 of the content (files only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Link target (links only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Permission bits as octal text (root fs only; FAT has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `uid:gid` (root fs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What asked for it.
    pub origin: String,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Everything written, in order.
    pub written: Vec<Written>,
    /// Byte ranges of the image file that were modified.
    pub dirty: ByteRanges,
}

/// Inputs of the apply stage that do not come from the plan.
pub struct Target<'a> {
    /// The working copy (never the base image).
    pub image: &'a std::path::Path,
    /// Boot partition location.
    pub boot: Span,
    /// Root partition location.
    pub root: Span,
    /// Timestamp for everything written (SOURCE_DATE_EPOCH or the build time).
    pub epoch: i64,
}

/// Executes `ops` in order on the image.
pub fn apply(t: &Target, ops: &[Op]) -> Result<Applied> {
    let root = Ext4::open(t.image, t.root.offset, t.epoch)?;
    let boot = FatFs::open(t.image, t.boot.offset, t.boot.size, t.epoch)?;
    let mut w = Writer {
        root,
        boot,
        written: Vec::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = w.execute(op) {
            return Err(root_full(e, op, &ops[i + 1..], w.root.block_size()));
        }
    }
    let Writer {
        root,
        boot,
        written,
        ..
    } = w;
    let mut dirty = root.close()?;
    dirty.merge(&boot.close()?);
    Ok(Applied { written, dirty })
}

/// Turns running out of space on the root file system into [`Error::RootFull`], with an
/// estimate of the bytes still missing for `op` and the writes after it (`rest`); other errors
/// are returned as they are.
fn root_full(e: Error, op: &Op, rest: &[Op], block_size: u64) -> Error {
    let Error::Ext4(cause) = e.root_cause() else {
        return e;
    };
    let imgbuild_ext2fs::ErrorKind::NoSpace {
        needed_bytes,
        free_bytes,
    } = *cause.kind()
    else {
        return e;
    };
    let blocks = |len: u64| len.div_ceil(block_size).max(1) * block_size;
    let later: u64 = rest
        .iter()
        .map(|o| match &o.write {
            Write::RootFile { data, .. } => blocks(data.len() as u64),
            Write::RootDir { .. } | Write::RootSymlink { .. } => block_size,
            Write::BootFile { .. } => 0,
        })
        .sum();
    let path = match &op.write {
        Write::RootFile { path, .. }
        | Write::RootDir { path, .. }
        | Write::RootSymlink { path, .. }
        | Write::BootFile { path, .. } => path,
    };
    Error::RootFull {
        writing: match op.origin.contains(path.as_str()) {
            true => op.origin.clone(),
            false => format!("{path} for {}", op.origin),
        },
        more_bytes: (needed_bytes + later)
            .saturating_sub(free_bytes)
            .max(1 << 20),
    }
}

struct Writer {
    root: Ext4,
    boot: FatFs,
    written: Vec<Written>,
}

impl Writer {
    fn meta(&self, o: Owned) -> Meta {
        self.root.meta(o.mode, o.uid, o.gid)
    }

    fn execute(&mut self, op: &Op) -> Result<()> {
        let origin = op.origin.as_str();
        match &op.write {
            Write::RootFile { path, data, owned } => {
                self.write_root_file(path, data, self.meta(*owned), origin)
            }
            Write::RootDir {
                path,
                owned,
                reset,
                root_parents,
            } => {
                if *root_parents {
                    self.ensure_parent(path)?;
                }
                self.write_root_dir(path, self.meta(*owned), *reset, origin)
            }
            Write::RootSymlink {
                path,
                target,
                owned,
            } => {
                let meta = self.meta(*owned);
                self.ensure_parent(path)?;
                self.root.symlink(path, target, &meta)?;
                self.record_root(
                    path,
                    "symlink",
                    target.len() as u64,
                    None,
                    Some(target.clone()),
                    meta,
                    origin,
                );
                Ok(())
            }
            Write::BootFile { path, data } => self.write_boot_file(path, data, origin),
        }
    }

    /// Creates the directory `path` (missing parents get `meta` too) or, when `reset` is set, gives an
    /// existing one `meta`; an existing directory without `reset` is left alone and not recorded.
    fn write_root_dir(&mut self, path: &str, meta: Meta, reset: bool, origin: &str) -> Result<()> {
        match self.root.kind(path)? {
            Some(Kind::Dir) => {
                if !reset {
                    return Ok(());
                }
                self.root.set_meta(path, &meta)?;
            }
            Some(_) => crate::bail!("{origin}: {path} exists in the image and is not a directory"),
            None => self.root.mkdir_p_as(path, &meta)?,
        }
        self.record_root(path, "dir", 0, None, None, meta, origin);
        Ok(())
    }

    fn ensure_parent(&mut self, path: &str) -> Result<()> {
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if parent.is_empty() {
            return Ok(());
        }
        match self.root.kind(parent)? {
            Some(Kind::Dir | Kind::Symlink) => Ok(()),
            Some(_) => crate::bail!("root file system: {parent} exists and is not a directory"),
            None => {
                let meta = self.meta(Owned::root(0o755));
                self.root.mkdir_p_as(parent, &meta).map_err(Error::from)
            }
        }
    }

    fn write_root_file(&mut self, path: &str, data: &[u8], meta: Meta, origin: &str) -> Result<()> {
        self.ensure_parent(path)?;
        if self.root.kind(path)? == Some(Kind::Dir) {
            crate::bail!("{origin}: {path} is a directory in the image, not a file");
        }
        self.root
            .write_file_as(path, data, &meta)
            .map_err(|e| Error::from(e).context(format_args!("{origin}: writing {path}")))?;
        let sha = hex::encode(Sha256::digest(data));
        self.record_root(
            path,
            "file",
            data.len() as u64,
            Some(sha),
            None,
            meta,
            origin,
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record_root(
        &mut self,
        path: &str,
        kind: &'static str,
        size: u64,
        sha256: Option<String>,
        target: Option<String>,
        meta: Meta,
        origin: &str,
    ) {
        self.written.push(Written {
            partition: Role::Root,
            path: path.to_string(),
            kind,
            size,
            sha256,
            target,
            mode: Some(format!("{:04o}", meta.mode)),
            owner: Some(format!("{}:{}", meta.uid, meta.gid)),
            origin: origin.to_string(),
        });
    }

    fn write_boot_file(&mut self, path: &str, data: &[u8], origin: &str) -> Result<()> {
        FileSystem::write_file(&mut self.boot, path, data).map_err(|e| e.context(origin))?;
        self.written.push(Written {
            partition: Role::Boot,
            path: path.to_string(),
            kind: "file",
            size: data.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(data))),
            target: None,
            mode: None,
            owner: None,
            origin: origin.to_string(),
        });
        Ok(())
    }
}
