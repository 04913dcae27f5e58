//! forge's own settings: `config.toml` at the store root (`$FORGE_HOME`) and
//! in `$XDG_CONFIG_HOME/forge/` (`~/.config/forge/`): the step cache's size
//! cap and how registries are reached. Both files take the same tables; a
//! key set in the store's file wins.
//!
//! ```toml
//! [cache]
//! max-size = "10GB"   # also 10000000000, "9.5GiB", "500MB", "0"
//!
//! [registries]
//! insecure = ["registry.lan:5000"]   # plain HTTP (localhost and 127/8 always are)
//! search = "registry.lan:5000"       # `forge search TERM` asks this one
//! chunk-size = "16MiB"               # larger blobs go up in PATCH chunks
//! [registries.mirrors]
//! "docker.io" = ["mirror.lan:5000"]  # read from these first
//! ```
//!
//! No file means no settings (no cap). The file is read with the `toml`
//! crate into a serde schema that denies unknown keys; its first problem (a
//! syntax error, an unknown key, a value of the wrong type) or an invalid size
//! is reported pointing at its line and column, like forge.toml's.

use std::path::Path;

use clap::{Arg, ArgMatches, Args, FromArgMatches};
use forge_cache::step_cache::CacheCapReport;
use forge_cache::store::{Store, PRUNE_GRACE};
use forge_frontend::syntax::SourceFile;
use forge_frontend::{FrontendError, Problem};
use miette::SourceSpan;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;

use crate::images::{self, open_store};
use crate::{human, Failure};

/// The file's name, in the store root.
pub(crate) const CONFIG_FILE: &str = "config.toml";

/// The units a size may have, and their factors.
const UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// What `config.toml` sets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// `[cache] max-size`, in bytes.
    pub(crate) cache_max_size: Option<u64>,
    /// `[registries]`.
    pub(crate) registries: RegistriesConfig,
}

/// `[registries]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RegistriesConfig {
    /// `insecure`: reached over plain HTTP.
    pub(crate) insecure: Vec<String>,
    /// `search`: the registry `forge search TERM` asks.
    pub(crate) search: Option<String>,
    /// `chunk-size`, in bytes.
    pub(crate) chunk_size: Option<u64>,
    /// `[registries.mirrors]`.
    pub(crate) mirrors: std::collections::BTreeMap<String, Vec<String>>,
}

impl Config {
    /// `self` with what `over` sets put over it.
    fn merged(self, over: Config) -> Config {
        let (a, b) = (self.registries, over.registries);
        Config {
            cache_max_size: over.cache_max_size.or(self.cache_max_size),
            registries: RegistriesConfig {
                insecure: a.insecure.into_iter().chain(b.insecure).collect(),
                search: b.search.or(a.search),
                chunk_size: b.chunk_size.or(a.chunk_size),
                mirrors: a.mirrors.into_iter().chain(b.mirrors).collect(),
            },
        }
    }
}

/// The user's `config.toml`: `$XDG_CONFIG_HOME/forge/config.toml`, else
/// `~/.config/forge/config.toml`.
fn user_config_file() -> Option<std::path::PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("forge").join(CONFIG_FILE))
}

/// Reads the user's `config.toml` and the one at the store root `root`
/// (absent files: the defaults), the store's over the user's.
pub(crate) fn load(root: &Path) -> Result<Config, Failure> {
    let user = match user_config_file() {
        Some(path) => load_file(&path)?,
        None => Config::default(),
    };
    Ok(user.merged(load_file(&root.join(CONFIG_FILE))?))
}

/// Reads one `config.toml` (absent: the defaults).
fn load_file(path: &Path) -> Result<Config, Failure> {
    let path = path.to_path_buf();
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(source) => {
            return Err(FrontendError::Read {
                path: path.display().to_string(),
                source,
            }
            .into())
        }
    };
    Ok(parse(&SourceFile::new(path.display().to_string(), text))?)
}

/// `config.toml` as written: what serde reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct ConfigFile {
    cache: Option<CacheSection>,
    registries: Option<RegistriesSection>,
}

/// `[registries]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct RegistriesSection {
    #[serde(default)]
    insecure: Vec<String>,
    search: Option<String>,
    chunk_size: Option<Spanned<SizeValue>>,
    #[serde(default)]
    mirrors: std::collections::BTreeMap<String, Vec<String>>,
}

