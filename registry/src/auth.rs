//! Registry authentication: where credentials come from, what a registry's
//! `401` asks for, and the tokens it takes.
//!
//! **Credentials** are read from files in docker's `config.json` format
//! (`{"auths": {"host:port": {"auth": base64("user:password")}},
//! "credsStore": NAME, "credHelpers": {"host:port": NAME}}`), in this order
//! (the first that knows the registry wins):
//!
//! 1. forge's own, `$XDG_CONFIG_HOME/forge/auth.json`
//!    (`~/.config/forge/auth.json`), which `forge login` writes (mode 0600,
//!    through a temp file and a rename);
//! 2. docker's, `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`);
//! 3. podman's, `$REGISTRY_AUTH_FILE`, else
//!    `$XDG_RUNTIME_DIR/containers/auth.json` and
//!    `$XDG_CONFIG_HOME/containers/auth.json`.
//!
//! In one file, a `credHelpers` entry for the registry comes first, then the
//! `credsStore` helper, then the `auths` entry. A `credsStore` helper that
//! is not installed is passed over (Docker Desktop leaves `desktop`
//! behind); one named for the registry in `credHelpers` is an error. A
//! helper is the program `docker-credential-NAME` on `PATH`, spoken to in
//! docker's protocol:
//! `get` (the server on stdin, `{"ServerURL", "Username", "Secret"}` on
//! stdout), `store` (that JSON on stdin) and `erase` (the server on stdin).
//! docker.io is `https://index.docker.io/v1/` in these files and to helpers,
//! as docker writes it; any other registry is its `host[:port]`. Entries
//! naming a repository path (podman's `host/namespace`) and identity tokens
//! (`identitytoken`, `<token>` from a helper) are not used.
//!
//! **Challenges.** A registry that wants credentials answers `401` with a
//! `WWW-Authenticate` challenge: `Basic realm=…` (send the user and password
//! with every request) or `Bearer realm=…,service=…,scope=…` (get a token
//! from the realm: `GET realm?service=&scope=` with the credentials as Basic
//! auth, or anonymously without any, and send it as `Bearer`). The client
//! learns each host's challenge from its first `401` and from then on sends
//! the Basic header, or a token for the request's scope, with every request
//! to that host, fetching a token it lacks before the request rather than
//! after a second `401`.
//!
//! **Tokens** are cached in memory, one per (host, scope), until they expire
//! (`expires_in`, 60 s when the answer has none, less a margin of 10 s);
//! the threads of a pull or push share them, and a token being fetched is
//! waited for, not fetched twice. Scopes are `repository:NAME:pull` for
//! reads, `repository:NAME:pull,push` for everything a push does (its `HEAD`s
//! too, so a push needs one token), `repository:FROM:pull` added for a
//! mount, and `registry:catalog:*` for the catalog.
//!
//! **Uploads.** A request whose body is a one-shot reader (an upload's
//! `PUT` or `PATCH`) cannot be sent again after a `401`. It follows the
//! `POST` that opened its upload session, which taught the client the
//! host's challenge, so it goes with the push scope's token (fetched before
//! it if the cached one has expired) or the Basic header; a `401` to it
//! anyway is an error, not a retry.
//!
//! **The cross-host rule.** `Authorization` goes only to the host whose
//! challenge asked for it: credentials and tokens are looked up by the
//! request URL's own host, and the token request carries the credentials to
//! the realm's host only. Redirects (a blob `GET` sent on to blob storage)
//! are followed by `ureq`, which drops `Authorization` on every redirect
//! (its `RedirectAuthHeaders::Never` default, checked by a test with two
//! loopback hosts), a redirect to the same host included: a registry that
//! redirects to itself and wants credentials there is not served. Layers'
//! foreign `urls` are never fetched: blobs come from the registry (or its
//! mirrors) only.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::RegistryError;

/// docker.io's key in docker's credential files and to credential helpers.
pub const DOCKER_IO_KEY: &str = "https://index.docker.io/v1/";

/// How long a token lives when its answer does not say.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// A token is not used in the last seconds of its life.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

/// A user name and password (or a helper's secret).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The `Authorization` value of Basic auth.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    /// Decodes docker's `auth` value (base64 of `user:password`).
    pub fn from_auth(value: &str) -> Option<Self> {
        let value = value.trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value))
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (username, password) = text.split_once(':')?;
        (!username.is_empty()).then(|| Self {
            username: username.to_string(),
            password: password.to_string(),
        })
    }
}

