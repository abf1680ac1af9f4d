//! Pre-seeded packages: the arm64 `.deb` files (with every dependency the image lacks) that first
//! boot installs from `/var/lib/imgbuild/preseed/debs/` with every package source switched off.
//!
//! [`resolve_debs`] runs the host's own `apt-get` with a private configuration, as an ordinary
//! user, without touching the host's apt state: the host's `apt.conf.d`, sources, preferences and
//! caches are never read or written. apt resolves against the *image's* dpkg status, so only
//! what the image is missing is downloaded, and verifies every repository's signature with the
//! host's Debian archive keyring (or the keyring a source's `signed-by=` names).
//!
//! The cache directory is reusable between builds (and required for offline builds):
//! - `lists/`: apt's package lists, refreshed on every online run;
//! - `archives/`: the downloaded `.deb` files (old versions are kept; delete them at will);
//! - `lock`: held while a run uses the cache, so concurrent builds take turns.

use crate::error::{Context, Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What to pre-seed and for which image.
#[derive(Debug, Clone, Copy)]
pub struct DebRequest<'a> {
    /// Packages to install, as `apt-get install` takes them (`name`, `name=version`).
    pub packages: &'a [String],
    /// The image's `/var/lib/dpkg/status`: what is already installed.
    pub dpkg_status: &'a [u8],
    /// One-line-style `sources.list` content (`deb [options] URI suite components...`);
    /// see [`image_sources`]. `deb-src` lines, blank lines and comments are ignored.
    pub sources: &'a str,
    /// The image's dpkg architecture, e.g. `arm64`.
    pub arch: &'a str,
    /// Persistent cache of package lists and downloaded `.deb` files.
    pub cache_dir: &'a Path,
    /// Use only the cache: no `apt-get update`, no download; fails when something is missing.
    pub offline: bool,
}

/// One resolved package file, verified against the signed package index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    /// apt's archive file name, `name_version_arch.deb` (an epoch's `:` written `%3a`).
    pub file_name: String,
    /// The file in the cache's `archives/`.
    pub path: PathBuf,
    /// SHA-256 of the file, lowercase hex (equal to the package index's).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The keyring trusted for sources without `signed-by=`.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Source options that would turn signature checks off: refused.
const INSECURE_OPTIONS: &[&str] = &[
    "trusted",
    "allow-insecure",
    "allow-weak",
    "allow-downgrade-to-insecure",
];

/// Resolves `req.packages` with all their dependencies missing from the image, downloads them
/// into `req.cache_dir/archives` (unless `req.offline`), checks each file's SHA-256 and size
/// against the package index, checks that apt can install the whole set on the image without
/// network, and returns the files sorted by name. An empty package list returns an empty set.
pub fn resolve_debs(req: &DebRequest) -> Result<Vec<Deb>> {
    validate_request(req)?;
    if req.packages.is_empty() {
        return Ok(Vec::new());
    }
    let sources = parse_sources(req.sources)?;
    check_sources_trust(&sources)?;
    let cache = Cache::open(req.cache_dir)?;
    let rendered: String = sources.iter().map(|s| s.render() + "\n").collect();
    let apt = Apt::new(req.arch, req.dpkg_status, &rendered, &cache)?;
    if req.offline {
        cache.require_lists()?;
    } else {
        apt.update(&cache)?;
    }
    let wanted = apt.print_uris(req.packages, req.offline)?;
    if !req.offline && !wanted.is_empty() {
        apt.download(req.packages, &cache)?;
    }
    let hashes = apt.index_sha256(&wanted)?;
    let mut debs = wanted
        .iter()
        .map(|w| checked_deb(w, &hashes, &cache, req.offline))
        .collect::<Result<Vec<_>>>()?;
    debs.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Apt::new(req.arch, req.dpkg_status, "", &cache)?.check_installable(&debs)?;
    Ok(debs)
}

