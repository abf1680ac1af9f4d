//! Growing the image at build time (`[image]` in imgbuild.toml): the image file, the root
//! partition — which must be the last one on the disk — and its ext4 file system, before
//! anything is written into the working copy. The boot partition is not touched.
//!
//! The steps: the image file is extended (sparse); the root partition's end moves to a 1 MiB
//! boundary (what sfdisk aligns partitions to), in the MBR entry or in both GPT partition arrays
//! with the backup GPT header and array moved to the new last sectors ([`disk::grow_last_partition`]);
//! the ext4 file system is grown by `resize2fs` to the new partition size in whole blocks (less
//! a last block group too small for its own metadata, which resize2fs leaves out).
//!
//! Why resize2fs runs on a scratch copy of the root partition and not on `IMAGE?offset=N`:
//! resize2fs (e2fsprogs 1.47.0 `resize/main.c`, still so upstream) opens a regular file
//! a second time and, after a successful resize, `ftruncate`s it to the new file-system size
//! in bytes — ignoring the `offset=` io option. On a disk image that cuts everything past
//! `size` bytes from the start of the disk, i.e. the end of the root partition it just grew
//! (checked: a 64 MiB image with the file system at 1 MiB, resized to 30 MiB, becomes a
//! 30 MiB file). Without an explicit size it would also size the file system to the whole file,
//! overrunning the partition. So the root partition is copied out (data extents only, in the
//! kernel with `copy_file_range`, shared extents on btrfs/XFS), grown there with an explicit
//! block count, checked, and compared with the image: only the pieces that changed are written
//! back, and they are the exact dirty ranges the incremental packer re-hashes. No loop device,
//! no root.

use crate::apply::Span;
use crate::board::{Board, Role};
use crate::config::Growth;
use crate::disk::{self, Table, TableKind};
use crate::error::{Context, Error, Result};
use imgbuild_ranges::ByteRanges;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Partitions end on multiples of this (sfdisk's default alignment grain).
pub const ALIGN: u64 = 1 << 20;

/// The image after [`grow`]: its table as read back, the root partition, and what was written.
#[derive(Debug, Clone)]
pub struct Grown {
    /// The partition table read back from the grown image (the input table when nothing grew).
    pub table: Table,
    /// The root partition's byte range in the grown image.
    pub root: Span,
    /// The image's size in bytes.
    pub disk_size: u64,
    /// Byte ranges (offset, length) the growth changed: the partition table areas, the pieces
    /// of the root partition resize2fs changed (found by comparing the grown copy with the
    /// image), and the image's new tail. Empty when nothing grew.
    pub dirty: ByteRanges,
}

/// The new shape of the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    /// New size of the image file.
    disk_size: u64,
    /// New end (exclusive byte offset) of the root partition.
    root_end: u64,
}

