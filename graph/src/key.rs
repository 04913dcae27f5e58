//! Cache keys: what a node's result depends on, and its blake3 name.
//!
//! Every node of a [`BuildGraph`] gets a [`KeyRecipe`]: a struct listing each input
//! of the node's result. The recipe is serialized with a hand-written canonical
//! encoding (below) and hashed with blake3; that hash is the node's [`CacheKey`].
//! Two builds, on any machine, that give a node equal recipes may share its result;
//! any input that could change the result is in the recipe. A node whose inputs are
//! not all known yet (an unresolved base image, context files not hashed yet) has a
//! *pending* key ([`KeyState::Pending`]), and so has everything after it.
//!
//! The design follows cargo's fingerprints (`core/compiler/fingerprint`): an explicit
//! list of inputs, a version to invalidate everything when the list or its encoding
//! changes, and [`explain`] to say which input changed (like cargo's `DirtyReason`).
//!
//! # The recipe
//!
//! | Field | Taken from | Why it is in the key |
//! |---|---|---|
//! | `format_version` | [`CACHE_FORMAT_VERSION`] | Bumped whenever the recipe or its encoding changes, so keys made by an older forge never match. |
//! | `kind` | the node | A scratch base, a `FROM image`, a `FROM stage`, an image source and a step never share a key, even with otherwise equal fields. |
//! | `parent` | the key of the previous node of the stage (the base node for the first step; for a `FROM <stage>` base, that stage's last node) | A step's result is its parent's filesystem plus its effect: any change upstream must invalidate everything after it. This chaining is what makes keys of later steps change with earlier ones. |
//! | `op` | [`Step::op`](forge_ir::Step::op), every variable expanded, encoded field by field (never `Debug` output) | The instruction itself: command, paths, flags, heredoc bodies, config values. Excludes COPY's `from` and RUN's mounts and network, which have their own fields. |
//! | `copy_from` | COPY's source: `context`, or the key of the source stage's last node or of the image node | What COPY reads. A stage or image source is named by its *key*, never its name or index, so renaming or reordering stages keeps keys. |
//! | `env` | [`StepContext::env`](forge_ir::StepContext::env), sorted by name | RUN sees it; the order of ENV is already fixed by the chain of parents. |
//! | `args` | [`StepContext::args`](forge_ir::StepContext::args): the build args *declared in the stage* so far, with values | RUN sees declared args as environment, so a new `--build-arg` value must rebuild from the `ARG` on. In every step's recipe, not only RUN's: conservative, and a changed value reaches later steps through `parent` anyway. |
//! | `user` | `USER` in effect | RUN runs as that user; COPY/ADD ownership defaults to it. |
//! | `workdir` | `WORKDIR` in effect | RUN's working directory; relative COPY/ADD destinations. |
//! | `shell` | `SHELL` in effect | Shell-form RUN runs through it. |
//! | `network` | RUN's `--network` | `host` or `none` can change what a command produces (downloads, resolution). |
//! | `mounts` | RUN's `--mount`s: kind, target, source path, source (`context` or a key), cache id (the target when no `id=`), sharing, read-only, mode, uid, gid, size, required, env name | The mount specification shapes what the command sees. Cache mounts contribute their *id*, not their contents; secret and ssh mounts their id and target, never the secret. |
//! | `platform` | [`Stage::platform`](forge_ir::Stage::platform) | The same step for another platform makes other bytes. |
//! | `base_digest` | [`ImageRef::digest`](forge_ir::ImageRef::digest) of a `FROM image` base | The manifest digest *is* the base's content. Without it (`None`, a dry run) the key is pending. |
//! | `image_reference` | the reference of an image used as a COPY/mount source | The IR carries no digest for those; the key waits for the executor to supply the image's content digest as the node's sources. |
//! | `sources` | a [`SourceDigest`] supplied by the executor ([`compute_keys`]'s `known_sources`, or [`KeyRecipe::with_sources`]) | The content of the context files a COPY/ADD/bind mount reads (and of an ADD URL without `--checksum`): per file, its relative path, bytes, mode, uid/gid, symlink target. Until then the key is pending. |
//!
//! # Deliberately not tracked
//!
//! | Not in the key | Why |
//! |---|---|
//! | File mtimes, atimes, ctimes | They change on every checkout or `touch` while the content does not; tracking them would make caches useless across machines and CI. |
//! | Inode and device numbers, the context's absolute path | Machine-local; the same files on another machine must hit. |
//! | Secrets (the contents of `--mount=type=secret`, ssh agents) | Keys are stored, printed and shared; a secret in a key, even hashed, could be brute-forced or leaked. As in BuildKit, changing a secret does not rebuild. |
//! | Build args not declared in the stage (global ARGs not redeclared, undeclared `--build-arg`s) | Steps cannot see them; where they were used (in `FROM`), they are already expanded into the IR. |
//! | The Dockerfile's comments, whitespace, line continuations, instruction case, line numbers | The IR is expanded and normalized; [`Origin`](forge_ir::Origin) is provenance, not meaning. |
//! | History text (`created_by`), `Origin::text`, labels of the plan | Metadata of how the step was written, not what it does. |
//! | Stage names and indices, target names, tags | Naming, not content; sources are named by their keys. |
//! | A base image's reference text (`alpine:3.20`) | Its digest is its identity: two references to one digest share keys. |
//! | Cache mount contents | A cache mount is a performance aid; its contents must not change the step's result. |
//! | The order of environment variables in the context | Sorted; their order in the image config is fixed by the parent chain. |
//!
//! # Encoding
//!
//! The key is `blake3(encoding)`. The encoding starts with the bytes
//! `forge-cache-key\0`, then each field in the order of the table, as: a 2-byte
//! little-endian field tag, an 8-byte little-endian payload length, the payload.
//! Inside payloads: integers are little-endian fixed width, booleans one byte,
//! strings an 8-byte length then UTF-8 bytes, lists a count then items, options a
//! 0/1 byte then the value, enum variants a fixed 1-byte tag written in code (never
//! derived from declaration order), and nested structs are again tagged,
//! length-prefixed fields. The encoding of every IR type destructures it entirely,
//! so a field added to the IR fails to compile here until someone decides whether
//! it belongs in the key.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use forge_ir::{
    AddOp, Base, CacheSharing, CommandLine, CopyOp, Healthcheck, Heredoc, Mount, MountKind,
    NetworkMode, Op, RunOp, SourceRef,
};
use petgraph::graph::NodeIndex;
use serde::{Serialize, Serializer};

