//! The thin FFI layer: every call into libext2fs lives here, behind safe methods that take and
//! return plain Rust values. Callers in `fs.rs` never see a raw pointer.
//!
//! Invariant relied on by every `// SAFETY:` comment below: a [`RawFs`] always holds a pointer
//! returned by a successful `ext2fs_open2` that has not been closed yet (only [`RawFs::close`] and
//! `Drop` close it, and both consume or end the value). libext2fs is not thread-safe; `RawFs` is
//! neither `Send` nor `Sync` (it holds a raw pointer), so calls are never concurrent.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::size_of;
use std::ptr::{self, NonNull};
use std::sync::Once;

use crate::sys;
use crate::tracking::Tracker;

/// A libext2fs error code (`errcode_t`): an errno value or a com_err code such as
/// `EXT2_ET_DIR_NO_SPACE`.
pub(crate) type Code = sys::errcode_t;
/// Result of one library call.
pub(crate) type RawResult<T> = Result<T, Code>;

/// Converts a constant from the generated bindings (`u32`) into an error code.
pub(crate) const fn code(c: u32) -> Code {
    c as Code
}

fn check(rc: Code) -> RawResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

static ERROR_TABLE: Once = Once::new();

/// Registers libext2fs's com_err message table (once per process) so codes have messages.
fn init_error_table() {
    // SAFETY: the function only links a static table into com_err's global list; `Once` makes
    // sure it runs a single time, never concurrently.
    ERROR_TABLE.call_once(|| unsafe { sys::initialize_ext2_error_table() });
}

