//! Build-time checks of the claim certificate and key, with keys from openssl and certificates from rcgen.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_no_secret, at, now, openssl, parse, secret_lines, section, Scratch};
use imgbuild_greengrass::{load_claim, ClaimMaterial, GgError, KeyKind};

fn load(
    scratch: &Scratch,
    cert: &Path,
    key: &Path,
) -> Result<(ClaimMaterial, Vec<String>), GgError> {
    let cfg = parse(&section(cert, key, "")).expect("section");
    load_claim(&cfg, scratch.dir.path(), now())
}

/// openssl's verdict on whether the key belongs to the certificate (the independent oracle).
fn openssl_says_match(cert: &Path, key: &Path) -> bool {
    let cert_pub = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
    let key_pub = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
    cert_pub == key_pub
}

fn assert_one_line_naming(err: &GgError, path: &Path) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "multi-line error: {text}");
    assert!(
        text.contains(path.to_str().unwrap()),
        "error does not name {}: {text}",
        path.display()
    );
}

#[test]
fn matching_pairs_in_every_supported_format_are_accepted() {
    let scratch = Scratch::new();
    let cases: Vec<(&str, KeyKind, bool)> = vec![
        ("rsa2048", KeyKind::Rsa(2048), false),
        ("rsa2048", KeyKind::Rsa(2048), true),
        ("rsa3072", KeyKind::Rsa(3072), false),
        ("p256", KeyKind::P256, false),
        ("p256", KeyKind::P256, true),
        ("p384", KeyKind::P384, false),
        ("p384", KeyKind::P384, true),
    ];
    for (i, (kind, expected_kind, traditional)) in cases.into_iter().enumerate() {
        let pkcs8 = scratch.key(&format!("key{i}.pem"), kind);
        let key = if traditional {
            scratch.traditional(&pkcs8, &format!("key{i}.trad.pem"))
        } else {
            pkcs8
        };
        let label = String::from_utf8(std::fs::read(&key).unwrap()).unwrap();
        let want_label = match (kind, traditional) {
            (_, false) => "-----BEGIN PRIVATE KEY-----",
            ("rsa2048", true) => "-----BEGIN RSA PRIVATE KEY-----",
            _ => "-----BEGIN EC PRIVATE KEY-----",
        };
        assert!(
            label.starts_with(want_label),
            "{kind} traditional={traditional}: openssl wrote {label:.40}"
        );
        let cert = scratch.valid_cert(&format!("cert{i}.pem"), &key);
        assert!(openssl_says_match(&cert, &key));

        let (claim, warnings) = load(&scratch, &cert, &key)
            .unwrap_or_else(|e| panic!("{kind} traditional={traditional} rejected: {e}"));
        assert_eq!(claim.key_kind, expected_kind);
        assert_eq!(
            claim.cert_pem,
            std::fs::read(&cert).unwrap(),
            "certificate bytes are kept as given"
        );
        assert_eq!(
            claim.key_pem.expose_secret(),
            std::fs::read(&key).unwrap(),
            "key bytes are kept as given"
        );
        assert!(
            claim.subject.contains("AWS IoT Certificate"),
            "{}",
            claim.subject
        );
        assert_eq!(claim.not_after, at(2030, 1, 1));
        let fingerprint = String::from_utf8(openssl(&[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ]))
        .unwrap();
        assert_eq!(
            fingerprint
                .trim()
                .rsplit('=')
                .next()
                .unwrap()
                .replace(':', "")
                .to_lowercase(),
            claim.cert_sha256
        );
        assert!(
            warnings.iter().all(|w| !w.contains("expires")),
            "{warnings:?}"
        );
    }
}

#[test]
fn ec_key_with_parameters_block_from_openssl_ecparam_is_accepted() {
    let scratch = Scratch::new();
    for (curve, kind) in [("prime256v1", KeyKind::P256), ("secp384r1", KeyKind::P384)] {
        let key = scratch.ecparam_key(&format!("{curve}.pem"), curve);
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(text.contains("EC PARAMETERS") && text.contains("EC PRIVATE KEY"));
        let cert = scratch.valid_cert(&format!("{curve}.crt"), &key);
        let (claim, _) = load(&scratch, &cert, &key).expect("ecparam key accepted");
        assert_eq!(claim.key_kind, kind);
    }
}

