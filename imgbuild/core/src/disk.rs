//! Partition tables (MBR via `mbrman`, GPT via `gpt`) and file-system probes of a raw disk image.
//!
//! Everything here only reads the image, with bounds checks: garbage, truncated or hostile
//! input gives an error or [`FsKind::Unknown`], never a panic.

use crate::bail;
use crate::error::{Context, Error, Result};
use serde::Serialize;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Master Boot Record (DOS) table, including logical partitions.
    Mbr,
    /// GUID Partition Table (behind a protective MBR).
    Gpt,
}

/// One partition of a [`Table`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    /// Partition number as Linux numbers them (1-based; MBR logical partitions from 5).
    pub index: u32,
    /// Offset of the first byte in the image.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type: `"0x0c"` for MBR, the lowercase type GUID for GPT.
    pub type_id: String,
    /// Human name of the type, as fdisk names it ("W95 FAT32 (LBA)", "EFI System", ...).
    pub type_name: String,
    /// GPT partition name (`None` for MBR or an empty GPT name).
    pub name: Option<String>,
    /// PARTUUID: the GPT unique GUID (lowercase) or, for MBR, `DISKID-NN` as Linux forms it.
    pub uuid: Option<String>,
    /// MBR boot flag (0x80) or GPT "legacy BIOS bootable" attribute.
    pub bootable: bool,
}

/// A disk image's partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    /// MBR or GPT.
    pub kind: TableKind,
    /// Size of the image file in bytes.
    pub disk_size: u64,
    /// Logical sector size the table was read with (512, or 4096 for 4Kn GPT images).
    pub sector_size: u64,
    /// Disk identifier: 8 lowercase hex digits (MBR) or the disk GUID (GPT, lowercase).
    pub disk_id: String,
    /// Used partitions, in table order (MBR: primaries, then logical ones).
    pub partitions: Vec<Partition>,
}

impl Table {
    /// The partition numbered `index`, if any.
    pub fn partition(&self, index: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.index == index)
    }
}

/// A file-system kind recognised by [`probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32.
    Fat32,
    /// ext2 (no journal).
    Ext2,
    /// ext3 (journal, no ext4-only features).
    Ext3,
    /// ext4.
    Ext4,
    /// Anything else (including an empty partition).
    Unknown,
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Unknown => "unknown",
        })
    }
}

/// What [`probe`] found in a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsProbe {
    /// File-system kind.
    pub kind: FsKind,
    /// Volume label, trailing blanks trimmed; empty when there is none (FAT's "NO NAME").
    pub label: String,
    /// File-system UUID as blkid shows it: lowercase 8-4-4-4-12 for ext, `XXXX-XXXX` (the volume
    /// serial number) for FAT; empty when unknown.
    pub uuid: String,
}

const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
const MBR_TYPE_PROTECTIVE: u8 = 0xEE;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// GPT attribute bit 2: legacy BIOS bootable.
const GPT_ATTR_LEGACY_BOOTABLE: u64 = 1 << 2;

fn no_table(image: &Path) -> Error {
    Error::msg(format!(
        "{}: no partition table (neither MBR nor GPT) - is this a disk image?",
        image.display()
    ))
}

