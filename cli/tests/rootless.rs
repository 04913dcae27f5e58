//! Rootless builds (uid 65534) give the images a root build gives: with
//! only the user's own id mapped (other owners kept in `user.forge.owner`
//! xattrs), and with a subordinate id range (forge re-executes itself in a
//! user namespace through newuidmap/newgidmap). The range comes from an
//! `/etc/subuid` and `/etc/subgid` bound over the host's in a private mount
//! namespace, so the host's files are never changed.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{ok, rootfs, utf8, TempDir};

const NOBODY: &str = "65534";

/// Owners set by `COPY --chown` (planned straight to a layer, and in the
/// sandbox over an existing file), kept from another stage and from an ADDed
/// archive, carried through a RUN's copy-up; a whiteout and an opaque
/// directory. Nothing here needs an id other than root at run time.
const COMMON: &str = "FROM base AS src\n\
    COPY --chown=21:22 d /srcd/\n\
    RUN echo more >> /srcd/b\n\
    FROM base\n\
    RUN mkdir -p /x/y && echo 1 > /x/y/f && echo 2 > /x/keep && rm /bin/ls\n\
    COPY --chown=5:6 a /a\n\
    COPY --chown=7:8 d /d/\n\
    COPY --chown=9:10 a /x/keep\n\
    COPY --from=src /srcd /fromsrc\n\
    ADD owned.tar /t/\n\
    RUN rm -rf /x && mkdir /x && echo new > /x/n && echo more >> /a && touch /t/o/f\n";

/// What only a build with a range of ids can do: `chown` in a RUN, a RUN as
/// another user, a symlink owned by another user.
const NEEDS_A_RANGE: &str = "FROM base\n\
    ADD links.tar /l/\n\
    RUN mkdir -p /home/n && chown 65534:65534 /home/n\n\
    USER nobody\n\
    RUN touch /home/n/f && id > /home/n/id\n";

/// A directory that uid 65534 can use: the context, the base tarball, the
/// forge binary and the stores.
struct Setup {
    dir: TempDir,
}

/// A tar of `(name, uid, type)` entries (`d`, `f` or `l` linking to `f`);
/// the gid is the uid + 100 (0 for root).
fn tar_of(path: &Path, entries: &[(&str, u64, char)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).expect("create tar"));
    for (name, uid, kind) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(*uid);
        header.set_gid(if *uid == 0 { 0 } else { uid + 100 });
        header.set_mtime(0);
        match kind {
            'd' => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, name, std::io::empty())
                    .expect("dir entry");
            }
            'l' => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, name, "f")
                    .expect("link entry");
            }
            _ => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(2);
                builder
                    .append_data(&mut header, name, &b"hi"[..])
                    .expect("file entry");
            }
        }
    }
    builder.finish().expect("finish tar");
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        let root = dir.path();
        let ctx = root.join("ctx");
        std::fs::create_dir_all(ctx.join("d")).expect("mkdir");
        std::fs::write(ctx.join("a"), b"a\n").expect("write");
        std::fs::write(ctx.join("d/b"), b"b\n").expect("write");
        tar_of(
            &ctx.join("owned.tar"),
            &[("o", 11, 'd'), ("o/f", 12, 'f'), ("o/l", 0, 'l')],
        );
        tar_of(&ctx.join("links.tar"), &[("f", 12, 'f'), ("l", 13, 'l')]);
        std::fs::copy(rootfs(), root.join("rootfs.tar")).expect("copy the rootfs");
        std::fs::copy(env!("CARGO_BIN_EXE_forge"), root.join("forge")).expect("copy forge");
        // The test's temp dir may sit in a directory only root can enter.
        let out = Command::new("chown")
            .args(["-R", "65534:65534", utf8(root)])
            .output()
            .expect("chown runs");
        assert!(out.status.success(), "chown: {out:?}");
        for p in [root, &ctx] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `forge ARGS` with the store `home`, as root, through `wrap` (a
    /// command prefix that changes the user), with `env`.
    fn forge(&self, wrap: &[&str], home: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let forge = self.path("forge");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&forge);
                cmd
            }
            None => Command::new(&forge),
        };
        cmd.args(args)
            .env("FORGE_HOME", self.path(home))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        cmd.output().expect("forge runs")
    }

    /// Imports the base and builds `dockerfile`; the image ID, or the failed
    /// build's output.
    fn build(
        &self,
        wrap: &[&str],
        home: &str,
        env: &[(&str, &str)],
        dockerfile: &str,
    ) -> Result<String, Output> {
        let file = self.path(&format!("{home}.Dockerfile"));
        std::fs::write(&file, dockerfile).expect("write Dockerfile");
        let rootfs = self.path("rootfs.tar");
        ok(&self.forge(wrap, home, env, &["import", utf8(&rootfs), "base"]));
        let ctx = self.path("ctx");
        let out = self.forge(
            wrap,
            home,
            env,
            &[
                "build",
                "--progress",
                "plain",
                "-q",
                "-t",
                "img",
                "-f",
                utf8(&file),
                utf8(&ctx),
            ],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(out)
        }
    }

    /// The entries of every layer of the image last built in store `home`
    /// (read as root): `name uid:gid`.
    fn layer_entries(&self, home: &str) -> Vec<String> {
        let saved = self.path(&format!("{home}.tar"));
        ok(&self.forge(
            &[],
            home,
            &[],
            &["save", "--format", "docker", "-o", utf8(&saved), "img"],
        ));
        let bytes = std::fs::read(&saved).expect("read the archive");
        let files = common::archive_files(&bytes);
        let manifest: serde_json::Value =
            serde_json::from_slice(&files["manifest.json"]).expect("manifest.json");
        let mut out = Vec::new();
        // The base's layer is busybox's, all root's.
        for layer in manifest[0]["Layers"]
            .as_array()
            .expect("layers")
            .iter()
            .skip(1)
        {
            let blob = &files[layer.as_str().expect("a layer path")];
            let tar = common::decompress_layer(blob);
            let mut archive = tar::Archive::new(&tar[..]);
            for entry in archive.entries().expect("layer entries") {
                let entry = entry.expect("layer entry");
                let h = entry.header();
                let name = common::clean_name(&entry.path().expect("name").to_string_lossy());
                out.push(format!(
                    "{name} {}:{}",
                    h.uid().expect("uid"),
                    h.gid().expect("gid")
                ));
            }
        }
        out
    }
}

