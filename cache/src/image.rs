//! Making images from parts: a root filesystem tarball becomes a one-layer image
//! (`forge import`), written into the [`Store`] as a config blob, a layer blob and
//! an OCI manifest.
//!
//! Images made here are reproducible: the config's `created` and history times come
//! from `SOURCE_DATE_EPOCH` (0 by default), never from the clock, and the config
//! JSON has sorted keys, so the same tarball and options give the same image digest
//! on every machine. The local creation time is kept outside the image, as an
//! annotation in the store's `index.json`.

use std::io::Read;
use std::str::FromStr;
use std::time::SystemTime;

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::{json, Map, Value};

use crate::layer::{self, LayerInfo, LayerOptions};
use crate::reference::Reference;
use crate::store::Store;
use crate::{CacheError, Sha256Digest};

/// What `forge import` puts in the new image besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// How to write the layer (compression, threads, `SOURCE_DATE_EPOCH`).
    pub layer: LayerOptions,
    /// The image config's `config` object (`Env`, `Cmd`, `ExposedPorts`, ...),
    /// docker's field names.
    pub config: Map<String, Value>,
    /// The history entry's comment (`-m`); docker's default is
    /// `Imported from <source>`.
    pub comment: String,
    /// Where to tag the image, if anywhere.
    pub reference: Option<Reference>,
}

/// The image that was made.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// The image ID: the config digest.
    pub id: Sha256Digest,
    /// The manifest's descriptor (its digest is the image digest).
    pub manifest: Descriptor,
    /// The layer.
    pub layer: LayerInfo,
}

/// The architecture name OCI uses for this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// RFC 3339 (UTC, seconds) of a Unix time, without a date library.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), for dates from 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn oci_digest(d: &Sha256Digest) -> Result<Digest, CacheError> {
    Digest::from_str(&d.to_string()).map_err(|_| CacheError::InvalidDigest {
        text: d.to_string(),
        reason: "not accepted as an OCI digest",
    })
}

/// A layer blob as a manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    /// Its OCI media type.
    pub media_type: String,
    /// The blob's digest.
    pub digest: Sha256Digest,
    /// The blob's size.
    pub size: u64,
}

/// Writes the OCI manifest of a config blob and its layers into the store and
/// returns its descriptor. The JSON has sorted keys: equal inputs, equal digest.
///
/// # Errors
/// A store failure.
pub fn put_manifest(
    store: &Store,
    config_digest: &Sha256Digest,
    config_size: u64,
    layers: &[LayerRef],
) -> Result<Descriptor, CacheError> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size}))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_size,
        },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| CacheError::InvalidDocument {
        what: "manifest",
        name: format!("the manifest of {config_digest}"),
        reason: e.to_string(),
    })?;
    let digest = store.put_blob(&bytes)?;
    Ok(Descriptor::new(
        MediaType::ImageManifest,
        bytes.len() as u64,
        oci_digest(&digest)?,
    ))
}

/// Reads a root filesystem tarball (plain, gzip, bzip2, xz or zstd, detected by
/// content), stores it as a layer, and makes a one-layer image of it; tags it
/// when `opts.reference` is set.
///
/// # Errors
/// A malformed or unreadable input, or a store failure. Nothing is tagged unless
/// every blob was written and verified.
pub fn import_tarball(
    store: &Store,
    input: Box<dyn Read + Send>,
    opts: &ImportOptions,
) -> Result<ImportedImage, CacheError> {
    let mut tar = layer::decompress(input)?;
    let mut writer = store.blob_writer()?;
    let info = layer::compress_tar(&mut tar, &opts.layer, &mut writer)?;
    let (layer_digest, layer_size) = writer.commit(Some(&info.digest))?;

    let created = rfc3339(opts.layer.source_date_epoch);
    let config = json!({
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": Value::Object(opts.config.clone()),
        "rootfs": { "type": "layers", "diff_ids": [info.diff_id.to_string()] },
        "history": [{ "created": created, "comment": opts.comment, "created_by": "" }],
    });
    // serde_json's maps are sorted: the bytes depend only on the content.
    let config_bytes = serde_json::to_vec(&config).map_err(|e| CacheError::InvalidDocument {
        what: "image config",
        name: "the imported image".to_string(),
        reason: e.to_string(),
    })?;
    let config_digest = store.put_blob(&config_bytes)?;

    let descriptor = put_manifest(
        store,
        &config_digest,
        config_bytes.len() as u64,
        &[LayerRef {
            media_type: info.media_type.to_string(),
            digest: layer_digest,
            size: layer_size,
        }],
    )?;
    if let Some(reference) = &opts.reference {
        store.tag(&descriptor, reference, Some(SystemTime::now()))?;
    }
    Ok(ImportedImage {
        id: config_digest,
        manifest: descriptor,
        layer: info,
    })
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_of_known_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
