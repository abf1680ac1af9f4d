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
//! Unknown keys are errors, so a typo does not silently drop a setting. A `componentVersion` of
//! `latest` is resolved with ListComponentVersions ([`resolve_latest`]) before deploying: the
//! greatest release version (pre-releases only when there is no release) of the account's
//! component, or of the public AWS component for names starting with `aws.`.
//!
//! [`wait`] follows a deployment (`--wait`): each poll lists the group's things and, for each,
//! its Greengrass core device's effective deployments (ListEffectiveDeployments), until every
//! core device of the group reports a terminal status for this deployment or the timeout
//! passes. Things without a core device (not provisioned, or the nucleus never connected) are
//! reported and not waited for.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_greengrassv2::types::{
    ComponentConfigurationUpdate, ComponentDeploymentSpecification, ComponentRunWith,
};
use serde::Deserialize;

use crate::client::Aws;
use crate::error::{aws_bail, bail, error_code, CloudError, Context, Result, SdkContext};

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
    let target_arn = group_arn(aws, thing_group).await?;
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
        aws_bail!("Greengrass CreateDeployment to {target_arn}: no deployment id returned");
    };
    Ok(Deployment {
        deployment_id,
        target_arn,
    })
}

/// The version string that asks for the newest version of a component.
pub const LATEST: &str = "latest";

/// A component version given as `latest` and what it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The component name.
    pub component: String,
    /// The version chosen.
    pub version: String,
    /// The component ARN it was looked up under.
    pub arn: String,
}

/// Replaces every `latest` component version by the newest version ListComponentVersions
/// knows: for `aws.*` names the public AWS component, otherwise the account's own. The ARN's
/// partition and account come from the thing group's ARN (`arn:PARTITION:iot:REGION:ACCOUNT:…`).
pub async fn resolve_latest(
    aws: &Aws,
    thing_group: &str,
    components: &mut BTreeMap<String, ComponentSpec>,
) -> Result<Vec<Resolved>> {
    if !components.values().any(|c| c.component_version == LATEST) {
        return Ok(Vec::new());
    }
    let group_arn = group_arn(aws, thing_group).await?;
    let (partition, account) = match group_arn.split(':').collect::<Vec<_>>()[..] {
        ["arn", partition, _, _, account, ..] => (partition.to_owned(), account.to_owned()),
        _ => aws_bail!("IoT DescribeThingGroup {thing_group}: unexpected ARN {group_arn}"),
    };
    let mut resolved = Vec::new();
    for (name, spec) in components.iter_mut() {
        if spec.component_version != LATEST {
            continue;
        }
        let owner = if name.starts_with("aws.") {
            "aws"
        } else {
            account.as_str()
        };
        let arn = format!(
            "arn:{partition}:greengrass:{}:{owner}:components:{name}",
            aws.region()
        );
        let versions: Vec<String> = match aws
            .greengrass
            .list_component_versions()
            .arn(&arn)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
        {
            Ok(items) => items
                .into_iter()
                .filter_map(|v| v.component_version)
                .collect(),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Vec::new(),
            Err(e) => {
                return Err(e).aws_context(|| format!("Greengrass ListComponentVersions {arn}"))
            }
        };
        let Some(version) = newest(&versions) else {
            bail!(
                "component {name}: \"latest\" found no versions ({arn}); create the component \
                 version first or give componentVersion explicitly"
            );
        };
        spec.component_version = version.clone();
        resolved.push(Resolved {
            component: name.clone(),
            version,
            arn,
        });
    }
    Ok(resolved)
}

/// The greatest semantic version of `versions`: the greatest release (a pre-release only when there is no release); strings that are
/// not `MAJOR.MINOR.PATCH[-PRE][+BUILD]` are ignored.
pub fn newest(versions: &[String]) -> Option<String> {
    let parsed: Vec<(SemVer, &String)> = versions
        .iter()
        .filter_map(|v| SemVer::parse(v).map(|s| (s, v)))
        .collect();
    let releases = parsed.iter().filter(|(s, _)| s.pre.is_empty());
    let pick = if parsed.iter().any(|(s, _)| s.pre.is_empty()) {
        releases.max_by(|a, b| a.0.cmp(&b.0))
    } else {
        parsed.iter().max_by(|a, b| a.0.cmp(&b.0))
    };
    pick.map(|(_, v)| (*v).clone())
}

