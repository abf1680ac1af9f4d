//! The user's `imgbuild.toml`: what to put into the image. Parsing is strict (unknown keys are
//! errors) and validation happens before the base image is touched, so a bad config never
//! leaves a partial output behind.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A parsed and validated `imgbuild.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Board name (`--board` on the command line must agree when both are given).
    pub board: Option<String>,
    /// Host name of the device.
    pub hostname: Option<String>,
    /// The login user.
    pub user: Option<UserConfig>,
    /// Kernel command line and firmware config edits.
    pub boot: BootConfig,
    /// Directory trees copied into `/` of the image, in order (relative to the config file).
    pub overlays: Vec<PathBuf>,
    /// Directory holding the `[[template]]` sources (default `templates`, relative to the config).
    pub templates_dir: Option<PathBuf>,
    /// Single files to write.
    #[serde(rename = "file")]
    pub files: Vec<FileEntry>,
    /// Tera templates rendered into the image with the whole config as context.
    #[serde(rename = "template")]
    pub templates: Vec<TemplateEntry>,
    /// systemd units to enable.
    pub systemd: SystemdConfig,
    /// The Greengrass fleet-provisioning payload (see the provisioning docs in README).
    pub greengrass: Option<imgbuild_greengrass::GreengrassConfig>,
    /// `[image]`: grow the image (and its root partition and file system) at build time.
    pub image: Option<ImageConfig>,
}

/// `[image]`: how big the built image is. Exactly one key; sizes are strings with a unit
/// (`"4GiB"`, `"512MiB"`) or a plain number of bytes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// Absolute size of the whole image; must not be smaller than the base image.
    pub size: Option<String>,
    /// Extra bytes for the root partition (`"+1GiB"`).
    pub grow_root: Option<String>,
}

/// What `[image]` asks for, parsed (see [`crate::grow`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// The whole image becomes this many bytes (a multiple of 512).
    ImageSize(u64),
    /// The root partition gets at least this many more bytes.
    GrowRoot(u64),
}

impl ImageConfig {
    /// The requested growth; errors name the key (`image.size`, `image.grow_root`).
    pub fn growth(&self) -> Result<Growth> {
        match (&self.size, &self.grow_root) {
            (Some(size), None) => {
                let n = parse_size(size).map_err(|e| e.context("image.size"))?;
                if n == 0 {
                    crate::bail!("image.size: {size:?} is zero; give the size of the whole image");
                }
                if !n.is_multiple_of(512) {
                    crate::bail!(
                        "image.size: {size:?} ({n} bytes) is not a whole number of 512-byte sectors"
                    );
                }
                Ok(Growth::ImageSize(n))
            }
            (None, Some(extra)) => {
                let digits = extra.trim_start().strip_prefix('+').unwrap_or(extra);
                if digits.trim_start().starts_with('-') {
                    crate::bail!(
                        "image.grow_root: {extra:?} would shrink the root partition; only growing \
                         is supported (e.g. \"+1GiB\")"
                    );
                }
                let n = parse_size(digits).map_err(|e| e.context("image.grow_root"))?;
                Ok(Growth::GrowRoot(n))
            }
            _ => crate::bail!(
                "[image]: give exactly one of `size` (the whole image, e.g. \"4GiB\") or \
                 `grow_root` (extra bytes for the root partition, e.g. \"+1GiB\")"
            ),
        }
    }
}

/// Parses `"4GiB"`, `"512 MiB"`, `"1048576"` (bytes): a whole number with an optional binary
/// unit (B, KiB, MiB, GiB, TiB).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => crate::bail!(
            "{s:?} is not a size: use a whole number of bytes or of KiB, MiB, GiB or TiB \
             (e.g. \"4GiB\")"
        ),
    };
    let n: u64 = match digits.parse() {
        Ok(n) => n,
        Err(_) if digits.is_empty() => crate::bail!(
            "{s:?} is not a size: use a whole number of bytes or of KiB, MiB, GiB or TiB \
             (e.g. \"4GiB\")"
        ),
        Err(_) => crate::bail!("{s:?} is too large"),
    };
    match n.checked_mul(factor) {
        Some(bytes) if bytes <= MAX_IMAGE_BYTES => Ok(bytes),
        _ => crate::bail!("{s:?} is too large (at most 1 PiB)"),
    }
}

