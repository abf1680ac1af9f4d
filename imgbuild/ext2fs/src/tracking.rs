//! Write tracking: an I/O channel that wraps the channel libext2fs opened (unix_io) and records
//! the byte range of every write before forwarding it, so a packer can copy only what changed.
//!
//! After `ext2fs_open2` the file system's `io` (and `image_io`, which aliases it) is replaced by
//! an outer channel whose manager is [`MANAGER`]; every operation is forwarded to the original
//! (inner) channel. Only writes happen after the swap (opening reads only), so nothing written is
//! missed. The outer channel owns the inner one and closes it when libext2fs closes the outer.
//! The C table and entry points are [`crate::io_manager`]'s; the outer channel's state
//! implements its `Backend` trait.

use std::ffi::{c_int, c_ulong, c_void, CStr};
use std::ptr;
use std::sync::{Arc, Mutex, PoisonError};

use imgbuild_ranges::ByteRanges;

use crate::io_manager::{new_channel, transfer_bytes, Backend, Block, Stats, Table, Transfer};
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
        // SAFETY: `fs` is a valid open handle whose `io` is a valid channel. The outer channel
        // copies the inner channel's public fields and takes its place (and `image_io`'s, which
        // aliases it); it owns the inner channel from now on.
        unsafe {
            let inner = (*fs).io;
            if inner.is_null() {
                return Err(code(sys::EXT2_ET_MAGIC_IO_CHANNEL));
            }
            let fields = sys::struct_io_channel {
                name: (*inner).name,
                block_size: (*inner).block_size,
                flags: (*inner).flags,
                app_data: (*inner).app_data,
                align: (*inner).align,
                ..Default::default()
            };
            let state = Channel {
                inner,
                offset,
                ranges: Arc::clone(&ranges),
                stats: Stats::new(),
            };
            let outer = new_channel(state, fields);
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
    stats: Stats,
}

impl Channel {
    /// Byte length of `count` blocks (a negative count is a byte count).
    fn block_bytes(&self, count: i64) -> u64 {
        // SAFETY: `inner` stays valid until the outer channel is closed.
        let bs = u64::try_from(unsafe { (*self.inner).block_size }).unwrap_or(0);
        transfer_bytes(count, bs)
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

    /// Adds a successful transfer of `count` blocks (negative: bytes) to the statistics;
    /// returns `rc`.
    fn counted(&self, rc: Code, count: i64, write: bool) -> Code {
        if rc == 0 {
            let n = self.block_bytes(count);
            match write {
                true => self.stats.add(0, n),
                false => self.stats.add(n, 0),
            }
        }
        rc
    }

    /// The inner channel's manager.
    fn manager(&self) -> &sys::struct_io_manager {
        // SAFETY: a valid channel always points at its (static) manager.
        unsafe { &*(*self.inner).manager }
    }
}

static MANAGER: Table = Table::of::<Channel>(c"imgbuild write-tracking I/O manager");

const UNIMPLEMENTED: Code = sys::EXT2_ET_UNIMPLEMENTED as Code;

/// Forwards a call to the inner channel's manager function `$f`, or reports "unimplemented".
macro_rules! forward {
    ($st:expr, $f:ident $(, $arg:expr)*) => {{
        let st: &Channel = $st;
        match st.manager().$f {
            // SAFETY: the inner channel stays valid until the outer one is closed; the
            // arguments are the caller's, which libext2fs made valid for the outer channel.
            Some(f) => unsafe { f(st.inner $(, $arg)*) },
            None => UNIMPLEMENTED,
        }
    }};
}

/// Every operation goes to the inner channel; writes are recorded first.
impl Backend for Channel {
    const TABLE: &'static Table = &MANAGER;

    fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Closes the inner channel too.
    fn close(self) -> Code {
        match self.manager().close {
            // SAFETY: the outer channel owns the inner one; this is its last use.
            Some(close) => unsafe { close(self.inner) },
            None => 0,
        }
    }

    unsafe fn set_blksize(&self, channel: sys::io_channel, blksize: c_int) -> Code {
        let rc = forward!(self, set_blksize, blksize);
        // SAFETY: live outer channel (trait contract); mirror the inner block size that
        // libext2fs may read.
        unsafe { (*channel).block_size = (*self.inner).block_size };
        rc
    }

    unsafe fn read(&self, _channel: sys::io_channel, t: Transfer<*mut c_void>) -> Code {
        let rc = match t.block {
            Block::Narrow(b) => forward!(self, read_blk, b, t.count, t.data),
            Block::Wide(b) => forward!(self, read_blk64, b, t.count, t.data),
        };
        self.counted(rc, i64::from(t.count), false)
    }

    unsafe fn write(&self, _channel: sys::io_channel, t: Transfer<*const c_void>) -> Code {
        self.record_blocks(t.block.get(), i64::from(t.count));
        let rc = match t.block {
            Block::Narrow(b) => forward!(self, write_blk, b, t.count, t.data),
            Block::Wide(b) => forward!(self, write_blk64, b, t.count, t.data),
        };
        self.counted(rc, i64::from(t.count), true)
    }

    fn flush(&self) -> Code {
        forward!(self, flush)
    }

    unsafe fn write_byte(&self, offset: c_ulong, count: c_int, data: *const c_void) -> Code {
        #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
        self.record(u64::from(offset), u64::try_from(count).unwrap_or(0));
        let rc = forward!(self, write_byte, offset, count, data);
        // A byte count, like a negative block count.
        self.counted(rc, -i64::from(count.max(0)), true)
    }

    fn set_option(&self, option: &CStr, arg: Option<&CStr>) -> Code {
        // The offset is fixed when the channel is wrapped; moving it would misplace the records.
        let arg = arg.map_or(ptr::null(), CStr::as_ptr);
        forward!(self, set_option, option.as_ptr(), arg)
    }

    fn discard(&self, block: u64, count: u64) -> Code {
        // Discarding can punch a hole (zeroes) into the image file: it changes bytes.
        self.record_blocks(block, i64::try_from(count).unwrap_or(i64::MAX));
        forward!(self, discard, block, count)
    }

    fn cache_readahead(&self, block: u64, count: u64) -> Code {
        forward!(self, cache_readahead, block, count)
    }

    unsafe fn zeroout(&self, _channel: sys::io_channel, block: u64, count: u64) -> Code {
        let blocks = i64::try_from(count).unwrap_or(i64::MAX);
        self.record_blocks(block, blocks);
        let rc = forward!(self, zeroout, block, count);
        self.counted(rc, blocks, true)
    }
}
