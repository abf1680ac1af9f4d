//! `imgbuild cloud fleet init|destroy`: everything fleet provisioning by claim needs, from an
//! empty account, following AWS's "Set up AWS IoT fleet provisioning for Greengrass core
//! devices" (see [`docs`] for what each resource allows and why).
//!
//! `init` first checks every resource ([`plan`]): a missing one is created, one that is there
//! and matches is left alone, one that is there and differs is reported as drift and **not**
//! rewritten (the operator decides). The plan is printed before anything changes; `--dry-run`
//! stops there. A second `init` finds everything in place and changes nothing.
//! `destroy` removes what `init` made, refusing while things remain in the group unless forced.

pub mod docs;
pub mod hook;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_iot::types::ProvisioningHook;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
    VersioningConfiguration,
};
use serde_json::Value;

use crate::claim::{self, ClaimState};
use crate::client::Aws;
use crate::error::{aws_bail, bail, error_code, CloudError, Context, Result, SdkContext};
use crate::location::{check_bucket_name, S3Location};
use crate::objects::{get_small_object, put_small_object};
use crate::provisioning::{self, ProvisioningParams};

pub use docs::FleetSpec;

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not there: `init` creates it.
    Missing,
    /// There and as `init` makes it.
    InPlace,
    /// There but different (the reason): reported, left as it is.
    Drift(String),
}

/// Declares [`Resource`] and its creation order from one list: the order is the order of the
/// variants, so a new resource cannot be declared without its place in `init`.
macro_rules! resources {
    ($($(#[$doc:meta])* $variant:ident,)*) => {
        /// The resources of a fleet, in the order `init` creates them (each after what it refers to).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Resource {
            $($(#[$doc])* $variant,)*
        }

        /// Every resource, the hook's included, in creation order.
        const ALL_RESOURCES: &[Resource] = &[$(Resource::$variant),*];
    };
}

resources! {
    /// The fleet bucket.
    Bucket,
    /// Its public access block (all four settings on).
    BucketPublicAccess,
    /// Its default encryption.
    BucketEncryption,
    /// Its versioning.
    BucketVersioning,
    /// The token exchange role's access policy.
    TokenPolicy,
    /// The token exchange role.
    TokenRole,
    /// The access policy attached to the token exchange role.
    TokenRoleAttachment,
    /// The role alias.
    RoleAlias,
    /// The device IoT policy.
    DevicePolicy,
    /// The thing group.
    ThingGroup,
    /// The provisioning role.
    ProvisioningRole,
    /// AWSIoTThingsRegistration attached to the provisioning role.
    ProvisioningRoleAttachment,
    /// The hook's execution policy.
    HookPolicy,
    /// The hook's execution role.
    HookRole,
    /// The execution policy attached to the hook role.
    HookRoleAttachment,
    /// The hook function.
    HookFunction,
    /// AWS IoT's permission to invoke the hook.
    HookPermission,
    /// The provisioning template (with the hook when there is one).
    Template,
    /// The claim certificate's IoT policy.
    ClaimPolicy,
    /// The claim certificate and key in the bucket.
    ClaimCertificate,
    /// `provisioning/provisioning.json` in the bucket.
    Parameters,
}

impl Resource {
    /// All resources of a fleet with or without the hook, in creation order.
    pub fn all(hook: bool) -> Vec<Resource> {
        ALL_RESOURCES
            .iter()
            .copied()
            .filter(|r| hook || !r.is_hook())
            .collect()
    }

    /// Whether the resource belongs to the allowlist hook (made only with `--allowlist-hook`).
    fn is_hook(self) -> bool {
        use Resource::*;
        matches!(
            self,
            HookPolicy | HookRole | HookRoleAttachment | HookFunction | HookPermission
        )
    }

    /// What the resource is, with its name.
    pub fn label(self, spec: &FleetSpec) -> String {
        use Resource::*;
        let b = &spec.bucket;
        match self {
            Bucket => format!("S3 bucket {b}"),
            BucketPublicAccess => format!("S3 bucket {b} public access block (all four on)"),
            BucketEncryption => format!("S3 bucket {b} default encryption (SSE)"),
            BucketVersioning => format!("S3 bucket {b} versioning"),
            TokenPolicy => format!("IAM policy {}", spec.token_policy()),
            TokenRole => format!("IAM role {} (token exchange)", spec.token_role()),
            TokenRoleAttachment => format!(
                "IAM role {}: policy {} attached",
                spec.token_role(),
                spec.token_policy()
            ),
            RoleAlias => format!("IoT role alias {}", spec.role_alias()),
            DevicePolicy => format!("IoT policy {} (devices)", spec.device_policy()),
            ThingGroup => format!("IoT thing group {}", spec.thing_group()),
            ProvisioningRole => format!("IAM role {} (provisioning)", spec.provisioning_role()),
            ProvisioningRoleAttachment => format!(
                "IAM role {}: AWSIoTThingsRegistration attached",
                spec.provisioning_role()
            ),
            HookPolicy => format!("IAM policy {}", spec.hook_policy()),
            HookRole => format!("IAM role {} (allowlist hook)", spec.hook_role()),
            HookRoleAttachment => format!(
                "IAM role {}: policy {} attached",
                spec.hook_role(),
                spec.hook_policy()
            ),
            HookFunction => format!("Lambda function {} (allowlist hook)", spec.hook_function()),
            HookPermission => format!(
                "Lambda function {}: AWS IoT may invoke it",
                spec.hook_function()
            ),
            Template => {
                if spec.hook {
                    format!(
                        "IoT provisioning template {} (pre-provisioning hook {})",
                        spec.template(),
                        spec.hook_function()
                    )
                } else {
                    format!("IoT provisioning template {}", spec.template())
                }
            }
            ClaimPolicy => format!("IoT policy {} (claim certificate)", spec.claim_policy()),
            ClaimCertificate => format!("claim certificate in s3://{b}/{}", claim::DEFAULT_PREFIX),
            Parameters => format!(
                "provisioning parameters s3://{b}/{}{}",
                provisioning::DEFAULT_PREFIX,
                provisioning::PARAMS_NAME
            ),
        }
    }
}

/// One resource and what its check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The resource.
    pub resource: Resource,
    /// What it is, with its name.
    pub label: String,
    /// What the check found.
    pub status: Status,
}

/// Everything `init` found, before it changes anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The fleet.
    pub spec: FleetSpec,
    /// Each resource, in creation order.
    pub items: Vec<Item>,
    /// The parameters a build needs (endpoints resolved during the check).
    pub params: ProvisioningParams,
}

impl Plan {
    /// Resources to create.
    pub fn missing(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.status == Status::Missing)
    }

    /// Resources that differ from what `init` makes.
    pub fn drifted(&self) -> impl Iterator<Item = &Item> {
        self.items
            .iter()
            .filter(|i| matches!(i.status, Status::Drift(_)))
    }

    /// The error of a plan with drift (`None` without): one line naming each drifted resource.
    pub fn drift_error(&self) -> Option<CloudError> {
        let drifted: Vec<String> = self
            .drifted()
            .map(|i| match &i.status {
                Status::Drift(why) => format!("{}: {why}", i.label),
                _ => unreachable!("drifted() yields drift only"),
            })
            .collect();
        if drifted.is_empty() {
            return None;
        }
        Some(CloudError::input(format!(
            "fleet {}: {} resource(s) differ from what `fleet init` makes and were left as they are: {}; \
             fix or delete them and run `imgbuild cloud fleet init` again (no build configuration was written)",
            self.spec.name,
            drifted.len(),
            drifted.join("; ")
        )))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.spec;
        writeln!(
            f,
            "fleet {} in {} (account {}, partition {}); things are named {}SERIAL",
            s.name,
            s.region,
            s.account,
            s.partition(),
            s.thing_prefix
        )?;
        for item in &self.items {
            match &item.status {
                Status::Missing => writeln!(f, "  create  {}", item.label)?,
                Status::InPlace => writeln!(f, "  ok      {}", item.label)?,
                Status::Drift(why) => writeln!(f, "  DRIFT   {}: {why}", item.label)?,
            }
        }
        write!(
            f,
            "plan: {} to create, {} in place, {} drifted (drift is reported, never rewritten)",
            self.missing().count(),
            self.items
                .iter()
                .filter(|i| i.status == Status::InPlace)
                .count(),
            self.drifted().count()
        )
    }
}

