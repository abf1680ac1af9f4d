//! `imgbuild cloud deploy`: a Greengrass v2 deployment of components to a thing group.
//!
//! `components.json` is the `components` map of Greengrass CreateDeployment (the same file
//! `aws greengrassv2 create-deployment --components file://components.json` takes):
//!
//! ```json
//! { "com.example.App": { "componentVersion": "1.0.0",
//!                        "configurationUpdate": { "merge": "{\"x\":1}", "reset": ["/y"] },
//!                        "runWith": { "posixUser": "ggc_user" } } }
//! ```
//!
//! Unknown keys are errors, so a typo does not silently drop a setting.

use std::collections::BTreeMap;
use std::path::Path;

use aws_sdk_greengrassv2::types::{
    ComponentConfigurationUpdate, ComponentDeploymentSpecification, ComponentRunWith,
};
use serde::Deserialize;

use crate::client::Aws;
use crate::error::{bail, Context, Result, SdkContext};

/// One component of `components.json`.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentSpec {
    /// The component version to deploy.
    pub component_version: String,
    /// Configuration changes.
    #[serde(default)]
    pub configuration_update: Option<ConfigurationUpdate>,
    /// The system user the component runs as.
    #[serde(default)]
    pub run_with: Option<RunWith>,
}

/// `configurationUpdate` of a component.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationUpdate {
    /// A JSON document (as a string) merged into the configuration.
    #[serde(default)]
    pub merge: Option<String>,
    /// JSON pointers of values reset to their defaults.
    #[serde(default)]
    pub reset: Vec<String>,
}

/// `runWith` of a component.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunWith {
    /// `user[:group]` the component runs as.
    #[serde(default)]
    pub posix_user: Option<String>,
}

/// Reads and validates a components file.
pub fn read_components(path: &Path) -> Result<BTreeMap<String, ComponentSpec>> {
    let text = std::fs::read_to_string(path)
        .context(|| format!("{}: cannot read the components file", path.display()))?;
    let components: BTreeMap<String, ComponentSpec> = serde_json::from_str(&text).context(|| {
        format!(
            "{}: not a Greengrass components map ({{\"NAME\": {{\"componentVersion\": \"1.0.0\"}}}})",
            path.display()
        )
    })?;
    if components.is_empty() {
        bail!("{}: no components listed", path.display());
    }
    for (name, spec) in &components {
        if name.trim().is_empty() || spec.component_version.trim().is_empty() {
            bail!(
                "{}: component {name:?} needs a name and a componentVersion",
                path.display()
            );
        }
    }
    Ok(components)
}

/// A created deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment id.
    pub deployment_id: String,
    /// The thing group ARN it targets.
    pub target_arn: String,
}

/// Creates a deployment of `components` to the thing group.
pub async fn deploy(
    aws: &Aws,
    thing_group: &str,
    components: &BTreeMap<String, ComponentSpec>,
    name: Option<&str>,
) -> Result<Deployment> {
    let group = aws
        .iot
        .describe_thing_group()
        .thing_group_name(thing_group)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeThingGroup {thing_group}"))?;
    let Some(target_arn) = group.thing_group_arn else {
        bail!("IoT DescribeThingGroup {thing_group}: no ARN returned");
    };
    let mut request = aws
        .greengrass
        .create_deployment()
        .target_arn(&target_arn)
        .deployment_name(
            name.map(str::to_owned)
                .unwrap_or_else(|| format!("imgbuild-{thing_group}")),
        );
    for (component, spec) in components {
        request = request.components(component, to_sdk(component, spec)?);
    }
    let out = request
        .send()
        .await
        .aws_context(|| format!("Greengrass CreateDeployment to {target_arn}"))?;
    let Some(deployment_id) = out.deployment_id else {
        bail!("Greengrass CreateDeployment to {target_arn}: no deployment id returned");
    };
    Ok(Deployment {
        deployment_id,
        target_arn,
    })
}

fn to_sdk(name: &str, spec: &ComponentSpec) -> Result<ComponentDeploymentSpecification> {
    let update = spec.configuration_update.as_ref().map(|u| {
        ComponentConfigurationUpdate::builder()
            .set_merge(u.merge.clone())
            .set_reset((!u.reset.is_empty()).then(|| u.reset.clone()))
            .build()
    });
    let run_with = spec.run_with.as_ref().map(|r| {
        ComponentRunWith::builder()
            .set_posix_user(r.posix_user.clone())
            .build()
    });
    ComponentDeploymentSpecification::builder()
        .component_version(&spec.component_version)
        .set_configuration_update(update)
        .set_run_with(run_with)
        .build()
        .context(|| format!("component {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BTreeMap<String, ComponentSpec>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("components.json");
        std::fs::write(&path, text).unwrap();
        read_components(&path)
    }

    #[test]
    fn the_cli_components_format_is_read() {
        let c = parse(
            r#"{"com.example.App": {"componentVersion": "1.2.3",
                "configurationUpdate": {"merge": "{\"a\":1}", "reset": ["/b"]},
                "runWith": {"posixUser": "ggc_user:ggc_group"}},
               "aws.greengrass.Cli": {"componentVersion": "2.12.0"}}"#,
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        let app = &c["com.example.App"];
        assert_eq!(app.component_version, "1.2.3");
        assert_eq!(app.configuration_update.as_ref().unwrap().reset, ["/b"]);
        let sdk = to_sdk("com.example.App", app).unwrap();
        assert_eq!(sdk.component_version(), "1.2.3");
        assert_eq!(
            sdk.configuration_update().and_then(|u| u.merge()),
            Some("{\"a\":1}")
        );
        assert_eq!(
            sdk.run_with().and_then(|r| r.posix_user()),
            Some("ggc_user:ggc_group")
        );
    }

    #[test]
    fn typos_and_empty_files_are_rejected_naming_the_file() {
        for bad in [
            r#"{"a": {"componentversion": "1"}}"#,
            r#"{"a": {"componentVersion": "1", "extra": true}}"#,
            "{}",
            "[]",
            "not json",
            r#"{"a": {"componentVersion": " "}}"#,
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("components.json"), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
