//! A copy-on-write view of a raw disk image.
//!
//! A build used to copy the whole (cached, raw) base image into a working copy before writing a
//! few MiB into it. An [`Overlay`] makes that copy unnecessary: the base file is opened
//! read-only and never changed; every write goes to a sparse *overlay file* of the same length
//! (mode `0600`, next to the build's other scratch files) and its byte range is recorded; a read
//! returns the overlay's bytes where something was written and the base's bytes elsewhere, byte
//! for byte what the same reads would return from a copy that received the same writes.
//!
//! [`Overlay::data_ranges`] is the sparse map such a copy would have (the base's data extents
//! plus the written ranges rounded out to 4 KiB blocks), so a block map made from it is the one
//! made from a real copy; [`Overlay::materialize`] writes that copy when one is needed
//! (uncompressed output), base extents by the kernel (`copy_file_range`).
//!
//! The readers of an image (packer, block map, FAT window) take any [`ImageRead`] (a plain
//! [`File`] or an [`Overlay`]); writers take an [`ImageWrite`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use imgbuild_ranges::ByteRanges;

/// Block size of the sparse map: written ranges are rounded out to it in
/// [`Overlay::data_ranges`], as a file system allocates whole blocks for a write into a hole
/// (4 KiB on ext4, XFS, btrfs and tmpfs on the usual page size).
pub const MAP_BLOCK: u64 = 4096;

/// Largest piece read or copied at once while materializing.
const PIECE: u64 = 1 << 20;

/// An error of this crate: what was being done, to which file, and why.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation on a file failed.
    Io {
        /// What was being done (`"opening the base image"`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl Error {
    fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
        move |source| Error::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, path, source } => {
                write!(f, "{what} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
        }
    }
}

/// Positioned reads of a disk image: a plain [`File`] or an [`Overlay`]. Implementations are
/// shared between threads (a packer reads chunks in parallel).
pub trait ImageRead: Send + Sync {
    /// Length of the image in bytes.
    fn image_len(&self) -> io::Result<u64>;