/// Largest size `[image]` accepts: far beyond any SD card, and small enough that sector and
/// byte arithmetic on it cannot overflow.
const MAX_IMAGE_BYTES: u64 = 1 << 50;

/// `[user]`: the account that logs in over SSH.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name (`[a-z_][a-z0-9_-]*`, at most 32 characters).
    pub name: String,
    /// Public keys (one `authorized_keys` line each).
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (`$6$…`, `$y$…`); absent means no password login at all.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Never accepted: present only so that a plaintext password gets a clear error.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

/// `[boot]`: edits of the boot partition's text files.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootConfig {
    /// Tokens appended (idempotently) to the kernel command line.
    pub cmdline_append: Vec<String>,
    /// `key=value` settings for the firmware config file (`config.txt`).
    pub config: BTreeMap<String, String>,
}

/// `[[file]]`: one file with literal content or copied from the host.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the image (under the boot mount point it lands on the boot partition).
    pub path: String,
    /// Literal content.
    #[serde(default)]
    pub content: Option<String>,
    /// Host file to copy (relative to the config file).
    #[serde(default)]
    pub source: Option<PathBuf>,
    /// Octal mode, e.g. `"0644"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `user:group` by name (resolved in the image) or number.
    #[serde(default)]
    pub owner: Option<String>,
}

/// `[[template]]`: a tera template rendered to a path in the image.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateEntry {
    /// Template file, relative to `templates_dir`.
    pub source: PathBuf,
    /// Absolute destination path in the image.
    pub path: String,
    /// Octal mode, e.g. `"0644"`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `user:group` by name (resolved in the image) or number.
    #[serde(default)]
    pub owner: Option<String>,
}

/// `[systemd]`: units to enable.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemdConfig {
    /// Unit names; each is enabled through its `[Install]` section.
    pub enable: Vec<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", line_of(text, s.start)))
                .unwrap_or_default();
            Error::msg(format!("config {origin}{at}: {}", e.message()))
        })?;
        cfg.validate()
            .map_err(|e| e.context(format_args!("config {origin}")))?;
        Ok(cfg)
    }

    /// Checks every value whose error would otherwise surface half-way through a build.
    pub fn validate(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            check_hostname(h)?;
        }
        if let Some(u) = &self.user {
            u.validate()?;
        }
        for (i, f) in self.files.iter().enumerate() {
            let what = format!("[[file]] #{} ({})", i + 1, f.path);
            check_image_path(&f.path).map_err(|e| e.context(&what))?;
            match (&f.content, &f.source) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => crate::bail!("{what}: give exactly one of `content` or `source`"),
            }
            check_mode_owner(f.mode.as_deref(), f.owner.as_deref())
                .map_err(|e| e.context(&what))?;
        }
        for (i, t) in self.templates.iter().enumerate() {
            let what = format!("[[template]] #{} ({})", i + 1, t.path);
            check_image_path(&t.path).map_err(|e| e.context(&what))?;
            check_relative(&t.source).map_err(|e| e.context(&what))?;
            check_mode_owner(t.mode.as_deref(), t.owner.as_deref())
                .map_err(|e| e.context(&what))?;
        }
        for tok in &self.boot.cmdline_append {
            if tok.is_empty() || tok.chars().any(char::is_whitespace) {
                crate::bail!("boot.cmdline_append: {tok:?} must be one token without spaces");
            }
        }
        for (k, v) in &self.boot.config {
            if k.is_empty() || k.contains(['=', '\n', '[', ']', '#']) || v.contains('\n') {
                crate::bail!("boot.config: {k:?} = {v:?} is not a valid config.txt key=value");
            }
        }
        for unit in &self.systemd.enable {
            check_unit_name(unit)?;
        }
        if let Some(gg) = &self.greengrass {
            imgbuild_greengrass::validate(gg)?;
        }
        self.growth()?;
        Ok(())
    }

    /// The growth `[image]` asks for; `None` without an `[image]` section.
    pub fn growth(&self) -> Result<Option<Growth>> {
        self.image.as_ref().map(ImageConfig::growth).transpose()
    }
}

