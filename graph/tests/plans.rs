//! The compiled graph and its renderings: plans, dot and JSON snapshots; pruning;
//! targets; cycles.

mod common;

use std::collections::HashSet;

use common::*;
use forge_graph::{compile, EdgeKind, GraphError, NodeKind};
use forge_ir::{Base, CommandLine, MountKind, Op, RunOp, SourceRef, StageId};
use miette::Diagnostic;

/// One stage from a resolved image.
fn single_stage() -> forge_ir::Ir {
    IrB::new()
        .stage(Some("app"), image_at("alpine:3.20", ALPINE_DIGEST), |s| {
            s.workdir("/app")
                .env("MODE", "release")
                .copy(&["."], ".")
                .run("make build")
                .step(
                    r#"CMD ["./app"]"#,
                    Op::Cmd(CommandLine::Exec(vec!["./app".into()])),
                )
        })
        .target("app", 0)
        .build()
}

/// The shape of `examples/hello`, plus an image used as a source twice.
fn multi_stage() -> forge_ir::Ir {
    let mut cache = mount(MountKind::Cache, "/var/cache/tools");
    cache.sharing = forge_ir::CacheSharing::Locked;
    let mut bb = mount(MountKind::Bind, "/bb");
    bb.from = Some(SourceRef::Image("busybox:1.36".into()));
    IrB::new()
        .stage(Some("base"), Base::Scratch, |s| {
            s.step(
                "ARG BASE_TAR",
                Op::Arg(vec![("BASE_TAR".into(), Some("rootfs.tar".into()))]),
            )
            .step(
                "ADD ${BASE_TAR} /",
                Op::Add(forge_ir::AddOp {
                    sources: vec!["rootfs.tar".into()],
                    dest: "/".into(),
                    chown: None,
                    chmod: None,
                    link: false,
                    keep_git_dir: false,
                    checksum: None,
                    unpack: None,
                    exclude: vec![],
                    heredocs: vec![],
                }),
            )
            .env("PATH", "/bin")
        })
        .stage(Some("builder"), Base::Stage(StageId(0)), |s| {
            s.workdir("/src").copy(&["greeting.txt"], ".").step(
                "RUN tr 'a-z' 'A-Z' < greeting.txt > shout.txt \\\n && wc -c shout.txt",
                Op::Run(run_op(
                    "tr 'a-z' 'A-Z' < greeting.txt > shout.txt  && wc -c shout.txt",
                )),
            )
        })
        .stage(Some("tools"), Base::Stage(StageId(0)), |s| {
            s.step(
                "RUN --mount=type=cache,target=/var/cache/tools,sharing=locked \\\n    --mount=type=bind,from=busybox:1.36,target=/bb \\\n    echo \"tools ready\" > /tools.txt",
                Op::Run(RunOp {
                    mounts: vec![cache, bb],
                    ..run_op("echo \"tools ready\" > /tools.txt")
                }),
            )
        })
        .stage(None, Base::Stage(StageId(0)), |s| {
            s.step(
                r#"LABEL org.opencontainers.image.title="hello""#,
                Op::Label(vec![(
                    "org.opencontainers.image.title".into(),
                    "hello".into(),
                )]),
            )
            .copy_from(1, "builder", &["/src/shout.txt"], "/srv/")
            .copy_from(2, "tools", &["/tools.txt"], "/srv/")
            .copy_from_image("busybox:1.36", &["/bin/busybox"], "/bin/")
            .run("cat /srv/shout.txt /srv/tools.txt")
            .step("EXPOSE 8080", Op::Expose(vec!["8080/tcp".into()]))
            .step("USER 1000:1000", Op::User("1000:1000".into()))
            // No origin text: the label is rendered from the op.
            .step_unwritten(Op::Cmd(CommandLine::Exec(vec![
                "cat".into(),
                "/srv/shout.txt".into(),
            ])))
        })
        .target("base", 0)
        .target("builder", 1)
        .target("tools", 2)
        .target("default", 3)
        .build()
}

