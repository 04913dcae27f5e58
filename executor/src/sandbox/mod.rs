//! The RUN sandbox: a re-exec of forge's own binary into fresh namespaces over an
//! overlayfs rootfs. See the crate docs for the design.

mod console;
pub mod fileop;
pub mod mounts;
mod rootfs;
mod syscall;
mod unsafe_ops;
pub mod user;
pub mod userns;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

pub use rootfs::{
    overlay_options, readonly_overlay_options, setup_action_mounts, setup_rootfs,
    setup_rootfs_with_mounts, OverlayMount, DEVICES, MASKED_PATHS, MAX_MOUNT_DATA, READONLY_PATHS,
};

/// How a setup report from the sandbox starts when the overlay mount itself
/// failed; [`run`] turns such a report into [`ExecutorError::OverlayUnavailable`]
/// (no other report starts with a control character).
const OVERLAY_UNAVAILABLE_TAG: &str = "\u{1}overlay-unavailable\u{1}";

/// How a report starts when a file action (COPY, ADD) failed for a reason
/// of the step (a missing source, a bad `--chown`); [`run_action`] turns it
/// into [`ExecutorError::FileAction`].
const FILE_ACTION_TAG: &str = "\u{1}file-action\u{1}";
pub use console::Attach;
pub use syscall::{Call, RealSyscall, RecordingSyscall, Syscall};

use crate::ExecutorError;

/// The hidden subcommand under which forge's binary enters the sandbox.
pub const SANDBOX_SUBCOMMAND: &str = "__forge-sandbox";

/// Exit code of the sandbox process when setting it up failed (before the command
/// ran); [`run`] turns it into [`ExecutorError::SandboxSetup`].
pub const SETUP_FAILED_EXIT: i32 = 125;

/// The network a RUN sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace (the default).
    #[default]
    Host,
    /// A fresh network namespace with only a loopback interface (`--network=none`).
    None,
}

/// Whether the sandbox needs a user namespace; decided by [`run`] from forge's
/// effective uid and its user namespace's id map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// forge runs as root of the initial user namespace: no user namespace;
    /// ids are the host's.
    Root,
    /// forge runs as another user: the sandbox also unshares a user namespace
    /// in which forge's uid and gid are mapped to 0 (and nothing else, so a
    /// RUN can only run as root), `setgroups` is denied, and overlayfs is
    /// mounted with `userxattr` (opaque dirs carry `user.overlay.opaque`).
    Rootless,
    /// forge is root of a user namespace that maps forge's user to 0 and its
    /// `/etc/subuid` and `/etc/subgid` ranges to `1..=N` (it re-executed
    /// itself there, see [`userns`]): the sandbox needs no user
    /// namespace of its own, a RUN may use any id up to N, and overlayfs is
    /// mounted with `userxattr` as rootless.
    Namespaced,
}

impl Privilege {
    /// [`Privilege::Root`] if forge is fully privileged
    /// ([`forge_cache::layer::fully_privileged`]), [`Privilege::Namespaced`]
    /// if it is root of a partial user namespace, else
    /// [`Privilege::Rootless`].
    pub fn current() -> Self {
        if forge_cache::layer::fully_privileged() {
            Privilege::Root
        } else if nix::unistd::geteuid().is_root() {
            Privilege::Namespaced
        } else {
            Privilege::Rootless
        }
    }

    /// How the sandbox gives files their owners, seen from inside it: as
    /// they are for root; rootless, the namespace's root (0:0, forge's ids
    /// outside) owns every file and other owners go in the
    /// `user.forge.owner` xattr; in forge's namespace, ids up to its range's
    /// end are real (see [`forge_cache::layer::Owners`]).
    pub fn owners_inside(self) -> forge_cache::layer::Owners {
        match self {
            Privilege::Root => forge_cache::layer::Owners::OnDisk,
            Privilege::Rootless => forge_cache::layer::Owners::InXattr {
                uid: 0,
                gid: 0,
                max_id: 0,
            },
            Privilege::Namespaced => forge_cache::layer::Owners::of_this_process(),
        }
    }

    /// Whether overlayfs must be mounted with `userxattr` (any user
    /// namespace but the initial one).
    pub fn userxattr(self) -> bool {
        self != Privilege::Root
    }
}

/// Files the parent prepares and the sandbox bind-mounts over `/etc/…`; they are
/// not left in the layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcFiles {
    /// Bound over `/etc/hosts`.
    pub hosts: PathBuf,
    /// Bound over `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// Bound over `/etc/hostname`.
    pub hostname: PathBuf,
}

impl EtcFiles {
    /// `(name under /etc, host file)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("hosts", self.hosts.as_path()),
            ("resolv.conf", self.resolv_conf.as_path()),
            ("hostname", self.hostname.as_path()),
        ]
        .into_iter()
    }
}

/// The root file system a RUN runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Rootfs {
    /// An overlayfs of layer snapshots: what the RUN changes lands in
    /// `upper_dir`, which becomes the new layer.
    Overlay {
        /// Extracted layer snapshots, bottom (base) layer first. Absolute paths
        /// (symlinks are fine). The sandbox mounts from their deepest common
        /// parent with relative `lowerdir` names, so many short paths in one
        /// directory (e.g. `…/snapshots/l/0123456789abcdef` links) fit the
        /// kernel's one-page limit on mount options (127 layers take about
        /// 2.2 KiB).
        lower_dirs: Vec<PathBuf>,
        /// overlayfs upper dir: becomes the new layer.
        upper_dir: PathBuf,
        /// overlayfs work dir (empty, same file system as `upper_dir`).
        work_dir: PathBuf,
    },
    /// A directory that already holds the whole image (the copy snapshotter,
    /// for hosts where overlayfs cannot be mounted): it is bind-mounted
    /// (`MS_BIND | MS_REC`) and the RUN changes it in place; the caller finds
    /// the changes by comparing it with what it was.
    Directory {
        /// The prepared root directory, absolute.
        dir: PathBuf,
    },
}

