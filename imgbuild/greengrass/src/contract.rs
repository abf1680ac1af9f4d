//! The on-device contract between the build and the first-boot scripts (`firstboot/`): every path,
//! marker and name both sides must agree on, written once, here.
//!
//! The bash side does not repeat these values: it sources `firstboot/lib/contract.sh`, which is
//! [`contract_sh`]'s output, checked in (the bats suite and the field test run the scripts from the
//! repository) and written into the image by the build from this module, not from the checked-in
//! copy. The test `imgbuild/greengrass/tests/contract.rs` fails when the checked-in file differs from
//! [`contract_sh`] (regenerate it with `IMGBUILD_BLESS=1 cargo test --test contract`), when the unit
//! file disagrees, or when a script or the field test spells a contract path literally.

/// Directory of the first-boot scripts in the image (`imgbuild-firstboot`, `lib/*.sh`).
pub const FIRSTBOOT_DIR: &str = "/usr/local/lib/imgbuild/firstboot";
/// The first-boot script, run by [`FIRSTBOOT_UNIT`] (`ExecStart=`).
pub const FIRSTBOOT_SCRIPT: &str = "/usr/local/lib/imgbuild/firstboot/imgbuild-firstboot";
/// The first-boot unit's name.
pub const FIRSTBOOT_UNIT: &str = "imgbuild-firstboot.service";
/// The first-boot unit file in the image.
pub const FIRSTBOOT_UNIT_PATH: &str = "/etc/systemd/system/imgbuild-firstboot.service";
/// The target whose `.wants/` enables [`FIRSTBOOT_UNIT`] (its `WantedBy=`).
pub const FIRSTBOOT_WANTED_BY: &str = "multi-user.target";
/// The link that enables [`FIRSTBOOT_UNIT`]; first boot's finish step removes it (`systemctl disable`).
pub const FIRSTBOOT_UNIT_LINK: &str =
    "/etc/systemd/system/multi-user.target.wants/imgbuild-firstboot.service";
/// The first-boot settings (`KEY=VALUE`, sourced by bash; mode 0600, root).
pub const FIRSTBOOT_ENV_PATH: &str = "/etc/imgbuild/firstboot.env";
/// The rendered plugin config with the serial placeholder, read by first boot (mode 0600, root).
pub const PLUGIN_CONFIG_TEMPLATE_PATH: &str = "/etc/imgbuild/greengrass-config.yaml.in";
/// The placeholder first boot replaces with the device's serial number.
pub const SERIAL_PLACEHOLDER: &str = "@SERIAL_NUMBER@";
/// First boot's state directory (0700): step markers `<step>.done`, the serial, `work/`.
pub const STATE_DIR: &str = "/var/lib/imgbuild/firstboot";
/// First boot's scratch directory (downloads, the rendered config), deleted after success.
pub const WORK_DIR: &str = "/var/lib/imgbuild/firstboot/work";
/// The serial number first boot found, one line.
pub const SERIAL_FILE: &str = "/var/lib/imgbuild/firstboot/serial";
/// Written after provisioning succeeded: first boot never runs again (`ConditionPathExists=!`).
pub const DONE_MARKER: &str = "/var/lib/imgbuild/firstboot/done";
/// Directory of pre-seeded downloads in the image (`--preseed`), deleted after success.
pub const PRESEED_DIR: &str = "/var/lib/imgbuild/preseed";
/// Directory of pre-seeded arm64 .debs, installed with every package source switched off.
pub const PRESEED_DEBS_DIR: &str = "/var/lib/imgbuild/preseed/debs";
/// Name of the pre-seeded nucleus zip in [`PRESEED_DIR`]; [`VERSION_PLACEHOLDER`] is the nucleus
/// version (see [`preseed_name`]).
pub const PRESEED_NUCLEUS_NAME: &str = "greengrass-nucleus-@VERSION@.zip";
/// Name of the pre-seeded plugin jar in [`PRESEED_DIR`]; [`VERSION_PLACEHOLDER`] is the plugin version.
pub const PRESEED_PLUGIN_NAME: &str = "fleetprovisioningbyclaim-@VERSION@.jar";
/// The version's place in [`PRESEED_NUCLEUS_NAME`] and [`PRESEED_PLUGIN_NAME`].
pub const VERSION_PLACEHOLDER: &str = "@VERSION@";
/// Greengrass root folder on the device (`GG_ROOT` in the settings).
pub const GG_ROOT: &str = "/greengrass/v2";
/// Claim certificate on the device (mode 0644).
pub const CLAIM_CERT_PATH: &str = "/greengrass/v2/claim.pem.crt";
/// Claim private key on the device (mode 0600, root).
pub const CLAIM_KEY_PATH: &str = "/greengrass/v2/claim.private.pem.key";
/// Where the shipped Amazon Root CA 1 goes on the device (mode 0644).
pub const ROOT_CA_PATH: &str = "/greengrass/v2/AmazonRootCA1.pem";
/// Where a `[greengrass] root_ca` file goes on the device instead (mode 0644).
pub const CUSTOM_ROOT_CA_PATH: &str = "/greengrass/v2/rootCA.pem";
/// Base URL of the AWS IoT Greengrass release downloads (first boot's default `NUCLEUS_URL` and
/// `PLUGIN_URL` derive from it).
pub const RELEASES_URL: &str = "https://d2s8p88vqu9w66.cloudfront.net/releases";

