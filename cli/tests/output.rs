//! `forge build`'s output and result options: `--label`, `--add-host`,
//! `--metadata-file`, `--output`, `NO_COLOR`, and the live view
//! (`--progress tty`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use common::{forge, forge_cmd, ok, Fixture};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Fixture {
    fn dockerfile(&self, text: &str) {
        self.file("Dockerfile", text.as_bytes());
    }

    fn inspect(&self, name: &str) -> Value {
        let out = ok(&forge(self.home.path(), &["inspect", name]));
        let parsed: Value = serde_json::from_str(&out).expect("inspect prints JSON");
        parsed[0].clone()
    }

    /// `forge build --progress tty ARGS CONTEXT`, standard error a pipe.
    fn tty_build(&self, args: &[&str], no_color: bool) -> Output {
        let ctx = self.context.path().to_str().expect("utf-8 path");
        let mut all = vec!["build", "--progress", "tty"];
        all.extend_from_slice(args);
        all.push(ctx);
        let mut cmd = forge_cmd(self.home.path(), &all);
        if !no_color {
            cmd.env_remove("NO_COLOR");
        }
        cmd.output().expect("forge runs")
    }
}

#[test]
fn label_sets_the_final_image_over_the_dockerfile_and_keeps_the_cache() {
    let f = Fixture::new("label");
    f.dockerfile(
        "FROM base\n\
         LABEL a=dockerfile keep=yes\n\
         RUN echo built > /built\n\
         LABEL b=dockerfile\n",
    );
    ok(&f.forge_build(&["-t", "lab:0"]));
    let out = f.forge_build(&["-t", "lab:1", "--label", "a=cli", "--label", "extra=1"]);
    let log = stderr(&out);
    ok(&out);
    // Every step is cached: the labels are not in any step's key.
    assert!(log.contains("#2 CACHED"), "{log}");
    assert!(!log.contains("#2 DONE"), "{log}");
    let plain = f.inspect("lab:0");
    let labelled = f.inspect("lab:1");
    assert_eq!(
        labelled["Config"]["Labels"],
        serde_json::json!({"a": "cli", "b": "dockerfile", "extra": "1", "keep": "yes"})
    );
    assert_eq!(
        plain["Config"]["Labels"],
        serde_json::json!({"a": "dockerfile", "b": "dockerfile", "keep": "yes"})
    );
    assert_ne!(plain["Id"], labelled["Id"]);
    // Only the config differs: same layers, same history (no entry added).
    assert_eq!(plain["RootFS"], labelled["RootFS"]);
    let history = |name: &str| -> Vec<String> {
        // Without the IMAGE column (the top image's ID differs).
        ok(&forge(f.home.path(), &["history", name]))
            .lines()
            .map(|l| l.chars().skip(15).collect())
            .collect()
    };
    assert_eq!(history("lab:0"), history("lab:1"));

    // Another value: the RUN is still cached, the image changes again.
    let out = f.forge_build(&["-t", "lab:2", "--label", "a=other"]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#2 [2/2] RUN echo built > /built"), "{log}");
    assert!(log.contains("#2 CACHED"), "{log}");
    let other = f.inspect("lab:2");
    assert_eq!(other["Config"]["Labels"]["a"], "other");
    assert_eq!(other["Config"]["Labels"].get("extra"), None);
    assert_ne!(other["Id"], labelled["Id"]);

    // No labels again: the first image, exactly.
    let out = f.forge_build(&["-q"]);
    assert_eq!(ok(&out).trim(), plain["Id"].as_str().expect("Id"));

    // A key is required.
    let out = f.forge_build(&["--label", "=v"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid --label `=v`"));
}

#[test]
fn label_applies_to_the_target_not_to_the_stages_it_uses() {
    let f = Fixture::new("label-stages");
    f.dockerfile(
        "FROM base AS lib\n\
         LABEL from=lib\n\
         RUN echo lib > /lib\n\
         FROM lib\n\
         RUN echo app > /app\n",
    );
    ok(&f.forge_build(&["--target", "lib", "-t", "lib:plain"]));
    let out = f.forge_build(&["-t", "app:1", "--label", "from=cli"]);
    let log = stderr(&out);
    ok(&out);
    assert_eq!(f.inspect("app:1")["Config"]["Labels"]["from"], "cli");
    // The lib stage's step was taken from the cache: the label did not
    // reach it.
    assert!(log.contains("#2 CACHED"), "{log}");
    assert_eq!(f.inspect("lib:plain")["Config"]["Labels"]["from"], "lib");
}

/// Every file (and every file in every tar in it, uncompressed) of the
/// archive `path`: (path, bytes).
fn archive_files(path: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(bytes: &[u8], prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut plain)
                .expect("gunzip");
            plain
        } else {
            bytes.to_vec()
        };
        let is_tar = bytes.len() >= 262 && &bytes[257..262] == b"ustar";
        if !is_tar {
            return;
        }
        let mut archive = tar::Archive::new(bytes.as_slice());
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            let name = entry.path().expect("path").display().to_string();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("read entry");
            walk(&content, &format!("{prefix}{name}!"), out);
            out.push((format!("{prefix}{name}"), content));
        }
    }
    let mut out = Vec::new();
    walk(&std::fs::read(path).expect("read archive"), "", &mut out);
    out
}

