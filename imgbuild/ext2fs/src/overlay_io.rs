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
//! The overlay reaches the manager's `open` through a registry: [`Registration`] files it under
//! a unique name, which is passed to `ext2fs_open2` as the device name.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void, CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use imgbuild_overlay::Overlay;

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
    ptr::addr_of!(MANAGER.0).cast_mut()
}

/// The private data of a channel.
struct Channel {
    overlay: Arc<Overlay>,
    /// Where the file system starts in the image (`offset=` option).
    offset: Cell<u64>,
    writable: bool,
    ranges: Ranges,
    /// Returned by pointer from `get_stats`; hence a `Cell` (the caller reads it later).
    stats: Cell<sys::struct_io_stats>,
    /// The channel's `name` points into this string.
    name: CString,
}

impl Channel {
    fn add_stats(&self, read: u64, written: u64) {
        let mut s = self.stats.get();
        s.bytes_read = s.bytes_read.saturating_add(read);
        s.bytes_written = s.bytes_written.saturating_add(written);
        self.stats.set(s);
    }

    /// Writes `data` at image offset `pos` into the overlay and records it.
    fn write(&self, data: &[u8], pos: u64) -> Result<(), Code> {
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
        self.add_stats(0, data.len() as u64);
        Ok(())
    }
}

/// The errno of an I/O error as an error code, or `fallback`.
fn errno_or(e: &std::io::Error, fallback: u32) -> Code {
    match e.raw_os_error() {
        Some(errno) if errno > 0 => Code::from(errno),
        _ => code(fallback),
    }
}

/// The manager table (`Sync` wrapper: it is never written after start-up).
struct Manager(sys::struct_io_manager);
// SAFETY: the table is immutable; its raw pointers refer to static data and functions.
unsafe impl Sync for Manager {}

static MANAGER: Manager = Manager(sys::struct_io_manager {
    magic: sys::EXT2_ET_MAGIC_IO_MANAGER as Code,
    name: c"imgbuild overlay I/O manager".as_ptr(),
    open: Some(o_open),
    close: Some(o_close),
    set_blksize: Some(o_set_blksize),
    read_blk: Some(o_read_blk),
    write_blk: Some(o_write_blk),
    flush: Some(o_flush),
    write_byte: Some(o_write_byte),
    set_option: Some(o_set_option),
    get_stats: Some(o_get_stats),
    read_blk64: Some(o_read_blk64),
    write_blk64: Some(o_write_blk64),
    discard: Some(o_discard),
    cache_readahead: Some(o_cache_readahead),
    zeroout: Some(o_zeroout),
    reserved: [0; 14],
});

/// The private data of a channel opened by [`o_open`].
///
/// # Safety
/// `channel` must be a channel created by [`o_open`] and not yet closed.
unsafe fn state<'a>(channel: sys::io_channel) -> &'a Channel {
    // SAFETY: guaranteed by the caller; `private_data` was set from `Box<Channel>`.
    unsafe { &*(*channel).private_data.cast::<Channel>() }
}

/// Image offset and byte length of `count` blocks at `block` (negative `count`: bytes).
///
/// # Safety
/// As for [`state`].
unsafe fn extent(channel: sys::io_channel, block: u64, count: c_int) -> Result<(u64, usize), Code> {
    // SAFETY: live channel (caller).
    let (bs, st) = unsafe { ((*channel).block_size, state(channel)) };
    let bs = u64::try_from(bs).map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))?;
    let size = if count < 0 {
        u64::from(count.unsigned_abs())
    } else {
        u64::from(count.unsigned_abs()).saturating_mul(bs)
    };
    let pos = block
        .checked_mul(bs)
        .and_then(|p| p.checked_add(st.offset.get()))
        .ok_or(code(sys::EXT2_ET_LLSEEK_FAILED))?;
    let size = usize::try_from(size).map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))?;
    Ok((pos, size))
}

