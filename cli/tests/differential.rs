//! The differential test of issue 4: every Dockerfile under
//! `tests/data/differential/NN-name/` is built by Docker's BuildKit (the engine of
//! Debian's docker.io package, started here on a private socket) and by forge, from
//! the same busybox base (`scripts/make-rootfs`, imported by each tool as
//! `forge-diff/base:latest`). Both images are exported as docker archives
//! (`docker save`, `forge save --format docker`) and read by the same code into one
//! normalized description: the config fields a Dockerfile sets, the history entries
//! the Dockerfile added, and every added layer's entries (type, mode, owner, link
//! target, content digest; whiteouts and opaque markers included; no timestamps),
//! and the unpacked tree (every layer, the base's included, applied in order with
//! whiteouts and opaque markers honoured: the final filesystem, path by path).
//! Zero differences are expected; every case's differences are reported before the
//! test fails. The descriptions are written to `/tmp/forge-differential/engine/`
//! and `/tmp/forge-differential/forge/` (`CASE.json`), for `diff -u`.
//!
//! A second test runs a forge-built image with tools that are not ours: umoci
//! unpacks forge's OCI archive and runc runs a command in it.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use common::{forge, utf8, TempDir};

const DOCKERD: &str = "/usr/sbin/dockerd";
/// Debian's CLI, by path: another docker CLI may come first on PATH.
const DOCKER: &str = "/usr/bin/docker";
const BASE: &str = "forge-diff/base:latest";
const OUT: &str = "/tmp/forge-differential";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/differential")
}

fn cases() -> Vec<(String, PathBuf)> {
    common::differential_cases()
}

/// Runs `cmd` to its end, or kills it (by its id) after `limit`: a hung build fails
/// the test instead of hanging it.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let logs = TempDir::new(&format!("out-{n}"));
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let mut stderr = std::fs::read(&err_path).unwrap_or_default();
            stderr.extend_from_slice(format!("\n(killed after {limit:?})").as_bytes());
            std::fs::write(&err_path, stderr).expect("stderr file");
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// A build's time limit (BuildKit needs well under a second for any case).
const BUILD_LIMIT: Duration = Duration::from_secs(120);

/// `Ok(stdout)` on success, else a report of the command's failure.
fn succeeded(what: &str, out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed (exit {:?})\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

fn ok(what: &str, out: &Output) -> String {
    succeeded(what, out).unwrap_or_else(|e| panic!("{e}"))
}

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("`{program}` is needed (scripts/test installs it): {e}"));
    ok(&format!("{program} {args:?}"), &out)
}

// ---------------------------------------------------------------------------------
// The engine: dockerd on a private socket, stopped (with its containerd) on drop.

struct Engine {
    /// Short on purpose: the socket lives here (unix socket paths max 108 bytes).
    dir: PathBuf,
    dockerd: Child,
}

