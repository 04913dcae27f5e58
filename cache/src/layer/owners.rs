//! How the owners of files on disk relate to the owners recorded in layers.
//!
//! A forge running as root gives every extracted file its image owner, and a
//! layer records what is on disk. A rootless forge cannot always do that:
//!
//! - Without subordinate ids (no `/etc/subuid` range), its user namespaces
//!   map one id (its own, as root), so `chown` to any other owner fails.
//! - With a range, forge re-executes itself in a user namespace that maps
//!   its own ids to 0 and the range to 1…N (see `forge_executor::userns`):
//!   there it is root and owners up to N are real, but an owner above N
//!   still cannot be given.
//!
//! An owner that cannot be given is kept the way fuse-overlayfs's
//! `override_stat` keeps it: the file is owned by the image's root on disk
//! and its image owner `UID:GID` goes in the extended attribute
//! [`OWNER_XATTR`] (`user.forge.owner`). Extraction writes it, the sandbox's
//! COPY writes it for `--chown` and for the owners it keeps, overlayfs's
//! copy-up carries it into a RUN's upper dir, and the layer writer reads it
//! back and never exports it.
//!
//! Symlinks and device nodes cannot carry `user.*` attributes (the kernel
//! refuses them), so such a symlink is recorded as root's.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

/// The extended attribute holding a file's image owner, `UID:GID` in decimal,
/// when forge could not give the file that owner.
pub const OWNER_XATTR: &str = "user.forge.owner";

/// The kernel's overflow id: what an id outside a namespace's map shows as.
const OVERFLOW_ID: u32 = 65534;

/// How on-disk owners become image owners (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owners {
    /// Root in the initial user namespace: files are owned on disk by their
    /// image owners.
    OnDisk,
    /// A rootless forge (or its sandbox): the image's root is `uid:gid` on
    /// disk; image ids `1..=max_id` are themselves on disk (a namespace that
    /// maps a subordinate range; 0 when none); any other owner is kept in
    /// [`OWNER_XATTR`].
    InXattr {
        /// The on-disk uid that stands for the image's root.
        uid: u32,
        /// The on-disk gid that stands for the image's root group.
        gid: u32,
        /// The largest image id that is the same id on disk (0: none).
        max_id: u32,
    },
}

impl Default for Owners {
    fn default() -> Self {
        Self::of_this_process()
    }
}

/// The ids `0..=n` that a `/proc/self/{uid,gid}_map` maps contiguously from
/// 0: `Some(n)`; `None` if 0 itself is not mapped.
fn mapped_from_zero(map: &str) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace().map(|n| n.parse::<u64>().ok());
            let inside = f.next()??;
            let _outside = f.next()??;
            let count = f.next()??;
            Some((inside, count))
        })
        .collect();
    ranges.sort_unstable();
    let mut next = 0u64;
    for (inside, count) in ranges {
        if inside != next {
            break;
        }
        next = inside + count;
    }
    next.checked_sub(1)
}

/// This process's ids: effective uid and gid, and how far its user
/// namespace maps ids from 0 contiguously (`u32::MAX`: the initial
/// namespace's identity map).
#[derive(Debug, Clone, Copy)]
struct ProcessIds {
    euid: u32,
    egid: u32,
    mapped: u64,
}

fn process_ids() -> ProcessIds {
    static IDS: OnceLock<ProcessIds> = OnceLock::new();
    *IDS.get_or_init(|| {
        let read = |name| std::fs::read_to_string(format!("/proc/self/{name}")).ok();
        let mapped = |name| {
            read(name)
                .as_deref()
                .map_or(u64::from(u32::MAX), |m| mapped_from_zero(m).unwrap_or(0))
        };
        ProcessIds {
            euid: nix::unistd::geteuid().as_raw(),
            egid: nix::unistd::getegid().as_raw(),
            mapped: mapped("uid_map").min(mapped("gid_map")),
        }
    })
}

/// Whether this process is root with every id mapped (the initial user
/// namespace, or one mapping all of it): devices, `trusted.*` xattrs and any
/// owner are possible.
pub fn fully_privileged() -> bool {
    let ids = process_ids();
    ids.euid == 0 && ids.mapped >= u64::from(u32::MAX) - 1
}