/// The keys of `[registries]`.
const REGISTRIES_KEYS: &[&str] = &["insecure", "search", "chunk-size", "mirrors"];

/// `[cache]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", expecting = "a table")]
struct CacheSection {
    max_size: Option<Spanned<SizeValue>>,
}

/// The keys of `[cache]`, as [`CacheSection`] names them.
const CACHE_KEYS: &[&str] = &["max-size"];

/// A size as written: a string for [`parse_size`], or a number of bytes.
#[derive(Debug)]
enum SizeValue {
    Text(String),
    Bytes(i64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size (a string such as \"10GB\", or a number of bytes)")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(text.to_string()))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(n))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SizeValue, E> {
                i64::try_from(n)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A size setting, or the problem pointing at it.
fn size_setting(
    source: &SourceFile,
    value: Option<Spanned<SizeValue>>,
    key: &str,
) -> Result<Option<u64>, FrontendError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let span = SourceSpan::from(value.span());
    size_value(value.get_ref()).map(Some).map_err(|message| {
        FrontendError::invalid(
            source,
            vec![Problem::new(
                "config::invalid-size",
                format!("invalid `{key}`: {message}"),
                span,
            )
            .label("this size")
            .help(SIZE_HELP)],
        )
    })
}

/// Parses the text of a `config.toml`.
pub(crate) fn parse(source: &SourceFile) -> Result<Config, FrontendError> {
    let file: ConfigFile = toml::from_str(&source.text)
        .map_err(|e| FrontendError::invalid(source, vec![toml_problem(&source.text, &e)]))?;
    let cache_max_size = size_setting(
        source,
        file.cache.and_then(|cache| cache.max_size),
        "cache.max-size",
    )?;
    let registries = match file.registries {
        None => RegistriesConfig::default(),
        Some(r) => RegistriesConfig {
            chunk_size: size_setting(source, r.chunk_size, "registries.chunk-size")?,
            insecure: r.insecure,
            search: r.search,
            mirrors: r.mirrors,
        },
    };
    Ok(Config {
        cache_max_size,
        registries,
    })
}

/// A problem of `toml`'s: a syntax error (`config::syntax`), an unknown key
/// (`config::unknown-key`) or a value of the wrong type (`config::type`).
/// As forge.toml's: its message's first line, the rest as help.
fn toml_problem(text: &str, e: &toml::de::Error) -> Problem {
    let span = e.span().map_or(SourceSpan::from(0..0), SourceSpan::from);
    let mut lines = e.message().lines();
    let message = lines.next().unwrap_or("invalid TOML").trim();
    let rest: Vec<&str> = lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let problem = if let Some((key, expected)) = unknown_field(message) {
        // serde lists the keys the table has: which table it is.
        let in_table = |keys: &[&str]| keys.iter().any(|k| expected.contains(&format!("`{k}`")));
        let (message, help) = if in_table(REGISTRIES_KEYS) {
            (
                format!("unknown key `{key}` in `[registries]`"),
                format!(
                    "the keys of `[registries]` are: {}",
                    REGISTRIES_KEYS.join(", ")
                ),
            )
        } else if in_table(CACHE_KEYS) {
            (
                format!("unknown key `{key}` in `[cache]`"),
                format!("the keys of `[cache]` are: {}", CACHE_KEYS.join(", ")),
            )
        } else {
            (
                format!("unknown key `{key}`"),
                "forge's config.toml has two tables: [cache] and [registries]".to_string(),
            )
        };
        Problem::new("config::unknown-key", message, span)
            .label("unknown key")
            .help(help)
    } else if toml::from_str::<IgnoredAny>(text).is_err() {
        Problem::new("config::syntax", format!("invalid TOML: {message}"), span).label("here")
    } else {
        Problem::new("config::type", message, span).label("wrong type")
    };
    match (rest.is_empty(), &problem.help) {
        (false, None) => problem.help(rest.join("; ")),
        _ => problem,
    }
}

/// The key and the keys expected, of serde's "unknown field `KEY`, expected
/// ..." message (which `deny_unknown_fields` gives).
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.rsplit_once("`, expected ")
}

const SIZE_HELP: &str = "write a number of bytes, or a string with a unit: \
    \"500MB\", \"10GB\", \"1.5GiB\" (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)";

fn size_value(value: &SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Text(text) => parse_size(text),
        SizeValue::Bytes(n) => {
            u64::try_from(*n).map_err(|_| "a size cannot be negative".to_string())
        }
    }
}

