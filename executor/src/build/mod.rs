//! The build driver: walks a [`BuildGraph`] stage by stage, reuses cached
//! steps, runs the others (RUN in the sandbox, metadata steps on the config),
//! and commits every step's result as an image in the store.
//!
//! # A step's result
//!
//! Every step ends with an image: the stage's config so far (with its history)
//! and its layers, committed as a config blob (the step's *image ID*) and an OCI
//! manifest. The step cache maps the step's key (from `forge_graph::key`) to that
//! manifest, so a later build whose step has the same key takes the image as it
//! is and runs nothing. A failed step leaves every earlier step committed and
//! cached; the error names the last good image ID.
//!
//! # Layers
//!
//! A RUN's layer is the sandbox's overlay upper directory as a tar (whiteouts
//! and opaque directories converted to OCI's `.wh.` form by the layer writer);
//! the upper directory itself then becomes the layer's snapshot, the lower dir
//! of the next RUN. Where overlayfs cannot be mounted (or with
//! `FORGE_SNAPSHOTTER=copy`, see [`SNAPSHOTTER_ENV`]), the RUN runs in a copy
//! of the image instead and the layer is what changed there, byte for byte
//! the layer overlay mode makes (see the crate docs).
//! WORKDIR creates its directory in the sandbox (owned by the
//! USER in effect, like BuildKit). Like BuildKit (checked against Docker's
//! engine by the differential test), a RUN or WORKDIR that changed nothing
//! still adds a layer, an empty tar, and its history entry is not
//! `empty_layer`; metadata instructions add `empty_layer` entries. An image
//! has at most [`MAX_LAYERS`] layers.

mod copy;
mod direct;
mod explain;
mod files;
mod history;
mod run;
mod state;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use forge_cache::image::rfc3339;
use forge_cache::layer::LayerOptions;
use forge_cache::store::Store;
use forge_cache::Sha256Digest;
use forge_graph::key::{compute_recipes, KeyRecipe, KeyState};
use forge_graph::{BuildGraph, NodeIndex};
use forge_ir::{Base, NetworkMode, Op, SourceRef, Stage, StageId, Step};

pub use files::{destination, is_git_url, url_file_name, FileFrom, FileSource, FileStep};
pub use history::{command_argv, created_by, go_duration, go_quote};
pub use run::{NewLayer, Outcome, Runner, SandboxStep, SNAPSHOTTER_ENV, TAIL_LINES};
pub use state::{Committed, ImageState, Layer};

use crate::sandbox::Network;
use crate::ExecutorError;

/// The most layers an image may have. overlayfs (and so Docker's overlay2 and
/// forge's own RUN sandbox) stacks at most 128 directories: the image's layers
/// plus a container's writable layer. BuildKit builds a 128-layer image that
/// then fails to run; forge refuses the step that would make the 128th.
pub const MAX_LAYERS: usize = 127;

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// forge's own binary: the sandbox is a re-exec of it.
    pub exe: PathBuf,
    /// The network of RUN steps that do not say (`--network`).
    pub network: Network,
    /// Run every step even when its result is cached (`--no-cache`).
    pub no_cache: bool,
    /// How layers are written; `source_date_epoch` is also every `created` time.
    pub layer: LayerOptions,
    /// Host name inside RUN sandboxes.
    pub hostname: String,
    /// Proxy settings given as build args (`HTTP_PROXY`, `no_proxy`, ...; see
    /// [`PROXY_ARGS`]): every RUN sees them, declared or not, and they are never
    /// written to the history or the cache key (BuildKit's rule).
    pub proxy_env: Vec<(String, String)>,
    /// The build context directory, where COPY and ADD read their paths
    /// (everything under it; `.dockerignore` is the caller's to apply).
    /// `None`: a step that reads the context fails.
    pub context: Option<PathBuf>,
    /// The scanned context (after `.dockerignore`): COPY/ADD sources are
    /// selected in it, their content digests go into the steps' keys, and the
    /// copy sees only what it lists. `None`: every file of `context`, and
    /// steps reading the context are never cached.
    pub context_index: Option<std::sync::Arc<forge_context::Index>>,
    /// The contexts of stages that have their own (forge.toml images'
    /// `context`), by the directory the IR names, scanned as `context` is.
    pub stage_contexts: std::collections::BTreeMap<PathBuf, StageContext>,
    /// Stage names whose steps run even when cached (`--no-cache-filter`).
    pub no_cache_filter: Vec<String>,
    /// Say why each step that missed the cache missed (`--explain-cache`).
    pub explain_cache: bool,
    /// What identifies this build between runs (the build file and the
    /// context), for `--explain-cache`'s records.
    pub build_id: String,
    /// `--build-context NAME=...`: what `COPY --from=NAME` and `FROM NAME`
    /// read instead of an image of that name (looked up with
    /// [`named_context`]).
    pub named_contexts: std::collections::BTreeMap<String, NamedContext>,
    /// How many steps may run (sandbox or copy) at once; 0: one per core.
    pub jobs: usize,
    /// `--secret`s by id: what `RUN --mount=type=secret` reads. Never in
    /// a key, the config or the history.
    pub secrets: std::collections::BTreeMap<String, crate::sandbox::mounts::SecretSource>,
    /// `--ssh`: agent sockets by id (`default` for `--ssh default`), what
    /// `RUN --mount=type=ssh` forwards.
    pub ssh: std::collections::BTreeMap<String, PathBuf>,
    /// `--label K=V`: set on the targets' final images (over the build
    /// file's `LABEL`s), when their last step is committed again: no step's
    /// key depends on them, so changing one reuses every cached step and
    /// makes only that last commit again (BuildKit's rule). No history
    /// entry.
    pub labels: Vec<(String, String)>,
    /// `--add-host HOST:IP`: `(host, ip)` lines added to the `/etc/hosts`
    /// every RUN sees (bind-mounted, never in a layer; not in step keys).
    pub extra_hosts: Vec<(String, String)>,
    /// A RUN that fails leaves what its command changed in a working
    /// container of the last good step's image, named in
    /// [`ExecutorError::RunFailed`] (`forge build --on-failure=shell`).
    pub keep_failed_run: bool,
}

/// A stage's own build context (a forge.toml image's `context`).
#[derive(Debug, Clone)]
pub struct StageContext {
    /// The directory (absolute).
    pub dir: PathBuf,
    /// Its scan.
    pub index: std::sync::Arc<forge_context::Index>,
}

impl BuildOptions {
    /// The context a stage's COPY, ADD and context bind mounts read, and its
    /// scan: the stage's own (a forge.toml image's), else the build's.
    fn context_of<'a>(
        &'a self,
        stage: &'a Stage,
    ) -> (
        Option<&'a PathBuf>,
        Option<&'a std::sync::Arc<forge_context::Index>>,
    ) {
        match &stage.context {
            Some(dir) => match self.stage_contexts.get(dir) {
                Some(own) => (Some(&own.dir), Some(&own.index)),
                None => (Some(dir), None),
            },
            None => (self.context.as_ref(), self.context_index.as_ref()),
        }
    }
}

