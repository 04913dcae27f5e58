//! Scanning: order, what .dockerignore skips, symlinks, metadata.

mod common;

use std::os::unix::fs::symlink;

use common::{paths, write};
use forge_context::{Context, EntryKind};

#[test]
fn scan_is_sorted_and_skips_excluded_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for p in [
        "a.txt",
        "a/b.txt",
        "a/x.log",
        "b/deep/c.log",
        "build/out/app",
        "build/tmp/junk",
        "node_modules/m/index.js",
        "src/main.rs",
        "Dockerfile",
    ] {
        write(root, p, p);
    }
    write(
        root,
        ".dockerignore",
        "# comment\n**/*.log\nbuild\n!build/out\nnode_modules\n",
    );
    let ctx = Context::open(root, None).expect("open");
    let index = ctx.scan(None).expect("scan");
    // Byte order (`a.txt` before `a/`); Dockerfile and .dockerignore are ordinary
    // entries; `build` is listed because something below it is re-included.
    assert_eq!(
        paths(&index),
        [
            ".dockerignore",
            "Dockerfile",
            "a",
            "a.txt",
            "a/b.txt",
            "b",
            "b/deep",
            "build",
            "build/out",
            "build/out/app",
            "src",
            "src/main.rs",
        ]
    );
    assert_eq!(index.stats.files, 6);
    let f = index.get("a/b.txt").expect("entry");
    assert_eq!(f.kind, EntryKind::File);
    assert_eq!(f.size, 7);
    assert_eq!(f.digest, Some(*blake3::hash(b"a/b.txt").as_bytes()));
    assert!(index.get("a").expect("dir").digest.is_none());
    assert_eq!(index.below("build").len(), 2);
}

#[test]
fn excluded_directories_are_entered_only_when_an_exception_reaches_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for p in [
        "cache/keep.txt",
        "cache/other",
        "vendor/x/README.md",
        "vendor/x/lib.c",
    ] {
        write(root, p, "x");
    }
    // No exception under `cache`: nothing of it. `vendor` is entered because a
    // wildcard exception could match anywhere; only the re-included file and its
    // parents appear.
    write(root, ".dockerignore", "cache\nvendor\n!**/*.md\n");
    let index = Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan");
    assert_eq!(
        paths(&index),
        [".dockerignore", "vendor", "vendor/x", "vendor/x/README.md"]
    );

    write(root, ".dockerignore", "cache\n!cache/keep.txt\n");
    let index = Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan");
    assert_eq!(
        paths(&index),
        [
            ".dockerignore",
            "cache",
            "cache/keep.txt",
            "vendor",
            "vendor/x",
            "vendor/x/README.md",
            "vendor/x/lib.c"
        ]
    );
}

#[test]
fn leading_slash_and_dockerfile_ignored_by_pattern() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "Dockerfile", "FROM scratch");
    write(root, "x/y", "1");
    write(root, ".dockerignore", "/x/y\nDockerfile\n.dockerignore\n");
    let index = Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan");
    assert_eq!(paths(&index), ["x"]);
}

#[test]
fn symlinks_are_entries_and_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "real/f", "data");
    symlink("real", root.join("link")).expect("symlink");
    symlink("/etc/passwd", root.join("abs")).expect("symlink");
    symlink("missing", root.join("dangling")).expect("symlink");
    let index = Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan");
    assert_eq!(paths(&index), ["abs", "dangling", "link", "real", "real/f"]);
    let link = index.get("link").expect("link");
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("real"));
    assert!(link.digest.is_none());
    assert_eq!(
        index
            .get("abs")
            .and_then(|e| e.link_target.clone())
            .as_deref(),
        Some("/etc/passwd")
    );
}

#[test]
fn modes_are_recorded_with_special_bits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "tool", "#!/bin/sh");
    std::fs::set_permissions(root.join("tool"), std::fs::Permissions::from_mode(0o4751))
        .expect("chmod");
    let index = Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan");
    assert_eq!(index.get("tool").expect("tool").mode, 0o4751);
}

#[test]
fn not_a_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "f", "x");
    assert!(Context::open(&dir.path().join("f"), None).is_err());
}
