//! COPY from other stages with `--parents` and `--exclude`, and named
//! build contexts standing for base images (`FROM NAME` with `--build-context
//! NAME=DIR` or `NAME=docker-image://IMAGE`), built by the real binary and
//! checked in the image's layers as `forge save` writes them. (Docker's engine
//! of the differential test, BuildKit 0.8, has neither `--parents` nor
//! `--exclude`.)

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Output;

use common::{archive_files, clean_name, decompress_layer, ok, Fixture, TempDir};
use serde_json::Value;

impl Fixture {
    /// The layers of image `tag`, bottom first, read from `forge save`.
    fn layers(&self, tag: &str) -> Vec<Layer> {
        let saved = self.save_docker(tag);
        read_layers(&saved)
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One layer entry: kind (`dir`, `file`, `symlink`, ...), permission bits,
/// owner, and a regular file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u64,
    gid: u64,
    content: Option<String>,
}

/// A layer's entries by path (no leading `./` or `/`, no trailing `/`).
type Layer = BTreeMap<String, Entry>;

fn read_layers(archive: &Path) -> Vec<Layer> {
    let files = archive_files(&std::fs::read(archive).expect("saved archive"));
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).expect("manifest.json");
    manifest[0]["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| layer_entries(&decompress_layer(&files[l.as_str().expect("layer name")])))
        .collect()
}

fn layer_entries(bytes: &[u8]) -> Layer {
    let mut out = Layer::new();
    let mut tar = tar::Archive::new(bytes);
    for entry in tar.entries().expect("layer") {
        let mut entry = entry.expect("layer entry");
        let header = entry.header().clone();
        let t = header.entry_type();
        if matches!(t, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        if name.is_empty() || name == "." {
            continue;
        }
        let kind = if t.is_dir() {
            "dir"
        } else if t.is_symlink() {
            "symlink"
        } else if t.is_hard_link() {
            "hardlink"
        } else if t.is_file() {
            "file"
        } else {
            "other"
        };
        let content = (kind == "file").then(|| {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("layer content");
            String::from_utf8_lossy(&bytes).into_owned()
        });
        out.insert(
            name,
            Entry {
                kind,
                mode: header.mode().expect("mode") & 0o7777,
                uid: header.uid().expect("uid"),
                gid: header.gid().expect("gid"),
                content,
            },
        );
    }
    out
}

/// The paths of a layer's regular files.
fn files(layer: &Layer) -> Vec<&str> {
    layer
        .iter()
        .filter(|(_, e)| e.kind == "file")
        .map(|(n, _)| n.as_str())
        .collect()
}

fn entry<'l>(layer: &'l Layer, path: &str) -> &'l Entry {
    layer
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the layer: {layer:#?}"))
}

/// The base image's layer count (busybox: one).
const BASE_LAYERS: usize = 1;

const BUILD_STAGE: &str = "FROM base AS build\n\
     RUN mkdir -p /out/a/b /out/x /src/pkg /app/src/sub /app/logs /app/docs && \
         echo c > /out/a/b/c.txt && echo n > /out/a/n.md && echo y > /out/x/y.txt && \
         chmod 750 /out/a && chown 7:8 /out/a/b && \
         echo m > /src/pkg/m.go && echo t > /src/pkg/t.txt && \
         echo main > /app/src/main.rs && echo notes > /app/src/notes.txt && \
         echo deep > /app/src/sub/deep.txt && echo top > /app/top.txt && \
         echo a > /app/logs/a.log && echo keep > /app/logs/keep.log && \
         chmod 700 /app/logs && chown 3:4 /app/logs && \
         echo doc > /app/docs/keep.md\n";

#[test]
fn copy_parents_from_a_stage_keeps_the_source_directories() {
    let f = Fixture::new("stage-parents");
    let dockerfile = format!(
        "{BUILD_STAGE}\
         FROM base\n\
         COPY --from=build --parents /out/a/b/c.txt /out/x/y.txt /p/\n\
         COPY --from=build --parents /src/./pkg/*.go /q/\n\
         COPY --from=build --parents /out/./a /r/\n\
         COPY --from=build --parents /out/*/y.txt /w\n"
    );
    ok(&f.build_tagged(&dockerfile, "parents:1", &[]));
    let layers = f.layers("parents:1");
    assert_eq!(layers.len(), BASE_LAYERS + 4, "{layers:#?}");
    let [p, q, r, w] = &layers[BASE_LAYERS..] else {
        unreachable!()
    };

    // From the root: every directory on the way is kept, with the source's
    // mode and owner (not created 0755 root:root).
    assert_eq!(files(p), ["p/out/a/b/c.txt", "p/out/x/y.txt"], "{p:#?}");
    assert_eq!(entry(p, "p/out/a/b/c.txt").content.as_deref(), Some("c\n"));
    assert_eq!(entry(p, "p/out/a").mode, 0o750);
    let b = entry(p, "p/out/a/b");
    assert_eq!((b.kind, b.uid, b.gid), ("dir", 7, 8));
    assert!(!p.contains_key("p/out/a/n.md"), "{p:#?}");

    // From a `/./` pivot: the directories above it are not kept; the
    // wildcard picks the .go file only.
    assert_eq!(files(q), ["q/pkg/m.go"], "{q:#?}");
    assert!(!q.keys().any(|k| k.starts_with("q/src")), "{q:#?}");

    // A directory after the pivot comes whole, under its own name.
    assert_eq!(files(r), ["r/a/b/c.txt", "r/a/n.md"], "{r:#?}");
    assert_eq!(entry(r, "r/a").mode, 0o750);

    // A wildcard in the middle; the destination need not end in `/`.
    assert_eq!(files(w), ["w/out/x/y.txt"], "{w:#?}");

    // A path without wildcards must exist.
    let out = f.build_tagged(
        &format!("{BUILD_STAGE}FROM base\nCOPY --from=build --parents /out/missing.txt /m/\n"),
        "parents:2",
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("out/missing.txt"), "{}", stderr(&out));
}

#[test]
fn copy_exclude_from_a_stage_leaves_out_files_and_directories() {
    let f = Fixture::new("stage-exclude");
    let dockerfile = format!(
        "{BUILD_STAGE}\
         FROM base\n\
         COPY --from=build --exclude=*.txt --exclude=logs /app /dst/\n\
         COPY --from=build --exclude=**/*.txt /app/src /all/\n\
         COPY --from=build --exclude=logs --exclude=!logs/keep.log /app/ /ex/\n\
         COPY --from=build --exclude=*.md /app/docs/keep.md /single/\n\
         COPY --from=build --parents --exclude=**/*.md /out/./a /pe/\n"
    );
    let out = f.build_tagged(&dockerfile, "exclude:1", &[]);
    ok(&out);
    let layers = f.layers("exclude:1");
    assert_eq!(layers.len(), BASE_LAYERS + 5, "{layers:#?}");
    let [dst, all, ex, single, pe] = &layers[BASE_LAYERS..] else {
        unreachable!()
    };

    // Patterns are relative to the source: `*.txt` is the top-level file
    // only, and an excluded directory goes with everything in it.
    assert_eq!(
        files(dst),
        [
            "dst/docs/keep.md",
            "dst/src/main.rs",
            "dst/src/notes.txt",
            "dst/src/sub/deep.txt"
        ],
        "{dst:#?}"
    );
    assert!(!dst.contains_key("dst/top.txt"), "{dst:#?}");
    assert!(!dst.keys().any(|k| k.starts_with("dst/logs")), "{dst:#?}");

    // `**` reaches every level; the directory left empty is still copied.
    assert_eq!(files(all), ["all/main.rs"], "{all:#?}");
    assert_eq!(entry(all, "all/sub").kind, "dir");

    // An exception re-includes a file of an excluded directory, which is
    // then made with the source directory's mode and owner. (Written after
    // `--from`: the order of repeated flags survives a single-valued one
    // taken before them.)
    assert_eq!(
        files(ex),
        [
            "ex/docs/keep.md",
            "ex/logs/keep.log",
            "ex/src/main.rs",
            "ex/src/notes.txt",
            "ex/src/sub/deep.txt",
            "ex/top.txt"
        ],
        "{ex:#?}"
    );
    let logs = entry(ex, "ex/logs");
    assert_eq!((logs.mode, logs.uid, logs.gid), (0o700, 3, 4));

    // The source itself is never excluded.
    assert_eq!(files(single), ["single/keep.md"], "{single:#?}");

    // With --parents, patterns are relative to the pivot.
    assert_eq!(files(pe), ["pe/a/b/c.txt"], "{pe:#?}");

    // The same build again is all cached; another pattern is not.
    let out = f.build_tagged(&dockerfile, "exclude:1", &[]);
    let log = stderr(&out);
    ok(&out);
    assert_eq!(log.matches("CACHED").count(), 6, "{log}");
    let changed = dockerfile.replace("--exclude=*.md /app/docs", "--exclude=*.rs /app/docs");
    let out = f.build_tagged(&changed, "exclude:2", &[]);
    let log = stderr(&out);
    ok(&out);
    assert_eq!(log.matches("CACHED").count(), 4, "{log}");
}

#[test]
fn from_a_named_directory_context() {
    let f = Fixture::new("from-dir");
    let tree = TempDir::new("from-dir-tree");
    write(tree.path(), "bin/tool", b"#!/bin/sh\necho tool\n");
    write(tree.path(), "etc/app.conf", b"v=1\n");
    write(tree.path(), "junk.tmp", b"ignored\n");
    write(tree.path(), ".dockerignore", b"*.tmp\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        tree.path().join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    // Owned by someone else where the test may: the layer has root:root.
    let _ = std::os::unix::fs::chown(tree.path().join("etc/app.conf"), Some(1000), Some(1000));
    f.file("marker.txt", b"marker\n");
    let dockerfile = "FROM tree\nCOPY marker.txt /marker.txt\nCMD [\"/bin/tool\"]\n";
    let named = format!("tree={}", tree.path().display());
    let extra = ["--build-context", named.as_str()];

    let out = f.build_tagged(dockerfile, "fromdir:1", &extra);
    ok(&out);
    let layers = f.layers("fromdir:1");
    // One layer of the directory, one of the COPY: nothing of `base`.
    assert_eq!(layers.len(), 2, "{layers:#?}");
    let dir = &layers[0];
    assert_eq!(
        files(dir),
        [".dockerignore", "bin/tool", "etc/app.conf"],
        "{dir:#?}"
    );
    assert!(!dir.contains_key("junk.tmp"), "{dir:#?}");
    let tool = entry(dir, "bin/tool");
    assert_eq!(tool.mode, 0o755);
    assert_eq!(tool.content.as_deref(), Some("#!/bin/sh\necho tool\n"));
    for (path, e) in dir {
        assert_eq!((e.uid, e.gid), (0, 0), "{path} is not root's");
    }
    assert_eq!(files(&layers[1]), ["marker.txt"]);

    // Without the context, `tree` is an image the store does not have.
    let out = f.build_tagged(dockerfile, "fromdir:x", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tree"), "{}", stderr(&out));

    // Unchanged: everything cached, the same image.
    let first = ok(&f.build_tagged(dockerfile, "fromdir:1", &[&extra[..], &["-q"]].concat()));
    let out = f.build_tagged(dockerfile, "fromdir:1", &extra);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#1 CACHED"), "{log}");
    assert!(log.contains("#2 CACHED"), "{log}");
    let again = ok(&f.build_tagged(dockerfile, "fromdir:1", &[&extra[..], &["-q"]].concat()));
    assert_eq!(first, again);

    // A file of the directory changes: the base and the step after it run.
    write(tree.path(), "etc/app.conf", b"v=2\n");
    let out = f.build_tagged(dockerfile, "fromdir:2", &extra);
    let log = stderr(&out);
    ok(&out);
    assert!(!log.contains("CACHED"), "{log}");
    let layers = f.layers("fromdir:2");
    assert_eq!(
        entry(&layers[0], "etc/app.conf").content.as_deref(),
        Some("v=2\n")
    );

    // COPY --from a directory context with --parents and --exclude.
    let out = f.build_tagged(
        "FROM base\n\
         COPY --from=tree --parents --exclude=*.conf bin/tool etc /n/\n",
        "fromdir:3",
        &extra,
    );
    ok(&out);
    let layers = f.layers("fromdir:3");
    let last = layers.last().expect("a layer");
    assert_eq!(files(last), ["n/bin/tool"], "{last:#?}");

    // Other kinds of contexts are refused clearly.
    let out = f.build_tagged(
        dockerfile,
        "fromdir:4",
        &["--build-context", "tree=https://example.com/ctx.tar"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not supported yet"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn from_a_docker_image_context() {
    let f = Fixture::new("from-image");
    ok(&f.build_tagged(
        "FROM base\nRUN echo other > /other\n",
        "other:1",
        &["--network", "none"],
    ));
    let dockerfile = "FROM alpine\n\
         RUN test \"$(cat /other)\" = other\n\
         COPY --from=tools /other /copied\n\
         RUN test \"$(cat /copied)\" = other\n";
    // `alpine` is not in the store: the context stands for it.
    let out = f.build_tagged(dockerfile, "fromimage:x", &[]);
    assert!(!out.status.success());
    let out = f.build_tagged(
        dockerfile,
        "fromimage:1",
        &[
            "--build-context",
            "alpine=docker-image://other:1",
            "--build-context",
            "tools=docker-image://other:1",
        ],
    );
    ok(&out);
    let layers = f.layers("fromimage:1");
    let other = f.layers("other:1");
    // Built on `other:1`'s layers, then the three steps.
    assert_eq!(layers.len(), other.len() + 3, "{layers:#?}");
    assert_eq!(layers[..other.len()], other[..]);
    let copied = &layers[other.len() + 1];
    assert_eq!(entry(copied, "copied").content.as_deref(), Some("other\n"));
}
