//! Plan: turn the config and the host files it names (overlays, `[[file]]` sources, templates)
//! into a flat, ordered list of entries to write, plus what needs the image to be completed
//! (access settings, boot-file edits, units to enable). Everything that can fail because of the
//! user's input and does not depend on the image fails here, before the base image is even
//! fetched; [`crate::writes`] completes the plan against the base before anything is written.

use crate::config::{
    check_image_path, check_mode_owner, parse_mode, Config, OwnerSpec, UserConfig,
};
use crate::error::{Context, Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What an entry puts at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory (created if missing; an existing one gets mode/owner only when explicit).
    Dir {
        /// True when mode/owner were set explicitly (overlay.toml) and must be applied even
        /// to a directory that already exists in the image.
        explicit: bool,
    },
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
}

/// One thing to write into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path in the image.
    pub path: String,
    /// What to write.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner, resolved against the image's `/etc/passwd` and `/etc/group` when applied.
    pub owner: OwnerSpec,
    /// Where the entry came from, for errors and the manifest (e.g. `overlay rootfs-overlay`).
    pub origin: String,
}

/// Everything the config asks for, ready to apply.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Files, directories and links, in the order they are written.
    pub entries: Vec<Entry>,
    /// Tokens for the kernel command line.
    pub cmdline_append: Vec<String>,
    /// `key=value` pairs for the firmware config.
    pub config_set: Vec<(String, String)>,
    /// Units to enable, after all entries are written.
    pub enable_units: Vec<String>,
    /// The login user (`[user]`): account, SSH keys, sudo.
    pub user: Option<UserConfig>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// The project's templates directory (`templates_dir`, default `templates`, resolved against the
    /// config's directory); payloads look for their overridable templates here.
    pub templates_dir: PathBuf,
}

impl Plan {
    /// Adds a regular file entry.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32, owner: OwnerSpec, origin: &str) {
        self.entries.push(Entry {
            path: path.to_string(),
            kind: EntryKind::File(data),
            mode,
            owner,
            origin: origin.to_string(),
        });
    }
}

/// Builds the plan for `cfg`; relative paths in it are resolved against `config_dir`.
pub fn make(cfg: &Config, config_dir: &Path) -> Result<Plan> {
    let mut plan = Plan {
        templates_dir: config_dir.join(
            cfg.templates_dir
                .as_deref()
                .unwrap_or(Path::new("templates")),
        ),
        ..Plan::default()
    };
    for overlay in &cfg.overlays {
        let dir = config_dir.join(overlay);
        add_overlay(&mut plan, &dir, &format!("overlay {}", overlay.display()))?;
    }
    for (i, f) in cfg.files.iter().enumerate() {
        let origin = format!("[[file]] #{} ({})", i + 1, f.path);
        let data = match (&f.content, &f.source) {
            (Some(c), _) => c.clone().into_bytes(),
            (None, Some(src)) => {
                let p = config_dir.join(src);
                std::fs::read(&p).context(|| format!("{origin}: reading source {}", p.display()))?
            }
            (None, None) => crate::bail!("{origin}: give exactly one of `content` or `source`"),
        };
        let mode = f
            .mode
            .as_deref()
            .map(parse_mode)
            .transpose()?
            .unwrap_or(0o644);
        let owner = owner_or_root(f.owner.as_deref())?;
        plan.file(&f.path, data, mode, owner, &origin);
    }
    if !cfg.templates.is_empty() {
        let dir = plan.templates_dir.clone();
        for (i, t) in cfg.templates.iter().enumerate() {
            let origin = format!("[[template]] #{} ({})", i + 1, t.source.display());
            let text =
                render_template(&dir.join(&t.source), cfg).map_err(|e| e.context(&origin))?;
            let mode = t
                .mode
                .as_deref()
                .map(parse_mode)
                .transpose()?
                .unwrap_or(0o644);
            let owner = owner_or_root(t.owner.as_deref())?;
            plan.file(&t.path, text.into_bytes(), mode, owner, &origin);
        }
    }
    plan.cmdline_append = cfg.boot.cmdline_append.clone();
    plan.config_set = cfg
        .boot
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    plan.enable_units = cfg.systemd.enable.clone();
    plan.user = cfg.user.clone();
    plan.hostname = cfg.hostname.clone();
    Ok(plan)
}

fn owner_or_root(s: Option<&str>) -> Result<OwnerSpec> {
    s.map(OwnerSpec::parse)
        .transpose()
        .map(|o| o.unwrap_or_else(OwnerSpec::root))
}

/// Tera functions that reach the host: `get_env` (always registered by tera 1.x) and, with its
/// `builtins` feature (off here), `now` and `get_random`. Each is replaced by one that fails.
/// Tera has no function or filter that reads files; `include`/`import`/`extends` name templates
/// registered with the engine, and a one-off template has none.
const HOST_FUNCTIONS: &[&str] = &["get_env", "now", "get_random"];

