//! Turning TOML strings into Dockerfile words, writing instructions the way a
//! Dockerfile would show them, and Go duration syntax.

use crate::syntax::CommandLine;

/// A TOML string as a Dockerfile word for the shell lexer: every character is
/// literal except `$` expansions (`$NAME`, `${NAME}`, `${NAME:-default}`, ...), and
/// `$$` stands for a literal `$`. Quotes and backslashes are escaped so the lexer
/// gives them back unchanged.
pub(crate) fn word(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                out.push_str("\\$");
            }
            '\\' | '"' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A TOML string written as one Dockerfile word with the same meaning, quoted
/// when it has to be (for `original`, i.e. history and display).
pub(crate) fn display(text: &str) -> String {
    let needs_quotes = text.is_empty()
        || text
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\'));
    let mut out = String::with_capacity(text.len() + 2);
    if needs_quotes {
        out.push('"');
    }
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                out.push_str("\\$");
            }
            '"' | '\\' if needs_quotes => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    if needs_quotes {
        out.push('"');
    }
    out
}

/// A JSON array of strings as a Dockerfile exec form shows it: `["a", "b"]`.
pub(crate) fn json_array<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|s| serde_json::Value::String(s.as_ref().to_string()).to_string())
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A command line as written after its keyword.
pub(crate) fn command(cmd: &CommandLine) -> String {
    match cmd {
        CommandLine::Shell(s) => s.clone(),
        CommandLine::Exec(argv) => json_array(argv),
    }
}

/// Joins `key=value` pairs of TOML strings for `ENV`/`LABEL`/`ARG` display.
pub(crate) fn pairs<'a>(items: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> String {
    items
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{}={}", display(k), display(v)),
            None => display(k),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Words separated by spaces, or a JSON array when one of them has whitespace
/// (or is empty) and would not read back as one word.
pub(crate) fn word_list(items: &[String]) -> String {
    if items
        .iter()
        .any(|s| s.is_empty() || s.chars().any(char::is_whitespace))
    {
        json_array(items)
    } else {
        items.join(" ")
    }
}

/// The smallest non-zero health-check duration Docker accepts.
const MIN_DURATION_NS: u64 = 1_000_000;

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `0`), as `docker build` does for
/// `HEALTHCHECK` options: negative values and non-zero values under 1ms are refused.
/// Returns nanoseconds.
pub(crate) fn duration_ns(text: &str) -> Result<u64, String> {
    // Go's own rules, shared with the Dockerfile's HEALTHCHECK flags.
    let ns = crate::dockerfile::goparse::parse_duration(text).map_err(|e| {
        let e = e.strip_prefix("time: ").unwrap_or(&e).to_string();
        if e.contains("unit") {
            format!("{e} (use ns, us, ms, s, m or h)")
        } else {
            e
        }
    })?;
    let ns = u64::try_from(ns).map_err(|_| format!("duration {text:?} cannot be negative"))?;
    if ns != 0 && ns < MIN_DURATION_NS {
        return Err(format!("duration {text:?} cannot be less than 1ms"));
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_everything_but_expansions() {
        assert_eq!(word("a b"), "a b");
        assert_eq!(word(r#"say "hi" 'x' \n"#), r#"say \"hi\" \'x\' \\n"#);
        assert_eq!(word("$HOME/${X:-y}"), "$HOME/${X:-y}");
        assert_eq!(word("cost: $$5"), "cost: \\$5");
    }

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(display("plain"), "plain");
        assert_eq!(display("$A:b"), "$A:b");
        assert_eq!(display("a b"), "\"a b\"");
        assert_eq!(display(r#"x"y"#), r#""x\"y""#);
        assert_eq!(display(""), "\"\"");
        assert_eq!(display("$$"), "\\$");
    }

    #[test]
    fn json_and_lists() {
        assert_eq!(json_array(&["a", "b \"c\""]), r#"["a", "b \"c\""]"#);
        assert_eq!(word_list(&["80".into(), "443".into()]), "80 443");
        assert_eq!(word_list(&["/a b".into()]), r#"["/a b"]"#);
        assert_eq!(
            pairs([("A", Some("1")), ("B", Some("x y"))]),
            "A=1 B=\"x y\""
        );
        assert_eq!(pairs([("NAME", None)]), "NAME");
    }

    #[test]
    fn go_durations() {
        assert_eq!(duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Ok(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Ok(500_000_000));
        assert_eq!(duration_ns("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(duration_ns(".5s"), Ok(500_000_000));
        assert_eq!(duration_ns("2h45m0.5s"), Ok(9_900_500_000_000));
        assert_eq!(duration_ns("1\u{b5}s1ms"), Ok(1_001_000));
        assert_eq!(duration_ns("0"), Ok(0));
        assert_eq!(duration_ns("0s"), Ok(0));
        assert!(duration_ns("").is_err());
        assert!(duration_ns("30").is_err_and(|e| e.contains("missing unit")));
        assert!(duration_ns("3d").is_err_and(|e| e.contains("unknown unit")));
        assert!(duration_ns("-1s").is_err_and(|e| e.contains("negative")));
        assert!(duration_ns("10us").is_err_and(|e| e.contains("less than 1ms")));
        assert!(duration_ns("s").is_err());
        assert!(duration_ns("1.s").is_ok());
        assert!(duration_ns("9999999999h").is_err_and(|e| e.contains("invalid duration")));
    }
}
