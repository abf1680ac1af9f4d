//! Crash safety of the output directory.
//!
//! Every build works in its own scratch directory `OUT/.imgbuild-scratch/BUILDID/` (mode 0700):
//! the working copy, the temporary outputs and the FAT check's copy live there, next to an
//! `owner` file naming the build's process (pid, start time, boot id). Nothing of a build is
//! ever under an output name until it is published.
//!
//! * **Normal end or error**: the scratch directory is removed ([`Scratch`] is dropped).
//! * **SIGINT/SIGTERM/SIGHUP**: the CLI's signal thread calls [`abort`], which removes the
//!   scratch directory of the running build (waiting for a publish in progress to finish) and
//!   the process exits `128 + signal`.
//! * **SIGKILL, power loss**: the next build into the same `OUT` sweeps scratch directories whose
//!   owner is gone (its pid no longer runs with the recorded start time, or the machine booted
//!   since), so pid reuse never makes a dead build's files look alive.
//!
//! **Publishing** takes an exclusive `flock` on `OUT/.imgbuild.lock`, writes a journal
//! (`publish.journal`: which scratch file becomes which output) to the scratch directory and syncs
//! it, then renames the outputs into place and removes the scratch directory. A build killed
//! during the renames leaves its journal; the next build (under the same lock, before anything
//! else) finishes those renames, so `OUT` again holds one complete set: an image with the
//! `.sha256`, `.bmap` and `manifest.json` made with it. Sweeping also happens under the lock.

use crate::error::{Context, Result};
use imgbuild_fetch::process_start;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name of the folder of scratch directories under the output directory.
pub const SCRATCH_DIR: &str = ".imgbuild-scratch";
/// Name of the lock file in the output directory.
pub const LOCK_FILE: &str = ".imgbuild.lock";
const OWNER: &str = "owner";
const JOURNAL: &str = "publish.journal";

/// The scratch directory of the build running in this process (for [`abort`]).
static ACTIVE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A build's private scratch directory; removed when dropped (unless already published).
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    out: PathBuf,
}

/// The exclusive lock on an output directory. Dropping it deletes the lock file and then
/// releases the lock, so a finished build leaves nothing behind; whoever was waiting on the
/// deleted file notices (its inode is no longer the one at the path) and locks again.
struct OutLock {
    file: File,
    path: PathBuf,
}

impl Drop for OutLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

fn lock_out(out: &Path) -> Result<OutLock> {
    use std::os::unix::fs::MetadataExt;
    let path = out.join(LOCK_FILE);
    loop {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        file.lock()
            .context(|| format!("locking {}", path.display()))?;
        let current = match (file.metadata(), fs::metadata(&path)) {
            (Ok(held), Ok(now)) => held.ino() == now.ino() && held.dev() == now.dev(),
            _ => false,
        };
        if current {
            return Ok(OutLock { file, path });
        }
    }
}

/// Removes the folder of scratch directories when it is empty (under the lock, so a build
/// creating its directory there never sees it vanish).
fn tidy(out: &Path) {
    if let Ok(_lock) = lock_out(out) {
        let _ = fs::remove_dir(out.join(SCRATCH_DIR));
    }
}

/// This process's identity: pid, start time (clock ticks after boot) and boot id.
fn me() -> String {
    let pid = std::process::id();
    format!("{pid} {} {}\n", process_start(pid).unwrap_or(0), boot_id())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether the build that wrote `owner` (see [`me`]) is still running.
fn owner_alive(owner: &str) -> bool {
    let mut f = owner.split_whitespace();
    let (Some(pid), Some(start), Some(boot)) = (f.next(), f.next(), f.next()) else {
        return false;
    };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    boot == boot_id() && process_start(pid) == Some(start)
}

/// Creates `dir` with mode 0700 (and missing parents).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Writes `data` to `path` and syncs it.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    // Only weakens durability when it fails: not an error.
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

/// Under the lock of `out`: finishes the interrupted publish of every dead build and removes
/// its scratch directory; returns how many were swept.
fn sweep_locked(out: &Path) -> Result<usize> {
    let root = out.join(SCRATCH_DIR);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(0);
    };
    let mut swept = 0;
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let owner = fs::read_to_string(dir.join(OWNER)).unwrap_or_default();
        if owner_alive(&owner) {
            continue;
        }
        if let Ok(journal) = fs::read_to_string(dir.join(JOURNAL)) {
            match finish_publish(out, &dir, &journal) {
                Ok(()) => tracing::warn!(
                    "finished the interrupted publish of a killed build ({})",
                    dir.display()
                ),
                // Its outputs stay as they are; the new build replaces them.
                Err(e) => tracing::warn!("not finishing an interrupted publish: {e}"),
            }
        }
        fs::remove_dir_all(&dir).context(|| format!("removing {}", dir.display()))?;
        swept += 1;
    }
    Ok(swept)
}

