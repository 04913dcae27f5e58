//! The image store on real files: blobs, tags, resolution, concurrency, crash
//! safety, fsck, prune, and skopeo reading it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use forge_cache::reference::Reference;
use forge_cache::store::{sha256, Store, CREATED_ANNOTATION, REF_NAME_ANNOTATION};
use forge_cache::{CacheError, Sha256Digest};
use oci_spec::image::{Descriptor, Digest, MediaType};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An image built by hand: its manifest descriptor and blobs.
struct TestImage {
    manifest: Descriptor,
    manifest_bytes: Vec<u8>,
    config: Sha256Digest,
    layer: Sha256Digest,
}

impl TestImage {
    fn digest(&self) -> Sha256Digest {
        sha256(&self.manifest_bytes)
    }
}

fn gzipped_tar(file_content: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(file_content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", file_content)
        .expect("tar entry");
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

fn diff_id(gz: &[u8]) -> Sha256Digest {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut tar)
        .expect("gunzip");
    sha256(&tar)
}

/// Writes a config, a one-file gzipped layer and an OCI manifest; `seed` makes
/// the image (and its ID) unique.
fn make_image(store: &Store, seed: &str) -> TestImage {
    let layer_bytes = gzipped_tar(seed.as_bytes());
    let layer = store.put_blob(&layer_bytes).expect("layer");
    let put = common::put_manifest(
        store,
        &serde_json::json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": ["SEED=".to_string() + seed], "Cmd": ["/bin/sh"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id(&layer_bytes).to_string()] },
            "history": [{ "created_by": "test" }]
        }),
        (
            &layer,
            layer_bytes.len(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
    );
    let (digest, manifest_bytes, config) = (put.manifest, put.manifest_bytes, put.config);
    let manifest = Descriptor::new(
        MediaType::ImageManifest,
        manifest_bytes.len() as u64,
        Digest::from_str(&digest.to_string()).expect("digest"),
    );
    TestImage {
        manifest,
        manifest_bytes,
        config,
        layer,
    }
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).expect("valid reference")
}

fn index_json(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(root.join("index.json")).expect("index.json"))
        .expect("index.json parses")
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

fn set_old(path: &Path) {
    let file = fs::File::options().write(true).open(path).expect("open");
    file.set_modified(SystemTime::now() - Duration::from_secs(24 * 3600))
        .expect("set mtime");
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn open_creates_an_oci_layout() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let store = Store::open(&root)?;
    assert_eq!(
        fs::read_to_string(root.join("oci-layout"))?,
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = index_json(&root);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"], serde_json::json!([]));
    assert!(root.join("blobs/sha256").is_dir());
    assert!(root.join("forge/v1/leases").is_dir());
    assert!(store.images()?.is_empty());
    // Opening again changes nothing.
    Store::open(&root)?;
    assert_eq!(index_json(&root), index);
    Ok(())
}

#[test]
fn blobs_round_trip_and_are_verified() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;

    let digest = store.put_blob(b"hello")?;
    assert_eq!(digest, sha256(b"hello"));
    assert!(store.has_blob(&digest));
    assert_eq!(
        store.blob_path(&digest),
        dir.path().join("blobs/sha256").join(digest.hex())
    );
    assert_eq!(store.read_blob(&digest)?, b"hello");
    let mut read = Vec::new();
    store.open_blob(&digest)?.read_to_end(&mut read)?;
    assert_eq!(read, b"hello");

    // Streaming, with and without the expected digest.
    let data = vec![7u8; 1 << 20];
    let expected = sha256(&data);
    assert_eq!(
        store.put_blob_from(&mut data.as_slice(), Some(&expected))?,
        (expected, data.len() as u64)
    );
    let wrong = sha256(b"something else");
    let err = store
        .put_blob_from(&mut &b"not it"[..], Some(&wrong))
        .expect_err("wrong digest");
    assert!(matches!(err, CacheError::DigestMismatch { .. }), "{err}");
    assert!(!store.has_blob(&wrong));
    assert!(!store.has_blob(&sha256(b"not it")));

    // A writer: nothing visible until commit; dropped uncommitted leaves nothing.
    let mut writer = store.blob_writer()?;
    writer.write_all(b"part 1, ")?;
    writer.write_all(b"part 2")?;
    assert_eq!(writer.size(), 14);
    assert!(!store.has_blob(&sha256(b"part 1, part 2")));
    let (d, size) = writer.commit(None)?;
    assert_eq!((d, size), (sha256(b"part 1, part 2"), 14));
    let mut abandoned = store.blob_writer()?;
    abandoned.write_all(b"never committed")?;
    drop(abandoned);
    assert!(dir_names(&dir.path().join("forge/v1/tmp")).is_empty());

    // Missing blob.
    let err = store.read_blob(&wrong).expect_err("missing");
    assert!(matches!(err, CacheError::BlobNotFound { .. }), "{err}");
    assert!(store.open_blob(&wrong).is_err());

    // Corrupt a blob on disk: reads fail naming the digest.
    fs::write(store.blob_path(&digest), b"jello")?;
    let err = store.read_blob(&digest).expect_err("corrupt");
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
    assert!(matches!(err, CacheError::DigestMismatch { .. }));
    let mut sink = Vec::new();
    let err = store
        .open_blob(&digest)?
        .read_to_end(&mut sink)
        .expect_err("corrupt stream");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains(&digest.to_string()), "{err}");

    // Putting the right content again heals it.
    store.put_blob(b"hello")?;
    assert_eq!(store.read_blob(&digest)?, b"hello");
    Ok(())
}

