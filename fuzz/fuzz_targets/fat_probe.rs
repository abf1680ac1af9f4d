//! The FAT side of `imgbuild inspect` on an arbitrary partition: the magic-byte probe
//! (`disk::probe`: BPB fields, FAT12/16/32 by cluster count, serial and label), then opening it
//! with the FAT patcher (`fs::fat::FatFs`, over the fatfs crate) and reading its label, type,
//! size, free space and root directory. Oracle: no panic escapes; nothing is written.
#![no_main]

use imgbuild_core::disk::{self, FsKind};
use imgbuild_core::fs::fat::FatFs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imgbuild_fuzz::allow_caught_panics();
    let image = imgbuild_fuzz::scratch_file("fat.img", data);
    let part =
        imgbuild_fuzz::whole_image_partition(1, data.len() as u64, "0x0c", "W95 FAT32 (LBA)");
    let probe = disk::probe(&image, &part).expect("probing a readable file");
    if !matches!(probe.kind, FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32) {
        return;
    }
    if let Ok(fs) = FatFs::open(&image, 0, part.size, 0) {
        let _ = fs.label();
        let _ = fs.fat_type();
        let _ = fs.total_bytes();
        let _ = fs.free_bytes();
        let _ = fs.list("/");
        let _ = fs.read_file("/config.txt");
    }
    assert_eq!(
        std::fs::read(&image).expect("reread"),
        data,
        "read-only use wrote"
    );
});
