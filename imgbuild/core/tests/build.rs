//! The library end to end, without the CLI: `BuildSpec::resolve` + `pipeline::build` turn a
//! fixture base and a project into an image, checked with e2fsck, fsck.vfat, debugfs and mtools;
//! a plan that cannot be carried out fails before the image is touched.

use imgbuild_core::base::BaseRequest;
use imgbuild_core::pack::Compress;
use imgbuild_core::pipeline::{self, NoProgress};
use imgbuild_core::spec::{BuildOptions, BuildSpec};
use imgbuild_testkit::{
    build_fixture, debugfs_cat, debugfs_readlink, debugfs_stat, e2fsck_clean, fsck_vfat_clean,
    mtype, sha256_file, Fixture, FixtureOptions, Layout,
};
use std::path::{Path, PathBuf};

/// A small base shaped like Debian's raspi image (MBR, FAT32 `RASPIFIRM`, ext4 `RASPIROOT`),
/// whose login user is added to the image's own account files.
fn base(dir: &Path) -> Fixture {
    build_fixture(
        dir,
        &FixtureOptions {
            layout: Layout::DebianRaspi,
            image_mib: 192,
            big_dir_entries: 40,
            ..FixtureOptions::default()
        },
    )
}

/// A project whose plan needs the image: a new user owning an overlay file, a host name, a
/// kernel command line token and a unit to enable from the overlay.
fn project(dir: &Path, extra: &str) -> PathBuf {
    let ov = dir.join("overlay");
    std::fs::create_dir_all(ov.join("etc/systemd/system")).expect("mkdir");
    std::fs::create_dir_all(ov.join("srv")).expect("mkdir");
    std::fs::write(ov.join("srv/data.txt"), "owned by the new user\n").expect("write");
    std::fs::write(
        ov.join("etc/systemd/system/demo.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .expect("write");
    std::fs::write(
        ov.join("overlay.toml"),
        "[\"/srv/data.txt\"]\nmode = \"0640\"\nowner = \"admin:admin\"\n",
    )
    .expect("write");
    let config = dir.join("imgbuild.toml");
    std::fs::write(
        &config,
        format!(
            r#"board = "rpi4-debian"
hostname = "lib-node"
overlays = ["overlay"]

[user]
name = "admin"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJpVx0yFv+fGmvBpgYSKn9vXMmaQ+ZRW7n1wK8RSYJbH test@host"]

[boot]
cmdline_append = ["lib_token=1"]

[systemd]
enable = ["demo.service"]
{extra}"#
        ),
    )
    .expect("write config");
    config
}

fn options(dir: &Path, config: PathBuf, base: &Path) -> BuildOptions {
    BuildOptions {
        board: None,
        boards_dir: None,
        config: Some(config),
        base: BaseRequest {
            base: Some(base.display().to_string()),
            cache_dir: Some(dir.join("cache")),
            offline: true,
            ..BaseRequest::default()
        },
        preseed: false,
        out_dir: dir.join("out"),
        name: Some("lib".into()),
        compress: Compress::None,
        epoch: Some(1_700_000_000),
        umask: 0o022,
    }
}

#[test]
fn the_library_builds_an_image_without_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = base(dir.path());
    let base_sha = sha256_file(&f.path);
    let config = project(dir.path(), "");
    let opts = options(dir.path(), config, &f.path);

    let spec = BuildSpec::resolve(&opts, &NoProgress).expect("resolve");
    assert_eq!(spec.board.name, "rpi4-debian");
    let summary = pipeline::build(&spec, &NoProgress).expect("build");
    let img = dir.path().join("out/lib.img");
    assert_eq!(summary.image.path, img);
    assert_eq!(sha256_file(&img), summary.image.sha256);
    assert_eq!(sha256_file(&f.path), base_sha, "the base changed");

    let (ok, text) = e2fsck_clean(&img, f.root.offset_bytes);
    assert!(ok, "e2fsck -fn: {text}");
    let (ok, text) = fsck_vfat_clean(&img, f.boot.offset_bytes);
    assert!(ok, "fsck.vfat -n: {text}");

    // The owner named in overlay.toml is the user the same build adds to /etc/passwd.
    let passwd = String::from_utf8(debugfs_cat(&img, f.root.offset_bytes, "/etc/passwd"))
        .expect("utf8 passwd");
    let admin = passwd
        .lines()
        .find(|l| l.starts_with("admin:"))
        .expect("admin in /etc/passwd");
    let uid: u32 = admin
        .split(':')
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("uid");
    let st = debugfs_stat(&img, f.root.offset_bytes, "/srv/data.txt").expect("/srv/data.txt");
    assert_eq!((st.uid, st.mode & 0o7777), (uid, 0o640));
    assert_eq!(
        debugfs_cat(&img, f.root.offset_bytes, "/etc/hostname"),
        b"lib-node\n"
    );
    let cmdline =
        String::from_utf8(mtype(&img, f.boot.offset_bytes, "/cmdline.txt")).expect("utf8 cmdline");
    assert!(cmdline.contains(" lib_token=1"), "cmdline.txt: {cmdline:?}");
    assert_eq!(
        debugfs_readlink(
            &img,
            f.root.offset_bytes,
            "/etc/systemd/system/multi-user.target.wants/demo.service"
        ),
        "/etc/systemd/system/demo.service"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), summary.files_written);
    assert!(files
        .iter()
        .any(|w| w["path"] == "/srv/data.txt" && w["owner"] == format!("{uid}:{uid}")));
}

#[test]
fn a_plan_the_image_cannot_take_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = base(dir.path());
    let base_sha = sha256_file(&f.path);
    let cases = [
        (
            "[[file]]\npath = \"/srv/x\"\ncontent = \"x\"\nowner = \"ghost:root\"\n",
            "user \"ghost\" is not in the image's /etc/passwd",
        ),
        (
            "[[file]]\npath = \"/etc/hostname/inner\"\ncontent = \"x\"\n",
            "/etc/hostname exists in the image and is not a directory",
        ),
    ];
    for (extra, needle) in cases {
        let config = project(dir.path(), extra);
        let opts = options(dir.path(), config, &f.path);
        let spec = BuildSpec::resolve(&opts, &NoProgress).expect("resolve");
        let err = pipeline::build(&spec, &NoProgress).expect_err("a plan error");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(!msg.contains('\n'), "not one line: {msg:?}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .expect("out dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".imgbuild"))
            .collect();
        assert!(left.is_empty(), "outputs left behind: {left:?}");
        let scratch = dir.path().join("out/.imgbuild-scratch");
        let scratch_left = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
        assert_eq!(scratch_left, 0, "scratch left behind");
        assert_eq!(sha256_file(&f.path), base_sha, "the base changed");
    }
}