/// A `--build-context`.
#[derive(Debug, Clone)]
pub enum NamedContext {
    /// `NAME=DIR`: a directory, scanned (its own `.dockerignore` applied).
    /// `COPY --from=NAME` reads it as it reads the build context; `FROM
    /// NAME` starts from one layer of its files (owned root:root, as
    /// context files are) on an empty config, whose key stands on the
    /// directory's content ([`context_base_digest`]).
    Dir {
        /// The directory (absolute).
        dir: PathBuf,
        /// Its scan.
        index: std::sync::Arc<forge_context::Index>,
    },
    /// `NAME=docker-image://REF`: the image `REF` of the store, wherever
    /// the build file names `NAME` as an image (`FROM`, `COPY --from`).
    Image(String),
}

/// The `--build-context` a reference of the build file names, as BuildKit
/// looks it up: the name as written, else its short normalized form
/// (`alpine`, `alpine:latest` and `docker.io/library/alpine` all name the
/// context `alpine`; `alpine:3.20` names `alpine:3.20`).
pub fn named_context<'a>(
    contexts: &'a std::collections::BTreeMap<String, NamedContext>,
    reference: &str,
) -> Option<&'a NamedContext> {
    if contexts.is_empty() {
        return None;
    }
    if let Some(context) = contexts.get(reference) {
        return Some(context);
    }
    let familiar = forge_cache::reference::Reference::parse(reference)
        .ok()?
        .familiar();
    contexts.get(familiar.strip_suffix(":latest").unwrap_or(&familiar))
}

/// What a `FROM NAME` of a directory context stands on in cache keys, in
/// place of an image's manifest digest: `context:` and the hex digest of
/// the whole directory's selection (every path, content, mode and owner,
/// after its `.dockerignore`), so that any change to the directory changes
/// the key of the stage's every step.
///
/// # Errors
/// The directory cannot be selected (it cannot: `.` is always there).
pub fn context_base_digest(index: &forge_context::Index) -> Result<String, ExecutorError> {
    let selection = index
        .select(&[".".to_string()], &[])
        .map_err(|e| ExecutorError::InvalidImage(format!("build context: {e}")))?;
    Ok(format!("context:{}", selection.digest().hex()))
}

/// BuildKit's predefined proxy build args.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What the build reports as it goes. Called from the build's threads.
pub trait Reporter: Sync {
    /// Something happened.
    fn event(&self, event: Event<'_>);
}

/// A progress event. `vertex` numbers the build's steps that do work, from 1,
/// like BuildKit's `#N` (metadata-only steps get none).
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A step starts (or is looked up in the cache).
    Started {
        /// Its number.
        vertex: usize,
        /// `[2/5] RUN make` (with the stage name in multi-stage builds).
        label: &'a str,
    },
    /// The step's result came from the cache.
    Cached {
        /// Its number.
        vertex: usize,
    },
    /// A line the step's command printed.
    Output {
        /// Its number.
        vertex: usize,
        /// The line, without its newline.
        line: &'a str,
    },
    /// A step's layer is stored.
    Layer {
        /// Its number.
        vertex: usize,
        /// Tar entries.
        entries: u64,
        /// Uncompressed bytes.
        bytes: u64,
        /// From the command's exit to the layer being ready.
        elapsed: Duration,
    },
    /// Why a step missed the cache (`--explain-cache`): one input that changed.
    Explain {
        /// Its number.
        vertex: usize,
        /// `env A: 1 -> 2`, `op: ... -> ...`, `parent: an earlier step changed`.
        reason: &'a str,
    },
    /// The step finished.
    Done {
        /// Its number.
        vertex: usize,
        /// How long it took.
        elapsed: Duration,
    },
}

/// An image the build produced for one of the graph's targets.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The target's name.
    pub target: String,
    /// Tags requested for it.
    pub tags: Vec<String>,
    /// The committed image.
    pub committed: Committed,
}

