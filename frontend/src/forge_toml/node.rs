//! A spanned, order-preserving view of a parsed TOML document, and the problem
//! collector the reader reports into.
//!
//! `toml_edit` keeps every key and value with its byte range and tables in written
//! order; this module flattens its several table and array kinds into one [`Node`]
//! shape so the reader does not care whether a table was written inline, as a
//! `[header]` section or with dotted keys.

use miette::SourceSpan;
use toml_edit::{Item, TableLike, Value};

use crate::error::Problem;
use crate::syntax::Spanned;

/// Problem codes of the forge.toml reader.
pub(crate) mod code {
    /// A key the format does not know here.
    pub const UNKNOWN_KEY: &str = "forge-toml::unknown-key";
    /// A value of the wrong TOML type.
    pub const TYPE: &str = "forge-toml::type";
    /// The file is not valid TOML.
    pub const SYNTAX: &str = "forge-toml::syntax";
    /// A required key is missing.
    pub const MISSING_KEY: &str = "forge-toml::missing-key";
    /// Two keys that cannot be used together.
    pub const CONFLICT: &str = "forge-toml::conflict";
    /// A group names no image of the file.
    pub const UNKNOWN_IMAGE: &str = "forge-toml::unknown-image";
    /// An unsupported `version`.
    pub const VERSION: &str = "forge-toml::version";
    /// A value of the right type that is still not acceptable (an empty list, a bad
    /// duration, an invalid image name, an invalid `onbuild` trigger).
    pub const VALUE: &str = "forge-toml::value";
}

/// One TOML value with its span.
#[derive(Clone)]
pub(crate) struct Node<'a> {
    /// What it is.
    pub kind: Kind<'a>,
    /// Where the value is written (for a `[header]` table: the whole section).
    pub span: SourceSpan,
}

/// The TOML value kinds the reader distinguishes.
#[derive(Clone)]
pub(crate) enum Kind<'a> {
    /// A string (any of the four TOML string syntaxes), decoded.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// An array, or an array of `[[tables]]`.
    Array(Vec<Node<'a>>),
    /// An inline table, a `[header]` table or a dotted-key table, in written order.
    Table(Vec<Entry<'a>>),
    /// A float or a date-time: never valid in a forge.toml.
    Other(&'static str),
}

/// One `key = value` of a table.
#[derive(Clone)]
pub(crate) struct Entry<'a> {
    /// The key (decoded) and where it is written.
    pub key: Spanned<String>,
    /// The value.
    pub value: Node<'a>,
    /// From the key to the end of the value (`key = "value"`).
    pub span: SourceSpan,
}

fn to_span(range: Option<std::ops::Range<usize>>, fallback: SourceSpan) -> SourceSpan {
    range.map_or(fallback, SourceSpan::from)
}

/// The span from the start of `a` to the end of `b` (`b` may lie inside `a`).
pub(crate) fn join(a: SourceSpan, b: SourceSpan) -> SourceSpan {
    let start = a.offset().min(b.offset());
    let end = (a.offset() + a.len()).max(b.offset() + b.len());
    SourceSpan::from(start..end)
}

impl<'a> Node<'a> {
    /// The view of a document's root table.
    pub fn root(table: &'a toml_edit::Table, len: usize) -> Self {
        let span = SourceSpan::from(0..len);
        Node {
            kind: Kind::Table(entries(table, span)),
            span,
        }
    }

    fn from_item(item: &'a Item, fallback: SourceSpan) -> Self {
        match item {
            Item::Value(v) => Self::from_value(v, fallback),
            Item::Table(t) => {
                let span = to_span(t.span(), fallback);
                Node {
                    kind: Kind::Table(entries(t, span)),
                    span,
                }
            }
            Item::ArrayOfTables(a) => {
                let span = to_span(a.span(), fallback);
                let tables = a
                    .iter()
                    .map(|t| {
                        let ts = to_span(t.span(), span);
                        Node {
                            kind: Kind::Table(entries(t, ts)),
                            span: ts,
                        }
                    })
                    .collect();
                Node {
                    kind: Kind::Array(tables),
                    span,
                }
            }
            Item::None => Node {
                kind: Kind::Other("nothing"),
                span: fallback,
            },
        }
    }

    fn from_value(value: &'a Value, fallback: SourceSpan) -> Self {
        let span = to_span(value.span(), fallback);
        let kind = match value {
            Value::String(s) => Kind::Str(s.value()),
            Value::Integer(i) => Kind::Int(*i.value()),
            Value::Boolean(b) => Kind::Bool(*b.value()),
            Value::Float(_) => Kind::Other("float"),
            Value::Datetime(_) => Kind::Other("date-time"),
            Value::Array(a) => Kind::Array(a.iter().map(|v| Self::from_value(v, span)).collect()),
            Value::InlineTable(t) => Kind::Table(entries(t, span)),
        };
        Node { kind, span }
    }

    /// The TOML type's name with an article, for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Str(_) => "a string",
            Kind::Int(_) => "an integer",
            Kind::Bool(_) => "a boolean",
            Kind::Array(_) => "an array",
            Kind::Table(_) => "a table",
            Kind::Other("float") => "a float",
            Kind::Other("date-time") => "a date-time",
            Kind::Other(_) => "nothing",
        }
    }
}

fn entries<'a>(table: &'a dyn TableLike, fallback: SourceSpan) -> Vec<Entry<'a>> {
    table
        .iter()
        .map(|(name, item)| {
            let key_span = to_span(table.key(name).and_then(toml_edit::Key::span), fallback);
            let value = Node::from_item(item, key_span);
            // A `[header]` table's span is its whole section, which starts before the key;
            // an implicit table has no span of its own: use the key.
            let span = if value.span.offset() < key_span.offset() {
                key_span
            } else {
                join(key_span, value.span)
            };
            Entry {
                key: Spanned::new(name.to_string(), key_span),
                value,
                span,
            }
        })
        .collect()
}

