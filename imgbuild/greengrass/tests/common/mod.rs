//! Test helpers: keys made by the real `openssl` tool, certificates made by rcgen with chosen validity,
//! and a `[greengrass]` section parsed from TOML the way the pipeline parses it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imgbuild_greengrass::GreengrassConfig;
use tempfile::TempDir;

/// Runs `openssl ARGS` and returns stdout; panics with stderr on failure.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A scratch directory for claim files.
pub struct Scratch {
    pub dir: TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg<'a>(&self, path: &'a Path) -> &'a str {
        path.to_str().expect("utf-8 temp path")
    }

    /// A new PKCS#8 private key: `rsa2048`, `rsa3072`, `p256`, `p384`, `secp256k1` or `ed25519`.
    pub fn key(&self, name: &str, kind: &str) -> PathBuf {
        let path = self.path(name);
        let out = self.arg(&path);
        let mut args = vec!["genpkey", "-out", out];
        match kind {
            "rsa2048" => args.extend(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            "rsa3072" => args.extend(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"]),
            "p256" => args.extend(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            "p384" => args.extend(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
            "secp256k1" => args.extend([
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:secp256k1",
            ]),
            "ed25519" => args.extend(["-algorithm", "ED25519"]),
            other => panic!("unknown key kind {other}"),
        }
        openssl(&args);
        path
    }

    /// The same key in the traditional format (PKCS#1 for RSA, SEC1 for EC), written by openssl.
    pub fn traditional(&self, pkcs8: &Path, name: &str) -> PathBuf {
        let path = self.path(name);
        openssl(&[
            "pkey",
            "-in",
            self.arg(pkcs8),
            "-traditional",
            "-out",
            self.arg(&path),
        ]);
        path
    }

    /// An `openssl ecparam -genkey` file: an `EC PARAMETERS` block followed by a SEC1 `EC PRIVATE KEY`.
    pub fn ecparam_key(&self, name: &str, curve: &str) -> PathBuf {
        let path = self.path(name);
        openssl(&[
            "ecparam",
            "-name",
            curve,
            "-genkey",
            "-out",
            self.arg(&path),
        ]);
        path
    }

    /// The key converted to PKCS#8 (for rcgen, which signs only with PKCS#8 keys).
    pub fn pkcs8_pem(&self, key: &Path) -> String {
        String::from_utf8(openssl(&["pkey", "-in", self.arg(key)])).expect("utf-8 PEM")
    }

    /// A self-signed claim-style certificate for `key`, valid from `not_before` to `not_after` (y, m, d).
    pub fn cert(
        &self,
        name: &str,
        key: &Path,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> PathBuf {
        let signer = rcgen::KeyPair::from_pem(&self.pkcs8_pem(key)).expect("rcgen key");
        let mut params = rcgen::CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "AWS IoT Certificate");
        let cert = params
            .self_signed(&signer)
            .expect("self-signed certificate");
        let path = self.path(name);
        std::fs::write(&path, cert.pem()).expect("write certificate");
        path
    }

    /// A certificate valid 2024-01-01 .. 2030-01-01 (so valid at [`now`]).
    pub fn valid_cert(&self, name: &str, key: &Path) -> PathBuf {
        self.cert(name, key, (2024, 1, 1), (2030, 1, 1))
    }

    /// Writes `contents` to `name` with mode 0600.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }
}

/// Seconds since the epoch of midnight UTC on a date.
pub fn at(year: i32, month: u8, day: u8) -> SystemTime {
    let seconds = rcgen::date_time_ymd(year, month, day).unix_timestamp();
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).expect("date after 1970"))
}

/// The fixed "now" of the claim tests.
pub fn now() -> SystemTime {
    at(2026, 6, 1)
}

/// A valid `[greengrass]` section body with these claim paths and `extra` TOML lines.
pub fn section(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        r#"region = "eu-central-1"
data_endpoint = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"
credential_endpoint = "c1d2e3f4g5h6i7.credentials.iot.eu-central-1.amazonaws.com"
role_alias = "GreengrassCoreTokenExchangeRoleAlias"
provisioning_template = "GreengrassFleetProvisioningTemplate"
claim_cert = {cert:?}
claim_key = {key:?}
{extra}
"#
    )
}

/// Parses a `[greengrass]` section body.
pub fn parse(body: &str) -> Result<GreengrassConfig, toml::de::Error> {
    toml::from_str(body)
}

/// A valid config with placeholder claim paths and `extra` TOML lines.
pub fn config(extra: &str) -> GreengrassConfig {
    parse(&section(
        Path::new("claim.pem.crt"),
        Path::new("claim.private.pem.key"),
        extra,
    ))
    .expect("valid section")
}

/// The base64 body lines of a PEM file (what must never leak).
pub fn secret_lines(pem: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(pem)
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// Asserts that `text` contains none of `lines`.
pub fn assert_no_secret(text: &str, lines: &[String]) {
    assert!(!lines.is_empty(), "no secret lines to look for");
    for line in lines {
        assert!(
            !text.contains(line.as_str()),
            "key material leaked into: {text}"
        );
        // Also no 16-character window of it (catches partial dumps).
        for window in line.as_bytes().windows(16).step_by(16) {
            let window = std::str::from_utf8(window).expect("base64 is ASCII");
            assert!(
                !text.contains(window),
                "key material fragment {window} leaked into: {text}"
            );
        }
    }
}

/// A self-signed certificate (PEM) named `cn`, a CA when `ca`, valid 2024-01-01 until January 1 of `until`.
pub fn ca_pem(cn: &str, ca: bool, until: i32) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.self_signed(&key).expect("self-signed").pem()
}
