//! `imgbuild upload`: parallel, resumable multipart upload of images to S3.
//!
//! Every object is encrypted at rest (SSE-S3, `AES256`) and carries the sha256 of the whole file
//! as its `sha256` metadata entry. A `manifest.json` lying next to an uploaded file is uploaded
//! beside it.
//!
//! Files of at least [`MIN_PART_SIZE`] go up as multipart uploads in parts of
//! [`part_size_for`] bytes, `jobs` parts at a time. Resuming: while a multipart upload is in
//! flight, a small state object `KEY.imgbuild-upload.json` records its upload id, the file size,
//! sha256 and part size. A later run for the same key and the same file (size and sha256)
//! continues that upload: it lists the parts S3 already has (ListParts), keeps each part whose
//! size and ETag (the MD5 of the part with SSE-S3) match the local bytes, and uploads only the
//! others. In-flight uploads of the key that do not match are aborted (found with
//! ListMultipartUploads). Two concurrent uploads of the same key are not supported.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use imgbuild_progress::{Reporter, Stage};
use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::client::Aws;
use crate::error::{aws_bail, bail, error_code, Context, Result, SdkContext};
use crate::location::S3Location;
use crate::objects::{ensure_bucket, get_small_object, put_small_object, SHA256_METADATA};

const MIB: u64 = 1024 * 1024;
/// The smallest part size used (and the size from which files go up in parts).
pub const MIN_PART_SIZE: u64 = 8 * MIB;
/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: u64 = 10_000;
/// Parts uploaded at the same time when not told otherwise.
pub const DEFAULT_JOBS: usize = 4;
/// The name of the manifest uploaded beside images.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Suffix of the state object that marks an in-flight multipart upload.
pub const STATE_SUFFIX: &str = ".imgbuild-upload.json";

/// Called with the part number each time a part has been uploaded (not for reused parts);
/// returning `false` stops the upload there, as an interruption would (tests use this).
pub type PartHook = Arc<dyn Fn(i32) -> bool + Send + Sync>;

/// How to upload.
#[derive(Clone)]
pub struct UploadOptions {
    /// Parts in flight at once (at least 1).
    pub jobs: usize,
    /// Print a presigned GET URL valid this long for each uploaded file.
    pub presign: Option<Duration>,
    /// Receives the progress of hashing and uploading each file (the CLI draws it); shows
    /// nothing by default.
    pub progress: Reporter,
    /// Observer of uploaded parts, which may interrupt the upload (see [`PartHook`]).
    pub on_part: Option<PartHook>,
}

impl Default for UploadOptions {
    fn default() -> UploadOptions {
        UploadOptions {
            jobs: DEFAULT_JOBS,
            presign: None,
            progress: Reporter::none(),
            on_part: None,
        }
    }
}

/// What one upload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadReport {
    /// The local file.
    pub file: PathBuf,
    /// The bucket.
    pub bucket: String,
    /// The object key.
    pub key: String,
    /// Bytes in the file.
    pub size: u64,
    /// Hex sha256 of the whole file (also the object's `sha256` metadata).
    pub sha256: String,
    /// Parts of the upload (1 for a single PutObject).
    pub parts_total: u32,
    /// Parts sent by this run.
    pub parts_uploaded: u32,
    /// Parts already in S3 from an interrupted run, verified and kept.
    pub parts_reused: u32,
    /// Presigned GET URL, when asked for.
    pub presigned_url: Option<String>,
}

/// The record of an in-flight multipart upload, stored as `KEY.imgbuild-upload.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct UploadState {
    upload_id: String,
    size: u64,
    sha256: String,
    part_size: u64,
}

/// One part of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    number: i32,
    offset: u64,
    len: u64,
}

/// The part size for a file: [`MIN_PART_SIZE`], or larger (whole MiB) so that at most
/// [`MAX_PARTS`] parts are needed.
pub fn part_size_for(size: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(MIN_PART_SIZE)
}

fn split_parts(size: u64, part_size: u64) -> Vec<Part> {
    (0..size.div_ceil(part_size))
        .map(|i| Part {
            // At most MAX_PARTS parts (enforced by the callers), so the number fits an i32.
            number: i32::try_from(i + 1).unwrap_or(i32::MAX),
            offset: i * part_size,
            len: part_size.min(size - i * part_size),
        })
        .collect()
}

