//! Rootless builds with subordinate ids: forge re-executes itself in a user
//! namespace that maps the user's own uid and gid to 0 and its
//! `/etc/subuid` and `/etc/subgid` ranges to `1..=N`, as `buildah unshare`
//! and rootless podman do.
//!
//! Inside, forge is root of that namespace: it extracts layers with their
//! owners (ids up to N are real; beyond N they go in the `user.forge.owner`
//! xattr, see [`forge_cache::layer::Owners`]), its sandboxes need no user
//! namespace of their own ([`super::Privilege::Namespaced`]), and a RUN can
//! run as any `USER` up to N. Only `newuidmap` and `newgidmap` (setuid
//! helpers from shadow, Debian's `uidmap` package) may write such a map, so
//! the parent runs them on the child's pid between its `unshare` and its
//! `exec`.
//!
//! Without a range, or without the helpers, or with `FORGE_USERNS=off`,
//! forge stays as it is and each sandbox maps forge's ids alone
//! ([`super::Privilege::Rootless`]). Files written in the namespace are
//! owned, outside it, by the subordinate ids: remove a rootless store with
//! `forge prune` or from inside such a namespace (`podman unshare`-style),
//! not with a plain `rm -r` as the user.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::unsafe_ops;

/// The variable that turns the re-exec off (`off`).
pub const USERNS_ENV: &str = "FORGE_USERNS";

/// A user's subordinate id ranges: ids `start..start + count` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIds {
    /// First subordinate uid.
    pub uid_start: u64,
    /// How many uids.
    pub uid_count: u64,
    /// First subordinate gid.
    pub gid_start: u64,
    /// How many gids.
    pub gid_count: u64,
}

/// The first range of `/etc/subuid`-format `text` for the user named `name`
/// or numbered `uid` (shadow's `name:start:count` lines).
fn first_range(text: &str, name: Option<&str>, uid: u32) -> Option<(u64, u64)> {
    let uid = uid.to_string();
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let who = fields.next()?;
        if Some(who) != name && who != uid {
            return None;
        }
        let start = fields.next()?.parse().ok()?;
        let count: u64 = fields.next()?.parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

/// The ranges of the user `name`/`uid` in the `subuid` and `subgid` texts.
pub fn sub_ids(name: Option<&str>, uid: u32, subuid: &str, subgid: &str) -> Option<SubIds> {
    let (uid_start, uid_count) = first_range(subuid, name, uid)?;
    let (gid_start, gid_count) = first_range(subgid, name, uid)?;
    Some(SubIds {
        uid_start,
        uid_count,
        gid_start,
        gid_count,
    })
}

/// Where a helper is: the first of the usual directories that has it.
fn helper(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}

/// Runs `newuidmap PID 0 EUID 1 1 START COUNT` and the same for gids.
fn write_maps(pid: u32, ids: &SubIds, uidmap: &Path, gidmap: &Path) -> Result<(), String> {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    for (tool, own, start, count) in [
        (uidmap, euid, ids.uid_start, ids.uid_count),
        (gidmap, egid, ids.gid_start, ids.gid_count),
    ] {
        let out = Command::new(tool)
            .args([
                pid.to_string(),
                "0".into(),
                own.to_string(),
                "1".into(),
                "1".into(),
                start.to_string(),
                count.to_string(),
            ])
            .output()
            .map_err(|e| format!("{}: {e}", tool.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                tool.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Re-executes this forge in a user namespace with the user's subordinate
/// ids when it runs as a user other than root that has them (see the module
/// documentation). Returns `None` when it did not (root; no range; no
/// helpers; `FORGE_USERNS=off`; the helpers failed, with a warning on
/// stderr); otherwise the re-executed forge's exit code, which the caller
/// exits with. Call first thing in `main`, before any thread starts.
pub fn reexec_with_subids() -> Option<i32> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() || std::env::var(USERNS_ENV).is_ok_and(|v| v == "off") {
        return None;
    }
    let name = nix::unistd::User::from_uid(euid)
        .ok()
        .flatten()
        .map(|u| u.name);
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let ids = sub_ids(
        name.as_deref(),
        euid.as_raw(),
        &read("/etc/subuid"),
        &read("/etc/subgid"),
    )?;
    let (uidmap, gidmap) = (helper("newuidmap")?, helper("newgidmap")?);
    match spawn_mapped(&ids, &uidmap, &gidmap) {
        Ok(mut child) => {
            unsafe_ops::ignore_terminal_signals();
            Some(match child.wait() {
                Ok(status) => super::exit_code(status),
                Err(e) => {
                    eprintln!("forge: waiting for forge in its user namespace: {e}");
                    125
                }
            })
        }
        Err(e) => {
            eprintln!(
                "warning: cannot enter a user namespace with your subordinate ids ({e}); \
                 building with your own ids alone"
            );
            None
        }
    }
}

/// Spawns this executable with the same arguments in a new user namespace,
/// mapped by `newuidmap`/`newgidmap` from a helper thread while the child
/// waits before its exec.
fn spawn_mapped(ids: &SubIds, uidmap: &Path, gidmap: &Path) -> Result<std::process::Child, String> {
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (ready_r, ready_w): (OwnedFd, OwnedFd) = pipe()?;
    let (go_r, go_w): (OwnedFd, OwnedFd) = pipe()?;
    let exe = std::env::current_exe().map_err(|e| format!("finding forge's executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1));
    unsafe_ops::unshare_user_before_exec(&mut cmd, ready_w.as_raw_fd(), go_r.as_raw_fd());
    let ids = *ids;
    let (uidmap, gidmap) = (uidmap.to_path_buf(), gidmap.to_path_buf());
    let mapper = std::thread::spawn(move || -> Result<(), String> {
        let mut ready = std::fs::File::from(ready_r);
        let mut go = std::fs::File::from(go_w);
        let mut pid = [0u8; 4];
        // End of file: the child failed before it got here (spawn says why).
        if ready.read_exact(&mut pid).is_err() {
            return Ok(());
        }
        let result = write_maps(u32::from_le_bytes(pid), &ids, &uidmap, &gidmap);
        let _ = go.write_all(&[u8::from(result.is_err())]);
        result
    });
    let spawned = cmd.spawn();
    // The child's copies are what keep the pipes open from now on.
    drop(cmd);
    drop(ready_w);
    drop(go_r);
    let mapped = mapper
        .join()
        .unwrap_or_else(|_| Err("the id-mapping thread panicked".into()));
    match (spawned, mapped) {
        (Ok(child), Ok(())) => Ok(child),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(format!("spawning forge in a user namespace: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_range_is_found_by_name_or_uid() {
        let subuid = "alice:100000:65536\n1001:200000:1000\n";
        let subgid = "alice:300000:65536\nbob:1:0\n1001:400000:10\n";
        assert_eq!(
            sub_ids(Some("alice"), 1000, subuid, subgid),
            Some(SubIds {
                uid_start: 100000,
                uid_count: 65536,
                gid_start: 300000,
                gid_count: 65536
            })
        );
        assert_eq!(
            sub_ids(Some("carol"), 1001, subuid, subgid),
            Some(SubIds {
                uid_start: 200000,
                uid_count: 1000,
                gid_start: 400000,
                gid_count: 10
            })
        );
        // No gid range (bob's is empty), or no entry at all.
        assert_eq!(sub_ids(Some("bob"), 1002, "bob:5:5\n", subgid), None);
        assert_eq!(sub_ids(Some("dave"), 1003, subuid, subgid), None);
        assert_eq!(sub_ids(None, 1003, "garbage\n::\n", subgid), None);
    }
}
