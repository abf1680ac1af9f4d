//! `s3://bucket/prefix/` locations and `24h`-style durations, as typed on the command line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{bail, CloudError, Result};

/// A place in S3: a bucket and a key prefix that is empty or ends with `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix: empty or ending with `/` (a "folder").
    pub prefix: String,
}

impl S3Location {
    /// A location from a bucket and a prefix; a missing trailing `/` is added to a non-empty prefix.
    pub fn new(bucket: &str, prefix: &str) -> Result<S3Location> {
        check_bucket_name(bucket)?;
        let prefix = prefix.trim_start_matches('/');
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    /// The key of `name` inside this location.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl FromStr for S3Location {
    type Err = CloudError;

    /// Parses `s3://bucket`, `s3://bucket/` or `s3://bucket/some/prefix[/]`.
    fn from_str(s: &str) -> Result<S3Location> {
        let Some(rest) = s.strip_prefix("s3://") else {
            bail!("{s:?} is not an S3 location: write s3://BUCKET/PREFIX/");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        S3Location::new(bucket, prefix).map_err(|e| e.within(format_args!("{s:?}")))
    }
}

/// Checks the S3 bucket naming rules that matter for URLs: 3-63 characters of `a-z 0-9 . -`,
/// starting and ending with a letter or digit.
pub fn check_bucket_name(bucket: &str) -> Result<()> {
    let valid_chars = bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    let valid_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !valid_chars || !valid_ends {
        bail!(
            "bucket name {bucket:?} is invalid: use 3-63 characters of a-z, 0-9, '.' and '-', \
             starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// The longest validity of a SigV4 presigned URL (7 days).
pub const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses a presign validity such as `90s`, `30m`, `24h` or `7d` (1 second to 7 days).
pub fn parse_presign_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("presign duration {s:?} is invalid: write a number with s, m, h or d, e.g. 24h"),
    };
    let Ok(count) = digits.parse::<u64>() else {
        bail!("presign duration {s:?} is invalid: write a number with s, m, h or d, e.g. 24h");
    };
    let duration = Duration::from_secs(count.saturating_mul(unit_secs));
    if duration.is_zero() || duration > MAX_PRESIGN {
        bail!("presign duration {s:?} is out of range: presigned URLs last from 1s to 7d");
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_into_bucket_and_folder_prefix() {
        let loc: S3Location = "s3://my-bucket/images/rpi4".parse().unwrap();
        assert_eq!(loc.bucket, "my-bucket");
        assert_eq!(loc.prefix, "images/rpi4/");
        assert_eq!(loc.key("a.img.xz"), "images/rpi4/a.img.xz");
        let root: S3Location = "s3://my-bucket".parse().unwrap();
        assert_eq!(root.prefix, "");
        assert_eq!(root.to_string(), "s3://my-bucket/");
        let slash: S3Location = "s3://my-bucket/x/".parse().unwrap();
        assert_eq!(slash.prefix, "x/");
    }

    #[test]
    fn bad_locations_are_rejected_with_the_input_named() {
        for bad in [
            "my-bucket/x",
            "s3://",
            "s3://A_B/x",
            "s3://ab/x",
            "s3://-abc/",
            "gs://abc/",
        ] {
            let err = bad.parse::<S3Location>().unwrap_err();
            assert!(err.message().contains(bad.trim_end_matches('/')), "{err}");
        }
    }

    #[test]
    fn presign_durations_parse_with_units_and_limits() {
        assert_eq!(
            parse_presign_duration("24h").unwrap(),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_presign_duration("90s").unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(parse_presign_duration("7d").unwrap(), MAX_PRESIGN);
        for bad in [
            "",
            "24",
            "h",
            "8d",
            "0s",
            "1.5h",
            "-1h",
            "99999999999999999999d",
        ] {
            assert!(parse_presign_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
