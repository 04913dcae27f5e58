//! Layer writing, compression and applying, on real files in temp dirs.
//!
//! Runs as root in CI (chown and mknod are exercised); tools used: gzip, zstd,
//! GNU tar, sha256sum, bzip2, xz (skipped with a message if absent).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{assert_sentinel_intact, describe_tree, end, is_root, noise, raw_entry, walk};
use forge_cache::layer::{
    apply_layer, compress_tar, decompress, detect, extract_layer, write_changes_layer,
    write_dir_layer, write_planned_layer, ApplyLimits, Change, Compression, DetectedCompression,
    ExtractOptions, LayerError, LayerInfo, LayerOptions, Owners, PlannedEntry, PlannedKind,
    OWNER_XATTR,
};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;

fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("{tool}: not installed, check skipped");
    }
    ok
}

/// Run a shell command with `input` on stdin; its stdout.
fn sh(cmd: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    feeder.join().expect("feeder");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256sum(data: &[u8]) -> String {
    let out = String::from_utf8(sh("sha256sum", data)).expect("utf8");
    format!("sha256:{}", out.split_whitespace().next().expect("hash"))
}

fn set_mtime(path: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .expect("utimensat");
}

fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "layer", "forge", "tar", "gzip", "zstd", "digest", "image", "store",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = seed as usize;
    while out.len() < len {
        out.extend_from_slice(words[i % words.len()].as_bytes());
        out.push(match i % 11 {
            0 => b'\n',
            _ => b' ',
        });
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out.truncate(len);
    out
}

/// A tree with every kind of entry. `big` adds several MiB of data (many gzip chunks).
fn make_tree(root: &Path, big: bool) {
    fs::create_dir_all(root.join("etc/conf.d")).expect("mkdir");
    fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
    fs::create_dir_all(root.join("a")).expect("mkdir");
    fs::write(root.join("a.txt"), b"sorted before a/ in byte order").expect("write");
    fs::write(root.join("a/b"), b"inside a").expect("write");
    fs::write(root.join("etc/hostname"), b"forge\n").expect("write");
    fs::write(root.join("etc/conf.d/x.conf"), text(1, 5000)).expect("write");
    fs::write(root.join("usr/bin/tool"), noise(2, 70_000)).expect("write");
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .expect("chmod");
    fs::create_dir(root.join("tmp")).expect("mkdir");
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    fs::write(root.join("empty"), b"").expect("write");
    symlink("etc/hostname", root.join("link-rel")).expect("symlink");
    symlink("/nonexistent/abs", root.join("link-abs")).expect("symlink");
    fs::hard_link(root.join("etc/hostname"), root.join("usr/hostname-hard")).expect("link");
    nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o640)).expect("mkfifo");
    let long_dir = root.join("d".repeat(90)).join("e".repeat(90));
    fs::create_dir_all(&long_dir).expect("mkdir");
    fs::write(long_dir.join("f".repeat(120)), b"long name").expect("write");
    xattr::set(
        root.join("etc/hostname"),
        "user.forge.test",
        b"yes\0binary\xff",
    )
    .expect("xattr (user xattrs unsupported on this fs?)");
    if is_root() {
        mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .expect("mknod");
        mknod(
            &root.join("loop9"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 9),
        )
        .expect("mknod");
        std::os::unix::fs::lchown(root.join("etc/hostname"), Some(1000), Some(1001))
            .expect("chown");
        std::os::unix::fs::lchown(root.join("link-rel"), Some(7), Some(8)).expect("lchown");
        fs::write(root.join("bigid"), b"large uid").expect("write");
        std::os::unix::fs::lchown(root.join("bigid"), Some(3_000_000), Some(4_000_000))
            .expect("chown");
    }
    if big {
        fs::create_dir(root.join("data")).expect("mkdir");
        for i in 0..24u64 {
            let body = if i % 3 == 0 {
                noise(i, 200_000 + i as usize * 1000)
            } else {
                text(i, 300_000 + i as usize * 777)
            };
            fs::write(root.join(format!("data/f{i:02}")), body).expect("write");
        }
    }
}

fn opts(compression: Compression, threads: usize) -> LayerOptions {
    LayerOptions {
        compression,
        level: None,
        threads,
        source_date_epoch: 0,
        ..LayerOptions::default()
    }
}

