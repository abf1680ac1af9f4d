//! Downloads against an in-process HTTP server on 127.0.0.1: full transfer, resume, retries,
//! timeouts, hash mismatch, cache hits, concurrency, offline and unpinned sources.

mod common;

use std::time::Duration;

use common::{fixture, options, sha256sum, Act, Server};
use imgbuild_fetch::{fetch, Cache, EntryKind, FetchError, Source, USER_AGENT};
use tempfile::TempDir;

/// Four MiB and a bit: several chunks, not a round number.
const LEN: usize = 4 * 1024 * 1024 + 123;

/// A server serving one fixture, a scratch dir, and the fixture with its oracle hash.
struct Setup {
    server: Server,
    dir: TempDir,
    data: Vec<u8>,
    sha: String,
    url: String,
}

fn setup(seed: u64) -> Setup {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let data = fixture(LEN, seed);
    let sha = sha256sum(&data, dir.path());
    let url = server.serve("/images/base.img.xz", data.clone());
    Setup {
        server,
        dir,
        data,
        sha,
        url,
    }
}

impl Setup {
    fn source(&self) -> Source {
        Source {
            url: self.url.clone(),
            sha256: Some(self.sha.clone()),
            sha512: None,
            signature: None,
        }
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("cache")
    }

    /// Asserts that the cache holds exactly one download: the fixture, under its hash.
    fn assert_one_good_entry(&self) {
        let cache = Cache::open(self.cache_dir()).unwrap();
        let entries = cache.ls().unwrap();
        assert_eq!(entries.len(), 1, "entries: {entries:?}");
        assert_eq!(entries[0].kind, EntryKind::Download);
        assert_eq!(entries[0].key, self.sha);
        assert_eq!(entries[0].url.as_deref(), Some(self.url.as_str()));
        let stored = std::fs::read(&entries[0].path).unwrap();
        assert_eq!(sha256sum(&stored, self.dir.path()), self.sha);
    }
}

#[test]
fn full_download_lands_in_the_cache_with_user_agent() {
    let s = setup(1);
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert!(!got.from_cache);
    assert!(got.hash_verified);
    assert_eq!(got.sha256, s.sha);
    assert_eq!(got.file_name, "base.img.xz");
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    assert_eq!(s.server.requests(), 1);
    let seen = s.server.seen();
    assert_eq!(seen[0].user_agent.as_deref(), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("imgbuild/"));
    assert_eq!(seen[0].range, None);
    s.assert_one_good_entry();
}

#[test]
fn cache_hit_makes_no_request() {
    let s = setup(2);
    let opts = options(&s.cache_dir());
    let first = fetch(&s.source(), &opts).unwrap();
    assert_eq!(s.server.requests(), 1);
    let second = fetch(&s.source(), &opts).unwrap();
    assert!(second.from_cache);
    assert_eq!(second.path, first.path);
    assert_eq!(
        s.server.requests(),
        1,
        "a cache hit must not touch the network"
    );
    // The hash may be written in upper case in a board file: same entry.
    let mut upper = s.source();
    upper.sha256 = Some(s.sha.to_uppercase());
    assert!(fetch(&upper, &opts).unwrap().from_cache);
    assert_eq!(s.server.requests(), 1);
}

#[test]
fn interrupted_transfer_resumes_with_range() {
    let s = setup(3);
    let cut = 1024 * 1024 + 7;
    s.server.script([Act::Cut(cut)]);
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    let seen = s.server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(seen[1].status, 206);
    // Nothing was fetched twice.
    assert_eq!(s.server.body_bytes(), s.data.len() as u64);
    s.assert_one_good_entry();
}

/// Records the calls a download makes to its progress reporter.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<(String, u64)>>);

impl imgbuild_progress::Progress for Recorder {
    fn start(&self, stage: &str, total: u64) {
        self.0
            .lock()
            .unwrap()
            .push((format!("start {stage}"), total));
    }
    fn set(&self, pos: u64) {
        self.0.lock().unwrap().push(("set".to_owned(), pos));
    }
    fn finish(&self) {
        self.0.lock().unwrap().push(("finish".to_owned(), 0));
    }
}

