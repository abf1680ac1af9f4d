//! `imgbuild cloud provisioning config`: a build configuration = the project's `imgbuild.toml`
//! with its `[greengrass]` section completed from published [`ProvisioningParams`] and the
//! claim files, written to a new file.
//!
//! The merge edits the TOML document (comments, order and every other key are kept): the six
//! provisioning keys and `claim_cert`/`claim_key` are set in the existing `[greengrass]` table,
//! or in a new one when the project has none, so the result never holds two `[greengrass]`
//! tables. Keys the parameters do not carry (`nucleus_version`, `proxy_url`,
//! `[greengrass.template_parameters]`, …) stay as the project set them. A project value that
//! differs from the published one is replaced, and reported, since the published parameters
//! describe the account the device will join.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table};

use crate::error::{bail, Context, Result};
use crate::provisioning::ProvisioningParams;

/// A provisioning key whose project value was replaced by the published one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// The key in `[greengrass]`.
    pub key: String,
    /// The project's value (as TOML).
    pub old: String,
    /// The published value.
    pub new: String,
}

/// Merges `params` and the claim paths into the `[greengrass]` section of `config` (TOML text);
/// `origin` names the config in errors. Returns the new text and the replaced values.
pub fn merge(
    config: &str,
    origin: &str,
    params: &ProvisioningParams,
    claim_cert: &str,
    claim_key: &str,
) -> Result<(String, Vec<Replaced>)> {
    let mut doc: DocumentMut = config
        .parse()
        .context(|| format!("{origin}: not valid TOML"))?;
    let root = doc.as_table_mut();
    if !root.contains_key("greengrass") {
        let mut table = Table::new();
        table.set_implicit(false);
        root.insert("greengrass", Item::Table(table));
    }
    let Some(gg) = root.get_mut("greengrass").and_then(Item::as_table_like_mut) else {
        bail!("{origin}: `greengrass` is not a table; write it as a [greengrass] section");
    };
    let values = [
        ("region", params.region.as_str()),
        ("data_endpoint", &params.data_endpoint),
        ("credential_endpoint", &params.credential_endpoint),
        ("role_alias", &params.role_alias),
        ("provisioning_template", &params.provisioning_template),
        ("thing_group", &params.thing_group),
        ("claim_cert", claim_cert),
        ("claim_key", claim_key),
    ];
    let mut replaced = Vec::new();
    for (key, value) in values {
        if let Some(old) = gg.get(key) {
            if old.as_str() == Some(value) {
                continue;
            }
            replaced.push(Replaced {
                key: key.to_owned(),
                old: bare(old),
                new: value.to_owned(),
            });
        }
        gg.insert(key, toml_edit::value(value));
    }
    Ok((doc.to_string(), replaced))
}

/// An item as TOML without its whitespace and comments.
fn bare(item: &Item) -> String {
    match item.as_value() {
        Some(value) => {
            let mut value = value.clone();
            value.decor_mut().clear();
            value.to_string()
        }
        None => item.to_string().trim().to_owned(),
    }
}

