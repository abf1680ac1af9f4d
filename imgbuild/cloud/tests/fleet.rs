//! `imgbuild cloud fleet init|destroy` against moto + the shim: the whole account state (IAM
//! roles and policies, IoT policies, role alias, template with its hook, thing group, bucket
//! settings, Lambda function and permission, certificates) is read back with boto3, an
//! independent client, and compared between runs.

mod common;

use common::{Moto, ACCOUNT, REGION};
use imgbuild_cloud::fleet::{self, FleetSpec, Plan, Resource, Status};
use imgbuild_cloud::Aws;

/// Everything `fleet init` could touch, as sorted JSON (one line).
const STATE: &str = r#"
iam, lam = client('iam'), client('lambda')
gg = client('greengrassv2')
def doc(d):
    if isinstance(d, str):
        import urllib.parse
        d = json.loads(urllib.parse.unquote(d))
    return d
state = {}
state['roles'] = {r['RoleName']: [r['RoleId'], doc(r['AssumeRolePolicyDocument']),
                  sorted(p['PolicyArn'] for p in iam.list_attached_role_policies(RoleName=r['RoleName'])['AttachedPolicies'])]
                  for r in iam.list_roles()['Roles']}
pols = {}
for p in iam.list_policies(Scope='Local')['Policies']:
    v = iam.get_policy_version(PolicyArn=p['Arn'], VersionId=p['DefaultVersionId'])['PolicyVersion']
    pols[p['Arn']] = [p['DefaultVersionId'], doc(v['Document'])]
state['iam_policies'] = pols
state['iot_policies'] = {p['policyName']: json.loads(iot.get_policy(policyName=p['policyName'])['policyDocument'])
                         for p in iot.list_policies()['policies']}
state['role_aliases'] = {a: iot.describe_role_alias(roleAlias=a)['roleAliasDescription']['roleArn']
                         for a in iot.list_role_aliases()['roleAliases']}
tpls = {}
for t in iot.list_provisioning_templates()['templates']:
    d = iot.describe_provisioning_template(templateName=t['templateName'])
    tpls[t['templateName']] = [json.loads(d['templateBody']), d['provisioningRoleArn'], d['enabled'],
                               d.get('preProvisioningHook')]
state['templates'] = tpls
state['groups'] = sorted(g['groupName'] for g in iot.list_thing_groups()['thingGroups'])
state['certificates'] = sorted((c['certificateId'], c['status']) for c in iot.list_certificates()['certificates'])
state['cert_policies'] = {c['certificateArn']: sorted(p['policyName'] for p in iot.list_attached_policies(target=c['certificateArn'])['policies'])
                          for c in iot.list_certificates()['certificates']}
buckets = {}
for b in s3.list_buckets()['Buckets']:
    n = b['Name']
    def get(f, key):
        try:
            return f(Bucket=n)[key]
        except Exception as e:
            return 'none: ' + type(e).__name__ + str(getattr(e, 'response', {}).get('Error', {}).get('Code'))
    buckets[n] = [get(s3.get_public_access_block, 'PublicAccessBlockConfiguration'),
                  get(s3.get_bucket_encryption, 'ServerSideEncryptionConfiguration'),
                  s3.get_bucket_versioning(Bucket=n).get('Status'),
                  get(s3.get_bucket_tagging, 'TagSet'),
                  sorted((o['Key'], o['VersionId']) for o in s3.list_object_versions(Bucket=n).get('Versions', []))]
state['buckets'] = buckets
fns = {}
for f in lam.list_functions()['Functions']:
    c = lam.get_function(FunctionName=f['FunctionName'])['Configuration']
    try:
        pol = json.loads(lam.get_policy(FunctionName=f['FunctionName'])['Policy'])
    except Exception:
        pol = None
    fns[f['FunctionName']] = [c['Role'], c['Handler'], c['Runtime'], c.get('Environment'), c['CodeSha256'], pol]
state['functions'] = fns
print(json.dumps(state, sort_keys=True, default=str))
"#;