/// Works out the fleet's names: the account from STS, the bucket (default
/// `NAME-fleet-ACCOUNT-REGION`) and the thing prefix (default `NAME-`).
pub async fn resolve_spec(
    aws: &Aws,
    name: &str,
    bucket: Option<&str>,
    thing_prefix: Option<&str>,
    hook: bool,
) -> Result<FleetSpec> {
    docs::check_name(name)?;
    let thing_prefix = thing_prefix.map_or_else(|| format!("{name}-"), str::to_owned);
    docs::check_thing_prefix(&thing_prefix)?;
    let who = aws.caller_identity().await?;
    if who.account.is_empty() {
        aws_bail!("STS GetCallerIdentity: no account id in the answer");
    }
    let bucket = bucket.map_or_else(
        || docs::default_bucket(name, &who.account, aws.region()),
        str::to_owned,
    );
    check_bucket_name(&bucket)?;
    Ok(FleetSpec {
        name: name.to_owned(),
        bucket,
        thing_prefix,
        hook,
        region: aws.region().to_owned(),
        account: who.account,
    })
}

/// Checks every resource of the fleet; changes nothing.
pub async fn plan(aws: &Aws, spec: &FleetSpec) -> Result<Plan> {
    let params = ProvisioningParams {
        region: spec.region.clone(),
        data_endpoint: provisioning::endpoint(aws, "iot:Data-ATS").await?,
        credential_endpoint: provisioning::endpoint(aws, "iot:CredentialProvider").await?,
        role_alias: spec.role_alias(),
        provisioning_template: spec.template(),
        thing_group: spec.thing_group(),
    };
    let mut items: Vec<Item> = Vec::new();
    for resource in Resource::all(spec.hook) {
        let missing = |r: Resource| {
            items
                .iter()
                .any(|i| i.resource == r && i.status == Status::Missing)
        };
        // What depends on a missing resource is missing too (and cannot be asked about).
        let parent = match resource {
            Resource::BucketPublicAccess
            | Resource::BucketEncryption
            | Resource::BucketVersioning
            | Resource::ClaimCertificate
            | Resource::Parameters => Some(Resource::Bucket),
            Resource::TokenRoleAttachment => Some(Resource::TokenRole),
            Resource::ProvisioningRoleAttachment => Some(Resource::ProvisioningRole),
            Resource::HookRoleAttachment => Some(Resource::HookRole),
            Resource::HookPermission => Some(Resource::HookFunction),
            _ => None,
        };
        let status = if parent.is_some_and(missing) {
            Status::Missing
        } else {
            check(aws, spec, resource, &params).await?
        };
        items.push(Item {
            resource,
            label: resource.label(spec),
            status,
        });
    }
    Ok(Plan {
        spec: spec.clone(),
        items,
        params,
    })
}

/// Creates the missing resources of `plan`, in order; returns one line per creation.
/// Drifted resources are left alone.
pub async fn apply(aws: &Aws, plan: &Plan, mut report: impl FnMut(&str)) -> Result<usize> {
    let mut created = 0;
    for item in plan.missing() {
        create(aws, &plan.spec, item.resource, &plan.params)
            .await
            .map_err(|e| {
                e.map_message(|m| {
                    format!(
                        "creating {}: {m} (created before it: {created}; run init again to resume)",
                        item.label
                    )
                })
            })?;
        created += 1;
        report(&format!("created {}", item.label));
    }
    Ok(created)
}

// --- checks ---------------------------------------------------------------------------------

async fn check(
    aws: &Aws,
    spec: &FleetSpec,
    resource: Resource,
    params: &ProvisioningParams,
) -> Result<Status> {
    use Resource::*;
    match resource {
        Bucket => check_bucket(aws, spec).await,
        BucketPublicAccess => check_public_access(aws, &spec.bucket).await,
        BucketEncryption => check_encryption(aws, &spec.bucket).await,
        BucketVersioning => check_versioning(aws, &spec.bucket).await,
        TokenPolicy => {
            check_iam_policy(
                aws,
                &spec.policy_arn(&spec.token_policy()),
                &spec.token_policy_document(),
            )
            .await
        }
        TokenRole => check_role(aws, &spec.token_role(), "credentials.iot.amazonaws.com").await,
        TokenRoleAttachment => {
            check_attachment(
                aws,
                &spec.token_role(),
                &spec.policy_arn(&spec.token_policy()),
            )
            .await
        }
        RoleAlias => check_role_alias(aws, spec).await,
        DevicePolicy => {
            check_iot_policy(aws, &spec.device_policy(), &spec.device_policy_document()).await
        }
        ThingGroup => check_thing_group(aws, &spec.thing_group()).await,
        ProvisioningRole => check_role(aws, &spec.provisioning_role(), "iot.amazonaws.com").await,
        ProvisioningRoleAttachment => {
            check_attachment(
                aws,
                &spec.provisioning_role(),
                &spec.things_registration_arn(),
            )
            .await
        }
        HookPolicy => {
            check_iam_policy(
                aws,
                &spec.policy_arn(&spec.hook_policy()),
                &spec.hook_policy_document(),
            )
            .await
        }
        HookRole => check_role(aws, &spec.hook_role(), "lambda.amazonaws.com").await,
        HookRoleAttachment => {
            check_attachment(
                aws,
                &spec.hook_role(),
                &spec.policy_arn(&spec.hook_policy()),
            )
            .await
        }
        HookFunction => check_function(aws, spec).await,
        HookPermission => check_permission(aws, spec).await,
        Template => check_template(aws, spec).await,
        ClaimPolicy => {
            let doc = claim_policy(spec)?;
            check_iot_policy(aws, &spec.claim_policy(), &doc).await
        }
        ClaimCertificate => {
            let loc = S3Location::new(&spec.bucket, claim::DEFAULT_PREFIX)?;
            Ok(
                match claim::claim_state(aws, &loc, &spec.claim_policy()).await? {
                    ClaimState::Absent => Status::Missing,
                    ClaimState::Complete {
                        active: true,
                        policy_attached: true,
                        ..
                    } => Status::InPlace,
                    ClaimState::Complete { active: false, .. } => {
                        Status::Drift("the certificate is not ACTIVE".to_owned())
                    }
                    // A detached claim policy is a missing part: `claim ensure` attaches it.
                    ClaimState::Complete { .. } => Status::Missing,
                    ClaimState::Partial(present) => Status::Drift(format!(
                        "only {} of the claim objects exist",
                        present.join(", ")
                    )),
                },
            )
        }
        Parameters => {
            let loc = S3Location::new(&spec.bucket, provisioning::DEFAULT_PREFIX)?;
            match get_small_object(aws, &loc, provisioning::PARAMS_NAME).await? {
                None => Ok(Status::Missing),
                Some(bytes) => match serde_json::from_slice::<ProvisioningParams>(&bytes) {
                    Ok(found) if &found == params => Ok(Status::InPlace),
                    Ok(_) => Ok(Status::Drift(
                        "holds other parameters than this fleet's".to_owned(),
                    )),
                    Err(_) => Ok(Status::Drift("is not provisioning parameters".to_owned())),
                },
            }
        }
    }
}

