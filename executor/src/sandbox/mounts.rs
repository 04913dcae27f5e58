//! `RUN --mount`s, the sandbox's side: what the build driver resolved each
//! mount to ([`MountSpec`]), how the sandbox mounts them in the step's root
//! (after the `/etc` binds, before `pivot_root`), and the mount-point stubs
//! it had to create there, which the parent removes afterwards so that they
//! never reach the layer (BuildKit's mount stub cleaner).
//!
//! Every target is resolved inside the root as a chroot would (see
//! [`resolve_in_root`]): an absolute symlink on the way cannot point the
//! mount at the host.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use serde::{Deserialize, Serialize};

use super::fileop::resolve_in_root;
use super::rootfs::mount_layers;
use super::syscall::Syscall;
use super::Privilege;
use crate::ExecutorError;

/// A secret's bytes. Its `Debug` shows the length only, so that no log,
/// panic or error message can print it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretData(pub Vec<u8>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretData(<{} bytes>)", self.0.len())
    }
}

/// Where `forge build --secret` reads a secret (docker buildx's syntax, see
/// [`parse_secret`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file's content.
    File(PathBuf),
    /// An environment variable of forge's.
    Env(String),
}

impl SecretSource {
    /// The secret's value, `None` when the environment variable is unset.
    /// A file that cannot be read is an error.
    pub fn read(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            SecretSource::File(path) => std::fs::read(path)
                .map(Some)
                .map_err(|e| format!("reading {}: {e}", path.display())),
            SecretSource::Env(name) => Ok(std::env::var_os(name).map(|v| {
                use std::os::unix::ffi::OsStringExt;
                v.into_vec()
            })),
        }
    }
}

/// Parses a `--secret` value as docker buildx does: comma-separated
/// `key=value` fields `id`, `type` (`file` or `env`), `src`/`source` and
/// `env`. `type=env` takes the variable's name from `src` when `env` is not
/// given. With neither a source nor an `env`, the secret is the environment
/// variable named like the id if it is set, else the file named like it
/// (buildx's rule). Returns `(id, source)`.
pub fn parse_secret(text: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut kind = None;
    let mut src = None;
    let mut env = None;
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("invalid field '{field}' must be a key=value pair"));
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => match value {
                "file" | "env" => kind = Some(value.to_string()),
                _ => return Err(format!("unsupported secret type {value:?}")),
            },
            "id" => id = Some(value.to_string()),
            "src" | "source" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            _ => return Err(format!("unexpected key '{key}' in '{field}'")),
        }
    }
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let id = match id {
        Some(id) if !id.is_empty() => id,
        _ => match src.as_deref().or(env.as_deref()) {
            Some(s) => Path::new(s)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| s.to_string()),
            None => return Err(format!("secret {text:?} has no id")),
        },
    };
    let source = match (src, env) {
        (_, Some(env)) => SecretSource::Env(env),
        (Some(src), None) => SecretSource::File(PathBuf::from(src)),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => SecretSource::File(PathBuf::from(&id)),
    };
    Ok((id, source))
}

/// One mount of a RUN, as the sandbox performs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Where, in the container (absolute).
    pub target: String,
    /// What.
    pub source: MountSource,
}

/// What a [`MountSpec`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountSource {
    /// An empty tmpfs (`nosuid`, `strictatime`, optionally `size=`).
    Tmpfs {
        /// `size=` in bytes.
        size: Option<u64>,
    },
    /// A host directory or file (a cache directory, the context, an image
    /// applied to a directory), bound; read-only unless `readonly` is false.
    Bind {
        /// The host path (absolute).
        path: PathBuf,
        /// Remount read-only.
        readonly: bool,
    },
    /// An image's layer snapshots (bottom first, at least one): mounted on
    /// `stage` (a bind of one, a read-only overlayfs of several, or with
    /// `upper` = (upper dir, work dir) a writable overlayfs whose changes
    /// stay in the run directory), then its `subpath` bound on the target.
    Layers {
        /// Snapshot directories, bottom first.
        lower_dirs: Vec<PathBuf>,
        /// Upper and work dirs for a writable mount.
        upper: Option<(PathBuf, PathBuf)>,
        /// An empty host directory to mount the image on.
        stage: PathBuf,
        /// The path inside the image that is mounted (`/` for all of it).
        subpath: String,
        /// Remount the target read-only.
        readonly: bool,
    },
    /// A secret file: the sandbox mounts a tmpfs on `stage`, writes the
    /// secret there (`mode`, `uid`, `gid`) and binds it read-only on the
    /// target. It never touches a disk.
    Secret {
        /// The secret.
        data: SecretData,
        /// Permission bits.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
        /// An empty host directory for the tmpfs.
        stage: PathBuf,
    },
}

/// The file a [`MountSource::Secret`] is written to in its stage.
const SECRET_FILE: &str = "secret";

fn sys_err(what: String) -> impl FnOnce(nix::Error) -> ExecutorError {
    move |source| ExecutorError::Sys { what, source }
}