/// The message of a libext2fs error code (`EXT2_ET_*`), or `None` for codes outside its table
/// (errno values are described by the caller with `std::io::Error`).
pub(crate) fn ext2_message(rc: Code) -> Option<String> {
    let first = code(sys::EXT2_ET_BASE);
    let last = code(sys::EXT2_ET_EXTERNAL_JOURNAL_NOSUPP);
    if !(first..=last).contains(&rc) {
        return None;
    }
    init_error_table();
    // SAFETY: for codes inside a registered table com_err returns a pointer to a static,
    // NUL-terminated message (the static scratch buffer is only used for unknown codes, which the
    // range check above excludes).
    let msg = unsafe { sys::error_message(rc) };
    if msg.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated and static (see above).
    Some(
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// An on-disk inode in its "large" in-memory form (the first 160 bytes; larger on-disk inodes
/// keep their extended-attribute tail, which the library preserves on write).
#[derive(Clone, Copy, Default)]
pub(crate) struct Inode(pub(crate) sys::ext2_inode_large);

impl Inode {
    fn as_mut_ptr(&mut self) -> *mut sys::ext2_inode {
        // `ext2_inode_large` starts with the fields of `ext2_inode` (same C declaration prefix),
        // which is how libext2fs itself passes large inodes around.
        ptr::addr_of_mut!(self.0).cast()
    }

    /// Owner uid (low 16 bits plus the Linux high 16 bits).
    pub(crate) fn uid(&self) -> u32 {
        // SAFETY: `osd2` is a union of plain integer structs; every bit pattern is valid for
        // `linux2`, which is the interpretation Linux file systems use.
        let high = unsafe { self.0.osd2.linux2.l_i_uid_high };
        u32::from(self.0.i_uid) | (u32::from(high) << 16)
    }

    /// Owner gid (low 16 bits plus the Linux high 16 bits).
    pub(crate) fn gid(&self) -> u32 {
        // SAFETY: as in `uid`.
        let high = unsafe { self.0.osd2.linux2.l_i_gid_high };
        u32::from(self.0.i_gid) | (u32::from(high) << 16)
    }

    /// Sets uid and gid, including the high 16 bits.
    pub(crate) fn set_owner(&mut self, uid: u32, gid: u32) {
        self.0.i_uid = uid as u16;
        self.0.i_gid = gid as u16;
        // Writing a `Copy` union field is safe: it only stores plain integers.
        self.0.osd2.linux2.l_i_uid_high = (uid >> 16) as u16;
        self.0.osd2.linux2.l_i_gid_high = (gid >> 16) as u16;
    }

    /// File size in bytes.
    pub(crate) fn size(&self) -> u64 {
        u64::from(self.0.i_size) | (u64::from(self.0.i_size_high) << 32)
    }
}

/// Data collected by [`RawFs::dir_entries`]'s callback.
struct DirCollector {
    entries: Vec<(Vec<u8>, u32)>,
}

/// Size of a directory entry's fixed header: inode (4), rec_len (2), name_len (2).
const DIRENT_HEADER: usize = 8;

/// `ext2fs_dir_iterate2` callback: records the name and inode of every live entry.
///
/// `struct ext2_dir_entry` declares a 255-byte name, but an entry holds only `name_len` bytes
/// and may sit at the very end of its block: no reference to the whole struct is made. The
/// header fields are read through raw pointers, and the name only when it lies inside the
/// `blocksize`-byte block at `offset` (an entry that does not is skipped).
unsafe extern "C" fn collect_entry(
    _dir: sys::ext2_ino_t,
    _entry: c_int,
    dirent: *mut sys::ext2_dir_entry,
    offset: c_int,
    blocksize: c_int,
    _buf: *mut c_char,
    priv_data: *mut c_void,
) -> c_int {
    let (Ok(offset), Ok(blocksize)) = (usize::try_from(offset), usize::try_from(blocksize)) else {
        return 0;
    };
    // Bytes of the block from the entry's start on.
    let room = blocksize.saturating_sub(offset);
    if dirent.is_null() || room < DIRENT_HEADER {
        return 0;
    }
    // SAFETY: `dirent` points at `offset` into a directory block of `blocksize` bytes that the
    // library holds for the whole call, and `room >= DIRENT_HEADER`: the 8 header bytes are
    // readable. They are read unaligned through raw pointers, never via a reference to the
    // full-size struct.
    let (inode, name_len) = unsafe {
        (
            ptr::addr_of!((*dirent).inode).read_unaligned(),
            ptr::addr_of!((*dirent).name_len).read_unaligned(),
        )
    };
    let len = usize::from(name_len & 0xff);
    if inode == 0 || len > room - DIRENT_HEADER {
        return 0;
    }
    // SAFETY: the name starts right after the header and its `len` bytes end inside the block
    // (checked above); u8 has no alignment. `priv_data` is the `&mut DirCollector` passed by
    // `dir_entries`, alive and not otherwise borrowed for the whole iteration.
    unsafe {
        let name_ptr = ptr::addr_of!((*dirent).name).cast::<u8>();
        let name = std::slice::from_raw_parts(name_ptr, len);
        let collector = &mut *priv_data.cast::<DirCollector>();
        collector.entries.push((name.to_vec(), inode));
    }
    0
}

/// `ext2fs_open2` of the device `name` through `manager`, the file system `offset` bytes into
/// it, read-only or read-write (64-bit aware, multi-mount protection skipped).
///
/// # Safety
/// `manager` is a valid I/O manager that lives as long as the handle.
unsafe fn open2(
    name: &CStr,
    offset: u64,
    writable: bool,
    manager: sys::io_manager,
) -> RawResult<NonNull<sys::struct_ext2_filsys>> {
    init_error_table();
    let mut flags = sys::EXT2_FLAG_64BITS | sys::EXT2_FLAG_SKIP_MMP;
    if writable {
        flags |= sys::EXT2_FLAG_RW;
    }
    let options = std::ffi::CString::new(format!("offset={offset}"))
        .map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))?;
    let mut fs: sys::ext2_filsys = ptr::null_mut();
    // SAFETY: both strings are NUL-terminated and outlive the call; the manager is valid
    // (caller's contract); `fs` receives a new handle only on success.
    let rc = unsafe {
        sys::ext2fs_open2(
            name.as_ptr(),
            options.as_ptr(),
            flags as c_int,
            0,
            0,
            manager,
            &mut fs,
        )
    };
    check(rc)?;
    NonNull::new(fs).ok_or(code(sys::EXT2_ET_MAGIC_EXT2FS_FILSYS))
}

/// An open libext2fs file system handle.
pub(crate) struct RawFs {
    fs: NonNull<sys::struct_ext2_filsys>,
    tracker: Option<Tracker>,
}

impl RawFs {
    /// Opens `image` (`offset` bytes into the file) read-only or read-write. Nothing is written
    /// by opening; a read-write handle needs [`RawFs::read_bitmaps`] before allocating.
    pub(crate) fn open(image: &CStr, offset: u64, writable: bool) -> RawResult<RawFs> {
        // SAFETY: `unix_io_manager` is the library's own static manager, which opens file names.
        let fs = unsafe { open2(image, offset, writable, sys::unix_io_manager) }?;
        Ok(RawFs { fs, tracker: None })
    }

