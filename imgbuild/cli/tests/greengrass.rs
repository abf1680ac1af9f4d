//! Builds with a `[greengrass]` section: every payload file lands with its exact mode and
//! owner, the first-boot unit is enabled, both file systems stay clean, and the claim key never
//! appears in the output.

mod common;

use common::*;
use imgbuild_testkit::{debugfs_cat, debugfs_readlink, debugfs_stat, mtype, run, Layout};
use std::path::Path;
use std::process::Command;

/// The project config of [`greengrass_config`] with the thing group `fleet`.
fn config(cert: &str, key: &str) -> String {
    greengrass_config(cert, key) + "thing_group = \"fleet\"\n"
}

/// The base64 body lines of a PEM key (what must never be printed).
fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("key")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_string)
        .collect()
}

/// Asserts that no body line of the PEM key at `key` is in any of `texts`.
fn assert_key_not_printed(key: &Path, texts: &[&str]) {
    for l in key_lines(key) {
        assert!(texts.iter().all(|t| !t.contains(&l)), "claim key printed");
    }
}

/// Writes the project's own plugin config template (in the user's templates_dir, default
/// "templates").
fn project_template(dir: &Path, text: &str) {
    let tdir = dir.join("templates/greengrass");
    std::fs::create_dir_all(&tdir).expect("mkdir");
    std::fs::write(tdir.join("fleet-provisioning.yaml.tera"), text).expect("template");
}

#[test]
fn greengrass_payload_lands_with_modes_and_the_unit_enabled() {
    let (f, dir, _) = fixture_base(Layout::RpiOs, 4096);
    claim(dir.path(), "claim", 365);
    write_config(dir.path(), &config("claim.crt", "claim.key"));
    let o = run_build(dir.path(), "rpi4", "base.img", &["-vv", "--name", "gg"]);
    let stderr = assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_key_not_printed(&dir.path().join("claim.key"), &[&stdout, &stderr]);
    let img = unxz(&dir.path().join("dist/gg.img.xz"), dir.path());
    assert_fs_clean(&img, &f);
    let off = f.root.offset_bytes;
    let st = |p: &str| debugfs_stat(&img, off, p).unwrap_or_else(|| panic!("{p} missing"));
    let key = st("/greengrass/v2/claim.private.pem.key");
    assert_eq!((key.mode, key.uid, key.gid), (0o600, 0, 0));
    assert_eq!(
        debugfs_cat(&img, off, "/greengrass/v2/claim.private.pem.key"),
        std::fs::read(dir.path().join("claim.key")).expect("key")
    );
    assert_eq!(st("/greengrass/v2/claim.pem.crt").mode, 0o644);
    assert_eq!(
        debugfs_cat(&img, off, "/greengrass/v2/claim.pem.crt"),
        std::fs::read(dir.path().join("claim.crt")).expect("crt")
    );
    assert_eq!(st("/greengrass/v2/AmazonRootCA1.pem").mode, 0o644);
    assert_eq!(st("/greengrass").mode, 0o755);
    let tmpl = String::from_utf8_lossy(&debugfs_cat(
        &img,
        off,
        "/etc/imgbuild/greengrass-config.yaml.in",
    ))
    .into_owned();
    for k in [
        "iotDataEndpoint",
        "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
        "FleetTemplate",
        "@SERIAL_NUMBER@",
        "claimCertificatePrivateKeyPath",
    ] {
        assert!(tmpl.contains(k), "plugin config lacks {k}:\n{tmpl}");
    }
    let env = String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/imgbuild/firstboot.env"))
        .into_owned();
    assert!(
        env.contains("NUCLEUS_VERSION=2.16.0") && env.contains("BUILD_EPOCH=1700000000"),
        "{env}"
    );
    assert_eq!(st("/etc/imgbuild/firstboot.env").mode, 0o600);
    assert_eq!(
        st("/usr/local/lib/imgbuild/firstboot/imgbuild-firstboot").mode,
        0o755
    );
    assert_eq!(
        debugfs_cat(&img, off, "/usr/local/lib/imgbuild/firstboot/lib/steps.sh"),
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../firstboot/lib/steps.sh"
        ))
        .expect("steps.sh")
    );
    // the image carries the on-device contract the scripts source (generated, = the checked-in copy)
    assert_eq!(
        debugfs_cat(
            &img,
            off,
            "/usr/local/lib/imgbuild/firstboot/lib/contract.sh"
        ),
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../firstboot/lib/contract.sh"
        ))
        .expect("contract.sh")
    );
    assert_eq!(
        debugfs_readlink(
            &img,
            off,
            "/etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service"
        ),
        "/etc/systemd/system/imgbuild-firstboot.service"
    );
    assert_eq!(st("/usr/lib/clock-epoch").mtime, 1_700_000_000);
    let cmdline =
        String::from_utf8_lossy(&mtype(&img, f.boot.offset_bytes, "/cmdline.txt")).into_owned();
    assert!(
        cmdline.contains("cgroup_enable=memory cgroup_memory=1"),
        "{cmdline}"
    );
}

