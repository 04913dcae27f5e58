//! Dockerfile problems: one test per kind (code, position, message), several problems
//! in one file, the rendered report people see, and no panics on any input.

use forge_frontend::dockerfile::{self, codes};
use forge_frontend::syntax::SourceFile;
use forge_frontend::FrontendError;

/// (code, line, column, message) of every problem `parse` reports.
fn problems(text: &str) -> Vec<(&'static str, usize, usize, String)> {
    let source = SourceFile::new("Dockerfile", text);
    let err = dockerfile::parse(&source).expect_err("should fail");
    err.problems()
        .iter()
        .map(|p| {
            let (line, col) = source.line_col(p.span.offset());
            (p.code, line, col, p.message.clone())
        })
        .collect()
}

fn one(text: &str) -> (&'static str, usize, usize, String) {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "{text:?}: {all:?}");
    all.remove(0)
}

fn help(text: &str) -> String {
    let source = SourceFile::new("Dockerfile", text);
    let err = dockerfile::parse(&source).expect_err("should fail");
    err.problems()[0].help.clone().unwrap_or_default()
}

fn p(
    code: &'static str,
    line: usize,
    col: usize,
    msg: &str,
) -> (&'static str, usize, usize, String) {
    (code, line, col, msg.to_string())
}

#[test]
fn unknown_instruction() {
    assert_eq!(
        one("FROM alpine\nRUNN echo hi\n"),
        p(
            codes::UNKNOWN_INSTRUCTION,
            2,
            1,
            "unknown instruction: RUNN"
        )
    );
    assert_eq!(help("FROM alpine\nRUNN echo hi\n"), "did you mean `RUN`?");
    assert_eq!(
        one("FROM alpine\n  cpoy a b\n"),
        p(
            codes::UNKNOWN_INSTRUCTION,
            2,
            3,
            "unknown instruction: cpoy"
        )
    );
}

#[test]
fn unknown_flag() {
    assert_eq!(
        one("FROM alpine\nCOPY --chwon=me a b\n"),
        p(codes::UNKNOWN_FLAG, 2, 6, "unknown flag: --chwon")
    );
    let h = help("FROM alpine\nCOPY --chwon=me a b\n");
    assert!(h.starts_with("did you mean `--chown`?"), "{h}");
    assert!(h.contains("--from, --chmod, --link"), "{h}");
    assert_eq!(help("FROM alpine\nENV --x A=b\n"), "ENV takes no flags");
    assert_eq!(
        one("FROM alpine\nRUN --device=x true\n"),
        p(codes::UNKNOWN_FLAG, 2, 5, "unknown flag: --device")
    );
}

#[test]
fn bad_flag_value() {
    assert_eq!(
        one("FROM alpine\nCOPY --link=maybe a b\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            13,
            "expecting boolean value for flag --link, not: maybe"
        )
    );
    assert_eq!(
        one("FROM alpine\nCOPY --chown a b\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            6,
            "missing a value on flag: --chown"
        )
    );
    assert_eq!(
        one("FROM alpine\nRUN --network=bridge true\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            15,
            "invalid network mode \"bridge\""
        )
    );
    assert_eq!(
        one("FROM alpine\nADD --from=x a b\n"),
        p(codes::UNKNOWN_FLAG, 2, 5, "unknown flag: --from")
    );
}

#[test]
fn duplicate_flag() {
    assert_eq!(
        one("FROM alpine\nCOPY --from=a --from=b x y\n"),
        p(
            codes::DUPLICATE_FLAG,
            2,
            15,
            "duplicate flag specified: --from"
        )
    );
}

#[test]
fn unterminated_heredoc() {
    let text = "FROM alpine\nRUN python3 <<EOF\nprint('hi')\n";
    assert_eq!(
        one(text),
        p(codes::UNTERMINATED_HEREDOC, 2, 13, "unterminated heredoc")
    );
    assert_eq!(help(text), "end it with a line containing only `EOF`");
    // parse_ast reports it too.
    let source = SourceFile::new("Dockerfile", text);
    let err = dockerfile::parse_ast(&source).expect_err("should fail");
    assert_eq!(err.problems()[0].code, codes::UNTERMINATED_HEREDOC);
    // The second of two heredocs.
    assert_eq!(
        one("FROM alpine\nCOPY <<A <<B /x\na\nA\nb\n"),
        p(codes::UNTERMINATED_HEREDOC, 2, 10, "unterminated heredoc")
    );
}

