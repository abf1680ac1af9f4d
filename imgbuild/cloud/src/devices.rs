//! `imgbuild cloud devices sync` (make a thing group match the allowlist) and `devices ls`.
//!
//! Only things IN the thing group are considered for removal; things elsewhere in the account
//! are never touched, except listed ones that are added to the group. A serial maps to the
//! thing name `PREFIX + SERIAL` (`--thing-prefix`, empty by default, so thing name = serial;
//! this must match the name the provisioning template gives devices).
//!
//! Guards (before anything is read for a plan or changed): an allowlist without serials is
//! refused, and so is a dynamic thing group (its membership is a fleet-index query: AWS refuses
//! to add or remove things by hand). The CLI adds `--max-removals` and `--yes` on top of the
//! plan ([`approve`]).
//!
//! Removing an unlisted thing, in this order, so that an interrupted run resumes on rerun:
//! 1. mark the thing (attribute [`REMOVAL_ATTRIBUTE`] = group, [`REMOVAL_CERTS_ATTRIBUTE`] =
//!    the ids of the certificates to delete): a rerun finds marked things even once they left
//!    the group, and their certificates even once detached;
//! 2. remove it from the group (it gets no further deployments);
//! 3. detach each principal; for each certificate no other thing uses: detach its policies,
//!    set it REVOKED, delete it;
//! 4. delete the thing and its Greengrass core device.
//!
//! For each listed thing that exists (provisioned): make sure it is in the group (and not
//! marked) and, when a device policy is named, attached to each of its certificates. Listed
//! serials without a thing are reported as pending (not provisioned yet).
//!
//! [`plan_sync`] only reads; [`apply_sync`] carries a plan out. `--dry-run` prints the plan and
//! stops.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_iot::types::{AttributePayload, CertificateDescription, CertificateStatus};
use serde::Serialize;

use crate::allowlist::Allowlist;
use crate::claim::certificate_id;
use crate::client::Aws;
use crate::error::{bail, error_code, Result, SdkContext};

const NOT_FOUND: &str = "ResourceNotFoundException";

/// Thing attribute marking a thing whose removal has started: its value is the thing group.
pub const REMOVAL_ATTRIBUTE: &str = "imgbuild_removal";
/// Thing attribute listing (comma-separated) the ids of the certificates a removal deletes.
pub const REMOVAL_CERTS_ATTRIBUTE: &str = "imgbuild_removal_certs";
/// Default of `--max-removals`.
pub const DEFAULT_MAX_REMOVALS: usize = 5;

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
    /// Whether it is still attached to the thing (false for a certificate a previous,
    /// interrupted run already detached).
    pub attached: bool,
    /// Policies to detach from the certificate before deleting it.
    pub policies: Vec<String>,
    /// Whether the certificate is revoked and deleted (false when other things still use it or
    /// the principal is not a certificate: then it is only detached from the thing).
    pub delete_certificate: bool,
    /// Whether the certificate is REVOKED already.
    pub revoked: bool,
}

/// The removal of one thing that is in the group (or was, see `marked`) but not on the allowlist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// The thing name.
    pub thing: String,
    /// Whether the thing is still in the group.
    pub in_group: bool,
    /// Whether a previous run marked it already (the removal resumes).
    pub marked: bool,
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
    /// Listed things marked for removal by an interrupted run: the mark is cleared.
    pub unmark: Vec<String>,
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
        self.add_to_group.is_empty()
            && self.unmark.is_empty()
            && self.attach_policy.is_empty()
            && self.remove.is_empty()
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
        for thing in &self.unmark {
            writeln!(
                f,
                "  unmark   {thing} (listed again: its interrupted removal is cancelled)"
            )?;
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
    if removal.marked {
        steps.push("resume an interrupted removal".to_owned());
    }
    if removal.in_group {
        steps.push("remove from group".to_owned());
    }
    for p in &removal.principals {
        if p.attached {
            steps.push(format!("detach {}", short_id(&p.principal)));
        }
        if p.delete_certificate {
            if !p.policies.is_empty() {
                steps.push(format!("detach policies {}", p.policies.join(", ")));
            }
            let revoke = if p.revoked { "" } else { "revoke and " };
            steps.push(format!(
                "{revoke}delete certificate {}",
                short_id(&p.principal)
            ));
        }
    }
    steps.push("delete thing".to_owned());
    if removal.core_device {
        steps.push("delete Greengrass core device".to_owned());
    }
    steps
}

