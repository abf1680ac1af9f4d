//! Enabling systemd units offline, the way `systemctl enable` does: read the unit's `[Install]`
//! section and create the `.wants/` / `.requires/` and alias symlinks under `/etc/systemd/system`.

use crate::error::Result;

/// Where unit files are looked up in the image, in systemd's order of precedence.
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The `[Install]` section of a unit file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    /// `WantedBy=` targets.
    pub wanted_by: Vec<String>,
    /// `RequiredBy=` targets.
    pub required_by: Vec<String>,
    /// `Alias=` names.
    pub alias: Vec<String>,
    /// `Also=` units enabled together with this one.
    pub also: Vec<String>,
    /// `DefaultInstance=` of a template unit.
    pub default_instance: Vec<String>,
}

/// Unit types systemd knows (`systemd.unit(5)`); a unit name must end in one of them.
pub const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
];

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` - 1).
const UNIT_NAME_MAX: usize = 255;

/// Checks `name` the way systemd's `unit_name_is_valid` does: at most 255 bytes of
/// `[A-Za-z0-9:_.\\-]` plus one `@` (template or instance), a non-empty prefix and a known type
/// suffix. Every name used as a path component must pass (no `/`, no `..`, no control
/// characters), so a hostile `[Install]` section cannot place a link outside
/// `/etc/systemd/system`. The error is the reason, for the caller to wrap.
pub fn check_unit_name(name: &str) -> std::result::Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || ":-_.\\".contains(c);
    if name.is_empty() || name.len() > UNIT_NAME_MAX {
        return Err(format!(
            "{name:?} is not a unit name (1 to {UNIT_NAME_MAX} bytes)"
        ));
    }
    if name.contains("..") || name.starts_with('.') {
        return Err(format!(
            "{name:?} is not a unit name (it contains `..` or starts with `.`)"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !plain(c) && c != '@') {
        return Err(format!(
            "{name:?} is not a unit name ({bad:?} is not allowed; use letters, digits and :-_.\\@)"
        ));
    }
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| name.ends_with(**s)) else {
        return Err(format!(
            "{name:?} is not a unit name (it must end in a unit type such as .service or .target)"
        ));
    };
    let stem = &name[..name.len() - suffix.len()];
    let prefix = stem.split('@').next().unwrap_or_default();
    if prefix.is_empty() || stem.matches('@').count() > 1 {
        return Err(format!(
            "{name:?} is not a unit name (bad prefix or more than one `@`)"
        ));
    }
    Ok(())
}

/// Checks a `DefaultInstance=` value: an instance string, the part between `@` and the suffix.
fn check_instance(value: &str) -> std::result::Result<(), String> {
    check_unit_name(&format!("x@{value}.service"))
        .map_err(|_| format!("{value:?} is not a valid instance name"))
}

impl Install {
    /// True when the section enables nothing (a static unit).
    pub fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
    }

    /// Checks every value as a unit name (`DefaultInstance=` as an instance name); the error
    /// names the key and the value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (key, values) in [
            ("WantedBy", &self.wanted_by),
            ("RequiredBy", &self.required_by),
            ("Alias", &self.alias),
            ("Also", &self.also),
        ] {
            for v in values {
                check_unit_name(v)
                    .map_err(|e| format!("[Install] {key}={}: {e}", v.escape_debug()))?;
            }
        }
        for v in &self.default_instance {
            check_instance(v)
                .map_err(|e| format!("[Install] DefaultInstance={}: {e}", v.escape_debug()))?;
        }
        Ok(())
    }
}

/// Parses the `[Install]` section (keys may repeat and hold several space-separated values).
pub fn parse_install(unit: &str) -> Install {
    let mut inst = Install::default();
    let mut in_install = false;
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let list = match k.trim() {
            "WantedBy" => &mut inst.wanted_by,
            "RequiredBy" => &mut inst.required_by,
            "Alias" => &mut inst.alias,
            "Also" => &mut inst.also,
            "DefaultInstance" => &mut inst.default_instance,
            _ => continue,
        };
        list.extend(v.split_whitespace().map(str::to_string));
    }
    inst
}

/// One symlink `enable` creates: `link` → `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Symlink path, under `/etc/systemd/system`.
    pub link: String,
    /// Absolute path of the unit file.
    pub target: String,
}

