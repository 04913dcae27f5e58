//! Layer snapshots: overlay-form extraction checked against flattening, through
//! a real overlayfs mount; digest checks, link collisions, concurrency, adopt,
//! and the hostile-tar refusals in overlay mode.
//!
//! Runs as root in CI (mknod, trusted xattrs, mount); the tests that need root
//! say so and return when it is missing.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use common::{assert_sentinel_intact, describe_tree, end, is_root, noise, raw_entry};
use forge_cache::layer::{
    apply_layer, compress_tar, extract_layer, write_changes_layer, write_dir_layer, ApplyLimits,
    Change, Compression, ExtractOptions, LayerError, LayerInfo, LayerOptions, OverlayXattrs,
    WhiteoutMode,
};
use forge_cache::store::{sha256, Store};
use forge_cache::{CacheError, Sha256Digest};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

fn opts(compression: Compression) -> LayerOptions {
    LayerOptions {
        compression,
        level: None,
        threads: 2,
        source_date_epoch: 0,
        ..LayerOptions::default()
    }
}

/// Writes a layer into the store as a blob.
fn store_layer(
    store: &Store,
    write: impl FnOnce(&mut dyn Write) -> Result<LayerInfo, LayerError>,
) -> LayerInfo {
    let mut writer = store.blob_writer().expect("blob writer");
    let info = write(&mut writer).expect("write layer");
    writer.commit(Some(&info.digest)).expect("commit");
    info
}

/// A read-only overlay mount, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(lower_top_first: &[PathBuf], target: &Path, extra: &str) -> Mount {
        let lower: Vec<String> = lower_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let data = format!("ro,lowerdir={}{extra}", lower.join(":"));
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &data])
            .arg(target)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o {data} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn whiteout(p: &Path) {
    mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).expect("mknod 0:0");
}

/// A plain tar of hand-made entries (any order, any names the tar crate takes).
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> RawTar {
        RawTar(tar::Builder::new(Vec::new()))
    }

    fn entry(&mut self, name: &str, kind: tar::EntryType, mode: u32, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if !link.is_empty() {
            h.set_link_name(link).expect("link name");
        }
        self.0.append_data(&mut h, name, data).expect("append");
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, tar::EntryType::Directory, 0o755, "", b"");
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, tar::EntryType::Regular, 0o644, "", data);
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("finish tar")
    }
}

