//! Compressing one chunk into one xz block with liblzma's easy encoder (CRC64 check).

use crate::error::{bail, Error, Result};
use crate::xzformat::{single_block, Block, StreamFlags};
use liblzma::stream::{Action, Check, Status, Stream};

/// liblzma's flag that selects the slower "extreme" variant of a preset.
const PRESET_EXTREME: u32 = 0x8000_0000;

/// The stream flags every block is written with: CRC64 check, like `xz` by default.
pub(crate) const STREAM_FLAGS: StreamFlags = [0x00, 0x04];

/// Compressor memory of one encoder, in MiB, per preset 0..=9 (the `xz(1)` preset table).
const ENCODER_MIB: [u64; 10] = [3, 9, 17, 32, 48, 94, 94, 186, 370, 674];

/// Approximate memory one liblzma encoder needs at `preset` (0..=9).
pub(crate) fn encoder_memory(preset: u32) -> u64 {
    ENCODER_MIB.get(preset as usize).copied().unwrap_or(674) << 20
}

/// Compresses `data` as one xz block at `preset` (0..=9), `extreme` as `xz -e`, with the block
/// header `xz -T` writes for blocks of `block_size` bytes.
pub(crate) fn compress_block(
    data: &[u8],
    preset: u32,
    extreme: bool,
    block_size: u64,
) -> Result<Block> {
    let stream = compress_stream(data, preset, extreme)?;
    let (flags, block) =
        single_block(&stream, block_size).map_err(|e| e.context("splitting liblzma's output"))?;
    if flags != STREAM_FLAGS {
        bail!(
            Encoder,
            "liblzma wrote stream flags {flags:02x?} instead of {STREAM_FLAGS:02x?} (CRC64)"
        );
    }
    if block.uncompressed != data.len() as u64 {
        bail!(
            Encoder,
            "liblzma's index records {} uncompressed bytes for a {}-byte chunk",
            block.uncompressed,
            data.len()
        );
    }
    Ok(block)
}

/// Compresses `data` into a complete single-block .xz stream.
fn compress_stream(data: &[u8], preset: u32, extreme: bool) -> Result<Vec<u8>> {
    let level = if extreme {
        preset | PRESET_EXTREME
    } else {
        preset
    };
    let mut encoder =
        Stream::new_easy_encoder(level, Check::Crc64).map_err(|source| Error::Lzma {
            doing: format!("starting the xz encoder at preset {preset}"),
            source,
        })?;
    let mut out = Vec::with_capacity(data.len() / 2 + 4096);
    loop {
        let consumed = usize::try_from(encoder.total_in())
            .unwrap_or(data.len())
            .min(data.len());
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let status = encoder
            .process_vec(&data[consumed..], &mut out, Action::Finish)
            .map_err(|source| Error::Lzma {
                doing: format!("compressing a {}-byte chunk", data.len()),
                source,
            })?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_decodes_back_to_its_chunk() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 7000) as u8)
            .collect();
        let block = compress_block(&data, 1, false, 1 << 20).expect("compress");
        let mut stream = crate::xzformat::stream_header(STREAM_FLAGS).to_vec();
        stream.extend_from_slice(&block.bytes);
        stream.extend(crate::xzformat::index_and_footer(
            &[(block.unpadded, block.uncompressed)],
            STREAM_FLAGS,
        ));
        let decoded = liblzma::decode_all(&stream[..]).expect("decode");
        assert!(decoded == data);
    }
}
