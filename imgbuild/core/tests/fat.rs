//! FAT patching checked against the real tools: fixtures are disk images made with `sfdisk` and
//! `mkfs.vfat --offset` and filled with `mcopy`; results are checked with `fsck.vfat -n` (on
//! the partition extracted to a file, as it has no offset option) and read back with
//! `mtype`/`mdir`/`mlabel` (mtools). Needs the Debian packages dosfstools, mtools and fdisk.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use imgbuild_core::bootconfig::{cmdline_append, config_txt_set};
use imgbuild_core::fs::fat::FatFs;
use imgbuild_core::fs::ByteRanges;
use imgbuild_testkit::noise;
use sha2::{Digest, Sha256};

/// 2024-02-29 13:14:15 UTC, the time stamp every test writes with.
const TS: i64 = 1_709_212_455;
const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The Raspberry Pi OS layout: FAT32, 512-byte sectors, 2 KiB clusters.
    Fat32,
    /// A small FAT16.
    Fat16,
    /// A tiny FAT12, for the corruption tests.
    Fat12,
}

impl Kind {
    fn mkfs_args(self) -> &'static [&'static str] {
        match self {
            Kind::Fat32 => &["-F", "32", "-S", "512", "-s", "4"],
            Kind::Fat16 => &["-F", "16"],
            Kind::Fat12 => &["-F", "12"],
        }
    }

    fn partition_len(self) -> u64 {
        match self {
            Kind::Fat32 => 136 * MIB,
            Kind::Fat16 => 24 * MIB,
            Kind::Fat12 => 2 * MIB,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Fat32 => "FAT32",
            Kind::Fat16 => "FAT16",
            Kind::Fat12 => "FAT12",
        }
    }
}

/// A disk image with an MBR and one FAT partition, noise around the partition, and a model of
/// the files the partition should hold.
struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    offset: u64,
    len: u64,
    files: BTreeMap<String, Vec<u8>>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

