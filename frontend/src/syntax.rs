//! The syntax layer both frontends produce: typed instructions, still unexpanded, with spans.
//!
//! The Dockerfile parser and the forge.toml reader each turn their file into a
//! [`BuildFile`]; [`crate::lower`] then expands variables, applies ARG/ENV scoping
//! and base-image facts, and produces the [`crate::ir::Ir`]. Sharing this layer is
//! what makes a forge.toml and a Dockerfile that say the same thing lower to equal IR:
//! the scoping rules live in one place.
//!
//! Every string here is as written (quotes and `$VAR`s intact) unless its doc says
//! otherwise; [`Spanned::span`] points into [`BuildFile::source`].

use miette::SourceSpan;
use std::sync::Arc;

/// A build file's text and the name it is reported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The path as the user named it (for diagnostics).
    pub name: String,
    /// The whole text.
    pub text: Arc<str>,
}

impl SourceFile {
    /// A source file from a name and its text.
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column of a byte offset (columns count chars).
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

/// Start offsets of every line of a text, for turning many byte offsets into line
/// and column without rescanning the text each time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Indexes `text`.
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    /// 1-based line and column (columns count chars) of `offset` in `text`, the
    /// text this index was made from; the same answer as [`SourceFile::line_col`].
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let col = text.get(start..offset).map_or(0, |t| t.chars().count()) + 1;
        (line, col)
    }
}

/// A value with the byte range it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it is in the source file.
    pub span: SourceSpan,
}

impl<T> Spanned<T> {
    /// Wraps a value with its span.
    pub fn new(value: T, span: SourceSpan) -> Self {
        Self { value, span }
    }
}

/// One parsed build file (a Dockerfile, or one image of a forge.toml).
#[derive(Debug, Clone)]
pub struct BuildFile {
    /// The file the spans point into.
    pub source: SourceFile,
    /// The escape character in effect (`\` or `` ` ``), for the shell lexer.
    pub escape: char,
    /// Parser directives found at the top (`syntax`, `escape`, `check`), lowercased keys.
    pub directives: Vec<(String, String)>,
    /// `ARG`s before the first `FROM`: usable in `FROM` lines, and as defaults for
    /// a stage's own `ARG NAME` without a value.
    pub global_args: Vec<Spanned<Vec<ArgDecl>>>,
    /// The stages, in file order.
    pub stages: Vec<StageSyntax>,
}

/// A `FROM` and the instructions after it.
#[derive(Debug, Clone)]
pub struct StageSyntax {
    /// The `FROM` line.
    pub from: FromInstr,
    /// The instructions of the stage, in order (excluding the `FROM`).
    pub instructions: Vec<Instruction>,
}

/// `FROM [--platform=P] IMAGE [AS NAME]`.
#[derive(Debug, Clone)]
pub struct FromInstr {
    /// The base: an image reference, `scratch`, or the name of an earlier stage (unexpanded).
    pub base: Spanned<String>,
    /// `AS name`, as written.
    pub name: Option<Spanned<String>>,
    /// `--platform` value (unexpanded).
    pub platform: Option<Spanned<String>>,
    /// The whole instruction.
    pub span: SourceSpan,
    /// The instruction as written on its (logical) line, for history and display.
    pub original: String,
}

/// One instruction with its location.
#[derive(Debug, Clone)]
pub struct Instruction {
    /// What it says.
    pub kind: InstructionKind,
    /// The whole instruction in the source (first keyword char to end of its last line).
    pub span: SourceSpan,
    /// The instruction as written on its logical line (continuations joined), for
    /// history's `created_by` and for display.
    pub original: String,
}

/// The instructions other than `FROM`, typed; values unexpanded.
#[derive(Debug, Clone)]
pub enum InstructionKind {
    /// `RUN`.
    Run(RunInstr),
    /// `CMD`.
    Cmd(CommandLine),
    /// `ENTRYPOINT`.
    Entrypoint(CommandLine),
    /// `COPY`.
    Copy(CopyInstr),
    /// `ADD`.
    Add(AddInstr),
    /// `ENV k=v ...` or `ENV k v`.
    Env(Vec<KeyValue>),
    /// `LABEL k=v ...`.
    Label(Vec<KeyValue>),
    /// `ARG name[=default] ...`.
    Arg(Vec<ArgDecl>),
    /// `EXPOSE port[/proto] ...`.
    Expose(Vec<Spanned<String>>),
    /// `VOLUME`, JSON or space-separated.
    Volume(Vec<Spanned<String>>),
    /// `USER user[:group]`.
    User(Spanned<String>),
    /// `WORKDIR path`.
    Workdir(Spanned<String>),
    /// `STOPSIGNAL signal`.
    StopSignal(Spanned<String>),
    /// `HEALTHCHECK`.
    Healthcheck(HealthcheckInstr),
    /// `SHELL ["exe", "arg"]` (always JSON).
    Shell(Vec<String>),
    /// `MAINTAINER name` (deprecated, sets the author).
    Maintainer(String),
    /// `ONBUILD INSTRUCTION`: the trigger text as written after `ONBUILD `, and its parse.
    Onbuild {
        /// The trigger as it will be stored in the image config.
        trigger: String,
        /// The trigger parsed (validated now, run when the image is used as a base).
        parsed: Box<Instruction>,
    },
}

