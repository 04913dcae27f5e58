//! Architecture invariants that the compiler cannot see, checked from `cargo metadata`.
//!
//! The crate graph is the architecture: if the graph crate could reach the
//! frontend, nothing would stop it from learning Dockerfile syntax.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// (crate, crates it must never depend on, directly or not).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "forge-ir",
        &[
            "forge-frontend",
            "forge-graph",
            "forge-executor",
            "forge-cache",
        ],
    ),
    (
        "forge-graph",
        &["forge-frontend", "forge-executor", "forge-cache"],
    ),
    ("forge-executor", &["forge-frontend"]),
    (
        "forge-cache",
        &[
            "forge-frontend",
            "forge-graph",
            "forge-executor",
            "forge-ir",
        ],
    ),
    (
        "forge-frontend",
        &["forge-graph", "forge-executor", "forge-cache"],
    ),
    (
        "forge-context",
        &["forge-frontend", "forge-executor", "forge-cache"],
    ),
    (
        "forge-registry",
        &[
            "forge-frontend",
            "forge-graph",
            "forge-executor",
            "forge-ir",
            "forge-context",
        ],
    ),
];

fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let mut edges = BTreeMap::new();
    for package in meta["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("name").to_string();
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null()) // normal deps only; dev-deps may cross
            .filter_map(|d| d["name"].as_str())
            .filter(|n| n.starts_with("forge-"))
            .map(str::to_string)
            .collect();
        edges.insert(name, deps);
    }
    edges
}

fn reachable(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(n) = todo.pop() {
        for d in edges.get(&n).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn forbidden_crate_edges_are_absent() {
    let edges = workspace_edges();
    for (krate, banned) in FORBIDDEN {
        assert!(
            edges.contains_key(*krate),
            "{krate} is not in the workspace"
        );
        let reach = reachable(&edges, krate);
        for b in *banned {
            assert!(
                !reach.contains(*b),
                "{krate} depends on {b}, which ARCHITECTURE.md forbids"
            );
        }
    }
}

#[test]
fn graph_reads_the_ir() {
    // The positive half: the graph is compiled from the IR crate.
    let edges = workspace_edges();
    assert!(edges["forge-graph"].contains("forge-ir"));
    assert!(edges["forge-frontend"].contains("forge-ir"));
}
