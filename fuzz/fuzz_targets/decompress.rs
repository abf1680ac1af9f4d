//! The decompressor front (`source::detect` by magic bytes, then `source::decompress_to_sparse`:
//! xz streams, gzip members, zstd frames, single-file zip, or a sparse raw copy) on arbitrary
//! base files. Oracle: no panic; success leaves exactly the output (no `.part`) with the size
//! reported; failure leaves nothing at the output path; the base is never changed.
#![no_main]

use imgbuild_core::source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = imgbuild_fuzz::scratch_file("base", data);
    let out = imgbuild_fuzz::scratch_dir().join("work.img");
    let part = imgbuild_fuzz::scratch_dir().join("work.img.part");
    let detected = source::detect(&base);
    let result = source::decompress_to_sparse(&base, &out, &|_| {});
    if detected.is_err() {
        assert!(result.is_err(), "an unsupported format was decoded");
    }
    match result {
        Ok(size) => {
            let len = std::fs::metadata(&out).expect("output exists").len();
            assert_eq!(len, size, "reported size");
            if detected.ok() == Some(source::Compression::Raw) {
                assert_eq!(std::fs::read(&out).expect("read"), data, "raw copy differs");
            }
        }
        Err(e) => {
            assert!(!out.exists(), "output left behind after: {e}");
            assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
        }
    }
    assert!(!part.exists(), ".part left behind");
    assert_eq!(
        std::fs::read(&base).expect("reread base"),
        data,
        "base changed"
    );
    let _ = std::fs::remove_file(&out);
});
