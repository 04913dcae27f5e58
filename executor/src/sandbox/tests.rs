use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::*;

fn spec() -> RunSpec {
    RunSpec {
        rootfs: Rootfs::Overlay {
            lower_dirs: vec!["/s/base".into(), "/s/l1".into()],
            upper_dir: "/s/up".into(),
            work_dir: "/s/work".into(),
        },
        merged_dir: "/s/root".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        workdir_owner_is_user: false,
        network: Network::Host,
        hostname: "box".into(),
        etc_files: EtcFiles {
            hosts: "/p/hosts".into(),
            resolv_conf: "/p/resolv".into(),
            hostname: "/p/hostname".into(),
        },
    }
}

/// The overlay's lower, upper and work dirs of a spec.
fn overlay(s: &mut RunSpec) -> (&mut Vec<PathBuf>, &mut PathBuf, &mut PathBuf) {
    match &mut s.rootfs {
        Rootfs::Overlay {
            lower_dirs,
            upper_dir,
            work_dir,
        } => (lower_dirs, upper_dir, work_dir),
        Rootfs::Directory { .. } => panic!("not an overlay spec"),
    }
}

fn p(s: &str) -> PathBuf {
    PathBuf::from(s)
}

fn mount(
    src: Option<&str>,
    target: &str,
    fs: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount {
        source: src.map(PathBuf::from),
        target: p(target),
        fstype: fs.map(str::to_owned),
        flags,
        data: data.map(str::to_owned),
    }
}

#[test]
fn overlay_options_are_topmost_first_with_safe_flags() -> Result<(), ExecutorError> {
    assert_eq!(
        overlay_options(&spec(), Privilege::Root)?,
        OverlayMount {
            dir: p("/s"),
            data: "lowerdir=l1:base,upperdir=/s/up,workdir=/s/work,redirect_dir=off,metacopy=off,volatile"
                .into()
        }
    );
    Ok(())
}

#[test]
fn rootless_overlay_uses_userxattr() -> Result<(), ExecutorError> {
    assert_eq!(
        overlay_options(&spec(), Privilege::Rootless)?.data,
        "lowerdir=l1:base,upperdir=/s/up,workdir=/s/work,redirect_dir=nofollow,metacopy=off,userxattr,volatile"
    );
    Ok(())
}

#[test]
fn overlay_lowers_are_relative_to_their_deepest_common_parent() -> Result<(), ExecutorError> {
    let mut s = spec();
    *overlay(&mut s).0 = vec![
        "/a/b/c/one".into(),
        "/a/b/d/two".into(),
        "/a/b/three".into(),
    ];
    let m = overlay_options(&s, Privilege::Root)?;
    assert_eq!(m.dir, p("/a/b"));
    assert!(
        m.data.starts_with("lowerdir=three:d/two:c/one,"),
        "{}",
        m.data
    );
    *overlay(&mut s).0 = vec!["/x/one".into(), "/y/two".into()];
    let m = overlay_options(&s, Privilege::Root)?;
    assert_eq!(m.dir, p("/"));
    assert!(m.data.starts_with("lowerdir=y/two:x/one,"), "{}", m.data);
    // A ':' in the common parent is harmless: it is not in the options.
    *overlay(&mut s).0 = vec!["/x:y/one".into()];
    assert!(overlay_options(&s, Privilege::Root)?
        .data
        .starts_with("lowerdir=one,"));
    Ok(())
}

#[test]
fn overlay_options_fit_127_short_links() -> Result<(), ExecutorError> {
    let links = "/root/.local/share/forge/forge/v1/snapshots/l";
    let mut s = spec();
    *overlay(&mut s).1 = "/root/.local/share/forge/forge/v1/tmp/run-0123456789abcdef/upper".into();
    *overlay(&mut s).2 = "/root/.local/share/forge/forge/v1/tmp/run-0123456789abcdef/work".into();
    *overlay(&mut s).0 = (0..127)
        .map(|i| PathBuf::from(format!("{links}/{i:016x}")))
        .collect();
    let m = overlay_options(&s, Privilege::Root)?;
    assert_eq!(m.dir, p(links));
    assert!(m.data.len() <= MAX_MOUNT_DATA, "{}", m.data.len());
    assert!(m
        .data
        .starts_with("lowerdir=000000000000007e:000000000000007d:"));
    assert!(m.data.ends_with(",redirect_dir=off,metacopy=off,volatile"));
    Ok(())
}

