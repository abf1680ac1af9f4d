//! FAT patching: reads and writes files in a FAT12/16/32 partition inside a disk image, without
//! mounting, through the `fatfs` crate over an [`ImageWindow`] onto the image file.
//!
//! Every byte written to the image is recorded, so the packer can later copy only what changed
//! ([`FatFs::written_ranges`]). Time stamps of created and modified entries come from one fixed
//! time given at [`FatFs::open`] (for reproducible builds: `SOURCE_DATE_EPOCH`); the wall clock
//! is never read.

use std::cell::Cell;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fatfs::{Date, DateTime, FatType, FileSystem, FsOptions, Time, TimeProvider};

use super::fatfix::{claimed_len, panic_text};
use super::window::{lock, IoLog};
use crate::error::{Context, Error, Result};
use crate::fs::{ByteRanges, Kind};

pub use super::window::ImageWindow;

// ---------------------------------------------------------------------------------------------
// Fixed time stamps
// ---------------------------------------------------------------------------------------------

/// A `fatfs` time provider that always answers the same instant.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// The first and last instants a FAT time stamp can hold (1980-01-01 00:00:00 and
/// 2107-12-31 23:59:59 UTC).
const DOS_EPOCH_RANGE: (i64, i64) = (315_532_800, 4_354_819_199);

/// Converts a Unix time (UTC) to a FAT time stamp, clamped to the range FAT can store.
fn dos_date_time(unix: i64) -> DateTime {
    let t = unix.clamp(DOS_EPOCH_RANGE.0, DOS_EPOCH_RANGE.1);
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    // The clamp keeps every field inside its u16 range.
    let field = |v: i64| u16::try_from(v).unwrap_or(0);
    DateTime {
        date: Date {
            year: field(year),
            month: field(month),
            day: field(day),
        },
        time: Time {
            hour: field(secs / 3600),
            min: field(secs / 60 % 60),
            sec: field(secs % 60),
            millis: 0,
        },
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A `'static` time provider for `unix`, as `fatfs` 0.3 requires. Providers are interned, so
/// the memory kept is one small allocation per distinct time stamp used by the process.
fn time_provider(unix: i64) -> &'static FixedTime {
    static PROVIDERS: Mutex<Vec<&'static FixedTime>> = Mutex::new(Vec::new());
    let wanted = dos_date_time(unix);
    let mut providers = PROVIDERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = providers.iter().find(|p| p.0 == wanted) {
        return found;
    }
    let leaked: &'static FixedTime = Box::leak(Box::new(FixedTime(wanted)));
    providers.push(leaked);
    leaked
}

// ---------------------------------------------------------------------------------------------
// The file system
// ---------------------------------------------------------------------------------------------

/// A FAT file system inside a partition of a disk image, open for reading and writing.
///
/// All changes go straight to the image file; [`FatFs::close`] must be called to finish them
/// cleanly (it writes the FSInfo free-cluster count and clears the dirty flag). Operations that
/// fail inside `fatfs` in a way that suggests corruption (a panic in the library, or a loop in a
/// directory's cluster chain) are turned into errors; after a panic the file system refuses further work.
pub struct FatFs {
    fs: FileSystem<ImageWindow>,
    log: Arc<Mutex<IoLog>>,
    image: PathBuf,
    offset: u64,
    poisoned: Cell<bool>,
}

impl std::fmt::Debug for FatFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FatFs")
            .field("image", &self.image)
            .field("offset", &self.offset)
            .finish()
    }
}

