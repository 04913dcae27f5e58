//! The image store: one directory that is a standard OCI image layout, plus
//! forge's own data beside it.
//!
//! # Layout
//!
//! ```text
//! $FORGE_HOME/                  (default $XDG_DATA_HOME/forge or ~/.local/share/forge)
//!   oci-layout                  {"imageLayoutVersion":"1.0.0"}
//!   index.json                  OCI image index: one entry per tag
//!   blobs/sha256/<hex>          manifests, indexes, configs, layers; complete and verified
//!   forge/v1/lock               lock file (flock) serializing index.json updates and prune
//!   forge/v1/tmp/               temp files: blobs being written, index/lease replacements
//!   forge/v1/leases/<pid>-<start>-<n>.json   blobs an in-flight process protects
//!   forge/v1/cache/<key hex>    step cache index: a step key's result manifest (see step_cache)
//!   forge/v1/snapshots/<diff_id hex>/   a layer extracted as an overlay lower dir (see snapshot)
//!   forge/v1/snapshots/l/<16 hex>       short link to it, for overlay mount options
//!   forge/v1/containers/<64 hex>/      a working container (see container)
//! ```
//!
//! Tools read it as it is: `skopeo inspect oci:$FORGE_HOME:docker.io/library/ubuntu:latest`.
//! Each entry of `index.json` is a manifest (or index) descriptor with the
//! annotations `org.opencontainers.image.ref.name` = the full reference
//! (`registry/repository:tag`, see [`Reference::tagged_name`]) and
//! `dev.forge.created` = when the image was stored here (RFC 3339), which lives
//! outside the image so its digests do not change. Manifests and indexes are
//! stored byte for byte as they came, so their digests survive. forge's own data
//! stays under `forge/v1` — never in `blobs/` or `index.json` — so later formats
//! can live beside it in `forge/v2`.
//!
//! # Write protocol
//!
//! A blob is written to a temp file in `forge/v1/tmp` (same file system), hashed
//! as it is written, fsynced, checked against the expected digest, renamed to
//! `blobs/sha256/<hex>`, and the directory is fsynced. So a file under
//! `blobs/sha256` is always complete and had the right content when written.
//! `index.json` is replaced the same way: new content to a temp file, fsync,
//! rename over `index.json`, fsync the directory.
//!
//! # Locking
//!
//! Blob data is written without any lock: blobs are content-addressed, so two
//! writers of the same blob write the same bytes and the last rename wins.
//! Updating `index.json` (read, modify, replace) and pruning take an exclusive
//! `flock` on `forge/v1/lock` (opened anew each time, so separate threads and
//! handles exclude each other too); writing a lease takes it shared. Readers
//! take no lock: they see the old or the new `index.json`, never a mix. The OS
//! drops a dead process's lock, so there is never a stale lock to break.
//!
//! # Crash safety
//!
//! Killed at any point (`kill -9`, power loss after the fsyncs), the store is
//! usable as it is: a blob is either absent or complete under its final name;
//! `index.json` is the old or the new version; blobs are committed before the
//! index entry that references them ([`Store::tag`] refuses a manifest whose
//! blobs are missing), so nothing partial is ever referenced. What a crash can
//! leave is garbage, never damage: temp files (removed by [`Store::open`] once
//! their owning process — pid and start time in the name — is gone), leases of
//! dead processes (ignored and removed), and complete but unreferenced blobs
//! (removed by [`Store::prune`]).
//!
//! # Garbage collection
//!
//! [`Store::prune`] keeps blobs reachable from `index.json` (through manifests
//! and indexes) and from live leases ([`Store::lease`]: one file per process
//! under `forge/v1/leases`, naming pid, start time and digests; a lease whose
//! process is gone — checked against `/proc/PID/stat` so a reused pid does not
//! count — is expired and removed). Everything else under `blobs/sha256` older
//! than [`PRUNE_GRACE`] goes: the grace period covers a blob committed by
//! another process that has not yet tagged or leased it. [`Store::fsck`]
//! verifies every blob and every reference; with repair it removes corrupt
//! blobs and stray files and drops entries whose image is incomplete.

