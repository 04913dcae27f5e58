//! Working containers: an image plus a writable overlay upper directory,
//! kept in the store so that `forge run` can change it and `forge commit` can
//! turn its changes into a layer (buildah's working containers, daemonless).
//!
//! ```text
//!   forge/v1/containers/<64 hex id>/config.json   the record (Container)
//!   forge/v1/containers/<64 hex id>/lock          flock'ed by the one `forge run` using it
//!   forge/v1/containers/<64 hex id>/upper/        overlayfs upper dir: the changes
//!   forge/v1/containers/<64 hex id>/work/         overlayfs work dir
//! ```
//!
//! `config.json` is replaced atomically (temp file, fsync, rename). A
//! container directory without a readable `config.json` (a crash while
//! creating it) is ignored by listings. The image manifests containers use are
//! roots for [`Store::prune`](crate::store::Store::prune).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::Store;
use crate::{CacheError, Sha256Digest};

/// A working container's record (`config.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// 64 lowercase hex digits.
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// The image reference as given.
    pub image: String,
    /// The image's manifest digest.
    pub image_manifest: String,
    /// The image ID (config digest).
    pub image_id: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// The command of its last run (empty before the first).
    #[serde(default)]
    pub command: Vec<String>,
    /// `None`: created, never run; `Some(code)`: exited with `code`.
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl Container {
    /// Docker's status text: `Created` or `Exited (N)`.
    pub fn status(&self) -> String {
        match self.exit_code {
            None => "Created".to_string(),
            Some(code) => format!("Exited ({code})"),
        }
    }

    /// The first 12 hex digits of the ID.
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }

    /// The image manifest digest, parsed.
    ///
    /// # Errors
    /// A malformed record.
    pub fn manifest_digest(&self) -> Result<Sha256Digest, CacheError> {
        self.image_manifest.parse()
    }
}

/// The containers of a store.
pub struct Containers<'s> {
    store: &'s Store,
}

/// Holds a container's run lock until dropped.
#[derive(Debug)]
pub struct ContainerLock {
    _file: File,
}

fn io_err<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> CacheError + 'p {
    move |error| CacheError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

impl<'s> Containers<'s> {
    /// The containers of `store`.
    pub fn new(store: &'s Store) -> Self {
        Self { store }
    }

    fn root(&self) -> PathBuf {
        self.store.forge_dir().join("containers")
    }

    /// The container's directory.
    pub fn dir(&self, c: &Container) -> PathBuf {
        self.root().join(&c.id)
    }

    /// Its overlayfs upper directory (its changes).
    pub fn upper_dir(&self, c: &Container) -> PathBuf {
        self.dir(c).join("upper")
    }

    /// Its overlayfs work directory.
    pub fn work_dir(&self, c: &Container) -> PathBuf {
        self.dir(c).join("work")
    }