#[test]
fn mismatching_pairs_are_rejected_naming_both_files() {
    let scratch = Scratch::new();
    let rsa_a = scratch.key("rsa_a.pem", "rsa2048");
    let rsa_b = scratch.key("rsa_b.pem", "rsa2048");
    let p256 = scratch.key("p256.pem", "p256");
    let p384 = scratch.key("p384.pem", "p384");
    let rsa_b_pkcs1 = scratch.traditional(&rsa_b, "rsa_b.pkcs1.pem");
    let pairs = [
        (scratch.valid_cert("a.crt", &rsa_a), rsa_b.clone()),
        (scratch.valid_cert("a2.crt", &rsa_a), rsa_b_pkcs1),
        (scratch.valid_cert("b.crt", &rsa_b), p256.clone()),
        (scratch.valid_cert("p384.crt", &p384), p256.clone()),
        (
            scratch.valid_cert("p256.crt", &p256),
            scratch.key("p256_other.pem", "p256"),
        ),
        (scratch.valid_cert("p256b.crt", &p256), rsa_a.clone()),
    ];
    for (cert, key) in pairs {
        assert!(
            !openssl_says_match(&cert, &key),
            "test setup: openssl thinks they match"
        );
        let err = load(&scratch, &cert, &key).expect_err("mismatch accepted");
        assert_one_line_naming(&err, &key);
        assert!(err.to_string().contains(cert.to_str().unwrap()), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(
            matches!(&err, GgError::KeyMismatch { key: k, cert: c, .. } if k == &key && c == &cert),
            "{err:?}"
        );
        assert_no_secret(
            &err.to_string(),
            &secret_lines(&std::fs::read(&key).unwrap()),
        );
    }
}

#[test]
fn expired_and_not_yet_valid_certificates_are_rejected() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p256");
    let expired = scratch.cert("expired.crt", &key, (2020, 1, 1), (2026, 5, 31));
    let err = load(&scratch, &expired, &key).expect_err("expired accepted");
    assert_one_line_naming(&err, &expired);
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(
        matches!(&err, GgError::CertificateDates { expired: true, .. }),
        "{err:?}"
    );

    let future = scratch.cert("future.crt", &key, (2026, 6, 2), (2030, 1, 1));
    let err = load(&scratch, &future, &key).expect_err("not-yet-valid accepted");
    assert_one_line_naming(&err, &future);
    assert!(err.to_string().contains("not valid before"), "{err}");
    assert!(
        matches!(&err, GgError::CertificateDates { expired: false, .. }),
        "{err:?}"
    );
}

#[test]
fn certificate_expiring_within_30_days_gives_a_warning() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "rsa2048");
    let soon = scratch.cert("soon.crt", &key, (2025, 1, 1), (2026, 6, 11));
    let (claim, warnings) = load(&scratch, &soon, &key).expect("valid for 10 more days");
    assert_eq!(claim.not_after, at(2026, 6, 11));
    let expiring: Vec<_> = warnings.iter().filter(|w| w.contains("expires")).collect();
    assert_eq!(expiring.len(), 1, "{warnings:?}");
    assert!(
        expiring[0].contains("in 10 days") && expiring[0].contains(soon.to_str().unwrap()),
        "{warnings:?}"
    );

    let later = scratch.cert("later.crt", &key, (2025, 1, 1), (2026, 7, 2));
    let (_, warnings) = load(&scratch, &later, &key).expect("valid for 31 more days");
    assert!(
        warnings.iter().all(|w| !w.contains("expires")),
        "{warnings:?}"
    );
}

