//! `forge build`: lowering against the store, running the build, progress
//! output, tagging.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use forge_cache::image::host_architecture;
use forge_cache::reference::Reference;
use forge_cache::store::{ImageRecord, Store};
use forge_cache::Sha256Digest;
use forge_executor::build::{
    context_base_digest, named_context, BuildOptions, Event, NamedContext, Reporter,
};
use forge_executor::sandbox::Network;
use forge_executor::ExecutorError;
use forge_frontend::resolve::{BaseImage, BaseResolver};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::Value;

use crate::images::open_store;
use crate::{lower_input_with, Failure, InputArgs, PlanFormat};

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Print the plan (steps, waves, cache keys) without running anything or
    /// touching the store or the network.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of the plan (with --dry-run).
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// The network of RUN steps: `default`/`host` (the host's) or `none`.
    #[arg(long, default_value = "default", value_parser = ["default", "host", "none"])]
    pub network: String,
    /// Run every step, even those whose result is cached.
    #[arg(long)]
    pub no_cache: bool,
    /// Run the steps of these stages even when cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,
    /// For each step that runs, say which input of its cache key changed since
    /// the last build of that step.
    #[arg(long)]
    pub explain_cache: bool,
    /// Hash every context file again instead of trusting the stat cache.
    #[arg(long)]
    pub verify_context: bool,
    /// An extra context (repeatable): `NAME=DIR`, a directory that `COPY
    /// --from=NAME` reads and `FROM NAME` starts from, or
    /// `NAME=docker-image://IMAGE`, an image of the store used wherever NAME
    /// is named as an image.
    #[arg(
        long = "build-context",
        value_name = "NAME=DIR|NAME=docker-image://IMAGE"
    )]
    pub build_contexts: Vec<String>,
    /// Progress output: `auto` (tty on a terminal, plain otherwise), `plain`
    /// (one line per event), `tty` (a live progress view), `quiet`.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print only the image ID on success (and no progress).
    #[arg(short, long)]
    pub quiet: bool,
    /// Check the registry for a newer version of every base image, even one
    /// the store has (a base missing from the store is always pulled).
    #[arg(long)]
    pub pull: bool,
    /// Push the tagged images to their registries once built (as
    /// `--output type=registry`).
    #[arg(long)]
    pub push: bool,
    /// Write the image ID to this file.
    #[arg(long)]
    pub iidfile: Option<PathBuf>,
    /// The target platform; only the host's is supported for now.
    #[arg(long)]
    pub platform: Option<String>,
    /// How many steps may run at once (independent stages run in
    /// parallel); 0: one per core.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub jobs: usize,
    /// A secret for `RUN --mount=type=secret` (repeatable), docker buildx's
    /// syntax: `id=ID,src=FILE`, `id=ID,env=VARIABLE`, `type=file|env`; a
    /// bare `id=ID` reads the variable ID if set, else the file ID. Never
    /// stored in the image, the cache or the output.
    #[arg(long = "secret", value_name = "id=ID[,src=FILE|,env=VAR]")]
    pub secrets: Vec<String>,
    /// An SSH agent socket to forward to `RUN --mount=type=ssh` (`default`:
    /// `$SSH_AUTH_SOCK`; or `ID=SOCKET`; repeatable).
    #[arg(long = "ssh", value_name = "default|ID=SOCKET")]
    pub ssh: Vec<String>,
    #[command(flatten)]
    pub extra: Box<ExtraArgs>,
}

/// `--label`, `--add-host`, `--metadata-file` (boxed, so that
/// [`BuildArgs`] stays a reasonable size among the subcommands' args).
#[derive(Debug, Args)]
pub struct ExtraArgs {
    /// Set a label on the built image (repeatable; over the build file's
    /// `LABEL` of the same key). Not part of any step's cache key.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Add a line to the `/etc/hosts` of RUN steps (repeatable; also
    /// `HOST=IP`). Never part of a layer.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// Write the result as buildx does (`containerimage.digest`,
    /// `containerimage.config.digest`, `image.name`, ...) to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Also export the image: `type=oci|docker,dest=FILE` (an archive),
    /// `type=tar,dest=FILE` (its file system as a tar), `type=local,dest=DIR`
    /// (unpacked; a bare DIR too), `-` (a tar on standard output); the
    /// default, `type=image`, keeps it in the store only.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub output: Option<String>,
    /// What to do when a RUN fails: `error` (stop, the default) or `shell`
    /// (when forge runs on a terminal, open a shell in the failed step's
    /// container, with what the command changed, before stopping).
    #[arg(long, value_enum, default_value_t = OnFailure::Error)]
    pub on_failure: OnFailure,
}

/// `--on-failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailure {
    /// Stop with the error.
    Error,
    /// Open a shell in the failed step's container, then stop.
    Shell,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, `plain` otherwise.
    Auto,
    /// Plain line-per-event logs.
    Plain,
    /// A live progress view.
    Tty,
    /// Nothing but errors.
    Quiet,
}