/// A size: bytes (`123`), or a number (maybe with a fraction) and a unit,
/// decimal (`KB`, `MB`, `GB`, `TB`) or binary (`KiB`, `MiB`, `GiB`, `TiB`),
/// in any case, maybe with spaces between. Fractions of a byte are dropped.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(format!("`{text}` is not a size"));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let factor = if unit.is_empty() {
        1
    } else {
        UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| format!("`{text}` has an unknown unit"))?
    };
    // (whole.fraction × factor), exactly, as (digits × factor) / 10^len;
    // digits past the 18th are worth less than a millionth of a byte: dropped.
    let fraction = &fraction[..fraction.len().min(18)];
    let too_big = || format!("`{text}` is too big");
    let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(0));
    let bytes = format!("{whole}{fraction}")
        .parse::<u128>()
        .ok()
        .and_then(|digits| digits.checked_mul(u128::from(factor)))
        .ok_or_else(too_big)?
        / scale;
    u64::try_from(bytes).map_err(|_| too_big())
}

/// Enforces `[cache] max-size` of the store's `config.toml`; `None` when no
/// cap is set. Entries and objects used within [`PRUNE_GRACE`] are kept, so
/// it is safe while other builds run.
pub(crate) fn enforce_cache_cap(store: &Store) -> Result<Option<CacheCapReport>, Failure> {
    let Some(max_size) = load(store.root())?.cache_max_size else {
        return Ok(None);
    };
    Ok(Some(store.enforce_cache_cap(max_size, PRUNE_GRACE)?))
}

/// The end of a successful `forge build`: [`enforce_cache_cap`], with a line
/// on standard error when it removed something (unless `quiet`). A problem
/// (a bad `config.toml`) is a warning: the build itself succeeded.
// Until `build.rs` calls it.
pub(crate) fn enforce_cache_cap_after_build(store: &Store, quiet: bool) {
    match enforce_cache_cap(store) {
        Ok(Some(report)) if report.entries_removed > 0 && !quiet => {
            eprintln!("{}", cap_summary(&report));
        }
        Ok(_) => {}
        Err(failure) => {
            eprintln!(
                "warning: the cache size cap was not enforced\n{:?}",
                failure.report
            );
        }
    }
}

/// One line about a collection down to the cap.
fn cap_summary(report: &CacheCapReport) -> String {
    let mut line = format!(
        "cache over its {} cap: removed {} cache entries (kept {}), {} snapshots, {} blobs; \
         total reclaimed space: {}",
        human::size(report.max_size),
        report.entries_removed,
        report.entries_kept,
        report.snapshots_removed,
        report.blobs.removed.len(),
        human::size(report.bytes_freed()),
    );
    if report.over_cap() {
        line.push_str(&format!(
            "; still {}: the rest was used in the last ten minutes",
            human::size(report.size_after)
        ));
    }
    line
}

/// `forge prune`, with `--max-size` for `--cache`.
#[derive(Debug)]
pub(crate) struct PruneCommand {
    prune: images::PruneArgs,
    cache: bool,
    max_size: Option<u64>,
}

