//! Turning a directory tree, or a list of changes in it, into a tar stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::compress::TarSink;
use super::owners::{is_owner_xattr, Owners};
use super::tarfmt::{self, kind, Header, Xattrs};
use super::{Change, LayerError, LayerOptions, PlannedEntry, PlannedKind};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE: [&[u8]; 2] = [b"trusted.overlay.opaque", b"user.overlay.opaque"];

/// What one tar entry is made from.
pub(crate) enum Item {
    /// A file, directory, link or node on disk.
    Disk(PathBuf, Metadata),
    /// A whiteout `.wh.NAME` (from an overlay `0:0` device or a deletion),
    /// with the device's image owner.
    Whiteout { uid: u32, gid: u32 },
    /// A `.wh..wh..opq` marker, with its directory's permission bits and image
    /// owner.
    Opaque { mode: u32, uid: u32, gid: u32 },
    /// An entry whose metadata is given.
    Planned(PlannedEntry),
}

struct State {
    sde: u64,
    owners: Owners,
    /// First tar name of each multiply-linked inode.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl State {
    fn new(opts: &LayerOptions) -> Self {
        Self {
            sde: opts.source_date_epoch,
            owners: opts.owners,
            links: HashMap::new(),
        }
    }

    fn clamp(&self, mtime: i64) -> u64 {
        u64::try_from(mtime).unwrap_or(0).min(self.sde)
    }
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
    move |source| LayerError::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn whiteout_item(owners: Owners, path: &Path, device: &Metadata) -> Item {
    let (uid, gid) = owners.image_owner(path, device);
    Item::Whiteout { uid, gid }
}

fn opaque_item(owners: Owners, path: &Path, dir: &Metadata) -> Item {
    let (uid, gid) = owners.image_owner(path, dir);
    Item::Opaque {
        mode: dir.mode() & 0o777,
        uid,
        gid,
    }
}

/// An overlay whiteout is a character device with device number 0:0.
fn is_overlay_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// The exported xattrs of `path`, sorted by name.
fn read_xattrs(path: &Path) -> Result<Xattrs, LayerError> {
    let names = match xattr::list(path) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(read_err(path)(e)),
    };
    let mut out = Vec::new();
    for name in names {
        let key = name.as_bytes();
        // Skipped before reading their values: overlayfs puts
        // `trusted.overlay.origin` on every file it copies up.
        if key == b"security.selinux"
            || is_owner_xattr(key)
            || key.starts_with(b"trusted.overlay.")
            || key.starts_with(b"user.overlay.")
        {
            continue;
        }
        let value = match xattr::get(path, &name) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODATA) => continue,
            Err(e) => return Err(read_err(path)(e)),
        };
        out.push((key.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

fn is_opaque_dir(path: &Path) -> bool {
    OVERLAY_OPAQUE
        .iter()
        .any(|name| matches!(xattr::get(path, OsStr::from_bytes(name)), Ok(Some(v)) if v == b"y"))
}

/// The header of a whiteout or opaque marker: an empty regular file. Modes and
/// owners are Docker's (its overlay2 driver writes whiteouts as mode 0600 with
/// the device's owner, opaque markers with their directory's permission bits
/// and owner), so layers read the same as `docker save`'s.
fn marker_header(name: &[u8], mode: u32, uid: u32, gid: u32) -> Header<'_> {
    Header {
        name,
        kind: kind::FILE,
        mode,
        uid: uid.into(),
        gid: gid.into(),
        size: 0,
        mtime: 0,
        link: &[],
        dev_major: 0,
        dev_minor: 0,
        xattrs: &[],
    }
}

/// Write one entry from disk. `name` is its tar name (`/`-terminated for dirs).
fn emit_disk(
    tw: &mut TarSink<'_>,
    st: &mut State,
    name: &[u8],
    path: &Path,
    meta: &Metadata,
) -> Result<(), LayerError> {
    let ft = meta.file_type();
    if ft.is_socket() {
        return Ok(());
    }
    let mut first_link = None;
    if !ft.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        match st.links.get(&key) {
            Some(first) => first_link = Some(first.clone()),
            None => {
                st.links.insert(key, name.to_vec());
            }
        }
    }
    let (uid, gid) = st.owners.image_owner(path, meta);
    let mut h = Header {
        name,
        kind: kind::FILE,
        mode: meta.mode() & 0o7777,
        uid: uid.into(),
        gid: gid.into(),
        size: 0,
        mtime: st.clamp(meta.mtime()),
        link: &[],
        dev_major: 0,
        dev_minor: 0,
        xattrs: &[],
    };
    if let Some(first) = &first_link {
        h.kind = kind::HARDLINK;
        h.link = first;
        return tarfmt::write_header(tw, &h);
    }
    let xattrs = read_xattrs(path)?;
    h.xattrs = &xattrs;
    let target;
    if ft.is_dir() {
        h.kind = kind::DIR;
        tarfmt::write_header(tw, &h)
    } else if ft.is_file() {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(read_err(path))?;
        h.size = meta.len();
        tarfmt::write_header(tw, &h)?;
        tw.copy_file(&mut file, h.size, path)?;
        check_file_end(&mut file, path, h.size)?;
        tarfmt::pad(tw, h.size)
    } else if ft.is_symlink() {
        target = fs::read_link(path).map_err(read_err(path))?;
        h.kind = kind::SYMLINK;
        h.link = target.as_os_str().as_bytes();
        tarfmt::write_header(tw, &h)
    } else if ft.is_char_device() || ft.is_block_device() {
        h.kind = if ft.is_char_device() {
            kind::CHAR
        } else {
            kind::BLOCK
        };
        h.dev_major = nix::sys::stat::major(meta.rdev());
        h.dev_minor = nix::sys::stat::minor(meta.rdev());
        tarfmt::write_header(tw, &h)
    } else {
        // What remains is a fifo.
        h.kind = kind::FIFO;
        tarfmt::write_header(tw, &h)
    }
}

