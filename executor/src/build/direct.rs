//! COPY straight to a layer, without a sandbox and without copying a byte
//! to disk.
//!
//! A COPY of build-context files into paths where the parent image has
//! nothing has a layer that can be told in advance: the directories on the
//! way that exist (as overlayfs copies them up: their own metadata, a new
//! modification time where an entry is added), the directories created
//! (0755, the `--chown` owner), and the sources with the copy's owner, mode
//! and times. This module plans those entries, reading the parent only
//! through its layers' snapshots ([`Union`], overlayfs's lookup rules), and
//! the layer writer streams the sources into the blob. Nothing is created
//! on disk, so a 20,000-file COPY costs the reading of its files; the
//! layer's snapshot is extracted later, only if a step runs on it.
//!
//! Whenever the parent could change the outcome — a symlink or a
//! non-directory on the destination path, a source landing on something
//! that exists, an ADD that may unpack, a URL, another stage's files — the
//! plan gives up ([`None`]) and the step runs in the sandbox
//! ([`crate::sandbox::fileop`], whose rules this follows). The copy
//! snapshotter never takes this path, so the tests that compare the two
//! snapshotters' image IDs compare this planner with the sandbox's copy.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use forge_cache::layer::{Owners, PlannedEntry, PlannedKind};

use super::files::{FileFrom, FileSource, FileStep};
use crate::sandbox::fileop;
use crate::sandbox::user;
use crate::ExecutorError;

/// overlayfs's opaque-directory xattrs (as root; in a user namespace).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// The parent image as overlayfs would show it, looked up path by path in
/// its layers' snapshot directories (overlay form: whiteouts are `0:0`
/// character devices, opaque directories carry the xattr).
pub(super) struct Union {
    /// Snapshot directories, top layer first.
    lowers: Vec<PathBuf>,
    /// How their files' owners are the image's (this process extracted them).
    owners: Owners,
}

/// What a path is in the parent image.
enum Found {
    /// Nothing (never there, deleted, or hidden).
    Missing,
    /// Something: its host path in the topmost layer that has it, and its
    /// metadata there.
    Entry(PathBuf, Metadata),
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|name| matches!(xattr::get(path, name), Ok(Some(v)) if v == b"y"))
}

impl Union {
    /// The union of `lowers` (bottom layer first, as overlayfs's mount
    /// options list them the other way round).
    pub(super) fn new(mut lowers: Vec<PathBuf>) -> Self {
        lowers.reverse();
        Self {
            lowers,
            owners: Owners::of_this_process(),
        }
    }

    /// What `comps` (a path from the root) is, overlayfs's way: the topmost
    /// layer that has the path decides, a whiteout or a non-directory on
    /// the way hides everything below it, and an opaque directory hides the
    /// layers under its own.
    fn lookup(&self, comps: &[&[u8]]) -> io::Result<Found> {
        'layers: for lower in &self.lowers {
            let mut path = lower.clone();
            let mut opaque = false;
            for (i, comp) in comps.iter().enumerate() {
                path.push(std::ffi::OsStr::from_bytes(comp));
                let meta = match fs::symlink_metadata(&path) {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if opaque {
                            return Ok(Found::Missing);
                        }
                        continue 'layers;
                    }
                    Err(e) => return Err(e),
                };
                if is_whiteout(&meta) {
                    return Ok(Found::Missing);
                }
                if i + 1 == comps.len() {
                    return Ok(Found::Entry(path, meta));
                }
                if !meta.is_dir() {
                    return Ok(Found::Missing);
                }
                opaque = opaque || is_opaque(&path);
            }
            // An empty path is the root, which always exists.
            return Ok(Found::Entry(lower.clone(), fs::symlink_metadata(lower)?));
        }
        Ok(Found::Missing)
    }

    /// The bytes of a regular file of the image, `None` when missing, `Err`
    /// (give up) when a symlink or anything else is in the way.
    fn read_file(&self, comps: &[&[u8]]) -> Result<Option<String>, ()> {
        for n in 1..comps.len() {
            match self.lookup(&comps[..n]) {
                Ok(Found::Entry(_, meta)) if meta.is_dir() => {}
                Ok(Found::Missing) => return Ok(None),
                _ => return Err(()),
            }
        }
        match self.lookup(comps) {
            Ok(Found::Missing) => Ok(None),
            Ok(Found::Entry(path, meta)) if meta.is_file() => fs::read(path)
                .map(|b| Some(String::from_utf8_lossy(&b).into_owned()))
                .map_err(|_| ()),
            _ => Err(()),
        }
    }
}

