//! Real-kernel tests of the RUN sandbox (need root). `harness = false`: this
//! binary is also the sandbox's re-exec target.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use forge_executor::sandbox::{self, EtcFiles, Network, RunSpec, SANDBOX_SUBCOMMAND};
use forge_executor::ExecutorError;

type TestResult = Result<(), String>;

/// A named test case.
type Case = (&'static str, fn() -> TestResult);

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "rm", "mkdir", "id", "hostname", "touch", "wc", "ip",
];

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Result<Self, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = tmp.path().to_path_buf();
        let lower = root.join("lower");
        for d in ["lower/bin", "lower/etc", "upper", "work", "merged", "files"] {
            fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
        }
        fs::copy("/bin/busybox", lower.join("bin/busybox")).map_err(|e| e.to_string())?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(a))
                .map_err(|e| e.to_string())?;
        }
        fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .map_err(|e| e.to_string())?;
        fs::write(lower.join("etc/doomed"), "bye\n").map_err(|e| e.to_string())?;
        fs::write(
            root.join("files/hosts"),
            "127.0.0.1 localhost\n10.9.8.7 forge-test-host\n",
        )
        .map_err(|e| e.to_string())?;
        fs::write(root.join("files/resolv.conf"), "nameserver 10.0.0.53\n")
            .map_err(|e| e.to_string())?;
        fs::write(root.join("files/hostname"), "sandbox\n").map_err(|e| e.to_string())?;
        Ok(Self { _tmp: tmp, root })
    }

    fn spec(&self, script: &str) -> RunSpec {
        RunSpec {
            lower_dirs: vec![self.root.join("lower")],
            upper_dir: self.root.join("upper"),
            work_dir: self.root.join("work"),
            merged_dir: self.root.join("merged"),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            network: Network::Host,
            hostname: "sandbox".into(),
            etc_files: EtcFiles {
                hosts: self.root.join("files/hosts"),
                resolv_conf: self.root.join("files/resolv.conf"),
                hostname: self.root.join("files/hostname"),
            },
        }
    }

    fn upper(&self) -> PathBuf {
        self.root.join("upper")
    }
}

/// Runs the spec; returns (exit code, stdout, stderr).
fn run(spec: &RunSpec) -> Result<(i32, String, String), String> {
    let out = tempfile::tempfile().map_err(|e| e.to_string())?;
    let err = tempfile::tempfile().map_err(|e| e.to_string())?;
    let status = sandbox::run(
        Path::new("/proc/self/exe"),
        spec,
        Stdio::from(out.try_clone().map_err(|e| e.to_string())?),
        Stdio::from(err.try_clone().map_err(|e| e.to_string())?),
    )
    .map_err(|e| format!("{e:?}"))?;
    let read = |mut f: fs::File| -> Result<String, String> {
        use std::io::{Read, Seek};
        let mut s = String::new();
        f.rewind().map_err(|e| e.to_string())?;
        f.read_to_string(&mut s).map_err(|e| e.to_string())?;
        Ok(s)
    };
    Ok((sandbox::exit_code(status), read(out)?, read(err)?))
}

fn expect_output(script: &str, want_code: i32, want_out: &str) -> TestResult {
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec(script))?;
    if code != want_code || out != want_out {
        return Err(format!(
            "script {script:?}: code {code} (want {want_code}), stdout {out:?} (want {want_out:?}), stderr {err:?}"
        ));
    }
    Ok(())
}

fn echo_hello() -> TestResult {
    expect_output("echo hello", 0, "hello\n")
}

fn exit_code_propagates() -> TestResult {
    expect_output("exit 7", 7, "")
}

fn pid_is_1() -> TestResult {
    expect_output("echo $$", 0, "1\n")
}

fn hostname_is_set() -> TestResult {
    expect_output("hostname; cat /etc/hostname", 0, "sandbox\nsandbox\n")
}

fn env_is_passed() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("echo $FOO; echo $HOME");
    spec.env.push("FOO=bar baz".into());
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "bar baz\n/root\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn cwd_is_set_and_created() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("pwd");
    spec.cwd = "/work/dir".into();
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "/work/dir\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn runs_as_uid_1000() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("id -u; id -g");
    spec.uid = 1000;
    spec.gid = 1000;
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "1000\n1000\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn command_not_found_is_127() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("");
    spec.argv = vec!["no-such-command".into()];
    let (code, _, err) = run(&spec)?;
    if code != 127 || !err.contains("no-such-command: command not found") {
        return Err(format!("code {code}, stderr {err:?}"));
    }
    Ok(())
}

