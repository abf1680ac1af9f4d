//! Decompression of the base image into a sparse working copy.
//!
//! The base file is only ever opened read-only. The format is recognised by magic bytes, never
//! by file name. Output is written in 1 MiB chunks; 4 KiB blocks of zeros become holes, so a
//! mostly empty multi-GiB image takes little disk space. The output appears under its final
//! name only when complete: it is written to `DST.part` and renamed, and removed on any error.

use crate::bail;
use crate::error::{Context, Error, Result};
use serde::Serialize;
use std::cell::Cell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// How a base image is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// xz (one or more concatenated streams), decoded multi-threaded.
    Xz,
    /// gzip (one or more members).
    Gzip,
    /// Zstandard (one or more frames).
    Zstd,
    /// A zip archive holding exactly one file.
    Zip,
    /// Not compressed (or not recognised): used as is.
    Raw,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Zip => "zip",
            Compression::Raw => "raw",
        })
    }
}

const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: &[u8] = &[0x1F, 0x8B];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xB5, 0x2F, 0xFD];
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const ZIP_EMPTY_MAGIC: &[u8] = b"PK\x05\x06";
const BZIP2_MAGIC: &[u8] = b"BZh";
const QCOW_MAGIC: &[u8] = b"QFI\xFB";
const SEVEN_ZIP_MAGIC: &[u8] = &[b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C];

/// Output chunk size: the unit of reads from the decoder, zero checks and progress reports.
const CHUNK: usize = 1 << 20;
/// Largest piece copied by one `copy_file_range` call: the unit of progress reports there.
const KERNEL_COPY_PIECE: usize = 64 << 20;
/// Granularity of holes in the output.
const BLOCK: usize = 4096;
/// Memory the multi-threaded xz decoder may use before it falls back to fewer threads.
const XZ_THREADING_MEMLIMIT: u64 = 1 << 30;

/// Recognises the compression of `path` by its first bytes. Formats imgbuild cannot read
/// (bzip2, qcow2, 7-Zip) are an error saying how to convert them.
pub fn detect(path: &Path) -> Result<Compression> {
    let mut head = Vec::with_capacity(8);
    File::open(path)
        .and_then(|f| f.take(8).read_to_end(&mut head))
        .context(|| format!("{}: cannot read", path.display()))?;
    let unsupported = |what: &str, how: &str| {
        Error::msg(format!(
            "{}: {what} is not supported - {how} and pass the result",
            path.display()
        ))
    };
    Ok(match head.as_slice() {
        h if h.starts_with(XZ_MAGIC) => Compression::Xz,
        h if h.starts_with(GZIP_MAGIC) => Compression::Gzip,
        h if h.starts_with(ZSTD_MAGIC) || is_zstd_skippable(h) => Compression::Zstd,
        h if h.starts_with(ZIP_MAGIC) || h.starts_with(ZIP_EMPTY_MAGIC) => Compression::Zip,
        h if h.starts_with(BZIP2_MAGIC) && h.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) => {
            return Err(unsupported(
                "a bzip2-compressed image",
                "decompress it with `bunzip2 -k`",
            ))
        }
        h if h.starts_with(QCOW_MAGIC) => {
            return Err(unsupported(
                "a qcow2 image",
                "convert it with `qemu-img convert -O raw`",
            ))
        }
        h if h.starts_with(SEVEN_ZIP_MAGIC) => {
            return Err(unsupported("a 7-Zip archive", "extract it with `7z x`"))
        }
        _ => Compression::Raw,
    })
}

/// Zstandard skippable frames start with 0x184D2A50..=0x184D2A5F (little endian).
fn is_zstd_skippable(h: &[u8]) -> bool {
    h.len() >= 4 && h[0] & 0xF0 == 0x50 && h[1..4] == [0x2A, 0x4D, 0x18]
}