/// Where a planned path stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A directory of the parent image, copied up because something is
    /// added below it.
    CopiedUp,
    /// A directory `mkdir -p` made.
    Created,
    /// A copied source.
    Source,
}

/// The layer being planned: its entries by tar name.
struct Plan<'u> {
    union: &'u Union,
    entries: BTreeMap<Vec<u8>, PlannedEntry>,
    origins: BTreeMap<Vec<u8>, Origin>,
    /// `--chown`, resolved.
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    /// The time of the copy, in seconds: directories that get a new entry
    /// have it, as they would on disk (the layer clamps it).
    now: i64,
}

/// Why planning stopped: the sandbox must do the step.
struct GiveUp;

fn tar_name(comps: &[&[u8]], dir: bool) -> Vec<u8> {
    let mut name = comps.join(&b'/');
    if dir {
        name.push(b'/');
    }
    name
}

/// What a path is in the layer being planned over its parent.
enum State {
    Missing,
    Dir,
    /// A symlink or a non-directory: the sandbox decides.
    Other,
}

impl Plan<'_> {
    fn state(&self, comps: &[&[u8]]) -> Result<State, GiveUp> {
        if comps.is_empty() || self.origins.contains_key(&tar_name(comps, true)) {
            return Ok(State::Dir);
        }
        if self.origins.contains_key(&tar_name(comps, false)) {
            return Ok(State::Other);
        }
        match self.union.lookup(comps).map_err(|_| GiveUp)? {
            Found::Missing => Ok(State::Missing),
            Found::Entry(_, meta) if meta.is_dir() => Ok(State::Dir),
            Found::Entry(..) => Ok(State::Other),
        }
    }

    /// Adds the parent image's directories above `comps` that are not in the
    /// plan yet (copied up), and gives the direct parent, if copied up, the
    /// time of the copy.
    fn copy_up_parents(&mut self, comps: &[&[u8]]) -> Result<(), GiveUp> {
        for n in 1..comps.len() {
            let name = tar_name(&comps[..n], true);
            if self.origins.contains_key(&name) {
                continue;
            }
            let Found::Entry(path, meta) = self.union.lookup(&comps[..n]).map_err(|_| GiveUp)?
            else {
                return Err(GiveUp);
            };
            if !meta.is_dir() {
                return Err(GiveUp);
            }
            let (uid, gid) = self.union.owners.image_owner(&path, &meta);
            self.entries.insert(
                name.clone(),
                PlannedEntry {
                    kind: PlannedKind::Dir,
                    mode: meta.mode() & 0o7777,
                    uid,
                    gid,
                    mtime: meta.mtime(),
                    xattrs_from: Some(path),
                },
            );
            self.origins.insert(name, Origin::CopiedUp);
        }
        if comps.len() > 1 {
            let parent = tar_name(&comps[..comps.len() - 1], true);
            if self.origins.get(&parent) == Some(&Origin::CopiedUp) {
                if let Some(entry) = self.entries.get_mut(&parent) {
                    entry.mtime = self.now;
                }
            }
        }
        Ok(())
    }

    /// `mkdir -p`: missing directories made 0755 with the `--chown` owner;
    /// anything but a directory on the way gives up.
    fn mkdir_all(&mut self, comps: &[&[u8]]) -> Result<(), GiveUp> {
        for n in 1..=comps.len() {
            match self.state(&comps[..n])? {
                State::Dir => {}
                State::Other => return Err(GiveUp),
                State::Missing => {
                    self.copy_up_parents(&comps[..n])?;
                    let (uid, gid) = self.owner.unwrap_or((0, 0));
                    let name = tar_name(&comps[..n], true);
                    self.entries.insert(
                        name.clone(),
                        PlannedEntry {
                            kind: PlannedKind::Dir,
                            mode: 0o755,
                            uid,
                            gid,
                            mtime: self.now,
                            xattrs_from: None,
                        },
                    );
                    self.origins.insert(name, Origin::Created);
                }
            }
        }
        Ok(())
    }

    /// One source entry (lstat'ed as `meta`) planned at `comps`, which must
    /// be free; a directory's allowed entries follow, recursively.
    /// `checked`: whether `comps` may exist in the parent image (only the
    /// top of a copy may; below a new directory nothing does).
    fn add_source(
        &mut self,
        source: &Source<'_>,
        src: &Path,
        meta: &Metadata,
        comps: &mut Vec<Vec<u8>>,
        checked: bool,
    ) -> Result<(), GiveUp> {
        let ft = meta.file_type();
        // A socket is not copied.
        let Some(kind) = PlannedKind::of(src, meta).map_err(|_| GiveUp)? else {
            return Ok(());
        };
        let refs: Vec<&[u8]> = comps.iter().map(Vec::as_slice).collect();
        if checked && !matches!(self.state(&refs)?, State::Missing) {
            return Err(GiveUp);
        }
        self.copy_up_parents(&refs)?;
        let mut mode = meta.mode() & 0o7777;
        if let (Some(chmod), false) = (self.chmod, ft.is_symlink()) {
            mode = (mode & !0o777) | (chmod & 0o777);
        }
        let (uid, gid) = self.owner.unwrap_or((0, 0));
        let name = tar_name(&refs, ft.is_dir());
        self.entries.insert(
            name.clone(),
            PlannedEntry {
                kind,
                mode,
                uid,
                gid,
                mtime: meta.mtime(),
                xattrs_from: None,
            },
        );
        self.origins.insert(name, Origin::Source);
        if ft.is_dir() {
            self.add_children(source, src, comps, false)?;
        }
        Ok(())
    }

    /// The allowed entries of source directory `src` planned under `comps`.
    fn add_children(
        &mut self,
        source: &Source<'_>,
        src: &Path,
        comps: &mut Vec<Vec<u8>>,
        checked: bool,
    ) -> Result<(), GiveUp> {
        for entry in fs::read_dir(src).map_err(|_| GiveUp)? {
            let entry = entry.map_err(|_| GiveUp)?;
            let path = entry.path();
            if !source.allows(&path) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|_| GiveUp)?;
            comps.push(entry.file_name().as_bytes().to_vec());
            let added = self.add_source(source, &path, &meta, comps, checked);
            comps.pop();
            added?;
        }
        Ok(())
    }
}