/// Scans a context directory, after its `.dockerignore` (or the
/// Dockerfile's own), with content digests; a stat cache per directory in
/// the store keeps a no-op rebuild at about one `lstat` per file.
fn scan_context(
    store: &Store,
    dir: &std::path::Path,
    dockerfile: Option<&std::path::Path>,
    verify: bool,
) -> Result<forge_context::Index, Failure> {
    let context = forge_context::Context::open(dir, dockerfile).map_err(|e| Failure {
        report: e.into(),
        code: 1,
    })?;
    let cache_name = blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex();
    let stat_cache = store
        .root()
        .join("forge/v1/statcache")
        .join(cache_name.as_str());
    if let Some(parent) = stat_cache.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let scanned = if verify {
        context.scan_verify(Some(&stat_cache))
    } else {
        context.scan(Some(&stat_cache))
    };
    scanned.map_err(|e| Failure {
        report: e.into(),
        code: 1,
    })
}

/// Base images come from the store; one the store lacks is pulled from its
/// registry (with `--pull`, every one is checked there first).
struct StoreResolver<'s> {
    store: &'s Store,
    /// `--pull`.
    always_pull: bool,
    /// No pull progress lines (`-q`, `--progress quiet`).
    quiet: bool,
    /// The references pulled by this build (each once, even with `--pull`).
    pulled: Mutex<BTreeSet<String>>,
}

impl StoreResolver<'_> {
    /// Pulls `reference` (a line on stderr unless quiet); the error says
    /// what else would give the image.
    fn pull(&self, reference: &str) -> Result<(), String> {
        let parsed = Reference::parse(reference).map_err(|e| e.to_string())?;
        let registry =
            crate::registry::client(self.store).map_err(|f| format!("{:?}", f.report))?;
        if !self.quiet {
            eprintln!("pulling {}", parsed.familiar());
        }
        let platform = forge_registry::transfer::Platform::host();
        let pulled =
            forge_registry::transfer::pull(self.store, &registry, &parsed, &platform, 4, &|_| {})
                .map_err(|e| {
                format!(
                    "{e}; pull failed (an image can also come from `forge import` or `forge load`)"
                )
            })?;
        if !self.quiet {
            eprintln!("pulled {} ({})", parsed.familiar(), pulled.repo_digest);
        }
        self.pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(reference.to_string());
        Ok(())
    }

    /// The store's image `reference` (`NAME@sha256:D` is also the image
    /// pulled from the index `D`: `Store::resolve` matches repo digests).
    fn find(&self, reference: &str) -> Result<ImageRecord, String> {
        self.store.resolve(reference).map_err(|e| {
            format!("{e}; make it with `forge import` or `forge load`, or pull it from a registry")
        })
    }

    /// The image `reference`, pulled first when it is a name the store
    /// lacks (with `--pull`, any name, once per build).
    fn image(&self, reference: &str) -> Result<ImageRecord, String> {
        let in_store = self.find(reference);
        let is_name = !reference.starts_with("sha256:") && Reference::parse(reference).is_ok();
        let pulled_now = self
            .pulled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(reference);
        if is_name && !pulled_now && (self.always_pull || in_store.is_err()) {
            self.pull(reference)?;
            return self.find(reference);
        }
        in_store
    }
}

impl BaseResolver for StoreResolver<'_> {
    fn resolve(&self, reference: &str, _: Option<&str>) -> Result<Option<BaseImage>, String> {
        // A name (not an ID) missing here, or any name with --pull: ask its registry.
        let record = self.image(reference)?;
        if record.is_index() {
            return Err(format!(
                "{reference} is a multi-platform index; forge builds from single-platform images for now"
            ));
        }
        let manifest = self.store.manifest(&record).map_err(|e| e.to_string())?;
        let config_digest: Sha256Digest = manifest
            .config()
            .digest()
            .to_string()
            .parse()
            .map_err(|e: forge_cache::CacheError| e.to_string())?;
        let bytes = self
            .store
            .read_blob(&config_digest)
            .map_err(|e| e.to_string())?;
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the image config of {reference} is not JSON: {e}"))?;
        let arch = config
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !arch.is_empty() && arch != host_architecture() {
            return Err(format!(
                "{reference} is for {arch}, this machine is {}; building for other platforms is not supported yet",
                host_architecture()
            ));
        }
        let c = config.get("config");
        let strings = |key: &str| -> Vec<String> {
            c.and_then(|c| c.get(key))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |key: &str| -> String {
            c.and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Ok(Some(BaseImage {
            digest: record.digest.to_string(),
            env: strings("Env")
                .into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv, String::new()),
                })
                .collect(),
            workdir: string("WorkingDir"),
            user: string("User"),
            shell: strings("Shell"),
            onbuild: strings("OnBuild"),
        }))
    }
}

