//! Pushes and pulls through a fault-injecting proxy (dropped connections,
//! 500s, 429s with Retry-After, truncated and corrupted bodies) between forge
//! and a real registry: each one completes with the right digest or fails
//! with a clear error, and `forge fsck` finds the store consistent after
//! every one.

mod common;

use std::path::Path;
use std::process::Output;

use common::fault_proxy::{Fault, FaultProxy};
use common::registry::{pushed_digest, TestRegistry};
use common::{forge_cmd, ok, Fixture, TempDir};

/// The user config of these tests: 256 KiB upload chunks, so the busybox
/// layer (about 1 MB) goes up in several PATCHes that faults can interrupt.
fn config_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("forge-test-faults-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("forge")).expect("mkdir");
        std::fs::write(
            dir.join("forge/config.toml"),
            "[registries]\nchunk-size = \"256KiB\"\n",
        )
        .expect("config");
        dir
    })
}

fn forge_in(home: &Path, args: &[&str]) -> Output {
    let mut cmd = forge_cmd(home, args);
    cmd.env("XDG_CONFIG_HOME", config_dir());
    cmd.output().expect("forge runs")
}

/// A failure forge reports as such: a non-zero exit and a diagnostic with a
/// code of the registry's or the store's, never a panic.
fn assert_clear_failure(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code().is_some_and(|c| c == 1 || c == 2),
        "{what}: not a clear failure (exit {:?}):\n{stderr}",
        out.status.code()
    );
    assert!(
        stderr.contains("registry::") || stderr.contains("cache::"),
        "{what}: no diagnostic code:\n{stderr}"
    );
}

fn assert_fsck_clean(home: &Path, what: &str) {
    let out = forge_in(home, &["fsck"]);
    assert!(
        out.status.success(),
        "{what}: fsck found the store inconsistent:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_hundred_transfers_through_faults_succeed_or_fail_clearly() {
    let registry = TestRegistry::start("faults");
    let fx = Fixture::new("registry-faults");
    let home = fx.home.path();
    // The image every transfer moves, pushed once directly: its digest is
    // what every successful transfer must report.
    let direct = format!("{}/f/bb:direct", registry.addr);
    ok(&forge_in(home, &["tag", "base:latest", &direct]));
    let expected = pushed_digest(&ok(&forge_in(home, &["push", &direct])));
    let proxy = FaultProxy::start(&registry.addr, 0.25, 0x5eed);
    let (mut pushes_ok, mut pushes_failed, mut pulls_ok, mut pulls_failed) = (0, 0, 0, 0);
    for i in 0..100 {
        let name = format!("{}/f/push{i}:1", proxy.addr);
        ok(&forge_in(home, &["tag", "base:latest", &name]));
        let out = forge_in(home, &["push", &name]);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(pushed_digest(&stdout), expected, "push {i}");
            pushes_ok += 1;
        } else {
            assert_clear_failure(&out, &format!("push {i}"));
            println!("push {i} failed: {}", String::from_utf8_lossy(&out.stderr));
            pushes_failed += 1;
        }
        assert_fsck_clean(home, &format!("after push {i}"));
    }
    for i in 0..100 {
        let store = TempDir::new(&format!("registry-faults-pull{i}"));
        let name = format!("{}/f/bb:direct", proxy.addr);
        let out = forge_in(store.path(), &["pull", &name]);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(&format!("Digest: {expected}")),
                "pull {i}:\n{stdout}"
            );
            pulls_ok += 1;
        } else {
            assert_clear_failure(&out, &format!("pull {i}"));
            pulls_failed += 1;
        }
        assert_fsck_clean(store.path(), &format!("after pull {i}"));
    }
    let counts = proxy.counts();
    println!(
        "pushes: {pushes_ok} ok, {pushes_failed} failed; pulls: {pulls_ok} ok, {pulls_failed} failed; faults: {counts:?}"
    );
    // The faults happened, and retries carried most transfers through them.
    for fault in [
        Fault::Error500,
        Fault::TooMany429,
        Fault::Drop,
        Fault::Truncate,
        Fault::Corrupt,
    ] {
        assert!(
            counts.get(&fault).copied().unwrap_or(0) > 0,
            "no {fault:?}: {counts:?}"
        );
    }
    assert!(
        pushes_ok >= 90 && pulls_ok >= 90,
        "too many failures: {pushes_failed} pushes, {pulls_failed} pulls"
    );
}
