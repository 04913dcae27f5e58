//! The step cache, one test per row of issue 5's table: what changed between
//! two builds, which steps hit, and what `--explain-cache` names for a miss.
//!
//! The Dockerfile's steps (vertices): #2 `RUN echo first`, #3 `COPY . /ctx/`,
//! #4 `RUN echo "v=$V"` after `ARG V=1`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{forge, ok, rootfs, TempDir};

const DOCKERFILE: &str = "FROM base\n\
    RUN echo first > /first\n\
    COPY . /ctx/\n\
    ARG V=1\n\
    RUN echo \"v=$V\" > /v\n";

struct Fixture {
    home: TempDir,
    context: TempDir,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let home = TempDir::new(&format!("cache-{name}-home"));
        let context = TempDir::new(&format!("cache-{name}-ctx"));
        ok(&forge(
            home.path(),
            &["import", rootfs().to_str().expect("utf-8"), "base:latest"],
        ));
        let f = Self { home, context };
        f.write("Dockerfile", DOCKERFILE);
        f.write("a.txt", "hello\n");
        f.write("ignored.txt", "not sent\n");
        f.write(".dockerignore", "ignored.txt\n");
        // The first build fills the cache (and the explain records).
        ok(&f.build(&[]));
        // Racily-clean protection re-hashes files changed within a second of a
        // scan; let the files age so the next scans trust the stat cache.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        f
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.context.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write");
    }

    fn build(&self, extra: &[&str]) -> Output {
        let ctx = self.context.path().to_str().expect("utf-8");
        let mut args = vec!["build", "--progress", "plain", "--explain-cache"];
        args.extend_from_slice(extra);
        args.push(ctx);
        forge(self.home.path(), &args)
    }

    /// Builds and returns, per vertex 2..=4, `None` for a hit or the
    /// explanation lines of the miss.
    fn outcome(&self, extra: &[&str]) -> BTreeMap<usize, Option<Vec<String>>> {
        let out = self.build(extra);
        ok(&out);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut result = BTreeMap::new();
        for vertex in 2..=4 {
            let prefix = format!("#{vertex} ");
            let lines: Vec<&str> = log
                .lines()
                .filter_map(|l| l.strip_prefix(&prefix))
                .collect();
            if lines.contains(&"CACHED") {
                result.insert(vertex, None);
            } else {
                let reasons = lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("cache miss: "))
                    .map(str::to_string)
                    .collect();
                result.insert(vertex, Some(reasons));
            }
        }
        result
    }
}

fn hits(o: &BTreeMap<usize, Option<Vec<String>>>, vertex: usize) -> bool {
    o[&vertex].is_none()
}

fn reasons(o: &BTreeMap<usize, Option<Vec<String>>>, vertex: usize) -> String {
    o[&vertex]
        .as_ref()
        .map(|r| r.join(" | "))
        .unwrap_or_default()
}

/// Sets a file's mtime (nanoseconds) back to what it was.
fn restore_mtime(path: &Path, before: &std::fs::Metadata) {
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    let mtime = before.modified().expect("mtime");
    file.set_times(std::fs::FileTimes::new().set_modified(mtime))
        .expect("set mtime");
}

#[test]
fn nothing_changed_every_step_hits() {
    let f = Fixture::new("nothing");
    let o = f.outcome(&[]);
    assert!(hits(&o, 2) && hits(&o, 3) && hits(&o, 4), "{o:?}");
}

#[test]
fn a_content_edit_keeping_size_and_mtime_misses_from_the_copy_on() {
    let f = Fixture::new("same-size");
    let path = f.path("a.txt");
    let before = std::fs::metadata(&path).expect("stat");
    f.write("a.txt", "HELLO\n");
    restore_mtime(&path, &before);
    let after = std::fs::metadata(&path).expect("stat");
    assert_eq!(before.len(), after.len());
    assert_eq!(before.modified().ok(), after.modified().ok());
    let o = f.outcome(&[]);
    assert!(hits(&o, 2), "{o:?}");
    assert!(reasons(&o, 3).starts_with("sources: "), "{o:?}");
    assert_eq!(reasons(&o, 4), "parent: an earlier step changed");
}