impl UserConfig {
    fn validate(&self) -> Result<()> {
        if self.password.is_some() {
            crate::bail!(
                "user.password: plaintext passwords are refused; put a crypt hash in \
                 user.password_hash (e.g. `mkpasswd -m yescrypt` or `openssl passwd -6`), \
                 or leave it out for key-only login"
            );
        }
        let n = &self.name;
        let ok = !n.is_empty()
            && n.len() <= 32
            && n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !ok {
            crate::bail!("user.name {n:?}: use 1-32 characters of a-z, 0-9, _ and -, starting with a letter or _");
        }
        if let Some(h) = &self.password_hash {
            check_crypt_hash(h)?;
        }
        for (i, k) in self.ssh_authorized_keys.iter().enumerate() {
            check_ssh_key(k)
                .map_err(|e| e.context(format_args!("user.ssh_authorized_keys[{i}]")))?;
        }
        Ok(())
    }
}

/// Owner of a file: user and group, each by name (looked up in the image) or number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerSpec {
    /// User name or number.
    pub user: IdRef,
    /// Group name or number.
    pub group: IdRef,
}

/// A user or group, by name or by number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum IdRef {
    /// A numeric id.
    Id(u32),
    /// A name resolved through the image's `/etc/passwd` or `/etc/group`.
    Name(String),
}

impl OwnerSpec {
    /// `root:root`.
    pub fn root() -> OwnerSpec {
        OwnerSpec {
            user: IdRef::Id(0),
            group: IdRef::Id(0),
        }
    }

    /// Parses `user:group` or `user` (group of the same name); names or numbers.
    pub fn parse(s: &str) -> Result<OwnerSpec> {
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        let part = |p: &str| -> Result<IdRef> {
            if p.is_empty() {
                crate::bail!("owner {s:?}: expected `user:group`");
            }
            if let Ok(n) = p.parse::<u32>() {
                return Ok(IdRef::Id(n));
            }
            if p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                Ok(IdRef::Name(p.to_string()))
            } else {
                crate::bail!("owner {s:?}: {p:?} is neither a number nor a user/group name")
            }
        };
        Ok(OwnerSpec {
            user: part(u)?,
            group: part(g)?,
        })
    }
}

/// Checks an optional mode and owner as `[[file]]`, `[[template]]` and overlay.toml take them.
pub fn check_mode_owner(mode: Option<&str>, owner: Option<&str>) -> Result<()> {
    if let Some(m) = mode {
        parse_mode(m)?;
    }
    if let Some(o) = owner {
        OwnerSpec::parse(o)?;
    }
    Ok(())
}

/// Parses an octal mode string such as `"0644"` or `"755"` (permission bits only).
pub fn parse_mode(s: &str) -> Result<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => crate::bail!("mode {s:?}: expected an octal permission like \"0644\""),
    }
}

/// Checks that `p` is an absolute image path without `.`/`..`/empty components.
pub fn check_image_path(p: &str) -> Result<()> {
    if !p.starts_with('/') {
        crate::bail!("path {p:?} must be absolute (start with /)");
    }
    if p == "/" {
        crate::bail!("path \"/\" is not a file");
    }
    for c in p[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            crate::bail!("path {p:?} must not contain empty, `.` or `..` components");
        }
        if c.len() > 255 || c.contains('\0') {
            crate::bail!("path {p:?} has a component that is too long or contains NUL");
        }
    }
    check_no_control(p)
}