use crate::compile::{BuildGraph, NodeKind};
use crate::error::GraphError;

/// The version of the key recipe and its encoding. Bump it whenever either changes.
pub const CACHE_FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8] = b"forge-cache-key\0";

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_blake3(text: &str) -> Result<[u8; 32], GraphError> {
    let invalid = |reason: &'static str| GraphError::InvalidKey {
        text: text.to_string(),
        reason,
    };
    let hex = text
        .strip_prefix("blake3:")
        .ok_or_else(|| invalid("it does not start with `blake3:`"))?;
    if hex.len() != 64 {
        return Err(invalid("it does not have 64 hex digits"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex
            .get(2 * i..2 * i + 2)
            .ok_or_else(|| invalid("it is not ASCII"))?;
        if pair.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("hex digits must be lowercase"));
        }
        *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid("it has a non-hex digit"))?;
    }
    Ok(out)
}

/// The methods and traits shared by the blake3 values ([`CacheKey`],
/// [`SourceDigest`]): raw bytes, hex, `blake3:<hex>` display and parsing, and
/// serialization as that string. Two types on purpose: a key is never a digest.
macro_rules! blake3_value {
    ($name:ident) => {
        impl $name {
            /// The value with these raw bytes.
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The 64 lowercase hex digits, without `blake3:`.
            pub fn hex(&self) -> String {
                hex(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "blake3:{}", self.hex())
            }
        }

        impl FromStr for $name {
            type Err = GraphError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_blake3(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// The cache key of a node's result: blake3 of its [`KeyRecipe`]'s encoding.
///
/// Shown as `blake3:<64 hex digits>`. A distinct type from any sha256 digest (OCI
/// digests live in `forge-cache`): the two never convert into each other.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The first 12 hex digits.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

blake3_value!(CacheKey);

/// The content digest of the files a step reads from outside the graph (the build
/// context, a URL), or of an image used as a source: supplied by the executor.
///
/// Computed with [`SourceHasher`] (blake3 over each entry's relative path, bytes,
/// mode, uid/gid and symlink target; never mtimes or inode numbers). Shown as
/// `blake3:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceDigest([u8; 32]);

impl fmt::Debug for SourceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceDigest({self})")
    }
}

blake3_value!(SourceDigest);

/// Ownership and permissions of a source entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryMeta {
    /// Permission bits (and setuid/setgid/sticky), as `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// Builds a [`SourceDigest`] from the entries a step reads.
///
/// Entries may be added in any order (they are sorted by path before hashing); a
/// path added twice keeps the last entry. Paths are relative to the source root,
/// `/`-separated, as bytes (non-UTF-8 names are fine).
///
/// ```
/// use forge_graph::{EntryMeta, SourceHasher};
/// let meta = EntryMeta { mode: 0o644, uid: 0, gid: 0 };
/// let mut a = SourceHasher::new();
/// a.file(b"src/main.c", b"int main;", meta);
/// a.dir(b"src", EntryMeta { mode: 0o755, ..meta });
/// let mut b = SourceHasher::new();
/// b.dir(b"src", EntryMeta { mode: 0o755, ..meta });
/// b.file(b"src/main.c", b"int main;", meta);
/// assert_eq!(a.finish(), b.finish());
/// ```
#[derive(Debug, Clone, Default)]
pub struct SourceHasher {
    entries: BTreeMap<Vec<u8>, [u8; 32]>,
}

impl SourceHasher {
    /// No entries yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, path: &[u8], kind: u8, payload: &[u8], meta: EntryMeta) {
        let mut e = Enc::default();
        e.bytes(path);
        e.u8(kind);
        e.bytes(payload);
        e.u32(meta.mode);
        e.u32(meta.uid);
        e.u32(meta.gid);
        self.entries
            .insert(path.to_vec(), *blake3::hash(&e.buf).as_bytes());
    }

    /// A regular file with these contents.
    pub fn file(&mut self, path: &[u8], contents: &[u8], meta: EntryMeta) {
        self.add(path, 1, blake3::hash(contents).as_bytes(), meta);
    }

    /// A regular file whose contents have the blake3 digest `contents_blake3`:
    /// the same entry as [`file`](Self::file) with those contents, for callers
    /// that hashed (or cached the hash of) the file already.
    pub fn file_digest(&mut self, path: &[u8], contents_blake3: &[u8; 32], meta: EntryMeta) {
        self.add(path, 1, contents_blake3, meta);
    }

    /// A directory.
    pub fn dir(&mut self, path: &[u8], meta: EntryMeta) {
        self.add(path, 2, &[], meta);
    }

    /// A symbolic link to `target` (not followed).
    pub fn symlink(&mut self, path: &[u8], target: &[u8], meta: EntryMeta) {
        self.add(path, 3, target, meta);
    }

    /// The digest of all entries.
    pub fn finish(&self) -> SourceDigest {
        let mut e = Enc::default();
        e.raw(b"forge-sources\0");
        e.u32(CACHE_FORMAT_VERSION);
        e.u64(self.entries.len() as u64);
        for (path, digest) in &self.entries {
            e.bytes(path);
            e.raw(digest);
        }
        SourceDigest(*blake3::hash(&e.buf).as_bytes())
    }
}

/// Which kind of node a recipe is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipeKind {
    /// `FROM scratch`.
    Scratch,
    /// `FROM <image>`.
    BaseImage,
    /// `FROM <stage>`.
    BaseStage,
    /// An image used as a COPY/mount source.
    ImageSource,
    /// A step.
    Step,
}

