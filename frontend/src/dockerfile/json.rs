//! The JSON (exec form) arrays of Dockerfile instructions, decoded the way Go's
//! `encoding/json` decodes them into `[]any`: strict RFC 8259 syntax, a nesting limit
//! of 10 000, numbers that overflow a float64 rejected, lone surrogates replaced by
//! U+FFFD. Iterative, so deeply nested input cannot overflow the stack.

/// What a candidate JSON array turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonArray {
    /// A valid array of strings: each decoded string with the byte range of its literal
    /// (quotes included) in the input.
    Strings(Vec<(String, usize, usize)>),
    /// Valid JSON, an array, but some element is not a string (BuildKit rejects this).
    NotStrings,
    /// Not valid JSON (BuildKit falls back to the shell form).
    Invalid,
}

/// Go's `encoding/json` nesting limit.
const MAX_DEPTH: usize = 10_000;

struct Invalid;

/// Parses `s`, which must be a JSON array (leading whitespace allowed), as Go does.
pub(crate) fn parse_array(s: &str) -> JsonArray {
    match parse(s) {
        Ok(r) => r,
        Err(Invalid) => JsonArray::Invalid,
    }
}

fn parse(s: &str) -> Result<JsonArray, Invalid> {
    let b = s.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return Err(Invalid);
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    let mut all_strings = true;
    let mut overflow = false;
    if b.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            match b.get(i) {
                Some(b'"') => {
                    let (value, end) = string(s, i, true)?;
                    out.push((value, i, end));
                    i = end;
                }
                Some(_) => {
                    all_strings = false;
                    i = skip_value(s, i, &mut overflow)?;
                }
                None => return Err(Invalid),
            }
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return Err(Invalid),
            }
        }
    }
    if skip_ws(b, i) != b.len() || overflow {
        return Err(Invalid);
    }
    if all_strings {
        Ok(JsonArray::Strings(out))
    } else {
        Ok(JsonArray::NotStrings)
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

/// Where a container expects to be next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Inside an array, after `[` or `,`: a value comes next.
    Array,
    /// Inside an object, after `{` or `,`: a key comes next.
    Object,
}

/// Skips one value nested inside the top-level array (depth 1) starting at `i`.
fn skip_value(s: &str, mut i: usize, overflow: &mut bool) -> Result<usize, Invalid> {
    let b = s.as_bytes();
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        // Parse one value at i.
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b'"') => i = string(s, i, false)?.1,
            Some(b'[') => {
                stack.push(Frame::Array);
                if stack.len() + 1 > MAX_DEPTH {
                    return Err(Invalid);
                }
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    stack.pop();
                    i += 1;
                } else {
                    continue;
                }
            }
            Some(b'{') => {
                stack.push(Frame::Object);
                if stack.len() + 1 > MAX_DEPTH {
                    return Err(Invalid);
                }
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    stack.pop();
                    i += 1;
                } else {
                    i = object_key(s, i)?;
                    continue;
                }
            }
            Some(b't') => i = literal(b, i, b"true")?,
            Some(b'f') => i = literal(b, i, b"false")?,
            Some(b'n') => i = literal(b, i, b"null")?,
            Some(b'-' | b'0'..=b'9') => i = number(s, i, overflow)?,
            _ => return Err(Invalid),
        }
        // After a value: close containers or move to the next element.
        loop {
            let Some(&top) = stack.last() else {
                return Ok(i);
            };
            i = skip_ws(b, i);
            match (top, b.get(i)) {
                (_, Some(b',')) => {
                    i += 1;
                    if top == Frame::Object {
                        i = object_key(s, skip_ws(b, i))?;
                    }
                    break;
                }
                (Frame::Array, Some(b']')) | (Frame::Object, Some(b'}')) => {
                    stack.pop();
                    i += 1;
                }
                _ => return Err(Invalid),
            }
        }
    }
}

/// Parses `"key" :` at `i`, returning the position after the colon.
fn object_key(s: &str, i: usize) -> Result<usize, Invalid> {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'"') {
        return Err(Invalid);
    }
    let end = skip_ws(b, string(s, i, false)?.1);
    if b.get(end) != Some(&b':') {
        return Err(Invalid);
    }
    Ok(end + 1)
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Result<usize, Invalid> {
    if b.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(Invalid)
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b'0'..=b'9')) {
        i += 1;
    }
    i
}

fn number(s: &str, start: usize, overflow: &mut bool) -> Result<usize, Invalid> {
    let b = s.as_bytes();
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i + 1),
        _ => return Err(Invalid),
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return Err(Invalid);
        }
        i = j;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return Err(Invalid);
        }
        i = j;
    }
    // Go decodes numbers into float64 and reports an error on overflow.
    let text = s.get(start..i).unwrap_or("0");
    if text.parse::<f64>().map_or(true, f64::is_infinite) {
        *overflow = true;
    }
    Ok(i)
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let h = b.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in h {
        v = v * 16 + char::from(c).to_digit(16)?;
    }
    Some(v)
}