fn written_file_lands_in_upper() -> TestResult {
    let env = Env::new()?;
    let (code, _, err) = run(&env.spec("echo data > /new-file"))?;
    if code != 0 {
        return Err(format!("code {code}, stderr {err:?}"));
    }
    let upper = fs::read_to_string(env.upper().join("new-file")).map_err(|e| e.to_string())?;
    if upper != "data\n" {
        return Err(format!("upper content {upper:?}"));
    }
    if env.root.join("lower/new-file").exists() {
        return Err("file leaked into lower".into());
    }
    Ok(())
}

fn deleted_file_leaves_whiteout() -> TestResult {
    let env = Env::new()?;
    let (code, _, err) = run(&env.spec("rm /etc/doomed"))?;
    if code != 0 {
        return Err(format!("code {code}, stderr {err:?}"));
    }
    let meta = fs::symlink_metadata(env.upper().join("etc/doomed")).map_err(|e| e.to_string())?;
    if !meta.file_type().is_char_device() || meta.rdev() != 0 {
        return Err(format!("not a 0,0 whiteout: {meta:?}"));
    }
    if !env.root.join("lower/etc/doomed").exists() {
        return Err("lower file was deleted".into());
    }
    Ok(())
}

fn etc_files_bound_not_in_layer() -> TestResult {
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec("cat /etc/hosts /etc/resolv.conf"))?;
    if code != 0 || out != "127.0.0.1 localhost\n10.9.8.7 forge-test-host\nnameserver 10.0.0.53\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    for f in ["hosts", "resolv.conf", "hostname"] {
        if env.upper().join("etc").join(f).symlink_metadata().is_ok() {
            return Err(format!("/etc/{f} left in the upper dir"));
        }
    }
    Ok(())
}

fn network_none_has_only_lo() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("cat /proc/net/dev");
    spec.network = Network::None;
    let (code, out, err) = run(&spec)?;
    let ifaces: Vec<&str> = out
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    if code != 0 || ifaces != ["lo"] {
        return Err(format!(
            "code {code}, interfaces {ifaces:?}, stderr {err:?}"
        ));
    }
    Ok(())
}

fn network_none_has_lo_up() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("ip link show lo");
    spec.network = Network::None;
    let (code, out, err) = run(&spec)?;
    if code != 0 || !out.contains(",UP") {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn proc_is_masked() -> TestResult {
    // Masked paths vary by kernel: check those this host has.
    let mut script = String::new();
    let mut want = String::new();
    if Path::new("/proc/timer_list").is_file() {
        script.push_str("wc -c < /proc/timer_list; ");
        want.push_str("0\n");
    }
    if Path::new("/proc/acpi").is_dir() {
        script.push_str("ls -A /proc/acpi | wc -l; ");
        want.push_str("0\n");
    }
    script.push_str(
        "(echo x > /proc/sys/kernel/hostname) 2>/dev/null && echo writable || echo sys-ro; \
         (echo h > /proc/sysrq-trigger) 2>/dev/null && echo writable || echo sysrq-ro",
    );
    want.push_str("sys-ro\nsysrq-ro\n");
    expect_output(&script, 0, &want)
}

fn dev_is_minimal() -> TestResult {
    expect_output(
        "ls /dev; echo hi > /dev/null; test -c /dev/zero && test -c /dev/pts/ptmx && echo devices-ok",
        0,
        "fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\ndevices-ok\n",
    )
}

fn fds_are_closed() -> TestResult {
    // 3 is `ls`'s own handle on the directory.
    expect_output("ls /proc/self/fd", 0, "0\n1\n2\n3\n")
}

fn inherited_fds_are_closed() -> TestResult {
    // An fd without O_CLOEXEC is inherited by the re-exec'd sandbox; it must not
    // reach the command.
    let fd = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let result = fds_are_closed();
    let _ = nix::unistd::close(fd);
    result
}

fn lower_etc_hosts_is_kept() -> TestResult {
    let env = Env::new()?;
    fs::write(env.root.join("lower/etc/hosts"), "lower-hosts\n").map_err(|e| e.to_string())?;
    let (code, out, err) = run(&env.spec("cat /etc/hosts"))?;
    if code != 0 || out != "127.0.0.1 localhost\n10.9.8.7 forge-test-host\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    let lower = fs::read_to_string(env.root.join("lower/etc/hosts")).map_err(|e| e.to_string())?;
    if lower != "lower-hosts\n" {
        return Err(format!("lower /etc/hosts changed: {lower:?}"));
    }
    if env.upper().join("etc/hosts").symlink_metadata().is_ok() {
        return Err("/etc/hosts left in the upper dir".into());
    }
    Ok(())
}

fn setup_failure_is_an_error() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("echo never");
    spec.lower_dirs = vec![env.root.join("missing-lower")];
    let out = tempfile::tempfile().map_err(|e| e.to_string())?;
    match sandbox::run(
        Path::new("/proc/self/exe"),
        &spec,
        Stdio::from(out),
        Stdio::null(),
    ) {
        Err(ExecutorError::SandboxSetup(msg)) if msg.contains("mount") => Ok(()),
        other => Err(format!("expected a setup error, got {other:?}")),
    }
}

