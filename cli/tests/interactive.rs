//! `forge run -i`, `-it` and `forge build --on-failure=shell`, on a real
//! terminal: forge runs under util-linux `script`, which gives it a pty as
//! its stdin, stdout and stderr; the test types into `script`'s stdin and
//! reads what the terminal shows.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{forge, forge_cmd, ok, rootfs, utf8, Fixture, TempDir};

/// forge running under `script`, its terminal's output collected.
struct Session {
    child: Child,
    input: Option<ChildStdin>,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Session {
    /// `script -qefc "SETUP; exec forge ARGS" /dev/null`, with the store at
    /// `home` and the working directory `cwd`.
    fn start(home: &Path, cwd: &Path, setup: &str, args: &[&str]) -> Self {
        Self::start_as(home, cwd, setup, "", env!("CARGO_BIN_EXE_forge"), args)
    }

    /// [`Session::start`] with the forge binary `forge_exe`, run through
    /// `wrapper` (a command prefix, e.g. one that changes the user).
    fn start_as(
        home: &Path,
        cwd: &Path,
        setup: &str,
        wrapper: &str,
        forge_exe: &str,
        args: &[&str],
    ) -> Self {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let command = format!("{setup}; exec {wrapper} {forge_exe} {}", quoted.join(" "));
        let mut child = Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .current_dir(cwd)
            .env("FORGE_HOME", home)
            .env("NO_COLOR", "1")
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("script(1) runs (util-linux)");
        let mut stdout = child.stdout.take().expect("stdout");
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("screen").extend_from_slice(&buf[..n]);
            }
        });
        let input = child.stdin.take();
        Session {
            child,
            input,
            screen,
        }
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().expect("screen")).into_owned()
    }

    /// Waits until the terminal has shown `text` `times` times in all.
    fn wait_for(&self, text: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.screen().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {text:?} {times} time(s):\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `keys`.
    fn type_keys(&mut self, keys: &str) {
        let input = self.input.as_mut().expect("input open");
        input.write_all(keys.as_bytes()).expect("typing");
        input.flush().expect("typing");
    }

    /// Waits for forge to end (input stays open until then: `script` must
    /// not see the end of its input first); its exit code and the screen.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("forge did not end:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(self.input.take());
        // The reader thread has the last bytes once the pipe closes.
        std::thread::sleep(Duration::from_millis(100));
        (status.code().expect("an exit code"), self.screen())
    }
}

/// The busybox shell's prompt as root.
const PROMPT: &str = "# ";

#[test]
fn run_it_gives_the_command_a_terminal_of_its_own() {
    let fx = Fixture::new("it-tty");
    let home = fx.home.path();
    let tty_file = fx.context.path().join("outer-tty");
    let setup = format!("tty > {}; stty rows 33 cols 101", utf8(&tty_file));
    let mut s = Session::start(
        home,
        fx.context.path(),
        &setup,
        &["run", "--rm", "-it", "base", "sh"],
    );
    s.wait_for(PROMPT, 1);
    // The container's own devpts; forge's size; docker's TERM.
    s.type_keys("tty; stty size; echo \"term=$TERM\"\n");
    s.wait_for("term=xterm", 1);
    // A window size change of forge's terminal reaches the command's.
    let outer = std::fs::read_to_string(&tty_file).expect("outer tty name");
    let resized = Command::new("stty")
        .args(["-F", outer.trim(), "rows", "50", "cols", "120"])
        .status()
        .expect("stty runs");
    assert!(resized.success());
    std::thread::sleep(Duration::from_millis(300));
    s.type_keys("stty size\n");
    s.wait_for("50 120", 1);
    // ^C goes to the command (raw mode), not to forge: the shell survives.
    s.type_keys("sleep 30\n");
    std::thread::sleep(Duration::from_millis(500));
    s.type_keys("\x03");
    s.type_keys("echo \"after=$?\"\n");
    s.wait_for("after=130", 1);
    s.type_keys("exit 5\n");
    let (code, screen) = s.finish();
    assert!(screen.contains("/dev/pts/0"), "{screen}");
    assert!(screen.contains("33 101"), "{screen}");
    assert_eq!(code, 5, "{screen}");
    // --rm: nothing left.
    let left = ok(&forge(home, &["containers", "-a", "-q"]));
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn run_it_works_rootless() {
    // uid 65534 without subordinate ids: the sandbox has a user namespace of
    // its own, and the terminal is still opened in its devpts.
    let dir = TempDir::new("it-rootless");
    let root = dir.path();
    std::fs::copy(rootfs(), root.join("rootfs.tar")).expect("copy the rootfs");
    std::fs::copy(env!("CARGO_BIN_EXE_forge"), root.join("forge")).expect("copy forge");
    let chown = Command::new("chown")
        .args(["-R", "65534:65534", utf8(root)])
        .status()
        .expect("chown runs");
    assert!(chown.success());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let home = root.join("home");
    let forge_exe = root.join("forge");
    let nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups";
    let imported = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&forge_exe)
        .args(["import", utf8(&root.join("rootfs.tar")), "base:latest"])
        .env("FORGE_HOME", &home)
        .env("FORGE_USERNS", "off")
        .output()
        .expect("forge runs");
    ok(&imported);
    let mut s = Session::start_as(
        &home,
        root,
        "export FORGE_USERNS=off",
        nobody,
        utf8(&forge_exe),
        &["run", "--rm", "-it", "base", "sh"],
    );
    s.wait_for(PROMPT, 1);
    s.type_keys("tty; echo inside > /f; cat /f; exit 4\n");
    let (code, screen) = s.finish();
    assert_eq!(code, 4, "{screen}");
    assert!(screen.contains("/dev/pts/0\r\ninside"), "{screen}");
}

