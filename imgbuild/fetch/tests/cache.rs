//! The cache on its own: raw images, listing, pruning, locks.

mod common;

use std::collections::HashSet;

use common::{fixture, sha256sum};
use imgbuild_fetch::{normalize_sha256, sha256_file, Cache, EntryKind, FetchError};
use tempfile::TempDir;

/// Stores `data` as the raw image of `sha` through a scratch file, as a decompressor would.
fn store_raw(cache: &Cache, sha: &str, data: &[u8]) -> std::path::PathBuf {
    let scratch = cache.scratch_path(&format!("{sha}.raw"));
    std::fs::write(&scratch, data).unwrap();
    let stored = cache.store_raw(sha, &scratch).unwrap();
    assert!(!scratch.exists(), "the scratch file was moved, not copied");
    stored
}

#[test]
fn sha256_file_matches_sha256sum() {
    let dir = TempDir::new().unwrap();
    for len in [0, 1, 1 << 20, (1 << 20) + 17] {
        let data = fixture(len, len as u64 + 1);
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256sum(&data, dir.path()));
    }
    let missing = sha256_file(&dir.path().join("missing")).unwrap_err();
    assert!(missing.to_string().contains("missing"), "{missing}");
}

#[test]
fn hashes_are_normalized_and_checked() {
    let hash = "AB".repeat(32);
    assert_eq!(
        normalize_sha256(&format!(" {hash} ")).unwrap(),
        "ab".repeat(32)
    );
    for bad in ["", "ab", &"zz".repeat(32), &"a".repeat(65)] {
        assert!(matches!(
            normalize_sha256(bad),
            Err(FetchError::BadHash { .. })
        ));
    }
}

#[test]
fn raw_images_are_stored_and_found() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let sha = "1f".repeat(32);
    assert!(cache.raw_path(&sha).is_none());
    let data = fixture(100_000, 3);
    let stored = store_raw(&cache, &sha, &data);
    assert_eq!(cache.raw_path(&sha), Some(stored.clone()));
    assert_eq!(std::fs::read(&stored).unwrap(), data);

    // A second writer (e.g. a concurrent build) loses the race harmlessly.
    let again = store_raw(&cache, &sha, &fixture(10, 4));
    assert_eq!(again, stored);
    assert_eq!(std::fs::read(&stored).unwrap(), data);

    let entries = cache.ls().unwrap();
    assert_eq!(
        entries.len(),
        1,
        "scratch files are not entries: {entries:?}"
    );
    assert_eq!(entries[0].kind, EntryKind::Raw);
    assert_eq!(entries[0].key, sha);
    assert_eq!(entries[0].size, data.len() as u64);
}

#[test]
fn store_raw_rejects_a_bad_key() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let scratch = cache.scratch_path("x");
    std::fs::write(&scratch, b"x").unwrap();
    let err = cache.store_raw("../../etc/passwd", &scratch).unwrap_err();
    assert!(matches!(err, FetchError::BadHash { .. }), "{err}");
}

#[test]
fn prune_removes_what_is_not_kept_and_spares_busy_entries() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let (keep, drop, busy) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
    for (i, sha) in [&keep, &drop, &busy].into_iter().enumerate() {
        store_raw(&cache, sha, &fixture(1000 * (i + 1), i as u64));
    }
    std::fs::write(cache.part_path(&drop), fixture(500, 9)).unwrap();
    assert_eq!(cache.ls().unwrap().len(), 4);

    let in_use = cache.lock_shared(&busy).unwrap();
    let keep_set: HashSet<String> = [keep.clone()].into();
    let report = cache.prune(|e| keep_set.contains(&e.key)).unwrap();
    let removed: HashSet<(EntryKind, String)> = report
        .removed
        .iter()
        .map(|e| (e.kind, e.key.clone()))
        .collect();
    let expected: HashSet<(EntryKind, String)> = [
        (EntryKind::Raw, drop.clone()),
        (EntryKind::Partial, drop.clone()),
    ]
    .into();
    assert_eq!(removed, expected);
    assert_eq!(report.freed_bytes, 2000 + 500);
    assert_eq!(report.busy.len(), 1);
    assert_eq!(report.busy[0].key, busy);

    let left: HashSet<String> = cache.ls().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(left, [keep, busy.clone()].into());

    drop_lock(in_use);
    let report = cache.prune(|_| false).unwrap();
    assert_eq!(report.removed.len(), 2);
    assert!(cache.ls().unwrap().is_empty());
}

/// Releases a lock (named for readability at the call site).
fn drop_lock(lock: imgbuild_fetch::EntryLock) {
    drop(lock);
}

#[test]
fn exclusive_lock_waits_for_the_holder() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let key = "dd".repeat(32);
    let order = std::sync::Mutex::new(Vec::new());
    let held = cache.lock(&key).unwrap();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let _lock = cache.lock(&key).unwrap();
            order.lock().unwrap().push("waiter");
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        order.lock().unwrap().push("holder");
        drop(held);
        waiter.join().unwrap();
    });
    assert_eq!(*order.lock().unwrap(), ["holder", "waiter"]);
}

#[test]
fn scratch_files_of_dead_writers_records_and_unused_locks_are_pruned() {
    let dir = TempDir::new().unwrap();
    let cache = Cache::open(dir.path()).unwrap();
    let tmp = dir.path().join("tmp");
    // Ours (alive), as a decompressor leaves it half-written (`NAME.part`).
    let mine = cache.scratch_path("raw");
    let mine_part = mine.with_extension("tmp.part");
    std::fs::write(&mine_part, b"live").unwrap();
    // A dead writer: a child process that has exited (its pid with a start time that is not
    // its current one, whatever runs under that pid now), and one of an older naming.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let dead = tmp.join(format!("{}.raw.{dead_pid}-1.0.tmp.part", "ab".repeat(32)));
    std::fs::write(&dead, vec![7u8; 4096]).unwrap();
    let old_style = tmp.join(format!("record.{dead_pid}.3.tmp"));
    std::fs::write(&old_style, b"x").unwrap();
    // A record of a download that is gone, and a lock of a key with nothing cached.
    std::fs::write(
        dir.path()
            .join("meta")
            .join(format!("{}.url", "ee".repeat(32))),
        "u",
    )
    .unwrap();
    drop(cache.lock(&"ff".repeat(32)).unwrap());

    let other = cache.ls_other().unwrap();
    let kinds: Vec<(&str, bool)> = other.iter().map(|f| (f.kind, f.live)).collect();
    assert_eq!(other.len(), 5, "{other:?}");
    assert!(kinds.contains(&("scratch", true)) && kinds.contains(&("record", false)));
    assert!(kinds.contains(&("lock", false)));
    let live = other.iter().find(|f| f.live).unwrap();
    assert_eq!(live.path, mine_part);
    // A pid that is running but was started at another time is not this writer either.
    let swept = cache.sweep_scratch().unwrap();
    assert!(swept.contains(&dead), "{swept:?}");
    assert!(!dead.exists() && mine_part.exists());
    let recycled = tmp.join(format!("x.{}-1.0.tmp", std::process::id()));
    std::fs::write(&recycled, b"x").unwrap();

    let report = cache.prune(|_| false).unwrap();
    assert!(report.other.contains(&recycled), "{:?}", report.other);
    assert!(mine_part.exists(), "a live writer's file is kept");
    let left: Vec<_> = cache.ls_other().unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].path, mine_part);
    // A lock still works after its file was pruned.
    let lock = cache.lock(&"ff".repeat(32)).unwrap();
    drop(lock);
}
