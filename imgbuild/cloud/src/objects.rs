//! Small S3 object helpers shared by the commands: every object imgbuild writes is encrypted at
//! rest (SSE-S3, `AES256`) and carries its sha256 as the `sha256` metadata entry.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;
use sha2::{Digest, Sha256};

use crate::client::Aws;
use crate::error::{error_code, CloudError, Result, SdkContext};
use crate::location::S3Location;

/// The user-metadata key holding the hex sha256 of an object's content.
pub const SHA256_METADATA: &str = "sha256";

/// Stores a small object (SSE `AES256`, `sha256` metadata); returns the hex sha256.
pub async fn put_small_object(
    aws: &Aws,
    loc: &S3Location,
    name: &str,
    body: Vec<u8>,
) -> Result<String> {
    let key = loc.key(name);
    let sha256 = hex::encode(Sha256::digest(&body));
    aws.s3
        .put_object()
        .bucket(&loc.bucket)
        .key(&key)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .metadata(SHA256_METADATA, &sha256)
        .body(ByteStream::from(body))
        .send()
        .await
        .aws_context(|| format!("S3 PutObject s3://{}/{key}", loc.bucket))?;
    Ok(sha256)
}

/// Reads a small object whole; `None` when the key does not exist.
pub async fn get_small_object(aws: &Aws, loc: &S3Location, name: &str) -> Result<Option<Vec<u8>>> {
    let key = loc.key(name);
    let what = || format!("S3 GetObject s3://{}/{key}", loc.bucket);
    let out = match aws
        .s3
        .get_object()
        .bucket(&loc.bucket)
        .key(&key)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if error_code(&e) == Some("NoSuchKey") => return Ok(None),
        Err(e) => return Err(e).aws_context(what),
    };
    let bytes = out
        .body
        .collect()
        .await
        .map_err(|e| CloudError::aws(format!("{}: reading the body: {e}", what())))?;
    Ok(Some(bytes.into_bytes().to_vec()))
}

/// Whether the key exists (HeadObject); other failures (missing bucket, credentials) are errors.
pub async fn object_exists(aws: &Aws, loc: &S3Location, name: &str) -> Result<bool> {
    let key = loc.key(name);
    match aws
        .s3
        .head_object()
        .bucket(&loc.bucket)
        .key(&key)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) => {
            // HEAD answers carry no body, hence no error code: a missing bucket also looks like
            // "404 Not Found" and wrong credentials like "403". Ask in a way that has a body.
            ensure_bucket(aws, &loc.bucket).await?;
            if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                Ok(false)
            } else {
                Err(e).aws_context(|| format!("S3 HeadObject s3://{}/{key}", loc.bucket))
            }
        }
    }
}

/// Fails with a one-line error naming the bucket when it does not exist or is not accessible
/// (ListObjectsV2 of one key: unlike HeadBucket, its errors carry the service's code).
pub async fn ensure_bucket(aws: &Aws, bucket: &str) -> Result<()> {
    match aws
        .s3
        .list_objects_v2()
        .bucket(bucket)
        .max_keys(1)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some("NoSuchBucket") => Err(CloudError::Aws {
            message: format!(
                "S3 bucket {bucket} does not exist (NoSuchBucket): create it or fix the bucket name"
            ),
            code: Some("NoSuchBucket".to_owned()),
        }),
        Err(e) => Err(e).aws_context(|| format!("S3 bucket {bucket}")),
    }
}
