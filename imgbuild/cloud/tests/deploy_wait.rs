//! `cloud deploy --wait` and `latest` component versions on moto + the shim's Greengrass v2
//! model (devices take a deployment asynchronously: QUEUED, IN_PROGRESS, then a final status).

mod common;
mod opskit;

use std::time::Duration;

use aws_sdk_greengrassv2::primitives::Blob;
use common::Moto;
use imgbuild_cloud::deploy::{self, Outcome, WaitOptions, EXIT_FAILED, EXIT_TIMED_OUT};
use imgbuild_cloud::Aws;
use opskit::{device, device_policy, group, shim_post, state};

const FAST: WaitOptions = WaitOptions {
    timeout: Duration::from_secs(60),
    poll_interval: Duration::from_millis(20),
};

/// "Fleet": SN1, SN2 core devices, SN3 a thing without a core device; SN9 a core device elsewhere.
async fn fleet(moto: &Moto, aws: &Aws) {
    group(aws, "Fleet").await;
    device_policy(aws).await;
    device(moto, aws, "SN1", Some("Fleet"), true).await;
    device(moto, aws, "SN2", Some("Fleet"), true).await;
    device(moto, aws, "SN3", Some("Fleet"), false).await;
    device(moto, aws, "SN9", None, true).await;
}

async fn component(aws: &Aws, name: &str, version: &str) {
    let recipe = format!(
        r#"{{"RecipeFormatVersion": "2020-01-25", "ComponentName": "{name}",
            "ComponentVersion": "{version}", "Manifests": [{{"Lifecycle": {{"run": "true"}}}}]}}"#
    );
    aws.greengrass
        .create_component_version()
        .inline_recipe(Blob::new(recipe.into_bytes()))
        .send()
        .await
        .unwrap();
}