/// A forge.toml-like build of three images, two built on the first.
fn multi_image() -> forge_ir::Ir {
    let mut pip = mount(MountKind::Cache, "/root/.cache/pip");
    pip.id = Some("pip".into());
    IrB::new()
        .stage(Some("base"), image_at("debian:12", DEBIAN_DIGEST), |s| {
            s.run("apt-get update && apt-get install -y ca-certificates")
                .env("LANG", "C.UTF-8")
        })
        .stage(Some("app/builder"), Base::Stage(StageId(0)), |s| {
            s.workdir("/src")
                .copy(&["."], ".")
                .run("cargo build --release")
        })
        .stage(Some("app"), Base::Stage(StageId(0)), |s| {
            s.copy_from(
                1,
                "builder",
                &["/src/target/release/app"],
                "/usr/local/bin/app",
            )
            .step(
                r#"ENTRYPOINT ["app"]"#,
                Op::Entrypoint(CommandLine::Exec(vec!["app".into()])),
            )
        })
        .stage(Some("worker"), Base::Stage(StageId(0)), |s| {
            s.step(
                "RUN --mount=type=cache,id=pip,target=/root/.cache/pip pip install worker",
                Op::Run(RunOp {
                    mounts: vec![pip],
                    ..run_op("pip install worker")
                }),
            )
        })
        .target("base", 0)
        .target("app", 2)
        .target("worker", 3)
        .group("default", &["app", "worker"])
        .build()
}

/// Stages a target may or may not need.
fn prunable() -> forge_ir::Ir {
    IrB::new()
        .stage(Some("deps"), image_at("alpine:3.20", ALPINE_DIGEST), |s| {
            s.run("apk add build-base")
        })
        .stage(Some("test"), Base::Stage(StageId(0)), |s| {
            s.copy(&["."], "/src").run("make -C /src test")
        })
        .stage(Some("build"), Base::Stage(StageId(0)), |s| {
            s.copy(&["."], "/src").run("make -C /src")
        })
        .stage(Some("docs"), image("alpine:3.20"), |s| s.run("make docs"))
        .stage(None, Base::Scratch, |s| {
            s.copy_from(2, "build", &["/src/app"], "/app")
        })
        .target("deps", 0)
        .target("test", 1)
        .target("build", 2)
        .target("docs", 3)
        .target("default", 4)
        .build()
}

#[test]
fn single_stage_plan() {
    let g = compile(&single_stage(), &["app"]).expect("compiles");
    assert_eq!(g.node_count(), 6);
    assert_eq!(g.wave_count(), 6, "one stage is one chain");
    assert_eq!(g.critical_path_len(), 6);
    insta::assert_snapshot!("single_stage_plan", g.plan_text());
    insta::assert_snapshot!("single_stage_dot", g.to_dot());
    insta::assert_json_snapshot!("single_stage_json", g.to_json());
}

#[test]
fn multi_stage_plan() {
    let g = compile(&multi_stage(), &["default"]).expect("compiles");
    insta::assert_snapshot!("multi_stage_plan", g.plan_text());
    insta::assert_snapshot!("multi_stage_dot", g.to_dot());
    insta::assert_json_snapshot!("multi_stage_json", g.to_json());

    // builder and tools are independent: their bases, and their first steps, share waves.
    let builder_from = node(&g, "[builder 1/4]");
    let tools_from = node(&g, "[tools 1/2]");
    assert_eq!(g.level(builder_from), g.level(tools_from));
    assert_eq!(
        g.level(node(&g, "[builder 2/4]")),
        g.level(node(&g, "[tools 2/2]"))
    );

    // One image node for two uses, feeding a COPY and a mount.
    let images: Vec<_> = g.image_sources().collect();
    assert_eq!(images.len(), 1);
    let (_, bb) = images[0];
    let uses: Vec<EdgeKind> = g.dependents(bb).into_iter().map(|(_, k)| k).collect();
    assert_eq!(uses, vec![EdgeKind::MountFrom, EdgeKind::CopyFrom]);

    // COPY --from=builder depends on builder's last step.
    let copy = node(&g, "[stage-3 3/9] COPY --from=builder");
    assert!(g
        .deps(copy)
        .contains(&(node(&g, "[builder 4/4]"), EdgeKind::CopyFrom)));
    // FROM base depends on base's last step, as its parent.
    assert_eq!(
        g.deps(builder_from),
        vec![(node(&g, "[base 4/4]"), EdgeKind::Parent)]
    );
    // Without origin text, the label is the op rendered.
    assert_eq!(
        g.label(node(&g, "[stage-3 9/9]")),
        r#"[stage-3 9/9] CMD ["cat","/srv/shout.txt"]"#
    );
}

