//! forge's frontends: the Dockerfile and forge.toml parsers, and the one IR both lower to.
//!
//! ```text
//! Dockerfile ──dockerfile::parse──┐
//!                                  ├─► syntax::BuildFile ──lower──► ir::Ir
//! forge.toml ──forge_toml::parse──┘      (typed, unexpanded)        (expanded, scoped)
//! ```
//!
//! **Architecture invariant:** this crate does no I/O beyond reading build files;
//! facts about base images come through [`resolve::BaseResolver`].

pub mod dockerfile;
pub mod error;
pub mod forge_toml;
pub mod lower;
pub mod resolve;
pub mod shell;
pub mod syntax;

pub use forge_ir as ir;

pub use error::{FrontendError, Problem, Result};

/// The candidate closest to `word` by edit distance, if it is close enough to be a
/// plausible typo (for "did you mean" help lines).
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(3) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance over chars: Levenshtein plus swaps of two
/// adjacent letters at cost 1 (`rnu` is one edit from `run`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j]: distance between a[..i] and b[..j]
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            super::suggest("tagret", &["target", "type"]),
            Some("target")
        );
        assert_eq!(super::suggest("RUNN", &["RUN", "COPY"]), Some("RUN"));
        assert_eq!(super::suggest("xyzzy", &["RUN", "COPY"]), None);
        assert_eq!(super::suggest("rnu", &["run", "copy"]), Some("run"));
        assert_eq!(super::suggest("bsae", &["base", "app"]), Some("base"));
    }
}