#[test]
fn tag_untag_and_resolve() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let ubuntu = make_image(&store, "ubuntu");
    let alpine = make_image(&store, "alpine");

    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    store.tag(&ubuntu.manifest, &reference("ubuntu"), Some(created))?;
    store.tag(&ubuntu.manifest, &reference("ubuntu:22.04"), None)?;
    store.tag(&alpine.manifest, &reference("ghcr.io/x/alpine:3"), None)?;

    // index.json: full references and the created annotation on the descriptor.
    let index = index_json(dir.path());
    let entries = index["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 3);
    assert_eq!(
        entries[0]["annotations"][REF_NAME_ANNOTATION],
        "docker.io/library/ubuntu:latest"
    );
    assert_eq!(
        entries[0]["annotations"][CREATED_ANNOTATION],
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(entries[0]["digest"], ubuntu.digest().to_string());
    assert_eq!(
        entries[0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert!(entries[1]["annotations"][CREATED_ANNOTATION].is_string());

    let images = store.images()?;
    let names: Vec<_> = images.iter().filter_map(|r| r.familiar_name()).collect();
    assert_eq!(
        names,
        ["ubuntu:latest", "ubuntu:22.04", "ghcr.io/x/alpine:3"]
    );
    assert_eq!(images[0].created, Some(created));
    assert_eq!(images[0].id, Some(ubuntu.config));
    assert_eq!(images[2].id, Some(alpine.config));
    assert!(images[1].created.is_some());

    // Resolve by every kind of name.
    let by = |q: &str| store.resolve(q).map(|r| r.digest);
    for q in [
        "ubuntu".to_string(),
        "ubuntu:latest".to_string(),
        "library/ubuntu".to_string(),
        "docker.io/library/ubuntu:latest".to_string(),
        "ubuntu:22.04".to_string(),
        ubuntu.config.short(),
        ubuntu.config.hex(),
        ubuntu.config.to_string(),
        format!("sha256:{}", &ubuntu.config.hex()[..20]),
        ubuntu.digest().to_string(),
        format!("ubuntu@{}", ubuntu.digest()),
    ] {
        assert_eq!(by(&q)?, ubuntu.digest(), "{q}");
    }
    assert_eq!(by("ghcr.io/x/alpine:3")?, alpine.digest());
    assert_eq!(by(&alpine.config.short())?, alpine.digest());
    for q in ["alpine", "ubuntu:20.04", "zzz", "sha256:", ""] {
        assert!(
            matches!(store.resolve(q), Err(CacheError::ImageNotFound { .. })),
            "{q}"
        );
    }

    // The manifest and config read back through oci-spec types.
    let record = store.resolve("ubuntu")?;
    let manifest = store.manifest(&record)?;
    assert_eq!(manifest.layers().len(), 1);
    assert_eq!(
        manifest.layers()[0].digest().to_string(),
        ubuntu.layer.to_string()
    );
    let config = store.config(&manifest)?;
    assert_eq!(config.rootfs().diff_ids().len(), 1);

    // Moving a tag replaces its entry.
    store.tag(&alpine.manifest, &reference("ubuntu:22.04"), None)?;
    assert_eq!(by("ubuntu:22.04")?, alpine.digest());
    assert_eq!(store.images()?.len(), 3);

    // Untag.
    assert!(store.untag(&reference("ubuntu:22.04"))?);
    assert!(!store.untag(&reference("ubuntu:22.04"))?);
    assert!(store.resolve("ubuntu:22.04").is_err());
    assert_eq!(store.images()?.len(), 2);

    // remove_manifest drops every tag of it.
    store.tag(&ubuntu.manifest, &reference("u2"), None)?;
    assert_eq!(store.remove_manifest(&ubuntu.digest())?, 2);
    assert_eq!(store.images()?.len(), 1);
    Ok(())
}

#[test]
fn tagging_refuses_incomplete_images_and_wrong_pins() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let image = make_image(&store, "x");
    fs::remove_file(store.blob_path(&image.layer))?;
    let err = store
        .tag(&image.manifest, &reference("x"), None)
        .expect_err("layer missing");
    assert!(
        matches!(err, CacheError::IncompleteImage { missing, .. } if missing == image.layer),
        "{err}"
    );
    let other = make_image(&store, "y");
    let pinned = reference(&format!("y@{}", image.digest()));
    assert!(store.tag(&other.manifest, &pinned, None).is_err());
    assert!(store.images()?.is_empty());
    Ok(())
}

#[test]
fn ambiguous_id_prefix_lists_candidates() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    // 17 images: two IDs share a first hex digit (pigeonhole).
    let mut by_first: std::collections::HashMap<char, Vec<TestImage>> = Default::default();
    for i in 0..17 {
        let image = make_image(&store, &format!("img{i}"));
        store.tag(&image.manifest, &reference(&format!("img{i}")), None)?;
        let first = image.config.hex().chars().next().expect("hex");
        by_first.entry(first).or_default().push(image);
    }
    let (first, images) = by_first
        .iter()
        .find(|(_, v)| v.len() >= 2)
        .expect("two IDs share a first digit");
    let err = store.resolve(&first.to_string()).expect_err("ambiguous");
    let CacheError::AmbiguousImage { candidates, .. } = &err else {
        panic!("expected ambiguity, got {err}");
    };
    for image in images {
        assert!(candidates.contains(&image.config.short()), "{candidates}");
    }
    // A longer prefix is unique.
    assert_eq!(
        store.resolve(&images[0].config.short())?.digest,
        images[0].digest()
    );
    Ok(())
}

#[test]
fn concurrent_taggers_lose_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    Store::open(&root)?;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let store = Store::open(&root).expect("open");
                for i in 0..5 {
                    let image = make_image(&store, &format!("t{t}-{i}"));
                    store
                        .tag(&image.manifest, &reference(&format!("app{t}:v{i}")), None)
                        .expect("tag");
                    // Readers never see a broken index meanwhile.
                    store.images().expect("images");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "thread panicked")?;
    }
    let store = Store::open(&root)?;
    let images = store.images()?;
    assert_eq!(images.len(), 40);
    for t in 0..8 {
        for i in 0..5 {
            store.resolve(&format!("app{t}:v{i}"))?;
        }
    }
    assert!(store.fsck(false)?.is_clean());
    Ok(())
}