impl Fixture {
    /// Makes the image and fills the partition with a few files through mtools.
    fn new(kind: Kind) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let (offset, len) = (MIB, kind.partition_len());
        let file = fs::File::create(&image).unwrap();
        file.write_all_at(&noise(1, offset as usize), 0).unwrap();
        file.write_all_at(&noise(2, MIB as usize), offset + len)
            .unwrap();
        drop(file);
        let table = format!(
            "label: dos\nstart={}, size={}, type=c\n",
            offset / SECTOR,
            len / SECTOR
        );
        let mut sfdisk = Command::new("sfdisk")
            .arg("-q")
            .arg(&image)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(table.as_bytes())
            .unwrap();
        assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");
        run(Command::new("mkfs.vfat")
            .args(kind.mkfs_args())
            .args(["-n", "bootfs", "--offset"])
            .arg((offset / SECTOR).to_string())
            .arg(&image)
            .arg((len / 1024).to_string()));
        let mut fx = Fixture {
            dir,
            image,
            offset,
            len,
            files: BTreeMap::new(),
        };
        fx.mtools("mmd", &["::/overlays"]);
        fx.mcopy(
            "/config.txt",
            b"# Pi config\narm_64bit=1\n[pi4]\narm_boost=1\n".to_vec(),
        );
        fx.mcopy(
            "/cmdline.txt",
            b"console=serial0,115200 console=tty1 root=PARTUUID=abcd-02 rootwait\n".to_vec(),
        );
        fx.mcopy("/kernel8.img", noise(2, 300_000));
        fx.mcopy("/overlays/Vc4-Kms-V3d.dtbo", noise(3, 5_000));
        fx
    }

    fn mtools(&self, tool: &str, args: &[&str]) -> Output {
        let drive = format!("{}@@{}", self.image.display(), self.offset);
        run(Command::new(tool)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(drive)
            .args(args))
    }

    fn mcopy(&mut self, path: &str, data: Vec<u8>) {
        let local = self.dir.path().join("upload");
        fs::write(&local, &data).unwrap();
        let target = format!("::{path}");
        self.mtools("mcopy", &[local.to_str().unwrap(), &target]);
        self.files.insert(path.to_string(), data);
    }

    fn open(&self) -> FatFs {
        FatFs::open(&self.image, self.offset, self.len, TS).unwrap()
    }

    /// Content of a file as mtools reads it, or `None` if mtools cannot find it.
    fn mtype(&self, path: &str) -> Option<Vec<u8>> {
        let drive = format!("{}@@{}", self.image.display(), self.offset);
        let out = Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(drive)
            .arg(format!("::{path}"))
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// Every file (not directory) in the partition as mtools lists it, with `/`-rooted paths.
    fn mtools_files(&self) -> Vec<String> {
        let out = self.mtools("mdir", &["-/", "-b", "::/"]);
        let mut files: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.ends_with('/'))
            .filter_map(|l| l.strip_prefix("::").map(str::to_string))
            .collect();
        files.sort();
        files
    }

    /// The "N bytes free" figure of `mdir`.
    fn mtools_free_bytes(&self) -> u64 {
        let out = String::from_utf8(self.mtools("mdir", &["::/"]).stdout).unwrap();
        let line = out.lines().find(|l| l.contains("bytes free")).unwrap();
        line.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    /// `fsck.vfat -n` on the partition, extracted to a file.
    fn fsck(&self) {
        let part = self.dir.path().join("partition.img");
        fs::write(
            &part,
            &self.read_image()[self.offset as usize..(self.offset + self.len) as usize],
        )
        .unwrap();
        run(Command::new("fsck.vfat").arg("-n").arg(&part));
    }

    fn read_image(&self) -> Vec<u8> {
        fs::read(&self.image).unwrap()
    }

    fn partition(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }

    /// Hash of the bytes outside the partition.
    fn outside_hash(&self, image: &[u8]) -> Vec<u8> {
        let part = self.partition();
        let mut hasher = Sha256::new();
        hasher.update(&image[..part.start]);
        hasher.update(&image[part.end..]);
        hasher.finalize().to_vec()
    }

    /// The full check after a session: fsck clean, mtools reads back exactly the model, nothing
    /// outside the partition changed, and every changed byte lies in a reported written range
    /// inside the partition.
    fn verify(&self, before: &[u8], ranges: &ByteRanges) {
        self.fsck();
        for (path, data) in &self.files {
            assert_eq!(
                self.mtype(path).as_deref(),
                Some(&data[..]),
                "mtools reads back {path}"
            );
        }
        let expected: Vec<String> = self.files.keys().cloned().collect();
        assert_eq!(
            self.mtools_files(),
            expected,
            "the partition holds exactly the expected files"
        );
        let after = self.read_image();
        assert_eq!(
            self.outside_hash(before),
            self.outside_hash(&after),
            "bytes outside the partition changed"
        );
        assert_ranges_cover_changes(before, &after, ranges);
        for (start, len) in ranges {
            assert!(
                len > 0 && start >= self.offset && start + len <= self.offset + self.len,
                "range {start}+{len}"
            );
        }
    }

    /// Checks the `.` and `..` entries of every directory cluster in the partition, read from
    /// the raw bytes (the FAT specification's rules, which `fatfs` 0.3.6 broke unpatched: see
    /// vendor/fatfs/PATCHES.md): `.` is a short-name entry in slot 0 naming the directory's own
    /// cluster, `..` is in slot 1 and names the parent's cluster, or 0 when the parent is the
    /// root directory (also on FAT32), and neither appears anywhere else. Returns the number
    /// of directories found and how many of them have a parent other than the root.
    fn check_dot_entries(&self) -> (usize, usize) {
        let image = self.read_image();
        let b = &image[self.offset as usize..(self.offset + self.len) as usize];
        let u16_at = |at: usize| u64::from(u16::from_le_bytes([b[at], b[at + 1]]));
        let u32_at =
            |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
        let sector = u16_at(11);
        let fat_sectors = if u16_at(22) == 0 {
            u32_at(36)
        } else {
            u16_at(22)
        };
        let root_cluster = if u16_at(22) == 0 { u32_at(44) } else { 0 };
        let root_dir_sectors = (u16_at(17) * 32).div_ceil(sector);
        let data =
            ((u16_at(14) + u64::from(b[16]) * fat_sectors + root_dir_sectors) * sector) as usize;
        let cluster_size = (sector * u64::from(b[13])) as usize;
        let entry = |cluster: usize, slot: usize| {
            let at = data + cluster * cluster_size + slot * 32;
            let e = &b[at..at + 32];
            let first = u64::from(u16::from_le_bytes([e[26], e[27]]))
                | (u64::from(u16::from_le_bytes([e[20], e[21]])) << 16);
            (&e[..11], e[11], first)
        };
        let clusters = (b.len() - data) / cluster_size;
        let mut parents = BTreeMap::new();
        for c in 0..clusters {
            for slot in 0..cluster_size / 32 {
                let (name, attr, first) = entry(c, slot);
                let dot = name == b".          ";
                let dotdot = name == b"..         ";
                match slot {
                    0 if dot => {
                        assert_eq!(attr & 0x10, 0x10, "`.` of cluster {} is a directory", c + 2);
                        assert_eq!(first, c as u64 + 2, "`.` names its own cluster");
                        let (name1, attr1, parent) = entry(c, 1);
                        assert_eq!(name1, b"..         ", "slot 1 of cluster {} is `..`", c + 2);
                        assert_eq!(attr1 & 0x10, 0x10);
                        assert!(
                            root_cluster == 0 || parent != root_cluster,
                            "`..` of cluster {} names the FAT32 root cluster instead of 0",
                            c + 2
                        );
                        parents.insert(c as u64 + 2, parent);
                    }
                    1 if dotdot && entry(c, 0).0 == b".          " => {}
                    _ => assert!(
                        !dot && !dotdot,
                        "a `.` or `..` entry in slot {slot} of cluster {}",
                        c + 2
                    ),
                }
            }
        }
        for (dir, parent) in &parents {
            assert!(
                *parent == 0 || parents.contains_key(parent),
                "`..` of the directory at cluster {dir} names cluster {parent}, not a directory"
            );
        }
        let nested = parents.values().filter(|p| **p != 0).count();
        (parents.len(), nested)
    }

    /// Opens, runs `ops`, closes, and verifies the result against the state before.
    fn session(
        &mut self,
        ops: impl FnOnce(&mut FatFs, &mut BTreeMap<String, Vec<u8>>),
    ) -> ByteRanges {
        let before = self.read_image();
        let mut fat = self.open();
        ops(&mut fat, &mut self.files);
        let ranges = fat.close().unwrap();
        self.verify(&before, &ranges);
        ranges
    }
}