/// Turns an image's apt sources (the contents of `/etc/apt/sources.list`, and the
/// `(file name, contents)` of the files in `/etc/apt/sources.list.d/`) into one-line form for
/// [`DebRequest::sources`]: `.list` files as they are, deb822 `.sources` files converted (one line
/// per URI and suite, `Enabled: no` skipped), other file names ignored as apt does; `deb-src`
/// and comments dropped. Options (`arch=`, `signed-by=`, ...) are kept; `signed-by=` names a
/// path inside the image, which must also exist on the build host. Files are taken in name order.
pub fn image_sources(
    etc_apt_sources_list: Option<&str>,
    sources_list_d: &[(String, String)],
) -> String {
    let mut entries: Vec<SourceEntry> = etc_apt_sources_list
        .map(one_line_entries)
        .unwrap_or_default();
    let mut parts: Vec<&(String, String)> = sources_list_d.iter().collect();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, text) in parts {
        if name.ends_with(".list") {
            entries.extend(one_line_entries(text));
        } else if name.ends_with(".sources") {
            entries.extend(deb822_entries(text));
        }
    }
    entries.iter().map(|e| e.render() + "\n").collect()
}

/// One `deb` source: options, URI, suite, components.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceEntry {
    /// `(key, operator, value)`, e.g. `("arch", "=", "arm64")`; operator is `=`, `+=` or `-=`.
    options: Vec<(String, String, String)>,
    uri: String,
    suite: String,
    components: Vec<String>,
}

impl SourceEntry {
    /// The one-line form: `deb [k=v ...] URI suite components...`.
    fn render(&self) -> String {
        let mut line = String::from("deb ");
        if !self.options.is_empty() {
            let opts: Vec<String> = self
                .options
                .iter()
                .map(|(k, op, v)| format!("{k}{op}{v}"))
                .collect();
            let _ = write!(line, "[{}] ", opts.join(" "));
        }
        let _ = write!(line, "{} {}", self.uri, self.suite);
        for c in &self.components {
            line.push(' ');
            line.push_str(c);
        }
        line
    }

    /// The values of option `key` (comma-separated lists split).
    fn option_values<'s>(&'s self, key: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.options
            .iter()
            .filter(move |(k, _, _)| k.eq_ignore_ascii_case(key))
            .flat_map(|(_, _, v)| v.split(','))
            .filter(|v| !v.is_empty())
    }
}

/// Parses one-line sources content strictly: every non-comment line must be a `deb` or `deb-src`
/// line; `deb-src` lines are skipped.
fn parse_sources(text: &str) -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        match parse_one_line(raw) {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => {}
            Err(why) => {
                return Err(Error::msg(format!(
                "sources line {}: {why} in {:?}: expected 'deb [options] URI suite [components]'",
                n + 1,
                raw.trim()
            )))
            }
        }
    }
    if entries.is_empty() {
        return Err(Error::msg(
            "no 'deb' line in the package sources: give at least one, e.g. \
             'deb http://deb.debian.org/debian bookworm main'",
        ));
    }
    Ok(entries)
}

/// The `deb` entries of one-line content, skipping lines that do not parse (as read from an
/// image, where [`resolve_debs`] will report nothing missing rather than guess).
fn one_line_entries(text: &str) -> Vec<SourceEntry> {
    text.lines()
        .filter_map(|l| parse_one_line(l).ok().flatten())
        .collect()
}

/// Parses one line of a one-line sources file: `Ok(None)` for blank lines, comments and
/// `deb-src`; `Err(reason)` for anything else that is not a valid `deb` line.
fn parse_one_line(raw: &str) -> std::result::Result<Option<SourceEntry>, String> {
    let line = raw.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    match kind {
        "deb-src" => return Ok(None),
        "deb" => {}
        _ => return Err(format!("unknown type '{kind}'")),
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(inner) => {
            let (opts, after) = inner
                .split_once(']')
                .ok_or_else(|| "unclosed '['".to_string())?;
            (parse_options(opts)?, after)
        }
        None => (Vec::new(), rest),
    };
    let mut words = rest.split_whitespace().map(str::to_string);
    let uri = words.next().ok_or_else(|| "no URI".to_string())?;
    let suite = words.next().ok_or_else(|| "no suite".to_string())?;
    let components: Vec<String> = words.collect();
    if uri.contains(['[', ']']) {
        return Err("misplaced '[' or ']'".to_string());
    }
    if suite.ends_with('/') != components.is_empty() {
        return Err("a suite ending in '/' takes no components, any other needs them".to_string());
    }
    Ok(Some(SourceEntry {
        options,
        uri,
        suite,
        components,
    }))
}

