//! Real-kernel tests of the RUN sandbox (need root). `harness = false`: this
//! binary is also the sandbox's re-exec target.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use forge_executor::sandbox::{self, EtcFiles, Network, Rootfs, RunSpec, SANDBOX_SUBCOMMAND};
use forge_executor::ExecutorError;

type TestResult = Result<(), String>;

/// A named test case.
type Case = (&'static str, fn() -> TestResult);

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "rm", "mkdir", "id", "hostname", "touch", "wc", "ip", "sleep",
    "head", "tail",
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
        fs::write(
            lower.join("etc/group"),
            "root:x:0:\nwheel:x:10:root,user\nuser:x:1000:\nstaff:x:50:user\naudio:x:29:other\n",
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
            rootfs: Rootfs::Overlay {
                lower_dirs: vec![self.root.join("lower")],
                upper_dir: self.root.join("upper"),
                work_dir: self.root.join("work"),
            },
            merged_dir: self.root.join("merged"),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            cwd: "/".into(),
            user: String::new(),
            workdir_owner_is_user: false,
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

fn set_lower_dirs(spec: &mut RunSpec, lowers: Vec<PathBuf>) {
    if let Rootfs::Overlay { lower_dirs, .. } = &mut spec.rootfs {
        *lower_dirs = lowers;
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

/// Runs `script` as `user` with no `HOME` in the environment; checks stdout.
fn expect_as_user(env: &Env, user: &str, script: &str, want: &str) -> TestResult {
    let mut spec = env.spec(script);
    spec.user = user.into();
    spec.env = vec!["PATH=/bin".into()];
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != want {
        return Err(format!(
            "user {user:?}: code {code}, stdout {out:?} (want {want:?}), stderr {err:?}"
        ));
    }
    Ok(())
}

const WHO: &str = "echo $(id -u) $(id -g) [$(id -G)] $HOME";

fn runs_as_uid_1000() -> TestResult {
    let env = Env::new()?;
    expect_as_user(&env, "1000", WHO, "1000 1000 [1000 10 50] /home/user\n")
}

fn user_is_resolved_in_the_rootfs() -> TestResult {
    let env = Env::new()?;
    // Root: its memberships too (runc's additional gids).
    expect_as_user(&env, "", WHO, "0 0 [0 10] /root\n")?;
    expect_as_user(&env, "user", WHO, "1000 1000 [1000 10 50] /home/user\n")?;
    // An explicit group: no memberships.
    expect_as_user(&env, "user:audio", WHO, "1000 29 [29] /home/user\n")?;
    expect_as_user(&env, "user:77", WHO, "1000 77 [77] /home/user\n")?;
    // Not in passwd: fine when numeric, gid 0, home /.
    expect_as_user(&env, "4242", WHO, "4242 0 [0] /\n")?;
    expect_as_user(&env, "4242:staff", WHO, "4242 50 [50] /\n")?;
    expect_as_user(&env, "0:4343", WHO, "0 4343 [4343] /root\n")?;
    // A HOME in the environment wins.
    let mut spec = env.spec("echo $HOME");
    spec.user = "user".into();
    spec.env = vec!["PATH=/bin".into(), "HOME=/elsewhere".into()];
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "/elsewhere\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

/// Runs the spec and expects a setup error with exactly `want`.
fn expect_setup_error(spec: &RunSpec, want: &str) -> TestResult {
    match sandbox::run(
        Path::new("/proc/self/exe"),
        spec,
        Stdio::null(),
        Stdio::null(),
    ) {
        Err(ExecutorError::SandboxSetup(msg)) if msg == want => Ok(()),
        other => Err(format!("expected setup error {want:?}, got {other:?}")),
    }
}

fn unknown_user_or_group_is_a_setup_error() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("echo never");
    spec.user = "nobody".into();
    expect_setup_error(
        &spec,
        "unable to find user nobody: no matching entries in passwd file",
    )?;
    spec.user = "user:nogroup".into();
    expect_setup_error(
        &spec,
        "unable to find group nogroup: no matching entries in group file",
    )
}

fn user_without_passwd_file() -> TestResult {
    let env = Env::new()?;
    fs::remove_file(env.root.join("lower/etc/passwd")).map_err(|e| e.to_string())?;
    fs::remove_file(env.root.join("lower/etc/group")).map_err(|e| e.to_string())?;
    expect_as_user(&env, "123:456", WHO, "123 456 [456] /\n")?;
    expect_as_user(&env, "", WHO, "0 0 [0] /\n")?;
    let mut spec = env.spec("echo never");
    spec.user = "user".into();
    expect_setup_error(
        &spec,
        "unable to find user user: no matching entries in passwd file",
    )
}

fn passwd_symlink_cannot_leave_the_rootfs() -> TestResult {
    // /etc/passwd -> an absolute host path: after pivot_root it resolves inside
    // the container root, where it does not exist.
    let env = Env::new()?;
    let host = env.root.join("files/evil-passwd");
    fs::write(&host, "evil:x:0:0::/evil:/bin/sh\n").map_err(|e| e.to_string())?;
    let passwd = env.root.join("lower/etc/passwd");
    fs::remove_file(&passwd).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&host, &passwd).map_err(|e| e.to_string())?;
    let mut spec = env.spec("echo never");
    spec.user = "evil".into();
    expect_setup_error(
        &spec,
        "unable to find user evil: no matching entries in passwd file",
    )
}

/// Paths under `dir` (relative, sorted) with uid, gid and permission bits.
fn tree(dir: &Path) -> Result<Vec<(String, u32, u32, u32)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| e.to_string())? {
            let e = e.map_err(|e| e.to_string())?;
            let meta = e.path().symlink_metadata().map_err(|e| e.to_string())?;
            let rel = e
                .path()
                .strip_prefix(dir)
                .map_err(|e| e.to_string())?
                .display()
                .to_string();
            out.push((rel, meta.uid(), meta.gid(), meta.mode() & 0o7777));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn workdir_step_creates_owned_dirs_only() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("");
    spec.argv.clear();
    spec.user = "user".into();
    spec.workdir_owner_is_user = true;
    spec.cwd = "/home/user/app".into();
    let (code, out, err) = run(&spec)?;
    let got = tree(&env.upper())?;
    let want = [
        ("home", 1000, 1000, 0o755),
        ("home/user", 1000, 1000, 0o755),
        ("home/user/app", 1000, 1000, 0o755),
    ]
    .map(|(p, u, g, m)| (p.to_string(), u, g, m));
    if code != 0 || got != want || !out.is_empty() || !err.is_empty() {
        return Err(format!(
            "code {code}, upper {got:?}, stdout {out:?}, stderr {err:?}"
        ));
    }
    Ok(())
}

fn workdir_existing_parents_are_not_chowned() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("");
    spec.argv.clear();
    spec.user = "user".into();
    spec.workdir_owner_is_user = true;
    spec.cwd = "/etc/app".into();
    let (code, _, err) = run(&spec)?;
    let got = tree(&env.upper())?;
    let want = [("etc", 0, 0, 0o755), ("etc/app", 1000, 1000, 0o755)]
        .map(|(p, u, g, m)| (p.to_string(), u, g, m));
    if code != 0 || got != want {
        return Err(format!("code {code}, upper {got:?}, stderr {err:?}"));
    }
    Ok(())
}

fn workdir_is_root_owned_by_default() -> TestResult {
    let env = Env::new()?;
    let mut spec =
        env.spec("touch f; ls -lnd /srv/x | while read m l u g rest; do echo $u $g; done");
    spec.user = "0".into();
    spec.cwd = "/srv/x".into();
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "0 0\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    // As a user, a root-owned new working directory is not writable.
    let env = Env::new()?;
    let mut spec = env.spec("touch f 2>/dev/null && echo wrote || echo denied; pwd");
    spec.user = "user".into();
    spec.cwd = "/srv/y".into();
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "denied\n/srv/y\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    Ok(())
}

fn empty_argv_at_root_leaves_upper_empty() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("");
    spec.argv.clear();
    let (code, _, err) = run(&spec)?;
    let left = tree(&env.upper())?;
    if code != 0 || !left.is_empty() {
        return Err(format!("code {code}, upper {left:?}, stderr {err:?}"));
    }
    Ok(())
}

