//! forge's registry client: the OCI distribution API (manifests, blobs,
//! uploads, the catalog), as `docker pull/push/search` and skopeo speak it.
//!
//! **Why a small blocking client on `ureq`, not `oci-client`:** forge's
//! executor is synchronous (threads and rayon). `oci-client` is async
//! (tokio, reqwest and hyper: a dependency tree that roughly doubles the
//! workspace's compile time on two cores) and would need a runtime of its
//! own; its blob mount also treats only `201 Created` as success, where the
//! spec lets a registry answer `202` and start an upload instead (which this
//! client then uses). The distribution API is a handful of requests;
//! `ureq` is already forge's HTTP stack (`forge-http`: proxies, rustls with
//! the system's roots, timeouts), so pulls, pushes and `ADD <url>` behave
//! alike.
//!
//! Digests are [`Sha256Digest`]s (64 hex digits, checked when parsed) before
//! they become part of a URL, and every byte downloaded is hashed while it
//! streams: a manifest asked for by digest, or a blob, that hashes to
//! anything else is an error and is not handed on.
//!
//! Addresses: `localhost`, `127.0.0.0/8`, `[::1]` and registries listed as
//! insecure ([`Options::insecure`]) are spoken to over plain HTTP, others
//! over HTTPS; `docker.io` is `registry-1.docker.io`. Reads (manifests,
//! blobs, tags) try the registry's mirrors ([`Options::mirrors`]) first.
//! No authentication yet (anonymous access only): `forge login` and tokens
//! come with the registry issues' second part.

mod error;
pub mod transfer;

use std::collections::BTreeMap;
use std::io::{Read, Write};

use forge_cache::Sha256Digest;
use sha2::{Digest as _, Sha256};

pub use error::{RegistryError, RegistryErrorEntry};

/// The manifest media types forge accepts, in the `Accept` header of every
/// manifest request.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The largest manifest read (the distribution registry's own limit is 4 MiB).
const MANIFEST_LIMIT: u64 = 4 << 20;

/// How the client reaches registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP besides
    /// `localhost` and `127.0.0.0/8`.
    pub insecure: Vec<String>,
    /// Mirrors to read from, by registry (`docker.io` → `["mirror:5000"]`):
    /// a host (`https://` unless insecure) or a URL with its scheme.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Blobs up to this size go up in one `PUT`; larger ones in `PATCH`
    /// chunks of this size.
    pub chunk_size: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            chunk_size: 16 << 20,
        }
    }
}

/// A manifest (or index) as the registry sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The bytes, exactly as received (their sha256 is the digest).
    pub bytes: Vec<u8>,
    /// The media type (`Content-Type`, else the document's `mediaType`).
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Sha256Digest,
}

/// What starting a blob upload gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upload {
    /// The registry mounted the blob from another repository: nothing to send.
    Mounted,
    /// An upload session: where to send the bytes.
    Session(String),
}

/// A request body.
enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Reader(&'a mut dyn Read, u64),
}

/// A registry client (cheap to clone; one connection pool).
#[derive(Debug, Clone)]
pub struct Registry {
    agent: ureq::Agent,
    options: Options,
}

/// `host` without its port (`[::1]:5000` → `[::1]`).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry.find(']').map_or(registry, |end| &registry[..=end]);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether `registry` is reached over plain HTTP.
pub fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    let loopback = host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || insecure
            .iter()
            .any(|entry| entry == registry || entry == host)
}

/// `base` + `location` when `location` is a path.
fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

