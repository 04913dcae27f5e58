//! Working containers end to end: `forge from`, `run`, `containers`, `diff`,
//! `commit`, `rm`, on the busybox base image; commits checked by reading the
//! new layer from `forge save` and by umoci.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{archive_files, decompress_layer, forge, forge_cmd, ok, utf8, Fixture, TempDir};

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The entries (clean names, directories with a trailing `/`) of the top
/// layer of `tag`, read from `forge save --format docker`.
fn top_layer_entries(fx: &Fixture, tag: &str) -> Vec<String> {
    let saved = fx.save_docker(tag);
    let files = archive_files(&std::fs::read(saved).expect("saved archive"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&files["manifest.json"]).expect("manifest.json");
    let layers = manifest[0]["Layers"].as_array().expect("Layers");
    let top = layers.last().expect("a layer").as_str().expect("path");
    let tar_bytes = decompress_layer(&files[top]);
    let mut tar = tar::Archive::new(tar_bytes.as_slice());
    let mut names: Vec<String> = tar
        .entries()
        .expect("layer tar")
        .map(|e| {
            let e = e.expect("entry");
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            name.trim_start_matches("./").to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn run_commit_history_and_run_the_new_image() {
    let fx = Fixture::new("ctr-scene");
    let home = fx.home.path();
    ok(&forge(
        home,
        &[
            "run",
            "--name",
            "c1",
            "base",
            "sh",
            "-c",
            r#"mkdir -p /data && echo '{"a":1}' > /data/x.json"#,
        ],
    ));
    let id = ok(&forge(
        home,
        &[
            "commit",
            "-m",
            "Added json",
            "-a",
            "Kate Smith",
            "c1",
            "app:1",
        ],
    ));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let history = ok(&forge(home, &["history", "--no-trunc", "app:1"]));
    assert!(history.contains("Added json"), "{history}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&forge(home, &["inspect", "app:1"]))).expect("json");
    assert_eq!(inspect[0]["Author"], "Kate Smith", "{inspect}");
    assert_eq!(inspect[0]["Id"].as_str(), Some(id.trim()), "{inspect}");
    let cat = ok(&forge(
        home,
        &["run", "--rm", "app:1", "cat", "/data/x.json"],
    ));
    assert_eq!(cat, "{\"a\":1}\n");
    // Only the difference: the new directory and file, no /etc stubs.
    assert_eq!(top_layer_entries(&fx, "app:1"), ["data/", "data/x.json"]);
    // The --rm container is gone; c1 stays.
    let all = ok(&forge(home, &["containers", "-a", "-q"]));
    assert_eq!(all.lines().count(), 1, "{all}");
}

#[test]
fn a_deleted_file_becomes_a_whiteout() {
    let fx = Fixture::new("ctr-wh");
    let home = fx.home.path();
    ok(&forge(
        home,
        &["run", "--name", "del", "base", "rm", "/etc/passwd"],
    ));
    let diff = ok(&forge(home, &["diff", "del"]));
    assert_eq!(diff, "C /etc\nD /etc/passwd\n");
    ok(&forge(home, &["commit", "del", "gone:1"]));
    let entries = top_layer_entries(&fx, "gone:1");
    assert_eq!(entries, ["etc/", "etc/.wh.passwd"]);

    let bundle = TempDir::new("ctr-wh-bundle");
    let target = bundle.path().join("b");
    let out = Command::new("umoci")
        .args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:docker.io/library/gone:1", home.display()),
            utf8(&target),
        ])
        .output()
        .expect("umoci is needed (scripts/test installs it)");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.join("rootfs/etc/passwd").exists());
    assert!(target.join("rootfs/etc/group").exists());
}

#[test]
fn from_list_diff_and_rm() {
    let fx = Fixture::new("ctr-list");
    let home = fx.home.path();
    let name = ok(&forge(home, &["from", "base"]));
    assert_eq!(name.trim(), "base-working-container");
    let second = ok(&forge(home, &["from", "base:latest"]));
    assert_eq!(second.trim(), "base-working-container-1");
    let named = ok(&forge(home, &["from", "--name", "work", "base"]));
    assert_eq!(named.trim(), "work");
    let dup = forge(home, &["from", "--name", "work", "base"]);
    assert_ne!(code(&dup), 0);
    assert!(text(&dup).contains("already in use"), "{}", text(&dup));

    let table = ok(&forge(home, &["containers"]));
    let header = table.lines().next().expect("header");
    for col in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "NAMES",
    ] {
        assert!(header.contains(col), "{table}");
    }
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("Created"), "{table}");

    ok(&forge(
        home,
        &[
            "run",
            "work",
            "sh",
            "-c",
            "echo hi > /new && echo x >> /etc/group && rm /bin/true",
        ],
    ));
    // Exited containers show with -a only.
    let table = ok(&forge(home, &["containers"]));
    assert!(!table.lines().any(|l| l.ends_with(" work")), "{table}");
    let json = ok(&forge(home, &["containers", "-a", "--format", "json"]));
    let work: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .find(|v| v["Names"] == "work")
        .expect("work listed");
    assert_eq!(work["Status"], "Exited (0)");
    assert_eq!(work["State"], "exited");
    assert_eq!(work["Image"], "base");
    assert_eq!(work["ID"].as_str().map(str::len), Some(12));
    assert!(
        work["Command"].as_str().expect("Command").contains("sh -c"),
        "{work}"
    );

    let diff = ok(&forge(home, &["diff", "work"]));
    assert_eq!(
        diff, "C /bin\nD /bin/true\nC /etc\nC /etc/group\nA /new\n",
        "{diff}"
    );

    ok(&forge(home, &["rm", "work", "base-working-container"]));
    let left = ok(&forge(home, &["containers", "-a", "-q"]));
    assert_eq!(left.lines().count(), 1, "{left}");
    assert_ne!(code(&forge(home, &["rm", "work"])), 0);
}