/// Fails unless `group` exists and is a static thing group.
///
/// A dynamic thing group (DescribeThingGroup answers with a `queryString`, and an `indexName`
/// and `status` ACTIVE|BUILDING|REBUILDING) has its membership computed from a fleet-index
/// query; AWS refuses AddThingToThingGroup/RemoveThingFromThingGroup for it, so a sync could
/// never make it match an allowlist.
pub async fn require_static_group(aws: &Aws, group: &str) -> Result<()> {
    let described = aws
        .iot
        .describe_thing_group()
        .thing_group_name(group)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeThingGroup {group}"))?;
    if described.query_string.is_some() || described.status.is_some() {
        bail!(
            "thing group {group} is a dynamic thing group (query {:?}): its members follow the fleet \
             index, not an allowlist, and AWS does not let things be added to or removed from it; \
             give the static thing group the provisioning template adds devices to",
            described.query_string.unwrap_or_default()
        );
    }
    Ok(())
}

/// Reads the account and works out what a sync would do; changes nothing.
///
/// Refuses an allowlist without serials (it would remove every device of the group) and a
/// dynamic thing group, before reading anything else.
pub async fn plan_sync(
    aws: &Aws,
    allowlist: &Allowlist,
    req: &SyncRequest<'_>,
) -> Result<SyncPlan> {
    let group = req.thing_group;
    if allowlist.serials().is_empty() {
        bail!(
            "the allowlist lists no serial numbers (only comments or blank lines): refusing to sync \
             thing group {group}, which would remove every device in it; list the devices to keep"
        );
    }
    require_static_group(aws, group).await?;
    let listed_members = group_members(aws, group).await?;
    // Group listings can still show a thing deleted a moment ago: keep the ones that exist.
    let mut members = Vec::new();
    for thing in listed_members {
        if thing_exists(aws, &thing).await? {
            members.push(thing);
        }
    }
    // Things an interrupted run marked (and maybe already removed from the group).
    let marked = marked_things(aws, group).await?;
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
        let mark = marked.get(thing);
        if is_listed(thing) {
            if mark.is_some() {
                plan.unmark.push(thing.clone());
            }
            plan_listed(aws, &mut plan, thing, true, mark.is_some()).await?;
        } else {
            plan.remove
                .push(plan_removal(aws, thing, true, mark).await?);
        }
    }
    for (thing, certs) in &marked {
        if members.contains(thing) || is_listed(thing) {
            continue;
        }
        plan.remove
            .push(plan_removal(aws, thing, false, Some(certs)).await?);
    }
    for serial in allowlist.serials() {
        let thing = format!("{}{serial}", req.thing_prefix);
        if members.contains(&thing) {
            continue;
        }
        if thing_exists(aws, &thing).await? {
            if marked.contains_key(&thing) {
                plan.unmark.push(thing.clone());
            }
            plan_listed(aws, &mut plan, &thing, false, false).await?;
        } else {
            plan.pending.push(serial.clone());
        }
    }
    Ok(plan)
}

async fn group_members(aws: &Aws, group: &str) -> Result<Vec<String>> {
    aws.iot
        .list_things_in_thing_group()
        .thing_group_name(group)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .aws_context(|| format!("IoT ListThingsInThingGroup {group}"))
}