#[test]
fn crash_leftovers_are_cleaned_and_fsck_is_clean() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let store = Store::open(root)?;
    let image = make_image(&store, "survivor");
    store.tag(&image.manifest, &reference("survivor"), None)?;
    let index_before = fs::read(root.join("index.json"))?;

    // What a `kill -9` mid-write leaves: a half-written blob temp and a
    // half-written index temp of a dead process, and an unowned old temp.
    let tmp = root.join("forge/v1/tmp");
    let dead = dead_pid();
    fs::write(tmp.join(format!("blob-{dead}-12345-0.tmp")), b"half a la")?;
    fs::write(
        tmp.join(format!("file-{dead}-12345-1.tmp")),
        b"{\"schemaVersion\": 2, \"manif",
    )?;
    fs::write(tmp.join("unowned.tmp"), b"?")?;
    set_old(&tmp.join("unowned.tmp"));
    // A live process's temp (ours, as a concurrent writer) must survive.
    let mut writer = store.blob_writer()?;
    writer.write_all(b"in flight")?;
    // A committed but never tagged blob (killed between commit and tag).
    let orphan = store.put_blob(b"orphan")?;

    let fsck = Store::open(root)?.fsck(false)?;
    assert!(fsck.is_clean(), "{fsck:?}");
    assert_eq!(
        dir_names(&tmp).len(),
        1,
        "only the live writer's temp remains"
    );
    assert_eq!(fs::read(root.join("index.json"))?, index_before);
    assert_eq!(
        Store::open(root)?.resolve("survivor")?.digest,
        image.digest()
    );
    let (d, _) = writer.commit(None)?;
    assert_eq!(store.read_blob(&d)?, b"in flight");
    assert!(store.has_blob(&orphan));
    Ok(())
}

