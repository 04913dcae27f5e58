//! The forge.toml reader: what each key becomes in the syntax layer, paths,
//! groups, and one test per kind of error (code, line:column, message).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use forge_frontend::forge_toml::{self, ImageBuild, ImageSpec, Project};
use forge_frontend::syntax::{
    BuildFile, CommandLine, HealthcheckInstr, Instruction, InstructionKind, SourceFile, Spanned,
};
use forge_frontend::FrontendError;

/// Parses `text` as `forge.toml` in `dir`, with Dockerfiles served from `files`.
fn parse_with(
    text: &str,
    dir: &str,
    files: &BTreeMap<PathBuf, String>,
) -> Result<Project, FrontendError> {
    let source = SourceFile::new("forge.toml", text);
    forge_toml::parse(&source, Path::new(dir), &mut |p| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, p.display().to_string()))
    })
}

fn parse(text: &str) -> Project {
    match parse_with(text, "", &BTreeMap::new()) {
        Ok(p) => p,
        Err(e) => panic!("parse failed: {:?}", miette::Report::new(e)),
    }
}

/// `(code, line, column, message)` of each problem.
fn problems(text: &str) -> Vec<(&'static str, usize, usize, String)> {
    let source = SourceFile::new("forge.toml", text);
    let err = parse_with(text, "", &BTreeMap::new()).expect_err("should fail");
    assert!(!err.problems().is_empty(), "expected problems, got {err:?}");
    err.problems()
        .iter()
        .map(|p| {
            let (line, col) = source.line_col(p.span.offset());
            (p.code, line, col, p.message.clone())
        })
        .collect()
}

fn image<'p>(project: &'p Project, name: &str) -> &'p ImageSpec {
    project
        .images
        .iter()
        .find(|i| i.name.value == name)
        .unwrap_or_else(|| panic!("no image {name}"))
}

fn inline<'p>(project: &'p Project, name: &str) -> &'p BuildFile {
    match &image(project, name).build {
        ImageBuild::Inline(file) => file,
        ImageBuild::Dockerfile { .. } => panic!("{name} is not inline"),
    }
}

fn instructions<'p>(project: &'p Project, name: &str) -> &'p [Instruction] {
    &inline(project, name).stages[0].instructions
}

fn originals(project: &Project, name: &str) -> Vec<String> {
    instructions(project, name)
        .iter()
        .map(|i| i.original.clone())
        .collect()
}

/// The text a span covers.
fn text_at(source: &SourceFile, span: miette::SourceSpan) -> &str {
    &source.text[span.offset()..span.offset() + span.len()]
}

fn values(items: &[Spanned<String>]) -> Vec<&str> {
    items.iter().map(|s| s.value.as_str()).collect()
}

const FULL: &str = r#"version = 1

[image.base]
from = "busybox:${VERSION}"
platform = "linux/amd64"
tags = ["example/base:1.0"]
context = "base"
args = { VERSION = "1.36", FLAVOR = "musl" }
env = { PATH = "/usr/bin:/bin", A = "$VERSION" }
workdir = "/app"
steps = [
  { run = "make", network = "none", mounts = ["type=cache,target=/root/.cache"] },
  { run = ["echo", "exec form"] },
  { copy = ["src/", "/app/src/"], from = "builder", chown = "1:1", chmod = "0644", link = true, exclude = ["*.tmp"], parents = false },
  { add = ["https://example.invalid/x.tgz", "/opt/"], checksum = "sha256:0123", chown = "2:2", keep_git_dir = true, unpack = false },
  { env = { K = "v" } },
  { arg = { K2 = "v2" } },
  { arg = "NAME" },
  { workdir = "/x" },
  { user = "app" },
  { label = { k = "v" } },
  { expose = ["80"] },
  { volume = ["/data"] },
  { shell = ["/bin/bash", "-c"] },
  { onbuild = "RUN echo hi" },
  { cmd = "serve --now" },
  { entrypoint = ["/bin/app"] },
  { stopsignal = "SIGINT" },
  { healthcheck = "none" },
]
user = "app"
labels = { "org.example.x" = "y" }
expose = ["8080/tcp", 9090]
volumes = ["/data"]
entrypoint = ["/bin/app"]
cmd = "serve"
stopsignal = "SIGTERM"
healthcheck = { cmd = ["curl", "-f", "http://localhost/"], interval = "30s", timeout = "3s", start_period = "5s", start_interval = "1s", retries = 3 }
maintainer = "Jane <jane@example.invalid>"

