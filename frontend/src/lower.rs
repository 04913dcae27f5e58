//! Lowering: from the syntax layer ([`crate::syntax`]) to the IR ([`crate::ir`]).
//!
//! This is where the Dockerfile's scoping rules live, once, for both frontends:
//!
//! - **Global ARGs** (before the first `FROM`) are visible only in `FROM` lines and
//!   as defaults for a stage's own `ARG NAME` without a value. The automatic platform
//!   ARGs (`TARGETPLATFORM`, `BUILDARCH`, ...) are global ARGs that exist undeclared.
//! - **Stage ARGs** are in scope from their declaration to the end of the stage; a
//!   `--build-arg` overrides the default of a *declared* ARG only.
//! - **ENV** accumulates along the stage, starting from the base image's `Env`
//!   (plus the default `PATH` when the base has none); ENV wins over an ARG of the
//!   same name when expanding.
//! - A stage built `FROM` another stage inherits that stage's final config (env, user,
//!   workdir, shell) and runs its `ONBUILD` triggers first, as BuildKit does.
//! - All words of one instruction expand against the state *before* it
//!   (`ENV a=1 b=$a` sees the old `a`).
//!
//! When a base image is unresolved (dry runs), a variable the stage did not set
//! itself may come from the base: its lookups answer "unknown", the field that used it
//! keeps its text as written, and the step lists the variable in
//! [`Step::deferred`](forge_ir::Step::deferred).

use std::collections::{BTreeMap, BTreeSet};

use miette::SourceSpan;

use crate::error::{FrontendError, Problem};
use crate::forge_toml::{ImageBuild, Project};
use crate::ir::{
    AddOp, Base, CacheSharing, CommandLine, CopyOp, Healthcheck, ImageRef, Ir, Mount, MountKind,
    NetworkMode, Op, Origin, RunOp, SourceRef, Stage, StageId, Step, StepContext, Target,
};
use crate::resolve::{BaseResolver, Unresolved};
use crate::shell::{Env, Lexer, Lookup};
use crate::syntax::{
    AddInstr, ArgDecl, BuildFile, CopyInstr, HealthcheckInstr, Instruction, InstructionKind,
    KeyValue, RunInstr, SourceFile, Spanned, StageSyntax,
};

/// The `PATH` a stage gets when its base image sets none (BuildKit's default for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell used for shell forms when no `SHELL` was given.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-c".to_string()]
}

/// What lowering needs besides the build file.
pub struct LowerOptions<'a> {
    /// `--build-arg NAME=VALUE` values.
    pub build_args: BTreeMap<String, String>,
    /// Where facts about base images come from.
    pub resolver: &'a dyn BaseResolver,
    /// Tags (`-t`) for the default target of a Dockerfile.
    pub tags: Vec<String>,
}

impl LowerOptions<'static> {
    /// No build args, no tags, and every base image unresolved.
    pub fn unresolved() -> Self {
        Self {
            build_args: BTreeMap::new(),
            resolver: &Unresolved,
            tags: Vec::new(),
        }
    }
}

impl std::fmt::Debug for LowerOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LowerOptions")
            .field("build_args", &self.build_args)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// The platform the build runs on and targets: the host's (cross builds are not supported).
pub fn host_platform() -> (&'static str, &'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let variant = match arch {
        "arm" => "v7",
        _ => "",
    };
    ("linux", arch, variant)
}

/// The host platform as `os/arch[/variant]`.
pub fn host_platform_string() -> String {
    let (os, arch, variant) = host_platform();
    if variant.is_empty() {
        format!("{os}/{arch}")
    } else {
        format!("{os}/{arch}/{variant}")
    }
}

/// The automatic platform ARGs BuildKit defines in the global scope.
fn platform_args() -> Vec<(String, String)> {
    let (os, arch, variant) = host_platform();
    let platform = host_platform_string();
    let mut out = Vec::new();
    for prefix in ["BUILD", "TARGET"] {
        out.push((format!("{prefix}PLATFORM"), platform.clone()));
        out.push((format!("{prefix}OS"), os.to_string()));
        out.push((format!("{prefix}ARCH"), arch.to_string()));
        out.push((format!("{prefix}VARIANT"), variant.to_string()));
    }
    out
}

/// Lowers one Dockerfile (already parsed) to IR.
///
/// # Errors
/// Every problem found (bad expansions, `--from` naming no earlier stage, a stage
/// referring to itself, invalid mounts, ports or signals), all at once.
pub fn lower_dockerfile(file: &BuildFile, opts: &LowerOptions<'_>) -> Result<Ir, FrontendError> {
    let unit = Unit {
        image: None,
        file,
        build_args: &opts.build_args,
        target: None,
    };
    let mut lowerer = Lowerer::new(opts.resolver, vec![unit], Vec::new());
    lowerer.run()?;
    let mut ir = lowerer.finish()?;
    if let Some(last) = ir.targets.last_mut() {
        last.tags.clone_from(&opts.tags);
    }
    Ok(ir)
}

/// Lowers a forge.toml project (every image, in one IR).
///
/// # Errors
/// Problems in any image, reported per file; a `from` cycle between images.
pub fn lower_project(project: &Project, opts: &LowerOptions<'_>) -> Result<Ir, FrontendError> {
    let mut units = Vec::new();
    for image in &project.images {
        let (file, args, target) = match &image.build {
            ImageBuild::Inline(file) => (file, &opts.build_args, None),
            ImageBuild::Dockerfile {
                file, args, target, ..
            } => (file, args, target.clone()),
        };
        units.push(Unit {
            image: Some(ImageMeta {
                name: image.name.value.clone(),
                span: image.name.span,
                tags: image.tags.clone(),
                inline: matches!(image.build, ImageBuild::Inline(_)),
                context: image.context.clone(),
            }),
            file,
            build_args: args,
            target,
        });
    }
    // Project-level build args apply to every image; per-image args win.
    let merged: Vec<BTreeMap<String, String>> = units
        .iter()
        .map(|u| {
            let mut m = opts.build_args.clone();
            m.extend(u.build_args.iter().map(|(k, v)| (k.clone(), v.clone())));
            m
        })
        .collect();
    let units = units
        .into_iter()
        .zip(merged.iter())
        .map(|(u, args)| Unit {
            build_args: args,
            ..u
        })
        .collect();
    let groups = project.groups.clone();
    let mut lowerer = Lowerer::new(opts.resolver, units, Vec::new());
    lowerer.groups = groups;
    lowerer.project_source = Some(project.source.clone());
    lowerer.run()?;
    lowerer.finish()
}

struct ImageMeta {
    name: String,
    span: SourceSpan,
    tags: Vec<String>,
    inline: bool,
    /// The image's build context.
    context: std::path::PathBuf,
}

/// One build file to lower: a Dockerfile, or one image of a project.
struct Unit<'f> {
    image: Option<ImageMeta>,
    file: &'f BuildFile,
    build_args: &'f BTreeMap<String, String>,
    target: Option<String>,
}

