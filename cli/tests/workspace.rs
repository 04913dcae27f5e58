//! A forge.toml workspace built in one invocation: `examples/monorepo` (a
//! base image from a rootfs tarball, a builder with a cache mount, an app
//! that copies from the builder, a web image from a Dockerfile whose `FROM`
//! names the base) — one graph, the images in parallel where they can be.

mod common;

use std::path::Path;
use std::process::Command;

use common::{archive_files, clean_name, decompress_layer, forge, ok, repo, rootfs, TempDir};
use serde_json::Value;

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[test]
fn the_monorepo_example_builds_every_image_in_one_graph() {
    let work = TempDir::new("workspace");
    let home = TempDir::new("workspace-home");
    let tree = work.path().join("monorepo");
    copy_tree(&repo().join("examples/monorepo"), &tree);
    std::fs::copy(rootfs(), tree.join("base/rootfs.tar")).expect("rootfs.tar");
    let tree_arg = tree.to_str().expect("utf-8 path");

    let out = forge(home.path(), &["build", "--progress", "plain", tree_arg]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    for tag in [
        "example/base:1.36",
        "example/app:latest",
        "example/app:1.2.0",
        "example/web:latest",
    ] {
        assert!(
            log.contains(&format!("naming to docker.io/{tag}")),
            "{tag}: {log}"
        );
    }
    // The builder's RUN wrote the script the app copies from it.
    assert!(log.contains("built /out/bin/hello"), "{log}");

    let inspect: Value =
        serde_json::from_str(&ok(&forge(home.path(), &["inspect", "example/app:latest"])))
            .expect("inspect JSON");
    let config = &inspect[0]["Config"];
    assert_eq!(config["Entrypoint"][0], "hello");
    assert_eq!(config["User"], "app");
    let saved = home.path().join("app.tar");
    ok(&forge(
        home.path(),
        &[
            "save",
            "--format",
            "docker",
            "-o",
            saved.to_str().expect("utf-8"),
            "example/app:latest",
        ],
    ));
    let files = archive_files(&std::fs::read(&saved).expect("archive"));
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).expect("manifest");
    let top = manifest[0]["Layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(Value::as_str)
        .expect("a layer");
    let layer = decompress_layer(&files[top]);
    let mut found = None;
    let mut tar = tar::Archive::new(&layer[..]);
    for entry in tar.entries().expect("layer") {
        let entry = entry.expect("entry");
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        if name == "opt/app/bin/hello" {
            let h = entry.header();
            found = Some((h.mode().ok(), h.uid().ok(), h.gid().ok()));
        }
    }
    assert_eq!(
        found,
        Some((Some(0o755), Some(1000), Some(1000))),
        "hello in the app's top layer"
    );

    // Nothing changed: every step of every image comes from the cache.
    let again = forge(home.path(), &["build", "--progress", "plain", tree_arg]);
    let log = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(again.status.success(), "{log}");
    let cached = log.lines().filter(|l| l.ends_with(" CACHED")).count();
    assert_eq!(
        cached, 13,
        "every step that does work, in all five stages: {log}"
    );
    assert!(!log.contains(" layer "), "a layer was written again: {log}");
    assert!(
        !log.contains("built /out/bin/hello"),
        "the builder's RUN ran again: {log}"
    );

    // Each image reads its own context: an edit in web/ rebuilds only web.
    std::fs::write(tree.join("web/index.html"), "<p>changed @BUILT@</p>\n").expect("edit");
    let edited = forge(home.path(), &["build", "--progress", "plain", tree_arg]);
    let log = String::from_utf8_lossy(&edited.stderr).into_owned();
    assert!(edited.status.success(), "{log}");
    let ran: Vec<&str> = log.lines().filter(|l| l.contains(" layer ")).collect();
    assert!(
        !ran.is_empty()
            && ran
                .iter()
                .all(|l| l.starts_with("#15 ") || l.starts_with("#16 ") || l.starts_with("#18 ")),
        "{log}"
    );
}
