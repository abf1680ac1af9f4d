//! Building fixture disk images with sfdisk, mkfs.vfat + mtools and mke2fs + e2fsck.

use crate::oracle::{debugfs_stat, e2fsck_clean, fsck_vfat_clean, run, run_ok, sfdisk_json};
use crate::tree::{boot_tree, root_tree, TreeIds};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// GPT type of an EFI System partition.
const GPT_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type "Linux root (ARM-64)", used by Debian's generic arm64 images.
const GPT_ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";

/// The shape of a base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Raspberry Pi OS: MBR, p1 FAT32 `bootfs` at sector 8192 (type 0x0c, bootable),
    /// p2 ext4 `rootfs` (type 0x83).
    RpiOs,
    /// Debian's raspi images: MBR, p1 FAT32 `RASPIFIRM` at 4 MiB (type 0x0c), p2 ext4 `RASPIROOT`.
    DebianRaspi,
    /// Debian's generic arm64 images: GPT, p15 EFI System partition (sectors 2048..262143,
    /// FAT32 without a label), p1 "Linux root (ARM-64)" ext4 from sector 262144 without a label.
    GenericGpt,
}

/// How to build a fixture.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// Partition layout and contents.
    pub layout: Layout,
    /// ext4 block size: 1024 or 4096.
    pub ext4_block_size: u32,
    /// Size of the whole image in MiB; the root partition takes what is left.
    pub image_mib: u64,
    /// Size of the FAT partition in MiB (ignored by [`Layout::GenericGpt`], whose ESP has the
    /// real image's fixed size of 127 MiB).
    pub boot_mib: u64,
    /// Entries (one directory each) in the hashed directory `/usr/share/doc`.
    pub big_dir_entries: usize,
    /// MiB of non-zero data in `/var/lib/filler.bin`, to leave the root file system with little
    /// free space; 0 = no filler file.
    pub root_filler_mib: u64,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        FixtureOptions {
            layout: Layout::RpiOs,
            ext4_block_size: 4096,
            image_mib: 320,
            boot_mib: 64,
            big_dir_entries: 3000,
            root_filler_mib: 0,
        }
    }
}

/// A partition of a fixture, as `sfdisk --json` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Partition number, as Linux numbers them (1-based).
    pub index: u32,
    /// Byte offset of the partition in the image.
    pub offset_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// PARTUUID: `DISKID-NN` for MBR, the partition GUID (lowercase) for GPT.
    pub partuuid: String,
}

/// A built fixture image.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The raw disk image.
    pub path: PathBuf,
    /// Its layout.
    pub layout: Layout,
    /// The FAT partition (boot, firmware or ESP).
    pub boot: PartInfo,
    /// The ext4 root partition.
    pub root: PartInfo,
    /// Label of the FAT file system (empty when it has none).
    pub boot_label: String,
    /// Label of the ext4 file system (empty when it has none).
    pub root_label: String,
    /// Disk identifier: 8 hex digits for MBR, the disk GUID (lowercase) for GPT.
    pub disk_id: String,
    /// ext4 block size in bytes.
    pub ext4_block_size: u32,
    /// The hashed (htree) directory with `big_dir_entries` entries.
    pub big_dir: String,
}

