//! The ext side of `imgbuild inspect` on an arbitrary partition: the magic-byte probe
//! (`disk::probe`: superblock magic, feature flags, label, UUID), then opening it read-only with
//! libext2fs through the `imgbuild-ext2fs` wrapper (the only unsafe code) and reading its size
//! and free space. Oracle: no panic, no crash or sanitizer report in the wrapper.
#![no_main]

use imgbuild_core::disk::{self, FsKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let image = imgbuild_fuzz::scratch_file("ext4.img", data);
    let part = imgbuild_fuzz::whole_image_partition(2, data.len() as u64, "0x83", "Linux");
    let probe = disk::probe(&image, &part).expect("probing a readable file");
    if !matches!(probe.kind, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4) {
        return;
    }
    if let Ok(fs) = imgbuild_ext2fs::Fs::open(&image, 0, false) {
        let _ = fs.total_bytes();
        let _ = fs.free_bytes();
        let _ = fs.free_inodes();
    }
});
