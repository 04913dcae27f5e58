//! The step cache's size cap ([`Store::enforce_cache_cap`]) on a real store:
//! hand-made images of known sizes, each a manifest, a config and one plain-tar
//! layer (so its diff_id is its blob digest) with an extracted snapshot,
//! recorded as step-cache entries whose last use is set by hand.

mod common;

use std::fs;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use forge_cache::reference::Reference;
use forge_cache::step_cache::CacheCapReport;
use forge_cache::store::Store;
use forge_cache::Sha256Digest;
use oci_spec::image::{Descriptor, Digest, MediaType};

use common::{one_file_image, OneFileImage};

const HOUR: Duration = Duration::from_secs(3600);

/// An image stored by hand.
struct Image {
    manifest: Sha256Digest,
    manifest_size: u64,
    /// Manifest, config, layer.
    blobs: [Sha256Digest; 3],
    diff_id: Sha256Digest,
    /// What it takes on disk: its three blobs and its snapshot's one file.
    size: u64,
}

/// An image whose layer holds one file of `payload` pseudo-random bytes
/// (`seed` makes it unique), with the layer's snapshot extracted.
fn make_image(store: &Store, seed: u64, payload: usize) -> Image {
    let OneFileImage {
        put,
        layer,
        layer_len,
    } = one_file_image(store, seed, payload);
    store
        .snapshots()
        .ensure(store, &layer, &layer)
        .expect("snapshot");
    Image {
        manifest: put.manifest,
        manifest_size: put.manifest_bytes.len() as u64,
        blobs: [put.manifest, put.config, layer],
        diff_id: layer,
        size: (put.manifest_bytes.len() + put.config_len + layer_len + payload) as u64,
    }
}