#[test]
fn overlay_options_too_long_is_a_clear_error() {
    let mut s = spec();
    // Different parents: no short relative names.
    *overlay(&mut s).0 = (0..127)
        .map(|i| {
            PathBuf::from(format!(
                "/snapshots/{i:04}/a-long-directory-name-of-a-layer-snapshot"
            ))
        })
        .collect();
    match overlay_options(&s, Privilege::Root) {
        Err(ExecutorError::InvalidSpec(msg)) => {
            assert!(msg.contains("127 layers"), "{msg}");
            assert!(msg.contains("4095"), "{msg}");
        }
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[test]
fn default_capability_mask_is_dockers() {
    assert_eq!(default_capability_mask(), 0xa804_25fb);
}

#[test]
fn make_workdir_creates_0755_and_leaves_existing_dirs() -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir()?;
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing)?;
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o700))?;
    let target = existing.join("a/b/c");
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    make_workdir(&target, Some((uid, gid)))?;
    for d in ["a", "a/b", "a/b/c"] {
        let meta = existing.join(d).metadata()?;
        assert_eq!(meta.mode() & 0o7777, 0o755, "{d}");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{d}");
    }
    assert_eq!(existing.metadata()?.mode() & 0o7777, 0o700);
    // Existing: nothing to do.
    make_workdir(&target, None)?;
    // A file in the way is an error.
    std::fs::write(existing.join("file"), "")?;
    assert!(make_workdir(&existing.join("file/sub"), None).is_err());
    Ok(())
}