impl RecipeKind {
    fn tag(self) -> u8 {
        match self {
            RecipeKind::Scratch => 1,
            RecipeKind::BaseImage => 2,
            RecipeKind::BaseStage => 3,
            RecipeKind::ImageSource => 4,
            RecipeKind::Step => 5,
        }
    }
}

/// Where a COPY or mount reads from, as the key sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceInput {
    /// The build context (its content is the recipe's `sources`).
    Context,
    /// The result of another node (a stage's last node, an image node), by key.
    Key(CacheKey),
}

impl fmt::Display for SourceInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceInput::Context => f.write_str("context"),
            SourceInput::Key(k) => write!(f, "{k}"),
        }
    }
}

/// A RUN mount as the key sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountRecipe {
    /// The mount's specification from the IR (its `from` and, for cache mounts, an
    /// absent `id` are normalized into the fields below when encoding).
    pub mount: Mount,
    /// Its source, when it has one.
    pub from: Option<SourceInput>,
}

/// The field names of a [`KeyRecipe`], in encoding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipeField {
    /// [`KeyRecipe::format_version`].
    FormatVersion,
    /// [`KeyRecipe::kind`].
    Kind,
    /// [`KeyRecipe::parent`].
    Parent,
    /// [`KeyRecipe::op`].
    Op,
    /// [`KeyRecipe::copy_from`].
    CopyFrom,
    /// [`KeyRecipe::env`].
    Env,
    /// [`KeyRecipe::args`].
    Args,
    /// [`KeyRecipe::user`].
    User,
    /// [`KeyRecipe::workdir`].
    Workdir,
    /// [`KeyRecipe::shell`].
    Shell,
    /// [`KeyRecipe::network`].
    Network,
    /// [`KeyRecipe::mounts`].
    Mounts,
    /// [`KeyRecipe::platform`].
    Platform,
    /// [`KeyRecipe::base_digest`].
    BaseDigest,
    /// [`KeyRecipe::image_reference`].
    ImageReference,
    /// [`KeyRecipe::sources`].
    Sources,
}

impl RecipeField {
    /// Every field, in encoding order.
    pub const ALL: [RecipeField; 16] = [
        RecipeField::FormatVersion,
        RecipeField::Kind,
        RecipeField::Parent,
        RecipeField::Op,
        RecipeField::CopyFrom,
        RecipeField::Env,
        RecipeField::Args,
        RecipeField::User,
        RecipeField::Workdir,
        RecipeField::Shell,
        RecipeField::Network,
        RecipeField::Mounts,
        RecipeField::Platform,
        RecipeField::BaseDigest,
        RecipeField::ImageReference,
        RecipeField::Sources,
    ];

    /// The field's tag in the encoding (fixed forever for a format version).
    fn tag(self) -> u16 {
        match self {
            RecipeField::FormatVersion => 1,
            RecipeField::Kind => 2,
            RecipeField::Parent => 3,
            RecipeField::Op => 4,
            RecipeField::CopyFrom => 5,
            RecipeField::Env => 6,
            RecipeField::Args => 7,
            RecipeField::User => 8,
            RecipeField::Workdir => 9,
            RecipeField::Shell => 10,
            RecipeField::Network => 11,
            RecipeField::Mounts => 12,
            RecipeField::Platform => 13,
            RecipeField::BaseDigest => 14,
            RecipeField::ImageReference => 15,
            RecipeField::Sources => 16,
        }
    }

    /// The field's name, as in the recipe table (`env`, `base_digest`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RecipeField::FormatVersion => "format_version",
            RecipeField::Kind => "kind",
            RecipeField::Parent => "parent",
            RecipeField::Op => "op",
            RecipeField::CopyFrom => "copy_from",
            RecipeField::Env => "env",
            RecipeField::Args => "args",
            RecipeField::User => "user",
            RecipeField::Workdir => "workdir",
            RecipeField::Shell => "shell",
            RecipeField::Network => "network",
            RecipeField::Mounts => "mounts",
            RecipeField::Platform => "platform",
            RecipeField::BaseDigest => "base_digest",
            RecipeField::ImageReference => "image_reference",
            RecipeField::Sources => "sources",
        }
    }
}

