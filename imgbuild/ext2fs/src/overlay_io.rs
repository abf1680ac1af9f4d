//! An I/O manager, written in Rust, whose channels read and write an [`Overlay`] (a
//! copy-on-write view of a base image, crate `imgbuild-overlay`) instead of a file: reads fall
//! through to the read-only base, writes land in the overlay file and are recorded as byte
//! ranges of the image (for [`crate::Fs::close_tracked`]).
//!
//! What every entry point does follows e2fsprogs' own managers (lib/ext2fs/unix_io.c,
//! test_io.c, io_manager.c of e2fsprogs 1.47, read for this):
//! * `read_blk`/`read_blk64`, `write_blk`/`write_blk64`: `count` blocks of the channel's block
//!   size at `block * block_size + offset`; a negative `count` is a byte count. A short read
//!   zero-fills the rest and returns `EXT2_ET_SHORT_READ`, a failed write `EXT2_ET_SHORT_WRITE`
//!   (or the errno); both go through the channel's `read_error`/`write_error` hook when one is
//!   set, as unix_io does.
//! * `write_byte`: `count` bytes at the byte offset `offset` (plus the channel offset): what
//!   `ext2fs_flush` uses to rewrite only the changed parts of the superblock.
//! * `set_option`: `offset=N` (what `ext2fs_open2`'s `io_options` string sets through
//!   `io_channel_set_options`); any other option is `EXT2_ET_INVALID_ARGUMENT`, like unix_io.
//! * `set_blksize` sets the block size; `flush` has nothing to do (no cache: every write is a
//!   `pwrite` to the overlay file); `get_stats` returns bytes read and written.
//! * `zeroout` writes zero blocks into the overlay (unix_io punches or zeroes a range of the
//!   file instead; here the base must never change, so it is an ordinary write).
//!   `discard` is `EXT2_ET_UNIMPLEMENTED` (after a discard the content is unspecified, so
//!   leaving it is correct; io_manager.c returns the same when a manager has none).
//!   `cache_readahead` does nothing (the kernel reads ahead in both files).
//!
//! The C table and entry points are [`crate::io_manager`]'s; the channel state here implements
//! its `Backend` trait.
//!
//! The overlay reaches the manager's `open` through a registry: [`Registration`] files it under
//! a unique name, which is passed to `ext2fs_open2` as the device name.

use std::cell::Cell;
use std::ffi::{c_int, c_ulong, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use imgbuild_overlay::Overlay;

use crate::io_manager::{new_channel, transfer_bytes, Backend, Stats, Table, Transfer};
use crate::raw::{code, Code};
use crate::sys;
use crate::tracking::Ranges;

/// An overlay waiting for the manager's `open`.
struct Pending {
    name: CString,
    overlay: Arc<Overlay>,
    ranges: Ranges,
}

/// Overlays registered for an `ext2fs_open2` call that has not opened them yet.
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());
/// Makes registration names unique within the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn pending() -> std::sync::MutexGuard<'static, Vec<Pending>> {
    PENDING.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An overlay filed under a unique device name for one `ext2fs_open2` call; the manager's
/// `open` takes it out of the registry. Dropping the registration removes it if `open` never
/// ran (the open failed early).
pub(crate) struct Registration {
    name: CString,
}

impl Registration {
    /// Files `overlay`; the channel opened from it records its writes into `ranges`.
    pub(crate) fn new(overlay: Arc<Overlay>, ranges: Ranges) -> Registration {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Digits and ASCII only: never contains a NUL byte.
        let name = CString::new(format!("imgbuild-overlay:{}:{id}", std::process::id()))
            .unwrap_or_default();
        pending().push(Pending {
            name: name.clone(),
            overlay,
            ranges,
        });
        Registration { name }
    }

    /// The device name to pass to `ext2fs_open2`.
    pub(crate) fn name(&self) -> &CStr {
        &self.name
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        pending().retain(|p| p.name != self.name);
    }
}

/// The manager to pass to `ext2fs_open2` together with a [`Registration`]'s name.
pub(crate) fn manager() -> sys::io_manager {
    MANAGER.ptr()
}

static MANAGER: Table = Table::of::<Channel>(c"imgbuild overlay I/O manager");

/// The private data of a channel.
struct Channel {
    overlay: Arc<Overlay>,
    /// Where the file system starts in the image (`offset=` option).
    offset: Cell<u64>,
    writable: bool,
    ranges: Ranges,
    stats: Stats,
    /// The channel's `name` points into this string.
    name: CString,
}

