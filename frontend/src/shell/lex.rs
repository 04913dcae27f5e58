//! The scanner behind [`Lexer`]: one pass over a word with a cursor, recursing into
//! `${...}` bodies.

use std::collections::BTreeSet;

use super::pattern;
use super::unicode::{is_digit, is_letter, is_space};
use super::{Env, Lexer, Lookup, ShellError};

/// How deeply `${...}` may nest before the word is rejected (BuildKit has no limit;
/// ours keeps the recursion far from the end of a thread's stack).
pub(super) const MAX_NESTING: usize = 64;

const MISSING_BRACE: &str = "syntax error: missing '}'";

/// Words being split out of the expanded text, the way BuildKit's word splitter does:
/// unquoted whitespace (literal or from an expansion) ends a word; quoted text, escaped
/// characters and heredoc markers never split; empty words are dropped.
#[derive(Debug, Default)]
pub(super) struct Words {
    done: Vec<String>,
    current: String,
}

impl Words {
    /// A character that splits on whitespace.
    fn split_char(&mut self, c: char) {
        if is_space(c) {
            if !self.current.is_empty() {
                self.done.push(std::mem::take(&mut self.current));
            }
        } else {
            self.current.push(c);
        }
    }

    /// Text that splits on whitespace.
    fn split_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.split_char(c));
    }

    /// Text kept whole.
    fn raw(&mut self, s: &str) {
        self.current.push_str(s);
    }

    /// A character kept whole.
    fn raw_char(&mut self, c: char) {
        self.current.push(c);
    }

    /// The finished list of words.
    pub(super) fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// One expansion of one word.
pub(super) struct Scan<'a> {
    src: &'a str,
    pos: usize,
    lexer: &'a Lexer,
    env: &'a dyn Env,
    /// Names found set.
    pub(super) used: BTreeSet<String>,
    /// Names whose value is unknown.
    pub(super) unknown: BTreeSet<String>,
}

fn error(message: impl Into<String>, offset: usize) -> ShellError {
    ShellError {
        message: message.into(),
        offset,
    }
}

impl<'a> Scan<'a> {
    pub(super) fn new(src: &'a str, lexer: &'a Lexer, env: &'a dyn Env) -> Self {
        // Like Go's text/scanner, which BuildKit reads words with: a BOM that starts the
        // word is not part of it.
        let pos = if src.starts_with('\u{FEFF}') {
            '\u{FEFF}'.len_utf8()
        } else {
            0
        };
        Scan {
            src,
            pos,
            lexer,
            env,
            used: BTreeSet::new(),
            unknown: BTreeSet::new(),
        }
    }

    /// Expands the whole word; `words` (if given) receives the split words.
    pub(super) fn run(&mut self, words: Option<&mut Words>) -> Result<String, ShellError> {
        self.until(None, self.lexer.raw_escapes, words, 0)
    }