impl fmt::Display for RecipeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every input of one node's result (see the [module docs](self) for the table).
///
/// Fields a kind of node does not have are empty (`None`, empty lists, empty strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecipe {
    /// [`CACHE_FORMAT_VERSION`] when made.
    pub format_version: u32,
    /// What kind of node.
    pub kind: RecipeKind,
    /// The key of the node this one starts from.
    pub parent: Option<CacheKey>,
    /// The step's op, expanded (encoded without COPY's `from` and RUN's mounts and
    /// network, which are separate fields).
    pub op: Option<Op>,
    /// Where a COPY reads.
    pub copy_from: Option<SourceInput>,
    /// The environment in effect, sorted by name.
    pub env: Vec<(String, String)>,
    /// Build args declared in the stage so far, with values.
    pub args: BTreeMap<String, Option<String>>,
    /// `USER` in effect.
    pub user: String,
    /// `WORKDIR` in effect.
    pub workdir: String,
    /// `SHELL` in effect.
    pub shell: Vec<String>,
    /// RUN's network mode.
    pub network: Option<NetworkMode>,
    /// RUN's mounts.
    pub mounts: Vec<MountRecipe>,
    /// The stage's platform.
    pub platform: Option<String>,
    /// A `FROM image` base's manifest digest.
    pub base_digest: Option<String>,
    /// An image source's reference.
    pub image_reference: Option<String>,
    /// The content digest of what the node reads from outside the graph.
    pub sources: Option<SourceDigest>,
}

impl KeyRecipe {
    /// An empty recipe of this kind, at the current format version.
    pub fn new(kind: RecipeKind) -> Self {
        Self {
            format_version: CACHE_FORMAT_VERSION,
            kind,
            parent: None,
            op: None,
            copy_from: None,
            env: Vec::new(),
            args: BTreeMap::new(),
            user: String::new(),
            workdir: String::new(),
            shell: Vec::new(),
            network: None,
            mounts: Vec::new(),
            platform: None,
            base_digest: None,
            image_reference: None,
            sources: None,
        }
    }

    /// The same recipe with the content digest of its sources filled in (by the
    /// executor, once it has hashed the context files or fetched the image).
    #[must_use]
    pub fn with_sources(mut self, sources: SourceDigest) -> Self {
        self.sources = Some(sources);
        self
    }

    /// The canonical encoding (see the [module docs](self#encoding)).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.raw(MAGIC);
        for field in RecipeField::ALL {
            e.field(field.tag(), |e| self.encode_field(field, e));
        }
        e.buf
    }

    /// The key: blake3 of [`encode`](Self::encode).
    pub fn key(&self) -> CacheKey {
        CacheKey(*blake3::hash(&self.encode()).as_bytes())
    }

    fn field_bytes(&self, field: RecipeField) -> Vec<u8> {
        let mut e = Enc::default();
        self.encode_field(field, &mut e);
        e.buf
    }

    fn encode_field(&self, field: RecipeField, e: &mut Enc) {
        match field {
            RecipeField::FormatVersion => e.u32(self.format_version),
            RecipeField::Kind => e.u8(self.kind.tag()),
            RecipeField::Parent => e.opt(self.parent.as_ref(), |e, k| e.raw(k.as_bytes())),
            RecipeField::Op => e.opt(self.op.as_ref(), encode_op),
            RecipeField::CopyFrom => e.opt(self.copy_from.as_ref(), encode_source_input),
            RecipeField::Env => e.pairs(&self.env),
            RecipeField::Args => {
                e.u64(self.args.len() as u64);
                for (k, v) in &self.args {
                    e.str(k);
                    e.opt_str(v.as_deref());
                }
            }
            RecipeField::User => e.str(&self.user),
            RecipeField::Workdir => e.str(&self.workdir),
            RecipeField::Shell => e.strs(&self.shell),
            RecipeField::Network => e.opt(self.network.as_ref(), |e, n| e.u8(network_tag(*n))),
            RecipeField::Mounts => {
                e.u64(self.mounts.len() as u64);
                for m in &self.mounts {
                    encode_mount(e, m);
                }
            }
            RecipeField::Platform => e.opt_str(self.platform.as_deref()),
            RecipeField::BaseDigest => e.opt_str(self.base_digest.as_deref()),
            RecipeField::ImageReference => e.opt_str(self.image_reference.as_deref()),
            RecipeField::Sources => e.opt(self.sources.as_ref(), |e, d| e.raw(d.as_bytes())),
        }
    }
}

/// One difference between two recipes, for `--explain-cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyChange {
    /// The recipe field that differs.
    pub field: RecipeField,
    /// For `env` and `args`: the variable; otherwise `None`.
    pub item: Option<String>,
    /// The old value, rendered (`(none)` when absent).
    pub before: String,
    /// The new value, rendered (`(none)` when absent).
    pub after: String,
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.item {
            Some(item) => write!(
                f,
                "{} {item}: {} -> {}",
                self.field, self.before, self.after
            ),
            None => write!(f, "{}: {} -> {}", self.field, self.before, self.after),
        }
    }
}