fn with_query(url: &str, query: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// The `next` target of a `Link: <url>; rel="next"` header.
fn next_link(link: Option<&str>) -> Option<String> {
    let link = link?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let what = what.into();
    move |source| RegistryError::Io { what, source }
}

impl Registry {
    /// A client on `http`'s connection settings (proxies, TLS roots,
    /// timeouts) with these options.
    pub fn new(http: &forge_http::Client, options: Options) -> Self {
        Self {
            agent: http.agent().clone(),
            options,
        }
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The API base URL of `registry` (`http://127.0.0.1:5000`,
    /// `https://registry-1.docker.io` for `docker.io`).
    pub fn base_url(&self, registry: &str) -> String {
        let host = if registry == forge_cache::reference::DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if is_plain_http(host, &self.options.insecure) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// Where reads of `registry` go: its mirrors, then itself.
    fn read_bases(&self, registry: &str) -> Vec<String> {
        let mut bases: Vec<String> = self
            .options
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| {
                if m.starts_with("http://") || m.starts_with("https://") {
                    m.trim_end_matches('/').to_string()
                } else {
                    self.base_url(m)
                }
            })
            .collect();
        bases.push(self.base_url(registry));
        bases
    }

    fn call(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<ureq::Response, RegistryError> {
        let mut request = self.agent.request(method, url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let result = match body {
            Body::Empty => request.call(),
            Body::Bytes(bytes) => request.send_bytes(bytes),
            Body::Reader(reader, len) => {
                request.set("Content-Length", &len.to_string()).send(reader)
            }
        };
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let mut text = String::new();
                let _ = response
                    .into_reader()
                    .take(64 << 10)
                    .read_to_string(&mut text);
                #[derive(serde::Deserialize)]
                struct Errors {
                    #[serde(default)]
                    errors: Vec<RegistryErrorEntry>,
                }
                let errors = serde_json::from_str::<Errors>(&text)
                    .map(|e| e.errors)
                    .unwrap_or_default();
                Err(RegistryError::Status {
                    method,
                    url: url.to_string(),
                    status,
                    errors,
                })
            }
            // Not `t.to_string()`: it repeats the URL the error already names.
            Err(ureq::Error::Transport(t)) => Err(RegistryError::Transport {
                url: url.to_string(),
                message: match t.message() {
                    Some(m) => format!("{}: {m}", t.kind()),
                    None => t.kind().to_string(),
                },
            }),
        }
    }

    /// Tries `f` on each read base (mirrors first); the first success, else
    /// the origin's error.
    fn read_from<T>(
        &self,
        registry: &str,
        mut f: impl FnMut(&str) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let bases = self.read_bases(registry);
        let mut last = None;
        for base in &bases {
            match f(base) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Protocol {
            url: registry.to_string(),
            reason: "no address to read from".into(),
        }))
    }

    /// The manifest (or index) `reference` (a tag or a `sha256:` digest) of
    /// `repository`, with its bytes as sent. Asked by digest, bytes hashing to
    /// another digest are [`RegistryError::DigestMismatch`].
    pub fn get_manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let pinned = reference.parse::<Sha256Digest>().ok();
        let accept = MANIFEST_TYPES.join(", ");
        self.read_from(registry, |base| {
            let url = format!("{base}/v2/{repository}/manifests/{reference}");
            let response = match self.call("GET", &url, &[("Accept", &accept)], Body::Empty) {
                Err(RegistryError::Status { status: 404, .. }) => {
                    return Err(RegistryError::NotFound {
                        reference: format!("{registry}/{repository}:{reference}")
                            .replace(":sha256:", "@sha256:"),
                        url,
                    })
                }
                other => other?,
            };
            let header_type = response
                .header("Content-Type")
                .map(|t| t.split(';').next().unwrap_or(t).trim().to_string());
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(MANIFEST_LIMIT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| RegistryError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            if bytes.len() as u64 > MANIFEST_LIMIT {
                return Err(RegistryError::Protocol {
                    url,
                    reason: "the manifest is larger than 4 MiB".into(),
                });
            }
            let digest = forge_cache::store::sha256(&bytes);
            if let Some(expected) = pinned {
                if digest != expected {
                    return Err(RegistryError::DigestMismatch {
                        what: "manifest",
                        url,
                        expected,
                        actual: digest,
                    });
                }
            }
            let media_type = match header_type.filter(|t| MANIFEST_TYPES.contains(&t.as_str())) {
                Some(t) => t,
                None => serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_string))
                    .unwrap_or_else(|| MANIFEST_TYPES[0].to_string()),
            };
            Ok(Manifest {
                bytes,
                media_type,
                digest,
            })
        })
    }

    /// The digest of the manifest `reference` (a `HEAD`, as `forge build
    /// --pull` checks for a newer base), or `None` if there is none.
    pub fn manifest_digest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Sha256Digest>, RegistryError> {
        let accept = MANIFEST_TYPES.join(", ");
        let url = format!(
            "{}/v2/{repository}/manifests/{reference}",
            self.base_url(registry)
        );
        match self.call("HEAD", &url, &[("Accept", &accept)], Body::Empty) {
            Ok(response) => match response.header("Docker-Content-Digest") {
                Some(d) => d.parse().map(Some).map_err(|_| RegistryError::Protocol {
                    url,
                    reason: format!("Docker-Content-Digest `{d}` is not a sha256 digest"),
                }),
                // No header: the digest needs the bytes.
                None => Ok(Some(
                    self.get_manifest(registry, repository, reference)?.digest,
                )),
            },
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Downloads blob `digest` of `repository` into `out`; `progress` gets
    /// the bytes received so far. Returns the size. With `hash`, the bytes
    /// are hashed as they stream and another digest is an error (`false`
    /// when `out` checks the digest itself, as the store's blob writer does,
    /// so the blob is hashed once). A blob of another length than `size` is
    /// an error too; either comes after `out` got the bytes: the caller
    /// discards them.
    #[allow(clippy::too_many_arguments)]
    pub fn fetch_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
        size: Option<u64>,
        out: &mut dyn Write,
        hash: bool,
        progress: &dyn Fn(u64),
    ) -> Result<u64, RegistryError> {
        let bases = self.read_bases(registry);
        let mut last = None;
        for base in &bases {
            let url = format!("{base}/v2/{repository}/blobs/{digest}");
            let response = match self.call("GET", &url, &[], Body::Empty) {
                Ok(r) => r,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let mut reader = response.into_reader();
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| RegistryError::Transport {
                        url: url.clone(),
                        message: format!("the blob's body broke off after {total} bytes: {e}"),
                    })?;
                if n == 0 {
                    break;
                }
                if hash {
                    hasher.update(&buf[..n]);
                }
                out.write_all(&buf[..n])
                    .map_err(io_error(format!("storing blob {digest}")))?;
                total += n as u64;
                progress(total);
            }
            if let Some(expected) = size {
                if expected != total {
                    return Err(RegistryError::SizeMismatch {
                        digest: *digest,
                        url,
                        expected,
                        actual: total,
                    });
                }
            }
            let actual = Sha256Digest::from_bytes(hasher.finalize().into());
            if hash && actual != *digest {
                return Err(RegistryError::DigestMismatch {
                    what: "blob",
                    url,
                    expected: *digest,
                    actual,
                });
            }
            return Ok(total);
        }
        Err(last.unwrap_or_else(|| RegistryError::Protocol {
            url: registry.to_string(),
            reason: "no address to read from".into(),
        }))
    }

    /// Whether `repository` has blob `digest` (a `HEAD`).
    pub fn has_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base_url(registry));
        match self.call("HEAD", &url, &[], Body::Empty) {
            Ok(_) => Ok(true),
            Err(RegistryError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts an upload of blob `digest` to `repository`; with `mount_from`
    /// (another repository of the same registry that has it), asks the
    /// registry to mount it from there (`?mount=&from=`), which it may do
    /// ([`Upload::Mounted`]) or answer with an upload session instead.
    pub fn start_upload(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
        mount_from: Option<&str>,
    ) -> Result<Upload, RegistryError> {
        let base = self.base_url(registry);
        let mut url = format!("{base}/v2/{repository}/blobs/uploads/");
        if let Some(from) = mount_from {
            url = with_query(&url, &format!("mount={digest}&from={from}"));
        }
        let response = self.call("POST", &url, &[], Body::Bytes(&[]))?;
        if response.status() == 201 {
            return Ok(Upload::Mounted);
        }
        let location = response
            .header("Location")
            .ok_or_else(|| RegistryError::Protocol {
                url: url.clone(),
                reason: "the upload answer has no Location".into(),
            })?;
        Ok(Upload::Session(absolute(&base, location)))
    }

    /// Sends blob `digest` (`size` bytes from `body`) into the upload
    /// `session` (from [`Registry::start_upload`]): one `PUT` up to
    /// [`Options::chunk_size`], else `PATCH` chunks with `Content-Range`
    /// then a closing `PUT`. `progress` gets the bytes sent so far.
    pub fn upload(
        &self,
        registry: &str,
        session: &str,
        digest: &Sha256Digest,
        size: u64,
        body: &mut dyn Read,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        let base = self.base_url(registry);
        let octets = ("Content-Type", "application/octet-stream");
        let chunk = self.options.chunk_size.max(1);
        if size <= chunk {
            let url = with_query(session, &format!("digest={digest}"));
            self.call("PUT", &url, &[octets], Body::Reader(body, size))?;
            progress(size);
            return Ok(());
        }
        let mut location = session.to_string();
        let mut sent = 0u64;
        while sent < size {
            let len = chunk.min(size - sent);
            let range = format!("{}-{}", sent, sent + len - 1);
            let mut part = Read::take(&mut *body, len);
            let response = self.call(
                "PATCH",
                &location,
                &[octets, ("Content-Range", &range)],
                Body::Reader(&mut part, len),
            )?;
            if let Some(next) = response.header("Location") {
                location = absolute(&base, next);
            }
            sent += len;
            progress(sent);
        }
        let url = with_query(&location, &format!("digest={digest}"));
        self.call("PUT", &url, &[octets], Body::Bytes(&[]))?;
        Ok(())
    }

    /// Puts a manifest (or index) as `reference` (a tag, or its digest);
    /// returns its digest.
    pub fn put_manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Sha256Digest, RegistryError> {
        let url = format!(
            "{}/v2/{repository}/manifests/{reference}",
            self.base_url(registry)
        );
        let response = self.call(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
        )?;
        let digest = forge_cache::store::sha256(bytes);
        if let Some(sent) = response.header("Docker-Content-Digest") {
            if sent.parse::<Sha256Digest>().ok() != Some(digest) {
                return Err(RegistryError::Protocol {
                    url,
                    reason: format!("the registry stored the manifest as {sent}, not {digest}"),
                });
            }
        }
        Ok(digest)
    }

    /// Follows a paginated list (`?n=`, `Link: rel="next"`), collecting the
    /// JSON array `field` of each page.
    fn paginated(
        &self,
        base: &str,
        first: String,
        field: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..10_000 {
            let response = self.call("GET", &url, &[], Body::Empty)?;
            let next = next_link(response.header("Link")).map(|n| absolute(base, &n));
            let mut text = String::new();
            response
                .into_reader()
                .take(MANIFEST_LIMIT)
                .read_to_string(&mut text)
                .map_err(|e| RegistryError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| RegistryError::Protocol {
                    url: url.clone(),
                    reason: format!("not JSON: {e}"),
                })?;
            if let Some(items) = value[field].as_array() {
                out.extend(items.iter().filter_map(|v| v.as_str().map(str::to_string)));
            }
            match next {
                Some(n) => url = n,
                None => return Ok(out),
            }
        }
        Err(RegistryError::Protocol {
            url,
            reason: "more than 10,000 pages".into(),
        })
    }

    /// Every repository in the registry's catalog (`/v2/_catalog`, `page`
    /// per request).
    pub fn catalog(&self, registry: &str, page: usize) -> Result<Vec<String>, RegistryError> {
        let base = self.base_url(registry);
        let first = format!("{base}/v2/_catalog?n={page}");
        match self.paginated(&base, first, "repositories") {
            Err(RegistryError::Status {
                status: 404 | 405, ..
            }) => Err(RegistryError::NoCatalog {
                registry: registry.to_string(),
            }),
            other => other,
        }
    }

    /// The tags of `repository` (`/v2/<name>/tags/list`); none when it does
    /// not exist.
    pub fn tags(&self, registry: &str, repository: &str) -> Result<Vec<String>, RegistryError> {
        let base = self.base_url(registry);
        let first = format!("{base}/v2/{repository}/tags/list");
        match self.paginated(&base, first, "tags") {
            Err(RegistryError::Status { status: 404, .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Whether the registry answers the API's base endpoint (`/v2/`) at all
    /// (any status: 401 also means it is there).
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base_url(registry));
        match self.call("GET", &url, &[], Body::Empty) {
            Ok(_) | Err(RegistryError::Status { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_are_plain_http() {
        let insecure = vec!["registry.lan:5000".to_string(), "other.lan".to_string()];
        for plain in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "registry.lan:5000",
            "other.lan:443",
        ] {
            assert!(is_plain_http(plain, &insecure), "{plain}");
        }
        for tls in [
            "registry.lan:5001",
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example",
        ] {
            assert!(!is_plain_http(tls, &insecure), "{tls}");
        }
    }

    #[test]
    fn links_and_locations() {
        assert_eq!(
            next_link(Some(r#"</v2/_catalog?last=b&n=2>; rel="next""#)),
            Some("/v2/_catalog?last=b&n=2".to_string())
        );
        assert_eq!(next_link(Some(r#"</x>; rel="prev""#)), None);
        assert_eq!(next_link(None), None);
        assert_eq!(
            absolute("http://r:5000", "/v2/x?_state=1"),
            "http://r:5000/v2/x?_state=1"
        );
        assert_eq!(absolute("http://r:5000", "https://s3/x"), "https://s3/x");
        assert_eq!(
            with_query("http://r/u?_state=1", "digest=d"),
            "http://r/u?_state=1&digest=d"
        );
        assert_eq!(with_query("http://r/u", "digest=d"), "http://r/u?digest=d");
    }
}
