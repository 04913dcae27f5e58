//! The crate's one error type.

use std::path::PathBuf;

use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

/// An invalid pattern in an ignore file, with its place.
#[derive(Debug, Error, Diagnostic)]
#[error("{}:{line}: invalid pattern {pattern:?}: {reason}", file.display())]
#[diagnostic(
    code(context::invalid_ignore_pattern),
    help("patterns follow docker's .dockerignore rules (Go's filepath.Match syntax, plus `**` and `!`)")
)]
pub struct InvalidIgnorePattern {
    /// The ignore file.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
    /// The file's text.
    #[source_code]
    pub src: NamedSource<String>,
    /// The pattern's place in it.
    #[label("this pattern")]
    pub span: SourceSpan,
}

/// Everything that can go wrong reading a build context.
#[derive(Debug, Error, Diagnostic)]
pub enum ContextError {
    /// A pattern of an ignore file is invalid.
    #[error(transparent)]
    #[diagnostic(transparent)]
    InvalidIgnorePattern(Box<InvalidIgnorePattern>),

    /// A `--exclude` pattern is invalid.
    #[error("invalid --exclude pattern {pattern:?}: {reason}")]
    #[diagnostic(code(context::invalid_exclude))]
    InvalidExclude {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A COPY/ADD source pattern is invalid.
    #[error("invalid source {source_path:?}: {reason}")]
    #[diagnostic(code(context::invalid_source))]
    InvalidSource {
        /// The source as given.
        source_path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A COPY/ADD source names nothing in the context.
    #[error("failed to compute cache key: {:?} not found", format!("/{path}"))]
    #[diagnostic(
        code(context::source_not_found),
        help("the path is relative to the build context; check it exists and is not excluded by .dockerignore")
    )]
    SourceNotFound {
        /// The source as given.
        source_path: String,
        /// The cleaned path that was looked up, relative to the context root.
        path: String,
    },

    /// A COPY/ADD source leaves the build context.
    #[error("source {source_path:?} is outside the build context")]
    #[diagnostic(
        code(context::source_outside_context),
        help("COPY and ADD can only read files inside the build context")
    )]
    SourceOutsideContext {
        /// The source as given.
        source_path: String,
    },

    /// The context root is not a directory.
    #[error("build context {} is not a directory", path.display())]
    #[diagnostic(code(context::not_a_directory))]
    NotADirectory {
        /// The path given as the context.
        path: PathBuf,
    },

    /// A name in the context is not UTF-8.
    #[error("{}: file names and symlink targets in the build context must be UTF-8", path.display())]
    #[diagnostic(code(context::non_utf8))]
    NonUtf8 {
        /// The offending path.
        path: PathBuf,
    },

    /// A file changed kind while it was being read.
    #[error("{}: changed while the build context was being read", path.display())]
    #[diagnostic(code(context::changed))]
    Changed {
        /// The file.
        path: PathBuf,
    },

    /// An I/O error.
    #[error("{}: {source}", path.display())]
    #[diagnostic(code(context::io))]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ContextError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ContextError {
        let path = path.into();
        move |source| ContextError::Io { path, source }
    }
}

/// The crate's result type.
pub type Result<T, E = ContextError> = std::result::Result<T, E>;
