//! Builds and registries, each test against a real registry (Debian's
//! `docker-registry`, started on 127.0.0.1): `FROM` an image only the
//! registry has, `FROM name@digest`, `build --pull`, `build --push` and
//! `--output type=registry`, `COPY --from` and `RUN --mount from=` an image
//! only the registry has, `forge search`, images exchanged with buildah,
//! `pull -a` and `push -a`. Every forge runs with an empty
//! `XDG_CONFIG_HOME`, so a developer's config cannot change the outcome.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::registry::{pushed_digest, run_tool, skopeo_digest, TestRegistry};
use common::{archive_files, decompress_layer, forge_cmd, ok, rootfs, serve, utf8, TempDir};
use serde_json::Value;

/// A store, a build context and an empty user config dir.
struct Forge {
    home: TempDir,
    context: TempDir,
    config: TempDir,
}

impl Forge {
    /// An empty store.
    fn fresh(name: &str) -> Self {
        Self {
            home: TempDir::new(&format!("{name}-home")),
            context: TempDir::new(&format!("{name}-ctx")),
            config: TempDir::new(&format!("{name}-xdg")),
        }
    }

    /// A store with the busybox base imported as `base:latest`.
    fn with_base(name: &str) -> Self {
        let forge = Self::fresh(name);
        forge.ok(&["import", utf8(rootfs()), "base:latest"]);
        forge
    }

    /// `forge ARGS` in this store, the user config dir `config` (default:
    /// the empty one).
    fn run_with(&self, config: Option<&Path>, args: &[&str]) -> Output {
        forge_cmd(self.home.path(), args)
            .env("XDG_CONFIG_HOME", config.unwrap_or(self.config.path()))
            .output()
            .expect("forge runs")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(None, args)
    }

    /// `forge ARGS`, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        ok(&self.run(args))
    }

    /// `forge build --progress plain ARGS CONTEXT` of `dockerfile`.
    fn build(&self, dockerfile: &str, args: &[&str]) -> Output {
        std::fs::write(self.context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        all.push(utf8(self.context.path()));
        self.run(&all)
    }

    /// `forge inspect NAME`'s object.
    fn inspect(&self, name: &str) -> Value {
        let out = self.ok(&["inspect", name]);
        let mut value: Value = serde_json::from_str(&out).expect("inspect JSON");
        value[0].take()
    }

    /// The image ID of `name`.
    fn id(&self, name: &str) -> String {
        self.inspect(name)["Id"]
            .as_str()
            .expect("an Id")
            .to_string()
    }

    /// The diff IDs of `name` (`RootFS.Layers`).
    fn layers(&self, name: &str) -> Vec<String> {
        self.inspect(name)["RootFS"]["Layers"]
            .as_array()
            .expect("RootFS.Layers")
            .iter()
            .map(|l| l.as_str().expect("a diff ID").to_string())
            .collect()
    }

    /// `forge images --format json`: one object an image.
    fn images(&self) -> Vec<Value> {
        self.ok(&["images", "--no-trunc", "--format", "json"])
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
            .collect()
    }

    /// The `Digest` `forge images` lists for `repository:tag`.
    fn listed_digest(&self, repository: &str, tag: &str) -> Option<String> {
        self.images()
            .into_iter()
            .find(|i| i["Repository"] == repository && i["Tag"] == tag)
            .map(|i| i["Digest"].as_str().expect("a Digest").to_string())
    }

    /// Tags `base:latest` as `name` and pushes it; the digest pushed.
    fn push_base_as(&self, name: &str) -> String {
        self.ok(&["tag", "base:latest", name]);
        pushed_digest(&self.ok(&["push", name]))
    }
}