/// Things marked by an interrupted removal from `group`, with the certificate ids recorded.
async fn marked_things(aws: &Aws, group: &str) -> Result<BTreeMap<String, Vec<String>>> {
    let things: Vec<_> = aws
        .iot
        .list_things()
        .attribute_name(REMOVAL_ATTRIBUTE)
        .attribute_value(group)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .aws_context(|| format!("IoT ListThings {REMOVAL_ATTRIBUTE}={group}"))?;
    let mut marked = BTreeMap::new();
    for thing in things {
        let Some(name) = thing.thing_name else {
            continue;
        };
        let certs = thing
            .attributes
            .as_ref()
            .and_then(|a| a.get(REMOVAL_CERTS_ATTRIBUTE))
            .map(|v| {
                v.split(',')
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        marked.insert(name, certs);
    }
    Ok(marked)
}

async fn thing_exists(aws: &Aws, thing: &str) -> Result<bool> {
    match aws.iot.describe_thing().thing_name(thing).send().await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(false),
        Err(e) => Err(e).aws_context(|| format!("IoT DescribeThing {thing}")),
    }
}

/// Plans the fix-ups of a listed, provisioned thing.
async fn plan_listed(
    aws: &Aws,
    plan: &mut SyncPlan,
    thing: &str,
    in_group: bool,
    marked: bool,
) -> Result<()> {
    let mut fine = in_group && !marked;
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

/// Plans the removal of an unlisted thing; `recorded` holds the certificate ids of its mark.
async fn plan_removal(
    aws: &Aws,
    thing: &str,
    in_group: bool,
    recorded: Option<&Vec<String>>,
) -> Result<Removal> {
    let mut principals = Vec::new();
    let attached = thing_principals(aws, thing).await?;
    let mut candidates: Vec<(String, bool)> = attached.into_iter().map(|p| (p, true)).collect();
    // Certificates an interrupted run recorded and may have detached already.
    for id in recorded.into_iter().flatten() {
        if candidates
            .iter()
            .any(|(p, _)| certificate_id(p).ok() == Some(id.as_str()))
        {
            continue;
        }
        if let Some(arn) = certificate_arn(aws, id).await? {
            candidates.push((arn, false));
        }
    }
    for (principal, is_attached) in candidates {
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
        let (policies, revoked) = if delete_certificate {
            (
                attached_policies(aws, &principal).await?,
                certificate_status(aws, &principal).await? == Some(CertificateStatus::Revoked),
            )
        } else {
            (Vec::new(), false)
        };
        principals.push(PrincipalCleanup {
            principal,
            attached: is_attached,
            policies,
            delete_certificate,
            revoked,
        });
    }
    Ok(Removal {
        thing: thing.to_owned(),
        in_group,
        marked: recorded.is_some(),
        principals,
        core_device: core_device_exists(aws, thing).await?,
    })
}

/// The IoT description of certificate `id`, or None when it no longer exists.
async fn certificate_description(aws: &Aws, id: &str) -> Result<Option<CertificateDescription>> {
    match aws
        .iot
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
    {
        Ok(out) => Ok(out.certificate_description),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(None),
        Err(e) => Err(e).aws_context(|| format!("IoT DescribeCertificate {id}")),
    }
}

/// The ARN of a certificate, or None when it no longer exists.
async fn certificate_arn(aws: &Aws, id: &str) -> Result<Option<String>> {
    Ok(certificate_description(aws, id)
        .await?
        .and_then(|d| d.certificate_arn))
}

/// The status of the certificate with ARN `arn`, or None when it no longer exists.
async fn certificate_status(aws: &Aws, arn: &str) -> Result<Option<CertificateStatus>> {
    Ok(certificate_description(aws, certificate_id(arn)?)
        .await?
        .and_then(|d| d.status))
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
    Ok(core_device(aws, thing).await?.is_some())
}

async fn core_device(
    aws: &Aws,
    thing: &str,
) -> Result<Option<aws_sdk_greengrassv2::operation::get_core_device::GetCoreDeviceOutput>> {
    match aws
        .greengrass
        .get_core_device()
        .core_device_thing_name(thing)
        .send()
        .await
    {
        Ok(out) => Ok(Some(out)),
        Err(e) if error_code(&e) == Some(NOT_FOUND) => Ok(None),
        Err(e) => Err(e).aws_context(|| format!("Greengrass GetCoreDevice {thing}")),
    }
}

/// The guards a plan with removals must pass before [`apply_sync`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guards {
    /// Most things one run may remove (`--max-removals`).
    pub max_removals: usize,
    /// Removals were confirmed up front (`--yes`).
    pub yes: bool,
}

/// What [`approve`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// Go ahead: nothing is deleted, or `--yes` was given.
    Proceed,
    /// Ask the operator (only possible on a terminal).
    Ask,
}

