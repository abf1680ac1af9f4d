//! Plan writes: the [`Plan`] completed against the base image, before anything is written.
//!
//! Some of what a config asks for depends on the image: the login user's lines go into the
//! image's own `/etc/passwd`, a host name into its `/etc/hosts`, `cmdline_append` edits its
//! `cmdline.txt`, enabling a unit reads the unit's `[Install]` section, owners are names in its
//! account files, and `--preseed` resolves packages against its dpkg status. This module reads
//! the base through a read-only [`ImageView`] and turns all of it into a flat list of concrete
//! [`Write`]s (contents computed, owners numeric), so every error caused by the user's input is
//! raised here and [`crate::apply`] only executes.
//!
//! Order of the writes: access files (users, SSH, host name) first, so that owners named in
//! overlays can be the new user; then the plan's entries in order (pre-seeded .debs last); then
//! the boot-file edits; then the unit links, which read unit files the entries may have written.
//! Each step sees the image as the earlier writes leave it ([`Staged`]).

use crate::access::{self, ImageFiles};
use crate::board::{AccessStyle, Board, Role};
use crate::bootconfig;
use crate::config::{IdRef, OwnerSpec};
use crate::error::{Context, Error, Result};
use crate::fs::fat::FatFs;
use crate::plan::{Entry, EntryKind, Plan};
use crate::spec::PreseedDebs;
use crate::units;
use imgbuild_ext2fs::{FileKind, Fs};
use std::collections::BTreeMap;

/// Mode and owner of something written on the root file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

