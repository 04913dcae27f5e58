//! The graph's renderings: labels, the `--dry-run` plan, Graphviz and JSON.

use std::fmt::Write as _;

use forge_ir::{Base, CommandLine, Mount, MountKind, NetworkMode, Op, SourceRef, StageId};
use petgraph::graph::NodeIndex;
use serde_json::{json, Value};

use crate::compile::{BuildGraph, NodeKind};
use crate::key::{compute_keys, network_name, KeyState};

/// The instruction as one line: line continuations joined, heredoc bodies and
/// comment lines inside a continuation left out.
fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let mut first = true;
    for line in text.lines() {
        let trimmed = if first { line.trim_end() } else { line.trim() };
        first = false;
        if trimmed.starts_with('#') && !parts.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                let head = head.trim_end();
                if !head.is_empty() {
                    parts.push(head);
                }
            }
            None => {
                if !trimmed.is_empty() {
                    parts.push(trimmed);
                }
                break;
            }
        }
    }
    parts.join(" ")
}

/// A value for `KEY=VALUE`: bare when it is a plain word, else JSON-quoted.
fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\' | '$' | '`'));
    if plain {
        v.to_string()
    } else {
        serde_json::to_string(v).unwrap_or_default()
    }
}

fn json_array(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn render_command(c: &CommandLine) -> String {
    match c {
        CommandLine::Shell(s) => one_line(s),
        CommandLine::Exec(v) => json_array(v),
    }
}

fn render_source(s: &SourceRef, stage_name: &dyn Fn(StageId) -> String) -> String {
    match s {
        SourceRef::Context => "context".to_string(),
        SourceRef::Stage(id) => stage_name(*id),
        SourceRef::Image(r) => r.clone(),
    }
}

fn duration(ns: u64) -> String {
    if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else {
        format!("{ns}ns")
    }
}

/// A mount as `--mount=` would spell it (without the `--mount=`).
pub(crate) fn render_mount(m: &Mount, stage_name: &dyn Fn(StageId) -> String) -> String {
    let kind = match m.kind {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    };
    let mut parts = vec![format!("type={kind}"), format!("target={}", m.target)];
    if let Some(id) = &m.id {
        parts.push(format!("id={id}"));
    }
    if let Some(s) = &m.source {
        parts.push(format!("source={s}"));
    }
    if let Some(from) = &m.from {
        parts.push(format!("from={}", render_source(from, stage_name)));
    }
    match (m.kind, m.readonly) {
        (MountKind::Bind, false) => parts.push("rw".into()),
        (MountKind::Bind, true) => {}
        (_, true) => parts.push("ro".into()),
        (_, false) => {}
    }
    if m.kind == MountKind::Cache {
        match m.sharing {
            forge_ir::CacheSharing::Shared => {}
            forge_ir::CacheSharing::Private => parts.push("sharing=private".into()),
            forge_ir::CacheSharing::Locked => parts.push("sharing=locked".into()),
        }
    }
    if let Some(mode) = m.mode {
        parts.push(format!("mode={mode:04o}"));
    }
    if let Some(uid) = m.uid {
        parts.push(format!("uid={uid}"));
    }
    if let Some(gid) = m.gid {
        parts.push(format!("gid={gid}"));
    }
    if m.required {
        parts.push("required".into());
    }
    if let Some(size) = m.size {
        parts.push(format!("size={size}"));
    }
    if let Some(env) = &m.env {
        parts.push(format!("env={env}"));
    }
    parts.join(",")
}

/// A canonical, Dockerfile-like rendering of an op, for labels when the step has no
/// origin text, and for [`explain`](crate::explain).
pub(crate) fn render_op(op: &Op, stage_name: &dyn Fn(StageId) -> String) -> String {
    let mut p: Vec<String> = Vec::new();
    let kv = |v: &[(String, String)]| -> Vec<String> {
        v.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect()
    };
    match op {
        Op::Run(r) => {
            p.push("RUN".into());
            for m in &r.mounts {
                p.push(format!("--mount={}", render_mount(m, stage_name)));
            }
            if r.network != NetworkMode::Default {
                p.push(format!("--network={}", network_name(r.network)));
            }
            if r.insecure {
                p.push("--security=insecure".into());
            }
            p.push(render_command(&r.command));
        }
        Op::Copy(c) => {
            p.push("COPY".into());
            if c.from != SourceRef::Context {
                p.push(format!("--from={}", render_source(&c.from, stage_name)));
            }
            if let Some(v) = &c.chown {
                p.push(format!("--chown={v}"));
            }
            if let Some(v) = &c.chmod {
                p.push(format!("--chmod={v}"));
            }
            if c.link {
                p.push("--link".into());
            }
            if c.parents {
                p.push("--parents".into());
            }
            p.extend(c.exclude.iter().map(|x| format!("--exclude={x}")));
            p.extend(c.sources.iter().cloned());
            p.push(c.dest.clone());
        }
        Op::Add(a) => {
            p.push("ADD".into());
            if let Some(v) = &a.chown {
                p.push(format!("--chown={v}"));
            }
            if let Some(v) = &a.chmod {
                p.push(format!("--chmod={v}"));
            }
            if let Some(v) = &a.checksum {
                p.push(format!("--checksum={v}"));
            }
            if a.keep_git_dir {
                p.push("--keep-git-dir".into());
            }
            if let Some(v) = a.unpack {
                p.push(format!("--unpack={v}"));
            }
            if a.link {
                p.push("--link".into());
            }
            p.extend(a.exclude.iter().map(|x| format!("--exclude={x}")));
            p.extend(a.sources.iter().cloned());
            p.push(a.dest.clone());
        }
        Op::Env(v) => {
            p.push("ENV".into());
            p.extend(kv(v));
        }
        Op::Label(v) => {
            p.push("LABEL".into());
            p.extend(kv(v));
        }
        Op::Arg(v) => {
            p.push("ARG".into());
            p.extend(v.iter().map(|(k, val)| match val {
                Some(val) => format!("{k}={}", quote(val)),
                None => k.clone(),
            }));
        }
        Op::Expose(v) => {
            p.push("EXPOSE".into());
            p.extend(v.iter().cloned());
        }
        Op::Volume(v) => {
            p.push("VOLUME".into());
            p.push(json_array(v));
        }
        Op::User(u) => p.extend(["USER".into(), u.clone()]),
        Op::Workdir(w) => p.extend(["WORKDIR".into(), w.clone()]),
        Op::Cmd(c) => p.extend(["CMD".into(), render_command(c)]),
        Op::Entrypoint(c) => p.extend(["ENTRYPOINT".into(), render_command(c)]),
        Op::StopSignal(s) => p.extend(["STOPSIGNAL".into(), s.clone()]),
        Op::Healthcheck(h) => {
            p.push("HEALTHCHECK".into());
            for (flag, ns) in [
                ("interval", h.interval_ns),
                ("timeout", h.timeout_ns),
                ("start-period", h.start_period_ns),
                ("start-interval", h.start_interval_ns),
            ] {
                if ns != 0 {
                    p.push(format!("--{flag}={}", duration(ns)));
                }
            }
            if h.retries != 0 {
                p.push(format!("--retries={}", h.retries));
            }
            match h.test.split_first() {
                Some((first, rest)) if first == "CMD-SHELL" => {
                    p.push("CMD".into());
                    p.push(rest.join(" "));
                }
                Some((first, rest)) if first == "CMD" => {
                    p.push("CMD".into());
                    p.push(json_array(rest));
                }
                _ => p.push("NONE".into()),
            }
        }
        Op::Shell(v) => p.extend(["SHELL".into(), json_array(v)]),
        Op::Maintainer(m) => p.extend(["MAINTAINER".into(), m.clone()]),
        Op::Onbuild(t) => p.extend(["ONBUILD".into(), one_line(t)]),
    }
    p.join(" ")
}

impl BuildGraph {
    /// The node's `#N`: its index plus one.
    pub fn number(&self, node: NodeIndex) -> usize {
        node.index() + 1
    }

    /// The instruction a node stands for, on one line: the step's text as written
    /// (`Origin::text`, continuations joined), else a canonical rendering of its op;
    /// `FROM ...` for a base; the reference for an image source.
    pub fn instruction(&self, node: NodeIndex) -> String {
        let name = |s: StageId| self.stage_name(s);
        match self.node(node) {
            None => String::new(),
            Some(NodeKind::Image { reference }) => reference.clone(),
            Some(NodeKind::Base { stage }) => {
                let Some(s) = self.ir().stage(*stage) else {
                    return String::new();
                };
                let text = one_line(&s.origin.text);
                if !text.is_empty() {
                    return text;
                }
                match &s.base {
                    Base::Scratch => "FROM scratch".to_string(),
                    Base::Image(r) => format!("FROM {}", r.reference),
                    Base::Stage(from) => format!("FROM {}", name(*from)),
                }
            }
            Some(NodeKind::Step { .. }) => {
                let Some(step) = self.step(node) else {
                    return String::new();
                };
                let text = one_line(&step.origin.text);
                if text.is_empty() {
                    render_op(&step.op, &name)
                } else {
                    text
                }
            }
        }
    }

    /// Where a node sits: `[builder 2/4]` (a stage's base is 1, its steps 2 to n, as
    /// in BuildKit's progress output), or `[image]` for an image source.
    pub fn position(&self, node: NodeIndex) -> String {
        match self.node(node) {
            Some(NodeKind::Base { stage }) => {
                format!(
                    "[{} 1/{}]",
                    self.stage_name(*stage),
                    self.stage_nodes(*stage).len()
                )
            }
            Some(NodeKind::Step { stage, index }) => format!(
                "[{} {}/{}]",
                self.stage_name(*stage),
                index + 2,
                self.stage_nodes(*stage).len()
            ),
            Some(NodeKind::Image { .. }) => "[image]".to_string(),
            None => String::new(),
        }
    }

    /// The node's label: position and instruction, like `[builder 2/4] RUN make`.
    pub fn label(&self, node: NodeIndex) -> String {
        format!("{} {}", self.position(node), self.instruction(node))
    }

    /// Image sources whose keys are pending (the IR has no digest for them).
    fn pending_images<'a>(
        &'a self,
        keys: &'a [KeyState],
    ) -> impl Iterator<Item = (&'a str, NodeIndex)> + 'a {
        self.image_sources()
            .filter(move |(_, n)| keys.get(n.index()).is_none_or(KeyState::is_pending))
    }

    fn unresolved_lines(&self, keys: &[KeyState]) -> Vec<String> {
        let mut out: Vec<String> = self
            .unresolved_bases()
            .into_iter()
            .map(|(s, r)| format!("base {} of {}", r.reference, self.stage_name(s)))
            .collect();
        out.extend(
            self.pending_images(keys)
                .map(|(r, n)| format!("image {r} (#{})", self.number(n))),
        );
        out
    }

    fn targets_line(&self) -> String {
        let t: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                let stage = self.stage_name(t.stage);
                if stage == t.name {
                    t.name.clone()
                } else {
                    format!("{} ({stage})", t.name)
                }
            })
            .collect();
        if t.is_empty() {
            "(none)".to_string()
        } else {
            t.join(", ")
        }
    }

    /// The `forge build --dry-run` view, with keys as known before anything runs
    /// (context sources not hashed, bases as the IR resolved them).
    pub fn plan_text(&self) -> String {
        self.plan_text_with_keys(&compute_keys(self, &|_| None))
    }

    /// The plan with these keys (from [`compute_keys`], indexed by node).
    ///
    /// One line per node, grouped by wave (nodes of one wave could run in parallel):
    /// `#N [stage i/n] INSTRUCTION  key=blake3:<12 hex>`, or `key=pending(reason)`
    /// where the reason is prefixed with `#M: ` when it arose at another node. Then
    /// the pruned stages and what is unresolved.
    pub fn plan_text_with_keys(&self, keys: &[KeyState]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "targets: {}", self.targets_line());
        let path: Vec<String> = self
            .critical_path()
            .iter()
            .map(|n| format!("#{}", self.number(*n)))
            .collect();
        let _ = writeln!(
            out,
            "{} nodes in {} waves; critical path ({} nodes): {}",
            self.node_count(),
            self.wave_count(),
            path.len(),
            if path.is_empty() {
                "(empty)".to_string()
            } else {
                path.join(" -> ")
            }
        );
        for (w, wave) in self.waves().iter().enumerate() {
            let _ = match wave.len() {
                1 => writeln!(out, "\nwave {}: 1 node", w + 1),
                n => writeln!(out, "\nwave {}: {n} nodes in parallel", w + 1),
            };
            for &n in wave {
                let key = match keys.get(n.index()) {
                    Some(KeyState::Known(k)) => format!("blake3:{}", k.short()),
                    Some(KeyState::Pending(r)) if r.node == n => format!("pending({})", r.cause),
                    Some(KeyState::Pending(r)) => format!("pending({r})"),
                    None => "pending(not computed)".to_string(),
                };
                let _ = writeln!(out, "#{} {}  key={key}", self.number(n), self.label(n));
            }
        }
        let pruned: Vec<String> = self.pruned().iter().map(|s| self.stage_name(*s)).collect();
        let _ = writeln!(
            out,
            "\npruned (not needed by the targets): {}",
            if pruned.is_empty() {
                "none".to_string()
            } else {
                pruned.join(", ")
            }
        );
        let unresolved = self.unresolved_lines(keys);
        let _ = writeln!(
            out,
            "unresolved: {}",
            if unresolved.is_empty() {
                "none".to_string()
            } else {
                unresolved.join(", ")
            }
        );
        out
    }

    /// Graphviz `dot`: one cluster per stage (labelled with its name, and the
    /// targets it is), image sources outside clusters, edges labelled by kind.
    /// Deterministic: clusters in stage order, nodes and edges in node order.
    pub fn to_dot(&self) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::from("digraph forge {\n");
        out.push_str("  rankdir=TB;\n");
        out.push_str("  node [shape=box, fontname=\"monospace\"];\n");
        for (&stage, nodes) in &self.stage_nodes_map() {
            let targets: Vec<&str> = self
                .targets()
                .iter()
                .filter(|t| t.stage == stage)
                .map(|t| t.name.as_str())
                .collect();
            let mut label = self.stage_name(stage);
            if !targets.is_empty() {
                let _ = write!(label, " (target {})", targets.join(", "));
            }
            let _ = writeln!(out, "  subgraph cluster_{} {{", stage.0);
            let _ = writeln!(out, "    label=\"{}\";", esc(&label));
            if !targets.is_empty() {
                out.push_str("    style=bold;\n");
            }
            for &n in *nodes {
                let _ = writeln!(
                    out,
                    "    n{} [label=\"#{} {}\"];",
                    self.number(n),
                    self.number(n),
                    esc(&self.label(n))
                );
            }
            out.push_str("  }\n");
        }
        for (_, n) in self.image_sources() {
            let _ = writeln!(
                out,
                "  n{} [label=\"#{} {}\", shape=cylinder];",
                self.number(n),
                self.number(n),
                esc(&self.label(n))
            );
        }
        for n in self.topo_order() {
            for (d, kind) in self.deps(n) {
                let attrs = match kind {
                    crate::EdgeKind::Parent => String::new(),
                    crate::EdgeKind::CopyFrom => " [label=\"COPY --from\", style=dashed]".into(),
                    crate::EdgeKind::MountFrom => " [label=\"--mount from\", style=dotted]".into(),
                };
                let _ = writeln!(out, "  n{} -> n{}{attrs};", self.number(d), self.number(n));
            }
        }
        out.push_str("}\n");
        out
    }

    fn stage_nodes_map(&self) -> std::collections::BTreeMap<StageId, &[NodeIndex]> {
        self.ir()
            .stages
            .iter()
            .enumerate()
            .map(|(i, _)| StageId(i))
            .filter(|s| self.builds(*s))
            .map(|s| (s, self.stage_nodes(s)))
            .collect()
    }

    /// The plan as JSON, with keys as [`plan_text`](Self::plan_text) computes them.
    pub fn to_json(&self) -> Value {
        self.to_json_with_keys(&compute_keys(self, &|_| None))
    }

    /// The plan as JSON with these keys:
    ///
    /// ```text
    /// { "targets": [{"name", "stage"}], "pruned": [stage names],
    ///   "waves": count, "critical_path": [ids],
    ///   "unresolved": [{"kind": "base"|"image", "reference", "stage"|"node"}],
    ///   "nodes": [{"id", "kind": "base"|"step"|"image", "stage", "position",
    ///              "instruction", "label", "deps": [ids], "wave",
    ///              "key": "blake3:..."|null,
    ///              "pending": null|{"at": id, "cause", "reason"}}],
    ///   "edges": [{"from", "to", "kind": "parent"|"copy_from"|"mount_from"}] }
    /// ```
    ///
    /// Ids are the plan's `#N`; waves count from 1 as in the plan.
    pub fn to_json_with_keys(&self, keys: &[KeyState]) -> Value {
        let id = |n: NodeIndex| self.number(n);
        let nodes: Vec<Value> = self
            .topo_order()
            .into_iter()
            .map(|n| {
                let (key, pending) = match keys.get(n.index()) {
                    Some(KeyState::Known(k)) => (json!(k.to_string()), Value::Null),
                    Some(KeyState::Pending(r)) => (
                        Value::Null,
                        json!({
                            "at": id(r.node),
                            "cause": serde_json::to_value(&r.cause).unwrap_or(Value::Null),
                            "reason": r.cause.to_string(),
                        }),
                    ),
                    None => (Value::Null, Value::Null),
                };
                let kind = self.node(n).map_or("", |k| k.as_str());
                let stage = self
                    .node(n)
                    .and_then(|k| k.stage())
                    .map(|s| self.stage_name(s));
                json!({
                    "id": id(n),
                    "kind": kind,
                    "stage": stage,
                    "position": self.position(n),
                    "instruction": self.instruction(n),
                    "label": self.label(n),
                    "deps": self.deps(n).into_iter().map(|(d, _)| id(d)).collect::<Vec<_>>(),
                    "wave": self.level(n).map_or(0, |l| l + 1),
                    "key": key,
                    "pending": pending,
                })
            })
            .collect();
        let edges: Vec<Value> = self
            .topo_order()
            .into_iter()
            .flat_map(|n| {
                self.deps(n).into_iter().map(
                    move |(d, kind)| json!({"from": id(d), "to": id(n), "kind": kind.as_str()}),
                )
            })
            .collect();
        let mut unresolved: Vec<Value> = self
            .unresolved_bases()
            .into_iter()
            .map(|(s, r)| json!({"kind": "base", "reference": r.reference, "stage": self.stage_name(s)}))
            .collect();
        unresolved.extend(
            self.pending_images(keys)
                .map(|(r, n)| json!({"kind": "image", "reference": r, "node": id(n)})),
        );
        json!({
            "targets": self.targets().iter().map(|t| json!({"name": t.name, "stage": self.stage_name(t.stage)})).collect::<Vec<_>>(),
            "pruned": self.pruned().iter().map(|s| self.stage_name(*s)).collect::<Vec<_>>(),
            "waves": self.wave_count(),
            "critical_path": self.critical_path().into_iter().map(id).collect::<Vec<_>>(),
            "unresolved": unresolved,
            "nodes": nodes,
            "edges": edges,
        })
    }
}
