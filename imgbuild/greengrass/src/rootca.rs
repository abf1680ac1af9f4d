//! The root CA the device trusts for AWS IoT: Amazon Root CA 1, shipped in the repository and checked by
//! hash (no first-boot download), or the PEM file `[greengrass] root_ca` names, checked at build time.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::GreengrassConfig;
use crate::error::{file_bail, GgError, Result};

pub use crate::contract::{CUSTOM_ROOT_CA_PATH, ROOT_CA_PATH};

/// The device path of the root CA file for `cfg`: [`CUSTOM_ROOT_CA_PATH`] when `root_ca` is set, else
/// [`ROOT_CA_PATH`]. The plugin config's `rootCaPath` and the first-boot setting `ROOT_CA_PATH` name it.
pub fn root_ca_path(cfg: &GreengrassConfig) -> &'static str {
    if cfg.root_ca.is_some() {
        CUSTOM_ROOT_CA_PATH
    } else {
        ROOT_CA_PATH
    }
}

/// The root CA file for the device: the shipped Amazon Root CA 1 (checked by [`verify_root_ca`]) or the
/// `root_ca` file of `cfg` (relative paths against `base_dir`), checked by [`check_root_ca_pem`].
pub fn load_root_ca(cfg: &GreengrassConfig, base_dir: &Path, now: SystemTime) -> Result<Vec<u8>> {
    let Some(path) = &cfg.root_ca else {
        verify_root_ca()?;
        return Ok(AMAZON_ROOT_CA1_PEM.to_vec());
    };
    let path = crate::claim::resolve(base_dir, path);
    let bytes = crate::claim::read_limited(&path, "[greengrass] root_ca")?;
    check_root_ca_pem(&path, &bytes, now)?;
    Ok(bytes)
}

/// Checks a root CA file: only `CERTIFICATE` PEM blocks (at least one), each a parseable X.509 certificate
/// that is a CA (basicConstraints `cA`, or a self-signed v1 root) and valid at `now`. Errors name the file
/// and the block number, never its contents.
pub fn check_root_ca_pem(path: &Path, bytes: &[u8], now: SystemTime) -> Result<()> {
    let what = "[greengrass] root_ca";
    let blocks = crate::claim::pem_blocks(path, what, bytes)?;
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (index, block) in blocks.iter().enumerate() {
        let number = index + 1;
        if block.tag() != "CERTIFICATE" {
            file_bail!(
                what,
                path,
                "PEM block {number} is a {}, not a CERTIFICATE: the file must hold only the CA \
                 certificates the device trusts (e.g. AmazonRootCA3.pem from https://www.amazontrust.com/repository/)",
                block.tag()
            );
        }
        let (_, cert) = X509Certificate::from_der(block.contents()).map_err(|e| {
            GgError::file(
                what,
                path,
                format!("certificate {number} is not a valid X.509 certificate ({e})"),
            )
        })?;
        let subject = cert.subject().to_string();
        let self_signed_v1 = cert.version().0 == 0 && cert.subject() == cert.issuer();
        if !cert.is_ca() && !self_signed_v1 {
            file_bail!(
                what,
                path,
                "certificate {number} ({subject}) is not a CA certificate: give the root (or \
                 intermediate) CA that signed the endpoint's server certificate, not a device or server certificate"
            );
        }
        let validity = cert.validity();
        if validity.not_after.timestamp() < now_unix {
            file_bail!(
                what,
                path,
                "certificate {number} ({subject}) expired on {}: replace it",
                validity.not_after
            );
        }
    }
    Ok(())
}

/// The PEM file `imgbuild/greengrass/assets/AmazonRootCA1.pem` (copied from Debian's ca-certificates
/// `mozilla/Amazon_Root_CA_1.crt`).
static AMAZON_ROOT_CA1_PEM: &[u8] = include_bytes!("../assets/AmazonRootCA1.pem");

/// sha256 of the shipped PEM file.
pub const AMAZON_ROOT_CA1_PEM_SHA256: &str =
    "2c43952ee9e000ff2acc4e2ed0897c0a72ad5fa72c3d934e81741cbd54f05bd1";

/// sha256 fingerprint of the certificate (its DER), as Amazon Trust Services publishes it.
pub const AMAZON_ROOT_CA1_DER_SHA256: &str =
    "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e";

/// The Amazon Root CA 1 certificate (PEM) that goes to [`ROOT_CA_PATH`] unless `root_ca` is set.
pub fn amazon_root_ca1() -> &'static [u8] {
    AMAZON_ROOT_CA1_PEM
}

/// Checks the shipped certificate against the pinned file hash and certificate fingerprint and that it is a
/// self-signed CA named `CN=Amazon Root CA 1`; run at image build time before it is injected.
pub fn verify_root_ca() -> Result<()> {
    let file_sha256 = hex::encode(Sha256::digest(AMAZON_ROOT_CA1_PEM));
    if file_sha256 != AMAZON_ROOT_CA1_PEM_SHA256 {
        return Err(GgError::BuiltInRootCa(format!(
            "imgbuild/greengrass/assets/AmazonRootCA1.pem has sha256 {file_sha256}, expected \
             {AMAZON_ROOT_CA1_PEM_SHA256}: restore the file from the repository"
        )));
    }
    let der = root_ca_der()?;
    let fingerprint = hex::encode(Sha256::digest(&der));
    if fingerprint != AMAZON_ROOT_CA1_DER_SHA256 {
        return Err(GgError::BuiltInRootCa(format!(
            "AmazonRootCA1.pem has certificate fingerprint {fingerprint}, expected {AMAZON_ROOT_CA1_DER_SHA256}"
        )));
    }
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| {
        GgError::BuiltInRootCa(format!("AmazonRootCA1.pem: not an X.509 certificate ({e})"))
    })?;
    let subject = cert.subject().to_string();
    if !subject.contains("CN=Amazon Root CA 1") || cert.subject() != cert.issuer() || !cert.is_ca()
    {
        return Err(GgError::BuiltInRootCa(format!(
            "AmazonRootCA1.pem: subject {subject} is not the self-signed CA Amazon Root CA 1"
        )));
    }
    Ok(())
}

/// The DER of the shipped certificate.
fn root_ca_der() -> Result<Vec<u8>> {
    let block = pem::parse(AMAZON_ROOT_CA1_PEM)
        .map_err(|e| GgError::BuiltInRootCa(format!("AmazonRootCA1.pem: not PEM ({e})")))?;
    Ok(block.into_contents())
}