/// Refuses control characters (newline, tab, escape, DEL, C1) in a file name: they break
/// line-based tools and logs, and can forge lines in listings. The error shows the name escaped.
fn check_no_control(p: &str) -> Result<()> {
    if let Some(c) = p.chars().find(|c| c.is_control()) {
        crate::bail!(
            "path {p:?} contains the control character {c:?}; rename it (file names must not hold \
             newlines or other control characters)"
        );
    }
    Ok(())
}

fn check_relative(p: &Path) -> Result<()> {
    use std::path::Component;
    check_no_control(&p.to_string_lossy())?;
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        crate::bail!(
            "template source {} must be a relative path inside templates_dir without `..`",
            p.display()
        );
    }
    Ok(())
}

fn check_hostname(h: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if h.len() > 253 || !h.split('.').all(label_ok) {
        crate::bail!(
            "hostname {h:?}: use letters, digits and '-' (RFC 1123), at most 63 per label"
        );
    }
    Ok(())
}

fn check_crypt_hash(h: &str) -> Result<()> {
    // `$id$[params$]salt$hash` as written by mkpasswd/openssl/crypt; `!`/`*` lock the password.
    let looks_crypt = h.starts_with('$')
        && h.matches('$').count() >= 3
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || "$./=,-_".contains(c));
    if !(looks_crypt || h == "!" || h == "*") {
        crate::bail!(
            "user.password_hash is not a crypt hash (expected `$6$…` or `$y$…`); a plaintext \
             password is refused - make one with `mkpasswd -m yescrypt`"
        );
    }
    Ok(())
}

fn check_ssh_key(k: &str) -> Result<()> {
    if k.contains(['\n', '\r']) {
        crate::bail!("must be a single line");
    }
    let mut words = k.split_whitespace();
    // authorized_keys allows options before the key type; find the key type word.
    let known =
        |w: &str| w.starts_with("ssh-") || w.starts_with("ecdsa-sha2-") || w.starts_with("sk-");
    let found = words.by_ref().find(|w| known(w));
    match (found, words.next()) {
        (Some(_), Some(body))
            if body.len() > 16
                && body
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) =>
        {
            Ok(())
        }
        _ => crate::bail!("not an SSH public key line (expected `ssh-ed25519 AAAA… comment`)"),
    }
}

