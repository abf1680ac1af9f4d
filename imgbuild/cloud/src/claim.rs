//! `imgbuild cloud claim ensure|fetch`: the fleet-provisioning claim certificate, kept in S3.
//!
//! The claim material lives in the bucket under a prefix (default `claim/`) as three objects,
//! all SSE-S3 encrypted: [`CERT_NAME`] (PEM certificate), [`KEY_NAME`] (PEM private key) and
//! [`ARN_NAME`] (the certificate ARN, one line). `ensure` creates them once; a later run only
//! checks that the certificate is still ACTIVE and the claim policy attached (attaching it again
//! if someone detached it), so it changes nothing when all is in place.
//!
//! The claim policy is created when missing, with the fleet-provisioning claim permissions
//! (`iot:Connect`; Publish/Receive on `$aws/certificates/create/*` and
//! `$aws/provisioning-templates/TEMPLATE/provision/*`; Subscribe on the same topic filters).
//! An existing policy of that name is used as it is: it is never rewritten.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_sdk_iot::types::CertificateStatus;

use crate::client::Aws;
use crate::error::{aws_bail, bail, error_code, Context, Result, SdkContext};
use crate::location::S3Location;
use crate::objects::{get_small_object, object_exists, put_small_object};

/// Object (and local file) name of the claim certificate.
pub const CERT_NAME: &str = "claim.cert.pem";
/// Object (and local file) name of the claim private key.
pub const KEY_NAME: &str = "claim.private.key";
/// Object (and local file) name of the claim certificate ARN.
pub const ARN_NAME: &str = "claim.arn";
/// Default key prefix of the claim objects.
pub const DEFAULT_PREFIX: &str = "claim/";

/// What `ensure` found or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The claim material was already in the bucket; nothing changed.
    Existing {
        /// The certificate ARN.
        certificate_arn: String,
    },
    /// The material was in the bucket but the policy had been detached: it was attached again.
    PolicyReattached {
        /// The certificate ARN.
        certificate_arn: String,
    },
    /// A new certificate was created, its policy attached and the material stored.
    Created {
        /// The certificate ARN.
        certificate_arn: String,
        /// Whether the claim policy was created too.
        policy_created: bool,
    },
}

impl ClaimOutcome {
    /// The certificate ARN.
    pub fn certificate_arn(&self) -> &str {
        match self {
            ClaimOutcome::Existing { certificate_arn }
            | ClaimOutcome::PolicyReattached { certificate_arn }
            | ClaimOutcome::Created {
                certificate_arn, ..
            } => certificate_arn,
        }
    }
}

/// The claim policy document for a provisioning template, in `region` of `account` (ARNs in
/// `partition`: `aws`, `aws-cn`, `aws-us-gov`, …).
pub fn claim_policy_document(
    partition: &str,
    region: &str,
    account: &str,
    template: &str,
) -> String {
    let topic = |t: &str| format!("arn:{partition}:iot:{region}:{account}:topic/{t}");
    let filter = |t: &str| format!("arn:{partition}:iot:{region}:{account}:topicfilter/{t}");
    let create = "$aws/certificates/create/*";
    let provision = format!("$aws/provisioning-templates/{template}/provision/*");
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            { "Effect": "Allow", "Action": "iot:Connect", "Resource": "*" },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [topic(create), topic(&provision)]
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [filter(create), filter(&provision)]
            }
        ]
    })
    .to_string()
}

/// Makes sure the bucket holds an active claim certificate with the claim policy attached.
pub async fn ensure_claim(
    aws: &Aws,
    loc: &S3Location,
    policy: &str,
    template: &str,
) -> Result<ClaimOutcome> {
    let mut present = Vec::new();
    for name in [CERT_NAME, KEY_NAME, ARN_NAME] {
        if object_exists(aws, loc, name).await? {
            present.push(name);
        }
    }
    match present.len() {
        0 => create_claim(aws, loc, policy, template).await,
        3 => check_claim(aws, loc, policy, template).await,
        _ => bail!(
            "{loc}: only {} of {CERT_NAME}, {KEY_NAME}, {ARN_NAME} exist (an earlier run was interrupted?): \
             delete them and run `imgbuild cloud claim ensure` again",
            present.join(", ")
        ),
    }
}

