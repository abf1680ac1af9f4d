//! HTTP transfers: streaming to a `.part` file with the sha256 computed on the way, resuming with
//! `Range`, bounded retries with exponential backoff, timeouts and progress reports.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgbuild_progress::{Progress, Reporter};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{one_line, FetchError};
use crate::verify::hash_reader;
use crate::Options;

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The User-Agent sent with every request.
pub const USER_AGENT: &str = concat!("imgbuild/", env!("CARGO_PKG_VERSION"));

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt.
    Retry(Transient, String),
    /// Final.
    Fatal(FetchError),
}

/// Kinds of failure that another attempt may cure.
#[derive(Clone, Copy)]
enum Transient {
    Connect,
    Timeout,
    Transfer,
    Status(u16),
}

impl Transient {
    /// The error to report once no attempt is left.
    fn into_error(self, url: &str, detail: String) -> FetchError {
        let url = url.to_string();
        match self {
            Transient::Connect => FetchError::Unreachable { url, detail },
            Transient::Timeout => FetchError::Timeout { url, detail },
            Transient::Transfer => FetchError::Transfer { url, detail },
            Transient::Status(status) => FetchError::HttpStatus { url, status },
        }
    }
}

/// An HTTP client with its private single-threaded runtime and retry policy.
pub(crate) struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    retries: u32,
    backoff: Duration,
    progress: Reporter,
}

impl Http {
    /// Builds the client: rustls (ring), proxies from the environment, `USER_AGENT`, the
    /// connect and per-read timeouts of `opts`, no transparent decompression.
    pub(crate) fn new(opts: &Options) -> Result<Http, FetchError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(FetchError::Setup {
                detail: "imgbuild-fetch is blocking and must not be called from inside an async \
                         runtime (use spawn_blocking)"
                    .to_string(),
            });
        }
        // Installing fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let setup = |e: &dyn std::error::Error| FetchError::Setup {
            detail: error_chain(e),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(&e))?;
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .build()
            .map_err(|e| setup(&e))?;
        Ok(Http {
            runtime,
            client,
            retries: opts.retries,
            backoff: opts.backoff,
            progress: opts.progress.clone(),
        })
    }

    /// Downloads a small file (at most `limit` bytes) into memory.
    pub(crate) fn get_small(&self, url: &str, limit: usize) -> Result<Vec<u8>, FetchError> {
        let url = parse_url(url)?;
        self.with_retries(url.as_str(), || {
            self.runtime
                .block_on(get_small(&self.client, url.clone(), limit))
        })
    }

    /// Downloads `url` into `part` and returns the digests of the complete file. With `resume`,
    /// bytes already in `part` are kept (hashed from disk) and only the rest is requested.
    pub(crate) fn download(
        &self,
        url: &str,
        part: &Path,
        resume: bool,
        label: &str,
    ) -> Result<Digests, FetchError> {
        let parsed = parse_url(url)?;
        let mut partial = Partial::open(part, resume)?;
        let progress = Stage {
            progress: &*self.progress,
            label,
        };
        let result = self.with_retries(url, || {
            self.runtime.block_on(transfer(
                &self.client,
                parsed.clone(),
                &mut partial,
                &progress,
            ))
        });
        self.progress.finish();
        result?;
        partial.finish()
    }

    /// Runs `attempt` until it succeeds, fails for good, or `retries` retries were spent;
    /// waits `backoff`, then twice as long each time (at most [`MAX_BACKOFF`]) in between.
    fn with_retries<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, FetchError> {
        let mut delay = self.backoff;
        let mut retried = 0;
        loop {
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Retry(kind, detail)) if retried >= self.retries => {
                    let detail = format!("{detail} (after {} attempts)", retried + 1);
                    return Err(kind.into_error(url, detail));
                }
                Err(Failure::Retry(..)) => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                    retried += 1;
                }
            }
        }
    }
}

/// The progress stage of one download: started again by each attempt, with the total once the
/// server names it.
struct Stage<'a> {
    progress: &'a dyn Progress,
    label: &'a str,
}

/// The sha256 and sha512 of a downloaded file (lowercase hex), both computed while it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digests {
    /// The sha256: the cache key.
    pub(crate) sha256: String,
    /// The sha512: what Debian publishes for its cloud images.
    pub(crate) sha512: String,
}

/// The file being downloaded, with the running hashes of its contents.
struct Partial {
    path: PathBuf,
    file: File,
    sha256: Sha256,
    sha512: Sha512,
    len: u64,
}