/// `--build-context NAME=DIR` (scanned, its own `.dockerignore` applied, a
/// stat cache per directory as for the main context) and
/// `--build-context NAME=docker-image://IMAGE`.
fn named_contexts(
    args: &BuildArgs,
    store: &Store,
) -> Result<BTreeMap<String, NamedContext>, Failure> {
    let mut named_contexts = BTreeMap::new();
    for spec in &args.build_contexts {
        let Some((name, value)) = spec
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
        else {
            return Err(crate::usage(
                format!("invalid --build-context `{spec}`"),
                "write it as NAME=DIR or NAME=docker-image://IMAGE",
            ));
        };
        if let Some(image) = value.strip_prefix("docker-image://") {
            Reference::parse(image)?;
            named_contexts.insert(name.to_string(), NamedContext::Image(image.to_string()));
            continue;
        }
        if let Some((scheme, _)) = value.split_once("://") {
            return Err(crate::usage(
                format!("--build-context {name}: `{scheme}://` contexts are not supported yet"),
                "give a directory, or docker-image://IMAGE for an image of the store",
            ));
        }
        let dir = std::fs::canonicalize(value).map_err(|e| Failure {
            report: miette::miette!("cannot open build context {name} ({value}): {e}"),
            code: 1,
        })?;
        let named = forge_context::Context::open(&dir, None).map_err(|e| Failure {
            report: e.into(),
            code: 1,
        })?;
        let cache = store.root().join("forge/v1/statcache").join(
            blake3::hash(dir.as_os_str().as_encoded_bytes())
                .to_hex()
                .as_str(),
        );
        if let Some(parent) = cache.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let index = if args.verify_context {
            named.scan_verify(Some(&cache))
        } else {
            named.scan(Some(&cache))
        }
        .map_err(|e| Failure {
            report: e.into(),
            code: 1,
        })?;
        named_contexts.insert(
            name.to_string(),
            NamedContext::Dir {
                dir,
                index: std::sync::Arc::new(index),
            },
        );
    }
    Ok(named_contexts)
}

/// Base images, with `--build-context` names first (BuildKit's rule): a
/// `docker-image://IMAGE` context resolves as IMAGE does; a directory
/// context to an empty config whose digest, for cache keys, is the
/// directory's content digest (the executor makes its layer); any other
/// name from the store.
struct NamedContextResolver<'s> {
    store: StoreResolver<'s>,
    named: &'s BTreeMap<String, NamedContext>,
}

impl BaseResolver for NamedContextResolver<'_> {
    fn resolve(
        &self,
        reference: &str,
        platform: Option<&str>,
    ) -> Result<Option<BaseImage>, String> {
        match named_context(self.named, reference) {
            Some(NamedContext::Image(image)) => self
                .store
                .resolve(image, platform)
                .map_err(|e| format!("build context {reference} (docker-image://{image}): {e}")),
            Some(NamedContext::Dir { index, .. }) => Ok(Some(BaseImage {
                digest: context_base_digest(index).map_err(|e| e.to_string())?,
                ..BaseImage::default()
            })),
            None => self.store.resolve(reference, platform),
        }
    }
}

impl From<ExecutorError> for Failure {
    fn from(e: ExecutorError) -> Self {
        let code = match &e {
            // The build's input: a step that failed, a COPY source that is
            // not there, a mount that cannot be made as written, a secret
            // or agent that was not given.
            ExecutorError::RunFailed { .. }
            | ExecutorError::TooManyLayers { .. }
            | ExecutorError::FileAction(_)
            | ExecutorError::BadMount { .. }
            | ExecutorError::MissingSecret { .. } => 1,
            ExecutorError::Store(inner)
                if !matches!(**inner, forge_cache::CacheError::Io { .. }) =>
            {
                1
            }
            _ => 2,
        };
        Self {
            report: e.into(),
            code,
        }
    }
}

/// A failed build's error. With `--on-failure=shell` (a RUN that failed
/// names the container it left), the error is printed, a shell is opened in
/// that container, and once it ends, the container is removed and a
/// one-line reminder of the error is what is left to print.
fn failed_build(e: ExecutorError) -> Failure {
    let ExecutorError::RunFailed {
        step,
        code,
        container: Some(name),
        ..
    } = &e
    else {
        return e.into();
    };
    let (step, code, name) = (step.clone(), *code, name.clone());
    let failure = Failure::from(e);
    eprintln!("{:?}", failure.report);
    eprintln!("opening a shell in the failed step's container {name}; exit it to end the build");
    let shell = crate::containers::debug_shell(&name);
    let summary = match shell {
        Ok(_) => format!("{step} failed with exit code {code} (container {name} removed)"),
        Err(shell_failure) => {
            eprintln!("{:?}", shell_failure.report);
            format!("{step} failed with exit code {code}")
        }
    };
    Failure {
        report: miette::miette!("{summary}"),
        code: failure.code,
    }
}

/// Prints progress as plain lines on stderr.
struct PlainReporter;

impl Reporter for PlainReporter {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Started { vertex, label } => eprintln!("#{vertex} {label}"),
            Event::Cached { vertex } => eprintln!("#{vertex} CACHED"),
            Event::Output { vertex, line } => eprintln!("#{vertex} {line}"),
            Event::Layer {
                vertex,
                entries,
                bytes,
                elapsed,
            } => eprintln!(
                "#{vertex} layer {entries} entries {bytes} bytes in {:.6}s",
                elapsed.as_secs_f64()
            ),
            Event::Explain { vertex, reason } => eprintln!("#{vertex} cache miss: {reason}"),
            Event::Done { vertex, elapsed } => {
                eprintln!("#{vertex} DONE {:.1}s", elapsed.as_secs_f64())
            }
        }
    }
}

