//! What lowering needs to know about base images, supplied by the caller.
//!
//! The frontend does no I/O beyond reading build files: facts about `FROM image`
//! come through [`BaseResolver`], which the CLI implements over the store (and later
//! a registry). [`Unresolved`] answers "unknown" for everything, which is what
//! `forge build --dry-run` and `forge graph` use.

/// Facts about a base image that change how a stage lowers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BaseImage {
    /// The manifest digest (`sha256:...`), part of cache keys.
    pub digest: String,
    /// `Env` of the image config, in order, as `(key, value)`.
    pub env: Vec<(String, String)>,
    /// `WorkingDir` (empty: `/`).
    pub workdir: String,
    /// `User`.
    pub user: String,
    /// `Shell` (empty: the default).
    pub shell: Vec<String>,
    /// `OnBuild` triggers, as stored in the config.
    pub onbuild: Vec<String>,
}

/// Looks up base images for lowering.
pub trait BaseResolver {
    /// Facts about `reference` for `platform`; `Ok(None)` when it is not known now
    /// (lowering then leaves values that could depend on it unexpanded).
    ///
    /// # Errors
    /// A message when looking it up failed for a reason the user must fix.
    fn resolve(&self, reference: &str, platform: Option<&str>)
        -> Result<Option<BaseImage>, String>;
}

/// A resolver that knows nothing: every base stays unresolved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unresolved;

impl BaseResolver for Unresolved {
    fn resolve(&self, _: &str, _: Option<&str>) -> Result<Option<BaseImage>, String> {
        Ok(None)
    }
}

/// A resolver backed by a fixed table (tests, and callers that pre-resolved).
#[derive(Debug, Clone, Default)]
pub struct FixedResolver {
    /// Reference → facts.
    pub images: std::collections::BTreeMap<String, BaseImage>,
}

impl BaseResolver for FixedResolver {
    fn resolve(&self, reference: &str, _: Option<&str>) -> Result<Option<BaseImage>, String> {
        Ok(self.images.get(reference).cloned())
    }
}