/// Builds `disk.img` (named after the layout) in `dir` and checks it with e2fsck and fsck.vfat.
/// Panics with the failing tool's output if anything goes wrong.
pub fn build_fixture(dir: &Path, opts: &FixtureOptions) -> Fixture {
    assert!(
        opts.ext4_block_size == 1024 || opts.ext4_block_size == 4096,
        "ext4_block_size must be 1024 or 4096"
    );
    let name = match opts.layout {
        Layout::RpiOs => "rpios.img",
        Layout::DebianRaspi => "debian-raspi.img",
        Layout::GenericGpt => "debian-generic.img",
    };
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    let img = fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    img.set_len(opts.image_mib * MIB).expect("size the image");
    drop(img);

    partition(&path, opts);
    let table = sfdisk_json(&path);
    let (boot_index, root_index) = match opts.layout {
        Layout::GenericGpt => (15, 1),
        _ => (1, 2),
    };
    let boot = part_info(&table, boot_index);
    let root = part_info(&table, root_index);
    let disk_id = disk_id(&table);
    let (boot_label, root_label) = match opts.layout {
        Layout::RpiOs => ("bootfs", "rootfs"),
        Layout::DebianRaspi => ("RASPIFIRM", "RASPIROOT"),
        Layout::GenericGpt => ("", ""),
    };
    let ids = TreeIds {
        boot_partuuid: &boot.partuuid,
        root_partuuid: &root.partuuid,
        big_dir_entries: opts.big_dir_entries,
        filler_mib: opts.root_filler_mib,
    };

    let work = tempfile::tempdir_in(dir).expect("create a staging directory");
    let boot_stage = work.path().join("boot");
    boot_tree(&boot_stage, opts.layout, &ids);
    make_fat(&path, &boot, boot_label, &boot_stage);
    let root_stage = work.path().join("root");
    root_tree(&root_stage, opts.layout, &ids);
    make_ext4(&path, &root, root_label, opts.ext4_block_size, &root_stage);

    let fixture = Fixture {
        path,
        layout: opts.layout,
        boot,
        root,
        boot_label: boot_label.to_string(),
        root_label: root_label.to_string(),
        disk_id,
        ext4_block_size: opts.ext4_block_size,
        big_dir: "/usr/share/doc".to_string(),
    };
    verify(&fixture, opts.big_dir_entries >= MIN_HASHED_ENTRIES);
    fixture
}

/// Four random bytes as 8 hex digits (an MBR disk identifier).
fn random_disk_id() -> String {
    let mut bytes = [0u8; 4];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    hex::encode(bytes)
}

/// Writes the partition table with sfdisk.
fn partition(path: &Path, opts: &FixtureOptions) {
    let boot_sectors = opts.boot_mib * MIB / SECTOR;
    let script = match opts.layout {
        Layout::RpiOs => format!(
            "label: dos\nlabel-id: 0x{}\nunit: sectors\n\n\
             start=8192, size={boot_sectors}, type=c, bootable\nstart={}, type=83\n",
            random_disk_id(),
            8192 + boot_sectors
        ),
        Layout::DebianRaspi => format!(
            "label: dos\nlabel-id: 0x{}\nunit: sectors\n\n\
             start=8192, size={boot_sectors}, type=c\nstart={}, type=83\n",
            random_disk_id(),
            8192 + boot_sectors
        ),
        Layout::GenericGpt => {
            let dev = path.display();
            format!(
                "label: gpt\nunit: sectors\n\n\
                 {dev}15 : start=2048, size=260096, type={GPT_ESP}\n\
                 {dev}1 : start=262144, type={GPT_ROOT_ARM64}\n"
            )
        }
    };
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sfdisk (package fdisk)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("sfdisk stdin");
        stdin
            .write_all(script.as_bytes())
            .expect("write sfdisk script");
    }
    let out = child.wait_with_output().expect("wait for sfdisk");
    assert!(
        out.status.success(),
        "sfdisk failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("sfdisk --json: no number {key:?} in {v}"))
}

fn disk_id(table: &serde_json::Value) -> String {
    let id = table["partitiontable"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("sfdisk --json: no disk id in {table}"));
    id.trim_start_matches("0x").to_lowercase()
}

/// The partition numbered `index` in `sfdisk --json` output.
fn part_info(table: &serde_json::Value, index: u32) -> PartInfo {
    let pt = &table["partitiontable"];
    let sector = pt["sectorsize"].as_u64().unwrap_or(SECTOR);
    let parts = pt["partitions"]
        .as_array()
        .expect("sfdisk --json partitions");
    let suffix = index.to_string();
    let part = parts
        .iter()
        .find(|p| {
            let node = p["node"].as_str().unwrap_or("");
            node.ends_with(&suffix)
                && !node[..node.len() - suffix.len()].ends_with(|c: char| c.is_ascii_digit())
        })
        .unwrap_or_else(|| panic!("sfdisk --json: no partition {index} in {table}"));
    let partuuid = match part["uuid"].as_str() {
        Some(uuid) => uuid.to_lowercase(),
        None => format!("{}-{index:02}", disk_id(table)),
    };
    PartInfo {
        index,
        offset_bytes: json_u64(part, "start") * sector,
        size_bytes: json_u64(part, "size") * sector,
        partuuid,
    }
}

