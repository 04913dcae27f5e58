//! Image archives: `forge save` and `forge load`.
//!
//! Two formats, both plain (uncompressed) tar files with fixed timestamps and
//! owners, so saving the same images twice gives the same bytes:
//!
//! - **docker** (`docker save`'s classic format, read by `docker load` of every
//!   version and by `skopeo docker-archive:`): `manifest.json` naming, per image,
//!   its config (`<hex>.json`) and its layers as uncompressed tars
//!   (`<diff_id hex>/layer.tar`), plus the legacy `repositories` file.
//! - **oci**: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`)
//!   with the blobs exactly as stored. Each manifest's descriptor carries the tag in
//!   `org.opencontainers.image.ref.name` (what umoci and oci-image-tool address) and
//!   the full name in `io.containerd.image.name` (what docker and containerd read).
//!
//! `load` reads either (it looks for `index.json` or `manifest.json`), verifies
//! every blob against its digest (and every docker-archive layer against the
//! config's `diff_ids`), and tags the images. Only regular files and directories
//! are taken from the archive, at paths that stay inside it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::image::{put_manifest, LayerRef};
use crate::layer::{self, LayerOptions};
use crate::reference::Reference;
use crate::store::{ImageRecord, Store};
use crate::{CacheError, Sha256Digest};

/// Which archive format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`'s format.
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

/// One image to save, with the names to record for it.
#[derive(Debug, Clone)]
pub struct SaveItem {
    /// The image.
    pub record: ImageRecord,
    /// Names to give it in the archive (empty: unnamed).
    pub names: Vec<Reference>,
}

fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.into();
    move |error| CacheError::Io {
        action,
        path,
        error,
    }
}

