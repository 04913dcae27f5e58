//! History `created_by` strings, written the way BuildKit's Dockerfile frontend
//! writes them, so `forge history` and `docker history` read the same.
//!
//! BuildKit formats several of them with Go's `fmt` verbs (`%q` of a string
//! slice, `%v` of a map, `%q` of a health-check struct), so this module carries
//! small re-implementations of those formats: [`go_quote`], [`go_duration`],
//! [`go_quote_rune`].

use forge_ir::{CommandLine, Healthcheck, Op, Step};

/// The `created_by` text of a step and whether it is written with BuildKit's
/// ` # buildkit` suffix (steps that make a file-system change).
///
/// `run_args` are the build args in effect for a RUN as `(name, value)` in
/// declaration order (BuildKit prefixes them as `|N name=value ...`).
pub fn created_by(step: &Step, run_args: &[(String, String)]) -> String {
    match &step.op {
        Op::Run(run) => {
            let argv = command_argv(&run.command, &step.ctx.shell);
            let mut words: Vec<String> = Vec::new();
            if !run_args.is_empty() {
                words.push(format!("|{}", run_args.len()));
                words.extend(run_args.iter().map(|(k, v)| format!("{k}={v}")));
            }
            words.extend(argv);
            format!("RUN {} # buildkit", words.join(" "))
        }
        // BuildKit writes the keyword, the (expanded) sources and the
        // destination: no flags (`--chown`, `--from`, ...).
        // destination as written (relative to WORKDIR if it was): no flags
        // (`--chown`, `--from`, ...).
        Op::Copy(copy) => format!(
            "COPY {} {} # buildkit",
            copy.sources.join(" "),
            written_dest(step, &copy.dest)
        ),
        Op::Add(add) => format!(
            "ADD {} {} # buildkit",
            add.sources.join(" "),
            written_dest(step, &add.dest)
        ),
        Op::Env(pairs) => format!("ENV {}", join_pairs(pairs)),
        Op::Label(pairs) => format!("LABEL {}", join_pairs(pairs)),
        Op::Arg(pairs) => {
            // BuildKit records the ARG as written (with its default, not the
            // build-arg override): take it from the instruction text.
            let written = instruction_text(step);
            if written.to_ascii_uppercase().starts_with("ARG ") {
                written
            } else {
                let items: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect();
                format!("ARG {}", items.join(" "))
            }
        }
        Op::Expose(ports) => {
            let mut sorted: Vec<&String> = ports.iter().collect();
            sorted.sort();
            sorted.dedup();
            let items: Vec<String> = sorted.iter().map(|p| format!("{p}:{{}}")).collect();
            format!("EXPOSE map[{}]", items.join(" "))
        }
        Op::Volume(vols) => format!("VOLUME [{}]", vols.join(" ")),
        Op::User(user) => format!("USER {user}"),
        Op::Workdir(dir) => format!("WORKDIR {dir}"),
        Op::Cmd(cmd) => format!(
            "CMD {}",
            go_quote_slice(&command_argv(cmd, &step.ctx.shell))
        ),
        Op::Entrypoint(cmd) => format!(
            "ENTRYPOINT {}",
            go_quote_slice(&command_argv(cmd, &step.ctx.shell))
        ),
        Op::StopSignal(sig) => format!("STOPSIGNAL {sig}"),
        Op::Healthcheck(hc) => format!("HEALTHCHECK {}", healthcheck_text(hc)),
        Op::Shell(shell) => format!("SHELL [{}]", shell.join(" ")),
        Op::Maintainer(name) => format!("MAINTAINER {name}"),
        Op::Onbuild(trigger) => format!("ONBUILD {trigger}"),
    }
}

/// The argv of a command line: exec form as written, shell form through `shell`.
pub fn command_argv(command: &CommandLine, shell: &[String]) -> Vec<String> {
    match command {
        CommandLine::Exec(argv) => argv.clone(),
        CommandLine::Shell(text) => {
            let mut argv = if shell.is_empty() {
                vec!["/bin/sh".to_string(), "-c".to_string()]
            } else {
                shell.to_vec()
            };
            argv.push(text.clone());
            argv
        }
    }
}

/// A COPY or ADD destination as written (BuildKit's history shows it
/// expanded but not joined with WORKDIR, which the IR's `dest` is): the
/// instruction's last word (or JSON item) when it has no variable and joins
/// to `dest`; `dest` otherwise.
fn written_dest(step: &Step, dest: &str) -> String {
    let text = step.origin.text.trim();
    if text.contains("<<") || text.contains('$') {
        return dest.to_string();
    }
    let rest = text.split_once(char::is_whitespace).map_or("", |(_, r)| r);
    let words: Vec<&str> = rest
        .split_whitespace()
        .skip_while(|w| w.starts_with("--"))
        .collect();
    let joined = words.join(" ");
    let written = if joined.starts_with('[') {
        serde_json::from_str::<Vec<String>>(&joined)
            .ok()
            .and_then(|items| items.last().cloned())
    } else {
        words.last().map(|w| (*w).to_string())
    };
    match written {
        Some(w)
            if super::files::destination(&step.ctx.workdir, &w)
                == super::files::destination("/", dest) =>
        {
            w
        }
        _ => dest.to_string(),
    }
}

