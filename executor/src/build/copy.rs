//! The copy snapshotter: where overlayfs cannot be mounted, a RUN runs in a
//! plain directory holding the whole image, and its layer is what changed in
//! that directory.
//!
//! Before the RUN, every entry's identity is recorded: inode, birth time (so a
//! reused inode number is still a new object), type, change time (`ctime`
//! moves on every write, chmod, chown, xattr change, link and rename), mode
//! and owner. Afterwards the tree is compared with it, giving what overlayfs
//! would have put in the upper directory:
//!
//! - a path that is new, or the same object with another `ctime`, mode or
//!   owner: [`Change::Upsert`];
//! - a path whose object was replaced: [`Change::Upsert`], or, for a
//!   directory, [`Change::Opaque`] and an upsert of everything under it
//!   (overlayfs makes a directory created over a whiteout opaque);
//! - a path gone: [`Change::Delete`], only where its parent directory is still
//!   the same object (a deleted or replaced parent covers it).
//!
//! Parent directories of changes are added by the layer writer, as overlayfs
//! copies them up. overlayfs also breaks hard links on copy-up (a write to one
//! name of a lower file with several names copies up that name only), so
//! [`break_hardlinks`] gives every name of a multiply-linked file of the image
//! its own inode before the RUN; otherwise `ln /lower/a /c` would change the
//! `ctime` of every other name of `a` too and put them in the layer.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use forge_cache::layer::Change;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::ExecutorError;

/// What identifies an entry of the tree, and what of it a layer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    ino: u64,
    /// Birth time, where the file system records one.
    born: Option<SystemTime>,
    /// `st_mode & S_IFMT`.
    kind: u32,
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            ino: meta.ino(),
            born: meta.created().ok(),
            kind: meta.mode() & libc::S_IFMT,
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    /// The same file-system object (not deleted and made again).
    fn same_object(&self, other: &Identity) -> bool {
        self.ino == other.ino && self.born == other.born && self.kind == other.kind
    }

    fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    /// The same object with the same mode and owner (its `ctime` aside).
    pub(crate) fn same_but_times(&self, other: &Identity) -> bool {
        self.same_object(other)
            && (self.mode, self.uid, self.gid) == (other.mode, other.uid, other.gid)
    }
}

/// Every entry under a root (not the root itself), by path relative to it.
/// `PathBuf` orders by component, so a directory's descendants directly
/// follow it.
pub(crate) type Tree = BTreeMap<PathBuf, Identity>;

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ExecutorError + 'p {
    move |source| ExecutorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys(what: &str, path: &Path) -> impl FnOnce(nix::Error) -> ExecutorError {
    let what = format!("{what} {}", path.display());
    move |source| ExecutorError::Sys { what, source }
}

/// Records every entry under `root` (symlinks not followed). Also returns the
/// latest `ctime` seen.
pub(crate) fn scan(root: &Path) -> Result<(Tree, (i64, i64)), ExecutorError> {
    let mut tree = Tree::new();
    let mut latest = (i64::MIN, 0);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in fs::read_dir(&dir).map_err(io("reading", &dir))? {
            let entry = entry.map_err(io("reading", &dir))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io("reading", &path))?;
            let id = Identity::of(&meta);
            latest = latest.max(id.ctime);
            let child = rel.join(entry.file_name());
            if meta.is_dir() {
                stack.push(child.clone());
            }
            tree.insert(child, id);
        }
    }
    Ok((tree, latest))
}

