//! The image commands end to end, checked by tools that are not ours: skopeo reads
//! the store as an OCI layout, umoci unpacks a copy of the image, oci-image-tool
//! validates it, runc runs a command in it. Base images come from a busybox rootfs
//! tarball made by `scripts/make-rootfs` (Debian's busybox-static).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{forge, ok, rootfs, TempDir};

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("`{program}` is needed (scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// oci-image-tool validates the OCI layout, then umoci unpacks `tag` into `bundle`.
fn validate_and_unpack(layout: &Path, tag: &str, bundle: &Path) {
    let validated = tool(
        "oci-image-tool",
        &[
            "validate",
            "--type",
            "image",
            layout.to_str().expect("utf-8"),
        ],
    );
    assert!(validated.contains("Validation succeeded"), "{validated}");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().expect("utf-8"),
        ],
    );
}

fn import(home: &Path, tar: &Path, name: &str) -> String {
    ok(&forge(
        home,
        &["import", tar.to_str().expect("utf-8"), name],
    ))
    .trim()
    .to_string()
}

fn skopeo_json(home: &Path, reference: &str, extra: &[&str]) -> serde_json::Value {
    let target = format!("oci:{}:{reference}", home.display());
    let mut args = vec!["inspect"];
    args.extend_from_slice(extra);
    args.push(&target);
    serde_json::from_str(&tool("skopeo", &args)).expect("skopeo prints JSON")
}

#[test]
fn imported_images_are_read_by_skopeo_and_unpacked_and_run_by_umoci_and_runc() {
    let home = TempDir::new("home");
    let id = import(home.path(), rootfs(), "busybox:test");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    // skopeo reads the store as it is.
    let inspect = skopeo_json(home.path(), "docker.io/library/busybox:test", &[]);
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(1));
    let config = skopeo_json(home.path(), "docker.io/library/busybox:test", &["--config"]);
    assert_eq!(config["rootfs"]["type"], "layers");
    assert_eq!(
        config["created"], "1970-01-01T00:00:00Z",
        "reproducible by default"
    );

    // A copy made by skopeo is validated by oci-image-tool and unpacked by umoci.
    let work = TempDir::new("layout");
    let layout = work.path().join("layout");
    tool(
        "skopeo",
        &[
            "copy",
            &format!(
                "oci:{}:docker.io/library/busybox:test",
                home.path().display()
            ),
            &format!("oci:{}:bb", layout.display()),
        ],
    );
    let bundle = work.path().join("bundle");
    validate_and_unpack(&layout, "bb", &bundle);
    // The unpacked tree is the tarball's tree.
    let listed = tool("tar", &["-tf", rootfs().to_str().expect("utf-8")]);
    for entry in listed.lines().filter(|l| *l != "./") {
        let path = bundle
            .join("rootfs")
            .join(entry.trim_start_matches("./").trim_end_matches('/'));
        assert!(
            path.symlink_metadata().is_ok(),
            "{entry} missing after umoci unpack"
        );
    }
    let sh = std::fs::read(bundle.join("rootfs/bin/busybox")).expect("busybox unpacked");
    assert_eq!(sh, std::fs::read("/bin/busybox").expect("host busybox"));

    // runc runs a command in it.
    let config_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config.json")).expect("json");
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", "echo hello from $(uname -s)"]);
    std::fs::write(&config_path, serde_json::to_vec(&spec).expect("json")).expect("write config");
    let runc_root = work.path().join("runc");
    let out = Command::new("runc")
        .args([
            "--root",
            runc_root.to_str().expect("utf-8"),
            "run",
            "--bundle",
        ])
        .arg(&bundle)
        .arg(format!("forge-test-{}", std::process::id()))
        .stdin(Stdio::null())
        .output()
        .expect("runc runs");
    assert!(
        out.status.success(),
        "runc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from Linux\n");
}

#[test]
fn the_same_tarball_gives_the_same_image_on_two_fresh_stores() {
    let a = TempDir::new("a");
    let b = TempDir::new("b");
    let id_a = import(a.path(), rootfs(), "busybox:same");
    let id_b = import(b.path(), rootfs(), "busybox:same");
    assert_eq!(id_a, id_b);
    let digest = |home: &Path| {
        let out = ok(&forge(home, &["images", "--format", "json"]));
        let v: serde_json::Value =
            serde_json::from_str(out.lines().next().expect("a line")).expect("json");
        v["Digest"].as_str().expect("digest").to_string()
    };
    assert_eq!(digest(a.path()), digest(b.path()));
}

#[test]
fn every_compression_of_the_tarball_gives_the_same_layer() {
    let home = TempDir::new("comp");
    let work = TempDir::new("comp-work");
    // The same message: docker's default one names the source file.
    let import = |tar: &Path, name: &str| {
        ok(&forge(
            home.path(),
            &["import", tar.to_str().expect("utf-8"), name, "-m", "rootfs"],
        ))
        .trim()
        .to_string()
    };
    let plain = import(rootfs(), "bb:plain");
    for (tool_name, ext) in [
        ("gzip", "gz"),
        ("bzip2", "bz2"),
        ("xz", "xz"),
        ("zstd", "zst"),
    ] {
        let packed = work.path().join(format!("rootfs.tar.{ext}"));
        let out = Command::new(tool_name)
            .args(["-c"])
            .arg(rootfs())
            .output()
            .expect("compressor runs");
        assert!(out.status.success());
        std::fs::write(&packed, out.stdout).expect("write");
        let id = import(&packed, &format!("bb:{ext}"));
        // Same content, same options: the same image, whatever the input compression.
        assert_eq!(id, plain, "{tool_name}");
    }
}

