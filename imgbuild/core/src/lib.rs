//! imgbuild's pipeline as a library: each module is one stage of turning a base image into a
//! provisioned one. The `imgbuild` binary is a thin command-line layer over this crate.
//!
//! Stages, in order: [`board`] (what the image looks like), [`config`] (what the user wants),
//! [`source`] (decompress the base into a sparse working copy), [`disk`] (partition table and
//! file-system probes), [`fs`] (FAT and ext4 patching), [`plan`] (config → list of actions),
//! [`apply`] (actions → image), [`pack`] (image → artifacts), [`manifest`] (what was written).

pub mod access;
pub mod apply;
pub mod base;
pub mod board;
pub mod cachedir;
pub mod check;
pub mod config;
pub mod crashpoint;
pub mod disk;
pub mod error;
pub mod fs;
pub mod grow;
pub mod inspect;
pub mod pack;
pub mod payload;
pub mod pipeline;
pub mod plan;
pub mod preseed;
pub mod scratch;
pub mod secrets;
pub mod source;
pub mod units;

pub use error::{Error, Result};