#[test]
fn topological_numbering_and_scheduling() {
    let g = compile(&multi_stage(), &[]).expect("compiles");
    // Every edge goes forward, and each wave's nodes are independent.
    for n in g.topo_order() {
        for (d, _) in g.deps(n) {
            assert!(
                d < n,
                "edge #{} -> #{} goes backwards",
                d.index() + 1,
                n.index() + 1
            );
            assert!(g.level(d) < g.level(n));
        }
    }
    // Walking with ready_after visits every node once, wave by wave.
    let mut done = HashSet::new();
    let mut rounds = Vec::new();
    loop {
        let ready = g.ready_after(&done);
        if ready.is_empty() {
            break;
        }
        done.extend(ready.iter().copied());
        rounds.push(ready);
    }
    assert_eq!(done.len(), g.node_count());
    assert_eq!(rounds, g.waves());
    // The critical path is a chain as long as the number of waves.
    let path = g.critical_path();
    assert_eq!(path.len(), g.critical_path_len());
    for w in path.windows(2) {
        assert!(g.deps(w[1]).iter().any(|(d, _)| *d == w[0]));
    }
    assert_eq!(
        path.iter().map(|n| g.label(*n)).next_back().as_deref(),
        Some(r#"[stage-3 9/9] CMD ["cat","/srv/shout.txt"]"#)
    );
}

#[test]
fn multi_image_plan() {
    // No targets: every target of the build.
    let g = compile(&multi_image(), &[]).expect("compiles");
    assert!(g.pruned().is_empty());
    insta::assert_snapshot!("multi_image_plan", g.plan_text());
    insta::assert_json_snapshot!("multi_image_json", g.to_json());
    insta::assert_snapshot!("multi_image_dot", g.to_dot());
    // app and worker both start from base's result, in the same wave.
    let base_last = g.last_node(StageId(0)).expect("base is built");
    for s in [1, 2, 3] {
        let from = g.stage_nodes(StageId(s))[0];
        assert_eq!(g.deps(from), vec![(base_last, EdgeKind::Parent)]);
        assert_eq!(g.level(from), g.level(base_last).map(|l| l + 1));
    }
}

#[test]
fn groups_expand_to_their_targets() {
    let g = compile(&multi_image(), &["default"]).expect("compiles");
    let names: Vec<&str> = g.targets().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["app", "worker"]);
    assert!(g.pruned().is_empty(), "base is needed by both");
}

#[test]
fn pruning_keeps_what_the_target_needs() {
    let ir = prunable();
    let g = compile(&ir, &["default"]).expect("compiles");
    let pruned: Vec<String> = g.pruned().iter().map(|s| g.stage_name(*s)).collect();
    assert_eq!(pruned, ["test", "docs"]);
    assert!(!g.builds(StageId(1)) && !g.builds(StageId(3)));
    assert!(g.stage_nodes(StageId(1)).is_empty());
    insta::assert_snapshot!("pruned_plan", g.plan_text());

    let g = compile(&ir, &["test"]).expect("compiles");
    let pruned: Vec<String> = g.pruned().iter().map(|s| g.stage_name(*s)).collect();
    assert_eq!(pruned, ["build", "docs", "stage-4"]);

    // Two targets sharing a dependency: it appears once.
    let g = compile(&ir, &["test", "build", "test"]).expect("compiles");
    assert_eq!(g.targets().len(), 2);
    assert_eq!(g.stage_nodes(StageId(0)).len(), 2);
    let deps_last = g.last_node(StageId(0)).expect("deps is built");
    assert_eq!(g.dependents(deps_last).len(), 2);
}

#[test]
fn unknown_target_lists_the_known_ones() {
    let err = compile(&multi_image(), &["ap"]).expect_err("no such target");
    assert_eq!(err.to_string(), "unknown target `ap`");
    assert_eq!(
        err.code().map(|c| c.to_string()).as_deref(),
        Some("graph::unknown-target")
    );
    assert_eq!(
        err.help().map(|h| h.to_string()).as_deref(),
        Some("known targets: app, base, worker, default (group)")
    );
}

/// Image `a` is built FROM image `b`, and `b` copies from `a`.
fn two_image_cycle() -> forge_ir::Ir {
    IrB::new()
        .stage(Some("a"), Base::Stage(StageId(1)), |s| s.run("true"))
        .stage(Some("b"), image_at("alpine:3.20", ALPINE_DIGEST), |s| {
            s.copy_from(0, "a", &["/x"], "/x")
        })
        .stage(Some("c"), Base::Scratch, |s| {
            s.copy_from(1, "b", &["/x"], "/x")
        })
        .target("a", 0)
        .target("b", 1)
        .target("c", 2)
        .build()
}

