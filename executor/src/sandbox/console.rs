//! `forge run -i` and `-t`: the command's standard input and terminal.
//!
//! With `-i` alone, the command reads forge's own standard input: the parent
//! passes that descriptor to the sandbox over the spec socket
//! (`SCM_RIGHTS`), and the sandbox makes it the command's fd 0 instead of
//! `/dev/null`.
//!
//! With `-t`, the command gets a terminal, made as runc makes one: PID 1 of
//! the sandbox opens `/dev/ptmx` of the container's own devpts instance
//! (mounted with the rest of `/dev`), so that the command sees `/dev/pts/0`
//! and the host's ptys stay out of reach. It sends the master side back to
//! forge over the spec socket and waits for an answer, so that the window
//! size is set before the command starts; then it makes the slave side its
//! controlling terminal (`setsid`, `TIOCSCTTY`) and its fds 0, 1 and 2.
//! forge copies between the master and its own stdin and stdout, with its
//! terminal in raw mode (so that ^C, ^Z and line editing reach the command
//! rather than forge), and passes window size changes on (`SIGWINCH`).

use std::io::{IoSlice, IoSliceMut, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use nix::sys::termios::{self, SetArg, Termios};
use serde::{Deserialize, Serialize};

use super::{sys, unsafe_ops};
use crate::ExecutorError;

/// What the command is attached to, besides forge's stdout and stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// The command reads forge's standard input (`docker run -i`); without
    /// it, the command's stdin is `/dev/null` (or, with a terminal, the
    /// terminal, which then gets no input).
    pub stdin: bool,
    /// The command's stdin, stdout and stderr are a terminal of the
    /// container (`docker run -t`).
    pub tty: bool,
}

/// Sends `fd` over the socket `channel`, with one NUL byte.
pub(crate) fn send_fd(channel: RawFd, fd: BorrowedFd<'_>) -> Result<(), ExecutorError> {
    let fds = [fd.as_raw_fd()];
    nix::sys::socket::sendmsg::<UnixAddr>(
        channel,
        &[IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(sys("sending a descriptor to the sandbox"))?;
    Ok(())
}

/// What [`receive_fd`] got.
pub(crate) enum Received {
    /// A descriptor (with its NUL byte).
    Fd(OwnedFd),
    /// A byte without a descriptor: the start of an error report.
    Byte(u8),
    /// End of file: the other side is gone.
    Closed,
}

/// Receives one byte from the socket `channel`, with the descriptor it may
/// carry (close-on-exec).
pub(crate) fn receive_fd(channel: RawFd) -> Result<Received, ExecutorError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (bytes, fds) = loop {
        match nix::sys::socket::recvmsg::<UnixAddr>(
            channel,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for cmsg in msg.cmsgs().map_err(sys("reading a descriptor"))? {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        fds.extend(received);
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(sys("receiving a descriptor")(e)),
        }
    };
    // The kernel installed every received descriptor in our table: own them
    // all, so that extra ones are closed.
    let mut owned: Vec<OwnedFd> = fds.into_iter().map(unsafe_ops::own_fd).collect();
    Ok(match (bytes, owned.pop()) {
        (0, _) => Received::Closed,
        (_, Some(fd)) => Received::Fd(fd),
        (_, None) => Received::Byte(byte[0]),
    })
}

/// Sandbox side, in PID 1 after the root is set up: opens a terminal in the
/// container's devpts, sends its master to forge over `channel` and waits
/// for forge's answer (a NUL byte, once the window size is set). Returns
/// the slave side, for [`make_controlling`].
pub(crate) fn open_in_container(channel: RawFd) -> Result<OwnedFd, ExecutorError> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("opening /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(sys("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(|source| ExecutorError::Io {
            what: "opening the terminal's slave side",
            path: name.into(),
            source,
        })?
        .into();
    send_fd(channel, master.as_fd())?;
    drop(master);
    let mut answer = [1u8];
    match nix::unistd::read(channel, &mut answer) {
        Ok(1) if answer[0] == 0 => Ok(slave),
        Ok(_) => Err(ExecutorError::InvalidSpec(
            "forge did not take the terminal".into(),
        )),
        Err(e) => Err(sys("waiting for forge to take the terminal")(e)),
    }
}

/// Sandbox side, just before the exec: makes `slave` the controlling
/// terminal of a new session and the command's stdin, stdout and stderr,
/// owned by the command's user (as runc does, so that it can reopen it).
pub(crate) fn make_controlling(slave: OwnedFd, uid: u32, gid: u32) -> Result<(), ExecutorError> {
    // Best effort: a rootless sandbox may not own the node.
    let _ = nix::unistd::fchown(
        slave.as_raw_fd(),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    nix::unistd::setsid().map_err(sys("setsid"))?;
    unsafe_ops::set_controlling_terminal(slave.as_raw_fd())?;
    for fd in 0..=2 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).map_err(sys("dup2"))?;
    }
    Ok(())
}

/// forge's side of a terminal: the thread copying between the master and
/// forge's stdin and stdout. forge's terminal settings, while it is in raw
/// mode, are in [`RAW_MODE_SAVED`].
pub(crate) struct Console {
    thread: Option<JoinHandle<()>>,
    /// Write end of the copying thread's control pipe: `w` (the window
    /// changed, written by the `SIGWINCH` handler) and `q` (the command has
    /// ended: copy what is left, then stop).
    control: OwnedFd,
}

/// forge's terminal settings while a [`Console`] has it in raw mode: what
/// [`restore_terminal`] puts back (when the console is dropped, or from a
/// signal handler about to exit).
static RAW_MODE_SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts forge's terminal back as it was if a [`Console`] has it in raw
/// mode (see [`super::kill_all`] for the signal handler's call).
pub(crate) fn restore_terminal() {
    let saved = RAW_MODE_SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &saved);
    }
}

