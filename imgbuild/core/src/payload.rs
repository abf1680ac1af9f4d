//! The Greengrass payload: what a `[greengrass]` section adds to the plan — claim certificate
//! and key, the root CA (Amazon Root CA 1 or `root_ca`), the fleet-provisioning plugin config
//! (from the project's `templates_dir/greengrass/` when it has one; serial filled on the device),
//! first-boot settings, the first-boot scripts and their unit (enabled), the clock floor, and the
//! board's kernel command-line defaults. With `--preseed`, also the pinned
//! nucleus zip, plugin jar and arm64 .debs (see [`Preseed`]).
//!
//! The first-boot scripts are compiled into the binary from `firstboot/`, so an `imgbuild`
//! binary (or container) is self-contained.

use crate::board::Board;
use crate::config::OwnerSpec;
use crate::error::{Context, Error, Result};
use crate::plan::Plan;
use imgbuild_greengrass::{GreengrassConfig, PayloadContents};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use imgbuild_greengrass::contract::{
    preseed_name, FIRSTBOOT_UNIT_PATH, PRESEED_DEBS_DIR, PRESEED_NUCLEUS_NAME, PRESEED_PLUGIN_NAME,
};
pub use imgbuild_greengrass::contract::{FIRSTBOOT_DIR, FIRSTBOOT_UNIT, PRESEED_DIR};

/// `(path under FIRSTBOOT_DIR or absolute path, mode, contents)` of the first-boot files;
/// `lib/contract.sh` is generated ([`imgbuild_greengrass::contract::contract_sh`]).
const FIRSTBOOT_FILES: &[(&str, u32, &str)] = &[
    (
        "imgbuild-firstboot",
        0o755,
        include_str!("../../../firstboot/imgbuild-firstboot"),
    ),
    (
        "lib/common.sh",
        0o644,
        include_str!("../../../firstboot/lib/common.sh"),
    ),
    (
        "lib/steps.sh",
        0o644,
        include_str!("../../../firstboot/lib/steps.sh"),
    ),
    (
        FIRSTBOOT_UNIT_PATH,
        0o644,
        include_str!("../../../firstboot/imgbuild-firstboot.service"),
    ),
];

/// Files fetched ahead of time for factories without internet (`--preseed`).
#[derive(Debug, Clone, Default)]
pub struct Preseed {
    /// The verified nucleus zip on the host.
    pub nucleus: Option<PathBuf>,
    /// The verified plugin jar on the host.
    pub plugin: Option<PathBuf>,
    /// arm64 .deb files (Docker, Java and their dependencies) on the host.
    pub debs: Vec<PathBuf>,
}

/// Adds the Greengrass payload to `plan`. Claim material is checked first (parsed, key matches
/// certificate, dates); returns warnings (e.g. a certificate that expires soon). The key's bytes
/// are never part of any message.
pub fn add_greengrass(
    plan: &mut Plan,
    gg: &GreengrassConfig,
    board: &Board,
    config_dir: &Path,
    epoch: i64,
    preseed: &Preseed,
) -> Result<Vec<String>> {
    imgbuild_greengrass::validate(gg)?;
    let (claim, warnings) = imgbuild_greengrass::load_claim(gg, config_dir, SystemTime::now())?;
    let origin = "[greengrass]";
    for d in ["/greengrass", imgbuild_greengrass::GG_ROOT] {
        plan.entries.push(crate::plan::Entry {
            path: d.to_string(),
            kind: crate::plan::EntryKind::Dir { explicit: true },
            mode: 0o755,
            owner: OwnerSpec::root(),
            origin: origin.to_string(),
        });
    }
    let plugin_config = plugin_config(gg, &plan.templates_dir)?;
    for f in imgbuild_greengrass::payload_files_with_config(gg, &claim, plugin_config)? {
        let mut data = match &f.contents {
            PayloadContents::Public(b) => b.clone(),
            PayloadContents::Secret(s) => s.expose_secret().to_vec(),
        };
        if f.path == imgbuild_greengrass::FIRSTBOOT_ENV_PATH {
            data.extend_from_slice(format!("BUILD_EPOCH={epoch}\n").as_bytes());
        }
        plan.file(f.path, data, f.mode, OwnerSpec::root(), origin);
    }
    let contract = imgbuild_greengrass::contract::contract_sh();
    let generated = [("lib/contract.sh", 0o644, contract.as_str())];
    for (path, mode, text) in FIRSTBOOT_FILES.iter().chain(&generated) {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{FIRSTBOOT_DIR}/{path}")
        };
        plan.file(
            &path,
            text.as_bytes().to_vec(),
            *mode,
            OwnerSpec::root(),
            "firstboot/",
        );
    }
    // systemd never lets the clock start before this file's mtime (a Pi has no RTC).
    plan.file(
        "/usr/lib/clock-epoch",
        Vec::new(),
        0o644,
        OwnerSpec::root(),
        origin,
    );
    add_preseed(plan, gg, preseed)?;
    if !plan.enable_units.iter().any(|u| u == FIRSTBOOT_UNIT) {
        plan.enable_units.push(FIRSTBOOT_UNIT.to_string());
    }
    for tok in &board.boot.cmdline_defaults {
        if !plan.cmdline_append.contains(tok) {
            plan.cmdline_append.push(tok.clone());
        }
    }
    Ok(warnings)
}

