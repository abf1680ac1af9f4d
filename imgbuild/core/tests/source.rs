//! Decompression into sparse files, checked against the CLI compressors and sha256.

use imgbuild_core::disk::read_table;
use imgbuild_core::source::{copy_sparse_image, decompress_to_sparse, detect, Compression};
use imgbuild_testkit::{
    build_fixture, compress, random_bytes_file, run_ok, sha256_file, write_zip, Compression as Cli,
    Fixture, FixtureOptions,
};
use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn small_fixture(dir: &Path) -> Fixture {
    let opts = FixtureOptions {
        big_dir_entries: 100,
        image_mib: 200,
        ..FixtureOptions::default()
    };
    build_fixture(dir, &opts)
}

/// `(sha256, mtime in ns)` of a file, to show it was not touched.
fn fingerprint(path: &Path) -> (String, i64, i64) {
    let meta = std::fs::metadata(path).expect("stat");
    (sha256_file(path), meta.mtime(), meta.mtime_nsec())
}

fn assert_gone(dst: &Path) {
    assert!(!dst.exists(), "{} must not exist", dst.display());
    let part = PathBuf::from(format!("{}.part", dst.display()));
    assert!(!part.exists(), "{} must not exist", part.display());
}

/// Decompresses `src` to `dst`, checking progress reports are increasing and end at the size.
fn decompress_checked(src: &Path, dst: &Path) -> u64 {
    let last = Cell::new(0u64);
    let calls = Cell::new(0u32);
    let size = decompress_to_sparse(src, dst, &|n| {
        assert!(
            n > last.get(),
            "progress must increase: {n} after {}",
            last.get()
        );
        last.set(n);
        calls.set(calls.get() + 1);
    })
    .expect("decompress");
    assert_eq!(last.get(), size, "last progress report is the full size");
    // A raw source's holes are skipped without reading them (SEEK_DATA), in one report each.
    if detect(src).expect("detect") != Compression::Raw {
        assert!(calls.get() as u64 >= size >> 20, "reported per MiB");
    }
    size
}

#[test]
fn every_format_round_trips_sparsely_and_leaves_the_base_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = small_fixture(dir.path());
    let raw_sum = sha256_file(&f.path);
    let raw_len = std::fs::metadata(&f.path).expect("stat").len();
    let mut sources = vec![(f.path.clone(), Compression::Raw)];
    for (cli, kind) in [
        (Cli::Xz, Compression::Xz),
        (Cli::Gzip, Compression::Gzip),
        (Cli::Zstd, Compression::Zstd),
        (Cli::Zip, Compression::Zip),
    ] {
        sources.push((compress(&f.path, cli), kind));
    }
    for (src, kind) in sources {
        assert_eq!(detect(&src).expect("detect"), kind, "{}", src.display());
        let before = fingerprint(&src);
        let dst = dir.path().join(format!("out-{kind}.img"));
        let size = decompress_checked(&src, &dst);
        assert_eq!(size, raw_len, "{kind}");
        assert_eq!(
            sha256_file(&dst),
            raw_sum,
            "{kind} output differs from the image"
        );
        let meta = std::fs::metadata(&dst).expect("stat");
        assert_eq!(meta.len(), raw_len);
        let allocated = meta.blocks() * 512;
        assert!(
            allocated < raw_len / 2,
            "{kind}: {allocated} bytes allocated for a mostly empty {raw_len}-byte image"
        );
        assert_eq!(fingerprint(&src), before, "{kind}: base file changed");
        assert_gone(&PathBuf::from(format!("{}.part", dst.display())));
        // The output is a disk image again.
        read_table(&dst).expect("table of the decompressed image");
        std::fs::remove_file(&dst).expect("rm");
    }
}

#[test]
fn concatenated_streams_and_trailing_zero_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.bin");
    let b = dir.path().join("b.bin");
    random_bytes_file(&a, 3 << 20);
    // b ends with 1 MiB + 100 bytes of zeros: the tail becomes a hole, the length is kept.
    random_bytes_file(&b, 2 << 20);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .and_then(|f| f.set_len((3 << 20) + 100))
        .expect("extend");
    let joined = dir.path().join("joined.bin");
    let mut both = std::fs::read(&a).expect("read a");
    both.extend(std::fs::read(&b).expect("read b"));
    std::fs::write(&joined, &both).expect("write");
    let want = sha256_file(&joined);
    for (cli, ext) in [(Cli::Xz, "xz"), (Cli::Gzip, "gz"), (Cli::Zstd, "zst")] {
        let pa = compress(&a, cli);
        let pb = compress(&b, cli);
        let cat = dir.path().join(format!("cat.{ext}"));
        let mut bytes = std::fs::read(&pa).expect("read");
        if cli == Cli::Xz {
            bytes.extend([0u8; 8]); // stream padding is allowed between xz streams
        }
        bytes.extend(std::fs::read(&pb).expect("read"));
        std::fs::write(&cat, bytes).expect("write");
        let dst = dir.path().join(format!("out-{ext}.bin"));
        let size = decompress_checked(&cat, &dst);
        assert_eq!(size, both.len() as u64, "{ext}");
        assert_eq!(sha256_file(&dst), want, "{ext}");
    }
}

