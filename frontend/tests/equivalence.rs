//! A forge.toml and a Dockerfile that say the same thing lower to the same IR.
//!
//! Each directory under `tests/data/equivalence/` holds a `Dockerfile` whose stages
//! are named like the images of its `forge.toml`; both are lowered and their stages
//! (and targets) compared, with no base-image facts, with a [`FixedResolver`] that
//! knows the base images' config, and with build args. [`Origin`] (where a step was
//! written) compares equal by design, so only meaning is compared.
//!
//! [`Origin`]: forge_frontend::ir::Origin

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use forge_frontend::forge_toml;
use forge_frontend::ir::Ir;
use forge_frontend::lower::{lower_dockerfile, lower_project, LowerOptions};
use forge_frontend::resolve::{BaseImage, FixedResolver};
use forge_frontend::syntax::SourceFile;
use forge_frontend::{dockerfile, FrontendError};

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/equivalence")
        .join(name)
}

fn report(e: FrontendError) -> String {
    format!("{:?}", miette::Report::new(e))
}

/// Lowers both files of a case with `opts`.
fn lower_both(name: &str, opts: &LowerOptions<'_>) -> (Ir, Ir) {
    let dir = case_dir(name);
    let df_path = dir.join("Dockerfile");
    let text =
        std::fs::read_to_string(&df_path).unwrap_or_else(|e| panic!("{}: {e}", df_path.display()));
    let source = SourceFile::new(df_path.display().to_string(), text);
    let file =
        dockerfile::parse(&source).unwrap_or_else(|e| panic!("{name}/Dockerfile: {}", report(e)));
    let from_dockerfile = lower_dockerfile(&file, opts)
        .unwrap_or_else(|e| panic!("{name}/Dockerfile: {}", report(e)));

    let project = forge_toml::load(&dir.join("forge.toml"))
        .unwrap_or_else(|e| panic!("{name}/forge.toml: {}", report(e)));
    let mut from_toml = lower_project(&project, opts)
        .unwrap_or_else(|e| panic!("{name}/forge.toml: {}", report(e)));
    // Every forge.toml image names its context (the case directory here),
    // where a Dockerfile's stages read the build's: the same directory.
    for stage in &mut from_toml.stages {
        assert_eq!(
            stage.context.as_deref(),
            Some(dir.as_path()),
            "{name}: context"
        );
        stage.context = None;
    }
    (from_dockerfile, from_toml)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("<{e}>"))
}

/// Asserts equal stages and targets, pointing at the first step that differs.
fn assert_same(name: &str, mode: &str, dockerfile: &Ir, toml: &Ir) {
    let names =
        |ir: &Ir| -> Vec<Option<String>> { ir.stages.iter().map(|s| s.name.clone()).collect() };
    assert_eq!(
        names(dockerfile),
        names(toml),
        "{name} ({mode}): stage names differ"
    );
    for (d, t) in dockerfile.stages.iter().zip(&toml.stages) {
        let stage = d.name.as_deref().unwrap_or("?");
        assert_eq!(
            d.steps.len(),
            t.steps.len(),
            "{name} ({mode}): stage `{stage}` has {} steps from the Dockerfile, {} from the TOML:\n{}\n---\n{}",
            d.steps.len(),
            t.steps.len(),
            json(&d.steps.iter().map(|s| &s.origin.text).collect::<Vec<_>>()),
            json(&t.steps.iter().map(|s| &s.origin.text).collect::<Vec<_>>()),
        );
        for (i, (ds, ts)) in d.steps.iter().zip(&t.steps).enumerate() {
            assert!(
                ds == ts,
                "{name} ({mode}): stage `{stage}` step {i} (`{}` / `{}`) differs:\nDockerfile:\n{}\nforge.toml:\n{}",
                ds.origin.text,
                ts.origin.text,
                json(ds),
                json(ts),
            );
        }
        assert!(
            d == t,
            "{name} ({mode}): stage `{stage}` differs outside its steps:\nDockerfile:\n{}\nforge.toml:\n{}",
            json(&(&d.base, &d.platform, &d.initial)),
            json(&(&t.base, &t.platform, &t.initial)),
        );
    }
    assert_eq!(dockerfile.stages, toml.stages, "{name} ({mode})");
    assert_eq!(dockerfile.targets, toml.targets, "{name} ({mode}): targets");
}

