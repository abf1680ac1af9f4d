//! The device allowlist parser (`imgbuild-cloud`'s `allowlist.rs`, compiled without the AWS
//! SDK, see src/lib.rs). Oracle: no panic; an accepted list holds only valid, distinct serials
//! of 1-128 allowed characters, each found by `contains`; errors are one line.
#![no_main]

use imgbuild_fuzz::allowlist::{Allowlist, MAX_SERIAL_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Allowlist::parse(&text, "fuzz.txt") {
        Ok(list) => {
            let serials = list.serials();
            for (i, s) in serials.iter().enumerate() {
                assert!((1..=MAX_SERIAL_LEN).contains(&s.len()), "length of {s:?}");
                assert!(
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':')),
                    "bad character in {s:?}"
                );
                assert!(list.contains(s));
                assert!(!serials[..i].contains(s), "duplicate {s:?}");
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "multi-line error: {e}"),
    }
});
