//! Pulling images into the store and pushing them from it.
//!
//! A pull stores the manifest (and the index it came from) byte for byte,
//! downloads the blobs the store lacks in parallel, each streamed into a
//! store temp file whose digest is checked before it is renamed into place
//! (so a broken download leaves nothing referenced), and tags the image last,
//! recording the digest it was pulled by. A push checks each blob with a
//! `HEAD` first, mounts it from another repository of the same registry
//! where the store knows one that has it, uploads the rest in parallel, and
//! puts the manifest last, so the registry never holds a manifest whose
//! blobs are missing. Every request of a push asks for the repository's
//! push scope (a mount also for reading the other repository; refused, the
//! blob is uploaded instead), so a push needs one token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use forge_cache::reference::Reference;
use forge_cache::store::{ImageRecord, Store};
use forge_cache::{CacheError, Sha256Digest};
use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::Value;

use crate::auth::Scope;
use crate::{Registry, RegistryError, Upload};

/// An image platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `v8`, `v7`, ...
    pub variant: Option<String>,
}

impl Platform {
    /// This machine's platform, in Go's names (`x86_64` is `amd64`).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Self {
                    os: (*os).into(),
                    architecture: (*arch).into(),
                    variant: Some((*variant).into()),
                })
            }
            _ => Err(format!(
                "`{text}` is not a platform (os/arch[/variant], e.g. linux/amd64)"
            )),
        }
    }

    fn matches(&self, platform: &Value) -> bool {
        platform["os"].as_str() == Some(self.os.as_str())
            && platform["architecture"].as_str() == Some(self.architecture.as_str())
            && match &self.variant {
                Some(v) => platform["variant"].as_str() == Some(v.as_str()),
                None => true,
            }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What happened to one blob of a pull or push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobEvent {
    /// The store (pull) or the registry (push) already has it.
    Exists(Sha256Digest),
    /// Bytes moved so far, of the blob's size.
    Progress {
        /// The blob.
        digest: Sha256Digest,
        /// Bytes moved.
        done: u64,
        /// Its size.
        total: u64,
    },
    /// Moved completely (downloaded and stored, or uploaded).
    Done(Sha256Digest),
    /// The registry mounted it from another of its repositories.
    Mounted {
        /// The blob.
        digest: Sha256Digest,
        /// The repository it came from.
        from: String,
    },
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The name it is stored under (the reference pulled).
    pub reference: Reference,
    /// The digest the registry knows it by (an index's, for a multi-platform
    /// image).
    pub repo_digest: Sha256Digest,
    /// The stored (single-platform) manifest's digest.
    pub manifest_digest: Sha256Digest,
    /// The image ID (its config's digest).
    pub image_id: Sha256Digest,
    /// How many blobs were downloaded (0: the store had them all).
    pub downloaded: usize,
    /// Whether the name now points at another image than before (by
    /// digest: whether any blob had to be downloaded).
    pub changed: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest in the registry.
    pub digest: Sha256Digest,
    /// The manifest's size.
    pub size: u64,
    /// Blobs uploaded (not there, not mounted).
    pub uploaded: usize,
}

fn protocol(url: String, reason: impl Into<String>) -> RegistryError {
    RegistryError::Protocol {
        url,
        reason: reason.into(),
    }
}

/// A descriptor of a manifest's JSON: digest and size.
fn descriptor_of(value: &Value, what: &str) -> Result<(Sha256Digest, u64), String> {
    let digest = value["digest"]
        .as_str()
        .ok_or_else(|| format!("{what} has no digest"))?
        .parse::<Sha256Digest>()
        .map_err(|e| format!("{what}: {e}"))?;
    let size = value["size"]
        .as_u64()
        .ok_or_else(|| format!("{what} has no size"))?;
    Ok((digest, size))
}

/// The config and layer blobs of an image manifest.
fn manifest_blobs(bytes: &[u8]) -> Result<Vec<(Sha256Digest, u64)>, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let mut blobs = vec![descriptor_of(&value["config"], "the config")?];
    for (i, layer) in value["layers"]
        .as_array()
        .ok_or("the manifest has no layers")?
        .iter()
        .enumerate()
    {
        blobs.push(descriptor_of(layer, &format!("layer {i}"))?);
    }
    Ok(blobs)
}

