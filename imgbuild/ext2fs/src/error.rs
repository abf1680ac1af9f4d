//! The error type of this crate: one line, "ext4: <operation> <path>: <reason>".

use std::fmt;

use crate::raw::{self, code, Code};
use crate::sys;

/// What kind of failure an [`Error`] is, for callers that react differently to some of them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Not enough free space (or no free inode) for the operation.
    NoSpace {
        /// Bytes the operation needs (an estimate including metadata blocks).
        needed_bytes: u64,
        /// Bytes free in the file system when the operation was refused.
        free_bytes: u64,
    },
    /// A path (or one of its parent directories) does not exist.
    NotFound,
    /// The path exists but is not what the operation needs (a directory where a file is
    /// expected, a file in the middle of a path, a non-empty directory, ...).
    WrongType,
    /// The path already exists and the operation does not replace it.
    Exists,
    /// The path or an argument is invalid (relative path, name too long, NUL byte, ...).
    InvalidInput,
    /// The file system (or a directory in it) uses a feature this wrapper or libext2fs cannot
    /// write safely.
    Unsupported,
    /// The journal holds transactions that need recovery (mount it once, or run e2fsck).
    NeedsRecovery,
    /// The file system is marked as having errors or was not cleanly unmounted (run e2fsck).
    HasErrors,
    /// Anything else: I/O errors, corrupt metadata, ...
    Other,
}

/// An error from an ext2/3/4 operation. `Display` is a single line naming the operation, the
/// path (inside the file system, or the image for `open`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    op: &'static str,
    path: String,
    kind: ErrorKind,
    reason: String,
}

impl Error {
    /// Creates an error for operation `op` on `path`.
    pub(crate) fn new(
        op: &'static str,
        path: &str,
        kind: ErrorKind,
        reason: impl Into<String>,
    ) -> Error {
        Error {
            op,
            path: path.to_owned(),
            kind,
            reason: reason.into(),
        }
    }

    /// Translates a libext2fs error code. `free_bytes` and `needed_bytes` fill in
    /// [`ErrorKind::NoSpace`] when the code means "out of space".
    pub(crate) fn from_code(
        op: &'static str,
        path: &str,
        rc: Code,
        needed_bytes: u64,
        free_bytes: u64,
    ) -> Error {
        let kind = kind_of(rc, needed_bytes, free_bytes);
        let reason = match &kind {
            ErrorKind::NoSpace { .. } if rc == code(sys::EXT2_ET_INODE_ALLOC_FAIL) => {
                format!("no free inode left ({free_bytes} bytes free); use a bigger file system")
            }
            ErrorKind::NoSpace { .. } => format!(
                "not enough free space: needs about {needed_bytes} bytes, {free_bytes} bytes free; \
                 grow the file system"
            ),
            _ => describe(rc),
        };
        Error::new(op, path, kind, reason)
    }

    /// The kind of failure.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The operation that failed (`open`, `write`, `mkdir`, ...).
    pub fn operation(&self) -> &str {
        self.op
    }

    /// The path the operation was about (inside the file system, or the image for `open`).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.reason.replace(['\n', '\r'], " ");
        write!(f, "ext4: {} {}: {}", self.op, self.path, reason)
    }
}

impl std::error::Error for Error {}

/// ENOSPC from `<errno.h>` (the library reports some allocation failures as plain errno).
const ENOSPC: Code = 28;
/// ENOENT from `<errno.h>`.
const ENOENT: Code = 2;

fn kind_of(rc: Code, needed_bytes: u64, free_bytes: u64) -> ErrorKind {
    let no_space = [
        ENOSPC,
        code(sys::EXT2_ET_BLOCK_ALLOC_FAIL),
        code(sys::EXT2_ET_INODE_ALLOC_FAIL),
        code(sys::EXT2_ET_DIR_NO_SPACE),
    ];
    if no_space.contains(&rc) {
        ErrorKind::NoSpace {
            needed_bytes,
            free_bytes,
        }
    } else if rc == ENOENT || rc == code(sys::EXT2_ET_FILE_NOT_FOUND) {
        ErrorKind::NotFound
    } else if rc == code(sys::EXT2_ET_UNSUPP_FEATURE) || rc == code(sys::EXT2_ET_RO_UNSUPP_FEATURE)
    {
        ErrorKind::Unsupported
    } else {
        ErrorKind::Other
    }
}

/// A readable description of a library error code.
pub(crate) fn describe(rc: Code) -> String {
    if rc == code(sys::EXT2_ET_UNSUPP_FEATURE) {
        return "the file system has an incompatible feature libext2fs 1.47 does not support"
            .to_owned();
    }
    if rc == code(sys::EXT2_ET_RO_UNSUPP_FEATURE) {
        return "the file system has a read-only-compatible feature libext2fs 1.47 cannot write; \
                it can only be opened read-only"
            .to_owned();
    }
    if rc == code(sys::EXT2_ET_BAD_MAGIC) {
        return "no ext2/3/4 superblock found (wrong partition offset, or not an ext file system)"
            .to_owned();
    }
    if let Some(msg) = raw::ext2_message(rc) {
        return format!("{msg} (libext2fs error {rc})");
    }
    match i32::try_from(rc) {
        Ok(errno) if errno > 0 => std::io::Error::from_raw_os_error(errno).to_string(),
        _ => format!("libext2fs error {rc}"),
    }
}
