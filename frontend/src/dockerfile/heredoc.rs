//! Finding heredocs (`<<EOF`) on an instruction line.
//!
//! BuildKit splits the whole line into shell words with its shell lexer (quotes and
//! escapes kept raw, unset variables left as written) and then looks at each word for
//! `[n]<<[-]WORD`. This module carries just enough of that lexer to give the same
//! words, quirks included (a `${...}` expansion forgets the part of the word before
//! it, `"\n"` keeps a doubled backslash in raw mode), so the same lines have heredocs.

use super::gostr::{is_space, quote};

/// The heredoc lexer always escapes with a backslash, whatever `# escape=` says.
const ESCAPE: char = '\\';

/// A word with its byte range in the lexed text.
pub(crate) type LexWord = (String, usize, usize);

/// A heredoc found on a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The delimiter, quotes removed.
    pub name: String,
    /// The file descriptor number before `<<` (0 when absent).
    pub file_descriptor: u64,
    /// False when any part of the delimiter was quoted.
    pub expand: bool,
    /// True for `<<-`.
    pub chomp: bool,
}

struct Words {
    words: Vec<LexWord>,
    in_word: bool,
    end: usize,
}

impl Words {
    fn new() -> Self {
        Self {
            words: Vec::new(),
            in_word: false,
            end: 0,
        }
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    raw_quotes: bool,
    raw_escapes: bool,
    /// Shared between nested calls, as in BuildKit: a nested `${...}` clears it.
    buf: String,
    buf_start: usize,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, raw_quotes: bool, raw_escapes: bool) -> Self {
        // Go's text/scanner skips a byte-order mark at the very start.
        let pos = if src.starts_with('\u{feff}') { 3 } else { 0 };
        Self {
            src,
            pos,
            raw_quotes,
            raw_escapes,
            buf: String::new(),
            buf_start: 0,
        }
    }

    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..).and_then(|s| s.chars().next())
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn add_char(&mut self, w: &mut Words, ch: char, at: usize, end: usize) {
        if is_space(ch) {
            if w.in_word && !self.buf.is_empty() {
                w.words.push((self.buf.clone(), self.buf_start, w.end));
                self.buf.clear();
                w.in_word = false;
            }
        } else {
            self.add_raw_char(w, ch, at, end);
        }
    }

    fn add_raw_char(&mut self, w: &mut Words, ch: char, at: usize, end: usize) {
        if self.buf.is_empty() {
            self.buf_start = at;
        }
        self.buf.push(ch);
        w.in_word = true;
        w.end = end;
    }

    fn add_string(&mut self, w: &mut Words, s: &str, at: usize, end: usize) {
        for ch in s.chars() {
            self.add_char(w, ch, at, end);
        }
    }

    fn add_raw_string(&mut self, w: &mut Words, s: &str, at: usize, end: usize) {
        if self.buf.is_empty() {
            self.buf_start = at;
        }
        self.buf.push_str(s);
        w.in_word = true;
        w.end = end;
    }

    fn finish_words(&mut self, mut w: Words) -> Vec<LexWord> {
        if !self.buf.is_empty() {
            w.words.push((self.buf.clone(), self.buf_start, w.end));
            self.buf.clear();
        }
        w.words
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<LexWord>), String> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<LexWord>), String> {
        // Only nested calls (with a stop character) use the text; the top level wants
        // the words.
        let keep = stop.is_some();
        let mut result = String::new();
        self.buf.clear();
        let mut w = Words::new();
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                let words = self.finish_words(w);
                return Ok((result, words));
            }
            let at = self.pos;
            match ch {
                '$' => {
                    let tmp = self.process_dollar()?;
                    if keep {
                        result.push_str(&tmp);
                    }
                    let end = self.pos;
                    self.add_string(&mut w, &tmp, at, end);
                }
                '<' | '\'' | '"' => {
                    let tmp = match ch {
                        '<' => self.process_possible_heredoc(),
                        '\'' => self.process_single_quote()?,
                        _ => self.process_double_quote()?,
                    };
                    if keep {
                        result.push_str(&tmp);
                    }
                    let end = self.pos;
                    self.add_raw_string(&mut w, &tmp, at, end);
                }
                _ => {
                    self.next();
                    if ch == ESCAPE {
                        if self.raw_escapes {
                            let end = self.pos;
                            self.add_raw_char(&mut w, ch, at, end);
                            if keep {
                                result.push(ch);
                            }
                        }
                        let Some(escaped) = self.next() else {
                            break;
                        };
                        let end = self.pos;
                        self.add_raw_char(&mut w, escaped, at, end);
                        if keep {
                            result.push(escaped);
                        }
                    } else {
                        let end = self.pos;
                        self.add_char(&mut w, ch, at, end);
                        if keep {
                            result.push(ch);
                        }
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        let words = self.finish_words(w);
        Ok((result, words))
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        let mut r = String::new();
        self.next();
        if self.raw_quotes {
            r.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.raw_quotes {
                        r.push('\'');
                    }
                    return Ok(r);
                }
                Some(c) => r.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        let mut r = String::new();
        self.next();
        if self.raw_quotes {
            r.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.next();
                    if self.raw_quotes {
                        r.push('"');
                    }
                    return Ok(r);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    r.push_str(&v);
                }
                Some(mut ch) => {
                    self.next();
                    if ch == ESCAPE {
                        if self.raw_escapes {
                            r.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some('"' | '$' | ESCAPE) => {
                                if let Some(c) = self.next() {
                                    ch = c;
                                }
                            }
                            Some(_) => {}
                        }
                    }
                    r.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            // No variables are set: SkipUnsetEnv keeps the reference as written.
            return Ok(format!("${name}"));
        }
        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let mut ch = self.next();
        let mut chs = char_str(ch);
        match ch {
            Some('}') => Ok(format!("${{{name}}}")),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let mut null_is_unset = false;
                if ch == Some(':') {
                    null_is_unset = true;
                    ch = self.next();
                    chs.push_str(&char_str(ch));
                }
                let raw = matches!(ch, Some('#' | '%'));
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({chs}) in substitution"));
                }
                let word = match self.process_stop_on(Some('}'), raw) {
                    Ok((w, _)) => w,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                Ok(format!("${{{name}{chs}{word}}}"))
            }
            Some('/') => {
                if self.peek() == Some('/') {
                    self.next();
                }
                let pattern = match self.process_stop_on(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '/' in ${}".into());
                        }
                        return Err(e);
                    }
                };
                let replacement = match self.process_stop_on(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(e) => {
                        if self.peek().is_none() {
                            return Err("syntax error: missing '}'".into());
                        }
                        return Err(e);
                    }
                };
                Ok(format!("${{{name}/{pattern}/{replacement}}}"))
            }
            _ => Err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(c) = self.peek().filter(|c| is_digit(*c)) {
                    self.next();
                    name.push(c);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut r = String::from("<<");
        while let Some(c @ ('\t' | '\r' | ' ')) = self.peek() {
            self.next();
            r.push(c);
        }
        r
    }
}

