//! Access: the login user, SSH keys and host name, applied the way the board's OS expects
//! ([`AccessStyle`]). This module computes file contents from the image's current files; the
//! apply stage reads and writes them.
//!
//! Decisions shared by every style:
//! - SSH keys go to `/etc/ssh/authorized_keys/USER` (root-owned, 0644) and an sshd drop-in adds
//!   that file to `AuthorizedKeysFile`, so keys work whatever uid or home the user ends up with
//!   (Raspberry Pi OS renames its first user on first boot).
//! - Without `password_hash` the drop-in turns password authentication off and the account's
//!   password is locked (`!`); no default password exists anywhere.

use crate::board::AccessStyle;
use crate::config::UserConfig;
use crate::error::Result;

/// sshd drop-in written by imgbuild.
pub const SSHD_DROPIN: &str = "/etc/ssh/sshd_config.d/50-imgbuild.conf";
/// Directory of root-owned authorized_keys files, one per user.
pub const KEYS_DIR: &str = "/etc/ssh/authorized_keys";

/// A file to write on the boot partition or the root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFile {
    /// True for the boot partition (path relative to its root), false for the root fs.
    pub on_boot: bool,
    /// Absolute path within that file system.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits (root fs only).
    pub mode: u32,
    /// Owner uid/gid (root fs only).
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// True for a directory (root fs only; `data` is empty).
    pub dir: bool,
}

impl AccessFile {
    fn root(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> AccessFile {
        AccessFile {
            on_boot: false,
            path: path.into(),
            data: data.into(),
            mode,
            uid: 0,
            gid: 0,
            dir: false,
        }
    }
    fn boot(path: &str, data: impl Into<Vec<u8>>) -> AccessFile {
        AccessFile {
            on_boot: true,
            path: path.into(),
            data: data.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            dir: false,
        }
    }
}

/// Reads a file of the image; `None` when it does not exist.
pub trait ImageFiles {
    /// Contents of a root-fs file.
    fn root_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Contents of a boot-partition file.
    fn boot_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
}

/// Computes every file the `[user]` section and `hostname` need for this board's style.
pub fn files(
    style: AccessStyle,
    user: Option<&UserConfig>,
    hostname: Option<&str>,
    img: &dyn ImageFiles,
) -> Result<Vec<AccessFile>> {
    let mut out = Vec::new();
    if let Some(h) = hostname {
        out.push(AccessFile::root("/etc/hostname", format!("{h}\n"), 0o644));
        let hosts = text(img.root_file("/etc/hosts")?);
        out.push(AccessFile::root(
            "/etc/hosts",
            hosts_with_hostname(&hosts, h),
            0o644,
        ));
    }
    if let Some(u) = user {
        out.push(AccessFile::root(
            SSHD_DROPIN,
            sshd_dropin(u.password_hash.is_some()),
            0o644,
        ));
        if !u.ssh_authorized_keys.is_empty() {
            let keys = u.ssh_authorized_keys.join("\n") + "\n";
            out.push(AccessFile::root(
                &format!("{KEYS_DIR}/{}", u.name),
                keys,
                0o644,
            ));
        }
    }
    match style {
        AccessStyle::Raspios => {
            if let Some(u) = user {
                let hash = u.password_hash.as_deref().unwrap_or("!");
                out.push(AccessFile::boot(
                    "/userconf.txt",
                    format!("{}:{hash}\n", u.name),
                ));
                out.push(AccessFile::boot("/ssh", Vec::new()));
            }
        }
        AccessStyle::DebianRaspi => {
            let sysconf = text(img.boot_file("/sysconf.txt")?);
            let mut pairs = Vec::new();
            if let Some(h) = hostname {
                pairs.push(("hostname", h.to_string()));
            }
            if let Some(u) = user.filter(|u| u.name == "root") {
                if let Some(k) = u.ssh_authorized_keys.first() {
                    pairs.push(("root_authorized_key", k.clone()));
                }
            }
            if !pairs.is_empty() {
                out.push(AccessFile::boot(
                    "/sysconf.txt",
                    sysconf_set(&sysconf, &pairs),
                ));
            }
            if let Some(u) = user.filter(|u| u.name != "root") {
                out.extend(rootfs_user(u, img)?);
            }
        }
        AccessStyle::Rootfs => {
            if let Some(u) = user.filter(|u| u.name != "root") {
                out.extend(rootfs_user(u, img)?);
            }
        }
    }
    lock_empty_passwords(&mut out, img)?;
    Ok(out)
}

/// Locks every account whose password field in `/etc/shadow` is empty (Debian's raspi image
/// ships `root::`, a password-less console login): imgbuild images have no default password.
/// Works on the shadow file already in `out` when the `[user]` section changed it.
fn lock_empty_passwords(out: &mut Vec<AccessFile>, img: &dyn ImageFiles) -> Result<()> {
    let planned = out
        .iter()
        .position(|f| !f.on_boot && f.path == "/etc/shadow");
    let shadow = match planned {
        Some(i) => String::from_utf8_lossy(&out[i].data).into_owned(),
        None => match img.root_file("/etc/shadow")? {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => return Ok(()),
        },
    };
    let (locked, names) = locked_shadow(&shadow);
    if names.is_empty() {
        return Ok(());
    }
    tracing::info!(
        accounts = %names.join(","),
        "locked password-less accounts of the base image in /etc/shadow"
    );
    match planned {
        Some(i) => out[i].data = locked.into_bytes(),
        None => {
            let group = text(img.root_file("/etc/group")?);
            out.push(AccessFile {
                gid: gid_of(&group, "shadow").unwrap_or(0),
                ..AccessFile::root("/etc/shadow", locked, 0o640)
            });
        }
    }
    Ok(())
}

/// `shadow` with each empty password field replaced by `!` (locked, as `passwd -l` does), and
/// the names of the accounts changed.
pub fn locked_shadow(shadow: &str) -> (String, Vec<String>) {
    let mut names = Vec::new();
    let mut out = String::with_capacity(shadow.len() + 8);
    for line in shadow.split_inclusive('\n') {
        let mut fields = line.splitn(3, ':');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(name), Some(""), Some(rest)) if !name.is_empty() => {
                names.push(name.to_string());
                out.push_str(&format!("{name}:!:{rest}"));
            }
            _ => out.push_str(line),
        }
    }
    (out, names)
}

