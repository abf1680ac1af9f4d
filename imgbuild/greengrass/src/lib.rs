//! The AWS IoT Greengrass provisioning payload of imgbuild.
//!
//! A build with a `[greengrass]` section ([`GreengrassConfig`]) checks the section ([`validate`]) and the claim
//! certificate and key ([`load_claim`]), then injects the claim material, Amazon Root CA 1
//! ([`amazon_root_ca1`]), the fleet provisioning plugin config ([`render_plugin_config`]) and the first-boot
//! settings ([`firstboot_env`]) into the image — all listed by [`payload_files`]. On first boot, `firstboot/`
//! replaces [`SERIAL_PLACEHOLDER`] with the device's serial number and installs Greengrass.
//!
//! Private key material never appears in this crate's errors, warnings or `Debug` output.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod claim;
mod config;
pub mod contract;
mod error;
mod render;
mod rootca;
mod validate;

pub use claim::{load_claim, resolve, ClaimMaterial, KeyKind, SecretBytes, EXPIRY_WARNING};
pub use config::{
    Artifact, Docker, GreengrassConfig, DEFAULT_JAVA_PACKAGE, DEFAULT_MQTT_PORT,
    DEFAULT_NUCLEUS_VERSION, DEFAULT_PLUGIN_VERSION, RELEASES_URL,
};
pub use error::{GgError, Result};
pub use render::{
    firstboot_env, payload_files, payload_files_with_config, render_plugin_config,
    render_plugin_config_from, template_context, template_parameters, PayloadContents, PayloadFile,
    CLAIM_CERT_PATH, CLAIM_KEY_PATH, DATA_PLANE_PORT_443, FIRSTBOOT_ENV_PATH, GG_ROOT,
    PLUGIN_CONFIG_TEMPLATE, PLUGIN_CONFIG_TEMPLATE_NAME, PLUGIN_CONFIG_TEMPLATE_PATH,
    SERIAL_PLACEHOLDER,
};
pub use rootca::{
    amazon_root_ca1, check_root_ca_pem, load_root_ca, root_ca_path, verify_root_ca,
    AMAZON_ROOT_CA1_DER_SHA256, AMAZON_ROOT_CA1_PEM_SHA256, CUSTOM_ROOT_CA_PATH, ROOT_CA_PATH,
};
pub use validate::{region_domain, region_partition, validate};
