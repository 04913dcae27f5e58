//! Lowering: ARG/ENV scoping, base-image facts, ONBUILD, and lowering errors.
//! IR snapshots (insta, YAML-ish JSON) pin the whole result; focused asserts say
//! what each case is about.

use std::collections::BTreeMap;

use forge_frontend::ir::{Base, Ir, Op, SourceRef, StageId};
use forge_frontend::lower::{lower_dockerfile, LowerOptions, DEFAULT_PATH};
use forge_frontend::resolve::{BaseImage, FixedResolver};
use forge_frontend::syntax::SourceFile;
use forge_frontend::{dockerfile, FrontendError};

fn lower_with(text: &str, opts: &LowerOptions<'_>) -> Result<Ir, FrontendError> {
    let source = SourceFile::new("Dockerfile", text);
    let file = dockerfile::parse(&source)?;
    lower_dockerfile(&file, opts)
}

fn lower(text: &str) -> Ir {
    match lower_with(text, &LowerOptions::unresolved()) {
        Ok(ir) => ir,
        Err(e) => panic!("lowering failed: {e:?}"),
    }
}

fn errors(text: &str) -> Vec<(String, usize, usize, &'static str)> {
    let source = SourceFile::new("Dockerfile", text);
    let err = lower_with(text, &LowerOptions::unresolved()).expect_err("should fail");
    err.problems()
        .iter()
        .map(|p| {
            let (line, col) = source.line_col(p.span.offset());
            (p.message.clone(), line, col, p.code)
        })
        .collect()
}

fn env_of(ir: &Ir, stage: usize, step: usize) -> Vec<(String, String)> {
    ir.stages[stage].steps[step].ctx.env.clone()
}

#[test]
fn global_args_reach_from_and_bare_stage_args_only() {
    let text = "ARG TAG=1.0\nARG UNUSED=x\nFROM busybox:${TAG} AS a\nARG TAG\nRUN echo $TAG\nFROM scratch\nRUN echo $TAG\n";
    let ir = lower(text);
    let Base::Image(img) = &ir.stages[0].base else {
        panic!("stage 0 should be built from an image")
    };
    assert_eq!(img.reference, "busybox:1.0");
    // `ARG TAG` without a value inherits the global default ...
    assert_eq!(
        ir.stages[0].steps[1].ctx.args.get("TAG"),
        Some(&Some("1.0".to_string()))
    );
    // ... and a stage that does not declare it does not see it.
    assert!(ir.stages[1].steps[0].ctx.args.is_empty());
    insta::assert_json_snapshot!("global_args", ir);
}

#[test]
fn build_args_override_declared_args_only() {
    let mut opts = LowerOptions::unresolved();
    opts.build_args = BTreeMap::from([
        ("V".to_string(), "2".to_string()),
        ("NOT_DECLARED".to_string(), "x".to_string()),
    ]);
    let ir = lower_with("FROM scratch\nARG V=1\nENV W=$V$NOT_DECLARED\n", &opts).expect("lowers");
    assert_eq!(
        ir.stages[0].steps[1].op,
        Op::Env(vec![("W".into(), "2".into())])
    );
}

#[test]
fn env_accumulates_and_one_instruction_sees_the_state_before_it() {
    let ir = lower("FROM scratch\nENV A=1\nENV A=2 B=$A\nENV C=\"$A $B\"\nRUN true\n");
    assert_eq!(
        env_of(&ir, 0, 3),
        vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("A".to_string(), "2".to_string()),
            ("B".to_string(), "1".to_string()),
            ("C".to_string(), "2 1".to_string()),
        ]
    );
}

#[test]
fn env_wins_over_arg_of_the_same_name() {
    let ir = lower("FROM scratch\nARG X=from-arg\nENV X=from-env\nLABEL x=$X\n");
    assert_eq!(
        ir.stages[0].steps[2].op,
        Op::Label(vec![("x".into(), "from-env".into())])
    );
}

