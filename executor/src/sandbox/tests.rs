use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::*;

fn spec() -> RunSpec {
    RunSpec {
        lower_dirs: vec!["/s/base".into(), "/s/l1".into()],
        upper_dir: "/s/up".into(),
        work_dir: "/s/work".into(),
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
    s.lower_dirs = vec![
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
    s.lower_dirs = vec!["/x/one".into(), "/y/two".into()];
    let m = overlay_options(&s, Privilege::Root)?;
    assert_eq!(m.dir, p("/"));
    assert!(m.data.starts_with("lowerdir=y/two:x/one,"), "{}", m.data);
    // A ':' in the common parent is harmless: it is not in the options.
    s.lower_dirs = vec!["/x:y/one".into()];
    assert!(overlay_options(&s, Privilege::Root)?
        .data
        .starts_with("lowerdir=one,"));
    Ok(())
}

#[test]
fn overlay_options_fit_127_short_links() -> Result<(), ExecutorError> {
    let links = "/root/.local/share/forge/forge/v1/snapshots/l";
    let mut s = spec();
    s.upper_dir = "/root/.local/share/forge/forge/v1/tmp/run-0123456789abcdef/upper".into();
    s.work_dir = "/root/.local/share/forge/forge/v1/tmp/run-0123456789abcdef/work".into();
    s.lower_dirs = (0..127)
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
    s.lower_dirs = (0..127)
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
    s.lower_dirs.push("/a:b".into());
    assert!(matches!(
        overlay_options(&s, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.upper_dir = "relative".into();
    assert!(matches!(
        overlay_options(&s, Privilege::Root),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.lower_dirs.clear();
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
    s.lower_dirs = vec!["relative".into()];
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
