//! The allowlist pre-provisioning hook's deployment package: `assets/allowlist_hook.py`
//! (compiled into the binary) zipped reproducibly, so its CodeSha256 tells whether the deployed
//! function runs this code.

use std::io::{Cursor, Write};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::{Context, Result};

/// The hook's Python source (see the file for the event and answer shapes it implements).
pub const SOURCE: &str = include_str!("../../assets/allowlist_hook.py");
/// File name of the module inside the package.
pub const MODULE_FILE: &str = "allowlist_hook.py";
/// Lambda handler (`module.function`).
pub const HANDLER: &str = "allowlist_hook.handler";
/// Seconds AWS IoT's RegisterThing waits on the hook; the function needs one S3 read.
pub const TIMEOUT_SECONDS: i32 = 5;

/// The deployment package: a zip with one stored file, fixed time stamp and mode, so the
/// same source always gives the same bytes.
pub fn package() -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default())
        .unix_permissions(0o644);
    let what = || "packaging the allowlist hook";
    zip.start_file(MODULE_FILE, options).context(what)?;
    zip.write_all(SOURCE.as_bytes()).context(what)?;
    Ok(zip.finish().context(what)?.into_inner())
}

/// Lambda's CodeSha256 of a package: base64 of its SHA-256.
pub fn code_sha256(package: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(package))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_is_reproducible_and_holds_the_module() {
        let a = package().unwrap();
        assert_eq!(a, package().unwrap());
        let mut archive = zip::ZipArchive::new(Cursor::new(a.clone())).unwrap();
        assert_eq!(archive.len(), 1);
        let mut file = archive.by_name(MODULE_FILE).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, SOURCE);
        assert!(SOURCE.contains("def handler(event, context):"));
        assert_eq!(code_sha256(&a).len(), 44);
    }
}
