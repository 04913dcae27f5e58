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
//!
//! Authentication ([`auth`]): credentials from forge's, docker's and
//! podman's files and credential helpers ([`Options::keychain`]); a `401`'s
//! challenge is answered with Basic auth or a bearer token for the
//! request's scope, and the request is sent once more. Tokens are cached
//! per (host, scope) until they expire, and `Authorization` never goes to
//! another host than the one that asked for it.

pub mod auth;
mod error;
pub mod retry;
pub mod transfer;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;

use auth::{AuthState, Keychain, Scope};
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
    /// How often and how patiently requests are tried again (see [`retry`]).
    pub retry: retry::RetryPolicy,
    /// Where credentials come from (default: the user's files,
    /// [`Keychain::from_env`]; they are read only when a registry asks).
    pub keychain: Keychain,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            chunk_size: 16 << 20,
            retry: retry::RetryPolicy::default(),
            keychain: Keychain::from_env(),
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

/// Where a downloaded blob goes: bytes are appended, and a download that
/// must start over drops them.
pub trait BlobSink: Write {
    /// Drops everything written so far.
    fn restart(&mut self) -> std::io::Result<()>;
    /// The sha256 of what was written, if the sink keeps one (then the
    /// client does not hash the bytes a second time).
    fn digest(&self) -> Option<Sha256Digest> {
        None
    }
}

impl BlobSink for Vec<u8> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.clear();
        Ok(())
    }
}

impl BlobSink for forge_cache::store::BlobWriter {
    fn restart(&mut self) -> std::io::Result<()> {
        forge_cache::store::BlobWriter::restart(self).map_err(std::io::Error::other)
    }

    fn digest(&self) -> Option<Sha256Digest> {
        Some(self.digest_so_far())
    }
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

/// A registry's error body (`{"errors": [...]}`).
#[derive(serde::Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) errors: Vec<RegistryErrorEntry>,
}

/// A registry client (cheap to clone; one connection pool, one token
/// cache).
#[derive(Debug, Clone)]
pub struct Registry {
    agent: ureq::Agent,
    options: Options,
    auth: Arc<AuthState>,
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
            auth: Arc::new(AuthState::new(options.keychain.clone())),
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

    /// Sends one request (with `authorization`, if any); ureq's answer
    /// (its error is large, and handled right away).
    #[allow(clippy::result_large_err)]
    fn send(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        body: &mut Body<'_>,
        authorization: Option<&str>,
    ) -> Result<ureq::Response, ureq::Error> {
        let mut request = self.agent.request(method, url);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        // ureq drops this header on every redirect (its default
        // `RedirectAuthHeaders::Never`): a blob sent on to storage
        // elsewhere never sees it (`auth`'s cross-host rule, tested below).
        if let Some(value) = authorization {
            request = request.set("Authorization", value);
        }
        match body {
            Body::Empty => request.call(),
            Body::Bytes(bytes) => request.send_bytes(bytes),
            Body::Reader(reader, len) => request
                .set("Content-Length", &len.to_string())
                .send(&mut **reader),
        }
    }

