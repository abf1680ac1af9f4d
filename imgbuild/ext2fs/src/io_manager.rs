//! What the two I/O managers written in Rust share: [`crate::tracking`] (wraps unix_io and
//! records writes) and [`crate::overlay_io`] (reads and writes a copy-on-write overlay).
//!
//! A manager is a type implementing [`Backend`]: the private state of one of its channels plus
//! what the manager does at each entry point. [`Table::of`] makes the C table libext2fs calls;
//! every entry point in it finds the channel's state and calls the [`Backend`] method. Channels
//! are allocated by [`new_channel`] and freed by the table's `close` when the last reference
//! is dropped; `get_stats` hands out the state's [`Stats`].

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_ulong, c_ulonglong, c_void, CStr};

use crate::raw::{code, Code};
use crate::sys;

/// A block number as libext2fs passed it: to a 32-bit entry point (`read_blk`, `write_blk`)
/// or to a 64-bit one, so that a wrapping manager can forward it to the same one.
#[derive(Clone, Copy)]
pub(crate) enum Block {
    /// Through `read_blk`/`write_blk`.
    Narrow(c_ulong),
    /// Through `read_blk64`/`write_blk64`.
    Wide(c_ulonglong),
}

impl Block {
    /// The block number.
    pub(crate) fn get(self) -> u64 {
        match self {
            #[allow(clippy::useless_conversion)] // `c_ulong` is 32 bits on some targets
            Block::Narrow(b) => u64::from(b),
            Block::Wide(b) => b,
        }
    }
}

/// A block transfer as libext2fs asks for it: `count` blocks at `block` (a negative `count` is
/// a byte count), read into or written from `data`.
#[derive(Clone, Copy)]
pub(crate) struct Transfer<D> {
    pub(crate) block: Block,
    pub(crate) count: c_int,
    pub(crate) data: D,
}

/// Bytes in `count` blocks of `block_size` bytes (a negative `count` is a byte count, as in a
/// [`Transfer`]).
pub(crate) fn transfer_bytes(count: i64, block_size: u64) -> u64 {
    if count < 0 {
        count.unsigned_abs()
    } else {
        count.unsigned_abs().saturating_mul(block_size)
    }
}

/// Bytes read and written through a channel. `get_stats` hands out a pointer to them, which
/// the caller reads later: hence a `Cell`.
pub(crate) struct Stats(Cell<sys::struct_io_stats>);

impl Stats {
    /// Nothing read or written yet.
    pub(crate) fn new() -> Stats {
        Stats(Cell::new(sys::struct_io_stats {
            num_fields: 2,
            ..Default::default()
        }))
    }

    /// Counts `read` more bytes read and `written` more bytes written.
    pub(crate) fn add(&self, read: u64, written: u64) {
        let mut s = self.0.get();
        s.bytes_read = s.bytes_read.saturating_add(read);
        s.bytes_written = s.bytes_written.saturating_add(written);
        self.0.set(s);
    }
}

/// The private state of a channel of an I/O manager written in Rust, and what that manager does
/// at each entry point of its [`Table`] (see e2fsprogs' lib/ext2fs/ext2_io.h).
///
/// The `unsafe` methods share one contract, which libext2fs keeps for every manager:
/// `channel` is the live channel whose private data is `self`, and `data` is valid for the
/// bytes the call transfers (the transfer's blocks of the channel's block size, or its byte
/// count; `count` bytes for `write_byte`) and not aliased during the call.
pub(crate) trait Backend: Sized {
    /// The manager's table: a `static` made by [`Table::of`] for this type.
    const TABLE: &'static Table;

    /// The statistics `get_stats` hands out.
    fn stats(&self) -> &Stats;

    /// Opens the device `name` (`flags`: `IO_FLAG_*`) as a new channel (made by
    /// [`new_channel`]). By default a manager cannot open anything by name.
    fn open(_name: &CStr, _flags: c_int) -> Result<sys::io_channel, Code> {
        Err(code(sys::EXT2_ET_UNIMPLEMENTED))
    }

    /// Runs when the last reference to the channel is dropped, just before the state is freed.
    fn close(self) -> Code {
        0
    }