/// Waits (at most a second) until a file written in `dir` gets a `ctime` later
/// than `latest`: inode times come from a clock that ticks every few
/// milliseconds, and a change made within the tick of the scan would
/// otherwise leave the `ctime` as it was.
pub(crate) fn wait_for_clock(dir: &Path, latest: (i64, i64)) -> Result<(), ExecutorError> {
    let probe = dir.join("clock-probe");
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        fs::write(&probe, b"").map_err(io("writing", &probe))?;
        let meta = fs::symlink_metadata(&probe).map_err(io("reading", &probe))?;
        if (meta.ctime(), meta.ctime_nsec()) > latest || Instant::now() > deadline {
            let _ = fs::remove_file(&probe);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The changes that turn `before` into `after` (see the module docs).
pub(crate) fn changes(before: &Tree, after: &Tree) -> Vec<Change> {
    let mut out = Vec::new();
    // The directory replaced by a new one whose whole content is upserted.
    let mut opaque: Option<&Path> = None;
    for (path, now) in after {
        if let Some(dir) = opaque {
            if path.starts_with(dir) {
                out.push(Change::Upsert(path.clone()));
                continue;
            }
            opaque = None;
        }
        match before.get(path) {
            None => out.push(Change::Upsert(path.clone())),
            Some(was) if was.same_object(now) => {
                if was != now {
                    out.push(Change::Upsert(path.clone()));
                }
            }
            Some(_) if now.is_dir() => {
                out.push(Change::Opaque(path.clone()));
                opaque = Some(path);
            }
            Some(_) => out.push(Change::Upsert(path.clone())),
        }
    }
    for path in before.keys() {
        if after.contains_key(path) {
            continue;
        }
        let parent_kept = match path.parent() {
            None => true,
            Some(p) if p.as_os_str().is_empty() => true,
            Some(p) => match (before.get(p), after.get(p)) {
                (Some(was), Some(now)) => was.same_object(now) && now.is_dir(),
                _ => false,
            },
        };
        if parent_kept {
            out.push(Change::Delete(path.clone()));
        }
    }
    out
}

/// Gives every name of a multiply-linked file or symlink under `root` but the
/// first (in path order) its own copy: contents, owner, mode, xattrs and
/// times (the parent directory's times are restored too). Device nodes and
/// FIFOs stay linked. Returns whether anything was copied.
pub(crate) fn break_hardlinks(root: &Path) -> Result<bool, ExecutorError> {
    let (tree, _) = scan(root)?;
    let mut first: HashMap<u64, &Path> = HashMap::new();
    let mut extra = Vec::new();
    for (rel, id) in &tree {
        if id.is_dir() || (id.kind != libc::S_IFREG && id.kind != libc::S_IFLNK) {
            continue;
        }
        let path = root.join(rel);
        let meta = fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.nlink() < 2 {
            continue;
        }
        if first.insert(id.ino, rel).is_some() {
            extra.push(path);
        }
    }
    for (n, path) in extra.iter().enumerate() {
        unlink_copy(path, n)?;
    }
    Ok(!extra.is_empty())
}

fn timespecs(meta: &fs::Metadata) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(meta.atime(), meta.atime_nsec()),
        TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    )
}

