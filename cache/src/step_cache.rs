//! The step cache index: a step's cache key → the image its result is.
//!
//! A build step's result is a whole image (its config, with the history so far,
//! and its layers), stored as an ordinary OCI manifest in the blob store. The
//! index maps the step's cache key (a blake3 hash computed by `forge-graph`; this
//! crate only sees its hex) to that manifest's digest, one small file per key:
//!
//! ```text
//! forge/v1/cache/<key hex>      the manifest digest, `sha256:<hex>\n`
//! forge/v1/records/<slot hex>   the last recipe record of a step position (JSON)
//! ```
//!
//! A *record* is what the build last saw as the inputs of the step at one
//! position of one build file (the slot: a hash of the context, the file, the
//! stage and the step's index, made by the executor). `--explain-cache`
//! compares a step that missed with its slot's record to say which input
//! changed. Records are overwritten by every build and never needed for
//! correctness.
//!
//! Entries are written like everything else in the store (temp file, fsync,
//! rename, fsync of the directory) and only after every blob the manifest names
//! has been committed, so an entry never points at a partial result; a lookup
//! still checks that the manifest, its config and its layers are present and
//! answers "miss" otherwise (a blob removed by hand, or an entry from an older
//! store). [`Store::prune`] treats every entry as a root. Step images are
//! in no `index.json` entry; [`Store::step_image`] finds one by its image ID
//! (what a failed build names as its last good step, for `forge run`).
//!
//! A hit sets the entry file's mtime to now, so the mtime is when the entry
//! was last used (hit or written). Two collectors go by it, and neither
//! removes an entry used, or a blob written, within their grace period (a
//! build running now keeps what it uses):
//!
//! - [`Store::prune_cache`] (`forge prune --cache`) removes every entry unused
//!   for the grace period, then every snapshot no remaining entry or image
//!   has, whatever its age;
//! - [`Store::enforce_cache_cap`] (the size cap) removes the least recently
//!   used entries until what the step cache alone keeps alive fits under a
//!   size, then the snapshots no remaining entry or image has that were not
//!   made within the grace period.
//!
//! Both remove entry files first, then the blobs and snapshots nothing
//! references any more, so a collection killed at any point leaves a
//! consistent store (at worst garbage the next collection removes).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::store::{children, descriptor_digest, io_err, is_manifest_type, sync_dir, Store};
use crate::{CacheError, Sha256Digest};

impl Store {
    fn step_cache_dir(&self) -> PathBuf {
        self.forge_dir().join("cache")
    }