#[test]
fn a_container_wins_over_an_image_of_the_same_name() {
    let fx = Fixture::new("ctr-names");
    let home = fx.home.path();
    ok(&forge(home, &["tag", "base", "both"]));
    ok(&forge(
        home,
        &["run", "--name", "both", "base", "touch", "/marker"],
    ));
    // `both` is the container: the marker is there.
    ok(&forge(home, &["run", "both", "ls", "/marker"]));
    // The image of that name has no marker.
    let out = forge(home, &["run", "--rm", "both:latest", "ls", "/marker"]);
    assert_eq!(code(&out), 1, "{}", text(&out));
}

#[test]
fn exit_codes_are_docker_runs() {
    let fx = Fixture::new("ctr-codes");
    let home = fx.home.path();
    let out = forge(home, &["run", "--rm", "base", "nosuchcommand"]);
    assert_eq!(code(&out), 127, "{}", text(&out));
    let out = forge(home, &["run", "--rm", "base", "sh", "-c", "exit 3"]);
    assert_eq!(code(&out), 3, "{}", text(&out));
    let out = forge(home, &["run", "--rm", "base", "/etc/passwd"]);
    assert_eq!(code(&out), 126, "{}", text(&out));
    let out = forge(
        home,
        &["run", "--rm", "-v", "/no/such/dir:/mnt", "base", "true"],
    );
    assert_eq!(code(&out), 125, "{}", text(&out));
    let out = forge(home, &["run", "--rm", "no-such-image", "true"]);
    assert_eq!(code(&out), 125, "{}", text(&out));
    // Nothing was left behind by the --rm runs.
    assert_eq!(ok(&forge(home, &["containers", "-a", "-q"])), "");
}

#[test]
fn env_workdir_user_and_volumes() {
    let fx = Fixture::new("ctr-opts");
    let home = fx.home.path();
    let host = TempDir::new("ctr-opts-vol");
    std::fs::write(host.path().join("in.txt"), "from host\n").expect("write");
    let out = ok(&forge(
        home,
        &[
            "run",
            "--rm",
            "-e",
            "GREETING=hello",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "-v",
            &format!("{}:/mnt:ro", host.path().display()),
            "base",
            "sh",
            "-c",
            "echo $GREETING; pwd; id -u; cat /mnt/in.txt",
        ],
    ));
    assert_eq!(out, "hello\n/tmp\n1000\nfrom host\n");
}

#[test]
fn rmi_of_an_image_a_container_uses_needs_force() {
    let fx = Fixture::new("ctr-rmi");
    let home = fx.home.path();
    ok(&forge(home, &["tag", "base", "used:1"]));
    ok(&forge(home, &["rmi", "base"])); // untags one name only
    ok(&forge(home, &["from", "--name", "user", "used:1"]));
    let out = forge(home, &["rmi", "used:1"]);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("used by container"), "{}", text(&out));
    ok(&forge(home, &["rmi", "-f", "used:1"]));
    // The container's image stays usable: prune keeps it.
    ok(&forge(home, &["prune", "--cache"]));
    ok(&forge(home, &["run", "user", "true"]));
}