fn write_layer(root: &Path, o: &LayerOptions) -> (Vec<u8>, LayerInfo) {
    let mut out = Vec::new();
    let info = write_dir_layer(root, o, &mut out).expect("write layer");
    assert_eq!(info.size, out.len() as u64);
    (out, info)
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// Names of entries in a plain tar, in order.
fn tar_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(tar_bytes);
    ar.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

#[test]
fn same_tree_same_digest_anywhere_anytime() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), true);
    make_tree(b.path(), true);
    // Different mtimes everywhere in b.
    for entry in walk(b.path()) {
        set_mtime(&entry, 1_700_000_000 + (entry.as_os_str().len() as i64));
    }
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let o = opts(c, 2);
        let (x1, i1) = write_layer(a.path(), &o);
        let (x2, i2) = write_layer(a.path(), &o);
        let (y, j) = write_layer(b.path(), &o);
        assert_eq!(i1, i2, "{c:?} twice");
        assert_eq!(x1, x2);
        assert_eq!(
            i1.digest, j.digest,
            "{c:?} in another dir with other mtimes"
        );
        assert_eq!(x1, y);
        assert_eq!(i1.diff_id, j.diff_id);
        assert_eq!(i1.media_type, c.media_type());
    }
}

#[test]
fn source_date_epoch_clamps_but_keeps_older_times() {
    let a = tempfile::tempdir().expect("tempdir");
    fs::write(a.path().join("old"), b"old").expect("write");
    fs::write(a.path().join("new"), b"new").expect("write");
    set_mtime(&a.path().join("old"), 1000);
    let o = LayerOptions {
        compression: Compression::None,
        source_date_epoch: 5000,
        ..opts(Compression::None, 1)
    };
    let (tar_bytes, _) = write_layer(a.path(), &o);
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let times: BTreeMap<String, u64> = ar
        .entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().mtime().expect("mtime"),
            )
        })
        .collect();
    assert_eq!(times["old"], 1000);
    assert_eq!(times["new"], 5000);
}

#[test]
fn gzip_is_identical_for_any_thread_count_and_valid() {
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), true);
    let (plain, plain_info) = write_layer(a.path(), &opts(Compression::None, 1));
    assert!(
        plain.len() > 3 * forge_cache::layer::GZIP_CHUNK,
        "several chunks"
    );
    let (g1, i1) = write_layer(a.path(), &opts(Compression::Gzip, 1));
    for threads in [2, 8] {
        let (g, i) = write_layer(a.path(), &opts(Compression::Gzip, threads));
        assert!(g == g1, "gzip output differs with {threads} threads");
        assert_eq!(i, i1);
    }
    assert_eq!(gunzip(&g1), plain);
    assert_eq!(i1.diff_id, plain_info.diff_id);
    assert_eq!(i1.uncompressed_size, plain.len() as u64);
    assert!(g1.len() < plain.len() / 2, "it compresses");
    if have("gzip") && have("sha256sum") {
        sh("gzip -t", &g1);
        let unzipped = sh("gzip -dc", &g1);
        assert_eq!(unzipped, plain);
        assert_eq!(sha256sum(&unzipped), i1.diff_id.to_string());
        assert_eq!(sha256sum(&g1), i1.digest.to_string());
    }
    if have("tar") && have("zcat") {
        let listing = String::from_utf8(sh("zcat | tar -tvf -", &g1)).expect("utf8");
        let names = String::from_utf8(sh("zcat | tar -tf -", &g1)).expect("utf8");
        let names: Vec<&str> = names.lines().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "entries sorted by name bytes");
        assert!(names.contains(&"a.txt") && names.contains(&"a/"));
        assert!(
            listing.contains("usr/hostname-hard link to etc/hostname"),
            "{listing}"
        );
        assert!(listing.contains("link-rel -> etc/hostname"), "{listing}");
        assert!(listing.contains("-rwsr-xr-x"), "setuid kept: {listing}");
        assert!(listing.contains("drwxrwxrwt"), "sticky kept: {listing}");
        assert!(
            names.iter().any(|n| n.ends_with(&"f".repeat(120))),
            "long name via PAX"
        );
        if is_root() {
            assert!(listing.contains("1000/1001"), "numeric ids: {listing}");
            assert!(
                listing.contains("3000000/4000000"),
                "large ids via PAX: {listing}"
            );
            assert!(
                listing
                    .lines()
                    .any(|l| l.starts_with('c') && l.contains(" 1,3 ") && l.ends_with(" null")),
                "{listing}"
            );
        }
    }
}

#[test]
fn gzip_levels_and_tiny_inputs() {
    let a = tempfile::tempdir().expect("tempdir");
    for level in [0, 1, 9] {
        let o = LayerOptions {
            level: Some(level),
            ..opts(Compression::Gzip, 2)
        };
        let (g, info) = write_layer(a.path(), &o);
        assert_eq!(
            gunzip(&g).len(),
            1024,
            "an empty tree is the two end blocks"
        );
        assert_eq!(info.uncompressed_size, 1024);
    }
    let bad = LayerOptions {
        level: Some(12),
        ..opts(Compression::Gzip, 1)
    };
    let err = write_dir_layer(a.path(), &bad, &mut Vec::new()).expect_err("bad level");
    assert!(matches!(err, LayerError::InvalidLevel { .. }), "{err}");
}

