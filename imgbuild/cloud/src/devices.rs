//! `imgbuild cloud devices sync`: make a thing group match the allowlist.
//!
//! Only things IN the thing group are considered for removal; things elsewhere in the account
//! are never touched, except listed ones that are added to the group. A serial maps to the
//! thing name `PREFIX + SERIAL` (`--thing-prefix`, empty by default, so thing name = serial;
//! this must match the name the provisioning template gives devices).
//!
//! For each thing in the group that is not listed: detach each principal
//! (DetachThingPrincipal); for each certificate no other thing uses: detach its policies,
//! set it REVOKED and delete it; remove the thing from the group and delete it; delete its
//! Greengrass core device.
//! For each listed thing that exists (provisioned): make sure it is in the group and, when a
//! device policy is named, attached to each of its certificates. Listed serials without a thing
//! are reported as pending (not provisioned yet).
//!
//! [`plan_sync`] only reads; [`apply_sync`] carries a plan out. `--dry-run` prints the plan and
//! stops.

use std::fmt;
use std::time::Duration;

use aws_sdk_iot::types::CertificateStatus;

use crate::allowlist::Allowlist;
use crate::claim::certificate_id;
use crate::client::Aws;
use crate::error::{error_code, Result, SdkContext};

const NOT_FOUND: &str = "ResourceNotFoundException";

/// What to sync.
#[derive(Clone, Debug)]
pub struct SyncRequest<'a> {
    /// The thing group of the fleet.
    pub thing_group: &'a str,
    /// Thing name = `thing_prefix + serial`.
    pub thing_prefix: &'a str,
    /// Policy every listed device certificate must have attached, if any.
    pub device_policy: Option<&'a str>,
}

/// The cleanup of one principal of a thing being removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalCleanup {
    /// The principal ARN (usually a certificate).
    pub principal: String,
    /// Policies to detach from the certificate before deleting it.
    pub policies: Vec<String>,
    /// Whether the certificate is revoked and deleted (false when other things still use it or
    /// the principal is not a certificate: then it is only detached from the thing).
    pub delete_certificate: bool,
}

/// The removal of one thing that is in the group but not on the allowlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The thing name.
    pub thing: String,
    /// Its principals.
    pub principals: Vec<PrincipalCleanup>,
    /// Whether a Greengrass core device of that name exists (and is deleted).
    pub core_device: bool,
}

/// What a sync will do; built by [`plan_sync`] without changing anything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncPlan {
    /// The thing group.
    pub thing_group: String,
    /// Things in the group before the sync.
    pub things_in_group: usize,
    /// Serials on the allowlist.
    pub listed: usize,
    /// Listed things that are fine as they are.
    pub keep: Vec<String>,
    /// Listed, provisioned things to add to the group.
    pub add_to_group: Vec<String>,
    /// (thing, certificate ARN) pairs that need the device policy attached.
    pub attach_policy: Vec<(String, String)>,
    /// The device policy attached by `attach_policy`.
    pub device_policy: Option<String>,
    /// Things to remove.
    pub remove: Vec<Removal>,
    /// Listed serials with no thing yet.
    pub pending: Vec<String>,
}

impl SyncPlan {
    /// Whether carrying the plan out would change nothing.
    pub fn is_noop(&self) -> bool {
        self.add_to_group.is_empty() && self.attach_policy.is_empty() && self.remove.is_empty()
    }
}

impl fmt::Display for SyncPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "thing group {}: {} things in the group, {} serials on the allowlist",
            self.thing_group, self.things_in_group, self.listed
        )?;
        for thing in &self.keep {
            writeln!(f, "  keep     {thing}")?;
        }
        for thing in &self.add_to_group {
            writeln!(f, "  add      {thing} to thing group {}", self.thing_group)?;
        }
        let policy = self.device_policy.as_deref().unwrap_or("");
        for (thing, cert) in &self.attach_policy {
            writeln!(
                f,
                "  attach   policy {policy} to {thing}'s certificate {}",
                short_id(cert)
            )?;
        }
        for removal in &self.remove {
            writeln!(
                f,
                "  remove   {}: {}",
                removal.thing,
                removal_steps(removal).join("; ")
            )?;
        }
        for serial in &self.pending {
            writeln!(f, "  pending  {serial} (no thing yet: not provisioned)")?;
        }
        write!(
            f,
            "plan: keep {}, add to group {}, attach policy {}, remove {}, pending {}",
            self.keep.len(),
            self.add_to_group.len(),
            self.attach_policy.len(),
            self.remove.len(),
            self.pending.len()
        )
    }
}

fn short_id(principal: &str) -> &str {
    certificate_id(principal).unwrap_or(principal)
}

