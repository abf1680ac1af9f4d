//! End-to-end builds with the real binary over fixtures shaped like the real base images,
//! checked with e2fsck, fsck.vfat, debugfs, mtools, sfdisk/sgdisk, xz and sha256sum.

mod common;

use common::*;
use imgbuild_testkit::{
    compress, debugfs_cat, debugfs_ls, debugfs_readlink, debugfs_stat, e2fsck_clean, mtype, run,
    sfdisk_dump, sgdisk_verify, sha256_file, Compression, ExtKind, Fixture, Layout,
};
use std::path::Path;
use std::process::Command;

/// Writes a project (config `tests/data/project.toml`, overlay with overlay.toml, a template)
/// into `dir`.
fn project(dir: &Path, board: &str) {
    let ov = dir.join("rootfs-overlay");
    std::fs::create_dir_all(ov.join("etc/app")).expect("mkdir");
    std::fs::create_dir_all(ov.join("usr/local/bin")).expect("mkdir");
    std::fs::create_dir_all(ov.join("etc/systemd/system")).expect("mkdir");
    std::fs::write(ov.join("etc/app/app.conf"), "level=debug\n").expect("write");
    std::fs::write(ov.join("etc/app/secret"), "s3cr3t\n").expect("write");
    std::fs::write(ov.join("usr/local/bin/hello"), "#!/bin/sh\necho hello\n").expect("write");
    run(Command::new("chmod")
        .arg("755")
        .arg(ov.join("usr/local/bin/hello")));
    std::os::unix::fs::symlink("app.conf", ov.join("etc/app/current")).expect("symlink");
    let long_target = format!("/usr/share/{}/target", "very-long-directory-name".repeat(8));
    std::os::unix::fs::symlink(&long_target, ov.join("etc/app/long")).expect("symlink");
    std::fs::write(
        ov.join("etc/systemd/system/hello.service"),
        "[Unit]\nDescription=hello\n[Service]\nExecStart=/usr/local/bin/hello\n[Install]\nWantedBy=multi-user.target\n",
    )
    .expect("write");
    std::fs::write(
        ov.join("overlay.toml"),
        "[\"/etc/app/secret\"]\nmode = \"0600\"\nowner = \"root:adm\"\n[\"/etc/app\"]\nmode = \"0750\"\n",
    )
    .expect("write");
    std::fs::create_dir_all(dir.join("templates")).expect("mkdir");
    std::fs::write(
        dir.join("templates/motd.tera"),
        "Welcome to {{ hostname }} ({{ user.name }})\n",
    )
    .expect("write");
    let config = include_str!("data/project.toml")
        .replace("{board}", board)
        .replace("{ssh_key}", SSH_KEY);
    write_config(dir, &config);
}

fn stat(img: &Path, f: &Fixture, path: &str) -> imgbuild_testkit::ExtStat {
    debugfs_stat(img, f.root.offset_bytes, path)
        .unwrap_or_else(|| panic!("{path} missing in the image"))
}