/// The image config as it stands after some steps: what the next stage inherits.
#[derive(Debug, Clone, Default)]
struct ConfigState {
    env: Vec<(String, String)>,
    /// Env keys whose value is not known (set from an unresolved base).
    unknown_env: BTreeSet<String>,
    /// True when the base is unresolved: any variable not set here may exist.
    open: bool,
    user: String,
    workdir: String,
    shell: Vec<String>,
    onbuild: Vec<String>,
    /// The build args in scope at the end of the stage: a stage built
    /// `FROM` it starts with them (BuildKit and buildah carry them over).
    args: BTreeMap<String, Option<String>>,
}

impl ConfigState {
    fn set_env(&mut self, key: String, value: String) {
        if let Some(slot) = self.env.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.env.push((key, value));
        }
    }
}

/// The variables in scope while expanding words of one stage.
struct Scope<'a> {
    config: &'a ConfigState,
    args: &'a BTreeMap<String, Option<String>>,
}

impl Env for Scope<'_> {
    fn lookup(&self, name: &str) -> Lookup {
        if let Some((_, v)) = self.config.env.iter().rev().find(|(k, _)| k == name) {
            if self.config.unknown_env.contains(name) {
                return Lookup::Unknown;
            }
            return Lookup::Set(v.clone());
        }
        if let Some(v) = self.args.get(name) {
            return match v {
                Some(v) => Lookup::Set(v.clone()),
                None => Lookup::Unset,
            };
        }
        if self.config.open {
            Lookup::Unknown
        } else {
            Lookup::Unset
        }
    }
}

/// A map of global ARGs as an [`Env`].
struct GlobalScope<'a>(&'a BTreeMap<String, Option<String>>);

impl Env for GlobalScope<'_> {
    fn lookup(&self, name: &str) -> Lookup {
        match self.0.get(name) {
            Some(Some(v)) => Lookup::Set(v.clone()),
            _ => Lookup::Unset,
        }
    }
}

/// Where a unit's stages sit in the IR.
struct UnitLayout {
    first: usize,
    count: usize,
    /// Lowercased stage name → IR stage index.
    names: BTreeMap<String, usize>,
    /// The stage that is the unit's result.
    target: usize,
}

struct Lowerer<'f, 'r> {
    resolver: &'r dyn BaseResolver,
    units: Vec<Unit<'f>>,
    layouts: Vec<UnitLayout>,
    /// Image name → its target stage index (projects).
    image_targets: BTreeMap<String, usize>,
    stages: Vec<Option<Stage>>,
    finals: Vec<Option<ConfigState>>,
    groups: BTreeMap<String, Vec<String>>,
    project_source: Option<SourceFile>,
    /// Problems per file name, with the file.
    problems: Vec<(SourceFile, Vec<Problem>)>,
    lexer_cache: BTreeMap<char, Lexer>,
    /// Line indexes by file name, so each step's origin costs a binary search.
    line_indexes: BTreeMap<String, crate::syntax::LineIndex>,
    /// Stages referenced as a base by a stage, for ordering.
    extra_targets: Vec<Target>,
}

impl<'f, 'r> Lowerer<'f, 'r> {
    fn new(resolver: &'r dyn BaseResolver, units: Vec<Unit<'f>>, extra: Vec<Target>) -> Self {
        Self {
            resolver,
            units,
            layouts: Vec::new(),
            image_targets: BTreeMap::new(),
            stages: Vec::new(),
            finals: Vec::new(),
            groups: BTreeMap::new(),
            project_source: None,
            problems: Vec::new(),
            lexer_cache: BTreeMap::new(),
            line_indexes: BTreeMap::new(),
            extra_targets: extra,
        }
    }

    fn report(&mut self, file: &SourceFile, problem: Problem) {
        if let Some((_, list)) = self.problems.iter_mut().find(|(f, _)| f.name == file.name) {
            list.push(problem);
        } else {
            self.problems.push((file.clone(), vec![problem]));
        }
    }

    fn line_col(&mut self, file: &SourceFile, offset: usize) -> (usize, usize) {
        self.line_indexes
            .entry(file.name.clone())
            .or_insert_with(|| crate::syntax::LineIndex::new(&file.text))
            .line_col(&file.text, offset)
    }

    fn lexer(&mut self, escape: char) -> &Lexer {
        self.lexer_cache
            .entry(escape)
            .or_insert_with(|| Lexer::new(escape))
    }

    /// Assigns stage indices, then lowers units in dependency order.
    fn run(&mut self) -> Result<(), FrontendError> {
        let mut next = 0;
        let mut found: Vec<(SourceFile, Problem)> = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            let count = unit.file.stages.len();
            let mut names = BTreeMap::new();
            let mut dup = Vec::new();
            for (i, stage) in unit.file.stages.iter().enumerate() {
                if let Some(name) = &stage.from.name {
                    let key = name.value.to_ascii_lowercase();
                    if names.insert(key.clone(), next + i).is_some() {
                        dup.push(
                            Problem::new(
                                "dockerfile::duplicate-stage",
                                format!("duplicate stage name `{}`", name.value),
                                name.span,
                            )
                            .label("already used by an earlier stage")
                            .help("give each stage its own name"),
                        );
                    }
                }
            }
            found.extend(dup.into_iter().map(|p| (unit.file.source.clone(), p)));
            let target = match &unit.target {
                Some(t) => match names.get(&t.to_ascii_lowercase()) {
                    Some(&i) => i,
                    None => {
                        let known: Vec<&str> = names.keys().map(String::as_str).collect();
                        let span = self.units[u]
                            .image
                            .as_ref()
                            .map_or(SourceSpan::from(0..0), |m| m.span);
                        let src = self.unit_report_source(u);
                        found.push((
                            src,
                            Problem::new(
                                "forge::unknown-target",
                                format!("target stage `{t}` could not be found"),
                                span,
                            )
                            .help(if known.is_empty() {
                                "the Dockerfile has no named stages".to_string()
                            } else {
                                format!("named stages: {}", known.join(", "))
                            }),
                        ));
                        next + count.saturating_sub(1)
                    }
                },
                None => next + count.saturating_sub(1),
            };
            if let Some(meta) = &unit.image {
                self.image_targets.insert(meta.name.clone(), target);
            }
            self.layouts.push(UnitLayout {
                first: next,
                count,
                names,
                target,
            });
            next += count;
        }
        for (file, problem) in found {
            self.report(&file, problem);
        }
        self.stages = vec![None; next];
        self.finals = vec![None; next];