/// Every byte that differs between `before` and `after` lies inside one of `ranges`
/// (compared in 4 KiB blocks, then byte by byte inside differing blocks not wholly covered).
fn assert_ranges_cover_changes(before: &[u8], after: &[u8], ranges: &ByteRanges) {
    assert_eq!(before.len(), after.len());
    assert!(
        ranges
            .as_slice()
            .windows(2)
            .all(|w| w[0].0 + w[0].1 < w[1].0),
        "ranges are sorted and merged: {ranges:?}"
    );
    // Whether [start, end) lies inside the ranges.
    let covered =
        |start: u64, end: u64| ranges.intersection(start, end - start).total_bytes() == end - start;
    const BLOCK: usize = 4096;
    for (i, (a, b)) in before.chunks(BLOCK).zip(after.chunks(BLOCK)).enumerate() {
        let start = (i * BLOCK) as u64;
        if a == b || covered(start, start + a.len() as u64) {
            continue;
        }
        for (j, _) in a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y) {
            let at = start + j as u64;
            assert!(
                covered(at, at + 1),
                "changed byte {at} is in no written range {ranges:?}"
            );
        }
    }
}

fn write(fat: &mut FatFs, files: &mut BTreeMap<String, Vec<u8>>, path: &str, data: Vec<u8>) {
    fat.write_file(path, &data).unwrap();
    files.insert(path.to_string(), data);
}

