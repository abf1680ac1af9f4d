//! Amazon Root CA 1 shipped in the repository, checked against openssl's view of it.

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