[image.builder]
from = "scratch"

[group.default]
images = ["base", "builder"]
"#;

#[test]
fn inline_image_becomes_one_stage_in_order() {
    let project = parse(FULL);
    assert_eq!(project.version, 1);
    assert_eq!(
        project
            .images
            .iter()
            .map(|i| i.name.value.as_str())
            .collect::<Vec<_>>(),
        ["base", "builder"]
    );
    let base = image(&project, "base");
    assert_eq!(base.tags, ["example/base:1.0"]);
    assert_eq!(base.context, PathBuf::from("base"));
    let file = inline(&project, "base");
    assert_eq!(file.source.name, "forge.toml");
    assert_eq!(file.stages.len(), 1);
    let from = &file.stages[0].from;
    assert_eq!(from.base.value, "busybox:${VERSION}");
    assert_eq!(from.name.as_ref().map(|n| n.value.as_str()), Some("base"));
    assert_eq!(
        from.platform.as_ref().map(|p| p.value.as_str()),
        Some("linux/amd64")
    );
    assert_eq!(
        from.original,
        "FROM --platform=linux/amd64 busybox:${VERSION} AS base"
    );
    // `args` are also declared before FROM, so `from` can use them.
    assert_eq!(file.global_args.len(), 1);
    assert_eq!(
        file.global_args[0]
            .value
            .iter()
            .map(|d| d.name.value.as_str())
            .collect::<Vec<_>>(),
        ["VERSION", "FLAVOR"]
    );

    assert_eq!(
        originals(&project, "base"),
        [
            "ARG VERSION=1.36 FLAVOR=musl",
            "ENV PATH=/usr/bin:/bin A=$VERSION",
            "WORKDIR /app",
            "RUN --mount=type=cache,target=/root/.cache --network=none make",
            r#"RUN ["echo", "exec form"]"#,
            "COPY --from=builder --chown=1:1 --chmod=0644 --link --exclude=*.tmp src/ /app/src/",
            "ADD --checksum=sha256:0123 --chown=2:2 --keep-git-dir --unpack=false https://example.invalid/x.tgz /opt/",
            "ENV K=v",
            "ARG K2=v2",
            "ARG NAME",
            "WORKDIR /x",
            "USER app",
            "LABEL k=v",
            "EXPOSE 80",
            "VOLUME /data",
            r#"SHELL ["/bin/bash", "-c"]"#,
            "ONBUILD RUN echo hi",
            "CMD serve --now",
            r#"ENTRYPOINT ["/bin/app"]"#,
            "STOPSIGNAL SIGINT",
            "HEALTHCHECK NONE",
            // metadata, after the steps, in its fixed order
            "USER app",
            "LABEL org.example.x=y",
            "EXPOSE 8080/tcp 9090",
            "VOLUME /data",
            r#"ENTRYPOINT ["/bin/app"]"#,
            "CMD serve",
            "STOPSIGNAL SIGTERM",
            r#"HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --start-interval=1s --retries=3 CMD ["curl", "-f", "http://localhost/"]"#,
            "MAINTAINER Jane <jane@example.invalid>",
        ]
    );

    let instrs = instructions(&project, "base");
    let InstructionKind::Arg(decls) = &instrs[0].kind else {
        panic!("ARG first")
    };
    assert_eq!(decls[0].name.value, "VERSION");
    assert_eq!(
        decls[0].default.as_ref().map(|d| d.value.as_str()),
        Some("1.36")
    );
    let InstructionKind::Env(pairs) = &instrs[1].kind else {
        panic!("ENV second")
    };
    assert_eq!(
        pairs
            .iter()
            .map(|kv| (kv.key.value.as_str(), kv.value.value.as_str()))
            .collect::<Vec<_>>(),
        [("PATH", "/usr/bin:/bin"), ("A", "$VERSION")]
    );
    let InstructionKind::Run(run) = &instrs[3].kind else {
        panic!("RUN")
    };
    assert_eq!(run.command, CommandLine::Shell("make".into()));
    assert_eq!(values(&run.mounts), ["type=cache,target=/root/.cache"]);
    assert_eq!(run.network.as_ref().map(|n| n.value.as_str()), Some("none"));
    let InstructionKind::Run(run) = &instrs[4].kind else {
        panic!("RUN")
    };
    assert_eq!(
        run.command,
        CommandLine::Exec(vec!["echo".into(), "exec form".into()])
    );
    let InstructionKind::Copy(copy) = &instrs[5].kind else {
        panic!("COPY")
    };
    assert_eq!(values(&copy.sources), ["src/"]);
    assert_eq!(copy.dest.value, "/app/src/");
    assert_eq!(
        copy.from.as_ref().map(|f| f.value.as_str()),
        Some("builder")
    );
    assert_eq!(copy.chown.as_ref().map(|f| f.value.as_str()), Some("1:1"));
    assert_eq!(copy.chmod.as_ref().map(|f| f.value.as_str()), Some("0644"));
    assert!(copy.link && !copy.parents);
    assert_eq!(values(&copy.exclude), ["*.tmp"]);
    let InstructionKind::Add(add) = &instrs[6].kind else {
        panic!("ADD")
    };
    assert_eq!(
        add.checksum.as_ref().map(|f| f.value.as_str()),
        Some("sha256:0123")
    );
    assert!(add.keep_git_dir && !add.link);
    assert_eq!(add.unpack, Some(false));
    let InstructionKind::Arg(decls) = &instrs[9].kind else {
        panic!("ARG NAME")
    };
    assert!(decls[0].default.is_none());
    let InstructionKind::Onbuild { trigger, parsed } = &instrs[16].kind else {
        panic!("ONBUILD")
    };
    assert_eq!(trigger, "RUN echo hi");
    assert!(
        matches!(&parsed.kind, InstructionKind::Run(r) if r.command == CommandLine::Shell("echo hi".into()))
    );
    let InstructionKind::Expose(ports) = &instrs[23].kind else {
        panic!("EXPOSE")
    };
    assert_eq!(values(ports), ["8080/tcp", "9090"]);
    let InstructionKind::Healthcheck(check) = &instrs[28].kind else {
        panic!("HEALTHCHECK")
    };
    assert_eq!(
        *check,
        HealthcheckInstr::Check {
            test: CommandLine::Exec(vec!["curl".into(), "-f".into(), "http://localhost/".into()]),
            interval_ns: Some(30_000_000_000),
            timeout_ns: Some(3_000_000_000),
            start_period_ns: Some(5_000_000_000),
            start_interval_ns: Some(1_000_000_000),
            retries: Some(3),
        }
    );
    assert!(matches!(
        &instrs[29].kind,
        InstructionKind::Maintainer(m) if m == "Jane <jane@example.invalid>"
    ));

    assert_eq!(
        project.groups.get("default"),
        Some(&vec!["base".to_string(), "builder".to_string()])
    );
}