#[test]
fn a_mode_change_of_a_source_misses() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new("mode");
    std::fs::set_permissions(f.path("a.txt"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let o = f.outcome(&[]);
    assert!(hits(&o, 2), "{o:?}");
    assert!(reasons(&o, 3).starts_with("sources: "), "{o:?}");
    assert!(!hits(&o, 4), "{o:?}");
}

#[test]
fn touch_only_hits() {
    let f = Fixture::new("touch");
    let file = std::fs::File::options()
        .write(true)
        .open(f.path("a.txt"))
        .expect("open");
    file.set_times(std::fs::FileTimes::new().set_modified(std::time::SystemTime::now()))
        .expect("touch");
    let o = f.outcome(&[]);
    assert!(hits(&o, 2) && hits(&o, 3) && hits(&o, 4), "{o:?}");
}

#[test]
fn an_edit_of_a_dockerignored_file_hits() {
    let f = Fixture::new("ignored");
    f.write("ignored.txt", "changed, and still not sent\n");
    let o = f.outcome(&[]);
    assert!(hits(&o, 2) && hits(&o, 3) && hits(&o, 4), "{o:?}");
}

#[test]
fn a_build_arg_of_a_declared_arg_misses_the_runs_after_it() {
    let f = Fixture::new("arg");
    let o = f.outcome(&["--build-arg", "V=2"]);
    assert!(hits(&o, 2) && hits(&o, 3), "{o:?}");
    assert!(reasons(&o, 4).contains(r#"args V: "1" -> "2""#), "{o:?}");
}

#[test]
fn a_build_arg_of_an_undeclared_arg_hits() {
    let f = Fixture::new("undeclared");
    let o = f.outcome(&["--build-arg", "NOT_DECLARED=x"]);
    assert!(hits(&o, 2) && hits(&o, 3) && hits(&o, 4), "{o:?}");
}

#[test]
fn a_base_tag_moved_to_another_digest_misses() {
    let f = Fixture::new("base");
    // Another image under the same name: the rootfs with a different comment.
    ok(&forge(
        f.home.path(),
        &[
            "import",
            rootfs().to_str().expect("utf-8"),
            "base:latest",
            "-c",
            "ENV MOVED=1",
        ],
    ));
    let o = f.outcome(&[]);
    assert!(!hits(&o, 2) && !hits(&o, 3) && !hits(&o, 4), "{o:?}");
    assert!(
        reasons(&o, 2).contains("parent") || reasons(&o, 2).contains("env MOVED"),
        "{o:?}"
    );
}

#[test]
fn a_changed_run_text_misses_that_step_and_the_ones_after() {
    let f = Fixture::new("run-text");
    f.write(
        "Dockerfile",
        &DOCKERFILE.replace("echo first", "echo First"),
    );
    let o = f.outcome(&[]);
    assert!(reasons(&o, 2).starts_with("op: "), "{o:?}");
    // (`COPY .` also reads the Dockerfile, which changed too.)
    assert!(
        reasons(&o, 3).starts_with("parent: an earlier step changed"),
        "{o:?}"
    );
    assert!(!hits(&o, 4), "{o:?}");
}

#[test]
fn no_cache_filter_runs_the_named_stage_only() {
    let f = Fixture::new("filter");
    f.write(
        "Dockerfile",
        &DOCKERFILE.replace("FROM base", "FROM base AS app"),
    );
    ok(&f.build(&[]));
    let o = f.outcome(&["--no-cache-filter", "app"]);
    assert!(!hits(&o, 2) && !hits(&o, 3) && !hits(&o, 4), "{o:?}");
    assert_eq!(reasons(&o, 2), "--no-cache");
}

#[test]
fn prune_cache_keeps_recent_entries_and_removes_old_ones() {
    let f = Fixture::new("prune");
    // Just used: kept.
    let out = forge(f.home.path(), &["prune", "--cache"]);
    let text = ok(&out);
    assert!(text.contains("removed 0 cache entries"), "{text}");
    let o = f.outcome(&[]);
    assert!(hits(&o, 2) && hits(&o, 3) && hits(&o, 4), "{o:?}");

    // Not used for an hour: removed, with the snapshots only they needed;
    // the next build runs every step again.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let entries = f.home.path().join("forge/v1/cache");
    for entry in std::fs::read_dir(&entries).expect("cache dir") {
        let file = std::fs::File::options()
            .write(true)
            .open(entry.expect("entry").path())
            .expect("open entry");
        file.set_times(std::fs::FileTimes::new().set_modified(hour_ago))
            .expect("age entry");
    }
    let text = ok(&forge(f.home.path(), &["prune", "--cache"]));
    assert!(!text.contains("removed 0 cache entries"), "{text}");
    assert!(!text.contains(", 0 snapshots"), "{text}");
    let o = f.outcome(&[]);
    assert!(!hits(&o, 2) && !hits(&o, 3) && !hits(&o, 4), "{o:?}");
    ok(&forge(f.home.path(), &["fsck"]));
}
