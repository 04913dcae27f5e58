//! An inline image (`[image.NAME]` with `from`) read into a one-stage [`BuildFile`].
//!
//! The stage is what the equivalent Dockerfile would say:
//!
//! ```text
//! FROM <from> AS <name>
//! ARG  <args...>          one instruction, in written order
//! ENV  <env...>           one instruction, in written order
//! WORKDIR <workdir>
//! <steps...>
//! USER, LABEL, EXPOSE, VOLUME, ENTRYPOINT, CMD, STOPSIGNAL, HEALTHCHECK, MAINTAINER
//! ```
//!
//! Values are not expanded here; strings that lowering expands are turned into
//! Dockerfile words with [`words::word`] so that only `$` is special in them.

use miette::SourceSpan;

use super::node::{code, get, list, Entry, Kind, Node, Reader};
use super::words::{self, display, word};
use crate::error::Problem;
use crate::syntax::{
    AddInstr, ArgDecl, BuildFile, CommandLine, CopyInstr, FromInstr, HealthcheckInstr, Instruction,
    InstructionKind, KeyValue, RunInstr, SourceFile, Spanned, StageSyntax,
};

/// The keys of an inline image.
pub(crate) const INLINE_KEYS: &[&str] = &[
    "from",
    "platform",
    "tags",
    "context",
    "args",
    "env",
    "workdir",
    "steps",
    "user",
    "labels",
    "expose",
    "volumes",
    "entrypoint",
    "cmd",
    "stopsignal",
    "healthcheck",
    "maintainer",
];

/// The metadata keys applied after the steps, in the order they are applied,
/// with the instruction each one becomes.
const METADATA: &[(&str, &str)] = &[
    ("user", "user"),
    ("labels", "label"),
    ("expose", "expose"),
    ("volumes", "volume"),
    ("entrypoint", "entrypoint"),
    ("cmd", "cmd"),
    ("stopsignal", "stopsignal"),
    ("healthcheck", "healthcheck"),
    ("maintainer", "maintainer"),
];

/// The instruction keys of a step.
pub(crate) const INSTRUCTIONS: &[&str] = &[
    "run",
    "copy",
    "add",
    "env",
    "arg",
    "workdir",
    "user",
    "label",
    "expose",
    "volume",
    "shell",
    "onbuild",
    "cmd",
    "entrypoint",
    "stopsignal",
    "healthcheck",
    "maintainer",
];

const RUN_FLAGS: &[&str] = &["mounts", "network", "security"];
const COPY_FLAGS: &[&str] = &["from", "chown", "chmod", "link", "parents", "exclude"];
const ADD_FLAGS: &[&str] = &[
    "chown",
    "chmod",
    "link",
    "checksum",
    "keep_git_dir",
    "unpack",
    "exclude",
];
const HEALTHCHECK_KEYS: &[&str] = &[
    "cmd",
    "interval",
    "timeout",
    "start_period",
    "start_interval",
    "retries",
];

fn flags_of(instruction: &str) -> &'static [&'static str] {
    match instruction {
        "run" => RUN_FLAGS,
        "copy" => COPY_FLAGS,
        "add" => ADD_FLAGS,
        _ => &[],
    }
}

fn is_flag(key: &str) -> bool {
    RUN_FLAGS.contains(&key) || COPY_FLAGS.contains(&key) || ADD_FLAGS.contains(&key)
}