/// Which fields of two recipes differ, in encoding order, one entry per changed
/// variable for `env` and `args`. Empty exactly when the keys are equal.
///
/// A change of `parent` alone means "something upstream changed": explain the
/// parent's recipes to find what.
pub fn explain(a: &KeyRecipe, b: &KeyRecipe) -> Vec<KeyChange> {
    let mut out = Vec::new();
    for field in RecipeField::ALL {
        if a.field_bytes(field) == b.field_bytes(field) {
            continue;
        }
        match field {
            RecipeField::Env => {
                let ma: BTreeMap<_, _> = a.env.iter().map(|(k, v)| (k, Some(v.as_str()))).collect();
                let mb: BTreeMap<_, _> = b.env.iter().map(|(k, v)| (k, Some(v.as_str()))).collect();
                diff_maps(&mut out, field, &ma, &mb);
            }
            RecipeField::Args => {
                let ma: BTreeMap<_, _> = a.args.iter().map(|(k, v)| (k, v.as_deref())).collect();
                let mb: BTreeMap<_, _> = b.args.iter().map(|(k, v)| (k, v.as_deref())).collect();
                diff_maps(&mut out, field, &ma, &mb);
            }
            _ => out.push(KeyChange {
                field,
                item: None,
                before: render_field(a, field),
                after: render_field(b, field),
            }),
        }
    }
    out
}

/// A recipe as [`explain`] compares it, in a form that can be stored and read
/// back (JSON): every field rendered to text, `env` and `args` as maps. A build
/// keeps the records of its steps so that the next build can say, for a step
/// that missed the cache, which inputs changed (`forge build --explain-cache`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
pub struct ExplainRecord {
    /// Rendered fields other than `env` and `args`, by field name.
    pub fields: BTreeMap<String, String>,
    /// `env`, by variable.
    pub env: BTreeMap<String, String>,
    /// `args`, by name (`None`: declared without a value).
    pub args: BTreeMap<String, Option<String>>,
}

impl ExplainRecord {
    /// The record of `recipe`.
    pub fn of(recipe: &KeyRecipe) -> Self {
        let fields = RecipeField::ALL
            .iter()
            .filter(|f| !matches!(f, RecipeField::Env | RecipeField::Args))
            .map(|&f| (f.as_str().to_string(), render_field(recipe, f)))
            .collect();
        Self {
            fields,
            env: recipe.env.iter().cloned().collect(),
            args: recipe.args.clone(),
        }
    }
}

/// [`explain`] for stored records: which fields differ between an earlier
/// step's record and this one's, in encoding order.
pub fn explain_records(before: &ExplainRecord, after: &ExplainRecord) -> Vec<KeyChange> {
    let mut out = Vec::new();
    for field in RecipeField::ALL {
        match field {
            RecipeField::Env => {
                let ma: BTreeMap<_, _> = before
                    .env
                    .iter()
                    .map(|(k, v)| (k, Some(v.as_str())))
                    .collect();
                let mb: BTreeMap<_, _> = after
                    .env
                    .iter()
                    .map(|(k, v)| (k, Some(v.as_str())))
                    .collect();
                diff_maps(&mut out, field, &ma, &mb);
            }
            RecipeField::Args => {
                let ma: BTreeMap<_, _> =
                    before.args.iter().map(|(k, v)| (k, v.as_deref())).collect();
                let mb: BTreeMap<_, _> =
                    after.args.iter().map(|(k, v)| (k, v.as_deref())).collect();
                diff_maps(&mut out, field, &ma, &mb);
            }
            _ => {
                let a = before.fields.get(field.as_str());
                let b = after.fields.get(field.as_str());
                if a != b {
                    out.push(KeyChange {
                        field,
                        item: None,
                        before: a.cloned().unwrap_or_else(|| "(none)".to_string()),
                        after: b.cloned().unwrap_or_else(|| "(none)".to_string()),
                    });
                }
            }
        }
    }
    out
}

fn diff_maps(
    out: &mut Vec<KeyChange>,
    field: RecipeField,
    a: &BTreeMap<&String, Option<&str>>,
    b: &BTreeMap<&String, Option<&str>>,
) {
    let show = |v: Option<&Option<&str>>| match v {
        None => "(not declared)".to_string(),
        Some(None) => "(no value)".to_string(),
        Some(Some(v)) => format!("{v:?}"),
    };
    let mut names: Vec<&String> = a.keys().chain(b.keys()).copied().collect();
    names.sort();
    names.dedup();
    for name in names {
        let (va, vb) = (a.get(name), b.get(name));
        if va != vb {
            let (before, after) = if field == RecipeField::Env {
                let show_env = |v: Option<&Option<&str>>| match v {
                    Some(Some(v)) => format!("{v:?}"),
                    _ => "(unset)".to_string(),
                };
                (show_env(va), show_env(vb))
            } else {
                (show(va), show(vb))
            };
            out.push(KeyChange {
                field,
                item: Some(name.clone()),
                before,
                after,
            });
        }
    }
}

