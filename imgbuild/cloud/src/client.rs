//! The AWS clients, configured from the standard credential and region chain.

use aws_config::{BehaviorVersion, ConfigLoader, SdkConfig};
use aws_sdk_s3::config::RequestChecksumCalculation;

use crate::error::{bail, Context, Result, SdkContext};

/// The AWS service clients imgbuild uses, sharing one configuration.
///
/// Credentials come from the standard chain: environment variables, shared config/credential
/// profiles (`AWS_PROFILE`), web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, which
/// GitHub OIDC uses), container and instance metadata. `AWS_ENDPOINT_URL` (and the
/// per-service `AWS_ENDPOINT_URL_<SERVICE>`) is honoured; with an endpoint URL set, S3 uses
/// path-style addressing, which emulators need.
#[derive(Clone, Debug)]
pub struct Aws {
    /// Amazon S3.
    pub s3: aws_sdk_s3::Client,
    /// AWS IoT Core (control plane).
    pub iot: aws_sdk_iot::Client,
    /// AWS IoT Greengrass v2.
    pub greengrass: aws_sdk_greengrassv2::Client,
    /// AWS STS.
    pub sts: aws_sdk_sts::Client,
    /// AWS IAM (`fleet init|destroy`).
    pub iam: aws_sdk_iam::Client,
    /// AWS Lambda (the allowlist pre-provisioning hook).
    pub lambda: aws_sdk_lambda::Client,
    region: String,
}

impl Aws {
    /// Loads the configuration from the environment and profiles (the standard chain).
    pub async fn from_env() -> Result<Aws> {
        Aws::from_loader(aws_config::defaults(BehaviorVersion::latest())).await
    }

    /// Loads the configuration from a prepared loader (tests set endpoint, region and credentials here).
    pub async fn from_loader(loader: ConfigLoader) -> Result<Aws> {
        Aws::from_config(&loader.load().await)
    }

    /// Builds the clients from a loaded configuration; fails when no region is configured.
    pub fn from_config(config: &SdkConfig) -> Result<Aws> {
        let Some(region) = config.region() else {
            bail!("no AWS region configured: set AWS_REGION or a region in the AWS profile");
        };
        // Part and object integrity is checked against the MD5 ETags S3 returns, so the SDK's
        // optional CRC checksums (which older S3-compatible servers reject) are only sent when
        // an operation requires them.
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(config.endpoint_url().is_some())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        Ok(Aws {
            s3: aws_sdk_s3::Client::from_conf(s3_config),
            iot: aws_sdk_iot::Client::new(config),
            greengrass: aws_sdk_greengrassv2::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            lambda: aws_sdk_lambda::Client::new(config),
            region: region.to_string(),
        })
    }

    /// The AWS Region of every client.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The AWS partition of the region (`aws`, `aws-cn`, `aws-us-gov`, …), for ARNs.
    pub fn partition(&self) -> &'static str {
        crate::fleet::docs::partition(&self.region)
    }

    /// The caller's account id and ARN (STS GetCallerIdentity): who the credentials belong to.
    pub async fn caller_identity(&self) -> Result<CallerIdentity> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .aws_context(|| "STS GetCallerIdentity")?;
        Ok(CallerIdentity {
            account: out.account.unwrap_or_default(),
            arn: out.arn.unwrap_or_default(),
        })
    }
}

/// Who the credentials belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The 12-digit account id.
    pub account: String,
    /// The user or assumed-role ARN.
    pub arn: String,
}

/// Runs a future to completion on a new multi-threaded tokio runtime, so that a synchronous
/// caller (the CLI) can use this crate's async API.
pub fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context(|| "starting the async runtime")?;
    runtime.block_on(future)
}
