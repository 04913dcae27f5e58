//! COPY/ADD source selection and the selection digest.

mod common;

use std::os::unix::fs::symlink;
use std::time::{Duration, SystemTime};

use common::{age, set_mtime, write};
use forge_context::{Context, ContextError, Index, Selection};

fn index(root: &std::path::Path) -> Index {
    Context::open(root, None)
        .expect("open")
        .scan(None)
        .expect("scan")
}

fn sel(index: &Index, sources: &[&str], excludes: &[&str]) -> Result<Selection, ContextError> {
    let s: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let e: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
    index.select(&s, &e)
}

fn listing(s: &Selection) -> Vec<String> {
    s.entries
        .iter()
        .map(|e| format!("{}:{}", s.roots[e.root].path, e.rel))
        .collect()
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for p in [
        "a.txt",
        "b.txt",
        "c.md",
        "src/x/main.c",
        "src/y/main.c",
        "src/y/util.c",
        "docs/r.md",
        "docs/tmp/t.md",
    ] {
        write(root, p, p);
    }
    dir
}

#[test]
fn literal_paths_and_directories() {
    let dir = tree();
    let idx = index(dir.path());
    let s = sel(&idx, &["a.txt", "/src/x", "./docs/"], &[]).expect("select");
    assert_eq!(
        listing(&s),
        [
            "a.txt:",
            "src/x:",
            "src/x:main.c",
            "docs:",
            "docs:r.md",
            "docs:tmp",
            "docs:tmp/t.md"
        ]
    );
    assert!(!s.roots[0].is_dir);
    assert!(s.roots[1].is_dir);
    // `.` and `/` are the whole context.
    let all = sel(&idx, &["."], &[]).expect("select");
    assert_eq!(all.entries.len(), idx.entries.len() + 1);
    assert_eq!(
        all.digest(),
        sel(&idx, &["/"], &[]).expect("select").digest()
    );
}

#[test]
fn wildcards_match_per_component() {
    let dir = tree();
    let idx = index(dir.path());
    let s = sel(&idx, &["*.txt"], &[]).expect("select");
    assert_eq!(listing(&s), ["a.txt:", "b.txt:"]);
    let s = sel(&idx, &["src/*/main.c"], &[]).expect("select");
    assert_eq!(listing(&s), ["src/x/main.c:", "src/y/main.c:"]);
    let s = sel(&idx, &["[ab].txt", "s?c"], &[]).expect("select");
    assert_eq!(
        listing(&s),
        [
            "a.txt:",
            "b.txt:",
            "src:",
            "src:x",
            "src:x/main.c",
            "src:y",
            "src:y/main.c",
            "src:y/util.c"
        ]
    );
    // `*` does not cross `/`; a wildcard matching nothing selects nothing.
    assert!(sel(&idx, &["*.c"], &[]).expect("select").entries.is_empty());
    assert!(matches!(
        sel(&idx, &["a["], &[]),
        Err(ContextError::InvalidSource { .. })
    ));
}

#[test]
fn missing_source_is_an_error_naming_it() {
    let dir = tree();
    let idx = index(dir.path());
    let err = sel(&idx, &["nope/x"], &[]).expect_err("missing");
    assert!(matches!(err, ContextError::SourceNotFound { .. }));
    assert_eq!(
        err.to_string(),
        "failed to compute cache key: \"/nope/x\" not found"
    );
}

#[test]
fn excluded_by_dockerignore_is_not_found() {
    let dir = tree();
    write(dir.path(), ".dockerignore", "a.txt\n");
    let idx = index(dir.path());
    assert!(matches!(
        sel(&idx, &["a.txt"], &[]),
        Err(ContextError::SourceNotFound { .. })
    ));
}

#[test]
fn escaping_the_context_is_an_error() {
    let dir = tree();
    let idx = index(dir.path());
    for s in ["../x", "src/../../x", "/.."] {
        assert!(
            matches!(
                sel(&idx, &[s], &[]),
                Err(ContextError::SourceOutsideContext { .. })
            ),
            "{s}"
        );
    }
    // `..` that stays inside is fine.
    assert_eq!(
        listing(&sel(&idx, &["src/../a.txt"], &[]).expect("select")),
        ["a.txt:"]
    );
}

#[test]
fn excludes_are_relative_to_each_root() {
    let dir = tree();
    let idx = index(dir.path());
    let s = sel(&idx, &["src", "docs"], &["*/util.c", "tmp", "!tmp/t.md"]).expect("select");
    assert_eq!(
        listing(&s),
        [
            "src:",
            "src:x",
            "src:x/main.c",
            "src:y",
            "src:y/main.c",
            "docs:",
            "docs:r.md",
            "docs:tmp",
            "docs:tmp/t.md"
        ]
    );
    let s = sel(&idx, &["docs"], &["**/*.md"]).expect("select");
    assert_eq!(listing(&s), ["docs:", "docs:tmp"]);
    assert!(matches!(
        sel(&idx, &["docs"], &["!"]),
        Err(ContextError::InvalidExclude { .. })
    ));
}

#[test]
fn symlink_sources_are_followed_inside_the_context() {
    let dir = tree();
    let root = dir.path();
    symlink("src/x", root.join("lx")).expect("symlink");
    symlink("/a.txt", root.join("abs")).expect("symlink");
    symlink("../../../../b.txt", root.join("src/up")).expect("symlink");
    let idx = index(root);
    let s = sel(&idx, &["lx"], &[]).expect("select");
    assert_eq!(s.roots[0].resolved, "src/x");
    assert_eq!(listing(&s), ["lx:", "lx:main.c"]);
    let s = sel(&idx, &["abs", "src/up", "lx/main.c"], &[]).expect("select");
    let resolved: Vec<&str> = s.roots.iter().map(|r| r.resolved.as_str()).collect();
    assert_eq!(resolved, ["a.txt", "b.txt", "src/x/main.c"]);
}

#[test]
fn digest_ignores_mtimes_and_inodes_but_not_content() {
    let one = tree();
    let two = tree();
    age(one.path());
    set_mtime(
        &two.path().join("a.txt"),
        SystemTime::now() - Duration::from_secs(99),
    );
    let d = |dir: &tempfile::TempDir, srcs: &[&str]| {
        sel(&index(dir.path()), srcs, &[]).expect("select").digest()
    };
    assert_eq!(d(&one, &["."]), d(&two, &["."]));
    assert_eq!(d(&one, &["src", "*.txt"]), d(&two, &["src", "*.txt"]));
    // What is copied where matters: other sources, other content, other links.
    assert_ne!(d(&one, &["a.txt"]), d(&one, &["b.txt"]));
    write(two.path(), "src/x/main.c", "changed");
    assert_ne!(d(&one, &["src"]), d(&two, &["src"]));
    assert_eq!(d(&one, &["docs"]), d(&two, &["docs"]));
    symlink("a", one.path().join("docs/l")).expect("symlink");
    symlink("b", two.path().join("docs/l")).expect("symlink");
    assert_ne!(d(&one, &["docs"]), d(&two, &["docs"]));
}
