//! The .xz container format (xz file format 1.1.0): just enough to take the single block out of
//! a stream that liblzma wrote, give its block header the compressed/uncompressed size fields
//! (as `xz -T` writes them, so xz ≥ 5.4 can decode in parallel), and frame many such blocks as
//! one multi-block stream with its own index.
//!
//! Layout of a stream: header (magic, 2 flag bytes, CRC32) · blocks · index · footer (CRC32,
//! backward size, 2 flag bytes, magic). A block: header (size byte, flags, optional sizes,
//! filter flags, zero padding, CRC32) · compressed data · zero padding to 4 · check.

use crate::error::{bail, Result};

const HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = *b"YZ";
/// Size of the stream header and of the stream footer.
const FRAME: usize = 12;
/// Largest value a multibyte integer may hold.
const VARINT_MAX: u64 = u64::MAX / 2;
/// Block flags: compressed size present.
const HAS_COMPRESSED: u8 = 0x40;
/// Block flags: uncompressed size present.
const HAS_UNCOMPRESSED: u8 = 0x80;

/// Stream flags: the check type is the low nibble of the second byte.
pub(crate) type StreamFlags = [u8; 2];

/// One xz block, ready to be spliced into a stream using the same stream flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Block {
    /// Block header, compressed data, block padding and check.
    pub bytes: Vec<u8>,
    /// The index's "unpadded size": header + compressed data + check.
    pub unpadded: u64,
    /// Size of the data once decompressed.
    pub uncompressed: u64,
}

/// The stream header for `flags`.
pub(crate) fn stream_header(flags: StreamFlags) -> [u8; FRAME] {
    let mut h = [0u8; FRAME];
    h[..6].copy_from_slice(&HEADER_MAGIC);
    h[6..8].copy_from_slice(&flags);
    h[8..].copy_from_slice(&crc32fast::hash(&flags).to_le_bytes());
    h
}

/// The index listing `records` (unpadded size, uncompressed size) followed by the stream footer.
pub(crate) fn index_and_footer(records: &[(u64, u64)], flags: StreamFlags) -> Vec<u8> {
    let mut index = vec![0x00];
    put_varint(&mut index, records.len() as u64);
    for &(unpadded, uncompressed) in records {
        put_varint(&mut index, unpadded);
        put_varint(&mut index, uncompressed);
    }
    pad_to_4(&mut index);
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());

    let backward = (index.len() / 4 - 1) as u32;
    let mut tail = [0u8; 6];
    tail[..4].copy_from_slice(&backward.to_le_bytes());
    tail[4..].copy_from_slice(&flags);
    index.extend_from_slice(&crc32fast::hash(&tail).to_le_bytes());
    index.extend_from_slice(&tail);
    index.extend_from_slice(&FOOTER_MAGIC);
    index
}

/// Takes the only block out of a complete single-block stream and returns it with size fields
/// in its header, together with the stream flags (which must be the same for every spliced block).
///
/// The header is padded to the size `xz -T` reserves for blocks of `block_size` bytes (room for
/// the largest compressed size such a block can have), so a chunk's block is byte for byte the
/// one `xz -T<n> --block-size=<block_size>` writes.
pub(crate) fn single_block(stream: &[u8], block_size: u64) -> Result<(StreamFlags, Block)> {
    if stream.len() < 2 * FRAME {
        bail!(
            XzFormat,
            "xz stream of {} bytes is too short to hold a header and a footer",
            stream.len()
        );
    }
    let flags = parse_stream_header(&stream[..FRAME])?;
    let footer = &stream[stream.len() - FRAME..];
    let backward = parse_stream_footer(footer, flags)?;
    let Some(index_start) = (stream.len() - FRAME).checked_sub(backward) else {
        bail!(
            XzFormat,
            "xz footer's backward size {backward} points before the start of the stream"
        );
    };
    if index_start < FRAME {
        bail!(
            XzFormat,
            "xz footer's backward size {backward} overlaps the stream header"
        );
    }
    let records = parse_index(&stream[index_start..stream.len() - FRAME])?;
    let [(unpadded, uncompressed)] = records[..] else {
        bail!(
            XzFormat,
            "xz stream has {} blocks where exactly one was expected",
            records.len()
        );
    };
    let block = &stream[FRAME..index_start];
    if padded(unpadded) != block.len() as u64 {
        bail!(
            XzFormat,
            "xz index says the block's unpadded size is {unpadded} but the block takes {} bytes",
            block.len()
        );
    }
    let check = check_size(flags)?;
    let block = with_sizes(block, (unpadded, uncompressed), check, block_size)?;
    Ok((flags, block))
}