#[test]
fn an_interrupted_download_reports_its_progress_to_the_reporter_only() {
    let s = setup(13);
    let cut = 1024 * 1024 + 7;
    s.server.script([Act::Cut(cut)]);
    let recorder = std::sync::Arc::new(Recorder::default());
    let mut opts = options(&s.cache_dir());
    opts.progress = imgbuild_progress::Reporter::shared(recorder.clone());
    fetch(&s.source(), &opts).unwrap();
    let calls = recorder.0.lock().unwrap().clone();
    let len = LEN as u64;
    // Each attempt starts the stage with the whole file's size (the second from the server's
    // 206 answer) and its position so far; the bytes are reported up to the end, then finish.
    let starts: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].0.starts_with("start"))
        .collect();
    assert_eq!(starts.len(), 2, "{calls:?}");
    for &i in &starts {
        assert_eq!(calls[i], ("start base.img.xz".to_owned(), len), "{calls:?}");
    }
    assert_eq!(calls[starts[0] + 1], ("set".to_owned(), 0));
    assert_eq!(calls[starts[1] + 1], ("set".to_owned(), cut));
    let sets_before_cut: Vec<u64> = calls[starts[0] + 1..starts[1]]
        .iter()
        .map(|(k, p)| {
            assert_eq!(k, "set");
            *p
        })
        .collect();
    assert!(sets_before_cut.windows(2).all(|w| w[0] <= w[1]));
    assert!(sets_before_cut.last().is_some_and(|&p| p <= cut));
    assert_eq!(calls[calls.len() - 2], ("set".to_owned(), len));
    assert_eq!(calls[calls.len() - 1], ("finish".to_owned(), 0));
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let s = setup(4);
    let cache = Cache::open(s.cache_dir()).unwrap();
    let kept = 3 * 1024 * 1024;
    std::fs::write(cache.part_path(&s.sha), &s.data[..kept]).unwrap();
    let partials = cache.ls().unwrap();
    assert_eq!(partials.len(), 1);
    assert_eq!(partials[0].kind, EntryKind::Partial);

    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    assert_eq!(s.server.body_bytes(), (s.data.len() - kept) as u64);
    assert_eq!(
        s.server.seen()[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    s.assert_one_good_entry();
}

#[test]
fn complete_partial_file_is_finished_on_416() {
    let s = setup(5);
    let cache = Cache::open(s.cache_dir()).unwrap();
    std::fs::write(cache.part_path(&s.sha), &s.data).unwrap();
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(s.server.seen()[0].status, 416);
    assert_eq!(s.server.body_bytes(), 0);
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    s.assert_one_good_entry();
}

#[test]
fn server_ignoring_range_restarts_cleanly() {
    let s = setup(6);
    s.server.ignore_range(true);
    let cut = 2 * 1024 * 1024;
    s.server.script([Act::Cut(cut)]);
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    let seen = s.server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].range.is_some(), "the client asked to resume");
    assert_eq!(seen[1].status, 200, "the server sent everything again");
    assert_eq!(s.server.body_bytes(), cut + s.data.len() as u64);
    s.assert_one_good_entry();
}

#[test]
fn server_error_is_retried() {
    let s = setup(7);
    s.server.script([Act::Error500, Act::Error500]);
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    let statuses: Vec<u16> = s.server.seen().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);
}

#[test]
fn retries_are_bounded() {
    let s = setup(8);
    let mut opts = options(&s.cache_dir());
    opts.retries = 2;
    s.server.script(vec![Act::Error500; 10]);
    let err = fetch(&s.source(), &opts).unwrap_err();
    assert!(
        matches!(err, FetchError::HttpStatus { status: 500, .. }),
        "{err}"
    );
    assert_eq!(s.server.requests(), 3);
    assert!(err.to_string().contains(&s.url));
    assert!(Cache::open(s.cache_dir())
        .unwrap()
        .blob_path(&s.sha)
        .is_none());
}

