//! Growing an image (`[image]`), checked with the real tools: e2fsck -fn, fsck.vfat -n,
//! dumpe2fs, debugfs, sfdisk (whose own resize of the same image is the reference for the table
//! bytes) and sgdisk --verify.

use imgbuild_core::board::{self, Board};
use imgbuild_core::config::Growth;
use imgbuild_core::disk::{read_table, TableKind};
use imgbuild_core::grow::{grow, Grown};
use imgbuild_testkit::{
    build_fixture, debugfs_cat, debugfs_ls, e2fsck_clean, fsck_vfat_clean, run_ok, sfdisk_json,
    sgdisk_verify, sha256_file, Fixture, FixtureOptions, Layout,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000;

/// A small fixture: MBR 128 MiB (boot 64 MiB from 4 MiB, root 60 MiB), GPT 160 MiB (ESP
/// 127 MiB, root 31 MiB).
fn fixture(dir: &Path, layout: Layout) -> Fixture {
    fixture_with(dir, layout, 4096)
}

/// A copy (in `dir`) of the fixture of `layout` with `block_size`-byte ext4 blocks; each is
/// built once per test binary.
fn fixture_with(dir: &Path, layout: Layout, block_size: u32) -> Fixture {
    type Built = Mutex<HashMap<(u8, u32), (tempfile::TempDir, Fixture)>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (_, original) = built.entry((layout as u8, block_size)).or_insert_with(|| {
        let home = tempfile::tempdir().expect("tempdir");
        let opts = FixtureOptions {
            layout,
            image_mib: match layout {
                Layout::GenericGpt => 160,
                _ => 128,
            },
            boot_mib: 64,
            ext4_block_size: block_size,
            big_dir_entries: 40,
            ..FixtureOptions::default()
        };
        let f = build_fixture(home.path(), &opts);
        (home, f)
    });
    let mut f = original.clone();
    f.path = dir.join(f.path.file_name().expect("image name"));
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&original.path)
            .arg(&f.path),
    );
    f
}

fn board_of(layout: Layout) -> Board {
    let name = match layout {
        Layout::GenericGpt => "generic-arm64",
        Layout::DebianRaspi => "rpi4-debian",
        Layout::RpiOs => "rpi4",
    };
    board::find(name, None).expect("built-in board")
}

fn grow_fixture(f: &Fixture, growth: Growth, scratch: &Path) -> imgbuild_core::Result<Grown> {
    let table = read_table(&f.path).expect("fixture table");
    grow(
        &f.path,
        &table,
        &board_of(f.layout),
        Some(growth),
        scratch,
        EPOCH,
    )
}

/// `dumpe2fs -h` of the file system at `offset`: (block count, free blocks, block size).
fn dumpe2fs(img: &Path, offset: u64) -> (u64, u64, u64) {
    let out = run_ok(
        Command::new("dumpe2fs")
            .arg("-h")
            .arg(format!("{}?offset={offset}", img.display())),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("dumpe2fs -h: no {name:?} in\n{text}"))
    };
    (
        field("Block count:"),
        field("Free blocks:"),
        field("Block size:"),
    )
}

/// Extends (sparsely) or cuts the file at `path` to `len` bytes.
fn set_len(path: &Path, len: u64) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .unwrap_or_else(|e| panic!("set the length of {}: {e}", path.display()));
}

/// sha256 of `len` bytes at `offset` of `img`.
fn range_sha(img: &Path, offset: u64, len: u64) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let part = dir.path().join("part");
    let mut buf = vec![0u8; len as usize];
    File::open(img)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .expect("read range");
    std::fs::write(&part, buf).expect("write range");
    sha256_file(&part)
}

fn read_bytes(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(img)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .expect("read");
    buf
}

/// What the tools see of the root partition (index `n`) in `sfdisk --json`: (start, size) bytes.
fn sfdisk_part(img: &Path, n: u32) -> (u64, u64) {
    let json = sfdisk_json(img);
    let pt = &json["partitiontable"];
    let parts = pt["partitions"].as_array().expect("partitions");
    let node = format!("{}{n}", img.display());
    let p = parts
        .iter()
        .find(|p| p["node"].as_str() == Some(node.as_str()))
        .unwrap_or_else(|| panic!("no partition {n} in {json}"));
    let sector = pt["sectorsize"].as_u64().unwrap_or(512);
    (
        p["start"].as_u64().expect("start") * sector,
        p["size"].as_u64().expect("size") * sector,
    )
}