/// Base-image facts for every base the cases use.
fn resolver() -> FixedResolver {
    let image = |digest: &str, env: &[(&str, &str)], workdir: &str, onbuild: &[&str]| BaseImage {
        digest: format!("sha256:{digest:0>64}"),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        workdir: workdir.to_string(),
        user: String::new(),
        shell: Vec::new(),
        onbuild: onbuild.iter().map(|t| (*t).to_string()).collect(),
    };
    let busybox_env = [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/root"),
    ];
    let mut images = BTreeMap::new();
    // `busybox` itself carries an ONBUILD trigger: it runs first in stages built on it.
    images.insert(
        "busybox".to_string(),
        image("1", &busybox_env, "", &["RUN echo trigger-from-busybox"]),
    );
    images.insert(
        "busybox:1.36".to_string(),
        image("2", &busybox_env, "/", &[]),
    );
    images.insert(
        "busybox:1.37".to_string(),
        image(
            "3",
            &[("PATH", "/bin"), ("FLAVOR", "from-image")],
            "/root",
            &[],
        ),
    );
    images.insert(
        "alpine:3.20".to_string(),
        image(
            "4",
            &[("PATH", "/usr/bin:/bin"), ("PORT", "1")],
            "/home",
            &[],
        ),
    );
    FixedResolver { images }
}

/// Lowers a case unresolved, resolved, and resolved with build args.
fn check(name: &str) {
    let (d, t) = lower_both(name, &LowerOptions::unresolved());
    assert_same(name, "unresolved", &d, &t);

    let fixed = resolver();
    let opts = LowerOptions {
        build_args: BTreeMap::new(),
        resolver: &fixed,
        tags: Vec::new(),
    };
    let (d, t) = lower_both(name, &opts);
    assert_same(name, "resolved", &d, &t);

    let opts = LowerOptions {
        build_args: [
            ("VERSION", "1.37"),
            ("FLAVOR", "glibc"),
            ("PORT", "9090"),
            ("UNDECLARED", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        resolver: &fixed,
        tags: Vec::new(),
    };
    let (d, t) = lower_both(name, &opts);
    assert_same(name, "build args", &d, &t);
}

/// Every case directory, by name.
const CASES: &[&str] = &["metadata", "multistage", "onbuild", "scoping"];

#[test]
fn every_case_directory_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(case_dir(""))
        .expect("equivalence data dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, CASES);
}

#[test]
fn multistage_copy_from_between_images() {
    check("multistage");
}

#[test]
fn arg_and_env_scoping_across_stages() {
    check("scoping");
}

#[test]
fn onbuild_triggers_run_in_the_dependent_image() {
    check("onbuild");
}

#[test]
fn metadata_order_flags_and_quoting() {
    check("metadata");
}

/// The cases are not trivially equal: their IR does say what they are about.
#[test]
fn cases_exercise_what_they_claim() {
    use forge_frontend::ir::{Base, Op, SourceRef, StageId};

    let (_, t) = lower_both("multistage", &LowerOptions::unresolved());
    let Op::Copy(copy) = &t.stages[2].steps[0].op else {
        panic!("app starts with a COPY")
    };
    assert_eq!(copy.from, SourceRef::Stage(StageId(0)));

    let fixed = resolver();
    let opts = LowerOptions {
        build_args: BTreeMap::new(),
        resolver: &fixed,
        tags: Vec::new(),
    };
    let (_, t) = lower_both("scoping", &opts);
    assert!(matches!(&t.stages[0].base, Base::Image(i) if i.reference == "busybox:1.36"));
    assert_eq!(t.stages[1].base, Base::Stage(StageId(0)));

    let (_, t) = lower_both("onbuild", &opts);
    let app = &t.stages[1];
    // busybox's own trigger ran in `base`; base's three triggers run first in `app`.
    assert_eq!(
        t.stages[0].steps[0].origin.onbuild_from.as_deref(),
        Some("busybox")
    );
    assert_eq!(
        app.steps
            .iter()
            .filter(|s| s.origin.onbuild_from.as_deref() == Some("base"))
            .count(),
        3
    );
}

/// The example project lowers: images depend on each other, and the Dockerfile
/// image's `FROM ${BASE}` reaches the `base` image through its `args`.
#[test]
fn monorepo_example_lowers() {
    use forge_frontend::ir::{Base, StageId};

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/monorepo/forge.toml");
    let project = forge_toml::load(&path).unwrap_or_else(|e| panic!("{}", report(e)));
    let ir = lower_project(&project, &LowerOptions::unresolved())
        .unwrap_or_else(|e| panic!("{}", report(e)));
    let targets: Vec<&str> = ir.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(targets, ["base", "builder", "app", "web"]);
    let stage = |name: &str| {
        ir.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no stage {name}"))
    };
    assert_eq!(stage("base").base, Base::Scratch);
    assert_eq!(stage("app").base, Base::Stage(StageId(0)));
    assert_eq!(stage("web/serve").base, Base::Stage(StageId(0)));
    assert_eq!(ir.groups.get("ci").map(Vec::len), Some(2));
}
