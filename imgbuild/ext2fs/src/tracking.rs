//! Write tracking: an I/O channel that wraps the channel libext2fs opened (unix_io) and records
//! the byte range of every write before forwarding it, so a packer can copy only what changed.
//!
//! After `ext2fs_open2` the file system's `io` (and `image_io`, which aliases it) is replaced by
//! an outer channel whose manager is [`MANAGER`]; every operation is forwarded to the original
//! (inner) channel. Only writes happen after the swap (opening reads only), so nothing written is
//! missed. The outer channel owns the inner one and closes it when libext2fs closes the outer.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void};
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};

use imgbuild_ranges::ByteRanges;

use crate::raw::{code, Code, RawResult};
use crate::sys;

/// Recorded byte ranges of the image file, shared by the channel and the `Fs`.
pub(crate) type Ranges = Arc<Mutex<ByteRanges>>;

/// Handle kept by the file system to read the recorded ranges.
#[derive(Clone)]
pub(crate) struct Tracker {
    ranges: Ranges,
}

impl Tracker {
    /// A tracker over ranges another channel records into (the overlay channel,
    /// [`crate::overlay_io`], records its own writes).
    pub(crate) fn shared(ranges: Ranges) -> Tracker {
        Tracker { ranges }
    }

    /// Wraps `fs`'s I/O channel; `offset` is where the file system starts in the image file.
    pub(crate) fn install(fs: sys::ext2_filsys, offset: u64) -> RawResult<Tracker> {
        let ranges: Ranges = Arc::default();
        // SAFETY: `fs` is a valid open handle whose `io` is a valid channel. The outer channel is
        // a zero-initialised `struct_io_channel` (all-zero is valid for it: integers, nullable
        // pointers and `Option` function pointers) that copies the inner channel's public fields.
        unsafe {
            let inner = (*fs).io;
            if inner.is_null() {
                return Err(code(sys::EXT2_ET_MAGIC_IO_CHANNEL));
            }
            let state = Box::new(Channel {
                inner,
                offset,
                ranges: Arc::clone(&ranges),
                stats: Cell::new(sys::struct_io_stats {
                    num_fields: 2,
                    ..Default::default()
                }),
            });
            let mut outer: Box<sys::struct_io_channel> = Box::new(std::mem::zeroed());
            outer.magic = code(sys::EXT2_ET_MAGIC_IO_CHANNEL);
            outer.manager = ptr::addr_of!(MANAGER.0).cast_mut();
            outer.name = (*inner).name;
            outer.block_size = (*inner).block_size;
            outer.refcount = 1;
            outer.flags = (*inner).flags;
            outer.app_data = (*inner).app_data;
            outer.align = (*inner).align;
            outer.private_data = Box::into_raw(state).cast();
            let outer = Box::into_raw(outer);
            if (*fs).image_io == inner {
                (*fs).image_io = outer;
            }
            (*fs).io = outer;
        }
        Ok(Tracker { ranges })
    }

