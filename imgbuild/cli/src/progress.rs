//! Progress bars for the long stages, drawn only when stderr is a terminal.

use imgbuild_core::pipeline::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::io::IsTerminal;

/// indicatif bars behind the library's [`Progress`] trait.
pub struct Bars {
    enabled: bool,
    bar: RefCell<Option<ProgressBar>>,
}

impl Bars {
    /// Bars on stderr when it is a TTY; nothing otherwise.
    pub fn new() -> Bars {
        Bars {
            enabled: std::io::stderr().is_terminal(),
            bar: RefCell::new(None),
        }
    }
}

impl Progress for Bars {
    fn start(&self, stage: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(stage.to_string());
        *self.bar.borrow_mut() = Some(bar);
    }

    fn set(&self, pos: u64) {
        if let Some(b) = self.bar.borrow().as_ref() {
            if b.length().is_some_and(|l| pos > l) {
                b.set_length(pos);
            }
            b.set_position(pos);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.borrow_mut().take() {
            b.finish_and_clear();
        }
    }
}