mod blob;
mod gc;
mod lease;
mod time;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

pub use blob::{sha256, BlobWriter, VerifyingReader};
pub use gc::{BrokenEntry, FsckReport, PruneReport, PRUNE_GRACE};
pub use lease::{process_start_time, Lease};

use crate::reference::Reference;
use crate::{CacheError, Sha256Digest};

/// The annotation holding an entry's full reference.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The annotation holding when an image was stored locally (RFC 3339).
pub const CREATED_ANNOTATION: &str = "dev.forge.created";

/// The `index.json` annotation holding the digest a registry knows the image
/// by (the digest pulled or pushed: an index's for a multi-platform pull, as
/// docker records it), when that is not the stored manifest's own.
pub const REPO_DIGEST_ANNOTATION: &str = "dev.forge.repo.digest";

/// Media types of documents that reference other blobs.
const MANIFEST_TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.artifact.manifest.v1+json",
];

/// Media types of multi-platform indexes.
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image store rooted at a directory. Cheap to open; any number of handles,
/// threads and processes may use one directory at once.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One entry of `index.json`: a tagged image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// The `org.opencontainers.image.ref.name` annotation, as stored.
    pub name: Option<String>,
    /// `name` parsed, when it is a full reference (`registry/repo:tag`).
    pub reference: Option<Reference>,
    /// The manifest (or index) descriptor, as stored in `index.json`.
    pub manifest: Descriptor,
    /// The manifest digest.
    pub digest: Sha256Digest,
    /// The image ID: the config digest (for an index, the index digest); `None`
    /// if the manifest cannot be read.
    pub id: Option<Sha256Digest>,
    /// When the image was stored here (`dev.forge.created`).
    pub created: Option<SystemTime>,
    /// The digest a registry knows it by, when it was pulled or pushed
    /// ([`REPO_DIGEST_ANNOTATION`]; else the manifest digest is).
    pub repo_digest: Option<Sha256Digest>,
}

impl ImageRecord {
    /// Whether the entry is a multi-platform index rather than one manifest.
    pub fn is_index(&self) -> bool {
        INDEX_TYPES.contains(&self.manifest.media_type().as_ref())
    }

    /// The name as docker shows it (`ubuntu:22.04`), or the raw annotation.
    pub fn familiar_name(&self) -> Option<String> {
        match &self.reference {
            Some(r) => Some(r.familiar()),
            None => self.name.clone(),
        }
    }
}

pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |error| CacheError::Io {
        action,
        path,
        error,
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// The hex digits of an image ID prefix as docker takes one (1 to 64
/// lowercase hex digits, optionally after `sha256:`); `None` if `query` is
/// not one.
pub(crate) fn id_prefix(query: &str) -> Option<&str> {
    let prefix = query.strip_prefix("sha256:").unwrap_or(query);
    let hex = prefix
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (!prefix.is_empty() && prefix.len() <= 64 && hex).then_some(prefix)
}

/// Opens the lock file and locks it (exclusive or shared); unlocked when the
/// returned file is dropped.
/// (`File::lock` is std since Rust 1.89, the workspace's `rust-version`.)
pub(crate) fn lock_file(path: &Path, exclusive: bool) -> Result<File, CacheError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open", path))?;
    let locked = if exclusive {
        file.lock()
    } else {
        file.lock_shared()
    };
    locked.map_err(io_err("lock", path))?;
    Ok(file)
}