fn render_field(r: &KeyRecipe, field: RecipeField) -> String {
    fn opt<T: fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "(none)".to_string(), |v| v.to_string())
    }
    match field {
        RecipeField::FormatVersion => r.format_version.to_string(),
        RecipeField::Kind => format!("{:?}", r.kind),
        RecipeField::Parent => opt(r.parent),
        RecipeField::Op => opt(r
            .op
            .as_ref()
            .map(|op| crate::render::render_op(op, &|s| format!("stage-{}", s.0)))),
        RecipeField::CopyFrom => opt(r.copy_from),
        RecipeField::Env | RecipeField::Args => String::new(),
        RecipeField::User => format!("{:?}", r.user),
        RecipeField::Workdir => format!("{:?}", r.workdir),
        RecipeField::Shell => format!("{:?}", r.shell),
        RecipeField::Network => opt(r.network.map(network_name)),
        RecipeField::Mounts => {
            let parts: Vec<String> = r
                .mounts
                .iter()
                .map(|m| {
                    let spec = crate::render::render_mount(&m.mount, &|s| format!("stage-{}", s.0));
                    match &m.from {
                        Some(SourceInput::Key(k)) => format!("{spec} (from {k})"),
                        _ => spec,
                    }
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
        RecipeField::Platform => opt(r.platform.as_deref()),
        RecipeField::BaseDigest => opt(r.base_digest.as_deref()),
        RecipeField::ImageReference => opt(r.image_reference.as_deref()),
        RecipeField::Sources => opt(r.sources),
    }
}

/// Why a key cannot be computed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingCause {
    /// A `FROM image` whose manifest digest is not known (dry runs resolve nothing).
    UnresolvedBase {
        /// The reference.
        reference: String,
    },
    /// An image used as a source, whose content the executor has not supplied.
    UnresolvedImage {
        /// The reference.
        reference: String,
    },
    /// Context files (or a URL) the step reads have not been hashed yet.
    UnhashedSources,
    /// The step uses variables from an unresolved base, so its fields are not expanded.
    Deferred {
        /// The variables.
        vars: Vec<String>,
    },
    /// A dependency's key was not computed before this node's (a bug: dependencies
    /// always come first in the graph's numbering).
    Unordered,
}

impl fmt::Display for PendingCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PendingCause::UnresolvedBase { reference } => {
                write!(f, "base image {reference} not resolved")
            }
            PendingCause::UnresolvedImage { reference } => {
                write!(f, "image {reference} not resolved")
            }
            PendingCause::UnhashedSources => f.write_str("sources not hashed yet"),
            PendingCause::Deferred { vars } => {
                let vars: Vec<String> = vars.iter().map(|v| format!("${v}")).collect();
                write!(f, "uses {} from an unresolved base", vars.join(", "))
            }
            PendingCause::Unordered => f.write_str("dependency not computed first"),
        }
    }
}

/// Why a node's key is pending: the cause, at the node where it arose (the node
/// itself, or its first pending ancestor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReason {
    /// The node whose own input is missing.
    pub node: NodeIndex,
    /// What is missing.
    pub cause: PendingCause,
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}: {}", self.node.index() + 1, self.cause)
    }
}

/// A node's key, or why it is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Every input is known.
    Known(CacheKey),
    /// Some input is not known yet.
    Pending(PendingReason),
}

impl KeyState {
    /// The key, when known.
    pub fn key(&self) -> Option<CacheKey> {
        match self {
            KeyState::Known(k) => Some(*k),
            KeyState::Pending(_) => None,
        }
    }

    /// Whether the key is pending.
    pub fn is_pending(&self) -> bool {
        matches!(self, KeyState::Pending(_))
    }
}

/// Every node's key or pending reason, indexed by `NodeIndex::index()`.
///
/// `known_sources` answers, for a node that reads files from outside the graph
/// ([`BuildGraph::needs_sources`]) or for an image source node, the content digest
/// of what it reads; `None` leaves that node (and everything after it) pending.
/// It is not consulted for other nodes.
pub fn compute_keys(
    graph: &BuildGraph,
    known_sources: &dyn Fn(NodeIndex) -> Option<SourceDigest>,
) -> Vec<KeyState> {
    compute_recipes(graph, known_sources)
        .into_iter()
        .map(|r| match r {
            Ok(recipe) => KeyState::Known(recipe.key()),
            Err(reason) => KeyState::Pending(reason),
        })
        .collect()
}

/// Every node's recipe or pending reason, indexed by `NodeIndex::index()` (see
/// [`compute_keys`]). Keep recipes to [`explain`] a later miss.
pub fn compute_recipes(
    graph: &BuildGraph,
    known_sources: &dyn Fn(NodeIndex) -> Option<SourceDigest>,
) -> Vec<Result<KeyRecipe, PendingReason>> {
    let mut keys: Vec<KeyState> = Vec::with_capacity(graph.node_count());
    let mut out = Vec::with_capacity(graph.node_count());
    for node in graph.topo_order() {
        let recipe = build_recipe(graph, node, &keys, known_sources);
        keys.push(match &recipe {
            Ok(r) => KeyState::Known(r.key()),
            Err(reason) => KeyState::Pending(reason.clone()),
        });
        out.push(recipe);
    }
    out
}

fn dep_key(
    keys: &[KeyState],
    dep: Option<NodeIndex>,
    node: NodeIndex,
) -> Result<CacheKey, PendingReason> {
    let unordered = || PendingReason {
        node,
        cause: PendingCause::Unordered,
    };
    match dep.and_then(|d| keys.get(d.index())) {
        Some(KeyState::Known(k)) => Ok(*k),
        Some(KeyState::Pending(r)) => Err(r.clone()),
        None => Err(unordered()),
    }
}