/// Checks the magic and CRC32 of a stream header and returns its flags.
fn parse_stream_header(h: &[u8]) -> Result<StreamFlags> {
    if h[..6] != HEADER_MAGIC {
        bail!(
            XzFormat,
            "not an xz stream: bad header magic {:02x?}",
            &h[..6]
        );
    }
    let flags = [h[6], h[7]];
    if crc32fast::hash(&flags).to_le_bytes() != h[8..12] {
        bail!(XzFormat, "xz stream header CRC32 mismatch");
    }
    check_size(flags)?;
    Ok(flags)
}

/// Checks a stream footer against the header's flags and returns the index size in bytes.
fn parse_stream_footer(f: &[u8], flags: StreamFlags) -> Result<usize> {
    if f[10..12] != FOOTER_MAGIC {
        bail!(
            XzFormat,
            "xz stream footer has a bad magic {:02x?}",
            &f[10..12]
        );
    }
    if crc32fast::hash(&f[4..10]).to_le_bytes() != f[..4] {
        bail!(XzFormat, "xz stream footer CRC32 mismatch");
    }
    if f[8..10] != flags {
        bail!(
            XzFormat,
            "xz stream footer flags {:02x?} differ from the header's {flags:02x?}",
            &f[8..10]
        );
    }
    let stored = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
    Ok((stored as usize + 1) * 4)
}

/// Parses an index (indicator through CRC32) into its (unpadded, uncompressed) records.
fn parse_index(index: &[u8]) -> Result<Vec<(u64, u64)>> {
    if index.len() < 8 || index.len() & 3 != 0 || index[0] != 0x00 {
        bail!(XzFormat, "xz index of {} bytes is malformed", index.len());
    }
    let body_len = index.len() - 4;
    if crc32fast::hash(&index[..body_len]).to_le_bytes() != index[body_len..] {
        bail!(XzFormat, "xz index CRC32 mismatch");
    }
    let body = &index[..body_len];
    let mut pos = 1;
    let count = get_varint(body, &mut pos)?;
    let mut records = Vec::new();
    for _ in 0..count {
        let unpadded = get_varint(body, &mut pos)?;
        let uncompressed = get_varint(body, &mut pos)?;
        records.push((unpadded, uncompressed));
    }
    if body.len() - pos > 3 || body[pos..].iter().any(|&b| b != 0) {
        bail!(
            XzFormat,
            "xz index has {} unexpected bytes after its records",
            body.len() - pos
        );
    }
    Ok(records)
}

/// Rewrites a block so that its header carries the compressed and uncompressed sizes, padded to
/// the header size reserved for blocks of `block_size` bytes.
fn with_sizes(block: &[u8], sizes: (u64, u64), check: u64, block_size: u64) -> Result<Block> {
    let (unpadded, uncompressed) = sizes;
    let Some(&size_byte) = block.first() else {
        bail!(XzFormat, "xz block is empty");
    };
    if size_byte == 0 {
        bail!(
            XzFormat,
            "xz block header size byte is 0 (an index indicator)"
        );
    }
    let header_len = (size_byte as usize + 1) * 4;
    if header_len > block.len() {
        bail!(
            XzFormat,
            "xz block header of {header_len} bytes is longer than the block"
        );
    }
    let header = &block[..header_len];
    let crc_at = header_len - 4;
    if crc32fast::hash(&header[..crc_at]).to_le_bytes() != header[crc_at..] {
        bail!(XzFormat, "xz block header CRC32 mismatch");
    }
    let filters = filter_flags(&header[..crc_at])?;
    let Some(compressed) = unpadded.checked_sub(header_len as u64 + check) else {
        bail!(
            XzFormat,
            "xz block's unpadded size {unpadded} is smaller than its header and check"
        );
    };

    let mut new = vec![0u8, header[1] | HAS_COMPRESSED | HAS_UNCOMPRESSED];
    put_varint(&mut new, compressed);
    put_varint(&mut new, uncompressed);
    new.extend_from_slice(filters);
    let mut reserved = vec![0u8; 2];
    put_varint(&mut reserved, block_buffer_bound(block_size));
    put_varint(&mut reserved, block_size.max(uncompressed));
    let unpadded_header = new.len().max(reserved.len() + filters.len());
    new.resize(unpadded_header, 0);
    while new.len() & 3 != 0 {
        new.push(0);
    }
    if new.len() + 4 > 1024 {
        bail!(
            XzFormat,
            "xz block header would be {} bytes, over the format's 1024",
            new.len() + 4
        );
    }
    new[0] = ((new.len() + 4) / 4 - 1) as u8;
    let crc = crc32fast::hash(&new);
    new.extend_from_slice(&crc.to_le_bytes());

    let new_unpadded = unpadded - header_len as u64 + new.len() as u64;
    new.extend_from_slice(&block[header_len..]);
    Ok(Block {
        bytes: new,
        unpadded: new_unpadded,
        uncompressed,
    })
}

