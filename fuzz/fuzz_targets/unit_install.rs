//! systemd unit `[Install]` parsing (`units::parse_install`) and the symlinks enabling a unit
//! (`units::links_for`). The first line is the unit name, the rest the unit file. Oracle: no
//! panic; every link lies under /etc/systemd/system and points at the unit file.
#![no_main]

use imgbuild_core::units;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, unit) = text.split_once('\n').unwrap_or(("fuzz.service", &text));
    let inst = units::parse_install(unit);
    for v in inst
        .wanted_by
        .iter()
        .chain(&inst.required_by)
        .chain(&inst.alias)
        .chain(&inst.also)
    {
        assert!(!v.is_empty() && !v.contains(char::is_whitespace), "value {v:?}");
    }
    let path = "/lib/systemd/system/fuzz.service";
    if let Ok(links) = units::links_for(name, path, &inst) {
        for l in links {
            assert!(l.link.starts_with("/etc/systemd/system/"), "{}", l.link);
            assert_eq!(l.target, path);
        }
    }
});
