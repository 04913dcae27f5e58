//! forge's executor: runs the steps of a build graph.
//!
//! Its parts arrive with the build issues. This crate currently holds the first
//! slice of the RUN sandbox ([`sandbox`]); layer making from the sandbox's upper
//! directory and the parallel scheduler that walks `forge_graph::BuildGraph` come
//! later.
//!
//! **Architecture invariant:** the executor knows no Dockerfile syntax. It reads the
//! IR (`forge-ir`) and the graph (`forge-graph`), never `forge-frontend`.
//!
//! # The RUN sandbox: re-exec design
//!
//! `unshare(CLONE_NEWUSER)` fails in a multithreaded process and forking a
//! threaded process is unsafe, so a RUN never forks forge's (threaded) build
//! process. [`sandbox::run`] spawns `/proc/self/exe` with the hidden subcommand
//! [`sandbox::SANDBOX_SUBCOMMAND`] and writes the [`sandbox::RunSpec`] as JSON to
//! its stdin, one end of a Unix socket pair. The sandbox keeps a close-on-exec
//! copy of that socket and writes back any setup error, which `run` returns as
//! [`ExecutorError::SandboxSetup`]; a clean exec closes it, so an empty report
//! means the exit status is the command's. The binary's `main` must call [`sandbox::sandbox_main`] first thing
//! when it sees that subcommand, before any thread starts. There:
//!
//! 1. `PR_SET_PDEATHSIG(SIGKILL)`; read the spec to EOF; stdin becomes
//!    `/dev/null`.
//! 2. `unshare(NEWNS | NEWPID | NEWUTS | NEWIPC [| NEWNET for --network=none])`.
//! 3. `fork`: the intermediate process waits and exits with the child's code
//!    (`128 + n` for signal `n`); the child is PID 1 of the new PID namespace and
//!    sets `PR_SET_PDEATHSIG(SIGKILL)` too.
//! 4. Mount sequence ([`sandbox::setup_rootfs`], behind the [`sandbox::Syscall`]
//!    trait so it is unit-tested with a recording double): `/` made `rprivate`;
//!    overlayfs (`lowerdir`=snapshots topmost first, `upperdir`, `workdir`,
//!    `redirect_dir=off,metacopy=off`) on `merged_dir`; fresh `/proc`; `/dev` as
//!    a tmpfs with host `null zero full random urandom tty` bind-mounted, devpts
//!    (`newinstance,ptmxmode=0666`) with `/dev/ptmx → pts/ptmx`, `/dev/shm`
//!    tmpfs, `fd/stdin/stdout/stderr` links; `/etc/{hosts,resolv.conf,hostname}`
//!    bind-mounted from files the parent prepared; `pivot_root(".", ".")` and a
//!    `MNT_DETACH` unmount of the old root; runc's masked paths (`/proc/kcore`,
//!    `/proc/keys`, `/proc/timer_list`, … get `/dev/null` or an empty read-only
//!    tmpfs) and read-only paths (`/proc/sys`, `/proc/sysrq-trigger`, `/proc/bus`,
//!    `/proc/fs`, `/proc/irq`).
//! 5. `sethostname`; `lo` up under `--network=none`; create the working directory; drop capabilities outside
//!    Docker's default set from the bounding set; `setgroups([])`, `setgid`,
//!    `setuid`; `chdir` and a `getcwd` check (runc CVE-2024-21626); `PATH`
//!    lookup inside the new root (not found → 127, like a shell); close every fd
//!    above 2; `execve` with exactly the spec's environment.
//!
//! All mounts live in the sandbox's private mount namespace, so they vanish when
//! its last process exits, even if forge is killed. After the sandbox exits,
//! [`sandbox::run`] removes from the upper dir the empty `/etc` mount-point files
//! it had to create, and `etc`/`dev`/`proc` directories left empty by them (when
//! absent from the lowers, or unchanged non-opaque copy-ups), so a no-op RUN
//! leaves an empty upper dir.
//!
//! # Unsafe code
//!
//! The workspace denies `unsafe_code`. The only exceptions are `fork(2)`,
//! `prctl(PR_CAPBSET_DROP)` and two `ioctl`s bringing `lo` up, in one small
//! private module (`sandbox::unsafe_ops`) with `#![allow(unsafe_code)]` and a
//! `SAFETY:` comment per block. The fork is sound because `sandbox_main` runs
//! before any thread is started.
//!
//! # Not done yet
//!
//! - Capabilities: only the bounding set is cut to Docker's default set (which,
//!   with empty inheritable/ambient sets, is what root keeps across `execve`);
//!   inheritable and ambient sets are not cleared explicitly (they are empty
//!   unless forge itself was started with some). No `no_new_privs`, no seccomp.
//! - No user namespace (rootless builds: the parent would write the uid/gid maps,
//!   overlay would need `userxattr`); the sandbox currently requires root.
//! - No `/sys` mount (so `/sys/firmware` masking is moot), no cgroup namespace,
//!   no rlimits.
//! - Bind mounts over a lower `/etc/resolv.conf` that is a symlink follow it
//!   (Docker has the same quirk); `/etc/hosts` etc. are bound read-write.
//! - No layer making yet: the upper dir is left as overlayfs wrote it
//!   (whiteouts are `c 0,0` devices, opaque dirs carry `trusted.overlay.opaque`).

pub mod error;
pub mod sandbox;

pub use error::ExecutorError;
