//! Build-time checks of the `[greengrass]` section: region, endpoints, names, versions, digests, proxy.

use crate::config::{Artifact, GreengrassConfig};
use crate::error::{setting_bail, GgError, Result};

/// Region prefixes of the partitions that offer AWS IoT Core (longest first, so `us-gov` wins over `us`).
const REGION_AREAS: &[&str] = &[
    "us-gov", "us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx", "cn",
];
/// Direction words of AWS Region names.
const REGION_DIRECTIONS: &[&str] = &[
    "north",
    "south",
    "east",
    "west",
    "central",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
];

/// Checks everything in the section that can be checked without reading files.
///
/// Region (`us-east-1`, `eu-central-1`, `cn-north-1`, `us-gov-west-1`, …), endpoints that are AWS IoT hosts of
/// that region (`<id>-ats.iot.<region>.amazonaws.com`, `<id>.ats.iot.<region>.amazonaws.com.cn`,
/// `<id>.credentials.iot.<region>.amazonaws.com`, FIPS `iot-fips` variants), AWS name rules for the role alias,
/// template and thing group, template parameter names, semver versions, sha256 digests (or known published
/// ones), MQTT port and proxy URL.
pub fn validate(cfg: &GreengrassConfig) -> Result<()> {
    let domain = region_domain(&cfg.region)?;
    check_data_endpoint(&cfg.data_endpoint, &cfg.region, domain)?;
    check_credential_endpoint(&cfg.credential_endpoint, &cfg.region, domain)?;
    check_name("role_alias", &cfg.role_alias, 128, |c| {
        c.is_ascii_alphanumeric() || "_=,@-".contains(c)
    })?;
    check_name(
        "provisioning_template",
        &cfg.provisioning_template,
        36,
        |c| c.is_ascii_alphanumeric() || "_-".contains(c),
    )?;
    if let Some(group) = &cfg.thing_group {
        check_name("thing_group", group, 128, |c| {
            c.is_ascii_alphanumeric() || ":_-".contains(c)
        })?;
    }
    check_template_parameters(cfg)?;
    for artifact in [Artifact::Nucleus, Artifact::Plugin] {
        check_semver(artifact, cfg.version(artifact))?;
        check_sha256(artifact, &cfg.sha256(artifact)?)?;
    }
    check_name("java_package", &cfg.java_package, 128, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)
    })?;
    if cfg.mqtt_port == 0 {
        setting_bail!("[greengrass] mqtt_port = 0 is not a port: use 8883 (default) or 443");
    }
    if let Some(url) = &cfg.proxy_url {
        check_proxy_url(url)?;
        // AWS IoT Greengrass developer guide, "Connect on port 443 or through a network proxy" → "Enable the
        // core device to trust an HTTPS proxy" (docs.aws.amazon.com/greengrass/v2/developerguide/
        // configure-greengrass-core-v2.html#https-proxy-certificate-trust): with an HTTPS proxy, the proxy's
        // CA certificate must be added to the file system.rootCaPath names (the Amazon root CA file). The
        // plugin uses that same file for its proxy TLS context (FleetProvisioningByClaimPlugin:
        // `new ClientTlsContext(getTlsContextOptions(rootCaPath))` → `getHttpProxyOptions`). Decision: an
        // https:// proxy requires `root_ca`, the user's bundle of Amazon Root CA 1 plus the proxy's CA.
        if url.starts_with("https://") && cfg.root_ca.is_none() {
            setting_bail!(
                "[greengrass] proxy_url is an https:// proxy, which the device can only trust through its root CA \
                 file: set root_ca to a PEM file holding Amazon Root CA 1 and your proxy's CA certificate \
                 (cat AmazonRootCA1.pem proxy-ca.pem > root-ca-bundle.pem), or use an http:// proxy"
            );
        }
    }
    Ok(())
}

/// The ARN partition of `region`: `aws-cn` for `cn-*`, `aws-us-gov` for `us-gov-*`, else `aws`. Every ARN
/// built for a `[greengrass]` section must use it (`arn:{partition}:iot:{region}:{account}:…`); a
/// hard-coded `arn:aws:` is refused by IAM and AWS IoT in China and GovCloud. Fails like [`region_domain`]
/// for a name that is not an AWS Region.
pub fn region_partition(region: &str) -> Result<&'static str> {
    region_domain(region)?;
    Ok(if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    })
}

