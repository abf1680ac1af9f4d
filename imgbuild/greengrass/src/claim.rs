//! Build-time checks of the claim certificate and private key.
//!
//! Nothing in this module puts key material into an error, a warning or a `Debug` string: messages about
//! the key name its file and the problem only, and the decoded key bytes are wiped when dropped.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pkcs8::der::Decode;
use pkcs8::{DecodePrivateKey, DecodePublicKey, ObjectIdentifier};
use rsa::pkcs1::DecodeRsaPrivateKey;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::config::GreengrassConfig;
use crate::error::{file_bail, GgError, Result};

/// Claim files larger than this are refused (a certificate or key is a few KiB).
const MAX_PEM_FILE: u64 = 1024 * 1024;
/// A claim certificate that expires sooner than this after `now` earns a warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 60 * 60);

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// Secret bytes: wiped from memory when dropped, never shown by `Debug`.
#[derive(Clone)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// The bytes, for writing them into the image. Do not log them.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted, {} bytes>)", self.0.len())
    }
}

/// The kind of the claim key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, with the modulus size in bits.
    Rsa(usize),
    /// ECDSA on NIST P-256.
    P256,
    /// ECDSA on NIST P-384.
    P384,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyKind::P256 => f.write_str("EC P-256"),
            KeyKind::P384 => f.write_str("EC P-384"),
        }
    }
}

/// The checked claim certificate and key, as read from the build host.
#[derive(Clone)]
pub struct ClaimMaterial {
    /// The certificate file as given (PEM), for `/greengrass/v2/claim.pem.crt`.
    pub cert_pem: Vec<u8>,
    /// The key file as given (PEM), for `/greengrass/v2/claim.private.pem.key`; redacted in `Debug`.
    pub key_pem: SecretBytes,
    /// The key's kind.
    pub key_kind: KeyKind,
    /// The root CA file for the device (PEM): `[greengrass] root_ca` as given, or the shipped Amazon Root CA 1.
    pub root_ca_pem: Vec<u8>,
    /// The certificate's subject, e.g. `CN=AWS IoT Certificate`.
    pub subject: String,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
    /// sha256 of the certificate's DER encoding (lowercase hex), the usual certificate fingerprint.
    pub cert_sha256: String,
}

impl fmt::Debug for ClaimMaterial {
    /// Summarises the certificate bytes and redacts the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimMaterial")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &self.key_pem)
            .field("key_kind", &self.key_kind)
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .field("cert_sha256", &self.cert_sha256)
            .finish()
    }
}

/// A decoded private key's public half, ready to compare with the certificate's.
enum PublicHalf {
    Rsa(Box<rsa::PublicKey>),
    P256(p256::PublicKey),
    P384(p384::PublicKey),
}

impl PublicHalf {
    fn kind(&self) -> KeyKind {
        match self {
            PublicHalf::Rsa(key) => {
                KeyKind::Rsa(rsa::traits::PublicKeyParts::size(key.as_ref()) * 8)
            }
            PublicHalf::P256(_) => KeyKind::P256,
            PublicHalf::P384(_) => KeyKind::P384,
        }
    }

    /// True when the certificate's SubjectPublicKeyInfo (DER) holds this same public key.
    fn matches_spki(&self, spki_der: &[u8]) -> bool {
        match self {
            PublicHalf::Rsa(key) => {
                rsa::PublicKey::from_public_key_der(spki_der).is_ok_and(|cert| cert == **key)
            }
            PublicHalf::P256(key) => {
                p256::PublicKey::from_public_key_der(spki_der).is_ok_and(|cert| cert == *key)
            }
            PublicHalf::P384(key) => {
                p384::PublicKey::from_public_key_der(spki_der).is_ok_and(|cert| cert == *key)
            }
        }
    }
}

/// Reads and checks the claim certificate and key named by `cfg` (relative paths against `base_dir`).
///
/// Errors (one line naming the file): unreadable or missing file, not PEM, no or garbled certificate, a
/// private key inside the certificate file, unsupported or encrypted key, key not matching the certificate,
/// certificate expired or not yet valid at `now`. Warnings: the certificate expires within 30 days of `now`;
/// the key file is readable by group or others on the build host.
pub fn load_claim(
    cfg: &GreengrassConfig,
    base_dir: &Path,
    now: SystemTime,
) -> Result<(ClaimMaterial, Vec<String>)> {
    let cert_path = resolve(base_dir, &cfg.claim_cert);
    let key_path = resolve(base_dir, &cfg.claim_key);
    let mut warnings = Vec::new();

    let cert_pem = read_limited(&cert_path, "claim certificate")?;
    let cert_der = certificate_der(&cert_path, &cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| {
        GgError::file(
            "claim certificate",
            &cert_path,
            format!("not a valid X.509 certificate ({e})"),
        )
    })?;

    let key_pem = SecretBytes(Zeroizing::new(read_limited(&key_path, "claim key")?));
    let public = public_half_of_key(&key_path, key_pem.expose_secret(), &cert)?;
    if !public.matches_spki(cert.public_key().raw) {
        return Err(GgError::KeyMismatch {
            key: key_path,
            kind: public.kind(),
            cert: cert_path,
        });
    }

    let not_after = check_validity(&cert_path, &cert, now, &mut warnings)?;
    if let Some(warning) = key_permission_warning(&key_path) {
        warnings.push(warning);
    }
    let root_ca_pem = crate::rootca::load_root_ca(cfg, base_dir, now)?;
    let material = ClaimMaterial {
        cert_pem,
        root_ca_pem,
        key_kind: public.kind(),
        key_pem,
        subject: cert.subject().to_string(),
        not_after,
        cert_sha256: hex::encode(Sha256::digest(&cert_der)),
    };
    Ok((material, warnings))
}