#[test]
fn images_tag_rmi_history_and_inspect_behave_like_docker() {
    let home = TempDir::new("cmds");
    let h = home.path();
    let id = ok(&forge(
        h,
        &[
            "import",
            rootfs().to_str().expect("utf-8"),
            "busybox:1.0",
            "-m",
            "my rootfs",
            "-c",
            "CMD [\"sh\"]",
            "-c",
            "ENV GREETING=hi",
            "-c",
            "EXPOSE 8080",
            "-c",
            "WORKDIR /srv",
        ],
    ))
    .trim()
    .to_string();
    let short = &id[7..19];

    let table = ok(&forge(h, &["images"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY   TAG   IMAGE ID"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("busybox      1.0   ") && lines[1].contains(short),
        "{table}"
    );

    ok(&forge(
        h,
        &["tag", short, "registry.example:5000/team/bb:v2"],
    ));
    let quiet = ok(&forge(h, &["images", "-q"]));
    assert_eq!(quiet.trim(), short, "one ID for two names");
    let filtered = ok(&forge(h, &["images", "registry.example:5000/team/bb"]));
    assert_eq!(filtered.lines().count(), 2, "{filtered}");

    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&forge(h, &["inspect", "busybox:1.0"]))).expect("json");
    let img = &inspect[0];
    assert_eq!(img["Id"], id.as_str());
    assert_eq!(img["Comment"], "my rootfs");
    assert_eq!(img["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(img["Config"]["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(
        img["Config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(img["Config"]["WorkingDir"], "/srv");
    assert_eq!(img["RepoTags"].as_array().map(Vec::len), Some(2));

    let history = ok(&forge(h, &["history", "busybox:1.0"]));
    let rows: Vec<&str> = history.lines().collect();
    assert!(rows[0].starts_with("IMAGE"), "{history}");
    assert!(
        rows[1].starts_with(short) && rows[1].ends_with("my rootfs"),
        "{history}"
    );

    // By name with another name left: untag only.
    let out = ok(&forge(h, &["rmi", "busybox:1.0"]));
    assert_eq!(out.trim(), "Untagged: busybox:1.0");
    // The last name: untag and delete.
    let out = ok(&forge(h, &["rmi", "registry.example:5000/team/bb:v2"]));
    assert!(
        out.contains("Untagged: registry.example:5000/team/bb:v2")
            && out.contains("Deleted: sha256:"),
        "{out}"
    );
    assert_eq!(ok(&forge(h, &["images", "-q"])), "");
    let prune = ok(&forge(h, &["prune"]));
    assert!(prune.contains("reclaimed"), "{prune}");
}

#[test]
fn errors_name_the_image_and_exit_1() {
    let home = TempDir::new("errors");
    let out = forge(home.path(), &["inspect", "nope:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`nope:1`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = forge(home.path(), &["tag", "x", "Bad:Name"]);
    assert_eq!(out.status.code(), Some(1));
    let out = forge(home.path(), &["import", "/does/not/exist.tar"]);
    assert_eq!(out.status.code(), Some(2));
    let out = forge(
        home.path(),
        &[
            "import",
            rootfs().to_str().expect("utf-8"),
            "x:1",
            "-c",
            "RUN true",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be applied by import"));
}

/// A tarball big enough that an import takes a noticeable time.
fn big_tarball(dir: &Path) -> PathBuf {
    let root = dir.join("big-root");
    std::fs::create_dir_all(root.join("data")).expect("mkdir");
    // Deterministic, poorly compressible bytes (xorshift).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for f in 0..8 {
        let mut bytes = Vec::with_capacity(4 << 20);
        for _ in 0..(4 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(root.join(format!("data/blob{f}")), bytes).expect("write");
    }
    let tar = dir.join("big.tar");
    tool(
        "tar",
        &[
            "-C",
            root.to_str().expect("utf-8"),
            "-cf",
            tar.to_str().expect("utf-8"),
            ".",
        ],
    );
    tar
}

#[test]
fn a_killed_import_never_leaves_an_inconsistent_store() {
    let home = TempDir::new("kill");
    let work = TempDir::new("kill-work");
    let tar = big_tarball(work.path());
    import(home.path(), rootfs(), "busybox:before");
    // Time one import to spread the kills over it.
    let start = std::time::Instant::now();
    import(home.path(), &tar, "big:timing");
    let full = start.elapsed().as_millis().max(20) as u64;
    let mut seed: u64 = 42;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = (seed >> 33) % (full + full / 4);
        let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
            .args([
                "import",
                tar.to_str().expect("utf-8"),
                &format!("big:{round}"),
            ])
            .env("FORGE_HOME", home.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("forge starts");
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let fsck = forge(home.path(), &["fsck"]);
        assert!(
            fsck.status.success(),
            "round {round} (killed after {delay} ms): fsck failed:\n{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        // Every image the store lists is readable by skopeo.
        let listed = ok(&forge(home.path(), &["images", "--format", "json"]));
        for line in listed.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            let repo = v["Repository"].as_str().expect("repo");
            let tag = v["Tag"].as_str().expect("tag");
            skopeo_json(home.path(), &format!("docker.io/library/{repo}:{tag}"), &[]);
        }
    }
}

#[test]
fn save_writes_archives_that_skopeo_umoci_and_oci_image_tool_read_and_load_reads_back() {
    let home = TempDir::new("save");
    let work = TempDir::new("save-work");
    let h = home.path();
    let id = import(h, rootfs(), "busybox:saved");
    ok(&forge(
        h,
        &["tag", "busybox:saved", "registry.example/team/bb:v1"],
    ));
    let docker_tar = work.path().join("docker.tar");
    let oci_tar = work.path().join("oci.tar");
    let d = docker_tar.to_str().expect("utf-8");
    let o = oci_tar.to_str().expect("utf-8");
    ok(&forge(h, &["save", "-o", d, "busybox:saved"]));
    ok(&forge(
        h,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            o,
            "busybox:saved",
            "registry.example/team/bb:v1",
        ],
    ));

    // Reproducible: saving again gives the same bytes.
    let again = work.path().join("again.tar");
    ok(&forge(
        h,
        &[
            "save",
            "-o",
            again.to_str().expect("utf-8"),
            "busybox:saved",
        ],
    ));
    assert_eq!(
        std::fs::read(&docker_tar).expect("read"),
        std::fs::read(&again).expect("read")
    );

    // docker-archive, as `docker load` and skopeo read it.
    let listing = tool("tar", &["-tf", d]);
    assert!(
        listing.lines().any(|l| l == "manifest.json")
            && listing.lines().any(|l| l == "repositories"),
        "{listing}"
    );
    let v: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{d}")],
    ))
    .expect("json");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(1));
    let cfg: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--config", &format!("docker-archive:{d}")],
    ))
    .expect("json");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1));

    // OCI layout: validated by oci-image-tool, unpacked by umoci under its tag.
    let layout = work.path().join("layout");
    std::fs::create_dir_all(&layout).expect("mkdir");
    tool("tar", &["-xf", o, "-C", layout.to_str().expect("utf-8")]);
    let bundle = work.path().join("bundle");
    validate_and_unpack(&layout, "v1", &bundle);
    assert!(bundle.join("rootfs/bin/busybox").is_file());

    // Load both into fresh stores: the same image, under the same names.
    for (archive, names) in [
        (d, vec!["busybox:saved"]),
        (o, vec!["busybox:saved", "registry.example/team/bb:v1"]),
    ] {
        let fresh = TempDir::new("load");
        let out = ok(&forge(fresh.path(), &["load", "-i", archive]));
        for n in &names {
            assert!(out.contains(&format!("Loaded image: {n}")), "{out}");
        }
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&forge(fresh.path(), &["inspect", names[0]]))).expect("json");
        assert_eq!(inspect[0]["Id"], id.as_str());
        let fsck = ok(&forge(fresh.path(), &["fsck"]));
        assert!(fsck.contains("consistent"), "{fsck}");
    }
}