#[test]
fn spans_point_into_the_toml() {
    let project = parse(FULL);
    let source = &project.source;
    let base = image(&project, "base");
    assert_eq!(text_at(source, base.name.span), "base");
    assert_eq!(source.line_col(base.name.span.offset()), (3, 8));
    let file = inline(&project, "base");
    assert_eq!(file.source, project.source);
    let from = &file.stages[0].from;
    assert_eq!(text_at(source, from.span), r#"from = "busybox:${VERSION}""#);
    assert_eq!(text_at(source, from.base.span), r#""busybox:${VERSION}""#);
    let instrs = instructions(&project, "base");
    assert!(text_at(source, instrs[0].span).starts_with("args = {"));
    // A step's span is its table.
    assert_eq!(source.line_col(instrs[3].span.offset()), (12, 3));
    assert!(text_at(source, instrs[3].span).starts_with("{ run = \"make\""));
    let InstructionKind::Copy(copy) = &instrs[5].kind else {
        panic!("COPY")
    };
    assert_eq!(text_at(source, copy.dest.span), r#""/app/src/""#);
    let InstructionKind::Env(pairs) = &instrs[1].kind else {
        panic!("ENV")
    };
    assert_eq!(text_at(source, pairs[1].key.span), "A");
    assert_eq!(text_at(source, pairs[1].value.span), r#""$VERSION""#);
    // An ONBUILD trigger's spans land inside the TOML string.
    let InstructionKind::Onbuild { parsed, .. } = &instrs[16].kind else {
        panic!("ONBUILD")
    };
    let span = parsed.span;
    let (line, _) = source.line_col(span.offset());
    assert_eq!(line, 25);
    assert!(text_at(source, span).starts_with("RUN echo hi"));
    // Metadata spans cover `key = value`.
    assert_eq!(text_at(source, instrs[26].span), r#"cmd = "serve""#);
}

#[test]
fn step_forms_and_values() {
    let project = parse(
        r#"
[image.a]
from = "scratch"
steps = [
  { copy = { src = ["a", "b c"], dest = "/d/" } },
  { copy = { src = "one", dest = "/two" } },
  { add = ["x.tar", "/"] },
  { arg = ["A", "B"] },
  { env = { Q = 'say "hi" \n', PORT = 8080, ON = true, COST = "$$5 for $ITEM" } },
  { expose = 53 },
  { volume = "/cache" },
]
"#,
    );
    let instrs = instructions(&project, "a");
    let InstructionKind::Copy(c) = &instrs[0].kind else {
        panic!("COPY")
    };
    assert_eq!(values(&c.sources), ["a", "b c"]);
    assert_eq!(c.dest.value, "/d/");
    assert_eq!(instrs[0].original, r#"COPY ["a", "b c", "/d/"]"#);
    let InstructionKind::Copy(c) = &instrs[1].kind else {
        panic!("COPY")
    };
    assert_eq!(values(&c.sources), ["one"]);
    assert!(
        matches!(&instrs[2].kind, InstructionKind::Add(a) if a.unpack.is_none() && a.dest.value == "/")
    );
    assert_eq!(instrs[3].original, "ARG A B");
    // Values are literal except `$` expansions: quotes and backslashes are escaped
    // for the shell lexer, `$$` is a literal dollar; integers and booleans are text.
    let InstructionKind::Env(pairs) = &instrs[4].kind else {
        panic!("ENV")
    };
    assert_eq!(
        pairs
            .iter()
            .map(|kv| kv.value.value.as_str())
            .collect::<Vec<_>>(),
        [r#"say \"hi\" \\n"#, "8080", "true", r"\$5 for $ITEM"]
    );
    assert_eq!(
        instrs[4].original,
        r#"ENV Q="say \"hi\" \\n" PORT=8080 ON=true COST="\$5 for $ITEM""#
    );
    assert_eq!(instrs[5].original, "EXPOSE 53");
    assert_eq!(instrs[6].original, "VOLUME /cache");
}

#[test]
fn steps_as_array_of_tables() {
    let project = parse(
        r#"
[image.a]
from = "scratch"

[[image.a.steps]]
run = "one"

[[image.a.steps]]
copy = ["x", "/y"]
link = true
"#,
    );
    assert_eq!(originals(&project, "a"), ["RUN one", "COPY --link x /y"]);
    let instrs = instructions(&project, "a");
    assert_eq!(project.source.line_col(instrs[1].span.offset()), (8, 1));
}

#[test]
fn dockerfile_backed_image() {
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("proj/app/Dockerfile"),
        "FROM scratch\nRUN build\n".to_string(),
    );
    let project = parse_with(
        r#"
[image.app]
dockerfile = "app/Dockerfile"
context = "app"
target = "prod"
args = { X = "1", N = 2 }
tags = ["example/app:latest", "example/app:1"]
"#,
        "proj",
        &files,
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let app = image(&project, "app");
    assert_eq!(app.context, PathBuf::from("proj/app"));
    assert_eq!(app.tags, ["example/app:latest", "example/app:1"]);
    let ImageBuild::Dockerfile {
        path,
        file,
        target,
        args,
    } = &app.build
    else {
        panic!("dockerfile image")
    };
    assert_eq!(path, &PathBuf::from("proj/app/Dockerfile"));
    assert_eq!(file.source.name, "proj/app/Dockerfile");
    assert_eq!(file.stages.len(), 1);
    assert_eq!(target.as_deref(), Some("prod"));
    assert_eq!(
        args.iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("N", "2"), ("X", "1")]
    );
}

#[test]
fn defaults_and_relative_paths() {
    let project = parse("[image.a]\nfrom = \"scratch\"\n");
    assert_eq!(project.version, 1);
    let a = image(&project, "a");
    assert!(a.tags.is_empty());
    assert_eq!(a.context, PathBuf::from("."));
    assert!(project.groups.is_empty());
    // An inline image with nothing but `from` is a bare FROM.
    assert!(instructions(&project, "a").is_empty());
    assert!(inline(&project, "a").global_args.is_empty());

    let text = r#"
[image.a]
from = "scratch"
[image.b]
from = "scratch"
context = "./sub/../b"
[image.c]
from = "scratch"
context = "/abs/ctx"
"#;
    let project =
        parse_with(text, "repo/dir", &BTreeMap::new()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(image(&project, "a").context, PathBuf::from("repo/dir"));
    assert_eq!(
        image(&project, "b").context,
        PathBuf::from("repo/dir/sub/../b")
    );
    assert_eq!(image(&project, "c").context, PathBuf::from("/abs/ctx"));
}

#[test]
fn empty_metadata_adds_nothing() {
    let project = parse(
        "[image.a]\nfrom = \"scratch\"\nargs = {}\nenv = {}\nlabels = {}\nexpose = []\nvolumes = []\nsteps = []\n",
    );
    assert!(instructions(&project, "a").is_empty());
}

#[test]
fn version_one_is_accepted_and_others_are_not() {
    assert_eq!(
        parse("version = 1\n[image.a]\nfrom = \"scratch\"\n").version,
        1
    );
    assert_eq!(
        problems("version = 2\n[image.a]\nfrom = \"scratch\"\n"),
        [(
            "forge-toml::version",
            1,
            11,
            "unsupported forge.toml version 2".to_string()
        )]
    );
    assert_eq!(
        problems("version = \"1\"\n[image.a]\nfrom = \"scratch\"\n"),
        [(
            "forge-toml::type",
            1,
            11,
            "`version` must be an integer, not a string".to_string()
        )]
    );
}

#[test]
fn error_syntax() {
    let p = problems("[image.a]\nfrom = \"scratch\nsteps = []\n");
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].0, p[0].1), ("forge-toml::syntax", 2));
    assert!(p[0].3.starts_with("invalid TOML: "), "{}", p[0].3);
    let p = problems("[image.a]\nfrom = \"a\"\nfrom = \"b\"\n");
    assert_eq!(
        p,
        [(
            "forge-toml::syntax",
            3,
            1,
            "invalid TOML: duplicate key `from` in table `image.a`".to_string()
        )]
    );
}

#[test]
fn error_unknown_key() {
    let err = parse_with(
        "[image.a]\nfrom = \"scratch\"\ntagz = [\"x\"]\n",
        "",
        &BTreeMap::new(),
    )
    .expect_err("unknown key");
    let p = &err.problems()[0];
    assert_eq!(p.code, "forge-toml::unknown-key");
    assert_eq!(p.message, "unknown key `tagz` in `image.a`");
    assert_eq!(p.label, "unknown key");
    let help = p.help.clone().unwrap_or_default();
    assert!(
        help.starts_with("did you mean `tags`? expected one of: `from`"),
        "{help}"
    );
    assert_eq!(
        problems("imagez = 1\n[image.a]\nfrom = \"scratch\"\n"),
        [(
            "forge-toml::unknown-key",
            1,
            1,
            "unknown key `imagez`".to_string()
        )]
    );
    // In a step: an unknown key, and a flag of another instruction.
    assert_eq!(
        problems(
            "[image.a]\nfrom = \"scratch\"\nsteps = [\n  { run = \"x\", netwrk = \"none\" },\n  { run = \"y\", chown = \"1\" },\n]\n"
        ),
        [
            (
                "forge-toml::unknown-key",
                4,
                16,
                "unknown key `netwrk` in `image.a.steps[0]`".to_string()
            ),
            (
                "forge-toml::unknown-key",
                5,
                16,
                "`chown` is not an option of `run` (in `image.a.steps[1]`)".to_string()
            ),
        ]
    );
    // A misspelt instruction.
    let err = parse_with(
        "[image.a]\nfrom = \"scratch\"\nsteps = [{ runn = \"x\" }]\n",
        "",
        &BTreeMap::new(),
    )
    .expect_err("unknown instruction");
    assert_eq!(err.problems().len(), 1);
    assert_eq!(
        err.problems()[0].message,
        "unknown key `runn` in `image.a.steps[0]`"
    );
    assert!(err.problems()[0]
        .help
        .as_deref()
        .is_some_and(|h| h.starts_with("did you mean `run`?")));
}

#[test]
fn error_type() {
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\ntags = 3\nsteps = [{ run = 1 }]\n"),
        [
            (
                "forge-toml::type",
                3,
                8,
                "`image.a.tags` must be a string or an array of strings, not an integer"
                    .to_string()
            ),
            (
                "forge-toml::type",
                4,
                18,
                "`image.a.steps[0].run` must be a string (shell form) or an array of strings (exec form), not an integer"
                    .to_string()
            ),
        ]
    );
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nsteps = [\"make\"]\n"),
        [(
            "forge-toml::type",
            3,
            10,
            "`image.a.steps[0]` must be a table, not a string".to_string()
        )]
    );
}

#[test]
fn error_missing_key() {
    assert_eq!(
        problems("[image.a]\ntags = []\n"),
        [(
            "forge-toml::missing-key",
            1,
            8,
            "image `a` has neither `from` nor `dockerfile`".to_string()
        )]
    );
    assert_eq!(
        problems("version = 1\n"),
        [(
            "forge-toml::missing-key",
            1,
            1,
            "the file defines no image".to_string()
        )]
    );
    assert_eq!(
        problems(
            "[image.a]\nfrom = \"scratch\"\nsteps = [{ healthcheck = { interval = \"1s\" } }]\n"
        ),
        [(
            "forge-toml::missing-key",
            3,
            26,
            "`image.a.steps[0].healthcheck` has no `cmd`".to_string()
        )]
    );
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nsteps = [{ copy = { src = \"x\" } }]\n"),
        [(
            "forge-toml::missing-key",
            3,
            19,
            "`image.a.steps[0].copy` has no `dest`".to_string()
        )]
    );
}

#[test]
fn error_conflict() {
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\ndockerfile = \"Dockerfile\"\n"),
        [(
            "forge-toml::conflict",
            3,
            1,
            "`image.a` has both `from` and `dockerfile`".to_string()
        )]
    );
    assert_eq!(
        problems("[image.a]\ndockerfile = \"Dockerfile\"\nsteps = []\n"),
        [(
            "forge-toml::conflict",
            3,
            1,
            "`steps` cannot be used with `dockerfile` (in `image.a`)".to_string()
        )]
    );
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\ntarget = \"x\"\n"),
        [(
            "forge-toml::conflict",
            3,
            1,
            "`target` cannot be used with `from` (in `image.a`)".to_string()
        )]
    );
    assert_eq!(
        problems(
            "[image.a]\nfrom = \"scratch\"\nsteps = [{ run = \"x\", copy = [\"a\", \"b\"] }]\n"
        ),
        [(
            "forge-toml::conflict",
            3,
            23,
            "`image.a.steps[0]` has two instructions, `run` and `copy`".to_string()
        )]
    );
}

