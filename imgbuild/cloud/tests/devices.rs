//! `imgbuild cloud devices sync` on a seeded moto account.

mod common;
mod opskit;

use common::Moto;
use imgbuild_cloud::allowlist::Allowlist;
use imgbuild_cloud::devices::{
    self, apply_sync, plan_sync, Guards, SyncArgs, SyncOutcome, SyncRequest,
};
use imgbuild_cloud::{Aws, CloudError};
use opskit::{
    assert_unchanged, device_policy, device_with_policy as device, group, state, thing,
    DEVICE_POLICY,
};

/// The fleet: group "Fleet" holds SN1, SN2 (listed), SN3, SN4 (not listed); SN5 (listed) is
/// provisioned but outside the group; Outside1 and Shared are elsewhere; SN4 shares its
/// certificate with Shared.
struct Fleet {
    cert_sn2: String,
    cert_sn3: String,
    cert_shared: String,
}

async fn seed(moto: &Moto, aws: &Aws) -> Fleet {
    group(aws, "Fleet").await;
    group(aws, "Other").await;
    device_policy(aws).await;
    device(moto, aws, "SN1", Some("Fleet"), true, true).await;
    let cert_sn2 = device(moto, aws, "SN2", Some("Fleet"), false, false).await;
    let cert_sn3 = device(moto, aws, "SN3", Some("Fleet"), true, true).await;
    device(moto, aws, "SN5", None, true, false).await;
    device(moto, aws, "Outside1", Some("Other"), true, true).await;
    let cert_shared = device(moto, aws, "Shared", None, true, false).await;
    thing(aws, "SN4", Some("Fleet")).await;
    aws.iot
        .attach_thing_principal()
        .thing_name("SN4")
        .principal(&cert_shared)
        .send()
        .await
        .unwrap();
    Fleet {
        cert_sn2,
        cert_sn3,
        cert_shared,
    }
}

fn request() -> SyncRequest<'static> {
    SyncRequest {
        thing_group: "Fleet",
        thing_prefix: "",
        device_policy: Some(DEVICE_POLICY),
    }
}

const ALLOWLIST: &str = "# fleet\nSN1\nSN2 # replaced board\n\nSN5\nSN9\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_removes_unlisted_group_members_with_their_certificates_and_nothing_else() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let fleet = seed(&moto, &aws).await;
    let before = state(&aws).await;
    let allowlist = Allowlist::parse(ALLOWLIST, "allowlist.txt").unwrap();

    let plan = plan_sync(&aws, &allowlist, &request()).await.unwrap();
    assert_eq!(plan.things_in_group, 4);
    assert_eq!(plan.keep, ["SN1"]);
    assert_eq!(plan.add_to_group, ["SN5"]);
    assert_eq!(
        plan.attach_policy,
        [("SN2".to_owned(), fleet.cert_sn2.clone())]
    );
    let removed: Vec<&str> = plan.remove.iter().map(|r| r.thing.as_str()).collect();
    assert_eq!(removed, ["SN3", "SN4"]);
    assert_eq!(plan.pending, ["SN9"]);
    let text = plan.to_string();
    assert!(
        text.contains("remove   SN3: remove from group; detach"),
        "{text}"
    );
    assert!(text.contains("pending  SN9"), "{text}");
    assert_unchanged(&aws, &before, "planning").await;

    let report = apply_sync(&aws, &plan).await.unwrap();
    assert_eq!(
        (
            report.things_deleted,
            report.certificates_deleted,
            report.core_devices_deleted
        ),
        (2, 1, 1)
    );
    let after = state(&aws).await;

    // Removed: SN3 with its certificate and core device; SN4 (its certificate is Shared's).
    assert!(!after.things.contains_key("SN3") && !after.things.contains_key("SN4"));
    assert!(!after.certificates.contains_key(&fleet.cert_sn3));
    assert!(!after.core_devices.contains_key("SN3"));
    // Listed ones keep everything; SN2 gained the policy, SN5 the group.
    assert_eq!(after.things["SN1"], before.things["SN1"]);
    assert!(after.core_devices.contains_key("SN1"));
    assert_eq!(
        after.certificates[&fleet.cert_sn2],
        ("ACTIVE".to_owned(), vec![DEVICE_POLICY.to_owned()])
    );
    assert_eq!(after.things["SN5"].0, ["Fleet"]);
    assert_eq!(after.things["SN5"].1, before.things["SN5"].1);
    // Outside the group: untouched, including the certificate SN4 shared.
    assert_eq!(after.things["Outside1"], before.things["Outside1"]);
    assert_eq!(after.things["Shared"], before.things["Shared"]);
    assert_eq!(
        after.certificates[&fleet.cert_shared],
        before.certificates[&fleet.cert_shared]
    );
    assert!(after.core_devices.contains_key("Outside1"));
    assert_eq!(after.policies, before.policies);

    // A second sync finds nothing to do.
    let again = plan_sync(&aws, &allowlist, &request()).await.unwrap();
    assert!(again.is_noop(), "{again}");
    assert_eq!(again.keep, ["SN1", "SN2", "SN5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_a_malformed_allowlist_change_nothing() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    seed(&moto, &aws).await;
    let before = state(&aws).await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("allowlist.txt");
    std::fs::write(&good, ALLOWLIST).unwrap();
    let sync = |allowlist: std::path::PathBuf, dry_run: bool| {
        let aws = &aws;
        async move {
            let args = SyncArgs {
                allowlist: &allowlist,
                request: SyncRequest {
                    thing_group: "Fleet",
                    thing_prefix: "",
                    device_policy: Some(DEVICE_POLICY),
                },
                dry_run,
                guards: Guards {
                    max_removals: 5,
                    yes: true,
                },
            };
            let mut shown = None;
            let no_operator = |_: &_| Err(CloudError::input("test: nobody to confirm"));
            devices::sync(aws, &args, |plan| shown = Some(plan.clone()), no_operator)
                .await
                .map(|outcome| (outcome, shown))
        }
    };

    let (outcome, shown) = sync(good.clone(), true).await.unwrap();
    assert_eq!(outcome, SyncOutcome::Unchanged);
    assert!(
        shown.is_some_and(|plan| !plan.is_noop()),
        "the dry run showed the plan it did not carry out"
    );
    assert_unchanged(&aws, &before, "dry-run").await;

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "SN1\nSN2\n# ok\nSN3;rm\nSN1\n").unwrap();
    let err = sync(bad, false).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &[
            "bad.txt: invalid allowlist",
            "line 4: bad character ';'",
            "line 5: duplicate serial \"SN1\" (first on line 1)",
        ],
    );
    assert_unchanged(&aws, &before, "a rejected allowlist").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_prefix_maps_serials_to_thing_names() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    group(&aws, "Fleet").await;
    device(&moto, &aws, "gg-SN1", Some("Fleet"), false, false).await;
    device(&moto, &aws, "SN1", Some("Fleet"), false, false).await;
    let allowlist = Allowlist::parse("SN1\n", "a").unwrap();
    let req = SyncRequest {
        thing_prefix: "gg-",
        device_policy: None,
        ..request()
    };
    let plan = plan_sync(&aws, &allowlist, &req).await.unwrap();
    assert_eq!(plan.keep, ["gg-SN1"]);
    let removed: Vec<&str> = plan.remove.iter().map(|r| r.thing.as_str()).collect();
    assert_eq!(
        removed,
        ["SN1"],
        "a name without the prefix is not the listed device"
    );
}
