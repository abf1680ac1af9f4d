//! bmaptool block maps (format 2.0, SHA-256), written exactly as `bmaptool create` writes them.
//!
//! Mapped blocks come from the file's sparse map (`SEEK_DATA`/`SEEK_HOLE`), like bmaptool; zero
//! blocks inside data are kept mapped on purpose: when flashing onto a used card, unmapped blocks
//! keep the card's old contents, and a file system may rely on blocks it wrote as zeros.

use crate::chunks::{open_raw, read_range, sha256};
use crate::error::{bail, Error, IoContext, Result};
use crate::parallel::{default_threads, for_each_ordered};
use imgbuild_overlay::ImageRead;
use sha2::{Digest, Sha256};
use std::ops::RangeInclusive;
use std::path::Path;

/// The bmap format version written.
pub const BMAP_VERSION: &str = "2.0";
/// Bytes hashed per read while checksumming a range.
const READ_PIECE: u64 = 4 << 20;

/// What [`write_bmap`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmapStats {
    /// Size of the image in bytes.
    pub image_size: u64,
    /// Block size of the map.
    pub block_size: u64,
    /// Blocks in the image (the last one may be partial).
    pub blocks: u64,
    /// Blocks listed in the map.
    pub mapped_blocks: u64,
    /// Ranges of blocks listed in the map.
    pub ranges: Vec<RangeInclusive<u64>>,
}

/// Writes the bmap of the (sparse) raw image `raw` to `out`, with `block_size`-byte blocks
/// (bmaptool uses the file system's block size, normally 4096).
pub fn write_bmap(raw: &Path, out: &Path, block_size: u64) -> Result<BmapStats> {
    let (file, _) = open_raw(raw)?;
    write_bmap_from(&file, raw, out, block_size)
}

/// [`write_bmap`] over any [`ImageRead`] (a file, or an `imgbuild_overlay::Overlay`, whose
/// sparse map is the one a copy with the same writes would have); `raw` names it in errors.
pub fn write_bmap_from(
    src: &dyn ImageRead,
    raw: &Path,
    out: &Path,
    block_size: u64,
) -> Result<BmapStats> {
    if block_size < 512 || block_size & 511 != 0 || block_size > 1 << 30 {
        bail!(
            InvalidInput,
            "bmap block size {block_size} is invalid: use a multiple of 512 such as 4096"
        );
    }
    let len = src
        .image_len()
        .on(raw, || "reading the size of raw image".into())?;
    let file = src;
    if len == 0 {
        return Err(Error::Image {
            path: raw.to_path_buf(),
            reason: "cannot write a bmap for an empty image: bmaptool rejects empty images".into(),
        });
    }
    let ranges = mapped_blocks(file, len, block_size, raw)?;
    let sums = range_checksums(file, len, block_size, &ranges, raw)?;
    let blocks = len.div_ceil(block_size);
    let stats = BmapStats {
        image_size: len,
        block_size,
        blocks,
        mapped_blocks: ranges.iter().map(|r| r.end() - r.start() + 1).sum(),
        ranges,
    };
    let xml = render(&stats, &sums);
    std::fs::write(out, xml).on(out, || "writing bmap".into())?;
    Ok(stats)
}

/// The block ranges holding data, from the sparse map, rounded out to whole blocks and merged.
fn mapped_blocks(
    file: &dyn ImageRead,
    len: u64,
    bs: u64,
    path: &Path,
) -> Result<Vec<RangeInclusive<u64>>> {
    let mut ranges: Vec<RangeInclusive<u64>> = Vec::new();
    let data = file
        .image_data()
        .on(path, || "reading the sparse map (SEEK_DATA) of".into())?;
    for data in data.spans().map(|r| r.start..r.end.min(len)) {
        let (first, last) = (data.start / bs, data.end.div_ceil(bs) - 1);
        match ranges.last_mut() {
            Some(prev) if *prev.end() + 1 >= first => *prev = *prev.start()..=last.max(*prev.end()),
            _ => ranges.push(first..=last),
        }
    }
    Ok(ranges)
}

