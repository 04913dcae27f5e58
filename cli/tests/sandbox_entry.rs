//! The `forge` binary is its own sandbox entry point: a RUN re-executes it with a
//! hidden subcommand. This runs a command in a busybox root through the real
//! binary (the sandbox itself is tested in forge-executor).

use std::path::Path;
use std::process::Stdio;

use forge_executor::sandbox::{self, EtcFiles, Network, Rootfs, RunSpec};

#[test]
fn the_forge_binary_enters_the_sandbox() {
    if !nix_is_root() || !Path::new("/bin/busybox").is_file() {
        println!("skipped: needs root and /bin/busybox (busybox-static)");
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    for d in ["lower/bin", "lower/etc", "upper", "work", "merged", "files"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("lower/bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", root.join("lower/bin/sh")).expect("symlink");
    for (name, text) in [
        ("hosts", "127.0.0.1 localhost\n"),
        ("resolv.conf", ""),
        ("hostname", "forge\n"),
    ] {
        std::fs::write(root.join("files").join(name), text).expect("write");
    }
    let spec = RunSpec {
        rootfs: Rootfs::Overlay {
            lower_dirs: vec![root.join("lower")],
            upper_dir: root.join("upper"),
            work_dir: root.join("work"),
        },
        merged_dir: root.join("merged"),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo made > /out; echo $$".into(),
        ],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: String::new(),
        workdir_owner_is_user: false,
        network: Network::None,
        hostname: "forge".into(),
        etc_files: EtcFiles {
            hosts: root.join("files/hosts"),
            resolv_conf: root.join("files/resolv.conf"),
            hostname: root.join("files/hostname"),
        },
    };
    let out = tempfile::tempfile().expect("temp file");
    let status = sandbox::run(
        Path::new(env!("CARGO_BIN_EXE_forge")),
        &spec,
        Stdio::from(out.try_clone().expect("clone")),
        Stdio::inherit(),
    )
    .expect("the sandbox starts");
    assert_eq!(sandbox::exit_code(status), 0);
    let mut text = String::new();
    let mut out = out;
    std::io::Seek::rewind(&mut out).expect("rewind");
    std::io::Read::read_to_string(&mut out, &mut text).expect("read");
    assert_eq!(text, "1\n", "the command is PID 1 of its namespace");
    assert_eq!(
        std::fs::read_to_string(root.join("upper/out")).expect("upper"),
        "made\n"
    );
    assert!(!root.join("lower/out").exists());
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
