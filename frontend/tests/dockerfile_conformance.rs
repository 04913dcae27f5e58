//! BuildKit conformance for the Dockerfile parser: the `testfiles` dumps byte for byte,
//! the negative files, line numbers, and ports of BuildKit's parser, heredoc, line
//! parser, directive, JSON and instruction tests.

use std::path::Path;

use forge_frontend::dockerfile::{self, Ast, Node};
use forge_frontend::syntax::{
    BuildFile, CommandLine, HealthcheckInstr, InstructionKind, SourceFile,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/buildkit-parser");

fn src(text: &str) -> SourceFile {
    SourceFile::new("Dockerfile", text)
}

fn ast(text: &str) -> Ast {
    match dockerfile::parse_ast(&src(text)) {
        Ok(ast) => ast,
        Err(e) => panic!("{text:?} should parse: {:?}", e.problems()),
    }
}

fn dump(text: &str) -> String {
    dockerfile::dump(&ast(text))
}

fn typed(text: &str) -> BuildFile {
    match dockerfile::parse(&src(text)) {
        Ok(f) => f,
        Err(e) => panic!("{text:?} should parse: {:?}", e.problems()),
    }
}

fn messages(text: &str) -> Vec<String> {
    match dockerfile::parse(&src(text)) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(|p| p.message.clone()).collect(),
    }
}

