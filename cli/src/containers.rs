//! Working containers: `forge from`, `run`, `containers`, `rm`, `diff`, `commit`.
//!
//! A container is an image plus an overlayfs upper directory in the store
//! (see `forge_cache::container`); `run` runs a command in the RUN sandbox on
//! an overlay of the image's layer snapshots with that upper directory, and
//! `commit` turns the upper directory into one layer, the way a RUN step's
//! upper directory becomes its layer.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use forge_cache::container::{Container, Containers};
use forge_cache::image::{rfc3339, LayerRef};
use forge_cache::layer::{write_dir_layer, LayerOptions};
use forge_cache::reference::Reference;
use forge_cache::store::Store;
use forge_cache::{CacheError, Sha256Digest};
use forge_executor::build::{ImageState, Layer, Runner};
use forge_executor::sandbox::{self, mounts, EtcFiles, Network, Rootfs, RunSpec};
use forge_executor::ExecutorError;
use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::{json, Map, Value};

use crate::images::{config_from_changes, open_store, print_table, since};
use crate::Failure;

/// `forge from IMAGE`.
#[derive(Debug, Args)]
pub struct FromArgs {
    /// The image: a name, ID prefix or digest.
    image: String,
    /// The container's name (default: `<image>-working-container`).
    #[arg(long)]
    name: Option<String>,
}

/// Network modes of `forge run`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NetArg {
    /// The host's network.
    Host,
    /// Only a loopback interface.
    None,
}

/// `forge run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Keep standard input open: the command reads forge's.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the command a terminal (with -i and forge on a terminal: an
    /// interactive session).
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container when the command ends.
    #[arg(long)]
    rm: bool,
    /// Set an environment variable (`K=V`, or `K` to take it from forge's environment).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// The user (`name`, `uid`, `name:group`, `uid:gid`).
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    /// Network mode.
    #[arg(long, value_enum, default_value_t = NetArg::Host)]
    network: NetArg,
    /// Bind a host directory or file: `HOST:CONTAINER[:ro]`.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    volumes: Vec<String>,
    /// The name of the new container (when IMAGE is an image).
    #[arg(long)]
    name: Option<String>,
    /// A container (by name or ID), or an image to make a new container of.
    target: String,
    /// The command and its arguments (replaces the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Output formats of `forge containers`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    /// A table.
    Table,
    /// One JSON object per line, with docker's field names.
    Json,
}

/// `forge containers`.
#[derive(Debug, Args)]
pub struct ContainersArgs {
    /// Show all containers (default: those not exited: created or running).
    #[arg(short, long)]
    all: bool,
    /// Only print IDs.
    #[arg(short, long)]
    quiet: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
}

/// `forge rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Containers: names or ID prefixes.
    #[arg(required = true)]
    containers: Vec<String>,
}

/// `forge diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The container.
    container: String,
}

/// `forge commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The commit message (the history entry's comment).
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// The author.
    #[arg(short = 'a', long = "author")]
    author: Option<String>,
    /// Apply a Dockerfile instruction to the image's config (CMD, ENV, ...).
    #[arg(short = 'c', long = "change")]
    changes: Vec<String>,
    /// The container.
    container: String,
    /// Name the new image `REPO[:TAG]`.
    reference: Option<String>,
}

fn fail(message: impl std::fmt::Display, help: &str, code: u8) -> Failure {
    Failure {
        report: miette::miette!(help = help.to_string(), "{message}"),
        code,
    }
}

