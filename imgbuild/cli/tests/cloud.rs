//! The cloud side through the real binary, as `.github/workflows/build-image.yml` drives it,
//! against a moto server on 127.0.0.1: claim ensure (twice) and fetch, provisioning publish,
//! a build whose `[greengrass]` section comes from the published parameters, `build --upload`,
//! `upload --presign`, and the one-line failures that must come before any build work.
#![cfg(feature = "cloud")]

mod common;

use common::*;
use imgbuild_testkit::moto::Moto;
use imgbuild_testkit::{debugfs_cat, sha256_file, Fixture, Layout};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "imgbuild failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bucket, a thing group, a role alias and a provisioning template, as an account owner has them.
fn seed_account(moto: &Moto) {
    moto.boto3(
        "s3.create_bucket(Bucket='fleet', CreateBucketConfiguration={'LocationConstraint': 'eu-west-1'})\n\
         iot.create_thing_group(thingGroupName='Fleet')\n\
         iot.create_role_alias(roleAlias='GGAlias', roleArn='arn:aws:iam::123456789012:role/GGTokenExchange')\n\
         iot.create_provisioning_template(templateName='FleetTemplate', \
           templateBody='{\"Parameters\":{\"SerialNumber\":{\"Type\":\"String\"}},\"Resources\":{}}', \
           provisioningRoleArn='arn:aws:iam::123456789012:role/Provisioning', enabled=True)\n",
        &[],
    );
}

/// A seeded moto account, a Raspberry Pi OS fixture and a project directory holding it as
/// `base.img`.
fn account_and_project() -> (Moto, Fixture, tempfile::TempDir) {
    let moto = Moto::start();
    seed_account(&moto);
    let f = fixture(Layout::RpiOs, 4096, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    copy_base(&f, dir.path(), "base.img");
    (moto, f, dir)
}

/// Objects under `prefix` in bucket `fleet`: key -> (size, sha256 metadata, SSE).
fn objects(moto: &Moto, prefix: &str) -> serde_json::Value {
    let out = moto.boto3(
        "out = {}\n\
         for o in s3.list_objects_v2(Bucket='fleet', Prefix=sys.argv[2]).get('Contents', []):\n    \
             h = s3.head_object(Bucket='fleet', Key=o['Key'])\n    \
             out[o['Key']] = [o['Size'], h['Metadata'].get('sha256'), h.get('ServerSideEncryption')]\n\
         print(json.dumps(out))\n",
        &[prefix],
    );
    serde_json::from_slice(&out.stdout).expect("objects json")
}

#[test]
fn workflow_claim_provisioning_build_and_upload() {
    let (moto, f, dir) = account_and_project();
    let d = dir.path();

    // claim ensure is idempotent: the second run creates nothing
    let ensure = [
        "cloud",
        "claim",
        "ensure",
        "--bucket",
        "fleet",
        "--template",
        "FleetTemplate",
    ];
    let first = ok(&imgbuild_aws(&moto, d, &ensure));
    let second = ok(&imgbuild_aws(&moto, d, &ensure));
    let certs = moto.boto3("print(len(iot.list_certificates()['certificates']))", &[]);
    assert_eq!(String::from_utf8_lossy(&certs.stdout).trim(), "1");
    assert_ne!(first, second, "the second ensure should report no change");

    let fetched = imgbuild_aws(
        &moto,
        d,
        &[
            "cloud", "claim", "fetch", "--bucket", "fleet", "--out", "secrets",
        ],
    );
    ok(&fetched);
    let key = d.join("secrets/claim.private.key");
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_text = std::fs::read_to_string(&key).expect("key");
    let key_body = key_text
        .lines()
        .find(|l| !l.starts_with("-----"))
        .expect("key body")
        .to_owned();

    ok(&imgbuild_aws(
        &moto,
        d,
        &[
            "cloud",
            "provisioning",
            "publish",
            "--bucket",
            "fleet",
            "--role-alias",
            "GGAlias",
            "--template",
            "FleetTemplate",
            "--thing-group",
            "Fleet",
            "--out",
            "provisioning.json",
        ],
    ));
    // compose the build config from the published parameters, as build-image.yml does
    let params: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("provisioning.json")).expect("params"))
            .expect("params json");
    let mut config = String::from("hostname = \"gg-cloud\"\n[greengrass]\n");
    for k in [
        "region",
        "data_endpoint",
        "credential_endpoint",
        "role_alias",
        "provisioning_template",
        "thing_group",
    ] {
        config += &format!("{k} = {}\n", params[k]);
    }
    config +=
        "claim_cert = \"secrets/claim.cert.pem\"\nclaim_key = \"secrets/claim.private.key\"\n";
    std::fs::write(d.join("imgbuild.toml"), config).expect("config");

    let o = imgbuild_aws(
        &moto,
        d,
        &[
            "--board",
            "rpi4",
            "--base",
            "base.img",
            "--name",
            "fleet",
            "--upload",
            "s3://fleet/images/rpi4/",
        ],
    );
    let stdout = ok(&o);
    for text in [&stdout, &String::from_utf8_lossy(&o.stderr).into_owned()] {
        assert!(!text.contains(&key_body), "claim key printed");
    }
    let listed = objects(&moto, "images/rpi4/");
    for name in [
        "fleet.img.xz",
        "fleet.img.xz.sha256",
        "fleet.bmap",
        "manifest.json",
    ] {
        let local = d.join("dist").join(name);
        let entry = &listed[format!("images/rpi4/{name}")];
        assert_eq!(
            entry[0].as_u64(),
            Some(std::fs::metadata(&local).expect("artifact").len()),
            "{name}: {listed}"
        );
        assert_eq!(
            entry[1].as_str(),
            Some(sha256_file(&local).as_str()),
            "{name}"
        );
        assert_eq!(entry[2].as_str(), Some("AES256"), "{name}");
        assert!(
            stdout.contains(&format!("s3://fleet/images/rpi4/{name} sha256=")),
            "{stdout}"
        );
    }
    // the image carries the claim material fetched from the bucket
    let img = unxz(&d.join("dist/fleet.img.xz"), d);
    assert_eq!(
        debugfs_cat(
            &img,
            f.root.offset_bytes,
            "/greengrass/v2/claim.private.pem.key"
        ),
        key_text.as_bytes()
    );

    // a stand-alone upload with a presigned URL that downloads the same bytes
    let o = imgbuild_aws(
        &moto,
        d,
        &[
            "upload",
            "dist/fleet.img.xz",
            "--to",
            "s3://fleet/again/",
            "--presign",
            "1h",
        ],
    );
    let stdout = ok(&o);
    let url = stdout
        .lines()
        .find(|l| l.starts_with("http://"))
        .unwrap_or_else(|| panic!("no presigned URL in {stdout}"));
    let got = moto.boto3(
        "import hashlib, urllib.request\n\
         print(hashlib.sha256(urllib.request.urlopen(sys.argv[2]).read()).hexdigest())",
        &[url],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        sha256_file(&d.join("dist/fleet.img.xz"))
    );
}

