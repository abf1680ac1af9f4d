//! `imgbuild cloud provisioning publish|fetch`: the fleet-provisioning parameters of a build.
//!
//! `publish` resolves the account's `iot:Data-ATS` and `iot:CredentialProvider` endpoints,
//! checks that the role alias, provisioning template and thing group exist, and writes
//! [`ProvisioningParams`] as JSON locally and to `s3://BUCKET/PREFIX/provisioning.json`; the
//! allowlist (validated first) goes to `PREFIX/allowlist.txt`. The JSON keys are those of the
//! `[greengrass]` section of `imgbuild.toml`, so a build can take them over unchanged.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::allowlist::Allowlist;
use crate::claim::write_with_mode;
use crate::client::Aws;
use crate::error::{aws_bail, bail, error_code, Context, Result, SdkContext};
use crate::location::S3Location;
use crate::objects::{get_small_object, put_small_object};

/// Object name of the parameters file.
pub const PARAMS_NAME: &str = "provisioning.json";
/// Object name of the published allowlist.
pub const ALLOWLIST_NAME: &str = "allowlist.txt";
/// Default key prefix of the provisioning objects.
pub const DEFAULT_PREFIX: &str = "provisioning/";

/// The fleet-provisioning parameters an image needs (keys as in `[greengrass]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningParams {
    /// AWS Region of the IoT resources.
    pub region: String,
    /// The `iot:Data-ATS` endpoint.
    pub data_endpoint: String,
    /// The `iot:CredentialProvider` endpoint.
    pub credential_endpoint: String,
    /// Role alias of the token exchange role.
    pub role_alias: String,
    /// Fleet provisioning template name.
    pub provisioning_template: String,
    /// Thing group the template puts devices in.
    pub thing_group: String,
}

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishRequest<'a> {
    /// Where the parameters and allowlist go.
    pub location: S3Location,
    /// Role alias of the token exchange role.
    pub role_alias: &'a str,
    /// Fleet provisioning template name.
    pub template: &'a str,
    /// Thing group of the fleet.
    pub thing_group: &'a str,
    /// Allowlist to validate and upload, if any.
    pub allowlist: Option<&'a Path>,
    /// Local file the parameters JSON is written to.
    pub out: &'a Path,
}

/// Resolves the parameters, checks the named resources exist, writes them locally and to S3.
pub async fn publish(aws: &Aws, req: &PublishRequest<'_>) -> Result<ProvisioningParams> {
    let allowlist = match req.allowlist {
        Some(path) => Some((path, Allowlist::read(path)?)),
        None => None,
    };
    check_resources(aws, req).await?;
    let params = ProvisioningParams {
        region: aws.region().to_owned(),
        data_endpoint: endpoint(aws, "iot:Data-ATS").await?,
        credential_endpoint: endpoint(aws, "iot:CredentialProvider").await?,
        role_alias: req.role_alias.to_owned(),
        provisioning_template: req.template.to_owned(),
        thing_group: req.thing_group.to_owned(),
    };
    let json = params_json(&params)?;
    write_with_mode(req.out, json.as_bytes(), 0o644)?;
    put_small_object(aws, &req.location, PARAMS_NAME, json.into_bytes()).await?;
    if let Some((path, _)) = allowlist {
        let text = std::fs::read(path)
            .context(|| format!("{}: cannot read the allowlist", path.display()))?;
        put_small_object(aws, &req.location, ALLOWLIST_NAME, text).await?;
    }
    Ok(params)
}

/// The parameters as the pretty JSON `publish` writes (with a final newline).
pub fn params_json(params: &ProvisioningParams) -> Result<String> {
    let mut json =
        serde_json::to_string_pretty(params).context(|| "encoding the provisioning parameters")?;
    json.push('\n');
    Ok(json)
}

/// Downloads published parameters and writes them to `out`.
pub async fn fetch(aws: &Aws, loc: &S3Location, out: &Path) -> Result<ProvisioningParams> {
    let Some(bytes) = get_small_object(aws, loc, PARAMS_NAME).await? else {
        bail!("{loc}{PARAMS_NAME} does not exist: run `imgbuild cloud provisioning publish` first");
    };
    let params: ProvisioningParams = serde_json::from_slice(&bytes)
        .context(|| format!("{loc}{PARAMS_NAME}: not provisioning parameters"))?;
    write_with_mode(out, params_json(&params)?.as_bytes(), 0o644)?;
    Ok(params)
}

/// An endpoint address of the account (DescribeEndpoint).
pub(crate) async fn endpoint(aws: &Aws, kind: &str) -> Result<String> {
    let out = aws
        .iot
        .describe_endpoint()
        .endpoint_type(kind)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeEndpoint {kind}"))?;
    match out.endpoint_address {
        Some(address) if !address.is_empty() => Ok(address),
        _ => aws_bail!("IoT DescribeEndpoint {kind}: no address returned"),
    }
}

/// Fails with one line naming the first of role alias, template or thing group that is missing.
async fn check_resources(aws: &Aws, req: &PublishRequest<'_>) -> Result<()> {
    let missing = |what: &str, name: &str| {
        format!(
            "{what} {name:?} does not exist in {}: create it or fix the name",
            aws.region()
        )
    };
    match aws
        .iot
        .describe_role_alias()
        .role_alias(req.role_alias)
        .send()
        .await
    {
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            bail!("{}", missing("role alias", req.role_alias))
        }
        other => other
            .aws_context(|| format!("IoT DescribeRoleAlias {}", req.role_alias))
            .map(drop)?,
    }
    match aws
        .iot
        .describe_provisioning_template()
        .template_name(req.template)
        .send()
        .await
    {
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            bail!("{}", missing("provisioning template", req.template))
        }
        other => other
            .aws_context(|| format!("IoT DescribeProvisioningTemplate {}", req.template))
            .map(drop)?,
    }
    match aws
        .iot
        .describe_thing_group()
        .thing_group_name(req.thing_group)
        .send()
        .await
    {
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
            bail!("{}", missing("thing group", req.thing_group))
        }
        other => other
            .aws_context(|| format!("IoT DescribeThingGroup {}", req.thing_group))
            .map(drop)?,
    }
    Ok(())
}
