//! The `[greengrass]` section: TOML parsing, defaults and `validate`.

mod common;

use common::{config, parse, section};
use imgbuild_greengrass::{validate, Artifact, Docker, GreengrassConfig};
use std::path::Path;

/// A config for `region` with the usual endpoint shapes of that region's partition.
fn for_region(region: &str, domain: &str) -> GreengrassConfig {
    let mut cfg = config("");
    cfg.region = region.to_owned();
    cfg.data_endpoint = format!("a1b2c3d4e5f6g7-ats.iot.{region}.{domain}");
    cfg.credential_endpoint = format!("c1d2e3f4g5h6i7.credentials.iot.{region}.{domain}");
    cfg
}

fn rejected(cfg: &GreengrassConfig, key: &str) -> String {
    let err = validate(cfg)
        .expect_err("invalid config accepted")
        .to_string();
    assert!(!err.contains('\n'), "multi-line error: {err}");
    assert!(err.contains(key), "error does not name {key}: {err}");
    err
}

#[test]
fn minimal_section_gets_the_documented_defaults() {
    let cfg = config("");
    assert_eq!(cfg.nucleus_version, "2.16.0");
    assert_eq!(cfg.plugin_version, "1.2.2");
    assert_eq!(cfg.docker, Docker::Debian);
    assert_eq!(cfg.java_package, "openjdk-17-jre-headless");
    assert_eq!(cfg.mqtt_port, 8883);
    assert_eq!(cfg.thing_group, None);
    assert_eq!(cfg.proxy_url, None);
    assert!(cfg.template_parameters.is_empty());
    validate(&cfg).expect("minimal section is valid");
    // The defaults come with pinned digests, so none has to be configured.
    assert_eq!(
        cfg.sha256(Artifact::Nucleus).unwrap(),
        "f07742c76eca868617127b5c6c9028e41c45c2b4ec25dd0db6f3b40ef7638b4e"
    );
    assert_eq!(
        cfg.sha256(Artifact::Plugin).unwrap(),
        "1e7fdc625d4e1e7795d63f0e97981feecad526277bf211154505de145009e8c1"
    );
    assert_eq!(
        cfg.url(Artifact::Nucleus),
        "https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-2.16.0.zip"
    );
}

#[test]
fn full_section_parses_and_unknown_keys_are_refused() {
    let cfg = config(
        r#"thing_group = "Fleet-A"
docker = "docker-ce"
java_package = "openjdk-11-jre-headless"
mqtt_port = 443
proxy_url = "http://proxy.example:3128"
nucleus_version = "2.15.0"
nucleus_sha256 = "AB00000000000000000000000000000000000000000000000000000000000001"
[template_parameters]
Site = "Plant 7"
"#,
    );
    assert_eq!(cfg.docker, Docker::DockerCe);
    assert_eq!(cfg.mqtt_port, 443);
    assert_eq!(cfg.template_parameters["Site"], "Plant 7");
    validate(&cfg).expect("full section is valid");
    assert_eq!(
        cfg.sha256(Artifact::Nucleus).unwrap(),
        "ab00000000000000000000000000000000000000000000000000000000000001"
    );

    let typo = parse(&section(
        Path::new("c"),
        Path::new("k"),
        "thing_groups = \"x\"",
    ))
    .expect_err("typo accepted");
    assert!(typo.to_string().contains("thing_groups"), "{typo}");
    let bad_docker = parse(&section(
        Path::new("c"),
        Path::new("k"),
        "docker = \"podman\"",
    ))
    .expect_err("podman");
    assert!(bad_docker.to_string().contains("podman"), "{bad_docker}");
}

#[test]
fn regions_of_every_partition_with_their_endpoint_shapes_are_accepted() {
    for (region, domain) in [
        ("us-east-1", "amazonaws.com"),
        ("eu-central-1", "amazonaws.com"),
        ("ap-southeast-2", "amazonaws.com"),
        ("us-gov-west-1", "amazonaws.com"),
        ("cn-north-1", "amazonaws.com.cn"),
        ("cn-northwest-1", "amazonaws.com.cn"),
    ] {
        let cfg = for_region(region, domain);
        validate(&cfg).unwrap_or_else(|e| panic!("{region}: {e}"));
    }
    // China's ATS data endpoints use a dot: <id>.ats.iot.cn-north-1.amazonaws.com.cn
    let mut cfg = for_region("cn-north-1", "amazonaws.com.cn");
    cfg.data_endpoint = "a3lk6rh9gr0knb.ats.iot.cn-north-1.amazonaws.com.cn".into();
    validate(&cfg).expect("China ATS endpoint");
    // FIPS endpoints.
    let mut cfg = for_region("us-east-1", "amazonaws.com");
    cfg.data_endpoint = "data.iot-fips.us-east-1.amazonaws.com".into();
    cfg.credential_endpoint = "c1d2e3f4g5h6i7.credentials.iot-fips.us-east-1.amazonaws.com".into();
    validate(&cfg).expect("FIPS endpoints");
}

