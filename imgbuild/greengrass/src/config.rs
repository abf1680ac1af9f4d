//! The `[greengrass]` section of `imgbuild.toml` and the pinned release artifacts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{setting_bail, Result};

/// Nucleus version used when `nucleus_version` is not set.
pub const DEFAULT_NUCLEUS_VERSION: &str = "2.16.0";
/// Fleet provisioning plugin version used when `plugin_version` is not set.
pub const DEFAULT_PLUGIN_VERSION: &str = "1.2.2";
/// Java runtime package installed on first boot when `java_package` is not set.
pub const DEFAULT_JAVA_PACKAGE: &str = "openjdk-17-jre-headless";
/// MQTT port of the fleet provisioning plugin when `mqtt_port` is not set (the plugin's documented default).
pub const DEFAULT_MQTT_PORT: u16 = 8883;

pub use crate::contract::RELEASES_URL;

/// Published sha256 digests of release artifacts that imgbuild knows without being told.
///
/// Source: the `SRC_URI[...sha256sum]` pins of AWS's own Yocto layer (github.com/aws4embeddedlinux/meta-aws,
/// recipes `greengrass-bin_2.16.0.bb` and `greengrass-plugin-fleetprovisioning_1.2.2.bb`). They could not be
/// re-measured against the download site from the build machines (no route to it); first boot checks every
/// download against them, so a wrong pin fails loudly instead of installing unverified code.
const KNOWN_SHA256: &[(Artifact, &str, &str)] = &[
    (
        Artifact::Nucleus,
        "2.16.0",
        "f07742c76eca868617127b5c6c9028e41c45c2b4ec25dd0db6f3b40ef7638b4e",
    ),
    (
        Artifact::Plugin,
        "1.2.2",
        "1e7fdc625d4e1e7795d63f0e97981feecad526277bf211154505de145009e8c1",
    ),
];

/// How Docker Engine is installed on first boot.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Docker {
    /// Debian's own `docker.io` package.
    #[default]
    #[serde(rename = "debian")]
    Debian,
    /// `docker-ce` from Docker's apt repository.
    #[serde(rename = "docker-ce")]
    DockerCe,
}

impl Docker {
    /// The name used in `imgbuild.toml` and in the first-boot settings (`debian` or `docker-ce`).
    pub fn as_str(self) -> &'static str {
        match self {
            Docker::Debian => "debian",
            Docker::DockerCe => "docker-ce",
        }
    }
}

/// The `[greengrass]` section of `imgbuild.toml`: what an image needs to join an AWS IoT Greengrass fleet.
#[derive(Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GreengrassConfig {
    /// AWS Region of the IoT resources, e.g. `eu-central-1`.
    pub region: String,
    /// AWS IoT data endpoint (`aws iot describe-endpoint --endpoint-type iot:Data-ATS`).
    pub data_endpoint: String,
    /// AWS IoT credentials endpoint (`aws iot describe-endpoint --endpoint-type iot:CredentialProvider`).
    pub credential_endpoint: String,
    /// Role alias of the token exchange role.
    pub role_alias: String,
    /// Name of the fleet provisioning template.
    pub provisioning_template: String,
    /// Thing group passed to the template as `ThingGroupName`.
    #[serde(default)]
    pub thing_group: Option<String>,
    /// Claim certificate (PEM), relative to the config file's directory unless absolute.
    pub claim_cert: PathBuf,
    /// Claim private key (PEM), relative to the config file's directory unless absolute.
    pub claim_key: PathBuf,
    /// The CA certificates (PEM, one or more) the device trusts for AWS IoT, relative to the config file's
    /// directory unless absolute. Unset: the shipped Amazon Root CA 1. Needed for Amazon Root CA 3 (ECC
    /// endpoints), configurable IoT domains with their own server certificates, and HTTPS proxies (append the
    /// proxy's CA). Installed as the plugin's `rootCaPath`, which the nucleus keeps as `system.rootCaPath`.
    #[serde(default)]
    pub root_ca: Option<PathBuf>,
    /// Greengrass nucleus version.
    #[serde(default = "default_nucleus_version")]
    pub nucleus_version: String,
    /// sha256 of `greengrass-<nucleus_version>.zip`; required unless imgbuild knows the published digest.
    #[serde(default)]
    pub nucleus_sha256: Option<String>,
    /// Where the nucleus zip is downloaded from (default: AWS's versioned release URL). For
    /// mirrors and air-gapped factories; the sha256 pin applies whatever the URL.
    #[serde(default)]
    pub nucleus_url: Option<String>,
    /// FleetProvisioningByClaim plugin version.
    #[serde(default = "default_plugin_version")]
    pub plugin_version: String,
    /// sha256 of `fleetprovisioningbyclaim-<plugin_version>.jar`; required unless imgbuild knows it.
    #[serde(default)]
    pub plugin_sha256: Option<String>,
    /// Where the plugin jar is downloaded from (default: AWS's versioned release URL).
    #[serde(default)]
    pub plugin_url: Option<String>,
    /// Where Docker Engine comes from.
    #[serde(default)]
    pub docker: Docker,
    /// Debian package of the Java runtime.
    #[serde(default = "default_java_package")]
    pub java_package: String,
    /// HTTP(S) proxy for provisioning and for the nucleus, `scheme://[user:password@]host[:port]`.
    #[serde(default)]
    pub proxy_url: Option<String>,
    /// MQTT port (8883, or 443 through firewalls that only pass HTTPS; 443 also moves the nucleus's
    /// data-plane HTTPS port, `greengrassDataPlanePort`, from 8443 to 443).
    #[serde(default = "default_mqtt_port")]
    pub mqtt_port: u16,
    /// Extra parameters for the provisioning template (`SerialNumber` is reserved: it is filled on the device).
    #[serde(default)]
    pub template_parameters: BTreeMap<String, String>,
    /// Extra first-boot settings appended to `/etc/imgbuild/firstboot.env` (the optional keys of
    /// `firstboot/README.md`, e.g. `CLOCK_WAIT_SECONDS`, `APT_RETRIES`).
    #[serde(default)]
    pub firstboot_env: BTreeMap<String, String>,
}

