//! COPY/ADD source selection against an [`Index`], and the selection's digest.

use std::collections::{HashMap, HashSet};

use forge_graph::{EntryMeta, SourceDigest, SourceHasher};

use crate::dockerignore::{MatchInfo, PatternMatcher};
use crate::error::{ContextError, Result};
use crate::gomatch::{contains_wildcards, go_match};
use crate::scan::{Entry, EntryKind, Index};

/// Symlinks followed while resolving one source before giving up (Linux's limit).
const MAX_LINK_HOPS: usize = 40;

/// One source root of a selection: a path a COPY/ADD source named or a wildcard
/// matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedRoot {
    /// The index of the source (in `select`'s `sources`) that produced it.
    pub source_index: usize,
    /// The matched path, relative to the context (`""`: the context root). Its
    /// base name is what a file source is called at the destination.
    pub path: String,
    /// `path` with symlinks resolved inside the context (COPY follows a source
    /// that is a symlink, as BuildKit does); the content comes from here.
    pub resolved: String,
    /// Whether it is a directory (whose *contents* are copied).
    pub is_dir: bool,
}

/// One entry to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedEntry {
    /// Index into [`Selection::roots`].
    pub root: usize,
    /// The path relative to the root's resolved path (`""`: the root itself).
    pub rel: String,
    /// The context entry.
    pub entry: Entry,
}

/// What a COPY/ADD reads from the context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The source roots, in source order (wildcard matches in walk order).
    pub roots: Vec<SelectedRoot>,
    /// Every entry under the roots after `--exclude`, root by root, in path order.
    pub entries: Vec<SelectedEntry>,
}

/// Splits a source into cleaned components; `..` above the root is an error.
fn components(source: &str) -> Result<Vec<&str>> {
    let mut out: Vec<&str> = Vec::new();
    for c in source.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ContextError::SourceOutsideContext {
                        source_path: source.to_string(),
                    });
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Index {
    /// Resolves `path` inside the context as a chroot would: symlinks in the
    /// path (and the last component when `follow_last`) are followed, absolute
    /// targets from the context root, `..` never above the root.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<String> {
        let mut queue: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut stack: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            stack.push(c);
            let is_last = queue.iter().all(|c| c.is_empty() || c == ".");
            if is_last && !follow_last {
                continue;
            }
            let here = stack.join("/");
            let Some(target) = self
                .get(&here)
                .filter(|e| e.kind == EntryKind::Symlink)
                .and_then(|e| e.link_target.clone())
            else {
                continue;
            };
            hops += 1;
            if hops > MAX_LINK_HOPS {
                return Err(ContextError::InvalidSource {
                    source_path: path.to_string(),
                    reason: "too many levels of symbolic links".into(),
                });
            }
            stack.pop();
            if target.starts_with('/') {
                stack.clear();
            }
            queue.extend(target.split('/').rev().map(str::to_string));
        }
        Ok(stack.join("/"))
    }

    /// Resolves COPY/ADD `sources` against the context as BuildKit does, minus
    /// the `--exclude` patterns `excludes` (matched relative to each root).
    ///
    /// A source is a path relative to the context (a leading `/` or `./` is the
    /// root); a path naming a directory selects everything below it. From the
    /// first component holding `*`, `?` or `[` on, the rest is a Go
    /// `filepath.Match` pattern matched against paths below the literal part
    /// (so `*` never crosses a `/`); a matched directory is taken whole. A
    /// wildcard matching nothing selects nothing (BuildKit's COPY allows empty
    /// wildcards); a literal path that does not exist is an error, and so is a
    /// source leaving the context with `..`.
    pub fn select(&self, sources: &[String], excludes: &[String]) -> Result<Selection> {
        let excludes = if excludes.is_empty() {
            None
        } else {
            Some(
                PatternMatcher::new(excludes).map_err(|e| ContextError::InvalidExclude {
                    pattern: e.pattern,
                    reason: e.reason,
                })?,
            )
        };
        let mut sel = Selection::default();
        for (source_index, source) in sources.iter().enumerate() {
            let comps = components(source)?;
            let split = comps
                .iter()
                .position(|c| contains_wildcards(c))
                .unwrap_or(comps.len());
            let literal = comps[..split].join("/");
            let mut matched = Vec::new();
            if split == comps.len() {
                matched.push(literal.clone());
            } else {
                let pattern = comps[split..].join("/");
                if go_match(&pattern, ".").is_err() {
                    return Err(ContextError::InvalidSource {
                        source_path: source.clone(),
                        reason: "syntax error in pattern".into(),
                    });
                }
                let base = self.resolve(&literal, true)?;
                if self.get(&base).is_some_and(Entry::is_dir) {
                    let depth = comps.len() - split;
                    let prefix_len = if base.is_empty() { 0 } else { base.len() + 1 };
                    let mut found: Vec<&str> = Vec::new();
                    for e in self.below(&base) {
                        let rel = &e.path[prefix_len..];
                        if rel.split('/').count() > depth
                            || found.last().is_some_and(|m| {
                                rel.starts_with(m) && rel[m.len()..].starts_with('/')
                            })
                        {
                            continue;
                        }
                        if go_match(&pattern, rel).unwrap_or(false) {
                            found.push(rel);
                        }
                    }
                    // filepath.Walk's order: by path component, not by bytes.
                    found.sort_by(|a, b| a.split('/').cmp(b.split('/')));
                    for rel in found {
                        matched.push(if literal.is_empty() {
                            rel.to_string()
                        } else {
                            format!("{literal}/{rel}")
                        });
                    }
                }
            }
            for path in matched {
                let resolved = self.resolve(&path, true)?;
                let Some(entry) = self.get(&resolved) else {
                    return Err(ContextError::SourceNotFound {
                        source_path: source.clone(),
                        path,
                    });
                };
                let root = sel.roots.len();
                sel.roots.push(SelectedRoot {
                    source_index,
                    path,
                    resolved: resolved.clone(),
                    is_dir: entry.is_dir(),
                });
                sel.entries.push(SelectedEntry {
                    root,
                    rel: String::new(),
                    entry: entry.clone(),
                });
                if entry.is_dir() {
                    self.select_below(&resolved, root, excludes.as_ref(), &mut sel.entries);
                }
            }
        }
        Ok(sel)
    }

    fn select_below(
        &self,
        dir: &str,
        root: usize,
        excludes: Option<&PatternMatcher>,
        out: &mut Vec<SelectedEntry>,
    ) {
        let prefix_len = if dir.is_empty() { 0 } else { dir.len() + 1 };
        let below = self.below(dir);
        let Some(pm) = excludes else {
            out.extend(below.iter().map(|e| SelectedEntry {
                root,
                rel: e.path[prefix_len..].to_string(),
                entry: e.clone(),
            }));
            return;
        };
        // Parents come before children in path order; excluded directories are
        // added only when something below them is kept (the copier creates them).
        let mut infos: HashMap<&str, MatchInfo> = HashMap::new();
        let mut kept: HashSet<&str> = HashSet::new();
        let mut picked: Vec<&Entry> = Vec::new();
        let empty = MatchInfo::default();
        for e in below {
            let rel = &e.path[prefix_len..];
            let parent = rel.rfind('/').map(|i| &rel[..i]);
            let parent_info = parent.and_then(|p| infos.get(p)).unwrap_or(&empty);
            let (excluded, info) = pm.matches_using_parent_results(rel, parent_info);
            if e.is_dir() {
                infos.insert(rel, info);
            }
            if excluded {
                continue;
            }
            // Add excluded ancestors that were not added.
            let mut anc = rel;
            while let Some(i) = anc.rfind('/') {
                anc = &anc[..i];
                if !kept.insert(anc) {
                    break;
                }
                if let Some(a) = self.get(&e.path[..prefix_len + anc.len()]) {
                    picked.push(a);
                }
            }
            kept.insert(rel);
            picked.push(e);
        }
        picked.sort_by(|a, b| a.path.cmp(&b.path));
        out.extend(picked.into_iter().map(|e| SelectedEntry {
            root,
            rel: e.path[prefix_len..].to_string(),
            entry: e.clone(),
        }));
    }
}