fn bad_archive(name: &str, reason: impl Into<String>) -> CacheError {
    CacheError::InvalidArchive {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn header(path: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(if dir { 0 } else { size });
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    // Paths here are short ASCII names made by forge; set_path cannot fail on them.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

struct TarOut<'a> {
    builder: tar::Builder<&'a mut dyn Write>,
    dirs: BTreeSet<String>,
}

impl<'a> TarOut<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Self {
            builder: tar::Builder::new(out),
            dirs: BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str) -> Result<(), CacheError> {
        if self.dirs.insert(path.to_string()) {
            let h = header(path, 0, true);
            self.builder
                .append(&h, std::io::empty())
                .map_err(io_err("write the archive entry", path))?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> Result<(), CacheError> {
        let h = header(path, size, false);
        self.builder
            .append(&h, data)
            .map_err(io_err("write the archive entry", path))
    }

    fn bytes(&mut self, path: &str, data: &[u8]) -> Result<(), CacheError> {
        self.file(path, data.len() as u64, &mut &data[..])
    }

    fn finish(mut self) -> Result<(), CacheError> {
        self.builder
            .finish()
            .map_err(io_err("finish", "the archive"))
    }
}

fn parse_digest(d: &Digest) -> Result<Sha256Digest, CacheError> {
    d.to_string().parse()
}

/// The `rootfs.diff_ids` of an image config.
fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `items` to `out` as an archive of `format`.
///
/// # Errors
/// A blob missing or not matching its digest, a multi-platform index (not
/// supported yet), or a write failure.
pub fn save(
    store: &Store,
    items: &[SaveItem],
    format: ArchiveFormat,
    out: &mut dyn Write,
) -> Result<(), CacheError> {
    match format {
        ArchiveFormat::Oci => save_oci(store, items, out),
        ArchiveFormat::Docker => save_docker(store, items, out),
    }
}

fn save_oci(store: &Store, items: &[SaveItem], out: &mut dyn Write) -> Result<(), CacheError> {
    let mut tar = TarOut::new(out);
    tar.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut written = BTreeSet::new();
    let mut entries = Vec::new();
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    for item in items {
        let manifest = store.manifest(&item.record)?;
        let mut blobs = vec![(item.record.digest, item.record.manifest.size())];
        blobs.push((
            parse_digest(manifest.config().digest())?,
            manifest.config().size(),
        ));
        for l in manifest.layers() {
            blobs.push((parse_digest(l.digest())?, l.size()));
        }
        for (digest, size) in blobs {
            if written.insert(digest) {
                let mut reader = store.open_blob(&digest)?;
                tar.file(&format!("blobs/sha256/{}", digest.hex()), size, &mut reader)?;
            }
        }
        let names: Vec<Option<&Reference>> = if item.names.is_empty() {
            vec![None]
        } else {
            item.names.iter().map(Some).collect()
        };
        for name in names {
            let mut desc = json!({
                "mediaType": item.record.manifest.media_type().to_string(),
                "digest": item.record.digest.to_string(),
                "size": item.record.manifest.size(),
            });
            if let Some(r) = name {
                desc["annotations"] = json!({
                    "io.containerd.image.name": r.tagged_name(),
                    "org.opencontainers.image.ref.name": r.tag_or_latest(),
                });
            }
            entries.push(desc);
        }
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let bytes = serde_json::to_vec(&index).map_err(|e| bad_archive("index.json", e.to_string()))?;
    tar.bytes("index.json", &bytes)?;
    tar.finish()
}

fn save_docker(store: &Store, items: &[SaveItem], out: &mut dyn Write) -> Result<(), CacheError> {
    let scratch = tempfile::tempdir().map_err(io_err("create a temp dir", std::env::temp_dir()))?;
    let mut tar = TarOut::new(out);
    let mut written = BTreeSet::new();
    let mut manifest_json = Vec::new();
    let mut repositories = serde_json::Map::new();
    for item in items {
        let manifest = store.manifest(&item.record)?;
        let config_digest = parse_digest(manifest.config().digest())?;
        let config_bytes = store.read_blob(&config_digest)?;
        let config: Value = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad_archive(&config_digest.to_string(), e.to_string()))?;
        let diff_ids = diff_ids(&config);
        if diff_ids.len() != manifest.layers().len() {
            return Err(bad_archive(
                &config_digest.to_string(),
                "the config's diff_ids do not match the manifest's layers",
            ));
        }
        let config_name = format!("{}.json", config_digest.hex());
        if written.insert(config_name.clone()) {
            tar.bytes(&config_name, &config_bytes)?;
        }
        let mut layer_names = Vec::new();
        for (layer, diff_id) in manifest.layers().iter().zip(&diff_ids) {
            let diff_id: Sha256Digest = diff_id.parse()?;
            let dir = diff_id.hex();
            let name = format!("{dir}/layer.tar");
            if written.insert(name.clone()) {
                // Docker archives carry layers uncompressed: decompress to a temp
                // file first, since a tar entry needs its size up front.
                let blob = store.open_blob(&parse_digest(layer.digest())?)?;
                let mut plain = layer::decompress(blob)?;
                let temp = scratch.path().join(&dir);
                let mut file = File::create(&temp).map_err(io_err("create", &temp))?;
                let mut hashing = HashingWriter {
                    inner: &mut file,
                    hasher: Sha256::new(),
                };
                std::io::copy(&mut plain, &mut hashing)
                    .map_err(io_err("decompress into", &temp))?;
                let actual = Sha256Digest::from_bytes(hashing.hasher.finalize().into());
                if actual != diff_id {
                    return Err(CacheError::DigestMismatch {
                        digest: diff_id,
                        actual,
                    });
                }
                drop(file);
                let size = std::fs::metadata(&temp)
                    .map_err(io_err("stat", &temp))?
                    .len();
                let mut f = File::open(&temp).map_err(io_err("open", &temp))?;
                tar.dir(&format!("{dir}/"))?;
                tar.file(&name, size, &mut f)?;
                let _ = std::fs::remove_file(&temp);
            }
            layer_names.push(name);
        }
        let tags: Vec<String> = item.names.iter().map(Reference::familiar).collect();
        for r in &item.names {
            let repo = repositories
                .entry(r.repository_familiar())
                .or_insert_with(|| json!({}));
            if let Some(last) = diff_ids.last() {
                repo[r.tag_or_latest()] = json!(last.trim_start_matches("sha256:"));
            }
        }
        manifest_json.push(json!({
            "Config": config_name,
            "RepoTags": if tags.is_empty() { Value::Null } else { json!(tags) },
            "Layers": layer_names,
        }));
    }
    let bytes = serde_json::to_vec(&manifest_json)
        .map_err(|e| bad_archive("manifest.json", e.to_string()))?;
    tar.bytes("manifest.json", &bytes)?;
    let bytes = serde_json::to_vec(&Value::Object(repositories))
        .map_err(|e| bad_archive("repositories", e.to_string()))?;
    tar.bytes("repositories", &bytes)?;
    tar.finish()
}

/// What [`load`] made.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The image ID (config digest).
    pub id: Sha256Digest,
    /// The names it was tagged with.
    pub names: Vec<Reference>,
}

/// A path inside the archive, refused when it could leave the extraction directory.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Reads an archive written by `forge save` or `docker save` (either format) and
/// stores and tags its images.
///
/// # Errors
/// A malformed archive, an entry escaping the archive, a blob not matching its
/// digest, or an image with no name.
pub fn load(store: &Store, input: &mut dyn Read) -> Result<Vec<Loaded>, CacheError> {
    let dir = tempfile::tempdir().map_err(io_err("create a temp dir", std::env::temp_dir()))?;
    let mut archive = tar::Archive::new(input);
    let entries = archive.entries().map_err(io_err("read", "the archive"))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("read", "the archive"))?;
        let raw = entry
            .path()
            .map_err(io_err("read an entry of", "the archive"))?
            .into_owned();
        let kind = entry.header().entry_type();
        let Some(rel) = safe_relative(&raw) else {
            if raw.components().all(|c| matches!(c, Component::CurDir)) {
                continue;
            }
            return Err(bad_archive(
                &raw.display().to_string(),
                "the entry's path leaves the archive",
            ));
        };
        let target = dir.path().join(&rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io_err("create", &target))?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            let mut f = File::create(&target).map_err(io_err("create", &target))?;
            std::io::copy(&mut entry, &mut f).map_err(io_err("write", &target))?;
        }
        // Links and special files have no place in an image archive: skipped.
    }
    let root = dir.path();
    if root.join("index.json").is_file() {
        load_oci(store, root)
    } else if root.join("manifest.json").is_file() {
        load_docker(store, root)
    } else {
        Err(bad_archive(
            "the archive",
            "it has neither index.json (OCI) nor manifest.json (docker)",
        ))
    }
}