/// A file that grew while archived would silently lose its tail; say so instead.
fn check_file_end(file: &mut File, path: &Path, size: u64) -> Result<(), LayerError> {
    let mut probe = [0u8; 1];
    match io::Read::read(file, &mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(LayerError::FileChanged {
            path: path.to_path_buf(),
            expected: size,
        }),
        Err(source) => Err(LayerError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn emit_item(
    tw: &mut TarSink<'_>,
    st: &mut State,
    name: &[u8],
    item: &Item,
) -> Result<(), LayerError> {
    match item {
        Item::Disk(path, meta) => emit_disk(tw, st, name, path, meta),
        Item::Whiteout { uid, gid } => {
            tarfmt::write_header(tw, &marker_header(name, 0o600, *uid, *gid))
        }
        Item::Opaque { mode, uid, gid } => {
            tarfmt::write_header(tw, &marker_header(name, *mode, *uid, *gid))
        }
        Item::Planned(entry) => emit_planned(tw, st, name, entry),
    }
}

/// Write one planned entry: metadata as given, bytes and xattrs read.
fn emit_planned(
    tw: &mut TarSink<'_>,
    st: &mut State,
    name: &[u8],
    entry: &PlannedEntry,
) -> Result<(), LayerError> {
    let mut h = Header {
        name,
        kind: kind::FILE,
        mode: entry.mode & 0o7777,
        uid: u64::from(entry.uid),
        gid: u64::from(entry.gid),
        size: 0,
        mtime: st.clamp(entry.mtime),
        link: &[],
        dev_major: 0,
        dev_minor: 0,
        xattrs: &[],
    };
    let first_link;
    if let PlannedKind::File {
        link_key: Some(key),
        ..
    } = &entry.kind
    {
        match st.links.get(key) {
            Some(first) => {
                first_link = first.clone();
                h.kind = kind::HARDLINK;
                h.link = &first_link;
                return tarfmt::write_header(tw, &h);
            }
            None => {
                st.links.insert(*key, name.to_vec());
            }
        }
    }
    let xattrs = match &entry.xattrs_from {
        Some(path) => read_xattrs(path)?,
        None => Vec::new(),
    };
    h.xattrs = &xattrs;
    let target;
    match &entry.kind {
        PlannedKind::Dir => {
            h.kind = kind::DIR;
            tarfmt::write_header(tw, &h)
        }
        PlannedKind::File { path, size, .. } => {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path)
                .map_err(read_err(path))?;
            h.size = *size;
            tarfmt::write_header(tw, &h)?;
            tw.copy_file(&mut file, h.size, path)?;
            check_file_end(&mut file, path, h.size)?;
            tarfmt::pad(tw, h.size)
        }
        PlannedKind::Symlink { target: t } => {
            target = t.clone();
            h.kind = kind::SYMLINK;
            h.link = target.as_os_str().as_bytes();
            tarfmt::write_header(tw, &h)
        }
        PlannedKind::CharDevice { rdev } | PlannedKind::BlockDevice { rdev } => {
            h.kind = if matches!(entry.kind, PlannedKind::CharDevice { .. }) {
                kind::CHAR
            } else {
                kind::BLOCK
            };
            h.dev_major = nix::sys::stat::major(*rdev);
            h.dev_minor = nix::sys::stat::minor(*rdev);
            tarfmt::write_header(tw, &h)
        }
        PlannedKind::Fifo => {
            h.kind = kind::FIFO;
            tarfmt::write_header(tw, &h)
        }
    }
}

/// The whole tree under `root`, depth first with children sorted by their tar
/// name — which is exactly byte order of the full tar names.
pub(crate) fn write_tree(
    root: &Path,
    opts: &LayerOptions,
    tw: &mut TarSink<'_>,
) -> Result<(), LayerError> {
    let meta = fs::metadata(root).map_err(read_err(root))?;
    if !meta.is_dir() {
        return Err(LayerError::Read {
            path: root.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut st = State::new(opts);
    let mut prefix = Vec::new();
    walk(tw, &mut st, root, &mut prefix, None)?;
    tarfmt::write_end(tw)
}

fn walk(
    tw: &mut TarSink<'_>,
    st: &mut State,
    dir: &Path,
    prefix: &mut Vec<u8>,
    opaque: Option<(&Path, &Metadata)>,
) -> Result<(), LayerError> {
    let mut children: Vec<(Vec<u8>, Item)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err(dir))? {
        let entry = entry.map_err(read_err(dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let name = entry.file_name();
        let name = name.as_bytes();
        if is_overlay_whiteout(&meta) {
            let mut key = WHITEOUT_PREFIX.to_vec();
            key.extend_from_slice(name);
            children.push((key, whiteout_item(st.owners, &path, &meta)));
            continue;
        }
        let mut key = name.to_vec();
        if meta.is_dir() {
            key.push(b'/');
        }
        children.push((key, Item::Disk(path, meta)));
    }
    if let Some((dir_path, dir_meta)) = opaque {
        children.push((
            OPAQUE_MARKER.to_vec(),
            opaque_item(st.owners, dir_path, dir_meta),
        ));
    }
    children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, item) in children {
        let len = prefix.len();
        prefix.extend_from_slice(&key);
        emit_item(tw, st, prefix, &item)?;
        if let Item::Disk(path, meta) = &item {
            if meta.is_dir() {
                let child_opaque = is_opaque_dir(path).then_some((path.as_path(), meta));
                walk(tw, st, path, prefix, child_opaque)?;
            }
        }
        prefix.truncate(len);
    }
    Ok(())
}

/// The normal components of a change path, or an error.
fn change_components(path: &Path) -> Result<Vec<&OsStr>, LayerError> {
    let bad = |reason| LayerError::InvalidChange {
        path: path.to_path_buf(),
        reason,
    };
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad("must be relative to the root"))
            }
            Component::ParentDir => return Err(bad("must not contain `..`")),
        }
    }
    if out.is_empty() {
        return Err(bad("names the root itself"));
    }
    Ok(out)
}

fn join_name(comps: &[&OsStr]) -> Vec<u8> {
    let mut name = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            name.push(b'/');
        }
        name.extend_from_slice(c.as_bytes());
    }
    name
}