/// The build context as the copy sees it.
struct Source<'a> {
    dir: &'a Path,
    allowed: Option<&'a BTreeSet<String>>,
}

impl Source<'_> {
    /// Whether the host path `path` (under the context) is not ignored.
    fn allows(&self, path: &Path) -> bool {
        let Some(allowed) = self.allowed else {
            return true;
        };
        match path.strip_prefix(self.dir) {
            Ok(rel) if rel.as_os_str().is_empty() => true,
            Ok(rel) => allowed.contains(rel.to_string_lossy().as_ref()),
            Err(_) => false,
        }
    }
}

/// `--chown` (Docker's syntax) resolved in the image's `/etc/passwd` and
/// `/etc/group`.
pub(super) fn resolve_owner(union: &Union, spec: &str) -> Result<(u32, u32), ExecutorError> {
    let read = |path: &[&[u8]]| {
        union.read_file(path).map_err(|()| {
            ExecutorError::FileAction(format!(
                "--chown={spec}: /{} is not a regular file of the image",
                String::from_utf8_lossy(&path.join(&b'/'))
            ))
        })
    };
    let passwd = read(&[b"etc", b"passwd"])?;
    let group = read(&[b"etc", b"group"])?;
    user::resolve_chown(spec, passwd.as_deref(), group.as_deref())
        .map_err(|e| ExecutorError::FileAction(format!("--chown={spec}: {e}")))
}

/// The normal components of an absolute destination, `None` with a `..`.
fn dest_components(dest: &str) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for comp in dest.split('/') {
        match comp {
            "" | "." => {}
            ".." => return None,
            c => out.push(c.as_bytes().to_vec()),
        }
    }
    Some(out)
}