fn read_json(path: &Path) -> Result<Value, CacheError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| bad_archive(&path.display().to_string(), e.to_string()))
}

fn put_file(
    store: &Store,
    path: &Path,
    expected: Option<&Sha256Digest>,
) -> Result<(Sha256Digest, u64), CacheError> {
    let mut f = File::open(path).map_err(|_| {
        bad_archive(
            &path.display().to_string(),
            "a blob the archive refers to is missing",
        )
    })?;
    store.put_blob_from(&mut f, expected)
}

fn load_oci(store: &Store, root: &Path) -> Result<Vec<Loaded>, CacheError> {
    let index = read_json(&root.join("index.json"))?;
    let mut loaded = Vec::new();
    for desc in index["manifests"].as_array().into_iter().flatten() {
        let digest: Sha256Digest = desc["digest"].as_str().unwrap_or_default().parse()?;
        let blob = |d: &Sha256Digest| root.join("blobs/sha256").join(d.hex());
        let manifest: Value = read_json(&blob(&digest))?;
        let mut parts = vec![manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string()];
        for l in manifest["layers"].as_array().into_iter().flatten() {
            parts.push(l["digest"].as_str().unwrap_or_default().to_string());
        }
        for part in parts {
            let d: Sha256Digest = part.parse()?;
            put_file(store, &blob(&d), Some(&d))?;
        }
        let (_, size) = put_file(store, &blob(&digest), Some(&digest))?;
        let annotations = &desc["annotations"];
        let name = annotations["io.containerd.image.name"]
            .as_str()
            .or_else(|| annotations["org.opencontainers.image.ref.name"].as_str());
        let reference = match name.map(Reference::parse) {
            Some(Ok(r)) if name.is_some_and(|n| n.contains('/') || n.contains(':')) => r,
            _ => {
                return Err(bad_archive(
                    &digest.to_string(),
                    "the image has no full name (io.containerd.image.name) to load it under",
                ))
            }
        };
        let media = desc["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let descriptor = Descriptor::new(
            MediaType::from(media),
            size,
            Digest::from_str(&digest.to_string())
                .map_err(|_| bad_archive(&digest.to_string(), "bad digest"))?,
        );
        store.tag(&descriptor, &reference, Some(SystemTime::now()))?;
        let id: Sha256Digest = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        match loaded.iter_mut().find(|l: &&mut Loaded| l.id == id) {
            Some(l) => l.names.push(reference),
            None => loaded.push(Loaded {
                id,
                names: vec![reference],
            }),
        }
    }
    Ok(loaded)
}

fn load_docker(store: &Store, root: &Path) -> Result<Vec<Loaded>, CacheError> {
    let manifest = read_json(&root.join("manifest.json"))?;
    let mut loaded = Vec::new();
    for item in manifest.as_array().into_iter().flatten() {
        let config_name = item["Config"].as_str().unwrap_or_default();
        let config_path = root.join(
            safe_relative(Path::new(config_name))
                .ok_or_else(|| bad_archive(config_name, "the config path leaves the archive"))?,
        );
        let (config_digest, config_size) = put_file(store, &config_path, None)?;
        let config = read_json(&config_path)?;
        let diff_ids = diff_ids(&config);
        let layers: Vec<&str> = item["Layers"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if layers.len() != diff_ids.len() {
            return Err(bad_archive(
                config_name,
                "the number of layers does not match the config's diff_ids",
            ));
        }
        let mut layer_descs = Vec::new();
        for (layer, diff_id) in layers.iter().zip(&diff_ids) {
            let path = root.join(
                safe_relative(Path::new(layer))
                    .ok_or_else(|| bad_archive(layer, "the layer path leaves the archive"))?,
            );
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let mut plain = layer::decompress(file)?;
            let mut writer = store.blob_writer()?;
            let info = layer::compress_tar(&mut plain, &LayerOptions::from_env(), &mut writer)?;
            if info.diff_id.to_string() != *diff_id {
                return Err(CacheError::DigestMismatch {
                    digest: diff_id.parse()?,
                    actual: info.diff_id,
                });
            }
            let (digest, size) = writer.commit(Some(&info.digest))?;
            layer_descs.push(LayerRef {
                media_type: info.media_type.to_string(),
                digest,
                size,
            });
        }
        let descriptor = put_manifest(store, &config_digest, config_size, &layer_descs)?;
        let mut names = Vec::new();
        for tag in item["RepoTags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let r = Reference::parse(tag)?;
            store.tag(&descriptor, &r, Some(SystemTime::now()))?;
            names.push(r);
        }
        if names.is_empty() {
            return Err(bad_archive(
                config_name,
                "the image has no RepoTags to load it under",
            ));
        }
        loaded.push(Loaded {
            id: config_digest,
            names,
        });
    }
    Ok(loaded)
}
