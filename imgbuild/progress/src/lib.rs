//! The one way imgbuild's libraries report progress of long operations (downloads, hashing,
//! uploads, decompression, compression): they call a [`Progress`]; they never draw anything
//! themselves. The command-line tool implements it with terminal bars; tests and library users
//! who want nothing pass [`NoProgress`] (or [`Reporter::none`]).
//!
//! A [`Progress`] tracks one stage at a time: [`Progress::start`], any number of
//! [`Progress::set`], then [`Progress::finish`]. Starting a stage while one runs replaces it.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Receives the progress of a long operation, one stage at a time. Implementations must be cheap:
/// [`Progress::set`] may be called for every MiB.
pub trait Progress: Send + Sync {
    /// A stage named `stage` (e.g. `decompress`, `sha256 image.img.xz`) of `total` bytes begins;
    /// `total` is 0 while unknown (a later `start` of the same stage may give it).
    fn start(&self, stage: &str, total: u64);
    /// `pos` bytes of the current stage are done (may exceed the announced total).
    fn set(&self, pos: u64);
    /// The current stage ended (successfully or not).
    fn finish(&self);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _stage: &str, _total: u64) {}
    fn set(&self, _pos: u64) {}
    fn finish(&self) {}
}

/// A shared, cloneable [`Progress`] for option structs and tasks on other threads
/// (`Arc<dyn Progress>` with `Debug` and a [`Default`] that shows nothing).
#[derive(Clone)]
pub struct Reporter(Arc<dyn Progress>);

impl Reporter {
    /// Wraps `progress`.
    pub fn new(progress: impl Progress + 'static) -> Reporter {
        Reporter(Arc::new(progress))
    }

    /// Wraps an already shared `progress`.
    pub fn shared(progress: Arc<dyn Progress>) -> Reporter {
        Reporter(progress)
    }

    /// A reporter that shows nothing ([`NoProgress`]).
    pub fn none() -> Reporter {
        Reporter::new(NoProgress)
    }
}

impl Default for Reporter {
    fn default() -> Reporter {
        Reporter::none()
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reporter")
    }
}

impl Deref for Reporter {
    type Target = dyn Progress;

    fn deref(&self) -> &(dyn Progress + 'static) {
        &*self.0
    }
}

/// A stage that finishes when dropped: [`Stage::start`] calls [`Progress::start`], and
/// [`Progress::finish`] runs however the scope ends (an early `?` return included), so a
/// failed operation never leaves its bar behind.
pub struct Stage<'a>(&'a dyn Progress);

impl<'a> Stage<'a> {
    /// Starts the stage `stage` of `total` bytes on `progress`.
    pub fn start(progress: &'a dyn Progress, stage: &str, total: u64) -> Stage<'a> {
        progress.start(stage, total);
        Stage(progress)
    }

    /// `pos` bytes of the stage are done.
    pub fn set(&self, pos: u64) {
        self.0.set(pos);
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every call, to check what a reporter forwards.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Progress for Log {
        fn start(&self, stage: &str, total: u64) {
            self.0
                .lock()
                .unwrap()
                .push(format!("start {stage} {total}"));
        }
        fn set(&self, pos: u64) {
            self.0.lock().unwrap().push(format!("set {pos}"));
        }
        fn finish(&self) {
            self.0.lock().unwrap().push("finish".to_owned());
        }
    }

    #[test]
    fn a_reporter_forwards_every_call_from_any_thread() {
        let log = Arc::new(Log::default());
        let reporter = Reporter::shared(log.clone());
        reporter.start("upload x", 10);
        let clone = reporter.clone();
        std::thread::spawn(move || clone.set(4)).join().unwrap();
        reporter.set(10);
        reporter.finish();
        assert_eq!(
            *log.0.lock().unwrap(),
            ["start upload x 10", "set 4", "set 10", "finish"]
        );
        assert_eq!(format!("{reporter:?}"), "Reporter");
        Reporter::default().start("nothing", 1);
    }

    #[test]
    fn a_stage_finishes_on_an_early_return() {
        let log = Log::default();
        let failing = || -> Result<(), &str> {
            let stage = Stage::start(&log, "upload y", 8);
            stage.set(3);
            Err("interrupted")?;
            stage.set(8);
            Ok(())
        };
        assert_eq!(failing(), Err("interrupted"));
        assert_eq!(
            *log.0.lock().unwrap(),
            ["start upload y 8", "set 3", "finish"]
        );
    }
}