/// Uploads files to `to` (each as `PREFIX + file name`), plus a `manifest.json` found next to
/// any of them; returns one report per uploaded object, the files first.
pub async fn upload_files(
    aws: &Aws,
    files: &[PathBuf],
    to: &S3Location,
    options: &UploadOptions,
) -> Result<Vec<UploadReport>> {
    let mut names = Vec::new();
    for file in files {
        let name = object_name(file)?;
        if names.contains(&name) {
            bail!(
                "{}: two files named {name} would go to the same key {}",
                file.display(),
                to.key(&name)
            );
        }
        names.push(name);
    }
    ensure_bucket(aws, &to.bucket).await?;
    let mut reports = Vec::new();
    for (file, name) in files.iter().zip(&names) {
        reports.push(upload_file(aws, file, &to.bucket, &to.key(name), options).await?);
    }
    if !names.iter().any(|n| n == MANIFEST_NAME) {
        if let Some(manifest) = sibling_manifest(files) {
            let no_presign = UploadOptions {
                presign: None,
                ..options.clone()
            };
            reports.push(
                upload_file(
                    aws,
                    &manifest,
                    &to.bucket,
                    &to.key(MANIFEST_NAME),
                    &no_presign,
                )
                .await?,
            );
        }
    }
    Ok(reports)
}

/// The object name of a file: its file name, which must be valid UTF-8.
fn object_name(file: &Path) -> Result<String> {
    match file.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(name.to_owned()),
        None => bail!(
            "{}: not a file name usable as an S3 key (must be UTF-8)",
            file.display()
        ),
    }
}

/// The `manifest.json` next to the first file that has one.
fn sibling_manifest(files: &[PathBuf]) -> Option<PathBuf> {
    files
        .iter()
        .map(|f| f.parent().unwrap_or(Path::new(".")).join(MANIFEST_NAME))
        .find(|m| m.is_file())
}

/// Uploads one file to `bucket/key`, resuming an interrupted multipart upload of the same file.
pub async fn upload_file(
    aws: &Aws,
    file: &Path,
    bucket: &str,
    key: &str,
    options: &UploadOptions,
) -> Result<UploadReport> {
    let size = std::fs::metadata(file)
        .context(|| format!("{}: cannot read the file to upload", file.display()))?
        .len();
    let sha256 = hash_file(file, size, &options.progress).await?;
    let mut report = UploadReport {
        file: file.to_owned(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        size,
        sha256,
        parts_total: 1,
        parts_uploaded: 1,
        parts_reused: 0,
        presigned_url: None,
    };
    if size < MIN_PART_SIZE {
        put_single(aws, &report).await?;
    } else {
        upload_multipart(aws, &mut report, options).await?;
    }
    if let Some(validity) = options.presign {
        report.presigned_url = Some(presign_get(aws, bucket, key, validity).await?);
    }
    Ok(report)
}

/// The hex sha256 of a whole file, computed on a blocking thread; progress stage `sha256 NAME`.
async fn hash_file(file: &Path, size: u64, progress: &Reporter) -> Result<String> {
    let path = file.to_owned();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = progress.clone();
    progress.start(&format!("sha256 {name}"), size);
    let task = tokio::task::spawn_blocking(move || -> Result<String> {
        let what = || format!("{}: reading for sha256", path.display());
        let mut f = File::open(&path).context(what)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut done = 0u64;
        let hashed = loop {
            let n = match f.read(&mut buf).context(what) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if n == 0 {
                break Ok(hex::encode(hasher.finalize()));
            }
            hasher.update(&buf[..n]);
            done += n as u64;
            progress.set(done);
        };
        progress.finish();
        hashed
    });
    task.await
        .context(|| format!("{}: hashing task", file.display()))?
}

fn read_part(file: &File, part: Part) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(part.len).map_err(std::io::Error::other)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, part.offset)?;
    Ok(buf)
}

fn strip_quotes(etag: &str) -> &str {
    etag.trim_matches('"')
}

/// Fails unless the ETag S3 returned is the MD5 of the bytes sent.
fn check_etag(etag: Option<&str>, md5_hex: &str, what: &str) -> Result<String> {
    let Some(etag) = etag else {
        aws_bail!("{what}: S3 returned no ETag");
    };
    if !strip_quotes(etag).eq_ignore_ascii_case(md5_hex) {
        aws_bail!(
            "{what}: S3 stored ETag {} but the local MD5 is {md5_hex}: the data was altered in transit or \
             the bucket uses SSE-KMS; run again",
            strip_quotes(etag)
        );
    }
    Ok(etag.to_owned())
}