/// A tera engine without access to the host: no environment, clock or randomness, no
/// autoescaping (outputs are config files, not HTML).
fn sandboxed_tera() -> tera::Tera {
    let mut t = tera::Tera::default();
    t.autoescape_on(Vec::new());
    for &name in HOST_FUNCTIONS {
        t.register_function(
            name,
            move |_: &std::collections::HashMap<String, tera::Value>| -> tera::Result<tera::Value> {
                Err(tera::Error::msg(format!(
                    "{name}() is disabled: templates cannot read the host (environment, clock, \
                     randomness); put the value into the config instead"
                )))
            },
        );
    }
    t
}

/// Renders one tera template file with the whole config as its context, in an engine without
/// host access (see [`HOST_FUNCTIONS`]). An unknown variable is an error that names it.
pub fn render_template(path: &Path, cfg: &Config) -> Result<String> {
    let text =
        std::fs::read_to_string(path).context(|| format!("reading template {}", path.display()))?;
    let value = serde_json::to_value(cfg).context(|| "serializing the config")?;
    let ctx = tera::Context::from_value(value).context(|| "building the template context")?;
    let name = path.display().to_string();
    sandboxed_tera().render_str(&text, &ctx).map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        Error::msg(format!("template {name}: {msg}"))
    })
}

/// Per-path settings of an overlay, from `overlay.toml` at the overlay's top.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayMeta {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    /// Apply `owner` to everything below this directory as well.
    #[serde(default)]
    recursive: bool,
}

/// The name of the per-overlay settings file; it lives at the top of the tree and is not copied.
pub const OVERLAY_META: &str = "overlay.toml";

/// Adds every entry of the directory tree `dir` (sorted by path, parents first).
pub fn add_overlay(plan: &mut Plan, dir: &Path, origin: &str) -> Result<()> {
    let md = std::fs::metadata(dir).context(|| format!("{origin}: {}", dir.display()))?;
    if !md.is_dir() {
        crate::bail!("{origin}: {} is not a directory", dir.display());
    }
    let meta_path = dir.join(OVERLAY_META);
    let mut metas: BTreeMap<String, OverlayMeta> = if meta_path.exists() {
        let text = std::fs::read_to_string(&meta_path)
            .context(|| format!("reading {}", meta_path.display()))?;
        toml::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: {}", meta_path.display(), e.message())))?
    } else {
        BTreeMap::new()
    };
    for (p, m) in &metas {
        let what = format!("{} [\"{p}\"]", meta_path.display());
        check_image_path(p).map_err(|e| e.context(&what))?;
        check_mode_owner(m.mode.as_deref(), m.owner.as_deref()).map_err(|e| e.context(&what))?;
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut seen = std::collections::BTreeSet::new();
    for host in files {
        let rel = host.strip_prefix(dir).unwrap_or(&host);
        let rel = rel.to_str().ok_or_else(|| {
            Error::msg(format!(
                "{origin}: {} is not a UTF-8 file name",
                host.display()
            ))
        })?;
        if rel == OVERLAY_META {
            continue;
        }
        let path = format!("/{rel}");
        check_image_path(&path).map_err(|e| e.context(origin))?;
        let lmd =
            std::fs::symlink_metadata(&host).context(|| format!("{origin}: {}", host.display()))?;
        let explicit = metas.get(&path);
        let (mode_default, kind) = if lmd.file_type().is_symlink() {
            let target =
                std::fs::read_link(&host).context(|| format!("{origin}: {}", host.display()))?;
            let target = target.to_str().ok_or_else(|| {
                Error::msg(format!(
                    "{origin}: link {} has a non-UTF-8 target",
                    host.display()
                ))
            })?;
            (0o777, EntryKind::Symlink(target.to_string()))
        } else if lmd.is_dir() {
            (
                0o755,
                EntryKind::Dir {
                    explicit: explicit.is_some(),
                },
            )
        } else if lmd.is_file() {
            let data =
                std::fs::read(&host).context(|| format!("{origin}: reading {}", host.display()))?;
            let exec = lmd.permissions().mode() & 0o111 != 0;
            (if exec { 0o755 } else { 0o644 }, EntryKind::File(data))
        } else {
            crate::bail!(
                "{origin}: {} is not a file, directory or symlink",
                host.display()
            );
        };
        let mode = match explicit.and_then(|m| m.mode.as_deref()) {
            Some(m) => parse_mode(m)?,
            None => mode_default,
        };
        let owner = match explicit
            .and_then(|m| m.owner.as_deref())
            .or_else(|| inherited_owner(&metas, &path))
        {
            Some(o) => OwnerSpec::parse(o)?,
            None => OwnerSpec::root(),
        };
        seen.insert(path.clone());
        plan.entries.push(Entry {
            path,
            kind,
            mode,
            owner,
            origin: origin.to_string(),
        });
    }
    metas.retain(|p, _| !seen.contains(p));
    if let Some(p) = metas.keys().next() {
        crate::bail!(
            "{}: [\"{p}\"] names a path that is not in the overlay",
            meta_path.display()
        );
    }
    Ok(())
}

fn inherited_owner<'a>(metas: &'a BTreeMap<String, OverlayMeta>, path: &str) -> Option<&'a str> {
    let mut p = path;
    while let Some((parent, _)) = p.rsplit_once('/') {
        if let Some(m) = metas.get(parent).filter(|m| m.recursive) {
            return m.owner.as_deref();
        }
        p = parent;
    }
    None
}