    /// The error of an error status (its body's error entries read).
    fn status_error(
        method: &'static str,
        url: &str,
        status: u16,
        response: ureq::Response,
    ) -> RegistryError {
        let retry_after = response
            .header("Retry-After")
            .and_then(|v| retry::retry_after(v, std::time::SystemTime::now()));
        let mut text = String::new();
        let _ = response
            .into_reader()
            .take(64 << 10)
            .read_to_string(&mut text);
        let errors = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.errors)
            .unwrap_or_default();
        RegistryError::Status {
            method,
            url: url.to_string(),
            status,
            errors,
            retry_after,
        }
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// [`Options::retry`]`.attempts` times, waiting between tries as
    /// [`retry::RetryPolicy::backoff`] says (a `Retry-After` honoured).
    /// `op` gets the number of the try (0 first).
    fn retrying<T>(
        &self,
        mut op: impl FnMut(u32) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let policy = self.options.retry;
        let mut jitter = retry::Jitter::default();
        let mut attempt = 0;
        loop {
            match op(attempt) {
                Err(e) if e.is_transient() && attempt + 1 < policy.attempts.max(1) => {
                    let asked = match &e {
                        RegistryError::Status { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    std::thread::sleep(policy.backoff(attempt, asked, &mut jitter));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// ureq's answer as this crate's result.
    fn answer(
        method: &'static str,
        url: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, RegistryError> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                Err(Self::status_error(method, url, status, response))
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

    /// The error of a request that ended with a `401`.
    fn unauthorized(
        method: &'static str,
        url: &str,
        host: &str,
        scope: &Scope,
        found: Option<auth::Found>,
        detail: String,
    ) -> RegistryError {
        match found {
            None => RegistryError::AuthRequired {
                registry: host.to_string(),
                method,
                url: url.to_string(),
            },
            Some(found) => RegistryError::AuthRefused {
                registry: host.to_string(),
                username: found.credentials.username,
                origin: found.origin,
                scope: scope.to_string(),
                detail: if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                },
            },
        }
    }

    /// Sends a request needing `scope`: with the Basic header or a token
    /// when the host's challenge is known; on a `401`, with what its
    /// challenge asks for, once more.
    ///
    /// A one-shot body ([`Body::Reader`], an upload's bytes) cannot be sent
    /// twice, so it is never answered by a challenge: it goes after the
    /// `POST` that opened its upload session, whose `401` (if any) taught
    /// the client the host's challenge, and so carries the push scope's
    /// token (fetched before it, if the cached one expired) or the Basic
    /// header. A `401` to it anyway is an error.
    fn call(
        &self,
        method: &'static str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
        scope: &Scope,
    ) -> Result<ureq::Response, RegistryError> {
        let host = auth::authority(url);
        let sent = self.auth.before(&self.agent, &host, scope)?;
        let first = self.send(method, url, headers, &mut body, sent.header().as_deref());
        let (challenge, refused) = match first {
            Err(ureq::Error::Status(401, response)) => {
                let values: Vec<String> = response
                    .all("WWW-Authenticate")
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let refused = Self::status_error(method, url, 401, response);
                match auth::parse_challenge(&values) {
                    Some(challenge) => (challenge, refused),
                    // Nothing to answer: the 401 as it is.
                    None => return Err(refused),
                }
            }
            other => return Self::answer(method, url, other),
        };
        let retry = match self
            .auth
            .after(&self.agent, &host, scope, &challenge, &sent)?
        {
            Ok(retry) => retry,
            Err(refusal) => {
                let detail = if refusal.detail.is_empty() {
                    error::describe_entries(&refused)
                } else {
                    refusal.detail
                };
                return Err(Self::unauthorized(
                    method,
                    url,
                    &host,
                    scope,
                    refusal.found,
                    detail,
                ));
            }
        };
        if matches!(body, Body::Reader(..)) {
            let found = self.auth.credentials(&host)?;
            return Err(Self::unauthorized(
                method,
                url,
                &host,
                scope,
                found,
                "the registry asked for credentials in the middle of an upload".into(),
            ));
        }
        match self.send(method, url, headers, &mut body, retry.header().as_deref()) {
            Err(ureq::Error::Status(401, response)) => {
                let refused = Self::status_error(method, url, 401, response);
                let found = self.auth.credentials(&host)?;
                Err(Self::unauthorized(
                    method,
                    url,
                    &host,
                    scope,
                    found,
                    error::describe_entries(&refused),
                ))
            }
            other => Self::answer(method, url, other),
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
            self.retrying(|_| {
                let url = format!("{base}/v2/{repository}/manifests/{reference}");
                let response = match self.call(
                    "GET",
                    &url,
                    &[("Accept", &accept)],
                    Body::Empty,
                    &Scope::pull(repository),
                ) {
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
                // By tag, the registry's own digest header is what to check.
                let announced = response
                    .header("Docker-Content-Digest")
                    .and_then(|d| d.parse::<Sha256Digest>().ok());
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
                if let Some(expected) = pinned.or(announced) {
                    if digest != expected {
                        return Err(RegistryError::DigestMismatch {
                            what: "manifest",
                            url,
                            expected,
                            actual: digest,
                        });
                    }
                }
                let media_type = match header_type.filter(|t| MANIFEST_TYPES.contains(&t.as_str()))
                {
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
        let head = self.retrying(|_| {
            self.call(
                "HEAD",
                &url,
                &[("Accept", &accept)],
                Body::Empty,
                &Scope::pull(repository),
            )
        });
        match head {
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
    /// the bytes received so far. Returns the size. The bytes are checked
    /// against `digest` (by `out` when it keeps a digest, as the store's blob
    /// writer does, so a blob is hashed once) and `size`. A body that breaks
    /// off is resumed from where it stopped (`Range`; from the start when
    /// the registry ignores it); damaged bytes are fetched again; both
    /// within [`Options::retry`].
    pub fn fetch_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
        size: Option<u64>,
        out: &mut dyn BlobSink,
        progress: &dyn Fn(u64),
    ) -> Result<u64, RegistryError> {
        let own_hash = out.digest().is_none();
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let restart = |out: &mut dyn BlobSink, hasher: &mut Sha256, total: &mut u64| {
            out.restart()
                .map_err(io_error(format!("restarting blob {digest}")))?;
            *hasher = Sha256::new();
            *total = 0;
            Ok::<(), RegistryError>(())
        };
        self.read_from(registry, |base| {
            let url = format!("{base}/v2/{repository}/blobs/{digest}");
            self.retrying(|_| {
                let range = (total > 0).then(|| format!("bytes={total}-"));
                let headers: Vec<(&str, &str)> =
                    range.iter().map(|r| ("Range", r.as_str())).collect();
                let response =
                    self.call("GET", &url, &headers, Body::Empty, &Scope::pull(repository))?;
                if total > 0 && response.status() != 206 {
                    // The whole blob again: what was written goes.
                    restart(out, &mut hasher, &mut total)?;
                }
                let mut reader = response.into_reader();
                let mut buf = vec![0u8; 1 << 20];
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
                    if own_hash {
                        hasher.update(&buf[..n]);
                    }
                    out.write_all(&buf[..n])
                        .map_err(io_error(format!("storing blob {digest}")))?;
                    total += n as u64;
                    progress(total);
                }
                let actual = match out.digest() {
                    Some(d) => d,
                    None => Sha256Digest::from_bytes(hasher.clone().finalize().into()),
                };
                let failed = if size.is_some_and(|expected| expected != total) {
                    Some(RegistryError::SizeMismatch {
                        digest: *digest,
                        url: url.clone(),
                        expected: size.unwrap_or(0),
                        actual: total,
                    })
                } else if actual != *digest {
                    Some(RegistryError::DigestMismatch {
                        what: "blob",
                        url: url.clone(),
                        expected: *digest,
                        actual,
                    })
                } else {
                    None
                };
                match failed {
                    Some(e) => {
                        // Damaged: start over on the next try.
                        restart(out, &mut hasher, &mut total)?;
                        Err(e)
                    }
                    None => Ok(total),
                }
            })
        })
    }

    /// Whether `repository` has blob `digest` (a `HEAD`, asking for read
    /// access).
    pub fn has_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
    ) -> Result<bool, RegistryError> {
        self.blob_exists(registry, repository, digest, &Scope::pull(repository))
    }

    /// [`Registry::has_blob`] as a push asks it: with the push scope, so
    /// that a push needs one token.
    pub(crate) fn blob_exists(
        &self,
        registry: &str,
        repository: &str,
        digest: &Sha256Digest,
        scope: &Scope,
    ) -> Result<bool, RegistryError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base_url(registry));
        match self.retrying(|_| self.call("HEAD", &url, &[], Body::Empty, scope)) {
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
        let scope = match mount_from {
            Some(from) => Scope::mount(repository, from),
            None => Scope::push(repository),
        };
        let response = self.retrying(|_| self.call("POST", &url, &[], Body::Bytes(&[]), &scope))?;
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

    /// Where an interrupted upload stands: the session's URL and the bytes
    /// the registry has (`GET` of the session: `Range: 0-N`), or `None`
    /// when the session is gone.
    fn upload_status(
        &self,
        base: &str,
        location: &str,
        scope: &Scope,
    ) -> Result<Option<(String, u64)>, RegistryError> {
        match self.call("GET", location, &[], Body::Empty, scope) {
            Ok(response) => {
                let next = response
                    .header("Location")
                    .map_or_else(|| location.to_string(), |l| absolute(base, l));
                // `Range: 0-N` holds bytes 0..=N; the distribution registry
                // also says `0-0` for an empty session (its end is clamped
                // at 0), so `0-0` is read as nothing received: resending one
                // byte is safe, skipping one is not.
                let have = response
                    .header("Range")
                    .and_then(|r| r.rsplit('-').next()?.trim().parse::<u64>().ok())
                    .map_or(0, |end| if end == 0 { 0 } else { end + 1 });
                Ok(Some((next, have)))
            }
            Err(RegistryError::Status {
                status: 404 | 400, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends blob `digest` (`size` bytes; `source(offset)` reads them from
    /// `offset` on) into the upload `session` (from
    /// [`Registry::start_upload`] for `repository`): one `PUT` up to
    /// [`Options::chunk_size`], else `PATCH` chunks with `Content-Range`
    /// then a closing `PUT`. `progress` gets the bytes sent so far. The
    /// requests carry what the `POST` that opened the session was authorized
    /// with (their bodies cannot be sent twice). A request that fails is not
    /// repeated blindly: the session is asked how much it has and the upload
    /// resumes from there (or starts over in a new session when it is gone),
    /// within [`Options::retry`].
    #[allow(clippy::too_many_arguments)]
    pub fn upload(
        &self,
        registry: &str,
        repository: &str,
        session: &str,
        digest: &Sha256Digest,
        size: u64,
        source: &dyn Fn(u64) -> std::io::Result<Box<dyn Read>>,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        let base = self.base_url(registry);
        let octets = ("Content-Type", "application/octet-stream");
        let scope = Scope::push(repository);
        let chunk = self.options.chunk_size.max(1);
        let open = |offset: u64| {
            source(offset).map_err(io_error(format!("reading blob {digest} to upload")))
        };
        let mut location = session.to_string();
        let mut sent = 0u64;
        self.retrying(|attempt| {
            if attempt > 0 {
                // The closing PUT may have landed before its answer was lost.
                if self.blob_exists(registry, repository, digest, &scope)? {
                    progress(size);
                    return Ok(());
                }
                // Where did the last try leave the session?
                match self.upload_status(&base, &location, &scope)? {
                    Some((next, have)) if have <= size => {
                        location = next;
                        sent = have;
                    }
                    _ => match self.start_upload(registry, repository, digest, None)? {
                        Upload::Session(fresh) => {
                            location = fresh;
                            sent = 0;
                        }
                        Upload::Mounted => return Ok(()),
                    },
                }
            }
            if size <= chunk && sent == 0 {
                let url = with_query(&location, &format!("digest={digest}"));
                let mut body = open(0)?;
                self.call(
                    "PUT",
                    &url,
                    &[octets],
                    Body::Reader(&mut body, size),
                    &scope,
                )?;
                progress(size);
                return Ok(());
            }
            while sent < size {
                let len = chunk.min(size - sent);
                let range = format!("{}-{}", sent, sent + len - 1);
                let mut part = Read::take(open(sent)?, len);
                let response = self.call(
                    "PATCH",
                    &location,
                    &[octets, ("Content-Range", &range)],
                    Body::Reader(&mut part, len),
                    &scope,
                )?;
                if let Some(next) = response.header("Location") {
                    location = absolute(&base, next);
                }
                sent += len;
                progress(sent);
            }
            let url = with_query(&location, &format!("digest={digest}"));
            self.call("PUT", &url, &[octets], Body::Bytes(&[]), &scope)?;
            Ok(())
        })
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
        let response = self.retrying(|_| {
            self.call(
                "PUT",
                &url,
                &[("Content-Type", media_type)],
                Body::Bytes(bytes),
                &Scope::push(repository),
            )
        })?;
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
        scope: &Scope,
    ) -> Result<Vec<String>, RegistryError> {
        let mut out = Vec::new();
        let mut url = first;
        for _ in 0..10_000 {
            let (next, value) = self.retrying(|_| {
                let response = self.call("GET", &url, &[], Body::Empty, scope)?;
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
                // A body cut short is not JSON: the transport's fault.
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| RegistryError::Transport {
                        url: url.clone(),
                        message: format!("the answer is not JSON: {e}"),
                    })?;
                Ok((next, value))
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
        match self.paginated(&base, first, "repositories", &Scope::catalog()) {
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
        match self.paginated(&base, first, "tags", &Scope::pull(repository)) {
            Err(RegistryError::Status { status: 404, .. }) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Whether the registry answers the API's base endpoint (`/v2/`) at all
    /// (any status: 401 also means it is there).
    pub fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base_url(registry));
        match self.send("GET", &url, &[], &mut Body::Empty, None) {
            Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
            other => Self::answer("GET", &url, other).map(|_| ()),
        }
    }

    /// Checks that `registry` lets this client in: `GET /v2/` answered
    /// with the challenge flow (Basic auth, or a token with no scope), as
    /// `docker login` checks. A registry that asks for nothing lets
    /// anyone in. A `401` with the keychain's credentials is
    /// [`RegistryError::AuthRefused`].
    pub fn check_login(&self, registry: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base_url(registry));
        self.call("GET", &url, &[], Body::Empty, &Scope::none())
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A tiny HTTP server on `ip` answering each request (its head, as
    /// text) with `answer`'s response; what it was asked, in order.
    struct Server {
        addr: String,
        seen: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        fn start(ip: &str, answer: impl Fn(&str) -> String + Send + 'static) -> Self {
            let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => break,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let response = answer(&head);
                    log.lock().expect("log").push(head);
                    let _ = stream.write_all(response.as_bytes());
                }
            });
            Self { addr, seen }
        }

        fn seen(&self) -> Vec<String> {
            self.seen.lock().expect("log").clone()
        }
    }

    fn respond(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn authorization(head: &str) -> Option<String> {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        })
    }

    /// The token flow against a registry on 127.0.0.1 whose blob is
    /// redirected to storage on 127.0.0.2: the token is asked for once with
    /// the credentials and the scope, sent to the registry only, and
    /// `Authorization` never reaches the other host.
    #[test]
    fn tokens_are_cached_and_never_cross_hosts() {
        // Another host: all of 127.0.0.0/8 is loopback on Linux.
        let storage = Server::start("127.0.0.2", |_| respond("200 OK", "", "hello"));
        let tokens = Server::start("127.0.0.1", |head| {
            if authorization(head).as_deref() == Some("Basic dTpw") {
                respond("200 OK", "", r#"{"access_token": "T1", "expires_in": 300}"#)
            } else {
                respond("401 Unauthorized", "", "")
            }
        });
        let realm = format!("http://{}/token", tokens.addr);
        let blob_url = format!("http://{}/blob", storage.addr);
        let registry_server = Server::start("127.0.0.1", move |head| {
            if authorization(head).as_deref() == Some("Bearer T1") {
                respond(
                    "307 Temporary Redirect",
                    &format!("Location: {blob_url}\r\n"),
                    "",
                )
            } else {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"reg\",scope=\"repository:team/app:pull\"\r\n"
                );
                respond("401 Unauthorized", &challenge, "")
            }
        });
        let host = registry_server.addr.clone();
        let keychain = Keychain::anonymous().with_credentials(
            &host,
            auth::Credentials {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let options = Options {
            keychain,
            ..Options::default()
        };
        let client = Registry::new(&forge_http::Client::new(), options);
        let digest = forge_cache::store::sha256(b"hello");
        for _ in 0..2 {
            let mut out = Vec::new();
            let n = client
                .fetch_blob(&host, "team/app", &digest, Some(5), &mut out, &|_| {})
                .expect("the blob comes through the redirect");
            assert_eq!((n, out.as_slice()), (5, &b"hello"[..]));
        }
        // One 401, then the token, sent proactively the second time.
        let asked = registry_server.seen();
        let auths: Vec<Option<String>> = asked.iter().map(|h| authorization(h)).collect();
        assert_eq!(
            auths,
            [None, Some("Bearer T1".into()), Some("Bearer T1".into())],
            "{asked:?}"
        );
        let token_requests = tokens.seen();
        assert_eq!(token_requests.len(), 1, "{token_requests:?}");
        assert!(
            token_requests[0].starts_with(
                "GET /token?service=reg&scope=repository%3Ateam%2Fapp%3Apull&account=u "
            ),
            "{token_requests:?}"
        );
        // The storage host got both downloads, never with Authorization.
        let fetched = storage.seen();
        assert_eq!(fetched.len(), 2, "{fetched:?}");
        assert!(
            fetched.iter().all(|h| authorization(h).is_none()),
            "{fetched:?}"
        );
    }

    /// A token is used until it expires, then a new one is fetched before
    /// the request (no second 401).
    #[test]
    fn expired_tokens_are_fetched_again() {
        let tokens = Server::start("127.0.0.1", |head| {
            // `expires_in` 1: gone at once (less the margin).
            let life = if head.contains("scope=repository%3Ashort") {
                1
            } else {
                300
            };
            respond(
                "200 OK",
                "",
                &format!(r#"{{"token": "T", "expires_in": {life}}}"#),
            )
        });
        let realm = format!("http://{}/token", tokens.addr);
        let server = Server::start("127.0.0.1", move |head| {
            if authorization(head).as_deref() == Some("Bearer T") {
                respond("200 OK", "", r#"{"tags": []}"#)
            } else {
                let challenge = format!("WWW-Authenticate: Bearer realm=\"{realm}\"\r\n");
                respond("401 Unauthorized", &challenge, "")
            }
        });
        let client = Registry::new(
            &forge_http::Client::new(),
            Options {
                keychain: Keychain::anonymous(),
                ..Options::default()
            },
        );
        for repository in ["long", "long", "long", "short", "short", "short"] {
            client.tags(&server.addr, repository).expect("tags");
        }
        let scopes: Vec<String> = tokens
            .seen()
            .iter()
            .map(|h| h.split_whitespace().nth(1).unwrap_or("").to_string())
            .collect();
        assert_eq!(
            scopes,
            [
                "/token?scope=repository%3Along%3Apull",
                "/token?scope=repository%3Ashort%3Apull",
                "/token?scope=repository%3Ashort%3Apull",
                "/token?scope=repository%3Ashort%3Apull",
            ]
        );
        // Only the very first request was refused.
        let refused = server
            .seen()
            .iter()
            .filter(|h| authorization(h).is_none())
            .count();
        assert_eq!(refused, 1);
    }

    /// Basic auth: learned from the first 401, then sent with every
    /// request; wrong credentials are refused with a clear error, none at
    /// all ask for `forge login`.
    #[test]
    fn basic_auth_and_its_errors() {
        let server = Server::start("127.0.0.1", |head| match authorization(head).as_deref() {
            Some("Basic dTpw") => respond("200 OK", "", r#"{"tags": ["1"]}"#),
            _ => respond(
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"r\"\r\nContent-Type: application/json\r\n",
                r#"{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}"#,
            ),
        });
        let host = server.addr.clone();
        let with = |password: &str| {
            let keychain = Keychain::anonymous().with_credentials(
                &host,
                auth::Credentials {
                    username: "u".into(),
                    password: password.into(),
                },
            );
            Registry::new(
                &forge_http::Client::new(),
                Options {
                    keychain,
                    ..Options::default()
                },
            )
        };
        let good = with("p");
        assert_eq!(good.tags(&host, "a").expect("tags"), ["1"]);
        assert_eq!(good.tags(&host, "b").expect("tags"), ["1"]);
        good.check_login(&host).expect("logged in");
        // 401, then Basic from then on.
        assert_eq!(server.seen().len(), 4, "{:?}", server.seen());
        let err = with("wrong").tags(&host, "a").expect_err("refused");
        assert!(
            matches!(&err, RegistryError::AuthRefused { username, .. } if username == "u"),
            "{err:?}"
        );
        assert!(err.to_string().contains("UNAUTHORIZED"), "{err}");
        let anonymous = Registry::new(
            &forge_http::Client::new(),
            Options {
                keychain: Keychain::anonymous(),
                ..Options::default()
            },
        );
        let err = anonymous.tags(&host, "a").expect_err("refused");
        assert!(matches!(err, RegistryError::AuthRequired { .. }), "{err:?}");
        assert!(err.is_input_error());
    }

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
