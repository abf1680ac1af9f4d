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
/// The variant says what kind of failure it is (and which process exit status it calls for,
/// see [`CloudError::exit_code`]); the message is always one line. Messages never contain
/// private key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudError {
    /// An AWS call failed, or answered without what it must return. `code` is the service's
    /// error code when it answered with one (e.g. `NoSuchBucket`, `AccessDeniedException`).
    Aws {
        /// The one-line message: the call, its target, the code and message, and a hint.
        message: String,
        /// The service's error code, if any.
        code: Option<String>,
    },
    /// A local step failed: reading or writing a file, encoding JSON, the async runtime.
    Local(String),
    /// The input, or the state of the account or an upload, stops the command: a bad argument
    /// or file, a guard's refusal, drift, an interrupted upload. The message says what to do.
    Input(String),
    /// `deploy --wait`: a device failed, rejected or canceled the deployment (exit status 3).
    DeploymentFailed(String),
    /// `deploy --wait`: a device had not finished when the wait ended (exit status 4).
    DeploymentTimedOut(String),
}

/// Result alias of this crate.
pub type Result<T, E = CloudError> = std::result::Result<T, E>;

/// `message` on one line: line breaks and runs of whitespace fold to single spaces.
fn one_line(message: impl Into<String>) -> String {
    let message: String = message.into();
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl CloudError {
    /// An [`CloudError::Input`] error.
    pub fn input(message: impl Into<String>) -> CloudError {
        CloudError::Input(one_line(message))
    }

    /// A [`CloudError::Local`] error.
    pub fn local(message: impl Into<String>) -> CloudError {
        CloudError::Local(one_line(message))
    }

    /// An [`CloudError::Aws`] error without a service error code (an answer that lacks what it
    /// must hold, or data altered in transit).
    pub fn aws(message: impl Into<String>) -> CloudError {
        CloudError::Aws {
            message: one_line(message),
            code: None,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        match self {
            CloudError::Aws { message, .. } => message,
            CloudError::Local(m)
            | CloudError::Input(m)
            | CloudError::DeploymentFailed(m)
            | CloudError::DeploymentTimedOut(m) => m,
        }
    }

    /// The service's error code of an [`CloudError::Aws`] error, if it answered with one.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            CloudError::Aws { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The same kind of error with its message rewritten by `f` (e.g. to say where it happened).
    pub fn map_message(self, f: impl FnOnce(&str) -> String) -> CloudError {
        match self {
            CloudError::Aws { message, code } => CloudError::Aws {
                message: one_line(f(&message)),
                code,
            },
            CloudError::Local(m) => CloudError::Local(one_line(f(&m))),
            CloudError::Input(m) => CloudError::Input(one_line(f(&m))),
            CloudError::DeploymentFailed(m) => CloudError::DeploymentFailed(one_line(f(&m))),
            CloudError::DeploymentTimedOut(m) => CloudError::DeploymentTimedOut(one_line(f(&m))),
        }
    }

    /// The same error prefixed with `place` (`"{place}: {message}"`).
    pub fn within(self, place: impl fmt::Display) -> CloudError {
        self.map_message(|m| format!("{place}: {m}"))
    }

    /// The process exit status this error calls for: 3 for [`CloudError::DeploymentFailed`], 4
    /// for [`CloudError::DeploymentTimedOut`], 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CloudError::DeploymentFailed(_) => crate::deploy::EXIT_FAILED,
            CloudError::DeploymentTimedOut(_) => crate::deploy::EXIT_TIMED_OUT,
            _ => 1,
        }
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl StdError for CloudError {}

/// Returns early with a [`CloudError::Input`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::CloudError::input(format!($($arg)*))) };
}
pub(crate) use bail;

/// Returns early with a [`CloudError::Aws`] (no service code) built from a format string: an
/// AWS answer that lacks what it must hold.
macro_rules! aws_bail {
    ($($arg:tt)*) => { return Err($crate::error::CloudError::aws(format!($($arg)*))) };
}
pub(crate) use aws_bail;

/// Adds "what was being done" to a local, non-SDK error (I/O, JSON, a task), as a
/// [`CloudError::Local`] `"{what}: {cause}"`.
pub trait Context<T> {
    /// Wraps the error; `what` is computed only on failure.
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| CloudError::local(format!("{}: {e}", what())))
    }
}

/// Turns an AWS SDK error into a one-line [`CloudError::Aws`] prefixed with what was being done.
pub(crate) trait SdkContext<T> {
    /// Wraps the SDK error as `"{what}: {code}: {message} ({hint})"`, keeping the code.
    fn aws_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E> SdkContext<T> for std::result::Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    fn aws_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| CloudError::Aws {
            message: one_line(format!("{}: {}", what(), describe_sdk_error(&e))),
            code: error_code(&e).map(str::to_owned),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_keep_their_kind_code_and_exit_status_through_rewording() {
        let aws = CloudError::Aws {
            message: "S3 bucket b: NoSuchBucket: gone".to_owned(),
            code: Some("NoSuchBucket".to_owned()),
        };
        let placed = aws.within("allowlist.txt");
        assert_eq!(
            placed.message(),
            "allowlist.txt: S3 bucket b: NoSuchBucket: gone"
        );
        assert_eq!(placed.aws_code(), Some("NoSuchBucket"));
        assert_eq!(placed.exit_code(), 1);
        let failed = CloudError::DeploymentFailed("deployment d failed on SN1 FAILED".to_owned())
            .map_message(|m| format!("{m} (see the device log)"));
        assert_eq!(failed.exit_code(), crate::deploy::EXIT_FAILED);
        assert_eq!(
            failed.to_string(),
            "deployment d failed on SN1 FAILED (see the device log)"
        );
        let late = CloudError::DeploymentTimedOut("late".to_owned());
        assert_eq!(late.exit_code(), crate::deploy::EXIT_TIMED_OUT);
        assert_eq!(late.aws_code(), None);
        let input = CloudError::input("two\nlines   and\tspace");
        assert_eq!(input, CloudError::Input("two lines and space".to_owned()));
        let local: Result<()> = Err(std::io::Error::other("disk full")).context(|| "writing x");
        assert_eq!(
            local.unwrap_err(),
            CloudError::Local("writing x: disk full".to_owned())
        );
    }
}