/// stderr as text.
fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Only the printable ASCII (miette wraps long lines, breaking long words
/// and adding its frame): `needle` is looked for in that.
fn squash(text: &str) -> String {
    text.chars().filter(char::is_ascii_graphic).collect()
}

/// Asserts that `out` failed (not a crash) and that its stderr says each of
/// `needles` (wrapping aside).
fn assert_fails_saying(out: &Output, needles: &[&str]) {
    let text = stderr(out);
    assert!(
        matches!(out.status.code(), Some(code) if code != 0 && code < 100),
        "a clean failure, not {:?}:\n{text}",
        out.status.code()
    );
    for needle in needles {
        assert!(
            squash(&text).contains(&squash(needle)),
            "stderr does not say {needle:?}:\n{text}"
        );
    }
}

/// The size `forge push` printed (`… size: N`).
fn pushed_size(stdout: &str) -> usize {
    stdout
        .lines()
        .find_map(|l| l.split_once(" size: "))
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in:\n{stdout}"))
}

/// This machine's architecture in Go's names.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Puts a two-platform OCI index as `repository:tag`: the manifest
/// `digest` (of `size` bytes) for this machine and for s390x. Returns the
/// index's digest.
fn put_index(addr: &str, repository: &str, tag: &str, digest: &str, size: usize) -> String {
    use sha2::Digest as _;
    use std::io::{Read, Write};
    let entry = |arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("s390x"), entry(host_arch())],
    }))
    .expect("JSON");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the registry");
    write!(
        stream,
        "PUT /v2/{repository}/manifests/{tag} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/vnd.oci.image.index.v1+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        index.len()
    )
    .and_then(|()| stream.write_all(&index))
    .expect("send the index");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    format!("sha256:{:x}", sha2::Sha256::digest(&index))
}

/// The tags skopeo lists for `docker://REPO`, sorted.
fn skopeo_tags(repository: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&run_tool(
        "skopeo",
        &[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{repository}"),
        ],
    ))
    .expect("skopeo list-tags JSON");
    let mut tags: Vec<String> = list["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().expect("a tag").to_string())
        .collect();
    tags.sort();
    tags
}

#[test]
fn from_an_image_only_the_registry_has_pulls_it() {
    let registry = TestRegistry::start("build-from");
    let source = Forge::with_base("rb-from-src");
    let name = format!("{}/t/bb:1", registry.addr);
    let digest = source.push_base_as(&name);

    let fresh = Forge::fresh("rb-from-fresh");
    assert!(fresh.images().is_empty());
    let out = fresh.build(
        &format!("FROM {name}\nRUN echo built > /built.txt\n"),
        &["-t", "app:1"],
    );
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("pulling {name}")),
        "{}",
        stderr(&out)
    );
    // The base is in the new store now, with the digest the registry has.
    assert_eq!(
        fresh.listed_digest(&format!("{}/t/bb", registry.addr), "1"),
        Some(digest),
        "{:#?}",
        fresh.images()
    );
    assert_eq!(fresh.id(&name), source.id("base:latest"));
    // The image built on it: the base's layer, then the RUN's.
    let base_layers = source.layers("base:latest");
    let built = fresh.layers("app:1");
    assert_eq!(built.len(), base_layers.len() + 1, "{built:?}");
    assert_eq!(built[..base_layers.len()], base_layers[..]);
}