#[test]
fn load_refuses_entries_that_leave_the_archive() {
    let home = TempDir::new("evil");
    let work = TempDir::new("evil-work");
    // A tar whose entry climbs out: written by hand (GNU tar would strip the `..`).
    let mut header = [0u8; 512];
    let name = b"../escape.json";
    header[..name.len()].copy_from_slice(name);
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(b"00000000002");
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(b"{}");
    bytes.resize(512 * 2, 0);
    bytes.resize(512 * 4, 0);
    let evil = work.path().join("evil.tar");
    std::fs::write(&evil, bytes).expect("write");
    let out = forge(home.path(), &["load", "-i", evil.to_str().expect("utf-8")]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("leaves the"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!work.path().join("escape.json").exists());
}

/// Serves one file over HTTP on loopback (`/rootfs.tar`; 404 elsewhere).
fn serve_file(path: &Path, requests: usize) -> String {
    let body = std::fs::read(path).expect("file to serve");
    common::serve(body, Some("/rootfs.tar"), requests)
}

#[test]
fn import_from_a_url_gives_the_same_image_as_from_the_file() {
    let home = TempDir::new("url");
    let h = home.path();
    let base = serve_file(rootfs(), 2);
    let from_file = ok(&forge(
        h,
        &[
            "import",
            rootfs().to_str().expect("utf-8"),
            "bb:file",
            "-m",
            "m",
        ],
    ));
    let from_url = ok(&forge(
        h,
        &["import", &format!("{base}/rootfs.tar"), "bb:url", "-m", "m"],
    ));
    assert_eq!(from_file, from_url);
    let missing = forge(h, &["import", &format!("{base}/nope.tar"), "bb:nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
