//! Running one file-system step (RUN, or WORKDIR's directory creation) in the
//! sandbox, and turning its overlay upper directory into a layer — or, where
//! overlayfs cannot be mounted (or `FORGE_SNAPSHOTTER=copy`), running it in a
//! copy of the image and making the layer from what changed there
//! ([`super::copy`]).

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use forge_cache::image::LayerRef;
use forge_cache::layer::{
    extract_layer, write_changes_layer, write_dir_layer, write_planned_layer, ApplyLimits, Change,
    ExtractOptions, LayerInfo, LayerOptions, WhiteoutMode,
};
use forge_cache::store::Store;

use super::copy;
use super::direct;
use super::files::{self, FileStep};
use super::state::{ImageState, Layer};
use crate::sandbox::fileop::{resolve_in_root, FileAction};
use crate::sandbox::mounts::{MountSource, MountSpec, SecretData};
use crate::sandbox::{self, EtcFiles, Network, Rootfs, RunSpec};
use crate::ExecutorError;

/// The environment variable that chooses how RUN steps get their root file
/// system: `overlay` (or unset, or empty; the default) mounts overlayfs over
/// the layers' snapshots and falls back to copying where that mount fails;
/// `copy` always copies (slower; for tests, and for hosts where overlayfs
/// misbehaves).
pub const SNAPSHOTTER_ENV: &str = "FORGE_SNAPSHOTTER";

/// Set once an overlay mount has failed (or copying was asked for): every
/// later RUN of the process copies the image.
static COPY_MODE: AtomicBool = AtomicBool::new(false);

/// Set once the process has warned that RUN steps copy the image.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Prints the one-line fallback warning, once per process.
fn warn_copy(reason: &str) {
    if !WARNED.swap(true, Ordering::SeqCst) {
        eprintln!("warning: {reason}; RUN steps copy the image instead (slower)");
    }
}

/// Whether RUN steps copy the image: [`SNAPSHOTTER_ENV`] says `copy`, or an
/// overlay mount has failed in this process.
fn copy_mode() -> Result<bool, ExecutorError> {
    match std::env::var(SNAPSHOTTER_ENV).as_deref() {
        Ok("copy") => {
            warn_copy(&format!("overlayfs is not used ({SNAPSHOTTER_ENV}=copy)"));
            Ok(true)
        }
        Ok("" | "overlay") | Err(std::env::VarError::NotPresent) => {
            Ok(COPY_MODE.load(Ordering::SeqCst))
        }
        Ok(other) => Err(ExecutorError::UnknownSnapshotter(other.to_string())),
        Err(std::env::VarError::NotUnicode(v)) => Err(ExecutorError::UnknownSnapshotter(
            v.to_string_lossy().into_owned(),
        )),
    }
}

/// How many lines of a failed command's output the error shows.
pub const TAIL_LINES: usize = 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct SandboxStep {
    /// The command; empty for WORKDIR (the sandbox only creates `cwd`).
    pub argv: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// USER in effect (Docker's syntax).
    pub user: String,
    /// Working directory.
    pub cwd: String,
    /// Whether directories created for `cwd` belong to the user (WORKDIR).
    pub workdir_owned_by_user: bool,
    /// The network.
    pub network: Network,
    /// `RUN --mount`s, their sources resolved (none for WORKDIR).
    pub mounts: Vec<RunMount>,
}

/// A `RUN --mount`, its source resolved by the build driver; the runner
/// prepares it for the sandbox ([`MountSpec`]).
#[derive(Debug, Clone)]
pub struct RunMount {
    /// Where, in the container (absolute).
    pub target: String,
    /// What.
    pub kind: RunMountKind,
}