/// Reads up to `len` bytes at `offset`; fewer if the file ends first.
fn read_at(file: &mut File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    file.seek(SeekFrom::Start(offset))?;
    file.by_ref().take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads the partition table of the disk image at `image`.
///
/// A protective MBR (type 0xEE) means GPT: then both the primary and the backup header and
/// both partition arrays must be valid (CRCs checked), else the error names the broken one.
/// Partitions reaching past the end of the file are an error naming the partition.
pub fn read_table(image: &Path) -> Result<Table> {
    let mut file = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
    let disk_size = file
        .metadata()
        .context(|| format!("{}: cannot read its size", image.display()))?
        .len();
    let mbr = read_at(&mut file, 0, 512).context(|| format!("{}: cannot read", image.display()))?;
    if mbr.len() < 512 || mbr[510..512] != MBR_SIGNATURE {
        return Err(no_table(image));
    }
    let entries: Vec<&[u8]> = mbr[446..510].chunks(16).collect();
    // Boot indicators other than 0x00/0x80 mean the sector is not a partition table (a bare
    // file system's boot sector also ends in 55 AA).
    if entries.iter().any(|e| e[0] != 0 && e[0] != 0x80) || entries.iter().all(|e| e[4] == 0) {
        return Err(no_table(image));
    }
    let table = if entries.iter().any(|e| e[4] == MBR_TYPE_PROTECTIVE) {
        read_gpt(image, &mut file, disk_size)?
    } else {
        read_mbr(image, &mut file, disk_size)?
    };
    check_bounds(image, &table)?;
    check_overlap(image, &table)?;
    Ok(table)
}

/// MBR types of extended partitions: containers of the logical ones, not data.
const MBR_EXTENDED_TYPES: &[&str] = &["0x05", "0x0f", "0x85"];

/// No two data partitions may share a byte: writing one would corrupt the other.
fn check_overlap(image: &Path, table: &Table) -> Result<()> {
    let mut parts: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| p.size > 0)
        .filter(|p| {
            table.kind != TableKind::Mbr || !MBR_EXTENDED_TYPES.contains(&p.type_id.as_str())
        })
        .collect();
    parts.sort_by_key(|p| (p.start, p.index));
    for pair in parts.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        // bounds are checked first, so start + size cannot overflow
        if b.start < a.start.saturating_add(a.size) {
            bail!(
                "{}: partitions {} (bytes {}..{}) and {} (bytes {}..{}) overlap - the partition \
                 table is corrupt; use an intact image",
                image.display(),
                a.index,
                a.start,
                a.start.saturating_add(a.size),
                b.index,
                b.start,
                b.start.saturating_add(b.size)
            );
        }
    }
    Ok(())
}

/// Every partition must lie within the image file.
fn check_bounds(image: &Path, table: &Table) -> Result<()> {
    for p in &table.partitions {
        let end = p.start.checked_add(p.size);
        if end.is_none_or(|end| end > table.disk_size) {
            bail!(
                "{}: partition {} (bytes {}..{}) extends past the end of the image ({} bytes) - \
                 the file is truncated or not a whole disk image",
                image.display(),
                p.index,
                p.start,
                p.start.saturating_add(p.size),
                table.disk_size
            );
        }
    }
    Ok(())
}

fn read_mbr(image: &Path, file: &mut File, disk_size: u64) -> Result<Table> {
    const SECTOR: u64 = 512;
    // mbrman adds EBR offsets in u32 without overflow checks; a crafted extended partition
    // chain must not crash us, so a panic inside it is turned into an error.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        mbrman::MBR::read_from(file, SECTOR as u32)
    }));
    let mbr = match parsed {
        Ok(result) => result.context(|| format!("{}: cannot read the MBR", image.display()))?,
        Err(_) => bail!(
            "{}: the MBR's extended partition chain is inconsistent",
            image.display()
        ),
    };
    check_logical(image, &mbr)?;
    let disk_id = hex::encode({
        let mut sig = mbr.header.disk_signature;
        sig.reverse();
        sig
    });
    let partitions = mbr
        .iter()
        .filter(|(_, entry)| entry.is_used())
        .map(|(index, entry)| Partition {
            index: index as u32,
            start: u64::from(entry.starting_lba) * SECTOR,
            size: u64::from(entry.sectors) * SECTOR,
            type_id: format!("{:#04x}", entry.sys),
            type_name: mbr_type_name(entry.sys).to_string(),
            name: None,
            uuid: Some(format!("{disk_id}-{index:02}")),
            bootable: entry.boot == 0x80,
        })
        .collect();
    Ok(Table {
        kind: TableKind::Mbr,
        disk_size,
        sector_size: SECTOR,
        disk_id,
        partitions,
    })
}

/// Each logical partition must lie after its EBR and inside the extended partition.
fn check_logical(image: &Path, mbr: &mbrman::MBR) -> Result<()> {
    let Some(extended) = mbr.header.iter().map(|(_, e)| e).find(|e| e.is_extended()) else {
        return Ok(());
    };
    let low = u64::from(extended.starting_lba);
    let high = low + u64::from(extended.sectors);
    for (i, logical) in mbr.logical_partitions.iter().enumerate() {
        let start = u64::from(logical.partition.starting_lba);
        let end = start + u64::from(logical.partition.sectors);
        if start <= u64::from(logical.absolute_ebr_lba) || start < low || end > high {
            bail!(
                "{}: logical partition {} (sectors {start}..{end}) lies outside the extended \
                 partition (sectors {low}..{high}) - the partition table is corrupt",
                image.display(),
                i + 5
            );
        }
    }
    Ok(())
}