fn claim_policy(spec: &FleetSpec) -> Result<Value> {
    serde_json::from_str(&claim::claim_policy_document(
        spec.partition(),
        &spec.region,
        &spec.account,
        &spec.template(),
    ))
    .context(|| "the claim policy document")
}

/// The region of an S3 GetBucketLocation answer (`None`/empty is us-east-1, `EU` eu-west-1).
fn bucket_region(constraint: Option<&BucketLocationConstraint>) -> String {
    match constraint.map(BucketLocationConstraint::as_str) {
        None | Some("") => "us-east-1".to_owned(),
        Some("EU") => "eu-west-1".to_owned(),
        Some(other) => other.to_owned(),
    }
}

async fn check_bucket(aws: &Aws, spec: &FleetSpec) -> Result<Status> {
    match aws.s3.get_bucket_location().bucket(&spec.bucket).send().await {
        Ok(out) => {
            let region = bucket_region(out.location_constraint());
            if region == spec.region {
                Ok(Status::InPlace)
            } else {
                Ok(Status::Drift(format!(
                    "it is in {region}, not {}",
                    spec.region
                )))
            }
        }
        Err(e) if error_code(&e) == Some("NoSuchBucket") => Ok(Status::Missing),
        Err(e) => Err(e).aws_context(|| {
            format!(
                "S3 GetBucketLocation {} (a bucket of another account? pick another name with --bucket)",
                spec.bucket
            )
        }),
    }
}

async fn check_public_access(aws: &Aws, bucket: &str) -> Result<Status> {
    match aws.s3.get_public_access_block().bucket(bucket).send().await {
        Ok(out) => {
            let c = out.public_access_block_configuration();
            let off: Vec<&str> = [
                ("BlockPublicAcls", c.and_then(|c| c.block_public_acls())),
                ("IgnorePublicAcls", c.and_then(|c| c.ignore_public_acls())),
                ("BlockPublicPolicy", c.and_then(|c| c.block_public_policy())),
                (
                    "RestrictPublicBuckets",
                    c.and_then(|c| c.restrict_public_buckets()),
                ),
            ]
            .into_iter()
            .filter(|(_, on)| *on != Some(true))
            .map(|(name, _)| name)
            .collect();
            if off.is_empty() {
                Ok(Status::InPlace)
            } else {
                Ok(Status::Drift(format!("{} off", off.join(", "))))
            }
        }
        Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => {
            Ok(Status::Missing)
        }
        Err(e) => Err(e).aws_context(|| format!("S3 GetPublicAccessBlock {bucket}")),
    }
}

async fn check_encryption(aws: &Aws, bucket: &str) -> Result<Status> {
    match aws.s3.get_bucket_encryption().bucket(bucket).send().await {
        Ok(out) => {
            let algorithms: Vec<String> = out
                .server_side_encryption_configuration()
                .map(|c| c.rules())
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.apply_server_side_encryption_by_default())
                .map(|d| d.sse_algorithm().as_str().to_owned())
                .collect();
            if algorithms
                .iter()
                .any(|a| matches!(a.as_str(), "AES256" | "aws:kms" | "aws:kms:dsse"))
            {
                Ok(Status::InPlace)
            } else {
                Ok(Status::Drift(format!(
                    "default encryption is {algorithms:?}, not AES256 or aws:kms"
                )))
            }
        }
        Err(e) if error_code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
            Ok(Status::Missing)
        }
        Err(e) => Err(e).aws_context(|| format!("S3 GetBucketEncryption {bucket}")),
    }
}

async fn check_versioning(aws: &Aws, bucket: &str) -> Result<Status> {
    let out = aws
        .s3
        .get_bucket_versioning()
        .bucket(bucket)
        .send()
        .await
        .aws_context(|| format!("S3 GetBucketVersioning {bucket}"))?;
    Ok(match out.status() {
        Some(BucketVersioningStatus::Enabled) => Status::InPlace,
        None => Status::Missing,
        Some(other) => Status::Drift(format!("versioning is {}", other.as_str())),
    })
}

/// A policy document as IAM returns it: URL-encoded JSON (RFC 3986), or plain JSON.
fn iam_document(text: &str) -> Result<Value> {
    let decoded;
    let json = if text.trim_start().starts_with('{') {
        text
    } else {
        decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .context(|| "an IAM policy document")?;
        &decoded
    };
    serde_json::from_str(json).context(|| "an IAM policy document is not JSON")
}

/// Where two JSON documents first differ, as a path (`Statement[2].Resource`).
fn first_difference(found: &Value, wanted: &Value) -> String {
    fn walk(a: &Value, b: &Value, path: String) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => walk(p, q, join(&path, k)),
                    _ => Some(join(&path, k)),
                })
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (p, q))| walk(p, q, format!("{path}[{i}]"))),
            _ if a == b => None,
            _ => Some(if path.is_empty() {
                "the document".to_owned()
            } else {
                path
            }),
        }
    }
    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    }
    walk(found, wanted, String::new()).unwrap_or_else(|| "nothing".to_owned())
}

fn compare_document(found: &Value, wanted: &Value) -> Status {
    if found == wanted {
        Status::InPlace
    } else {
        Status::Drift(format!(
            "its document differs from the one fleet init writes (at {})",
            first_difference(found, wanted)
        ))
    }
}

async fn check_iam_policy(aws: &Aws, arn: &str, wanted: &Value) -> Result<Status> {
    let policy = match aws.iam.get_policy().policy_arn(arn).send().await {
        Ok(out) => out,
        Err(e) if error_code(&e) == Some("NoSuchEntity") => return Ok(Status::Missing),
        Err(e) => return Err(e).aws_context(|| format!("IAM GetPolicy {arn}")),
    };
    let Some(version) = policy.policy().and_then(|p| p.default_version_id()) else {
        aws_bail!("IAM GetPolicy {arn}: no default version in the answer");
    };
    let out = aws
        .iam
        .get_policy_version()
        .policy_arn(arn)
        .version_id(version)
        .send()
        .await
        .aws_context(|| format!("IAM GetPolicyVersion {arn} {version}"))?;
    let Some(text) = out.policy_version().and_then(|v| v.document()) else {
        aws_bail!("IAM GetPolicyVersion {arn}: no document in the answer");
    };
    Ok(compare_document(&iam_document(text)?, wanted))
}

