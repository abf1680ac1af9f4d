//! The plugin config template, the first-boot settings and the payload file list.

mod common;

use std::process::Command;

use common::{config, now, Scratch};
use imgbuild_greengrass::{
    firstboot_env, load_claim, payload_files, render_plugin_config, template_context,
    GreengrassConfig, PLUGIN_CONFIG_TEMPLATE, SERIAL_PLACEHOLDER,
};
use serde_yaml::Value;

const PLUGIN_KEYS: [&str; 11] = [
    "rootPath",
    "awsRegion",
    "iotDataEndpoint",
    "iotCredentialEndpoint",
    "iotRoleAlias",
    "provisioningTemplate",
    "claimCertificatePath",
    "claimCertificatePrivateKeyPath",
    "rootCaPath",
    "templateParameters",
    "mqttPort",
];

fn parse_yaml(text: &str) -> Value {
    serde_yaml::from_str(text)
        .unwrap_or_else(|e| panic!("rendered config is not YAML ({e}):\n{text}"))
}

fn plugin(doc: &Value) -> &Value {
    &doc["services"]["aws.greengrass.FleetProvisioningByClaim"]["configuration"]
}

fn nucleus(doc: &Value) -> &Value {
    &doc["services"]["aws.greengrass.Nucleus"]
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

#[test]
fn rendered_config_has_every_plugin_key_with_the_configured_values() {
    let cfg = config("thing_group = \"Fleet-A\"\n[template_parameters]\nSite = \"Plant 7\"\n");
    let text = render_plugin_config(&cfg, SERIAL_PLACEHOLDER).expect("render");
    let doc = parse_yaml(&text);
    let plugin = plugin(&doc);
    for key in PLUGIN_KEYS {
        assert!(!plugin[key].is_null(), "{key} missing:\n{text}");
    }
    assert_eq!(string(&nucleus(&doc)["version"]), "2.16.0");
    assert!(
        nucleus(&doc)["configuration"].is_null(),
        "no nucleus configuration by default:\n{text}"
    );
    assert_eq!(string(&plugin["rootPath"]), "/greengrass/v2");
    assert_eq!(string(&plugin["awsRegion"]), cfg.region);
    assert_eq!(string(&plugin["iotDataEndpoint"]), cfg.data_endpoint);
    assert_eq!(
        string(&plugin["iotCredentialEndpoint"]),
        cfg.credential_endpoint
    );
    assert_eq!(string(&plugin["iotRoleAlias"]), cfg.role_alias);
    assert_eq!(
        string(&plugin["provisioningTemplate"]),
        cfg.provisioning_template
    );
    assert_eq!(
        string(&plugin["claimCertificatePath"]),
        "/greengrass/v2/claim.pem.crt"
    );
    assert_eq!(
        string(&plugin["claimCertificatePrivateKeyPath"]),
        "/greengrass/v2/claim.private.pem.key"
    );
    assert_eq!(
        string(&plugin["rootCaPath"]),
        "/greengrass/v2/AmazonRootCA1.pem"
    );
    assert_eq!(
        plugin["mqttPort"].as_u64(),
        Some(8883),
        "mqttPort is a number"
    );
    assert!(
        plugin["proxyUrl"].is_null() && plugin["proxyUserName"].is_null(),
        "no proxy unless set"
    );

    let parameters = plugin["templateParameters"]
        .as_mapping()
        .expect("templateParameters map");
    assert_eq!(parameters.len(), 4, "{parameters:?}");
    assert_eq!(
        string(&plugin["templateParameters"]["ThingName"]),
        SERIAL_PLACEHOLDER
    );
    assert_eq!(
        string(&plugin["templateParameters"]["SerialNumber"]),
        SERIAL_PLACEHOLDER
    );
    assert_eq!(
        string(&plugin["templateParameters"]["ThingGroupName"]),
        "Fleet-A"
    );
    assert_eq!(string(&plugin["templateParameters"]["Site"]), "Plant 7");
    // firstboot/README.md: the serial placeholder is quoted so an all-digit serial stays a string.
    assert!(
        text.contains("\"SerialNumber\": \"@SERIAL_NUMBER@\""),
        "{text}"
    );
}

#[test]
fn proxy_and_mqtt_port_go_to_the_plugin_and_the_nucleus() {
    let cfg = config("mqtt_port = 443\nproxy_url = \"http://user:pa'ss@proxy.example:3128\"\n");
    let doc = parse_yaml(&render_plugin_config(&cfg, SERIAL_PLACEHOLDER).unwrap());
    assert_eq!(plugin(&doc)["mqttPort"].as_u64(), Some(443));
    assert_eq!(
        string(&plugin(&doc)["proxyUrl"]),
        "http://user:pa'ss@proxy.example:3128"
    );
    let configuration = &nucleus(&doc)["configuration"];
    assert_eq!(configuration["mqtt"]["port"].as_u64(), Some(443));
    assert_eq!(
        string(&configuration["networkProxy"]["proxy"]["url"]),
        "http://user:pa'ss@proxy.example:3128"
    );
}

#[test]
fn mqtt_port_443_also_moves_the_data_plane_port_to_443() {
    let doc =
        parse_yaml(&render_plugin_config(&config("mqtt_port = 443"), SERIAL_PLACEHOLDER).unwrap());
    let configuration = &nucleus(&doc)["configuration"];
    assert_eq!(configuration["mqtt"]["port"].as_u64(), Some(443));
    assert_eq!(configuration["greengrassDataPlanePort"].as_u64(), Some(443));
    assert_eq!(plugin(&doc)["mqttPort"].as_u64(), Some(443));
    for port in [8883, 1883] {
        let text =
            render_plugin_config(&config(&format!("mqtt_port = {port}")), SERIAL_PLACEHOLDER)
                .unwrap();
        let doc = parse_yaml(&text);
        assert!(
            nucleus(&doc)["configuration"]["greengrassDataPlanePort"].is_null(),
            "data plane stays on its default 8443 with mqtt_port = {port}:\n{text}"
        );
    }
}

#[test]
fn root_ca_option_moves_root_ca_path_in_config_and_settings() {
    let cfg = config("root_ca = \"certs/AmazonRootCA3.pem\"");
    let doc = parse_yaml(&render_plugin_config(&cfg, SERIAL_PLACEHOLDER).unwrap());
    assert_eq!(
        string(&plugin(&doc)["rootCaPath"]),
        "/greengrass/v2/rootCA.pem"
    );
    let env = firstboot_env(&cfg).unwrap();
    assert!(
        env.contains("\nROOT_CA_PATH=/greengrass/v2/rootCA.pem\n"),
        "{env}"
    );
    let env = firstboot_env(&config("")).unwrap();
    assert!(
        env.contains("\nROOT_CA_PATH=/greengrass/v2/AmazonRootCA1.pem\n"),
        "{env}"
    );
}

#[test]
fn a_project_template_replaces_the_built_in_one_with_the_same_context() {
    let cfg = config("thing_group = \"G\"\nmqtt_port = 443");
    let own = "# site template\nservices:\n  aws.greengrass.FleetProvisioningByClaim:\n    configuration:\n      \
               rootCaPath: {{ root_ca_path | json_encode() }}\n      port: {{ mqtt_port }}/{{ data_plane_port }}\n      \
               templateParameters:\n        SerialNumber: \"{{ serial_placeholder }}\"\n";
    let text = imgbuild_greengrass::render_plugin_config_from(
        &cfg,
        SERIAL_PLACEHOLDER,
        own,
        "template site.tera",
    )
    .expect("render own template");
    assert!(text.starts_with("# site template\n"), "{text}");
    assert!(
        text.contains("port: 443/443") && text.contains("SerialNumber: \"@SERIAL_NUMBER@\""),
        "{text}"
    );
    let err = imgbuild_greengrass::render_plugin_config_from(
        &cfg,
        SERIAL_PLACEHOLDER,
        "x: {{ nope }}",
        "template site.tera",
    )
    .expect_err("unknown variable")
    .to_string();
    assert!(
        err.starts_with("template site.tera: rendering failed") && err.contains("nope"),
        "{err}"
    );
    let err = imgbuild_greengrass::render_plugin_config_from(
        &cfg,
        SERIAL_PLACEHOLDER,
        "x: 1\n",
        "template site.tera",
    )
    .expect_err("no placeholder")
    .to_string();
    assert!(
        err.contains("lacks the serial placeholder") && err.contains("serial_placeholder"),
        "{err}"
    );
}

#[test]
fn hostile_parameter_values_survive_yaml_exactly() {
    let mut cfg = config("");
    let hostile = [
        ("Quote", "he said \"hi\" and 'bye'"),
        ("Yaml", "key: value # not a comment\n- item"),
        ("Tera", "{{ region }} {% if x %}"),
        ("Unicode", "Zürich ✓ \\ back"),
        ("Number", "00123"),
        ("Bool", "yes"),
        ("Empty", ""),
        ("ThingName", "gg-@SERIAL_NUMBER@"),
    ];
    for (name, value) in hostile {
        cfg.template_parameters
            .insert(name.to_owned(), value.to_owned());
    }
    let doc = parse_yaml(&render_plugin_config(&cfg, SERIAL_PLACEHOLDER).unwrap());
    for (name, value) in hostile {
        assert_eq!(
            string(&plugin(&doc)["templateParameters"][name]),
            value,
            "{name}"
        );
    }
}

#[test]
fn first_boot_substitution_yields_the_serial_as_a_string() {
    let scratch = Scratch::new();
    let mut cfg = config("");
    cfg.template_parameters
        .insert("ThingName".into(), "gg-@SERIAL_NUMBER@".into());
    let template = scratch.write(
        "config.yaml.in",
        render_plugin_config(&cfg, SERIAL_PLACEHOLDER)
            .unwrap()
            .as_bytes(),
    );
    for serial in ["100000002d9d3bd5", "0042", "1e10"] {
        // What firstboot does: a literal replacement with sed.
        let out = Command::new("sed")
            .args([
                &format!("s/{SERIAL_PLACEHOLDER}/{serial}/g"),
                template.to_str().unwrap(),
            ])
            .output()
            .expect("run sed");
        assert!(out.status.success());
        let doc = parse_yaml(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(
            string(&plugin(&doc)["templateParameters"]["SerialNumber"]),
            serial
        );
        assert_eq!(
            string(&plugin(&doc)["templateParameters"]["ThingName"]),
            format!("gg-{serial}")
        );
    }
}

#[test]
fn context_builder_renders_the_same_text_through_any_tera() {
    let cfg = config("thing_group = \"G\"\nproxy_url = \"https://proxy:8443\"\n");
    let mut tera = tera::Tera::default();
    tera.add_raw_template("fleet-provisioning.yaml", PLUGIN_CONFIG_TEMPLATE)
        .unwrap();
    let via_context = tera
        .render(
            "fleet-provisioning.yaml",
            &template_context(&cfg, "%SERIAL%"),
        )
        .unwrap();
    assert_eq!(via_context, render_plugin_config(&cfg, "%SERIAL%").unwrap());
    // The repository file is what is compiled in.
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../templates/greengrass/fleet-provisioning.yaml.tera"
    ))
    .unwrap();
    assert_eq!(on_disk, PLUGIN_CONFIG_TEMPLATE);
}

