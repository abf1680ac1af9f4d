//! `imgbuild upload` against moto: multipart, resume, sha256 metadata, SSE, manifest, presign.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use common::Moto;
use imgbuild_cloud::upload::{
    upload_file, upload_files, UploadOptions, MIN_PART_SIZE, STATE_SUFFIX,
};
use imgbuild_cloud::{Aws, S3Location};
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

/// A sparse file of `size` bytes with 4 KiB of pseudo-random data at every MiB, so that every
/// part differs (a swapped or repeated part changes the sha256).
fn generate(path: &Path, size: u64, seed: u64) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let mut state = seed | 1;
    let mut block = vec![0u8; 4096];
    for offset in (0..size).step_by(MIB as usize) {
        for b in block.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        let len = block.len().min((size - offset) as usize);
        file.write_all_at(&block[..len], offset).unwrap();
    }
}

fn sha256_of(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

fn quiet(jobs: usize) -> UploadOptions {
    UploadOptions {
        jobs,
        progress: imgbuild_progress::Reporter::none(),
        ..UploadOptions::default()
    }
}

/// Options whose part hook interrupts the upload once `parts` parts went up.
fn interrupted_after(parts: usize, jobs: usize) -> UploadOptions {
    let count = Arc::new(AtomicUsize::new(0));
    UploadOptions {
        on_part: Some(Arc::new(move |_| {
            count.fetch_add(1, Ordering::SeqCst) + 1 < parts
        })),
        ..quiet(jobs)
    }
}

/// The object's bytes as S3 serves them.
async fn remote_bytes(aws: &Aws, bucket: &str, key: &str) -> Vec<u8> {
    let out = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Asserts that S3 serves `key` with the bytes whose sha256 is `expected` and that its `sha256`
/// metadata says so; returns its HeadObject answer for further checks.
async fn assert_stored(aws: &Aws, bucket: &str, key: &str, expected: &str) -> HeadObjectOutput {
    let served = hex::encode(Sha256::digest(remote_bytes(aws, bucket, key).await));
    assert_eq!(served, expected, "the bytes of s3://{bucket}/{key}");
    let head = aws
        .s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("sha256"))
            .map(String::as_str),
        Some(expected),
        "the sha256 metadata of s3://{bucket}/{key}"
    );
    head
}