#[test]
fn add_host_reaches_every_run_and_no_layer() {
    let f = Fixture::new("add-host");
    f.dockerfile(
        "FROM base\n\
         RUN grep -F db.local /etc/hosts && grep -F v6.local /etc/hosts && touch /first\n\
         RUN grep -F db.local /etc/hosts | sed 's/^/seen: /'\n",
    );
    let out = f.forge_build(&[
        "-t",
        "hosts:1",
        "--add-host",
        "db.local:10.1.2.3",
        "--add-host",
        "v6.local=[fd00::7]",
    ]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#2 10.1.2.3\tdb.local"), "{log}");
    assert!(log.contains("#2 fd00::7\tv6.local"), "{log}");
    assert!(log.contains("#3 seen: 10.1.2.3\tdb.local"), "{log}");

    // Neither the layers nor the config hold it.
    let saved = f.home.path().join("hosts.tar");
    ok(&forge(
        f.home.path(),
        &["save", "-o", saved.to_str().expect("utf-8"), "hosts:1"],
    ));
    let files = archive_files(&saved);
    let base_name = |name: &str| name.rsplit(['!', '/']).next().unwrap_or("").to_string();
    assert!(
        files.iter().any(|(name, _)| base_name(name) == "first"),
        "the RUN's layer is there"
    );
    for (name, content) in &files {
        assert!(!name.ends_with("etc/hosts"), "{name} is in the archive");
        // The addresses are written nowhere (the names are, in the
        // history's RUN lines).
        let text = String::from_utf8_lossy(content);
        assert!(!text.contains("10.1.2.3"), "{name} holds the address");
        assert!(!text.contains("fd00::7"), "{name} holds the address");
    }

    // Without --add-host the hosts file has only its own lines.
    f.dockerfile("FROM base\nRUN cat /etc/hosts; ! grep -q db.local /etc/hosts\n");
    ok(&f.forge_build(&[]));

    for (bad, what) in [
        ("db.local", "no IP address"),
        ("db.local:300.1.1.1", "is not an IP address"),
        (":10.0.0.1", "the host name is empty"),
        ("gw:host-gateway", "host-gateway is not supported"),
    ] {
        let out = f.forge_build(&["--add-host", bad]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(stderr(&out).contains(what), "{bad}: {}", stderr(&out));
    }
}

#[test]
fn metadata_file_is_buildx_s() {
    let f = Fixture::new("metadata");
    f.dockerfile("FROM base\nRUN echo meta > /meta\n");
    let file = f.home.path().join("metadata.json");
    let out = f.forge_build(&[
        "-t",
        "meta:1",
        "-t",
        "registry.example/team/meta:v2",
        "--metadata-file",
        file.to_str().expect("utf-8"),
    ]);
    ok(&out);
    let metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("metadata file"))
            .expect("metadata is JSON");
    let image = f.inspect("meta:1");
    assert_eq!(metadata["containerimage.config.digest"], image["Id"]);
    let digest = metadata["containerimage.digest"].as_str().expect("digest");
    assert!(digest.starts_with("sha256:"), "{metadata}");
    let repo_digests: Vec<&str> = image["RepoDigests"]
        .as_array()
        .expect("RepoDigests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        repo_digests.contains(&format!("meta@{digest}").as_str()),
        "{repo_digests:?} {metadata}"
    );
    assert_eq!(metadata["containerimage.descriptor"]["digest"], digest);
    assert_eq!(
        metadata["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        metadata["image.name"],
        "docker.io/library/meta:1,registry.example/team/meta:v2"
    );

    // No tag: no name; `-q` still prints only the ID.
    let out = f.forge_build(&["-q", "--metadata-file", file.to_str().expect("utf-8")]);
    let printed = ok(&out);
    assert_eq!(printed.trim(), image["Id"].as_str().expect("Id"));
    assert_eq!(printed.lines().count(), 1);
    let metadata: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("metadata file"))
            .expect("metadata is JSON");
    assert_eq!(metadata["containerimage.config.digest"], image["Id"]);
    assert_eq!(metadata.get("image.name"), None);
}

/// Whether `text` has an SGR escape (a color or an attribute).
fn has_sgr(text: &str) -> bool {
    text.split('\x1b').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|params| {
            let end = params.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
            end.starts_with('m')
        })
    })
}