/// A parsed semantic version, ordered as semver.org says (build metadata ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
struct SemVer {
    core: [u64; 3],
    pre: Vec<String>,
}

impl SemVer {
    fn parse(text: &str) -> Option<SemVer> {
        let text = text.split('+').next()?;
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, pre.split('.').map(str::to_owned).collect()),
            None => (text, Vec::new()),
        };
        let mut numbers = [0u64; 3];
        let mut parts = core.split('.');
        for n in &mut numbers {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *n = part.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(SemVer { core: numbers, pre })
    }
}

impl Ord for SemVer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let ord = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(x), Ok(y)) => x.cmp(&y),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if ord != Ordering::Equal {
                            return ord;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

impl PartialOrd for SemVer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The ARN of thing group `thing_group` (DescribeThingGroup).
async fn group_arn(aws: &Aws, thing_group: &str) -> Result<String> {
    let group = aws
        .iot
        .describe_thing_group()
        .thing_group_name(thing_group)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeThingGroup {thing_group}"))?;
    match group.thing_group_arn {
        Some(arn) => Ok(arn),
        None => aws_bail!("IoT DescribeThingGroup {thing_group}: no ARN returned"),
    }
}

/// What `cloud deploy` is asked to do (see [`run`]).
#[derive(Clone, Debug)]
pub struct DeployRequest<'a> {
    /// The thing group to deploy to.
    pub thing_group: &'a str,
    /// The components file ([`read_components`]).
    pub components: &'a Path,
    /// Deployment name (default `imgbuild-GROUP`).
    pub name: Option<&'a str>,
    /// Follow the deployment ([`wait`]) with these options.
    pub wait: Option<WaitOptions>,
}

/// What [`run`] reports while it works, in this order.
#[derive(Clone, Copy, Debug)]
pub enum DeployEvent<'a> {
    /// A `latest` component version was resolved.
    Resolved(&'a Resolved),
    /// The deployment was created.
    Created(&'a Deployment),
    /// While waiting: a device's status changed (`THING STATUS`).
    Device(&'a str),
}

/// `cloud deploy [--wait]`: reads the components, resolves `latest` versions, creates the
/// deployment and, with [`DeployRequest::wait`], follows it. Returns the wait report (`None`
/// without waiting); [`WaitReport::into_result`] turns a failed or late device into the error
/// with its exit status.
pub async fn run(
    aws: &Aws,
    req: &DeployRequest<'_>,
    mut on_event: impl FnMut(DeployEvent<'_>),
) -> Result<Option<WaitReport>> {
    let mut components = read_components(req.components)?;
    for r in resolve_latest(aws, req.thing_group, &mut components).await? {
        on_event(DeployEvent::Resolved(&r));
    }
    let d = deploy(aws, req.thing_group, &components, req.name).await?;
    on_event(DeployEvent::Created(&d));
    let Some(options) = req.wait else {
        return Ok(None);
    };
    let report = wait(aws, req.thing_group, &d.deployment_id, options, |line| {
        on_event(DeployEvent::Device(line))
    })
    .await?;
    Ok(Some(report))
}

/// How [`wait`] polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// Give up (devices still pending count as timed out) after this long.
    pub timeout: Duration,
    /// Pause between polls.
    pub poll_interval: Duration,
}

/// Parses `--timeout`/`--poll-interval`: a positive number with `ms`, `s`, `m`, `h` or `d`
/// (`250ms`, `30s`, `20m`, `2h`), at most 7 days.
pub fn parse_wait_duration(s: &str) -> Result<Duration> {
    let text = s.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("duration {s:?} is invalid: write a number with ms, s, m, h or d, e.g. 30m"),
    };
    let Ok(count) = digits.parse::<u64>() else {
        bail!("duration {s:?} is invalid: write a number with ms, s, m, h or d, e.g. 30m");
    };
    let duration = Duration::from_millis(count.saturating_mul(unit_ms));
    if duration.is_zero() || duration > Duration::from_secs(7 * 86_400) {
        bail!("duration {s:?} is out of range: from 1ms to 7d");
    }
    Ok(duration)
}

/// Default of `--timeout`.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default of `--poll-interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Where one device stands with the deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceStatus {
    /// `WAITING` (the device has not received it yet), or the core device execution status:
    /// QUEUED, IN_PROGRESS, SUCCEEDED, COMPLETED, FAILED, REJECTED, CANCELED, TIMED_OUT.
    pub status: String,
    /// The reason the device gave, if any.
    pub reason: Option<String>,
    /// statusDetails.errorTypes, if any.
    pub error_types: Vec<String>,
}