fn dirs(sub: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(DATA).join(sub);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn testfiles_dump_byte_for_byte() {
    let cases = dirs("testfiles");
    assert!(cases.len() >= 30, "expected the BuildKit testfiles");
    let mut failures = Vec::new();
    for dir in &cases {
        let text = read(&dir.join("Dockerfile"));
        let want = read(&dir.join("result"));
        match dockerfile::parse_ast(&src(&text)) {
            Ok(ast) => {
                let got = dockerfile::dump(&ast) + "\n";
                if got != want {
                    failures.push(format!(
                        "{}:\n--- want\n{want}--- got\n{got}",
                        dir.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {:?}", dir.display(), e.problems())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn testfiles_negative_fail() {
    let cases = dirs("testfiles-negative");
    assert!(cases.len() >= 4);
    for dir in cases {
        let text = read(&dir.join("Dockerfile"));
        assert!(
            dockerfile::parse_ast(&src(&text)).is_err(),
            "{} should fail to parse",
            dir.display()
        );
    }
}

fn lines_of(source: &SourceFile, node: &Node) -> (usize, usize) {
    let start = source.line_col(node.span.offset()).0;
    let end = source.line_col(node.span.offset() + node.span.len()).0;
    (start, end)
}

#[test]
fn line_numbers_from_spans() {
    // BuildKit's TestParseIncludesLineNumbers.
    let source = src(&read(&Path::new(DATA).join("testfile-line/Dockerfile")));
    let ast = dockerfile::parse_ast(&source).expect("parses");
    assert_eq!((ast.start_line, ast.end_line), (5, 31));
    let got: Vec<_> = ast.children.iter().map(|n| lines_of(&source, n)).collect();
    assert_eq!(got, vec![(5, 5), (11, 12), (17, 31)]);
    let recorded: Vec<_> = ast
        .children
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(recorded, got);
}

#[test]
fn word_spans_cross_continuations() {
    let text = "FROM x\nRUN echo \\\n  # comment\n\n  hello && \\\n  world\nENV A=1 \\\n    B=\"two words\"\n";
    let source = src(text);
    let ast = dockerfile::parse_ast(&source).expect("parses");
    let run = &ast.children[1];
    assert_eq!(run.original, "RUN echo   hello &&   world");
    let word = &run.next[0];
    let covered = &text[word.span.offset()..word.span.offset() + word.span.len()];
    assert!(covered.starts_with("echo \\\n"), "{covered:?}");
    assert!(covered.ends_with("world"), "{covered:?}");
    assert_eq!(lines_of(&source, run), (2, 6));
    let env = &ast.children[2];
    let b_value = &env.next[4];
    assert_eq!(b_value.value, "\"two words\"");
    assert_eq!(
        &text[b_value.span.offset()..b_value.span.offset() + b_value.span.len()],
        "\"two words\""
    );
    assert_eq!(source.line_col(b_value.span.offset()), (8, 7));
    let keyword = &text[env.keyword_span.offset()..][..env.keyword_span.len()];
    assert_eq!(keyword, "ENV");
}

#[test]
fn parse_words_like_buildkit() {
    // BuildKit's TestParseWords, observed through ARG (which keeps parseWords' words).
    let cases: &[(&str, &[&str])] = &[
        ("foo", &["foo"]),
        ("foo bar", &["foo", "bar"]),
        ("foo\\ bar", &["foo\\ bar"]),
        ("foo=bar", &["foo=bar"]),
        ("foo bar 'abc xyz'", &["foo", "bar", "'abc xyz'"]),
        ("foo bar \"abc xyz\"", &["foo", "bar", "\"abc xyz\""]),
        ("àöû", &["àöû"]),
        ("föo bàr \"âbc xÿz\"", &["föo", "bàr", "\"âbc xÿz\""]),
    ];
    for (input, want) in cases {
        let ast = ast(&format!("ARG {input}"));
        let got: Vec<&str> = ast.children[0]
            .next
            .iter()
            .map(|w| w.value.as_str())
            .collect();
        assert_eq!(got, *want, "{input}");
    }
}

#[test]
fn empty_continuation_lines_warn() {
    // BuildKit's TestParseWarnsOnEmptyContinutationLine.
    let text = "\nFROM alpine:3.6\n\nRUN valid \\\n    continuation\n\nRUN something \\\n\n    following \\\n\n    more\n\nRUN another \\\n\n    thing\n\nRUN non-indented \\\n# this is a comment\n   after-comment\n\nRUN indented \\\n    # this is an indented comment\n    comment\n\t";
    let ast = ast(text);
    assert_eq!(ast.warnings.len(), 2);
    assert!(ast.warnings[0]
        .message
        .contains("Empty continuation line found in"));
    assert!(ast.warnings[0]
        .message
        .contains("RUN something     following     more"));
    assert!(ast.warnings[1].message.contains("RUN another     thing"));
    assert_eq!(ast.warnings[0].line, 11);
}

#[test]
fn overlong_lines_are_rejected() {
    // BuildKit's TestParseReturnsScannerErrors.
    let label = "a".repeat(65536);
    let text = format!("\n\t\tFROM image\n\t\tLABEL test={label}\n");
    assert_eq!(
        messages(&text),
        vec!["dockerfile line greater than max allowed size of 65535".to_string()]
    );
    // The longest line BuildKit can read.
    let ok = format!("FROM image\nLABEL a={}\n", "b".repeat(65536 - 9));
    assert!(dockerfile::parse_ast(&src(&ok)).is_ok());
    let too_long = format!("FROM image\nLABEL a={}\n", "b".repeat(65536 - 8));
    assert!(dockerfile::parse_ast(&src(&too_long)).is_err());
    // Without a final newline the limit is one byte lower.
    let last = format!("FROM image\nLABEL a={}", "b".repeat(65536 - 8));
    assert!(dockerfile::parse_ast(&src(&last)).is_err());
    let last_ok = format!("FROM image\nLABEL a={}", "b".repeat(65535 - 8));
    assert!(dockerfile::parse_ast(&src(&last_ok)).is_ok());
}

/// (name, content, expand, chomp, fd) of each heredoc of each instruction.
type Docs = Vec<(&'static str, &'static str, bool, bool, u64)>;

type OwnedDocs = Vec<(String, String, bool, bool, u64)>;

#[test]
fn heredocs_like_buildkit() {
    // BuildKit's TestParseExtractsHeredoc.
    let text = "\nFROM alpine:3.6\n\nENV NAME=me\n\nRUN ls\n\nUSER <<INVALID\nINVALID\n\nRUN <<EMPTY\nEMPTY\n\nRUN 3<<EMPTY2\nEMPTY2\n\nRUN \"<<NOHEREDOC\"\n\nRUN <<INDENT\n\tfoo\n\tbar\nINDENT\n\nRUN <<-UNINDENT\n\tbaz\n\tquux\nUNINDENT\n\nRUN <<-UNINDENT2\n\tbaz\n\tquux\n\tUNINDENT2\n\nRUN <<-EXPAND\n\texpand $NAME\nEXPAND\n\nRUN <<-'NOEXPAND'\n\tdon't expand $NAME\nNOEXPAND\n\nRUN <<COPY\necho hello world\necho foo bar\nCOPY\n\nRUN <<COMMENT\n# internal comment\necho hello world\necho foo bar # trailing comment\nCOMMENT\n\nRUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n\nCOPY <<FILE1 <<FILE2 /dest\ncontent 1\nFILE1\ncontent 2\nFILE2\n\nCOPY <<EOF /quotes\n\"foo\"\n'bar'\nEOF\n\nCOPY <<X <<Y /dest\nY\nX\nX\nY\n\nRUN <<COMPLEX python3\nprint('hello world')\nCOMPLEX\n\nCOPY <<file.txt /dest\nhello world\nfile.txt\n\nRUN <<eo'f'\necho foo\neof\n\nRUN <<eo\\'f\necho foo\neo'f\n\nRUN <<'e'o\\'f\necho foo\neo'f\n\nRUN <<'one two'\necho bar\none two\n\nRUN <<$EOF\n$EOF\n\nRUN <<  EOF\nEOF\n\nRUN <<  EOF  > foo\nEOF\n\t";
    let want: Vec<Docs> = vec![
        vec![],
        vec![],
        vec![],
        vec![],
        vec![("EMPTY", "", true, false, 0)],
        vec![("EMPTY2", "", true, false, 3)],
        vec![],
        vec![("INDENT", "\tfoo\n\tbar\n", true, false, 0)],
        vec![("UNINDENT", "\tbaz\n\tquux\n", true, true, 0)],
        vec![("UNINDENT2", "\tbaz\n\tquux\n", true, true, 0)],
        vec![("EXPAND", "\texpand $NAME\n", true, true, 0)],
        vec![("NOEXPAND", "\tdon't expand $NAME\n", false, true, 0)],
        vec![("COPY", "echo hello world\necho foo bar\n", true, false, 0)],
        vec![(
            "COMMENT",
            "# internal comment\necho hello world\necho foo bar # trailing comment\n",
            true,
            false,
            0,
        )],
        vec![("MOUNT", "echo hello\n", true, false, 0)],
        vec![
            ("FILE1", "content 1\n", true, false, 0),
            ("FILE2", "content 2\n", true, false, 0),
        ],
        vec![("EOF", "\"foo\"\n'bar'\n", true, false, 0)],
        vec![("X", "Y\n", true, false, 0), ("Y", "X\n", true, false, 0)],
        vec![("COMPLEX", "print('hello world')\n", true, false, 0)],
        vec![("file.txt", "hello world\n", true, false, 0)],
        vec![("eof", "echo foo\n", false, false, 0)],
        vec![("eo'f", "echo foo\n", true, false, 0)],
        vec![("eo'f", "echo foo\n", false, false, 0)],
        vec![("one two", "echo bar\n", false, false, 0)],
        vec![("$EOF", "", true, false, 0)],
        vec![("EOF", "", true, false, 0)],
        vec![("EOF", "", true, false, 0)],
    ];
    let ast = ast(text);
    for (i, want) in want.iter().enumerate() {
        let node = &ast.children[i + 1];
        let got: OwnedDocs = node
            .heredocs
            .iter()
            .map(|h| {
                (
                    h.name.clone(),
                    h.content.clone(),
                    h.expand,
                    h.chomp,
                    h.file_descriptor,
                )
            })
            .collect();
        let want: OwnedDocs = want
            .iter()
            .map(|(n, c, e, ch, fd)| (n.to_string(), c.to_string(), *e, *ch, *fd))
            .collect();
        assert_eq!(got, want, "instruction {}: {}", i + 1, node.original);
    }
}

#[test]
fn json_forms_have_no_heredocs() {
    // BuildKit's TestParseJSONHeredoc.
    let ast = ast("\nFROM alpine:3.6\n\nRUN [\"whoami\"]\nRUN [\"<<EOF\"]\nRUN [\"<<'EOF'\"]\n\t");
    for node in &ast.children[1..=3] {
        assert!(node.heredocs.is_empty(), "{}", node.original);
    }
}

#[test]
fn heredocs_found_on_lines() {
    // BuildKit's TestHeredocsFromLine and TestParseHeredocHelpers, through whole files.
    let cases: &[(&str, &[&str])] = &[
        ("RUN <<EOF", &["EOF"]),
        ("RUN <<-EOF", &["EOF"]),
        ("RUN << -EOF", &["-EOF"]),
        ("RUN <<'EOF'", &["EOF"]),
        ("RUN <<\"EOF\"", &["EOF"]),
        ("RUN <<EO\"F\"", &["EOF"]),
        ("RUN 4<<EOF", &["EOF"]),
        ("RUN <<EOF <<EOF2", &["EOF", "EOF2"]),
        ("RUN '<<EOF'", &[]),
        ("RUN \"<<EOF\"", &[]),
        ("RUN <<<EOF", &[]),
        ("RUN <EOF", &[]),
        ("RUN <<", &[]),
        ("USER <<EOF", &[]),
        ("CMD <<EOF", &[]),
        ("ONBUILD RUN <<EOF", &["EOF"]),
        ("ONBUILD ADD <<EOF /x", &["EOF"]),
        ("ONBUILD RUN [\"<<EOF\"]", &[]),
    ];
    for (line, names) in cases {
        let mut text = format!("{line}\n");
        for name in names.iter() {
            text.push_str(&format!("body\n{name}\n"));
        }
        let ast = ast(&text);
        let got: Vec<&str> = ast.children[0]
            .heredocs
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(got, *names, "{line}");
        assert_eq!(ast.children.len(), 1, "{line}");
    }
    for bad in ["RUN <<EOF'", "RUN <<EOF\""] {
        // The line lexer cannot close the quote: no heredoc at all.
        assert!(ast(bad).children[0].heredocs.is_empty(), "{bad}");
    }
}

#[test]
fn name_value_parsing() {
    // BuildKit's TestParseNameValOldFormat / NewFormat / WithoutVal.
    assert_eq!(dump("LABEL foo bar"), "(label \"foo\" \"bar\" \"\")");
    assert_eq!(
        dump("LABEL foo=bar thing=star"),
        "(label \"foo\" \"bar\" \"=\" \"thing\" \"star\" \"=\")"
    );
    assert_eq!(
        messages("FROM x\nENV foo"),
        vec!["ENV must have two arguments"]
    );
    assert_eq!(
        messages("FROM x\nENV a=1 b"),
        vec!["Syntax error - can't find = in \"b\". Must be of the form: name=value"]
    );
}

#[test]
fn json_arrays_of_strings() {
    // BuildKit's TestJSONArraysOfStrings, through CMD.
    let valid: &[(&str, &str)] = &[
        ("[]", "(cmd)"),
        ("[\"\"]", "(cmd \"\")"),
        ("[\"a\"]", "(cmd \"a\")"),
        ("[\"a\",\"b\"]", "(cmd \"a\" \"b\")"),
        ("[ \"a\", \"b\" ]", "(cmd \"a\" \"b\")"),
        ("[\t\"a\",\t\"b\"\t]", "(cmd \"a\" \"b\")"),
        ("\t[\t\"a\",\t\"b\"\t]\t", "(cmd \"a\" \"b\")"),
        (
            r#"["abc 123", "♥", "☃", "\" \\ \/ \b \f \n \r \t \u0000"]"#,
            r#"(cmd "abc 123" "♥" "☃" "\" \\ / \b \f \n \r \t \x00")"#,
        ),
    ];
    for (json, want) in valid {
        assert_eq!(dump(&format!("CMD {json}")), *want, "{json}");
    }
    for json in [
        r#"["a",42,"b"]"#,
        r#"["a",123.456,"b"]"#,
        r#"["a",{},"b"]"#,
        r#"["a",{"c": "d"},"b"]"#,
        r#"["a",["c"],"b"]"#,
        r#"["a",true,"b"]"#,
        r#"["a",false,"b"]"#,
        r#"["a",null,"b"]"#,
    ] {
        assert_eq!(
            messages(&format!("FROM x\nCMD {json}")),
            vec!["when using JSON array syntax, arrays must be comprised of strings only"],
            "{json}"
        );
    }
    // Not JSON at all: the shell form, as BuildKit falls back.
    assert_eq!(dump("CMD [\"a\", 1e999]"), "(cmd \"[\\\"a\\\", 1e999]\")");
    assert_eq!(dump("RUN [\"a\", \"b\""), "(run \"[\\\"a\\\", \\\"b\\\"\")");
    assert_eq!(
        dump("COPY [\"a\" \"b\"]"),
        "(copy \"[\\\"a\\\"\" \"\\\"b\\\"]\")"
    );
    let nested = format!("CMD {}", "[".repeat(20_000));
    assert_eq!(ast(&nested).children[0].next.len(), 1);
}

fn directive_list(text: &str) -> Vec<(String, String)> {
    typed(text).directives
}

#[test]
fn directives_like_buildkit() {
    // BuildKit's TestDirectives.
    let d = ast("#escape=\\\n# key = FOO bar\n\n# smth\nFROM x\n");
    assert_eq!(d.directives.len(), 1);
    assert_eq!(
        (
            d.directives[0].name.as_str(),
            d.directives[0].value.as_str()
        ),
        ("escape", "\\")
    );
    let d = ast("# EScape=\\\n# KEY = FOO bar\n\n# smth\nFROM x\n");
    assert_eq!(d.directives.len(), 1);
    assert_eq!(d.directives[0].name, "escape");
    // TestDetectSyntax / TestParseDirective.
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        directive_list("# syntax = dockerfile:experimental // opts\nFROM busybox\n"),
        vec![pair("syntax", "dockerfile:experimental // opts")]
    );
    assert_eq!(
        directive_list("#!/bin/sh\n# syntax = dockerfile:experimental\nFROM busybox\n"),
        vec![pair("syntax", "dockerfile:experimental")]
    );
    assert!(directive_list("#!/bin/sh\n\n# syntax = dockerfile:experimental\nFROM x\n").is_empty());
    assert!(directive_list("FROM busybox\nRUN ls\n").is_empty());
    assert_eq!(
        directive_list("\u{feff}# syntax = myfrontend\nFROM busybox\n"),
        vec![pair("syntax", "myfrontend")]
    );
    assert_eq!(
        directive_list("#check = skip=all // opts\nFROM busybox\n"),
        vec![pair("check", "skip=all // opts")]
    );
    assert_eq!(
        directive_list("# syntax=a\n# escape=`\n# check=error=true\nFROM x\n"),
        vec![
            pair("syntax", "a"),
            pair("escape", "`"),
            pair("check", "error=true")
        ]
    );
    let line = ast("\n# syntax=x\nFROM a").directives;
    assert!(line.is_empty(), "directives must be at the very top");
}

#[test]
fn escape_directive_rules() {
    // Backtick escape: backslashes are plain, backtick continues lines.
    assert_eq!(
        dump("# escape=`\nFROM x\nRUN dir c:\\ `\n  && echo hi"),
        "(from \"x\")\n(run \"dir c:\\\\   && echo hi\")"
    );
    // After any other comment or line, `# escape=` is just a comment.
    assert_eq!(
        dump("# hello\n# escape=`\nFROM x\nRUN a `\nRUN b"),
        "(from \"x\")\n(run \"a `\")\n(run \"b\")"
    );
    // Directives are case-insensitive, whitespace-tolerant, and only one of each.
    assert_eq!(ast("#  ESCAPE  =  `  \nFROM x").escape, '`');
    assert_eq!(
        messages("# escape=`\n# escape=\\\nFROM x"),
        vec!["only one escape parser directive can be used"]
    );
    assert_eq!(
        messages("# escape=x\nFROM x"),
        vec!["invalid escape token 'x' does not match ` or \\"]
    );
    // A blank line ends the directives.
    assert_eq!(ast("\n# escape=`\nFROM x").escape, '\\');
    // A leading byte-order mark is skipped.
    assert_eq!(ast("\u{feff}# escape=`\nFROM x").escape, '`');
}

#[test]
fn continuation_edge_cases() {
    // An escaped escape does not continue the line.
    assert_eq!(dump("RUN a\\\\\nRUN b"), "(run \"a\\\\\\\\\")\n(run \"b\")");
    // Spaces and tabs after the escape still continue it.
    assert_eq!(dump("RUN a \\ \t\nb"), "(run \"a b\")");
    // A lone escape line, at the start and in the middle.
    assert_eq!(dump("\\\nRUN a\n"), "(run \"a\")");
    assert_eq!(dump("RUN a\\\n\\\nb"), "(run \"ab\")");
    // CRLF line endings.
    assert_eq!(
        dump("FROM x\r\nRUN a \\\r\n  b\r\n"),
        "(from \"x\")\n(run \"a   b\")"
    );
    // Continuation at the end of the file.
    assert_eq!(dump("RUN a \\"), "(run \"a\")");
    // An empty logical line becomes an unknown, empty instruction, as in BuildKit.
    assert_eq!(dump("\\\n  \n"), "(\"\")");
}

#[test]
fn flags_and_onbuild_dumps() {
    assert_eq!(
        dump("COPY --from=\"a b\" --chown='x' --link foo /tmp/"),
        "(copy [\"--from=a b\" \"--chown=x\" \"--link\"] \"foo\" \"/tmp/\")"
    );
    assert_eq!(
        dump("ONBUILD RUN [\"echo\", \"test\"]"),
        "(onbuild (run \"echo\" \"test\"))"
    );
    assert_eq!(
        dump("ONBUILD --x ONBUILD --y RUN z"),
        "(onbuild [\"--x\"] (onbuild [\"--y\"] (run \"z\")))"
    );
    assert_eq!(dump("ONBUILD"), "(onbuild)");
    assert_eq!(dump("FOO bar baz"), "(foo \"\")");
    assert_eq!(
        dump("HEALTHCHECK --retries=3 CMD [\"a\"]"),
        "(healthcheck [\"--retries=3\"] \"CMD\" \"a\")"
    );
    assert_eq!(dump("ARG a=1 b"), "(arg \"a=1\" \"b\")");
    assert_eq!(dump("EXPOSE 80\t443/tcp"), "(expose \"80\" \"443/tcp\")");
    assert_eq!(dump("RUN \u{1}\u{85}é"), "(run \"\\x01\\u0085é\")");
    let deep = format!("{}RUN x", "ONBUILD ".repeat(5_000));
    let dumped = dump(&deep);
    assert!(dumped.ends_with(&format!("(run \"x\"){}", ")".repeat(5_000))));
}

// --- The instructions layer (BuildKit's instructions/parse_test.go and
// --- parse_heredoc_test.go).

#[test]
fn commands_exactly_one_argument() {
    for cmd in ["MAINTAINER", "WORKDIR", "USER", "STOPSIGNAL"] {
        assert_eq!(
            messages(&format!("FROM x\n{cmd}")),
            vec![format!("{cmd} requires exactly one argument")]
        );
    }
}

#[test]
fn commands_at_least_one_argument() {
    for cmd in ["ENV", "LABEL", "ONBUILD", "HEALTHCHECK", "EXPOSE", "VOLUME"] {
        assert_eq!(
            messages(&format!("FROM x\n{cmd}")),
            vec![format!("{cmd} requires at least one argument")]
        );
    }
}

#[test]
fn commands_no_destination() {
    for cmd in ["ADD", "COPY"] {
        assert_eq!(
            messages(&format!("FROM x\n{cmd} arg1")),
            vec![format!(
                "{cmd} requires at least two arguments, but only one was provided. Destination could not be determined"
            )]
        );
    }
    // BuildKit's copyEmptyWhitespace.
    assert_eq!(
        messages("FROM x\nCOPY\t\n\t\tquux \\\n      bar")[0],
        "COPY requires at least two arguments, but only one was provided. Destination could not be determined"
    );
}

#[test]
fn commands_blank_names() {
    for cmd in ["ENV", "LABEL"] {
        assert_eq!(
            messages(&format!("FROM x\n{cmd} =arg2")),
            vec![format!("{cmd} names can not be blank")]
        );
    }
    assert_eq!(
        messages("FROM x\nARG =x"),
        vec!["ARG names can not be blank"]
    );
}

#[test]
fn error_cases() {
    let cases: &[(&str, &str)] = &[
        ("FROM x\nONBUILD FROM scratch", "FROM isn't allowed as an ONBUILD trigger"),
        ("FROM x\nONBUILD MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("FROM x\nMAINTAINER --boo joe@example.com", "unknown flag: --boo"),
        (
            "FROM x\nONBUILD ONBUILD RUN touch foobar",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        ("FROM x\nFOO bar", "unknown instruction: FOO"),
        ("FROM x\nfoo bar", "unknown instruction: foo"),
        ("FROM x\nCOPY /foo <<EOF\nEOF", "COPY cannot accept a heredoc as a destination"),
        ("FROM x\nHEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("FROM x\nHEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("FROM x\nHEALTHCHECK CONNECT TCP 7000", "Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)"),
        ("FROM x\nHEALTHCHECK --interval=50ns CMD a", "Interval \"interval\" cannot be less than 1ms"),
        ("FROM x\nHEALTHCHECK --retries=-1 CMD a", "--retries cannot be negative (-1)"),
        ("FROM x\nSHELL sh -c", "SHELL requires the arguments to be in JSON form"),
        ("FROM x\nSHELL []", "SHELL requires at least one argument"),
        ("FROM x\nVOLUME [\" \"]", "VOLUME specified can not be an empty string"),
        ("FROM x AS 1a", "invalid name for build stage: \"1a\", name can't start with a number or contain symbols"),
        ("FROM x y", "FROM requires either one or three arguments"),
        ("FROM x\nRUN --network=foo true", "invalid network mode \"foo\""),
        ("FROM x\nRUN --security=foo true", "security \"foo\" is not valid"),
        ("FROM x\nCOPY --link=maybe a b", "expecting boolean value for flag --link, not: maybe"),
        ("FROM x\nCOPY --link= a b", "missing a value on flag: --link"),
        ("FROM x\nCOPY --from a b", "missing a value on flag: --from"),
        ("FROM x\nCOPY --from=a --from=b a b", "duplicate flag specified: --from"),
        ("RUN x\nFROM y", "no build stage in current context"),
    ];
    for (text, want) in cases {
        assert_eq!(messages(text), vec![want.to_string()], "{text}");
    }
}

#[test]
fn buildkit_accepts_these_oddities() {
    // Flags BuildKit never checks.
    typed("FROM x\nSTOPSIGNAL --foo SIGTERM");
    typed("ARG --foo=bar NAME\nFROM x");
    typed("FROM x\nHEALTHCHECK --bogus NONE");
    // Repeatable flags, `--` and case-insensitive booleans.
    typed("FROM x\nCOPY --exclude=a --exclude=b --link=TRUE -- a b");
    // Repeated flags keep their order whatever is taken before them: an
    // exception must stay after the pattern it excepts from.
    let f = typed("FROM x\nCOPY --from=s --exclude=a --exclude=!a/b --chown=1 --exclude=c x y");
    let InstructionKind::Copy(copy) = &f.stages[0].instructions[0].kind else {
        panic!("not a COPY")
    };
    let excludes: Vec<&str> = copy.exclude.iter().map(|e| e.value.as_str()).collect();
    assert_eq!(excludes, ["a", "!a/b", "c"]);
    typed("FROM x\nRUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/b true");
    // Unterminated JSON is a shell-form command.
    let f = typed("FROM x\nCMD [\"echo\", \"b\"");
    assert!(matches!(
        &f.stages[0].instructions[0].kind,
        InstructionKind::Cmd(CommandLine::Shell(s)) if s == "[\"echo\", \"b\""
    ));
    // Zero durations are allowed.
    typed("FROM x\nHEALTHCHECK --interval=0s --timeout=0 CMD a");
}

#[test]
fn healthcheck_cmd() {
    // BuildKit's TestHealthCheckCmd and TestParseOptInterval.
    let f = typed("FROM x\nHEALTHCHECK --interval=5s --timeout=1ms --retries=3 CMD hello world");
    let InstructionKind::Healthcheck(hc) = &f.stages[0].instructions[0].kind else {
        panic!("not a healthcheck")
    };
    assert_eq!(
        hc,
        &HealthcheckInstr::Check {
            test: CommandLine::Shell("hello world".into()),
            interval_ns: Some(5_000_000_000),
            timeout_ns: Some(1_000_000),
            start_period_ns: None,
            start_interval_ns: None,
            retries: Some(3),
        }
    );
    let f = typed("FROM x\nHEALTHCHECK NONE");
    assert!(matches!(
        f.stages[0].instructions[0].kind,
        InstructionKind::Healthcheck(HealthcheckInstr::None)
    ));
}

/// (name, content, expand or chomp) of the heredocs of one instruction.
type Expected = &'static [(&'static str, &'static str, bool)];

#[test]
fn copy_heredocs() {
    // BuildKit's TestCopyHeredoc.
    let cases: &[(&str, &[&str], &str, Expected)] = &[
        ("COPY /foo /bar", &["/foo"], "/bar", &[]),
        (
            "COPY <<EOF /bar\nEOF",
            &["<<EOF"],
            "/bar",
            &[("EOF", "", true)],
        ),
        (
            "COPY <<EOF /bar\nTESTING\nEOF",
            &["<<EOF"],
            "/bar",
            &[("EOF", "TESTING\n", true)],
        ),
        (
            "COPY <<-EOF /bar\n\tTESTING\nEOF",
            &["<<EOF"],
            "/bar",
            &[("EOF", "TESTING\n", true)],
        ),
        (
            "COPY <<'EOF' /bar\nTESTING\nEOF",
            &["<<EOF"],
            "/bar",
            &[("EOF", "TESTING\n", false)],
        ),
        (
            "COPY <<EOF1 <<EOF2 /bar\nthis is the first file\nEOF1\nthis is the second file\nEOF2",
            &["<<EOF1", "<<EOF2"],
            "/bar",
            &[
                ("EOF1", "this is the first file\n", true),
                ("EOF2", "this is the second file\n", true),
            ],
        ),
        (
            "COPY <<EOF foo.txt /bar\nthis is inline\nEOF",
            &["<<EOF", "foo.txt"],
            "/bar",
            &[("EOF", "this is inline\n", true)],
        ),
        (
            "COPY <<EOF /quotes\n\"quotes\"\nEOF",
            &["<<EOF"],
            "/quotes",
            &[("EOF", "\"quotes\"\n", true)],
        ),
    ];
    for (body, sources, dest, docs) in cases {
        let f = typed(&format!("FROM x\n{body}"));
        let InstructionKind::Copy(copy) = &f.stages[0].instructions[0].kind else {
            panic!("not a copy")
        };
        let got: Vec<&str> = copy.sources.iter().map(|s| s.value.as_str()).collect();
        assert_eq!(got, *sources, "{body}");
        assert_eq!(copy.dest.value, *dest);
        let got: Vec<(&str, &str, bool)> = copy
            .heredocs
            .iter()
            .map(|h| (h.name.as_str(), h.content.as_str(), h.expand))
            .collect();
        assert_eq!(got, *docs, "{body}");
    }
}

#[test]
fn run_heredocs() {
    // BuildKit's TestRunHeredoc (contents here are chomped for `<<-`).
    let cases: &[(&str, CommandLine, Expected)] = &[
        (
            "RUN [\"ls\", \"/\"]",
            CommandLine::Exec(vec!["ls".into(), "/".into()]),
            &[],
        ),
        (
            "RUN [\"<<EOF\"]",
            CommandLine::Exec(vec!["<<EOF".into()]),
            &[],
        ),
        ("RUN ls /", CommandLine::Shell("ls /".into()), &[]),
        (
            "RUN <<EOF\nls /\nwhoami\nEOF",
            CommandLine::Shell("<<EOF".into()),
            &[("EOF", "ls /\nwhoami\n", false)],
        ),
        (
            "RUN <<'EOF' | python\nprint(\"hello\")\nprint(\"world\")\nEOF",
            CommandLine::Shell("<<'EOF' | python".into()),
            &[("EOF", "print(\"hello\")\nprint(\"world\")\n", false)],
        ),
        (
            "RUN <<-EOF\n\techo test\nEOF",
            CommandLine::Shell("<<-EOF".into()),
            &[("EOF", "echo test\n", true)],
        ),
    ];
    for (body, command, docs) in cases {
        let f = typed(&format!("FROM x\n{body}"));
        let InstructionKind::Run(run) = &f.stages[0].instructions[0].kind else {
            panic!("not a run")
        };
        assert_eq!(&run.command, command, "{body}");
        let got: Vec<(&str, &str, bool)> = run
            .heredocs
            .iter()
            .map(|h| (h.name.as_str(), h.content.as_str(), h.chomp))
            .collect();
        assert_eq!(got, *docs, "{body}");
    }
}

#[test]
fn run_flags_used() {
    // BuildKit's TestRunCmdFlagsUsed.
    let f = typed("FROM x\nRUN --mount=type=tmpfs,target=/foo/ echo hello");
    let InstructionKind::Run(run) = &f.stages[0].instructions[0].kind else {
        panic!("not a run")
    };
    let mounts: Vec<&str> = run.mounts.iter().map(|m| m.value.as_str()).collect();
    assert_eq!(mounts, ["type=tmpfs,target=/foo/"]);
    assert_eq!(run.command, CommandLine::Shell("echo hello".into()));
}

#[test]
fn stages_and_global_args() {
    let text = "ARG A=1\nARG B\nFROM img:$A AS Build\nARG A\nENV X=\"y z\"\nFROM --platform=$BUILDPLATFORM build\nONBUILD RUN <<EOF\necho hi\nEOF\n";
    let f = typed(text);
    assert_eq!(f.global_args.len(), 2);
    assert_eq!(f.global_args[0].value[0].name.value, "A");
    assert_eq!(
        f.global_args[0].value[0]
            .default
            .as_ref()
            .map(|d| d.value.as_str()),
        Some("1")
    );
    assert!(f.global_args[1].value[0].default.is_none());
    assert_eq!(f.stages.len(), 2);
    assert_eq!(f.stages[0].from.base.value, "img:$A");
    assert_eq!(
        f.stages[0].from.name.as_ref().map(|n| n.value.as_str()),
        Some("Build")
    );
    let InstructionKind::Env(env) = &f.stages[0].instructions[1].kind else {
        panic!("not env")
    };
    assert_eq!(
        (env[0].key.value.as_str(), env[0].value.value.as_str()),
        ("X", "\"y z\"")
    );
    let platform = f.stages[1].from.platform.as_ref().map(|p| p.value.as_str());
    assert_eq!(platform, Some("$BUILDPLATFORM"));
    let span = f.stages[1].from.platform.as_ref().map(|p| p.span);
    assert_eq!(
        span.map(|s| &text[s.offset()..s.offset() + s.len()]),
        Some("$BUILDPLATFORM")
    );
    let InstructionKind::Onbuild { trigger, parsed } = &f.stages[1].instructions[0].kind else {
        panic!("not onbuild")
    };
    assert_eq!(trigger, "RUN <<EOF\necho hi\nEOF");
    assert!(matches!(&parsed.kind, InstructionKind::Run(r) if r.heredocs.len() == 1));
    let InstructionKind::Arg(args) = &f.stages[0].instructions[0].kind else {
        panic!("not arg")
    };
    assert_eq!(args[0].name.value, "A");
}

#[test]
fn expose_ports_sorted_like_buildkit() {
    let f = typed("FROM x\nEXPOSE 8080 443 80/udp");
    let InstructionKind::Expose(ports) = &f.stages[0].instructions[0].kind else {
        panic!("not expose")
    };
    let got: Vec<&str> = ports.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(got, ["443", "80/udp", "8080"]);
}