/// (key, upload id) of each multipart upload in flight in `bucket`.
async fn in_flight_uploads(aws: &Aws, bucket: &str) -> Vec<(String, String)> {
    let out = aws
        .s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    out.uploads()
        .iter()
        .map(|u| {
            (
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_mib_image_goes_up_in_parts_with_sha256_sse_manifest_and_a_working_presigned_url() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "images").await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fleet.img");
    generate(&image, 200 * MIB + 12345, 7);
    std::fs::write(
        dir.path().join("manifest.json"),
        br#"{"image":"fleet.img"}"#,
    )
    .unwrap();
    let expected = sha256_of(&image);

    let to: S3Location = "s3://images/builds/42".parse().unwrap();
    let options = UploadOptions {
        presign: Some(Duration::from_secs(24 * 3600)),
        ..quiet(4)
    };
    let reports = upload_files(&aws, std::slice::from_ref(&image), &to, &options)
        .await
        .unwrap();

    assert_eq!(reports.len(), 2, "image and manifest");
    let r = &reports[0];
    assert_eq!(r.key, "builds/42/fleet.img");
    assert_eq!(r.sha256, expected);
    assert_eq!(
        r.parts_total as u64,
        (200 * MIB + 12345).div_ceil(MIN_PART_SIZE)
    );
    assert_eq!(r.parts_uploaded, r.parts_total);
    assert_eq!(r.parts_reused, 0);

    let head = assert_stored(&aws, "images", &r.key, &expected).await;
    assert_eq!(head.content_length(), Some(200 * MIB as i64 + 12345));
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
    // A multipart ETag is "md5-of-part-md5s-N": N must be the number of parts.
    assert!(head
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .ends_with(&format!("-{}", r.parts_total)));

    // The presigned URL serves the same bytes to a plain HTTP client without credentials.
    let url = r.presigned_url.as_deref().unwrap();
    assert!(url.contains("X-Amz-Expires=86400"), "{url}");
    let mut response = ureq::get(url).call().unwrap();
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher).unwrap();
    assert_eq!(hex::encode(hasher.finalize()), expected);

    let manifest = &reports[1];
    assert_eq!(manifest.key, "builds/42/manifest.json");
    assert_eq!(manifest.presigned_url, None);
    assert_eq!(
        remote_bytes(&aws, "images", &manifest.key).await,
        br#"{"image":"fleet.img"}"#
    );

    // No resume state is left behind once the upload completed.
    let state = aws
        .s3
        .head_object()
        .bucket("images")
        .key(format!("{}{STATE_SUFFIX}", r.key))
        .send()
        .await;
    assert!(state.is_err());
}

/// Part numbers S3 holds for the in-flight upload of `key`.
async fn parts_in_s3(aws: &Aws, bucket: &str, key: &str) -> (String, Vec<i32>) {
    let in_flight: Vec<String> = in_flight_uploads(aws, bucket)
        .await
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, id)| id)
        .collect();
    assert_eq!(in_flight.len(), 1, "one in-flight upload");
    let id = in_flight[0].clone();
    let parts = aws
        .s3
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .unwrap();
    (
        id,
        parts
            .parts()
            .iter()
            .filter_map(|p| p.part_number())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_upload_resumes_sending_only_missing_or_damaged_parts() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "images").await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("resume.img");
    generate(&image, 12 * MIN_PART_SIZE + 999, 11);
    let expected = sha256_of(&image);

    // First run: interrupted once 4 parts are in.
    let err = upload_file(
        &aws,
        &image,
        "images",
        "resume.img",
        &interrupted_after(4, 2),
    )
    .await
    .unwrap_err();
    common::assert_one_line(
        err.message(),
        &[
            "s3://images/resume.img",
            "interrupted",
            "run it again to resume",
        ],
    );

    let (upload_id, mut held) = parts_in_s3(&aws, "images", "resume.img").await;
    assert!(held.len() >= 4 && held.len() < 13, "{held:?}");
    // Damage one held part: same number and size, other bytes. Resume must notice (ETag != MD5).
    held.sort();
    let damaged = held[0];
    let garbage = vec![0xA5u8; MIN_PART_SIZE as usize];
    aws.s3
        .upload_part()
        .bucket("images")
        .key("resume.img")
        .upload_id(&upload_id)
        .part_number(damaged)
        .body(ByteStream::from(garbage))
        .send()
        .await
        .unwrap();

    // A part request the interrupted run had already sent can still complete on the server after
    // that run returned (S3 behaves the same: a dropped connection does not undo a received part),
    // so count what is held now, after the damage round trip, not before it.
    let (_, held) = parts_in_s3(&aws, "images", "resume.img").await;
    assert!(held.contains(&damaged), "{held:?}");

    let report = upload_file(&aws, &image, "images", "resume.img", &quiet(3))
        .await
        .unwrap();
    assert_eq!(report.parts_total, 13);
    assert_eq!(report.parts_reused as usize, held.len() - 1);
    assert_eq!(report.parts_uploaded as usize, 13 - held.len() + 1);
    assert_stored(&aws, "images", "resume.img", &expected).await;
    let left = in_flight_uploads(&aws, "images").await;
    assert!(
        left.is_empty(),
        "the resumed upload was completed: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_in_flight_upload_of_other_content_is_aborted_not_resumed() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "images").await;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("a.img");

    // Interrupt an upload of version 1 of the file ...
    generate(&image, 3 * MIN_PART_SIZE, 1);
    assert!(
        upload_file(&aws, &image, "images", "a.img", &interrupted_after(1, 1))
            .await
            .is_err()
    );
    let (old_id, _) = parts_in_s3(&aws, "images", "a.img").await;

    // ... then upload version 2 (same size, same first part, other tail) to the same key.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.write_all_at(b"version 2", 2 * MIN_PART_SIZE + 5).unwrap();
    f.flush().unwrap();
    let expected = sha256_of(&image);
    let report = upload_file(&aws, &image, "images", "a.img", &quiet(2))
        .await
        .unwrap();
    assert_eq!(report.parts_reused, 0);
    assert_eq!(report.parts_uploaded, 3);
    assert_stored(&aws, "images", "a.img", &expected).await;
    assert!(in_flight_uploads(&aws, "images")
        .await
        .iter()
        .all(|(_, id)| *id != old_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_is_one_put_with_metadata_and_encryption() {
    let moto = Moto::start();
    let aws = moto.aws().await;
    moto.bucket(&aws, "images").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small.bin");
    std::fs::write(&file, b"hello fleet").unwrap();
    let to: S3Location = "s3://images/".parse().unwrap();
    let reports = upload_files(&aws, std::slice::from_ref(&file), &to, &quiet(4))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "no manifest next to it");
    assert_eq!(reports[0].parts_total, 1);
    let head = assert_stored(&aws, "images", "small.bin", &sha256_of(&file)).await;
    assert_eq!(
        head.server_side_encryption(),
        Some(&ServerSideEncryption::Aes256)
    );
}
