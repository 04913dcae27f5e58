//! The frontend's one error type.
//!
//! Parsing and lowering collect every problem they can find before giving up, so a
//! file with three mistakes reports three [`Problem`]s in one [`FrontendError`].

use miette::{Diagnostic, NamedSource, SourceSpan};
use std::sync::Arc;
use thiserror::Error;

use crate::syntax::SourceFile;

/// One problem in a build file, pointing at where it is.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct Problem {
    /// A stable code, e.g. `dockerfile::unknown-instruction`.
    pub code: &'static str,
    /// What is wrong, one line.
    pub message: String,
    /// Where.
    pub span: SourceSpan,
    /// A short label shown under the span.
    pub label: String,
    /// How to fix it, when there is something to say.
    pub help: Option<String>,
}

// Written by hand: the derive cannot take a diagnostic code from a field.
impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display + 'a>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(self.label.clone()), self.span),
        )))
    }
}

impl Problem {
    /// A problem with a code, message and span; the label defaults to "here".
    pub fn new(code: &'static str, message: impl Into<String>, span: SourceSpan) -> Self {
        Self {
            code,
            message: message.into(),
            span,
            label: "here".into(),
            help: None,
        }
    }

    /// Sets the label shown under the span.
    #[must_use]
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Sets the help line.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Everything that can go wrong in the frontend.
#[derive(Debug, Error, Diagnostic)]
pub enum FrontendError {
    /// One or more problems in one build file.
    #[error("{} in `{}`", plural(problems.len()), source_code.name())]
    #[diagnostic(code(forge::invalid_build_file))]
    Invalid {
        /// The file, for rendering the spans.
        #[source_code]
        source_code: NamedSource<Arc<str>>,
        /// Each problem found.
        #[related]
        problems: Vec<Problem>,
    },
    /// A build file could not be read.
    #[error("cannot read `{path}`")]
    #[diagnostic(code(forge::io), help("check that the path exists and is readable"))]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The base-image resolver failed (not "unknown", which is fine: a real failure).
    #[error("cannot resolve base image `{reference}`: {message}")]
    #[diagnostic(code(forge::resolve))]
    Resolve {
        /// The image reference.
        reference: String,
        /// What the resolver said.
        message: String,
    },
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 problem".to_string()
    } else {
        format!("{n} problems")
    }
}

impl FrontendError {
    /// Wraps problems found in `source`.
    pub fn invalid(source: &SourceFile, problems: Vec<Problem>) -> Self {
        Self::Invalid {
            source_code: NamedSource::new(source.name.clone(), Arc::clone(&source.text))
                .with_language(if source.name.ends_with(".toml") {
                    "TOML"
                } else {
                    "Dockerfile"
                }),
            problems,
        }
    }

    /// The problems, when this is [`FrontendError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }

    /// Whether this is the user's input at fault (exit code 1) rather than the environment (2).
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::Read { .. })
    }
}

/// Result alias for the frontend.
pub type Result<T, E = FrontendError> = std::result::Result<T, E>;