#[test]
fn bad_heredoc_delimiter() {
    // BuildKit splits `${x:-a <<'b c'}` into words and then cannot read the
    // delimiter of the word `<<'b`.
    assert_eq!(
        one("FROM alpine\nRUN ${x:-a <<'b c'}\n"),
        p(
            codes::BAD_HEREDOC,
            2,
            5,
            "failed to process \"'b\": unexpected end of statement while looking for matching single-quote"
        )
    );
}

#[test]
fn invalid_json_where_it_is_an_error() {
    assert_eq!(
        one("FROM alpine\nCMD [ \"echo\", [ \"nested json\" ] ]\n"),
        p(
            codes::INVALID_JSON,
            2,
            5,
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    );
    assert_eq!(
        one("FROM alpine\nSHELL /bin/bash -c\n"),
        p(
            codes::INVALID_JSON,
            2,
            7,
            "SHELL requires the arguments to be in JSON form"
        )
    );
    // An unterminated array is just a shell-form command for SHELL too: still not JSON.
    assert_eq!(
        one("FROM alpine\nSHELL [\"/bin/bash\", \"-c\"\n"),
        p(
            codes::INVALID_JSON,
            2,
            7,
            "SHELL requires the arguments to be in JSON form"
        )
    );
    // ... but fine for CMD, as in BuildKit.
    assert!(dockerfile::parse(&SourceFile::new("D", "FROM a\nCMD [\"a\", \"b\"\n")).is_ok());
}

#[test]
fn instruction_before_from() {
    assert_eq!(
        one("ARG V=1\nRUN echo $V\nFROM alpine\n"),
        p(
            codes::INSTRUCTION_BEFORE_FROM,
            2,
            1,
            "no build stage in current context"
        )
    );
    assert!(help("RUN x\nFROM a").contains("only ARG may come before the first FROM"));
}

#[test]
fn missing_arguments() {
    assert_eq!(
        one("FROM alpine\nCOPY onlyone\n"),
        p(
            codes::MISSING_ARGUMENTS,
            2,
            6,
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined"
        )
    );
    assert_eq!(
        one("FROM alpine\nWORKDIR\n"),
        p(
            codes::MISSING_ARGUMENTS,
            2,
            1,
            "WORKDIR requires exactly one argument"
        )
    );
    assert_eq!(
        one("FROM\n"),
        p(
            codes::MISSING_ARGUMENTS,
            1,
            1,
            "FROM requires either one or three arguments"
        )
    );
    assert_eq!(
        one("FROM alpine AS\n"),
        p(
            codes::MISSING_ARGUMENTS,
            1,
            13,
            "FROM requires either one or three arguments"
        )
    );
    assert_eq!(
        one("FROM alpine\nHEALTHCHECK CMD\n"),
        p(
            codes::MISSING_ARGUMENTS,
            2,
            13,
            "Missing command after HEALTHCHECK CMD"
        )
    );
}

#[test]
fn empty_from_flag() {
    assert_eq!(
        one("FROM alpine AS a\nFROM alpine\nCOPY --from= /x /y\n"),
        p(codes::EMPTY_FROM_FLAG, 3, 6, "COPY --from requires a value")
    );
}

#[test]
fn env_without_value() {
    assert_eq!(
        one("FROM alpine\nENV PATH\n"),
        p(codes::MISSING_VALUE, 2, 5, "ENV must have two arguments")
    );
    assert_eq!(
        one("FROM alpine\nENV =value\n"),
        p(codes::BLANK_NAME, 2, 5, "ENV names can not be blank")
    );
    assert_eq!(
        one("FROM alpine\nLABEL a=1 b\n"),
        p(
            codes::MISSING_EQUALS,
            2,
            11,
            "Syntax error - can't find = in \"b\". Must be of the form: name=value"
        )
    );
}

#[test]
fn bad_stage_name() {
    assert_eq!(
        one("FROM alpine AS 1st\n"),
        p(
            codes::BAD_STAGE_NAME,
            1,
            16,
            "invalid name for build stage: \"1st\", name can't start with a number or contain symbols"
        )
    );
    assert!(dockerfile::parse(&SourceFile::new("D", "FROM a AS Build_1.x-y\n")).is_ok());
}

#[test]
fn onbuild_onbuild() {
    assert_eq!(
        one("FROM alpine\nONBUILD ONBUILD RUN echo\n"),
        p(
            codes::BAD_ONBUILD,
            2,
            9,
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"
        )
    );
    assert_eq!(
        one("FROM alpine\nonbuild from scratch\n"),
        p(
            codes::BAD_ONBUILD,
            2,
            9,
            "FROM isn't allowed as an ONBUILD trigger"
        )
    );
    // The trigger is checked like any instruction.
    assert_eq!(
        one("FROM alpine\nONBUILD COPY --bogus a b\n"),
        p(codes::UNKNOWN_FLAG, 2, 14, "unknown flag: --bogus")
    );
}

#[test]
fn bad_healthcheck_duration() {
    assert_eq!(
        one("FROM alpine\nHEALTHCHECK --interval=5x CMD true\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            24,
            "time: unknown unit \"x\" in duration \"5x\""
        )
    );
    assert_eq!(
        one("FROM alpine\nHEALTHCHECK --timeout=100us CMD true\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            23,
            "Interval \"timeout\" cannot be less than 1ms"
        )
    );
    assert_eq!(
        one("FROM alpine\nHEALTHCHECK --retries=many CMD true\n"),
        p(
            codes::BAD_FLAG_VALUE,
            2,
            23,
            "strconv.ParseInt: parsing \"many\": invalid syntax"
        )
    );
    assert_eq!(
        one("FROM alpine\nHEALTHCHECK CONNECT x\n"),
        p(
            codes::BAD_HEALTHCHECK,
            2,
            13,
            "Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)"
        )
    );
}

#[test]
fn no_instructions() {
    for text in ["", "\n\n", "# Hello\n# These are just comments\n\n", "\\\n"] {
        let all = problems(text);
        let wanted = if text == "\\\n" {
            // A lone continuation is an (empty, unknown) instruction in BuildKit.
            codes::UNKNOWN_INSTRUCTION
        } else {
            codes::NO_INSTRUCTIONS
        };
        assert_eq!(all.len(), 1, "{text:?}");
        assert_eq!(all[0].0, wanted, "{text:?}");
    }
    assert_eq!(problems("")[0].3, "file with no instructions");
}

#[test]
fn directive_problems() {
    assert_eq!(
        one("# escape=`\n# escape=\\\nFROM alpine\n"),
        p(
            codes::BAD_DIRECTIVE,
            2,
            1,
            "only one escape parser directive can be used"
        )
    );
    assert_eq!(
        one("# escape=x\nFROM alpine\n"),
        p(
            codes::BAD_DIRECTIVE,
            1,
            1,
            "invalid escape token 'x' does not match ` or \\"
        )
    );
}

#[test]
fn three_problems_are_all_reported() {
    let text = "FROM alpine AS 1st\nRUNN echo hi\nCOPY --nope a b\n";
    let all = problems(text);
    assert_eq!(
        all,
        vec![
            p(
                codes::BAD_STAGE_NAME,
                1,
                16,
                "invalid name for build stage: \"1st\", name can't start with a number or contain symbols"
            ),
            p(codes::UNKNOWN_INSTRUCTION, 2, 1, "unknown instruction: RUNN"),
            p(codes::UNKNOWN_FLAG, 3, 6, "unknown flag: --nope"),
        ]
    );
}

#[test]
fn parser_and_typed_problems_together() {
    // A bad line does not stop the parser: later instructions are still checked.
    let text = "FROM alpine\nENV PATH\nCMD [1]\nCOPY --from= a b\nRUN <<EOF\n";
    let codes_found: Vec<&str> = problems(text).into_iter().map(|p| p.0).collect();
    assert_eq!(
        codes_found,
        vec![
            codes::MISSING_VALUE,
            codes::INVALID_JSON,
            codes::EMPTY_FROM_FLAG,
            codes::UNTERMINATED_HEREDOC
        ]
    );
}

fn render(err: &FrontendError) -> String {
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    if let Err(e) = handler.render_report(&mut out, err) {
        panic!("render failed: {e}");
    }
    out
}

#[test]
fn rendered_report() {
    let text = "# syntax=docker/dockerfile:1\nFROM alpine:3.20 AS 1st\nRUNN apk add curl\nCOPY --chwon=app:app \\\n     src/ /app/\nENV PATH\nHEALTHCHECK --interval=5x CMD curl -f http://localhost/\n";
    let source = SourceFile::new("Dockerfile", text);
    let err = dockerfile::parse(&source).expect_err("should fail");
    assert_eq!(err.problems().len(), 5);
    insta::assert_snapshot!("dockerfile_problems_rendered", render(&err));
}

/// xorshift, so the garbage is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn must_not_panic(text: &str) {
    let source = SourceFile::new("Dockerfile", text);
    if let Ok(ast) = dockerfile::parse_ast(&source) {
        let _ = dockerfile::dump(&ast);
    }
    let _ = dockerfile::parse(&source);
}

