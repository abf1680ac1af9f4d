//! A private AWS emulator for tests: moto server (pinned, from PyPI) plus the project's shim
//! (`tests/cloud/moto_shim.py`, which adds IoT fleet-provisioning templates and Greengrass v2),
//! on 127.0.0.1 and a free port, stopped when dropped.
//!
//! The Python virtual environment is `$MOTO_VENV` or `<workspace>/target-cloud-venv`; it is
//! created with `tests/cloud/moto.sh setup` the first time it is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python (with moto and boto3), set up once per test process.
pub fn python() -> PathBuf {
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

    /// The environment a process needs to reach this server through the standard AWS chain
    /// (fixed test credentials, region eu-west-1, `AWS_ENDPOINT_URL`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "eu-west-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// Runs a Python snippet with boto3 against this server (an independent client to seed
    /// and read back state; `s3` and `iot` clients are predefined, `sys.argv[2..]` are `args`).
    /// Panics with the script's stderr if it fails.
    pub fn boto3(&self, script: &str, args: &[&str]) -> Output {
        let prelude = "import boto3, json, sys\n\
             def client(name):\n    \
                 return boto3.client(name, region_name='eu-west-1', endpoint_url=sys.argv[1], \
                 aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             s3, iot = client('s3'), client('iot')\n";
        let out = Command::new(python())
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .arg(&self.endpoint)
            .args(args)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
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