impl Channel {
    /// Writes `data` at image offset `pos` into the overlay and records it.
    fn write_at(&self, data: &[u8], pos: u64) -> Result<(), Code> {
        if !self.writable {
            return Err(code(sys::EXT2_ET_RO_FILSYS));
        }
        self.overlay
            .write_at(data, pos)
            .map_err(|e| errno_or(&e, sys::EXT2_ET_SHORT_WRITE))?;
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pos, data.len() as u64);
        self.stats.add(0, data.len() as u64);
        Ok(())
    }

    /// Image offset of `block` (blocks of `block_size` bytes).
    fn position(&self, block: u64, block_size: u64) -> Result<u64, Code> {
        block
            .checked_mul(block_size)
            .and_then(|p| p.checked_add(self.offset.get()))
            .ok_or(code(sys::EXT2_ET_LLSEEK_FAILED))
    }

    /// Image offset and byte length of the transfer `t`.
    ///
    /// # Safety
    /// `channel` is the live channel whose private data is `self`.
    unsafe fn extent<D>(
        &self,
        channel: sys::io_channel,
        t: &Transfer<D>,
    ) -> Result<(u64, usize), Code> {
        // SAFETY: caller's contract.
        let bs = unsafe { block_size(channel) }?;
        let size = transfer_bytes(i64::from(t.count), bs);
        let pos = self.position(t.block.get(), bs)?;
        let size = usize::try_from(size).map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))?;
        Ok((pos, size))
    }

    /// Runs `op` with the image offset and byte length of the transfer `t` unless it is empty.
    ///
    /// # Safety
    /// `channel` is the live channel whose private data is `self`.
    unsafe fn on_extent<D>(
        &self,
        channel: sys::io_channel,
        t: &Transfer<D>,
        op: impl FnOnce(u64, usize) -> Code,
    ) -> Code {
        // SAFETY: caller's contract.
        match unsafe { self.extent(channel, t) } {
            Ok((_, 0)) => 0,
            Ok((pos, size)) => op(pos, size),
            Err(rc) => rc,
        }
    }

    /// Reads the transfer `t` (`size` bytes at image offset `pos`, see the module
    /// documentation).
    ///
    /// # Safety
    /// As for [`Backend::read`]; `size` is the transfer's byte length.
    unsafe fn read_blocks(
        &self,
        channel: sys::io_channel,
        t: Transfer<*mut c_void>,
        pos: u64,
        size: usize,
    ) -> Code {
        // SAFETY: caller's contract: `data` is valid for `size` bytes and not aliased during the
        // call.
        let buf = unsafe { std::slice::from_raw_parts_mut(t.data.cast::<u8>(), size) };
        let (actual, rc) = match self.overlay.read_at(buf, pos) {
            Ok(n) if n == size => (n, 0),
            Ok(n) => (n, code(sys::EXT2_ET_SHORT_READ)),
            Err(e) => (0, errno_or(&e, sys::EXT2_ET_SHORT_READ)),
        };
        self.stats.add(actual as u64, 0);
        if rc == 0 {
            return 0;
        }
        buf[actual..].fill(0);
        let (block, actual) = (t.block.get() as c_ulong, c_int::try_from(actual));
        let actual = actual.unwrap_or(c_int::MAX);
        // SAFETY: live channel; the hook (set by e.g. e2fsck) gets unix_io's arguments.
        match unsafe { (*channel).read_error } {
            Some(hook) => unsafe { hook(channel, block, t.count, t.data, size, actual, rc) },
            None => rc,
        }
    }

    /// Writes the transfer `t` (`size` bytes at image offset `pos`, see the module
    /// documentation).
    ///
    /// # Safety
    /// As for [`Backend::write`]; `size` is the transfer's byte length.
    unsafe fn write_blocks(
        &self,
        channel: sys::io_channel,
        t: Transfer<*const c_void>,
        pos: u64,
        size: usize,
    ) -> Code {
        // SAFETY: caller's contract: `data` is valid for `size` bytes.
        let buf = unsafe { std::slice::from_raw_parts(t.data.cast::<u8>(), size) };
        let Err(rc) = self.write_at(buf, pos) else {
            return 0;
        };
        let block = t.block.get() as c_ulong;
        // SAFETY: live channel; the hook gets unix_io's arguments.
        match unsafe { (*channel).write_error } {
            Some(hook) => unsafe { hook(channel, block, t.count, t.data, size, 0, rc) },
            None => rc,
        }
    }
}

/// The block size of `channel` in bytes.
///
/// # Safety
/// `channel` is a live channel.
unsafe fn block_size(channel: sys::io_channel) -> Result<u64, Code> {
    // SAFETY: caller's contract.
    let bs = unsafe { (*channel).block_size };
    u64::try_from(bs).map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))
}