/// fdisk's name for an MBR partition type.
fn mbr_type_name(sys: u8) -> &'static str {
    match sys {
        0x01 => "FAT12",
        0x04 => "FAT16 <32M",
        0x05 => "Extended",
        0x06 => "FAT16",
        0x07 => "HPFS/NTFS/exFAT",
        0x0b => "W95 FAT32",
        0x0c => "W95 FAT32 (LBA)",
        0x0e => "W95 FAT16 (LBA)",
        0x0f => "W95 Ext'd (LBA)",
        0x82 => "Linux swap / Solaris",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xda => "Non-FS data",
        0xee => "GPT",
        0xef => "EFI (FAT-12/16/32)",
        0xfd => "Linux raid autodetect",
        _ => "unknown",
    }
}

/// fdisk's name for a GPT partition type GUID (lowercase).
fn gpt_type_name(guid: &str) -> &'static str {
    match guid {
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b" => "EFI System",
        "21686148-6449-6e6f-744e-656564454649" => "BIOS boot",
        "0fc63daf-8483-4772-8e79-3d69d8477de4" => "Linux filesystem",
        "b921b045-1df0-41c3-af44-4c6f280d3fae" => "Linux root (ARM-64)",
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709" => "Linux root (x86-64)",
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3" => "Linux root (ARM)",
        "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f" => "Linux swap",
        "bc13c2ff-59e6-4262-a352-b275fd6f7172" => "Linux extended boot",
        "933ac7e1-2eb4-4f13-b844-0e14e2aef915" => "Linux home",
        "e6d6d379-f507-44c2-a23c-238f2a3df928" => "Linux LVM",
        "a19d880f-05fc-4d3b-a006-743f0f84911e" => "Linux RAID",
        "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7" => "Microsoft basic data",
        _ => "unknown",
    }
}

/// The logical sector size of a GPT image: where the "EFI PART" signature is (LBA 1).
fn gpt_sector_size(image: &Path, file: &mut File) -> Result<gpt::disk::LogicalBlockSize> {
    for (size, lb) in [
        (512u64, gpt::disk::LogicalBlockSize::Lb512),
        (4096, gpt::disk::LogicalBlockSize::Lb4096),
    ] {
        let sig = read_at(file, size, 8).context(|| format!("{}: cannot read", image.display()))?;
        if sig == GPT_SIGNATURE {
            return Ok(lb);
        }
    }
    bail!(
        "{}: protective MBR but no GPT header at LBA 1 - the primary GPT header is missing or \
         corrupt",
        image.display()
    )
}

