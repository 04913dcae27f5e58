//! Conformance of `forge_frontend::shell` with BuildKit's Dockerfile shell lexer.
//!
//! * `envVarTest` and `wordsTest` are BuildKit's own data files, driven the way
//!   BuildKit's `lex_test.go` drives them.
//! * The other tests port `lex_test.go`'s table tests and add cases the data lacks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use forge_frontend::shell::{Env, Expansion, Lexer, Lookup, ShellError};

const ENV_VAR_TEST: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/buildkit-shell/envVarTest"
));
const WORDS_TEST: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/buildkit-shell/wordsTest"
));

/// BuildKit's `EnvsFromSlice`: `k=v` items (`k` alone is `k=`), the last one wins.
fn envs_from_slice<S: AsRef<str>>(items: &[S]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|item| {
            let item = item.as_ref();
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Variables in `set` have values; every other name is [`Lookup::Unknown`], so that
/// [`Expansion::unknown`] lists exactly the names BuildKit reports as unmatched.
struct UnsetIsUnknown(BTreeMap<String, String>);

impl Env for UnsetIsUnknown {
    fn lookup(&self, name: &str) -> Lookup {
        match self.0.get(name) {
            Some(v) => Lookup::Set(v.clone()),
            None => Lookup::Unknown,
        }
    }
}

fn word(lexer: &Lexer, input: &str, env: &dyn Env) -> Result<String, String> {
    lexer
        .process_word(input, env)
        .map(|e| e.value)
        .map_err(|e| e.message)
}

fn words(lexer: &Lexer, input: &str, env: &dyn Env) -> Result<Vec<String>, String> {
    lexer
        .process_words(input, env)
        .map(|e| e.words)
        .map_err(|e| e.message)
}

// ---------------------------------------------------------------------------------
// BuildKit's data files
// ---------------------------------------------------------------------------------

#[test]
fn buildkit_env_var_test() {
    let lexer = Lexer::new('\\');
    let env = envs_from_slice(&["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
    let (mut run, mut windows_only) = (0, 0);
    let mut failures = Vec::new();
    for (n, line) in ENV_VAR_TEST.lines().enumerate() {
        let line_no = n + 1;
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 3, "line {line_no}: {line:?}");
        let (platform, source, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        match platform {
            "A" | "U" => {}
            "W" => {
                windows_only += 1;
                continue;
            }
            other => panic!("line {line_no}: bad platform tag {other:?}"),
        }
        run += 1;
        let got = word(&lexer, source, &env);
        let ok = match &got {
            Err(_) => expected == "error",
            Ok(v) => expected != "error" && v == expected,
        };
        if !ok {
            failures.push(format!(
                "line {line_no}: {source:?} expected {expected:?}, got {got:?}"
            ));
        }
    }
    println!(
        "envVarTest: {} of {run} cases passed ({windows_only} Windows-only skipped)",
        run - failures.len()
    );
    assert!(run > 200, "only {run} cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn buildkit_words_test() {
    // lex_test.go also loops a second time with RawQuotes and SkipUnsetEnv, but over
    // the already exhausted file, so that mode never runs any case; neither do we.
    let lexer = Lexer::new('\\');
    let mut env: Vec<String> = Vec::new();
    let mut run = 0;
    let mut failures = Vec::new();
    for (n, line) in WORDS_TEST.lines().enumerate() {
        let line_no = n + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            env.push(rest.trim_start_matches(' ').to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {line_no}: {line:?}");
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        run += 1;
        let got = words(&lexer, input, &envs_from_slice(&env))
            .unwrap_or_else(|_| vec!["error".to_string()]);
        if got != expected {
            failures.push(format!(
                "line {line_no}: {input:?} expected {expected:?}, got {got:?}"
            ));
        }
    }
    println!("wordsTest: {} of {run} cases passed", run - failures.len());
    assert!(run > 20, "only {run} cases found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------
// Ports of lex_test.go's table tests
// ---------------------------------------------------------------------------------

#[test]
fn buildkit_mandatory_env_vars() {
    let lexer = Lexer::new('\\');
    let set_envs = envs_from_slice(&["VAR=plain", "ARG=x"]);
    let empty_envs = envs_from_slice(&["VAR=", "ARG=x"]);
    let unset_envs = envs_from_slice(&["ARG=x"]);
    let no_empty = "${VAR:?message here$ARG}";
    let no_unset = "${VAR?message here$ARG}";
    let message = Err("VAR: message herex".to_string());

    assert_eq!(word(&lexer, no_empty, &set_envs), Ok("plain".into()));
    assert_eq!(word(&lexer, no_empty, &empty_envs), message);
    assert_eq!(word(&lexer, no_empty, &unset_envs), message);

    assert_eq!(word(&lexer, no_unset, &set_envs), Ok("plain".into()));
    assert_eq!(word(&lexer, no_unset, &empty_envs), Ok(String::new()));
    assert_eq!(word(&lexer, no_unset, &unset_envs), message);
}

#[test]
fn buildkit_get_env() {
    let get = |items: &[&str], name: &str| match envs_from_slice(items).lookup(name) {
        Lookup::Set(v) => v,
        _ => String::new(),
    };
    assert_eq!(get(&[], "foo"), "");
    assert_eq!(get(&["foo"], "foo"), "");
    assert_eq!(get(&["foo="], "foo"), "");
    assert_eq!(get(&["foo=bar"], "foo"), "bar");
    assert_eq!(get(&["foo=bar", "car=hat"], "foo"), "bar");
    assert_eq!(get(&["foo=bar", "car=hat"], "car"), "hat");
    assert_eq!(get(&["foo=bar", "car=hat", "car=bike"], "car"), "bike");
}

/// `TestProcessWithMatches`: value (or error), matched names, unmatched names.
#[test]
fn buildkit_process_with_matches() {
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        &'static [&'static str],
        &'static [&'static str],
    );
    let fx: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
    let cases: &[Case] = &[
        ("x", &[("DUMMY", "dummy")], Some("x"), &[], &[]),
        (
            "x ${UNUSED}",
            &[("DUMMY", "dummy")],
            Some("x "),
            &[],
            &["UNUSED"],
        ),
        ("x ${FOO}", &[("FOO", "y")], Some("x y"), &["FOO"], &[]),
        (
            "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
            fx,
            Some("xxx  ccc"),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        (
            "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            fx,
            Some("xxx bbb ccc"),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        ("${FOO:-}", fx, Some("xxx"), &["FOO"], &[]),
        ("${FOO:-}", &[], Some(""), &[], &["FOO"]),
        (
            "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
            fx,
            Some("aaa bbb "),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        (
            "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
            fx,
            Some("aaa  "),
            &["FOO", "BAR"],
            &["BAZ"],
        ),
        ("${FOO?aaa}", fx, Some("xxx"), &["FOO"], &[]),
        ("${BAR?bbb}", fx, Some(""), &["BAR"], &[]),
        ("${BAZ?ccc}", fx, None, &[], &[]),
        ("${FOO:?aaa}", fx, Some("xxx"), &["FOO"], &[]),
        ("${BAR:?bbb}", fx, None, &[], &[]),
        ("${BAZ:?ccc}", fx, None, &[], &[]),
        ("${BAZ:?}", fx, None, &[], &[]),
        ("${FOO=aaa}", fx, None, &[], &[]),
        ("${FOO=:aaa}", fx, None, &[], &[]),
        ("${FOO=}", &[], None, &[], &[]),
        (
            "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
            &[("FOO", "()[]{}^$.*?|\\x")],
            Some("x"),
            &["FOO"],
            &[],
        ),
        (
            "${FOO%%\\**}",
            &[("FOO", "xx**")],
            Some("xx"),
            &["FOO"],
            &[],
        ),
        ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y"), &["FOO"], &[]),
        ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        (
            "${FOO#$BAR}",
            &[("FOO", "xxyy"), ("BAR", "x")],
            Some("xyy"),
            &["FOO", "BAR"],
            &[],
        ),
        (
            "${FOO#$BAR}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("xxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy"), &["FOO"], &[]),
        ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO#?\\?}", &[("FOO", "???y")], Some("?y"), &["FOO"], &[]),
        (
            "${ABC:-.}${FOO%x}${ABC:-.}",
            &[("FOO", "xxyy")],
            Some(".xxyy."),
            &["FOO"],
            &["ABC"],
        ),
        (
            "${FOO%%\\**\\*}",
            &[("FOO", "a***yy*")],
            Some("a"),
            &["FOO"],
            &[],
        ),
        ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        (
            "${FOO%%$BAR}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("xxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO:#}", &[], None, &[], &[]),
        ("${FOO:##}", &[], None, &[], &[]),
        ("${FOO:%}", &[], None, &[], &[]),
        ("${FOO:%%}", &[], None, &[], &[]),
        (
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
            Some("/foo.*/*.txt - /foo..*.txt"),
            &["FOO", "NEEDLE"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
            &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
            Some("/tmp/bar.txt - /bar.txt"),
            &["FOO", "NEEDLE"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
            &[
                ("FOO", "/a/foo/b/c.txt"),
                ("NEEDLE", "/?/"),
                ("REPLACEMENT", "/"),
            ],
            Some("/foo/b/c.txt - /foo/c.txt"),
            &["FOO", "NEEDLE", "REPLACEMENT"],
            &[],
        ),
        (
            "${FOO/$NEEDLE/$REPLACEMENT}",
            &[
                ("FOO", "http://google.de"),
                ("NEEDLE", "http://"),
                ("REPLACEMENT", "https://"),
            ],
            Some("https://google.de"),
            &["FOO", "NEEDLE", "REPLACEMENT"],
            &[],
        ),
        (
            "${FOO//\\//\\/}",
            &[("FOO", "/tmp/foo.txt")],
            Some("\\/tmp\\/foo.txt"),
            &["FOO"],
            &[],
        ),
        (
            "${FOO/$BAR/ww}",
            &[("FOO", "xxyy"), ("BAR", "")],
            Some("wwxxyy"),
            &["FOO", "BAR"],
            &[],
        ),
        ("${FOO//ww}", &[("FOO", "xxyy")], None, &[], &[]),
        ("${FOO//}", &[("FOO", "xxyy")], None, &[], &[]),
        ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy"), &["FOO"], &[]),
        ("${FOO///}", &[], Some(""), &[], &["FOO"]),
    ];
    let lexer = Lexer::new('\\');
    for &(input, env, expected, matched, unmatched) in cases {
        let env = UnsetIsUnknown(map(env));
        let got = lexer.process_word(input, &env);
        match (expected, got) {
            (None, Err(_)) => {}
            (None, Ok(e)) => panic!("{input:?}: expected an error, got {e:?}"),
            (Some(_), Err(e)) => panic!("{input:?}: unexpected error {e:?}"),
            (Some(want), Ok(e)) => {
                assert_eq!(e.value, want, "{input:?}");
                assert_eq!(e.used, set(matched), "{input:?}: matched");
                assert_eq!(e.unknown, set(unmatched), "{input:?}: unmatched");
            }
        }
    }
}

#[test]
fn buildkit_process_with_matches_platform() {
    let release =
        "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
    let lexer = Lexer::new('\\');
    let base = [("VERSION", "v1.2.3"), ("TARGETOS", "linux")];
    let run = |extra: &[(&str, &str)]| {
        let mut env = map(&base);
        env.extend(map(extra));
        word(&lexer, release, &env)
    };
    assert_eq!(
        run(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]),
        Ok("something-v1.2.3.linux-arm-v7.tar.gz".into())
    );
    assert_eq!(
        run(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]),
        Ok("something-v1.2.3.linux-arm64.tar.gz".into())
    );
    assert_eq!(
        run(&[("TARGETARCH", "arm64")]),
        Ok("something-v1.2.3.linux-arm64.tar.gz".into())
    );
}

// ---------------------------------------------------------------------------------
// Cases BuildKit's data lacks (expected values checked against BuildKit's lex.go)
// ---------------------------------------------------------------------------------

fn sample_env() -> BTreeMap<String, String> {
    map(&[
        ("FOO", "xxyy"),
        ("FILE", "archive.tar.gz"),
        ("PATHV", "/usr/local/bin:/usr/bin:/bin"),
        ("URL", "http://example.com/a/b"),
        ("ML", "line1\nline2"),
        ("KO", "한국어"),
        ("EMPTY", ""),
        ("SP", " a  b "),
        ("STAR", "*x"),
        ("BR", "[a]x"),
        ("R", "[$0]"),
    ])
}

fn check_words(lexer: &Lexer, env: &dyn Env, cases: &[(&str, Result<&str, &str>)]) {
    for &(input, expected) in cases {
        let got = word(lexer, input, env);
        let expected = expected.map(str::to_string).map_err(str::to_string);
        assert_eq!(got, expected, "input {input:?}");
    }
}

#[test]
fn prefix_and_suffix_removal() {
    check_words(
        &Lexer::new('\\'),
        &sample_env(),
        &[
            ("${FILE#*.}", Ok("tar.gz")),
            ("${FILE##*.}", Ok("gz")),
            ("${FILE%.*}", Ok("archive.tar")),
            ("${FILE%%.*}", Ok("archive")),
            ("${PATHV#*:}", Ok("/usr/bin:/bin")),
            ("${PATHV##*:}", Ok("/bin")),
            ("${PATHV%:*}", Ok("/usr/local/bin:/usr/bin")),
            ("${PATHV%%:*}", Ok("/usr/local/bin")),
            ("${URL#http://}", Ok("example.com/a/b")),
            ("${URL#*//}", Ok("example.com/a/b")),
            ("${URL%/*}", Ok("http://example.com/a")),
            ("${URL%%/*}", Ok("http:")),
            ("${FILE#nomatch}", Ok("archive.tar.gz")),
            ("${FILE#?}", Ok("rchive.tar.gz")),
            ("${FILE%??}", Ok("archive.tar.")),
            ("${FILE##*}", Ok("")),
            ("${FILE%%*}", Ok("")),
            ("${FILE#*}", Ok("archive.tar.gz")),
            // No bracket expressions: `[` is an ordinary character.
            ("${FILE#[a]}", Ok("archive.tar.gz")),
            ("${BR#[a]}", Ok("x")),
            // `*` and `?` never match a newline.
            ("${ML##*}", Ok("\nline2")),
            ("${ML%%*}", Ok("line1\n")),
            ("${ML#line1?}", Ok("line1\nline2")),
            ("${ML#line1\n}", Ok("line2")),
            ("${KO#한}", Ok("국어")),
            ("${KO%?}", Ok("한국")),
            ("${UNSET#*}", Ok("")),
            ("${UNSET%%x}", Ok("")),
            // Escaped wildcards are literal; quoting does not make them literal.
            ("${STAR#\\*}", Ok("x")),
            ("${FILE#\\*}", Ok("archive.tar.gz")),
            ("${FILE#\"*\".}", Ok("tar.gz")),
            ("${FILE#'*'.}", Ok("tar.gz")),
            // The pattern may come from variables.
            ("${FILE#${FILE%%.*}.}", Ok("tar.gz")),
            (
                "${FOO#x\\y}",
                Err("invalid pattern (x\\y) in substitution: invalid escape '\\y'"),
            ),
            (
                "${FOO:#x}",
                Err("unsupported modifier (:#) in substitution"),
            ),
            (
                "${FOO:%%x}",
                Err("unsupported modifier (:%) in substitution"),
            ),
        ],
    );
}

#[test]
fn pattern_replacement() {
    check_words(
        &Lexer::new('\\'),
        &sample_env(),
        &[
            ("${PATHV/:/ }", Ok("/usr/local/bin /usr/bin:/bin")),
            ("${PATHV//:/ }", Ok("/usr/local/bin /usr/bin /bin")),
            ("${URL/http:/https:}", Ok("https://example.com/a/b")),
            // Stars are greedy in replacements.
            ("${URL/\\/*\\//|}", Ok("http:|b")),
            ("${FILE/.*/}", Ok("archive")),
            ("${FILE//a/A}", Ok("Archive.tAr.gz")),
            ("${FILE//?/-}", Ok("--------------")),
            ("${FOO//*/z}", Ok("z")),
            ("${EMPTY//*/z}", Ok("z")),
            ("${EMPTY/*/z}", Ok("z")),
            ("${FOO///-}", Ok("-x-x-y-y-")),
            ("${ML//?/.}", Ok(".....\n.....")),
            ("${KO//국/-}", Ok("한-어")),
            ("${UNSET/a/b}", Ok("")),
            ("${FOO/[x]/z}", Ok("xxyy")),
            // `//` uses Go's ReplaceAllString: the replacement is a regexp template in
            // which `$0` is the match. `/` inserts the replacement literally.
            ("${FOO//y/$R}", Ok("xx[y][y]")),
            ("${FOO/y/$R}", Ok("xx[$0]y")),
            // `$0` written in the word is the (unset) positional parameter 0.
            ("${FOO//y/[$0]}", Ok("xx[][]")),
            ("${FOO//x}", Err("syntax error: missing '/' in ${}")),
            ("${FOO/x/y", Err("syntax error: missing '}'")),
            (
                "${FOO/x\\y/z}",
                Err("invalid pattern (x\\y) in substitution: invalid escape '\\y'"),
            ),
        ],
    );
}

#[test]
fn required_variable_messages() {
    check_words(
        &Lexer::new('\\'),
        &sample_env(),
        &[
            ("${UNSET?}", Err("UNSET: is not allowed to be unset")),
            ("${UNSET:?}", Err("UNSET: is not allowed to be unset")),
            ("${EMPTY:?}", Err("EMPTY: is not allowed to be empty")),
            ("${EMPTY?}", Ok("")),
            ("${FOO:?}", Ok("xxyy")),
            ("${UNSET:?set it, was $FOO}", Err("UNSET: set it, was xxyy")),
            ("${EMPTY:?'quoted  msg'}", Err("EMPTY: quoted  msg")),
            ("a${FOO:?x}b${UNSET?no way}", Err("UNSET: no way")),
        ],
    );
    let err = Lexer::new('\\').process_word("ab ${UNSET?}", &sample_env());
    assert_eq!(
        err,
        Err(ShellError {
            message: "UNSET: is not allowed to be unset".into(),
            offset: 3
        })
    );
}

#[test]
fn syntax_errors_and_offsets() {
    let lexer = Lexer::new('\\');
    let env = sample_env();
    let cases: &[(&str, &str, usize)] = &[
        ("${}", "syntax error: bad substitution", 0),
        ("a${:-x}", "syntax error: bad substitution", 1),
        ("ab${", "syntax error: missing '}'", 2),
        ("ab${FOO", "syntax error: missing '}'", 2),
        ("ab${FOO:-x", "syntax error: missing '}'", 2),
        ("${FOO=x}", "unsupported modifier (=) in substitution", 0),
        ("${FOO:=x}", "unsupported modifier (:=) in substitution", 0),
        ("${FOO!}", "unsupported modifier (!) in substitution", 0),
        ("${.}", "unsupported modifier (.) in substitution", 0),
        (
            "x 'abc",
            "unexpected end of statement while looking for matching single-quote",
            2,
        ),
        (
            "x \"abc\\\"",
            "unexpected end of statement while looking for matching double-quote",
            2,
        ),
        // An error inside a body that runs to the end of the word is a missing `}`.
        ("${A:-\"x}", "syntax error: missing '}'", 0),
        ("${A:-${B:?no}", "syntax error: missing '}'", 0),
        ("${A:-${B:?no}}", "B: no", 5),
    ];
    for &(input, message, offset) in cases {
        let got = lexer.process_word(input, &env);
        assert_eq!(
            got,
            Err(ShellError {
                message: message.into(),
                offset
            }),
            "input {input:?}"
        );
        // Splitting fails the same way.
        assert_eq!(
            lexer.process_words(input, &env).map_err(|e| e.message),
            Err(message.to_string()),
            "input {input:?}"
        );
    }
}

#[test]
fn backtick_escape() {
    let lexer = Lexer::new('`');
    assert_eq!(lexer.escape(), '`');
    check_words(
        &lexer,
        &sample_env(),
        &[
            ("a`$FOO", Ok("a$FOO")),
            ("a\\b", Ok("a\\b")),
            ("C:\\dir\\$FOO", Ok("C:\\dir\\xxyy")),
            ("\"a`\"b\"", Ok("a\"b")),
            ("\"a\\\"", Ok("a\\")),
            ("\"a`$FOO ``\"", Ok("a$FOO `")),
            ("\"a`b\"", Ok("a`b")),
            ("x`", Ok("x")),
            ("``", Ok("`")),
            ("'`'", Ok("`")),
            ("${UNSET:-`}}", Ok("}")),
            ("\\${FOO}", Ok("\\xxyy")),
        ],
    );
    assert_eq!(
        words(&lexer, "a` b c\\ d", &sample_env()),
        Ok(vec!["a b".to_string(), "c\\".into(), "d".into()])
    );
}

#[test]
fn word_splitting() {
    let lexer = Lexer::new('\\');
    let env = sample_env();
    let cases: &[(&str, &[&str])] = &[
        ("a ${SP} b", &["a", "a", "b", "b"]),
        ("a\"${SP}\"b", &["a a  b b"]),
        ("x$SP", &["x", "a", "b"]),
        ("$ML", &["line1", "line2"]),
        ("\"$ML\"", &["line1\nline2"]),
        ("'' \"\" x", &["x"]),
        ("a\\ b", &["a b"]),
        ("$EMPTY", &[]),
        ("  ", &[]),
        ("", &[]),
        ("a\tb\nc", &["a", "b", "c"]),
        // `<<` and the blanks after it stay with the heredoc word.
        ("cat <<EOF", &["cat", "<<EOF"]),
        ("cat << EOF > f", &["cat", "<< EOF", ">", "f"]),
        ("a < b", &["a", "<", "b"]),
        ("${FOO}${FOO}", &["xxyyxxyy"]),
    ];
    for &(input, expected) in cases {
        let got = lexer.process_words(input, &env).map(|e| e.words);
        assert_eq!(
            got,
            Ok(expected.iter().map(|s| s.to_string()).collect()),
            "input {input:?}"
        );
    }
}

#[test]
fn splitting_keeps_text_before_a_substitution() {
    // Deliberate difference: BuildKit's ProcessWords shares one buffer between the word
    // and the body of `${V<op>...}`, and so splits `hello${X:-foo}bar` into ["foobar"].
    let lexer = Lexer::new('\\');
    let env = sample_env();
    assert_eq!(
        words(&lexer, "hello${X:-foo}bar", &env),
        Ok(vec!["hellofoobar".into()])
    );
    assert_eq!(
        words(&lexer, "pre${FILE%%.*} ${X:-a b}c", &env),
        Ok(vec!["prearchive".into(), "a".into(), "bc".into()])
    );
}

/// Some names set, some unknown, the rest unset.
struct Partial {
    set: BTreeMap<String, String>,
    unknown: BTreeSet<String>,
}

impl Env for Partial {
    fn lookup(&self, name: &str) -> Lookup {
        if let Some(v) = self.set.get(name) {
            Lookup::Set(v.clone())
        } else if self.unknown.contains(name) {
            Lookup::Unknown
        } else {
            Lookup::Unset
        }
    }
}

#[test]
fn used_and_unknown() {
    let env = Partial {
        set: map(&[("A", "a"), ("E", "")]),
        unknown: set(&["U", "V"]),
    };
    let lexer = Lexer::new('\\');
    let expand = |input: &str| lexer.process_word(input, &env);
    let expansion = |value: &str, used: &[&str], unknown: &[&str]| {
        Ok(Expansion {
            value: value.into(),
            used: set(used),
            unknown: set(unknown),
        })
    };
    assert_eq!(expand("$A${U}${NOPE}"), expansion("a", &["A"], &["U"]));
    assert_eq!(expand("${U:-default}"), expansion("default", &[], &["U"]));
    assert_eq!(
        expand("${A:+$V}${E:-$A}"),
        expansion("a", &["A", "E"], &["V"])
    );
    assert_eq!(expand("'$U' \\$V"), expansion("$U $V", &[], &[]));
    assert_eq!(expand("${A#${U}}"), expansion("a", &["A"], &["U"]));
    assert_eq!(
        expand("${U:?needed}").map_err(|e| e.message),
        Err("U: needed".to_string())
    );
    let split = lexer
        .process_words("$A ${U:-x y}", &env)
        .map(|e| (e.words, e.used, e.unknown));
    assert_eq!(
        split,
        Ok((
            vec!["a".into(), "x".into(), "y".into()],
            set(&["A"]),
            set(&["U"])
        ))
    );

    // Unknown is "not set" for skip_unset_env too: the reference stays as written.
    let keep = Lexer::new('\\').skip_unset_env(true);
    let kept = keep.process_word("$U ${A} ${V:-x}", &env);
    assert_eq!(kept, expansion("$U a ${V:-x}", &["A"], &["U", "V"]));
}

#[test]
fn lexer_options() {
    let env = sample_env();
    let skip_unset = Lexer::new('\\').skip_unset_env(true);
    check_words(
        &skip_unset,
        &env,
        &[
            ("$X ${X} ${X:-$FOO} ${FOO}", Ok("$X ${X} ${X:-xxyy} xxyy")),
            ("${X:?oops}", Ok("${X:?oops}")),
            ("${X#*.}${X%%a}", Ok("${X#*.}${X%%a}")),
            ("${X/a/b} ${X//a/b}", Ok("${X/a/b} ${X//a/b}")),
            ("${FOO/x/-}", Ok("-xyy")),
            ("'$X' \"$X\"", Ok("$X $X")),
        ],
    );
    let raw_quotes = Lexer::new('\\').raw_quotes(true);
    check_words(
        &raw_quotes,
        &env,
        &[
            ("\"a $FOO\" 'b $FOO'", Ok("\"a xxyy\" 'b $FOO'")),
            ("\\'x", Ok("'x")),
        ],
    );
    let raw_escapes = Lexer::new('\\').raw_escapes(true);
    check_words(
        &raw_escapes,
        &env,
        &[
            ("a\\ b\\$FOO", Ok("a\\ b\\$FOO")),
            ("\"\\$FOO\\a\"", Ok("\\$FOO\\\\a")),
        ],
    );
    let skip_quotes = Lexer::new('\\').skip_quotes(true);
    check_words(
        &skip_quotes,
        &env,
        &[
            ("\"$FOO\" '$FOO'", Ok("\"xxyy\" 'xxyy'")),
            ("'unterminated", Ok("'unterminated")),
        ],
    );
    assert_eq!(Lexer::default(), Lexer::new('\\'));
}

#[test]
fn names_and_specials() {
    check_words(
        &Lexer::new('\\'),
        &sample_env(),
        &[
            ("$FOO.bar", Ok("xxyy.bar")),
            ("$FOO_bar", Ok("")),
            ("${FOO}_bar", Ok("xxyy_bar")),
            ("$", Ok("$")),
            ("a$", Ok("a$")),
            ("$ x", Ok("$ x")),
            ("$\"FOO\"", Ok("$FOO")),
            ("$1abc", Ok("abc")),
            ("$KO", Ok("한국어")),
            ("$KO국", Ok("")),
            ("${+x}", Ok("")),
            ("${#x}", Err("unsupported modifier (x) in substitution")),
            // A BOM that starts the word is dropped (Go's text/scanner does that).
            ("\u{FEFF}$FOO", Ok("xxyy")),
            ("a\u{FEFF}", Ok("a\u{FEFF}")),
        ],
    );
}

#[test]
fn env_impls() {
    let lexer = Lexer::new('\\');
    let btree = map(&[("A", "1")]);
    let hash: HashMap<String, String> = btree.clone().into_iter().collect();
    let pairs = envs_from_slice(&["A=0", "A=1"]);
    for env in [
        &btree as &dyn Env,
        &hash,
        &pairs,
        &pairs.as_slice(),
        &&btree,
    ] {
        assert_eq!(word(&lexer, "$A${B:-2}", env), Ok("12".into()));
    }
}

// ---------------------------------------------------------------------------------
// No input makes the lexer panic
// ---------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_inputs_never_panic() {
    const PIECES: &[&str] = &[
        "$",
        "${",
        "}",
        "{",
        ":",
        "-",
        "+",
        "?",
        "#",
        "%",
        "/",
        "//",
        "*",
        "\\",
        "`",
        "'",
        "\"",
        " ",
        "\t",
        "\n",
        "<",
        "<<",
        "a",
        "A",
        "FOO",
        "EMPTY",
        "ML",
        "KO",
        "R",
        "STAR",
        "x",
        ".",
        "1",
        "@",
        "!",
        "0",
        "[",
        "]",
        "한",
        "é",
        "\u{FEFF}",
        "\0",
        "\u{A0}",
        "${FOO",
        "${ML//",
        "${KO%",
        "${STAR#",
        "${UNSET:?",
        "${EMPTY:-",
        "$0",
        "$$",
        "\\*",
        "\\}",
        "\\/",
        "=",
    ];
    let env = sample_env();
    let lexers = [
        Lexer::new('\\'),
        Lexer::new('`'),
        Lexer::new('\\').raw_quotes(true).raw_escapes(true),
        Lexer::new('\\').skip_unset_env(true),
        Lexer::new('`').skip_quotes(true).raw_escapes(true),
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut inputs: Vec<String> = vec![
        String::new(),
        "${".repeat(10_000),
        "${A:-".repeat(10_000),
        "\"${A:-".repeat(10_000),
        format!("{}x{}", "${A:-".repeat(60), "}".repeat(60)),
        format!("${{ML//{}/x}}", "*".repeat(500)),
        "\\".repeat(1001),
        "'".repeat(1001),
    ];
    for _ in 0..20_000 {
        let len = rng.below(16);
        inputs.push((0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect());
    }
    let (mut ok, mut failed) = (0, 0);
    for (i, input) in inputs.iter().enumerate() {
        let lexer = &lexers[i % lexers.len()];
        let one = lexer.process_word(input, &env);
        let many = lexer.process_words(input, &env);
        match (&one, &many) {
            (Ok(_), Ok(w)) => {
                ok += 1;
                assert!(w.words.iter().all(|w| !w.is_empty()), "{input:?}: {w:?}");
            }
            (Err(a), Err(b)) => {
                failed += 1;
                assert_eq!(a, b, "{input:?}");
                assert!(
                    a.offset <= input.len() && input.is_char_boundary(a.offset),
                    "{input:?}: {a:?}"
                );
                assert!(!a.message.is_empty());
            }
            _ => panic!("{input:?}: process_word {one:?} but process_words {many:?}"),
        }
    }
    assert!(ok > 1000 && failed > 1000, "ok {ok}, failed {failed}");
}
