//! Process identity, owned temp files, and leases.
//!
//! A process is identified by its pid *and* its start time (field 22 of
//! `/proc/PID/stat`, in clock ticks since boot), so a pid reused by a later
//! process does not count as the original owner. Temp files and lease files
//! carry their owner in their name, `<kind>-<pid>-<start>-<seq>.tmp` and
//! `<pid>-<start>-<seq>.json`; the owner being gone is what makes them stale.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{io_err, sync_dir, Store};
use crate::{CacheError, Sha256Digest};

/// Temp files whose name does not say who owns them are removed once they are
/// this old.
pub(crate) const STALE_TEMP_AGE: Duration = Duration::from_secs(60 * 60);

/// A running process: pid and start time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    pub(crate) start: u64,
}

impl Owner {
    /// This process.
    pub(crate) fn me() -> Owner {
        static ME: OnceLock<Owner> = OnceLock::new();
        *ME.get_or_init(|| {
            let pid = std::process::id();
            Owner {
                pid,
                start: process_start_time(pid).unwrap_or(0),
            }
        })
    }

    /// Whether this process still runs. Without `/proc` (not Linux) every owner
    /// counts as alive, so nothing is removed on a guess.
    pub(crate) fn alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        process_start_time(self.pid) == Some(self.start)
    }
}

/// The start time of a process in clock ticks since boot, from `/proc/PID/stat`.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything,
    // so count fields from the last `)`: field 3 is the first after it.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn next_seq() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A fresh temp file name owned by this process.
pub(crate) fn temp_name(kind: &str) -> String {
    let me = Owner::me();
    format!("{kind}-{}-{}-{}.tmp", me.pid, me.start, next_seq())
}

/// The owner encoded in a temp or lease file name, if it has one.
pub(crate) fn owner_of(name: &str) -> Option<Owner> {
    let stem = name
        .strip_suffix(".tmp")
        .or_else(|| name.strip_suffix(".json"))?;
    let mut parts = stem.rsplitn(4, '-');
    let _seq: u64 = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some(Owner { pid, start })
}

/// Whether a file in `forge/v1/tmp` (or a stray file elsewhere) is stale: its
/// owner is gone, or it names no owner and is older than [`STALE_TEMP_AGE`].
pub(crate) fn is_stale(path: &Path, name: &str) -> bool {
    match owner_of(name) {
        Some(owner) => !owner.alive(),
        None => older_than(path, STALE_TEMP_AGE),
    }
}

/// Whether a file was last modified more than `age` ago.
pub(crate) fn older_than(path: &Path, age: Duration) -> bool {
    let Ok(modified) = fs::symlink_metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|d| d >= age)
}

/// Removes stale files from a directory; returns what was removed and its size.
pub(crate) fn remove_stale(dir: &Path) -> Result<(Vec<PathBuf>, u64), CacheError> {
    let mut removed = Vec::new();
    let mut bytes = 0;
    for (path, name) in list_dir(dir)? {
        if is_stale(&path, &name) {
            let meta = fs::symlink_metadata(&path);
            let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            // Directories are the work dirs of RUN steps (`run-<owner>...`)
            // whose build was killed.
            let gone = if meta.is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(&path).is_ok()
            } else {
                fs::remove_file(&path).is_ok()
            };
            if gone {
                bytes += size;
                removed.push(path);
            }
        }
    }
    Ok((removed, bytes))
}

/// The entries of a directory as (path, name), sorted; names that are not
/// UTF-8 are skipped.
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, CacheError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((entry.path(), name));
        }
    }
    out.sort();
    Ok(out)
}

/// What a lease file holds.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct LeaseFile {
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
    pub(crate) digests: Vec<String>,
}

impl LeaseFile {
    pub(crate) fn owner(&self) -> Owner {
        Owner {
            pid: self.pid,
            start: self.start_time,
        }
    }
}

/// Protection of blobs from [`Store::prune`] while this process uses them (an
/// in-flight build or pull). Held as a file under `forge/v1/leases`; removed when
/// dropped, and treated as expired once the process is gone, so a killed process
/// leaks nothing.
///
/// A lease protects blobs that exist when it is written: take the lease, then
/// check [`Store::has_blob`] for what it names. Digests of manifests protect
/// everything the manifest references.
#[derive(Debug)]
pub struct Lease {
    path: PathBuf,
    tmp_dir: PathBuf,
    lock_path: PathBuf,
    digests: Vec<Sha256Digest>,
}

impl Lease {
    pub(crate) fn create(store: &Store, digests: &[Sha256Digest]) -> Result<Lease, CacheError> {
        let me = Owner::me();
        let name = format!("{}-{}-{}.json", me.pid, me.start, next_seq());
        let lease = Lease {
            path: store.leases_dir().join(name),
            tmp_dir: store.tmp_dir(),
            lock_path: store.lock_path(),
            digests: digests.to_vec(),
        };
        lease.write()?;
        Ok(lease)
    }

    /// Adds digests to the lease (rewrites its file atomically).
    pub fn protect(&mut self, digests: &[Sha256Digest]) -> Result<(), CacheError> {
        for d in digests {
            if !self.digests.contains(d) {
                self.digests.push(*d);
            }
        }
        self.write()
    }

    /// The digests this lease protects.
    pub fn digests(&self) -> &[Sha256Digest] {
        &self.digests
    }

    /// The lease file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the lease file by temp + rename, under the shared store lock so a
    /// running prune (which holds it exclusively) either sees it or finishes
    /// first.
    fn write(&self) -> Result<(), CacheError> {
        let me = Owner::me();
        let body = LeaseFile {
            pid: me.pid,
            start_time: me.start,
            digests: self.digests.iter().map(|d| d.to_string()).collect(),
        };
        let json = serde_json::to_vec(&body).map_err(|e| CacheError::InvalidDocument {
            what: "lease",
            name: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        let _lock = super::lock_file(&self.lock_path, false)?;
        let tmp = self.tmp_dir.join(temp_name("lease"));
        fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename into place", &self.path)(e)
        })?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