impl Selection {
    /// The content digest of the selection, for the step's cache key.
    ///
    /// Each entry is hashed (with [`SourceHasher`]) under the name
    /// `<root number>\0<root path>\0<path relative to the root>`: where the copy
    /// puts it, plus which source root it came from. Its content is the index's
    /// digest, its metadata mode, uid and gid; symlinks contribute their target.
    /// FIFOs, sockets and devices are hashed as symlinks whose target starts
    /// with a NUL byte (no real target can), naming their type and device
    /// number. Mtimes, inode numbers and the context's location never enter.
    pub fn digest(&self) -> SourceDigest {
        let mut h = SourceHasher::new();
        for e in &self.entries {
            let root_path = self
                .roots
                .get(e.root)
                .map(|r| r.path.as_str())
                .unwrap_or_default();
            let name = format!("{}\0{}\0{}", e.root, root_path, e.rel);
            let name = name.as_bytes();
            let meta = EntryMeta {
                mode: e.entry.mode,
                uid: e.entry.uid,
                gid: e.entry.gid,
            };
            match e.entry.kind {
                EntryKind::File => {
                    let digest = e.entry.digest.unwrap_or_default();
                    h.file_digest(name, &digest, meta);
                }
                EntryKind::Dir => h.dir(name, meta),
                EntryKind::Symlink => h.symlink(
                    name,
                    e.entry
                        .link_target
                        .as_deref()
                        .unwrap_or_default()
                        .as_bytes(),
                    meta,
                ),
                EntryKind::Other { format, rdev } => h.symlink(
                    name,
                    format!("\0special:{format:o}:{rdev}").as_bytes(),
                    meta,
                ),
            }
        }
        h.finish()
    }
}