/// Builds every target of `graph` into `store`.
///
/// # Errors
/// A failed RUN ([`ExecutorError::RunFailed`]), a step forge cannot run yet, a
/// sandbox or store failure. Steps finished before the error stay committed and
/// cached.
pub fn build(
    graph: &BuildGraph,
    store: &Store,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> Result<Vec<BuiltImage>, ExecutorError> {
    // COPY/ADD sources in the context: selected once, their digest in the key,
    // their list handed to the copy.
    let mut selections: HashMap<NodeIndex, forge_context::Selection> = HashMap::new();
    {
        for node in graph.topo_order() {
            if !graph.needs_sources(node) {
                continue;
            }
            let (Some(step), Some(stage)) = (graph.step(node), graph.stage_of(node)) else {
                continue;
            };
            let Some(index) = opts.context_of(stage).1 else {
                continue;
            };
            let (sources, excludes, heredocs) = match &step.op {
                Op::Copy(c) => (&c.sources, &c.exclude, &c.heredocs),
                Op::Add(a) => (&a.sources, &a.exclude, &a.heredocs),
                Op::Run(run) => {
                    // `RUN --mount=type=bind` of the context: what it mounts
                    // is the step's input, as a COPY's sources are.
                    let paths: Vec<String> = run
                        .mounts
                        .iter()
                        .filter(|m| {
                            m.kind == forge_ir::MountKind::Bind
                                && matches!(m.from, None | Some(SourceRef::Context))
                        })
                        .map(|m| {
                            let source = m.source.as_deref().unwrap_or(".");
                            let source = source.trim_start_matches('/');
                            if source.is_empty() { "." } else { source }.to_string()
                        })
                        .collect();
                    if let Ok(selection) = index.select(&paths, &[]) {
                        selections.insert(node, selection);
                    }
                    continue;
                }
                _ => continue,
            };
            let paths: Vec<String> = sources
                .iter()
                .filter(|s| !heredocs.iter().any(|h| &h.name == *s))
                .filter(|s| !files::is_http_url(s) && !is_git_url(s))
                .cloned()
                .collect();
            // A source that is not there is reported when the step runs.
            if let Ok(selection) = index.select(&paths, excludes) {
                selections.insert(node, selection);
            }
        }
    }
    // Images used as COPY --from sources: read from the store; their manifest
    // digest is what their steps' keys depend on.
    let mut image_sources: HashMap<String, ImageState> = HashMap::new();
    let mut image_digests: HashMap<NodeIndex, forge_graph::SourceDigest> = HashMap::new();
    for (reference, node) in graph.image_sources() {
        let image = match named_context(&opts.named_contexts, reference) {
            Some(NamedContext::Dir { index, .. }) => {
                // `--build-context NAME=DIR`: the whole directory is the input.
                let selection = index.select(&[".".to_string()], &[]).map_err(|e| {
                    ExecutorError::InvalidImage(format!("build context {reference}: {e}"))
                })?;
                image_digests.insert(node, selection.digest());
                continue;
            }
            // `--build-context NAME=docker-image://REF`.
            Some(NamedContext::Image(image)) => image.as_str(),
            None => reference,
        };
        let record = store.resolve(image).map_err(|e| {
            ExecutorError::InvalidImage(format!(
                "COPY --from={reference}: {e}; make it with `forge import` or `forge load`"
            ))
        })?;
        image_sources.insert(
            reference.to_string(),
            ImageState::from_store(store, &record.digest)?,
        );
        let digest = blake3::hash(record.digest.to_string().as_bytes());
        image_digests.insert(
            node,
            forge_graph::SourceDigest::from_bytes(*digest.as_bytes()),
        );
    }
    let recipes = compute_recipes(graph, &|node| {
        selections
            .get(&node)
            .map(|s| s.digest())
            .or_else(|| image_digests.get(&node).copied())
    });
    let keys = recipes
        .iter()
        .map(|r| match r {
            Ok(recipe) => KeyState::Known(recipe.key()),
            Err(reason) => KeyState::Pending(reason.clone()),
        })
        .collect();
    let stages = &graph.ir().stages;
    let built_stages: Vec<&Stage> = stages.iter().filter(|s| graph.builds(s.id)).collect();
    // Progress numbers as a sequential build gives them: each built stage's
    // FROM, then its steps that do work, stage after stage.
    let mut first_vertex = vec![0; stages.len()];
    let mut next = 1;
    for stage in &built_stages {
        first_vertex[stage.id.0] = next;
        next += 1 + stage.steps.iter().filter(|s| is_fs_step(&s.op)).count();
    }
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let driver = Driver {
        graph,
        store,
        opts,
        reporter,
        keys,
        recipes,
        selections,
        image_sources,
        results: stages.iter().map(|_| StageResult::default()).collect(),
        first_vertex,
        last_good: Mutex::new(vec![None; stages.len()]),
        failed: AtomicBool::new(false),
        jobs: Jobs::new(jobs),
        multi_stage: built_stages.len() > 1,
    };
    // One thread per stage: each runs its steps in order and waits where it
    // needs another stage (its base, a `COPY --from`), so independent
    // stages overlap; `jobs` bounds the steps that do work at once. The
    // first failure stops the other stages at their next step.
    let errors: Mutex<Vec<ExecutorError>> = Mutex::new(Vec::new());
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let group = BUILDS.fetch_add(1, Ordering::SeqCst);
    std::thread::scope(|scope| {
        for stage in &built_stages {
            let (driver, errors) = (&driver, &errors);
            scope.spawn(move || {
                match crate::sandbox::in_group(group, || driver.build_stage(stage)) {
                    Ok(result) => driver.finish(stage.id, result),
                    Err(e) => {
                        let first = !driver.failed.swap(true, Ordering::SeqCst);
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        if first {
                            // The other stages' running steps stop now
                            // (their errors come after this one).
                            crate::sandbox::kill_group(group);
                        }
                        driver.wake_waiters();
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(first) = errors
        .into_iter()
        .find(|e| !matches!(e, ExecutorError::Stopped))
    {
        return Err(first);
    }
    let mut built = Vec::new();
    for target in graph.targets() {
        let Some(Some((mut state, mut committed))) =
            driver.results.get(target.stage.0).map(StageResult::get)
        else {
            return Err(ExecutorError::InvalidImage(format!(
                "target {} was not built",
                target.name
            )));
        };
        if !opts.labels.is_empty() {
            // `--label`: on the target's image only (a stage built on this
            // one, or copied from, sees the stage's own result).
            state.apply_config(&Op::Label(opts.labels.clone()), &[], &mut false);
            committed = state.commit(store, opts.layer.source_date_epoch)?;
        }
        built.push(BuiltImage {
            target: target.name.clone(),
            tags: target.tags.clone(),
            committed,
        });
    }
    Ok(built)
}

struct Driver<'a> {
    graph: &'a BuildGraph,
    store: &'a Store,
    opts: &'a BuildOptions,
    reporter: &'a dyn Reporter,
    keys: Vec<KeyState>,
    /// Every node's key recipe (for `--explain-cache`), by node index.
    recipes: Vec<Result<KeyRecipe, forge_graph::PendingReason>>,
    /// COPY/ADD steps' selections in the context, by node.
    selections: HashMap<NodeIndex, forge_context::Selection>,
    /// Images used as `COPY --from` sources, by reference.
    image_sources: HashMap<String, ImageState>,
    /// Per stage: its final state and commit, once built.
    results: Vec<StageResult>,
    /// Per stage: the progress number of its FROM (its steps that do work
    /// follow).
    first_vertex: Vec<usize>,
    /// Per stage: the image ID of its last step that succeeded.
    last_good: Mutex<Vec<Option<Sha256Digest>>>,
    /// Set when a stage failed: the others stop.
    failed: AtomicBool,
    /// Bounds the steps that do work at once.
    jobs: Jobs,
    multi_stage: bool,
}

/// One stage's result, awaited by the stages that build on it.
#[derive(Default)]
struct StageResult {
    done: Mutex<Option<(ImageState, Committed)>>,
    ready: Condvar,
}

impl StageResult {
    fn get(&self) -> Option<(ImageState, Committed)> {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A counting semaphore: at most `n` holders of a [`JobSlot`].
struct Jobs {
    free: Mutex<usize>,
    released: Condvar,
}

/// A running step's place among the [`Jobs`]; given back when dropped.
struct JobSlot<'j>(&'j Jobs);

impl Jobs {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            released: Condvar::new(),
        }
    }

    /// Runs `work` holding a slot (waiting for one).
    fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let _slot = self.acquire();
        work()
    }

    fn acquire(&self) -> JobSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        JobSlot(self)
    }
}

impl Drop for JobSlot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.released.notify_one();
    }
}

/// The other stages a step reads: `COPY --from=STAGE`, `RUN --mount=...,from=STAGE`.
fn stage_inputs(step: &Step) -> Vec<StageId> {
    match &step.op {
        Op::Copy(c) => match c.from {
            SourceRef::Stage(id) => vec![id],
            _ => Vec::new(),
        },
        Op::Run(run) => run
            .mounts
            .iter()
            .filter_map(|m| match m.from {
                Some(SourceRef::Stage(id)) => Some(id),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a step changes the file system (and so gets a progress line).
fn is_fs_step(op: &Op) -> bool {
    matches!(op, Op::Run(_) | Op::Copy(_) | Op::Add(_) | Op::Workdir(_))
}

/// The instruction as written, on one line, for progress labels.
fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text.split_whitespace().collect();
    let line = joined.join(" ");
    if line.chars().count() > 120 {
        let cut: String = line.chars().take(117).collect();
        format!("{cut}...")
    } else {
        line
    }
}

impl Driver<'_> {
    /// Reports that step `vertex` starts.
    fn start(&self, vertex: usize, label: &str) -> usize {
        self.reporter.event(Event::Started { vertex, label });
        vertex
    }

    /// Records a built stage and wakes the stages waiting for it.
    fn finish(&self, stage: StageId, result: (ImageState, Committed)) {
        if let Some(slot) = self.results.get(stage.0) {
            *slot.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            slot.ready.notify_all();
        }
    }

    /// Wakes every stage waiting for another one, to see that the build
    /// failed (`failed` is set) and stop.
    fn wake_waiters(&self) {
        for slot in &self.results {
            // Under the lock: a waiter between its check and its wait
            // would miss a bare notify.
            let _held = slot.done.lock().unwrap_or_else(|p| p.into_inner());
            slot.ready.notify_all();
        }
    }

    /// `Err(Stopped)` once another stage has failed.
    fn check_running(&self) -> Result<(), ExecutorError> {
        if self.failed.load(Ordering::SeqCst) {
            Err(ExecutorError::Stopped)
        } else {
            Ok(())
        }
    }

    /// The final state of stage `id`, waiting for it to be built.
    fn stage_state(&self, id: StageId) -> Result<ImageState, ExecutorError> {
        let slot = self.results.get(id.0).ok_or_else(|| {
            ExecutorError::InvalidImage(format!("stage {} is not in the build", id.0))
        })?;
        let mut done = slot.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((state, _)) = done.as_ref() {
                return Ok(state.clone());
            }
            self.check_running()?;
            done = slot.ready.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The image ID of stage `id`'s last step that succeeded.
    fn last_good(&self, id: StageId) -> Option<Sha256Digest> {
        let all = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id.0).copied().flatten()
    }

    /// What a COPY/ADD may see of the context: its selection's entries and
    /// their parent directories (`None` when the context was not scanned).
    fn allowed_in_context(&self, stage: &Stage, step: &Step) -> Option<BTreeSet<String>> {
        self.opts.context_of(stage).1?;
        Some(
            self.context_selection(stage, step)
                .map(allowed_in)
                .unwrap_or_default(),
        )
    }

    /// The step's selection in the build context, if it has one.
    fn context_selection(&self, stage: &Stage, step: &Step) -> Option<&forge_context::Selection> {
        let index = stage.steps.iter().position(|s| std::ptr::eq(s, step))?;
        let node = self.step_node(stage.id, index)?;
        self.selections.get(&node)
    }

    /// `COPY --parents` from a context (the build context or a named one)
    /// whose `selection` the step has: one source per path the selection
    /// matched, each copied under the destination with its parent
    /// directories (from the context root, or from a `/./` pivot in the
    /// source, as BuildKit does).
    fn keep_parents(
        step: &Step,
        selection: Option<&forge_context::Selection>,
        file_step: &mut FileStep<'_>,
    ) -> Result<(), ExecutorError> {
        let Op::Copy(copy) = &step.op else {
            return Ok(());
        };
        let selection = selection.ok_or_else(|| {
            ExecutorError::FileAction(format!(
                "{}: a source of COPY --parents is not in the context",
                one_line(&step.origin.text)
            ))
        })?;
        let base = file_step.dest.trim_end_matches('/').to_string();
        let mut sources = Vec::new();
        let mut dests = Vec::new();
        for root in &selection.roots {
            let written = copy
                .sources
                .get(root.source_index)
                .map(String::as_str)
                .unwrap_or("");
            let written = written.trim_start_matches('/');
            let kept = match written.split_once("/./") {
                Some((pivot, _)) => {
                    let pivot = pivot.trim_start_matches("./").trim_end_matches('/');
                    root.path
                        .strip_prefix(pivot)
                        .map(|p| p.trim_start_matches('/'))
                        .unwrap_or(&root.path)
                        .to_string()
                }
                None => root.path.trim_start_matches("./").to_string(),
            };
            let under = if root.is_dir {
                kept.clone()
            } else {
                kept.rsplit_once('/')
                    .map(|(dir, _)| dir.to_string())
                    .unwrap_or_default()
            };
            let dest = if under.is_empty() {
                format!("{base}/")
            } else {
                format!("{base}/{under}/")
            };
            sources.push(FileSource::Path(root.path.clone()));
            dests.push(Some(dest));
        }
        file_step.sources = sources;
        file_step.dests = dests;
        Ok(())
    }

    /// The node of step `index` of `stage` (a stage's nodes are its base,
    /// then its steps in order).
    fn step_node(&self, stage: StageId, index: usize) -> Option<NodeIndex> {
        self.graph.stage_nodes(stage).get(index + 1).copied()
    }

    fn key_hex(&self, stage: StageId, index: usize) -> Option<String> {
        let nodes = self.graph.stage_nodes(stage);
        // A stage's nodes are its base, then its steps in order.
        let node = nodes.get(index + 1)?;
        self.keys.get(node.index())?.key().map(|k| k.hex())
    }

    fn base_state(&self, stage: &Stage, vertex: usize) -> Result<ImageState, ExecutorError> {
        let mut state = match &stage.base {
            Base::Scratch => ImageState::scratch(),
            Base::Stage(id) => self.stage_state(*id)?,
            Base::Image(image) => {
                match named_context(&self.opts.named_contexts, &image.reference) {
                    Some(NamedContext::Dir { dir, index }) => {
                        self.context_base(stage, &image.reference, dir, index, vertex)?
                    }
                    _ => self.image_base(image)?,
                }
            }
        };
        // Triggers of the base ran as this stage's first steps (the IR has
        // them); the new image does not inherit them (BuildKit clears them).
        state.container_config().remove("OnBuild");
        state.set_env(&stage.initial.env);
        Ok(state)
    }

    /// `FROM image`: the image the lowering resolved (for a `--build-context
    /// NAME=docker-image://REF`, REF's digest).
    fn image_base(&self, image: &forge_ir::ImageRef) -> Result<ImageState, ExecutorError> {
        let digest = image.digest.as_deref().ok_or_else(|| {
            ExecutorError::InvalidImage(format!("base image {} was not resolved", image.reference))
        })?;
        let digest: Sha256Digest = digest
            .parse()
            .map_err(|e| ExecutorError::Store(Box::new(e)))?;
        ImageState::from_store(self.store, &digest)
    }

    /// `FROM NAME` of a `--build-context NAME=DIR`: one layer holding the
    /// directory's files as `COPY . /` copies a context (owned root:root,
    /// `.dockerignore` applied), on an empty config. Kept in the step cache
    /// under the base node's key, which stands on the directory's content
    /// ([`context_base_digest`]), so an unchanged directory is not copied
    /// again.
    fn context_base(
        &self,
        stage: &Stage,
        name: &str,
        dir: &std::path::Path,
        index: &forge_context::Index,
        vertex: usize,
    ) -> Result<ImageState, ExecutorError> {
        let store_err = |e| ExecutorError::Store(Box::new(e));
        let key = self
            .graph
            .stage_nodes(stage.id)
            .first()
            .and_then(|node| self.keys.get(node.index()))
            .and_then(KeyState::key)
            .map(|k| k.hex());
        if let (Some(key), false) = (&key, self.opts.no_cache) {
            if let Some(manifest) = self.store.step_cache_get(key).map_err(store_err)? {
                self.reporter.event(Event::Cached { vertex });
                return Ok(ImageState::stored(self.store, &manifest)?.0);
            }
        }
        let mut state = ImageState::scratch();
        let file = FileStep {
            sources: vec![FileSource::Path(".".to_string())],
            dest: "/".to_string(),
            from: FileFrom::Context {
                dir: dir.to_path_buf(),
                allowed: Some(index.entries.iter().map(|e| e.path.clone()).collect()),
            },
            chown: None,
            chmod: None,
            unpack: false,
            dests: Vec::new(),
            link: false,
        };
        let reporter = self.reporter;
        let output = move |line: &str| reporter.event(Event::Output { vertex, line });
        match self
            .jobs
            .run(|| self.runner().run_file(&state, &file, &output))?
        {
            Outcome::Done(new) => self.push_layer(vertex, &mut state, new),
            Outcome::Failed { code, tail, .. } => {
                return Err(ExecutorError::FileAction(format!(
                    "build context {name}: the copy exited with code {code}: {}",
                    tail.join("\n")
                )))
            }
        }
        let created = rfc3339(self.opts.layer.source_date_epoch);
        state.push_history(&format!("FROM {name} (build context)"), false, &created);
        let committed = state.commit(self.store, self.opts.layer.source_date_epoch)?;
        if let Some(key) = &key {
            self.store
                .step_cache_put(key, &committed.manifest)
                .map_err(store_err)?;
        }
        Ok(state)
    }

    fn build_stage(&self, stage: &Stage) -> Result<(ImageState, Committed), ExecutorError> {
        let fs_steps = stage.steps.iter().filter(|s| is_fs_step(&s.op)).count();
        let total = fs_steps + 1;
        let prefix = if self.multi_stage {
            format!("{} ", self.graph.stage_name(stage.id))
        } else {
            String::new()
        };
        let from_label = format!("[{prefix}1/{total}] {}", one_line(&stage.origin.text));
        let started = Instant::now();
        let first_vertex = self.first_vertex.get(stage.id.0).copied().unwrap_or(0);
        let vertex = self.start(first_vertex, &from_label);
        let mut state = self.base_state(stage, vertex)?;
        let mut committed = state.commit(self.store, self.opts.layer.source_date_epoch)?;
        self.reporter.event(Event::Done {
            vertex,
            elapsed: started.elapsed(),
        });

        let mut declared_args: Vec<String> = Vec::new();
        let mut cmd_set = false;
        let mut fs_index = 1;
        for (index, step) in stage.steps.iter().enumerate() {
            self.check_running()?;
            let fs = is_fs_step(&step.op);
            // Numbered now, reported once the step begins (below).
            let vertex = if fs {
                fs_index += 1;
                let label = format!(
                    "[{prefix}{fs_index}/{total}] {}",
                    one_line(&step.origin.text)
                );
                Some((first_vertex + fs_index - 1, label))
            } else {
                None
            };
            let run_args = run_args(step, &declared_args);
            if let Op::Arg(pairs) = &step.op {
                for (name, _) in pairs {
                    declared_args.push(name.clone());
                }
            }
            let key = self.key_hex(stage.id, index);
            let filtered = stage.name.as_ref().is_some_and(|n| {
                self.opts
                    .no_cache_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(n))
            });
            let recipe = self
                .step_node(stage.id, index)
                .and_then(|n| self.recipes.get(n.index()))
                .and_then(|r| r.as_ref().ok());
            let slot = explain::slot(&self.opts.build_id, stage, index);
            let cached = match (&key, self.opts.no_cache || filtered) {
                (Some(key), false) => self
                    .store
                    .step_cache_get(key)
                    .map_err(|e| ExecutorError::Store(Box::new(e)))?,
                _ => None,
            };
            // A step that runs and reads another stage begins once that
            // stage is built: progress shows it from then on. A cache hit
            // needs nothing of it.
            if cached.is_none() {
                for id in stage_inputs(step) {
                    self.stage_state(id)?;
                }
            }
            let vertex = vertex.map(|(vertex, label)| self.start(vertex, &label));
            let started = Instant::now();
            if let (Some(recipe), None) = (recipe, &cached) {
                if self.opts.explain_cache && fs {
                    let reasons = if self.opts.no_cache || filtered {
                        vec!["--no-cache".to_string()]
                    } else {
                        explain::why_missed(self.store, &slot, recipe)
                    };
                    for reason in &reasons {
                        if let Some(vertex) = vertex {
                            self.reporter.event(Event::Explain { vertex, reason });
                        }
                    }
                }
            }
            if let Some(recipe) = recipe {
                explain::remember(self.store, &slot, recipe);
            }
            if let Some(manifest) = cached {
                // The cached image is committed already: nothing to write.
                (state, committed) = ImageState::stored(self.store, &manifest)?;
                if let Some(vertex) = vertex {
                    self.reporter.event(Event::Cached { vertex });
                }
            } else {
                self.run_step(stage, step, vertex, &run_args, &mut state, &mut cmd_set)?;
                committed = state.commit(self.store, self.opts.layer.source_date_epoch)?;
                if let Some(key) = &key {
                    self.store
                        .step_cache_put(key, &committed.manifest)
                        .map_err(|e| ExecutorError::Store(Box::new(e)))?;
                }
                if let Some(vertex) = vertex {
                    self.reporter.event(Event::Done {
                        vertex,
                        elapsed: started.elapsed(),
                    });
                }
            }
            if matches!(step.op, Op::Cmd(_)) {
                cmd_set = true;
            }
            if let Some(last) = self
                .last_good
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(stage.id.0)
            {
                *last = Some(committed.id);
            }
        }
        Ok((state, committed))
    }

    fn run_step(
        &self,
        stage: &Stage,
        step: &Step,
        vertex: Option<usize>,
        run_args: &[(String, String)],
        state: &mut ImageState,
        cmd_set: &mut bool,
    ) -> Result<(), ExecutorError> {
        let label = || one_line(&step.origin.text);
        if !step.deferred.is_empty() {
            return Err(ExecutorError::InvalidImage(format!(
                "`{}` uses variables of an unresolved base image",
                label()
            )));
        }
        let created = rfc3339(self.opts.layer.source_date_epoch);
        let created_by = created_by(step, run_args);
        match &step.op {
            Op::Run(run) => {
                if run.insecure {
                    return Err(ExecutorError::Unsupported {
                        step: label(),
                        what: "RUN --security=insecure".to_string(),
                    });
                }
                let mut secret_env = Vec::new();
                let mounts = self.run_mounts(stage, step, run, &mut secret_env)?;
                let argv = if run.heredocs.is_empty() {
                    command_argv(&run.command, &step.ctx.shell)
                } else {
                    heredoc_argv(run, &step.ctx.shell).map_err(|what| {
                        ExecutorError::Unsupported {
                            step: label(),
                            what,
                        }
                    })?
                };
                let network = match run.network {
                    NetworkMode::Default => self.opts.network,
                    NetworkMode::None => Network::None,
                    NetworkMode::Host => Network::Host,
                };
                let mut env = run_env(step);
                for (name, value) in &self.opts.proxy_env {
                    if !env
                        .iter()
                        .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == name))
                    {
                        env.push(format!("{name}={value}"));
                    }
                }
                // `--mount=type=secret,env=NAME`: only this RUN sees it.
                for (name, value) in secret_env {
                    env.retain(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) != name);
                    env.push(format!("{name}={value}"));
                }
                let sandbox_step = SandboxStep {
                    argv: argv.clone(),
                    env,
                    user: step.ctx.user.clone(),
                    cwd: step.ctx.workdir.clone(),
                    workdir_owned_by_user: false,
                    network,
                    mounts,
                };
                self.sandbox(stage, step, vertex, state, &sandbox_step, &argv)?;
                state.push_history(&created_by, false, &created);
            }
            Op::Workdir(dir) => {
                state.apply_config(&step.op, &step.ctx.shell, cmd_set);
                // The config keeps the path as written; the directory made is
                // the cleaned path (BuildKit's mkdir file op). A RUN then
                // starts in the path as written, making what it names on the
                // way, as BuildKit's executor does.
                let made = destination("/", dir);
                let made = match made.trim_end_matches('/') {
                    "" => "/".to_string(),
                    clean => clean.to_string(),
                };
                let sandbox_step = SandboxStep {
                    argv: Vec::new(),
                    env: run_env(step),
                    user: step.ctx.user.clone(),
                    cwd: made,
                    workdir_owned_by_user: true,
                    network: Network::None,
                    mounts: Vec::new(),
                };
                self.sandbox(stage, step, vertex, state, &sandbox_step, &[])?;
                state.push_history(&created_by, false, &created);
            }
            Op::Copy(_) | Op::Add(_) => {
                let file = self.file_step(stage, step)?;
                self.run_file(stage, step, vertex, state, &file)?;
                state.push_history(&created_by, false, &created);
            }
            Op::Onbuild(_) => {
                // BuildKit records the trigger in the config only, no history.
                state.apply_config(&step.op, &step.ctx.shell, cmd_set);
            }
            op => {
                state.apply_config(op, &step.ctx.shell, cmd_set);
                state.push_history(&created_by, true, &created);
            }
        }
        Ok(())
    }

    /// A RUN's `--mount`s with their sources resolved (BuildKit's
    /// semantics, see the book's "RUN mounts and secrets"); the
    /// `(name, value)` environment of its `env=` secrets goes to `env`. A secret that was
    /// not given is skipped, or [`ExecutorError::MissingSecret`] when
    /// `required`; an `ssh` mount binds its agent's socket (and sets
    /// `SSH_AUTH_SOCK`); a cache seeded `from=` a stage is
    /// [`ExecutorError::Unsupported`].
    fn run_mounts(
        &self,
        stage: &Stage,
        step: &Step,
        run: &forge_ir::RunOp,
        env: &mut Vec<(String, String)>,
    ) -> Result<Vec<run::RunMount>, ExecutorError> {
        use forge_ir::MountKind;
        use run::{BindFrom, RunMount, RunMountKind};
        let label = || one_line(&step.origin.text);
        let unsupported = |what: &str| ExecutorError::Unsupported {
            step: label(),
            what: what.to_string(),
        };
        let bad = |message: String| ExecutorError::BadMount {
            step: label(),
            message,
        };
        let mut mounts = Vec::new();
        for m in &run.mounts {
            let target = if m.target.starts_with('/') {
                m.target.clone()
            } else {
                // Relative targets are relative to the working directory.
                format!("{}/{}", step.ctx.workdir.trim_end_matches('/'), m.target)
            };
            if target.split('/').all(|c| c.is_empty() || c == ".") {
                return Err(bad(format!("cannot mount on {:?}", m.target)));
            }
            let kind = match m.kind {
                MountKind::Tmpfs => RunMountKind::Tmpfs { size: m.size },
                MountKind::Ssh => {
                    let id = m.id.clone().unwrap_or_else(|| "default".to_string());
                    let Some(socket) = self.opts.ssh.get(&id) else {
                        if m.required {
                            return Err(bad(format!(
                                "no SSH agent socket `{id}`: give one with --ssh {id}[=SOCKET]"
                            )));
                        }
                        continue;
                    };
                    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
                        return Err(bad(format!(
                            "--ssh {id}: {} is not a socket",
                            socket.display()
                        )));
                    };
                    // The command finds the agent as usual (the first ssh
                    // mount's, as BuildKit sets it).
                    if !env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
                        env.push(("SSH_AUTH_SOCK".to_string(), target.clone()));
                    }
                    // A read-only bind: connecting to a socket is no write
                    // to its file system.
                    RunMountKind::Bind {
                        from: BindFrom::Dir(dir.to_path_buf()),
                        source: name.to_string_lossy().into_owned(),
                        readonly: true,
                    }
                }
                MountKind::Cache => {
                    let seed = match &m.from {
                        None | Some(SourceRef::Context) => None,
                        Some(SourceRef::Stage(id)) => Some(Box::new(self.stage_state(*id)?)),
                        Some(SourceRef::Image(name)) => match self.image_sources.get(name) {
                            Some(state) => Some(Box::new(state.clone())),
                            None => {
                                return Err(unsupported(&format!(
                                    "RUN --mount=type=cache,from={name} (not an image of the store)"
                                )))
                            }
                        },
                    }
                    .map(|state| (state, m.source.clone().unwrap_or_else(|| "/".to_string())));
                    RunMountKind::Cache {
                        seed,
                        id: m.id.clone().unwrap_or_else(|| m.target.clone()),
                        sharing: m.sharing,
                        mode: m.mode.unwrap_or(0o755),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                        readonly: m.readonly,
                    }
                }
                MountKind::Secret => {
                    let id = m.id.clone().unwrap_or_default();
                    let value = match self.opts.secrets.get(&id) {
                        Some(source) => source
                            .read()
                            .map_err(|e| bad(format!("secret {id:?}: {e}")))?,
                        None => None,
                    };
                    let Some(value) = value else {
                        if m.required {
                            return Err(ExecutorError::MissingSecret { step: label(), id });
                        }
                        continue;
                    };
                    if let Some(name) = &m.env {
                        let text = String::from_utf8(value.clone()).map_err(|_| {
                            bad(format!(
                                "secret {id:?} is not UTF-8: it cannot be env={name}"
                            ))
                        })?;
                        env.push((name.clone(), text));
                        // With `env=` the file is made only for an explicit
                        // target (the IR's default one means none was given).
                        if m.target == format!("/run/secrets/{id}") {
                            continue;
                        }
                    }
                    RunMountKind::Secret {
                        data: crate::sandbox::mounts::SecretData(value),
                        mode: m.mode.unwrap_or(0o400),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                    }
                }
                MountKind::Bind => {
                    let from = match &m.from {
                        None | Some(SourceRef::Context) => {
                            let dir = self.opts.context_of(stage).0.ok_or_else(|| {
                                bad("there is no build context to mount".to_string())
                            })?;
                            BindFrom::Dir(std::path::absolute(dir).map_err(|e| {
                                bad(format!("cannot resolve the context {}: {e}", dir.display()))
                            })?)
                        }
                        Some(SourceRef::Stage(id)) => {
                            BindFrom::Image(Box::new(self.stage_state(*id)?))
                        }
                        Some(SourceRef::Image(name)) => {
                            match named_context(&self.opts.named_contexts, name) {
                                Some(NamedContext::Dir { dir, .. }) => BindFrom::Dir(dir.clone()),
                                _ => match self.image_sources.get(name) {
                                    Some(state) => BindFrom::Image(Box::new(state.clone())),
                                    None => {
                                        return Err(ExecutorError::InvalidImage(format!(
                                            "RUN --mount from={name}: the image was not loaded"
                                        )))
                                    }
                                },
                            }
                        }
                    };
                    RunMountKind::Bind {
                        from,
                        source: m.source.clone().unwrap_or_else(|| "/".to_string()),
                        readonly: m.readonly,
                    }
                }
            };
            mounts.push(RunMount { target, kind });
        }
        Ok(mounts)
    }

    /// The [`FileStep`] of a COPY or ADD: sources classified (paths, URLs,
    /// heredocs), destination made absolute, flags checked.
    fn file_step(&self, stage: &Stage, step: &Step) -> Result<FileStep<'_>, ExecutorError> {
        let label = || one_line(&step.origin.text);
        let unsupported = |what: &str| ExecutorError::Unsupported {
            step: label(),
            what: what.to_string(),
        };
        let (keyword, sources, dest, from, chown, chmod, heredocs, unpack, checksum) =
            match &step.op {
                Op::Copy(c) => {
                    // In a context, its selection applies them (so it must be
                    // scanned); from an image, the sandbox does.
                    if c.from == SourceRef::Context && self.opts.context_of(stage).1.is_none() {
                        if c.parents {
                            return Err(unsupported("COPY --parents without a scanned context"));
                        }
                        if !c.exclude.is_empty() {
                            return Err(unsupported("COPY --exclude without a scanned context"));
                        }
                    }
                    (
                        "COPY",
                        &c.sources,
                        &c.dest,
                        &c.from,
                        &c.chown,
                        &c.chmod,
                        &c.heredocs,
                        false,
                        None,
                    )
                }
                Op::Add(a) => {
                    if !a.exclude.is_empty() && self.opts.context_of(stage).1.is_none() {
                        return Err(unsupported("ADD --exclude without a scanned context"));
                    }
                    (
                        "ADD",
                        &a.sources,
                        &a.dest,
                        &SourceRef::Context,
                        &a.chown,
                        &a.chmod,
                        &a.heredocs,
                        a.unpack.unwrap_or(true),
                        a.checksum.as_ref(),
                    )
                }
                _ => {
                    return Err(ExecutorError::InvalidImage(format!(
                        "`{}` copies nothing",
                        label()
                    )))
                }
            };
        let fail = |msg: String| ExecutorError::FileAction(format!("{}: {msg}", label()));
        if sources.len() > 1 && !dest.ends_with('/') {
            return Err(fail(format!(
                "When using {keyword} with more than one source file, the destination must be \
                 a directory and end with a /"
            )));
        }
        let mut list = Vec::new();
        let mut reads_paths = false;
        for src in sources {
            let doc_name = src.strip_prefix("<<").map(|n| {
                n.trim_start_matches('-')
                    .trim_matches(|c| c == '"' || c == '\'')
            });
            let doc = heredocs
                .iter()
                .find(|h| Some(h.name.as_str()) == doc_name || &h.name == src);
            if let Some(doc) = doc {
                list.push(FileSource::Inline {
                    name: doc.name.clone(),
                    content: doc.content.clone(),
                });
            } else if is_git_url(src) {
                return Err(unsupported(&format!("{keyword} of a Git repository")));
            } else if files::is_http_url(src) {
                if keyword == "COPY" {
                    return Err(fail("source can't be a URL for COPY".to_string()));
                }
                list.push(FileSource::Url {
                    url: src.clone(),
                    checksum: checksum.cloned(),
                });
            } else {
                if checksum.is_some() {
                    return Err(fail(
                        "checksum can't be specified for non-HTTP(S) sources".to_string(),
                    ));
                }
                reads_paths = true;
                list.push(FileSource::Path(src.clone()));
            }
        }
        let chmod = match chmod {
            None => None,
            Some(text) => Some(
                u32::from_str_radix(text, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| fail(format!("invalid --chmod={text}: expected octal")))?,
            ),
        };
        let copy_op = match &step.op {
            Op::Copy(c) => Some(c),
            _ => None,
        };
        // Another image: `--exclude` and `--parents` go to the sandbox.
        let image_from = |state| FileFrom::Image {
            state,
            exclude: copy_op.map(|c| c.exclude.clone()).unwrap_or_default(),
            parents: copy_op.is_some_and(|c| c.parents),
        };
        let mut named_selection = None;
        let from = match from {
            SourceRef::Context => FileFrom::Context {
                dir: match (self.opts.context_of(stage).0, reads_paths) {
                    // Absolute: the sandbox works from another directory.
                    (Some(dir), _) => std::path::absolute(dir).map_err(|e| {
                        fail(format!("cannot resolve the context {}: {e}", dir.display()))
                    })?,
                    (None, false) => PathBuf::new(),
                    (None, true) => {
                        return Err(fail("there is no build context to copy from".to_string()))
                    }
                },
                allowed: self.allowed_in_context(stage, step),
            },
            SourceRef::Stage(id) => image_from(std::borrow::Cow::Owned(self.stage_state(*id)?)),
            SourceRef::Image(name) => match named_context(&self.opts.named_contexts, name) {
                Some(NamedContext::Dir { dir, index }) => {
                    let selection = if copy_op.is_some_and(|c| c.parents || !c.exclude.is_empty()) {
                        let paths: Vec<String> = list
                            .iter()
                            .filter_map(|s| match s {
                                FileSource::Path(p) => Some(p.clone()),
                                _ => None,
                            })
                            .collect();
                        let excludes = copy_op.map(|c| c.exclude.as_slice()).unwrap_or_default();
                        Some(
                            index
                                .select(&paths, excludes)
                                .map_err(|e| fail(format!("build context {name}: {e}")))?,
                        )
                    } else {
                        None
                    };
                    let allowed = match &selection {
                        Some(selection) => allowed_in(selection),
                        None => index.entries.iter().map(|e| e.path.clone()).collect(),
                    };
                    named_selection = selection;
                    FileFrom::Context {
                        dir: dir.clone(),
                        allowed: Some(allowed),
                    }
                }
                _ => self.image_from_store(keyword, name, image_from)?,
            },
        };
        let mut file_step = FileStep {
            sources: list,
            dest: destination(&step.ctx.workdir, dest),
            from,
            chown: chown.clone(),
            chmod,
            unpack,
            dests: Vec::new(),
            link: match &step.op {
                Op::Copy(c) => c.link,
                Op::Add(a) => a.link,
                _ => false,
            },
        };
        // From an image, the sandbox keeps them (see `FileFrom::Image`).
        if copy_op.is_some_and(|c| c.parents) && matches!(file_step.from, FileFrom::Context { .. })
        {
            let selection = named_selection
                .as_ref()
                .or_else(|| self.context_selection(stage, step));
            Self::keep_parents(step, selection, &mut file_step)?;
        }
        Ok(file_step)
    }

    /// The image of a `COPY --from=<image>` (or of a `--build-context
    /// NAME=docker-image://REF`), as loaded when the build started.
    fn image_from_store<'s>(
        &'s self,
        keyword: &str,
        image: &str,
        image_from: impl FnOnce(std::borrow::Cow<'s, ImageState>) -> FileFrom<'s>,
    ) -> Result<FileFrom<'s>, ExecutorError> {
        match self.image_sources.get(image) {
            Some(state) => Ok(image_from(std::borrow::Cow::Borrowed(state))),
            None => Err(ExecutorError::InvalidImage(format!(
                "{keyword} --from={image}: the image was not loaded"
            ))),
        }
    }

    /// The sandbox runner of this build.
    fn runner(&self) -> Runner<'_> {
        Runner {
            store: self.store,
            exe: &self.opts.exe,
            layer: &self.opts.layer,
            hostname: &self.opts.hostname,
            extra_hosts: &self.opts.extra_hosts,
            keep_failed: self.opts.keep_failed_run,
        }
    }

    /// Runs a COPY or ADD and adds its layer to `state`.
    fn run_file(
        &self,
        stage: &Stage,
        step: &Step,
        vertex: Option<usize>,
        state: &mut ImageState,
        file: &FileStep<'_>,
    ) -> Result<(), ExecutorError> {
        let runner = self.runner();
        let reporter = self.reporter;
        let v = vertex.unwrap_or(0);
        let output = move |line: &str| reporter.event(Event::Output { vertex: v, line });
        let outcome = self.jobs.run(|| runner.run_file(state, file, &output));
        let outcome = outcome.map_err(|e| match e {
            ExecutorError::FileAction(msg) => {
                ExecutorError::FileAction(format!("{}: {msg}", self.step_label(stage, step)))
            }
            e => e,
        })?;
        match outcome {
            Outcome::Done(new) => self.add_layer(stage, step, v, state, new),
            Outcome::Failed { code, tail, .. } => Err(ExecutorError::FileAction(format!(
                "{}: the copy exited with code {code}: {}",
                self.step_label(stage, step),
                tail.join("\n")
            ))),
        }
    }

    /// Adds a step's new layer to `state` (refusing the 128th) and reports it.
    fn add_layer(
        &self,
        stage: &Stage,
        step: &Step,
        vertex: usize,
        state: &mut ImageState,
        new: NewLayer,
    ) -> Result<(), ExecutorError> {
        if state.layers.len() >= MAX_LAYERS {
            return Err(ExecutorError::TooManyLayers {
                step: self.step_label(stage, step),
                max: MAX_LAYERS,
            });
        }
        self.push_layer(vertex, state, new);
        Ok(())
    }

    /// Reports a new layer and adds it to `state`.
    fn push_layer(&self, vertex: usize, state: &mut ImageState, new: NewLayer) {
        self.reporter.event(Event::Layer {
            vertex,
            entries: new.entries,
            bytes: new.bytes,
            elapsed: new.elapsed,
        });
        state.layers.push(new.layer);
    }

    /// Runs a sandbox step and adds its layer (if any) to `state`.
    fn sandbox(
        &self,
        stage: &Stage,
        step: &Step,
        vertex: Option<usize>,
        state: &mut ImageState,
        sandbox_step: &SandboxStep,
        argv: &[String],
    ) -> Result<(), ExecutorError> {
        let runner = self.runner();
        let reporter = self.reporter;
        let v = vertex.unwrap_or(0);
        let output = move |line: &str| reporter.event(Event::Output { vertex: v, line });
        match self.jobs.run(|| runner.run(state, sandbox_step, &output))? {
            Outcome::Done(new) => self.add_layer(stage, step, v, state, new),
            Outcome::Failed {
                container: Some(name),
                ..
            } if self.check_running().is_err() => {
                // Killed because another stage failed first: that failure
                // is the one reported, and the one whose container is kept.
                let containers = forge_cache::container::Containers::new(self.store);
                if let Ok(Some(c)) = containers.find(&name) {
                    let _ = containers.remove(&c);
                }
                Err(ExecutorError::Stopped)
            }
            Outcome::Failed {
                code,
                tail,
                container,
            } => Err(ExecutorError::RunFailed {
                step: self.step_label(stage, step),
                command: shell_words(argv),
                code,
                tail,
                last_good: self.last_good(stage.id).map(|d| d.to_string()),
                container,
            }),
        }
    }

    /// `[2/5] RUN make`, as progress showed it.
    fn step_label(&self, stage: &Stage, step: &Step) -> String {
        let total = stage.steps.iter().filter(|s| is_fs_step(&s.op)).count() + 1;
        let position = stage
            .steps
            .iter()
            .take_while(|s| !std::ptr::eq(*s, step))
            .filter(|s| is_fs_step(&s.op))
            .count()
            + 2;
        let prefix = if self.multi_stage {
            format!("{} ", self.graph.stage_name(stage.id))
        } else {
            String::new()
        };
        format!(
            "[{prefix}{position}/{total}] {}",
            one_line(&step.origin.text)
        )
    }
}

