//! `forge pull`, `forge push` and `forge search`: the store and a registry
//! (see `forge_registry`), with docker's output.

use std::collections::BTreeMap;
use std::sync::Mutex;

use clap::Args;
use forge_cache::reference::Reference;
use forge_cache::store::Store;
use forge_cache::Sha256Digest;
use forge_registry::transfer::{self, BlobEvent, Platform};
use forge_registry::{Registry, RegistryError};
use serde_json::json;

use crate::images::{open_store, ListFormat};
use crate::{config, usage, Failure};

/// Blobs moved at once (docker's default is 3 downloads and 5 uploads).
const PULL_JOBS: usize = 4;
const PUSH_JOBS: usize = 5;

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        let code = if e.is_input_error() { 1 } else { 2 };
        Self {
            report: e.into(),
            code,
        }
    }
}

/// A registry client with the settings of the config files.
pub(crate) fn client(store: &Store) -> Result<Registry, Failure> {
    let settings = config::load(store.root())?.registries;
    let mut options = forge_registry::Options {
        insecure: settings.insecure,
        mirrors: settings.mirrors,
        ..forge_registry::Options::default()
    };
    if let Some(chunk) = settings.chunk_size {
        options.chunk_size = chunk;
    }
    Ok(Registry::new(&forge_http::Client::new(), options))
}

/// `forge pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `NAME[:TAG|@sha256:DIGEST]`, e.g. `registry.lan:5000/team/app:1`.
    name: String,
    /// From a multi-platform image, the image for this platform
    /// (`os/arch[/variant]`; default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// Every tag of the repository.
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Print only the name pulled.
    #[arg(short, long)]
    quiet: bool,
}

/// `forge push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// `NAME[:TAG]` of an image in the store; the name says where it goes.
    name: String,
    /// Every tag of the repository NAME in the store, one after the other
    /// (blobs they share go up once).
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Print only the digest.
    #[arg(short, long)]
    quiet: bool,
}

/// `forge search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// `[REGISTRY/]TERM`: repositories whose name contains TERM. Without a
    /// registry, the one set as `[registries] search` in forge's config.
    term: String,
    /// At most this many results.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Table, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

fn short(digest: &Sha256Digest) -> String {
    digest.hex()[..12].to_string()
}

/// Prints docker's per-blob status lines, once per state change.
struct BlobLines {
    /// On a terminal: docker's bars instead of lines.
    view: Option<crate::transfer_view::TransferView>,
    quiet: bool,
    pull: bool,
    /// On stderr (in a build, whose stdout is the image ID).
    stderr: bool,
    seen: Mutex<BTreeMap<Sha256Digest, &'static str>>,
}

