//! The TOML files imgbuild reads: a board file (`board::Board::parse`), the build config
//! (`config::Config::parse`, which validates every value) and an overlay's `overlay.toml`
//! (`plan::add_overlay` over a small fixed overlay tree). The first byte picks which one; the
//! rest is the text. Oracle: no panic, errors are one line, accepted overlay entries have
//! clean absolute paths.
#![no_main]

use imgbuild_core::{board::Board, config::Config, plan};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// `overlay/` with a directory, a file, an executable, a nested file and a symlink.
fn overlay_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = imgbuild_fuzz::scratch_dir().join("overlay");
        std::fs::create_dir_all(dir.join("etc/ssh")).expect("mkdir");
        std::fs::create_dir_all(dir.join("usr/local/bin")).expect("mkdir");
        std::fs::write(dir.join("etc/motd"), "hi\n").expect("write");
        std::fs::write(dir.join("etc/ssh/sshd_config"), "Port 22\n").expect("write");
        let tool = dir.join("usr/local/bin/tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let _ = std::os::unix::fs::symlink("motd", dir.join("etc/issue"));
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let err = match which % 3 {
        0 => Board::parse(&text, "fuzz.toml").err(),
        1 => Config::parse(&text, "fuzz.toml").err(),
        _ => {
            let dir = overlay_dir();
            std::fs::write(dir.join(plan::OVERLAY_META), text.as_bytes()).expect("write");
            let mut p = plan::Plan::default();
            let result = plan::add_overlay(&mut p, dir, "overlay fuzz");
            if result.is_ok() {
                for e in &p.entries {
                    imgbuild_core::config::check_image_path(&e.path)
                        .unwrap_or_else(|err| panic!("accepted a bad path: {err}"));
                    assert!(e.mode <= 0o7777, "mode {:o}", e.mode);
                }
            }
            result.err()
        }
    };
    if let Some(e) = err {
        assert!(!e.to_string().contains('\n'), "multi-line error: {e}");
    }
});
