//! A small command line over imgbuild-pack, for the benchmark script and manual checks.
//!
//! ```text
//! xzpack compress RAW OUT [--cache DIR] [--preset N] [--chunk-size BYTES] [--threads N]
//!                         [--index INDEX.json --dirty OFFSET:LEN ...]
//! xzpack index RAW OUT.json [--chunk-size BYTES]
//! xzpack bmap RAW OUT [--block-size BYTES]
//! ```
//! Statistics are printed to stderr as one line of `key=value` pairs.

use imgbuild_pack::{
    compress_xz, write_bmap, ChunkCache, ChunkIndex, DirtyMap, Error, Result, XzOptions,
    DEFAULT_CHUNK_SIZE,
};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: xzpack compress RAW OUT [--cache DIR] [--preset N] [--chunk-size BYTES] \
[--threads N] [--index INDEX.json --dirty OFFSET:LEN ...] | xzpack index RAW OUT.json [--chunk-size BYTES] \
| xzpack bmap RAW OUT [--block-size BYTES]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xzpack: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed command line: the command, two paths and the `--flag value` options.
struct Args<'a> {
    command: &'a str,
    input: &'a Path,
    output: &'a Path,
    flags: Vec<(&'a str, &'a str)>,
}

impl<'a> Args<'a> {
    fn parse(args: &'a [String]) -> Result<Args<'a>> {
        let [command, input, output, rest @ ..] = args else {
            return Err(Error::InvalidInput(USAGE.into()));
        };
        if rest.len() % 2 != 0 {
            return Err(Error::InvalidInput(format!(
                "option {:?} has no value; {USAGE}",
                rest[rest.len() - 1]
            )));
        }
        let flags = rest
            .chunks(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        Ok(Args {
            command,
            input: Path::new(input),
            output: Path::new(output),
            flags,
        })
    }

    /// The value of the last `--name`, if given.
    fn value(&self, name: &str) -> Option<&'a str> {
        self.flags
            .iter()
            .rev()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
    }

    /// The value of `--name` as a number, or `default`.
    fn number(&self, name: &str, default: u64) -> Result<u64> {
        match self.value(name) {
            Some(v) => v
                .parse()
                .map_err(|_| Error::InvalidInput(format!("{name} {v:?} is not a number"))),
            None => Ok(default),
        }
    }

    fn check_known(&self, known: &[&str]) -> Result<()> {
        match self.flags.iter().find(|(k, _)| !known.contains(k)) {
            Some((k, _)) => Err(Error::InvalidInput(format!(
                "unknown option {k:?} for {}; {USAGE}",
                self.command
            ))),
            None => Ok(()),
        }
    }
}

fn run(raw_args: &[String]) -> Result<()> {
    let args = Args::parse(raw_args)?;
    match args.command {
        "compress" => compress(&args),
        "index" => {
            args.check_known(&["--chunk-size"])?;
            let index =
                ChunkIndex::compute(args.input, args.number("--chunk-size", DEFAULT_CHUNK_SIZE)?)?;
            std::fs::write(args.output, index.to_json())
                .map_err(|source| io_error("writing", args.output, source))?;
            eprintln!("chunks={}", index.hashes.len());
            Ok(())
        }
        "bmap" => {
            args.check_known(&["--block-size"])?;
            let s = write_bmap(args.input, args.output, args.number("--block-size", 4096)?)?;
            eprintln!(
                "blocks={} mapped_blocks={} ranges={}",
                s.blocks,
                s.mapped_blocks,
                s.ranges.len()
            );
            Ok(())
        }
        other => Err(Error::InvalidInput(format!(
            "unknown command {other:?}; {USAGE}"
        ))),
    }
}

fn compress(args: &Args) -> Result<()> {
    args.check_known(&[
        "--cache",
        "--preset",
        "--chunk-size",
        "--threads",
        "--index",
        "--dirty",
    ])?;
    let opts = XzOptions {
        preset: args.number("--preset", 6)? as u32,
        chunk_size: args.number("--chunk-size", DEFAULT_CHUNK_SIZE)?,
        threads: args.number("--threads", 0)? as usize,
        ..XzOptions::default()
    };
    let cache = args
        .value("--cache")
        .map(|d| ChunkCache::new(PathBuf::from(d)))
        .transpose()?;
    let dirty = match args.value("--index") {
        Some(path) => Some(dirty_map(path, args)?),
        None => None,
    };
    let file =
        File::create(args.output).map_err(|source| io_error("creating", args.output, source))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let s = compress_xz(args.input, &mut out, &opts, cache.as_ref(), dirty.as_ref())?;
    eprintln!(
        "chunks={} raw_bytes={} xz_bytes={} threads={} zero_chunks={} read_chunks={} hashed_chunks={} \
         reused_hashes={} cache_hits={} compressed_chunks={}",
        s.chunks,
        s.raw_bytes,
        s.xz_bytes,
        s.threads,
        s.zero_chunks,
        s.read_chunks,
        s.hashed_chunks,
        s.reused_hashes,
        s.cache_hits,
        s.compressed_chunks
    );
    Ok(())
}

/// A dirty map from `--index FILE` and every `--dirty OFFSET:LEN`.
fn dirty_map(index_path: &str, args: &Args) -> Result<DirtyMap> {
    let text = std::fs::read_to_string(index_path)
        .map_err(|source| io_error("reading chunk index", Path::new(index_path), source))?;
    let index = ChunkIndex::from_json(&text)
        .map_err(|e| e.context(format!("reading chunk index {index_path}")))?;
    let mut map = DirtyMap::new(index);
    for (_, range) in args.flags.iter().filter(|(k, _)| *k == "--dirty") {
        let parsed = range
            .split_once(':')
            .and_then(|(o, l)| Some((o.parse().ok()?, l.parse().ok()?)));
        let Some((offset, len)) = parsed else {
            return Err(Error::InvalidInput(format!(
                "--dirty {range:?} is not OFFSET:LEN in bytes"
            )));
        };
        map.mark(offset, len);
    }
    Ok(map)
}

/// An I/O error on `path` while `doing`.
fn io_error(doing: &str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        doing: doing.into(),
        path: path.to_path_buf(),
        source,
    }
}
