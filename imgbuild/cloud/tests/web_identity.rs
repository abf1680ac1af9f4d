//! Web identity (what GitHub OIDC uses): `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` through the
//! standard chain reach the emulator (moto's STS accepts any token). This file holds one test
//! because it sets process-wide environment variables.

mod common;

use common::{Moto, ACCOUNT, REGION};
use imgbuild_cloud::objects::put_small_object;
use imgbuild_cloud::{Aws, S3Location};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_token_file_and_role_arn_reach_the_endpoint() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmZsZWV0In0.c2ln",
    )
    .unwrap();
    let role = format!("arn:aws:iam::{ACCOUNT}:role/imgbuild-ci");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("AWS_WEB_IDENTITY_TOKEN_FILE", &token);
    std::env::set_var("AWS_ROLE_ARN", &role);
    std::env::set_var("AWS_ROLE_SESSION_NAME", "build-42");
    std::env::set_var("AWS_ENDPOINT_URL", &moto.endpoint);
    std::env::set_var("AWS_REGION", REGION);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("no-config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        dir.path().join("no-credentials"),
    );

    let aws = Aws::from_env().await.unwrap();
    assert_eq!(aws.region(), REGION);
    let who = aws.caller_identity().await.unwrap();
    assert_eq!(who.account, ACCOUNT);
    assert_eq!(
        who.arn,
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/imgbuild-ci/build-42")
    );

    // The assumed-role credentials work for the other services too.
    moto.bucket(&aws, "oidc-bucket").await;
    let loc = S3Location::new("oidc-bucket", "x").unwrap();
    put_small_object(&aws, &loc, "hello.txt", b"hi".to_vec())
        .await
        .unwrap();
}