    /// Opens the file system `offset` bytes into the image `overlay` (read-only or read-write)
    /// through the overlay I/O manager ([`crate::overlay_io`]): the base file is never written,
    /// writes go to the overlay and are recorded (see [`RawFs::tracker`]).
    pub(crate) fn open_overlay(
        overlay: std::sync::Arc<imgbuild_overlay::Overlay>,
        offset: u64,
        writable: bool,
    ) -> RawResult<RawFs> {
        let ranges = crate::tracking::Ranges::default();
        let registration =
            crate::overlay_io::Registration::new(overlay, std::sync::Arc::clone(&ranges));
        let manager = crate::overlay_io::manager();
        // SAFETY: the manager is this crate's static table, whose `open` takes the overlay
        // registered under that name.
        let fs = unsafe { open2(registration.name(), offset, writable, manager) };
        drop(registration);
        Ok(RawFs {
            fs: fs?,
            tracker: Some(Tracker::shared(ranges)),
        })
    }

    /// Loads the block and inode allocation bitmaps (needed before any allocation).
    pub(crate) fn read_bitmaps(&mut self) -> RawResult<()> {
        // SAFETY: valid open handle (module invariant).
        check(unsafe { sys::ext2fs_read_bitmaps(self.ptr()) })
    }

    /// Starts recording every write to the image file (`offset` is where the file system starts
    /// in it); see [`Tracker`].
    pub(crate) fn track_writes(&mut self, offset: u64) -> RawResult<()> {
        if self.tracker.is_none() {
            self.tracker = Some(Tracker::install(self.ptr(), offset)?);
        }
        Ok(())
    }

    fn ptr(&self) -> sys::ext2_filsys {
        self.fs.as_ptr()
    }

    /// The in-memory superblock.
    pub(crate) fn superblock(&self) -> &sys::ext2_super_block {
        // SAFETY: `super_` is allocated by ext2fs_open2 and lives as long as the handle; the
        // borrow of `self` keeps the handle open while the reference exists.
        unsafe { &*(*self.ptr()).super_ }
    }

    /// Block size in bytes.
    pub(crate) fn block_size(&self) -> u64 {
        // SAFETY: valid open handle (module invariant).
        u64::from(unsafe { (*self.ptr()).blocksize })
    }

    /// Total blocks (64-bit aware).
    pub(crate) fn blocks_count(&self) -> u64 {
        // SAFETY: valid handle; the function only reads the superblock.
        unsafe { sys::ext2fs_blocks_count((*self.ptr()).super_) }
    }

    /// Free blocks according to the superblock (64-bit aware).
    pub(crate) fn free_blocks_count(&self) -> u64 {
        // SAFETY: valid handle; the function only reads the superblock.
        unsafe { sys::ext2fs_free_blocks_count((*self.ptr()).super_) }
    }

    /// The library's notion of "now" (`fs->now`; 0 means the wall clock).
    pub(crate) fn now(&self) -> i64 {
        // SAFETY: valid open handle (module invariant).
        unsafe { (*self.ptr()).now }
    }

    /// Sets `fs->now`, used by libext2fs for new inode times and the superblock write time.
    pub(crate) fn set_now(&mut self, epoch: i64) {
        // SAFETY: valid open handle; plain integer field.
        unsafe { (*self.ptr()).now = epoch }
    }

    /// On-disk inode size in bytes.
    pub(crate) fn inode_size(&self) -> usize {
        let sb = self.superblock();
        if sb.s_rev_level == 0 {
            sys::EXT2_GOOD_OLD_INODE_SIZE as usize
        } else {
            usize::from(sb.s_inode_size)
        }
    }

    /// Looks `name` up in directory `dir`; `None` when absent.
    pub(crate) fn lookup(&self, dir: u32, name: &[u8]) -> RawResult<Option<u32>> {
        let len = c_int::try_from(name.len()).map_err(|_| code(sys::EXT2_ET_INVALID_ARGUMENT))?;
        let mut ino: sys::ext2_ino_t = 0;
        // SAFETY: valid handle; `name` is valid for `len` bytes (the library compares at most
        // that many); a null block buffer makes the library allocate its own.
        let rc = unsafe {
            sys::ext2fs_lookup(
                self.ptr(),
                dir,
                name.as_ptr().cast(),
                len,
                ptr::null_mut(),
                &mut ino,
            )
        };
        if rc == code(sys::EXT2_ET_FILE_NOT_FOUND) {
            return Ok(None);
        }
        check(rc)?;
        Ok(Some(ino))
    }