impl FatFs {
    /// Opens the FAT file system in `[offset, offset + len)` of the disk image `image` for
    /// reading and writing. Every entry created or modified gets the time stamp `timestamp`
    /// (Unix seconds, read as UTC and clamped to 1980..=2107, FAT's range), so equal inputs give
    /// equal bytes.
    ///
    /// Fails, without writing anything, if the range is not inside the file, if it does not hold
    /// a FAT file system, or if the file system claims to be bigger than the range.
    pub fn open(image: &Path, offset: u64, len: u64, timestamp: i64) -> Result<FatFs> {
        let what = || {
            format!(
                "{}: FAT file system at byte {offset} ({len} bytes)",
                image.display()
            )
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .context(what)?;
        let size = file.metadata().context(what)?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            crate::bail!(
                "{}: the partition ends past the end of the {size}-byte image",
                what()
            );
        }
        let fs_len = claimed_len(&file, offset, len).context(what)?;
        let log: Arc<Mutex<IoLog>> = Arc::default();
        let window = ImageWindow::with_log(file, offset, len, Arc::clone(&log)).context(what)?;
        let options = FsOptions::new()
            .update_accessed_date(false)
            .time_provider(time_provider(timestamp));
        let fs = match catch_unwind(AssertUnwindSafe(|| FileSystem::new(window, options))) {
            Ok(Ok(fs)) => fs,
            Ok(Err(e)) => crate::bail!("{}: not a usable FAT file system: {e}", what()),
            Err(panic) => crate::bail!(
                "{}: not a usable FAT file system: {}",
                what(),
                panic_text(&*panic)
            ),
        };
        if fs_len > len {
            // Dropping `fs` would unmount it, which writes only if something was changed: nothing was.
            crate::bail!(
                "{}: the file system claims {} bytes, more than its partition",
                what(),
                fs_len
            );
        }
        Ok(FatFs {
            fs,
            log,
            image: image.to_path_buf(),
            offset,
            poisoned: Cell::new(false),
        })
    }

    /// The volume label, trimmed of padding; empty if there is none. Like `blkid` (and so
    /// `LABEL=` and `/dev/disk/by-label`), the label entry in the root directory wins over the
    /// one in the boot sector, and the boot sector's `NO NAME` means no label.
    pub fn label(&self) -> String {
        let from_root = self.run(
            || "reading the volume label".into(),
            |fs| fs.read_volume_label_from_root_dir(),
        );
        if let Ok(Some(label)) = from_root {
            if !label.trim().is_empty() {
                return label.trim_end().to_string();
            }
        }
        let bpb = self.fs.volume_label();
        match bpb.trim_end() {
            "NO NAME" => String::new(),
            trimmed => trimmed.to_string(),
        }
    }

    /// The FAT variant, as decided by the cluster count: `"FAT12"`, `"FAT16"` or `"FAT32"`.
    pub fn fat_type(&self) -> String {
        match self.fs.fat_type() {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        }
        .to_string()
    }

    /// Free space in bytes (free clusters times the cluster size). On FAT32 this trusts the
    /// FSInfo sector's count unless the volume was left dirty, as every FAT driver does.
    pub fn free_bytes(&self) -> Result<u64> {
        let stats = self.run(|| "counting free clusters".into(), |fs| fs.stats())?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }

    /// Capacity of the data area in bytes (clusters times the cluster size).
    pub fn total_bytes(&self) -> Result<u64> {
        let stats = self.run(|| "counting clusters".into(), |fs| fs.stats())?;
        Ok(u64::from(stats.total_clusters()) * u64::from(stats.cluster_size()))
    }

    /// The content of the file at `path` (`/`-separated, from the root; case-insensitive, as
    /// FAT is), or `None` if it does not exist. Fails if `path` names a directory or goes
    /// through a file.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let rel = file_path(path).map_err(|e| self.error(path, e))?;
        self.run(
            || self.place(path),
            |fs| match fs.root_dir().open_file(&rel) {
                Ok(mut file) => {
                    let mut data = Vec::new();
                    file.read_to_end(&mut data)?;
                    Ok(Some(data))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        )
    }

    /// Creates the file at `path`, or replaces the content of an existing one, creating missing
    /// parent directories. Names keep their case: `fatfs` 0.3.6 gives every new entry a long-name
    /// entry besides its upper-case 8.3 name (valid FAT, but it halves how many files fit in the
    /// fixed root directory of FAT12/16: 256 instead of 512). If the data cannot fit, fails naming the file and the free
    /// space, before changing anything when that can be known in advance and otherwise after
    /// removing the partly written file.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let rel = file_path(path).map_err(|e| self.error(path, e))?;
        self.check_space(path, &rel, data.len() as u64)?;
        let written = self.run(|| self.place(path), |fs| write_at_path(fs, &rel, data));
        match written {
            Err(e) if e.message().contains(NO_SPACE) => Err(self.no_space(path, data.len() as u64)),
            other => other,
        }
    }