/// Reads `config` and `params_file` (provisioning.json), merges, and writes `out` (not over
/// either input). Claim paths are written as given: relative ones resolve against `out`'s
/// directory when the build reads it.
pub fn write_merged(
    config: &Path,
    params_file: &Path,
    claim_dir: &Path,
    out: &Path,
) -> Result<Vec<Replaced>> {
    // The same file under another spelling (`./imgbuild.toml`, a symlink) counts as the input.
    let same = |input: &Path| {
        out == input
            || matches!(
                (std::fs::canonicalize(out), std::fs::canonicalize(input)),
                (Ok(a), Ok(b)) if a == b
            )
    };
    if same(config) || same(params_file) {
        bail!(
            "{}: the merged configuration must go to a new file, not over its input",
            out.display()
        );
    }
    let text = std::fs::read_to_string(config)
        .context(|| format!("{}: cannot read the configuration", config.display()))?;
    let json = std::fs::read_to_string(params_file).context(|| {
        format!(
            "{}: cannot read the provisioning parameters",
            params_file.display()
        )
    })?;
    let params: ProvisioningParams = serde_json::from_str(&json).context(|| {
        format!(
            "{}: not provisioning parameters (from `imgbuild cloud provisioning fetch`)",
            params_file.display()
        )
    })?;
    let path = |name: &str| claim_dir.join(name).display().to_string();
    let (merged, replaced) = merge(
        &text,
        &config.display().to_string(),
        &params,
        &path("claim.cert.pem"),
        &path("claim.private.key"),
    )?;
    // Written next to `out` and renamed over it, so a failure never leaves half a file.
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = out.with_file_name(format!(".{}.partial", name.as_deref().unwrap_or("config")));
    let written = std::fs::write(&tmp, merged).and_then(|()| std::fs::rename(&tmp, out));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.context(|| format!("{}: cannot write", out.display()))?;
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ProvisioningParams {
        ProvisioningParams {
            region: "eu-west-1".into(),
            data_endpoint: "abc-ats.iot.eu-west-1.amazonaws.com".into(),
            credential_endpoint: "xyz.credentials.iot.eu-west-1.amazonaws.com".into(),
            role_alias: "GGAlias".into(),
            provisioning_template: "FleetTemplate".into(),
            thing_group: "Fleet".into(),
        }
    }

    fn gg(text: &str) -> toml::Table {
        let doc: toml::Table = toml::from_str(text).unwrap();
        doc["greengrass"].as_table().unwrap().clone()
    }

    #[test]
    fn a_project_without_greengrass_gets_one_section() {
        let cfg = "hostname = \"gg\"\n\n[user]\nname = \"admin\"\n";
        let (out, replaced) =
            merge(cfg, "c", &params(), "secrets/claim.cert.pem", "secrets/k").unwrap();
        assert!(replaced.is_empty());
        assert_eq!(out.matches("[greengrass]").count(), 1, "{out}");
        let t = gg(&out);
        assert_eq!(t["role_alias"].as_str(), Some("GGAlias"));
        assert_eq!(t["claim_cert"].as_str(), Some("secrets/claim.cert.pem"));
        assert_eq!(t.len(), 8);
        assert!(
            out.starts_with(cfg.trim_end()),
            "the project's text comes first: {out}"
        );
    }

    #[test]
    fn an_existing_section_is_completed_not_duplicated_and_keeps_its_keys() {
        let cfg = "# project\n[greengrass]\n# pinned for the field\nnucleus_version = \"2.16.0\"\n\
                   region = \"us-east-1\" # old\nproxy_url = \"http://proxy:3128\"\n\n\
                   [greengrass.template_parameters]\nSite = \"Berlin\"\n\n[boot]\ncmdline_append = [\"quiet\"]\n";
        let (out, replaced) = merge(cfg, "c", &params(), "s/c.pem", "s/k.key").unwrap();
        assert_eq!(out.matches("[greengrass]").count(), 1, "{out}");
        assert!(
            out.contains("# pinned for the field"),
            "comments kept: {out}"
        );
        let doc: toml::Table = toml::from_str(&out).unwrap();
        let t = doc["greengrass"].as_table().unwrap();
        assert_eq!(t["nucleus_version"].as_str(), Some("2.16.0"));
        assert_eq!(t["proxy_url"].as_str(), Some("http://proxy:3128"));
        assert_eq!(t["region"].as_str(), Some("eu-west-1"));
        assert_eq!(t["template_parameters"]["Site"].as_str(), Some("Berlin"));
        assert_eq!(doc["boot"]["cmdline_append"][0].as_str(), Some("quiet"));
        assert_eq!(
            replaced,
            [Replaced {
                key: "region".into(),
                old: "\"us-east-1\"".into(),
                new: "eu-west-1".into()
            }]
        );
        // Merging the result again changes nothing.
        let (again, replaced) = merge(&out, "c", &params(), "s/c.pem", "s/k.key").unwrap();
        assert_eq!(again, out);
        assert!(replaced.is_empty());
    }

    #[test]
    fn bad_configs_are_errors_naming_the_file() {
        for bad in ["greengrass = 3\n", "[greengrass\n", "a = \n"] {
            let err = merge(bad, "proj.toml", &params(), "c", "k")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("proj.toml: "), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