async fn check_role(aws: &Aws, role: &str, service: &str) -> Result<Status> {
    match aws.iam.get_role().role_name(role).send().await {
        Ok(out) => {
            let Some(text) = out.role().and_then(|r| r.assume_role_policy_document()) else {
                return Ok(Status::Drift("it has no trust policy".to_owned()));
            };
            if compare_document(&iam_document(text)?, &FleetSpec::trust_policy(service))
                != Status::InPlace
            {
                return Ok(Status::Drift(format!(
                    "its trust policy differs (fleet init trusts only {service})"
                )));
            }
            let inline = inline_policies(aws, role).await?;
            if inline.is_empty() {
                Ok(Status::InPlace)
            } else {
                Ok(Status::Drift(format!(
                    "it has inline policies ({}) fleet init does not make",
                    inline.join(", ")
                )))
            }
        }
        Err(e) if error_code(&e) == Some("NoSuchEntity") => Ok(Status::Missing),
        Err(e) => Err(e).aws_context(|| format!("IAM GetRole {role}")),
    }
}

/// The names of a role's inline policies.
async fn inline_policies(aws: &Aws, role: &str) -> Result<Vec<String>> {
    let out = aws
        .iam
        .list_role_policies()
        .role_name(role)
        .send()
        .await
        .aws_context(|| format!("IAM ListRolePolicies {role}"))?;
    Ok(out.policy_names().to_vec())
}

async fn attached_policies(aws: &Aws, role: &str) -> Result<Vec<String>> {
    let mut arns = Vec::new();
    let mut marker = None;
    loop {
        let out = aws
            .iam
            .list_attached_role_policies()
            .role_name(role)
            .set_marker(marker)
            .send()
            .await
            .aws_context(|| format!("IAM ListAttachedRolePolicies {role}"))?;
        arns.extend(
            out.attached_policies()
                .iter()
                .filter_map(|p| p.policy_arn().map(str::to_owned)),
        );
        match out.marker() {
            Some(m) if out.is_truncated() => marker = Some(m.to_owned()),
            _ => return Ok(arns),
        }
    }
}