/// The fleet-provisioning plugin config: rendered from the project's own
/// `templates_dir/greengrass/fleet-provisioning.yaml.tera` when that file exists, else from the
/// built-in template (the repository's `templates/greengrass/`).
fn plugin_config(gg: &GreengrassConfig, templates_dir: &Path) -> Result<String> {
    let own = templates_dir.join(imgbuild_greengrass::PLUGIN_CONFIG_TEMPLATE_NAME);
    let placeholder = imgbuild_greengrass::SERIAL_PLACEHOLDER;
    let rendered = match std::fs::read_to_string(&own) {
        Ok(text) => {
            tracing::info!(template = %own.display(), "Greengrass plugin config from the project's template");
            imgbuild_greengrass::render_plugin_config_from(
                gg,
                placeholder,
                &text,
                &format!("template {}", own.display()),
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            imgbuild_greengrass::render_plugin_config(gg, placeholder)
        }
        Err(e) => {
            return Err(Error::from(e).context(format_args!(
                "reading the project's plugin config template {}",
                own.display()
            )))
        }
    };
    Ok(rendered?)
}

fn add_preseed(plan: &mut Plan, gg: &GreengrassConfig, p: &Preseed) -> Result<()> {
    let read = |path: &Path| {
        std::fs::read(path).context(|| format!("--preseed: reading {}", path.display()))
    };
    if let Some(n) = &p.nucleus {
        let dst = format!(
            "{PRESEED_DIR}/{}",
            preseed_name(PRESEED_NUCLEUS_NAME, &gg.nucleus_version)
        );
        plan.file(&dst, read(n)?, 0o644, OwnerSpec::root(), "--preseed");
    }
    if let Some(j) = &p.plugin {
        let dst = format!(
            "{PRESEED_DIR}/{}",
            preseed_name(PRESEED_PLUGIN_NAME, &gg.plugin_version)
        );
        plan.file(&dst, read(j)?, 0o644, OwnerSpec::root(), "--preseed");
    }
    for deb in &p.debs {
        let name = deb
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        plan.file(
            &format!("{PRESEED_DEBS_DIR}/{name}"),
            read(deb)?,
            0o644,
            OwnerSpec::root(),
            "--preseed",
        );
    }
    Ok(())
}

/// Downloads (or takes from the cache) the pinned nucleus zip and plugin jar for `--preseed`,
/// each verified against its pinned sha256; `progress` receives the downloads' progress.
pub fn fetch_greengrass_artifacts(
    gg: &GreengrassConfig,
    cache_dir: &Path,
    offline: bool,
    progress: &imgbuild_progress::Reporter,
) -> Result<Preseed> {
    use imgbuild_greengrass::Artifact;
    let mut opts = imgbuild_fetch::Options::new(cache_dir);
    opts.offline = offline;
    opts.progress = progress.clone();
    let get = |a: Artifact| -> Result<PathBuf> {
        let sha = gg.sha256(a)?;
        let src = imgbuild_fetch::Source {
            url: gg.url(a),
            sha256: Some(sha),
            sha512: None,
            signature: None,
        };
        let got = imgbuild_fetch::fetch(&src, &opts).context(|| "--preseed")?;
        Ok(got.path)
    };
    Ok(Preseed {
        nucleus: Some(get(Artifact::Nucleus)?),
        plugin: Some(get(Artifact::Plugin)?),
        debs: Vec::new(),
    })
}

/// The packages first boot installs (see `firstboot/README.md`), for `--preseed`.
pub fn firstboot_packages(gg: &GreengrassConfig) -> Vec<String> {
    // docker-ce comes from Docker's repository, which the image's Debian sources do not name:
    // resolving it fails with an error naming the package.
    let docker: &[&str] = match gg.docker {
        imgbuild_greengrass::Docker::Debian => &["docker.io"],
        imgbuild_greengrass::Docker::DockerCe => &["docker-ce", "docker-ce-cli", "containerd.io"],
    };
    let rest = [
        gg.java_package.as_str(),
        "sudo",
        "unzip",
        "curl",
        "ca-certificates",
    ];
    docker
        .iter()
        .chain(rest.iter())
        .map(|s| s.to_string())
        .collect()
}