impl DeviceStatus {
    fn verdict(&self) -> Verdict {
        match self.status.as_str() {
            "SUCCEEDED" | "COMPLETED" => Verdict::Succeeded,
            "FAILED" | "REJECTED" | "CANCELED" => Verdict::Failed,
            "TIMED_OUT" => Verdict::TimedOut,
            _ => Verdict::Pending,
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.status)?;
        if let Some(reason) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            write!(f, " ({reason})")?;
        }
        if !self.error_types.is_empty() {
            write!(f, " [{}]", self.error_types.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Succeeded,
    Failed,
    TimedOut,
    Pending,
}

/// How a followed deployment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every core device of the group succeeded (exit status 0).
    Succeeded,
    /// At least one device failed, was rejected or cancelled (exit status 3).
    Failed,
    /// None failed, but at least one timed out or had not finished by `--timeout` (exit status 4).
    TimedOut,
}

/// Exit status of `deploy --wait` when a device failed (2 is clap's usage error).
pub const EXIT_FAILED: u8 = 3;
/// Exit status of `deploy --wait` when a device timed out.
pub const EXIT_TIMED_OUT: u8 = 4;

/// What [`wait`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitReport {
    /// The deployment followed.
    pub deployment_id: String,
    /// Core devices of the group and their last status.
    pub devices: BTreeMap<String, DeviceStatus>,
    /// Things of the group without a Greengrass core device (not waited for).
    pub without_core_device: Vec<String>,
    /// How it ended.
    pub outcome: Outcome,
}

impl WaitReport {
    fn names(&self, verdict: Verdict) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, s)| s.verdict() == verdict)
            .map(|(thing, s)| format!("{thing} {s}"))
            .collect()
    }

    /// One line: how many devices succeeded, failed, timed out.
    pub fn summary(&self) -> String {
        let count = |v| self.devices.values().filter(|s| s.verdict() == v).count();
        let timed_out = count(Verdict::TimedOut) + count(Verdict::Pending);
        let mut text = format!(
            "deployment {}: {} succeeded, {} failed, {} timed out",
            self.deployment_id,
            count(Verdict::Succeeded),
            count(Verdict::Failed),
            timed_out
        );
        if !self.without_core_device.is_empty() {
            text.push_str(&format!(
                "; not waited for (no Greengrass core device): {}",
                self.without_core_device.join(", ")
            ));
        }
        text
    }

    /// `Ok` when every device succeeded; otherwise the one-line error with exit status
    /// [`EXIT_FAILED`] or [`EXIT_TIMED_OUT`].
    pub fn into_result(self) -> Result<WaitReport> {
        match self.outcome {
            Outcome::Succeeded => Ok(self),
            Outcome::Failed => Err(CloudError::DeploymentFailed(format!(
                "deployment {} failed on {}",
                self.deployment_id,
                self.names(Verdict::Failed).join("; ")
            ))),
            Outcome::TimedOut => {
                let mut late = self.names(Verdict::TimedOut);
                late.extend(self.names(Verdict::Pending));
                Err(CloudError::DeploymentTimedOut(format!(
                    "deployment {} did not finish in time on {} (rerun with a longer --timeout, or \
                     check that the devices are online)",
                    self.deployment_id,
                    late.join("; ")
                )))
            }
        }
    }
}