fn components_file(dir: &std::path::Path, json: &str) -> std::path::PathBuf {
    let path = dir.join("components.json");
    std::fs::write(&path, json).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_follows_every_device_and_reports_a_failed_one() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    fleet(&moto, &aws).await;
    shim_post(
        &moto,
        "/_shim/greengrass/v2/coreDevices/SN2/behaviour",
        r#"{"outcome": "FAILED", "reason": "com.example.App errored during install"}"#,
    );
    let mut components = std::collections::BTreeMap::new();
    components.insert(
        "com.example.App".to_owned(),
        deploy::ComponentSpec {
            component_version: "1.0.0".to_owned(),
            configuration_update: None,
            run_with: None,
        },
    );
    let d = deploy::deploy(&aws, "Fleet", &components, None)
        .await
        .unwrap();
    let mut lines = Vec::new();
    let report = deploy::wait(&aws, "Fleet", &d.deployment_id, FAST, |l| {
        lines.push(l.to_owned())
    })
    .await
    .unwrap();

    // Each device went through the asynchronous states, in order.
    let of = |thing: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{thing} ")))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        of("SN1"),
        ["QUEUED", "IN_PROGRESS", "SUCCEEDED"],
        "{lines:?}"
    );
    assert_eq!(of("SN2"), ["QUEUED", "IN_PROGRESS", "FAILED"], "{lines:?}");
    assert!(of("SN3").is_empty() && of("SN9").is_empty(), "{lines:?}");

    assert_eq!(report.outcome, Outcome::Failed);
    assert_eq!(report.without_core_device, ["SN3"]);
    let sn2 = &report.devices["SN2"];
    assert_eq!(
        sn2.reason.as_deref(),
        Some("com.example.App errored during install")
    );
    assert_eq!(sn2.error_types, ["COMPONENT_ERROR"]);
    assert_eq!(
        report.summary(),
        format!(
            "deployment {}: 1 succeeded, 1 failed, 0 timed out; not waited for (no Greengrass core \
             device): SN3",
            d.deployment_id
        )
    );
    let err = report.into_result().unwrap_err();
    assert_eq!(err.exit_code(), EXIT_FAILED);
    common::assert_one_line(
        err.message(),
        &["failed on SN2 FAILED (com.example.App errored during install) [COMPONENT_ERROR]"],
    );

    // The service's own views agree: SN1 is listed for the group (it deployed successfully),
    // SN2 reported itself unhealthy, SN9 outside the group never got the deployment.
    let listed = aws
        .greengrass
        .list_core_devices()
        .thing_group_arn(&d.target_arn)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .core_devices()
        .iter()
        .filter_map(|c| c.core_device_thing_name())
        .collect();
    assert_eq!(names, ["SN1"]);
    let sn2 = aws
        .greengrass
        .get_core_device()
        .core_device_thing_name("SN2")
        .send()
        .await
        .unwrap();
    assert_eq!(sn2.status().map(|s| s.as_str()), Some("UNHEALTHY"));
    let sn9 = aws
        .greengrass
        .list_effective_deployments()
        .core_device_thing_name("SN9")
        .send()
        .await
        .unwrap();
    assert!(sn9.effective_deployments().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_wait_exit_statuses_and_latest_resolution() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    fleet(&moto, &aws).await;
    for v in ["1.0.0", "1.2.0", "1.10.0-rc.1", "1.9.3"] {
        component(&aws, "com.example.App", v).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = components_file(
        dir.path(),
        r#"{"com.example.App": {"componentVersion": "latest"},
            "aws.greengrass.Cli": {"componentVersion": "latest"},
            "com.example.Pinned": {"componentVersion": "0.1.0"}}"#,
    );
    // `cloud deploy [--wait]` as the CLI runs it: the wait report decides the outcome.
    let args = |wait: bool, timeout: Option<Duration>| {
        let (aws, file) = (&aws, file.clone());
        async move {
            let req = deploy::DeployRequest {
                thing_group: "Fleet",
                components: &file,
                name: None,
                wait: wait.then_some(deploy::WaitOptions {
                    timeout: timeout.unwrap_or(deploy::DEFAULT_WAIT_TIMEOUT),
                    poll_interval: Duration::from_millis(20),
                }),
            };
            let mut events = Vec::new();
            let report = deploy::run(aws, &req, |e| events.push(format!("{e:?}"))).await?;
            assert!(
                events.iter().any(|e| e.starts_with("Created(")),
                "{events:?}"
            );
            report.map_or(Ok(()), |r| r.into_result().map(drop))
        }
    };

    // All core devices succeed: Ok (exit 0); the deployment carries the resolved versions.
    args(true, None).await.unwrap();
    let list = aws.greengrass.list_deployments().send().await.unwrap();
    let id = list.deployments()[0].deployment_id().unwrap().to_owned();
    let got = aws
        .greengrass
        .get_deployment()
        .deployment_id(&id)
        .send()
        .await
        .unwrap();
    let versions: std::collections::BTreeMap<&str, &str> = got
        .components()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.component_version()))
        .collect();
    assert_eq!(
        versions["com.example.App"], "1.9.3",
        "1.10.0-rc.1 is a pre-release"
    );
    assert_eq!(versions["aws.greengrass.Cli"], "2.16.0");
    assert_eq!(versions["com.example.Pinned"], "0.1.0");

    // A device that never picks the deployment up: timed out, exit status 3.
    shim_post(
        &moto,
        "/_shim/greengrass/v2/coreDevices/SN1/behaviour",
        r#"{"outcome": "OFFLINE"}"#,
    );
    let err = args(true, Some(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_TIMED_OUT);
    common::assert_one_line(
        err.message(),
        &["did not finish in time on SN1 QUEUED", "--timeout"],
    );

    // A failing device beats a late one: exit status 2.
    shim_post(
        &moto,
        "/_shim/greengrass/v2/coreDevices/SN2/behaviour",
        r#"{"outcome": "REJECTED"}"#,
    );
    let err = args(true, Some(Duration::from_secs(2))).await.unwrap_err();
    assert_eq!(err.exit_code(), EXIT_FAILED);
    common::assert_one_line(err.message(), &["failed on SN2 REJECTED"]);

    // The replaced revisions: SN1 never took them; they are INACTIVE now.
    let all = aws.greengrass.list_deployments().send().await.unwrap();
    let statuses: Vec<&str> = all
        .deployments()
        .iter()
        .map(|d| d.deployment_status().unwrap().as_str())
        .collect();
    assert_eq!(statuses, ["INACTIVE", "INACTIVE", "ACTIVE"]);

    // "latest" of a component the account does not have: refused before any deployment.
    let before = state(&aws).await;
    let missing = components_file(
        dir.path(),
        r#"{"com.example.Nope": {"componentVersion": "latest"}}"#,
    );
    let req = deploy::DeployRequest {
        thing_group: "Fleet",
        components: &missing,
        name: None,
        wait: None,
    };
    let err = deploy::run(&aws, &req, |e| panic!("nothing may happen, got {e:?}"))
        .await
        .unwrap_err();
    common::assert_one_line(
        err.message(),
        &[
            "component com.example.Nope: \"latest\" found no versions",
            "arn:aws:greengrass:eu-west-1:123456789012:components:com.example.Nope",
        ],
    );
    assert_eq!(state(&aws).await, before);
}