/// Parses `k=v k2+=v2 ...` (the inside of a one-line `[...]`).
fn parse_options(text: &str) -> std::result::Result<Vec<(String, String, String)>, String> {
    text.split_whitespace()
        .map(|word| {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("option '{word}' has no '='"))?;
            let (key, op) = match key.strip_suffix(['+', '-']) {
                Some(k) => (k, &word[k.len()..k.len() + 2]),
                None => (key, "="),
            };
            if key.is_empty() || value.is_empty() {
                return Err(format!("option '{word}' is incomplete"));
            }
            Ok((key.to_ascii_lowercase(), op.to_string(), value.to_string()))
        })
        .collect()
}

/// deb822 field names and the one-line option each maps to.
const DEB822_OPTIONS: &[(&str, &str)] = &[
    ("architectures", "arch"),
    ("languages", "lang"),
    ("targets", "target"),
    ("pdiffs", "pdiffs"),
    ("by-hash", "by-hash"),
    ("allow-insecure", "allow-insecure"),
    ("allow-weak", "allow-weak"),
    ("allow-downgrade-to-insecure", "allow-downgrade-to-insecure"),
    ("trusted", "trusted"),
    ("signed-by", "signed-by"),
    ("check-valid-until", "check-valid-until"),
    ("valid-until-min", "valid-until-min"),
    ("valid-until-max", "valid-until-max"),
    ("check-date", "check-date"),
    ("date-max-future", "date-max-future"),
    ("inrelease-path", "inrelease-path"),
    ("snapshot", "snapshot"),
];

/// The `deb` entries of a deb822 `.sources` file.
fn deb822_entries(text: &str) -> Vec<SourceEntry> {
    deb822_paragraphs(text)
        .iter()
        .flat_map(paragraph_entries)
        .collect()
}

/// Splits deb822 text into paragraphs of lowercase field name → value (continuation lines
/// joined with newlines, comment lines dropped).
fn deb822_paragraphs(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut paragraphs = Vec::new();
    let mut current: BTreeMap<String, String> = BTreeMap::new();
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            last_key = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(value) = last_key.as_ref().and_then(|k| current.get_mut(k)) {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            let key = key.trim().to_ascii_lowercase();
            current.insert(key.clone(), value.trim().to_string());
            last_key = Some(key);
        }
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs
}

/// The `deb` entries of one deb822 paragraph: one per URI and suite.
fn paragraph_entries(p: &BTreeMap<String, String>) -> Vec<SourceEntry> {
    let words = |key: &str| -> Vec<String> {
        p.get(key)
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let enabled = p
        .get("enabled")
        .is_none_or(|v| !v.eq_ignore_ascii_case("no"));
    if !enabled || !words("types").iter().any(|t| t == "deb") {
        return Vec::new();
    }
    let options = deb822_options(p);
    let components = words("components");
    let mut entries = Vec::new();
    for uri in words("uris") {
        for suite in words("suites") {
            entries.push(SourceEntry {
                options: options.clone(),
                uri: uri.clone(),
                suite,
                components: components.clone(),
            });
        }
    }
    entries
}

/// One-line options of a deb822 paragraph. An inline `Signed-By` key block has no one-line
/// form: it is dropped, so such a source is checked against the default keyring.
fn deb822_options(p: &BTreeMap<String, String>) -> Vec<(String, String, String)> {
    DEB822_OPTIONS
        .iter()
        .filter_map(|(field, option)| {
            let value = p.get(*field)?;
            if value.contains("BEGIN PGP") || value.contains('\n') {
                return None;
            }
            let list: Vec<&str> = value.split([' ', ',']).filter(|v| !v.is_empty()).collect();
            (!list.is_empty()).then(|| (option.to_string(), "=".to_string(), list.join(",")))
        })
        .collect()
}

/// Refuses options that turn signature checks off, and `signed-by=` files missing on the host.
fn check_sources_trust(sources: &[SourceEntry]) -> Result<()> {
    for s in sources {
        for key in INSECURE_OPTIONS {
            if s.option_values(key).any(|v| v.eq_ignore_ascii_case("yes")) {
                return Err(Error::msg(format!(
                    "source '{}': {key}=yes turns off signature checks, which imgbuild does not \
                     allow: remove the option and give the repository's key with signed-by=",
                    s.render()
                )));
            }
        }
        for keyring in s.option_values("signed-by").filter(|v| v.starts_with('/')) {
            if !Path::new(keyring).is_file() {
                return Err(Error::msg(format!(
                    "source '{}': keyring {keyring} (signed-by) is not on this machine: install \
                     it at that path or drop the source",
                    s.render()
                )));
            }
        }
    }
    Ok(())
}

/// Rejects names that apt would take for options or that cannot be package names.
fn validate_request(req: &DebRequest) -> Result<()> {
    let arch_ok = req
        .arch
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && req
            .arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !arch_ok {
        return Err(Error::msg(format!(
            "architecture {:?} is not a dpkg architecture name such as 'arm64'",
            req.arch
        )));
    }
    for p in req.packages {
        let ok = p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.:=~/".contains(c));
        if !ok {
            return Err(Error::msg(format!(
                "{p:?} is not a Debian package name (letters, digits, '+', '-', '.'; optionally \
                 '=version')"
            )));
        }
    }
    Ok(())
}

/// The persistent cache, locked for the duration of a run.
struct Cache {
    root: PathBuf,
    lists: PathBuf,
    archives: PathBuf,
    _lock: File,
}

impl Cache {
    /// Creates the layout if needed and takes the lock (waiting for another run to finish).
    fn open(dir: &Path) -> Result<Cache> {
        let what = || format!("preparing the package cache {}", dir.display());
        for sub in ["lists/partial", "archives/partial"] {
            fs::create_dir_all(dir.join(sub)).context(what)?;
        }
        let root = fs::canonicalize(dir).context(what)?;
        let lock = File::create(root.join("lock")).context(what)?;
        lock.lock().context(what)?;
        Ok(Cache {
            lists: root.join("lists"),
            archives: root.join("archives"),
            root,
            _lock: lock,
        })
    }

    /// Fails unless package lists have been cached by an earlier online run.
    fn require_lists(&self) -> Result<()> {
        let has_lists = fs::read_dir(&self.lists)
            .context(|| format!("reading {}", self.lists.display()))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        if has_lists {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "offline, but no package lists are cached in {}: run once without --offline \
                 (with network) to fill the cache",
                self.lists.display()
            )))
        }
    }
}