#[test]
fn from_name_at_digest_pins_the_image() {
    let registry = TestRegistry::start("build-pin");
    let source = Forge::with_base("rb-pin-src");
    let repo = format!("{}/t/bb", registry.addr);
    source.ok(&["tag", "base:latest", &format!("{repo}:1")]);
    let pushed = source.ok(&["push", &format!("{repo}:1")]);
    let digest = pushed_digest(&pushed);

    let fresh = Forge::fresh("rb-pin-fresh");
    let pinned = format!("{repo}@{digest}");
    ok(&fresh.build(
        &format!("FROM {pinned}\nRUN echo pinned > /pinned.txt\n"),
        &["-t", "pinned:1"],
    ));
    assert_eq!(fresh.id(&pinned), source.id("base:latest"));
    assert_eq!(fresh.layers("pinned:1")[0], source.layers("base:latest")[0]);

    // `forge pull NAME@DIGEST` ends with that reference, as docker's does.
    let other = Forge::fresh("rb-pin-pull");
    let out = other.ok(&["pull", &pinned]);
    assert_eq!(out.lines().last(), Some(pinned.as_str()), "{out}");

    // Pinned to a multi-platform index (what `FROM image@sha256:…` usually
    // names): the image for this machine.
    let index = put_index(
        &registry.addr,
        "t/bb",
        "multi",
        &digest,
        pushed_size(&pushed),
    );
    let by_index = format!("{repo}@{index}");
    let indexed = Forge::fresh("rb-pin-index");
    let out = indexed.build(
        &format!("FROM {by_index}\nRUN echo pinned > /pinned.txt\n"),
        &["-t", "pinned:1"],
    );
    ok(&out);
    assert!(
        stderr(&out).contains(&format!("pulled {by_index}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(indexed.layers("pinned:1"), fresh.layers("pinned:1"));
    assert_eq!(indexed.id("pinned:1"), fresh.id("pinned:1"));
    // Built again: the store has it now, the registry is not asked.
    let mark = registry.mark();
    ok(&indexed.build(
        &format!("FROM {by_index}\nRUN echo pinned > /pinned.txt\n"),
        &["-t", "pinned:2"],
    ));
    assert_eq!(registry.requests_since(mark), []);

    // A digest the registry does not have: the build stops, naming it.
    let missing = format!("{repo}@sha256:{}", "ab".repeat(32));
    let out = fresh.build(
        &format!("FROM {missing}\nRUN echo never > /never.txt\n"),
        &["-t", "never:1"],
    );
    assert_fails_saying(&out, &[&missing, "not found"]);
    assert!(
        fresh.run(&["inspect", "never:1"]).status.code() != Some(0),
        "nothing was tagged"
    );
}

#[test]
fn build_pull_checks_the_registry_for_a_newer_base() {
    let registry = TestRegistry::start("build-pull");
    let name = format!("{}/t/bb:1", registry.addr);
    // Store A has the old base under the name (and pushed it).
    let first = Forge::with_base("rb-pull-a");
    first.push_base_as(&name);
    let old_layers = first.layers(&name);

    // Store B puts a newer image under the same name: the base plus a file.
    let second = Forge::with_base("rb-pull-b");
    ok(&second.build(
        "FROM base:latest\nRUN echo new > /only-in-new\n",
        &["-t", &name],
    ));
    second.ok(&["push", &name]);
    let new_layers = second.layers(&name);
    assert_eq!(new_layers.len(), old_layers.len() + 1);

    // The same Dockerfile in A: without --pull the store's base is used and
    // the registry is not asked.
    let dockerfile = format!(
        "FROM {name}\nRUN if test -e /only-in-new; then echo new; else echo old; fi > /which\n"
    );
    let mark = registry.mark();
    ok(&first.build(&dockerfile, &["-t", "app:old"]));
    assert_eq!(
        registry.requests_since(mark),
        [],
        "the store's base is used as it is"
    );
    let built = first.layers("app:old");
    assert_eq!(built.len(), old_layers.len() + 1, "{built:?}");
    assert_eq!(built[..old_layers.len()], old_layers[..]);

    // With --pull: the new base, and the RUN runs again on it (its cached
    // result was on the old one).
    let mark = registry.mark();
    ok(&first.build(&dockerfile, &["--pull", "-t", "app:new"]));
    let asked = registry.requests_since(mark);
    assert!(
        asked
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/t/bb/manifests/1")),
        "{asked:#?}"
    );
    assert_eq!(
        first.layers(&name),
        new_layers,
        "the name points at the new base"
    );
    let built_new = first.layers("app:new");
    assert_eq!(built_new.len(), new_layers.len() + 1, "{built_new:?}");
    assert_eq!(built_new[..new_layers.len()], new_layers[..]);
    assert_ne!(
        built_new.last(),
        built.last(),
        "/which differs: the RUN saw the new base's file"
    );

    // --pull again: the registry has nothing newer; nothing is downloaded and
    // the build is the same image.
    let mark = registry.mark();
    ok(&first.build(&dockerfile, &["--pull", "-t", "app:again"]));
    let asked = registry.requests_since(mark);
    assert!(
        !asked.iter().any(|r| r.path.contains("/blobs/")),
        "{asked:#?}"
    );
    assert_eq!(first.id("app:again"), first.id("app:new"));
}

#[test]
fn build_push_and_output_registry_push_the_image() {
    let registry = TestRegistry::start("build-push");
    let forge = Forge::with_base("rb-push");
    let addr = &registry.addr;

    // --push with -t.
    let built = format!("{addr}/t/built:1");
    let metadata = forge.home.path().join("metadata.json");
    ok(&forge.build(
        "FROM base:latest\nRUN echo pushed > /pushed.txt\n",
        &["--push", "-t", &built, "--metadata-file", utf8(&metadata)],
    ));
    let in_store = forge
        .listed_digest(&format!("{addr}/t/built"), "1")
        .expect("the built image is in the store");
    assert_eq!(skopeo_digest(&built), in_store);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(&metadata).expect("metadata file")).expect("JSON");
    assert_eq!(meta["containerimage.digest"], in_store.as_str());

    // type=registry,name=: the image has no -t, the name is where it goes.
    let named = format!("{addr}/t/named:1");
    ok(&forge.build(
        "FROM base:latest\nRUN echo named > /named.txt\n",
        &["--output", &format!("type=registry,name={named}")],
    ));
    let named_digest = skopeo_digest(&named);
    assert_eq!(
        forge.listed_digest(&format!("{addr}/t/named"), "1"),
        Some(named_digest.clone())
    );
    // What went up pulls back as the same image.
    let fresh = Forge::fresh("rb-push-fresh");
    fresh.ok(&["pull", &named]);
    assert_eq!(fresh.id(&named), forge.id(&named));
    assert_eq!(
        fresh.listed_digest(&format!("{addr}/t/named"), "1"),
        Some(named_digest)
    );

    // type=image,push=true with -t.
    let image = format!("{addr}/t/image:2");
    ok(&forge.build(
        "FROM base:latest\nRUN echo image > /image.txt\n",
        &["--output", "type=image,push=true", "-t", &image],
    ));
    assert_eq!(
        Some(skopeo_digest(&image)),
        forge.listed_digest(&format!("{addr}/t/image"), "2")
    );

    // --push (or type=registry) without a name: a clear error, and nothing
    // sent to the registry.
    let mark = registry.mark();
    let out = forge.build(
        "FROM base:latest\nRUN echo nameless > /nameless.txt\n",
        &["--push"],
    );
    assert_fails_saying(&out, &["pushing needs a name", "-t"]);
    let out = forge.build(
        "FROM base:latest\nRUN echo nameless > /nameless.txt\n",
        &["--output", "type=registry"],
    );
    assert_fails_saying(&out, &["pushing needs a name"]);
    assert_eq!(registry.requests_since(mark), []);
}

#[test]
fn search_lists_repositories_and_tags() {
    let registry = TestRegistry::start("search");
    let forge = Forge::with_base("rb-search");
    let addr = &registry.addr;
    for name in ["t/alpha:1", "t/alpha:2", "t/beta:x", "other/gamma:1"] {
        forge.push_base_as(&format!("{addr}/{name}"));
    }

    // The table: t/alpha and t/beta with their tags, not other/gamma.
    let table = forge.ok(&["search", &format!("{addr}/t/")]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "TAGS"],
            vec![format!("{addr}/t/alpha").as_str(), "1,", "2"],
            vec![format!("{addr}/t/beta").as_str(), "x"],
        ],
        "{table}"
    );

    // JSON: one object a line, with Name and Tags.
    let json = forge.ok(&["search", "--format", "json", &format!("{addr}/t/")]);
    let objects: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(objects.len(), 2, "{json}");
    assert_eq!(objects[0]["Name"], format!("{addr}/t/alpha"));
    assert_eq!(objects[0]["Tags"], serde_json::json!(["1", "2"]));
    assert_eq!(objects[1]["Name"], format!("{addr}/t/beta"));
    assert_eq!(objects[1]["Tags"], serde_json::json!(["x"]));

    let one = forge.ok(&[
        "search",
        "--limit",
        "1",
        "--format",
        "json",
        &format!("{addr}/t/"),
    ]);
    assert_eq!(one.lines().count(), 1, "{one}");
    assert_eq!(
        serde_json::from_str::<Value>(one.trim()).expect("JSON")["Name"],
        format!("{addr}/t/alpha")
    );

    // No registry named and none configured.
    let out = forge.run(&["search", "gamma"]);
    assert_fails_saying(&out, &["no registry to search", "search = "]);
    assert!(out.stdout.is_empty());

    // The registry of `[registries] search`.
    let config = TempDir::new("rb-search-config");
    std::fs::create_dir_all(config.path().join("forge")).expect("mkdir");
    std::fs::write(
        config.path().join("forge/config.toml"),
        format!("[registries]\nsearch = \"{addr}\"\n"),
    )
    .expect("config.toml");
    let out = ok(&forge.run_with(
        Some(config.path()),
        &["search", "--format", "json", "gamma"],
    ));
    let objects: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(objects.len(), 1, "{out}");
    assert_eq!(objects[0]["Name"], format!("{addr}/other/gamma"));
    assert_eq!(objects[0]["Tags"], serde_json::json!(["1"]));

    // A server without a catalog (404 to everything).
    let url = serve(Vec::new(), Some("/nothing-is-here"), 8);
    let host = url.trim_start_matches("http://");
    let out = forge.run(&["search", &format!("{host}/t/")]);
    assert_fails_saying(&out, &[&format!("the registry {host}"), "/v2/_catalog"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn copy_from_and_mount_from_pull_what_the_store_lacks() {
    let registry = TestRegistry::start("build-sources");
    let addr = &registry.addr;
    let source = Forge::with_base("rb-sources-src");
    for name in ["bb", "tool", "mnt"] {
        source.push_base_as(&format!("{addr}/t/{name}:1"));
    }
    let (bb, tool, mnt) = (
        format!("{addr}/t/bb:1"),
        format!("{addr}/t/tool:1"),
        format!("{addr}/t/mnt:1"),
    );
    let dockerfile = format!(
        "FROM {bb}\n\
         COPY --from={tool} /bin/busybox /tool\n\
         COPY --from={bb} /bin/busybox /again\n\
         RUN --mount=type=bind,from={mnt},target=/m cmp /m/bin/busybox /tool && cmp /tool /again\n"
    );
    let fresh = Forge::fresh("rb-sources-fresh");
    ok(&fresh.build(&dockerfile, &["-t", "app:1"]));
    for name in ["bb", "tool", "mnt"] {
        assert_eq!(
            fresh.id(&format!("{addr}/t/{name}:1")),
            source.id("base:latest"),
            "t/{name} was pulled"
        );
    }
    assert_eq!(
        fresh.layers("app:1").len(),
        source.layers("base:latest").len() + 3
    );

    // --pull asks for each image once, though t/bb is both FROM and COPY --from.
    let mark = registry.mark();
    let out = fresh.build(&dockerfile, &["--pull", "-t", "app:2"]);
    ok(&out);
    let asked = registry.requests_since(mark);
    for name in ["bb", "tool", "mnt"] {
        let gets = asked
            .iter()
            .filter(|r| r.method == "GET" && r.path == format!("/v2/t/{name}/manifests/1"))
            .count();
        assert_eq!(gets, 1, "t/{name}: {asked:#?}");
    }
    assert_eq!(stderr(&out).matches(&format!("pulling {bb}\n")).count(), 1);
    assert_eq!(fresh.id("app:2"), fresh.id("app:1"));
}

/// `buildah --root … --runroot … --storage-driver vfs ARGS`.
fn buildah(storage: &Path, args: &[&str]) -> String {
    let root = storage.join("root");
    let runroot = storage.join("runroot");
    let mut all = vec![
        "--root",
        utf8(&root),
        "--runroot",
        utf8(&runroot),
        "--storage-driver",
        "vfs",
    ];
    all.extend_from_slice(args);
    run_tool("buildah", &all)
}

#[test]
fn buildah_and_forge_exchange_images() {
    let registry = TestRegistry::start("buildah");
    let addr = &registry.addr;
    let source = Forge::with_base("rb-buildah-src");
    let storage = TempDir::new("rb-buildah-storage");
    let original = format!("{addr}/t/bb:1");
    source.push_base_as(&original);

    // forge → registry → buildah → registry → forge: the same layers.
    buildah(
        storage.path(),
        &[
            "pull",
            "--quiet",
            "--tls-verify=false",
            &format!("docker://{original}"),
        ],
    );
    let relayed = format!("{addr}/t/frombuildah:1");
    buildah(
        storage.path(),
        &[
            "push",
            "--quiet",
            "--tls-verify=false",
            &original,
            &format!("docker://{relayed}"),
        ],
    );
    let fresh = Forge::fresh("rb-buildah-fresh");
    fresh.ok(&["pull", &relayed]);
    assert_eq!(fresh.layers(&relayed), source.layers("base:latest"));

    // An image buildah made: a file in an empty image.
    let file = storage.path().join("hello.txt");
    std::fs::write(&file, "hello from buildah\n").expect("file");
    let container = buildah(storage.path(), &["from", "--quiet", "scratch"]);
    let container = container.trim();
    buildah(
        storage.path(),
        &["copy", "--quiet", container, utf8(&file), "/hello.txt"],
    );
    buildah(
        storage.path(),
        &["commit", "--quiet", container, "made-by-buildah:1"],
    );
    let made = format!("{addr}/t/madebybuildah:1");
    buildah(
        storage.path(),
        &[
            "push",
            "--quiet",
            "--tls-verify=false",
            "made-by-buildah:1",
            &format!("docker://{made}"),
        ],
    );
    fresh.ok(&["pull", &made]);
    let inspect = fresh.inspect(&made);
    assert_eq!(
        inspect["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspect:#}"
    );
    assert_eq!(
        inspect["Id"],
        skopeo_config_digest(&made),
        "forge's ID is the config digest the registry has"
    );
    let saved = fresh.home.path().join("made.tar");
    fresh.ok(&["save", "-o", utf8(&saved), &made]);
    let archive = std::fs::read(&saved).expect("saved archive");
    let found = archive_files(&archive).values().any(|bytes| {
        let tar = decompress_layer(bytes);
        let mut layer = tar::Archive::new(tar.as_slice());
        let Ok(entries) = layer.entries() else {
            return false;
        };
        entries.flatten().any(|mut entry| {
            use std::io::Read;
            let name = common::clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
            let mut content = String::new();
            name == "hello.txt"
                && entry.read_to_string(&mut content).is_ok()
                && content == "hello from buildah\n"
        })
    });
    assert!(found, "a layer of the saved image has hello.txt");
}

/// The config digest of `docker://REF` (skopeo's `--raw` manifest).
fn skopeo_config_digest(reference: &str) -> String {
    let raw: Value = serde_json::from_str(&run_tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .expect("manifest JSON");
    raw["config"]["digest"]
        .as_str()
        .expect("a config digest")
        .to_string()
}

#[test]
fn pull_all_tags_and_push_all_tags() {
    let registry = TestRegistry::start("all-tags");
    let addr = &registry.addr;
    let source = Forge::with_base("rb-all-src");
    // A second image: the same files, another config.
    source.ok(&[
        "import",
        utf8(rootfs()),
        "other:latest",
        "-c",
        "CMD [\"true\"]",
    ]);
    let repo = format!("{addr}/t/multi");
    source.ok(&["tag", "base:latest", &format!("{repo}:1")]);
    source.ok(&["tag", "other:latest", &format!("{repo}:2")]);
    // A repository whose name starts the same: not part of `-a t/multi`.
    source.ok(&["tag", "base:latest", &format!("{repo}ple:1")]);

    let out = source.ok(&["push", "-a", &repo]);
    assert!(
        out.starts_with(&format!("The push refers to repository [{repo}]")),
        "{out}"
    );
    assert_eq!(out.matches(": digest: ").count(), 2, "{out}");
    assert_eq!(skopeo_tags(&repo), ["1", "2"]);
    let tags_of_ple = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{repo}ple"),
        ])
        .output()
        .expect("skopeo runs");
    assert!(
        !tags_of_ple.status.success()
            || !String::from_utf8_lossy(&tags_of_ple.stdout).contains("\"1\""),
        "{repo}ple was not pushed"
    );

    let fresh = Forge::fresh("rb-all-fresh");
    fresh.ok(&["pull", "-a", &repo]);
    let mut tags: Vec<String> = fresh
        .images()
        .into_iter()
        .filter(|i| i["Repository"] == repo.as_str())
        .map(|i| i["Tag"].as_str().expect("a tag").to_string())
        .collect();
    tags.sort();
    assert_eq!(tags, ["1", "2"]);
    assert_eq!(fresh.id(&format!("{repo}:1")), source.id("base:latest"));
    assert_eq!(fresh.id(&format!("{repo}:2")), source.id("other:latest"));
    assert_ne!(source.id("base:latest"), source.id("other:latest"));
    assert_eq!(fresh.images().len(), 2, "only t/multi's tags");
}