#[test]
fn garbage_empty_and_missing_files_are_errors_naming_the_path() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p256");
    let cert = scratch.valid_cert("cert.pem", &key);
    let der = openssl(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]);
    let bad_files = [
        scratch.write("empty", b""),
        scratch.write("blank", b"\n  \n"),
        scratch.write("text", b"hello, I am not a certificate\n"),
        scratch.write(
            "badb64",
            b"-----BEGIN CERTIFICATE-----\n!!!*not base64*!!!\n-----END CERTIFICATE-----\n",
        ),
        scratch.write("unterminated", b"-----BEGIN CERTIFICATE-----\nMIIB\n"),
        scratch.write("der", &der),
        scratch.write(
            "junkcert",
            b"-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n",
        ),
        scratch.path("does-not-exist"),
    ];
    for bad in &bad_files {
        let err = load(&scratch, bad, &key).expect_err("bad certificate accepted");
        assert_one_line_naming(&err, bad);
        assert!(err.to_string().starts_with("claim certificate"), "{err}");
        let err = load(&scratch, &cert, bad).expect_err("bad key accepted");
        assert_one_line_naming(&err, bad);
        assert!(err.to_string().starts_with("claim key"), "{err}");
        let missing = !bad.exists();
        assert!(
            matches!(
                (&err, missing),
                (
                    GgError::Read {
                        what: "claim key",
                        opening: true,
                        kind: std::io::ErrorKind::NotFound,
                        ..
                    },
                    true
                ) | (
                    GgError::File {
                        what: "claim key",
                        ..
                    },
                    false
                )
            ),
            "{err:?}"
        );
    }
    let err = load(&scratch, &cert, &cert).expect_err("certificate as key accepted");
    assert!(err.to_string().contains("no private key block"), "{err}");
    let err = load(&scratch, &key, &key).expect_err("key as certificate accepted");
    assert!(
        err.to_string().contains("also contains a private key"),
        "{err}"
    );
}

#[test]
fn encrypted_and_unsupported_keys_are_explained() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "rsa2048");
    let cert = scratch.valid_cert("cert.pem", &key);
    let encrypted = scratch.path("encrypted.pem");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        key.to_str().unwrap(),
        "-out",
        encrypted.to_str().unwrap(),
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:secret",
    ]);
    let err = load(&scratch, &cert, &encrypted).expect_err("encrypted key accepted");
    assert_one_line_naming(&err, &encrypted);
    assert!(err.to_string().contains("encrypted"), "{err}");

    let k1 = scratch.key("k1.pem", "secp256k1");
    let err = load(&scratch, &cert, &k1).expect_err("secp256k1 accepted");
    assert!(
        err.to_string().contains("unsupported elliptic curve"),
        "{err}"
    );
    let k1_sec1 = scratch.traditional(&k1, "k1.sec1.pem");
    let err = load(&scratch, &cert, &k1_sec1).expect_err("secp256k1 SEC1 accepted");
    assert!(
        err.to_string().contains("unsupported elliptic curve"),
        "{err}"
    );

    let ed = scratch.key("ed.pem", "ed25519");
    let err = load(&scratch, &cert, &ed).expect_err("ed25519 accepted");
    assert!(
        err.to_string().contains("unsupported key algorithm"),
        "{err}"
    );
}