/// Credentials and where they were found (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The credentials.
    pub credentials: Credentials,
    /// `from ~/.docker/config.json`, `from docker-credential-NAME`, ...
    pub origin: String,
}

/// The registry name of a `forge login` argument: `host[:port]`, with a
/// scheme and path dropped, and docker.io's aliases (`index.docker.io`,
/// `registry-1.docker.io`, `https://index.docker.io/v1/`) as `docker.io`.
pub fn registry_name(input: &str) -> String {
    let rest = input
        .strip_prefix("https://")
        .or_else(|| input.strip_prefix("http://"))
        .unwrap_or(input);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "" => {
            forge_cache::reference::DEFAULT_REGISTRY.to_string()
        }
        _ => host,
    }
}

/// A registry's key in docker's files and to helpers.
pub fn server_key(registry: &str) -> String {
    if registry == forge_cache::reference::DEFAULT_REGISTRY {
        DOCKER_IO_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// Whether the key `key` of a credentials file names `registry`.
fn key_names(key: &str, registry: &str) -> bool {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let host = match bare {
        // A URL: its host (docker writes `https://index.docker.io/v1/`).
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        // A name with a path is podman's per-namespace entry: not the host's.
        None if key.contains('/') => return false,
        None => key,
    };
    registry_name(host) == registry
}

/// The user's home directory.
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// forge's own credentials file: `$XDG_CONFIG_HOME/forge/auth.json`, else
/// `~/.config/forge/auth.json`.
pub fn forge_auth_file() -> Option<PathBuf> {
    let base = env_dir("XDG_CONFIG_HOME").or_else(|| Some(home()?.join(".config")))?;
    Some(base.join("forge").join("auth.json"))
}

/// docker's: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_file() -> Option<PathBuf> {
    let dir = env_dir("DOCKER_CONFIG").or_else(|| Some(home()?.join(".docker")))?;
    Some(dir.join("config.json"))
}

/// podman's: `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`
/// and `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/…`).
pub fn podman_auth_files() -> Vec<PathBuf> {
    if let Some(file) = env_dir("REGISTRY_AUTH_FILE") {
        return vec![file];
    }
    let mut files = Vec::new();
    if let Some(run) = env_dir("XDG_RUNTIME_DIR") {
        files.push(run.join("containers").join("auth.json"));
    }
    if let Some(config) = env_dir("XDG_CONFIG_HOME").or_else(|| Some(home()?.join(".config"))) {
        files.push(config.join("containers").join("auth.json"));
    }
    files
}

/// Where credentials are looked for (see the module documentation).
#[derive(Clone, Default)]
pub struct Keychain {
    files: Vec<PathBuf>,
    given: BTreeMap<String, Credentials>,
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keychain")
            .field("files", &self.files)
            .field("given", &self.given.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One credentials file, as read.
#[derive(Debug, Default, serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl AuthFile {
    /// The file at `path`; none if it does not exist.
    fn read(path: &Path) -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(Some(Self::default()));
        }
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{} is not a credentials file: {e}", path.display()))
    }

    /// The helper this file names for `registry`, if any, and whether by
    /// name (`credHelpers`) rather than for every registry (`credsStore`).
    fn helper_for(&self, registry: &str) -> Option<(&str, bool)> {
        let named = self
            .cred_helpers
            .iter()
            .find(|(key, _)| key_names(key, registry))
            .map(|(_, name)| (name.as_str(), true));
        named
            .or(self.creds_store.as_deref().map(|name| (name, false)))
            .filter(|(name, _)| !name.is_empty())
    }

    fn entry_for(&self, registry: &str) -> Option<Credentials> {
        // The exact key first, then any spelling of the same host.
        let exact = self.auths.get(&server_key(registry));
        let entry = exact.or_else(|| {
            self.auths
                .iter()
                .find(|(key, _)| key_names(key, registry))
                .map(|(_, e)| e)
        })?;
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            return Credentials::from_auth(auth);
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        }
    }
}

impl Keychain {
    /// No credentials at all: anonymous access only.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// The user's files, in the order of the module documentation.
    pub fn from_env() -> Self {
        let mut files: Vec<PathBuf> = forge_auth_file().into_iter().collect();
        files.extend(docker_config_file());
        files.extend(podman_auth_files());
        Self::with_files(files)
    }

    /// These files, read in this order.
    pub fn with_files(files: Vec<PathBuf>) -> Self {
        Self {
            files,
            given: BTreeMap::new(),
        }
    }