#[test]
fn cycle_is_named_in_order() {
    let err = compile(&two_image_cycle(), &[]).expect_err("a cycle");
    assert_eq!(err.to_string(), "stages depend on each other: a -> b -> a");
    assert_eq!(
        err.code().map(|c| c.to_string()).as_deref(),
        Some("graph::cycle")
    );
    assert_eq!(
        err.help().map(|h| h.to_string()).as_deref(),
        Some(
            "a needs b (FROM), b needs a (COPY --from); a stage cannot need itself \
             through FROM, COPY --from or RUN --mount from="
        )
    );
    // Asking for a target that reaches the cycle reports it too; the same every time.
    for _ in 0..3 {
        let err = compile(&two_image_cycle(), &["c"]).expect_err("a cycle");
        assert!(matches!(&err, GraphError::Cycle { cycle, .. } if cycle == &["a", "b", "a"]));
    }
}

#[test]
fn longer_cycles_and_self_references() {
    // x -> y -> z -> x, found from the lowest stage, through the shortest way round.
    let ir = IrB::new()
        .stage(Some("x"), Base::Stage(StageId(1)), |s| s)
        .stage(Some("y"), Base::Scratch, |s| {
            let mut m = mount(MountKind::Bind, "/z");
            m.from = Some(SourceRef::Stage(StageId(2)));
            s.step(
                "RUN --mount=from=z,target=/z true",
                Op::Run(RunOp {
                    mounts: vec![m],
                    ..run_op("true")
                }),
            )
        })
        .stage(Some("z"), Base::Scratch, |s| {
            s.copy_from(0, "x", &["/"], "/")
        })
        .target("x", 0)
        .build();
    let err = compile(&ir, &[]).expect_err("a cycle");
    assert_eq!(
        err.to_string(),
        "stages depend on each other: x -> y -> z -> x"
    );
    assert!(err
        .help()
        .map(|h| h.to_string())
        .unwrap_or_default()
        .starts_with("x needs y (FROM), y needs z (RUN --mount from=), z needs x (COPY --from);"));

    // A stage copying from itself.
    let ir = IrB::new()
        .stage(Some("me"), Base::Scratch, |s| {
            s.copy_from(0, "me", &["/a"], "/b")
        })
        .target("me", 0)
        .build();
    let err = compile(&ir, &["me"]).expect_err("a cycle");
    assert_eq!(err.to_string(), "stages depend on each other: me -> me");
}

#[test]
fn a_cycle_the_targets_do_not_need_is_pruned_not_refused() {
    let ir = IrB::new()
        .stage(Some("ok"), Base::Scratch, |s| s.run("true"))
        .stage(Some("loop"), Base::Scratch, |s| {
            s.copy_from(1, "loop", &["/a"], "/b")
        })
        .target("ok", 0)
        .target("loop", 1)
        .build();
    let g = compile(&ir, &["ok"]).expect("the loop is not needed");
    assert_eq!(g.pruned(), &[StageId(1)]);
    assert!(compile(&ir, &[]).is_err());
}

#[test]
fn dangling_stage_references_are_errors_not_panics() {
    let ir = IrB::new()
        .stage(Some("a"), Base::Stage(StageId(7)), |s| s)
        .target("a", 0)
        .build();
    let err = compile(&ir, &[]).expect_err("stage 7 does not exist");
    assert_eq!(
        err.to_string(),
        "stage a refers to stage #7, but the build has 1 stages"
    );
    let ir = IrB::new()
        .stage(None, Base::Scratch, |s| s)
        .target("t", 3)
        .build();
    assert!(matches!(
        compile(&ir, &[]),
        Err(GraphError::DanglingStage { stage: 3, .. })
    ));
}

#[test]
fn empty_build() {
    let ir = IrB::new().build();
    let g = compile(&ir, &[]).expect("nothing to do");
    assert_eq!(g.node_count(), 0);
    assert_eq!(g.wave_count(), 0);
    assert!(g.critical_path().is_empty());
    assert!(g.ready_after(&HashSet::new()).is_empty());
    insta::assert_snapshot!("empty_plan", g.plan_text());
}

#[test]
fn base_nodes_know_their_stage() {
    let g = compile(&multi_stage(), &["builder"]).expect("compiles");
    let first = g.stage_nodes(StageId(1))[0];
    assert_eq!(g.node(first), Some(&NodeKind::Base { stage: StageId(1) }));
    assert_eq!(g.stage_of(first).map(|s| s.id), Some(StageId(1)));
    assert!(g.step(first).is_none());
    assert_eq!(g.parent(g.stage_nodes(StageId(1))[1]), Some(first));
}
