//! COPY and ADD cases the differential test cannot check against Docker's
//! engine (BuildKit 0.8): ADD of URLs (a local HTTP server; the engine's
//! builds run without a network), `--checksum`, zstd archives (the engine
//! does not detect them), heredocs, hostile archives and errors. Each
//! build checks its result with a RUN step that fails on a mismatch.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{forge, ok, Fixture, TempDir};

impl Fixture {
    fn build(&self, dockerfile: &str) -> Output {
        self.file("Dockerfile", dockerfile.as_bytes());
        self.forge_build(&["--network", "host"])
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Serves `body` at every path for `requests` requests; the base URL.
fn serve(body: Vec<u8>, requests: usize) -> String {
    common::serve(body, None, requests)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tar.gz with `top/one.txt`, made by the system's tar.
fn small_archive(dir: &Path, compress: &str) -> Vec<u8> {
    let src = dir.join("archive-src");
    std::fs::create_dir_all(src.join("top")).expect("mkdir");
    std::fs::write(src.join("top/one.txt"), "one\n").expect("write");
    let out = dir.join("archive");
    let status = Command::new("tar")
        .args(["--sort=name", "--mtime=@0", compress, "-cf"])
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("top")
        .status()
        .expect("tar runs");
    assert!(status.success());
    std::fs::read(&out).expect("archive")
}

#[test]
fn add_of_a_url_downloads_a_0600_file_and_checks_its_checksum() {
    let f = Fixture::new("add-url");
    let body = b"downloaded\n".to_vec();
    let sum = sha256_hex(&body);
    let base = serve(body.clone(), 2);
    let out = f.build(&format!(
        "FROM base\n\
         ADD {base}/files/data.txt /d/\n\
         ADD --checksum=sha256:{sum} {base}/other.txt /named\n\
         RUN test \"$(cat /d/data.txt)\" = downloaded && \
             test \"$(stat -c %a /d/data.txt)\" = 600 && \
             test \"$(cat /named)\" = downloaded\n"
    ));
    ok(&out);

    let g = Fixture::new("add-url-bad");
    let base = serve(body, 1);
    let wrong = "0".repeat(64);
    let out = g.build(&format!(
        "FROM base\nADD --checksum=sha256:{wrong} {base}/x.txt /x\n"
    ));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(&sum), "{err}");
}

#[test]
fn add_of_a_url_archive_is_not_extracted() {
    let f = Fixture::new("add-url-tar");
    let tgz = small_archive(f.context.path(), "-z");
    let base = serve(tgz, 1);
    let out = f.build(&format!(
        "FROM base\nADD {base}/a.tar.gz /d/\nRUN test -f /d/a.tar.gz && test ! -e /d/top\n"
    ));
    ok(&out);
}

#[test]
fn add_extracts_zstd_archives_by_content() {
    let f = Fixture::new("add-zstd");
    let zst = small_archive(f.context.path(), "--zstd");
    f.file("packed.bin", &zst);
    let out = f.build(
        "FROM base\n\
         ADD packed.bin /z/\n\
         ADD --unpack=false packed.bin /raw/\n\
         RUN test \"$(cat /z/top/one.txt)\" = one && test -f /raw/packed.bin\n",
    );
    ok(&out);
}

#[test]
fn add_refuses_an_archive_entry_that_escapes() {
    let f = Fixture::new("add-hostile");
    // A tar whose entry is `../escape`, written by hand (tar(1) refuses).
    let mut header = tar::Header::new_gnu();
    let data = b"gotcha\n";
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    {
        let name = &mut header.as_old_mut().name;
        name[..9].copy_from_slice(b"../escape");
    }
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &data[..]).expect("append");
    let bytes = builder.into_inner().expect("tar");
    f.file("evil.tar", &bytes);
    let out = f.build("FROM base\nADD evil.tar /in/\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("escape") || err.contains(".."), "{err}");
}

#[test]
fn copy_heredoc_chmod_and_missing_sources() {
    let f = Fixture::new("copy-misc");
    f.file("a.txt", b"alpha\n");
    let out = f.build(
        "# syntax=docker/dockerfile:1.4\n\
         FROM base\n\
         COPY <<EOF /etc/motd\n\
         hello\n\
         EOF\n\
         COPY --chmod=640 a.txt /m/\n\
         RUN test \"$(cat /etc/motd)\" = hello && test \"$(stat -c %a /etc/motd)\" = 644 && \
             test \"$(stat -c %a /m/a.txt)\" = 640\n",
    );
    ok(&out);

    let out = f.build("FROM base\nCOPY missing.txt /x\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.txt"), "{}", stderr(&out));

    let out = f.build("FROM base\nADD https://example.com/r.git /src\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Git"), "{}", stderr(&out));
}