impl Partial {
    /// Opens `path`; with `resume` keeps and hashes what it holds, else empties it.
    fn open(path: &Path, resume: bool) -> Result<Partial, FetchError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!resume)
            .open(path)
            .map_err(|e| FetchError::io("open partial download", path, e))?;
        let (mut sha256, mut sha512) = (Sha256::new(), Sha512::new());
        let len = hash_reader(&mut file, |b| {
            sha256.update(b);
            sha512.update(b);
        })
        .map_err(|e| FetchError::io("read partial download", path, e))?;
        Ok(Partial {
            path: path.to_path_buf(),
            file,
            sha256,
            sha512,
            len,
        })
    }

    /// Drops everything received so far.
    fn restart(&mut self) -> Result<(), Failure> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| Failure::Fatal(FetchError::io("truncate", &self.path, e)))?;
        self.sha256 = Sha256::new();
        self.sha512 = Sha512::new();
        self.len = 0;
        Ok(())
    }

    /// Appends received bytes.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.file
            .write_all(bytes)
            .map_err(|e| Failure::Fatal(FetchError::io("write", &self.path, e)))?;
        self.sha256.update(bytes);
        self.sha512.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the file and returns the digests of its contents.
    fn finish(self) -> Result<Digests, FetchError> {
        self.file
            .sync_all()
            .map_err(|e| FetchError::io("sync", &self.path, e))?;
        Ok(Digests {
            sha256: hex::encode(self.sha256.finalize()),
            sha512: hex::encode(self.sha512.finalize()),
        })
    }
}

/// One attempt at the rest of the file: asks for the bytes `partial` lacks and appends them.
async fn transfer(
    client: &reqwest::Client,
    url: reqwest::Url,
    partial: &mut Partial,
    progress: &Stage<'_>,
) -> Result<(), Failure> {
    let offset = partial.len;
    let mut request = client.get(url.clone());
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let mut response = request.send().await.map_err(|e| classify(&e))?;
    let status = response.status();
    match status {
        StatusCode::OK if offset > 0 => partial.restart()?, // Range ignored: start over.
        StatusCode::OK => {}
        StatusCode::PARTIAL_CONTENT => {
            let start = content_range(&response).and_then(|(start, _)| start);
            if start != Some(offset) {
                partial.restart()?;
                return Err(Failure::Retry(
                    Transient::Transfer,
                    format!(
                        "asked for bytes from {offset}, the server sent {}",
                        describe(start)
                    ),
                ));
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            let total = content_range(&response).and_then(|(_, total)| total);
            if total == Some(offset) {
                return Ok(()); // Everything was already there.
            }
            partial.restart()?;
            return Err(Failure::Retry(
                Transient::Transfer,
                format!("the server cannot resume at byte {offset}"),
            ));
        }
        _ => return Err(status_failure(&url, status)),
    }
    let total = response
        .content_length()
        .map_or(0, |rest| partial.len + rest);
    progress.progress.start(progress.label, total);
    progress.progress.set(partial.len);
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
        partial.append(&chunk)?;
        progress.progress.set(partial.len);
    }
    Ok(())
}

/// One attempt at a small file.
async fn get_small(
    client: &reqwest::Client,
    url: reqwest::Url,
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| classify(&e))?;
    if response.status() != StatusCode::OK {
        return Err(status_failure(&url, response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e))? {
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(Failure::Fatal(FetchError::Protocol {
                url: url.to_string(),
                detail: format!("larger than the {limit} bytes allowed for this file"),
            }));
        }
    }
    Ok(body)
}

/// Server errors and "slow down" answers are retried; anything else unexpected is final.
fn status_failure(url: &reqwest::Url, status: StatusCode) -> Failure {
    let retry = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if retry {
        Failure::Retry(Transient::Status(status.as_u16()), format!("HTTP {status}"))
    } else {
        Failure::Fatal(FetchError::HttpStatus {
            url: url.to_string(),
            status: status.as_u16(),
        })
    }
}

/// Sorts a client error into the kind of failure it is.
fn classify(error: &reqwest::Error) -> Failure {
    let detail = error_chain(error);
    if error.is_builder() {
        Failure::Fatal(FetchError::Setup { detail })
    } else if error.is_connect() {
        Failure::Retry(Transient::Connect, detail)
    } else if error.is_timeout() {
        Failure::Retry(Transient::Timeout, detail)
    } else {
        Failure::Retry(Transient::Transfer, detail)
    }
}

/// `error` and all its causes on one line, without repeating a cause that its parent already
/// quotes.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    one_line(&parts.join(": "))
}

/// Parses `url` and accepts only http and https.
fn parse_url(url: &str) -> Result<reqwest::Url, FetchError> {
    let bad = |detail: String| FetchError::BadUrl {
        url: url.to_string(),
        detail,
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(bad(format!("scheme '{other}' is not http or https"))),
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL` or `bytes */TOTAL` into (START, TOTAL).
fn content_range(response: &reqwest::Response) -> Option<(Option<u64>, Option<u64>)> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    let total = total.trim().parse().ok();
    let start = range
        .split_once('-')
        .and_then(|(start, _)| start.trim().parse().ok());
    Some((start, total))
}

/// A possibly unknown byte offset, for messages.
fn describe(offset: Option<u64>) -> String {
    offset.map_or_else(
        || "no valid Content-Range".to_string(),
        |o| format!("bytes from {o}"),
    )
}
