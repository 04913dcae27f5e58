//! Small string helpers that behave like the Go standard library functions BuildKit
//! relies on (`strconv.Quote`, `strings.ToLower`, `unicode.IsSpace`, ...), so that
//! dumps and error messages match BuildKit byte for byte.

use super::printable::PRINTABLE_RANGES;

/// `unicode.IsSpace`: Go's set is exactly Unicode's `White_Space` property.
#[inline]
pub(crate) fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// The characters of BuildKit's `[\t\v\f\r ]` whitespace class.
#[inline]
pub(crate) fn is_blank(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// `strings.TrimSpace` on `s[lo..hi]`, returning the trimmed byte range.
pub(crate) fn trim_space_range(s: &str, lo: usize, hi: usize) -> (usize, usize) {
    let Some(sub) = s.get(lo..hi) else {
        return (lo, lo);
    };
    let start = sub.len() - sub.trim_start_matches(is_space).len();
    let end = sub.trim_end_matches(is_space).len();
    if end <= start {
        return (lo + start, lo + start);
    }
    (lo + start, lo + end)
}

/// Go's `strconv.IsPrint`.
pub(crate) fn is_print(c: char) -> bool {
    let c = c as u32;
    if c < 0x80 {
        return (0x20..0x7f).contains(&c);
    }
    let pairs = PRINTABLE_RANGES.len() / 2;
    // Find the last range whose start is <= c.
    let (mut lo, mut hi) = (0usize, pairs);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if PRINTABLE_RANGES[mid * 2] <= c {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo > 0 && c <= PRINTABLE_RANGES[(lo - 1) * 2 + 1]
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn push_hex(out: &mut String, v: u32, digits: u32) {
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
    }
}

/// Appends `s` quoted the way Go's `strconv.Quote` (and `%q`) does.
pub(crate) fn quote_into(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_print(c) => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str("\\x");
                push_hex(out, c as u32, 2);
            }
            c if (c as u32) < 0x10000 => {
                out.push_str("\\u");
                push_hex(out, c as u32, 4);
            }
            c => {
                out.push_str("\\U");
                push_hex(out, c as u32, 8);
            }
        }
    }
    out.push('"');
}

/// Go's `strconv.Quote`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::new();
    quote_into(&mut out, s);
    out
}

/// Go's `strings.ToLower` (simple case mapping, one char to one char).
pub(crate) fn to_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars().map(lower_char).collect()
}

fn lower_char(c: char) -> char {
    if c == '\u{130}' {
        return 'i';
    }
    let mut it = c.to_lowercase();
    match (it.next(), it.next()) {
        (Some(l), None) => l,
        _ => c,
    }
}

/// Go's `strings.ToUpper` (simple case mapping, one char to one char).
pub(crate) fn to_upper(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_uppercase();
    }
    s.chars()
        .map(|c| {
            let mut it = c.to_uppercase();
            match (it.next(), it.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Go's `strings.EqualFold` restricted to what we need: ASCII-insensitive equality
/// with simple case folding for the rest.
pub(crate) fn equal_fold(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || to_lower(a) == to_lower(b)
}

/// Levenshtein distance over chars.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// BuildKit's `suggest.Search`: the option within edit distance 2 of `val` (the
/// closest, first on ties), in `val`'s case when matching case-insensitively; nothing
/// when `val` is itself an option.
pub(crate) fn suggest(val: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let norm = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            to_lower(s)
        }
    };
    let v = norm(val);
    let mut best = None;
    let mut min = 3;
    for opt in options {
        let o = norm(opt);
        if v == o {
            return None;
        }
        let d = levenshtein(&v, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if val == to_lower(val) {
                to_lower(opt)
            } else if val == to_upper(val) {
                to_upper(opt)
            } else {
                (*opt).to_string()
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_go() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            quote("a\x00\x7f\u{85}\u{a0}\u{200b}\u{1F600}\u{feff}\u{E0001}é"),
            r#""a\x00\x7f\u0085\u00a0\u200b😀\ufeff\U000e0001é""#
        );
        assert_eq!(quote("\x07\x08\x0c\n\r\t\x0b"), r#""\a\b\f\n\r\t\v""#);
        assert_eq!(quote("♥☃ "), "\"♥☃ \"");
    }

    #[test]
    fn lowers_like_go() {
        assert_eq!(
            to_lower("İSTANBUL ΣΑΣ KELVIN\u{212a}"),
            "istanbul σασ kelvink"
        );
        assert_eq!(to_upper("straße"), "STRAßE");
    }

    #[test]
    fn printable_table_edges() {
        assert!(is_print(' '));
        assert!(!is_print('\u{a0}'));
        assert!(is_print('\u{a1}'));
        assert!(!is_print('\u{ad}'));
        assert!(!is_print('\u{10ffff}'));
        assert!(!is_print('\u{e000}'));
        assert!(is_print('中'));
    }

    #[test]
    fn suggests_like_buildkit() {
        let names = ["RUN", "COPY", "ONBUILD"];
        assert_eq!(suggest("RUNN", &names, false).as_deref(), Some("RUN"));
        assert_eq!(suggest("cpoy", &names, false).as_deref(), Some("copy"));
        assert_eq!(suggest("Onbuil", &names, false).as_deref(), Some("ONBUILD"));
        assert_eq!(suggest("xyzzy", &names, false), None);
        assert_eq!(
            suggest("chwon", &["from", "chown"], true).as_deref(),
            Some("chown")
        );
        assert_eq!(suggest("from", &["from"], true), None);
    }

    #[test]
    fn trims_ranges() {
        assert_eq!(trim_space_range("  ab  ", 0, 6), (2, 4));
        assert_eq!(trim_space_range("   ", 0, 3), (3, 3));
        assert_eq!(trim_space_range("x \u{a0}y\u{3000}", 1, 8), (4, 5));
    }
}