/// `name` ([`PRESEED_NUCLEUS_NAME`] or [`PRESEED_PLUGIN_NAME`]) with `version` in place of
/// [`VERSION_PLACEHOLDER`].
pub fn preseed_name(name: &str, version: &str) -> String {
    name.replace(VERSION_PLACEHOLDER, version)
}

/// `path` relative to [`GG_ROOT`] (e.g. `claim.pem.crt` for [`CLAIM_CERT_PATH`]); first boot
/// resolves these names against its `GG_ROOT` setting.
fn under_gg_root(path: &str) -> &str {
    path.strip_prefix(GG_ROOT)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path)
}

/// `vec![(name, value.to_owned(), doc), ...]` from rows `name = value, doc;`: one row per contract
/// value, so the table reads like the `contract.sh` it becomes.
macro_rules! contract_table {
    ($($name:literal = $value:expr, $doc:literal;)*) => {
        vec![$(($name, String::from($value), $doc)),*]
    };
}

/// `(shell variable, value, meaning)` of every contract value `firstboot/lib/contract.sh` defines.
/// Paths are absolute device paths; the scripts prefix them with `$R` (their test root).
pub fn contract_values() -> Vec<(&'static str, String, &'static str)> {
    contract_table! {
        "CONTRACT_FIRSTBOOT_DIR" = FIRSTBOOT_DIR, "the first-boot scripts";
        "CONTRACT_FIRSTBOOT_SCRIPT" = FIRSTBOOT_SCRIPT, "the unit's ExecStart";
        "CONTRACT_UNIT_NAME" = FIRSTBOOT_UNIT, "the first-boot unit";
        "CONTRACT_UNIT_PATH" = FIRSTBOOT_UNIT_PATH, "its unit file";
        "CONTRACT_UNIT_LINK" = FIRSTBOOT_UNIT_LINK, "the link that enables it";
        "CONTRACT_ENV_FILE" = FIRSTBOOT_ENV_PATH, "the settings (KEY=VALUE)";
        "CONTRACT_CONFIG_TEMPLATE" = PLUGIN_CONFIG_TEMPLATE_PATH, "the installer config with the serial placeholder";
        "CONTRACT_SERIAL_PLACEHOLDER" = SERIAL_PLACEHOLDER, "replaced by the serial number";
        "CONTRACT_STATE_DIR" = STATE_DIR, "step markers <step>.done";
        "CONTRACT_WORK_DIR" = WORK_DIR, "downloads, rendered config";
        "CONTRACT_SERIAL_FILE" = SERIAL_FILE, "the serial number found";
        "CONTRACT_DONE_MARKER" = DONE_MARKER, "provisioned: never run again";
        "CONTRACT_PRESEED_DIR" = PRESEED_DIR, "pre-seeded downloads";
        "CONTRACT_PRESEED_DEBS_DIR" = PRESEED_DEBS_DIR, "pre-seeded .debs";
        "CONTRACT_PRESEED_NUCLEUS_NAME" = PRESEED_NUCLEUS_NAME, "pre-seeded nucleus zip (@VERSION@ = NUCLEUS_VERSION)";
        "CONTRACT_PRESEED_PLUGIN_NAME" = PRESEED_PLUGIN_NAME, "pre-seeded plugin jar (@VERSION@ = PLUGIN_VERSION)";
        "CONTRACT_VERSION_PLACEHOLDER" = VERSION_PLACEHOLDER, "see above";
        "CONTRACT_GG_ROOT" = GG_ROOT, "default GG_ROOT";
        "CONTRACT_CLAIM_CERT_NAME" = under_gg_root(CLAIM_CERT_PATH), "claim certificate, under GG_ROOT";
        "CONTRACT_CLAIM_KEY_NAME" = under_gg_root(CLAIM_KEY_PATH), "claim key, under GG_ROOT";
        "CONTRACT_ROOT_CA_NAME" = under_gg_root(ROOT_CA_PATH), "default root CA, under GG_ROOT";
        "CONTRACT_CUSTOM_ROOT_CA_NAME" = under_gg_root(CUSTOM_ROOT_CA_PATH), "[greengrass] root_ca, under GG_ROOT";
        "CONTRACT_RELEASES_URL" = RELEASES_URL, "default download base";
    }
}