impl Owners {
    /// [`Owners::OnDisk`] when [`fully_privileged`]; root of a user namespace
    /// mapping `0..=N`: [`Owners::InXattr`] `0:0` with `max_id` N; any other
    /// user: [`Owners::InXattr`] with its effective uid and gid.
    pub fn of_this_process() -> Self {
        let ids = process_ids();
        if fully_privileged() {
            Owners::OnDisk
        } else if ids.euid == 0 {
            Owners::InXattr {
                uid: 0,
                gid: 0,
                max_id: u32::try_from(ids.mapped).unwrap_or(u32::MAX),
            }
        } else {
            Owners::InXattr {
                uid: ids.euid,
                gid: ids.egid,
                max_id: 0,
            }
        }
    }

    /// The largest image id that exists on disk as itself (`u32::MAX` for
    /// [`Owners::OnDisk`]).
    pub fn max_mapped_id(self) -> u32 {
        match self {
            Owners::OnDisk => u32::MAX,
            Owners::InXattr { max_id, .. } => max_id,
        }
    }

    /// The image owner of `path`, whose metadata (`lstat`) is `meta`.
    pub fn image_owner(self, path: &Path, meta: &Metadata) -> (u32, u32) {
        match self {
            Owners::OnDisk => (meta.uid(), meta.gid()),
            Owners::InXattr { uid, gid, max_id } => read_owner(path).unwrap_or_else(|| {
                let map = |id, root| match id {
                    id if id == root => 0,
                    id if (1..=max_id).contains(&id) => id,
                    _ => OVERFLOW_ID,
                };
                (map(meta.uid(), uid), map(meta.gid(), gid))
            }),
        }
    }

    /// The on-disk id of an image id, if it has one.
    fn on_disk(id: u32, root: u32, max_id: u32) -> Option<u32> {
        match id {
            0 => Some(root),
            id if id <= max_id => Some(id),
            _ => None,
        }
    }

    /// Gives `path` the image owner `owner`: `lchown` where the owner exists
    /// on disk (any stale [`OWNER_XATTR`] removed), else the image root's
    /// on-disk ids plus [`OWNER_XATTR`]. `symlink` paths cannot carry the
    /// xattr and keep the image root then.
    pub fn set(self, path: &Path, symlink: bool, owner: (u32, u32)) -> io::Result<()> {
        let (root_uid, root_gid, max_id) = match self {
            Owners::OnDisk => {
                return std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1));
            }
            Owners::InXattr { uid, gid, max_id } => (uid, gid, max_id),
        };
        let meta = std::fs::symlink_metadata(path)?;
        let disk = (
            Self::on_disk(owner.0, root_uid, max_id),
            Self::on_disk(owner.1, root_gid, max_id),
        );
        let (want_uid, want_gid, keep) = match disk {
            (Some(u), Some(g)) => (u, g, false),
            _ => (root_uid, root_gid, true),
        };
        if (meta.uid(), meta.gid()) != (want_uid, want_gid) {
            std::os::unix::fs::lchown(path, Some(want_uid), Some(want_gid))?;
        }
        if symlink {
            return Ok(());
        }
        if keep {
            xattr::set(
                path,
                OWNER_XATTR,
                format!("{}:{}", owner.0, owner.1).as_bytes(),
            )
        } else {
            match xattr::remove(path, OWNER_XATTR) {
                Err(e)
                    if e.raw_os_error() != Some(nix::libc::ENODATA)
                        && e.raw_os_error() != Some(nix::libc::ENOTSUP) =>
                {
                    Err(e)
                }
                _ => Ok(()),
            }
        }
    }
}

/// Whether an xattr name is forge's owner attribute (never exported, never
/// taken from a layer).
pub(crate) fn is_owner_xattr(name: &[u8]) -> bool {
    name == OWNER_XATTR.as_bytes()
}

