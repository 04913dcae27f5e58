//! The intermediate representation (IR): what to build, with every variable expanded
//! and every scoping rule applied, in terms no longer tied to Dockerfile syntax.
//!
//! Both frontends (in `forge-frontend`) end here. The graph crate depends on this
//! crate and not on the frontend, so it cannot know Dockerfile syntax.
//!
//! **Invariant:** two build files that mean the same build lower to equal `Ir`
//! values. [`Origin`] (where a step was written) is provenance, not meaning, and
//! compares equal whatever it holds.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// A whole build: every stage of every image, and the named targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ir {
    /// All stages, in an order where a stage's base comes before it when the base is a stage.
    pub stages: Vec<Stage>,
    /// The images the user can ask for; a Dockerfile has one (its last stage, or `--target`).
    pub targets: Vec<Target>,
    /// Named groups of targets (forge.toml `[group.NAME]`).
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Ir {
    /// The stage with this id.
    pub fn stage(&self, id: StageId) -> Option<&Stage> {
        self.stages.get(id.0)
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Index of a stage in [`Ir::stages`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StageId(pub usize);

/// An image the user can build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The name (`forge build NAME`): the forge.toml image name; for a Dockerfile,
    /// its target stage name or `default`.
    pub name: String,
    /// The stage whose result is the image.
    pub stage: StageId,
    /// Tags to apply (`-t`, forge.toml `tags`).
    pub tags: Vec<String>,
}

/// One stage: a base and the steps on top of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Its index.
    pub id: StageId,
    /// Its name (`AS name`, lowercased; a forge.toml image's name), if any.
    pub name: Option<String>,
    /// What it starts from.
    pub base: Base,
    /// `--platform`, expanded.
    pub platform: Option<String>,
    /// The context the first step starts with (from the base image and global ARGs).
    pub initial: StepContext,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Where the `FROM` was written.
    pub origin: Origin,
    /// The directory its COPY, ADD and context bind mounts read: a
    /// forge.toml image's own `context`; `None`: the build's context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<std::path::PathBuf>,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// Another stage of this build.
    Stage(StageId),
    /// An image from the store or a registry.
    Image(ImageRef),
}

/// A base image by reference, with what the resolver knew of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    /// The reference as written (after expansion), e.g. `alpine:3.20`.
    pub reference: String,
    /// The manifest digest the resolver found; `None` while unresolved.
    pub digest: Option<String>,
}

/// The state a step runs in: what the image config says at that point, plus build args.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct StepContext {
    /// Environment in config order (later `ENV` of an existing key replaces in place).
    pub env: Vec<(String, String)>,
    /// Build args declared in this stage so far, with their values (`None`: declared
    /// without a value and not given).
    pub args: BTreeMap<String, Option<String>>,
    /// `USER` in effect (empty: the image default, root).
    pub user: String,
    /// `WORKDIR` in effect (`/` by default).
    pub workdir: String,
    /// `SHELL` in effect (`["/bin/sh", "-c"]` by default).
    pub shell: Vec<String>,
    /// Variables whose value depends on an unresolved base image. Fields that use
    /// them were left unexpanded.
    pub deferred: BTreeSet<String>,
}

/// One step of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it does, expanded.
    pub op: Op,
    /// The context it runs in (before its own effect).
    pub ctx: StepContext,
    /// Variables this step's fields use that come from an unresolved base; those
    /// fields hold the unexpanded text.
    pub deferred: BTreeSet<String>,
    /// Where it was written.
    pub origin: Origin,
}

