//! `forge build`: lowering against the store, running the build, progress
//! output, tagging.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use forge_cache::image::host_architecture;
use forge_cache::reference::Reference;
use forge_cache::store::Store;
use forge_cache::Sha256Digest;
use forge_executor::build::{
    context_base_digest, named_context, BuildOptions, Event, NamedContext, Reporter,
};
use forge_executor::sandbox::Network;
use forge_executor::ExecutorError;
use forge_frontend::resolve::{BaseImage, BaseResolver};
use indicatif::{ProgressBar, ProgressStyle};
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

/// Base images come from the store (pulling arrives with the registry client).
struct StoreResolver<'s> {
    store: &'s Store,
}

impl BaseResolver for StoreResolver<'_> {
    fn resolve(&self, reference: &str, _: Option<&str>) -> Result<Option<BaseImage>, String> {
        let record = self.store.resolve(reference).map_err(|e| {
            format!("{e}; make it with `forge import` or `forge load` (pulling from a registry is not there yet)")
        })?;
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
            ExecutorError::RunFailed { .. } | ExecutorError::TooManyLayers { .. } => 1,
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

/// A spinner with the current step; output lines and finished steps scroll
/// above it.
struct TtyReporter {
    bar: ProgressBar,
    labels: Mutex<Vec<String>>,
}

impl TtyReporter {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            labels: Mutex::new(Vec::new()),
        }
    }

    fn label(&self, vertex: usize) -> String {
        self.labels
            .lock()
            .ok()
            .and_then(|l| l.get(vertex.wrapping_sub(1)).cloned())
            .unwrap_or_default()
    }
}

impl Reporter for TtyReporter {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Started { vertex, label } => {
                if let Ok(mut labels) = self.labels.lock() {
                    let len = vertex.max(labels.len());
                    labels.resize(len, String::new());
                    if let Some(slot) = labels.get_mut(vertex.wrapping_sub(1)) {
                        *slot = label.to_string();
                    }
                }
                self.bar.set_message(label.to_string());
            }
            Event::Cached { vertex } => {
                self.bar
                    .println(format!(" => CACHED {}", self.label(vertex)));
            }
            Event::Output { line, .. } => self.bar.println(format!("    {line}")),
            Event::Layer { .. } => {}
            Event::Explain { vertex, reason } => self
                .bar
                .println(format!("    {} cache miss: {reason}", self.label(vertex))),
            Event::Done { vertex, elapsed } => self.bar.println(format!(
                " => {} {:.1}s",
                self.label(vertex),
                elapsed.as_secs_f64()
            )),
        }
    }
}

impl Drop for TtyReporter {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
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
        store: StoreResolver { store: &store },
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
    let context =
        forge_context::Context::open(&context_dir, Some(&dockerfile)).map_err(|e| Failure {
            report: e.into(),
            code: 1,
        })?;
    let cache_name = blake3::hash(context_dir.as_os_str().as_encoded_bytes()).to_hex();
    let stat_cache = store
        .root()
        .join("forge/v1/statcache")
        .join(cache_name.as_str());
    if let Some(parent) = stat_cache.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let scanned = if args.verify_context {
        context.scan_verify(Some(&stat_cache))
    } else {
        context.scan(Some(&stat_cache))
    };
    let context_index = scanned.map_err(|e| Failure {
        report: e.into(),
        code: 1,
    })?;
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
        context_index: Some(std::sync::Arc::new(context_index)),
        no_cache_filter: args.no_cache_filter.clone(),
        explain_cache: args.explain_cache,
        build_id,
        named_contexts,
        jobs: args.jobs,
    };
    let mode = match (args.quiet, args.progress) {
        (true, _) => ProgressMode::Quiet,
        (false, ProgressMode::Auto) if std::io::stderr().is_terminal() => ProgressMode::Tty,
        (false, ProgressMode::Auto) => ProgressMode::Plain,
        (false, mode) => mode,
    };
    install_interrupt_handler();
    let built = {
        let reporter: Box<dyn Reporter> = match mode {
            ProgressMode::Plain | ProgressMode::Auto => Box::new(PlainReporter),
            ProgressMode::Tty => Box::new(TtyReporter::new()),
            ProgressMode::Quiet => Box::new(QuietReporter),
        };
        forge_executor::build::build(&graph, &store, &opts, reporter.as_ref())?
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
        if args.quiet {
            println!("{}", image.committed.id);
        } else if mode != ProgressMode::Quiet {
            eprintln!("writing image {} done", image.committed.id);
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
