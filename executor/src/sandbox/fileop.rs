//! COPY and ADD as a sandbox *action*: instead of exec'ing a command, the
//! sandbox mounts the step's root (an overlayfs whose upper dir becomes the
//! layer, or a prepared directory) and the read-only images of `--from`
//! stages in its private mount namespace, then copies in Rust.
//!
//! # Why no `pivot_root`
//!
//! Nothing but this code runs in the sandbox while it copies: no command of
//! the image, no other process that could swap a path component for a
//! symlink between a check and its use. So the destination is resolved in
//! user space, component by component, as a chroot would see it
//! ([`resolve_in_root`], BuildKit's `fs.RootPath`): `..` stops at the root,
//! an absolute symlink restarts from the root, and no path ever leaves it.
//! Staying in the host's root keeps the sources (the build context, a
//! download) reachable by their host paths, and the copy reads every source
//! entry with `lstat` and never follows a symlink below the source path
//! itself (which is resolved inside its own root the same way, as
//! BuildKit's `FollowSymlinks` does).
//!
//! # The rules (BuildKit's `fsutil/copy`, checked against Docker's engine)
//!
//! For each source (wildcards expanded against its root, Go's
//! `filepath.Match` per path, a match that is a directory not descended
//! into; a wildcard that matches nothing copies nothing):
//!
//! 1. the destination's parent directories are created (`mkdir -p`, mode
//!    0755, owned by the `--chown` owner or root); a destination ending in
//!    `/` is itself created so;
//! 2. a file (or symlink) source whose destination is an existing
//!    directory (symlinks followed, inside the root) lands in it under its
//!    own name; otherwise the destination is the new file's path;
//! 3. a directory source copies its *contents* into the destination,
//!    created like a parent (0755, the `--chown` owner) when missing; an
//!    existing destination keeps its metadata, while the directories below
//!    it get the source's mode and owner (and times) whether or not they
//!    existed;
//! 4. ownership is the source's (root:root for the build context, whose
//!    owners Docker's client resets) unless `--chown`; `--chmod` replaces
//!    the permission bits of every copied file and directory; times are the
//!    source's (layers clamp them anyway); hard links among the sources stay
//!    hard links; a non-directory in the way is replaced, a directory in the
//!    way of a file is an error;
//! 5. ADD: a source that is a tar archive (plain, gzip, bzip2, xz, zstd:
//!    detected by content) is extracted into the destination (always a
//!    directory, created 0755 with the `--chown` owner when missing) by
//!    [`forge_cache::layer::apply_layer`] into a scratch directory, which
//!    refuses entries that would escape, then merged in: owners and modes
//!    from the archive (neither `--chown` nor `--chmod` applies to them, as
//!    in Docker's engine); a leading `./` entry does not change the
//!    destination; existing directories get the archive's metadata;
//! 6. an item's `exclude` and `include` patterns ([`CopyItem`]; `COPY
//!    --exclude` and `--parents` from another image) filter what is below
//!    each matched source, with fsutil's rules: a path is copied when it
//!    (or a directory above it, below the source) matches an include
//!    pattern and no exclude pattern (`!` exceptions as in
//!    `.dockerignore`); the directories between the source and an included
//!    path are created with the source's metadata only when something
//!    below them is copied; the matched source itself is always kept.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use forge_cache::layer::Owners;
use forge_context::{MatchInfo, PatternMatcher};
use serde::{Deserialize, Serialize};

use super::error_chain;
use super::user;

/// Where the sources of one [`CopyItem`] are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRoot {
    /// The directory the source paths are relative to (a host directory:
    /// the build context, a download or heredoc directory; or the mount
    /// point of another image).
    pub dir: PathBuf,
    /// When set, the sandbox first mounts a read-only overlayfs of these
    /// layer snapshots (bottom first) on `dir` (one snapshot: a bind mount;
    /// none: `dir` stays an empty directory).
    pub mount: Option<Vec<PathBuf>>,
    /// The only entries that exist for the copy (paths relative to `dir`,
    /// `/`-separated, no leading `/`, parents of included entries listed
    /// too): how `.dockerignore` is honoured. `None`: everything.
    pub allowed: Option<BTreeSet<String>>,
    /// Keep the sources' owners (another image); `false`: root:root (the
    /// build context, as Docker's client sends it).
    pub keep_owner: bool,
}

