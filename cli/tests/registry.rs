//! `forge push` and `forge pull` against a real registry (Debian's
//! `docker-registry`, started by each test on 127.0.0.1), checked by skopeo,
//! and the mechanisms read from the registry's access log: a second pull
//! moves no blob, a re-push only asks, a push to another repository mounts,
//! a large blob goes up in chunks.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::registry::{pushed_digest, run_tool, skopeo_digest, Request, TestRegistry};

fn skopeo(args: &[&str]) -> String {
    run_tool("skopeo", args)
}
use common::{forge_cmd, ok, utf8, Fixture, TempDir};

/// `forge ARGS` with the store `home` and an empty user config dir (or
/// `config`'s).
fn forge_in(home: &Path, config: Option<&Path>, args: &[&str]) -> Output {
    let empty = std::env::temp_dir().join("forge-test-no-user-config");
    let mut cmd = forge_cmd(home, args);
    cmd.env("XDG_CONFIG_HOME", config.unwrap_or(&empty));
    cmd.output().expect("forge runs")
}

/// The `Digest:` line of `forge pull`.
fn pulled_digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_else(|| panic!("no Digest line in:\n{stdout}"))
        .to_string()
}

/// The image ID of `name` in the store `home`.
fn image_id(home: &Path, name: &str) -> String {
    let out = ok(&forge_in(home, None, &["inspect", name]));
    let value: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    value[0]["Id"].as_str().expect("an Id").to_string()
}

fn is_blob(r: &Request) -> bool {
    r.path.contains("/blobs/") && !r.path.contains("/blobs/uploads/")
}

#[test]
fn push_and_pull_agree_with_skopeo() {
    let registry = TestRegistry::start("roundtrip");
    let fx = Fixture::new("registry-roundtrip");
    let home = fx.home.path();
    let name = format!("{}/team/bb:1", registry.addr);
    ok(&forge_in(home, None, &["tag", "base:latest", &name]));
    let out = ok(&forge_in(home, None, &["push", &name]));
    assert!(
        out.starts_with(&format!(
            "The push refers to repository [{}/team/bb]",
            registry.addr
        )),
        "{out}"
    );
    let digest = pushed_digest(&out);
    assert_eq!(
        skopeo_digest(&name),
        digest,
        "skopeo sees the digest forge printed"
    );

    // skopeo puts an image in (read from forge's store, an OCI layout) and
    // forge pulls it by tag and by digest, in fresh stores.
    let by_skopeo = format!("{}/team/sk:2", registry.addr);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:docker.io/library/base:latest", utf8(home)),
        &format!("docker://{by_skopeo}"),
    ]);
    let skopeo_says = skopeo_digest(&by_skopeo);
    let fresh = TempDir::new("registry-roundtrip-fresh");
    let out = ok(&forge_in(fresh.path(), None, &["pull", &by_skopeo]));
    assert_eq!(pulled_digest(&out), skopeo_says, "{out}");
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    let by_digest = format!("{}/team/sk@{skopeo_says}", registry.addr);
    let fresh2 = TempDir::new("registry-roundtrip-fresh2");
    let out = ok(&forge_in(fresh2.path(), None, &["pull", &by_digest]));
    assert_eq!(pulled_digest(&out), skopeo_says, "{out}");
    // The same image everywhere: the ID is the config's digest.
    let base_id = image_id(home, "base:latest");
    assert_eq!(image_id(fresh.path(), &by_skopeo), base_id);
    assert_eq!(image_id(fresh2.path(), &by_digest), base_id);
    // images --digests and inspect show the digest the registry knows.
    let listed = ok(&forge_in(fresh.path(), None, &["images", "--digests"]));
    assert!(listed.contains(&skopeo_says), "{listed}");
    let inspect = ok(&forge_in(fresh.path(), None, &["inspect", &by_skopeo]));
    assert!(
        inspect.contains(&format!("{}/team/sk@{skopeo_says}", registry.addr)),
        "{inspect}"
    );
    // Docker's v2 schema 2 media types (skopeo converts): pulled the same.
    let v2s2 = format!("{}/team/v2s2:1", registry.addr);
    skopeo(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:docker.io/library/base:latest", utf8(home)),
        &format!("docker://{v2s2}"),
    ]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{v2s2}"),
    ]);
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    let out = ok(&forge_in(fresh2.path(), None, &["pull", &v2s2]));
    assert_eq!(pulled_digest(&out), skopeo_digest(&v2s2), "{out}");
    let inspect = ok(&forge_in(fresh2.path(), None, &["inspect", &v2s2]));
    assert!(inspect.contains("\"Layers\""), "{inspect}");
    // A digest the registry does not have fails loudly.
    let missing = format!("{}/team/sk@sha256:{}", registry.addr, "0".repeat(64));
    let out = forge_in(fresh2.path(), None, &["pull", &missing]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not found"), "{stderr}");
}