/// Decompresses (or copies) `src` into a sparse `dst` and returns the raw image size.
///
/// `progress` is called with the number of bytes written so far after every 1 MiB. `src` is
/// opened read-only and must not be `dst`. On error nothing is left at `dst` (nor `DST.part`).
pub fn decompress_to_sparse(src: &Path, dst: &Path, progress: &dyn Fn(u64)) -> Result<u64> {
    let kind = detect(src)?;
    write_atomically(src, dst, |input, out| {
        decode(kind, src, input, out, progress)
    })
}

/// Copies `src`, a raw image whose data extents hold no zero blocks (one that
/// [`decompress_to_sparse`] wrote, such as the cached raw copy of a base), to `dst`: only its
/// data extents, copied by the kernel (`copy_file_range`), which shares them instead on
/// copy-on-write file systems (btrfs, XFS). Where the kernel cannot, it copies like
/// [`decompress_to_sparse`]. Same progress and clean-up contract.
pub fn copy_sparse_image(src: &Path, dst: &Path, progress: &dyn Fn(u64)) -> Result<u64> {
    write_atomically(src, dst, |input, out| {
        let len = input
            .metadata()
            .context(|| format!("{}: cannot stat", src.display()))?
            .len();
        copy_raw_sparse(src, &input, len, out, true, progress)
    })
}

