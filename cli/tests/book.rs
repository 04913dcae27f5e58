//! Every `$ forge ...` command shown in the README and the book runs and succeeds,
//! so the documentation cannot drift from the flags forge really has. Where the book
//! shows the output right after the command (no `...` elision), it must match.
//! `$ cat ...` lines run too, to show what a build produced.
//!
//! The commands run in order, in a directory of their own where `examples`
//! is the repository's, with a store of their own holding the busybox base
//! that `scripts/example` imports (`forge-example/busybox:latest`), so the
//! book's builds are real builds.

mod common;

use std::path::PathBuf;
use std::process::Command;

/// Splits a shell-ish command line into words (single and double quotes only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

struct Example {
    file: String,
    command: String,
    stdin: Option<String>,
    expected: Option<String>,
}

fn examples() -> Vec<Example> {
    let mut files = vec![common::repo().join("README.md")];
    let mut book: Vec<PathBuf> = std::fs::read_dir(common::repo().join("book/src"))
        .expect("book/src")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    book.sort();
    files.extend(book);
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable doc");
        let mut in_console = false;
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("```") {
                in_console = line.trim() == "```console" && !in_console;
                continue;
            }
            if !in_console {
                continue;
            }
            let Some(cmd) = line.strip_prefix("$ ") else {
                continue;
            };
            // Drop comments, and everything after a pipe or redirect into other tools.
            let cmd = cmd.split(" #").next().unwrap_or(cmd);
            let (stdin, forge_part) = match cmd.split_once(" | forge ") {
                Some((producer, rest)) if producer.starts_with("printf ") => {
                    let w = words(producer);
                    let raw = w.get(1).cloned().unwrap_or_default();
                    (Some(raw.replace("\\n", "\n")), format!("forge {rest}"))
                }
                _ => (None, cmd.to_string()),
            };
            if !forge_part.starts_with("forge ") && !forge_part.starts_with("cat ") {
                continue;
            }
            let forge_part = forge_part
                .split(" | ")
                .next()
                .unwrap_or(&forge_part)
                .split(" > ")
                .next()
                .unwrap_or(&forge_part)
                .trim()
                .to_string();
            // Output shown up to the next prompt or the end of the block.
            let mut shown = Vec::new();
            for l in &lines[i + 1..] {
                if l.starts_with("$ ") || l.starts_with("```") {
                    break;
                }
                shown.push(*l);
            }
            let expected = (!shown.is_empty() && !shown.iter().any(|l| l.contains("...")))
                .then(|| shown.join("\n") + "\n");
            out.push(Example {
                file: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                command: forge_part,
                stdin,
                expected,
            });
        }
    }
    out
}

#[test]
fn documented_commands_run() {
    let examples = examples();
    assert!(
        examples.len() >= 8,
        "found only {} examples",
        examples.len()
    );
    let home = common::TempDir::new("book-home");
    let work = common::TempDir::new("book-work");
    std::os::unix::fs::symlink(
        common::repo().join("examples"),
        work.path().join("examples"),
    )
    .expect("link examples");
    common::ok(&common::forge(
        home.path(),
        &[
            "import",
            common::utf8(common::rootfs()),
            "forge-example/busybox:latest",
            "-c",
            r#"CMD ["sh"]"#,
        ],
    ));
    for ex in examples {
        let args = words(&ex.command);
        let program = if args[0] == "forge" {
            PathBuf::from(env!("CARGO_BIN_EXE_forge"))
        } else {
            PathBuf::from(&args[0])
        };
        let mut cmd = Command::new(program);
        cmd.args(&args[1..])
            .current_dir(work.path())
            .env("FORGE_HOME", home.path())
            .env("NO_COLOR", "1");
        let out = if let Some(input) = &ex.stdin {
            use std::io::Write;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("forge starts");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("stdin written");
            child.wait_with_output().expect("forge runs")
        } else {
            cmd.output().expect("forge runs")
        };
        assert!(
            out.status.success(),
            "{}: `{}` failed:\n{}",
            ex.file,
            ex.command,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(expected) = ex.expected {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                expected,
                "{}: output of `{}` differs from the book",
                ex.file,
                ex.command
            );
        }
    }
}