impl Engine {
    fn start() -> Engine {
        assert!(
            Path::new(DOCKERD).exists() && Path::new(DOCKER).exists(),
            "{DOCKERD} or {DOCKER} is missing: the differential test builds every case with \
             Docker's BuildKit (Debian's docker.io package). Run scripts/test, which installs it."
        );
        let dir = PathBuf::from(format!("/tmp/fd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config")).expect("engine dir");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let d = utf8(&dir);
        let dockerd = Command::new(DOCKERD)
            .args([
                "--data-root",
                &format!("{d}/data"),
                "--exec-root",
                &format!("{d}/exec"),
                "-H",
                &format!("unix://{d}/docker.sock"),
                "--pidfile",
                &format!("{d}/pid"),
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {DOCKERD}: {e}"));
        // From here on the guard stops it, whatever happens.
        let mut engine = Engine { dir, dockerd };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = engine.docker(&["version"]).output().expect("docker runs");
            if out.status.success() {
                break;
            }
            if let Ok(Some(status)) = engine.dockerd.try_wait() {
                panic!("dockerd exited ({status}):\n{}", engine.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.args(args)
            .env(
                "DOCKER_HOST",
                format!("unix://{}/docker.sock", self.dir.display()),
            )
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", self.dir.join("config"))
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args).output().expect("docker runs");
        succeeded(&format!("docker {}", args.join(" ")), &out)
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// The processes whose parent is `pid` (dockerd's containerd).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

impl Drop for Engine {
    fn drop(&mut self) {
        let pid = self.dockerd.id();
        let children = children_of(pid);
        // SIGTERM: dockerd stops containerd and unmounts its data root.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let dockerd = &mut self.dockerd;
        if !wait_until(Duration::from_secs(15), || {
            matches!(dockerd.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        for child in children {
            if alive(child) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.to_string()])
                    .status();
                if !wait_until(Duration::from_secs(5), || !alive(child)) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &child.to_string()])
                        .status();
                }
            }
        }
        // Whatever a killed engine left mounted under its directory, deepest first.
        let prefix = format!("{}/", self.dir.display());
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------
// The normalized description of an image, read from a docker archive.

/// What is compared. Absent, `null`, `""`, `[]` and `{}` all mean "unset" (they do
/// to docker and every runtime), so they all read as `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Image {
    architecture: Option<String>,
    os: Option<String>,
    author: Option<String>,
    config: Config,
    /// The history entries after the base image's.
    history: Vec<History>,
    /// The number of layers after the base image's.
    layer_count: usize,
    /// The entries of each layer after the base image's, by normalized name.
    layers: Vec<BTreeMap<String, Entry>>,
    /// The unpacked tree: every layer (the base's included) applied in order,
    /// whiteouts and opaque markers honoured (see `unpacked_tree`).
    tree: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Config {
    env: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    shell: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    exposed_ports: Option<Vec<String>>,
    volumes: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
    /// Zero durations and retries dropped (docker omits them).
    healthcheck: Option<Value>,
    on_build: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct History {
    created_by: String,
    empty_layer: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    /// Octal permission bits with setuid, setgid and sticky.
    mode: String,
    uid: u64,
    gid: u64,
    /// A symlink's target as written; a hardlink's target entry, normalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<String>,
    /// `major,minor` of a device.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// The content's sha256 (regular files, whiteouts included).
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// A whole image as read, before the base's part is cut off.
struct Parsed {
    architecture: Option<String>,
    os: Option<String>,
    author: Option<String>,
    config: Config,
    history: Vec<History>,
    layers: Vec<BTreeMap<String, Entry>>,
}

impl Parsed {
    /// The part the Dockerfile added on top of a base of `base` (history entries,
    /// layers).
    fn above(self, base: (usize, usize)) -> Result<Image, String> {
        let (history, layers) = base;
        if self.history.len() < history || self.layers.len() < layers {
            return Err(format!(
                "the image has {} history entries and {} layers, fewer than its base ({history}, {layers})",
                self.history.len(),
                self.layers.len()
            ));
        }
        let tree = unpacked_tree(&self.layers);
        let layers: Vec<_> = self.layers.into_iter().skip(layers).collect();
        Ok(Image {
            architecture: self.architecture,
            os: self.os,
            author: self.author,
            config: self.config,
            history: self.history.into_iter().skip(history).collect(),
            layer_count: layers.len(),
            layers,
            tree,
        })
    }
}

/// A layer entry's name without the `(occurrence N)` of a repeated name.
fn entry_name(key: &str) -> &str {
    match key.rsplit_once(" (occurrence ") {
        Some((name, rest)) if rest.ends_with(')') => name,
        _ => key,
    }
}

/// Removes `path` and everything under it from `tree`.
fn remove_subtree(tree: &mut BTreeMap<String, Entry>, path: &str) {
    tree.remove(path);
    remove_children(tree, path);
}

/// Removes everything under `dir` (not `dir` itself) from `tree`.
fn remove_children(tree: &mut BTreeMap<String, Entry>, dir: &str) {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

/// The final filesystem of an image: its layers applied in order, as a runtime
/// unpacks them. Each layer's whiteouts (`.wh.NAME`) and opaque markers
/// (`.wh..wh..opq`) first remove what lower layers have; then its entries are
/// added, a non-directory replacing a directory with all under it, a directory
/// over a directory keeping the children. A hard link reads as the inode it
/// names (type, mode, owner and content of its target, as the tree has it
/// then), its target kept in `link`.
fn unpacked_tree(layers: &[BTreeMap<String, Entry>]) -> BTreeMap<String, Entry> {
    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in layers {
        // Whiteouts apply to the lower layers only.
        for key in layer.keys() {
            let name = entry_name(key);
            let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
            if base == ".wh..wh..opq" {
                remove_children(&mut tree, dir);
            } else if let Some(hidden) = base.strip_prefix(".wh.") {
                let path = if dir.is_empty() {
                    hidden.to_string()
                } else {
                    format!("{dir}/{hidden}")
                };
                remove_subtree(&mut tree, &path);
            }
        }
        let added = |e: &Entry| e.kind != "hardlink";
        // Everything but hard links, then hard links (their targets in place).
        for pass in [true, false] {
            for (key, entry) in layer {
                let name = entry_name(key);
                let base = name.rsplit_once('/').map_or(name, |(_, b)| b);
                if base.starts_with(".wh.") || added(entry) != pass {
                    continue;
                }
                let entry = if entry.kind == "hardlink" {
                    let target = entry.link.clone().unwrap_or_default();
                    match tree.get(&target) {
                        Some(t) => Entry {
                            link: Some(target),
                            ..t.clone()
                        },
                        None => entry.clone(),
                    }
                } else {
                    entry.clone()
                };
                if entry.kind != "dir" {
                    remove_children(&mut tree, name);
                }
                tree.insert(name.to_string(), entry);
            }
        }
    }
    tree
}

/// `./a/b/` → `a/b`; `/a` → `a`.
fn normalize(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            break;
        }
    }
    n.trim_end_matches('/').to_string()
}

fn decompress(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("gunzip: {e}"))?;
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(&bytes[..])
            .and_then(|mut d| d.read_to_end(&mut out))
            .map_err(|e| format!("zstd: {e}"))?;
    } else {
        return Ok(bytes);
    }
    Ok(out)
}

fn kind(t: tar::EntryType) -> String {
    match t {
        t if t.is_file() => "file".into(),
        t if t.is_dir() => "dir".into(),
        t if t.is_symlink() => "symlink".into(),
        t if t.is_hard_link() => "hardlink".into(),
        t if t.is_character_special() => "char".into(),
        t if t.is_block_special() => "block".into(),
        t if t.is_fifo() => "fifo".into(),
        t => format!("type {:?}", t.as_byte() as char),
    }
}

/// One layer's entries by normalized name (the root entry left out).
fn layer_entries(tar_bytes: &[u8]) -> Result<BTreeMap<String, Entry>, String> {
    let mut entries = BTreeMap::new();
    let mut archive = tar::Archive::new(tar_bytes);
    for entry in archive.entries().map_err(|e| format!("layer tar: {e}"))? {
        let mut entry = entry.map_err(|e| format!("layer tar entry: {e}"))?;
        let header = entry.header();
        let t = header.entry_type();
        if matches!(t, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = normalize(&raw_name);
        let bad = |what: &str, e: std::io::Error| format!("{raw_name}: {what}: {e}");
        let mode = header.mode().map_err(|e| bad("mode", e))?;
        let uid = header.uid().map_err(|e| bad("uid", e))?;
        let gid = header.gid().map_err(|e| bad("gid", e))?;
        let device = if t.is_character_special() || t.is_block_special() {
            let major = header.device_major().map_err(|e| bad("major", e))?;
            let minor = header.device_minor().map_err(|e| bad("minor", e))?;
            Some(format!(
                "{},{}",
                major.unwrap_or_default(),
                minor.unwrap_or_default()
            ))
        } else {
            None
        };
        // Only links have a target: docker's whiteouts are regular files that keep
        // the link name of the shared overlay whiteout inode they were made from.
        let link = if t.is_symlink() || t.is_hard_link() {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .map(|l| if t.is_hard_link() { normalize(&l) } else { l })
        } else {
            None
        };
        let sha256 = if t.is_file() {
            let mut content = Vec::new();
            entry
                .read_to_end(&mut content)
                .map_err(|e| bad("content", e))?;
            Some(format!("{:x}", Sha256::digest(&content)))
        } else {
            None
        };
        if name.is_empty() || name == "." {
            continue;
        }
        let value = Entry {
            kind: kind(t),
            mode: format!("{:04o}", mode & 0o7777),
            uid,
            gid,
            link,
            device,
            sha256,
        };
        // The same name twice in one layer is worth seeing.
        let mut key = name.clone();
        let mut n = 1;
        while entries.contains_key(&key) {
            n += 1;
            key = format!("{name} (occurrence {n})");
        }
        entries.insert(key, value);
    }
    Ok(entries)
}

/// Resolves `name` in the outer archive, following symlinks (docker save links a
/// layer it already wrote).
fn resolve<'a>(files: &'a BTreeMap<String, Outer>, name: &str) -> Result<&'a [u8], String> {
    let mut name = normalize(name);
    for _ in 0..16 {
        match files.get(&name) {
            Some(Outer::File(bytes)) => return Ok(bytes),
            Some(Outer::Symlink(target)) => {
                let mut parts: Vec<&str> = name.split('/').collect();
                parts.pop();
                for part in target.split('/') {
                    match part {
                        "" | "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                name = parts.join("/");
            }
            None => return Err(format!("the archive has no `{name}`")),
        }
    }
    Err(format!("symlink loop at `{name}`"))
}

enum Outer {
    File(Vec<u8>),
    Symlink(String),
}

fn strings(v: &Value) -> Option<Vec<String>> {
    let list: Vec<String> = v
        .as_array()?
        .iter()
        .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_string))
        .collect();
    (!list.is_empty()).then_some(list)
}

fn string(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

fn keys(v: &Value) -> Option<Vec<String>> {
    let keys: Vec<String> = v.as_object()?.keys().cloned().collect();
    (!keys.is_empty()).then_some(keys)
}

/// Reads a docker archive (`docker save`, `forge save --format docker`).
fn read_docker_archive(path: &Path) -> Result<Parsed, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    for entry in archive.entries().map_err(|e| format!("archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("archive entry: {e}"))?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let t = entry.header().entry_type();
        if t.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default();
            files.insert(name, Outer::Symlink(target));
        } else if t.is_file() {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("archive entry {name}: {e}"))?;
            files.insert(name, Outer::File(bytes));
        }
    }
    let manifest: Value = serde_json::from_slice(resolve(&files, "manifest.json")?)
        .map_err(|e| format!("manifest.json: {e}"))?;
    let [image] = manifest.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(format!("manifest.json does not hold one image: {manifest}"));
    };
    let config_name = image["Config"]
        .as_str()
        .ok_or_else(|| format!("manifest.json has no Config: {image}"))?;
    let config: Value = serde_json::from_slice(resolve(&files, config_name)?)
        .map_err(|e| format!("{config_name}: {e}"))?;
    let layer_names: Vec<&str> = image["Layers"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    if diff_ids != layer_names.len() {
        return Err(format!(
            "the config lists {diff_ids} diff_ids, manifest.json {} layers",
            layer_names.len()
        ));
    }
    let mut layers = Vec::new();
    for name in layer_names {
        let bytes = decompress(resolve(&files, name)?.to_vec())?;
        layers.push(layer_entries(&bytes).map_err(|e| format!("layer {name}: {e}"))?);
    }
    let c = &config["config"];
    let healthcheck = c["Healthcheck"].as_object().map(|h| {
        Value::Object(
            h.iter()
                .filter(|(_, v)| !v.is_null() && v.as_u64() != Some(0))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    });
    let labels = c["Labels"].as_object().and_then(|m| {
        let labels: BTreeMap<String, String> = m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect();
        (!labels.is_empty()).then_some(labels)
    });
    let history = config["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|e| History {
                    created_by: e["created_by"].as_str().unwrap_or_default().to_string(),
                    empty_layer: e["empty_layer"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Parsed {
        architecture: string(&config["architecture"]),
        os: string(&config["os"]),
        author: string(&config["author"]),
        config: Config {
            env: strings(&c["Env"]),
            cmd: strings(&c["Cmd"]),
            entrypoint: strings(&c["Entrypoint"]),
            shell: strings(&c["Shell"]),
            working_dir: string(&c["WorkingDir"]),
            user: string(&c["User"]),
            exposed_ports: keys(&c["ExposedPorts"]),
            volumes: keys(&c["Volumes"]),
            labels,
            stop_signal: string(&c["StopSignal"]),
            healthcheck,
            on_build: strings(&c["OnBuild"]),
        },
        history,
        layers,
    })
}

// ---------------------------------------------------------------------------------
// Differences, one readable line each.

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{path}.{key}")
    } else {
        format!("{path}[{key:?}]")
    }
}

fn differences(path: &str, engine: &Value, forge: &Value, out: &mut Vec<String>) {
    let one_side =
        |p: String, e: Option<&Value>, f: Option<&Value>, out: &mut Vec<String>| match (e, f) {
            (Some(e), Some(f)) => differences(&p, e, f, out),
            (Some(e), None) => out.push(format!("{p}: only in BuildKit's image: {e}")),
            (None, Some(f)) => out.push(format!("{p}: only in forge's image: {f}")),
            (None, None) => {}
        };
    match (engine, forge) {
        (Value::Object(e), Value::Object(f)) => {
            let mut keys: Vec<&String> = e.keys().chain(f.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                one_side(child_path(path, k), e.get(k), f.get(k), out);
            }
        }
        (Value::Array(e), Value::Array(f)) => {
            if e.len() != f.len() {
                out.push(format!(
                    "{path}: BuildKit has {} items, forge {}",
                    e.len(),
                    f.len()
                ));
            }
            for i in 0..e.len().max(f.len()) {
                one_side(format!("{path}[{i}]"), e.get(i), f.get(i), out);
            }
        }
        (e, f) if e != f => out.push(format!("{path}: BuildKit {e}, forge {f}")),
        _ => {}
    }
}

fn write_json(side: &str, case: &str, value: &impl Serialize) {
    let dir = Path::new(OUT).join(side);
    std::fs::create_dir_all(&dir).expect("output dir");
    let text = serde_json::to_string_pretty(value).expect("serializable");
    std::fs::write(dir.join(format!("{case}.json")), text + "\n").expect("write description");
}

/// Saves `name` from the engine and reads it.
fn engine_image(engine: &Engine, work: &Path, name: &str) -> Result<Parsed, String> {
    let tar = work.join(format!("engine-{}.tar", name.replace(['/', ':'], "_")));
    engine.run(&["save", name, "-o", utf8(&tar)])?;
    read_docker_archive(&tar).map_err(|e| format!("reading docker save of {name}: {e}"))
}

/// Saves `name` from forge's store as a docker archive and reads it.
fn forge_image(home: &Path, work: &Path, name: &str) -> Result<Parsed, String> {
    let tar = work.join(format!("forge-{}.tar", name.replace(['/', ':'], "_")));
    succeeded(
        "forge save --format docker",
        &forge(
            home,
            &["save", "--format", "docker", name, "-o", utf8(&tar)],
        ),
    )?;
    read_docker_archive(&tar).map_err(|e| format!("reading forge save of {name}: {e}"))
}

/// Builds one case with both tools; the differences, or why there is no comparison.
fn compare_case(
    engine: &Engine,
    home: &Path,
    work: &Path,
    case: &str,
    dir: &Path,
    bases: ((usize, usize), (usize, usize)),
) -> Vec<String> {
    let tag = format!("forge-diff/{case}:latest");
    let dockerfile = dir.join("Dockerfile");
    let build = [
        "build",
        "--network",
        "none",
        "-t",
        &tag,
        "-f",
        utf8(&dockerfile),
        utf8(dir),
    ];
    let engine_build = output_within(engine.docker(&build), BUILD_LIMIT);
    let buildkit = match succeeded("docker build", &engine_build)
        .and_then(|_| engine_image(engine, work, &tag))
        .and_then(|p| p.above(bases.0))
    {
        Ok(image) => image,
        Err(e) => return vec![format!("BuildKit's side (a problem of the test): {e}")],
    };
    write_json("engine", case, &buildkit);
    let mut forge_build = Command::new(env!("CARGO_BIN_EXE_forge"));
    forge_build
        .args(build)
        .env("FORGE_HOME", home)
        .env("NO_COLOR", "1");
    let built = match succeeded("forge build", &output_within(forge_build, BUILD_LIMIT))
        .and_then(|_| forge_image(home, work, &tag))
        .and_then(|p| p.above(bases.1))
    {
        Ok(image) => image,
        Err(e) => return vec![e],
    };
    write_json("forge", case, &built);
    let mut out = Vec::new();
    differences(
        "",
        &serde_json::to_value(&buildkit).expect("serializable"),
        &serde_json::to_value(&built).expect("serializable"),
        &mut out,
    );
    out
}

#[test]
fn buildkit_and_forge_build_the_same_images() {
    let cases = cases();
    assert!(
        cases.len() >= 10 || std::env::var_os("FORGE_DIFF_CASES").is_some(),
        "expected the cases under {}",
        cases_dir().display()
    );
    let engine = Engine::start();
    let work = TempDir::new("work");
    let home = TempDir::new("home");
    let _ = std::fs::remove_dir_all(OUT);
    let rootfs = utf8(common::rootfs());

    // The base, imported by each tool.
    engine
        .run(&["import", rootfs, BASE])
        .unwrap_or_else(|e| panic!("{e}\n{}", engine.log()));
    ok(
        "forge import",
        &forge(home.path(), &["import", rootfs, BASE]),
    );
    let engine_base = engine_image(&engine, work.path(), BASE).unwrap_or_else(|e| panic!("{e}"));
    let forge_base = forge_image(home.path(), work.path(), BASE).unwrap_or_else(|e| panic!("{e}"));
    let bases = (
        (engine_base.history.len(), engine_base.layers.len()),
        (forge_base.history.len(), forge_base.layers.len()),
    );

    let mut reports = Vec::new();
    // The base's layers themselves: the same tarball must give the same entries.
    let mut base_diffs = Vec::new();
    differences(
        "base.layers",
        &serde_json::to_value(&engine_base.layers).expect("serializable"),
        &serde_json::to_value(&forge_base.layers).expect("serializable"),
        &mut base_diffs,
    );
    if !base_diffs.is_empty() {
        reports.push(("(the imported base)".to_string(), base_diffs));
    }

    for (case, dir) in &cases {
        let diffs = compare_case(&engine, home.path(), work.path(), case, dir, bases);
        if !diffs.is_empty() {
            reports.push((case.clone(), diffs));
        }
    }
    drop(engine);

    let mut text = String::new();
    for (case, diffs) in &reports {
        text.push_str(&format!("\n== {case}\n"));
        for d in diffs {
            for (i, line) in d.lines().enumerate() {
                text.push_str(if i == 0 { "  " } else { "    " });
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(
        reports.is_empty(),
        "{} of {} cases differ between BuildKit and forge (descriptions: diff -u {OUT}/engine/CASE.json {OUT}/forge/CASE.json):\n{text}",
        reports.len(),
        cases.len()
    );
}

// ---------------------------------------------------------------------------------
// A forge-built image, unpacked by umoci and run by runc.

#[test]
fn a_forge_built_image_is_unpacked_by_umoci_and_run_by_runc() {
    let home = TempDir::new("runc-home");
    let work = TempDir::new("runc-work");
    let h = home.path();
    let rootfs = utf8(common::rootfs());
    ok("forge import", &forge(h, &["import", rootfs, BASE]));
    let dir = cases_dir().join("04-user");
    let dockerfile = dir.join("Dockerfile");
    let tag = "forge-diff/runc:latest";
    ok(
        "forge build",
        &forge(
            h,
            &[
                "build",
                "--network",
                "none",
                "-t",
                tag,
                "-f",
                utf8(&dockerfile),
                utf8(&dir),
            ],
        ),
    );
    let archive = work.path().join("oci.tar");
    ok(
        "forge save --format oci",
        &forge(h, &["save", "--format", "oci", "-o", utf8(&archive), tag]),
    );
    let layout = work.path().join("layout");
    std::fs::create_dir_all(&layout).expect("mkdir");
    tool("tar", &["-xf", utf8(&archive), "-C", utf8(&layout)]);
    let bundle = work.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", layout.display()),
            utf8(&bundle),
        ],
    );

    let config_path = bundle.join("config.json");
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config.json")).expect("json");
    // umoci read the image's `USER nobody` through the image's own /etc/passwd.
    assert_eq!(spec["process"]["user"]["uid"], 65534, "{}", spec["process"]);
    assert_eq!(spec["process"]["user"]["gid"], 65534, "{}", spec["process"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "id; cat /home/app/id.txt /tmp/by-number.txt; \
         stat -c '%u:%g %a %n' /home/app /home/app/id.txt /tmp/by-app /tmp/by-nobody"
    ]);
    std::fs::write(&config_path, serde_json::to_vec(&spec).expect("json")).expect("write config");
    let runc_root = work.path().join("runc");
    let out = Command::new("runc")
        .args(["--root", utf8(&runc_root), "run", "--bundle", utf8(&bundle)])
        .arg(format!("forge-diff-{}", std::process::id()))
        .stdin(Stdio::null())
        .output()
        .expect("runc runs");
    let stdout = ok("runc run", &out);
    // The same output as the image BuildKit builds from the same Dockerfile.
    assert_eq!(
        stdout,
        "uid=65534(nobody) gid=65534(nogroup)\n\
         uid=1000(app) gid=1000(app)\n\
         uid=1001 gid=1002\n\
         1000:1000 755 /home/app\n\
         1000:1000 644 /home/app/id.txt\n\
         1000:1000 644 /tmp/by-app\n\
         65534:65534 644 /tmp/by-nobody\n"
    );
}
