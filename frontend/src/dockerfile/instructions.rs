//! The typed layer: nodes → [`crate::syntax`] instructions, with BuildKit's checks
//! (`instructions/parse.go`) and error messages, every problem reported.
//!
//! Values stay as written (quotes and `$VAR`s intact): expansion happens in lowering.

use miette::SourceSpan;

use super::ast::{self, Ast, Node, Word};
use super::codes;
use super::flags::{self, Flags, Kind, Spec};
use super::goparse::{parse_duration, parse_int32};
use super::gostr::{equal_fold, quote, to_lower, to_upper};
use super::heredoc::{chomp, parse_heredoc};
use crate::syntax::{
    AddInstr, ArgDecl, BuildFile, CommandLine, CopyInstr, FromInstr, HealthcheckInstr, Heredoc,
    Instruction, InstructionKind, KeyValue, RunInstr, SourceFile, Spanned, StageSyntax,
};
use crate::Problem;

/// Every instruction BuildKit knows, for "did you mean" help.
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

const FROM_FLAGS: &[Spec] = &[("platform", Kind::String)];
const RUN_FLAGS: &[Spec] = &[
    ("mount", Kind::Strings),
    ("network", Kind::String),
    ("security", Kind::String),
];
const COPY_FLAGS: &[Spec] = &[
    ("chown", Kind::String),
    ("from", Kind::String),
    ("chmod", Kind::String),
    ("link", Kind::Bool),
    ("exclude", Kind::Strings),
    ("parents", Kind::Bool),
];
const ADD_FLAGS: &[Spec] = &[
    ("chown", Kind::String),
    ("chmod", Kind::String),
    ("link", Kind::Bool),
    ("keep-git-dir", Kind::Bool),
    ("checksum", Kind::String),
    ("unpack", Kind::Bool),
    ("exclude", Kind::Strings),
];
const HEALTHCHECK_FLAGS: &[Spec] = &[
    ("interval", Kind::String),
    ("timeout", Kind::String),
    ("start-period", Kind::String),
    ("start-interval", Kind::String),
    ("retries", Kind::String),
];

/// COPY/ADD sources, destination, and inline (heredoc) sources.
type SourcesAndDest = (Vec<Spanned<String>>, Spanned<String>, Vec<Heredoc>);

/// What one node turned into.
enum Converted {
    From(FromInstr),
    Arg(Vec<ArgDecl>),
    Other(InstructionKind),
}

struct Ctx<'a> {
    text: &'a str,
    problems: &'a mut Vec<Problem>,
}

/// Moves a word's text out (the tree is consumed as it is converted).
fn spanned(w: &mut Word) -> Spanned<String> {
    Spanned::new(std::mem::take(&mut w.value), w.span)
}

fn join_spans(a: SourceSpan, b: SourceSpan) -> SourceSpan {
    let lo = a.offset().min(b.offset());
    let hi = (a.offset() + a.len()).max(b.offset() + b.len());
    SourceSpan::new(lo.into(), hi - lo)
}

fn values(words: &mut [Word]) -> Vec<String> {
    words
        .iter_mut()
        .map(|w| std::mem::take(&mut w.value))
        .collect()
}

/// BuildKit's `handleJSONArgs`: the exec form as is, the shell form joined.
fn command_line(json: bool, words: &mut [Word]) -> CommandLine {
    if json {
        CommandLine::Exec(values(words))
    } else if let [one] = words {
        CommandLine::Shell(std::mem::take(&mut one.value))
    } else {
        CommandLine::Shell(values(words).join(" "))
    }
}

fn to_heredoc(h: &mut ast::Heredoc) -> Heredoc {
    Heredoc {
        name: std::mem::take(&mut h.name),
        content: if h.chomp {
            chomp(&h.content)
        } else {
            std::mem::take(&mut h.content)
        },
        expand: h.expand,
        chomp: h.chomp,
    }
}

/// Moves a string out, trimmed (Go's `strings.TrimSpace`).
fn trimmed(s: &mut String) -> String {
    let t = s.trim();
    if t.len() == s.len() {
        std::mem::take(s)
    } else {
        t.to_string()
    }
}

