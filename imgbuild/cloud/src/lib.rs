//! imgbuild's AWS side, on the AWS Rust SDK (no hand-written request signing).
//!
//! - [`upload`]: `imgbuild upload FILE… --to s3://BUCKET/PREFIX/` — parallel, resumable
//!   multipart upload with SSE, `sha256` metadata, the manifest beside the image, presigned URLs.
//! - [`claim`]: `imgbuild cloud claim ensure|fetch` — the fleet-provisioning claim certificate.
//! - [`provisioning`]: `imgbuild cloud provisioning publish|fetch` — endpoints and names a build needs.
//! - [`devices`] and [`allowlist`]: `imgbuild cloud devices sync` — a thing group matches the
//!   allowlist, behind guards; `devices ls` — the fleet's things and core devices.
//! - [`deploy`]: `imgbuild cloud deploy [--wait]` — a Greengrass v2 deployment to the thing
//!   group, followed device by device.
//! - [`buildconfig`]: `imgbuild cloud provisioning config` — `imgbuild.toml` with its
//!   `[greengrass]` section completed from the published parameters (one section, never two).
//! - [`fleet`]: `imgbuild cloud fleet init|destroy` — everything fleet provisioning by claim
//!   needs (roles, policies, role alias, template, optional allowlist hook, claim, thing group,
//!   private bucket), created idempotently with drift reported; and removed again.
//!
//! The library returns reports and plans and never prints; the `imgbuild` binary holds the
//! command-line definitions and prints what these functions return. Its operations are async;
//! [`block_on`] runs one from synchronous code.
//!
//! Credentials and region come from the standard AWS chain (see [`Aws`]); `AWS_ENDPOINT_URL`
//! points every client at another endpoint (an emulator in the tests). Errors are one line each
//! ([`CloudError`]), with the service's error code and message.

#![deny(missing_docs)]

pub mod allowlist;
pub mod buildconfig;
pub mod claim;
pub mod client;
pub mod deploy;
pub mod devices;
pub mod error;
pub mod fleet;
pub mod location;
pub mod objects;
pub mod provisioning;
pub mod upload;

pub use client::{block_on, Aws};
pub use error::{CloudError, Result};
pub use location::S3Location;