/// Whether progress may use colors: not when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>), nor on a `dumb` terminal.
fn colors_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Where the live view draws: the terminal, or (`--progress tty` asked for
/// when standard error is not one, a CI log say) standard error as a
/// terminal of `$COLUMNS` (80) columns, escape codes and all.
fn tty_draw_target(is_terminal: bool) -> ProgressDrawTarget {
    if is_terminal {
        return ProgressDrawTarget::stderr();
    }
    let size = |var: &str, default: u16| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    ProgressDrawTarget::term_like_with_hz(
        Box::new(StderrTerm {
            width: size("COLUMNS", 80),
            height: size("LINES", 100),
        }),
        10,
    )
}

/// Standard error as indicatif's terminal, whether it is one or not.
#[derive(Debug)]
struct StderrTerm {
    width: u16,
    height: u16,
}

impl StderrTerm {
    fn write(s: &str) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(s.as_bytes())
    }

    fn csi(n: usize, code: char) -> std::io::Result<()> {
        if n == 0 {
            Ok(())
        } else {
            Self::write(&format!("\x1b[{n}{code}"))
        }
    }
}

impl TermLike for StderrTerm {
    fn width(&self) -> u16 {
        self.width
    }
    fn height(&self) -> u16 {
        self.height
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'A')
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'B')
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'C')
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        Self::csi(n, 'D')
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        Self::write(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        Self::write(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Self::write("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// How many of a running step's last output lines the live view shows.
const TTY_TAIL: usize = 3;

/// The live view (`--progress tty`), buildx's way: a line per running step
/// with its time and, under it, its last output lines; finished steps
/// scroll above as ` => [2/5] RUN make 1.2s`; cache hits in a row are
/// collapsed into one ` => CACHED ...` line. Stages run side by side, so
/// several steps may be live at once.
struct TtyReporter {
    multi: MultiProgress,
    header: ProgressBar,
    color: bool,
    state: Mutex<TtyState>,
}

#[derive(Default)]
struct TtyState {
    /// Every step seen, by vertex.
    steps: HashMap<usize, TtyStep>,
    /// Labels of cache hits not printed yet, and their live line.
    cached: Vec<String>,
    cached_bar: Option<ProgressBar>,
}

struct TtyStep {
    label: String,
    /// The step's line and its output lines while it runs; `None` once it
    /// finished (or came from the cache).
    live: Option<LiveStep>,
}

struct LiveStep {
    bar: ProgressBar,
    lines: Vec<ProgressBar>,
    tail: VecDeque<String>,
}

/// `1.2s`, the elapsed time of a bar.
fn seconds_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key(
            "secs",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}s", state.elapsed().as_secs_f64());
            },
        )
}

/// A command's output line as the live view shows it: what a `\r` left
/// visible, without escape sequences or other control characters (the
/// view's own line counting depends on it).
fn printable(line: &str) -> String {
    let line = line.rsplit('\r').next().unwrap_or(line);
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI `ESC [ ... final` or a two-character escape.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

impl TtyReporter {
    fn new(target: ProgressDrawTarget, color: bool) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(
            ProgressBar::new_spinner()
                .with_style(seconds_style("[+] Building {secs} ({pos} done)")),
        );
        header.enable_steady_tick(Duration::from_millis(100));
        Self {
            multi,
            header,
            color,
            state: Mutex::new(TtyState::default()),
        }
    }

    /// Prints a finished line above the live ones (blue, as buildx's, when
    /// colors are on).
    fn print_done(&self, line: &str) {
        let _ = if self.color {
            self.multi.println(format!("\x1b[34m{line}\x1b[0m"))
        } else {
            self.multi.println(line)
        };
    }

    /// The collapsed line of `labels`, cache hits in a row.
    fn cached_line(labels: &[String]) -> String {
        match labels {
            [] => String::new(),
            [one] => format!(" => CACHED {one}"),
            [first, .., last] => {
                format!(" => CACHED {} steps: {first} ... {last}", labels.len())
            }
        }
    }

    /// Prints the cache hits not printed yet, as one line.
    fn flush_cached(&self, state: &mut TtyState) {
        if let Some(bar) = state.cached_bar.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        if !state.cached.is_empty() {
            self.print_done(&Self::cached_line(&state.cached));
            state.cached.clear();
        }
    }

    /// Ends a running step's live lines; returns its label, or `None` if it
    /// had finished already.
    fn finish_step(&self, state: &mut TtyState, vertex: usize) -> Option<String> {
        let step = state.steps.get_mut(&vertex)?;
        let live = step.live.take()?;
        for bar in live.lines.iter().chain(std::iter::once(&live.bar)) {
            bar.finish_and_clear();
            self.multi.remove(bar);
        }
        self.header.inc(1);
        Some(step.label.clone())
    }
}

