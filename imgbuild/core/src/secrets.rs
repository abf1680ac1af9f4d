//! Secrets at rest. A file the plan writes with no permission bits for group and others (mode
//! `0600`, `0400`, `0700`...) is *secret*: the claim key, the rendered provisioning config,
//! `firstboot.env`, anything an overlay marks `0600`. For an image that holds one:
//!
//! * the chunks of the image holding its bytes never enter the compressed-chunk cache (the
//!   cache is only an optimisation, and a cached block would be a plaintext-equivalent copy of
//!   the key that outlives the build) — found from the file's block map in the root file system
//!   ([`imgbuild_ext2fs::Fs::data_ranges`]); for a secret on the FAT partition every range the
//!   build wrote there is kept out;
//! * the four outputs are `0600`;
//! * `manifest.json` lists the file with `"secret": true` and no hash.
//!
//! Independently of secrets, every file a build creates is created `0600` (directories `0700`):
//! [`private_umask`] sets the process umask to `077` at start; outputs without a secret are
//! then given the mode the user's umask would have given them.

use crate::apply::{Span, Written};
use crate::board::{Board, Role};
use crate::plan::{EntryKind, Plan};
use imgbuild_ranges::ByteRanges;
use std::path::Path;

/// Whether a file with permission bits `mode` is secret (no group or other bits).
pub fn is_secret_mode(mode: u32) -> bool {
    mode & 0o077 == 0
}

/// Sets the process umask to `077` and returns the previous one. Call it once at start, before
/// any thread is spawned (the umask is per process).
pub fn private_umask() -> u32 {
    use rustix::fs::Mode;
    let old = rustix::process::umask(Mode::from_raw_mode(0o077));
    old.as_raw_mode() as u32
}

/// The mode of a non-secret output under the user's umask `umask` (`0644` for the usual `022`).
pub fn public_mode(umask: u32) -> u32 {
    0o666 & !umask
}

/// A secret file written into the image: partition and path inside that partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    /// `root` or `boot`.
    pub partition: Role,
    /// Path in that partition's file system.
    pub path: String,
}

/// The secret files among what the build wrote: root-fs files with a secret mode, and files on
/// the boot partition that the plan asked for with a secret mode (FAT has no modes of its own).
pub fn secret_files(board: &Board, plan: &Plan, written: &[Written]) -> Vec<SecretFile> {
    let mount = board.partition(Role::Boot).mount.trim_end_matches('/');
    let boot_secrets: Vec<&str> = plan
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_)) && is_secret_mode(e.mode))
        .filter_map(|e| {
            e.path
                .strip_prefix(mount)
                .filter(|rest| rest.starts_with('/'))
        })
        .collect();
    let mut out: Vec<SecretFile> = Vec::new();
    for w in written.iter().filter(|w| w.kind == "file") {
        let secret = match w.partition {
            Role::Root => w
                .mode
                .as_deref()
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .is_some_and(is_secret_mode),
            Role::Boot => boot_secrets.contains(&w.path.as_str()),
        };
        let f = SecretFile {
            partition: w.partition,
            path: w.path.clone(),
        };
        if secret && !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// Byte ranges of `image` that hold the bytes of `secrets`: the block map of each root-fs
/// secret; a secret the block map cannot place (stored inline), and any boot-fs secret, makes
/// every range in `dirty` that lies in that partition count.
pub fn secret_ranges(
    image: &Path,
    root: Span,
    boot: Span,
    secrets: &[SecretFile],
    dirty: &ByteRanges,
) -> ByteRanges {
    let within = |span: Span| dirty.intersection(span.offset, span.size);
    let mut out = ByteRanges::new();
    if secrets.iter().any(|s| s.partition == Role::Boot) {
        out.merge(&within(boot));
    }
    let root_secrets: Vec<&SecretFile> = secrets
        .iter()
        .filter(|s| s.partition == Role::Root)
        .collect();
    if root_secrets.is_empty() {
        return out;
    }
    let mapped = imgbuild_ext2fs::Fs::open(image, root.offset, false).and_then(|fs| {
        let mut ranges = Vec::new();
        for s in &root_secrets {
            ranges.extend(fs.data_ranges(&s.path)?);
        }
        Ok(ByteRanges::from_unsorted(ranges).shifted(root.offset))
    });
    match mapped {
        Ok(ranges) => out.merge(&ranges),
        Err(e) => {
            tracing::info!("secret files not mapped ({e}): no chunk the build wrote in the root file system is cached");
            out.merge(&within(root));
        }
    }
    out
}