#[test]
fn error_unknown_image() {
    let text = "[image.base]\nfrom = \"scratch\"\n[group.all]\nimages = [\"base\", \"bse\"]\n";
    assert_eq!(
        problems(text),
        [(
            "forge-toml::unknown-image",
            4,
            19,
            "group `all` names unknown image `bse`".to_string()
        )]
    );
    let err = parse_with(text, "", &BTreeMap::new()).expect_err("unknown image");
    assert_eq!(
        err.problems()[0].help.as_deref(),
        Some("did you mean `base`? images of this file: `base`")
    );
}

#[test]
fn error_value() {
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nhealthcheck = { cmd = \"true\", interval = \"30\" }\n"),
        [(
            "forge-toml::value",
            3,
            42,
            "`image.a.healthcheck.interval`: missing unit in duration \"30\" (use ns, us, ms, s, m or h)"
                .to_string()
        )]
    );
    assert_eq!(
        problems("[image.App]\nfrom = \"scratch\"\n"),
        [(
            "forge-toml::value",
            1,
            8,
            "invalid image name `App`".to_string()
        )]
    );
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nsteps = [{ copy = [\"only\"] }]\n"),
        [(
            "forge-toml::value",
            3,
            19,
            "`image.a.steps[0].copy` needs at least one source and a destination".to_string()
        )]
    );
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nsteps = [{ onbuild = \"RUN a\\nRUN b\" }]\n"),
        [(
            "forge-toml::value",
            3,
            22,
            "`image.a.steps[0].onbuild` must be exactly one Dockerfile instruction".to_string()
        )]
    );
}