/// The data extents of a file as `(start, end)` byte ranges (SEEK_DATA / SEEK_HOLE).
fn data_map(path: &Path) -> Vec<(u64, u64)> {
    use rustix::fs::{seek, SeekFrom};
    let file = std::fs::File::open(path).expect("open");
    let len = file.metadata().expect("stat").len();
    let mut map = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Ok(start) = seek(&file, SeekFrom::Data(pos)) else {
            break;
        };
        let end = seek(&file, SeekFrom::Hole(start)).expect("SEEK_HOLE");
        map.push((start, end));
        pos = end;
    }
    map
}

#[test]
fn a_cached_raw_image_is_copied_extent_for_extent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = small_fixture(dir.path());
    // What the raw cache holds: the image as decompress_to_sparse wrote it.
    let raw = dir.path().join("raw.img");
    decompress_checked(&compress(&f.path, Cli::Zstd), &raw);
    let before = fingerprint(&raw);
    let copy = dir.path().join("copy.img");
    let last = Cell::new(0u64);
    let size = copy_sparse_image(&raw, &copy, &|n| {
        assert!(
            n > last.get(),
            "progress must increase: {n} after {}",
            last.get()
        );
        last.set(n);
    })
    .expect("copy");
    let len = std::fs::metadata(&raw).expect("stat").len();
    assert_eq!(
        (size, last.get()),
        (len, len),
        "size and last progress report"
    );
    run_ok(Command::new("cmp").arg(&raw).arg(&copy));
    assert_eq!(
        data_map(&copy),
        data_map(&raw),
        "same data extents, same holes"
    );
    assert_eq!(fingerprint(&raw), before, "the cached image changed");
    assert_gone(&PathBuf::from(format!("{}.part", copy.display())));
    // Copying an image onto itself is refused and leaves it whole.
    let err = copy_sparse_image(&raw, &raw, &|_| {}).expect_err("same file");
    assert!(err.to_string().contains("overwrite the base"), "{err}");
    assert_eq!(fingerprint(&raw), before);
}

fn truncate_copy(src: &Path, dst: &Path, keep: u64) {
    let bytes = std::fs::read(src).expect("read");
    std::fs::write(dst, &bytes[..keep as usize]).expect("write");
}

#[test]
fn truncated_and_corrupt_streams_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("data.img");
    random_bytes_file(&raw, 8 << 20);
    for (cli, name) in [(Cli::Xz, "xz"), (Cli::Gzip, "gzip"), (Cli::Zstd, "zstd")] {
        let packed = compress(&raw, cli);
        let len = std::fs::metadata(&packed).expect("stat").len();
        let cut = dir.path().join(format!("cut-{name}"));
        truncate_copy(&packed, &cut, len / 2);
        let dst = dir.path().join(format!("cut-{name}.img"));
        let err = decompress_to_sparse(&cut, &dst, &|_| {})
            .expect_err("truncated stream")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: {name} stream is corrupt or truncated at byte ",
                cut.display()
            )),
            "{err}"
        );
        assert!(!err.contains('\n'));
        assert_gone(&dst);

        let bad = dir.path().join(format!("bad-{name}"));
        std::fs::copy(&packed, &bad).expect("copy");
        let mut bytes = std::fs::read(&bad).expect("read");
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0xA5;
        }
        std::fs::write(&bad, bytes).expect("write");
        let dst = dir.path().join(format!("bad-{name}.img"));
        let err = decompress_to_sparse(&bad, &dst, &|_| {})
            .expect_err("corrupt stream")
            .to_string();
        assert!(err.contains("corrupt or truncated"), "{err}");
        assert_gone(&dst);
    }
}

#[test]
fn random_bytes_are_raw_and_then_have_no_partition_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("random.img");
    random_bytes_file(&src, 2 << 20);
    // Random data could start with a magic number; make sure it does not.
    let mut bytes = std::fs::read(&src).expect("read");
    bytes[0] = 0x00;
    std::fs::write(&src, &bytes).expect("write");
    assert_eq!(detect(&src).expect("detect"), Compression::Raw);
    let dst = dir.path().join("copy.img");
    assert_eq!(decompress_checked(&src, &dst), 2 << 20);
    assert_eq!(sha256_file(&dst), sha256_file(&src));
    let err = read_table(&dst).expect_err("no table").to_string();
    assert!(
        err.contains("no partition table (neither MBR nor GPT)"),
        "{err}"
    );
}