#[test]
fn dockerignore_and_exclude_keep_files_out_of_the_copy() {
    let f = Fixture::new("ignore-exclude");
    f.file(".dockerignore", b"secret.txt\nlogs/\n!logs/keep.log\n");
    f.file("secret.txt", b"no\n");
    f.file("app/main.txt", b"yes\n");
    f.file("app/notes.md", b"excluded by --exclude\n");
    f.file("logs/a.log", b"ignored\n");
    f.file("logs/keep.log", b"re-included\n");
    let out = f.build(
        "# syntax=docker/dockerfile:1.7-labs\n\
         FROM base\n\
         COPY --exclude=**/*.md . /ctx/\n\
         RUN cd /ctx && find . -type f | sort | tr '\\n' ' '\n",
    );
    let log = stderr(&out);
    ok(&out);
    assert!(
        log.contains("#3 ./.dockerignore ./Dockerfile ./app/main.txt ./logs/keep.log \n"),
        "{log}"
    );
    // A source that .dockerignore removes is not found.
    let out = f.build("FROM base\nCOPY secret.txt /x\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("secret.txt"), "{}", stderr(&out));
}

#[test]
fn copy_from_a_named_build_context() {
    let f = Fixture::new("named-context");
    let extra = TempDir::new("named-context-extra");
    std::fs::create_dir_all(extra.path().join("conf")).expect("mkdir");
    std::fs::write(extra.path().join("conf/app.ini"), b"[app]\n").expect("write");
    std::fs::write(extra.path().join(".dockerignore"), b"*.secret\n").expect("write");
    std::fs::write(extra.path().join("x.secret"), b"no\n").expect("write");
    f.file(
        "Dockerfile",
        b"FROM base\nCOPY --from=extra / /opt/extra/\nRUN find /opt/extra -type f | sort\n",
    );
    let named = format!("extra={}", extra.path().display());
    let build = |args: &[&str]| {
        let mut all = vec!["--build-context", named.as_str()];
        all.extend_from_slice(args);
        f.forge_build(&all)
    };
    let out = build(&[]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#3 /opt/extra/.dockerignore"), "{log}");
    assert!(log.contains("#3 /opt/extra/conf/app.ini"), "{log}");
    assert!(!log.contains("x.secret"), "{log}");
    // Cached until the named context changes.
    let out = build(&[]);
    assert!(stderr(&out).contains("#2 CACHED"), "{}", stderr(&out));
    std::fs::write(extra.path().join("conf/app.ini"), b"[app]\nchanged\n").expect("write");
    let out = build(&[]);
    assert!(!stderr(&out).contains("#2 CACHED"), "{}", stderr(&out));
}

#[test]
fn copy_parents_keeps_the_source_directories() {
    let f = Fixture::new("parents");
    f.file("a/b/c.txt", b"c\n");
    f.file("x/y.txt", b"y\n");
    f.file("src/pkg/m.go", b"package m\n");
    f.file("src/pkg/n.txt", b"not go\n");
    f.file("src/dir/inner/z.txt", b"z\n");
    let out = f.build(
        "# syntax=docker/dockerfile:1.7-labs\n\
         FROM base\n\
         COPY --parents a/b/c.txt x/y.txt /p/\n\
         COPY --parents ./src/./pkg/*.go /q/\n\
         COPY --parents src/dir /r/\n\
         RUN find /p /q /r -type f | sort | tr '\\n' ' '\n",
    );
    let log = stderr(&out);
    ok(&out);
    assert!(
        log.contains("#5 /p/a/b/c.txt /p/x/y.txt /q/pkg/m.go /r/src/dir/inner/z.txt \n"),
        "{log}"
    );
}

#[test]
fn copy_link_makes_its_layer_on_an_empty_root() {
    let f = Fixture::new("link");
    f.file("top.txt", b"top\n");
    let out = f.build(
        "FROM base\n\
         RUN mkdir -p /srv/app /data && chmod 750 /srv && chmod 700 /data && echo keep > /srv/app/old\n\
         COPY --link top.txt /srv/app/new/\n\
         COPY --link --chown=nobody:nogroup --chmod=640 top.txt /opt/owned.txt\n\
         COPY top.txt /data/sub/\n\
         RUN stat -c '%a %u:%g %n' /srv /srv/app/new /srv/app/new/top.txt /opt/owned.txt /data \
             | tr '\\n' ' ' && cat /srv/app/old\n",
    );
    let log = stderr(&out);
    ok(&out);
    // The linked layer's own `/srv` (created 0755) is what the image shows;
    // the earlier layer's file is still there. Without --link, `/data` keeps
    // its mode.
    assert!(
        log.contains(
            "755 0:0 /srv 755 0:0 /srv/app/new 644 0:0 /srv/app/new/top.txt \
             640 65534:65534 /opt/owned.txt 700 0:0 /data keep"
        ),
        "{log}"
    );
}

/// The diff_ids of an image, from `forge inspect`.
fn diff_ids(home: &Path, image: &str) -> Vec<String> {
    let out = ok(&forge(home, &["inspect", image]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    let first = v.get(0).unwrap_or(&v);
    first["RootFS"]["Layers"]
        .as_array()
        .expect("RootFS.Layers")
        .iter()
        .map(|d| d.as_str().expect("a digest").to_string())
        .collect()
}

#[test]
fn a_copy_layer_is_extracted_only_when_a_step_runs_on_it() {
    let f = Fixture::new("lazy");
    for n in 0..50 {
        f.file(
            &format!("src/d{}/f{n}.txt", n % 5),
            format!("{n}\n").as_bytes(),
        );
    }
    let ctx = f.context.path().to_str().expect("utf-8 path");
    f.file("Dockerfile", b"FROM base\nCOPY src /app/\n");
    ok(&forge(
        f.home.path(),
        &["build", "-q", "-t", "lazy:copy", ctx],
    ));
    let copy_layer = diff_ids(f.home.path(), "lazy:copy").pop().expect("a layer");
    let snapshot = f
        .home
        .path()
        .join("forge/v1/snapshots")
        .join(copy_layer.trim_start_matches("sha256:"));
    // Written straight from the context: nothing extracted.
    assert!(!snapshot.exists(), "{} exists", snapshot.display());
    f.file(
        "Dockerfile",
        b"FROM base\nCOPY src /app/\nRUN test \"$(cat /app/d3/f13.txt)\" = 13 && ls /app | wc -l\n",
    );
    let out = forge(
        f.home.path(),
        &["build", "--progress", "plain", "-t", "lazy:run", ctx],
    );
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("CACHED"), "the COPY step is reused: {log}");
    assert!(
        snapshot.is_dir(),
        "the RUN extracted {}",
        snapshot.display()
    );
}
