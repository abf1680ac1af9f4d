//! Fleet operations through the real binary against moto + the shim, where only the process
//! shows the behaviour: `devices sync` without `--yes` and without a terminal refuses (exit 1,
//! nothing changed), `deploy --wait` exits 0 / 3 / 4, `provisioning config` writes one
//! `[greengrass]` section the build accepts.
#![cfg(feature = "cloud")]

mod common;

use common::imgbuild_aws;

use imgbuild_testkit::moto::Moto;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Group Fleet with core devices SN1, SN2 and the thing SN3; a snapshot of everything.
const SEED: &str = "\
gg = client('greengrassv2')
iot.create_thing_group(thingGroupName='Fleet')
for t in ['SN1', 'SN2', 'SN3']:
    iot.create_thing(thingName=t)
    iot.add_thing_to_thing_group(thingGroupName='Fleet', thingName=t)
    c = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName=t, principal=c['certificateArn'])
import urllib.request
for t in ['SN1', 'SN2']:
    urllib.request.urlopen(urllib.request.Request(sys.argv[1] + '/_shim/greengrass/v2/coreDevices/' + t, method='POST'))
";

const SNAPSHOT: &str = "\
gg = client('greengrassv2')
things = {t['thingName']: sorted(iot.list_thing_principals(thingName=t['thingName'])['principals'])
          for t in iot.list_things()['things']}
members = sorted(iot.list_things_in_thing_group(thingGroupName='Fleet')['things'])
certs = sorted((c['certificateArn'], c['status']) for c in iot.list_certificates()['certificates'])
cores = sorted(c['coreDeviceThingName'] for c in gg.list_core_devices()['coreDevices'])
deps = sorted(d['deploymentId'] for d in gg.list_deployments()['deployments'])
print(json.dumps([things, members, certs, cores, deps], sort_keys=True))
";

fn snapshot(moto: &Moto) -> String {
    String::from_utf8(moto.boto3(SNAPSHOT, &[]).stdout).unwrap()
}

/// A moto account seeded with [`SEED`], a project directory whose `allow.txt` allows SN1 and SN2,
/// and the account's [`snapshot`] before any command.
fn seeded() -> (Moto, tempfile::TempDir, String) {
    let moto = Moto::start();
    moto.boto3(SEED, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("allow.txt"), "SN1\nSN2\n").unwrap();
    let before = snapshot(&moto);
    (moto, dir, before)
}

fn behaviour(moto: &Moto, thing: &str, outcome: &str) {
    moto.boto3(
        &format!(
            "import urllib.request\n\
             urllib.request.urlopen(urllib.request.Request(sys.argv[1] + \
             '/_shim/greengrass/v2/coreDevices/{thing}/behaviour', \
             data=b'{{\"outcome\": \"{outcome}\"}}', method='POST'))\n"
        ),
        &[],
    );
}

#[test]
fn sync_removals_need_yes_without_a_terminal() {
    let (moto, dir, before) = seeded();
    let sync = [
        "cloud",
        "devices",
        "sync",
        "--allowlist",
        "allow.txt",
        "--thing-group",
        "Fleet",
    ];

    let o = imgbuild_aws(&moto, dir.path(), &sync);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("remove   SN3: remove from group;"),
        "the plan is printed: {out}"
    );
    assert!(
        err.contains("removals need --yes") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(snapshot(&moto), before, "refusal changed the account");

    let o = imgbuild_aws(&moto, dir.path(), &[&sync[..], &["--yes"]].concat());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("things deleted 1, certificates deleted 1"),
        "{out}"
    );

    let o = imgbuild_aws(
        &moto,
        dir.path(),
        &["cloud", "devices", "ls", "--thing-group", "Fleet", "--json"],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let things: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["thing"].as_str().unwrap())
        .collect();
    assert_eq!(things, ["SN1", "SN2"]);
    assert_eq!(rows[0]["core_device_status"], "HEALTHY");
}

/// Runs the binary on a pseudo-terminal (util-linux `script`), typing `answer`.
fn imgbuild_on_terminal(moto: &Moto, cwd: &Path, args: &str, answer: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("{} {args}", env!("CARGO_BIN_EXE_imgbuild")),
            "/dev/null",
        ])
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("AWS_PROFILE")
        .envs(moto.env())
        .env("HOME", cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    // Give the binary time to plan and prompt before the answer arrives on the terminal.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn sync_asks_on_a_terminal_and_only_y_removes() {
    let (moto, dir, before) = seeded();
    let args = "cloud devices sync --allowlist allow.txt --thing-group Fleet";

    let o = imgbuild_on_terminal(&moto, dir.path(), args, "n\n");
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[y/N]") && out.contains("not confirmed"),
        "{out}"
    );
    assert_eq!(snapshot(&moto), before, "a \"n\" changed the account");

    let o = imgbuild_on_terminal(&moto, dir.path(), args, "y\n");
    let (out, _) = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("things deleted 1"), "{out}");
}