/// Hex SHA-256 of the bytes of each block range (clipped to the image end), on all cores.
fn range_checksums(
    file: &dyn ImageRead,
    len: u64,
    bs: u64,
    ranges: &[RangeInclusive<u64>],
    path: &Path,
) -> Result<Vec<String>> {
    let threads = default_threads();
    let mut sums = Vec::with_capacity(ranges.len());
    for_each_ordered(
        ranges.len(),
        threads,
        2 * threads,
        Vec::new,
        |i, buf| {
            let r = &ranges[i];
            let bytes = (r.start() * bs)..((r.end() + 1) * bs).min(len);
            if bytes.end - bytes.start <= READ_PIECE {
                read_range(file, &bytes, buf, path)?;
                return Ok(hex::encode(sha256(buf)));
            }
            let mut hasher = Sha256::new();
            let mut at = bytes.start;
            while at < bytes.end {
                let piece = at..(at + READ_PIECE).min(bytes.end);
                read_range(file, &piece, buf, path)?;
                hasher.update(&buf[..]);
                at = piece.end;
            }
            Ok(hex::encode(hasher.finalize()))
        },
        |sum| {
            sums.push(sum);
            Ok(())
        },
    )?;
    Ok(sums)
}

const TEMPLATE_HEAD: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

/// Renders the bmap XML byte for byte as bmaptool 3.x does, including its way of filling
/// placeholders in after the fact and of checksumming the file with the checksum field zeroed.
fn render(s: &BmapStats, sums: &[String]) -> Vec<u8> {
    let image_human = human_size(s.image_size);
    let mut x = String::from(TEMPLATE_HEAD);
    x += &format!("<bmap version=\"{BMAP_VERSION}\">\n");
    x += &format!("    <!-- Image size in bytes: {image_human} -->\n");
    x += &format!("    <ImageSize> {} </ImageSize>\n\n", s.image_size);
    x += "    <!-- Size of a block in bytes -->\n";
    x += &format!("    <BlockSize> {} </BlockSize>\n\n", s.block_size);
    x += "    <!-- Count of blocks in the image file -->\n";
    x += &format!("    <BlocksCount> {} </BlocksCount>\n\n", s.blocks);
    x += "    <!-- Count of mapped blocks: ";
    let count_comment_at = x.len();
    x += &format!(
        "{} or {}   -->\n",
        " ".repeat(image_human.len()),
        " ".repeat("100.0%".len())
    );
    x += "    <MappedBlocksCount> ";
    let count_at = x.len();
    x += &format!(
        "{} </MappedBlocksCount>\n\n",
        " ".repeat(s.blocks.to_string().len())
    );
    x += "    <!-- Type of checksum used in this file -->\n";
    x += "    <ChecksumType> sha256 </ChecksumType>\n\n";
    x += "    <!-- The checksum of this bmap file. When it is calculated, the value of\n";
    x += "         the checksum has be zero (all ASCII \"0\" symbols).  -->\n";
    x += "    <BmapFileChecksum> ";
    let checksum_at = x.len();
    x += &"0".repeat(64);
    x += " </BmapFileChecksum>\n\n";
    x += "    <!-- The block map which consists of elements which may either be a\n";
    x += "         range of blocks or a single block. The 'chksum' attribute\n";
    x += "         (if present) is the checksum of this blocks range. -->\n";
    x += "    <BlockMap>\n";
    for (r, sum) in s.ranges.iter().zip(sums) {
        let blocks = if r.start() == r.end() {
            r.start().to_string()
        } else {
            format!("{}-{}", r.start(), r.end())
        };
        x += &format!("        <Range chksum=\"{sum}\"> {blocks} </Range>\n");
    }
    x += "    </BlockMap>\n</bmap>\n";

    let mapped_percent = (s.mapped_blocks as f64 * 100.0) / s.blocks as f64;
    let mapped_human = human_size(s.mapped_blocks * s.block_size);
    let mut bytes = x.into_bytes();
    overwrite(
        &mut bytes,
        count_comment_at,
        format!("{mapped_human} or {mapped_percent:.1}%").as_bytes(),
    );
    overwrite(&mut bytes, count_at, s.mapped_blocks.to_string().as_bytes());
    let checksum = hex::encode(sha256(&bytes));
    overwrite(&mut bytes, checksum_at, checksum.as_bytes());
    bytes
}

/// Writes `text` over `buf` at `at` like a seek + write on a file (extending it if needed).
fn overwrite(buf: &mut Vec<u8>, at: usize, text: &[u8]) {
    let end = at + text.len();
    if buf.len() < end {
        buf.resize(end, b' ');
    }
    buf[at..end].copy_from_slice(text);
}

/// bmaptool's `human_size`: "1 byte", "N bytes" below 512, else one decimal and a binary unit.
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".to_string();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut value = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        value /= 1024.0;
        if value < 1024.0 {
            return format!("{value:.1} {unit}");
        }
    }
    format!("{value:.1} EiB")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_match_bmaptool() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(511), "511 bytes");
        assert_eq!(human_size(512), "0.5 KiB");
        assert_eq!(human_size(2 << 30), "2.0 GiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
    }
}