#[test]
fn fsck_finds_and_repairs_missing_and_corrupt_blobs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let good = make_image(&store, "good");
    let missing = make_image(&store, "missing");
    let corrupt = make_image(&store, "corrupt");
    store.tag(&good.manifest, &reference("good"), None)?;
    store.tag(&missing.manifest, &reference("missing"), None)?;
    store.tag(&corrupt.manifest, &reference("corrupt"), None)?;
    assert!(store.fsck(false)?.is_clean());

    fs::remove_file(store.blob_path(&missing.layer))?;
    fs::write(store.blob_path(&corrupt.config), b"{\"tampered\": true}")?;
    let stray = dir.path().join("blobs/sha256/not-a-digest");
    fs::write(&stray, b"x")?;
    set_old(&stray);

    let report = store.fsck(false)?;
    assert!(!report.is_clean());
    assert_eq!(report.missing, [missing.layer]);
    assert_eq!(report.corrupt, [corrupt.config]);
    assert_eq!(report.stray, std::slice::from_ref(&stray));
    let mut broken: Vec<_> = report
        .broken
        .iter()
        .filter_map(|b| b.name.clone())
        .collect();
    broken.sort();
    assert_eq!(
        broken,
        [
            "docker.io/library/corrupt:latest",
            "docker.io/library/missing:latest"
        ]
    );
    assert!(report
        .broken
        .iter()
        .any(|b| b.reason.contains(&missing.layer.to_string())));
    assert!(!report.repaired);
    // Nothing changed without repair.
    assert_eq!(store.images()?.len(), 3);

    let repaired = store.fsck(true)?;
    assert!(repaired.repaired);
    assert!(!store.has_blob(&corrupt.config));
    assert!(!stray.exists());
    let names: Vec<_> = store
        .images()?
        .iter()
        .filter_map(|r| r.familiar_name())
        .collect();
    assert_eq!(names, ["good:latest"]);
    assert!(store.fsck(false)?.is_clean());

    // A manifest that is gone entirely: its entry is dangling.
    fs::remove_file(store.blob_path(&good.digest()))?;
    let report = store.fsck(true)?;
    assert_eq!(report.missing, [good.digest()]);
    assert!(store.images()?.is_empty());
    assert!(store.fsck(false)?.is_clean());
    Ok(())
}

