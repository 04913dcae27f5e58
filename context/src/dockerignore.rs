//! `.dockerignore` patterns with docker's semantics (moby/patternmatcher).
//!
//! # Why a matcher of our own
//!
//! Docker's rules are *not* gitignore's, so the `ignore` and `globset` crates do
//! not fit: in a `.dockerignore` a pattern is always anchored at the context root
//! (`foo` does not match `a/foo`), there is no "trailing `/` means directories
//! only", `**` may appear inside a component (`a**b`), a pattern excludes
//! everything below a path it matches, and the last matching pattern (plain or
//! `!` exception) wins. The meaning of a pattern is whatever patternmatcher does
//! with it, down to its quirks, so this module follows its algorithm step by step
//! (learned from the Go source; none of it is copied):
//!
//! 1. Reading a file ([`parse_ignore_file`], `ignorefile.ReadAll`): a UTF-8 BOM is
//!    dropped; a line whose *first character* is `#` is a comment (an indented
//!    `#` is a pattern); whitespace around a pattern (and after a `!`) is trimmed;
//!    blank lines go; the pattern is `filepath.Clean`ed and a leading `/` dropped.
//! 2. Compiling ([`PatternMatcher::new`], `patternmatcher.New`): trimmed and
//!    cleaned again; a leading `!` makes an exception (a lone `!` is an error);
//!    the pattern must be valid for Go's `filepath.Match`. Then it is classified
//!    like patternmatcher's `compile`: *exact* (no special characters: string
//!    equality), *prefix* (`dir/**`: string prefix `dir/`), *suffix* (`**/x`: the
//!    path ends with `/x` or is `x`), or *regexp*: `*` → `[^/]*`, `?` → `[^/]`,
//!    `**/` and inner `**` → `(.*/)?`, trailing `**` → `.*`, `\c` → `\c`, `[`/`]`
//!    passed through, `.+()|{}$` escaped, the rest literal (`^` included, which Go's
//!    regexp then reads as an anchor). Forge builds that same regexp text and runs
//!    it with a small RE2-compatible engine (a Thompson NFA: linear time, no
//!    backtracking), so even odd patterns such as `[*]` (Go's `[[^/]*]`) behave as
//!    in docker. The few regexp constructs this engine does not implement (POSIX
//!    classes `[[:alpha:]]`, Perl classes like `\d`, `\pL`) are refused as invalid
//!    patterns instead of being matched differently; so are patterns whose regexp Go
//!    would reject at match time (e.g. a reversed range `[l-O]`), which docker only
//!    reports mid-build.
//! 3. Matching ([`PatternMatcher::matches_using_parent_results`]): patterns are
//!    tried in order; an exception is only tried while the path is excluded and a
//!    plain pattern only while it is not; a pattern that matched a parent directory
//!    counts as matching. So `docs` then `!docs/README.md` keeps only the README
//!    of `docs/`.

use std::fmt;

use crate::gomatch::{clean, go_match};

