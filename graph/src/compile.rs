//! Compiling an [`Ir`] into a [`BuildGraph`]: nodes and edges, pruning, cycle
//! detection, and the scheduling queries (waves, readiness, critical path).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use forge_ir::{Base, ImageRef, Ir, MountKind, Op, SourceRef, Stage, StageId, Step, Target};
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::Serialize;

use crate::error::GraphError;

/// Why a node depends on another (edges point from the dependency to the dependent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The filesystem the node starts from: the previous step of its stage, the
    /// stage's base node, or (for a base `FROM <stage>`) the last node of that stage.
    Parent,
    /// `COPY --from=<stage or image>` reads the source's result.
    CopyFrom,
    /// `RUN --mount=...,from=<stage or image>` mounts the source's result.
    MountFrom,
}

impl EdgeKind {
    /// A short name: `parent`, `copy_from`, `mount_from`.
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Parent => "parent",
            EdgeKind::CopyFrom => "copy_from",
            EdgeKind::MountFrom => "mount_from",
        }
    }
}

/// What a node of the graph stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A stage's `FROM`: scratch, an image to fetch, or another stage's result.
    Base {
        /// The stage.
        stage: StageId,
    },
    /// One step of a stage.
    Step {
        /// The stage.
        stage: StageId,
        /// The step's index in [`Stage::steps`] (0-based).
        index: usize,
    },
    /// An image used as a source (`COPY --from=<image>`, `RUN --mount from=<image>`),
    /// one node per reference however many steps use it.
    Image {
        /// The reference as written in the IR.
        reference: String,
    },
}

impl NodeKind {
    /// `base`, `step` or `image`.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeKind::Base { .. } => "base",
            NodeKind::Step { .. } => "step",
            NodeKind::Image { .. } => "image",
        }
    }

    /// The stage the node belongs to (`None` for image nodes).
    pub fn stage(&self) -> Option<StageId> {
        match self {
            NodeKind::Base { stage } | NodeKind::Step { stage, .. } => Some(*stage),
            NodeKind::Image { .. } => None,
        }
    }
}

/// The build DAG of an [`Ir`] for some targets.
///
/// Nodes are numbered in a deterministic topological order: by wave (see
/// [`levels`](Self::levels)), then by stage order and step order. So every edge
/// goes from a lower [`NodeIndex`] to a higher one, `0..node_count()` is a valid
/// execution order, and the plan's `#N` is `index + 1`.
#[derive(Debug, Clone)]
pub struct BuildGraph {
    graph: DiGraph<NodeKind, EdgeKind>,
    ir: Ir,
    targets: Vec<Target>,
    pruned: Vec<StageId>,
    levels: Vec<usize>,
    /// For each kept stage: its base node then one node per step.
    stage_nodes: BTreeMap<StageId, Vec<NodeIndex>>,
    images: BTreeMap<String, NodeIndex>,
}

/// Something a stage needs from elsewhere, before it is a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Stage(StageId),
    Image(String),
}

fn need_of(source: &SourceRef) -> Option<Need> {
    match source {
        SourceRef::Context => None,
        SourceRef::Stage(s) => Some(Need::Stage(*s)),
        SourceRef::Image(r) => Some(Need::Image(r.clone())),
    }
}

/// What a step reads besides its parent, in the order the step names them.
fn step_needs(step: &Step) -> Vec<(Need, EdgeKind)> {
    match &step.op {
        Op::Copy(c) => need_of(&c.from)
            .map(|n| (n, EdgeKind::CopyFrom))
            .into_iter()
            .collect(),
        Op::Run(r) => r
            .mounts
            .iter()
            .filter_map(|m| m.from.as_ref().and_then(need_of))
            .map(|n| (n, EdgeKind::MountFrom))
            .collect(),
        _ => Vec::new(),
    }
}

/// The name a stage is shown by: its name, else `stage-N` (as BuildKit does).
pub(crate) fn stage_display_name(ir: &Ir, id: StageId) -> String {
    match ir.stage(id).and_then(|s| s.name.clone()) {
        Some(name) => name,
        None => format!("stage-{}", id.0),
    }
}