/// The owner kept in `path`'s [`OWNER_XATTR`], if it has a valid one.
fn read_owner(path: &Path) -> Option<(u32, u32)> {
    let value = xattr::get(path, OsStr::new(OWNER_XATTR)).ok()??;
    let text = std::str::from_utf8(&value).ok()?;
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootless_here(dir: &Path, max_id: u32) -> Owners {
        let meta = std::fs::metadata(dir).expect("stat");
        Owners::InXattr {
            uid: meta.uid(),
            gid: meta.gid(),
            max_id,
        }
    }

    fn write(dir: &Path, name: &str) -> std::path::PathBuf {
        let file = dir.join(name);
        std::fs::write(&file, b"x").expect("write");
        file
    }

    #[test]
    fn an_owner_round_trips_through_the_xattr() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = write(dir.path(), "f");
        let owners = rootless_here(dir.path(), 0);
        let meta = std::fs::symlink_metadata(&file).expect("stat");
        assert_eq!(owners.image_owner(&file, &meta), (0, 0));
        owners.set(&file, false, (5, 6)).expect("set");
        assert_eq!(owners.image_owner(&file, &meta), (5, 6));
        // Back to root: the attribute goes.
        owners.set(&file, false, (0, 0)).expect("set");
        assert_eq!(xattr::get(&file, OWNER_XATTR).expect("getxattr"), None);
        assert_eq!(owners.image_owner(&file, &meta), (0, 0));
    }

    #[test]
    fn ids_of_a_mapped_range_are_real_and_others_kept_in_the_xattr() {
        if !fully_privileged() {
            return; // chown to other ids needs root
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let owners = Owners::InXattr {
            uid: 0,
            gid: 0,
            max_id: 1000,
        };
        let inside = write(dir.path(), "inside");
        owners.set(&inside, false, (5, 6)).expect("set");
        let meta = std::fs::symlink_metadata(&inside).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (5, 6));
        assert_eq!(xattr::get(&inside, OWNER_XATTR).expect("getxattr"), None);
        assert_eq!(owners.image_owner(&inside, &meta), (5, 6));
        let beyond = write(dir.path(), "beyond");
        owners.set(&beyond, false, (5, 65534)).expect("set");
        let meta = std::fs::symlink_metadata(&beyond).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        assert_eq!(owners.image_owner(&beyond, &meta), (5, 65534));
        // Given a mapped owner again, the file loses the attribute.
        owners.set(&beyond, false, (7, 7)).expect("set");
        let meta = std::fs::symlink_metadata(&beyond).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (7, 7));
        assert_eq!(xattr::get(&beyond, OWNER_XATTR).expect("getxattr"), None);
    }

    #[test]
    fn a_file_owned_by_an_unmapped_id_is_nobody_and_a_bad_xattr_is_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = write(dir.path(), "f");
        let meta = std::fs::symlink_metadata(&file).expect("stat");
        let owners = Owners::InXattr {
            uid: meta.uid() + 1,
            gid: meta.gid(),
            max_id: 0,
        };
        assert_eq!(owners.image_owner(&file, &meta), (OVERFLOW_ID, 0));
        xattr::set(&file, OWNER_XATTR, b"5:x").expect("setxattr");
        assert_eq!(owners.image_owner(&file, &meta), (OVERFLOW_ID, 0));
    }

    #[test]
    fn on_disk_owners_are_the_image_owners() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = write(dir.path(), "f");
        xattr::set(&file, OWNER_XATTR, b"5:6").expect("setxattr");
        let meta = std::fs::symlink_metadata(&file).expect("stat");
        assert_eq!(
            Owners::OnDisk.image_owner(&file, &meta),
            (meta.uid(), meta.gid())
        );
    }

    #[test]
    fn the_mapped_prefix_of_an_id_map() {
        assert_eq!(mapped_from_zero("0 0 4294967295\n"), Some(4294967294));
        assert_eq!(mapped_from_zero("0 1000 1\n1 100000 65536\n"), Some(65536));
        assert_eq!(
            mapped_from_zero("         0       1000          1\n"),
            Some(0)
        );
        assert_eq!(mapped_from_zero("1 100000 10\n"), None);
        assert_eq!(mapped_from_zero(""), None);
    }
}
