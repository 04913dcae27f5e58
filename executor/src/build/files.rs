//! COPY and ADD, the parent's side: the step's sources turned into a
//! [`FileAction`] for the sandbox (see [`crate::sandbox::fileop`] for the
//! copy itself and its rules).
//!
//! - Paths are read from the build context ([`BuildOptions::context`]; when
//!   no selection is given, everything under it exists) or from another
//!   stage's image: in overlay mode the sandbox mounts that image's
//!   snapshots read-only at `from/` in the run directory; in copy mode its
//!   layers are applied there first. Wildcards are expanded in the sandbox.
//!   `COPY --exclude` and `--parents` from another image are applied there
//!   too (as fsutil's exclude and include patterns, see
//!   [`FileFrom::Image`]); in a context, its selection applies them.
//! - `http(s)://` sources (ADD only) are downloaded here, with
//!   [`forge_http::Client`], into the run directory under the URL path's
//!   last segment (`__unnamed__` without one), mode 0600 as BuildKit's
//!   HTTP source writes them; `--checksum=sha256:…` is verified before
//!   anything is copied. They are never extracted. Git URLs are
//!   [`ExecutorError::Unsupported`].
//! - Heredocs (`COPY <<EOF /dest`) are written as files named after their
//!   delimiter, mode 0644, and copied like any file.
//!
//! [`BuildOptions::context`]: super::BuildOptions::context

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::run::Runner;
use super::state::ImageState;
use crate::sandbox::fileop::{CopyItem, FileAction, SourceRoot};
use crate::ExecutorError;

/// Where a COPY or ADD reads its paths.
#[derive(Debug, Clone)]
pub enum FileFrom<'a> {
    /// A host directory: the build context.
    Context {
        /// Its root.
        dir: PathBuf,
        /// The entries that exist (relative paths, parents included;
        /// `.dockerignore` applied); `None`: everything under `dir`.
        allowed: Option<BTreeSet<String>>,
    },
    /// Another stage's image (`--from`), with the `COPY` flags that only
    /// the sandbox, which sees the image's files, can apply (for a context,
    /// its selection applies them before the copy).
    Image {
        /// The image (borrowed, or another stage's, owned).
        state: std::borrow::Cow<'a, ImageState>,
        /// `--exclude` patterns, matched below each source path (see
        /// [`CopyItem::exclude`]).
        exclude: Vec<String>,
        /// `--parents`: each source is read from its `/./` pivot (the
        /// image's root without one) through an include pattern, the rest
        /// of its path, so the directories on the way are kept (see
        /// [`CopyItem::include`]).
        parents: bool,
    },
}

/// One source of a COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A path (wildcards allowed) under the step's [`FileFrom`].
    Path(String),
    /// An `http(s)://` URL (ADD), with its `--checksum` if any.
    Url {
        /// The URL.
        url: String,
        /// `sha256:<hex>`.
        checksum: Option<String>,
    },
    /// A heredoc, written as a file named `name` (mode 0644).
    Inline {
        /// The file's name (the heredoc's delimiter).
        name: String,
        /// Its content.
        content: String,
    },
}

/// A COPY or ADD for [`Runner::run_file`].
#[derive(Debug, Clone)]
pub struct FileStep<'a> {
    /// The sources, in order.
    pub sources: Vec<FileSource>,
    /// The absolute destination; a trailing `/` means a directory (see
    /// [`destination`]).
    pub dest: String,
    /// Where [`FileSource::Path`] sources are read.
    pub from: FileFrom<'a>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`, the permission bits.
    pub chmod: Option<u32>,
    /// ADD: extract local tar archives.
    pub unpack: bool,
    /// Per-source destinations overriding `dest` (`COPY --parents`), aligned
    /// with `sources`; empty when none.
    pub dests: Vec<Option<String>>,
    /// `--link`: the copy is made on an empty root, independent of the
    /// parent image (BuildKit's merge of a scratch copy): parent
    /// directories of the destination are created in the layer, and no
    /// path of the parent image is consulted (but `--chown` names are
    /// looked up in it).
    pub link: bool,
}

/// The destination of a COPY or ADD as BuildKit computes it: relative to
/// `workdir` unless absolute, cleaned, and ending in `/` when written so
/// (or as `.` or empty).
pub fn destination(workdir: &str, dest: &str) -> String {
    let joined = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{workdir}/{dest}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for comp in joined.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = format!("/{}", parts.join("/"));
    if (dest.is_empty() || dest == "." || dest.ends_with('/')) && out != "/" {
        out.push('/');
    }
    out
}