/// A package apt wants to install: its archive file name, size and index hash (from
/// `--print-uris`).
#[derive(Debug, Clone)]
struct Wanted {
    file_name: String,
    name: String,
    version: String,
    arch: String,
    size: u64,
}

impl Wanted {
    /// Parses a `--print-uris` line: `'URI' FILE SIZE HASH`.
    fn parse(line: &str) -> Option<Wanted> {
        let mut words = line.split_whitespace();
        let _uri = words.next().filter(|u| u.starts_with('\''))?;
        let file_name = words.next()?.to_string();
        let size = words.next()?.parse().ok()?;
        let stem = file_name.strip_suffix(".deb")?;
        let mut parts = stem.split('_');
        let (name, quoted, arch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || name.is_empty() || arch.is_empty() {
            return None;
        }
        Some(Wanted {
            name: name.to_string(),
            version: unquote(quoted)?,
            arch: arch.to_string(),
            file_name,
            size,
        })
    }
}

/// Undoes apt's `%xx` quoting of a version in an archive file name.
fn unquote(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A private apt configuration in a temporary directory; runs `apt-get`/`apt-cache` with it.
struct Apt {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Apt {
    /// Writes the configuration: `status` is the image's dpkg status, `sources` the sources.list
    /// (may be empty); lists and archives live in `cache`.
    fn new(arch: &str, status: &[u8], sources: &str, cache: &Cache) -> Result<Apt> {
        let dir = tempfile::Builder::new()
            .prefix("imgbuild-apt-")
            .tempdir()
            .context(|| "creating a temporary directory for apt")?;
        let root = dir.path().to_path_buf();
        let what = || format!("writing apt's configuration in {}", root.display());
        for sub in [
            "etc/apt.conf.d",
            "etc/sources.list.d",
            "etc/preferences.d",
            "etc/trusted.gpg.d",
            "state",
            "cache",
            "log",
            "no-archives/partial",
        ] {
            fs::create_dir_all(root.join(sub)).context(what)?;
        }
        fs::write(root.join("etc/sources.list"), sources).context(what)?;
        fs::write(root.join("state/status"), status).context(what)?;
        if Path::new(DEBIAN_KEYRING).is_file() {
            std::os::unix::fs::symlink(
                DEBIAN_KEYRING,
                root.join("etc/trusted.gpg.d/debian-archive-keyring.gpg"),
            )
            .context(what)?;
        }
        for path in [&root, &cache.root] {
            if path.to_string_lossy().contains(['"', '\n']) {
                return Err(Error::msg(format!(
                    "{}: apt cannot use a path with '\"' or a newline: choose another directory",
                    path.display()
                )));
            }
        }
        let conf = root.join("apt.conf");
        fs::write(&conf, apt_conf(&root, arch, cache)).context(what)?;
        Ok(Apt { dir, conf })
    }

    /// A command for `program` (apt-get, apt-cache) with this configuration, in the C locale.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.conf)
            .env("LC_ALL", "C")
            .env_remove("LANGUAGE")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `cmd` and returns its output; only failing to start it is an error.
    fn run(mut cmd: Command) -> Result<Output> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.output().context(|| {
            format!("cannot run {program}: pre-seeding needs apt (install the 'apt' package)")
        })
    }

    /// `apt-get update`: any failure is an error.
    fn update(&self, cache: &Cache) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "update", "--error-on=any"]);
        let out = Apt::run(cmd)?;
        if out.status.success() {
            return Ok(());
        }
        let errors = apt_messages(&out);
        if looks_like_network(&errors) {
            Err(network_error(
                "downloading the package lists",
                &errors,
                cache,
            ))
        } else {
            Err(Error::msg(format!("apt-get update failed: {errors}")))
        }
    }

    /// What apt would download to install `packages` on the image (all of it: the real
    /// archives directory is hidden, so cached files are listed too).
    fn print_uris(&self, packages: &[String], offline: bool) -> Result<Vec<Wanted>> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-qq", "--print-uris", "-y", "--no-install-recommends"])
            .arg(format!(
                "-oDir::Cache::Archives={}",
                self.dir.path().join("no-archives").display()
            ))
            .args(["install", "--"])
            .args(packages);
        let out = Apt::run(cmd)?;
        if !out.status.success() {
            return Err(resolve_error(&out, offline));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let wanted: Vec<Wanted> = stdout
            .lines()
            .filter(|l| l.starts_with('\''))
            .map(|l| {
                Wanted::parse(l).ok_or_else(|| {
                    Error::msg(format!("cannot parse apt-get --print-uris output {l:?}"))
                })
            })
            .collect::<Result<_>>()?;
        Ok(wanted)
    }

    /// `apt-get install --download-only` into the cache (files already there are reused).
    fn download(&self, packages: &[String], cache: &Cache) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "--download-only", "-y", "--no-install-recommends"])
            .args(["install", "--"])
            .args(packages);
        let out = Apt::run(cmd)?;
        if out.status.success() {
            return Ok(());
        }
        Err(network_error(
            "downloading packages",
            &apt_messages(&out),
            cache,
        ))
    }

    /// SHA-256 and size of each wanted package per the signed index, keyed by archive file name.
    fn index_sha256(&self, wanted: &[Wanted]) -> Result<BTreeMap<String, (BTreeSet<String>, u64)>> {
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut cmd = self.command("apt-cache");
        cmd.arg("show")
            .args(wanted.iter().map(|w| format!("{}={}", w.name, w.version)));
        let out = Apt::run(cmd)?;
        if !out.status.success() {
            return Err(Error::msg(format!(
                "apt-cache show failed: {}",
                apt_messages(&out)
            )));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let records = deb822_paragraphs(&text);
        let mut hashes = BTreeMap::new();
        for w in wanted {
            let matching = records.iter().filter(|r| {
                r.get("package") == Some(&w.name)
                    && r.get("version") == Some(&w.version)
                    && r.get("architecture") == Some(&w.arch)
                    && r.get("size").and_then(|s| s.parse().ok()) == Some(w.size)
            });
            let shas: BTreeSet<String> = matching
                .filter_map(|r| r.get("sha256").map(|s| s.to_ascii_lowercase()))
                .collect();
            if shas.is_empty() {
                return Err(Error::msg(format!(
                    "the package index gives no SHA256 for {} {} ({}): imgbuild needs \
                     repositories with SHA256 hashes",
                    w.name, w.version, w.arch
                )));
            }
            hashes.insert(w.file_name.clone(), (shas, w.size));
        }
        Ok(hashes)
    }

    /// Simulates what first boot does — installing exactly these files on the image with no
    /// package source at all (`-s --no-download` here): fails unless the set is complete.
    fn check_installable(&self, debs: &[Deb]) -> Result<()> {
        if debs.is_empty() {
            return Ok(());
        }
        let mut cmd = self.command("apt-get");
        cmd.args(["-q", "-s", "--no-download", "--no-install-recommends"])
            .args(["install", "--"])
            .args(debs.iter().map(|d| &d.path));
        let out = Apt::run(cmd)?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::msg(format!(
            "the resolved packages would not install on the image without network: {}",
            apt_messages(&out)
        )))
    }
}