/// Why a pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The index of the pattern in the list given to [`PatternMatcher::new`].
    pub index: usize,
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchType {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    match_type: MatchType,
    regexp: Option<Nfa>,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception (it re-includes what it matches).
    pub fn is_exception(&self) -> bool {
        self.exclusion
    }

    /// The pattern without a trailing `/**` or `/*` (fsutil's
    /// `patternWithoutTrailingGlob`), used to decide which excluded directories an
    /// exception could reach into.
    pub fn without_trailing_glob(&self) -> &str {
        let p = self.cleaned.as_str();
        let p = p.strip_suffix("/**").unwrap_or(p);
        p.strip_suffix("/*").unwrap_or(p)
    }

    fn compile(text: &str, exclusion: bool) -> Result<Self, String> {
        let (match_type, regex) = translate(text);
        let regexp = match match_type {
            MatchType::Regexp => Some(Nfa::compile(&regex)?),
            _ => None,
        };
        Ok(Self {
            cleaned: text.to_string(),
            exclusion,
            match_type,
            regexp,
        })
    }

    /// Whether `path` (relative, `/`-separated, cleaned) matches this pattern on
    /// its own (no parent-directory rule).
    pub fn matches(&self, path: &str) -> bool {
        match self.match_type {
            MatchType::Exact => path == self.cleaned,
            MatchType::Prefix => {
                let prefix = &self.cleaned[..self.cleaned.len().saturating_sub(2)];
                path.starts_with(prefix)
            }
            MatchType::Suffix => {
                let suffix = &self.cleaned[2..];
                if path.ends_with(suffix) {
                    return true;
                }
                // `**/foo` matches `foo`.
                suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchType::Regexp => self.regexp.as_ref().is_some_and(|re| re.is_match(path)),
        }
    }
}

/// patternmatcher's `compile`: the match type, and the regexp text (without the
/// `^`/`$` anchors) when the type is [`MatchType::Regexp`].
fn translate(pattern: &str) -> (MatchType, String) {
    let chars: Vec<char> = pattern.chars().collect();
    let mut re = String::new();
    let mut kind = MatchType::Exact;
    let mut pos = 0;
    let mut iteration = 0;
    while pos < chars.len() {
        let ch = chars[pos];
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos >= chars.len() {
                    if kind == MatchType::Exact {
                        kind = MatchType::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchType::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = MatchType::Regexp;
                }
                if iteration == 0 {
                    kind = MatchType::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = MatchType::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                kind = MatchType::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if let Some(&next) = chars.get(pos) {
                    pos += 1;
                    re.push('\\');
                    re.push(next);
                    kind = MatchType::Regexp;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = MatchType::Regexp;
            }
            _ => re.push(ch),
        }
        iteration += 1;
    }
    (kind, re)
}

/// The parent-match state of a directory, handed to its children
/// (patternmatcher's `MatchInfo`). [`MatchInfo::default`] means "unknown": the
/// parents are then matched from the path itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of patterns, plain and `!` exceptions.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles `patterns` in order (patternmatcher's `New`): each is trimmed and
    /// cleaned, empty ones are dropped, a leading `!` makes an exception.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut pm = PatternMatcher::default();
        for (index, given) in patterns.iter().enumerate() {
            let err = |reason: String| PatternError {
                index,
                pattern: given.as_ref().to_string(),
                reason,
            };
            let trimmed = given.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut p = clean(trimmed);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(err("illegal exclusion pattern: \"!\"".into()));
                }
                exclusion = true;
                p = rest.to_string();
                pm.exclusions = true;
            }
            if go_match(&p, ".").is_err() {
                return Err(err("syntax error in pattern".into()));
            }
            pm.patterns
                .push(Pattern::compile(&p, exclusion).map_err(err)?);
        }
        Ok(pm)
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is a `!` exception.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether `path` is excluded, matching each pattern against the path and
    /// every parent directory of it (patternmatcher's `MatchesOrParentMatches`).
    pub fn matches_or_parent_matches(&self, path: &str) -> bool {
        self.matches_using_parent_results(path, &MatchInfo::default())
            .0
    }

    /// Whether `path` is excluded, given its parent directory's [`MatchInfo`]
    /// (patternmatcher's `MatchesUsingParentResults`). Returns the path's own
    /// `MatchInfo` for its children.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let known =
            parent.parent_matched.len() == self.patterns.len() && !parent.parent_matched.is_empty();
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = known && parent.parent_matched[i];
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path);
                if !hit && !known {
                    hit = parent_dirs(path).any(|dir| pattern.matches(dir));
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (
            matched,
            MatchInfo {
                parent_matched: info,
            },
        )
    }
}

/// The proper parent directories of `path`, shortest first (`a`, `a/b` for
/// `a/b/c`).
fn parent_dirs(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .map(move |(i, _)| &path[..i])
        .filter(|p| !p.is_empty())
}

/// One pattern line of an ignore file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoreLine {
    /// The pattern as patternmatcher receives it (`!`, cleaned, no leading `/`).
    pub pattern: String,
    /// The 1-based line number.
    pub line: usize,
    /// The byte range of the line's text (after trimming) in the file.
    pub span: (usize, usize),
}