impl Owned {
    /// `root:root` with `mode`.
    pub fn root(mode: u32) -> Owned {
        Owned {
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// One concrete write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A regular file on the root file system (missing parents are made `root:root 0755`).
    RootFile {
        /// Absolute path.
        path: String,
        /// Content.
        data: Vec<u8>,
        /// Mode and owner.
        owned: Owned,
    },
    /// A directory on the root file system; an existing one gets `owned` only with `reset`.
    RootDir {
        /// Absolute path.
        path: String,
        /// Mode and owner.
        owned: Owned,
        /// Give an existing directory `owned` too.
        reset: bool,
        /// Make missing parents `root:root 0755` (else they get `owned`, as `mkdir -p -m`).
        root_parents: bool,
    },
    /// A symbolic link on the root file system.
    RootSymlink {
        /// Absolute path of the link.
        path: String,
        /// Link target.
        target: String,
        /// Mode (0777) and owner.
        owned: Owned,
    },
    /// A file on the FAT boot partition.
    BootFile {
        /// Path relative to the partition's root (`/cmdline.txt`).
        path: String,
        /// Content.
        data: Vec<u8>,
    },
}

/// A write and what asked for it (shown in errors and recorded in the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The write.
    pub write: Write,
    /// Where it came from (`[user]/hostname`, `overlay rootfs-overlay`, `systemd.enable x`, …).
    pub origin: String,
}

/// Read-only access to the image being planned for.
pub trait ImageView {
    /// Kind, mode and owner of a root-fs path (the last component not followed); `None` when
    /// it does not exist.
    fn root_stat(&self, path: &str) -> Result<Option<imgbuild_ext2fs::Stat>>;
    /// Content of a root-fs regular file (symlinks followed); `None` when it is not one.
    fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Target of a root-fs symlink.
    fn root_link(&self, path: &str) -> Result<String>;
    /// Names in a root-fs directory; empty when it does not exist.
    fn root_dir(&self, path: &str) -> Result<Vec<String>>;
    /// Content of a boot-partition file; `None` when it does not exist.
    fn boot_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
}

/// An [`ImageView`] of the partitions of an image file, opened read-only.
pub struct Probe {
    root: Fs,
    boot: FatFs,
}

impl Probe {
    /// Opens the root (ext4) and boot (FAT) file systems of `image` for reading.
    pub fn open(
        image: &crate::workimage::WorkImage,
        root_offset: u64,
        boot_offset: u64,
        boot_size: u64,
    ) -> Result<Probe> {
        let root = image.open_root(root_offset, false)?;
        let boot = image.open_boot(boot_offset, boot_size, 0)?;
        Ok(Probe { root, boot })
    }
}

impl ImageView for Probe {
    fn root_stat(&self, path: &str) -> Result<Option<imgbuild_ext2fs::Stat>> {
        self.root.stat(path).map_err(Error::from)
    }
    fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.root.stat(path)? {
            Some(s) if s.kind == FileKind::Regular || s.kind == FileKind::Symlink => {
                match self.root.read_file(path) {
                    Ok(data) => Ok(Some(data)),
                    Err(e) if s.kind == FileKind::Symlink => {
                        tracing::debug!(path, error = %e, "symlink is not a readable file");
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            _ => Ok(None),
        }
    }
    fn root_link(&self, path: &str) -> Result<String> {
        self.root.read_link(path).map_err(Error::from)
    }
    fn root_dir(&self, path: &str) -> Result<Vec<String>> {
        match self.root.stat(path)? {
            Some(_) => self.root.read_dir(path).map_err(Error::from),
            None => Ok(Vec::new()),
        }
    }
    fn boot_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.boot.read_file(path)
    }
}

/// Turns `plan` into the writes that carry it out on `image` (see the module documentation);
/// `debs` are resolved against the image's dpkg status and added after the plan's entries.
pub fn plan_writes(
    plan: &Plan,
    board: &Board,
    image: &dyn ImageView,
    debs: Option<&PreseedDebs>,
) -> Result<Vec<Op>> {
    let mut s = Staged {
        image,
        board,
        user: plan.user.as_ref().map(|u| u.name.as_str()),
        root: BTreeMap::new(),
        boot: BTreeMap::new(),
        ops: Vec::new(),
    };
    let access_files = access::files(
        board.access.style,
        plan.user.as_ref(),
        plan.hostname.as_deref(),
        &s,
    )?;
    for f in access_files {
        s.access(f)?;
    }
    let debs = match debs {
        Some(d) => s.preseed_debs(d)?,
        None => Vec::new(),
    };
    for e in plan.entries.iter().chain(&debs) {
        s.entry(e)?;
    }
    s.edit_boot(plan)?;
    for unit in &plan.enable_units {
        s.enable_unit(unit, 0)?;
    }
    Ok(s.ops)
}

/// What the planned writes leave at a root-fs path.
#[derive(Debug, Clone)]
enum Pending {
    File(Vec<u8>, Owned),
    Dir,
    Symlink(String),
}

/// The image as the writes planned so far leave it: planned paths first, then the image.
struct Staged<'a> {
    image: &'a dyn ImageView,
    board: &'a Board,
    /// The `[user]` name (Raspberry Pi OS renames uid 1000 to it on first boot).
    user: Option<&'a str>,
    /// Planned root-fs paths, keyed by their path with parent symlinks resolved.
    root: BTreeMap<String, Pending>,
    /// Planned boot-partition files.
    boot: BTreeMap<String, Vec<u8>>,
    ops: Vec<Op>,
}

impl ImageFiles for Staged<'_> {
    fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.read_root(path)
    }
    fn boot_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.boot.get(path) {
            Some(data) => Ok(Some(data.clone())),
            None => self.image.boot_file(path),
        }
    }
}

/// Kind of a root-fs path as planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File(Owned),
    Dir,
    Symlink,
    Other,
}