#[test]
fn onbuild_trigger_errors_point_into_the_toml_string() {
    let text = "[image.a]\nfrom = \"scratch\"\nsteps = [{ onbuild = \"RUNN echo hi\" }]\n";
    let p = problems(text);
    assert_eq!(p.len(), 1);
    // The Dockerfile parser's own code and message, at the trigger's position.
    assert_eq!(p[0].0, "dockerfile::unknown-instruction", "{p:?}");
    assert_eq!((p[0].1, p[0].2), (3, 23));
    // Triggers are checked as `ONBUILD <trigger>` is.
    assert_eq!(
        problems("[image.a]\nfrom = \"scratch\"\nsteps = [{ onbuild = \"FROM x\" }]\n"),
        [(
            "dockerfile::bad-onbuild",
            3,
            23,
            "FROM isn't allowed as an ONBUILD trigger".to_string()
        )]
    );
    // A trigger written with escapes is reported on the whole string.
    let p = problems("[image.a]\nfrom = \"scratch\"\nsteps = [{ onbuild = \"RUNN \\\"x\\\"\" }]\n");
    assert_eq!((p[0].1, p[0].2), (3, 22));
}

#[test]
fn many_problems_are_reported_together() {
    let text = r#"version = 3

[image.base]
from = "scratch"
tagz = ["x"]
steps = [{ run = "x", chown = "1" }, { copy = "x" }]
healthcheck = { cmd = "true", interval = "5 s" }

[image.app]
from = "base"
dockerfile = "Dockerfile"

[group.default]
images = ["base", "ap"]
"#;
    let codes: Vec<(&str, usize)> = problems(text).iter().map(|p| (p.0, p.1)).collect();
    assert_eq!(
        codes,
        [
            ("forge-toml::version", 1),
            ("forge-toml::unknown-key", 5),
            ("forge-toml::unknown-key", 6),
            ("forge-toml::type", 6),
            ("forge-toml::value", 7),
            ("forge-toml::conflict", 11),
            ("forge-toml::unknown-image", 14),
        ]
    );
}