    /// Sets the block size (in bytes).
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn set_blksize(&self, channel: sys::io_channel, blksize: c_int) -> Code;

    /// Reads the transfer's bytes into its buffer.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn read(&self, channel: sys::io_channel, t: Transfer<*mut c_void>) -> Code;

    /// Writes the transfer's bytes from its buffer.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn write(&self, channel: sys::io_channel, t: Transfer<*const c_void>) -> Code;

    /// Writes back whatever is cached; by default there is no cache.
    fn flush(&self) -> Code {
        0
    }

    /// Writes `count` bytes from `data` at the byte offset `offset`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn write_byte(&self, offset: c_ulong, count: c_int, data: *const c_void) -> Code;

    /// Sets the option `option` (`arg`: what followed `=`).
    fn set_option(&self, option: &CStr, arg: Option<&CStr>) -> Code;

    /// Discards `count` blocks at `block`; by default unimplemented (as io_manager.c answers
    /// for a manager without `discard`).
    fn discard(&self, _block: u64, _count: u64) -> Code {
        code(sys::EXT2_ET_UNIMPLEMENTED)
    }

    /// A hint that `count` blocks at `block` will be read; by default ignored.
    fn cache_readahead(&self, _block: u64, _count: u64) -> Code {
        0
    }

    /// Writes zeros over `count` blocks at `block`.
    ///
    /// # Safety
    /// See the trait documentation.
    unsafe fn zeroout(&self, channel: sys::io_channel, block: u64, count: u64) -> Code;
}

/// A new channel of `B`'s manager holding `state` (freed by the manager's `close`), with one
/// reference and the other public fields (name, block size, ...) from `fields`.
pub(crate) fn new_channel<B: Backend>(state: B, fields: sys::struct_io_channel) -> sys::io_channel {
    Box::into_raw(Box::new(sys::struct_io_channel {
        magic: code(sys::EXT2_ET_MAGIC_IO_CHANNEL),
        manager: B::TABLE.ptr(),
        refcount: 1,
        private_data: Box::into_raw(Box::new(state)).cast(),
        ..fields
    }))
}

/// A manager's C table (`Sync` wrapper: it is never written after start-up).
pub(crate) struct Table(sys::struct_io_manager);

// SAFETY: the table is immutable; its raw pointers refer to static data and functions.
unsafe impl Sync for Table {}

impl Table {
    /// The table of `B`'s manager, called `name`: every entry point calls `B`'s method.
    pub(crate) const fn of<B: Backend>(name: &'static CStr) -> Table {
        Table(sys::struct_io_manager {
            magic: sys::EXT2_ET_MAGIC_IO_MANAGER as Code,
            name: name.as_ptr(),
            open: Some(open::<B>),
            close: Some(close::<B>),
            set_blksize: Some(set_blksize::<B>),
            read_blk: Some(read_blk::<B>),
            write_blk: Some(write_blk::<B>),
            flush: Some(flush::<B>),
            write_byte: Some(write_byte::<B>),
            set_option: Some(set_option::<B>),
            get_stats: Some(get_stats::<B>),
            read_blk64: Some(read_blk64::<B>),
            write_blk64: Some(write_blk64::<B>),
            discard: Some(discard::<B>),
            cache_readahead: Some(cache_readahead::<B>),
            zeroout: Some(zeroout::<B>),
            reserved: [0; 14],
        })
    }

    /// The table as `ext2fs_open2` and a channel's `manager` take it.
    pub(crate) fn ptr(&'static self) -> sys::io_manager {
        std::ptr::from_ref(&self.0).cast_mut()
    }
}

/// The state of `channel`.
///
/// # Safety
/// `channel` is a live channel made by [`new_channel`] for `B` (not yet closed).
unsafe fn state<'a, B: Backend>(channel: sys::io_channel) -> &'a B {
    // SAFETY: guaranteed by the caller; `private_data` was set from `Box<B>`.
    unsafe { &*(*channel).private_data.cast::<B>() }
}