#[test]
fn the_access_log_shows_what_each_transfer_sent() {
    let registry = TestRegistry::start("mechanisms");
    let fx = Fixture::new("registry-mechanisms");
    let home = fx.home.path();
    // Small chunks, so the busybox layer (about 1 MB) goes up in several.
    let config = TempDir::new("registry-mechanisms-config");
    std::fs::create_dir_all(config.path().join("forge")).expect("mkdir");
    std::fs::write(
        config.path().join("forge/config.toml"),
        "[registries]\nchunk-size = \"256KiB\"\n",
    )
    .expect("config");
    let cfg = Some(config.path());
    let first = format!("{}/a/bb:1", registry.addr);
    ok(&forge_in(home, None, &["tag", "base:latest", &first]));

    let mark = registry.mark();
    ok(&forge_in(home, cfg, &["push", &first]));
    let pushed = registry.requests_since(mark);
    let patches = pushed
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == 202)
        .count();
    assert!(
        patches >= 4,
        "the layer went up in 256 KiB chunks: {pushed:#?}"
    );

    // A re-push only asks: HEADs and the manifest.
    let mark = registry.mark();
    ok(&forge_in(home, cfg, &["push", &first]));
    let again = registry.requests_since(mark);
    assert!(
        again
            .iter()
            .all(|r| r.method == "HEAD" || (r.method == "PUT" && r.path.contains("/manifests/"))),
        "{again:#?}"
    );
    assert_eq!(
        again.iter().filter(|r| r.method == "PUT").count(),
        1,
        "{again:#?}"
    );

    // Another repository of the same registry: the blobs are mounted.
    let second = format!("{}/b/bb:1", registry.addr);
    ok(&forge_in(home, None, &["tag", "base:latest", &second]));
    let mark = registry.mark();
    let out = ok(&forge_in(home, None, &["push", &second]));
    let mounted = registry.requests_since(mark);
    assert!(
        mounted.iter().any(|r| r.method == "POST"
            && r.path.contains("mount=")
            && r.path.contains("from=a%2Fbb")
            || r.method == "POST" && r.path.contains("mount=") && r.path.contains("from=a/bb")),
        "{mounted:#?}"
    );
    assert!(
        !mounted
            .iter()
            .any(|r| r.method == "PATCH"
                || (r.method == "PUT" && r.path.contains("/blobs/uploads/"))),
        "nothing uploaded: {mounted:#?}"
    );
    assert!(out.contains("Mounted from a/bb"), "{out}");

    // A pull into a fresh store fetches each blob once; a second pull none.
    let fresh = TempDir::new("registry-mechanisms-fresh");
    let mark = registry.mark();
    ok(&forge_in(fresh.path(), None, &["pull", &first]));
    let pulled = registry.requests_since(mark);
    let blob_gets = pulled
        .iter()
        .filter(|r| r.method == "GET" && is_blob(r))
        .count();
    assert_eq!(blob_gets, 2, "config and the one layer: {pulled:#?}");
    let mark = registry.mark();
    let out = ok(&forge_in(fresh.path(), None, &["pull", &first]));
    let again = registry.requests_since(mark);
    assert!(!again.iter().any(is_blob), "no blob moved: {again:#?}");
    assert!(out.contains("Status: Image is up to date for"), "{out}");
    assert!(out.contains("Already exists"), "{out}");
}