/// Whether a source is a Git repository (`git@…`, `git://…`, `ssh://…`, or
/// an `http(s)` URL of a `.git` path), which ADD cannot fetch yet.
pub fn is_git_url(src: &str) -> bool {
    if src.starts_with("git@") || src.starts_with("git://") || src.starts_with("ssh://") {
        return true;
    }
    if is_http_url(src) {
        let path = src.split(['#', '?']).next().unwrap_or(src);
        return path.ends_with(".git");
    }
    false
}

/// Whether a source is an `http://` or `https://` URL.
pub fn is_http_url(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// The file name ADD gives a URL's content: the last segment of its path
/// (percent-decoded), or `__unnamed__` (BuildKit's rule).
pub fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let base = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let decoded = percent_decode(base);
    if decoded.is_empty() || decoded == "." || decoded == ".." || decoded.contains('/') {
        "__unnamed__".to_string()
    } else {
        decoded
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> ExecutorError + 'p {
    move |source| ExecutorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Downloads `url` to `path` (mode 0600), checking `checksum`.
fn download(url: &str, checksum: Option<&str>, path: &Path) -> Result<(), ExecutorError> {
    let expected = match checksum {
        None => None,
        Some(c) => match c.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some(hex.to_ascii_lowercase())
            }
            _ => {
                return Err(ExecutorError::FileAction(format!(
                    "invalid checksum {c:?}: expected sha256:<64 hex digits>"
                )))
            }
        },
    };
    let mut download = forge_http::Client::new()
        .get(url)
        .map_err(|e| ExecutorError::FileAction(format!("downloading {url}: {e}")))?;
    let mut file = fs::File::create(path).map_err(io("creating", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = download
            .body
            .read(&mut buf)
            .map_err(|e| ExecutorError::FileAction(format!("downloading {url}: {e}")))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        file.write_all(chunk).map_err(io("writing", path))?;
    }
    file.sync_all().map_err(io("writing", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(expected) = expected {
        if expected != actual {
            return Err(ExecutorError::FileAction(format!(
                "checksum mismatch for {url}: expected sha256:{expected}, got sha256:{actual}"
            )));
        }
    }
    Ok(())
}

/// The [`FileAction`] of `step`, its downloads, heredoc files and source
/// mount points prepared in `run_dir`.
pub(super) fn prepare(
    runner: &Runner<'_>,
    step: &FileStep<'_>,
    run_dir: &Path,
    copy_mode: bool,
) -> Result<FileAction, ExecutorError> {
    let scratch = run_dir.join("scratch");
    fs::create_dir_all(&scratch).map_err(io("creating", &scratch))?;
    let mut sources = Vec::new();
    let mut items = Vec::new();
    let mut from_root: Option<usize> = None;
    for (n, source) in step.sources.iter().enumerate() {
        match source {
            FileSource::Path(path) => {
                let root = match from_root {
                    Some(root) => root,
                    None => {
                        sources.push(from_source(runner, &step.from, run_dir, copy_mode)?);
                        let root = sources.len() - 1;
                        from_root = Some(root);
                        root
                    }
                };
                let (path, include, exclude) = match &step.from {
                    FileFrom::Image {
                        exclude, parents, ..
                    } => {
                        let (path, include) = if *parents {
                            parents_pivot(path)
                        } else {
                            (path.clone(), Vec::new())
                        };
                        (path, include, exclude.clone())
                    }
                    FileFrom::Context { .. } => (path.clone(), Vec::new(), Vec::new()),
                };
                items.push(CopyItem {
                    root,
                    path,
                    wildcards: true,
                    dest: step
                        .dests
                        .get(n)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| step.dest.clone()),
                    unpack: step.unpack,
                    exclude,
                    include,
                });
            }
            FileSource::Url { url, checksum } => {
                let dir = run_dir.join(format!("url-{n}"));
                fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                let name = url_file_name(url);
                download(url, checksum.as_deref(), &dir.join(&name))?;
                push_single_file(&mut sources, &mut items, dir, name, &step.dest);
            }
            FileSource::Inline { name, content } => {
                if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                    return Err(ExecutorError::FileAction(format!(
                        "a heredoc named {name:?} cannot be a file name"
                    )));
                }
                let dir = run_dir.join(format!("heredoc-{n}"));
                fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                let file = dir.join(name);
                fs::write(&file, content).map_err(io("writing", &file))?;
                fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
                    .map_err(io("chmod", &file))?;
                push_single_file(&mut sources, &mut items, dir, name.clone(), &step.dest);
            }
        }
    }
    Ok(FileAction {
        sources,
        items,
        chown: step.chown.clone(),
        chmod: step.chmod,
        scratch,
    })
}

/// A source root holding one prepared file (a download, a heredoc), copied
/// as it is (no wildcards, never unpacked) to `dest`.
fn push_single_file(
    sources: &mut Vec<SourceRoot>,
    items: &mut Vec<CopyItem>,
    dir: PathBuf,
    name: String,
    dest: &str,
) {
    sources.push(SourceRoot {
        dir,
        mount: None,
        allowed: None,
        keep_owner: false,
    });
    items.push(CopyItem {
        root: sources.len() - 1,
        path: name,
        wildcards: false,
        dest: dest.to_string(),
        unpack: false,
        exclude: Vec::new(),
        include: Vec::new(),
    });
}

/// `COPY --parents` of `source` from an image, as BuildKit's Dockerfile
/// frontend does it: the copy reads the directory before a `/./` in the
/// path (the root without one) and keeps what the rest of the path, as an
/// include pattern, matches, with its parent directories. Returns the
/// directory and the pattern (none when the rest is empty: everything).
pub(crate) fn parents_pivot(source: &str) -> (String, Vec<String>) {
    let (pivot, rest) = match source.split_once("/./") {
        Some((pivot, rest)) => (if pivot.is_empty() { "/" } else { pivot }, rest),
        None => ("/", source),
    };
    let mut comps: Vec<&str> = Vec::new();
    for c in rest.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c),
        }
    }
    let pattern = comps.join("/");
    let include = if pattern.is_empty() {
        Vec::new()
    } else {
        vec![pattern]
    };
    (pivot.to_string(), include)
}

