//! Cache keys: determinism, invalidation, pending propagation, explain.

mod common;

use std::collections::BTreeMap;

use common::*;
use forge_graph::{
    compile, compute_keys, compute_recipes, explain, BuildGraph, CacheKey, EntryMeta, KeyChange,
    KeyRecipe, KeyState, NodeIndex, PendingCause, RecipeField, RecipeKind, SourceDigest,
    SourceHasher, CACHE_FORMAT_VERSION,
};
use forge_ir::{Base, Ir, MountKind, Op, RunOp, StageId};

/// What the tests vary.
#[derive(Clone)]
struct Knobs {
    builder_base: Base,
    version: &'static str,
    cgo: &'static str,
    make: &'static str,
    docs_lang: &'static str,
    docs_name: &'static str,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            builder_base: image_at("alpine:3.20", ALPINE_DIGEST),
            version: "1.0",
            cgo: "0",
            make: "make VERSION=1.0",
            docs_lang: "C",
            docs_name: "docs",
        }
    }
}

/// builder and docs are independent; the final stage copies from both.
fn fixture(k: &Knobs) -> Ir {
    IrB::new()
        .stage(Some("builder"), k.builder_base.clone(), |s| {
            s.arg("VERSION", Some(k.version))
                .env("CGO", k.cgo)
                .run(k.make)
                .run("strip app")
        })
        .stage(
            Some(k.docs_name),
            image_at("alpine:3.20", ALPINE_DIGEST),
            |s| s.env("LANG", k.docs_lang).run("make docs"),
        )
        .stage(None, Base::Scratch, |s| {
            s.copy_from(0, "builder", &["/app"], "/app").copy_from(
                1,
                k.docs_name,
                &["/docs"],
                "/docs",
            )
        })
        .target("default", 2)
        .build()
}

/// Keys by the node's position (`[builder 3/5]`); positions do not change when
/// only values do.
fn keys(ir: &Ir) -> BTreeMap<String, KeyState> {
    let g = compile(ir, &[]).expect("compiles");
    let keys = compute_keys(&g, &|_| None);
    g.topo_order()
        .into_iter()
        .map(|n| (g.position(n), keys[n.index()].clone()))
        .collect()
}

fn known(keys: &BTreeMap<String, KeyState>, position: &str) -> CacheKey {
    match keys.get(position) {
        Some(KeyState::Known(k)) => *k,
        other => panic!("{position}: expected a known key, got {other:?}"),
    }
}

/// Which positions have different keys in `a` and `b`.
fn changed(a: &BTreeMap<String, KeyState>, b: &BTreeMap<String, KeyState>) -> Vec<String> {
    assert_eq!(a.len(), b.len());
    a.keys()
        .filter(|p| known(a, p) != known(b, p))
        .cloned()
        .collect()
}

fn recipe(ir: &Ir, position: &str) -> KeyRecipe {
    let g = compile(ir, &[]).expect("compiles");
    let recipes = compute_recipes(&g, &|_| None);
    let n = g
        .topo_order()
        .into_iter()
        .find(|n| g.position(*n) == position)
        .expect("position exists");
    recipes[n.index()].clone().expect("known")
}

#[test]
fn same_ir_same_keys() {
    let a = keys(&fixture(&Knobs::default()));
    let b = keys(&fixture(&Knobs::default()));
    assert_eq!(a, b);
    assert!(a.values().all(|k| !k.is_pending()), "{a:?}");
    // Two bases FROM the same digest are the same filesystem, so they share a key;
    // every other node's key is distinct.
    assert_eq!(known(&a, "[builder 1/5]"), known(&a, "[docs 1/3]"));
    let mut distinct: Vec<CacheKey> = a.values().filter_map(KeyState::key).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), a.len() - 1);
}

#[test]
fn keys_are_pinned_across_versions_of_forge() {
    // If this fails, the recipe or its encoding changed: bump CACHE_FORMAT_VERSION
    // (old caches must not be reused) and update the expected values.
    assert_eq!(CACHE_FORMAT_VERSION, 1);
    assert_eq!(
        KeyRecipe::new(RecipeKind::Scratch).key().to_string(),
        "blake3:71d9e1173136c87b1c445c7567cf87c189735a0a2c2634c15ff7e758ff5bc993"
    );
    let k = keys(&fixture(&Knobs::default()));
    assert_eq!(
        known(&k, "[builder 5/5]").to_string(),
        "blake3:e7bbfe57cd4e1c955697e044d7f033c76d17c8a8ea56a7a6ec8ddb0234deb7bc"
    );
}