/// A hand-made OCI layout with an index of two images: the busybox base for
/// this machine (amd64) and the same layer with an arm64 config.
fn two_platform_layout(home: &Path, dir: &Path) -> (String, String) {
    let saved = dir.join("base.tar");
    ok(&forge_in(
        home,
        None,
        &["save", "--format", "oci", "-o", utf8(&saved), "base:latest"],
    ));
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).expect("mkdir");
    let status = Command::new("tar")
        .args(["-xf", utf8(&saved), "-C", utf8(&layout)])
        .status()
        .expect("tar runs");
    assert!(status.success());
    let blobs = layout.join("blobs/sha256");
    let put = |bytes: &[u8]| -> String {
        use sha2::Digest as _;
        let hex = format!("{:x}", sha2::Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        format!("sha256:{hex}")
    };
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(blobs.join(hex)).expect("blob")).expect("JSON")
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("JSON");
    let amd_desc = index["manifests"][0].clone();
    let amd_manifest = read(amd_desc["digest"].as_str().expect("digest"));
    let amd_config_digest = amd_manifest["config"]["digest"]
        .as_str()
        .expect("config")
        .to_string();
    let mut arm_config = read(&amd_config_digest);
    arm_config["architecture"] = "arm64".into();
    let arm_config_bytes = serde_json::to_vec(&arm_config).expect("JSON");
    let arm_config_digest = put(&arm_config_bytes);
    let mut arm_manifest = amd_manifest.clone();
    arm_manifest["config"]["digest"] = arm_config_digest.clone().into();
    arm_manifest["config"]["size"] = arm_config_bytes.len().into();
    let arm_bytes = serde_json::to_vec(&arm_manifest).expect("JSON");
    let arm_digest = put(&arm_bytes);
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"os": "linux", "architecture": arch},
        })
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(amd_desc["digest"].as_str().expect("digest"), amd_desc["size"].as_u64().expect("size") as usize, "amd64"),
            entry(&arm_digest, arm_bytes.len(), "arm64"),
        ],
    });
    let multi_bytes = serde_json::to_vec(&multi).expect("JSON");
    let multi_digest = put(&multi_bytes);
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": multi_digest,
            "size": multi_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&top).expect("JSON"),
    )
    .expect("index.json");
    (amd_config_digest, arm_config_digest)
}

#[test]
fn a_two_platform_index_pulls_the_image_for_the_platform() {
    if std::env::consts::ARCH != "x86_64" {
        return; // the hand-made index's host image is amd64
    }
    let registry = TestRegistry::start("multi");
    let fx = Fixture::new("registry-multi");
    let work = TempDir::new("registry-multi-layout");
    let (amd_config, arm_config) = two_platform_layout(fx.home.path(), work.path());
    let name = format!("{}/multi/bb:1", registry.addr);
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", utf8(&work.path().join("layout"))),
        &format!("docker://{name}"),
    ]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]);
    let index_digest = {
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(raw.as_bytes()))
    };
    let fresh = TempDir::new("registry-multi-fresh");
    let out = ok(&forge_in(fresh.path(), None, &["pull", &name]));
    assert_eq!(
        pulled_digest(&out),
        index_digest,
        "the index's digest, as docker records it"
    );
    assert_eq!(image_id(fresh.path(), &name), amd_config);
    let listed = ok(&forge_in(fresh.path(), None, &["images", "--digests"]));
    assert!(listed.contains(&index_digest), "{listed}");

    let arm = TempDir::new("registry-multi-arm");
    ok(&forge_in(
        arm.path(),
        None,
        &["pull", "--platform", "linux/arm64", &name],
    ));
    assert_eq!(image_id(arm.path(), &name), arm_config);

    let out = forge_in(
        fresh.path(),
        None,
        &["pull", "--platform", "linux/s390x", &name],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // (miette wraps long lines: the platforms are checked word by word.)
    assert!(
        stderr.contains("linux/s390x") && stderr.contains("amd64") && stderr.contains("arm64"),
        "{stderr}"
    );
}