/// Collects problems while reading; every accessor reports what is wrong and
/// returns `None`, so one pass finds everything.
#[derive(Default)]
pub(crate) struct Reader {
    /// Everything found so far.
    pub problems: Vec<Problem>,
}

/// `a, b, c` with each name in backticks.
pub(crate) fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Reader {
    /// Records a problem.
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Reports a value of the wrong type at `path`.
    pub fn type_error(&mut self, path: &str, expected: &str, node: &Node<'_>) {
        self.push(
            Problem::new(
                code::TYPE,
                format!("`{path}` must be {expected}, not {}", node.type_name()),
                node.span,
            )
            .label(format!("expected {expected}")),
        );
    }

    /// Reports an invalid value.
    pub fn value_error(&mut self, message: impl Into<String>, span: SourceSpan, label: &str) {
        self.push(Problem::new(code::VALUE, message, span).label(label));
    }

    /// Reports every key of `entries` that is not in `allowed`, with a did-you-mean.
    pub fn check_keys(&mut self, entries: &[Entry<'_>], allowed: &[&str], path: &str) {
        for e in entries {
            if !allowed.contains(&e.key.value.as_str()) {
                self.unknown_key(e, allowed, path);
            }
        }
    }

    /// Reports `e` as a key unknown in `path`.
    pub fn unknown_key(&mut self, e: &Entry<'_>, allowed: &[&str], path: &str) {
        let help = match crate::suggest(&e.key.value, allowed) {
            Some(s) => format!("did you mean `{s}`? expected one of: {}", list(allowed)),
            None => format!("expected one of: {}", list(allowed)),
        };
        let message = if path.is_empty() {
            format!("unknown key `{}`", e.key.value)
        } else {
            format!("unknown key `{}` in `{path}`", e.key.value)
        };
        self.push(
            Problem::new(code::UNKNOWN_KEY, message, e.key.span)
                .label("unknown key")
                .help(help),
        );
    }

    /// The entries of a table, or a type error.
    pub fn table<'n, 'a>(&mut self, path: &str, node: &'n Node<'a>) -> Option<&'n [Entry<'a>]> {
        match &node.kind {
            Kind::Table(entries) => Some(entries),
            _ => {
                self.type_error(path, "a table", node);
                None
            }
        }
    }

    /// A string, or a type error.
    pub fn string(&mut self, path: &str, node: &Node<'_>) -> Option<Spanned<String>> {
        match &node.kind {
            Kind::Str(s) => Some(Spanned::new((*s).to_string(), node.span)),
            _ => {
                self.type_error(path, "a string", node);
                None
            }
        }
    }

    /// A string that must not be empty (or blank).
    pub fn nonempty_string(&mut self, path: &str, node: &Node<'_>) -> Option<Spanned<String>> {
        let s = self.string(path, node)?;
        if s.value.trim().is_empty() {
            self.value_error(format!("`{path}` must not be empty"), s.span, "empty");
            return None;
        }
        Some(s)
    }

    /// A boolean, or a type error.
    pub fn bool(&mut self, path: &str, node: &Node<'_>) -> Option<bool> {
        match &node.kind {
            Kind::Bool(b) => Some(*b),
            _ => {
                self.type_error(path, "a boolean (`true` or `false`)", node);
                None
            }
        }
    }

    /// An array of strings, or a type error (pointing at the first wrong element).
    pub fn strings(&mut self, path: &str, node: &Node<'_>) -> Option<Vec<Spanned<String>>> {
        let Kind::Array(items) = &node.kind else {
            self.type_error(path, "an array of strings", node);
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match &item.kind {
                Kind::Str(s) => out.push(Spanned::new((*s).to_string(), item.span)),
                _ => {
                    self.type_error(&format!("{path}[{i}]"), "a string", item);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A string or an array of strings (a single string is a list of one).
    pub fn string_or_strings(
        &mut self,
        path: &str,
        node: &Node<'_>,
    ) -> Option<Vec<Spanned<String>>> {
        match &node.kind {
            Kind::Str(s) => Some(vec![Spanned::new((*s).to_string(), node.span)]),
            Kind::Array(_) => self.strings(path, node),
            _ => {
                self.type_error(path, "a string or an array of strings", node);
                None
            }
        }
    }

    /// A scalar written as a string, an integer or a boolean, as text
    /// (`8080` reads as `"8080"`).
    pub fn scalar(&mut self, path: &str, node: &Node<'_>) -> Option<Spanned<String>> {
        match &node.kind {
            Kind::Str(s) => Some(Spanned::new((*s).to_string(), node.span)),
            Kind::Int(i) => Some(Spanned::new(i.to_string(), node.span)),
            Kind::Bool(b) => Some(Spanned::new(b.to_string(), node.span)),
            _ => {
                self.push(
                    Problem::new(
                        code::TYPE,
                        format!("`{path}` must be a string, not {}", node.type_name()),
                        node.span,
                    )
                    .label("expected a string")
                    .help(
                        "integers and booleans are taken as text too; anything else must be quoted",
                    ),
                );
                None
            }
        }
    }
}

/// The entry named `key`, if present.
pub(crate) fn get<'n, 'a>(entries: &'n [Entry<'a>], key: &str) -> Option<&'n Entry<'a>> {
    entries.iter().find(|e| e.key.value == key)
}