fn removal_steps(removal: &Removal) -> Vec<String> {
    let mut steps = Vec::new();
    for p in &removal.principals {
        steps.push(format!("detach {}", short_id(&p.principal)));
        if p.delete_certificate {
            if !p.policies.is_empty() {
                steps.push(format!("detach policies {}", p.policies.join(", ")));
            }
            steps.push(format!(
                "revoke and delete certificate {}",
                short_id(&p.principal)
            ));
        }
    }
    steps.push("remove from group and delete thing".to_owned());
    if removal.core_device {
        steps.push("delete Greengrass core device".to_owned());
    }
    steps
}

/// Reads the account and works out what a sync would do; changes nothing.
pub async fn plan_sync(
    aws: &Aws,
    allowlist: &Allowlist,
    req: &SyncRequest<'_>,
) -> Result<SyncPlan> {
    let group = req.thing_group;
    aws.iot
        .describe_thing_group()
        .thing_group_name(group)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeThingGroup {group}"))?;
    let listed_members: Vec<String> = aws
        .iot
        .list_things_in_thing_group()
        .thing_group_name(group)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .aws_context(|| format!("IoT ListThingsInThingGroup {group}"))?;
    // Group listings can still show a thing deleted a moment ago: keep the ones that exist.
    let mut members = Vec::new();
    for thing in listed_members {
        if thing_exists(aws, &thing).await? {
            members.push(thing);
        }
    }
    let mut plan = SyncPlan {
        thing_group: group.to_owned(),
        things_in_group: members.len(),
        listed: allowlist.serials().len(),
        device_policy: req.device_policy.map(str::to_owned),
        ..SyncPlan::default()
    };
    let is_listed = |thing: &str| {
        thing
            .strip_prefix(req.thing_prefix)
            .is_some_and(|serial| allowlist.contains(serial))
    };
    for thing in &members {
        if is_listed(thing) {
            plan_listed(aws, &mut plan, thing, true).await?;
        } else {
            plan.remove.push(plan_removal(aws, thing).await?);
        }
    }
    for serial in allowlist.serials() {
        let thing = format!("{}{serial}", req.thing_prefix);
        if members.contains(&thing) {
            continue;
        }
        if thing_exists(aws, &thing).await? {
            plan_listed(aws, &mut plan, &thing, false).await?;
        } else {
            plan.pending.push(serial.clone());
        }
    }
    Ok(plan)
}

async fn thing_exists(aws: &Aws, thing: &str) -> Result<bool> {
    match aws.iot.describe_thing().thing_name(thing).send().await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) => Err(e).aws_context(|| format!("IoT DescribeThing {thing}")),
    }
}

/// Plans the fix-ups of a listed, provisioned thing.
async fn plan_listed(aws: &Aws, plan: &mut SyncPlan, thing: &str, in_group: bool) -> Result<()> {
    let mut fine = in_group;
    if !in_group {
        plan.add_to_group.push(thing.to_owned());
    }
    if let Some(policy) = plan.device_policy.clone() {
        for principal in thing_principals(aws, thing).await? {
            if certificate_id(&principal).is_ok()
                && !attached_policies(aws, &principal).await?.contains(&policy)
            {
                plan.attach_policy.push((thing.to_owned(), principal));
                fine = false;
            }
        }
    }
    if fine {
        plan.keep.push(thing.to_owned());
    }
    Ok(())
}

/// Plans the removal of an unlisted thing.
async fn plan_removal(aws: &Aws, thing: &str) -> Result<Removal> {
    let mut principals = Vec::new();
    for principal in thing_principals(aws, thing).await? {
        let is_cert = certificate_id(&principal).is_ok();
        let shared = if is_cert {
            let users: Vec<String> = aws
                .iot
                .list_principal_things()
                .principal(&principal)
                .into_paginator()
                .items()
                .send()
                .try_collect()
                .await
                .aws_context(|| format!("IoT ListPrincipalThings {principal}"))?;
            users.iter().any(|t| t != thing)
        } else {
            false
        };
        let delete_certificate = is_cert && !shared;
        let policies = if delete_certificate {
            attached_policies(aws, &principal).await?
        } else {
            Vec::new()
        };
        principals.push(PrincipalCleanup {
            principal,
            policies,
            delete_certificate,
        });
    }
    Ok(Removal {
        thing: thing.to_owned(),
        principals,
        core_device: core_device_exists(aws, thing).await?,
    })
}

async fn thing_principals(aws: &Aws, thing: &str) -> Result<Vec<String>> {
    aws.iot
        .list_thing_principals()
        .thing_name(thing)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .aws_context(|| format!("IoT ListThingPrincipals {thing}"))
}