/// Everything the sandbox needs to run one RUN. Serialized to the re-exec'd child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root file system: an overlay of snapshots, or a prepared directory.
    pub rootfs: Rootfs,
    /// An empty directory to mount the rootfs on (only ever mounted inside
    /// the sandbox's private mount namespace).
    pub merged_dir: PathBuf,
    /// The command, exec form. Shell form is `[shell…, cmd]`, built by the caller.
    /// Empty: nothing is executed; the sandbox builds the rootfs, resolves the
    /// user, creates the working directory and exits 0 (a WORKDIR step: the
    /// upper dir then holds the created directories and their copied-up
    /// parents; a directory rootfs holds them in place).
    pub argv: Vec<String>,
    /// `KEY=value` environment. If it has no `HOME`, the command gets
    /// `HOME=` the user's passwd home directory (or `/`), as with runc.
    pub env: Vec<String>,
    /// Working directory inside the container, absolute (empty means `/`).
    /// Missing directories are created, mode 0755, owned as
    /// [`workdir_owner_is_user`](Self::workdir_owner_is_user) says.
    pub cwd: String,
    /// The user in Docker's `USER` syntax: `""` (root), `name`, `uid`,
    /// `name:group`, `uid:gid`, `name:gid`, `uid:group`. Resolved inside the
    /// sandbox against the container's own `/etc/passwd` and `/etc/group`
    /// (after `pivot_root`, so it cannot read the host's), with runc's rules:
    /// see [`user::resolve_user`].
    pub user: String,
    /// Whether the directories of `cwd` that the sandbox creates are owned by
    /// the resolved user's uid:gid (BuildKit's `llb.Mkdir(wd, 0755,
    /// WithParents, WithUser(user))`, which Dockerfile WORKDIR uses when a
    /// USER is set). `false`: they are owned by root (0:0). Directories that
    /// already exist are never changed.
    pub workdir_owner_is_user: bool,
    /// Network mode.
    pub network: Network,
    /// Host name inside the UTS namespace.
    pub hostname: String,
    /// Files bound over `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`.
    pub etc_files: EtcFiles,
}

/// Parent side: spawns `exe` (normally `/proc/self/exe`) with
/// [`SANDBOX_SUBCOMMAND`], sends the spec as JSON on its stdin, lets stdout and
/// stderr through to `stdout`/`stderr`, waits and returns the exit status. The
/// command's stdin is `/dev/null`. Afterwards, removes from the upper dir (or,
/// for a [`Rootfs::Directory`], from the directory) the empty mount-point files
/// the sandbox had to create for the `/etc` binds, and the `etc`, `dev` and
/// `proc` directories it had to create for its mounts when they are left empty
/// (but `etc` stays where BuildKit keeps it: see the crate docs).
///
/// Exit status: the command's, `128 + n` if killed by signal `n`, 127 if the
/// command was not found, 126 if it is not executable. If the sandbox could not be
/// built, the error is [`ExecutorError::SandboxSetup`] (reported back over the
/// spec socket), never a made-up exit status; if it was the overlay mount
/// itself that failed (no overlayfs in the kernel, an upper dir on a file
/// system overlayfs refuses, no permission in a user namespace), it is
/// [`ExecutorError::OverlayUnavailable`], so that the caller can fall back to
/// a [`Rootfs::Directory`].
pub fn run(
    exe: &Path,
    spec: &RunSpec,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    run_with(exe, spec, None, &[], Attach::default(), stdout, stderr)
}

/// Like [`run`], with `RUN --mount`s: the sandbox mounts them in the root
/// after the `/etc` binds (see [`mounts`]), and afterwards the mount points
/// it had to create for them (targets and parents that did not exist, and
/// directories copied up only to hold one) are removed from the upper dir
/// or the directory, so that they never reach the layer.
pub fn run_with_mounts(
    exe: &Path,
    spec: &RunSpec,
    mounts: &[mounts::MountSpec],
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    run_with(exe, spec, None, mounts, Attach::default(), stdout, stderr)
}

/// Like [`run_with_mounts`], with the command attached to forge's standard
/// input and/or to a terminal (`forge run -i`, `-t`; see [`Attach`]). With
/// a terminal, forge copies between it and its own stdin and stdout until
/// the command ends, its own terminal in raw mode meanwhile.
pub fn run_attached(
    exe: &Path,
    spec: &RunSpec,
    mounts: &[mounts::MountSpec],
    attach: Attach,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    run_with(exe, spec, None, mounts, attach, stdout, stderr)
}

/// Like [`run`], but the sandbox performs `action` (a COPY or ADD, see
/// [`fileop`]) in the step's root instead of executing a command: it mounts
/// the root (and the action's source images) in its private mount namespace
/// and copies; `spec.argv`, `user`, `cwd` and `env` are not used, and no
/// mount point is created in the root (so none is removed afterwards). A
/// failure of the copy itself (a missing source, an unknown `--chown` name,
/// a hostile archive) is [`ExecutorError::FileAction`].
pub fn run_action(
    exe: &Path,
    spec: &RunSpec,
    action: &fileop::FileAction,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    run_with(
        exe,
        spec,
        Some(action),
        &[],
        Attach::default(),
        stdout,
        stderr,
    )
}

