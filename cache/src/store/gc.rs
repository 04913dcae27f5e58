//! `fsck` (check, optionally repair) and `prune` (remove what nothing uses).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use rayon::prelude::*;

use super::blob::hash_file;
use super::lease::{
    is_stale, list_dir, older_than, owner_of, remove_stale, LeaseFile, STALE_TEMP_AGE,
};
use super::{children, descriptor_digest, is_manifest_type, ref_name, sync_dir, Store};
use crate::{CacheError, Sha256Digest};

/// Unreferenced blobs younger than this survive [`Store::prune`]: a process may
/// have just committed one and not yet tagged or leased it.
pub const PRUNE_GRACE: Duration = Duration::from_secs(10 * 60);

/// Blobs up to this size, of unknown media type, are sniffed for references
/// when they are lease roots.
const SNIFF_LIMIT: u64 = 4 << 20;

/// The media type step-cache roots are read as (they are always OCI manifests).
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// What [`Store::fsck`] found (and, with repair, removed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FsckReport {
    /// Blobs hashed.
    pub blobs_checked: usize,
    /// Their total size.
    pub bytes_checked: u64,
    /// Blobs whose content does not match their name.
    pub corrupt: Vec<Sha256Digest>,
    /// Blobs referenced (from `index.json`, through manifests) but absent.
    pub missing: Vec<Sha256Digest>,
    /// `index.json` entries whose image is not complete and intact.
    pub broken: Vec<BrokenEntry>,
    /// Files that are not blobs: stale temp files, leases of dead processes,
    /// stale non-digest files under `blobs/sha256`.
    pub stray: Vec<PathBuf>,
    /// Whether repair removed the problems above.
    pub repaired: bool,
}

impl FsckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.broken.is_empty()
            && self.stray.is_empty()
    }
}

/// An `index.json` entry that fsck found broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenEntry {
    /// Its `org.opencontainers.image.ref.name`.
    pub name: Option<String>,
    /// Its manifest digest, as written.
    pub digest: String,
    /// What is wrong, e.g. `blob `sha256:…` is missing`.
    pub reason: String,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs removed.
    pub removed: Vec<Sha256Digest>,
    /// Bytes freed (blobs, stray files, stale temp files).
    pub bytes_freed: u64,
    /// Blobs kept.
    pub kept: usize,
}