fn default_nucleus_version() -> String {
    DEFAULT_NUCLEUS_VERSION.to_owned()
}

fn default_plugin_version() -> String {
    DEFAULT_PLUGIN_VERSION.to_owned()
}

fn default_java_package() -> String {
    DEFAULT_JAVA_PACKAGE.to_owned()
}

fn default_mqtt_port() -> u16 {
    DEFAULT_MQTT_PORT
}

impl fmt::Debug for GreengrassConfig {
    /// Like a derived `Debug`, except that a password in `proxy_url` is replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GreengrassConfig")
            .field("region", &self.region)
            .field("data_endpoint", &self.data_endpoint)
            .field("credential_endpoint", &self.credential_endpoint)
            .field("role_alias", &self.role_alias)
            .field("provisioning_template", &self.provisioning_template)
            .field("thing_group", &self.thing_group)
            .field("claim_cert", &self.claim_cert)
            .field("claim_key", &self.claim_key)
            .field("root_ca", &self.root_ca)
            .field("nucleus_version", &self.nucleus_version)
            .field("nucleus_sha256", &self.nucleus_sha256)
            .field("plugin_version", &self.plugin_version)
            .field("nucleus_url", &self.nucleus_url)
            .field("plugin_sha256", &self.plugin_sha256)
            .field("plugin_url", &self.plugin_url)
            .field("docker", &self.docker)
            .field("java_package", &self.java_package)
            .field(
                "proxy_url",
                &self.proxy_url.as_deref().map(redact_url_password),
            )
            .field("mqtt_port", &self.mqtt_port)
            .field("template_parameters", &self.template_parameters)
            .field("firstboot_env", &self.firstboot_env)
            .finish()
    }
}

/// Replaces the password of a `scheme://user:password@host` URL by `***`.
pub(crate) fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

/// A release artifact downloaded (or pre-seeded) for first boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// The Greengrass nucleus installer zip.
    Nucleus,
    /// The FleetProvisioningByClaim plugin jar.
    Plugin,
}

impl Artifact {
    /// The config key of the artifact's digest (used in error messages).
    pub(crate) fn sha256_key(self) -> &'static str {
        match self {
            Artifact::Nucleus => "nucleus_sha256",
            Artifact::Plugin => "plugin_sha256",
        }
    }

    /// The config key of the artifact's version.
    pub(crate) fn version_key(self) -> &'static str {
        match self {
            Artifact::Nucleus => "nucleus_version",
            Artifact::Plugin => "plugin_version",
        }
    }

    /// The download URL of the artifact at `version`.
    pub fn url(self, version: &str) -> String {
        match self {
            Artifact::Nucleus => format!("{RELEASES_URL}/greengrass-{version}.zip"),
            Artifact::Plugin => format!(
                "{RELEASES_URL}/aws-greengrass-FleetProvisioningByClaim/fleetprovisioningbyclaim-{version}.jar"
            ),
        }
    }

    /// The published sha256 imgbuild knows for `version`, if any.
    pub fn known_sha256(self, version: &str) -> Option<&'static str> {
        KNOWN_SHA256
            .iter()
            .find(|(artifact, known_version, _)| *artifact == self && *known_version == version)
            .map(|(_, _, digest)| *digest)
    }
}

impl GreengrassConfig {
    /// The configured version of `artifact`.
    pub fn version(&self, artifact: Artifact) -> &str {
        match artifact {
            Artifact::Nucleus => &self.nucleus_version,
            Artifact::Plugin => &self.plugin_version,
        }
    }

    /// The download URL of `artifact` at the configured version.
    pub fn url(&self, artifact: Artifact) -> String {
        let configured = match artifact {
            Artifact::Nucleus => &self.nucleus_url,
            Artifact::Plugin => &self.plugin_url,
        };
        configured
            .clone()
            .unwrap_or_else(|| artifact.url(self.version(artifact)))
    }

    /// The sha256 (lowercase hex) that first boot checks `artifact` against: the configured one, else the
    /// published one imgbuild knows for that version; an error telling how to get it when neither exists.
    pub fn sha256(&self, artifact: Artifact) -> Result<String> {
        let configured = match artifact {
            Artifact::Nucleus => &self.nucleus_sha256,
            Artifact::Plugin => &self.plugin_sha256,
        };
        if let Some(digest) = configured {
            return Ok(digest.to_ascii_lowercase());
        }
        let version = self.version(artifact);
        match artifact.known_sha256(version) {
            Some(digest) => Ok(digest.to_owned()),
            None => setting_bail!(
                "[greengrass] {} = \"{version}\" has no published sha256 known to imgbuild: set {} to the output of \
                 `curl -s {} | sha256sum`",
                artifact.version_key(),
                artifact.sha256_key(),
                artifact.url(version)
            ),
        }
    }
}
