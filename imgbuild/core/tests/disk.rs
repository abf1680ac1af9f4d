//! Partition tables and probes checked against sfdisk, sgdisk and blkid.

use imgbuild_core::disk::{probe, read_table, FsKind, Partition, Table, TableKind};
use imgbuild_testkit::{
    blkid, build_fixture, random_bytes_file, run_ok, sfdisk_json, sgdisk_verify, Fixture,
    FixtureOptions, Layout,
};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn fixture(layout: Layout) -> (tempfile::TempDir, Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FixtureOptions {
        layout,
        big_dir_entries: 600,
        ..FixtureOptions::default()
    };
    let f = build_fixture(dir.path(), &opts);
    (dir, f)
}

/// fdisk's type names per partition number, from `sfdisk -l -o Device,Type`.
fn sfdisk_type_names(img: &Path) -> Vec<(u32, String)> {
    let out = run_ok(
        Command::new("sfdisk")
            .args(["-l", "-o", "Device,Type"])
            .arg(img),
    );
    let prefix = img.display().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (num, name) = rest.split_once(' ')?;
            Some((num.parse().ok()?, name.trim().to_string()))
        })
        .collect()
}

fn node_index(node: &str) -> u32 {
    let digits: String = node
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().expect("partition number in node name")
}

/// Compares our table with `sfdisk --json` and `sfdisk -l` for the same image.
fn assert_matches_sfdisk(img: &Path, table: &Table) {
    let json = sfdisk_json(img);
    let pt = &json["partitiontable"];
    let expected_kind = match pt["label"].as_str() {
        Some("dos") => TableKind::Mbr,
        Some("gpt") => TableKind::Gpt,
        other => panic!("unexpected label {other:?}"),
    };
    assert_eq!(table.kind, expected_kind);
    let sector = pt["sectorsize"].as_u64().expect("sectorsize");
    assert_eq!(table.sector_size, sector);
    let id = pt["id"]
        .as_str()
        .expect("id")
        .trim_start_matches("0x")
        .to_lowercase();
    assert_eq!(table.disk_id, id);
    assert_eq!(table.disk_size, std::fs::metadata(img).expect("stat").len());

    let parts = pt["partitions"].as_array().expect("partitions");
    assert_eq!(table.partitions.len(), parts.len());
    for sp in parts {
        let index = node_index(sp["node"].as_str().expect("node"));
        let ours = table
            .partition(index)
            .unwrap_or_else(|| panic!("partition {index} missing"));
        assert_eq!(ours.start, sp["start"].as_u64().expect("start") * sector);
        assert_eq!(ours.size, sp["size"].as_u64().expect("size") * sector);
        let stype = sp["type"].as_str().expect("type").to_lowercase();
        match table.kind {
            TableKind::Mbr => {
                let want = u8::from_str_radix(&stype, 16).expect("hex type");
                assert_eq!(ours.type_id, format!("{want:#04x}"));
                assert_eq!(
                    ours.uuid.as_deref(),
                    Some(format!("{id}-{index:02}").as_str())
                );
                assert_eq!(ours.bootable, sp["bootable"].as_bool().unwrap_or(false));
            }
            TableKind::Gpt => {
                assert_eq!(ours.type_id, stype);
                let uuid = sp["uuid"].as_str().expect("uuid").to_lowercase();
                assert_eq!(ours.uuid.as_deref(), Some(uuid.as_str()));
                assert_eq!(ours.name.as_deref(), sp["name"].as_str());
            }
        }
    }
    for (index, name) in sfdisk_type_names(img) {
        let ours = table
            .partition(index)
            .expect("partition listed by sfdisk -l");
        assert_eq!(ours.type_name, name, "type name of partition {index}");
    }
}

/// Compares our probe of `part` with blkid's.
fn assert_probe_matches_blkid(img: &Path, part: &Partition) -> FsKind {
    let ours = probe(img, part).expect("probe");
    let theirs = blkid(img, part.start);
    let expected_kind = match (
        theirs.get("TYPE").map(String::as_str),
        theirs.get("VERSION").map(String::as_str),
    ) {
        (Some("vfat"), Some("FAT32")) => FsKind::Fat32,
        (Some("vfat"), Some("FAT16")) => FsKind::Fat16,
        (Some("vfat"), Some("FAT12")) => FsKind::Fat12,
        (Some("ext2"), _) => FsKind::Ext2,
        (Some("ext3"), _) => FsKind::Ext3,
        (Some("ext4"), _) => FsKind::Ext4,
        (None, _) => FsKind::Unknown,
        other => panic!("blkid found {other:?}"),
    };
    assert_eq!(
        ours.kind, expected_kind,
        "partition {}: {theirs:?}",
        part.index
    );
    assert_eq!(ours.label, theirs.get("LABEL").cloned().unwrap_or_default());
    assert_eq!(ours.uuid, theirs.get("UUID").cloned().unwrap_or_default());
    ours.kind
}