#[test]
fn bad_regions_are_rejected() {
    for region in [
        "",
        "us-east",
        "us-east-0",
        "us-east-01",
        "US-EAST-1",
        "moon-east-1",
        "eu-middle-1",
        "us-east-1 ",
        "us-iso-east-1",
        "useast1",
    ] {
        let mut cfg = config("");
        cfg.region = region.to_owned();
        let err = rejected(&cfg, "region");
        assert!(err.contains("us-east-1"), "no example in: {err}");
    }
}

#[test]
fn endpoints_of_another_region_or_partition_are_rejected() {
    let mut cfg = config("");
    cfg.data_endpoint = "a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com".into();
    let err = rejected(&cfg, "data_endpoint");
    assert!(
        err.contains("eu-west-1") && err.contains("eu-central-1"),
        "{err}"
    );

    let mut cfg = config("");
    cfg.credential_endpoint = "c1d2e3f4g5h6i7.credentials.iot.us-east-1.amazonaws.com".into();
    rejected(&cfg, "credential_endpoint");

    let mut cfg = for_region("cn-north-1", "amazonaws.com");
    cfg.data_endpoint = "a1b2c3d4e5f6g7-ats.iot.cn-north-1.amazonaws.com".into();
    let err = rejected(&cfg, "data_endpoint");
    assert!(err.contains("amazonaws.com.cn"), "{err}");
}

#[test]
fn malformed_or_foreign_host_names_are_rejected() {
    let region = "eu-central-1";
    let bad_data = [
        "https://a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com",
        "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com:8883",
        "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com/",
        "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com.",
        "a1b2c3d4e5f6g7-ats.iot.eu-central-1.example.com",
        "a1b2c3d4e5f6g7-ats.s3.eu-central-1.amazonaws.com",
        "a1b2c3d4e5f6g7.credentials.iot.eu-central-1.amazonaws.com",
        "-ats.iot.eu-central-1.amazonaws.com",
        "a_b-ats.iot.eu-central-1.amazonaws.com",
        "iot.eu-central-1.amazonaws.com",
        "",
        "a1b2 -ats.iot.eu-central-1.amazonaws.com",
    ];
    for host in bad_data {
        let mut cfg = config("");
        cfg.data_endpoint = host.to_owned();
        rejected(&cfg, "data_endpoint");
    }
    let mut cfg = config("");
    cfg.data_endpoint = format!("a1b2c3d4e5f6g7.iot.{region}.amazonaws.com");
    let err = rejected(&cfg, "data_endpoint");
    assert!(
        err.contains("iot:Data-ATS") && err.contains("legacy"),
        "{err}"
    );

    for host in [
        "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com",
        "c1d2e3f4g5h6i7.credential.iot.eu-central-1.amazonaws.com",
        "x.y.credentials.iot.eu-central-1.amazonaws.com",
        "credentials.iot.eu-central-1.amazonaws.com",
    ] {
        let mut cfg = config("");
        cfg.credential_endpoint = host.to_owned();
        let err = rejected(&cfg, "credential_endpoint");
        assert!(
            err.contains("describe-endpoint") || err.contains("not an AWS IoT endpoint"),
            "{err}"
        );
    }
}

/// What is being broken, how, and the key the error must name.
type Case = (&'static str, fn(&mut GreengrassConfig), &'static str);

