//! Boards are data: a `boards/NAME.toml` file says where the base image comes from, what its
//! partition table looks like, which partition plays which role, and how the board's OS takes
//! users, SSH keys and a hostname. Nothing in the pipeline branches on a board's name.
//!
//! The three boards shipped in the repository are compiled into the binary, so `imgbuild`
//! works from any directory (and in a container); `--boards-dir DIR` adds or overrides boards.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The board files compiled into the binary: `(file name, contents)`.
const BUILTIN: &[(&str, &str)] = &[
    ("rpi4.toml", include_str!("../../../boards/rpi4.toml")),
    (
        "rpi4-debian.toml",
        include_str!("../../../boards/rpi4-debian.toml"),
    ),
    (
        "generic-arm64.toml",
        include_str!("../../../boards/generic-arm64.toml"),
    ),
];

/// One board: a base image and how to customise it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name used on the command line (`--board NAME`).
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// Where the base image comes from.
    pub base: BaseImage,
    /// The partition table the base image must have.
    pub table: TableSpec,
    /// The partitions imgbuild patches, by role.
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionSpec>,
    /// How users, SSH keys and the hostname are applied.
    pub access: Access,
    /// Boot-partition text files imgbuild may edit.
    #[serde(default)]
    pub boot: BootFiles,
}

/// The pinned base image of a board.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaseImage {
    /// Download URL of the (usually compressed) image.
    pub url: String,
    /// Lower-case hex sha256 of the file at `url`; empty when not pinned yet.
    #[serde(default)]
    pub sha256: String,
    /// Lower-case hex sha512 of the file at `url` (for publishers that list only `SHA512SUMS`,
    /// like Debian's cloud images); empty when not pinned. Checked with `sha256` when both are set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha512: String,
    /// Size in bytes of the file at `url`, when known.
    #[serde(default)]
    pub size: Option<u64>,
    /// URL of a detached OpenPGP signature of the file, when the vendor publishes one.
    #[serde(default)]
    pub signature_url: Option<String>,
    /// Fingerprint (hex) of the key that must have made `signature_url`.
    #[serde(default)]
    pub signing_key_fingerprint: Option<String>,
    /// Armored public key file, relative to the boards directory (`keys/NAME.asc`).
    #[serde(default)]
    pub signing_key: Option<String>,
}

/// Which partition table the image carries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// `mbr` or `gpt`.
    #[serde(rename = "type")]
    pub kind: TableType,
}

/// A partition table type named by a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableType {
    /// DOS/MBR partition table.
    Mbr,
    /// GUID partition table.
    Gpt,
}

/// What a partition is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The FAT partition the firmware or UEFI reads (kernel, cmdline, config).
    Boot,
    /// The ext4 root file system.
    Root,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Boot => "boot",
            Role::Root => "root",
        })
    }
}

/// File-system type a board expects in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    /// FAT12/16/32.
    Vfat,
    /// ext4 (ext2/ext3 are accepted as well; libext2fs writes all three).
    Ext4,
}

/// One partition of a board's image.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// What the partition is for.
    pub role: Role,
    /// 1-based partition number, as Linux numbers them (`/dev/mmcblk0p2` is 2).
    pub index: u32,
    /// Expected file system.
    pub fs: FsType,
    /// Expected file-system label; `None` means "any label".
    #[serde(default)]
    pub label: Option<String>,
    /// Where the OS mounts it (documentation and manifest only).
    pub mount: String,
}

/// How a board's OS takes users, SSH keys and the hostname.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// The mechanism; see [`AccessStyle`].
    pub style: AccessStyle,
}

/// The mechanisms imgbuild knows for first-user setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessStyle {
    /// Raspberry Pi OS: `userconf.txt` (`name:crypt-hash`) and an empty `ssh` file on the boot
    /// partition; the OS renames its first user on first boot.
    Raspios,
    /// Debian's raspi images: `sysconf.txt` on the boot partition for the hostname and root's
    /// SSH key; other users are written into the root file system.
    DebianRaspi,
    /// Everything written into the root file system (`/etc/passwd`, `/etc/shadow`, ...).
    Rootfs,
}

/// Text files on the boot partition that carry the kernel command line and firmware config.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    /// Path of the kernel command line file on the boot partition (`cmdline.txt`).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Path of the firmware config file on the boot partition (`config.txt`).
    #[serde(default)]
    pub config: Option<String>,
    /// Tokens always appended to the command line when the Greengrass payload is built.
    #[serde(default)]
    pub cmdline_defaults: Vec<String>,
}

