//! The mount sequence that builds the RUN's root file system, written against
//! [`Syscall`] so that it can be checked without a kernel.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::syscall::Syscall;
use super::{Privilege, Rootfs, RunSpec};
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

/// The largest mount data the kernel accepts: `mount(2)` copies one page,
/// including the terminating NUL.
pub const MAX_MOUNT_DATA: usize = 4095;

/// How the overlay is mounted: from `dir`, with `data` naming the lower dirs
/// relative to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    /// The lower dirs' deepest common ancestor; the sandbox `chdir`s here before
    /// mounting so that `lowerdir` can use short relative names (docker's
    /// overlay2 trick: the kernel resolves them against the working directory).
    pub dir: PathBuf,
    /// The mount data: `lowerdir=` (topmost first, relative to `dir`),
    /// absolute `upperdir=` and `workdir=`, `redirect_dir=off,metacopy=off,volatile`.
    pub data: String,
}

/// The deepest directory containing every path's parent (`/` at worst).
fn common_parent(paths: &[PathBuf]) -> PathBuf {
    let mut common: Option<PathBuf> = None;
    for p in paths {
        let parent = p.parent().unwrap_or(Path::new("/"));
        common = Some(match common {
            None => parent.to_path_buf(),
            Some(c) => c
                .components()
                .zip(parent.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    common
        .filter(|c| c.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The overlayfs mount for a spec. `lower_dirs` are bottom-first; overlayfs
/// wants the topmost first. [`Privilege::Rootless`] adds `userxattr` (overlay
/// keeps its metadata in `user.overlay.*` xattrs, the only ones a user
/// namespace may write) and has `redirect_dir=nofollow` instead of `off` (the
/// kernel refuses `off` with `userxattr`). Fails with [`ExecutorError::InvalidSpec`] when a
/// path is relative or holds `,` `:` or a backslash (which the option syntax cannot
/// carry), when the data exceeds [`MAX_MOUNT_DATA`] bytes, or when the spec's
/// rootfs is not an overlay.
pub fn overlay_options(
    spec: &RunSpec,
    privilege: Privilege,
) -> Result<OverlayMount, ExecutorError> {
    let Rootfs::Overlay {
        lower_dirs,
        upper_dir,
        work_dir,
    } = &spec.rootfs
    else {
        return Err(ExecutorError::InvalidSpec(
            "the rootfs is a directory, not an overlay".into(),
        ));
    };
    if lower_dirs.is_empty() {
        return Err(ExecutorError::InvalidSpec(
            "at least one lower dir is needed".into(),
        ));
    }
    let utf8 = |p: &Path| -> Result<String, ExecutorError> {
        let s = p.to_str().ok_or_else(|| {
            ExecutorError::InvalidSpec(format!("path is not UTF-8: {}", p.display()))
        })?;
        if s.contains([',', ':', '\\']) {
            return Err(ExecutorError::InvalidSpec(format!(
                "overlay paths must be free of ',', ':' and '\\': {s}"
            )));
        }
        Ok(s.to_owned())
    };
    let absolute = |p: &Path| -> Result<String, ExecutorError> {
        if !p.is_absolute() {
            return Err(ExecutorError::InvalidSpec(format!(
                "overlay paths must be absolute: {}",
                p.display()
            )));
        }
        utf8(p)
    };
    if let Some(l) = lower_dirs.iter().find(|l| !l.is_absolute()) {
        return Err(ExecutorError::InvalidSpec(format!(
            "overlay paths must be absolute: {}",
            l.display()
        )));
    }
    let dir = common_parent(lower_dirs);
    let lowers = lower_dirs
        .iter()
        .rev()
        .map(|p| match p.strip_prefix(&dir) {
            Ok(rel) if !rel.as_os_str().is_empty() => utf8(rel),
            _ => absolute(p),
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Rootless: the kernel refuses `userxattr` with `redirect_dir=off` (which
    // may still follow redirects); `nofollow` neither makes nor follows them.
    let (redirect, userxattr) = if privilege.userxattr() {
        ("nofollow", ",userxattr")
    } else {
        ("off", "")
    };
    // `volatile` (Linux 5.10): no fsync of each copied-up file and no syncfs
    // at unmount. A RUN that modifies 1,000 lower files otherwise spends about a
    // second in copy-up fsyncs here. Nothing relies on the upper dir being on
    // disk: it is a temp dir until the build driver has written its layer blob
    // (flushed), and the snapshot it becomes is marked unflushed (see
    // `forge_cache::snapshot`).
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir={redirect},metacopy=off{userxattr},volatile",
        lowers.join(":"),
        absolute(upper_dir)?,
        absolute(work_dir)?,
    );
    if data.len() > MAX_MOUNT_DATA {
        return Err(ExecutorError::InvalidSpec(format!(
            "the overlay mount options for {} layers are {} bytes long, over the kernel's \
             limit of {MAX_MOUNT_DATA} (pass lower dirs as short paths in one directory)",
            lower_dirs.len(),
            data.len()
        )));
    }
    Ok(OverlayMount { dir, data })
}

/// A failed overlay mount as [`ExecutorError::OverlayUnavailable`], except a
/// missing lower, upper or work dir (`ENOENT`, `ENOTDIR`): that is a broken
/// spec, not a host without overlayfs.
fn overlay_unavailable(e: ExecutorError) -> ExecutorError {
    match e {
        ExecutorError::Sys {
            source: nix::Error::ENOENT | nix::Error::ENOTDIR,
            ..
        } => e,
        e => ExecutorError::OverlayUnavailable(super::error_chain(&e)),
    }
}

/// Mounts the step's root on `spec.merged_dir`: the overlay (after a `chdir`
/// to the lowers' common parent) or a recursive bind of the directory.
fn mount_root(
    sys: &dyn Syscall,
    spec: &RunSpec,
    privilege: Privilege,
) -> Result<(), ExecutorError> {
    let root = spec.merged_dir.as_path();
    match &spec.rootfs {
        Rootfs::Overlay { .. } => {
            // Relative lowerdir names are resolved against the working directory.
            let overlay = overlay_options(spec, privilege)?;
            sys.chdir(&overlay.dir)?;
            sys.mount(
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&overlay.data),
            )
            .map_err(overlay_unavailable)?;
        }
        Rootfs::Directory { dir } => {
            sys.mount(
                Some(dir),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
        }
    }
    Ok(())
}

/// The mount data of a read-only overlayfs of `lower_dirs` (bottom first, at
/// least two; overlayfs without an upper dir needs two), relative to their
/// common parent (returned with it).
pub fn readonly_overlay_options(
    lower_dirs: &[PathBuf],
    privilege: Privilege,
) -> Result<OverlayMount, ExecutorError> {
    let dir = common_parent(lower_dirs);
    let mut lowers = Vec::new();
    for p in lower_dirs.iter().rev() {
        let rel = match p.strip_prefix(&dir) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel,
            _ => p.as_path(),
        };
        let s = rel.to_str().ok_or_else(|| {
            ExecutorError::InvalidSpec(format!("path is not UTF-8: {}", p.display()))
        })?;
        if s.contains([',', ':', '\\']) {
            return Err(ExecutorError::InvalidSpec(format!(
                "overlay paths must be free of ',', ':' and '\\': {s}"
            )));
        }
        lowers.push(s.to_string());
    }
    let userxattr = if privilege.userxattr() {
        ",userxattr"
    } else {
        ""
    };
    let data = format!("lowerdir={}{userxattr}", lowers.join(":"));
    if data.len() > MAX_MOUNT_DATA {
        return Err(ExecutorError::InvalidSpec(format!(
            "the overlay mount options for {} layers are {} bytes long, over the kernel's \
             limit of {MAX_MOUNT_DATA}",
            lower_dirs.len(),
            data.len()
        )));
    }
    Ok(OverlayMount { dir, data })
}

/// The mounts of a file action (COPY, ADD): `/` made `rprivate`, the step's
/// root on `spec.merged_dir` as for a RUN, and each source that asks for it
/// mounted read-only on its directory: a bind mount of a single snapshot, an
/// overlayfs of several, nothing for none (an empty image). No `/proc`,
/// `/dev`, `/etc` binds and no `pivot_root`: nothing is executed (see
/// [`super::fileop`]).
pub fn setup_action_mounts(
    sys: &dyn Syscall,
    spec: &RunSpec,
    sources: &[super::fileop::SourceRoot],
    privilege: Privilege,
) -> Result<(), ExecutorError> {
    let none: Option<&Path> = None;
    sys.mount(
        none,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    mount_root(sys, spec, privilege)?;
    for source in sources {
        match &source.mount {
            Some(lowers) if !lowers.is_empty() => mount_layers(
                sys,
                lowers,
                None,
                &source.dir,
                privilege,
                overlay_unavailable,
            )?,
            _ => {}
        }
    }
    Ok(())
}

/// Mounts an image's layer snapshots (bottom first, at least one) on
/// `target`: a recursive bind of a single one, else an overlayfs of them,
/// read-only, or with `upper` (upper dir, work dir) writable, its changes
/// going there. A failed overlay mount goes through `overlay_error` (a file
/// action's falls back to copying; a RUN mount's is an error as it is).
pub fn mount_layers(
    sys: &dyn Syscall,
    lowers: &[PathBuf],
    upper: Option<&(PathBuf, PathBuf)>,
    target: &Path,
    privilege: Privilege,
    overlay_error: fn(ExecutorError) -> ExecutorError,
) -> Result<(), ExecutorError> {
    if let ([one], None) = (lowers, upper) {
        return sys.mount(
            Some(one),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        );
    }
    // Read-only: two lowers or more (one is bound above). Writable: one
    // lower is enough.
    let overlay = readonly_overlay_options(lowers, privilege)?;
    let (data, flags) = match upper {
        Some((up, work)) => (
            format!(
                "{},upperdir={},workdir={}",
                overlay.data,
                up.display(),
                work.display()
            ),
            MsFlags::empty(),
        ),
        None => (overlay.data, MsFlags::MS_RDONLY),
    };
    sys.chdir(&overlay.dir)?;
    sys.mount(
        Some(Path::new("overlay")),
        target,
        Some("overlay"),
        flags,
        Some(&data),
    )
    .map_err(overlay_error)
}

/// `root` joined with an absolute in-container path.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Builds the rootfs at `spec.merged_dir` and pivots into it. Runs in the
/// sandbox's own mount namespace, after `unshare` and the fork into the new PID
/// namespace (so the fresh `/proc` is that namespace's).
///
/// Order: `/` rprivate → `chdir` to the lowers' parent → overlay (a
/// [`Rootfs::Directory`]: a recursive bind mount of it instead) → `/proc` →
/// `/dev` (tmpfs, device binds, devpts, shm, links) → etc files → `RUN
/// --mount`s (see [`super::mounts`]) → pivot_root →
/// detach old root → masked and read-only paths.
///
/// A failed overlay mount is [`ExecutorError::OverlayUnavailable`], so that
/// the build driver can fall back to a directory rootfs.
pub fn setup_rootfs(
    sys: &dyn Syscall,
    spec: &RunSpec,
    privilege: Privilege,
) -> Result<(), ExecutorError> {
    setup_rootfs_with_mounts(sys, spec, &[], privilege)
}

/// [`setup_rootfs`] with `RUN --mount`s, mounted after the `/etc` binds
/// (see [`super::mounts::mount_all`]).
pub fn setup_rootfs_with_mounts(
    sys: &dyn Syscall,
    spec: &RunSpec,
    mounts: &[super::mounts::MountSpec],
    privilege: Privilege,
) -> Result<(), ExecutorError> {
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

    mount_root(sys, spec, privilege)?;

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

    // `RUN --mount`s, in the new root (their targets resolved inside it).
    super::mounts::mount_all(sys, root, mounts, privilege)?;

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
