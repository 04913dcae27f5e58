//! BuildKit's per-instruction line parsers: how the text after the keyword (and its
//! flags) is split into the words of a node.
//!
//! Every function works on `line[lo..hi]` and reports words as `(text, start, end)`
//! with byte positions in `line`, so callers can map them back to the source.

use super::gostr::{is_blank, is_space, quote};
use super::json::{parse_array, JsonArray};

/// A word and its byte range in the logical line.
pub(crate) type RawWord = (String, usize, usize);

/// Why a line could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineError {
    /// Stable problem code.
    pub code: &'static str,
    /// BuildKit's message.
    pub message: String,
    /// Label for the span.
    pub label: &'static str,
    /// Help line, if any.
    pub help: Option<&'static str>,
    /// Byte range in the logical line.
    pub lo: usize,
    /// End of the range.
    pub hi: usize,
}

/// The words produced for one instruction.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// The `Next` chain.
    pub words: Vec<RawWord>,
    /// The arguments were a JSON array.
    pub json: bool,
}

impl Parsed {
    fn words(words: Vec<RawWord>) -> Self {
        Self { words, json: false }
    }
}

const NOT_STRINGS: &str = "when using JSON array syntax, arrays must be comprised of strings only";

fn char_at(s: &str, pos: usize) -> Option<char> {
    s.get(pos..).and_then(|t| t.chars().next())
}

/// `unicode.IsSpace` applied to single bytes, as BuildKit's byte-wise loops do: only
/// ASCII whitespace counts for a whole character.
fn is_byte_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Whether a byte-wise loop would see a space inside this character: the UTF-8
/// continuation bytes 0x85 and 0xA0 read as U+0085 and U+00A0.
fn splits_bytewise(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    let mut buf = [0u8; 4];
    c.encode_utf8(&mut buf)
        .bytes()
        .skip(1)
        .any(|b| b == 0x85 || b == 0xa0)
}

