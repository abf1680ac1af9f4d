//! FAT patching: reads and writes files in a FAT12/16/32 partition inside a disk image, without
//! mounting, through the `fatfs` crate over an [`ImageWindow`] onto the image file.
//!
//! Every byte written to the image is recorded, so the packer can later copy only what changed
//! ([`FatFs::written_ranges`]). Time stamps of created and modified entries come from one fixed
//! time given at [`FatFs::open`] (for reproducible builds: `SOURCE_DATE_EPOCH`); the wall clock
//! is never read.
//!
//! The module also holds the two text editors for the files that usually get patched on a boot
//! partition: [`cmdline_append`] (kernel command line) and [`config_txt_set`] (Raspberry Pi
//! `config.txt`).

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fatfs::{Date, DateTime, FatType, FileSystem, FsOptions, Time, TimeProvider};

use crate::error::{Context, Error, Result};
use crate::fs::ByteRanges;

// ---------------------------------------------------------------------------------------------
// The window onto the image file
// ---------------------------------------------------------------------------------------------

/// What the window did, shared between an [`ImageWindow`] (owned by `fatfs`) and its [`FatFs`].
#[derive(Debug, Default)]
struct IoLog {
    /// Written byte ranges of the image file (absolute offsets).
    written: ByteRanges,
    /// How often each position was read by a small (metadata-sized) read in this operation.
    small_reads: HashMap<u64, u32>,
}

/// Reads of at most this many bytes are metadata reads (FAT entries, directory entry fields).
const SMALL_READ: usize = 32;

/// How often one operation may read the same metadata position. A legitimate operation reads a
/// directory entry once per pass over its directory: a handful of passes, a few dozen when
/// `fatfs` has to try many short names against colliding ones. Only a directory whose cluster
/// chain loops comes back to the same entries endlessly.
const MAX_REREADS: u32 = 256;

impl IoLog {
    /// Records a write of `len` bytes at `start`.
    fn record_write(&mut self, start: u64, len: u64) {
        self.written.insert(start, len);
    }

    /// Counts a read of `n` bytes at window position `pos`; fails once a metadata position has
    /// been read more than [`MAX_REREADS`] times in the current operation.
    fn record_read(&mut self, pos: u64, n: usize) -> io::Result<()> {
        if n > SMALL_READ {
            return Ok(());
        }
        let count = self.small_reads.entry(pos).or_insert(0);
        *count += 1;
        if *count > MAX_REREADS {
            return Err(io::Error::other(format!(
                "byte {pos} of the partition was read {MAX_REREADS} times in one operation: a directory's cluster chain loops (corrupt file system; check it with fsck.vfat)"
            )));
        }
        Ok(())
    }

    /// Starts a new operation for the loop detection.
    fn start_operation(&mut self) {
        self.small_reads.clear();
    }
}

/// Locks the shared log; a poisoned lock only means another thread panicked while holding it,
/// and the log stays meaningful, so it is used anyway.
fn lock(log: &Mutex<IoLog>) -> MutexGuard<'_, IoLog> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `Read + Write + Seek` view of the byte range `[offset, offset + len)` of an image file,
/// positioned relative to `offset`. Seeking past the end and writing across it are refused;
/// reading stops at the end. Every write is recorded ([`ImageWindow::written_ranges`]).
#[derive(Debug)]
pub struct ImageWindow {
    file: File,
    offset: u64,
    len: u64,
    pos: u64,
    log: Arc<Mutex<IoLog>>,
}

impl ImageWindow {
    /// Makes a window onto `[offset, offset + len)` of `file` (which must be open for reading,
    /// and for writing if the window is written to). Fails if the range overflows `u64`.
    pub fn new(file: File, offset: u64, len: u64) -> io::Result<ImageWindow> {
        Self::with_log(file, offset, len, Arc::default())
    }

    fn with_log(
        file: File,
        offset: u64,
        len: u64,
        log: Arc<Mutex<IoLog>>,
    ) -> io::Result<ImageWindow> {
        if offset.checked_add(len).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("window of {len} bytes at offset {offset} overflows"),
            ));
        }
        Ok(ImageWindow {
            file,
            offset,
            len,
            pos: 0,
            log,
        })
    }

    /// Byte ranges of the image file (absolute offsets) written through this window so far.
    pub fn written_ranges(&self) -> ByteRanges {
        lock(&self.log).written.clone()
    }
}

