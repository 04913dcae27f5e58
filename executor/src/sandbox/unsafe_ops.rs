//! The only `unsafe` code of the crate: `fork(2)`, `prctl(PR_CAPBSET_DROP)`,
//! `prctl(PR_CAP_AMBIENT_CLEAR_ALL)`, `capset(2)` and the `ioctl`s that bring
//! the loopback interface up.
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