fn read_gpt(image: &Path, file: &mut File, disk_size: u64) -> Result<Table> {
    let lb = gpt_sector_size(image, file)?;
    let sector_size = u64::from(lb);
    let broken = |which: &str, e: &dyn fmt::Display| {
        Error::msg(format!(
            "{}: the {which} is corrupt ({e}) - repair the image (e.g. `sgdisk -e`) or use an \
             intact copy",
            image.display()
        ))
    };
    let primary = gpt::header::read_header_from_arbitrary_device(file, lb)
        .map_err(|e| broken("primary GPT header", &e))?;
    check_entries(image, "primary", &primary)?;
    check_backup_position(image, &primary, sector_size, disk_size)?;
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(lb)
        .open_from_device(&mut *file)
        .map_err(|e| broken("primary GPT partition array", &e))?;
    let backup = disk.backup_header().cloned().map_err(|e| {
        broken(
            &format!(
                "backup GPT header (last sector, LBA {})",
                primary.backup_lba
            ),
            &e,
        )
    });
    let disk_guid = disk.guid().to_string().to_lowercase();
    let entries = disk.partitions().clone();
    drop(disk);
    let backup = backup?;
    check_entries(image, "backup", &backup)?;
    // Reading the backup's array also checks its CRC.
    gpt::partition::file_read_partitions(&mut *file, &backup, lb)
        .map_err(|e| broken("backup GPT partition array", &e))?;

    let mut partitions = Vec::new();
    for (index, p) in &entries {
        if !p.is_used() {
            continue;
        }
        let bad = || {
            Error::msg(format!(
                "{}: GPT partition {index} has an invalid range",
                image.display()
            ))
        };
        let sectors = p
            .last_lba
            .checked_sub(p.first_lba)
            .and_then(|n| n.checked_add(1))
            .ok_or_else(bad)?;
        let type_id = p.part_type_guid.guid.to_string().to_lowercase();
        partitions.push(Partition {
            index: *index,
            start: p.first_lba.checked_mul(sector_size).ok_or_else(bad)?,
            size: sectors.checked_mul(sector_size).ok_or_else(bad)?,
            type_name: gpt_type_name(&type_id).to_string(),
            type_id,
            name: Some(p.name.clone()).filter(|n| !n.is_empty()),
            uuid: Some(p.part_guid.to_string().to_lowercase()),
            bootable: p.flags & GPT_ATTR_LEGACY_BOOTABLE != 0,
        });
    }
    Ok(Table {
        kind: TableKind::Gpt,
        disk_size,
        sector_size,
        disk_id: disk_guid,
        partitions,
    })
}

/// The backup header must be the image's last sector, where the primary header says it is.
fn check_backup_position(
    image: &Path,
    primary: &gpt::header::Header,
    sector_size: u64,
    disk_size: u64,
) -> Result<()> {
    let gpt_size = primary
        .backup_lba
        .checked_add(1)
        .and_then(|n| n.checked_mul(sector_size));
    match gpt_size {
        Some(size) if size > disk_size => bail!(
            "{}: the image is truncated - its GPT describes a {size}-byte disk but the file has              {disk_size} bytes (the backup GPT header is missing); use the complete image",
            image.display()
        ),
        Some(size) if size < disk_size => bail!(
            "{}: the backup GPT header is not at the end of the image (GPT disk size {size}              bytes, file {disk_size} bytes) - the image was resized; move it with `sgdisk -e`",
            image.display()
        ),
        Some(_) => Ok(()),
        None => bail!(
            "{}: the primary GPT header is corrupt (backup header LBA {} is out of range)",
            image.display(),
            primary.backup_lba
        ),
    }
}

/// Most partition entries a GPT may declare (the usual count is 128).
const GPT_MAX_ENTRIES: u32 = 16384;

/// The gpt crate asserts 128-byte entries and allocates the whole array: bound both first.
fn check_entries(image: &Path, which: &str, header: &gpt::header::Header) -> Result<()> {
    if header.part_size != 128 {
        bail!(
            "{}: the {which} GPT header declares {}-byte partition entries; only 128 is supported",
            image.display(),
            header.part_size
        );
    }
    if header.num_parts > GPT_MAX_ENTRIES {
        bail!(
            "{}: the {which} GPT header declares {} partition entries (at most {GPT_MAX_ENTRIES} \
             are supported) - the header is corrupt",
            image.display(),
            header.num_parts
        );
    }
    Ok(())
}

/// Recognises the file system in `part` by its magic bytes (pure Rust, read-only).
///
/// ext2/3/4 are told apart by feature flags the way blkid does; FAT12/16 by cluster count, FAT32
/// by its BPB (as Linux does). A partition with neither is [`FsKind::Unknown`].
pub fn probe(image: &Path, part: &Partition) -> Result<FsProbe> {
    let mut file = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
    let len = usize::try_from(part.size.min(4096)).unwrap_or(4096);
    let head = read_at(&mut file, part.start, len).context(|| {
        format!(
            "{}: cannot read partition {} at byte {}",
            image.display(),
            part.index,
            part.start
        )
    })?;
    Ok(probe_ext(&head)
        .or_else(|| probe_fat(&head))
        .unwrap_or(FsProbe {
            kind: FsKind::Unknown,
            label: String::new(),
            uuid: String::new(),
        }))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A fixed-size, NUL/blank padded label field, decoded leniently.
fn label_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}