/// Reads a whole file of at most [`MAX_PEM_FILE`] bytes; errors name `what` and the path only.
pub(crate) fn read_limited(path: &Path, what: &'static str) -> Result<Vec<u8>> {
    let failed = |e: std::io::Error, opening| GgError::Read {
        what,
        path: path.to_path_buf(),
        kind: e.kind(),
        opening,
    };
    let file = File::open(path).map_err(|e| failed(e, true))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| failed(e, false))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        file_bail!(what, path, "larger than 1 MiB, not a PEM file");
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        file_bail!(what, path, "the file is empty");
    }
    Ok(bytes)
}

/// Parses PEM blocks; errors name the path only.
pub(crate) fn pem_blocks(path: &Path, what: &'static str, bytes: &[u8]) -> Result<Vec<pem::Pem>> {
    let blocks = pem::parse_many(bytes)
        .map_err(|_| GgError::file(what, path, "garbled PEM (bad base64 or framing)"))?;
    if blocks.is_empty() {
        file_bail!(what, path, "not a PEM file (no -----BEGIN ...----- block)");
    }
    Ok(blocks)
}

/// The DER of the first `CERTIFICATE` block; refuses files that also carry a private key.
fn certificate_der(path: &Path, pem_bytes: &[u8]) -> Result<Vec<u8>> {
    let what = "claim certificate";
    let blocks = pem_blocks(path, what, pem_bytes)?;
    if blocks
        .iter()
        .any(|block| block.tag().contains("PRIVATE KEY"))
    {
        file_bail!(
            what,
            path,
            "the file also contains a private key, which would be installed world-readable: keep the \
             key in the claim_key file only"
        );
    }
    match blocks
        .into_iter()
        .find(|block| block.tag() == "CERTIFICATE")
    {
        Some(block) => Ok(block.into_contents()),
        None => file_bail!(what, path, "no -----BEGIN CERTIFICATE----- block"),
    }
}

/// Decodes the private key (PKCS#1 RSA, PKCS#8 RSA/EC, SEC1 EC) and returns its public half.
fn public_half_of_key(
    path: &Path,
    pem_bytes: &[u8],
    cert: &X509Certificate<'_>,
) -> Result<PublicHalf> {
    let what = "claim key";
    let blocks = pem_blocks(path, what, pem_bytes)?;
    let mut keys = blocks
        .into_iter()
        .filter(|block| block.tag().contains("PRIVATE KEY"));
    let Some(block) = keys.next() else {
        file_bail!(
            what,
            path,
            "no private key block (expected -----BEGIN RSA PRIVATE KEY-----, PRIVATE KEY or EC \
             PRIVATE KEY)"
        );
    };
    if keys.next().is_some() {
        file_bail!(
            what,
            path,
            "more than one private key in the file: keep only the claim key"
        );
    }
    let tag = block.tag().to_owned();
    let der = Zeroizing::new(block.into_contents());
    let undecodable = || GgError::file(what, path, format!("the {tag} block does not decode"));
    match tag.as_str() {
        "RSA PRIVATE KEY" => rsa::PrivateKey::from_pkcs1_der(&der)
            .map(|key| PublicHalf::Rsa(Box::new(key.to_public_key())))
            .map_err(|_| undecodable()),
        "PRIVATE KEY" => pkcs8_public_half(path, &der).map_err(|e| e.unwrap_or_else(undecodable)),
        "EC PRIVATE KEY" => {
            sec1_public_half(path, &der, cert).map_err(|e| e.unwrap_or_else(undecodable))
        }
        "ENCRYPTED PRIVATE KEY" => file_bail!(
            what,
            path,
            "the key is encrypted, and Greengrass needs an unencrypted key: decrypt it with \
             `openssl pkey -in KEY -out claim.private.pem.key`"
        ),
        _ => file_bail!(
            what,
            path,
            "unsupported key type ({tag}): use an RSA or EC P-256/P-384 key"
        ),
    }
}