// By hand, to read `--cache` (a field of `images::PruneArgs`) by its id.
impl FromArgMatches for PruneCommand {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            prune: images::PruneArgs::from_arg_matches(matches)?,
            cache: matches.get_flag("cache"),
            max_size: matches.get_one::<u64>("max_size").copied(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for PruneCommand {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        images::PruneArgs::augment_args(cmd)
            .mut_arg("cache", |arg| {
                arg.help(
                    "Also remove the build cache: with a size cap (--max-size, or `[cache] \
                     max-size` in $FORGE_HOME/config.toml), the least recently used step-cache \
                     entries until the cache fits; without one, the entries not used in the \
                     last ten minutes. Then the blobs and layer snapshots nothing needs any \
                     more. What was used in the last ten minutes stays (a build running now \
                     keeps its own)",
                )
            })
            .arg(
                Arg::new("max_size")
                    .long("max-size")
                    .value_name("SIZE")
                    .value_parser(parse_size)
                    .requires("cache")
                    .help(
                        "With --cache: remove the least recently used cache entries until the \
                     cache takes at most SIZE (e.g. 10GB, 1.5GiB); overrides `[cache] \
                     max-size` in $FORGE_HOME/config.toml",
                    ),
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// `forge prune`: with `--cache` and a cap (`--max-size`, else `[cache]
/// max-size` in config.toml), collects the cache down to the cap; otherwise
/// as [`images::prune`].
pub(crate) fn prune(args: &PruneCommand) -> Result<(), Failure> {
    if !args.cache {
        return images::prune(&args.prune);
    }
    let store = open_store()?;
    let max_size = match args.max_size {
        Some(size) => Some(size),
        None => load(store.root())?.cache_max_size,
    };
    let Some(max_size) = max_size else {
        return images::prune(&args.prune);
    };
    let report = store.enforce_cache_cap(max_size, PRUNE_GRACE)?;
    if report.entries_removed > 0 {
        println!("{}", cap_summary(&report));
    } else if report.over_cap() {
        println!(
            "the cache takes {}, over its {} cap, but all of it was used in the last ten minutes",
            human::size(report.size_before),
            human::size(max_size)
        );
    } else {
        println!(
            "the cache takes {}, within its {} cap: removed 0 cache entries",
            human::size(report.size_before),
            human::size(max_size)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a problem says, with the text its span covers.
    #[derive(Debug, PartialEq)]
    struct Reported {
        code: &'static str,
        message: String,
        at: String,
    }

    fn config(text: &str) -> Result<Config, Vec<Reported>> {
        parse(&SourceFile::new("config.toml", text)).map_err(|e| {
            e.problems()
                .iter()
                .map(|p| Reported {
                    code: p.code,
                    message: p.message.clone(),
                    at: text[p.span.offset()..p.span.offset() + p.span.len()].to_string(),
                })
                .collect()
        })
    }

    /// The one problem of an invalid `text`.
    fn problem(text: &str) -> Reported {
        let mut problems = config(text).expect_err(text);
        assert_eq!(problems.len(), 1, "{text:?}: {problems:?}");
        problems.remove(0)
    }

    fn reported(code: &'static str, message: &str, at: &str) -> Reported {
        Reported {
            code,
            message: message.to_string(),
            at: at.to_string(),
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("123", 123),
            ("123B", 123),
            ("10GB", 10_000_000_000),
            ("10 gb", 10_000_000_000),
            ("2KiB", 2048),
            ("1.5MiB", 1_572_864),
            ("1.5KB", 1_500),
            ("0.5TiB", 1 << 39),
            ("1.0000001KB", 1_000),
            ("18446744073709551615", u64::MAX),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        // 2^64 bytes: one too many.
        assert!(parse_size("16777216TiB").is_err());
        for bad in [
            "",
            "GB",
            "10 parsecs",
            "1.2.3GB",
            "-1GB",
            ".5GB",
            "10G",
            "1e9",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_the_cap_in_every_spelling() {
        for text in [
            "[cache]\nmax-size = \"10GB\"\n",
            "# comment\n[cache] # here too\nmax-size = '10GB'   # and here\n",
            "cache.max-size = \"10GB\"\n",
            "cache = { max-size = \"10GB\" }\n",
            "[ \"cache\" ]\r\n\"max-size\" = \"10 GB\"\r\n",
            "[cache]\nmax-size = 10_000_000_000\n",
            "[cache]\nmax-size = +10000000000\n",
            "[cache]\nmax-size = \"\"\"10GB\"\"\"\n",
            "[cache]\nmax-size = \"\\u0031\\u0030GB\"\n",
            "[cache]\nmax-size = \"10000 MB\"",
        ] {
            assert_eq!(
                config(text),
                Ok(Config {
                    cache_max_size: Some(10_000_000_000),
                    ..Config::default()
                }),
                "{text:?}"
            );
        }
        assert_eq!(config(""), Ok(Config::default()));
        assert_eq!(config("# nothing\n"), Ok(Config::default()));
        assert_eq!(config("[cache]\n"), Ok(Config::default()));
        assert_eq!(
            config("[cache]\nmax-size = 0\n"),
            Ok(Config {
                cache_max_size: Some(0),
                ..Config::default()
            })
        );
    }

    #[test]
    fn registries_settings_are_read_and_merged() {
        let user = config(
            "[registries]
insecure = [\"a.lan:5000\"]
search = \"a.lan:5000\"
\
             [registries.mirrors]
\"docker.io\" = [\"m.lan\"]
",
        )
        .expect("user config");
        let store = config(
            "[registries]
chunk-size = \"1MiB\"
search = \"b.lan\"
",
        )
        .expect("store config");
        let merged = user.merged(store);
        assert_eq!(merged.registries.insecure, ["a.lan:5000"]);
        assert_eq!(merged.registries.search.as_deref(), Some("b.lan"));
        assert_eq!(merged.registries.chunk_size, Some(1 << 20));
        assert_eq!(merged.registries.mirrors["docker.io"], ["m.lan"]);
        assert_eq!(
            problem(
                "[registries]
mirror = []
"
            ),
            reported(
                "config::unknown-key",
                "unknown key `mirror` in `[registries]`",
                "mirror"
            )
        );
    }

    #[test]
    fn an_invalid_size_points_at_the_value() {
        assert_eq!(
            problem("[cache]\nmax-size = \"ten\"\n"),
            reported(
                "config::invalid-size",
                "invalid `cache.max-size`: `ten` is not a size",
                "\"ten\""
            )
        );
        assert_eq!(
            problem("[cache]\nmax-size = \"10 parsecs\"\n"),
            reported(
                "config::invalid-size",
                "invalid `cache.max-size`: `10 parsecs` has an unknown unit",
                "\"10 parsecs\""
            )
        );
        assert_eq!(
            problem("cache.max-size = -5 # bytes\n"),
            reported(
                "config::invalid-size",
                "invalid `cache.max-size`: a size cannot be negative",
                "-5"
            )
        );
        let err = parse(&SourceFile::new(
            "config.toml",
            "[cache]\nmax-size = \"1XB\"\n",
        ))
        .expect_err("invalid");
        let help = err.problems()[0].help.as_deref().unwrap_or_default();
        assert!(help.contains("KiB, MiB, GiB, TiB"), "{help}");
    }

    #[test]
    fn an_unknown_key_is_named_at_its_place() {
        for (text, message, at) in [
            (
                "[cache]\nmax_size = \"10GB\"\n",
                "unknown key `max_size` in `[cache]`",
                "max_size",
            ),
            (
                "cache.max-sise = 1\n",
                "unknown key `max-sise` in `[cache]`",
                "max-sise",
            ),
            ("[cache]\nx = [1]\n", "unknown key `x` in `[cache]`", "x"),
            (
                "[store]\ncache.max-size = 1\n",
                "unknown key `store`",
                "store",
            ),
            (
                "max-size = \"10GB\"\n",
                "unknown key `max-size`",
                "max-size",
            ),
        ] {
            assert_eq!(
                problem(text),
                reported("config::unknown-key", message, at),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_wrong_type_points_at_the_value() {
        for (text, at) in [
            ("cache = \"big\"\n", "\"big\""),
            ("[cache]\nmax-size = true\n", "true"),
            ("[cache]\nmax-size = 1.5\n", "1.5"),
            ("[cache]\nmax-size = [\"1GB\"]\n", "[\"1GB\"]"),
        ] {
            let p = problem(text);
            assert_eq!((p.code, p.at.as_str()), ("config::type", at), "{text:?}");
            assert!(p.message.starts_with("invalid type: "), "{text:?}: {p:?}");
        }
        assert!(problem("[cache]\nmax-size = true\n")
            .message
            .ends_with("expected a size (a string such as \"10GB\", or a number of bytes)"));
        assert!(problem("cache = 3\n").message.ends_with("expected a table"));
    }

    #[test]
    fn a_syntax_error_has_a_line_and_column() {
        for (text, line, column) in [
            ("[cache\nmax-size = 1\n", 1, 7),
            ("[cache]\nmax-size = \n", 2, 12),
            ("[cache]\nmax-size = \"10GB\" x\n", 2, 19),
            ("[cache]\nmax-size = 1\nmax-size = 2\n", 3, 1),
            ("[cache]\nmax-size = \"10GB", 2, 17),
        ] {
            let source = SourceFile::new("config.toml", text);
            let err = parse(&source).expect_err(text);
            let [p] = err.problems() else {
                panic!("{text:?}: {:?}", err.problems());
            };
            assert_eq!(p.code, "config::syntax", "{text:?}: {p:?}");
            assert!(p.message.starts_with("invalid TOML: "), "{text:?}: {p:?}");
            let before = &text[..p.span.offset()];
            let at = (
                before.matches('\n').count() + 1,
                before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
            );
            assert_eq!(at, (line, column), "{text:?}: {p:?}");
        }
    }
}
