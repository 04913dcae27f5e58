//! Layer snapshots: each layer extracted on its own, in overlayfs's lower-dir
//! form, for the build driver to stack as overlay lower directories (docker's
//! overlay2 `diff` directories).
//!
//! # Layout
//!
//! ```text
//! $FORGE_HOME/forge/v1/snapshots/
//!   <diff_id hex>/              the layer's tree: whiteouts as 0:0 character devices,
//!                               opaque directories with the overlay.opaque=y xattr
//!   l/<first 16 hex of diff_id> -> ../<diff_id hex>
//! ```
//!
//! A snapshot is named after the layer's `diff_id` (the sha256 of its
//! uncompressed tar), not its blob digest, so the same layer compressed two ways
//! has one snapshot. The short links keep overlay mount options small: a mount
//! run from `snapshots/l` names 127 lower dirs as `0123456789abcdef:…` in well
//! under a page. A link that exists but points to another snapshot (two diff_ids
//! sharing 16 hex digits) is an error, never a wrong lower dir.
//!
//! # Crash safety and concurrency
//!
//! A directory at `snapshots/<hex>` is always complete. [`Snapshots::ensure`]
//! extracts into a fresh directory under the store's temp dir (named after the
//! process, so [`Store::open`] and [`Store::prune`] remove it once the process is
//! gone), checks the `diff_id`, makes the tree durable with one `syncfs(2)`,
//! renames it into place and fsyncs `snapshots/`. [`Snapshots::adopt`] renames
//! a RUN's upper directory in *without* flushing it: a `syncfs` there costs
//! tens of milliseconds per RUN (every file the command wrote goes to disk),
//! most of the time from a RUN's exit to its layer being ready. Instead, before
//! the rename, it writes (and fsyncs) a marker `volatile/<hex>` holding the
//! kernel's boot id. The page cache survives everything but a restart of the
//! machine, so a snapshot whose marker names the current boot is as good as a
//! flushed one; after a crash of the machine its marker names another boot, and
//! [`Snapshots::ensure`] throws the snapshot away and extracts it again from its
//! blob (blobs are always flushed). Of two processes or threads making
//! the same snapshot, the second rename fails (the target is a non-empty
//! directory) and the loser removes its copy; both get the same link. Links are
//! made as a symlink under a temp name, published with `link(2)` (atomic, and
//! never replacing another layer's link), then the temp name is removed.
//! [`Snapshots::remove`] removes the link, then renames the directory out to the
//! temp dir before deleting it, so a half-deleted tree is never at its name.
//!
//! # Garbage collection
//!
//! Snapshots are a cache: any of them can be made again from its blob. Nothing
//! removes them yet; [`Snapshots::list`] and [`Snapshots::remove`] are for the
//! collector, which must not remove a snapshot an overlay mount is using.
//!
//! # xattrs
//!
//! Opaque directories are marked in one xattr namespace ([`OverlayXattrs`]):
//! `trusted.overlay.*` for root, `user.overlay.*` for a rootless forge, whose
//! sandboxes mount overlayfs with `userxattr` (in a user namespace). All snapshots of a
//! store must use the namespace their mounts read
//! ([`Snapshots::with_xattrs`]).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layer::{extract_layer, ApplyLimits, ExtractOptions, LayerError, OverlayXattrs};
use crate::layer::{ApplyStats, WhiteoutMode};
use crate::store::{io_err, sync_dir, Store};
use crate::{CacheError, Sha256Digest};

/// Hex digits of the diff_id in a snapshot's short link name.
pub const LINK_HEX_DIGITS: usize = 16;

/// The layer snapshots of a store (`forge/v1/snapshots`); see the module
/// documentation. Get one with [`Store::snapshots`]; cheap to make and clone.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// `<store>/forge/v1/snapshots`, absolute.
    dir: PathBuf,
    /// The store's temp dir, absolute.
    tmp: PathBuf,
    xattrs: OverlayXattrs,
    limits: ApplyLimits,
}

/// A directory under the store's temp dir, removed when dropped unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn create(tmp: &Path) -> Result<TempDir, CacheError> {
        let path = tmp.join(Store::temp_name("snapshot"));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(io_err("create directory", &path))?;
        let dir = TempDir { path, keep: false };
        // Not subject to the umask: this is the layer's root directory.
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &dir.path))?;
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether `path` is a directory (not following a symlink there).
fn is_dir(path: &Path) -> Result<bool, CacheError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat", path)(e)),
    }
}

/// The kernel's id of this boot (`/proc/sys/kernel/random/boot_id`).
fn boot_id() -> Result<String, CacheError> {
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_err("read", path))
}

