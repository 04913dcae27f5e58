//! forge's storage: content-addressed blobs, the image store (an OCI image layout)
//! and the step-cache index.
//!
//! This crate knows nothing about build steps or Dockerfiles: it stores bytes by
//! digest and images by reference. This first part holds the digest type every
//! other part is keyed on.
//!
//! ```
//! use forge_cache::Sha256Digest;
//! let d: Sha256Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
//!     .parse()
//!     .unwrap();
//! assert_eq!(d.short(), "e3b0c44298fc");
//! assert_eq!(d.to_string(), format!("sha256:{}", d.hex()));
//! ```

use std::fmt;
use std::str::FromStr;

pub mod archive;
pub mod container;
pub mod image;
pub mod layer;
pub mod reference;
pub mod snapshot;
pub mod step_cache;
pub mod store;

/// Errors of the store.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CacheError {
    /// A string that should be an OCI digest is not one.
    #[error("invalid digest `{text}`: {reason}")]
    #[diagnostic(
        code(cache::invalid_digest),
        help("a digest looks like sha256:<64 lowercase hex digits>")
    )]
    InvalidDigest {
        /// What was given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A string that should be an image reference is not one.
    #[error("invalid reference `{text}`: {reason}")]
    #[diagnostic(
        code(cache::invalid_reference),
        help("a reference looks like [registry/]repository[:tag][@sha256:<hex>], e.g. `ubuntu:22.04`")
    )]
    InvalidReference {
        /// What was given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A file operation in the store failed.
    #[error("cannot {action} `{}`: {error}", path.display())]
    #[diagnostic(
        code(cache::io),
        help(
            "check that the store directory ($FORGE_HOME) exists, is writable and has free space"
        )
    )]
    Io {
        /// What forge was doing, e.g. `read`.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },

    /// A blob is not in the store.
    #[error("blob `{digest}` is not in the store")]
    #[diagnostic(
        code(cache::blob_not_found),
        help("pull or rebuild the image that needs it; `forge fsck` lists what is missing")
    )]
    BlobNotFound {
        /// The missing blob.
        digest: Sha256Digest,
    },

    /// Content does not hash to the digest it is stored or announced under.
    #[error("blob `{digest}` is corrupt: its content hashes to `{actual}`")]
    #[diagnostic(
        code(cache::digest_mismatch),
        help("run `forge fsck --repair` to remove broken blobs, then pull or rebuild the image")
    )]
    DigestMismatch {
        /// The digest the content should have.
        digest: Sha256Digest,
        /// The digest it has.
        actual: Sha256Digest,
    },

    /// A JSON document in the store (index.json, a manifest, a config, a lease)
    /// does not parse.
    #[error("invalid {what} `{name}`: {reason}")]
    #[diagnostic(
        code(cache::invalid_document),
        help("the store may have been edited by hand; `forge fsck` checks it")
    )]
    InvalidDocument {
        /// What kind of document, e.g. `manifest`.
        what: &'static str,
        /// Its file or digest.
        name: String,
        /// The parser's complaint.
        reason: String,
    },

    /// No image matches a name, ID or digest.
    #[error("no image `{query}` in the store")]
    #[diagnostic(
        code(cache::image_not_found),
        help("`forge images` lists the images in the store")
    )]
    ImageNotFound {
        /// What was asked for.
        query: String,
    },

    /// An image ID prefix matches more than one image.
    #[error("image ID prefix `{prefix}` is ambiguous: it matches {candidates}")]
    #[diagnostic(
        code(cache::ambiguous_image),
        help("give more hex digits of the ID, or the image's name")
    )]
    AmbiguousImage {
        /// The prefix given.
        prefix: String,
        /// The matching images, comma-separated.
        candidates: String,
    },

    /// An image cannot be tagged because blobs it references are missing.
    #[error("image `{digest}` is incomplete: blob `{missing}` is not in the store")]
    #[diagnostic(
        code(cache::incomplete_image),
        help("write every blob (config, layers, child manifests) before tagging the manifest")
    )]
    IncompleteImage {
        /// The manifest or index being tagged.
        digest: Sha256Digest,
        /// A blob it references that is absent.
        missing: Sha256Digest,
    },

    /// An image archive (`forge load`) is malformed or unsafe.
    #[error("invalid image archive: `{name}`: {reason}")]
    #[diagnostic(
        code(cache::invalid_archive),
        help("load archives made by `forge save` or `docker save`")
    )]
    InvalidArchive {
        /// The entry or document at fault.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A working container is being used by another `forge run`.
    #[error("container `{name}` is in use by another forge run")]
    #[diagnostic(
        code(cache::container_busy),
        help("wait for that run to finish; one run at a time uses a container")
    )]
    ContainerBusy {
        /// The container's name.
        name: String,
    },

    /// A container name is already taken.
    #[error("the container name `{name}` is already in use")]
    #[diagnostic(
        code(cache::container_name_in_use),
        help("choose another --name, or `forge rm` that container")
    )]
    ContainerNameInUse {
        /// The name.
        name: String,
    },

    /// Making or applying a layer failed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Layer(#[from] layer::LayerError),
}

/// An OCI content digest (`sha256:<hex>`), the name of a blob, manifest or config.
///
/// Distinct from the build graph's blake3 cache keys on purpose: the two are never
/// interchangeable, and the type system keeps it so.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of these raw 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the algorithm prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits, as `docker images` shows IDs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Digest {
    type Err = CacheError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| CacheError::InvalidDigest {
            text: text.to_string(),
            reason,
        };
        let hex = text
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("only sha256 digests are supported"))?;
        if hex.len() != 64 {
            return Err(bad("expected 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(bad("expected lowercase hex digits")),
            }
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let text = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let d: Sha256Digest = text.parse().expect("valid digest");
        assert_eq!(d.to_string(), text);
        for bad in [
            "sha512:00",
            "sha256:0123",
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }
}
