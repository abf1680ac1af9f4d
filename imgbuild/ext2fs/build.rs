//! Generates FFI declarations for the parts of libext2fs this crate uses and links the library
//! dynamically (it is LGPL-2) through pkg-config (`ext2fs`, `com_err`).

use std::env;
use std::path::PathBuf;

/// Functions called through FFI; everything else in the headers stays out of the bindings.
const FUNCTIONS: &[&str] = &[
    "ext2fs_open2",
    "ext2fs_close2",
    "ext2fs_free",
    "ext2fs_read_bitmaps",
    "ext2fs_lookup",
    "ext2fs_read_inode_full",
    "ext2fs_write_inode_full",
    "ext2fs_write_new_inode",
    "ext2fs_new_inode",
    "ext2fs_inode_alloc_stats2",
    "ext2fs_link",
    "ext2fs_unlink",
    "ext2fs_expand_dir",
    "ext2fs_mkdir",
    "ext2fs_symlink",
    "ext2fs_extent_open2",
    "ext2fs_extent_free",
    "ext2fs_file_open",
    "ext2fs_file_read",
    "ext2fs_file_write",
    "ext2fs_file_close",
    "ext2fs_punch",
    "ext2fs_free_ext_attr",
    "ext2fs_inode_has_valid_blocks2",
    "ext2fs_is_fast_symlink",
    "ext2fs_dir_iterate2",
    "ext2fs_blocks_count",
    "ext2fs_bmap2",
    "ext2fs_free_blocks_count",
    "error_message",
    "initialize_ext2_error_table",
];

/// Types whose layout the wrapper reads or fills in.
const TYPES: &[&str] = &[
    "struct_ext2_filsys",
    "ext2_super_block",
    "ext2_inode",
    "ext2_inode_large",
    "ext2_dir_entry",
    "struct_io_manager",
    "struct_io_channel",
    "struct_io_stats",
];

/// Constants (regular expressions) used by the wrapper: error codes, open flags, feature bits,
/// state bits, mode bits, inode flags and directory entry file types.
const CONSTANTS: &[&str] = &[
    "EXT2_ET_.*",
    "EXT2_FLAG_.*",
    "EXT[234]_FEATURE_.*",
    "EXT2_VALID_FS",
    "EXT2_ERROR_FS",
    "LINUX_S_IF.*",
    "EXT4_EXTENTS_FL",
    "EXT4_INLINE_DATA_FL",
    "EXT4_ENCRYPT_FL",
    "EXT4_CASEFOLD_FL",
    "EXT2_FT_.*",
    "EXT2_ROOT_INO",
    "EXT2_FILE_WRITE",
    "EXT2_LINK_MAX",
    "EXT2_GOOD_OLD_INODE_SIZE",
    "IO_FLAG_.*",
    "BLOCK_FLAG_.*",
];

fn main() {
    let libs = ["ext2fs", "com_err"].map(|name| {
        pkg_config::Config::new().probe(name).unwrap_or_else(|e| {
            panic!("pkg-config {name}: {e}; install libext2fs-dev and comerr-dev")
        })
    });
    println!("cargo:rerun-if-changed=src/wrapper.h");

    let mut builder = bindgen::Builder::default()
        .header("src/wrapper.h")
        .formatter(bindgen::Formatter::None)
        .layout_tests(false)
        .derive_default(true)
        .prepend_enum_name(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for path in libs.iter().flat_map(|lib| &lib.include_paths) {
        builder = builder.clang_arg(format!("-I{}", path.display()));
    }
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for c in CONSTANTS {
        builder = builder.allowlist_var(c);
    }
    builder = builder.allowlist_var("unix_io_manager");

    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!("bindgen over libext2fs headers failed: {e}; install libclang-dev")
    });
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| panic!("writing bindings.rs: {e}"));
}
