//! Test support for imgbuild: builds disk images shaped like the real base images (Raspberry Pi
//! OS, Debian raspi, Debian generic/cloud) with Debian's own tools, and wraps those tools as
//! *oracles* that tests use to check what imgbuild wrote.
//!
//! Everything runs locally (`sfdisk`, `mkfs.vfat`, `mtools`, `mke2fs`, `e2fsck`, `debugfs`,
//! `fsck.vfat`, `xz`, `gzip`, `zstd`); nothing is downloaded. Functions panic with the failing
//! tool's stderr: this crate is only ever used by tests.
//!
//! Debian packages needed: `fdisk` (sfdisk), `gdisk` (sgdisk), `dosfstools`, `mtools`,
//! `e2fsprogs`, `util-linux` (blkid), `xz-utils`, `gzip`, `zstd`.

mod compress;
mod fixture;
pub mod moto;
mod noise;
mod oracle;
mod tree;

pub use compress::{compress, write_zip, Compression};
pub use fixture::{build_fixture, Fixture, FixtureOptions, Layout, PartInfo};
pub use noise::{noise, xorshift_bytes};
pub use oracle::{
    blkid, debugfs_cat, debugfs_ls, debugfs_readlink, debugfs_stat, e2fsck_clean, fsck_vfat_clean,
    mdir_names, mtype, random_bytes_file, run, run_ok, sfdisk_dump, sfdisk_json, sgdisk_verify,
    sha256_file, ExtKind, ExtStat,
};
