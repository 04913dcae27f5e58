//! Shell patterns for `${V#p}`, `${V%p}` and `${V/p/r}`, with the semantics BuildKit gets
//! by translating the pattern to a Go regular expression:
//!
//! * `*` is any run of characters and `?` any one character; neither matches a newline
//!   (they become `.` in a regexp without the `s` flag). There are no bracket
//!   expressions: `[` and `]` are literal.
//! * `\` escapes `*`, `?` and `\`; before `}` or `/` it is dropped; before anything else
//!   the pattern is invalid.
//! * Which match wins follows leftmost-first (backtracking) priority: all stars of one
//!   pattern are greedy (`##`, `%%`, `/`) or all lazy (`#`, `%`).
//! * Suffix removal reverses the pattern (keeping escape pairs together) and the value
//!   and removes a prefix.
//! * `${V//p/r}` uses Go's `ReplaceAllString`, so `r` is a template: `$$` is `$`, `$0` or
//!   `${0}` is the matched text, any other `$name` / `${name}` is empty.
//!
//! Matching is a dynamic program over (pattern token, position) that computes, for every
//! start position, the end of the match a backtracking matcher would find first; it runs
//! in O(pattern × value) time, like Go's RE2 engine, and never backtracks exponentially.

use super::unicode::{is_digit, is_letter};

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// A literal character.
    Lit(char),
    /// `?`: any character but a newline.
    Any,
    /// `*`: any run of characters without a newline.
    Star,
}

/// Compiles a pattern; the error is the reason it is invalid (without the pattern).
fn compile(pattern: &str) -> Result<Vec<Tok>, String> {
    let mut chars = pattern.chars().peekable();
    // BuildKit reads the pattern with Go's text/scanner, which drops a leading BOM.
    chars.next_if_eq(&'\u{FEFF}');
    let mut toks = Vec::with_capacity(pattern.len());
    while let Some(c) = chars.next() {
        let tok = match c {
            '*' => Tok::Star,
            '?' => Tok::Any,
            '\\' => match chars.peek() {
                // `\}` and `\/` protect the delimiters of `${...}`; the `\` is no part
                // of the pattern.
                Some('}' | '/') => continue,
                Some(&e @ ('*' | '?' | '\\')) => {
                    chars.next();
                    Tok::Lit(e)
                }
                Some(&e) => return Err(format!("invalid escape '\\{e}'")),
                None => return Err("invalid escape '\\' at end of pattern".to_string()),
            },
            c => Tok::Lit(c),
        };
        toks.push(tok);
    }
    Ok(toks)
}

/// BuildKit's pattern reversal for suffix matching: the pattern read as units (`\` with
/// the character after it, or a single character), in reverse order.
fn reverse_pattern(pattern: &str) -> String {
    let mut units: Vec<(char, Option<char>)> = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) => units.push((c, Some(n))),
                None => units.push((c, None)),
            }
        } else {
            units.push((c, None));
        }
    }
    let mut out = String::with_capacity(pattern.len());
    for (a, b) in units.into_iter().rev() {
        out.push(a);
        if let Some(b) = b {
            out.push(b);
        }
    }
    out
}

/// For every start position `s` in `0..=value.len()`, the end of the match of `toks`
/// starting at `s` that leftmost-first priority picks, or `None`.
fn match_ends(toks: &[Tok], value: &[char], greedy: bool) -> Vec<Option<usize>> {
    let n = value.len();
    // Row for the empty rest of the pattern: it matches immediately.
    let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
    let mut row: Vec<Option<usize>> = vec![None; n + 1];
    for tok in toks.iter().rev() {
        match *tok {
            Tok::Lit(c) => {
                for p in 0..=n {
                    row[p] = match value.get(p) {
                        Some(&v) if v == c => next[p + 1],
                        _ => None,
                    };
                }
            }
            Tok::Any => {
                for p in 0..=n {
                    row[p] = match value.get(p) {
                        Some(&v) if v != '\n' => next[p + 1],
                        _ => None,
                    };
                }
            }
            Tok::Star => {
                // The star may stop at any q in p..=end_of_line(p); greedy prefers the
                // largest q whose continuation matches, lazy the smallest.
                let mut best: Option<usize> = None;
                for p in (0..=n).rev() {
                    let here_ok = next[p].is_some();
                    let line_break = value.get(p).is_none_or(|&v| v == '\n');
                    if line_break {
                        best = here_ok.then_some(p);
                    } else if here_ok && (!greedy || best.is_none()) {
                        best = Some(p);
                    }
                    row[p] = best.and_then(|q| next[q]);
                }
            }
        }
        std::mem::swap(&mut next, &mut row);
    }
    next
}

/// Removes the shortest (or, if `greedy`, longest) prefix of `value` matching
/// `pattern`. The error is the reason the pattern is invalid.
pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let toks = compile(pattern)?;
    let chars: Vec<char> = value.chars().collect();
    Ok(
        match match_ends(&toks, &chars, greedy).first().copied().flatten() {
            Some(end) => chars[end..].iter().collect(),
            None => value.to_string(),
        },
    )
}

/// Removes the shortest (or, if `greedy`, longest) suffix of `value` matching
/// `pattern`. The error is the reason the pattern is invalid.
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let toks = compile(&reverse_pattern(pattern))?;
    let mut chars: Vec<char> = value.chars().collect();
    chars.reverse();
    Ok(
        match match_ends(&toks, &chars, greedy).first().copied().flatten() {
            Some(end) => chars[end..].iter().rev().collect(),
            None => value.to_string(),
        },
    )
}