    /// Creates the directory `path` and any missing parents; existing directories are kept.
    /// Fails if a component exists and is a file.
    pub fn mkdir_p(&mut self, path: &str) -> Result<()> {
        let rel = normalize(path).map_err(|e| self.error(path, e))?;
        self.run(
            || self.place(path),
            |fs| {
                let mut dir = fs.root_dir();
                for component in rel.split('/').filter(|c| !c.is_empty()) {
                    dir = match dir.open_dir(component) {
                        Ok(existing) => existing,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            dir.create_dir(component)?
                        }
                        Err(e) => return Err(e),
                    };
                }
                Ok(())
            },
        )
    }

    /// Whether `path` is a file or a directory (`"/"` is the root directory); `None` if it does
    /// not exist. Fails if a parent component is a file.
    pub fn kind(&self, path: &str) -> Result<Option<Kind>> {
        let rel = normalize(path).map_err(|e| self.error(path, e))?;
        if rel.is_empty() {
            return Ok(Some(Kind::Dir));
        }
        // fatfs's own lookups, so names match exactly as they do for the other operations.
        self.run(
            || self.place(path),
            |fs| {
                let root = fs.root_dir();
                match root.open_dir(&rel) {
                    Ok(_) => Ok(Some(Kind::Dir)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    // "Not a directory": the entry is a file, or a parent is.
                    Err(_) => root.open_file(&rel).map(|_| Some(Kind::File)),
                }
            },
        )
    }

    /// Removes the file (or empty directory) at `path`; `Ok(false)` if it did not exist.
    pub fn remove(&mut self, path: &str) -> Result<bool> {
        let rel = file_path(path).map_err(|e| self.error(path, e))?;
        self.run(
            || self.place(path),
            |fs| match fs.root_dir().remove(&rel) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        )
    }

    /// Names (long names when present) of the entries of directory `dir`, in on-disk order,
    /// without `.` and `..` and the volume label. `"/"` or `""` is the root directory.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let rel = normalize(dir).map_err(|e| self.error(dir, e))?;
        self.run(
            || self.place(dir),
            |fs| {
                let root = fs.root_dir();
                let dir = if rel.is_empty() {
                    root
                } else {
                    root.open_dir(&rel)?
                };
                let mut names = Vec::new();
                for entry in dir.iter() {
                    let name = entry?.file_name();
                    if name != "." && name != ".." {
                        names.push(name);
                    }
                }
                Ok(names)
            },
        )
    }

    /// Byte ranges of the image file (absolute offsets) written so far. A superset of the
    /// changed bytes: a range may hold bytes that were rewritten with their old value (the dirty
    /// flag is set, then cleared on close).
    pub fn written_ranges(&self) -> ByteRanges {
        lock(&self.log).written().clone()
    }

    /// Finishes the file system cleanly (FSInfo sector, dirty flag) and returns every byte range
    /// of the image file that was written while it was open (see [`FatFs::written_ranges`]).
    pub fn close(self) -> Result<ByteRanges> {
        let what = self.place("/");
        let FatFs {
            fs, log, poisoned, ..
        } = self;
        if poisoned.get() {
            // Unmounting would clear the dirty flag of a volume that is probably corrupt: leave
            // it set (at the cost of leaking the image's file handle).
            std::mem::forget(fs);
            crate::bail!("{what}: left marked dirty because an earlier operation failed inside fatfs; check it with fsck.vfat");
        }
        lock(&log).start_operation();
        match catch_unwind(AssertUnwindSafe(|| fs.unmount())) {
            Ok(result) => result.context(|| format!("{what}: unmounting"))?,
            Err(panic) => crate::bail!("{what}: unmounting: {}", panic_text(&*panic)),
        }
        let ranges = lock(&log).written().clone();
        Ok(ranges)
    }

    /// Runs one `fatfs` operation: restarts the loop detection, turns a panic inside the library
    /// into an error (and refuses later operations), and prefixes errors with `what()`.
    fn run<R>(
        &self,
        what: impl FnOnce() -> String,
        op: impl FnOnce(&FileSystem<ImageWindow>) -> io::Result<R>,
    ) -> Result<R> {
        if self.poisoned.get() {
            crate::bail!("{}: refused, an earlier operation failed inside fatfs; check the file system with fsck.vfat", what());
        }
        lock(&self.log).start_operation();
        match catch_unwind(AssertUnwindSafe(|| op(&self.fs))) {
            Ok(result) => result.context(what),
            Err(panic) => {
                self.poisoned.set(true);
                crate::bail!("{}: fatfs failed ({}), the file system is probably corrupt; check it with fsck.vfat", what(), panic_text(&*panic))
            }
        }
    }

    /// "image: FAT file system at byte N: path", the prefix of every error about `path`.
    fn place(&self, path: &str) -> String {
        format!(
            "{}: FAT file system at byte {}: {path}",
            self.image.display(),
            self.offset
        )
    }

    fn error(&self, path: &str, cause: impl std::fmt::Display) -> Error {
        Error::msg(format!("{}: {cause}", self.place(path)))
    }

    /// Fails early if `len` bytes cannot fit, counting the clusters a replaced file gives back.
    fn check_space(&self, path: &str, rel: &str, len: u64) -> Result<()> {
        let stats = self.run(|| self.place(path), |fs| fs.stats())?;
        let old_len = self.run(
            || self.place(path),
            |fs| match fs.root_dir().open_file(rel) {
                Ok(mut file) => file.seek(SeekFrom::End(0)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
                Err(e) => Err(e),
            },
        )?;
        let cluster = u64::from(stats.cluster_size());
        let available = u64::from(stats.free_clusters()) + old_len.div_ceil(cluster);
        if len.div_ceil(cluster) > available {
            return Err(self.no_space(path, len));
        }
        Ok(())
    }

    fn no_space(&self, path: &str, len: u64) -> Error {
        let free = self
            .free_bytes()
            .map_or_else(|e| format!("unknown ({e})"), |b| b.to_string());
        self.error(path, format!("file system full: {len} bytes do not fit, {free} bytes free; make the partition bigger or write less"))
    }
}