/// Sectors per cluster that keep a FAT32 of `sectors` sectors above the 65525-cluster minimum
/// (mtools and the spec decide the FAT type by cluster count).
fn fat32_sectors_per_cluster(sectors: u64) -> u64 {
    let mut spc = 8;
    while spc > 1 && sectors / spc < 70_000 {
        spc /= 2;
    }
    spc
}

/// Formats the FAT32 file system with mkfs.vfat in place and copies `stage` into it with mcopy.
fn make_fat(img: &Path, part: &PartInfo, label: &str, stage: &Path) {
    let sectors = part.size_bytes / SECTOR;
    let mut mkfs = Command::new("mkfs.vfat");
    mkfs.args(["-F", "32", "-S", "512"])
        .arg("-s")
        .arg(fat32_sectors_per_cluster(sectors).to_string())
        .arg("--offset")
        .arg((part.offset_bytes / SECTOR).to_string());
    if !label.is_empty() {
        mkfs.arg("-n").arg(label);
    }
    mkfs.arg(img).arg((part.size_bytes / 1024).to_string());
    run_ok(&mut mkfs);

    let mut entries: Vec<PathBuf> = fs::read_dir(stage)
        .expect("read boot staging directory")
        .map(|e| e.expect("boot staging entry").path())
        .collect();
    entries.sort();
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-s")
            .arg("-i")
            .arg(format!("{}@@{}", img.display(), part.offset_bytes))
            .args(&entries)
            .arg("::/"),
    );
}

/// Makes the ext4 file system from `stage` with mke2fs, then has `e2fsck -fyD` hash its
/// directories the way a kernel-written root file system has them.
fn make_ext4(img: &Path, part: &PartInfo, label: &str, block_size: u32, stage: &Path) {
    let mut mkfs = Command::new("mke2fs");
    mkfs.args(["-q", "-F", "-t", "ext4", "-b"])
        .arg(block_size.to_string())
        .arg("-E")
        .arg(format!("offset={},root_owner=0:0", part.offset_bytes))
        .arg("-d")
        .arg(stage);
    if !label.is_empty() {
        mkfs.arg("-L").arg(label);
    }
    mkfs.arg(img).arg(format!("{}k", part.size_bytes / 1024));
    run_ok(&mut mkfs);
    let out = run(Command::new("e2fsck").arg("-fyD").arg(format!(
        "{}?offset={}",
        img.display(),
        part.offset_bytes
    )));
    assert!(
        matches!(out.status.code(), Some(0..=2)),
        "e2fsck -fyD failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// From this many entries on, `/usr/share/doc` spans enough blocks for e2fsck to index it.
const MIN_HASHED_ENTRIES: usize = 500;

/// Checks the finished fixture with the real tools (and that the big directory is hashed when
/// it is big enough to be).
fn verify(f: &Fixture, expect_hashed: bool) {
    let (clean, report) = e2fsck_clean(&f.path, f.root.offset_bytes);
    assert!(clean, "fixture ext4 is not clean: {report}");
    let (clean, report) = fsck_vfat_clean(&f.path, f.boot.offset_bytes);
    assert!(clean, "fixture FAT is not clean: {report}");
    let big = debugfs_stat(&f.path, f.root.offset_bytes, &f.big_dir)
        .unwrap_or_else(|| panic!("fixture lacks {}", f.big_dir));
    assert!(
        !expect_hashed || big.flags & 0x1000 != 0,
        "{} is not a hashed (htree) directory: flags {:#x}",
        f.big_dir,
        big.flags
    );
}
