//! The build context: what `COPY` and `ADD` may read, and the digest that goes
//! into their cache keys.
//!
//! # Flow
//!
//! 1. [`Context::open`] finds the ignore file (`<Dockerfile>.dockerignore`
//!    beside the Dockerfile first, else `<context>/.dockerignore`, BuildKit's
//!    rule) and compiles it with docker's rules ([`dockerignore`]).
//! 2. [`Context::scan`] walks the context in sorted order without following
//!    symlinks, skips what the patterns exclude (entering an excluded directory
//!    only when an exception could re-include something below it, fsutil's rule;
//!    such a directory is listed only if something below it is), and gives every
//!    regular file a blake3 digest. The result is an [`Index`].
//! 3. [`Index::select`] resolves a COPY/ADD's sources (paths, Go `filepath.Match`
//!    wildcards, `--exclude`) into a [`Selection`], and
//!    [`Selection::digest`] names its content with `forge_graph`'s
//!    [`SourceHasher`](forge_graph::SourceHasher): relative paths, bytes, modes,
//!    owners and link targets, never mtimes or inode numbers.
//!
//! # The stat cache
//!
//! Hashing the whole context on every build would make a no-op rebuild cost a
//! read of every byte. Like git's index, the stat cache ([`statcache`] has the
//! file format) remembers each file's digest with its `(dev, inode, size,
//! mtime_ns, ctime_ns, st_mode)`; a file whose `lstat` still gives those values
//! reuses its digest, so a no-op rebuild costs about one `lstat` per file. An
//! entry whose mtime or ctime is too close to the scan that hashed it is
//! *racily clean* and is hashed again (an edit in the same timestamp tick could
//! otherwise go unseen). [`Context::scan_verify`] trusts nothing
//! (`--verify-context`). Files that need hashing are hashed in parallel (rayon),
//! each opened with `O_NOFOLLOW` and checked to still be a regular file.
//!
//! # Why our own pattern matcher
//!
//! Docker's `.dockerignore` semantics are moby/patternmatcher's, which differ
//! from gitignore's in ways the `ignore` and `globset` crates cannot express
//! (anchoring, parent-match, exception order, `**` inside components, and the
//! regexp quirks of patternmatcher's translation). [`dockerignore`] implements
//! them, with Go's `filepath.Match` and `path.Clean` reimplemented in
//! [`gomatch`]; the module docs list the rules and the few documented
//! divergences (regexp-only syntax like `\d` is refused rather than guessed).

pub mod dockerignore;
mod error;
pub mod gomatch;
mod scan;
mod select;
pub mod statcache;

pub use dockerignore::{MatchInfo, Pattern, PatternError, PatternMatcher};
pub use error::{ContextError, InvalidIgnorePattern, Result};
pub use scan::{Context, Entry, EntryKind, Index, ScanOptions, ScanStats};
pub use select::{SelectedEntry, SelectedRoot, Selection};
