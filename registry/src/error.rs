//! The registry client's one error type.

use forge_cache::Sha256Digest;

/// One entry of a registry's error body (`{"errors": [{"code", "message"}]}`,
/// the distribution spec's error format).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RegistryErrorEntry {
    /// `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, `NAME_UNKNOWN`, `DENIED`, ...
    #[serde(default)]
    pub code: String,
    /// The registry's explanation.
    #[serde(default)]
    pub message: String,
}

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RegistryError {
    /// The registry answered with an error status.
    #[error("{method} {url}: the registry answered {status}{}", describe(.errors))]
    #[diagnostic(
        code(registry::status),
        help("check the name and the tag; a 401 or 403 means the registry wants credentials (`forge login REGISTRY`) or refuses them for this repository")
    )]
    Status {
        /// The request's method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's error entries, if its body had them.
        errors: Vec<RegistryErrorEntry>,
        /// How long its `Retry-After` asked to wait, if it sent one.
        retry_after: Option<std::time::Duration>,
    },
    /// The manifest or tag does not exist.
    #[error("{reference}: not found in the registry ({url})")]
    #[diagnostic(
        code(registry::not_found),
        help("check the repository name and the tag (`forge search REGISTRY/TERM` lists what the registry has)")
    )]
    NotFound {
        /// `registry/repository:tag` or `@digest`.
        reference: String,
        /// The URL asked.
        url: String,
    },
    /// The registry could not be reached, or the connection broke.
    #[error("cannot reach the registry at {url}: {message}")]
    #[diagnostic(
        code(registry::transport),
        help("check that the registry runs and its address; a plain-HTTP registry other than localhost must be listed as insecure in forge's config.toml")
    )]
    Transport {
        /// The URL asked.
        url: String,
        /// What the transport said.
        message: String,
    },
    /// Content that does not hash to the digest it was asked by.
    #[error("{what} from {url} has digest {actual}, not {expected}")]
    #[diagnostic(
        code(registry::digest_mismatch),
        help("the registry sent other bytes than it should: nothing was stored; try again, or check the registry (or a proxy) for corruption")
    )]
    DigestMismatch {
        /// "manifest" or "blob".
        what: &'static str,
        /// The URL.
        url: String,
        /// The digest asked for.
        expected: Sha256Digest,
        /// The digest of what came.
        actual: Sha256Digest,
    },
    /// A blob shorter or longer than its descriptor says.
    #[error("blob {digest} from {url}: {actual} bytes, the manifest says {expected}")]
    #[diagnostic(code(registry::size_mismatch))]
    SizeMismatch {
        /// The blob.
        digest: Sha256Digest,
        /// The URL.
        url: String,
        /// The descriptor's size.
        expected: u64,
        /// What came.
        actual: u64,
    },
    /// A response that does not follow the distribution spec.
    #[error("{url}: {reason}")]
    #[diagnostic(code(registry::protocol))]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The registry has no catalog (`/v2/_catalog`).
    #[error("the registry {registry} does not list its repositories (no /v2/_catalog)")]
    #[diagnostic(
        code(registry::no_catalog),
        help("search needs a registry with the catalog API, such as the CNCF distribution registry (docker-registry)")
    )]
    NoCatalog {
        /// The registry.
        registry: String,
    },
    /// The registry wants credentials, and none were found for it.
    #[error("{registry} wants credentials: {method} {url} was answered 401 Unauthorized, and there are none for {registry}")]
    #[diagnostic(
        code(registry::auth_required),
        help("log in first: `forge login {registry}` (forge also reads docker's ~/.docker/config.json and podman's auth.json, and their credential helpers)")
    )]
    AuthRequired {
        /// The registry (`host[:port]`).
        registry: String,
        /// The request's method.
        method: &'static str,
        /// The URL.
        url: String,
    },
    /// The registry (or its token service) refused the credentials, or
    /// they do not give the access asked for.
    #[error("{registry} refused the credentials of `{username}` ({origin}) for {scope}{detail}")]
    #[diagnostic(
        code(registry::auth_refused),
        help("check the user name and the password (`forge login {registry}` checks and saves new ones); if they are right, the user lacks this access to the repository")
    )]
    AuthRefused {
        /// The registry (`host[:port]`).
        registry: String,
        /// The user name used.
        username: String,
        /// Where the credentials came from (`from FILE`, `from a helper`).
        origin: String,
        /// The access asked for (`repository:team/app:pull,push`).
        scope: String,
        /// What the registry or its token service said (`: …`), if anything.
        detail: String,
    },
    /// A credentials file or a credential helper failed.
    #[error("credentials for {registry}: {reason}")]
    #[diagnostic(
        code(registry::credentials),
        help("fix or remove the file, or install the helper it names (docker-credential-NAME on PATH)")
    )]
    Credentials {
        /// The registry whose credentials were looked up or saved.
        registry: String,
        /// What went wrong.
        reason: String,
    },
    /// The store (reading what to push, writing what was pulled).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] forge_cache::CacheError),
    /// A multi-platform image without the platform asked for.
    #[error("{reference} has no image for {wanted} (it has: {available})")]
    #[diagnostic(
        code(registry::no_platform),
        help("pick one of its platforms with --platform")
    )]
    NoPlatform {
        /// What was pulled.
        reference: String,
        /// `os/arch[/variant]` asked for.
        wanted: String,
        /// The index's platforms.
        available: String,
    },
    /// Reading the local content to upload, or writing what was downloaded.
    #[error("{what}: {source}")]
    #[diagnostic(code(registry::io))]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn describe(errors: &[RegistryErrorEntry]) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (false, true) => e.code.clone(),
            _ => e.message.clone(),
        })
        .collect();
    format!(" ({})", parts.join("; "))
}

/// The registry's error entries of a [`RegistryError::Status`], as text
/// (empty for anything else).
pub(crate) fn describe_entries(error: &RegistryError) -> String {
    match error {
        RegistryError::Status { errors, .. } => describe(errors)
            .trim_start_matches(" (")
            .trim_end_matches(')')
            .to_string(),
        _ => String::new(),
    }
}

impl RegistryError {
    /// Whether another try may succeed: a broken connection, a retryable
    /// status (see [`crate::retry`]), or bytes that arrived damaged.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::DigestMismatch { .. } | Self::SizeMismatch { .. } => {
                true
            }
            Self::Status { status, .. } => crate::retry::retryable_status(*status),
            _ => false,
        }
    }

    /// Whether the error is the user's input (a name, a tag, a digest) rather
    /// than the environment (the network, the registry's state).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. }
                | Self::NoCatalog { .. }
                | Self::NoPlatform { .. }
                | Self::AuthRequired { .. }
                | Self::AuthRefused { .. }
        ) || matches!(self, Self::Status { status, .. } if (400..500).contains(status))
    }
}
