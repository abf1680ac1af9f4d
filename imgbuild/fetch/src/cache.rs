//! The download cache: content-addressed by sha256, filled by atomic renames, guarded by lock files.
//!
//! Layout under the cache root:
//!
//! | path | what |
//! | --- | --- |
//! | `blobs/<sha256>` | a verified download, exactly the bytes whose sha256 is its name |
//! | `meta/<sha256>.url` | the URL it was downloaded from (one line; informational) |
//! | `meta/<sha256>.signer` | the fingerprint of the key whose signature was verified for it |
//! | `meta/<sha256>.sha512` | its sha512, computed while it was downloaded (finds a sha512 pin) |
//! | `raw/<sha256>.img` | the decompressed image of the download `<sha256>` |
//! | `tmp/<key>.part` | a download in progress or interrupted (resumed by the next fetch) |
//! | `tmp/*.<pid>-<start>.<n>.tmp[.part]` | scratch files of writers (see [`Cache::scratch_path`]), named after their process |
//! | `locks/<key>.lock` | lock files |
//!
//! Protocol: a writer takes the exclusive lock of a key, re-checks the final path, writes a
//! `tmp/` file, syncs it and renames it into place. A reader of a finished entry needs no lock (the
//! rename is atomic); [`Cache::lock_shared`] keeps [`Cache::prune`] from deleting an entry in use.
//! A lock is taken on the open lock file and then checked to still be the file at its path (or
//! taken again), so [`Cache::prune`] may delete a lock file while it holds that lock.
//!
//! Scratch files carry their writer's process id and start time: [`Cache::sweep_scratch`] (run
//! by every build at start, and by [`Cache::prune`]) deletes those whose writer is gone, e.g. the
//! image-sized output of a killed decompression.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::error::FetchError;

/// Subdirectories of the cache root.
const DIRS: [&str; 5] = ["blobs", "meta", "raw", "tmp", "locks"];

/// A cache directory (see the module documentation for its layout).
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A verified download (`blobs/<sha256>`).
    Download,
    /// The decompressed image of a download (`raw/<sha256>.img`).
    Raw,
    /// An unfinished download (`tmp/<key>.part`).
    Partial,
}

impl EntryKind {
    /// A short lowercase name for listings: `download`, `raw` or `partial`.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Download => "download",
            EntryKind::Raw => "raw",
            EntryKind::Partial => "partial",
        }
    }
}

/// One file in the cache, as listed by [`Cache::ls`].
#[derive(Debug, Clone)]
pub struct Entry {
    /// What the file is.
    pub kind: EntryKind,
    /// The sha256 of the download it belongs to (for partials: the lock key, which is the pinned
    /// sha256 or `url-<sha256 of the URL>` for unpinned downloads).
    pub key: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub modified: SystemTime,
    /// The URL it was downloaded from, when known.
    pub url: Option<String>,
}

/// What [`Cache::prune`] did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// The entries deleted.
    pub removed: Vec<Entry>,
    /// The bytes freed (entries and other files).
    pub freed_bytes: u64,
    /// Entries that were not kept but were left alone because another process holds their lock.
    pub busy: Vec<Entry>,
    /// Other files deleted: scratch files of dead writers, records of downloads no longer
    /// cached, lock files of keys with nothing cached.
    pub other: Vec<PathBuf>,
}

/// A file of the cache that is not an [`Entry`], as listed by [`Cache::ls_other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherFile {
    /// `scratch` (a writer's temporary file; `live` tells whether its writer still runs),
    /// `record` (meta/ of a download) or `lock`.
    pub kind: &'static str,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// For scratch files: whether the process that writes it is still running.
    pub live: bool,
}

/// A held lock on a cache key; released when dropped.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
}

/// Lock flavours.
#[derive(Clone, Copy)]
enum LockMode {
    Exclusive,
    Shared,
}