fn run_with(
    exe: &Path,
    spec: &RunSpec,
    action: Option<&fileop::FileAction>,
    mounts: &[mounts::MountSpec],
    attach: Attach,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    let privilege = Privilege::current();
    let mut existing = Vec::new();
    let mut missing_stubs = Vec::new();
    match &spec.rootfs {
        Rootfs::Overlay { work_dir, .. } => {
            overlay_options(spec, privilege)?;
            clear_work_dir(work_dir)?;
        }
        Rootfs::Directory { dir } => {
            if !dir.is_absolute() {
                return Err(ExecutorError::InvalidSpec(format!(
                    "the root directory must be absolute: {}",
                    dir.display()
                )));
            }
            existing = existing_mountpoints(dir);
            missing_stubs = mounts::stub_paths(mounts)
                .into_iter()
                .filter(|rel| dir.join(rel).symlink_metadata().is_err())
                .collect();
        }
    }
    let envelope = Envelope {
        parent: std::process::id(),
        privilege,
        spec: spec.clone(),
        action: action.cloned(),
        mounts: mounts.to_vec(),
        attach,
    };
    let json = serde_json::to_vec(&envelope).map_err(ExecutorError::SpecCodec)?;
    let process_err = |what| move |source| ExecutorError::Process { what, source };
    // One socket carries the spec to the sandbox and, back, a setup error if any.
    let (mut ours, theirs) = UnixStream::pair().map_err(process_err("creating a socket pair"))?;
    let mut command = Command::new(exe);
    command
        .arg(SANDBOX_SUBCOMMAND)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(stdout)
        .stderr(stderr);
    let spawned = command.spawn();
    // The command holds our copy of the sandbox's end: drop it, or no EOF.
    drop(command);
    let mut child = spawned.map_err(process_err("spawning the sandbox"))?;
    let pid = child.id();
    {
        let mut live = live_sandboxes();
        let group = GROUP.with(std::cell::Cell::get);
        live.pids.insert(pid, group);
        if live.stopped.contains(&group) {
            // Its build stopped while it was being set up.
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    // A sandbox that dies early closes the socket; its report tells why.
    let mut report = Vec::new();
    let mut map_error = None;
    let len = u64::try_from(json.len()).unwrap_or(u64::MAX).to_le_bytes();
    let mut sent = ours
        .write_all(&len)
        .and_then(|()| ours.write_all(&json))
        .is_ok();
    if sent && attach.stdin && !attach.tty {
        // `-i`: the command's stdin is ours.
        if let Err(e) = console::send_fd(ours.as_raw_fd(), std::io::stdin().as_fd()) {
            map_error = Some(e);
            sent = false;
        }
    }
    if sent && privilege == Privilege::Rootless {
        // The sandbox sends one NUL byte once it has unshared its user
        // namespace, and waits for one back once the maps are written. Any
        // other byte starts a setup error report.
        let mut byte = [1u8];
        match ours.read(&mut byte) {
            Ok(1) if byte[0] == 0 => match write_id_maps(pid) {
                Ok(()) => {
                    let _ = ours.write_all(&[0]);
                }
                Err(e) => {
                    // The sandbox waits for the ack: it must not go on unmapped.
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                        Signal::SIGKILL,
                    );
                    map_error = Some(e);
                }
            },
            Ok(1) => report.push(byte[0]),
            _ => {}
        }
    }
    // `-t`: PID 1 sends the terminal's master once the root is set up, and
    // waits for our answer. Anything else starts a setup error report.
    let mut console = None;
    if sent && attach.tty && report.is_empty() && map_error.is_none() {
        match console::receive_fd(ours.as_raw_fd()) {
            Ok(console::Received::Fd(master)) => {
                match console::Console::start(master, attach.stdin) {
                    Ok(started) => {
                        console = Some(started);
                        let _ = ours.write_all(&[0]);
                    }
                    // The sandbox waits for the answer: it must not go on.
                    Err(e) => {
                        let _ = ours.write_all(&[1]);
                        map_error = Some(e);
                    }
                }
            }
            Ok(console::Received::Byte(byte)) => report.push(byte),
            Ok(console::Received::Closed) | Err(_) => {}
        }
    }
    let _ = ours.shutdown(Shutdown::Write);
    // Wait without reaping, so that the pid cannot be reused while it is still
    // registered (kill_all could otherwise hit an unrelated process).
    let waited = wait_unreaped(pid);
    live_sandboxes().pids.remove(&pid);
    // The command has ended: copy what it left, restore forge's terminal.
    drop(console);
    waited?;
    let status = child
        .wait()
        .map_err(process_err("waiting for the sandbox"))?;
    let _ = ours.read_to_end(&mut report);
    match &spec.rootfs {
        // A file action creates no mount point in the root.
        _ if action.is_some() => {}
        Rootfs::Overlay { .. } => {
            remove_etc_mountpoints(spec)?;
            remove_overlay_mount_stubs(spec, mounts)?;
        }
        Rootfs::Directory { dir } => {
            remove_dir_mountpoints(dir, &existing, &spec.argv)?;
            // Deepest first: a parent is empty once its stubs are gone.
            for rel in &missing_stubs {
                let path = dir.join(rel);
                if mounts::is_empty_stub(&path) {
                    mounts::remove_stub(&path)?;
                }
            }
        }
    }
    if let Some(e) = map_error {
        return Err(e);
    }
    let report = String::from_utf8_lossy(&report).into_owned();
    if let Some(reason) = report.strip_prefix(OVERLAY_UNAVAILABLE_TAG) {
        return Err(ExecutorError::OverlayUnavailable(reason.to_string()));
    }
    if let Some(message) = report.strip_prefix(FILE_ACTION_TAG) {
        return Err(ExecutorError::FileAction(message.to_string()));
    }
    if !report.is_empty() {
        return Err(ExecutorError::SandboxSetup(report));
    }
    Ok(status)
}

/// What the parent sends the sandbox: the spec and the parent's pid (the
/// sandbox exits if its parent is already gone once it has set its
/// parent-death signal, closing the window before `PR_SET_PDEATHSIG`).
#[derive(Serialize, Deserialize)]
struct Envelope {
    parent: u32,
    privilege: Privilege,
    spec: RunSpec,
    /// A file action to perform instead of the command.
    #[serde(default)]
    action: Option<fileop::FileAction>,
    /// `RUN --mount`s.
    #[serde(default)]
    mounts: Vec<mounts::MountSpec>,
    /// `forge run -i`/`-t`.
    #[serde(default)]
    attach: Attach,
}

/// Rootless: maps uid and gid 0 of the sandbox's new user namespace to
/// forge's effective uid and gid (the one mapping an unprivileged process may
/// write), after denying `setgroups` as the kernel requires for `gid_map`.
fn write_id_maps(pid: u32) -> Result<(), ExecutorError> {
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    for (file, text) in [
        ("uid_map", format!("0 {uid} 1\n")),
        ("setgroups", "deny".to_string()),
        ("gid_map", format!("0 {gid} 1\n")),
    ] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text).map_err(|source| ExecutorError::Io {
            what: "writing the sandbox's user namespace map",
            path,
            source,
        })?;
    }
    Ok(())
}