    fn peek(&self) -> Option<char> {
        self.src
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Lookup::Set(value) => {
                self.used.insert(name.to_string());
                Some(value)
            }
            Lookup::Unset => None,
            Lookup::Unknown => {
                self.unknown.insert(name.to_string());
                None
            }
        }
    }

    /// Expands text up to `stop` (consumed) or, without one, to the end of the word.
    /// `raw_escapes` keeps escape characters in the output (as BuildKit does inside
    /// patterns so that `\*` still means a literal star there).
    fn until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        mut words: Option<&mut Words>,
        depth: usize,
    ) -> Result<String, ShellError> {
        let mut out = String::new();
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.bump();
                return Ok(out);
            }
            match c {
                '$' => {
                    let value = self.dollar(depth)?;
                    if let Some(w) = words.as_deref_mut() {
                        w.split_str(&value);
                    }
                    out.push_str(&value);
                }
                '<' => {
                    let marker = self.heredoc_marker();
                    if let Some(w) = words.as_deref_mut() {
                        w.raw(&marker);
                    }
                    out.push_str(&marker);
                }
                '\'' if quotes => {
                    let text = self.single_quoted()?;
                    if let Some(w) = words.as_deref_mut() {
                        w.raw(&text);
                    }
                    out.push_str(&text);
                }
                '"' if quotes => {
                    let text = self.double_quoted(raw_escapes, depth)?;
                    if let Some(w) = words.as_deref_mut() {
                        w.raw(&text);
                    }
                    out.push_str(&text);
                }
                _ => {
                    self.bump();
                    if c == self.lexer.escape {
                        if raw_escapes {
                            if let Some(w) = words.as_deref_mut() {
                                w.raw_char(c);
                            }
                            out.push(c);
                        }
                        // An escape at the very end escapes nothing and is dropped.
                        let Some(escaped) = self.bump() else { break };
                        if let Some(w) = words.as_deref_mut() {
                            w.raw_char(escaped);
                        }
                        out.push(escaped);
                    } else {
                        if let Some(w) = words.as_deref_mut() {
                            w.split_char(c);
                        }
                        out.push(c);
                    }
                }
            }
        }
        match stop {
            Some(stop) => Err(error(
                format!("unexpected end of statement while looking for matching {stop}"),
                self.pos,
            )),
            None => Ok(out),
        }
    }

    /// `'...'`: everything literal, no escapes.
    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => {
                    return Err(error(
                        "unexpected end of statement while looking for matching single-quote",
                        start,
                    ))
                }
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character escapes only `"`, `$` and itself and
    /// is kept literally before anything else.
    fn double_quoted(&mut self, raw_escapes: bool, depth: usize) -> Result<String, ShellError> {
        let start = self.pos;
        self.bump();
        let escape = self.lexer.escape;
        let mut out = String::new();
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(error(
                        "unexpected end of statement while looking for matching double-quote",
                        start,
                    ))
                }
                Some('"') => {
                    self.bump();
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar(depth)?;
                    out.push_str(&value);
                }
                Some(c) => {
                    self.bump();
                    if c != escape {
                        out.push(c);
                        continue;
                    }
                    if raw_escapes {
                        out.push(c);
                    }
                    match self.peek() {
                        // Dropped; the loop then reports the missing quote.
                        None => {}
                        Some(n) if n == '"' || n == '$' || n == escape => {
                            self.bump();
                            out.push(n);
                        }
                        Some(_) => out.push(c),
                    }
                }
            }
        }
    }

    /// `<<` (plus following blanks) is kept together so a heredoc marker stays one word.
    fn heredoc_marker(&mut self) -> String {
        self.bump();
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.bump();
        let mut marker = "<<".to_string();
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            self.bump();
            marker.push(c);
        }
        marker
    }

    /// A parameter name: a run of letters, digits and `_`; a run of digits (positional
    /// parameter); or one special parameter character. Empty if none is there.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() {
                if is_digit(c) {
                    while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                        self.bump();
                        name.push(d);
                    }
                    return name;
                }
                if matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                    self.bump();
                    return c.to_string();
                }
            }
            if !(is_letter(c) || is_digit(c) || c == '_') {
                break;
            }
            self.bump();
            name.push(c);
        }
        name
    }

    /// `$name`, `${name}` or `${name<op>...}`, with the cursor on the `$`.
    fn dollar(&mut self, depth: usize) -> Result<String, ShellError> {
        let start = self.pos;
        self.bump();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }
        self.bump();
        match self.peek() {
            None => return Err(error(MISSING_BRACE, start)),
            Some('{' | '}' | ':') => return Err(error("syntax error: bad substitution", start)),
            Some(_) => {}
        }
        if depth >= MAX_NESTING {
            return Err(error(
                format!("substitutions nested more than {MAX_NESTING} deep"),
                start,
            ));
        }
        let name = self.name();
        match self.bump() {
            // BuildKit says "unsupported modifier (\u{FFFD})" here.
            None => Err(error(MISSING_BRACE, start)),
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.lexer.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some('/') => self.replacement(start, &name, depth),
            Some(c @ (':' | '+' | '-' | '?' | '#' | '%')) => self.modifier(start, &name, c, depth),
            Some(c) => Err(unsupported(&c.to_string(), start)),
        }
    }

    /// `${name<op>word}` with `op` one of `-`, `+`, `?`, `#`, `##`, `%`, `%%`, or `:`
    /// followed by `-`, `+` or `?`; `first` is the character after the name.
    fn modifier(
        &mut self,
        start: usize,
        name: &str,
        first: char,
        depth: usize,
    ) -> Result<String, ShellError> {
        let colon = first == ':';
        let op = if colon { self.bump() } else { Some(first) };
        let mut op_text = String::new();
        if colon {
            op_text.push(':');
        }
        op_text.extend(op);
        let trim = matches!(op, Some('#' | '%'));
        if colon && trim {
            return Err(unsupported(&op_text, start));
        }
        // Patterns keep their escapes so `\*` can stay a literal star.
        let word = self
            .until(Some('}'), trim, None, depth + 1)
            .map_err(|e| self.or_at_end(e, MISSING_BRACE, start))?;
        let value = self.lookup(name);
        if value.is_none() && self.lexer.skip_unset_env {
            return Ok(format!("${{{name}{op_text}{word}}}"));
        }
        let empty = |v: &Option<String>| v.as_deref().is_none_or(|v| colon && v.is_empty());
        match op {
            Some('-') => Ok(if empty(&value) {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if empty(&value) { String::new() } else { word }),
            Some('?') => match value {
                Some(v) if !(colon && v.is_empty()) => Ok(v),
                value => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_string()
                    } else {
                        "is not allowed to be empty".to_string()
                    };
                    Err(error(format!("{name}: {message}"), start))
                }
            },
            Some(c @ ('#' | '%')) => {
                let (greedy, pat) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let value = value.unwrap_or_default();
                let trimmed = if c == '#' {
                    pattern::trim_prefix(pat, &value, greedy)
                } else {
                    pattern::trim_suffix(pat, &value, greedy)
                };
                trimmed.map_err(|e| invalid_pattern(pat, &e, start))
            }
            _ => Err(unsupported(&op_text, start)),
        }
    }

    /// `${name/pattern/replacement}` or `${name//pattern/replacement}`, with the cursor
    /// after the first `/`.
    fn replacement(
        &mut self,
        start: usize,
        name: &str,
        depth: usize,
    ) -> Result<String, ShellError> {
        let all = self.peek() == Some('/');
        if all {
            self.bump();
        }
        let pat = self
            .until(Some('/'), true, None, depth + 1)
            .map_err(|e| self.or_at_end(e, "syntax error: missing '/' in ${}", start))?;
        let replacement = self
            .until(Some('}'), true, None, depth + 1)
            .map_err(|e| self.or_at_end(e, MISSING_BRACE, start))?;
        let value = self.lookup(name);
        if value.is_none() && self.lexer.skip_unset_env {
            // BuildKit writes a single `/` here even for `//`.
            let slashes = if all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pat}/{replacement}}}"));
        }
        pattern::replace(&pat, &value.unwrap_or_default(), &replacement, all)
            .map_err(|e| invalid_pattern(&pat, &e, start))
    }

    /// An error inside a `${...}` body that ran to the end of the word is reported as
    /// the body's missing terminator instead.
    fn or_at_end(&self, inner: ShellError, message: &str, start: usize) -> ShellError {
        if self.at_end() {
            error(message, start)
        } else {
            inner
        }
    }
}

fn unsupported(op: &str, offset: usize) -> ShellError {
    error(
        format!("unsupported modifier ({op}) in substitution"),
        offset,
    )
}

fn invalid_pattern(pat: &str, reason: &str, offset: usize) -> ShellError {
    error(
        format!("invalid pattern ({pat}) in substitution: {reason}"),
        offset,
    )
}