/// A step-cache key (any 64 hex digits).
fn key(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// Records `image` under `key(n)`, last used `age` ago.
fn put_entry(store: &Store, n: u8, image: &Image, age: Duration) {
    store
        .step_cache_put(&key(n), &image.manifest)
        .expect("cache entry");
    set_age(store, n, age);
}

fn entry_path(store: &Store, n: u8) -> std::path::PathBuf {
    store.root().join("forge/v1/cache").join(key(n))
}

fn set_age(store: &Store, n: u8, age: Duration) {
    let file = fs::File::options()
        .write(true)
        .open(entry_path(store, n))
        .expect("open entry");
    file.set_modified(SystemTime::now() - age)
        .expect("set mtime");
}

fn hits(store: &Store, n: u8) -> bool {
    store.step_cache_get(&key(n)).expect("lookup").is_some()
}

/// Whether every blob and the snapshot of `image` are on disk.
fn all_present(store: &Store, image: &Image) -> bool {
    image.blobs.iter().all(|b| store.has_blob(b)) && store.snapshots().contains(&image.diff_id)
}

/// Whether none of them is.
fn all_gone(store: &Store, image: &Image) -> bool {
    image.blobs.iter().all(|b| !store.has_blob(b)) && !store.snapshots().contains(&image.diff_id)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    (dir, store)
}

#[test]
fn under_the_cap_nothing_is_removed_and_shared_images_count_once() {
    let (_dir, store) = store();
    let a = make_image(&store, 1, 10_000);
    let b = make_image(&store, 2, 20_000);
    put_entry(&store, 1, &a, 3 * HOUR);
    // Two steps with the same result: one image, counted once.
    put_entry(&store, 2, &b, 2 * HOUR);
    put_entry(&store, 3, &b, HOUR);

    let report = store
        .enforce_cache_cap(a.size + b.size, Duration::ZERO)
        .expect("cap");
    assert_eq!(
        report,
        CacheCapReport {
            max_size: a.size + b.size,
            size_before: a.size + b.size,
            size_after: a.size + b.size,
            entries_kept: 3,
            ..CacheCapReport::default()
        }
    );
    assert!(!report.over_cap());
    assert!(hits(&store, 1) && hits(&store, 2) && hits(&store, 3));
    assert!(all_present(&store, &a) && all_present(&store, &b));
}

#[test]
fn least_recently_used_entries_go_first_until_under_the_cap() {
    let (_dir, store) = store();
    let a = make_image(&store, 1, 30_000);
    let b = make_image(&store, 2, 30_000);
    let c = make_image(&store, 3, 30_000);
    // Keys in the opposite order of use, so the order is not the names'.
    put_entry(&store, 3, &a, 3 * HOUR);
    put_entry(&store, 2, &b, 2 * HOUR);
    put_entry(&store, 1, &c, HOUR);

    // Room for one image and a half: the two oldest go.
    let cap = c.size + c.size / 2;
    let report = store.enforce_cache_cap(cap, Duration::ZERO).expect("cap");
    assert_eq!(report.size_before, a.size + b.size + c.size);
    assert_eq!(report.size_after, c.size);
    assert_eq!((report.entries_removed, report.entries_kept), (2, 1));
    assert_eq!(report.snapshots_removed, 2);
    let mut removed = report.blobs.removed.clone();
    removed.sort();
    let mut expected: Vec<Sha256Digest> = a.blobs.iter().chain(&b.blobs).copied().collect();
    expected.sort();
    assert_eq!(removed, expected);
    assert!(!report.over_cap());

    assert!(!entry_path(&store, 3).exists() && !entry_path(&store, 2).exists());
    assert!(hits(&store, 1));
    assert!(all_gone(&store, &a) && all_gone(&store, &b));
    assert!(all_present(&store, &c));
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn a_hit_makes_an_entry_the_most_recently_used() {
    let (_dir, store) = store();
    let a = make_image(&store, 1, 30_000);
    let b = make_image(&store, 2, 30_000);
    put_entry(&store, 1, &a, 2 * HOUR);
    put_entry(&store, 2, &b, HOUR);
    // A build hits `a`'s entry: now `b` is the least recently used.
    assert!(hits(&store, 1));

    let report = store
        .enforce_cache_cap(a.size, Duration::ZERO)
        .expect("cap");
    assert_eq!(report.entries_removed, 1);
    assert!(hits(&store, 1) && !hits(&store, 2));
    assert!(all_present(&store, &a) && all_gone(&store, &b));
}

#[test]
fn tagged_images_survive_and_do_not_count() {
    let (_dir, store) = store();
    let tagged = make_image(&store, 1, 40_000);
    let cached = make_image(&store, 2, 10_000);
    let descriptor = Descriptor::new(
        MediaType::ImageManifest,
        tagged.manifest_size,
        Digest::from_str(&tagged.manifest.to_string()).expect("digest"),
    );
    store
        .tag(
            &descriptor,
            &Reference::parse("app:1").expect("reference"),
            None,
        )
        .expect("tag");
    put_entry(&store, 1, &tagged, 2 * HOUR);
    put_entry(&store, 2, &cached, HOUR);

    // A cap of nothing: every entry goes, and only what the cache alone
    // kept alive with them.
    let report = store.enforce_cache_cap(0, Duration::ZERO).expect("cap");
    assert_eq!(report.size_before, cached.size);
    assert_eq!(report.size_after, 0);
    assert_eq!(report.entries_removed, 2);
    assert!(!hits(&store, 1) && !hits(&store, 2));
    assert!(all_present(&store, &tagged), "the tagged image lost a blob");
    assert!(all_gone(&store, &cached));
    assert_eq!(
        store.resolve("app:1").expect("still tagged").digest,
        tagged.manifest
    );
    assert!(store.fsck(false).expect("fsck").is_clean());
}

#[test]
fn what_was_used_or_made_within_the_grace_period_stays() {
    let (_dir, store) = store();
    let old = make_image(&store, 1, 30_000);
    let fresh = make_image(&store, 2, 30_000);
    put_entry(&store, 1, &old, 2 * HOUR);
    put_entry(&store, 2, &fresh, Duration::ZERO);

    let report = store.enforce_cache_cap(0, HOUR).expect("cap");
    // The old entry goes; the fresh one (a running build's) stays, so the
    // cache is still over the cap.
    assert_eq!((report.entries_removed, report.entries_kept), (1, 1));
    assert!(report.over_cap());
    assert_eq!(report.size_after, fresh.size);
    assert!(!hits(&store, 1) && hits(&store, 2));
    // The old entry's blobs and snapshot were written a moment ago: within
    // the grace period, they stay until a later collection.
    assert!(report.blobs.removed.is_empty());
    assert_eq!(report.snapshots_removed, 0);
    assert!(all_present(&store, &old) && all_present(&store, &fresh));

    // Once out of the grace period, they go; the fresh entry's do not.
    let report = store.prune_with_grace(Duration::ZERO).expect("prune");
    assert_eq!(report.removed.len(), 3);
    assert!(old.blobs.iter().all(|b| !store.has_blob(b)));
    assert!(all_present(&store, &fresh));
}