/// Writes `dst` from `src` with `fill` through `DST.part`, renamed into place once complete;
/// on error nothing is left at `dst` nor at `DST.part`.
fn write_atomically(
    src: &Path,
    dst: &Path,
    fill: impl FnOnce(File, &mut File) -> Result<u64>,
) -> Result<u64> {
    let input = File::open(src).context(|| format!("{}: cannot open", src.display()))?;
    refuse_same_file(src, &input, dst)?;
    let part = part_path(dst);
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&part)
        .context(|| format!("{}: cannot create", part.display()))?;
    // No fsync: this is a working copy, rebuilt from the base after a crash; the rename only
    // keeps an interrupted run from leaving a plausible-looking image under the final name.
    let result = fill(input, &mut out).and_then(|size| {
        drop(out);
        std::fs::rename(&part, dst)
            .context(|| format!("cannot rename {} to {}", part.display(), dst.display()))?;
        Ok(size)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// `DST.part`: where the output is written until it is complete.
fn part_path(dst: &Path) -> PathBuf {
    let mut name = dst.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

fn refuse_same_file(src: &Path, input: &File, dst: &Path) -> Result<()> {
    let src_meta = input
        .metadata()
        .context(|| format!("{}: cannot stat", src.display()))?;
    if let Ok(dst_meta) = std::fs::metadata(dst) {
        if dst_meta.dev() == src_meta.dev() && dst_meta.ino() == src_meta.ino() {
            bail!(
                "{}: the output would overwrite the base image - choose another output path",
                dst.display()
            );
        }
    }
    Ok(())
}

/// Why a copy stopped: the decoder failed (with the output position) or the output did.
enum Failure {
    Read(io::Error, u64),
    Write(io::Error),
}

/// Counts the bytes read from the compressed file, for error messages.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn decode(
    kind: Compression,
    src: &Path,
    input: File,
    out: &mut File,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    let input_len = input.metadata().map(|m| m.len()).unwrap_or(0);
    if kind == Compression::Zip {
        return decode_zip(src, input, out, progress);
    }
    if kind == Compression::Raw {
        return copy_raw_sparse(src, &input, input_len, out, false, progress);
    }
    let count = Rc::new(Cell::new(0));
    let counted = Counting {
        inner: input,
        count: Rc::clone(&count),
    };
    let mut reader: Box<dyn Read> = match kind {
        Compression::Xz => Box::new(
            XzStreams::new(BufReader::with_capacity(CHUNK, counted))
                .context(|| format!("{}: cannot start the xz decoder", src.display()))?,
        ),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(counted)
                .context(|| format!("{}: cannot start the zstd decoder", src.display()))?,
        ),
        Compression::Zip | Compression::Raw => Box::new(counted),
    };
    copy_sparse(&mut reader, out, progress).map_err(|failure| match failure {
        Failure::Read(e, written) => Error::msg(format!(
            "{}: {kind} stream is corrupt or truncated at byte {} of {input_len} \
             (after {written} bytes of output): {e}",
            src.display(),
            count.get()
        )),
        Failure::Write(e) => write_error(e),
    })
}

fn write_error(e: io::Error) -> Error {
    Error::msg(format!(
        "cannot write the decompressed image: {e} - is there enough free space?"
    ))
}

/// A zip archive must hold exactly one file (directories are ignored): the image.
fn decode_zip(src: &Path, input: File, out: &mut File, progress: &dyn Fn(u64)) -> Result<u64> {
    let mut archive = zip::ZipArchive::new(BufReader::new(input))
        .context(|| format!("{}: not a readable zip archive", src.display()))?;
    let files: Vec<String> = archive
        .file_names()
        .filter(|n| !n.ends_with('/'))
        .map(str::to_string)
        .collect();
    let name = match files.as_slice() {
        [one] => one.clone(),
        [] => bail!("{}: the zip archive holds no file", src.display()),
        many => bail!(
            "{}: the zip archive holds {} files ({}); expected exactly one disk image",
            src.display(),
            many.len(),
            many.join(", ")
        ),
    };
    let mut entry = archive
        .by_name(&name)
        .context(|| format!("{}: cannot read zip entry {name}", src.display()))?;
    copy_sparse(&mut entry, out, progress).map_err(|failure| match failure {
        Failure::Read(e, written) => Error::msg(format!(
            "{}: zip entry {name} is corrupt or truncated (after {written} bytes of output): {e}",
            src.display()
        )),
        Failure::Write(e) => write_error(e),
    })
}

/// Copies a raw image like `cp --sparse=always`: only the data extents of `input` are read
/// (found with SEEK_DATA/SEEK_HOLE), and zero blocks inside them are left as holes too. With
/// `in_kernel` (for inputs whose data extents hold no zero blocks) the extents are copied with
/// `copy_file_range` instead, as long as the kernel supports it for these two files.
fn copy_raw_sparse(
    src: &Path,
    input: &File,
    len: u64,
    out: &mut File,
    mut in_kernel: bool,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    use rustix::fs::{seek, SeekFrom};
    let read_err = |e: io::Error, at: u64| {
        Error::msg(format!("{}: cannot read at byte {at}: {e}", src.display()))
    };
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut reported = 0u64;
    while pos < len {
        let data = match seek(input, SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            // no SEEK_DATA support: treat everything as data
            Err(_) => pos,
        };
        let end = match seek(input, SeekFrom::Hole(data)) {
            Ok(h) if h > data => h.min(len),
            _ => len,
        };
        let mut at = data;
        if in_kernel && data < end {
            match copy_in_kernel(input, out, at, end, progress) {
                Ok(copied) => at = copied,
                Err(KernelCopy::Unsupported(copied)) => {
                    at = copied;
                    in_kernel = false;
                }
                Err(KernelCopy::Failed(e, copied)) => {
                    return Err(Error::msg(format!(
                    "{}: cannot copy it from byte {copied} on: {e} - is there enough free space?",
                    src.display()
                )))
                }
            }
            reported = at;
        }
        while at < end {
            let n = usize::try_from(end - at).map_or(CHUNK, |left| left.min(CHUNK));
            input
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| read_err(e, at))?;
            write_nonzero_runs(out, &buf[..n], at).map_err(write_error)?;
            at += n as u64;
            progress(at);
            reported = at;
        }
        pos = end.max(data);
        if data >= len {
            break;
        }
    }
    out.set_len(len).map_err(write_error)?;
    if reported < len {
        progress(len);
    }
    Ok(len)
}

/// Why an in-kernel copy stopped early, with the position reached.
enum KernelCopy {
    /// The kernel cannot copy between these files (other file systems, old kernel): copy
    /// through user space from the position reached.
    Unsupported(u64),
    /// A real I/O error.
    Failed(io::Error, u64),
}