/// apt's configuration: nothing of the host's apt state is read or written.
fn apt_conf(root: &Path, arch: &str, cache: &Cache) -> String {
    let r = root.display();
    format!(
        r#"Dir::Etc "{r}/etc/";
Dir::Etc::Parts "apt.conf.d";
Dir::Etc::Main "/dev/null";
Dir::Etc::Trusted "/dev/null";
Dir::Etc::TrustedParts "{r}/etc/trusted.gpg.d/";
Dir::State "{r}/state/";
Dir::State::Lists "{lists}/";
Dir::State::status "{r}/state/status";
Dir::Cache "{r}/cache/";
Dir::Cache::Archives "{archives}/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "{r}/log/";
APT::Architecture "{arch}";
APT::Architectures {{ "{arch}"; }};
APT::Get::List-Cleanup "false";
APT::Sandbox::User "root";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Debug::NoLocking "true";
Acquire::Languages "none";
Acquire::AllowInsecureRepositories "false";
Acquire::AllowDowngradeToInsecureRepositories "false";
"#,
        lists = cache.lists.display(),
        archives = cache.archives.display(),
    )
}

/// apt's `E:`/`W:` lines and unmet-dependency lines, joined into one line.
fn apt_messages(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    lines.extend(
        stdout
            .lines()
            .filter(|l| l.starts_with(' ') && l.contains(" : ")),
    );
    if lines.is_empty() {
        lines = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    }
    let joined = lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        format!("apt exited with {}", out.status)
    } else {
        joined
    }
}

