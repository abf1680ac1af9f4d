//! Helpers of the fleet-operation tests (devices sync guards, devices ls, deploy --wait): the
//! full comparable state of an account and a seeded fleet, read and made through the SDK.
#![allow(dead_code)]

use std::collections::BTreeMap;

use imgbuild_cloud::Aws;

use crate::common::Moto;

/// The device policy of the seeded fleet.
pub const DEVICE_POLICY: &str = "DevicePolicy";

/// A thing's (groups, principals, attributes).
pub type ThingState = (Vec<String>, Vec<String>, BTreeMap<String, String>);

/// Everything a sync or deploy could touch, as one comparable value.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct State {
    /// thing -> (groups, principals, attributes)
    pub things: BTreeMap<String, ThingState>,
    /// thing group -> members
    pub groups: BTreeMap<String, Vec<String>>,
    /// certificate ARN -> (status, attached policies)
    pub certificates: BTreeMap<String, (String, Vec<String>)>,
    /// core device -> status
    pub core_devices: BTreeMap<String, String>,
    /// IoT policies
    pub policies: Vec<String>,
    /// Greengrass deployment ids
    pub deployments: Vec<String>,
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Reads the whole state.
pub async fn state(aws: &Aws) -> State {
    let mut things = BTreeMap::new();
    for thing in aws.iot.list_things().send().await.unwrap().things() {
        let name = thing.thing_name().unwrap().to_owned();
        let out = aws
            .iot
            .list_thing_groups_for_thing()
            .thing_name(&name)
            .send()
            .await
            .unwrap();
        let groups = sorted(
            out.thing_groups()
                .iter()
                .filter_map(|g| g.group_name().map(str::to_owned))
                .collect(),
        );
        let out = aws
            .iot
            .list_thing_principals()
            .thing_name(&name)
            .send()
            .await
            .unwrap();
        let principals = sorted(out.principals().to_vec());
        let attributes = thing
            .attributes()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        things.insert(name, (groups, principals, attributes));
    }
    let mut groups = BTreeMap::new();
    for g in aws
        .iot
        .list_thing_groups()
        .send()
        .await
        .unwrap()
        .thing_groups()
    {
        let name = g.group_name().unwrap().to_owned();
        let out = aws
            .iot
            .list_things_in_thing_group()
            .thing_group_name(&name)
            .send()
            .await
            .unwrap();
        groups.insert(name, sorted(out.things().to_vec()));
    }
    let mut certificates = BTreeMap::new();
    let out = aws.iot.list_certificates().send().await.unwrap();
    for cert in out.certificates() {
        let arn = cert.certificate_arn().unwrap().to_owned();
        let status = cert.status().unwrap().as_str().to_owned();
        let out = aws
            .iot
            .list_attached_policies()
            .target(&arn)
            .send()
            .await
            .unwrap();
        let policies = sorted(
            out.policies()
                .iter()
                .filter_map(|p| p.policy_name().map(str::to_owned))
                .collect(),
        );
        certificates.insert(arn, (status, policies));
    }
    let out = aws.greengrass.list_core_devices().send().await.unwrap();
    let core_devices = out
        .core_devices()
        .iter()
        .map(|c| {
            (
                c.core_device_thing_name().unwrap().to_owned(),
                c.status().unwrap().as_str().to_owned(),
            )
        })
        .collect();
    let out = aws.iot.list_policies().send().await.unwrap();
    let policies = sorted(
        out.policies()
            .iter()
            .filter_map(|p| p.policy_name().map(str::to_owned))
            .collect(),
    );
    let out = aws.greengrass.list_deployments().send().await.unwrap();
    let deployments = sorted(
        out.deployments()
            .iter()
            .filter_map(|d| d.deployment_id().map(str::to_owned))
            .collect(),
    );
    State {
        things,
        groups,
        certificates,
        core_devices,
        policies,
        deployments,
    }
}

/// Creates a thing group.
pub async fn group(aws: &Aws, name: &str) {
    aws.iot
        .create_thing_group()
        .thing_group_name(name)
        .send()
        .await
        .unwrap();
}

/// Creates the device policy.
pub async fn device_policy(aws: &Aws) {
    let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
    aws.iot
        .create_policy()
        .policy_name(DEVICE_POLICY)
        .policy_document(doc)
        .send()
        .await
        .unwrap();
}

/// Asserts that the account is still in the state `before`; `what` names what must not have
/// changed it.
pub async fn assert_unchanged(aws: &Aws, before: &State, what: &str) {
    assert_eq!(&state(aws).await, before, "{what} changed the account");
}

/// Creates a thing, in `group` if any, without a certificate.
pub async fn thing(aws: &Aws, thing: &str, group: Option<&str>) {
    aws.iot
        .create_thing()
        .thing_name(thing)
        .send()
        .await
        .unwrap();
    if let Some(group) = group {
        aws.iot
            .add_thing_to_thing_group()
            .thing_group_name(group)
            .thing_name(thing)
            .send()
            .await
            .unwrap();
    }
}

/// A provisioned device as fleet provisioning leaves it: a thing in `group` with an active
/// certificate carrying the device policy, and (if `core`) a Greengrass core device.
/// Returns the certificate ARN.
pub async fn device(
    moto: &Moto,
    aws: &Aws,
    thing: &str,
    group: Option<&str>,
    core: bool,
) -> String {
    device_with_policy(moto, aws, thing, group, true, core).await
}

/// Like [`device`], with the device policy attached to the certificate only if `policy`.
pub async fn device_with_policy(
    moto: &Moto,
    aws: &Aws,
    name: &str,
    group: Option<&str>,
    policy: bool,
    core: bool,
) -> String {
    thing(aws, name, group).await;
    let cert = aws
        .iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .unwrap();
    let arn = cert.certificate_arn().unwrap().to_owned();
    aws.iot
        .attach_thing_principal()
        .thing_name(name)
        .principal(&arn)
        .send()
        .await
        .unwrap();
    if policy {
        aws.iot
            .attach_policy()
            .policy_name(DEVICE_POLICY)
            .target(&arn)
            .send()
            .await
            .unwrap();
    }
    if core {
        moto.seed_core_device(name);
    }
    arn
}

/// POSTs a JSON body to one of the shim's test-only control routes.
pub fn shim_post(moto: &Moto, path: &str, body: &str) {
    ureq::post(&format!("{}{path}", moto.endpoint))
        .header("Content-Type", "application/json")
        .send(body)
        .expect("shim control route");
}
