//! Helpers shared by imgbuild's fuzz targets: scratch files for APIs that take paths, a quiet
//! panic hook for targets whose code catches third-party panics on purpose, and the cloud
//! crate's allowlist parser compiled without the AWS SDK.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The device allowlist parser of `imgbuild-cloud`, compiled from its source file.
///
/// Depending on `imgbuild-cloud` would build the whole AWS SDK (five generated clients, tokio,
/// hyper, rustls) with sanitizer instrumentation for one 60-line parser. The parser needs only
/// `crate::error::{bail, Context, Result}`, which [`error`] provides with the same behaviour
/// (one-line messages), so the real file is included as a module instead: no copy that could
/// drift, and a change to its imports fails this build loudly.
#[path = "../../imgbuild/cloud/src/allowlist.rs"]
pub mod allowlist;

/// Stand-in for `imgbuild_cloud::error`, limited to what `allowlist.rs` uses.
pub mod error {
    use std::fmt;

    /// One-line error, as `imgbuild_cloud::error::CloudError`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CloudError(String);

    impl CloudError {
        /// Folds line breaks and runs of whitespace into single spaces, as the real one does.
        pub fn msg(message: impl Into<String>) -> CloudError {
            let message: String = message.into();
            CloudError(message.split_whitespace().collect::<Vec<_>>().join(" "))
        }
    }

    impl fmt::Display for CloudError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    /// Result alias, as the cloud crate's.
    pub type Result<T, E = CloudError> = std::result::Result<T, E>;

    /// Returns early with a [`CloudError`] built from a format string.
    macro_rules! bail {
        ($($arg:tt)*) => { return Err($crate::error::CloudError::msg(format!($($arg)*))) };
    }
    pub(crate) use bail;

    /// Adds "what was being done" to an error.
    pub trait Context<T> {
        /// Wraps the error as `"{what}: {cause}"`.
        fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
    }

    impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
        fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
            self.map_err(|e| CloudError::msg(format!("{}: {e}", what())))
        }
    }
}

/// A directory of this process for scratch files: `$TMPDIR/imgbuild-fuzz-PID` (run.sh points
/// TMPDIR at a tmpfs directory it removes afterwards).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("imgbuild-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        dir
    })
}

/// An MBR partition `index` of type `type_id` (`type_name`, as fdisk names it) spanning all
/// `size` bytes of a scratch image, for the probes that take a partition of an image.
pub fn whole_image_partition(
    index: u32,
    size: u64,
    type_id: &str,
    type_name: &str,
) -> imgbuild_core::disk::Partition {
    imgbuild_core::disk::Partition {
        index,
        start: 0,
        size,
        type_id: type_id.into(),
        type_name: type_name.into(),
        name: None,
        uuid: None,
        bootable: false,
    }
}

/// Writes `data` to the scratch file `name` (replacing it) and returns its path.
pub fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, data).expect("cannot write a fuzz scratch file");
    path
}

/// Replaces libfuzzer-sys's panic hook (which aborts on every panic, even one that is caught)
/// with a silent one, once.
///
/// For targets whose product code deliberately wraps a third-party crate in `catch_unwind`
/// (mbrman's EBR chain walk, fatfs): such a panic becomes an error there, as in the release
/// binary. A panic that escapes the target still aborts the process (libfuzzer-sys aborts when
/// the target returns by unwinding), so it is still found and reported as a crash.
pub fn allow_caught_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| std::panic::set_hook(Box::new(|_| {})));
}