#[test]
fn zstd_is_identical_for_any_thread_count_and_valid() {
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), true);
    // Bigger than a zstd job, so several workers really take part.
    fs::write(a.path().join("data/huge"), text(99, 12 << 20)).expect("write");
    let (plain, plain_info) = write_layer(a.path(), &opts(Compression::None, 1));
    let (z1, i1) = write_layer(a.path(), &opts(Compression::Zstd, 1));
    for threads in [2, 8] {
        let (z, i) = write_layer(a.path(), &opts(Compression::Zstd, threads));
        assert!(z == z1, "zstd output differs with {threads} threads");
        assert_eq!(i, i1);
    }
    assert_eq!(i1.diff_id, plain_info.diff_id);
    let mut unz = Vec::new();
    zstd::stream::read::Decoder::new(&z1[..])
        .expect("decoder")
        .read_to_end(&mut unz)
        .expect("unzstd");
    assert_eq!(unz, plain);
    if have("zstd") && have("sha256sum") {
        sh("zstd -q -t", &z1);
        let out = sh("zstd -q -dc", &z1);
        assert_eq!(sha256sum(&out), i1.diff_id.to_string());
        assert_eq!(sha256sum(&z1), i1.digest.to_string());
    }
}

#[test]
fn entries_round_trip_through_write_and_apply() {
    let src = tempfile::tempdir().expect("tempdir");
    make_tree(src.path(), false);
    for entry in walk(src.path()) {
        set_mtime(&entry, 0);
    }
    for c in [Compression::Gzip, Compression::Zstd, Compression::None] {
        let (blob, info) = write_layer(src.path(), &opts(c, 2));
        let dst = tempfile::tempdir().expect("tempdir");
        let stats =
            apply_layer(&mut &blob[..], dst.path(), &ApplyLimits::default()).expect("apply");
        assert_eq!(stats.uncompressed_bytes, info.uncompressed_size);
        assert_eq!(stats.compressed_bytes, info.size);
        let want = describe_tree(src.path());
        let got = describe_tree(dst.path());
        assert_eq!(got, want, "{c:?}");
        assert!(got["etc/hostname"].contains("xattr user.forge.test"));
        assert!(got["usr/bin/tool"].contains("mode=104755"));
        assert!(got["tmp"].contains("mode=41777"));
        assert!(got["usr/hostname-hard"].contains("linkgroup=etc/hostname"));
        // Re-exporting the applied tree gives the same layer.
        let (again, again_info) = write_layer(dst.path(), &opts(c, 2));
        assert_eq!(again_info.digest, info.digest, "{c:?} re-export");
        assert_eq!(again, blob);
    }
}

/// `name uid:gid` of each entry of a plain tar, and whether any entry
/// carries forge's owner xattr.
fn tar_owners(tar_bytes: &[u8]) -> (Vec<String>, bool) {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut owner_xattr = false;
    let mut out = Vec::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts.flatten() {
                owner_xattr |= ext.key_bytes().ends_with(OWNER_XATTR.as_bytes());
            }
        }
        let h = e.header();
        out.push(format!(
            "{} {}:{}",
            String::from_utf8_lossy(&e.path_bytes()),
            h.uid().expect("uid"),
            h.gid().expect("gid")
        ));
    }
    (out, owner_xattr)
}

