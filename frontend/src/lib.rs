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

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn suggests_close_words_only() {
        assert_eq!(super::suggest("tagret", &["target", "type"]), Some("target"));
        assert_eq!(super::suggest("RUNN", &["RUN", "COPY"]), Some("RUN"));
        assert_eq!(super::suggest("xyzzy", &["RUN", "COPY"]), None);
    }
}
