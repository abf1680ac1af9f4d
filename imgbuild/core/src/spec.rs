//! Resolve: the command line, the config file, the board and the base image turned into one
//! [`BuildSpec`], once, before anything is written (like ripgrep's `HiArgs`). Every later stage
//! reads the spec; none of them looks at the command line or the config file again.
//!
//! Everything here fails on the user's input: a bad config, an unknown board, claim material
//! that does not match, a base that does not verify. The image is only read later.

use crate::base::{self, BaseRequest, ResolvedBase};
use crate::board::{self, Board};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pack::Compress;
use crate::payload;
use crate::pipeline::Progress;
use crate::plan::{self, Plan};
use std::path::{Path, PathBuf};

/// What the caller asks for: the build's command-line options as plain data (the CLI maps its
/// flags onto this; a program using the library fills it in directly).
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--board`; `None` takes `board` from the config.
    pub board: Option<String>,
    /// `--boards-dir`: extra or overriding board files.
    pub boards_dir: Option<PathBuf>,
    /// `--config`; `None` uses `./imgbuild.toml` when it exists, else an empty config.
    pub config: Option<PathBuf>,
    /// How to obtain the base image (`--base`, hashes, `--offline`, …). Its `cache_dir` is the
    /// explicit `--cache-dir`; the default is resolved here.
    pub base: BaseRequest,
    /// `--preseed`: put the pinned Greengrass artifacts and first boot's .debs into the image.
    pub preseed: bool,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Artifact base name; default `imgbuild-BOARD`.
    pub name: Option<String>,
    /// Output compression.
    pub compress: Compress,
    /// Timestamp of everything written; `None` means now.
    pub epoch: Option<i64>,
    /// The user's umask as returned by [`crate::secrets::private_umask`].
    pub umask: u32,
}

/// Everything a build needs, resolved once (see the module documentation).
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The board.
    pub board: Board,
    /// The validated config.
    pub config: Config,
    /// What to write, from the config and the files it names (image-independent part; the
    /// pipeline completes it against the base, see [`crate::writes`]).
    pub plan: Plan,
    /// The base image, verified.
    pub base: ResolvedBase,
    /// A cached raw (decompressed) copy of the base, used instead of decompressing it again.
    pub raw_base: Option<PathBuf>,
    /// The cache directory (downloads, raw bases, chunks, verdicts, .debs); `None` when no
    /// cache can be used (no `HOME`): then every chunk is compressed.
    pub cache_dir: Option<PathBuf>,
    /// `--preseed`: first boot's packages, resolved against the image into .debs.
    pub preseed_debs: Option<PreseedDebs>,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Artifact base name (`NAME.img.xz`).
    pub name: String,
    /// Output compression.
    pub compress: Compress,
    /// Timestamp for everything written and the manifest.
    pub epoch: i64,
    /// The user's umask: outputs of an image without secrets get `0666 & !umask`.
    pub umask: u32,
    /// `[image]`: how to grow the image, if at all.
    pub growth: Option<crate::config::Growth>,
    /// Warnings for the user (e.g. a claim certificate that expires soon).
    pub warnings: Vec<String>,
}

/// What `--preseed` downloads as .debs.
#[derive(Debug, Clone)]
pub struct PreseedDebs {
    /// Package names first boot installs.
    pub packages: Vec<String>,
    /// Cache of apt lists and .debs.
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
}

impl BuildSpec {
    /// Resolves `opts`: loads the config and the board, builds the plan (claim material checked,
    /// templates rendered), fetches what `--preseed` needs, then resolves and verifies the base
    /// and makes (or reuses) its raw copy in the cache; `progress` shows the decompression.
    pub fn resolve(opts: &BuildOptions, progress: &dyn Progress) -> Result<BuildSpec> {
        let (config, config_dir) = load_config(opts.config.as_deref())?;
        let board = board::find(&board_name(opts, &config)?, opts.boards_dir.as_deref())?;
        let epoch = opts.epoch.unwrap_or_else(now);
        let cache = base::cache_dir(opts.base.cache_dir.as_deref());
        let offline = opts.base.offline;
        // Only `--preseed` needs a cache; elsewhere its absence only disables the caches.
        let need_cache = || match &cache {
            Ok(dir) => Ok(dir.clone()),
            Err(e) => Err(Error::msg(e.message())),
        };

        let growth = config.growth()?;
        let mut plan = plan::make(&config, &config_dir)?;
        let mut warnings = Vec::new();
        let mut preseed_debs = None;
        match (&config.greengrass, opts.preseed) {
            (Some(gg), preseed) => {
                let artifacts = match preseed {
                    true => payload::fetch_greengrass_artifacts(
                        gg,
                        &need_cache()?,
                        offline,
                        &opts.base.progress,
                    )?,
                    false => payload::Preseed::default(),
                };
                warnings =
                    payload::add_greengrass(&mut plan, gg, &board, &config_dir, epoch, &artifacts)?;
                if preseed {
                    preseed_debs = Some(PreseedDebs {
                        packages: payload::firstboot_packages(gg),
                        cache_dir: need_cache()?.join("debs"),
                        offline,
                    });
                }
            }
            (None, true) => crate::bail!("--preseed needs a [greengrass] section in the config"),
            (None, false) => {}
        }

        let cache_dir = cache.ok();
        if let Some(dir) = &cache_dir {
            sweep_dead_scratch(dir);
        }
        let base_req = BaseRequest {
            cache_dir: cache_dir.clone(),
            boards_dir: opts.boards_dir.clone(),
            ..opts.base.clone()
        };
        let mut base = base::resolve(&board, &base_req)?;
        crate::crashpoint::hit("base-resolved");
        progress.start("decompress", 0);
        let raw = base::cached_raw(&mut base, cache_dir.as_deref(), &|p| {
            progress.set(p);
            if p > 0 {
                crate::crashpoint::hit("decompressing");
            }
        });
        progress.finish();
        let raw_base = raw?;
        crate::crashpoint::hit("raw-cached");
        Ok(BuildSpec {
            name: opts
                .name
                .clone()
                .unwrap_or_else(|| format!("imgbuild-{}", board.name)),
            board,
            config,
            plan,
            base,
            raw_base,
            cache_dir,
            preseed_debs,
            out_dir: opts.out_dir.clone(),
            compress: opts.compress,
            epoch,
            umask: opts.umask,
            growth,
            warnings,
        })
    }
}

/// The config and the directory its relative paths are resolved against.
fn load_config(explicit: Option<&Path>) -> Result<(Config, PathBuf)> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("imgbuild.toml")).filter(|p| p.exists()),
    };
    let Some(path) = path else {
        return Ok((Config::default(), PathBuf::from(".")));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((Config::load(&path)?, dir))
}

/// `--board`, or `board` from the config; both given must agree.
fn board_name(opts: &BuildOptions, config: &Config) -> Result<String> {
    match (&opts.board, &config.board) {
        (Some(a), Some(c)) if a != c => {
            crate::bail!("--board {a} disagrees with board = \"{c}\" in the config; drop one")
        }
        (Some(a), _) => Ok(a.clone()),
        (None, Some(c)) => Ok(c.clone()),
        (None, None) => crate::bail!(
            "no board given: pass --board NAME (see `imgbuild boards`) or set board in the config"
        ),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Scratch files of builds that were killed (e.g. a half-decompressed base) go first.
fn sweep_dead_scratch(cache_dir: &Path) {
    if let Ok(swept) = imgbuild_fetch::Cache::open(cache_dir).and_then(|c| c.sweep_scratch()) {
        for p in swept {
            tracing::info!(path = %p.display(), "removed a dead build's scratch file");
        }
    }
}