/// Returns the filter flags of a block header (without its CRC32), checking what surrounds them.
fn filter_flags(header: &[u8]) -> Result<&[u8]> {
    let Some(&flags) = header.get(1) else {
        bail!(XzFormat, "xz block header has no flags byte");
    };
    if flags & 0x3C != 0 {
        bail!(
            XzFormat,
            "xz block header flags {flags:#04x} use reserved bits"
        );
    }
    let mut pos = 2;
    if flags & HAS_COMPRESSED != 0 {
        get_varint(header, &mut pos)?;
    }
    if flags & HAS_UNCOMPRESSED != 0 {
        get_varint(header, &mut pos)?;
    }
    let start = pos;
    for _ in 0..=(flags & 0x03) {
        get_varint(header, &mut pos)?; // filter ID
        let props = get_varint(header, &mut pos)?;
        pos = match usize::try_from(props).ok().and_then(|p| pos.checked_add(p)) {
            Some(end) if end <= header.len() => end,
            _ => bail!(
                XzFormat,
                "xz block header filter properties ({props} bytes) overrun the header"
            ),
        };
    }
    if header[pos..].iter().any(|&b| b != 0) {
        bail!(XzFormat, "xz block header padding is not zero");
    }
    Ok(&header[start..pos])
}

/// Size of the integrity check selected by stream flags.
fn check_size(flags: StreamFlags) -> Result<u64> {
    if flags[0] != 0 || flags[1] & 0xF0 != 0 {
        bail!(XzFormat, "xz stream flags {flags:02x?} use reserved bits");
    }
    Ok(match flags[1] & 0x0F {
        0x00 => 0,
        0x01..=0x03 => 4,
        0x04..=0x06 => 8,
        0x07..=0x09 => 16,
        _ => 32,
    })
}

/// liblzma's `lzma_block_buffer_bound64`: the largest a block of `size` bytes can get (LZMA2
/// chunk headers of 3 bytes per 64 KiB plus an end marker, padding, and a header/check bound).
fn block_buffer_bound(size: u64) -> u64 {
    const HEADERS_BOUND: u64 = (1 + 1 + 2 + 64 + 3) & !3;
    let lzma2 = size + size.div_ceil(1 << 16) * 3 + 1;
    HEADERS_BOUND + ((lzma2 + 3) & !3)
}

/// Rounds an unpadded block size up to the block's size in the file.
fn padded(unpadded: u64) -> u64 {
    unpadded.saturating_add(3) & !3
}

/// Pads with zeros to a multiple of four bytes.
fn pad_to_4(buf: &mut Vec<u8>) {
    while buf.len() & 3 != 0 {
        buf.push(0);
    }
}

/// Appends an xz multibyte integer (7 bits per byte, least significant first).
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    debug_assert!(value <= VARINT_MAX);
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Reads an xz multibyte integer at `*pos`, advancing it.
fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let Some(&b) = buf.get(*pos) else {
            bail!(
                XzFormat,
                "xz integer runs past the end of its field at byte {}",
                *pos
            );
        };
        *pos += 1;
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                bail!(
                    XzFormat,
                    "xz integer ending at byte {} is not minimally encoded",
                    *pos
                );
            }
            return Ok(value);
        }
    }
    bail!(
        XzFormat,
        "xz integer ending at byte {} is longer than 9 bytes",
        *pos
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, 1 << 35, VARINT_MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            assert_eq!(get_varint(&buf, &mut pos).ok(), Some(v));
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let mut junk: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            if len >= 12 {
                junk[..12].copy_from_slice(&stream_header([0, 4]));
            }
            assert!(single_block(&junk, 4096).is_err());
        }
    }
}