/// Go's `string(rune)` for a scanner result, where end of input is -1 (U+FFFD).
fn char_str(c: Option<char>) -> String {
    c.unwrap_or('\u{fffd}').to_string()
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic())
}

/// BuildKit's `ProcessWords` with no variables set and unset ones kept as written.
fn process_words(src: &str, raw_quotes: bool, raw_escapes: bool) -> Result<Vec<LexWord>, String> {
    let mut lexer = Lexer::new(src, raw_quotes, raw_escapes);
    lexer
        .process_stop_on(None, raw_escapes)
        .map(|(_, words)| words)
        .map_err(|e| format!("failed to process {}: {e}", quote(src)))
}

/// Whether `c` is in Go's regexp `\s` class.
fn is_re_space(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ')
}

/// BuildKit's `ParseHeredoc`: whether `src` is a heredoc word `[n]<<[-]WORD`.
/// `Ok(None)` when it is not one; `Err` when its delimiter cannot be lexed.
pub(crate) fn parse_heredoc(src: &str) -> Result<Option<Found>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let fd_text = &src[..i];
    if b.get(i..i + 2) != Some(b"<<") {
        return Ok(None);
    }
    i += 2;
    let chomp = b.get(i) == Some(&b'-');
    if chomp {
        i += 1;
    }
    while b.get(i).copied().is_some_and(is_re_space) {
        i += 1;
    }
    let rest = src.get(i..).unwrap_or("");
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let file_descriptor = fd_text.parse::<u64>().unwrap_or(0);
    let words = process_words(rest, false, false)?;
    if words.len() != 1 {
        return Ok(None);
    }
    let raw = process_words(rest, true, false)?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let count = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    let (name, _, _) = &words[0];
    let expand = count(name) == count(&raw[0].0);
    Ok(Some(Found {
        name: name.clone(),
        file_descriptor,
        expand,
        chomp,
    }))
}