/// What a [`RunMount`] mounts.
#[derive(Debug, Clone)]
pub enum RunMountKind {
    /// An empty tmpfs.
    Tmpfs {
        /// `size=` in bytes.
        size: Option<u64>,
    },
    /// A persistent cache directory of the store, `forge/v1/cachemounts/<blake3
    /// of id>` (another instance, `…-N`, for a `private` one in use).
    Cache {
        /// `id=` (the target by default).
        id: String,
        /// `sharing=`.
        sharing: forge_ir::CacheSharing,
        /// The directory's mode when it is created.
        mode: u32,
        /// Its owner when it is created.
        uid: u32,
        /// Its group when it is created.
        gid: u32,
        /// `ro`.
        readonly: bool,
        /// `from=` and `source=`: a new cache directory starts as a copy of
        /// this path of that image (BuildKit's seeding); `None`: empty.
        seed: Option<(Box<ImageState>, String)>,
    },
    /// A secret file, on a tmpfs, read-only.
    Secret {
        /// The secret.
        data: SecretData,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A directory or file of the context or of an image.
    Bind {
        /// Where it comes from.
        from: BindFrom,
        /// The path in it (`/`: all of it).
        source: String,
        /// Read-only (the default); writable mounts' changes are thrown away.
        readonly: bool,
    },
}

/// Where a bind mount's files are.
#[derive(Debug, Clone)]
pub enum BindFrom {
    /// A host directory (the build context, a `--build-context` directory).
    Dir(PathBuf),
    /// An image (another stage's result, an image of the store).
    Image(Box<ImageState>),
}

/// A step's work in the sandbox: a command, or a file action.
#[derive(Clone, Copy)]
enum Job<'j> {
    Exec(&'j SandboxStep),
    File(&'j FileStep<'j>),
}

impl<'j> Job<'j> {
    /// The sandbox step to run: the command's, or for a file action the
    /// no-command step it runs in.
    fn sandbox_step(self) -> std::borrow::Cow<'j, SandboxStep> {
        match self {
            Job::Exec(step) => std::borrow::Cow::Borrowed(step),
            Job::File(_) => std::borrow::Cow::Owned(SandboxStep {
                argv: Vec::new(),
                env: Vec::new(),
                user: String::new(),
                cwd: "/".to_string(),
                workdir_owned_by_user: false,
                network: Network::None,
                mounts: Vec::new(),
            }),
        }
    }
}

/// A layer a step made.
#[derive(Debug, Clone)]
pub struct NewLayer {
    /// The layer.
    pub layer: Layer,
    /// Tar entries in it.
    pub entries: u64,
    /// Uncompressed bytes.
    pub bytes: u64,
    /// From the command's exit to the layer being stored and its snapshot ready.
    pub elapsed: Duration,
}

/// How a sandbox step ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exit 0, and the layer (empty when nothing changed).
    Done(NewLayer),
    /// A non-zero exit (`128 + n` for signal `n`) and the last lines of output.
    Failed {
        /// The exit code.
        code: i32,
        /// The last [`TAIL_LINES`] lines of output.
        tail: Vec<String>,
        /// With [`Runner::keep_failed`], the name of the working container
        /// (of the step's parent image) that holds what the command changed
        /// before it failed.
        container: Option<String>,
    },
}

/// Where a build runs its sandboxes.
pub struct Runner<'a> {
    /// The store (snapshots, temp dirs, blobs).
    pub store: &'a Store,
    /// forge's own binary, re-executed as the sandbox.
    pub exe: &'a Path,
    /// How layers are written.
    pub layer: &'a LayerOptions,
    /// Host name inside the sandbox.
    pub hostname: &'a str,
    /// `--add-host`: `(host, ip)` pairs added to `/etc/hosts`.
    pub extra_hosts: &'a [(String, String)],
    /// A command that fails leaves what it changed in a working container
    /// (see [`Outcome::Failed`]), for `forge build --on-failure=shell`.
    pub keep_failed: bool,
}

/// Removes a run directory when dropped (whatever happened).
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ExecutorError + 'p {
    move |source| ExecutorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How the sandbox ran: its exit code and last lines of output.
struct Ran {
    code: i32,
    tail: Vec<String>,
}

impl Ran {
    /// The step's outcome when the command failed.
    fn failure(self) -> Option<Outcome> {
        (self.code != 0).then_some(Outcome::Failed {
            code: self.code,
            tail: self.tail,
            container: None,
        })
    }
}

fn store_err(e: forge_cache::CacheError) -> ExecutorError {
    ExecutorError::Store(Box::new(e))
}

fn layer_err(e: forge_cache::layer::LayerError) -> ExecutorError {
    ExecutorError::Store(Box::new(e.into()))
}