/// Builds `base` with the project in `dir` and returns the decompressed result after checking
/// the artifacts with xz -t and sha256sum -c.
fn build_ok(dir: &Path, board: &str, base: &Path) -> std::path::PathBuf {
    let base = base.to_str().expect("utf8");
    assert_ok(&run_build(
        dir,
        board,
        base,
        &["--out", "dist", "--name", "img"],
    ));
    let dist = dir.join("dist");
    let xz = dist.join("img.img.xz");
    assert!(
        run(Command::new("xz").arg("-t").arg(&xz)).status.success(),
        "xz -t failed"
    );
    let check = run(Command::new("sha256sum")
        .arg("-c")
        .arg("img.img.xz.sha256")
        .current_dir(&dist));
    assert!(
        check.status.success(),
        "sha256sum -c: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(dist.join("img.bmap").exists() && dist.join("manifest.json").exists());
    unxz(&xz, dir)
}

#[test]
fn rpi_os_build_injects_everything_and_stays_clean() {
    let (f, dir, raw_base) = fixture_base(Layout::RpiOs, 4096);
    let base = compress(&raw_base, Compression::Xz);
    let base_sha = sha256_file(&base);
    let table_before = sfdisk_dump(&raw_base).replace(raw_base.to_str().expect("utf8"), "IMG");
    project(dir.path(), "rpi4");
    let img = build_ok(dir.path(), "rpi4", &base);

    assert_eq!(sha256_file(&base), base_sha, "the base file changed");
    assert_eq!(
        sfdisk_dump(&img).replace(img.to_str().expect("utf8"), "IMG"),
        table_before,
        "partition table changed"
    );
    assert_fs_clean(&img, &f);
    let off = f.root.offset_bytes;
    // Raspberry Pi OS keeps cmdline.txt/config.txt itself: no raspi-firmware files, and the user
    // (created by the OS on first boot from userconf.txt) gets no home from imgbuild.
    for p in [
        "/etc/default/raspi-extra-cmdline",
        "/etc/default/raspi-firmware-custom",
        "/home/admin",
    ] {
        assert!(debugfs_stat(&img, off, p).is_none(), "{p} written on rpi4");
    }
    // Overlay: bytes, modes, owners from overlay.toml, defaults otherwise.
    assert_eq!(
        debugfs_cat(&img, off, "/etc/app/app.conf"),
        b"level=debug\n"
    );
    let s = stat(&img, &f, "/etc/app/secret");
    assert_eq!((s.mode, s.uid, s.gid), (0o600, 0, 4));
    let s = stat(&img, &f, "/etc/app");
    assert_eq!((s.kind, s.mode, s.uid), (ExtKind::Dir, 0o750, 0));
    let s = stat(&img, &f, "/usr/local/bin/hello");
    assert_eq!(
        (s.mode, s.uid, s.gid, s.mtime),
        (0o755, 0, 0, 1_700_000_000)
    );
    assert_eq!(stat(&img, &f, "/etc/app/app.conf").mode, 0o644);
    assert_eq!(debugfs_readlink(&img, off, "/etc/app/current"), "app.conf");
    assert!(debugfs_readlink(&img, off, "/etc/app/long")
        .starts_with("/usr/share/very-long-directory-name"));
    // [[file]] and [[template]].
    assert_eq!(
        debugfs_cat(&img, off, "/etc/imgbuild-release"),
        b"built by imgbuild\n"
    );
    let s = stat(&img, &f, "/etc/imgbuild-release");
    assert_eq!((s.mode, s.uid, s.gid), (0o640, 0, 4));
    assert_eq!(
        debugfs_cat(&img, off, "/etc/motd"),
        b"Welcome to gg-node-7 (admin)\n"
    );
    // Hostname, SSH key, sshd drop-in; RPi OS's userconf.txt + ssh on the boot partition.
    assert_eq!(debugfs_cat(&img, off, "/etc/hostname"), b"gg-node-7\n");
    assert!(
        String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/hosts"))
            .contains("127.0.1.1\tgg-node-7")
    );
    assert_eq!(
        debugfs_cat(&img, off, "/etc/ssh/authorized_keys/admin"),
        format!("{SSH_KEY}\n").as_bytes()
    );
    let dropin = String::from_utf8_lossy(&debugfs_cat(
        &img,
        off,
        "/etc/ssh/sshd_config.d/50-imgbuild.conf",
    ))
    .into_owned();
    assert!(dropin.contains("PasswordAuthentication no"), "{dropin}");
    let boot = f.boot.offset_bytes;
    assert_eq!(
        mtype(&img, boot, "/userconf.txt"),
        b"admin:!\n",
        "no password => locked password"
    );
    assert!(mtype(&img, boot, "/ssh").is_empty());
    // cmdline.txt stays one line, tokens appended once; config.txt edited.
    let cmdline = String::from_utf8_lossy(&mtype(&img, boot, "/cmdline.txt")).into_owned();
    assert_eq!(cmdline.trim_end().lines().count(), 1, "{cmdline:?}");
    assert!(
        cmdline
            .trim_end()
            .ends_with(" cgroup_enable=memory cgroup_memory=1")
            && cmdline.matches("cgroup_memory=1").count() == 1
            && cmdline.contains("rootwait"),
        "{cmdline:?}"
    );
    let config = String::from_utf8_lossy(&mtype(&img, boot, "/config.txt")).into_owned();
    assert!(
        config.contains("dtparam=audio=off") && config.contains("enable_uart=1"),
        "{config}"
    );
    // dtparam lines accumulate in config.txt and the last one wins: ours must come after.
    if let Some(on) = config.find("dtparam=audio=on") {
        assert!(config.rfind("dtparam=audio=off") > Some(on), "{config}");
    }
    // Units enabled the systemctl way.
    let wants = debugfs_ls(&img, off, "/etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.iter().any(|n| n == "hello.service") && wants.iter().any(|n| n == "ssh.service"),
        "{wants:?}"
    );
    assert_eq!(
        debugfs_readlink(
            &img,
            off,
            "/etc/systemd/system/multi-user.target.wants/hello.service"
        ),
        "/etc/systemd/system/hello.service"
    );
    // The manifest lists each written file with hash, mode and owner.
    let m = read_json(&dir.path().join("dist/manifest.json"));
    assert_eq!(m["board"], "rpi4");
    assert_eq!(m["base"]["sha256"], base_sha.as_str());
    let files = m["files"].as_array().expect("files");
    let secret = files
        .iter()
        .find(|e| e["path"] == "/etc/app/secret")
        .expect("secret in manifest");
    assert_eq!(
        (secret["mode"].as_str(), secret["owner"].as_str()),
        (Some("0600"), Some("0:4"))
    );
    // A 0600 file is secret: listed, without its hash; the outputs are then 0600 too.
    assert_eq!(secret["secret"], true);
    assert!(secret.get("sha256").is_none(), "{secret}");
    let conf = files
        .iter()
        .find(|e| e["path"] == "/etc/app/app.conf")
        .expect("app.conf in manifest");
    assert_eq!(conf["sha256"], sha256_hex(b"level=debug\n"));
    assert!(conf.get("secret").is_none(), "{conf}");
    for name in [
        "img.img.xz",
        "img.img.xz.sha256",
        "img.bmap",
        "manifest.json",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("dist").join(name))
            .expect("output")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn debian_raspi_1k_blocks_gzip_base_creates_user_in_root_fs() {
    let (f, dir, raw_base) = fixture_base(Layout::DebianRaspi, 1024);
    let base = compress(&raw_base, Compression::Gzip);
    project(dir.path(), "rpi4-debian");
    let img = build_ok(dir.path(), "rpi4-debian", &base);
    assert_fs_clean(&img, &f);
    let off = f.root.offset_bytes;
    let passwd = String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/passwd")).into_owned();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("admin:"))
        .expect("admin in passwd");
    assert!(line.starts_with("admin:x:1000:1000:"), "{line}");
    let shadow = String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/shadow")).into_owned();
    assert!(
        shadow.lines().any(|l| l.starts_with("admin:!:")),
        "locked password: {shadow}"
    );
    // the base's password-less root (as Debian's raspi image ships it) is locked
    assert!(
        shadow.lines().any(|l| l.starts_with("root:!:")),
        "root still without password: {shadow}"
    );
    assert!(!shadow.lines().any(|l| l.split(':').nth(1) == Some("")));
    let s = stat(&img, &f, "/etc/shadow");
    assert_eq!((s.mode, s.gid), (0o640, 42));
    let sudo = stat(&img, &f, "/etc/sudoers.d/90-imgbuild-admin");
    assert_eq!(sudo.mode, 0o440);
    let sysconf =
        String::from_utf8_lossy(&mtype(&img, f.boot.offset_bytes, "/sysconf.txt")).into_owned();
    assert!(
        sysconf.lines().any(|l| l == "hostname=gg-node-7"),
        "{sysconf}"
    );
    // The new user's home: owned by it, 0700, with the image's /etc/skel files.
    let home = stat(&img, &f, "/home/admin");
    assert_eq!(
        (home.kind, home.mode, home.uid, home.gid),
        (ExtKind::Dir, 0o700, 1000, 1000)
    );
    for name in [".bashrc", ".profile", ".bash_logout"] {
        let st = stat(&img, &f, &format!("/home/admin/{name}"));
        assert_eq!((st.mode, st.uid, st.gid), (0o644, 1000, 1000), "{name}");
        assert_eq!(
            debugfs_cat(&img, off, &format!("/home/admin/{name}")),
            debugfs_cat(&img, off, &format!("/etc/skel/{name}"))
        );
    }
    let parent = stat(&img, &f, "/home");
    assert_eq!((parent.mode, parent.uid, parent.gid), (0o755, 0, 0));
    // Debian's raspi-firmware regenerates cmdline.txt/config.txt from these on kernel upgrades.
    let cmdline = mtype(&img, f.boot.offset_bytes, "/cmdline.txt");
    assert!(String::from_utf8_lossy(&cmdline).contains(" cgroup_enable=memory cgroup_memory=1"));
    assert_eq!(
        debugfs_cat(&img, off, "/etc/default/raspi-extra-cmdline"),
        b"cgroup_enable=memory cgroup_memory=1\n"
    );
    assert_eq!(
        debugfs_cat(&img, off, "/etc/default/raspi-firmware-custom"),
        b"dtparam=audio=off\nenable_uart=1\n"
    );
    for p in [
        "/etc/default/raspi-extra-cmdline",
        "/etc/default/raspi-firmware-custom",
    ] {
        let st = stat(&img, &f, p);
        assert_eq!((st.mode, st.uid, st.gid), (0o644, 0, 0), "{p}");
    }
    // The package's own settings file is left alone.
    assert_eq!(
        debugfs_cat(&img, off, "/etc/default/raspi-firmware"),
        b"# CMA pool size\n#CMA=64M\n"
    );
}

#[test]
fn generic_gpt_zstd_base_keeps_both_gpt_headers_valid() {
    let (f, dir, raw_base) = fixture_base(Layout::GenericGpt, 4096);
    let before = sgdisk_verify(&raw_base);
    assert!(before.contains("No problems found"), "{before}");
    let base = compress(&raw_base, Compression::Zstd);
    project(dir.path(), "generic-arm64");
    // The ESP is mounted at /boot/efi: no cmdline.txt there, so drop the boot edits.
    let cfg = std::fs::read_to_string(dir.path().join("imgbuild.toml")).expect("read");
    let cfg = cfg
        .replace(
            "cmdline_append = [\"cgroup_enable=memory\", \"cgroup_memory=1\"]",
            "",
        )
        .replace(
            "[boot.config]\ndtparam = \"audio=off\"\nenable_uart = \"1\"\n",
            "",
        );
    write_config(dir.path(), &cfg);
    let img = build_ok(dir.path(), "generic-arm64", &base);
    assert_eq!(sgdisk_verify(&img), before);
    assert_fs_clean(&img, &f);
    assert_eq!(
        debugfs_cat(&img, f.root.offset_bytes, "/etc/hostname"),
        b"gg-node-7\n"
    );
}

#[test]
fn five_hundred_entries_into_a_hashed_directory() {
    let (f, dir, base) = fixture_base(Layout::RpiOs, 4096);
    let ov = dir.path().join("ov");
    let big = ov.join(f.big_dir.trim_start_matches('/'));
    std::fs::create_dir_all(&big).expect("mkdir");
    for i in 0..500 {
        std::fs::write(
            big.join(format!("imgbuild-new-entry-{i:04}")),
            format!("entry {i}\n"),
        )
        .expect("write");
    }
    write_config(dir.path(), "overlays = [\"ov\"]\n");
    let img = build_ok(dir.path(), "rpi4", &base);
    assert_fs_clean(&img, &f);
    let names = debugfs_ls(&img, f.root.offset_bytes, &f.big_dir);
    for i in [0, 1, 250, 499] {
        let n = format!("imgbuild-new-entry-{i:04}");
        assert!(names.contains(&n), "{n} missing");
        assert_eq!(
            debugfs_cat(&img, f.root.offset_bytes, &format!("{}/{n}", f.big_dir)),
            format!("entry {i}\n").as_bytes()
        );
    }
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("imgbuild-new-entry-"))
            .count(),
        500
    );
    let s = stat(&img, &f, &f.big_dir);
    assert!(s.flags & 0x1000 != 0, "directory lost its hash index");
}

