//! Pre-seeding against the real Debian archive (bookworm, arm64), with real apt, dpkg-deb and
//! sha256sum as oracles. Needs the Debian archive reachable over HTTP (the host's mirror from
//! its apt sources, else deb.debian.org) and the Debian packages apt, dpkg and coreutils.

use imgbuild_core::preseed::{image_sources, resolve_debs, Deb, DebRequest};
use imgbuild_testkit::run_ok;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use tempfile::TempDir;

const ARCH: &str = "arm64";
/// What first boot installs for `DOCKER_FLAVOR=debian` and the default Java (firstboot/README.md).
const FIRSTBOOT_PACKAGES: &[&str] = &[
    "docker.io",
    "openjdk-17-jre-headless",
    "sudo",
    "unzip",
    "curl",
    "ca-certificates",
];

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn request<'a>(
    packages: &'a [String],
    dpkg_status: &'a [u8],
    sources: &'a str,
    cache_dir: &'a Path,
    offline: bool,
) -> DebRequest<'a> {
    DebRequest {
        packages,
        dpkg_status,
        sources,
        arch: ARCH,
        cache_dir,
        offline,
    }
}

// ---------------------------------------------------------------------------------------------
// The Debian mirror this machine uses.

/// The host's Debian mirror as `http://HOST[:PORT]/PATH` (no trailing slash), read from its apt
/// sources with `image_sources`; deb.debian.org when the host has no plain-HTTP Debian source.
fn host_mirror() -> String {
    let list = std::fs::read_to_string("/etc/apt/sources.list").ok();
    let parts: Vec<(String, String)> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::read_to_string(e.path()).ok().map(|t| (name, t))
        })
        .collect();
    image_sources(list.as_deref(), &parts)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let uri = words.iter().find(|w| w.starts_with("http://"))?;
            let suite_index = words.iter().position(|w| w == uri)? + 1;
            (words.get(suite_index) == Some(&"bookworm"))
                .then(|| uri.trim_end_matches('/').to_string())
        })
        .next()
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// `deb MIRROR bookworm main`: one index, so the versions a status takes from it are apt's
/// candidates.
fn bookworm_main(mirror: &str) -> String {
    format!("deb {mirror} bookworm main\n")
}

// ---------------------------------------------------------------------------------------------
// Shared fixture: the first-boot packages resolved once online (empty status), then against a
// minimal system's status offline.

struct Fixture {
    cache: TempDir,
    sources: String,
    /// Resolved against an empty dpkg status.
    empty_status_debs: Vec<Deb>,
    /// A minbase-like status (Priority: required and its dependencies) built from the index.
    minimal_status: Vec<u8>,
    minimal_status_packages: BTreeSet<String>,
    /// Resolved against `minimal_status`, offline.
    minimal_debs: Vec<Deb>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    match FIXTURE.get_or_init(build_fixture) {
        Ok(f) => f,
        Err(e) => panic!("fixture: {e}"),
    }
}

fn build_fixture() -> Result<Fixture, String> {
    let cache = TempDir::new().map_err(|e| e.to_string())?;
    let sources = bookworm_main(&host_mirror());
    let packages = strings(FIRSTBOOT_PACKAGES);
    let empty_status_debs = resolve_debs(&request(&packages, b"", &sources, cache.path(), false))
        .map_err(|e| e.to_string())?;
    let index = read_packages_index(cache.path());
    let (minimal_status, minimal_status_packages) = minbase_status(&index);
    let minimal_debs = resolve_debs(&request(
        &packages,
        &minimal_status,
        &sources,
        cache.path(),
        true,
    ))
    .map_err(|e| e.to_string())?;
    eprintln!(
        "preseed fixture: empty status {} debs {} bytes; minimal status ({} packages) {} debs {} bytes",
        empty_status_debs.len(),
        total_size(&empty_status_debs),
        minimal_status_packages.len(),
        minimal_debs.len(),
        total_size(&minimal_debs)
    );
    Ok(Fixture {
        cache,
        sources,
        empty_status_debs,
        minimal_status,
        minimal_status_packages,
        minimal_debs,
    })
}

fn total_size(debs: &[Deb]) -> u64 {
    debs.iter().map(|d| d.size).sum()
}