/// The sandbox processes [`run`] has spawned and not yet waited for.
struct Live {
    /// Their pids, with the group each was started in (see [`in_group`]).
    pids: BTreeMap<u32, u64>,
    /// Groups [`kill_group`] stopped: a sandbox starting in one is killed
    /// as soon as it is registered.
    stopped: BTreeSet<u64>,
}

static LIVE_SANDBOXES: Mutex<Live> = Mutex::new(Live {
    pids: BTreeMap::new(),
    stopped: BTreeSet::new(),
});

fn live_sandboxes() -> MutexGuard<'static, Live> {
    // The set stays consistent whatever panicked while holding the lock.
    LIVE_SANDBOXES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

thread_local! {
    /// The group the sandboxes this thread starts belong to (0: none).
    static GROUP: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with the sandboxes it starts on this thread in `group` (not 0),
/// so that [`kill_group`] can stop them: a build's stages run on threads of
/// their own, and the first failure stops the others' running steps, not
/// another build's in the same process.
pub fn in_group<R>(group: u64, f: impl FnOnce() -> R) -> R {
    let before = GROUP.with(|g| g.replace(group));
    let result = f();
    GROUP.with(|g| g.set(before));
    result
}

/// Sends `SIGKILL` to the live sandboxes started in `group` (see
/// [`kill_all`] for what follows). Returns how many were signalled.
pub fn kill_group(group: u64) -> usize {
    if group == 0 {
        return 0;
    }
    let mut live = live_sandboxes();
    live.stopped.insert(group);
    let mut killed = 0;
    for (pid, _) in live.pids.iter().filter(|(_, g)| **g == group) {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed += 1;
        }
    }
    killed
}

/// Waits until process `pid` (our child) has terminated, leaving it a zombie.
fn wait_unreaped(pid: u32) -> Result<(), ExecutorError> {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    loop {
        match nix::sys::wait::waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::Error::EINTR) => continue,
            Ok(_) => return Ok(()),
            Err(e) => return Err(sys("waitid(sandbox)")(e)),
        }
    }
}