/// A rootless forge: the on-disk root is its own uid, other owners are in
/// `user.forge.owner`; the layer has the image owners and never the xattr,
/// and extracting it the same way gives the same layer back.
#[test]
fn rootless_owners_live_in_an_xattr_and_never_in_the_layer() {
    if !is_root() {
        return; // the tree needs files of two owners
    }
    let src = tempfile::tempdir().expect("tempdir");
    let dir = src.path();
    fs::create_dir(dir.join("d")).expect("mkdir");
    fs::write(dir.join("d/kept"), b"k").expect("write");
    fs::write(dir.join("mine"), b"m").expect("write");
    fs::write(dir.join("other"), b"o").expect("write");
    for p in [dir.join("d"), dir.join("d/kept"), dir.join("mine")] {
        std::os::unix::fs::lchown(&p, Some(1234), Some(1234)).expect("chown");
    }
    xattr::set(dir.join("d/kept"), OWNER_XATTR, b"5:6").expect("setxattr");
    for entry in walk(dir) {
        set_mtime(&entry, 0);
    }
    let rootless = Owners::InXattr {
        uid: 1234,
        gid: 1234,
        max_id: 0,
    };
    let o = LayerOptions {
        owners: rootless,
        ..opts(Compression::None, 1)
    };
    let (blob, _) = write_layer(dir, &o);
    let (owners, has_xattr) = tar_owners(&blob);
    assert_eq!(
        owners,
        ["d/ 0:0", "d/kept 5:6", "mine 0:0", "other 65534:65534"],
        "the on-disk root is 0, the xattr's owner wins, anyone else is nobody"
    );
    assert!(!has_xattr, "the owner xattr is forge's own: never exported");

    // Extracted by the same (as if rootless) forge: nothing is chowned to
    // another id; the owners go back in the xattr and the layer comes back.
    let dst = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::lchown(dst.path(), Some(1234), Some(1234)).expect("chown");
    let extract = ExtractOptions {
        owners: rootless,
        ..ExtractOptions::default()
    };
    extract_layer(&mut &blob[..], dst.path(), &extract).expect("extract");
    let kept = fs::symlink_metadata(dst.path().join("d/kept")).expect("stat");
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&kept),
            std::os::unix::fs::MetadataExt::gid(&kept)
        ),
        (1234, 1234)
    );
    assert_eq!(
        xattr::get(dst.path().join("d/kept"), OWNER_XATTR).expect("getxattr"),
        Some(b"5:6".to_vec())
    );
    assert_eq!(
        xattr::get(dst.path().join("mine"), OWNER_XATTR).expect("getxattr"),
        None
    );
    let (again, _) = write_layer(dst.path(), &o);
    assert_eq!(again, blob);
}

/// A fake overlay upper dir: whiteout devices and an opaque dir.
#[test]
fn overlay_whiteouts_and_opaque_dirs() {
    if !is_root() {
        println!("not root: overlay whiteout devices cannot be made, skipped");
        return;
    }
    let lower_src = tempfile::tempdir().expect("tempdir");
    let l = lower_src.path();
    fs::create_dir_all(l.join("keep")).expect("mkdir");
    fs::create_dir_all(l.join("gone-dir/sub")).expect("mkdir");
    fs::create_dir_all(l.join("opq/old-sub")).expect("mkdir");
    fs::write(l.join("keep/file"), b"stays").expect("write");
    fs::write(l.join("gone-file"), b"deleted").expect("write");
    fs::write(l.join("gone-dir/sub/x"), b"deleted").expect("write");
    fs::write(l.join("opq/old"), b"hidden").expect("write");
    fs::write(l.join("opq/old-sub/y"), b"hidden").expect("write");
    let (base, _) = write_layer(l, &opts(Compression::Gzip, 2));

    let upper = tempfile::tempdir().expect("tempdir");
    let u = upper.path();
    let whiteout = |p: &Path| {
        mknod(p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).expect("mknod 0:0");
    };
    whiteout(&u.join("gone-file"));
    whiteout(&u.join("gone-dir"));
    fs::create_dir(u.join("opq")).expect("mkdir");
    xattr::set(u.join("opq"), "trusted.overlay.opaque", b"y").expect("opaque xattr");
    fs::write(u.join("opq/new"), b"fresh").expect("write");
    fs::create_dir(u.join("opq/old-sub")).expect("mkdir");
    fs::write(u.join("opq/old-sub/z"), b"fresh").expect("write");
    fs::write(u.join("added"), b"new file").expect("write");
    let (layer, _) = write_layer(u, &opts(Compression::Gzip, 2));

    let names = tar_names(&gunzip(&layer));
    assert_eq!(
        names,
        [
            ".wh.gone-dir",
            ".wh.gone-file",
            "added",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/new",
            "opq/old-sub/",
            "opq/old-sub/z"
        ]
    );
    let unzipped = gunzip(&layer);
    let mut ar = tar::Archive::new(&unzipped[..]);
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if let Some(pax) = e.pax_extensions().expect("pax") {
            for r in pax {
                let key = r.expect("record").key().expect("utf8").to_string();
                assert!(!key.contains("overlay"), "overlay xattr exported: {key}");
            }
        }
    }

    let root = tempfile::tempdir().expect("tempdir");
    let limits = ApplyLimits::default();
    apply_layer(&mut &base[..], root.path(), &limits).expect("apply base");
    let stats = apply_layer(&mut &layer[..], root.path(), &limits).expect("apply upper");
    assert_eq!(stats.whiteouts, 3);
    let r = root.path();
    assert_eq!(fs::read(r.join("keep/file")).expect("kept"), b"stays");
    assert!(!r.join("gone-file").exists());
    assert!(!r.join("gone-dir").exists());
    assert!(!r.join("opq/old").exists(), "opaque hides lower content");
    assert!(
        !r.join("opq/old-sub/y").exists(),
        "opaque hides lower content deep down"
    );
    assert_eq!(fs::read(r.join("opq/new")).expect("new"), b"fresh");
    assert_eq!(fs::read(r.join("opq/old-sub/z")).expect("z"), b"fresh");
    assert_eq!(fs::read(r.join("added")).expect("added"), b"new file");
    assert!(!r.join("opq/.wh..wh..opq").exists() && !r.join(".wh.gone-file").exists());
}

