//! The crate's one error type.

use miette::Diagnostic;
use thiserror::Error;

/// Everything [`compile`](crate::compile) can refuse.
#[derive(Debug, Clone, PartialEq, Eq, Error, Diagnostic)]
pub enum GraphError {
    /// A requested target is neither a target nor a group of the build.
    #[error("unknown target `{name}`")]
    #[diagnostic(code("graph::unknown-target"), help("{}", known_help(known)))]
    UnknownTarget {
        /// The name asked for.
        name: String,
        /// The targets (and groups) the build has, sorted.
        known: Vec<String>,
    },

    /// Stages need each other, so none of them can be built first.
    #[error("stages depend on each other: {}", cycle.join(" -> "))]
    #[diagnostic(
        code("graph::cycle"),
        help(
            "{}; a stage cannot need itself through FROM, COPY --from or RUN --mount from=",
            hops.join(", ")
        )
    )]
    Cycle {
        /// The stages of the cycle in order, each needing the next; the first is
        /// repeated at the end (`["a", "b", "a"]`).
        cycle: Vec<String>,
        /// One line per hop saying why (`a needs b (FROM)`).
        hops: Vec<String>,
    },

    /// The IR refers to a stage that does not exist (a bug in whatever produced it).
    #[error("{referrer} refers to stage #{stage}, but the build has {count} stages")]
    #[diagnostic(
        code("graph::invalid-ir"),
        help("this is a bug in forge's lowering; please report it with the build file")
    )]
    DanglingStage {
        /// The stage index referred to.
        stage: usize,
        /// Who refers to it (`target app`, `stage builder`).
        referrer: String,
        /// How many stages there are.
        count: usize,
    },

    /// A string that should be a cache key or source digest is not one.
    #[error("invalid blake3 digest `{text}`: {reason}")]
    #[diagnostic(
        code("graph::invalid-key"),
        help("a cache key looks like blake3:<64 lowercase hex digits>")
    )]
    InvalidKey {
        /// What was given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn known_help(known: &[String]) -> String {
    if known.is_empty() {
        "this build defines no targets".to_string()
    } else {
        format!("known targets: {}", known.join(", "))
    }
}