#[test]
fn a_second_run_of_a_busy_container_is_refused() {
    let fx = Fixture::new("ctr-busy");
    let home = fx.home.path();
    ok(&forge(home, &["from", "--name", "busy", "base"]));
    let mut long = forge_cmd(home, &["run", "busy", "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn forge run");
    // Wait until it shows as running.
    let started = Instant::now();
    loop {
        let list = ok(&forge(home, &["containers"]));
        if list.contains("Up") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = forge(home, &["run", "busy", "true"]);
    assert_eq!(code(&second), 125, "{}", text(&second));
    assert!(text(&second).contains("in use"), "{}", text(&second));
    let rm = forge(home, &["rm", "busy"]);
    assert_ne!(code(&rm), 0);
    let _ = long.kill();
    let _ = long.wait();
}

#[test]
fn commit_changes_apply_and_entrypoint_cmd_work_as_in_docker_run() {
    let fx = Fixture::new("ctr-change");
    let home = fx.home.path();
    ok(&forge(home, &["from", "--name", "plain", "base"]));
    ok(&forge(
        home,
        &[
            "commit",
            "-c",
            r#"ENTRYPOINT ["echo", "says"]"#,
            "-c",
            r#"CMD ["hi"]"#,
            "-c",
            "ENV WHO=kate",
            "plain",
            "echoer:1",
        ],
    ));
    // Nothing changed: the new layer is empty.
    assert!(top_layer_entries(&fx, "echoer:1").is_empty());
    assert_eq!(ok(&forge(home, &["run", "--rm", "echoer:1"])), "says hi\n");
    assert_eq!(
        ok(&forge(home, &["run", "--rm", "echoer:1", "there"])),
        "says there\n"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&forge(home, &["inspect", "echoer:1"]))).expect("json");
    assert_eq!(inspect[0]["Config"]["Env"], serde_json::json!(["WHO=kate"]));
    // A later -c ENV merges with the image's Env.
    ok(&forge(home, &["from", "--name", "again", "echoer:1"]));
    ok(&forge(
        home,
        &["commit", "-c", "ENV X=1 WHO=ann", "again", "echoer:2"],
    ));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(&forge(home, &["inspect", "echoer:2"]))).expect("json");
    assert_eq!(
        inspect[0]["Config"]["Env"],
        serde_json::json!(["WHO=ann", "X=1"])
    );
}

/// The image ID a failed build's help names as the last good step's (the
/// report is wrapped to 80 columns when not on a terminal, which may break
/// the ID: its hex digits are read across the line break and indent).
fn last_good_id(stderr: &str) -> String {
    let after = stderr
        .split("last good step's image ID:")
        .nth(1)
        .unwrap_or_else(|| panic!("no last good step in: {stderr}"));
    let start = after.find("sha256:").expect("an ID after it");
    let hex: String = after[start + "sha256:".len()..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .take_while(char::is_ascii_hexdigit)
        .take(64)
        .collect();
    assert_eq!(hex.len(), 64, "{stderr}");
    format!("sha256:{hex}")
}

/// Sets the mtime of every file in `dir` to a day ago (past prune's grace).
fn age_files(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let file = std::fs::File::options()
            .write(true)
            .open(entry.expect("entry").path())
            .expect("open");
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(24 * 3600))
            .expect("set mtime");
    }
}

#[test]
fn the_last_good_step_of_a_failed_build_runs_by_its_id() {
    let fx = Fixture::new("ctr-step");
    let home = fx.home.path();
    fx.file(
        "Dockerfile",
        b"FROM base\nRUN echo one > /one\nRUN echo two > /two && false\n",
    );
    let out = fx.forge_build(&[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let id = last_good_id(&String::from_utf8_lossy(&out.stderr));
    // Only the step cache knows it: `forge images` does not list it.
    assert!(
        !ok(&forge(home, &["images", "--no-trunc"])).contains(&id),
        "{id}"
    );

    // The step's image, without the failed step's change.
    let short = &id["sha256:".len().."sha256:".len() + 12];
    for query in [id.as_str(), short] {
        assert_eq!(
            ok(&forge(home, &["run", "--rm", query, "cat", "/one"])),
            "one\n"
        );
        let out = forge(home, &["run", "--rm", query, "test", "-e", "/two"]);
        assert_eq!(code(&out), 1, "{}", text(&out));
    }
    let zeros = format!("sha256:{}", "0".repeat(64));
    let out = forge(home, &["run", "--rm", &zeros, "true"]);
    assert_eq!(code(&out), 125, "{}", text(&out));
    // (The report is wrapped: the query may start a line of its own.)
    assert!(text(&out).contains("no image"), "{}", text(&out));
    assert!(text(&out).contains(&format!("`{zeros}`")), "{}", text(&out));
    assert_eq!(ok(&forge(home, &["containers", "-a", "-q"])), "");

    // A container of it, shown by the image's short ID as docker shows an
    // untagged image.
    ok(&forge(
        home,
        &["run", "--name", "dbg", &id, "sh", "-c", "echo x > /x"],
    ));
    let json = ok(&forge(home, &["containers", "-a", "--format", "json"]));
    let dbg: serde_json::Value = serde_json::from_str(json.trim()).expect("one json line");
    assert_eq!(dbg["Image"], short, "{dbg}");

    // The build cache goes (its entries and blobs aged past the grace
    // period); the container keeps its image's blobs.
    age_files(&home.join("forge/v1/cache"));
    age_files(&home.join("blobs/sha256"));
    let pruned = ok(&forge(home, &["prune", "--cache"]));
    assert!(!pruned.starts_with("removed 0 cache entries"), "{pruned}");
    let out = forge(home, &["run", "--rm", &id, "true"]);
    assert_eq!(
        code(&out),
        125,
        "the step cache no longer has it: {}",
        text(&out)
    );
    assert_eq!(
        ok(&forge(home, &["run", "dbg", "cat", "/one", "/x"])),
        "one\nx\n"
    );
    // Committing needs every blob of the container's image.
    ok(&forge(home, &["commit", "dbg", "dbg:1"]));
    assert_eq!(
        ok(&forge(home, &["run", "--rm", "dbg:1", "cat", "/one", "/x"])),
        "one\nx\n"
    );
}
