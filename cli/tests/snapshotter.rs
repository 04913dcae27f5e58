//! The copy snapshotter (`FORGE_SNAPSHOTTER=copy`, forge's fallback where
//! overlayfs cannot be mounted) must make the same layers as overlayfs: the
//! same Dockerfiles are built into two stores, one each way, and every image ID
//! must match. The inputs are the differential cases
//! (`tests/data/differential/*`, built in order and tagged
//! `forge-diff/<case>:latest`, as case 15 builds on case 13) and a few
//! Dockerfiles of our own for what they leave out (directories moved and
//! replaced, hard links to multiply-linked files of a lower layer, an image
//! that has its own `/etc/hosts` and `/etc/resolv.conf`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{forge, forge_cmd, ok, rootfs, utf8, TempDir};

const WARNING: &str = "RUN steps copy the image instead (slower)";

/// Which way a store's builds run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Overlay,
    Copy,
}

/// A store, with the busybox base imported as `forge-diff/base:latest` and a
/// variant with `/etc/hosts` and `/etc/resolv.conf` as
/// `forge-diff/with-etc:latest`.
struct Store {
    home: TempDir,
    mode: Mode,
    /// Time spent in `forge build`.
    spent: Duration,
}

impl Store {
    fn new(mode: Mode, with_etc: &Path) -> Self {
        let home = TempDir::new(&format!("snapshotter-{mode:?}"));
        ok(&forge(
            home.path(),
            &["import", utf8(rootfs()), "forge-diff/base:latest"],
        ));
        ok(&forge(
            home.path(),
            &["import", utf8(with_etc), "forge-diff/with-etc:latest"],
        ));
        Self {
            home,
            mode,
            spent: Duration::ZERO,
        }
    }