#[test]
fn change_layers() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    fs::create_dir_all(r.join("srv/www")).expect("mkdir");
    fs::create_dir_all(r.join("cache")).expect("mkdir");
    fs::write(r.join("srv/www/index.html"), b"<h1>hi</h1>").expect("write");
    fs::write(r.join("cache/fresh"), b"fresh").expect("write");
    let changes = vec![
        Change::Upsert("srv/www/index.html".into()),
        Change::Delete("srv/old.conf".into()),
        Change::Delete("gone/deeper".into()),
        Change::Delete("gone".into()),
        Change::Opaque("cache".into()),
        Change::Upsert("cache/fresh".into()),
    ];
    let mut out = Vec::new();
    let info = write_changes_layer(r, &changes, &opts(Compression::None, 1), &mut out)
        .expect("changes layer");
    assert_eq!(info.digest, info.diff_id, "uncompressed: blob is the tar");
    assert_eq!(
        tar_names(&out),
        [
            ".wh.gone",
            "cache/",
            "cache/.wh..wh..opq",
            "cache/fresh",
            "srv/",
            "srv/.wh.old.conf",
            "srv/www/",
            "srv/www/index.html"
        ]
    );

    // Apply onto a lower tree.
    let lower = tempfile::tempdir().expect("tempdir");
    let lw = lower.path();
    fs::create_dir_all(lw.join("srv")).expect("mkdir");
    fs::create_dir_all(lw.join("gone/deeper")).expect("mkdir");
    fs::create_dir_all(lw.join("cache")).expect("mkdir");
    fs::write(lw.join("srv/old.conf"), b"x").expect("write");
    fs::write(lw.join("cache/stale"), b"x").expect("write");
    apply_layer(&mut &out[..], lw, &ApplyLimits::default()).expect("apply");
    assert!(!lw.join("srv/old.conf").exists());
    assert!(!lw.join("gone").exists());
    assert!(!lw.join("cache/stale").exists());
    assert!(lw.join("cache/fresh").exists());
    assert!(lw.join("srv/www/index.html").exists());

    for (bad, what) in [
        (Change::Upsert("../x".into()), ".."),
        (Change::Upsert("/etc".into()), "absolute"),
        (Change::Upsert("missing".into()), "missing"),
        (Change::Delete("nowhere/x".into()), "missing parent"),
        (Change::Opaque("srv/www/index.html".into()), "opaque file"),
    ] {
        let err = write_changes_layer(r, &[bad], &opts(Compression::None, 1), &mut Vec::new())
            .expect_err(what);
        assert!(
            matches!(err, LayerError::InvalidChange { .. }),
            "{what}: {err}"
        );
    }
}

#[test]
fn compress_tar_matches_write_dir_layer() {
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), true);
    let (plain, plain_info) = write_layer(a.path(), &opts(Compression::None, 1));
    for c in [Compression::Gzip, Compression::Zstd] {
        let (blob, info) = write_layer(a.path(), &opts(c, 2));
        let mut out = Vec::new();
        let from_tar = compress_tar(&mut &plain[..], &opts(c, 3), &mut out).expect("compress_tar");
        assert_eq!(
            from_tar,
            forge_cache::layer::LayerInfo { entries: 0, ..info },
            "{c:?}"
        );
        assert!(info.entries > 0);
        assert_eq!(out, blob);
        assert_eq!(from_tar.diff_id, plain_info.diff_id);
    }
    // A tar made by GNU tar: digests agree with sha256sum.
    if have("tar") && have("sha256sum") {
        let gnu = sh(
            &format!(
                "tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -C {} -cf - .",
                a.path().display()
            ),
            b"",
        );
        let mut out = Vec::new();
        let info = compress_tar(&mut &gnu[..], &opts(Compression::Gzip, 2), &mut out)
            .expect("compress gnu tar");
        assert_eq!(info.diff_id.to_string(), sha256sum(&gnu));
        assert_eq!(info.digest.to_string(), sha256sum(&out));
        assert_eq!(gunzip(&out), gnu);
    }
}

