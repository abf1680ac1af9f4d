//! Verification: sha256 of files and detached OpenPGP signatures (rPGP, pure Rust).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::types::KeyDetails;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{one_line, FetchError};

/// Size of the read buffer used when hashing files.
const HASH_BUFFER: usize = 1 << 20;

/// Returns the lowercase hex sha256 of the file at `path`.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    digest_file::<Sha256>(path)
}

/// Returns the lowercase hex sha512 of the file at `path`.
pub fn sha512_file(path: &Path) -> Result<String, FetchError> {
    digest_file::<Sha512>(path)
}

/// Returns the lowercase hex digest `D` of the file at `path`.
fn digest_file<D: Digest>(path: &Path) -> Result<String, FetchError> {
    let mut file = File::open(path).map_err(|e| FetchError::io("open", path, e))?;
    let mut hasher = D::new();
    hash_reader(&mut file, |b| hasher.update(b)).map_err(|e| FetchError::io("read", path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Feeds everything `reader` yields into `sink`; returns the byte count.
pub(crate) fn hash_reader(
    reader: &mut impl Read,
    mut sink: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sink(&buf[..n]);
        total += n as u64;
    }
}

/// Checks that `value` is a sha256 (64 hex digits, case-insensitive) and returns it lowercase.
pub fn normalize_sha256(value: &str) -> Result<String, FetchError> {
    normalize_hex(value, 64).ok_or_else(|| FetchError::BadHash {
        value: value.trim().chars().take(100).collect(),
    })
}

/// Checks that `value` is a sha512 (128 hex digits, case-insensitive; the form Debian's
/// `SHA512SUMS` lists) and returns it lowercase.
pub fn normalize_sha512(value: &str) -> Result<String, FetchError> {
    normalize_hex(value, 128).ok_or_else(|| FetchError::BadSha512 {
        value: value.trim().chars().take(160).collect(),
    })
}

fn normalize_hex(value: &str, len: usize) -> Option<String> {
    let trimmed = value.trim();
    (trimmed.len() == len && trimmed.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| trimmed.to_ascii_lowercase())
}

/// Normalizes an OpenPGP fingerprint as people write it (`"ABCD 1234 …"`, `0x…`) to lowercase hex.
fn normalize_fingerprint(value: &str) -> String {
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let hex = compact
        .strip_prefix("0x")
        .or_else(|| compact.strip_prefix("0X"))
        .unwrap_or(&compact);
    hex.to_ascii_lowercase()
}

/// An OpenPGP public key (certificate) whose primary fingerprint matched the pinned one.
#[derive(Debug, Clone)]
pub struct SigningKey {
    key: SignedPublicKey,
}

impl SigningKey {
    /// Parses an OpenPGP public key, ASCII-armored or binary (e.g. the contents of a key file
    /// shipped under `boards/keys/`), and checks that its primary key has `fingerprint`
    /// (hex; spaces and a `0x` prefix are ignored).
    pub fn parse(key_bytes: &[u8], fingerprint: &str) -> Result<SigningKey, FetchError> {
        let (key, _) =
            SignedPublicKey::from_reader_single(key_bytes).map_err(|e| FetchError::SigningKey {
                detail: format!(
                    "not a readable OpenPGP public key: {}",
                    one_line(&e.to_string())
                ),
            })?;
        let expected = normalize_fingerprint(fingerprint);
        let actual = key.fingerprint().to_string().to_ascii_lowercase();
        if expected != actual {
            return Err(FetchError::SigningKey {
                detail: format!(
                    "fingerprint is {actual}, but {expected} is pinned: \
                     the key file does not belong to this board"
                ),
            });
        }
        Ok(SigningKey { key })
    }

    /// The primary key's fingerprint, lowercase hex.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint().to_string().to_ascii_lowercase()
    }

    /// Verifies the detached signature `signature` (armored or binary) over the file at `path`.
    /// The signature must be made by the primary key or by a signing subkey bound to it.
    /// `what` names the signed file in errors (its URL, usually).
    pub fn verify_file(&self, path: &Path, signature: &[u8], what: &str) -> Result<(), FetchError> {
        let fail = |detail: String| FetchError::Signature {
            what: what.to_string(),
            detail: one_line(&detail),
        };
        let sig = parse_signature(signature).map_err(&fail)?;
        let open = || {
            File::open(path)
                .map(|f| BufReader::with_capacity(HASH_BUFFER, f))
                .map_err(|e| FetchError::io("open", path, e))
        };
        if signer_matches(&sig, &self.key.primary_key) {
            return sig
                .signature
                .verify(&self.key.primary_key, open()?)
                .map_err(|e| fail(format!("does not verify with the pinned key: {e}")));
        }
        let Some(subkey) = self
            .key
            .public_subkeys
            .iter()
            .find(|sub| signer_matches(&sig, &sub.key))
        else {
            return Err(fail(format!(
                "it was made by key {}, which is not part of the pinned key {}",
                issuer_text(&sig),
                self.fingerprint()
            )));
        };
        self.check_signing_subkey(subkey).map_err(&fail)?;
        sig.signature
            .verify(&subkey.key, open()?)
            .map_err(|e| fail(format!("does not verify with the pinned key's subkey: {e}")))
    }

    /// Checks that `subkey` is bound to the primary key as a signing key.
    fn check_signing_subkey(&self, subkey: &SignedPublicSubKey) -> Result<(), String> {
        subkey
            .verify_bindings(&self.key.primary_key)
            .map_err(|e| format!("subkey {} is not validly bound: {e}", subkey.fingerprint()))?;
        if subkey.signatures.iter().any(|s| s.key_flags().sign()) {
            Ok(())
        } else {
            Err(format!(
                "subkey {} is not allowed to sign",
                subkey.fingerprint()
            ))
        }
    }
}

/// Parses a detached signature, armored or binary.
fn parse_signature(bytes: &[u8]) -> Result<DetachedSignature, String> {
    DetachedSignature::from_reader_single(bytes)
        .map(|(sig, _)| sig)
        .map_err(|e| format!("not a readable detached signature: {e}"))
}

/// Whether the signature names `key` as its issuer (by fingerprint or key id).
fn signer_matches(sig: &DetachedSignature, key: &impl KeyDetails) -> bool {
    let fingerprint = key.fingerprint();
    let key_id = key.legacy_key_id();
    sig.signature
        .issuer_fingerprint()
        .iter()
        .any(|fp| **fp == fingerprint)
        || sig
            .signature
            .issuer_key_id()
            .iter()
            .any(|id| **id == key_id)
}

/// The issuer of a signature, for messages.
fn issuer_text(sig: &DetachedSignature) -> String {
    if let Some(fp) = sig.signature.issuer_fingerprint().first() {
        return fp.to_string();
    }
    match sig.signature.issuer_key_id().first() {
        Some(id) => id.to_string(),
        None => "an unnamed key".to_string(),
    }
}