/// A P-384 CA certificate `dir/NAME.pem` made by the real openssl.
fn ca(dir: &Path, name: &str) {
    self_signed(dir, name, "pem", "P-384", "/CN=Test Root CA 3", 30);
}

#[test]
fn project_template_and_root_ca_land_in_the_image() {
    let (f, dir, _) = fixture_base(Layout::RpiOs, 4096);
    claim(dir.path(), "claim", 365);
    ca(dir.path(), "ca3");
    ca(dir.path(), "proxy-ca");
    let bundle = [
        std::fs::read(dir.path().join("ca3.pem")).expect("ca"),
        std::fs::read(dir.path().join("proxy-ca.pem")).expect("ca"),
    ]
    .concat();
    std::fs::write(dir.path().join("bundle.pem"), &bundle).expect("bundle");
    project_template(
        dir.path(),
        "# site template\nservices:\n  aws.greengrass.FleetProvisioningByClaim:\n    configuration:\n      \
         iotDataEndpoint: {{ data_endpoint | json_encode() }}\n      rootCaPath: {{ root_ca_path | json_encode() }}\n      \
         mqttPort: {{ mqtt_port }}\n      dataPlane: {{ data_plane_port }}\n      templateParameters:\n        \
         SerialNumber: \"{{ serial_placeholder }}\"\n",
    );
    let cfg = config("claim.crt", "claim.key")
        + "root_ca = \"bundle.pem\"\nmqtt_port = 443\nproxy_url = \"https://proxy.example:8443\"\n";
    write_config(dir.path(), &cfg);
    assert_ok(&run_build(
        dir.path(),
        "rpi4",
        "base.img",
        &["--name", "gg"],
    ));
    let img = unxz(&dir.path().join("dist/gg.img.xz"), dir.path());
    assert_fs_clean(&img, &f);
    let off = f.root.offset_bytes;
    assert_eq!(
        String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/imgbuild/greengrass-config.yaml.in")),
        "# site template\nservices:\n  aws.greengrass.FleetProvisioningByClaim:\n    configuration:\n      \
         iotDataEndpoint: \"a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com\"\n      \
         rootCaPath: \"/greengrass/v2/rootCA.pem\"\n      mqttPort: 443\n      dataPlane: 443\n      \
         templateParameters:\n        SerialNumber: \"@SERIAL_NUMBER@\"\n"
    );
    let st = debugfs_stat(&img, off, "/greengrass/v2/rootCA.pem").expect("rootCA.pem");
    assert_eq!((st.mode, st.uid, st.gid), (0o644, 0, 0));
    assert_eq!(debugfs_cat(&img, off, "/greengrass/v2/rootCA.pem"), bundle);
    assert!(debugfs_stat(&img, off, "/greengrass/v2/AmazonRootCA1.pem").is_none());
    let env = String::from_utf8_lossy(&debugfs_cat(&img, off, "/etc/imgbuild/firstboot.env"))
        .into_owned();
    assert!(
        env.contains("\nROOT_CA_PATH=/greengrass/v2/rootCA.pem\n"),
        "{env}"
    );
}