/// The source root of the step's paths.
fn from_source(
    runner: &Runner<'_>,
    from: &FileFrom<'_>,
    run_dir: &Path,
    copy_mode: bool,
) -> Result<SourceRoot, ExecutorError> {
    Ok(match from {
        FileFrom::Context { dir, allowed } => SourceRoot {
            dir: dir.clone(),
            mount: None,
            allowed: allowed.clone(),
            keep_owner: false,
        },
        FileFrom::Image { state, .. } => {
            let dir = run_dir.join("from");
            fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            let mount = if copy_mode {
                for layer in &state.layers {
                    runner.apply(layer, &dir)?;
                }
                None
            } else {
                Some(runner.lower_dirs(state)?)
            };
            SourceRoot {
                dir,
                mount,
                allowed: None,
                keep_owner: true,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_buildkit() {
        assert_eq!(destination("/", "/dir/"), "/dir/");
        assert_eq!(destination("/work", "rel/"), "/work/rel/");
        assert_eq!(destination("/work", "."), "/work/");
        assert_eq!(destination("/", "."), "/");
        assert_eq!(destination("/work", "x"), "/work/x");
        assert_eq!(destination("/work", "../x/./y"), "/x/y");
        assert_eq!(destination("/a", "/b/../c"), "/c");
    }

    #[test]
    fn parents_pivots_follow_buildkit() {
        let p = |s: &str| parents_pivot(s);
        assert_eq!(p("/out/a/b.txt"), ("/".into(), vec!["out/a/b.txt".into()]));
        assert_eq!(p("out/*/x"), ("/".into(), vec!["out/*/x".into()]));
        assert_eq!(p("/out/./a/b.txt"), ("/out".into(), vec!["a/b.txt".into()]));
        assert_eq!(
            p("./src/./pkg/*.go"),
            ("./src".into(), vec!["pkg/*.go".into()])
        );
        assert_eq!(p("/./a/../b"), ("/".into(), vec!["b".into()]));
        assert_eq!(p("/out/./"), ("/out".into(), Vec::<String>::new()));
    }

    #[test]
    fn url_names() {
        assert_eq!(url_file_name("https://example.com/a/b.tar.gz"), "b.tar.gz");
        assert_eq!(url_file_name("http://h:8080/x%20y?q=1#f"), "x y");
        assert_eq!(url_file_name("https://example.com/"), "__unnamed__");
        assert_eq!(url_file_name("https://example.com"), "__unnamed__");
        assert_eq!(url_file_name("https://example.com/dir/"), "dir");
    }

    #[test]
    fn git_urls() {
        assert!(is_git_url("git@github.com:o/r.git"));
        assert!(is_git_url("https://github.com/o/r.git#main"));
        assert!(is_git_url("git://host/r"));
        assert!(!is_git_url("https://example.com/file.tar"));
        assert!(!is_git_url("local.git"));
    }
}