/// Runs sfdisk with `script` on stdin.
fn sfdisk(args: &[&str], img: &Path, script: &str) {
    let mut child = Command::new("sfdisk")
        .args(args)
        .arg(img)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sfdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    let out = child.wait_with_output().expect("wait sfdisk");
    assert!(
        out.status.success(),
        "sfdisk {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The checks every grown image must pass.
fn assert_grown(f: &Fixture, g: &Grown, before: &Before, disk_size: u64, root_end: u64) {
    let img = &f.path;
    assert_eq!(std::fs::metadata(img).expect("stat").len(), disk_size);
    assert_eq!(g.disk_size, disk_size);
    assert_eq!(g.table.disk_size, disk_size);
    assert_eq!(g.root.offset, f.root.offset_bytes);
    assert_eq!(g.root.size, root_end - f.root.offset_bytes);
    // The tools read the new table.
    assert_eq!(
        sfdisk_part(img, f.root.index),
        (f.root.offset_bytes, root_end - f.root.offset_bytes)
    );
    assert_eq!(
        sfdisk_part(img, f.boot.index),
        (f.boot.offset_bytes, f.boot.size_bytes)
    );
    // Boot partition byte for byte unchanged, both file systems clean.
    assert_eq!(
        range_sha(img, f.boot.offset_bytes, f.boot.size_bytes),
        before.boot_sha
    );
    let (clean, report) = e2fsck_clean(img, f.root.offset_bytes);
    assert!(clean, "e2fsck -fn after growing:\n{report}");
    let (clean, report) = fsck_vfat_clean(img, f.boot.offset_bytes);
    assert!(clean, "fsck.vfat -n after growing:\n{report}");
    // The file system fills the partition exactly (whole blocks), and it has more free space.
    let (blocks, free, block_size) = dumpe2fs(img, f.root.offset_bytes);
    assert_eq!(blocks, g.root.size / block_size);
    assert!(
        free > before.free_blocks + (g.root.size - f.root.size_bytes) / block_size * 9 / 10,
        "free blocks {} -> {free}",
        before.free_blocks
    );
    // Files read back the same.
    assert_eq!(
        debugfs_cat(img, f.root.offset_bytes, "/etc/passwd"),
        before.passwd
    );
    assert_eq!(
        debugfs_ls(img, f.root.offset_bytes, &f.big_dir),
        before.big_dir
    );
    // The dirty ranges cover every byte that changed (compared in 4 KiB blocks with the image
    // as it was), the new tail, and no more than what changed plus table sectors and tail.
    let covered = |at: u64| g.dirty.contains(at);
    let old = std::fs::read(before.image.path()).expect("read the old image");
    let new = std::fs::read(img).expect("read the grown image");
    let mut changed_mib = std::collections::BTreeSet::new();
    for (i, (a, b)) in old.chunks(4096).zip(new.chunks(4096)).enumerate() {
        if a != b {
            let at = i as u64 * 4096;
            changed_mib.insert(at / MIB);
            let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0) as u64;
            assert!(
                covered(at + first),
                "byte {} changed but is not dirty: {:?}",
                at + first,
                g.dirty
            );
        }
    }
    // Written back in 1 MiB pieces; the table areas are one sector and its neighbours.
    let tail = disk_size - old.len() as u64;
    let bound = tail + (changed_mib.len() as u64 + 2) * MIB;
    assert!(
        g.dirty.total_bytes() <= bound,
        "dirty {} bytes, {} MiB pieces changed, tail {tail}: {:?}",
        g.dirty.total_bytes(),
        changed_mib.len(),
        g.dirty
    );
    assert!(covered(0), "{:?}", g.dirty);
    if f.layout == Layout::GenericGpt {
        assert!(covered(512) && covered(33 * 512 - 1), "{:?}", g.dirty);
    }
    assert!(covered(f.root.offset_bytes), "{:?}", g.dirty);
    assert!(tail == 0 || covered(disk_size - 1), "{:?}", g.dirty);
    assert!(!covered(f.boot.offset_bytes), "{:?}", g.dirty);
}

/// What the fixture held before growing.
struct Before {
    /// A copy of the image.
    image: tempfile::NamedTempFile,
    boot_sha: String,
    free_blocks: u64,
    passwd: Vec<u8>,
    big_dir: Vec<String>,
}

fn before(f: &Fixture) -> Before {
    let image = tempfile::NamedTempFile::new_in(f.path.parent().expect("dir")).expect("tempfile");
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&f.path)
            .arg(image.path()),
    );
    Before {
        image,
        boot_sha: range_sha(&f.path, f.boot.offset_bytes, f.boot.size_bytes),
        free_blocks: dumpe2fs(&f.path, f.root.offset_bytes).1,
        passwd: debugfs_cat(&f.path, f.root.offset_bytes, "/etc/passwd"),
        big_dir: debugfs_ls(&f.path, f.root.offset_bytes, &f.big_dir),
    }
}

