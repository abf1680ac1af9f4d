//! Test harness: a private moto server (with the shim for IoT provisioning templates and
//! Greengrass v2) per test, on 127.0.0.1 and a free port, killed when dropped.
//!
//! The Python virtual environment is `$MOTO_VENV` or `<workspace>/target-cloud-venv`; it is
//! created with `tests/cloud/moto.sh setup` (pinned moto) the first time it is missing.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_s3::config::Credentials;
use imgbuild_cloud::Aws;

/// The region every test uses.
pub const REGION: &str = "eu-west-1";
/// moto's default account.
pub const ACCOUNT: &str = "123456789012";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python, set up once per test process.
fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let script = workspace().join("tests/cloud/moto.sh");
            let out = Command::new("bash")
                .arg(&script)
                .arg("setup")
                .stderr(Stdio::inherit())
                .output()
                .expect("run tests/cloud/moto.sh setup");
            assert!(out.status.success(), "tests/cloud/moto.sh setup failed");
            let venv = String::from_utf8(out.stdout).expect("venv path is UTF-8");
            PathBuf::from(venv.trim()).join("bin/python")
        })
        .clone()
}

/// A running moto server with the imgbuild shim.
pub struct Moto {
    child: Child,
    /// Keeps the shim alive: it exits when this pipe closes (even if the test process is killed).
    _stdin: ChildStdin,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log: tempfile::NamedTempFile,
}

impl Moto {
    /// Starts a server.
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    /// Starts a server with extra environment variables (e.g. moto's auth switches).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(python())
            .arg(workspace().join("tests/cloud/moto_shim.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--exit-on-stdin-eof"])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("start moto_shim.py");
        let stdin = child.stdin.take().expect("stdin pipe");
        let stdout = child.stdout.take().expect("stdout pipe");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the shim's first line");
        let Some(endpoint) = line.trim().strip_prefix("moto-shim listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "moto shim did not start: {line:?}; log: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        };
        Moto {
            endpoint: endpoint.to_owned(),
            child,
            _stdin: stdin,
            log,
        }
    }

    /// A config loader aimed at this server with fixed test credentials.
    pub fn loader(&self) -> ConfigLoader {
        self.loader_with_keys("testing", "testing")
    }

    /// A config loader aimed at this server with the given access key pair.
    pub fn loader_with_keys(&self, key_id: &str, secret: &str) -> ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(
                key_id,
                secret,
                None,
                None,
                "imgbuild-tests",
            ))
    }

    /// Clients for this server.
    pub async fn aws(&self) -> Aws {
        Aws::from_loader(self.loader()).await.expect("clients")
    }

    /// Creates a bucket in the test region.
    pub async fn bucket(&self, aws: &Aws, name: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        aws.s3
            .create_bucket()
            .bucket(name)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .expect("create bucket");
    }

    /// Seeds a Greengrass core device (a device registers itself on AWS; the shim has a route).
    pub fn seed_core_device(&self, thing: &str) {
        ureq::post(&format!(
            "{}/_shim/greengrass/v2/coreDevices/{thing}",
            self.endpoint
        ))
        .send_empty()
        .expect("seed core device");
    }

    /// The server's request log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that an error message is a single line naming all of `needles`.
pub fn assert_one_line(message: &str, needles: &[&str]) {
    assert!(!message.contains('\n'), "error is not one line: {message}");
    for needle in needles {
        assert!(
            message.contains(needle),
            "error lacks {needle:?}: {message}"
        );
    }
}