    /// Fills `buf` with the bytes at `offset`; reading past the end is an error
    /// ([`io::ErrorKind::UnexpectedEof`]).
    fn read_image_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The sparse map: byte ranges that are data (everything else reads as zeros and is a
    /// hole), sorted and merged, within `0..image_len()`.
    fn image_data(&self) -> io::Result<ByteRanges>;

    /// Whether the `len` bytes at `offset` lie entirely in a hole (so read as zeros without
    /// being read). `false` when this cannot be told.
    fn image_hole(&self, offset: u64, len: u64) -> bool;
}

/// Positioned writes to a disk image.
pub trait ImageWrite: ImageRead {
    /// Writes all of `buf` at `offset`.
    fn write_image_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl ImageRead for File {
    fn image_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_image_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn image_data(&self) -> io::Result<ByteRanges> {
        data_extents(self, self.image_len()?)
    }

    fn image_hole(&self, offset: u64, len: u64) -> bool {
        file_hole(self, offset, len)
    }
}

impl ImageWrite for File {
    fn write_image_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
}

/// Whether `[offset, offset + len)` of `file` is in a hole. File systems without `SEEK_DATA`
/// report everything as data, which is merely slower.
fn file_hole(file: &File, offset: u64, len: u64) -> bool {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
        Ok(data) => data >= offset.saturating_add(len),
        Err(e) => e == rustix::io::Errno::NXIO,
    }
}

/// The data extents of the first `len` bytes of `file` (`SEEK_DATA`/`SEEK_HOLE`); all of it
/// when the file system cannot tell.
pub fn data_extents(file: &File, len: u64) -> io::Result<ByteRanges> {
    use rustix::fs::{seek, SeekFrom};
    let mut out = ByteRanges::new();
    let mut pos = 0;
    while pos < len {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if pos == 0 => {
                // No SEEK_DATA support: everything is data.
                out.insert(0, len);
                break;
            }
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = seek(file, SeekFrom::Hole(start))?.min(len);
        if end <= start {
            return Err(io::Error::other(format!(
                "the sparse map changed while it was read (hole at {end} before data at {start})"
            )));
        }
        out.insert(start, end - start);
        pos = end;
    }
    Ok(out)
}

/// A copy-on-write view of a base image; see the crate documentation.
///
/// Reads and writes take `&self` (positioned I/O), so an overlay can be shared between the
/// file-system writers and, later, the packer's threads; the written ranges are kept behind a
/// lock. The overlay file is removed when the value is dropped.
pub struct Overlay {
    base: File,
    base_path: PathBuf,
    file: File,
    path: PathBuf,
    len: u64,
    base_data: ByteRanges,
    written: Mutex<ByteRanges>,
}

impl fmt::Debug for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overlay")
            .field("base", &self.base_path)
            .field("overlay", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Overlay {
    /// Opens `base` read-only and creates the overlay file `overlay` (which must not exist:
    /// mode `0600`, sparse, as long as the base). The base is never written.
    pub fn create(base: &Path, overlay: &Path) -> Result<Overlay, Error> {
        let base_file = File::open(base).map_err(Error::io("opening the base image", base))?;
        let len = base_file
            .metadata()
            .map_err(Error::io("reading the size of the base image", base))?
            .len();
        let base_data = data_extents(&base_file, len)
            .map_err(Error::io("reading the sparse map of the base image", base))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(overlay)
            .map_err(Error::io("creating the overlay file", overlay))?;
        let made = Overlay {
            base: base_file,
            base_path: base.to_path_buf(),
            file,
            path: overlay.to_path_buf(),
            len,
            base_data,
            written: Mutex::new(ByteRanges::new()),
        };
        // From here on, dropping `made` removes the file again.
        made.file
            .set_len(len)
            .map_err(Error::io("sizing the overlay file", overlay))?;
        Ok(made)
    }

    /// Length of the image in bytes (the base's).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base image file.
    pub fn base_path(&self) -> &Path {
        &self.base_path
    }

    /// The overlay file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, ByteRanges> {
        // The ranges stay consistent even if a writer panicked while holding the lock.
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every byte range written so far.
    pub fn written(&self) -> ByteRanges {
        self.lock().clone()
    }

    /// Reads into `buf` from `offset`, like `pread`: returns the number of bytes read, fewer
    /// than `buf.len()` only at the end of the image (0 at or past it). Written bytes come from
    /// the overlay, the others from the base.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let left = self.len.saturating_sub(offset);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        let written = self.lock().intersection(offset, n as u64);
        let mut at = offset;
        let end = offset + n as u64;
        // Every bound below lies in offset..=end, and end - offset == n <= buf.len().
        for (w_off, w_len) in written.iter().chain(std::iter::once((end, 0))) {
            if at < w_off {
                let (a, b) = ((at - offset) as usize, (w_off - offset) as usize);
                self.base.read_exact_at(&mut buf[a..b], at)?;
            }
            if w_len > 0 {
                let (a, b) = ((w_off - offset) as usize, (w_off + w_len - offset) as usize);
                self.file.read_exact_at(&mut buf[a..b], w_off)?;
            }
            at = w_off + w_len;
        }
        Ok(n)
    }

    /// Writes all of `buf` at `offset` into the overlay and records the range. Writing past the
    /// end of the image is refused ([`io::ErrorKind::InvalidInput`]): the image has the base's
    /// length.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "refused to write {} bytes at byte {offset}: past the end of the {}-byte image",
                    buf.len(),
                    self.len
                ),
            ));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(buf, offset)?;
        self.lock().insert(offset, buf.len() as u64);
        Ok(())
    }

    /// The sparse map a copy of the base would have after the same writes: the base's data
    /// extents plus every written range rounded out to [`MAP_BLOCK`] (clipped to the image).
    pub fn data_ranges(&self) -> ByteRanges {
        let mut out = self.base_data.clone();
        for (o, l) in self.lock().iter() {
            let start = o - o % MAP_BLOCK;
            let end = o
                .saturating_add(l)
                .div_ceil(MAP_BLOCK)
                .saturating_mul(MAP_BLOCK)
                .min(self.len);
            out.insert(start, end - start);
        }
        out
    }

    /// Writes the image to `dest` (created or truncated): a sparse file with the base's data
    /// extents (copied by the kernel where it can) and then the written ranges, so its bytes are
    /// the overlay's and its sparse map is [`Overlay::data_ranges`]. The overlay is unchanged.
    pub fn materialize(&self, dest: &Path) -> Result<(), Error> {
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dest)
            .map_err(Error::io("creating", dest))?;
        out.set_len(self.len).map_err(Error::io("sizing", dest))?;
        let mut in_kernel = true;
        let mut buf = Vec::new();
        for (o, l) in self.base_data.iter() {
            let mut at = o;
            let end = o + l;
            if in_kernel {
                match copy_in_kernel(&self.base, &out, at, end) {
                    Ok(()) => continue,
                    Err((done, e)) if unsupported(&e) => {
                        at = done;
                        in_kernel = false;
                    }
                    Err((_, e)) => return Err(Error::io("copying the base image into", dest)(e)),
                }
            }
            copy_by_reading(&self.base, &out, at, end, &mut buf)
                .map_err(Error::io("copying the base image into", dest))?;
        }
        for (o, l) in self.written().iter() {
            copy_by_reading(&self.file, &out, o, o + l, &mut buf)
                .map_err(Error::io("copying the written ranges into", dest))?;
        }
        Ok(())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // Best effort: the scratch directory holding it is removed after the build anyway.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ImageRead for Overlay {
    fn image_len(&self) -> io::Result<u64> {
        Ok(self.len)
    }

    fn read_image_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_at(buf, offset)? < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at byte {offset} past the end of the {}-byte image",
                    buf.len(),
                    self.len
                ),
            ));
        }
        Ok(())
    }

    fn image_data(&self) -> io::Result<ByteRanges> {
        Ok(self.data_ranges())
    }

    fn image_hole(&self, offset: u64, len: u64) -> bool {
        !self.base_data.overlaps(offset, len) && !self.lock().overlaps(offset, len)
    }
}