/// Checks a plan against the guards: more removals than `max_removals` is an error that says
/// what to pass; removals without `yes` need a confirmation ([`Approval::Ask`]).
pub fn approve(plan: &SyncPlan, guards: Guards) -> Result<Approval> {
    let n = plan.remove.len();
    if n == 0 {
        return Ok(Approval::Proceed);
    }
    if n > guards.max_removals {
        bail!(
            "the plan removes {n} things from thing group {}, more than --max-removals {}: nothing \
             was changed; check the allowlist and --thing-prefix, and if the plan is right rerun \
             with --max-removals {n} --yes",
            plan.thing_group,
            guards.max_removals
        );
    }
    Ok(if guards.yes {
        Approval::Proceed
    } else {
        Approval::Ask
    })
}

/// What `devices sync` is asked to do (see [`sync`]).
#[derive(Clone, Debug)]
pub struct SyncArgs<'a> {
    /// The allowlist file (one serial a line).
    pub allowlist: &'a std::path::Path,
    /// Thing group, thing-name prefix and device policy.
    pub request: SyncRequest<'a>,
    /// Plan only: change nothing.
    pub dry_run: bool,
    /// The guards a plan with removals must pass.
    pub guards: Guards,
}

/// What [`sync`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing was changed: a dry run, or the group already matches the allowlist.
    Unchanged,
    /// The plan was carried out.
    Applied(SyncReport),
}