fn check_layout(layout: Layout) {
    let (_dir, f) = fixture(layout);
    let table = read_table(&f.path).expect("read_table");
    assert_matches_sfdisk(&f.path, &table);
    let boot = table.partition(f.boot.index).expect("boot partition");
    let root = table.partition(f.root.index).expect("root partition");
    assert_eq!(
        (boot.start, boot.size),
        (f.boot.offset_bytes, f.boot.size_bytes)
    );
    assert_eq!(root.uuid.as_deref(), Some(f.root.partuuid.as_str()));

    assert_eq!(assert_probe_matches_blkid(&f.path, boot), FsKind::Fat32);
    assert_eq!(assert_probe_matches_blkid(&f.path, root), FsKind::Ext4);
    assert_eq!(probe(&f.path, boot).expect("probe").label, f.boot_label);
    assert_eq!(probe(&f.path, root).expect("probe").label, f.root_label);

    let json = serde_json::to_value(&table).expect("serialize");
    assert_eq!(
        json["kind"],
        if layout == Layout::GenericGpt {
            "gpt"
        } else {
            "mbr"
        }
    );
    assert_eq!(
        serde_json::to_value(probe(&f.path, root).expect("probe")).expect("json")["kind"],
        "ext4"
    );
}

#[test]
fn rpios_layout_matches_sfdisk_and_blkid() {
    check_layout(Layout::RpiOs);
}

#[test]
fn debian_raspi_layout_matches_sfdisk_and_blkid() {
    check_layout(Layout::DebianRaspi);
}

#[test]
fn generic_gpt_layout_matches_sfdisk_and_blkid() {
    check_layout(Layout::GenericGpt);
}

/// Writes a partition table with an sfdisk script into a new blank image.
fn blank_image(dir: &Path, mib: u64, script: &str) -> std::path::PathBuf {
    let img = dir.join("blank.img");
    let f = std::fs::File::create(&img).expect("create");
    f.set_len(mib << 20).expect("size");
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&img)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    assert!(child.wait().expect("wait").success(), "sfdisk {script}");
    img
}

#[test]
fn logical_partitions_and_every_probe_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "label: dos\nunit: sectors\n\n\
        start=2048, size=8192, type=1\nstart=10240, size=65536, type=6\n\
        start=75776, type=5\n\
        size=40960, type=83\nsize=40960, type=83\nsize=20480, type=83\n";
    let img = blank_image(dir.path(), 128, script);
    let table = read_table(&img).expect("read_table");
    assert_matches_sfdisk(&img, &table);
    assert!(
        table.partition(7).is_some(),
        "logical partitions are listed"
    );

    let p = |i: u32| table.partition(i).expect("partition").clone();
    let spec = |part: &Partition| format!("{}", part.start / 512);
    for (part, args) in [
        (p(1), vec!["-F", "12", "-n", "SMALL"]),
        (p(2), vec!["-F", "16", "-n", "MEDIUM"]),
    ] {
        let mut cmd = Command::new("mkfs.vfat");
        cmd.args(&args)
            .arg("--offset")
            .arg(spec(&part))
            .arg(&img)
            .arg((part.size / 1024).to_string());
        run_ok(&mut cmd);
    }
    for (part, fstype, label) in [(p(5), "ext2", "two"), (p(6), "ext3", "three")] {
        run_ok(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", fstype, "-L", label, "-E"])
                .arg(format!("offset={}", part.start))
                .arg(&img)
                .arg(format!("{}k", part.size / 1024)),
        );
    }
    let kinds: Vec<FsKind> = [1, 2, 5, 6, 7]
        .iter()
        .map(|&i| assert_probe_matches_blkid(&img, &p(i)))
        .collect();
    assert_eq!(
        kinds,
        [
            FsKind::Fat12,
            FsKind::Fat16,
            FsKind::Ext2,
            FsKind::Ext3,
            FsKind::Unknown
        ]
    );
    assert_eq!(probe(&img, &p(2)).expect("probe").label, "MEDIUM");
}

fn copy_of(f: &Fixture, dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("copy.img");
    std::fs::copy(&f.path, &copy).expect("copy");
    copy
}

fn corrupt(img: &Path, offset: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .expect("open");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&[byte[0] ^ 0x5A]).expect("write");
}