#[test]
fn unresolved_base_leaves_dependent_values_unexpanded() {
    let ir =
        lower("FROM debian\nENV PATH=$PATH:/opt/bin MINE=1\nWORKDIR $HOME/app\nLABEL a=$MINE\n");
    let env = &ir.stages[0].steps[0];
    assert_eq!(
        env.op,
        Op::Env(vec![
            ("PATH".into(), "$PATH:/opt/bin".into()),
            ("MINE".into(), "1".into())
        ])
    );
    assert!(env.deferred.contains("PATH"));
    let workdir = &ir.stages[0].steps[1];
    assert_eq!(workdir.op, Op::Workdir("$HOME/app".into()));
    assert!(workdir.deferred.contains("HOME"));
    // A value the stage set itself is known.
    let label = &ir.stages[0].steps[2];
    assert_eq!(label.op, Op::Label(vec![("a".into(), "1".into())]));
    assert!(label.deferred.is_empty());
    insta::assert_json_snapshot!("unresolved_base", ir);
}

#[test]
fn resolved_base_provides_env_workdir_user_and_onbuild() {
    let resolver = FixedResolver {
        images: BTreeMap::from([(
            "example/base:1".to_string(),
            BaseImage {
                digest: "sha256:1111111111111111111111111111111111111111111111111111111111111111"
                    .into(),
                env: vec![("HOME".into(), "/home/app".into())],
                workdir: "/srv".into(),
                user: "app".into(),
                shell: vec![],
                onbuild: vec!["RUN echo triggered from $HOME".into()],
            },
        )]),
    };
    let opts = LowerOptions {
        build_args: BTreeMap::new(),
        resolver: &resolver,
        tags: vec!["example/app:dev".into()],
    };
    let ir = lower_with("FROM example/base:1\nWORKDIR data\nENV P=$PATH\n", &opts).expect("lowers");
    let stage = &ir.stages[0];
    let Base::Image(img) = &stage.base else {
        panic!("image base")
    };
    assert!(img.digest.is_some());
    // The trigger runs first, as an inherited step.
    assert!(matches!(stage.steps[0].op, Op::Run(_)));
    assert_eq!(
        stage.steps[0].origin.onbuild_from.as_deref(),
        Some("example/base:1")
    );
    assert_eq!(stage.steps[1].op, Op::Workdir("/srv/data".into()));
    // PATH was missing from the base: the default is added.
    assert_eq!(
        stage.steps[2].op,
        Op::Env(vec![("P".into(), DEFAULT_PATH.into())])
    );
    assert_eq!(stage.steps[2].ctx.user, "app");
    assert_eq!(ir.targets[0].tags, vec!["example/app:dev".to_string()]);
}

#[test]
fn onbuild_of_an_earlier_stage_runs_in_the_stage_built_from_it() {
    let ir = lower("FROM scratch AS base\nENV X=1\nONBUILD RUN echo $X\nFROM base AS child\nRUN echo child\nFROM child\n");
    let child = &ir.stages[1];
    assert_eq!(child.base, Base::Stage(StageId(0)));
    assert_eq!(child.steps.len(), 2);
    assert_eq!(child.steps[0].origin.onbuild_from.as_deref(), Some("base"));
    // Triggers run once: the grandchild does not inherit them.
    assert!(ir.stages[2].steps.is_empty());
    // The child inherits the base's env.
    assert!(child.steps[1]
        .ctx
        .env
        .contains(&("X".to_string(), "1".to_string())));
}

