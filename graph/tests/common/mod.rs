//! Builders for IRs in tests: there is no parser here, so tests write IR by hand.
//! A stage builder tracks the step context (ENV, ARG, USER, WORKDIR, SHELL) the way
//! lowering would, so each step gets the context before its own effect.

#![allow(dead_code)]

use std::collections::BTreeMap;

use forge_ir::{
    Base, CacheSharing, CommandLine, CopyOp, ImageRef, Ir, Mount, MountKind, NetworkMode, Op,
    Origin, RunOp, SourceRef, Stage, StageId, Step, StepContext, Target,
};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The context of a stage starting from scratch or an image with no config.
pub fn default_ctx() -> StepContext {
    StepContext {
        env: vec![("PATH".into(), DEFAULT_PATH.into())],
        args: BTreeMap::new(),
        user: String::new(),
        workdir: "/".into(),
        shell: vec!["/bin/sh".into(), "-c".into()],
        deferred: Default::default(),
    }
}

/// An unresolved image base.
pub fn image(reference: &str) -> Base {
    Base::Image(ImageRef {
        reference: reference.into(),
        digest: None,
    })
}

/// A resolved image base.
pub fn image_at(reference: &str, digest: &str) -> Base {
    Base::Image(ImageRef {
        reference: reference.into(),
        digest: Some(digest.into()),
    })
}

pub const ALPINE_DIGEST: &str =
    "sha256:1e42bbe2508154c9126d48c2b8a75420c3544343bf86fd041fb7527e017a4b4a";
pub const DEBIAN_DIGEST: &str =
    "sha256:b877a1a3fdf02469440f1768cf69c9771338a875b7add5e80c45b756c92ac20a";

pub fn run_op(cmd: &str) -> RunOp {
    RunOp {
        command: CommandLine::Shell(cmd.into()),
        mounts: vec![],
        network: NetworkMode::Default,
        insecure: false,
        heredocs: vec![],
    }
}

pub fn copy_op(from: SourceRef, sources: &[&str], dest: &str) -> CopyOp {
    CopyOp {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.into(),
        from,
        chown: None,
        chmod: None,
        link: false,
        parents: false,
        exclude: vec![],
        heredocs: vec![],
    }
}

pub fn mount(kind: MountKind, target: &str) -> Mount {
    Mount {
        kind,
        target: target.into(),
        source: None,
        from: None,
        id: None,
        readonly: kind == MountKind::Bind,
        sharing: CacheSharing::Shared,
        mode: None,
        uid: None,
        gid: None,
        required: false,
        size: None,
        env: None,
    }
}

pub struct StageB {
    stage: Stage,
    ctx: StepContext,
}

impl StageB {
    /// A step with this text as written; the context advances by the op's effect.
    pub fn step(mut self, text: &str, op: Op) -> Self {
        let step = Step {
            op: op.clone(),
            ctx: self.ctx.clone(),
            deferred: Default::default(),
            origin: Origin {
                file: "Dockerfile".into(),
                line: self.stage.origin.line + self.stage.steps.len() + 1,
                column: 1,
                text: text.into(),
                onbuild_from: None,
            },
        };
        self.stage.steps.push(step);
        match op {
            Op::Env(vars) => {
                for (k, v) in vars {
                    match self.ctx.env.iter_mut().find(|(ek, _)| *ek == k) {
                        Some(slot) => slot.1 = v,
                        None => self.ctx.env.push((k, v)),
                    }
                }
            }
            Op::Arg(vars) => {
                for (k, v) in vars {
                    self.ctx.args.insert(k, v);
                }
            }
            Op::User(u) => self.ctx.user = u,
            Op::Workdir(w) => self.ctx.workdir = w,
            Op::Shell(s) => self.ctx.shell = s,
            _ => {}
        }
        self
    }

    /// The same step with no origin text (labels fall back to rendering the op).
    pub fn step_unwritten(self, op: Op) -> Self {
        self.step("", op)
    }

    pub fn run(self, cmd: &str) -> Self {
        self.step(&format!("RUN {cmd}"), Op::Run(run_op(cmd)))
    }

    pub fn env(self, k: &str, v: &str) -> Self {
        self.step(&format!("ENV {k}={v}"), Op::Env(vec![(k.into(), v.into())]))
    }

