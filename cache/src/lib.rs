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
