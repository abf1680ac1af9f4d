//! Workarounds for `fatfs` 0.3.6: what it gets wrong, repaired behind its back.
//!
//! - [`RawDirs::fix_dot_entries`]: the `.` and `..` entries of a directory it creates.
//! - [`panic_text`]: it panics on some corrupt file systems; [`super::fat::FatFs`] catches the
//!   panic and reports it with this text.
//! - [`Geometry`]: the few boot-sector facts it does not expose.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use super::window::{lock, ImageWindow, IoLog};

/// Size of a boot sector, the least a FAT file system can be.
pub(crate) const BOOT_SECTOR_LEN: usize = 512;

/// The layout facts of a FAT file system that the raw directory repair needs, from its BPB.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Geometry {
    /// Size the file system claims (total sectors times sector size).
    pub(crate) fs_len: u64,
    /// Offset of cluster 2, the first data cluster, from the start of the file system.
    pub(crate) first_data_byte: u64,
    /// Bytes per cluster.
    pub(crate) cluster_size: u64,
    /// First cluster of the root directory on FAT32, 0 on FAT12/16.
    pub(crate) root_cluster: u32,
}

impl Geometry {
    /// Reads the boot sector at `offset`. Fields are taken as they are: the result only means
    /// something once `fatfs` has accepted the same sector (it checks every field used here).
    pub(crate) fn read(file: &File, offset: u64, len: u64) -> io::Result<Geometry> {
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
pub(crate) struct RawDirs {
    pub(crate) file: File,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) geometry: Geometry,
    pub(crate) log: Arc<Mutex<IoLog>>,
}

impl RawDirs {
    /// Repairs the `.` and `..` entries of `dir`, a directory `fatfs` has just created.
    /// Does nothing if they are already in place; refuses any other layout.
    pub(crate) fn fix_dot_entries(&self, dir: &fatfs::Dir<'_, ImageWindow>) -> io::Result<()> {
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
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    format!("internal panic: {text}")
}