    /// Recorded writes.
    pub(crate) fn ranges(&self) -> ByteRanges {
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Private data of the outer channel.
struct Channel {
    inner: sys::io_channel,
    offset: u64,
    ranges: Ranges,
    /// Bytes read and written through this channel, returned by `get_stats`. libext2fs adds
    /// the bytes written to the superblock's `s_kbytes_written` when it closes the file
    /// system; counting them here (every byte handed to a write call, like the overlay
    /// manager counts them) rather than asking unix_io (which counts what its block cache
    /// writes back) gives the same superblock whichever channel made the same writes.
    stats: Cell<sys::struct_io_stats>,
}

impl Channel {
    fn count(&self, read: u64, written: u64) {
        let mut s = self.stats.get();
        s.bytes_read = s.bytes_read.saturating_add(read);
        s.bytes_written = s.bytes_written.saturating_add(written);
        self.stats.set(s);
    }

    /// Byte length of `count` blocks (a negative count is a byte count).
    fn block_bytes(&self, count: i64) -> u64 {
        // SAFETY: `inner` stays valid until the outer channel is closed.
        let bs = u64::try_from(unsafe { (*self.inner).block_size }).unwrap_or(0);
        if count < 0 {
            count.unsigned_abs()
        } else {
            count.unsigned_abs().saturating_mul(bs)
        }
    }

    fn record(&self, start: u64, len: u64) {
        self.ranges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(self.offset.saturating_add(start), len);
    }

    /// Records a block write of `count` blocks (a negative count is a byte count).
    fn record_blocks(&self, block: u64, count: i64) {
        let bs = self.block_bytes(1);
        self.record(block.saturating_mul(bs), self.block_bytes(count));
    }

    /// The inner channel's manager.
    fn manager(&self) -> &sys::struct_io_manager {
        // SAFETY: a valid channel always points at its (static) manager.
        unsafe { &*(*self.inner).manager }
    }
}

/// The manager table of the outer channel (`Sync` wrapper: it is never written after start-up).
struct Manager(sys::struct_io_manager);
// SAFETY: the table is immutable; its raw pointers refer to static data and functions.
unsafe impl Sync for Manager {}

static MANAGER: Manager = Manager(sys::struct_io_manager {
    magic: sys::EXT2_ET_MAGIC_IO_MANAGER as Code,
    name: c"imgbuild write-tracking I/O manager".as_ptr(),
    open: Some(t_open),
    close: Some(t_close),
    set_blksize: Some(t_set_blksize),
    read_blk: Some(t_read_blk),
    write_blk: Some(t_write_blk),
    flush: Some(t_flush),
    write_byte: Some(t_write_byte),
    set_option: Some(t_set_option),
    get_stats: Some(t_get_stats),
    read_blk64: Some(t_read_blk64),
    write_blk64: Some(t_write_blk64),
    discard: Some(t_discard),
    cache_readahead: Some(t_cache_readahead),
    zeroout: Some(t_zeroout),
    reserved: [0; 14],
});

/// The private state of an outer channel.
///
/// # Safety
/// `channel` must be an outer channel created by [`Tracker::install`] and not yet closed.
unsafe fn state<'a>(channel: sys::io_channel) -> &'a Channel {
    // SAFETY: guaranteed by the caller; `private_data` was set from `Box<Channel>`.
    unsafe { &*(*channel).private_data.cast::<Channel>() }
}

/// Adds a successful transfer of `count` blocks (negative: bytes) to the channel's statistics;
/// returns `rc`.
fn counted(channel: sys::io_channel, rc: Code, count: i64, write: bool) -> Code {
    if rc == 0 {
        // SAFETY: only called from the entry points below, with the live outer channel.
        let st = unsafe { state(channel) };
        let n = st.block_bytes(count);
        match write {
            true => st.count(0, n),
            false => st.count(n, 0),
        }
    }
    rc
}

const UNIMPLEMENTED: Code = sys::EXT2_ET_UNIMPLEMENTED as Code;

/// Forwards a call to the inner channel's manager function `$f`, or reports "unimplemented".
macro_rules! forward {
    ($channel:expr, $f:ident $(, $arg:expr)*) => {{
        // SAFETY: libext2fs only calls these entry points with the outer channel it was given.
        let st = unsafe { state($channel) };
        match st.manager().$f {
            // SAFETY: forwarding the caller's arguments unchanged to the inner channel.
            Some(f) => unsafe { f(st.inner $(, $arg)*) },
            None => UNIMPLEMENTED,
        }
    }};
}

unsafe extern "C" fn t_open(
    _name: *const c_char,
    _flags: c_int,
    _channel: *mut sys::io_channel,
) -> Code {
    // The outer channel is only ever created by `Tracker::install`.
    UNIMPLEMENTED
}

unsafe extern "C" fn t_close(channel: sys::io_channel) -> Code {
    // SAFETY: `channel` is a live outer channel (see `state`); it and its state were allocated as
    // boxes in `install` and are freed exactly once, when the last reference is dropped.
    unsafe {
        (*channel).refcount -= 1;
        if (*channel).refcount > 0 {
            return 0;
        }
        let st = Box::from_raw((*channel).private_data.cast::<Channel>());
        let rc = match st.manager().close {
            Some(close) => close(st.inner),
            None => 0,
        };
        drop(st);
        drop(Box::from_raw(channel));
        rc
    }
}

unsafe extern "C" fn t_set_blksize(channel: sys::io_channel, blksize: c_int) -> Code {
    let rc = forward!(channel, set_blksize, blksize);
    // SAFETY: live outer channel; mirror the inner block size that libext2fs may read.
    unsafe { (*channel).block_size = (*state(channel).inner).block_size };
    rc
}

unsafe extern "C" fn t_read_blk(
    channel: sys::io_channel,
    block: c_ulong,
    count: c_int,
    data: *mut c_void,
) -> Code {
    let rc = forward!(channel, read_blk, block, count, data);
    counted(channel, rc, i64::from(count), false)
}

unsafe extern "C" fn t_write_blk(
    channel: sys::io_channel,
    block: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Code {
    // SAFETY: live outer channel.
    #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
    unsafe { state(channel) }.record_blocks(u64::from(block), i64::from(count));
    let rc = forward!(channel, write_blk, block, count, data);
    counted(channel, rc, i64::from(count), true)
}

unsafe extern "C" fn t_flush(channel: sys::io_channel) -> Code {
    forward!(channel, flush)
}

unsafe extern "C" fn t_write_byte(
    channel: sys::io_channel,
    offset: c_ulong,
    count: c_int,
    data: *const c_void,
) -> Code {
    // SAFETY: live outer channel.
    #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
    unsafe { state(channel) }.record(u64::from(offset), u64::try_from(count).unwrap_or(0));
    let rc = forward!(channel, write_byte, offset, count, data);
    // A byte count, like a negative block count.
    counted(channel, rc, -i64::from(count.max(0)), true)
}

unsafe extern "C" fn t_set_option(
    channel: sys::io_channel,
    option: *const c_char,
    arg: *const c_char,
) -> Code {
    // The offset is fixed when the channel is wrapped; moving it would misplace the records.
    forward!(channel, set_option, option, arg)
}

unsafe extern "C" fn t_get_stats(channel: sys::io_channel, stats: *mut sys::io_stats) -> Code {
    if !stats.is_null() {
        // SAFETY: live outer channel; `stats` is a valid out-pointer. The pointer handed out
        // stays valid until the channel is closed (the state is boxed).
        unsafe { *stats = state(channel).stats.as_ptr() };
    }
    0
}

unsafe extern "C" fn t_read_blk64(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_int,
    data: *mut c_void,
) -> Code {
    let rc = forward!(channel, read_blk64, block, count, data);
    counted(channel, rc, i64::from(count), false)
}

unsafe extern "C" fn t_write_blk64(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_int,
    data: *const c_void,
) -> Code {
    // SAFETY: live outer channel.
    unsafe { state(channel) }.record_blocks(block, i64::from(count));
    let rc = forward!(channel, write_blk64, block, count, data);
    counted(channel, rc, i64::from(count), true)
}

unsafe extern "C" fn t_discard(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_ulonglong,
) -> Code {
    // Discarding can punch a hole (zeroes) into the image file: it changes bytes.
    // SAFETY: live outer channel.
    unsafe { state(channel) }.record_blocks(block, i64::try_from(count).unwrap_or(i64::MAX));
    forward!(channel, discard, block, count)
}

unsafe extern "C" fn t_cache_readahead(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_ulonglong,
) -> Code {
    forward!(channel, cache_readahead, block, count)
}

unsafe extern "C" fn t_zeroout(
    channel: sys::io_channel,
    block: c_ulonglong,
    count: c_ulonglong,
) -> Code {
    let blocks = i64::try_from(count).unwrap_or(i64::MAX);
    // SAFETY: live outer channel.
    unsafe { state(channel) }.record_blocks(block, blocks);
    let rc = forward!(channel, zeroout, block, count);
    counted(channel, rc, blocks, true)
}