    /// `self`, with `credentials` for `registry` taking precedence over the
    /// files (what `forge login` checks before it saves them).
    pub fn with_credentials(mut self, registry: &str, credentials: Credentials) -> Self {
        self.given.insert(registry.to_string(), credentials);
        self
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The credentials for `registry` (`host[:port]`, `docker.io`), if any
    /// file or helper has them.
    pub fn lookup(&self, registry: &str) -> Result<Option<Found>, RegistryError> {
        if let Some(credentials) = self.given.get(registry) {
            return Ok(Some(Found {
                credentials: credentials.clone(),
                origin: "given to forge login".into(),
            }));
        }
        let failed = |reason: String| RegistryError::Credentials {
            registry: registry.to_string(),
            reason,
        };
        for path in &self.files {
            let Some(file) = AuthFile::read(path).map_err(failed)? else {
                continue;
            };
            if let Some((helper, named)) = file.helper_for(registry) {
                match helper_get(helper, &server_key(registry)) {
                    Ok(Some(credentials)) => {
                        return Ok(Some(Found {
                            credentials,
                            origin: format!("from docker-credential-{helper}"),
                        }))
                    }
                    Ok(None) => {}
                    // A `credsStore` left behind (Docker Desktop's
                    // `desktop` on a machine without it) is no reason to
                    // fail every registry; one named for this registry is.
                    Err(HelperError::Missing(_)) if !named => {}
                    Err(HelperError::Missing(e) | HelperError::Failed(e)) => {
                        return Err(failed(format!("{e} (named in {})", path.display())))
                    }
                }
            }
            if let Some(credentials) = file.entry_for(registry) {
                return Ok(Some(Found {
                    credentials,
                    origin: format!("from {}", path.display()),
                }));
            }
        }
        Ok(None)
    }
}

/// Where `forge login` put credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// In the file, base64-encoded.
    File(PathBuf),
    /// With the credential helper `docker-credential-NAME`.
    Helper(String),
}

/// Reads a credentials file as JSON to change it (keeping what forge does
/// not know); an object.
fn read_object(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(Default::default());
    }
    match serde_json::from_str(&text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err(format!("{} is not a JSON object", path.display())),
        Err(e) => Err(format!("{} is not a credentials file: {e}", path.display())),
    }
}

/// Writes `bytes` to `path` readable by the user only (0600; its directory
/// 0700 if created), through a temp file renamed into place.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "auth.json".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_object(
    path: &Path,
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let mut text =
        serde_json::to_string_pretty(&serde_json::Value::Object(map)).map_err(|e| e.to_string())?;
    text.push('\n');
    write_private(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The helper `map` (a credentials file) names for `registry`.
fn helper_in(map: &serde_json::Map<String, serde_json::Value>, registry: &str) -> Option<String> {
    let helpers = map.get("credHelpers").and_then(|v| v.as_object());
    helpers
        .and_then(|h| {
            h.iter()
                .find(|(key, _)| key_names(key, registry))
                .and_then(|(_, v)| v.as_str())
        })
        .or_else(|| map.get("credsStore").and_then(|v| v.as_str()))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
}

/// Saves `credentials` for `registry` in the credentials file `path`
/// (forge's own): with the helper the file names for the registry, else in
/// its `auths`, replacing any entry for the same registry.
pub fn store(
    path: &Path,
    registry: &str,
    credentials: &Credentials,
) -> Result<Stored, RegistryError> {
    let failed = |reason: String| RegistryError::Credentials {
        registry: registry.to_string(),
        reason,
    };
    let mut map = read_object(path).map_err(failed)?;
    if let Some(helper) = helper_in(&map, registry) {
        helper_store(&helper, &server_key(registry), credentials).map_err(failed)?;
        return Ok(Stored::Helper(helper));
    }
    let auths = map
        .entry("auths")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    if !auths.is_object() {
        *auths = serde_json::Value::Object(Default::default());
    }
    if let Some(auths) = auths.as_object_mut() {
        auths.retain(|key, _| !key_names(key, registry));
        let pair = format!("{}:{}", credentials.username, credentials.password);
        auths.insert(
            server_key(registry),
            serde_json::json!({
                "auth": base64::engine::general_purpose::STANDARD.encode(pair)
            }),
        );
    }
    write_object(path, map).map_err(failed)?;
    Ok(Stored::File(path.to_path_buf()))
}

/// Removes the credentials for `registry` from the credentials file `path`
/// (and `erase`s them from its helper, if it names one). Whether there were
/// any.
pub fn erase(path: &Path, registry: &str) -> Result<bool, RegistryError> {
    let failed = |reason: String| RegistryError::Credentials {
        registry: registry.to_string(),
        reason,
    };
    let mut map = read_object(path).map_err(failed)?;
    let mut removed = false;
    if let Some(helper) = helper_in(&map, registry) {
        removed |= helper_erase(&helper, &server_key(registry)).map_err(failed)?;
    }
    if let Some(auths) = map.get_mut("auths").and_then(|a| a.as_object_mut()) {
        let before = auths.len();
        auths.retain(|key, _| !key_names(key, registry));
        if auths.len() != before {
            removed = true;
            write_object(path, map).map_err(failed)?;
        }
    }
    Ok(removed)
}

/// A helper's name becomes a program name: letters, digits, `.`, `_`, `-`.
fn helper_program(name: &str) -> Result<String, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("`{name}` is not a credential helper's name"));
    }
    Ok(format!("docker-credential-{name}"))
}