#[test]
fn reads_go_to_a_mirror_first() {
    let mirror = TestRegistry::start("mirror");
    let fx = Fixture::new("registry-mirror");
    let home = fx.home.path();
    let on_mirror = format!("{}/x/bb:1", mirror.addr);
    ok(&forge_in(home, None, &["tag", "base:latest", &on_mirror]));
    ok(&forge_in(home, None, &["push", &on_mirror]));
    // The origin: a loopback port nothing listens on.
    let origin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let config = TempDir::new("registry-mirror-config");
    std::fs::create_dir_all(config.path().join("forge")).expect("mkdir");
    std::fs::write(
        config.path().join("forge/config.toml"),
        format!(
            "[registries.mirrors]\n\"{origin}\" = [\"{}\"]\n",
            mirror.addr
        ),
    )
    .expect("config");
    let fresh = TempDir::new("registry-mirror-fresh");
    let name = format!("{origin}/x/bb:1");
    let mark = mirror.mark();
    let out = ok(&forge_in(
        fresh.path(),
        Some(config.path()),
        &["pull", &name],
    ));
    assert!(out.contains("Status: Downloaded newer image for"), "{out}");
    let served = mirror.requests_since(mark);
    assert!(
        served
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("/x/bb/manifests/1")),
        "{served:#?}"
    );
    assert_eq!(
        image_id(fresh.path(), &name),
        image_id(home, "base:latest"),
        "the mirror's image, under the origin's name"
    );
    // Without the mirror, the origin is unreachable: a clear error.
    let out = forge_in(
        fresh.path(),
        None,
        &["pull", &format!("{origin}/x/other:1")],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the registry"), "{stderr}");
}

#[test]
fn a_pull_by_digest_moves_no_tag() {
    let registry = TestRegistry::start("by-digest");
    let fx = Fixture::new("registry-by-digest");
    let home = fx.home.path();
    let latest = format!("{}/t/bb:latest", registry.addr);
    let other = format!("{}/t/bb:other", registry.addr);
    ok(&fx.build_tagged("FROM base\nRUN echo y > /y\n", &other, &[]));
    ok(&forge_in(home, None, &["tag", "base:latest", &latest]));
    ok(&forge_in(home, None, &["push", &latest]));
    let digest = pushed_digest(&ok(&forge_in(home, None, &["push", &other])));
    // A store where `latest` is the base pulls the other image by digest.
    let fresh = TempDir::new("registry-by-digest-fresh");
    ok(&forge_in(fresh.path(), None, &["pull", &latest]));
    let pinned = format!("{}/t/bb@{digest}", registry.addr);
    let out = ok(&forge_in(fresh.path(), None, &["pull", &pinned]));
    assert!(out.trim_end().ends_with(&pinned), "{out}");
    assert_eq!(
        image_id(fresh.path(), &latest),
        image_id(home, "base:latest"),
        "latest still names the base"
    );
    assert_eq!(image_id(fresh.path(), &pinned), image_id(home, &other));
    let listed = ok(&forge_in(fresh.path(), None, &["images"]));
    assert!(
        listed
            .lines()
            .any(|l| l.contains("t/bb") && l.contains("<none>")),
        "the pinned image is listed untagged:\n{listed}"
    );
}