unsafe extern "C" fn open<B: Backend>(
    name: *const c_char,
    flags: c_int,
    channel: *mut sys::io_channel,
) -> Code {
    if name.is_null() || channel.is_null() {
        return code(sys::EXT2_ET_BAD_DEVICE_NAME);
    }
    // SAFETY: libext2fs passes the NUL-terminated device name it was given.
    let name = unsafe { CStr::from_ptr(name) };
    match B::open(name, flags) {
        Ok(io) => {
            // SAFETY: `channel` is a valid out-pointer (checked non-null above).
            unsafe { *channel = io };
            0
        }
        Err(rc) => rc,
    }
}

unsafe extern "C" fn close<B: Backend>(channel: sys::io_channel) -> Code {
    // SAFETY: `channel` is a live channel of this manager; it and its state were allocated as
    // boxes by `new_channel` and are freed exactly once, when the last reference is dropped.
    unsafe {
        (*channel).refcount -= 1;
        if (*channel).refcount > 0 {
            return 0;
        }
        let state = Box::from_raw((*channel).private_data.cast::<B>());
        drop(Box::from_raw(channel));
        state.close()
    }
}

unsafe extern "C" fn set_option<B: Backend>(
    channel: sys::io_channel,
    option: *const c_char,
    arg: *const c_char,
) -> Code {
    if option.is_null() {
        return code(sys::EXT2_ET_INVALID_ARGUMENT);
    }
    // SAFETY: live channel of this manager; io_channel_set_options passes NUL-terminated
    // pieces of its option string.
    let (st, option, arg) = unsafe {
        (
            state::<B>(channel),
            CStr::from_ptr(option),
            (!arg.is_null()).then(|| CStr::from_ptr(arg)),
        )
    };
    st.set_option(option, arg)
}

unsafe extern "C" fn get_stats<B: Backend>(
    channel: sys::io_channel,
    stats: *mut sys::io_stats,
) -> Code {
    if !stats.is_null() {
        // SAFETY: live channel of this manager; `stats` is a valid out-pointer. The pointer
        // handed out stays valid until the channel is closed (the state is boxed).
        unsafe { *stats = state::<B>(channel).stats().0.as_ptr() };
    }
    0
}

/// Defines entry points of [`Table::of`] that call a [`Backend`] method: `entry(channel,
/// args) => method(arguments);` (the channel is named in each entry so its arguments can use
/// it).
macro_rules! entry_points {
    ($($entry:ident($channel:ident $(, $arg:ident: $ty:ty)*) => $method:ident($($pass:expr),*);)*) => {$(
        unsafe extern "C" fn $entry<B: Backend>($channel: sys::io_channel $(, $arg: $ty)*) -> Code {
            // SAFETY: libext2fs calls a manager's entry points only with live channels of that
            // manager, which `new_channel` made for `B`, and with buffers as the `Backend`
            // contract describes.
            unsafe { state::<B>($channel).$method($($pass),*) }
        }
    )*};
}

entry_points! {
    set_blksize(channel, blksize: c_int) => set_blksize(channel, blksize);
    read_blk(channel, block: c_ulong, count: c_int, data: *mut c_void)
        => read(channel, Transfer { block: Block::Narrow(block), count, data });
    read_blk64(channel, block: c_ulonglong, count: c_int, data: *mut c_void)
        => read(channel, Transfer { block: Block::Wide(block), count, data });
    write_blk(channel, block: c_ulong, count: c_int, data: *const c_void)
        => write(channel, Transfer { block: Block::Narrow(block), count, data });
    write_blk64(channel, block: c_ulonglong, count: c_int, data: *const c_void)
        => write(channel, Transfer { block: Block::Wide(block), count, data });
    flush(channel) => flush();
    write_byte(channel, offset: c_ulong, count: c_int, data: *const c_void)
        => write_byte(offset, count, data);
    discard(channel, block: c_ulonglong, count: c_ulonglong) => discard(block, count);
    cache_readahead(channel, block: c_ulonglong, count: c_ulonglong)
        => cache_readahead(block, count);
    zeroout(channel, block: c_ulonglong, count: c_ulonglong) => zeroout(channel, block, count);
}