/// The text of `firstboot/lib/contract.sh`: one `CONTRACT_NAME=value` line per
/// [`contract_values`] entry, sourced by the first-boot scripts and the field test.
pub fn contract_sh() -> String {
    let mut text = String::from(
        "# shellcheck shell=bash\n\
         # The on-device contract of imgbuild's first boot: paths, markers and names shared with the build.\n\
         # GENERATED from imgbuild/greengrass/src/contract.rs, do not edit: change the Rust constants and run\n\
         # IMGBUILD_BLESS=1 cargo test --test contract (that test fails while this file differs).\n\
         # The build writes this text into the image itself; the scripts prefix paths with $R.\n\
         # shellcheck disable=SC2034\n",
    );
    for (name, value, doc) in contract_values() {
        text.push_str(&format!(
            "{name}={}  # {doc}\n",
            crate::render::shell_value(&value)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_paths_agree() {
        assert_eq!(
            FIRSTBOOT_SCRIPT,
            format!("{FIRSTBOOT_DIR}/imgbuild-firstboot")
        );
        assert_eq!(
            FIRSTBOOT_UNIT_PATH,
            format!("/etc/systemd/system/{FIRSTBOOT_UNIT}")
        );
        assert_eq!(
            FIRSTBOOT_UNIT_LINK,
            format!("/etc/systemd/system/{FIRSTBOOT_WANTED_BY}.wants/{FIRSTBOOT_UNIT}")
        );
        for p in [WORK_DIR, SERIAL_FILE, DONE_MARKER] {
            assert_eq!(p.rsplit_once('/').map(|(d, _)| d), Some(STATE_DIR), "{p}");
        }
        assert_eq!(PRESEED_DEBS_DIR, format!("{PRESEED_DIR}/debs"));
        for p in [
            CLAIM_CERT_PATH,
            CLAIM_KEY_PATH,
            ROOT_CA_PATH,
            CUSTOM_ROOT_CA_PATH,
        ] {
            let name = under_gg_root(p);
            assert_eq!(format!("{GG_ROOT}/{name}"), p);
            assert!(!name.contains('/'), "{p} is directly under GG_ROOT");
        }
        assert_eq!(
            preseed_name(PRESEED_NUCLEUS_NAME, "2.16.0"),
            "greengrass-nucleus-2.16.0.zip"
        );
    }
}
