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
//! store). [`Store::prune`] treats every entry as a root.

use std::fs;
use std::path::PathBuf;

use crate::store::{io_err, Store};
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
        if !self.has_blob(&manifest_digest) {
            return Ok(None);
        }
        let Ok(manifest) = self.manifest_by_digest(&manifest_digest) else {
            return Ok(None);
        };
        let present = |d: &oci_spec::image::Digest| {
            d.to_string()
                .parse::<Sha256Digest>()
                .is_ok_and(|d| self.has_blob(&d))
        };
        if !present(manifest.config().digest())
            || !manifest.layers().iter().all(|l| present(l.digest()))
        {
            return Ok(None);
        }
        Ok(Some(manifest_digest))
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
    pub fn prune_cache(&self, grace: std::time::Duration) -> Result<CachePruneReport, CacheError> {
        let mut report = CachePruneReport::default();
        let dir = self.step_cache_dir();
        let now = std::time::SystemTime::now();
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age >= grace);
                if old && fs::remove_file(entry.path()).is_ok() {
                    report.entries_removed += 1;
                } else {
                    report.entries_kept += 1;
                }
            }
        }
        report.blobs = self.prune_with_grace(grace)?;

        // Snapshots: keep the layers of every remaining image and cache entry.
        let mut roots: Vec<Sha256Digest> = self.step_cache_roots();
        for image in self.images()? {
            if !image.is_index() {
                roots.push(image.digest);
            }
        }
        let mut keep = std::collections::HashSet::new();
        for manifest in roots {
            let Ok(parsed) = self.manifest_by_digest(&manifest) else {
                continue;
            };
            let Ok(config) = self.config(&parsed) else {
                continue;
            };
            for diff_id in config.rootfs().diff_ids() {
                if let Ok(d) = diff_id.parse::<Sha256Digest>() {
                    keep.insert(d);
                }
            }
        }
        let snapshots = self.snapshots();
        for diff_id in snapshots.list()? {
            if !keep.contains(&diff_id) && snapshots.remove(&diff_id)? {
                report.snapshots_removed += 1;
            }
        }
        Ok(report)
    }
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