fn build_recipe(
    graph: &BuildGraph,
    node: NodeIndex,
    keys: &[KeyState],
    known_sources: &dyn Fn(NodeIndex) -> Option<SourceDigest>,
) -> Result<KeyRecipe, PendingReason> {
    let pending = |cause| PendingReason { node, cause };
    let unordered = || pending(PendingCause::Unordered);
    let kind = graph.node(node).ok_or_else(unordered)?;
    match kind {
        NodeKind::Image { reference } => {
            let mut r = KeyRecipe::new(RecipeKind::ImageSource);
            r.image_reference = Some(reference.clone());
            let digest = known_sources(node).ok_or_else(|| {
                pending(PendingCause::UnresolvedImage {
                    reference: reference.clone(),
                })
            })?;
            Ok(r.with_sources(digest))
        }
        NodeKind::Base { stage } => {
            let s = graph.ir().stage(*stage).ok_or_else(unordered)?;
            let mut r = match &s.base {
                Base::Scratch => KeyRecipe::new(RecipeKind::Scratch),
                Base::Image(image) => {
                    let mut r = KeyRecipe::new(RecipeKind::BaseImage);
                    r.base_digest = Some(image.digest.clone().ok_or_else(|| {
                        pending(PendingCause::UnresolvedBase {
                            reference: image.reference.clone(),
                        })
                    })?);
                    r
                }
                Base::Stage(from) => {
                    let mut r = KeyRecipe::new(RecipeKind::BaseStage);
                    r.parent = Some(dep_key(keys, graph.last_node(*from), node)?);
                    r
                }
            };
            r.platform.clone_from(&s.platform);
            Ok(r)
        }
        NodeKind::Step { stage, .. } => {
            let s = graph.ir().stage(*stage).ok_or_else(unordered)?;
            let step = graph.step(node).ok_or_else(unordered)?;
            let mut r = KeyRecipe::new(RecipeKind::Step);
            // Dependencies first, in the order the step names them: the first pending
            // one gives the reason.
            r.parent = Some(dep_key(keys, graph.parent(node), node)?);
            let input = |from: &SourceRef| -> Result<SourceInput, PendingReason> {
                match from {
                    SourceRef::Context => Ok(SourceInput::Context),
                    other => dep_key(keys, graph.source_node(other), node).map(SourceInput::Key),
                }
            };
            match &step.op {
                Op::Copy(c) => r.copy_from = Some(input(&c.from)?),
                Op::Run(run) => {
                    r.network = Some(run.network);
                    for m in &run.mounts {
                        let from = m.from.as_ref().map(&input).transpose()?;
                        r.mounts.push(MountRecipe {
                            mount: m.clone(),
                            from,
                        });
                    }
                }
                _ => {}
            }
            if !step.deferred.is_empty() {
                return Err(pending(PendingCause::Deferred {
                    vars: step.deferred.iter().cloned().collect(),
                }));
            }
            if graph.needs_sources(node) {
                let digest =
                    known_sources(node).ok_or_else(|| pending(PendingCause::UnhashedSources))?;
                r.sources = Some(digest);
            }
            r.op = Some(step.op.clone());
            let mut env = step.ctx.env.clone();
            env.sort_by(|a, b| a.0.cmp(&b.0));
            r.env = env;
            r.args.clone_from(&step.ctx.args);
            r.user.clone_from(&step.ctx.user);
            r.workdir.clone_from(&step.ctx.workdir);
            r.shell.clone_from(&step.ctx.shell);
            r.platform.clone_from(&s.platform);
            Ok(r)
        }
    }
}

// ---- the canonical encoding ----

#[derive(Default)]
struct Enc {
    buf: Vec<u8>,
}

impl Enc {
    fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.raw(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn strs(&mut self, v: &[String]) {
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
    }
    fn pairs(&mut self, v: &[(String, String)]) {
        self.u64(v.len() as u64);
        for (k, val) in v {
            self.str(k);
            self.str(val);
        }
    }
    fn opt<T: ?Sized>(&mut self, v: Option<&T>, f: impl FnOnce(&mut Enc, &T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
            }
        }
    }
    fn opt_str(&mut self, v: Option<&str>) {
        self.opt(v, |e, s| e.str(s));
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.opt(v.as_ref(), |e, v| e.u32(*v));
    }
    /// A tagged, length-prefixed field.
    fn field(&mut self, tag: u16, f: impl FnOnce(&mut Enc)) {
        let mut inner = Enc::default();
        f(&mut inner);
        self.u16(tag);
        self.bytes(&inner.buf);
    }
}

fn network_tag(n: NetworkMode) -> u8 {
    match n {
        NetworkMode::Default => 1,
        NetworkMode::None => 2,
        NetworkMode::Host => 3,
    }
}

pub(crate) fn network_name(n: NetworkMode) -> &'static str {
    match n {
        NetworkMode::Default => "default",
        NetworkMode::None => "none",
        NetworkMode::Host => "host",
    }
}

fn encode_source_input(e: &mut Enc, s: &SourceInput) {
    match s {
        SourceInput::Context => e.u8(1),
        SourceInput::Key(k) => {
            e.u8(2);
            e.raw(k.as_bytes());
        }
    }
}

fn encode_command(e: &mut Enc, c: &CommandLine) {
    match c {
        CommandLine::Shell(s) => {
            e.u8(1);
            e.str(s);
        }
        CommandLine::Exec(v) => {
            e.u8(2);
            e.strs(v);
        }
    }
}

fn encode_heredocs(e: &mut Enc, v: &[Heredoc]) {
    e.u64(v.len() as u64);
    for h in v {
        let Heredoc {
            name,
            content,
            expand,
            chomp,
        } = h;
        e.field(1, |e| e.str(name));
        e.field(2, |e| e.str(content));
        e.field(3, |e| e.bool(*expand));
        e.field(4, |e| e.bool(*chomp));
    }
}