#[test]
fn mbr_image_grows_to_a_size_like_sfdisk_grows_its_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::RpiOs);
    let was = before(&f);
    // sfdisk's own resize of the same partition on the same extended image: the reference MBR.
    let reference = dir.path().join("reference.img");
    std::fs::copy(&f.path, &reference).expect("copy");
    set_len(&reference, 192 * MIB);
    sfdisk(&["--quiet", "-N", "2"], &reference, ", +\n");

    let g = grow_fixture(&f, Growth::ImageSize(192 * MIB), dir.path()).expect("grow");
    assert_grown(&f, &g, &was, 192 * MIB, 192 * MIB);
    assert_eq!(g.table.kind, TableKind::Mbr);
    assert_eq!(
        read_bytes(&f.path, 0, 512),
        read_bytes(&reference, 0, 512),
        "the MBR differs from sfdisk's"
    );
    assert_eq!(
        g.dirty.as_slice().first(),
        Some(&(0, 512)),
        "MBR sector not marked: {:?}",
        g.dirty
    );
}

#[test]
fn gpt_root_grows_and_the_backup_gpt_moves_to_the_new_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::GenericGpt);
    let was = before(&f);
    let old_end = f.root.offset_bytes + f.root.size_bytes;
    assert_eq!(old_end, 159 * MIB, "fixture shape changed");
    let reference = dir.path().join("reference.img");
    std::fs::copy(&f.path, &reference).expect("copy");

    let g = grow_fixture(&f, Growth::GrowRoot(64 * MIB), dir.path()).expect("grow");
    // 64 MiB more for the root, ending on a MiB boundary; the disk 1 MiB beyond (backup GPT).
    assert_grown(&f, &g, &was, 224 * MIB, 223 * MIB);
    let report = sgdisk_verify(&f.path);
    assert!(report.contains("No problems found"), "sgdisk -v:\n{report}");
    let last = 224 * MIB / 512 - 1;
    assert_eq!(
        read_bytes(&f.path, last * 512, 8),
        b"EFI PART",
        "no backup header in the last sector"
    );
    let json = sfdisk_json(&f.path);
    assert_eq!(json["partitiontable"]["lastlba"].as_u64(), Some(last - 33));
    assert_ne!(
        read_bytes(&f.path, 160 * MIB - 512, 8),
        b"EFI PART",
        "the old backup GPT header is still in the grown root partition"
    );

    // sfdisk's relocation of the backup GPT and resize of the same partition, as reference: the
    // same primary header and array, the same backup array and header.
    set_len(&reference, 224 * MIB);
    run_ok(
        Command::new("sfdisk")
            .args(["--relocate", "gpt-bak-std"])
            .arg(&reference),
    );
    sfdisk(
        &["--quiet", "-N", "1"],
        &reference,
        &format!(", {}\n", (223 * MIB - f.root.offset_bytes) / 512),
    );
    for (what, at, len) in [
        ("primary GPT header and array", 512, 33 * 512),
        (
            "backup GPT array and header",
            224 * MIB - 33 * 512,
            33 * 512,
        ),
        ("protective MBR size", 446 + 12, 4),
    ] {
        assert_eq!(
            read_bytes(&f.path, at, len),
            read_bytes(&reference, at, len),
            "{what} differs from sfdisk's"
        );
    }
}