impl Reporter for TtyReporter {
    fn event(&self, event: Event<'_>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Started { vertex, label } => {
                let bar = self.multi.add(
                    ProgressBar::new_spinner()
                        .with_style(seconds_style(" => {wide_msg} {secs:>6}"))
                        .with_message(label.to_string()),
                );
                bar.enable_steady_tick(Duration::from_millis(100));
                state.steps.insert(
                    vertex,
                    TtyStep {
                        label: label.to_string(),
                        live: Some(LiveStep {
                            bar,
                            lines: Vec::new(),
                            tail: VecDeque::new(),
                        }),
                    },
                );
            }
            Event::Cached { vertex } => {
                if let Some(label) = self.finish_step(&mut state, vertex) {
                    state.cached.push(label);
                    let line = Self::cached_line(&state.cached);
                    match &state.cached_bar {
                        Some(bar) => bar.set_message(line),
                        None => {
                            let bar = self.multi.insert_after(
                                &self.header,
                                ProgressBar::new_spinner()
                                    .with_style(
                                        ProgressStyle::with_template("{wide_msg}")
                                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                                    )
                                    .with_message(line),
                            );
                            bar.tick();
                            state.cached_bar = Some(bar);
                        }
                    }
                }
            }
            Event::Output { vertex, line } => {
                let Some(live) = state.steps.get_mut(&vertex).and_then(|s| s.live.as_mut()) else {
                    return;
                };
                if live.tail.len() == TTY_TAIL {
                    live.tail.pop_front();
                }
                live.tail.push_back(printable(line));
                while live.lines.len() < live.tail.len() {
                    let after = live.lines.last().unwrap_or(&live.bar).clone();
                    let bar = self.multi.insert_after(
                        &after,
                        ProgressBar::new_spinner().with_style(
                            ProgressStyle::with_template("    {wide_msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        ),
                    );
                    live.lines.push(bar);
                }
                for (bar, text) in live.lines.iter().zip(&live.tail) {
                    bar.set_message(text.clone());
                }
            }
            Event::Layer { .. } => {}
            Event::Explain { vertex, reason } => {
                self.flush_cached(&mut state);
                let label = state
                    .steps
                    .get(&vertex)
                    .map(|s| s.label.as_str())
                    .unwrap_or_default();
                let _ = self
                    .multi
                    .println(format!(" => {label} cache miss: {reason}"));
            }
            Event::Done { vertex, elapsed } => {
                if let Some(label) = self.finish_step(&mut state, vertex) {
                    self.flush_cached(&mut state);
                    self.print_done(&format!(" => {label} {:.1}s", elapsed.as_secs_f64()));
                }
            }
        }
    }
}

impl Drop for TtyReporter {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_cached(&mut state);
        // Steps still live (a failed build): their lines go; the error
        // report follows with the failed step's last output.
        for step in state.steps.values_mut() {
            if let Some(live) = step.live.take() {
                for bar in live.lines.iter().chain(std::iter::once(&live.bar)) {
                    bar.finish_and_clear();
                }
            }
        }
        self.header.finish_and_clear();
        let _ = self.multi.clear();
    }
}

struct QuietReporter;

impl Reporter for QuietReporter {
    fn event(&self, _: Event<'_>) {}
}

/// Ctrl-C (and SIGTERM): kill every sandbox, exit 130. Everything in the store
/// is written to temp files and renamed into place, so leaving now leaves it
/// consistent; our temp files are cleaned up by the next `Store::open`.
fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        forge_executor::sandbox::kill_all();
        eprintln!("\ninterrupted");
        std::process::exit(130);
    });
}

/// A context read from standard input, removed when dropped.
struct StdinContext(PathBuf);

impl StdinContext {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for StdinContext {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads standard input into a fresh directory under the store's temp dir: a
/// tar archive (plain, gzip, bzip2, xz or zstd) is unpacked there, with the same
/// safety checks as a layer (nothing may land outside the directory); anything
/// else is taken as the Dockerfile of an empty context (`docker build - <
/// Dockerfile`), which needs `may_be_dockerfile` (no `-f`).
fn read_stdin_context(store: &Store, may_be_dockerfile: bool) -> Result<StdinContext, Failure> {
    use std::io::Read;
    let env_err = |what: &str, e: &dyn std::fmt::Display| Failure {
        report: miette::miette!("cannot {what}: {e}"),
        code: 2,
    };
    let dir = StdinContext(store.tmp_dir().join(Store::temp_name("context")));
    std::fs::create_dir_all(dir.path()).map_err(|e| env_err("create the context directory", &e))?;
    let mut head = Vec::new();
    std::io::stdin()
        .lock()
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| env_err("read standard input", &e))?;
    let compressed =
        forge_cache::layer::detect(&head) != forge_cache::layer::DetectedCompression::None;
    let is_tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if !compressed && !is_tar {
        if !may_be_dockerfile {
            return Err(crate::usage(
                "standard input is not a tar archive",
                "`forge build -` reads the context as a tar (plain or compressed), or a Dockerfile when there is no -f",
            ));
        }
        let mut text = head;
        std::io::stdin()
            .lock()
            .read_to_end(&mut text)
            .map_err(|e| env_err("read standard input", &e))?;
        std::fs::write(dir.path().join("Dockerfile"), text)
            .map_err(|e| env_err("write the Dockerfile", &e))?;
        return Ok(dir);
    }
    let input = std::io::Cursor::new(head).chain(std::io::stdin());
    let mut tar = forge_cache::layer::decompress(input).map_err(|e| Failure {
        report: miette::Report::new(forge_cache::CacheError::from(e)),
        code: 1,
    })?;
    forge_cache::layer::apply_layer(&mut tar, dir.path(), &Default::default()).map_err(|e| {
        Failure {
            report: miette::Report::new(forge_cache::CacheError::from(e)),
            code: 1,
        }
    })?;
    Ok(dir)
}

/// `--secret` values (see [`forge_executor::sandbox::mounts::parse_secret`]),
/// by id; a later one of the same id wins.
fn parse_secrets(
    raw: &[String],
) -> Result<
    std::collections::BTreeMap<String, forge_executor::sandbox::mounts::SecretSource>,
    Failure,
> {
    raw.iter()
        .map(|spec| {
            forge_executor::sandbox::mounts::parse_secret(spec).map_err(|e| {
                crate::usage(
                    format!("invalid --secret `{spec}`: {e}"),
                    "write it as id=ID,src=FILE or id=ID,env=VARIABLE",
                )
            })
        })
        .collect()
}

/// `--ssh default` (the agent of `$SSH_AUTH_SOCK`) or `--ssh ID=SOCKET`:
/// agent sockets by id. (buildx also takes key files; forge forwards
/// agents only.)
fn parse_ssh(raw: &[String]) -> Result<BTreeMap<String, PathBuf>, Failure> {
    use std::os::unix::fs::FileTypeExt;
    raw.iter()
        .map(|spec| {
            let (id, path) = match spec.split_once('=') {
                Some((id, path)) => (id.to_string(), PathBuf::from(path)),
                None => {
                    let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                        crate::usage(
                            format!("--ssh {spec}: SSH_AUTH_SOCK is not set"),
                            "start an agent (ssh-agent) or write --ssh ID=SOCKET",
                        )
                    })?;
                    (spec.clone(), PathBuf::from(sock))
                }
            };
            let is_socket = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket());
            if id.is_empty() || !is_socket {
                return Err(crate::usage(
                    format!("--ssh {spec}: {} is not an agent socket", path.display()),
                    "write --ssh default (with SSH_AUTH_SOCK set) or --ssh ID=SOCKET; key files are not supported",
                ));
            }
            let absolute = std::path::absolute(&path).map_err(|e| Failure {
                report: miette::miette!("--ssh {spec}: {e}"),
                code: 2,
            })?;
            Ok((id, absolute))
        })
        .collect()
}