    /// Reads inode `ino`.
    pub(crate) fn read_inode(&self, ino: u32) -> RawResult<Inode> {
        let mut inode = Inode::default();
        // SAFETY: valid handle; the buffer is a full `ext2_inode_large` and its size is passed.
        check(unsafe {
            sys::ext2fs_read_inode_full(
                self.ptr(),
                ino,
                inode.as_mut_ptr(),
                size_of::<sys::ext2_inode_large>() as c_int,
            )
        })?;
        Ok(inode)
    }

    /// The physical block that holds logical block `lblk` of inode `ino` (0 for a hole); works
    /// for extent-mapped and block-mapped files alike.
    pub(crate) fn bmap(&self, ino: u32, lblk: u64) -> RawResult<u64> {
        let mut phys: sys::blk64_t = 0;
        // SAFETY: valid handle; a null inode makes the library read it, a null block buffer
        // makes it allocate its own; `phys` is a valid out pointer for the call's duration;
        // flags 0 only look up (never allocate).
        check(unsafe {
            sys::ext2fs_bmap2(
                self.ptr(),
                ino,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
                lblk,
                ptr::null_mut(),
                &mut phys,
            )
        })?;
        Ok(phys)
    }

    /// Writes inode `ino` (checksums are updated by the library).
    pub(crate) fn write_inode(&mut self, ino: u32, inode: &Inode) -> RawResult<()> {
        let mut copy = *inode;
        // SAFETY: valid handle; the buffer is a full `ext2_inode_large` and its size is passed.
        check(unsafe {
            sys::ext2fs_write_inode_full(
                self.ptr(),
                ino,
                copy.as_mut_ptr(),
                size_of::<sys::ext2_inode_large>() as c_int,
            )
        })
    }

    /// Writes a freshly allocated inode: the whole on-disk inode is zeroed first (no stale
    /// extended attributes), `i_extra_isize` is set, and zero times become "now".
    pub(crate) fn write_new_inode(&mut self, ino: u32, inode: &Inode) -> RawResult<()> {
        let mut copy = *inode;
        // SAFETY: valid handle; the library reads only the `ext2_inode` prefix of the buffer.
        check(unsafe { sys::ext2fs_write_new_inode(self.ptr(), ino, copy.as_mut_ptr()) })
    }

    /// Finds a free inode number near `dir` (not yet marked in use).
    pub(crate) fn new_inode(&mut self, dir: u32, mode: u32) -> RawResult<u32> {
        let mut ino: sys::ext2_ino_t = 0;
        // SAFETY: valid handle; a null map means the file system's inode bitmap.
        check(unsafe {
            sys::ext2fs_new_inode(self.ptr(), dir, mode as c_int, ptr::null_mut(), &mut ino)
        })?;
        Ok(ino)
    }

    /// Marks inode `ino` used (+1) or free (-1) in the bitmap and group/superblock counters.
    pub(crate) fn inode_alloc_stats(&mut self, ino: u32, inuse: i32, is_dir: bool) {
        // SAFETY: valid handle; the function validates `ino` itself.
        unsafe { sys::ext2fs_inode_alloc_stats2(self.ptr(), ino, inuse, c_int::from(is_dir)) }
    }

    /// Adds the entry `name -> ino` (with directory file type `file_type`) to directory `dir`.
    pub(crate) fn link(
        &mut self,
        dir: u32,
        name: &CStr,
        ino: u32,
        file_type: u32,
    ) -> RawResult<()> {
        // SAFETY: valid handle; `name` is NUL-terminated.
        check(unsafe { sys::ext2fs_link(self.ptr(), dir, name.as_ptr(), ino, file_type as c_int) })
    }

    /// Removes the entry `name` from directory `dir`.
    pub(crate) fn unlink(&mut self, dir: u32, name: &CStr) -> RawResult<()> {
        // SAFETY: valid handle; `name` is NUL-terminated.
        check(unsafe { sys::ext2fs_unlink(self.ptr(), dir, name.as_ptr(), 0, 0) })
    }