/// Grows the working copy `image` (whose table is `table`) as `growth` asks; `None` changes
/// nothing. Refused before anything is written: a smaller image, a root partition that is not the
/// last one on the disk, a growth too small to move the root partition's aligned end. A size
/// equal to the image's is a no-op. `scratch_dir` holds the root partition's copy while
/// resize2fs grows it; `epoch` is the time resize2fs records (`E2FSPROGS_FAKE_TIME`), so that
/// the same inputs give the same bytes.
pub fn grow(
    image: &Path,
    table: &Table,
    board: &Board,
    growth: Option<Growth>,
    scratch_dir: &Path,
    epoch: i64,
) -> Result<Grown> {
    let index = board.partition(Role::Root).index;
    let Some(root) = table.partition(index) else {
        crate::bail!("[image]: the image has no root partition {index}");
    };
    let unchanged = || Grown {
        table: table.clone(),
        root: Span {
            offset: root.start,
            size: root.size,
        },
        disk_size: table.disk_size,
        dirty: ByteRanges::default(),
    };
    let Some(growth) = growth else {
        return Ok(unchanged());
    };
    let Some(layout) = layout(image, table, index, growth)? else {
        return Ok(unchanged());
    };
    let new_root_size = layout.root_end - root.start;
    let sb = Superblock::read(image, root.start)?;
    let blocks = new_root_size / sb.block_size;
    if blocks < sb.blocks {
        crate::bail!(
            "[image]: the root file system ({} blocks of {} bytes) is larger than the grown \
             root partition ({new_root_size} bytes) - the base image is corrupt",
            sb.blocks,
            sb.block_size
        );
    }
    tracing::info!(
        disk_size = layout.disk_size,
        root_size = new_root_size,
        fs_blocks = blocks,
        "growing the image"
    );

    // The root file system, grown in a private scratch file.
    let copy = tempfile::Builder::new()
        .prefix(".grow-root-")
        .tempfile_in(scratch_dir)
        .context(|| {
            format!(
                "[image]: cannot create a scratch file in {}",
                scratch_dir.display()
            )
        })?;
    let work = File::open(image).context(|| format!("{}: cannot open", image.display()))?;
    crate::check::copy_range(&work, root.start, root.size, copy.as_file(), 0)
        .and_then(|()| copy.as_file().set_len(new_root_size))
        .context(|| {
            format!(
                "[image]: copying the root partition to {} (is there enough free space?)",
                copy.path().display()
            )
        })?;
    drop(work);
    if blocks > sb.blocks {
        resize2fs(copy.path(), blocks, epoch)?;
    }
    // resize2fs leaves out a last block group too small for its own metadata (as mke2fs does;
    // `adjust_new_size` in resize/resize2fs.c): the file system may end up to a group short.
    let grown = Superblock::read(copy.path(), 0)?;
    if grown.blocks > blocks
        || grown.blocks < sb.blocks
        || blocks - grown.blocks >= u64::from(sb.blocks_per_group)
    {
        crate::bail!(
            "[image]: resize2fs left the root file system at {} blocks, expected {blocks}",
            grown.blocks
        );
    }

    // The image: extended sparsely, then only the bytes that differ from the grown copy are
    // written back — what resize2fs wrote, and zeros over whatever lay past the old root
    // partition (the old backup GPT) — so the dirty ranges are exact; then the table.
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .context(|| format!("{}: cannot open for writing", image.display()))?;
    let io = |e: std::io::Error| Error::msg(format!("[image]: growing {}: {e}", image.display()));
    out.set_len(layout.disk_size).map_err(io)?;
    let mut dirty =
        write_differences(copy.as_file(), &out, root.start, new_root_size).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    drop(copy);
    for (offset, len) in disk::grow_last_partition(image, table, index, layout.root_end)? {
        dirty.insert(offset, len);
    }
    dirty.insert(table.disk_size, layout.disk_size - table.disk_size);

    let table = disk::read_table(image).map_err(|e| e.context("[image]: the grown image"))?;
    let root = table
        .partition(index)
        .filter(|p| p.start == root.start && p.start + p.size == layout.root_end)
        .map(|p| Span {
            offset: p.start,
            size: p.size,
        })
        .ok_or_else(|| {
            Error::msg(format!(
                "[image]: the grown image's root partition {index} is not where it was written"
            ))
        })?;
    Ok(Grown {
        disk_size: table.disk_size,
        table,
        root,
        dirty,
    })
}