/// A heredoc found on a line, with the byte range of its word.
pub(crate) type FoundAt = (Found, usize, usize);

/// A message with the byte range of the word it is about.
pub(crate) type WordError = (String, usize, usize);

/// BuildKit's `heredocsFromLine`: the heredocs named on `line`, each with the byte range
/// of its word in `line`. A line the lexer cannot split has none. The error carries the
/// range of the word whose delimiter cannot be lexed.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<FoundAt>, WordError> {
    let Ok(words) = process_words(line, true, true) else {
        return Ok(Vec::new());
    };
    let mut docs = Vec::new();
    for (word, start, end) in words {
        match parse_heredoc(&word) {
            Ok(Some(doc)) => docs.push((doc, start, end)),
            Ok(None) => {}
            Err(e) => return Err((e, start, end)),
        }
    }
    Ok(docs)
}

/// BuildKit's `ChompHeredocContent`: removes the leading tabs of every line.
pub(crate) fn chomp(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for piece in content.split_inclusive('\n') {
        out.push_str(piece.trim_start_matches('\t'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(src: &str) -> Option<String> {
        parse_heredoc(src).ok().flatten().map(|h| h.name)
    }

    #[test]
    fn heredoc_helpers() {
        for src in [
            "<<EOF",
            "<<'EOF'",
            "<<\"EOF\"",
            "<<-EOF",
            "<<-'EOF'",
            "<<-\"EOF\"",
            "<<EO\"F\"",
            "<< EOF",
            "<<- EOF",
        ] {
            assert_eq!(name(src).as_deref(), Some("EOF"), "{src}");
        }
        for src in ["<<'EOF", "<<\"EOF", "<<EOF'", "<<EOF\""] {
            assert!(parse_heredoc(src).is_err(), "{src}");
        }
        for src in ["", "EOF", "<<", "<<-", "<EOF", "<<<EOF", "<<EOF sh"] {
            assert_eq!(parse_heredoc(src), Ok(None), "{src}");
        }
    }

    #[test]
    fn heredocs_on_lines() {
        let cases: &[(&str, &[&str])] = &[
            ("RUN <<EOF", &["EOF"]),
            ("RUN <<-EOF", &["EOF"]),
            // The line lexer stops the word at the space: BuildKit finds no heredoc here
            // (its own test only checks the heredocs it does find).
            ("RUN <<- EOF", &[]),
            ("RUN << -EOF", &["-EOF"]),
            ("RUN <<'EOF'", &["EOF"]),
            ("RUN 4<<EOF", &["EOF"]),
            ("RUN <<EOF <<EOF2", &["EOF", "EOF2"]),
            ("RUN '<<EOF'", &[]),
            ("RUN \"<<EOF\"", &[]),
            ("RUN <<EOF 'unterminated", &[]),
        ];
        for (line, want) in cases {
            let got: Vec<String> = heredocs_from_line(line)
                .unwrap_or_default()
                .into_iter()
                .map(|(h, _, _)| h.name)
                .collect();
            assert_eq!(got, *want, "{line}");
        }
    }

    #[test]
    fn word_positions_and_flags() {
        let docs = heredocs_from_line("COPY 3<<-'A B' <<C /x").unwrap_or_default();
        let summary: Vec<_> = docs
            .iter()
            .map(|(h, s, e)| {
                (
                    h.name.as_str(),
                    h.file_descriptor,
                    h.expand,
                    h.chomp,
                    *s,
                    *e,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("A B", 3, false, true, 5, 14),
                ("C", 0, true, false, 15, 18)
            ]
        );
    }

    #[test]
    fn quoting_decides_expansion() {
        let expand = |s: &str| parse_heredoc(s).ok().flatten().map(|h| (h.name, h.expand));
        assert_eq!(expand("<<eo'f'"), Some(("eof".into(), false)));
        assert_eq!(expand("<<eo\\'f"), Some(("eo'f".into(), true)));
        assert_eq!(expand("<<'e'o\\'f"), Some(("eo'f".into(), false)));
        assert_eq!(expand("<<$EOF"), Some(("$EOF".into(), true)));
        assert_eq!(expand("<<${EOF}"), Some(("${EOF}".into(), true)));
    }

    #[test]
    fn chomps_leading_tabs() {
        assert_eq!(
            chomp("\thello\n\t\tworld\n  x\t\n"),
            "hello\nworld\n  x\t\n"
        );
    }
}