async fn put_single(aws: &Aws, report: &UploadReport) -> Result<()> {
    let body = tokio::fs::read(&report.file)
        .await
        .context(|| format!("{}: cannot read the file to upload", report.file.display()))?;
    let md5_hex = hex::encode(Md5::digest(&body));
    let what = format!("S3 PutObject s3://{}/{}", report.bucket, report.key);
    let out = aws
        .s3
        .put_object()
        .bucket(&report.bucket)
        .key(&report.key)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .metadata(SHA256_METADATA, &report.sha256)
        .body(ByteStream::from(body))
        .send()
        .await
        .aws_context(|| &what)?;
    check_etag(out.e_tag(), &md5_hex, &what)?;
    Ok(())
}

/// The multipart upload: resume or start, send the missing parts, complete, drop the state.
async fn upload_multipart(
    aws: &Aws,
    report: &mut UploadReport,
    options: &UploadOptions,
) -> Result<()> {
    let state_name = format!("{}{STATE_SUFFIX}", report.key);
    let state_loc = S3Location {
        bucket: report.bucket.clone(),
        prefix: String::new(),
    };
    let state = resumable_state(aws, report, &state_name).await?;
    let state = match state {
        Some(state) => state,
        None => start_upload(aws, report, &state_loc, &state_name).await?,
    };
    let parts = split_parts(report.size, state.part_size);
    report.parts_total = u32::try_from(parts.len()).unwrap_or(u32::MAX);
    let existing = list_parts(aws, report, &state.upload_id).await?;
    let completed = send_parts(aws, report, &state.upload_id, parts, existing, options).await?;
    report.parts_reused = report.parts_total - report.parts_uploaded;
    aws.s3
        .complete_multipart_upload()
        .bucket(&report.bucket)
        .key(&report.key)
        .upload_id(&state.upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .aws_context(|| {
            format!(
                "S3 CompleteMultipartUpload s3://{}/{}",
                report.bucket, report.key
            )
        })?;
    aws.s3
        .delete_object()
        .bucket(&report.bucket)
        .key(&state_name)
        .send()
        .await
        .aws_context(|| format!("S3 DeleteObject s3://{}/{state_name}", report.bucket))?;
    Ok(())
}

/// The state of an in-flight upload of this very file, if there is one; aborts in-flight uploads
/// of the key that cannot be resumed.
async fn resumable_state(
    aws: &Aws,
    report: &UploadReport,
    state_name: &str,
) -> Result<Option<UploadState>> {
    let state_loc = S3Location {
        bucket: report.bucket.clone(),
        prefix: String::new(),
    };
    let state: Option<UploadState> = match get_small_object(aws, &state_loc, state_name).await? {
        // An unreadable state object is treated as absent: the upload restarts.
        Some(bytes) => serde_json::from_slice(&bytes).ok(),
        None => None,
    };
    let state = state.filter(|s| {
        s.size == report.size
            && s.sha256 == report.sha256
            && s.part_size >= 5 * MIB
            && report.size.div_ceil(s.part_size) <= MAX_PARTS
    });
    let in_flight = list_in_flight(aws, &report.bucket, &report.key).await?;
    let mut resumable = None;
    for upload_id in in_flight {
        match &state {
            Some(s) if s.upload_id == upload_id => resumable = Some(s.clone()),
            _ => abort_upload(aws, &report.bucket, &report.key, &upload_id).await?,
        }
    }
    Ok(resumable)
}

/// Upload ids of the in-flight multipart uploads of exactly this key.
async fn list_in_flight(aws: &Aws, bucket: &str, key: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut id_marker: Option<String> = None;
    loop {
        let out = aws
            .s3
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .set_key_marker(key_marker.take())
            .set_upload_id_marker(id_marker.take())
            .send()
            .await
            .aws_context(|| format!("S3 ListMultipartUploads s3://{bucket}/{key}"))?;
        for upload in out.uploads() {
            if upload.key() == Some(key) {
                if let Some(id) = upload.upload_id() {
                    ids.push(id.to_owned());
                }
            }
        }
        if out.is_truncated() != Some(true) {
            return Ok(ids);
        }
        key_marker = out.next_key_marker().map(str::to_owned);
        id_marker = out.next_upload_id_marker().map(str::to_owned);
        if key_marker.is_none() && id_marker.is_none() {
            return Ok(ids);
        }
    }
}

async fn abort_upload(aws: &Aws, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
    match aws
        .s3
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("NoSuchUpload") => Ok(()),
        Err(e) => Err(e).aws_context(|| {
            format!("S3 AbortMultipartUpload s3://{bucket}/{key} (stale upload {upload_id})")
        }),
    }
}