    pub fn arg(self, k: &str, v: Option<&str>) -> Self {
        let text = match v {
            Some(v) => format!("ARG {k}={v}"),
            None => format!("ARG {k}"),
        };
        self.step(&text, Op::Arg(vec![(k.into(), v.map(String::from))]))
    }

    pub fn workdir(self, w: &str) -> Self {
        self.step(&format!("WORKDIR {w}"), Op::Workdir(w.into()))
    }

    /// `COPY` from the context.
    pub fn copy(self, sources: &[&str], dest: &str) -> Self {
        let text = format!("COPY {} {dest}", sources.join(" "));
        self.step(&text, Op::Copy(copy_op(SourceRef::Context, sources, dest)))
    }

    /// `COPY --from=<stage>`; `from_name` is only for the text.
    pub fn copy_from(self, stage: usize, from_name: &str, sources: &[&str], dest: &str) -> Self {
        let text = format!("COPY --from={from_name} {} {dest}", sources.join(" "));
        self.step(
            &text,
            Op::Copy(copy_op(SourceRef::Stage(StageId(stage)), sources, dest)),
        )
    }

    /// `COPY --from=<image>`.
    pub fn copy_from_image(self, reference: &str, sources: &[&str], dest: &str) -> Self {
        let text = format!("COPY --from={reference} {} {dest}", sources.join(" "));
        self.step(
            &text,
            Op::Copy(copy_op(SourceRef::Image(reference.into()), sources, dest)),
        )
    }
}

#[derive(Default)]
pub struct IrB {
    stages: Vec<(Stage, StepContext)>,
    targets: Vec<Target>,
    groups: BTreeMap<String, Vec<String>>,
}

impl IrB {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stage; a `FROM <stage>` starts from that stage's final context.
    pub fn stage(
        mut self,
        name: Option<&str>,
        base: Base,
        f: impl FnOnce(StageB) -> StageB,
    ) -> Self {
        let id = self.stages.len();
        let (base_text, initial) = match &base {
            Base::Scratch => ("scratch".to_string(), default_ctx()),
            Base::Image(r) => (r.reference.clone(), default_ctx()),
            Base::Stage(s) => match self.stages.get(s.0) {
                Some((st, ctx)) => (
                    st.name.clone().unwrap_or_else(|| s.0.to_string()),
                    StepContext {
                        args: BTreeMap::new(),
                        ..ctx.clone()
                    },
                ),
                None => (format!("stage{}", s.0), default_ctx()),
            },
        };
        let text = match name {
            Some(n) => format!("FROM {base_text} AS {n}"),
            None => format!("FROM {base_text}"),
        };
        let line = 1 + self
            .stages
            .iter()
            .map(|(s, _)| s.steps.len() + 2)
            .sum::<usize>();
        let stage = Stage {
            id: StageId(id),
            name: name.map(String::from),
            base,
            platform: None,
            initial: initial.clone(),
            steps: vec![],
            origin: Origin {
                file: "Dockerfile".into(),
                line,
                column: 1,
                text,
                onbuild_from: None,
            },
            context: None,
        };
        let built = f(StageB {
            stage,
            ctx: initial,
        });
        self.stages.push((built.stage, built.ctx));
        self
    }

    pub fn target(mut self, name: &str, stage: usize) -> Self {
        self.targets.push(Target {
            name: name.into(),
            stage: StageId(stage),
            tags: vec![],
        });
        self
    }

    pub fn group(mut self, name: &str, members: &[&str]) -> Self {
        self.groups
            .insert(name.into(), members.iter().map(|m| m.to_string()).collect());
        self
    }

    pub fn build(self) -> Ir {
        Ir {
            stages: self.stages.into_iter().map(|(s, _)| s).collect(),
            targets: self.targets,
            groups: self.groups,
        }
    }
}

/// Finds the node whose label (`[stage i/n] TEXT`) starts with `prefix`.
pub fn node(graph: &forge_graph::BuildGraph, prefix: &str) -> forge_graph::NodeIndex {
    graph
        .topo_order()
        .into_iter()
        .find(|n| graph.label(*n).starts_with(prefix))
        .unwrap_or_else(|| panic!("no node labelled `{prefix}...`:\n{}", graph.plan_text()))
}
