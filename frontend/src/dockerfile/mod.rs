//! The Dockerfile parser.
//!
//! Two layers, both following BuildKit (`frontend/dockerfile/parser` and
//! `frontend/dockerfile/instructions`) down to its quirks:
//!
//! * [`parse_ast`] reads the file into an [`Ast`] shaped like BuildKit's `parser.Node`
//!   (parser directives, escape character, line continuations across comments and
//!   blank lines, exec-form JSON with BuildKit's fallbacks, heredocs, and each
//!   instruction's own argument splitting). [`dump`] prints it in BuildKit's format.
//! * [`parse`] goes on to the typed [`crate::syntax::BuildFile`]: flags checked per
//!   instruction, stages assembled, values left unexpanded.
//!
//! Both report every problem they find, each with a stable code from [`codes`] and a
//! span on the offending keyword, flag or word.
//!
//! Where forge deliberately differs from BuildKit:
//! * BuildKit stops at the first error; forge reports them all.
//! * BuildKit reads flags (and HEALTHCHECK's type word) byte by byte, garbling non-ASCII
//!   characters; forge keeps them intact but splits words where BuildKit does (after
//!   the character when BuildKit splits inside one).
//! * `COPY --from=` (empty) is an error here; BuildKit copies from the build context.
//! * The trigger of an `ONBUILD` is checked now, not when the image is used.
//! * `RUN --device` is not accepted (forge has no devices).

pub mod ast;
mod flags;
pub(crate) mod goparse;
mod gostr;
mod heredoc;
mod instructions;
mod json;
mod line_parsers;
mod parser;
mod printable;

pub use ast::{dump, Ast, Attributes, Directive, Node, Warning, Word};

use crate::syntax::{BuildFile, SourceFile};
use crate::{FrontendError, Problem};

/// The stable codes of the problems this parser reports.
pub mod codes {
    /// An instruction keyword BuildKit does not know.
    pub const UNKNOWN_INSTRUCTION: &str = "dockerfile::unknown-instruction";
    /// A `--flag` the instruction does not accept.
    pub const UNKNOWN_FLAG: &str = "dockerfile::unknown-flag";
    /// A flag given twice where only once is allowed.
    pub const DUPLICATE_FLAG: &str = "dockerfile::duplicate-flag";
    /// A flag without its value, or with a value of the wrong kind.
    pub const BAD_FLAG_VALUE: &str = "dockerfile::bad-flag-value";
    /// `COPY --from=` with nothing after the `=`.
    pub const EMPTY_FROM_FLAG: &str = "dockerfile::empty-from-flag";
    /// A heredoc whose delimiter line never comes.
    pub const UNTERMINATED_HEREDOC: &str = "dockerfile::unterminated-heredoc";
    /// A heredoc delimiter that cannot be read (unbalanced quotes).
    pub const BAD_HEREDOC: &str = "dockerfile::bad-heredoc";
    /// A heredoc used as the destination of COPY or ADD.
    pub const HEREDOC_DESTINATION: &str = "dockerfile::heredoc-destination";
    /// A JSON array with non-string elements, or SHELL not in JSON form.
    pub const INVALID_JSON: &str = "dockerfile::invalid-json";
    /// A file without any instruction.
    pub const NO_INSTRUCTIONS: &str = "dockerfile::no-instructions";
    /// An instruction without the arguments it needs.
    pub const MISSING_ARGUMENTS: &str = "dockerfile::missing-arguments";
    /// An instruction with more arguments than it takes.
    pub const TOO_MANY_ARGUMENTS: &str = "dockerfile::too-many-arguments";
    /// `ENV NAME` or `LABEL NAME` without a value.
    pub const MISSING_VALUE: &str = "dockerfile::missing-value";
    /// A word without `=` in an `ENV a=b c` list.
    pub const MISSING_EQUALS: &str = "dockerfile::missing-equals";
    /// `ENV =value`, `ARG =value`: a pair without a name.
    pub const BLANK_NAME: &str = "dockerfile::blank-name";
    /// An empty VOLUME path.
    pub const EMPTY_VALUE: &str = "dockerfile::empty-value";
    /// An instruction other than ARG before the first FROM.
    pub const INSTRUCTION_BEFORE_FROM: &str = "dockerfile::instruction-before-from";
    /// A `FROM ... AS name` with an invalid name.
    pub const BAD_STAGE_NAME: &str = "dockerfile::bad-stage-name";
    /// `ONBUILD ONBUILD`, `ONBUILD FROM`, `ONBUILD MAINTAINER`.
    pub const BAD_ONBUILD: &str = "dockerfile::bad-onbuild";
    /// A HEALTHCHECK type other than CMD or NONE.
    pub const BAD_HEALTHCHECK: &str = "dockerfile::bad-healthcheck";
    /// A repeated parser directive, or an escape directive with a bad character.
    pub const BAD_DIRECTIVE: &str = "dockerfile::bad-directive";
    /// A physical line longer than BuildKit can read (64 KiB).
    pub const LINE_TOO_LONG: &str = "dockerfile::line-too-long";
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| p.span.offset());
    problems
}

/// Parse to the BuildKit-shaped AST. Errors: every problem found (the parser goes on
/// past a bad instruction; it stops only at a heredoc it cannot close).
pub fn parse_ast(source: &SourceFile) -> Result<Ast, FrontendError> {
    let out = parser::parse(source);
    if out.problems.is_empty() {
        Ok(out.ast)
    } else {
        Err(FrontendError::invalid(source, sorted(out.problems)))
    }
}

/// Parse to the typed syntax layer, reporting all problems (of both layers) at once as
/// [`FrontendError::Invalid`], ordered by position.
pub fn parse(source: &SourceFile) -> Result<BuildFile, FrontendError> {
    let out = parser::parse(source);
    let mut problems = out.problems;
    let file = instructions::build(source, out.ast, &mut problems);
    if problems.is_empty() {
        Ok(file)
    } else {
        Err(FrontendError::invalid(source, sorted(problems)))
    }
}
