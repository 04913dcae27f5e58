//! The Dockerfile syntax tree, shaped like BuildKit's `parser.Node`, plus byte spans.
//!
//! One [`Node`] per instruction. Where BuildKit chains the arguments through `Next`,
//! a node here has [`Node::next`], a list of [`Word`]s; where BuildKit nests the
//! trigger of an `ONBUILD` in `Next.Children[0]`, a node here has [`Node::child`].
//! [`dump`] prints the tree in BuildKit's `Node.Dump` format.

use std::borrow::Cow;

use miette::SourceSpan;

use super::gostr::{is_blank, is_space, quote_into, trim_space_range};

/// A parsed Dockerfile: its instructions, in order.
#[derive(Debug, Clone)]
pub struct Ast {
    /// One node per instruction.
    pub children: Vec<Node>,
    /// Parser directives found at the top of the file, in order.
    pub directives: Vec<Directive>,
    /// The escape character in effect: `\` unless `# escape=` chose `` ` ``.
    pub escape: char,
    /// Things BuildKit accepts but warns about (empty continuation lines).
    pub warnings: Vec<Warning>,
    /// 1-based line of the first instruction (0 when there is none).
    pub start_line: usize,
    /// 1-based line where the last instruction ends (0 when there is none).
    pub end_line: usize,
}

/// A parser directive (`# syntax=...`, `# escape=...`, `# check=...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The directive's name, lowercased.
    pub name: String,
    /// Its value, as written (surrounding whitespace removed).
    pub value: String,
    /// The directive's line.
    pub span: SourceSpan,
    /// Its 1-based line number.
    pub line: usize,
}

/// A warning about input BuildKit accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's message.
    pub message: String,
    /// The instruction it is about.
    pub span: SourceSpan,
    /// The 1-based line BuildKit reports it on (the last line of the instruction).
    pub line: usize,
}

/// One word of an instruction (an argument or a flag), with where it came from.
///
/// The value is what BuildKit's parser produced for that position (JSON strings are
/// decoded, flag quotes removed, other words kept as written); the span covers the
/// source text it came from, across line continuations if it spans them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The text.
    pub value: String,
    /// Where it is in the source file.
    pub span: SourceSpan,
}

/// Special properties of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attributes {
    /// The arguments were written as a JSON array (exec form).
    pub json: bool,
}

/// A heredoc attached to an instruction, with its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The file descriptor number written before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u64,
    /// False when the delimiter was (partly) quoted: no expansion in the body.
    pub expand: bool,
    /// True for `<<-`: leading tabs are to be stripped from the body.
    pub chomp: bool,
    /// The body as written: every line up to the delimiter line, newlines included,
    /// leading tabs NOT yet stripped.
    pub content: String,
    /// The `<<EOF` word on the instruction line.
    pub span: SourceSpan,
}

/// One instruction.
#[derive(Debug, Clone)]
pub struct Node {
    /// The keyword lowercased (`run`, `copy`, ...), the way BuildKit dispatches on it
    /// (as written is [`Node::value`]).
    pub keyword: Cow<'static, str>,
    /// Where the keyword is.
    pub keyword_span: SourceSpan,
    /// Leading `--flag[=value]` words, quotes and escapes removed, in order.
    pub flags: Vec<Word>,
    /// The arguments, as BuildKit's per-instruction line parser split them.
    pub next: Vec<Word>,
    /// For `ONBUILD`: the trigger instruction.
    pub child: Option<Box<Node>>,
    /// Attributes such as the exec (JSON) form.
    pub attributes: Attributes,
    /// Heredocs (RUN, COPY, ADD, and an ONBUILD of one of those).
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined, comments dropped) as BuildKit keeps it.
    pub original: String,
    /// From the first character of the keyword to the end of the instruction's last
    /// physical line (heredoc bodies included).
    pub span: SourceSpan,
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line (heredoc bodies and skipped continuation lines included).
    pub end_line: usize,
    /// The comment lines just before the instruction (without `#`).
    pub prev_comment: Vec<String>,
}

impl Drop for Node {
    /// `ONBUILD ONBUILD ...` can nest thousands deep; drop the chain without recursion.
    fn drop(&mut self) {
        let mut next = self.child.take();
        while let Some(mut node) = next {
            next = node.child.take();
        }
    }
}

impl Node {
    /// The instruction keyword as written (`Run`, `COPY`, ...): BuildKit's `Node.Value`.
    pub fn value(&self) -> &str {
        let line = self.original.trim_matches(is_space);
        line.split(is_blank).next().unwrap_or("")
    }

    /// The node in BuildKit's `Node.Dump` format, e.g. `copy ["--from=a"] "x" "/y"`
    /// (without the surrounding parentheses the root adds).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut depth = 0;
        let mut node = self;
        loop {
            let start = out.len();
            out.push_str(&node.keyword);
            if !node.flags.is_empty() {
                out.push_str(" [");
                for (i, f) in node.flags.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    quote_into(&mut out, &f.value);
                }
                out.push(']');
            }
            for w in &node.next {
                out.push(' ');
                quote_into(&mut out, &w.value);
            }
            // Go trims each node's dump; only an empty keyword leaves a leading space.
            let (lo, hi) = trim_space_range(&out, start, out.len());
            if lo > start || hi < out.len() {
                let trimmed = out[lo..hi].to_string();
                out.truncate(start);
                out.push_str(&trimmed);
            }
            match &node.child {
                Some(child) => {
                    out.push_str(" (");
                    depth += 1;
                    node = child;
                }
                None => break,
            }
        }
        for _ in 0..depth {
            out.push(')');
        }
        out
    }
}

/// The whole tree in BuildKit's dump format: one `(instruction ...)` line per
/// instruction, lines joined with `\n`, no newline after the last (BuildKit's tests
/// compare `dump + "\n"` with their `result` files).
pub fn dump(ast: &Ast) -> String {
    let mut out = String::new();
    for (i, node) in ast.children.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push('(');
        out.push_str(&node.dump());
        out.push(')');
    }
    out
}
