//! Progress bars for the long stages, drawn only when stderr is a terminal: the one
//! implementation of the libraries' [`Progress`] trait (they report, the CLI draws).

use imgbuild_progress::{Progress, Reporter};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard};

/// indicatif bars behind the libraries' [`Progress`] trait: one bar per stage.
pub struct Bars {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Bars {
    /// Bars on stderr when it is a TTY; nothing otherwise.
    pub fn new() -> Bars {
        Bars {
            enabled: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    /// [`Bars::new`] as a shareable [`Reporter`] for the libraries' option structs.
    pub fn reporter() -> Reporter {
        Reporter::new(Bars::new())
    }

    fn slot(&self) -> MutexGuard<'_, Option<ProgressBar>> {
        // A bar is only drawing state: one left behind by a panicking thread is still usable.
        self.bar.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let mut slot = self.slot();
        if let Some(old) = slot.take() {
            if old.prefix() == stage {
                // The same stage again (a resumed download now knowing its size): keep the bar.
                if total > 0 {
                    old.set_length(total);
                }
                *slot = Some(old);
                return;
            }
            old.finish_and_clear();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(stage.to_string());
        *slot = Some(bar);
    }

    fn set(&self, pos: u64) {
        if let Some(b) = self.slot().as_ref() {
            if b.length().is_some_and(|l| pos > l) {
                b.set_length(pos);
            }
            b.set_position(pos);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.slot().take() {
            b.finish_and_clear();
        }
    }
}