#[test]
fn prune_keeps_what_images_and_live_leases_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let kept = make_image(&store, "kept");
    store.tag(&kept.manifest, &reference("kept"), None)?;
    let leased_image = make_image(&store, "leased"); // untagged, leased by manifest
    let leased_blob = store.put_blob(b"leased blob")?;
    let garbage = make_image(&store, "garbage");
    let garbage_blob = store.put_blob(b"garbage blob")?;
    let dead_blob = store.put_blob(b"protected by a dead process")?;
    let reused_blob = store.put_blob(b"protected by a reused pid")?;

    let lease = store.lease(&[leased_image.digest()])?;
    let mut lease2 = store.lease(&[])?;
    lease2.protect(&[leased_blob])?;
    let leases = dir.path().join("forge/v1/leases");
    let dead = dead_pid();
    fs::write(
        leases.join(format!("{dead}-1-0.json")),
        serde_json::to_vec(&serde_json::json!({
            "pid": dead, "start_time": 1, "digests": [dead_blob.to_string()]
        }))?,
    )?;
    // Our own pid but another start time: a previous owner of a reused pid.
    let me = std::process::id();
    fs::write(
        leases.join(format!("{me}-1-0.json")),
        serde_json::to_vec(&serde_json::json!({
            "pid": me, "start_time": 1, "digests": [reused_blob.to_string()]
        }))?,
    )?;
    assert_eq!(dir_names(&leases).len(), 4);

    // With the default grace period, fresh unreferenced blobs survive.
    let report = store.prune()?;
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(dir_names(&leases).len(), 2, "dead leases are removed");

    // Once old, they go.
    let mut expected_freed = 0;
    let mut expected_removed = vec![
        garbage.digest(),
        garbage.config,
        garbage.layer,
        garbage_blob,
        dead_blob,
        reused_blob,
    ];
    for d in &expected_removed {
        expected_freed += fs::metadata(store.blob_path(d))?.len();
    }
    for entry in fs::read_dir(dir.path().join("blobs/sha256"))? {
        set_old(&entry?.path());
    }
    let report = store.prune()?;
    let mut removed = report.removed.clone();
    removed.sort();
    expected_removed.sort();
    assert_eq!(removed, expected_removed);
    assert_eq!(report.bytes_freed, expected_freed);
    assert_eq!(report.kept, 7);
    for d in [kept.digest(), kept.config, kept.layer] {
        assert!(store.has_blob(&d));
    }
    for d in [
        leased_image.digest(),
        leased_image.config,
        leased_image.layer,
        leased_blob,
    ] {
        assert!(store.has_blob(&d));
    }
    assert!(store.fsck(false)?.is_clean());

    // Leases end with their scope; then their blobs go too.
    drop(lease);
    drop(lease2);
    assert!(dir_names(&leases).is_empty());
    let report = store.prune_with_grace(Duration::ZERO)?;
    assert_eq!(report.removed.len(), 4);
    assert_eq!(report.kept, 3);
    store.resolve("kept")?;
    Ok(())
}

#[test]
fn skopeo_reads_the_store() -> TestResult {
    if Command::new("skopeo").arg("--version").output().is_err() {
        println!("note: skopeo is not installed; skipping the skopeo check");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let store = Store::open(&root)?;
    let image = make_image(&store, "skopeo");
    store.tag(&image.manifest, &reference("test"), None)?;
    let other = make_image(&store, "other");
    store.tag(&other.manifest, &reference("localhost:5000/other:v1"), None)?;

    let location = |r: &str| format!("oci:{}:{r}", root.display());
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            &location("docker.io/library/test:latest"),
        ])
        .output()?;
    assert!(
        raw.status.success(),
        "skopeo inspect --raw: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    assert_eq!(raw.stdout, image.manifest_bytes);

    let inspect = Command::new("skopeo")
        .args(["inspect", &location("docker.io/library/test:latest")])
        .output()?;
    assert!(
        inspect.status.success(),
        "skopeo inspect: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert_eq!(info["Digest"], image.digest().to_string());
    assert_eq!(info["Layers"][0], image.layer.to_string());

    let config = Command::new("skopeo")
        .args([
            "inspect",
            "--config",
            "--raw",
            &location("localhost:5000/other:v1"),
        ])
        .output()?;
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
    assert_eq!(sha256(&config.stdout), other.config);
    Ok(())
}
