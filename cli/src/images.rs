//! The image commands people know from docker: `images`, `tag`, `rmi`, `inspect`,
//! `history`, `import`, plus the store's `fsck` and `prune`. Output follows
//! docker's columns and, with `--format json`, its field names, one object a line.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use forge_cache::image::{import_tarball, ImportOptions};
use forge_cache::layer::{Compression, LayerOptions};
use forge_cache::reference::Reference;
use forge_cache::store::{ImageRecord, Store};
use forge_cache::{CacheError, Sha256Digest};
use forge_frontend::ir::{CommandLine, Op};
use forge_frontend::lower::{lower_dockerfile, LowerOptions};
use forge_frontend::syntax::SourceFile;
use serde_json::{json, Map, Value};

use crate::human;
use crate::Failure;

/// Table or JSON lines.
#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum ListFormat {
    /// Aligned columns, as docker prints them.
    #[default]
    Table,
    /// One JSON object per line, docker's field names.
    Json,
}

/// `forge images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images of this repository (and tag).
    reference: Option<String>,
    /// Show digests.
    #[arg(long)]
    digests: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Show all images (forge keeps no intermediate images in the list; accepted for docker compatibility).
    #[arg(short, long)]
    all: bool,
    /// Don't truncate IDs.
    #[arg(long)]
    no_trunc: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
}

/// `forge tag SOURCE TARGET`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image: a name, an ID prefix or a digest.
    source: String,
    /// The new name.
    target: String,
}

/// `forge rmi IMAGE...`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images: names (untagged one by one) or IDs (every tag removed; needs `-f` when several).
    #[arg(required = true)]
    images: Vec<String>,
    /// Remove an image by ID even when several names point at it.
    #[arg(short, long)]
    force: bool,
}

/// `forge inspect IMAGE...`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Images: names, ID prefixes or digests.
    #[arg(required = true)]
    images: Vec<String>,
}

/// `forge history IMAGE`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The image.
    image: String,
    /// Don't truncate output.
    #[arg(long)]
    no_trunc: bool,
    /// Only show image IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: ListFormat,
}

/// `forge import FILE|URL|- [REPO[:TAG]]`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A root filesystem tarball (plain, gzip, bzip2, xz or zstd): a file, an
    /// http(s) URL, or `-` for standard input.
    source: String,
    /// Name the image.
    reference: Option<String>,
    /// Commit message (the history comment).
    #[arg(short, long)]
    message: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE,
    /// LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR).
    #[arg(short, long = "change")]
    change: Vec<String>,
    /// Layer compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    compression: CompressionArg,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    /// gzip, compressed on every core (the output does not depend on the number of cores).
    Gzip,
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

/// `forge fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Remove what is unreferenced or broken.
    #[arg(long)]
    repair: bool,
}

impl From<CacheError> for Failure {
    fn from(e: CacheError) -> Self {
        let code = match &e {
            CacheError::Io { .. } => 2,
            _ => 1,
        };
        Self {
            report: e.into(),
            code,
        }
    }
}

/// The store at `$FORGE_HOME`, or the XDG default.
pub fn open_store() -> Result<Store, Failure> {
    let root = Store::default_root().ok_or_else(|| Failure {
        report: miette::miette!(
            help = "set FORGE_HOME to the directory forge should keep images in",
            "cannot find a place for the image store: neither FORGE_HOME nor HOME is set"
        ),
        code: 2,
    })?;
    Ok(Store::open(&root)?)
}