/// Parses the string literal starting at `start` (a `"`), returning its decoded value
/// (empty when `decode` is false) and the position after the closing quote.
fn string(s: &str, start: usize, decode: bool) -> Result<(String, usize), Invalid> {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    let mut run = i;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(Invalid);
        };
        match c {
            b'"' => {
                if decode {
                    out.push_str(s.get(run..i).unwrap_or(""));
                }
                return Ok((out, i + 1));
            }
            b'\\' => {
                if decode {
                    out.push_str(s.get(run..i).unwrap_or(""));
                }
                let esc = b.get(i + 1).copied().ok_or(Invalid)?;
                i += 2;
                let ch = match esc {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let r = hex4(b, i).ok_or(Invalid)?;
                        i += 4;
                        if (0xd800..0xe000).contains(&r) {
                            let pair = if b.get(i..i + 2) == Some(b"\\u") {
                                hex4(b, i + 2)
                            } else {
                                None
                            };
                            match pair {
                                Some(r2)
                                    if (0xd800..0xdc00).contains(&r)
                                        && (0xdc00..0xe000).contains(&r2) =>
                                {
                                    i += 6;
                                    let v = 0x10000 + ((r - 0xd800) << 10) + (r2 - 0xdc00);
                                    char::from_u32(v).unwrap_or('\u{fffd}')
                                }
                                _ => '\u{fffd}',
                            }
                        } else {
                            char::from_u32(r).unwrap_or('\u{fffd}')
                        }
                    }
                    _ => return Err(Invalid),
                };
                if decode {
                    out.push(ch);
                }
                run = i;
            }
            c if c < 0x20 => return Err(Invalid),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &str) -> Vec<String> {
        match parse_array(s) {
            JsonArray::Strings(v) => v.into_iter().map(|(s, _, _)| s).collect(),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn valid_arrays_of_strings() {
        let cases: &[(&str, &[&str])] = &[
            ("[]", &[]),
            (r#"[""]"#, &[""]),
            (r#"["a"]"#, &["a"]),
            (r#"["a","b"]"#, &["a", "b"]),
            (r#"[ "a", "b" ]"#, &["a", "b"]),
            ("[\t\"a\",\t\"b\"\t]", &["a", "b"]),
            ("\t[\t\"a\",\t\"b\"\t]\t", &["a", "b"]),
            (
                r#"["abc 123", "♥", "☃", "\" \\ \/ \b \f \n \r \t \u0000"]"#,
                &["abc 123", "♥", "☃", "\" \\ / \u{8} \u{c} \n \r \t \u{0}"],
            ),
            (
                r#"["\ud83d\ude00", "\ud800x", "\udc00\ud800"]"#,
                &["😀", "\u{fffd}x", "\u{fffd}\u{fffd}"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(strings(input), *want, "{input}");
        }
    }

    #[test]
    fn arrays_with_other_values() {
        for input in [
            r#"["a",42,"b"]"#,
            r#"["a",123.456,"b"]"#,
            r#"["a",{},"b"]"#,
            r#"["a",{"c": "d"},"b"]"#,
            r#"["a",["c"],"b"]"#,
            r#"["a",true,"b"]"#,
            r#"["a",false,"b"]"#,
            r#"["a",null,"b"]"#,
            r#"[ "echo", [ "nested json" ] ]"#,
        ] {
            assert_eq!(parse_array(input), JsonArray::NotStrings, "{input}");
        }
    }

    #[test]
    fn invalid_json() {
        for input in [
            "[",
            r#"["a""#,
            r#"["a",]"#,
            r#"['a']"#,
            r#"["a"] x"#,
            r#"["a", 01]"#,
            r#"["a", 1.]"#,
            r#"["a", -]"#,
            r#"["a", 1e999]"#,
            r#"["a", {"x": 1e400}]"#,
            "[\"a\tb\"]",
            r#"["\x"]"#,
            r#"["\u12"]"#,
            r#"[{"a" 1}]"#,
            r#"[{1: 2}]"#,
            r#"[tru]"#,
        ] {
            assert_eq!(parse_array(input), JsonArray::Invalid, "{input}");
        }
        assert_eq!(parse_array(r#"["a", 1e-400]"#), JsonArray::NotStrings);
    }

    #[test]
    fn nesting_limit() {
        let ok = format!("[{}{}]", "[".repeat(9_999), "]".repeat(9_999));
        assert_eq!(parse_array(&ok), JsonArray::NotStrings);
        let deep = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_array(&deep), JsonArray::Invalid);
        let huge = "[".repeat(1_000_000);
        assert_eq!(parse_array(&huge), JsonArray::Invalid);
    }

    #[test]
    fn literal_positions() {
        let JsonArray::Strings(v) = parse_array(r#" [ "ab", "c" ]"#) else {
            panic!("not strings")
        };
        assert_eq!(v, vec![("ab".to_string(), 3, 7), ("c".to_string(), 9, 12)]);
    }
}