    fn step_cache_path(&self, key_hex: &str) -> Result<PathBuf, CacheError> {
        if key_hex.len() != 64 || !key_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CacheError::InvalidDigest {
                text: key_hex.to_string(),
                reason: "a step cache key is 64 hex digits",
            });
        }
        Ok(self.step_cache_dir().join(key_hex))
    }

    /// The manifest digest cached for the step key `key_hex`, if there is an
    /// entry and every blob it needs is present.
    ///
    /// # Errors
    /// A malformed key, or an unreadable cache directory.
    pub fn step_cache_get(&self, key_hex: &str) -> Result<Option<Sha256Digest>, CacheError> {
        let path = self.step_cache_path(key_hex)?;
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let Ok(manifest_digest) = text.trim().parse::<Sha256Digest>() else {
            return Ok(None);
        };
        if self.complete_step_image(&manifest_digest).is_none() {
            return Ok(None);
        }
        // Mark the entry used, for the collectors (best effort: a store we
        // may read but not write still answers).
        if let Ok(file) = fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Ok(Some(manifest_digest))
    }

    /// The image ID (config digest) of the step image `manifest_digest` if
    /// the manifest, its config and every layer it names are in the store
    /// (`None`: something is missing or the manifest does not parse).
    fn complete_step_image(&self, manifest_digest: &Sha256Digest) -> Option<Sha256Digest> {
        if !self.has_blob(manifest_digest) {
            return None;
        }
        let manifest = self.manifest_by_digest(manifest_digest).ok()?;
        let present = |d: &oci_spec::image::Digest| {
            d.to_string()
                .parse::<Sha256Digest>()
                .ok()
                .filter(|d| self.has_blob(d))
        };
        let id = present(manifest.config().digest())?;
        if !manifest
            .layers()
            .iter()
            .all(|l| present(l.digest()).is_some())
        {
            return None;
        }
        Some(id)
    }

    /// Finds a build step's image — one only the step cache refers to, such
    /// as the "last good step" a failed `forge build` names — by its image
    /// ID (the config digest) as [`Store::resolve`] takes IDs: the full
    /// `sha256:<64 hex>` (its manifest digest also matches), or a prefix of
    /// one or more lowercase hex digits, optionally after `sha256:`. Returns
    /// the manifest digest and the image ID; `None` when no step image
    /// matches (a query that is not an ID or a prefix matches none).
    ///
    /// Step images are not in `index.json`, so [`Store::resolve`] does not
    /// see them. Nothing indexes them by config digest either (the step
    /// cache maps cache keys to manifests), so this scans every entry and
    /// reads each distinct manifest it names: one small file read per entry
    /// and per manifest. That is fine for what this is for — `forge run` of
    /// an ID that `resolve` did not find, when debugging a build — and
    /// keeps the build's own path free of a second index to maintain.
    ///
    /// Like [`Store::step_cache_get`], an entry whose manifest, config or
    /// layers are missing is skipped. Many entries can name the same
    /// manifest (and two manifests the same config); each image ID counts
    /// once. An entry's last use is not updated: this is no cache hit.
    ///
    /// # Errors
    /// [`CacheError::AmbiguousImage`] when a prefix matches several image
    /// IDs (listed by their short form), or an unreadable cache directory.
    pub fn step_image(
        &self,
        query: &str,
    ) -> Result<Option<(Sha256Digest, Sha256Digest)>, CacheError> {
        let full = query.parse::<Sha256Digest>().ok();
        let Some(prefix) = crate::store::id_prefix(query) else {
            return Ok(None);
        };
        let manifests: BTreeSet<Sha256Digest> = self
            .step_cache_entries()?
            .into_iter()
            .filter_map(|e| e.manifest)
            .collect();
        // Image ID → one manifest of it (the smallest digest, for a stable answer).
        let mut found: BTreeMap<Sha256Digest, Sha256Digest> = BTreeMap::new();
        for manifest in manifests {
            let Some(id) = self.complete_step_image(&manifest) else {
                continue;
            };
            if Some(manifest) == full || id.hex().starts_with(prefix) {
                found.entry(id).or_insert(manifest);
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop_first().map(|(id, manifest)| (manifest, id))),
            _ => Err(CacheError::AmbiguousImage {
                prefix: query.to_string(),
                candidates: found
                    .keys()
                    .map(Sha256Digest::short)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Records that the step key `key_hex` produced the manifest `manifest`
    /// (which, with its config and layers, must already be in the store).
    ///
    /// # Errors
    /// A malformed key, a missing manifest, or a failed write.
    pub fn step_cache_put(&self, key_hex: &str, manifest: &Sha256Digest) -> Result<(), CacheError> {
        let path = self.step_cache_path(key_hex)?;
        if !self.has_blob(manifest) {
            return Err(CacheError::BlobNotFound { digest: *manifest });
        }
        let dir = self.step_cache_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        self.replace_file(&path, format!("{manifest}\n").as_bytes())
    }

    /// Every manifest digest the step cache refers to (roots for [`Store::prune`]).
    pub(crate) fn step_cache_roots(&self) -> Vec<Sha256Digest> {
        let Ok(entries) = fs::read_dir(self.step_cache_dir()) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|t| t.trim().parse().ok())
            .collect()
    }

    fn step_record_path(&self, slot_hex: &str) -> Result<PathBuf, CacheError> {
        if slot_hex.len() != 64 || !slot_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CacheError::InvalidDigest {
                text: slot_hex.to_string(),
                reason: "a step record slot is 64 hex digits",
            });
        }
        Ok(self.forge_dir().join("records").join(slot_hex))
    }

    /// The record last stored for `slot_hex`, if any (unreadable: `None`).
    ///
    /// # Errors
    /// A malformed slot.
    pub fn step_record_get(&self, slot_hex: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.step_record_path(slot_hex)?;
        Ok(fs::read(path).ok())
    }

    /// Stores the record of `slot_hex` (atomically replacing the last one).
    ///
    /// # Errors
    /// A malformed slot or a failed write.
    pub fn step_record_put(&self, slot_hex: &str, record: &[u8]) -> Result<(), CacheError> {
        let path = self.step_record_path(slot_hex)?;
        let dir = self.forge_dir().join("records");
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // Temp file and rename, but no fsync: a record only explains, and one
        // lost in a crash reads back as garbage or nothing, which is "no
        // record". Each fsync would cost every step a journal commit.
        let temp = self.tmp_dir().join(Store::temp_name("record"));
        fs::write(&temp, record).map_err(io_err("write", &temp))?;
        fs::rename(&temp, &path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            io_err("rename into place", &path)(e)
        })
    }

    /// `forge prune --cache`: removes the step-cache entries not used (hit or
    /// written) for `grace` — so a build running now keeps its entries — then
    /// the blobs nothing references any more ([`Store::prune_with_grace`]),
    /// then the snapshots of layers no remaining image or cache entry has.
    ///
    /// # Errors
    /// An unreadable store.
    pub fn prune_cache(&self, grace: Duration) -> Result<CachePruneReport, CacheError> {
        let mut report = CachePruneReport::default();
        let now = SystemTime::now();
        for entry in self.step_cache_entries()? {
            if !in_use(entry.used, now, grace) && fs::remove_file(&entry.path).is_ok() {
                report.entries_removed += 1;
            } else {
                report.entries_kept += 1;
            }
        }
        report.blobs = self.prune_with_grace(grace)?;
        report.snapshots_removed = self.remove_unused_snapshots(None)?.0;
        Ok(report)
    }

    /// The size cap: when the blobs and snapshots that only step-cache
    /// entries keep alive (not reachable from a tagged image) take more than
    /// `max_size` bytes, removes entries least recently used first until they
    /// fit, then the blobs ([`Store::prune_with_grace`]) and snapshots nothing
    /// references any more. A blob counts its file's size, a snapshot the
    /// sizes of its files; what several entries share counts once, and frees
    /// space only with the last of them.
    ///
    /// Entries used within `grace` are never removed (a build running now
    /// keeps its own, and those it hit), nor are blobs and snapshots made or
    /// changed within it; so the cap may stay exceeded
    /// ([`CacheCapReport::over_cap`]), and the space of a removed entry's
    /// recent objects is freed by a later collection. Under the cap, nothing
    /// is removed at all.
    ///
    /// # Errors
    /// An unreadable store, or a failed removal.
    pub fn enforce_cache_cap(
        &self,
        max_size: u64,
        grace: Duration,
    ) -> Result<CacheCapReport, CacheError> {
        let now = SystemTime::now();
        let (image_blobs, image_layers) = self.image_reach()?;
        let mut sizes: HashMap<Object, u64> = HashMap::new();
        let mut refs: HashMap<Object, usize> = HashMap::new();
        let mut entries = Vec::new();
        for entry in self.step_cache_entries()? {
            let mut objects = HashSet::new();
            if let Some(manifest) = entry.manifest {
                let (blobs, layers) = self.manifest_reach(&manifest);
                objects.extend(
                    blobs
                        .into_iter()
                        .filter(|d| !image_blobs.contains(d))
                        .map(Object::Blob),
                );
                objects.extend(
                    layers
                        .into_iter()
                        .filter(|d| !image_layers.contains(d))
                        .map(Object::Snapshot),
                );
            }
            for object in &objects {
                *refs.entry(*object).or_default() += 1;
                if !sizes.contains_key(object) {
                    sizes.insert(*object, self.object_size(object));
                }
            }
            entries.push((entry, objects));
        }
        let mut size: u64 = sizes.values().sum();
        let mut report = CacheCapReport {
            max_size,
            size_before: size,
            ..CacheCapReport::default()
        };

        // Least recently used first; the name breaks ties, for a stable order.
        entries.sort_by(|(a, _), (b, _)| (a.used, &a.path).cmp(&(b.used, &b.path)));
        let mut doomed = Vec::new();
        for (entry, objects) in &entries {
            if size <= max_size {
                break;
            }
            if in_use(entry.used, now, grace) {
                continue;
            }
            for object in objects {
                if let Some(count) = refs.get_mut(object) {
                    *count -= 1;
                    if *count == 0 {
                        size -= sizes.get(object).copied().unwrap_or(0);
                    }
                }
            }
            doomed.push(&entry.path);
        }
        report.size_after = size;

        // Entry files first: from here on, a kill leaves only garbage.
        for path in doomed {
            // A build may have hit the entry since it was listed.
            let used = fs::metadata(path).and_then(|m| m.modified()).ok();
            if in_use(used, SystemTime::now(), grace) {
                continue;
            }
            match fs::remove_file(path) {
                Ok(()) => report.entries_removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", path)(e)),
            }
        }
        report.entries_kept = entries.len() - report.entries_removed;
        if report.entries_removed > 0 {
            sync_dir(&self.step_cache_dir())?;
            report.blobs = self.prune_with_grace(grace)?;
            (report.snapshots_removed, report.snapshot_bytes_freed) =
                self.remove_unused_snapshots(Some(grace))?;
        }
        Ok(report)
    }

    /// The entry files, with when each was last used and what it names
    /// (`None`: unreadable or not a digest).
    fn step_cache_entries(&self) -> Result<Vec<EntryFile>, CacheError> {
        let dir = self.step_cache_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list", &dir))?;
            let path = entry.path();
            let used = entry.metadata().and_then(|m| m.modified()).ok();
            let manifest = fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            out.push(EntryFile {
                path,
                used,
                manifest,
            });
        }
        Ok(out)
    }

    /// The blobs an image manifest needs (itself, its config, its layers)
    /// and its layers' diff_ids. Absent or unparsable documents contribute
    /// what could be read.
    fn manifest_reach(&self, manifest: &Sha256Digest) -> (Vec<Sha256Digest>, Vec<Sha256Digest>) {
        let mut blobs = vec![*manifest];
        if let Ok(bytes) = fs::read(self.blob_path(manifest)) {
            blobs.extend(
                children(&bytes)
                    .iter()
                    .filter_map(|c| c.digest.parse::<Sha256Digest>().ok()),
            );
        }
        (blobs, self.diff_ids(manifest))
    }

    /// The diff_ids of an image manifest's layers (none if it is not one).
    fn diff_ids(&self, manifest: &Sha256Digest) -> Vec<Sha256Digest> {
        let Ok(parsed) = self.manifest_by_digest(manifest) else {
            return Vec::new();
        };
        let Ok(config) = self.config(&parsed) else {
            return Vec::new();
        };
        config
            .rootfs()
            .diff_ids()
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect()
    }

    /// Everything the images in `index.json` reach: blobs (through indexes
    /// and manifests) and the diff_ids of every image manifest among them.
    fn image_reach(&self) -> Result<(HashSet<Sha256Digest>, HashSet<Sha256Digest>), CacheError> {
        let mut blobs = HashSet::new();
        let mut layers = HashSet::new();
        let mut stack: Vec<(Sha256Digest, Option<String>)> = Vec::new();
        for entry in self.read_index()?.manifests() {
            if let Ok(digest) = descriptor_digest(entry) {
                stack.push((digest, Some(entry.media_type().to_string())));
            }
        }
        while let Some((digest, media_type)) = stack.pop() {
            if !blobs.insert(digest) || !media_type.as_deref().is_some_and(is_manifest_type) {
                continue;
            }
            let Ok(bytes) = fs::read(self.blob_path(&digest)) else {
                continue;
            };
            for child in children(&bytes) {
                if let Ok(d) = child.digest.parse() {
                    stack.push((d, child.media_type));
                }
            }
            layers.extend(self.diff_ids(&digest));
        }
        Ok((blobs, layers))
    }

    /// The bytes an object takes (0 if absent).
    fn object_size(&self, object: &Object) -> u64 {
        match object {
            Object::Blob(digest) => fs::metadata(self.blob_path(digest)).map_or(0, |m| m.len()),
            Object::Snapshot(diff_id) => tree_size(&self.snapshots().path(diff_id)),
        }
    }

    /// Removes the snapshots of layers that no image, no step-cache entry
    /// and no working container has — with `grace`, only those made or
    /// changed before it; returns how many were removed and the sizes of
    /// their files. (A container's snapshots are the lower dirs of its
    /// overlay while a `forge run` uses it.)
    fn remove_unused_snapshots(&self, grace: Option<Duration>) -> Result<(usize, u64), CacheError> {
        let mut keep = self.image_reach()?.1;
        let containers = crate::container::Containers::new(self).roots();
        for manifest in self.step_cache_roots().into_iter().chain(containers) {
            keep.extend(self.diff_ids(&manifest));
        }
        let snapshots = self.snapshots();
        let mut removed = (0, 0);
        for diff_id in snapshots.list()? {
            let path = snapshots.path(&diff_id);
            if keep.contains(&diff_id) || grace.is_some_and(|g| changed_within(&path, g)) {
                continue;
            }
            let size = tree_size(&path);
            if snapshots.remove(&diff_id)? {
                removed.0 += 1;
                removed.1 += size;
            }
        }
        Ok(removed)
    }
}