/// Reads, creates, replaces (bigger and smaller), and deletes, verifying after each session.
fn create_replace_delete(kind: Kind) {
    let mut fx = Fixture::new(kind);

    // Reading only: answers match mtools, and nothing is written.
    let ranges = fx.session(|fat, files| {
        assert_eq!(fat.fat_type(), kind.name());
        for (path, data) in files.iter() {
            let shouted = path.to_uppercase();
            assert_eq!(
                fat.read_file(&shouted).unwrap().as_deref(),
                Some(&data[..]),
                "{shouted}"
            );
        }
        assert_eq!(fat.read_file("/missing.txt").unwrap(), None);
        assert_eq!(fat.read_file("/overlays/missing/deeper").unwrap(), None);
        assert!(
            fat.read_file("/overlays").is_err(),
            "a directory is not a file"
        );
        let mut root = fat.list("/").unwrap();
        root.sort();
        assert_eq!(
            root,
            ["cmdline.txt", "config.txt", "kernel8.img", "overlays"]
        );
        assert_eq!(fat.list("overlays/").unwrap(), ["Vc4-Kms-V3d.dtbo"]);
    });
    assert!(ranges.is_empty(), "a read-only session wrote {ranges:?}");
    let fat = fx.open();
    assert_eq!(fat.free_bytes().unwrap(), fx.mtools_free_bytes());
    assert!(fat.total_bytes().unwrap() > fat.free_bytes().unwrap());
    assert!(fat.total_bytes().unwrap() < fx.len);
    let mlabel = String::from_utf8(fx.mtools("mlabel", &["-s", "::"]).stdout).unwrap();
    assert_eq!(fat.label(), mlabel.split("is ").nth(1).unwrap().trim_end());
    fat.close().unwrap();

    // Create: empty file, lowercase and mixed-case long names, nested new directories.
    let ranges = fx.session(|fat, files| {
        write(fat, files, "/ssh", Vec::new());
        write(fat, files, "/userconf.txt", b"pi:$6$salt$hash\n".to_vec());
        write(
            fat,
            files,
            "/firstboot/Greengrass/provisioning-config.yaml",
            noise(4, 9_000),
        );
        write(fat, files, "/overlays/new-overlay.dtbo", noise(5, 70_000));
    });
    assert!(!ranges.is_empty());
    // overlays (made by mtools), firstboot and firstboot/Greengrass (made by fatfs).
    let (dirs, nested) = fx.check_dot_entries();
    assert!(
        dirs >= 3 && nested >= 1,
        "{dirs} directories, {nested} nested"
    );
    let listing =
        String::from_utf8(fx.mtools("mdir", &["::/firstboot/Greengrass"]).stdout).unwrap();
    assert!(
        listing.contains("2024-02-29") && listing.contains("13:14"),
        "time stamps come from TS:\n{listing}"
    );

    // Replace: bigger, smaller, and through the text editors.
    fx.session(|fat, files| {
        write(fat, files, "/kernel8.img", noise(6, 700_000));
        write(fat, files, "/CMDLINE.TXT", b"root=LABEL=x\n".to_vec());
        let cmdline = files.remove("/CMDLINE.TXT").unwrap();
        files.insert("/cmdline.txt".into(), cmdline);
        let config = String::from_utf8(fat.read_file("/config.txt").unwrap().unwrap()).unwrap();
        let config = config_txt_set(&config, &[("enable_uart".into(), "1".into())]);
        write(fat, files, "/config.txt", config.into_bytes());
        let cmdline = String::from_utf8(fat.read_file("/cmdline.txt").unwrap().unwrap()).unwrap();
        write(
            fat,
            files,
            "/cmdline.txt",
            cmdline_append(&cmdline, &["quiet".into()]).into_bytes(),
        );
    });
    assert_eq!(
        fx.mtype("/config.txt").unwrap(),
        b"# Pi config\narm_64bit=1\n[pi4]\narm_boost=1\n[all]\nenable_uart=1\n"
    );
    assert_eq!(fx.mtype("/cmdline.txt").unwrap(), b"root=LABEL=x quiet\n");

    // Delete files, a now-empty directory, and something that is not there.
    fx.session(|fat, files| {
        assert!(fat.remove("/overlays/Vc4-Kms-V3d.dtbo").unwrap());
        files.remove("/overlays/Vc4-Kms-V3d.dtbo");
        assert!(fat.remove("/SSH").unwrap());
        files.remove("/ssh");
        assert!(!fat.remove("/ssh").unwrap());
        assert!(!fat.remove("/nowhere/file").unwrap());
        assert!(
            fat.remove("/firstboot").is_err(),
            "a non-empty directory is not removed"
        );
        assert!(fat
            .remove("/firstboot/Greengrass/provisioning-config.yaml")
            .unwrap());
        files.remove("/firstboot/Greengrass/provisioning-config.yaml");
        assert!(fat.remove("/firstboot/Greengrass").unwrap());
        assert_eq!(fat.list("/firstboot").unwrap(), Vec::<String>::new());
    });
}

#[test]
fn fat32_create_replace_delete() {
    create_replace_delete(Kind::Fat32);
}

#[test]
fn fat16_create_replace_delete() {
    create_replace_delete(Kind::Fat16);
}

