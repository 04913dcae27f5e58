//! The `forge` command: a thin layer that parses arguments, calls the library crates,
//! and turns their errors into reports with exit codes (1: your input, 2: the
//! environment, 101: a bug in forge).

mod build;
mod config;
mod containers;
mod human;
mod images;
mod login;
mod output;
mod registry;
mod transfer_view;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use forge_frontend::forge_toml;
use forge_frontend::lower::{self, LowerOptions};
use forge_frontend::resolve::{BaseResolver, Unresolved};
use forge_frontend::syntax::SourceFile;
use forge_frontend::FrontendError;
use forge_ir::Ir;

/// forge: build container images from Dockerfiles and forge.toml workspaces.
#[derive(Debug, Parser)]
#[command(name = "forge", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build images from a Dockerfile or a forge.toml.
    Build(build::BuildArgs),
    /// Print the build graph: steps, dependencies, cache keys, what can run in parallel.
    Graph(GraphArgs),
    /// List images in the store.
    Images(images::ImagesArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Remove images (untag; delete the manifest when no name is left).
    Rmi(images::RmiArgs),
    /// Print details of images as JSON.
    Inspect(images::InspectArgs),
    /// Show the history of an image.
    History(images::HistoryArgs),
    /// Make an image from a root filesystem tarball.
    Import(images::ImportArgs),
    /// Write images to a tar archive (docker or OCI format).
    Save(images::SaveArgs),
    /// Read images from a tar archive made by `forge save` or `docker save`.
    Load(images::LoadArgs),
    /// Download an image from a registry into the store.
    Pull(registry::PullArgs),
    /// Upload an image of the store to a registry.
    Push(registry::PushArgs),
    /// List a registry's repositories whose name contains a term.
    Search(registry::SearchArgs),
    /// Log in to a registry: check the credentials and save them.
    Login(login::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(login::LogoutArgs),
    /// Check the store; `--repair` removes what is broken.
    Fsck(images::FsckArgs),
    /// Remove blobs no image, build or container uses.
    Prune(config::PruneCommand),
    /// Create a working container from an image; prints its name.
    From(containers::FromArgs),
    /// Run a command in a working container (or a new one made from an image).
    Run(containers::RunArgs),
    /// List working containers.
    Containers(containers::ContainersArgs),
    /// Remove working containers.
    Rm(containers::RmArgs),
    /// List the files a working container changed (A added, C changed, D deleted).
    Diff(containers::DiffArgs),
    /// Make an image of a working container's changes: one new layer.
    Commit(containers::CommitArgs),
    /// Tools for looking inside forge.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Print a Dockerfile's syntax tree in BuildKit's dump format.
    Ast {
        /// The Dockerfile (`-` for standard input).
        file: PathBuf,
    },
    /// Print the lowered IR as JSON.
    Ir(InputArgs),
}

/// Which build file, and how to lower it.
#[derive(Debug, Clone, Args)]
pub(crate) struct InputArgs {
    /// The build context directory (also where `Dockerfile` or `forge.toml` is
    /// looked for); `-` reads a tar of it, or a lone Dockerfile, from standard input.
    #[arg(default_value = ".")]
    context: PathBuf,
    /// The build file: a Dockerfile, or a forge.toml (by its `.toml` extension).
    /// Default: `forge.toml` in the context if present, else `Dockerfile`.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Set a build-time variable (`NAME=VALUE`, or `NAME` to take it from the environment).
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// Build only this stage (Dockerfile) or these images and groups (forge.toml).
    #[arg(long)]
    target: Vec<String>,
    /// Name and optionally tag the image (`name:tag`).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
}

#[derive(Debug, Args)]
struct GraphArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Dot)]
    format: PlanFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum PlanFormat {
    /// Human-readable plan, one line per step, grouped in waves.
    Text,
    /// Graphviz.
    Dot,
    /// JSON.
    Json,
}

/// An error with its exit code.
pub(crate) struct Failure {
    pub(crate) report: miette::Report,
    pub(crate) code: u8,
}

impl From<FrontendError> for Failure {
    fn from(e: FrontendError) -> Self {
        let code = if e.is_input_error() { 1 } else { 2 };
        Self {
            report: e.into(),
            code,
        }
    }
}

impl From<forge_graph::GraphError> for Failure {
    fn from(e: forge_graph::GraphError) -> Self {
        Self {
            report: e.into(),
            code: 1,
        }
    }
}

pub(crate) fn usage(message: impl Into<String>, help: &str) -> Failure {
    Failure {
        report: miette::miette!(help = help.to_string(), "{}", message.into()),
        code: 1,
    }
}