/// The arm64 `Packages` index apt cached (cache layout documented in `preseed`).
fn read_packages_index(cache: &Path) -> String {
    let lists = cache.join("lists");
    let file = std::fs::read_dir(&lists)
        .unwrap_or_else(|e| panic!("{}: {e}", lists.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("_binary-arm64_Packages"))
        .unwrap_or_else(|| panic!("no arm64 Packages list in {}", lists.display()));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// Index paragraphs by package name, and the first provider of each virtual package.
fn index_by_name(index: &str) -> (BTreeMap<&str, &str>, BTreeMap<&str, &str>) {
    let mut packages = BTreeMap::new();
    let mut providers = BTreeMap::new();
    for para in index.split("\n\n") {
        let Some(name) = field(para, "Package") else {
            continue;
        };
        packages.insert(name, para);
        for provided in field(para, "Provides")
            .into_iter()
            .flat_map(|v| v.split(','))
        {
            if let Some(virt) = provided.split_whitespace().next() {
                providers.entry(virt).or_insert(name);
            }
        }
    }
    (packages, providers)
}

fn field<'a>(para: &'a str, name: &str) -> Option<&'a str> {
    para.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

/// A dpkg status like debootstrap's minbase: every `Priority: required` package plus its
/// Depends/Pre-Depends (first alternative), installed at the index's version.
fn minbase_status(index: &str) -> (Vec<u8>, BTreeSet<String>) {
    let (packages, providers) = index_by_name(index);
    let mut todo: Vec<&str> = packages
        .iter()
        .filter(|(_, p)| field(p, "Priority") == Some("required"))
        .map(|(n, _)| *n)
        .collect();
    let mut installed = BTreeSet::new();
    while let Some(name) = todo.pop() {
        let Some(para) = packages.get(name) else {
            continue;
        };
        if !installed.insert(name.to_string()) {
            continue;
        }
        let deps = ["Depends", "Pre-Depends"]
            .into_iter()
            .filter_map(|f| field(para, f));
        for dep in deps.flat_map(|d| d.split(',')) {
            let first = dep
                .split('|')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next()
                .unwrap_or("");
            let first = first.split(':').next().unwrap_or("");
            let real = if packages.contains_key(first) {
                Some(first)
            } else {
                providers.get(first).copied()
            };
            todo.extend(real);
        }
    }
    let mut status = String::new();
    for name in &installed {
        let para = packages[name.as_str()];
        let (head, rest) = para.split_once('\n').unwrap_or((para, ""));
        status.push_str(&format!("{head}\nStatus: install ok installed\n{rest}\n\n"));
    }
    (status.into_bytes(), installed)
}

// ---------------------------------------------------------------------------------------------
// Oracles.

/// `dpkg-deb -f FILE Package Version Architecture`.
fn control(deb: &Path) -> BTreeMap<String, String> {
    let out = run_ok(Command::new("dpkg-deb").arg("-f").arg(deb).args([
        "Package",
        "Version",
        "Architecture",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sha256sum(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// The package name of an archive file name `name_version_arch.deb`.
fn package_name(deb: &Deb) -> &str {
    deb.file_name.split('_').next().unwrap_or("")
}

/// Runs real apt, as first boot does (`apt-get install --no-download` of the files) but
/// simulated, against `status` with no package sources at all; returns how many packages apt
/// would install, or its complaint.
fn simulate_firstboot_install(status: &[u8], debs: &[Deb]) -> Result<usize, String> {
    let dir = TempDir::new().map_err(|e| e.to_string())?;
    let d = dir.path();
    for sub in [
        "etc/apt.conf.d",
        "etc/sources.list.d",
        "etc/preferences.d",
        "lists/partial",
        "cache/archives/partial",
    ] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::write(d.join("etc/sources.list"), "").map_err(|e| e.to_string())?;
    std::fs::write(d.join("status"), status).map_err(|e| e.to_string())?;
    let conf = format!(
        "Dir::Etc \"{0}/etc/\"; Dir::Etc::Parts \"apt.conf.d\"; Dir::Etc::Main \"/dev/null\";\n\
         Dir::State \"{0}/\"; Dir::State::Lists \"{0}/lists/\"; Dir::State::status \"{0}/status\";\n\
         Dir::Cache \"{0}/cache/\"; Dir::Cache::pkgcache \"\"; Dir::Cache::srcpkgcache \"\";\n\
         APT::Architecture \"{ARCH}\"; APT::Architectures {{ \"{ARCH}\"; }}; Debug::NoLocking \"true\";\n",
        d.display()
    );
    std::fs::write(d.join("apt.conf"), conf).map_err(|e| e.to_string())?;
    let out = Command::new("apt-get")
        .env("APT_CONFIG", d.join("apt.conf"))
        .env("LC_ALL", "C")
        .args([
            "-s",
            "-y",
            "--no-download",
            "--no-install-recommends",
            "install",
        ])
        .args(debs.iter().map(|d| &d.path))
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(stdout.lines().filter(|l| l.starts_with("Inst ")).count())
}

/// Every returned file: what dpkg-deb reads from it matches its name, it is arm64 or all, its
/// SHA-256 (per sha256sum) and size are the reported ones, and it lives in the cache.
fn assert_debs_genuine(debs: &[Deb], cache: &Path) {
    let cache = std::fs::canonicalize(cache).unwrap_or_else(|e| panic!("{}: {e}", cache.display()));
    for deb in debs {
        let c = control(&deb.path);
        let quoted_version = c["Version"].replace(':', "%3a");
        assert_eq!(
            deb.file_name,
            format!(
                "{}_{}_{}.deb",
                c["Package"], quoted_version, c["Architecture"]
            ),
            "{deb:?}"
        );
        assert!(
            ["arm64", "all"].contains(&c["Architecture"].as_str()),
            "{deb:?}: {c:?}"
        );
        assert_eq!(deb.sha256, sha256sum(&deb.path), "{deb:?}");
        assert_eq!(
            deb.size,
            std::fs::metadata(&deb.path).map(|m| m.len()).unwrap_or(0),
            "{deb:?}"
        );
        assert!(
            deb.path.starts_with(&cache),
            "{deb:?} not in {}",
            cache.display()
        );
    }
    let names: Vec<&str> = debs.iter().map(|d| d.file_name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "not sorted or not unique");
}

// ---------------------------------------------------------------------------------------------
// Online resolution.

#[test]
fn resolves_firstboot_packages_with_all_dependencies() {
    let f = fixture();
    let names: BTreeSet<&str> = f.empty_status_debs.iter().map(package_name).collect();
    for wanted in FIRSTBOOT_PACKAGES.iter().chain(&["containerd", "runc"]) {
        assert!(names.contains(wanted), "{wanted} missing from {names:?}");
    }
    assert_debs_genuine(&f.empty_status_debs, f.cache.path());
    let installs = simulate_firstboot_install(b"", &f.empty_status_debs);
    assert_eq!(
        installs,
        Ok(f.empty_status_debs.len()),
        "set is not self-contained"
    );
}

#[test]
fn installed_packages_are_not_returned_even_when_cached() {
    let f = fixture();
    let cached_but_installed: Vec<&str> = f
        .empty_status_debs
        .iter()
        .map(package_name)
        .filter(|n| f.minimal_status_packages.contains(*n))
        .collect();
    assert!(
        !cached_but_installed.is_empty(),
        "the test needs installed packages that are cached"
    );
    for deb in &f.minimal_debs {
        assert!(
            !f.minimal_status_packages.contains(package_name(deb)),
            "{deb:?} is installed"
        );
        assert!(
            f.empty_status_debs.contains(deb),
            "{deb:?} not in the empty-status set"
        );
    }
    let names: BTreeSet<&str> = f.minimal_debs.iter().map(package_name).collect();
    for wanted in FIRSTBOOT_PACKAGES {
        assert!(
            names.contains(wanted) || f.minimal_status_packages.contains(*wanted),
            "{wanted}"
        );
    }
    assert_debs_genuine(&f.minimal_debs, f.cache.path());
    let installs = simulate_firstboot_install(&f.minimal_status, &f.minimal_debs);
    assert_eq!(
        installs,
        Ok(f.minimal_debs.len()),
        "set does not complete the minimal system"
    );
}

#[test]
fn unknown_package_is_named_in_the_error() {
    let f = fixture();
    let packages = strings(&["docker.io", "imgbuild-no-such-package"]);
    let req = request(
        &packages,
        &f.minimal_status,
        &f.sources,
        f.cache.path(),
        true,
    );
    let err = resolve_debs(&req)
        .expect_err("unknown package accepted")
        .to_string();
    assert!(err.contains("'imgbuild-no-such-package'"), "{err}");
    assert!(!err.contains("'docker.io'"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn empty_package_list_needs_nothing() {
    let cache = TempDir::new().expect("tempdir");
    let req = request(
        &[],
        b"",
        "deb http://127.0.0.1:9/debian bookworm main\n",
        cache.path(),
        true,
    );
    assert_eq!(
        resolve_debs(&req).map_err(|e| e.to_string()),
        Ok(Vec::new())
    );
}

// ---------------------------------------------------------------------------------------------
// Offline use and network failures, through a local forwarder to the mirror that is then shut.

/// A plain HTTP forwarder on 127.0.0.1 to the mirror's host, counting requests.
struct Forwarder {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(upstream_host: String) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let host = upstream_host.clone();
                std::thread::spawn(move || forward_one(conn, &host));
            }
        });
        Forwarder {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the port: connections are refused from now on.
    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards one request (the first on the connection) to `host` port 80 and relays the answer;
/// `Connection: close` makes apt open a new connection for the next one.
fn forward_one(mut client: TcpStream, host: &str) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut request = format!("{request_line}\r\nHost: {host}\r\nConnection: close\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        if !["host", "connection", "keep-alive"].contains(&name.as_str()) {
            request.push_str(l);
            request.push_str("\r\n");
        }
    }
    request.push_str("\r\n");
    let Ok(mut upstream) = TcpStream::connect((host, 80)) else {
        return;
    };
    if upstream.write_all(request.as_bytes()).is_ok() {
        let _ = std::io::copy(&mut upstream, &mut client);
    }
}

#[test]
fn offline_run_uses_the_cache_and_no_network() {
    let mirror = host_mirror();
    let rest = mirror.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut fwd = Forwarder::start(host.to_string());
    let sources = format!(
        "# through the forwarder\n{}",
        bookworm_main(&format!("http://{}/{path}", fwd.addr))
    );
    let cache = TempDir::new().expect("tempdir");
    let packages = strings(&["unzip"]);
    let req = |offline| request(&packages, b"", &sources, cache.path(), offline);
    let online = resolve_debs(&req(false)).unwrap_or_else(|e| panic!("online: {e}"));
    assert!(
        fwd.requests.load(Ordering::SeqCst) > 0,
        "nothing went through the forwarder"
    );
    assert!(
        online.iter().any(|d| package_name(d) == "unzip"),
        "{online:?}"
    );
    fwd.shut();

    let err = resolve_debs(&req(false))
        .expect_err("online without network")
        .to_string();
    assert!(err.contains("--offline") && !err.contains('\n'), "{err}");

    let offline = resolve_debs(&req(true)).unwrap_or_else(|e| panic!("offline: {e}"));
    assert_eq!(offline, online);
    assert_debs_genuine(&offline, cache.path());
}

#[test]
fn offline_with_a_cold_cache_fails() {
    let cache = TempDir::new().expect("tempdir");
    let packages = strings(&["unzip"]);
    let req = request(
        &packages,
        b"",
        "deb http://127.0.0.1:9/debian bookworm main\n",
        cache.path(),
        true,
    );
    let err = resolve_debs(&req)
        .expect_err("cold cache accepted")
        .to_string();
    assert!(
        err.contains("without --offline") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn offline_with_a_missing_deb_fails() {
    let f = fixture();
    // A private copy of the warm cache whose archive lacks one needed file.
    let cache = TempDir::new().expect("tempdir");
    let copy = |sub: &str| {
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(f.cache.path().join(sub))
                .arg(cache.path()),
        );
    };
    copy("lists");
    copy("archives");
    let victim = &f.minimal_debs[0];
    std::fs::remove_file(cache.path().join("archives").join(&victim.file_name)).expect("remove");
    let packages = strings(FIRSTBOOT_PACKAGES);
    let req = request(&packages, &f.minimal_status, &f.sources, cache.path(), true);
    let err = resolve_debs(&req)
        .expect_err("missing deb accepted")
        .to_string();
    assert!(
        err.contains(&victim.file_name) && err.contains("without --offline"),
        "{err}"
    );
}

#[test]
fn tampered_cached_deb_is_refused() {
    let f = fixture();
    let cache = TempDir::new().expect("tempdir");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(f.cache.path().join("lists"))
            .arg(cache.path()),
    );
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(f.cache.path().join("archives"))
            .arg(cache.path()),
    );
    let victim = cache
        .path()
        .join("archives")
        .join(&f.minimal_debs[0].file_name);
    let mut bytes = std::fs::read(&victim).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).expect("write");
    let packages = strings(FIRSTBOOT_PACKAGES);
    let req = request(&packages, &f.minimal_status, &f.sources, cache.path(), true);
    let err = resolve_debs(&req)
        .expect_err("tampered deb accepted")
        .to_string();
    assert!(
        err.contains(&f.minimal_debs[0].file_name) && err.contains("SHA-256"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Input checks (no network).

fn request_error(sources: &str, packages: &[&str], arch: &str) -> String {
    let cache = TempDir::new().expect("tempdir");
    let packages = strings(packages);
    let req = DebRequest {
        packages: &packages,
        dpkg_status: b"",
        sources,
        arch,
        cache_dir: cache.path(),
        offline: true,
    };
    let err = resolve_debs(&req)
        .expect_err("bad request accepted")
        .to_string();
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn sources_that_disable_signature_checks_are_refused() {
    for opt in ["trusted=yes", "allow-insecure=yes", "allow-weak=yes"] {
        let err = request_error(
            &format!("deb [{opt}] http://127.0.0.1:9/debian bookworm main"),
            &["unzip"],
            ARCH,
        );
        assert!(err.contains(opt), "{err}");
    }
    let err = request_error(
        "deb [signed-by=/nonexistent/imgbuild-key.gpg] http://127.0.0.1:9/debian bookworm main",
        &["unzip"],
        ARCH,
    );
    assert!(err.contains("/nonexistent/imgbuild-key.gpg"), "{err}");
}

#[test]
fn malformed_requests_are_refused() {
    let err = request_error("deb http://127.0.0.1:9/debian", &["unzip"], ARCH);
    assert!(err.contains("sources line 1"), "{err}");
    let err = request_error(
        "# only a comment\ndeb-src http://127.0.0.1:9/debian bookworm main",
        &["unzip"],
        ARCH,
    );
    assert!(err.contains("no 'deb' line"), "{err}");
    let err = request_error(
        "deb http://127.0.0.1:9/debian bookworm main",
        &["--allow-unauthenticated"],
        ARCH,
    );
    assert!(err.contains("--allow-unauthenticated"), "{err}");
    let err = request_error(
        "deb http://127.0.0.1:9/debian bookworm main",
        &["unzip"],
        "ARM 64",
    );
    assert!(err.contains("ARM 64"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// image_sources, with apt itself as the oracle: `apt-get update --print-uris` (no network) must
// list the same index files for the image's files and for the one-line conversion.

/// The index URIs apt would fetch for a sources.list and sources.list.d.
fn apt_index_uris(list: &str, parts: &[(String, String)]) -> Vec<String> {
    let dir = TempDir::new().expect("tempdir");
    let d = dir.path();
    for sub in [
        "etc/apt.conf.d",
        "etc/sources.list.d",
        "lists/partial",
        "cache",
    ] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    std::fs::write(d.join("etc/sources.list"), list).expect("write");
    for (name, text) in parts {
        std::fs::write(d.join("etc/sources.list.d").join(name), text).expect("write");
    }
    let conf = format!(
        "Dir::Etc \"{0}/etc/\"; Dir::Etc::Parts \"apt.conf.d\"; Dir::Etc::Main \"/dev/null\";\n\
         Dir::State \"{0}/\"; Dir::State::Lists \"{0}/lists/\"; Dir::Cache \"{0}/cache/\";\n\
         Dir::Cache::pkgcache \"\"; Dir::Cache::srcpkgcache \"\"; Acquire::Languages \"none\";\n\
         APT::Architecture \"{ARCH}\"; APT::Architectures {{ \"{ARCH}\"; \"amd64\"; }}; Debug::NoLocking \"true\";\n",
        d.display()
    );
    std::fs::write(d.join("apt.conf"), conf).expect("write");
    let out = run_ok(
        Command::new("apt-get")
            .env("APT_CONFIG", d.join("apt.conf"))
            .env("LC_ALL", "C")
            .args(["update", "--print-uris"]),
    );
    let mut uris: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    uris.sort();
    uris
}

/// The URIs of binary package indexes and of the Release files they belong to: what remains of
/// apt's list once the deb-src entries are gone.
fn binary_indexes(uris: Vec<String>) -> Vec<String> {
    let packages: Vec<&String> = uris.iter().filter(|u| u.contains("Packages")).collect();
    let dir_of = |u: &str| u.rsplit_once("/InRelease").map(|(d, _)| format!("{d}/"));
    uris.iter()
        .filter(|u| {
            u.contains("Packages")
                || dir_of(u).is_some_and(|d| packages.iter().any(|p| p.starts_with(&d)))
        })
        .cloned()
        .collect()
}

fn image_fixture() -> (String, Vec<(String, String)>) {
    let list = "# Debian\n\
                deb http://deb.debian.org/debian bookworm main contrib # trailing comment\n\
                deb-src http://deb.debian.org/debian bookworm main\n\
                deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main\n";
    let parts = vec![
        (
            "raspi.list".to_string(),
            "deb http://archive.raspberrypi.com/debian/ bookworm main\n#deb-src http://archive.raspberrypi.com/debian/ bookworm main\n".to_string(),
        ),
        (
            "debian.sources".to_string(),
            "# deb822\nTypes: deb deb-src\nURIs: http://deb.debian.org/debian https://mirror.example/debian\n\
             Suites: bookworm-updates bookworm-backports\nComponents: main non-free-firmware\n\
             Architectures: amd64\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nEnabled: no\n\n\
             Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\n\n\
             types: deb\nuris: http://flat.example/repo\nsuites: ./\n"
                .to_string(),
        ),
        ("old.list.disabled".to_string(), "deb http://disabled.example/debian bookworm main\n".to_string()),
    ];
    (list.to_string(), parts)
}

#[test]
fn image_sources_converts_to_what_apt_reads_from_the_image() {
    let (list, parts) = image_fixture();
    let one_line = image_sources(Some(&list), &parts);
    let from_image = binary_indexes(apt_index_uris(&list, &parts));
    let from_one_line = apt_index_uris(&one_line, &[]);
    assert!(from_image.len() > 8, "{from_image:?}");
    assert_eq!(from_one_line, from_image, "one-line form:\n{one_line}");
    assert!(
        !one_line.contains("deb-src") && !one_line.contains('#'),
        "{one_line}"
    );
    assert!(
        !one_line.contains("disabled.example") && !one_line.contains("trixie"),
        "{one_line}"
    );
}

#[test]
fn image_sources_is_ordered_by_file_name() {
    let (list, mut parts) = image_fixture();
    let forward = image_sources(Some(&list), &parts);
    parts.reverse();
    assert_eq!(image_sources(Some(&list), &parts), forward);
    let lines: Vec<&str> = forward.lines().collect();
    let first_d = lines
        .iter()
        .position(|l| l.contains("bookworm-updates"))
        .unwrap_or(usize::MAX);
    let raspi = lines
        .iter()
        .position(|l| l.contains("raspberrypi"))
        .unwrap_or(0);
    assert!(
        first_d < raspi,
        "debian.sources before raspi.list:\n{forward}"
    );
    assert!(
        lines[0].contains("bookworm main contrib"),
        "sources.list first:\n{forward}"
    );
}

#[test]
fn image_sources_survives_garbage() {
    let garbage = "deb [arch=arm64\n\u{0}\u{7f}deb\n[\n:::\nTypes: deb\nURIs:\n \n\u{fffd}: x\n";
    let parts = vec![
        ("x.sources".to_string(), garbage.to_string()),
        ("y.list".to_string(), garbage.to_string()),
    ];
    assert_eq!(image_sources(Some(garbage), &parts), "");
    assert_eq!(image_sources(None, &[]), "");
}