/// Starts a multipart upload and records it in the state object.
async fn start_upload(
    aws: &Aws,
    report: &UploadReport,
    state_loc: &S3Location,
    state_name: &str,
) -> Result<UploadState> {
    let out = aws
        .s3
        .create_multipart_upload()
        .bucket(&report.bucket)
        .key(&report.key)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .metadata(SHA256_METADATA, &report.sha256)
        .content_type("application/octet-stream")
        .send()
        .await
        .aws_context(|| {
            format!(
                "S3 CreateMultipartUpload s3://{}/{}",
                report.bucket, report.key
            )
        })?;
    let Some(upload_id) = out.upload_id else {
        aws_bail!(
            "S3 CreateMultipartUpload s3://{}/{}: no upload id returned",
            report.bucket,
            report.key
        );
    };
    let state = UploadState {
        upload_id,
        size: report.size,
        sha256: report.sha256.clone(),
        part_size: part_size_for(report.size),
    };
    let json = serde_json::to_vec(&state).context(|| "encoding the upload state")?;
    put_small_object(aws, state_loc, state_name, json).await?;
    Ok(state)
}

/// Parts S3 already holds for the upload: (part number, size, ETag).
async fn list_parts(
    aws: &Aws,
    report: &UploadReport,
    upload_id: &str,
) -> Result<Vec<(i32, u64, String)>> {
    let mut parts = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let out = aws
            .s3
            .list_parts()
            .bucket(&report.bucket)
            .key(&report.key)
            .upload_id(upload_id)
            .set_part_number_marker(marker.take())
            .send()
            .await
            .aws_context(|| format!("S3 ListParts s3://{}/{}", report.bucket, report.key))?;
        for p in out.parts() {
            if let (Some(n), Some(size), Some(etag)) = (p.part_number(), p.size(), p.e_tag()) {
                parts.push((n, u64::try_from(size).unwrap_or(0), etag.to_owned()));
            }
        }
        if out.is_truncated() != Some(true) {
            return Ok(parts);
        }
        marker = out.next_part_number_marker().map(str::to_owned);
        if marker.is_none() {
            return Ok(parts);
        }
    }
}

