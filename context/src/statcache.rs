//! The stat cache: content digests of context files, reused while their `lstat`
//! data is unchanged (git's index idea).
//!
//! # File format (version 1, little-endian)
//!
//! ```text
//! magic            16 bytes  "forge-statcache\0"
//! version          u32       1
//! scan_started_ns  i64       wall-clock time when the scan that wrote the file began
//! count            u64       number of entries
//! count × entry:
//!   path_len       u32       then the path's UTF-8 bytes (relative, `/`-separated)
//!   dev, ino, size u64 ×3
//!   mtime_ns       i64
//!   ctime_ns       i64
//!   mode           u32       the full st_mode (type and permission bits)
//!   digest         32 bytes  blake3 of the file's contents
//! checksum         32 bytes  blake3 of every byte before it
//! ```
//!
//! A file that is missing, truncated, of another version or whose checksum does
//! not match is ignored (every file is hashed again and the cache rewritten). It
//! is written to a temporary file beside it, fsynced and renamed into place.
//!
//! # Racily clean entries
//!
//! A file changed in the same timestamp tick as it was hashed could keep its
//! size and mtime (and the kernel's ctime) while its bytes differ. Like git,
//! which re-checks entries whose mtime is not older than its index file, forge
//! treats an entry as *racy* when its mtime or ctime is less than
//! [`RACY_WINDOW_NS`] before the start of the scan that hashed it, and hashes it
//! again. Since a scan starts before the cache is written, this is stricter than
//! git's rule (the index file's own mtime). A racy entry, once re-hashed by a
//! later scan, becomes clean.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 16] = b"forge-statcache\0";
const VERSION: u32 = 1;

/// How close to the start of a scan a file's mtime or ctime may be before its
/// cached digest is distrusted (1 s: covers coarse filesystem timestamps and
/// small clock differences).
pub const RACY_WINDOW_NS: i64 = 1_000_000_000;

/// What identifies a file's state without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
}

impl StatKey {
    pub(crate) fn of(meta: &std::fs::Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            mode: meta.mode(),
        }
    }
}

/// The outcome of looking a file up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Unchanged and not racy: the digest may be reused.
    Hit([u8; 32]),
    /// Unchanged but racily clean: hash again.
    Racy,
    /// Not in the cache, or changed.
    Miss,
}

/// A loaded stat cache.
#[derive(Debug, Default)]
pub(crate) struct StatCache {
    scan_started_ns: i64,
    entries: HashMap<String, (StatKey, [u8; 32])>,
}

impl StatCache {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn lookup(&self, path: &str, key: &StatKey) -> Lookup {
        match self.entries.get(path) {
            Some((k, digest)) if k == key => {
                let limit = self.scan_started_ns.saturating_sub(RACY_WINDOW_NS);
                if k.mtime_ns >= limit || k.ctime_ns >= limit {
                    Lookup::Racy
                } else {
                    Lookup::Hit(*digest)
                }
            }
            _ => Lookup::Miss,
        }
    }

    /// Reads a cache file; `None` when it is absent or unusable.
    pub(crate) fn load(path: &Path) -> Option<StatCache> {
        let bytes = std::fs::read(path).ok()?;
        Self::decode(&bytes)
    }

    fn decode(bytes: &[u8]) -> Option<StatCache> {
        let body_len = bytes.len().checked_sub(32)?;
        let (body, sum) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != sum {
            return None;
        }
        let mut r = Reader { buf: body };
        if r.take(16)? != MAGIC || r.u32()? != VERSION {
            return None;
        }
        let scan_started_ns = r.i64()?;
        let count = r.u64()?;
        let mut entries = HashMap::with_capacity(usize::try_from(count).ok()?.min(1 << 24));
        for _ in 0..count {
            let len = usize::try_from(r.u32()?).ok()?;
            let path = std::str::from_utf8(r.take(len)?).ok()?.to_string();
            let key = StatKey {
                dev: r.u64()?,
                ino: r.u64()?,
                size: r.u64()?,
                mtime_ns: r.i64()?,
                ctime_ns: r.i64()?,
                mode: r.u32()?,
            };
            let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
            entries.insert(path, (key, digest));
        }
        if !r.buf.is_empty() {
            return None;
        }
        Some(StatCache {
            scan_started_ns,
            entries,
        })
    }

    /// Writes a cache file atomically.
    pub(crate) fn write<'a>(
        path: &Path,
        scan_started_ns: i64,
        entries: impl ExactSizeIterator<Item = (&'a str, StatKey, [u8; 32])>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(64 + entries.len() * 120);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&scan_started_ns.to_le_bytes());
        buf.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (p, k, digest) in entries {
            let len = u32::try_from(p.len())
                .map_err(|_| std::io::Error::other("path too long for the stat cache"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(p.as_bytes());
            for v in [k.dev, k.ino, k.size] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            buf.extend_from_slice(&k.mtime_ns.to_le_bytes());
            buf.extend_from_slice(&k.ctime_ns.to_le_bytes());
            buf.extend_from_slice(&k.mode.to_le_bytes());
            buf.extend_from_slice(&digest);
        }
        let sum = *blake3::hash(&buf).as_bytes();
        buf.extend_from_slice(&sum);

        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "statcache".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{name}.tmp.{}.{nanos}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mtime_ns: i64) -> StatKey {
        StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns,
            ctime_ns: mtime_ns,
            mode: 0o100644,
        }
    }

    #[test]
    fn round_trip_and_racy_rule() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/cache");
        let started = 100 * RACY_WINDOW_NS;
        let old = key(started - 2 * RACY_WINDOW_NS);
        let racy = key(started - RACY_WINDOW_NS / 2);
        StatCache::write(
            &path,
            started,
            [("old", old, [1; 32]), ("racy", racy, [2; 32])].into_iter(),
        )
        .expect("write");
        let cache = StatCache::load(&path).expect("load");
        assert_eq!(cache.lookup("old", &old), Lookup::Hit([1; 32]));
        // Same size, mtime, ctime, inode: but too close to the scan to trust.
        assert_eq!(cache.lookup("racy", &racy), Lookup::Racy);
        assert_eq!(cache.lookup("old", &key(5)), Lookup::Miss);
        assert_eq!(cache.lookup("absent", &old), Lookup::Miss);
    }

    #[test]
    fn damaged_files_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache");
        StatCache::write(&path, 0, [("a", key(0), [1; 32])].into_iter()).expect("write");
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[30] ^= 1;
        assert!(StatCache::decode(&bytes).is_none());
        assert!(StatCache::decode(&bytes[..10]).is_none());
        assert!(StatCache::decode(b"").is_none());
    }
}