/// Reads the patterns of an ignore file's text (`ignorefile.ReadAll`).
pub fn parse_ignore_file(text: &str) -> Vec<IgnoreLine> {
    let mut out = Vec::new();
    let mut offset = 0;
    for (n, raw) in text.split('\n').enumerate() {
        let line_start = offset;
        offset += raw.len() + 1;
        let mut line = raw.strip_suffix('\r').unwrap_or(raw);
        let mut start = line_start;
        if n == 0 {
            if let Some(rest) = line.strip_prefix('\u{FEFF}') {
                line = rest;
                start += 3;
            }
        }
        if line.starts_with('#') {
            continue;
        }
        let trimmed = line.trim_start();
        start += line.len() - trimmed.len();
        let trimmed = trimmed.trim_end();
        if trimmed.is_empty() {
            continue;
        }
        let span = (start, start + trimmed.len());
        let (invert, body) = match trimmed.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, trimmed),
        };
        let mut pattern = String::new();
        if !body.is_empty() {
            pattern = clean(body);
            if pattern.len() > 1 {
                if let Some(rest) = pattern.strip_prefix('/') {
                    pattern = rest.to_string();
                }
            }
        }
        if invert {
            pattern.insert(0, '!');
        }
        out.push(IgnoreLine {
            pattern,
            line: n + 1,
            span,
        });
    }
    out
}

// ---- a small RE2-compatible engine for the regexps `translate` produces ----

