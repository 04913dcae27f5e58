//! The forge.toml frontend.
//!
//! A `forge.toml` describes a project: several images, each either written inline
//! (`from` plus `steps` and metadata, one stage) or built from a Dockerfile, and
//! groups of images to build together. [`parse`] reads it into a [`Project`] whose
//! images carry the same syntax layer ([`crate::syntax::BuildFile`]) a Dockerfile
//! parses to, so [`crate::lower::lower_project`] applies the Dockerfile's scoping
//! rules to both. The format is documented in the book (`book/src/forge-toml.md`).
//!
//! ```toml
//! [image.base]
//! from = "busybox:1.36"
//! env = { PATH = "/usr/local/bin:/bin" }
//! steps = [{ run = "mkdir /app" }]
//!
//! [image.app]
//! dockerfile = "app/Dockerfile"
//! context = "app"
//!
//! [group.default]
//! images = ["base", "app"]
//! ```
//!
//! Every problem in the file is reported at once, each pointing into the TOML; a
//! referenced Dockerfile's own problems are reported against that Dockerfile.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use miette::SourceSpan;

use crate::error::{FrontendError, Problem};
use crate::syntax::{BuildFile, SourceFile, Spanned};

mod image;
mod node;
mod words;

use node::{code, get, list, Entry, Kind, Node, Reader};

/// The forge.toml versions this reader understands.
pub const VERSION: u32 = 1;

/// A parsed forge.toml.
#[derive(Debug, Clone)]
pub struct Project {
    /// The forge.toml itself (spans of inline images and names point into it).
    pub source: SourceFile,
    /// The `version` key (1 when absent).
    pub version: u32,
    /// The images, in written order.
    pub images: Vec<ImageSpec>,
    /// Group name → image names, as written.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// One `[image.NAME]` table.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The image's name (the `NAME` of `[image.NAME]`), spanned in the forge.toml.
    pub name: Spanned<String>,
    /// `tags`, as written.
    pub tags: Vec<String>,
    /// The build context: `context` joined to the forge.toml's directory.
    pub context: PathBuf,
    /// How the image is built.
    pub build: ImageBuild,
}

/// How an image is built.
#[derive(Debug, Clone)]
pub enum ImageBuild {
    /// One stage built from the TOML.
    Inline(BuildFile),
    /// A Dockerfile; `file` is its parse.
    Dockerfile {
        /// The Dockerfile's path, joined to the forge.toml's directory.
        path: PathBuf,
        /// The Dockerfile, parsed.
        file: BuildFile,
        /// `target`: the stage to build (the last stage when absent).
        target: Option<String>,
        /// `args`: build args for this image, as `--build-arg` would give them.
        args: BTreeMap<String, String>,
    },
}

/// The keys of the top level.
const TOP_KEYS: &[&str] = &["version", "image", "group"];
/// The keys of an image built from a Dockerfile.
const DOCKERFILE_KEYS: &[&str] = &["dockerfile", "context", "target", "args", "tags"];
/// The keys of a group.
const GROUP_KEYS: &[&str] = &["images"];

/// Parse a forge.toml; `read` loads referenced Dockerfiles (paths already joined to `base_dir`).
///
/// # Errors
/// [`FrontendError::Invalid`] with every problem in the forge.toml; the first
/// referenced Dockerfile that cannot be read ([`FrontendError::Read`]) or parsed
/// (its own [`FrontendError::Invalid`]).
pub fn parse(
    source: &SourceFile,
    base_dir: &Path,
    read: &mut dyn FnMut(&Path) -> std::io::Result<String>,
) -> Result<Project, FrontendError> {
    let doc = match toml_edit::ImDocument::parse(&*source.text) {
        Ok(doc) => doc,
        Err(e) => return Err(FrontendError::invalid(source, vec![syntax_problem(&e)])),
    };
    let root = Node::root(doc.as_table(), source.text.len());
    let mut r = Reader::default();
    let top: &[Entry<'_>] = match &root.kind {
        Kind::Table(entries) => entries,
        _ => &[],
    };
    r.check_keys(top, TOP_KEYS, "");

    let version = get(top, "version").map_or(VERSION, |e| read_version(&mut r, e));

    let mut drafts = Vec::new();
    let mut names = Vec::new();
    match get(top, "image") {
        Some(e) => {
            if let Some(images) = r.table("image", &e.value) {
                if images.is_empty() {
                    no_images(&mut r, e.span);
                }
                for img in images {
                    names.push(img.key.value.clone());
                    if let Some(d) = read_image(&mut r, source, base_dir, img) {
                        drafts.push(d);
                    }
                }
            }
        }
        None => no_images(&mut r, SourceSpan::from(0..0)),
    }

    let mut groups = BTreeMap::new();
    if let Some(e) = get(top, "group") {
        if let Some(entries) = r.table("group", &e.value) {
            for g in entries {
                if let Some(images) = read_group(&mut r, g, &names) {
                    groups.insert(g.key.value.clone(), images);
                }
            }
        }
    }

    if !r.problems.is_empty() {
        return Err(FrontendError::invalid(source, r.problems));
    }

    let mut images = Vec::with_capacity(drafts.len());
    for d in drafts {
        let build = match d.build {
            Draft::Inline(file) => ImageBuild::Inline(file),
            Draft::Dockerfile { path, target, args } => {
                let text = read(&path).map_err(|e| FrontendError::Read {
                    path: path.display().to_string(),
                    source: e,
                })?;
                let file =
                    crate::dockerfile::parse(&SourceFile::new(path.display().to_string(), text))?;
                ImageBuild::Dockerfile {
                    path,
                    file,
                    target,
                    args,
                }
            }
        };
        images.push(ImageSpec {
            name: d.name,
            tags: d.tags,
            context: d.context,
            build,
        });
    }
    Ok(Project {
        source: source.clone(),
        version,
        images,
        groups,
    })
}