fn id_text(id: Option<Sha256Digest>, no_trunc: bool) -> String {
    match id {
        Some(id) if no_trunc => id.to_string(),
        Some(id) => id.short(),
        None => "<none>".to_string(),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn since(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => {
            let secs = SystemTime::now()
                .duration_since(t)
                .map_or(0, |d| d.as_secs());
            format!("{} ago", human::duration(secs))
        }
        None => "N/A".to_string(),
    }
}

/// Bytes an image occupies in the store: its manifest, config and layer blobs.
fn image_size(store: &Store, record: &ImageRecord) -> u64 {
    let Ok(manifest) = store.manifest(record) else {
        return record.manifest.size();
    };
    record.manifest.size()
        + manifest.config().size()
        + manifest.layers().iter().map(|l| l.size()).sum::<u64>()
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// `forge images`.
pub fn images(args: &ImagesArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let filter = args
        .reference
        .as_deref()
        .map(|r| {
            // `forge images ubuntu` lists every tag of the repository.
            let has_tag = r.rsplit('/').next().is_some_and(|last| last.contains(':'));
            Reference::parse(r).map(|parsed| (parsed, has_tag))
        })
        .transpose()?;
    let mut records: Vec<ImageRecord> = store
        .images()?
        .into_iter()
        .filter(|rec| match (&filter, &rec.reference) {
            (None, _) => true,
            (Some((want, has_tag)), Some(have)) => {
                want.registry() == have.registry()
                    && want.repository() == have.repository()
                    && (!has_tag || want.tag_or_latest() == have.tag_or_latest())
            }
            (Some(_), None) => false,
        })
        .collect();
    // Newest first, as docker lists them.
    records.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for rec in &records {
            let id = id_text(rec.id, args.no_trunc);
            if seen.insert(id.clone()) {
                println!("{id}");
            }
        }
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut header = vec!["REPOSITORY", "TAG"];
    if args.digests {
        header.push("DIGEST");
    }
    header.extend(["IMAGE ID", "CREATED", "SIZE"]);
    rows.push(header.into_iter().map(String::from).collect::<Vec<_>>());
    for rec in &records {
        let (repo, tag) = match &rec.reference {
            // Pulled by digest: no tag, as docker shows it.
            Some(r) => (
                r.repository_familiar(),
                r.tag().unwrap_or("<none>").to_string(),
            ),
            None => ("<none>".to_string(), "<none>".to_string()),
        };
        let size = human::size(image_size(&store, rec));
        let id = id_text(rec.id, args.no_trunc);
        match args.format {
            ListFormat::Json => {
                let created_at = rec.created.map_or_else(
                    || "N/A".to_string(),
                    |t| {
                        forge_cache::image::rfc3339(unix(t))
                            .replace('T', " ")
                            .replace('Z', " +0000 UTC")
                    },
                );
                let line = json!({
                    "Containers": "N/A",
                    "CreatedAt": created_at,
                    "CreatedSince": since(rec.created),
                    "Digest": rec.repo_digest.unwrap_or(rec.digest).to_string(),
                    "ID": id,
                    "Repository": repo,
                    "SharedSize": "N/A",
                    "Size": size,
                    "Tag": tag,
                    "UniqueSize": "N/A",
                    "VirtualSize": size,
                });
                println!("{line}");
            }
            ListFormat::Table => {
                let mut row = vec![repo, tag];
                if args.digests {
                    row.push(rec.repo_digest.unwrap_or(rec.digest).to_string());
                }
                row.extend([id, since(rec.created), size]);
                rows.push(row);
            }
        }
    }
    if matches!(args.format, ListFormat::Table) {
        print_table(&rows);
    }
    Ok(())
}

fn parse_reference(text: &str) -> Result<Reference, Failure> {
    Ok(Reference::parse(text)?)
}

/// `forge tag`.
pub fn tag(args: &TagArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let source = store.resolve(&args.source)?;
    let target = parse_reference(&args.target)?;
    store.tag(&source.manifest, &target, Some(SystemTime::now()))?;
    Ok(())
}

/// `forge rmi`.
pub fn rmi(args: &RmiArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let mut failed = None;
    for query in &args.images {
        match rmi_one(&store, query, args.force) {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("{:?}", e.report);
                failed = Some(e.code);
            }
        }
    }
    match failed {
        Some(code) => Err(Failure {
            report: miette::miette!("some images were not removed"),
            code,
        }),
        None => Ok(()),
    }
}

fn rmi_one(store: &Store, query: &str, force: bool) -> Result<Vec<String>, Failure> {
    let record = store.resolve(query)?;
    let images = store.images()?;
    let same: Vec<&ImageRecord> = images
        .iter()
        .filter(|r| r.digest == record.digest)
        .collect();
    let by_name = record
        .reference
        .as_ref()
        .is_some_and(|r| Reference::parse(query).is_ok_and(|q| q.tagged_name() == r.tagged_name()));
    let mut lines = Vec::new();
    if by_name && same.len() > 1 {
        if let Some(r) = &record.reference {
            store.untag(r)?;
            lines.push(format!("Untagged: {}", r.familiar()));
        }
        return Ok(lines);
    }
    if !by_name && same.len() > 1 && !force {
        return Err(Failure {
            report: miette::miette!(
                help = "remove the names one by one, or use -f to remove them all",
                "image `{query}` is referenced by {} names",
                same.len()
            ),
            code: 1,
        });
    }
    if !force {
        let users: Vec<String> = forge_cache::container::Containers::new(store)
            .list()?
            .into_iter()
            .filter(|c| c.image_manifest == record.digest.to_string())
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(Failure {
                report: miette::miette!(
                    help = "remove the containers first (`forge rm`), or use -f",
                    "image `{query}` is used by container(s) {}",
                    users.join(", ")
                ),
                code: 1,
            });
        }
    }
    for r in &same {
        if let Some(name) = r.familiar_name() {
            lines.push(format!("Untagged: {name}"));
        }
    }
    store.remove_manifest(&record.digest)?;
    lines.push(format!("Deleted: {}", record.digest));
    Ok(lines)
}