#[test]
fn detect_and_decompress_formats() {
    let payload = text(5, 100_000);
    assert_eq!(detect(&payload), DetectedCompression::None);
    let mut cases: Vec<(&str, DetectedCompression)> = vec![
        ("gzip -c", DetectedCompression::Gzip),
        ("zstd -q -c", DetectedCompression::Zstd),
    ];
    if have("bzip2") {
        cases.push(("bzip2 -c", DetectedCompression::Bzip2));
    }
    if have("xz") {
        cases.push(("xz -c", DetectedCompression::Xz));
    }
    for (cmd, kind) in cases {
        if !have(cmd.split(' ').next().expect("tool")) {
            continue;
        }
        let packed = sh(cmd, &payload);
        assert_eq!(detect(&packed), kind, "{cmd}");
        let mut r = decompress(io::Cursor::new(packed)).expect("decompress");
        let mut out = Vec::new();
        r.read_to_end(&mut out).expect("read");
        assert!(out == payload, "{cmd} round trip");
    }
    let mut r = decompress(io::Cursor::new(payload.clone())).expect("plain");
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read");
    assert_eq!(out, payload);
}

// ---------------------------------------------------------------------------
// Hostile layers.

/// `<tmp>/outside/` (a sentinel that must stay untouched) and `<tmp>/root/`.
fn arena() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let outside = t.path().join("outside");
    let root = t.path().join("root");
    fs::create_dir(&outside).expect("mkdir");
    fs::create_dir(&root).expect("mkdir");
    fs::write(outside.join("x"), b"sentinel").expect("write");
    (t, outside, root)
}

fn refused(tar_bytes: &[u8], root: &Path, entry: &str) -> LayerError {
    let err = apply_layer(&mut &tar_bytes[..], root, &ApplyLimits::default())
        .expect_err("must be refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("`{entry}`")),
        "error names `{entry}`: {msg}"
    );
    err
}

#[test]
fn refuses_parent_dir_escape() {
    let (_t, outside, root) = arena();
    let mut tar_bytes = Vec::new();
    raw_entry(
        &mut tar_bytes,
        "../outside/evil",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    end(&mut tar_bytes);
    let err = refused(&tar_bytes, &root, "../outside/evil");
    assert!(matches!(err, LayerError::UnsafeEntry { .. }), "{err}");
    let mut tar_bytes = Vec::new();
    raw_entry(
        &mut tar_bytes,
        "a/../../outside/evil",
        tar::EntryType::Regular,
        "",
        b"x",
    );
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "a/../../outside/evil");
    assert_sentinel_intact(&outside);
}

#[test]
fn refuses_absolute_names() {
    let (_t, outside, root) = arena();
    let target = format!("{}/evil", outside.display());
    let mut tar_bytes = Vec::new();
    raw_entry(
        &mut tar_bytes,
        &target,
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    end(&mut tar_bytes);
    let err = refused(&tar_bytes, &root, &target);
    assert!(err.to_string().contains("absolute"), "{err}");
    assert_sentinel_intact(&outside);
}

#[test]
fn refuses_writing_through_absolute_symlink() {
    let (_t, outside, root) = arena();
    let mut tar_bytes = Vec::new();
    let abs = outside.display().to_string();
    raw_entry(&mut tar_bytes, "link", tar::EntryType::Symlink, &abs, b"");
    raw_entry(
        &mut tar_bytes,
        "link/passwd",
        tar::EntryType::Regular,
        "",
        b"root::0:0",
    );
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "link/passwd");
    // The symlink itself is harmless and was created.
    assert!(fs::symlink_metadata(root.join("link"))
        .expect("link")
        .file_type()
        .is_symlink());
    // Also `link -> /etc` as in the classic attack: never touches /etc.
    let mut tar_bytes = Vec::new();
    raw_entry(
        &mut tar_bytes,
        "etc-link",
        tar::EntryType::Symlink,
        "/etc",
        b"",
    );
    raw_entry(
        &mut tar_bytes,
        "etc-link/passwd",
        tar::EntryType::Regular,
        "",
        b"x",
    );
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "etc-link/passwd");
    assert_sentinel_intact(&outside);
}

#[test]
fn refuses_hardlink_outside_root() {
    let (_t, outside, root) = arena();
    let mut tar_bytes = Vec::new();
    raw_entry(
        &mut tar_bytes,
        "h",
        tar::EntryType::Link,
        "../outside/x",
        b"",
    );
    end(&mut tar_bytes);
    let err = refused(&tar_bytes, &root, "h");
    assert!(err.to_string().contains("../outside/x"), "{err}");
    let mut tar_bytes = Vec::new();
    raw_entry(&mut tar_bytes, "d/", tar::EntryType::Directory, "", b"");
    raw_entry(&mut tar_bytes, "d/h", tar::EntryType::Link, "../../x", b"");
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "d/h");
    // Through a symlink to outside.
    let mut tar_bytes = Vec::new();
    let abs = outside.display().to_string();
    raw_entry(&mut tar_bytes, "out", tar::EntryType::Symlink, &abs, b"");
    raw_entry(&mut tar_bytes, "h2", tar::EntryType::Link, "out/x", b"");
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "h2");
    assert_sentinel_intact(&outside);
}

