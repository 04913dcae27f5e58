//! `--explain-cache`: for a step that missed the cache, which inputs of its
//! key changed since the last build of the same step position.
//!
//! After every step the driver stores the step's [`ExplainRecord`] (its key
//! recipe, rendered) in the store under a *slot*: a hash of the build's
//! identity (given by the caller: the build file and context), the stage and
//! the step's index. On a miss, the record of the same slot from the previous
//! build is compared with this one ([`forge_graph::explain_records`]). A
//! change of `parent` alone means an earlier step changed.

use forge_cache::store::Store;
use forge_graph::{explain_records, ExplainRecord, KeyRecipe};
use forge_ir::Stage;

/// The slot of a step: blake3 of the build's identity, the stage's name (or
/// index) and the step's index.
pub fn slot(build_id: &str, stage: &Stage, index: usize) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"forge-step-slot\0");
    for part in [
        build_id,
        &stage.name.clone().unwrap_or_else(|| stage.id.0.to_string()),
        &index.to_string(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Why the step at `slot` missed: the changed inputs, one line each; a line
/// saying there is no earlier record when there is none.
pub fn why_missed(store: &Store, slot: &str, recipe: &KeyRecipe) -> Vec<String> {
    let previous = store
        .step_record_get(slot)
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<ExplainRecord>(&bytes).ok());
    let Some(previous) = previous else {
        return vec!["no earlier build of this step to compare with".to_string()];
    };
    let changes = explain_records(&previous, &ExplainRecord::of(recipe));
    if changes.is_empty() {
        // Same inputs as last time: the entry was removed (pruned, or the
        // last build of this step failed or ran with --no-cache elsewhere).
        return vec!["same inputs as the last build; its cache entry is gone".to_string()];
    }
    changes
        .iter()
        .map(|c| {
            if c.field == forge_graph::RecipeField::Parent {
                "parent: an earlier step changed".to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Stores the record of `recipe` at `slot` (best effort: a record only
/// explains, a failure to write one must not fail the build).
pub fn remember(store: &Store, slot: &str, recipe: &KeyRecipe) {
    if let Ok(bytes) = serde_json::to_vec(&ExplainRecord::of(recipe)) {
        let _ = store.step_record_put(slot, &bytes);
    }
}
