//! The line-level parser: physical lines → logical lines → nodes, as BuildKit's
//! `parser.Parse` does it (directives, escapes, continuations, comments, heredocs).
//!
//! Unlike BuildKit, which stops at the first error, this keeps going past a bad
//! instruction and reports every problem; it stops only where the rest of the file
//! cannot be read meaningfully (a heredoc without its end).

use std::borrow::Cow;

use miette::SourceSpan;

use super::ast::{Ast, Attributes, Directive, Heredoc, Node, Warning, Word};
use super::codes;
use super::gostr::{is_space, to_lower, trim_space_range};
use super::heredoc::heredocs_from_line;
use super::line_parsers::{
    extract_flags, parse_health_config, parse_maybe_json, parse_maybe_json_to_list,
    parse_name_or_name_val, parse_name_val, parse_string, parse_strings_whitespace_delimited,
    LineError, Parsed, RawWord,
};
use crate::syntax::SourceFile;
use crate::Problem;

/// Go's `bufio.MaxScanTokenSize`: BuildKit cannot read longer physical lines.
const MAX_TOKEN: usize = 64 * 1024;

/// What the parser produced: the tree (of the instructions that parsed) and every
/// problem found.
pub(crate) struct Output {
    pub ast: Ast,
    pub problems: Vec<Problem>,
}

#[derive(Clone, Copy)]
struct PhysLine {
    start: usize,
    /// End of the content: the newline and any `\r` before it excluded.
    end: usize,
    /// Start of the next line (after the newline).
    next: usize,
}

struct Lines<'a> {
    text: &'a str,
    pos: usize,
    too_long: Option<usize>,
}

impl Lines<'_> {
    fn next_line(&mut self) -> Option<PhysLine> {
        let text = self.text;
        if self.pos >= text.len() {
            return None;
        }
        let start = self.pos;
        let rest = text.get(start..)?;
        let (raw_end, next, has_newline) = match rest.find('\n') {
            Some(i) => (start + i, start + i + 1, true),
            None => (text.len(), text.len(), false),
        };
        let len = next - start;
        if len > MAX_TOKEN || (!has_newline && len >= MAX_TOKEN) {
            self.too_long = Some(start);
            self.pos = text.len();
            return None;
        }
        self.pos = next;
        let content = text.get(start..raw_end).unwrap_or("");
        let end = start + content.trim_end_matches(['\r', '\n']).len();
        Some(PhysLine { start, end, next })
    }
}

/// Maps byte positions in a logical line back to the source.
pub(crate) struct LineMap<'a> {
    /// `(logical start, source start)` of each piece, in order.
    segs: &'a [(usize, usize)],
}

impl LineMap<'_> {
    fn seg_for(&self, p: usize) -> (usize, usize) {
        if let [only] = self.segs {
            return *only;
        }
        let i = self.segs.partition_point(|s| s.0 <= p);
        self.segs
            .get(i.saturating_sub(1))
            .copied()
            .unwrap_or((0, 0))
    }

    fn start(&self, p: usize) -> usize {
        let (l, s) = self.seg_for(p);
        s + (p - l.min(p))
    }

    fn end(&self, p: usize) -> usize {
        if p == 0 {
            return self.start(0);
        }
        let (l, s) = self.seg_for(p - 1);
        s + (p - 1 - l.min(p - 1)) + 1
    }

    /// The source span of logical bytes `lo..hi`.
    pub(crate) fn span(&self, lo: usize, hi: usize) -> SourceSpan {
        let start = self.start(lo);
        let end = if hi > lo {
            self.end(hi).max(start)
        } else {
            start
        };
        SourceSpan::new(start.into(), end - start)
    }

    fn word(&self, (value, lo, hi): RawWord) -> Word {
        Word {
            value,
            span: self.span(lo, hi),
        }
    }
}

#[derive(Default)]
struct DirectiveState {
    done: bool,
    seen: Vec<String>,
}

enum DirectiveLine {
    None,
    Found(String, String),
    Duplicate(String),
}

fn is_re_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ')
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` on the text after `#`.
fn match_directive(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first()?.is_ascii_alphabetic() {
        return None;
    }
    let mut i = 1;
    while b.get(i).is_some_and(u8::is_ascii_alphanumeric) {
        i += 1;
    }
    let name = s.get(..i)?;
    let after_name = s.get(i..)?.trim_start_matches(is_re_space);
    let after = after_name.strip_prefix('=')?;
    if after.is_empty() || after.contains('\n') {
        return None;
    }
    let body = after.trim_start_matches(is_re_space);
    let value = if body.is_empty() {
        // All whitespace: the lazy `.+?` still takes the last character.
        after.get(after.len() - 1..)?
    } else {
        body.trim_end_matches(is_re_space)
    };
    Some((name, value))
}

