//! The only `unsafe` code of the crate: `fork(2)`, a `pre_exec` that unshares
//! a user namespace (rootless builds with subordinate ids), ignoring SIGINT
//! while waiting for that child, `prctl(PR_CAPBSET_DROP)`,
//! `prctl(PR_CAP_AMBIENT_CLEAR_ALL)`, `capset(2)`, the `ioctl`s that bring
//! the loopback interface up, the terminal `ioctl`s and `SIGWINCH` handler of
//! `forge run -t` (see `console`), and owning a descriptor just received.
//!
//! `fork` is unsafe because, in a multithreaded process, the child may only call
//! async-signal-safe functions until it execs. The sandbox forks from
//! [`sandbox_main`](super::sandbox_main), which the binary calls first thing in
//! `main`, before any thread has been started, so the process is single-threaded.
#![allow(unsafe_code)]

use nix::unistd::ForkResult;

use crate::ExecutorError;

/// `fork(2)`. Only call from a single-threaded process.
pub(crate) fn fork_single_threaded() -> Result<ForkResult, ExecutorError> {
    // SAFETY: called only from `sandbox_main`, which runs before any thread of
    // this process has been started (the re-exec'd binary calls it first thing in
    // `main`), so the child is not left with locks held by other threads.
    unsafe { nix::unistd::fork() }.map_err(|source| ExecutorError::Sys {
        what: "fork".into(),
        source,
    })
}

/// `prctl(PR_CAPBSET_DROP, cap)`: removes `cap` from the bounding set.
pub(crate) fn drop_bounding_cap(cap: u32) -> Result<(), ExecutorError> {
    // SAFETY: PR_CAPBSET_DROP takes integer arguments only; no memory is passed
    // to or written by the kernel.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAPBSET_DROP,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ExecutorError::Sys {
            what: format!("prctl(PR_CAPBSET_DROP, {cap})"),
            source: nix::Error::last(),
        })
    }
}

/// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`: empties the ambient set.
pub(crate) fn clear_ambient_caps() -> Result<(), ExecutorError> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments only; no memory is passed
    // to or written by the kernel.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ExecutorError::Sys {
            what: "prctl(PR_CAP_AMBIENT_CLEAR_ALL)".into(),
            source: nix::Error::last(),
        })
    }
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, two data structs.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `capset(2)` on the calling thread: the three sets as 64-bit masks (bit `n`
/// is capability `n`). `effective` must be a subset of `permitted`.
pub(crate) fn set_caps(
    effective: u64,
    permitted: u64,
    inheritable: u64,
) -> Result<(), ExecutorError> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |mask: u64| [mask as u32, (mask >> 32) as u32];
    let (e, p, i) = (split(effective), split(permitted), split(inheritable));
    let data = [0, 1].map(|n| CapData {
        effective: e[n],
        permitted: p[n],
        inheritable: i[n],
    });
    // SAFETY: `header` and `data` are live, properly aligned `repr(C)` values
    // of the kernel's layouts for version 3 (one header, two data structs);
    // the kernel reads `data` and may write `header.version` only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(ExecutorError::Sys {
            what: format!("capset(effective={effective:#x}, permitted={permitted:#x})"),
            source: nix::Error::last(),
        })
    }
}

/// Sets the `IFF_UP` flag of the loopback interface of the current network
/// namespace (`ip link set lo up`).
pub(crate) fn loopback_up() -> Result<(), ExecutorError> {
    let sys = |what: &str| ExecutorError::Sys {
        what: what.to_owned(),
        source: nix::Error::last(),
    };
    // Any socket will do as a handle for the interface ioctls.
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|source| ExecutorError::Process {
        what: "opening a socket for the loopback interface",
        source,
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: `ifreq` is a plain C struct (arrays, integers, a union of those and
    // pointers) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `fd` is an open socket owned by `sock`; SIOCGIFFLAGS reads the
    // NUL-terminated name and writes the flags into `req`, which lives across
    // the call.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(sys("ioctl(SIOCGIFFLAGS, lo)"));
    }
    // SAFETY: the kernel just filled `ifru_flags`, the union's active field.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(sys("ioctl(SIOCSIFFLAGS, lo)"));
    }
    Ok(())
}