/// Checks the region name and returns the DNS suffix of its partition.
pub fn region_domain(region: &str) -> Result<&'static str> {
    let area = REGION_AREAS.iter().find(|area| {
        region
            .strip_prefix(**area)
            .is_some_and(|r| r.starts_with('-'))
    });
    let parsed = area.and_then(|area| {
        let rest = &region[area.len() + 1..];
        let (direction, number) = rest.split_once('-')?;
        let number_ok = !number.is_empty()
            && number.len() <= 2
            && number.bytes().all(|b| b.is_ascii_digit())
            && !number.starts_with('0');
        (REGION_DIRECTIONS.contains(&direction) && number_ok).then_some(*area)
    });
    match parsed {
        Some("cn") => Ok("amazonaws.com.cn"),
        Some(_) => Ok("amazonaws.com"),
        None => setting_bail!(
            "[greengrass] region = {region:?} is not an AWS Region offering AWS IoT: use a name like us-east-1, \
             eu-central-1, cn-north-1 or us-gov-west-1"
        ),
    }
}

/// Splits `host` into its first label and the rest, after checking it is a plain lowercase-insensitive DNS name.
fn host_labels<'h>(key: &str, host: &'h str) -> Result<Vec<&'h str>> {
    let plain = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !plain {
        setting_bail!(
            "[greengrass] {key} = {host:?} is not a host name: give the bare endpoint address without scheme, \
             port or path, as printed by `aws iot describe-endpoint`"
        );
    }
    Ok(host.split('.').collect())
}

/// Checks that `labels` end in `<service>.<region>.<domain>` and returns the labels before the service.
fn account_labels<'a, 'h>(
    key: &str,
    host: &str,
    labels: &'a [&'h str],
    region: &str,
    domain: &str,
) -> Result<(&'a [&'h str], &'h str)> {
    let domain_len = domain.split('.').count();
    if labels.len() < domain_len + 3
        || !labels[labels.len() - domain_len..]
            .iter()
            .zip(domain.split('.'))
            .all(|(label, want)| label.eq_ignore_ascii_case(want))
    {
        setting_bail!(
            "[greengrass] {key} = {host:?} is not an AWS IoT endpoint of {region} (it should end in \
             .{region}.{domain})"
        );
    }
    let host_region = labels[labels.len() - domain_len - 1];
    if !host_region.eq_ignore_ascii_case(region) {
        setting_bail!(
            "[greengrass] {key} = {host:?} is in region {host_region}, but region = {region:?}: use the \
             endpoint of the region that holds the provisioning template"
        );
    }
    let service = labels[labels.len() - domain_len - 2];
    if !(service.eq_ignore_ascii_case("iot") || service.eq_ignore_ascii_case("iot-fips")) {
        setting_bail!(
            "[greengrass] {key} = {host:?} is not an AWS IoT endpoint (no .iot.{region}.{domain})"
        );
    }
    Ok((&labels[..labels.len() - domain_len - 2], service))
}