/// The layer entries of `step` over the image whose layers' snapshots are
/// `union`, or `None` when the sandbox must run the step (see the module
/// docs). Errors are the context's that the sandbox would meet too.
pub(super) fn plan(
    union: &Union,
    step: &FileStep<'_>,
) -> Result<Option<BTreeMap<Vec<u8>, PlannedEntry>>, ExecutorError> {
    let FileFrom::Context { dir, allowed } = &step.from else {
        return Ok(None);
    };
    if step.unpack {
        return Ok(None);
    }
    let owner = match &step.chown {
        None => None,
        Some(spec) => match resolve_owner(union, spec) {
            Ok(ids) => Some(ids),
            // The sandbox tells why.
            Err(_) => return Ok(None),
        },
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut plan = Plan {
        union,
        entries: BTreeMap::new(),
        origins: BTreeMap::new(),
        owner,
        chmod: step.chmod,
        now,
    };
    let source = Source {
        dir,
        allowed: allowed.as_ref(),
    };
    for (n, src) in step.sources.iter().enumerate() {
        let FileSource::Path(path) = src else {
            return Ok(None);
        };
        let dest = step
            .dests
            .get(n)
            .cloned()
            .flatten()
            .unwrap_or_else(|| step.dest.clone());
        let matches = match fileop::expand_in(dir, allowed.as_ref(), path) {
            Ok(m) => m,
            Err(_) => return Ok(None),
        };
        for rel in matches {
            if plan_item(&mut plan, &source, &rel, &dest).is_err() {
                return Ok(None);
            }
        }
    }
    Ok(Some(plan.entries))
}

/// One (expanded) source, `fileop::copy_item`'s steps on the plan.
fn plan_item(
    plan: &mut Plan<'_>,
    source: &Source<'_>,
    rel: &str,
    dest: &str,
) -> Result<(), GiveUp> {
    let src = fileop::resolve_in_root(source.dir, rel).map_err(|_| GiveUp)?;
    if !source.allows(&source.dir.join(rel.trim_start_matches('/'))) || !source.allows(&src) {
        return Err(GiveUp);
    }
    let meta = fs::symlink_metadata(&src).map_err(|_| GiveUp)?;
    let dest_comps = dest_components(dest).ok_or(GiveUp)?;
    let dest_refs: Vec<&[u8]> = dest_comps.iter().map(Vec::as_slice).collect();
    // `mkdir -p` of the destination's directory, or of the destination
    // itself when it ends in `/` (or is `.`).
    let names_dir = dest.ends_with('/') || dest.ends_with("/.") || dest_refs.is_empty();
    let ensure = if names_dir {
        &dest_refs[..]
    } else {
        &dest_refs[..dest_refs.len() - 1]
    };
    plan.mkdir_all(ensure)?;
    let dest_state = plan.state(&dest_refs)?;
    let mut target = dest_comps.clone();
    if meta.is_dir() {
        match dest_state {
            State::Missing => plan.mkdir_all(&dest_refs)?,
            State::Dir => {}
            State::Other => return Err(GiveUp),
        }
        // The destination keeps its metadata; the contents land in it, each
        // checked against the parent image.
        plan.add_children(source, &src, &mut target, true)
    } else {
        match dest_state {
            State::Dir => {
                let base = Path::new(rel)
                    .file_name()
                    .ok_or(GiveUp)?
                    .as_bytes()
                    .to_vec();
                target.push(base);
            }
            State::Missing => {}
            State::Other => return Err(GiveUp),
        }
        plan.add_source(source, &src, &meta, &mut target, true)
    }
}

/// The tar names of a plan's entries, in order (for tests).
#[cfg(test)]
fn names(entries: &BTreeMap<Vec<u8>, PlannedEntry>) -> Vec<String> {
    entries
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    struct Fixture {
        _tmp: tempfile::TempDir,
        ctx: PathBuf,
        base: PathBuf,
    }

    fn fixture() -> io::Result<Fixture> {
        let tmp = tempfile::tempdir()?;
        let ctx = tmp.path().join("ctx");
        let base = tmp.path().join("base");
        fs::create_dir_all(ctx.join("src/sub"))?;
        fs::write(ctx.join("src/a.txt"), "a")?;
        fs::write(ctx.join("src/sub/b.txt"), "b")?;
        fs::write(ctx.join("top.txt"), "t")?;
        fs::create_dir_all(base.join("usr/local"))?;
        fs::create_dir_all(base.join("etc"))?;
        fs::write(
            base.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:10:20::/:/bin/sh\n",
        )?;
        fs::set_permissions(base.join("usr"), fs::Permissions::from_mode(0o750))?;
        symlink("/usr/local", base.join("lnk"))?;
        Ok(Fixture {
            _tmp: tmp,
            ctx,
            base,
        })
    }

    fn step<'a>(ctx: &Path, sources: &[&str], dest: &str) -> FileStep<'a> {
        FileStep {
            sources: sources
                .iter()
                .map(|s| FileSource::Path(s.to_string()))
                .collect(),
            dest: dest.to_string(),
            from: FileFrom::Context {
                dir: ctx.to_path_buf(),
                allowed: None,
            },
            chown: None,
            chmod: None,
            unpack: false,
            dests: Vec::new(),
            link: false,
        }
    }

    #[test]
    fn a_directory_into_a_new_path_plans_parents_and_contents() -> Result<(), ExecutorError> {
        let f = fixture().map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        let union = Union::new(vec![f.base.clone()]);
        let entries = plan(&union, &step(&f.ctx, &["src"], "/usr/local/app/"))?
            .ok_or_else(|| ExecutorError::FileAction("gave up".into()))?;
        assert_eq!(
            names(&entries),
            [
                "usr/",
                "usr/local/",
                "usr/local/app/",
                "usr/local/app/a.txt",
                "usr/local/app/sub/",
                "usr/local/app/sub/b.txt"
            ]
        );
        // Copied up with its own mode; created 0755.
        assert_eq!(entries[&b"usr/".to_vec()].mode, 0o750);
        assert_eq!(entries[&b"usr/local/app/".to_vec()].mode, 0o755);
        Ok(())
    }

    #[test]
    fn anything_in_the_way_gives_up() -> Result<(), ExecutorError> {
        let f = fixture().map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        let union = Union::new(vec![f.base.clone()]);
        // A symlink on the destination path, an existing file, an existing
        // directory's entry.
        assert!(plan(&union, &step(&f.ctx, &["top.txt"], "/lnk/x"))?.is_none());
        assert!(plan(&union, &step(&f.ctx, &["top.txt"], "/etc/passwd"))?.is_none());
        fs::create_dir_all(f.base.join("srv/sub"))
            .map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        assert!(plan(&union, &step(&f.ctx, &["src"], "/srv/"))?.is_none());
        Ok(())
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() -> Result<(), ExecutorError> {
        let f = fixture().map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        let upper = f.base.parent().map(|p| p.join("upper")).unwrap_or_default();
        fs::create_dir_all(upper.join("usr"))
            .map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        // `/etc` deleted in the upper layer (as a whiteout device).
        nix::sys::stat::mknod(
            &upper.join("etc"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        let union = Union::new(vec![f.base.clone(), upper.clone()]);
        assert!(matches!(
            union.lookup(&[b"etc", b"passwd"]),
            Ok(Found::Missing)
        ));
        assert!(matches!(
            union.lookup(&[b"usr", b"local"]),
            Ok(Found::Entry(..))
        ));
        xattr::set(upper.join("usr"), "trusted.overlay.opaque", b"y")
            .map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        assert!(matches!(
            union.lookup(&[b"usr", b"local"]),
            Ok(Found::Missing)
        ));
        // The copy can now go where `/etc/passwd` was.
        assert!(plan(&union, &step(&f.ctx, &["top.txt"], "/etc/passwd"))?.is_some());
        Ok(())
    }

    #[test]
    fn chown_names_are_read_from_the_image() -> Result<(), ExecutorError> {
        let f = fixture().map_err(|e| ExecutorError::FileAction(e.to_string()))?;
        let union = Union::new(vec![f.base.clone()]);
        let mut s = step(&f.ctx, &["top.txt"], "/opt/");
        s.chown = Some("app".into());
        let entries =
            plan(&union, &s)?.ok_or_else(|| ExecutorError::FileAction("gave up".into()))?;
        let file = &entries[&b"opt/top.txt".to_vec()];
        assert_eq!((file.uid, file.gid), (10, 20));
        let dir = &entries[&b"opt/".to_vec()];
        assert_eq!((dir.uid, dir.gid), (10, 20));
        Ok(())
    }
}