fn text(b: Option<Vec<u8>>) -> String {
    b.map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The sshd drop-in: extra AuthorizedKeysFile, and no password logins without a password hash.
pub fn sshd_dropin(has_password: bool) -> String {
    let mut s = String::from(
        "# Written by imgbuild.\nAuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u\n",
    );
    if !has_password {
        s.push_str("PasswordAuthentication no\nKbdInteractiveAuthentication no\n");
    }
    s.push_str("PermitRootLogin prohibit-password\n");
    s
}

/// `/etc/hosts` with the `127.0.1.1` line naming `host` (replaced or added).
pub fn hosts_with_hostname(hosts: &str, host: &str) -> String {
    let line = format!("127.0.1.1\t{host}");
    let mut found = false;
    let mut out: Vec<String> = hosts
        .lines()
        .map(|l| {
            if l.split_whitespace().next() == Some("127.0.1.1") {
                found = true;
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        out.push(line);
    }
    out.join("\n") + "\n"
}

/// Sets `key=value` lines of Debian's raspi `sysconf.txt`, replacing a commented default.
pub fn sysconf_set(sysconf: &str, pairs: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = sysconf.lines().map(str::to_string).collect();
    for (k, v) in pairs {
        let new = format!("{k}={v}");
        let pos = lines.iter().position(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.split_once('=').map(|(key, _)| key.trim()) == Some(*k)
        });
        match pos {
            Some(i) => lines[i] = new,
            None => lines.push(new),
        }
    }
    lines.join("\n") + "\n"
}

/// Account files for a user created in the root file system (`/etc/passwd`, `/etc/group`,
/// `/etc/shadow`, and the home directory with the skeleton files). An existing user keeps its ids
/// and home and only gets its password field set.
fn rootfs_user(u: &UserConfig, img: &dyn ImageFiles) -> Result<Vec<AccessFile>> {
    let passwd = text(img.root_file("/etc/passwd")?);
    let group = text(img.root_file("/etc/group")?);
    let shadow = text(img.root_file("/etc/shadow")?);
    let shadow_gid = gid_of(&group, "shadow").unwrap_or(0);
    let acct = add_user(
        &passwd,
        &group,
        &shadow,
        &u.name,
        u.password_hash.as_deref(),
    );
    let home = if acct.created {
        home_files(u, acct.uid, acct.gid, img)?
    } else {
        Vec::new()
    };
    let mut out = vec![
        AccessFile::root("/etc/passwd", acct.passwd, 0o644),
        AccessFile::root("/etc/group", acct.group, 0o644),
        AccessFile {
            gid: shadow_gid,
            ..AccessFile::root("/etc/shadow", acct.shadow, 0o640)
        },
    ];
    out.extend(home);
    if u.password_hash.is_none() {
        // A locked password would make sudo unusable; key-only users get password-less sudo.
        out.push(AccessFile::root(
            &format!("/etc/sudoers.d/90-imgbuild-{}", u.name),
            format!(
                "# Written by imgbuild: {} has no password.\n{} ALL=(ALL) NOPASSWD:ALL\n",
                u.name, u.name
            ),
            0o440,
        ));
    }
    Ok(out)
}

/// The home directory of a user imgbuild created, owned by the user, mode 0700 (bookworm's adduser
/// default, `DIR_MODE=0700` in /etc/adduser.conf), with the `/etc/skel` dot files Debian's adduser copies
/// (`.bashrc`, `.profile`, `.bash_logout`, when the image has them), owned by the user, mode 0644.
fn home_files(u: &UserConfig, uid: u32, gid: u32, img: &dyn ImageFiles) -> Result<Vec<AccessFile>> {
    let home = format!("/home/{}", u.name);
    let owned = |f: AccessFile| AccessFile { uid, gid, ..f };
    let mut out = vec![owned(AccessFile {
        dir: true,
        ..AccessFile::root(&home, Vec::new(), 0o700)
    })];
    for name in [".bashrc", ".profile", ".bash_logout"] {
        if let Some(data) = img.root_file(&format!("/etc/skel/{name}"))? {
            out.push(owned(AccessFile::root(
                &format!("{home}/{name}"),
                data,
                0o644,
            )));
        }
    }
    Ok(out)
}

/// New contents of the account files after adding (or updating) a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// `/etc/passwd`.
    pub passwd: String,
    /// `/etc/group`.
    pub group: String,
    /// `/etc/shadow`.
    pub shadow: String,
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
    /// True when the user was added (false: it existed and only its password field was set).
    pub created: bool,
}

/// Adds `name` (uid/gid = first free from 1000, its own group, member of `sudo`, `adm` and
/// `users` when they exist) or, if it exists, only sets its password field.
pub fn add_user(
    passwd: &str,
    group: &str,
    shadow: &str,
    name: &str,
    hash: Option<&str>,
) -> Accounts {
    let pw_field = hash.unwrap_or("!");
    let existing = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name)
            .then(|| (f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0)))
    });
    let created = existing.is_none();
    let (uid, gid, mut passwd, mut group) = match existing {
        Some((uid, gid)) => (uid, gid, passwd.to_string(), group.to_string()),
        None => {
            let uid = first_free(passwd, 2);
            let gid = first_free(group, 2).max(uid);
            let passwd = append_line(
                passwd,
                &format!("{name}:x:{uid}:{gid}::/home/{name}:/bin/bash"),
            );
            let mut group = append_line(group, &format!("{name}:x:{gid}:"));
            for g in ["adm", "sudo", "users"] {
                group = add_member(&group, g, name);
            }
            (uid, gid, passwd, group)
        }
    };
    let has_shadow = shadow.lines().any(|l| l.split(':').next() == Some(name));
    let shadow = if has_shadow {
        shadow
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.first() == Some(&name) && f.len() > 1 {
                    f[1] = pw_field;
                }
                f.join(":")
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    } else {
        append_line(shadow, &format!("{name}:{pw_field}:19000:0:99999:7:::"))
    };
    if !passwd.ends_with('\n') {
        passwd.push('\n');
    }
    if !group.ends_with('\n') {
        group.push('\n');
    }
    Accounts {
        passwd,
        group,
        shadow,
        uid,
        gid,
        created,
    }
}

