//! The mount sequence that builds the RUN's root file system, written against
//! [`Syscall`] so that it can be checked without a kernel.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::syscall::Syscall;
use super::RunSpec;
use crate::ExecutorError;

/// Device nodes bind-mounted from the host's `/dev`.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Paths masked as runc does by default: files get `/dev/null` bound over them,
/// directories an empty read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
];

/// Paths made read-only, as runc does by default.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The overlayfs mount options for a spec. `lower_dirs` are bottom-first; overlayfs
/// wants the topmost first.
pub fn overlay_options(spec: &RunSpec) -> Result<String, ExecutorError> {
    if spec.lower_dirs.is_empty() {
        return Err(ExecutorError::InvalidSpec(
            "at least one lower dir is needed".into(),
        ));
    }
    let check = |p: &Path| -> Result<String, ExecutorError> {
        let s = p.to_str().ok_or_else(|| {
            ExecutorError::InvalidSpec(format!("path is not UTF-8: {}", p.display()))
        })?;
        if !p.is_absolute() || s.contains([',', ':', '\\']) {
            return Err(ExecutorError::InvalidSpec(format!(
                "overlay paths must be absolute and free of ',', ':' and '\\': {s}"
            )));
        }
        Ok(s.to_owned())
    };
    let lowers = spec
        .lower_dirs
        .iter()
        .rev()
        .map(|p| check(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        lowers.join(":"),
        check(&spec.upper_dir)?,
        check(&spec.work_dir)?,
    ))
}

/// `root` joined with an absolute in-container path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Builds the rootfs at `spec.merged_dir` and pivots into it. Runs in the
/// sandbox's own mount namespace, after `unshare` and the fork into the new PID
/// namespace (so the fresh `/proc` is that namespace's).
///
/// Order: `/` rprivate → overlay → `/proc` → `/dev` (tmpfs, device binds, devpts,
/// shm, links) → etc files → pivot_root → detach old root → masked and read-only
/// paths.
pub fn setup_rootfs(sys: &dyn Syscall, spec: &RunSpec) -> Result<(), ExecutorError> {
    let root = spec.merged_dir.as_path();
    let none: Option<&Path> = None;

    // Nothing we mount may propagate back to the host.
    sys.mount(
        none,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    sys.mount(
        Some(Path::new("overlay")),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&overlay_options(spec)?),
    )?;

    let proc_dir = under(root, "/proc");
    sys.mkdir_all(&proc_dir)?;
    sys.mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;

    let dev = under(root, "/dev");
    sys.mkdir_all(&dev)?;
    sys.mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let target = dev.join(name);
        sys.create_file(&target)?;
        let host = PathBuf::from("/dev").join(name);
        sys.mount(Some(&host), &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts)?;
    sys.mount(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    sys.symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm)?;
    sys.mount(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(Path::new(target), &dev.join(link))?;
    }

    let etc = under(root, "/etc");
    sys.mkdir_all(&etc)?;
    for (name, source) in spec.etc_files.iter() {
        let target = etc.join(name);
        sys.create_file(&target)?;
        sys.mount(Some(source), &target, None, MsFlags::MS_BIND, None)?;
    }

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    // leaves the new root. No put_old directory is needed (it would land in the
    // layer).
    sys.chdir(root)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount2(Path::new("."), MntFlags::MNT_DETACH)?;
    sys.chdir(Path::new("/"))?;

    for path in MASKED_PATHS {
        let path = Path::new(path);
        if !sys.exists(path) {
            continue;
        }
        if sys.is_dir(path) {
            sys.mount(
                Some(Path::new("tmpfs")),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
            )?;
        } else {
            sys.mount(
                Some(Path::new("/dev/null")),
                path,
                None,
                MsFlags::MS_BIND,
                None,
            )?;
        }
    }
    for path in READONLY_PATHS {
        let path = Path::new(path);
        if !sys.exists(path) {
            continue;
        }
        sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.mount(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}