        // Lower units so that an image used as a base by another is lowered first.
        let order = self.unit_order()?;
        for u in order {
            self.lower_unit(u);
        }
        Ok(())
    }

    fn unit_report_source(&self, u: usize) -> SourceFile {
        match (&self.project_source, &self.units[u].image) {
            (Some(src), Some(_)) => src.clone(),
            _ => self.units[u].file.source.clone(),
        }
    }

    /// Orders units by their `FROM <image of this project>` dependencies.
    fn unit_order(&mut self) -> Result<Vec<usize>, FrontendError> {
        let n = self.units.len();
        let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
        let unit_of_image: BTreeMap<String, usize> = self
            .units
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.image.as_ref().map(|m| (m.name.clone(), i)))
            .collect();
        for (i, unit) in self.units.iter().enumerate() {
            // `FROM ${BASE}` may name another image once expanded.
            let (globals, _) = self.unit_globals(i);
            let lexer = Lexer::new(unit.file.escape);
            for stage in &unit.file.stages {
                let base = lexer
                    .process_word(&stage.from.base.value, &GlobalScope(&globals))
                    .map_or_else(|_| stage.from.base.value.clone(), |e| e.value);
                if self.layouts[i]
                    .names
                    .contains_key(&base.to_ascii_lowercase())
                {
                    continue;
                }
                if let Some(&j) = unit_of_image.get(&base) {
                    if j != i {
                        deps[i].insert(j);
                    }
                }
            }
        }
        let mut order = Vec::new();
        let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        for start in 0..n {
            let mut stack: Vec<usize> = Vec::new();
            if let Err(cycle) = visit(start, &deps, &mut state, &mut stack, &mut order) {
                let names: Vec<String> = cycle
                    .iter()
                    .filter_map(|&u| self.units[u].image.as_ref().map(|m| m.name.clone()))
                    .collect();
                let span = self.units[cycle[0]]
                    .image
                    .as_ref()
                    .map_or(SourceSpan::from(0..0), |m| m.span);
                let src = self.unit_report_source(cycle[0]);
                return Err(FrontendError::invalid(
                    &src,
                    vec![Problem::new(
                        "forge::cycle",
                        format!("images depend on each other: {}", names.join(" -> ")),
                        span,
                    )
                    .label("this image is built from itself through `from`")
                    .help("an image's `from` must not lead back to it")],
                ));
            }
        }
        Ok(order)
    }

    /// The global scope of a unit: automatic platform ARGs, then the file's global
    /// ARGs (a `--build-arg` wins over a default), with the problems found.
    fn unit_globals(&self, u: usize) -> (BTreeMap<String, Option<String>>, Vec<Problem>) {
        let file = self.units[u].file;
        let build_args = self.units[u].build_args;
        let lexer = Lexer::new(file.escape);
        let mut problems = Vec::new();
        let mut globals: BTreeMap<String, Option<String>> = platform_args()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        for decls in &file.global_args {
            for decl in &decls.value {
                let name = decl.name.value.clone();
                let value = if let Some(v) = build_args.get(&name) {
                    Some(v.clone())
                } else if let Some(default) = &decl.default {
                    match lexer.process_word(&default.value, &GlobalScope(&globals)) {
                        Ok(e) => Some(e.value),
                        Err(e) => {
                            problems.push(expansion_problem(&e, default));
                            None
                        }
                    }
                } else {
                    None
                };
                globals.insert(name, value);
            }
        }
        (globals, problems)
    }

    fn lower_unit(&mut self, u: usize) {
        let file = self.units[u].file;
        let source = file.source.clone();
        let (globals, problems) = self.unit_globals(u);
        for p in problems {
            self.report(&source, p);
        }

        let first = self.layouts[u].first;
        for (i, stage) in file.stages.iter().enumerate() {
            let index = first + i;
            let lowered = self.lower_stage(u, index, stage, &globals);
            if let Some((stage, config)) = lowered {
                self.stages[index] = Some(stage);
                self.finals[index] = Some(config);
            }
        }
    }

    /// Resolves a stage name, an index or an image reference used by `--from`/`from=`.
    fn find_stage(&self, u: usize, name: &str) -> Option<usize> {
        let key = name.to_ascii_lowercase();
        if let Some(&i) = self.layouts[u].names.get(&key) {
            return Some(i);
        }
        if let Some(meta) = &self.units[u].image {
            // An inline image's single stage is named after the image.
            if meta.inline && meta.name == name {
                return Some(self.layouts[u].first);
            }
        }
        self.image_targets.get(name).copied()
    }

    #[allow(clippy::too_many_lines)]
    fn lower_stage(
        &mut self,
        u: usize,
        index: usize,
        stage: &StageSyntax,
        globals: &BTreeMap<String, Option<String>>,
    ) -> Option<(Stage, ConfigState)> {
        let file = self.units[u].file;
        let source = file.source.clone();
        let escape = file.escape;
        let layout_first = self.layouts[u].first;
        let from = &stage.from;

        // FROM expands against global args only.
        let base_text = match self
            .lexer(escape)
            .process_word(&from.base.value, &GlobalScope(globals))
        {
            Ok(e) => e.value,
            Err(e) => {
                let p = expansion_problem(&e, &from.base);
                self.report(&source, p);
                return None;
            }
        };
        if base_text.is_empty() {
            self.report(
                &source,
                Problem::new(
                    "dockerfile::empty-base",
                    format!("base name ({}) should not be blank", from.base.value),
                    from.base.span,
                )
                .help("set the ARG it uses, e.g. `--build-arg NAME=image:tag`"),
            );
            return None;
        }
        let platform = match &from.platform {
            Some(p) => match self
                .lexer(escape)
                .process_word(&p.value, &GlobalScope(globals))
            {
                Ok(e) => Some(e.value),
                Err(e) => {
                    let pr = expansion_problem(&e, p);
                    self.report(&source, pr);
                    None
                }
            },
            // The host's, so keys differ between architectures.
            None => Some(host_platform_string()),
        };

        // What is the base: scratch, an earlier stage, another image of the project, or an image.
        let own_name = from.name.as_ref().map(|n| n.value.to_ascii_lowercase());
        let key = base_text.to_ascii_lowercase();
        let stage_base = self.layouts[u]
            .names
            .get(&key)
            .copied()
            .filter(|&j| j < index);
        let image_base = if stage_base.is_none() && own_name.as_deref() != Some(key.as_str()) {
            self.image_targets
                .get(&base_text)
                .copied()
                .filter(|&j| j < layout_first || j >= layout_first + self.layouts[u].count)
        } else {
            None
        };
        let mut config = ConfigState {
            workdir: "/".to_string(),
            shell: default_shell(),
            ..ConfigState::default()
        };
        let mut triggers: Vec<(String, String)> = Vec::new();
        let base = if let Some(j) = stage_base.or(image_base) {
            match &self.finals[j] {
                Some(parent) => {
                    config = parent.clone();
                    let from_name = self.stages[j]
                        .as_ref()
                        .and_then(|s| s.name.clone())
                        .unwrap_or_else(|| j.to_string());
                    triggers = std::mem::take(&mut config.onbuild)
                        .into_iter()
                        .map(|t| (t, from_name.clone()))
                        .collect();
                }
                None => {
                    // The parent failed to lower; its problems are already reported.
                    return None;
                }
            }
            Base::Stage(StageId(j))
        } else if key == "scratch" {
            config
                .env
                .push(("PATH".to_string(), DEFAULT_PATH.to_string()));
            Base::Scratch
        } else {
            let resolved = match self.resolver.resolve(&base_text, platform.as_deref()) {
                Ok(r) => r,
                Err(message) => {
                    self.report(
                        &source,
                        Problem::new(
                            "forge::resolve",
                            format!("cannot resolve base image `{base_text}`: {message}"),
                            from.base.span,
                        ),
                    );
                    None
                }
            };
            match resolved {
                Some(img) => {
                    config.env.clone_from(&img.env);
                    if !config.env.iter().any(|(k, _)| k == "PATH") {
                        config
                            .env
                            .push(("PATH".to_string(), DEFAULT_PATH.to_string()));
                    }
                    if !img.workdir.is_empty() {
                        config.workdir.clone_from(&img.workdir);
                    }
                    config.user.clone_from(&img.user);
                    if !img.shell.is_empty() {
                        config.shell.clone_from(&img.shell);
                    }
                    triggers = img
                        .onbuild
                        .iter()
                        .map(|t| (t.clone(), base_text.clone()))
                        .collect();
                    Base::Image(ImageRef {
                        reference: base_text.clone(),
                        digest: Some(img.digest),
                    })
                }
                None => {
                    config.open = true;
                    Base::Image(ImageRef {
                        reference: base_text.clone(),
                        digest: None,
                    })
                }
            }
        };

        // A stage built on another stage (or on another image of a
        // project, which is one) starts with its build args, as BuildKit and
        // buildah carry them over; on an image, with none.
        let inherited = std::mem::take(&mut config.args);
        let mut args: BTreeMap<String, Option<String>> = if stage_base.or(image_base).is_some() {
            inherited
        } else {
            BTreeMap::new()
        };
        let initial = context(&config, &args);
        let mut steps = Vec::new();

        // ONBUILD triggers of the base run first.
        for (trigger, from_name) in triggers {
            let synthetic = SourceFile::new(
                format!("ONBUILD trigger of {from_name}"),
                format!("FROM scratch\n{trigger}\n"),
            );
            match crate::dockerfile::parse(&synthetic) {
                Ok(parsed) => {
                    let Some(first) = parsed.stages.first() else {
                        continue;
                    };
                    for instr in &first.instructions {
                        if let Some(mut step) =
                            self.lower_instruction(u, index, &parsed, instr, &mut config, &mut args)
                        {
                            step.origin.onbuild_from = Some(from_name.clone());
                            steps.push(step);
                        }
                    }
                }
                Err(e) => {
                    self.report(
                        &source,
                        Problem::new(
                            "dockerfile::bad-onbuild",
                            format!("invalid ONBUILD trigger from `{from_name}`: {trigger}"),
                            from.base.span,
                        )
                        .help(e.to_string()),
                    );
                }
            }
        }

        for instr in &stage.instructions {
            if let Some(step) =
                self.lower_instruction(u, index, file, instr, &mut config, &mut args)
            {
                steps.push(step);
            }
        }

        let name = match (&from.name, &self.units[u].image) {
            (Some(n), Some(meta)) if !meta.inline => {
                Some(format!("{}/{}", meta.name, n.value.to_ascii_lowercase()))
            }
            (_, Some(meta)) if meta.inline => Some(meta.name.clone()),
            (Some(n), _) => Some(n.value.to_ascii_lowercase()),
            (None, _) => None,
        };
        let (line, column) = self.line_col(&source, from.span.offset());
        let stage = Stage {
            id: StageId(index),
            name,
            base,
            platform,
            initial,
            steps,
            origin: Origin {
                file: source.name.clone(),
                line,
                column,
                text: from.original.clone(),
                onbuild_from: None,
            },
            context: self.units[u].image.as_ref().map(|m| m.context.clone()),
        };
        config.args = args;
        Some((stage, config))
    }

    /// Expands one word in the stage scope; `None` after reporting a problem.
    /// Returns the text to use (the original text when it depends on unknown variables).
    fn expand(
        &mut self,
        file: &BuildFile,
        word: &Spanned<String>,
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<String> {
        let scope = Scope { config, args };
        match self.lexer(file.escape).process_word(&word.value, &scope) {
            Ok(e) if e.unknown.is_empty() => Some(e.value),
            Ok(e) => {
                deferred.extend(e.unknown);
                Some(word.value.clone())
            }
            Err(e) => {
                let p = expansion_problem(&e, word);
                self.report(&file.source, p);
                None
            }
        }
    }

    fn expand_all(
        &mut self,
        file: &BuildFile,
        words: &[Spanned<String>],
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(words.len());
        let mut ok = true;
        for w in words {
            match self.expand(file, w, config, args, deferred) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn expand_opt(
        &mut self,
        file: &BuildFile,
        word: Option<&Spanned<String>>,
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<Option<String>> {
        match word {
            None => Some(None),
            Some(w) => self.expand(file, w, config, args, deferred).map(Some),
        }
    }

    /// Lowers one instruction, updating the stage's config and args.
    #[allow(clippy::too_many_lines)]
    fn lower_instruction(
        &mut self,
        u: usize,
        index: usize,
        file: &BuildFile,
        instr: &Instruction,
        config: &mut ConfigState,
        args: &mut BTreeMap<String, Option<String>>,
    ) -> Option<Step> {
        let ctx = context(config, args);
        let mut deferred = BTreeSet::new();
        let source = file.source.clone();
        let op = match &instr.kind {
            InstructionKind::Run(run) => {
                Op::Run(self.lower_run(u, index, file, run, config, args, &mut deferred)?)
            }
            InstructionKind::Cmd(c) => Op::Cmd(c.clone()),
            InstructionKind::Entrypoint(c) => Op::Entrypoint(c.clone()),
            InstructionKind::Copy(copy) => {
                Op::Copy(self.lower_copy(u, index, file, copy, config, args, &mut deferred)?)
            }
            InstructionKind::Add(add) => {
                Op::Add(self.lower_add(file, add, config, args, &mut deferred)?)
            }
            InstructionKind::Env(pairs) => {
                // Each pair on its own: only a value that used an unknown variable is unknown.
                let mut lowered = Vec::with_capacity(pairs.len());
                let mut unknown = Vec::with_capacity(pairs.len());
                for pair in pairs {
                    let mut own = BTreeSet::new();
                    let kv =
                        self.lower_pairs(file, std::slice::from_ref(pair), config, args, &mut own)?;
                    unknown.push(!own.is_empty());
                    deferred.extend(own);
                    lowered.extend(kv);
                }
                for ((k, v), unknown) in lowered.iter().zip(unknown) {
                    config.set_env(k.clone(), v.clone());
                    if unknown {
                        config.unknown_env.insert(k.clone());
                    } else {
                        config.unknown_env.remove(k);
                    }
                }
                Op::Env(lowered)
            }
            InstructionKind::Label(pairs) => {
                Op::Label(self.lower_pairs(file, pairs, config, args, &mut deferred)?)
            }
            InstructionKind::Arg(decls) => {
                let lowered = self.lower_args(u, file, decls, config, args, &mut deferred);
                for (k, v) in &lowered {
                    args.insert(k.clone(), v.clone());
                }
                Op::Arg(lowered)
            }
            InstructionKind::Expose(ports) => {
                let words = self.expand_all(file, ports, config, args, &mut deferred)?;
                let mut out = Vec::new();
                for (word, spanned) in words.iter().zip(ports) {
                    if !deferred.is_empty() {
                        out.push(word.clone());
                        continue;
                    }
                    match expose_ports(word) {
                        Ok(ports) => out.extend(ports),
                        Err(msg) => {
                            self.report(
                                &source,
                                Problem::new("dockerfile::bad-port", msg, spanned.span)
                                    .help("write a port number or range, optionally with /tcp, /udp or /sctp"),
                            );
                            return None;
                        }
                    }
                }
                Op::Expose(out)
            }
            InstructionKind::Volume(vols) => {
                let words = self.expand_all(file, vols, config, args, &mut deferred)?;
                for (w, s) in words.iter().zip(vols) {
                    if w.trim().is_empty() {
                        self.report(
                            &source,
                            Problem::new(
                                "dockerfile::empty-volume",
                                "VOLUME specified can not be an empty string",
                                s.span,
                            ),
                        );
                        return None;
                    }
                }
                Op::Volume(words)
            }
            InstructionKind::User(user) => {
                let user = self.expand(file, user, config, args, &mut deferred)?;
                config.user.clone_from(&user);
                Op::User(user)
            }
            InstructionKind::Workdir(dir) => {
                let dir_text = self.expand(file, dir, config, args, &mut deferred)?;
                // A deferred value stays as written: joining `$HOME/x` onto the
                // current directory would invent a path.
                // BuildKit's rule: a relative WORKDIR is joined to the current
                // one and cleaned; an absolute one is kept as written (`.` and
                // `..` included: the directories it names on the way are made).
                let path = if !deferred.is_empty() || dir_text.starts_with('/') {
                    dir_text
                } else {
                    join_path(&config.workdir, &dir_text)
                };
                config.workdir.clone_from(&path);
                Op::Workdir(path)
            }
            InstructionKind::StopSignal(sig) => {
                let sig_text = self.expand(file, sig, config, args, &mut deferred)?;
                if deferred.is_empty() && !valid_signal(&sig_text) {
                    self.report(
                        &source,
                        Problem::new(
                            "dockerfile::bad-signal",
                            format!("invalid signal: {sig_text}"),
                            sig.span,
                        )
                        .help("use a name such as SIGTERM or SIGINT, or a number"),
                    );
                    return None;
                }
                Op::StopSignal(sig_text)
            }
            InstructionKind::Healthcheck(h) => Op::Healthcheck(lower_healthcheck(h)),
            InstructionKind::Shell(shell) => {
                config.shell.clone_from(shell);
                Op::Shell(shell.clone())
            }
            InstructionKind::Maintainer(m) => Op::Maintainer(m.clone()),
            InstructionKind::Onbuild { trigger, .. } => {
                config.onbuild.push(trigger.clone());
                Op::Onbuild(trigger.clone())
            }
        };
        let (line, column) = self.line_col(&source, instr.span.offset());
        Some(Step {
            op,
            ctx,
            deferred,
            origin: Origin {
                file: source.name.clone(),
                line,
                column,
                text: instr.original.clone(),
                onbuild_from: None,
            },
        })
    }

    fn lower_pairs(
        &mut self,
        file: &BuildFile,
        pairs: &[KeyValue],
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(pairs.len());
        let mut ok = true;
        for kv in pairs {
            let k = self.expand(file, &kv.key, config, args, deferred);
            let v = self.expand(file, &kv.value, config, args, deferred);
            match (k, v) {
                (Some(k), Some(v)) => out.push((k, v)),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn lower_args(
        &mut self,
        u: usize,
        file: &BuildFile,
        decls: &[ArgDecl],
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Vec<(String, Option<String>)> {
        let build_args = self.units[u].build_args;
        let mut out = Vec::with_capacity(decls.len());
        for decl in decls {
            let name = decl.name.value.clone();
            // A bare `ARG NAME` with no global of that name keeps the value
            // it already has (from an earlier ARG, or the base stage's).
            let value = if let Some(v) = build_args.get(&name) {
                Some(v.clone())
            } else if let Some(default) = &decl.default {
                self.expand(file, default, config, args, deferred)
            } else {
                self.global_value(u, &name)
                    .or_else(|| args.get(&name).cloned().flatten())
            };
            out.push((name, value));
        }
        out
    }

    /// The value of a global ARG (or automatic platform ARG) for a stage's bare `ARG NAME`.
    fn global_value(&self, u: usize, name: &str) -> Option<String> {
        self.unit_globals(u).0.get(name).cloned().flatten()
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_run(
        &mut self,
        u: usize,
        index: usize,
        file: &BuildFile,
        run: &RunInstr,
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<RunOp> {
        let source = file.source.clone();
        let mut mounts = Vec::new();
        let mut ok = true;
        for spec in &run.mounts {
            let text = self.expand(file, spec, config, args, deferred)?;
            match parse_mount(&text) {
                Ok(raw) => match self.resolve_mount(u, index, raw) {
                    Ok(m) => mounts.push(m),
                    Err(msg) => {
                        ok = false;
                        self.report(
                            &source,
                            Problem::new("dockerfile::bad-mount", msg, spec.span),
                        );
                    }
                },
                Err(p) => {
                    ok = false;
                    self.report(
                        &source,
                        Problem::new("dockerfile::bad-mount", p.message, spec.span).help(
                            p.help.unwrap_or_else(|| {
                                "e.g. --mount=type=cache,target=/root/.cache".to_string()
                            }),
                        ),
                    );
                }
            }
        }
        let network = match run.network.as_ref().map(|n| n.value.as_str()) {
            None | Some("default") => NetworkMode::Default,
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            Some(other) => {
                if let Some(n) = &run.network {
                    self.report(
                        &source,
                        Problem::new(
                            "dockerfile::bad-network",
                            format!("unsupported network mode {other:?}"),
                            n.span,
                        )
                        .help("use one of: default, none, host"),
                    );
                }
                return None;
            }
        };
        let insecure = match run.security.as_ref().map(|s| s.value.as_str()) {
            None | Some("sandbox") => false,
            Some("insecure") => true,
            Some(other) => {
                if let Some(s) = &run.security {
                    self.report(
                        &source,
                        Problem::new(
                            "dockerfile::bad-security",
                            format!("unsupported security mode {other:?}"),
                            s.span,
                        )
                        .help("use one of: sandbox, insecure"),
                    );
                }
                return None;
            }
        };
        ok.then(|| RunOp {
            command: run.command.clone(),
            mounts,
            network,
            insecure,
            // The shell expands a RUN heredoc itself, at run time.
            heredocs: run.heredocs.clone(),
        })
    }

    fn resolve_mount(&self, u: usize, index: usize, raw: RawMount) -> Result<Mount, String> {
        let from = match (&raw.from, raw.kind) {
            (Some(name), _) => Some(match self.find_stage(u, name) {
                Some(j) if j == index => {
                    return Err(format!("stage `{name}` cannot mount from itself"))
                }
                Some(j) => SourceRef::Stage(StageId(j)),
                None => match name.parse::<usize>() {
                    Ok(n) if n < self.layouts[u].count => {
                        let j = self.layouts[u].first + n;
                        if j >= index {
                            return Err(format!("--mount from={n} names no earlier stage"));
                        }
                        SourceRef::Stage(StageId(j))
                    }
                    _ => SourceRef::Image(name.clone()),
                },
            }),
            (None, MountKind::Bind) => Some(SourceRef::Context),
            (None, _) => None,
        };
        let target = match (raw.target, raw.kind) {
            (Some(t), _) => t,
            (None, MountKind::Secret) => {
                let id = raw
                    .id
                    .clone()
                    .or_else(|| raw.source.as_deref().map(base_name))
                    .unwrap_or_default();
                format!("/run/secrets/{id}")
            }
            (None, MountKind::Ssh) => "/run/buildkit/ssh_agent.0".to_string(),
            (None, _) => return Err("mount target must be specified".to_string()),
        };
        let id = match raw.kind {
            MountKind::Cache => Some(raw.id.unwrap_or_else(|| target.clone())),
            MountKind::Ssh => Some(raw.id.unwrap_or_else(|| "default".to_string())),
            MountKind::Secret => Some(
                raw.id
                    .or_else(|| raw.source.as_deref().map(base_name))
                    .unwrap_or_else(|| base_name(&target)),
            ),
            _ => raw.id,
        };
        Ok(Mount {
            kind: raw.kind,
            target,
            source: raw.source,
            from,
            id,
            readonly: raw.readonly,
            sharing: raw.sharing,
            mode: raw.mode,
            uid: raw.uid,
            gid: raw.gid,
            required: raw.required,
            size: raw.size,
            env: raw.env,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_copy(
        &mut self,
        u: usize,
        index: usize,
        file: &BuildFile,
        copy: &CopyInstr,
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<CopyOp> {
        let source = file.source.clone();
        let from = match &copy.from {
            None => SourceRef::Context,
            Some(f) => {
                let name = f.value.as_str();
                if name.contains('$') {
                    self.report(
                        &source,
                        Problem::new(
                            "dockerfile::from-expansion",
                            "variable expansion is not supported for --from",
                            f.span,
                        )
                        .help("define a stage with `FROM ${VAR} AS name` using a global ARG, and copy from that name"),
                    );
                    return None;
                }
                if let Ok(n) = name.parse::<usize>() {
                    let layout = &self.layouts[u];
                    if n >= index - layout.first {
                        self.report(
                            &source,
                            Problem::new(
                                "dockerfile::from-index",
                                format!("--from={n} names no earlier stage"),
                                f.span,
                            )
                            .label("this stage index")
                            .help(format!(
                                "stage indexes start at 0; this is stage {}, so --from can be 0..{}",
                                index - layout.first,
                                (index - layout.first).saturating_sub(1)
                            )),
                        );
                        return None;
                    }
                    SourceRef::Stage(StageId(layout.first + n))
                } else {
                    match self.find_stage(u, name) {
                        Some(j) if j == index => {
                            self.report(
                                &source,
                                Problem::new(
                                    "dockerfile::self-reference",
                                    format!("stage `{name}` refers to itself"),
                                    f.span,
                                )
                                .label("this is the stage being built")
                                .help("copy from an earlier stage, or from the build context without --from"),
                            );
                            return None;
                        }
                        Some(j) => SourceRef::Stage(StageId(j)),
                        None => SourceRef::Image(name.to_string()),
                    }
                }
            }
        };
        let sources =
            self.expand_sources(file, &copy.sources, &copy.heredocs, config, args, deferred)?;
        let dest = self.expand(file, &copy.dest, config, args, deferred)?;
        let chown = self.expand_opt(file, copy.chown.as_ref(), config, args, deferred)?;
        let chmod = self.expand_opt(file, copy.chmod.as_ref(), config, args, deferred)?;
        let exclude = self.expand_all(file, &copy.exclude, config, args, deferred)?;
        if let (Some(mode), Some(span)) = (&chmod, copy.chmod.as_ref().map(|c| c.span)) {
            if deferred.is_empty() && !valid_chmod(mode) {
                self.report(
                    &source,
                    Problem::new(
                        "dockerfile::bad-chmod",
                        format!("invalid chmod parameter: {mode}"),
                        span,
                    )
                    .help("use an octal mode such as 0644 or 755"),
                );
                return None;
            }
        }
        let heredocs = self.expand_heredocs(file, &copy.heredocs, config, args, deferred);
        Some(CopyOp {
            sources,
            dest: dest_path(&config.workdir, &dest),
            from,
            chown,
            chmod,
            link: copy.link,
            parents: copy.parents,
            exclude,
            heredocs,
        })
    }

    fn lower_add(
        &mut self,
        file: &BuildFile,
        add: &AddInstr,
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<AddOp> {
        let sources =
            self.expand_sources(file, &add.sources, &add.heredocs, config, args, deferred)?;
        let dest = self.expand(file, &add.dest, config, args, deferred)?;
        let chown = self.expand_opt(file, add.chown.as_ref(), config, args, deferred)?;
        let chmod = self.expand_opt(file, add.chmod.as_ref(), config, args, deferred)?;
        let checksum = self.expand_opt(file, add.checksum.as_ref(), config, args, deferred)?;
        let exclude = self.expand_all(file, &add.exclude, config, args, deferred)?;
        if let (Some(sum), Some(span)) = (&checksum, add.checksum.as_ref().map(|c| c.span)) {
            if deferred.is_empty() && !valid_checksum(sum) {
                self.report(
                    &file.source,
                    Problem::new(
                        "dockerfile::bad-checksum",
                        format!("invalid checksum digest format: {sum}"),
                        span,
                    )
                    .help("write it as sha256:<64 hex digits>"),
                );
                return None;
            }
        }
        let heredocs = self.expand_heredocs(file, &add.heredocs, config, args, deferred);
        Some(AddOp {
            sources,
            dest: dest_path(&config.workdir, &dest),
            chown,
            chmod,
            link: add.link,
            keep_git_dir: add.keep_git_dir,
            checksum,
            unpack: add.unpack,
            exclude,
            heredocs,
        })
    }

    /// COPY/ADD sources: paths are expanded; a `<<NAME` naming one of the
    /// instruction's heredocs is a marker for inline content and stays as it is.
    fn expand_sources(
        &mut self,
        file: &BuildFile,
        sources: &[Spanned<String>],
        heredocs: &[crate::ir::Heredoc],
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(sources.len());
        let mut ok = true;
        for source in sources {
            let is_heredoc = source
                .value
                .strip_prefix("<<")
                .map(|rest| rest.trim_start_matches('-').trim_matches(['"', '\'']))
                .is_some_and(|name| heredocs.iter().any(|h| h.name == name));
            if is_heredoc {
                out.push(source.value.clone());
                continue;
            }
            match self.expand(file, source, config, args, deferred) {
                Some(v) => out.push(v),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// A COPY/ADD heredoc's body is expanded (unless its delimiter was quoted),
    /// quotes kept: it is file content, not shell words.
    fn expand_heredocs(
        &mut self,
        file: &BuildFile,
        docs: &[crate::ir::Heredoc],
        config: &ConfigState,
        args: &BTreeMap<String, Option<String>>,
        deferred: &mut BTreeSet<String>,
    ) -> Vec<crate::ir::Heredoc> {
        let scope = Scope { config, args };
        let lexer = Lexer::new(file.escape).skip_quotes(true);
        docs.iter()
            .map(|d| {
                let mut d = d.clone();
                if d.expand {
                    if let Ok(e) = lexer.process_word(&d.content, &scope) {
                        if e.unknown.is_empty() {
                            d.content = e.value;
                        } else {
                            deferred.extend(e.unknown);
                        }
                    }
                }
                d
            })
            .collect()
    }

    fn finish(mut self) -> Result<Ir, FrontendError> {
        if let Some((file, problems)) = self.problems.drain(..).next() {
            return Err(FrontendError::invalid(&file, problems));
        }
        let mut stages = Vec::with_capacity(self.stages.len());
        for (i, s) in self.stages.into_iter().enumerate() {
            match s {
                Some(s) => stages.push(s),
                None => {
                    return Err(FrontendError::Resolve {
                        reference: format!("stage {i}"),
                        message: "internal error: a stage was not lowered".to_string(),
                    })
                }
            }
        }
        let mut targets = Vec::new();
        for (u, unit) in self.units.iter().enumerate() {
            let layout = &self.layouts[u];
            match &unit.image {
                Some(meta) => targets.push(Target {
                    name: meta.name.clone(),
                    stage: StageId(layout.target),
                    tags: meta.tags.clone(),
                }),
                None => {
                    for (name, &i) in &layout.names {
                        targets.push(Target {
                            name: name.clone(),
                            stage: StageId(i),
                            tags: Vec::new(),
                        });
                    }
                    targets.sort_by_key(|t| t.stage);
                    let last = layout.first + layout.count.saturating_sub(1);
                    if layout.count > 0 && !layout.names.values().any(|&i| i == last) {
                        targets.push(Target {
                            name: "default".to_string(),
                            stage: StageId(last),
                            tags: Vec::new(),
                        });
                    }
                }
            }
        }
        targets.extend(self.extra_targets);
        Ok(Ir {
            stages,
            targets,
            groups: self.groups,
        })
    }
}

/// Depth-first visit for unit ordering; `Err` carries a cycle.
fn visit(
    n: usize,
    deps: &[BTreeSet<usize>],
    state: &mut [u8],
    stack: &mut Vec<usize>,
    order: &mut Vec<usize>,
) -> Result<(), Vec<usize>> {
    match state[n] {
        2 => return Ok(()),
        1 => {
            let start = stack.iter().position(|&x| x == n).unwrap_or(0);
            let mut cycle: Vec<usize> = stack[start..].to_vec();
            cycle.push(n);
            return Err(cycle);
        }
        _ => {}
    }
    state[n] = 1;
    stack.push(n);
    for &d in &deps[n] {
        visit(d, deps, state, stack, order)?;
    }
    stack.pop();
    state[n] = 2;
    order.push(n);
    Ok(())
}

fn context(config: &ConfigState, args: &BTreeMap<String, Option<String>>) -> StepContext {
    StepContext {
        env: config.env.clone(),
        args: args.clone(),
        user: config.user.clone(),
        workdir: config.workdir.clone(),
        shell: config.shell.clone(),
        deferred: config.unknown_env.clone(),
    }
}

fn expansion_problem(e: &crate::shell::ShellError, word: &Spanned<String>) -> Problem {
    let offset = word.span.offset() + e.offset.min(word.span.len());
    Problem::new(
        "dockerfile::expansion",
        format!("failed to process \"{}\": {}", word.value, e.message),
        SourceSpan::from(offset..offset + 1),
    )
    .label("in this expansion")
}

fn lower_healthcheck(h: &HealthcheckInstr) -> Healthcheck {
    match h {
        HealthcheckInstr::None => Healthcheck {
            test: vec!["NONE".to_string()],
            interval_ns: 0,
            timeout_ns: 0,
            start_period_ns: 0,
            start_interval_ns: 0,
            retries: 0,
        },
        HealthcheckInstr::Check {
            test,
            interval_ns,
            timeout_ns,
            start_period_ns,
            start_interval_ns,
            retries,
        } => Healthcheck {
            test: match test {
                CommandLine::Exec(argv) => {
                    let mut v = vec!["CMD".to_string()];
                    v.extend(argv.iter().cloned());
                    v
                }
                CommandLine::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            },
            interval_ns: interval_ns.unwrap_or(0),
            timeout_ns: timeout_ns.unwrap_or(0),
            start_period_ns: start_period_ns.unwrap_or(0),
            start_interval_ns: start_interval_ns.unwrap_or(0),
            retries: retries.unwrap_or(0),
        },
    }
}

/// Joins a WORKDIR argument onto the current one and cleans the result (`/a/./b/../c` → `/a/c`).
pub fn join_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    clean_path(&joined)
}

/// Lexically cleans an absolute path, like Go's `path.Clean`.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A COPY/ADD destination made absolute against the workdir, keeping a trailing
/// slash (which means "into this directory").
fn dest_path(workdir: &str, dest: &str) -> String {
    let dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
    let mut p = join_path(workdir, dest);
    if dir && !p.ends_with('/') {
        p.push('/');
    }
    p
}

fn base_name(path: &str) -> String {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Expands an EXPOSE word (`80`, `80/udp`, `8000-8002/tcp`) to `port/proto` entries.
fn expose_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |s: &str| -> Result<u16, String> {
        s.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {s}"))
    };
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if end < start {
        return Err(format!("invalid range specified for port: {ports}"));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn valid_signal(sig: &str) -> bool {
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
        "XFSZ",
    ];
    if let Ok(n) = sig.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let upper = sig.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return true;
    }
    // SIGRTMIN+n / SIGRTMAX-n
    name.strip_prefix("RTMIN")
        .or_else(|| name.strip_prefix("RTMAX"))
        .is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix(['+', '-'])
                    .is_some_and(|n| n.parse::<u8>().is_ok())
        })
}

fn valid_chmod(mode: &str) -> bool {
    // Octal modes; BuildKit also accepts symbolic modes (u+x) with `--link`-era
    // frontends, so allow those too.
    (!mode.is_empty() && mode.len() <= 4 && mode.chars().all(|c| ('0'..='7').contains(&c)))
        || (!mode.is_empty()
            && mode
                .split(',')
                .all(|part| part.chars().all(|c| "ugoa+-=rwxXst".contains(c)) && !part.is_empty()))
}

fn valid_checksum(sum: &str) -> bool {
    match sum.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        Some(("sha384", hex)) => hex.len() == 96 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        Some(("sha512", hex)) => hex.len() == 128 && hex.chars().all(|c| c.is_ascii_hexdigit()),
        _ => false,
    }
}

/// A `--mount` parsed from its expanded text, before `from` is resolved.
struct RawMount {
    kind: MountKind,
    target: Option<String>,
    source: Option<String>,
    from: Option<String>,
    id: Option<String>,
    readonly: bool,
    sharing: CacheSharing,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    required: bool,
    size: Option<u64>,
    env: Option<String>,
}

struct MountError {
    message: String,
    help: Option<String>,
}

impl From<String> for MountError {
    fn from(message: String) -> Self {
        Self {
            message,
            help: None,
        }
    }
}

/// Splits a CSV line the way Go's encoding/csv reads one record: commas separate,
/// a field wholly in double quotes may contain commas, `""` is a quote.
fn csv_fields(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("extraneous or missing \" in quoted-field".to_string()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("extraneous or missing \" in quoted-field".to_string()),
            }
        } else {
            loop {
                match chars.next() {
                    Some(',') => break,
                    Some(c) => field.push(c),
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                }
            }
            fields.push(field);
        }
    }
}

const MOUNT_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid value for {key}: {value}")),
    }
}

/// Parses a `--mount` value (already expanded) with BuildKit's rules.
#[allow(clippy::too_many_lines)]
fn parse_mount(text: &str) -> Result<RawMount, MountError> {
    let fields = csv_fields(text).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    let mut m = RawMount {
        kind: MountKind::Bind,
        target: None,
        source: None,
        from: None,
        id: None,
        readonly: false,
        sharing: CacheSharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    };
    let mut ro_auto = true;
    let mut sharing_set = false;
    let kind_name = |k: MountKind| match k {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    };
    for field in fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind, MountKind::Secret | MountKind::Ssh) => {
                    m.required = true;
                }
                "required" => {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    )
                    .into())
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair").into()),
            }
            continue;
        };
        match key.as_str() {
            "type" => {
                m.kind = match value.to_ascii_lowercase().as_str() {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" => MountKind::Secret,
                    "ssh" => MountKind::Ssh,
                    _ => {
                        return Err(MountError {
                            message: format!("unsupported mount type {value:?}"),
                            help: Some("mount types: bind, cache, tmpfs, secret, ssh".to_string()),
                        })
                    }
                }
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "readonly" | "ro" => {
                m.readonly = parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&key, &value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.kind, MountKind::Secret | MountKind::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    )
                    .into());
                }
                m.required = parse_bool(&key, &value)?;
            }
            "size" => {
                if m.kind != MountKind::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(m.kind)
                    )
                    .into());
                }
                m.size = Some(
                    parse_ram_size(&value)
                        .ok_or_else(|| format!("invalid value for {key}: {value}"))?,
                );
            }
            "id" => m.id = Some(value),
            "sharing" => {
                sharing_set = true;
                m.sharing = match value.to_ascii_lowercase().as_str() {
                    "shared" => CacheSharing::Shared,
                    "private" => CacheSharing::Private,
                    "locked" => CacheSharing::Locked,
                    _ => {
                        return Err(MountError {
                            message: format!("unsupported sharing value {value:?}"),
                            help: Some("sharing modes: shared, private, locked".to_string()),
                        })
                    }
                }
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&value, 8)
                        .map_err(|_| format!("invalid value {value} for mode"))?,
                );
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for uid"))?,
                );
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for gid"))?,
                );
            }
            "env" => m.env = Some(value),
            _ => {
                let suggestion = crate::suggest(&key, MOUNT_KEYS);
                return Err(MountError {
                    message: format!("unexpected key '{key}' in '{field}'"),
                    help: Some(match suggestion {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("mount keys: {}", MOUNT_KEYS.join(", ")),
                    }),
                });
            }
        }
    }
    let file_info_allowed = matches!(
        m.kind,
        MountKind::Secret | MountKind::Ssh | MountKind::Cache
    );
    if !file_info_allowed {
        for (set, what) in [
            (m.mode.is_some(), "mode"),
            (m.uid.is_some(), "uid"),
            (m.gid.is_some(), "gid"),
        ] {
            if set {
                return Err(
                    format!("{what} not allowed for {:?} type mounts", kind_name(m.kind)).into(),
                );
            }
        }
    }
    if ro_auto {
        m.readonly = !matches!(m.kind, MountKind::Cache | MountKind::Tmpfs);
    }
    if m.kind == MountKind::Secret {
        if m.from.is_some() {
            return Err("secret mount should not have a from".to_string().into());
        }
        if sharing_set {
            return Err("secret mount should not define sharing".to_string().into());
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err("invalid secret mount. one of source, target required"
                .to_string()
                .into());
        }
        if m.source.is_some() && m.id.is_some() {
            return Err("both source and id can't be set".to_string().into());
        }
    }
    if sharing_set && m.kind != MountKind::Cache {
        return Err(format!("invalid cache sharing set for {} mount", kind_name(m.kind)).into());
    }
    Ok(m)
}

