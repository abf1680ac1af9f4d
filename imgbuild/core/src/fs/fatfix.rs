//! What [`super::fat::FatFs`] adds around `fatfs` 0.3.6 (the vendored, patched copy in
//! `vendor/fatfs`; see its PATCHES.md for what was fixed inside the crate itself).
//!
//! - [`claimed_len`]: `fatfs` does not check that the file system fits its partition, and does
//!   not expose the boot sector's size fields to check it with.
//! - [`panic_text`]: `fatfs` panics on some corrupt file systems (arithmetic overflow, unwraps
//!   on on-disk values); `FatFs` catches the panic, refuses further work, and reports it with
//!   this text. Removing the panics means auditing every on-disk value the crate reads, which
//!   the patch does not attempt.
//! - The I/O window's loop detection ([`super::window`]): `fatfs` follows a directory's cluster
//!   chain without detecting a loop.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Size of a boot sector, the least a FAT file system can be.
const BOOT_SECTOR_LEN: usize = 512;

/// The size in bytes the FAT file system at `offset` of `file` claims in its boot sector (total
/// sectors times sector size), or 0 when the `len` bytes there cannot hold a boot sector.
/// Fields are taken as they are: the result only means something once `fatfs` has accepted
/// the same sector.
pub(crate) fn claimed_len(file: &File, offset: u64, len: u64) -> io::Result<u64> {
    if len < BOOT_SECTOR_LEN as u64 {
        return Ok(0);
    }
    let mut b = [0u8; BOOT_SECTOR_LEN];
    file.read_exact_at(&mut b, offset)?;
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
    let u32_at =
        |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
    let sector = u16_at(11);
    let sectors = if u16_at(19) != 0 {
        u16_at(19)
    } else {
        u32_at(32)
    };
    Ok(sector * sectors)
}

/// The message of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("internal panic: {text}")
}