#[test]
fn deploy_wait_exit_status_tells_success_failure_and_timeout_apart() {
    let moto = Moto::start();
    moto.boto3(SEED, &[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("components.json"),
        r#"{"aws.greengrass.Cli": {"componentVersion": "latest"}}"#,
    )
    .unwrap();
    // `cloud deploy` of components.json to Fleet, with `extra`.
    let deploy = |extra: &[&str]| {
        let args = ["cloud", "deploy", "--thing-group", "Fleet"];
        let args = [&args[..], &["--components", "components.json"], extra].concat();
        imgbuild_aws(&moto, dir.path(), &args)
    };
    let wait = ["--wait", "--poll-interval", "50ms"];

    let o = deploy(&wait);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("aws.greengrass.Cli latest -> 2.16.0"), "{out}");
    assert!(
        out.contains("  SN1 QUEUED\n") && out.contains("  SN2 SUCCEEDED"),
        "{out}"
    );
    assert!(
        out.contains(
            ": 2 succeeded, 0 failed, 0 timed out; not waited for (no Greengrass core device): SN3"
        ),
        "{out}"
    );

    behaviour(&moto, "SN2", "FAILED");
    let o = deploy(&wait);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{out}{err}");
    assert!(out.contains("  SN2 FAILED"), "{out}");
    assert!(
        err.starts_with("imgbuild: error: deployment ") && err.contains("failed on SN2 FAILED"),
        "{err}"
    );

    behaviour(&moto, "SN2", "SUCCEEDED");
    behaviour(&moto, "SN1", "OFFLINE");
    let o = deploy(&[&wait[..], &["--timeout", "400ms"]].concat());
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(4), "{out}{err}");
    assert!(
        err.contains("did not finish in time on SN1 QUEUED"),
        "{err}"
    );

    // --timeout without --wait is a usage error.
    let o = deploy(&["--timeout", "1m"]);
    assert_eq!(o.status.code(), Some(2), "clap usage error");
}

#[test]
fn provisioning_config_completes_the_projects_greengrass_section() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("imgbuild.toml"),
        "hostname = \"gg\"\n[greengrass]\nnucleus_version = \"2.16.0\"\nregion = \"us-east-1\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("provisioning.json"),
        r#"{"region": "eu-west-1", "data_endpoint": "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com",
            "credential_endpoint": "c1a2b3c4d5e6f7.credentials.iot.eu-west-1.amazonaws.com",
            "role_alias": "GGAlias", "provisioning_template": "FleetTemplate", "thing_group": "Fleet"}"#,
    )
    .unwrap();
    // `cloud provisioning config` with the claim directory `claim_dir`, into `out`.
    let config = |claim_dir: &str, out: &str| {
        let args = ["cloud", "provisioning", "config", "--claim-dir", claim_dir];
        imgbuild_aws(&moto, dir.path(), &[&args[..], &["--out", out]].concat())
    };
    let o = config("secrets", "ci-build.toml");
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("[greengrass] region: \"us-east-1\" replaced by the published \"eu-west-1\""),
        "{out}"
    );
    let merged = std::fs::read_to_string(dir.path().join("ci-build.toml")).unwrap();
    assert_eq!(merged.matches("[greengrass]").count(), 1, "{merged}");
    assert!(merged.contains("nucleus_version = \"2.16.0\""));
    assert!(
        merged.contains("claim_key = \"secrets/claim.private.key\""),
        "{merged}"
    );
    // The build's own config parser and validation accept it (one [greengrass] table).
    let cfg = imgbuild_core::config::Config::parse(&merged, "ci-build.toml").expect("valid config");
    let gg = cfg.greengrass.expect("[greengrass]");
    assert_eq!(gg.region, "eu-west-1");
    assert_eq!(gg.thing_group.as_deref(), Some("Fleet"));
    assert_eq!(gg.nucleus_version, "2.16.0");
    // A second [greengrass] table (what the old workflow appended) is what the parser refuses.
    let doubled = format!("{merged}\n[greengrass]\nregion = \"eu-west-1\"\n");
    assert!(imgbuild_core::config::Config::parse(&doubled, "x").is_err());
    // Overwriting an input is refused.
    let o = config("s", "imgbuild.toml");
    assert_eq!(o.status.code(), Some(1));
    // Also under another spelling of the same path; the input is left as it was.
    let before = std::fs::read(dir.path().join("imgbuild.toml")).unwrap();
    let o = config("s", "./imgbuild.toml");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("must go to a new file"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("imgbuild.toml")).unwrap(),
        before
    );
}