/// Makes `cmd`'s child unshare a user namespace just before it execs, then
/// wait to be mapped: it writes its pid (4 bytes, little-endian) to `ready`
/// and reads one byte from `go`; `0` lets the exec go on, anything else (or
/// end of file) fails the spawn with `EPERM`. The child also gets
/// `PR_SET_PDEATHSIG(SIGTERM)`, so it does not outlive the waiting parent.
pub(crate) fn unshare_user_before_exec(
    cmd: &mut std::process::Command,
    ready: std::os::fd::RawFd,
    go: std::os::fd::RawFd,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls `unshare`, `prctl`,
    // `getpid`, `write` and `read` through libc, allocates nothing and takes
    // no lock. The two descriptors stay open in the child until the exec
    // (they are close-on-exec) because the parent keeps its copies open
    // until `spawn` has returned.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let pid = libc::getpid().to_le_bytes();
            if libc::write(ready, pid.as_ptr().cast(), pid.len()) != 4 {
                return Err(std::io::Error::last_os_error());
            }
            let mut answer = [1u8];
            if libc::read(go, answer.as_mut_ptr().cast(), 1) != 1 || answer[0] != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EPERM));
            }
            Ok(())
        });
    }
}

/// Ignores `SIGINT` and `SIGQUIT` in this process (as `system(3)` does while
/// its child runs): the terminal sends them to the child too, which handles
/// them; the parent only waits for it.
pub(crate) fn ignore_terminal_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGINT, Signal::SIGQUIT] {
        // SAFETY: `SigIgn` installs no handler, so no code of ours can run
        // in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

/// Takes ownership of `fd`, a descriptor the kernel has just installed in
/// this process's table (from `recvmsg`'s `SCM_RIGHTS`).
pub(crate) fn own_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by the kernel as a new open descriptor
    // of this process, and nothing else has been given its number: the
    // `OwnedFd` is its only owner and closes it once.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// `ioctl(fd, TIOCSCTTY, 0)`: makes the terminal `fd` the controlling
/// terminal of the calling process's session (it must lead a new one).
pub(crate) fn set_controlling_terminal(fd: std::os::fd::RawFd) -> Result<(), ExecutorError> {
    // SAFETY: TIOCSCTTY takes an integer argument; no memory is passed.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0 as libc::c_int) } < 0 {
        return Err(ExecutorError::Sys {
            what: "ioctl(TIOCSCTTY)".into(),
            source: nix::Error::last(),
        });
    }
    Ok(())
}

/// `ioctl(fd, TIOCGWINSZ)`: the terminal's size, `None` if `fd` is not one.
pub(crate) fn window_size(fd: std::os::fd::RawFd) -> Option<libc::winsize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` to the pointer, which
    // points at `size`, live across the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size as *mut libc::winsize) };
    (rc == 0).then_some(size)
}

/// `ioctl(fd, TIOCSWINSZ)`: sets the terminal's size (best effort).
pub(crate) fn set_window_size(fd: std::os::fd::RawFd, size: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which
    // points at `size`, live across the call.
    let _ = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, size as *const libc::winsize) };
}

/// The pipe [`notify_window_changes`]'s handler writes to (-1: none).
static WINCH_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_sigwinch(_: libc::c_int) {
    let fd = WINCH_PIPE.load(std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `write` is async-signal-safe; the byte is a live static.
        let _ = unsafe { libc::write(fd, b"w".as_ptr().cast(), 1) };
    }
}

/// With `Some(fd)`, writes `w` to the pipe `fd` on every `SIGWINCH` (the
/// terminal's size changed); with `None`, stops and restores the default
/// disposition. A handler rather than `sigwait`: the signal may be delivered
/// to any thread of the process, and the others do not block it.
pub(crate) fn notify_window_changes(fd: Option<std::os::fd::RawFd>) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let handler = match fd {
        Some(fd) => {
            WINCH_PIPE.store(fd, std::sync::atomic::Ordering::SeqCst);
            SigHandler::Handler(on_sigwinch)
        }
        None => {
            WINCH_PIPE.store(-1, std::sync::atomic::Ordering::SeqCst);
            SigHandler::SigDfl
        }
    };
    // SA_RESTART: the blocking calls of other threads (waiting for the
    // sandbox, reading) go on rather than fail with EINTR.
    let action = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only loads an atomic and calls `write(2)`, both
    // async-signal-safe; it touches no lock and allocates nothing.
    let _ = unsafe { sigaction(Signal::SIGWINCH, &action) };
}