#[test]
fn bad_root_ca_or_project_template_fails_the_build_naming_the_file() {
    let (_, dir, _) = fixture_base(Layout::RpiOs, 4096);
    claim(dir.path(), "claim", 365);
    // Builds with `cfg`, expects a failure naming `needles`, returns stderr.
    let fails = |cfg: &str, needles: &[&str]| {
        write_config(dir.path(), cfg);
        let o = run_build(dir.path(), "rpi4", "base.img", &[]);
        assert_fails(&o, &dir.path().join("dist"), needles);
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A claim key given as root_ca: refused without printing it.
    let stderr = fails(
        &(config("claim.crt", "claim.key") + "root_ca = \"claim.key\"\n"),
        &["root_ca", "claim.key", "not a CERTIFICATE"],
    );
    assert_key_not_printed(&dir.path().join("claim.key"), &[&stderr]);
    // https proxy without root_ca.
    fails(
        &(config("claim.crt", "claim.key") + "proxy_url = \"https://proxy:8443\"\n"),
        &["proxy_url", "root_ca"],
    );
    // A project template with an unknown variable.
    project_template(dir.path(), "x: {{ thing_nmae }}\n");
    fails(
        &config("claim.crt", "claim.key"),
        &["fleet-provisioning.yaml.tera", "thing_nmae"],
    );
}

#[test]
fn mismatched_claim_key_is_refused_without_printing_it() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    claim(dir.path(), "a", 365);
    claim(dir.path(), "b", 365);
    write_config(dir.path(), &config("a.crt", "b.key"));
    let o = run_build(dir.path(), "rpi4", base.to_str().expect("utf8"), &[]);
    assert_fails(&o, &dir.path().join("dist"), &["b.key"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_key_not_printed(&dir.path().join("b.key"), &[&stderr]);
}

#[test]
fn preseed_without_greengrass_is_an_error() {
    let (_, dir, base) = fixture_base(Layout::RpiOs, 4096);
    write_config(dir.path(), "hostname = \"x\"\n");
    let o = run_build(
        dir.path(),
        "rpi4",
        base.to_str().expect("utf8"),
        &["--preseed"],
    );
    assert_fails(&o, &dir.path().join("dist"), &["--preseed", "[greengrass]"]);
}

#[test]
fn preseed_puts_nucleus_plugin_and_arm64_debs_into_the_image() {
    let (f, dir, base) = fixture_base(Layout::RpiOs, 4096);
    // The fixture has no apt sources: give it Debian's, as a real image has.
    let spec = format!("{}?offset={}", base.display(), f.root.offset_bytes);
    std::fs::write(
        dir.path().join("sources.list"),
        "deb http://deb.debian.org/debian bookworm main\n",
    )
    .expect("write");
    for cmd in ["mkdir /etc/apt", "write sources.list /etc/apt/sources.list"] {
        assert!(run(Command::new("debugfs")
            .args(["-w", "-R", cmd])
            .arg(&spec)
            .current_dir(dir.path()))
        .status
        .success());
    }
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("nucleus.zip"), b"stand-in nucleus").expect("write");
    std::fs::write(www.join("plugin.jar"), b"stand-in plugin").expect("write");
    let (url, _) = serve_dir(&www);
    claim(dir.path(), "claim", 365);
    let sha = |p: &str| imgbuild_testkit::sha256_file(&www.join(p));
    let cfg = config("claim.crt", "claim.key")
        + &format!(
            "nucleus_url = \"{url}/nucleus.zip\"\nnucleus_sha256 = \"{}\"\nplugin_url = \"{url}/plugin.jar\"\nplugin_sha256 = \"{}\"\n",
            sha("nucleus.zip"),
            sha("plugin.jar")
        );
    write_config(dir.path(), &cfg);
    let args = ["--preseed", "--compress", "none", "--name", "p"];
    assert_ok(&run_build(dir.path(), "rpi4", "base.img", &args));
    let img = dir.path().join("dist/p.img");
    assert_fs_clean(&img, &f);
    let off = f.root.offset_bytes;
    assert_eq!(
        debugfs_cat(
            &img,
            off,
            "/var/lib/imgbuild/preseed/greengrass-nucleus-2.16.0.zip"
        ),
        b"stand-in nucleus"
    );
    assert_eq!(
        debugfs_cat(
            &img,
            off,
            "/var/lib/imgbuild/preseed/fleetprovisioningbyclaim-1.2.2.jar"
        ),
        b"stand-in plugin"
    );
    let debs = imgbuild_testkit::debugfs_ls(&img, off, "/var/lib/imgbuild/preseed/debs");
    for want in [
        "docker.io_",
        "openjdk-17-jre-headless_",
        "containerd_",
        "sudo_",
        "unzip_",
    ] {
        assert!(
            debs.iter()
                .any(|d| d.starts_with(want) && d.ends_with(".deb")),
            "{want} missing: {debs:?}"
        );
    }
    assert!(
        debs.iter()
            .filter(|d| d.ends_with(".deb"))
            .all(|d| d.contains("_arm64.deb") || d.contains("_all.deb")),
        "{debs:?}"
    );
    // Every .deb is byte-identical to the one apt verified, and dpkg-deb reads it.
    let docker = debs
        .iter()
        .find(|d| d.starts_with("docker.io_"))
        .expect("docker.io");
    let bytes = debugfs_cat(
        &img,
        off,
        &format!("/var/lib/imgbuild/preseed/debs/{docker}"),
    );
    let copy = dir.path().join("docker.deb");
    std::fs::write(&copy, bytes).expect("write");
    let o = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&copy)
        .args(["Package", "Architecture"]));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "Package: docker.io\nArchitecture: arm64\n"
    );
}