/// The same operations on identical images with the same time stamp give identical bytes.
#[test]
fn same_operations_give_identical_images() {
    let fx = Fixture::new(Kind::Fat32);
    let apply = |image: &Path, timestamp: i64| {
        let mut fat = FatFs::open(image, fx.offset, fx.len, timestamp).unwrap();
        fat.write_file("/firstboot/config.yaml", &noise(7, 20_000))
            .unwrap();
        fat.write_file("/kernel8.img", &noise(8, 100_000)).unwrap();
        fat.remove("/overlays/Vc4-Kms-V3d.dtbo").unwrap();
        fat.close().unwrap();
        sha256(&fs::read(image).unwrap())
    };
    let copies: Vec<PathBuf> = (0..3)
        .map(|i| fx.dir.path().join(format!("copy{i}.img")))
        .collect();
    for copy in &copies {
        fs::copy(&fx.image, copy).unwrap();
    }
    let first = apply(&copies[0], TS);
    assert_eq!(first, apply(&copies[1], TS), "same inputs, different bytes");
    assert_ne!(
        first,
        apply(&copies[2], TS + 86_400),
        "the time stamp is not used"
    );
}

#[test]
fn garbage_is_an_error_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("garbage.img");
    for (name, data) in [
        ("noise", noise(9, 8 * MIB as usize)),
        ("zeros", vec![0; 8 * MIB as usize]),
    ] {
        fs::write(&image, &data).unwrap();
        let err = FatFs::open(&image, MIB, 4 * MIB, TS).expect_err(name);
        assert!(
            err.message().contains("garbage.img") && err.message().contains("FAT"),
            "{name}: {err}"
        );
        assert_eq!(
            fs::read(&image).unwrap(),
            data,
            "{name}: the image was changed"
        );
    }
    let err = FatFs::open(&image, 6 * MIB, 4 * MIB, TS).unwrap_err();
    assert!(err.message().contains("past the end"), "{err}");
    let err = FatFs::open(&dir.path().join("absent.img"), 0, MIB, TS).unwrap_err();
    assert!(err.message().contains("absent.img"), "{err}");

    // A real file system opened with a window smaller than it claims.
    let fx = Fixture::new(Kind::Fat16);
    let err = FatFs::open(&fx.image, fx.offset, fx.len / 2, TS).unwrap_err();
    assert!(err.message().contains("claims"), "{err}");
}

#[test]
fn disk_full_is_an_error_naming_the_file_and_free_space() {
    let mut fx = Fixture::new(Kind::Fat16);
    let before = fx.read_image();
    let mut fat = fx.open();
    let free = fat.free_bytes().unwrap();

    // Known in advance: nothing is written.
    let err = fat
        .write_file("/huge.bin", &vec![1; free as usize + 1])
        .unwrap_err();
    assert!(
        err.message().contains("/huge.bin")
            && err.message().contains(&format!("{free} bytes free")),
        "{err}"
    );
    assert!(err.message().contains("disk.img"), "{err}");
    assert!(fat.written_ranges().is_empty());

    // Found out half way (the new directory takes a cluster): the partial file is removed.
    let err = fat
        .write_file("/newdir/fill.bin", &vec![2; free as usize])
        .unwrap_err();
    assert!(
        err.message().contains("/newdir/fill.bin") && err.message().contains("bytes free"),
        "{err}"
    );
    let ranges = fat.close().unwrap();
    fx.verify(&before, &ranges);

    // A replaced file gives its clusters back: exactly all free space plus its own fits.
    let before = fx.read_image();
    let boot = &before[fx.partition().start..][..512];
    let cluster = field(boot, 11, 2) * field(boot, 13, 1);
    let mut fat = fx.open();
    let free = fat.free_bytes().unwrap();
    let old = fx.files["/kernel8.img"].len() as u64;
    let data = noise(10, (old.div_ceil(cluster) * cluster + free) as usize);
    fat.write_file("/kernel8.img", &data).unwrap();
    assert_eq!(fat.free_bytes().unwrap(), 0);
    fx.files.insert("/kernel8.img".into(), data);
    let ranges = fat.close().unwrap();
    fx.verify(&before, &ranges);
}