/// `(?i)^\s*ONBUILD\s*` removed, as BuildKit does for the stored trigger.
fn strip_onbuild(original: &str) -> &str {
    let is_re_space = |c: char| matches!(c, '\t' | '\n' | '\u{c}' | '\r' | ' ');
    let s = original.trim_start_matches(is_re_space);
    match s.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("onbuild") => {
            s[7..].trim_start_matches(is_re_space)
        }
        _ => original,
    }
}

/// `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

impl Ctx<'_> {
    fn push(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        span: SourceSpan,
        label: impl Into<String>,
        help: Option<String>,
    ) {
        let mut p = Problem::new(code, message, span).label(label);
        if let Some(h) = help {
            p = p.help(h);
        }
        self.problems.push(p);
    }

    fn flags(&mut self, name: &str, specs: &[Spec], node: &mut Node) -> Flags {
        flags::parse(name, specs, &mut node.flags, self.text, self.problems)
    }

    fn at_least_one(&mut self, name: &str, node: &Node) -> bool {
        if node.next.is_empty() && node.child.is_none() {
            self.push(
                codes::MISSING_ARGUMENTS,
                format!("{name} requires at least one argument"),
                node.keyword_span,
                "nothing after this",
                None,
            );
            return false;
        }
        true
    }

    fn exactly_one<'n>(&mut self, name: &str, node: &'n mut Node) -> Option<&'n mut Word> {
        match node.next.as_mut_slice() {
            [one] => Some(one),
            [] => {
                self.push(
                    codes::MISSING_ARGUMENTS,
                    format!("{name} requires exactly one argument"),
                    node.keyword_span,
                    "nothing after this",
                    None,
                );
                None
            }
            [_, extra, ..] => {
                self.push(
                    codes::TOO_MANY_ARGUMENTS,
                    format!("{name} requires exactly one argument"),
                    extra.span,
                    "unexpected argument",
                    None,
                );
                None
            }
        }
    }

    /// ENV and LABEL pairs (three words each: key, value, `=` or empty).
    fn key_values(&mut self, name: &str, node: &mut Node) -> Option<Vec<KeyValue>> {
        if !self.at_least_one(name, node) {
            return None;
        }
        let mut out = Vec::with_capacity(node.next.len() / 3);
        let mut ok = true;
        let keyword_span = node.keyword_span;
        for triple in node.next.chunks_mut(3) {
            let [key, value, _] = triple else {
                self.push(
                    codes::TOO_MANY_ARGUMENTS,
                    format!("Bad input to {name}, too many arguments"),
                    triple.first().map_or(keyword_span, |w| w.span),
                    "unexpected",
                    None,
                );
                return None;
            };
            if key.value.is_empty() {
                self.push(
                    codes::BLANK_NAME,
                    format!("{name} names can not be blank"),
                    join_spans(key.span, value.span),
                    "no name before `=`",
                    Some("write `NAME=value`".into()),
                );
                ok = false;
                continue;
            }
            out.push(KeyValue {
                key: spanned(key),
                value: spanned(value),
            });
        }
        ok.then_some(out)
    }

    fn heredoc_sources(
        &mut self,
        name: &str,
        node: &mut Node,
        heredocs: &[ast::Heredoc],
    ) -> Option<SourcesAndDest> {
        let keyword_span = node.keyword_span;
        let Some((dest, srcs)) = node.next.split_last_mut().filter(|(_, s)| !s.is_empty()) else {
            self.push(
                codes::MISSING_ARGUMENTS,
                format!(
                    "{name} requires at least two arguments, but only one was provided. \
                     Destination could not be determined"
                ),
                node.next.first().map_or(keyword_span, |w| w.span),
                "needs a source and a destination",
                Some(format!("write `{name} <src>... <dest>`")),
            );
            return None;
        };
        if let Ok(Some(_)) = parse_heredoc(&dest.value) {
            self.push(
                codes::HEREDOC_DESTINATION,
                format!("{name} cannot accept a heredoc as a destination"),
                dest.span,
                "a heredoc cannot be the destination",
                Some("put the destination path last".into()),
            );
            return None;
        }
        let mut sources = Vec::with_capacity(srcs.len());
        let mut docs = Vec::new();
        for src in srcs {
            match parse_heredoc(&src.value) {
                Ok(Some(h)) => {
                    let content = heredocs
                        .iter()
                        .rev()
                        .find(|d| d.name == h.name)
                        .map(|d| d.content.as_str())
                        .unwrap_or("");
                    docs.push(Heredoc {
                        content: if h.chomp {
                            chomp(content)
                        } else {
                            content.to_string()
                        },
                        name: h.name.clone(),
                        expand: h.expand,
                        chomp: h.chomp,
                    });
                    sources.push(Spanned::new(format!("<<{}", h.name), src.span));
                }
                _ => sources.push(spanned(src)),
            }
        }
        Some((sources, spanned(dest), docs))
    }

    /// A HEALTHCHECK duration flag: `None` when absent or empty.
    fn interval(&mut self, flags: &Flags, name: &'static str) -> Result<Option<u64>, ()> {
        let Some(given) = flags.get(name) else {
            return Ok(None);
        };
        if given.value.is_empty() {
            return Ok(None);
        }
        match parse_duration(&given.value) {
            Ok(0) => Ok(Some(0)),
            Ok(d) if d < 1_000_000 => {
                self.push(
                    codes::BAD_FLAG_VALUE,
                    format!("Interval {} cannot be less than 1ms", quote(name)),
                    given.value_span,
                    "too short",
                    Some("use 0 for the default, or at least 1ms".into()),
                );
                Err(())
            }
            Ok(d) => Ok(Some(d.unsigned_abs())),
            Err(e) => {
                self.push(
                    codes::BAD_FLAG_VALUE,
                    e,
                    given.value_span,
                    "not a duration",
                    Some("write a duration such as 30s, 1m30s or 500ms".into()),
                );
                Err(())
            }
        }
    }

    fn healthcheck(&mut self, node: &mut Node) -> Option<HealthcheckInstr> {
        if node.next.is_empty() {
            self.at_least_one("HEALTHCHECK", node);
            return None;
        }
        let typ = node
            .next
            .first()
            .map(|w| to_upper(&w.value))
            .unwrap_or_default();
        let flags = if typ == "NONE" {
            // BuildKit does not look at flags for NONE.
            Flags::default()
        } else {
            self.flags("HEALTHCHECK", HEALTHCHECK_FLAGS, node)
        };
        let json = node.attributes.json;
        let (typ_word, args) = node.next.split_first_mut()?;
        if typ == "NONE" {
            if let Some(extra) = args.first() {
                self.push(
                    codes::TOO_MANY_ARGUMENTS,
                    "HEALTHCHECK NONE takes no arguments",
                    extra.span,
                    "unexpected argument",
                    None,
                );
                return None;
            }
            return Some(HealthcheckInstr::None);
        }
        if typ != "CMD" {
            self.push(
                codes::BAD_HEALTHCHECK,
                format!("Unknown type {} in HEALTHCHECK (try CMD)", quote(&typ)),
                typ_word.span,
                "not CMD or NONE",
                Some("write `HEALTHCHECK [options] CMD command` or `HEALTHCHECK NONE`".into()),
            );
            return None;
        }
        if args.is_empty() {
            self.push(
                codes::MISSING_ARGUMENTS,
                "Missing command after HEALTHCHECK CMD",
                typ_word.span,
                "no command after this",
                None,
            );
            return None;
        }
        let test = command_line(json, args);
        let interval = self.interval(&flags, "interval");
        let timeout = self.interval(&flags, "timeout");
        let start_period = self.interval(&flags, "start-period");
        let start_interval = self.interval(&flags, "start-interval");
        let mut retries = Ok(None);
        if let Some(given) = flags.get("retries").filter(|g| !g.value.is_empty()) {
            retries = match parse_int32(&given.value) {
                Ok(n) if n < 0 => {
                    self.push(
                        codes::BAD_FLAG_VALUE,
                        format!("--retries cannot be negative ({n})"),
                        given.value_span,
                        "negative",
                        None,
                    );
                    Err(())
                }
                Ok(n) => Ok(u32::try_from(n).ok()),
                Err(e) => {
                    self.push(
                        codes::BAD_FLAG_VALUE,
                        e,
                        given.value_span,
                        "not a number",
                        None,
                    );
                    Err(())
                }
            };
        }
        Some(HealthcheckInstr::Check {
            test,
            interval_ns: interval.ok()?,
            timeout_ns: timeout.ok()?,
            start_period_ns: start_period.ok()?,
            start_interval_ns: start_interval.ok()?,
            retries: retries.ok()?,
        })
    }

    fn from(&mut self, node: &mut Node) -> Option<FromInstr> {
        let mut flags = self.flags("FROM", FROM_FLAGS, node);
        let keyword_span = node.keyword_span;
        let args = &mut node.next;
        let mut ok = true;
        let mut name = None;
        if args.len() == 3 && equal_fold(&args[1].value, "as") {
            let lowered = to_lower(&args[2].value);
            if valid_stage_name(&lowered) {
                name = Some(spanned(&mut args[2]));
            } else {
                self.push(
                    codes::BAD_STAGE_NAME,
                    format!(
                        "invalid name for build stage: {}, name can't start with a number or contain symbols",
                        quote(&args[2].value)
                    ),
                    args[2].span,
                    "not a valid stage name",
                    Some(
                        "stage names start with a letter and contain only letters, digits, `-`, `_` and `.`"
                            .into(),
                    ),
                );
                ok = false;
            }
        } else if args.len() != 1 {
            let (code, span, label) = match args.get(1) {
                None => (
                    codes::MISSING_ARGUMENTS,
                    keyword_span,
                    "no image after this",
                ),
                Some(_) if args.len() == 2 => (
                    codes::MISSING_ARGUMENTS,
                    args[1].span,
                    "expected `AS name` after the image",
                ),
                Some(w) => (codes::TOO_MANY_ARGUMENTS, w.span, "unexpected argument"),
            };
            self.push(
                code,
                "FROM requires either one or three arguments",
                span,
                label,
                Some("write `FROM image [AS name]`".into()),
            );
            ok = false;
        }
        let base = args.first_mut()?;
        if !ok {
            return None;
        }
        Some(FromInstr {
            base: spanned(base),
            name,
            platform: flags.take("platform"),
            span: node.span,
            original: trimmed(&mut node.original),
        })
    }

    fn onbuild(
        &mut self,
        node: &mut Node,
        heredocs: &mut [ast::Heredoc],
    ) -> Option<InstructionKind> {
        if node.child.is_none() {
            self.at_least_one("ONBUILD", node);
            return None;
        }
        let flags_before = self.problems.len();
        self.flags("ONBUILD", &[], node);
        let mut expression = strip_onbuild(&node.original).to_string();
        for h in heredocs.iter() {
            expression.push('\n');
            expression.push_str(&h.content);
            expression.push_str(&h.name);
        }
        let child = node.child.as_deref_mut()?;
        let trigger = to_upper(child.value().trim());
        match trigger.as_str() {
            "ONBUILD" => {
                self.push(
                    codes::BAD_ONBUILD,
                    "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    child.keyword_span,
                    "ONBUILD cannot trigger ONBUILD",
                    None,
                );
                return None;
            }
            "MAINTAINER" | "FROM" => {
                self.push(
                    codes::BAD_ONBUILD,
                    format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    child.keyword_span,
                    "not allowed here",
                    None,
                );
                return None;
            }
            _ => {}
        }
        if self.problems.len() > flags_before {
            return None;
        }
        let kind = match self.convert(child, heredocs)? {
            Converted::Other(kind) => kind,
            Converted::Arg(args) => InstructionKind::Arg(args),
            Converted::From(_) => return None,
        };
        Some(InstructionKind::Onbuild {
            trigger: expression,
            parsed: Box::new(Instruction {
                kind,
                span: child.span,
                original: trimmed(&mut child.original),
            }),
        })
    }

    fn convert(&mut self, node: &mut Node, heredocs: &mut [ast::Heredoc]) -> Option<Converted> {
        let kind = match &*node.keyword {
            "from" => return self.from(node).map(Converted::From),
            "arg" => {
                // BuildKit does not check ARG's flags.
                if !self.at_least_one("ARG", node) {
                    return None;
                }
                let mut decls = Vec::with_capacity(node.next.len());
                let mut ok = true;
                for w in &mut node.next {
                    match w.value.split_once('=') {
                        Some(("", _)) => {
                            self.push(
                                codes::BLANK_NAME,
                                "ARG names can not be blank",
                                w.span,
                                "no name before `=`",
                                Some("write `ARG NAME[=default]`".into()),
                            );
                            ok = false;
                        }
                        Some((name, default)) => {
                            let (name_span, default_span) = split_at_equals(self.text, w.span);
                            decls.push(ArgDecl {
                                name: Spanned::new(name.to_string(), name_span),
                                default: Some(Spanned::new(default.to_string(), default_span)),
                            });
                        }
                        None => decls.push(ArgDecl {
                            name: spanned(w),
                            default: None,
                        }),
                    }
                }
                return ok.then_some(Converted::Arg(decls));
            }
            "env" | "label" => {
                let name = if node.keyword == "env" {
                    "ENV"
                } else {
                    "LABEL"
                };
                self.flags(name, &[], node);
                let pairs = self.key_values(name, node)?;
                if node.keyword == "env" {
                    InstructionKind::Env(pairs)
                } else {
                    InstructionKind::Label(pairs)
                }
            }
            "maintainer" => {
                self.flags("MAINTAINER", &[], node);
                let arg = self.exactly_one("MAINTAINER", node)?;
                InstructionKind::Maintainer(std::mem::take(&mut arg.value))
            }
            "add" => {
                let mut flags = self.flags("ADD", ADD_FLAGS, node);
                let (sources, dest, heredocs) = self.heredoc_sources("ADD", node, heredocs)?;
                InstructionKind::Add(AddInstr {
                    sources,
                    dest,
                    link: flags.bool("link").unwrap_or(false),
                    keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
                    unpack: flags.bool("unpack"),
                    chown: flags.take("chown"),
                    chmod: flags.take("chmod"),
                    checksum: flags.take("checksum"),
                    exclude: flags.take_all("exclude"),
                    heredocs,
                })
            }
            "copy" => {
                let mut flags = self.flags("COPY", COPY_FLAGS, node);
                let mut ok = true;
                if let Some(from) = flags.get("from").filter(|g| g.value.is_empty()) {
                    self.push(
                        codes::EMPTY_FROM_FLAG,
                        "COPY --from requires a value",
                        from.span,
                        "empty --from",
                        Some(
                            "name an earlier stage, a stage index or an image, or drop --from to copy from the build context"
                                .into(),
                        ),
                    );
                    ok = false;
                }
                let (sources, dest, heredocs) = self.heredoc_sources("COPY", node, heredocs)?;
                if !ok {
                    return None;
                }
                InstructionKind::Copy(CopyInstr {
                    sources,
                    dest,
                    link: flags.bool("link").unwrap_or(false),
                    parents: flags.bool("parents").unwrap_or(false),
                    from: flags.take("from"),
                    chown: flags.take("chown"),
                    chmod: flags.take("chmod"),
                    exclude: flags.take_all("exclude"),
                    heredocs,
                })
            }
            "onbuild" => self.onbuild(node, heredocs)?,
            "workdir" => {
                self.flags("WORKDIR", &[], node);
                InstructionKind::Workdir(spanned(self.exactly_one("WORKDIR", node)?))
            }
            "run" => {
                let before = self.problems.len();
                let mut flags = self.flags("RUN", RUN_FLAGS, node);
                let network = flags.get("network");
                if let Some(g) =
                    network.filter(|g| !matches!(g.value.as_str(), "default" | "none" | "host"))
                {
                    self.push(
                        codes::BAD_FLAG_VALUE,
                        format!("invalid network mode {}", quote(&g.value)),
                        g.value_span,
                        "not a network mode",
                        Some("use default, none or host".into()),
                    );
                }
                let security = flags.get("security");
                if let Some(g) =
                    security.filter(|g| !matches!(g.value.as_str(), "insecure" | "sandbox"))
                {
                    self.push(
                        codes::BAD_FLAG_VALUE,
                        format!("security {} is not valid", quote(&g.value)),
                        g.value_span,
                        "not a security mode",
                        Some("use sandbox or insecure".into()),
                    );
                }
                if self.problems.len() > before {
                    return None;
                }
                InstructionKind::Run(RunInstr {
                    command: command_line(node.attributes.json, &mut node.next),
                    mounts: flags.take_all("mount"),
                    network: flags.take("network"),
                    security: flags.take("security"),
                    heredocs: heredocs.iter_mut().map(to_heredoc).collect(),
                })
            }
            "cmd" => {
                self.flags("CMD", &[], node);
                InstructionKind::Cmd(command_line(node.attributes.json, &mut node.next))
            }
            "entrypoint" => {
                self.flags("ENTRYPOINT", &[], node);
                InstructionKind::Entrypoint(command_line(node.attributes.json, &mut node.next))
            }
            "healthcheck" => InstructionKind::Healthcheck(self.healthcheck(node)?),
            "expose" => {
                if !self.at_least_one("EXPOSE", node) {
                    return None;
                }
                self.flags("EXPOSE", &[], node);
                let mut ports: Vec<Spanned<String>> = node.next.iter_mut().map(spanned).collect();
                // BuildKit sorts the ports as strings.
                ports.sort_by(|a, b| a.value.cmp(&b.value));
                InstructionKind::Expose(ports)
            }
            "user" => {
                self.flags("USER", &[], node);
                InstructionKind::User(spanned(self.exactly_one("USER", node)?))
            }
            "volume" => {
                if !self.at_least_one("VOLUME", node) {
                    return None;
                }
                self.flags("VOLUME", &[], node);
                let mut volumes = Vec::with_capacity(node.next.len());
                for w in &node.next {
                    let v = w.value.trim();
                    if v.is_empty() {
                        self.push(
                            codes::EMPTY_VALUE,
                            "VOLUME specified can not be an empty string",
                            w.span,
                            "empty path",
                            None,
                        );
                        return None;
                    }
                    volumes.push(Spanned::new(v.to_string(), w.span));
                }
                InstructionKind::Volume(volumes)
            }
            "stopsignal" => {
                // BuildKit does not check STOPSIGNAL's flags.
                InstructionKind::StopSignal(spanned(self.exactly_one("STOPSIGNAL", node)?))
            }
            "shell" => {
                self.flags("SHELL", &[], node);
                match node.next.first() {
                    None => {
                        self.push(
                            codes::MISSING_ARGUMENTS,
                            "SHELL requires at least one argument",
                            node.keyword_span,
                            "nothing after this",
                            Some("write `SHELL [\"executable\", \"parameters\"]`".into()),
                        );
                        return None;
                    }
                    Some(first) if !node.attributes.json => {
                        self.push(
                            codes::INVALID_JSON,
                            "SHELL requires the arguments to be in JSON form",
                            first.span,
                            "not a JSON array",
                            Some("write `SHELL [\"executable\", \"parameters\"]`".into()),
                        );
                        return None;
                    }
                    Some(_) => InstructionKind::Shell(values(&mut node.next)),
                }
            }
            _ => {
                let help = match super::gostr::suggest(node.value(), INSTRUCTIONS, false) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("instructions are {}", INSTRUCTIONS.join(", ")),
                };
                self.push(
                    codes::UNKNOWN_INSTRUCTION,
                    format!("unknown instruction: {}", node.value()),
                    node.keyword_span,
                    "not an instruction",
                    Some(help),
                );
                return None;
            }
        };
        Some(Converted::Other(kind))
    }
}