pub use forge_ir::{CommandLine, Heredoc};

/// `RUN [--mount=...] [--network=...] [--security=...] command`.
#[derive(Debug, Clone)]
pub struct RunInstr {
    /// The command (for a heredoc RUN, the shell-form text naming the heredoc, e.g. `<<EOF`, or `python3 <<EOF`).
    pub command: CommandLine,
    /// Each `--mount=` value, as written.
    pub mounts: Vec<Spanned<String>>,
    /// `--network=` value.
    pub network: Option<Spanned<String>>,
    /// `--security=` value.
    pub security: Option<Spanned<String>>,
    /// Heredocs on this instruction, in order.
    pub heredocs: Vec<Heredoc>,
}

/// `COPY [flags] src... dest`.
#[derive(Debug, Clone)]
pub struct CopyInstr {
    /// Sources (after flags), as written; for a heredoc COPY, the heredoc names as `<<NAME`.
    pub sources: Vec<Spanned<String>>,
    /// Destination, as written.
    pub dest: Spanned<String>,
    /// `--from=`.
    pub from: Option<Spanned<String>>,
    /// `--chown=`.
    pub chown: Option<Spanned<String>>,
    /// `--chmod=`.
    pub chmod: Option<Spanned<String>>,
    /// `--link` (`--link=false` gives false).
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude=` patterns.
    pub exclude: Vec<Spanned<String>>,
    /// Heredocs used as sources.
    pub heredocs: Vec<Heredoc>,
}

/// `ADD [flags] src... dest`.
#[derive(Debug, Clone)]
pub struct AddInstr {
    /// Sources (after flags), as written.
    pub sources: Vec<Spanned<String>>,
    /// Destination, as written.
    pub dest: Spanned<String>,
    /// `--chown=`.
    pub chown: Option<Spanned<String>>,
    /// `--chmod=`.
    pub chmod: Option<Spanned<String>>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum=`.
    pub checksum: Option<Spanned<String>>,
    /// `--unpack=` (None: the default, unpack local archives).
    pub unpack: Option<bool>,
    /// `--exclude=` patterns.
    pub exclude: Vec<Spanned<String>>,
    /// Heredocs used as sources.
    pub heredocs: Vec<Heredoc>,
}

/// A `key=value` pair (ENV, LABEL), both sides as written (quotes intact).
#[derive(Debug, Clone)]
pub struct KeyValue {
    /// The key as written.
    pub key: Spanned<String>,
    /// The value as written.
    pub value: Spanned<String>,
}

/// One `ARG name[=default]`.
#[derive(Debug, Clone)]
pub struct ArgDecl {
    /// The name.
    pub name: Spanned<String>,
    /// The default, as written.
    pub default: Option<Spanned<String>>,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [opts] CMD command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthcheckInstr {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    /// `HEALTHCHECK [options] CMD ...`.
    Check {
        /// The probe command.
        test: CommandLine,
        /// `--interval` in nanoseconds.
        interval_ns: Option<u64>,
        /// `--timeout` in nanoseconds.
        timeout_ns: Option<u64>,
        /// `--start-period` in nanoseconds.
        start_period_ns: Option<u64>,
        /// `--start-interval` in nanoseconds.
        start_interval_ns: Option<u64>,
        /// `--retries`.
        retries: Option<u32>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index_agrees_with_line_col() {
        let text = "FROM a\n\nRUN é x\nCMD y";
        let source = SourceFile::new("f", text);
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            if text.is_char_boundary(offset.min(text.len())) {
                assert_eq!(
                    index.line_col(text, offset),
                    source.line_col(offset),
                    "{offset}"
                );
            }
        }
    }
}
