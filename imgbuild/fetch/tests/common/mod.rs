//! Test support: a small HTTP/1.1 server on 127.0.0.1 with scripted misbehaviour, fixtures, and
//! an independent sha256 oracle (`sha256sum`).

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use imgbuild_fetch::Options;

/// What the server does with one response (consumed in order; `Normal` once the script is empty).
#[derive(Debug, Clone)]
pub enum Act {
    /// Serve the file (honouring Range unless told otherwise).
    Normal,
    /// Send the headers and this many body bytes, then close the connection.
    Cut(u64),
    /// Answer 500 Internal Server Error.
    Error500,
    /// Send the headers and this many body bytes, then go silent for the duration and close.
    Stall(u64, Duration),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request target (a path, or an absolute URL when the client talks to a proxy).
    pub target: String,
    /// The Range header, if any.
    pub range: Option<String>,
    /// The User-Agent header, if any.
    pub user_agent: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct State {
    files: Mutex<HashMap<String, Vec<u8>>>,
    script: Mutex<VecDeque<Act>>,
    ignore_range: AtomicBool,
    corrupt: AtomicBool,
    requests: AtomicUsize,
    body_bytes: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// The test server; stops accepting when dropped.
pub struct Server {
    port: u16,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on an ephemeral 127.0.0.1 port.
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let state = state.clone();
                        std::thread::spawn(move || handle(conn, &state));
                    }
                }
            })
        };
        Server {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves `data` at `path` (starting with `/`) and returns its URL.
    pub fn serve(&self, path: &str, data: Vec<u8>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), data);
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Queues scripted behaviours for the next responses.
    pub fn script(&self, acts: impl IntoIterator<Item = Act>) {
        self.state.script.lock().unwrap().extend(acts);
    }

    /// Answer Range requests with the whole file (200).
    pub fn ignore_range(&self, on: bool) {
        self.state.ignore_range.store(on, Ordering::SeqCst);
    }

    /// Serve corrupted bytes (see [`corrupt`]).
    pub fn corrupt(&self, on: bool) {
        self.state.corrupt.store(on, Ordering::SeqCst);
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Body bytes written to clients so far.
    pub fn body_bytes(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// The bytes the server sends in corrupt mode: every 4099th byte flipped.
pub fn corrupt(data: &[u8]) -> Vec<u8> {
    data.iter()
        .enumerate()
        .map(|(i, b)| if i % 4099 == 0 { !b } else { *b })
        .collect()
}

/// `len` bytes of deterministic, incompressible-looking data (xorshift) seeded by `seed`.
pub fn fixture(len: usize, seed: u64) -> Vec<u8> {
    imgbuild_testkit::xorshift_bytes(seed, len)
}

/// The sha256 of `data` according to coreutils' `sha256sum` (an oracle independent of the crate).
pub fn sha256sum(data: &[u8], scratch: &Path) -> String {
    let path = scratch.join("sha256sum-input");
    std::fs::write(&path, data).expect("write oracle input");
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let hash = text.split_whitespace().next().expect("hash").to_string();
    std::fs::remove_file(&path).expect("remove oracle input");
    hash
}

/// Options for tests: the given cache, no progress reports, quick retries, short timeouts.
pub fn options(cache_dir: &Path) -> Options {
    let mut opts = Options::new(cache_dir);
    opts.retries = 3;
    opts.backoff = Duration::from_millis(10);
    opts.connect_timeout = Duration::from_secs(5);
    opts.read_timeout = Duration::from_secs(10);
    opts
}

/// Handles one connection (one request; the server always closes afterwards).
fn handle(mut conn: TcpStream, state: &State) {
    let Some(request) = read_request(&conn) else {
        return;
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    let act = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Act::Normal);
    let path = request
        .target
        .rsplit_once("://")
        .map_or(request.target.as_str(), |(_, rest)| {
            rest.find('/').map_or("/", |i| &rest[i..])
        });
    let file = state.files.lock().unwrap().get(path).cloned();
    let (status, head, body) = match (&act, file) {
        (Act::Error500, _) => (500, String::new(), Vec::new()),
        (_, None) => (404, String::new(), Vec::new()),
        (_, Some(mut data)) => {
            if state.corrupt.load(Ordering::SeqCst) {
                data = corrupt(&data);
            }
            respond_with(&data, request.range.as_deref(), state)
        }
    };
    state.seen.lock().unwrap().push(Seen {
        target: request.target.clone(),
        range: request.range.clone(),
        user_agent: request.user_agent.clone(),
        status,
    });
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    };
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{head}Connection: close\r\n\r\n",
        body.len()
    );
    if conn.write_all(header.as_bytes()).is_err() {
        return;
    }
    let limit = match act {
        Act::Cut(n) | Act::Stall(n, _) => (n as usize).min(body.len()),
        _ => body.len(),
    };
    if conn.write_all(&body[..limit]).is_ok() {
        state.body_bytes.fetch_add(limit as u64, Ordering::SeqCst);
    }
    let _ = conn.flush();
    if let Act::Stall(_, pause) = act {
        std::thread::sleep(pause);
    }
    // A clean FIN (no unread input is left, so no RST that could discard data in flight).
    let _ = conn.shutdown(Shutdown::Write);
}

/// The parsed parts of a request that the tests care about.
struct Request {
    target: String,
    range: Option<String>,
    user_agent: Option<String>,
}

/// Reads the request line and headers.
fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let (mut range, mut user_agent) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = Some(value.trim().to_string());
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = value,
                "user-agent" => user_agent = value,
                _ => {}
            }
        }
    }
    Some(Request {
        target,
        range,
        user_agent,
    })
}

/// Status, extra headers and body for serving `data` with an optional `Range: bytes=N-`.
fn respond_with(data: &[u8], range: Option<&str>, state: &State) -> (u16, String, Vec<u8>) {
    let start = range
        .filter(|_| !state.ignore_range.load(Ordering::SeqCst))
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match start {
        None => (200, String::new(), data.to_vec()),
        Some(start) if start >= data.len() => (
            416,
            format!("Content-Range: bytes */{}\r\n", data.len()),
            Vec::new(),
        ),
        Some(start) => (
            206,
            format!(
                "Content-Range: bytes {start}-{}/{}\r\n",
                data.len() - 1,
                data.len()
            ),
            data[start..].to_vec(),
        ),
    }
}
