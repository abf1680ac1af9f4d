//! Amazon Root CA 1, shipped in the repository and checked by hash (no first-boot download).

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{gg_bail, GgError, Result};

/// The PEM file `imgbuild/greengrass/assets/AmazonRootCA1.pem` (copied from Debian's ca-certificates
/// `mozilla/Amazon_Root_CA_1.crt`).
static AMAZON_ROOT_CA1_PEM: &[u8] = include_bytes!("../assets/AmazonRootCA1.pem");

/// sha256 of the shipped PEM file.
pub const AMAZON_ROOT_CA1_PEM_SHA256: &str =
    "2c43952ee9e000ff2acc4e2ed0897c0a72ad5fa72c3d934e81741cbd54f05bd1";

/// sha256 fingerprint of the certificate (its DER), as Amazon Trust Services publishes it.
pub const AMAZON_ROOT_CA1_DER_SHA256: &str =
    "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e";

/// The Amazon Root CA 1 certificate (PEM) that goes to `/greengrass/v2/AmazonRootCA1.pem`.
pub fn amazon_root_ca1() -> &'static [u8] {
    AMAZON_ROOT_CA1_PEM
}

/// Checks the shipped certificate against the pinned file hash and certificate fingerprint and that it is a
/// self-signed CA named `CN=Amazon Root CA 1`; run at image build time before it is injected.
pub fn verify_root_ca() -> Result<()> {
    let file_sha256 = hex::encode(Sha256::digest(AMAZON_ROOT_CA1_PEM));
    if file_sha256 != AMAZON_ROOT_CA1_PEM_SHA256 {
        gg_bail!(
            "imgbuild/greengrass/assets/AmazonRootCA1.pem has sha256 {file_sha256}, expected \
             {AMAZON_ROOT_CA1_PEM_SHA256}: restore the file from the repository"
        );
    }
    let der = root_ca_der()?;
    let fingerprint = hex::encode(Sha256::digest(&der));
    if fingerprint != AMAZON_ROOT_CA1_DER_SHA256 {
        gg_bail!(
            "AmazonRootCA1.pem has certificate fingerprint {fingerprint}, expected {AMAZON_ROOT_CA1_DER_SHA256}"
        );
    }
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| GgError::msg(format!("AmazonRootCA1.pem: not an X.509 certificate ({e})")))?;
    let subject = cert.subject().to_string();
    if !subject.contains("CN=Amazon Root CA 1") || cert.subject() != cert.issuer() || !cert.is_ca()
    {
        gg_bail!("AmazonRootCA1.pem: subject {subject} is not the self-signed CA Amazon Root CA 1");
    }
    Ok(())
}

/// The DER of the shipped certificate.
fn root_ca_der() -> Result<Vec<u8>> {
    let block = pem::parse(AMAZON_ROOT_CA1_PEM)
        .map_err(|e| GgError::msg(format!("AmazonRootCA1.pem: not PEM ({e})")))?;
    Ok(block.into_contents())
}
