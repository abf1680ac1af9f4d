//! imgbuild's pipeline as a library: each module is one stage of turning a base image into a
//! provisioned one. The `imgbuild` binary is a thin command-line layer over this crate.
//!
//! A build is resolve → plan → execute: [`spec`] resolves the options, the config ([`config`]),
//! the board ([`board`]) and the base ([`base`]) once into a [`spec::BuildSpec`]; [`plan`] turns
//! the config into what to write; [`pipeline`] runs the stages over the spec: [`source`] (the
//! sparse working copy), [`disk`] (partition table and file-system probes), [`check`] (the base
//! is clean), [`writes`] (the plan completed against the base: every user-input error is raised
//! here), [`apply`] (the writes executed through [`fs`] and libext2fs), [`pack`] (image →
//! artifacts) and [`scratch`] (atomic publish).

pub mod access;
pub mod apply;
pub mod base;
pub mod board;
pub mod bootconfig;
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
pub mod spec;
pub mod units;
pub mod writes;

pub use error::{Error, Result};