/// Where the root partition (`index`) and the disk end after `growth`; `None` when nothing
/// changes. Every refusal happens here, before anything is written.
fn layout(image: &Path, table: &Table, index: u32, growth: Growth) -> Result<Option<Layout>> {
    let mib = |n: u64| format!("{:.1} MiB", n as f64 / ALIGN as f64);
    let Some(root) = table.partition(index) else {
        crate::bail!("[image]: the image has no root partition {index}");
    };
    let root_end = root.start + root.size;
    if let Some(after) = table
        .partitions
        .iter()
        .filter(|p| p.index != index && p.size > 0)
        .filter(|p| p.start + p.size > root_end)
        .min_by_key(|p| p.start)
    {
        crate::bail!(
            "[image]: the root partition {index} is not the last partition on the disk: \
             partition {} (bytes {}..{}) follows it, so it cannot grow; build without [image] \
             or use a base image whose root partition comes last",
            after.index,
            after.start,
            after.start + after.size
        );
    }
    if table.kind == TableKind::Mbr && index > 4 {
        crate::bail!(
            "[image]: the root partition {index} is a logical MBR partition; only a primary one \
             can grow"
        );
    }
    let disk_size = table.disk_size;
    // Bytes after the usable area: the backup GPT array and header (none for MBR).
    let tail = disk_size - disk::usable_end(image, table, disk_size)?.min(disk_size);
    let layout = match growth {
        Growth::ImageSize(size) if size < disk_size => crate::bail!(
            "[image] size = {size} bytes ({}) is smaller than the base image ({disk_size} bytes, \
             {}): shrinking is not supported",
            mib(size),
            mib(disk_size)
        ),
        Growth::ImageSize(size) if size == disk_size => return Ok(None),
        Growth::ImageSize(size) => {
            if !size.is_multiple_of(table.sector_size) {
                crate::bail!(
                    "[image] size = {size} bytes is not a whole number of the image's \
                     {}-byte sectors",
                    table.sector_size
                );
            }
            let end = disk::usable_end(image, table, size)? / ALIGN * ALIGN;
            if end <= root_end {
                let need = (root_end / ALIGN + 1) * ALIGN + tail;
                crate::bail!(
                    "[image] size = {size} bytes leaves the root partition no room to grow (it \
                     ends at byte {root_end}; partitions end on 1 MiB boundaries): use at least \
                     {need} bytes ({})",
                    mib(need)
                );
            }
            Layout {
                disk_size: size,
                root_end: end,
            }
        }
        Growth::GrowRoot(0) => return Ok(None),
        Growth::GrowRoot(extra) => {
            let end = root_end
                .checked_add(extra)
                .and_then(|e| e.checked_next_multiple_of(ALIGN))
                .ok_or_else(|| Error::msg("[image] grow_root is too large"))?;
            let needed = match tail {
                0 => end,
                _ => (end + tail).next_multiple_of(ALIGN),
            };
            let size = needed.max(disk_size);
            let usable = disk::usable_end(image, table, size)?;
            if end > usable {
                crate::bail!(
                    "[image] grow_root: the root partition would end at byte {end}, past what \
                     the partition table can describe (byte {usable})"
                );
            }
            Layout {
                disk_size: size,
                root_end: end,
            }
        }
    };
    Ok(Some(layout))
}

/// Writes to `dst` at `at` the pieces of `src`'s first `len` bytes that differ from what `dst`
/// holds there; returns the byte ranges written (offsets in `dst`). Ranges that are holes in both
/// files are skipped without reading.
fn write_differences(src: &File, dst: &File, at: u64, len: u64) -> std::io::Result<ByteRanges> {
    const PIECE: u64 = 1 << 20;
    let next_data = |file: &File, from: u64, end: u64| -> u64 {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(from)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            // no SEEK_DATA support: everything is data
            Err(_) => from,
        }
    };
    let (mut a, mut b) = (vec![0u8; PIECE as usize], vec![0u8; PIECE as usize]);
    let mut written = ByteRanges::default();
    let mut pos = 0;
    while pos < len {
        let data = next_data(src, pos, len).min(next_data(dst, at + pos, at + len) - at);
        if data >= len {
            break;
        }
        pos = pos.max(data / PIECE * PIECE);
        let n = (len - pos).min(PIECE) as usize;
        src.read_exact_at(&mut a[..n], pos)?;
        dst.read_exact_at(&mut b[..n], at + pos)?;
        if a[..n] != b[..n] {
            dst.write_all_at(&a[..n], at + pos)?;
            written.insert(at + pos, n as u64);
        }
        pos += n as u64;
    }
    Ok(written)
}

/// What growing needs from an ext2/3/4 superblock.
struct Superblock {
    /// Block size in bytes.
    block_size: u64,
    /// Blocks in the file system.
    blocks: u64,
    /// Blocks per block group.
    blocks_per_group: u32,
}