impl DirectiveState {
    fn parse_line(&mut self, token: &str) -> DirectiveLine {
        if self.done {
            return DirectiveLine::None;
        }
        let Some(rest) = token.strip_prefix('#') else {
            self.done = true;
            return DirectiveLine::None;
        };
        let Some((name, value)) = match_directive(rest.trim_start_matches(is_space)) else {
            self.done = true;
            return DirectiveLine::None;
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return DirectiveLine::None;
        }
        if self.seen.contains(&key) {
            return DirectiveLine::Duplicate(key);
        }
        self.seen.push(key.clone());
        DirectiveLine::Found(key, value.to_string())
    }
}

fn is_comment(s: &str) -> bool {
    s.trim_start_matches(is_space).starts_with('#')
}

/// BuildKit's line-continuation rule: the escape character, then only spaces or tabs,
/// at the end of the line, and not itself preceded by an escape character. Returns the
/// end of the kept text and whether the logical line ends here.
fn trim_continuation(text: &str, lo: usize, hi: usize, escape: char) -> (usize, bool) {
    let Some(s) = text.get(lo..hi) else {
        return (hi, true);
    };
    let t = s.trim_end_matches([' ', '\t']);
    let Some(before) = t.strip_suffix(escape) else {
        return (hi, true);
    };
    match before.chars().next_back() {
        None => (lo, false),
        Some(c) if c == escape => (hi, true),
        Some(_) => (lo + before.len(), false),
    }
}

fn problem(
    code: &'static str,
    message: impl Into<String>,
    span: SourceSpan,
    label: &str,
    help: Option<&str>,
) -> Problem {
    let p = Problem::new(code, message, span).label(label);
    match help {
        Some(h) => p.help(h),
        None => p,
    }
}

fn line_problem(e: LineError, map: &LineMap<'_>) -> Problem {
    problem(e.code, e.message, map.span(e.lo, e.hi), e.label, e.help)
}

/// The instructions BuildKit dispatches on, lowercased.
const KEYWORDS: &[&str] = &[
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// The keyword lowercased as Go's `strings.ToLower` does, without allocating for the
/// known instructions.
fn keyword(value: &str) -> Cow<'static, str> {
    if let Some(k) = KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(value)) {
        return Cow::Borrowed(k);
    }
    let lower = to_lower(value);
    match KEYWORDS.iter().find(|k| **k == lower) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(lower),
    }
}

/// One instruction of `line[lo..hi]`, without its ONBUILD trigger; the second value is
/// where the trigger's text starts, for ONBUILD.
fn single_node(
    line: &str,
    lo: usize,
    hi: usize,
    map: &LineMap<'_>,
    escape: char,
) -> Result<(Node, Option<usize>), LineError> {
    let (tlo, thi) = trim_space_range(line, lo, hi);
    let s = line.get(tlo..thi).unwrap_or("");
    let (cmd_hi, args_lo) = match s.find(super::gostr::is_blank) {
        Some(i) => {
            let j = s[i..]
                .find(|c| !super::gostr::is_blank(c))
                .map_or(s.len(), |k| i + k);
            (tlo + i, Some(tlo + j))
        }
        None => (thi, None),
    };
    let keyword = keyword(line.get(tlo..cmd_hi).unwrap_or(""));
    let (flags, alo, ahi) = match args_lo {
        Some(a) => {
            let (flags, rest) = extract_flags(line, a, thi, escape);
            let (alo, ahi) = match rest {
                Some(r) => trim_space_range(line, r, thi),
                None => (thi, thi),
            };
            (flags, alo, ahi)
        }
        None => (Vec::new(), thi, thi),
    };
    let mut sub = None;
    let parsed = match &*keyword {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(line, alo, ahi)?,
        "arg" => parse_name_or_name_val(line, alo, ahi, escape),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(line, alo, ahi)?,
        "env" => parse_name_val(line, alo, ahi, "ENV", escape)?,
        "label" => parse_name_val(line, alo, ahi, "LABEL", escape)?,
        "expose" | "from" => parse_strings_whitespace_delimited(line, alo, ahi),
        "healthcheck" => parse_health_config(line, alo, ahi)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => parse_string(line, alo, ahi),
        "onbuild" => {
            if alo < ahi {
                sub = Some(alo);
            }
            Parsed::default()
        }
        // Unknown instructions keep one empty argument, as BuildKit's parseIgnore does.
        _ => Parsed {
            words: vec![(String::new(), alo, alo)],
            json: false,
        },
    };
    let node = Node {
        keyword,
        keyword_span: map.span(tlo, cmd_hi),
        flags: flags.into_iter().map(|w| map.word(w)).collect(),
        next: parsed.words.into_iter().map(|w| map.word(w)).collect(),
        child: None,
        attributes: Attributes { json: parsed.json },
        heredocs: Vec::new(),
        // The whole line is moved in by the caller.
        original: if lo == 0 && hi == line.len() {
            String::new()
        } else {
            line.get(lo..hi).unwrap_or("").to_string()
        },
        span: map.span(tlo, thi),
        start_line: 0,
        end_line: 0,
        prev_comment: Vec::new(),
    };
    Ok((node, sub))
}