/// Read and parse the file at `path` (the only I/O: the forge.toml and the Dockerfiles it names).
///
/// Relative paths in the file are taken from the forge.toml's directory.
///
/// # Errors
/// [`FrontendError::Read`] when a file cannot be read; otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Project, FrontendError> {
    let text = std::fs::read_to_string(path).map_err(|e| FrontendError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    let source = SourceFile::new(path.display().to_string(), text);
    let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
    parse(&source, base_dir, &mut |p| std::fs::read_to_string(p))
}

/// An image as read from the TOML, before its Dockerfile (if any) is read.
struct ImageDraft {
    name: Spanned<String>,
    tags: Vec<String>,
    context: PathBuf,
    build: Draft,
}

enum Draft {
    Inline(BuildFile),
    Dockerfile {
        path: PathBuf,
        target: Option<String>,
        args: BTreeMap<String, String>,
    },
}

fn syntax_problem(e: &toml_edit::TomlError) -> Problem {
    let span = e.span().map_or(SourceSpan::from(0..0), SourceSpan::from);
    let mut lines = e.message().lines();
    let message = lines.next().unwrap_or("invalid TOML").to_string();
    let rest: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    let problem =
        Problem::new(code::SYNTAX, format!("invalid TOML: {message}"), span).label("here");
    if rest.is_empty() {
        problem
    } else {
        problem.help(rest.join("; "))
    }
}

fn no_images(r: &mut Reader, span: SourceSpan) {
    r.push(
        Problem::new(code::MISSING_KEY, "the file defines no image", span)
            .label("no `[image.NAME]` table")
            .help("add an image, e.g.\n[image.app]\nfrom = \"busybox\""),
    );
}

fn read_version(r: &mut Reader, e: &Entry<'_>) -> u32 {
    match &e.value.kind {
        Kind::Int(n) if u32::try_from(*n) == Ok(VERSION) => VERSION,
        Kind::Int(n) => {
            r.push(
                Problem::new(
                    code::VERSION,
                    format!("unsupported forge.toml version {n}"),
                    e.value.span,
                )
                .label("unsupported version")
                .help(format!(
                    "this forge reads version {VERSION}: write `version = {VERSION}` or leave it out"
                )),
            );
            VERSION
        }
        _ => {
            r.type_error("version", "an integer", &e.value);
            VERSION
        }
    }
}