#[test]
fn uncompressed_output_is_a_sparse_raw_image() {
    let (f, dir, base) = fixture_base(Layout::RpiOs, 4096);
    write_config(dir.path(), "hostname = \"raw1\"\n");
    let base = base.to_str().expect("utf8");
    let args = ["--compress", "none", "--name", "x", "--json"];
    let o = run_build(dir.path(), "rpi4", base, &args);
    assert_ok(&o);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json summary");
    let img = dir.path().join("dist/x.img");
    assert_eq!(summary["image"]["sha256"], sha256_file(&img).as_str());
    let check = run(Command::new("sha256sum")
        .arg("-c")
        .arg("x.img.sha256")
        .current_dir(dir.path().join("dist")));
    assert!(check.status.success());
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&img).expect("stat");
    assert!(
        md.blocks() * 512 < md.len() / 2,
        "not sparse: {} of {}",
        md.blocks() * 512,
        md.len()
    );
    assert_fs_clean(&img, &f);
}

#[test]
fn same_inputs_give_byte_identical_output_and_bmaptool_accepts_the_bmap() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    project(dir.path(), "rpi4");
    let base = base.to_str().expect("utf8");
    for out in ["one", "two"] {
        assert_ok(&run_build(
            dir.path(),
            "rpi4",
            base,
            &["--out", out, "--name", "d"],
        ));
    }
    let one = dir.path().join("one/d.img.xz");
    assert_eq!(
        sha256_file(&one),
        sha256_file(&dir.path().join("two/d.img.xz")),
        "rebuild differs"
    );
    assert_eq!(
        std::fs::read(dir.path().join("one/manifest.json")).expect("m1"),
        std::fs::read(dir.path().join("two/manifest.json")).expect("m2")
    );
    // bmaptool copy must accept the bmap (checksums verified) and reproduce the raw image.
    let raw = unxz(&one, dir.path());
    let target = dir.path().join("flashed.img");
    let o = run(Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(dir.path().join("one/d.bmap"))
        .arg(&one)
        .arg(&target));
    assert!(
        o.status.success(),
        "bmaptool: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sha256_file(&target),
        sha256_file(&raw),
        "bmaptool copy differs from the raw image"
    );
}