fn as_nobody() -> Vec<&'static str> {
    vec![
        "setpriv",
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
    ]
}

/// `unshare --mount` and a copy of `/etc` (with `subuid` and `subgid`
/// giving uid 65534 the range 200000-265535) bound over `/etc`, then uid
/// 65534.
fn as_nobody_with_a_range(setup: &Setup) -> Vec<String> {
    let etc = setup.path("etc");
    let script = format!(
        "set -e; cp -a /etc {etc}; \
         echo nobody:200000:65536 > {etc}/subuid; echo nobody:200000:65536 > {etc}/subgid; \
         mount --bind {etc} /etc; exec \"$@\"",
        etc = utf8(&etc)
    );
    let mut wrap = vec![
        "unshare".to_string(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
    ];
    wrap.extend(as_nobody().into_iter().map(String::from));
    wrap
}

fn assert_has(entries: &[String], want: &[&str]) {
    for w in want {
        assert!(
            entries.iter().any(|e| e == w),
            "no layer entry {w:?} in {entries:#?}"
        );
    }
}

fn failure(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_rootless_build_without_a_range_keeps_owners_in_xattrs() {
    let setup = Setup::new("rootless-xattr");
    let root = setup
        .build(&[], "root", &[], COMMON)
        .unwrap_or_else(|o| panic!("{}", failure(&o)));
    // The case has what it claims to have.
    assert_has(
        &setup.layer_entries("root"),
        &[
            "a 5:6",
            "d/b 7:8",
            "x/keep 9:10",
            "fromsrc/b 21:22",
            "t/o 11:111",
            "t/o/f 12:112",
            "bin/.wh.ls 0:0",
            "x/.wh..wh..opq 0:0",
        ],
    );
    let off = [("FORGE_USERNS", "off")];
    let rootless = setup
        .build(&as_nobody(), "nobody", &off, COMMON)
        .unwrap_or_else(|o| panic!("{}", failure(&o)));
    assert_eq!(
        rootless, root,
        "the rootless build differs from the root build"
    );
    // Without a range, another USER cannot run, and the error says what
    // would make it work.
    let out = setup
        .build(
            &as_nobody(),
            "nobody",
            &off,
            "FROM base\nUSER nobody\nRUN true\n",
        )
        .expect_err("USER nobody needs a range");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/etc/subuid") && stderr.contains("newuidmap"),
        "{stderr}"
    );
}

#[test]
fn a_rootless_build_with_a_range_runs_as_any_user() {
    let setup = Setup::new("rootless-range");
    let wrap_owned = as_nobody_with_a_range(&setup);
    let wrap: Vec<&str> = wrap_owned.iter().map(String::as_str).collect();
    for dockerfile in [COMMON, NEEDS_A_RANGE] {
        let root = setup
            .build(&[], "root", &[], dockerfile)
            .unwrap_or_else(|o| panic!("{}", failure(&o)));
        let ranged = setup
            .build(&wrap, "nobody", &[], dockerfile)
            .unwrap_or_else(|o| panic!("{}", failure(&o)));
        assert_eq!(ranged, root, "the rootless build differs for\n{dockerfile}");
    }
    assert_has(
        &setup.layer_entries("root"),
        &["l/l 13:113", "home/n 65534:65534", "home/n/f 65534:65534"],
    );
    // It really ran in the namespace: the store holds files owned by the
    // range's ids (200000 + id - 1 outside).
    let mut in_range = 0;
    let mut stack = vec![setup.path("nobody")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read store dir").flatten() {
            let meta = entry.path().symlink_metadata().expect("stat");
            if (200_000..265_536).contains(&meta.uid()) {
                in_range += 1;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    assert!(in_range > 0, "no file of the store is owned by the range");
}
