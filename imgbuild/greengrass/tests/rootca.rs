//! Amazon Root CA 1 shipped in the repository, checked against openssl's view of it; the `root_ca`
//! option's file checks.

mod common;

use common::openssl;
use imgbuild_greengrass::{amazon_root_ca1, verify_root_ca, AMAZON_ROOT_CA1_DER_SHA256};
use x509_parser::prelude::{FromDer, X509Certificate};

const ASSET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/AmazonRootCA1.pem");

#[test]
fn shipped_root_ca_passes_its_pins() {
    verify_root_ca().expect("shipped Amazon Root CA 1");
    assert_eq!(amazon_root_ca1(), std::fs::read(ASSET).unwrap().as_slice());
}

#[test]
fn shipped_root_ca_is_amazon_root_ca_1_according_to_openssl() {
    let subject = String::from_utf8(openssl(&[
        "x509", "-in", ASSET, "-noout", "-subject", "-nameopt", "RFC2253",
    ]))
    .unwrap();
    assert_eq!(subject.trim(), "subject=CN=Amazon Root CA 1,O=Amazon,C=US");
    let fingerprint = String::from_utf8(openssl(&[
        "x509",
        "-in",
        ASSET,
        "-noout",
        "-fingerprint",
        "-sha256",
    ]))
    .unwrap();
    let fingerprint = fingerprint
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fingerprint, AMAZON_ROOT_CA1_DER_SHA256);
    // openssl verifies the self-signature against the certificate itself.
    openssl(&["verify", "-CAfile", ASSET, ASSET]);
}

#[test]
fn shipped_root_ca_subject_and_validity_per_x509_parser() {
    let block = pem::parse(amazon_root_ca1()).unwrap();
    let (_, cert) = X509Certificate::from_der(block.contents()).unwrap();
    let subject = cert.subject();
    let cn: Vec<_> = subject
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    let org: Vec<_> = subject
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["Amazon Root CA 1"]);
    assert_eq!(org, ["Amazon"]);
    assert!(cert.is_ca());
    assert_eq!(
        cert.validity().not_after.timestamp(),
        2147299200,
        "expires 2038-01-17"
    );
}

/// `load_claim` with a `root_ca` file holding `contents`: the error, or the bytes it would install.
fn with_root_ca(contents: &[u8]) -> Result<Vec<u8>, String> {
    let scratch = common::Scratch::new();
    let key = scratch.key("key.pem", "p256");
    let cert = scratch.valid_cert("cert.pem", &key);
    scratch.write("ca.pem", contents);
    let cfg = common::parse(&common::section(&cert, &key, "root_ca = \"ca.pem\"")).unwrap();
    imgbuild_greengrass::load_claim(&cfg, scratch.dir.path(), common::now())
        .map(|(claim, _)| claim.root_ca_pem)
        .map_err(|e| e.to_string())
}

#[test]
fn root_ca_bundle_of_cas_is_installed_as_given() {
    let bundle = [
        common::ca_pem("Amazon Root CA 3 stand-in", true, 2040),
        String::from_utf8(amazon_root_ca1().to_vec()).unwrap(),
    ]
    .concat();
    assert_eq!(
        with_root_ca(bundle.as_bytes()).expect("valid bundle"),
        bundle.as_bytes()
    );
    // openssl agrees that the bundle holds two certificates.
    let scratch = common::Scratch::new();
    let path = scratch.write("b.pem", bundle.as_bytes());
    let out = openssl(&["storeutl", "-noout", "-certs", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out).contains("Total found: 2"));
}

#[test]
fn root_ca_file_problems_are_one_line_errors_naming_the_file() {
    let scratch = common::Scratch::new();
    let key = scratch.key("k.pem", "p256");
    let key_pem = std::fs::read(&key).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a certificate at all\n".to_vec(), "not a PEM file"),
        (b"".to_vec(), "empty"),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
            "garbled PEM",
        ),
        (
            [
                common::ca_pem("CA", true, 2030).into_bytes(),
                key_pem.clone(),
            ]
            .concat(),
            "PEM block 2 is a PRIVATE KEY, not a CERTIFICATE",
        ),
        (
            common::ca_pem("device.example", false, 2030).into_bytes(),
            "is not a CA certificate",
        ),
        (common::ca_pem("Old CA", true, 2025).into_bytes(), "expired"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
            "certificate 1 is not a valid X.509 certificate",
        ),
    ];
    for (contents, want) in cases {
        let err = with_root_ca(&contents).expect_err(want);
        assert!(
            err.contains("[greengrass] root_ca") && err.contains("ca.pem"),
            "{err}"
        );
        assert!(err.contains(want), "want {want:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
        common::assert_no_secret(&err, &common::secret_lines(&key_pem));
    }
}