/// Why a helper gave nothing.
enum HelperError {
    /// It is not installed.
    Missing(String),
    /// It failed, or answered something else than its protocol.
    Failed(String),
}

impl From<HelperError> for String {
    fn from(e: HelperError) -> Self {
        match e {
            HelperError::Missing(m) | HelperError::Failed(m) => m,
        }
    }
}

/// Runs `docker-credential-NAME action` with `input` on stdin: (success,
/// stdout, and stderr after a failure).
fn run_helper(name: &str, action: &str, input: &[u8]) -> Result<(bool, String), HelperError> {
    let program = helper_program(name).map_err(HelperError::Failed)?;
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HelperError::Missing(format!(
                "the credential helper {program} is not installed (not on PATH)"
            )),
            _ => HelperError::Failed(format!("cannot run {program}: {e}")),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read its input is its own business.
        let _ = stdin.write_all(input);
    }
    let output = child
        .wait_with_output()
        .map_err(|e| HelperError::Failed(format!("{program} {action}: {e}")))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        text.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    Ok((output.status.success(), text))
}

/// docker's helpers say this when they have nothing for a server.
fn is_not_found(output: &str) -> bool {
    output.contains("credentials not found")
}

fn helper_get(name: &str, server: &str) -> Result<Option<Credentials>, HelperError> {
    let (ok, output) = run_helper(name, "get", server.as_bytes())?;
    if !ok {
        if is_not_found(&output) {
            return Ok(None);
        }
        return Err(HelperError::Failed(format!(
            "docker-credential-{name} get failed: {}",
            output.trim()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let answer: Answer = serde_json::from_str(output.trim()).map_err(|e| {
        HelperError::Failed(format!(
            "docker-credential-{name} get answered something other than its JSON: {e}"
        ))
    })?;
    // `<token>` marks an identity token, which forge does not use.
    if answer.username.is_empty() || answer.username == "<token>" {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

fn helper_store(name: &str, server: &str, credentials: &Credentials) -> Result<(), String> {
    let input = serde_json::json!({
        "ServerURL": server,
        "Username": credentials.username,
        "Secret": credentials.password,
    });
    let (ok, output) = run_helper(name, "store", input.to_string().as_bytes())?;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "docker-credential-{name} store failed: {}",
            output.trim()
        ))
    }
}

fn helper_erase(name: &str, server: &str) -> Result<bool, String> {
    let (ok, output) = run_helper(name, "erase", server.as_bytes())?;
    if ok {
        Ok(true)
    } else if is_not_found(&output) {
        Ok(false)
    } else {
        Err(format!(
            "docker-credential-{name} erase failed: {}",
            output.trim()
        ))
    }
}

/// What a `401`'s `WWW-Authenticate` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Basic auth with the user and password.
    Basic,
    /// A token from `realm`.
    Bearer {
        /// The token service's URL.
        realm: String,
        /// `service=`, passed on to it.
        service: Option<String>,
        /// `scope=`, the access the request needs (space-separated in the
        /// header).
        scope: Vec<String>,
    },
}

/// Splits `WWW-Authenticate` values into (scheme, parameters) pairs:
/// `Bearer realm="https://a/token",service="r",scope="repository:x:pull"`.
fn parse_header(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let chars: Vec<char> = header.chars().collect();
    let mut i = 0;
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let skip = |i: &mut usize, set: &[char]| {
        while *i < chars.len() && set.contains(&chars[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && !matches!(chars[*i], ' ' | '\t' | ',' | '=' | '"') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        skip(&mut i, &[' ', '\t', ',']);
        let word = token(&mut i);
        if word.is_empty() {
            if i < chars.len() {
                i += 1;
            }
            continue;
        }
        let mut j = i;
        skip(&mut j, &[' ', '\t']);
        if j < chars.len() && chars[j] == '=' {
            // A parameter of the current challenge.
            i = j + 1;
            skip(&mut i, &[' ', '\t']);
            let value = if i < chars.len() && chars[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    v.push(chars[i]);
                    i += 1;
                }
                i += 1;
                v
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push((word.to_ascii_lowercase(), BTreeMap::new()));
        }
    }
    out
}

/// The challenge of `WWW-Authenticate` values: Bearer over Basic; none for
/// other schemes or a Bearer without a realm.
pub fn parse_challenge<S: AsRef<str>>(headers: &[S]) -> Option<Challenge> {
    let all: Vec<_> = headers
        .iter()
        .flat_map(|h| parse_header(h.as_ref()))
        .collect();
    let bearer = all.iter().find_map(|(scheme, params)| {
        if scheme != "bearer" {
            return None;
        }
        let realm = params.get("realm").filter(|r| !r.is_empty())?;
        Some(Challenge::Bearer {
            realm: realm.clone(),
            service: params.get("service").cloned(),
            scope: params
                .get("scope")
                .map(|s| s.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        })
    });
    bearer.or_else(|| {
        all.iter()
            .any(|(scheme, _)| scheme == "basic")
            .then_some(Challenge::Basic)
    })
}

/// The access a request needs, as token scopes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Scope(Vec<String>);

impl Scope {
    /// No particular access (`GET /v2/`).
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Reading `repository`.
    pub fn pull(repository: &str) -> Self {
        Self(vec![format!("repository:{repository}:pull")])
    }

    /// Writing `repository` (and reading it: a push asks what is there).
    pub fn push(repository: &str) -> Self {
        Self(vec![format!("repository:{repository}:pull,push")])
    }

    /// Writing `repository` with a blob mounted from `from`.
    pub fn mount(repository: &str, from: &str) -> Self {
        Self(vec![
            format!("repository:{repository}:pull,push"),
            format!("repository:{from}:pull"),
        ])
    }

    /// The catalog.
    pub fn catalog() -> Self {
        Self(vec!["registry:catalog:*".to_string()])
    }

    /// The scopes, as the token request's `scope=` parameters.
    pub fn scopes(&self) -> &[String] {
        &self.0
    }

    /// The cache key (the scopes, space-separated).
    fn key(&self) -> String {
        self.0.join(" ")
    }

    /// `self` with `more` merged in: the actions of a resource already
    /// named are joined, others added.
    pub fn merged(&self, more: &[String]) -> Self {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for scope in self.0.iter().chain(more) {
            let (resource, actions) = match scope.rsplit_once(':') {
                Some((r, a)) if r.contains(':') => (r.to_string(), a),
                _ => (scope.clone(), ""),
            };
            let actions = actions.split(',').filter(|a| !a.is_empty());
            match out.iter_mut().find(|(r, _)| *r == resource) {
                Some((_, have)) => {
                    for a in actions {
                        if !have.iter().any(|h| h == a) {
                            have.push(a.to_string());
                        }
                    }
                }
                None => out.push((resource, actions.map(str::to_string).collect())),
            }
        }
        Self(
            out.into_iter()
                .map(|(r, a)| {
                    if a.is_empty() {
                        r
                    } else {
                        format!("{r}:{}", a.join(","))
                    }
                })
                .collect(),
        )
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("/v2/")
        } else {
            f.write_str(&self.0.join(" "))
        }
    }
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
struct Token {
    value: String,
    until: Instant,
}

/// What a request was sent with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Sent {
    /// No `Authorization`.
    Nothing,
    /// Basic auth.
    Basic(String),
    /// This token.
    Bearer(String),
}

impl Sent {
    /// The `Authorization` value.
    pub(crate) fn header(&self) -> Option<String> {
        match self {
            Self::Nothing => None,
            Self::Basic(h) => Some(h.clone()),
            Self::Bearer(t) => Some(format!("Bearer {t}")),
        }
    }
}

/// The registry name of a URL's host (credentials are looked up by it):
/// `host[:port]` without a default port; `registry-1.docker.io` is
/// `docker.io`.
pub(crate) fn authority(url: &str) -> String {
    let (https, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => (false, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut host = rest[..end].to_ascii_lowercase();
    if let Some(at) = host.rfind('@') {
        host = host[at + 1..].to_string();
    }
    let default_port = if https { ":443" } else { ":80" };
    if let Some(bare) = host.strip_suffix(default_port) {
        host = bare.to_string();
    }
    registry_name(&host)
}

#[derive(Default)]
struct Learned {
    /// Each host's challenge, from its first `401`.
    challenges: HashMap<String, Challenge>,
    /// Tokens by (host, scope key).
    tokens: HashMap<(String, String), Token>,
    /// Credentials by host, once looked up (a helper runs once).
    credentials: HashMap<String, Option<Found>>,
}

/// What a client learned about authentication: challenges, tokens,
/// credentials (shared by its clones and their threads).
pub(crate) struct AuthState {
    keychain: Keychain,
    learned: Mutex<Learned>,
    /// Held while a token is fetched or credentials are looked up, so the
    /// threads of a pull wait for one fetch instead of each making one.
    fetching: Mutex<()>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("keychain", &self.keychain)
            .finish_non_exhaustive()
    }
}

/// Why a request ended with a `401`, for its error.
pub(crate) struct Refusal {
    /// The credentials used, if there were any.
    pub(crate) found: Option<Found>,
    /// What was refused.
    pub(crate) detail: String,
}

impl AuthState {
    pub(crate) fn new(keychain: Keychain) -> Self {
        Self {
            keychain,
            learned: Mutex::new(Learned::default()),
            fetching: Mutex::new(()),
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The credentials for `host` (looked up once).
    pub(crate) fn credentials(&self, host: &str) -> Result<Option<Found>, RegistryError> {
        if let Some(found) = self.learned().credentials.get(host) {
            return Ok(found.clone());
        }
        let _fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = self.learned().credentials.get(host) {
            return Ok(found.clone());
        }
        let found = self.keychain.lookup(host)?;
        self.learned()
            .credentials
            .insert(host.to_string(), found.clone());
        Ok(found)
    }

    /// What to send to `host` for `scope` before any `401`: nothing while
    /// its challenge is unknown; else Basic, or a token (cached, or fetched
    /// now).
    pub(crate) fn before(
        &self,
        agent: &ureq::Agent,
        host: &str,
        scope: &Scope,
    ) -> Result<Sent, RegistryError> {
        let challenge = self.learned().challenges.get(host).cloned();
        match challenge {
            None => Ok(Sent::Nothing),
            Some(Challenge::Basic) => Ok(match self.credentials(host)? {
                Some(found) => Sent::Basic(found.credentials.basic_header()),
                None => Sent::Nothing,
            }),
            Some(Challenge::Bearer { realm, service, .. }) => self
                .token(agent, host, scope, &realm, service.as_deref(), &[], None)
                .map(Sent::Bearer),
        }
    }

    /// After a `401` with `challenge` to a request sent with `sent`: what
    /// to send again, or why not.
    pub(crate) fn after(
        &self,
        agent: &ureq::Agent,
        host: &str,
        scope: &Scope,
        challenge: &Challenge,
        sent: &Sent,
    ) -> Result<Result<Sent, Refusal>, RegistryError> {
        self.learned()
            .challenges
            .insert(host.to_string(), challenge.clone());
        let found = self.credentials(host)?;
        match challenge {
            Challenge::Basic => Ok(match found {
                None => Err(Refusal {
                    found: None,
                    detail: String::new(),
                }),
                Some(found) => {
                    let header = found.credentials.basic_header();
                    if *sent == Sent::Basic(header.clone()) {
                        Err(Refusal {
                            found: Some(found),
                            detail: "the user name or password is wrong".into(),
                        })
                    } else {
                        Ok(Sent::Basic(header))
                    }
                }
            }),
            Challenge::Bearer {
                realm,
                service,
                scope: asked,
            } => {
                let stale = match sent {
                    Sent::Bearer(t) => Some(t.as_str()),
                    _ => None,
                };
                match self.token(agent, host, scope, realm, service.as_deref(), asked, stale) {
                    Ok(token) => Ok(Ok(Sent::Bearer(token))),
                    Err(RegistryError::Status {
                        status: 401 | 403,
                        url,
                        ..
                    }) => Ok(Err(Refusal {
                        found,
                        detail: format!("the token service {url} refused them"),
                    })),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// A token for `scope` at `host`: the cached one unless it is `stale`
    /// (refused) or expiring, else a new one from `realm` (asking for
    /// `scope` and the challenge's `asked` scopes).
    #[allow(clippy::too_many_arguments)]
    fn token(
        &self,
        agent: &ureq::Agent,
        host: &str,
        scope: &Scope,
        realm: &str,
        service: Option<&str>,
        asked: &[String],
        stale: Option<&str>,
    ) -> Result<String, RegistryError> {
        let key = (host.to_string(), scope.key());
        let cached = |learned: &mut Learned| {
            let token = learned.tokens.get(&key)?;
            if Some(token.value.as_str()) == stale || Instant::now() >= token.until {
                learned.tokens.remove(&key);
                return None;
            }
            Some(token.value.clone())
        };
        if let Some(token) = cached(&mut self.learned()) {
            return Ok(token);
        }
        let found = self.credentials(host)?;
        let _fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have fetched it meanwhile.
        if let Some(token) = self.learned().tokens.get(&key) {
            if Some(token.value.as_str()) != stale && Instant::now() < token.until {
                return Ok(token.value.clone());
            }
        }
        let scopes = scope.merged(asked);
        let token = fetch_token(
            agent,
            realm,
            service,
            scopes.scopes(),
            found.as_ref().map(|f| &f.credentials),
        )?;
        let value = token.value.clone();
        self.learned().tokens.insert(key, token);
        Ok(value)
    }
}

/// `GET realm?service=&scope=…` (with Basic auth when there are
/// credentials): the token of its `token` (or `access_token`) field.
fn fetch_token(
    agent: &ureq::Agent,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    credentials: Option<&Credentials>,
) -> Result<Token, RegistryError> {
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return Err(RegistryError::Protocol {
            url: realm.to_string(),
            reason: "the registry's token realm is not an http(s) URL".into(),
        });
    }
    let mut request = agent.get(realm);
    if let Some(service) = service {
        request = request.query("service", service);
    }
    for scope in scopes {
        request = request.query("scope", scope);
    }
    if let Some(credentials) = credentials {
        request = request
            .query("account", &credentials.username)
            .set("Authorization", &credentials.basic_header());
    }
    let url = request.url().to_string();
    let started = Instant::now();
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(status, response)) => {
            let mut text = String::new();
            let _ = response
                .into_reader()
                .take(64 << 10)
                .read_to_string(&mut text);
            return Err(RegistryError::Status {
                method: "GET",
                url: realm.to_string(),
                status,
                errors: serde_json::from_str::<crate::ErrorBody>(&text)
                    .map(|b| b.errors)
                    .unwrap_or_default(),
                retry_after: None,
            });
        }
        Err(ureq::Error::Transport(t)) => {
            return Err(RegistryError::Transport {
                url: realm.to_string(),
                message: match t.message() {
                    Some(m) => format!("{}: {m}", t.kind()),
                    None => t.kind().to_string(),
                },
            })
        }
    };
    let mut text = String::new();
    response
        .into_reader()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| RegistryError::Transport {
            url: url.clone(),
            message: e.to_string(),
        })?;
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let answer: Answer = serde_json::from_str(&text).map_err(|e| RegistryError::Protocol {
        url: realm.to_string(),
        reason: format!("the token service's answer is not JSON: {e}"),
    })?;
    let value = answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| RegistryError::Protocol {
            url: realm.to_string(),
            reason: "the token service's answer has no token".into(),
        })?;
    let life = Duration::from_secs(answer.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME));
    Ok(Token {
        value,
        until: started + life.saturating_sub(TOKEN_MARGIN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(&[
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ]),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: vec!["repository:library/busybox:pull".into()],
            })
        );
        assert_eq!(
            parse_challenge(&[r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        // Several challenges in one header, a quoted comma, two scopes,
        // an error parameter, case.
        assert_eq!(
            parse_challenge(&[
                r#"basic realm="a, b", BEARER realm=http://127.0.0.1:1/token, scope="repository:a:pull repository:b:pull,push", error="insufficient_scope""#
            ]),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: vec!["repository:a:pull".into(), "repository:b:pull,push".into()],
            })
        );
        assert_eq!(parse_challenge(&["Negotiate"]), None);
        assert_eq!(parse_challenge(&[r#"Bearer service="x""#]), None);
        assert_eq!(parse_challenge::<&str>(&[]), None);
        assert_eq!(parse_challenge(&["", ",,", "=\"", "Bearer realm=\""]), None);
    }

    #[test]
    fn scopes_merge_actions() {
        let push = Scope::push("team/app");
        assert_eq!(
            push.merged(&["repository:team/app:pull".into()]).scopes(),
            ["repository:team/app:pull,push"]
        );
        assert_eq!(
            Scope::pull("a")
                .merged(&["repository:a:push".into(), "registry:catalog:*".into()])
                .scopes(),
            ["repository:a:pull,push", "registry:catalog:*"]
        );
        assert_eq!(
            Scope::mount("b", "a").scopes(),
            ["repository:b:pull,push", "repository:a:pull"]
        );
        assert_eq!(Scope::none().merged(&[]).scopes(), [] as [String; 0]);
    }

    #[test]
    fn names_and_keys() {
        for (input, name) in [
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("https://registry.lan:5000/v2/", "registry.lan:5000"),
            ("docker.io", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("Registry.LAN", "registry.lan"),
        ] {
            assert_eq!(registry_name(input), name, "{input}");
        }
        assert_eq!(server_key("docker.io"), DOCKER_IO_KEY);
        assert_eq!(server_key("r:5000"), "r:5000");
        assert!(key_names(DOCKER_IO_KEY, "docker.io"));
        assert!(key_names("http://r:5000", "r:5000"));
        assert!(!key_names("r:5000/team", "r:5000"));
        assert!(!key_names("r:5001", "r:5000"));
        assert_eq!(authority("https://registry-1.docker.io/v2/x"), "docker.io");
        assert_eq!(authority("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(authority("https://r.lan:443/v2/?x"), "r.lan");
        assert_eq!(authority("http://u:p@r.lan:80"), "r.lan");
    }

    #[test]
    fn credentials_decode_and_hide() {
        let c = Credentials::from_auth("dXNlcjpwYTpzcw==").expect("decodes");
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(c.basic_header(), "Basic dXNlcjpwYTpzcw==");
        assert!(Credentials::from_auth("dXNlcjpwYTpzcw").is_some());
        assert!(Credentials::from_auth("not base64!").is_none());
        assert!(Credentials::from_auth("bm9jb2xvbg==").is_none());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("forge-registry-auth-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn files_are_read_in_order_and_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("files");
        let forge = dir.join("forge/auth.json");
        let docker = dir.join("docker.json");
        std::fs::write(
            &docker,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                "r:5000": {"auth": "ZG9ja2VyOmQ="}}, "psFormat": "x"}"#,
        )
        .expect("write");
        let keychain = Keychain::with_files(vec![forge.clone(), docker.clone()]);
        let found = keychain.lookup("docker.io").expect("reads").expect("found");
        assert_eq!(found.credentials.username, "hub");
        assert_eq!(found.origin, format!("from {}", docker.display()));
        assert_eq!(keychain.lookup("other:1").expect("reads"), None);

        let mine = Credentials {
            username: "me".into(),
            password: "secret".into(),
        };
        assert_eq!(
            store(&forge, "r:5000", &mine).expect("stores"),
            Stored::File(forge.clone())
        );
        let mode = std::fs::metadata(&forge)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // forge's file comes first.
        let found = keychain.lookup("r:5000").expect("reads").expect("found");
        assert_eq!(found.credentials, mine);
        store(&forge, "docker.io", &mine).expect("stores");
        let text = std::fs::read_to_string(&forge).expect("read");
        assert!(text.contains(DOCKER_IO_KEY), "{text}");
        assert!(erase(&forge, "r:5000").expect("erases"));
        assert!(!erase(&forge, "r:5000").expect("erases"));
        let found = keychain.lookup("r:5000").expect("reads").expect("found");
        assert_eq!(found.credentials.username, "docker");
        // A given pair wins over every file.
        let given = keychain.with_credentials("r:5000", mine.clone());
        assert_eq!(
            given
                .lookup("r:5000")
                .expect("reads")
                .expect("found")
                .credentials,
            mine
        );
        // A `credsStore` whose helper is not installed is passed over; a
        // helper named for the registry is not.
        std::fs::write(
            &docker,
            r#"{"credsStore": "forge-test-absent", "auths": {"r:5000": {"auth": "ZG9ja2VyOmQ="}}}"#,
        )
        .expect("write");
        let alone = Keychain::with_files(vec![docker.clone()]);
        let found = alone.lookup("r:5000").expect("reads").expect("found");
        assert_eq!(found.credentials.username, "docker");
        std::fs::write(
            &docker,
            r#"{"credHelpers": {"r:5000": "forge-test-absent"}}"#,
        )
        .expect("write");
        let err = alone.lookup("r:5000").expect_err("no helper");
        assert!(
            err.to_string()
                .contains("docker-credential-forge-test-absent is not installed"),
            "{err}"
        );
        std::fs::write(&docker, "{not json").expect("write");
        assert!(Keychain::with_files(vec![docker]).lookup("x:1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