#[test]
fn never_panics_on_garbage() {
    const PIECES: &[&str] = &[
        "FROM",
        "RUN",
        "COPY",
        "ADD",
        "ONBUILD",
        "ENV",
        "ARG",
        "HEALTHCHECK",
        "SHELL",
        "CMD",
        " ",
        "\t",
        "\n",
        "\r\n",
        "\\",
        "`",
        "\\\n",
        "#",
        "# escape=`\n",
        "<<EOF",
        "<<-'E'",
        "EOF\n",
        "[",
        "]",
        "\"",
        "'",
        "=",
        "--",
        "--from=",
        "--link",
        "${",
        "$",
        "{",
        "}",
        "\u{0}",
        "\u{85}",
        "\u{a0}",
        "\u{2028}",
        "\u{feff}",
        "é",
        "日本",
        "\u{1F600}",
        "[\"a\",",
        "1e999",
        "\\u",
        "NONE",
        "AS",
        "-",
        "<",
        "<<",
        "\u{10FFFF}",
        "\u{7f}",
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..3000 {
        let n = (rng.next() % 40) as usize;
        let text: String = (0..n)
            .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
            .collect();
        must_not_panic(&text);
    }
    let specials = [
        "[".repeat(100_000),
        format!("CMD {}", "[".repeat(60_000)),
        format!("RUN [{}", "{\"a\":[".repeat(20_000)),
        "\\".repeat(10_000),
        "\\\n".repeat(10_000),
        format!("{}RUN x", "ONBUILD ".repeat(8_000)),
        "RUN <<EOF".to_string(),
        "RUN <<EOF\n".to_string(),
        "COPY <<A <<B /x\nA\n".to_string(),
        "RUN <<'".to_string(),
        "RUN <<\"".to_string(),
        "RUN <<${".to_string(),
        "RUN <<${x:".to_string(),
        "RUN <<${x/".to_string(),
        format!("LABEL a={}", "b".repeat(70_000)),
        "\u{feff}".to_string(),
        "\u{feff}\u{feff}FROM x".to_string(),
        "FROM x\nHEALTHCHECK --interval=99999999999999999999h CMD a".to_string(),
        "FROM x\nHEALTHCHECK --interval=.ns --timeout=-5s --retries=99999999999 CMD a".to_string(),
        "# escape=\n# escape= \nFROM x".to_string(),
    ];
    for text in &specials {
        must_not_panic(text);
    }
}

#[test]
fn never_panics_on_truncated_testfiles() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/buildkit-parser/testfiles"
    );
    for name in [
        "env",
        "escapes",
        "health",
        "json",
        "lk4d4-the-edge-case-generator",
        "continueIndent",
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{name}/Dockerfile"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, _) in text.char_indices() {
            must_not_panic(&text[..i]);
        }
    }
    let heredocs = "FROM a\nRUN <<EOF <<-'X'\n\techo $HOME\nEOF\n\tX\nCOPY <<\"a b\" /x\nhi\na b\n";
    for (i, _) in heredocs.char_indices() {
        must_not_panic(&heredocs[..i]);
    }
}

