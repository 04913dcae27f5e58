//! The `forge` binary end to end: exit codes, stdout, and the reports people see.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn forge(args: &[&str]) -> Output {
    forge_stdin(args, None)
}

fn forge_stdin(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(args)
        .current_dir(repo())
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("forge starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().expect("forge runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forge-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn debug_ast_prints_buildkits_dump_format() {
    let out = forge_stdin(
        &["debug", "ast", "-"],
        Some("FROM scratch\nCOPY --chown=1:1 a /b/\nCMD [\"sh\"]\nENV A=1 B=2\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "(from \"scratch\")\n(copy [\"--chown=1:1\"] \"a\" \"/b/\")\n(cmd \"sh\")\n(env \"A\" \"1\" \"=\" \"B\" \"2\" \"=\")\n"
    );
}

#[test]
fn dry_run_plans_the_example() {
    let out = forge(&["build", "--dry-run", "examples/hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    // The builder and tools stages do not depend on each other: same wave.
    insta::assert_snapshot!("hello_plan", plan);
}

#[test]
fn dry_run_with_a_target_prunes_other_stages() {
    let out = forge(&[
        "build",
        "--dry-run",
        "--target",
        "builder",
        "examples/hello",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan = stdout(&out);
    assert!(plan.contains("tr 'a-z'"), "{plan}");
    assert!(!plan.contains("tools ready"), "{plan}");
}

#[test]
fn graph_formats_are_machine_readable() {
    let out = forge(&["graph", "--format", "json", "examples/hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("graph JSON parses");
    assert!(v["nodes"].as_array().is_some_and(|n| n.len() > 5), "{v}");
    let out = forge(&["graph", "examples/hello"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("digraph"), "{}", stdout(&out));
}

#[test]
fn forge_toml_workspaces_plan_every_image() {
    let out = forge(&["build", "--dry-run", "examples/monorepo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).is_empty());
}

#[test]
fn input_errors_exit_1_and_point_at_line_and_column() {
    let dir = temp_dir("bad");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nRUNN echo hi\nCOPY --frm=x a b\n",
    )
    .expect("write");
    let out = forge(&["build", "--dry-run", dir.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("2 problems"), "{err}");
    assert!(err.contains("Dockerfile:2:1"), "{err}");
    assert!(err.contains("Dockerfile:3:6"), "{err}");
    assert!(err.contains("RUN"), "{err}");
}

#[test]
fn a_missing_build_file_is_an_environment_error() {
    let dir = temp_dir("empty");
    let out = forge(&["build", "--dry-run", dir.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn steps_forge_cannot_run_yet_are_named() {
    // ADD of a Git repository is not supported yet.
    let home = temp_dir("unsupported-home");
    let ctx = temp_dir("unsupported-ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD https://example.com/repo.git /src\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_forge"))
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .env("FORGE_HOME", &home)
        .env("NO_COLOR", "1")
        .output()
        .expect("forge runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ADD of a Git repository is not"), "{err}");
    assert!(
        err.contains("ADD https://example.com/repo.git /src"),
        "{err}"
    );
}

#[test]
fn build_args_reach_the_plan() {
    let dir = temp_dir("args");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nARG V=1\nLABEL v=$V\n",
    )
    .expect("write");
    let d = dir.to_str().expect("utf-8 path");
    let a = forge(&["debug", "ir", d]);
    let b = forge(&["debug", "ir", "--build-arg", "V=2", d]);
    assert!(a.status.success() && b.status.success(), "{}", stderr(&b));
    assert!(stdout(&a).contains("\"1\""));
    assert!(stdout(&b).contains("\"2\""), "{}", stdout(&b));
    let bad = forge(&["debug", "ir", "--build-arg", "=x", d]);
    assert_eq!(bad.status.code(), Some(1));
}