#[test]
fn refuses_symlink_chains_escaping() {
    let (_t, outside, root) = arena();
    let mut tar_bytes = Vec::new();
    raw_entry(&mut tar_bytes, "sub/", tar::EntryType::Directory, "", b"");
    raw_entry(&mut tar_bytes, "a", tar::EntryType::Symlink, "sub/b", b"");
    raw_entry(&mut tar_bytes, "sub/b", tar::EntryType::Symlink, "c", b"");
    raw_entry(
        &mut tar_bytes,
        "sub/c",
        tar::EntryType::Symlink,
        "../../outside",
        b"",
    );
    raw_entry(
        &mut tar_bytes,
        "a/evil",
        tar::EntryType::Regular,
        "",
        b"pwned",
    );
    end(&mut tar_bytes);
    let err = refused(&tar_bytes, &root, "a/evil");
    assert!(err.to_string().contains("above the root"), "{err}");
    // A loop is refused too, not followed forever.
    let mut tar_bytes = Vec::new();
    raw_entry(&mut tar_bytes, "l1", tar::EntryType::Symlink, "l2", b"");
    raw_entry(&mut tar_bytes, "l2", tar::EntryType::Symlink, "l1", b"");
    raw_entry(&mut tar_bytes, "l1/x", tar::EntryType::Regular, "", b"x");
    end(&mut tar_bytes);
    refused(&tar_bytes, &root, "l1/x");
    assert_sentinel_intact(&outside);
}

#[test]
fn follows_symlinks_that_stay_inside_the_root() {
    let (_t, outside, root) = arena();
    let mut tar_bytes = Vec::new();
    raw_entry(&mut tar_bytes, "usr/", tar::EntryType::Directory, "", b"");
    raw_entry(
        &mut tar_bytes,
        "usr/lib/",
        tar::EntryType::Directory,
        "",
        b"",
    );
    raw_entry(
        &mut tar_bytes,
        "lib",
        tar::EntryType::Symlink,
        "usr/lib",
        b"",
    );
    raw_entry(
        &mut tar_bytes,
        "usr/lib64",
        tar::EntryType::Symlink,
        "../usr/./lib",
        b"",
    );
    raw_entry(
        &mut tar_bytes,
        "lib/libc.so",
        tar::EntryType::Regular,
        "",
        b"elf",
    );
    raw_entry(
        &mut tar_bytes,
        "usr/lib64/ld.so",
        tar::EntryType::Regular,
        "",
        b"ld",
    );
    raw_entry(
        &mut tar_bytes,
        "./lib/hard",
        tar::EntryType::Link,
        "lib/libc.so",
        b"",
    );
    // The last component is never followed: this replaces the symlink `lib`.
    raw_entry(
        &mut tar_bytes,
        "lib",
        tar::EntryType::Regular,
        "",
        b"file now",
    );
    end(&mut tar_bytes);
    apply_layer(&mut &tar_bytes[..], &root, &ApplyLimits::default()).expect("apply");
    assert_eq!(
        fs::read(root.join("usr/lib/libc.so")).expect("read"),
        b"elf"
    );
    assert_eq!(fs::read(root.join("usr/lib/ld.so")).expect("read"), b"ld");
    assert_eq!(fs::read(root.join("usr/lib/hard")).expect("read"), b"elf");
    assert_eq!(fs::read(root.join("lib")).expect("read"), b"file now");
    assert_sentinel_intact(&outside);
}

/// A tar holding one file of `size` zero bytes, gzipped (≈1000:1).
fn zero_bomb(size: u64) -> Vec<u8> {
    let mut header = Vec::new();
    let mut h = tar::Header::new_ustar();
    h.set_path("zeros").expect("path");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    header.extend_from_slice(h.as_bytes());
    let mut stream = io::Cursor::new(header)
        .chain(io::repeat(0).take(size))
        .chain(io::repeat(0).take(1024));
    let mut out = Vec::new();
    let o = LayerOptions {
        level: Some(9),
        ..opts(Compression::Gzip, 0)
    };
    compress_tar(&mut stream, &o, &mut out).expect("compress bomb");
    out
}

