//! The parts of the cache directory that are not downloads (those are `imgbuild-fetch`'s):
//! compressed chunk blocks, their verification memos and chunk indexes (`chunks/`), remembered base hashes
//! (`base-sha256/`), base check verdicts (`verdicts/`) and pre-seeded .debs with their apt lists
//! (`debs/`). `imgbuild cache ls` shows them by kind and `imgbuild cache prune` removes them all:
//! each is an optimisation that a build recreates when it is missing.

use crate::error::{Context, Result};
use std::path::{Path, PathBuf};

/// The kinds of files listed here, with their folder under the cache root.
pub const KINDS: [(&str, &str); 6] = [
    ("chunk", "chunks/chunks"),
    ("verified", "chunks/verified"),
    ("index", "chunks/index"),
    ("base-sha256", "base-sha256"),
    ("verdict", "verdicts"),
    ("debs", "debs"),
];

/// The files of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindUsage {
    /// One of the names in [`KINDS`].
    pub kind: &'static str,
    /// Number of files.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Counts the files of every kind under `root` (missing folders count as empty).
pub fn usage(root: &Path) -> Result<Vec<KindUsage>> {
    KINDS
        .iter()
        .map(|(kind, dir)| {
            let files = files_under(&root.join(dir))?;
            Ok(KindUsage {
                kind,
                files: files.len() as u64,
                bytes: files.iter().map(|(_, size)| size).sum(),
            })
        })
        .collect()
}

/// Deletes every file of every kind under `root` (a build running at the same time treats a
/// file that disappears as a miss); returns what was removed, by kind.
pub fn prune(root: &Path) -> Result<Vec<KindUsage>> {
    let mut out = Vec::new();
    for (kind, dir) in KINDS {
        let mut usage = KindUsage {
            kind,
            ..KindUsage::default()
        };
        for (path, size) in files_under(&root.join(dir))? {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    usage.files += 1;
                    usage.bytes += size;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => crate::bail!("removing {}: {e}", path.display()),
            }
        }
        out.push(usage);
    }
    Ok(out)
}

/// Every regular file below `dir` with its size (symlinks are not followed).
fn files_under(dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).context(|| format!("listing {}", d.display())),
        };
        for e in entries {
            let e = e.context(|| format!("listing {}", d.display()))?;
            let t = e
                .file_type()
                .context(|| format!("listing {}", d.display()))?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((e.path(), size));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_and_prune_removes_every_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for (i, (_, sub)) in KINDS.iter().enumerate() {
            let d = root.join(sub).join("ab");
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("one"), vec![1u8; i + 1]).expect("write");
            std::fs::write(root.join(sub).join("two"), b"xy").expect("write");
        }
        std::fs::create_dir_all(root.join("blobs")).expect("mkdir");
        std::fs::write(root.join("blobs/keep"), b"download").expect("write");
        let u = usage(root).expect("usage");
        assert_eq!(u.len(), KINDS.len());
        for (i, k) in u.iter().enumerate() {
            assert_eq!((k.kind, k.files, k.bytes), (KINDS[i].0, 2, i as u64 + 3));
        }
        let removed = prune(root).expect("prune");
        assert_eq!(removed, u);
        assert!(usage(root).expect("usage").iter().all(|k| k.files == 0));
        assert!(root.join("blobs/keep").exists(), "downloads are fetch's");
    }
}
