//! The RUN sandbox: a re-exec of forge's own binary into fresh namespaces over an
//! overlayfs rootfs. See the crate docs for the design.

mod rootfs;
mod syscall;
mod unsafe_ops;

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

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Gid, Uid};
use serde::{Deserialize, Serialize};

pub use rootfs::{overlay_options, setup_rootfs, DEVICES, MASKED_PATHS, READONLY_PATHS};
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

/// Everything the sandbox needs to run one RUN. Serialized to the re-exec'd child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Extracted layer snapshots, bottom (base) layer first. Absolute paths.
    pub lower_dirs: Vec<PathBuf>,
    /// overlayfs upper dir: becomes the new layer.
    pub upper_dir: PathBuf,
    /// overlayfs work dir (empty, same file system as `upper_dir`).
    pub work_dir: PathBuf,
    /// An empty directory to mount the merged rootfs on (only ever mounted inside
    /// the sandbox's private mount namespace).
    pub merged_dir: PathBuf,
    /// The command, exec form. Shell form is `[shell…, cmd]`, built by the caller.
    pub argv: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing).
    pub cwd: String,
    /// User id the command runs as.
    pub uid: u32,
    /// Group id the command runs as.
    pub gid: u32,
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
/// command's stdin is `/dev/null`. Afterwards, removes from the upper dir the
/// empty mount-point files the sandbox had to create for the `/etc` binds.
///
/// Exit status: the command's, `128 + n` if killed by signal `n`, 127 if the
/// command was not found, 126 if it is not executable. If the sandbox could not be
/// built, the error is [`ExecutorError::SandboxSetup`] (reported back over the
/// spec socket), never a made-up exit status.
pub fn run(
    exe: &Path,
    spec: &RunSpec,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<ExitStatus, ExecutorError> {
    if spec.argv.is_empty() {
        return Err(ExecutorError::InvalidSpec("argv is empty".into()));
    }
    overlay_options(spec)?;
    let json = serde_json::to_vec(spec).map_err(ExecutorError::SpecCodec)?;
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
    // A sandbox that dies early closes the socket; its report tells why.
    let _ = ours.write_all(&json);
    let _ = ours.shutdown(Shutdown::Write);
    let status = child
        .wait()
        .map_err(process_err("waiting for the sandbox"))?;
    let mut report = String::new();
    let _ = ours.read_to_string(&mut report);
    remove_etc_mountpoints(spec)?;
    if !report.is_empty() {
        return Err(ExecutorError::SandboxSetup(report));
    }
    Ok(status)
}

/// Removes `/etc/{hosts,resolv.conf,hostname}` from the upper dir when no lower
/// dir has them and they are the empty files the sandbox created as bind targets
/// (writes through the bind go to the parent's file, never to these); then the
/// `etc`, `dev` and `proc` directories if they are empty leftovers (created as
/// mount points, or copied up only to hold a mount point).
fn remove_etc_mountpoints(spec: &RunSpec) -> Result<(), ExecutorError> {
    let in_lower = |rel: &str| {
        spec.lower_dirs
            .iter()
            .any(|l| l.join(rel).symlink_metadata().is_ok())
    };
    for (name, _) in spec.etc_files.iter() {
        let rel = format!("etc/{name}");
        let path = spec.upper_dir.join(&rel);
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
    for dir in ["etc", "dev", "proc"] {
        let path = spec.upper_dir.join(dir);
        if is_removable_mountpoint_dir(&path, &spec.lower_dirs, dir) {
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
    // Keep a close-on-exec copy of the spec socket (fd 0) to report setup errors.
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
    let msg = error_chain(e);
    let sent = report
        .as_mut()
        .is_some_and(|r| r.write_all(msg.as_bytes()).is_ok());
    if !sent {
        eprintln!("forge sandbox: {msg}");
    }
    std::process::exit(SETUP_FAILED_EXIT)
}

fn error_chain(e: &dyn std::error::Error) -> String {
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
    let mut json = Vec::new();
    std::io::stdin()
        .read_to_end(&mut json)
        .map_err(|source| ExecutorError::Process {
            what: "reading the spec",
            source,
        })?;
    let spec: RunSpec = serde_json::from_slice(&json).map_err(ExecutorError::SpecCodec)?;
    // The command gets /dev/null as stdin.
    let devnull = std::fs::File::open("/dev/null").map_err(|source| ExecutorError::Io {
        what: "opening",
        path: "/dev/null".into(),
        source,
    })?;
    nix::unistd::dup2(devnull.as_raw_fd(), 0).map_err(sys("dup2"))?;
    drop(devnull);

    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(sys("unshare"))?;

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
            let code = match container_init(&spec, keep) {
                Ok(never) => match never {},
                Err(Failure::NotFound(msg)) => {
                    eprintln!("{msg}");
                    127
                }
                Err(Failure::NotExecutable(msg)) => {
                    eprintln!("{msg}");
                    126
                }
                Err(Failure::Setup(e)) => fail_setup(report, &e),
            };
            std::process::exit(code)
        }
    }
}

enum Failure {
    NotFound(String),
    NotExecutable(String),
    Setup(ExecutorError),
}

impl From<ExecutorError> for Failure {
    fn from(e: ExecutorError) -> Self {
        Failure::Setup(e)
    }
}

enum Never {}

/// PID 1 of the new PID namespace: builds the rootfs and execs the command.
/// `keep` is the close-on-exec report fd, spared by the fd sweep.
fn container_init(spec: &RunSpec, keep: Option<RawFd>) -> Result<Never, Failure> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
    setup_rootfs(&RealSyscall, spec)?;
    nix::unistd::sethostname(&spec.hostname).map_err(sys("sethostname"))?;
    if spec.network == Network::None {
        unsafe_ops::loopback_up()?;
    }

    // Working directory: created as root (like WORKDIR), entered as the user.
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    if !cwd.starts_with('/') {
        return Err(ExecutorError::InvalidSpec(format!("cwd must be absolute: {cwd}")).into());
    }
    RealSyscall.mkdir_all(Path::new(cwd))?;

    drop_capabilities()?;
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    nix::unistd::setgid(Gid::from_raw(spec.gid)).map_err(sys("setgid"))?;
    nix::unistd::setuid(Uid::from_raw(spec.uid)).map_err(sys("setuid"))?;

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

    let program = resolve(&spec.argv[0], &spec.env)?;
    let argv = cstrings(&spec.argv)?;
    let env = cstrings(&spec.env)?;
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
        e => Failure::Setup(sys("execve")(e)),
    })
}

/// Capabilities a RUN keeps in its bounding set: Docker's default set
/// (`CAP_CHOWN`, `DAC_OVERRIDE`, `FOWNER`, `FSETID`, `KILL`, `SETGID`, `SETUID`,
/// `SETPCAP`, `NET_BIND_SERVICE`, `NET_RAW`, `SYS_CHROOT`, `MKNOD`,
/// `AUDIT_WRITE`, `SETFCAP`), as capability numbers.
pub const DEFAULT_CAPABILITIES: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Drops every capability outside [`DEFAULT_CAPABILITIES`] from the bounding set.
/// With empty inheritable and ambient sets, what root keeps across `execve` is
/// its bounding set, and a non-root uid keeps nothing.
fn drop_capabilities() -> Result<(), ExecutorError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    for cap in (0..=last).filter(|c| !DEFAULT_CAPABILITIES.contains(c)) {
        unsafe_ops::drop_bounding_cap(cap)?;
    }
    Ok(())
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