/// Reads an inline image; `None` when problems were reported.
pub(crate) fn inline_image(
    r: &mut Reader,
    source: &SourceFile,
    name: &Spanned<String>,
    entries: &[Entry<'_>],
) -> Option<BuildFile> {
    let before = r.problems.len();
    let path = format!("image.{}", name.value);
    let at = |key: &str| format!("{path}.{key}");

    // FROM
    let from_entry = get(entries, "from")?;
    let base = r.nonempty_string(&at("from"), &from_entry.value);
    let platform = get(entries, "platform").and_then(|e| {
        r.nonempty_string(&at("platform"), &e.value)
            .map(|p| (Spanned::new(word(&p.value), p.span), p.value))
    });
    let from = base.map(|base| {
        let mut original = "FROM ".to_string();
        if let Some((_, p)) = &platform {
            original.push_str(&format!("--platform={} ", display(p)));
        }
        original.push_str(&format!("{} AS {}", display(&base.value), name.value));
        FromInstr {
            base: Spanned::new(word(&base.value), base.span),
            name: Some(name.clone()),
            platform: platform.map(|(p, _)| p),
            span: from_entry.span,
            original,
        }
    });

    let mut instructions = Vec::new();
    let mut global_args = Vec::new();

    // ARG: also declared before FROM, so `from` and `platform` can use them.
    if let Some(e) = get(entries, "args") {
        if let Some(instr) = arg_table(r, &at("args"), e) {
            if let InstructionKind::Arg(decls) = &instr.kind {
                global_args.push(Spanned::new(decls.clone(), e.span));
            }
            instructions.push(instr);
        }
    }
    // ENV
    if let Some(e) = get(entries, "env") {
        if !is_empty(&e.value) {
            if let Some(instr) = instruction(r, source, "env", e, &[], e.span, &at("env")) {
                instructions.push(instr);
            }
        }
    }
    // WORKDIR
    if let Some(e) = get(entries, "workdir") {
        if let Some(instr) = instruction(r, source, "workdir", e, &[], e.span, &at("workdir")) {
            instructions.push(instr);
        }
    }
    // Steps
    if let Some(e) = get(entries, "steps") {
        match &e.value.kind {
            Kind::Array(steps) => {
                for (i, step) in steps.iter().enumerate() {
                    if let Some(instr) = read_step(r, source, &format!("{path}.steps[{i}]"), step) {
                        instructions.push(instr);
                    }
                }
            }
            _ => {
                r.type_error(&at("steps"), "an array of step tables", &e.value);
            }
        }
    }
    // Metadata, in its fixed order.
    for (key, keyword) in METADATA {
        let Some(e) = get(entries, key) else {
            continue;
        };
        if is_empty(&e.value) && matches!(*keyword, "label" | "expose" | "volume") {
            continue;
        }
        if let Some(instr) = instruction(r, source, keyword, e, &[], e.span, &at(key)) {
            instructions.push(instr);
        }
    }

    if r.problems.len() > before {
        return None;
    }
    Some(BuildFile {
        source: source.clone(),
        escape: '\\',
        directives: Vec::new(),
        global_args,
        stages: vec![StageSyntax {
            from: from?,
            instructions,
        }],
    })
}

fn is_empty(node: &Node<'_>) -> bool {
    match &node.kind {
        Kind::Array(a) => a.is_empty(),
        Kind::Table(t) => t.is_empty(),
        _ => false,
    }
}

/// The image-level `args` table: one ARG instruction with a default per entry.
fn arg_table(r: &mut Reader, path: &str, e: &Entry<'_>) -> Option<Instruction> {
    let entries = match &e.value.kind {
        Kind::Table(t) => t,
        _ => {
            r.type_error(path, "a table of `NAME = \"default\"`", &e.value);
            return None;
        }
    };
    if entries.is_empty() {
        return None;
    }
    arg_decls(r, path, e, entries)
}

fn arg_decls(
    r: &mut Reader,
    path: &str,
    e: &Entry<'_>,
    entries: &[Entry<'_>],
) -> Option<Instruction> {
    let mut decls = Vec::new();
    let mut shown = Vec::new();
    let mut ok = true;
    for kv in entries {
        ok &= check_name(r, path, &kv.key);
        match r.scalar(&format!("{path}.{}", kv.key.value), &kv.value) {
            Some(v) => {
                shown.push((kv.key.value.as_str(), Some(v.value.clone())));
                decls.push(ArgDecl {
                    name: kv.key.clone(),
                    default: Some(Spanned::new(word(&v.value), v.span)),
                });
            }
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    if decls.is_empty() {
        r.value_error(format!("`{path}` must not be empty"), e.value.span, "empty");
        return None;
    }
    let original = format!(
        "ARG {}",
        words::pairs(shown.iter().map(|(k, v)| (*k, v.as_deref())))
    );
    Some(Instruction {
        kind: InstructionKind::Arg(decls),
        span: e.span,
        original,
    })
}

/// Checks an ARG or ENV name: not empty, no whitespace or `=`.
fn check_name(r: &mut Reader, path: &str, key: &Spanned<String>) -> bool {
    let bad = key.value.is_empty()
        || key
            .value
            .chars()
            .any(|c| c.is_whitespace() || c == '=' || c == '$');
    if bad {
        r.push(
            Problem::new(
                code::VALUE,
                format!("invalid variable name {:?} in `{path}`", key.value),
                key.span,
            )
            .label("not a variable name")
            .help("a name must not be empty nor contain whitespace, `=` or `$`"),
        );
    }
    !bad
}

/// Reads one `steps` element.
fn read_step(
    r: &mut Reader,
    source: &SourceFile,
    path: &str,
    node: &Node<'_>,
) -> Option<Instruction> {
    let Kind::Table(entries) = &node.kind else {
        r.push(
            Problem::new(
                code::TYPE,
                format!("`{path}` must be a table, not {}", node.type_name()),
                node.span,
            )
            .label("expected a step table")
            .help("write a step as a table with one instruction key, e.g. `{ run = \"make\" }`"),
        );
        return None;
    };
    let instrs: Vec<&Entry<'_>> = entries
        .iter()
        .filter(|e| INSTRUCTIONS.contains(&e.key.value.as_str()))
        .collect();
    let Some(first) = instrs.first() else {
        let before = r.problems.len();
        for e in entries.iter().filter(|e| !is_flag(&e.key.value)) {
            r.unknown_key(e, INSTRUCTIONS, path);
        }
        if r.problems.len() == before {
            r.push(
                Problem::new(
                    code::MISSING_KEY,
                    format!("`{path}` has no instruction"),
                    node.span,
                )
                .label("this step")
                .help(format!("give it one of: {}", list(INSTRUCTIONS))),
            );
        }
        return None;
    };
    let keyword = first.key.value.as_str();
    let mut ok = true;
    for extra in instrs.iter().skip(1) {
        ok = false;
        r.push(
            Problem::new(
                code::CONFLICT,
                format!(
                    "`{path}` has two instructions, `{keyword}` and `{}`",
                    extra.key.value
                ),
                extra.key.span,
            )
            .label("second instruction")
            .help("a step has exactly one instruction: split it into two steps"),
        );
    }
    let allowed = flags_of(keyword);
    let mut flags = Vec::new();
    for e in entries {
        let key = e.key.value.as_str();
        if INSTRUCTIONS.contains(&key) {
            continue;
        }
        if allowed.contains(&key) {
            flags.push(e.clone());
            continue;
        }
        ok = false;
        let takes = if allowed.is_empty() {
            format!("`{keyword}` takes no options")
        } else {
            format!("`{keyword}` takes: {}", list(allowed))
        };
        if is_flag(key) {
            let owners: Vec<&str> = ["run", "copy", "add"]
                .into_iter()
                .filter(|i| flags_of(i).contains(&key))
                .collect();
            r.push(
                Problem::new(
                    code::UNKNOWN_KEY,
                    format!("`{key}` is not an option of `{keyword}` (in `{path}`)"),
                    e.key.span,
                )
                .label(format!("not an option of `{keyword}`"))
                .help(format!("`{key}` goes with {}; {takes}", list(&owners))),
            );
        } else {
            let help = match crate::suggest(key, allowed) {
                Some(s) => format!("did you mean `{s}`? {takes}"),
                None => takes,
            };
            r.push(
                Problem::new(
                    code::UNKNOWN_KEY,
                    format!("unknown key `{key}` in `{path}`"),
                    e.key.span,
                )
                .label("unknown key")
                .help(help),
            );
        }
    }
    let instr = instruction(
        r,
        source,
        keyword,
        first,
        &flags,
        node.span,
        &format!("{path}.{keyword}"),
    );
    if ok {
        instr
    } else {
        None
    }
}

/// The flags of one step, read.
#[derive(Default)]
struct Flags {
    mounts: Vec<Spanned<String>>,
    network: Option<Spanned<String>>,
    security: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    chown: Option<Spanned<String>>,
    chmod: Option<Spanned<String>>,
    link: bool,
    parents: bool,
    exclude: Vec<Spanned<String>>,
    checksum: Option<Spanned<String>>,
    keep_git_dir: bool,
    unpack: Option<bool>,
    /// `--flag=value` as a Dockerfile would show them, in a fixed order.
    shown: Vec<String>,
}

fn read_flags(r: &mut Reader, path: &str, entries: &[Entry<'_>]) -> Option<Flags> {
    let before = r.problems.len();
    let mut f = Flags::default();
    let at = |k: &str| format!("{path}.{k}");
    let expanded = |s: Spanned<String>| Spanned::new(word(&s.value), s.span);
    if let Some(e) = get(entries, "mounts") {
        if let Some(list) = r.string_or_strings(&at("mounts"), &e.value) {
            f.mounts = list.into_iter().map(expanded).collect();
        }
    }
    if let Some(e) = get(entries, "network") {
        f.network = r.nonempty_string(&at("network"), &e.value);
    }
    if let Some(e) = get(entries, "security") {
        f.security = r.nonempty_string(&at("security"), &e.value);
    }
    if let Some(e) = get(entries, "from") {
        f.from = r.nonempty_string(&at("from"), &e.value);
    }
    if let Some(e) = get(entries, "chown") {
        f.chown = r.nonempty_string(&at("chown"), &e.value).map(expanded);
    }
    if let Some(e) = get(entries, "chmod") {
        f.chmod = r.nonempty_string(&at("chmod"), &e.value).map(expanded);
    }
    if let Some(e) = get(entries, "link") {
        f.link = r.bool(&at("link"), &e.value).unwrap_or(false);
    }
    if let Some(e) = get(entries, "parents") {
        f.parents = r.bool(&at("parents"), &e.value).unwrap_or(false);
    }
    if let Some(e) = get(entries, "exclude") {
        if let Some(list) = r.string_or_strings(&at("exclude"), &e.value) {
            f.exclude = list.into_iter().map(expanded).collect();
        }
    }
    if let Some(e) = get(entries, "checksum") {
        f.checksum = r.nonempty_string(&at("checksum"), &e.value).map(expanded);
    }
    if let Some(e) = get(entries, "keep_git_dir") {
        f.keep_git_dir = r.bool(&at("keep_git_dir"), &e.value).unwrap_or(false);
    }
    if let Some(e) = get(entries, "unpack") {
        f.unpack = r.bool(&at("unpack"), &e.value);
    }

    // How a Dockerfile would write them; values shown from the TOML text.
    let raw = |k: &str| {
        get(entries, k).and_then(|e| match &e.value.kind {
            Kind::Str(s) => Some((*s).to_string()),
            _ => None,
        })
    };
    let raw_list = |k: &str| -> Vec<String> {
        get(entries, k).map_or_else(Vec::new, |e| match &e.value.kind {
            Kind::Str(s) => vec![(*s).to_string()],
            Kind::Array(items) => items
                .iter()
                .filter_map(|n| match &n.kind {
                    Kind::Str(s) => Some((*s).to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        })
    };
    for m in raw_list("mounts") {
        f.shown.push(format!("--mount={}", display(&m)));
    }
    if let Some(n) = &f.network {
        f.shown.push(format!("--network={}", n.value));
    }
    if let Some(s) = &f.security {
        f.shown.push(format!("--security={}", s.value));
    }
    if let Some(from) = &f.from {
        f.shown.push(format!("--from={}", from.value));
    }
    if let Some(v) = raw("checksum") {
        f.shown.push(format!("--checksum={}", display(&v)));
    }
    if let Some(v) = raw("chown") {
        f.shown.push(format!("--chown={}", display(&v)));
    }
    if let Some(v) = raw("chmod") {
        f.shown.push(format!("--chmod={}", display(&v)));
    }
    if f.link {
        f.shown.push("--link".to_string());
    }
    if f.parents {
        f.shown.push("--parents".to_string());
    }
    if f.keep_git_dir {
        f.shown.push("--keep-git-dir".to_string());
    }
    if let Some(u) = f.unpack {
        f.shown.push(format!("--unpack={u}"));
    }
    for x in raw_list("exclude") {
        f.shown.push(format!("--exclude={}", display(&x)));
    }
    (r.problems.len() == before).then_some(f)
}

/// `keyword flags... rest` with single spaces.
fn line(keyword: &str, flags: &[String], rest: &str) -> String {
    let mut out = keyword.to_string();
    for f in flags {
        out.push(' ');
        out.push_str(f);
    }
    if !rest.is_empty() {
        out.push(' ');
        out.push_str(rest);
    }
    out
}

/// Builds one instruction from its key `e` (`keyword` names the instruction; at the
/// image level `labels` is `label` and `volumes` is `volume`).
#[allow(clippy::too_many_lines)]
fn instruction(
    r: &mut Reader,
    source: &SourceFile,
    keyword: &str,
    e: &Entry<'_>,
    flag_entries: &[Entry<'_>],
    span: SourceSpan,
    path: &str,
) -> Option<Instruction> {
    let node = &e.value;
    let flags = read_flags(
        r,
        path.rsplit_once('.').map_or(path, |(p, _)| p),
        flag_entries,
    );
    let expanded = |s: Spanned<String>| Spanned::new(word(&s.value), s.span);
    let (kind, original) = match keyword {
        "run" => {
            let command = command_line(r, path, node, false)?;
            let flags = flags?;
            let original = line("RUN", &flags.shown, &words::command(&command));
            let run = RunInstr {
                command,
                mounts: flags.mounts,
                network: flags.network,
                security: flags.security,
                heredocs: Vec::new(),
            };
            (InstructionKind::Run(run), original)
        }
        "cmd" | "entrypoint" => {
            let command = command_line(r, path, node, true)?;
            let original = line(
                &keyword.to_ascii_uppercase(),
                &[],
                &words::command(&command),
            );
            let kind = if keyword == "cmd" {
                InstructionKind::Cmd(command)
            } else {
                InstructionKind::Entrypoint(command)
            };
            (kind, original)
        }
        "copy" | "add" => {
            let (sources, dest) = sources_dest(r, path, node)?;
            let flags = flags?;
            let mut shown: Vec<String> = sources.iter().map(|s| s.value.clone()).collect();
            shown.push(dest.value.clone());
            let rest = if shown.iter().any(|s| s != &display(s)) {
                words::json_array(&shown)
            } else {
                shown.join(" ")
            };
            let original = line(&keyword.to_ascii_uppercase(), &flags.shown, &rest);
            let sources: Vec<Spanned<String>> = sources.into_iter().map(expanded).collect();
            let dest = expanded(dest);
            let kind = if keyword == "copy" {
                InstructionKind::Copy(CopyInstr {
                    sources,
                    dest,
                    from: flags.from,
                    chown: flags.chown,
                    chmod: flags.chmod,
                    link: flags.link,
                    parents: flags.parents,
                    exclude: flags.exclude,
                    heredocs: Vec::new(),
                })
            } else {
                InstructionKind::Add(AddInstr {
                    sources,
                    dest,
                    chown: flags.chown,
                    chmod: flags.chmod,
                    link: flags.link,
                    keep_git_dir: flags.keep_git_dir,
                    checksum: flags.checksum,
                    unpack: flags.unpack,
                    exclude: flags.exclude,
                    heredocs: Vec::new(),
                })
            };
            (kind, original)
        }
        "env" | "label" => {
            let entries = match &node.kind {
                Kind::Table(t) if !t.is_empty() => t,
                Kind::Table(_) => {
                    r.value_error(format!("`{path}` must not be empty"), node.span, "empty");
                    return None;
                }
                _ => {
                    r.type_error(path, "a table of `KEY = \"value\"`", node);
                    return None;
                }
            };
            let mut pairs = Vec::new();
            let mut shown = Vec::new();
            let mut ok = true;
            for kv in entries {
                if keyword == "env" {
                    ok &= check_name(r, path, &kv.key);
                } else if kv.key.value.is_empty() {
                    ok = false;
                    r.value_error(
                        format!("empty label name in `{path}`"),
                        kv.key.span,
                        "empty",
                    );
                }
                match r.scalar(&format!("{path}.{}", kv.key.value), &kv.value) {
                    Some(v) => {
                        shown.push((kv.key.value.as_str(), Some(v.value.clone())));
                        pairs.push(KeyValue {
                            key: Spanned::new(word(&kv.key.value), kv.key.span),
                            value: expanded(v),
                        });
                    }
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            let original = line(
                &keyword.to_ascii_uppercase(),
                &[],
                &words::pairs(shown.iter().map(|(k, v)| (*k, v.as_deref()))),
            );
            let kind = if keyword == "env" {
                InstructionKind::Env(pairs)
            } else {
                InstructionKind::Label(pairs)
            };
            (kind, original)
        }
        "arg" => {
            return match &node.kind {
                Kind::Table(t) => {
                    let mut instr = arg_decls(r, path, e, t)?;
                    instr.span = span;
                    Some(instr)
                }
                Kind::Str(_) | Kind::Array(_) => {
                    let names = r.string_or_strings(path, node)?;
                    if names.is_empty() {
                        r.value_error(format!("`{path}` must not be empty"), node.span, "empty");
                        return None;
                    }
                    let mut ok = true;
                    for n in &names {
                        ok &= check_name(r, path, n);
                    }
                    if !ok {
                        return None;
                    }
                    let original = line(
                        "ARG",
                        &[],
                        &words::pairs(names.iter().map(|n| (n.value.as_str(), None))),
                    );
                    let decls = names
                        .into_iter()
                        .map(|name| ArgDecl {
                            name,
                            default: None,
                        })
                        .collect();
                    Some(Instruction {
                        kind: InstructionKind::Arg(decls),
                        span,
                        original,
                    })
                }
                _ => {
                    r.type_error(
                        path,
                        "a name, an array of names or a table of `NAME = \"default\"`",
                        node,
                    );
                    None
                }
            };
        }
        "workdir" | "user" | "stopsignal" => {
            let value = r.nonempty_string(path, node)?;
            let original = line(&keyword.to_ascii_uppercase(), &[], &display(&value.value));
            let value = expanded(value);
            let kind = match keyword {
                "workdir" => InstructionKind::Workdir(value),
                "user" => InstructionKind::User(value),
                _ => InstructionKind::StopSignal(value),
            };
            (kind, original)
        }
        "maintainer" => {
            let value = r.nonempty_string(path, node)?;
            let original = line("MAINTAINER", &[], &value.value);
            (InstructionKind::Maintainer(value.value), original)
        }
        "expose" => {
            let items: Vec<Node<'_>> = match &node.kind {
                Kind::Array(items) => items.clone(),
                _ => vec![node.clone()],
            };
            if items.is_empty() {
                r.value_error(format!("`{path}` must not be empty"), node.span, "empty");
                return None;
            }
            let mut ports = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match &item.kind {
                    Kind::Str(_) | Kind::Int(_) => {
                        ports.extend(r.scalar(&format!("{path}[{i}]"), item));
                    }
                    _ => {
                        r.type_error(
                            path,
                            "an array of ports (`80`, `\"8080/tcp\"`, `\"9000-9010\"`)",
                            item,
                        );
                        return None;
                    }
                }
            }
            let shown: Vec<String> = ports.iter().map(|p| p.value.clone()).collect();
            let original = line("EXPOSE", &[], &words::word_list(&shown));
            (
                InstructionKind::Expose(ports.into_iter().map(expanded).collect()),
                original,
            )
        }
        "volume" => {
            let vols = r.string_or_strings(path, node)?;
            if vols.is_empty() {
                r.value_error(format!("`{path}` must not be empty"), node.span, "empty");
                return None;
            }
            let shown: Vec<String> = vols.iter().map(|v| v.value.clone()).collect();
            let original = line("VOLUME", &[], &words::word_list(&shown));
            (
                InstructionKind::Volume(vols.into_iter().map(expanded).collect()),
                original,
            )
        }
        "shell" => {
            let argv = r.strings(path, node)?;
            if argv.is_empty() {
                r.value_error(
                    format!("`{path}` must name at least the shell"),
                    node.span,
                    "empty",
                );
                return None;
            }
            let argv: Vec<String> = argv.into_iter().map(|s| s.value).collect();
            let original = line("SHELL", &[], &words::json_array(&argv));
            (InstructionKind::Shell(argv), original)
        }
        "healthcheck" => {
            let (check, original) = healthcheck(r, path, node)?;
            (InstructionKind::Healthcheck(check), original)
        }
        "onbuild" => {
            let trigger = r.nonempty_string(path, node)?;
            let kind = onbuild(r, source, path, &trigger)?;
            let original = match &kind {
                InstructionKind::Onbuild { trigger, .. } => format!("ONBUILD {trigger}"),
                _ => String::new(),
            };
            (kind, original)
        }
        _ => return None,
    };
    Some(Instruction {
        kind,
        span,
        original,
    })
}

/// A string (shell form) or an array of strings (exec form).
fn command_line(
    r: &mut Reader,
    path: &str,
    node: &Node<'_>,
    allow_empty: bool,
) -> Option<CommandLine> {
    let cmd = match &node.kind {
        Kind::Str(s) => CommandLine::Shell((*s).to_string()),
        Kind::Array(_) => CommandLine::Exec(
            r.strings(path, node)?
                .into_iter()
                .map(|s| s.value)
                .collect(),
        ),
        _ => {
            r.type_error(
                path,
                "a string (shell form) or an array of strings (exec form)",
                node,
            );
            return None;
        }
    };
    let empty = match &cmd {
        CommandLine::Shell(s) => s.trim().is_empty(),
        CommandLine::Exec(v) => v.is_empty(),
    };
    if empty && !allow_empty {
        r.value_error(
            format!("`{path}` has no command"),
            node.span,
            "empty command",
        );
        return None;
    }
    Some(cmd)
}

/// `["src"..., "dest"]` or `{ src = "..." | [...], dest = "..." }`.
fn sources_dest(
    r: &mut Reader,
    path: &str,
    node: &Node<'_>,
) -> Option<(Vec<Spanned<String>>, Spanned<String>)> {
    match &node.kind {
        Kind::Array(_) => {
            let mut items = r.strings(path, node)?;
            if items.len() < 2 {
                r.push(
                    Problem::new(
                        code::VALUE,
                        format!("`{path}` needs at least one source and a destination"),
                        node.span,
                    )
                    .label("too few paths")
                    .help(r#"the last element is the destination, e.g. ["src/", "/app/src/"]"#),
                );
                return None;
            }
            let dest = items.pop()?;
            Some((items, dest))
        }
        Kind::Table(entries) => {
            r.check_keys(entries, &["src", "dest"], path);
            let src = get(entries, "src");
            let dest = get(entries, "dest");
            for (key, found) in [("src", src.is_some()), ("dest", dest.is_some())] {
                if !found {
                    r.push(
                        Problem::new(
                            code::MISSING_KEY,
                            format!("`{path}` has no `{key}`"),
                            node.span,
                        )
                        .label(format!("`{key}` missing"))
                        .help(r#"write { src = ["a", "b"], dest = "/dir/" }"#),
                    );
                }
            }
            let sources = r.string_or_strings(&format!("{path}.src"), &src?.value)?;
            let dest_entry = dest?;
            let dest = r.string(&format!("{path}.dest"), &dest_entry.value)?;
            if sources.is_empty() {
                r.value_error(
                    format!("`{path}.src` names no source"),
                    src?.value.span,
                    "empty",
                );
                return None;
            }
            Some((sources, dest))
        }
        _ => {
            r.type_error(
                path,
                "an array `[\"src\"..., \"dest\"]` or a table `{ src, dest }`",
                node,
            );
            None
        }
    }
}

/// `"none"` or `{ cmd = ..., interval = "30s", ... }`.
fn healthcheck(r: &mut Reader, path: &str, node: &Node<'_>) -> Option<(HealthcheckInstr, String)> {
    let entries = match &node.kind {
        Kind::Str(s) if s.eq_ignore_ascii_case("none") => {
            return Some((HealthcheckInstr::None, "HEALTHCHECK NONE".to_string()));
        }
        Kind::Table(t) => t,
        Kind::Str(_) => {
            r.push(
                Problem::new(
                    code::VALUE,
                    format!("`{path}` must be \"none\" or a table"),
                    node.span,
                )
                .label("not \"none\"")
                .help(r#"write "none" to disable an inherited check, or { cmd = [...], interval = "30s" }"#),
            );
            return None;
        }
        _ => {
            r.type_error(path, "\"none\" or a table `{ cmd = ... }`", node);
            return None;
        }
    };
    let before = r.problems.len();
    r.check_keys(entries, HEALTHCHECK_KEYS, path);
    let test = match get(entries, "cmd") {
        Some(e) => command_line(r, &format!("{path}.cmd"), &e.value, false),
        None => {
            r.push(
                Problem::new(
                    code::MISSING_KEY,
                    format!("`{path}` has no `cmd`"),
                    node.span,
                )
                .label("`cmd` missing")
                .help(r#"add the probe, e.g. cmd = ["curl", "-f", "http://localhost/"], or write healthcheck = "none""#),
            );
            None
        }
    };
    let mut shown = Vec::new();
    let mut duration = |key: &str, flag: &str| -> Option<u64> {
        let e = get(entries, key)?;
        let text = r.string(&format!("{path}.{key}"), &e.value)?;
        match words::duration_ns(&text.value) {
            Ok(ns) => {
                shown.push(format!("--{flag}={}", text.value));
                Some(ns)
            }
            Err(msg) => {
                r.push(
                    Problem::new(code::VALUE, format!("`{path}.{key}`: {msg}"), text.span)
                        .label("not a duration")
                        .help("write a duration such as \"30s\", \"1m30s\" or \"500ms\""),
                );
                None
            }
        }
    };
    let interval_ns = duration("interval", "interval");
    let timeout_ns = duration("timeout", "timeout");
    let start_period_ns = duration("start_period", "start-period");
    let start_interval_ns = duration("start_interval", "start-interval");
    let retries = match get(entries, "retries") {
        None => None,
        Some(e) => match &e.value.kind {
            Kind::Int(n) => match u32::try_from(*n) {
                Ok(n) => {
                    shown.push(format!("--retries={n}"));
                    Some(n)
                }
                Err(_) => {
                    r.value_error(
                        format!("`{path}.retries` must be between 0 and {}", u32::MAX),
                        e.value.span,
                        "out of range",
                    );
                    None
                }
            },
            _ => {
                r.type_error(&format!("{path}.retries"), "an integer", &e.value);
                None
            }
        },
    };
    if r.problems.len() > before {
        return None;
    }
    let test = test?;
    let original = line(
        "HEALTHCHECK",
        &shown,
        &format!("CMD {}", words::command(&test)),
    );
    Some((
        HealthcheckInstr::Check {
            test,
            interval_ns,
            timeout_ns,
            start_period_ns,
            start_interval_ns,
            retries,
        },
        original,
    ))
}

/// The text a synthetic Dockerfile puts before an `onbuild` string.
const TRIGGER_PREFIX: &str = "FROM scratch\nONBUILD ";

/// Parses an `onbuild` trigger as the Dockerfile line `ONBUILD <trigger>` would be
/// (same checks, same stored trigger text); spans point back into the TOML string.
fn onbuild(
    r: &mut Reader,
    source: &SourceFile,
    path: &str,
    value: &Spanned<String>,
) -> Option<InstructionKind> {
    let trigger = value.value.trim();

    // Where the trigger text starts in the TOML, when it is written without escapes.
    let raw = source
        .text
        .get(value.span.offset()..value.span.offset() + value.span.len())
        .unwrap_or("");
    let lead = value.value.len() - value.value.trim_start().len();
    let start = ["\"", "'"]
        .into_iter()
        .find(|q| {
            raw.len() >= 2
                && raw.starts_with(q)
                && raw.ends_with(q)
                && raw.get(1..raw.len() - 1) == Some(value.value.as_str())
        })
        .map(|_| value.span.offset() + 1 + lead);
    let whole = value.span;
    let remap = move |s: SourceSpan| -> SourceSpan {
        match start {
            Some(start) if s.offset() >= TRIGGER_PREFIX.len() => {
                let end = whole.offset() + whole.len();
                let from = (start + (s.offset() - TRIGGER_PREFIX.len())).min(end);
                SourceSpan::from(from..(from + s.len()).min(end))
            }
            _ => whole,
        }
    };

    let synthetic = SourceFile::new(source.name.clone(), format!("{TRIGGER_PREFIX}{trigger}\n"));
    match crate::dockerfile::parse(&synthetic) {
        Ok(file) => {
            let mut stages = file.stages.into_iter();
            let only = match (stages.next(), stages.next()) {
                (Some(stage), None) if stage.instructions.len() == 1 => {
                    stage.instructions.into_iter().next()
                }
                _ => None,
            };
            match only {
                Some(
                    mut instr @ Instruction {
                        kind: InstructionKind::Onbuild { .. },
                        ..
                    },
                ) => {
                    respan(&mut instr, &remap);
                    Some(instr.kind)
                }
                _ => {
                    r.push(
                        Problem::new(
                            code::VALUE,
                            format!("`{path}` must be exactly one Dockerfile instruction"),
                            value.span,
                        )
                        .label("one instruction expected")
                        .help("write one trigger per `onbuild` step, e.g. \"RUN make\""),
                    );
                    None
                }
            }
        }
        Err(err) => {
            if err.problems().is_empty() {
                r.value_error(format!("`{path}`: {err}"), value.span, "invalid trigger");
            }
            for p in err.problems() {
                let mut p = p.clone();
                p.span = remap(p.span);
                r.push(p);
            }
            None
        }
    }
}

/// Applies `f` to every span of an instruction.
fn respan(instr: &mut Instruction, f: &dyn Fn(SourceSpan) -> SourceSpan) {
    let s = |x: &mut Spanned<String>| x.span = f(x.span);
    let o = |x: &mut Option<Spanned<String>>| {
        if let Some(x) = x {
            x.span = f(x.span);
        }
    };
    instr.span = f(instr.span);
    match &mut instr.kind {
        InstructionKind::Run(run) => {
            run.mounts.iter_mut().for_each(s);
            o(&mut run.network);
            o(&mut run.security);
        }
        InstructionKind::Copy(c) => {
            c.sources.iter_mut().for_each(s);
            s(&mut c.dest);
            o(&mut c.from);
            o(&mut c.chown);
            o(&mut c.chmod);
            c.exclude.iter_mut().for_each(s);
        }
        InstructionKind::Add(a) => {
            a.sources.iter_mut().for_each(s);
            s(&mut a.dest);
            o(&mut a.chown);
            o(&mut a.chmod);
            o(&mut a.checksum);
            a.exclude.iter_mut().for_each(s);
        }
        InstructionKind::Env(pairs) | InstructionKind::Label(pairs) => {
            for kv in pairs {
                s(&mut kv.key);
                s(&mut kv.value);
            }
        }
        InstructionKind::Arg(decls) => {
            for d in decls {
                s(&mut d.name);
                o(&mut d.default);
            }
        }
        InstructionKind::Expose(v) | InstructionKind::Volume(v) => v.iter_mut().for_each(s),
        InstructionKind::User(x) | InstructionKind::Workdir(x) | InstructionKind::StopSignal(x) => {
            s(x);
        }
        InstructionKind::Onbuild { parsed, .. } => respan(parsed, f),
        InstructionKind::Cmd(_)
        | InstructionKind::Entrypoint(_)
        | InstructionKind::Healthcheck(_)
        | InstructionKind::Shell(_)
        | InstructionKind::Maintainer(_) => {}
    }
}
