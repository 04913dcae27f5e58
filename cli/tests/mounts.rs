//! `RUN --mount` (tmpfs, cache, secret, bind), built by the real binary
//! and checked in the image's layers as `forge save` writes them: what the
//! RUN saw, and that neither the mounts' contents nor their mount points
//! (nor a secret's bytes, anywhere) reach the image.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Output;

use common::{
    archive_files, clean_name, decompress_layer, forge, forge_cmd, ok, utf8, Fixture, TempDir,
};
use serde_json::Value;

/// A layer's entries by path (no leading `./`, no trailing `/`), with a
/// regular file's content.
type Layer = BTreeMap<String, Option<Vec<u8>>>;

impl Fixture {
    /// The layers of image `tag`, bottom first, and its config JSON.
    fn image(&self, tag: &str) -> (Vec<Layer>, Vec<u8>) {
        let archive = std::fs::read(self.save_docker(tag)).expect("saved archive");
        let files = archive_files(&archive);
        let manifest: Value =
            serde_json::from_slice(&files["manifest.json"]).expect("manifest.json");
        let config = files[manifest[0]["Config"].as_str().expect("Config")].clone();
        let layers = manifest[0]["Layers"]
            .as_array()
            .expect("Layers")
            .iter()
            .map(|l| layer_entries(&decompress_layer(&files[l.as_str().expect("layer name")])))
            .collect();
        (layers, config)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn layer_entries(bytes: &[u8]) -> Layer {
    let mut out = Layer::new();
    let mut tar = tar::Archive::new(bytes);
    for entry in tar.entries().expect("layer") {
        let mut entry = entry.expect("layer entry");
        let t = entry.header().entry_type();
        if matches!(t, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        if name.is_empty() || name == "." {
            continue;
        }
        let content = t.is_file().then(|| {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("layer content");
            bytes
        });
        out.insert(name, content);
    }
    out
}

/// A layer's text file.
fn text(layer: &Layer, name: &str) -> String {
    match layer.get(name) {
        Some(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => panic!("{name} is not a file of the layer: {:?}", layer.keys()),
    }
}

/// The layer's paths but `etc` (the busybox base has no `/etc/hosts`, so
/// every RUN's layer keeps `/etc`, as BuildKit's do).
fn paths(layer: &Layer) -> Vec<&str> {
    layer
        .keys()
        .map(String::as_str)
        .filter(|p| *p != "etc")
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn cache_mounts_persist_across_builds_and_stay_out_of_the_image() {
    let f = Fixture::new("mount-cache");
    let first = "FROM base:latest\n\
                 RUN --mount=type=cache,target=/var/cache/thing \
                     sh -c 'echo one >> /var/cache/thing/log'\n";
    ok(&f.build_tagged(first, "cache1:latest", &[]));
    let (layers, _) = f.image("cache1:latest");
    let last = layers.last().expect("a layer");
    assert!(paths(last).is_empty(), "{:?}", last.keys());

    // Another build (nothing cached) sees the first one's file; a locked
    // user of the same id and a private one at once: the private one gets
    // a directory of its own.
    let second = "FROM base:latest\n\
                  RUN --mount=type=cache,target=/c,id=/var/cache/thing,sharing=locked,mode=0700 \
                      --mount=type=cache,target=/p,id=/var/cache/thing,sharing=private \
                      sh -c 'cat /c/log > /seen; ls -A /p > /private; \
                      stat -c %a /c > /mode; echo two >> /c/log'\n";
    let out = f.build_tagged(second, "cache2:latest", &["--no-cache"]);
    ok(&out);
    let (layers, _) = f.image("cache2:latest");
    let last = layers.last().expect("a layer");
    assert_eq!(text(last, "seen"), "one\n");
    assert_eq!(text(last, "private"), "");
    // The directory existed: its mode is the one it was made with.
    assert_eq!(text(last, "mode"), "755\n");
    assert_eq!(
        paths(last),
        ["mode", "private", "seen"],
        "{:?}",
        last.keys()
    );

    // And the cache kept what the second build wrote.
    let third = "FROM base:latest\n\
                 RUN --mount=type=cache,target=/var/cache/thing cat /var/cache/thing/log > /log\n";
    ok(&f.build_tagged(third, "cache3:latest", &["--no-cache"]));
    let (layers, _) = f.image("cache3:latest");
    assert_eq!(text(layers.last().expect("a layer"), "log"), "one\ntwo\n");
}

#[test]
fn tmpfs_mounts_are_empty_and_leave_no_mount_point() {
    let f = Fixture::new("mount-tmpfs");
    let dockerfile = "FROM base:latest\n\
         RUN --mount=type=tmpfs,target=/newdir true\n\
         RUN --mount=type=tmpfs,target=/tmp/deep/er,size=1m \
             sh -c 'test -z \"$(ls -A /tmp/deep/er)\" && grep -q \" /tmp/deep/er tmpfs \" /proc/mounts \
             && echo x > /tmp/deep/er/y && echo ok > /done'\n\
         RUN --mount=type=tmpfs,target=/bin/sub sh -c 'echo z > /bin/sub/z'\n";
    let out = f.build_tagged(dockerfile, "tmpfs:latest", &[]);
    ok(&out);
    let (layers, _) = f.image("tmpfs:latest");
    let n = layers.len();
    assert!(
        paths(&layers[n - 3]).is_empty(),
        "{:?}",
        layers[n - 3].keys()
    );
    assert_eq!(
        paths(&layers[n - 2]),
        ["done"],
        "{:?}",
        layers[n - 2].keys()
    );
    assert!(
        paths(&layers[n - 1]).is_empty(),
        "{:?}",
        layers[n - 1].keys()
    );
}

const SECRET: &[u8] = b"s3cr3t-forge-token-7f1d9a";
const ENV_SECRET: &str = "env-borne-s3cr3t-55c2e0";

#[test]
fn secrets_are_seen_by_their_run_only_and_never_stored() {
    let f = Fixture::new("mount-secret");
    let outside = TempDir::new("mount-secret-src");
    let secret_file = outside.path().join("token");
    std::fs::write(&secret_file, SECRET).expect("write secret");
    let dockerfile = "FROM base:latest\n\
         RUN --mount=type=secret,id=tok,required \
             --mount=type=secret,id=tok,target=/opt/tok,mode=0440 \
             --mount=type=secret,id=envtok,env=TOKEN \
             --mount=type=secret,id=absent \
             sh -c 'sha256sum < /run/secrets/tok | cut -d\" \" -f1 > /file-sum; \
             stat -c %a /run/secrets/tok > /file-mode; stat -c %a /opt/tok > /opt-mode; \
             printf %s \"$TOKEN\" | sha256sum | cut -d\" \" -f1 > /env-sum; \
             test ! -e /run/secrets/envtok && test ! -e /run/secrets/absent && echo ok > /checks; \
             ! touch /run/secrets/tok 2>/dev/null && echo ro >> /checks'\n\
         RUN sh -c 'ls -A /run /opt > /after 2>&1; env > /env-after'\n";
    f.file("Dockerfile", dockerfile.as_bytes());
    let src = format!("id=tok,src={}", utf8(&secret_file));
    let out = forge_cmd(
        f.home.path(),
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "secret:latest",
            "--secret",
            &src,
            "--secret",
            "id=envtok,env=FORGE_TEST_SECRET_ENV",
            utf8(f.context.path()),
        ],
    )
    .env("FORGE_TEST_SECRET_ENV", ENV_SECRET)
    .output()
    .expect("forge runs");
    ok(&out);
    let (layers, config) = f.image("secret:latest");
    let n = layers.len();
    let run = &layers[n - 2];
    let sha = |bytes: &[u8]| {
        use sha2::Digest;
        format!("{:x}\n", sha2::Sha256::digest(bytes))
    };
    assert_eq!(text(run, "file-sum"), sha(SECRET));
    assert_eq!(text(run, "env-sum"), sha(ENV_SECRET.as_bytes()));
    assert_eq!(text(run, "file-mode"), "400\n");
    assert_eq!(text(run, "opt-mode"), "440\n");
    assert_eq!(text(run, "checks"), "ok\nro\n");
    // No mount point of theirs in the layer: not /run, /run/secrets, /opt.
    assert_eq!(
        paths(run),
        ["checks", "env-sum", "file-mode", "file-sum", "opt-mode"],
        "{:?}",
        run.keys()
    );
    // The next RUN sees nothing of them.
    let after = &layers[n - 1];
    assert!(
        text(after, "after").contains("No such file"),
        "{}",
        text(after, "after")
    );
    assert!(!text(after, "env-after").contains("TOKEN="));

    // Nowhere: not in a layer, the config, the build's output, the store.
    let env_secret = ENV_SECRET.as_bytes();
    for (i, layer) in layers.iter().enumerate() {
        for (name, content) in layer {
            let content = content.as_deref().unwrap_or_default();
            assert!(
                !contains(content, SECRET) && !contains(content, env_secret),
                "layer {i}: {name} holds the secret"
            );
        }
    }
    assert!(!contains(&config, SECRET) && !contains(&config, env_secret));
    for stream in [&out.stdout, &out.stderr] {
        assert!(!contains(stream, SECRET) && !contains(stream, env_secret));
    }
    let mut stack = vec![f.home.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("store dir") {
            let path = entry.expect("entry").path();
            let meta = path.symlink_metadata().expect("stat");
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && path.file_name().is_some_and(|n| n != "saved.tar") {
                let bytes = decompress_layer(&std::fs::read(&path).expect("read store file"));
                assert!(
                    !contains(&bytes, SECRET) && !contains(&bytes, env_secret),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }

    // A required secret that was not given fails, and says which.
    let missing = "FROM base:latest\nRUN --mount=type=secret,id=nope,required true\n";
    let out = f.build_tagged(missing, "missing:latest", &[]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("secret \"nope\" not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bind_mounts_read_stages_and_the_context_and_keep_no_change() {
    let f = Fixture::new("mount-bind");
    f.file("data.txt", b"from-context\n");
    f.file("sub/inner.txt", b"inner\n");
    let dockerfile = "FROM base:latest AS src\n\
         RUN mkdir /out && echo from-stage > /out/f\n\
         FROM base:latest\n\
         RUN --mount=type=bind,from=src,source=/out,target=/mnt/s \
             --mount=type=bind,target=/ctx \
             --mount=type=bind,source=sub/inner.txt,target=/one/inner.txt \
             sh -c 'cat /mnt/s/f > /got-stage && cat /ctx/data.txt > /got-ctx \
             && cat /one/inner.txt > /got-file && ! touch /ctx/new 2>/dev/null \
             && ! touch /mnt/s/new 2>/dev/null'\n\
         RUN --mount=type=bind,target=/ctx,rw --mount=type=bind,from=src,target=/s,rw \
             sh -c 'echo changed > /ctx/data.txt && echo new > /ctx/new \
             && rm /s/out/f && echo n > /s/new && cat /ctx/data.txt > /rw-seen'\n\
         RUN --mount=type=bind,from=src,target=/s sh -c 'cat /s/out/f > /still; ls /s > /s-list'\n";
    ok(&f.build_tagged(dockerfile, "bind:latest", &[]));
    let (layers, _) = f.image("bind:latest");
    let n = layers.len();
    let (read, rw, after) = (&layers[n - 3], &layers[n - 2], &layers[n - 1]);
    assert_eq!(text(read, "got-stage"), "from-stage\n");
    assert_eq!(text(read, "got-ctx"), "from-context\n");
    assert_eq!(text(read, "got-file"), "inner\n");
    assert_eq!(
        paths(read),
        ["got-ctx", "got-file", "got-stage"],
        "{:?}",
        read.keys()
    );
    assert_eq!(text(rw, "rw-seen"), "changed\n");
    assert_eq!(paths(rw), ["rw-seen"], "{:?}", rw.keys());
    // The writable mounts' changes went nowhere.
    assert_eq!(
        std::fs::read(f.context.path().join("data.txt")).expect("context file"),
        b"from-context\n"
    );
    assert!(!f.context.path().join("new").exists());
    assert_eq!(text(after, "still"), "from-stage\n");
    assert!(!text(after, "s-list").contains("new"));

    // What a context bind mount reads is the step's input: a rebuild hits,
    // an edit of a bound file misses from that RUN on.
    let log = stderr(&f.build_tagged(dockerfile, "bind:latest", &[]));
    assert_eq!(log.matches("CACHED").count(), 4, "{log}");
    f.file("sub/inner.txt", b"edited\n");
    let out = f.build_tagged(dockerfile, "bind:latest", &["--explain-cache"]);
    let log = stderr(&out);
    ok(&out);
    // Only the first stage's RUN: the others all bind the context.
    assert_eq!(log.matches("CACHED").count(), 1, "{log}");
    assert!(log.contains("cache miss: sources"), "{log}");
    let (layers, _) = f.image("bind:latest");
    assert_eq!(text(&layers[layers.len() - 3], "got-file"), "edited\n");
}

#[test]
fn mount_steps_give_the_same_image_with_the_copy_snapshotter() {
    let dockerfile = "FROM base:latest AS src\n\
         RUN mkdir /out && echo from-stage > /out/f\n\
         FROM base:latest\n\
         RUN --mount=type=tmpfs,target=/newdir --mount=type=tmpfs,target=/bin/sub \
             --mount=type=cache,target=/var/cache/x --mount=type=bind,from=src,source=/out,target=/mnt/s \
             --mount=type=bind,target=/ctx,rw \
             sh -c 'cat /mnt/s/f /ctx/data.txt > /got && echo x > /newdir/x && echo c > /var/cache/x/c \
             && echo y > /ctx/y && mkdir -p /made && echo m > /made/m'\n";
    let mut ids = Vec::new();
    for copy in [false, true] {
        let home = TempDir::new(&format!("mount-snapshotter-{copy}"));
        let ctx = TempDir::new(&format!("mount-snapshotter-ctx-{copy}"));
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
        std::fs::write(ctx.path().join("data.txt"), "ctx\n").expect("data");
        ok(&forge(
            home.path(),
            &["import", utf8(common::rootfs()), "base:latest"],
        ));
        let mut cmd = forge_cmd(
            home.path(),
            &["build", "-q", "-t", "m:latest", utf8(ctx.path())],
        );
        if copy {
            cmd.env("FORGE_SNAPSHOTTER", "copy");
        } else {
            cmd.env_remove("FORGE_SNAPSHOTTER");
        }
        let out = cmd.output().expect("forge runs");
        ids.push(ok(&out).trim().to_string());
        assert!(!Path::new(&ctx.path().join("y")).exists());
    }
    assert_eq!(ids[0], ids[1], "overlay and copy mode differ");
}

#[test]
fn ssh_mounts_forward_an_agent_socket() {
    let f = Fixture::new("mount-ssh");
    let socket = f.home.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("a socket");
    let dockerfile = "FROM base:latest\n\
         RUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo \"$SSH_AUTH_SOCK\" > /agent\n\
         RUN --mount=type=ssh,id=other,target=/run/other.sock,required \
             test -S /run/other.sock && echo other > /other\n\
         RUN --mount=type=ssh,id=absent echo \"${SSH_AUTH_SOCK:-none}\" > /absent\n";
    let ssh_default = format!("default={}", socket.display());
    let ssh_other = format!("other={}", socket.display());
    let out = f.build_tagged(
        dockerfile,
        "ssh:latest",
        &["--ssh", &ssh_default, "--ssh", &ssh_other],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (layers, _) = f.image("ssh:latest");
    let n = layers.len();
    assert_eq!(text(&layers[n - 3], "agent"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(paths(&layers[n - 3]), ["agent"], "no mount point left");
    assert_eq!(text(&layers[n - 2], "other"), "other\n");
    assert_eq!(paths(&layers[n - 2]), ["other"]);
    // Not given and not required: skipped.
    assert_eq!(text(&layers[n - 1], "absent"), "none\n");

    // Required and not given: a clear error (when the step runs; a cached
    // step needs none of its mounts).
    let out = f.build_tagged(
        dockerfile,
        "ssh:latest",
        &["--no-cache", "--ssh", &ssh_default],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no SSH agent socket `other`"),
        "{}",
        stderr(&out)
    );
    // A path that is no socket is refused before anything runs.
    let out = f.build_tagged(dockerfile, "ssh:latest", &["--ssh", "default=/etc/passwd"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not an agent socket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_new_cache_mount_starts_from_its_from_stage() {
    let f = Fixture::new("mount-cache-from");
    let dockerfile = "FROM base:latest AS seed\n\
         RUN mkdir -p /seed/sub && echo seeded > /seed/sub/data\n\
         FROM base:latest\n\
         RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/seed \
             cat /c/sub/data > /got && echo more >> /c/sub/data\n";
    let out = f.build_tagged(dockerfile, "seeded:latest", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (layers, _) = f.image("seeded:latest");
    let top = &layers[layers.len() - 1];
    assert_eq!(text(top, "got"), "seeded\n");
    assert_eq!(paths(top), ["got"], "nothing of the cache in the layer");
    // The cache persists: the next run sees what the last one wrote, not a
    // fresh copy of the stage.
    let out = f.build_tagged(dockerfile, "seeded:latest", &["--no-cache"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (layers, _) = f.image("seeded:latest");
    assert_eq!(text(&layers[layers.len() - 1], "got"), "seeded\nmore\n");
}