fn first_free(db: &str, id_field: usize) -> u32 {
    let used: std::collections::BTreeSet<u32> = db
        .lines()
        .filter_map(|l| l.split(':').nth(id_field)?.parse().ok())
        .collect();
    (1000..60000).find(|id| !used.contains(id)).unwrap_or(60000)
}

fn append_line(db: &str, line: &str) -> String {
    let mut s = db.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(line);
    s.push('\n');
    s
}

fn add_member(group: &str, g: &str, user: &str) -> String {
    group
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ':').collect();
            if f.len() == 4 && f[0] == g && !f[3].split(',').any(|m| m == user) {
                let members = if f[3].is_empty() {
                    user.to_string()
                } else {
                    format!("{},{user}", f[3])
                };
                format!("{}:{}:{}:{members}", f[0], f[1], f[2])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The gid of a group by name in `/etc/group` text.
pub fn gid_of(group: &str, name: &str) -> Option<u32> {
    id_of(group, name)
}

/// The uid of a user by name in `/etc/passwd` text.
pub fn uid_of(passwd: &str, name: &str) -> Option<u32> {
    id_of(passwd, name)
}

fn id_of(db: &str, name: &str) -> Option<u32> {
    db.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\npi:x:1000:1000::/home/pi:/bin/bash\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:\nsudo:x:27:pi\nshadow:x:42:\npi:x:1000:\n";
    const SHADOW: &str = "root:*:19000:0:99999:7:::\npi:!:19000:0:99999:7:::\n";

    #[test]
    fn add_new_user_gets_next_ids_and_groups() {
        let a = add_user(PASSWD, GROUP, SHADOW, "admin", Some("$6$s$h"));
        assert_eq!((a.uid, a.gid), (1001, 1001));
        assert!(a
            .passwd
            .ends_with("admin:x:1001:1001::/home/admin:/bin/bash\n"));
        assert!(a.group.contains("sudo:x:27:pi,admin\n") && a.group.contains("adm:x:4:admin\n"));
        assert!(a.shadow.contains("admin:$6$s$h:"));
        let again = add_user(&a.passwd, &a.group, &a.shadow, "admin", None);
        assert_eq!(again.passwd, a.passwd);
        assert!(again.shadow.contains("admin:!:") && !again.shadow.contains("$6$s$h"));
    }

    #[test]
    fn hosts_and_sysconf_edits_are_idempotent() {
        let h = hosts_with_hostname("127.0.0.1\tlocalhost\n127.0.1.1\told\n", "new");
        assert_eq!(h, "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n");
        assert_eq!(hosts_with_hostname(&h, "new"), h);
        let s = sysconf_set("# root_pw=\n#hostname=\n", &[("hostname", "n1".into())]);
        assert_eq!(s, "# root_pw=\nhostname=n1\n");
        assert_eq!(sysconf_set(&s, &[("hostname", "n1".into())]), s);
    }

    #[test]
    fn empty_passwords_are_locked_and_nothing_else_changes() {
        let shadow =
            "root::19000:0:99999:7:::\npi:!:19000:0:99999:7:::\nsvc:$6$s$h:19000::::::\nodd\n";
        let (locked, names) = locked_shadow(shadow);
        assert_eq!(names, ["root"]);
        assert_eq!(
            locked,
            "root:!:19000:0:99999:7:::\npi:!:19000:0:99999:7:::\nsvc:$6$s$h:19000::::::\nodd\n"
        );
        assert_eq!(locked_shadow(&locked), (locked.clone(), Vec::new()));
    }

    #[test]
    fn dropin_disables_passwords_without_hash() {
        assert!(sshd_dropin(false).contains("PasswordAuthentication no"));
        assert!(!sshd_dropin(true).contains("PasswordAuthentication"));
        assert_eq!(gid_of(GROUP, "shadow"), Some(42));
        assert_eq!(uid_of(PASSWD, "pi"), Some(1000));
    }
}
