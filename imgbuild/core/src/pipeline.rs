//! The whole build, stage by stage: plan → decompress → locate partitions → apply → pack.
//! Any error removes the working copy and every staged output; the base file is only read.

use crate::apply::{self, Span, Written};
use crate::board::{Board, FsType, Role, TableType};
use crate::config::Config;
use crate::disk::{self, FsKind, Table, TableKind};
use crate::error::{Context, Error, Result};
use crate::pack::{self, Artifact, Compress};
use crate::plan::Plan;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Receives progress of the long stages (decompress, compress); the CLI draws bars with it.
pub use imgbuild_progress::{NoProgress, Progress};

/// Everything a build needs.
pub struct BuildRequest<'a> {
    /// The board.
    pub board: &'a Board,
    /// The validated config.
    pub config: &'a Config,
    /// What to write (from [`crate::plan::make`] plus payloads).
    pub plan: &'a Plan,
    /// The base image file (compressed or raw); opened read-only.
    pub base: &'a Path,
    /// A cached raw (decompressed) copy of `base` made by [`crate::base::cached_raw`], used
    /// instead of decompressing it again; its data extents hold no zero blocks, so it is copied
    /// extent by extent in the kernel.
    pub raw_base: Option<&'a Path>,
    /// Where the base came from, for the manifest (URL or path).
    pub base_origin: String,
    /// sha256 of the base file when already known (verified by fetch); computed otherwise.
    pub base_sha256: Option<String>,
    /// True when the base was used without verification (`--insecure-no-verify`).
    pub insecure_no_verify: bool,
    /// Output directory (created if missing).
    pub out_dir: &'a Path,
    /// Artifact base name (`NAME.img.xz`).
    pub name: String,
    /// Output compression.
    pub compress: Compress,
    /// Timestamp for everything written and the manifest.
    pub epoch: i64,
    /// Progress sink.
    pub progress: &'a dyn Progress,
    /// `--preseed`: resolve these packages (with dependencies, against the image's dpkg status
    /// and Debian sources) into arm64 .debs under `/var/lib/imgbuild/preseed/debs/`.
    pub preseed_debs: Option<PreseedDebs>,
    /// Cache directory for compressed chunks: a rebuild on the same base recompresses only the
    /// chunks the apply stage wrote. `None` compresses everything.
    pub chunk_cache: Option<&'a Path>,
    /// The user's umask (as returned by [`crate::secrets::private_umask`]): outputs of an image
    /// without secrets get `0666 & !umask`; those of an image with one are always `0600`.
    pub umask: u32,
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

/// The `manifest.json` of a build.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// Version of imgbuild that made the image.
    pub imgbuild_version: String,
    /// Board name.
    pub board: String,
    /// The base image.
    pub base: BaseInfo,
    /// Timestamp used for every written file.
    pub source_date_epoch: i64,
    /// The image artifact.
    pub image: Artifact,
    /// Size of the raw (uncompressed) image.
    pub raw_size: u64,
    /// The partition table as read from the image.
    pub partition_table: Table,
    /// Every file, directory and link written.
    pub files: Vec<ManifestFile>,
}

/// One entry of the manifest's `files`: what was written, and whether it is secret (then it
/// carries no hash: a key's sha256 would let anyone holding the manifest confirm a guess).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestFile {
    /// What was written (`sha256` is `None` for a secret file).
    #[serde(flatten)]
    pub written: Written,
    /// True for a secret file (see [`crate::secrets`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// The base image as recorded in the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct BaseInfo {
    /// URL or path it came from.
    pub origin: String,
    /// sha256 of the (compressed) base file.
    pub sha256: String,
    /// True when `--insecure-no-verify` let an unpinned download through.
    pub insecure_no_verify: bool,
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    /// The image.
    pub image: Artifact,
    /// `NAME.img.xz.sha256` (or `NAME.img.sha256`).
    pub sha256_file: PathBuf,
    /// `NAME.bmap`.
    pub bmap: PathBuf,
    /// `manifest.json`.
    pub manifest: PathBuf,
    /// Number of entries written into the image.
    pub files_written: usize,
}

