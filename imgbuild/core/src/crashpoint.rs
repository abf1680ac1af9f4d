//! Test-only crash points. A debug build (`debug_assertions`) run with
//! `IMGBUILD_TEST_CRASH_POINT=NAME:ACTION` stops itself when it reaches the point `NAME`:
//!
//! * `kill`: raises SIGKILL (no cleanup can run: what a power cut or the OOM killer does);
//! * `term`: raises SIGTERM and waits; the CLI's handler cleans up and exits 143;
//! * `sleep`: prints `imgbuild: crash point NAME reached` on stderr and sleeps, so a test can
//!   signal the process itself at a known point.
//!
//! Release builds compile [`hit`] to nothing. The points are listed in [`POINTS`] so tests can
//! iterate over them.

/// Every crash point, in the order a successful build reaches them.
pub const POINTS: &[&str] = &[
    "base-resolved",
    "raw-cached",
    "scratch-created",
    "working-copy",
    "table-read",
    "base-checked",
    "chunk-index",
    "patch-start",
    "patch-done",
    "secrets-mapped",
    "compressed",
    "sha256-written",
    "manifest-written",
    "modes-set",
    "publish-locked",
    "journal-written",
    "renamed-1",
    "renamed-2",
    "renamed-3",
    "renamed-4",
    "published",
    "summary-printed",
];

/// Stops the process here if `IMGBUILD_TEST_CRASH_POINT` names `point` (debug builds only).
#[inline]
pub fn hit(point: &str) {
    stop(point, true);
}

/// Like [`hit`], for points where the build holds what the signal handler waits for (the
/// publish step): after raising SIGTERM the build goes on, as it would if the signal arrived
/// there, and the handler exits once the build lets go.
#[inline]
pub(crate) fn hit_publishing(point: &str) {
    stop(point, false);
}

#[inline]
fn stop(point: &str, wait_after_term: bool) {
    #[cfg(debug_assertions)]
    {
        use rustix::process::{getpid, kill_process, Signal};
        let Ok(spec) = std::env::var("IMGBUILD_TEST_CRASH_POINT") else {
            return;
        };
        let Some((name, action)) = spec.split_once(':') else {
            return;
        };
        if name != point {
            return;
        }
        match action {
            "kill" => {
                let _ = kill_process(getpid(), Signal::KILL);
            }
            "term" => {
                let _ = kill_process(getpid(), Signal::TERM);
                if !wait_after_term {
                    // Go on once the signal thread has seen it (as if the signal arrived here).
                    while !crate::scratch::interrupted() {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    return;
                }
            }
            "sleep" => eprintln!("imgbuild: crash point {point} reached"),
            _ => return,
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (point, wait_after_term);
}