#[test]
fn damaged_gpt_headers_and_arrays_are_named() {
    let (dir, f) = fixture(Layout::GenericGpt);
    let len = std::fs::metadata(&f.path).expect("stat").len();
    // (byte to damage, what our error names, what sgdisk --verify reports)
    let cases = [
        // Disk GUID inside the backup header (last sector).
        (len - 512 + 60, "backup GPT header", "Backup header: ERROR"),
        // First entry of the backup partition array (32 sectors before the backup header).
        (
            len - 33 * 512 + 40,
            "backup GPT partition array",
            "Backup partition table: ERROR",
        ),
        // Disk GUID inside the primary header (LBA 1).
        (512 + 60, "primary GPT header", "Main header: ERROR"),
        // First entry of the primary partition array (LBA 2).
        (
            1024 + 40,
            "primary GPT partition array",
            "Main partition table: ERROR",
        ),
    ];
    for (offset, what, sgdisk_says) in cases {
        let img = copy_of(&f, dir.path());
        corrupt(&img, offset);
        let verify = sgdisk_verify(&img);
        assert!(verify.contains(sgdisk_says), "sgdisk: {verify}");
        let err = read_table(&img)
            .expect_err("damaged GPT must be refused")
            .to_string();
        assert!(err.contains(what), "{what}: {err}");
        assert!(err.starts_with(&img.display().to_string()), "{err}");
        assert!(!err.contains('\n'));
    }
}

#[test]
fn random_bytes_and_tiny_files_have_no_partition_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("random.bin");
    for len in [0, 100, 512, 1 << 20] {
        random_bytes_file(&img, len);
        let err = read_table(&img).expect_err("no table").to_string();
        assert!(
            err.contains("no partition table (neither MBR nor GPT) - is this a disk image?"),
            "{len}: {err}"
        );
    }
}

#[test]
fn bare_fat_file_system_is_not_a_partition_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("fat.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("create");
    run_ok(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "BARE"])
            .arg(&img),
    );
    let err = read_table(&img).expect_err("bare FAT").to_string();
    assert!(err.contains("no partition table"), "{err}");
    let whole = Partition {
        index: 1,
        start: 0,
        size: 64 << 20,
        type_id: "0x0c".into(),
        type_name: String::new(),
        name: None,
        uuid: None,
        bootable: false,
    };
    assert_eq!(assert_probe_matches_blkid(&img, &whole), FsKind::Fat32);
}

#[test]
fn truncated_images_are_refused_naming_the_partition() {
    let (dir, f) = fixture(Layout::RpiOs);
    let img = copy_of(&f, dir.path());
    let file = OpenOptions::new().write(true).open(&img).expect("open");
    file.set_len(f.root.offset_bytes + f.root.size_bytes / 2)
        .expect("truncate");
    let err = read_table(&img).expect_err("truncated").to_string();
    assert!(
        err.contains("partition 2") && err.contains("past the end"),
        "{err}"
    );

    let (dir, f) = fixture(Layout::GenericGpt);
    let img = copy_of(&f, dir.path());
    let file = OpenOptions::new().write(true).open(&img).expect("open");
    file.set_len(f.root.offset_bytes + (1 << 20))
        .expect("truncate");
    let err = read_table(&img).expect_err("truncated GPT").to_string();
    assert!(
        err.contains("image is truncated") && err.contains("backup GPT header is missing"),
        "{err}"
    );

    // Grown without moving the backup header: sgdisk complains too.
    let img = copy_of(&f, dir.path());
    let file = OpenOptions::new().write(true).open(&img).expect("open");
    file.set_len(std::fs::metadata(&f.path).expect("stat").len() + (1 << 20))
        .expect("grow");
    assert!(!sgdisk_verify(&img).contains("No problems found"));
    let err = read_table(&img).expect_err("grown GPT").to_string();
    assert!(
        err.contains("not at the end of the image") && err.contains("sgdisk -e"),
        "{err}"
    );
}