fn many_lower_dirs_through_short_links() -> TestResult {
    // 127 layers (docker's maximum stack below a RUN), each adding one file,
    // passed as links in one directory like the build driver's snapshots/l/.
    let env = Env::new()?;
    let links = env.root.join("snapshots/l");
    fs::create_dir_all(&links).map_err(|e| e.to_string())?;
    let mut lowers = Vec::new();
    for i in 0..127 {
        let real = if i == 0 {
            env.root.join("lower")
        } else {
            // Deep real paths: only the links' names enter the mount options.
            let d = env.root.join(format!(
                "snapshots/very-long-snapshot-directory-name-{i:04}/with/a/deep/path/fs"
            ));
            fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            d
        };
        fs::create_dir_all(real.join("layers")).map_err(|e| e.to_string())?;
        fs::write(real.join(format!("layers/f{i:03}")), "").map_err(|e| e.to_string())?;
        let link = links.join(format!("{:016x}", 0x0123_4567_89ab_0000_u64 + i));
        std::os::unix::fs::symlink(&real, &link).map_err(|e| e.to_string())?;
        lowers.push(link);
    }
    let mut spec = env.spec("ls /layers | wc -l; ls /layers | head -n 1; ls /layers | tail -n 1");
    set_lower_dirs(&mut spec, lowers);
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "127\nf000\nf126\n" {
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

fn directory_rootfs_is_changed_in_place() -> TestResult {
    let env = Env::new()?;
    let image = env.root.join("lower");
    let mut spec = env.spec("echo made > /out && rm /etc/doomed && cat /etc/hosts && echo $$");
    spec.rootfs = Rootfs::Directory { dir: image.clone() };
    let (code, out, err) = run(&spec)?;
    if code != 0 || out != "127.0.0.1 localhost\n10.9.8.7 forge-test-host\n1\n" {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    if fs::read_to_string(image.join("out")).ok().as_deref() != Some("made\n") {
        return Err("/out was not written to the directory".into());
    }
    if image.join("etc/doomed").exists() {
        return Err("/etc/doomed was not deleted".into());
    }
    // The mount points the sandbox made are gone; `etc` stays (it was there).
    for made in [
        "etc/hosts",
        "etc/resolv.conf",
        "etc/hostname",
        "dev",
        "proc",
    ] {
        if image.join(made).symlink_metadata().is_ok() {
            return Err(format!("{made} left in the directory"));
        }
    }
    if fs::read_dir(env.root.join("merged"))
        .map_err(|e| e.to_string())?
        .next()
        .is_some()
    {
        return Err("something left in the merged dir".into());
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
    set_lower_dirs(&mut spec, vec![env.root.join("missing-lower")]);
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

const CAPS: &str =
    "while read k v; do case $k in Cap*) echo $k $v;; esac; done < /proc/self/status";

fn capabilities_are_dockers() -> TestResult {
    // Docker's default set: 0xa80425fb.
    expect_output(
        CAPS,
        0,
        "CapInh: 0000000000000000\nCapPrm: 00000000a80425fb\nCapEff: 00000000a80425fb\n\
         CapBnd: 00000000a80425fb\nCapAmb: 0000000000000000\n",
    )?;
    let env = Env::new()?;
    expect_as_user(
        &env,
        "user",
        CAPS,
        "CapInh: 0000000000000000\nCapPrm: 0000000000000000\nCapEff: 0000000000000000\n\
         CapBnd: 00000000a80425fb\nCapAmb: 0000000000000000\n",
    )
}

/// Processes whose environment holds `marker` (zombies have none).
fn processes_with(marker: &str) -> Vec<String> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let environ = fs::read(e.path().join("environ")).ok()?;
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == marker.as_bytes())
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
    .collect()
}

fn kill_all_ends_a_running_sandbox() -> TestResult {
    let env = Env::new()?;
    let marker = format!("FORGE_KILL_TEST={}", std::process::id());
    let mut spec = env.spec("sleep 30 & sleep 30");
    spec.env.push(marker.clone());
    let merged = spec.merged_dir.display().to_string();
    let started = std::time::Instant::now();
    let handle = std::thread::spawn(move || run(&spec));
    // Wait for both sleeps to be up.
    while processes_with(&marker).len() < 2 {
        if started.elapsed().as_secs() > 10 {
            return Err("the sandbox did not start".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = sandbox::kill_all();
    let result = handle
        .join()
        .map_err(|_| "the run thread panicked".to_string())?;
    let elapsed = started.elapsed();
    let (code, _, err) = result?;
    if killed != 1 || code != 128 + 9 || elapsed.as_secs() >= 10 {
        return Err(format!(
            "killed {killed}, code {code}, after {elapsed:?}, stderr {err:?}"
        ));
    }
    // The PID namespace goes with its init (asynchronously: allow a moment).
    let mut left = processes_with(&marker);
    while !left.is_empty() && started.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = processes_with(&marker);
    }
    if !left.is_empty() {
        return Err(format!("processes left: {left:?}"));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    if mountinfo.contains(&merged) {
        return Err(format!("{merged} still mounted"));
    }
    // The registry is empty again.
    if sandbox::kill_all() != 0 {
        return Err("a sandbox is still registered".into());
    }
    Ok(())
}

fn upper_is_empty_after_a_noop() -> TestResult {
    // With /etc/hosts and /etc/resolv.conf in the image, a no-op leaves nothing.
    let env = Env::new()?;
    for f in ["hosts", "resolv.conf"] {
        fs::write(env.root.join("lower/etc").join(f), "").map_err(|e| e.to_string())?;
    }
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

fn noop_keeps_only_an_empty_etc_like_buildkit() -> TestResult {
    // Without them, the mount points' parent stays, empty, as Docker's
    // BuildKit leaves it; the mount point files themselves never do.
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec("true"))?;
    let left: Vec<_> = fs::read_dir(env.upper())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    let etc_empty = fs::read_dir(env.upper().join("etc")).is_ok_and(|mut d| d.next().is_none());
    if code != 0 || left != ["etc"] || !etc_empty {
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

fn rootless_identity_and_caps() -> TestResult {
    let env = Env::new()?;
    let (code, out, err) = run(&env.spec(&format!("id -u; id -g; echo data > /new; {CAPS}")))?;
    let want = "0\n0\nCapInh: 0000000000000000\nCapPrm: 00000000a80425fb\n\
                CapEff: 00000000a80425fb\nCapBnd: 00000000a80425fb\nCapAmb: 0000000000000000\n";
    if code != 0 || out != want {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    // Root inside is forge's uid outside.
    let meta = fs::symlink_metadata(env.upper().join("new")).map_err(|e| e.to_string())?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!("/new is owned by {}", meta.uid()));
    }
    Ok(())
}

fn rootless_whiteout_and_opaque_dir() -> TestResult {
    // Without userxattr, making an opaque directory fails with EIO.
    let env = Env::new()?;
    fs::create_dir(env.root.join("lower/d")).map_err(|e| e.to_string())?;
    fs::write(env.root.join("lower/d/old"), "").map_err(|e| e.to_string())?;
    let (code, out, err) = run(&env.spec("rm /etc/doomed; rm -rf /d; mkdir /d; ls -A /d"))?;
    if code != 0 || !out.is_empty() {
        return Err(format!("code {code}, stdout {out:?}, stderr {err:?}"));
    }
    let meta = fs::symlink_metadata(env.upper().join("etc/doomed")).map_err(|e| e.to_string())?;
    if !meta.file_type().is_char_device() || meta.rdev() != 0 {
        return Err(format!("not a 0,0 whiteout: {meta:?}"));
    }
    let opaque =
        xattr::get(env.upper().join("d"), "user.overlay.opaque").map_err(|e| e.to_string())?;
    if opaque.as_deref() != Some(b"y".as_slice()) {
        return Err(format!("upper /d is not opaque: {opaque:?}"));
    }
    Ok(())
}

fn rootless_user_must_be_root() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("echo never");
    spec.user = "user".into();
    match sandbox::run(
        Path::new("/proc/self/exe"),
        &spec,
        Stdio::null(),
        Stdio::null(),
    ) {
        Err(ExecutorError::SandboxSetup(msg)) if msg.contains("rootless") => Ok(()),
        other => Err(format!("expected a rootless USER error, got {other:?}")),
    }
}

fn rootless_workdir_step() -> TestResult {
    let env = Env::new()?;
    let mut spec = env.spec("");
    spec.argv.clear();
    spec.workdir_owner_is_user = true;
    spec.cwd = "/app/sub".into();
    let (code, _, err) = run(&spec)?;
    let me = nix::unistd::geteuid().as_raw();
    let my_gid = nix::unistd::getegid().as_raw();
    let got = tree(&env.upper())?;
    let want = [("app", me, my_gid, 0o755), ("app/sub", me, my_gid, 0o755)]
        .map(|(p, u, g, m)| (p.to_string(), u, g, m));
    if code != 0 || got != want {
        return Err(format!("code {code}, upper {got:?}, stderr {err:?}"));
    }
    Ok(())
}

/// The sandbox tests that also run without root (in a user namespace).
const ROOTLESS_CASES: &[Case] = &[
    ("echo_hello", echo_hello),
    ("exit_code_propagates", exit_code_propagates),
    ("pid_is_1", pid_is_1),
    ("hostname_is_set", hostname_is_set),
    ("rootless_identity_and_caps", rootless_identity_and_caps),
    (
        "rootless_whiteout_and_opaque_dir",
        rootless_whiteout_and_opaque_dir,
    ),
    ("rootless_user_must_be_root", rootless_user_must_be_root),
    ("rootless_workdir_step", rootless_workdir_step),
    ("etc_files_bound_not_in_layer", etc_files_bound_not_in_layer),
    (
        "directory_rootfs_is_changed_in_place",
        directory_rootfs_is_changed_in_place,
    ),
    ("network_none_has_lo_up", network_none_has_lo_up),
    ("proc_is_masked", proc_is_masked),
    ("dev_is_minimal", dev_is_minimal),
    ("fds_are_closed", fds_are_closed),
    ("upper_is_empty_after_a_noop", upper_is_empty_after_a_noop),
    (
        "noop_keeps_only_an_empty_etc_like_buildkit",
        noop_keeps_only_an_empty_etc_like_buildkit,
    ),
    (
        "many_lower_dirs_through_short_links",
        many_lower_dirs_through_short_links,
    ),
    (
        "kill_all_ends_a_running_sandbox",
        kill_all_ends_a_running_sandbox,
    ),
];

/// Runs this binary as uid/gid 65534 (no groups), where it runs
/// [`ROOTLESS_CASES`].
fn rootless_via_setpriv() -> TestResult {
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("    (skipped: setpriv not found; install util-linux to test rootless builds)");
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("test result: ok. {} passed; 0 failed", ROOTLESS_CASES.len());
    if !out.status.success() || !stdout.contains(&want) {
        return Err(format!(
            "as uid 65534: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
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
        (
            "user_is_resolved_in_the_rootfs",
            user_is_resolved_in_the_rootfs,
        ),
        (
            "unknown_user_or_group_is_a_setup_error",
            unknown_user_or_group_is_a_setup_error,
        ),
        ("user_without_passwd_file", user_without_passwd_file),
        (
            "passwd_symlink_cannot_leave_the_rootfs",
            passwd_symlink_cannot_leave_the_rootfs,
        ),
        (
            "workdir_step_creates_owned_dirs_only",
            workdir_step_creates_owned_dirs_only,
        ),
        (
            "workdir_existing_parents_are_not_chowned",
            workdir_existing_parents_are_not_chowned,
        ),
        (
            "workdir_is_root_owned_by_default",
            workdir_is_root_owned_by_default,
        ),
        (
            "empty_argv_at_root_leaves_upper_empty",
            empty_argv_at_root_leaves_upper_empty,
        ),
        (
            "many_lower_dirs_through_short_links",
            many_lower_dirs_through_short_links,
        ),
        ("command_not_found_is_127", command_not_found_is_127),
        ("written_file_lands_in_upper", written_file_lands_in_upper),
        ("deleted_file_leaves_whiteout", deleted_file_leaves_whiteout),
        ("etc_files_bound_not_in_layer", etc_files_bound_not_in_layer),
        (
            "directory_rootfs_is_changed_in_place",
            directory_rootfs_is_changed_in_place,
        ),
        ("network_none_has_only_lo", network_none_has_only_lo),
        ("network_none_has_lo_up", network_none_has_lo_up),
        ("proc_is_masked", proc_is_masked),
        ("dev_is_minimal", dev_is_minimal),
        ("fds_are_closed", fds_are_closed),
        ("inherited_fds_are_closed", inherited_fds_are_closed),
        ("lower_etc_hosts_is_kept", lower_etc_hosts_is_kept),
        ("setup_failure_is_an_error", setup_failure_is_an_error),
        ("capabilities_are_dockers", capabilities_are_dockers),
        (
            "kill_all_ends_a_running_sandbox",
            kill_all_ends_a_running_sandbox,
        ),
        ("rootless_via_setpriv", rootless_via_setpriv),
        ("upper_is_empty_after_a_noop", upper_is_empty_after_a_noop),
        (
            "noop_keeps_only_an_empty_etc_like_buildkit",
            noop_keeps_only_an_empty_etc_like_buildkit,
        ),
        ("etc_whiteouts_are_kept", etc_whiteouts_are_kept),
        ("no_mounts_left", no_mounts_left),
    ];
    let cases = if nix::unistd::Uid::effective().is_root() {
        cases
    } else {
        println!("note: not root: running the rootless subset (needs user namespaces)");
        ROOTLESS_CASES
    };
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