#[test]
fn decompression_bombs_are_refused() {
    let bomb = zero_bomb(1 << 30);
    assert!(bomb.len() < 2 << 20, "bomb is small: {}", bomb.len());
    let (_t, outside, root) = arena();
    // The size limit refuses the entry from its header, before writing anything.
    let limits = ApplyLimits {
        max_total_bytes: 64 << 20,
        ..ApplyLimits::default()
    };
    let err = apply_layer(&mut &bomb[..], &root, &limits).expect_err("size limit");
    assert!(matches!(err, LayerError::LimitExceeded { .. }), "{err}");
    assert!(err.to_string().contains("`zeros`"), "{err}");
    assert!(!root.join("zeros").exists());
    // The ratio limit stops it after a little output, and removes the partial file.
    let limits = ApplyLimits {
        max_total_bytes: 0,
        max_ratio: 100,
        ..ApplyLimits::default()
    };
    let err = apply_layer(&mut &bomb[..], &root, &limits).expect_err("ratio limit");
    assert!(err.to_string().contains("compression ratio"), "{err}");
    assert!(!root.join("zeros").exists());
    // The defaults stop it too (gzip of zeros is ~1000:1).
    let err = apply_layer(&mut &bomb[..], &root, &ApplyLimits::default()).expect_err("default");
    assert!(matches!(err, LayerError::LimitExceeded { .. }), "{err}");
    // Entry count.
    let mut many = Vec::new();
    for i in 0..20 {
        raw_entry(
            &mut many,
            &format!("f{i}"),
            tar::EntryType::Regular,
            "",
            b"",
        );
    }
    end(&mut many);
    let limits = ApplyLimits {
        max_entries: 10,
        ..ApplyLimits::default()
    };
    let err = apply_layer(&mut &many[..], &root, &limits).expect_err("entries");
    assert!(err.to_string().contains("`f10`"), "{err}");
    assert_sentinel_intact(&outside);
}

/// The plan of `root`'s tree as the directory writer would read it.
fn plan_of(root: &Path) -> BTreeMap<Vec<u8>, PlannedEntry> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut plan = BTreeMap::new();
    for path in walk(root) {
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let rel = path.strip_prefix(root).expect("under root");
        let Some(kind) = PlannedKind::of(&path, &meta).expect("readlink") else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let mut name = rel.as_os_str().as_bytes().to_vec();
        if meta.is_dir() {
            name.push(b'/');
        }
        plan.insert(
            name,
            PlannedEntry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                xattrs_from: Some(path.clone()),
            },
        );
    }
    plan
}

#[test]
fn a_planned_layer_of_a_tree_is_the_trees_layer() {
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), false);
    for c in [Compression::None, Compression::Gzip] {
        let o = opts(c, 2);
        let (by_dir, dir_info) = write_layer(a.path(), &o);
        let mut by_plan = Vec::new();
        let plan_info =
            write_planned_layer(plan_of(a.path()), &o, &mut by_plan).expect("planned layer");
        assert_eq!(plan_info, dir_info, "{c:?}");
        assert_eq!(by_plan, by_dir, "{c:?}");
    }
    // Metadata is taken from the plan, not the disk; a hard link's second
    // name in tar order links to the first.
    let mut plan = plan_of(a.path());
    for entry in plan.values_mut() {
        (entry.uid, entry.gid, entry.mtime) = (7, 8, 1);
        entry.xattrs_from = None;
    }
    let mut tar_bytes = Vec::new();
    write_planned_layer(plan, &opts(Compression::None, 1), &mut tar_bytes).expect("layer");
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    for entry in ar.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let h = entry.header();
        assert_eq!((h.uid().ok(), h.gid().ok()), (Some(7), Some(8)));
        assert_eq!(h.mtime().ok(), Some(0), "clamped to SOURCE_DATE_EPOCH 0");
        if entry.path_bytes().as_ref() == b"usr/hostname-hard" {
            assert_eq!(h.entry_type(), tar::EntryType::Link);
            assert_eq!(
                entry.link_name_bytes().as_deref(),
                Some(&b"etc/hostname"[..])
            );
        }
        assert!(entry.pax_extensions().ok().flatten().is_none_or(|mut x| {
            x.all(|r| !r.is_ok_and(|r| r.key_bytes().starts_with(b"SCHILY.xattr")))
        }));
    }
}

#[test]
fn an_uncompressed_blob_is_its_own_diff_id() {
    use sha2::{Digest, Sha256};
    let a = tempfile::tempdir().expect("tempdir");
    make_tree(a.path(), true);
    let (blob, info) = write_layer(a.path(), &opts(Compression::None, 2));
    let hex: String = Sha256::digest(&blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(info.digest, info.diff_id);
    assert_eq!(info.digest.to_string(), format!("sha256:{hex}"));
    assert_eq!(info.uncompressed_size, blob.len() as u64);
    assert!(
        blob.len() > 2 * forge_cache::layer::GZIP_CHUNK,
        "several chunks hashed"
    );
}