/// A small xorshift generator: mutations differ per run but need no extra crate.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut seed = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .expect("urandom");
        Rng(u64::from_le_bytes(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Recomputes the primary GPT header's array and header CRCs, so that mutated fields get past
/// the checksums and into the parsers.
fn refresh_gpt_crcs(img: &Path) {
    let mut bytes = std::fs::read(img).expect("read");
    let array = crc32(&bytes[1024..1024 + 128 * 128]);
    bytes[512 + 88..512 + 92].copy_from_slice(&array.to_le_bytes());
    bytes[512 + 16..512 + 20].fill(0);
    let header = crc32(&bytes[512..512 + 92]);
    bytes[512 + 16..512 + 20].copy_from_slice(&header.to_le_bytes());
    std::fs::write(img, bytes).expect("write");
}

#[test]
fn mutated_tables_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A GPT image and an MBR image with an extended partition, 8 MiB each.
    let gpt = blank_image(
        dir.path(),
        8,
        "label: gpt\n\nstart=2048, size=4096, type=uefi\nstart=6144, type=linux\n",
    );
    std::fs::rename(&gpt, dir.path().join("gpt.img")).expect("rename");
    let mbr = blank_image(
        dir.path(),
        8,
        "label: dos\n\nstart=2048, size=4096, type=c\nstart=6144, type=5\nsize=2048, type=83\nsize=2048, type=83\n",
    );
    let gpt = dir.path().join("gpt.img");
    let mut rng = Rng::seeded();
    let mut errors = 0;
    let mut parsed_mutants = 0;
    for round in 0..400 {
        // (image, first byte, bytes) to mutate; round 2 hits GPT header fields and fixes the
        // CRCs afterwards.
        let (src, start, len) = match round % 4 {
            0 => (&gpt, 0, 34 * 512),
            2 => (&gpt, 512 + 24, 68),
            _ => (&mbr, 0, 512),
        };
        let img = dir.path().join("mutant.img");
        std::fs::copy(src, &img).expect("copy");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .expect("open");
        for _ in 0..1 + rng.next() % 8 {
            let at = start + rng.next() % len;
            file.seek(SeekFrom::Start(at)).expect("seek");
            file.write_all(&[rng.next() as u8]).expect("write");
        }
        // The EBR of the logical partitions, too.
        if round % 4 == 1 {
            let at = 6144 * 512 + 446 + rng.next() % 66;
            file.seek(SeekFrom::Start(at)).expect("seek");
            file.write_all(&[rng.next() as u8]).expect("write");
        }
        drop(file);
        if round % 4 == 2 {
            refresh_gpt_crcs(&img);
        }
        match read_table(&img) {
            Ok(table) => {
                parsed_mutants += u32::from(round % 4 == 2);
                for part in &table.partitions {
                    probe(&img, part).expect("probe of an in-bounds partition");
                }
            }
            Err(e) => {
                errors += 1;
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
    assert!(errors > 0, "some mutations must be detected");
    assert!(
        parsed_mutants > 0,
        "some mutated GPTs must get past the checksums: {errors} errors"
    );
}

#[test]
fn hostile_extended_partition_chain_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = blank_image(
        dir.path(),
        8,
        "label: dos\n\nstart=2048, size=4096, type=c\nstart=6144, type=5\nsize=2048, type=83\nsize=2048, type=83\n",
    );
    assert!(read_table(&img)
        .expect("intact table")
        .partition(6)
        .is_some());
    let ebr_entry = 6144 * 512 + 446;
    for start in [0xFFFF_FFF0u32, 0x8000_0000, 0] {
        let mut file = OpenOptions::new().write(true).open(&img).expect("open");
        // Relative start of the first logical partition (entry bytes 8..12).
        file.seek(SeekFrom::Start(ebr_entry + 8)).expect("seek");
        file.write_all(&start.to_le_bytes()).expect("write");
        drop(file);
        let err = read_table(&img).expect_err("hostile EBR").to_string();
        assert!(
            err.contains("partition table is corrupt")
                || err.contains("extended partition chain is inconsistent"),
            "{start:#x}: {err}"
        );
    }
}

#[test]
fn overlapping_partitions_are_refused_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = blank_image(
        dir.path(),
        64,
        "label: dos\nunit: sectors\n\nstart=2048, size=32768, type=c\nstart=34816, type=83\n",
    );
    let before = read_table(&img).expect("a clean table reads");
    assert_eq!(before.partitions.len(), 2);
    // Move partition 2's start into partition 1 (MBR entry 2, start LBA at byte 8 of it); its
    // size is unchanged, so it still ends inside the image.
    let mut bytes = std::fs::read(&img).expect("read");
    bytes[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&30000u32.to_le_bytes());
    std::fs::write(&img, &bytes).expect("write");
    let dump = sfdisk_json(&img);
    assert_eq!(
        dump["partitiontable"]["partitions"][1]["start"], 30000,
        "sfdisk reads the overlapping start too"
    );
    let err = read_table(&img).expect_err("overlap").to_string();
    assert!(
        err.contains("partitions 1") && err.contains(" and 2 ") && err.contains("overlap"),
        "{err}"
    );
    assert!(!err.contains('\n'));
}