/// Splits the span of `name=value` at its first `=` (found in the source text).
fn split_at_equals(text: &str, span: SourceSpan) -> (SourceSpan, SourceSpan) {
    let lo = span.offset();
    let hi = lo + span.len();
    match text.get(lo..hi).and_then(|s| s.find('=')) {
        Some(i) => (
            SourceSpan::new(lo.into(), i),
            SourceSpan::new((lo + i + 1).into(), hi - (lo + i + 1)),
        ),
        None => (span, SourceSpan::new(hi.into(), 0)),
    }
}

/// `syntax` and `check` directives after a `#!` line, which BuildKit's frontend
/// detection honours although the parser itself stops looking at the shebang.
fn shebang_directives(text: &str) -> Vec<(String, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some((first, rest)) = text.split_once('\n') else {
        return Vec::new();
    };
    if !first.starts_with("#!") {
        return Vec::new();
    }
    let mut found: Vec<(String, String)> = Vec::new();
    for line in rest.split('\n') {
        let Some(body) = line.strip_prefix('#') else {
            break;
        };
        let body = body.trim_start();
        let Some((name, value)) = body.split_once('=') else {
            break;
        };
        let name = name.trim_end_matches([' ', '\t', '\r', '\u{c}']);
        let value = value.trim_matches([' ', '\t', '\r', '\u{c}']);
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric())
            && !value.is_empty();
        let key = name.to_ascii_lowercase();
        if !valid || !matches!(key.as_str(), "syntax" | "check" | "escape") {
            break;
        }
        if found.iter().any(|(k, _)| *k == key) {
            break;
        }
        found.push((key, value.to_string()));
    }
    found.retain(|(k, _)| k != "escape");
    found
}