/// `forge build` of a failing RUN with colors forced on as far as the
/// environment can (a pipe taken for a terminal, a 256-color TERM).
fn failing_build(f: &Fixture, no_color: bool) -> String {
    let ctx = f.context.path().to_str().expect("utf-8");
    let mut cmd = forge_cmd(f.home.path(), &["build", "--progress", "plain", ctx]);
    cmd.env("IGNORE_IS_TERMINAL", "1")
        .env("TERM", "xterm-256color")
        .env_remove("FORCE_COLOR")
        .env_remove("CLICOLOR_FORCE");
    if !no_color {
        cmd.env_remove("NO_COLOR");
    }
    let out = cmd.output().expect("forge runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn no_color_takes_the_colors_out_of_error_reports() {
    let f = Fixture::new("no-color");
    f.dockerfile("FROM base\nRUN echo broken; exit 3\n");
    let colored = failing_build(&f, false);
    assert!(colored.contains('\x1b'), "colors expected: {colored}");
    let plain = failing_build(&f, true);
    assert!(!plain.contains('\x1b'), "{plain:?}");
    assert!(plain.contains("exit code: 3"), "{plain}");

    // A report with a source snippet, too.
    f.dockerfile("FROM base\nFROBNICATE now\n");
    let plain = failing_build(&f, true);
    assert!(!plain.contains('\x1b'), "{plain:?}");
}

#[test]
fn tty_progress_prints_finished_and_cached_lines() {
    let f = Fixture::new("tty");
    f.dockerfile(
        "FROM base AS one\n\
         RUN for i in 1 2 3 4 5; do echo one-line-$i; done; sleep 1\n\
         FROM base AS two\n\
         RUN echo two-says-hi; sleep 1\n\
         FROM one\n\
         COPY --from=two /etc/passwd /two-passwd\n",
    );
    let out = f.tty_build(&["-t", "tty:1"], true);
    let log = stderr(&out);
    ok(&out);
    assert!(!log.contains("panicked"), "{log}");
    for line in [
        " => [one 1/2] FROM base",
        " => [one 2/2] RUN for i in 1 2 3 4 5; do echo one-line-$i; done; sleep 1 ",
        " => [two 2/2] RUN echo two-says-hi; sleep 1 ",
        " => [stage-2 2/2] COPY --from=two /etc/passwd /two-passwd ",
    ] {
        assert!(log.contains(line), "{line:?} in {log:?}");
    }
    // A finished line ends with its time.
    assert!(
        log.lines().any(
            |l| l.contains(" => [two 2/2] RUN echo two-says-hi; sleep 1 ")
                && l.trim_end().ends_with('s')
        ),
        "{log:?}"
    );
    // While a RUN runs, its last lines are shown under it (the first of
    // the five scrolled away).
    assert!(log.contains("    one-line-5"), "{log:?}");
    assert!(log.contains("    one-line-3"), "{log:?}");
    // NO_COLOR: cursor moves only, no colors.
    assert!(!has_sgr(&log), "{log:?}");
    assert!(log.contains("\x1b["), "the view moves the cursor: {log:?}");
    assert!(log.contains("writing image sha256:"), "{log}");

    // Again: the cache hits in a row are one line; colors without NO_COLOR.
    let out = f.tty_build(&["-t", "tty:1"], false);
    let log = stderr(&out);
    ok(&out);
    assert!(
        log.contains("CACHED [one 2/2] RUN for i in 1 2 3 4 5; do echo one-line-$i; done; sleep 1")
            || log.contains(" => CACHED 2 steps: ")
            || log.contains(" => CACHED 3 steps: "),
        "{log:?}"
    );
    // (The step's live line shows while the cache is looked up; no
    // finished line.)
    assert!(!log.contains("\x1b[34m => [one 2/2] RUN"), "{log:?}");
    assert!(has_sgr(&log), "{log:?}");
    assert!(log.contains("\x1b[34m => "), "{log:?}");
}

/// Entries of a tar (names cleaned) with the bytes of regular files.
fn tar_entries(bytes: &[u8]) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let mut tar = tar::Archive::new(bytes);
    for entry in tar.entries().expect("tar") {
        let mut entry = entry.expect("tar entry");
        let name = common::clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        let data = entry.header().entry_type().is_file().then(|| {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("tar content");
            data
        });
        out.insert(name, data);
    }
    out
}