/// ext superblock at byte 1024 of the partition.
fn probe_ext(head: &[u8]) -> Option<FsProbe> {
    const SB: usize = 1024;
    const COMPAT_HAS_JOURNAL: u32 = 0x4;
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    // Features ext3 understands (blkid's EXT3_FEATURE_*_SUPP); anything else means ext4.
    const EXT3_INCOMPAT: u32 = 0x0002 | 0x0004 | 0x0010;
    const EXT3_RO_COMPAT: u32 = 0x0001 | 0x0002 | 0x0004;
    let sb = head.get(SB..SB + 1024)?;
    if le16(sb, 0x38)? != 0xEF53 {
        return None;
    }
    let compat = le32(sb, 0x5C)?;
    let incompat = le32(sb, 0x60)?;
    let ro_compat = le32(sb, 0x64)?;
    let kind = if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        FsKind::Unknown
    } else if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        FsKind::Ext4
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        FsKind::Ext3
    } else {
        FsKind::Ext2
    };
    Some(FsProbe {
        kind,
        label: label_field(sb.get(0x78..0x88)?),
        uuid: format_uuid(sb.get(0x68..0x78)?),
    })
}

fn format_uuid(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// FAT boot sector (BPB) at byte 0 of the partition.
fn probe_fat(head: &[u8]) -> Option<FsProbe> {
    if head.get(510..512)? != MBR_SIGNATURE || !matches!(head[0], 0xEB | 0xE9) {
        return None;
    }
    let bytes_per_sector = u32::from(le16(head, 11)?);
    let per_cluster = u32::from(*head.get(13)?);
    let reserved = u32::from(le16(head, 14)?);
    let fats = u32::from(*head.get(16)?);
    let root_entries = u32::from(le16(head, 17)?);
    let total = match le16(head, 19)? {
        0 => le32(head, 32)?,
        n => u32::from(n),
    };
    let fat16_size = u32::from(le16(head, 22)?);
    let fat_size = if fat16_size != 0 {
        fat16_size
    } else {
        le32(head, 36)?
    };
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
        || fat_size == 0
    {
        return None;
    }
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let meta = reserved
        .checked_add(fats.checked_mul(fat_size)?)?
        .checked_add(root_sectors)?;
    let clusters = total.checked_sub(meta)? / per_cluster;
    let (kind, ext) = if fat16_size == 0 {
        (FsKind::Fat32, 0x40)
    } else if clusters < 4085 {
        (FsKind::Fat12, 0x24)
    } else {
        (FsKind::Fat16, 0x24)
    };
    // Extended boot signature 0x29 (or 0x28, serial only) precedes serial and label.
    let (label, uuid) = match *head.get(ext + 2)? {
        sig @ (0x28 | 0x29) => {
            let serial = le32(head, ext + 3)?;
            let label = if sig == 0x29 {
                label_field(head.get(ext + 7..ext + 18)?)
            } else {
                String::new()
            };
            (
                label,
                format!("{:04X}-{:04X}", serial >> 16, serial & 0xFFFF),
            )
        }
        _ => (String::new(), String::new()),
    };
    let label = if label == "NO NAME" {
        String::new()
    } else {
        label
    };
    Some(FsProbe { kind, label, uuid })
}

// ---------------------------------------------------------------------------------------------
// Writers: growing the last partition of a disk image (used by `crate::grow`).

/// CHS geometry sfdisk uses for image files (255 heads, 63 sectors per track).
const CHS_HEADS: u64 = 255;
const CHS_SECTORS: u64 = 63;

/// The CHS address of `lba` in an MBR entry, as sfdisk writes it: `fe ff ff` (cylinder 1023,
/// head 254, sector 63) when the cylinder does not fit in 10 bits.
fn mbr_chs(lba: u64) -> [u8; 3] {
    let cylinder = lba / (CHS_HEADS * CHS_SECTORS);
    if cylinder > 1023 {
        return [0xfe, 0xff, 0xff];
    }
    let head = (lba / CHS_SECTORS) % CHS_HEADS;
    let sector = lba % CHS_SECTORS + 1;
    // head < 255, sector < 64 and cylinder < 1024, so each part fits its bits.
    [
        head as u8,
        sector as u8 | ((cylinder >> 8) as u8) << 6,
        (cylinder & 0xff) as u8,
    ]
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The fields of a primary GPT header that growing the disk changes or needs.
struct GptLayout {
    /// The primary header's sector, as read.
    header: Vec<u8>,
    /// Bytes of the header covered by its CRC.
    header_size: usize,
    /// LBA of the primary header itself (1).
    my_lba: u64,
    /// LBA of the backup header (the disk's last sector).
    backup_lba: u64,
    /// Last LBA a partition may use.
    last_usable: u64,
    /// LBA of the primary partition array.
    entries_lba: u64,
    /// Size in bytes of the partition array (entries × entry size).
    array_bytes: u64,
    /// Sectors the partition array takes.
    array_sectors: u64,
}

impl GptLayout {
    fn read(image: &Path, file: &File, sector_size: u64) -> Result<GptLayout> {
        use std::os::unix::fs::FileExt;
        let corrupt = |what: &str| {
            Error::msg(format!(
                "{}: the primary GPT header is corrupt ({what})",
                image.display()
            ))
        };
        let len = usize::try_from(sector_size).map_err(|_| corrupt("sector size"))?;
        let mut header = vec![0u8; len];
        file.read_exact_at(&mut header, sector_size)
            .context(|| format!("{}: cannot read the GPT header", image.display()))?;
        if header.get(..8) != Some(GPT_SIGNATURE.as_slice()) {
            return Err(corrupt("no EFI PART signature"));
        }
        let field32 = |at| le32(&header, at).ok_or_else(|| corrupt("truncated"));
        let field64 = |at| le64(&header, at).ok_or_else(|| corrupt("truncated"));
        let header_size = usize::try_from(field32(12)?).map_err(|_| corrupt("header size"))?;
        if !(92..=len).contains(&header_size) {
            return Err(corrupt("header size"));
        }
        let (num, entry_size) = (u64::from(field32(80)?), u64::from(field32(84)?));
        if entry_size != 128 || num > u64::from(GPT_MAX_ENTRIES) {
            return Err(corrupt("partition entry count or size"));
        }
        let array_bytes = num * entry_size;
        let array_sectors = array_bytes.div_ceil(sector_size);
        let (my_lba, entries_lba) = (field64(24)?, field64(72)?);
        // The primary header is in LBA 1 and its array after it, within the disk as the header
        // itself describes it (so byte offsets computed from these cannot overflow).
        let backup_lba = field64(32)?;
        let array_end = entries_lba
            .checked_add(array_sectors)
            .filter(|&end| end <= backup_lba)
            .and_then(|end| end.checked_mul(sector_size));
        if my_lba != 1 || entries_lba < 2 || array_end.is_none() {
            return Err(corrupt("header or partition array position"));
        }
        Ok(GptLayout {
            header_size,
            my_lba,
            backup_lba,
            last_usable: field64(48)?,
            entries_lba,
            array_bytes,
            array_sectors,
            header,
        })
    }

    /// (new backup header LBA, new backup array LBA, new last usable LBA) for a disk of
    /// `sectors` sectors: the backup header in the last sector, the backup array just before
    /// it, and the last usable LBA moved by as much as the disk grew (never into the array).
    fn moved(&self, image: &Path, sectors: u64) -> Result<(u64, u64, u64)> {
        let old_sectors = self.backup_lba.saturating_add(1);
        let grown = sectors.checked_sub(old_sectors).ok_or_else(|| {
            Error::msg(format!(
                "{}: the disk cannot shrink ({sectors} sectors, the GPT describes {old_sectors})",
                image.display()
            ))
        })?;
        let backup = sectors - 1;
        let array = backup.checked_sub(self.array_sectors).ok_or_else(|| {
            Error::msg(format!(
                "{}: the disk is too small for a GPT",
                image.display()
            ))
        })?;
        let last_usable = self
            .last_usable
            .saturating_add(grown)
            .min(array.saturating_sub(1));
        Ok((backup, array, last_usable))
    }
}

/// The byte offset where partitions must end on this disk if its image file were `disk_size`
/// bytes long: the end of the disk for MBR (at most 2 TiB, the limit of its 32-bit sector
/// numbers), the byte after the last usable LBA for GPT once its backup partition array and
/// header are moved to the last sectors (see [`grow_last_partition`]).
pub fn usable_end(image: &Path, table: &Table, disk_size: u64) -> Result<u64> {
    match table.kind {
        TableKind::Mbr => Ok(disk_size.min((1u64 << 32) * 512)),
        TableKind::Gpt => {
            let file = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
            let gpt = GptLayout::read(image, &file, table.sector_size)?;
            let (_, _, last_usable) = gpt.moved(image, disk_size / table.sector_size)?;
            Ok((last_usable + 1) * table.sector_size)
        }
    }
}

/// Moves the end of partition `index`, which must be the last one on the disk, to byte
/// `new_end`, on an image file already extended to its new length (`table` is the table as read
/// before). MBR: the entry's sector count and end CHS (primary partitions only). GPT: the
/// entry's last LBA in both partition arrays, the backup array and header moved to the new last
/// sectors, both headers' alternate LBA, last usable LBA and CRCs, and the protective MBR's size
/// when it covered the whole disk. Only the table areas are written; the bytes of the grown
/// range are the caller's. Returns the byte ranges written (offset, length).
pub fn grow_last_partition(
    image: &Path,
    table: &Table,
    index: u32,
    new_end: u64,
) -> Result<Vec<(u64, u64)>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .context(|| format!("{}: cannot open for writing", image.display()))?;
    let disk_size = file
        .metadata()
        .context(|| format!("{}: cannot read its size", image.display()))?
        .len();
    let Some(part) = table.partition(index) else {
        bail!("{}: no partition {index} to grow", image.display());
    };
    let ss = table.sector_size;
    if !new_end.is_multiple_of(ss) || new_end <= part.start || !disk_size.is_multiple_of(ss) {
        bail!(
            "{}: partition {index} cannot end at byte {new_end} of a {disk_size}-byte disk \
             ({ss}-byte sectors)",
            image.display()
        );
    }
    let written = match table.kind {
        TableKind::Mbr => grow_mbr(image, &file, part, new_end)?,
        TableKind::Gpt => grow_gpt(image, &file, table, part, new_end, disk_size)?,
    };
    file.sync_all()
        .context(|| format!("{}: cannot write the partition table", image.display()))?;
    Ok(written)
}

fn grow_mbr(image: &Path, file: &File, part: &Partition, new_end: u64) -> Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    const SECTOR: u64 = 512;
    if !(1..=4).contains(&part.index) {
        bail!(
            "{}: partition {} is a logical partition; only a primary partition can be grown",
            image.display(),
            part.index
        );
    }
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0)
        .context(|| format!("{}: cannot read the MBR", image.display()))?;
    let at = 446 + 16 * (part.index as usize - 1);
    let start = u64::from(le32(&mbr, at + 8).unwrap_or(0));
    let end_sector = new_end / SECTOR;
    let sectors = end_sector.saturating_sub(start);
    if start * SECTOR != part.start {
        bail!(
            "{}: the MBR entry of partition {} changed while growing it",
            image.display(),
            part.index
        );
    }
    let Ok(sectors32) = u32::try_from(sectors) else {
        bail!(
            "{}: an MBR partition cannot end beyond 2 TiB (partition {} would end at byte \
             {new_end}); use a GPT image",
            image.display(),
            part.index
        );
    };
    mbr[at + 5..at + 8].copy_from_slice(&mbr_chs(end_sector - 1));
    mbr[at + 12..at + 16].copy_from_slice(&sectors32.to_le_bytes());
    file.write_all_at(&mbr, 0)
        .context(|| format!("{}: cannot write the MBR", image.display()))?;
    Ok(vec![(0, SECTOR)])
}

