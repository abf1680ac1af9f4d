//! Compressed copies of fixture images, made with the same tools image publishers use.

use crate::oracle::run_ok;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A compression format for [`compress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `xz -T2` (multi-threaded: several blocks, like Raspberry Pi OS images) → `.xz`.
    Xz,
    /// `gzip` → `.gz`.
    Gzip,
    /// `zstd` → `.zst`.
    Zstd,
    /// A zip archive holding the image as its only entry → `.zip`.
    Zip,
}

/// Compresses `path` next to itself (`IMG.xz`, `IMG.gz`, `IMG.zst`, `IMG.zip`), keeping the
/// original, and returns the compressed file's path.
pub fn compress(path: &Path, how: Compression) -> PathBuf {
    let with_ext = |ext: &str| PathBuf::from(format!("{}.{ext}", path.display()));
    match how {
        Compression::Xz => {
            // Small blocks make several of them even for small fixtures, so the multi-threaded
            // decoder path is exercised.
            run_ok(
                Command::new("xz")
                    .args(["-k", "-f", "-1", "-T2", "--block-size=16MiB"])
                    .arg(path),
            );
            with_ext("xz")
        }
        Compression::Gzip => {
            run_ok(Command::new("gzip").args(["-k", "-f", "-1"]).arg(path));
            with_ext("gz")
        }
        Compression::Zstd => {
            run_ok(
                Command::new("zstd")
                    .args(["-q", "-f", "-1", "-T2"])
                    .arg(path),
            );
            with_ext("zst")
        }
        Compression::Zip => {
            let out = with_ext("zip");
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "disk.img".to_string());
            write_zip(&out, &[(name.as_str(), path)]);
            out
        }
    }
}

/// Writes a deflate zip archive at `out` with one entry per `(name, file)`; a name ending in
/// `/` makes a directory entry (its file is ignored).
pub fn write_zip(out: &Path, entries: &[(&str, &Path)]) {
    let file = File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let mut zip = zip::ZipWriter::new(file);
    for (name, src) in entries {
        if name.ends_with('/') {
            zip.add_directory(*name, zip::write::SimpleFileOptions::default())
                .unwrap_or_else(|e| panic!("zip directory {name}: {e}"));
            continue;
        }
        let len = std::fs::metadata(src)
            .unwrap_or_else(|e| panic!("stat {}: {e}", src.display()))
            .len();
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .large_file(len >= u64::from(u32::MAX));
        zip.start_file(*name, options)
            .unwrap_or_else(|e| panic!("zip entry {name}: {e}"));
        let mut reader = BufReader::new(
            File::open(src).unwrap_or_else(|e| panic!("open {}: {e}", src.display())),
        );
        std::io::copy(&mut reader, &mut zip)
            .unwrap_or_else(|e| panic!("zip {} into {}: {e}", src.display(), out.display()));
    }
    zip.finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", out.display()));
}