/// Mounts a tmpfs on each secret's stage and writes the secret in it. Runs
/// in the sandbox before [`super::setup_rootfs_with_mounts`] (`/` is made `rprivate`
/// first, so nothing propagates to the host).
pub fn stage_secrets(mounts: &[MountSpec]) -> Result<(), ExecutorError> {
    use std::os::unix::fs::PermissionsExt;
    if !mounts
        .iter()
        .any(|m| matches!(m.source, MountSource::Secret { .. }))
    {
        return Ok(());
    }
    let none: Option<&Path> = None;
    nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys_err("making / private".into()))?;
    for m in mounts {
        let MountSource::Secret {
            data,
            mode,
            uid,
            gid,
            stage,
        } = &m.source
        else {
            continue;
        };
        let size = format!("mode=0755,size={}", data.0.len().max(4096));
        nix::mount::mount(
            Some("tmpfs"),
            stage,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(size.as_str()),
        )
        .map_err(sys_err(format!("mounting a tmpfs on {}", stage.display())))?;
        let file = stage.join(SECRET_FILE);
        let io = |source| ExecutorError::Io {
            what: "writing a secret to",
            path: file.clone(),
            source,
        };
        std::fs::write(&file, &data.0).map_err(io)?;
        nix::unistd::chown(
            &file,
            Some(nix::unistd::Uid::from_raw(*uid)),
            Some(nix::unistd::Gid::from_raw(*gid)),
        )
        .map_err(sys_err(format!(
            "giving the secret at {} the owner {uid}:{gid}",
            m.target
        )))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode)).map_err(io)?;
    }
    Ok(())
}

/// The mount flags a read-only remount of `path` must keep: those a user
/// namespace may not clear (`nosuid`, `nodev`, `noexec`, the atime flags).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            out |= flag;
        }
    }
    out
}

/// Binds `source` on `target` (recursively), read-only if asked.
fn bind(
    sys: &dyn Syscall,
    source: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), ExecutorError> {
    sys.mount(
        Some(source),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if readonly {
        sys.mount(
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(target),
            None,
        )?;
    }
    Ok(())
}

/// Creates the mount point `target` for `source`: a directory for a
/// directory, else an empty file (its parents made).
fn mount_point(sys: &dyn Syscall, source: &Path, target: &Path) -> Result<(), ExecutorError> {
    if sys.is_dir(source) {
        sys.mkdir_all(target)
    } else {
        if let Some(parent) = target.parent() {
            sys.mkdir_all(parent)?;
        }
        sys.create_file(target)
    }
}

/// The depth of an absolute path (for mounting parents before children).
fn depth(target: &str) -> usize {
    target.split('/').filter(|c| !c.is_empty()).count()
}

/// Mounts `mounts` in the step's root `root` (the merged dir),
/// shallowest target first (a mount inside another lands in it).
pub fn mount_all(
    sys: &dyn Syscall,
    root: &Path,
    mounts: &[MountSpec],
    privilege: Privilege,
) -> Result<(), ExecutorError> {
    let mut order: Vec<&MountSpec> = mounts.iter().collect();
    order.sort_by_key(|m| depth(&m.target));
    for m in order {
        if depth(&m.target) == 0 {
            return Err(ExecutorError::InvalidSpec(format!(
                "a RUN mount cannot be mounted on {:?}",
                m.target
            )));
        }
        let target = resolve_in_root(root, &m.target).map_err(ExecutorError::InvalidSpec)?;
        match &m.source {
            MountSource::Tmpfs { size } => {
                sys.mkdir_all(&target)?;
                let data = size.map(|s| format!("size={s}"));
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &target,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
                    data.as_deref(),
                )?;
            }
            MountSource::Bind { path, readonly } => {
                mount_point(sys, path, &target)?;
                bind(sys, path, &target, *readonly)?;
            }
            MountSource::Secret { stage, .. } => {
                let file = stage.join(SECRET_FILE);
                if let Some(parent) = target.parent() {
                    sys.mkdir_all(parent)?;
                }
                sys.create_file(&target)?;
                bind(sys, &file, &target, true)?;
            }
            MountSource::Layers {
                lower_dirs,
                upper,
                stage,
                subpath,
                readonly,
            } => {
                if lower_dirs.is_empty() {
                    return Err(ExecutorError::InvalidSpec(
                        "an image mount needs a lower dir".into(),
                    ));
                }
                mount_layers(
                    sys,
                    lower_dirs,
                    upper.as_ref(),
                    stage,
                    privilege,
                    std::convert::identity,
                )?;
                let source = resolve_in_root(stage, subpath).map_err(ExecutorError::InvalidSpec)?;
                mount_point(sys, &source, &target)?;
                bind(sys, &source, &target, *readonly)?;
            }
        }
    }
    Ok(())
}

/// The paths (relative to the root, lexical) `mounts` may have created as
/// stubs: every target and each of its parents, deepest first.
pub fn stub_paths(mounts: &[MountSpec]) -> Vec<String> {
    target_stub_paths(mounts.iter().map(|m| m.target.as_str()))
}

/// [`stub_paths`] of mount targets.
pub fn target_stub_paths<'t>(targets: impl IntoIterator<Item = &'t str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for target in targets {
        // `..` applied first: only the target's real parents are stubs.
        let mut comps: Vec<&str> = Vec::new();
        for comp in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                comps.pop();
            } else {
                comps.push(comp);
            }
        }
        for n in 1..=comps.len() {
            let path = comps[..n].join("/");
            if !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(depth(p)));
    out
}

/// Whether `path` is what a mount stub leaves: an empty directory or an
/// empty regular file.
pub(crate) fn is_empty_stub(path: &Path) -> bool {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none()),
        Ok(m) => m.is_file() && m.len() == 0,
        Err(_) => false,
    }
}

/// Removes an empty stub (a directory or a file).
pub(crate) fn remove_stub(path: &Path) -> Result<(), ExecutorError> {
    let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|source| ExecutorError::Io {
        what: "removing mount point",
        path: path.to_path_buf(),
        source,
    })
}
