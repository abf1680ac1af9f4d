//! File-system patchers: FAT through `fatfs`, ext4 through libext2fs.

pub mod fat;
mod fatfix;
pub mod window;

pub use imgbuild_ranges::ByteRanges;