fn encode_mount(e: &mut Enc, m: &MountRecipe) {
    let Mount {
        kind,
        target,
        source,
        from: _, // as `m.from`, a key rather than a stage index
        id,
        readonly,
        sharing,
        mode,
        uid,
        gid,
        required,
        size,
        env,
    } = &m.mount;
    // A cache mount without `id=` is identified by its target (as in BuildKit).
    let id = match (kind, id) {
        (MountKind::Cache, None) => Some(target.as_str()),
        (_, id) => id.as_deref(),
    };
    e.field(1, |e| {
        e.u8(match kind {
            MountKind::Bind => 1,
            MountKind::Cache => 2,
            MountKind::Tmpfs => 3,
            MountKind::Secret => 4,
            MountKind::Ssh => 5,
        })
    });
    e.field(2, |e| e.str(target));
    e.field(3, |e| e.opt_str(source.as_deref()));
    e.field(4, |e| e.opt(m.from.as_ref(), encode_source_input));
    e.field(5, |e| e.opt_str(id));
    e.field(6, |e| e.bool(*readonly));
    e.field(7, |e| {
        e.u8(match sharing {
            CacheSharing::Shared => 1,
            CacheSharing::Private => 2,
            CacheSharing::Locked => 3,
        })
    });
    e.field(8, |e| e.opt_u32(*mode));
    e.field(9, |e| e.opt_u32(*uid));
    e.field(10, |e| e.opt_u32(*gid));
    e.field(11, |e| e.bool(*required));
    e.field(12, |e| e.opt(size.as_ref(), |e, v| e.u64(*v)));
    e.field(13, |e| e.opt_str(env.as_deref()));
}

fn encode_op(e: &mut Enc, op: &Op) {
    match op {
        Op::Run(r) => {
            let RunOp {
                command,
                mounts: _,  // the recipe's `mounts` field
                network: _, // the recipe's `network` field
                insecure,
                heredocs,
            } = r;
            e.u8(1);
            e.field(1, |e| encode_command(e, command));
            e.field(2, |e| e.bool(*insecure));
            e.field(3, |e| encode_heredocs(e, heredocs));
        }
        Op::Copy(c) => {
            let CopyOp {
                sources,
                dest,
                from: _, // the recipe's `copy_from` field
                chown,
                chmod,
                link,
                parents,
                exclude,
                heredocs,
            } = c;
            e.u8(2);
            e.field(1, |e| e.strs(sources));
            e.field(2, |e| e.str(dest));
            e.field(3, |e| e.opt_str(chown.as_deref()));
            e.field(4, |e| e.opt_str(chmod.as_deref()));
            e.field(5, |e| e.bool(*link));
            e.field(6, |e| e.bool(*parents));
            e.field(7, |e| e.strs(exclude));
            e.field(8, |e| encode_heredocs(e, heredocs));
        }
        Op::Add(a) => {
            let AddOp {
                sources,
                dest,
                chown,
                chmod,
                link,
                keep_git_dir,
                checksum,
                unpack,
                exclude,
                heredocs,
            } = a;
            e.u8(3);
            e.field(1, |e| e.strs(sources));
            e.field(2, |e| e.str(dest));
            e.field(3, |e| e.opt_str(chown.as_deref()));
            e.field(4, |e| e.opt_str(chmod.as_deref()));
            e.field(5, |e| e.bool(*link));
            e.field(6, |e| e.bool(*keep_git_dir));
            e.field(7, |e| e.opt_str(checksum.as_deref()));
            e.field(8, |e| e.opt(unpack.as_ref(), |e, v| e.bool(*v)));
            e.field(9, |e| e.strs(exclude));
            e.field(10, |e| encode_heredocs(e, heredocs));
        }
        Op::Env(v) => {
            e.u8(4);
            e.field(1, |e| e.pairs(v));
        }
        Op::Label(v) => {
            e.u8(5);
            e.field(1, |e| e.pairs(v));
        }
        Op::Arg(v) => {
            e.u8(6);
            e.field(1, |e| {
                e.u64(v.len() as u64);
                for (k, val) in v {
                    e.str(k);
                    e.opt_str(val.as_deref());
                }
            });
        }
        Op::Expose(v) => {
            e.u8(7);
            e.field(1, |e| e.strs(v));
        }
        Op::Volume(v) => {
            e.u8(8);
            e.field(1, |e| e.strs(v));
        }
        Op::User(s) => {
            e.u8(9);
            e.field(1, |e| e.str(s));
        }
        Op::Workdir(s) => {
            e.u8(10);
            e.field(1, |e| e.str(s));
        }
        Op::Cmd(c) => {
            e.u8(11);
            e.field(1, |e| encode_command(e, c));
        }
        Op::Entrypoint(c) => {
            e.u8(12);
            e.field(1, |e| encode_command(e, c));
        }
        Op::StopSignal(s) => {
            e.u8(13);
            e.field(1, |e| e.str(s));
        }
        Op::Healthcheck(h) => {
            let Healthcheck {
                test,
                interval_ns,
                timeout_ns,
                start_period_ns,
                start_interval_ns,
                retries,
            } = h;
            e.u8(14);
            e.field(1, |e| e.strs(test));
            e.field(2, |e| e.u64(*interval_ns));
            e.field(3, |e| e.u64(*timeout_ns));
            e.field(4, |e| e.u64(*start_period_ns));
            e.field(5, |e| e.u64(*start_interval_ns));
            e.field(6, |e| e.u32(*retries));
        }
        Op::Shell(v) => {
            e.u8(15);
            e.field(1, |e| e.strs(v));
        }
        Op::Maintainer(s) => {
            e.u8(16);
            e.field(1, |e| e.str(s));
        }
        Op::Onbuild(s) => {
            e.u8(17);
            e.field(1, |e| e.str(s));
        }
    }
}