/// Whether `name` may name an image: it is used as a stage name and in `from`.
fn valid_image_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// `base_dir/rel` without `.` components (`.` when empty).
fn join_dir(base_dir: &Path, rel: &str) -> PathBuf {
    let joined = base_dir.join(rel);
    let out: PathBuf = joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn read_image(
    r: &mut Reader,
    source: &SourceFile,
    base_dir: &Path,
    img: &Entry<'_>,
) -> Option<ImageDraft> {
    let before = r.problems.len();
    let name = img.key.clone();
    let path = format!("image.{}", name.value);
    let at = |key: &str| format!("{path}.{key}");
    if !valid_image_name(&name.value) || name.value == "scratch" {
        r.push(
            Problem::new(
                code::VALUE,
                format!("invalid image name `{}`", name.value),
                name.span,
            )
            .label("invalid name")
            .help(if name.value == "scratch" {
                "`scratch` means the empty image in `from`; choose another name".to_string()
            } else {
                "image names use lowercase letters, digits, `-`, `_` and `.`, and start with a letter or digit".to_string()
            }),
        );
    }
    let entries = r.table(&path, &img.value)?;

    let from = get(entries, "from");
    let dockerfile = get(entries, "dockerfile");
    match (from, dockerfile) {
        (Some(_), Some(df)) => {
            r.push(
                Problem::new(
                    code::CONFLICT,
                    format!("`{path}` has both `from` and `dockerfile`"),
                    df.key.span,
                )
                .label("conflicts with `from`")
                .help("an image is either written inline (`from`, `steps`, ...) or built from a Dockerfile: keep one"),
            );
        }
        (None, None) => {
            r.push(
                Problem::new(
                    code::MISSING_KEY,
                    format!("image `{}` has neither `from` nor `dockerfile`", name.value),
                    name.span,
                )
                .label("nothing to build")
                .help("add `from = \"IMAGE\"` (or \"scratch\") for an inline image, or `dockerfile = \"PATH\"`"),
            );
        }
        _ => {}
    }
    let inline = dockerfile.is_none();

    // Keys: unknown ones, and ones that belong to the other kind of image.
    for e in entries {
        let key = e.key.value.as_str();
        let in_inline = image::INLINE_KEYS.contains(&key);
        let in_dockerfile = DOCKERFILE_KEYS.contains(&key);
        match (inline, in_inline, in_dockerfile) {
            (_, true, true) | (true, true, false) | (false, false, true) => {}
            (false, true, false) => {
                if key != "from" {
                    r.push(
                        Problem::new(
                            code::CONFLICT,
                            format!(
                                "`{key}` cannot be used with `dockerfile` (in `{path}`)"
                            ),
                            e.key.span,
                        )
                        .label("only for inline images")
                        .help("the Dockerfile says how this image is built: put it there, or write the image inline with `from`"),
                    );
                }
            }
            (true, false, true) if from.is_some() => {
                r.push(
                    Problem::new(
                        code::CONFLICT,
                        format!("`{key}` cannot be used with `from` (in `{path}`)"),
                        e.key.span,
                    )
                    .label("only for Dockerfile images")
                    .help(
                        "`target` selects a stage of a Dockerfile; an inline image has one stage",
                    ),
                );
            }
            (true, false, true) => {}
            (_, false, false) => {
                let allowed: Vec<&str> = if inline {
                    image::INLINE_KEYS.to_vec()
                } else {
                    DOCKERFILE_KEYS.to_vec()
                };
                r.unknown_key(e, &allowed, &path);
            }
        }
    }

    let tags = match get(entries, "tags") {
        Some(e) => r
            .string_or_strings(&at("tags"), &e.value)
            .map_or_else(Vec::new, |t| t.into_iter().map(|s| s.value).collect()),
        None => Vec::new(),
    };
    let context = match get(entries, "context") {
        Some(e) => r
            .nonempty_string(&at("context"), &e.value)
            .map_or_else(|| PathBuf::from("."), |c| join_dir(base_dir, &c.value)),
        None => join_dir(base_dir, "."),
    };

    let build = if let Some(df) = dockerfile {
        let file = r.nonempty_string(&at("dockerfile"), &df.value);
        let target =
            get(entries, "target").and_then(|e| r.nonempty_string(&at("target"), &e.value));
        let mut args = BTreeMap::new();
        if let Some(e) = get(entries, "args") {
            if let Some(table) = r.table(&at("args"), &e.value) {
                for kv in table {
                    if let Some(v) = r.scalar(&format!("{path}.args.{}", kv.key.value), &kv.value) {
                        args.insert(kv.key.value.clone(), v.value);
                    }
                }
            }
        }
        file.map(|f| Draft::Dockerfile {
            path: join_dir(base_dir, &f.value),
            target: target.map(|t| t.value),
            args,
        })
    } else if from.is_some() {
        image::inline_image(r, source, &name, entries).map(Draft::Inline)
    } else {
        None
    };

    if r.problems.len() > before {
        return None;
    }
    Some(ImageDraft {
        name,
        tags,
        context,
        build: build?,
    })
}

fn read_group(r: &mut Reader, g: &Entry<'_>, images: &[String]) -> Option<Vec<String>> {
    let path = format!("group.{}", g.key.value);
    let before = r.problems.len();
    if images.contains(&g.key.value) {
        r.push(
            Problem::new(
                code::CONFLICT,
                format!("group `{}` has the same name as an image", g.key.value),
                g.key.span,
            )
            .label("also an image")
            .help("give the group a name no image uses, so `forge build NAME` is unambiguous"),
        );
    }
    let entries = r.table(&path, &g.value)?;
    r.check_keys(entries, GROUP_KEYS, &path);
    let Some(e) = get(entries, "images") else {
        r.push(
            Problem::new(
                code::MISSING_KEY,
                format!("group `{}` has no `images`", g.key.value),
                g.key.span,
            )
            .label("`images` missing")
            .help("list the images to build, e.g. images = [\"app\"]"),
        );
        return None;
    };
    let names = r.strings(&format!("{path}.images"), &e.value)?;
    let candidates: Vec<&str> = images.iter().map(String::as_str).collect();
    for n in &names {
        if !images.contains(&n.value) {
            let help = match crate::suggest(&n.value, &candidates) {
                Some(s) => format!(
                    "did you mean `{s}`? images of this file: {}",
                    list(&candidates)
                ),
                None if candidates.is_empty() => "this file defines no image".to_string(),
                None => format!("images of this file: {}", list(&candidates)),
            };
            r.push(
                Problem::new(
                    code::UNKNOWN_IMAGE,
                    format!("group `{}` names unknown image `{}`", g.key.value, n.value),
                    n.span,
                )
                .label("no such image")
                .help(help),
            );
        }
    }
    (r.problems.len() == before).then(|| names.into_iter().map(|n| n.value).collect())
}