#[derive(Debug, Clone)]
enum CharSet {
    Lit(char),
    /// `.`: anything but a newline (Go's default flags).
    Any,
    /// A bracket class; negated classes may match a newline (Go's `ClassNL`).
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl CharSet {
    fn contains(&self, c: char) -> bool {
        match self {
            CharSet::Lit(l) => *l == c,
            CharSet::Any => c != '\n',
            CharSet::Class { negated, ranges } => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Inst {
    Char(CharSet, usize),
    Split(usize, usize),
    BeginText(usize),
    EndText(usize),
    Match,
}

#[derive(Debug, Clone)]
enum Node {
    Set(CharSet),
    Begin,
    End,
    Group(Vec<(Node, Quant)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quant {
    One,
    Star,
    Opt,
    Plus,
}

/// A compiled, fully anchored regexp.
#[derive(Debug, Clone)]
struct Nfa {
    insts: Vec<Inst>,
    start: usize,
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        self.pos += 1;
        c
    }

    fn seq(&mut self, in_group: bool) -> Result<Vec<(Node, Quant)>, String> {
        let mut items: Vec<(Node, Quant)> = Vec::new();
        while let Some(c) = self.peek() {
            let node = match c {
                ')' if in_group => return Ok(items),
                ')' => return Err("unexpected `)` in the pattern's regexp".into()),
                '*' | '?' | '+' => {
                    self.pos += 1;
                    let q = match c {
                        '*' => Quant::Star,
                        '?' => Quant::Opt,
                        _ => Quant::Plus,
                    };
                    match items.last_mut() {
                        Some((Node::Begin | Node::End, _)) | None => {
                            return Err("missing argument to repetition operator".into())
                        }
                        Some((_, quant @ Quant::One)) => *quant = q,
                        Some(_) => return Err("invalid nested repetition operator".into()),
                    }
                    continue;
                }
                '(' => {
                    self.pos += 1;
                    let inner = self.seq(true)?;
                    if self.next() != Some(')') {
                        return Err("missing closing )".into());
                    }
                    Node::Group(inner)
                }
                '[' => {
                    self.pos += 1;
                    Node::Set(self.class()?)
                }
                '.' => {
                    self.pos += 1;
                    Node::Set(CharSet::Any)
                }
                '^' => {
                    self.pos += 1;
                    Node::Begin
                }
                '$' => {
                    self.pos += 1;
                    Node::End
                }
                '\\' => {
                    self.pos += 1;
                    Node::Set(CharSet::Lit(self.escape()?))
                }
                other => {
                    self.pos += 1;
                    Node::Set(CharSet::Lit(other))
                }
            };
            items.push((node, Quant::One));
        }
        if in_group {
            return Err("missing closing )".into());
        }
        Ok(items)
    }

    /// After a `\`: only escaped punctuation (a literal) is supported.
    fn escape(&mut self) -> Result<char, String> {
        match self.next() {
            None => Err("trailing backslash".into()),
            Some(c) if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
            Some(c) => Err(format!(
                "`\\{c}` is a regular-expression escape in docker's matcher; forge does not support it"
            )),
        }
    }

    /// After a `[`, up to and including the closing `]` (RE2's rules: a `]` first
    /// is literal, `a-z` is a range, a `-` elsewhere is literal).
    fn class(&mut self) -> Result<CharSet, String> {
        let mut negated = false;
        if self.peek() == Some('^') {
            negated = true;
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            match self.peek() {
                None => return Err("missing closing ] in the pattern's regexp".into()),
                Some(']') if !first => {
                    self.pos += 1;
                    break;
                }
                Some('[') if self.chars.get(self.pos + 1) == Some(&':') => {
                    let rest: String = self.chars[self.pos..].iter().collect();
                    if rest[2..].contains(":]") {
                        return Err("POSIX character classes ([:name:]) are not supported".into());
                    }
                }
                _ => {}
            }
            first = false;
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|c| *c != ']') {
                self.pos += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err(format!("invalid character class range `{lo}-{hi}`"));
                }
            }
            ranges.push((lo, hi));
        }
        Ok(CharSet::Class { negated, ranges })
    }

    fn class_char(&mut self) -> Result<char, String> {
        match self.next() {
            None => Err("missing closing ] in the pattern's regexp".into()),
            Some('\\') => self.escape(),
            Some(c) => Ok(c),
        }
    }
}

impl Nfa {
    fn compile(regex: &str) -> Result<Nfa, String> {
        let chars: Vec<char> = regex.chars().collect();
        let mut parser = Parser {
            chars: &chars,
            pos: 0,
        };
        let items = parser.seq(false)?;
        let mut insts = vec![Inst::Match];
        let start = emit_seq(&mut insts, &items, 0);
        Ok(Nfa { insts, start })
    }

    fn add(
        &self,
        set: &mut Vec<usize>,
        seen: &mut [bool],
        pc: usize,
        at_begin: bool,
        at_end: bool,
    ) {
        if seen[pc] {
            return;
        }
        seen[pc] = true;
        match &self.insts[pc] {
            Inst::Split(a, b) => {
                let (a, b) = (*a, *b);
                self.add(set, seen, a, at_begin, at_end);
                self.add(set, seen, b, at_begin, at_end);
            }
            Inst::BeginText(next) => {
                if at_begin {
                    self.add(set, seen, *next, at_begin, at_end);
                }
            }
            Inst::EndText(next) => {
                if at_end {
                    self.add(set, seen, *next, at_begin, at_end);
                }
            }
            Inst::Char(..) | Inst::Match => set.push(pc),
        }
    }

    fn is_match(&self, text: &str) -> bool {
        let n = self.insts.len();
        let total = text.chars().count();
        let mut current = Vec::new();
        let mut seen = vec![false; n];
        self.add(&mut current, &mut seen, self.start, true, total == 0);
        for (i, c) in text.chars().enumerate() {
            let mut next = Vec::new();
            let mut seen = vec![false; n];
            let at_end = i + 1 == total;
            for &pc in &current {
                if let Inst::Char(set, to) = &self.insts[pc] {
                    if set.contains(c) {
                        self.add(&mut next, &mut seen, *to, false, at_end);
                    }
                }
            }
            if next.is_empty() {
                return false;
            }
            current = next;
        }
        current
            .iter()
            .any(|pc| matches!(self.insts[*pc], Inst::Match))
    }
}

/// Emits `items` so that they continue at `next`; returns the entry point.
fn emit_seq(insts: &mut Vec<Inst>, items: &[(Node, Quant)], mut next: usize) -> usize {
    for (node, quant) in items.iter().rev() {
        next = match quant {
            Quant::One => emit_node(insts, node, next),
            Quant::Opt => {
                let body = emit_node(insts, node, next);
                insts.push(Inst::Split(body, next));
                insts.len() - 1
            }
            Quant::Star | Quant::Plus => {
                insts.push(Inst::Split(0, next));
                let split = insts.len() - 1;
                let body = emit_node(insts, node, split);
                insts[split] = Inst::Split(body, next);
                if *quant == Quant::Plus {
                    body
                } else {
                    split
                }
            }
        };
    }
    next
}

fn emit_node(insts: &mut Vec<Inst>, node: &Node, next: usize) -> usize {
    match node {
        Node::Set(set) => insts.push(Inst::Char(set.clone(), next)),
        Node::Begin => insts.push(Inst::BeginText(next)),
        Node::End => insts.push(Inst::EndText(next)),
        Node::Group(items) => return emit_seq(insts, items, next),
    }
    insts.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_matches_patternmatcher_compile() {
        // (pattern, type, regexp) from patternmatcher's TestCompile.
        for (p, t, re) in [
            ("*", MatchType::Regexp, "[^/]*"),
            ("file*", MatchType::Regexp, "file[^/]*"),
            ("a*/b", MatchType::Regexp, "a[^/]*/b"),
            ("**", MatchType::Suffix, ""),
            ("**/**", MatchType::Regexp, "(.*/)?.*"),
            ("dir/**", MatchType::Prefix, ""),
            ("**/dir", MatchType::Suffix, ""),
            ("**/dir2/*", MatchType::Regexp, "(.*/)?dir2/[^/]*"),
            ("**/**/*.txt", MatchType::Regexp, "(.*/)?(.*/)?[^/]*\\.txt"),
            ("a[b-d]e", MatchType::Regexp, "a[b-d]e"),
            (".*", MatchType::Regexp, "\\.[^/]*"),
            ("abc.def", MatchType::Exact, "abc\\.def"),
            ("a(b)c/def", MatchType::Exact, "a\\(b\\)c/def"),
        ] {
            let (kind, regex) = translate(p);
            assert_eq!(kind, t, "{p}");
            if kind == MatchType::Regexp {
                assert_eq!(regex, re, "{p}");
            }
        }
    }

    #[test]
    fn odd_patterns_behave_like_go_regexp() {
        // `[*]` becomes Go's `^[[^/]*]$`: a class of `[`, `^`, `/`, repeated, then `]`.
        let pm = PatternMatcher::new(&["[*]"]).expect("valid");
        assert!(pm.matches_or_parent_matches("]"));
        assert!(pm.matches_or_parent_matches("[^]"));
        assert!(!pm.matches_or_parent_matches("*"));
        // A `^` in the middle of a regexp pattern is an anchor: never matches here.
        let pm = PatternMatcher::new(&["a^b*"]).expect("valid");
        assert!(!pm.matches_or_parent_matches("a^bc"));
        // ... but an exact pattern compares strings.
        let pm = PatternMatcher::new(&["a^b"]).expect("valid");
        assert!(pm.matches_or_parent_matches("a^b"));
        // `.` in `(.*/)?` does not match a newline; `[^/]` does.
        let pm = PatternMatcher::new(&["**/x*"]).expect("valid");
        assert!(pm.matches_or_parent_matches("a/x\n"));
        assert!(!pm.matches_or_parent_matches("a\n/x"));
    }

    #[test]
    fn regexp_errors_are_refused_early() {
        // Valid for filepath.Match, rejected by Go's regexp at match time.
        assert!(PatternMatcher::new(&["[Local-Only]/"]).is_err());
        assert!(PatternMatcher::new(&["a\\d*"]).is_err());
        assert!(PatternMatcher::new(&["x[[:alpha:]]*"]).is_err());
    }
}