#[test]
fn provenance_is_not_in_the_key() {
    // Stage names, origin text and line numbers are not inputs.
    let a = keys(&fixture(&Knobs::default()));
    let mut ir = fixture(&Knobs {
        docs_name: "documentation",
        ..Knobs::default()
    });
    for stage in &mut ir.stages {
        stage.origin.line += 10;
        for step in &mut stage.steps {
            step.origin.text = format!("# a comment\n{}", step.origin.text.to_lowercase());
        }
    }
    let g = compile(&ir, &[]).expect("compiles");
    let b: Vec<KeyState> = compute_keys(&g, &|_| None);
    let a: Vec<&KeyState> = a.values().collect();
    let mut b_sorted: Vec<(String, KeyState)> = g
        .topo_order()
        .into_iter()
        .map(|n| {
            (
                g.position(n).replace("documentation", "docs"),
                b[n.index()].clone(),
            )
        })
        .collect();
    b_sorted.sort_by(|x, y| x.0.cmp(&y.0));
    let b: Vec<&KeyState> = b_sorted.iter().map(|(_, k)| k).collect();
    assert_eq!(a, b);
}

#[test]
fn env_order_in_the_context_is_not_in_the_key() {
    let mut ir = fixture(&Knobs::default());
    let before = keys(&ir);
    for step in &mut ir.stages[0].steps {
        step.ctx.env.reverse();
    }
    assert_eq!(keys(&ir), before);
}