/// BuildKit's `extractBuilderFlags`: the leading `--flag` words of `line[lo..hi]`
/// (quotes removed, escapes applied) and where the rest starts (`None`: nothing left).
///
/// BuildKit walks bytes here: a non-ASCII character never counts as a space between
/// words, and one containing the bytes 0x85 or 0xA0 ends a flag word. Those splits are
/// kept; the characters themselves are kept intact (BuildKit garbles them).
pub(crate) fn extract_flags(
    line: &str,
    lo: usize,
    hi: usize,
    escape: char,
) -> (Vec<RawWord>, Option<usize>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let b = line.as_bytes();
    // Both escape characters and both quotes are ASCII: the loop walks bytes and
    // steps over whole characters.
    let esc = u8::try_from(escape).unwrap_or(b'\\');
    let piece = |a: usize, z: usize| line.get(a..z).unwrap_or("");
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    // A word is a slice of the line until a quote or an escape makes it differ; from
    // then on it is built in `sb`.
    let mut sb = String::new();
    let mut built = false;
    let mut quote_ch = 0u8;
    let mut blank_ok = false;
    let mut start = lo;
    let mut text_end = lo;
    let mut pos = lo;
    loop {
        if phase == Phase::Spaces {
            let Some(&c) = b.get(pos).filter(|_| pos < hi) else {
                break;
            };
            if is_space_byte(c) {
                pos += 1;
                continue;
            }
            if c != b'-' || pos + 1 >= hi || b.get(pos + 1) != Some(&b'-') {
                return (words, Some(pos));
            }
            phase = Phase::Word;
            start = pos;
            text_end = pos;
            built = false;
        }
        let Some(&c) = b.get(pos).filter(|_| pos < hi) else {
            let w = if built {
                sb.as_str()
            } else {
                piece(start, text_end)
            };
            if w != "--" && (blank_ok || !w.is_empty()) {
                words.push((w.to_string(), start, hi));
            }
            break;
        };
        if phase == Phase::Word && !built {
            // Fast path: a run of plain ASCII stays a slice of the line.
            let run = b
                .get(pos..hi)
                .and_then(|t| {
                    t.iter().position(|&x| {
                        x >= 0x80 || is_space_byte(x) || x == b'\'' || x == b'"' || x == esc
                    })
                })
                .unwrap_or(hi - pos);
            if run > 0 {
                pos += run;
                text_end = pos;
                continue;
            }
        }
        let char_start = pos;
        pos += utf8_width(c);
        if phase == Phase::Word {
            if is_space_byte(c) {
                phase = Phase::Spaces;
                let w = if built {
                    sb.as_str()
                } else {
                    piece(start, text_end)
                };
                if w == "--" {
                    return (words, Some(char_start));
                }
                if blank_ok || !w.is_empty() {
                    words.push((w.to_string(), start, char_start));
                }
                blank_ok = false;
                continue;
            }
            if (c == b'\'' || c == b'"' || c == esc) && !built {
                sb.clear();
                sb.push_str(piece(start, text_end));
                built = true;
            }
            if c == b'\'' || c == b'"' {
                quote_ch = c;
                blank_ok = true;
                phase = Phase::Quote;
                continue;
            }
            let mut kept = (char_start, pos);
            if c == esc {
                let Some(&n) = b.get(pos).filter(|_| pos < hi) else {
                    continue;
                };
                kept = (pos, pos + utf8_width(n));
                pos = kept.1;
            }
            if built {
                sb.push_str(piece(kept.0, kept.1));
            } else {
                text_end = pos;
            }
            if kept.1 - kept.0 > 1
                && b.get(kept.0 + 1..kept.1)
                    .is_some_and(|t| t.iter().any(|x| *x == 0x85 || *x == 0xa0))
            {
                // A byte-wise loop sees U+0085 or U+00A0 inside this character.
                phase = Phase::Spaces;
                let w = if built {
                    sb.as_str()
                } else {
                    piece(start, text_end)
                };
                if w == "--" {
                    return (words, Some(pos));
                }
                words.push((w.to_string(), start, pos));
                blank_ok = false;
            }
            continue;
        }
        // Phase::Quote (the word is always built here).
        if c == quote_ch {
            phase = Phase::Word;
            continue;
        }
        let mut kept = (char_start, pos);
        if c == esc {
            let Some(&n) = b.get(pos).filter(|_| pos < hi) else {
                phase = Phase::Word;
                continue;
            };
            kept = (pos, pos + utf8_width(n));
            pos = kept.1;
        }
        sb.push_str(piece(kept.0, kept.1));
    }
    (words, None)
}