fn invalid(
    what: &'static str,
    name: impl std::fmt::Display,
    e: impl std::fmt::Display,
) -> CacheError {
    CacheError::InvalidDocument {
        what,
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// The sha256 digest of a descriptor, or an error naming it.
pub fn descriptor_digest(descriptor: &Descriptor) -> Result<Sha256Digest, CacheError> {
    descriptor.digest().to_string().parse()
}

impl Store {
    /// The default store directory: `$FORGE_HOME`, else `$XDG_DATA_HOME/forge`,
    /// else `~/.local/share/forge`; `None` without even `$HOME`.
    pub fn default_root() -> Option<PathBuf> {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(home) = var("FORGE_HOME") {
            return Some(home);
        }
        if let Some(data) = var("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
            return Some(data.join("forge"));
        }
        var("HOME").map(|home| home.join(".local/share/forge"))
    }

    /// Opens the store at `root`, creating the layout if missing, and removes
    /// temp files left by processes that are gone.
    pub fn open(root: &Path) -> Result<Store, CacheError> {
        let store = Store {
            root: root.to_path_buf(),
        };
        for dir in [store.blobs_dir(), store.tmp_dir(), store.leases_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        }
        let layout = root.join("oci-layout");
        match fs::read(&layout) {
            Ok(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid("oci-layout", layout.display(), e))?;
                let version = value["imageLayoutVersion"].as_str().unwrap_or("");
                if !version.starts_with("1.") {
                    return Err(invalid(
                        "oci-layout",
                        layout.display(),
                        format!("unsupported imageLayoutVersion `{version}`"),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                store.replace_file(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            }
            Err(e) => return Err(io_err("read", &layout)(e)),
        }
        if !store.index_path().exists() {
            let _lock = store.lock(true)?;
            if !store.index_path().exists() {
                store.write_index(&empty_index())?;
            }
        }
        lease::remove_stale(&store.tmp_dir())?;
        Ok(store)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a blob is (or would be) stored.
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Whether a blob is stored (not verified; see [`Store::fsck`]).
    pub fn has_blob(&self, digest: &Sha256Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Stores bytes as a blob; returns their digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Sha256Digest, CacheError> {
        let mut writer = self.blob_writer()?;
        io::Write::write_all(&mut writer, bytes).map_err(io_err("write", &self.tmp_dir()))?;
        Ok(writer.commit(None)?.0)
    }

    /// Streams a blob into the store, hashing as it goes; with `expected`, fails
    /// (storing nothing) unless the content has that digest. Returns digest and
    /// size.
    pub fn put_blob_from(
        &self,
        read: &mut dyn Read,
        expected: Option<&Sha256Digest>,
    ) -> Result<(Sha256Digest, u64), CacheError> {
        let mut writer = self.blob_writer()?;
        io::copy(read, &mut writer).map_err(io_err("write", &self.tmp_dir()))?;
        writer.commit(expected)
    }

    /// A writer for a new blob; see [`BlobWriter::commit`].
    pub fn blob_writer(&self) -> Result<BlobWriter, CacheError> {
        BlobWriter::create(&self.tmp_dir(), &self.blobs_dir())
    }

    /// Opens a blob for reading, verifying its digest at end of file.
    pub fn open_blob(&self, digest: &Sha256Digest) -> Result<VerifyingReader, CacheError> {
        let path = self.blob_path(digest);
        match File::open(&path) {
            Ok(file) => Ok(VerifyingReader::new(file, *digest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(CacheError::BlobNotFound { digest: *digest })
            }
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Reads a whole blob, verified against its digest.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>, CacheError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CacheError::BlobNotFound { digest: *digest })
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = sha256(&bytes);
        if actual != *digest {
            return Err(CacheError::DigestMismatch {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// The images in `index.json`, in its order. Entries whose digest is not
    /// sha256 are skipped.
    pub fn images(&self) -> Result<Vec<ImageRecord>, CacheError> {
        let index = self.read_index()?;
        let mut out = Vec::new();
        for descriptor in index.manifests() {
            let Ok(digest) = descriptor_digest(descriptor) else {
                continue;
            };
            let annotations = descriptor.annotations().as_ref();
            let name = annotations
                .and_then(|a| a.get(REF_NAME_ANNOTATION))
                .cloned();
            let reference = name
                .as_deref()
                .and_then(|n| Reference::parse(n).ok().filter(|r| r.to_string() == n));
            let created = annotations
                .and_then(|a| a.get(CREATED_ANNOTATION))
                .and_then(|c| time::parse_rfc3339(c));
            let repo_digest = annotations
                .and_then(|a| a.get(REPO_DIGEST_ANNOTATION))
                .and_then(|d| d.parse().ok());
            let mut record = ImageRecord {
                name,
                reference,
                manifest: descriptor.clone(),
                digest,
                id: None,
                created,
                repo_digest,
            };
            record.id = self.image_id(&record).ok();
            out.push(record);
        }
        Ok(out)
    }

    /// The image ID: the config digest of a manifest, the digest of an index.
    fn image_id(&self, record: &ImageRecord) -> Result<Sha256Digest, CacheError> {
        if record.is_index() {
            return Ok(record.digest);
        }
        descriptor_digest(self.manifest(record)?.config())
    }

    /// Tags a stored manifest (or index) as `reference`: adds an `index.json`
    /// entry with the full reference and the creation time (now if `None`),
    /// replacing the entry that had this reference. Fails if the manifest or a
    /// blob it references is missing, or if `reference` pins another digest.
    pub fn tag(
        &self,
        manifest: &Descriptor,
        reference: &Reference,
        created: Option<SystemTime>,
    ) -> Result<(), CacheError> {
        self.tag_with_repo_digest(manifest, reference, created, None)
    }

    /// [`Store::tag`] of an image a registry knows by `repo_digest` (pulled
    /// from an index: the index's digest), recorded in the entry
    /// ([`REPO_DIGEST_ANNOTATION`]); a digest pinned by `reference` must be
    /// the manifest's or `repo_digest`.
    pub fn tag_with_repo_digest(
        &self,
        manifest: &Descriptor,
        reference: &Reference,
        created: Option<SystemTime>,
        repo_digest: Option<Sha256Digest>,
    ) -> Result<(), CacheError> {
        let digest = descriptor_digest(manifest)?;
        if let Some(pinned) = reference.digest() {
            if *pinned != digest && Some(*pinned) != repo_digest {
                return Err(CacheError::InvalidReference {
                    text: reference.to_string(),
                    reason: "the reference pins another digest than the manifest being tagged",
                });
            }
        }
        self.check_complete(digest, manifest.media_type().as_ref())?;
        let name = reference.stored_name();
        let mut entry = manifest.clone();
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME_ANNOTATION.to_string(), name.clone());
        annotations.insert(
            CREATED_ANNOTATION.to_string(),
            time::format_rfc3339(created.unwrap_or_else(SystemTime::now)),
        );
        annotations.remove(REPO_DIGEST_ANNOTATION);
        if let Some(repo) = repo_digest.filter(|d| *d != digest) {
            annotations.insert(REPO_DIGEST_ANNOTATION.to_string(), repo.to_string());
        }
        entry.set_annotations(Some(annotations));
        self.update_index(|manifests| {
            manifests.retain(|d| ref_name(d) != Some(name.as_str()));
            manifests.push(entry);
            Ok(())
        })
    }

    /// Removes the entry tagged `reference`; `false` if there was none. Blobs
    /// stay until [`Store::prune`].
    pub fn untag(&self, reference: &Reference) -> Result<bool, CacheError> {
        let name = reference.stored_name();
        self.update_index(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| ref_name(d) != Some(name.as_str()));
            Ok(manifests.len() != before)
        })
    }

    /// Removes every entry (every tag) of a manifest; returns how many.
    pub fn remove_manifest(&self, digest: &Sha256Digest) -> Result<usize, CacheError> {
        self.update_index(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| descriptor_digest(d).ok() != Some(*digest));
            Ok(before - manifests.len())
        })
    }

    /// Finds an image the way docker does: by full digest (`sha256:…`, manifest
    /// digest or image ID), by name (`ubuntu`, `docker.io/library/ubuntu:latest`,
    /// `ubuntu@sha256:…`), or by a prefix (≥ 1 hex digit, optionally after
    /// `sha256:`) of the image ID. A prefix matching several IDs is an error
    /// listing them.
    pub fn resolve(&self, query: &str) -> Result<ImageRecord, CacheError> {
        let images = self.images()?;
        let not_found = || CacheError::ImageNotFound {
            query: query.to_string(),
        };
        if let Ok(digest) = query.parse::<Sha256Digest>() {
            return images
                .iter()
                .find(|r| r.digest == digest)
                .or_else(|| images.iter().find(|r| r.id == Some(digest)))
                .or_else(|| images.iter().find(|r| r.repo_digest == Some(digest)))
                .cloned()
                .ok_or_else(not_found);
        }
        if let Ok(reference) = Reference::parse(query) {
            let found = match reference.digest() {
                // The manifest's digest, or the one it was pulled by (an
                // index's), this name's entry first.
                Some(digest) => {
                    let known_as =
                        |r: &&ImageRecord| r.digest == *digest || r.repo_digest == Some(*digest);
                    images
                        .iter()
                        .filter(known_as)
                        .find(|r| {
                            r.reference
                                .as_ref()
                                .is_some_and(|n| n.name() == reference.name())
                        })
                        .or_else(|| images.iter().find(known_as))
                }
                None => {
                    let name = reference.tagged_name();
                    images
                        .iter()
                        .find(|r| r.name.as_deref() == Some(name.as_str()))
                }
            };
            if let Some(found) = found {
                return Ok(found.clone());
            }
        }
        let Some(prefix) = id_prefix(query) else {
            return Err(not_found());
        };
        let matching: Vec<&ImageRecord> = images
            .iter()
            .filter(|r| r.id.is_some_and(|id| id.hex().starts_with(prefix)))
            .collect();
        let mut ids: Vec<Sha256Digest> = matching.iter().filter_map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        match ids.len() {
            0 => Err(not_found()),
            1 => Ok(matching[0].clone()),
            _ => {
                let candidates = ids
                    .iter()
                    .map(|id| {
                        let names: Vec<String> = matching
                            .iter()
                            .filter(|r| r.id == Some(*id))
                            .filter_map(|r| r.familiar_name())
                            .collect();
                        format!("{} ({})", id.short(), names.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(CacheError::AmbiguousImage {
                    prefix: query.to_string(),
                    candidates,
                })
            }
        }
    }

    /// The image manifest of an entry (docker schema2 manifests parse too: only
    /// their media type strings differ). Fails for a multi-platform index.
    pub fn manifest(&self, record: &ImageRecord) -> Result<ImageManifest, CacheError> {
        if record.is_index() {
            return Err(invalid(
                "manifest",
                record.digest,
                "it is a multi-platform index; pick a platform's manifest from it",
            ));
        }
        self.manifest_by_digest(&record.digest)
    }

    /// An image manifest stored as a blob.
    pub fn manifest_by_digest(&self, digest: &Sha256Digest) -> Result<ImageManifest, CacheError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| invalid("manifest", digest, e))
    }

    /// An image index (or docker manifest list) stored as a blob.
    pub fn index_by_digest(&self, digest: &Sha256Digest) -> Result<ImageIndex, CacheError> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes).map_err(|e| invalid("image index", digest, e))
    }

    /// The image configuration a manifest references.
    pub fn config(&self, manifest: &ImageManifest) -> Result<ImageConfiguration, CacheError> {
        let digest = descriptor_digest(manifest.config())?;
        let bytes = self.read_blob(&digest)?;
        serde_json::from_slice(&bytes).map_err(|e| invalid("image config", digest, e))
    }

    /// The layer snapshots (overlayfs lower dirs) under `forge/v1/snapshots`;
    /// see [`crate::snapshot`].
    pub fn snapshots(&self) -> crate::snapshot::Snapshots {
        crate::snapshot::Snapshots::new(self)
    }

    /// Protects blobs from [`Store::prune`] while the returned lease lives.
    pub fn lease(&self, digests: &[Sha256Digest]) -> Result<Lease, CacheError> {
        Lease::create(self, digests)
    }

    // --- paths and index plumbing -------------------------------------------

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub(crate) fn forge_dir(&self) -> PathBuf {
        self.root.join("forge").join("v1")
    }

    /// The store's temp directory (`forge/v1/tmp`), on the same file system as
    /// the blobs and snapshots, so what is made there can be renamed into place.
    /// Name what you create there with [`Store::temp_name`]: entries of dead
    /// processes are cleaned up by name.
    pub fn tmp_dir(&self) -> PathBuf {
        self.forge_dir().join("tmp")
    }

    /// A fresh name for a temp file or directory in [`Store::tmp_dir`] that
    /// encodes this process (so it is recognized as stale once we are gone).
    pub fn temp_name(kind: &str) -> String {
        lease::temp_name(kind)
    }

    pub(crate) fn leases_dir(&self) -> PathBuf {
        self.forge_dir().join("leases")
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.forge_dir().join("lock")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    pub(crate) fn lock(&self, exclusive: bool) -> Result<File, CacheError> {
        lock_file(&self.lock_path(), exclusive)
    }

    pub(crate) fn read_index(&self) -> Result<ImageIndex, CacheError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| invalid("image index", path.display(), e))
    }

    /// Writes `index.json` atomically. Callers hold the exclusive lock.
    fn write_index(&self, index: &ImageIndex) -> Result<(), CacheError> {
        let path = self.index_path();
        let json = serde_json::to_vec_pretty(index)
            .map_err(|e| invalid("image index", path.display(), e))?;
        self.replace_file(&path, &json)
    }

    /// Replaces a file atomically: temp in `forge/v1/tmp`, fsync, rename, fsync
    /// the directory.
    pub(crate) fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
        let tmp = self.tmp_dir().join(lease::temp_name("file"));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err("create", &tmp))?;
            io::Write::write_all(&mut file, bytes).map_err(io_err("write", &tmp))?;
            file.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, path).map_err(io_err("rename into place", path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        sync_dir(path.parent().unwrap_or(&self.root))
    }

    /// Read-modify-write of the entries of `index.json` under the exclusive
    /// lock.
    pub(crate) fn update_index<T>(
        &self,
        change: impl FnOnce(&mut Vec<Descriptor>) -> Result<T, CacheError>,
    ) -> Result<T, CacheError> {
        let _lock = self.lock(true)?;
        let mut index = self.read_index()?;
        let mut manifests = index.manifests().clone();
        let out = change(&mut manifests)?;
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(out)
    }

    /// Checks that a manifest and everything it references are stored (by
    /// presence; contents are verified by fsck and on read).
    fn check_complete(&self, root: Sha256Digest, media_type: &str) -> Result<(), CacheError> {
        let mut stack = vec![(root, Some(media_type.to_string()))];
        while let Some((digest, media_type)) = stack.pop() {
            if !self.has_blob(&digest) {
                return Err(CacheError::IncompleteImage {
                    digest: root,
                    missing: digest,
                });
            }
            if media_type.as_deref().is_some_and(is_manifest_type) {
                let bytes = self.read_blob(&digest)?;
                for child in children(&bytes) {
                    let child_digest: Sha256Digest = child.digest.parse()?;
                    stack.push((child_digest, child.media_type));
                }
            }
        }
        Ok(())
    }
}

fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(Vec::new());
    index
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

pub(crate) fn is_manifest_type(media_type: &str) -> bool {
    MANIFEST_TYPES.contains(&media_type)
}

/// A blob a manifest or index references.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) digest: String,
    pub(crate) media_type: Option<String>,
    pub(crate) size: Option<u64>,
}

/// The blobs a manifest, index or docker manifest list references: config,
/// layers, child manifests (and an artifact manifest's blobs). Tolerant: reads
/// the JSON generically, so unknown media types and extra fields do not matter.
pub(crate) fn children(bytes: &[u8]) -> Vec<Child> {
    let Ok(serde_json::Value::Object(doc)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut add = |d: &serde_json::Value| {
        if let Some(digest) = d.get("digest").and_then(|v| v.as_str()) {
            out.push(Child {
                digest: digest.to_string(),
                media_type: d
                    .get("mediaType")
                    .and_then(|v| v.as_str())
                    .map(String::from),
                size: d.get("size").and_then(|v| v.as_u64()),
            });
        }
    };
    if let Some(config) = doc.get("config") {
        add(config);
    }
    for key in ["layers", "manifests", "blobs"] {
        if let Some(list) = doc.get(key).and_then(|v| v.as_array()) {
            list.iter().for_each(&mut add);
        }
    }
    out
}
