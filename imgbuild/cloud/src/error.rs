//! The error type of this crate: always one line naming what failed, where, and what to do.
//!
//! AWS SDK errors print as multi-line reports through `DisplayErrorContext`; [`SdkContext`]
//! folds them into one line with the service's error code and message (or, when no response
//! came back, the innermost cause such as "Connection refused") plus a hint for the usual causes.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// A cloud-side error: one line naming what failed and where, and when possible what to do.
///
/// Messages never contain private key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError(String, u8);

/// Result alias of this crate.
pub type Result<T, E = CloudError> = std::result::Result<T, E>;

impl CloudError {
    /// Makes an error from a message; line breaks and runs of whitespace fold to single spaces.
    pub fn msg(message: impl Into<String>) -> CloudError {
        let message: String = message.into();
        CloudError(message.split_whitespace().collect::<Vec<_>>().join(" "), 1)
    }

    /// The same error with another process exit status (default 1), for outcomes a script must
    /// tell apart, such as `cloud deploy --wait`'s failed (3) and timed-out (4) deployments.
    pub fn with_exit_code(self, code: u8) -> CloudError {
        CloudError(self.0, code)
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// The process exit status this error calls for (1 unless set with [`CloudError::with_exit_code`]).
    pub fn exit_code(&self) -> u8 {
        self.1
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for CloudError {}

/// Returns early with a [`CloudError`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::CloudError::msg(format!($($arg)*))) };
}
pub(crate) use bail;

/// Adds "what was being done" to a non-SDK error (I/O, JSON, ...), as `"{what}: {cause}"`.
pub trait Context<T> {
    /// Wraps the error; `what` is computed only on failure.
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| CloudError::msg(format!("{}: {e}", what())))
    }
}

/// Turns an AWS SDK error into a one-line [`CloudError`] prefixed with what was being done.
pub(crate) trait SdkContext<T> {
    /// Wraps the SDK error as `"{what}: {code}: {message} ({hint})"`.
    fn aws_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E> SdkContext<T> for std::result::Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    fn aws_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| CloudError::msg(format!("{}: {}", what(), describe_sdk_error(&e))))
    }
}

/// The service error code of an SDK error, if the service answered with one.
pub(crate) fn error_code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    err.as_service_error().and_then(ProvideErrorMetadata::code)
}

/// One line describing an SDK error: the service's code and message, or the innermost cause.
pub fn describe_sdk_error<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let mut code = error_code(err).map(str::to_owned);
    let mut credentials_missing = false;
    let text = match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let status = service.raw().status().as_u16();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) if !message.is_empty() => format!("{code}: {message}"),
                (Some(code), _) => code.to_owned(),
                (None, _) => match xml_error(service.raw()) {
                    // An answer the SDK could not decode (e.g. an emulator's or proxy's own
                    // format): take the code from the XML body if there is one.
                    Some((raw_code, message)) => {
                        let text = format!("{raw_code}: {message} (HTTP {status})");
                        code = Some(raw_code);
                        text
                    }
                    None => format!("unexpected answer (HTTP {status}): {}", cause_chain(e)),
                },
            }
        }
        SdkError::DispatchFailure(_) => {
            let chain = cause_chain(err);
            if chain.contains("no credentials found") {
                credentials_missing = true;
                "no AWS credentials found (environment, profiles, web identity, container and instance \
                 metadata were tried)"
                    .to_owned()
            } else if chain.to_ascii_lowercase().contains("credential") {
                credentials_missing = true;
                format!("could not get AWS credentials: {chain}")
            } else {
                format!("cannot reach the endpoint: {chain}")
            }
        }
        SdkError::TimeoutError(_) => "the request timed out".to_owned(),
        SdkError::ConstructionFailure(_) => {
            format!("could not build the request: {}", cause_chain(err))
        }
        _ => cause_chain(err),
    };
    let hint = if credentials_missing {
        Some(CREDENTIALS_HINT)
    } else {
        hint_for(code.as_deref(), err)
    };
    let text = match hint {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `<Code>` and `<Message>` of an XML error body.
fn xml_error(response: &HttpResponse) -> Option<(String, String)> {
    let body = std::str::from_utf8(response.body().bytes()?).ok()?;
    let element = |name: &str| {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let len = body[start..].find(&format!("</{name}>"))?;
        Some(body[start..start + len].trim().to_owned())
    };
    Some((element("Code")?, element("Message").unwrap_or_default()))
}

/// The messages of an error and its sources, deduplicated and joined with ": ".
fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// What to do when credentials are missing or rejected.
const CREDENTIALS_HINT: &str =
    "check the AWS credentials: AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, \
                                or AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE";

/// What to do about the usual failure causes.
fn hint_for<E, R>(code: Option<&str>, err: &SdkError<E, R>) -> Option<&'static str> {
    match code {
        Some(
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "InvalidToken",
        ) => Some(CREDENTIALS_HINT),
        Some("AccessDenied" | "AccessDeniedException" | "UnauthorizedException") => {
            Some("the credentials lack a permission this command needs")
        }
        Some("NoSuchBucket") => Some("create the bucket or fix the bucket name"),
        _ => match err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                Some("check the network, AWS_REGION and AWS_ENDPOINT_URL")
            }
            SdkError::ConstructionFailure(_) => Some(CREDENTIALS_HINT),
            _ => None,
        },
    }
}