impl Superblock {
    fn read(path: &Path, offset: u64) -> Result<Superblock> {
        const INCOMPAT_64BIT: u32 = 0x80;
        let what = || format!("{}: the root file system at byte {offset}", path.display());
        let file = File::open(path).context(|| format!("{}: cannot open", path.display()))?;
        let mut sb = [0u8; 1024];
        file.read_exact_at(&mut sb, offset + 1024)
            .context(|| format!("{}: cannot read its superblock", what()))?;
        let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
        let log = le32(0x18);
        if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 || log > 6 {
            crate::bail!("{}: no ext2/3/4 superblock", what());
        }
        let hi = match le32(0x60) & INCOMPAT_64BIT {
            0 => 0,
            _ => u64::from(le32(0x150)),
        };
        Ok(Superblock {
            block_size: 1024 << log,
            blocks: u64::from(le32(0x04)) | hi << 32,
            blocks_per_group: le32(0x20),
        })
    }
}

/// Grows the ext file system filling the plain file `fs` to `blocks` blocks with resize2fs.
fn resize2fs(fs: &Path, blocks: u64, epoch: i64) -> Result<()> {
    let tool = crate::check::find_tool("resize2fs", "e2fsprogs")?;
    // -f: the base was checked with e2fsck -fn just before; without it resize2fs asks for a
    // fresh `e2fsck -f` whenever the last check is older than the last mount.
    let out = Command::new(&tool)
        .arg("-f")
        .arg(fs)
        .arg(blocks.to_string())
        .env("LC_ALL", "C")
        .env("E2FSPROGS_FAKE_TIME", epoch.max(1).to_string())
        .stdin(Stdio::null())
        .output()
        .context(|| format!("[image]: cannot run {}", tool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reason = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("resize2fs 1."))
        .unwrap_or("no message");
    crate::bail!(
        "[image]: resize2fs could not grow the root file system to {blocks} blocks ({}): {reason}",
        out.status
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_layouts_align_the_root_end_and_refuse_shrinking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("x.img");
        let table = Table {
            kind: TableKind::Mbr,
            disk_size: 100 * ALIGN,
            sector_size: 512,
            disk_id: "12345678".into(),
            partitions: vec![
                part(1, 4 * ALIGN, 60 * ALIGN),
                part(2, 64 * ALIGN, 36 * ALIGN),
            ],
        };
        let l = |g| layout(&image, &table, 2, g);
        assert_eq!(
            l(Growth::ImageSize(200 * ALIGN)).ok(),
            Some(Some(Layout {
                disk_size: 200 * ALIGN,
                root_end: 200 * ALIGN
            }))
        );
        // Not a MiB multiple: the partition ends at the last boundary inside.
        assert_eq!(
            l(Growth::ImageSize(200 * ALIGN + 512)).ok(),
            Some(Some(Layout {
                disk_size: 200 * ALIGN + 512,
                root_end: 200 * ALIGN
            }))
        );
        assert_eq!(
            l(Growth::GrowRoot(1)).ok(),
            Some(Some(Layout {
                disk_size: 101 * ALIGN,
                root_end: 101 * ALIGN
            }))
        );
        assert_eq!(l(Growth::ImageSize(100 * ALIGN)).ok(), Some(None));
        assert_eq!(l(Growth::GrowRoot(0)).ok(), Some(None));
        let e = l(Growth::ImageSize(99 * ALIGN)).unwrap_err().to_string();
        assert!(e.contains("shrinking is not supported"), "{e}");
        let e = l(Growth::ImageSize(100 * ALIGN + 512))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no room to grow") && e.contains("105906176"),
            "{e}"
        );
        let e = l(Growth::ImageSize(100 * ALIGN + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("512-byte sectors"), "{e}");
        let e = l(Growth::GrowRoot(3 << 40)).unwrap_err().to_string();
        assert!(
            e.contains("past what the partition table can describe"),
            "{e}"
        );
        // The root partition must come last on the disk.
        let e = layout(&image, &table, 1, Growth::GrowRoot(ALIGN))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("partition 2 (bytes 67108864..104857600) follows it"),
            "{e}"
        );
    }

    fn part(index: u32, start: u64, size: u64) -> disk::Partition {
        disk::Partition {
            index,
            start,
            size,
            type_id: "0x83".into(),
            type_name: "Linux".into(),
            name: None,
            uuid: None,
            bootable: false,
        }
    }
}