    /// Every container with a readable record, oldest first.
    ///
    /// # Errors
    /// The containers directory cannot be read.
    pub fn list(&self) -> Result<Vec<Container>, CacheError> {
        let root = self.root();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &root)(e)),
        };
        let mut out: Vec<Container> = entries
            .filter_map(|e| {
                let bytes = fs::read(e.ok()?.path().join("config.json")).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The container named `query`, or whose ID is or starts with `query`
    /// (a unique prefix).
    ///
    /// # Errors
    /// As [`Containers::list`].
    pub fn find(&self, query: &str) -> Result<Option<Container>, CacheError> {
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.name == query || c.id == query) {
            return Ok(Some(c.clone()));
        }
        if query.len() >= 3 && query.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = all.iter().filter(|c| c.id.starts_with(query));
            if let (Some(one), None) = (hits.next(), hits.next()) {
                return Ok(Some(one.clone()));
            }
        }
        Ok(None)
    }

    /// Creates a container of the image `image` (as given), whose manifest
    /// is `manifest` and ID `image_id`, named `name` or, by default,
    /// `<image base name>-working-container[-N]` as buildah names them.
    ///
    /// # Errors
    /// [`CacheError::ContainerNameInUse`] or a store failure.
    pub fn create(
        &self,
        name: Option<&str>,
        image: &str,
        manifest: &Sha256Digest,
        image_id: &Sha256Digest,
    ) -> Result<Container, CacheError> {
        // The store's lock serializes name choices between processes.
        let _lock = self.store.lock(true)?;
        let existing = self.list()?;
        let taken = |n: &str| existing.iter().any(|c| c.name == n);
        let name = match name {
            Some(n) if taken(n) => {
                return Err(CacheError::ContainerNameInUse {
                    name: n.to_string(),
                })
            }
            Some(n) => n.to_string(),
            None => {
                let base = image
                    .split(['@'])
                    .next()
                    .unwrap_or(image)
                    .rsplit('/')
                    .next()
                    .unwrap_or(image);
                let base = base.split(':').next().unwrap_or(base);
                let base = if base.is_empty() { "forge" } else { base };
                let first = format!("{base}-working-container");
                let mut n = 1;
                let mut candidate = first.clone();
                while taken(&candidate) {
                    candidate = format!("{first}-{n}");
                    n += 1;
                }
                candidate
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut hasher = Sha256::new();
        hasher.update(now.as_nanos().to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        hasher.update(name.as_bytes());
        let id: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let container = Container {
            id,
            name,
            image: image.to_string(),
            image_manifest: manifest.to_string(),
            image_id: image_id.to_string(),
            created: now.as_secs(),
            command: Vec::new(),
            exit_code: None,
        };
        // Built in tmp, then renamed into place: a crash leaves no half container.
        let tmp = self.store.tmp_dir().join(Store::temp_name("container"));
        let result = (|| {
            for sub in ["upper", "work"] {
                fs::create_dir_all(tmp.join(sub)).map_err(io_err("create", &tmp))?;
            }
            File::create(tmp.join("lock")).map_err(io_err("create", &tmp))?;
            write_synced(&tmp.join("config.json"), &container)?;
            let root = self.root();
            fs::create_dir_all(&root).map_err(io_err("create", &root))?;
            let dir = self.dir(&container);
            fs::rename(&tmp, &dir).map_err(io_err("rename into place", &dir))?;
            crate::store::sync_dir(&root)
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        Ok(container)
    }

    /// Replaces the container's record (after a run).
    ///
    /// # Errors
    /// A store failure.
    pub fn save(&self, c: &Container) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| CacheError::InvalidDocument {
            what: "container",
            name: c.id.clone(),
            reason: e.to_string(),
        })?;
        self.store
            .replace_file(&self.dir(c).join("config.json"), &bytes)
    }

    /// Takes the container's run lock without waiting.
    ///
    /// # Errors
    /// [`CacheError::ContainerBusy`] when another process holds it.
    pub fn lock(&self, c: &Container) -> Result<ContainerLock, CacheError> {
        let path = self.dir(c).join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(ContainerLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(CacheError::ContainerBusy {
                name: c.name.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
        }
    }

    /// Removes the container: its record and directories. Refused while it
    /// runs.
    ///
    /// # Errors
    /// [`CacheError::ContainerBusy`], or a store failure.
    pub fn remove(&self, c: &Container) -> Result<(), CacheError> {
        let lock = self.lock(c)?;
        // Renamed out of the containers directory first, so that a crash
        // halfway through leaves no half container.
        let dir = self.dir(c);
        let doomed = self.store.tmp_dir().join(Store::temp_name("rm-container"));
        fs::rename(&dir, &doomed).map_err(io_err("rename", &dir))?;
        drop(lock);
        crate::store::sync_dir(&self.root())?;
        make_writable(&doomed);
        fs::remove_dir_all(&doomed).map_err(io_err("remove", &doomed))
    }

    /// The image manifests containers use (roots for prune).
    pub fn roots(&self) -> Vec<Sha256Digest> {
        self.list()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.manifest_digest().ok())
            .collect()
    }
}

/// Gives the owner write and search permission on every directory under
/// `dir`, so that a tree a container made read-only can be removed.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

fn write_synced(path: &Path, c: &Container) -> Result<(), CacheError> {
    use std::io::Write;
    let bytes = serde_json::to_vec_pretty(c).map_err(|e| CacheError::InvalidDocument {
        what: "container",
        name: c.id.clone(),
        reason: e.to_string(),
    })?;
    let mut file = File::create(path).map_err(io_err("create", path))?;
    file.write_all(&bytes).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_find_lock_and_remove() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("store");
        let containers = Containers::new(&store);
        let digest = Sha256Digest::from_bytes([7; 32]);
        let a = containers
            .create(None, "docker.io/library/busybox:1", &digest, &digest)
            .expect("create");
        assert_eq!(a.name, "busybox-working-container");
        let b = containers
            .create(None, "busybox", &digest, &digest)
            .expect("create");
        assert_eq!(b.name, "busybox-working-container-1");
        assert!(matches!(
            containers.create(Some(&a.name), "busybox", &digest, &digest),
            Err(CacheError::ContainerNameInUse { .. })
        ));
        assert!(containers.upper_dir(&a).is_dir() && containers.work_dir(&a).is_dir());
        assert_eq!(containers.find(&a.name).expect("find"), Some(a.clone()));
        assert_eq!(containers.find(&b.id[..8]).expect("find"), Some(b.clone()));
        assert_eq!(containers.roots(), vec![digest, digest]);

        let held = containers.lock(&a).expect("lock");
        assert!(matches!(
            containers.lock(&a),
            Err(CacheError::ContainerBusy { .. })
        ));
        assert!(containers.remove(&a).is_err());
        drop(held);

        let mut ran = a.clone();
        ran.command = vec!["true".into()];
        ran.exit_code = Some(3);
        containers.save(&ran).expect("save");
        assert_eq!(containers.find(&a.id).expect("find"), Some(ran.clone()));
        assert_eq!(ran.status(), "Exited (3)");
        containers.remove(&ran).expect("remove");
        assert_eq!(containers.list().expect("list"), vec![b]);
    }
}
