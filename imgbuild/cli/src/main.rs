//! `imgbuild`: the command-line layer over `imgbuild-core`. It parses arguments, draws progress
//! bars and prints results; every stage of the work lives in the library.

#[cfg(feature = "cloud")]
mod cloud;
mod progress;

use clap::{Args, Parser, Subcommand, ValueEnum};
use imgbuild_core::base::{self, BaseRequest};
use imgbuild_core::board::{self, Board};
use imgbuild_core::pack::Compress;
use imgbuild_core::pipeline;
use imgbuild_core::spec::{BuildOptions, BuildSpec};
use imgbuild_core::{inspect, Error, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Turn an official Arm64 Linux base image into a ready-to-flash image, without root.
///
/// With no subcommand, `imgbuild --board NAME ...` means `imgbuild build --board NAME ...`.
#[derive(Parser, Debug)]
#[command(
    name = "imgbuild",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
    #[command(flatten)]
    global: Global,
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
struct Global {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Directory with extra or overriding board files (`NAME.toml`).
    #[arg(long, global = true, env = "IMGBUILD_BOARDS_DIR")]
    boards_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build an image (the default command).
    Build(BuildArgs),
    /// List the known boards.
    Boards {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download, verify and cache a board's base image (no build).
    Fetch {
        /// Board name.
        #[arg(long)]
        board: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Show or clean the download cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Upload artifacts to S3 (multipart, resumable, SSE, sha256 metadata).
    #[cfg(feature = "cloud")]
    Upload(cloud::UploadArgs),
    /// The AWS side: claim certificate, provisioning parameters, device sync, deployments.
    #[cfg(feature = "cloud")]
    #[command(subcommand)]
    Cloud(cloud::CloudCommand),
    /// Show the partition table, file systems, labels and free space of a disk image.
    Inspect {
        /// A raw or compressed (xz, gz, zstd, zip) disk image.
        image: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// What `build` takes.
#[derive(Args, Debug, Clone, Default)]
struct BuildArgs {
    /// Board name (see `imgbuild boards`); defaults to `board` in the config.
    #[arg(long)]
    board: Option<String>,
    /// The base image: a local file (xz, gz, zstd, zip or raw) or an http(s) URL; default: the
    /// board's pinned download (fetched, verified and cached).
    #[arg(long)]
    base: Option<String>,
    /// Expected sha256 of --base (required for a URL unless --insecure-no-verify).
    #[arg(long)]
    base_sha256: Option<String>,
    /// Expected sha512 of --base, as publishers that list only SHA512SUMS give it (Debian's
    /// cloud images); checked together with --base-sha256 when both are given.
    #[arg(long)]
    base_sha512: Option<String>,
    #[command(flatten)]
    cache: CacheArgs,
    /// Allow a --base URL without a hash (recorded in manifest.json).
    #[arg(long)]
    insecure_no_verify: bool,
    /// Put the pinned Greengrass nucleus and plugin (and the arm64 .debs first boot installs)
    /// into the image, so first boot needs only the AWS IoT endpoints.
    #[arg(long)]
    preseed: bool,
    /// Config file (default: ./imgbuild.toml when it exists).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "dist")]
    out: PathBuf,
    /// Artifact name: NAME.img.xz, NAME.bmap (default imgbuild-BOARD).
    #[arg(long)]
    name: Option<String>,
    /// Output compression.
    #[arg(long, value_enum, default_value_t = CompressArg::Xz)]
    compress: CompressArg,
    /// xz preset level 0-9.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    xz_level: u32,
    /// Timestamp (seconds since 1970) for every file written; defaults to the build time.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    source_date_epoch: Option<i64>,
    /// Print the build summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// After a successful build, upload the image, its .sha256, .bmap and manifest.json to this
    /// S3 folder (multipart, server-side encrypted; credentials from the standard AWS chain).
    #[cfg(feature = "cloud")]
    #[arg(long, value_name = "s3://BUCKET/PREFIX/")]
    upload: Option<imgbuild_cloud::S3Location>,
}

/// Download cache options.
#[derive(Args, Debug, Clone, Default)]
struct CacheArgs {
    /// Download cache (default $XDG_CACHE_HOME/imgbuild).
    #[arg(long, env = "IMGBUILD_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Never touch the network: fail when something is not in the cache.
    #[arg(long)]
    offline: bool,
}

/// `imgbuild cache` subcommands.
#[derive(Subcommand, Debug)]
enum CacheCommand {
    /// List cached downloads, raw images, scratch files, locks, and chunk blocks, chunk
    /// indexes, remembered base hashes, base check verdicts and .debs (by kind).
    Ls {
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Remove cached entries (all downloads, or only those not pinned by a known board with
    /// --keep-pinned), with every chunk block, chunk index, remembered hash, verdict, .deb,
    /// unused lock and scratch file of a dead build.
    Prune {
        #[command(flatten)]
        cache: CacheArgs,
        /// Keep downloads (and their raw images) whose sha256 a board pins.
        #[arg(long)]
        keep_pinned: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CompressArg {
    /// Multi-block .xz (what balenaEtcher and Raspberry Pi Imager read).
    #[default]
    Xz,
    /// A sparse raw .img.
    None,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    let result = run(cli);
    // A signal arrived: its thread cleans up and exits 128 + signal; the build's own result
    // (possibly an error caused by that cleanup) is not reported.
    while imgbuild_core::scratch::interrupted() {
        std::thread::park();
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgbuild: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<ExitCode> {
    let boards_dir = cli.global.boards_dir.as_deref();
    match cli.command {
        Some(Command::Build(args)) => build(&args, boards_dir),
        None => build(&cli.build, boards_dir),
        Some(Command::Boards { json }) => list_boards(boards_dir, json),
        Some(Command::Inspect { image, json }) => inspect_image(&image, json),
        Some(Command::Fetch { board, cache }) => {
            let b = board::find(&board, boards_dir)?;
            let req = BaseRequest {
                cache_dir: cache.cache_dir.clone(),
                offline: cache.offline,
                progress: progress::Bars::reporter(),
                boards_dir: boards_dir.map(Path::to_path_buf),
                ..BaseRequest::default()
            };
            let got = base::resolve(&b, &req)?;
            println!("{}", got.path.display());
            Ok(())
        }
        Some(Command::Cache(cmd)) => cache_command(cmd, boards_dir),
        #[cfg(feature = "cloud")]
        Some(Command::Upload(args)) => args
            .run(progress::Bars::reporter())
            .map_err(|e| Error::msg(e.to_string())),
        #[cfg(feature = "cloud")]
        Some(Command::Cloud(cmd)) => return cloud_status(cmd),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `imgbuild cloud …`; an error that calls for a status other than 1 (`deploy --wait`:
/// 3 a device failed, 4 one timed out) is printed here and becomes the exit status.
#[cfg(feature = "cloud")]
fn cloud_status(cmd: cloud::CloudCommand) -> Result<ExitCode> {
    match cmd.run() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.exit_code() == 1 => Err(Error::msg(e.to_string())),
        Err(e) => {
            eprintln!("imgbuild: error: {e}");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

fn cache_command(cmd: CacheCommand, boards_dir: Option<&Path>) -> Result<()> {
    match cmd {
        CacheCommand::Ls { cache } => {
            let root = base::cache_dir(cache.cache_dir.as_deref())?;
            let c = imgbuild_fetch::Cache::open(&root)?;
            for e in c.ls()? {
                println!(
                    "{:<11} {:>14} {}  {}",
                    e.kind.name(),
                    e.size,
                    e.key,
                    e.url.as_deref().unwrap_or("")
                );
            }
            for f in c.ls_other()? {
                let kind = match (f.kind, f.live) {
                    ("scratch", false) => "scratch (writer gone)",
                    (kind, _) => kind,
                };
                println!("{:<11} {:>14} {}", kind, f.size, f.path.display());
            }
            for u in imgbuild_core::cachedir::usage(&root)? {
                println!("{:<11} {:>14} {} files", u.kind, u.bytes, u.files);
            }
            Ok(())
        }
        CacheCommand::Prune { cache, keep_pinned } => {
            let root = base::cache_dir(cache.cache_dir.as_deref())?;
            let c = imgbuild_fetch::Cache::open(&root)?;
            let pinned: Vec<String> = board::load_all(boards_dir)?
                .values()
                .filter_map(|b| match b.base.sha256.is_empty() {
                    false => Some(b.base.sha256.clone()),
                    true => c.sha256_of_sha512(&b.base.sha512),
                })
                .collect();
            let report = c.prune(|e| keep_pinned && pinned.contains(&e.key))?;
            let others = imgbuild_core::cachedir::prune(&root)?;
            let other_files: u64 = others.iter().map(|u| u.files).sum();
            let other_bytes: u64 = others.iter().map(|u| u.bytes).sum();
            println!(
                "removed {} entries and {} other files, freed {} bytes ({} busy)",
                report.removed.len(),
                report.other.len() as u64 + other_files,
                report.freed_bytes + other_bytes,
                report.busy.len()
            );
            Ok(())
        }
    }
}

fn list_boards(dir: Option<&Path>, json: bool) -> Result<()> {
    let all = board::load_all(dir)?;
    if json {
        let v: Vec<&Board> = all.values().collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for b in all.values() {
        let size = b
            .base
            .size
            .map(|s| format!("{:.0} MiB", s as f64 / 1048576.0))
            .unwrap_or_else(|| "size ?".into());
        let pinned = match (b.base.sha256.is_empty(), b.base.sha512.is_empty()) {
            (true, true) => "not pinned",
            (false, _) => "sha256 pinned",
            (true, false) => "sha512 pinned",
        };
        println!(
            "{:<14} {}\n{:<14} {} ({size}, {pinned})",
            b.name, b.description, "", b.base.url
        );
    }
    Ok(())
}

fn inspect_image(image: &Path, json: bool) -> Result<()> {
    let kind = imgbuild_core::source::detect(image)?;
    let tmp;
    let raw = if kind == imgbuild_core::source::Compression::Raw {
        image.to_path_buf()
    } else {
        tmp = tempfile::Builder::new()
            .prefix("imgbuild-inspect")
            .tempdir()
            .map_err(|e| Error::msg(format!("creating a temporary directory: {e}")))?;
        let p = tmp.path().join("image.raw");
        imgbuild_core::source::decompress_to_sparse(image, &p, &|_| {})?;
        p
    };
    let report = inspect::inspect(&raw).map_err(|e| e.context(image.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render(&report));
    }
    Ok(())
}

/// Uploads a build's artifacts (`build --upload`); returns the upload report lines.
#[cfg(feature = "cloud")]
fn upload_artifacts(
    summary: &pipeline::BuildSummary,
    to: &imgbuild_cloud::S3Location,
) -> Result<Vec<String>> {
    let upload = cloud::UploadArgs {
        files: vec![
            summary.image.path.clone(),
            summary.sha256_file.clone(),
            summary.bmap.clone(),
            summary.manifest.clone(),
        ],
        to: to.clone(),
        presign: None,
        jobs: imgbuild_cloud::upload::DEFAULT_JOBS,
    };
    upload
        .upload(progress::Bars::reporter())
        .map_err(|e| Error::msg(format!("--upload: {e}")))
}

fn build(args: &BuildArgs, boards_dir: Option<&Path>) -> Result<()> {
    // Everything a build creates is private (0600 files, 0700 directories: working copy,
    // temporary outputs, cache files); the user's umask decides the mode of the outputs of an
    // image that holds no secret.
    let umask = imgbuild_core::secrets::private_umask();
    install_signal_cleanup(base::cache_dir(args.cache.cache_dir.as_deref()).ok())?;
    #[cfg(feature = "cloud")]
    if let Some(to) = &args.upload {
        cloud::check_destination(to).map_err(|e| Error::msg(format!("--upload: {e}")))?;
    }
    let bars = progress::Bars::reporter();
    let opts = BuildOptions {
        board: args.board.clone(),
        boards_dir: boards_dir.map(Path::to_path_buf),
        config: args.config.clone(),
        base: BaseRequest {
            base: args.base.clone(),
            sha256: args.base_sha256.clone(),
            sha512: args.base_sha512.clone(),
            cache_dir: args.cache.cache_dir.clone(),
            offline: args.cache.offline,
            insecure_no_verify: args.insecure_no_verify,
            progress: bars.clone(),
            boards_dir: boards_dir.map(Path::to_path_buf),
        },
        preseed: args.preseed,
        out_dir: args.out.clone(),
        name: args.name.clone(),
        compress: match args.compress {
            CompressArg::Xz => Compress::Xz {
                level: args.xz_level,
            },
            CompressArg::None => Compress::None,
        },
        epoch: args.source_date_epoch,
        umask,
    };
    let spec = BuildSpec::resolve(&opts, &*bars)?;
    for w in &spec.warnings {
        eprintln!("imgbuild: warning: {w}");
    }
    let summary = pipeline::build(&spec, &*bars)?;
    #[cfg(feature = "cloud")]
    let uploaded = match &args.upload {
        Some(to) => upload_artifacts(&summary, to)?,
        None => Vec::new(),
    };
    #[cfg(not(feature = "cloud"))]
    let uploaded: Vec<String> = Vec::new();
    if args.json {
        let mut json = serde_json::to_value(&summary)?;
        if let Some(map) = json.as_object_mut().filter(|_| !uploaded.is_empty()) {
            map.insert("uploaded".into(), uploaded.into());
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "{} ({} bytes, sha256 {})\n{}\n{}\n{}\n{} entries written",
            summary.image.path.display(),
            summary.image.size,
            summary.image.sha256,
            summary.sha256_file.display(),
            summary.bmap.display(),
            summary.manifest.display(),
            summary.files_written
        );
        for line in &uploaded {
            println!("{line}");
        }
    }
    imgbuild_core::crashpoint::hit("summary-printed");
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP end a build cleanly: the handler only writes to a pipe
/// (signal-hook's self-pipe, async-signal-safe); this thread then removes the build's scratch
/// directory (working copy and temporary outputs; a publish in progress is finished first) and
/// this process's scratch files in `cache` (a half-decompressed base), and exits with 128 + the
/// signal number. Having a handler also makes SIGTERM work when imgbuild is PID 1 in a
/// container (the kernel drops signals PID 1 has no handler for).
fn install_signal_cleanup(cache: Option<PathBuf>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| Error::msg(format!("installing the signal handlers: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                imgbuild_core::scratch::abort();
                if let Some(dir) = &cache {
                    let _ = imgbuild_fetch::Cache::open(dir).and_then(|c| c.remove_own_scratch());
                }
                eprintln!("imgbuild: error: interrupted by signal {sig}; the build's temporary files are removed");
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| Error::msg(format!("starting the signal thread: {e}")))?;
    Ok(())
}