/// `${V/pattern/replacement}` (first match only; the replacement is literal) or
/// `${V//pattern/replacement}` (every match; the replacement is a Go regexp template).
/// Stars are greedy. The error is the reason the pattern is invalid.
pub(super) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, String> {
    let toks = compile(pattern)?;
    let chars: Vec<char> = value.chars().collect();
    let ends = match_ends(&toks, &chars, true);
    let n = chars.len();
    let slice = |a: usize, b: usize| -> String { chars[a..b].iter().collect() };

    if !all {
        let first = (0..=n).find_map(|s| ends[s].map(|e| (s, e)));
        return Ok(match first {
            Some((s, e)) => {
                let mut out = slice(0, s);
                out.push_str(replacement);
                out.push_str(&slice(e, n));
                out
            }
            None => value.to_string(),
        });
    }

    // Go's Regexp.ReplaceAllString loop, in characters instead of bytes.
    let mut out = String::with_capacity(value.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= n {
        let Some((s, e)) = (search..=n).find_map(|s| ends[s].map(|e| (s, e))) else {
            break;
        };
        out.push_str(&slice(last_end, s));
        // No replacement for an empty match right after the previous match.
        if e > last_end || s == 0 {
            expand_template(replacement, &slice(s, e), &mut out);
        }
        last_end = e;
        search = if e <= search { search + 1 } else { e };
    }
    out.push_str(&slice(last_end, n));
    Ok(out)
}

/// Go's `Regexp.Expand` for a regexp whose only group is group 0 (the whole match).
fn expand_template(template: &str, matched: &str, out: &mut String) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_ref(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            // Not a reference: the `$` is literal.
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Parses `name` or `{name}` at the start of `s` (a template reference after `$`).
fn template_ref(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let len = body
        .char_indices()
        .find(|&(_, c)| !(is_letter(c) || is_digit(c) || c == '_'))
        .map_or(body.len(), |(i, _)| i);
    if len == 0 {
        return None;
    }
    let (name, mut rest) = body.split_at(len);
    if braced {
        rest = rest.strip_prefix('}')?;
    }
    Some((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str, v: &str, greedy: bool) -> String {
        trim_prefix(p, v, greedy).unwrap_or_else(|e| format!("ERR {e}"))
    }

    fn suffix(p: &str, v: &str, greedy: bool) -> String {
        trim_suffix(p, v, greedy).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn compiles_like_buildkit() {
        use Tok::*;
        assert_eq!(compile("*"), Ok(vec![Star]));
        assert_eq!(compile("?"), Ok(vec![Any]));
        assert_eq!(compile("\\*"), Ok(vec![Lit('*')]));
        assert_eq!(
            compile("(()[]{\\}^$.\\*\\?|\\\\"),
            Ok("(()[]{}^$.*?|\\".chars().map(Lit).collect())
        );
        assert_eq!(compile("a\\/b"), Ok(vec![Lit('a'), Lit('/'), Lit('b')]));
        assert_eq!(compile("\u{FEFF}a"), Ok(vec![Lit('a')]));
        for bad in ["\\", "\\x", "\\\\\\"] {
            assert!(compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reverses_patterns_like_buildkit() {
        for (p, want) in [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ] {
            assert_eq!(reverse_pattern(p), want, "{p}");
        }
    }

    #[test]
    fn trims() {
        assert_eq!(prefix("*x*y", "xxyy", false), "y");
        assert_eq!(prefix("*", "xxyy", false), "xxyy");
        assert_eq!(prefix("*", "xxyy", true), "");
        assert_eq!(prefix("*x", "xxyy", true), "yy");
        assert_eq!(prefix("?\\?", "???y", false), "?y");
        assert_eq!(prefix("*", "ab\ncd", true), "\ncd");
        assert_eq!(prefix("?", "\nx", true), "\nx");
        assert_eq!(suffix("x", "xxyy", false), "xxyy");
        assert_eq!(suffix("\\**", "xx**", true), "xx");
        assert_eq!(suffix("\\**\\*", "a***yy*", true), "a");
        assert_eq!(suffix("*", "abc", false), "abc");
        assert_eq!(suffix("/*", "/a/b/c", false), "/a/b");
        assert_eq!(suffix("/*", "/a/b/c", true), "");
        // A trailing `\` pairs with the character before it once reversed.
        assert_eq!(suffix("*\\", "ab*", true), "ab");
        assert!(suffix("a\\", "ab", true).starts_with("ERR"));
    }

    #[test]
    fn replaces() {
        let r = |p: &str, v: &str, rep: &str, all: bool| {
            replace(p, v, rep, all).unwrap_or_else(|e| format!("ERR {e}"))
        };
        assert_eq!(r("\\*/", "/foo*/*/*.txt", ".", false), "/foo.*/*.txt");
        assert_eq!(r("\\*/", "/foo*/*/*.txt", ".", true), "/foo..*.txt");
        assert_eq!(r("/?/", "/a/foo/b/c.txt", "/", true), "/foo/c.txt");
        assert_eq!(r("", "xxyy", "ww", false), "wwxxyy");
        assert_eq!(r("", "abc", "-", true), "-a-b-c-");
        assert_eq!(r("x*", "axxbx", "-", true), "a-");
        assert_eq!(r("o", "foo", "[$0]", true), "f[o][o]");
        assert_eq!(
            r("o", "foo", "[${0}|$$|$x|$|${x]", true),
            "f[o|$||$|${x][o|$||$|${x]"
        );
        assert_eq!(r("o", "foo", "[$0]", false), "f[$0]o");
    }
}
