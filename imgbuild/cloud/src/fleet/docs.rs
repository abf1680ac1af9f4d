//! The names and documents `fleet init` creates: every policy names only this fleet's
//! resources, in the region's partition.
//!
//! Read first (AWS IoT Greengrass V2 Developer Guide, "Set up AWS IoT fleet provisioning for
//! Greengrass core devices", fleet-provisioning-setup.md, and "Device authentication and
//! authorization", device-auth.md#greengrass-core-minimal-iot-policy; AWS IoT Core Developer
//! Guide, "Provisioning templates", provision-template.md):
//! - token exchange role: trusted by `credentials.iot.amazonaws.com`; the guide's access policy
//!   allows `iot:DescribeCertificate`, `logs:CreateLogGroup|CreateLogStream|PutLogEvents|
//!   DescribeLogStreams` and `s3:GetBucketLocation` on `*`. Here each is scoped: the Greengrass
//!   log groups (`/aws/greengrass/*`), the account's certificates, the fleet bucket, plus
//!   `s3:GetObject` on the bucket's `components/` prefix for component artifacts.
//! - role alias pointing at that role; the device policy must allow
//!   `iot:AssumeRoleWithCertificate` on the alias.
//! - device IoT policy: the guide's minimal core-device policy (Connect on `client/THING*`,
//!   Publish/Receive on the thing's `greengrass/health/json`, `greengrassv2/health/json`,
//!   `jobs/*`, `shadow/*` topics, Subscribe on the `jobs/*` and `shadow/*` filters, the thing's
//!   shadow, the four Greengrass data-plane actions), with THING = this fleet's thing-name
//!   prefix, so a fleet's devices cannot act as another fleet's.
//! - provisioning role: trusted by `iot.amazonaws.com`, with the AWS managed policy
//!   `service-role/AWSIoTThingsRegistration` (as the guide does).
//! - provisioning template: parameters `SerialNumber` and `AWS::IoT::Certificate::Id`; a thing
//!   named `PREFIX + SerialNumber` (`Fn::Join`, an intrinsic function of fleet provisioning
//!   templates) in the fleet's thing group, the device policy by name, the certificate
//!   `Active`. `ThingName` and `ThingGroupName`, which imgbuild's plugin configuration also
//!   sends, are declared with defaults and not used: the name and group are the template's.
//! - claim policy: [`crate::claim::claim_policy_document`], the guide's policy limited to the
//!   template's MQTT topics.

use serde_json::{json, Value};

use crate::error::{bail, Result};

/// Longest fleet name: the provisioning template name (`NAME-Template`) must stay within
/// AWS IoT's 36 characters.
pub const MAX_NAME_LEN: usize = 24;

/// The AWS managed policy the provisioning role gets (the guide's choice).
pub const THINGS_REGISTRATION_POLICY: &str = "policy/service-role/AWSIoTThingsRegistration";

/// Key prefix in the fleet bucket whose objects core devices may download (component artifacts).
pub const COMPONENTS_PREFIX: &str = "components/";

/// Tag key (value: the fleet name) on the bucket `fleet init` created; `fleet destroy` deletes
/// a bucket only when it carries this tag.
pub const BUCKET_TAG: &str = "imgbuild-fleet";

/// Statement id of the Lambda permission that lets AWS IoT invoke the hook.
pub const HOOK_PERMISSION_SID: &str = "imgbuild-iot-pre-provisioning-hook";

/// Payload version of the pre-provisioning hook (the only one AWS IoT defines).
pub const HOOK_PAYLOAD_VERSION: &str = "2020-04-01";

/// The AWS partition of a region: `aws-cn` for China, `aws-us-gov` for GovCloud, the ISO
/// partitions, else `aws`.
pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else if region.starts_with("us-isob-") {
        "aws-iso-b"
    } else if region.starts_with("us-isof-") {
        "aws-iso-f"
    } else if region.starts_with("eu-isoe-") {
        "aws-iso-e"
    } else if region.starts_with("us-iso-") {
        "aws-iso"
    } else {
        "aws"
    }
}

/// Where the fleet lives and what it is called: everything the names and documents derive from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetSpec {
    /// The fleet name (prefix of every resource name).
    pub name: String,
    /// The fleet's private bucket (claim material, parameters, allowlist, artifacts).
    pub bucket: String,
    /// Thing name = prefix + serial number.
    pub thing_prefix: String,
    /// Whether the allowlist pre-provisioning hook is part of the fleet.
    pub hook: bool,
    /// AWS Region.
    pub region: String,
    /// Account id.
    pub account: String,
}