    /// `forge build -q -t TAG CONTEXT`; returns the output.
    fn build(&mut self, tag: &str, context: &Path) -> Output {
        let mut cmd = forge_cmd(self.home.path(), &["build", "-q", "-t", tag, utf8(context)]);
        match self.mode {
            Mode::Copy => cmd.env("FORGE_SNAPSHOTTER", "copy"),
            Mode::Overlay => cmd.env_remove("FORGE_SNAPSHOTTER"),
        };
        let started = Instant::now();
        let out = cmd.output().expect("forge runs");
        self.spent += started.elapsed();
        out
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cases() -> Vec<(String, PathBuf)> {
    common::differential_cases()
}

/// Cases of our own: (name, Dockerfile).
const EXTRA: &[(&str, &str)] = &[
    (
        // COPY planned straight into a layer (overlay mode) against the
        // sandbox's copy (copy mode): new and existing directories, --link,
        // --chown by name, a symlink and an existing file in the way (the
        // sandbox then), and a RUN on the planned layers.
        "copy-direct-and-link",
        "FROM forge-diff/base\n\
         RUN mkdir -p /srv/app /usr/share/x && chmod 750 /srv && chmod 700 /usr/share/x \
             && echo keep > /srv/app/old && ln -s /srv/app /lnk\n\
         COPY --link tree /srv/app/linked/\n\
         COPY --link top.txt /usr/share/x/deep/\n\
         COPY --link --chown=nobody:nogroup --chmod=640 top.txt /opt/owned.txt\n\
         WORKDIR /work\n\
         COPY --link tree rel/\n\
         COPY tree /srv/app/plain/\n\
         COPY top.txt /usr/share/x/\n\
         COPY --chown=nobody top.txt tree/sub/two.txt /srv/app/multi/\n\
         COPY tree /lnk/through-symlink/\n\
         COPY top.txt /srv/app/old\n\
         COPY --chmod=600 tree/ /\n\
         RUN find /srv /usr/share/x /one.txt /opt /work | sort | xargs stat -c '%a %u:%g %n' > /listing\n",
    ),
    (
        "moves-and-replacements",
        "FROM forge-diff/base\n\
         RUN mkdir -p /m/a/b/c /m/dir/sub && echo x > /m/a/b/c/f && echo y > /m/keep \
             && echo z > /m/dir/sub/z && echo l > /m/l1 && ln /m/l1 /m/l2 && ln /m/l1 /m/l3\n\
         # Moves of a directory and a file, a chmod deep down, links.\n\
         RUN mv /m/dir /m/moved && mv /m/keep /m/kept && chmod 600 /m/a/b/c/f \
             && ln /m/a/b/c/f /m/hl && ln -s ../m/kept /m/sym\n\
         # A lower file with three names: a link to one, a write to another.\n\
         RUN ln /m/l1 /m/l4 && echo more >> /m/l2\n\
         # A directory replaced by one with a child of an old child's name.\n\
         RUN rm -rf /m/a && mkdir -p /m/a/b/c && echo new > /m/a/b/c/f\n\
         # A directory moved over another.\n\
         RUN rm -rf /m/moved && mv /m/a /m/moved\n\
         RUN chown -R 1:2 /m/moved && chmod 1777 /m\n",
    ),
    (
        "user-workdir",
        "FROM forge-diff/base\n\
         RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd \
             && echo 'app:x:1000:' >> /etc/group\n\
         USER app\n\
         WORKDIR /home/app/work\n\
         RUN touch f && mkdir -p deep/er && echo hi > deep/er/file\n\
         WORKDIR /etc\n\
         WORKDIR /home/app/work\n\
         USER root\n\
         WORKDIR /etc/new\n\
         RUN true\n",
    ),
    (
        "image-with-etc-files",
        "FROM forge-diff/with-etc\n\
         RUN true\n\
         WORKDIR /etc\n\
         WORKDIR /srv\n\
         RUN touch /etc/new-file\n\
         RUN true\n\
         RUN chmod 700 /etc\n\
         RUN touch /etc\n",
    ),
];

/// The busybox rootfs with `/etc/hosts` and `/etc/resolv.conf` added.
fn rootfs_with_etc_files(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    let tar = |args: &[&str]| {
        let out = std::process::Command::new("tar")
            .args(args)
            .output()
            .expect("tar runs");
        assert!(out.status.success(), "tar {args:?}: {}", stderr(&out));
    };
    tar(&["-xf", utf8(rootfs()), "-C", utf8(&tree)]);
    std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n").expect("hosts");
    std::fs::write(tree.join("etc/resolv.conf"), "nameserver 127.0.0.53\n").expect("resolv");
    let out = dir.join("with-etc.tar");
    tar(&[
        "--sort=name",
        "--mtime=@0",
        "--numeric-owner",
        "-C",
        utf8(&tree),
        "-cf",
        utf8(&out),
        ".",
    ]);
    out
}

#[test]
fn copy_mode_makes_the_same_images_as_overlay() {
    if !nix_is_root() {
        println!("skipped: forge build needs root here");
        return;
    }
    let scratch = TempDir::new("snapshotter-inputs");
    let with_etc = rootfs_with_etc_files(scratch.path());
    let mut overlay = Store::new(Mode::Overlay, &with_etc);
    let mut copy = Store::new(Mode::Copy, &with_etc);

    let mut inputs = cases();
    for (name, text) in EXTRA {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("Dockerfile"), text).expect("Dockerfile");
        // The context files some of them copy.
        std::fs::create_dir_all(dir.join("tree/sub")).expect("mkdir");
        std::fs::write(dir.join("tree/one.txt"), "one\n").expect("write");
        std::fs::write(dir.join("tree/sub/two.txt"), "two\n").expect("write");
        std::fs::write(dir.join("top.txt"), "top\n").expect("write");
        inputs.push((name.to_string(), dir));
    }

    let mut differences = Vec::new();
    let mut report = String::new();
    for (name, dir) in &inputs {
        let tag = format!("forge-diff/{name}:latest");
        let (o0, c0) = (overlay.spent, copy.spent);
        let by_overlay = overlay.build(&tag, dir);
        let by_copy = copy.build(&tag, dir);
        report.push_str(&format!(
            "{name}: overlay {:?}, copy {:?}\n",
            overlay.spent - o0,
            copy.spent - c0
        ));
        let overlay_id = ok(&by_overlay).trim().to_string();
        let copy_id = ok(&by_copy).trim().to_string();
        assert!(
            !stderr(&by_overlay).contains(WARNING),
            "{name}: overlay mode warned: {}",
            stderr(&by_overlay)
        );
        let warnings = stderr(&by_copy)
            .lines()
            .filter(|l| l.starts_with("warning: ") && l.contains(WARNING))
            .count();
        // Once per build that runs anything in the sandbox.
        let text = std::fs::read_to_string(dir.join("Dockerfile")).expect("Dockerfile");
        let sandboxed = text.lines().any(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            ["RUN", "WORKDIR", "COPY", "ADD"]
                .iter()
                .any(|k| first.eq_ignore_ascii_case(k))
        });
        assert_eq!(
            warnings,
            usize::from(sandboxed),
            "{name}: copy mode must warn once: {}",
            stderr(&by_copy)
        );
        if overlay_id != copy_id {
            differences.push(format!("{name}: overlay {overlay_id}, copy {copy_id}"));
        }
    }
    println!(
        "{report}total: overlay {:?}, copy {:?}",
        overlay.spent, copy.spent
    );
    assert!(
        differences.is_empty(),
        "image IDs differ between overlay and copy mode:\n{}",
        differences.join("\n")
    );
}

