//! [`Store::step_image`]: finding a build step's image (referenced only by
//! the step cache, not by `index.json`) by its image ID or an ID prefix, on a
//! real store with hand-made images recorded as step-cache entries.

mod common;

use forge_cache::store::Store;
use forge_cache::{CacheError, Sha256Digest};

use common::{one_file_image, OneFileImage};

/// A step image stored by hand: manifest, config (its ID) and layer.
struct Image {
    manifest: Sha256Digest,
    id: Sha256Digest,
    layer: Sha256Digest,
}

/// An image of one plain-tar layer holding a file of pseudo-random bytes
/// (`seed` makes the image, and its ID, unique).
fn make_image(store: &Store, seed: u64) -> Image {
    let OneFileImage { put, layer, .. } = one_file_image(store, seed, 64);
    Image {
        manifest: put.manifest,
        id: put.config,
        layer,
    }
}

/// A step-cache key (any 64 hex digits).
fn key(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    (dir, store)
}

#[test]
fn a_step_image_is_found_by_id_prefix_and_manifest_digest() {
    let (_dir, store) = store();
    let a = make_image(&store, 1);
    let b = make_image(&store, 2);
    // Several steps with the same result: one image.
    store.step_cache_put(&key(1), &a.manifest).expect("entry");
    store.step_cache_put(&key(2), &a.manifest).expect("entry");
    store.step_cache_put(&key(3), &b.manifest).expect("entry");
    let found = Some((a.manifest, a.id));

    // Not in index.json: resolve does not see it.
    assert!(matches!(
        store.resolve(&a.id.to_string()),
        Err(CacheError::ImageNotFound { .. })
    ));
    assert_eq!(store.step_image(&a.id.to_string()).expect("full ID"), found);
    assert_eq!(store.step_image(&a.id.hex()).expect("hex"), found);
    assert_eq!(store.step_image(&a.id.short()).expect("short"), found);
    assert_eq!(
        store
            .step_image(&format!("sha256:{}", a.id.short()))
            .expect("sha256: short"),
        found
    );
    assert_eq!(
        store.step_image(&a.manifest.to_string()).expect("manifest"),
        found
    );
    assert_eq!(
        store.step_image(&b.id.short()).expect("b"),
        Some((b.manifest, b.id))
    );

    // Neither an ID nor a prefix of one: no match, no error.
    let zeros = format!("sha256:{}", "0".repeat(64));
    for query in [
        zeros.as_str(),
        "",
        "sha256:",
        "xyz",
        "ABCDEF",
        &format!("SHA256:{}", a.id.hex()),
        &format!("{}0", a.id.hex()),
        "base:latest",
    ] {
        assert_eq!(store.step_image(query).expect(query), None, "{query}");
    }
}

#[test]
fn incomplete_entries_are_skipped_and_an_id_counts_once() {
    let (_dir, store) = store();
    let a = make_image(&store, 1);
    store.step_cache_put(&key(1), &a.manifest).expect("entry");
    // A second manifest of the same config (its layer's media type differs):
    // the same image ID, so no ambiguity.
    let config_len = store.read_blob(&a.id).expect("config").len();
    let layer_len = store.read_blob(&a.layer).expect("layer").len();
    let other = store
        .put_blob(
            &serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": a.id.to_string(),
                    "size": config_len
                },
                "layers": [{
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar",
                    "digest": a.layer.to_string(),
                    "size": layer_len
                }]
            }))
            .expect("json"),
        )
        .expect("manifest");
    store.step_cache_put(&key(2), &other).expect("entry");
    let (_, id) = store
        .step_image(&a.id.short())
        .expect("one ID")
        .expect("found");
    assert_eq!(id, a.id);

    // A step image whose layer is gone is skipped, as a cache lookup would.
    let c = make_image(&store, 3);
    store.step_cache_put(&key(3), &c.manifest).expect("entry");
    assert!(store.step_image(&c.id.to_string()).expect("c").is_some());
    std::fs::remove_file(store.blob_path(&c.layer)).expect("remove the layer");
    assert_eq!(store.step_image(&c.id.to_string()).expect("c"), None);
    // An entry naming garbage is skipped too.
    std::fs::write(store.root().join("forge/v1/cache").join(key(4)), "junk\n")
        .expect("write entry");
    assert_eq!(
        store.step_image(&a.id.to_string()).expect("a").map(|f| f.1),
        Some(a.id)
    );
}

#[test]
fn an_ambiguous_prefix_lists_the_candidates() {
    let (_dir, store) = store();
    // 17 images: two IDs share a first hex digit (pigeonhole).
    let mut by_first: std::collections::HashMap<char, Vec<Image>> = Default::default();
    for n in 0..17u8 {
        let image = make_image(&store, u64::from(n));
        store
            .step_cache_put(&key(n), &image.manifest)
            .expect("entry");
        let first = image.id.hex().chars().next().expect("hex");
        by_first.entry(first).or_default().push(image);
    }
    let (first, images) = by_first
        .iter()
        .find(|(_, v)| v.len() >= 2)
        .expect("two IDs share a first digit");
    let query = format!("sha256:{first}");
    let err = store.step_image(&query).expect_err("ambiguous");
    let CacheError::AmbiguousImage { prefix, candidates } = &err else {
        panic!("expected ambiguity, got {err}");
    };
    assert_eq!(prefix, &query);
    assert_eq!(candidates.split(", ").count(), images.len(), "{candidates}");
    for image in images {
        assert!(candidates.contains(&image.id.short()), "{candidates}");
    }
    // A longer prefix is unique.
    assert_eq!(
        store.step_image(&images[0].id.short()).expect("unique"),
        Some((images[0].manifest, images[0].id))
    );
}