async fn create_claim(
    aws: &Aws,
    loc: &S3Location,
    policy: &str,
    template: &str,
) -> Result<ClaimOutcome> {
    let policy_created = ensure_policy(aws, policy, template).await?;
    let out = aws
        .iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .aws_context(|| "IoT CreateKeysAndCertificate")?;
    let (Some(arn), Some(pem), Some(keys)) =
        (out.certificate_arn, out.certificate_pem, out.key_pair)
    else {
        aws_bail!("IoT CreateKeysAndCertificate: the answer lacks the certificate, its ARN or the key pair");
    };
    let Some(private_key) = keys.private_key else {
        aws_bail!("IoT CreateKeysAndCertificate: the answer lacks the private key");
    };
    attach_policy(aws, policy, &arn).await?;
    put_small_object(aws, loc, CERT_NAME, pem.into_bytes()).await?;
    put_small_object(aws, loc, KEY_NAME, private_key.into_bytes()).await?;
    // The ARN goes last: its presence marks complete claim material.
    put_small_object(aws, loc, ARN_NAME, format!("{arn}\n").into_bytes()).await?;
    Ok(ClaimOutcome::Created {
        certificate_arn: arn,
        policy_created,
    })
}

async fn check_claim(
    aws: &Aws,
    loc: &S3Location,
    policy: &str,
    template: &str,
) -> Result<ClaimOutcome> {
    let arn = read_arn(aws, loc).await?;
    let id = certificate_id(&arn)?;
    let out = aws
        .iot
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeCertificate {id} (from {loc}{ARN_NAME})"))?;
    let status = out.certificate_description.and_then(|d| d.status);
    if status != Some(CertificateStatus::Active) {
        bail!(
            "claim certificate {id} is {}, not ACTIVE: activate it, or delete {loc}{ARN_NAME}, {CERT_NAME} and \
             {KEY_NAME} to create a new one",
            status.map(|s| s.as_str().to_owned()).unwrap_or_else(|| "of unknown status".to_owned())
        );
    }
    if attached_iot_policies(aws, &arn)
        .await?
        .iter()
        .any(|p| p == policy)
    {
        return Ok(ClaimOutcome::Existing {
            certificate_arn: arn,
        });
    }
    ensure_policy(aws, policy, template).await?;
    attach_policy(aws, policy, &arn).await?;
    Ok(ClaimOutcome::PolicyReattached {
        certificate_arn: arn,
    })
}

/// The claim material in the bucket, as found (read-only: `fleet init --dry-run` asks this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimState {
    /// None of the three objects exists.
    Absent,
    /// Only these objects exist (an interrupted run).
    Partial(Vec<&'static str>),
    /// All three exist.
    Complete {
        /// The certificate ARN.
        certificate_arn: String,
        /// Whether the certificate is ACTIVE.
        active: bool,
        /// Whether `policy` is attached to it.
        policy_attached: bool,
    },
}

/// Looks at the claim material without changing anything: which objects exist, whether the
/// certificate is ACTIVE and has `policy` attached.
pub async fn claim_state(aws: &Aws, loc: &S3Location, policy: &str) -> Result<ClaimState> {
    let mut present = Vec::new();
    for name in [CERT_NAME, KEY_NAME, ARN_NAME] {
        if object_exists(aws, loc, name).await? {
            present.push(name);
        }
    }
    match present.len() {
        0 => return Ok(ClaimState::Absent),
        3 => {}
        _ => return Ok(ClaimState::Partial(present)),
    }
    let arn = read_arn(aws, loc).await?;
    let id = certificate_id(&arn)?;
    let active = match aws
        .iot
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
    {
        Ok(out) => {
            out.certificate_description.and_then(|d| d.status) == Some(CertificateStatus::Active)
        }
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => false,
        Err(e) => {
            return Err(e)
                .aws_context(|| format!("IoT DescribeCertificate {id} (from {loc}{ARN_NAME})"))
        }
    };
    let policy_attached = active
        && attached_iot_policies(aws, &arn)
            .await?
            .iter()
            .any(|p| p == policy);
    Ok(ClaimState::Complete {
        certificate_arn: arn,
        active,
        policy_attached,
    })
}

async fn read_arn(aws: &Aws, loc: &S3Location) -> Result<String> {
    let Some(bytes) = get_small_object(aws, loc, ARN_NAME).await? else {
        bail!("{loc}{ARN_NAME} does not exist: run `imgbuild cloud claim ensure` first");
    };
    let arn = String::from_utf8_lossy(&bytes).trim().to_owned();
    certificate_id(&arn)?;
    Ok(arn)
}

/// The certificate id of an IoT certificate ARN (`arn:aws:iot:REGION:ACCOUNT:cert/ID`).
pub fn certificate_id(arn: &str) -> Result<&str> {
    match arn.split_once(":cert/") {
        Some((head, id))
            if head.starts_with("arn:")
                && !id.is_empty()
                && id.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Ok(id)
        }
        _ => {
            bail!("{arn:?} is not an AWS IoT certificate ARN (arn:aws:iot:REGION:ACCOUNT:cert/ID)")
        }
    }
}