#[test]
fn zip_must_hold_exactly_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("one.img");
    let two = dir.path().join("two.img");
    random_bytes_file(&one, 1 << 20);
    random_bytes_file(&two, 1 << 20);
    let zipped = dir.path().join("two.zip");
    write_zip(&zipped, &[("one.img", &one), ("images/two.img", &two)]);
    let dst = dir.path().join("out.img");
    let err = decompress_to_sparse(&zipped, &dst, &|_| {})
        .expect_err("two files")
        .to_string();
    assert!(
        err.contains("holds 2 files") && err.contains("one.img") && err.contains("images/two.img"),
        "{err}"
    );
    assert_gone(&dst);

    // Directory entries do not count.
    let with_dir = dir.path().join("dir.zip");
    write_zip(&with_dir, &[("images/", &one), ("images/one.img", &one)]);
    decompress_checked(&with_dir, &dst);
    assert_eq!(sha256_file(&dst), sha256_file(&one));

    // An empty archive.
    let empty = dir.path().join("empty.zip");
    write_zip(&empty, &[]);
    let err = decompress_to_sparse(&empty, &dir.path().join("e.img"), &|_| {})
        .expect_err("empty zip")
        .to_string();
    assert!(err.contains("holds no file"), "{err}");

    // A corrupted entry is caught by its CRC.
    let single = dir.path().join("single.zip");
    write_zip(&single, &[("one.img", &one)]);
    let mut bytes = std::fs::read(&single).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&single, bytes).expect("write");
    let out = dir.path().join("single.img");
    let err = decompress_to_sparse(&single, &out, &|_| {})
        .expect_err("corrupt zip")
        .to_string();
    assert!(
        err.contains("zip entry one.img is corrupt or truncated"),
        "{err}"
    );
    assert_gone(&out);
}

#[test]
fn output_onto_the_base_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("base.img");
    random_bytes_file(&src, 1 << 20);
    let packed = compress(&src, Cli::Gzip);
    let before = fingerprint(&packed);
    let err = decompress_to_sparse(&packed, &packed, &|_| {})
        .expect_err("same file")
        .to_string();
    assert!(err.contains("would overwrite the base image"), "{err}");
    assert_eq!(fingerprint(&packed), before);
}

#[test]
fn unsupported_formats_say_how_to_convert() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (magic, hint) in [
        (&b"BZh91AY&SY"[..], "bunzip2"),
        (&b"QFI\xfb\x00\x00\x00\x03"[..], "qemu-img convert"),
        (&b"7z\xbc\xaf\x27\x1c\x00\x04"[..], "7z x"),
    ] {
        let path = dir.path().join("odd.img");
        std::fs::write(&path, magic).expect("write");
        let err = detect(&path).expect_err("unsupported").to_string();
        assert!(err.contains(hint), "{err}");
    }
    let missing = dir.path().join("missing.img.xz");
    let err = detect(&missing).expect_err("missing").to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");
}

/// Throughput note (not a test of speed): `cargo test -p imgbuild-core --test source --
/// --ignored --nocapture measure`. Builds a ~1 GiB image, compresses it with `xz -T2`, and
/// prints the time of `decompress_to_sparse` next to `xz -dc > /dev/null`.
#[test]
#[ignore]
fn measure_xz_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FixtureOptions {
        image_mib: 1024,
        root_filler_mib: 400,
        ..FixtureOptions::default()
    };
    let f = build_fixture(dir.path(), &opts);
    let xz = compress(&f.path, Cli::Xz);
    let start = std::time::Instant::now();
    run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("xz -dc '{}' > /dev/null", xz.display())),
    );
    let cli = start.elapsed();
    let start = std::time::Instant::now();
    let size = decompress_to_sparse(&xz, &dir.path().join("out.img"), &|_| {}).expect("decompress");
    let ours = start.elapsed();
    let mib = size as f64 / (1 << 20) as f64;
    println!(
        "{mib:.0} MiB: xz -dc {:.2}s ({:.0} MiB/s); decompress_to_sparse {:.2}s ({:.0} MiB/s)",
        cli.as_secs_f64(),
        mib / cli.as_secs_f64(),
        ours.as_secs_f64(),
        mib / ours.as_secs_f64()
    );
    assert_eq!(
        sha256_file(&dir.path().join("out.img")),
        sha256_file(&f.path)
    );
}