/// The instruction as written, on one line (continuations joined), keyword
/// upper-cased.
fn instruction_text(step: &Step) -> String {
    let text = step.origin.text.trim();
    match text.split_once(char::is_whitespace) {
        Some((keyword, rest)) => format!("{} {}", keyword.to_ascii_uppercase(), rest.trim()),
        None => text.to_ascii_uppercase(),
    }
}

fn join_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub fn go_quote_slice(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `strconv.Quote`: double quotes, Go escapes for `"`, `\` and
/// non-printable characters; printable Unicode kept as it is.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    out
}

/// Go's `strconv.QuoteRune` of an integer (what `%q` prints for an `int`).
pub fn go_quote_rune(n: u32) -> String {
    let mut out = String::from("'");
    match char::from_u32(n) {
        Some('\'') => out.push_str("\\'"),
        Some('\\') => out.push_str("\\\\"),
        Some(c) => push_escaped(&mut out, c),
        None => out.push_str(&format!("\\x{n:02x}")),
    }
    out.push('\'');
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        c if c.is_control() => {
            let n = c as u32;
            if n <= 0xffff {
                out.push_str(&format!("\\u{n:04x}"));
            } else {
                out.push_str(&format!("\\U{n:08x}"));
            }
        }
        c => out.push(c),
    }
}

/// Go's `time.Duration.String` of a nanosecond count: `0s`, `1.5s`, `1m30s`,
/// `1h0m0s`, `500ms`, `2µs`.
pub fn go_duration(ns: u64) -> String {
    if ns == 0 {
        return "0s".to_string();
    }
    if ns < 1_000_000_000 {
        let (unit, scale) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(ns, scale));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = ns / 60_000_000_000 % 60;
    let secs_ns = ns % 60_000_000_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{}s", fraction(secs_ns, 1_000_000_000)));
    out
}

/// `value / scale` with the fractional digits Go prints (trailing zeros dropped).
fn fraction(value: u64, scale: u64) -> String {
    let whole = value / scale;
    let rest = value % scale;
    if rest == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// BuildKit's `fmt.Sprintf("%q", healthConfig)` of docker's `HealthConfig`
/// (`Test`, `Interval`, `Timeout`, `StartPeriod`, [`StartInterval`,] `Retries`).
/// The `StartInterval` field is printed only when set: the Docker engine's
/// BuildKit predates it.
fn healthcheck_text(hc: &Healthcheck) -> String {
    let mut fields = vec![
        go_quote_slice(&hc.test),
        go_quote(&go_duration(hc.interval_ns)),
        go_quote(&go_duration(hc.timeout_ns)),
        go_quote(&go_duration(hc.start_period_ns)),
    ];
    if hc.start_interval_ns != 0 {
        fields.push(go_quote(&go_duration(hc.start_interval_ns)));
    }
    fields.push(go_quote_rune(hc.retries));
    format!("&{{{}}}", fields.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(30_000_000_000), "30s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(2_000), "2µs");
        assert_eq!(go_duration(7), "7ns");
    }

    #[test]
    fn go_quotes() {
        assert_eq!(go_quote("a \"b\"\\"), r#""a \"b\"\\""#);
        assert_eq!(go_quote("tab\there\n"), r#""tab\there\n""#);
        assert_eq!(go_quote("é"), "\"é\"");
        assert_eq!(go_quote_rune(3), r"'\x03'");
        assert_eq!(go_quote_rune(0), r"'\x00'");
        assert_eq!(go_quote_rune(10), r"'\n'");
        assert_eq!(go_quote_rune(65), "'A'");
        assert_eq!(
            go_quote_slice(&["/bin/sh".into(), "-c".into(), "echo hi".into()]),
            r#"["/bin/sh" "-c" "echo hi"]"#
        );
    }

    #[test]
    fn healthcheck_like_buildkit() {
        let hc = Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ns: 5_000_000_000,
            timeout_ns: 3_000_000_000,
            start_period_ns: 0,
            start_interval_ns: 0,
            retries: 3,
        };
        assert_eq!(
            healthcheck_text(&hc),
            r#"&{["CMD-SHELL" "true"] "5s" "3s" "0s" '\x03'}"#
        );
    }
}