/// BuildKit's `newNodeFromLine`, without recursion for `ONBUILD ONBUILD ...`.
fn build_node(line: &str, map: &LineMap<'_>, escape: char) -> Result<Node, LineError> {
    let hi = line.len();
    let (first, mut sub) = single_node(line, 0, hi, map, escape)?;
    if sub.is_none() {
        return Ok(first);
    }
    let mut chain = vec![first];
    while let Some(lo) = sub {
        let (node, next) = single_node(line, lo, hi, map, escape)?;
        chain.push(node);
        sub = next;
    }
    let mut nodes = chain.into_iter().rev();
    let mut acc = nodes.next();
    for mut parent in nodes {
        parent.child = acc.map(Box::new);
        acc = Some(parent);
    }
    acc.ok_or(LineError {
        code: codes::UNKNOWN_INSTRUCTION,
        message: "empty instruction".into(),
        label: "here",
        help: None,
        lo: 0,
        hi: 0,
    })
}

/// Whether heredocs on this node's line are read (RUN, COPY, ADD in shell form, or an
/// ONBUILD of one of those).
fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.child, &*node.keyword) {
        (Some(child), "onbuild") => child,
        _ => node,
    };
    matches!(&*target.keyword, "add" | "copy" | "run") && !target.attributes.json
}