/// Number after `key=` in imgbuild's `-v` log line "compressed …".
fn logged(stderr: &str, key: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(" compressed"))
        .unwrap_or_else(|| panic!("no compressed log: {stderr}"));
    let at = line
        .find(&format!("{key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    line[at + key.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("number")
}

#[test]
fn warm_rebuild_recompresses_only_written_chunks_and_matches_a_cold_build() {
    let (f, dir, base) = fixture_base(Layout::RpiOs, 4096);
    let base = base.to_str().expect("utf8");
    let warm = dir.path().join("warm-cache");
    let cold = dir.path().join("cold-cache");
    let build = |cache: &Path, out: &str| {
        let cache = cache.to_str().expect("utf8");
        let args = ["--out", out, "--name", "w", "-v", "--cache-dir", cache];
        assert_ok(&run_build(dir.path(), "rpi4", base, &args))
    };
    write_config(dir.path(), "hostname = \"first\"\n");
    let first = build(&warm, "a");
    write_config(dir.path(), "hostname = \"second\"\n");
    let second = build(&warm, "b");
    build(&cold, "c");
    assert_eq!(
        sha256_file(&dir.path().join("b/w.img.xz")),
        sha256_file(&dir.path().join("c/w.img.xz"))
    );
    let chunks = logged(&second, "chunks");
    assert!(
        logged(&second, "compressed") < logged(&first, "compressed"),
        "warm run compressed as much as the cold one:\n{second}"
    );
    assert!(
        logged(&second, "hashed") < chunks,
        "warm run hashed every chunk:\n{second}"
    );
    let raw = unxz(&dir.path().join("b/w.img.xz"), dir.path());
    assert_eq!(
        debugfs_cat(&raw, f.root.offset_bytes, "/etc/hostname"),
        b"second\n"
    );
}

#[test]
fn a_compressed_local_base_is_decompressed_once_into_the_cache() {
    let (f, dir, raw_base) = fixture_base(Layout::RpiOs, 4096);
    let base = compress(&raw_base, Compression::Xz);
    let base_sha = sha256_file(&base);
    let cache = dir.path().join("cache");
    let base_arg = base.to_str().expect("utf8");
    let build = |out: &str| {
        let cache = cache.to_str().expect("utf8");
        let args = ["--out", out, "--name", "c", "--cache-dir", cache, "-v"];
        let log = assert_ok(&run_build(dir.path(), "rpi4", base_arg, &args));
        let out = dir.path().join(out);
        (unxz(&out.join("c.img.xz"), &out), log)
    };
    write_config(dir.path(), "hostname = \"cached\"\n");
    let (first, log1) = build("one");
    // The raw image is in the cache under the sha256 of the .xz, which the manifest records.
    let cached = cache.join("raw").join(format!("{base_sha}.img"));
    assert_eq!(
        sha256_file(&cached),
        sha256_file(&raw_base),
        "cached raw image"
    );
    let manifest = read_json(&dir.path().join("one/manifest.json"));
    assert_eq!(manifest["base"]["sha256"], base_sha.as_str());
    assert!(
        log1.contains("base: decompressing into the cache"),
        "{log1}"
    );
    // A second build starts from the cached raw image, and gives the same image.
    let (second, log2) = build("two");
    assert!(log2.contains("base: raw image from the cache"), "{log2}");
    assert!(!log2.contains("decompressing"), "{log2}");
    assert_eq!(sha256_file(&first), sha256_file(&second));
    assert_eq!(
        debugfs_cat(&second, f.root.offset_bytes, "/etc/hostname"),
        b"cached\n"
    );
    let (clean, log) = e2fsck_clean(&second, f.root.offset_bytes);
    assert!(clean, "{log}");
    // The base file itself was only read.
    assert_eq!(sha256_file(&base), base_sha);
}