/// Replaces `path` (a file or symlink) by a copy of itself with a new inode.
fn unlink_copy(path: &Path, n: usize) -> Result<(), ExecutorError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent_meta = fs::symlink_metadata(parent).map_err(io("reading", parent))?;
    let meta = fs::symlink_metadata(path).map_err(io("reading", path))?;
    let temp = parent.join(format!(".forge-unlink-{}-{n}", std::process::id()));
    let made = (|| {
        if meta.file_type().is_symlink() {
            let target = fs::read_link(path).map_err(io("reading", path))?;
            std::os::unix::fs::symlink(&target, &temp).map_err(io("creating", &temp))?;
        } else {
            fs::copy(path, &temp).map_err(io("copying", path))?;
        }
        std::os::unix::fs::lchown(&temp, Some(meta.uid()), Some(meta.gid()))
            .map_err(io("changing the owner of", &temp))?;
        if !meta.file_type().is_symlink() {
            // After chown, which clears set-id bits.
            fs::set_permissions(&temp, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("changing the mode of", &temp))?;
        }
        if let Ok(names) = xattr::list(path) {
            for name in names {
                if let Ok(Some(value)) = xattr::get(path, &name) {
                    xattr::set(&temp, &name, &value).map_err(io("setting an xattr of", &temp))?;
                }
            }
        }
        let (atime, mtime) = timespecs(&meta);
        utimensat(None, &temp, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(sys("utimensat", &temp))?;
        fs::rename(&temp, path).map_err(io("renaming over", path))
    })();
    if made.is_err() {
        let _ = fs::remove_file(&temp);
    }
    made?;
    if !parent_meta.file_type().is_symlink() && !parent_meta.file_type().is_fifo() {
        let (atime, mtime) = timespecs(&parent_meta);
        utimensat(
            None,
            parent,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(sys("utimensat", parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64, kind: u32, ctime: i64) -> Identity {
        Identity {
            ino,
            born: None,
            kind,
            ctime: (ctime, 0),
            mode: kind | 0o755,
            uid: 0,
            gid: 0,
        }
    }

    fn tree(entries: &[(&str, Identity)]) -> Tree {
        entries
            .iter()
            .map(|(p, i)| (PathBuf::from(p), *i))
            .collect()
    }

    const D: u32 = libc::S_IFDIR;
    const F: u32 = libc::S_IFREG;

    #[test]
    fn unchanged_trees_have_no_changes() {
        let t = tree(&[("a", id(1, D, 1)), ("a/f", id(2, F, 1))]);
        assert!(changes(&t, &t).is_empty());
    }

    #[test]
    fn new_changed_and_deleted_entries() {
        let before = tree(&[
            ("a", id(1, D, 1)),
            ("a/f", id(2, F, 1)),
            ("a/g", id(3, F, 1)),
            ("d", id(4, D, 1)),
            ("d/x", id(5, F, 1)),
            ("d/y", id(6, D, 1)),
            ("d/y/z", id(7, F, 1)),
        ]);
        let after = tree(&[
            ("a", id(1, D, 2)),
            ("a/f", id(2, F, 2)),
            ("a/g", id(3, F, 1)),
            ("a/new", id(8, F, 2)),
        ]);
        assert_eq!(
            changes(&before, &after),
            vec![
                Change::Upsert("a".into()),
                Change::Upsert("a/f".into()),
                Change::Upsert("a/new".into()),
                Change::Delete("d".into()),
            ]
        );
    }

    #[test]
    fn a_replaced_directory_is_opaque_with_all_its_content() {
        let before = tree(&[
            ("d", id(1, D, 1)),
            ("d/kept-name", id(2, F, 1)),
            ("d/gone", id(3, F, 1)),
            ("f", id(4, F, 1)),
            ("f2", id(9, F, 1)),
        ]);
        let after = tree(&[
            ("d", id(5, D, 2)),
            ("d/kept-name", id(2, F, 1)),
            ("d/sub", id(6, D, 2)),
            ("f", id(7, D, 2)),
            ("f/x", id(8, F, 2)),
            ("f2", id(10, F, 2)),
        ]);
        assert_eq!(
            changes(&before, &after),
            vec![
                Change::Opaque("d".into()),
                Change::Upsert("d/kept-name".into()),
                Change::Upsert("d/sub".into()),
                Change::Opaque("f".into()),
                Change::Upsert("f/x".into()),
                Change::Upsert("f2".into()),
            ]
        );
    }

    #[test]
    fn a_directory_replaced_by_a_file_hides_its_old_children() {
        let before = tree(&[("d", id(1, D, 1)), ("d/x", id(2, F, 1))]);
        let after = tree(&[("d", id(3, F, 2))]);
        assert_eq!(changes(&before, &after), vec![Change::Upsert("d".into())]);
    }

    #[test]
    fn hard_links_are_broken_keeping_metadata() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir(root.join("d"))?;
        fs::write(root.join("d/a"), "data")?;
        fs::set_permissions(root.join("d/a"), fs::Permissions::from_mode(0o640))?;
        fs::hard_link(root.join("d/a"), root.join("d/b"))?;
        fs::write(root.join("single"), "x")?;
        assert!(break_hardlinks(root)?);
        let a = fs::metadata(root.join("d/a"))?;
        let b = fs::metadata(root.join("d/b"))?;
        assert_ne!(a.ino(), b.ino());
        assert_eq!((a.nlink(), b.nlink()), (1, 1));
        assert_eq!(b.mode() & 0o7777, 0o640);
        assert_eq!(b.mtime(), a.mtime());
        assert_eq!(fs::read_to_string(root.join("d/b"))?, "data");
        assert!(!break_hardlinks(root)?);
        Ok(())
    }
}