async fn attached_policies(aws: &Aws, target: &str) -> Result<Vec<String>> {
    let policies = aws
        .iot
        .list_attached_policies()
        .target(target)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .aws_context(|| format!("IoT ListAttachedPolicies {target}"))?;
    Ok(policies.into_iter().filter_map(|p| p.policy_name).collect())
}

async fn core_device_exists(aws: &Aws, thing: &str) -> Result<bool> {
    match aws
        .greengrass
        .get_core_device()
        .core_device_thing_name(thing)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) => Err(e).aws_context(|| format!("Greengrass GetCoreDevice {thing}")),
    }
}

/// What [`apply_sync`] changed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// Things added to the group.
    pub added_to_group: usize,
    /// Policy attachments made.
    pub policies_attached: usize,
    /// Things deleted.
    pub things_deleted: usize,
    /// Certificates revoked and deleted.
    pub certificates_deleted: usize,
    /// Greengrass core devices deleted.
    pub core_devices_deleted: usize,
}

/// Carries a plan out: fix-ups first, then removals; stops at the first failure (a rerun plans
/// again from the account's state, so it continues where this one stopped).
pub async fn apply_sync(aws: &Aws, plan: &SyncPlan) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for thing in &plan.add_to_group {
        aws.iot
            .add_thing_to_thing_group()
            .thing_group_name(&plan.thing_group)
            .thing_name(thing)
            .send()
            .await
            .aws_context(|| format!("IoT AddThingToThingGroup {thing} -> {}", plan.thing_group))?;
        report.added_to_group += 1;
    }
    if let Some(policy) = &plan.device_policy {
        for (_, cert) in &plan.attach_policy {
            aws.iot
                .attach_policy()
                .policy_name(policy)
                .target(cert)
                .send()
                .await
                .aws_context(|| format!("IoT AttachPolicy {policy} to {cert}"))?;
            report.policies_attached += 1;
        }
    }
    for removal in &plan.remove {
        remove_thing(aws, &plan.thing_group, removal, &mut report).await?;
    }
    Ok(report)
}

async fn remove_thing(
    aws: &Aws,
    group: &str,
    removal: &Removal,
    report: &mut SyncReport,
) -> Result<()> {
    let thing = removal.thing.as_str();
    for p in &removal.principals {
        aws.iot
            .detach_thing_principal()
            .thing_name(thing)
            .principal(&p.principal)
            .send()
            .await
            .aws_context(|| format!("IoT DetachThingPrincipal {thing} {}", p.principal))?;
    }
    for p in removal.principals.iter().filter(|p| p.delete_certificate) {
        delete_certificate(aws, p).await?;
        report.certificates_deleted += 1;
    }
    aws.iot
        .remove_thing_from_thing_group()
        .thing_group_name(group)
        .thing_name(thing)
        .send()
        .await
        .aws_context(|| format!("IoT RemoveThingFromThingGroup {thing} <- {group}"))?;
    aws.iot
        .delete_thing()
        .thing_name(thing)
        .send()
        .await
        .aws_context(|| format!("IoT DeleteThing {thing}"))?;
    report.things_deleted += 1;
    if removal.core_device {
        match aws
            .greengrass
            .delete_core_device()
            .core_device_thing_name(thing)
            .send()
            .await
        {
            Ok(_) => report.core_devices_deleted += 1,
            Err(e) if error_code(&e) == Some(NOT_FOUND) => {}
            Err(e) => return Err(e).aws_context(|| format!("Greengrass DeleteCoreDevice {thing}")),
        }
    }
    Ok(())
}

async fn delete_certificate(aws: &Aws, p: &PrincipalCleanup) -> Result<()> {
    let cert = p.principal.as_str();
    let id = certificate_id(cert)?;
    for policy in &p.policies {
        aws.iot
            .detach_policy()
            .policy_name(policy)
            .target(cert)
            .send()
            .await
            .aws_context(|| format!("IoT DetachPolicy {policy} from {cert}"))?;
    }
    aws.iot
        .update_certificate()
        .certificate_id(id)
        .new_status(CertificateStatus::Revoked)
        .send()
        .await
        .aws_context(|| format!("IoT UpdateCertificate {id} REVOKED"))?;
    // DetachThingPrincipal is eventually consistent on AWS: DeleteCertificate can report the
    // thing still attached for a few seconds.
    let mut attempt = 0;
    loop {
        match aws.iot.delete_certificate().certificate_id(id).send().await {
            Ok(_) => return Ok(()),
            Err(e) if error_code(&e) == Some("DeleteConflictException") && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2 * attempt)).await;
            }
            Err(e) => return Err(e).aws_context(|| format!("IoT DeleteCertificate {id}")),
        }
    }
}