/// The errno of an I/O error as an error code, or `fallback`.
fn errno_or(e: &std::io::Error, fallback: u32) -> Code {
    match e.raw_os_error() {
        Some(errno) if errno > 0 => Code::from(errno),
        _ => code(fallback),
    }
}

impl Backend for Channel {
    const TABLE: &'static Table = &MANAGER;

    fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Takes the overlay registered under `name` out of the registry.
    fn open(name: &CStr, flags: c_int) -> Result<sys::io_channel, Code> {
        let found = {
            let mut list = pending();
            list.iter()
                .position(|p| p.name.as_c_str() == name)
                .map(|i| list.swap_remove(i))
        };
        let Some(Pending {
            name,
            overlay,
            ranges,
        }) = found
        else {
            return Err(code(sys::EXT2_ET_BAD_DEVICE_NAME));
        };
        let state = Channel {
            overlay,
            offset: Cell::new(0),
            writable: flags & sys::IO_FLAG_RW as c_int != 0,
            ranges,
            stats: Stats::new(),
            name,
        };
        let fields = sys::struct_io_channel {
            // libext2fs only reads the name (for messages). It points into the string's heap
            // buffer, which moving the state into its box does not move: it stays valid as
            // long as the state.
            name: state.name.as_ptr().cast_mut(),
            block_size: 1024,
            ..Default::default()
        };
        Ok(new_channel(state, fields))
    }

    unsafe fn set_blksize(&self, channel: sys::io_channel, blksize: c_int) -> Code {
        if blksize <= 0 {
            return code(sys::EXT2_ET_INVALID_ARGUMENT);
        }
        // SAFETY: live channel (trait contract).
        unsafe { (*channel).block_size = blksize };
        0
    }

    unsafe fn read(&self, channel: sys::io_channel, t: Transfer<*mut c_void>) -> Code {
        // SAFETY: trait contract (as `read_blocks` requires it).
        unsafe {
            self.on_extent(channel, &t, |pos, size| {
                self.read_blocks(channel, t, pos, size)
            })
        }
    }

    unsafe fn write(&self, channel: sys::io_channel, t: Transfer<*const c_void>) -> Code {
        // SAFETY: trait contract (as `write_blocks` requires it).
        unsafe {
            self.on_extent(channel, &t, |pos, size| {
                self.write_blocks(channel, t, pos, size)
            })
        }
    }

    unsafe fn write_byte(&self, offset: c_ulong, count: c_int, data: *const c_void) -> Code {
        let Ok(size) = usize::try_from(count) else {
            return code(sys::EXT2_ET_INVALID_ARGUMENT);
        };
        if size == 0 {
            return 0;
        }
        #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
        let Some(pos) = u64::from(offset).checked_add(self.offset.get()) else {
            return code(sys::EXT2_ET_LLSEEK_FAILED);
        };
        // SAFETY: trait contract: `data` holds `count` readable bytes.
        let buf = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
        match self.write_at(buf, pos) {
            Ok(()) => 0,
            Err(rc) => rc,
        }
    }

    fn set_option(&self, option: &CStr, arg: Option<&CStr>) -> Code {
        if option.to_bytes() != b"offset" {
            return code(sys::EXT2_ET_INVALID_ARGUMENT);
        }
        let Some(offset) = arg.and_then(|a| parse_offset(a.to_str().ok()?)) else {
            return code(sys::EXT2_ET_INVALID_ARGUMENT);
        };
        self.offset.set(offset);
        0
    }

    unsafe fn zeroout(&self, channel: sys::io_channel, block: u64, count: u64) -> Code {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        // SAFETY: live channel (trait contract).
        let bs = match unsafe { block_size(channel) } {
            Ok(bs) => bs,
            Err(rc) => return rc,
        };
        let (Ok(mut pos), Some(len)) = (self.position(block, bs), count.checked_mul(bs)) else {
            return code(sys::EXT2_ET_LLSEEK_FAILED);
        };
        let end = pos.saturating_add(len);
        while pos < end {
            let n = (end - pos).min(ZEROS.len() as u64) as usize;
            if let Err(rc) = self.write_at(&ZEROS[..n], pos) {
                return rc;
            }
            pos += n as u64;
        }
        0
    }
}

/// An `offset=` value as unix_io reads it (`strtoull(arg, .., 0)`): decimal, or hex after
/// `0x`. Octal (leading `0`) is read as decimal, which only differs for values nobody passes.
fn parse_offset(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_like_strtoull() {
        assert_eq!(parse_offset("4194304"), Some(4 << 20));
        assert_eq!(parse_offset("0x400000"), Some(4 << 20));
        assert_eq!(parse_offset(""), None);
        assert_eq!(parse_offset("-1"), None);
        assert_eq!(parse_offset("12abc"), None);
    }
}
