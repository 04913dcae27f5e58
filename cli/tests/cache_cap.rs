//! The step cache's size cap: `[cache] max-size` in `$FORGE_HOME/config.toml`
//! and `forge prune --cache --max-size`, on real builds.
//!
//! Each image is `FROM base` (the busybox rootfs, imported and tagged, so it
//! never counts) and a COPY of a file of pseudo-random bytes (incompressible:
//! the layer blob is as big as the file, and so is its snapshot if RUN layers
//! have one), vertex #2.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{forge, ok, rootfs, utf8, TempDir};

const MIB: usize = 1 << 20;

struct Fixture {
    home: TempDir,
    contexts: Vec<TempDir>,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let home = TempDir::new(&format!("cap-{name}-home"));
        ok(&forge(
            home.path(),
            &["import", utf8(rootfs()), "base:latest"],
        ));
        Self {
            home,
            contexts: Vec::new(),
        }
    }

    /// A context whose Dockerfile copies `size` pseudo-random bytes
    /// (`seed` makes them unique); returns its index.
    fn context(&mut self, seed: u64, size: usize) -> usize {
        let dir = TempDir::new(&format!("cap-ctx-{seed}"));
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM base\nCOPY data.bin /data.bin\n",
        )
        .expect("Dockerfile");
        std::fs::write(dir.path().join("data.bin"), noise(seed, size)).expect("data");
        self.contexts.push(dir);
        self.contexts.len() - 1
    }

    /// Builds context `i`; whether its COPY step (#2) was cached.
    fn build_hits(&self, i: usize) -> bool {
        let ctx = utf8(self.contexts[i].path());
        let out = forge(self.home.path(), &["build", "--progress", "plain", ctx]);
        ok(&out);
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .any(|l| l == "#2 CACHED")
    }

    fn entries_dir(&self) -> PathBuf {
        self.home.path().join("forge/v1/cache")
    }

    /// The step-cache entry files.
    fn entries(&self) -> BTreeSet<PathBuf> {
        std::fs::read_dir(self.entries_dir())
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default()
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.home.path().join("config.toml"), text).expect("config.toml");
    }

    fn prune(&self, extra: &[&str]) -> String {
        let mut args = vec!["prune", "--cache"];
        args.extend_from_slice(extra);
        ok(&forge(self.home.path(), &args))
    }
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Marks entry files as last used `age` ago.
fn age(paths: &BTreeSet<PathBuf>, age: Duration) {
    for path in paths {
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open entry");
        file.set_modified(SystemTime::now() - age)
            .expect("set mtime");
    }
}

fn all_exist(paths: &BTreeSet<PathBuf>) -> bool {
    paths.iter().all(|p| p.exists())
}

fn none_exist(paths: &BTreeSet<PathBuf>) -> bool {
    paths.iter().all(|p| !p.exists())
}

#[test]
fn the_configured_cap_removes_the_least_recently_used_entries() {
    let mut f = Fixture::new("lru");
    // The older image is the bigger one, so that the cap below holds the
    // newer one alone whether or not COPY layers have snapshots (1 MiB or
    // 2 MiB), and not both (4 MiB or 8 MiB).
    let old = f.context(1, 3 * MIB);
    let new = f.context(2, MIB);
    assert!(!f.build_hits(old));
    let old_entries = f.entries();
    assert!(!f.build_hits(new));
    let new_entries: BTreeSet<PathBuf> = f.entries().difference(&old_entries).cloned().collect();
    assert!(!old_entries.is_empty() && !new_entries.is_empty());
    // Both out of the ten minutes a running build's entries are safe for.
    age(&old_entries, Duration::from_secs(2 * 3600));
    age(&new_entries, Duration::from_secs(3600));

    f.write_config("# forge's settings\n[cache]\nmax-size = \"2.5MiB\"\n");
    let text = f.prune(&[]);
    assert!(text.contains("cap: removed"), "{text}");
    assert!(!text.contains("removed 0 cache entries"), "{text}");
    assert!(none_exist(&old_entries), "{text}");
    assert!(all_exist(&new_entries), "{text}");
    ok(&forge(f.home.path(), &["fsck"]));

    // Under the cap now: a second run removes nothing.
    let text = f.prune(&[]);
    assert!(text.contains("removed 0 cache entries"), "{text}");

    assert!(
        f.build_hits(new),
        "the newer image's entry should have stayed"
    );
    assert!(!f.build_hits(old), "the older image's entry should be gone");
}

#[test]
fn max_size_overrides_the_config() {
    let mut f = Fixture::new("flag");
    let ctx = f.context(3, 100_000);
    assert!(!f.build_hits(ctx));
    let entries = f.entries();
    age(&entries, Duration::from_secs(3600));

    f.write_config("[cache]\nmax-size = \"1TB\"\n");
    let text = f.prune(&[]);
    assert!(
        text.contains("within its 1TB cap: removed 0 cache entries"),
        "{text}"
    );
    assert!(all_exist(&entries));

    let text = f.prune(&["--max-size", "0"]);
    assert!(text.contains("over its 0B cap: removed"), "{text}");
    assert!(none_exist(&entries), "{text}");
    assert!(!f.build_hits(ctx));
}

#[test]
fn a_bad_size_in_config_toml_is_reported_at_its_place() {
    let f = Fixture::new("bad");
    f.write_config("[cache]\nmax-size = \"10 parsecs\"\n");
    let out = forge(f.home.path(), &["prune", "--cache"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = f.home.path().join("config.toml");
    // miette names the file, line and column of the value.
    assert!(
        err.contains(&format!("{}:2:12", file.display())),
        "no location in:\n{err}"
    );
    assert!(
        err.contains("invalid `cache.max-size`: `10 parsecs` has an unknown unit"),
        "{err}"
    );
    assert!(err.contains("KiB, MiB, GiB, TiB"), "no help in:\n{err}");

    // An unknown key is named too.
    f.write_config("[cache]\nmax_size = \"10GB\"\n");
    let out = forge(f.home.path(), &["prune", "--cache"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `max_size` in `[cache]`"), "{err}");
    assert!(err.contains(":2:1]"), "{err}");

    // A size on the command line does not need the file.
    let text = f.prune(&["--max-size", "1GB"]);
    assert!(text.contains("within its 1GB cap"), "{text}");
}
