//! Opening a context (its ignore file) and scanning it into an [`Index`].

use std::fs::Metadata;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use miette::{NamedSource, SourceSpan};
use rayon::prelude::*;

use crate::dockerignore::{parse_ignore_file, MatchInfo, PatternMatcher};
use crate::error::{ContextError, InvalidIgnorePattern, Result};
use crate::statcache::{Lookup, StatCache, StatKey};

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed while scanning).
    Symlink,
    /// A FIFO, socket or device.
    Other {
        /// The file type bits (`st_mode & S_IFMT`).
        format: u32,
        /// The device number, for devices.
        rdev: u64,
    },
}

/// One entry of the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root, `/`-separated, no leading `./`; empty for
    /// the root itself.
    pub path: String,
    /// File, directory, symlink or other.
    pub kind: EntryKind,
    /// Permission and special bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// A symlink's target, as stored.
    pub link_target: Option<String>,
    /// blake3 of a regular file's contents.
    pub digest: Option<[u8; 32]>,
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }
}

/// Counters of a scan (how much work the stat cache saved).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries in the index (the root not counted).
    pub entries: usize,
    /// Regular files among them.
    pub files: usize,
    /// Files whose contents were read and hashed.
    pub hashed: usize,
    /// Files whose digest came from the stat cache.
    pub reused: usize,
    /// Files hashed because their cache entry was racily clean.
    pub racy: usize,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
    /// Whether a usable stat cache was loaded.
    pub cache_loaded: bool,
    /// Whether the stat cache was (re)written.
    pub cache_written: bool,
    /// Why writing the stat cache failed (a scan does not fail for it).
    pub cache_error: Option<String>,
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Where the stat cache lives (read, then rewritten when it changed).
    pub stat_cache: Option<PathBuf>,
    /// Hash every file, trusting no cache entry (`--verify-context`).
    pub verify: bool,
}

/// The files of a context after `.dockerignore`.
#[derive(Debug, Clone)]
pub struct Index {
    /// The context root directory itself (its `path` is empty).
    pub root: Entry,
    /// Every entry not excluded, sorted by `path` (byte order).
    pub entries: Vec<Entry>,
    /// What the scan did.
    pub stats: ScanStats,
}

impl Index {
    /// The entry at `path` (`""` is the root).
    pub fn get(&self, path: &str) -> Option<&Entry> {
        if path.is_empty() {
            return Some(&self.root);
        }
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// The entries strictly below directory `dir` (`""`: all), in path order.
    pub fn below(&self, dir: &str) -> &[Entry] {
        if dir.is_empty() {
            return &self.entries;
        }
        let prefix = format!("{dir}/");
        let start = self
            .entries
            .partition_point(|e| e.path.as_str() < prefix.as_str());
        let len = self.entries[start..]
            .iter()
            .take_while(|e| e.path.starts_with(&prefix))
            .count();
        &self.entries[start..start + len]
    }
}

/// A build context: a directory and the ignore patterns that apply to it.
#[derive(Debug, Clone)]
pub struct Context {
    root: PathBuf,
    ignore_file: Option<PathBuf>,
    matcher: PatternMatcher,
    /// fsutil's `onlyPrefixExcludeExceptions`: no exception has wildcards, so an
    /// excluded directory is entered only when an exception names a path in it.
    only_prefix_exceptions: bool,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_utf8(path: &Path, s: &std::ffi::OsStr) -> Result<String> {
    s.to_str()
        .map(str::to_string)
        .ok_or_else(|| ContextError::NonUtf8 {
            path: path.to_path_buf(),
        })
}

impl Context {
    /// Opens the context at `root`, reading its ignore file: `<Dockerfile
    /// name>.dockerignore` beside `dockerfile` when that exists (BuildKit's rule),
    /// else `<root>/.dockerignore`. The Dockerfile and the ignore file are
    /// ordinary context files: excluded only if a pattern says so, as in BuildKit.
    pub fn open(root: &Path, dockerfile: Option<&Path>) -> Result<Context> {
        let meta = std::fs::metadata(root).map_err(ContextError::io(root))?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let mut candidates = Vec::new();
        if let Some(df) = dockerfile {
            if let Some(name) = df.file_name() {
                let mut n = name.to_os_string();
                n.push(".dockerignore");
                candidates.push(df.with_file_name(n));
            }
        }
        candidates.push(root.join(".dockerignore"));
        let mut ignore_file = None;
        let mut matcher = PatternMatcher::default();
        for path in candidates {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    matcher = Self::compile_ignore(&path, text)?;
                    ignore_file = Some(path);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {}
                Err(e) => return Err(ContextError::Io { path, source: e }),
            }
        }
        let only_prefix_exceptions = matcher.patterns().iter().all(|p| {
            !p.is_exception()
                || !p
                    .without_trailing_glob()
                    .contains(['*', '[', ']', '?', '^', '\\'])
        });
        Ok(Context {
            root: root.to_path_buf(),
            ignore_file,
            matcher,
            only_prefix_exceptions,
        })
    }

