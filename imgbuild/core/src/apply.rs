//! Apply: write a [`Plan`] into the working copy of the image — the root file system through
//! libext2fs, the boot partition through `fatfs` — and record every file written.
//!
//! Order: access files (users, SSH, hostname) first, so that owners named in overlays can be
//! the new user; then the plan's entries in order; then boot-file edits; then unit enabling,
//! which reads unit files that the entries may have just written.

use crate::access::{self, ImageFiles};
use crate::board::{AccessStyle, Board, Role};
use crate::bootconfig;
use crate::config::{IdRef, OwnerSpec, UserConfig};
use crate::error::{Error, Result};
use crate::fs::fat::FatFs;
use crate::plan::{Entry, EntryKind, Plan};
use crate::units;
use imgbuild_ext2fs::{FileKind, Fs, Meta};
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
    /// The board (access style, boot mount point, boot file names).
    pub board: &'a Board,
    /// Boot partition location.
    pub boot: Span,
    /// Root partition location.
    pub root: Span,
    /// Timestamp for everything written (SOURCE_DATE_EPOCH or the build time).
    pub epoch: i64,
}

/// Writes `plan` (plus the `[user]`/`hostname` settings) into the image.
pub fn apply(
    t: &Target,
    plan: &Plan,
    user: Option<&UserConfig>,
    hostname: Option<&str>,
) -> Result<Applied> {
    let mut root = Fs::open_tracked(t.image, t.root.offset).map_err(ext4_err)?;
    root.set_time(t.epoch);
    let boot = FatFs::open(t.image, t.boot.offset, t.boot.size, t.epoch)?;
    let mut w = Writer {
        root,
        boot,
        board: t.board,
        epoch: t.epoch,
        user: user.map(|u| u.name.clone()),
        accounts: None,
        written: Vec::new(),
    };
    let access_files = access::files(t.board.access.style, user, hostname, &w)?;
    for f in access_files {
        w.write_access(f)?;
    }
    for e in &plan.entries {
        w.write_entry(e)?;
    }
    w.edit_boot(plan)?;
    for unit in &plan.enable_units {
        w.enable_unit(unit, 0)?;
    }
    let Writer {
        root,
        boot,
        written,
        ..
    } = w;
    let mut dirty = root.close_tracked().map_err(ext4_err)?;
    dirty.merge(&boot.close()?);
    Ok(Applied { written, dirty })
}

fn ext4_err(e: imgbuild_ext2fs::Error) -> Error {
    Error::msg(format!("root file system: {e}"))
}

struct Writer<'a> {
    root: Fs,
    boot: FatFs,
    board: &'a Board,
    epoch: i64,
    user: Option<String>,
    /// Cached `/etc/passwd` and `/etc/group` of the image, dropped when either is written.
    accounts: Option<(String, String)>,
    written: Vec<Written>,
}

impl ImageFiles for Writer<'_> {
    fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read_root(path)
    }
    fn boot_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.boot.read_file(path)
    }
}

