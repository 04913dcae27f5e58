//! The kernel calls of the mount sequence, behind a trait so that the sequence can
//! be unit-tested with a recording double ([`RecordingSyscall`]).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::ExecutorError;

/// The kernel calls the rootfs setup makes.
pub trait Syscall {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ExecutorError>;
    /// `umount2(2)`.
    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), ExecutorError>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), ExecutorError>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> Result<(), ExecutorError>;
    /// `mkdir -p`.
    fn mkdir_all(&self, path: &Path) -> Result<(), ExecutorError>;
    /// Creates an empty regular file (a bind-mount target) if nothing exists there.
    fn create_file(&self, path: &Path) -> Result<(), ExecutorError>;
    /// `symlink(2)`: a link at `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> Result<(), ExecutorError>;
    /// Whether something exists at `path` (without following a final symlink).
    fn exists(&self, path: &Path) -> bool;
    /// Whether `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
}

fn sys_err(what: &str, path: &Path, source: nix::Error) -> ExecutorError {
    ExecutorError::Sys {
        what: format!("{what} {}", path.display()),
        source,
    }
}

fn io_err(what: &'static str, path: &Path, source: std::io::Error) -> ExecutorError {
    ExecutorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSyscall;

impl Syscall for RealSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ExecutorError> {
        nix::mount::mount(source, target, fstype, flags, data)
            .map_err(|e| sys_err("mount", target, e))
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), ExecutorError> {
        nix::mount::umount2(target, flags).map_err(|e| sys_err("umount2", target, e))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), ExecutorError> {
        nix::unistd::pivot_root(new_root, put_old).map_err(|e| sys_err("pivot_root", new_root, e))
    }

    fn chdir(&self, path: &Path) -> Result<(), ExecutorError> {
        nix::unistd::chdir(path).map_err(|e| sys_err("chdir", path, e))
    }

    fn mkdir_all(&self, path: &Path) -> Result<(), ExecutorError> {
        std::fs::create_dir_all(path).map_err(|e| io_err("creating directory", path, e))
    }

    fn create_file(&self, path: &Path) -> Result<(), ExecutorError> {
        if self.exists(path) {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map(drop)
            .map_err(|e| io_err("creating file", path, e))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), ExecutorError> {
        std::os::unix::fs::symlink(target, link).map_err(|e| io_err("creating symlink", link, e))
    }

    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// One call recorded by [`RecordingSyscall`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mount(2)`.
    Mount {
        /// Source.
        source: Option<PathBuf>,
        /// Target.
        target: PathBuf,
        /// File-system type.
        fstype: Option<String>,
        /// Flags.
        flags: MsFlags,
        /// Data (options).
        data: Option<String>,
    },
    /// `umount2(2)`.
    Umount2 {
        /// Target.
        target: PathBuf,
        /// Flags.
        flags: MntFlags,
    },
    /// `pivot_root(2)`.
    PivotRoot {
        /// New root.
        new_root: PathBuf,
        /// Where the old root goes.
        put_old: PathBuf,
    },
    /// `chdir(2)`.
    Chdir(PathBuf),
    /// `mkdir -p`.
    MkdirAll(PathBuf),
    /// Creating an empty file.
    CreateFile(PathBuf),
    /// `symlink(2)`.
    Symlink {
        /// What the link points to.
        target: PathBuf,
        /// The link.
        link: PathBuf,
    },
}

/// A test double that records every call and succeeds. `exists`/`is_dir` answer
/// from the sets given at construction.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<Call>>,
    existing: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl RecordingSyscall {
    /// A double where `existing` paths exist, and `dirs` exist as directories.
    pub fn new(existing: &[&str], dirs: &[&str]) -> Self {
        Self {
            calls: RefCell::default(),
            existing: existing.iter().chain(dirs).map(PathBuf::from).collect(),
            dirs: dirs.iter().map(PathBuf::from).collect(),
        }
    }

    /// The calls recorded so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn push(&self, call: Call) -> Result<(), ExecutorError> {
        self.calls.borrow_mut().push(call);
        Ok(())
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), ExecutorError> {
        self.push(Call::Mount {
            source: source.map(Path::to_path_buf),
            target: target.to_path_buf(),
            fstype: fstype.map(str::to_owned),
            flags,
            data: data.map(str::to_owned),
        })
    }

    fn umount2(&self, target: &Path, flags: MntFlags) -> Result<(), ExecutorError> {
        self.push(Call::Umount2 {
            target: target.to_path_buf(),
            flags,
        })
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<(), ExecutorError> {
        self.push(Call::PivotRoot {
            new_root: new_root.to_path_buf(),
            put_old: put_old.to_path_buf(),
        })
    }

    fn chdir(&self, path: &Path) -> Result<(), ExecutorError> {
        self.push(Call::Chdir(path.to_path_buf()))
    }

    fn mkdir_all(&self, path: &Path) -> Result<(), ExecutorError> {
        self.push(Call::MkdirAll(path.to_path_buf()))
    }

    fn create_file(&self, path: &Path) -> Result<(), ExecutorError> {
        self.push(Call::CreateFile(path.to_path_buf()))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<(), ExecutorError> {
        self.push(Call::Symlink {
            target: target.to_path_buf(),
            link: link.to_path_buf(),
        })
    }

    fn exists(&self, path: &Path) -> bool {
        self.existing.contains(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.dirs.contains(path)
    }
}
