//! Test harness: a private moto server per test (`imgbuild_testkit::moto`) plus SDK clients
//! aimed at it.
#![allow(dead_code)]

use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_s3::config::Credentials;
use imgbuild_cloud::Aws;

/// The region every test uses.
pub const REGION: &str = "eu-west-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// A running moto server (see `imgbuild_testkit::moto`) with SDK-side helpers.
pub struct Moto(imgbuild_testkit::moto::Moto);

impl std::ops::Deref for Moto {
    type Target = imgbuild_testkit::moto::Moto;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Moto {
    /// Starts a server.
    pub fn start() -> Moto {
        Moto(imgbuild_testkit::moto::Moto::start())
    }

    /// Starts a server with extra environment variables (e.g. moto's auth switches).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        Moto(imgbuild_testkit::moto::Moto::start_with_env(env))
    }

    /// A config loader aimed at this server with fixed test credentials.
    pub fn loader(&self) -> ConfigLoader {
        self.loader_with_keys("testing", "testing")
    }

    /// A config loader aimed at this server with the given access key pair.
    pub fn loader_with_keys(&self, key_id: &str, secret: &str) -> ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                key_id,
                secret,
                None,
                None,
                "imgbuild-tests",
            ))
    }

    /// Clients for this server.
    pub async fn aws(&self) -> Aws {
        Aws::from_loader(self.loader()).await.expect("clients")
    }

    /// Creates a bucket in the test region.
    pub async fn bucket(&self, aws: &Aws, name: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        aws.s3
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .expect("create bucket");
    }

    /// Seeds a Greengrass core device (a device registers itself on AWS; the shim has a route).
    pub fn seed_core_device(&self, thing: &str) {
        ureq::post(&format!(
            "{}/_shim/greengrass/v2/coreDevices/{thing}",
            self.endpoint
        ))
        .send_empty()
        .expect("seed core device");
    }
}

/// Asserts that an error message is a single line naming all of `needles`.
pub fn assert_one_line(message: &str, needles: &[&str]) {
    assert!(!message.contains('\n'), "error is not one line: {message}");
    for needle in needles {
        assert!(
            message.contains(needle),
            "error lacks {needle:?}: {message}"
        );
    }
}