/// Whether apt's messages describe a connection problem.
fn looks_like_network(messages: &str) -> bool {
    [
        "Failed to fetch",
        "Could not connect",
        "Could not resolve",
        "Temporary failure resolving",
        "Connection failed",
        "Connection timed out",
        "Unable to connect",
    ]
    .iter()
    .any(|m| messages.contains(m))
}

/// The one-line error for a failed download.
fn network_error(doing: &str, messages: &str, cache: &Cache) -> Error {
    Error::msg(format!(
        "{doing} failed ({messages}): check the network or proxy (http_proxy), or build with \
         --offline to use what an earlier run cached in {}",
        cache.root.display()
    ))
}

/// The one-line error when apt cannot resolve the packages, naming the missing ones.
fn resolve_error(out: &Output, offline: bool) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing: Vec<&str> = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("E: Unable to locate package ")
                .or_else(|| {
                    l.strip_prefix("E: Package '")
                        .and_then(|r| r.strip_suffix("' has no installation candidate"))
                })
                .map(str::trim)
        })
        .collect();
    let hint = if offline {
        " (offline: the cached package lists may be stale; run once without --offline)"
    } else {
        ""
    };
    if missing.is_empty() {
        return Error::msg(format!(
            "apt cannot resolve the packages: {}{hint}",
            apt_messages(out)
        ));
    }
    Error::msg(format!(
        "package {} not found in the package sources: check the name and the sources{hint}",
        missing
            .iter()
            .map(|m| format!("'{m}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The cached file for `w`, checked against the index's size and SHA-256.
fn checked_deb(
    w: &Wanted,
    hashes: &BTreeMap<String, (BTreeSet<String>, u64)>,
    cache: &Cache,
    offline: bool,
) -> Result<Deb> {
    let path = cache.archives.join(&w.file_name);
    if !path.is_file() {
        let fix = if offline {
            "run once without --offline to download it"
        } else {
            "apt did not download it; rerun"
        };
        return Err(Error::msg(format!(
            "{} is not in the package cache {}: {fix}",
            w.file_name,
            cache.archives.display()
        )));
    }
    let size = fs::metadata(&path)
        .context(|| format!("reading {}", path.display()))?
        .len();
    let sha256 = crate::pack::hash_file(&path)?;
    let expected = hashes.get(&w.file_name);
    let matches = expected.is_some_and(|(shas, sz)| *sz == size && shas.contains(&sha256));
    if !matches {
        return Err(Error::msg(format!(
            "{}: size or SHA-256 differs from the signed package index: delete the file and \
             build again",
            path.display()
        )));
    }
    Ok(Deb {
        file_name: w.file_name.clone(),
        path,
        sha256,
        size,
    })
}