/// One source of a COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyItem {
    /// Index into [`FileAction::sources`].
    pub root: usize,
    /// The source path, relative to the root (a leading `/` is the root).
    pub path: String,
    /// Whether `*`, `?` and `[` in `path` are wildcards.
    pub wildcards: bool,
    /// The absolute destination in the step's root; a trailing `/` means a
    /// directory.
    pub dest: String,
    /// ADD: extract the source if it is a tar archive.
    pub unpack: bool,
    /// `--exclude` patterns (`.dockerignore` syntax, `!` exceptions
    /// allowed), matched against each path below a matched source,
    /// relative to it (fsutil's `ExcludePatterns`): a path that matches,
    /// or is below a directory that matches, is not copied. The matched
    /// source itself is never excluded. Empty: none.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Include patterns (fsutil's `IncludePatterns`; `COPY --parents`
    /// gives the source path below its pivot), matched like `exclude`:
    /// only paths that match, or are below a match, are copied, and the
    /// directories above them are created as the source has them (mode,
    /// owner, times). A pattern without wildcards must name something that
    /// exists (BuildKit's `RequiredPaths`). Empty: everything.
    #[serde(default)]
    pub include: Vec<String>,
}

/// A COPY or ADD for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAction {
    /// Source roots.
    pub sources: Vec<SourceRoot>,
    /// What to copy, in order.
    pub items: Vec<CopyItem>,
    /// `--chown` (Docker's syntax), resolved in the destination's
    /// `/etc/passwd` and `/etc/group` (see [`user::resolve_chown`]).
    pub chown: Option<String>,
    /// `--chmod`: the permission bits of every copied file and directory.
    pub chmod: Option<u32>,
    /// An empty host directory for scratch work (archive extraction).
    pub scratch: PathBuf,
}

/// How many symlinks one resolution may follow (Linux's limit).
const MAX_SYMLINKS: usize = 40;

/// The most of `/etc/passwd` or `/etc/group` that is read.
const MAX_ETC_FILE: u64 = 16 << 20;

