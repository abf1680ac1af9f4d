//! Wrong credentials, an unreachable endpoint and a missing bucket give one-line errors.

mod common;

use std::net::TcpListener;

use common::{assert_one_line, Moto};
use imgbuild_cloud::claim::ensure_claim;
use imgbuild_cloud::upload::{upload_files, UploadOptions};
use imgbuild_cloud::{Aws, CloudError, S3Location};

/// The error of uploading a small file to `to` (an `s3://` URL), which must fail.
async fn upload_error(aws: &Aws, to: &str) -> CloudError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.img");
    std::fs::write(&path, b"data").unwrap();
    let to: S3Location = to.parse().unwrap();
    let options = UploadOptions {
        progress: imgbuild_progress::Reporter::none(),
        ..UploadOptions::default()
    };
    upload_files(aws, &[path], &to, &options).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_in_one_line() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let err = upload_error(&aws, "s3://no-such-bucket/x/").await;
    assert_one_line(
        err.message(),
        &[
            "no-such-bucket",
            "does not exist",
            "NoSuchBucket",
            "create it",
        ],
    );
    // the service's code stays readable for callers (the variant says it is an AWS failure)
    assert_eq!(err.aws_code(), Some("NoSuchBucket"), "{err:?}");
    assert_eq!(err.exit_code(), 1);
    let to: S3Location = "s3://no-such-bucket/x/".parse().unwrap();
    let err = ensure_claim(&aws, &to, "P", "T").await.unwrap_err();
    assert_one_line(err.message(), &["no-such-bucket", "does not exist"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_one_line() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .region(aws_config::Region::new(common::REGION))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "k", "s", None, None, "test",
        ));
    let aws = Aws::from_loader(loader).await.unwrap();
    let err = upload_error(&aws, "s3://images/").await;
    assert_one_line(
        err.message(),
        &["images", "cannot reach the endpoint", "AWS_ENDPOINT_URL"],
    );
    assert!(
        matches!(&err, imgbuild_cloud::CloudError::Aws { code: None, .. }),
        "{err:?}"
    );
    let err = aws.caller_identity().await.unwrap_err();
    assert_one_line(
        err.message(),
        &["STS GetCallerIdentity", "cannot reach the endpoint"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_credentials_are_one_line_with_the_service_code_and_a_hint() {
    // With INITIAL_NO_AUTH_ACTION_COUNT=0 moto authenticates every request against its IAM.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let aws = Aws::from_loader(moto.loader_with_keys("AKIAUNKNOWNKEY000000", "wrong"))
        .await
        .unwrap();
    let err = upload_error(&aws, "s3://images/").await;
    assert_one_line(
        err.message(),
        &[
            "S3 bucket images",
            "InvalidAccessKeyId",
            "check the AWS credentials",
        ],
    );
    assert_eq!(err.aws_code(), Some("InvalidAccessKeyId"), "{err:?}");
    let err = aws.caller_identity().await.unwrap_err();
    assert_one_line(
        err.message(),
        &[
            "STS GetCallerIdentity",
            "InvalidClientTokenId",
            "check the AWS credentials",
        ],
    );
}