/// `--label KEY=VALUE` (as docker: `KEY` alone is an empty value).
fn parse_labels(raw: &[String]) -> Result<Vec<(String, String)>, Failure> {
    raw.iter()
        .map(|spec| {
            let (key, value) = spec.split_once('=').unwrap_or((spec, ""));
            if key.is_empty() {
                return Err(crate::usage(
                    format!("invalid --label `{spec}`"),
                    "write it as KEY=VALUE",
                ));
            }
            Ok((key.to_string(), value.to_string()))
        })
        .collect()
}

/// `--add-host HOST:IP` (or `HOST=IP`, as docker; an IPv6 address may be
/// in brackets): `(host, ip)`. `host-gateway` is refused: RUN steps share
/// the host's network, where the host is 127.0.0.1.
fn parse_add_hosts(raw: &[String]) -> Result<Vec<(String, String)>, Failure> {
    let invalid = |spec: &str, why: &str| {
        crate::usage(
            format!("invalid --add-host `{spec}`: {why}"),
            "write it as HOST:IP (or HOST=IP), e.g. --add-host db.local:10.0.0.5",
        )
    };
    raw.iter()
        .map(|spec| {
            let Some((host, ip)) = spec.split_once('=').or_else(|| spec.split_once(':')) else {
                return Err(invalid(spec, "no IP address"));
            };
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid(spec, "the host name is empty or has blanks"));
            }
            if ip == "host-gateway" {
                return Err(crate::usage(
                    format!("--add-host {host}:host-gateway is not supported"),
                    "RUN steps use the host's network: the host is 127.0.0.1",
                ));
            }
            let bare = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            let parsed: std::net::IpAddr = bare
                .parse()
                .map_err(|_| invalid(spec, &format!("`{ip}` is not an IP address")))?;
            Ok((host.to_string(), parsed.to_string()))
        })
        .collect()
}

/// `--metadata-file`: buildx's keys for the image built. One target: its
/// object, as `docker buildx build` writes it; several (a forge.toml
/// group): an object per target, keyed by its name, as `docker buildx
/// bake` writes them.
fn write_metadata(
    path: &std::path::Path,
    built: &[forge_executor::build::BuiltImage],
) -> Result<(), Failure> {
    let one = |image: &forge_executor::build::BuiltImage| -> Result<Value, Failure> {
        let mut names = Vec::new();
        for tag in &image.tags {
            names.push(Reference::parse(tag)?.tagged_name());
        }
        let manifest = image.committed.manifest.to_string();
        let mut object = serde_json::Map::new();
        object.insert(
            "containerimage.config.digest".into(),
            Value::from(image.committed.id.to_string()),
        );
        object.insert(
            "containerimage.descriptor".into(),
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest,
                "size": image.committed.manifest_size,
            }),
        );
        object.insert("containerimage.digest".into(), Value::from(manifest));
        if !names.is_empty() {
            object.insert("image.name".into(), Value::from(names.join(",")));
        }
        Ok(Value::Object(object))
    };
    let value = match built {
        [image] => one(image)?,
        images => {
            let mut by_target = serde_json::Map::new();
            for image in images {
                by_target.insert(image.target.clone(), one(image)?);
            }
            Value::Object(by_target)
        }
    };
    let text = serde_json::to_string_pretty(&value).map_err(|e| Failure {
        report: miette::miette!("cannot print JSON: {e}"),
        code: 101,
    })?;
    std::fs::write(path, text).map_err(|e| Failure {
        report: miette::miette!("cannot write --metadata-file {}: {e}", path.display()),
        code: 2,
    })
}