/// Parses sizes like docker's `units.RAMInBytes`: `64m`, `1g`, `512k`, `100` (bytes).
fn parse_ram_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    Some((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(join_path("/", "app"), "/app");
        assert_eq!(join_path("/app", "../x/./y"), "/x/y");
        assert_eq!(join_path("/app", "/abs"), "/abs");
        assert_eq!(dest_path("/app", "."), "/app/");
        assert_eq!(dest_path("/app", "sub/"), "/app/sub/");
        assert_eq!(dest_path("/app", "file"), "/app/file");
    }

    #[test]
    fn expose_forms() {
        assert_eq!(expose_ports("80").ok(), Some(vec!["80/tcp".to_string()]));
        assert_eq!(
            expose_ports("53/UDP").ok(),
            Some(vec!["53/udp".to_string()])
        );
        assert_eq!(expose_ports("8000-8002").ok().map(|v| v.len()), Some(3));
        assert!(expose_ports("http").is_err());
        assert!(expose_ports("80/icmp").is_err());
    }

    #[test]
    fn mounts_follow_buildkit() {
        let m = parse_mount("type=cache,target=/root/.cache,sharing=locked").ok();
        assert!(matches!(
            m,
            Some(RawMount {
                kind: MountKind::Cache,
                sharing: CacheSharing::Locked,
                readonly: false,
                ..
            })
        ));
        let bind = parse_mount("target=/src").ok();
        assert!(bind.is_some_and(|b| b.kind == MountKind::Bind && b.readonly));
        assert!(parse_mount("type=bind,mode=0700,target=/x").is_err());
        assert!(parse_mount("type=nope,target=/x").is_err());
        assert!(parse_mount("type=cache,tagret=/x")
            .is_err_and(|e| e.help.is_some_and(|h| h.contains("target"))));
        assert!(parse_mount("type=secret,id=a,sharing=shared").is_err());
        assert!(
            parse_mount("type=tmpfs,target=/t,size=64m").is_ok_and(|m| m.size == Some(64 << 20))
        );
        // A quoted CSV field may hold a comma.
        assert!(parse_mount("type=bind,\"target=/a,b\"")
            .is_ok_and(|m| m.target.as_deref() == Some("/a,b")));
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("term"));
        assert!(valid_signal("9"));
        assert!(valid_signal("SIGRTMIN+3"));
        assert!(!valid_signal("SIGNOPE"));
        assert!(!valid_signal("0"));
    }
}