impl Read for ImageWindow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let want = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if want == 0 {
            return Ok(0);
        }
        lock(&self.log).record_read(self.pos, want)?;
        let n = self
            .file
            .read_at(&mut buf[..want], self.offset + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for ImageWindow {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self
            .pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "refused to write {} bytes at {} past the end of the {}-byte FAT partition window",
                    buf.len(),
                    self.pos,
                    self.len
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let at = self.offset + self.pos;
        let n = self.file.write_at(buf, at)?;
        lock(&self.log).record_write(at, n as u64);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for ImageWindow {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        match target {
            Some(n) if n <= self.len => {
                self.pos = n;
                Ok(n)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "refused to seek to {pos:?} outside the {}-byte FAT partition window",
                    self.len
                ),
            )),
        }
    }
}

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
    raw: RawDirs,
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

/// Size of a boot sector, the least a FAT file system can be.
const BOOT_SECTOR_LEN: usize = 512;

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
        let geometry = Geometry::read(&file, offset, len).context(what)?;
        let log: Arc<Mutex<IoLog>> = Arc::default();
        let raw = RawDirs {
            file: file.try_clone().context(what)?,
            offset,
            len,
            geometry,
            log: Arc::clone(&log),
        };
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
        if geometry.fs_len > len {
            // Dropping `fs` would unmount it, which writes only if something was changed: nothing was.
            crate::bail!(
                "{}: the file system claims {} bytes, more than its partition",
                what(),
                geometry.fs_len
            );
        }
        Ok(FatFs {
            fs,
            raw,
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
        let written = self.run(
            || self.place(path),
            |fs| write_at_path(fs, &self.raw, &rel, data),
        );
        match written {
            Err(e) if e.message().contains(NO_SPACE) => Err(self.no_space(path, data.len() as u64)),
            other => other,
        }
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
        lock(&self.log).written.clone()
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
        let ranges = lock(&log).written.clone();
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
fn write_at_path(
    fs: &FileSystem<ImageWindow>,
    raw: &RawDirs,
    rel: &str,
    data: &[u8],
) -> io::Result<()> {
    let (parents, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let mut dir = fs.root_dir();
    for component in parents.split('/').filter(|c| !c.is_empty()) {
        dir = match dir.open_dir(component) {
            Ok(existing) => existing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let created = dir.create_dir(component)?;
                raw.fix_dot_entries(&created)?;
                created
            }
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

/// The layout facts of a FAT file system that the raw directory repair needs, from its BPB.
#[derive(Clone, Copy, Debug, Default)]
struct Geometry {
    /// Size the file system claims (total sectors times sector size).
    fs_len: u64,
    /// Offset of cluster 2, the first data cluster, from the start of the file system.
    first_data_byte: u64,
    /// Bytes per cluster.
    cluster_size: u64,
    /// First cluster of the root directory on FAT32, 0 on FAT12/16.
    root_cluster: u32,
}

impl Geometry {
    /// Reads the boot sector at `offset`. Fields are taken as they are: the result only means
    /// something once `fatfs` has accepted the same sector (it checks every field used here).
    fn read(file: &File, offset: u64, len: u64) -> io::Result<Geometry> {
        if len < BOOT_SECTOR_LEN as u64 {
            return Ok(Geometry::default());
        }
        let mut b = [0u8; BOOT_SECTOR_LEN];
        file.read_exact_at(&mut b, offset)?;
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let sector = u16_at(11);
        let fat32 = u16_at(22) == 0;
        let sectors = if u16_at(19) != 0 {
            u16_at(19)
        } else {
            u64::from(u32_at(32))
        };
        let fat_sectors = if fat32 {
            u64::from(u32_at(36))
        } else {
            u16_at(22)
        };
        let root_dir_sectors = (u16_at(17) * 32).div_ceil(sector.max(1));
        let first_data_sector = u16_at(14) + u64::from(b[16]) * fat_sectors + root_dir_sectors;
        Ok(Geometry {
            fs_len: sector * sectors,
            first_data_byte: first_data_sector * sector,
            cluster_size: sector * u64::from(b[13]),
            root_cluster: if fat32 { u32_at(44) } else { 0 },
        })
    }
}

/// Size of one directory entry.
const DIR_ENTRY: usize = 32;

/// Direct access to directory clusters, to repair what `fatfs` 0.3.6 gets wrong.
///
/// `Dir::create_dir` of fatfs 0.3.6 writes a long-name entry before each of the `.` and `..`
/// entries of a new directory, so `.` is not in slot 0 and `..` not in slot 1 as FAT requires
/// (`fsck.vfat` rejects it, and drivers look for them there), and on FAT32 `..` of a directory
/// in the root names the root's cluster instead of 0. [`RawDirs::fix_dot_entries`] rewrites
/// the first four slots of a new directory to the correct `.`, `..`, end-of-directory.
#[derive(Debug)]
struct RawDirs {
    file: File,
    offset: u64,
    len: u64,
    geometry: Geometry,
    log: Arc<Mutex<IoLog>>,
}

impl RawDirs {
    /// Repairs the `.` and `..` entries of `dir`, a directory `fatfs` has just created.
    /// Does nothing if they are already in place; refuses any other layout.
    fn fix_dot_entries(&self, dir: &fatfs::Dir<'_, ImageWindow>) -> io::Result<()> {
        let dot = match dir.iter().next() {
            Some(entry) => entry?,
            None => return Err(io::Error::other("the new directory has no `.` entry")),
        };
        let cluster = first_cluster_of(&format!("{dot:?}"))?;
        let g = self.geometry;
        let start = u64::from(cluster)
            .checked_sub(2)
            .map(|index| g.first_data_byte + index * g.cluster_size)
            .filter(|&start| start + (4 * DIR_ENTRY) as u64 <= self.len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the new directory's cluster {cluster} is outside the file system"
                ))
            })?;
        let mut slots = [0u8; 4 * DIR_ENTRY];
        self.file.read_exact_at(&mut slots, self.offset + start)?;
        let (name, attr) = (
            |i: usize| &slots[i * DIR_ENTRY..i * DIR_ENTRY + 11],
            |i: usize| slots[i * DIR_ENTRY + 11],
        );
        const LFN: u8 = 0x0F;
        if name(0) == b".          " && name(1) == b"..         " {
            return Ok(());
        }
        if !(attr(0) == LFN
            && name(1) == b".          "
            && attr(2) == LFN
            && name(3) == b"..         ")
        {
            return Err(io::Error::other(
                "unexpected layout of the `.` and `..` entries of a new directory",
            ));
        }
        let mut fixed = [0u8; 4 * DIR_ENTRY];
        fixed[..DIR_ENTRY].copy_from_slice(&slots[DIR_ENTRY..2 * DIR_ENTRY]);
        fixed[DIR_ENTRY..2 * DIR_ENTRY].copy_from_slice(&slots[3 * DIR_ENTRY..]);
        let dotdot = &mut fixed[DIR_ENTRY..2 * DIR_ENTRY];
        let parent = u32::from(u16::from_le_bytes([dotdot[26], dotdot[27]]))
            | (u32::from(u16::from_le_bytes([dotdot[20], dotdot[21]])) << 16);
        if g.root_cluster != 0 && parent == g.root_cluster {
            // FAT: `..` of a directory in the root always says cluster 0.
            dotdot[20..22].fill(0);
            dotdot[26..28].fill(0);
        }
        let at = self.offset + start;
        self.file.write_all_at(&fixed, at)?;
        lock(&self.log).record_write(at, fixed.len() as u64);
        Ok(())
    }
}

/// The first cluster of a directory entry, from `fatfs` 0.3.6's `Debug` output of it (the only
/// place that version shows it): `… first_cluster_hi: H, … first_cluster_lo: L, …`.
fn first_cluster_of(debug: &str) -> io::Result<u32> {
    let field = |name: &str| -> Option<u32> {
        let rest = debug.split_once(&format!("{name}: "))?.1;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (field("first_cluster_hi"), field("first_cluster_lo")) {
        (Some(hi), Some(lo)) => Ok((hi << 16) | lo),
        _ => Err(io::Error::other(
            "cannot find the first cluster of a new directory",
        )),
    }
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("internal panic: {text}")
}

// ---------------------------------------------------------------------------------------------
// Kernel command line
// ---------------------------------------------------------------------------------------------

/// Parameters that the kernel or systemd accept several times, each adding something: a new
/// value is added beside existing ones instead of replacing them.
const MULTI_VALUED_PARAMS: &[&str] = &["console", "systemd.wants", "systemd.mask"];

/// Appends `tokens` to the kernel command line `cmdline`, idempotently.
///
/// Rules:
/// - The result is one line: all lines of `cmdline` are joined, tokens separated by one space;
///   it ends with a newline if `cmdline` did. Double-quoted parts (`foo="a b"`) stay one token.
/// - Each entry of `tokens` may hold several whitespace-separated tokens.
/// - A token already present is not added again.
/// - A `key=value` token replaces the first existing token with the same key (the part before
///   the first `=`) in place, and later tokens with that key are dropped (the kernel would let
///   the last one win anyway) — except for keys given several times on purpose (`console`,
///   `systemd.wants`, `systemd.mask`), where the token is added beside the others.
/// - Other tokens are appended at the end, but before a `--` (what follows `--` belongs to
///   init and is neither matched nor changed).
pub fn cmdline_append(cmdline: &str, tokens: &[String]) -> String {
    let mut kernel = split_cmdline(cmdline);
    let init = match kernel.iter().position(|t| t == "--") {
        Some(at) => kernel.split_off(at),
        None => Vec::new(),
    };
    for token in tokens.iter().flat_map(|t| split_cmdline(t)) {
        add_cmdline_token(&mut kernel, token);
    }
    kernel.extend(init);
    let mut line = kernel.join(" ");
    if cmdline.ends_with('\n') {
        line.push('\n');
    }
    line
}

/// Adds one token to the kernel part of a command line following [`cmdline_append`]'s rules.
fn add_cmdline_token(kernel: &mut Vec<String>, token: String) {
    if kernel.contains(&token) {
        return;
    }
    let key = cmdline_key(&token);
    if !token.contains('=') || MULTI_VALUED_PARAMS.contains(&key) {
        kernel.push(token);
        return;
    }
    match kernel
        .iter()
        .position(|t| t.contains('=') && cmdline_key(t) == key)
    {
        Some(first) => {
            let mut index = 0;
            kernel.retain(|t| {
                let keep = index <= first || !(t.contains('=') && cmdline_key(t) == key);
                index += 1;
                keep
            });
            kernel[first] = token;
        }
        None => kernel.push(token),
    }
}

/// The parameter name of a command-line token: the part before the first `=`.
fn cmdline_key(token: &str) -> &str {
    token.split_once('=').map_or(token, |(key, _)| key)
}

/// Splits a command line into tokens at whitespace outside double quotes.
fn split_cmdline(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c.is_whitespace() && !quoted {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

// ---------------------------------------------------------------------------------------------
// Raspberry Pi config.txt
// ---------------------------------------------------------------------------------------------

/// Keys that config.txt takes several times, each line adding something (`dtoverlay=a` and
/// `dtoverlay=b` load both): for these a line is only added if the same line is not there yet.
const CONFIG_TXT_ADDITIVE_KEYS: &[&str] = &["dtoverlay", "dtparam", "include", "gpio"];

/// Sets `key=value` lines in a Raspberry Pi `config.txt`, idempotently.
///
/// Rules:
/// - Lines before any section and lines in `[all]` sections are unconditional; lines under any
///   other filter (`[pi4]`, `[cm4]`, `[none]`, …) are conditional and never touched (they may
///   still override the value on the boards they select).
/// - Every uncommented unconditional `key=…` line (spaces around `key` allowed) is rewritten in
///   place as `key=value`.
/// - If there is none, `key=value` is appended at the end of the file; if the file ends inside
///   a conditional section, an `[all]` line is added first.
/// - For keys that add rather than set (`dtoverlay`, `dtparam`, `include`, `gpio`), nothing is
///   replaced: the line is appended unless the same unconditional `key=value` line exists.
/// - Comments, other lines and line endings (LF or CRLF) are kept; the result ends with a line
///   ending if anything was appended. Line breaks inside keys or values become spaces.
pub fn config_txt_set(config: &str, pairs: &[(String, String)]) -> String {
    let eol = if config.contains("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut lines: Vec<String> = config.lines().map(str::to_string).collect();
    let ends_with_eol = config.ends_with('\n');
    let mut appended = false;
    for (key, value) in pairs {
        let key = one_line(key);
        let key = key.trim();
        let line = format!("{key}={}", one_line(value));
        appended |= set_config_line(&mut lines, key, &line);
    }
    let mut text = lines.join(eol);
    if (ends_with_eol || appended) && !lines.is_empty() {
        text.push_str(eol);
    }
    text
}

/// Applies one `key=value` to the lines of a config.txt; returns whether a line was appended.
fn set_config_line(lines: &mut Vec<String>, key: &str, line: &str) -> bool {
    let unconditional: Vec<usize> = unconditional_lines(lines)
        .into_iter()
        .filter(|&i| config_key(&lines[i]) == Some(key))
        .collect();
    let additive = CONFIG_TXT_ADDITIVE_KEYS.contains(&key);
    if additive && unconditional.iter().any(|&i| lines[i].trim() == line) {
        return false;
    }
    if !additive && !unconditional.is_empty() {
        for i in unconditional {
            line.clone_into(&mut lines[i]);
        }
        return false;
    }
    if ends_in_conditional_section(lines) {
        lines.push("[all]".to_string());
    }
    lines.push(line.to_string());
    true
}

/// Indices of the lines that apply to every board: before any section or inside `[all]`.
fn unconditional_lines(lines: &[String]) -> Vec<usize> {
    let mut in_all = true;
    let mut result = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match section_name(line) {
            Some(name) => in_all = name.eq_ignore_ascii_case("all"),
            None if in_all => result.push(i),
            None => {}
        }
    }
    result
}

/// Whether the last section header of the file is a conditional one.
fn ends_in_conditional_section(lines: &[String]) -> bool {
    lines
        .iter()
        .rev()
        .find_map(|l| section_name(l))
        .is_some_and(|name| !name.eq_ignore_ascii_case("all"))
}

/// The filter name of a `[section]` line.
fn section_name(line: &str) -> Option<&str> {
    let trimmed = line.trim();
    trimmed
        .strip_prefix('[')?
        .split_once(']')
        .map(|(name, _)| name.trim())
}

/// The key of an uncommented `key=value` line.
fn config_key(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    trimmed.split_once('=').map(|(key, _)| key.trim())
}

/// `text` with line breaks replaced by spaces, so one value stays one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn window_refuses_to_leave_its_range_and_records_writes() {
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(&[0xAA; 100]).unwrap();
        let mut window = ImageWindow::new(tmp.try_clone().unwrap(), 10, 20).unwrap();
        assert!(window.seek(SeekFrom::Start(21)).is_err());
        assert!(window.seek(SeekFrom::Current(-1)).is_err());
        assert_eq!(window.seek(SeekFrom::End(-4)).unwrap(), 16);
        assert!(
            window.write(&[1; 5]).is_err(),
            "a write crossing the end must be refused"
        );
        window.write_all(&[1; 4]).unwrap();
        let mut rest = Vec::new();
        assert_eq!(window.read_to_end(&mut rest).unwrap(), 0);
        window.seek(SeekFrom::Start(0)).unwrap();
        window.write_all(&[2; 2]).unwrap();
        assert_eq!(window.written_ranges().as_slice(), &[(10, 2), (26, 4)]);
        let mut all = Vec::new();
        tmp.seek(SeekFrom::Start(0)).unwrap();
        tmp.read_to_end(&mut all).unwrap();
        assert!(all[..10].iter().chain(&all[30..]).all(|&b| b == 0xAA));
        assert_eq!(&all[26..30], &[1; 4]);
        window.seek(SeekFrom::Start(0)).unwrap();
        let mut inside = Vec::new();
        window.read_to_end(&mut inside).unwrap();
        assert_eq!(inside.len(), 20);
    }

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

    #[test]
    fn cmdline_appends_once_and_stays_one_line() {
        let base = "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootwait\n";
        let once = cmdline_append(base, &strings(&["quiet", "systemd.run=/x.sh"]));
        assert_eq!(once, "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootwait quiet systemd.run=/x.sh\n");
        assert_eq!(
            cmdline_append(&once, &strings(&["quiet", "systemd.run=/x.sh"])),
            once
        );
        assert_eq!(once.lines().count(), 1);
        let no_newline = cmdline_append("a b", &strings(&["c"]));
        assert_eq!(no_newline, "a b c");
    }

    #[test]
    fn cmdline_replaces_keys_but_keeps_multi_valued_ones() {
        let base = "root=/dev/sda2 quiet root=/dev/sdb1 console=tty1\n";
        let out = cmdline_append(base, &strings(&["root=LABEL=RASPIROOT", "console=ttyAMA0"]));
        assert_eq!(
            out,
            "root=LABEL=RASPIROOT quiet console=tty1 console=ttyAMA0\n"
        );
        assert_eq!(
            cmdline_append(&out, &strings(&["root=LABEL=RASPIROOT console=ttyAMA0"])),
            out
        );
    }

    #[test]
    fn cmdline_joins_lines_keeps_quotes_and_init_arguments() {
        let base = "a=1\nb=\"x  y\" -- single init=1\n";
        let out = cmdline_append(base, &strings(&["init=/sbin/x", "b=2"]));
        assert_eq!(out, "a=1 b=2 init=/sbin/x -- single init=1\n");
        let quoted = cmdline_append("c=\"p q\"", &strings(&["d"]));
        assert_eq!(quoted, "c=\"p q\" d");
        assert_eq!(cmdline_append("", &strings(&["x"])), "x");
    }

    #[test]
    fn config_txt_replaces_in_place_and_is_idempotent() {
        let base = "# comment\narm_64bit=0\n[pi4]\narm_64bit=0\n[all]\nenable_uart=0\n";
        let out = config_txt_set(base, &pairs(&[("arm_64bit", "1"), ("enable_uart", "1")]));
        assert_eq!(
            out,
            "# comment\narm_64bit=1\n[pi4]\narm_64bit=0\n[all]\nenable_uart=1\n"
        );
        assert_eq!(
            config_txt_set(&out, &pairs(&[("arm_64bit", "1"), ("enable_uart", "1")])),
            out
        );
    }

    #[test]
    fn config_txt_appends_under_all_when_file_ends_in_a_filter() {
        let base = "#enable_uart=1\n[pi4]\nenable_uart=0\n";
        let out = config_txt_set(base, &pairs(&[("enable_uart", "1")]));
        assert_eq!(
            out,
            "#enable_uart=1\n[pi4]\nenable_uart=0\n[all]\nenable_uart=1\n"
        );
        assert_eq!(config_txt_set(&out, &pairs(&[("enable_uart", "1")])), out);
        let plain = config_txt_set("a=1", &pairs(&[("b", "2")]));
        assert_eq!(plain, "a=1\nb=2\n");
        assert_eq!(config_txt_set("", &pairs(&[("b", "2")])), "b=2\n");
    }

    #[test]
    fn config_txt_adds_overlays_beside_others_and_keeps_crlf() {
        let base = "dtoverlay=vc4-kms-v3d\r\n[cm4]\r\notg_mode=1\r\n";
        let out = config_txt_set(
            base,
            &pairs(&[("dtoverlay", "dwc2"), ("dtoverlay", "vc4-kms-v3d")]),
        );
        assert_eq!(
            out,
            "dtoverlay=vc4-kms-v3d\r\n[cm4]\r\notg_mode=1\r\n[all]\r\ndtoverlay=dwc2\r\n"
        );
        assert_eq!(config_txt_set(&out, &pairs(&[("dtoverlay", "dwc2")])), out);
        let injected = config_txt_set("", &pairs(&[("a", "1\nb=2")]));
        assert_eq!(injected.lines().count(), 1);
    }
}