/// An image's manifest, its config digest (the image ID) and its config as JSON.
fn read_config(
    store: &Store,
    record: &ImageRecord,
) -> Result<(oci_spec::image::ImageManifest, Sha256Digest, Value), Failure> {
    let manifest = store.manifest(record)?;
    let config_digest: Sha256Digest = manifest.config().digest().to_string().parse()?;
    let raw = serde_json::from_slice(&store.read_blob(&config_digest)?).map_err(|e| {
        CacheError::InvalidDocument {
            what: "image config",
            name: config_digest.to_string(),
            reason: e.to_string(),
        }
    })?;
    Ok((manifest, config_digest, raw))
}

/// The docker-style inspect object of one image.
fn inspect_value(store: &Store, record: &ImageRecord) -> Result<Value, Failure> {
    let (_, config_digest, raw) = read_config(store, record)?;
    let images = store.images()?;
    let names: Vec<&ImageRecord> = images
        .iter()
        .filter(|r| r.digest == record.digest)
        .collect();
    let repo_tags: Vec<String> = names.iter().filter_map(|r| r.familiar_name()).collect();
    let repo_digests: Vec<String> = names
        .iter()
        .filter_map(|r| Some((r.reference.as_ref()?, r.repo_digest.unwrap_or(r.digest))))
        .map(|(r, digest)| format!("{}@{digest}", r.repository_familiar()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let comment = raw["history"]
        .as_array()
        .and_then(|h| h.last())
        .and_then(|h| h["comment"].as_str())
        .unwrap_or("");
    Ok(json!({
        "Id": config_digest.to_string(),
        "RepoTags": repo_tags,
        "RepoDigests": repo_digests,
        "Parent": "",
        "Comment": comment,
        "Created": raw["created"],
        "Author": raw.get("author").cloned().unwrap_or(json!("")),
        "Config": raw.get("config").cloned().unwrap_or(json!({})),
        "Architecture": raw["architecture"],
        "Os": raw["os"],
        "Size": image_size(store, record),
        "RootFS": {
            "Type": raw["rootfs"]["type"],
            "Layers": raw["rootfs"]["diff_ids"],
        },
        "Metadata": {
            "LastTagTime": record.created.map_or(json!(null), |t| json!(forge_cache::image::rfc3339(unix(t)))),
        },
    }))
}

/// `forge inspect`.
pub fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let mut out = Vec::new();
    for query in &args.images {
        let record = store.resolve(query)?;
        out.push(inspect_value(&store, &record)?);
    }
    let text = serde_json::to_string_pretty(&out).map_err(|e| Failure {
        report: miette::miette!("cannot print JSON: {e}"),
        code: 101,
    })?;
    println!("{text}");
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut t: String = text.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

/// `forge history`.
pub fn history(args: &HistoryArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let record = store.resolve(&args.image)?;
    let (manifest, config_digest, raw) = read_config(&store, &record)?;
    let history = raw["history"].as_array().cloned().unwrap_or_default();
    let mut layers = manifest.layers().iter();
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for entry in &history {
        let empty = entry["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().map_or(0, |l| l.size())
        };
        let created = entry["created"].as_str().unwrap_or("");
        rows.push((
            created.to_string(),
            entry["created_by"].as_str().unwrap_or("").to_string(),
            human::size(size),
            entry["comment"].as_str().unwrap_or("").to_string(),
        ));
    }
    rows.reverse();
    let mut table = vec![vec![
        "IMAGE".to_string(),
        "CREATED".into(),
        "CREATED BY".into(),
        "SIZE".into(),
        "COMMENT".into(),
    ]];
    for (i, (created, by, size, comment)) in rows.into_iter().enumerate() {
        // Only the top entry has an image of its own.
        let image = if i == 0 {
            id_text(Some(config_digest), args.no_trunc)
        } else {
            "<missing>".to_string()
        };
        if args.quiet {
            println!("{image}");
            continue;
        }
        let created_since =
            parse_rfc3339(&created).map_or_else(|| "N/A".to_string(), |t| since(Some(t)));
        let by = if args.no_trunc { by } else { truncate(&by, 45) };
        match args.format {
            ListFormat::Json => println!(
                "{}",
                json!({"ID": image, "CreatedAt": created, "CreatedSince": created_since, "CreatedBy": by, "Size": size, "Comment": comment})
            ),
            ListFormat::Table => table.push(vec![image, created_since, by, size, comment]),
        }
    }
    if !args.quiet && matches!(args.format, ListFormat::Table) {
        print_table(&table);
    }
    Ok(())
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac]Z` (what images carry) into a time.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let date = text.get(..10)?;
    let time = text.get(11..19)?;
    let mut d = date.split('-').map(|p| p.parse::<u64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (inverse of rfc3339 in forge-cache).
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(days * 86_400 + hh * 3600 + mm * 60 + ss))
}

/// Turns `--change` instructions into the config object of a new image.
pub(crate) fn config_from_changes(changes: &[String]) -> Result<Map<String, Value>, Failure> {
    let mut config = Map::new();
    if changes.is_empty() {
        return Ok(config);
    }
    let text = format!("FROM scratch\n{}\n", changes.join("\n"));
    let source = SourceFile::new("--change", text);
    let file = forge_frontend::dockerfile::parse(&source)?;
    let ir = lower_dockerfile(&file, &LowerOptions::unresolved())?;
    let Some(stage) = ir.stages.first() else {
        return Ok(config);
    };
    let command = |c: &CommandLine, shell: &[String]| -> Value {
        match c {
            CommandLine::Exec(argv) => json!(argv),
            CommandLine::Shell(s) => {
                let mut v: Vec<String> = shell.to_vec();
                v.push(s.clone());
                json!(v)
            }
        }
    };
    for step in &stage.steps {
        let shell = &step.ctx.shell;
        match &step.op {
            Op::Env(pairs) => {
                let env = config
                    .entry("Env")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .map(std::mem::take)
                    .unwrap_or_default();
                let mut env: Vec<String> = env
                    .into_iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect();
                for (k, v) in pairs {
                    let entry = format!("{k}={v}");
                    match env
                        .iter_mut()
                        .find(|e| e.split('=').next() == Some(k.as_str()))
                    {
                        Some(slot) => *slot = entry,
                        None => env.push(entry),
                    }
                }
                config.insert("Env".into(), json!(env));
            }
            Op::Cmd(c) => {
                config.insert("Cmd".into(), command(c, shell));
            }
            Op::Entrypoint(c) => {
                config.insert("Entrypoint".into(), command(c, shell));
            }
            Op::Expose(ports) => {
                let map = config.entry("ExposedPorts").or_insert_with(|| json!({}));
                for p in ports {
                    map[p] = json!({});
                }
            }
            Op::Volume(vols) => {
                let map = config.entry("Volumes").or_insert_with(|| json!({}));
                for v in vols {
                    map[v] = json!({});
                }
            }
            Op::Label(pairs) => {
                let map = config.entry("Labels").or_insert_with(|| json!({}));
                for (k, v) in pairs {
                    map[k] = json!(v);
                }
            }
            Op::User(u) => {
                config.insert("User".into(), json!(u));
            }
            Op::Workdir(w) => {
                config.insert("WorkingDir".into(), json!(w));
            }
            Op::StopSignal(s) => {
                config.insert("StopSignal".into(), json!(s));
            }
            Op::Onbuild(t) => {
                let list = config.entry("OnBuild").or_insert_with(|| json!([]));
                if let Some(a) = list.as_array_mut() {
                    a.push(json!(t));
                }
            }
            _ => {
                return Err(Failure {
                    report: miette::miette!(
                        help = "--change takes CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME or WORKDIR",
                        "`{}` cannot be applied by import",
                        step.origin.text.split_whitespace().next().unwrap_or("?")
                    ),
                    code: 1,
                });
            }
        }
    }
    Ok(config)
}

/// `forge import`.
pub fn import(args: &ImportArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let reference = args.reference.as_deref().map(parse_reference).transpose()?;
    let config = config_from_changes(&args.change)?;
    let (input, source_name): (Box<dyn Read + Send>, String) = if args.source == "-" {
        (Box::new(std::io::stdin()), "-".to_string())
    } else if args.source.contains("://") {
        let download = forge_http::Client::new().get(&args.source).map_err(|e| {
            let code = if e.is_input_error() { 1 } else { 2 };
            Failure {
                report: e.into(),
                code,
            }
        })?;
        let body: Box<dyn Read + Send> = download.body;
        (body, args.source.clone())
    } else {
        let file = std::fs::File::open(&args.source).map_err(|e| Failure {
            report: miette::miette!(
                help = "give the path of a tarball, or - to read standard input",
                "cannot open `{}`: {e}",
                args.source
            ),
            code: 2,
        })?;
        (Box::new(file), args.source.clone())
    };
    let mut layer = LayerOptions::from_env();
    layer.compression = match args.compression {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::None => Compression::None,
    };
    let opts = ImportOptions {
        layer,
        config,
        comment: args
            .message
            .clone()
            .unwrap_or_else(|| format!("Imported from {source_name}")),
        reference,
    };
    let image = import_tarball(&store, input, &opts)?;
    println!("{}", image.id);
    Ok(())
}

/// `forge fsck`.
pub fn fsck(args: &FsckArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let report = store.fsck(args.repair)?;
    println!(
        "checked {} blobs ({})",
        report.blobs_checked,
        human::size(report.bytes_checked)
    );
    for d in &report.corrupt {
        println!("corrupt blob: {d}");
    }
    for d in &report.missing {
        println!("missing blob: {d}");
    }
    for b in &report.broken {
        println!(
            "broken image: {} ({}): {}",
            b.name.as_deref().unwrap_or("<unnamed>"),
            b.digest,
            b.reason
        );
    }
    for p in &report.stray {
        println!("stray file: {}", p.display());
    }
    // Stray files (temp files of an interrupted write) do not make the store
    // inconsistent: nothing refers to them.
    let consistent =
        report.corrupt.is_empty() && report.missing.is_empty() && report.broken.is_empty();
    if report.repaired {
        println!("repaired");
    } else if consistent {
        println!("the store is consistent");
    }
    if consistent || report.repaired {
        Ok(())
    } else {
        Err(Failure {
            report: miette::miette!(
                help = "run `forge fsck --repair` to remove what is broken",
                "the store has problems"
            ),
            code: 1,
        })
    }
}

/// `forge prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove the build cache: step-cache entries not used in the last
    /// ten minutes (a build running now keeps its own), and the layer
    /// snapshots no image or remaining entry needs.
    #[arg(long)]
    cache: bool,
}

/// `forge prune`.
pub fn prune(args: &PruneArgs) -> Result<(), Failure> {
    let store = open_store()?;
    if args.cache {
        let report = store.prune_cache(forge_cache::store::PRUNE_GRACE)?;
        println!(
            "removed {} cache entries (kept {} in use), {} snapshots, {} blobs; total reclaimed space: {}",
            report.entries_removed,
            report.entries_kept,
            report.snapshots_removed,
            report.blobs.removed.len(),
            human::size(report.blobs.bytes_freed)
        );
        return Ok(());
    }
    let report = store.prune()?;
    println!(
        "removed {} blobs, kept {}; total reclaimed space: {}",
        report.removed.len(),
        report.kept,
        human::size(report.bytes_freed)
    );
    Ok(())
}

/// `forge save`.
#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images to save: names, ID prefixes or digests.
    #[arg(required = true)]
    images: Vec<String>,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<std::path::PathBuf>,
    /// Archive format: `docker` (docker load, skopeo docker-archive:) or `oci` (an OCI layout).
    #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
    format: SaveFormat,
}