impl Writer<'_> {
    fn read_root(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.root.stat(path).map_err(ext4_err)? {
            Some(s) if s.kind == FileKind::Regular => {
                Ok(Some(self.root.read_file(path).map_err(ext4_err)?))
            }
            _ => Ok(None),
        }
    }

    /// The boot-partition path of an image path under the boot mount point, if it is one.
    fn boot_path<'p>(&self, path: &'p str) -> Option<&'p str> {
        let mount = self.board.partition(Role::Boot).mount.trim_end_matches('/');
        path.strip_prefix(mount)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn meta(&self, mode: u32, uid: u32, gid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid,
            mtime: self.epoch,
        }
    }

    fn write_access(&mut self, f: access::AccessFile) -> Result<()> {
        if f.dir {
            // A new user's home: parents as root 0755, the directory itself owned by the user.
            self.ensure_parent(&f.path)?;
            let meta = self.meta(f.mode, f.uid, f.gid);
            return self.write_root_dir(&f.path, meta, true, "[user]");
        }
        if f.on_boot {
            self.write_boot_file(&f.path, &f.data, "[user]/hostname")
        } else {
            let meta = self.meta(f.mode, f.uid, f.gid);
            self.write_root_file(&f.path, &f.data, meta, "[user]/hostname")
        }
    }

    fn write_entry(&mut self, e: &Entry) -> Result<()> {
        if let Some(bp) = self.boot_path(&e.path) {
            return match &e.kind {
                EntryKind::File(data) => self.write_boot_file(bp, data, &e.origin),
                // FAT directories appear with the files in them; the mount point itself exists.
                EntryKind::Dir { .. } => Ok(()),
                EntryKind::Symlink(_) => {
                    crate::bail!(
                        "{}: {} is on the FAT boot partition, which cannot hold symlinks",
                        e.origin,
                        e.path
                    )
                }
            };
        }
        let (uid, gid) = self
            .resolve(&e.owner)
            .map_err(|err| err.context(format!("{}: {}", e.origin, e.path)))?;
        let meta = self.meta(e.mode, uid, gid);
        match &e.kind {
            EntryKind::File(data) => self.write_root_file(&e.path, data, meta, &e.origin),
            EntryKind::Dir { explicit } => self.write_root_dir(&e.path, meta, *explicit, &e.origin),
            EntryKind::Symlink(target) => {
                self.ensure_parent(&e.path)?;
                self.root
                    .symlink(&e.path, target, &meta)
                    .map_err(ext4_err)?;
                self.record_root(
                    &e.path,
                    "symlink",
                    target.len() as u64,
                    None,
                    Some(target.clone()),
                    meta,
                    &e.origin,
                );
                Ok(())
            }
        }
    }

    /// Creates the directory `path` (missing parents get `meta` too) or, when `reset` is set, gives an
    /// existing one `meta`; an existing directory without `reset` is left alone and not recorded.
    fn write_root_dir(&mut self, path: &str, meta: Meta, reset: bool, origin: &str) -> Result<()> {
        match self.root.stat(path).map_err(ext4_err)? {
            Some(s) if s.kind == FileKind::Directory => {
                if !reset {
                    return Ok(());
                }
                self.root.set_meta(path, &meta).map_err(ext4_err)?;
            }
            Some(_) => crate::bail!("{origin}: {path} exists in the image and is not a directory"),
            None => self.root.mkdir_p(path, &meta).map_err(ext4_err)?,
        }
        self.record_root(path, "dir", 0, None, None, meta, origin);
        Ok(())
    }

    fn ensure_parent(&mut self, path: &str) -> Result<()> {
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        if parent.is_empty() {
            return Ok(());
        }
        match self.root.stat(parent).map_err(ext4_err)? {
            Some(s) if s.kind == FileKind::Directory => Ok(()),
            Some(s) if s.kind == FileKind::Symlink => Ok(()),
            Some(_) => crate::bail!("root file system: {parent} exists and is not a directory"),
            None => {
                let meta = self.meta(0o755, 0, 0);
                self.root.mkdir_p(parent, &meta).map_err(ext4_err)
            }
        }
    }

    fn write_root_file(&mut self, path: &str, data: &[u8], meta: Meta, origin: &str) -> Result<()> {
        self.ensure_parent(path)?;
        if let Some(s) = self.root.stat(path).map_err(ext4_err)? {
            if s.kind == FileKind::Directory {
                crate::bail!("{origin}: {path} is a directory in the image, not a file");
            }
        }
        if path == "/etc/passwd" || path == "/etc/group" {
            self.accounts = None;
        }
        self.root.write_file(path, data, &meta).map_err(|e| {
            Error::msg(format!(
                "{origin}: writing {path} to the root file system: {e}"
            ))
        })?;
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
        self.boot
            .write_file(path, data)
            .map_err(|e| e.context(origin))?;
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

    fn edit_boot(&mut self, plan: &Plan) -> Result<()> {
        let files = self.board.boot.clone();
        if !plan.cmdline_append.is_empty() {
            let Some(name) = files.cmdline.as_deref() else {
                crate::bail!(
                    "boot.cmdline_append: board {} has no kernel command line file",
                    self.board.name
                );
            };
            let path = format!("/{}", name.trim_start_matches('/'));
            let Some(old) = self.boot.read_file(&path)? else {
                crate::bail!(
                    "boot.cmdline_append: {path} is missing on the boot partition of this image"
                );
            };
            let new =
                bootconfig::cmdline_append(&String::from_utf8_lossy(&old), &plan.cmdline_append);
            self.write_boot_file(&path, new.as_bytes(), "[boot] cmdline_append")?;
            if let Some(persist) = files.cmdline_persist.as_deref() {
                // One line, no comments (raspi-firmware pastes it after its own tokens).
                let old = self.read_root(persist)?.unwrap_or_default();
                let old = String::from_utf8_lossy(&old);
                let old = old.lines().next().unwrap_or("").trim();
                let new = bootconfig::cmdline_append(old, &plan.cmdline_append);
                let new = format!("{}\n", new.trim());
                self.write_persist(
                    persist,
                    &new,
                    "[boot] cmdline_append (kept across upgrades)",
                )?;
            }
        }
        if !plan.config_set.is_empty() {
            let Some(name) = files.config.as_deref() else {
                crate::bail!(
                    "boot.config: board {} has no firmware config file",
                    self.board.name
                );
            };
            let path = format!("/{}", name.trim_start_matches('/'));
            let old = self.boot.read_file(&path)?.unwrap_or_default();
            let new = bootconfig::config_txt_set(&String::from_utf8_lossy(&old), &plan.config_set);
            self.write_boot_file(&path, new.as_bytes(), "[boot.config]")?;
            if let Some(persist) = files.config_persist.as_deref() {
                let old = self.read_root(persist)?.unwrap_or_default();
                let new =
                    bootconfig::config_txt_set(&String::from_utf8_lossy(&old), &plan.config_set);
                self.write_persist(persist, &new, "[boot.config] (kept across upgrades)")?;
            }
        }
        Ok(())
    }

    /// Writes a root-fs file the OS regenerates a boot file from (keeping an existing file's mode and
    /// owner; new ones are root:root 0644).
    fn write_persist(&mut self, path: &str, text: &str, origin: &str) -> Result<()> {
        let meta = match self.root.stat(path).map_err(ext4_err)? {
            Some(s) if s.kind == FileKind::Regular => self.meta(s.mode & 0o7777, s.uid, s.gid),
            _ => self.meta(0o644, 0, 0),
        };
        self.write_root_file(path, text.as_bytes(), meta, origin)
    }

    fn enable_unit(&mut self, unit: &str, depth: u32) -> Result<()> {
        if depth > 8 {
            crate::bail!("systemd.enable: {unit}: Also= chain too deep");
        }
        let mut found = None;
        for dir in units::UNIT_DIRS {
            let p = format!("{dir}/{unit}");
            if let Some(data) = self.read_root(&p)? {
                found = Some((p, data));
                break;
            }
        }
        let Some((path, data)) = found else {
            crate::bail!(
                "systemd.enable: unit {unit} not found in the image or the overlays (looked in {})",
                units::UNIT_DIRS.join(", ")
            );
        };
        let inst = units::parse_install(&String::from_utf8_lossy(&data));
        if inst.is_empty() {
            crate::bail!(
                "systemd.enable: {path} has no [Install] section, so it cannot be enabled"
            );
        }
        for l in units::links_for(unit, &path, &inst)? {
            let e = Entry {
                path: l.link,
                kind: EntryKind::Symlink(l.target),
                mode: 0o777,
                owner: OwnerSpec::root(),
                origin: format!("systemd.enable {unit}"),
            };
            self.write_entry(&e)?;
        }
        for also in &inst.also {
            self.enable_unit(also, depth + 1)?;
        }
        Ok(())
    }

    /// Resolves an owner against the image's account files (never the host's).
    fn resolve(&mut self, o: &OwnerSpec) -> Result<(u32, u32)> {
        if let (IdRef::Id(u), IdRef::Id(g)) = (&o.user, &o.group) {
            return Ok((*u, *g));
        }
        if self.accounts.is_none() {
            let read = |p| -> Result<String> {
                Ok(String::from_utf8_lossy(&self.read_root(p)?.unwrap_or_default()).into_owned())
            };
            self.accounts = Some((read("/etc/passwd")?, read("/etc/group")?));
        }
        let (passwd, group) = self
            .accounts
            .as_ref()
            .map(|(p, g)| (p.as_str(), g.as_str()))
            .unwrap_or(("", ""));
        // Raspberry Pi OS creates the configured user on first boot by renaming uid 1000.
        let first_user = |name: &str| {
            (self.board.access.style == AccessStyle::Raspios && self.user.as_deref() == Some(name))
                .then_some(1000)
        };
        let uid = match &o.user {
            IdRef::Id(n) => *n,
            IdRef::Name(n) => access::uid_of(passwd, n).or_else(|| first_user(n)).ok_or_else(|| {
                Error::msg(format!("owner: user {n:?} is not in the image's /etc/passwd; use a number or create it"))
            })?,
        };
        let gid = match &o.group {
            IdRef::Id(n) => *n,
            IdRef::Name(n) => access::gid_of(group, n).or_else(|| first_user(n)).ok_or_else(|| {
                Error::msg(format!("owner: group {n:?} is not in the image's /etc/group; use a number or create it"))
            })?,
        };
        Ok((uid, gid))
    }
}