/// Copies `[from, to)` of `input` to the same offsets of `out` with `copy_file_range`, in
/// pieces of [`KERNEL_COPY_PIECE`] (a progress report each). Returns `to`.
fn copy_in_kernel(
    input: &File,
    out: &File,
    from: u64,
    to: u64,
    progress: &dyn Fn(u64),
) -> std::result::Result<u64, KernelCopy> {
    use rustix::io::Errno;
    let mut at = from;
    while at < to {
        let want =
            usize::try_from(to - at).map_or(KERNEL_COPY_PIECE, |left| left.min(KERNEL_COPY_PIECE));
        let (mut off_in, mut off_out) = (at, at);
        match rustix::fs::copy_file_range(input, Some(&mut off_in), out, Some(&mut off_out), want) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended early");
                return Err(KernelCopy::Failed(e, at));
            }
            Ok(n) => at += n as u64,
            Err(Errno::INTR) => continue,
            Err(Errno::XDEV | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP | Errno::PERM) => {
                return Err(KernelCopy::Unsupported(at))
            }
            Err(e) => return Err(KernelCopy::Failed(e.into(), at)),
        }
        progress(at);
    }
    Ok(to)
}

/// Reads `reader` to its end, writing non-zero 4 KiB blocks to `out` and leaving holes for
/// zero blocks; sets the final length. Returns the number of bytes produced.
fn copy_sparse(
    reader: &mut dyn Read,
    out: &mut File,
    progress: &dyn Fn(u64),
) -> Result<u64, Failure> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let n = fill(reader, &mut buf).map_err(|e| Failure::Read(e, pos))?;
        write_nonzero_runs(out, &buf[..n], pos).map_err(Failure::Write)?;
        pos += n as u64;
        if n > 0 {
            progress(pos);
        }
        if n < buf.len() {
            break;
        }
    }
    out.set_len(pos).map_err(Failure::Write)?;
    Ok(pos)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn is_zero(block: &[u8]) -> bool {
    // Folding without early exit vectorises well; blocks are small.
    block.iter().fold(0u8, |acc, b| acc | b) == 0
}

/// Writes each run of consecutive non-zero blocks of `data` (which starts at `offset`).
fn write_nonzero_runs(out: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, block) in data.chunks(BLOCK).enumerate() {
        let at = i * BLOCK;
        match (is_zero(block), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                out.write_all_at(&data[start..at], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        out.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}

/// Decodes every concatenated xz stream of the input with liblzma's multi-threaded decoder
/// (which decodes only one stream), skipping the zero padding allowed between streams.
struct XzStreams<R: BufRead> {
    decoder: Option<liblzma::bufread::XzDecoder<R>>,
}

impl<R: BufRead> XzStreams<R> {
    fn new(input: R) -> io::Result<Self> {
        Ok(XzStreams {
            decoder: Some(Self::decoder(input)?),
        })
    }

    /// A multi-threaded decoder for one stream (single-threaded if threads are unavailable).
    fn decoder(input: R) -> io::Result<liblzma::bufread::XzDecoder<R>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(16));
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(threads as u32)
            .memlimit_threading(XZ_THREADING_MEMLIMIT)
            .memlimit_stop(u64::MAX)
            .decoder()
            .or_else(|_| liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0))
            .map_err(io::Error::other)?;
        Ok(liblzma::bufread::XzDecoder::new_stream(input, stream))
    }

    /// Skips stream padding; `true` if another stream follows.
    fn next_stream(input: &mut R) -> io::Result<bool> {
        loop {
            let available = input.fill_buf()?;
            if available.is_empty() {
                return Ok(false);
            }
            let zeros = available.iter().take_while(|&&b| b == 0).count();
            let more = zeros < available.len();
            input.consume(zeros);
            if more {
                return Ok(true);
            }
        }
    }
}

impl<R: BufRead> Read for XzStreams<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of this stream: continue with the next one, if any.
            let Some(decoder) = self.decoder.take() else {
                return Ok(0);
            };
            let mut input = decoder.into_inner();
            if Self::next_stream(&mut input)? {
                self.decoder = Some(Self::decoder(input)?);
            }
        }
    }
}
