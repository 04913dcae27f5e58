//! Instruction flags (`--from=x`, `--link`), checked the way BuildKit's `BFlags` does,
//! but reporting every bad flag instead of the first.

use miette::SourceSpan;

use super::ast::Word;
use super::codes;
use super::gostr::to_lower;
use crate::syntax::Spanned;
use crate::Problem;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `--link`, `--link=true`, `--link=false`.
    Bool,
    /// `--from=x`, given once.
    String,
    /// `--mount=x`, repeatable.
    Strings,
}

/// A flag an instruction accepts.
pub(crate) type Spec = (&'static str, Kind);

/// One value given for a flag.
#[derive(Debug, Clone)]
pub(crate) struct Given {
    /// The value (empty for booleans).
    pub value: String,
    /// A boolean flag's value.
    pub on: bool,
    /// The whole `--flag=value` word.
    pub span: SourceSpan,
    /// Just the value, when there is one; else the whole word.
    pub value_span: SourceSpan,
}

/// The flags of one instruction, after checking.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    given: Vec<(&'static str, Given)>,
}

impl Flags {
    /// The value of a single-valued flag, if given.
    pub fn get(&self, name: &str) -> Option<&Given> {
        self.given.iter().find(|(n, _)| *n == name).map(|(_, g)| g)
    }

    /// Moves out the value of a single-valued flag, as written, with the span of the
    /// value.
    pub fn take(&mut self, name: &str) -> Option<Spanned<String>> {
        let i = self.given.iter().position(|(n, _)| *n == name)?;
        // `remove`, not `swap_remove`: the order of what remains matters to
        // repeatable flags (`--exclude=a --exclude=!a/b`).
        let (_, g) = self.given.remove(i);
        Some(Spanned::new(g.value, g.value_span))
    }

    /// Moves out every value of a repeatable flag, in order.
    pub fn take_all(&mut self, name: &str) -> Vec<Spanned<String>> {
        let mut out = Vec::new();
        self.given.retain_mut(|(n, g)| {
            if *n == name {
                out.push(Spanned::new(std::mem::take(&mut g.value), g.value_span));
                false
            } else {
                true
            }
        });
        out
    }

    /// A boolean flag: `None` when absent.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.get(name).map(|g| g.on)
    }
}

/// The span of the value in `--name=value` (found in the source text of the word).
fn value_span(text: &str, span: SourceSpan) -> SourceSpan {
    let lo = span.offset();
    let hi = lo + span.len();
    match text.get(lo..hi).and_then(|s| s.find('=')) {
        Some(i) => SourceSpan::new((lo + i + 1).into(), hi - (lo + i + 1)),
        None => span,
    }
}

fn accepted(instruction: &str, specs: &[Spec]) -> String {
    if specs.is_empty() {
        return format!("{instruction} takes no flags");
    }
    let names: Vec<String> = specs.iter().map(|(n, _)| format!("--{n}")).collect();
    format!("{instruction} accepts {}", names.join(", "))
}

/// Checks `words` against `specs` for `instruction` (upper case, for messages),
/// pushing a problem for every bad flag. The values are moved out of the words.
pub(crate) fn parse(
    instruction: &str,
    specs: &[Spec],
    words: &mut [Word],
    text: &str,
    problems: &mut Vec<Problem>,
) -> Flags {
    let mut flags = Flags::default();
    for word in words.iter_mut() {
        let a = word.value.as_str();
        if a == "--" {
            break;
        }
        let Some(body) = a.strip_prefix("--") else {
            problems.push(Problem::new(
                codes::UNKNOWN_FLAG,
                format!("arg should start with -- : {a}"),
                word.span,
            ));
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let flag_name = &a[..name.len() + 2];
        let Some(&(spec_name, kind)) = specs.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = specs.iter().map(|(n, _)| *n).collect();
            let mut help = accepted(instruction, specs);
            if let Some(s) = super::gostr::suggest(name, &names, true) {
                help = format!("did you mean `--{s}`? {help}");
            }
            problems.push(
                Problem::new(
                    codes::UNKNOWN_FLAG,
                    format!("unknown flag: {flag_name}"),
                    word.span,
                )
                .label(format!("{instruction} has no such flag"))
                .help(help),
            );
            continue;
        };
        if kind != Kind::Strings && flags.get(spec_name).is_some() {
            problems.push(
                Problem::new(
                    codes::DUPLICATE_FLAG,
                    format!("duplicate flag specified: {flag_name}"),
                    word.span,
                )
                .label("given again here")
                .help("give each flag once"),
            );
            continue;
        }
        let missing = || {
            Problem::new(
                codes::BAD_FLAG_VALUE,
                format!("missing a value on flag: {flag_name}"),
                word.span,
            )
            .label("no value")
            .help(format!("write `{flag_name}=<value>`"))
        };
        let (value, on) = match (kind, value) {
            (Kind::Bool, Some("")) => {
                problems.push(missing());
                continue;
            }
            (Kind::Bool, v) => match to_lower(v.unwrap_or("")).as_str() {
                "true" | "" => (String::new(), true),
                "false" => (String::new(), false),
                _ => {
                    problems.push(
                        Problem::new(
                            codes::BAD_FLAG_VALUE,
                            format!(
                                "expecting boolean value for flag {flag_name}, not: {}",
                                v.unwrap_or("")
                            ),
                            value_span(text, word.span),
                        )
                        .label("not true or false")
                        .help(format!(
                            "write `{flag_name}`, `{flag_name}=true` or `{flag_name}=false`"
                        )),
                    );
                    continue;
                }
            },
            (_, None) => {
                problems.push(missing());
                continue;
            }
            (_, Some(_)) => {
                // `--name=value`: keep the value, reusing the word's allocation.
                let prefix = flag_name.len() + 1;
                let mut v = std::mem::take(&mut word.value);
                v.drain(..prefix);
                (v, false)
            }
        };
        flags.given.push((
            spec_name,
            Given {
                value,
                on,
                span: word.span,
                value_span: value_span(text, word.span),
            },
        ));
    }
    flags
}