async fn check_attachment(aws: &Aws, role: &str, policy_arn: &str) -> Result<Status> {
    let attached = attached_policies(aws, role).await?;
    let others: Vec<&String> = attached.iter().filter(|a| *a != policy_arn).collect();
    if !attached.iter().any(|a| a == policy_arn) {
        return Ok(Status::Missing);
    }
    if others.is_empty() {
        Ok(Status::InPlace)
    } else {
        Ok(Status::Drift(format!(
            "the role also has {} attached",
            others
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

async fn check_role_alias(aws: &Aws, spec: &FleetSpec) -> Result<Status> {
    let alias = spec.role_alias();
    match aws
        .iot
        .describe_role_alias()
        .role_alias(&alias)
        .send()
        .await
    {
        Ok(out) => {
            let role = out.role_alias_description().and_then(|d| d.role_arn());
            let wanted = spec.role_arn(&spec.token_role());
            if role == Some(wanted.as_str()) {
                Ok(Status::InPlace)
            } else {
                Ok(Status::Drift(format!(
                    "it points at {}, not {wanted}",
                    role.unwrap_or("no role")
                )))
            }
        }
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(Status::Missing),
        Err(e) => Err(e).aws_context(|| format!("IoT DescribeRoleAlias {alias}")),
    }
}

async fn check_iot_policy(aws: &Aws, name: &str, wanted: &Value) -> Result<Status> {
    match aws.iot.get_policy().policy_name(name).send().await {
        Ok(out) => {
            let found: Value = serde_json::from_str(out.policy_document().unwrap_or("null"))
                .context(|| format!("IoT policy {name}: the document is not JSON"))?;
            Ok(compare_document(&found, wanted))
        }
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(Status::Missing),
        Err(e) => Err(e).aws_context(|| format!("IoT GetPolicy {name}")),
    }
}

async fn check_thing_group(aws: &Aws, group: &str) -> Result<Status> {
    match aws
        .iot
        .describe_thing_group()
        .thing_group_name(group)
        .send()
        .await
    {
        Ok(out) if out.query_string().is_some() => Ok(Status::Drift(
            "it is a dynamic thing group; provisioning and `devices sync` need a static one"
                .to_owned(),
        )),
        Ok(_) => Ok(Status::InPlace),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(Status::Missing),
        Err(e) => Err(e).aws_context(|| format!("IoT DescribeThingGroup {group}")),
    }
}

fn hook_environment(spec: &FleetSpec) -> HashMap<String, String> {
    HashMap::from([
        ("ALLOWLIST_BUCKET".to_owned(), spec.bucket.clone()),
        ("ALLOWLIST_KEY".to_owned(), docs::allowlist_key()),
    ])
}

async fn check_function(aws: &Aws, spec: &FleetSpec) -> Result<Status> {
    let name = spec.hook_function();
    let out = match aws.lambda.get_function().function_name(&name).send().await {
        Ok(out) => out,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            return Ok(Status::Missing)
        }
        Err(e) => return Err(e).aws_context(|| format!("Lambda GetFunction {name}")),
    };
    let Some(c) = out.configuration() else {
        aws_bail!("Lambda GetFunction {name}: no configuration in the answer");
    };
    let mut differences = Vec::new();
    if c.role() != Some(spec.role_arn(&spec.hook_role()).as_str()) {
        differences.push("role");
    }
    if c.handler() != Some(hook::HANDLER) {
        differences.push("handler");
    }
    if c.runtime() != Some(&aws_sdk_lambda::types::Runtime::Python312) {
        differences.push("runtime");
    }
    let env = c.environment().and_then(|e| e.variables());
    if env != Some(&hook_environment(spec)) {
        differences.push("environment");
    }
    if c.code_sha256() != Some(hook::code_sha256(&hook::package()?).as_str()) {
        differences.push("code");
    }
    if differences.is_empty() {
        Ok(Status::InPlace)
    } else {
        Ok(Status::Drift(format!(
            "its {} differ(s) from what fleet init deploys",
            differences.join(", ")
        )))
    }
}

async fn check_permission(aws: &Aws, spec: &FleetSpec) -> Result<Status> {
    let name = spec.hook_function();
    let policy = match aws.lambda.get_policy().function_name(&name).send().await {
        Ok(out) => out.policy().unwrap_or("{}").to_owned(),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            return Ok(Status::Missing)
        }
        Err(e) => return Err(e).aws_context(|| format!("Lambda GetPolicy {name}")),
    };
    let doc: Value =
        serde_json::from_str(&policy).context(|| format!("Lambda GetPolicy {name}: not JSON"))?;
    let statement = doc["Statement"]
        .as_array()
        .and_then(|s| s.iter().find(|st| st["Sid"] == docs::HOOK_PERMISSION_SID));
    let Some(st) = statement else {
        return Ok(Status::Missing);
    };
    let condition = &st["Condition"]["StringEquals"];
    let source_account = condition
        .get("AWS:SourceAccount")
        .or_else(|| condition.get("aws:SourceAccount"));
    if st["Effect"] == "Allow"
        && st["Action"] == "lambda:InvokeFunction"
        && st["Principal"]["Service"] == "iot.amazonaws.com"
        && source_account.and_then(Value::as_str) == Some(spec.account.as_str())
    {
        Ok(Status::InPlace)
    } else {
        Ok(Status::Drift(format!(
            "statement {} differs (fleet init allows iot.amazonaws.com to invoke it for account {} only)",
            docs::HOOK_PERMISSION_SID,
            spec.account
        )))
    }
}

async fn check_template(aws: &Aws, spec: &FleetSpec) -> Result<Status> {
    let name = spec.template();
    let out = match aws
        .iot
        .describe_provisioning_template()
        .template_name(&name)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            return Ok(Status::Missing)
        }
        Err(e) => return Err(e).aws_context(|| format!("IoT DescribeProvisioningTemplate {name}")),
    };
    let mut differences = Vec::new();
    let body: Value = serde_json::from_str(out.template_body().unwrap_or("null"))
        .context(|| format!("provisioning template {name}: the body is not JSON"))?;
    if body != spec.template_body() {
        differences.push(format!(
            "body (at {})",
            first_difference(&body, &spec.template_body())
        ));
    }
    if out.provisioning_role_arn() != Some(spec.role_arn(&spec.provisioning_role()).as_str()) {
        differences.push("provisioning role".to_owned());
    }
    if out.enabled() != Some(true) {
        differences.push("it is disabled".to_owned());
    }
    let hook = out.pre_provisioning_hook().map(|h| h.target_arn());
    let wanted = spec.hook.then(|| spec.hook_function_arn());
    if hook != wanted.as_deref() {
        differences.push(match (hook, wanted) {
            (Some(found), None) => format!("it has the pre-provisioning hook {found} (init without --allowlist-hook)"),
            (None, Some(_)) => "it has no pre-provisioning hook (delete the template and run init again to get one)".to_owned(),
            (found, _) => format!("its pre-provisioning hook is {}", found.unwrap_or("none")),
        });
    }
    if differences.is_empty() {
        Ok(Status::InPlace)
    } else {
        Ok(Status::Drift(differences.join(", ")))
    }
}

// --- creation -------------------------------------------------------------------------------

/// Retries a creation that names an IAM role made moments before: IAM is eventually
/// consistent, and AWS IoT and Lambda refuse a role they cannot assume yet (an
/// InvalidParameterValueException or InvalidRequestException about the role). Up to ~40 s.
async fn with_new_role_retry<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = Duration::from_secs(2);
    for _ in 0..5 {
        match attempt().await {
            Err(e) if role_not_ready(e.message()) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
    attempt().await
}

/// Whether an error says a (new) role cannot be used yet.
fn role_not_ready(message: &str) -> bool {
    ["InvalidParameterValueException", "InvalidRequestException"]
        .iter()
        .filter_map(|code| message.find(code).map(|at| &message[at + code.len()..]))
        .any(|rest| rest.to_ascii_lowercase().contains("role"))
}

async fn create(
    aws: &Aws,
    spec: &FleetSpec,
    resource: Resource,
    params: &ProvisioningParams,
) -> Result<()> {
    use Resource::*;
    let b = &spec.bucket;
    match resource {
        Bucket => {
            let mut req = aws.s3.create_bucket().bucket(b);
            if spec.region != "us-east-1" {
                req = req.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(spec.region.as_str()))
                        .build(),
                );
            }
            req.send()
                .await
                .aws_context(|| format!("S3 CreateBucket {b}"))?;
            let tag = Tag::builder()
                .key(docs::BUCKET_TAG)
                .value(&spec.name)
                .build()
                .context(|| "S3 bucket tag")?;
            aws.s3
                .put_bucket_tagging()
                .bucket(b)
                .tagging(
                    Tagging::builder()
                        .tag_set(tag)
                        .build()
                        .context(|| "S3 bucket tagging")?,
                )
                .send()
                .await
                .aws_context(|| format!("S3 PutBucketTagging {b}"))?;
        }
        BucketPublicAccess => {
            aws.s3
                .put_public_access_block()
                .bucket(b)
                .public_access_block_configuration(
                    PublicAccessBlockConfiguration::builder()
                        .block_public_acls(true)
                        .ignore_public_acls(true)
                        .block_public_policy(true)
                        .restrict_public_buckets(true)
                        .build(),
                )
                .send()
                .await
                .aws_context(|| format!("S3 PutPublicAccessBlock {b}"))?;
        }
        BucketEncryption => {
            let default = ServerSideEncryptionByDefault::builder()
                .sse_algorithm(ServerSideEncryption::Aes256)
                .build()
                .context(|| "S3 encryption rule")?;
            let rule = ServerSideEncryptionRule::builder()
                .apply_server_side_encryption_by_default(default)
                .build();
            aws.s3
                .put_bucket_encryption()
                .bucket(b)
                .server_side_encryption_configuration(
                    ServerSideEncryptionConfiguration::builder()
                        .rules(rule)
                        .build()
                        .context(|| "S3 encryption configuration")?,
                )
                .send()
                .await
                .aws_context(|| format!("S3 PutBucketEncryption {b}"))?;
        }
        BucketVersioning => {
            aws.s3
                .put_bucket_versioning()
                .bucket(b)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .aws_context(|| format!("S3 PutBucketVersioning {b}"))?;
        }
        TokenPolicy => {
            create_iam_policy(
                aws,
                &spec.token_policy(),
                &spec.token_policy_document(),
                "Greengrass token exchange role access (imgbuild fleet)",
            )
            .await?
        }
        TokenRole => {
            create_role(
                aws,
                &spec.token_role(),
                "credentials.iot.amazonaws.com",
                "Greengrass core devices' token exchange role (imgbuild fleet)",
            )
            .await?
        }
        TokenRoleAttachment => {
            attach(
                aws,
                &spec.token_role(),
                &spec.policy_arn(&spec.token_policy()),
            )
            .await?
        }
        RoleAlias => {
            let alias = spec.role_alias();
            let role = spec.role_arn(&spec.token_role());
            with_new_role_retry(|| async {
                aws.iot
                    .create_role_alias()
                    .role_alias(&alias)
                    .role_arn(&role)
                    .credential_duration_seconds(3600)
                    .send()
                    .await
                    .aws_context(|| format!("IoT CreateRoleAlias {alias}"))
            })
            .await?;
        }
        DevicePolicy => {
            claim::create_iot_policy(
                aws,
                &spec.device_policy(),
                &spec.device_policy_document().to_string(),
            )
            .await?
        }
        ThingGroup => {
            let group = spec.thing_group();
            aws.iot
                .create_thing_group()
                .thing_group_name(&group)
                .thing_group_properties(
                    aws_sdk_iot::types::ThingGroupProperties::builder()
                        .thing_group_description(format!(
                            "Greengrass core devices of imgbuild fleet {}",
                            spec.name
                        ))
                        .build(),
                )
                .send()
                .await
                .aws_context(|| format!("IoT CreateThingGroup {group}"))?;
        }
        ProvisioningRole => {
            create_role(
                aws,
                &spec.provisioning_role(),
                "iot.amazonaws.com",
                "AWS IoT fleet provisioning role (imgbuild fleet)",
            )
            .await?
        }
        ProvisioningRoleAttachment => {
            attach(
                aws,
                &spec.provisioning_role(),
                &spec.things_registration_arn(),
            )
            .await?
        }
        HookPolicy => create_iam_policy(
            aws,
            &spec.hook_policy(),
            &spec.hook_policy_document(),
            "Allowlist pre-provisioning hook: read the allowlist, write own logs (imgbuild fleet)",
        )
        .await?,
        HookRole => {
            create_role(
                aws,
                &spec.hook_role(),
                "lambda.amazonaws.com",
                "Execution role of the allowlist pre-provisioning hook (imgbuild fleet)",
            )
            .await?
        }
        HookRoleAttachment => {
            attach(
                aws,
                &spec.hook_role(),
                &spec.policy_arn(&spec.hook_policy()),
            )
            .await?
        }
        HookFunction => create_function(aws, spec).await?,
        HookPermission => {
            let name = spec.hook_function();
            aws.lambda
                .add_permission()
                .function_name(&name)
                .statement_id(docs::HOOK_PERMISSION_SID)
                .action("lambda:InvokeFunction")
                .principal("iot.amazonaws.com")
                .source_account(&spec.account)
                .send()
                .await
                .aws_context(|| format!("Lambda AddPermission {name}"))?;
        }
        Template => create_template(aws, spec).await?,
        ClaimPolicy => {
            claim::create_iot_policy(aws, &spec.claim_policy(), &claim_policy(spec)?.to_string())
                .await?
        }
        ClaimCertificate => {
            let loc = S3Location::new(b, claim::DEFAULT_PREFIX)?;
            claim::ensure_claim(aws, &loc, &spec.claim_policy(), &spec.template()).await?;
        }
        Parameters => {
            let loc = S3Location::new(b, provisioning::DEFAULT_PREFIX)?;
            let json = provisioning::params_json(params)?;
            put_small_object(aws, &loc, provisioning::PARAMS_NAME, json.into_bytes()).await?;
        }
    }
    Ok(())
}

