//! The README's "Empty account to first device" walk-through, command for command, through the
//! real binary against an empty moto account (+ the shim): fleet init (dry run, then for real,
//! then again: nothing to do), claim fetch, allowlist publish, provisioning config, a build of
//! a Raspberry Pi OS fixture with that config, devices sync and ls, deploy --wait, destroy.
//! The one step the emulator cannot do — a device registering through MQTT — is done with
//! boto3 exactly as the template describes it (thing Lab-SERIAL in group Lab, its own
//! certificate with the device policy, a Greengrass core device).
#![cfg(feature = "cloud")]

mod common;

use common::*;
use imgbuild_testkit::moto::Moto;
use imgbuild_testkit::{debugfs_cat, Layout};
use std::path::Path;

/// Runs a README command line (split at spaces) and returns stdout; panics with stderr.
fn step(moto: &Moto, cwd: &Path, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(args[0], "imgbuild");
    let o = imgbuild_aws(moto, cwd, &args[1..]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "`{line}` failed ({:?}):\n{out}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The account's resources, for "this changed nothing" comparisons.
const SNAPSHOT: &str = "\
iam, lam = client('iam'), client('lambda')
print(json.dumps([sorted(r['RoleName'] for r in iam.list_roles()['Roles']),
                  sorted(p['PolicyName'] + p['DefaultVersionId'] for p in iam.list_policies(Scope='Local')['Policies']),
                  sorted(p['policyName'] for p in iot.list_policies()['policies']),
                  sorted(g['groupName'] for g in iot.list_thing_groups()['thingGroups']),
                  sorted(t['thingName'] for t in iot.list_things()['things']),
                  sorted((c['certificateId'], c['status']) for c in iot.list_certificates()['certificates']),
                  sorted(b['Name'] for b in s3.list_buckets()['Buckets']),
                  sorted(f['FunctionName'] for f in lam.list_functions()['Functions'])]))
";

fn snapshot(moto: &Moto) -> String {
    String::from_utf8(moto.boto3(SNAPSHOT, &[]).stdout).expect("snapshot")
}

/// A device registering through the template (what AWS IoT does on RegisterThing).
fn register_device(moto: &Moto, serial: &str) {
    moto.boto3(
        "import urllib.request\n\
         thing = 'Lab-' + sys.argv[2]\n\
         iot.create_thing(thingName=thing)\n\
         iot.add_thing_to_thing_group(thingGroupName='Lab', thingName=thing)\n\
         c = iot.create_keys_and_certificate(setAsActive=True)\n\
         iot.attach_thing_principal(thingName=thing, principal=c['certificateArn'])\n\
         iot.attach_policy(policyName='Lab-DevicePolicy', target=c['certificateArn'])\n\
         urllib.request.urlopen(urllib.request.Request(sys.argv[1] + '/_shim/greengrass/v2/coreDevices/' + thing, method='POST'))\n",
        &[serial],
    );
}

#[test]
fn empty_account_to_first_device() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let f = fixture(Layout::RpiOs, 4096, 0);
    copy_base(&f, d, "base.img");
    std::fs::write(
        d.join("imgbuild.toml"),
        "hostname = \"gg-lab\"\n[greengrass]\nnucleus_version = \"2.16.0\"\n",
    )
    .unwrap();
    std::fs::write(d.join("allowlist.txt"), "# lab devices\nSN1\nSN2\n").unwrap();
    std::fs::write(
        d.join("components.json"),
        r#"{"aws.greengrass.Cli": {"componentVersion": "latest"}}"#,
    )
    .unwrap();
    let empty = snapshot(&moto);

    // 1. What init would create; nothing changes.
    let out = step(
        &moto,
        d,
        "imgbuild cloud fleet init --name Lab --bucket lab-fleet-config --allowlist-hook --dry-run",
    );
    assert!(
        out.contains("plan: 21 to create, 0 in place, 0 drifted"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert_eq!(snapshot(&moto), empty);
    assert!(!d.join("provisioning.json").exists());

    // 2. Create it; 3. a second run has nothing to do.
    let init = "imgbuild cloud fleet init --name Lab --bucket lab-fleet-config --allowlist-hook";
    let out = step(&moto, d, init);
    assert!(out.contains("created IoT provisioning template Lab-Template (pre-provisioning hook Lab-AllowlistHook)"), "{out}");
    assert!(out.contains("wrote provisioning.json"), "{out}");
    let made = snapshot(&moto);
    let out = step(&moto, d, init);
    assert!(
        out.contains("plan: 0 to create, 21 in place, 0 drifted"),
        "{out}"
    );
    assert!(out.contains("(0 created)"), "{out}");
    assert_eq!(snapshot(&moto), made);

    // 4. Claim material for the build; 5. the allowlist the hook reads.
    step(
        &moto,
        d,
        "imgbuild cloud claim fetch --bucket lab-fleet-config --out secrets",
    );
    step(
        &moto,
        d,
        "imgbuild cloud provisioning publish --bucket lab-fleet-config --role-alias Lab-TokenExchangeRoleAlias \
         --template Lab-Template --thing-group Lab --allowlist allowlist.txt",
    );
    let listed = moto.boto3(
        "print(s3.get_object(Bucket='lab-fleet-config', Key='provisioning/allowlist.txt')['Body'].read().decode())",
        &[],
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("SN2"));
    // Publishing the same parameters left the fleet as init made it.
    let out = step(&moto, d, init);
    assert!(out.contains("0 to create, 21 in place, 0 drifted"), "{out}");

    // 6. The build configuration; 7. the image.
    step(
        &moto,
        d,
        "imgbuild cloud provisioning config --claim-dir secrets --out build.toml",
    );
    let out = step(
        &moto,
        d,
        "imgbuild --board rpi4 --base base.img --config build.toml --compress none --name lab --out dist",
    );
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let img = d.join("dist/lab.img");
    let key = std::fs::read(d.join("secrets/claim.private.key")).unwrap();
    assert_eq!(
        debugfs_cat(
            &img,
            f.root.offset_bytes,
            "/greengrass/v2/claim.private.pem.key"
        ),
        key
    );
    let plugin = String::from_utf8(debugfs_cat(
        &img,
        f.root.offset_bytes,
        "/etc/imgbuild/greengrass-config.yaml.in",
    ))
    .unwrap();
    for needle in [
        "provisioningTemplate: \"Lab-Template\"",
        "iotRoleAlias: \"Lab-TokenExchangeRoleAlias\"",
        "awsRegion: \"eu-west-1\"",
    ] {
        assert!(plugin.contains(needle), "{needle} not in {plugin}");
    }

    // The devices boot and register: SN1 (listed) and SN9 (not listed; without the hook's
    // refusal, which the emulator cannot run, it got in).
    register_device(&moto, "SN1");
    register_device(&moto, "SN9");

    // 8. The group follows the allowlist; 9. the fleet; 10. a deployment that reports.
    let sync = "imgbuild cloud devices sync --allowlist allowlist.txt --thing-group Lab --thing-prefix Lab- \
                --device-policy Lab-DevicePolicy";
    let out = step(&moto, d, &format!("{sync} --dry-run"));
    assert!(out.contains("Lab-SN9"), "{out}");
    let out = step(&moto, d, &format!("{sync} --yes"));
    assert!(out.contains("things deleted 1"), "{out}");
    let out = step(
        &moto,
        d,
        "imgbuild cloud devices ls --thing-group Lab --thing-prefix Lab-",
    );
    assert!(out.contains("Lab-SN1") && !out.contains("Lab-SN9"), "{out}");
    let out = step(
        &moto,
        d,
        "imgbuild cloud deploy --thing-group Lab --components components.json --wait --poll-interval 50ms",
    );
    assert!(out.contains("Lab-SN1 SUCCEEDED"), "{out}");

    // 11. Removing the fleet: refused while a device is in the group.
    let o = imgbuild_aws(
        &moto,
        d,
        &[
            "cloud",
            "fleet",
            "destroy",
            "--name",
            "Lab",
            "--bucket",
            "lab-fleet-config",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("still has 1 thing(s) (Lab-SN1)"), "{err}");
    let out = step(
        &moto,
        d,
        "imgbuild cloud fleet destroy --name Lab --bucket lab-fleet-config --force",
    );
    assert!(out.contains("resource(s) deleted"), "{out}");
}

#[test]
fn init_out_writes_a_section_the_build_accepts_and_drift_fails_the_run() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = step(
        &moto,
        d,
        "imgbuild cloud fleet init --name Lab --out greengrass.toml --claim-dir claim",
    );
    assert!(
        out.contains("wrote greengrass.toml ([greengrass] section)"),
        "{out}"
    );
    let section = std::fs::read_to_string(d.join("greengrass.toml")).unwrap();
    assert_eq!(section.matches("[greengrass]").count(), 1, "{section}");
    assert!(
        section.contains("claim_key = \"claim/claim.private.key\""),
        "{section}"
    );
    let cfg = imgbuild_core::config::Config::parse(
        &format!("hostname = \"gg\"\n{section}"),
        "greengrass.toml",
    )
    .expect("the build's parser accepts the section");
    let gg = cfg.greengrass.expect("[greengrass]");
    assert_eq!(gg.provisioning_template, "Lab-Template");
    assert_eq!(gg.thing_group.as_deref(), Some("Lab"));

    // Someone turns versioning off: init reports it, exits 1, rewrites nothing.
    moto.boto3(
        "s3.put_bucket_versioning(Bucket='lab-fleet-123456789012-eu-west-1', \
         VersioningConfiguration={'Status': 'Suspended'})",
        &[],
    );
    std::fs::remove_file(d.join("greengrass.toml")).unwrap();
    let o = imgbuild_aws(
        &moto,
        d,
        &[
            "cloud",
            "fleet",
            "init",
            "--name",
            "Lab",
            "--out",
            "greengrass.toml",
        ],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("DRIFT   S3 bucket lab-fleet-123456789012-eu-west-1 versioning: versioning is Suspended"), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("1 resource(s) differ"), "{err}");
    assert!(
        !d.join("greengrass.toml").exists(),
        "a drifted run wrote the section"
    );
    let versioning = moto.boto3(
        "print(s3.get_bucket_versioning(Bucket='lab-fleet-123456789012-eu-west-1')['Status'])",
        &[],
    );
    assert_eq!(
        String::from_utf8_lossy(&versioning.stdout).trim(),
        "Suspended"
    );
}
