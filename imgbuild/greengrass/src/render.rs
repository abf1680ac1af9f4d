//! What goes into the image: the plugin config template, the first-boot settings and the file list.

use std::collections::BTreeMap;

use crate::claim::ClaimMaterial;
use crate::config::{Artifact, GreengrassConfig};
use crate::error::{gg_bail, GgError, Result};
use crate::rootca::amazon_root_ca1;

/// Greengrass root folder on the device.
pub const GG_ROOT: &str = "/greengrass/v2";
/// Claim certificate on the device (mode 0644).
pub const CLAIM_CERT_PATH: &str = "/greengrass/v2/claim.pem.crt";
/// Claim private key on the device (mode 0600, root).
pub const CLAIM_KEY_PATH: &str = "/greengrass/v2/claim.private.pem.key";
/// Amazon Root CA 1 on the device (mode 0644).
pub const ROOT_CA_PATH: &str = "/greengrass/v2/AmazonRootCA1.pem";
/// The rendered plugin config with the serial placeholder, read by first boot (mode 0600, root).
pub const PLUGIN_CONFIG_TEMPLATE_PATH: &str = "/etc/imgbuild/greengrass-config.yaml.in";
/// The first-boot settings (`KEY=VALUE`, sourced by bash; mode 0600, root).
pub const FIRSTBOOT_ENV_PATH: &str = "/etc/imgbuild/firstboot.env";
/// The placeholder first boot replaces with the device's serial number.
pub const SERIAL_PLACEHOLDER: &str = "@SERIAL_NUMBER@";

/// The plugin config template, `templates/greengrass/fleet-provisioning.yaml.tera`.
pub const PLUGIN_CONFIG_TEMPLATE: &str =
    include_str!("../../../templates/greengrass/fleet-provisioning.yaml.tera");
/// Name under which [`PLUGIN_CONFIG_TEMPLATE`] is registered with tera.
const TEMPLATE_NAME: &str = "greengrass/fleet-provisioning.yaml.tera";

/// The provisioning template parameters: `ThingName` (the serial unless set in `template_parameters`),
/// `ThingGroupName` (when `thing_group` is set), `SerialNumber` (the placeholder) and the extra parameters.
pub fn template_parameters(
    cfg: &GreengrassConfig,
    serial_placeholder: &str,
) -> BTreeMap<String, String> {
    let mut parameters = cfg.template_parameters.clone();
    parameters
        .entry("ThingName".to_owned())
        .or_insert_with(|| serial_placeholder.to_owned());
    if let Some(group) = &cfg.thing_group {
        parameters.insert("ThingGroupName".to_owned(), group.clone());
    }
    parameters.insert("SerialNumber".to_owned(), serial_placeholder.to_owned());
    parameters
}

/// The tera context of the plugin config template (for rendering it through the generic template machinery).
///
/// Keys: `nucleus_version`, `root_path`, `region`, `data_endpoint`, `credential_endpoint`, `role_alias`,
/// `provisioning_template`, `claim_cert_path`, `claim_key_path`, `root_ca_path`, `template_parameters` (map),
/// `mqtt_port`, `proxy_url` (absent when unset), `serial_placeholder`.
pub fn template_context(cfg: &GreengrassConfig, serial_placeholder: &str) -> tera::Context {
    let mut context = tera::Context::new();
    context.insert("nucleus_version", &cfg.nucleus_version);
    context.insert("root_path", GG_ROOT);
    context.insert("region", &cfg.region);
    context.insert("data_endpoint", &cfg.data_endpoint);
    context.insert("credential_endpoint", &cfg.credential_endpoint);
    context.insert("role_alias", &cfg.role_alias);
    context.insert("provisioning_template", &cfg.provisioning_template);
    context.insert("claim_cert_path", CLAIM_CERT_PATH);
    context.insert("claim_key_path", CLAIM_KEY_PATH);
    context.insert("root_ca_path", ROOT_CA_PATH);
    context.insert(
        "template_parameters",
        &template_parameters(cfg, serial_placeholder),
    );
    context.insert("mqtt_port", &cfg.mqtt_port);
    if let Some(proxy) = &cfg.proxy_url {
        context.insert("proxy_url", proxy);
    }
    context.insert("serial_placeholder", serial_placeholder);
    context
}

/// Renders the plugin config (`templates/greengrass/fleet-provisioning.yaml.tera`) for `cfg`, with
/// `serial_placeholder` where the device's serial number goes.
///
/// The placeholder must be 3 to 64 characters of `A-Z a-z 0-9 @ _ % -` so first boot can replace it
/// literally; the rendered text must contain it.
pub fn render_plugin_config(cfg: &GreengrassConfig, serial_placeholder: &str) -> Result<String> {
    let placeholder_ok = (3..=64).contains(&serial_placeholder.len())
        && serial_placeholder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@_%-".contains(c));
    if !placeholder_ok {
        gg_bail!("serial placeholder {serial_placeholder:?} must be 3 to 64 characters of A-Z a-z 0-9 @ _ % -");
    }
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(TEMPLATE_NAME, PLUGIN_CONFIG_TEMPLATE)
        .map_err(|e| tera_error("parsing", &e))?;
    let rendered = tera
        .render(TEMPLATE_NAME, &template_context(cfg, serial_placeholder))
        .map_err(|e| tera_error("rendering", &e))?;
    if !rendered.contains(serial_placeholder) {
        gg_bail!("templates/{TEMPLATE_NAME}: the rendered config lacks the serial placeholder {serial_placeholder}");
    }
    Ok(rendered)
}

