//! Applying a layer to a directory, treating the tarball as hostile.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use sha2::{Digest as _, Sha256};

use super::detect::{in_process, peek, DetectedCompression};
use super::owners::{is_owner_xattr, Owners};
use super::LayerError;
use crate::Sha256Digest;

/// Bounds against decompression bombs and absurd layers. 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Most bytes of uncompressed tar stream (headers and data).
    pub max_total_bytes: u64,
    /// Most tar entries.
    pub max_entries: u64,
    /// Largest ratio of uncompressed to compressed bytes (checked past 1 MiB).
    pub max_ratio: u64,
}

impl Default for ApplyLimits {
    /// 256 GiB, 10 million entries, ratio 1000 (gzip cannot exceed ~1032:1; zstd can
    /// reach far more, which is what a bomb uses).
    fn default() -> Self {
        Self {
            max_total_bytes: 256 << 30,
            max_entries: 10_000_000,
            max_ratio: 1000,
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries processed (incl. whiteouts).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes_written: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// Bytes read from the (possibly compressed) input.
    pub compressed_bytes: u64,
    /// Bytes of uncompressed tar stream.
    pub uncompressed_bytes: u64,
    /// sha256 of the whole uncompressed stream (the layer's `diff_id`), when
    /// [`ExtractOptions::hash`] asked for it.
    pub diff_id: Option<Sha256Digest>,
}

/// Where overlayfs keeps its own extended attributes, such as the opaque-directory
/// marker `<namespace>.overlay.opaque`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OverlayXattrs {
    /// `trusted.overlay.*`: what overlayfs reads by default. Setting them needs
    /// `CAP_SYS_ADMIN` in the initial user namespace.
    #[default]
    Trusted,
    /// `user.overlay.*`: what overlayfs reads when mounted with `userxattr` (the
    /// only choice inside a user namespace, for rootless builds).
    User,
}

impl OverlayXattrs {
    /// The name of the opaque-directory xattr (its value is `y`).
    pub fn opaque(self) -> &'static str {
        match self {
            OverlayXattrs::Trusted => "trusted.overlay.opaque",
            OverlayXattrs::User => "user.overlay.opaque",
        }
    }
}

/// What to do with a layer's OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WhiteoutMode {
    /// Apply them, as [`apply_layer`] does: delete `NAME`, or the earlier content
    /// of the opaque directory, from what is already under the root.
    #[default]
    Apply,
    /// Keep them in overlayfs's lower-dir form, for a layer extracted on its own
    /// into an empty directory: `.wh.NAME` becomes a character device `0:0` named
    /// `NAME`, and `.wh..wh..opq` sets the opaque xattr (`y`) of its directory, in
    /// this namespace. See the module documentation.
    Overlay(OverlayXattrs),
}

/// How [`extract_layer`] works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExtractOptions {
    /// Decompression-bomb bounds.
    pub limits: ApplyLimits,
    /// What whiteouts become.
    pub whiteouts: WhiteoutMode,
    /// Compute the sha256 of the uncompressed stream ([`ApplyStats::diff_id`]).
    pub hash: bool,
    /// How entries' owners are given to the files (`chown`, or an xattr for
    /// a rootless forge).
    pub owners: Owners,
}

/// Feeds what is read through sha256 (when asked).
struct HashIn<R> {
    inner: R,
    hasher: Option<Sha256>,
}

impl<R: Read> Read for HashIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The ratio check starts after this much output, so tiny layers of empty files
/// (which compress very well) are not refused.
const RATIO_GRACE: u64 = 1 << 20;

#[derive(Default)]
struct Meter {
    compressed: Cell<u64>,
    uncompressed: Cell<u64>,
    tripped: Cell<Option<(&'static str, u64, u64)>>,
}

struct CountIn<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for CountIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter
            .compressed
            .set(self.meter.compressed.get() + n as u64);
        Ok(n)
    }
}

struct CountOut<R> {
    inner: R,
    meter: Rc<Meter>,
    limits: ApplyLimits,
}