#[test]
fn upload_destination_problems_fail_before_the_build() {
    let (moto, _fixture, dir) = account_and_project();
    let d = dir.path();
    let before = sha256_file(&d.join("base.img"));
    let out = d.join("dist");
    let build = |to: &str| {
        imgbuild_aws(
            &moto,
            d,
            &["--board", "rpi4", "--base", "base.img", "--upload", to],
        )
    };
    // not an S3 URL: clap's usage error names the option
    let o = build("https://example.invalid/x/");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--upload"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
    // a bucket that does not exist: one line naming it, nothing built
    assert_fails(
        &build("s3://no-such-bucket/x/"),
        &out,
        &["--upload", "no-such-bucket"],
    );
    assert!(
        !out.exists(),
        "the build ran before the destination was checked"
    );
    // wrong credentials are caught before the build as well (with INITIAL_NO_AUTH_ACTION_COUNT=0
    // moto authenticates every request)
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let o = Command::new(env!("CARGO_BIN_EXE_imgbuild"))
        .current_dir(d)
        .args([
            "--board",
            "rpi4",
            "--base",
            "base.img",
            "--upload",
            "s3://fleet/x/",
        ])
        .envs(strict.env())
        .env("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        .env("HOME", d)
        .env("IMGBUILD_CACHE_DIR", test_cache())
        .output()
        .expect("run imgbuild");
    assert_fails(&o, &out, &["--upload", "InvalidAccessKeyId"]);
    assert!(!out.exists());
    assert_eq!(sha256_file(&d.join("base.img")), before, "base changed");
}
