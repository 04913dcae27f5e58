//! The shell-word lexer: variable expansion and word splitting as BuildKit does them.
//!
//! This is a reimplementation of the behaviour of BuildKit's Dockerfile shell lexer
//! (`frontend/dockerfile/shell`), which is what `docker build` uses to expand `ARG` and
//! `ENV` values in instruction arguments. It is *not* a POSIX shell: there are no
//! commands, arithmetic or globbing of files, just these pieces:
//!
//! * `$NAME`, `${NAME}`; a name is letters (Unicode category L), digits and `_`. `$1`,
//!   `$999` (positional) and `$@ $* $# $? $- $$ $! $0` (special) are names too, normally
//!   unset. A `$` not followed by a name (`$.`, `$` at the end) is literal.
//! * `${V:-word}` / `${V-word}`: `word` if `V` is unset (or, with `:`, empty);
//!   `${V:+word}` / `${V+word}`: `word` if `V` is set (and, with `:`, non-empty);
//!   `${V:?msg}` / `${V?msg}`: an error `V: msg` if `V` is unset (or, with `:`, empty).
//! * `${V#pat}` / `${V##pat}`: remove the shortest / longest matching prefix;
//!   `${V%pat}` / `${V%%pat}`: the same for suffixes; `${V/pat/rep}` replaces the first
//!   (longest) match, `${V//pat/rep}` every match. In patterns `*` and `?` are wildcards
//!   that do not match newlines; `[` is literal; `\` escapes `*`, `?`, `\`, `}` and `/`.
//!   In `${V//pat/rep}` the replacement is a Go regexp template (as in BuildKit): `$0`
//!   stands for the match and `$$` for `$`.
//! * `'...'` is literal; in `"..."` only `$` expands and the escape character escapes
//!   only `"`, `$` and itself. Outside quotes the escape character (`\`, or the backtick
//!   chosen by an `escape` parser directive) escapes any character; one at the very end
//!   is dropped.
//! * [`Lexer::process_words`] splits at unquoted whitespace, including whitespace that
//!   comes from an expansion; `<<` and the blanks after it stay in one word (heredocs).
//!
//! Known differences from BuildKit, all for inputs BuildKit mishandles:
//! BuildKit's word splitter loses the text before a `${V<op>...}` in the same word
//! (`a${V:-b}` splits to `["b"]`; here `["ab"]`); `${V` with no `}` is reported as
//! `missing '}'` (BuildKit: `unsupported modifier (\u{FFFD})`); with
//! [`Lexer::skip_unset_env`], `${V//p/r}` is kept as written (BuildKit drops a `/`);
//! pattern errors quote the pattern as written (BuildKit quotes it reversed for `%`);
//! and `${...}` may nest at most 64 deep.
//!
//! ```
//! use std::collections::BTreeMap;
//! use forge_frontend::shell::{Lexer, ShellError};
//!
//! let env = BTreeMap::from([
//!     ("NAME".to_string(), "world".to_string()),
//!     ("FILE".to_string(), "/src/app.tar.gz".to_string()),
//! ]);
//! let lexer = Lexer::new('\\');
//!
//! let out = lexer.process_word(r#"hello ${NAME:-nobody} '$NAME' ${FILE##*/} ${FILE%%.*}"#, &env)?;
//! assert_eq!(out.value, "hello world $NAME app.tar.gz /src/app");
//! assert!(out.used.contains("NAME") && out.used.contains("FILE"));
//!
//! let out = lexer.process_words(r#"a ${NAME}s "b  c" ${UNSET}"#, &env)?;
//! assert_eq!(out.words, ["a", "worlds", "b  c"]);
//!
//! let err = lexer.process_word("${NAME:?}${MISSING:?must be set}", &env).unwrap_err();
//! assert_eq!(err, ShellError { message: "MISSING: must be set".into(), offset: 9 });
//! # Ok::<(), ShellError>(())
//! ```

mod lex;
mod pattern;
mod unicode;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

/// What a variable lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The variable is set to this value (possibly empty).
    Set(String),
    /// The variable is not set.
    Unset,
    /// The variable may be set but its value is not known now (it comes from a base image
    /// that was not resolved). Expansion treats it as unset and records its name in
    /// [`Expansion::unknown`].
    Unknown,
}

/// Where variable values come from.
///
/// Implemented for maps and for lists of pairs (where the last pair for a name wins; pass
/// a slice as `&slice`, since `&[_]` itself cannot become a `&dyn Env`); implement it
/// directly for anything smarter, such as a scope that can answer [`Lookup::Unknown`].
pub trait Env {
    /// Looks up one variable. Names are compared exactly (case-sensitive).
    fn lookup(&self, name: &str) -> Lookup;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Lookup {
        self.get(name)
            .map_or(Lookup::Unset, |v| Lookup::Set(v.clone()))
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Lookup {
        self.get(name)
            .map_or(Lookup::Unset, |v| Lookup::Set(v.clone()))
    }
}

impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Lookup {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or(Lookup::Unset, |(_, v)| Lookup::Set(v.clone()))
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Lookup {
        self.as_slice().lookup(name)
    }
}

impl<E: Env + ?Sized> Env for &E {
    fn lookup(&self, name: &str) -> Lookup {
        (**self).lookup(name)
    }
}

/// The result of expanding a word into one word ([`Lexer::process_word`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, quotes and escapes removed.
    pub value: String,
    /// Every variable referenced whose value was found (BuildKit's "matches"), including
    /// ones whose value did not end up in the result (such as `V` in `${V:+x}`).
    pub used: BTreeSet<String>,
    /// Every variable referenced whose lookup returned [`Lookup::Unknown`].
    pub unknown: BTreeSet<String>,
}