fn check_unit_name(u: &str) -> Result<()> {
    crate::units::check_unit_name(u).map_err(|e| Error::msg(format!("systemd.enable: {e}")))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn4jN9a9X8V0eI0c0m0s0f0p0x0y0z0a0b0c0d0e0f0 me@laptop";

    fn err(text: &str) -> String {
        let e = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn full_example_parses() {
        let text = format!(
            r#"
board = "rpi4"
hostname = "gg-node-1"
overlays = ["rootfs-overlay"]
[user]
name = "admin"
ssh_authorized_keys = ["{KEY}"]
password_hash = "$6$salt$abcdefghijklmnop"
[boot]
cmdline_append = ["quiet"]
[boot.config]
dtparam = "audio=off"
[[file]]
path = "/etc/motd"
content = "hi\n"
mode = "0640"
owner = "root:adm"
[[template]]
source = "issue.tera"
path = "/etc/issue"
[systemd]
enable = ["ssh.service"]
"#
        );
        let c = Config::parse(&text, "t.toml").expect("parses");
        assert_eq!(c.user.as_ref().map(|u| u.name.as_str()), Some("admin"));
        assert_eq!(c.boot.config["dtparam"], "audio=off");
        assert_eq!(
            parse_mode(c.files[0].mode.as_deref().unwrap_or("")).ok(),
            Some(0o640)
        );
    }

    #[test]
    fn bad_inputs_are_one_line_errors() {
        assert!(err("colour = 1").contains("colour"));
        assert!(err("[user]\nname = \"a\"\npassword = \"hunter2\"").contains("plaintext"));
        assert!(err("[user]\nname = \"a\"\npassword_hash = \"hunter2\"").contains("plaintext"));
        assert!(err("[[file]]\npath = \"etc/x\"\ncontent = \"\"").contains("absolute"));
        assert!(err("[[file]]\npath = \"/etc/../x\"\ncontent = \"\"").contains(".."));
        assert!(err("[[file]]\npath = \"/x\"").contains("exactly one"));
        assert!(err("[[file]]\npath = \"/x\"\ncontent = \"\"\nmode = \"999\"").contains("octal"));
        assert!(err("hostname = \"bad_host\"").contains("RFC 1123"));
        assert!(err("[user]\nname = \"a\"\nssh_authorized_keys = [\"nope\"]").contains("SSH"));
        assert!(err("[[template]]\nsource = \"../x\"\npath = \"/x\"").contains(".."));
        assert!(err("[systemd]\nenable = [\"foo\"]").contains("unit name"));
        assert!(err("hostname = [").contains("line 1"));
    }

    #[test]
    fn control_characters_in_file_names_are_refused() {
        for bad in [
            "/etc/a\\nb",
            "/etc/x\\ty",
            "/etc/esc\\u001b[2J",
            "/etc/del\\u007f",
        ] {
            for section in ["[[file]]\ncontent = \"\"", "[[template]]\nsource = \"t\""] {
                let e = err(&format!("{section}\npath = \"{bad}\""));
                assert!(e.contains("control character") && !e.contains('\n'), "{e}");
            }
        }
        let e = err("[[template]]\nsource = \"a\\nb.tera\"\npath = \"/x\"");
        assert!(e.contains("control character") && !e.contains('\n'), "{e}");
        assert!(check_image_path("/etc/caf\u{e9} ok").is_ok());
    }

    #[test]
    fn image_section_parses_sizes_and_names_the_key_in_errors() {
        let growth = |text: &str| Config::parse(text, "t.toml").expect("parses").growth();
        assert_eq!(
            growth("[image]\nsize = \"4GiB\"").ok(),
            Some(Some(Growth::ImageSize(4 << 30)))
        );
        assert_eq!(
            growth("[image]\nsize = \"1048576\"").ok(),
            Some(Some(Growth::ImageSize(1 << 20)))
        );
        assert_eq!(
            growth("[image]\ngrow_root = \"+1GiB\"").ok(),
            Some(Some(Growth::GrowRoot(1 << 30)))
        );
        assert_eq!(
            growth("[image]\ngrow_root = \"512 MiB\"").ok(),
            Some(Some(Growth::GrowRoot(512 << 20)))
        );
        assert_eq!(growth("hostname = \"a\"").ok(), Some(None));
        for (text, needle) in [
            (
                "[image]\nsize = \"4GB\"",
                "image.size: \"4GB\" is not a size",
            ),
            ("[image]\nsize = \"1.5GiB\"", "image.size"),
            ("[image]\nsize = \"\"", "image.size"),
            ("[image]\nsize = \"0\"", "image.size: \"0\" is zero"),
            ("[image]\nsize = \"1000\"", "512-byte sectors"),
            ("[image]\nsize = \"99999999999TiB\"", "too large"),
            ("[image]\ngrow_root = \"-1GiB\"", "image.grow_root"),
            (
                "[image]\ngrow_root = \"lots\"",
                "image.grow_root: \"lots\" is not a size",
            ),
            (
                "[image]\nsize = \"4GiB\"\ngrow_root = \"+1GiB\"",
                "exactly one",
            ),
            ("[image]\n", "exactly one"),
            ("[image]\nsizes = \"4GiB\"", "sizes"),
        ] {
            let e = err(text);
            assert!(e.starts_with("config t.toml"), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn owner_and_mode_parsing() {
        assert_eq!(OwnerSpec::parse("0:0").ok(), Some(OwnerSpec::root()));
        let o = OwnerSpec::parse("ggc_user").expect("name");
        assert_eq!(o.group, IdRef::Name("ggc_user".into()));
        assert!(OwnerSpec::parse("a:b c").is_err());
        assert_eq!(parse_mode("0o4755").ok(), Some(0o4755));
        assert!(parse_mode("").is_err());
    }
}