pub fn build(args: &BuildArgs) -> Result<(), Failure> {
    if let Some(platform) = &args.platform {
        let host = forge_frontend::lower::host_platform_string();
        if platform != &host {
            return Err(crate::usage(
                format!("--platform {platform} is not supported yet: this machine builds {host}"),
                "leave --platform out, or build on a machine of that platform",
            ));
        }
    }
    let store = open_store()?;
    // Named contexts first: `FROM NAME` may stand for one.
    let named_contexts = named_contexts(args, &store)?;
    let resolver = NamedContextResolver {
        store: StoreResolver {
            store: &store,
            always_pull: args.pull,
            quiet: args.quiet || matches!(args.progress, ProgressMode::Quiet),
            pulled: Mutex::new(BTreeSet::new()),
        },
        named: &named_contexts,
    };
    // `forge build -`: the context (a tar, maybe compressed) or a lone
    // Dockerfile on standard input, as with docker.
    if args.input.context.as_os_str() == "-"
        && args.input.file.as_deref() == Some(std::path::Path::new("-"))
    {
        return Err(crate::usage(
            "the context and the Dockerfile cannot both come from standard input",
            "give one of them as a path",
        ));
    }
    let stdin_context = if args.input.context.as_os_str() == "-" {
        Some(read_stdin_context(&store, args.input.file.is_none())?)
    } else {
        None
    };
    let mut input = args.input.clone();
    if let Some(dir) = &stdin_context {
        input.context = dir.path().to_path_buf();
    }
    let (ir, targets) = lower_input_with(&input, &resolver)?;
    let host = forge_frontend::lower::host_platform_string();
    for stage in &ir.stages {
        if let Some(p) = &stage.platform {
            if p != &host {
                return Err(crate::usage(
                    format!("FROM --platform={p} is not supported yet: this machine builds {host}"),
                    "remove --platform from FROM, or build on a machine of that platform",
                ));
            }
        }
    }
    let names: Vec<&str> = targets.iter().map(String::as_str).collect();
    let graph = forge_graph::compile(&ir, &names)?;
    // Images that `COPY --from` and `RUN --mount from=` read: pulled as a
    // FROM's are (the executor reads them from the store).
    for (reference, _) in graph.image_sources() {
        let image = match named_context(&named_contexts, reference) {
            Some(NamedContext::Dir { .. }) => continue,
            Some(NamedContext::Image(image)) => image.as_str(),
            None => reference,
        };
        resolver.store.image(image).map_err(|e| Failure {
            report: miette::miette!("{reference} (read by COPY --from or RUN --mount from=): {e}"),
            code: 1,
        })?;
    }

    // The context, after .dockerignore, with content digests (a stat cache per
    // context directory keeps a no-op rebuild at about one lstat per file).
    let dockerfile = input
        .file
        .clone()
        .unwrap_or_else(|| input.context.join("Dockerfile"));
    let context_dir = std::fs::canonicalize(&input.context).map_err(|e| Failure {
        report: miette::miette!(
            "cannot open the build context {}: {e}",
            input.context.display()
        ),
        code: 1,
    })?;
    let context_index = std::sync::Arc::new(scan_context(
        &store,
        &context_dir,
        Some(&dockerfile),
        args.verify_context,
    )?);
    // forge.toml images with a context of their own: each scanned once.
    let mut stage_contexts = BTreeMap::new();
    for stage in &ir.stages {
        let Some(dir) = stage.context.as_ref().filter(|_| graph.builds(stage.id)) else {
            continue;
        };
        if stage_contexts.contains_key(dir) {
            continue;
        }
        let absolute = std::fs::canonicalize(dir).map_err(|e| Failure {
            report: miette::miette!("cannot open the build context {}: {e}", dir.display()),
            code: 1,
        })?;
        // The build's own context is shared, not scanned again.
        let index = if absolute == context_dir {
            std::sync::Arc::clone(&context_index)
        } else {
            std::sync::Arc::new(scan_context(&store, &absolute, None, args.verify_context)?)
        };
        stage_contexts.insert(
            dir.clone(),
            forge_executor::build::StageContext {
                dir: absolute,
                index,
            },
        );
    }
    let build_id = format!(
        "{}\0{}\0{}",
        context_dir.display(),
        dockerfile.display(),
        targets.join(",")
    );

    let exe = std::env::current_exe().map_err(|e| Failure {
        report: miette::miette!("cannot find forge's own executable: {e}"),
        code: 2,
    })?;
    let debug_shell = args.extra.on_failure == OnFailure::Shell && {
        let terminal = std::io::stdin().is_terminal();
        if !terminal {
            eprintln!(
                "warning: --on-failure=shell: standard input is not a terminal, \
                 so no shell will be opened"
            );
        }
        terminal
    };
    let opts = BuildOptions {
        exe,
        network: if args.network == "none" {
            Network::None
        } else {
            Network::Host
        },
        no_cache: args.no_cache,
        // Layers a build makes stay uncompressed in the store, as Docker's
        // engine and containers/storage keep them: compressing is work for
        // the push or the export that needs it (gzip is most of the time of
        // a COPY-heavy step), and the image ID does not depend on it.
        layer: forge_cache::layer::LayerOptions {
            compression: forge_cache::layer::Compression::None,
            ..forge_cache::layer::LayerOptions::from_env()
        },
        hostname: "forge".to_string(),
        proxy_env: crate::parse_build_args(&args.input.build_args)?
            .into_iter()
            .filter(|(k, _)| forge_executor::build::PROXY_ARGS.contains(&k.as_str()))
            .collect(),
        context: Some(context_dir.clone()),
        context_index: Some(context_index),
        stage_contexts,
        no_cache_filter: args.no_cache_filter.clone(),
        explain_cache: args.explain_cache,
        build_id,
        named_contexts,
        jobs: args.jobs,
        secrets: parse_secrets(&args.secrets)?,
        ssh: parse_ssh(&args.ssh)?,
        labels: parse_labels(&args.extra.labels)?,
        extra_hosts: parse_add_hosts(&args.extra.add_hosts)?,
        keep_failed_run: debug_shell,
    };
    let terminal =
        std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
    let mode = match (args.quiet, args.progress) {
        (true, _) => ProgressMode::Quiet,
        (false, ProgressMode::Auto) if terminal => ProgressMode::Tty,
        (false, ProgressMode::Auto) => ProgressMode::Plain,
        (false, mode) => mode,
    };
    let output: crate::output::Output = match &args.extra.output {
        Some(spec) => spec.parse()?,
        None => crate::output::Output::Image,
    };
    install_interrupt_handler();
    let built = {
        let reporter: Box<dyn Reporter> = match mode {
            ProgressMode::Plain | ProgressMode::Auto => Box::new(PlainReporter),
            ProgressMode::Tty => Box::new(TtyReporter::new(
                tty_draw_target(std::io::stderr().is_terminal()),
                colors_enabled(),
            )),
            ProgressMode::Quiet => Box::new(QuietReporter),
        };
        forge_executor::build::build(&graph, &store, &opts, reporter.as_ref())
    };
    let built = match built {
        Ok(built) => built,
        Err(e) => return Err(failed_build(e)),
    };

    for image in &built {
        let digest =
            Digest::from_str(&image.committed.manifest.to_string()).map_err(|e| Failure {
                report: miette::miette!("bad manifest digest: {e}"),
                code: 101,
            })?;
        let descriptor = Descriptor::new(
            MediaType::ImageManifest,
            image.committed.manifest_size,
            digest,
        );
        for tag in &image.tags {
            let reference = Reference::parse(tag)?;
            store.tag(&descriptor, &reference, Some(SystemTime::now()))?;
            if mode != ProgressMode::Quiet {
                eprintln!("naming to {}", reference.tagged_name());
            }
        }
        if args.quiet && !output.to_stdout() {
            println!("{}", image.committed.id);
        } else if mode != ProgressMode::Quiet {
            eprintln!("writing image {} done", image.committed.id);
        }
    }
    if let Some(path) = &args.extra.metadata_file {
        write_metadata(path, &built)?;
    }
    // `--push`, `--output type=registry`: every name of every image built.
    let push_names = match (&output, args.push) {
        (crate::output::Output::Registry(name), _) => Some(name.clone()),
        (_, true) => Some(None),
        _ => None,
    };
    if let Some(extra_name) = push_names {
        let registry = crate::registry::client(&store)?;
        for image in &built {
            let mut names = image.tags.clone();
            names.extend(extra_name.iter().cloned());
            if names.is_empty() {
                return Err(crate::usage(
                    "pushing needs a name: this image has none",
                    "tag it (-t registry.lan:5000/team/app:1) or give --output type=registry,name=REF",
                ));
            }
            for name in &names {
                let reference = Reference::parse(name)?;
                let descriptor = Descriptor::new(
                    MediaType::ImageManifest,
                    image.committed.manifest_size,
                    Digest::from_str(&image.committed.manifest.to_string()).map_err(|e| {
                        Failure {
                            report: miette::miette!("bad manifest digest: {e}"),
                            code: 101,
                        }
                    })?,
                );
                store.tag(&descriptor, &reference, Some(SystemTime::now()))?;
                crate::registry::push_reference(
                    &store,
                    &registry,
                    &reference,
                    mode == ProgressMode::Quiet,
                )?;
            }
        }
    }
    if !matches!(
        output,
        crate::output::Output::Image | crate::output::Output::Registry(_)
    ) {
        match built.as_slice() {
            [image] => crate::output::export(&store, image, &output)?,
            _ => {
                return Err(Failure {
                    report: miette::miette!(
                        "--output exports one image, and this build made {}; build one target",
                        built.len()
                    ),
                    code: 1,
                })
            }
        }
    }
    if let Some(path) = &args.iidfile {
        if let Some(image) = built.last() {
            std::fs::write(path, image.committed.id.to_string()).map_err(|e| Failure {
                report: miette::miette!("cannot write --iidfile {}: {e}", path.display()),
                code: 2,
            })?;
        }
    }
    // The cache's size cap (`config.toml`), once the new images are tagged.
    crate::config::enforce_cache_cap_after_build(&store, mode == ProgressMode::Quiet);
    Ok(())
}