/// Add the parent directories of `comps` (as they are on disk) to the plan.
/// `Ok(false)` if one does not exist.
fn plan_parents(
    owners: Owners,
    root: &Path,
    comps: &[&OsStr],
    change: &Path,
    plan: &mut BTreeMap<Vec<u8>, Item>,
) -> Result<bool, LayerError> {
    for n in 1..comps.len() {
        let rel = &comps[..n];
        let path: PathBuf = std::iter::once(root.as_os_str())
            .chain(rel.iter().copied())
            .collect();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(read_err(&path)(e)),
        };
        if !meta.is_dir() {
            return Err(LayerError::InvalidChange {
                path: change.to_path_buf(),
                reason: "a parent directory is not a directory on disk",
            });
        }
        let mut key = join_name(rel);
        key.push(b'/');
        if !plan.contains_key(&key) {
            if is_opaque_dir(&path) {
                let mut marker = key.clone();
                marker.extend_from_slice(OPAQUE_MARKER);
                plan.insert(marker, opaque_item(owners, &path, &meta));
            }
            plan.insert(key, Item::Disk(path, meta));
        }
    }
    Ok(true)
}

/// Sort and complete a change list into the entries of the layer, keyed (and so
/// ordered) by tar name.
pub(crate) fn plan_changes(
    owners: Owners,
    root: &Path,
    changes: &[Change],
) -> Result<BTreeMap<Vec<u8>, Item>, LayerError> {
    let mut plan = BTreeMap::new();
    let deleted: HashSet<Vec<u8>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Delete(p) => change_components(p).ok().map(|c| join_name(&c)),
            _ => None,
        })
        .collect();
    for change in changes {
        match change {
            Change::Upsert(p) | Change::Opaque(p) => {
                let comps = change_components(p)?;
                if !plan_parents(owners, root, &comps, p, &mut plan)? {
                    return Err(LayerError::InvalidChange {
                        path: p.clone(),
                        reason: "a parent directory does not exist",
                    });
                }
                let path = root.join(p);
                let meta = fs::symlink_metadata(&path).map_err(|_| LayerError::InvalidChange {
                    path: p.clone(),
                    reason: "does not exist under the root",
                })?;
                let mut key = join_name(&comps);
                if is_overlay_whiteout(&meta) {
                    let split = key.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
                    key.splice(split..split, WHITEOUT_PREFIX.iter().copied());
                    plan.insert(key, whiteout_item(owners, &path, &meta));
                    continue;
                }
                let opaque = matches!(change, Change::Opaque(_));
                if opaque && !meta.is_dir() {
                    return Err(LayerError::InvalidChange {
                        path: p.clone(),
                        reason: "an opaque change must name a directory",
                    });
                }
                if meta.is_dir() {
                    key.push(b'/');
                    if opaque || is_opaque_dir(&path) {
                        let mut marker = key.clone();
                        marker.extend_from_slice(OPAQUE_MARKER);
                        plan.insert(marker, opaque_item(owners, &path, &meta));
                    }
                }
                plan.insert(key, Item::Disk(path, meta));
            }
            Change::Delete(p) => {
                let comps = change_components(p)?;
                if !plan_parents(owners, root, &comps, p, &mut plan)? {
                    // Fine if an ancestor is deleted too: its whiteout covers this.
                    let covered =
                        (1..comps.len()).any(|n| deleted.contains(&join_name(&comps[..n])));
                    if covered {
                        continue;
                    }
                    return Err(LayerError::InvalidChange {
                        path: p.clone(),
                        reason: "its parent directory does not exist (delete the parent instead)",
                    });
                }
                let (last, parents) = comps.split_last().ok_or(LayerError::InvalidChange {
                    path: p.clone(),
                    reason: "names the root itself",
                })?;
                let mut key = join_name(parents);
                if !key.is_empty() {
                    key.push(b'/');
                }
                key.extend_from_slice(WHITEOUT_PREFIX);
                key.extend_from_slice(last.as_bytes());
                plan.insert(key, Item::Whiteout { uid: 0, gid: 0 });
            }
        }
    }
    Ok(plan)
}

/// Write planned entries in order, then the end of the archive.
pub(crate) fn write_items(
    items: BTreeMap<Vec<u8>, Item>,
    opts: &LayerOptions,
    tw: &mut TarSink<'_>,
) -> Result<(), LayerError> {
    let mut st = State::new(opts);
    for (name, item) in &items {
        emit_item(tw, &mut st, name, item)?;
    }
    tarfmt::write_end(tw)
}