/// Removes the working copy when the build ends, unless it was moved into place.
struct WorkCopy(PathBuf);

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the build.
pub fn build(req: &BuildRequest) -> Result<BuildSummary> {
    if !req.out_dir.is_dir() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(req.out_dir)
            .and_then(|()| {
                let mode = 0o777 & !req.umask;
                std::fs::set_permissions(req.out_dir, std::fs::Permissions::from_mode(mode))
            })
            .context(|| format!("creating output directory {}", req.out_dir.display()))?;
    }
    let base_sha = match &req.base_sha256 {
        Some(s) => s.clone(),
        None => timed("base sha256", || pack::hash_base(req.base, req.chunk_cache))?,
    };
    let ext = match req.compress {
        Compress::Xz { .. } => "img.xz",
        Compress::None => "img",
    };
    let image_name = format!("{}.{ext}", req.name);
    let image_path = req.out_dir.join(&image_name);
    let sha_name = format!("{image_name}.sha256");
    let sha_path = req.out_dir.join(&sha_name);
    let bmap_name = format!("{}.bmap", req.name);
    let bmap_path = req.out_dir.join(&bmap_name);
    let manifest_path = req.out_dir.join("manifest.json");

    // Everything below lives in this build's private scratch directory until it is published
    // (see crate::scratch); an error or a signal removes it.
    let scratch = crate::scratch::Scratch::create(req.out_dir)?;
    crate::crashpoint::hit("scratch-created");
    let image_tmp = scratch.path("image.tmp");
    let sha_tmp = scratch.path("sha256.tmp");
    let bmap_tmp = scratch.path("bmap.tmp");
    let manifest_tmp = scratch.path("manifest.tmp");
    let work = WorkCopy(scratch.path("work.img"));
    let raw_size = timed("working copy", || decompress(req, &work.0))?;
    crate::crashpoint::hit("working-copy");
    let table = disk::read_table(&work.0)
        .map_err(|e| e.context(format_args!("base {}", req.base.display())))?;
    let boot = locate(&work.0, &table, req.board, Role::Boot).map_err(|e| base_err(req, e))?;
    let root = locate(&work.0, &table, req.board, Role::Root).map_err(|e| base_err(req, e))?;
    crate::crashpoint::hit("table-read");
    timed("base check", || {
        check_base(req, &work.0, &table, &base_sha, scratch.dir())
    })?;
    crate::crashpoint::hit("base-checked");

    let target = apply::Target {
        image: &work.0,
        board: req.board,
        boot,
        root,
        epoch: req.epoch,
    };
    let cfg = req.config;
    let mut incremental = match (req.chunk_cache, req.compress) {
        (Some(dir), Compress::Xz { .. }) => pack::Incremental::prepare(dir, &base_sha, &work.0)?,
        _ => None,
    };
    crate::crashpoint::hit("chunk-index");
    let with_debs;
    let plan = match &req.preseed_debs {
        Some(p) => {
            with_debs = add_preseed_debs(req.plan, p, &work.0, root.offset)?;
            &with_debs
        }
        None => req.plan,
    };
    crate::crashpoint::hit("patch-start");
    let applied = timed("patch", || {
        apply::apply(&target, plan, cfg.user.as_ref(), cfg.hostname.as_deref())
    })?;
    tracing::info!(
        files = applied.written.len(),
        dirty_ranges = applied.dirty.len(),
        "applied"
    );
    crate::crashpoint::hit("patch-done");
    let secrets = crate::secrets::secret_files(req.board, plan, &applied.written);
    let output_mode = match secrets.is_empty() {
        true => crate::secrets::public_mode(req.umask),
        false => 0o600,
    };

    let bmap = || {
        timed("bmap", || {
            imgbuild_pack::write_bmap(&work.0, &bmap_tmp, 4096)
                .map(|_| ())
                .map_err(|e| Error::msg(format!("writing {}: {e}", bmap_path.display())))
        })
    };
    req.progress.start("compress", raw_size);
    let (size, sha256) = match req.compress {
        Compress::None => {
            bmap()?;
            timed("compress", || {
                std::fs::rename(&work.0, &image_tmp)
                    .context(|| format!("moving the image to {}", image_tmp.display()))?;
                Ok((raw_size, pack::hash_file(&image_tmp)?))
            })?
        }
        xz => {
            if let Some(inc) = incremental.as_mut() {
                inc.mark(&applied.dirty);
                if !secrets.is_empty() {
                    let ranges = crate::secrets::secret_ranges(
                        &work.0,
                        root,
                        boot,
                        &secrets,
                        &applied.dirty,
                    );
                    inc.never_cache(&ranges);
                }
            }
            crate::crashpoint::hit("secrets-mapped");
            // The bmap is hashed while the image is compressed: a warm rebuild takes most
            // chunks from the cache and leaves cores free.
            std::thread::scope(|scope| {
                let bmapped = scope.spawn(bmap);
                let packed = timed("compress", || {
                    pack::write_image(&work.0, &image_tmp, xz, incremental.as_ref(), &|p| {
                        req.progress.set(p)
                    })
                });
                let bmapped = bmapped
                    .join()
                    .unwrap_or_else(|_| Err(Error::msg("writing the bmap: its thread panicked")));
                packed.and_then(|packed| bmapped.map(|()| packed))
            })?
        }
    };
    req.progress.finish();
    crate::crashpoint::hit("compressed");
    std::fs::write(&sha_tmp, pack::sha256sum_line(&sha256, &image_name))
        .context(|| format!("writing {}", sha_tmp.display()))?;
    crate::crashpoint::hit("sha256-written");
    let image = Artifact {
        path: image_path.clone(),
        size,
        sha256,
    };
    let manifest = Manifest {
        imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
        board: req.board.name.clone(),
        base: BaseInfo {
            origin: req.base_origin.clone(),
            sha256: base_sha,
            insecure_no_verify: req.insecure_no_verify,
        },
        source_date_epoch: req.epoch,
        image: Artifact {
            path: PathBuf::from(&image_name),
            ..image.clone()
        },
        raw_size,
        partition_table: table,
        files: applied
            .written
            .into_iter()
            .map(|mut w| {
                let secret = secrets
                    .iter()
                    .any(|s| s.partition == w.partition && s.path == w.path && w.kind == "file");
                if secret {
                    w.sha256 = None;
                }
                ManifestFile { written: w, secret }
            })
            .collect(),
    };
    let json = serde_json::to_string_pretty(&manifest).context(|| "serializing the manifest")?;
    std::fs::write(&manifest_tmp, json + "\n")
        .context(|| format!("writing {}", manifest_tmp.display()))?;
    crate::crashpoint::hit("manifest-written");
    for tmp in [&image_tmp, &sha_tmp, &bmap_tmp, &manifest_tmp] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(output_mode))
            .context(|| format!("setting the mode of {}", tmp.display()))?;
    }
    crate::crashpoint::hit("modes-set");
    drop(work);
    // Side files first, the image last.
    scratch.publish(&[
        ("bmap.tmp", &bmap_name),
        ("manifest.tmp", "manifest.json"),
        ("sha256.tmp", &sha_name),
        ("image.tmp", &image_name),
    ])?;
    Ok(BuildSummary {
        image,
        sha256_file: sha_path,
        bmap: bmap_path,
        manifest: manifest_path,
        files_written: manifest.files.len(),
    })
}