impl Cache {
    /// Opens (creating if needed) the cache rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, FetchError> {
        let root = root.into();
        for dir in DIRS {
            let path = root.join(dir);
            fs::create_dir_all(&path)
                .map_err(|e| FetchError::io("create cache directory", &path, e))?;
        }
        Ok(Cache { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of the verified download with this sha256, if it is cached.
    pub fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        existing_file(self.blob_target(sha256))
    }

    /// The path of the decompressed image of the download with this sha256, if it is cached.
    pub fn raw_path(&self, sha256: &str) -> Option<PathBuf> {
        existing_file(self.raw_target(sha256))
    }

    /// A fresh, unique path inside the cache (same file system as the entries) for a writer to
    /// fill before handing it to [`Cache::store_raw`]. `hint` is only part of the name.
    /// The name carries this process's id and start time, so that [`Cache::sweep_scratch`]
    /// can tell when its writer is gone.
    pub fn scratch_path(&self, hint: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let safe: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(80)
            .collect();
        let pid = std::process::id();
        let start = process_start(pid).unwrap_or(0);
        self.root
            .join("tmp")
            .join(format!("{safe}.{pid}-{start}.{n}.tmp"))
    }

    /// Deletes the scratch files (see [`Cache::scratch_path`]; also what a writer made from one,
    /// such as `NAME.tmp.part`) whose writing process is no longer running; returns them.
    pub fn sweep_scratch(&self) -> Result<Vec<PathBuf>, FetchError> {
        let mut removed = Vec::new();
        for f in self.ls_other()? {
            if f.kind == "scratch" && !f.live {
                remove_if_exists(&f.path)?;
                removed.push(f.path);
            }
        }
        Ok(removed)
    }

    /// Deletes the scratch files of this process (for a signal handler about to exit: they
    /// would otherwise wait for the next build's sweep); returns them.
    pub fn remove_own_scratch(&self) -> Result<Vec<PathBuf>, FetchError> {
        let pid = std::process::id();
        let mine = format!(".{pid}-{}.", process_start(pid).unwrap_or(0));
        let mut removed = Vec::new();
        for (path, name) in list_dir(&self.root.join("tmp"))? {
            if scratch_owner_alive(&name).is_some() && name.contains(&mine) {
                remove_if_exists(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    }

    /// Lists the files that are not entries: scratch files (with whether their writer is
    /// alive), download records whose download is not cached, and lock files.
    pub fn ls_other(&self) -> Result<Vec<OtherFile>, FetchError> {
        let mut out = Vec::new();
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        for (path, name) in list_dir(&self.root.join("tmp"))? {
            if let Some(live) = scratch_owner_alive(&name) {
                out.push(OtherFile {
                    kind: "scratch",
                    size: size(&path),
                    path,
                    live,
                });
            }
        }
        for (path, name) in list_dir(&self.root.join("meta"))? {
            let sha = name.split('.').next().unwrap_or("");
            if self.blob_path(sha).is_none() {
                out.push(OtherFile {
                    kind: "record",
                    size: size(&path),
                    path,
                    live: false,
                });
            }
        }
        for (path, _) in list_dir(&self.root.join("locks"))? {
            out.push(OtherFile {
                kind: "lock",
                size: size(&path),
                path,
                live: false,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Moves the finished decompressed image `from` (best made with [`Cache::scratch_path`]) into
    /// place as the raw image of download `sha256`, atomically; returns its final path.
    /// If another writer stored it first, `from` is deleted and the existing entry kept. Takes no
    /// lock (the rename is atomic and both writers hold the same bytes), so it may be called while
    /// holding [`Cache::lock_shared`] on `sha256`.
    pub fn store_raw(&self, sha256: &str, from: &Path) -> Result<PathBuf, FetchError> {
        let sha = crate::normalize_sha256(sha256)?;
        self.install(from, &self.raw_target(&sha))
    }

    /// Takes the exclusive lock of `key` (a sha256, or any name made of `[0-9a-z-]`), waiting
    /// for other holders.
    pub fn lock(&self, key: &str) -> Result<EntryLock, FetchError> {
        self.take_lock(key, LockMode::Exclusive)
    }

    /// Takes a shared lock of `key`: [`Cache::prune`] will not delete its files while it is held.
    /// Take it after [`crate::fetch`] returns, not around it: a fetch that misses the cache takes
    /// the exclusive lock of the same key and would wait for this one forever.
    pub fn lock_shared(&self, key: &str) -> Result<EntryLock, FetchError> {
        self.take_lock(key, LockMode::Shared)
    }

    /// Lists every download, raw image and partial download in the cache, sorted by path.
    pub fn ls(&self) -> Result<Vec<Entry>, FetchError> {
        let mut entries = Vec::new();
        for (dir, kind) in [
            ("blobs", EntryKind::Download),
            ("raw", EntryKind::Raw),
            ("tmp", EntryKind::Partial),
        ] {
            for (path, name) in list_dir(&self.root.join(dir))? {
                let Some(key) = entry_key(kind, &name) else {
                    continue;
                };
                let meta = fs::metadata(&path).map_err(|e| FetchError::io("inspect", &path, e))?;
                let url = match kind {
                    EntryKind::Download => self.recorded_url(&key),
                    _ => None,
                };
                entries.push(Entry {
                    kind,
                    key,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                    url,
                });
            }
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Deletes every entry for which `keep` returns false, except those whose key is locked by
    /// someone else (they are reported as busy); then the scratch files of dead writers, the
    /// records of downloads no longer cached, and the lock files of keys that have no entry left
    /// and that nobody holds.
    pub fn prune(&self, keep: impl Fn(&Entry) -> bool) -> Result<PruneReport, FetchError> {
        let mut report = PruneReport::default();
        for f in self.ls_other()? {
            if f.kind == "record" || (f.kind == "scratch" && !f.live) {
                remove_if_exists(&f.path)?;
                report.freed_bytes += f.size;
                report.other.push(f.path);
            }
        }
        for entry in self.ls()? {
            if keep(&entry) {
                continue;
            }
            let Some(_lock) = self.try_lock(&entry.key)? else {
                report.busy.push(entry);
                continue;
            };
            remove_if_exists(&entry.path)?;
            if entry.kind == EntryKind::Download {
                remove_if_exists(&self.url_record(&entry.key))?;
                remove_if_exists(&self.signer_record(&entry.key))?;
                remove_if_exists(&self.sha512_record(&entry.key))?;
            }
            report.freed_bytes += entry.size;
            report.removed.push(entry);
        }
        let left: Vec<String> = self.ls()?.into_iter().map(|e| e.key).collect();
        for (path, name) in list_dir(&self.root.join("locks"))? {
            let Some(key) = name.strip_suffix(".lock") else {
                continue;
            };
            if left.iter().any(|k| k == key) {
                continue;
            }
            // Deleted while held: whoever opened it before sees that it is stale and retries.
            if let Ok(Some(_held)) = self.try_lock(key) {
                remove_if_exists(&path)?;
                report.other.push(path);
            }
        }
        Ok(report)
    }

    /// The path of the partial download of `key`.
    pub fn part_path(&self, key: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{key}.part"))
    }

    /// Where the download `sha256` lives once stored.
    fn blob_target(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    /// Where the raw image of `sha256` lives once stored.
    fn raw_target(&self, sha256: &str) -> PathBuf {
        self.root.join("raw").join(format!("{sha256}.img"))
    }

    /// Where the URL of download `sha256` is recorded.
    fn url_record(&self, sha256: &str) -> PathBuf {
        self.root.join("meta").join(format!("{sha256}.url"))
    }

    /// The URL recorded for download `sha256`, if any.
    pub(crate) fn recorded_url(&self, sha256: &str) -> Option<String> {
        let text = fs::read_to_string(self.url_record(sha256)).ok()?;
        Some(text.trim().to_string()).filter(|u| !u.is_empty())
    }

    /// The fingerprint of the key whose signature was verified when download `sha256` was
    /// stored, if any.
    pub(crate) fn recorded_signer(&self, sha256: &str) -> Option<String> {
        let text = fs::read_to_string(self.signer_record(sha256)).ok()?;
        Some(text.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// Where the verified signer of download `sha256` is recorded.
    fn signer_record(&self, sha256: &str) -> PathBuf {
        self.root.join("meta").join(format!("{sha256}.signer"))
    }

    /// Where the sha512 of download `sha256` is recorded.
    fn sha512_record(&self, sha256: &str) -> PathBuf {
        self.root.join("meta").join(format!("{sha256}.sha512"))
    }

    /// The sha512 recorded for download `sha256`, if any.
    pub(crate) fn recorded_sha512(&self, sha256: &str) -> Option<String> {
        let text = fs::read_to_string(self.sha512_record(sha256)).ok()?;
        Some(text.trim().to_string()).filter(|s| s.len() == 128)
    }

    /// The sha256 of the cached download whose recorded sha512 is `sha512`, if any (a scan of
    /// `meta/`, which holds a few files per download).
    pub fn sha256_of_sha512(&self, sha512: &str) -> Option<String> {
        let files = list_dir(&self.root.join("meta")).ok()?;
        files.into_iter().find_map(|(_, name)| {
            let sha256 = name.strip_suffix(".sha512")?;
            (self.recorded_sha512(sha256).as_deref() == Some(sha512)
                && self.blob_path(sha256).is_some())
            .then(|| sha256.to_string())
        })
    }

    /// Moves the verified file `from` into place as download `sha256` (the caller holds the
    /// exclusive lock of `sha256`) and records its URL, its sha512 and, if a signature was
    /// verified, the signer's fingerprint.
    pub(crate) fn store_blob(
        &self,
        sha256: &str,
        from: &Path,
        url: &str,
        signer: Option<&str>,
        sha512: &str,
    ) -> Result<PathBuf, FetchError> {
        self.record(&self.url_record(sha256), url)?;
        self.record(&self.sha512_record(sha256), sha512)?;
        if let Some(fingerprint) = signer {
            self.record(&self.signer_record(sha256), fingerprint)?;
        }
        self.install(from, &self.blob_target(sha256))
    }

    /// Atomically replaces the one-line record at `path` with `value`.
    fn record(&self, path: &Path, value: &str) -> Result<(), FetchError> {
        let scratch = self.scratch_path("record");
        write_synced(&scratch, format!("{value}\n").as_bytes())?;
        fs::rename(&scratch, path).map_err(|e| FetchError::io("write record", path, e))
    }

    /// Syncs `from` and renames it to `to`, unless `to` already exists (then `from` is removed).
    fn install(&self, from: &Path, to: &Path) -> Result<PathBuf, FetchError> {
        if let Some(existing) = existing_file(to.to_path_buf()) {
            remove_if_exists(from)?;
            return Ok(existing);
        }
        sync_file(from)?;
        fs::rename(from, to).map_err(|e| FetchError::io("move into the cache", from, e))?;
        if let Some(dir) = to.parent() {
            // Persist the rename; a failure here only weakens crash safety, so it is not fatal.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(to.to_path_buf())
    }

    /// Opens the lock file of `key`.
    fn lock_file(&self, key: &str) -> Result<File, FetchError> {
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(FetchError::Setup {
                detail: format!("'{key}' is not a valid cache key"),
            });
        }
        let path = self.root.join("locks").join(format!("{key}.lock"));
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| FetchError::io("open lock file", &path, e))
    }

    /// Takes a lock of `key`, waiting for it.
    fn take_lock(&self, key: &str, mode: LockMode) -> Result<EntryLock, FetchError> {
        loop {
            let file = self.lock_file(key)?;
            let result = match mode {
                LockMode::Exclusive => file.lock(),
                LockMode::Shared => file.lock_shared(),
            };
            result.map_err(|e| FetchError::io("lock", self.root.join("locks").join(key), e))?;
            if self.still_current(key, &file) {
                return Ok(EntryLock { _file: file });
            }
        }
    }

    /// Takes the exclusive lock of `key` if nobody holds it.
    fn try_lock(&self, key: &str) -> Result<Option<EntryLock>, FetchError> {
        loop {
            let file = self.lock_file(key)?;
            match file.try_lock() {
                Ok(()) if self.still_current(key, &file) => {
                    return Ok(Some(EntryLock { _file: file }))
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => {
                    return Err(FetchError::io("lock", self.root.join("locks").join(key), e))
                }
            }
        }
    }

    /// Whether the locked `file` is still the lock file of `key` ([`Cache::prune`] deletes
    /// lock files it holds; a lock taken on a deleted file protects nothing).
    fn still_current(&self, key: &str, file: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let path = self.root.join("locks").join(format!("{key}.lock"));
        match (file.metadata(), fs::metadata(path)) {
            (Ok(held), Ok(now)) => held.ino() == now.ino() && held.dev() == now.dev(),
            _ => false,
        }
    }
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/PID/stat`), or
/// `None` when there is no such process. With the pid it tells a live writer from a dead one
/// whose pid was reused (the cache's scratch files and the builds' scratch dirs use it).
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// For a scratch file name `HINT.PID-START.N.tmp` (or `HINT.PID.N.tmp` of older versions,
/// optionally followed by `.part`): whether its writer is still running; `None` for other names.
fn scratch_owner_alive(name: &str) -> Option<bool> {
    let stem = name.strip_suffix(".part").unwrap_or(name);
    let stem = stem.strip_suffix(".tmp")?;
    let mut parts = stem.rsplit('.');
    let _n: u64 = parts.next()?.parse().ok()?;
    let owner = parts.next()?;
    let (pid, start) = match owner.split_once('-') {
        Some((p, s)) => (p.parse::<u32>().ok()?, Some(s.parse::<u64>().ok()?)),
        None => (owner.parse::<u32>().ok()?, None),
    };
    let now = process_start(pid);
    Some(match start {
        Some(start) => now == Some(start),
        None => now.is_some(),
    })
}

/// The key of a listed file of `kind` named `name`, or None for files that are not entries.
fn entry_key(kind: EntryKind, name: &str) -> Option<String> {
    let key = match kind {
        EntryKind::Download => Some(name),
        EntryKind::Raw => name.strip_suffix(".img"),
        EntryKind::Partial => name.strip_suffix(".part"),
    }?;
    let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    valid.then(|| key.to_string())
}

/// `path` if it names an existing regular file.
fn existing_file(path: PathBuf) -> Option<PathBuf> {
    path.is_file().then_some(path)
}

/// The regular files of `dir` with their names (non-UTF-8 names are skipped).
fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, FetchError> {
    let read = fs::read_dir(dir).map_err(|e| FetchError::io("list", dir, e))?;
    let mut files = Vec::new();
    for item in read {
        let item = item.map_err(|e| FetchError::io("list", dir, e))?;
        let is_file = item.file_type().map(|t| t.is_file()).unwrap_or(false);
        if let (true, Some(name)) = (is_file, item.file_name().to_str()) {
            files.push((item.path(), name.to_string()));
        }
    }
    Ok(files)
}

/// Deletes `path`; a file that is already gone is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), FetchError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(FetchError::io("delete", path, e))
        }
        _ => Ok(()),
    }
}

/// Flushes `path` to stable storage.
fn sync_file(path: &Path) -> Result<(), FetchError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| FetchError::io("sync", path, e))
}

/// Creates `path` with `bytes` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let mut file = File::create(path).map_err(|e| FetchError::io("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| FetchError::io("write", path, e))
}
