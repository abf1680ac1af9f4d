//! The copy-on-write build: with a cached raw base the pipeline writes through an overlay
//! instead of a working copy. Its outputs (raw image, bmap, .xz) must be byte for byte those of
//! the full working copy a build without a cache makes, the cached raw base must not change,
//! and nothing may be left in the scratch directory.

use imgbuild_core::base::BaseRequest;
use imgbuild_core::pack::Compress;
use imgbuild_core::pipeline::{self, NoProgress};
use imgbuild_core::spec::{BuildOptions, BuildSpec};
use imgbuild_testkit::{
    build_fixture, compress, debugfs_cat, e2fsck_clean, fsck_vfat_clean, run_ok, sha256_file,
    Compression, Fixture, FixtureOptions, Layout,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A build into `dir/out`. With `overlay`, from the compressed base (decompressed once into
/// the cache: the build then writes through an overlay over the cached raw base); without, from
/// the raw base file, which is never cached, so the build makes a working copy of it.
fn build(dir: &Path, f: &Fixture, overlay: bool, compress: Compress, out: &str) -> PathBuf {
    let base = match overlay {
        true => PathBuf::from(format!("{}.zst", f.path.display())),
        false => f.path.clone(),
    };
    let cache = match overlay {
        true => dir.join("cache"),
        false => dir.join("cache-for-copies"),
    };
    let config = dir.join("imgbuild.toml");
    let opts = BuildOptions {
        board: Some("rpi4".into()),
        boards_dir: None,
        config: Some(config),
        base: BaseRequest {
            base: Some(base.display().to_string()),
            cache_dir: Some(cache),
            offline: true,
            ..BaseRequest::default()
        },
        preseed: false,
        out_dir: dir.join(out),
        name: Some("cow".into()),
        compress,
        epoch: Some(1_700_000_000),
        umask: 0o022,
    };
    let spec = BuildSpec::resolve(&opts, &NoProgress).expect("resolve");
    assert_eq!(spec.raw_base.is_some(), overlay);
    pipeline::build(&spec, &NoProgress).expect("build");
    let scratch = dir.join(out).join(".imgbuild-scratch");
    let left = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "scratch left behind in {}", scratch.display());
    dir.join(out)
}

#[test]
fn overlay_builds_equal_working_copy_builds_and_leave_the_cached_base_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = build_fixture(
        dir.path(),
        &FixtureOptions {
            layout: Layout::RpiOs,
            image_mib: 128,
            big_dir_entries: 40,
            ..FixtureOptions::default()
        },
    );
    compress(&f.path, Compression::Zstd);
    let ov = dir.path().join("overlay");
    std::fs::create_dir_all(ov.join("etc")).expect("mkdir");
    // A secret file (0600): its chunks are kept out of the chunk cache, mapped through the overlay.
    std::fs::write(ov.join("etc/secret.key"), "not for the cache\n").expect("write");
    std::fs::write(
        ov.join("overlay.toml"),
        "[\"/etc/secret.key\"]\nmode = \"0600\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("imgbuild.toml"),
        "hostname = \"cow\"\noverlays = [\"overlay\"]\n[boot]\ncmdline_append = [\"cow=1\"]\n",
    )
    .expect("config");

    let xz = Compress::Xz { level: 1 };
    let ov_none = build(dir.path(), &f, true, Compress::None, "ov-none");
    let cached: Vec<PathBuf> = std::fs::read_dir(dir.path().join("cache/raw"))
        .expect("raw cache")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert_eq!(
        sha256_file(&cached[0]),
        sha256_file(&f.path),
        "the cached raw base changed"
    );
    let ov_xz = build(dir.path(), &f, true, xz, "ov-xz");
    let copy_none = build(dir.path(), &f, false, Compress::None, "copy-none");
    let copy_xz = build(dir.path(), &f, false, xz, "copy-xz");
    assert_eq!(sha256_file(&cached[0]), sha256_file(&f.path));

    let img = ov_none.join("cow.img");
    assert_eq!(sha256_file(&img), sha256_file(&copy_none.join("cow.img")));
    for (a, b) in [
        (&ov_none, &copy_none),
        (&ov_xz, &copy_xz),
        (&ov_none, &ov_xz),
    ] {
        assert_eq!(
            std::fs::read(a.join("cow.bmap")).expect("bmap"),
            std::fs::read(b.join("cow.bmap")).expect("bmap"),
            "{} vs {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(
        sha256_file(&ov_xz.join("cow.img.xz")),
        sha256_file(&copy_xz.join("cow.img.xz"))
    );
    // The .xz holds the image; the image is clean and holds what the plan wrote.
    let unpacked = run_ok(Command::new("xz").arg("-dc").arg(ov_xz.join("cow.img.xz"))).stdout;
    assert!(
        unpacked == std::fs::read(&img).expect("image"),
        "the .xz is not the image"
    );
    let (ok, text) = e2fsck_clean(&img, f.root.offset_bytes);
    assert!(ok, "e2fsck -fn: {text}");
    let (ok, text) = fsck_vfat_clean(&img, f.boot.offset_bytes);
    assert!(ok, "fsck.vfat -n: {text}");
    assert_eq!(
        debugfs_cat(&img, f.root.offset_bytes, "/etc/hostname"),
        b"cow\n"
    );
    assert_eq!(
        debugfs_cat(&img, f.root.offset_bytes, "/etc/secret.key"),
        b"not for the cache\n"
    );
    // The uncompressed image is sparse: it takes less disk than its length.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&img).expect("meta");
    assert!(meta.blocks() * 512 < meta.len(), "not sparse");
}