/// `devices sync`: reads the allowlist, plans against the account, hands the plan to `show`
/// (before anything changes), checks the [`Guards`] — calling `confirm`, which must fail unless
/// an operator agreed, when they ask for a confirmation — and carries the plan out. A refusal
/// at any point leaves the account as it was.
pub async fn sync(
    aws: &Aws,
    args: &SyncArgs<'_>,
    show: impl FnOnce(&SyncPlan),
    confirm: impl FnOnce(&SyncPlan) -> Result<()>,
) -> Result<SyncOutcome> {
    let list = Allowlist::read(args.allowlist)?;
    let plan = plan_sync(aws, &list, &args.request)
        .await
        .map_err(|e| e.within(args.allowlist.display()))?;
    show(&plan);
    if args.dry_run || plan.is_noop() {
        return Ok(SyncOutcome::Unchanged);
    }
    if approve(&plan, args.guards)? == Approval::Ask {
        confirm(&plan)?;
    }
    apply_sync(aws, &plan).await.map(SyncOutcome::Applied)
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
/// again from the account's state and the marks, so it continues where this one stopped).
pub async fn apply_sync(aws: &Aws, plan: &SyncPlan) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    for thing in &plan.unmark {
        set_mark(aws, thing, None).await?;
    }
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

/// Sets (`Some((group, certificate ids))`) or clears (`None`) the removal mark of a thing.
async fn set_mark(aws: &Aws, thing: &str, mark: Option<(&str, &[&str])>) -> Result<()> {
    // An empty value removes an attribute when merging (UpdateThing, attributePayload.merge).
    let (group, certs) = match mark {
        Some((group, certs)) => (group.to_owned(), certs.join(",")),
        None => (String::new(), String::new()),
    };
    let payload = AttributePayload::builder()
        .attributes(REMOVAL_ATTRIBUTE, group)
        .attributes(REMOVAL_CERTS_ATTRIBUTE, certs)
        .merge(true)
        .build();
    aws.iot
        .update_thing()
        .thing_name(thing)
        .attribute_payload(payload)
        .send()
        .await
        .aws_context(|| format!("IoT UpdateThing {thing} (removal mark)"))?;
    Ok(())
}

async fn remove_thing(
    aws: &Aws,
    group: &str,
    removal: &Removal,
    report: &mut SyncReport,
) -> Result<()> {
    let thing = removal.thing.as_str();
    if !removal.marked {
        let certs: Vec<&str> = removal
            .principals
            .iter()
            .filter(|p| p.delete_certificate)
            .filter_map(|p| certificate_id(&p.principal).ok())
            .collect();
        set_mark(aws, thing, Some((group, &certs))).await?;
    }
    if removal.in_group {
        aws.iot
            .remove_thing_from_thing_group()
            .thing_group_name(group)
            .thing_name(thing)
            .send()
            .await
            .aws_context(|| format!("IoT RemoveThingFromThingGroup {thing} <- {group}"))?;
    }
    for p in removal.principals.iter().filter(|p| p.attached) {
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
    if !p.revoked {
        aws.iot
            .update_certificate()
            .certificate_id(id)
            .new_status(CertificateStatus::Revoked)
            .send()
            .await
            .aws_context(|| format!("IoT UpdateCertificate {id} REVOKED"))?;
    }
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

/// One device of `cloud devices ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceRow {
    /// The thing name.
    pub thing: String,
    /// The serial (thing name without the prefix), if the name has the prefix.
    pub serial: Option<String>,
    /// Its certificates: (certificate id, status: ACTIVE, INACTIVE, REVOKED, ...).
    pub certificates: Vec<CertificateRow>,
    /// Greengrass core device status (HEALTHY, UNHEALTHY), None when there is no core device.
    pub core_device_status: Option<String>,
    /// When the core device last reported its status (RFC 3339, UTC).
    pub last_status_update: Option<String>,
}

/// A certificate of a listed device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateRow {
    /// The certificate id.
    pub id: String,
    /// ACTIVE, INACTIVE, REVOKED, PENDING_TRANSFER, ... (None if it vanished meanwhile).
    pub status: Option<String>,
}

/// Lists the things of a thing group with their certificates and Greengrass core device state.
pub async fn list_devices(aws: &Aws, group: &str, thing_prefix: &str) -> Result<Vec<DeviceRow>> {
    aws.iot
        .describe_thing_group()
        .thing_group_name(group)
        .send()
        .await
        .aws_context(|| format!("IoT DescribeThingGroup {group}"))?;
    let mut things = group_members(aws, group).await?;
    things.sort();
    things.dedup();
    let mut rows = Vec::new();
    for thing in things {
        if !thing_exists(aws, &thing).await? {
            continue;
        }
        let mut certificates = Vec::new();
        for principal in thing_principals(aws, &thing).await? {
            if let Ok(id) = certificate_id(&principal) {
                certificates.push(CertificateRow {
                    id: id.to_owned(),
                    status: certificate_status(aws, &principal)
                        .await?
                        .map(|s| s.as_str().to_owned()),
                });
            }
        }
        let core = core_device(aws, &thing).await?;
        let last_status_update = core
            .as_ref()
            .and_then(|c| c.last_status_update_timestamp.as_ref())
            .and_then(|t| {
                t.fmt(aws_sdk_greengrassv2::primitives::DateTimeFormat::DateTime)
                    .ok()
            });
        rows.push(DeviceRow {
            serial: thing.strip_prefix(thing_prefix).map(str::to_owned),
            certificates,
            core_device_status: core.and_then(|c| c.status).map(|s| s.as_str().to_owned()),
            last_status_update,
            thing,
        });
    }
    Ok(rows)
}

/// The `devices ls` table: one line a device, with a header.
pub fn devices_table(rows: &[DeviceRow]) -> String {
    let dash = || "-".to_owned();
    let mut lines = vec![[
        "THING".to_owned(),
        "SERIAL".to_owned(),
        "CERTIFICATE".to_owned(),
        "CORE DEVICE".to_owned(),
        "LAST STATUS UPDATE".to_owned(),
    ]];
    for r in rows {
        let certs = if r.certificates.is_empty() {
            "none".to_owned()
        } else {
            r.certificates
                .iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        &c.id[..c.id.len().min(10)],
                        c.status.as_deref().unwrap_or("GONE")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push([
            r.thing.clone(),
            r.serial.clone().unwrap_or_else(dash),
            certs,
            r.core_device_status
                .clone()
                .unwrap_or_else(|| "none".to_owned()),
            r.last_status_update.clone().unwrap_or_else(dash),
        ]);
    }
    let mut widths = [0usize; 5];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    lines
        .iter()
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
