//! `imgbuild cloud provisioning publish|fetch` and `imgbuild cloud deploy` against moto + shim.

mod common;

use common::{Moto, ACCOUNT, REGION};
use imgbuild_cloud::deploy::{deploy, read_components};
use imgbuild_cloud::provisioning::{fetch, publish, ProvisioningParams, PublishRequest};
use imgbuild_cloud::{Aws, S3Location};

/// A role alias, a provisioning template and a thing group, as an account owner sets them up.
async fn seed(aws: &Aws) {
    let role = format!("arn:aws:iam::{ACCOUNT}:role/GreengrassTokenExchange");
    aws.iot
        .create_role_alias()
        .role_alias("GGAlias")
        .role_arn(&role)
        .send()
        .await
        .unwrap();
    aws.iot
        .create_provisioning_template()
        .template_name("FleetTemplate")
        .template_body(r#"{"Parameters":{"SerialNumber":{"Type":"String"}},"Resources":{}}"#)
        .provisioning_role_arn(format!("arn:aws:iam::{ACCOUNT}:role/Provisioning"))
        .enabled(true)
        .send()
        .await
        .unwrap();
    aws.iot
        .create_thing_group()
        .thing_group_name("Fleet")
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_endpoints_and_names_locally_and_to_the_bucket_with_the_allowlist() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "fleet-config").await;
    seed(&aws).await;
    let dir = tempfile::tempdir().unwrap();
    let allowlist = dir.path().join("allowlist.txt");
    std::fs::write(&allowlist, "# fleet\nSN1\nSN2\n").unwrap();
    let out = dir.path().join("params.json");
    let req = PublishRequest {
        location: S3Location::new("fleet-config", "prov").unwrap(),
        role_alias: "GGAlias",
        template: "FleetTemplate",
        thing_group: "Fleet",
        allowlist: Some(&allowlist),
        out: &out,
    };
    let params = publish(&aws, &req).await.unwrap();

    assert_eq!(params.region, REGION);
    assert!(
        params
            .data_endpoint
            .ends_with(&format!("-ats.iot.{REGION}.amazonaws.com")),
        "{params:?}"
    );
    assert!(!params.credential_endpoint.is_empty());
    assert_eq!(
        (
            params.role_alias.as_str(),
            params.provisioning_template.as_str()
        ),
        ("GGAlias", "FleetTemplate")
    );
    assert_eq!(params.thing_group, "Fleet");
    let local: ProvisioningParams = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(local, params);
    let remote = aws
        .s3
        .get_object()
        .bucket("fleet-config")
        .key("prov/provisioning.json")
        .send()
        .await
        .unwrap();
    let remote: ProvisioningParams =
        serde_json::from_slice(&remote.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(remote, params);
    let list = aws
        .s3
        .get_object()
        .bucket("fleet-config")
        .key("prov/allowlist.txt")
        .send()
        .await
        .unwrap();
    assert_eq!(
        list.body.collect().await.unwrap().into_bytes().as_ref(),
        b"# fleet\nSN1\nSN2\n"
    );

    // fetch gets the same parameters for a build.
    let fetched_path = dir.path().join("fetched.json");
    let fetched = fetch(&aws, &req.location, &fetched_path).await.unwrap();
    assert_eq!(fetched, params);
    assert_eq!(
        std::fs::read(&fetched_path).unwrap(),
        std::fs::read(&out).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_names_a_missing_template_or_a_bad_allowlist_and_writes_nothing() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "fleet-config").await;
    seed(&aws).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("params.json");
    let mut req = PublishRequest {
        location: S3Location::new("fleet-config", "").unwrap(),
        role_alias: "GGAlias",
        template: "NoSuchTemplate",
        thing_group: "Fleet",
        allowlist: None,
        out: &out,
    };
    let err = publish(&aws, &req).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &["provisioning template \"NoSuchTemplate\" does not exist"],
    );

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "SN1\nSN 2\nSN1\n").unwrap();
    req.template = "FleetTemplate";
    req.allowlist = Some(&bad);
    let err = publish(&aws, &req).await.unwrap_err();
    common::assert_one_line(err.message(), &["bad.txt", "line 2:", "line 3: duplicate"]);
    assert!(!out.exists());
    let objects = aws
        .s3
        .list_objects_v2()
        .bucket("fleet-config")
        .send()
        .await
        .unwrap();
    assert!(objects.contents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_creates_a_greengrass_deployment_for_the_group_with_the_components() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    seed(&aws).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("components.json");
    std::fs::write(
        &path,
        r#"{"com.example.Hello": {"componentVersion": "1.0.0", "configurationUpdate": {"merge": "{\"msg\":\"hi\"}"}},
            "aws.greengrass.Cli": {"componentVersion": "2.12.0"}}"#,
    )
    .unwrap();
    let components = read_components(&path).unwrap();
    let d = deploy(&aws, "Fleet", &components, None).await.unwrap();
    assert_eq!(
        d.target_arn,
        format!("arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/Fleet")
    );

    let got = aws
        .greengrass
        .get_deployment()
        .deployment_id(&d.deployment_id)
        .send()
        .await
        .unwrap();
    assert_eq!(got.target_arn(), Some(d.target_arn.as_str()));
    assert_eq!(got.deployment_name(), Some("imgbuild-Fleet"));
    let deployed = got.components().unwrap();
    assert_eq!(deployed.len(), 2);
    assert_eq!(deployed["aws.greengrass.Cli"].component_version(), "2.12.0");
    let hello = &deployed["com.example.Hello"];
    assert_eq!(
        hello.configuration_update().and_then(|u| u.merge()),
        Some("{\"msg\":\"hi\"}")
    );

    let err = deploy(&aws, "NoGroup", &components, None)
        .await
        .unwrap_err();
    common::assert_one_line(
        err.message(),
        &["DescribeThingGroup NoGroup", "ResourceNotFoundException"],
    );
}