#[test]
fn an_env_change_invalidates_that_step_and_after() {
    let a_ir = fixture(&Knobs::default());
    let b_ir = fixture(&Knobs {
        cgo: "1",
        ..Knobs::default()
    });
    let (a, b) = (keys(&a_ir), keys(&b_ir));
    assert_eq!(
        changed(&a, &b),
        [
            "[builder 3/5]", // ENV CGO
            "[builder 4/5]",
            "[builder 5/5]",
            "[stage-2 2/3]", // COPY --from=builder
            "[stage-2 3/3]", // after it
        ]
    );
    // The ENV step itself: its op changed.
    let why = explain(
        &recipe(&a_ir, "[builder 3/5]"),
        &recipe(&b_ir, "[builder 3/5]"),
    );
    assert_eq!(fields(&why), [RecipeField::Op]);
    assert_eq!(why[0].to_string(), "op: ENV CGO=0 -> ENV CGO=1");
    // The RUN after it: its parent, and the env it sees.
    let why = explain(
        &recipe(&a_ir, "[builder 4/5]"),
        &recipe(&b_ir, "[builder 4/5]"),
    );
    assert_eq!(fields(&why), [RecipeField::Parent, RecipeField::Env]);
    assert_eq!(why[1].to_string(), r#"env CGO: "0" -> "1""#);
    // The copy from builder: the source's key.
    let why = explain(
        &recipe(&a_ir, "[stage-2 2/3]"),
        &recipe(&b_ir, "[stage-2 2/3]"),
    );
    assert_eq!(fields(&why), [RecipeField::CopyFrom]);
}

fn fields(changes: &[KeyChange]) -> Vec<RecipeField> {
    changes.iter().map(|c| c.field).collect()
}

#[test]
fn a_run_text_change_invalidates_that_step_and_after() {
    let a_ir = fixture(&Knobs::default());
    let b_ir = fixture(&Knobs {
        make: "make -j4 VERSION=1.0",
        ..Knobs::default()
    });
    assert_eq!(
        changed(&keys(&a_ir), &keys(&b_ir)),
        [
            "[builder 4/5]",
            "[builder 5/5]",
            "[stage-2 2/3]",
            "[stage-2 3/3]"
        ]
    );
    let why = explain(
        &recipe(&a_ir, "[builder 4/5]"),
        &recipe(&b_ir, "[builder 4/5]"),
    );
    assert_eq!(fields(&why), [RecipeField::Op]);
    assert_eq!(
        why[0].to_string(),
        "op: RUN make VERSION=1.0 -> RUN make -j4 VERSION=1.0"
    );
    let why = explain(
        &recipe(&a_ir, "[builder 5/5]"),
        &recipe(&b_ir, "[builder 5/5]"),
    );
    assert_eq!(fields(&why), [RecipeField::Parent]);
}

#[test]
fn a_declared_arg_value_change_invalidates_from_the_arg_on() {
    let a_ir = fixture(&Knobs::default());
    let b_ir = fixture(&Knobs {
        version: "2.0",
        ..Knobs::default()
    });
    let (a, b) = (keys(&a_ir), keys(&b_ir));
    assert_eq!(
        changed(&a, &b),
        [
            "[builder 2/5]", // ARG VERSION
            "[builder 3/5]",
            "[builder 4/5]",
            "[builder 5/5]",
            "[stage-2 2/3]",
            "[stage-2 3/3]",
        ]
    );
    let why = explain(
        &recipe(&a_ir, "[builder 3/5]"),
        &recipe(&b_ir, "[builder 3/5]"),
    );
    assert_eq!(fields(&why), [RecipeField::Parent, RecipeField::Args]);
    assert_eq!(why[1].item.as_deref(), Some("VERSION"));
    assert_eq!(why[1].to_string(), r#"args VERSION: "1.0" -> "2.0""#);
}

#[test]
fn an_env_change_in_one_stage_does_not_touch_an_independent_one() {
    let a = keys(&fixture(&Knobs::default()));
    let b = keys(&fixture(&Knobs {
        docs_lang: "C.UTF-8",
        ..Knobs::default()
    }));
    assert_eq!(
        changed(&a, &b),
        [
            "[docs 2/3]",
            "[docs 3/3]",
            "[stage-2 3/3]", // COPY --from=docs
        ]
    );
}

#[test]
fn explain_of_equal_recipes_is_empty() {
    let ir = fixture(&Knobs::default());
    let r = recipe(&ir, "[builder 4/5]");
    assert!(explain(&r, &r.clone()).is_empty());
    let digest = SourceDigest::from_bytes([7; 32]);
    let why = explain(&r, &r.clone().with_sources(digest));
    assert_eq!(fields(&why), [RecipeField::Sources]);
    assert_eq!(
        why[0].to_string(),
        format!("sources: (none) -> blake3:{}", "07".repeat(32))
    );
}

fn states(
    ir: &Ir,
    known_sources: &dyn Fn(NodeIndex) -> Option<SourceDigest>,
) -> (BuildGraph, Vec<KeyState>) {
    let g = compile(ir, &[]).expect("compiles");
    let keys = compute_keys(&g, known_sources);
    (g, keys)
}

#[test]
fn an_unresolved_base_leaves_its_stage_and_dependents_pending() {
    let ir = fixture(&Knobs {
        builder_base: image("alpine:3.20"),
        ..Knobs::default()
    });
    let (g, keys) = states(&ir, &|_| None);
    let base = g.stage_nodes(StageId(0))[0];
    let expected = PendingCause::UnresolvedBase {
        reference: "alpine:3.20".into(),
    };
    for n in g.stage_nodes(StageId(0)) {
        match &keys[n.index()] {
            KeyState::Pending(r) => {
                assert_eq!(r.node, base, "{}", g.label(*n));
                assert_eq!(r.cause, expected);
            }
            KeyState::Known(_) => panic!("{} should be pending", g.label(*n)),
        }
    }
    // The independent stage is known; the final stage is pending from the copy on,
    // with the reason of the first pending ancestor.
    for n in g.stage_nodes(StageId(1)) {
        assert!(!keys[n.index()].is_pending(), "{}", g.label(*n));
    }
    let last = g.stage_nodes(StageId(2));
    assert!(!keys[last[0].index()].is_pending(), "FROM scratch");
    for n in &last[1..] {
        assert!(
            matches!(&keys[n.index()], KeyState::Pending(r) if r.node == base),
            "{}",
            g.label(*n)
        );
    }
    insta::assert_snapshot!("pending_base_plan", g.plan_text());
    assert_eq!(g.unresolved_bases().len(), 1);

    // Resolving it makes every key known.
    let ir = fixture(&Knobs::default());
    let (g, keys) = states(&ir, &|_| None);
    assert!(keys.iter().all(|k| !k.is_pending()));
    assert!(g.unresolved_bases().is_empty());
}

#[test]
fn another_base_digest_is_another_key() {
    let a = keys(&fixture(&Knobs::default()));
    let b = keys(&fixture(&Knobs {
        builder_base: image_at("alpine:3.20", DEBIAN_DIGEST),
        ..Knobs::default()
    }));
    let c = changed(&a, &b);
    assert_eq!(c[0], "[builder 1/5]");
    assert_eq!(c.len(), 7, "{c:?}");
}

#[test]
fn deferred_variables_leave_a_step_pending() {
    let mut ir = fixture(&Knobs::default());
    ir.stages[0].steps[2].deferred.insert("GOPATH".into());
    let (g, keys) = states(&ir, &|_| None);
    let run = g.stage_nodes(StageId(0))[3];
    assert_eq!(
        keys[run.index()],
        KeyState::Pending(forge_graph::PendingReason {
            node: run,
            cause: PendingCause::Deferred {
                vars: vec!["GOPATH".into()]
            }
        })
    );
    assert!(g
        .plan_text()
        .contains("RUN make VERSION=1.0  key=pending(uses $GOPATH from an unresolved base)"));
}

fn context_build(chmod: Option<&str>) -> Ir {
    IrB::new()
        .stage(Some("app"), image_at("alpine:3.20", ALPINE_DIGEST), |s| {
            let mut copy = common::copy_op(forge_ir::SourceRef::Context, &["src/"], "/src/");
            copy.chmod = chmod.map(String::from);
            s.step("COPY src/ /src/", Op::Copy(copy))
                .run("make -C /src")
        })
        .target("app", 0)
        .build()
}

#[test]
fn context_sources_are_pending_until_hashed() {
    let ir = context_build(None);
    let (g, keys) = states(&ir, &|_| None);
    let copy = g.stage_nodes(StageId(0))[1];
    assert!(g.needs_sources(copy));
    assert_eq!(
        keys[copy.index()],
        KeyState::Pending(forge_graph::PendingReason {
            node: copy,
            cause: PendingCause::UnhashedSources
        })
    );

    let meta = EntryMeta {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let mut h = SourceHasher::new();
    h.file(b"main.c", b"int main(void) { return 0; }\n", meta);
    let v1 = h.finish();
    h.file(b"main.c", b"int main(void) { return 1; }\n", meta);
    let v2 = h.finish();
    assert_ne!(v1, v2);

    let with = |d: SourceDigest| move |n: NodeIndex| (n == copy).then_some(d);
    let (_, k1) = states(&ir, &with(v1));
    let (_, k1_again) = states(&ir, &with(v1));
    let (_, k2) = states(&ir, &with(v2));
    assert!(k1.iter().all(|k| !k.is_pending()));
    assert_eq!(k1, k1_again);
    // The base is unchanged; the copy and the RUN after it change with the content.
    assert_eq!(k1[0], k2[0]);
    assert_ne!(k1[1], k2[1]);
    assert_ne!(k1[2], k2[2]);
    // Flags of the copy are in the key, too.
    let (_, k3) = states(&context_build(Some("0755")), &with(v1));
    assert_ne!(k1[1], k3[1]);
}

#[test]
fn source_digests_cover_content_mode_owner_and_kind_not_order() {
    let meta = EntryMeta {
        mode: 0o644,
        uid: 0,
        gid: 0,
    };
    let digest = |f: &dyn Fn(&mut SourceHasher)| {
        let mut h = SourceHasher::new();
        f(&mut h);
        h.finish()
    };
    let base = digest(&|h| h.file(b"a", b"x", meta));
    assert_ne!(base, digest(&|h| h.file(b"a", b"y", meta)));
    assert_ne!(base, digest(&|h| h.file(b"b", b"x", meta)));
    assert_ne!(
        base,
        digest(&|h| h.file(
            b"a",
            b"x",
            EntryMeta {
                mode: 0o755,
                ..meta
            }
        ))
    );
    assert_ne!(
        base,
        digest(&|h| h.file(b"a", b"x", EntryMeta { uid: 1000, ..meta }))
    );
    assert_ne!(base, digest(&|h| h.symlink(b"a", b"x", meta)));
    assert_eq!(
        digest(&|h| {
            h.file(b"a", b"x", meta);
            h.dir(b"d", meta);
        }),
        digest(&|h| {
            h.dir(b"d", meta);
            h.file(b"a", b"x", meta);
        })
    );
}

#[test]
fn image_sources_wait_for_their_content() {
    let ir = IrB::new()
        .stage(Some("app"), Base::Scratch, |s| {
            s.copy_from_image("busybox:1.36", &["/bin/busybox"], "/bin/")
        })
        .target("app", 0)
        .build();
    let (g, keys) = states(&ir, &|_| None);
    let img = g.image_node("busybox:1.36").expect("an image node");
    let copy = g.stage_nodes(StageId(0))[1];
    assert!(!g.needs_sources(copy), "reads the image, not the context");
    for n in [img, copy] {
        assert_eq!(
            keys[n.index()],
            KeyState::Pending(forge_graph::PendingReason {
                node: img,
                cause: PendingCause::UnresolvedImage {
                    reference: "busybox:1.36".into()
                }
            })
        );
    }
    let d = SourceDigest::from_bytes([1; 32]);
    let (_, keys) = states(&ir, &|n| (n == img).then_some(d));
    assert!(keys.iter().all(|k| !k.is_pending()));
    assert!(!g.plan_text().contains("unresolved: none"));
}

fn run_with_mount(m: forge_ir::Mount) -> Ir {
    IrB::new()
        .stage(Some("app"), Base::Scratch, |s| {
            s.step(
                "RUN --mount=... make",
                Op::Run(RunOp {
                    mounts: vec![m],
                    ..run_op("make")
                }),
            )
        })
        .target("app", 0)
        .build()
}

#[test]
fn mounts_are_keyed_by_spec_not_contents() {
    let cache = mount(MountKind::Cache, "/root/.cache");
    let k = |m: forge_ir::Mount| keys(&run_with_mount(m))["[app 2/2]"].clone();
    // A cache mount's id defaults to its target.
    let mut with_id = cache.clone();
    with_id.id = Some("/root/.cache".into());
    assert_eq!(k(cache.clone()), k(with_id));
    let mut other_id = cache.clone();
    other_id.id = Some("go-build".into());
    assert_ne!(k(cache.clone()), k(other_id));
    let mut locked = cache.clone();
    locked.sharing = forge_ir::CacheSharing::Locked;
    assert_ne!(k(cache.clone()), k(locked));
    // A secret mount has no content in the IR at all; its id is in the key.
    let mut secret = mount(MountKind::Secret, "/run/secrets/token");
    secret.id = Some("token".into());
    assert!(!k(secret).is_pending());
    // A bind mount of the context waits for the context's digest.
    let bind = mount(MountKind::Bind, "/src");
    assert!(k(bind).is_pending());
}

#[test]
fn cache_keys_parse_and_print() {
    let k = KeyRecipe::new(RecipeKind::Scratch).key();
    let text = k.to_string();
    assert!(text.starts_with("blake3:"));
    assert_eq!(text.len(), 7 + 64);
    assert_eq!(k.short(), &text[7..19]);
    assert_eq!(text.parse::<CacheKey>(), Ok(k));
    assert_eq!(format!("{k:?}"), text);
    for bad in [
        "sha256:71d9e1173136ef0efc88e55a7c3e4e3e8d1e9fc84eaedbe9c94a5d2d4a1bc2f3",
        "blake3:71d9",
        "blake3:71D9E1173136EF0EFC88E55A7C3E4E3E8D1E9FC84EAEDBE9C94A5D2D4A1BC2F3",
        "blake3:zz d9e1173136ef0efc88e55a7c3e4e3e8d1e9fc84eaedbe9c94a5d2d4a1bc2f",
    ] {
        assert!(bad.parse::<CacheKey>().is_err(), "{bad}");
    }
}

#[test]
fn explain_records_survive_json_and_name_what_changed() {
    use forge_graph::{explain, explain_records, ExplainRecord, KeyRecipe, RecipeKind};
    let mut a = KeyRecipe::new(RecipeKind::Step);
    a.env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
    a.user = "app".into();
    let mut b = a.clone();
    b.env = vec![("A".into(), "1".into()), ("B".into(), "3".into())];
    b.workdir = "/srv".into();
    let stored = serde_json::to_string(&ExplainRecord::of(&a)).expect("serializes");
    let before: ExplainRecord = serde_json::from_str(&stored).expect("reads back");
    let from_records: Vec<String> = explain_records(&before, &ExplainRecord::of(&b))
        .iter()
        .map(ToString::to_string)
        .collect();
    let direct: Vec<String> = explain(&a, &b).iter().map(ToString::to_string).collect();
    assert_eq!(from_records, direct);
    assert_eq!(from_records.len(), 2, "{from_records:?}");
    assert!(
        from_records.iter().any(|c| c.starts_with("env B")),
        "{from_records:?}"
    );
    assert!(explain_records(&before, &before).is_empty());
}
