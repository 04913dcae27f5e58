//! Image references (`ubuntu`, `ghcr.io/org/app:1.2`, `x@sha256:…`), parsed with
//! docker's grammar and normalized the way docker normalizes them.
//!
//! Grammar (distribution/reference):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path
//! domain     := host [ ":" port ]          host: DNS name, IPv4, or [IPv6]
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! ```
//!
//! Normalization: the first `/`-separated component is a registry only if it
//! contains a `.` or a `:`, is `localhost`, or has an uppercase letter; otherwise
//! the registry is `docker.io` (and `index.docker.io` means `docker.io`). A
//! one-component repository on `docker.io` lives under `library/`. A reference
//! with neither tag nor digest gets the tag `latest`. The name (registry and
//! path) is at most 255 characters.
//!
//! ```
//! use forge_cache::reference::Reference;
//! let r = Reference::parse("ubuntu").unwrap();
//! assert_eq!(r.to_string(), "docker.io/library/ubuntu:latest");
//! assert_eq!(r.familiar(), "ubuntu:latest");
//! let r = Reference::parse("localhost:5000/a/b:t").unwrap();
//! assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost:5000", "a/b", Some("t")));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::{CacheError, Sha256Digest};

/// Docker's default registry, the one a reference without a registry names.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The tag a reference without tag or digest gets.
pub const DEFAULT_TAG: &str = "latest";

/// Longest allowed name (registry and repository path), as in docker.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Longest allowed tag, as in docker.
const TAG_LENGTH_MAX: usize = 128;

/// A normalized image reference: registry, repository path, and tag and/or digest.
///
/// Always fully qualified: `ubuntu` parses to registry `docker.io`, repository
/// `library/ubuntu`, tag `latest`. `tag` is `None` only when a digest is given
/// without a tag (`ubuntu@sha256:…`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Sha256Digest>,
}

impl Reference {
    /// Parses and normalizes a reference in docker's grammar.
    pub fn parse(text: &str) -> Result<Self, CacheError> {
        let bad = |reason: &'static str| CacheError::InvalidReference {
            text: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(bad("the reference is empty"));
        }
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("a 64-digit hex string is an image ID, not a name"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest
                    .parse::<Sha256Digest>()
                    .map_err(|_| bad("the part after `@` is not a sha256 digest"))?;
                (rest, Some(digest))
            }
            None => (text, None),
        };
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad(
                    "a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with `.` or `-`",
                ));
            }
        }
        if name.is_empty() {
            return Err(bad("the repository name is missing"));
        }
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(bad("the name is longer than 255 characters"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if is_registry(first) => (first, path),
            _ => (DEFAULT_REGISTRY, name),
        };
        if !valid_registry(registry) {
            return Err(bad("the registry is not a valid host[:port]"));
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("the repository name must be lowercase"));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad(
                "a repository path is `/`-separated components of [a-z0-9] joined by `.`, `_`, `__` or `-`",
            ));
        }
        let registry = match registry {
            "index.docker.io" => DEFAULT_REGISTRY,
            other => other,
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        let tag = match (tag, digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port), e.g. `docker.io` or `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path in the registry, e.g. `library/ubuntu`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`None` only for a digest-only reference).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The tag, or `latest` when there is none.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The manifest digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Sha256Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, e.g. `docker.io/library/ubuntu`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name an image is stored under (`org.opencontainers.image.ref.name`):
    /// [`Reference::tagged_name`], or `name@sha256:…` for a reference by
    /// digest alone (pulled by digest: no tag is made or moved, as docker
    /// keeps such an image untagged).
    pub fn stored_name(&self) -> String {
        match (&self.tag, &self.digest) {
            (None, Some(_)) => self.to_string(),
            _ => self.tagged_name(),
        }
    }

    /// `registry/repository:tag` with `latest` for a missing tag and no digest.
    pub fn tagged_name(&self) -> String {
        format!("{}:{}", self.name(), self.tag_or_latest())
    }

    /// The repository as docker shows it: without `docker.io/` and `library/`
    /// (`ubuntu`, `user/app`, `ghcr.io/org/app`).
    pub fn repository_familiar(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(short) if !short.contains('/') => short.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The whole reference as docker shows it, e.g. `ubuntu:latest`. Parses back
    /// to an equal reference.
    pub fn familiar(&self) -> String {
        self.with_suffix(self.repository_familiar())
    }

    /// The same reference with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self, CacheError> {
        if !valid_tag(tag) {
            return Err(CacheError::InvalidReference {
                text: format!("{}:{tag}", self.name()),
                reason: "a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with `.` or `-`",
            });
        }
        Ok(Self {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    fn with_suffix(&self, mut out: String) -> String {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
        out
    }
}

impl fmt::Display for Reference {
    /// The full form, e.g. `docker.io/library/ubuntu:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.with_suffix(self.name()))
    }
}

impl FromStr for Reference {
    type Err = CacheError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Whether the first path component names a registry rather than a repository.
fn is_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes() {
        [first, rest @ ..] => {
            tag.len() <= TAG_LENGTH_MAX
                && word(*first)
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        [] => false,
    }
}

/// `[a-z0-9]+ ((. | _ | __ | -+) [a-z0-9]+)*`
fn valid_component(component: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]`, host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if registry.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}
