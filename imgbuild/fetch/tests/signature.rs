//! Detached OpenPGP signatures: keys and signatures made in the test with rPGP and with GnuPG
//! (an independent implementation), served from 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, options, sha256sum, Server};
use imgbuild_fetch::{fetch, Cache, FetchError, SignatureSource, SigningKey, Source};
use pgp::composed::{
    ArmorOptions, DetachedSignature, EncryptionCaps, KeyType, SecretKeyParamsBuilder,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::ser::Serialize;
use pgp::types::{KeyDetails, Password};
use tempfile::TempDir;

const LEN: usize = 512 * 1024 + 3;

/// Generates an Ed25519 key; with `subkey`, signing is left to a bound signing subkey.
fn keygen(uid: &str, subkey: bool) -> SignedSecretKey {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(!subkey)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(uid.into());
    if subkey {
        let mut sub = SubkeyParamsBuilder::default();
        sub.key_type(KeyType::Ed25519Legacy)
            .can_sign(true)
            .can_encrypt(EncryptionCaps::None)
            .can_authenticate(false);
        params.subkeys(vec![sub.build().unwrap()]);
    }
    params
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

/// The armored public key of `key`.
fn public_armor(key: &SignedSecretKey) -> Vec<u8> {
    key.to_public_key()
        .to_armored_bytes(ArmorOptions::default())
        .unwrap()
}

/// A binary-data detached signature over `data`, by the primary key or the first subkey.
fn sign(key: &SignedSecretKey, data: &[u8], by_subkey: bool) -> DetachedSignature {
    let rng = rand::thread_rng();
    let pw = Password::empty();
    if by_subkey {
        let sub = &key.secret_subkeys[0].key;
        DetachedSignature::sign_binary_data(rng, sub, &pw, HashAlgorithm::Sha256, data).unwrap()
    } else {
        DetachedSignature::sign_binary_data(rng, &key.primary_key, &pw, HashAlgorithm::Sha256, data)
            .unwrap()
    }
}

/// A server with an image and its signature, and the source describing them.
struct Signed {
    server: Server,
    dir: TempDir,
    source: Source,
}

/// Serves `served` as the image (pinned by its own sha256) and `signature` next to it; the source
/// pins `key_file` with `fingerprint`.
fn signed(served: &[u8], signature: Vec<u8>, key_file: Vec<u8>, fingerprint: &str) -> Signed {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let sha = sha256sum(served, dir.path());
    let url = server.serve("/os.img.xz", served.to_vec());
    let sig_url = server.serve("/os.img.xz.sig", signature);
    let source = Source {
        url,
        sha256: Some(sha),
        sha512: None,
        signature: Some(SignatureSource {
            url: sig_url,
            key: key_file,
            fingerprint: fingerprint.to_string(),
        }),
    };
    Signed {
        server,
        dir,
        source,
    }
}

impl Signed {
    fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Asserts the failed fetch left neither a download nor a partial file behind.
    fn assert_cache_empty(&self) {
        let cache = Cache::open(self.cache_dir()).unwrap();
        assert!(cache.ls().unwrap().is_empty());
    }
}

/// The fingerprint as people print it: upper case, groups of four.
fn spaced_upper(fingerprint: &str) -> String {
    fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn signature_by_primary_key_verifies_and_is_remembered() {
    let key = keygen("Images <images@example.invalid>", false);
    let data = fixture(LEN, 21);
    let sig = sign(&key, &data, false)
        .to_armored_bytes(ArmorOptions::default())
        .unwrap();
    let fp = spaced_upper(&key.fingerprint().to_string());
    let s = signed(&data, sig, public_armor(&key), &fp);
    let opts = options(&s.cache_dir());

    let got = fetch(&s.source, &opts).unwrap();
    assert!(got.hash_verified && got.signature_verified);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let targets: Vec<String> = s.server.seen().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/os.img.xz.sig", "/os.img.xz"]);

    let again = fetch(&s.source, &opts).unwrap();
    assert!(again.from_cache && again.signature_verified);
    assert_eq!(
        s.server.requests(),
        2,
        "a cache hit fetches neither file nor signature"
    );
}

#[test]
fn binary_signature_by_signing_subkey_verifies() {
    let key = keygen("Images <images@example.invalid>", true);
    let data = fixture(LEN, 22);
    let sig = sign(&key, &data, true).to_bytes().unwrap();
    let binary_key = key.to_public_key().to_bytes().unwrap();
    let s = signed(&data, sig, binary_key, &key.fingerprint().to_string());
    let got = fetch(&s.source, &options(&s.cache_dir())).unwrap();
    assert!(got.signature_verified);
}

#[test]
fn tampered_file_fails_and_is_not_cached() {
    let key = keygen("Images <images@example.invalid>", false);
    let data = fixture(LEN, 23);
    let sig = sign(&key, &data, false)
        .to_armored_bytes(ArmorOptions::default())
        .unwrap();
    let mut tampered = data.clone();
    tampered[LEN / 2] ^= 0x01;
    // The tampered bytes are pinned by their own hash, so only the signature can catch them.
    let s = signed(
        &tampered,
        sig,
        public_armor(&key),
        &key.fingerprint().to_string(),
    );
    let err = fetch(&s.source, &options(&s.cache_dir())).unwrap_err();
    assert!(matches!(err, FetchError::Signature { .. }), "{err}");
    assert!(err.to_string().contains(&s.source.url), "{err}");
    s.assert_cache_empty();
}

#[test]
fn signature_by_another_key_fails() {
    let pinned = keygen("Images <images@example.invalid>", false);
    let other = keygen("Mallory <mallory@example.invalid>", false);
    let data = fixture(LEN, 24);
    let sig = sign(&other, &data, false)
        .to_armored_bytes(ArmorOptions::default())
        .unwrap();
    let s = signed(
        &data,
        sig,
        public_armor(&pinned),
        &pinned.fingerprint().to_string(),
    );
    let err = fetch(&s.source, &options(&s.cache_dir())).unwrap_err();
    assert!(matches!(err, FetchError::Signature { .. }), "{err}");
    assert!(
        err.to_string().contains(&other.fingerprint().to_string()),
        "names the signer: {err}"
    );
    s.assert_cache_empty();
}

#[test]
fn key_file_with_wrong_fingerprint_is_refused_before_any_request() {
    let key = keygen("Images <images@example.invalid>", false);
    let other = keygen("Other <other@example.invalid>", false);
    let data = fixture(LEN, 25);
    let sig = sign(&key, &data, false).to_bytes().unwrap();
    let s = signed(
        &data,
        sig,
        public_armor(&key),
        &other.fingerprint().to_string(),
    );
    let err = fetch(&s.source, &options(&s.cache_dir())).unwrap_err();
    assert!(matches!(err, FetchError::SigningKey { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&key.fingerprint().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&other.fingerprint().to_string()),
        "{message}"
    );
    assert_eq!(s.server.requests(), 0);
}

#[test]
fn garbage_key_and_signature_are_errors_not_panics() {
    let key = keygen("Images <images@example.invalid>", false);
    let fp = key.fingerprint().to_string();
    for garbage in [
        &b""[..],
        b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx",
        &[0xffu8; 64],
    ] {
        let err = SigningKey::parse(garbage, &fp).unwrap_err();
        assert!(matches!(err, FetchError::SigningKey { .. }), "{err}");
    }
    let parsed = SigningKey::parse(&public_armor(&key), &fp).unwrap();
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"data").unwrap();
    for garbage in [
        &b""[..],
        b"-----BEGIN PGP SIGNATURE-----\n\n",
        &[0x88u8; 40],
    ] {
        let err = parsed.verify_file(&file, garbage, "f").unwrap_err();
        assert!(matches!(err, FetchError::Signature { .. }), "{err}");
    }
}

#[test]
fn insecure_mode_skips_the_signature() {
    let key = keygen("Images <images@example.invalid>", false);
    let data = fixture(LEN, 26);
    let s = signed(&data, b"not a signature".to_vec(), public_armor(&key), "00");
    let mut opts = options(&s.cache_dir());
    opts.insecure_no_verify = true;
    let got = fetch(&s.source, &opts).unwrap();
    assert!(got.hash_verified && !got.signature_verified);
    assert_eq!(s.server.requests(), 1, "the signature is not even fetched");
}

/// A throw-away GnuPG home; its agent is stopped on drop.
struct GnuPg {
    home: TempDir,
}

impl GnuPg {
    fn new() -> GnuPg {
        GnuPg {
            home: TempDir::new().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(self.home.path())
            .args([
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("gpg (Debian package gnupg) must be installed");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The fingerprint of the only key, from `--with-colons` output.
    fn fingerprint(&self) -> String {
        let listing = String::from_utf8(self.run(&["--with-colons", "--list-keys"])).unwrap();
        let fpr = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .expect("a fingerprint line");
        fpr.split(':').nth(9).unwrap().to_string()
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// Writes `data` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn gnupg_made_key_and_signatures_verify() {
    let gpg = GnuPg::new();
    gpg.run(&[
        "--quick-gen-key",
        "Release <release@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    let fingerprint = gpg.fingerprint();
    let armored_key = gpg.run(&["--armor", "--export"]);
    let key = SigningKey::parse(&armored_key, &fingerprint).unwrap();
    assert_eq!(key.fingerprint(), fingerprint.to_lowercase());

    let work = TempDir::new().unwrap();
    let data = fixture(LEN, 27);
    let file = write(work.path(), "os.img.xz", &data);
    let binary_sig = gpg.run(&["--output", "-", "--detach-sign", &file]);
    let armored_sig = gpg.run(&["--output", "-", "--armor", "--detach-sign", &file]);
    for sig in [&binary_sig, &armored_sig] {
        key.verify_file(Path::new(&file), sig, "os.img.xz").unwrap();
    }

    let mut tampered = data.clone();
    tampered[7] ^= 0x80;
    let tampered_file = write(work.path(), "tampered", &tampered);
    let err = key
        .verify_file(Path::new(&tampered_file), &binary_sig, "tampered")
        .unwrap_err();
    assert!(matches!(err, FetchError::Signature { .. }), "{err}");
}

#[test]
fn gnupg_verifies_what_this_crate_accepts() {
    // The other direction: a signature made with rPGP in these tests is valid for GnuPG too, so
    // the rPGP-made fixtures above are real OpenPGP.
    let key = keygen("Images <images@example.invalid>", false);
    let work = TempDir::new().unwrap();
    let data = fixture(LEN, 28);
    let file = write(work.path(), "os.img.xz", &data);
    let sig = sign(&key, &data, false).to_bytes().unwrap();
    let sig_file = write(work.path(), "os.img.xz.sig", &sig);
    let key_file = write(work.path(), "key.asc", &public_armor(&key));
    let gpg = GnuPg::new();
    gpg.run(&["--import", &key_file]);
    gpg.run(&["--verify", &sig_file, &file]);
    assert_eq!(
        gpg.fingerprint(),
        key.fingerprint().to_string().to_uppercase()
    );
}
