//! The on-device contract is written once (`src/contract.rs`): the checked-in
//! `firstboot/lib/contract.sh` must be exactly its generated text, the unit file must name the same
//! paths, every settings key the build writes must be read by first boot, and neither the first-boot
//! scripts nor the field test may spell a contract value themselves.
//!
//! `IMGBUILD_BLESS=1 cargo test --test contract` rewrites `firstboot/lib/contract.sh` after a change
//! of the Rust constants.

mod common;

use std::path::{Path, PathBuf};

use imgbuild_greengrass::contract::{
    contract_sh, contract_values, DONE_MARKER, FIRSTBOOT_SCRIPT, FIRSTBOOT_WANTED_BY,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The bash files that run the contract: first boot itself and the field test's host scripts.
const SCRIPTS: &[&str] = &[
    "firstboot/imgbuild-firstboot",
    "firstboot/lib/common.sh",
    "firstboot/lib/steps.sh",
    "firstboot/tests/helpers.bash",
    "tests/field/run.sh",
    "tests/field/lib.sh",
    "tests/field/iot.sh",
];

#[test]
fn checked_in_contract_sh_is_the_generated_one() {
    let path = repo().join("firstboot/lib/contract.sh");
    let generated = contract_sh();
    if std::env::var_os("IMGBUILD_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("write firstboot/lib/contract.sh");
    }
    let checked_in = read("firstboot/lib/contract.sh");
    if checked_in != generated {
        let first = checked_in
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or("line count".to_owned(), |i| format!("line {}", i + 1));
        panic!(
            "firstboot/lib/contract.sh differs from imgbuild/greengrass/src/contract.rs (first at \
             {first}); regenerate it: IMGBUILD_BLESS=1 cargo test --test contract\n--- checked in\n\
             {checked_in}\n--- generated\n{generated}"
        );
    }
}

/// Sourcing the generated file in bash gives back every value exactly (quoting included).
#[test]
fn contract_sh_sources_to_the_rust_values() {
    let mut script = contract_sh();
    for (name, _, _) in contract_values() {
        script.push_str(&format!("printf '%s\\0' \"${name}\"\n"));
    }
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .split_terminator('\0')
        .map(str::to_owned)
        .collect();
    let want: Vec<String> = contract_values().into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(got, want);
}

#[test]
fn unit_file_names_the_contract_paths() {
    let unit = read("firstboot/imgbuild-firstboot.service");
    for line in [
        format!("ExecStart={FIRSTBOOT_SCRIPT}"),
        format!("ConditionPathExists=!{DONE_MARKER}"),
        format!("WantedBy={FIRSTBOOT_WANTED_BY}"),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "firstboot/imgbuild-firstboot.service lacks the line {line:?} (src/contract.rs)"
        );
    }
}

/// No script spells a contract path, the serial placeholder or the download base itself: each
/// uses the `CONTRACT_*` variable (so changing the Rust constant alone changes them all).
#[test]
fn scripts_use_the_contract_variables_not_literals() {
    let literals: Vec<(&str, String)> = contract_values()
        .into_iter()
        .filter(|(_, v, _)| v.starts_with('/') || v.starts_with('@') || v.starts_with("https:"))
        .map(|(n, v, _)| (n, v))
        .collect();
    let mut found = Vec::new();
    for rel in SCRIPTS {
        let text = read(rel);
        for (no, line) in text.lines().enumerate() {
            for (name, value) in &literals {
                if line.contains(value.as_str()) {
                    found.push(format!("{rel}:{}: {value} (use ${name})", no + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "contract values spelled out instead of sourced from firstboot/lib/contract.sh:\n{}",
        found.join("\n")
    );
    for rel in [
        "firstboot/imgbuild-firstboot",
        "tests/field/run.sh",
        "firstboot/tests/helpers.bash",
    ] {
        assert!(
            read(rel).contains("/lib/contract.sh\""),
            "{rel} does not source firstboot/lib/contract.sh"
        );
    }
}

/// Every key the build writes into `firstboot.env` is read by first boot's `load_settings`.
#[test]
fn every_setting_the_build_writes_is_read_on_the_device() {
    let cfg = common::config("proxy_url = \"http://proxy.example:3128\"\n");
    let env = imgbuild_greengrass::firstboot_env(&cfg).expect("firstboot.env");
    let common_sh = read("firstboot/lib/common.sh");
    let keys: Vec<&str> = env
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    assert!(keys.len() >= 10, "{keys:?}");
    for key in keys {
        let read_there = common_sh.contains(&format!("require_setting {key} "))
            || common_sh.contains(&format!("{key}=${{{key}:-"));
        assert!(
            read_there,
            "firstboot.env key {key} is written by the build but never read by firstboot/lib/common.sh"
        );
    }
}