impl Staged<'_> {
    /// `path` with symlinks in its parent directories resolved (planned ones and the image's),
    /// so that a file planned at `/usr/lib/x` is found at `/lib/x` when `/lib` links there.
    fn canonical(&self, path: &str) -> Result<String> {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .rev()
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            if todo.is_empty() {
                done.push(name);
                break;
            }
            match name.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => {}
            }
            done.push(name);
            let here = format!("/{}", done.join("/"));
            let target = match self.root.get(&here) {
                Some(Pending::Symlink(t)) => Some(t.clone()),
                Some(_) => None,
                None => match self.image.root_stat(&here)? {
                    Some(st) if st.kind == FileKind::Symlink => Some(self.image.root_link(&here)?),
                    _ => None,
                },
            };
            if let Some(t) = target {
                hops += 1;
                if hops > 40 {
                    crate::bail!("root file system: {path}: too many levels of symbolic links");
                }
                done.pop();
                if t.starts_with('/') {
                    done.clear();
                }
                todo.extend(
                    t.split('/')
                        .filter(|c| !c.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
        }
        Ok(format!("/{}", done.join("/")))
    }

    fn kind(&self, path: &str) -> Result<Option<Kind>> {
        let key = self.canonical(path)?;
        if let Some(p) = self.root.get(&key) {
            return Ok(Some(match p {
                Pending::File(_, o) => Kind::File(*o),
                Pending::Dir => Kind::Dir,
                Pending::Symlink(_) => Kind::Symlink,
            }));
        }
        Ok(self.image.root_stat(path)?.map(|st| match st.kind {
            FileKind::Regular => Kind::File(Owned {
                mode: st.mode & 0o7777,
                uid: st.uid,
                gid: st.gid,
            }),
            FileKind::Directory => Kind::Dir,
            FileKind::Symlink => Kind::Symlink,
            _ => Kind::Other,
        }))
    }

    fn read_root(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let key = self.canonical(path)?;
        match self.root.get(&key) {
            Some(Pending::File(data, _)) => Ok(Some(data.clone())),
            Some(Pending::Symlink(t)) => {
                let t = match t.starts_with('/') {
                    true => t.clone(),
                    false => format!("{}/{t}", parent(&key)),
                };
                match self.depth_guard(&t, path)? {
                    true => self.read_root(&t),
                    false => Ok(None),
                }
            }
            Some(Pending::Dir) => Ok(None),
            None => self.image.root_file(path),
        }
    }

    /// False when `target` would point back at `from` (a planned link loop reads as missing).
    fn depth_guard(&self, target: &str, from: &str) -> Result<bool> {
        Ok(self.canonical(target)? != self.canonical(from)?)
    }

    /// Records a planned root-fs path (and its parents as directories).
    fn stage(&mut self, path: &str, p: Pending) -> Result<()> {
        let key = self.canonical(path)?;
        let mut dir = parent(&key).to_string();
        while !dir.is_empty() {
            self.root.entry(dir.clone()).or_insert(Pending::Dir);
            dir = parent(&dir).to_string();
        }
        self.root.insert(key, p);
        Ok(())
    }

    fn push(&mut self, write: Write, origin: &str) {
        self.ops.push(Op {
            write,
            origin: origin.to_string(),
        });
    }

    /// The boot-partition path of an image path under the boot mount point, if it is one.
    fn boot_path<'p>(&self, path: &'p str) -> Option<&'p str> {
        let mount = self.board.partition(Role::Boot).mount.trim_end_matches('/');
        path.strip_prefix(mount)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    fn access(&mut self, f: access::AccessFile) -> Result<()> {
        let owned = Owned {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        };
        if f.dir {
            // A new user's home: parents as root 0755, the directory itself owned by the user.
            return self.dir(&f.path, owned, true, true, "[user]");
        }
        match f.on_boot {
            true => self.boot_file(&f.path, f.data, "[user]/hostname"),
            false => self.root_file(&f.path, f.data, owned, "[user]/hostname"),
        }
    }

    fn entry(&mut self, e: &Entry) -> Result<()> {
        if let Some(bp) = self.boot_path(&e.path) {
            return match &e.kind {
                EntryKind::File(data) => self.boot_file(bp, data.clone(), &e.origin),
                // FAT directories appear with the files in them; the mount point itself exists.
                EntryKind::Dir { .. } => Ok(()),
                EntryKind::Symlink(_) => crate::bail!(
                    "{}: {} is on the FAT boot partition, which cannot hold symlinks",
                    e.origin,
                    e.path
                ),
            };
        }
        let (uid, gid) = self
            .resolve_owner(&e.owner)
            .map_err(|err| err.context(format!("{}: {}", e.origin, e.path)))?;
        let owned = Owned {
            mode: e.mode,
            uid,
            gid,
        };
        match &e.kind {
            EntryKind::File(data) => self.root_file(&e.path, data.clone(), owned, &e.origin),
            EntryKind::Dir { explicit } => self.dir(&e.path, owned, *explicit, false, &e.origin),
            EntryKind::Symlink(target) => self.symlink(&e.path, target, owned, &e.origin),
        }
    }

    fn check_parent(&self, path: &str, origin: &str) -> Result<()> {
        let parent = parent(path);
        if parent.is_empty() {
            return Ok(());
        }
        match self.kind(parent)? {
            None | Some(Kind::Dir) | Some(Kind::Symlink) => Ok(()),
            Some(_) => crate::bail!(
                "{origin}: {path}: {parent} exists in the image and is not a directory"
            ),
        }
    }

    fn dir(
        &mut self,
        path: &str,
        owned: Owned,
        reset: bool,
        root_parents: bool,
        origin: &str,
    ) -> Result<()> {
        match self.kind(path)? {
            Some(Kind::Dir) if !reset => return Ok(()),
            Some(Kind::Dir) | None => {}
            Some(_) => crate::bail!("{origin}: {path} exists in the image and is not a directory"),
        }
        if root_parents {
            self.check_parent(path, origin)?;
        }
        self.stage(path, Pending::Dir)?;
        self.push(
            Write::RootDir {
                path: path.to_string(),
                owned,
                reset,
                root_parents,
            },
            origin,
        );
        Ok(())
    }

    fn root_file(&mut self, path: &str, data: Vec<u8>, owned: Owned, origin: &str) -> Result<()> {
        self.check_parent(path, origin)?;
        if self.kind(path)? == Some(Kind::Dir) {
            crate::bail!("{origin}: {path} is a directory in the image, not a file");
        }
        self.stage(path, Pending::File(data.clone(), owned))?;
        self.push(
            Write::RootFile {
                path: path.to_string(),
                data,
                owned,
            },
            origin,
        );
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str, owned: Owned, origin: &str) -> Result<()> {
        self.check_parent(path, origin)?;
        if self.kind(path)? == Some(Kind::Dir) {
            crate::bail!("{origin}: {path} is a directory in the image, not a symlink");
        }
        self.stage(path, Pending::Symlink(target.to_string()))?;
        self.push(
            Write::RootSymlink {
                path: path.to_string(),
                target: target.to_string(),
                owned,
            },
            origin,
        );
        Ok(())
    }

    fn boot_file(&mut self, path: &str, data: Vec<u8>, origin: &str) -> Result<()> {
        self.boot.insert(path.to_string(), data.clone());
        self.push(
            Write::BootFile {
                path: path.to_string(),
                data,
            },
            origin,
        );
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
            let Some(old) = ImageFiles::boot_file(self, &path)? else {
                crate::bail!(
                    "boot.cmdline_append: {path} is missing on the boot partition of this image"
                );
            };
            let new =
                bootconfig::cmdline_append(&String::from_utf8_lossy(&old), &plan.cmdline_append);
            self.boot_file(&path, new.into_bytes(), "[boot] cmdline_append")?;
            if let Some(persist) = files.cmdline_persist.as_deref() {
                // One line, no comments (raspi-firmware pastes it after its own tokens).
                let old = self.read_root(persist)?.unwrap_or_default();
                let old = String::from_utf8_lossy(&old);
                let old = old.lines().next().unwrap_or("").trim();
                let new = bootconfig::cmdline_append(old, &plan.cmdline_append);
                let new = format!("{}\n", new.trim());
                self.persist(persist, new, "[boot] cmdline_append (kept across upgrades)")?;
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
            let old = ImageFiles::boot_file(self, &path)?.unwrap_or_default();
            let new = bootconfig::config_txt_set(&String::from_utf8_lossy(&old), &plan.config_set);
            self.boot_file(&path, new.into_bytes(), "[boot.config]")?;
            if let Some(persist) = files.config_persist.as_deref() {
                let old = self.read_root(persist)?.unwrap_or_default();
                let new =
                    bootconfig::config_txt_set(&String::from_utf8_lossy(&old), &plan.config_set);
                self.persist(persist, new, "[boot.config] (kept across upgrades)")?;
            }
        }
        Ok(())
    }

    /// Plans a root-fs file the OS regenerates a boot file from (keeping an existing file's
    /// mode and owner; new ones are root:root 0644).
    fn persist(&mut self, path: &str, text: String, origin: &str) -> Result<()> {
        let owned = match self.kind(path)? {
            Some(Kind::File(o)) => o,
            _ => Owned::root(0o644),
        };
        self.root_file(path, text.into_bytes(), owned, origin)
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
            self.entry(&e)?;
        }
        for also in &inst.also {
            self.enable_unit(also, depth + 1)?;
        }
        Ok(())
    }

    /// Resolves an owner against the image's account files as planned (never the host's).
    fn resolve_owner(&self, o: &OwnerSpec) -> Result<(u32, u32)> {
        if let (IdRef::Id(u), IdRef::Id(g)) = (&o.user, &o.group) {
            return Ok((*u, *g));
        }
        let read = |p| -> Result<String> {
            Ok(String::from_utf8_lossy(&self.read_root(p)?.unwrap_or_default()).into_owned())
        };
        let (passwd, group) = (read("/etc/passwd")?, read("/etc/group")?);
        Ok((
            id_of(
                &o.user,
                "user",
                "/etc/passwd",
                |n| access::uid_of(&passwd, n),
                self,
            )?,
            id_of(
                &o.group,
                "group",
                "/etc/group",
                |n| access::gid_of(&group, n),
                self,
            )?,
        ))
    }

    /// Raspberry Pi OS creates the configured user on first boot by renaming uid 1000.
    fn first_user(&self, name: &str) -> Option<u32> {
        (self.board.access.style == AccessStyle::Raspios && self.user == Some(name)).then_some(1000)
    }

    /// The .debs `--preseed` puts under the preseed directory: first boot's packages resolved
    /// (with dependencies) against the image's dpkg status and Debian sources.
    fn preseed_debs(&self, p: &PreseedDebs) -> Result<Vec<Entry>> {
        let read = |path: &str| -> Result<Option<String>> {
            Ok(self
                .image
                .root_file(path)
                .map_err(|e| e.context("--preseed"))?
                .map(|b| String::from_utf8_lossy(&b).into_owned()))
        };
        let status = self
            .image
            .root_file("/var/lib/dpkg/status")
            .map_err(|e| e.context("--preseed"))?;
        let Some(status) = status else {
            crate::bail!(
                "--preseed: the image has no /var/lib/dpkg/status, so its packages cannot be resolved"
            );
        };
        let list = read("/etc/apt/sources.list")?;
        let mut parts = Vec::new();
        for n in self
            .image
            .root_dir("/etc/apt/sources.list.d")
            .unwrap_or_default()
        {
            if let Some(text) = read(&format!("/etc/apt/sources.list.d/{n}"))? {
                parts.push((n, text));
            }
        }
        // Only Debian's own archive: its key is on the host; vendor repositories (e.g. Raspberry
        // Pi's) are signed with keys that live only inside the image.
        let sources: String = crate::preseed::image_sources(list.as_deref(), &parts)
            .lines()
            .filter(|l| l.contains("debian.org"))
            .map(|l| format!("{l}\n"))
            .collect();
        if sources.is_empty() {
            crate::bail!("--preseed: the image's apt sources name no Debian archive (deb.debian.org) to resolve packages from");
        }
        let req = crate::preseed::DebRequest {
            packages: &p.packages,
            dpkg_status: &status,
            sources: &sources,
            arch: "arm64",
            cache_dir: &p.cache_dir,
            offline: p.offline,
        };
        let mut out = Vec::new();
        for d in crate::preseed::resolve_debs(&req)? {
            let data = std::fs::read(&d.path)
                .context(|| format!("--preseed: reading {}", d.path.display()))?;
            out.push(Entry {
                path: format!(
                    "{}/{}",
                    imgbuild_greengrass::contract::PRESEED_DEBS_DIR,
                    d.file_name
                ),
                kind: EntryKind::File(data),
                mode: 0o644,
                owner: OwnerSpec::root(),
                origin: "--preseed".to_string(),
            });
        }
        Ok(out)
    }
}