/// Checks a fleet name: 1-24 characters of `A-Z a-z 0-9 -`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        bail!(
            "fleet name {name:?} is invalid: use 1-{MAX_NAME_LEN} characters of A-Z, a-z, 0-9 and '-', \
             starting with a letter or digit"
        );
    }
    Ok(())
}

/// Checks a thing-name prefix: characters AWS IoT allows in thing names (`A-Z a-z 0-9 : _ -`).
pub fn check_thing_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 64
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
    {
        bail!(
            "thing prefix {prefix:?} is invalid: use at most 64 characters of A-Z, a-z, 0-9, ':', '_' and '-'"
        );
    }
    Ok(())
}

/// The default bucket of a fleet: `NAME-fleet-ACCOUNT-REGION`, lower case (bucket names are
/// global, the account and region make it unique).
pub fn default_bucket(name: &str, account: &str, region: &str) -> String {
    format!("{}-fleet-{account}-{region}", name.to_ascii_lowercase())
}

impl FleetSpec {
    /// The region's partition.
    pub fn partition(&self) -> &'static str {
        partition(&self.region)
    }

    fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:{}:{service}:{}:{}:{resource}",
            self.partition(),
            self.region,
            self.account
        )
    }

    fn iam_arn(&self, resource: &str) -> String {
        format!("arn:{}:iam::{}:{resource}", self.partition(), self.account)
    }

    /// The token exchange IAM role.
    pub fn token_role(&self) -> String {
        format!("{}-TokenExchangeRole", self.name)
    }
    /// The token exchange role's access policy (customer managed).
    pub fn token_policy(&self) -> String {
        format!("{}-TokenExchangeRoleAccess", self.name)
    }
    /// The IoT role alias of the token exchange role.
    pub fn role_alias(&self) -> String {
        format!("{}-TokenExchangeRoleAlias", self.name)
    }
    /// The IoT policy of the devices' certificates.
    pub fn device_policy(&self) -> String {
        format!("{}-DevicePolicy", self.name)
    }
    /// The IAM role AWS IoT provisions with.
    pub fn provisioning_role(&self) -> String {
        format!("{}-ProvisioningRole", self.name)
    }
    /// The fleet provisioning template.
    pub fn template(&self) -> String {
        format!("{}-Template", self.name)
    }
    /// The IoT policy of the claim certificate.
    pub fn claim_policy(&self) -> String {
        format!("{}-ClaimPolicy", self.name)
    }
    /// The (static) thing group of the fleet.
    pub fn thing_group(&self) -> String {
        self.name.clone()
    }
    /// The pre-provisioning hook function.
    pub fn hook_function(&self) -> String {
        format!("{}-AllowlistHook", self.name)
    }
    /// The hook function's execution role.
    pub fn hook_role(&self) -> String {
        format!("{}-AllowlistHookRole", self.name)
    }
    /// The hook role's access policy (customer managed).
    pub fn hook_policy(&self) -> String {
        format!("{}-AllowlistHookAccess", self.name)
    }

    /// ARN of an IAM role of the account.
    pub fn role_arn(&self, role: &str) -> String {
        self.iam_arn(&format!("role/{role}"))
    }
    /// ARN of a customer managed IAM policy of the account.
    pub fn policy_arn(&self, policy: &str) -> String {
        self.iam_arn(&format!("policy/{policy}"))
    }
    /// ARN of the AWS managed AWSIoTThingsRegistration policy in this partition.
    pub fn things_registration_arn(&self) -> String {
        format!(
            "arn:{}:iam::aws:{THINGS_REGISTRATION_POLICY}",
            self.partition()
        )
    }
    /// ARN of the role alias.
    pub fn role_alias_arn(&self) -> String {
        self.arn("iot", &format!("rolealias/{}", self.role_alias()))
    }
    /// ARN of the provisioning template.
    pub fn template_arn(&self) -> String {
        self.arn("iot", &format!("provisioningtemplate/{}", self.template()))
    }
    /// ARN of the hook function.
    pub fn hook_function_arn(&self) -> String {
        self.arn("lambda", &format!("function:{}", self.hook_function()))
    }
    /// ARN of the fleet bucket.
    pub fn bucket_arn(&self) -> String {
        format!("arn:{}:s3:::{}", self.partition(), self.bucket)
    }

    /// Trust policy of a role that `service` (e.g. `iot.amazonaws.com`) may assume.
    pub fn trust_policy(service: &str) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Service": service },
                "Action": "sts:AssumeRole"
            }]
        })
    }

    /// The token exchange role's access policy: Greengrass logs, certificate lookups, the
    /// fleet bucket's location and its `components/` artifacts.
    pub fn token_policy_document(&self) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "GreengrassLogs",
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                    "Resource": self.arn("logs", "log-group:/aws/greengrass/*")
                },
                {
                    "Sid": "DeviceCertificates",
                    "Effect": "Allow",
                    "Action": "iot:DescribeCertificate",
                    "Resource": self.arn("iot", "cert/*")
                },
                {
                    "Sid": "FleetBucketLocation",
                    "Effect": "Allow",
                    "Action": "s3:GetBucketLocation",
                    "Resource": self.bucket_arn()
                },
                {
                    "Sid": "ComponentArtifacts",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": format!("{}/{COMPONENTS_PREFIX}*", self.bucket_arn())
                }
            ]
        })
    }

    /// The device IoT policy: the guide's minimal Greengrass core device policy for things
    /// named `PREFIX*`, and the token exchange role through this fleet's alias only.
    pub fn device_policy_document(&self) -> Value {
        let things = format!("$aws/things/{}*", self.thing_prefix);
        let topic = |t: &str| self.arn("iot", &format!("topic/{things}/{t}"));
        let filter = |t: &str| self.arn("iot", &format!("topicfilter/{things}/{t}"));
        json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "iot:Connect",
                    "Resource": self.arn("iot", &format!("client/{}*", self.thing_prefix))
                },
                {
                    "Effect": "Allow",
                    "Action": ["iot:Receive", "iot:Publish"],
                    "Resource": [
                        topic("greengrass/health/json"),
                        topic("greengrassv2/health/json"),
                        topic("jobs/*"),
                        topic("shadow/*")
                    ]
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:Subscribe",
                    "Resource": [filter("jobs/*"), filter("shadow/*")]
                },
                {
                    "Effect": "Allow",
                    "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
                    "Resource": self.arn("iot", &format!("thing/{}*", self.thing_prefix))
                },
                {
                    "Effect": "Allow",
                    "Action": "iot:AssumeRoleWithCertificate",
                    "Resource": self.role_alias_arn()
                },
                {
                    "Effect": "Allow",
                    "Action": [
                        "greengrass:GetComponentVersionArtifact",
                        "greengrass:ResolveComponentCandidates",
                        "greengrass:GetDeploymentConfiguration",
                        "greengrass:ListThingGroupsForCoreDevice"
                    ],
                    "Resource": "*"
                }
            ]
        })
    }

    /// The hook's execution policy: read the allowlist object, write the function's own logs.
    pub fn hook_policy_document(&self) -> Value {
        let logs = self.arn(
            "logs",
            &format!("log-group:/aws/lambda/{}:*", self.hook_function()),
        );
        json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadAllowlist",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": format!("{}/{}", self.bucket_arn(), allowlist_key())
                },
                {
                    "Sid": "OwnLogs",
                    "Effect": "Allow",
                    "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                    "Resource": logs
                }
            ]
        })
    }

    /// The fleet provisioning template body.
    pub fn template_body(&self) -> Value {
        json!({
            "Parameters": {
                "SerialNumber": { "Type": "String" },
                "ThingName": { "Type": "String", "Default": "" },
                "ThingGroupName": { "Type": "String", "Default": "" },
                "AWS::IoT::Certificate::Id": { "Type": "String" }
            },
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "OverrideSettings": {
                        "AttributePayload": "REPLACE",
                        "ThingGroups": "REPLACE",
                        "ThingTypeName": "REPLACE"
                    },
                    "Properties": {
                        "ThingName": { "Fn::Join": ["", [self.thing_prefix.as_str(), { "Ref": "SerialNumber" }]] },
                        "AttributePayload": {},
                        "ThingGroups": [self.thing_group()]
                    }
                },
                "policy": {
                    "Type": "AWS::IoT::Policy",
                    "Properties": { "PolicyName": self.device_policy() }
                },
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {
                        "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" },
                        "Status": "Active"
                    }
                }
            }
        })
    }
}