fn grow_gpt(
    image: &Path,
    file: &File,
    table: &Table,
    part: &Partition,
    new_end: u64,
    disk_size: u64,
) -> Result<Vec<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    let ss = table.sector_size;
    let io = |what: &'static str| {
        move |e: std::io::Error| Error::msg(format!("{}: cannot {what}: {e}", image.display()))
    };
    let gpt = GptLayout::read(image, file, ss)?;
    let sectors = disk_size / ss;
    let (backup_lba, backup_array_lba, last_usable) = gpt.moved(image, sectors)?;
    let last_lba = new_end / ss - 1;
    if last_lba > last_usable {
        bail!(
            "{}: partition {} cannot end at byte {new_end}: the GPT's last usable byte is {}",
            image.display(),
            part.index,
            (last_usable + 1) * ss
        );
    }
    // The primary partition array, with the partition's last LBA moved.
    let array_len = usize::try_from(gpt.array_sectors * ss).map_err(|_| {
        Error::msg(format!(
            "{}: GPT partition array too large",
            image.display()
        ))
    })?;
    let mut array = vec![0u8; array_len];
    file.read_exact_at(&mut array, gpt.entries_lba * ss)
        .map_err(io("read the GPT partition array"))?;
    let entry = 128 * (part.index as usize - 1);
    let first_lba = le64(&array, entry + 32);
    if entry + 128 > gpt.array_bytes as usize || first_lba.map(|l| l * ss) != Some(part.start) {
        bail!(
            "{}: the GPT entry of partition {} changed while growing it",
            image.display(),
            part.index
        );
    }
    array[entry + 40..entry + 48].copy_from_slice(&last_lba.to_le_bytes());
    let array_crc = crc32fast::hash(&array[..gpt.array_bytes as usize]);

    // Both headers: same fields but their own position, the other's and their array's.
    let header_sector = |my: u64, alternate: u64, entries: u64| {
        let mut h = gpt.header.clone();
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[72..80].copy_from_slice(&entries.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..gpt.header_size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let primary = header_sector(gpt.my_lba, backup_lba, gpt.entries_lba);
    let mut backup = header_sector(backup_lba, gpt.my_lba, backup_array_lba);
    // Past the header the sector is zero (as the spec reserves it).
    backup[gpt.header_size..].fill(0);

    // The protective MBR's 0xEE entry covers the whole disk (at most 2^32 - 1 sectors), if it
    // did so before; a hybrid MBR's entries are left alone.
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0)
        .map_err(io("read the protective MBR"))?;
    let old_sectors = gpt.backup_lba + 1;
    let cover = |sectors: u64| (sectors - 1).min(u64::from(u32::MAX));
    let mut mbr_changed = false;
    for at in (446..510).step_by(16) {
        let size = le32(&mbr, at + 12).map(u64::from);
        if mbr[at + 4] == MBR_TYPE_PROTECTIVE && size == Some(cover(old_sectors)) {
            let new_size = cover(sectors);
            // UEFI: the ending CHS is 0xFFFFFF when the last sector has no CHS address.
            let chs = match mbr_chs(new_size) {
                [0xfe, 0xff, 0xff] => [0xff; 3],
                chs => chs,
            };
            mbr[at + 5..at + 8].copy_from_slice(&chs);
            mbr[at + 12..at + 16].copy_from_slice(&(new_size as u32).to_le_bytes());
            mbr_changed = true;
        }
    }

    // Backup first, primary last: until the primary header is written the old table stands.
    file.write_all_at(&array, backup_array_lba * ss)
        .map_err(io("write the backup GPT partition array"))?;
    file.write_all_at(&backup, backup_lba * ss)
        .map_err(io("write the backup GPT header"))?;
    file.write_all_at(&array, gpt.entries_lba * ss)
        .map_err(io("write the GPT partition array"))?;
    file.write_all_at(&primary, gpt.my_lba * ss)
        .map_err(io("write the GPT header"))?;
    let mut written = vec![
        (gpt.my_lba * ss, ss),
        (gpt.entries_lba * ss, array_len as u64),
        (backup_array_lba * ss, array_len as u64),
        (backup_lba * ss, ss),
    ];
    if mbr_changed {
        file.write_all_at(&mbr, 0)
            .map_err(io("write the protective MBR"))?;
        written.push((0, 512));
    }
    written.sort_unstable();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chs_is_computed_like_sfdisk() {
        // What sfdisk 2.38 wrote as the end CHS of partitions ending at these sectors.
        assert_eq!(mbr_chs(409_599), [0x7e, 0x25, 0x19]);
        assert_eq!(mbr_chs(73_728), [0x96, 0x13, 0x04]);
        assert_eq!(mbr_chs(9 * (1 << 30) / 512 - 1), [0xfe, 0xff, 0xff]);
    }
}
