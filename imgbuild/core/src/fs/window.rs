//! The I/O window `fatfs` works through: a `Read + Write + Seek` view of one partition of the
//! image file that refuses to leave it, records every byte range written (for the packer), and
//! detects directory cluster-chain loops of a corrupt file system (for [`super::fat`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::ByteRanges;

/// What the window did, shared between an [`ImageWindow`] (owned by `fatfs`) and its [`FatFs`].
#[derive(Debug, Default)]
pub(crate) struct IoLog {
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
    /// The byte ranges written so far.
    pub(crate) fn written(&self) -> &ByteRanges {
        &self.written
    }

    /// Records a write of `len` bytes at `start`.
    pub(crate) fn record_write(&mut self, start: u64, len: u64) {
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
    pub(crate) fn start_operation(&mut self) {
        self.small_reads.clear();
    }
}

/// Locks the shared log; a poisoned lock only means another thread panicked while holding it,
/// and the log stays meaningful, so it is used anyway.
pub(crate) fn lock(log: &Mutex<IoLog>) -> MutexGuard<'_, IoLog> {
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

    pub(crate) fn with_log(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