#[test]
fn not_found_is_not_retried() {
    let s = setup(9);
    let mut source = s.source();
    source.url = format!("http://127.0.0.1:{}/missing.img", s.server.port());
    let err = fetch(&source, &options(&s.cache_dir())).unwrap_err();
    assert!(
        matches!(err, FetchError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert_eq!(s.server.requests(), 1);
    assert!(err.to_string().contains("404"));
}

#[test]
fn stalled_server_times_out() {
    let s = setup(10);
    let mut opts = options(&s.cache_dir());
    opts.read_timeout = Duration::from_secs(1);
    opts.retries = 1;
    let stall = Act::Stall(64 * 1024, Duration::from_secs(4));
    s.server.script([stall.clone(), stall]);
    let err = fetch(&s.source(), &opts).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err}");
    assert_eq!(s.server.requests(), 2);
    let message = err.to_string();
    assert!(
        message.contains(&s.url) && !message.contains('\n'),
        "{message}"
    );
}

#[test]
fn stall_then_good_answer_recovers() {
    let s = setup(11);
    let mut opts = options(&s.cache_dir());
    opts.read_timeout = Duration::from_secs(1);
    s.server
        .script([Act::Stall(100_000, Duration::from_secs(4))]);
    let got = fetch(&s.source(), &opts).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    assert_eq!(s.server.seen()[1].range.as_deref(), Some("bytes=100000-"));
}

#[test]
fn wrong_bytes_fail_the_hash_and_leave_nothing() {
    let s = setup(12);
    s.server.corrupt(true);
    let actual = sha256sum(&common::corrupt(&s.data), s.dir.path());
    let err = fetch(&s.source(), &options(&s.cache_dir())).unwrap_err();
    match &err {
        FetchError::HashMismatch {
            url,
            expected,
            actual: got,
        } => {
            assert_eq!(url, &s.url);
            assert_eq!(expected, &s.sha);
            assert_eq!(got, &actual);
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let message = err.to_string();
    for part in [&s.url, &s.sha, &actual] {
        assert!(message.contains(part.as_str()), "{message}");
    }
    let cache = Cache::open(s.cache_dir()).unwrap();
    assert!(
        cache.ls().unwrap().is_empty(),
        "no blob and no partial may remain"
    );
}

#[test]
fn concurrent_fetches_make_one_good_entry() {
    let s = setup(13);
    let opts = options(&s.cache_dir());
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| fetch(&s.source(), &opts)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fetched: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert!(fetched.iter().all(|f| f.path == fetched[0].path));
    assert_eq!(fetched.iter().filter(|f| !f.from_cache).count(), 1);
    assert_eq!(
        s.server.requests(),
        1,
        "the others waited and hit the cache"
    );
    s.assert_one_good_entry();
}

#[test]
fn offline_miss_fails_without_network() {
    let s = setup(14);
    let mut opts = options(&s.cache_dir());
    opts.offline = true;
    let err = fetch(&s.source(), &opts).unwrap_err();
    assert!(matches!(err, FetchError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("not in cache"));
    assert!(err.to_string().contains("--offline given"));
    assert_eq!(s.server.requests(), 0);

    // Once cached, offline works.
    opts.offline = false;
    fetch(&s.source(), &opts).unwrap();
    opts.offline = true;
    assert!(fetch(&s.source(), &opts).unwrap().from_cache);
    assert_eq!(s.server.requests(), 1);
}

#[test]
fn unpinned_url_is_refused_unless_insecure() {
    let s = setup(15);
    let mut source = s.source();
    source.sha256 = None;
    let mut opts = options(&s.cache_dir());
    let err = fetch(&source, &opts).unwrap_err();
    assert!(matches!(err, FetchError::MissingHash { .. }), "{err}");
    assert!(err.to_string().contains("--insecure-no-verify"));
    assert_eq!(s.server.requests(), 0);

    opts.insecure_no_verify = true;
    let got = fetch(&source, &opts).unwrap();
    assert!(!got.hash_verified);
    assert_eq!(got.sha256, s.sha);
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    s.assert_one_good_entry();
}

#[test]
fn malformed_hash_is_rejected() {
    let s = setup(16);
    let mut source = s.source();
    source.sha256 = Some("abc123".to_string());
    let err = fetch(&source, &options(&s.cache_dir())).unwrap_err();
    assert!(matches!(err, FetchError::BadHash { .. }), "{err}");
    assert_eq!(s.server.requests(), 0);
}

#[test]
fn unreachable_server_says_so_and_suggests_base() {
    let s = setup(17);
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut source = s.source();
    source.url = format!("http://127.0.0.1:{port}/base.img.xz");
    let mut opts = options(&s.cache_dir());
    opts.retries = 1;
    let err = fetch(&source, &opts).unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("unreachable") && message.contains("--base FILE"),
        "{message}"
    );
}

#[test]
fn non_http_url_is_rejected() {
    let s = setup(18);
    let mut source = s.source();
    source.url = "ftp://127.0.0.1/base.img".to_string();
    let err = fetch(&source, &options(&s.cache_dir())).unwrap_err();
    assert!(matches!(err, FetchError::BadUrl { .. }), "{err}");
}

#[test]
fn concurrent_processes_make_one_good_entry() {
    let s = setup(19);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "child_fetch", "--test-threads", "1"])
                .env("IMGBUILD_FETCH_CHILD_URL", &s.url)
                .env("IMGBUILD_FETCH_CHILD_SHA256", &s.sha)
                .env("IMGBUILD_FETCH_CHILD_CACHE", s.cache_dir())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran the fetch: {stdout}"
        );
    }
    assert_eq!(
        s.server.requests(),
        1,
        "one process downloaded, the others hit the cache"
    );
    s.assert_one_good_entry();
}