impl Store {
    /// Checks the store: every blob matches its digest, every blob referenced
    /// from `index.json` (through manifests and indexes) is present with the
    /// size its descriptor gives, and there are no stray files. Blobs are hashed
    /// in parallel and without the lock. With `repair`, removes corrupt blobs
    /// and stray files and drops the broken `index.json` entries (under the
    /// lock); unreferenced blobs are then left to [`Store::prune`].
    pub fn fsck(&self, repair: bool) -> Result<FsckReport, CacheError> {
        let mut report = FsckReport::default();

        for (path, name) in list_dir(&self.tmp_dir())? {
            if is_stale(&path, &name) {
                report.stray.push(path);
            }
        }
        for (path, name) in list_dir(&self.leases_dir())? {
            if !lease_alive(&path, &name) {
                report.stray.push(path);
            }
        }
        let mut blobs = Vec::new();
        for (path, name) in list_dir(&self.blobs_dir())? {
            match blob_name(&name) {
                Some(digest) => blobs.push((digest, path)),
                None if older_than(&path, STALE_TEMP_AGE) => report.stray.push(path),
                None => {}
            }
        }

        let hashed: Vec<_> = blobs
            .par_iter()
            .map(|(digest, path)| (*digest, hash_file(path)))
            .collect();
        let mut sizes = HashMap::new();
        let mut corrupt = BTreeSet::new();
        for (digest, result) in hashed {
            // `None`: removed meanwhile (by a concurrent prune).
            if let Some((actual, size)) = result? {
                report.blobs_checked += 1;
                report.bytes_checked += size;
                if actual == digest {
                    sizes.insert(digest, size);
                } else {
                    corrupt.insert(digest);
                }
            }
        }

        let index = self.read_index()?;
        let mut missing = BTreeSet::new();
        let mut broken_keys = HashSet::new();
        for entry in index.manifests() {
            let mut problems = Vec::new();
            let mut stack = vec![(
                entry.digest().to_string(),
                Some(entry.media_type().to_string()),
                Some(entry.size()),
            )];
            while let Some((text, media_type, size)) = stack.pop() {
                let Ok(digest) = text.parse::<Sha256Digest>() else {
                    problems.push(format!("digest `{text}` is not a supported sha256 digest"));
                    continue;
                };
                if corrupt.contains(&digest) {
                    problems.push(format!("blob `{digest}` is corrupt"));
                    continue;
                }
                let Some(&actual) = sizes.get(&digest) else {
                    missing.insert(digest);
                    problems.push(format!("blob `{digest}` is missing"));
                    continue;
                };
                if let Some(size) = size.filter(|s| *s != actual) {
                    problems.push(format!(
                        "blob `{digest}` has {actual} bytes, its descriptor says {size}"
                    ));
                    continue;
                }
                if media_type.as_deref().is_some_and(is_manifest_type) {
                    let path = self.blob_path(&digest);
                    let bytes = fs::read(&path).map_err(super::io_err("read", &path))?;
                    for child in children(&bytes) {
                        stack.push((child.digest, child.media_type, child.size));
                    }
                }
            }
            if !problems.is_empty() {
                let name = ref_name(entry).map(String::from);
                broken_keys.insert((name.clone(), entry.digest().to_string()));
                report.broken.push(super::BrokenEntry {
                    name,
                    digest: entry.digest().to_string(),
                    reason: problems.join("; "),
                });
            }
        }
        report.corrupt = corrupt.into_iter().collect();
        report.missing = missing.into_iter().collect();

        if repair && !report.is_clean() {
            for digest in &report.corrupt {
                let path = self.blob_path(digest);
                fs::remove_file(&path).map_err(super::io_err("remove", &path))?;
            }
            for path in &report.stray {
                // Directories: snapshot extractions and RUN work dirs of dead
                // processes.
                let _ = match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(path),
                    _ => fs::remove_file(path),
                };
            }
            if !report.broken.is_empty() {
                self.update_index(|manifests| {
                    manifests.retain(|d| {
                        let key = (ref_name(d).map(String::from), d.digest().to_string());
                        !broken_keys.contains(&key)
                    });
                    Ok(())
                })?;
            }
            sync_dir(&self.blobs_dir())?;
            report.repaired = true;
        }
        Ok(report)
    }

    /// Removes every blob that nothing uses — not referenced from `index.json`
    /// (through manifests and indexes), not protected by a live lease — and
    /// older than [`PRUNE_GRACE`]; also leases of dead processes and stale temp
    /// files. Holds the exclusive lock throughout.
    pub fn prune(&self) -> Result<PruneReport, CacheError> {
        self.prune_with_grace(PRUNE_GRACE)
    }

    /// [`Store::prune`] with another grace period for unreferenced blobs
    /// (`Duration::ZERO`: remove them all).
    pub fn prune_with_grace(&self, grace: Duration) -> Result<PruneReport, CacheError> {
        let _lock = self.lock(true)?;
        let mut report = PruneReport::default();

        // Roots: images, step-cache results, working containers' images, then
        // live leases.
        let mut stack: Vec<(Sha256Digest, Option<String>)> = Vec::new();
        for entry in self.read_index()?.manifests() {
            if let Ok(digest) = descriptor_digest(entry) {
                stack.push((digest, Some(entry.media_type().to_string())));
            }
        }
        for digest in self.step_cache_roots() {
            stack.push((digest, Some(MANIFEST_MEDIA_TYPE.to_string())));
        }
        for digest in crate::container::Containers::new(self).roots() {
            stack.push((digest, Some(MANIFEST_MEDIA_TYPE.to_string())));
        }
        for (path, name) in list_dir(&self.leases_dir())? {
            match read_lease(&path) {
                Some(lease) if lease.owner().alive() => {
                    stack.extend(
                        lease
                            .digests
                            .iter()
                            .filter_map(|d| d.parse().ok())
                            .map(|d| (d, None)),
                    );
                }
                Some(_) => remove_counted(&path, &mut report.bytes_freed),
                None if owner_of(&name).is_some_and(|o| !o.alive()) => {
                    remove_counted(&path, &mut report.bytes_freed)
                }
                None => {}
            }
        }

        let mut keep = HashSet::new();
        while let Some((digest, media_type)) = stack.pop() {
            if !keep.insert(digest) {
                continue;
            }
            let path = self.blob_path(&digest);
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let parse = match &media_type {
                Some(media_type) => is_manifest_type(media_type),
                None => meta.len() <= SNIFF_LIMIT,
            };
            if !parse {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else {
                continue;
            };
            if media_type.is_none()
                && bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
            {
                continue;
            }
            for child in children(&bytes) {
                if let Ok(d) = child.digest.parse() {
                    stack.push((d, child.media_type));
                }
            }
        }

        for (path, name) in list_dir(&self.blobs_dir())? {
            let digest = blob_name(&name);
            if digest.is_some_and(|d| keep.contains(&d))
                || !(grace.is_zero() || older_than(&path, grace))
            {
                report.kept += 1;
                continue;
            }
            let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(&path).is_ok() {
                report.bytes_freed += size;
                if let Some(digest) = digest {
                    report.removed.push(digest);
                }
            }
        }
        report.bytes_freed += remove_stale(&self.tmp_dir())?.1;
        sync_dir(&self.blobs_dir())?;
        Ok(report)
    }
}

/// The digest a file under `blobs/sha256` is named after, if it is one.
fn blob_name(name: &str) -> Option<Sha256Digest> {
    format!("sha256:{name}").parse().ok()
}

fn read_lease(path: &std::path::Path) -> Option<LeaseFile> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Whether a lease file belongs to a live process (unreadable leases count as
/// alive while the owner named in the file name lives).
fn lease_alive(path: &std::path::Path, name: &str) -> bool {
    match read_lease(path) {
        Some(lease) => lease.owner().alive(),
        None => owner_of(name).is_none_or(|o| o.alive()),
    }
}

fn remove_counted(path: &std::path::Path, freed: &mut u64) {
    let size = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    if fs::remove_file(path).is_ok() {
        *freed += size;
    }
}