impl BlobLines {
    fn new(quiet: bool, pull: bool) -> Self {
        use std::io::IsTerminal;
        let terminal =
            std::io::stdout().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb");
        Self {
            view: (!quiet && terminal).then(|| crate::transfer_view::TransferView::new(pull)),
            quiet,
            pull,
            stderr: false,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    fn event(&self, event: BlobEvent) {
        if self.quiet {
            return;
        }
        if let Some(view) = &self.view {
            return view.event(event);
        }
        let (digest, status, extra) = match &event {
            BlobEvent::Exists(d) if self.pull => (*d, "Already exists", String::new()),
            BlobEvent::Exists(d) => (*d, "Layer already exists", String::new()),
            BlobEvent::Progress { digest, .. } if self.pull => {
                (*digest, "Downloading", String::new())
            }
            BlobEvent::Progress { digest, .. } => (*digest, "Pushing", String::new()),
            BlobEvent::Done(d) if self.pull => (*d, "Pull complete", String::new()),
            BlobEvent::Done(d) => (*d, "Pushed", String::new()),
            BlobEvent::Mounted { digest, from } => (*digest, "Mounted from", format!(" {from}")),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&digest) == Some(&status) {
            return;
        }
        seen.insert(digest, status);
        if self.stderr {
            eprintln!("{}: {status}{extra}", short(&digest));
        } else {
            println!("{}: {status}{extra}", short(&digest));
        }
    }
}

/// `--all-tags` names a repository: `name` (parsed as `reference`) must
/// carry no tag and no digest.
fn repository_only(name: &str, reference: &Reference, command: &str) -> Result<(), Failure> {
    let tagged = name.rsplit('/').next().is_some_and(|l| l.contains(':'));
    if reference.digest().is_some() || tagged {
        return Err(usage(
            "--all-tags takes a repository name without a tag or digest",
            &format!("e.g. forge {command} -a registry.lan:5000/team/app"),
        ));
    }
    Ok(())
}

fn parse_name(text: &str) -> Result<Reference, Failure> {
    Ok(Reference::parse(text)?)
}

/// Pulls `reference` into `store`, printing docker's lines unless `quiet`.
pub(crate) fn pull_reference(
    store: &Store,
    registry: &Registry,
    reference: &Reference,
    platform: &Platform,
    quiet: bool,
) -> Result<transfer::Pulled, Failure> {
    if !quiet {
        let what = match reference.digest() {
            Some(d) => d.to_string(),
            None => reference.tag_or_latest().to_string(),
        };
        println!("{what}: Pulling from {}", reference.repository_familiar());
    }
    let lines = BlobLines::new(quiet, true);
    let pulled = transfer::pull(store, registry, reference, platform, PULL_JOBS, &|e| {
        lines.event(e)
    })?;
    if !quiet {
        println!("Digest: {}", pulled.repo_digest);
        let status = if pulled.changed {
            "Downloaded newer image for"
        } else {
            "Image is up to date for"
        };
        println!("Status: {status} {}", reference.familiar());
    }
    Ok(pulled)
}

/// `forge pull`.
pub fn pull(args: &PullArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let registry = client(&store)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(|e| usage(e, "e.g. --platform linux/amd64"))?,
        None => Platform::host(),
    };
    let reference = parse_name(&args.name)?;
    let references = if args.all_tags {
        repository_only(&args.name, &reference, "pull")?;
        let mut tags = registry.tags(reference.registry(), reference.repository())?;
        tags.sort();
        if tags.is_empty() {
            return Err(usage(
                format!(
                    "{} has no tags in the registry",
                    reference.repository_familiar()
                ),
                "check the repository name",
            ));
        }
        tags.iter()
            .map(|t| reference.with_tag(t))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![reference]
    };
    for r in &references {
        pull_reference(&store, &registry, r, &platform, args.quiet)?;
        if args.quiet {
            println!("{}", r.familiar());
        } else if !args.all_tags {
            // docker's last line: `NAME:TAG`, or `NAME@DIGEST` for a digest.
            match r.digest() {
                Some(_) => println!("{r}"),
                None => println!("{}", r.tagged_name()),
            }
        }
    }
    Ok(())
}

/// Pushes the store's image named `target` to `target`'s registry; docker's
/// lines on stderr unless `quiet` (stdout is the build's). Returns the
/// manifest's digest.
pub(crate) fn push_reference(
    store: &Store,
    registry: &Registry,
    target: &Reference,
    quiet: bool,
) -> Result<Sha256Digest, Failure> {
    let record = store.resolve(&target.tagged_name())?;
    let lines = BlobLines {
        stderr: true,
        view: None,
        ..BlobLines::new(quiet, false)
    };
    let pushed = transfer::push(store, registry, &record, target, PUSH_JOBS, &|e| {
        lines.event(e)
    })?;
    if !quiet {
        eprintln!(
            "pushed {}: digest: {} size: {}",
            target.familiar(),
            pushed.digest,
            pushed.size
        );
    }
    Ok(pushed.digest)
}

/// `forge push`.
pub fn push(args: &PushArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let registry = client(&store)?;
    let named = parse_name(&args.name)?;
    let targets: Vec<Reference> = if args.all_tags {
        repository_only(&args.name, &named, "push")?;
        let mut tagged: Vec<Reference> = store
            .images()?
            .into_iter()
            .filter_map(|r| r.reference)
            .filter(|r| {
                r.registry() == named.registry()
                    && r.repository() == named.repository()
                    && r.tag().is_some()
            })
            .collect();
        tagged.sort();
        if tagged.is_empty() {
            return Err(usage(
                format!("the store has no tag of {}", named.repository_familiar()),
                "tag an image first: forge tag IMAGE NAME:TAG",
            ));
        }
        tagged
    } else {
        vec![named]
    };
    if !args.quiet {
        println!(
            "The push refers to repository [{}/{}]",
            targets[0].registry(),
            targets[0].repository()
        );
    }
    for target in &targets {
        let record = store.resolve(&target.to_string())?;
        let lines = BlobLines::new(args.quiet, false);
        let pushed = transfer::push(&store, &registry, &record, target, PUSH_JOBS, &|e| {
            lines.event(e)
        })?;
        if args.quiet {
            println!("{}", pushed.digest);
        } else {
            let what = match target.digest() {
                Some(_) => "digest".to_string(),
                None => target.tag_or_latest().to_string(),
            };
            println!("{what}: digest: {} size: {}", pushed.digest, pushed.size);
        }
    }
    Ok(())
}

/// `forge search`.
pub fn search(args: &SearchArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let settings = config::load(store.root())?.registries;
    let registry = client(&store)?;
    // `host[:port]/term` names a registry as a reference would.
    let (host, term) = match args.term.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => match settings.search {
            Some(host) => (host, args.term.clone()),
            None => {
                return Err(usage(
                    format!("no registry to search for `{}`", args.term),
                    "name one (`forge search registry.lan:5000/TERM`) or set `search = \"HOST:PORT\"` under [registries] in ~/.config/forge/config.toml",
                ))
            }
        },
    };
    let repositories = registry.catalog(&host, 100)?;
    // Names from the registry go into URLs: only valid repository names.
    let matches: Vec<&String> = repositories
        .iter()
        .filter(|r| {
            Reference::parse(&format!("{host}/{r}")).is_ok_and(|p| p.repository() == r.as_str())
        })
        .filter(|r| r.contains(&term))
        .take(args.limit)
        .collect();
    let mut rows = vec![vec!["NAME".to_string(), "TAGS".to_string()]];
    for repo in matches {
        let mut tags = registry.tags(&host, repo)?;
        tags.sort();
        let name = format!("{host}/{repo}");
        match args.format {
            ListFormat::Json => println!(
                "{}",
                json!({
                    "Name": name,
                    "Description": "",
                    "StarCount": 0,
                    "IsOfficial": false,
                    "IsAutomated": false,
                    "Tags": tags,
                })
            ),
            ListFormat::Table => rows.push(vec![name, tags.join(", ")]),
        }
    }
    if matches!(args.format, ListFormat::Table) {
        crate::images::print_table(&rows);
    }
    Ok(())
}
