//! What goes into the image: the plugin config template, the first-boot settings and the file list.

use std::collections::BTreeMap;

use crate::claim::ClaimMaterial;
use crate::config::{Artifact, GreengrassConfig};
use crate::error::{setting_bail, GgError, Result};
use crate::rootca::root_ca_path;

pub use crate::contract::{
    CLAIM_CERT_PATH, CLAIM_KEY_PATH, FIRSTBOOT_ENV_PATH, GG_ROOT, PLUGIN_CONFIG_TEMPLATE_PATH,
    SERIAL_PLACEHOLDER,
};

/// The plugin config template, `templates/greengrass/fleet-provisioning.yaml.tera`.
pub const PLUGIN_CONFIG_TEMPLATE: &str =
    include_str!("../../../templates/greengrass/fleet-provisioning.yaml.tera");
/// Path of the plugin config template relative to a templates directory: the built-in one
/// ([`PLUGIN_CONFIG_TEMPLATE`]) is `templates/` of the repository; a project's `templates_dir` holding this
/// file overrides it.
pub const PLUGIN_CONFIG_TEMPLATE_NAME: &str = "greengrass/fleet-provisioning.yaml.tera";
/// The nucleus's data-plane HTTPS port (`greengrassDataPlanePort`) used with `mqtt_port = 443`.
pub const DATA_PLANE_PORT_443: u16 = 443;

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
/// `mqtt_port`, `data_plane_port` (443 with `mqtt_port = 443`, else absent), `proxy_url` (absent when unset),
/// `serial_placeholder`.
///
/// `mqtt_port = 443` also sets the nucleus's `greengrassDataPlanePort` to 443: behind a firewall that passes
/// only 443, deployments (the data plane, 8443 by default) fail otherwise. Source: AWS IoT Greengrass
/// developer guide, "Connect on port 443 or through a network proxy"
/// (docs.aws.amazon.com/greengrass/v2/developerguide/configure-greengrass-core-v2.html#configure-alpn-network-proxy)
/// and the nucleus 2.0.4 release notes (greengrass-release-2021-02-04), which introduced the parameter.
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
    context.insert("root_ca_path", root_ca_path(cfg));
    context.insert(
        "template_parameters",
        &template_parameters(cfg, serial_placeholder),
    );
    context.insert("mqtt_port", &cfg.mqtt_port);
    if cfg.mqtt_port == 443 {
        context.insert("data_plane_port", &DATA_PLANE_PORT_443);
    }
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
    render_plugin_config_from(
        cfg,
        serial_placeholder,
        PLUGIN_CONFIG_TEMPLATE,
        &format!("templates/{PLUGIN_CONFIG_TEMPLATE_NAME} (built in)"),
    )
}

/// Like [`render_plugin_config`], with the template text `template` (a project's own
/// `templates_dir/greengrass/fleet-provisioning.yaml.tera`); `origin` names it in errors. The context is
/// [`template_context`]; an unknown variable, a syntax error or a result without the placeholder is an error.
pub fn render_plugin_config_from(
    cfg: &GreengrassConfig,
    serial_placeholder: &str,
    template: &str,
    origin: &str,
) -> Result<String> {
    let placeholder_ok = (3..=64).contains(&serial_placeholder.len())
        && serial_placeholder
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@_%-".contains(c));
    if !placeholder_ok {
        setting_bail!("serial placeholder {serial_placeholder:?} must be 3 to 64 characters of A-Z a-z 0-9 @ _ % -");
    }
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(PLUGIN_CONFIG_TEMPLATE_NAME, template)
        .map_err(|e| tera_error(origin, "parsing", &e))?;
    let rendered = tera
        .render(
            PLUGIN_CONFIG_TEMPLATE_NAME,
            &template_context(cfg, serial_placeholder),
        )
        .map_err(|e| tera_error(origin, "rendering", &e))?;
    if !rendered.contains(serial_placeholder) {
        return Err(GgError::template(
            origin,
            format!(
                "the rendered config lacks the serial placeholder {serial_placeholder}: use \
                 {{{{ serial_placeholder }}}} where the device's serial number goes"
            ),
        ));
    }
    Ok(rendered)
}

/// A one-line error from a tera error and its causes.
fn tera_error(origin: &str, doing: &str, error: &tera::Error) -> GgError {
    let mut problem = format!("{doing} failed: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        problem.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    GgError::template(origin, problem)
}

/// Quotes a value for a bash-sourced `KEY=VALUE` line: bare when it is plain, else in single quotes.
pub(crate) fn shell_value(value: &str) -> String {
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
/// `PLUGIN_SHA256`, `PLUGIN_URL`, `DOCKER_FLAVOR` (`debian`/`docker-ce`), `JAVA_PACKAGE`, `GG_ROOT`,
/// `ROOT_CA_PATH` and, when set, `PROXY_URL`; then `firstboot_env` (e.g. `GG_PROVISION_TIMEOUT`). The pipeline appends its own keys (e.g. `BUILD_EPOCH`). Fails when a digest is unknown.
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
        ("ROOT_CA_PATH", root_ca_path(cfg).to_owned()),
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
            setting_bail!(
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
/// (0600), the root CA (0644: Amazon Root CA 1 checked against its pins, or `root_ca`), the plugin config
/// rendered from the built-in template and the first-boot settings (0600). Call [`crate::validate`] and
/// [`crate::load_claim`] first.
pub fn payload_files(cfg: &GreengrassConfig, claim: &ClaimMaterial) -> Result<Vec<PayloadFile>> {
    let config = render_plugin_config(cfg, SERIAL_PLACEHOLDER)?;
    payload_files_with_config(cfg, claim, config)
}

/// Like [`payload_files`], with the plugin config already rendered (e.g. by [`render_plugin_config_from`]
/// from a project's own template).
pub fn payload_files_with_config(
    cfg: &GreengrassConfig,
    claim: &ClaimMaterial,
    plugin_config: String,
) -> Result<Vec<PayloadFile>> {
    if cfg.root_ca.is_none() {
        crate::rootca::verify_root_ca()?;
    }
    if !plugin_config.contains(SERIAL_PLACEHOLDER) {
        return Err(GgError::template(
            "the plugin config",
            format!("lacks the serial placeholder {SERIAL_PLACEHOLDER}"),
        ));
    }
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
        public(root_ca_path(cfg), 0o644, claim.root_ca_pem.clone()),
        public(
            PLUGIN_CONFIG_TEMPLATE_PATH,
            0o600,
            plugin_config.into_bytes(),
        ),
        public(FIRSTBOOT_ENV_PATH, 0o600, firstboot_env(cfg)?.into_bytes()),
    ])
}