/// Splits `path` into its normal components (`.` and empty ones dropped).
fn parts(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// Resolves `path` (absolute or relative, both taken from the root) inside
/// `root` as a chroot would: symlinks are followed, absolute ones from
/// `root`, `..` never climbs above it. A missing component ends the
/// resolution: the rest is appended as written (with `..` applied
/// lexically). Returns the host path (under `root`).
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut done: Vec<OsString> = Vec::new();
    let mut todo: Vec<OsString> = parts(path).iter().rev().map(OsString::from).collect();
    let mut links = 0;
    let mut missing = false;
    while let Some(comp) = todo.pop() {
        if comp == ".." {
            done.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&comp);
        if !missing {
            match fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(format!("{path}: too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&candidate)
                        .map_err(|e| format!("reading link {path}: {e}"))?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(parts(&target).iter().rev().map(OsString::from));
                    continue;
                }
                Ok(_) => {}
                Err(_) => missing = true,
            }
        }
        done.push(comp);
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Whether a path component holds a wildcard (Go's `containsWildcards`).
fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Match`: `*` any run of non-`/` characters, `?` one, `[...]`
/// a class (`^` negates, `a-z` ranges), `\` escapes. A malformed pattern
/// matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    let Some((&first, rest)) = p.split_first() else {
        return n.is_empty();
    };
    match first {
        '*' => {
            // Any number of non-separators, then the rest.
            let mut i = 0;
            loop {
                if match_from(rest, &n[i..]) {
                    return true;
                }
                match n.get(i) {
                    Some(&c) if c != '/' => i += 1,
                    _ => return false,
                }
            }
        }
        '?' => match n.split_first() {
            Some((&c, nr)) if c != '/' => match_from(rest, nr),
            _ => false,
        },
        '[' => {
            let Some((&c, nr)) = n.split_first() else {
                return false;
            };
            if c == '/' {
                return false;
            }
            match class(rest, c) {
                Some((true, after)) => match_from(after, nr),
                _ => false,
            }
        }
        '\\' => match (rest.split_first(), n.split_first()) {
            (Some((&e, pr)), Some((&c, nr))) if e == c => match_from(pr, nr),
            _ => false,
        },
        lit => match n.split_first() {
            Some((&c, nr)) if c == lit => match_from(rest, nr),
            _ => false,
        },
    }
}

/// Matches `c` against the class starting after `[`; returns whether it
/// matched and the pattern after `]` (`None`: malformed).
fn class(p: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut p) = match p.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, p),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&ch, rest) = p.split_first()?;
        if ch == ']' && !first {
            return Some((matched != negated, rest));
        }
        first = false;
        let (lo, rest) = if ch == '\\' {
            let (&e, r) = rest.split_first()?;
            (e, r)
        } else {
            (ch, rest)
        };
        let (hi, rest) = match rest {
            ['-', h, r @ ..] if *h != ']' => {
                if *h == '\\' {
                    let (&e, r2) = r.split_first()?;
                    (e, r2)
                } else {
                    (*h, r)
                }
            }
            _ => (lo, rest),
        };
        if lo <= c && c <= hi {
            matched = true;
        }
        p = rest;
    }
}

/// The entries of `dir`, sorted by name (Go's `filepath.Walk` order).
fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, String> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("reading {}: {e}", dir.display()))?;
    names.sort();
    Ok(names)
}

/// `rel` joined under `base` with `/`.
fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

/// A source root as the copy sees it.
struct Source<'a> {
    dir: &'a Path,
    allowed: Option<&'a BTreeSet<String>>,
    keep_owner: bool,
}

impl Source<'_> {
    fn allows(&self, rel: &str) -> bool {
        rel.is_empty() || self.allowed.is_none_or(|a| a.contains(rel))
    }

    /// The host path's path relative to the root (`/`-separated), if under it.
    fn rel(&self, host: &Path) -> Option<String> {
        let rel = host.strip_prefix(self.dir).ok()?;
        Some(rel.to_string_lossy().into_owned())
    }
}

/// BuildKit's `ResolveWildcards`: the source path split at its first
/// component with a wildcard; the part before is resolved in the root, the
/// tree below it walked in name order, and every path whose remainder
/// matches the pattern is a match (a matching directory is not descended).
fn expand(source: &Source<'_>, path: &str) -> Result<Vec<String>, String> {
    let comps = parts(path);
    let Some(split) = comps.iter().position(|c| has_wildcards(c)) else {
        return Ok(vec![comps.join("/")]);
    };
    let fixed = comps[..split].join("/");
    let pattern = comps[split..].join("/");
    let base = resolve_in_root(source.dir, &fixed)?;
    let Some(base_rel) = source.rel(&base) else {
        return Ok(Vec::new());
    };
    if !fs::metadata(&base).is_ok_and(|m| m.is_dir()) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    walk_matches(source, &base, &base_rel, "", &pattern, &mut out)?;
    Ok(out)
}

fn walk_matches(
    source: &Source<'_>,
    dir: &Path,
    dir_rel: &str,
    under: &str,
    pattern: &str,
    out: &mut Vec<String>,
) -> Result<(), String> {
    for name in sorted_entries(dir)? {
        let name = name.to_string_lossy().into_owned();
        let rel = join_rel(under, &name);
        let full_rel = join_rel(dir_rel, &rel);
        if !source.allows(&full_rel) {
            continue;
        }
        let path = dir.join(&name);
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if glob_match(pattern, &rel) {
            out.push(full_rel);
            continue;
        }
        if is_dir {
            walk_matches(source, &path, dir_rel, &rel, pattern, out)?;
        }
    }
    Ok(())
}

/// The copier: owner, mode and hard-link state of one action.
struct Copier {
    /// How owners are given (an xattr rootless: see [`Owners`]).
    owners: Owners,
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
    /// `(dev, inode)` of a multiply-linked source file → where it was copied.
    links: HashMap<(u64, u64), PathBuf>,
}

fn err<'p>(what: &str, path: &'p Path) -> impl FnOnce(std::io::Error) -> String + 'p {
    let what = what.to_string();
    move |e| format!("{what} {}: {e}", path.display())
}

impl Copier {
    /// `mkdir -p` of an already-resolved host path: created directories get
    /// mode 0755 and the `--chown` owner (root otherwise).
    fn mkdir_all(&self, path: &Path) -> Result<(), String> {
        let mut missing: Vec<&Path> = Vec::new();
        for p in path.ancestors() {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => return Err(format!("{}: not a directory", p.display())),
                Err(_) => missing.push(p),
            }
        }
        for dir in missing.into_iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err("creating", dir)(e)),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .map_err(err("setting the mode of", dir))?;
            self.owners
                .set(dir, false, self.chown.unwrap_or((0, 0)))
                .map_err(err("chown", dir))?;
        }
        Ok(())
    }

    /// Copies `src` (host path) to `target`; `overwrite` gives an existing
    /// directory at `target` the source's metadata (below the top).
    fn copy(
        &mut self,
        source: &Source<'_>,
        src: &Path,
        target: &Path,
        overwrite: bool,
    ) -> Result<(), String> {
        let meta = fs::symlink_metadata(src).map_err(err("reading", src))?;
        let kind = meta.file_type();
        let mut copy_info = true;
        if kind.is_dir() {
            let created = match fs::symlink_metadata(target) {
                Err(_) => {
                    fs::create_dir(target).map_err(err("creating", target))?;
                    true
                }
                Ok(t) if !t.is_dir() => {
                    return Err(format!(
                        "cannot copy to non-directory: {}",
                        target.display()
                    ))
                }
                Ok(_) => false,
            };
            for name in sorted_entries(src)? {
                let child = src.join(&name);
                if let Some(rel) = source.rel(&child) {
                    if !source.allows(&rel) {
                        continue;
                    }
                }
                self.copy(source, &child, &target.join(&name), true)?;
            }
            copy_info = created || overwrite;
        } else {
            ensure_empty_file_target(target)?;
            if kind.is_file() {
                let key = (meta.dev(), meta.ino());
                let linked = match self.links.get(&key) {
                    Some(first) if meta.nlink() > 1 => fs::hard_link(first, target).is_ok(),
                    _ => false,
                };
                if !linked {
                    copy_file(src, target)?;
                    if meta.nlink() > 1 {
                        self.links.insert(key, target.to_path_buf());
                    }
                }
            } else if kind.is_symlink() {
                let link = fs::read_link(src).map_err(err("reading link", src))?;
                std::os::unix::fs::symlink(&link, target).map_err(err("creating", target))?;
            } else {
                use std::os::unix::fs::FileTypeExt;
                if kind.is_socket() {
                    return Ok(());
                }
                let sflag = if kind.is_fifo() {
                    nix::sys::stat::SFlag::S_IFIFO
                } else if kind.is_char_device() {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                nix::sys::stat::mknod(
                    target,
                    sflag,
                    nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777),
                    meta.rdev(),
                )
                .map_err(|e| format!("creating {}: {e}", target.display()))?;
            }
        }
        if copy_info {
            self.copy_info(source, src, &meta, target)?;
        }
        Ok(())
    }

    /// Owner, mode and times of `target` from the source's `meta`, `--chown`
    /// and `--chmod` applied.
    fn copy_info(
        &self,
        source: &Source<'_>,
        src: &Path,
        meta: &fs::Metadata,
        target: &Path,
    ) -> Result<(), String> {
        let owner = match self.chown {
            Some(ids) => ids,
            None if source.keep_owner => self.owners.image_owner(src, meta),
            None => (0, 0),
        };
        self.owners
            .set(target, meta.file_type().is_symlink(), owner)
            .map_err(err("chown", target))?;
        if !meta.file_type().is_symlink() {
            let mut mode = meta.mode() & 0o7777;
            if let Some(chmod) = self.chmod {
                mode = (mode & !0o777) | (chmod & 0o777);
            }
            fs::set_permissions(target, fs::Permissions::from_mode(mode))
                .map_err(err("setting the mode of", target))?;
        }
        let time = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
        nix::sys::stat::utimensat(
            None,
            target,
            &time(meta.atime(), meta.atime_nsec()),
            &time(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| format!("setting the times of {}: {e}", target.display()))?;
        Ok(())
    }
}

/// Removes a non-directory at `target` (fsutil's `ensureEmptyFileTarget`).
fn ensure_empty_file_target(target: &Path) -> Result<(), String> {
    match fs::symlink_metadata(target) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => Err(format!(
            "cannot replace directory {} with a file",
            target.display()
        )),
        Ok(_) => fs::remove_file(target).map_err(err("removing", target)),
    }
}

/// Copies a regular file's bytes to a new file (never through a symlink).
fn copy_file(src: &Path, target: &Path) -> Result<(), String> {
    let mut from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(src)
        .map_err(err("opening", src))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(target)
        .map_err(err("creating", target))?;
    std::io::copy(&mut from, &mut to).map_err(err("copying to", target))?;
    Ok(())
}

/// Reads a file of the destination root (resolved inside it); `None` if it
/// is missing.
fn read_root_file(root: &Path, path: &str) -> Result<Option<String>, String> {
    let host = resolve_in_root(root, path)?;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&host)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{path} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ETC_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading {path}: {e}"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Whether `path` is a tar archive: a regular file whose first tar header
/// reads after decompression (detected by content: gzip, bzip2, xz, zstd or
/// none), as BuildKit's `isArchivePath`.
fn is_archive(path: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let Ok(reader) = forge_cache::layer::decompress(file) else {
        return false;
    };
    let mut archive = tar::Archive::new(reader);
    let Ok(mut entries) = archive.entries() else {
        return false;
    };
    matches!(entries.next(), Some(Ok(_)))
}

/// Performs `action` in the step's root `root` (a host path: the merged
/// overlay or the prepared directory), giving files their owners as `owners`
/// says. The error is a message for the user.
pub fn perform(root: &Path, action: &FileAction, owners: Owners) -> Result<(), String> {
    let chown = match &action.chown {
        Some(spec) => Some(user::resolve_chown(
            spec,
            read_root_file(root, "/etc/passwd")?.as_deref(),
            read_root_file(root, "/etc/group")?.as_deref(),
        )?),
        None => None,
    };
    let mut copier = Copier {
        owners,
        chown,
        chmod: action.chmod,
        links: HashMap::new(),
    };
    for (n, item) in action.items.iter().enumerate() {
        let root_spec = action
            .sources
            .get(item.root)
            .ok_or_else(|| format!("source root {} is missing", item.root))?;
        let source = Source {
            dir: &root_spec.dir,
            allowed: root_spec.allowed.as_ref(),
            keep_owner: root_spec.keep_owner,
        };
        let filter = Filter::new(item)?;
        let matches = source.matches(&item.path, item.wildcards)?;
        for rel in matches {
            if item.unpack {
                let src = resolve_in_root(source.dir, &rel)?;
                if is_archive(&src) {
                    unpack(&mut copier, root, &src, &item.dest, action, n)?;
                    continue;
                }
            }
            // BuildKit's `RequiredPaths`: an include pattern without
            // wildcards names something that must exist.
            for pattern in item.include.iter().filter(|p| !has_wildcards(p)) {
                let required = join_rel(&rel, &parts(pattern).join("/"));
                let host = resolve_in_root(source.dir, &required)?;
                if fs::symlink_metadata(&host).is_err() || !source.allows(&required) {
                    return Err(format!("/{required}: not found"));
                }
            }
            copy_item(
                &mut copier,
                root,
                &source,
                &rel,
                &item.dest,
                filter.as_ref(),
            )?;
        }
    }
    Ok(())
}

/// The paths a source names under `dir` (relative, `/`-separated): its
/// wildcard matches as [`perform`] expands them, or the path itself.
pub(crate) fn expand_in(
    dir: &Path,
    allowed: Option<&BTreeSet<String>>,
    path: &str,
) -> Result<Vec<String>, String> {
    let source = Source {
        dir,
        allowed,
        keep_owner: false,
    };
    source.matches(path, true)
}

impl Source<'_> {
    /// The paths `path` names: wildcard matches (when `wildcards`), or
    /// itself.
    fn matches(&self, path: &str, wildcards: bool) -> Result<Vec<String>, String> {
        if wildcards {
            expand(self, path)
        } else {
            Ok(vec![parts(path).join("/")])
        }
    }
}

/// Go's `filepath.Split`: everything up to and including the last `/`, and
/// the rest.
fn split_last(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    }
}

/// One source (already expanded) copied with fsutil's `Copy` rules.
fn copy_item(
    copier: &mut Copier,
    root: &Path,
    source: &Source<'_>,
    rel: &str,
    dest: &str,
    filter: Option<&Filter>,
) -> Result<(), String> {
    let shown = format!("/{rel}");
    if !source.allows(rel) {
        return Err(format!("{shown}: not found"));
    }
    let src = resolve_in_root(source.dir, rel)?;
    let src_meta = match fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(_) => return Err(format!("{shown}: not found")),
    };
    if let Some(src_rel) = source.rel(&src) {
        if !source.allows(&src_rel) {
            return Err(format!("{shown}: not found"));
        }
    }
    let (dir, file) = split_last(dest);
    let ensure = if !file.is_empty() && file != "." {
        dir
    } else {
        dest
    };
    if !ensure.is_empty() {
        copier.mkdir_all(&resolve_in_root(root, ensure)?)?;
    }
    let mut dst = resolve_in_root(root, dest)?;
    let dest_meta = fs::metadata(&dst).ok();
    if !src_meta.is_dir() && dest_meta.as_ref().is_some_and(|m| m.is_dir()) {
        let base = parts(rel).last().copied().unwrap_or("").to_string();
        if base.is_empty() {
            return Err(format!("{shown}: cannot copy the root as a file"));
        }
        dst.push(base);
    }
    let target_dir = if src_meta.is_dir() && dest_meta.is_none() {
        dst.clone()
    } else {
        dst.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf())
    };
    // A missing destination of a directory's contents is created like its
    // parents (0755, the `--chown` owner): fsutil's `prepareTargetDir`.
    copier.mkdir_all(&target_dir)?;
    if !dst.starts_with(root) {
        return Err(format!("{dest}: outside the root"));
    }
    match filter {
        Some(filter) => copier.copy_filtered(source, &src, &dst, filter),
        None => copier.copy(source, &src, &dst, false),
    }
}

/// What an item's include and exclude patterns keep (see [`CopyItem`]).
struct Filter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    /// The literal leading components of each include pattern, to skip
    /// directories no include pattern can reach (`None`: do not skip).
    prefixes: Option<Vec<Vec<String>>>,
}

impl Filter {
    /// The item's filter; `None` when it has no patterns.
    fn new(item: &CopyItem) -> Result<Option<Filter>, String> {
        let compile = |what: &str, patterns: &[String]| -> Result<Option<PatternMatcher>, String> {
            if patterns.is_empty() {
                return Ok(None);
            }
            let matcher = PatternMatcher::new(patterns)
                .map_err(|e| format!("invalid {what} pattern {:?}: {}", e.pattern, e.reason))?;
            Ok((!matcher.is_empty()).then_some(matcher))
        };
        let include = compile("include", &item.include)?;
        let exclude = compile("--exclude", &item.exclude)?;
        if include.is_none() && exclude.is_none() {
            return Ok(None);
        }
        let prefixes = include.as_ref().and_then(|m| {
            if m.has_exclusions() {
                return None;
            }
            Some(
                m.patterns()
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .split('/')
                            .take_while(|c| !c.contains(['*', '?', '[', '\\']))
                            .map(str::to_string)
                            .collect()
                    })
                    .collect(),
            )
        });
        Ok(Some(Filter {
            include,
            exclude,
            prefixes,
        }))
    }

    /// Whether an include pattern may match something at or below the
    /// directory `rel`: its path and the pattern's literal prefix agree as
    /// far as both go.
    fn may_include_below(&self, rel: &str) -> bool {
        let Some(prefixes) = &self.prefixes else {
            return true;
        };
        let comps: Vec<&str> = parts(rel);
        prefixes
            .iter()
            .any(|prefix| prefix.iter().zip(&comps).all(|(p, c)| p == c))
    }

    /// Whether `exclude` has `!` exceptions (an excluded directory must
    /// then still be walked).
    fn has_exceptions(&self) -> bool {
        self.exclude
            .as_ref()
            .is_some_and(PatternMatcher::has_exclusions)
    }
}

/// A directory on the way to included paths, created (from `src`'s
/// metadata) only when something below it is copied.
struct PendingDir {
    src: PathBuf,
    target: PathBuf,
    copied: bool,
}

impl Copier {
    /// [`Copier::copy`] of a matched source through `filter` (fsutil's
    /// `copy` with include and exclude patterns).
    fn copy_filtered(
        &mut self,
        source: &Source<'_>,
        src: &Path,
        target: &Path,
        filter: &Filter,
    ) -> Result<(), String> {
        let start = MatchInfo::default();
        let mut pending = Vec::new();
        self.copy_matching(
            source,
            Walk {
                src,
                rel: "",
                target,
                overwrite: false,
            },
            filter,
            (&start, &start),
            &mut pending,
        )
    }

    /// One entry of a filtered copy; `parents` are the match states of the
    /// directory above (include, exclude).
    fn copy_matching(
        &mut self,
        source: &Source<'_>,
        at: Walk<'_>,
        filter: &Filter,
        parents: (&MatchInfo, &MatchInfo),
        pending: &mut Vec<PendingDir>,
    ) -> Result<(), String> {
        let mut include = true;
        let mut excluded = false;
        let mut infos = (MatchInfo::default(), MatchInfo::default());
        if !at.rel.is_empty() {
            if let Some(m) = &filter.include {
                let (hit, info) = m.matches_using_parent_results(at.rel, parents.0);
                include = hit;
                infos.0 = info;
            }
            if let Some(m) = &filter.exclude {
                let (hit, info) = m.matches_using_parent_results(at.rel, parents.1);
                if hit {
                    include = false;
                    excluded = true;
                }
                infos.1 = info;
            }
        }
        let meta = fs::symlink_metadata(at.src).map_err(err("reading", at.src))?;
        if !meta.is_dir() {
            if !include {
                return Ok(());
            }
            self.create_pending(source, pending)?;
            return self.copy(source, at.src, at.target, at.overwrite);
        }
        let mut created = false;
        if include {
            self.create_pending(source, pending)?;
            created = match fs::symlink_metadata(at.target) {
                Err(_) => {
                    fs::create_dir(at.target).map_err(err("creating", at.target))?;
                    true
                }
                Ok(t) if !t.is_dir() => {
                    return Err(format!(
                        "cannot copy to non-directory: {}",
                        at.target.display()
                    ))
                }
                Ok(_) => false,
            };
        }
        let walk = (!excluded || filter.has_exceptions()) && filter.may_include_below(at.rel);
        if walk {
            pending.push(PendingDir {
                src: at.src.to_path_buf(),
                target: at.target.to_path_buf(),
                copied: include,
            });
            let result: Result<(), String> = (|| {
                for name in sorted_entries(at.src)? {
                    let child = at.src.join(&name);
                    if let Some(rel) = source.rel(&child) {
                        if !source.allows(&rel) {
                            continue;
                        }
                    }
                    let rel = join_rel(at.rel, &name.to_string_lossy());
                    self.copy_matching(
                        source,
                        Walk {
                            src: &child,
                            rel: &rel,
                            target: &at.target.join(&name),
                            overwrite: true,
                        },
                        filter,
                        (&infos.0, &infos.1),
                        pending,
                    )?;
                }
                Ok(())
            })();
            pending.pop();
            result?;
        }
        if include && (created || at.overwrite) {
            self.copy_info(source, at.src, &meta, at.target)?;
        }
        Ok(())
    }

    /// Creates the pending directories above an included path (fsutil's
    /// `createParentDirs`): a missing one gets its source's metadata, an
    /// existing one its source's mode.
    fn create_pending(
        &mut self,
        source: &Source<'_>,
        pending: &mut [PendingDir],
    ) -> Result<(), String> {
        for dir in pending.iter_mut().filter(|d| !d.copied) {
            let meta = fs::metadata(&dir.src).map_err(err("reading", &dir.src))?;
            if !meta.is_dir() {
                return Err(format!("{} is not a directory", dir.src.display()));
            }
            match fs::symlink_metadata(&dir.target) {
                Err(_) => {
                    fs::create_dir(&dir.target).map_err(err("creating", &dir.target))?;
                    self.copy_info(source, &dir.src, &meta, &dir.target)?;
                }
                Ok(t) if !t.is_dir() => {
                    return Err(format!(
                        "cannot copy to non-directory: {}",
                        dir.target.display()
                    ))
                }
                Ok(_) => {
                    fs::set_permissions(
                        &dir.target,
                        fs::Permissions::from_mode(meta.mode() & 0o7777),
                    )
                    .map_err(err("setting the mode of", &dir.target))?;
                }
            }
            dir.copied = true;
        }
        Ok(())
    }
}

/// Where a filtered copy is: the source entry, its path below the matched
/// source, its target, and whether an existing directory there takes the
/// source's metadata.
#[derive(Clone, Copy)]
struct Walk<'p> {
    src: &'p Path,
    rel: &'p str,
    target: &'p Path,
    overwrite: bool,
}

/// Puts the staged archive entry `src` at `target`, as
/// `copier.copy(.., overwrite)` would, but a file (or link, node) with
/// nothing in its way is renamed there instead of copied: its metadata is
/// the archive's already. Directories are made and merged entry by entry
/// (then given the archive's metadata): overlayfs marks a directory renamed
/// into a merged one opaque, which would show in the layer.
fn merge(
    copier: &mut Copier,
    source: &Source<'_>,
    src: &Path,
    target: &Path,
) -> Result<(), String> {
    let meta = fs::symlink_metadata(src).map_err(err("reading", src))?;
    let existing = fs::symlink_metadata(target).ok();
    if meta.is_dir() {
        match existing {
            None => fs::create_dir(target).map_err(err("creating", target))?,
            Some(t) if t.is_dir() => {}
            Some(_) => return copier.copy(source, src, target, true),
        }
        for name in sorted_entries(src)? {
            merge(copier, source, &src.join(&name), &target.join(&name))?;
        }
        return copier.copy_info(source, src, &meta, target);
    }
    // A multiply-linked file is copied, so its links are made as the copier
    // makes them.
    if existing.is_none() && meta.nlink() == 1 && fs::rename(src, target).is_ok() {
        return Ok(());
    }
    copier.copy(source, src, target, true)
}

/// ADD of a local archive: extracted safely into scratch, then merged into
/// the destination directory.
fn unpack(
    copier: &mut Copier,
    root: &Path,
    archive: &Path,
    dest: &str,
    action: &FileAction,
    n: usize,
) -> Result<(), String> {
    let dest_dir = resolve_in_root(root, dest)?;
    copier.mkdir_all(&dest_dir)?;
    let open = || -> Result<Box<dyn Read>, String> {
        let file = fs::File::open(archive).map_err(err("opening", archive))?;
        forge_cache::layer::decompress(file)
            .map_err(|e| format!("reading archive {}: {e}", archive.display()))
    };
    let options = forge_cache::layer::ExtractOptions {
        owners: copier.owners,
        ..Default::default()
    };
    let extract = |reader: &mut dyn Read, into: &Path| {
        forge_cache::layer::extract_layer(reader, into, &options)
            .map(|_| ())
            .map_err(|e| format!("extracting {}: {}", archive.display(), error_chain(&e)))
    };
    // Into an empty destination, staging and merging would give what
    // extracting in place gives (the archive's entries with their metadata;
    // a `./` entry leaves the directory alone; nothing outside it reachable
    // but what the archive made): extract in place, each file made once.
    let empty = fs::read_dir(&dest_dir).is_ok_and(|mut entries| entries.next().is_none());
    if empty {
        return extract(&mut open()?, &dest_dir);
    }
    // Staged in the step's root when it can be (the same file system, so
    // what is new lands by a rename instead of a second copy); nothing of
    // it is left in the layer: made and removed in the same step, a new
    // directory leaves no trace in the upper dir. The scratch dir otherwise.
    let in_root = root.join(format!(".forge-unpack-{}-{n}", std::process::id()));
    let staging = if fs::create_dir(&in_root).is_ok() {
        in_root
    } else {
        let scratch = action.scratch.join(format!("unpack-{n}"));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).map_err(err("creating", &scratch))?;
        scratch
    };
    if let Err(e) = extract(&mut open()?, &staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    // Archive entries keep their owners and modes: neither `--chown` nor
    // `--chmod` applies to them (the engine's behaviour; `--chown` only owns
    // the destination directories created).
    let chmod = copier.chmod.take();
    let chown = copier.chown.take();
    let source = Source {
        dir: &staging,
        allowed: None,
        keep_owner: true,
    };
    let result = (|| {
        for name in sorted_entries(&staging)? {
            merge(copier, &source, &staging.join(&name), &dest_dir.join(&name))?;
        }
        Ok(())
    })();
    copier.chmod = chmod;
    copier.chown = chown;
    let _ = fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_is_go_filepath_match() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "d/a.txt"));
        assert!(glob_match("s?b/n*", "sub/n1"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[^a-c]x", "bx"));
        assert!(glob_match("[^a-c]x", "dx"));
        assert!(glob_match("\\*", "*"));
        assert!(!glob_match("\\*", "a"));
        assert!(!glob_match("[", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
    }

    #[test]
    fn wildcards_are_detected_unless_escaped() {
        assert!(has_wildcards("a*"));
        assert!(has_wildcards("[ab]"));
        assert!(!has_wildcards("a\\*"));
        assert!(!has_wildcards("plain"));
    }

    /// The regular files under `dir`, relative, sorted.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = e.path();
                if path.is_dir() {
                    todo.push(path);
                } else if let Ok(rel) = path.strip_prefix(dir) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn filtered_copy(
        src: &Path,
        path: &str,
        include: &[&str],
        exclude: &[&str],
    ) -> Result<Vec<String>, String> {
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let meta = fs::metadata(src).map_err(|e| e.to_string())?;
        let action = FileAction {
            sources: vec![SourceRoot {
                dir: src.to_path_buf(),
                mount: None,
                allowed: None,
                keep_owner: true,
            }],
            items: vec![CopyItem {
                root: 0,
                path: path.to_string(),
                wildcards: true,
                dest: "/d/".to_string(),
                unpack: false,
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
                include: include.iter().map(|s| s.to_string()).collect(),
            }],
            chown: Some(format!("{}:{}", meta.uid(), meta.gid())),
            chmod: None,
            scratch: scratch.path().to_path_buf(),
        };
        perform(root.path(), &action, Owners::OnDisk)?;
        Ok(files_under(&root.path().join("d")))
    }

    #[test]
    fn include_and_exclude_patterns_filter_below_the_source() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let src = dir.path();
        for f in [
            "app/logs/a.log",
            "app/logs/keep.log",
            "app/top.txt",
            "app/src/x.txt",
            "app/src/m.rs",
            "other/y.txt",
        ] {
            let path = src.join(f);
            fs::create_dir_all(path.parent().ok_or("parent")?).map_err(|e| e.to_string())?;
            fs::write(&path, f).map_err(|e| e.to_string())?;
        }
        assert_eq!(
            filtered_copy(src, "/app", &[], &["logs", "!logs/keep.log", "*.txt"])?,
            ["logs/keep.log", "src/m.rs", "src/x.txt"]
        );
        assert_eq!(
            filtered_copy(src, "/app", &[], &["**/*.txt", "logs"])?,
            ["src/m.rs"]
        );
        // The source itself is kept whatever the patterns.
        assert_eq!(
            filtered_copy(src, "/app/top.txt", &[], &["*.txt"])?,
            ["top.txt"]
        );
        // `--parents`: from the root through an include pattern.
        assert_eq!(
            filtered_copy(src, "/", &["app/*/*.txt"], &[])?,
            ["app/src/x.txt"]
        );
        assert_eq!(
            filtered_copy(src, "/app", &["src"], &["*.rs"])?,
            ["src/m.rs", "src/x.txt"]
        );
        assert_eq!(
            filtered_copy(src, "/", &["**/y.txt"], &[])?,
            ["other/y.txt"]
        );
        // A literal include pattern must exist.
        assert!(filtered_copy(src, "/", &["app/none"], &[]).is_err());
        Ok(())
    }

    #[test]
    fn resolution_stays_in_the_root() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = dir.path();
        fs::create_dir_all(root.join("usr/local/lib2")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("/usr/local/lib2", root.join("abs"))
            .map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("../../../../..", root.join("usr/local/up"))
            .map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("lib2", root.join("usr/local/rel"))
            .map_err(|e| e.to_string())?;
        assert_eq!(
            resolve_in_root(root, "/abs/x")?,
            root.join("usr/local/lib2/x")
        );
        assert_eq!(
            resolve_in_root(root, "/usr/local/up/etc")?,
            root.join("etc")
        );
        assert_eq!(resolve_in_root(root, "../../etc")?, root.join("etc"));
        assert_eq!(
            resolve_in_root(root, "usr/local/rel")?,
            root.join("usr/local/lib2")
        );
        assert_eq!(resolve_in_root(root, "/new/../x/")?, root.join("x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).map_err(|e| e.to_string())?;
        assert!(resolve_in_root(root, "/loop").is_err());
        Ok(())
    }
}
