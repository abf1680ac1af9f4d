//! The partition-table reader (`disk::read_table`: MBR with EBR chains, GPT with both headers
//! and arrays) on arbitrary disk images, then the file-system probe of every partition found,
//! as `imgbuild inspect` does. Oracle: no panic, and every partition of an accepted table lies
//! inside the image.
#![no_main]

use imgbuild_core::disk;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imgbuild_fuzz::allow_caught_panics();
    let image = imgbuild_fuzz::scratch_file("disk.img", data);
    let Ok(table) = disk::read_table(&image) else {
        return;
    };
    assert_eq!(table.disk_size, data.len() as u64);
    for p in &table.partitions {
        let end = p
            .start
            .checked_add(p.size)
            .expect("partition end overflows");
        assert!(end <= table.disk_size, "partition {} past the end", p.index);
        let _ = disk::probe(&image, p);
    }
});