fn is_index_type(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// Runs `work` on each item with at most `jobs` threads; the first error.
fn parallel<T: Sync>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> Result<(), RegistryError> + Sync,
) -> Result<(), RegistryError> {
    let next = AtomicUsize::new(0);
    let first_error = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if let Err(e) = work(item) {
                    let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    // Stop taking new items.
                    next.store(items.len(), Ordering::SeqCst);
                    break;
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Pulls `reference` into `store` (see the module documentation): from an
/// index, the image for `platform`. `jobs` blobs download at once;
/// `progress` hears about each blob.
pub fn pull(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    platform: &Platform,
    jobs: usize,
    progress: &(dyn Fn(BlobEvent) + Sync),
) -> Result<Pulled, RegistryError> {
    let (host, repo) = (reference.registry(), reference.repository());
    let wanted = match reference.digest() {
        Some(d) => d.to_string(),
        None => reference.tag_or_latest().to_string(),
    };
    let top = registry.get_manifest(host, repo, &wanted)?;
    store.put_blob(&top.bytes)?;
    let manifest = if is_index_type(&top.media_type) {
        let index: Value = serde_json::from_slice(&top.bytes)
            .map_err(|e| protocol(reference.to_string(), format!("the index is not JSON: {e}")))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|m| platform.matches(&m["platform"]))
            .ok_or_else(|| RegistryError::NoPlatform {
                reference: reference.to_string(),
                wanted: platform.to_string(),
                available: entries
                    .iter()
                    .map(|m| {
                        let p = &m["platform"];
                        let mut s = format!(
                            "{}/{}",
                            p["os"].as_str().unwrap_or("?"),
                            p["architecture"].as_str().unwrap_or("?")
                        );
                        if let Some(v) = p["variant"].as_str() {
                            s.push('/');
                            s.push_str(v);
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let (digest, _) = descriptor_of(chosen, "the index entry")
            .map_err(|e| protocol(reference.to_string(), e))?;
        let child = registry.get_manifest(host, repo, &digest.to_string())?;
        store.put_blob(&child.bytes)?;
        child
    } else {
        top.clone()
    };
    if is_index_type(&manifest.media_type) {
        return Err(protocol(
            reference.to_string(),
            "an index inside an index is not supported",
        ));
    }
    let blobs = manifest_blobs(&manifest.bytes).map_err(|e| protocol(reference.to_string(), e))?;
    let missing: Vec<(Sha256Digest, u64)> = blobs
        .iter()
        .copied()
        .filter(|(digest, _)| {
            let have = store.has_blob(digest);
            if have {
                progress(BlobEvent::Exists(*digest));
            }
            !have
        })
        .collect();
    parallel(&missing, jobs, |(digest, size)| {
        let mut writer = store.blob_writer()?;
        let report = |done| {
            progress(BlobEvent::Progress {
                digest: *digest,
                done,
                total: *size,
            })
        };
        registry.fetch_blob(host, repo, digest, Some(*size), &mut writer, &report)?;
        match writer.commit(Some(digest)) {
            Ok(_) => {}
            Err(CacheError::DigestMismatch { digest, actual }) => {
                return Err(RegistryError::DigestMismatch {
                    what: "blob",
                    url: format!("{}/v2/{repo}/blobs/{digest}", registry.base_url(host)),
                    expected: digest,
                    actual,
                })
            }
            Err(e) => return Err(e.into()),
        }
        progress(BlobEvent::Done(*digest));
        Ok(())
    })?;
    let before = store
        .images()?
        .into_iter()
        .find(|r| r.reference.as_ref() == Some(reference))
        .map(|r| r.digest);
    let digest = Digest::try_from(manifest.digest.to_string())
        .map_err(|e| protocol(reference.to_string(), e.to_string()))?;
    let descriptor = Descriptor::new(
        MediaType::from(manifest.media_type.as_str()),
        manifest.bytes.len() as u64,
        digest,
    );
    store.tag_with_repo_digest(&descriptor, reference, None, Some(top.digest))?;
    Ok(Pulled {
        reference: reference.clone(),
        repo_digest: top.digest,
        manifest_digest: manifest.digest,
        image_id: blobs[0].0,
        downloaded: missing.len(),
        // A digest names its content: it is new only if something came.
        changed: if reference.digest().is_some() {
            !missing.is_empty()
        } else {
            before != Some(manifest.digest)
        },
    })
}

/// A repository of `registry` other than `repository` whose image in the
/// store uses `digest`: where the registry may mount the blob from.
fn mount_source(
    store: &Store,
    images: &[ImageRecord],
    registry: &str,
    repository: &str,
    digest: &Sha256Digest,
) -> Option<String> {
    images.iter().find_map(|record| {
        let r = record.reference.as_ref()?;
        if r.registry() != registry || r.repository() == repository || record.is_index() {
            return None;
        }
        let bytes = store.read_blob(&record.digest).ok()?;
        let blobs = manifest_blobs(&bytes).ok()?;
        blobs
            .iter()
            .any(|(d, _)| d == digest)
            .then(|| r.repository().to_string())
    })
}

/// Pushes the blobs of one manifest, then the manifest as `reference_text`
/// (a tag or its digest).
#[allow(clippy::too_many_arguments)]
fn push_manifest(
    store: &Store,
    registry: &Registry,
    target: &Reference,
    bytes: &[u8],
    media_type: &str,
    reference_text: &str,
    jobs: usize,
    progress: &(dyn Fn(BlobEvent) + Sync),
) -> Result<(Sha256Digest, usize), RegistryError> {
    let (host, repo) = (target.registry(), target.repository());
    let blobs = manifest_blobs(bytes).map_err(|e| protocol(target.to_string(), e))?;
    let images = store.images()?;
    let uploaded = AtomicUsize::new(0);
    let push_scope = Scope::push(repo);
    parallel(&blobs, jobs, |(digest, size)| {
        if registry.blob_exists(host, repo, digest, &push_scope)? {
            progress(BlobEvent::Exists(*digest));
            return Ok(());
        }
        let mut from = mount_source(store, &images, host, repo, digest);
        let started = match registry.start_upload(host, repo, digest, from.as_deref()) {
            // No read access to the other repository: upload instead.
            Err(
                RegistryError::AuthRefused { .. }
                | RegistryError::AuthRequired { .. }
                | RegistryError::Status {
                    status: 401 | 403, ..
                },
            ) if from.is_some() => {
                from = None;
                registry.start_upload(host, repo, digest, None)?
            }
            other => other?,
        };
        let session = match started {
            Upload::Mounted => {
                progress(BlobEvent::Mounted {
                    digest: *digest,
                    from: from.unwrap_or_default(),
                });
                return Ok(());
            }
            Upload::Session(url) => url,
        };
        // Read from any offset (an interrupted upload resumes); the registry
        // checks the digest of what it got when the upload closes.
        let path = store.blob_path(digest);
        let source = |offset: u64| -> std::io::Result<Box<dyn std::io::Read>> {
            use std::io::Seek;
            let mut file = std::fs::File::open(&path)?;
            file.seek(std::io::SeekFrom::Start(offset))?;
            Ok(Box::new(file))
        };
        let report = |done| {
            progress(BlobEvent::Progress {
                digest: *digest,
                done,
                total: *size,
            })
        };
        registry.upload(host, repo, &session, digest, *size, &source, &report)?;
        uploaded.fetch_add(1, Ordering::SeqCst);
        progress(BlobEvent::Done(*digest));
        Ok(())
    })?;
    let digest = registry.put_manifest(host, repo, reference_text, media_type, bytes)?;
    Ok((digest, uploaded.into_inner()))
}

/// Pushes the stored image `record` as `target` (see the module
/// documentation); an index goes up with each of its manifests first.
pub fn push(
    store: &Store,
    registry: &Registry,
    record: &ImageRecord,
    target: &Reference,
    jobs: usize,
    progress: &(dyn Fn(BlobEvent) + Sync),
) -> Result<Pushed, RegistryError> {
    let bytes = store.read_blob(&record.digest)?;
    let media_type = record.manifest.media_type().to_string();
    let reference_text = match target.digest() {
        Some(d) => d.to_string(),
        None => target.tag_or_latest().to_string(),
    };
    if !is_index_type(&media_type) {
        let (digest, uploaded) = push_manifest(
            store,
            registry,
            target,
            &bytes,
            &media_type,
            &reference_text,
            jobs,
            progress,
        )?;
        return Ok(Pushed {
            digest,
            size: bytes.len() as u64,
            uploaded,
        });
    }
    let index: Value = serde_json::from_slice(&bytes)
        .map_err(|e| protocol(target.to_string(), format!("the index is not JSON: {e}")))?;
    let mut uploaded = 0;
    for entry in index["manifests"].as_array().cloned().unwrap_or_default() {
        let (digest, _) =
            descriptor_of(&entry, "an index entry").map_err(|e| protocol(target.to_string(), e))?;
        if !store.has_blob(&digest) {
            // Pulled for one platform: the others' manifests are not here.
            continue;
        }
        let child = store.read_blob(&digest)?;
        let child_type = entry["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json");
        let children_blobs_here = manifest_blobs(&child)
            .map(|b| b.iter().all(|(d, _)| store.has_blob(d)))
            .unwrap_or(false);
        if !children_blobs_here {
            continue;
        }
        uploaded += push_manifest(
            store,
            registry,
            target,
            &child,
            child_type,
            &digest.to_string(),
            jobs,
            progress,
        )?
        .1;
    }
    let digest = registry.put_manifest(
        target.registry(),
        target.repository(),
        &reference_text,
        &media_type,
        &bytes,
    )?;
    Ok(Pushed {
        digest,
        size: bytes.len() as u64,
        uploaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_match() {
        let p = Platform::parse("linux/arm64/v8").expect("platform");
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches(
            &serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        ));
        assert!(!p.matches(&serde_json::json!({"os": "linux", "architecture": "arm64"})));
        let amd = Platform::parse("linux/amd64").expect("platform");
        assert!(amd.matches(&serde_json::json!({"os": "linux", "architecture": "amd64"})));
        assert!(!amd.matches(&serde_json::json!({"os": "windows", "architecture": "amd64"})));
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_blobs_are_config_then_layers() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": d('a'), "size": 3},
            "layers": [{"digest": d('b'), "size": 5}, {"digest": d('c'), "size": 7}],
        });
        let blobs = manifest_blobs(manifest.to_string().as_bytes()).expect("blobs");
        let sizes: Vec<u64> = blobs.iter().map(|b| b.1).collect();
        assert_eq!(sizes, [3, 5, 7]);
        let bad = serde_json::json!({"config": {"digest": "md5:x", "size": 1}, "layers": []});
        assert!(manifest_blobs(bad.to_string().as_bytes()).is_err());
    }
}