/// A step-cache entry file as listed.
struct EntryFile {
    path: PathBuf,
    /// Its mtime: when it was last hit or written.
    used: Option<SystemTime>,
    /// The manifest it names.
    manifest: Option<Sha256Digest>,
}

/// What the size cap counts: a blob, or the snapshot of a layer (by diff_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    Blob(Sha256Digest),
    Snapshot(Sha256Digest),
}

/// Whether an entry last used at `used` counts as in use: within `grace` of
/// `now`, in the future, or of unknown age.
fn in_use(used: Option<SystemTime>, now: SystemTime, grace: Duration) -> bool {
    match used.map(|t| now.duration_since(t)) {
        Some(Ok(age)) => age < grace,
        _ => true,
    }
}

/// Whether a file or directory was changed (its ctime: written, renamed into
/// place, chmodded) within `grace`. Unknown: yes.
fn changed_within(path: &Path, grace: Duration) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return true;
    };
    let (Ok(secs), Ok(nanos)) = (
        u64::try_from(meta.ctime()),
        u32::try_from(meta.ctime_nsec()),
    ) else {
        return true;
    };
    let changed = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    in_use(Some(changed), SystemTime::now(), grace)
}

/// The sizes of the files (not directories) in a tree, symlinks not followed.
fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// What [`Store::prune_cache`] removed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CachePruneReport {
    /// Step-cache entries removed.
    pub entries_removed: usize,
    /// Step-cache entries kept (used within the grace period).
    pub entries_kept: usize,
    /// Snapshots removed.
    pub snapshots_removed: usize,
    /// The blob pass.
    pub blobs: crate::store::PruneReport,
}

/// What [`Store::enforce_cache_cap`] found and removed. Sizes are bytes of
/// blobs and snapshots that only step-cache entries keep alive.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CacheCapReport {
    /// The cap.
    pub max_size: u64,
    /// The size before.
    pub size_before: u64,
    /// The size the remaining entries keep alive (the objects of removed
    /// entries that are within the grace period are freed later).
    pub size_after: u64,
    /// Entries removed (least recently used first).
    pub entries_removed: usize,
    /// Entries kept.
    pub entries_kept: usize,
    /// Snapshots removed.
    pub snapshots_removed: usize,
    /// The sizes of the files of the snapshots removed.
    pub snapshot_bytes_freed: u64,
    /// The blob pass (only run when entries were removed).
    pub blobs: crate::store::PruneReport,
}

impl CacheCapReport {
    /// Whether the step cache still takes more than the cap: the rest is in
    /// use (used within the grace period).
    pub fn over_cap(&self) -> bool {
        self.size_after > self.max_size
    }

    /// Bytes freed now: blobs (and stale temp files) and snapshots.
    pub fn bytes_freed(&self) -> u64 {
        self.blobs.bytes_freed + self.snapshot_bytes_freed
    }
}