/// A one-line error from a tera error and its causes.
fn tera_error(doing: &str, error: &tera::Error) -> GgError {
    let mut message = format!("templates/{TEMPLATE_NAME}: {doing} failed: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    GgError::msg(message)
}

/// Quotes a value for a bash-sourced `KEY=VALUE` line: bare when it is plain, else in single quotes.
fn shell_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+,-./:=_".contains(c));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The first-boot settings file ([`FIRSTBOOT_ENV_PATH`]), `KEY=VALUE` lines sourced by bash.
///
/// Keys (see `firstboot/README.md`): `NUCLEUS_VERSION`, `NUCLEUS_SHA256`, `NUCLEUS_URL`, `PLUGIN_VERSION`,
/// `PLUGIN_SHA256`, `PLUGIN_URL`, `DOCKER_FLAVOR` (`debian`/`docker-ce`), `JAVA_PACKAGE`, `GG_ROOT` and, when
/// set, `PROXY_URL`. The pipeline appends its own keys (e.g. `BUILD_EPOCH`). Fails when a digest is unknown.
pub fn firstboot_env(cfg: &GreengrassConfig) -> Result<String> {
    let mut lines = vec![
        ("NUCLEUS_VERSION", cfg.nucleus_version.clone()),
        ("NUCLEUS_SHA256", cfg.sha256(Artifact::Nucleus)?),
        ("NUCLEUS_URL", cfg.url(Artifact::Nucleus)),
        ("PLUGIN_VERSION", cfg.plugin_version.clone()),
        ("PLUGIN_SHA256", cfg.sha256(Artifact::Plugin)?),
        ("PLUGIN_URL", cfg.url(Artifact::Plugin)),
        ("DOCKER_FLAVOR", cfg.docker.as_str().to_owned()),
        ("JAVA_PACKAGE", cfg.java_package.clone()),
        ("GG_ROOT", GG_ROOT.to_owned()),
    ];
    if let Some(proxy) = &cfg.proxy_url {
        lines.push(("PROXY_URL", proxy.clone()));
    }
    for key in cfg.firstboot_env.keys() {
        let reserved = lines.iter().any(|(k, _)| k == key);
        let shaped = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if reserved || !shaped {
            crate::error::gg_bail!(
                "[greengrass] firstboot_env: {key:?} must be an UPPER_CASE setting not already set from [greengrass]"
            );
        }
    }
    let mut text =
        String::from("# imgbuild first-boot settings, generated from the [greengrass] section\n");
    for (key, value) in lines {
        text.push_str(&format!("{key}={}\n", shell_value(&value)));
    }
    for (key, value) in &cfg.firstboot_env {
        text.push_str(&format!("{key}={}\n", shell_value(value)));
    }
    Ok(text)
}

/// One file of the Greengrass payload, owned by root:root in the image.
#[derive(Debug, Clone)]
pub struct PayloadFile {
    /// Absolute path in the image.
    pub path: &'static str,
    /// Permission bits.
    pub mode: u32,
    /// Contents; secret for the claim key (redacted in `Debug`).
    pub contents: PayloadContents,
}

/// Contents of a [`PayloadFile`].
#[derive(Debug, Clone)]
pub enum PayloadContents {
    /// Public bytes.
    Public(Vec<u8>),
    /// The claim key.
    Secret(crate::claim::SecretBytes),
}

impl PayloadContents {
    /// The bytes to write. Do not log them.
    pub fn bytes(&self) -> &[u8] {
        match self {
            PayloadContents::Public(bytes) => bytes,
            PayloadContents::Secret(secret) => secret.expose_secret(),
        }
    }
}

/// Every Greengrass file the image needs besides `firstboot/` itself: claim certificate (0644) and key
/// (0600), Amazon Root CA 1 (0644, checked against its pins), the plugin config template and the first-boot
/// settings (0600). Call [`crate::validate`] and [`crate::load_claim`] first.
pub fn payload_files(cfg: &GreengrassConfig, claim: &ClaimMaterial) -> Result<Vec<PayloadFile>> {
    crate::rootca::verify_root_ca()?;
    let public = |path, mode, bytes: Vec<u8>| PayloadFile {
        path,
        mode,
        contents: PayloadContents::Public(bytes),
    };
    Ok(vec![
        public(CLAIM_CERT_PATH, 0o644, claim.cert_pem.clone()),
        PayloadFile {
            path: CLAIM_KEY_PATH,
            mode: 0o600,
            contents: PayloadContents::Secret(claim.key_pem.clone()),
        },
        public(ROOT_CA_PATH, 0o644, amazon_root_ca1().to_vec()),
        public(
            PLUGIN_CONFIG_TEMPLATE_PATH,
            0o600,
            render_plugin_config(cfg, SERIAL_PLACEHOLDER)?.into_bytes(),
        ),
        public(FIRSTBOOT_ENV_PATH, 0o600, firstboot_env(cfg)?.into_bytes()),
    ])
}
