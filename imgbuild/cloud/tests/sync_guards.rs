//! `devices sync` guards and resumption, and `devices ls`, on moto + the shim: refusals leave
//! the account exactly as it was (full state compared), a dynamic thing group is refused, an
//! interrupted sync finishes on rerun.

mod common;
mod opskit;

use common::Moto;
use imgbuild_cloud::allowlist::Allowlist;
use imgbuild_cloud::devices::{
    apply_sync, approve, devices_table, list_devices, plan_sync, sync, Approval, Guards, SyncArgs,
    SyncOutcome, SyncRequest, REMOVAL_ATTRIBUTE, REMOVAL_CERTS_ATTRIBUTE,
};
use imgbuild_cloud::Aws;
use imgbuild_cloud::{CloudError, Result};
use opskit::{
    assert_unchanged, device, device_policy, group, shim_post, state, thing, DEVICE_POLICY,
};

/// Group "Fleet": SN1, SN2 (listed), SN3, SN4, SN5 (not listed; SN3 a core device);
/// "Other": Outside1 (a core device). Returns SN3's certificate ARN.
async fn seed(moto: &Moto, aws: &Aws) -> String {
    group(aws, "Fleet").await;
    group(aws, "Other").await;
    device_policy(aws).await;
    device(moto, aws, "SN1", Some("Fleet"), true).await;
    device(moto, aws, "SN2", Some("Fleet"), false).await;
    let sn3 = device(moto, aws, "SN3", Some("Fleet"), true).await;
    device(moto, aws, "SN4", Some("Fleet"), false).await;
    device(moto, aws, "SN5", Some("Fleet"), false).await;
    device(moto, aws, "Outside1", Some("Other"), true).await;
    sn3
}

/// `devices sync` as the CLI runs it, with no operator to confirm (a confirmation fails).
async fn run_sync(aws: &Aws, args: SyncArgs<'_>) -> Result<SyncOutcome> {
    let no_operator = |_: &_| Err(CloudError::input("test: nobody to confirm"));
    sync(aws, &args, |_| {}, no_operator).await
}

/// `devices sync --thing-group Fleet --device-policy DEVICE_POLICY` of `allowlist`.
fn sync_args(allowlist: &std::path::Path, max_removals: usize, yes: bool) -> SyncArgs<'_> {
    SyncArgs {
        allowlist,
        request: request(),
        dry_run: false,
        guards: Guards { max_removals, yes },
    }
}

