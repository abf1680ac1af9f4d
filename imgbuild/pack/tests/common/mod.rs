//! Helpers shared by the integration tests: fixture images and the external oracles.
#![allow(dead_code)]

use imgbuild_pack::{compress_xz, ChunkCache, DirtyMap, XzOptions, XzStats};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Compressible pseudo-random bytes: words from a small vocabulary, mixed with some noise.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    const WORDS: [&[u8]; 8] = [
        b"lorem ",
        b"ipsum ",
        b"image ",
        b"greengrass ",
        b"\x00\x01\x02\x03",
        b"ext4 ",
        b"vfat\n",
        b"\xff\xfe",
    ];
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        if matches!(s % 5, 0) {
            out.push((s >> 8) as u8);
        } else {
            out.extend_from_slice(WORDS[(s % 8) as usize]);
        }
    }
    out.truncate(len);
    out
}

/// What to put at a place in a fixture image; everything not listed stays a hole.
pub enum Part {
    /// Data bytes from [`data`] with this seed.
    Data(u32),
    /// Zero bytes written explicitly (allocated, not a hole).
    Zeros,
}

/// Creates a sparse image of `len` bytes with `parts` (offset, length, what) written into it.
pub fn make_image(path: &Path, len: u64, parts: &[(u64, u64, Part)]) {
    let file = File::create(path).expect("create fixture image");
    file.set_len(len).expect("size fixture image");
    for (offset, size, part) in parts {
        let bytes = match part {
            Part::Data(seed) => data(*size as usize, *seed),
            Part::Zeros => vec![0; *size as usize],
        };
        file.write_all_at(&bytes, *offset)
            .expect("write fixture image");
    }
}

/// Overwrites `bytes` at `offset` of an existing file.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patching");
    file.write_all_at(bytes, offset).expect("patch");
}

/// The standard test image: 5 MiB + 12345 bytes with data, explicit zero runs and holes.
pub fn standard_image(path: &Path) -> u64 {
    const K: u64 = 1024;
    let len = 5 * K * K + 12_345;
    make_image(
        path,
        len,
        &[
            (0, 700 * K, Part::Data(1)),
            (700 * K, 600 * K, Part::Zeros),
            (2500 * K, 100 * K, Part::Data(2)),
            (3000 * K, 300 * K, Part::Data(1)),
            (len - 40_000, 40_000, Part::Data(3)),
        ],
    );
    len
}

/// Hex SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> String {
    sha256_hex(&fs::read(path).expect("read file to hash"))
}

/// Runs a command, feeding `stdin`, and returns its stdout; panics with its stderr on failure.
pub fn run(cmd: &str, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    // Feed stdin from another thread: the child may fill its stdout pipe before reading it all.
    let out = std::thread::scope(|s| {
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            s.spawn(move || pipe.write_all(input).expect("write stdin"));
        }
        child.wait_with_output().expect("wait")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Compresses `raw` into memory.
pub fn compress(
    raw: &Path,
    opts: &XzOptions,
    cache: Option<&ChunkCache>,
    dirty: Option<&DirtyMap>,
) -> (Vec<u8>, XzStats) {
    let mut out = Vec::new();
    let stats = compress_xz(raw, &mut out, opts, cache, dirty).expect("compress_xz");
    assert_eq!(stats.xz_bytes, out.len() as u64);
    (out, stats)
}

/// Fast options for tests: preset 1, small chunks, a few threads.
pub fn opts(chunk_size: u64) -> XzOptions {
    XzOptions {
        preset: 1,
        chunk_size,
        threads: 3,
        ..XzOptions::default()
    }
}

/// One block as `xz --robot -lvv` lists it.
#[derive(Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Uncompressed size.
    pub uncompressed: u64,
    /// Header flags column ("cu" when both sizes are in the header).
    pub flags: String,
}

/// The blocks of an .xz file, listed by `xz --robot -lvv` (which also validates the index).
pub fn xz_blocks(xz: &Path) -> Vec<BlockInfo> {
    let listing = run(
        "xz",
        &["--robot", "-lvv", xz.to_str().expect("utf-8 path")],
        None,
    );
    String::from_utf8_lossy(&listing)
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.first() == Some(&"block")).then(|| BlockInfo {
                uncompressed: f[7].parse().expect("UncompSize"),
                flags: f[12].to_string(),
            })
        })
        .collect()
}

/// Writes bytes to a fresh path in `dir` and returns it.
pub fn write_to(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).expect("write file");
    p
}

/// The number of chunks of `raw` that are entirely zero.
pub fn zero_chunks(raw: &Path, chunk_size: u64) -> u64 {
    fs::read(raw)
        .expect("read raw")
        .chunks(chunk_size as usize)
        .filter(|c| c.iter().all(|&b| b == 0))
        .count() as u64
}
