//! `forge build` end to end: RUN in the sandbox, layers, the step cache, failure
//! reports, the layer limit, Ctrl-C. The base image is a busybox rootfs tarball
//! made by `scripts/make-rootfs` and imported with `forge import`. (The
//! comparison with Docker's BuildKit is in `differential.rs`.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{forge, forge_cmd, ok, Fixture, TempDir};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

impl Fixture {
    fn write_dockerfile(&self, text: &str) {
        std::fs::write(self.context.path().join("Dockerfile"), text).expect("write Dockerfile");
    }

    fn build(&self, extra: &[&str]) -> Output {
        self.forge_build(extra)
    }

    fn inspect(&self, name: &str) -> Value {
        let out = ok(&forge(self.home.path(), &["inspect", name]));
        let parsed: Value = serde_json::from_str(&out).expect("inspect prints JSON");
        parsed[0].clone()
    }
}

fn image_id(out: &Output) -> String {
    ok(out).trim().to_string()
}

#[test]
fn a_build_runs_steps_and_makes_the_config_and_layers() {
    let f = Fixture::new("basic");
    f.write_dockerfile(
        "FROM base\n\
         ARG WHO=world\n\
         ENV GREETING=hello\n\
         RUN echo \"$GREETING $WHO\" > /greeting && mkdir -p /srv\n\
         WORKDIR /srv/app\n\
         RUN [\"/bin/sh\", \"-c\", \"pwd > where\"]\n\
         USER nobody\n\
         RUN id -u > /tmp/uid\n\
         CMD [\"cat\", \"/greeting\"]\n",
    );
    let out = f.build(&["-t", "hello:1"]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#2 [2/5] RUN echo"), "{log}");
    assert!(log.contains(" layer "), "{log}");
    let image = f.inspect("hello:1");
    let config = &image["Config"];
    let env: Vec<&str> = config["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"GREETING=hello"), "{env:?}");
    assert!(env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
    assert_eq!(config["WorkingDir"], "/srv/app");
    assert_eq!(config["User"], "nobody");
    assert_eq!(config["Cmd"], serde_json::json!(["cat", "/greeting"]));
    // Base layer + RUN + WORKDIR + RUN + RUN.
    let layers = image["RootFS"]["Layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 5, "{image:#}");

    let history = ok(&forge(
        f.home.path(),
        &["history", "--no-trunc", "--format", "json", "hello:1"],
    ));
    assert!(
        history.lines().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["CreatedBy"]
                    == "RUN |1 WHO=world /bin/sh -c echo \"$GREETING $WHO\" > /greeting && mkdir -p /srv # buildkit"
            })
        }),
        "{history}"
    );

    // The files are in the layers, as runc would see them.
    let saved = f.home.path().join("hello.tar");
    ok(&forge(
        f.home.path(),
        &[
            "save",
            "--format",
            "oci",
            "-o",
            saved.to_str().expect("utf-8"),
            "hello:1",
        ],
    ));
    let unpacked = TempDir::new("basic-unpack");
    let layout = unpacked.path().join("layout");
    std::fs::create_dir_all(&layout).expect("mkdir");
    let tar = Command::new("tar")
        .args(["-xf", saved.to_str().expect("utf-8"), "-C"])
        .arg(&layout)
        .status()
        .expect("tar runs");
    assert!(tar.success());
    let bundle = unpacked.path().join("bundle");
    let umoci = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci runs");
    assert!(
        umoci.status.success(),
        "{}",
        String::from_utf8_lossy(&umoci.stderr)
    );
    let root = bundle.join("rootfs");
    assert_eq!(
        std::fs::read_to_string(root.join("greeting")).expect("greeting"),
        "hello world\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("srv/app/where")).expect("where"),
        "/srv/app\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("tmp/uid")).expect("uid"),
        "65534\n"
    );
    // The /etc files bound into the sandbox are not in any layer.
    assert!(!root.join("etc/hosts").exists());
    assert!(!root.join("etc/resolv.conf").exists());
}

#[test]
fn a_second_build_is_all_cached_and_no_cache_gives_the_same_image() {
    let f = Fixture::new("cache");
    f.write_dockerfile(
        "FROM base\nRUN echo one > /one\nENV A=b\nRUN echo two > /two\nCMD [\"sh\"]\n",
    );
    let first = image_id(&f.build(&["-q"]));
    let second = f.build(&[]);
    let log = stderr(&second);
    ok(&second);
    assert_eq!(log.matches("CACHED").count(), 2, "{log}");
    assert!(!log.contains(" layer "), "nothing ran: {log}");
    let again = image_id(&f.build(&["-q"]));
    assert_eq!(first, again);
    // Reproducible: running every step again gives the same image, bit for bit.
    let rebuilt = image_id(&f.build(&["-q", "--no-cache"]));
    assert_eq!(first, rebuilt);
    assert!(first.starts_with("sha256:"), "{first}");
}

#[test]
fn a_failed_run_names_the_step_command_and_code_and_keeps_earlier_steps() {
    let f = Fixture::new("fail");
    f.write_dockerfile(
        "FROM base\nRUN echo ok > /ok\nRUN echo first line; echo to stderr >&2; exit 3\nRUN echo never\n",
    );
    let out = f.build(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("[3/4] RUN echo first line; echo to stderr >&2; exit 3 failed"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(
        err.contains("/bin/sh -c 'echo first line; echo to stderr >&2; exit 3'"),
        "{err}"
    );
    assert!(err.contains("| first line"), "{err}");
    assert!(err.contains("| to stderr"), "{err}");
    assert!(err.contains("last good step's image ID:"), "{err}");
    assert!(err.contains("sha256:"), "{err}");
    assert!(!err.contains("never"), "{err}");

    // Fix the step: the one before it is cached.
    f.write_dockerfile("FROM base\nRUN echo ok > /ok\nRUN true\nRUN echo done\n");
    let out = f.build(&[]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("#2 CACHED"), "{log}");
    assert!(log.contains("#4 done"), "{log}");
}

#[test]
fn missing_commands_and_users_are_clear_errors() {
    let f = Fixture::new("missing");
    f.write_dockerfile("FROM base\nRUN [\"no-such-program\", \"x\"]\n");
    let out = f.build(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("exit code: 127"), "{err}");
    assert!(err.contains("no-such-program"), "{err}");

    f.write_dockerfile("FROM base\nUSER ghost\nRUN true\n");
    let out = f.build(&[]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("ghost"), "{err}");

    f.write_dockerfile("FROM not-in-the-store:1\nRUN true\n");
    let out = f.build(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not-in-the-store"), "{err}");
    assert!(err.contains("forge import"), "{err}");
}

#[test]
fn the_128th_layer_is_refused() {
    let f = Fixture::new("layers");
    // The base has one layer; 125 RUNs writing files and one checking that a
    // RUN on top of 126 layers sees every one of them make 127.
    let mut text = String::from("FROM base\n");
    for i in 0..125 {
        text.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    text.push_str("RUN test \"$(echo $(cat /f0 /f62 /f124))\" = \"0 62 124\"\n");
    f.write_dockerfile(&text);
    ok(&f.build(&["-t", "many:127"]));
    let image = f.inspect("many:127");
    assert_eq!(
        image["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(127)
    );
    text.push_str("RUN echo one-too-many > /last\n");
    f.write_dockerfile(&text);
    let out = f.build(&[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("RUN echo one-too-many > /last"), "{err}");
    assert!(err.contains("at most 127"), "{err}");
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = dir.to_string_lossy().into_owned();
    mounts
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn ctrl_c_kills_the_sandbox_and_exits_130() {
    let f = Fixture::new("interrupt");
    f.write_dockerfile("FROM base\nRUN echo started; sleep 60\n");
    let ctx = f.context.path().to_str().expect("utf-8");
    let mut child = forge_cmd(f.home.path(), &["build", "--progress", "plain", ctx])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("forge starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("started") {
            break;
        }
    }
    assert!(seen.contains("started"), "{seen}");
    let pid = i32::try_from(child.id()).expect("pid");
    let sent = Instant::now();
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    let status = child.wait().expect("forge exits");
    assert_eq!(status.code(), Some(130));
    assert!(sent.elapsed() < Duration::from_secs(10));
    // No sleep left over, no mounts left behind, the store is consistent.
    std::thread::sleep(Duration::from_millis(200));
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    assert!(
        !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.trim() == "sleep 60"),
        "a sandboxed process survived"
    );
    assert!(mounts_under(f.home.path()).is_empty());
    ok(&forge(f.home.path(), &["fsck"]));
}

/// The lines step `#vertex` printed (without forge's own layer/DONE lines).
fn step_output(log: &str, vertex: usize) -> Vec<String> {
    let prefix = format!("#{vertex} ");
    log.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| !l.starts_with('[') && !l.starts_with("layer ") && !l.starts_with("DONE"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn network_none_per_run_and_per_build() {
    let f = Fixture::new("network");
    f.write_dockerfile(
        "FROM base
         RUN --network=none ip -o link | cut -d: -f2
         RUN ip -o link | cut -d: -f2
",
    );
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    host.sort();

    let out = f.build(&[]);
    let log = stderr(&out);
    ok(&out);
    assert_eq!(step_output(&log, 2), ["lo"], "{log}");
    let mut seen = step_output(&log, 3);
    seen.sort();
    assert_eq!(seen, host, "the host's network by default: {log}");

    let out = f.build(&["--network", "none", "--no-cache"]);
    let log = stderr(&out);
    ok(&out);
    assert_eq!(step_output(&log, 2), ["lo"], "{log}");
    assert_eq!(step_output(&log, 3), ["lo"], "{log}");
}

#[test]
fn the_context_or_the_dockerfile_can_come_from_stdin() {
    use std::io::Write;
    let f = Fixture::new("stdin");
    let run = |args: &[&str], stdin: &[u8]| -> Output {
        let mut child = forge_cmd(f.home.path(), args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("forge starts");
        let written = child.stdin.take().expect("stdin").write_all(stdin);
        // forge may refuse the arguments and exit before reading its input.
        if let Err(e) = written {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        child.wait_with_output().expect("forge exits")
    };
    // A lone Dockerfile (`docker build - < Dockerfile`).
    let dockerfile = b"FROM base\nRUN echo from-stdin > /marker\n";
    let lone = image_id(&run(&["build", "-q", "-"], dockerfile));
    // A gzip'd tar of a context holding the same Dockerfile: the same image.
    std::fs::write(f.context.path().join("Dockerfile"), dockerfile).expect("write");
    let tar = Command::new("tar")
        .args(["-czf", "-", "-C"])
        .arg(f.context.path())
        .arg(".")
        .output()
        .expect("tar runs");
    assert!(tar.status.success());
    let from_tar = image_id(&run(&["build", "-q", "-"], &tar.stdout));
    assert_eq!(lone, from_tar);
    // -f - with a context directory.
    let ctx = f.context.path().to_str().expect("utf-8");
    let with_f = image_id(&run(&["build", "-q", "-f", "-", ctx], dockerfile));
    assert_eq!(lone, with_f);
    // Both from stdin: refused.
    let both = run(&["build", "-f", "-", "-"], dockerfile);
    assert_eq!(both.status.code(), Some(1));
    assert!(stderr(&both).contains("cannot both come from standard input"));
}

#[test]
fn run_heredocs_run_as_scripts_and_here_documents() {
    let f = Fixture::new("heredoc");
    f.write_dockerfile(
        "# syntax=docker/dockerfile:1\n\
         FROM base\n\
         RUN <<EOF\n\
         echo one > /a\n\
         echo two > /b\n\
         EOF\n\
         RUN cat <<EOT > /c\n\
         hello\n\
         EOT\n\
         RUN <<-'EOF' sh\n\
         \techo tabbed > /d\n\
         \tEOF\n\
         RUN test \"$(echo $(cat /a /b /c /d))\" = \"one two hello tabbed\" && echo all-good\n",
    );
    let out = f.build(&[]);
    let log = stderr(&out);
    ok(&out);
    assert!(log.contains("all-good"), "{log}");
}