fn main() -> ExitCode {
    // A RUN step re-executes this binary to enter its sandbox. That must happen
    // before anything else, while the process is still single-threaded.
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(
            forge_executor::sandbox::SANDBOX_SUBCOMMAND,
        ))
    {
        forge_executor::sandbox::sandbox_main();
    }
    // Reports wrap at the terminal's width, but never inside a word: an
    // image ID or a path in an error stays whole, to be copied.
    let _ = miette::set_hook(Box::new(|_| {
        Box::new(miette::MietteHandlerOpts::new().break_words(false).build())
    }));
    let cli = Cli::parse();
    // Rootless with subordinate ids: the work happens in a user namespace
    // that maps them (still single-threaded here).
    if let Some(code) = forge_executor::sandbox::userns::reexec_with_subids() {
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    if let Command::Run(args) = &cli.command {
        // docker run's exit codes: the command's own, 125 when forge fails.
        return match containers::run(args) {
            Ok(code) => ExitCode::from(code),
            Err(failure) => {
                eprintln!("{:?}", failure.report);
                ExitCode::from(125)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{:?}", failure.report);
            ExitCode::from(failure.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Debug(DebugCommand::Ast { file }) => {
            let source = read_source(&file)?;
            let ast = forge_frontend::dockerfile::parse_ast(&source)?;
            println!("{}", forge_frontend::dockerfile::dump(&ast));
            Ok(())
        }
        Command::Debug(DebugCommand::Ir(input)) => {
            let (ir, _) = lower_input(&input)?;
            let json = serde_json::to_string_pretty(&ir).map_err(|e| Failure {
                report: miette::miette!("cannot serialize the IR: {e}"),
                code: 101,
            })?;
            println!("{json}");
            Ok(())
        }
        Command::Graph(args) => plan(&args.input, args.format),
        Command::Images(args) => images::images(&args),
        Command::Tag(args) => images::tag(&args),
        Command::Rmi(args) => images::rmi(&args),
        Command::Inspect(args) => images::inspect(&args),
        Command::History(args) => images::history(&args),
        Command::Import(args) => images::import(&args),
        Command::Save(args) => images::save(&args),
        Command::Load(args) => images::load(&args),
        Command::Pull(args) => registry::pull(&args),
        Command::Push(args) => registry::push(&args),
        Command::Search(args) => registry::search(&args),
        Command::Login(args) => login::login(&args),
        Command::Logout(args) => login::logout(&args),
        Command::Fsck(args) => images::fsck(&args),
        Command::Prune(args) => config::prune(&args),
        Command::From(args) => containers::from(&args),
        Command::Run(args) => containers::run(&args).map(|_| ()),
        Command::Containers(args) => containers::list(&args),
        Command::Rm(args) => containers::rm(&args),
        Command::Diff(args) => containers::diff(&args),
        Command::Commit(args) => containers::commit(&args),
        Command::Build(args) => {
            if args.dry_run {
                return plan(&args.input, args.format);
            }
            build::build(&args)
        }
    }
}

fn plan(input: &InputArgs, format: PlanFormat) -> Result<(), Failure> {
    let (ir, targets) = lower_input(input)?;
    let names: Vec<&str> = targets.iter().map(String::as_str).collect();
    let graph = forge_graph::compile(&ir, &names)?;
    match format {
        PlanFormat::Text => print!("{}", graph.plan_text()),
        PlanFormat::Dot => print!("{}", graph.to_dot()),
        PlanFormat::Json => println!("{}", graph.to_json()),
    }
    Ok(())
}

/// Reads a build file (`-` is standard input).
fn read_source(path: &Path) -> Result<SourceFile, Failure> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| {
            FrontendError::Read {
                path: "<stdin>".into(),
                source,
            }
        })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| FrontendError::Read {
            path: path.display().to_string(),
            source,
        })?
    };
    Ok(SourceFile::new(path.display().to_string(), text))
}

/// Finds the build file, parses and lowers it (with no base-image facts: planning
/// never touches the store). Returns the IR and the target names to build.
fn lower_input(input: &InputArgs) -> Result<(Ir, Vec<String>), Failure> {
    lower_input_with(input, &Unresolved)
}

/// [`lower_input`] with base images looked up through `resolver`.
pub(crate) fn lower_input_with(
    input: &InputArgs,
    resolver: &dyn BaseResolver,
) -> Result<(Ir, Vec<String>), Failure> {
    let build_args = parse_build_args(&input.build_args)?;
    let file = match &input.file {
        Some(f) => f.clone(),
        None => {
            let toml = input.context.join("forge.toml");
            if toml.is_file() {
                toml
            } else {
                input.context.join("Dockerfile")
            }
        }
    };
    let opts = LowerOptions {
        build_args,
        resolver,
        tags: input.tags.clone(),
    };
    if file.extension().is_some_and(|e| e == "toml") {
        let project = forge_toml::load(&file)?;
        let ir = lower::lower_project(&project, &opts)?;
        let mut targets = Vec::new();
        for t in &input.target {
            match ir.groups.get(t) {
                Some(members) => targets.extend(members.iter().cloned()),
                None => targets.push(t.clone()),
            }
        }
        if targets.is_empty() {
            if let Some(default) = ir.groups.get("default") {
                targets.clone_from(default);
            }
        }
        Ok((ir, targets))
    } else {
        let source = read_source(&file)?;
        let parsed = forge_frontend::dockerfile::parse(&source)?;
        let mut ir = lower::lower_dockerfile(&parsed, &opts)?;
        let targets = match input.target.as_slice() {
            [] => ir
                .targets
                .last()
                .map(|t| vec![t.name.clone()])
                .unwrap_or_default(),
            [one] => {
                let key = one.to_ascii_lowercase();
                // `-t` applies to the stage asked for, not the last one.
                let tags = ir
                    .targets
                    .last_mut()
                    .map(|t| std::mem::take(&mut t.tags))
                    .unwrap_or_default();
                if let Some(t) = ir.targets.iter_mut().find(|t| t.name == key) {
                    t.tags = tags;
                }
                vec![key]
            }
            _ => {
                return Err(usage(
                    "a Dockerfile build takes one --target",
                    "to build several images in one run, list them in a forge.toml",
                ))
            }
        };
        Ok((ir, targets))
    }
}

pub(crate) fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut out = BTreeMap::new();
    for arg in raw {
        match arg.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => {
                return Err(usage(
                    format!("invalid --build-arg `{arg}`"),
                    "write it as NAME=VALUE, or NAME to take the value from the environment",
                ))
            }
            None => {
                // Like docker: `--build-arg NAME` takes NAME from the environment, if set.
                if let Ok(v) = std::env::var(arg) {
                    out.insert(arg.clone(), v);
                }
            }
        }
    }
    Ok(out)
}