fn request() -> SyncRequest<'static> {
    SyncRequest {
        thing_group: "Fleet",
        thing_prefix: "",
        device_policy: Some(DEVICE_POLICY),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_allowlists_and_too_many_removals_are_refused_leaving_the_account_unchanged() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    seed(&moto, &aws).await;
    let before = state(&aws).await;
    let dir = tempfile::tempdir().unwrap();

    for (name, text) in [
        ("empty.txt", ""),
        ("comments.txt", "# all devices\n\n   # none yet\n\t\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = run_sync(&aws, sync_args(&path, 100, true))
            .await
            .unwrap_err();
        common::assert_one_line(
            err.message(),
            &[name, "lists no serial numbers", "thing group Fleet"],
        );
        assert_unchanged(&aws, &before, name).await;
    }

    // SN1 and SN2 listed: SN3, SN4, SN5 would go, one more than allowed.
    let list = dir.path().join("allowlist.txt");
    std::fs::write(&list, "SN1\nSN2\n").unwrap();
    let err = run_sync(&aws, sync_args(&list, 2, true)).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &[
            "removes 3 things from thing group Fleet",
            "more than --max-removals 2",
            "nothing was changed",
            "--max-removals 3 --yes",
        ],
    );
    assert_eq!(err.exit_code(), 1);
    assert_unchanged(&aws, &before, "--max-removals refusal").await;

    // Within the limit but without --yes: the guard asks (the CLI prompts only on a terminal,
    // otherwise refuses; the binary's test covers that path with stdin closed).
    let allowlist = Allowlist::read(&list).unwrap();
    let plan = plan_sync(&aws, &allowlist, &request()).await.unwrap();
    assert_eq!(
        approve(
            &plan,
            Guards {
                max_removals: 5,
                yes: false
            }
        )
        .unwrap(),
        Approval::Ask
    );
    assert_eq!(
        approve(
            &plan,
            Guards {
                max_removals: 3,
                yes: true
            }
        )
        .unwrap(),
        Approval::Proceed
    );
    // sync() hands such a plan to its confirmation; a refusal there changes nothing.
    let err = run_sync(&aws, sync_args(&list, 5, false))
        .await
        .unwrap_err();
    assert_eq!(err.message(), "test: nobody to confirm");
    assert_unchanged(&aws, &before, "a refused confirmation").await;

    // With the limit raised and --yes, the same plan runs.
    let done = run_sync(&aws, sync_args(&list, 3, true)).await.unwrap();
    assert!(
        matches!(&done, SyncOutcome::Applied(r) if r.things_deleted == 3),
        "{done:?}"
    );
    let after = state(&aws).await;
    assert_eq!(after.groups["Fleet"], ["SN1", "SN2"]);
    assert!(!after.things.contains_key("SN3") && !after.core_devices.contains_key("SN3"));
    assert_eq!(after.things["Outside1"], before.things["Outside1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_thing_group_is_refused() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    device_policy(&aws).await;
    aws.iot
        .create_dynamic_thing_group()
        .thing_group_name("Dyn")
        .query_string("thingName:SN*")
        .send()
        .await
        .unwrap();
    device(&moto, &aws, "SN1", None, true).await;
    device(&moto, &aws, "SN2", None, false).await;
    // The emulated group behaves like AWS's: described with its query, members from the
    // query, no membership changes by hand.
    let described = aws
        .iot
        .describe_thing_group()
        .thing_group_name("Dyn")
        .send()
        .await
        .unwrap();
    assert_eq!(described.query_string(), Some("thingName:SN*"));
    assert_eq!(described.status().map(|s| s.as_str()), Some("ACTIVE"));
    let members = aws
        .iot
        .list_things_in_thing_group()
        .thing_group_name("Dyn")
        .send()
        .await
        .unwrap();
    assert_eq!(members.things(), ["SN1", "SN2"]);
    let refused = aws
        .iot
        .remove_thing_from_thing_group()
        .thing_group_name("Dyn")
        .thing_name("SN1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        refused.as_service_error().and_then(|e| e.meta().code()),
        Some("InvalidRequestException")
    );

    let before = state(&aws).await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("allowlist.txt");
    std::fs::write(&list, "SN1\n").unwrap();
    let args = SyncArgs {
        allowlist: &list,
        request: SyncRequest {
            thing_group: "Dyn",
            thing_prefix: "",
            device_policy: None,
        },
        dry_run: false,
        guards: Guards {
            max_removals: 5,
            yes: true,
        },
    };
    let err = run_sync(&aws, args).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &["thing group Dyn is a dynamic thing group", "thingName:SN*"],
    );
    assert_unchanged(&aws, &before, "a refused dynamic group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_sync_resumes_on_rerun() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let sn3_cert = seed(&moto, &aws).await;
    let allowlist = Allowlist::parse("SN1\nSN2\nSN4\nSN5\n", "allowlist.txt").unwrap();

    // The operator's role lacks iot:DeleteCertificate: the first removal stops there.
    shim_post(
        &moto,
        "/_shim/faults",
        r#"{"method": "DELETE", "path": "^/certificates/", "times": 1, "status": 403,
            "code": "AccessDeniedException"}"#,
    );
    let plan = plan_sync(&aws, &allowlist, &request()).await.unwrap();
    assert_eq!(plan.remove.len(), 1);
    let text = plan.to_string();
    assert!(
        text.contains("remove   SN3: remove from group; detach"),
        "the thing leaves the group first: {text}"
    );
    let err = apply_sync(&aws, &plan).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &["IoT DeleteCertificate", "AccessDeniedException"],
    );

    // Half done: out of the group, detached, revoked, marked with its certificate.
    let mid = state(&aws).await;
    let (groups, principals, attributes) = &mid.things["SN3"];
    assert!(groups.is_empty() && principals.is_empty());
    assert_eq!(attributes[REMOVAL_ATTRIBUTE], "Fleet");
    assert_eq!(
        attributes[REMOVAL_CERTS_ATTRIBUTE],
        sn3_cert.rsplit('/').next().unwrap()
    );
    assert_eq!(mid.certificates[&sn3_cert], ("REVOKED".to_owned(), vec![]));
    assert!(mid.core_devices.contains_key("SN3"));

    // The rerun finds it by its mark and finishes the job.
    let again = plan_sync(&aws, &allowlist, &request()).await.unwrap();
    assert_eq!(again.remove.len(), 1, "{again}");
    let r = &again.remove[0];
    assert!(r.marked && !r.in_group);
    assert_eq!(r.principals.len(), 1);
    assert!(!r.principals[0].attached && r.principals[0].revoked);
    assert!(again.to_string().contains("resume an interrupted removal"));
    let done = apply_sync(&aws, &again).await.unwrap();
    assert_eq!(
        (
            done.things_deleted,
            done.certificates_deleted,
            done.core_devices_deleted
        ),
        (1, 1, 1)
    );
    let end = state(&aws).await;
    assert!(!end.things.contains_key("SN3"));
    assert!(!end.certificates.contains_key(&sn3_cert));
    assert!(!end.core_devices.contains_key("SN3"));
    assert_eq!(end.groups["Fleet"], ["SN1", "SN2", "SN4", "SN5"]);
    assert!(plan_sync(&aws, &allowlist, &request())
        .await
        .unwrap()
        .is_noop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_listed_again_after_an_interrupted_removal_is_restored() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    seed(&moto, &aws).await;
    // Interrupted right after leaving the group (DetachThingPrincipal refused).
    shim_post(
        &moto,
        "/_shim/faults",
        r#"{"method": "DELETE", "path": "^/things/SN5/principals", "times": 1}"#,
    );
    let unlisted = Allowlist::parse("SN1\nSN2\nSN3\nSN4\n", "a").unwrap();
    let plan = plan_sync(&aws, &unlisted, &request()).await.unwrap();
    apply_sync(&aws, &plan).await.unwrap_err();
    let mid = state(&aws).await;
    assert!(mid.things["SN5"].0.is_empty(), "SN5 left the group");

    // The operator notices and lists SN5 again: it goes back into the group, unmarked.
    let listed = Allowlist::parse("SN1\nSN2\nSN3\nSN4\nSN5\n", "a").unwrap();
    let plan = plan_sync(&aws, &listed, &request()).await.unwrap();
    assert_eq!(plan.unmark, ["SN5"]);
    assert_eq!(plan.add_to_group, ["SN5"]);
    assert!(plan.remove.is_empty());
    apply_sync(&aws, &plan).await.unwrap();
    let end = state(&aws).await;
    assert_eq!(end.things["SN5"].0, ["Fleet"]);
    assert!(
        end.things["SN5"].2.is_empty(),
        "mark cleared: {:?}",
        end.things["SN5"].2
    );
    assert_eq!(end.things["SN5"].1, mid.things["SN5"].1, "certificate kept");
    assert!(plan_sync(&aws, &listed, &request())
        .await
        .unwrap()
        .is_noop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_ls_shows_serial_certificate_and_core_device_state() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    group(&aws, "Fleet").await;
    device_policy(&aws).await;
    let c1 = device(&moto, &aws, "gg-SN1", Some("Fleet"), true).await;
    let c2 = device(&moto, &aws, "gg-SN2", Some("Fleet"), false).await;
    device(&moto, &aws, "Elsewhere", None, true).await;
    let id2 = c2.rsplit('/').next().unwrap().to_owned();
    aws.iot
        .update_certificate()
        .certificate_id(&id2)
        .new_status(aws_sdk_iot::types::CertificateStatus::Inactive)
        .send()
        .await
        .unwrap();
    thing(&aws, "odd", Some("Fleet")).await;

    let rows = list_devices(&aws, "Fleet", "gg-").await.unwrap();
    let things: Vec<&str> = rows.iter().map(|r| r.thing.as_str()).collect();
    assert_eq!(things, ["gg-SN1", "gg-SN2", "odd"]);
    assert_eq!(rows[0].serial.as_deref(), Some("SN1"));
    assert_eq!(rows[0].certificates.len(), 1);
    assert_eq!(rows[0].certificates[0].id, c1.rsplit('/').next().unwrap());
    assert_eq!(rows[0].certificates[0].status.as_deref(), Some("ACTIVE"));
    assert_eq!(rows[0].core_device_status.as_deref(), Some("HEALTHY"));
    let seen = rows[0].last_status_update.as_deref().unwrap();
    assert!(
        seen.len() >= 20 && seen.ends_with('Z') && seen.contains('T'),
        "{seen}"
    );
    assert_eq!(rows[1].certificates[0].status.as_deref(), Some("INACTIVE"));
    assert_eq!(rows[1].core_device_status, None);
    assert_eq!(rows[1].last_status_update, None);
    assert_eq!(rows[2].serial, None, "no prefix: no serial");
    assert!(rows[2].certificates.is_empty());

    let table = devices_table(&rows);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("THING") && lines[0].contains("LAST STATUS UPDATE"));
    assert!(
        lines[1].contains("SN1") && lines[1].contains("ACTIVE") && lines[1].contains("HEALTHY")
    );
    assert!(lines[2].contains("INACTIVE") && lines[2].contains("none"));
    assert!(lines[3].starts_with("odd"));

    let json = serde_json::to_value(&rows).unwrap();
    assert_eq!(json[0]["thing"], "gg-SN1");
    assert_eq!(json[0]["serial"], "SN1");
    assert_eq!(json[0]["certificates"][0]["status"], "ACTIVE");
    assert_eq!(json[0]["core_device_status"], "HEALTHY");
    assert_eq!(json[1]["core_device_status"], serde_json::Value::Null);

    let err = list_devices(&aws, "Nope", "").await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &["DescribeThingGroup Nope", "ResourceNotFound"],
    );
}