fn capabilities_are_bounded() -> TestResult {
    // Docker's default set: 0xa80425fb.
    expect_output(
        "cat /proc/self/status | while read k v; do case $k in CapBnd:|CapEff:) echo $k $v;; esac; done",
        0,
        "CapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\n",
    )?;
    let env = Env::new()?;
    let mut spec = env.spec(
        "cat /proc/self/status | while read k v; do case $k in CapEff:) echo $k $v;; esac; done",
    );
    spec.uid = 1000;
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "CapEff: 0000000000000000\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn upper_is_empty_after_a_noop() -> TestResult {
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec("true"))?;
    let left: Vec<_> = fs::read_dir(env.upper())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    if code != 0 || !left.is_empty() {
        return Err(format!(
            "code {code}, upper has {left:?}, stdout {out:?}, stderr {err:?}"
        ));
    }
    Ok(())
}

fn etc_whiteouts_are_kept() -> TestResult {
    // The /etc cleanup must not touch an /etc the RUN changed.
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec("rm -rf /etc/passwd /etc/doomed; ls /etc"))?;
    if code != 0 {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    let whiteouts = ["passwd", "doomed"]
        .iter()
        .all(|f| env.upper().join("etc").join(f).symlink_metadata().is_ok());
    if !whiteouts {
        return Err("whiteouts in upper/etc were lost".into());
    }
    Ok(())
}

fn no_mounts_left() -> TestResult {
    let count = || -> Result<usize, String> {
        Ok(fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| e.to_string())?
            .lines()
            .count())
    };
    let before = count()?;
    echo_hello()?;
    network_none_has_only_lo()?;
    let after = count()?;
    if before != after {
        return Err(format!("mountinfo lines {before} -> {after}"));
    }
    Ok(())
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(SANDBOX_SUBCOMMAND) {
        sandbox::sandbox_main();
    }
    let cases: &[Case] = &[
        ("echo_hello", echo_hello),
        ("exit_code_propagates", exit_code_propagates),
        ("pid_is_1", pid_is_1),
        ("hostname_is_set", hostname_is_set),
        ("env_is_passed", env_is_passed),
        ("cwd_is_set_and_created", cwd_is_set_and_created),
        ("runs_as_uid_1000", runs_as_uid_1000),
        ("command_not_found_is_127", command_not_found_is_127),
        ("written_file_lands_in_upper", written_file_lands_in_upper),
        ("deleted_file_leaves_whiteout", deleted_file_leaves_whiteout),
        ("etc_files_bound_not_in_layer", etc_files_bound_not_in_layer),
        ("network_none_has_only_lo", network_none_has_only_lo),
        ("network_none_has_lo_up", network_none_has_lo_up),
        ("proc_is_masked", proc_is_masked),
        ("dev_is_minimal", dev_is_minimal),
        ("fds_are_closed", fds_are_closed),
        ("inherited_fds_are_closed", inherited_fds_are_closed),
        ("lower_etc_hosts_is_kept", lower_etc_hosts_is_kept),
        ("setup_failure_is_an_error", setup_failure_is_an_error),
        ("capabilities_are_bounded", capabilities_are_bounded),
        ("upper_is_empty_after_a_noop", upper_is_empty_after_a_noop),
        ("etc_whiteouts_are_kept", etc_whiteouts_are_kept),
        ("no_mounts_left", no_mounts_left),
    ];
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "note: not root, skipping {} real-kernel sandbox tests",
            cases.len()
        );
        println!(
            "test result: ok. 0 passed; 0 failed; {} ignored",
            cases.len()
        );
        return;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    println!("running {} tests", cases.len());
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            filtered += 1;
            continue;
        }
        match case() {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n    {e}");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; {filtered} filtered out");
    if failed > 0 {
        std::process::exit(1);
    }
}