/// The result of expanding a word and splitting it into words ([`Lexer::process_words`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansions {
    /// The words, quotes and escapes removed; never empty strings.
    pub words: Vec<String>,
    /// Every variable referenced whose value was found.
    pub used: BTreeSet<String>,
    /// Every variable referenced whose lookup returned [`Lookup::Unknown`].
    pub unknown: BTreeSet<String>,
}

/// An error in a word, with the byte offset within the word where it was found.
///
/// The offset points at the construct that failed: the opening quote of an unterminated
/// quoted string, or the `$` of a bad substitution. The message reads like BuildKit's
/// (`syntax error: missing '}'`, `VAR: is not allowed to be unset`, ...); context such as
/// the word itself is for the caller to add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellError {
    /// What is wrong.
    pub message: String,
    /// Byte offset within the word.
    pub offset: usize,
}

/// Expands words the way BuildKit's Dockerfile lexer does. Cheap to create and copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    raw_quotes: bool,
    raw_escapes: bool,
    skip_unset_env: bool,
    skip_process_quotes: bool,
}

impl Default for Lexer {
    /// A lexer with the default escape character `\`.
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character: `'\\'`, or `` '`' `` for Dockerfiles
    /// with `# escape=``.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Keep quote characters in the output instead of removing them (BuildKit's
    /// `RawQuotes`, used to tell quoted heredoc markers from unquoted ones).
    pub fn raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Keep escape characters in the output (BuildKit's `RawEscapes`).
    pub fn raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Leave references to unset (or unknown) variables as written, e.g. `$V`, `${V}`,
    /// `${V:-word}` with `word` expanded (BuildKit's `SkipUnsetEnv`), instead of expanding
    /// them as empty; `${V:?msg}` then does not fail for unset `V`.
    pub fn skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Treat quotes as ordinary characters (BuildKit's `SkipProcessQuotes`, used for
    /// instructions whose arguments are not shell words).
    pub fn skip_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Expands `word` into one word (BuildKit's `ProcessWord`): variables expanded,
    /// quotes and escapes removed, whitespace kept as it is.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut scan = lex::Scan::new(word, self, env);
        let value = scan.run(None)?;
        Ok(Expansion {
            value,
            used: scan.used,
            unknown: scan.unknown,
        })
    }

    /// Expands `word` and splits it into words the way the shell would (BuildKit's
    /// `ProcessWords`): unquoted whitespace, written or coming from an expansion,
    /// separates words; quoted or escaped whitespace does not; empty words vanish.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Expansions, ShellError> {
        let mut scan = lex::Scan::new(word, self, env);
        let mut words = lex::Words::default();
        scan.run(Some(&mut words))?;
        Ok(Expansions {
            words: words.finish(),
            used: scan.used,
            unknown: scan.unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn word(input: &str, env: &dyn Env) -> Result<String, ShellError> {
        Lexer::default().process_word(input, env).map(|e| e.value)
    }

    #[test]
    fn last_pair_wins() {
        let e = env(&[("foo", "bar"), ("car", "hat"), ("car", "bike")]);
        assert_eq!(e.lookup("car"), Lookup::Set("bike".into()));
        assert_eq!(e.lookup("foo"), Lookup::Set("bar".into()));
        assert_eq!(e.lookup("nope"), Lookup::Unset);
        assert_eq!(e.as_slice().lookup("car"), Lookup::Set("bike".into()));
    }

    #[test]
    fn basic_expansion() {
        let e = env(&[("A", "x y"), ("E", "")]);
        assert_eq!(word("$A-${A}-${E:-d}-${E-d}", &e), Ok("x y-x y-d-".into()));
        assert_eq!(word("'$A' \"$A\" \\$A", &e), Ok("$A x y $A".into()));
        let words = Lexer::default().process_words("1 $A \"$A\"", &e);
        assert_eq!(
            words.map(|w| w.words),
            Ok(vec!["1".into(), "x".into(), "y".into(), "x y".into()])
        );
    }

    #[test]
    fn error_offsets_point_at_the_construct() {
        let e = env(&[]);
        let at = |s: &str| word(s, &e).map_err(|e| (e.offset, e.message));
        assert_eq!(
            at("ab 'cd"),
            Err((
                3,
                "unexpected end of statement while looking for matching single-quote".into()
            ))
        );
        assert_eq!(
            at("a\"b"),
            Err((
                1,
                "unexpected end of statement while looking for matching double-quote".into()
            ))
        );
        assert_eq!(at("xx${A"), Err((2, "syntax error: missing '}'".into())));
        assert_eq!(at("x${A:-${B:?no}}"), Err((6, "B: no".into())));
        assert_eq!(
            at("x${A:-${B:?no}"),
            Err((1, "syntax error: missing '}'".into()))
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "${A:-".repeat(100_000);
        let err = word(&deep, &env(&[]));
        assert!(err.is_err());
        let ok = format!("{}x{}", "${A:-".repeat(60), "}".repeat(60));
        assert_eq!(word(&ok, &env(&[])), Ok("x".into()));
    }
}