/// Compiles `ir` into the DAG needed to build `targets`.
///
/// `targets` are names of [`Ir::targets`] (a name of [`Ir::groups`] stands for its
/// members); empty means every target. Stages the targets do not need are pruned
/// (see [`BuildGraph::pruned`]).
///
/// # Errors
///
/// [`GraphError::UnknownTarget`] for a name that is neither a target nor a group,
/// [`GraphError::Cycle`] when needed stages depend on each other, and
/// [`GraphError::DanglingStage`] when the IR refers to a stage it does not have.
pub fn compile(ir: &Ir, targets: &[&str]) -> Result<BuildGraph, GraphError> {
    let count = ir.stages.len();
    let requested = resolve_targets(ir, targets)?;

    // The stage-level graph: which stages each stage needs, and why.
    let mut needs: Vec<BTreeMap<usize, BTreeSet<&'static str>>> = vec![BTreeMap::new(); count];
    for (i, stage) in ir.stages.iter().enumerate() {
        let referrer = || format!("stage {}", stage_display_name(ir, StageId(i)));
        if let Base::Stage(s) = stage.base {
            check_stage(s, count, referrer)?;
            needs[i].entry(s.0).or_default().insert("FROM");
        }
        for step in &stage.steps {
            for (need, kind) in step_needs(step) {
                if let Need::Stage(s) = need {
                    check_stage(s, count, referrer)?;
                    let why = match kind {
                        EdgeKind::CopyFrom => "COPY --from",
                        _ => "RUN --mount from=",
                    };
                    needs[i].entry(s.0).or_default().insert(why);
                }
            }
        }
    }
    for t in &requested {
        check_stage(t.stage, count, || format!("target {}", t.name))?;
    }

    // Keep what the targets need.
    let mut keep = vec![false; count];
    let mut stack: Vec<usize> = requested.iter().map(|t| t.stage.0).collect();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        stack.extend(needs[i].keys().copied().filter(|&j| !keep[j]));
    }
    if let Some(cycle) = find_cycle(&needs, &keep) {
        return Err(cycle_error(ir, &needs, &cycle));
    }
    let pruned: Vec<StageId> = (0..count).filter(|&i| !keep[i]).map(StageId).collect();

    // Nodes, in creation order: per kept stage, its base then its steps; an image
    // source node just before the first step that uses it.
    let mut g0: DiGraph<NodeKind, EdgeKind> = DiGraph::new();
    let mut stage_nodes: BTreeMap<StageId, Vec<NodeIndex>> = BTreeMap::new();
    let mut images: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for (i, stage) in ir.stages.iter().enumerate().filter(|(i, _)| keep[*i]) {
        let id = StageId(i);
        let mut nodes = vec![g0.add_node(NodeKind::Base { stage: id })];
        for (index, step) in stage.steps.iter().enumerate() {
            for (need, _) in step_needs(step) {
                if let Need::Image(reference) = need {
                    images.entry(reference.clone()).or_insert_with(|| {
                        g0.add_node(NodeKind::Image {
                            reference: reference.clone(),
                        })
                    });
                }
            }
            nodes.push(g0.add_node(NodeKind::Step { stage: id, index }));
        }
        stage_nodes.insert(id, nodes);
    }

    // Edges, deduplicated.
    let last = |s: StageId| stage_nodes.get(&s).and_then(|n| n.last()).copied();
    let source = |need: &Need| match need {
        Need::Stage(s) => last(*s),
        Need::Image(r) => images.get(r).copied(),
    };
    let mut edges: BTreeSet<(NodeIndex, NodeIndex, EdgeKind)> = BTreeSet::new();
    for (id, nodes) in &stage_nodes {
        let Some(stage) = ir.stage(*id) else { continue };
        if let (Base::Stage(s), Some(&base)) = (&stage.base, nodes.first()) {
            if let Some(from) = last(*s) {
                edges.insert((from, base, EdgeKind::Parent));
            }
        }
        for (pair, step) in nodes.windows(2).zip(&stage.steps) {
            edges.insert((pair[0], pair[1], EdgeKind::Parent));
            for (need, kind) in step_needs(step) {
                if let Some(from) = source(&need) {
                    edges.insert((from, pair[1], kind));
                }
            }
        }
    }
    for &(a, b, kind) in &edges {
        g0.add_edge(a, b, kind);
    }

    // Levels: the longest path from a root.
    let order = toposort(&g0, None).map_err(|c| {
        // Unreachable: stage cycles were refused above, and a stage's own nodes form a chain.
        let name = g0[c.node_id()]
            .stage()
            .map_or_else(String::new, |s| stage_display_name(ir, s));
        GraphError::Cycle {
            cycle: vec![name.clone(), name],
            hops: Vec::new(),
        }
    })?;
    let mut level0 = vec![0usize; g0.node_count()];
    for &n in &order {
        let l = g0
            .neighbors_directed(n, Direction::Incoming)
            .map(|d| level0[d.index()] + 1)
            .max()
            .unwrap_or(0);
        level0[n.index()] = l;
    }

    // Renumber: by level, then creation order.
    let mut by_level: Vec<NodeIndex> = g0.node_indices().collect();
    by_level.sort_by_key(|n| (level0[n.index()], n.index()));
    let mut new_index = vec![NodeIndex::new(0); g0.node_count()];
    let mut graph: DiGraph<NodeKind, EdgeKind> =
        DiGraph::with_capacity(g0.node_count(), edges.len());
    let mut levels = Vec::with_capacity(g0.node_count());
    for &old in &by_level {
        new_index[old.index()] = graph.add_node(g0[old].clone());
        levels.push(level0[old.index()]);
    }
    let mut new_edges: Vec<(NodeIndex, NodeIndex, EdgeKind)> = edges
        .iter()
        .map(|&(a, b, k)| (new_index[a.index()], new_index[b.index()], k))
        .collect();
    new_edges.sort();
    for (a, b, k) in new_edges {
        graph.add_edge(a, b, k);
    }
    for nodes in stage_nodes.values_mut() {
        for n in nodes.iter_mut() {
            *n = new_index[n.index()];
        }
    }
    for n in images.values_mut() {
        *n = new_index[n.index()];
    }

    Ok(BuildGraph {
        graph,
        ir: ir.clone(),
        targets: requested,
        pruned,
        levels,
        stage_nodes,
        images,
    })
}