/// Sends every part that S3 does not already hold intact, `jobs` at a time; returns the
/// completed parts in order and counts the uploaded ones in `report.parts_uploaded`.
async fn send_parts(
    aws: &Aws,
    report: &mut UploadReport,
    upload_id: &str,
    parts: Vec<Part>,
    existing: Vec<(i32, u64, String)>,
    options: &UploadOptions,
) -> Result<Vec<CompletedPart>> {
    let file = Arc::new(
        File::open(&report.file).context(|| format!("{}: cannot open", report.file.display()))?,
    );
    let name = report
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = Stage::start(&*options.progress, &format!("upload {name}"), report.size);
    let mut sent_bytes = 0u64;
    let existing = Arc::new(existing);
    let mut pending = parts.into_iter();
    let mut tasks: JoinSet<Result<PartDone>> = JoinSet::new();
    let mut completed = Vec::new();
    let mut uploaded = 0u32;
    loop {
        while tasks.len() < options.jobs.max(1) {
            let Some(part) = pending.next() else { break };
            let job = PartJob {
                aws: aws.clone(),
                file: Arc::clone(&file),
                bucket: report.bucket.clone(),
                key: report.key.clone(),
                upload_id: upload_id.to_owned(),
                existing: Arc::clone(&existing),
                hook: options.on_part.clone(),
            };
            tasks.spawn(job.run(part));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let done = joined.context(|| format!("upload of {}: part task", report.key))??;
        if done.stop {
            bail!(
                "upload of s3://{}/{} interrupted after part {}: run it again to resume",
                report.bucket,
                report.key,
                done.part.part_number().unwrap_or_default()
            );
        }
        if done.sent {
            uploaded += 1;
        }
        sent_bytes += done.len;
        progress.set(sent_bytes);
        completed.push(done.part);
    }
    drop(progress);
    completed.sort_by_key(|p| p.part_number());
    report.parts_uploaded = uploaded;
    Ok(completed)
}

/// A finished part task.
struct PartDone {
    part: CompletedPart,
    /// Whether this run uploaded it (false: S3 already held it intact).
    sent: bool,
    len: u64,
    /// The part hook asked to stop.
    stop: bool,
}

/// Everything one part task needs.
struct PartJob {
    aws: Aws,
    file: Arc<File>,
    bucket: String,
    key: String,
    upload_id: String,
    existing: Arc<Vec<(i32, u64, String)>>,
    hook: Option<PartHook>,
}

impl PartJob {
    /// Reads the part, keeps it if S3 already holds these exact bytes, otherwise uploads it.
    async fn run(self, part: Part) -> Result<PartDone> {
        let what = format!(
            "S3 UploadPart s3://{}/{} part {}",
            self.bucket, self.key, part.number
        );
        let file = Arc::clone(&self.file);
        let read = tokio::task::spawn_blocking(move || {
            let data = read_part(&file, part)?;
            let md5_hex = hex::encode(Md5::digest(&data));
            Ok::<_, std::io::Error>((data, md5_hex))
        });
        let (data, md5_hex) = read.await.context(|| &what)?.context(|| {
            format!(
                "{what}: reading {} bytes at offset {}",
                part.len, part.offset
            )
        })?;
        let held = self.existing.iter().find(|(n, size, etag)| {
            *n == part.number
                && *size == part.len
                && strip_quotes(etag).eq_ignore_ascii_case(&md5_hex)
        });
        if let Some((_, _, etag)) = held {
            return Ok(PartDone {
                part: completed_part(part.number, etag.clone()),
                sent: false,
                len: part.len,
                stop: false,
            });
        }
        let out = self
            .aws
            .s3
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(part.number)
            .content_length(i64::try_from(part.len).context(|| &what)?)
            .body(ByteStream::from(data))
            .send()
            .await
            .aws_context(|| format!("{what} (run the upload again to resume)"))?;
        let etag = check_etag(out.e_tag(), &md5_hex, &what)?;
        let stop = self.hook.as_ref().is_some_and(|hook| !hook(part.number));
        Ok(PartDone {
            part: completed_part(part.number, etag),
            sent: true,
            len: part.len,
            stop,
        })
    }
}

fn completed_part(number: i32, etag: String) -> CompletedPart {
    CompletedPart::builder()
        .part_number(number)
        .e_tag(etag)
        .build()
}

/// A presigned GET URL for the object, valid for `validity`.
pub async fn presign_get(aws: &Aws, bucket: &str, key: &str, validity: Duration) -> Result<String> {
    let config = PresigningConfig::expires_in(validity)
        .context(|| format!("presigning s3://{bucket}/{key}"))?;
    let request = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .presigned(config)
        .await
        .aws_context(|| format!("presigning s3://{bucket}/{key}"))?;
    Ok(request.uri().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_grows_to_stay_within_ten_thousand_parts() {
        assert_eq!(part_size_for(200 * MIB), MIN_PART_SIZE);
        let huge = 200 * 1024 * MIB;
        let ps = part_size_for(huge);
        assert!(huge.div_ceil(ps) <= MAX_PARTS);
        assert_eq!(ps % MIB, 0);
        assert!(ps > MIN_PART_SIZE);
    }

    #[test]
    fn parts_cover_the_file_exactly_once() {
        let size = 3 * MIN_PART_SIZE + 123;
        let parts = split_parts(size, MIN_PART_SIZE);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.iter().map(|p| p.len).sum::<u64>(), size);
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.number as usize, i + 1);
            assert_eq!(p.offset, i as u64 * MIN_PART_SIZE);
        }
        assert_eq!(parts[3].len, 123);
    }

    #[test]
    fn etag_check_accepts_quoted_md5_and_rejects_others() {
        let md5 = hex::encode(Md5::digest(b"abc"));
        assert!(check_etag(Some(&format!("\"{md5}\"")), &md5, "x").is_ok());
        let err = check_etag(Some("\"0123\""), &md5, "part 3").unwrap_err();
        assert!(
            err.message().starts_with("part 3: S3 stored ETag 0123"),
            "{err}"
        );
        assert!(check_etag(None, &md5, "x").is_err());
    }
}