/// An account-specific endpoint identifier: letters and digits only.
fn is_identifier(label: &str) -> bool {
    !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Checks the AWS IoT data endpoint: `<id>-ats.iot.<region>.<domain>`, `<id>.ats.iot.<region>.<domain>`
/// (China) or `data.iot-fips.<region>.amazonaws.com`.
fn check_data_endpoint(host: &str, region: &str, domain: &str) -> Result<()> {
    let key = "data_endpoint";
    let labels = host_labels(key, host)?;
    let (account, service) = account_labels(key, host, &labels, region, domain)?;
    let ok = match account {
        [first] if service.eq_ignore_ascii_case("iot-fips") => is_identifier(first),
        [first] => first
            .to_ascii_lowercase()
            .strip_suffix("-ats")
            .is_some_and(is_identifier),
        [first, ats] => is_identifier(first) && ats.eq_ignore_ascii_case("ats"),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    if let [first] = account {
        if is_identifier(first) {
            setting_bail!(
                "[greengrass] data_endpoint = {host:?} is a legacy (Symantec-signed) endpoint that the shipped \
                 Amazon Root CA 1 does not trust: use `aws iot describe-endpoint --endpoint-type iot:Data-ATS`"
            );
        }
    }
    setting_bail!(
        "[greengrass] data_endpoint = {host:?} does not look like an AWS IoT data endpoint \
         (<id>-ats.iot.{region}.{domain}): use `aws iot describe-endpoint --endpoint-type iot:Data-ATS`"
    )
}

/// Checks the AWS IoT credentials endpoint: `<id>.credentials.iot.<region>.<domain>` (or `iot-fips`).
fn check_credential_endpoint(host: &str, region: &str, domain: &str) -> Result<()> {
    let key = "credential_endpoint";
    let labels = host_labels(key, host)?;
    let (account, _) = account_labels(key, host, &labels, region, domain)?;
    match account {
        [id, credentials] if is_identifier(id) && credentials.eq_ignore_ascii_case("credentials") => Ok(()),
        _ => setting_bail!(
            "[greengrass] credential_endpoint = {host:?} does not look like an AWS IoT credentials endpoint \
             (<id>.credentials.iot.{region}.{domain}): use `aws iot describe-endpoint --endpoint-type \
             iot:CredentialProvider`"
        ),
    }
}

/// Checks an AWS resource name: 1..=`max_len` characters, each accepted by `allowed`.
fn check_name(
    key: &str,
    value: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<()> {
    if value.is_empty() || value.chars().count() > max_len || !value.chars().all(allowed) {
        setting_bail!(
            "[greengrass] {key} = {value:?} is not a valid name (1 to {max_len} characters of the kind AWS accepts \
             for it)"
        );
    }
    Ok(())
}

/// Checks the extra template parameters: plain names, no reserved ones, no control characters in values.
fn check_template_parameters(cfg: &GreengrassConfig) -> Result<()> {
    for (name, value) in &cfg.template_parameters {
        check_name("template_parameters key", name, 128, |c| {
            c.is_ascii_alphanumeric() || "_-.:".contains(c)
        })?;
        if name == "SerialNumber" {
            setting_bail!(
                "[greengrass] template_parameters.SerialNumber is reserved: first boot sets it to the device's \
                 serial number"
            );
        }
        if name == "ThingGroupName" && cfg.thing_group.is_some() {
            setting_bail!(
                "[greengrass] template_parameters.ThingGroupName and thing_group are both set: keep only thing_group"
            );
        }
        if value.chars().any(char::is_control) {
            setting_bail!("[greengrass] template_parameters.{name} contains a control character (newline, tab, …)");
        }
    }
    Ok(())
}

/// Checks that a version is `MAJOR.MINOR.PATCH` with decimal numbers.
fn check_semver(artifact: Artifact, version: &str) -> Result<()> {
    let parts: Vec<&str> = version.split('.').collect();
    let ok = parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 9
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'))
        });
    if !ok {
        setting_bail!(
            "[greengrass] {} = {version:?} is not a release version like 2.16.0",
            artifact.version_key()
        );
    }
    Ok(())
}

/// Checks that a digest is 64 hexadecimal digits.
fn check_sha256(artifact: Artifact, digest: &str) -> Result<()> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        setting_bail!(
            "[greengrass] {} = {digest:?} is not a sha256 digest (64 hexadecimal digits)",
            artifact.sha256_key()
        );
    }
    Ok(())
}

/// Checks a proxy URL: `http` or `https`, a host, an optional numeric port, nothing after.
fn check_proxy_url(url: &str) -> Result<()> {
    let shown = crate::config::redact_url_password(url);
    let fail = || {
        GgError::setting(format!(
            "[greengrass] proxy_url = {shown:?} is not a proxy URL of the form http(s)://[user:password@]host[:port]"
        ))
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(fail)?;
    if scheme != "http" && scheme != "https" {
        return Err(fail());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(fail());
    }
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host, port, host_ok): (&str, Option<&str>, fn(char) -> bool) =
        if let Some(bracketed) = host_port.strip_prefix('[') {
            let (address, after) = bracketed.split_once(']').ok_or_else(fail)?;
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(fail)?),
            };
            (address, port, |c| {
                c.is_ascii_hexdigit() || c == ':' || c == '.'
            })
        } else {
            let (host, port) = match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            (host, port, |c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '.'
            })
        };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    if host.is_empty() || !host.chars().all(host_ok) || !port_ok {
        return Err(fail());
    }
    Ok(())
}