impl<R: Read> Read for CountOut<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.meter.tripped.get().is_some() {
            return Err(io::Error::other("layer limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        let total = self.meter.uncompressed.get() + n as u64;
        self.meter.uncompressed.set(total);
        let max = self.limits.max_total_bytes;
        if max > 0 && total > max {
            self.meter.tripped.set(Some(("total size", total, max)));
        }
        let ratio = self.limits.max_ratio;
        let compressed = self.meter.compressed.get().max(1);
        if ratio > 0 && total > RATIO_GRACE && total / compressed > ratio {
            self.meter
                .tripped
                .set(Some(("compression ratio", total / compressed, ratio)));
        }
        if self.meter.tripped.get().is_some() {
            return Err(io::Error::other("layer limit exceeded"));
        }
        Ok(n)
    }
}

/// Apply a layer to the directory `root`: create, replace and delete (whiteouts)
/// what it says. The input may be a plain tar or gzip/zstd compressed (detected);
/// bzip2/xz must go through [`super::decompress`] first.
///
/// Refuses, with an error naming the entry: absolute names, `..`, parents that are
/// symlinks leading out of the root (absolute, or climbing above it), hardlinks to
/// outside the root, and anything beyond `limits`. See the module documentation.
pub fn apply_layer(
    input: &mut dyn Read,
    root: &Path,
    limits: &ApplyLimits,
) -> Result<ApplyStats, LayerError> {
    extract_layer(
        input,
        root,
        &ExtractOptions {
            limits: *limits,
            ..ExtractOptions::default()
        },
    )
}

/// [`apply_layer`] with options: whiteouts applied or kept in overlayfs form
/// ([`WhiteoutMode::Overlay`], for a layer extracted on its own into an empty
/// directory that becomes an overlay lower dir), and optionally the `diff_id`
/// computed on the way. The same safety rules and limits apply in every mode.
pub fn extract_layer(
    input: &mut dyn Read,
    root: &Path,
    opts: &ExtractOptions,
) -> Result<ApplyStats, LayerError> {
    let limits = &opts.limits;
    let meter = Rc::new(Meter::default());
    let counted = CountIn {
        inner: input,
        meter: Rc::clone(&meter),
    };
    let (kind, counted) = peek(counted).map_err(LayerError::Input)?;
    let reader = match in_process(kind, counted)? {
        Ok(reader) => reader,
        Err(_) => {
            return Err(LayerError::InvalidEntry {
                entry: String::new(),
                reason: format!(
                    "the layer is {} compressed; decompress it with layer::decompress first",
                    if kind == DetectedCompression::Bzip2 {
                        "bzip2"
                    } else {
                        "xz"
                    }
                ),
            })
        }
    };
    let hashed = HashIn {
        inner: reader,
        hasher: opts.hash.then(Sha256::new),
    };
    let counted = CountOut {
        inner: hashed,
        meter: Rc::clone(&meter),
        limits: *limits,
    };
    let mut applier = Applier {
        root: root.to_path_buf(),
        limits: *limits,
        whiteouts: opts.whiteouts,
        meter: Rc::clone(&meter),
        written: HashSet::new(),
        holds_written: HashSet::new(),
        whited: HashSet::new(),
        dir_times: Vec::new(),
        stats: ApplyStats::default(),
        is_root: super::owners::fully_privileged(),
        owners: opts.owners,
        current: String::new(),
    };
    let mut archive = tar::Archive::new(counted);
    let result = applier.run(&mut archive);
    let result = result.and_then(|()| applier.finish());
    // Read to the end (the tar reader stops at the first end block), so the whole
    // input is consumed — a caller hashing it sees every byte — and counted.
    let mut rest = archive.into_inner();
    let result = result.and_then(|()| {
        io::copy(&mut rest, &mut io::sink())
            .map(drop)
            .map_err(LayerError::Input)
    });
    match result {
        Err(e) => Err(applier.limit_error().unwrap_or(e)),
        Ok(()) => {
            let mut stats = applier.stats;
            stats.compressed_bytes = meter.compressed.get();
            stats.uncompressed_bytes = meter.uncompressed.get();
            stats.diff_id = rest
                .inner
                .hasher
                .take()
                .map(|h| Sha256Digest::from_bytes(h.finalize().into()));
            Ok(stats)
        }
    }
}

struct Applier {
    root: PathBuf,
    limits: ApplyLimits,
    whiteouts: WhiteoutMode,
    meter: Rc<Meter>,
    /// Real paths this layer created or updated: whiteouts must not remove them.
    written: HashSet<PathBuf>,
    /// The directories above the paths in `written`: deleting one (whiteout,
    /// opaque parent) must keep what this layer wrote inside it.
    holds_written: HashSet<PathBuf>,
    /// Overlay mode: the whiteout devices this layer made (and that are still
    /// there), so an entry replacing one becomes an opaque directory.
    whited: HashSet<PathBuf>,
    /// Directory mtimes, set at the end (adding children changes them).
    dir_times: Vec<(PathBuf, i64)>,
    stats: ApplyStats,
    is_root: bool,
    owners: Owners,
    /// The entry being applied, for errors.
    current: String,
}

/// A tar entry name, checked and split into components.
fn components<'a>(name: &'a [u8], entry: &str) -> Result<Vec<&'a [u8]>, LayerError> {
    if name.first() == Some(&b'/') {
        return Err(unsafe_entry(entry, "absolute path".into()));
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_entry(entry, "`..` in path".into())),
            c if c.contains(&0) => {
                return Err(LayerError::InvalidEntry {
                    entry: entry.to_string(),
                    reason: "NUL byte in name".into(),
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn unsafe_entry(entry: &str, reason: String) -> LayerError {
    LayerError::UnsafeEntry {
        entry: entry.to_string(),
        reason,
    }
}

fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove whatever is at `path` (a directory recursively, never following links).
fn remove_any(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

impl Applier {
    fn limit_error(&self) -> Option<LayerError> {
        self.meter
            .tripped
            .get()
            .map(|(limit, value, max)| LayerError::LimitExceeded {
                limit,
                entry: self.current.clone(),
                value,
                max,
            })
    }

    fn io_err(&self) -> impl FnOnce(io::Error) -> LayerError + '_ {
        move |source| {
            self.limit_error().unwrap_or_else(|| LayerError::Apply {
                entry: self.current.clone(),
                source,
            })
        }
    }

    fn input_err(&self, e: io::Error) -> LayerError {
        self.limit_error().unwrap_or(LayerError::Input(e))
    }

    /// A malformed header field of the current entry.
    fn field_err(&self, e: io::Error) -> LayerError {
        self.limit_error()
            .unwrap_or_else(|| LayerError::InvalidEntry {
                entry: self.current.clone(),
                reason: e.to_string(),
            })
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>) -> Result<(), LayerError> {
        let entries = archive.entries().map_err(|e| self.input_err(e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.input_err(e))?;
            let name = entry.path_bytes().into_owned();
            self.current = String::from_utf8_lossy(&name).into_owned();
            self.stats.entries += 1;
            if self.limits.max_entries > 0 && self.stats.entries > self.limits.max_entries {
                return Err(LayerError::LimitExceeded {
                    limit: "entry count",
                    entry: self.current.clone(),
                    value: self.stats.entries,
                    max: self.limits.max_entries,
                });
            }
            self.apply_entry(&mut entry, &name)?;
        }
        Ok(())
    }

    /// Resolve the directory made of `comps` inside the root, component by
    /// component, following symlinks only while they stay inside the root.
    /// Missing directories are created if `create`, else `Ok(None)`.
    fn resolve_dir(
        &mut self,
        comps: &[&[u8]],
        create: bool,
    ) -> Result<Option<PathBuf>, LayerError> {
        let mut real: Vec<OsString> = Vec::new();
        let mut queue: std::collections::VecDeque<Vec<u8>> =
            comps.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if real.pop().is_none() {
                        return Err(unsafe_entry(
                            &self.current,
                            "a symlink in its path leads above the root".into(),
                        ));
                    }
                    continue;
                }
                _ => {}
            }
            let mut path = self.root.clone();
            path.extend(real.iter());
            path.push(OsStr::from_bytes(&c));
            let found = lstat(&path).map_err(self.io_err())?;
            if create && found.is_some() && self.whited.contains(&path) {
                // Overlay mode: a directory this layer deleted from the lower
                // layers and fills again: an opaque directory replaces the
                // whiteout.
                if let Some(meta) = &found {
                    remove_any(&path, meta).map_err(self.io_err())?;
                }
                self.whited.remove(&path);
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(self.io_err())?;
                self.set_opaque(&path)?;
                real.push(OsString::from_vec(c));
                continue;
            }
            match found {
                Some(m) if m.is_dir() => real.push(OsString::from_vec(c)),
                Some(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(unsafe_entry(
                            &self.current,
                            "too many levels of symlinks in its path".into(),
                        ));
                    }
                    let target = fs::read_link(&path).map_err(self.io_err())?;
                    let target = target.as_os_str().as_bytes();
                    if target.first() == Some(&b'/') {
                        return Err(unsafe_entry(
                            &self.current,
                            format!(
                                "its parent `{}` is a symlink to the absolute path `{}`, outside the root",
                                path.strip_prefix(&self.root).unwrap_or(&path).display(),
                                String::from_utf8_lossy(target)
                            ),
                        ));
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Some(_) => {
                    if create {
                        return Err(LayerError::InvalidEntry {
                            entry: self.current.clone(),
                            reason: format!(
                                "its parent `{}` is not a directory",
                                path.strip_prefix(&self.root).unwrap_or(&path).display()
                            ),
                        });
                    }
                    return Ok(None);
                }
                None => {
                    if !create {
                        return Ok(None);
                    }
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&path)
                        .map_err(self.io_err())?;
                    real.push(OsString::from_vec(c));
                }
            }
        }
        let mut path = self.root.clone();
        path.extend(real.iter());
        Ok(Some(path))
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &[u8],
    ) -> Result<(), LayerError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let comps = components(name, &self.current)?;
        let Some((last, parents)) = comps.split_last() else {
            // The root itself (`./`): leave the root's own metadata alone.
            return Ok(());
        };
        // Whiteouts.
        if let Some(target) = last.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            if target == b"." || target == b".." {
                // `dir.join("..")` would be the parent: outside the root at the
                // top level.
                return Err(unsafe_entry(
                    &self.current,
                    format!("a whiteout of `{}`", String::from_utf8_lossy(target)),
                ));
            }
            if let WhiteoutMode::Overlay(_) = self.whiteouts {
                return self.overlay_whiteout(parents, target);
            }
            let Some(dir) = self.resolve_dir(parents, false)? else {
                return Ok(());
            };
            if target == b".wh..opq" {
                self.clear_lower(&dir)?;
            } else if target.starts_with(b".wh.") {
                // Other AUFS metadata (`.wh..wh.plnk` …): nothing to do.
            } else if !target.is_empty() {
                let victim = dir.join(OsStr::from_bytes(target));
                if self.written.contains(&victim) || self.holds_written.contains(&victim) {
                    // Deleted from the lower layers, made again by this layer:
                    // only the lower content of a directory goes.
                    if lstat(&victim)
                        .map_err(self.io_err())?
                        .is_some_and(|m| m.is_dir())
                    {
                        self.clear_lower(&victim)?;
                    }
                } else if let Some(meta) = lstat(&victim).map_err(self.io_err())? {
                    remove_any(&victim, &meta).map_err(self.io_err())?;
                }
            }
            return Ok(());
        }
        let dir = self
            .resolve_dir(parents, true)?
            .ok_or_else(|| LayerError::InvalidEntry {
                entry: self.current.clone(),
                reason: "its parent directory cannot be created".into(),
            })?;
        let dest = dir.join(OsStr::from_bytes(last));
        let header = entry.header().clone();
        let mode = header.mode().map_err(|e| self.field_err(e))? & 0o7777;
        let uid = header.uid().map_err(|e| self.field_err(e))?;
        let gid = header.gid().map_err(|e| self.field_err(e))?;
        let mut mtime = i64::try_from(header.mtime().map_err(|e| self.field_err(e))?).unwrap_or(0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| self.input_err(e))? {
            for ext in pax {
                let ext = ext.map_err(|e| self.input_err(e))?;
                let key = ext.key_bytes();
                if let Some(xname) = key.strip_prefix(b"SCHILY.xattr.") {
                    // overlayfs's own xattrs would change what an overlay mount
                    // of the tree shows (opaque, redirect, metacopy...): never
                    // restored, in any mode.
                    if !(xname.starts_with(b"trusted.overlay.")
                        || xname.starts_with(b"user.overlay."))
                    {
                        xattrs.push((xname.to_vec(), ext.value_bytes().to_vec()));
                    }
                } else if key == b"mtime" {
                    let v = String::from_utf8_lossy(ext.value_bytes());
                    let secs = v.split('.').next().unwrap_or("0");
                    mtime = secs.parse().unwrap_or(mtime);
                }
            }
        }
        let existing = lstat(&dest).map_err(self.io_err())?;
        let is_dir = kind == T::Directory;
        // Replace what is there unless both are directories.
        if let Some(meta) = &existing {
            if !(is_dir && meta.is_dir()) {
                remove_any(&dest, meta).map_err(self.io_err())?;
            }
        }
        // Overlay mode: replacing a whiteout this layer made.
        let was_whited = self.whited.remove(&dest);
        match kind {
            T::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&dest)
                        .map_err(self.io_err())?;
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.write_file(entry, &dest)?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidEntry {
                        entry: self.current.clone(),
                        reason: "symlink without a target".into(),
                    })?;
                // The target is stored, never followed here: no check needed.
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &dest)
                    .map_err(self.io_err())?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidEntry {
                        entry: self.current.clone(),
                        reason: "hardlink without a target".into(),
                    })?
                    .into_owned();
                let source = self.resolve_link_target(&target)?;
                fs::hard_link(&source, &dest).map_err(self.io_err())?;
                // A hardlink shares the inode: its metadata came with the target.
                self.mark_written(dest);
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                let major = header
                    .device_major()
                    .map_err(|e| self.field_err(e))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|e| self.field_err(e))?
                    .unwrap_or(0);
                let sflag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                nix::sys::stat::mknod(
                    &dest,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
                )
                .map_err(|e| self.io_err()(io::Error::from(e)))?;
            }
            other => {
                return Err(LayerError::InvalidEntry {
                    entry: self.current.clone(),
                    reason: format!("unsupported tar entry type {other:?}"),
                })
            }
        }
        self.set_metadata(&dest, kind == T::Symlink, uid, gid, mode, &xattrs)?;
        if was_whited && is_dir {
            // Overlay mode: this layer deleted `dest` from the lower layers and
            // makes a directory there: its lower content must stay hidden.
            self.set_opaque(&dest)?;
        }
        if is_dir {
            self.dir_times.push((dest.clone(), mtime));
        } else {
            self.set_mtime(&dest, mtime)?;
        }
        self.mark_written(dest);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dest: &Path,
    ) -> Result<(), LayerError> {
        let size = entry.size();
        let max = self.limits.max_total_bytes;
        let so_far = self.meter.uncompressed.get();
        if max > 0 && so_far.saturating_add(size) > max {
            return Err(LayerError::LimitExceeded {
                limit: "total size",
                entry: self.current.clone(),
                value: so_far.saturating_add(size),
                max,
            });
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(dest)
            .map_err(self.io_err())?;
        let mut buf = vec![0u8; 256 * 1024];
        let copied = (|| -> Result<u64, LayerError> {
            let mut n = 0u64;
            loop {
                let k = match entry.read(&mut buf) {
                    Ok(0) => return Ok(n),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.input_err(e)),
                };
                file.write_all(&buf[..k]).map_err(self.io_err())?;
                n += k as u64;
            }
        })();
        match copied {
            Ok(n) => {
                self.stats.bytes_written += n;
                Ok(())
            }
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(dest);
                Err(e)
            }
        }
    }

    /// A hardlink target: inside the root, existing, not a directory.
    fn resolve_link_target(&mut self, target: &[u8]) -> Result<PathBuf, LayerError> {
        let shown = String::from_utf8_lossy(target);
        let comps = components(target, &self.current).map_err(|_| {
            unsafe_entry(
                &self.current,
                format!("hardlink target `{shown}` is outside the root"),
            )
        })?;
        let (last, parents) = comps
            .split_last()
            .ok_or_else(|| unsafe_entry(&self.current, "hardlink to the root directory".into()))?;
        let dir = self
            .resolve_dir(parents, false)?
            .ok_or_else(|| LayerError::InvalidEntry {
                entry: self.current.clone(),
                reason: format!("hardlink target `{shown}` does not exist"),
            })?;
        let source = dir.join(OsStr::from_bytes(last));
        let found = lstat(&source)
            .map_err(self.io_err())?
            // Overlay mode: a whiteout stands for a deleted file.
            .filter(|_| !self.whited.contains(&source));
        match found {
            Some(m) if !m.is_dir() => Ok(source),
            Some(_) => Err(LayerError::InvalidEntry {
                entry: self.current.clone(),
                reason: format!("hardlink target `{shown}` is a directory"),
            }),
            None => Err(LayerError::InvalidEntry {
                entry: self.current.clone(),
                reason: format!("hardlink target `{shown}` does not exist"),
            }),
        }
    }

    fn set_metadata(
        &self,
        dest: &Path,
        symlink: bool,
        uid: u64,
        gid: u64,
        mode: u32,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), LayerError> {
        let (uid, gid) = (
            u32::try_from(uid).unwrap_or(u32::MAX),
            u32::try_from(gid).unwrap_or(u32::MAX),
        );
        self.owners
            .set(dest, symlink, (uid, gid))
            .map_err(self.io_err())?;
        for (name, value) in xattrs {
            if is_owner_xattr(name) {
                // forge's own: a layer cannot choose an owner this way.
                continue;
            }
            if let Err(e) = xattr::set(dest, OsStr::from_bytes(name), value) {
                let unsupported = e.raw_os_error() == Some(nix::libc::ENOTSUP);
                let privileged = !name.starts_with(b"user.");
                let denied = e.kind() == io::ErrorKind::PermissionDenied;
                if !(unsupported || (privileged && denied && !self.is_root)) {
                    return Err(self.io_err()(e));
                }
            }
        }
        // After chown, which clears setuid/setgid.
        if !symlink {
            fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(self.io_err())?;
        }
        Ok(())
    }

    fn set_mtime(&self, dest: &Path, mtime: i64) -> Result<(), LayerError> {
        let t = TimeSpec::new(mtime, 0);
        nix::sys::stat::utimensat(
            None,
            dest,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_err()(io::Error::from(e)))
    }

    /// Records a path this layer created or updated, and the directories above it.
    fn mark_written(&mut self, path: PathBuf) {
        for dir in path.ancestors().skip(1) {
            if dir == self.root || !self.holds_written.insert(dir.to_path_buf()) {
                break;
            }
        }
        self.written.insert(path);
    }

    /// Overlay mode: a whiteout `.wh.<target>` (or the opaque marker, `target`
    /// being `.wh..opq`) in the directory `parents`.
    fn overlay_whiteout(&mut self, parents: &[&[u8]], target: &[u8]) -> Result<(), LayerError> {
        if target.is_empty() || (target.starts_with(b".wh.") && target != b".wh..opq") {
            // `.wh.` alone, or other AUFS metadata (`.wh..wh.plnk` …).
            return Ok(());
        }
        // The directory must exist in this layer's tree for the marker to hide
        // anything, so it is created if the tar did not list it.
        let dir = match self.resolve_dir(parents, true) {
            Ok(Some(dir)) => dir,
            Ok(None) => return Ok(()),
            // Under a non-directory of this layer, which hides all below it.
            Err(LayerError::InvalidEntry { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if target == b".wh..opq" {
            return self.set_opaque(&dir);
        }
        let victim = dir.join(OsStr::from_bytes(target));
        if self.whited.contains(&victim) {
            return Ok(());
        }
        if self.written.contains(&victim) || self.holds_written.contains(&victim) {
            // Written by this layer (earlier in the tar), which the whiteout
            // does not delete; it still deletes the lower `target`: a file hides
            // it anyway, a directory must be opaque not to merge with it.
            if lstat(&victim)
                .map_err(self.io_err())?
                .is_some_and(|m| m.is_dir())
            {
                self.set_opaque(&victim)?;
            }
            return Ok(());
        }
        if let Some(meta) = lstat(&victim).map_err(self.io_err())? {
            remove_any(&victim, &meta).map_err(self.io_err())?;
        }
        nix::sys::stat::mknod(
            &victim,
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .map_err(|e| self.io_err()(io::Error::from(e)))?;
        self.whited.insert(victim);
        Ok(())
    }

    /// Overlay mode: mark a directory opaque (its lower layers' content hidden).
    fn set_opaque(&self, dir: &Path) -> Result<(), LayerError> {
        let WhiteoutMode::Overlay(ns) = self.whiteouts else {
            return Ok(());
        };
        // Unlike xattrs from the tar, never skipped: without it the overlay
        // would show deleted files.
        xattr::set(dir, ns.opaque(), b"y").map_err(self.io_err())
    }

    /// Opaque directory: remove everything under `dir` not written by this layer.
    fn clear_lower(&self, dir: &Path) -> Result<(), LayerError> {
        for child in fs::read_dir(dir).map_err(self.io_err())? {
            let child = child.map_err(self.io_err())?;
            let path = child.path();
            let meta = fs::symlink_metadata(&path).map_err(self.io_err())?;
            if self.written.contains(&path) || self.holds_written.contains(&path) {
                if meta.is_dir() {
                    self.clear_lower(&path)?;
                }
            } else {
                remove_any(&path, &meta).map_err(self.io_err())?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), LayerError> {
        self.current = String::new();
        for (dir, mtime) in std::mem::take(&mut self.dir_times) {
            self.set_mtime(&dir, mtime)?;
        }
        Ok(())
    }
}