/// Parses a whole file.
pub(crate) fn parse(source: &SourceFile) -> Output {
    let text: &str = &source.text;
    let mut lines = Lines {
        text,
        pos: 0,
        too_long: None,
    };
    let mut escape = '\\';
    let mut dirs = DirectiveState::default();
    let mut directives = Vec::new();
    let mut problems = Vec::new();
    let mut children: Vec<Node> = Vec::with_capacity(text.matches('\n').count() + 1);
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut segs: Vec<(usize, usize)> = Vec::new();
    let mut line_no = 0usize;
    let mut first = true;

    'lines: while let Some(mut phys) = lines.next_line() {
        if first {
            first = false;
            if text
                .get(phys.start..)
                .is_some_and(|t| t.starts_with('\u{feff}'))
            {
                phys.start += '\u{feff}'.len_utf8();
                phys.end = phys.end.max(phys.start);
            }
        }
        let raw = text.get(phys.start..phys.end).unwrap_or("");
        let comment_line = is_comment(raw);
        if comment_line {
            let mut chars = raw.chars();
            chars.next();
            let comment = chars.as_str().trim_matches(is_space);
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        let tok_lo = phys.start + (raw.len() - raw.trim_start_matches(is_space).len());
        let tok_span = SourceSpan::new(tok_lo.into(), phys.end - tok_lo);
        match dirs.parse_line(text.get(tok_lo..phys.end).unwrap_or("")) {
            DirectiveLine::None => {}
            DirectiveLine::Found(name, value) => {
                comments.pop();
                if name == "escape" {
                    match value.as_str() {
                        "`" => escape = '`',
                        "\\" => escape = '\\',
                        _ => problems.push(problem(
                            codes::BAD_DIRECTIVE,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                            tok_span,
                            "not an escape character",
                            Some("the escape character can only be `\\` or `` ` ``"),
                        )),
                    }
                }
                directives.push(Directive {
                    name,
                    value,
                    span: tok_span,
                    line: line_no + 1,
                });
            }
            DirectiveLine::Duplicate(name) => problems.push(problem(
                codes::BAD_DIRECTIVE,
                format!("only one {name} parser directive can be used"),
                tok_span,
                "repeated directive",
                Some("remove one of the two"),
            )),
        }
        line_no += 1;
        let start_line = line_no;
        let tok_hi = if comment_line { tok_lo } else { phys.end };
        let (seg_hi, mut end_of_line) = trim_continuation(text, tok_lo, tok_hi, escape);
        if end_of_line && seg_hi == tok_lo {
            continue;
        }
        segs.clear();
        segs.push((0, tok_lo));
        let mut line = String::with_capacity(phys.end - tok_lo);
        line.push_str(text.get(tok_lo..seg_hi).unwrap_or(""));
        let mut last_end = phys.end;
        let mut has_empty_continuation = false;
        while !end_of_line {
            let Some(next) = lines.next_line() else {
                break;
            };
            line_no += 1;
            last_end = next.end;
            let raw = text.get(next.start..next.end).unwrap_or("");
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start_matches(is_space).is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (hi, eol) = trim_continuation(text, next.start, next.end, escape);
            end_of_line = eol;
            segs.push((line.len(), next.start));
            line.push_str(text.get(next.start..hi).unwrap_or(""));
        }

        let map = LineMap { segs: &segs };
        let node_start = map.start(trim_space_range(&line, 0, line.len()).0);
        if has_empty_continuation {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {line}"),
                span: SourceSpan::new(node_start.into(), last_end.saturating_sub(node_start)),
                line: line_no,
            });
        }
        let mut node = match build_node(&line, &map, escape) {
            Ok(node) => node,
            Err(e) => {
                problems.push(line_problem(e, &map));
                comments.clear();
                continue;
            }
        };
        node.original = line;
        let line = node.original.as_str();

        if can_contain_heredoc(&node) && line.contains("<<") {
            let docs = match heredocs_from_line(line) {
                Ok(docs) => docs,
                Err((message, lo, hi)) => {
                    problems.push(problem(
                        codes::BAD_HEREDOC,
                        message,
                        map.span(lo, hi),
                        "cannot read this heredoc delimiter",
                        Some("quote the whole delimiter, e.g. <<'EOF'"),
                    ));
                    break 'lines;
                }
            };
            for (found, lo, hi) in docs {
                let mut content = String::new();
                let mut terminated = false;
                while let Some(body) = lines.next_line() {
                    line_no += 1;
                    last_end = body.end;
                    let mut candidate = text.get(body.start..body.end).unwrap_or("");
                    if found.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == found.name {
                        terminated = true;
                        break;
                    }
                    // Keep the physical line as read, line ending included.
                    content.push_str(text.get(body.start..body.next).unwrap_or(""));
                }
                if !terminated {
                    problems.push(problem(
                        codes::UNTERMINATED_HEREDOC,
                        "unterminated heredoc",
                        map.span(lo, hi),
                        "this heredoc is never closed",
                        Some(&format!(
                            "end it with a line containing only `{}`",
                            found.name
                        )),
                    ));
                    break 'lines;
                }
                node.heredocs.push(Heredoc {
                    name: found.name,
                    file_descriptor: found.file_descriptor,
                    expand: found.expand,
                    chomp: found.chomp,
                    content,
                    span: map.span(lo, hi),
                });
            }
        }

        node.start_line = start_line;
        node.end_line = line_no;
        node.span = SourceSpan::new(node_start.into(), last_end.saturating_sub(node_start));
        node.prev_comment = std::mem::take(&mut comments);
        if let Some(child) = node.child.as_deref_mut() {
            child.start_line = start_line;
            child.end_line = line_no;
        }
        children.push(node);
    }

    if let Some(at) = lines.too_long {
        let width = text
            .get(at..)
            .and_then(|t| t.chars().next())
            .map_or(0, char::len_utf8);
        problems.push(problem(
            codes::LINE_TOO_LONG,
            format!(
                "dockerfile line greater than max allowed size of {}",
                MAX_TOKEN - 1
            ),
            SourceSpan::new(at.into(), width),
            "this line is too long",
            Some("split it with line continuations"),
        ));
    }
    if children.is_empty() && problems.is_empty() {
        problems.push(problem(
            codes::NO_INSTRUCTIONS,
            "file with no instructions",
            SourceSpan::new(0.into(), 0),
            "no instruction in this file",
            Some("a Dockerfile needs at least a FROM instruction"),
        ));
    }
    let start_line = children.first().map_or(0, |n| n.start_line);
    let end_line = children.last().map_or(0, |n| n.end_line);
    Output {
        ast: Ast {
            children,
            directives,
            escape,
            warnings,
            start_line,
            end_line,
        },
        problems,
    }
}