#[test]
fn parses_two_thousand_lines_quickly() {
    let mut text =
        String::from("# syntax=docker/dockerfile:1\nARG BASE=alpine\nFROM $BASE AS build\n");
    // Six lines per round.
    for i in 0..334 {
        text.push_str(&format!(
            "RUN --mount=type=cache,target=/var/cache/apk apk add --no-cache pkg{i} && \\\n    echo \"done {i}\" > /tmp/{i}\n\
             ENV VAR{i}=\"value {i}\" OTHER{i}=x\n\
             COPY --from=build --chown=app:app /src/{i} /dst/{i}\n\
             LABEL org.example.n{i}=\"{i}\"\n\
             CMD [\"/bin/app\", \"--n\", \"{i}\"]\n"
        ));
    }
    assert!(text.lines().count() >= 2000);
    let source = SourceFile::new("Dockerfile", text);
    // Warm up, then take the best of a few runs.
    let _ = dockerfile::parse(&source).expect("parses");
    let best = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            let file = dockerfile::parse(&source).expect("parses");
            assert_eq!(file.stages.len(), 1);
            start.elapsed()
        })
        .min()
        .unwrap_or_default();
    // Well under 2 ms in release; debug builds get far more room.
    let limit = if cfg!(debug_assertions) { 100 } else { 2 };
    assert!(
        best < std::time::Duration::from_millis(limit),
        "parsing 2000 lines took {best:?}"
    );
}