#[test]
fn bad_placeholders_are_refused() {
    let cfg = config("");
    for bad in ["", "@", "a b", "x\"y", "x/y", "@SERIAL\n@"] {
        let err = render_plugin_config(&cfg, bad).expect_err(bad).to_string();
        assert!(err.contains("placeholder") && !err.contains('\n'), "{err}");
    }
}

/// Sources the settings file with bash, as first boot does, and prints the named variables.
fn sourced(env_text: &str, names: &[&str]) -> Vec<String> {
    let scratch = Scratch::new();
    let file = scratch.write("firstboot.env", env_text.as_bytes());
    let script = names
        .iter()
        .map(|n| format!("printf '%s\\n' \"${n}\""))
        .collect::<Vec<_>>()
        .join(";");
    let out = Command::new("bash")
        .args([
            "-c",
            &format!("set -eu; source \"$1\"; {script}"),
            "bash",
            file.to_str().unwrap(),
        ])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn firstboot_settings_source_to_the_configured_values() {
    let cfg = config("docker = \"docker-ce\"\n");
    let text = firstboot_env(&cfg).unwrap();
    let names = [
        "NUCLEUS_VERSION",
        "NUCLEUS_SHA256",
        "NUCLEUS_URL",
        "PLUGIN_VERSION",
        "PLUGIN_SHA256",
        "PLUGIN_URL",
        "DOCKER_FLAVOR",
        "JAVA_PACKAGE",
        "GG_ROOT",
    ];
    let values = sourced(&text, &names);
    assert_eq!(
        values,
        [
            "2.16.0",
            "f07742c76eca868617127b5c6c9028e41c45c2b4ec25dd0db6f3b40ef7638b4e",
            "https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-2.16.0.zip",
            "1.2.2",
            "1e7fdc625d4e1e7795d63f0e97981feecad526277bf211154505de145009e8c1",
            "https://d2s8p88vqu9w66.cloudfront.net/releases/aws-greengrass-FleetProvisioningByClaim/fleetprovisioningbyclaim-1.2.2.jar",
            "docker-ce",
            "openjdk-17-jre-headless",
            "/greengrass/v2",
        ]
    );
    // firstboot/README.md: plain values are written unquoted.
    assert!(
        text.contains("\nNUCLEUS_VERSION=2.16.0\n") && text.contains("\nDOCKER_FLAVOR=docker-ce\n"),
        "{text}"
    );
    assert!(!text.contains("PROXY_URL"), "{text}");

    let mut cfg = config("");
    let proxy = "http://bob:it's$HOME;`x`@proxy:3128";
    cfg.proxy_url = Some(proxy.into());
    assert_eq!(
        sourced(&firstboot_env(&cfg).unwrap(), &["PROXY_URL"]),
        [proxy]
    );
}

#[test]
fn firstboot_settings_need_a_known_digest() {
    let mut cfg: GreengrassConfig = config("");
    cfg.plugin_version = "9.9.9".into();
    let err = firstboot_env(&cfg).expect_err("unknown digest").to_string();
    assert!(
        err.contains("plugin_sha256") && err.contains("sha256sum"),
        "{err}"
    );
}

#[test]
fn payload_with_root_ca_installs_that_file_where_root_ca_path_points() {
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p256");
    let cert = scratch.valid_cert("cert.pem", &key);
    let bundle = [
        common::ca_pem("Test Root CA 3", true, 2030),
        common::ca_pem("Proxy CA", true, 2031),
    ]
    .concat();
    scratch.write("bundle.pem", bundle.as_bytes());
    let cfg = common::parse(&common::section(&cert, &key, "root_ca = \"bundle.pem\"")).unwrap();
    let (claim, _) = load_claim(&cfg, scratch.dir.path(), now()).unwrap();
    let files = payload_files(&cfg, &claim).expect("payload");
    let ca = files
        .iter()
        .find(|f| f.path == "/greengrass/v2/rootCA.pem")
        .expect("root CA file");
    assert_eq!((ca.mode, ca.contents.bytes()), (0o644, bundle.as_bytes()));
    assert!(!files
        .iter()
        .any(|f| f.path == "/greengrass/v2/AmazonRootCA1.pem"));
    let config = files
        .iter()
        .find(|f| f.path == "/etc/imgbuild/greengrass-config.yaml.in")
        .unwrap();
    let doc = parse_yaml(std::str::from_utf8(config.contents.bytes()).unwrap());
    assert_eq!(string(&plugin(&doc)["rootCaPath"]), ca.path);
}

#[test]
fn payload_lists_every_file_with_its_mode_and_hides_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let key = scratch.key("key.pem", "p256");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cert = scratch.valid_cert("cert.pem", &key);
    let cfg = common::parse(&common::section(&cert, &key, "")).unwrap();
    let (claim, _) = load_claim(&cfg, scratch.dir.path(), now()).unwrap();
    let files = payload_files(&cfg, &claim).expect("payload");
    let listed: Vec<(&str, u32)> = files.iter().map(|f| (f.path, f.mode)).collect();
    assert_eq!(
        listed,
        [
            ("/greengrass/v2/claim.pem.crt", 0o644),
            ("/greengrass/v2/claim.private.pem.key", 0o600),
            ("/greengrass/v2/AmazonRootCA1.pem", 0o644),
            ("/etc/imgbuild/greengrass-config.yaml.in", 0o600),
            ("/etc/imgbuild/firstboot.env", 0o600),
        ]
    );
    assert_eq!(files[0].contents.bytes(), std::fs::read(&cert).unwrap());
    assert_eq!(files[1].contents.bytes(), std::fs::read(&key).unwrap());
    assert_eq!(
        files[2].contents.bytes(),
        imgbuild_greengrass::amazon_root_ca1()
    );
    assert_eq!(
        files[3].contents.bytes(),
        render_plugin_config(&cfg, SERIAL_PLACEHOLDER)
            .unwrap()
            .as_bytes()
    );
    assert_eq!(
        files[4].contents.bytes(),
        firstboot_env(&cfg).unwrap().as_bytes()
    );
    common::assert_no_secret(
        &format!("{files:?}"),
        &common::secret_lines(&std::fs::read(&key).unwrap()),
    );
}