#[test]
fn gpt_image_grows_to_a_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::GenericGpt);
    let was = before(&f);
    // 200 MiB + 512 bytes: the root ends on the last MiB boundary before the backup GPT.
    let g = grow_fixture(&f, Growth::ImageSize(200 * MIB + 512), dir.path()).expect("grow");
    assert_grown(&f, &g, &was, 200 * MIB + 512, 199 * MIB);
    let report = sgdisk_verify(&f.path);
    assert!(report.contains("No problems found"), "sgdisk -v:\n{report}");
}

#[test]
fn an_equal_size_changes_nothing_and_shrinking_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::DebianRaspi);
    let sha = sha256_file(&f.path);
    let g = grow_fixture(&f, Growth::ImageSize(128 * MIB), dir.path()).expect("no-op");
    assert!(g.dirty.is_empty());
    assert_eq!(g.disk_size, 128 * MIB);
    let g = grow_fixture(&f, Growth::GrowRoot(0), dir.path()).expect("no-op");
    assert!(g.dirty.is_empty());
    assert_eq!(sha256_file(&f.path), sha);

    for (growth, needle) in [
        (Growth::ImageSize(64 * MIB), "shrinking is not supported"),
        (Growth::ImageSize(128 * MIB + 512), "no room to grow"),
    ] {
        let e = grow_fixture(&f, growth, dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && !e.contains('\n'), "{e}");
    }
    assert_eq!(sha256_file(&f.path), sha, "a refused growth wrote");
    let scratch: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".grow"))
        .collect();
    assert!(scratch.is_empty(), "scratch files left: {scratch:?}");
}

#[test]
fn a_root_partition_that_is_not_last_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::RpiOs);
    // A third partition after the root.
    set_len(&f.path, 160 * MIB);
    sfdisk(
        &["--quiet", "--append"],
        &f.path,
        &format!("start={}, type=83\n", 128 * MIB / 512),
    );
    let sha = sha256_file(&f.path);
    let e = grow_fixture(&f, Growth::ImageSize(256 * MIB), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("root partition 2 is not the last partition")
            && e.contains("partition 3 (bytes 134217728..167772160) follows it"),
        "{e}"
    );
    assert_eq!(sha256_file(&f.path), sha);
}

#[test]
fn a_last_block_group_too_small_for_its_metadata_is_left_out_as_resize2fs_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::RpiOs);
    // Root from 68 MiB to 197 MiB: 129 MiB, one whole 128 MiB group (4 KiB blocks) and 1 MiB,
    // too little for a second group's bitmaps and inode table.
    let g = grow_fixture(&f, Growth::ImageSize(197 * MIB), dir.path()).expect("grow");
    assert_eq!(g.root.size, 129 * MIB);
    let (clean, report) = e2fsck_clean(&f.path, f.root.offset_bytes);
    assert!(clean, "e2fsck -fn after growing:\n{report}");
    let (blocks, _, block_size) = dumpe2fs(&f.path, f.root.offset_bytes);
    assert_eq!((blocks, block_size), (32768, 4096));
}

#[test]
fn a_root_with_1k_blocks_grows_by_many_block_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 1 KiB blocks: 8 MiB block groups, so 100 MiB more adds a dozen groups and their
    // descriptors (in the reserved GDT blocks).
    let f = fixture_with(dir.path(), Layout::DebianRaspi, 1024);
    let was = before(&f);
    let g = grow_fixture(&f, Growth::GrowRoot(100 * MIB), dir.path()).expect("grow");
    assert_grown(&f, &g, &was, 228 * MIB, 228 * MIB);
}

#[test]
fn free_space_after_the_root_is_used_before_the_image_grows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), Layout::RpiOs);
    // 32 MiB of unpartitioned space after the root partition.
    set_len(&f.path, 160 * MIB);
    let was = before(&f);
    let g = grow_fixture(&f, Growth::GrowRoot(16 * MIB), dir.path()).expect("grow");
    assert_grown(&f, &g, &was, 160 * MIB, 144 * MIB);
}