impl Board {
    /// Parses a board file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Board> {
        let board: Board = toml::from_str(text)
            .map_err(|e| Error::msg(format!("board file {origin}: {}", e.message())))?;
        board.check(origin)?;
        Ok(board)
    }

    fn check(&self, origin: &str) -> Result<()> {
        for role in [Role::Boot, Role::Root] {
            let n = self.partitions.iter().filter(|p| p.role == role).count();
            if n != 1 {
                crate::bail!("board file {origin}: needs exactly one partition with role = \"{role}\", found {n}");
            }
        }
        if let Some(p) = self.partitions.iter().find(|p| p.index == 0) {
            crate::bail!(
                "board file {origin}: partition for role {} has index 0; indexes start at 1",
                p.role
            );
        }
        let sha = &self.base.sha256;
        if !sha.is_empty() && !is_sha256_hex(sha) {
            crate::bail!(
                "board file {origin}: base.sha256 must be 64 lower-case hex digits, got {sha:?}"
            );
        }
        let sha = &self.base.sha512;
        if !sha.is_empty() && !(sha.len() == 128 && is_lower_hex(sha)) {
            crate::bail!(
                "board file {origin}: base.sha512 must be 128 lower-case hex digits, got {sha:?}"
            );
        }
        Ok(())
    }

    /// The partition with the given role (a parsed board always has one of each).
    pub fn partition(&self, role: Role) -> &PartitionSpec {
        // `check` guarantees exactly one partition per role.
        self.partitions
            .iter()
            .find(|p| p.role == role)
            .unwrap_or(&self.partitions[0])
    }
}

/// True when `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BaseImage {
    /// True when the board pins its base by sha256 or sha512.
    pub fn is_pinned(&self) -> bool {
        !self.sha256.is_empty() || !self.sha512.is_empty()
    }
}

/// All known boards: the built-in ones, overridden or extended by `*.toml` in `dir`.
pub fn load_all(dir: Option<&Path>) -> Result<BTreeMap<String, Board>> {
    let mut boards = BTreeMap::new();
    for (file, text) in BUILTIN {
        let b = Board::parse(text, &format!("(built-in) {file}"))?;
        boards.insert(b.name.clone(), b);
    }
    if let Some(dir) = dir {
        let entries = std::fs::read_dir(dir)
            .context(|| format!("reading boards directory {}", dir.display()))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .context(|| format!("reading board file {}", path.display()))?;
            let b = Board::parse(&text, &path.display().to_string())?;
            boards.insert(b.name.clone(), b);
        }
    }
    Ok(boards)
}

/// Finds one board by name, with an error listing the known ones.
pub fn find(name: &str, dir: Option<&Path>) -> Result<Board> {
    let mut all = load_all(dir)?;
    let known = all.keys().cloned().collect::<Vec<_>>().join(", ");
    all.remove(name).ok_or_else(|| {
        Error::msg(format!(
            "unknown board {name:?}; known boards: {known} (see `imgbuild boards`)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_boards_parse_and_have_both_roles() {
        let all = load_all(None).expect("built-in boards parse");
        assert_eq!(
            all.keys().cloned().collect::<Vec<_>>(),
            ["generic-arm64", "rpi4", "rpi4-debian"]
        );
        let rpi = &all["rpi4"];
        assert_eq!(rpi.partition(Role::Boot).label.as_deref(), Some("bootfs"));
        assert_eq!(rpi.partition(Role::Root).index, 2);
        assert_eq!(all["generic-arm64"].partition(Role::Boot).index, 15);
        assert_eq!(all["generic-arm64"].table.kind, TableType::Gpt);
    }

    #[test]
    fn unknown_key_and_missing_role_are_errors() {
        let text = include_str!("../../../boards/rpi4.toml");
        let bad = text.replace("[access]", "[access]\ncolour = \"red\"");
        let e = Board::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("colour"), "{e}");
        let one_role = text.replace("role = \"boot\"", "role = \"root\"");
        let e = Board::parse(&one_role, "y.toml").unwrap_err().to_string();
        assert!(e.contains("exactly one partition"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn sha512_pins_are_parsed_and_checked() {
        let text = include_str!("../../../boards/generic-arm64.toml");
        let b = Board::parse(text, "g.toml").expect("parses");
        assert!(
            !b.base.is_pinned(),
            "no trustworthy sha512 was found for the .raw"
        );
        let hash = "0123456789abcdef".repeat(8);
        let pinned = text.replace(
            "sha256 = \"\"",
            &format!("sha256 = \"\"\nsha512 = \"{hash}\""),
        );
        let b = Board::parse(&pinned, "g.toml").expect("parses");
        assert_eq!(b.base.sha512, hash);
        assert!(b.base.is_pinned());
        for bad in [
            hash[..64].to_string(),
            hash.to_uppercase(),
            format!("{hash}0"),
        ] {
            let t = text.replace("sha256 = \"\"", &format!("sha512 = \"{bad}\""));
            let e = Board::parse(&t, "g.toml").unwrap_err().to_string();
            assert!(e.contains("base.sha512 must be 128"), "{e}");
        }
    }

    #[test]
    fn unknown_board_lists_known_ones() {
        let e = find("pi9", None).unwrap_err().to_string();
        assert!(e.contains("rpi4-debian") && e.contains("pi9"), "{e}");
    }
}