#[test]
fn names_parameters_versions_and_digests_are_checked() {
    let cases: [Case; 14] = [
        ("role_alias", |c| c.role_alias = String::new(), "role_alias"),
        (
            "role_alias",
            |c| c.role_alias = "bad alias".into(),
            "role_alias",
        ),
        (
            "template",
            |c| c.provisioning_template = "x".repeat(37),
            "provisioning_template",
        ),
        (
            "group",
            |c| c.thing_group = Some("a/b".into()),
            "thing_group",
        ),
        (
            "serial",
            |c| {
                c.template_parameters
                    .insert("SerialNumber".into(), "1".into());
            },
            "SerialNumber",
        ),
        (
            "group twice",
            |c| {
                c.thing_group = Some("g".into());
                c.template_parameters
                    .insert("ThingGroupName".into(), "h".into());
            },
            "ThingGroupName",
        ),
        (
            "param name",
            |c| {
                c.template_parameters.insert("a b".into(), "1".into());
            },
            "template_parameters",
        ),
        (
            "param value",
            |c| {
                c.template_parameters.insert("Site".into(), "a\nb".into());
            },
            "template_parameters.Site",
        ),
        (
            "semver",
            |c| c.nucleus_version = "2.16".into(),
            "nucleus_version",
        ),
        (
            "semver",
            |c| {
                c.plugin_version = "1.2.2-rc1".into();
                c.plugin_sha256 = Some("0".repeat(64));
            },
            "plugin_version",
        ),
        (
            "digest",
            |c| c.plugin_sha256 = Some("abc".into()),
            "plugin_sha256",
        ),
        (
            "digest",
            |c| c.nucleus_sha256 = Some("g".repeat(64)),
            "nucleus_sha256",
        ),
        ("port", |c| c.mqtt_port = 0, "mqtt_port"),
        (
            "java",
            |c| c.java_package = "openjdk 17".into(),
            "java_package",
        ),
    ];
    for (what, mutate, key) in cases {
        let mut cfg = config("");
        mutate(&mut cfg);
        let err = validate(&cfg).expect_err(what).to_string();
        assert!(err.contains(key), "{what}: {err}");
    }
}

#[test]
fn unknown_versions_require_a_digest_and_say_how_to_get_it() {
    let mut cfg = config("");
    cfg.nucleus_version = "2.17.0".into();
    let err = rejected(&cfg, "nucleus_sha256");
    assert!(
        err.contains("curl -s https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-2.17.0.zip | sha256sum"),
        "{err}"
    );
    cfg.nucleus_sha256 = Some("1".repeat(64));
    validate(&cfg).expect("digest given");

    let mut cfg = config("");
    cfg.plugin_version = "1.3.0".into();
    let err = rejected(&cfg, "plugin_sha256");
    assert!(
        err.contains("fleetprovisioningbyclaim-1.3.0.jar | sha256sum"),
        "{err}"
    );
}

#[test]
fn proxy_urls_are_checked_and_their_passwords_never_shown() {
    for good in [
        "http://proxy:3128",
        "https://user:p%40ss@proxy.example.com:8443",
        "http://10.0.0.1",
        "http://[fd00::1]:3128",
        "http://proxy.example/",
    ] {
        let mut cfg = config("root_ca = \"bundle.pem\"");
        cfg.proxy_url = Some(good.to_owned());
        validate(&cfg).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "ftp://proxy:21",
        "proxy:3128",
        "http://",
        "http://proxy:99999",
        "http://proxy:0",
        "http://proxy/path",
        "http://pro xy",
        "http://[fd00::1",
    ] {
        let mut cfg = config("");
        cfg.proxy_url = Some(bad.to_owned());
        rejected(&cfg, "proxy_url");
    }
    let mut cfg = config("");
    cfg.proxy_url = Some("http://alice:Sup3rSecret@proxy:3128/x".into());
    let err = rejected(&cfg, "proxy_url");
    assert!(
        !err.contains("Sup3rSecret") && err.contains("alice:***@proxy"),
        "{err}"
    );
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("Sup3rSecret") && debug.contains("alice:***@proxy:3128"),
        "{debug}"
    );
}

#[test]
fn an_https_proxy_needs_root_ca_holding_the_proxy_ca() {
    let mut cfg = config("");
    cfg.proxy_url = Some("https://alice:Sup3rSecret@proxy.example:8443".into());
    let err = rejected(&cfg, "proxy_url");
    assert!(
        err.contains("https://") && err.contains("root_ca") && err.contains("proxy's CA"),
        "{err}"
    );
    assert!(!err.contains("Sup3rSecret"), "{err}");
    cfg.root_ca = Some("root-ca-bundle.pem".into());
    validate(&cfg).expect("https proxy with root_ca");
    // An http:// proxy is reached in clear text: the Amazon root CA alone is enough.
    let mut cfg = config("");
    cfg.proxy_url = Some("http://proxy.example:3128".into());
    validate(&cfg).expect("http proxy without root_ca");
}

#[test]
fn arn_partition_follows_the_region() {
    use imgbuild_greengrass::region_partition;
    for (region, partition) in [
        ("eu-west-1", "aws"),
        ("us-east-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("us-gov-east-1", "aws-us-gov"),
    ] {
        assert_eq!(
            region_partition(region).expect(region),
            partition,
            "{region}"
        );
    }
    let err = region_partition("mars-north-1")
        .expect_err("not a region")
        .to_string();
    assert!(err.contains("mars-north-1") && !err.contains('\n'), "{err}");
}
