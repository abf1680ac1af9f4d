//! Inspect: what is in a disk image — its partition table, and for each partition the file
//! system, label and free space. Used by `imgbuild inspect` and by tests.

use crate::disk::{self, FsKind, Partition, Table};
use crate::error::Result;
use serde::Serialize;
use std::path::Path;

/// One partition as `inspect` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// The table entry.
    #[serde(flatten)]
    pub partition: Partition,
    /// File system found by magic bytes.
    pub fs: FsKind,
    /// File-system label.
    pub label: String,
    /// File-system UUID or serial.
    pub fs_uuid: String,
    /// Size of the file system, when it could be read.
    pub fs_size: Option<u64>,
    /// Free bytes in the file system, when it could be read.
    pub free: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Partition table type, disk size, disk id.
    pub table: Table,
    /// Per-partition details.
    pub partitions: Vec<PartitionReport>,
}

/// Reads the table and probes every partition of a raw image.
pub fn inspect(image: &Path) -> Result<Report> {
    let table = disk::read_table(image)?;
    let mut partitions = Vec::new();
    for p in &table.partitions {
        let probe = disk::probe(image, p)?;
        let (fs_size, free) = sizes(image, p, probe.kind);
        partitions.push(PartitionReport {
            partition: p.clone(),
            fs: probe.kind,
            label: probe.label,
            fs_uuid: probe.uuid,
            fs_size,
            free,
        });
    }
    Ok(Report { table, partitions })
}

fn sizes(image: &Path, p: &Partition, kind: FsKind) -> (Option<u64>, Option<u64>) {
    match kind {
        FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4 => {
            match imgbuild_ext2fs::Fs::open(image, p.start, false) {
                Ok(fs) => (Some(fs.total_bytes()), Some(fs.free_bytes())),
                Err(e) => {
                    tracing::warn!("partition {}: {e}", p.index);
                    (None, None)
                }
            }
        }
        FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32 => {
            match crate::fs::fat::FatFs::open(image, p.start, p.size, 0) {
                Ok(fs) => (fs.total_bytes().ok(), fs.free_bytes().ok()),
                Err(e) => {
                    tracing::warn!("partition {}: {e}", p.index);
                    (None, None)
                }
            }
        }
        FsKind::Unknown => (None, None),
    }
}

/// Human-readable table of a report (what `imgbuild inspect` prints without `--json`).
pub fn render(r: &Report) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let mut s = format!(
        "{:?} partition table, disk id {}, {} ({} bytes)\n",
        r.table.kind,
        r.table.disk_id,
        mib(r.table.disk_size),
        r.table.disk_size
    );
    s.push_str(&format!(
        "{:>3} {:>12} {:>12}  {:<22} {:<7} {:<12} {:>12}\n",
        "#", "start", "size", "type", "fs", "label", "free"
    ));
    for p in &r.partitions {
        s.push_str(&format!(
            "{:>3} {:>12} {:>12}  {:<22} {:<7} {:<12} {:>12}\n",
            p.partition.index,
            p.partition.start,
            mib(p.partition.size),
            p.partition.type_name,
            p.fs.to_string(),
            p.label,
            p.free.map(mib).unwrap_or_else(|| "-".into())
        ));
    }
    s
}
