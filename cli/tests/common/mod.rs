//! Helpers shared by the CLI's end-to-end tests: temp dirs, the busybox rootfs
//! tarball, running the `forge` binary with its own store.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub mod fault_proxy;
pub mod registry;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh temporary directory, removed when the test ends.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("forge-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes the busybox rootfs tarball (`scripts/make-rootfs`) at `path`.
pub fn make_rootfs(path: &Path) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/make-rootfs"))
        .arg(path)
        .output()
        .expect("make-rootfs runs");
    assert!(
        out.status.success(),
        "make-rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The busybox rootfs tarball, made once per test binary.
pub fn rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("forge-test-rootfs-{}.tar", std::process::id()));
        make_rootfs(&path);
        path
    })
}

pub fn utf8(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// `forge ARGS` with the store at `home`, stdin closed.
pub fn forge_cmd(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_forge"));
    cmd.args(args)
        .env("FORGE_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    cmd
}

pub fn forge(home: &Path, args: &[&str]) -> Output {
    forge_cmd(home, args).output().expect("forge runs")
}

/// Asserts success (printing both streams otherwise) and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The differential test's cases (`tests/data/differential/<name>/Dockerfile`),
/// in name order: (name, directory).
pub fn differential_cases() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/differential");
    let mut cases: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .expect("tests/data/differential is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a case directory has a name")
                .to_string_lossy()
                .into_owned();
            (name, p)
        })
        .collect();
    // `FORGE_DIFF_CASES=16,24`: only the cases whose names contain one of
    // these (for working on a few; CI runs them all).
    if let Ok(only) = std::env::var("FORGE_DIFF_CASES") {
        let wanted: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
        cases.retain(|(name, _)| wanted.iter().any(|w| name.contains(w)));
    }
    cases.sort();
    cases
}

/// A one-thread HTTP server on loopback for `requests` requests: `body` at
/// `only` (404 for any other path), or at every path when `only` is `None`.
/// Returns the base URL.
pub fn serve(body: Vec<u8>, only: Option<&'static str>, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).ok();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                    break;
                }
            }
            let found = only.is_none_or(|path| line.starts_with(&format!("GET {path} ")));
            let reply = if found {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            stream.write_all(&reply).ok();
        }
    });
    format!("http://{addr}")
}

/// A store with the busybox base imported as `base:latest`, and a context
/// directory. (Each test file adds the `build` it needs in its own `impl`.)
pub struct Fixture {
    pub home: TempDir,
    pub context: TempDir,
}

impl Fixture {
    pub fn new(name: &str) -> Self {
        let home = TempDir::new(&format!("{name}-home"));
        let context = TempDir::new(&format!("{name}-ctx"));
        let tar = rootfs().to_str().expect("utf-8 path");
        ok(&forge(home.path(), &["import", tar, "base:latest"]));
        Self { home, context }
    }

    /// Writes a file of the context (its directories made).
    pub fn file(&self, name: &str, bytes: &[u8]) {
        let path = self.context.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, bytes).expect("write context file");
    }

    /// `forge build --progress plain -t TAG EXTRA… CONTEXT` of `dockerfile`
    /// (written to the context).
    pub fn build_tagged(&self, dockerfile: &str, tag: &str, extra: &[&str]) -> Output {
        self.file("Dockerfile", dockerfile.as_bytes());
        let mut args = vec!["-t", tag];
        args.extend_from_slice(extra);
        self.forge_build(&args)
    }

    /// `forge save --format docker` of `tag`; the archive's path (in the
    /// store's directory, replaced by the next save).
    pub fn save_docker(&self, tag: &str) -> PathBuf {
        let saved = self.home.path().join("saved.tar");
        ok(&forge(
            self.home.path(),
            &["save", "--format", "docker", "-o", utf8(&saved), tag],
        ));
        saved
    }

    /// `forge build --progress plain ARGS CONTEXT`.
    pub fn forge_build(&self, args: &[&str]) -> Output {
        let ctx = self.context.path().to_str().expect("utf-8 path");
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        all.push(ctx);
        forge(self.home.path(), &all)
    }
}

/// A tar entry's name without a leading `./` or `/` or a trailing `/`.
pub fn clean_name(name: &str) -> String {
    name.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// The regular files of a tar archive (a `docker save` archive) by clean
/// name, symlinks resolved (docker archives may link layers).
pub fn archive_files(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    use std::io::Read;
    let mut files = std::collections::BTreeMap::new();
    let mut links = Vec::new();
    let mut tar = tar::Archive::new(bytes);
    for entry in tar.entries().expect("archive") {
        let mut entry = entry.expect("archive entry");
        let name = clean_name(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            // Relative to the link's directory.
            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
            let joined = if dir.is_empty() {
                target
            } else {
                format!("{dir}/{target}")
            };
            links.push((name, clean_name(&joined)));
        } else if kind.is_file() {
            let mut content = Vec::new();
            entry.read_to_end(&mut content).expect("archive content");
            files.insert(name, content);
        }
    }
    for (name, target) in links {
        if let Some(content) = files.get(&target).cloned() {
            files.insert(name, content);
        }
    }
    files
}

/// A layer blob's tar bytes: gunzipped or un-zstd'ed when it is compressed.
pub fn decompress_layer(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("gzip layer");
        out
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(bytes)
            .expect("zstd")
            .read_to_end(&mut out)
            .expect("zstd layer");
        out
    } else {
        bytes.to_vec()
    }
}
