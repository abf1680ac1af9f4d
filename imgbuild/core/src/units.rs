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
}

impl Install {
    /// True when the section enables nothing (a static unit).
    pub fn is_empty(&self) -> bool {
        self.wanted_by.is_empty()
            && self.required_by.is_empty()
            && self.alias.is_empty()
            && self.also.is_empty()
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

/// The symlinks enabling `unit`, whose file was found at `unit_path`.
pub fn links_for(unit: &str, unit_path: &str, inst: &Install) -> Result<Vec<Link>> {
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
}
