//! The .xz output against real decoders: xz (test, decompress, list) and Python's lzma.

mod common;

use common::*;
use imgbuild_pack::{compress_xz, XzOptions};
use std::path::Path;

const CHUNK: u64 = 512 * 1024;

/// Checks `xz_file` with every oracle: integrity, decompressed hash, Python, block layout.
fn assert_decodes_to(xz_file: &Path, raw: &Path, chunk: u64) {
    let raw_bytes = std::fs::read(raw).expect("read raw");
    let xz_path = xz_file.to_str().expect("utf-8");
    run("xz", &["-t", xz_path], None);
    let decoded = run("xz", &["-dc", xz_path], None);
    assert_eq!(
        sha256_hex(&decoded),
        sha256_hex(&raw_bytes),
        "xz -dc differs from the raw image"
    );
    let threaded = run("xz", &["-T2", "-dc", xz_path], None);
    assert_eq!(
        sha256_hex(&threaded),
        sha256_hex(&raw_bytes),
        "xz -T2 -dc differs"
    );
    let py = run(
        "python3",
        &["-c", "import hashlib,lzma,sys; print(hashlib.sha256(lzma.open(sys.argv[1]).read()).hexdigest())", xz_path],
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&py).trim(),
        sha256_hex(&raw_bytes),
        "python lzma differs"
    );

    let blocks = xz_blocks(xz_file);
    let len = raw_bytes.len() as u64;
    let expected: Vec<u64> = (0..len.div_ceil(chunk))
        .map(|i| (len - i * chunk).min(chunk))
        .collect();
    assert_eq!(
        blocks.iter().map(|b| b.uncompressed).collect::<Vec<_>>(),
        expected
    );
    assert!(
        blocks.iter().all(|b| b.flags == "cu"),
        "block headers lack sizes: {blocks:?}"
    );
}

#[test]
fn round_trip_with_data_zero_runs_and_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    let len = standard_image(&raw);
    assert_ne!(len % CHUNK, 0, "the fixture must end in a short chunk");
    let (xz, stats) = compress(&raw, &opts(CHUNK), None, None);
    let xz_file = write_to(dir.path(), "disk.img.xz", &xz);
    assert_decodes_to(&xz_file, &raw, CHUNK);

    assert_eq!(stats.chunks, len.div_ceil(CHUNK));
    assert_eq!(stats.raw_bytes, len);
    let zeros = zero_chunks(&raw, CHUNK);
    assert!(
        zeros >= 3,
        "fixture should have several zero chunks, has {zeros}"
    );
    assert_eq!(stats.zero_chunks, zeros);
    // One encoder run per data chunk plus one for the (single-length) zero block.
    assert_eq!(stats.compressed_chunks, stats.chunks - zeros + 1);
    assert_eq!(stats.hashed_chunks, 0, "nothing is hashed without a cache");
}

#[test]
fn default_options_and_a_chunk_size_that_does_not_divide_the_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("odd.img");
    let chunk = 300_000; // not a multiple of 4096 either
    make_image(&raw, 1_234_567, &[(0, 1_234_567, Part::Data(9))]);
    let (xz, _) = compress(
        &raw,
        &XzOptions {
            chunk_size: chunk,
            ..XzOptions::default()
        },
        None,
        None,
    );
    let xz_file = write_to(dir.path(), "odd.img.xz", &xz);
    assert_decodes_to(&xz_file, &raw, chunk);
}

#[test]
fn image_smaller_than_one_chunk_is_one_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("tiny.img");
    make_image(&raw, 1000, &[(0, 1000, Part::Data(4))]);
    let (xz, stats) = compress(&raw, &opts(CHUNK), None, None);
    let xz_file = write_to(dir.path(), "tiny.img.xz", &xz);
    assert_decodes_to(&xz_file, &raw, CHUNK);
    assert_eq!(stats.chunks, 1);
}

#[test]
fn empty_image_is_a_valid_stream_without_blocks_identical_to_xz() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("empty.img");
    make_image(&raw, 0, &[]);
    let (xz, stats) = compress(&raw, &XzOptions::default(), None, None);
    assert_eq!(stats.chunks, 0);
    let reference = run("xz", &["-6", "-c"], Some(b""));
    assert_eq!(xz, reference, "differs from what xz writes for empty input");
    let xz_file = write_to(dir.path(), "empty.img.xz", &xz);
    assert_decodes_to(&xz_file, &raw, CHUNK);
}

#[test]
fn output_depends_only_on_bytes_and_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sparse = dir.path().join("sparse.img");
    standard_image(&sparse);
    // The same bytes with no holes at all, in a file written later.
    let dense = write_to(
        dir.path(),
        "dense.img",
        &std::fs::read(&sparse).expect("read"),
    );
    let one_thread = XzOptions {
        threads: 1,
        ..opts(CHUNK)
    };
    let (a, _) = compress(&sparse, &one_thread, None, None);
    let (b, _) = compress(&sparse, &opts(CHUNK), None, None);
    let (c, _) = compress(
        &dense,
        &XzOptions {
            threads: 5,
            ..opts(CHUNK)
        },
        None,
        None,
    );
    assert_eq!(
        sha256_hex(&a),
        sha256_hex(&b),
        "thread count changed the output"
    );
    assert_eq!(
        sha256_hex(&a),
        sha256_hex(&c),
        "holes vs written zeros changed the output"
    );
    let (d, _) = compress(
        &sparse,
        &XzOptions {
            preset: 0,
            ..one_thread
        },
        None,
        None,
    );
    assert_ne!(a, d, "the preset must matter");
}

/// The strongest oracle: xz itself. With the same preset and block size, `xz -T2` writes the
/// same blocks (liblzma's encoder is deterministic) with the same headers, index and footer.
#[test]
fn output_is_byte_identical_to_xz_threaded_with_the_same_block_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("disk.img");
    standard_image(&raw);
    let tiny = dir.path().join("tiny.img");
    make_image(&tiny, 1000, &[(0, 1000, Part::Data(4))]);
    for (image, preset) in [(&raw, 1), (&raw, 6), (&tiny, 6)] {
        let (ours, _) = compress(
            image,
            &XzOptions {
                preset,
                ..opts(CHUNK)
            },
            None,
            None,
        );
        let theirs = run(
            "xz",
            &[
                "-T2",
                &format!("-{preset}"),
                &format!("--block-size={CHUNK}"),
                "-c",
                image.to_str().expect("utf-8"),
            ],
            None,
        );
        assert!(
            ours == theirs,
            "differs from xz -T2 -{preset} --block-size={CHUNK} for {}",
            image.display()
        );
    }
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.img");
    let err = compress_xz(&missing, &mut Vec::new(), &XzOptions::default(), None, None)
        .expect_err("missing image must fail");
    assert!(err.message().contains("missing.img"), "{err}");
    assert!(!err.message().contains('\n'));
    let raw = dir.path().join("r.img");
    make_image(&raw, 10, &[]);
    let bad = XzOptions {
        chunk_size: 100,
        ..XzOptions::default()
    };
    assert!(compress_xz(&raw, &mut Vec::new(), &bad, None, None).is_err());
    let bad = XzOptions {
        preset: 10,
        ..XzOptions::default()
    };
    assert!(compress_xz(&raw, &mut Vec::new(), &bad, None, None).is_err());
}