/// Flushes the file system holding `path` (all of a tree's files in one call).
fn sync_fs(path: &Path) -> Result<(), CacheError> {
    let dir = fs::File::open(path).map_err(io_err("open", path))?;
    nix::unistd::syncfs(dir.as_raw_fd()).map_err(|e| io_err("syncfs", path)(e.into()))
}

/// Whether a rename failed because the target is a non-empty directory (it
/// lost a race against another maker of the same snapshot).
fn target_taken(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOTEMPTY) | Some(nix::libc::EEXIST)
    )
}

/// An extraction error, with a blob's digest mismatch (reported by the
/// store's verifying reader through the decompressor) as itself.
fn extract_error(e: LayerError) -> CacheError {
    match e {
        LayerError::Input(io) if io.get_ref().is_some_and(|r| r.is::<CacheError>()) => {
            let kind = io.kind();
            match io.into_inner().map(|inner| inner.downcast::<CacheError>()) {
                Some(Ok(cache)) => *cache,
                Some(Err(other)) => LayerError::Input(io::Error::new(kind, other)).into(),
                None => LayerError::Input(io::Error::from(kind)).into(),
            }
        }
        e => e.into(),
    }
}

impl Snapshots {
    pub(crate) fn new(store: &Store) -> Snapshots {
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Snapshots {
            dir: absolute(store.root().join("forge").join("v1").join("snapshots")),
            tmp: absolute(store.tmp_dir()),
            // Only root in the initial user namespace can set `trusted.*`;
            // a sandbox in a user namespace mounts with `userxattr`.
            xattrs: if crate::layer::fully_privileged() {
                OverlayXattrs::Trusted
            } else {
                OverlayXattrs::User
            },
            limits: ApplyLimits::default(),
        }
    }

    /// The same snapshots, with opaque directories of newly extracted layers
    /// marked in this xattr namespace (default: [`OverlayXattrs::Trusted`]
    /// for root, [`OverlayXattrs::User`] otherwise).
    pub fn with_xattrs(mut self, xattrs: OverlayXattrs) -> Snapshots {
        self.xattrs = xattrs;
        self
    }

    /// The same snapshots, extracting layers within these limits (default
    /// [`ApplyLimits::default`]).
    pub fn with_limits(mut self, limits: ApplyLimits) -> Snapshots {
        self.limits = limits;
        self
    }

