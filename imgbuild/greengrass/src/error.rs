//! The error type of this crate: always one line, naming what failed, where, and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::claim::KeyKind;

/// A Greengrass payload error: one line naming what failed and where, and when possible what to do.
///
/// The variant tells a caller what kind of problem it is (a setting, a file, the pair of claim
/// files, a template, imgbuild's own root CA). Messages never contain private key material:
/// errors about the claim key name the file and the problem only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgError {
    /// A `[greengrass]` setting is missing, malformed or contradicts another one; the message
    /// names the key and what to write instead.
    Setting(String),
    /// A file the section names (`what`: claim certificate, claim key, `[greengrass] root_ca`)
    /// cannot be opened or read.
    Read {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why (the I/O error's kind; never the file's contents).
        kind: io::ErrorKind,
        /// Whether opening (rather than reading) failed.
        opening: bool,
    },
    /// A file the section names was read, but its contents are unusable: not PEM, not a
    /// certificate, an unsupported or encrypted key, an expired CA, …
    File {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it and what to do.
        problem: String,
    },
    /// The claim key does not belong to the claim certificate.
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The key's kind.
        kind: KeyKind,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The claim certificate is not valid at build time.
    CertificateDates {
        /// The certificate file.
        path: PathBuf,
        /// True: expired on `date`; false: not valid before `date`.
        expired: bool,
        /// The certificate's notAfter or notBefore.
        date: String,
    },
    /// The fleet-provisioning plugin config template does not parse or render, or its result
    /// lacks the serial placeholder.
    Template {
        /// Which template (the project's file or the built-in one).
        origin: String,
        /// What went wrong, with the template engine's causes.
        problem: String,
    },
    /// imgbuild's own copy of Amazon Root CA 1 fails its pinned checks (a damaged checkout).
    BuiltInRootCa(String),
}

/// Result alias of this crate.
pub type Result<T, E = GgError> = std::result::Result<T, E>;

/// `text` on one line: line breaks and runs of whitespace fold to single spaces.
pub(crate) fn one_line(text: impl Into<String>) -> String {
    let text: String = text.into();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl GgError {
    /// A [`GgError::Setting`] error.
    pub fn setting(message: impl Into<String>) -> GgError {
        GgError::Setting(one_line(message))
    }

    /// A [`GgError::File`] error about the file `what` at `path`.
    pub fn file(what: &'static str, path: &std::path::Path, problem: impl Into<String>) -> GgError {
        GgError::File {
            what,
            path: path.to_path_buf(),
            problem: one_line(problem),
        }
    }

    /// A [`GgError::Template`] error.
    pub fn template(origin: impl Into<String>, problem: impl Into<String>) -> GgError {
        GgError::Template {
            origin: one_line(origin),
            problem: one_line(problem),
        }
    }
}

impl fmt::Display for GgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgError::Setting(message) | GgError::BuiltInRootCa(message) => f.write_str(message),
            GgError::Read {
                what,
                path,
                kind,
                opening: true,
            } => write!(
                f,
                "{what} {}: cannot open ({kind}): check the [greengrass] path",
                path.display()
            ),
            GgError::Read {
                what, path, kind, ..
            } => write!(f, "{what} {}: cannot read ({kind})", path.display()),
            GgError::File {
                what,
                path,
                problem,
            } => write!(f, "{what} {}: {problem}", path.display()),
            GgError::KeyMismatch { key, kind, cert } => write!(
                f,
                "claim key {} ({kind}) does not belong to claim certificate {}: use the key created \
                 together with the certificate",
                key.display(),
                cert.display()
            ),
            GgError::CertificateDates {
                path,
                expired: true,
                date,
            } => write!(
                f,
                "claim certificate {}: expired on {date}: create a new provisioning claim",
                path.display()
            ),
            GgError::CertificateDates { path, date, .. } => write!(
                f,
                "claim certificate {}: not valid before {date} (check the build host's clock or the \
                 certificate)",
                path.display()
            ),
            GgError::Template { origin, problem } => write!(f, "{origin}: {problem}"),
        }
    }
}

impl std::error::Error for GgError {}

/// Returns early with a [`GgError::Setting`] built from a format string.
macro_rules! setting_bail {
    ($($arg:tt)*) => { return Err($crate::error::GgError::setting(format!($($arg)*))) };
}
pub(crate) use setting_bail;

/// Returns early with a [`GgError::File`]: `file_bail!(what, path, "problem {}", args…)`.
macro_rules! file_bail {
    ($what:expr, $path:expr, $($arg:tt)*) => {
        return Err($crate::error::GgError::file($what, $path, format!($($arg)*)))
    };
}
pub(crate) use file_bail;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_variant_displays_one_line_naming_the_file() {
        let p = Path::new("/x/claim.pem");
        let cases = [
            GgError::setting("[greengrass] region\n  = \"x\""),
            GgError::Read {
                what: "claim key",
                path: p.into(),
                kind: io::ErrorKind::NotFound,
                opening: true,
            },
            GgError::file("claim certificate", p, "garbled\tPEM"),
            GgError::KeyMismatch {
                key: p.into(),
                kind: KeyKind::P256,
                cert: p.into(),
            },
            GgError::CertificateDates {
                path: p.into(),
                expired: true,
                date: "Jan 1 2020".into(),
            },
            GgError::template("templates/x.tera", "parsing failed:\n  line 3"),
        ];
        for e in &cases {
            let text = e.to_string();
            assert!(!text.contains('\n') && !text.contains('\t'), "{text}");
        }
        assert_eq!(cases[0].to_string(), "[greengrass] region = \"x\"");
        assert_eq!(
            cases[1].to_string(),
            "claim key /x/claim.pem: cannot open (entity not found): check the [greengrass] path"
        );
        assert_eq!(
            cases[2].to_string(),
            "claim certificate /x/claim.pem: garbled PEM"
        );
        assert!(cases[3].to_string().contains("(EC P-256) does not belong"));
        assert!(cases[4].to_string().contains("expired on Jan 1 2020"));
        assert_eq!(
            cases[5].to_string(),
            "templates/x.tera: parsing failed: line 3"
        );
    }
}