#[test]
fn copy_from_stages_by_name_and_index_and_images() {
    let ir = lower("FROM scratch AS one\nFROM scratch AS two\nCOPY --from=one /a /a\nCOPY --from=0 /b /b\nCOPY --from=alpine:3 /c /c\nCOPY d .\n");
    let froms: Vec<SourceRef> = ir.stages[1]
        .steps
        .iter()
        .filter_map(|s| match &s.op {
            Op::Copy(c) => Some(c.from.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        froms,
        vec![
            SourceRef::Stage(StageId(0)),
            SourceRef::Stage(StageId(0)),
            SourceRef::Image("alpine:3".into()),
            SourceRef::Context,
        ]
    );
}

#[test]
fn workdir_and_destinations_resolve_against_the_workdir() {
    let ir = lower(
        "FROM scratch\nWORKDIR /app\nWORKDIR sub/../lib\nCOPY a .\nCOPY b rel/\nCOPY c /abs\n",
    );
    let ops: Vec<String> = ir.stages[0]
        .steps
        .iter()
        .map(|s| match &s.op {
            Op::Workdir(w) => w.clone(),
            Op::Copy(c) => c.dest.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(
        ops,
        vec!["/app", "/app/lib", "/app/lib/", "/app/lib/rel/", "/abs"]
    );
}

#[test]
fn platform_args_exist_undeclared_in_the_global_scope() {
    let ir = lower("FROM busybox:${TARGETARCH}\nARG TARGETOS\nRUN echo\n");
    let Base::Image(img) = &ir.stages[0].base else {
        panic!("image")
    };
    assert!(!img.reference.ends_with(':'), "{}", img.reference);
    assert_eq!(
        ir.stages[0].steps[1].ctx.args.get("TARGETOS"),
        Some(&Some("linux".to_string()))
    );
}

#[test]
fn mounts_are_parsed_and_resolved() {
    let ir = lower("FROM scratch AS deps\nFROM scratch\nARG CACHE=/root/.cache\nRUN --mount=type=cache,target=$CACHE,sharing=locked --mount=type=bind,from=deps,target=/deps --mount=type=secret,id=token make\n");
    insta::assert_json_snapshot!("mounts", ir.stages[1].steps[1].op);
}

#[test]
fn expose_normalises_ports() {
    let ir = lower("FROM scratch\nEXPOSE 80 53/udp 8000-8001\n");
    assert_eq!(
        ir.stages[0].steps[0].op,
        // Sorted, as BuildKit's EXPOSE parser does.
        Op::Expose(vec![
            "53/udp".into(),
            "80/tcp".into(),
            "8000/tcp".into(),
            "8001/tcp".into()
        ])
    );
}

#[test]
fn a_dockerfile_has_a_target_per_named_stage_and_a_default() {
    let ir = lower("FROM scratch AS a\nFROM scratch AS b\nFROM scratch\n");
    let names: Vec<&str> = ir.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "default"]);
}

#[test]
fn from_index_must_name_an_earlier_stage() {
    let e = errors("FROM scratch\nCOPY --from=0 /a /a\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].3, "dockerfile::from-index");
    // The span is the flag's value.
    assert_eq!((e[0].1, e[0].2), (2, 13));
    let e = errors("FROM scratch\nFROM scratch\nCOPY --from=5 /a /a\n");
    assert_eq!(e[0].0, "--from=5 names no earlier stage");
}

#[test]
fn a_stage_cannot_copy_from_itself() {
    let e = errors("FROM scratch AS me\nCOPY --from=me /a /a\n");
    assert_eq!(e[0].3, "dockerfile::self-reference");
    assert_eq!(e[0].0, "stage `me` refers to itself");
    assert_eq!((e[0].1, e[0].2), (2, 13));
}

#[test]
fn from_with_a_variable_is_refused() {
    let e = errors("ARG S=a\nFROM scratch AS a\nFROM scratch\nCOPY --from=$S /a /a\n");
    assert_eq!(e[0].3, "dockerfile::from-expansion");
}

#[test]
fn every_lowering_problem_is_reported_at_once() {
    let e = errors("FROM scratch\nEXPOSE http\nSTOPSIGNAL SIGNOPE\nRUN --mount=type=cache,tagret=/x make\nCOPY --chmod=999 a b\n");
    let codes: Vec<&str> = e.iter().map(|p| p.3).collect();
    assert_eq!(
        codes,
        vec![
            "dockerfile::bad-port",
            "dockerfile::bad-signal",
            "dockerfile::bad-mount",
            "dockerfile::bad-chmod",
        ]
    );
    let lines: Vec<usize> = e.iter().map(|p| p.1).collect();
    assert_eq!(lines, vec![2, 3, 4, 5]);
}

#[test]
fn a_blank_base_is_an_error() {
    let e = errors("ARG IMG\nFROM $IMG\n");
    assert_eq!(e[0].3, "dockerfile::empty-base");
}

#[test]
fn duplicate_stage_names_are_errors() {
    let e = errors("FROM scratch AS x\nFROM scratch AS X\n");
    assert_eq!(e[0].3, "dockerfile::duplicate-stage");
    assert_eq!(e[0].1, 2);
}

#[test]
fn bad_expansion_points_into_the_word() {
    let e = errors("FROM scratch\nENV A=\"${B:?must be set}\"\n");
    assert_eq!(e[0].3, "dockerfile::expansion");
    assert!(e[0].0.contains("must be set"), "{}", e[0].0);
    assert_eq!(e[0].1, 2);
}

#[test]
fn project_images_are_lowered_after_the_images_they_are_built_from() {
    use forge_frontend::forge_toml;
    use forge_frontend::lower::lower_project;
    // `app` comes first in the file and names its base through an ARG.
    let toml = SourceFile::new(
        "forge.toml",
        "[image.app]\ndockerfile = \"app/Dockerfile\"\nargs = { BASE = \"base\" }\n\n[image.base]\nfrom = \"scratch\"\nenv = { FROM_BASE = \"yes\" }\n",
    );
    let mut read =
        |_: &std::path::Path| Ok("ARG BASE\nFROM ${BASE}\nRUN echo $FROM_BASE\n".to_string());
    let project = forge_toml::parse(&toml, std::path::Path::new("/ws"), &mut read).expect("parses");
    let ir = lower_project(&project, &LowerOptions::unresolved()).expect("lowers");
    let app = ir.target("app").expect("app target").stage;
    let base = ir.target("base").expect("base target").stage;
    let app_stage = ir.stage(app).expect("app stage");
    assert_eq!(app_stage.base, Base::Stage(base));
    assert!(app_stage
        .initial
        .env
        .contains(&("FROM_BASE".to_string(), "yes".to_string())));
}

#[test]
fn images_built_from_each_other_are_a_cycle() {
    use forge_frontend::forge_toml;
    use forge_frontend::lower::lower_project;
    let toml = SourceFile::new(
        "forge.toml",
        "[image.a]\nfrom = \"b\"\n\n[image.b]\nfrom = \"a\"\n",
    );
    let mut read = |_: &std::path::Path| Ok(String::new());
    let project = forge_toml::parse(&toml, std::path::Path::new("/ws"), &mut read).expect("parses");
    let err = lower_project(&project, &LowerOptions::unresolved()).expect_err("a cycle");
    assert_eq!(err.problems()[0].code, "forge::cycle");
    assert!(
        err.problems()[0].message.contains("a -> b -> a")
            || err.problems()[0].message.contains("b -> a -> b"),
        "{}",
        err.problems()[0].message
    );
}

#[test]
fn heredoc_sources_stay_markers_and_bodies_expand_unless_quoted() {
    let ir = lower("FROM scratch\nARG NAME=world\nCOPY <<EOF <<'RAW' /etc/\nhello $NAME\nEOF\nkeep $NAME\nRAW\n");
    let Op::Copy(copy) = &ir.stages[0].steps[1].op else {
        panic!("a COPY")
    };
    assert_eq!(copy.sources, vec!["<<EOF".to_string(), "<<RAW".to_string()]);
    assert_eq!(copy.heredocs[0].content, "hello world\n");
    assert_eq!(copy.heredocs[1].content, "keep $NAME\n");
    // RUN heredocs are left to the shell.
    let ir = lower("FROM scratch\nARG NAME=x\nRUN <<EOF\necho $NAME\nEOF\n");
    let Op::Run(run) = &ir.stages[0].steps[1].op else {
        panic!("a RUN")
    };
    assert_eq!(run.heredocs[0].content, "echo $NAME\n");
}