/// Runs one build stage and logs how long it took (shown with `-v`; the benchmark reads it).
fn timed<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let out = f()?;
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(stage, seconds = %format_args!("{seconds:.3}"), "stage done");
    Ok(out)
}

/// Resolves the pre-seeded .debs against the image's dpkg status and Debian sources, and
/// returns the plan with them added.
fn add_preseed_debs(plan: &Plan, p: &PreseedDebs, image: &Path, root_offset: u64) -> Result<Plan> {
    let fs = imgbuild_ext2fs::Fs::open(image, root_offset, false)
        .map_err(|e| Error::msg(format!("--preseed: root file system: {e}")))?;
    let read = |path: &str| -> Result<Option<Vec<u8>>> {
        match fs.stat(path) {
            Ok(Some(_)) => fs
                .read_file(path)
                .map(Some)
                .map_err(|e| Error::msg(format!("--preseed: {e}"))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::msg(format!("--preseed: {e}"))),
        }
    };
    let Some(status) = read("/var/lib/dpkg/status")? else {
        crate::bail!(
            "--preseed: the image has no /var/lib/dpkg/status, so its packages cannot be resolved"
        );
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let list = read("/etc/apt/sources.list")?.map(text);
    let mut parts = Vec::new();
    if let Ok(names) = fs.read_dir("/etc/apt/sources.list.d") {
        for n in names {
            if let Some(b) = read(&format!("/etc/apt/sources.list.d/{n}"))? {
                parts.push((n, text(b)));
            }
        }
    }
    drop(fs);
    // Only Debian's own archive: its key is on the host; vendor repositories (e.g. Raspberry
    // Pi's) are signed with keys that live only inside the image.
    let sources: String = crate::preseed::image_sources(list.as_deref(), &parts)
        .lines()
        .filter(|l| l.contains("debian.org"))
        .map(|l| format!("{l}\n"))
        .collect();
    if sources.is_empty() {
        crate::bail!("--preseed: the image's apt sources name no Debian archive (deb.debian.org) to resolve packages from");
    }
    let req = crate::preseed::DebRequest {
        packages: &p.packages,
        dpkg_status: &status,
        sources: &sources,
        arch: "arm64",
        cache_dir: &p.cache_dir,
        offline: p.offline,
    };
    let debs = crate::preseed::resolve_debs(&req)?;
    let mut plan = plan.clone();
    for d in debs {
        let data = std::fs::read(&d.path)
            .context(|| format!("--preseed: reading {}", d.path.display()))?;
        plan.file(
            &format!("{}/debs/{}", crate::payload::PRESEED_DIR, d.file_name),
            data,
            0o644,
            crate::config::OwnerSpec::root(),
            "--preseed",
        );
    }
    Ok(plan)
}

/// Refuses a base whose partitions overlap or whose boot/root file systems are not clean,
/// before anything is written (see [`crate::check`]); a clean verdict is remembered in the cache.
fn check_base(
    req: &BuildRequest,
    image: &Path,
    table: &Table,
    base_sha: &str,
    scratch_dir: &Path,
) -> Result<()> {
    let mut parts = Vec::new();
    for role in [Role::Boot, Role::Root] {
        let spec = req.board.partition(role);
        let Some(p) = table.partition(spec.index) else {
            continue;
        };
        parts.push(crate::check::PartCheck {
            index: p.index,
            role,
            family: match spec.fs {
                FsType::Vfat => crate::check::FsFamily::Fat,
                FsType::Ext4 => crate::check::FsFamily::Ext,
            },
            offset: p.start,
            size: p.size,
        });
    }
    let verdict = req.chunk_cache.map(|dir| crate::check::VerdictKey {
        cache_dir: dir,
        base_sha256: base_sha,
    });
    crate::check::check_partitions(image, &parts, scratch_dir, verdict)
        .map_err(|e| e.context(format_args!("base {}", req.base.display())))
}

fn base_err(req: &BuildRequest, e: Error) -> Error {
    e.context(format_args!(
        "base {} does not match board {}",
        req.base.display(),
        req.board.name
    ))
}

fn decompress(req: &BuildRequest, work: &Path) -> Result<u64> {
    let src = req.raw_base.unwrap_or(req.base);
    let total = std::fs::metadata(src)
        .context(|| format!("base image {}", src.display()))?
        .len();
    req.progress.start("decompress", total);
    let progress = |p| req.progress.set(p);
    let r = match req.raw_base {
        Some(raw) => crate::source::copy_sparse_image(raw, work, &progress),
        None => crate::source::decompress_to_sparse(src, work, &progress),
    };
    req.progress.finish();
    r
}

/// Finds the partition playing `role` and checks its file system and label against the board.
pub fn locate(image: &Path, table: &Table, board: &Board, role: Role) -> Result<Span> {
    let want_kind = match board.table.kind {
        TableType::Mbr => TableKind::Mbr,
        TableType::Gpt => TableKind::Gpt,
    };
    if table.kind != want_kind {
        crate::bail!(
            "the image has a {:?} partition table, the board expects {:?}",
            table.kind,
            want_kind
        );
    }
    let spec = board.partition(role);
    let Some(part) = table.partition(spec.index) else {
        let have: Vec<String> = table
            .partitions
            .iter()
            .map(|p| p.index.to_string())
            .collect();
        crate::bail!(
            "no partition {} ({role}) in the image; it has partitions [{}]",
            spec.index,
            have.join(", ")
        );
    };
    let probe = disk::probe(image, part)?;
    let fs_ok = match spec.fs {
        FsType::Vfat => matches!(probe.kind, FsKind::Fat12 | FsKind::Fat16 | FsKind::Fat32),
        FsType::Ext4 => matches!(probe.kind, FsKind::Ext2 | FsKind::Ext3 | FsKind::Ext4),
    };
    if !fs_ok {
        crate::bail!(
            "partition {} ({role}) holds {}, expected {:?}",
            spec.index,
            probe.kind,
            spec.fs
        );
    }
    if let Some(label) = &spec.label {
        let same = match spec.fs {
            FsType::Vfat => probe.label.eq_ignore_ascii_case(label),
            FsType::Ext4 => probe.label == *label,
        };
        if !same {
            crate::bail!(
                "partition {} ({role}) is labelled {:?}, expected {:?}",
                spec.index,
                probe.label,
                label
            );
        }
    }
    Ok(Span {
        offset: part.start,
        size: part.size,
    })
}