/// Collects every path below `dir`, sorted, parents before children.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = std::fs::read_dir(dir)
        .context(|| format!("reading overlay directory {}", dir.display()))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.context(|| format!("reading overlay directory {}", dir.display()))?;
        names.push(e.path());
    }
    names.sort();
    for p in names {
        out.push(p.clone());
        let is_dir = std::fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            walk(&p, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, "t.toml").expect("config parses")
    }

    #[test]
    fn overlay_modes_owners_and_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let o = d.path().join("ov");
        std::fs::create_dir_all(o.join("etc/app")).expect("mkdir");
        std::fs::write(o.join("etc/app/conf"), "x").expect("write");
        std::fs::write(o.join("etc/app/run.sh"), "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(
            o.join("etc/app/run.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::os::unix::fs::symlink("conf", o.join("etc/app/link")).expect("symlink");
        std::fs::write(
            o.join(OVERLAY_META),
            "[\"/etc/app\"]\nowner = \"1000:1000\"\nrecursive = true\n[\"/etc/app/conf\"]\nmode = \"0600\"\n",
        )
        .expect("write");
        let plan = make(&cfg("overlays = [\"ov\"]"), d.path()).expect("plan");
        let paths: Vec<_> = plan
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.mode))
            .collect();
        assert_eq!(
            paths,
            [
                ("/etc", 0o755),
                ("/etc/app", 0o755),
                ("/etc/app/conf", 0o600),
                ("/etc/app/link", 0o777),
                ("/etc/app/run.sh", 0o755)
            ]
        );
        let conf = &plan.entries[2];
        assert_eq!(conf.owner, OwnerSpec::parse("1000:1000").expect("owner"));
        assert_eq!(plan.entries[0].owner, OwnerSpec::root());
        assert_eq!(plan.entries[3].kind, EntryKind::Symlink("conf".into()));
    }

    #[test]
    fn overlay_meta_naming_missing_path_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("ov")).expect("mkdir");
        std::fs::write(
            d.path().join("ov").join(OVERLAY_META),
            "[\"/nope\"]\nmode = \"0600\"\n",
        )
        .expect("write");
        let e = make(&cfg("overlays = [\"ov\"]"), d.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nope") && e.contains("not in the overlay"),
            "{e}"
        );
    }

    #[test]
    fn template_renders_config_and_names_unknown_variable() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("templates")).expect("mkdir");
        std::fs::write(d.path().join("templates/ok.tera"), "host={{ hostname }}").expect("write");
        std::fs::write(d.path().join("templates/bad.tera"), "{{ no_such_var }}").expect("write");
        let c = cfg("hostname = \"n1\"\n[[template]]\nsource = \"ok.tera\"\npath = \"/etc/x\"\n");
        let plan = make(&c, d.path()).expect("plan");
        assert_eq!(plan.entries[0].kind, EntryKind::File(b"host=n1".to_vec()));
        let c = cfg("[[template]]\nsource = \"bad.tera\"\npath = \"/etc/x\"\n");
        let e = make(&c, d.path()).unwrap_err().to_string();
        assert!(e.contains("no_such_var") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn overlay_file_names_with_control_characters_are_refused() {
        for name in ["a\nb", "tab\there", "bell\u{7}", "cr\r"] {
            let d = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(d.path().join("ov/etc")).expect("mkdir");
            std::fs::write(d.path().join("ov/etc").join(name), "x").expect("write");
            let e = make(&cfg("overlays = [\"ov\"]"), d.path())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("control character") && e.contains("overlay ov") && !e.contains('\n'),
                "{e}"
            );
        }
    }

    #[test]
    fn templates_cannot_read_the_host() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("templates")).expect("mkdir");
        let secret = std::env::var("PATH").expect("PATH is set");
        for (name, body) in [
            ("env.tera", "{{ get_env(name=\"PATH\") }}"),
            ("envd.tera", "{{ get_env(name=\"PATH\", default=\"x\") }}"),
            ("now.tera", "{{ now() }}"),
            ("rand.tera", "{{ get_random(end=9) }}"),
            ("inc.tera", "{% include \"/etc/passwd\" %}"),
            ("ext.tera", "{% extends \"/etc/passwd\" %}"),
        ] {
            std::fs::write(d.path().join("templates").join(name), body).expect("write");
            let c = cfg(&format!(
                "[[template]]\nsource = \"{name}\"\npath = \"/etc/x\"\n"
            ));
            let e = make(&c, d.path()).expect_err(name).to_string();
            assert!(!e.contains(&secret) && !e.contains("root:"), "{e}");
            assert!(e.contains(name) && !e.contains('\n'), "{e}");
        }
        let e = render_template(&d.path().join("templates/env.tera"), &cfg(""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("get_env() is disabled"), "{e}");
    }
}