impl Runner<'_> {
    /// The overlay lower dirs of `state` (snapshot links, bottom first),
    /// extracting any layer not extracted yet.
    pub fn lower_dirs(&self, state: &ImageState) -> Result<Vec<PathBuf>, ExecutorError> {
        let snapshots = self.store.snapshots();
        // overlayfs refuses a directory twice in `lowerdir` (ELOOP), and a layer
        // can repeat (two RUNs that made the same change, empty layers). Only
        // the topmost copy matters: a lower copy of the same tree shows nothing
        // the upper one does not already show or hide.
        let mut seen = std::collections::HashSet::new();
        let mut lowers = Vec::new();
        for l in state.layers.iter().rev() {
            if seen.insert(l.diff_id) {
                let link = snapshots
                    .ensure(self.store, &l.diff_id, &l.blob.digest)
                    .map_err(store_err)?;
                lowers.push(link);
            }
        }
        lowers.reverse();
        Ok(lowers)
    }

    /// Runs `step` on top of `state`; `output` gets each line the command prints
    /// (stdout and stderr interleaved), from another thread.
    ///
    /// overlayfs first; if it cannot be mounted, a one-line warning and the
    /// step again in a copy of the image, as every later step of the process
    /// (see [`SNAPSHOTTER_ENV`]).
    pub fn run(
        &self,
        state: &ImageState,
        step: &SandboxStep,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        self.run_job(state, Job::Exec(step), output)
    }

    /// Runs a COPY or ADD on top of `state` (see [`FileStep`]): the
    /// sandbox performs the copy in the step's root and the change is the
    /// layer, as for [`Runner::run`] (overlay, or the copy snapshotter).
    /// Fails with [`ExecutorError::FileAction`] when the copy fails.
    pub fn run_file(
        &self,
        state: &ImageState,
        step: &FileStep<'_>,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        self.run_job(state, Job::File(step), output)
    }

    fn run_job(
        &self,
        state: &ImageState,
        job: Job<'_>,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        // `--link`: the copy is made on an empty root, its `--chown` names
        // resolved in the parent image first.
        let linked;
        let (state, job) = match job {
            Job::File(file) if file.link => {
                let mut on_scratch = file.clone();
                on_scratch.link = false;
                if let Some(spec) = &file.chown {
                    let union = direct::Union::new(self.lower_dirs(state)?);
                    let (uid, gid) = direct::resolve_owner(&union, spec)?;
                    on_scratch.chown = Some(format!("{uid}:{gid}"));
                }
                linked = (ImageState::scratch(), on_scratch);
                (&linked.0, Job::File(&linked.1))
            }
            _ => (state, job),
        };
        if copy_mode()? {
            return self.run_copy(state, job, output);
        }
        if let Job::File(file) = job {
            if let Some(done) = self.run_direct(state, file)? {
                return Ok(done);
            }
        }
        match self.run_overlay(state, job, output) {
            Err(ExecutorError::OverlayUnavailable(reason)) => {
                COPY_MODE.store(true, Ordering::SeqCst);
                warn_copy(&format!("overlayfs cannot be mounted here ({reason})"));
                self.run_copy(state, job, output)
            }
            other => other,
        }
    }

    /// Runs `job` with `spec`: the command, or the file action prepared in
    /// the run directory `run_dir` (`copy_mode`: another image's layers are
    /// applied to a directory rather than mounted).
    fn run_spec(
        &self,
        spec: &RunSpec,
        job: Job<'_>,
        run_dir: &Path,
        copy_mode: bool,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Ran, ExecutorError> {
        match job {
            Job::Exec(step) => {
                // The cache locks are held until the sandbox is gone.
                let (mounts, _locks) = self.prepare_mounts(&step.mounts, run_dir, copy_mode)?;
                self.sandbox(spec, None, &mounts, output)
            }
            Job::File(file) => {
                let action = files::prepare(self, file, run_dir, copy_mode)?;
                self.sandbox(spec, Some(&action), &[], output)
            }
        }
    }

    /// The sandbox's [`MountSpec`]s of `mounts`, their sources prepared in
    /// `run_dir/mounts/<n>` (secret and image stages, writable layers; in
    /// `copy_mode` images applied to a directory, as COPY --from does), with
    /// the cache locks to hold while the sandbox runs.
    fn prepare_mounts(
        &self,
        mounts: &[RunMount],
        run_dir: &Path,
        copy_mode: bool,
    ) -> Result<(Vec<MountSpec>, Vec<fs::File>), ExecutorError> {
        let mut specs = Vec::new();
        let mut locks = Vec::new();
        for (n, m) in mounts.iter().enumerate() {
            let dir = run_dir.join("mounts").join(n.to_string());
            let mkdir = |p: &Path| fs::create_dir_all(p).map_err(io("creating", p));
            let source = match &m.kind {
                RunMountKind::Tmpfs { size } => MountSource::Tmpfs { size: *size },
                RunMountKind::Cache {
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly,
                    seed,
                } => {
                    let seed = seed
                        .as_ref()
                        .map(|(state, source)| (state.as_ref(), source.as_str()));
                    let (path, lock) = self.cache_dir(id, *sharing, *mode, *uid, *gid, seed)?;
                    locks.extend(lock);
                    MountSource::Bind {
                        path,
                        readonly: *readonly,
                    }
                }
                RunMountKind::Secret {
                    data,
                    mode,
                    uid,
                    gid,
                } => {
                    mkdir(&dir)?;
                    MountSource::Secret {
                        data: data.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                        stage: dir,
                    }
                }
                RunMountKind::Bind {
                    from,
                    source,
                    readonly,
                } => self.bind_source(from, source, *readonly, &dir, copy_mode)?,
            };
            specs.push(MountSpec {
                target: m.target.clone(),
                source,
            });
        }
        Ok((specs, locks))
    }

    /// A bind mount's source, prepared in `dir`.
    fn bind_source(
        &self,
        from: &BindFrom,
        source: &str,
        readonly: bool,
        dir: &Path,
        copy_mode: bool,
    ) -> Result<MountSource, ExecutorError> {
        let mkdir = |p: &Path| fs::create_dir_all(p).map_err(io("creating", p));
        let missing =
            || ExecutorError::FileAction(format!("RUN --mount: source {source:?} not found"));
        match from {
            BindFrom::Dir(root) => {
                let path = resolve_in_root(root, source).map_err(ExecutorError::FileAction)?;
                if path.symlink_metadata().is_err() {
                    return Err(missing());
                }
                if readonly {
                    return Ok(MountSource::Bind { path, readonly });
                }
                // Writable: the changes go to a throw-away copy (an
                // overlay's upper dir, or a copy in copy mode).
                if copy_mode || !path.is_dir() {
                    let copy = dir.join("copy");
                    mkdir(dir)?;
                    copy_tree(&path, &copy)?;
                    return Ok(MountSource::Bind {
                        path: copy,
                        readonly: false,
                    });
                }
                let (stage, upper, work) = (dir.join("stage"), dir.join("upper"), dir.join("work"));
                for d in [&stage, &upper, &work] {
                    mkdir(d)?;
                }
                Ok(MountSource::Layers {
                    lower_dirs: vec![path],
                    upper: Some((upper, work)),
                    stage,
                    subpath: "/".to_string(),
                    readonly: false,
                })
            }
            BindFrom::Image(state) => {
                let stage = dir.join("stage");
                mkdir(&stage)?;
                if copy_mode {
                    for layer in &state.layers {
                        self.apply(layer, &stage)?;
                    }
                    let path =
                        resolve_in_root(&stage, source).map_err(ExecutorError::FileAction)?;
                    if path.symlink_metadata().is_err() {
                        return Err(missing());
                    }
                    return Ok(MountSource::Bind { path, readonly });
                }
                let mut lower_dirs = self.lower_dirs(state)?;
                if lower_dirs.is_empty() {
                    let empty = dir.join("empty");
                    mkdir(&empty)?;
                    lower_dirs.push(empty);
                }
                let upper = if readonly {
                    None
                } else {
                    let (upper, work) = (dir.join("upper"), dir.join("work"));
                    mkdir(&upper)?;
                    mkdir(&work)?;
                    Some((upper, work))
                };
                Ok(MountSource::Layers {
                    lower_dirs,
                    upper,
                    stage,
                    subpath: source.to_string(),
                    readonly,
                })
            }
        }
    }

    /// The cache directory of `id` (made with `mode`, `uid`, `gid` when it
    /// is new), and the lock its `sharing` takes: `shared` a shared lock
    /// when free (it never waits), `locked` an exclusive one (waiting for
    /// other users), `private` an exclusive one on the first instance
    /// (`<hash>`, `<hash>-1`, ...) no one else uses.
    fn cache_dir(
        &self,
        id: &str,
        sharing: forge_ir::CacheSharing,
        mode: u32,
        uid: u32,
        gid: u32,
        seed: Option<(&ImageState, &str)>,
    ) -> Result<(PathBuf, Option<fs::File>), ExecutorError> {
        use forge_ir::CacheSharing;
        let tmp = self.store.tmp_dir();
        let base = tmp
            .parent()
            .map_or_else(|| tmp.clone(), Path::to_path_buf)
            .join("cachemounts");
        fs::create_dir_all(&base).map_err(io("creating", &base))?;
        let hash = blake3::hash(id.as_bytes()).to_hex();
        let mut n = 0usize;
        loop {
            let name = if n == 0 {
                hash.to_string()
            } else {
                format!("{hash}-{n}")
            };
            let lock_path = base.join(format!("{name}.lock"));
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(io("opening", &lock_path))?;
            let lock = match sharing {
                CacheSharing::Shared => lock.try_lock_shared().is_ok().then_some(lock),
                CacheSharing::Locked => {
                    lock.lock().map_err(io("locking", &lock_path))?;
                    Some(lock)
                }
                CacheSharing::Private => {
                    if lock.try_lock().is_err() {
                        n += 1;
                        continue;
                    }
                    Some(lock)
                }
            };
            let dir = base.join(&name);
            if dir.symlink_metadata().is_err() {
                match seed {
                    Some((image, source)) => self.seed_cache_dir(&base, &dir, image, source)?,
                    None => make_cache_dir(&base, &dir, mode, uid, gid)?,
                }
            }
            return Ok((dir, lock));
        }
    }

    /// A new cache directory `dir` made as a copy of `source` in `image`
    /// (its layers applied beside it, the path taken out by a rename; a
    /// missing or non-directory source gives an empty 0755 directory).
    fn seed_cache_dir(
        &self,
        base: &Path,
        dir: &Path,
        image: &ImageState,
        source: &str,
    ) -> Result<(), ExecutorError> {
        let unpacked = RunDir(base.join(Store::temp_name("cache-seed")));
        fs::create_dir(&unpacked.0).map_err(io("creating", &unpacked.0))?;
        for layer in &image.layers {
            self.apply(layer, &unpacked.0)?;
        }
        let from = crate::sandbox::fileop::resolve_in_root(&unpacked.0, source)
            .map_err(ExecutorError::FileAction)?;
        if !from.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            return make_cache_dir(base, dir, 0o755, 0, 0);
        }
        // (The whole image, `source=/`, moves the tree itself; the run dir's
        // removal then finds nothing.)
        match fs::rename(&from, dir) {
            Ok(()) => Ok(()),
            // Made meanwhile by another user of the cache.
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(io("renaming", dir)(e)),
        }
    }

    /// A run directory under the store's temp dir with `subdirs` and the
    /// files bound over `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`.
    fn run_dir(&self, subdirs: &[&str]) -> Result<(RunDir, EtcFiles), ExecutorError> {
        let tmp = self.store.tmp_dir();
        let dir = RunDir(tmp.join(Store::temp_name("run")));
        let root = dir.0.clone();
        for sub in subdirs.iter().chain(&["merged", "etc"]) {
            fs::create_dir_all(root.join(sub)).map_err(io("creating", &root))?;
        }
        let etc = root.join("etc");
        let etc_files = EtcFiles {
            hosts: etc.join("hosts"),
            resolv_conf: etc.join("resolv.conf"),
            hostname: etc.join("hostname"),
        };
        let mut hosts = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            self.hostname
        );
        // `--add-host`, as BuildKit writes its extra hosts: `IP\tHOST`.
        for (host, ip) in self.extra_hosts {
            hosts.push_str(&format!("{ip}\t{host}\n"));
        }
        fs::write(&etc_files.hosts, hosts).map_err(io("writing", &etc_files.hosts))?;
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(&etc_files.resolv_conf, resolv).map_err(io("writing", &etc_files.resolv_conf))?;
        fs::write(&etc_files.hostname, format!("{}\n", self.hostname))
            .map_err(io("writing", &etc_files.hostname))?;
        Ok((dir, etc_files))
    }

    fn spec(
        &self,
        rootfs: Rootfs,
        merged_dir: PathBuf,
        step: &SandboxStep,
        etc_files: EtcFiles,
    ) -> RunSpec {
        RunSpec {
            rootfs,
            merged_dir,
            argv: step.argv.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            workdir_owner_is_user: step.workdir_owned_by_user,
            network: step.network,
            hostname: self.hostname.to_string(),
            etc_files,
        }
    }

    /// Runs the sandbox, passing its output lines to `output`.
    fn sandbox(
        &self,
        spec: &RunSpec,
        action: Option<&FileAction>,
        mounts: &[MountSpec],
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Ran, ExecutorError> {
        let (reader, writer) = std::io::pipe().map_err(|source| ExecutorError::Process {
            what: "creating the output pipe",
            source,
        })?;
        let writer2 = writer
            .try_clone()
            .map_err(|source| ExecutorError::Process {
                what: "creating the output pipe",
                source,
            })?;
        let (status, tail): (Result<ExitStatus, ExecutorError>, Vec<String>) =
            std::thread::scope(|scope| {
                let lines = scope.spawn(move || {
                    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
                    let mut reader = BufReader::new(reader);
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        match reader.read_until(b'\n', &mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                let line = String::from_utf8_lossy(&buf);
                                let line = line.trim_end_matches(['\n', '\r']);
                                output(line);
                                if tail.len() == TAIL_LINES {
                                    tail.pop_front();
                                }
                                tail.push_back(line.to_string());
                            }
                        }
                    }
                    Vec::from(tail)
                });
                let status = match action {
                    None => sandbox::run_with_mounts(
                        self.exe,
                        spec,
                        mounts,
                        Stdio::from(writer),
                        Stdio::from(writer2),
                    ),
                    Some(action) => sandbox::run_action(
                        self.exe,
                        spec,
                        action,
                        Stdio::from(writer),
                        Stdio::from(writer2),
                    ),
                };
                // The sandbox (and every process it left) holds the pipe's write end;
                // once they are gone, the reader sees EOF.
                let tail = lines.join().unwrap_or_default();
                (status, tail)
            });
        Ok(Ran {
            code: sandbox::exit_code(status?),
            tail,
        })
    }

    /// Writes a layer blob with `write` and commits it to the store.
    fn store_layer(
        &self,
        started: Instant,
        write: impl FnOnce(&mut dyn std::io::Write) -> Result<LayerInfo, ExecutorError>,
    ) -> Result<(NewLayer, LayerInfo), ExecutorError> {
        let mut writer = self.store.blob_writer().map_err(store_err)?;
        let info = write(&mut writer)?;
        let (digest, size) = writer.commit(Some(&info.digest)).map_err(store_err)?;
        let new = NewLayer {
            layer: Layer {
                blob: LayerRef {
                    media_type: info.media_type.to_string(),
                    digest,
                    size,
                },
                diff_id: info.diff_id,
            },
            entries: info.entries,
            bytes: info.uncompressed_size,
            elapsed: started.elapsed(),
        };
        Ok((new, info))
    }

    /// A COPY whose layer can be planned without the sandbox (see
    /// [`super::direct`]): the layer streamed from the sources. No snapshot
    /// is made: the next step that runs on the layer extracts it.
    fn run_direct(
        &self,
        state: &ImageState,
        step: &FileStep<'_>,
    ) -> Result<Option<Outcome>, ExecutorError> {
        if !matches!(step.from, files::FileFrom::Context { .. }) || step.unpack {
            return Ok(None);
        }
        let union = direct::Union::new(self.lower_dirs(state)?);
        let Some(entries) = direct::plan(&union, step)? else {
            return Ok(None);
        };
        let started = Instant::now();
        let (new, _) = self.store_layer(started, |out| {
            write_planned_layer(entries, self.layer, out).map_err(layer_err)
        })?;
        Ok(Some(Outcome::Done(new)))
    }

    /// With [`Runner::keep_failed`], a failed command's `outcome` names a
    /// new working container of `state` (the step's parent, committed to
    /// the store so that the container can name it) that holds `upper`,
    /// what the command changed (moved, not copied: the run directory is
    /// about to go). File actions keep nothing.
    fn keep_failure(
        &self,
        state: &ImageState,
        job: Job<'_>,
        upper: Option<&Path>,
        outcome: Outcome,
    ) -> Result<Outcome, ExecutorError> {
        if !self.keep_failed || !matches!(job, Job::Exec(_)) {
            return Ok(outcome);
        }
        let Outcome::Failed { code, tail, .. } = outcome else {
            return Ok(outcome);
        };
        let committed = state
            .clone()
            .commit(self.store, self.layer.source_date_epoch)?;
        let containers = forge_cache::container::Containers::new(self.store);
        let container = containers
            .create(
                None,
                &committed.id.short(),
                &committed.manifest,
                &committed.id,
            )
            .map_err(store_err)?;
        if let Some(upper) = upper {
            let kept = containers.upper_dir(&container);
            let moved = fs::remove_dir(&kept).and_then(|()| fs::rename(upper, &kept));
            if let Err(e) = moved {
                let _ = containers.remove(&container);
                return Err(io("keeping the failed step's changes", &kept)(e));
            }
        }
        Ok(Outcome::Failed {
            code,
            tail,
            container: Some(container.name),
        })
    }

    /// The step on an overlayfs of the layers' snapshots; the upper dir is the
    /// layer, then the layer's snapshot.
    fn run_overlay(
        &self,
        state: &ImageState,
        job: Job<'_>,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        let step = job.sandbox_step();
        let mut lower_dirs = self.lower_dirs(state)?;
        let (dir, etc_files) = self.run_dir(&["upper", "work", "empty"])?;
        let root = dir.0.clone();
        if lower_dirs.is_empty() {
            // overlayfs needs a lower dir: FROM scratch gets an empty one.
            lower_dirs.push(root.join("empty"));
        }
        let upper = root.join("upper");
        let rootfs = Rootfs::Overlay {
            lower_dirs,
            upper_dir: upper.clone(),
            work_dir: root.join("work"),
        };
        let spec = self.spec(rootfs, root.join("merged"), &step, etc_files);
        if let Some(failed) = self.run_spec(&spec, job, &root, false, output)?.failure() {
            return self.keep_failure(state, job, Some(&upper), failed);
        }
        let started = Instant::now();
        // A step that changed nothing still gets its (empty) layer, as
        // BuildKit does: the history entry of a RUN or WORKDIR is never
        // `empty_layer`.
        let (new, info) = self.store_layer(started, |out| {
            write_dir_layer(&upper, self.layer, out).map_err(layer_err)
        })?;
        // The upper dir is already in overlay form: it becomes the layer's
        // snapshot as it is, for the next step's lower dirs.
        self.store
            .snapshots()
            .adopt(&upper, &info.diff_id)
            .map_err(store_err)?;
        Ok(Outcome::Done(NewLayer {
            elapsed: started.elapsed(),
            ..new
        }))
    }

    /// The step in a copy of the image: every layer applied in order from its
    /// blob, the tree's identities recorded, the sandbox run on it, and the
    /// layer written from what changed (see [`super::copy`]). Nothing is
    /// adopted as a snapshot.
    fn run_copy(
        &self,
        state: &ImageState,
        job: Job<'_>,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        let step = job.sandbox_step();
        let (dir, etc_files) = self.run_dir(&["root"])?;
        let root = dir.0.join("root");
        for layer in &state.layers {
            self.apply(layer, &root)?;
        }
        copy::break_hardlinks(&root)?;
        let (before, latest) = copy::scan(&root)?;
        copy::wait_for_clock(&dir.0, latest)?;
        let rootfs = Rootfs::Directory { dir: root.clone() };
        let spec = self.spec(rootfs, dir.0.join("merged"), &step, etc_files);
        if let Some(failed) = self.run_spec(&spec, job, &dir.0, true, output)?.failure() {
            // The copied image's changes are not in overlay form: the
            // container starts from the parent image alone.
            return self.keep_failure(state, job, None, failed);
        }
        let started = Instant::now();
        let (after, _) = copy::scan(&root)?;
        let mut changes = copy::changes(&before, &after);
        // overlay mode drops `/etc` when it was copied up only to hold the
        // bind mount points (see `sandbox::etc_kept`); here making and
        // removing them changed its times: drop it the same way.
        let exists = |rel: &str| before.contains_key(Path::new(rel));
        // A file action mounts nothing in the root: its changes are its own.
        let is_exec = matches!(job, Job::Exec(_));
        if is_exec && !sandbox::etc_kept(&step.argv, exists) {
            let etc = Path::new("etc");
            let touched_only_etc = !changes.iter().any(|c| match c {
                Change::Upsert(p) | Change::Opaque(p) | Change::Delete(p) => {
                    p != etc && p.starts_with(etc)
                }
            });
            let unchanged = match (before.get(etc), after.get(etc)) {
                (Some(was), Some(now)) => was.same_but_times(now),
                _ => false,
            };
            if touched_only_etc && unchanged {
                changes.retain(|c| *c != Change::Upsert(etc.to_path_buf()));
            }
        }
        // Likewise the directories that only held a `RUN --mount` stub
        // (removed by the sandbox, as overlay mode drops their copy-up):
        // deepest first, kept when anything below them changed.
        let stubs =
            sandbox::mounts::target_stub_paths(step.mounts.iter().map(|m| m.target.as_str()));
        for rel in stubs {
            let rel = Path::new(&rel);
            let only_times = match (before.get(rel), after.get(rel)) {
                (Some(was), Some(now)) => was.same_but_times(now),
                _ => false,
            };
            let below = changes.iter().any(|c| match c {
                Change::Upsert(p) | Change::Opaque(p) | Change::Delete(p) => {
                    p != rel && p.starts_with(rel)
                }
            });
            if only_times && !below {
                changes.retain(|c| *c != Change::Upsert(rel.to_path_buf()));
            }
        }
        let (new, _) = self.store_layer(started, |out| {
            write_changes_layer(&root, &changes, self.layer, out).map_err(layer_err)
        })?;
        Ok(Outcome::Done(new))
    }

    /// Applies one layer of the image to `root` from its blob, checking the
    /// blob's digest and the layer's `diff_id`.
    pub(super) fn apply(&self, layer: &Layer, root: &Path) -> Result<(), ExecutorError> {
        let mut reader = self
            .store
            .open_blob(&layer.blob.digest)
            .map_err(store_err)?;
        let opts = ExtractOptions {
            limits: ApplyLimits::default(),
            whiteouts: WhiteoutMode::Apply,
            hash: true,
            ..ExtractOptions::default()
        };
        let stats = extract_layer(&mut reader, root, &opts).map_err(layer_err)?;
        // The blob's digest is checked when its reader reaches the end.
        std::io::copy(&mut reader, &mut std::io::sink())
            .map_err(|e| layer_err(forge_cache::layer::LayerError::Input(e)))?;
        match stats.diff_id {
            Some(actual) if actual == layer.diff_id => Ok(()),
            actual => Err(store_err(forge_cache::CacheError::DigestMismatch {
                digest: layer.diff_id,
                actual: actual.unwrap_or(layer.diff_id),
            })),
        }
    }
}