#[test]
fn overlay_options_reject_bad_paths() {
    let mut s = spec();
    overlay(&mut s).0.push("/a:b".into());
    assert!(matches!(
        overlay_options(&s, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    *overlay(&mut s).1 = "relative".into();
    assert!(matches!(
        overlay_options(&s, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    overlay(&mut s).0.clear();
    assert!(matches!(
        overlay_options(&s, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
}

#[test]
fn mount_sequence_is_recorded_in_order() -> Result<(), ExecutorError> {
    let sys = RecordingSyscall::new(
        &["/proc/kcore", "/proc/sysrq-trigger"],
        &["/proc/acpi", "/proc/sys"],
    );
    setup_rootfs(&sys, &spec(), Privilege::Root)?;
    let calls = sys.calls();

    let mut expected = vec![
        mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
        Call::Chdir(p("/s")),
        mount(
            Some("overlay"),
            "/s/root",
            Some("overlay"),
            MsFlags::empty(),
            Some("lowerdir=l1:base,upperdir=/s/up,workdir=/s/work,redirect_dir=off,metacopy=off,volatile"),
        ),
        Call::MkdirAll(p("/s/root/proc")),
        mount(
            Some("proc"),
            "/s/root/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        Call::MkdirAll(p("/s/root/dev")),
        mount(
            Some("tmpfs"),
            "/s/root/dev",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    ];
    for d in DEVICES {
        let t = format!("/s/root/dev/{d}");
        expected.push(Call::CreateFile(p(&t)));
        expected.push(mount(
            Some(&format!("/dev/{d}")),
            &t,
            None,
            MsFlags::MS_BIND,
            None,
        ));
    }
    expected.extend([
        Call::MkdirAll(p("/s/root/dev/pts")),
        mount(
            Some("devpts"),
            "/s/root/dev/pts",
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        Call::Symlink {
            target: p("pts/ptmx"),
            link: p("/s/root/dev/ptmx"),
        },
        Call::MkdirAll(p("/s/root/dev/shm")),
        mount(
            Some("shm"),
            "/s/root/dev/shm",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
        Call::Symlink {
            target: p("/proc/self/fd"),
            link: p("/s/root/dev/fd"),
        },
        Call::Symlink {
            target: p("/proc/self/fd/0"),
            link: p("/s/root/dev/stdin"),
        },
        Call::Symlink {
            target: p("/proc/self/fd/1"),
            link: p("/s/root/dev/stdout"),
        },
        Call::Symlink {
            target: p("/proc/self/fd/2"),
            link: p("/s/root/dev/stderr"),
        },
        Call::MkdirAll(p("/s/root/etc")),
        Call::CreateFile(p("/s/root/etc/hosts")),
        mount(
            Some("/p/hosts"),
            "/s/root/etc/hosts",
            None,
            MsFlags::MS_BIND,
            None,
        ),
        Call::CreateFile(p("/s/root/etc/resolv.conf")),
        mount(
            Some("/p/resolv"),
            "/s/root/etc/resolv.conf",
            None,
            MsFlags::MS_BIND,
            None,
        ),
        Call::CreateFile(p("/s/root/etc/hostname")),
        mount(
            Some("/p/hostname"),
            "/s/root/etc/hostname",
            None,
            MsFlags::MS_BIND,
            None,
        ),
        Call::Chdir(p("/s/root")),
        Call::PivotRoot {
            new_root: p("."),
            put_old: p("."),
        },
        Call::Umount2 {
            target: p("."),
            flags: MntFlags::MNT_DETACH,
        },
        Call::Chdir(p("/")),
        // Masked: a directory gets a read-only tmpfs, a file /dev/null.
        mount(
            Some("tmpfs"),
            "/proc/acpi",
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        mount(
            Some("/dev/null"),
            "/proc/kcore",
            None,
            MsFlags::MS_BIND,
            None,
        ),
        // Read-only: bind onto itself, then remount read-only.
        mount(
            Some("/proc/sys"),
            "/proc/sys",
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        mount(
            Some("/proc/sys"),
            "/proc/sys",
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        ),
        mount(
            Some("/proc/sysrq-trigger"),
            "/proc/sysrq-trigger",
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
        mount(
            Some("/proc/sysrq-trigger"),
            "/proc/sysrq-trigger",
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        ),
    ]);
    assert_eq!(calls.len(), expected.len(), "{calls:#?}");
    for (i, (got, want)) in calls.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "call #{i}");
    }
    Ok(())
}

fn directory_spec() -> RunSpec {
    RunSpec {
        rootfs: Rootfs::Directory {
            dir: "/s/image".into(),
        },
        ..spec()
    }
}

#[test]
fn a_directory_rootfs_is_bind_mounted_then_set_up_as_an_overlay_is() -> Result<(), ExecutorError> {
    let overlay = RecordingSyscall::new(&[], &[]);
    setup_rootfs(&overlay, &spec(), Privilege::Root)?;
    let dir = RecordingSyscall::new(&[], &[]);
    setup_rootfs(&dir, &directory_spec(), Privilege::Root)?;
    let (overlay, dir) = (overlay.calls(), dir.calls());
    assert_eq!(
        dir[..2],
        [
            mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
            mount(
                Some("/s/image"),
                "/s/root",
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None
            ),
        ]
    );
    // Then everything as for an overlay (which also has a chdir and its mount).
    assert_eq!(dir[2..], overlay[3..]);
    assert_eq!(
        overlay_options(&directory_spec(), Privilege::Root)
            .map(|_| ())
            .err()
            .map(|e| e.to_string()),
        Some("invalid run spec: the rootfs is a directory, not an overlay".to_string())
    );
    Ok(())
}

/// A [`RecordingSyscall`] whose overlay mounts fail.
struct NoOverlay(RecordingSyscall);

impl Syscall for NoOverlay {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ExecutorError> {
        if fstype == Some("overlay") {
            return Err(ExecutorError::Sys {
                what: format!("mount {}", target.display()),
                source: nix::Error::ENODEV,
            });
        }
        self.0.mount(source, target, fstype, flags, data)
    }
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), ExecutorError> {
        self.0.umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), ExecutorError> {
        self.0.pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &Path) -> Result<(), ExecutorError> {
        self.0.chdir(path)
    }
    fn mkdir_all(&self, path: &Path) -> Result<(), ExecutorError> {
        self.0.mkdir_all(path)
    }
    fn create_file(&self, path: &Path) -> Result<(), ExecutorError> {
        self.0.create_file(path)
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), ExecutorError> {
        self.0.symlink(target, link)
    }
    fn exists(&self, path: &Path) -> bool {
        self.0.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.0.is_dir(path)
    }
}

#[test]
fn a_failed_overlay_mount_is_overlay_unavailable() {
    let sys = NoOverlay(RecordingSyscall::new(&[], &[]));
    match setup_rootfs(&sys, &spec(), Privilege::Root) {
        Err(ExecutorError::OverlayUnavailable(reason)) => {
            assert!(reason.contains("ENODEV"), "{reason}");
        }
        other => panic!("expected OverlayUnavailable, got {other:?}"),
    }
    // A directory rootfs mounts no overlay.
    assert!(setup_rootfs(&sys, &directory_spec(), Privilege::Root).is_ok());
}

#[test]
fn directory_mount_points_the_sandbox_made_are_removed() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("etc"))?;
    std::fs::write(dir.join("etc/hostname"), "")?;
    let existing = existing_mountpoints(dir);
    assert_eq!(existing, ["etc", "etc/hostname"]);
    // What the sandbox makes: the other stubs, /dev and /proc.
    for f in ["etc/hosts", "etc/resolv.conf"] {
        std::fs::write(dir.join(f), "")?;
    }
    std::fs::create_dir_all(dir.join("dev"))?;
    std::fs::create_dir_all(dir.join("proc"))?;
    remove_dir_mountpoints(dir, &existing, &["true".to_string()])?;
    let mut left: Vec<String> = walk_names(dir);
    left.sort();
    assert_eq!(left, ["etc", "etc/hostname"]);
    // No /etc at all: a RUN keeps the directory it made (BuildKit's rule), a
    // WORKDIR step does not.
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    for (argv, kept) in [(vec!["true".to_string()], true), (Vec::new(), false)] {
        let existing = existing_mountpoints(dir);
        for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
            std::fs::create_dir_all(dir.join("etc"))?;
            std::fs::write(dir.join(f), "")?;
        }
        remove_dir_mountpoints(dir, &existing, &argv)?;
        assert_eq!(dir.join("etc").is_dir(), kept, "{argv:?}");
        assert!(!dir.join("etc/hosts").exists());
        let _ = std::fs::remove_dir(dir.join("etc"));
    }
    Ok(())
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for sub in walk_names(&e.path()) {
                out.push(format!("{name}/{sub}"));
            }
        }
        out.push(name);
    }
    out
}

#[test]
fn a_directory_spec_round_trips_through_json() -> Result<(), serde_json::Error> {
    let s = directory_spec();
    let json = serde_json::to_string(&s)?;
    assert!(
        json.contains(r#""rootfs":{"kind":"directory","dir":"/s/image"}"#),
        "{json}"
    );
    assert_eq!(serde_json::from_str::<RunSpec>(&json)?, s);
    Ok(())
}

#[test]
fn spec_round_trips_through_json() -> Result<(), serde_json::Error> {
    let mut s = spec();
    s.network = Network::None;
    let json = serde_json::to_string(&s)?;
    assert!(json.contains(r#""network":"none""#), "{json}");
    assert_eq!(serde_json::from_str::<RunSpec>(&json)?, s);
    Ok(())
}

#[test]
fn resolve_uses_the_spec_path() {
    assert!(matches!(resolve("/x/y", &[]), Ok(p) if p == Path::new("/x/y")));
    assert!(matches!(
        resolve("definitely-not-a-command-xyz", &["PATH=/nonexistent".into()]),
        Err(Failure::NotFound(m)) if m == "definitely-not-a-command-xyz: command not found"
    ));
}

#[test]
fn run_accepts_empty_argv() {
    // An empty argv is a WORKDIR step: the spec is valid, only the binary is
    // missing here.
    let mut s = spec();
    s.argv.clear();
    let r = run(
        Path::new("/nonexistent"),
        &s,
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    assert!(matches!(r, Err(ExecutorError::Process { .. })), "{r:?}");
}

#[test]
fn run_rejects_bad_overlay_options_before_spawning() {
    let mut s = spec();
    *overlay(&mut s).0 = vec!["relative".into()];
    let r = run(
        Path::new("/nonexistent"),
        &s,
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    assert!(matches!(r, Err(ExecutorError::InvalidSpec(_))), "{r:?}");
}

#[test]
fn kill_all_with_nothing_running_is_a_no_op() {
    assert_eq!(kill_all(), 0);
}

#[test]
fn a_file_action_mounts_the_root_and_its_sources_only() -> Result<(), ExecutorError> {
    let sys = RecordingSyscall::new(&[], &[]);
    let source = |dir: &str, mount: Option<Vec<PathBuf>>| fileop::SourceRoot {
        dir: p(dir),
        mount,
        allowed: None,
        keep_owner: true,
    };
    let sources = vec![
        source("/ctx", None),
        source("/r/from0", Some(vec![])),
        source("/r/from1", Some(vec![p("/s/l/a")])),
        source("/r/from2", Some(vec![p("/s/l/a"), p("/s/l/b")])),
    ];
    setup_action_mounts(&sys, &spec(), &sources, Privilege::Root)?;
    let overlay = overlay_options(&spec(), Privilege::Root)?;
    assert_eq!(
        sys.calls(),
        vec![
            mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
            Call::Chdir(overlay.dir),
            mount(
                Some("overlay"),
                "/s/root",
                Some("overlay"),
                MsFlags::empty(),
                Some(&overlay.data)
            ),
            mount(
                Some("/s/l/a"),
                "/r/from1",
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None
            ),
            Call::Chdir(p("/s/l")),
            mount(
                Some("overlay"),
                "/r/from2",
                Some("overlay"),
                MsFlags::MS_RDONLY,
                Some("lowerdir=b:a")
            ),
        ]
    );
    let rootless = readonly_overlay_options(&[p("/s/l/a"), p("/s/l/b")], Privilege::Rootless)?;
    assert_eq!(rootless.data, "lowerdir=b:a,userxattr");
    Ok(())
}

#[test]
fn run_mounts_come_after_the_etc_binds_shallowest_first() -> Result<(), ExecutorError> {
    use super::mounts::{MountSource, MountSpec};
    let mounts = vec![
        MountSpec {
            target: "/cache/inner".into(),
            source: MountSource::Tmpfs { size: Some(1024) },
        },
        MountSpec {
            target: "/cache".into(),
            source: MountSource::Bind {
                path: "/store/cachemounts/abc".into(),
                readonly: false,
            },
        },
        MountSpec {
            target: "/src".into(),
            source: MountSource::Bind {
                path: "/ctx".into(),
                readonly: true,
            },
        },
    ];
    let sys = RecordingSyscall::new(&[], &["/store/cachemounts/abc", "/ctx"]);
    setup_rootfs_with_mounts(&sys, &spec(), &mounts, Privilege::Root)?;
    let calls = sys.calls();
    let at = |c: &Call| calls.iter().position(|x| x == c).expect("call made");
    let hostname_bind = at(&mount(
        Some("/p/hostname"),
        "/s/root/etc/hostname",
        None,
        MsFlags::MS_BIND,
        None,
    ));
    let cache = at(&mount(
        Some("/store/cachemounts/abc"),
        "/s/root/cache",
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    ));
    let tmpfs = at(&mount(
        Some("tmpfs"),
        "/s/root/cache/inner",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("size=1024"),
    ));
    let src_ro = at(&mount(
        Some("/ctx"),
        "/s/root/src",
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None,
    ));
    let pivot = at(&Call::PivotRoot {
        new_root: p("."),
        put_old: p("."),
    });
    assert!(hostname_bind < cache && cache < tmpfs && tmpfs < pivot);
    assert!(hostname_bind < src_ro && src_ro < pivot);
    // The writable cache is never remounted read-only.
    assert!(!calls.iter().any(|c| matches!(c,
        Call::Mount { target, flags, .. }
            if target == &p("/s/root/cache") && flags.contains(MsFlags::MS_RDONLY))));
    Ok(())
}

#[test]
fn a_mount_on_the_root_is_refused() {
    use super::mounts::{MountSource, MountSpec};
    let mounts = vec![MountSpec {
        target: "/".into(),
        source: MountSource::Tmpfs { size: None },
    }];
    let sys = RecordingSyscall::new(&[], &[]);
    assert!(matches!(
        setup_rootfs_with_mounts(&sys, &spec(), &mounts, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
}

#[test]
fn mount_stubs_are_every_target_and_parent_deepest_first() {
    let stubs = mounts::target_stub_paths(["/run/secrets/a", "/run/secrets/b", "/x/../y"]);
    assert_eq!(
        stubs,
        ["run/secrets/a", "run/secrets/b", "run/secrets", "run", "y"]
    );
}

#[test]
fn secrets_parse_as_buildx_does() {
    use super::mounts::{parse_secret, SecretSource};
    assert_eq!(
        parse_secret("id=a,src=/f"),
        Ok(("a".into(), SecretSource::File("/f".into())))
    );
    assert_eq!(
        parse_secret("id=a,source=/f,type=file"),
        Ok(("a".into(), SecretSource::File("/f".into())))
    );
    assert_eq!(
        parse_secret("id=a,env=V"),
        Ok(("a".into(), SecretSource::Env("V".into())))
    );
    assert_eq!(
        parse_secret("type=env,id=a,src=V"),
        Ok(("a".into(), SecretSource::Env("V".into())))
    );
    // No id: the file's name.
    assert_eq!(
        parse_secret("src=/dir/token"),
        Ok(("token".into(), SecretSource::File("/dir/token".into())))
    );
    // Neither source: the variable named like the id when set, else the file.
    assert_eq!(
        parse_secret("id=FORGE_UNSET_SECRET_VARIABLE_X"),
        Ok((
            "FORGE_UNSET_SECRET_VARIABLE_X".into(),
            SecretSource::File("FORGE_UNSET_SECRET_VARIABLE_X".into())
        ))
    );
    assert_eq!(
        parse_secret("id=PATH"),
        Ok(("PATH".into(), SecretSource::Env("PATH".into())))
    );
    assert!(parse_secret("id=a,type=ssh").is_err());
    assert!(parse_secret("id=a,bogus=1").is_err());
    assert!(parse_secret("noequals").is_err());
}

#[test]
fn secret_data_never_prints() {
    let data = mounts::SecretData(b"hunter2".to_vec());
    let shown = format!("{data:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(shown, "SecretData(<7 bytes>)");
}