#[test]
fn an_unknown_snapshotter_is_an_error() {
    if !nix_is_root() {
        println!("skipped: forge build needs root here");
        return;
    }
    let home = TempDir::new("snapshotter-unknown");
    let context = TempDir::new("snapshotter-unknown-ctx");
    ok(&forge(
        home.path(),
        &["import", utf8(rootfs()), "base:latest"],
    ));
    std::fs::write(context.path().join("Dockerfile"), "FROM base\nRUN true\n").expect("Dockerfile");
    let out = forge_cmd(home.path(), &["build", "-q", utf8(context.path())])
        .env("FORGE_SNAPSHOTTER", "zfs")
        .output()
        .expect("forge runs");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("FORGE_SNAPSHOTTER"),
        "{}",
        stderr(&out)
    );
}

fn nix_is_root() -> bool {
    // The effective uid, from /proc (the second field of `Uid:`).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A store on overlayfs: overlayfs refuses an upper dir there, so the first
/// RUN's mount fails and forge falls back to copying, with one warning for
/// the whole build, and makes the image overlay mode makes elsewhere. The
/// overlay the store lives on is mounted in a private mount namespace
/// (`unshare -m`), so nothing is left mounted if the test dies.
#[test]
fn a_failed_overlay_mount_falls_back_to_copying_once() {
    if !nix_is_root() || !Path::new("/usr/bin/unshare").exists() {
        println!("skipped: needs root and unshare (util-linux)");
        return;
    }
    let dir = TempDir::new("snapshotter-fallback");
    let context = dir.path().join("ctx");
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM base\n\
         RUN echo hi > /x && rm -rf /tmp && mkdir /tmp\n\
         WORKDIR /w\n\
         RUN ls / > /w/ls && chmod 700 /root\n",
    )
    .expect("Dockerfile");
    // The reference: overlay mode on the test's own file system.
    let home = dir.path().join("home");
    ok(&forge(&home, &["import", utf8(rootfs()), "base:latest"]));
    let want = ok(&forge(&home, &["build", "-q", utf8(&context)]))
        .trim()
        .to_string();

    let ovl = dir.path().join("ovl");
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir_all(ovl.join(d)).expect("mkdir");
    }
    let script = r#"set -e
mount -t overlay overlay -o "lowerdir=$OVL/l,upperdir=$OVL/u,workdir=$OVL/w" "$OVL/m"
export FORGE_HOME="$OVL/m/home"
"$FORGE" import "$ROOTFS" base:latest >/dev/null
"$FORGE" build -q "$CONTEXT""#;
    let out = std::process::Command::new("/usr/bin/unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .env("OVL", &ovl)
        .env("FORGE", env!("CARGO_BIN_EXE_forge"))
        .env("ROOTFS", rootfs())
        .env("CONTEXT", &context)
        .env("NO_COLOR", "1")
        .env_remove("FORGE_SNAPSHOTTER")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("unshare runs");
    let got = ok(&out).trim().to_string();
    let log = stderr(&out);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].starts_with("warning: overlayfs cannot be mounted here ("),
        "{log}"
    );
    assert_eq!(got, want, "{log}");
}
