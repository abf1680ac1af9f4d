//! The build, as a list of stages over one [`BuildSpec`] (like mkosi's `build_image`): working
//! copy → locate partitions → check the base → plan the writes → patch → pack → sha256 →
//! manifest → publish. [`build`] reads as that list; each stage is one method of [`Build`].
//! Any error removes the working copy and every staged output; the base file is only read.

use crate::apply::{self, Span, Written};
use crate::board::{Board, FsType, Role, TableType};
use crate::disk::{self, FsKind, Table, TableKind};
use crate::error::{Context, Error, Result};
use crate::pack::{self, Artifact, Compress};
use crate::spec::BuildSpec;
use crate::workimage::WorkImage;
use crate::writes::{self, Op};
use imgbuild_overlay::Overlay;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Receives progress of the long stages (decompress, compress); the CLI draws bars with it.
pub use imgbuild_progress::{NoProgress, Progress};

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

/// Removes the working copy (if one was made) when the build ends, unless it was moved into
/// place. An overlay removes its own file when dropped.
struct WorkCopy(PathBuf);

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the build `spec` describes: each line is one stage (see the module documentation).
pub fn build(spec: &BuildSpec, progress: &dyn Progress) -> Result<BuildSummary> {
    let mut b = Build::start(spec, progress)?;
    let raw_size = timed("working copy", || b.working_copy())?;
    crate::crashpoint::hit("working-copy");
    let (table, parts) = b.locate_partitions()?;
    crate::crashpoint::hit("table-read");
    timed("base check", || b.check_base(&table))?;
    crate::crashpoint::hit("base-checked");
    let mut incremental = b.chunk_index()?;
    crate::crashpoint::hit("chunk-index");
    let (table, parts, raw_size) = timed("grow", || {
        b.grow(table, parts, raw_size, incremental.as_mut())
    })?;
    let ops = timed("plan", || b.plan_writes(parts))?;
    crate::crashpoint::hit("patch-start");
    let applied = timed("patch", || b.patch(parts, &ops))?;
    crate::crashpoint::hit("patch-done");
    let secrets = crate::secrets::secret_files(&spec.board, &spec.plan, &applied.written);
    let (size, sha256) = b.pack(raw_size, &applied, parts, &secrets, incremental.as_mut())?;
    crate::crashpoint::hit("compressed");
    b.write_sha256(&sha256)?;
    crate::crashpoint::hit("sha256-written");
    let summary = b.write_manifest(raw_size, table, applied, &secrets, size, sha256)?;
    crate::crashpoint::hit("manifest-written");
    b.set_output_modes(&secrets)?;
    crate::crashpoint::hit("modes-set");
    b.publish()?;
    Ok(summary)
}

/// Names of the four outputs.
struct Outputs {
    image: String,
    sha256: String,
    bmap: String,
}

/// The state one build's stages share.
struct Build<'a> {
    spec: &'a BuildSpec,
    progress: &'a dyn Progress,
    base_sha: String,
    out: Outputs,
    scratch: crate::scratch::Scratch,
    /// The image being built: set by the working-copy stage.
    work: WorkImage,
    /// Removes a working copy at the end.
    work_copy: WorkCopy,
}