#[test]
fn run_it_keeps_a_containers_changes_for_commit() {
    let fx = Fixture::new("it-keep");
    let home = fx.home.path();
    let mut s = Session::start(
        home,
        fx.context.path(),
        "true",
        &["run", "-it", "--name", "box", "base", "sh"],
    );
    s.wait_for(PROMPT, 1);
    s.type_keys("echo typed > /note; exit\n");
    let (code, screen) = s.finish();
    assert_eq!(code, 0, "{screen}");
    let shown = ok(&forge(home, &["run", "--rm", "box", "cat", "/note"]));
    assert_eq!(shown, "typed\n");
}

#[test]
fn run_i_pipes_standard_input_without_a_terminal() {
    let fx = Fixture::new("it-pipe");
    let home = fx.home.path();
    let mut child = forge_cmd(
        home,
        &["run", "--rm", "-i", "base", "sh", "-c", "tr a-z A-Z; tty"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("forge runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"piped input\n")
        .expect("write");
    let out = child.wait_with_output().expect("forge ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // `tty` fails (exit 1): stdin is the pipe, no terminal.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("PIPED INPUT\nnot a tty"), "{stdout}");
    // Without -i, stdin is /dev/null.
    let mut child = forge_cmd(home, &["run", "--rm", "base", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("forge runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(b"ignored\n");
    let out = child.wait_with_output().expect("forge ends");
    drop(stdin);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    // -it needs a terminal, as in docker.
    let out = forge(home, &["run", "--rm", "-it", "base", "true"]);
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the input device is not a TTY"), "{stderr}");
}

const FAILING: &str = "FROM base\n\
    ENV GREETING=hello\n\
    WORKDIR /work\n\
    RUN echo one > one\n\
    RUN echo partial > partial && rm /bin/vi && exit 3\n";

#[test]
fn build_on_failure_shell_opens_a_shell_in_the_failed_step() {
    let fx = Fixture::new("it-onfail");
    let home = fx.home.path();
    fx.file("Dockerfile", FAILING.as_bytes());
    let ctx = utf8(fx.context.path());
    let mut s = Session::start(
        home,
        fx.context.path(),
        "true",
        &["build", "--progress", "plain", "--on-failure=shell", ctx],
    );
    s.wait_for("opening a shell in the failed step's container", 1);
    s.wait_for(PROMPT, 1);
    // The failed command's changes (a new file, a deletion), in the step's
    // working directory and environment.
    s.type_keys("pwd; cat one partial; ls /bin/vi; echo \"greeting=$GREETING\"\n");
    s.wait_for("greeting=hello", 1);
    s.type_keys("exit\n");
    let (code, screen) = s.finish();
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("exit code: 3"), "{screen}");
    assert!(screen.contains("/work\r\none\r\npartial\r\n"), "{screen}");
    assert!(
        screen.contains("/bin/vi: No such file or directory"),
        "{screen}"
    );
    // The reminder after the shell (miette wraps it at 80 columns).
    assert!(screen.contains("working-container removed)"), "{screen}");
    // The container is gone; the steps before the failure are cached.
    let left = ok(&forge(home, &["containers", "-a", "-q"]));
    assert!(left.trim().is_empty(), "{left}");
    let again = fx.forge_build(&[]);
    let log = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{log}");
    assert!(log.contains("RUN echo one > one\n#3 CACHED"), "{log}");
}

#[test]
fn build_on_failure_shell_without_a_terminal_only_fails() {
    let fx = Fixture::new("it-onfail-pipe");
    let home = fx.home.path();
    fx.file("Dockerfile", FAILING.as_bytes());
    let out = fx.forge_build(&["--on-failure=shell"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("standard input is not a terminal"), "{log}");
    assert!(log.contains("exit code: 3"), "{log}");
    assert!(!log.contains("opening a shell"), "{log}");
    let left = ok(&forge(home, &["containers", "-a", "-q"]));
    assert!(left.trim().is_empty(), "{left}");
}

#[test]
fn build_on_failure_shell_keeps_only_the_failure_reported() {
    // Stage `a` fails; stage `b`, running beside it, is killed by the stop:
    // only `a`'s container is kept (and removed after the shell).
    let fx = Fixture::new("it-onfail-parallel");
    let home = fx.home.path();
    fx.file(
        "Dockerfile",
        b"FROM base AS a\n\
          RUN sleep 1 && echo a > /a && exit 3\n\
          FROM base AS b\n\
          RUN echo b > /b && sleep 30\n\
          FROM base\n\
          COPY --from=a /a /a\n\
          COPY --from=b /b /b\n",
    );
    let ctx = utf8(fx.context.path());
    let started = Instant::now();
    let mut s = Session::start(
        home,
        fx.context.path(),
        "true",
        &["build", "--progress", "plain", "--on-failure=shell", ctx],
    );
    s.wait_for(PROMPT, 1);
    s.type_keys("cat /a; ls /b; exit\n");
    let (code, screen) = s.finish();
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("[a 2/2] RUN sleep 1"), "{screen}");
    assert!(screen.contains("/b: No such file or directory"), "{screen}");
    assert!(started.elapsed() < Duration::from_secs(25), "{screen}");
    let left = ok(&forge(home, &["containers", "-a", "-q"]));
    assert!(left.trim().is_empty(), "{left}");
}