#[test]
fn key_material_never_appears_in_errors_or_debug_output() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "rsa2048");
    let key_pkcs1 = scratch.traditional(&key, "key.pkcs1.pem");
    let cert = scratch.valid_cert("cert.pem", &key);
    let other_cert = scratch.valid_cert("other.crt", &scratch.key("other.pem", "rsa2048"));
    let mut texts = Vec::new();
    let mut secrets = Vec::new();
    for key in [&key, &key_pkcs1] {
        let pem = std::fs::read(key).unwrap();
        secrets.extend(secret_lines(&pem));

        let (claim, warnings) = load(&scratch, &cert, key).expect("matching pair");
        texts.push(format!("{claim:?}"));
        texts.push(format!("{:?}", claim.key_pem));
        texts.extend(warnings);
        texts.push(format!("{:?}", load(&scratch, &other_cert, key)));

        // A key garbled in its middle: the error must not echo the lines around the damage.
        let mut garbled = String::from_utf8(pem.clone()).unwrap();
        let middle = garbled.len() / 2;
        garbled.replace_range(middle..middle + 1, "*");
        let garbled = scratch.write("garbled.pem", garbled.as_bytes());
        texts.push(format!("{:?}", load(&scratch, &cert, &garbled)));
        // A key whose base64 is fine but whose DER is cut short.
        let text = String::from_utf8(pem).unwrap();
        let body: Vec<&str> = text.lines().collect();
        let cut = [
            &body[..1],
            &body[1..body.len() / 2],
            &body[body.len() - 1..],
        ]
        .concat()
        .join("\n");
        let cut = scratch.write("cut.pem", cut.as_bytes());
        texts.push(format!("{:?}", load(&scratch, &cert, &cut)));
    }
    assert!(texts.iter().any(|t| t.contains("<redacted")), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("does not decode") || t.contains("garbled")),
        "{texts:?}"
    );
    for text in &texts {
        assert_no_secret(text, &secrets);
    }
}

#[test]
fn group_or_world_readable_key_gives_a_warning_not_an_error() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p256");
    let cert = scratch.valid_cert("cert.pem", &key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, warnings) = load(&scratch, &cert, &key).expect("readable key still accepted");
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("0644") && w.contains(key.to_str().unwrap())),
        "{warnings:?}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, warnings) = load(&scratch, &cert, &key).expect("private key accepted");
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn relative_claim_paths_resolve_against_the_config_directory() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p384");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    scratch.valid_cert("cert.pem", &key);
    let cfg = parse(&section(Path::new("cert.pem"), Path::new("key.pem"), "")).unwrap();
    let (claim, _) = load_claim(&cfg, scratch.dir.path(), now()).expect("relative paths");
    assert_eq!(claim.key_kind, KeyKind::P384);
    let err = load_claim(&cfg, Path::new("/nonexistent-dir"), now()).expect_err("wrong base dir");
    assert!(
        err.to_string().contains("/nonexistent-dir/cert.pem"),
        "{err}"
    );
}

/// Deterministic byte mutations (xorshift), so a failure can be replayed.
fn mutations(der: &[u8], count: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|i| {
            let mut bytes = der.to_vec();
            match i % 3 {
                0 => {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
                1 => bytes.truncate((next() as usize) % bytes.len()),
                _ => {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = 0xff;
                }
            }
            bytes
        })
        .collect()
}

#[test]
fn mutated_certificates_and_keys_never_panic_and_fail_in_one_line() {
    let scratch = Scratch::new();
    for kind in ["rsa2048", "p256"] {
        let pkcs8 = scratch.key(&format!("{kind}.pem"), kind);
        let traditional = scratch.traditional(&pkcs8, &format!("{kind}.trad.pem"));
        let cert = scratch.valid_cert(&format!("{kind}.crt"), &pkcs8);
        for (source, label, is_key) in [
            (&cert, "CERTIFICATE", false),
            (&pkcs8, "PRIVATE KEY", true),
            (
                &traditional,
                if kind == "p256" {
                    "EC PRIVATE KEY"
                } else {
                    "RSA PRIVATE KEY"
                },
                true,
            ),
        ] {
            let der = pem::parse(std::fs::read(source).unwrap())
                .unwrap()
                .into_contents();
            for (i, bytes) in mutations(&der, 150).into_iter().enumerate() {
                let path = scratch.write(
                    "mutated.pem",
                    pem::encode(&pem::Pem::new(label, bytes)).as_bytes(),
                );
                let result = if is_key {
                    load(&scratch, &cert, &path)
                } else {
                    load(&scratch, &path, &pkcs8)
                };
                if let Err(err) = result {
                    assert!(
                        !err.to_string().contains('\n'),
                        "{kind} {label} mutation {i}: {err}"
                    );
                    assert!(
                        err.to_string().contains(path.to_str().unwrap())
                            || err.to_string().contains("does not belong"),
                        "{err}"
                    );
                }
            }
        }
    }
}