#[test]
fn dockerfile_problems_are_reported_against_the_dockerfile() {
    let mut files = BTreeMap::new();
    files.insert(
        PathBuf::from("Dockerfile"),
        "FROM scratch\nRUNN x\n".to_string(),
    );
    let err = parse_with("[image.a]\ndockerfile = \"Dockerfile\"\n", "", &files)
        .expect_err("bad Dockerfile");
    let FrontendError::Invalid {
        source_code,
        problems,
    } = &err
    else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(source_code.name(), "Dockerfile");
    assert!(problems[0].code.starts_with("dockerfile::"));

    let err = parse_with(
        "[image.a]\ndockerfile = \"missing/Dockerfile\"\n",
        "",
        &files,
    )
    .expect_err("missing Dockerfile");
    assert!(
        matches!(&err, FrontendError::Read { path, .. } if path == "missing/Dockerfile"),
        "{err:?}"
    );
    assert!(!err.is_input_error());
}

#[test]
fn load_reads_relative_to_the_file() {
    let dir = std::env::temp_dir().join(format!("forge-toml-load-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("app")).expect("temp dir");
    std::fs::write(
        dir.join("forge.toml"),
        "[image.app]\ndockerfile = \"app/Dockerfile\"\ncontext = \"app\"\n",
    )
    .expect("write forge.toml");
    std::fs::write(dir.join("app/Dockerfile"), "FROM scratch\n").expect("write Dockerfile");
    let project = forge_toml::load(&dir.join("forge.toml"));
    let _ = std::fs::remove_dir_all(&dir);
    let project = project.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        project.source.name,
        dir.join("forge.toml").display().to_string()
    );
    let app = image(&project, "app");
    assert_eq!(app.context, dir.join("app"));
    assert!(
        matches!(&app.build, ImageBuild::Dockerfile { path, .. } if *path == dir.join("app/Dockerfile"))
    );

    let err = forge_toml::load(Path::new("/nonexistent/forge.toml")).expect_err("missing");
    assert!(matches!(err, FrontendError::Read { .. }));
}

#[test]
fn monorepo_example_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/monorepo/forge.toml");
    let project =
        forge_toml::load(&path).unwrap_or_else(|e| panic!("{:?}", miette::Report::new(e)));
    let names: Vec<&str> = project
        .images
        .iter()
        .map(|i| i.name.value.as_str())
        .collect();
    assert_eq!(names, ["base", "builder", "app", "web"]);
    let base = inline(&project, "base");
    assert_eq!(base.stages[0].from.base.value, "scratch");
    // ENV first (image-level `env`), then the steps: ADD rootfs.tar /.
    assert!(matches!(
        &base.stages[0].instructions[0].kind,
        InstructionKind::Env(_)
    ));
    assert!(matches!(
        &base.stages[0].instructions[1].kind,
        InstructionKind::Add(a) if a.sources[0].value == "rootfs.tar" && a.dest.value == "/"
    ));
    assert_eq!(inline(&project, "app").stages[0].from.base.value, "base");
    assert!(matches!(
        image(&project, "web").build,
        ImageBuild::Dockerfile { .. }
    ));
    assert!(image(&project, "base").context.ends_with("monorepo/base"));
    assert_eq!(
        project.groups.get("default").map(Vec::len),
        Some(3),
        "{:?}",
        project.groups
    );
}

#[test]
fn graphical_report() {
    let text = r#"[image.base]
from = "scratch"
tagz = ["example/base"]
steps = [
  { run = "make", chown = "1:1" },
]
healthcheck = { cmd = "true", interval = "30" }

[group.default]
images = ["bse"]
"#;
    let err = parse_with(text, "", &BTreeMap::new()).expect_err("problems");
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut out, &err)
        .expect("render");
    insta::assert_snapshot!("forge_toml_graphical_report", out);
}