/// Little-endian field of a boot sector.
fn field(bytes: &[u8], at: usize, len: usize) -> u64 {
    bytes[at..at + len]
        .iter()
        .rev()
        .fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// A root directory whose cluster chain points back to itself is reported, not looped over.
#[test]
fn looping_directory_chain_is_an_error() {
    let fx = Fixture::new(Kind::Fat32);
    let mut image = fx.read_image();
    let part = fx.partition().start;
    let boot = image[part..part + 512].to_vec();
    let sector = field(&boot, 11, 2) as usize;
    let cluster_size = sector * field(&boot, 13, 1) as usize;
    let reserved = field(&boot, 14, 2) as usize;
    let fats = field(&boot, 16, 1) as usize;
    let fat_len = field(&boot, 36, 4) as usize * sector;
    let root_cluster = field(&boot, 44, 4) as usize;
    for copy in 0..fats {
        let entry = part + reserved * sector + copy * fat_len + root_cluster * 4;
        image[entry..entry + 4].copy_from_slice(&(root_cluster as u32).to_le_bytes());
    }
    let data =
        part + (reserved + fats * fat_len / sector) * sector + (root_cluster - 2) * cluster_size;
    image[data..data + cluster_size].fill(0xE5);
    fs::write(&fx.image, &image).unwrap();

    let mut fat = fx.open();
    let err = fat.list("/").unwrap_err();
    assert!(
        err.message().contains("loops") && err.message().contains("disk.img"),
        "{err}"
    );
    assert!(fat.write_file("/new.txt", b"x").is_err());
}

/// Random damage to the metadata of a small FAT12 never makes a call panic or hang; whatever
/// happens is an `Ok` or an `Err`.
#[test]
fn damaged_metadata_never_panics() {
    let fx = Fixture::new(Kind::Fat12);
    let pristine = fx.read_image();
    let part = fx.partition().start;
    let damage = noise(11, 4096);
    let mut opened = 0;
    for round in 0..40usize {
        let mut image = pristine.clone();
        for k in 0..8 {
            let pick = damage[(round * 8 + k) % damage.len()] as usize;
            // Metadata lives in the first 16 KiB of this small file system (boot sector, FATs, root).
            let at = part + (pick * 61 + round * 397 + k * 2003) % (16 * 1024);
            image[at] ^= damage[(round * 13 + k * 7) % damage.len()] | 1;
        }
        fs::write(&fx.image, &image).unwrap();
        let Ok(mut fat) = FatFs::open(&fx.image, fx.offset, fx.len, TS) else {
            continue;
        };
        opened += 1;
        let _ = fat.list("/");
        let _ = fat.list("/overlays");
        let _ = fat.read_file("/kernel8.img");
        let _ = fat.write_file("/overlays/x.dtbo", &noise(12, 3_000));
        let _ = fat.remove("/config.txt");
        let _ = fat.close();
        let after = fs::read(&fx.image).unwrap();
        assert_eq!(
            fx.outside_hash(&pristine),
            fx.outside_hash(&after),
            "round {round} wrote outside the partition"
        );
    }
    assert!(
        opened > 0,
        "no damaged image could be opened: the later calls were never exercised"
    );
}

/// A file whose first cluster is 1 (reserved) makes fatfs compute a negative cluster index, which
/// panics in builds with overflow checks: the panic is turned into an error naming the file,
/// later calls are refused, and the volume is not marked clean.
#[test]
fn reserved_first_cluster_is_contained() {
    let fx = Fixture::new(Kind::Fat16);
    let mut image = fx.read_image();
    let part = fx.partition().start;
    let boot = image[part..part + 512].to_vec();
    let sector = field(&boot, 11, 2) as usize;
    let root = part
        + (field(&boot, 14, 2) as usize
            + field(&boot, 16, 1) as usize * field(&boot, 22, 2) as usize)
            * sector;
    let root_len = field(&boot, 17, 2) as usize * 32;
    let entry = (root..root + root_len)
        .step_by(32)
        .find(|&e| &image[e..e + 11] == b"KERNEL8 IMG")
        .unwrap();
    image[entry + 26..entry + 28].copy_from_slice(&1u16.to_le_bytes());
    fs::write(&fx.image, &image).unwrap();

    let mut fat = fx.open();
    match fat.read_file("/kernel8.img") {
        Err(err) => {
            assert!(
                err.message().contains("/kernel8.img") && err.message().contains("disk.img"),
                "{err}"
            );
            let later = fat.write_file("/other.txt", b"x").unwrap_err();
            assert!(later.message().contains("refused"), "{later}");
            assert!(
                fat.close().is_err(),
                "a volume that made fatfs fail must not be closed as clean"
            );
        }
        // Without overflow checks the arithmetic wraps and garbage is read instead.
        Ok(_) => {
            fat.close().unwrap();
        }
    }
    assert_eq!(fx.outside_hash(&image), fx.outside_hash(&fx.read_image()));
}
