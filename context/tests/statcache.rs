//! The stat cache: hits without hashing, and every change that must be seen.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::{age, set_mtime, write};
use forge_context::{Context, Index};

fn setup(n: usize) -> (tempfile::TempDir, tempfile::TempDir) {
    let ctx = tempfile::tempdir().expect("tempdir");
    for i in 0..n {
        write(
            ctx.path(),
            &format!("d{}/f{i}.txt", i % 10),
            &format!("file {i}"),
        );
    }
    age(ctx.path());
    settle();
    (ctx, tempfile::tempdir().expect("tempdir"))
}

/// Waits until the files' ctimes (set when they were made and aged) are older
/// than the racy window, which `utimensat` cannot move back.
fn settle() {
    std::thread::sleep(Duration::from_millis(1100));
}

fn scan(root: &Path, cache: &Path) -> Index {
    Context::open(root, None)
        .expect("open")
        .scan(Some(cache))
        .expect("scan")
}

fn selection_digest(index: &Index) -> forge_graph::SourceDigest {
    index
        .select(&[".".to_string()], &[])
        .expect("select")
        .digest()
}

#[test]
fn warm_cache_hashes_nothing() {
    let (ctx, store) = setup(50);
    let cache = store.path().join("statcache/ctx");
    let cold = scan(ctx.path(), &cache);
    assert_eq!((cold.stats.hashed, cold.stats.reused), (50, 0));
    assert!(cold.stats.cache_written);
    let warm = scan(ctx.path(), &cache);
    assert!(warm.stats.cache_loaded);
    assert_eq!((warm.stats.hashed, warm.stats.reused), (0, 50));
    // Nothing changed: the cache file is not rewritten.
    assert!(!warm.stats.cache_written);
    assert_eq!(cold.entries, warm.entries);
}

#[test]
fn touch_rehashes_one_file_and_keeps_the_digest() {
    let (ctx, store) = setup(20);
    let cache = store.path().join("c");
    let before = scan(ctx.path(), &cache);
    set_mtime(
        &ctx.path().join("d3/f3.txt"),
        SystemTime::now() - Duration::from_secs(60),
    );
    let after = scan(ctx.path(), &cache);
    assert_eq!(after.stats.hashed, 1);
    assert_eq!(selection_digest(&before), selection_digest(&after));
}

#[test]
fn edit_keeping_size_and_mtime_changes_the_digest() {
    let (ctx, store) = setup(20);
    let cache = store.path().join("c");
    let file = ctx.path().join("d4/f4.txt");
    let mtime = std::fs::metadata(&file)
        .expect("stat")
        .modified()
        .expect("mtime");
    let before = scan(ctx.path(), &cache);
    std::fs::write(&file, "FILE 4").expect("edit");
    set_mtime(&file, mtime);
    let meta = std::fs::metadata(&file).expect("stat");
    assert_eq!((meta.len(), meta.modified().expect("mtime")), (6, mtime));
    // The ctime moved (and the entry is now racily clean): hashed again.
    let after = scan(ctx.path(), &cache);
    assert_eq!(after.stats.hashed, 1);
    assert_ne!(selection_digest(&before), selection_digest(&after));
    assert_eq!(
        after.get("d4/f4.txt").and_then(|e| e.digest),
        Some(*blake3::hash(b"FILE 4").as_bytes())
    );
}

#[test]
fn racily_clean_entries_are_hashed_again() {
    let (ctx, store) = setup(5);
    let cache = store.path().join("c");
    // Modified "now": too close to the scan that hashes it to be trusted later.
    write(ctx.path(), "fresh", "new");
    let first = scan(ctx.path(), &cache);
    assert_eq!(first.stats.hashed, 6);
    let second = scan(ctx.path(), &cache);
    assert_eq!((second.stats.racy, second.stats.hashed), (1, 1));
    // Once it is older than the window before the scan that hashed it, it is clean.
    set_mtime(
        &ctx.path().join("fresh"),
        SystemTime::now() - Duration::from_secs(30),
    );
    let third = scan(ctx.path(), &cache);
    // The utimes call changed the ctime, which is also recent: hashed, still racy.
    assert_eq!(third.stats.hashed, 1);
}

#[test]
fn mode_change_changes_the_digest() {
    let (ctx, store) = setup(10);
    let cache = store.path().join("c");
    let before = scan(ctx.path(), &cache);
    std::fs::set_permissions(
        ctx.path().join("d1/f1.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let after = scan(ctx.path(), &cache);
    assert_eq!(after.get("d1/f1.txt").map(|e| e.mode), Some(0o600));
    assert_ne!(selection_digest(&before), selection_digest(&after));
}

#[test]
fn corrupted_cache_is_ignored_and_rebuilt() {
    let (ctx, store) = setup(10);
    let cache = store.path().join("c");
    let good = scan(ctx.path(), &cache);
    // Same length, wrong bytes: the checksum catches it.
    let mut bytes = std::fs::read(&cache).expect("read");
    for b in bytes.iter_mut().skip(40).take(100) {
        *b = 0xAA;
    }
    std::fs::write(&cache, &bytes).expect("write");
    let rescan = scan(ctx.path(), &cache);
    assert!(!rescan.stats.cache_loaded);
    assert_eq!(rescan.stats.hashed, 10);
    assert_eq!(good.entries, rescan.entries);
    // Garbage, and a directory where the file should be: still correct.
    std::fs::write(&cache, b"garbage").expect("write");
    assert_eq!(scan(ctx.path(), &cache).entries, good.entries);
    let blocked = store.path().join("dir");
    std::fs::create_dir(&blocked).expect("mkdir");
    let index = scan(ctx.path(), &blocked);
    assert_eq!(index.entries, good.entries);
    assert!(index.stats.cache_error.is_some());
}

#[test]
fn verify_rehashes_everything() {
    let (ctx, store) = setup(10);
    let cache = store.path().join("c");
    scan(ctx.path(), &cache);
    let index = Context::open(ctx.path(), None)
        .expect("open")
        .scan_verify(Some(&cache))
        .expect("scan");
    assert_eq!((index.stats.hashed, index.stats.reused), (10, 0));
}

#[test]
fn edit_of_an_ignored_file_changes_nothing() {
    let (ctx, store) = setup(10);
    write(ctx.path(), ".dockerignore", "secret.txt\n");
    write(ctx.path(), "secret.txt", "one");
    age(ctx.path());
    settle();
    let cache = store.path().join("c");
    let before = scan(ctx.path(), &cache);
    write(ctx.path(), "secret.txt", "two!");
    let after = scan(ctx.path(), &cache);
    assert_eq!(after.stats.hashed, 0);
    assert_eq!(selection_digest(&before), selection_digest(&after));
}

/// Performance sanity: a warm scan of 20,000 files. Prints the times; the bound
/// is loose because debug builds and CI machines vary (see
/// `examples/scan_bench.rs` for release numbers).
#[test]
fn warm_scan_of_20000_files() {
    let (ctx, store) = setup(20_000);
    let cache = store.path().join("c");
    let t = Instant::now();
    let cold = scan(ctx.path(), &cache);
    let cold_time = t.elapsed();
    let t = Instant::now();
    let warm = scan(ctx.path(), &cache);
    let warm_time = t.elapsed();
    println!("20000 files: cold scan {cold_time:?}, warm scan {warm_time:?}");
    assert_eq!(cold.stats.hashed, 20_000);
    assert_eq!(warm.stats.hashed, 0);
    assert!(warm_time < Duration::from_secs(5), "{warm_time:?}");
}