    /// Adds one block to directory `dir`.
    pub(crate) fn expand_dir(&mut self, dir: u32) -> RawResult<()> {
        // SAFETY: valid open handle.
        check(unsafe { sys::ext2fs_expand_dir(self.ptr(), dir) })
    }

    /// Creates directory inode `ino` (already chosen, not yet in use) with parent `parent`,
    /// without linking it anywhere; increments the parent's link count.
    pub(crate) fn mkdir_unlinked(&mut self, parent: u32, ino: u32) -> RawResult<()> {
        // SAFETY: valid handle; a null name means "do not link".
        check(unsafe { sys::ext2fs_mkdir(self.ptr(), parent, ino, ptr::null()) })
    }

    /// Creates symlink inode `ino` (already chosen, not yet in use) pointing at `target`,
    /// without linking it anywhere.
    pub(crate) fn symlink_unlinked(
        &mut self,
        parent: u32,
        ino: u32,
        target: &CStr,
    ) -> RawResult<()> {
        // SAFETY: valid handle; `target` is NUL-terminated; a null name means "do not link".
        check(unsafe { sys::ext2fs_symlink(self.ptr(), parent, ino, ptr::null(), target.as_ptr()) })
    }

    /// Sets up an empty extent tree header in `inode` (and the extents flag).
    pub(crate) fn init_extents(&mut self, ino: u32, inode: &mut Inode) -> RawResult<()> {
        let mut handle: sys::ext2_extent_handle_t = ptr::null_mut();
        // SAFETY: valid handle; `inode` outlives the extent handle, which is freed right away.
        unsafe {
            check(sys::ext2fs_extent_open2(
                self.ptr(),
                ino,
                inode.as_mut_ptr(),
                &mut handle,
            ))?;
            sys::ext2fs_extent_free(handle);
        }
        Ok(())
    }

    /// Frees every data block (and extent/indirect block) of `inode`; writes the inode's first
    /// 128 bytes back.
    pub(crate) fn punch_all(&mut self, ino: u32, inode: &mut Inode) -> RawResult<()> {
        // SAFETY: valid handle; `inode` is a live buffer; null block buffer lets the library
        // allocate its own.
        check(unsafe {
            sys::ext2fs_punch(self.ptr(), ino, inode.as_mut_ptr(), ptr::null_mut(), 0, !0)
        })
    }

    /// Drops `inode`'s reference to its extended-attribute block (freeing it when unshared).
    pub(crate) fn free_ext_attr(&mut self, ino: u32, inode: &mut Inode) -> RawResult<()> {
        // SAFETY: valid handle; `inode` is a full `ext2_inode_large` as the function expects.
        check(unsafe { sys::ext2fs_free_ext_attr(self.ptr(), ino, &mut inode.0) })
    }

    /// Whether `inode`'s block pointers address real blocks (false for fast symlinks and inline
    /// data).
    pub(crate) fn has_valid_blocks(&self, inode: &Inode) -> bool {
        let mut copy = *inode;
        // SAFETY: valid handle; the function only reads the inode.
        unsafe { sys::ext2fs_inode_has_valid_blocks2(self.ptr(), copy.as_mut_ptr()) != 0 }
    }

    /// Whether `inode` is a fast symlink (target stored in `i_block`).
    pub(crate) fn is_fast_symlink(inode: &Inode) -> bool {
        let mut copy = *inode;
        // SAFETY: the function only reads the inode.
        unsafe { sys::ext2fs_is_fast_symlink(copy.as_mut_ptr()) != 0 }
    }

    /// Names and inode numbers of the live entries of directory `dir` (including `.`/`..`).
    pub(crate) fn dir_entries(&self, dir: u32) -> RawResult<Vec<(Vec<u8>, u32)>> {
        let mut collector = DirCollector {
            entries: Vec::new(),
        };
        // SAFETY: valid handle; the callback matches the expected signature and `collector`
        // outlives the iteration.
        check(unsafe {
            sys::ext2fs_dir_iterate2(
                self.ptr(),
                dir,
                0,
                ptr::null_mut(),
                Some(collect_entry),
                ptr::addr_of_mut!(collector).cast(),
            )
        })?;
        Ok(collector.entries)
    }

