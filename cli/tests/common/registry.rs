//! A real CNCF distribution registry (Debian's `docker-registry`) on
//! 127.0.0.1, with a temp storage dir, for the registry tests; its access
//! log (stdout, Apache's combined format) says which requests forge made.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// The registry binary of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// One request of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, `POST`, `PATCH`, `PUT`, ...
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The answer's status.
    pub status: u16,
}

/// A running registry; killed when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage and log.
    pub dir: TempDir,
    log: PathBuf,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The status of `GET path` on `addr`, if it answers.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.split_whitespace().nth(1)?.parse().ok()
}

impl TestRegistry {
    /// Starts a registry with an empty storage dir; `extra` is YAML added at
    /// the top level of its config (e.g. an `auth:` section).
    pub fn start(name: &str) -> Self {
        Self::start_with(name, "")
    }

    /// [`TestRegistry::start`] with extra top-level config.
    pub fn start_with(name: &str, extra: &str) -> Self {
        assert!(
            std::path::Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry package (scripts/test does)"
        );
        let dir = TempDir::new(&format!("registry-{name}"));
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n\
                 {extra}",
                storage.display()
            ),
        )
        .expect("write config");
        let log = dir.path().join("access.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("docker-registry starts");
        let registry = Self {
            child,
            addr,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&registry.addr, "/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "the registry did not answer in 20 s:\n{}",
                std::fs::read_to_string(&registry.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Every request logged so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // ... "METHOD PATH HTTP/1.1" STATUS SIZE ...
                let (_, rest) = line.split_once('"')?;
                let (request, after) = rest.split_once('"')?;
                let mut words = request.split_whitespace();
                let method = words.next()?.to_string();
                let path = words.next()?.to_string();
                words.next().filter(|p| p.starts_with("HTTP/"))?;
                let status = after.split_whitespace().next()?.parse().ok()?;
                Some(Request {
                    method,
                    path,
                    status,
                })
            })
            .collect()
    }

    /// How many requests are logged now (a mark for [`Self::requests_since`]).
    pub fn mark(&self) -> usize {
        // The log is written as requests end: wait until it is still.
        let mut last = usize::MAX;
        loop {
            let n = self.requests().len();
            if n == last {
                return n;
            }
            last = n;
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// The requests logged after `mark`.
    pub fn requests_since(&self, mark: usize) -> Vec<Request> {
        self.mark();
        self.requests().into_iter().skip(mark).collect()
    }

    /// The raw log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a peer tool (skopeo, buildah, openssl), asserting success; its
/// stdout as bytes.
pub fn run_tool_bytes(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// [`run_tool_bytes`] as text.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&run_tool_bytes(program, args)).into_owned()
}

/// skopeo's digest of `docker://REF` (the manifest it resolves to).
pub fn skopeo_digest(reference: &str) -> String {
    let inspect: serde_json::Value = serde_json::from_str(&run_tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .expect("skopeo inspect JSON");
    inspect["Digest"].as_str().expect("a Digest").to_string()
}

/// The digest `forge push` printed (`TAG: digest: sha256:… size: N`).
pub fn pushed_digest(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.split_once(": digest: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest line in:\n{stdout}"))
        .to_string()
}