/// Where a step was written. Compares equal to every other `Origin`: it is provenance.
#[derive(Debug, Clone, Eq, Serialize, Default)]
pub struct Origin {
    /// The file name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The instruction as written (for history `created_by`).
    pub text: String,
    /// Set when the step is an ONBUILD trigger inherited from the base.
    pub onbuild_from: Option<String>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Run a command in the sandbox.
    Run(RunOp),
    /// Copy files in.
    Copy(CopyOp),
    /// Copy files in, unpacking archives and fetching URLs.
    Add(AddOp),
    /// Set environment variables.
    Env(Vec<(String, String)>),
    /// Set labels.
    Label(Vec<(String, String)>),
    /// Declare build args (with resolved values).
    Arg(Vec<(String, Option<String>)>),
    /// Ports, as `80/tcp` (protocol added when missing).
    Expose(Vec<String>),
    /// Volumes.
    Volume(Vec<String>),
    /// Set the user.
    User(String),
    /// Set (and create) the working directory; always absolute.
    Workdir(String),
    /// Default command.
    Cmd(CommandLine),
    /// Entrypoint.
    Entrypoint(CommandLine),
    /// Stop signal.
    StopSignal(String),
    /// Health check.
    Healthcheck(Healthcheck),
    /// Set the shell for later shell forms.
    Shell(Vec<String>),
    /// Set the author.
    Maintainer(String),
    /// Record a trigger for images built on this one.
    Onbuild(String),
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOp {
    /// The command; shell form runs through `ctx.shell`.
    pub command: CommandLine,
    /// Mounts.
    pub mounts: Vec<Mount>,
    /// Network mode.
    pub network: NetworkMode,
    /// `--security=insecure` (true) or sandbox (false).
    pub insecure: bool,
    /// Heredocs, expanded unless quoted.
    pub heredocs: Vec<Heredoc>,
}

/// `RUN --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The build's default.
    #[default]
    Default,
    /// No network.
    None,
    /// The host's network.
    Host,
}

/// A `RUN --mount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    /// Its kind.
    pub kind: MountKind,
    /// Where it appears in the sandbox (absolute; for secrets and ssh a default applies).
    pub target: String,
    /// Path in the source (`source=`/`src=`), if given.
    pub source: Option<String>,
    /// Where the source comes from (bind and cache mounts).
    pub from: Option<SourceRef>,
    /// `id=` (cache, secret, ssh).
    pub id: Option<String>,
    /// Read-only (bind mounts are read-only by default).
    pub readonly: bool,
    /// `sharing=` for cache mounts.
    pub sharing: CacheSharing,
    /// `mode=` in octal.
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
    /// `required=` (secret, ssh).
    pub required: bool,
    /// `size=` in bytes (tmpfs).
    pub size: Option<u64>,
    /// `env=` (secret as environment variable).
    pub env: Option<String>,
}

/// The kinds of `RUN --mount`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    /// A directory from the context, a stage or an image.
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file.
    Secret,
    /// The SSH agent socket.
    Ssh,
}

/// `sharing=` of a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Concurrent writers share it.
    #[default]
    Shared,
    /// Each concurrent writer gets its own.
    Private,
    /// Writers wait for each other.
    Locked,
}

/// Where files come from for COPY/ADD or a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRef {
    /// The build context.
    Context,
    /// Another stage's result.
    Stage(StageId),
    /// An image by reference.
    Image(String),
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyOp {
    /// Source paths (or heredoc names, see `heredocs`), expanded.
    pub sources: Vec<String>,
    /// Destination, expanded, relative to the workdir when not absolute.
    pub dest: String,
    /// Where sources are read.
    pub from: SourceRef,
    /// `--chown`, expanded.
    pub chown: Option<String>,
    /// `--chmod`, expanded.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// Inline sources.
    pub heredocs: Vec<Heredoc>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddOp {
    /// Sources (paths or URLs), expanded.
    pub sources: Vec<String>,
    /// Destination, expanded.
    pub dest: String,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// `--unpack`.
    pub unpack: Option<bool>,
    /// `--exclude` patterns.
    pub exclude: Vec<String>,
    /// Inline sources.
    pub heredocs: Vec<Heredoc>,
}

/// A health check as the image config stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    /// Nanoseconds; 0 means inherit/default.
    pub interval_ns: u64,
    /// Nanoseconds.
    pub timeout_ns: u64,
    /// Nanoseconds.
    pub start_period_ns: u64,
    /// Nanoseconds.
    pub start_interval_ns: u64,
    /// Retries; 0 means default.
    pub retries: u32,
}

/// A command in shell form (`RUN echo hi`) or exec form (`RUN ["echo", "hi"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandLine {
    /// Shell form: run through the stage's `SHELL`.
    Shell(String),
    /// Exec form: argv as given.
    Exec(Vec<String>),
}

/// An inline file (`<<EOF` heredoc) attached to a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word (quotes removed).
    pub name: String,
    /// The body, lines joined with `\n`, ending with `\n`; leading tabs already removed for `<<-`.
    pub content: String,
    /// False when the delimiter was quoted (`<<'EOF'`, `<<"EOF"`): no expansion inside.
    pub expand: bool,
    /// True for `<<-` (leading tabs stripped).
    pub chomp: bool,
}
