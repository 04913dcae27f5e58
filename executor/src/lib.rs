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
//! [`sandbox::SANDBOX_SUBCOMMAND`] and writes the [`sandbox::RunSpec`] (with
//! forge's pid and the [`sandbox::Privilege`]) as length-prefixed JSON to its
//! stdin, one end of a Unix socket pair. The sandbox keeps a close-on-exec copy
//! of that socket: the rootless handshake runs over it, and any setup error is
//! written back on it, which `run` returns as [`ExecutorError::SandboxSetup`];
//! a clean exec closes it, so an empty report means the exit status is the
//! command's. The binary's `main` must call [`sandbox::sandbox_main`] first
//! thing when it sees that subcommand, before any thread starts. There:
//!
//! 1. `PR_SET_PDEATHSIG(SIGKILL)`; read the spec; exit if `getppid()` is no
//!    longer forge (it died before the death signal was armed); stdin becomes
//!    `/dev/null`.
//! 2. `unshare(NEWNS | NEWPID | NEWUTS | NEWIPC [| NEWNET for --network=none]
//!    [| NEWUSER when rootless])`. Rootless (forge's euid is not 0): the
//!    sandbox sends one NUL byte; `run` writes `/proc/PID/uid_map` `0 EUID 1`,
//!    `setgroups` `deny`, `gid_map` `0 EGID 1` and answers with a NUL byte.
//!    A forge that re-executed itself in a user namespace with a subordinate
//!    id range ([`sandbox::userns`], [`sandbox::Privilege::Namespaced`]) is
//!    root there: its sandboxes unshare no user namespace of their own.
//! 3. `fork`: the intermediate process waits and exits with the child's code
//!    (`128 + n` for signal `n`); the child is PID 1 of the new PID namespace and
//!    sets `PR_SET_PDEATHSIG(SIGKILL)` too.
//! 4. Mount sequence ([`sandbox::setup_rootfs`], behind the [`sandbox::Syscall`]
//!    trait so it is unit-tested with a recording double): `/` made `rprivate`;
//!    `chdir` to the lower dirs' deepest common parent, then overlayfs with
//!    `lowerdir` names relative to it (docker's overlay2 trick: with the build
//!    driver's short `snapshots/l/<16 hex>` links, 127 layers take ~2.2 KiB of
//!    the kernel's 4095-byte limit on mount data; beyond it `run` fails with
//!    [`ExecutorError::InvalidSpec`] naming the layer count and length),
//!    topmost first, `upperdir`, `workdir`, `redirect_dir=off,metacopy=off,volatile`
//!    (rootless: `redirect_dir=nofollow,metacopy=off,userxattr`, as the kernel
//!    refuses `off` with `userxattr`), on `merged_dir`; fresh `/proc`; `/dev` as
//!    a tmpfs with host `null zero full random urandom tty` bind-mounted, devpts
//!    (`newinstance,ptmxmode=0666`) with `/dev/ptmx → pts/ptmx`, `/dev/shm`
//!    tmpfs, `fd/stdin/stdout/stderr` links; `/etc/{hosts,resolv.conf,hostname}`
//!    bind-mounted from files the parent prepared; `pivot_root(".", ".")` and a
//!    `MNT_DETACH` unmount of the old root; runc's masked paths (`/proc/kcore`,
//!    `/proc/keys`, `/proc/timer_list`, … get `/dev/null` or an empty read-only
//!    tmpfs) and read-only paths (`/proc/sys`, `/proc/sysrq-trigger`, `/proc/bus`,
//!    `/proc/fs`, `/proc/irq`).
//! 5. `sethostname`; `lo` up under `--network=none`; umask `022` (Docker's).
//! 6. **USER**: [`sandbox::RunSpec::user`] (Docker's syntax: `""`, `name`,
//!    `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`) is resolved by
//!    [`sandbox::user::resolve_user`] against the container's `/etc/passwd` and
//!    `/etc/group`, read *after* `pivot_root` (an absolute symlink resolves
//!    inside the rootfs; at most 16 MiB; regular files only), with runc's
//!    rules: a name not in passwd is the setup error `unable to find user
//!    NAME: no matching entries in passwd file` (likewise groups); a numeric
//!    uid not in passwd is fine (gid 0, home `/`); supplementary groups are
//!    the `/etc/group` entries listing the user's name, used only when no group
//!    is given; `HOME` is set to the passwd home (or `/`) when the environment
//!    has none. Rootless builds without a subordinate id range can only run
//!    as 0:0 (the only mapped ids; the error says how to add a range); with
//!    one, as any ids up to its end.
//! 7. **WORKDIR**: the missing directories of `cwd` are created, mode 0755,
//!    owned by the user's uid:gid when [`sandbox::RunSpec::workdir_owner_is_user`]
//!    is set (BuildKit's `llb.Mkdir(wd, 0755, WithParents, WithUser)`), by root
//!    otherwise; existing ones are left alone. An **empty argv** stops here
//!    with exit 0 (a WORKDIR step: the upper dir then holds the created
//!    directories and their copied-up parents).
//! 8. **Capabilities** as Docker's default set (`0xa80425fb`): the others are
//!    dropped from the bounding set, the ambient set is cleared, the
//!    inheritable set emptied, permitted and effective set to the default set;
//!    `setgroups(supplementary)` (not rootless: it is denied there), `setgid`,
//!    `setuid` (a non-root uid loses permitted and effective); `chdir` and a
//!    `getcwd` check (runc CVE-2024-21626); `PATH` lookup inside the new root
//!    (not found → 127, like a shell); close every fd above 2; `execve` with
//!    exactly the spec's environment (plus `HOME`, see 6).
//!
//! All mounts live in the sandbox's private mount namespace, so they vanish when
//! its last process exits, even if forge is killed. After the sandbox exits,
//! [`sandbox::run`] removes from the upper dir the empty `/etc` mount-point files
//! it had to create, and `etc`/`dev`/`proc` directories left empty by them (when
//! absent from the lowers, or unchanged non-opaque copy-ups), so a no-op RUN
//! leaves an empty upper dir.
//!
//! # COPY and ADD: file actions
//!
//! COPY and ADD run in the same re-exec'd sandbox, with a
//! [`sandbox::fileop::FileAction`] in place of a command
//! ([`sandbox::run_action`]): the sandbox unshares as above, makes `/`
//! `rprivate`, mounts the step's root exactly as for a RUN (overlay with the
//! new upper dir, or the copy snapshotter's directory) and each `--from`
//! image read-only on a directory of the run dir (an overlayfs of its
//! snapshots, a bind of a single one), mounts nothing else and does not
//! pivot: it copies in Rust with a user-space, root-confined path resolver
//! (see [`sandbox::fileop`] for why that is race-free here, and the rules),
//! and exits. A failure of the copy comes back as
//! [`ExecutorError::FileAction`]. The build driver prepares the action
//! ([`build::FileStep`]: URL downloads with `--checksum`, heredoc files, the
//! source roots) and makes the layer exactly as for a RUN.
//!
//! # The copy snapshotter
//!
//! Where overlayfs cannot be mounted (no overlay module; an upper dir on a
//! file system overlayfs refuses, such as overlayfs itself inside a
//! container; a user namespace on a kernel that refuses it), the overlay
//! mount fails in step 4 and [`sandbox::run`] returns
//! [`ExecutorError::OverlayUnavailable`] (the sandbox tags that report; a
//! missing lower dir, `ENOENT`, stays a [`ExecutorError::SandboxSetup`]). The
//! build driver ([`build::Runner::run`]) then prints one line, `warning:
//! overlayfs cannot be mounted here (REASON); RUN steps copy the image instead
//! (slower)`, remembers it for the rest of the process and runs the step (and
//! every later one) with a [`sandbox::Rootfs::Directory`]:
//!
//! 1. every layer of the image is applied in order from its blob
//!    ([`forge_cache::layer::extract_layer`], digests checked) into `root` in a
//!    run directory; hard links of the image are broken (each name gets its
//!    own copy with the same metadata), as overlayfs's copy-up breaks them;
//! 2. every entry's identity is recorded: inode, birth time, type, `ctime`,
//!    mode and owner; then the driver waits until the inode clock has moved
//!    past the latest `ctime` (it ticks every few milliseconds);
//! 3. the sandbox bind-mounts `root` (`MS_BIND | MS_REC`) on `merged_dir`
//!    instead of the overlay, and everything else is as above; `run` removes
//!    the `/etc` bind targets, `etc`, `dev` and `proc` it created, by the rules
//!    of the overlay path;
//! 4. the tree is walked again: new entries and the same object with another
//!    `ctime`, mode or owner are upserts, a directory that is a new object at
//!    a path that existed is opaque (with all its content upserted, as
//!    overlayfs makes a directory created over a whiteout opaque), an entry
//!    gone is a deletion where its parent directory is still the same object;
//!    `/etc` is dropped when only the mount points touched it and BuildKit's
//!    rule would not keep it ([`sandbox::etc_kept`]);
//! 5. [`forge_cache::layer::write_changes_layer`] writes the layer; nothing is
//!    adopted as a snapshot (the next step applies blobs again).
//!
//! The layers are byte-identical to overlay mode's (a test builds the
//! differential cases both ways and compares image IDs). The environment
//! variable `FORGE_SNAPSHOTTER` ([`build::SNAPSHOTTER_ENV`]) chooses:
//! `overlay` (or unset: overlayfs with the fallback) or `copy` (always copy;
//! the warning then says so); anything else is
//! [`ExecutorError::UnknownSnapshotter`].
//!
//! **Ctrl-C:** `run` registers each sandbox process in a process-global set
//! until it has terminated (it waits with `WNOWAIT` and unregisters before
//! reaping, so a pid in the set is never a recycled one).
//! [`sandbox::kill_all`] sends `SIGKILL` to all of them; each PID 1 dies by its
//! parent-death signal, taking its PID namespace (and so its mounts) with it,
//! and each `run` returns the signal status (exit code 137). The CLI's signal
//! handler calls it, then exits 130.
//!
//! # Unsafe code
//!
//! The workspace denies `unsafe_code`. The only exceptions are `fork(2)`,
//! `prctl(PR_CAPBSET_DROP)`, `prctl(PR_CAP_AMBIENT_CLEAR_ALL)`, `capset(2)`,
//! two `ioctl`s bringing `lo` up, the terminal `ioctl`s of `forge run -t`
//! (`TIOCSCTTY`, `TIOCGWINSZ`, `TIOCSWINSZ`), its `SIGWINCH` handler (an
//! atomic load and a `write(2)`) and taking ownership of a descriptor just
//! received, in one small private module
//! (`sandbox::unsafe_ops`) with `#![allow(unsafe_code)]` and a `SAFETY:`
//! comment per block. The fork is sound because `sandbox_main` runs before any
//! thread is started.
//!
//! # Not done yet
//!
//! - No `no_new_privs`, no seccomp profile, no AppArmor/SELinux.
//! - Rootless without a `/etc/subuid` range, sandboxes map only forge's own
//!   uid and gid (to 0): `USER` other than root and `RUN chown` to another
//!   id fail, files of other owners show as root inside the sandbox (their
//!   image owners are kept in `user.forge.owner` xattrs, see
//!   [`forge_cache::layer::Owners`]) and supplementary groups are not set
//!   (as runc). With a range, forge runs in a user namespace that maps it
//!   ([`sandbox::userns`]) and none of this applies up to the range's end.
//! - No `/sys` mount (so `/sys/firmware` masking is moot), no cgroup namespace,
//!   no rlimits.
//! - Bind mounts over a lower `/etc/resolv.conf` that is a symlink follow it
//!   (Docker has the same quirk); `/etc/hosts` etc. are bound read-write.
//! - Copy mode copies the whole image for every RUN (no snapshot reuse), and
//!   whiteouts it writes are owned by 0:0 where a rootless overlay's are owned
//!   by forge's uid. Opening a lower file for writing without writing to it
//!   copies it up in overlay mode but changes nothing in copy mode.
//! - The upper dir is left as overlayfs wrote it (whiteouts are `c 0,0`
//!   devices; opaque dirs carry `trusted.overlay.opaque`, or
//!   `user.overlay.opaque` rootless): layer making reads it from there.

pub mod build;
pub mod error;
pub mod sandbox;

pub use error::ExecutorError;