unsafe extern "C" fn o_open(
    name: *const c_char,
    flags: c_int,
    channel: *mut sys::io_channel,
) -> Code {
    if name.is_null() || channel.is_null() {
        return code(sys::EXT2_ET_BAD_DEVICE_NAME);
    }
    // SAFETY: libext2fs passes the NUL-terminated device name it was given.
    let name = unsafe { CStr::from_ptr(name) };
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
        return code(sys::EXT2_ET_BAD_DEVICE_NAME);
    };
    let state = Box::new(Channel {
        overlay,
        offset: Cell::new(0),
        writable: flags & sys::IO_FLAG_RW as c_int != 0,
        ranges,
        stats: Cell::new(sys::struct_io_stats {
            num_fields: 2,
            ..Default::default()
        }),
        name,
    });
    let io = Box::new(sys::struct_io_channel {
        magic: code(sys::EXT2_ET_MAGIC_IO_CHANNEL),
        manager: manager(),
        // libext2fs only reads the name (for messages); it stays valid as long as `state`.
        name: state.name.as_ptr().cast_mut(),
        block_size: 1024,
        refcount: 1,
        private_data: Box::into_raw(state).cast(),
        ..Default::default()
    });
    // SAFETY: `channel` is a valid out-pointer (checked non-null above).
    unsafe { *channel = Box::into_raw(io) };
    0
}

unsafe extern "C" fn o_close(channel: sys::io_channel) -> Code {
    // SAFETY: `channel` is a live channel of this manager; it and its state were allocated as
    // boxes in `o_open` and are freed exactly once, when the last reference is dropped.
    unsafe {
        (*channel).refcount -= 1;
        if (*channel).refcount > 0 {
            return 0;
        }
        drop(Box::from_raw((*channel).private_data.cast::<Channel>()));
        drop(Box::from_raw(channel));
    }
    0
}

unsafe extern "C" fn o_set_blksize(channel: sys::io_channel, blksize: c_int) -> Code {
    if blksize <= 0 {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    }
    // SAFETY: live channel of this manager.
    unsafe { (*channel).block_size = blksize };
    0
}

/// Reads `count` blocks at `block` into `data` (see the module documentation).
///
/// # Safety
/// `channel` is a live channel of this manager; `data` holds the requested number of bytes.
unsafe fn read(channel: sys::io_channel, block: u64, count: c_int, data: *mut c_void) -> Code {
    // SAFETY: caller's contract.
    let (pos, size) = match unsafe { extent(channel, block, count) } {
        Ok(e) => e,
        Err(rc) => return rc,
    };
    if size == 0 {
        return 0;
    }
    // SAFETY: caller's contract: `data` is valid for `size` bytes and not aliased during the call.
    let buf = unsafe { std::slice::from_raw_parts_mut(data.cast::<u8>(), size) };
    // SAFETY: live channel.
    let st = unsafe { state(channel) };
    let (actual, rc) = match st.overlay.read_at(buf, pos) {
        Ok(n) if n == size => (n, 0),
        Ok(n) => (n, code(sys::EXT2_ET_SHORT_READ)),
        Err(e) => (0, errno_or(&e, sys::EXT2_ET_SHORT_READ)),
    };
    st.add_stats(actual as u64, 0);
    if rc == 0 {
        return 0;
    }
    buf[actual..].fill(0);
    // SAFETY: live channel; the hook (set by e.g. e2fsck) gets unix_io's arguments.
    match unsafe { (*channel).read_error } {
        Some(hook) => unsafe {
            hook(
                channel,
                block as c_ulong,
                count,
                data,
                size,
                c_int::try_from(actual).unwrap_or(c_int::MAX),
                rc,
            )
        },
        None => rc,
    }
}

/// Writes `count` blocks at `block` from `data` (see the module documentation).
///
/// # Safety
/// `channel` is a live channel of this manager; `data` holds the given number of bytes.
unsafe fn write(channel: sys::io_channel, block: u64, count: c_int, data: *const c_void) -> Code {
    // SAFETY: caller's contract.
    let (pos, size) = match unsafe { extent(channel, block, count) } {
        Ok(e) => e,
        Err(rc) => return rc,
    };
    if size == 0 {
        return 0;
    }
    // SAFETY: caller's contract: `data` is valid for `size` bytes.
    let buf = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
    // SAFETY: live channel.
    let rc = match unsafe { state(channel) }.write(buf, pos) {
        Ok(()) => return 0,
        Err(rc) => rc,
    };
    // SAFETY: live channel; the hook gets unix_io's arguments.
    match unsafe { (*channel).write_error } {
        Some(hook) => unsafe { hook(channel, block as c_ulong, count, data, size, 0, rc) },
        None => rc,
    }
}

