//! systemd unit `[Install]` parsing (`units::parse_install`), its validation
//! (`Install::validate`, `units::check_unit_name`) and the symlinks enabling a unit
//! (`units::links_for`). The first line is the unit name, the rest the unit file.
//!
//! Oracles besides "no panic": parsed values are non-empty words; a name `check_unit_name`
//! accepts is 1-255 bytes of systemd's unit-name characters with no `/` or `..`; `validate`
//! accepts exactly when every value passes; errors are one line without control characters;
//! `links_for` succeeds only for a valid name and valid values, and then every link is one file
//! name (an `Alias=`) or `TARGET.wants/UNIT` / `TARGET.requires/UNIT` directly under
//! /etc/systemd/system, with no `..` component, pointing at the unit file.
#![no_main]

use imgbuild_core::units;
use libfuzzer_sys::fuzz_target;

const DIR: &str = "/etc/systemd/system/";

fn one_line(e: &str) {
    assert!(!e.is_empty(), "empty error");
    assert!(
        !e.chars().any(char::is_control),
        "error with control chars: {e:?}"
    );
}

/// Whatever `check_unit_name` accepts is a safe single path component.
fn check_name(n: &str) -> bool {
    match units::check_unit_name(n) {
        Ok(()) => {
            assert!(!n.is_empty() && n.len() <= 255, "length {}", n.len());
            assert!(
                !n.contains('/') && !n.contains("..") && !n.starts_with('.'),
                "{n:?}"
            );
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)),
                "{n:?}"
            );
            assert!(units::UNIT_SUFFIXES.iter().any(|s| n.ends_with(s)), "{n:?}");
            true
        }
        Err(e) => {
            one_line(&e);
            false
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, unit) = text.split_once('\n').unwrap_or(("fuzz.service", &text));
    let name_ok = check_name(name);
    let inst = units::parse_install(unit);
    let names: Vec<&String> = inst
        .wanted_by
        .iter()
        .chain(&inst.required_by)
        .chain(&inst.alias)
        .chain(&inst.also)
        .collect();
    let mut all_ok = true;
    for v in names.iter().copied().chain(&inst.default_instance) {
        assert!(
            !v.is_empty() && !v.contains(char::is_whitespace),
            "value {v:?}"
        );
    }
    for v in &names {
        all_ok &= check_name(v);
    }
    let valid = inst.validate();
    match &valid {
        Ok(()) => assert!(all_ok, "validate accepted an invalid value in {inst:?}"),
        Err(e) => one_line(e),
    }
    if inst.default_instance.is_empty() {
        assert_eq!(
            valid.is_ok(),
            all_ok,
            "validate disagrees with check_unit_name: {inst:?}"
        );
    }
    let path = "/lib/systemd/system/fuzz.service";
    match units::links_for(name, path, &inst) {
        Ok(links) => {
            assert!(
                name_ok && valid.is_ok(),
                "links for an invalid unit {name:?} {inst:?}"
            );
            assert!(!name.contains("@."), "links for a template {name:?}");
            let wants = inst.wanted_by.len() + inst.required_by.len();
            assert_eq!(links.len(), wants + inst.alias.len());
            for (i, l) in links.iter().enumerate() {
                assert_eq!(l.target, path);
                let rel = l
                    .link
                    .strip_prefix(DIR)
                    .unwrap_or_else(|| panic!("{}", l.link));
                assert!(
                    !rel.split('/')
                        .any(|c| c == ".." || c == "." || c.is_empty()),
                    "{rel}"
                );
                if i < wants {
                    let (dir, file) = rel.split_once('/').unwrap_or_else(|| panic!("{rel}"));
                    assert_eq!(file, name);
                    assert!(
                        dir.ends_with(".wants") || dir.ends_with(".requires"),
                        "{rel}"
                    );
                } else {
                    assert!(!rel.contains('/'), "alias link is not one file name: {rel}");
                }
            }
        }
        Err(e) => one_line(&e.to_string()),
    }
});