fn exec_err(e: ExecutorError) -> Failure {
    Failure {
        report: e.into(),
        code: 2,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn find(store: &Store, query: &str) -> Result<Container, Failure> {
    Containers::new(store).find(query)?.ok_or_else(|| {
        fail(
            format!("no container `{query}`"),
            "`forge containers -a` lists the containers",
            1,
        )
    })
}

/// Makes a container of the image `query`: an image in the store or, failing
/// that, a build step's image by its ID (the "last good step" a failed build
/// names; see [`Store::step_image`]), shown by its short ID as docker shows an
/// untagged image.
fn create(store: &Store, query: &str, name: Option<&str>) -> Result<Container, Failure> {
    let record = match store.resolve(query) {
        Ok(record) => record,
        Err(not_found @ CacheError::ImageNotFound { .. }) => {
            let Some((manifest, id)) = store.step_image(query)? else {
                return Err(not_found.into());
            };
            return Ok(Containers::new(store).create(name, &id.short(), &manifest, &id)?);
        }
        Err(e) => return Err(e.into()),
    };
    if record.is_index() {
        return Err(fail(
            format!("image `{query}` is a multi-platform index"),
            "pull the image for one platform",
            1,
        ));
    }
    let id = record.id.ok_or(CacheError::ImageNotFound {
        query: query.to_string(),
    })?;
    Ok(Containers::new(store).create(name, query, &record.digest, &id)?)
}

/// `forge from`.
pub fn from(args: &FromArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let c = create(&store, &args.image, args.name.as_deref())?;
    println!("{}", c.name);
    Ok(())
}

fn runner<'a>(store: &'a Store, exe: &'a Path, layer: &'a LayerOptions) -> Runner<'a> {
    Runner {
        store,
        exe,
        layer,
        hostname: "forge",
        extra_hosts: &[],
        keep_failed: false,
    }
}