fn state(moto: &Moto) -> serde_json::Value {
    let out = moto.boto3(STATE, &[]);
    serde_json::from_slice(&out.stdout).expect("state JSON")
}

async fn spec(aws: &Aws, hook: bool) -> FleetSpec {
    fleet::resolve_spec(aws, "Lab", None, None, hook)
        .await
        .expect("spec")
}

fn statuses(plan: &Plan) -> Vec<(Resource, Status)> {
    plan.items
        .iter()
        .map(|i| (i.resource, i.status.clone()))
        .collect()
}

fn all(plan: &Plan, status: &Status) -> bool {
    plan.items.iter().all(|i| &i.status == status)
}

async fn init(aws: &Aws, spec: &FleetSpec) -> (Plan, usize) {
    let plan = fleet::plan(aws, spec).await.expect("plan");
    let created = fleet::apply(aws, &plan, |_| {}).await.expect("apply");
    (plan, created)
}

const BUCKET: &str = "lab-fleet-123456789012-eu-west-1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_then_init_twice_then_destroy_with_the_hook() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let empty = state(&moto);
    let spec = spec(&aws, true).await;
    assert_eq!(spec.bucket, BUCKET);
    assert_eq!(spec.thing_prefix, "Lab-");

    // The plan alone (--dry-run) changes nothing.
    let plan = fleet::plan(&aws, &spec).await.unwrap();
    assert!(all(&plan, &Status::Missing), "{plan}");
    assert_eq!(plan.items.len(), Resource::all(true).len());
    let text = plan.to_string();
    assert!(
        text.contains("create  IAM role Lab-TokenExchangeRole"),
        "{text}"
    );
    assert!(
        text.contains("plan: 21 to create, 0 in place, 0 drifted"),
        "{text}"
    );
    assert_eq!(state(&moto), empty, "a plan changed the account");

    let mut lines = Vec::new();
    let created = fleet::apply(&aws, &plan, |l| lines.push(l.to_owned()))
        .await
        .unwrap();
    assert_eq!(created, 21);
    assert_eq!(lines.len(), 21);
    assert!(plan.drift_error().is_none());
    let made = state(&moto);

    // What init made: the template, its hook, the bucket settings, the claim, the policies.
    let tpl = &made["templates"]["Lab-Template"];
    assert_eq!(tpl[0], spec.template_body());
    assert_eq!(
        tpl[1],
        format!("arn:aws:iam::{ACCOUNT}:role/Lab-ProvisioningRole")
    );
    assert_eq!(tpl[2], true);
    assert_eq!(
        tpl[3]["targetArn"],
        format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:Lab-AllowlistHook")
    );
    let bucket = &made["buckets"][BUCKET];
    assert_eq!(
        bucket[0],
        serde_json::json!({"BlockPublicAcls": true, "IgnorePublicAcls": true,
                           "BlockPublicPolicy": true, "RestrictPublicBuckets": true})
    );
    assert_eq!(
        bucket[1]["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
        "AES256"
    );
    assert_eq!(bucket[2], "Enabled");
    assert_eq!(
        bucket[3],
        serde_json::json!([{"Key": "imgbuild-fleet", "Value": "Lab"}])
    );
    let keys: Vec<&str> = bucket[4]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k[0].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "claim/claim.arn",
            "claim/claim.cert.pem",
            "claim/claim.private.key",
            "provisioning/provisioning.json"
        ]
    );
    // One claim certificate, ACTIVE, with only the claim policy.
    assert_eq!(made["certificates"].as_array().unwrap().len(), 1);
    assert_eq!(made["certificates"][0][1], "ACTIVE");
    let cert_policies: Vec<&serde_json::Value> = made["cert_policies"]
        .as_object()
        .unwrap()
        .values()
        .collect();
    assert_eq!(cert_policies, [&serde_json::json!(["Lab-ClaimPolicy"])]);
    assert_eq!(
        made["iot_policies"]["Lab-DevicePolicy"],
        spec.device_policy_document()
    );
    assert_eq!(
        made["role_aliases"]["Lab-TokenExchangeRoleAlias"],
        format!("arn:aws:iam::{ACCOUNT}:role/Lab-TokenExchangeRole")
    );
    let roles = &made["roles"];
    assert_eq!(
        roles["Lab-ProvisioningRole"][2],
        serde_json::json!(["arn:aws:iam::aws:policy/service-role/AWSIoTThingsRegistration"])
    );
    assert_eq!(
        roles["Lab-TokenExchangeRole"][1]["Statement"][0]["Principal"]["Service"],
        "credentials.iot.amazonaws.com"
    );
    // The hook: this repository's code, its role, its environment, AWS IoT may invoke it.
    let function = &made["functions"]["Lab-AllowlistHook"];
    assert_eq!(
        function[0],
        format!("arn:aws:iam::{ACCOUNT}:role/Lab-AllowlistHookRole")
    );
    assert_eq!(function[1], "allowlist_hook.handler");
    assert_eq!(
        function[3]["Variables"],
        serde_json::json!({"ALLOWLIST_BUCKET": BUCKET, "ALLOWLIST_KEY": "provisioning/allowlist.txt"})
    );
    let package = fleet::hook::package().unwrap();
    assert_eq!(function[4], fleet::hook::code_sha256(&package));
    let permission = &function[5]["Statement"][0];
    assert_eq!(permission["Principal"]["Service"], "iot.amazonaws.com");
    assert_eq!(permission["Action"], "lambda:InvokeFunction");
    assert_eq!(
        permission["Condition"]["StringEquals"]["AWS:SourceAccount"],
        ACCOUNT
    );
    assert_eq!(
        made["iam_policies"][format!("arn:aws:iam::{ACCOUNT}:policy/Lab-AllowlistHookAccess")][1],
        spec.hook_policy_document()
    );

    // The second run finds everything in place and changes nothing at all.
    let (again, created) = init(&aws, &spec).await;
    assert!(all(&again, &Status::InPlace), "{again}");
    assert_eq!(created, 0);
    assert_eq!(state(&moto), made, "the second init changed the account");

    // destroy of an empty group removes everything init made; a second destroy finds nothing.
    let removed = fleet::destroy(&aws, &spec, false, |_| {}).await.unwrap();
    assert!(
        removed.iter().all(|r| r.outcome.starts_with("deleted")),
        "{removed:?}"
    );
    let after = state(&moto);
    assert_eq!(after, empty);
    let again = fleet::destroy(&aws, &spec, false, |_| {}).await.unwrap();
    assert!(again.iter().all(|r| r.outcome == "absent"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_partly_made_account_creates_only_the_missing_parts() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let spec = spec(&aws, false).await;
    // Made by hand before: the thing group, the token exchange role (as the guide makes it),
    // and the bucket without any of its settings.
    moto.boto3(
        &format!(
            "iam = client('iam')\n\
             iot.create_thing_group(thingGroupName='Lab')\n\
             iam.create_role(RoleName='Lab-TokenExchangeRole', AssumeRolePolicyDocument=json.dumps(\
             {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Principal': \
             {{'Service': 'credentials.iot.amazonaws.com'}}, 'Action': 'sts:AssumeRole'}}]}}))\n\
             s3.create_bucket(Bucket='{BUCKET}', CreateBucketConfiguration={{'LocationConstraint': 'eu-west-1'}})\n"
        ),
        &[],
    );
    let before = state(&moto);
    let plan = fleet::plan(&aws, &spec).await.unwrap();
    let in_place: Vec<Resource> = statuses(&plan)
        .into_iter()
        .filter(|(_, s)| *s == Status::InPlace)
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        in_place,
        [Resource::Bucket, Resource::TokenRole, Resource::ThingGroup],
        "{plan}"
    );
    assert!(plan.drift_error().is_none());
    let created = fleet::apply(&aws, &plan, |_| {}).await.unwrap();
    assert_eq!(created, Resource::all(false).len() - 3);
    let after = state(&moto);
    // The existing role is the same role (same id), now with the access policy attached.
    assert_eq!(
        after["roles"]["Lab-TokenExchangeRole"][0],
        before["roles"]["Lab-TokenExchangeRole"][0]
    );
    assert_eq!(
        after["roles"]["Lab-TokenExchangeRole"][2],
        serde_json::json!([format!(
            "arn:aws:iam::{ACCOUNT}:policy/Lab-TokenExchangeRoleAccess"
        )])
    );
    assert_eq!(after["buckets"][BUCKET][2], "Enabled");
    // Without --allowlist-hook: no function, a template without a hook.
    assert_eq!(after["functions"], serde_json::json!({}));
    assert_eq!(
        after["templates"]["Lab-Template"][3],
        serde_json::Value::Null
    );
    // The bucket was not made by init: destroy keeps it (only init's objects go).
    let removed = fleet::destroy(&aws, &spec, false, |_| {}).await.unwrap();
    let bucket = removed.last().unwrap();
    assert!(bucket.outcome.starts_with("kept"), "{bucket:?}");
    let left = state(&moto);
    assert_eq!(
        left["buckets"][BUCKET][4]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v[0].as_str().unwrap().starts_with("claim/"))
            .count(),
        3,
        "object versions stay (versioned bucket), but the current objects are delete markers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_and_left_alone() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let spec = spec(&aws, false).await;
    init(&aws, &spec).await;
    // Someone widens the device policy, suspends versioning, points the alias elsewhere and
    // attaches an extra policy to the token exchange role.
    moto.boto3(
        &format!(
            "iam = client('iam')\n\
             iot.create_policy_version(policyName='Lab-DevicePolicy', setAsDefault=True, policyDocument=json.dumps(\
             {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 'iot:*', 'Resource': '*'}}]}}))\n\
             s3.put_bucket_versioning(Bucket='{BUCKET}', VersioningConfiguration={{'Status': 'Suspended'}})\n\
             iot.update_role_alias(roleAlias='Lab-TokenExchangeRoleAlias', roleArn='arn:aws:iam::{ACCOUNT}:role/Other')\n\
             iam.attach_role_policy(RoleName='Lab-TokenExchangeRole', PolicyArn='arn:aws:iam::aws:policy/AdministratorAccess')\n\
             iam.put_role_policy(RoleName='Lab-ProvisioningRole', PolicyName='extra', PolicyDocument=json.dumps(\
             {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}}]}}))\n"
        ),
        &[],
    );
    let before = state(&moto);
    let plan = fleet::plan(&aws, &spec).await.unwrap();
    let drifted: Vec<(Resource, String)> = plan
        .items
        .iter()
        .filter_map(|i| match &i.status {
            Status::Drift(why) => Some((i.resource, why.clone())),
            _ => None,
        })
        .collect();
    let resources: Vec<Resource> = drifted.iter().map(|(r, _)| *r).collect();
    assert_eq!(
        resources,
        [
            Resource::BucketVersioning,
            Resource::TokenRoleAttachment,
            Resource::RoleAlias,
            Resource::DevicePolicy,
            Resource::ProvisioningRole
        ],
        "{plan}"
    );
    assert!(drifted[0].1.contains("Suspended"), "{drifted:?}");
    assert!(drifted[1].1.contains("AdministratorAccess"), "{drifted:?}");
    assert!(drifted[2].1.contains("role/Other"), "{drifted:?}");
    assert!(drifted[3].1.contains("at Statement"), "{drifted:?}");
    assert!(
        drifted[4].1.contains("inline policies (extra)"),
        "{drifted:?}"
    );
    assert_eq!(fleet::apply(&aws, &plan, |_| {}).await.unwrap(), 0);
    let err = plan.drift_error().expect("drift is an error").to_string();
    common::assert_one_line(
        &err,
        &[
            "5 resource(s) differ",
            "IoT policy Lab-DevicePolicy",
            "no build configuration was written",
        ],
    );
    assert_eq!(state(&moto), before, "drift was rewritten");
    // destroy copes with what was changed (a second device policy version, a foreign policy
    // attached to a role, an inline policy in another).
    let removed = fleet::destroy(&aws, &spec, false, |_| {}).await.unwrap();
    assert!(
        removed.iter().filter(|r| r.outcome == "deleted").count() >= 10,
        "{removed:?}"
    );
    let after = state(&moto);
    assert_eq!(after["iot_policies"], serde_json::json!({}));
    assert_eq!(after["roles"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_refuses_while_things_remain_unless_forced() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    let spec = spec(&aws, true).await;
    init(&aws, &spec).await;
    // A device as the template registers it: thing Lab-SN1 in the group, its own certificate
    // with the device policy.
    moto.boto3(
        "iot.create_thing(thingName='Lab-SN1')\n\
         iot.add_thing_to_thing_group(thingGroupName='Lab', thingName='Lab-SN1')\n\
         c = iot.create_keys_and_certificate(setAsActive=True)\n\
         iot.attach_thing_principal(thingName='Lab-SN1', principal=c['certificateArn'])\n\
         iot.attach_policy(policyName='Lab-DevicePolicy', target=c['certificateArn'])\n",
        &[],
    );
    let before = state(&moto);
    let err = fleet::destroy(&aws, &spec, false, |_| {})
        .await
        .unwrap_err()
        .to_string();
    common::assert_one_line(
        &err,
        &[
            "thing group Lab still has 1 thing(s) (Lab-SN1)",
            "nothing was deleted",
            "--force",
        ],
    );
    assert_eq!(
        state(&moto),
        before,
        "a refused destroy changed the account"
    );

    let removed = fleet::destroy(&aws, &spec, true, |_| {}).await.unwrap();
    assert!(
        removed.iter().all(|r| r.outcome.starts_with("deleted")),
        "{removed:?}"
    );
    let after = state(&moto);
    assert_eq!(after["iot_policies"], serde_json::json!({}));
    assert_eq!(after["groups"], serde_json::json!([]));
    assert_eq!(after["roles"], serde_json::json!({}));
    assert_eq!(after["functions"], serde_json::json!({}));
    assert_eq!(after["buckets"], serde_json::json!({}));
    // The device's certificate stays (init did not make it), without the device policy.
    let certs = after["cert_policies"].as_object().unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs.values().next().unwrap(), &serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arns_use_the_regions_partition() {
    let moto = Moto::start();
    let loader = moto.loader().region(aws_config::Region::new("cn-north-1"));
    let aws = Aws::from_loader(loader).await.unwrap();
    let spec = fleet::resolve_spec(&aws, "Lab", Some("lab-cn-fleet"), None, false)
        .await
        .unwrap();
    let (plan, created) = init(&aws, &spec).await;
    assert_eq!(created, plan.items.len(), "{plan}");
    let out = moto.boto3(
        "iot = boto3.client('iot', region_name='cn-north-1', endpoint_url=sys.argv[1], \
         aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         print(json.dumps([iot.get_policy(policyName=n)['policyDocument'] for n in ['Lab-DevicePolicy', 'Lab-ClaimPolicy']]\
         + [iot.describe_provisioning_template(templateName='Lab-Template')['provisioningRoleArn']]))",
        &[],
    );
    let docs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for doc in &docs {
        assert!(doc.contains("arn:aws-cn:"), "{doc}");
        assert!(!doc.contains("arn:aws:"), "{doc}");
    }
    let again = fleet::plan(&aws, &spec).await.unwrap();
    assert!(all(&again, &Status::InPlace), "{again}");
}

#[test]
fn the_hook_handler_allows_only_listed_serials() {
    // The handler's own tests (allow, deny, missing object, malformed list) against a moto
    // server, with the python and boto3 of the moto venv.
    let out = std::process::Command::new(imgbuild_testkit::moto::python())
        .args(["-m", "unittest", "discover", "-s"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/assets"))
        .args(["-p", "test_*.py"])
        .output()
        .expect("run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hook tests failed:\n{stderr}");
    assert!(stderr.contains("Ran 11 tests"), "{stderr}");
}