fn check_stage(s: StageId, count: usize, referrer: impl Fn() -> String) -> Result<(), GraphError> {
    if s.0 < count {
        Ok(())
    } else {
        Err(GraphError::DanglingStage {
            stage: s.0,
            referrer: referrer(),
            count,
        })
    }
}

fn resolve_targets(ir: &Ir, names: &[&str]) -> Result<Vec<Target>, GraphError> {
    let mut out: Vec<Target> = Vec::new();
    let mut push = |t: &Target| {
        if !out.iter().any(|o| o.name == t.name) {
            out.push(t.clone());
        }
    };
    if names.is_empty() {
        ir.targets.iter().for_each(&mut push);
        return Ok(out);
    }
    let unknown = |name: &str| {
        let mut known: Vec<String> = ir.targets.iter().map(|t| t.name.clone()).collect();
        known.sort();
        known.dedup();
        known.extend(ir.groups.keys().map(|g| format!("{g} (group)")));
        GraphError::UnknownTarget {
            name: name.to_string(),
            known,
        }
    };
    for &name in names {
        if let Some(t) = ir.target(name) {
            push(t);
        } else if let Some(members) = ir.groups.get(name) {
            for m in members {
                push(ir.target(m).ok_or_else(|| unknown(m))?);
            }
        } else {
            return Err(unknown(name));
        }
    }
    Ok(out)
}