/// The length of the UTF-8 sequence starting with byte `c`.
fn utf8_width(c: u8) -> usize {
    match c {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// `unicode.IsSpace` on an ASCII byte (never true for a byte of a longer character).
fn is_space_byte(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// The character at `pos` (known to start one) and its width, with an ASCII fast path.
fn char_width_at(line: &str, pos: usize) -> Option<(char, usize)> {
    let c = *line.as_bytes().get(pos)?;
    if c < 0x80 {
        return Some((char::from(c), 1));
    }
    let ch = char_at(line, pos)?;
    Some((ch, ch.len_utf8()))
}

/// BuildKit's `parseWords`: whitespace-separated words, quotes and escapes kept.
///
/// Every character of a word is kept except an escape character that ends the input,
/// so a word is a slice of the line: no per-character building.
pub(crate) fn parse_words(line: &str, lo: usize, hi: usize, escape: char) -> Vec<RawWord> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let slice = |a: usize, b: usize| line.get(a..b).unwrap_or("").to_string();
    let mut words = Vec::with_capacity(4);
    let mut phase = Phase::Spaces;
    let mut quote_ch = '\0';
    let mut blank_ok = false;
    let mut start = lo;
    let mut text_end = lo;
    let mut pos = lo;
    loop {
        let ch = if pos < hi {
            char_width_at(line, pos)
        } else {
            None
        };
        if phase == Phase::Spaces {
            let Some((c, width)) = ch else { break };
            if is_space(c) {
                pos += width;
                continue;
            }
            phase = Phase::Word;
            start = pos;
            text_end = pos;
        }
        let Some((c, width)) = ch else {
            if blank_ok || text_end > start {
                words.push((slice(start, text_end), start, hi));
            }
            break;
        };
        if phase == Phase::Word {
            let plain = |x: u8| {
                x < 0x80 && !is_space_byte(x) && x != b'\'' && x != b'"' && char::from(x) != escape
            };
            if c.is_ascii() && plain(c as u8) {
                // Fast path: a run of plain ASCII.
                let run = line
                    .as_bytes()
                    .get(pos..hi)
                    .and_then(|t| t.iter().position(|&x| !plain(x)))
                    .unwrap_or(hi - pos);
                pos += run.max(1);
                text_end = pos;
                continue;
            }
            if is_space(c) {
                phase = Phase::Spaces;
                if blank_ok || text_end > start {
                    words.push((slice(start, text_end), start, pos));
                }
                blank_ok = false;
                pos += width;
                continue;
            }
            if c == '\'' || c == '"' {
                quote_ch = c;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if c == escape {
                if pos + width == hi {
                    // An escape at the very end is dropped.
                    pos += width;
                    continue;
                }
                pos += width;
                let Some((_, next)) = char_width_at(line, pos) else {
                    break;
                };
                pos += next;
            } else {
                pos += width;
            }
            text_end = pos;
            continue;
        }
        // Phase::Quote
        if c == quote_ch {
            phase = Phase::Word;
        }
        if c == escape && quote_ch != '\'' {
            if pos + width == hi {
                phase = Phase::Word;
                pos += width;
                continue;
            }
            pos += width;
            let Some((_, next)) = char_width_at(line, pos) else {
                break;
            };
            pos += next;
        } else {
            pos += width;
        }
        text_end = pos;
    }
    words
}

/// The first run of `[\t\v\f\r ]` in `line[lo..hi]`, as a byte range.
fn first_blank_run(line: &str, lo: usize, hi: usize) -> Option<(usize, usize)> {
    let s = line.get(lo..hi)?;
    let i = s.find(is_blank)?;
    let j = s[i..].find(|c| !is_blank(c)).map_or(s.len(), |k| i + k);
    Some((lo + i, lo + j))
}

/// BuildKit's `parseNameVal` for ENV and LABEL: `key value` (legacy) or `k=v k2=v2`.
/// Each pair becomes three words: key, value, and `=` (or `""` for the legacy form).
pub(crate) fn parse_name_val(
    line: &str,
    lo: usize,
    hi: usize,
    key: &str,
    escape: char,
) -> Result<Parsed, LineError> {
    let words = parse_words(line, lo, hi, escape);
    let Some(first) = words.first() else {
        return Ok(Parsed::default());
    };
    if !first.0.contains('=') {
        let Some((blank_lo, blank_hi)) = first_blank_run(line, lo, hi) else {
            return Err(LineError {
                code: "dockerfile::missing-value",
                message: format!("{key} must have two arguments"),
                label: "no value after the name",
                help: Some("write `NAME=value` (or the legacy `NAME value`)"),
                lo,
                hi,
            });
        };
        return Ok(Parsed::words(vec![
            (line[lo..blank_lo].to_string(), lo, blank_lo),
            (line[blank_hi..hi].to_string(), blank_hi, hi),
            (String::new(), hi, hi),
        ]));
    }
    let mut out = Vec::with_capacity(words.len() * 3);
    for (word, start, end) in words {
        let Some(eq) = word.find('=') else {
            return Err(LineError {
                code: "dockerfile::missing-equals",
                message: format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    quote(&word)
                ),
                label: "no `=` in this word",
                help: Some("every word must be `name=value` once the first one is"),
                lo: start,
                hi: end,
            });
        };
        let value = word[eq + 1..].to_string();
        let mut key = word;
        key.truncate(eq);
        let at = start + eq;
        out.push((key, start, at));
        out.push((value, at + 1, end.max(at + 1)));
        out.push(("=".to_string(), at, at + 1));
    }
    Ok(Parsed::words(out))
}

/// BuildKit's `parseNameOrNameVal` for ARG: the words as they are.
pub(crate) fn parse_name_or_name_val(line: &str, lo: usize, hi: usize, escape: char) -> Parsed {
    Parsed::words(parse_words(line, lo, hi, escape))
}

/// BuildKit's `parseStringsWhitespaceDelimited`: split on runs of `[\t\v\f\r ]`.
pub(crate) fn parse_strings_whitespace_delimited(line: &str, lo: usize, hi: usize) -> Parsed {
    let mut words = Vec::new();
    if lo >= hi {
        return Parsed::default();
    }
    let mut pos = lo;
    while let Some((blank_lo, blank_hi)) = first_blank_run(line, pos, hi) {
        words.push((line[pos..blank_lo].to_string(), pos, blank_lo));
        pos = blank_hi;
    }
    words.push((line[pos..hi].to_string(), pos, hi));
    Parsed::words(words)
}

/// BuildKit's `parseString`: the whole rest as one word.
pub(crate) fn parse_string(line: &str, lo: usize, hi: usize) -> Parsed {
    if lo >= hi {
        return Parsed::default();
    }
    Parsed::words(vec![(line[lo..hi].to_string(), lo, hi)])
}

enum Json {
    Ok(Parsed),
    NotStrings,
    Invalid,
}

/// BuildKit's `parseJSON`.
fn parse_json(line: &str, lo: usize, hi: usize) -> Json {
    let Some(s) = line.get(lo..hi) else {
        return Json::Invalid;
    };
    let trimmed = s.trim_start_matches(is_space);
    if !trimmed.starts_with('[') {
        return Json::Invalid;
    }
    let base = lo + (s.len() - trimmed.len());
    match parse_array(trimmed) {
        JsonArray::Strings(v) => Json::Ok(Parsed {
            words: v
                .into_iter()
                .map(|(s, a, b)| (s, base + a, base + b))
                .collect(),
            json: true,
        }),
        JsonArray::NotStrings => Json::NotStrings,
        JsonArray::Invalid => Json::Invalid,
    }
}

fn not_strings(lo: usize, hi: usize) -> LineError {
    LineError {
        code: "dockerfile::invalid-json",
        message: NOT_STRINGS.to_string(),
        label: "not an array of strings",
        help: Some("write every element as a string, e.g. [\"echo\", \"hi\"]"),
        lo,
        hi,
    }
}

/// BuildKit's `parseMaybeJSON` (RUN, CMD, ENTRYPOINT, SHELL): a JSON array of strings,
/// or else the whole rest as one word.
pub(crate) fn parse_maybe_json(line: &str, lo: usize, hi: usize) -> Result<Parsed, LineError> {
    if lo >= hi {
        return Ok(Parsed::default());
    }
    match parse_json(line, lo, hi) {
        Json::Ok(p) => Ok(p),
        Json::NotStrings => Err(not_strings(lo, hi)),
        Json::Invalid => Ok(Parsed::words(vec![(line[lo..hi].to_string(), lo, hi)])),
    }
}

/// BuildKit's `parseMaybeJSONToList` (ADD, COPY, VOLUME): a JSON array of strings, or
/// else whitespace-separated words.
pub(crate) fn parse_maybe_json_to_list(
    line: &str,
    lo: usize,
    hi: usize,
) -> Result<Parsed, LineError> {
    match parse_json(line, lo, hi) {
        Json::Ok(p) => Ok(p),
        Json::NotStrings => Err(not_strings(lo, hi)),
        Json::Invalid => Ok(parse_strings_whitespace_delimited(line, lo, hi)),
    }
}

/// BuildKit's `parseHealthConfig`: the type word (`CMD`, `NONE`, ...) and then the
/// command as in [`parse_maybe_json`].
pub(crate) fn parse_health_config(line: &str, lo: usize, hi: usize) -> Result<Parsed, LineError> {
    // BuildKit walks bytes here too: only ASCII whitespace separates (and the bytes
    // 0x85 and 0xA0 inside a character, which end the type word after that character).
    let s = line.get(lo..hi).unwrap_or("");
    let sep = s
        .char_indices()
        .find_map(|(i, c)| {
            if is_byte_space(c) {
                Some(i)
            } else if splits_bytewise(c) {
                Some(i + c.len_utf8())
            } else {
                None
            }
        })
        .unwrap_or(s.len());
    if sep == 0 {
        return Ok(Parsed::default());
    }
    let next = s[sep..]
        .find(|c: char| !is_byte_space(c))
        .map_or(s.len(), |k| sep + k);
    let mut cmd = parse_maybe_json(line, lo + next, hi)?;
    let mut words = Vec::with_capacity(cmd.words.len() + 1);
    words.push((s[..sep].to_string(), lo, lo + sep));
    words.append(&mut cmd.words);
    Ok(Parsed {
        words,
        json: cmd.json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(words: &[RawWord]) -> Vec<&str> {
        words.iter().map(|w| w.0.as_str()).collect()
    }

    #[test]
    fn parse_words_table() {
        let cases: &[(&str, &[&str])] = &[
            ("foo", &["foo"]),
            ("foo bar", &["foo", "bar"]),
            ("foo\\ bar", &["foo\\ bar"]),
            ("foo=bar", &["foo=bar"]),
            ("foo bar 'abc xyz'", &["foo", "bar", "'abc xyz'"]),
            ("foo bar \"abc xyz\"", &["foo", "bar", "\"abc xyz\""]),
            ("àöû", &["àöû"]),
            ("föo bàr \"âbc xÿz\"", &["föo", "bàr", "\"âbc xÿz\""]),
        ];
        for (input, want) in cases {
            let words = parse_words(input, 0, input.len(), '\\');
            assert_eq!(texts(&words), *want, "{input}");
        }
    }

    #[test]
    fn parse_words_positions() {
        let input = "  a\\ b 'c d'\\";
        let words = parse_words(input, 0, input.len(), '\\');
        assert_eq!(
            words,
            vec![
                ("a\\ b".to_string(), 2, 6),
                ("'c d'".to_string(), 7, input.len())
            ]
        );
    }

    #[test]
    fn name_val_old_format() {
        let p = parse_name_val("foo bar", 0, 7, "LABEL", '\\').expect("parses");
        assert_eq!(texts(&p.words), ["foo", "bar", ""]);
    }

    #[test]
    fn name_val_new_format() {
        let input = "foo=bar thing=star";
        let p = parse_name_val(input, 0, input.len(), "LABEL", '\\').expect("parses");
        assert_eq!(texts(&p.words), ["foo", "bar", "=", "thing", "star", "="]);
        assert_eq!(p.words[4], ("star".to_string(), 14, 18));
    }

    #[test]
    fn name_val_without_value() {
        let err = parse_name_val("foo", 0, 3, "ENV", '\\').expect_err("fails");
        assert_eq!(err.message, "ENV must have two arguments");
        let err = parse_name_val("a=1 b", 0, 5, "ENV", '\\').expect_err("fails");
        assert_eq!(
            err.message,
            "Syntax error - can't find = in \"b\". Must be of the form: name=value"
        );
    }

    #[test]
    fn flags_are_unquoted() {
        let input = "--a=\"x y\" --b='z' --c=\\q -- rest";
        let (flags, rest) = extract_flags(input, 0, input.len(), '\\');
        assert_eq!(texts(&flags), ["--a=x y", "--b=z", "--c=q"]);
        assert_eq!(rest.map(|r| &input[r..]), Some(" rest"));
        let (flags, rest) = extract_flags("--x", 0, 3, '\\');
        assert_eq!((texts(&flags), rest), (vec!["--x"], None));
        let (flags, rest) = extract_flags("-x y", 0, 4, '\\');
        assert_eq!((flags.len(), rest), (0, Some(0)));
    }

    #[test]
    fn maybe_json() {
        let p = parse_maybe_json("[\"a\", \"b\"]", 0, 10).expect("ok");
        assert!(p.json);
        assert_eq!(texts(&p.words), ["a", "b"]);
        let p = parse_maybe_json("['a']", 0, 5).expect("ok");
        assert!(!p.json);
        assert_eq!(texts(&p.words), ["['a']"]);
        assert!(parse_maybe_json("[1]", 0, 3).is_err());
        let p = parse_maybe_json_to_list("a  b", 0, 4).expect("ok");
        assert_eq!(texts(&p.words), ["a", "b"]);
    }

    #[test]
    fn health_config() {
        let input = "CMD   a b";
        let p = parse_health_config(input, 0, input.len()).expect("ok");
        assert_eq!(texts(&p.words), ["CMD", "a b"]);
        let p = parse_health_config("CMD", 0, 3).expect("ok");
        assert_eq!(texts(&p.words), ["CMD"]);
    }
}