/// Builds the typed file from the tree, pushing problems.
pub(crate) fn build(source: &SourceFile, mut ast: Ast, problems: &mut Vec<Problem>) -> BuildFile {
    let mut ctx = Ctx {
        text: &source.text,
        problems,
    };
    let mut global_args = Vec::new();
    let mut stages: Vec<StageSyntax> = Vec::new();
    // A FROM that failed to convert still starts a stage: what follows is not "before
    // the first FROM" (it is just not kept).
    let mut seen_from = false;
    let mut stage_ok = false;
    // How many instructions follow each FROM, to size each stage once.
    let mut stage_sizes = Vec::new();
    for node in &ast.children {
        match stage_sizes.last_mut() {
            _ if node.keyword == "from" => stage_sizes.push(0),
            Some(n) => *n += 1,
            None => {}
        }
    }
    let mut stage_sizes = stage_sizes.into_iter();
    for node in &mut ast.children {
        let mut heredocs = std::mem::take(&mut node.heredocs);
        let converted = ctx.convert(node, &mut heredocs);
        if node.keyword == "from" {
            seen_from = true;
            stage_ok = converted.is_some();
            if !stage_ok {
                stage_sizes.next();
            }
        }
        let Some(converted) = converted else {
            continue;
        };
        let kind = match converted {
            Converted::From(from) => {
                stages.push(StageSyntax {
                    from,
                    instructions: Vec::with_capacity(stage_sizes.next().unwrap_or(0)),
                });
                continue;
            }
            Converted::Arg(args) if !seen_from => {
                global_args.push(Spanned::new(args, node.span));
                continue;
            }
            Converted::Arg(args) => InstructionKind::Arg(args),
            Converted::Other(kind) => kind,
        };
        if !seen_from {
            ctx.push(
                codes::INSTRUCTION_BEFORE_FROM,
                "no build stage in current context",
                node.keyword_span,
                "before the first FROM",
                Some(format!(
                    "start a stage with `FROM` before `{}` (only ARG may come before the first FROM)",
                    to_upper(node.value())
                )),
            );
            continue;
        }
        if let (true, Some(stage)) = (stage_ok, stages.last_mut()) {
            stage.instructions.push(Instruction {
                kind,
                span: node.span,
                original: trimmed(&mut node.original),
            });
        }
    }
    let mut directives: Vec<(String, String)> = ast
        .directives
        .iter()
        .map(|d| (d.name.clone(), d.value.clone()))
        .collect();
    if directives.is_empty() {
        directives = shebang_directives(&source.text);
    }
    BuildFile {
        source: source.clone(),
        escape: ast.escape,
        directives,
        global_args,
        stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names() {
        for ok in ["a", "build-1", "a_b.c", "x9"] {
            assert!(valid_stage_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a b", "a$", "-a", "é"] {
            assert!(!valid_stage_name(bad), "{bad}");
        }
    }

    #[test]
    fn onbuild_prefix() {
        assert_eq!(strip_onbuild("ONBUILD RUN x"), "RUN x");
        assert_eq!(strip_onbuild("  onbuild\tRUN x"), "RUN x");
        assert_eq!(strip_onbuild("RUN x"), "RUN x");
    }

    #[test]
    fn shebang_then_directives() {
        let d = shebang_directives("#!/bin/sh\n# syntax = foo\n# check=skip=all\nFROM x\n");
        assert_eq!(
            d,
            vec![
                ("syntax".to_string(), "foo".to_string()),
                ("check".to_string(), "skip=all".to_string())
            ]
        );
        assert!(shebang_directives("#!/bin/sh\n\n# syntax = foo\n").is_empty());
    }
}