impl ImageWrite for Overlay {
    fn write_image_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }
}

/// Whether a `copy_file_range` failure means "not possible here" (fall back to reading).
fn unsupported(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let raw = e.raw_os_error();
    [Errno::XDEV, Errno::NOSYS, Errno::OPNOTSUPP, Errno::INVAL]
        .iter()
        .any(|errno| raw == Some(errno.raw_os_error()))
}

/// Copies `[at, end)` of `from` to the same offsets of `to` with `copy_file_range`; on failure
/// returns how far it got and why.
fn copy_in_kernel(from: &File, to: &File, mut at: u64, end: u64) -> Result<(), (u64, io::Error)> {
    while at < end {
        let (mut src, mut dst) = (at, at);
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(from, Some(&mut src), to, Some(&mut dst), want) {
            Ok(0) => {
                return Err((
                    at,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the base image is shorter"),
                ))
            }
            Ok(n) => at += n as u64,
            Err(e) => return Err((at, e.into())),
        }
    }
    Ok(())
}

/// Copies `[at, end)` of `from` to the same offsets of `to` through `buf`.
fn copy_by_reading(
    from: &File,
    to: &File,
    mut at: u64,
    end: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    while at < end {
        let n = (end - at).min(PIECE) as usize;
        buf.resize(n, 0);
        from.read_exact_at(buf, at)?;
        to.write_all_at(buf, at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random sequence (xorshift64).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A sparse base of `len` bytes: data extents of pseudo-random bytes, holes between.
    fn sparse_base(path: &Path, len: u64, rng: &mut Rng) -> Vec<u8> {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        let mut model = vec![0u8; len as usize];
        for _ in 0..6 {
            let start = rng.below(len / MAP_BLOCK) * MAP_BLOCK;
            let n = (1 + rng.below(5)) * MAP_BLOCK;
            let end = (start + n).min(len);
            for b in &mut model[start as usize..end as usize] {
                *b = (rng.next() | 1) as u8;
            }
            f.write_all_at(&model[start as usize..end as usize], start)
                .unwrap();
        }
        model
    }

    #[test]
    fn reads_and_writes_agree_with_an_in_memory_model_and_the_base_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..20 {
            let base = dir.path().join(format!("base{round}"));
            // Lengths that are not block multiples too.
            let len = 64 * 1024 + rng.below(3) * 1000;
            let mut model = sparse_base(&base, len, &mut rng);
            let base_before = std::fs::read(&base).unwrap();
            let ov_path = dir.path().join(format!("overlay{round}"));
            let ov = Overlay::create(&base, &ov_path).unwrap();
            assert_eq!(ov.len(), len);
            let mut expected_written = ByteRanges::new();
            for _ in 0..60 {
                let off = rng.below(len);
                let n = 1 + rng.below(9000.min(len - off));
                if rng.below(2) == 0 {
                    let data: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    ov.write_at(&data, off).unwrap();
                    model[off as usize..(off + n) as usize].copy_from_slice(&data);
                    expected_written.insert(off, n);
                } else {
                    let mut buf = vec![0xEEu8; n as usize + 7];
                    let got = ov.read_at(&mut buf, off).unwrap();
                    let want = (n as usize + 7).min((len - off) as usize);
                    assert_eq!(got, want);
                    assert_eq!(&buf[..got], &model[off as usize..off as usize + got]);
                }
            }
            assert_eq!(ov.written(), expected_written);
            let mut all = vec![0u8; len as usize];
            ov.read_image_at(&mut all, 0).unwrap();
            assert_eq!(all, model);
            assert_eq!(ov.read_at(&mut [0u8; 4], len).unwrap(), 0);
            assert!(ov.read_image_at(&mut [0u8; 4], len - 2).is_err());
            assert!(ov.write_at(&[1, 2], len - 1).is_err());
            assert_eq!(
                ov.written(),
                expected_written,
                "a refused write records nothing"
            );
            // materialized: same bytes, and its real sparse map is the predicted one
            let out = dir.path().join(format!("image{round}"));
            ov.materialize(&out).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), model);
            let real = File::open(&out).unwrap().image_data().unwrap();
            let predicted = ov.data_ranges();
            if real != ByteRanges::from_unsorted(vec![(0, len)]) {
                // (a file system without SEEK_DATA reports everything as data)
                assert_eq!(real, predicted, "round {round}");
            }
            for (o, l) in predicted.iter() {
                assert!(!ov.image_hole(o, l));
            }
            assert_eq!(std::fs::read(&base).unwrap(), base_before);
            drop(ov);
            assert!(
                !ov_path.exists(),
                "the overlay file is removed with the overlay"
            );
        }
    }

    #[test]
    fn the_overlay_file_is_private_and_must_be_new() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, vec![7u8; 10_000]).unwrap();
        let path = dir.path().join("ov");
        let ov = Overlay::create(&base, &path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 10_000);
        let again = Overlay::create(&base, &path).unwrap_err();
        assert!(
            again.to_string().contains("creating the overlay file"),
            "{again}"
        );
        assert!(
            path.exists(),
            "a failed create leaves the existing file alone"
        );
        drop(ov);
        let missing = Overlay::create(&dir.path().join("nope"), &path).unwrap_err();
        assert!(
            missing.to_string().starts_with("opening the base image"),
            "{missing}"
        );
    }
}