/// `--format` of `forge save`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SaveFormat {
    /// docker's archive format.
    Docker,
    /// An OCI image layout.
    Oci,
}

/// `forge load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from this file instead of standard input.
    #[arg(short, long)]
    input: Option<std::path::PathBuf>,
    /// Print nothing.
    #[arg(short, long)]
    quiet: bool,
}

/// `forge save`.
pub fn save(args: &SaveArgs) -> Result<(), Failure> {
    use forge_cache::archive::{self, ArchiveFormat, SaveItem};
    use std::io::IsTerminal;
    let store = open_store()?;
    let all = store.images()?;
    let mut items: Vec<SaveItem> = Vec::new();
    for query in &args.images {
        let record = store.resolve(query)?;
        // By name: that name; by ID or digest: every name of the image.
        let by_name = Reference::parse(query).ok().filter(|q| {
            record
                .reference
                .as_ref()
                .is_some_and(|r| r.tagged_name() == q.tagged_name())
        });
        let names: Vec<Reference> = match by_name {
            Some(r) => vec![r],
            None => all
                .iter()
                .filter(|r| r.digest == record.digest)
                .filter_map(|r| r.reference.clone())
                .collect(),
        };
        match items.iter_mut().find(|i| i.record.digest == record.digest) {
            Some(item) => item.names.extend(names),
            None => items.push(SaveItem { record, names }),
        }
    }
    let format = match args.format {
        SaveFormat::Docker => ArchiveFormat::Docker,
        SaveFormat::Oci => ArchiveFormat::Oci,
    };
    match &args.output {
        Some(path) => {
            // Write next to the target, then rename: a failed save leaves no partial file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| std::path::Path::new("."));
            let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Failure {
                report: miette::miette!("cannot write in `{}`: {e}", dir.display()),
                code: 2,
            })?;
            archive::save(&store, &items, format, temp.as_file_mut())?;
            temp.as_file().sync_all().map_err(|e| Failure {
                report: miette::miette!("cannot write `{}`: {e}", path.display()),
                code: 2,
            })?;
            temp.persist(path).map_err(|e| Failure {
                report: miette::miette!("cannot write `{}`: {}", path.display(), e.error),
                code: 2,
            })?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(Failure {
                    report: miette::miette!(
                        help = "use -o FILE, or redirect the output",
                        "refusing to write an image archive to a terminal"
                    ),
                    code: 1,
                });
            }
            let mut lock = stdout.lock();
            archive::save(&store, &items, format, &mut lock)?;
        }
    }
    Ok(())
}

/// `forge load`.
pub fn load(args: &LoadArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let loaded = match &args.input {
        Some(path) => {
            let mut f = std::fs::File::open(path).map_err(|e| Failure {
                report: miette::miette!("cannot open `{}`: {e}", path.display()),
                code: 2,
            })?;
            forge_cache::archive::load(&store, &mut f)?
        }
        None => forge_cache::archive::load(&store, &mut std::io::stdin().lock())?,
    };
    if !args.quiet {
        for image in &loaded {
            for name in &image.names {
                println!("Loaded image: {}", name.familiar());
            }
        }
    }
    Ok(())
}