/// The child processes of `concurrent_processes_make_one_good_entry`: one fetch, parameters from
/// the environment. Run only by that test.
#[test]
#[ignore = "run as a child process by concurrent_processes_make_one_good_entry"]
fn child_fetch() {
    let var = |name: &str| std::env::var(name).expect("set by the parent test");
    let source = Source {
        url: var("IMGBUILD_FETCH_CHILD_URL"),
        sha256: Some(var("IMGBUILD_FETCH_CHILD_SHA256")),
        sha512: None,
        signature: None,
    };
    let got = fetch(
        &source,
        &options(var("IMGBUILD_FETCH_CHILD_CACHE").as_ref()),
    )
    .unwrap();
    assert_eq!(got.sha256, var("IMGBUILD_FETCH_CHILD_SHA256"));
}

#[test]
fn stale_partial_from_an_older_file_is_replaced() {
    let s = setup(20);
    let cache = Cache::open(s.cache_dir()).unwrap();
    let kept = 1024 * 1024;
    // An earlier run fetched the beginning of a different upload at the same URL.
    std::fs::write(cache.part_path(&s.sha), &fixture(LEN, 99)[..kept]).unwrap();
    let got = fetch(&s.source(), &options(&s.cache_dir())).unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    let seen = s.server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(seen[1].range, None, "the second try starts from scratch");
    s.assert_one_good_entry();
}

/// The sha512 of `data` by coreutils' `sha512sum` (the oracle).
fn sha512sum(data: &[u8], scratch: &std::path::Path) -> String {
    let path = scratch.join("sha512sum-input");
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("sha512sum")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::remove_file(&path).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn sha512_pin_downloads_resumes_and_hits_the_cache_by_sha256() {
    let s = setup(21);
    let sha512 = sha512sum(&s.data, s.dir.path());
    let source = Source {
        sha256: None,
        sha512: Some(sha512.to_uppercase()),
        ..s.source()
    };
    // Cut mid-transfer: the resumed bytes are hashed from disk for both digests.
    s.server.script([Act::Cut(1024 * 1024 + 3)]);
    let got = fetch(&source, &options(&s.cache_dir())).unwrap();
    assert!(!got.from_cache && got.hash_verified);
    assert_eq!(got.sha256, s.sha, "cached under the sha256");
    assert_eq!(got.sha512.as_deref(), Some(sha512.as_str()));
    assert_eq!(std::fs::read(&got.path).unwrap(), s.data);
    assert_eq!(s.server.seen().len(), 2);
    s.assert_one_good_entry();
    // A second fetch by the sha512 pin alone is a cache hit: no request.
    let again = fetch(&source, &options(&s.cache_dir())).unwrap();
    assert!(again.from_cache);
    assert_eq!(again.path, got.path);
    assert_eq!(s.server.requests(), 2);
    // So is one pinning both digests.
    let both = Source {
        sha256: Some(s.sha.clone()),
        ..source.clone()
    };
    assert!(fetch(&both, &options(&s.cache_dir())).unwrap().from_cache);
    let mut offline = options(&s.cache_dir());
    offline.offline = true;
    assert!(fetch(&source, &offline).unwrap().from_cache);
}

#[test]
fn wrong_sha512_fails_and_leaves_nothing() {
    let s = setup(22);
    let wrong = sha512sum(b"something else", s.dir.path());
    let actual = sha512sum(&s.data, s.dir.path());
    let source = Source {
        sha256: None,
        sha512: Some(wrong.clone()),
        ..s.source()
    };
    let err = fetch(&source, &options(&s.cache_dir())).unwrap_err();
    match &err {
        FetchError::Sha512Mismatch {
            expected,
            actual: got,
            ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(got, &actual);
        }
        other => panic!("expected a sha512 mismatch, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("sha512 mismatch") && !text.contains('\n'),
        "{text}"
    );
    let cache = Cache::open(s.cache_dir()).unwrap();
    assert!(cache.ls().unwrap().is_empty(), "nothing kept");
    // The right sha256 with a wrong sha512 is refused too: both pins are checked.
    let both = Source {
        sha256: Some(s.sha.clone()),
        ..source
    };
    assert!(matches!(
        fetch(&both, &options(&s.cache_dir())),
        Err(FetchError::Sha512Mismatch { .. })
    ));
    let bad = Source {
        sha512: Some("abc".into()),
        ..s.source()
    };
    assert!(matches!(
        fetch(&bad, &options(&s.cache_dir())),
        Err(FetchError::BadSha512 { .. })
    ));
}