/// The symlinks enabling `unit`, whose file was found at `unit_path`. Every `[Install]` value
/// and `unit` itself must be a valid unit name (see [`check_unit_name`]), else the error names
/// the unit file and the value.
pub fn links_for(unit: &str, unit_path: &str, inst: &Install) -> Result<Vec<Link>> {
    check_unit_name(unit).map_err(|e| crate::error::Error::msg(format!("systemd.enable: {e}")))?;
    inst.validate().map_err(|e| {
        crate::error::Error::msg(format!(
            "systemd.enable: {unit_path}: {e} - refusing to enable a unit whose [Install] \
             section names a path"
        ))
    })?;
    if unit.contains("@.") {
        crate::bail!("systemd.enable: {unit} is a template; name an instance like foo@bar.service");
    }
    let mut out = Vec::new();
    for (dir_suffix, targets) in [
        (".wants", &inst.wanted_by),
        (".requires", &inst.required_by),
    ] {
        for t in targets {
            out.push(Link {
                link: format!("/etc/systemd/system/{t}{dir_suffix}/{unit}"),
                target: unit_path.to_string(),
            });
        }
    }
    for a in &inst.alias {
        out.push(Link {
            link: format!("/etc/systemd/system/{a}"),
            target: unit_path.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_section_to_links() {
        let unit = "[Unit]\nWantedBy=ignored.target\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target graphical.target\nAlias=sshd.service\n# WantedBy=nope\nAlso=ssh.socket\n";
        let inst = parse_install(unit);
        assert_eq!(inst.wanted_by, ["multi-user.target", "graphical.target"]);
        assert_eq!(inst.also, ["ssh.socket"]);
        let links =
            links_for("ssh.service", "/lib/systemd/system/ssh.service", &inst).expect("links");
        assert_eq!(
            links[0].link,
            "/etc/systemd/system/multi-user.target.wants/ssh.service"
        );
        assert_eq!(
            links[2],
            Link {
                link: "/etc/systemd/system/sshd.service".into(),
                target: "/lib/systemd/system/ssh.service".into()
            }
        );
        assert!(parse_install("[Service]\nExecStart=x\n").is_empty());
        assert!(links_for("a@.service", "/x", &inst).is_err());
    }

    #[test]
    fn install_values_that_are_not_unit_names_are_refused() {
        for (key, value) in [
            ("Alias", "../../../etc/shadow"),
            ("Alias", "../../x.service"),
            ("Alias", "a/b.service"),
            ("WantedBy", "../multi-user.target"),
            ("WantedBy", "multi-user.target/../../x"),
            ("RequiredBy", "x..target"),
            ("Also", "../../other.service"),
            ("Alias", "evil\u{7}.service"),
            ("Alias", "noext"),
            ("Alias", ".service"),
            ("Alias", "a@b@c.service"),
            ("DefaultInstance", "../x"),
            ("DefaultInstance", "a/b"),
        ] {
            let unit = format!("[Install]\n{key}={value}\n");
            let inst = parse_install(&unit);
            let err = links_for("ok.service", "/lib/systemd/system/ok.service", &inst)
                .expect_err(value)
                .to_string();
            let shown = value.escape_debug().to_string();
            assert!(err.contains(key) && err.contains(&shown), "{err}");
            assert!(!err.chars().any(char::is_control), "{err:?}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        for good in [
            "multi-user.target",
            "getty@tty1.service",
            "sys-devices-x\\x2dy.device",
            "a:b_c-d.socket",
            "foo@.service",
        ] {
            assert_eq!(check_unit_name(good), Ok(()), "{good}");
        }
        let inst = parse_install("[Install]\nDefaultInstance=tty1\nAlias=x.service\n");
        assert_eq!(inst.validate(), Ok(()));
        assert!(check_unit_name(&format!("{}.service", "a".repeat(250))).is_err());
        assert!(links_for("../x.service", "/x", &Install::default()).is_err());
    }
}
