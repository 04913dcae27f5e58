//! forge's build graph: the IR compiled into a DAG of steps, ordered into waves,
//! with a cache key for every step.
//!
//! [`compile`] turns an [`Ir`](forge_ir::Ir) and the targets asked for into a
//! [`BuildGraph`] (a petgraph `DiGraph`):
//!
//! - one **base** node per stage (its `FROM`: scratch, an image, or another stage)
//!   and one **step** node per step; an **image** node per image used as a
//!   `COPY --from`/`RUN --mount from=` source, shared by every step that uses it;
//! - edges from dependency to dependent, labelled [`EdgeKind::Parent`] (previous
//!   step, the stage's base; a `FROM <stage>` base depends on that stage's last
//!   node), [`EdgeKind::CopyFrom`] and [`EdgeKind::MountFrom`];
//! - stages the targets do not need are **pruned** ([`BuildGraph::pruned`]), as
//!   BuildKit builds only what the target needs; stages that need each other are a
//!   [`GraphError::Cycle`] naming them in order (`a -> b -> a`).
//!
//! Scheduling: nodes are numbered in a deterministic topological order;
//! [`BuildGraph::levels`] gives each node's depth, and nodes of equal depth form a
//! *wave* that could run in parallel; [`BuildGraph::ready_after`] serves an
//! executor; [`BuildGraph::critical_path`] is a longest chain.
//!
//! Cache keys: [`compute_keys`] gives every node a [`CacheKey`] (blake3 over the
//! canonical encoding of a [`KeyRecipe`]) or a pending reason. **The recipe table
//! — every input of a key, and what is deliberately not tracked — is in the
//! [`key`] module docs.** [`explain`] names the fields two recipes differ in.
//!
//! Output: [`BuildGraph::plan_text`] (the `forge build --dry-run` view),
//! [`BuildGraph::to_dot`] (Graphviz) and [`BuildGraph::to_json`].
//!
//! The graph knows no Dockerfile syntax: it reads the IR only.
//!
//! ```
//! use forge_ir::{Base, CommandLine, Ir, NetworkMode, Op, Origin, RunOp, Stage, StageId,
//!                Step, StepContext, Target};
//!
//! let ctx = StepContext { workdir: "/".into(), ..StepContext::default() };
//! let run = Step {
//!     op: Op::Run(RunOp {
//!         command: CommandLine::Shell("echo hi > /hi".into()),
//!         mounts: vec![],
//!         network: NetworkMode::Default,
//!         insecure: false,
//!         heredocs: vec![],
//!     }),
//!     ctx: ctx.clone(),
//!     deferred: Default::default(),
//!     origin: Origin::default(),
//! };
//! let ir = Ir {
//!     stages: vec![Stage {
//!         id: StageId(0),
//!         name: Some("app".into()),
//!         base: Base::Scratch,
//!         platform: None,
//!         initial: ctx,
//!         steps: vec![run],
//!         origin: Origin::default(),
//!         context: None,
//!     }],
//!     targets: vec![Target { name: "app".into(), stage: StageId(0), tags: vec![] }],
//!     groups: Default::default(),
//! };
//!
//! let graph = forge_graph::compile(&ir, &["app"])?;
//! assert_eq!(graph.node_count(), 2); // FROM scratch, RUN
//! assert_eq!(graph.wave_count(), 2);
//! let keys = forge_graph::compute_keys(&graph, &|_| None);
//! assert!(keys.iter().all(|k| k.key().is_some())); // nothing unknown in this build
//! assert!(graph.plan_text().contains("#2 [app 2/2] RUN echo hi > /hi  key=blake3:"));
//! # Ok::<(), forge_graph::GraphError>(())
//! ```

mod compile;
mod error;
pub mod key;
mod render;

pub use compile::{compile, BuildGraph, EdgeKind, NodeKind};
pub use error::GraphError;
pub use key::{
    compute_keys, compute_recipes, explain, explain_records, CacheKey, EntryMeta, ExplainRecord,
    KeyChange, KeyRecipe, KeyState, MountRecipe, PendingCause, PendingReason, RecipeField,
    RecipeKind, SourceDigest, SourceHasher, SourceInput, CACHE_FORMAT_VERSION,
};
pub use petgraph::graph::NodeIndex;