fn id_of(
    id: &IdRef,
    what: &str,
    file: &str,
    lookup: impl Fn(&str) -> Option<u32>,
    s: &Staged,
) -> Result<u32> {
    match id {
        IdRef::Id(n) => Ok(*n),
        IdRef::Name(n) => lookup(n).or_else(|| s.first_user(n)).ok_or_else(|| {
            Error::msg(format!(
                "owner: {what} {n:?} is not in the image's {file}; use a number or create it"
            ))
        }),
    }
}

/// The parent directory of an absolute path (`""` for `/x`).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgbuild_ext2fs::Stat;

    /// An image with `/lib -> usr/lib`, `/usr/lib/systemd/system/` and an `/etc/passwd`.
    struct Mem;

    fn stat(kind: FileKind) -> Stat {
        Stat {
            ino: 12,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            links: 1,
        }
    }

    impl ImageView for Mem {
        fn root_stat(&self, path: &str) -> Result<Option<Stat>> {
            Ok(match path {
                "/lib" => Some(stat(FileKind::Symlink)),
                "/usr" | "/usr/lib" | "/usr/lib/systemd" | "/usr/lib/systemd/system" | "/etc" => {
                    Some(stat(FileKind::Directory))
                }
                "/etc/passwd" => Some(stat(FileKind::Regular)),
                _ => None,
            })
        }
        fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
            Ok((path == "/etc/passwd").then(|| b"root:x:0:0::/root:/bin/sh\n".to_vec()))
        }
        fn root_link(&self, path: &str) -> Result<String> {
            assert_eq!(path, "/lib");
            Ok("usr/lib".into())
        }
        fn root_dir(&self, _: &str) -> Result<Vec<String>> {
            Ok(Vec::new())
        }
        fn boot_file(&self, _: &str) -> Result<Option<Vec<u8>>> {
            Ok(None)
        }
    }

    fn board() -> Board {
        crate::board::find("generic-arm64", None).expect("built-in board")
    }

    #[test]
    fn a_planned_file_is_seen_through_the_images_parent_symlinks() {
        let b = board();
        let s = &mut Staged {
            image: &Mem,
            board: &b,
            user: None,
            root: BTreeMap::new(),
            boot: BTreeMap::new(),
            ops: Vec::new(),
        };
        s.root_file(
            "/lib/systemd/system/a.service",
            b"[Install]\nWantedBy=multi-user.target\n".to_vec(),
            Owned::root(0o644),
            "test",
        )
        .expect("plan");
        assert_eq!(
            s.canonical("/lib/systemd/system/a.service")
                .expect("canonical"),
            "/usr/lib/systemd/system/a.service"
        );
        assert!(s
            .read_root("/usr/lib/systemd/system/a.service")
            .expect("read")
            .is_some());
        assert_eq!(s.kind("/usr/lib/systemd").expect("kind"), Some(Kind::Dir));
        // Enabling finds it (first under /usr/lib) and links to that path.
        s.enable_unit("a.service", 0).expect("enable");
        let link = s.ops.last().expect("a link op");
        assert_eq!(
            link.write,
            Write::RootSymlink {
                path: "/etc/systemd/system/multi-user.target.wants/a.service".into(),
                target: "/usr/lib/systemd/system/a.service".into(),
                owned: Owned::root(0o777),
            }
        );
    }

    #[test]
    fn plan_errors_name_the_origin_and_the_path() {
        let b = board();
        let mut plan = Plan::default();
        plan.file(
            "/etc/passwd/x",
            b"x".to_vec(),
            0o644,
            OwnerSpec::root(),
            "[[file]]",
        );
        let err = plan_writes(&plan, &b, &Mem, None).expect_err("passwd is a file");
        assert!(
            err.to_string().contains(
                "[[file]]: /etc/passwd/x: /etc/passwd exists in the image and is not a directory"
            ),
            "{err}"
        );
        let mut plan = Plan::default();
        plan.enable_units.push("missing.service".into());
        let err = plan_writes(&plan, &b, &Mem, None).expect_err("no such unit");
        assert!(
            err.to_string().contains("unit missing.service not found"),
            "{err}"
        );
    }
}