    fn compile_ignore(path: &Path, text: String) -> Result<PatternMatcher> {
        let lines = parse_ignore_file(&text);
        let patterns: Vec<&str> = lines.iter().map(|l| l.pattern.as_str()).collect();
        PatternMatcher::new(&patterns).map_err(|e| {
            let line = lines.get(e.index);
            let (start, end) = line.map(|l| l.span).unwrap_or((0, 0));
            ContextError::InvalidIgnorePattern(Box::new(InvalidIgnorePattern {
                file: path.to_path_buf(),
                line: line.map(|l| l.line).unwrap_or(0),
                pattern: text.get(start..end).unwrap_or(&e.pattern).to_string(),
                reason: e.reason,
                src: NamedSource::new(path.display().to_string(), text.clone()),
                span: SourceSpan::from((start, end - start)),
            }))
        })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore file in effect, if any.
    pub fn ignore_file(&self) -> Option<&Path> {
        self.ignore_file.as_deref()
    }

    /// The compiled ignore patterns.
    pub fn matcher(&self) -> &PatternMatcher {
        &self.matcher
    }

    /// Whether the ignore patterns exclude `path` (relative, `/`-separated).
    pub fn is_excluded(&self, path: &str) -> bool {
        self.matcher.matches_or_parent_matches(path)
    }

    /// Scans the context, reusing digests from the stat cache at `stat_cache`
    /// (and rewriting it) when given.
    pub fn scan(&self, stat_cache: Option<&Path>) -> Result<Index> {
        self.scan_with(&ScanOptions {
            stat_cache: stat_cache.map(Path::to_path_buf),
            verify: false,
        })
    }

    /// Scans the context hashing every file (`--verify-context`); the stat cache,
    /// when given, is rewritten with the fresh digests.
    pub fn scan_verify(&self, stat_cache: Option<&Path>) -> Result<Index> {
        self.scan_with(&ScanOptions {
            stat_cache: stat_cache.map(Path::to_path_buf),
            verify: true,
        })
    }

    /// Scans the context with `options`.
    pub fn scan_with(&self, options: &ScanOptions) -> Result<Index> {
        let started = now_ns();
        let mut stats = ScanStats::default();
        let cache = match &options.stat_cache {
            Some(p) => StatCache::load(p),
            None => None,
        };
        stats.cache_loaded = cache.is_some();

        let root_meta = std::fs::metadata(&self.root).map_err(ContextError::io(&self.root))?;
        let root = make_entry(String::new(), &root_meta, None);
        let mut walked = self.walk_dir(&self.root, "", &MatchInfo::default())?;
        walked.sort_unstable_by(|a, b| a.0.path.cmp(&b.0.path));

        // Digests: from the cache when trustworthy, else hashed in parallel.
        let mut todo = Vec::new();
        for (i, (entry, key)) in walked.iter_mut().enumerate() {
            let Some(key) = key else { continue };
            stats.files += 1;
            let lookup = match (&cache, options.verify) {
                (Some(c), false) => c.lookup(&entry.path, key),
                _ => Lookup::Miss,
            };
            match lookup {
                Lookup::Hit(d) => {
                    entry.digest = Some(d);
                    stats.reused += 1;
                }
                Lookup::Racy => {
                    stats.racy += 1;
                    todo.push(i);
                }
                Lookup::Miss => todo.push(i),
            }
        }
        let hashed: Vec<(usize, Hashed)> = todo
            .par_iter()
            .map(|&i| (i, hash_file(&self.root.join(&walked[i].0.path))))
            .collect();
        for (i, result) in hashed {
            let (meta, digest) = result?;
            let slot = &mut walked[i];
            let path = std::mem::take(&mut slot.0.path);
            slot.0 = make_entry(path, &meta, None);
            slot.0.digest = Some(digest);
            slot.1 = Some(StatKey::of(&meta));
            stats.hashed += 1;
            stats.bytes_hashed += meta.size();
        }
        stats.entries = walked.len();

        if let Some(path) = &options.stat_cache {
            let unchanged =
                stats.hashed == 0 && cache.as_ref().is_some_and(|c| c.len() == stats.files);
            if !unchanged {
                let files = walked
                    .iter()
                    .filter_map(|(e, k)| Some((e.path.as_str(), (*k)?, e.digest?)));
                let files: Vec<_> = files.collect();
                match StatCache::write(path, started, files.into_iter()) {
                    Ok(()) => stats.cache_written = true,
                    Err(e) => stats.cache_error = Some(format!("{}: {e}", path.display())),
                }
            }
        }
        Ok(Index {
            root,
            entries: walked.into_iter().map(|(e, _)| e).collect(),
            stats,
        })
    }
}

fn make_entry(path: String, meta: &Metadata, link_target: Option<String>) -> Entry {
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other {
            format: meta.mode() & 0o170000,
            rdev: meta.rdev(),
        }
    };
    Entry {
        path,
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        link_target,
        digest: None,
    }
}

/// Opens without following a symlink (nor blocking on a FIFO swapped in), checks
/// it is still a regular file and hashes it. Returns the `fstat` data taken
/// before reading.
fn hash_file(path: &Path) -> Result<(Metadata, [u8; 32])> {
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::libc::ELOOP => ContextError::Changed {
                path: path.to_path_buf(),
            },
            _ => ContextError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    let meta = file.metadata().map_err(ContextError::io(path))?;
    if !meta.is_file() {
        return Err(ContextError::Changed {
            path: path.to_path_buf(),
        });
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(ContextError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok((meta, *hasher.finalize().as_bytes()))
}

/// One walked entry and, for a regular file, its stat key.
type Walked = (Entry, Option<StatKey>);

/// A directory's child while walking: the entry, whether the patterns exclude
/// it, and for a directory its path and match state.
type Child = (Walked, bool, Option<(PathBuf, MatchInfo)>);

/// A file's `fstat` data and content digest.
type Hashed = Result<(Metadata, [u8; 32])>;

impl Context {
    /// Walks one directory: its entries in name order, subdirectories in
    /// parallel. An excluded directory is entered only when an exception may
    /// re-include something below it (fsutil's rule), and listed only if
    /// something below it is.
    fn walk_dir(&self, abs: &Path, rel: &str, info: &MatchInfo) -> Result<Vec<Walked>> {
        let mut items = Vec::new();
        for item in std::fs::read_dir(abs).map_err(ContextError::io(abs))? {
            items.push(item.map_err(ContextError::io(abs))?);
        }
        items.sort_by_key(|a| a.file_name());
        let filter = !self.matcher.is_empty();
        // (entry, excluded, subdirectory to walk with its match info)
        let mut children: Vec<Child> = Vec::new();
        for item in items {
            let name_os = item.file_name();
            let abs_child = abs.join(&name_os);
            let name = to_utf8(&abs_child, &name_os)?;
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = item.metadata().map_err(ContextError::io(&abs_child))?;
            let (excluded, child_info) = if filter {
                self.matcher.matches_using_parent_results(&path, info)
            } else {
                (false, MatchInfo::default())
            };
            let is_dir = meta.is_dir();
            if excluded && (!is_dir || !self.may_reinclude_below(&path)) {
                continue;
            }
            let link_target = if meta.file_type().is_symlink() {
                let t = std::fs::read_link(&abs_child).map_err(ContextError::io(&abs_child))?;
                Some(to_utf8(&abs_child, t.as_os_str())?)
            } else {
                None
            };
            let key = meta.is_file().then(|| StatKey::of(&meta));
            let sub = is_dir.then_some((abs_child, child_info));
            children.push(((make_entry(path, &meta, link_target), key), excluded, sub));
        }
        let below: Vec<Vec<Walked>> = children
            .par_iter()
            .map(|(entry, _, sub)| match sub {
                Some((abs_child, child_info)) => {
                    self.walk_dir(abs_child, &entry.0.path, child_info)
                }
                None => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(children.len());
        for ((entry, excluded, _), below) in children.into_iter().zip(below) {
            if !excluded || !below.is_empty() {
                out.push(entry);
            }
            out.extend(below);
        }
        Ok(out)
    }

    /// fsutil's rule for entering an excluded directory.
    fn may_reinclude_below(&self, dir: &str) -> bool {
        let m = &self.matcher;
        if !m.has_exclusions() {
            return false;
        }
        if !self.only_prefix_exceptions {
            return true;
        }
        let dir_slash = format!("{dir}/");
        m.patterns().iter().any(|p| {
            p.is_exception() && format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash)
        })
    }
}