unsafe extern "C" fn o_read_blk(
    channel: sys::io_channel,
    block: c_ulong,
    count: c_int,
    data: *mut c_void,
) -> Code {
    // SAFETY: libext2fs calls with a live channel and a buffer of the requested size.
    #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
    unsafe {
        read(channel, u64::from(block), count, data)
    }
}

unsafe extern "C" fn o_read_blk64(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_int,
    data: *mut c_void,
) -> Code {
    // SAFETY: as in `o_read_blk`.
    unsafe { read(channel, block, count, data) }
}

unsafe extern "C" fn o_write_blk(
    channel: sys::io_channel,
    block: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Code {
    // SAFETY: libext2fs calls with a live channel and a buffer of the given size.
    #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
    unsafe {
        write(channel, u64::from(block), count, data)
    }
}

unsafe extern "C" fn o_write_blk64(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> Code {
    // SAFETY: as in `o_write_blk`.
    unsafe { write(channel, block, count, data) }
}

unsafe extern "C" fn o_write_byte(
    channel: sys::io_channel,
    offset: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Code {
    let Ok(size) = usize::try_from(count) else {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    };
    if size == 0 {
        return 0;
    }
    // SAFETY: live channel.
    let st = unsafe { state(channel) };
    #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
    let Some(pos) = u64::from(offset).checked_add(st.offset.get()) else {
        return code(sys::EXT2_ET_LLSEEK_FAILED);
    };
    // SAFETY: libext2fs passes `count` readable bytes.
    let buf = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
    match st.write(buf, pos) {
        Ok(()) => 0,
        Err(rc) => rc,
    }
}

unsafe extern "C" fn o_flush(_channel: sys::io_channel) -> Code {
    // No cache: every write already reached the overlay file.
    0
}

unsafe extern "C" fn o_set_option(
    channel: sys::io_channel,
    option: *const c_char,
    arg: *const c_char,
) -> Code {
    if option.is_null() {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    }
    // SAFETY: io_channel_set_options passes NUL-terminated pieces of its option string.
    let (option, arg) = unsafe {
        (
            CStr::from_ptr(option),
            (!arg.is_null()).then(|| CStr::from_ptr(arg)),
        )
    };
    if option.to_bytes() != b"offset" {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    }
    let Some(offset) = arg.and_then(|a| parse_offset(a.to_str().ok()?)) else {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    };
    // SAFETY: live channel.
    unsafe { state(channel) }.offset.set(offset);
    0
}

/// An `offset=` value as unix_io reads it (`strtoull(arg, .., 0)`): decimal, or hex after
/// `0x`. Octal (leading `0`) is read as decimal, which only differs for values nobody passes.
fn parse_offset(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

unsafe extern "C" fn o_get_stats(channel: sys::io_channel, stats: *mut sys::io_stats) -> Code {
    if !stats.is_null() {
        // SAFETY: live channel; `stats` is a valid out-pointer. The pointer handed out stays
        // valid until the channel is closed (the state is boxed).
        unsafe { *stats = state(channel).stats.as_ptr() };
    }
    0
}

unsafe extern "C" fn o_discard(
    _channel: sys::io_channel,
    _block: c_ulonglong,
    _count: c_ulonglong,
) -> Code {
    code(sys::EXT2_ET_UNIMPLEMENTED)
}

unsafe extern "C" fn o_cache_readahead(
    _channel: sys::io_channel,
    _block: c_ulonglong,
    _count: c_ulonglong,
) -> Code {
    0
}

unsafe extern "C" fn o_zeroout(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_ulonglong,
) -> Code {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    // SAFETY: live channel.
    let (bs, st) = unsafe { ((*channel).block_size, state(channel)) };
    let Ok(bs) = u64::try_from(bs) else {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    };
    let (Some(mut pos), Some(len)) = (
        block
            .checked_mul(bs)
            .and_then(|p| p.checked_add(st.offset.get())),
        count.checked_mul(bs),
    ) else {
        return code(sys::EXT2_ET_LLSEEK_FAILED);
    };
    let end = pos.saturating_add(len);
    while pos < end {
        let n = (end - pos).min(ZEROS.len() as u64) as usize;
        if let Err(rc) = st.write(&ZEROS[..n], pos) {
            return rc;
        }
        pos += n as u64;
    }
    0
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