/// The message `fatfs` uses when no cluster is free.
const NO_SPACE: &str = "No space left on device";

/// Creates parent directories and writes `data` to the file `rel`, removing the file again if
/// the disk fills up half way.
fn write_at_path(fs: &FileSystem<ImageWindow>, rel: &str, data: &[u8]) -> io::Result<()> {
    let (parents, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let mut dir = fs.root_dir();
    for component in parents.split('/').filter(|c| !c.is_empty()) {
        dir = match dir.open_dir(component) {
            Ok(existing) => existing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => dir.create_dir(component)?,
            Err(e) => return Err(e),
        };
    }
    let result = (|| {
        let mut file = dir.create_file(name)?;
        file.truncate()?;
        file.write_all(data)?;
        file.flush()
    })();
    if let Err(e) = result {
        if e.to_string().contains(NO_SPACE) {
            // Best effort: the error about the full disk matters more than this one.
            let _ = dir.remove(name);
        }
        return Err(e);
    }
    Ok(())
}

/// `path` without empty, leading or trailing `/`; refuses `.` and `..` components.
fn normalize(path: &str) -> std::result::Result<String, String> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err("`.` and `..` are not allowed in paths".into());
    }
    Ok(components.join("/"))
}

/// Like [`normalize`], but the root directory is refused.
fn file_path(path: &str) -> std::result::Result<String, String> {
    let rel = normalize(path)?;
    if rel.is_empty() {
        return Err("this is the root directory, not a file".into());
    }
    Ok(rel)
}

/// The FAT side of the file-system layer: every operation is the inherent one of the same name.
impl super::FileSystem for FatFs {
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        FatFs::read_file(self, path)
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        FatFs::write_file(self, path, data)
    }

    fn mkdir_p(&mut self, path: &str) -> Result<()> {
        FatFs::mkdir_p(self, path)
    }

    fn remove(&mut self, path: &str) -> Result<bool> {
        FatFs::remove(self, path)
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        FatFs::list(self, dir)
    }

    fn kind(&self, path: &str) -> Result<Option<Kind>> {
        FatFs::kind(self, path)
    }

    fn free_bytes(&self) -> Result<u64> {
        FatFs::free_bytes(self)
    }

    fn close(self) -> Result<ByteRanges> {
        FatFs::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_time_converts_utc_and_clamps() {
        // 2024-02-29 13:14:15 UTC.
        let t = dos_date_time(1_709_212_455);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2024, 2, 29));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (13, 14, 15));
        let early = dos_date_time(0);
        assert_eq!(
            (early.date.year, early.date.month, early.date.day),
            (1980, 1, 1)
        );
        let late = dos_date_time(i64::MAX);
        assert_eq!(
            (late.date.year, late.date.month, late.date.day),
            (2107, 12, 31)
        );
        assert!(std::ptr::eq(time_provider(5), time_provider(5)));
    }
}