/// A cycle among kept stages, as stage indices with the first repeated at the end.
///
/// Deterministic: Tarjan's SCCs over a graph built in stage order; among the cyclic
/// components with a kept stage, the one holding the lowest stage index; inside it,
/// the shortest cycle through that lowest stage (breadth-first, neighbours in
/// ascending order).
fn find_cycle(
    needs: &[BTreeMap<usize, BTreeSet<&'static str>>],
    keep: &[bool],
) -> Option<Vec<usize>> {
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let ids: Vec<NodeIndex> = (0..needs.len()).map(|i| g.add_node(i)).collect();
    for (i, targets) in needs.iter().enumerate() {
        for &j in targets.keys() {
            g.add_edge(ids[i], ids[j], ());
        }
    }
    let start = tarjan_scc(&g)
        .into_iter()
        .filter_map(|scc| {
            let members: BTreeSet<usize> = scc.iter().map(|n| g[*n]).collect();
            let first = *members.first()?;
            let cyclic = members.len() > 1 || needs[first].contains_key(&first);
            (cyclic && keep[first]).then_some((first, members))
        })
        .min_by_key(|(first, _)| *first)?;
    let (start, members) = start;

    let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(u) = queue.pop_front() {
        if needs[u].contains_key(&start) {
            let mut path = vec![u];
            let mut at = u;
            while let Some(&p) = prev.get(&at) {
                path.push(p);
                at = p;
            }
            path.reverse();
            path.push(start);
            return Some(path);
        }
        for &v in needs[u].keys() {
            if members.contains(&v) && seen.insert(v) {
                prev.insert(v, u);
                queue.push_back(v);
            }
        }
    }
    None
}

fn cycle_error(
    ir: &Ir,
    needs: &[BTreeMap<usize, BTreeSet<&'static str>>],
    cycle: &[usize],
) -> GraphError {
    let name = |i: usize| stage_display_name(ir, StageId(i));
    let hops = cycle
        .windows(2)
        .map(|w| {
            let why: Vec<&str> = needs[w[0]]
                .get(&w[1])
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            format!("{} needs {} ({})", name(w[0]), name(w[1]), why.join(", "))
        })
        .collect();
    GraphError::Cycle {
        cycle: cycle.iter().map(|&i| name(i)).collect(),
        hops,
    }
}

impl BuildGraph {
    /// The petgraph graph (edges point from dependency to dependent).
    pub fn graph(&self) -> &DiGraph<NodeKind, EdgeKind> {
        &self.graph
    }

    /// The IR the graph was compiled from.
    pub fn ir(&self) -> &Ir {
        &self.ir
    }

    /// How many nodes.
    pub fn node_count(&self) -> usize {
        self.graph.node_count()
    }

    /// What `node` stands for; `None` for an index not of this graph.
    pub fn node(&self, node: NodeIndex) -> Option<&NodeKind> {
        self.graph.node_weight(node)
    }

    /// The targets built, in the order asked (groups expanded, duplicates removed).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Stages not needed by the targets, which the graph leaves out, in stage order.
    pub fn pruned(&self) -> &[StageId] {
        &self.pruned
    }

    /// Whether the graph builds `stage` (it is needed by a target).
    pub fn builds(&self, stage: StageId) -> bool {
        self.stage_nodes.contains_key(&stage)
    }

    /// The stage's display name: its name, else `stage-N`.
    pub fn stage_name(&self, stage: StageId) -> String {
        stage_display_name(&self.ir, stage)
    }

    /// The stage a node belongs to (`None` for image nodes).
    pub fn stage_of(&self, node: NodeIndex) -> Option<&Stage> {
        self.node(node)?.stage().and_then(|s| self.ir.stage(s))
    }

    /// The step a node runs (`None` for base and image nodes).
    pub fn step(&self, node: NodeIndex) -> Option<&Step> {
        match self.node(node)? {
            NodeKind::Step { stage, index } => self.ir.stage(*stage)?.steps.get(*index),
            _ => None,
        }
    }

    /// A built stage's nodes: its base node, then one per step.
    pub fn stage_nodes(&self, stage: StageId) -> &[NodeIndex] {
        self.stage_nodes.get(&stage).map_or(&[], Vec::as_slice)
    }

    /// The node whose result is the stage's result (its last step, or its base).
    pub fn last_node(&self, stage: StageId) -> Option<NodeIndex> {
        self.stage_nodes(stage).last().copied()
    }

    /// The node of an image used as a source, by reference.
    pub fn image_node(&self, reference: &str) -> Option<NodeIndex> {
        self.images.get(reference).copied()
    }

    /// The node a COPY or mount source reads (`None` for the build context).
    pub fn source_node(&self, source: &SourceRef) -> Option<NodeIndex> {
        match source {
            SourceRef::Context => None,
            SourceRef::Stage(s) => self.last_node(*s),
            SourceRef::Image(r) => self.image_node(r),
        }
    }

    /// The node's previous node in its stage (the base for the first step, the
    /// previous step otherwise); `None` for base and image nodes.
    pub fn parent(&self, node: NodeIndex) -> Option<NodeIndex> {
        match self.node(node)? {
            NodeKind::Step { stage, index } => self.stage_nodes(*stage).get(*index).copied(),
            _ => None,
        }
    }

    /// What `node` depends on, with why, sorted by node.
    pub fn deps(&self, node: NodeIndex) -> Vec<(NodeIndex, EdgeKind)> {
        let mut d: Vec<_> = self
            .graph
            .edges_directed(node, Direction::Incoming)
            .map(|e| (e.source(), *e.weight()))
            .collect();
        d.sort();
        d
    }

    /// What depends on `node`, with why, sorted by node.
    pub fn dependents(&self, node: NodeIndex) -> Vec<(NodeIndex, EdgeKind)> {
        let mut d: Vec<_> = self
            .graph
            .edges_directed(node, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
            .collect();
        d.sort();
        d
    }

    /// Whether the node reads files whose content the graph cannot know: the build
    /// context (COPY/ADD from it, a bind mount of it) or a URL (ADD without
    /// `--checksum`). Its key stays pending until the executor hashes them
    /// ([`SourceDigest`](crate::SourceDigest)).
    pub fn needs_sources(&self, node: NodeIndex) -> bool {
        let Some(step) = self.step(node) else {
            return false;
        };
        let not_heredoc =
            |heredocs: &[forge_ir::Heredoc], s: &str| !heredocs.iter().any(|h| h.name == s);
        match &step.op {
            Op::Copy(c) => {
                c.from == SourceRef::Context
                    && c.sources.iter().any(|s| not_heredoc(&c.heredocs, s))
            }
            Op::Add(a) => {
                let files: Vec<&String> = a
                    .sources
                    .iter()
                    .filter(|s| not_heredoc(&a.heredocs, s))
                    .collect();
                let pinned_url = a.checksum.is_some()
                    && files
                        .iter()
                        .all(|s| s.starts_with("https://") || s.starts_with("http://"));
                !files.is_empty() && !pinned_url
            }
            Op::Run(r) => r.mounts.iter().any(|m| {
                matches!(
                    (m.kind, &m.from),
                    (MountKind::Bind, None) | (_, Some(SourceRef::Context))
                )
            }),
            _ => false,
        }
    }

    /// Base images without a digest, with the stage that starts from each, in stage order.
    pub fn unresolved_bases(&self) -> Vec<(StageId, &ImageRef)> {
        self.stage_nodes
            .keys()
            .filter_map(|&s| match &self.ir.stage(s)?.base {
                Base::Image(r) if r.digest.is_none() => Some((s, r)),
                _ => None,
            })
            .collect()
    }

    /// Images used as sources, by reference, with their nodes (sorted by reference).
    pub fn image_sources(&self) -> impl Iterator<Item = (&str, NodeIndex)> + '_ {
        self.images.iter().map(|(r, n)| (r.as_str(), *n))
    }

    // ---- scheduling ----

    /// A deterministic topological order: every node after all it depends on.
    /// It is simply `0..node_count()` (see the type's docs).
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        self.graph.node_indices().collect()
    }

    /// Each node's depth, indexed by `NodeIndex::index()`: 0 for a node with no
    /// dependencies, else one more than its deepest dependency (the longest path
    /// from a root). Nodes of equal depth form a *wave*: none depends on another,
    /// so they could run in parallel.
    pub fn levels(&self) -> &[usize] {
        &self.levels
    }

    /// The depth of one node (see [`levels`](Self::levels)).
    pub fn level(&self, node: NodeIndex) -> Option<usize> {
        self.levels.get(node.index()).copied()
    }

    /// The waves: nodes grouped by depth, ascending, each wave sorted.
    pub fn waves(&self) -> Vec<Vec<NodeIndex>> {
        let mut waves: Vec<Vec<NodeIndex>> = vec![Vec::new(); self.wave_count()];
        for n in self.graph.node_indices() {
            if let Some(w) = waves.get_mut(self.levels[n.index()]) {
                w.push(n);
            }
        }
        waves
    }

    /// How many waves (0 for an empty graph).
    pub fn wave_count(&self) -> usize {
        self.levels.iter().max().map_or(0, |m| m + 1)
    }

    /// The nodes not in `done` whose dependencies are all in `done`, ascending: what
    /// an executor may start once `done` have finished.
    pub fn ready_after(&self, done: &HashSet<NodeIndex>) -> Vec<NodeIndex> {
        self.graph
            .node_indices()
            .filter(|n| {
                !done.contains(n)
                    && self
                        .graph
                        .neighbors_directed(*n, Direction::Incoming)
                        .all(|d| done.contains(&d))
            })
            .collect()
    }

    /// The number of nodes on a longest dependency chain (equal to
    /// [`wave_count`](Self::wave_count)): a lower bound on the build's duration
    /// in steps, however parallel the executor.
    pub fn critical_path_len(&self) -> usize {
        self.wave_count()
    }

    /// One longest dependency chain, from a root to a deepest node. Deterministic:
    /// it ends at the lowest-numbered deepest node and, walking back, takes the
    /// lowest-numbered dependency one level up.
    pub fn critical_path(&self) -> Vec<NodeIndex> {
        let Some(deepest) = self.wave_count().checked_sub(1) else {
            return Vec::new();
        };
        let mut at = self
            .graph
            .node_indices()
            .find(|n| self.levels[n.index()] == deepest);
        let mut path = Vec::new();
        while let Some(n) = at {
            path.push(n);
            let want = self.levels[n.index()].checked_sub(1);
            at = want.and_then(|want| {
                self.deps(n)
                    .into_iter()
                    .map(|(d, _)| d)
                    .find(|d| self.levels[d.index()] == want)
            });
        }
        path.reverse();
        path
    }
}
