//! A small ordered work pipeline: items are processed on worker threads, at most `window` ahead
//! of the consumer, and handed to the consumer in index order on the calling thread.

use crate::error::{bail, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread;

/// The number of worker threads to use when the caller asks for `0` ("all cores").
pub(crate) fn default_threads() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Runs `work(i, state)` for every `i < count` on `threads` workers (each with its own `init()`
/// state) and passes the results to `sink` in order of `i`. At most `window` items are in flight
/// (started but not yet consumed), which bounds memory. The first error stops the pipeline.
pub(crate) fn for_each_ordered<T, S>(
    count: usize,
    threads: usize,
    window: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(usize, &mut S) -> Result<T> + Sync,
    mut sink: impl FnMut(T) -> Result<()>,
) -> Result<()>
where
    T: Send,
{
    if count == 0 {
        return Ok(());
    }
    let threads = threads.clamp(1, count);
    let window = window.max(threads);
    let cancel = AtomicBool::new(false);
    let (job_tx, job_rx) = mpsc::channel::<usize>();
    let job_rx = Mutex::new(job_rx);
    thread::scope(|scope| {
        let (res_tx, res_rx) = mpsc::channel::<(usize, Result<T>)>();
        for _ in 0..threads {
            let res_tx = res_tx.clone();
            let (job_rx, cancel, init, work) = (&job_rx, &cancel, &init, &work);
            scope.spawn(move || worker(job_rx, res_tx, cancel, init, work));
        }
        drop(res_tx);
        let result = drive(count, window, job_tx, &res_rx, &mut sink);
        if result.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// One worker: takes job indices until the job channel closes, sending back each result.
fn worker<T, S>(
    jobs: &Mutex<Receiver<usize>>,
    results: Sender<(usize, Result<T>)>,
    cancel: &AtomicBool,
    init: &impl Fn() -> S,
    work: &impl Fn(usize, &mut S) -> Result<T>,
) {
    let mut state = init();
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(i) = job else { return };
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        if results.send((i, work(i, &mut state))).is_err() {
            return;
        }
    }
}

/// The consumer side: hands out jobs within the window and feeds results to `sink` in order.
fn drive<T>(
    count: usize,
    window: usize,
    jobs: Sender<usize>,
    results: &Receiver<(usize, Result<T>)>,
    sink: &mut impl FnMut(T) -> Result<()>,
) -> Result<()> {
    let mut pending = BTreeMap::new();
    let (mut next_job, mut next_out) = (0, 0);
    while next_out < count {
        while next_job < count && next_job < next_out + window {
            if jobs.send(next_job).is_err() {
                bail!(
                    Worker,
                    "all worker threads stopped before item {next_job} of {count}"
                );
            }
            next_job += 1;
        }
        let Ok((i, result)) = results.recv() else {
            bail!(
                Worker,
                "all worker threads stopped before item {next_out} of {count}"
            );
        };
        pending.insert(i, result?);
        while let Some(value) = pending.remove(&next_out) {
            sink(value)?;
            next_out += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_order_and_errors_stop_the_pipeline() {
        let mut seen = Vec::new();
        let r = for_each_ordered(
            100,
            4,
            8,
            || (),
            |i, _| Ok(i * 3),
            |v| {
                seen.push(v);
                Ok(())
            },
        );
        assert!(r.is_ok());
        assert_eq!(seen, (0..100).map(|i| i * 3).collect::<Vec<_>>());

        let r = for_each_ordered(
            100,
            3,
            6,
            || (),
            |i, _| {
                if i == 40 {
                    Err(crate::Error::Worker("boom".into()))
                } else {
                    Ok(i)
                }
            },
            |_| Ok(()),
        );
        assert_eq!(r.err().map(|e| e.to_string()), Some("boom".to_string()));
    }
}