/// Renames what `journal` lists from `dir` into `out` (entries already moved are skipped).
fn finish_publish(out: &Path, dir: &Path, journal: &str) -> Result<()> {
    for line in journal.lines() {
        let Some((tmp, fin)) = line.split_once('\t') else {
            continue;
        };
        // Names only: a journal never moves anything outside these two directories.
        if [tmp, fin]
            .iter()
            .any(|n| n.is_empty() || n.contains('/') || *n == ".." || *n == ".")
        {
            crate::bail!("publish journal in {} is damaged", dir.display());
        }
        let from = dir.join(tmp);
        if from.exists() {
            let to = out.join(fin);
            fs::rename(&from, &to)
                .context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        }
    }
    sync_dir(out);
    Ok(())
}

impl Scratch {
    /// Makes a fresh scratch directory under `out` (which must exist), after sweeping the
    /// scratch directories of dead builds (finishing their interrupted publishes), all under the
    /// lock of `out`.
    pub fn create(out: &Path) -> Result<Scratch> {
        let _lock = lock_out(out)?;
        let swept = sweep_locked(out)?;
        if swept > 0 {
            tracing::info!(swept, "removed scratch directories of dead builds");
        }
        let root = out.join(SCRATCH_DIR);
        private_dir(&root).context(|| format!("creating {}", root.display()))?;
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = root.join(format!("{pid}-{nanos}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .context(|| format!("creating {}", dir.display()))?;
        let scratch = Scratch {
            dir,
            out: out.to_path_buf(),
        };
        write_synced(&scratch.dir.join(OWNER), me().as_bytes())
            .context(|| format!("writing {}", scratch.dir.join(OWNER).display()))?;
        if let Ok(mut active) = ACTIVE.lock() {
            *active = Some(scratch.dir.clone());
        }
        Ok(scratch)
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path for `name` inside the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Moves the finished files `(scratch name, output name)` into the output directory as one
    /// set: under the output lock, journal first (synced), then the renames in order, then the
    /// scratch directory goes. Every file must be complete and synced by the caller.
    pub fn publish(self, files: &[(&str, &str)]) -> Result<()> {
        // Held until the set is complete, so a signal's cleanup waits for it (first, so the
        // cleanup never waits for a lock this thread holds).
        let active = ACTIVE.lock();
        let lock = lock_out(&self.out)?;
        crate::crashpoint::hit_publishing("publish-locked");
        // A dead build's journal first: its set must not be completed after ours.
        sweep_locked(&self.out)?;
        for (tmp, _) in files {
            File::open(self.path(tmp))
                .and_then(|f| f.sync_all())
                .context(|| format!("syncing {}", self.path(tmp).display()))?;
        }
        let journal: String = files.iter().map(|(t, f)| format!("{t}\t{f}\n")).collect();
        let tmp_journal = self.path("journal.tmp");
        write_synced(&tmp_journal, journal.as_bytes())
            .and_then(|()| fs::rename(&tmp_journal, self.path(JOURNAL)))
            .context(|| format!("writing {}", self.path(JOURNAL).display()))?;
        sync_dir(&self.dir);
        crate::crashpoint::hit_publishing("journal-written");
        for (i, (tmp, fin)) in files.iter().enumerate() {
            let (from, to) = (self.path(tmp), self.out.join(fin));
            fs::rename(&from, &to)
                .context(|| format!("renaming {} to {}", from.display(), to.display()))?;
            let point = ["renamed-1", "renamed-2", "renamed-3", "renamed-4"][i.min(3)];
            crate::crashpoint::hit_publishing(point);
        }
        sync_dir(&self.out);
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_dir(self.out.join(SCRATCH_DIR));
        // The lock (and its file) goes before a waiting signal cleanup may exit the process.
        drop(lock);
        if let Ok(mut a) = active {
            a.take();
        }
        crate::crashpoint::hit("published");
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let present = self.dir.exists();
        let _ = fs::remove_dir_all(&self.dir);
        if let Ok(mut a) = ACTIVE.lock() {
            if a.as_deref() == Some(self.dir.as_path()) {
                a.take();
            }
        }
        if present {
            tidy(&self.out);
        }
    }
}

/// Set by [`abort`]: the process is about to exit because of a signal.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`abort`] was called: the process is exiting because of a signal, so the build's
/// own result (success, or an error caused by the cleanup) must not be reported.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Removes the scratch directory of the build running in this process, if any; waits for a
/// publish in progress to finish first. For the CLI's signal thread, just before it exits.
pub fn abort() {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut active = match ACTIVE.lock() {
        Ok(a) => a,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(dir) = active.take() {
        let _ = fs::remove_dir_all(&dir);
        // The empty folder of scratch directories too, if nobody (not even this process's
        // own publish) holds the output lock: a build creating its directory there holds it.
        let Some(root) = dir.parent() else { return };
        let Some(out) = root.parent() else { return };
        if let Some(_lock) = try_lock_out(out) {
            let _ = fs::remove_dir(root);
        }
    }
}

/// The lock of `out` if nobody holds it (no waiting).
fn try_lock_out(out: &Path) -> Option<OutLock> {
    use std::os::unix::fs::MetadataExt;
    let path = out.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    file.try_lock().ok()?;
    let (held, now) = (file.metadata().ok()?, fs::metadata(&path).ok()?);
    (held.ino() == now.ino() && held.dev() == now.dev()).then_some(OutLock { file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owners_are_swept_live_ones_kept_and_journals_finished() {
        let out = tempfile::tempdir().expect("tempdir");
        let out = out.path();
        let root = out.join(SCRATCH_DIR);
        // A dead build (an exited child: its pid no longer runs with that start time) that
        // was killed after renaming one of its two files.
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let dead = root.join("dead");
        fs::create_dir_all(&dead).expect("mkdir");
        fs::write(dead.join(OWNER), format!("{pid} 1 {}\n", boot_id())).expect("owner");
        fs::write(dead.join("b.tmp"), "new b").expect("b");
        fs::write(out.join("a"), "new a").expect("a");
        fs::write(out.join("b"), "old b").expect("b");
        fs::write(dead.join(JOURNAL), "a.tmp\ta\nb.tmp\tb\n").expect("journal");
        // A build of this process (alive), and one from another boot with our pid.
        let live = root.join("live");
        fs::create_dir_all(&live).expect("mkdir");
        fs::write(live.join(OWNER), me()).expect("owner");
        let rebooted = root.join("rebooted");
        fs::create_dir_all(&rebooted).expect("mkdir");
        let pid = std::process::id();
        let start = process_start(pid).expect("own start");
        fs::write(rebooted.join(OWNER), format!("{pid} {start} other-boot\n")).expect("owner");
        let s = Scratch::create(out).expect("scratch");
        assert!(!dead.exists() && !rebooted.exists() && live.exists());
        assert_eq!(fs::read_to_string(out.join("b")).expect("b"), "new b");
        let mode = fs::metadata(s.dir()).expect("dir").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        fs::write(s.path("x.tmp"), "x").expect("x");
        let dir = s.dir().to_path_buf();
        s.publish(&[("x.tmp", "x")]).expect("publish");
        assert_eq!(fs::read_to_string(out.join("x")).expect("x"), "x");
        assert!(!dir.exists());
        let s = Scratch::create(out).expect("scratch");
        let dir = s.dir().to_path_buf();
        drop(s);
        assert!(!dir.exists(), "dropped without publishing: removed");
        // Only the live build's directory is left, and no lock file.
        let left: Vec<_> = fs::read_dir(&root)
            .expect("ls")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(left, std::slice::from_ref(&live));
        fs::remove_dir_all(&live).expect("rm");
        let s = Scratch::create(out).expect("scratch");
        drop(s);
        let left: Vec<_> = fs::read_dir(out)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let mut names: Vec<String> = left
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "x"], "no scratch folder, no lock file");
    }

    #[test]
    fn a_journal_naming_paths_outside_is_refused() {
        let out = tempfile::tempdir().expect("tempdir");
        let err = finish_publish(out.path(), out.path(), "../x\ty\n").expect_err("refused");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
