//! docker's .dockerignore semantics: patternmatcher's own test cases, the ignore
//! file reader, and how a context applies them.

use std::fs;
use std::path::Path;

use forge_context::dockerignore::{parse_ignore_file, PatternMatcher};
use forge_context::gomatch::go_match;
use forge_context::{Context, ContextError};

const CASES: &str = include_str!("data/patternmatcher-cases.tsv");

#[test]
fn patternmatcher_test_cases() {
    let mut n = 0;
    for line in CASES.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "match" => {
                let pm = PatternMatcher::new(&[f[1]]).expect(line);
                assert_eq!(
                    pm.matches_or_parent_matches(f[2]),
                    f[3] == "true",
                    "{line:?}"
                );
            }
            "multi" => {
                let pm = PatternMatcher::new(&f[3..]).expect(line);
                assert_eq!(
                    pm.matches_or_parent_matches(f[1]),
                    f[2] == "true",
                    "{line:?}"
                );
            }
            "fpmatch" => match PatternMatcher::new(&[f[1]]) {
                Ok(pm) => {
                    assert_eq!(f[4], "ok", "{line:?} should be refused");
                    assert_eq!(
                        pm.matches_or_parent_matches(f[2]),
                        f[3] == "true",
                        "{line:?}"
                    );
                }
                Err(_) => assert_eq!(f[4], "bad", "{line:?} should be accepted"),
            },
            other => panic!("unknown case kind {other}"),
        }
        n += 1;
    }
    assert_eq!(n, 126);
}

#[test]
fn go_filepath_match_cases() {
    for line in CASES.lines().filter(|l| l.starts_with("fpmatch\t")) {
        let f: Vec<&str> = line.split('\t').collect();
        let got = go_match(f[1], f[2]);
        if f[4] == "bad" {
            assert!(got.is_err(), "{line:?}");
        } else if !f[2].contains('/') {
            // With a `/` in the name, the expectation is patternmatcher's parent
            // rule, not filepath.Match's.
            assert_eq!(got, Ok(f[3] == "true"), "{line:?}");
        } else {
            assert!(got.is_ok(), "{line:?}");
        }
    }
    // filepath.Match itself: `*` and `?` never cross a `/`.
    for (p, s, want) in [
        ("a*", "ab/c", false),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a?b", "a/b", false),
        ("*/*.go", "x/y.go", true),
    ] {
        assert_eq!(go_match(p, s), Ok(want), "{p} {s}");
    }
}

#[test]
fn ignore_file_reading_follows_readall() {
    // ignorefile_test.go's content, plus a BOM, CRLF and an indented `#`.
    let text = "\u{FEFF}test1\r\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! \n  # not a comment\n./x/../y/\n";
    let got: Vec<String> = parse_ignore_file(text)
        .into_iter()
        .map(|l| l.pattern)
        .collect();
    assert_eq!(
        got,
        [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!",
            "# not a comment",
            "y"
        ]
    );
}

#[test]
fn exceptions_and_order() {
    let m = |p: &[&str], path: &str| {
        PatternMatcher::new(p)
            .expect("valid")
            .matches_or_parent_matches(path)
    };
    // The last matching pattern wins.
    assert!(!m(&["*.go", "!keep.go"], "keep.go"));
    assert!(m(&["!keep.go", "*.go"], "keep.go"));
    // A directory pattern excludes what is below it; an exception re-includes.
    assert!(m(&["docs"], "docs/a/b.md"));
    assert!(!m(&["docs", "!docs/README.md"], "docs/README.md"));
    assert!(m(&["docs", "!docs/README.md"], "docs/other.md"));
    // `**` crosses directories, anywhere in the pattern.
    assert!(m(&["**/*.log"], "a/b/c.log"));
    assert!(m(&["**/*.log"], "c.log"));
    assert!(m(&["a/**/z"], "a/z"));
    assert!(m(&["a/**/z"], "a/b/c/z"));
    assert!(!m(&["a/**/z"], "b/a/z"));
    // Patterns are anchored at the root (unlike .gitignore).
    assert!(!m(&["foo"], "a/foo"));
    // Classes and `?`.
    assert!(m(&["file[0-9].txt"], "file7.txt"));
    assert!(!m(&["file?.txt"], "file10.txt"));
    // An exception re-including inside an excluded directory, then excluded again.
    assert!(m(
        &["build", "!build/out", "build/out/tmp"],
        "build/out/tmp/x"
    ));
    assert!(!m(
        &["build", "!build/out", "build/out/tmp"],
        "build/out/bin"
    ));
    // A lone `!` is an error; so is a bad class.
    assert!(PatternMatcher::new(&["!"]).is_err());
    assert!(PatternMatcher::new(&["a["]).is_err());
}

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(p, text).expect("write");
}

#[test]
fn invalid_pattern_names_file_line_and_pattern() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), ".dockerignore", "# ok\nfine\n  bad[  \n");
    let err = Context::open(dir.path(), None).expect_err("invalid");
    match &err {
        ContextError::InvalidIgnorePattern(e) => {
            assert_eq!(e.line, 3);
            assert_eq!(e.pattern, "bad[");
            assert_eq!(e.span.offset(), 12);
            assert_eq!(e.span.len(), 4);
            assert!(e.file.ends_with(".dockerignore"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err
        .to_string()
        .contains(".dockerignore:3: invalid pattern \"bad[\""));
}

#[test]
fn dockerfile_specific_ignore_file_takes_precedence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, ".dockerignore", "a.txt\n");
    write(root, "a.txt", "a");
    write(root, "b.txt", "b");
    write(root, "sub/app.Dockerfile", "FROM scratch\n");
    write(root, "sub/app.Dockerfile.dockerignore", "b.txt\n");

    let ctx = Context::open(root, Some(&root.join("sub/app.Dockerfile"))).expect("open");
    assert_eq!(
        ctx.ignore_file(),
        Some(root.join("sub/app.Dockerfile.dockerignore").as_path())
    );
    assert!(ctx.is_excluded("b.txt"));
    assert!(!ctx.is_excluded("a.txt"));

    // Without a specific file, the context's .dockerignore applies.
    let ctx = Context::open(root, Some(&root.join("Dockerfile"))).expect("open");
    assert_eq!(
        ctx.ignore_file(),
        Some(root.join(".dockerignore").as_path())
    );
    assert!(ctx.is_excluded("a.txt"));
    let ctx = Context::open(root, None).expect("open");
    assert!(ctx.is_excluded("a.txt"));
}