/// Puts forge's terminal (`stdin`) in raw mode, keeping its settings in
/// [`RAW_MODE_SAVED`]; nothing if it has none to read.
fn enter_raw_mode(stdin: &std::io::Stdin) -> Result<(), ExecutorError> {
    let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
        return Ok(());
    };
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
        .map_err(sys("setting the terminal to raw mode"))?;
    *RAW_MODE_SAVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(saved);
    Ok(())
}

impl Console {
    /// Takes the terminal `master`: sets its size to forge's terminal's,
    /// puts forge's terminal in raw mode when the command reads it
    /// (`forward_stdin`), and starts copying.
    pub(crate) fn start(master: OwnedFd, forward_stdin: bool) -> Result<Self, ExecutorError> {
        let stdin = std::io::stdin();
        let on_terminal = stdin.is_terminal();
        if on_terminal {
            copy_window_size(stdin.as_raw_fd(), master.as_raw_fd());
        }
        let (control_read, control) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys("creating a pipe"))?;
        let flags = nix::fcntl::fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)
            .map_err(sys("fcntl(F_GETFL)"))?;
        nix::fcntl::fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(sys("fcntl(F_SETFL)"))?;
        if forward_stdin && on_terminal {
            enter_raw_mode(&stdin)?;
        }
        if on_terminal {
            unsafe_ops::notify_window_changes(Some(control.as_raw_fd()));
        }
        // From here on, a failure must undo raw mode and the handler: the
        // console exists (and its drop does that) only once the thread runs.
        let thread = std::thread::Builder::new()
            .name("forge-console".into())
            .spawn(move || copy_loop(&master, &control_read, forward_stdin))
            .map_err(|source| {
                unsafe_ops::notify_window_changes(None);
                restore_terminal();
                ExecutorError::Process {
                    what: "starting the terminal thread",
                    source,
                }
            })?;
        Ok(Console {
            thread: Some(thread),
            control,
        })
    }
}

impl Drop for Console {
    /// The command has ended (or forge is failing): copies what the command
    /// left on the terminal, stops the thread and restores forge's terminal,
    /// so that it is never left in raw mode.
    fn drop(&mut self) {
        unsafe_ops::notify_window_changes(None);
        let _ = nix::unistd::write(&self.control, b"q");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        restore_terminal();
    }
}

/// Sets the size of the terminal `to` to that of `from` (best effort).
fn copy_window_size(from: RawFd, to: RawFd) {
    if let Some(size) = unsafe_ops::window_size(from) {
        unsafe_ops::set_window_size(to, &size);
    }
}

/// Copies the master's output to stdout, and (when `forward_stdin`) stdin
/// to the master, until the terminal is closed (every slave fd gone: the
/// container has ended) or `q` comes on the control pipe. One thread and
/// `poll`, with the master non-blocking, so that a command that does not
/// read its input never stops its output from being copied.
fn copy_loop(master: &OwnedFd, control: &OwnedFd, forward_stdin: bool) {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut stdin_open = forward_stdin;
    let mut to_master: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut master_events = PollFlags::POLLIN;
        if !to_master.is_empty() {
            master_events |= PollFlags::POLLOUT;
        }
        let read_stdin = stdin_open && to_master.len() < buf.len();
        let mut fds = vec![
            PollFd::new(master.as_fd(), master_events),
            PollFd::new(control.as_fd(), PollFlags::POLLIN),
        ];
        if read_stdin {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
        let ready = |fd: &PollFd<'_>, want: PollFlags| {
            fd.revents()
                .is_some_and(|r| r.intersects(want | PollFlags::POLLHUP | PollFlags::POLLERR))
        };
        let master_ready = ready(&fds[0], PollFlags::POLLIN);
        let master_writable = fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT));
        let control_ready = ready(&fds[1], PollFlags::POLLIN);
        let stdin_ready = read_stdin && ready(&fds[2], PollFlags::POLLIN);
        drop(fds);
        if master_ready && !drain_master(master, &mut buf, &mut stdout) {
            return;
        }
        if master_writable {
            match nix::unistd::write(master, &to_master) {
                Ok(n) => {
                    to_master.drain(..n);
                }
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                Err(_) => to_master.clear(),
            }
        }
        if stdin_ready {
            match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::Error::EIO | nix::Error::EBADF) => stdin_open = false,
                Ok(n) => to_master.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        if control_ready {
            let mut byte = [0u8];
            match nix::unistd::read(control.as_raw_fd(), &mut byte) {
                Ok(1) if byte[0] == b'w' => {
                    copy_window_size(stdin.as_raw_fd(), master.as_raw_fd());
                }
                _ => {
                    // The command has ended: what is still buffered in
                    // the terminal is all there is.
                    drain_master(master, &mut buf, &mut stdout);
                    return;
                }
            }
        }
    }
}

/// Copies what the master has now to `stdout`; `false` once the terminal
/// is closed.
fn drain_master(master: &OwnedFd, buf: &mut [u8], stdout: &mut std::io::Stdout) -> bool {
    loop {
        match nix::unistd::read(master.as_raw_fd(), buf) {
            Ok(0) | Err(nix::Error::EIO) => return false,
            Ok(n) => {
                let mut out = stdout.lock();
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return false;
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => return true,
            Err(_) => return false,
        }
    }
}
