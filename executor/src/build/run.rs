//! Running one file-system step (RUN, or WORKDIR's directory creation) in the
//! sandbox, and turning its overlay upper directory into a layer.

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use forge_cache::image::LayerRef;
use forge_cache::layer::{write_dir_layer, LayerOptions};
use forge_cache::store::Store;

use super::state::{ImageState, Layer};
use crate::sandbox::{self, EtcFiles, Network, RunSpec};
use crate::ExecutorError;

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

impl Runner<'_> {
    /// The overlay lower dirs of `state` (snapshot links, bottom first),
    /// extracting any layer not extracted yet.
    fn lower_dirs(&self, state: &ImageState) -> Result<Vec<PathBuf>, ExecutorError> {
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
                    .map_err(|e| ExecutorError::Store(Box::new(e)))?;
                lowers.push(link);
            }
        }
        lowers.reverse();
        Ok(lowers)
    }

    /// Runs `step` on top of `state`; `output` gets each line the command prints
    /// (stdout and stderr interleaved), from another thread.
    pub fn run(
        &self,
        state: &ImageState,
        step: &SandboxStep,
        output: &(dyn Fn(&str) + Sync),
    ) -> Result<Outcome, ExecutorError> {
        let mut lower_dirs = self.lower_dirs(state)?;
        let tmp = self.store.tmp_dir();
        let dir = RunDir(tmp.join(Store::temp_name("run")));
        let root = dir.0.clone();
        for sub in ["upper", "work", "merged", "etc", "empty"] {
            fs::create_dir_all(root.join(sub)).map_err(io("creating", &root))?;
        }
        if lower_dirs.is_empty() {
            // overlayfs needs a lower dir: FROM scratch gets an empty one.
            lower_dirs.push(root.join("empty"));
        }
        let etc = root.join("etc");
        let etc_files = EtcFiles {
            hosts: etc.join("hosts"),
            resolv_conf: etc.join("resolv.conf"),
            hostname: etc.join("hostname"),
        };
        fs::write(
            &etc_files.hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                self.hostname
            ),
        )
        .map_err(io("writing", &etc_files.hosts))?;
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(&etc_files.resolv_conf, resolv).map_err(io("writing", &etc_files.resolv_conf))?;
        fs::write(&etc_files.hostname, format!("{}\n", self.hostname))
            .map_err(io("writing", &etc_files.hostname))?;

        let spec = RunSpec {
            lower_dirs,
            upper_dir: root.join("upper"),
            work_dir: root.join("work"),
            merged_dir: root.join("merged"),
            argv: step.argv.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            workdir_owner_is_user: step.workdir_owned_by_user,
            network: step.network,
            hostname: self.hostname.to_string(),
            etc_files,
        };

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
        let (status, tail) = std::thread::scope(|scope| {
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
            let status = sandbox::run(self.exe, &spec, Stdio::from(writer), Stdio::from(writer2));
            // The sandbox (and every process it left) holds the pipe's write end;
            // once they are gone, the reader sees EOF.
            let tail = lines.join().unwrap_or_default();
            (status, tail)
        });
        let status = status?;
        let code = sandbox::exit_code(status);
        if code != 0 {
            return Ok(Outcome::Failed { code, tail });
        }
        let started = Instant::now();
        let upper = root.join("upper");
        // A step that changed nothing still gets its (empty) layer, as
        // BuildKit does: the history entry of a RUN or WORKDIR is never
        // `empty_layer`.
        let mut writer = self
            .store
            .blob_writer()
            .map_err(|e| ExecutorError::Store(Box::new(e)))?;
        let info = write_dir_layer(&upper, self.layer, &mut writer)
            .map_err(|e| ExecutorError::Store(Box::new(e.into())))?;
        let (digest, size) = writer
            .commit(Some(&info.digest))
            .map_err(|e| ExecutorError::Store(Box::new(e)))?;
        // The upper dir is already in overlay form: it becomes the layer's
        // snapshot as it is, for the next step's lower dirs.
        self.store
            .snapshots()
            .adopt(&upper, &info.diff_id)
            .map_err(|e| ExecutorError::Store(Box::new(e)))?;
        Ok(Outcome::Done(NewLayer {
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
        }))
    }
}
