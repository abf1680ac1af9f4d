//! `imgbuild`: the command-line layer over `imgbuild-core`. It parses arguments, draws progress
//! bars and prints results; every stage of the work lives in the library.

mod progress;

use clap::{Args, Parser, Subcommand, ValueEnum};
use imgbuild_core::board::{self, Board};
use imgbuild_core::config::Config;
use imgbuild_core::pack::Compress;
use imgbuild_core::pipeline::{self, BuildRequest};
use imgbuild_core::{bail, inspect, plan, Error, Result};
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
    /// The base image: a local file (xz, gz, zstd, zip or raw).
    #[arg(long)]
    base: Option<PathBuf>,
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
        .init();
}

fn run(cli: Cli) -> Result<()> {
    let boards_dir = cli.global.boards_dir.as_deref();
    match cli.command {
        Some(Command::Build(args)) => build(&args, boards_dir),
        None => build(&cli.build, boards_dir),
        Some(Command::Boards { json }) => list_boards(boards_dir, json),
        Some(Command::Inspect { image, json }) => inspect_image(&image, json),
    }
}

fn list_boards(dir: Option<&Path>, json: bool) -> Result<()> {
    let all = board::load_all(dir)?;
    if json {
        let v: Vec<&Board> = all.values().collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::msg(e.to_string()))?
        );
        return Ok(());
    }
    for b in all.values() {
        let size = b
            .base
            .size
            .map(|s| format!("{:.0} MiB", s as f64 / 1048576.0))
            .unwrap_or_else(|| "size ?".into());
        let pinned = if b.base.sha256.is_empty() {
            "sha256 not pinned"
        } else {
            "sha256 pinned"
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
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::msg(e.to_string()))?
        );
    } else {
        print!("{}", inspect::render(&report));
    }
    Ok(())
}

fn build(args: &BuildArgs, boards_dir: Option<&Path>) -> Result<()> {
    let config_path = match &args.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from("imgbuild.toml")).filter(|p| p.exists()),
    };
    let (config, config_dir) = match &config_path {
        Some(p) => (
            Config::load(p)?,
            p.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (Config::default(), PathBuf::from(".")),
    };
    let config_dir = if config_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        config_dir
    };
    let board_name = match (&args.board, &config.board) {
        (Some(a), Some(c)) if a != c => {
            bail!("--board {a} disagrees with board = \"{c}\" in the config; drop one")
        }
        (Some(a), _) => a.clone(),
        (None, Some(c)) => c.clone(),
        (None, None) => bail!(
            "no board given: pass --board NAME (see `imgbuild boards`) or set board in the config"
        ),
    };
    let board = board::find(&board_name, boards_dir)?;
    let plan = plan::make(&config, &config_dir)?;
    let Some(base) = &args.base else {
        bail!("no base image given: pass --base FILE (downloading {} is not built into this binary yet)", board.base.url);
    };
    let epoch = match args.source_date_epoch {
        Some(e) => e,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let progress = progress::Bars::new();
    let req = BuildRequest {
        board: &board,
        config: &config,
        plan: &plan,
        base,
        base_origin: base.display().to_string(),
        base_sha256: None,
        insecure_no_verify: false,
        out_dir: &args.out,
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("imgbuild-{}", board.name)),
        compress: match args.compress {
            CompressArg::Xz => Compress::Xz {
                level: args.xz_level,
            },
            CompressArg::None => Compress::None,
        },
        epoch,
        progress: &progress,
    };
    let summary = pipeline::build(&req)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).map_err(|e| Error::msg(e.to_string()))?
        );
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
    }
    Ok(())
}