/// The names of the IoT policies attached to `target` (a certificate ARN).
pub(crate) async fn attached_iot_policies(aws: &Aws, target: &str) -> Result<Vec<String>> {
    let out = aws
        .iot
        .list_attached_policies()
        .target(target)
        .send()
        .await
        .aws_context(|| format!("IoT ListAttachedPolicies {target}"))?;
    Ok(out
        .policies()
        .iter()
        .filter_map(|p| p.policy_name().map(str::to_owned))
        .collect())
}

/// Creates the claim policy unless a policy of that name exists; returns whether it created it.
async fn ensure_policy(aws: &Aws, policy: &str, template: &str) -> Result<bool> {
    match aws.iot.get_policy().policy_name(policy).send().await {
        Ok(_) => return Ok(false),
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {}
        Err(e) => return Err(e).aws_context(|| format!("IoT GetPolicy {policy}")),
    }
    let who = aws.caller_identity().await?;
    let document = claim_policy_document(aws.partition(), aws.region(), &who.account, template);
    create_iot_policy(aws, policy, &document).await?;
    Ok(true)
}

/// Creates the IoT policy `name` with the JSON `document`.
pub(crate) async fn create_iot_policy(aws: &Aws, name: &str, document: &str) -> Result<()> {
    aws.iot
        .create_policy()
        .policy_name(name)
        .policy_document(document)
        .send()
        .await
        .aws_context(|| format!("IoT CreatePolicy {name}"))?;
    Ok(())
}

async fn attach_policy(aws: &Aws, policy: &str, target: &str) -> Result<()> {
    aws.iot
        .attach_policy()
        .policy_name(policy)
        .target(target)
        .send()
        .await
        .aws_context(|| format!("IoT AttachPolicy {policy} to {target}"))?;
    Ok(())
}

/// The local claim files written by [`fetch_claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimFiles {
    /// The certificate (mode 0644).
    pub cert: PathBuf,
    /// The private key (mode 0600).
    pub key: PathBuf,
    /// The certificate ARN.
    pub certificate_arn: String,
}

/// Downloads the claim certificate and key into `out_dir` (created if missing); the key file is
/// created with mode 0600 and never printed.
pub async fn fetch_claim(aws: &Aws, loc: &S3Location, out_dir: &Path) -> Result<ClaimFiles> {
    let arn = read_arn(aws, loc).await?;
    let missing =
        |name: &str| format!("{loc}{name} does not exist: run `imgbuild cloud claim ensure` first");
    let Some(cert) = get_small_object(aws, loc, CERT_NAME).await? else {
        bail!("{}", missing(CERT_NAME));
    };
    let Some(key) = get_small_object(aws, loc, KEY_NAME).await? else {
        bail!("{}", missing(KEY_NAME));
    };
    std::fs::create_dir_all(out_dir)
        .context(|| format!("{}: cannot create the directory", out_dir.display()))?;
    let files = ClaimFiles {
        cert: out_dir.join(CERT_NAME),
        key: out_dir.join(KEY_NAME),
        certificate_arn: arn,
    };
    write_with_mode(&files.cert, &cert, 0o644)?;
    write_with_mode(&files.key, &key, 0o600)?;
    Ok(files)
}

/// Writes a file that has `mode` from its creation on (an existing file is chmod-ed first).
pub(crate) fn write_with_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let what = || format!("{}: cannot write", path.display());
    if path.exists() {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).context(what)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .context(what)?;
    file.write_all(data).context(what)?;
    file.sync_all().context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_ids_come_from_iot_arns_only() {
        let arn = "arn:aws:iot:eu-west-1:123456789012:cert/0a1b2c";
        assert_eq!(certificate_id(arn).unwrap(), "0a1b2c");
        for bad in [
            "",
            "cert/abc",
            "arn:aws:iot:eu-west-1:1:cert/",
            "arn:aws:iot:x:1:cert/zz",
            "arn:aws:iot:x:1:thing/a",
        ] {
            assert!(certificate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_policy_allows_exactly_the_provisioning_topics() {
        let doc: serde_json::Value = serde_json::from_str(&claim_policy_document(
            "aws",
            "eu-west-1",
            "123456789012",
            "Tpl",
        ))
        .unwrap();
        let statements = doc["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 3);
        assert_eq!(statements[0]["Action"], "iot:Connect");
        let publish = statements[1]["Resource"].as_array().unwrap();
        assert!(publish.contains(
            &"arn:aws:iot:eu-west-1:123456789012:topic/$aws/certificates/create/*".into()
        ));
        assert!(publish.contains(
            &"arn:aws:iot:eu-west-1:123456789012:topic/$aws/provisioning-templates/Tpl/provision/*"
                .into()
        ));
        let subscribe = statements[2]["Resource"].as_array().unwrap();
        assert!(subscribe
            .iter()
            .all(|r| r.as_str().unwrap().contains(":topicfilter/$aws/")));
    }
}