/// Sends `SIGKILL` to every sandbox process that [`run`] has started and not
/// yet waited for (any thread's), for Ctrl-C: the sandbox's PID 1 dies by its
/// parent-death signal and with it the whole PID namespace, the mount namespace
/// (so every mount) goes with its last process, and each `run` call returns
/// the signal exit (`128 + 9` from [`exit_code`]). Returns how many were
/// signalled. A `run` that starts afterwards is not affected; a caller that
/// exits right after (the CLI exits 130) needs nothing more, since sandboxes
/// also die with forge.
pub fn kill_all() -> usize {
    let live = live_sandboxes();
    for pid in live.pids.keys() {
        if let Ok(pid) = i32::try_from(*pid) {
            // Still our unreaped child: the pid cannot belong to anyone else.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // The caller is about to exit: never leave the terminal in raw mode.
    console::restore_terminal();
    live.pids.len()
}

/// Empties overlayfs's work dir. It is scratch space, but a `volatile` mount
/// leaves `work/incompat/volatile` in it, and overlayfs then refuses to mount
/// with it again (EINVAL), as it cannot tell a clean unmount from a crash. The
/// upper dir is what must survive between mounts, and a clean unmount leaves it
/// complete.
fn clear_work_dir(work_dir: &Path) -> Result<(), ExecutorError> {
    let entries = match std::fs::read_dir(work_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ExecutorError::Io {
                what: "reading the overlay work dir",
                path: work_dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            // overlayfs makes `work/work` mode 000: a rootless forge must give
            // itself access before it can remove what is inside.
            make_owner_accessible(&path);
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|source| ExecutorError::Io {
            what: "clearing the overlay work dir",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `chmod u+rwx` on `dir` and the directories below it (best effort).
fn make_owner_accessible(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_owner_accessible(&entry.path());
            }
        }
    }
}

/// The lower dirs and the upper dir of an overlay root; `None` for a
/// directory root.
fn overlay_dirs(spec: &RunSpec) -> Option<(&[PathBuf], &Path)> {
    match &spec.rootfs {
        Rootfs::Overlay {
            lower_dirs,
            upper_dir,
            ..
        } => Some((lower_dirs, upper_dir)),
        Rootfs::Directory { .. } => None,
    }
}

/// Whether some lower dir has `rel`.
fn in_lower_dirs(lower_dirs: &[PathBuf], rel: &str) -> bool {
    lower_dirs
        .iter()
        .any(|l| l.join(rel).symlink_metadata().is_ok())
}

/// Removes `/etc/{hosts,resolv.conf,hostname}` from the upper dir when no lower
/// dir has them and they are the empty files the sandbox created as bind targets
/// (writes through the bind go to the parent's file, never to these); then the
/// `etc`, `dev` and `proc` directories if they are empty leftovers (created as
/// mount points, or copied up only to hold a mount point).
fn remove_etc_mountpoints(spec: &RunSpec) -> Result<(), ExecutorError> {
    let Some((lower_dirs, upper_dir)) = overlay_dirs(spec) else {
        return Ok(());
    };
    let in_lower = |rel: &str| in_lower_dirs(lower_dirs, rel);
    for (name, _) in spec.etc_files.iter() {
        let rel = format!("etc/{name}");
        let path = upper_dir.join(&rel);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_file() && meta.len() == 0 && !in_lower(&rel) {
            std::fs::remove_file(&path).map_err(|source| ExecutorError::Io {
                what: "removing bind mount point",
                path: path.clone(),
                source,
            })?;
        }
    }
    // Docker's BuildKit leaves `/etc` in the layer (a copy-up with a new mtime)
    // whenever it had to create the `/etc/hosts` or `/etc/resolv.conf` mount
    // point; the differential test holds forge to the same layers. (It has no
    // `/etc/hostname` bind, so that stub alone does not keep `/etc`.)
    // A WORKDIR step (empty argv) is a file operation in BuildKit, with no
    // mounts: nothing of `/etc` stays.
    let etc_kept = etc_kept(&spec.argv, in_lower);
    for dir in ["etc", "dev", "proc"] {
        if dir == "etc" && etc_kept {
            continue;
        }
        let path = upper_dir.join(dir);
        if is_removable_mountpoint_dir(&path, lower_dirs, dir) {
            std::fs::remove_dir(&path).map_err(|source| ExecutorError::Io {
                what: "removing mount point directory",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Removes from the upper dir what the sandbox created only to mount a
/// `RUN --mount` on (BuildKit's mount stub cleaner): each target and parent
/// that no lower dir has, if it is an empty directory or an empty file, and
/// the directories copied up only to hold one (empty, same mode and owner as
/// below). Deepest first, so that a parent is empty once its stubs are gone.
fn remove_overlay_mount_stubs(
    spec: &RunSpec,
    mounts: &[mounts::MountSpec],
) -> Result<(), ExecutorError> {
    let Some((lower_dirs, upper_dir)) = overlay_dirs(spec) else {
        return Ok(());
    };
    for rel in mounts::stub_paths(mounts) {
        let path = upper_dir.join(&rel);
        let removable = if in_lower_dirs(lower_dirs, &rel) {
            is_removable_mountpoint_dir(&path, lower_dirs, &rel)
        } else {
            mounts::is_empty_stub(&path)
        };
        if removable {
            mounts::remove_stub(&path)?;
        }
    }
    Ok(())
}

/// Whether a RUN's layer keeps the `etc` directory (BuildKit's rule, see
/// `remove_etc_mountpoints`): it runs a command (`argv` not empty) and the
/// image lacks `/etc/hosts` or `/etc/resolv.conf` (`exists` says, for paths
/// relative to the root).
pub fn etc_kept(argv: &[String], exists: impl Fn(&str) -> bool) -> bool {
    !argv.is_empty() && (!exists("etc/hosts") || !exists("etc/resolv.conf"))
}

/// The mount points the sandbox may create in a root directory (relative
/// paths): directories first, then the `/etc` bind targets.
const MOUNTPOINTS: &[&str] = &[
    "etc",
    "dev",
    "proc",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/hostname",
];

/// Which of [`MOUNTPOINTS`] exist in `dir` (as anything, symlinks not followed).
fn existing_mountpoints(dir: &Path) -> Vec<&'static str> {
    MOUNTPOINTS
        .iter()
        .copied()
        .filter(|rel| dir.join(rel).symlink_metadata().is_ok())
        .collect()
}

/// [`Rootfs::Directory`]: removes what the sandbox created in `dir` only to
/// mount on, as `remove_etc_mountpoints` does for an upper dir: the `/etc`
/// bind targets that did not exist (if they are still empty regular files),
/// then `etc`, `dev` and `proc` if they did not exist and are empty (`etc`
/// stays where [`etc_kept`] says, as it does in overlay mode).
fn remove_dir_mountpoints(
    dir: &Path,
    existing: &[&str],
    argv: &[String],
) -> Result<(), ExecutorError> {
    let existed = |rel: &str| existing.contains(&rel);
    for rel in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        let path = dir.join(rel);
        if existed(rel) {
            continue;
        }
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_file() && meta.len() == 0 {
            std::fs::remove_file(&path).map_err(|source| ExecutorError::Io {
                what: "removing bind mount point",
                path: path.clone(),
                source,
            })?;
        }
    }
    let etc_kept = etc_kept(argv, existed);
    for rel in ["etc", "dev", "proc"] {
        if existed(rel) || (rel == "etc" && etc_kept) {
            continue;
        }
        let path = dir.join(rel);
        let empty_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir())
            && std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none());
        if empty_dir {
            std::fs::remove_dir(&path).map_err(|source| ExecutorError::Io {
                what: "removing mount point directory",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether `upper` (the upper dir's `rel`) is an empty directory the sandbox left
/// behind: absent from every lower dir, or a plain copy-up of the topmost lower's
/// (same mode and owner, not opaque).
fn is_removable_mountpoint_dir(upper: &Path, lower_dirs: &[PathBuf], rel: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = upper.symlink_metadata() else {
        return false;
    };
    let empty = std::fs::read_dir(upper).is_ok_and(|mut d| d.next().is_none());
    if !meta.is_dir() || !empty {
        return false;
    }
    let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| xattr::get(upper, name).ok().flatten().is_some());
    if opaque {
        return false;
    }
    match lower_dirs
        .iter()
        .rev()
        .find_map(|l| l.join(rel).symlink_metadata().ok())
    {
        None => true,
        Some(lower) => {
            lower.is_dir()
                && lower.mode() == meta.mode()
                && lower.uid() == meta.uid()
                && lower.gid() == meta.gid()
        }
    }
}

/// Child side: the entry point of the re-exec'd binary. Call it from `main` when
/// `argv[1] == SANDBOX_SUBCOMMAND`, **before any thread is started**. Never
/// returns: exits with the command's status (see [`run`]).
pub fn sandbox_main() -> ! {
    // Keep a close-on-exec copy of the spec socket (fd 0): the spec and the
    // rootless handshake come in on it, setup errors go back out.
    let mut report = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .ok();
    match sandbox_inner(&mut report) {
        Ok(code) => std::process::exit(code),
        Err(e) => fail_setup(&mut report, &e),
    }
}

/// Reports a setup error to the parent (or to stderr if there is no channel) and
/// exits with [`SETUP_FAILED_EXIT`].
fn fail_setup(report: &mut Option<std::fs::File>, e: &ExecutorError) -> ! {
    match e {
        // Tagged, so that the parent can tell it from other setup errors.
        ExecutorError::OverlayUnavailable(reason) => {
            fail_setup_with(report, &format!("{OVERLAY_UNAVAILABLE_TAG}{reason}"))
        }
        e => fail_setup_with(report, &error_chain(e)),
    }
}

/// [`fail_setup`] with a message of its own.
fn fail_setup_with(report: &mut Option<std::fs::File>, msg: &str) -> ! {
    let sent = report
        .as_mut()
        .is_some_and(|r| r.write_all(msg.as_bytes()).is_ok());
    if !sent {
        eprintln!("forge sandbox: {msg}");
    }
    std::process::exit(SETUP_FAILED_EXIT)
}

/// An error and its sources, `: `-joined (what a setup report carries).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> ExecutorError + '_ {
    move |source| ExecutorError::Sys {
        what: what.to_owned(),
        source,
    }
}

/// Reads the spec, unshares and forks; the intermediate process waits for PID 1
/// and returns its exit code.
fn sandbox_inner(report: &mut Option<std::fs::File>) -> Result<i32, ExecutorError> {
    // Die with the forge process that spawned us.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    let chan_err = |what| move |source| ExecutorError::Process { what, source };
    let chan = report.as_mut().ok_or_else(|| ExecutorError::Process {
        what: "duplicating the spec socket",
        source: std::io::Error::other("no channel"),
    })?;
    // Read exactly the spec (length-prefixed): the socket stays open for the
    // rootless handshake.
    let mut len = [0u8; 8];
    chan.read_exact(&mut len)
        .map_err(chan_err("reading the spec"))?;
    let len = u64::from_le_bytes(len);
    let mut json = Vec::new();
    Read::by_ref(chan)
        .take(len)
        .read_to_end(&mut json)
        .map_err(chan_err("reading the spec"))?;
    if u64::try_from(json.len()).ok() != Some(len) {
        return Err(chan_err("reading the spec")(
            std::io::ErrorKind::UnexpectedEof.into(),
        ));
    }
    let Envelope {
        parent,
        privilege,
        spec,
        action,
        mounts,
        attach,
    } = serde_json::from_slice(&json).map_err(ExecutorError::SpecCodec)?;
    if nix::unistd::getppid().as_raw() != i32::try_from(parent).unwrap_or(-1) {
        // forge died before our parent-death signal was armed.
        return Err(ExecutorError::InvalidSpec("forge is gone".into()));
    }
    // The command gets /dev/null as stdin, or forge's (`-i`; with `-t`, the
    // terminal, later).
    let stdin: OwnedFd = if attach.stdin && !attach.tty {
        match console::receive_fd(chan.as_raw_fd())? {
            console::Received::Fd(fd) => fd,
            _ => {
                return Err(ExecutorError::InvalidSpec(
                    "forge sent no standard input".into(),
                ))
            }
        }
    } else {
        std::fs::File::open("/dev/null")
            .map_err(|source| ExecutorError::Io {
                what: "opening",
                path: "/dev/null".into(),
                source,
            })?
            .into()
    };
    nix::unistd::dup2(stdin.as_raw_fd(), 0).map_err(sys("dup2"))?;
    drop(stdin);

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if privilege == Privilege::Rootless {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    nix::sched::unshare(flags).map_err(sys("unshare"))?;
    if privilege == Privilege::Rootless {
        // Ask the parent for the uid/gid maps and wait until they are written.
        chan.write_all(&[0])
            .map_err(chan_err("asking for uid/gid maps"))?;
        let mut ack = [1u8];
        chan.read_exact(&mut ack)
            .map_err(chan_err("waiting for uid/gid maps"))?;
    }

    match unsafe_ops::fork_single_threaded()? {
        ForkResult::Parent { child } => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(sys("waitpid")(e)),
            }
        },
        ForkResult::Child => {
            let keep = report.as_ref().map(|r| r.as_raw_fd());
            let result = match &action {
                Some(action) => perform_action(&spec, action, privilege),
                None => container_init(&spec, &mounts, privilege, attach, keep),
            };
            let code = match result {
                Ok(()) => 0,
                Err(Failure::NotFound(msg)) => {
                    eprintln!("{msg}");
                    127
                }
                Err(Failure::NotExecutable(msg)) => {
                    eprintln!("{msg}");
                    126
                }
                Err(Failure::Setup(e)) => fail_setup(report, &e),
                Err(Failure::Message(msg)) => fail_setup_with(report, &msg),
                Err(Failure::Action(msg)) => {
                    fail_setup_with(report, &format!("{FILE_ACTION_TAG}{msg}"))
                }
            };
            std::process::exit(code)
        }
    }
}

enum Failure {
    /// Exit 127 after printing this.
    NotFound(String),
    /// Exit 126 after printing this.
    NotExecutable(String),
    /// A setup error reported to the parent.
    Setup(Box<ExecutorError>),
    /// A setup error reported to the parent as this message alone (e.g. runc's
    /// `unable to find user …`).
    Message(String),
    /// A file action failed ([`ExecutorError::FileAction`] in the parent).
    Action(String),
}

impl From<ExecutorError> for Failure {
    fn from(e: ExecutorError) -> Self {
        Failure::Setup(Box::new(e))
    }
}

/// PID 1 of a file action's sandbox: mounts the root and the sources, then
/// copies (see [`fileop`]).
fn perform_action(
    spec: &RunSpec,
    action: &fileop::FileAction,
    privilege: Privilege,
) -> Result<(), Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    setup_action_mounts(&RealSyscall, spec, &action.sources, privilege)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    fileop::perform(&spec.merged_dir, action, privilege.owners_inside()).map_err(Failure::Action)
}

/// PID 1 of the new PID namespace: builds the rootfs and execs the command
/// (returns `Ok(())` only when there is no command: a WORKDIR step).
/// `keep` is the close-on-exec report fd, spared by the fd sweep.
fn container_init(
    spec: &RunSpec,
    mounts: &[mounts::MountSpec],
    privilege: Privilege,
    attach: Attach,
    keep: Option<RawFd>,
) -> Result<(), Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    mounts::stage_secrets(mounts)?;
    setup_rootfs_with_mounts(&RealSyscall, spec, mounts, privilege)?;
    nix::unistd::sethostname(&spec.hostname).map_err(sys("sethostname"))?;
    if spec.network == Network::None {
        unsafe_ops::loopback_up()?;
    }
    // Docker's umask: what the RUN creates does not depend on forge's.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));

    // Inside the new root: a symlinked /etc/passwd cannot point at the host's.
    let exec_user = user::resolve_user(
        &spec.user,
        read_container_file(Path::new("/etc/passwd"))?.as_deref(),
        read_container_file(Path::new("/etc/group"))?.as_deref(),
    )
    .map_err(Failure::Message)?;
    if privilege == Privilege::Rootless && (exec_user.uid, exec_user.gid) != (0, 0) {
        return Err(Failure::Message(format!(
            "USER {:?} (uid {}, gid {}) cannot be used in a rootless build: only root (0:0) \
             is mapped in its user namespace (give your user a range of subordinate ids in \
             /etc/subuid and /etc/subgid, e.g. `usermod --add-subuids 100000-165535 \
             --add-subgids 100000-165535 USER`, and install newuidmap/newgidmap (Debian: uidmap))",
            spec.user, exec_user.uid, exec_user.gid
        )));
    }
    if privilege == Privilege::Namespaced {
        let max_id = privilege.owners_inside().max_mapped_id();
        let beyond = [exec_user.uid, exec_user.gid]
            .into_iter()
            .find(|id| *id > max_id);
        if let Some(id) = beyond {
            return Err(Failure::Message(format!(
                "USER {:?} needs id {id}, beyond the {} subordinate ids this user has in \
                 /etc/subuid and /etc/subgid (a rootless build maps ids 1 to {max_id}): \
                 give it a larger range",
                spec.user, max_id
            )));
        }
    }

    // Working directory: created as root, owned by the user if asked.
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if !cwd.starts_with('/') {
        return Err(ExecutorError::InvalidSpec(format!("cwd must be absolute: {cwd}")).into());
    }
    let owner = spec
        .workdir_owner_is_user
        .then_some((exec_user.uid, exec_user.gid));
    make_workdir(Path::new(cwd), owner)?;
    if spec.argv.is_empty() {
        return Ok(());
    }

    if attach.tty {
        let channel = keep.ok_or_else(|| {
            ExecutorError::InvalidSpec("no channel to send the terminal on".into())
        })?;
        let slave = console::open_in_container(channel)?;
        console::make_controlling(slave, exec_user.uid, exec_user.gid)?;
    }

    drop_capabilities()?;
    // Rootless: setgroups is denied in the user namespace (runc skips it too).
    // In forge's own namespace, groups beyond its range do not exist, and
    // newgidmap may have denied setgroups: the user then keeps none.
    match privilege {
        Privilege::Root => {
            let groups: Vec<Gid> = exec_user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
        }
        Privilege::Namespaced => {
            let max_id = privilege.owners_inside().max_mapped_id();
            let groups: Vec<Gid> = exec_user
                .groups
                .iter()
                .filter(|g| **g <= max_id)
                .map(|g| Gid::from_raw(*g))
                .collect();
            match nix::unistd::setgroups(&groups) {
                Ok(()) | Err(nix::Error::EPERM) => {}
                Err(e) => return Err(sys("setgroups")(e).into()),
            }
        }
        Privilege::Rootless => {}
    }
    nix::unistd::setgid(Gid::from_raw(exec_user.gid)).map_err(sys("setgid"))?;
    // A non-root uid loses every permitted and effective capability here.
    nix::unistd::setuid(Uid::from_raw(exec_user.uid)).map_err(sys("setuid"))?;

    nix::unistd::chdir(cwd).map_err(sys("chdir"))?;
    // CVE-2024-21626: a leaked fd could have put us outside the rootfs.
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => {}
        _ => {
            return Err(ExecutorError::InvalidSpec(format!(
                "working directory {cwd} is outside the container root"
            ))
            .into())
        }
    }

    let env = user::with_home(&spec.env, &exec_user.home);
    let program = resolve(&spec.argv[0], &env)?;
    let argv = cstrings(&spec.argv)?;
    let env = cstrings(&env)?;
    let program_c = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| ExecutorError::InvalidSpec("NUL in program path".into()))?;

    close_extra_fds(keep);
    let err = match nix::unistd::execve(&program_c, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = format!("{}: {}", spec.argv[0], err.desc());
    Err(match err {
        nix::Error::ENOENT => Failure::NotFound(msg),
        nix::Error::EACCES | nix::Error::ENOEXEC => Failure::NotExecutable(msg),
        e => sys("execve")(e).into(),
    })
}

/// The most of `/etc/passwd` or `/etc/group` that is read (a symlink to
/// `/dev/zero` must not hang the sandbox).
const MAX_ETC_FILE: u64 = 16 << 20;

/// Reads a file of the container (after `pivot_root`); `None` if it does not
/// exist. Refuses anything but a regular file (a FIFO would block).
fn read_container_file(path: &Path) -> Result<Option<String>, ExecutorError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ExecutorError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !file.metadata().map_err(io)?.is_file() {
        return Err(ExecutorError::InvalidSpec(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ETC_FILE)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `mkdir -p` for the working directory: every directory it creates gets mode
/// 0755 (whatever the umask) and, if `owner` is given, that uid:gid. Existing
/// directories (symlinks followed, inside the container root) are left alone.
fn make_workdir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), ExecutorError> {
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| ExecutorError::Io {
            what,
            path: p,
            source,
        }
    };
    let mut missing: Vec<&Path> = path.ancestors().take_while(|p| !p.is_dir()).collect();
    missing.reverse();
    for dir in missing {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            // `..` components or a racing creator: a directory is all we need.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(e) => return Err(io("creating working directory", dir)(e)),
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", dir))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(
                |source| ExecutorError::Sys {
                    what: format!("chown {}", dir.display()),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

/// Capabilities a RUN keeps in its bounding set: Docker's default set
/// (`CAP_CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID`, `KILL`, `SETGID`, `SETUID`,
/// `SETPCAP`, `NET_BIND_SERVICE`, `NET_RAW`, `SYS_CHROOT`, `MKNOD`,
/// `AUDIT_WRITE`, `SETFCAP`), as capability numbers.
pub const DEFAULT_CAPABILITIES: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// [`DEFAULT_CAPABILITIES`] as a mask (bit `n` is capability `n`):
/// `0xa80425fb`, Docker's.
pub fn default_capability_mask() -> u64 {
    DEFAULT_CAPABILITIES.iter().fold(0, |m, c| m | 1 << c)
}

/// Cuts the capabilities to [`DEFAULT_CAPABILITIES`] as Docker does: drops
/// the rest from the bounding set, clears the ambient set, empties the
/// inheritable set and sets permitted and effective to the default set. Root
/// keeps exactly that across `execve`; `setuid` to another uid clears
/// permitted and effective.
fn drop_capabilities() -> Result<(), ExecutorError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    for cap in (0..=last).filter(|c| !DEFAULT_CAPABILITIES.contains(c)) {
        unsafe_ops::drop_bounding_cap(cap)?;
    }
    unsafe_ops::clear_ambient_caps()?;
    let mask = default_capability_mask();
    unsafe_ops::set_caps(mask, mask, 0)
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, ExecutorError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| ExecutorError::InvalidSpec(format!("NUL byte in {s:?}")))
        })
        .collect()
}

/// Default `PATH` when the environment has none (Docker's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Looks `cmd` up in the spec's `PATH` (inside the new root), like a shell.
fn resolve(cmd: &str, env: &[String]) -> Result<PathBuf, Failure> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if let Ok(meta) = candidate.metadata() {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Failure::NotFound(format!("{cmd}: command not found")))
}

/// Closes every file descriptor above 2 but `keep` (which is close-on-exec), so
/// nothing of forge's leaks into the RUN.
fn close_extra_fds(keep: Option<RawFd>) {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2 && Some(*fd) != keep)
            .collect(),
        Err(_) => Vec::new(),
    };
    for fd in fds {
        // The read_dir fd itself is already closed: EBADF is expected.
        let _ = nix::unistd::close(fd);
    }
}

/// Converts a sandbox exit status to the RUN's exit code (`128 + n` for signals).
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(SETUP_FAILED_EXIT)
}

#[cfg(test)]
mod tests;
