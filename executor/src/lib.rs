//! forge's executor: runs the steps of a build graph.
//!
//! Its parts arrive with the build issues: the Linux-namespace sandbox for RUN
//! (re-exec of forge's own binary, overlayfs over layer snapshots), layer making
//! from the sandbox's upper directory, and the parallel scheduler that walks
//! `forge_graph::BuildGraph` in dependency order.
//!
//! **Architecture invariant:** the executor knows no Dockerfile syntax. It reads the
//! IR (`forge-ir`) and the graph (`forge-graph`), never `forge-frontend`.