/// The overlay lower dirs of the container's image, bottom first.
fn lower_dirs(store: &Store, state: &ImageState) -> Result<Vec<PathBuf>, Failure> {
    let layer = LayerOptions::from_env();
    runner(store, Path::new("/proc/self/exe"), &layer)
        .lower_dirs(state)
        .map_err(exec_err)
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `forge run`: the exit code (docker's: the command's, 125, 126, 127).
pub fn run(args: &RunArgs) -> Result<u8, Failure> {
    // Checked before any container is made, as docker does.
    if args.tty && args.interactive && !std::io::stdin().is_terminal() {
        return Err(fail(
            "the input device is not a TTY",
            "run forge from a terminal, or drop -t to pipe input with -i",
            125,
        ));
    }
    let store = open_store()?;
    let containers = Containers::new(&store);
    let mut c = match containers.find(&args.target)? {
        Some(c) => {
            if args.name.is_some() {
                return Err(fail(
                    format!("`{}` is a container already", args.target),
                    "--name names a new container made from an image",
                    1,
                ));
            }
            c
        }
        None => create(&store, &args.target, args.name.as_deref())?,
    };
    let result = run_in(&store, &mut c, args);
    if args.rm {
        if let Err(e) = containers.remove(&c) {
            // The run's own result (the command's status) stays the outcome.
            eprintln!("warning: container `{}` was not removed: {e}", c.name);
        }
    }
    result
}

/// `forge build --on-failure=shell`: an interactive `/bin/sh` in the
/// container a failed RUN left, which is removed afterwards. The shell's
/// exit code.
pub fn debug_shell(container: &str) -> Result<u8, Failure> {
    run(&RunArgs {
        interactive: true,
        tty: true,
        rm: true,
        env: Vec::new(),
        workdir: None,
        user: None,
        network: NetArg::Host,
        volumes: Vec::new(),
        name: None,
        target: container.to_string(),
        command: vec!["/bin/sh".to_string()],
    })
}

fn run_in(store: &Store, c: &mut Container, args: &RunArgs) -> Result<u8, Failure> {
    let containers = Containers::new(store);
    let _lock = containers.lock(c)?;
    let state = ImageState::from_store(store, &c.manifest_digest()?).map_err(exec_err)?;
    let config = state.config.get("config").cloned().unwrap_or(json!({}));
    let mut argv = string_list(config.get("Entrypoint"));
    if args.command.is_empty() {
        argv.extend(string_list(config.get("Cmd")));
    } else {
        argv.extend(args.command.iter().cloned());
    }
    if argv.is_empty() {
        return Err(fail(
            "no command specified",
            "give a command after the image, or commit the image with -c 'CMD ...'",
            1,
        ));
    }
    let mut env = string_list(config.get("Env"));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for e in &args.env {
        let entry = match e.split_once('=') {
            Some(_) => e.clone(),
            None => match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            },
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    let cwd = args
        .workdir
        .clone()
        .or_else(|| {
            config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default();
    let user = args
        .user
        .clone()
        .or_else(|| config.get("User").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        // As docker run -t does.
        env.push("TERM=xterm".into());
    }
    let mut binds = Vec::new();
    for v in &args.volumes {
        binds.push(parse_volume(v)?);
    }

    let dir = containers.dir(c);
    let mut lowers = lower_dirs(store, &state)?;
    if lowers.is_empty() {
        let empty = dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| io_failure("create", &empty, e))?;
        lowers.push(empty);
    }
    let merged = dir.join("merged");
    let etc = dir.join("etc");
    for d in [&merged, &etc] {
        std::fs::create_dir_all(d).map_err(|e| io_failure("create", d, e))?;
    }
    let hostname = c.short_id().to_string();
    let etc_files = EtcFiles {
        hosts: etc.join("hosts"),
        resolv_conf: etc.join("resolv.conf"),
        hostname: etc.join("hostname"),
    };
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    for (path, bytes) in [
        (&etc_files.hosts, hosts.into_bytes()),
        (&etc_files.resolv_conf, resolv),
        (&etc_files.hostname, format!("{hostname}\n").into_bytes()),
    ] {
        std::fs::write(path, bytes).map_err(|e| io_failure("write", path, e))?;
    }
    let spec = RunSpec {
        rootfs: Rootfs::Overlay {
            lower_dirs: lowers,
            upper_dir: containers.upper_dir(c),
            work_dir: containers.work_dir(c),
        },
        merged_dir: merged,
        argv: argv.clone(),
        env,
        cwd,
        user,
        workdir_owner_is_user: false,
        network: match args.network {
            NetArg::Host => Network::Host,
            NetArg::None => Network::None,
        },
        hostname,
        etc_files,
    };
    let exe = std::env::current_exe().map_err(|e| {
        fail(
            format!("cannot find forge's own executable: {e}"),
            "run forge from a path that exists",
            2,
        )
    })?;
    let upper_etc = containers.upper_dir(c).join("etc");
    let had_etc = upper_etc.symlink_metadata().is_ok();
    let attach = sandbox::Attach {
        stdin: args.interactive,
        tty: args.tty,
    };
    let status = sandbox::run_attached(
        &exe,
        &spec,
        &binds,
        attach,
        Stdio::inherit(),
        Stdio::inherit(),
    )
    .map_err(exec_err)?;
    // The sandbox keeps the `etc` directory it copied up for its `/etc`
    // binds (BuildKit keeps it in a RUN's layer); a container's changes are
    // what the command did, so an `etc` left empty by this run goes.
    if !had_etc {
        let _ = std::fs::remove_dir(&upper_etc);
    }
    let code = sandbox::exit_code(status);
    c.command = argv;
    c.exit_code = Some(code);
    containers.save(c)?;
    Ok(u8::try_from(code).unwrap_or(125))
}

fn io_failure(action: &'static str, path: &Path, error: std::io::Error) -> Failure {
    CacheError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
    .into()
}

/// `-v HOST:CTR[:ro]`.
fn parse_volume(text: &str) -> Result<mounts::MountSpec, Failure> {
    let bad = |why: &str| {
        fail(
            format!("invalid -v `{text}`: {why}"),
            "write -v HOST_PATH:CONTAINER_PATH[:ro], both absolute",
            1,
        )
    };
    let parts: Vec<&str> = text.split(':').collect();
    let (host, target, readonly) = match parts.as_slice() {
        [h, t] => (*h, *t, false),
        [h, t, "ro"] => (*h, *t, true),
        [h, t, "rw"] => (*h, *t, false),
        _ => return Err(bad("expected HOST:CONTAINER[:ro]")),
    };
    if !target.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    let path = std::fs::canonicalize(host).map_err(|e| {
        fail(
            format!("invalid -v `{text}`: host path `{host}`: {e}"),
            "the host path must exist",
            2,
        )
    })?;
    Ok(mounts::MountSpec {
        target: target.to_string(),
        source: mounts::MountSource::Bind { path, readonly },
    })
}

fn command_text(c: &Container) -> String {
    c.command.join(" ")
}

/// `forge containers`.
pub fn list(args: &ContainersArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let containers = Containers::new(&store);
    let mut rows = vec![vec![
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "NAMES".into(),
    ]];
    // Newest first, as docker lists them.
    for c in containers.list()?.into_iter().rev() {
        let running = matches!(containers.lock(&c), Err(CacheError::ContainerBusy { .. }));
        if !args.all && !running && c.exit_code.is_some() {
            continue;
        }
        let status = if running {
            "Up".to_string()
        } else {
            c.status()
        };
        let created = since(Some(UNIX_EPOCH + std::time::Duration::from_secs(c.created)));
        if args.quiet {
            println!("{}", c.short_id());
            continue;
        }
        match args.format {
            ListFormat::Json => {
                let state = if running {
                    "running"
                } else if c.exit_code.is_some() {
                    "exited"
                } else {
                    "created"
                };
                let obj = json!({
                    "ID": c.short_id(),
                    "Image": c.image,
                    "Command": format!("\"{}\"", command_text(&c)),
                    "CreatedAt": rfc3339(c.created),
                    "RunningFor": created,
                    "State": state,
                    "Status": status,
                    "Names": c.name,
                });
                println!("{obj}");
            }
            ListFormat::Table => {
                let mut cmd = command_text(&c);
                if cmd.chars().count() > 20 {
                    cmd = cmd.chars().take(19).collect::<String>() + "…";
                }
                rows.push(vec![
                    c.short_id().to_string(),
                    c.image.clone(),
                    format!("\"{cmd}\""),
                    created,
                    status,
                    c.name.clone(),
                ]);
            }
        }
    }
    if !args.quiet && matches!(args.format, ListFormat::Table) {
        print_table(&rows);
    }
    Ok(())
}

/// `forge rm`.
pub fn rm(args: &RmArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let mut failed = None;
    for query in &args.containers {
        let result = find(&store, query)
            .and_then(|c| Ok(Containers::new(&store).remove(&c).map(|()| c.name)?));
        match result {
            Ok(name) => println!("{name}"),
            Err(e) => {
                eprintln!("{:?}", e.report);
                failed = Some(e.code);
            }
        }
    }
    match failed {
        Some(code) => Err(fail("some containers were not removed", "", code)),
        None => Ok(()),
    }
}

fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether `rel` exists in the image whose snapshots are `lowers` (bottom first).
fn in_image(lowers: &[PathBuf], rel: &Path) -> bool {
    for lower in lowers.iter().rev() {
        if let Ok(meta) = std::fs::symlink_metadata(lower.join(rel)) {
            return !is_whiteout(&meta);
        }
    }
    false
}

/// `forge diff`.
pub fn diff(args: &DiffArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let c = find(&store, &args.container)?;
    let state = ImageState::from_store(&store, &c.manifest_digest()?).map_err(exec_err)?;
    let lowers = lower_dirs(&store, &state)?;
    let upper = Containers::new(&store).upper_dir(&c);
    let mut out = BTreeSet::new();
    walk(&upper, Path::new(""), &lowers, &mut out)?;
    for (path, kind) in out {
        println!("{kind} /{}", path.display());
    }
    Ok(())
}

fn walk(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut BTreeSet<(PathBuf, char)>,
) -> Result<(), Failure> {
    let dir = upper.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| io_failure("read", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_failure("read", &dir, e))?;
        let path = rel.join(entry.file_name());
        let meta = std::fs::symlink_metadata(upper.join(&path))
            .map_err(|e| io_failure("stat", &upper.join(&path), e))?;
        let kind = if is_whiteout(&meta) {
            'D'
        } else if in_image(lowers, &path) {
            'C'
        } else {
            'A'
        };
        out.insert((path.clone(), kind));
        if meta.is_dir() {
            walk(upper, &path, lowers, out)?;
        }
    }
    Ok(())
}

/// `forge commit`.
pub fn commit(args: &CommitArgs) -> Result<(), Failure> {
    let store = open_store()?;
    let reference = args
        .reference
        .as_deref()
        .map(Reference::parse)
        .transpose()?;
    let changes = config_from_changes(&args.changes)?;
    let c = find(&store, &args.container)?;
    let containers = Containers::new(&store);
    let _lock = containers.lock(&c)?;
    let mut state = ImageState::from_store(&store, &c.manifest_digest()?).map_err(exec_err)?;

    // The upper dir becomes the layer exactly as a RUN step's does.
    let opts = LayerOptions::from_env();
    let mut writer = store.blob_writer()?;
    let info =
        write_dir_layer(&containers.upper_dir(&c), &opts, &mut writer).map_err(CacheError::from)?;
    let (digest, size) = writer.commit(Some(&info.digest))?;
    state.layers.push(Layer {
        blob: LayerRef {
            media_type: info.media_type.to_string(),
            digest,
            size,
        },
        diff_id: info.diff_id,
    });

    apply_changes(state.container_config(), changes);
    let created = now();
    let mut entry = Map::new();
    entry.insert("created".into(), json!(rfc3339(created)));
    entry.insert("created_by".into(), json!(command_text(&c)));
    if let Some(m) = &args.message {
        entry.insert("comment".into(), json!(m));
    }
    if let Some(a) = &args.author {
        entry.insert("author".into(), json!(a));
        state.config.insert("author".into(), json!(a));
    }
    match state.config.entry("history").or_insert_with(|| json!([])) {
        Value::Array(items) => items.push(Value::Object(entry)),
        other => *other = json!([Value::Object(entry)]),
    }
    let committed = state.commit(&store, created).map_err(exec_err)?;
    if let Some(reference) = reference {
        let descriptor = Descriptor::new(
            MediaType::ImageManifest,
            committed.manifest_size,
            manifest_digest(&committed.manifest)?,
        );
        store.tag(&descriptor, &reference, Some(SystemTime::now()))?;
    }
    println!("{}", committed.id);
    Ok(())
}

fn manifest_digest(d: &Sha256Digest) -> Result<Digest, Failure> {
    Digest::from_str(&d.to_string()).map_err(|e| fail(format!("bad digest: {e}"), "", 101))
}

/// Applies `-c` changes (a config object from [`config_from_changes`]) to
/// the image's config: `Env` entries are merged by name, other keys replaced
/// (maps merged).
fn apply_changes(config: &mut Map<String, Value>, changes: Map<String, Value>) {
    for (key, value) in changes {
        match (key.as_str(), config.get_mut(&key), value) {
            ("Env", Some(Value::Array(old)), Value::Array(new)) => {
                let name = |v: &Value| {
                    v.as_str()
                        .and_then(|s| s.split('=').next())
                        .map(String::from)
                };
                for e in new {
                    match old.iter_mut().find(|x| name(x) == name(&e)) {
                        Some(slot) => *slot = e,
                        None => old.push(e),
                    }
                }
            }
            (_, Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
            (_, _, value) => {
                config.insert(key, value);
            }
        }
    }
}