/// The layers of the main test, bottom first, stored as blobs: a base tree,
/// a change layer with deletions and an opaque directory (zstd), a hand-made
/// tar whose whiteouts meet same-layer entries in every order (plain), and an
/// overlay upper dir as the build driver makes them (gzip).
fn make_layers(store: &Store, work: &Path) -> Vec<LayerInfo> {
    let mut layers = Vec::new();

    let base = work.join("base");
    for d in [
        "etc",
        "usr/bin",
        "usr/lib",
        "opq/old-sub",
        "gone-dir/sub",
        "keep",
        "re/sub",
        "late",
        "x/y",
        "private",
        "deep/a/b",
    ] {
        fs::create_dir_all(base.join(d)).expect("mkdir");
    }
    fs::write(base.join("etc/hostname"), b"base\n").expect("write");
    fs::write(base.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("write");
    fs::write(base.join("usr/bin/tool"), noise(1, 100_000)).expect("write");
    fs::set_permissions(
        base.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    xattr::set(base.join("usr/bin/tool"), "user.forge.test", b"1").expect("xattr");
    fs::write(base.join("usr/lib/libx.so"), noise(2, 5000)).expect("write");
    symlink("libx.so", base.join("usr/lib/liby.so")).expect("symlink");
    fs::write(base.join("opq/old"), b"hidden").expect("write");
    fs::write(base.join("opq/old-sub/y"), b"hidden").expect("write");
    fs::write(base.join("gone-file"), b"deleted").expect("write");
    fs::write(base.join("gone-dir/sub/x"), b"deleted").expect("write");
    fs::write(base.join("keep/file"), b"stays").expect("write");
    fs::hard_link(base.join("keep/file"), base.join("keep/hard")).expect("hardlink");
    fs::write(base.join("re/old"), b"lower").expect("write");
    fs::write(base.join("re/sub/old"), b"lower").expect("write");
    fs::write(base.join("late/old"), b"lower").expect("write");
    fs::write(base.join("x/y/old"), b"lower").expect("write");
    fs::write(base.join("deep/a/b/c"), b"lower").expect("write");
    fs::write(base.join("private/secret"), b"s").expect("write");
    std::os::unix::fs::chown(base.join("private/secret"), Some(1000), Some(1000)).expect("chown");
    std::os::unix::fs::chown(base.join("private"), Some(1000), Some(1000)).expect("chown");
    fs::set_permissions(base.join("private"), fs::Permissions::from_mode(0o700)).expect("chmod");
    nix::unistd::mkfifo(&base.join("fifo"), Mode::from_bits_truncate(0o644)).expect("mkfifo");
    layers.push(store_layer(store, |out| {
        write_dir_layer(&base, &opts(Compression::Gzip), out)
    }));

    // A change layer: deletions, an opaque dir with new content, a modified file.
    let r1 = work.join("r1");
    fs::create_dir_all(r1.join("opq/old-sub")).expect("mkdir");
    fs::create_dir_all(r1.join("etc")).expect("mkdir");
    fs::create_dir_all(r1.join("keep")).expect("mkdir");
    fs::set_permissions(r1.join("keep"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::write(r1.join("opq/new"), b"fresh").expect("write");
    fs::write(r1.join("opq/old-sub/z"), b"fresh").expect("write");
    fs::write(r1.join("etc/hostname"), b"changed\n").expect("write");
    fs::write(r1.join("added"), b"new file").expect("write");
    let changes = vec![
        Change::Delete("gone-file".into()),
        Change::Delete("gone-dir".into()),
        Change::Opaque("opq".into()),
        Change::Upsert("opq/new".into()),
        Change::Upsert("opq/old-sub/z".into()),
        Change::Upsert("etc/hostname".into()),
        Change::Upsert("added".into()),
        Change::Upsert("keep".into()),
    ];
    layers.push(store_layer(store, |out| {
        write_changes_layer(&r1, &changes, &opts(Compression::Zstd), out)
    }));

    // Whiteouts and same-layer entries in every order.
    let mut t = RawTar::new();
    // Deleted, then made again: only this layer's content.
    t.file(".wh.re", b"");
    t.dir("re/");
    t.file("re/new", b"recreated");
    // Made, then deleted: the whiteout only hides the lower content.
    t.dir("late/");
    t.file("late/new", b"this layer");
    t.file(".wh.late", b"");
    // Filled through implicit parents, then deleted.
    t.file("x/y/file", b"this layer");
    t.file("x/.wh.y", b"");
    // A whiteout, then a file of that name under an implicit parent.
    t.file("deep/a/.wh.b", b"");
    t.file("deep/a/b/new", b"this layer");
    // A deleted file made again as a file.
    t.file("etc/.wh.passwd", b"");
    t.file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n");
    // Whiteout of something no lower layer has; a hardlink to a fresh file.
    t.file(".wh.never-existed", b"");
    t.file("h1", b"linked");
    t.entry("h2", tar::EntryType::Link, 0o644, "h1", b"");
    let plain = t.finish();
    layers.push(store_layer(store, |out| {
        compress_tar(&mut &plain[..], &opts(Compression::None), out)
    }));

    // An overlay upper dir, as the build driver turns into a layer.
    let upper = work.join("upper");
    fs::create_dir_all(upper.join("opq/deeper")).expect("mkdir");
    fs::create_dir_all(upper.join("usr/lib")).expect("mkdir");
    xattr::set(upper.join("opq/deeper"), "trusted.overlay.opaque", b"y").expect("opaque");
    fs::write(upper.join("opq/deeper/f"), b"deeper").expect("write");
    whiteout(&upper.join("usr/lib/liby.so"));
    whiteout(&upper.join("added"));
    fs::write(upper.join("usr/lib/libz.so"), b"z").expect("write");
    layers.push(store_layer(store, |out| {
        write_dir_layer(&upper, &opts(Compression::Gzip), out)
    }));
    layers
}

/// The temp entries of snapshot making left in the store's temp dir.
fn snapshot_temps(store: &Store) -> Vec<String> {
    fs::read_dir(store.tmp_dir())
        .expect("tmp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot"))
        .collect()
}

fn check_overlay_equals_flattened(xattrs: OverlayXattrs, mount_extra: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let layers = make_layers(&store, work.path());

    let flat = work.path().join("flat");
    fs::create_dir(&flat).expect("mkdir");
    for layer in &layers {
        let mut blob = store.open_blob(&layer.digest).expect("blob");
        apply_layer(&mut blob, &flat, &ApplyLimits::default()).expect("apply");
    }

    let snapshots = store.snapshots().with_xattrs(xattrs);
    let mut links = Vec::new();
    for layer in &layers {
        let link = snapshots
            .ensure(&store, &layer.diff_id, &layer.digest)
            .expect("ensure");
        assert_eq!(link, snapshots.link(&layer.diff_id));
        assert!(link.is_absolute());
        assert_eq!(link.file_name().expect("name").len(), 16, "short link name");
        assert_eq!(
            fs::read_link(&link).expect("readlink"),
            Path::new("..").join(layer.diff_id.hex())
        );
        assert!(snapshots.contains(&layer.diff_id));
        links.push(link);
    }
    assert!(snapshot_temps(&store).is_empty());
    let mut want_list: Vec<Sha256Digest> = layers.iter().map(|l| l.diff_id).collect();
    want_list.sort();
    assert_eq!(snapshots.list().expect("list"), want_list);

    // Overlay form on disk.
    let s1 = snapshots.path(&layers[1].diff_id);
    let gone = fs::symlink_metadata(s1.join("gone-file")).expect("whiteout");
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(!s1.join(".wh.gone-file").exists());
    assert_eq!(
        xattr::get(s1.join("opq"), xattrs.opaque()).expect("getxattr"),
        Some(b"y".to_vec())
    );
    let s2 = snapshots.path(&layers[2].diff_id);
    for opaque in ["re", "late", "x/y", "deep/a/b"] {
        assert_eq!(
            xattr::get(s2.join(opaque), xattrs.opaque()).expect("getxattr"),
            Some(b"y".to_vec()),
            "{opaque} is opaque"
        );
    }
    assert!(fs::symlink_metadata(s2.join("never-existed"))
        .expect("whiteout")
        .file_type()
        .is_char_device());

    // The merged view is the flattened tree.
    let merged = work.path().join("merged");
    fs::create_dir(&merged).expect("mkdir");
    let top_first: Vec<PathBuf> = links.iter().rev().cloned().collect();
    let got = {
        let _mount = Mount::new(&top_first, &merged, mount_extra);
        describe_tree(&merged)
    };
    let want = describe_tree(&flat);
    assert_eq!(got, want);
    // And the flattened tree is what the layers mean.
    assert!(!flat.join("gone-file").exists() && !flat.join("gone-dir").exists());
    assert!(!flat.join("opq/old").exists() && !flat.join("opq/old-sub/y").exists());
    assert_eq!(
        fs::read(flat.join("opq/deeper/f")).expect("read"),
        b"deeper"
    );
    assert!(!flat.join("re/old").exists() && !flat.join("re/sub").exists());
    assert_eq!(fs::read(flat.join("re/new")).expect("read"), b"recreated");
    assert!(!flat.join("late/old").exists());
    assert_eq!(
        fs::read(flat.join("late/new")).expect("read"),
        b"this layer"
    );
    assert!(!flat.join("x/y/old").exists());
    assert_eq!(
        fs::read(flat.join("x/y/file")).expect("read"),
        b"this layer"
    );
    assert!(!flat.join("deep/a/b/c").exists());
    assert_eq!(
        fs::read(flat.join("deep/a/b/new")).expect("read"),
        b"this layer"
    );
    assert!(fs::read(flat.join("etc/passwd"))
        .expect("read")
        .ends_with(b"bash\n"));
    assert_eq!(
        fs::read(flat.join("etc/hostname")).expect("read"),
        b"changed\n"
    );
    assert!(!flat.join("added").exists() && !flat.join("usr/lib/liby.so").exists());
    assert!(want["keep"].starts_with("mode=40750"), "{}", want["keep"]);
    assert!(want["keep/hard"].contains("linkgroup=keep/file"));
    assert!(want["h2"].contains("linkgroup=h1"));
    assert!(want["usr/bin/tool"].contains("xattr user.forge.test"));
    assert!(want["usr/bin/tool"].starts_with("mode=104755"));
    assert!(want["private/secret"].contains("uid=1000 gid=1000"));
    assert!(want.contains_key("fifo"));
}

#[test]
fn overlay_of_snapshots_equals_flattened_layers() {
    if !is_root() {
        return;
    }
    check_overlay_equals_flattened(OverlayXattrs::Trusted, "");
}

#[test]
fn user_xattr_snapshots_work_with_userxattr_mounts() {
    if !is_root() {
        return;
    }
    check_overlay_equals_flattened(OverlayXattrs::User, ",userxattr");
}

/// A small gzip layer with a deletion, stored; (info, its source dir).
fn small_layer(store: &Store, work: &Path, files: usize) -> LayerInfo {
    let src = work.join(format!("src-{files}"));
    fs::create_dir_all(src.join("d")).expect("mkdir");
    for i in 0..files {
        fs::write(src.join(format!("d/f{i}")), noise(i as u64 + 7, 20_000)).expect("write");
    }
    fs::write(src.join(".wh.deleted"), b"").expect("write");
    store_layer(store, |out| {
        write_dir_layer(&src, &opts(Compression::Gzip), out)
    })
}

#[test]
fn digest_mismatches_are_refused_and_leave_nothing() {
    if !is_root() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let layer = small_layer(&store, work.path(), 3);
    let snapshots = store.snapshots();

    // The blob is fine but the diff_id is another layer's.
    let wrong = sha256(b"not this layer");
    let err = snapshots
        .ensure(&store, &wrong, &layer.digest)
        .expect_err("wrong diff_id");
    match &err {
        CacheError::DigestMismatch { digest, actual } => {
            assert_eq!(*digest, wrong);
            assert_eq!(*actual, layer.diff_id);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!snapshots.path(&wrong).exists());
    assert!(fs::symlink_metadata(snapshots.link(&wrong)).is_err());
    assert!(snapshots.list().expect("list").is_empty());
    assert!(snapshot_temps(&store).is_empty());

    // A corrupt blob (a byte of file content changed in a plain tar).
    let mut t = RawTar::new();
    t.file("data", &noise(3, 10_000));
    let tar_bytes = t.finish();
    let diff_id = sha256(&tar_bytes);
    let blob = store.put_blob(&tar_bytes).expect("put");
    let path = store.blob_path(&blob);
    let mut bytes = fs::read(&path).expect("read");
    bytes[2000] ^= 0xff;
    fs::write(&path, &bytes).expect("corrupt");
    let err = snapshots
        .ensure(&store, &diff_id, &blob)
        .expect_err("corrupt blob");
    assert!(
        matches!(&err, CacheError::DigestMismatch { digest, .. } if *digest == blob),
        "{err}"
    );
    assert!(!snapshots.path(&diff_id).exists());
    assert!(snapshot_temps(&store).is_empty());

    // A missing blob.
    let err = snapshots
        .ensure(&store, &diff_id, &sha256(b"absent"))
        .expect_err("missing blob");
    assert!(matches!(err, CacheError::BlobNotFound { .. }), "{err}");
}

#[test]
fn link_prefix_collisions_are_refused() {
    if !is_root() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let layer = small_layer(&store, work.path(), 2);
    let snapshots = store.snapshots();
    let link = snapshots
        .ensure(&store, &layer.diff_id, &layer.digest)
        .expect("ensure");

    // Another diff_id with the same first 16 hex digits.
    let mut bytes = *layer.diff_id.as_bytes();
    bytes[31] ^= 1;
    let twin = Sha256Digest::from_bytes(bytes);
    assert_eq!(snapshots.link(&twin), link);
    let dir = store.tmp_dir().join(Store::temp_name("upper"));
    fs::create_dir(&dir).expect("mkdir");
    let err = snapshots.adopt(&dir, &twin).expect_err("collision");
    assert!(err.to_string().contains("same 16 hex digits"), "{err}");
    assert_eq!(
        fs::read_link(&link).expect("readlink"),
        Path::new("..").join(layer.diff_id.hex()),
        "the first layer's link is untouched"
    );
    // ensure refuses too (the twin's snapshot exists now, without a link).
    assert!(snapshots.ensure(&store, &twin, &layer.digest).is_err());

    // A link whose snapshot is gone (a crash while removing) is stale: replaced.
    fs::remove_dir_all(snapshots.path(&layer.diff_id)).expect("rm");
    let dir = store.tmp_dir().join(Store::temp_name("upper"));
    fs::create_dir(&dir).expect("mkdir");
    assert_eq!(snapshots.adopt(&dir, &twin).expect("adopt"), link);
    assert!(!dir.exists(), "the twin existed: the new dir is discarded");
    assert_eq!(
        fs::read_link(&link).expect("readlink"),
        Path::new("..").join(twin.hex())
    );

    // Something that is not a symlink where the link goes.
    let mut bytes = *layer.diff_id.as_bytes();
    bytes[0] ^= 1;
    let other = Sha256Digest::from_bytes(bytes);
    fs::write(snapshots.link(&other), b"junk").expect("write");
    let dir = store.tmp_dir().join(Store::temp_name("upper"));
    fs::create_dir(&dir).expect("mkdir");
    assert!(snapshots.adopt(&dir, &other).is_err());
}

#[test]
fn concurrent_ensure_of_one_layer() {
    if !is_root() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let layer = small_layer(&store, work.path(), 300);
    let flat = work.path().join("flat");
    fs::create_dir(&flat).expect("mkdir");
    let mut blob = store.open_blob(&layer.digest).expect("blob");
    apply_layer(&mut blob, &flat, &ApplyLimits::default()).expect("apply");

    for round in 0..3 {
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let results: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = Arc::clone(&barrier);
                let store = store.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    store
                        .snapshots()
                        .ensure(&store, &layer.diff_id, &layer.digest)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let link = store.snapshots().link(&layer.diff_id);
        for r in results {
            assert_eq!(r.expect("ensure"), link, "round {round}");
        }
        assert!(snapshot_temps(&store).is_empty(), "losers cleaned up");
        let snap = store.snapshots().path(&layer.diff_id);
        let mut got = describe_tree(&snap);
        assert!(fs::symlink_metadata(snap.join("deleted"))
            .expect("whiteout")
            .file_type()
            .is_char_device());
        got.remove("deleted");
        assert_eq!(got, describe_tree(&flat));
        assert_eq!(store.snapshots().list().expect("list"), [layer.diff_id]);
        assert!(store.snapshots().remove(&layer.diff_id).expect("remove"));
    }
}

#[test]
fn adopt_moves_an_upper_dir_in_or_discards_it() {
    if !is_root() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let upper = store.tmp_dir().join(Store::temp_name("run"));
    fs::create_dir_all(upper.join("opq")).expect("mkdir");
    xattr::set(upper.join("opq"), "trusted.overlay.opaque", b"y").expect("opaque");
    fs::write(upper.join("opq/f"), b"upper").expect("write");
    whiteout(&upper.join("gone"));
    let mut out = Vec::new();
    let info = write_dir_layer(&upper, &opts(Compression::Gzip), &mut out).expect("layer");

    let snapshots = store.snapshots();
    let link = snapshots.adopt(&upper, &info.diff_id).expect("adopt");
    assert!(!upper.exists(), "moved, not copied");
    let snap = snapshots.path(&info.diff_id);
    assert_eq!(fs::canonicalize(&link).expect("resolve"), snap);
    assert_eq!(fs::read(snap.join("opq/f")).expect("read"), b"upper");
    assert!(fs::symlink_metadata(snap.join("gone"))
        .expect("whiteout")
        .file_type()
        .is_char_device());

    // A second copy of the same layer is discarded; the first stays.
    let again = store.tmp_dir().join(Store::temp_name("run"));
    fs::create_dir_all(&again).expect("mkdir");
    fs::write(again.join("other"), b"x").expect("write");
    assert_eq!(snapshots.adopt(&again, &info.diff_id).expect("adopt"), link);
    assert!(!again.exists());
    assert!(!snap.join("other").exists());

    // ensure of an adopted layer needs no blob.
    assert_eq!(
        snapshots
            .ensure(&store, &info.diff_id, &sha256(b"no such blob"))
            .expect("ensure"),
        link
    );

    assert_eq!(snapshots.list().expect("list"), [info.diff_id]);
    assert!(snapshots.remove(&info.diff_id).expect("remove"));
    assert!(!snap.exists() && fs::symlink_metadata(&link).is_err());
    let marker = snapshots.dir().join("volatile").join(info.diff_id.hex());
    assert!(!marker.exists(), "removed with its snapshot");
    assert!(snapshots.list().expect("list").is_empty());
    assert!(!snapshots.remove(&info.diff_id).expect("remove again"));
    assert!(snapshot_temps(&store).is_empty());
}

// Hostile layers, in overlay mode.

#[test]
fn hostile_layers_are_refused_in_overlay_mode() {
    if !is_root() {
        return;
    }
    let t = tempfile::tempdir().expect("tempdir");
    let outside = t.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("x"), b"sentinel").expect("write");
    let abs = outside.display().to_string();
    let overlay = ExtractOptions {
        whiteouts: WhiteoutMode::Overlay(OverlayXattrs::Trusted),
        ..ExtractOptions::default()
    };

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = Vec::new();
    raw_entry(
        &mut b,
        "../outside/evil",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    end(&mut b);
    cases.push(("../outside/evil", b));
    let mut b = Vec::new();
    raw_entry(&mut b, "../outside/.wh.x", tar::EntryType::Regular, "", b"");
    end(&mut b);
    cases.push(("../outside/.wh.x", b));
    let mut b = Vec::new();
    raw_entry(&mut b, "link", tar::EntryType::Symlink, &abs, b"");
    raw_entry(&mut b, "link/evil", tar::EntryType::Regular, "", b"pwned");
    end(&mut b);
    cases.push(("link/evil", b));
    // A whiteout through a symlinked parent would be a device outside.
    let mut b = Vec::new();
    raw_entry(&mut b, "link", tar::EntryType::Symlink, &abs, b"");
    raw_entry(&mut b, "link/.wh.x", tar::EntryType::Regular, "", b"");
    end(&mut b);
    cases.push(("link/.wh.x", b));
    let mut b = Vec::new();
    raw_entry(&mut b, "up", tar::EntryType::Symlink, "../outside", b"");
    raw_entry(&mut b, "up/.wh..wh..opq", tar::EntryType::Regular, "", b"");
    end(&mut b);
    cases.push(("up/.wh..wh..opq", b));
    let mut b = Vec::new();
    raw_entry(&mut b, "h", tar::EntryType::Link, "../outside/x", b"");
    end(&mut b);
    cases.push(("h", b));
    // `.wh...` names `..`: deleting it would delete the root's parent.
    let mut b = Vec::new();
    raw_entry(&mut b, ".wh...", tar::EntryType::Regular, "", b"");
    end(&mut b);
    cases.push((".wh...", b));
    let mut b = Vec::new();
    raw_entry(&mut b, "sub/.wh..", tar::EntryType::Regular, "", b"");
    end(&mut b);
    cases.push(("sub/.wh..", b));

    let apply = ExtractOptions::default();
    for (entry, tar_bytes) in &cases {
        // The root is `<t>/nest/root`, so `..` of the root is `<t>/nest`, which
        // holds a sentinel too.
        for opts in [&overlay, &apply] {
            let nest = t.path().join("nest");
            let _ = fs::remove_dir_all(&nest);
            fs::create_dir_all(nest.join("root")).expect("mkdir");
            fs::write(nest.join("sentinel"), b"s").expect("write");
            let err =
                extract_layer(&mut &tar_bytes[..], &nest.join("root"), opts).expect_err(entry);
            assert!(
                matches!(err, LayerError::UnsafeEntry { .. }),
                "{entry}: {err}"
            );
            assert!(err.to_string().contains(&format!("`{entry}`")), "{err}");
            assert_sentinel_intact(&outside);
            assert!(nest.join("sentinel").exists(), "{entry}: parent touched");
            assert!(xattr::get(&outside, "trusted.overlay.opaque")
                .expect("getxattr")
                .is_none());
        }
    }

    // Through the snapshot store: refused, nothing left behind.
    let store = Store::open(&t.path().join("store")).expect("store");
    let (_, tar_bytes) = &cases[2];
    let blob = store.put_blob(tar_bytes).expect("put");
    let diff_id = sha256(tar_bytes);
    let err = store
        .snapshots()
        .ensure(&store, &diff_id, &blob)
        .expect_err("hostile");
    assert!(
        matches!(err, CacheError::Layer(LayerError::UnsafeEntry { .. })),
        "{err}"
    );
    assert!(!store.snapshots().path(&diff_id).exists());
    assert!(snapshot_temps(&store).is_empty());
    assert_sentinel_intact(&outside);
}

#[test]
fn overlay_xattrs_in_a_tar_are_not_restored() {
    if !is_root() {
        return;
    }
    let mut t = RawTar::new();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    t.0.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.kept", &b"1"[..]),
    ])
    .expect("pax");
    t.0.append_data(&mut h, "d/", &b""[..]).expect("append");
    let tar_bytes = t.finish();
    for mode in [
        WhiteoutMode::Apply,
        WhiteoutMode::Overlay(OverlayXattrs::Trusted),
        WhiteoutMode::Overlay(OverlayXattrs::User),
    ] {
        let root = tempfile::tempdir().expect("tempdir");
        let stats = extract_layer(
            &mut &tar_bytes[..],
            root.path(),
            &ExtractOptions {
                whiteouts: mode,
                hash: true,
                ..ExtractOptions::default()
            },
        )
        .expect("extract");
        assert_eq!(stats.diff_id, Some(sha256(&tar_bytes)));
        let mut names: Vec<String> = xattr::list(root.path().join("d"))
            .expect("listxattr")
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["user.kept"], "{mode:?}");
    }
}

#[test]
fn an_adopted_snapshot_from_another_boot_is_extracted_again() {
    if !is_root() {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&work.path().join("store")).expect("store");
    let upper = store.tmp_dir().join(Store::temp_name("run"));
    fs::create_dir_all(upper.join("d")).expect("mkdir");
    fs::write(upper.join("d/f"), b"from the run").expect("write");
    let mut blob = Vec::new();
    let info = write_dir_layer(&upper, &opts(Compression::Gzip), &mut blob).expect("layer");
    let blob_digest = store.put_blob(&blob).expect("blob");

    // Adopted without a flush: a marker with this boot's id.
    let snapshots = store.snapshots();
    snapshots.adopt(&upper, &info.diff_id).expect("adopt");
    let marker = snapshots.dir().join("volatile").join(info.diff_id.hex());
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    assert_eq!(
        fs::read_to_string(&marker).expect("marker").trim(),
        boot.trim()
    );
    let snap = snapshots.path(&info.diff_id);
    // This boot: the snapshot is used as it is (a file that is not in the
    // layer shows it was not extracted again).
    fs::write(snap.join("d/left-by-test"), b"x").expect("write");
    snapshots
        .ensure(&store, &info.diff_id, &blob_digest)
        .expect("ensure");
    assert!(snap.join("d/left-by-test").exists());

    // As if the machine had crashed and restarted: the snapshot is thrown away
    // and extracted again from the blob, and is then flushed (no marker).
    fs::write(&marker, "00000000-0000-0000-0000-000000000000\n").expect("fake boot");
    fs::write(snap.join("d/f"), b"torn").expect("tear");
    snapshots
        .ensure(&store, &info.diff_id, &blob_digest)
        .expect("ensure");
    assert_eq!(fs::read(snap.join("d/f")).expect("read"), b"from the run");
    assert!(!snap.join("d/left-by-test").exists());
    assert!(!marker.exists());
}