#[test]
fn output_exports_archives_a_tar_and_a_directory() {
    let f = Fixture::new("output-export");
    f.dockerfile(
        "FROM base\n\
         RUN echo hello > /hello && mkdir -p /gone && touch /gone/x\n\
         RUN rm -rf /gone\n",
    );
    let dir = f.home.path().join("exports");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = |name: &str| dir.join(name).to_str().expect("utf-8").to_string();

    // An OCI archive that skopeo reads, and a docker archive with the tag.
    let oci = format!("type=oci,dest={}", path("oci.tar"));
    ok(&f.forge_build(&["-t", "exported:1", "--output", &oci]));
    let inspected = std::process::Command::new("skopeo")
        .args(["inspect", &format!("oci-archive:{}", path("oci.tar"))])
        .output()
        .expect("skopeo runs");
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    let v: Value = serde_json::from_slice(&inspected.stdout).expect("skopeo JSON");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(3), "{v}");
    let docker = format!("type=docker,dest={}", path("docker.tar"));
    ok(&f.forge_build(&["-t", "exported:1", "-o", &docker]));
    let files = common::archive_files(&std::fs::read(path("docker.tar")).expect("archive"));
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).expect("manifest");
    assert_eq!(manifest[0]["RepoTags"][0], "exported:1");

    // The file system as one tar: the RUN's file, busybox, not the deleted dir.
    ok(&f.forge_build(&["-o", &format!("type=tar,dest={}", path("fs.tar"))]));
    let fs = tar_entries(&std::fs::read(path("fs.tar")).expect("fs tar"));
    assert_eq!(fs["hello"].as_deref(), Some(&b"hello\n"[..]));
    assert!(fs.contains_key("bin/busybox"), "{:?}", fs.keys());
    assert!(
        !fs.keys()
            .any(|k| k.starts_with("gone") || k.contains(".wh.")),
        "{:?}",
        fs.keys()
    );
    // `-`: the same tar on standard output.
    let out = f.forge_build(&["-q", "-o", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        tar_entries(&out.stdout).keys().collect::<Vec<_>>(),
        fs.keys().collect::<Vec<_>>()
    );

    // Unpacked into a directory (a bare path means type=local).
    ok(&f.forge_build(&["-o", &path("rootfs")]));
    assert_eq!(
        std::fs::read(dir.join("rootfs/hello")).expect("unpacked file"),
        b"hello\n"
    );
    assert!(dir.join("rootfs/bin/busybox").is_file());
    assert!(!dir.join("rootfs/gone").exists());

    // A spec that means nothing is refused before anything is built.
    let out = f.forge_build(&["-o", "type=floppy,dest=a"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown type `floppy`"),
        "{}",
        stderr(&out)
    );
}