async fn create_iam_policy(aws: &Aws, name: &str, doc: &Value, description: &str) -> Result<()> {
    aws.iam
        .create_policy()
        .policy_name(name)
        .policy_document(doc.to_string())
        .description(description)
        .send()
        .await
        .aws_context(|| format!("IAM CreatePolicy {name}"))?;
    Ok(())
}

async fn create_role(aws: &Aws, role: &str, service: &str, description: &str) -> Result<()> {
    aws.iam
        .create_role()
        .role_name(role)
        .assume_role_policy_document(FleetSpec::trust_policy(service).to_string())
        .description(description)
        .send()
        .await
        .aws_context(|| format!("IAM CreateRole {role}"))?;
    Ok(())
}

async fn attach(aws: &Aws, role: &str, policy_arn: &str) -> Result<()> {
    aws.iam
        .attach_role_policy()
        .role_name(role)
        .policy_arn(policy_arn)
        .send()
        .await
        .aws_context(|| format!("IAM AttachRolePolicy {policy_arn} to {role}"))?;
    Ok(())
}

async fn create_function(aws: &Aws, spec: &FleetSpec) -> Result<()> {
    use aws_sdk_lambda::primitives::Blob;
    use aws_sdk_lambda::types::{Environment, FunctionCode, Runtime};
    let name = spec.hook_function();
    let package = hook::package()?;
    let mut env = Environment::builder();
    for (k, v) in hook_environment(spec) {
        env = env.variables(k, v);
    }
    let env = env.build();
    let role = spec.role_arn(&spec.hook_role());
    with_new_role_retry(|| async {
        aws.lambda
            .create_function()
            .function_name(&name)
            .runtime(Runtime::Python312)
            .role(&role)
            .handler(hook::HANDLER)
            .timeout(hook::TIMEOUT_SECONDS)
            .memory_size(128)
            .environment(env.clone())
            .description(format!(
                "imgbuild fleet {}: AWS IoT pre-provisioning hook, allows serials on s3://{}/{}",
                spec.name,
                spec.bucket,
                docs::allowlist_key()
            ))
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(package.clone()))
                    .build(),
            )
            .send()
            .await
            .aws_context(|| format!("Lambda CreateFunction {name}"))
    })
    .await?;
    Ok(())
}

async fn create_template(aws: &Aws, spec: &FleetSpec) -> Result<()> {
    let name = spec.template();
    let hook = if spec.hook {
        Some(
            ProvisioningHook::builder()
                .target_arn(spec.hook_function_arn())
                .payload_version(docs::HOOK_PAYLOAD_VERSION)
                .build()
                .context(|| "the pre-provisioning hook")?,
        )
    } else {
        None
    };
    let role = spec.role_arn(&spec.provisioning_role());
    let body = spec.template_body().to_string();
    with_new_role_retry(|| async {
        aws.iot
            .create_provisioning_template()
            .template_name(&name)
            .description(format!(
                "Greengrass core devices of imgbuild fleet {} (thing {}SERIAL in group {})",
                spec.name,
                spec.thing_prefix,
                spec.thing_group()
            ))
            .template_body(&body)
            .enabled(true)
            .provisioning_role_arn(&role)
            .set_pre_provisioning_hook(hook.clone())
            .send()
            .await
            .aws_context(|| format!("IoT CreateProvisioningTemplate {name}"))
    })
    .await?;
    Ok(())
}

// --- destroy --------------------------------------------------------------------------------

/// What `destroy` did with one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The resource, with its name.
    pub label: String,
    /// `deleted`, `absent`, or what was kept and why.
    pub outcome: String,
}

async fn things_in_group(aws: &Aws, group: &str) -> Result<Option<Vec<String>>> {
    let mut things = Vec::new();
    let mut token = None;
    loop {
        let out = match aws
            .iot
            .list_things_in_thing_group()
            .thing_group_name(group)
            .set_next_token(token)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(None),
            Err(e) => return Err(e).aws_context(|| format!("IoT ListThingsInThingGroup {group}")),
        };
        things.extend(out.things().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(Some(things)),
        }
    }
}