impl<'a> Build<'a> {
    /// Creates the output directory and this build's private scratch directory (see
    /// [`crate::scratch`]: an error or a signal removes it), and knows the base's sha256.
    fn start(spec: &'a BuildSpec, progress: &'a dyn Progress) -> Result<Build<'a>> {
        let out_dir = &spec.out_dir;
        if !out_dir.is_dir() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(out_dir)
                .and_then(|()| {
                    let mode = 0o777 & !spec.umask;
                    std::fs::set_permissions(out_dir, std::fs::Permissions::from_mode(mode))
                })
                .context(|| format!("creating output directory {}", out_dir.display()))?;
        }
        let base_sha = match &spec.base.sha256 {
            Some(s) => s.clone(),
            None => timed("base sha256", || {
                pack::hash_base(&spec.base.path, spec.cache_dir.as_deref())
            })?,
        };
        let image = match spec.compress {
            Compress::Xz { .. } => format!("{}.img.xz", spec.name),
            Compress::None => format!("{}.img", spec.name),
        };
        let out = Outputs {
            sha256: format!("{image}.sha256"),
            bmap: format!("{}.bmap", spec.name),
            image,
        };
        let scratch = crate::scratch::Scratch::create(out_dir)?;
        crate::crashpoint::hit("scratch-created");
        let work_copy = WorkCopy(scratch.path("work.img"));
        Ok(Build {
            spec,
            progress,
            base_sha,
            out,
            scratch,
            work: WorkImage::Copy(work_copy.0.clone()),
            work_copy,
        })
    }

    /// Stage: the image to write; returns its size. With a cached raw base, a copy-on-write
    /// overlay over it (nothing is copied: reads fall through to the base, writes go to a
    /// sparse 0600 file in the scratch directory). Otherwise a sparse working copy of the base
    /// (decompressed, or copied from a raw base file that is not in the cache). Growth also
    /// needs a working copy: resize2fs and the partition-table editor work on a file.
    fn working_copy(&mut self) -> Result<u64> {
        let spec = self.spec;
        if let (Some(raw), None) = (&spec.raw_base, &spec.growth) {
            let path = self.scratch.path("overlay.img");
            let ov = Overlay::create(raw, &path).map_err(std::io::Error::from)?;
            let size = ov.len();
            tracing::info!(overlay = %path.display(), base = %raw.display(), "copy-on-write overlay over the cached raw base");
            self.work = WorkImage::Overlay(Arc::new(ov));
            return Ok(size);
        }
        let src = spec.raw_base.as_deref().unwrap_or(&spec.base.path);
        let total = std::fs::metadata(src)
            .context(|| format!("base image {}", src.display()))?
            .len();
        self.progress.start("decompress", total);
        let progress = |p| self.progress.set(p);
        let r = match &spec.raw_base {
            Some(raw) => crate::source::copy_sparse_image(raw, &self.work_copy.0, &progress),
            None => crate::source::decompress_to_sparse(src, &self.work_copy.0, &progress),
        };
        self.progress.finish();
        r
    }

    /// Stage: the partition table, and the boot and root partitions the board names (file
    /// system and label checked).
    fn locate_partitions(&self) -> Result<(Table, Parts)> {
        let spec = self.spec;
        let image = self.work.unwritten_path();
        let table = disk::read_table(image)
            .map_err(|e| e.context(format_args!("base {}", spec.base.path.display())))?;
        let mismatch = |e: Error| {
            e.context(format_args!(
                "base {} does not match board {}",
                spec.base.path.display(),
                spec.board.name
            ))
        };
        let boot = locate(image, &table, &spec.board, Role::Boot).map_err(mismatch)?;
        let root = locate(image, &table, &spec.board, Role::Root).map_err(mismatch)?;
        Ok((table, Parts { boot, root }))
    }

    /// Stage: refuses a base whose partitions overlap or whose boot/root file systems are not
    /// clean, before anything is written (see [`crate::check`]); a clean verdict is remembered
    /// in the cache. Under an overlay the checkers read the raw base itself (the same bytes:
    /// nothing is written yet).
    fn check_base(&self, table: &Table) -> Result<()> {
        let spec = self.spec;
        let mut parts = Vec::new();
        for role in [Role::Boot, Role::Root] {
            let p_spec = spec.board.partition(role);
            let Some(p) = table.partition(p_spec.index) else {
                continue;
            };
            parts.push(crate::check::PartCheck {
                index: p.index,
                role,
                family: match p_spec.fs {
                    FsType::Vfat => crate::check::FsFamily::Fat,
                    FsType::Ext4 => crate::check::FsFamily::Ext,
                },
                offset: p.start,
                size: p.size,
            });
        }
        let verdict = spec
            .cache_dir
            .as_deref()
            .map(|dir| crate::check::VerdictKey {
                cache_dir: dir,
                base_sha256: &self.base_sha,
            });
        crate::check::check_partitions(
            self.work.unwritten_path(),
            &parts,
            self.scratch.dir(),
            verdict,
        )
        .map_err(|e| e.context(format_args!("base {}", spec.base.path.display())))
    }

    /// Stage: grows the image, the root partition and its file system as `[image]` asks (see
    /// [`crate::grow`]); returns the new table, partitions and image size. What the growth
    /// wrote (the table areas, the changed pieces of the root, the new tail) is marked dirty for the
    /// packer.
    fn grow(
        &self,
        table: Table,
        parts: Parts,
        raw_size: u64,
        incremental: Option<&mut pack::Incremental>,
    ) -> Result<(Table, Parts, u64)> {
        let spec = self.spec;
        if spec.growth.is_none() {
            return Ok((table, parts, raw_size));
        }
        // Growth always has a working copy (see `working_copy`).
        let WorkImage::Copy(work) = &self.work else {
            crate::bail!("internal error: growing an image needs a working copy, not an overlay");
        };
        let grown = crate::grow::grow(
            work,
            &table,
            &spec.board,
            spec.growth,
            self.scratch.dir(),
            spec.epoch,
        )?;
        if let Some(inc) = incremental {
            inc.mark(&grown.dirty);
        }
        let parts = Parts {
            root: grown.root,
            ..parts
        };
        // The image only grows.
        Ok((grown.table, parts, raw_size.max(grown.disk_size)))
    }

    /// Stage: the plan completed against the base, read-only (see [`crate::writes`]).
    fn plan_writes(&self, parts: Parts) -> Result<Vec<Op>> {
        let probe = writes::Probe::open(
            &self.work,
            parts.root.offset,
            parts.boot.offset,
            parts.boot.size,
        )?;
        writes::plan_writes(
            &self.spec.plan,
            &self.spec.board,
            &probe,
            self.spec.preseed_debs.as_ref(),
        )
    }

    /// The base's chunk index, so that packing recompresses only changed chunks (xz output
    /// with a cache only).
    fn chunk_index(&self) -> Result<Option<pack::Incremental>> {
        match (self.spec.cache_dir.as_deref(), self.spec.compress) {
            (Some(dir), Compress::Xz { .. }) => {
                pack::Incremental::prepare(dir, &self.base_sha, self.work.unwritten_path())
            }
            _ => Ok(None),
        }
    }

    /// Stage: executes the writes on the image (working copy or overlay).
    fn patch(&self, parts: Parts, ops: &[Op]) -> Result<apply::Applied> {
        let target = apply::Target {
            image: &self.work,
            boot: parts.boot,
            root: parts.root,
            epoch: self.spec.epoch,
        };
        let applied = apply::apply(&target, ops)?;
        tracing::info!(
            files = applied.written.len(),
            dirty_ranges = applied.dirty.len(),
            "applied"
        );
        Ok(applied)
    }

    /// Stage: the image artifact (compressed, or the working copy moved into place) and the
    /// bmap; returns the artifact's size and sha256.
    fn pack(
        &self,
        raw_size: u64,
        applied: &apply::Applied,
        parts: Parts,
        secrets: &[crate::secrets::SecretFile],
        incremental: Option<&mut pack::Incremental>,
    ) -> Result<(u64, String)> {
        let name = self.work.unwritten_path().to_path_buf();
        let image_tmp = self.scratch.path("image.tmp");
        let bmap_tmp = self.scratch.path("bmap.tmp");
        let bmap_name = &self.out.bmap;
        let bmap = |src: &dyn imgbuild_pack::ImageRead| {
            timed("bmap", || {
                imgbuild_pack::write_bmap_from(src, &name, &bmap_tmp, 4096)
                    .map(|_| ())
                    .map_err(|e| Error::from(e).context(format_args!("writing {bmap_name}")))
            })
        };
        if let WorkImage::Overlay(ov) = &self.work {
            let written = ov.written().total_bytes();
            // The overlay file's disk use is about this (rounded to blocks); the bench reads it.
            tracing::info!(overlay_written_bytes = written, "overlay");
        }
        self.progress.start("compress", raw_size);
        let packed = match (self.spec.compress, &self.work) {
            (Compress::None, WorkImage::Copy(work)) => {
                let file =
                    std::fs::File::open(work).context(|| format!("opening {}", work.display()))?;
                bmap(&file)?;
                timed("compress", || {
                    std::fs::rename(work, &image_tmp)
                        .context(|| format!("moving the image to {}", image_tmp.display()))?;
                    Ok((raw_size, pack::hash_file(&image_tmp)?))
                })?
            }
            (Compress::None, WorkImage::Overlay(ov)) => {
                // The full image is written only now, at the end: base extents by the kernel,
                // then the written ranges.
                timed("materialize", || {
                    ov.materialize(&image_tmp)
                        .map_err(std::io::Error::from)
                        .context(|| format!("writing the image {}", image_tmp.display()))
                })?;
                // Its block map is the written file's own (Overlay::data_ranges predicts it).
                let file = std::fs::File::open(&image_tmp)
                    .context(|| format!("opening {}", image_tmp.display()))?;
                bmap(&file)?;
                (raw_size, pack::hash_file(&image_tmp)?)
            }
            (Compress::Xz { level }, work) => {
                let incremental = incremental.map(|inc| {
                    inc.mark(&applied.dirty);
                    if let WorkImage::Overlay(ov) = work {
                        // Everything the overlay holds, whoever wrote it (a probe included).
                        inc.mark(&ov.written());
                    }
                    if !secrets.is_empty() {
                        let ranges = crate::secrets::secret_ranges(
                            work,
                            parts.root,
                            parts.boot,
                            secrets,
                            &applied.dirty,
                        );
                        inc.never_cache(&ranges);
                    }
                    &*inc
                });
                crate::crashpoint::hit("secrets-mapped");
                let reader = work.reader()?;
                // The bmap is hashed while the image is compressed: a warm rebuild takes most
                // chunks from the cache and leaves cores free.
                std::thread::scope(|scope| {
                    let bmapped = scope.spawn(|| bmap(&*reader));
                    let packed = timed("compress", || {
                        pack::write_xz(&*reader, &name, &image_tmp, level, incremental, &|p| {
                            self.progress.set(p)
                        })
                    });
                    let bmapped = bmapped.join().unwrap_or_else(|_| {
                        Err(Error::msg("writing the bmap: its thread panicked"))
                    });
                    packed.and_then(|packed| bmapped.map(|()| packed))
                })?
            }
        };
        self.progress.finish();
        Ok(packed)
    }

    /// Stage: `NAME.img.xz.sha256`, in `sha256sum -c` format.
    fn write_sha256(&self, sha256: &str) -> Result<()> {
        let tmp = self.scratch.path("sha256.tmp");
        std::fs::write(&tmp, pack::sha256sum_line(sha256, &self.out.image))
            .context(|| format!("writing {}", tmp.display()))
    }

    /// Stage: `manifest.json` (secret files listed without a hash); returns the summary.
    fn write_manifest(
        &self,
        raw_size: u64,
        table: Table,
        applied: apply::Applied,
        secrets: &[crate::secrets::SecretFile],
        size: u64,
        sha256: String,
    ) -> Result<BuildSummary> {
        let spec = self.spec;
        let out_dir = &spec.out_dir;
        let image = Artifact {
            path: out_dir.join(&self.out.image),
            size,
            sha256,
        };
        let manifest = Manifest {
            imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
            board: spec.board.name.clone(),
            base: BaseInfo {
                origin: spec.base.origin.clone(),
                sha256: self.base_sha.clone(),
                insecure_no_verify: spec.base.insecure,
            },
            source_date_epoch: spec.epoch,
            image: Artifact {
                path: PathBuf::from(&self.out.image),
                ..image.clone()
            },
            raw_size,
            partition_table: table,
            files: applied
                .written
                .into_iter()
                .map(|mut w| {
                    let secret = secrets.iter().any(|s| {
                        s.partition == w.partition && s.path == w.path && w.kind == "file"
                    });
                    if secret {
                        w.sha256 = None;
                    }
                    ManifestFile { written: w, secret }
                })
                .collect(),
        };
        let json =
            serde_json::to_string_pretty(&manifest).context(|| "serializing the manifest")?;
        let tmp = self.scratch.path("manifest.tmp");
        std::fs::write(&tmp, json + "\n").context(|| format!("writing {}", tmp.display()))?;
        Ok(BuildSummary {
            image,
            sha256_file: out_dir.join(&self.out.sha256),
            bmap: out_dir.join(&self.out.bmap),
            manifest: out_dir.join("manifest.json"),
            files_written: manifest.files.len(),
        })
    }

    /// Stage: the outputs of an image holding a secret are 0600, others follow the umask.
    fn set_output_modes(&self, secrets: &[crate::secrets::SecretFile]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mode = match secrets.is_empty() {
            true => crate::secrets::public_mode(self.spec.umask),
            false => 0o600,
        };
        for tmp in ["image.tmp", "sha256.tmp", "bmap.tmp", "manifest.tmp"] {
            let tmp = self.scratch.path(tmp);
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .context(|| format!("setting the mode of {}", tmp.display()))?;
        }
        Ok(())
    }

    /// Stage: the four outputs renamed into place together (side files first, the image last).
    fn publish(self) -> Result<()> {
        let Build {
            scratch,
            work,
            work_copy,
            out,
            ..
        } = self;
        drop(work);
        drop(work_copy);
        scratch.publish(&[
            ("bmap.tmp", &out.bmap),
            ("manifest.tmp", "manifest.json"),
            ("sha256.tmp", &out.sha256),
            ("image.tmp", &out.image),
        ])
    }
}

/// Where the boot and root partitions are.
#[derive(Debug, Clone, Copy)]
struct Parts {
    boot: Span,
    root: Span,
}

/// Runs one build stage and logs how long it took (shown with `-v`; the benchmark reads it).
fn timed<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let out = f()?;
    let seconds = start.elapsed().as_secs_f64();
    tracing::info!(stage, seconds = %format_args!("{seconds:.3}"), "stage done");
    Ok(out)
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