/// PKCS#8: dispatch on the algorithm OID. `Err(None)` means "does not decode".
fn pkcs8_public_half(path: &Path, der: &[u8]) -> Result<PublicHalf, Option<GgError>> {
    let info = pkcs8::PrivateKeyInfoRef::from_der(der).map_err(|_| None)?;
    let algorithm = info.algorithm.oid;
    if algorithm == OID_RSA_ENCRYPTION {
        return rsa::PrivateKey::from_pkcs8_der(der)
            .map(|key| PublicHalf::Rsa(Box::new(key.to_public_key())))
            .map_err(|_| None);
    }
    if algorithm != OID_EC_PUBLIC_KEY {
        return Err(Some(GgError::file(
            "claim key",
            path,
            format!("unsupported key algorithm {algorithm}: use an RSA or EC P-256/P-384 key"),
        )));
    }
    match info.algorithm.parameters_oid().map_err(|_| None)? {
        curve if curve == OID_P256 => p256::SecretKey::from_pkcs8_der(der)
            .map(|key| PublicHalf::P256(key.public_key()))
            .map_err(|_| None),
        curve if curve == OID_P384 => p384::SecretKey::from_pkcs8_der(der)
            .map(|key| PublicHalf::P384(key.public_key()))
            .map_err(|_| None),
        curve => Err(Some(unsupported_curve(path, curve))),
    }
}

/// SEC1 (`EC PRIVATE KEY`): the curve comes from the key's parameters, else from the certificate.
fn sec1_public_half(
    path: &Path,
    der: &[u8],
    cert: &X509Certificate<'_>,
) -> Result<PublicHalf, Option<GgError>> {
    let key = sec1::EcPrivateKey::from_der(der).map_err(|_| None)?;
    let curve = match key.parameters.and_then(|params| params.named_curve()) {
        Some(curve) => curve,
        None => certificate_curve(cert).ok_or_else(|| {
            Some(GgError::file(
                "claim key",
                path,
                "the EC key names no curve and the certificate holds no EC key: the key does not \
                 belong to the certificate",
            ))
        })?,
    };
    match curve {
        curve if curve == OID_P256 => p256::SecretKey::from_sec1_der(der)
            .map(|key| PublicHalf::P256(key.public_key()))
            .map_err(|_| None),
        curve if curve == OID_P384 => p384::SecretKey::from_sec1_der(der)
            .map(|key| PublicHalf::P384(key.public_key()))
            .map_err(|_| None),
        curve => Err(Some(unsupported_curve(path, curve))),
    }
}

fn unsupported_curve(path: &Path, curve: ObjectIdentifier) -> GgError {
    GgError::file(
        "claim key",
        path,
        format!("unsupported elliptic curve {curve}: AWS IoT accepts P-256 and P-384 keys"),
    )
}

/// The named curve of the certificate's EC key, if it holds one.
fn certificate_curve(cert: &X509Certificate<'_>) -> Option<ObjectIdentifier> {
    let spki = spki_parts(cert.public_key().raw)?;
    (spki.0 == OID_EC_PUBLIC_KEY).then_some(spki.1?)
}

/// Algorithm OID and parameter OID of a SubjectPublicKeyInfo.
fn spki_parts(spki_der: &[u8]) -> Option<(ObjectIdentifier, Option<ObjectIdentifier>)> {
    let spki = pkcs8::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    Some((spki.algorithm.oid, spki.algorithm.parameters_oid().ok()))
}

/// Seconds since the Unix epoch (negative before it).
fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Errors when the certificate is not valid at `now`; warns when it expires within [`EXPIRY_WARNING`].
fn check_validity(
    path: &Path,
    cert: &X509Certificate<'_>,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<SystemTime> {
    let validity = cert.validity();
    let now_s = unix_seconds(now);
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now_s < not_before {
        return Err(GgError::CertificateDates {
            path: path.to_path_buf(),
            expired: false,
            date: validity.not_before.to_string(),
        });
    }
    if now_s > not_after {
        return Err(GgError::CertificateDates {
            path: path.to_path_buf(),
            expired: true,
            date: validity.not_after.to_string(),
        });
    }
    let left = u64::try_from(not_after - now_s).unwrap_or(0);
    if left < EXPIRY_WARNING.as_secs() {
        warnings.push(format!(
            "claim certificate {} expires on {} (in {} days): devices that first boot after that cannot provision",
            path.display(),
            validity.not_after,
            left / 86_400
        ));
    }
    let not_after =
        u64::try_from(not_after).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s));
    Ok(not_after)
}

/// A warning when the key file is readable by group or others on the build host.
fn key_permission_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then(|| {
        format!(
            "claim key {} is readable by group or others on this host (mode {mode:04o}): `chmod 600` it",
            path.display()
        )
    })
}

/// The path of a claim file as `load_claim` resolves it (relative paths against `base_dir`).
pub fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    base_dir.join(path)
}