/// What a copy from a context may see of it: `selection`'s entries, their
/// parent directories and the resolved source roots.
fn allowed_in(selection: &forge_context::Selection) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    for e in &selection.entries {
        let mut path = e.entry.path.as_str();
        allowed.insert(path.to_string());
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !allowed.insert(parent.to_string()) {
                break;
            }
            path = parent;
        }
    }
    for root in &selection.roots {
        allowed.insert(root.resolved.clone());
    }
    allowed
}

/// The argv of a shell-form RUN with heredocs, as BuildKit runs it: `RUN
/// <<EOF` alone is an inline script, run by the shell; otherwise the heredoc
/// bodies follow the command line, and the shell reads them as the here-documents
/// they are (`RUN cat <<EOF > /file`).
fn heredoc_argv(run: &forge_ir::RunOp, shell: &[String]) -> Result<Vec<String>, String> {
    let forge_ir::CommandLine::Shell(text) = &run.command else {
        return Err("heredocs in an exec-form RUN".to_string());
    };
    let mut argv = command_argv(&forge_ir::CommandLine::Shell(String::new()), shell);
    argv.pop();
    let marker = text
        .trim()
        .trim_start_matches("<<")
        .trim_start_matches('-')
        .trim_matches(['"', '\'']);
    match run.heredocs.as_slice() {
        [only] if marker == only.name => {
            if only.content.starts_with("#!") {
                return Err("an inline RUN script with a #! line".to_string());
            }
            argv.push(only.content.clone());
        }
        heredocs => {
            let mut script = text.clone();
            script.push('\n');
            for h in heredocs {
                script.push_str(&h.content);
                if !h.content.is_empty() && !h.content.ends_with('\n') {
                    script.push('\n');
                }
                script.push_str(&h.name);
                script.push('\n');
            }
            argv.push(script);
        }
    }
    Ok(argv)
}

/// A command line for humans: words with spaces or quotes are quoted.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A RUN's environment: the config's `Env`, then the build args declared in the
/// stage that have a value and are not shadowed by `ENV` (BuildKit's order).
fn run_env(step: &Step) -> Vec<String> {
    let mut env: Vec<String> = step
        .ctx
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for (name, value) in &step.ctx.args {
        if let Some(value) = value {
            if !step.ctx.env.iter().any(|(k, _)| k == name) {
                env.push(format!("{name}={value}"));
            }
        }
    }
    env
}

/// The build args a RUN's history shows (`|N name=value ...`): every arg
/// declared in the stage so far, in declaration order, with its value as the
/// command sees it (`ENV` wins).
fn run_args(step: &Step, declared: &[String]) -> Vec<(String, String)> {
    if !matches!(step.op, Op::Run(_)) {
        return Vec::new();
    }
    declared
        .iter()
        .filter(|name| !PROXY_ARGS.contains(&name.as_str()))
        .map(|name| {
            let value = step
                .ctx
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| step.ctx.args.get(name).cloned().flatten())
                .unwrap_or_default();
            (name.clone(), value)
        })
        .collect()
}
