//! Helpers shared by the cache crate's integration tests (layers and
//! snapshots): pseudo-random content, tree descriptions, raw tar entries.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        println!("not root: whiteout devices, trusted xattrs and mounts need root, skipped");
    }
    root
}

/// Deterministic pseudo-random bytes (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).expect("read_dir") {
        let p = e.expect("entry").path();
        let m = fs::symlink_metadata(&p).expect("lstat");
        if m.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Everything observable about a tree, for comparisons.
pub fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut paths = walk(root);
    paths.sort();
    for p in paths {
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        let m = fs::symlink_metadata(&p).expect("lstat");
        let ft = m.file_type();
        let mut desc = format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
        if ft.is_file() {
            desc += &format!(
                " size={} sum={}",
                m.len(),
                crc32fast::hash(&fs::read(&p).expect("read"))
            );
            if m.nlink() > 1 {
                let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                desc += &format!(" linkgroup={first}");
            }
        } else if ft.is_symlink() {
            desc += &format!(" -> {}", fs::read_link(&p).expect("readlink").display());
        } else if !ft.is_dir() {
            desc += &format!(" rdev={}", m.rdev());
        }
        if !ft.is_dir() {
            desc += &format!(" mtime={}", m.mtime());
        }
        if !ft.is_symlink() {
            let mut names: Vec<_> = xattr::list(&p).expect("listxattr").collect();
            names.sort();
            for n in names {
                let v = xattr::get(&p, &n).expect("getxattr").unwrap_or_default();
                desc += &format!(" xattr {}={:?}", n.to_string_lossy(), v);
            }
        }
        out.insert(rel, desc);
    }
    out
}

/// A raw ustar header with an arbitrary name (the tar crate's setters refuse `..`).
pub fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    {
        let bytes = h.as_mut_bytes();
        bytes[..100].fill(0);
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        bytes[157..257].fill(0);
        bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

pub fn assert_sentinel_intact(outside: &Path) {
    let mut names: Vec<_> = fs::read_dir(outside)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["x"], "something was written outside the root");
    assert_eq!(fs::read(outside.join("x")).expect("read"), b"sentinel");
    assert_eq!(
        fs::metadata(outside.join("x")).expect("stat").nlink(),
        1,
        "sentinel was hardlinked"
    );
}

/// What [`put_manifest`] stored.
pub struct PutManifest {
    pub manifest: forge_cache::Sha256Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: forge_cache::Sha256Digest,
    pub config_len: usize,
}

/// Stores `config` and an OCI image manifest naming it and one layer blob
/// (already stored: its digest, size and media type).
pub fn put_manifest(
    store: &forge_cache::store::Store,
    config: &serde_json::Value,
    layer: (&forge_cache::Sha256Digest, usize, &str),
) -> PutManifest {
    let config_bytes = serde_json::to_vec(config).expect("config json");
    let config_digest = store.put_blob(&config_bytes).expect("config");
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest.to_string(),
            "size": config_bytes.len()
        },
        "layers": [{
            "mediaType": layer.2,
            "digest": layer.0.to_string(),
            "size": layer.1
        }]
    }))
    .expect("manifest json");
    PutManifest {
        manifest: store.put_blob(&manifest_bytes).expect("manifest"),
        manifest_bytes,
        config: config_digest,
        config_len: config_bytes.len(),
    }
}

/// An image [`one_file_image`] stored: its manifest and config, and its
/// one layer.
pub struct OneFileImage {
    pub put: PutManifest,
    /// The layer's digest (also its diff_id: it is a plain tar).
    pub layer: forge_cache::Sha256Digest,
    pub layer_len: usize,
}

/// Stores an image of one plain-tar layer holding one file, `data`, of
/// `payload` pseudo-random bytes; `seed` makes the image, and its ID, unique.
pub fn one_file_image(
    store: &forge_cache::store::Store,
    seed: u64,
    payload: usize,
) -> OneFileImage {
    // `noise` keeps only odd seeds apart.
    let data = noise(seed * 2 + 1, payload);
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "data", data.as_slice())
        .expect("tar entry");
    let layer_bytes = tar.into_inner().expect("tar");
    let layer = store.put_blob(&layer_bytes).expect("layer");
    let put = put_manifest(
        store,
        &serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Env": [format!("SEED={seed}")] },
            "rootfs": { "type": "layers", "diff_ids": [layer.to_string()] },
            "history": [{ "created_by": "test" }]
        }),
        (
            &layer,
            layer_bytes.len(),
            "application/vnd.oci.image.layer.v1.tar",
        ),
    );
    OneFileImage {
        put,
        layer,
        layer_len: layer_bytes.len(),
    }
}