/// Removes what `init` made. Refuses, changing nothing, while things remain in the thing
/// group unless `force` (then the device policy is detached from their certificates: those
/// devices lose access). The bucket is deleted (with every object version) only when `init`
/// created it (tag `imgbuild-fleet=NAME`); otherwise only the objects `init` wrote go.
pub async fn destroy(
    aws: &Aws,
    spec: &FleetSpec,
    force: bool,
    mut report: impl FnMut(&Removal),
) -> Result<Vec<Removal>> {
    let group = spec.thing_group();
    if let Some(things) = things_in_group(aws, &group).await? {
        if !things.is_empty() && !force {
            let mut shown: Vec<&str> = things.iter().map(String::as_str).take(5).collect();
            if things.len() > 5 {
                shown.push("…");
            }
            bail!(
                "thing group {group} still has {} thing(s) ({}): nothing was deleted; remove the devices first \
                 (e.g. `imgbuild cloud devices sync` with an allowlist without them) or pass --force \
                 (their certificates lose the device policy)",
                things.len(),
                shown.join(", ")
            );
        }
    }
    let mut done = Vec::new();
    let mut note = |label: String, outcome: &str| {
        let r = Removal {
            label,
            outcome: outcome.to_owned(),
        };
        report(&r);
        done.push(r);
    };
    let outcome = |deleted: bool| if deleted { "deleted" } else { "absent" };

    let bucket_exists = check_bucket(aws, spec).await? != Status::Missing;
    if bucket_exists {
        let loc = S3Location::new(&spec.bucket, provisioning::DEFAULT_PREFIX)?;
        let deleted = delete_object(aws, &loc, provisioning::PARAMS_NAME).await?;
        note(Resource::Parameters.label(spec), outcome(deleted));
    }
    let deleted = delete_claim(aws, spec, bucket_exists).await?;
    note(Resource::ClaimCertificate.label(spec), outcome(deleted));
    let deleted = delete_iot_policy(aws, &spec.claim_policy()).await?;
    note(Resource::ClaimPolicy.label(spec), outcome(deleted));
    let name = spec.template();
    let deleted = match aws
        .iot
        .delete_provisioning_template()
        .template_name(&name)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => false,
        Err(e) => return Err(e).aws_context(|| format!("IoT DeleteProvisioningTemplate {name}")),
    };
    note(
        format!("IoT provisioning template {name}"),
        outcome(deleted),
    );
    let name = spec.hook_function();
    let deleted = match aws
        .lambda
        .delete_function()
        .function_name(&name)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => false,
        Err(e) => return Err(e).aws_context(|| format!("Lambda DeleteFunction {name}")),
    };
    note(
        format!("Lambda function {name} (with its permission)"),
        outcome(deleted),
    );
    let deleted = delete_role(aws, &spec.hook_role()).await?;
    note(format!("IAM role {}", spec.hook_role()), outcome(deleted));
    let deleted = delete_iam_policy(aws, &spec.policy_arn(&spec.hook_policy())).await?;
    note(Resource::HookPolicy.label(spec), outcome(deleted));
    let deleted = delete_iot_policy(aws, &spec.device_policy()).await?;
    note(Resource::DevicePolicy.label(spec), outcome(deleted));
    // DeleteThingGroup succeeds for a group that does not exist: ask first.
    let deleted = match check_thing_group(aws, &group).await? {
        Status::Missing => false,
        _ => {
            aws.iot
                .delete_thing_group()
                .thing_group_name(&group)
                .send()
                .await
                .aws_context(|| format!("IoT DeleteThingGroup {group}"))?;
            true
        }
    };
    note(Resource::ThingGroup.label(spec), outcome(deleted));
    let deleted = delete_role(aws, &spec.provisioning_role()).await?;
    note(
        format!("IAM role {}", spec.provisioning_role()),
        outcome(deleted),
    );
    let alias = spec.role_alias();
    let deleted = match aws.iot.delete_role_alias().role_alias(&alias).send().await {
        Ok(_) => true,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => false,
        Err(e) => return Err(e).aws_context(|| format!("IoT DeleteRoleAlias {alias}")),
    };
    note(Resource::RoleAlias.label(spec), outcome(deleted));
    let deleted = delete_role(aws, &spec.token_role()).await?;
    note(format!("IAM role {}", spec.token_role()), outcome(deleted));
    let deleted = delete_iam_policy(aws, &spec.policy_arn(&spec.token_policy())).await?;
    note(Resource::TokenPolicy.label(spec), outcome(deleted));
    let bucket = Resource::Bucket.label(spec);
    if !bucket_exists {
        note(bucket, "absent");
    } else if bucket_made_by_init(aws, spec).await? {
        empty_and_delete_bucket(aws, &spec.bucket).await?;
        note(bucket, "deleted (with every object version)");
    } else {
        note(
            bucket,
            "kept: fleet init did not create it (no imgbuild-fleet tag); its claim and parameter objects were deleted",
        );
    }
    Ok(done)
}

async fn delete_object(aws: &Aws, loc: &S3Location, name: &str) -> Result<bool> {
    if !crate::objects::object_exists(aws, loc, name).await? {
        return Ok(false);
    }
    let key = loc.key(name);
    aws.s3
        .delete_object()
        .bucket(&loc.bucket)
        .key(&key)
        .send()
        .await
        .aws_context(|| format!("S3 DeleteObject s3://{}/{key}", loc.bucket))?;
    Ok(true)
}

/// Deactivates and deletes the claim certificate named in the bucket, and its objects.
async fn delete_claim(aws: &Aws, spec: &FleetSpec, bucket_exists: bool) -> Result<bool> {
    if !bucket_exists {
        return Ok(false);
    }
    let loc = S3Location::new(&spec.bucket, claim::DEFAULT_PREFIX)?;
    let mut any = false;
    if let Some(bytes) = get_small_object(aws, &loc, claim::ARN_NAME).await? {
        let arn = String::from_utf8_lossy(&bytes).trim().to_owned();
        let id = claim::certificate_id(&arn)?.to_owned();
        match aws
            .iot
            .describe_certificate()
            .certificate_id(&id)
            .send()
            .await
        {
            Ok(_) => {
                for name in claim::attached_iot_policies(aws, &arn).await? {
                    aws.iot
                        .detach_policy()
                        .policy_name(&name)
                        .target(&arn)
                        .send()
                        .await
                        .aws_context(|| format!("IoT DetachPolicy {name} from {arn}"))?;
                }
                aws.iot
                    .update_certificate()
                    .certificate_id(&id)
                    .new_status(aws_sdk_iot::types::CertificateStatus::Inactive)
                    .send()
                    .await
                    .aws_context(|| format!("IoT UpdateCertificate {id} INACTIVE"))?;
                aws.iot
                    .delete_certificate()
                    .certificate_id(&id)
                    .send()
                    .await
                    .aws_context(|| format!("IoT DeleteCertificate {id}"))?;
                any = true;
            }
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {}
            Err(e) => return Err(e).aws_context(|| format!("IoT DescribeCertificate {id}")),
        }
    }
    // The ARN object goes last, as `claim ensure` writes it last.
    for name in [claim::CERT_NAME, claim::KEY_NAME, claim::ARN_NAME] {
        any |= delete_object(aws, &loc, name).await?;
    }
    Ok(any)
}

