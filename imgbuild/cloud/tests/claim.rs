//! `imgbuild cloud claim ensure|fetch` against moto.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::Moto;
use imgbuild_cloud::claim::{
    ensure_claim, fetch_claim, ClaimOutcome, ARN_NAME, CERT_NAME, KEY_NAME,
};
use imgbuild_cloud::{Aws, S3Location};

async fn certificate_arns(aws: &Aws) -> Vec<String> {
    let out = aws.iot.list_certificates().send().await.unwrap();
    out.certificates()
        .iter()
        .filter_map(|c| c.certificate_arn().map(str::to_owned))
        .collect()
}

async fn attached(aws: &Aws, arn: &str) -> Vec<String> {
    let out = aws
        .iot
        .list_attached_policies()
        .target(arn)
        .send()
        .await
        .unwrap();
    out.policies()
        .iter()
        .filter_map(|p| p.policy_name().map(str::to_owned))
        .collect()
}

/// The public key of a certificate or private key, as `openssl` derives it.
fn public_key(args: &[&str], path: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_twice_makes_one_certificate_and_fetch_writes_a_0600_key_matching_it() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "fleet-secrets").await;
    let loc = S3Location::new("fleet-secrets", "claim").unwrap();

    let first = ensure_claim(&aws, &loc, "ClaimPolicy", "FleetTemplate")
        .await
        .unwrap();
    let ClaimOutcome::Created {
        certificate_arn,
        policy_created,
    } = first.clone()
    else {
        panic!("first run must create: {first:?}");
    };
    assert!(policy_created);
    let second = ensure_claim(&aws, &loc, "ClaimPolicy", "FleetTemplate")
        .await
        .unwrap();
    assert_eq!(
        second,
        ClaimOutcome::Existing {
            certificate_arn: certificate_arn.clone()
        }
    );
    assert_eq!(
        certificate_arns(&aws).await,
        std::slice::from_ref(&certificate_arn)
    );
    assert_eq!(attached(&aws, &certificate_arn).await, ["ClaimPolicy"]);

    // The created policy scopes provisioning to the template.
    let policy = aws
        .iot
        .get_policy()
        .policy_name("ClaimPolicy")
        .send()
        .await
        .unwrap();
    let doc = policy.policy_document().unwrap();
    assert!(
        doc.contains("$aws/provisioning-templates/FleetTemplate/provision/*"),
        "{doc}"
    );

    for name in [CERT_NAME, KEY_NAME, ARN_NAME] {
        let head = aws
            .s3
            .head_object()
            .bucket("fleet-secrets")
            .key(format!("claim/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("AES256"),
            "{name}"
        );
    }

    let out = tempfile::tempdir().unwrap();
    let files = fetch_claim(&aws, &loc, &out.path().join("claim"))
        .await
        .unwrap();
    assert_eq!(files.certificate_arn, certificate_arn);
    let key_mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    assert_eq!(
        public_key(&["x509", "-noout", "-pubkey", "-in"], &files.cert),
        public_key(&["pkey", "-pubout", "-in"], &files.key),
        "the key belongs to the certificate"
    );
    // Fetching again over an existing, too-open key file leaves it 0600.
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    fetch_claim(&aws, &loc, &out.path().join("claim"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_reattaches_a_detached_policy_and_uses_an_existing_policy_as_is() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "fleet-secrets").await;
    let custom = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
    aws.iot
        .create_policy()
        .policy_name("Mine")
        .policy_document(custom)
        .send()
        .await
        .unwrap();
    let loc = S3Location::new("fleet-secrets", "").unwrap();

    let created = ensure_claim(&aws, &loc, "Mine", "T").await.unwrap();
    assert!(matches!(
        created,
        ClaimOutcome::Created {
            policy_created: false,
            ..
        }
    ));
    let arn = created.certificate_arn().to_owned();
    let doc = aws
        .iot
        .get_policy()
        .policy_name("Mine")
        .send()
        .await
        .unwrap();
    assert_eq!(
        doc.policy_document(),
        Some(custom),
        "an existing policy is never rewritten"
    );

    aws.iot
        .detach_policy()
        .policy_name("Mine")
        .target(&arn)
        .send()
        .await
        .unwrap();
    let again = ensure_claim(&aws, &loc, "Mine", "T").await.unwrap();
    assert_eq!(
        again,
        ClaimOutcome::PolicyReattached {
            certificate_arn: arn.clone()
        }
    );
    assert_eq!(attached(&aws, &arn).await, ["Mine"]);
    assert_eq!(certificate_arns(&aws).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_claim_material_and_missing_material_are_one_line_errors() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "fleet-secrets").await;
    let loc = S3Location::new("fleet-secrets", "claim/").unwrap();
    let out = tempfile::tempdir().unwrap();

    let err = fetch_claim(&aws, &loc, out.path()).await.unwrap_err();
    common::assert_one_line(
        err.message(),
        &["s3://fleet-secrets/claim/claim.arn", "claim ensure"],
    );

    aws.s3
        .put_object()
        .bucket("fleet-secrets")
        .key("claim/claim.cert.pem")
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap();
    let err = ensure_claim(&aws, &loc, "P", "T").await.unwrap_err();
    common::assert_one_line(err.message(), &["only claim.cert.pem of", "delete them"]);
    assert!(
        certificate_arns(&aws).await.is_empty(),
        "nothing was created"
    );
}