    /// The snapshots directory, `<store>/forge/v1/snapshots` (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of short links, `<store>/forge/v1/snapshots/l` (absolute):
    /// run the mount from here to name lower dirs by their link names alone.
    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("l")
    }

    /// Where the snapshot of the layer with this `diff_id` is (or would be):
    /// `snapshots/<diff_id hex>`.
    pub fn path(&self, diff_id: &Sha256Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// The absolute path of the snapshot's short link,
    /// `snapshots/l/<first 16 hex digits>`, a symlink to `../<diff_id hex>`:
    /// what to give overlayfs as a lower dir.
    pub fn link(&self, diff_id: &Sha256Digest) -> PathBuf {
        self.links_dir().join(Self::link_name(diff_id))
    }

    fn link_name(diff_id: &Sha256Digest) -> String {
        let mut hex = diff_id.hex();
        hex.truncate(LINK_HEX_DIGITS);
        hex
    }

    /// Whether the layer's snapshot exists (then it is complete). Its link may
    /// still be missing: [`Snapshots::ensure`] makes it.
    pub fn contains(&self, diff_id: &Sha256Digest) -> bool {
        is_dir(&self.path(diff_id)).unwrap_or(false)
    }

    fn create_dirs(&self) -> Result<(), CacheError> {
        let links = self.links_dir();
        fs::create_dir_all(&links).map_err(io_err("create directory", &links))
    }

    /// Makes sure the layer with this `diff_id`, stored as the blob `blob`
    /// (gzip, zstd or a plain tar), has a snapshot and a link; returns the link
    /// ([`Snapshots::link`]).
    ///
    /// A missing snapshot is extracted in overlay form
    /// ([`WhiteoutMode::Overlay`], with the safety rules and limits of
    /// [`crate::layer::apply_layer`]) into a temp dir, which is renamed into
    /// place only if the blob matches its digest and its uncompressed content
    /// hashes to `diff_id` ([`CacheError::DigestMismatch`] otherwise, and
    /// nothing is left behind). Safe to call concurrently for the same layer
    /// from several threads and processes.
    pub fn ensure(
        &self,
        store: &Store,
        diff_id: &Sha256Digest,
        blob: &Sha256Digest,
    ) -> Result<PathBuf, CacheError> {
        let dest = self.path(diff_id);
        if is_dir(&dest)? && !self.survived(diff_id)? {
            // Adopted without a flush before the machine restarted: its
            // files may be incomplete.
            self.remove(diff_id)?;
        }
        if !is_dir(&dest)? {
            self.create_dirs()?;
            let temp = TempDir::create(&self.tmp)?;
            self.extract(store, diff_id, blob, &temp.path)?;
            sync_fs(&temp.path)?;
            self.publish(temp, &dest)?;
            self.forget_volatile(diff_id)?;
        }
        self.make_link(diff_id)
    }

    fn volatile_dir(&self) -> PathBuf {
        self.dir.join("volatile")
    }

    /// Whether a snapshot that exists can be trusted: it was flushed (no
    /// marker), or adopted during this boot.
    fn survived(&self, diff_id: &Sha256Digest) -> Result<bool, CacheError> {
        let marker = self.volatile_dir().join(diff_id.hex());
        match fs::read_to_string(&marker) {
            Ok(boot) => Ok(boot.trim() == boot_id()?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(io_err("read", &marker)(e)),
        }
    }

    /// Removes the marker of a snapshot that is now flushed.
    fn forget_volatile(&self, diff_id: &Sha256Digest) -> Result<(), CacheError> {
        let marker = self.volatile_dir().join(diff_id.hex());
        match fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &marker)(e)),
        }
    }

    /// Writes the boot-id marker of a snapshot about to be adopted unflushed:
    /// temp file, fsync, rename, fsync of the directory, so the marker is on
    /// disk before the snapshot's rename can be.
    fn mark_volatile(&self, diff_id: &Sha256Digest) -> Result<(), CacheError> {
        let dir = self.volatile_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let marker = dir.join(diff_id.hex());
        let temp = self.tmp.join(Store::temp_name("snapshot-mark"));
        let written = (|| {
            let mut file = fs::File::create(&temp).map_err(io_err("create", &temp))?;
            io::Write::write_all(&mut file, boot_id()?.as_bytes())
                .map_err(io_err("write", &temp))?;
            file.sync_all().map_err(io_err("fsync", &temp))?;
            fs::rename(&temp, &marker).map_err(io_err("rename into place", &marker))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        sync_dir(&dir)
    }

    /// Extracts `blob` into `dir`, checking both digests.
    fn extract(
        &self,
        store: &Store,
        diff_id: &Sha256Digest,
        blob: &Sha256Digest,
        dir: &Path,
    ) -> Result<ApplyStats, CacheError> {
        let mut reader = store.open_blob(blob)?;
        let opts = ExtractOptions {
            limits: self.limits,
            whiteouts: WhiteoutMode::Overlay(self.xattrs),
            hash: true,
            ..ExtractOptions::default()
        };
        let stats = extract_layer(&mut reader, dir, &opts).map_err(extract_error)?;
        // The decompressor may stop before the end of the blob; the blob's
        // digest is checked when its reader reaches the end.
        io::copy(&mut reader, &mut io::sink()).map_err(|e| extract_error(LayerError::Input(e)))?;
        match stats.diff_id {
            Some(actual) if actual == *diff_id => Ok(stats),
            Some(actual) => Err(CacheError::DigestMismatch {
                digest: *diff_id,
                actual,
            }),
            None => Err(LayerError::Input(io::Error::other(
                "the uncompressed layer was not hashed",
            ))
            .into()),
        }
    }

    /// Renames a complete temp dir to `dest`; a loser of a race drops its copy.
    fn publish(&self, mut temp: TempDir, dest: &Path) -> Result<(), CacheError> {
        match fs::rename(&temp.path, dest) {
            Ok(()) => {
                temp.keep = true;
                sync_dir(&self.dir)
            }
            // Made meanwhile by someone else: `temp` is removed on drop.
            Err(e) if target_taken(&e) => Ok(()),
            Err(e) => Err(io_err("rename into place", dest)(e)),
        }
    }

    /// Takes `dir` — an overlay upper dir, or any tree already in overlay form,
    /// on the store's file system (e.g. under [`Store::tmp_dir`]) — as the
    /// snapshot of the layer with this `diff_id`, moving it into place; if that
    /// snapshot exists already, removes `dir` instead. Returns the link
    /// ([`Snapshots::link`]). `dir` must not be mounted or written any more, and
    /// must be what the layer `diff_id` holds (not checked).
    pub fn adopt(&self, dir: &Path, diff_id: &Sha256Digest) -> Result<PathBuf, CacheError> {
        let dest = self.path(diff_id);
        if is_dir(&dest)? {
            fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
        } else {
            self.create_dirs()?;
            self.mark_volatile(diff_id)?;
            match fs::rename(dir, &dest) {
                Ok(()) => sync_dir(&self.dir)?,
                Err(e) if target_taken(&e) => {
                    fs::remove_dir_all(dir).map_err(io_err("remove", dir))?;
                }
                Err(e) => return Err(io_err("rename into place", &dest)(e)),
            }
        }
        self.make_link(diff_id)
    }

    /// Makes (or checks) the short link of an existing snapshot.
    fn make_link(&self, diff_id: &Sha256Digest) -> Result<PathBuf, CacheError> {
        let link = self.link(diff_id);
        let target = PathBuf::from(format!("../{}", diff_id.hex()));
        // A few rounds: a stale link replaced, or a link made by a racing
        // process, is checked again.
        for _ in 0..4 {
            match fs::read_link(&link) {
                Ok(found) if found == target => return Ok(link),
                Ok(found) => {
                    let theirs = self.links_dir().join(&found);
                    if fs::symlink_metadata(&theirs).is_ok() {
                        return Err(collision(&link, &found, diff_id));
                    }
                    // Its snapshot is gone (a crash during `remove`): stale.
                    let temp = self.temp_link(&target)?;
                    let renamed = fs::rename(&temp, &link);
                    if renamed.is_err() {
                        let _ = fs::remove_file(&temp);
                    }
                    renamed.map_err(io_err("rename into place", &link))?;
                    sync_dir(&self.links_dir())?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let temp = self.temp_link(&target)?;
                    // link(2) does not follow the symlink and never replaces
                    // what is there: a racing maker of a colliding link loses
                    // (and so do we, to be checked in the next round).
                    let linked = fs::hard_link(&temp, &link);
                    let _ = fs::remove_file(&temp);
                    match linked {
                        Ok(()) => {
                            sync_dir(&self.links_dir())?;
                            return Ok(link);
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err("create link", &link)(e)),
                    }
                }
                // Something that is not a symlink.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    return Err(CacheError::InvalidDocument {
                        what: "snapshot link",
                        name: link.display().to_string(),
                        reason: "it is not a symlink".into(),
                    })
                }
                Err(e) => return Err(io_err("read link", &link)(e)),
            }
        }
        Err(CacheError::Io {
            action: "create link",
            path: link,
            error: io::Error::other("it keeps changing (concurrent snapshot removal?)"),
        })
    }

    /// A symlink to `target` under a fresh temp name.
    fn temp_link(&self, target: &Path) -> Result<PathBuf, CacheError> {
        let temp = self.tmp.join(Store::temp_name("snapshot-link"));
        std::os::unix::fs::symlink(target, &temp).map_err(io_err("create link", &temp))?;
        Ok(temp)
    }

    /// Removes the snapshot of the layer with this `diff_id` and its link (if
    /// the link is its own); `false` if there was no snapshot. The tree leaves
    /// its name in one rename before it is deleted. Must not be called while an
    /// overlay mount uses the snapshot.
    pub fn remove(&self, diff_id: &Sha256Digest) -> Result<bool, CacheError> {
        let link = self.link(diff_id);
        let target = PathBuf::from(format!("../{}", diff_id.hex()));
        if fs::read_link(&link).is_ok_and(|found| found == target) {
            match fs::remove_file(&link) {
                Ok(()) => sync_dir(&self.links_dir())?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &link)(e)),
            }
        }
        let dest = self.path(diff_id);
        if !is_dir(&dest)? {
            return Ok(false);
        }
        let trash = self.tmp.join(Store::temp_name("snapshot-rm"));
        match fs::rename(&dest, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("rename", &dest)(e)),
        }
        sync_dir(&self.dir)?;
        self.forget_volatile(diff_id)?;
        fs::remove_dir_all(&trash).map_err(io_err("remove", &trash))?;
        Ok(true)
    }

    /// The diff_ids of all snapshots, sorted.
    pub fn list(&self) -> Result<Vec<Sha256Digest>, CacheError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(String::from) else {
                continue;
            };
            let Ok(digest) = format!("sha256:{name}").parse::<Sha256Digest>() else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(digest);
            }
        }
        out.sort();
        Ok(out)
    }
}

fn collision(link: &Path, found: &Path, diff_id: &Sha256Digest) -> CacheError {
    CacheError::InvalidDocument {
        what: "snapshot link",
        name: link.display().to_string(),
        reason: format!(
            "it points to `{}`, the snapshot of another layer whose diff_id starts with the \
             same {LINK_HEX_DIGITS} hex digits as {diff_id}; refusing to use it as that layer's \
             lower dir",
            found.display()
        ),
    }
}