/// Key of the allowlist object the hook reads (where `provisioning publish --allowlist` puts it).
pub fn allowlist_key() -> String {
    format!(
        "{}{}",
        crate::provisioning::DEFAULT_PREFIX,
        crate::provisioning::ALLOWLIST_NAME
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(region: &str) -> FleetSpec {
        FleetSpec {
            name: "Lab".into(),
            bucket: "lab-fleet-123456789012-eu-west-1".into(),
            thing_prefix: "Lab-".into(),
            hook: false,
            region: region.into(),
            account: "123456789012".into(),
        }
    }

    /// Every ARN in a document.
    fn arns(doc: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![doc];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) if s.starts_with("arn:") => out.push(s.clone()),
                Value::Array(a) => stack.extend(a),
                Value::Object(o) => stack.extend(o.values()),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn partitions_follow_the_region() {
        assert_eq!(partition("eu-west-1"), "aws");
        assert_eq!(partition("cn-north-1"), "aws-cn");
        assert_eq!(partition("cn-northwest-1"), "aws-cn");
        assert_eq!(partition("us-gov-west-1"), "aws-us-gov");
        assert_eq!(partition("us-iso-east-1"), "aws-iso");
        assert_eq!(partition("us-isob-east-1"), "aws-iso-b");
    }

    #[test]
    fn every_arn_is_in_the_regions_partition_and_names_this_fleet() {
        for region in ["eu-west-1", "cn-north-1", "us-gov-west-1"] {
            let s = spec(region);
            let p = partition(region);
            for doc in [
                s.token_policy_document(),
                s.device_policy_document(),
                s.hook_policy_document(),
            ] {
                let found = arns(&doc);
                assert!(!found.is_empty());
                for arn in found {
                    assert!(arn.starts_with(&format!("arn:{p}:")), "{arn}");
                    assert!(
                        arn.contains("Lab")
                            || arn.contains("lab-fleet")
                            || arn.contains("/aws/greengrass/")
                            || arn.ends_with(":cert/*"),
                        "{arn} is not scoped to the fleet"
                    );
                }
            }
        }
    }

    #[test]
    fn the_device_policy_is_scoped_to_the_fleets_things_and_alias() {
        let doc = spec("eu-west-1").device_policy_document();
        let text = doc.to_string();
        assert!(text.contains("\"arn:aws:iot:eu-west-1:123456789012:client/Lab-*\""));
        assert!(text.contains(
            "\"arn:aws:iot:eu-west-1:123456789012:rolealias/Lab-TokenExchangeRoleAlias\""
        ));
        assert!(!text.contains("client/*"), "{text}");
        // Only the Greengrass data-plane actions (which take no resource) use "*".
        for st in doc["Statement"].as_array().unwrap() {
            if st["Resource"] == "*" {
                assert!(st["Action"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|a| a.as_str().unwrap().starts_with("greengrass:")));
            }
        }
    }

    #[test]
    fn the_template_names_the_thing_from_the_serial_in_the_group_with_the_device_policy() {
        let body = spec("eu-west-1").template_body();
        let thing = &body["Resources"]["thing"]["Properties"];
        assert_eq!(
            thing["ThingName"],
            json!({"Fn::Join": ["", ["Lab-", {"Ref": "SerialNumber"}]]})
        );
        assert_eq!(thing["ThingGroups"], json!(["Lab"]));
        assert_eq!(
            body["Resources"]["policy"]["Properties"]["PolicyName"],
            "Lab-DevicePolicy"
        );
        assert_eq!(
            body["Resources"]["certificate"]["Properties"]["CertificateId"],
            json!({"Ref": "AWS::IoT::Certificate::Id"})
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("Lab-1").is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
        for bad in ["", "-a", "a_b", "a b", "ä", &"a".repeat(MAX_NAME_LEN + 1)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("fleet name"), "{err}");
        }
        assert!(check_thing_prefix("").is_ok());
        assert!(check_thing_prefix("a:b_c-").is_ok());
        assert!(check_thing_prefix("a/b").is_err());
        let b = default_bucket("Lab-X", "123456789012", "ap-southeast-2");
        assert_eq!(b, "lab-x-fleet-123456789012-ap-southeast-2");
        assert!(crate::location::check_bucket_name(&default_bucket(
            &"A".repeat(MAX_NAME_LEN),
            "123456789012",
            "ap-southeast-2"
        ))
        .is_ok());
    }
}