/// Makes a new cache mount directory `dir` in `base`: created under a
/// temporary name with `mode`, `uid` and `gid`, then renamed into place (a
/// racing creator's directory wins).
fn make_cache_dir(
    base: &Path,
    dir: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), ExecutorError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = base.join(Store::temp_name("cache"));
    fs::create_dir(&tmp).map_err(io("creating", &tmp))?;
    let made = (|| {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io("chmod", &tmp))?;
        // Rootless, only forge's own ids exist (as 0:0 in the sandbox).
        if sandbox::Privilege::current() != sandbox::Privilege::Rootless {
            nix::unistd::chown(
                &tmp,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|source| ExecutorError::Sys {
                what: format!("chown {}", tmp.display()),
                source,
            })?;
        }
        match fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(io("renaming", dir)(e)),
        }
    })();
    let _ = fs::remove_dir(&tmp);
    made
}

/// Copies `from` (a file, symlink or directory tree) to `to`, keeping
/// modes and symlinks (owners where permitted), for a writable bind mount
/// whose changes are thrown away.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ExecutorError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = from.symlink_metadata().map_err(io("reading", from))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(io("reading", from))?;
        std::os::unix::fs::symlink(target, to).map_err(io("creating", to))?;
        return Ok(());
    }
    if meta.is_dir() {
        fs::create_dir(to).map_err(io("creating", to))?;
        for entry in fs::read_dir(from).map_err(io("reading", from))? {
            let entry = entry.map_err(io("reading", from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if meta.is_file() {
        fs::copy(from, to).map_err(io("copying", from))?;
    } else {
        // Devices, FIFOs, sockets: not copied.
        return Ok(());
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io("chmod", to))?;
    let _ = nix::unistd::chown(
        to,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    );
    Ok(())
}