    /// Reads the whole content of inode `ino` through the library's file layer (handles
    /// extents, block maps and inline data). `size_hint` only sizes the first allocation.
    pub(crate) fn read_data(&self, ino: u32, size_hint: u64) -> RawResult<Vec<u8>> {
        let file = File::open(self, ino, false)?;
        let mut out = Vec::with_capacity(size_hint.min(64 << 20) as usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let got = file.read(&mut buf)?;
            if got == 0 {
                break;
            }
            out.extend_from_slice(&buf[..got]);
        }
        file.close()?;
        Ok(out)
    }

    /// Writes `data` at the start of inode `ino` through the library's file layer (allocates
    /// blocks, updates size and block count).
    pub(crate) fn write_data(&mut self, ino: u32, data: &[u8]) -> RawResult<()> {
        let file = File::open(self, ino, true)?;
        let result = data
            .chunks(1 << 20)
            .try_for_each(|chunk| file.write_all(chunk));
        let closed = file.close();
        result.and(closed)
    }

    /// Flushes everything and closes the handle (the handle is released even when flushing
    /// fails).
    pub(crate) fn close(self) -> RawResult<()> {
        let this = std::mem::ManuallyDrop::new(self);
        let rc = close_or_free(this.ptr());
        // SAFETY: `this` is never used or dropped again; moving the tracker out once releases its
        // reference to the recorded ranges.
        drop(unsafe { ptr::read(&this.tracker) });
        check(rc)
    }

    /// The write tracker, when opened with tracking.
    pub(crate) fn tracker(&self) -> Option<&Tracker> {
        self.tracker.as_ref()
    }
}

impl Drop for RawFs {
    fn drop(&mut self) {
        // Errors cannot be reported from Drop; the handle is released either way.
        let _ = close_or_free(self.ptr());
    }
}

/// `ext2fs_close2`, falling back to `ext2fs_free` when flushing fails (close2 then keeps the
/// handle allocated). The handle must not be used afterwards.
fn close_or_free(fs: sys::ext2_filsys) -> Code {
    // SAFETY: `fs` is a valid open handle (callers own it and never use it again).
    unsafe {
        let rc = sys::ext2fs_close2(fs, 0);
        if rc != 0 {
            sys::ext2fs_free(fs);
        }
        rc
    }
}

/// An open `ext2_file_t`, closed by [`File::close`] (or on drop).
struct File {
    file: sys::ext2_file_t,
}

impl File {
    fn open(fs: &RawFs, ino: u32, write: bool) -> RawResult<File> {
        let flags = if write { sys::EXT2_FILE_WRITE } else { 0 };
        let mut file: sys::ext2_file_t = ptr::null_mut();
        // SAFETY: valid handle; a null inode makes the library read inode `ino` itself. The file
        // object does not outlive `fs` (it is closed before the borrowing method returns).
        check(unsafe { sys::ext2fs_file_open(fs.ptr(), ino, flags as c_int, &mut file) })?;
        Ok(File { file })
    }

    fn read(&self, buf: &mut [u8]) -> RawResult<usize> {
        let want = c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX);
        let mut got: c_uint = 0;
        // SAFETY: open file; `buf` is writable for `want` bytes.
        check(unsafe {
            sys::ext2fs_file_read(self.file, buf.as_mut_ptr().cast(), want, &mut got)
        })?;
        Ok(got as usize)
    }

    fn write_all(&self, mut data: &[u8]) -> RawResult<()> {
        while !data.is_empty() {
            let len = c_uint::try_from(data.len()).unwrap_or(c_uint::MAX);
            let mut written: c_uint = 0;
            // SAFETY: open file; `data` is readable for `len` bytes.
            check(unsafe {
                sys::ext2fs_file_write(self.file, data.as_ptr().cast(), len, &mut written)
            })?;
            if written == 0 {
                return Err(code(sys::EXT2_ET_SHORT_WRITE));
            }
            data = &data[written as usize..];
        }
        Ok(())
    }

    fn close(self) -> RawResult<()> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: open file, closed exactly once (ManuallyDrop skips Drop).
        check(unsafe { sys::ext2fs_file_close(this.file) })
    }
}

impl Drop for File {
    fn drop(&mut self) {
        // SAFETY: open file, closed exactly once here.
        let _ = unsafe { sys::ext2fs_file_close(self.file) };
    }
}
