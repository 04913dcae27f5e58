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
        uid: 0,
        gid: 0,
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
        overlay_options(&spec())?,
        "lowerdir=/s/l1:/s/base,upperdir=/s/up,workdir=/s/work,redirect_dir=off,metacopy=off"
    );
    Ok(())
}

#[test]
fn overlay_options_reject_bad_paths() {
    let mut s = spec();
    s.lower_dirs.push("/a:b".into());
    assert!(matches!(
        overlay_options(&s),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.upper_dir = "relative".into();
    assert!(matches!(
        overlay_options(&s),
        Err(ExecutorError::InvalidSpec(_))
    ));
    let mut s = spec();
    s.lower_dirs.clear();
    assert!(matches!(
        overlay_options(&s),
        Err(ExecutorError::InvalidSpec(_))
    ));
}

#[test]
fn mount_sequence_is_recorded_in_order() -> Result<(), ExecutorError> {
    let sys = RecordingSyscall::new(
        &["/proc/kcore", "/proc/sysrq-trigger"],
        &["/proc/acpi", "/proc/sys"],
    );
    setup_rootfs(&sys, &spec())?;
    let calls = sys.calls();

    let mut expected = vec![
        mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
        mount(
            Some("overlay"),
            "/s/root",
            Some("overlay"),
            MsFlags::empty(),
            Some("lowerdir=/s/l1:/s/base,upperdir=/s/up,workdir=/s/work,redirect_dir=off,metacopy=off"),
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
fn run_rejects_empty_argv_before_spawning() {
    let mut s = spec();
    s.argv.clear();
    let r = run(
        Path::new("/nonexistent"),
        &s,
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    assert!(matches!(r, Err(ExecutorError::InvalidSpec(_))), "{r:?}");
}