/// Follows a deployment to `thing_group` until every core device of the group reports a
/// terminal status for it, or `options.timeout` passes. `progress` gets a line
/// (`THING STATUS`) each time a device's status changes.
pub async fn wait(
    aws: &Aws,
    thing_group: &str,
    deployment_id: &str,
    options: WaitOptions,
    mut progress: impl FnMut(&str),
) -> Result<WaitReport> {
    let deadline = Instant::now() + options.timeout;
    let mut devices: BTreeMap<String, DeviceStatus> = BTreeMap::new();
    let mut without_core_device = Vec::new();
    loop {
        let members: Vec<String> = aws
            .iot
            .list_things_in_thing_group()
            .thing_group_name(thing_group)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .aws_context(|| format!("IoT ListThingsInThingGroup {thing_group}"))?;
        without_core_device.clear();
        for thing in members {
            if devices
                .get(&thing)
                .is_some_and(|s| s.verdict() != Verdict::Pending)
            {
                continue;
            }
            let Some(status) = device_status(aws, &thing, deployment_id).await? else {
                without_core_device.push(thing);
                continue;
            };
            if devices.get(&thing) != Some(&status) {
                progress(&format!("{thing} {status}"));
                devices.insert(thing, status);
            }
        }
        let pending = devices.values().any(|s| s.verdict() == Verdict::Pending);
        if !pending || Instant::now() >= deadline {
            break;
        }
        let deployment = aws
            .greengrass
            .get_deployment()
            .deployment_id(deployment_id)
            .send()
            .await
            .aws_context(|| format!("Greengrass GetDeployment {deployment_id}"))?;
        if let Some(status) = deployment
            .deployment_status
            .filter(|s| s.as_str() != "ACTIVE")
        {
            // Replaced by a newer revision or cancelled: pending devices will never finish it.
            for (thing, s) in devices.iter_mut() {
                if s.verdict() == Verdict::Pending {
                    s.status = "CANCELED".to_owned();
                    s.reason = Some(format!("the deployment is {}", status.as_str()));
                    progress(&format!("{thing} {s}"));
                }
            }
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(options.poll_interval.min(left)).await;
    }
    let any = |v: Verdict| devices.values().any(|s| s.verdict() == v);
    let outcome = if any(Verdict::Failed) {
        Outcome::Failed
    } else if any(Verdict::TimedOut) || any(Verdict::Pending) {
        Outcome::TimedOut
    } else {
        Outcome::Succeeded
    };
    Ok(WaitReport {
        deployment_id: deployment_id.to_owned(),
        devices,
        without_core_device,
        outcome,
    })
}

/// The status of `deployment_id` on the core device `thing`; None when `thing` is no core device.
async fn device_status(
    aws: &Aws,
    thing: &str,
    deployment_id: &str,
) -> Result<Option<DeviceStatus>> {
    let deployments: Vec<_> = match aws
        .greengrass
        .list_effective_deployments()
        .core_device_thing_name(thing)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
    {
        Ok(items) => items,
        Err(e) if error_code(&e) == Some("ResourceNotFoundException") => return Ok(None),
        Err(e) => {
            return Err(e).aws_context(|| format!("Greengrass ListEffectiveDeployments {thing}"))
        }
    };
    let mine = deployments
        .into_iter()
        .find(|d| d.deployment_id == deployment_id);
    Ok(Some(match mine {
        None => DeviceStatus {
            status: "WAITING".to_owned(),
            reason: None,
            error_types: Vec::new(),
        },
        Some(d) => DeviceStatus {
            status: d.core_device_execution_status.as_str().to_owned(),
            reason: d.reason,
            error_types: d
                .status_details
                .and_then(|s| s.error_types)
                .unwrap_or_default(),
        },
    }))
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
    fn wait_durations_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_wait_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_wait_duration("30m").unwrap(),
            Duration::from_secs(1800)
        );
        assert_eq!(
            parse_wait_duration(" 2h ").unwrap(),
            Duration::from_secs(7200)
        );
        for bad in [
            "",
            "0s",
            "10",
            "5x",
            "-1s",
            "8d",
            "99999999999999999999s",
            "1.5h",
        ] {
            let err = parse_wait_duration(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn newest_follows_semver_and_prefers_releases() {
        let v = |list: &[&str]| newest(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["1.9.0", "1.10.0", "1.2.0"]).as_deref(), Some("1.10.0"));
        assert_eq!(v(&["2.0.0-rc.1", "1.9.9"]).as_deref(), Some("1.9.9"));
        assert_eq!(
            v(&["2.0.0-rc.2", "2.0.0-rc.10", "2.0.0-beta"]).as_deref(),
            Some("2.0.0-rc.10")
        );
        assert_eq!(
            v(&["2.0.0-rc.1", "2.0.0+build5", "1.0.0"]).as_deref(),
            Some("2.0.0+build5")
        );
        assert_eq!(v(&["latest", "1.x", "", "01a.0.0", "1.2.3.4"]), None);
        assert_eq!(v(&[]), None);
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