async fn delete_iot_policy(aws: &Aws, name: &str) -> Result<bool> {
    let targets = match aws
        .iot
        .list_targets_for_policy()
        .policy_name(name)
        .send()
        .await
    {
        Ok(out) => out.targets().to_vec(),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(false),
        Err(e) => return Err(e).aws_context(|| format!("IoT ListTargetsForPolicy {name}")),
    };
    for target in targets {
        aws.iot
            .detach_policy()
            .policy_name(name)
            .target(&target)
            .send()
            .await
            .aws_context(|| format!("IoT DetachPolicy {name} from {target}"))?;
    }
    // DeletePolicy refuses a policy with versions besides the default one.
    let versions = aws
        .iot
        .list_policy_versions()
        .policy_name(name)
        .send()
        .await
        .aws_context(|| format!("IoT ListPolicyVersions {name}"))?;
    for v in versions.policy_versions() {
        if let (false, Some(id)) = (v.is_default_version(), v.version_id()) {
            aws.iot
                .delete_policy_version()
                .policy_name(name)
                .policy_version_id(id)
                .send()
                .await
                .aws_context(|| format!("IoT DeletePolicyVersion {name} {id}"))?;
        }
    }
    match aws.iot.delete_policy().policy_name(name).send().await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(false),
        Err(e) => Err(e).aws_context(|| format!("IoT DeletePolicy {name}")),
    }
}

async fn delete_role(aws: &Aws, role: &str) -> Result<bool> {
    let attached = match aws.iam.get_role().role_name(role).send().await {
        Ok(_) => attached_policies(aws, role).await?,
        Err(e) if error_code(&e) == Some("NoSuchEntity") => return Ok(false),
        Err(e) => return Err(e).aws_context(|| format!("IAM GetRole {role}")),
    };
    for arn in attached {
        aws.iam
            .detach_role_policy()
            .role_name(role)
            .policy_arn(&arn)
            .send()
            .await
            .aws_context(|| format!("IAM DetachRolePolicy {arn} from {role}"))?;
    }
    // DeleteRole refuses a role with inline policies (someone may have added one).
    for name in inline_policies(aws, role).await? {
        aws.iam
            .delete_role_policy()
            .role_name(role)
            .policy_name(&name)
            .send()
            .await
            .aws_context(|| format!("IAM DeleteRolePolicy {name} of {role}"))?;
    }
    aws.iam
        .delete_role()
        .role_name(role)
        .send()
        .await
        .aws_context(|| format!("IAM DeleteRole {role}"))?;
    Ok(true)
}

async fn delete_iam_policy(aws: &Aws, arn: &str) -> Result<bool> {
    let versions = match aws.iam.list_policy_versions().policy_arn(arn).send().await {
        Ok(out) => out.versions().to_vec(),
        Err(e) if error_code(&e) == Some("NoSuchEntity") => return Ok(false),
        Err(e) => return Err(e).aws_context(|| format!("IAM ListPolicyVersions {arn}")),
    };
    for v in versions.iter().filter(|v| !v.is_default_version()) {
        if let Some(id) = v.version_id() {
            aws.iam
                .delete_policy_version()
                .policy_arn(arn)
                .version_id(id)
                .send()
                .await
                .aws_context(|| format!("IAM DeletePolicyVersion {arn} {id}"))?;
        }
    }
    aws.iam
        .delete_policy()
        .policy_arn(arn)
        .send()
        .await
        .aws_context(|| format!("IAM DeletePolicy {arn}"))?;
    Ok(true)
}

async fn bucket_made_by_init(aws: &Aws, spec: &FleetSpec) -> Result<bool> {
    match aws
        .s3
        .get_bucket_tagging()
        .bucket(&spec.bucket)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .tag_set()
            .iter()
            .any(|t| t.key() == docs::BUCKET_TAG && t.value() == spec.name)),
        Err(e) if error_code(&e) == Some("NoSuchTagSet") => Ok(false),
        Err(e) => Err(e).aws_context(|| format!("S3 GetBucketTagging {}", spec.bucket)),
    }
}

async fn empty_and_delete_bucket(aws: &Aws, bucket: &str) -> Result<()> {
    loop {
        let out = aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .send()
            .await
            .aws_context(|| format!("S3 ListObjectVersions {bucket}"))?;
        let mut victims: Vec<(String, Option<String>)> = Vec::new();
        for v in out.versions() {
            victims.extend(
                v.key()
                    .map(|k| (k.to_owned(), v.version_id().map(str::to_owned))),
            );
        }
        for m in out.delete_markers() {
            victims.extend(
                m.key()
                    .map(|k| (k.to_owned(), m.version_id().map(str::to_owned))),
            );
        }
        if victims.is_empty() {
            break;
        }
        for (key, version) in victims {
            aws.s3
                .delete_object()
                .bucket(bucket)
                .key(&key)
                .set_version_id(version)
                .send()
                .await
                .aws_context(|| format!("S3 DeleteObject s3://{bucket}/{key}"))?;
        }
    }
    aws.s3
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .aws_context(|| format!("S3 DeleteBucket {bucket}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iam_documents_decode_url_encoded_and_plain() {
        let plain = r#"{"Version": "2012-10-17", "Statement": []}"#;
        let encoded = "%7B%22Version%22%3A%20%222012-10-17%22%2C%20%22Statement%22%3A%20%5B%5D%7D";
        assert_eq!(iam_document(plain).unwrap(), iam_document(encoded).unwrap());
        assert!(iam_document("%7B").is_err());
    }

    #[test]
    fn differences_are_located() {
        let a = json!({"Statement": [{"Resource": "x"}, {"Resource": "y"}]});
        let b = json!({"Statement": [{"Resource": "x"}, {"Resource": "z"}]});
        assert_eq!(first_difference(&a, &b), "Statement[1].Resource");
        assert_eq!(first_difference(&a, &a), "nothing");
        assert_eq!(first_difference(&json!({"a": 1}), &json!({"b": 1})), "a");
        assert_eq!(first_difference(&json!(1), &json!(2)), "the document");
    }

    #[test]
    fn only_errors_about_a_role_are_retried() {
        assert!(role_not_ready(
            "Lambda CreateFunction Lab-AllowlistHook: InvalidParameterValueException: The role \
             defined for the function cannot be assumed by Lambda."
        ));
        // "Role" in the resource name before the code does not count.
        assert!(!role_not_ready(
            "IoT CreateRoleAlias Lab-TokenExchangeRoleAlias: InvalidRequestException: bad duration"
        ));
        assert!(!role_not_ready(
            "IAM CreateRole X: AccessDenied: not allowed to create role"
        ));
    }

    #[test]
    fn the_hook_resources_go_only_without_the_hook_and_the_order_stays() {
        let with = Resource::all(true);
        let without = Resource::all(false);
        assert_eq!((with.len(), without.len()), (21, 16));
        assert_eq!(with.first(), Some(&Resource::Bucket));
        assert_eq!(with.last(), Some(&Resource::Parameters));
        let kept: Vec<Resource> = with.iter().copied().filter(|r| !r.is_hook()).collect();
        assert_eq!(without, kept);
        assert_eq!(
            with.iter().position(|r| *r == Resource::HookPolicy),
            Some(12),
            "the hook comes after the provisioning role, before the template"
        );
    }

    #[test]
    fn bucket_regions() {
        assert_eq!(bucket_region(None), "us-east-1");
        assert_eq!(
            bucket_region(Some(&BucketLocationConstraint::from("EU"))),
            "eu-west-1"
        );
        assert_eq!(
            bucket_region(Some(&BucketLocationConstraint::from("cn-north-1"))),
            "cn-north-1"
        );
    }
}
