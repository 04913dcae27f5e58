//! Docker's `USER` syntax resolved against a container's `/etc/passwd` and
//! `/etc/group`, with runc's semantics (`libcontainer/user.GetExecUser`). Pure:
//! the sandbox reads the two files (inside the container root, after
//! `pivot_root`) and hands their text here.
//!
//! | `USER`        | uid                         | gid                               | supplementary groups |
//! |---------------|-----------------------------|-----------------------------------|----------------------|
//! | `""`          | 0                           | root's passwd gid, else 0         | root's memberships   |
//! | `name`        | passwd, else error          | passwd                            | name's memberships   |
//! | `uid`         | `uid`                       | passwd if listed, else 0          | memberships if listed|
//! | `…:group`     | as above                    | group file, else error            | none                 |
//! | `…:gid`       | as above                    | `gid`                             | none                 |
//!
//! "Memberships" are the groups of `/etc/group` whose member list names the user
//! (runc's additional gids); they are only used when no group is given. The home
//! directory is the passwd entry's, else `/`.

/// The largest uid or gid accepted (runc's range, `0..=2^31-1`).
pub const MAX_ID: u32 = i32::MAX as u32;

/// The identity a RUN executes as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (`setgroups`), in `/etc/group` order.
    pub groups: Vec<u32>,
    /// Home directory (for `HOME` when the environment has none).
    pub home: String,
}

/// One line of `/etc/passwd` that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// One line of `/etc/group` that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Parses `name:password:uid:gid:gecos:home:shell` lines. Blank lines and lines
/// whose uid or gid is not a number are skipped (runc would read them as 0,
/// which could turn a garbage line into root).
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let mut f = line.split(':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let _password = f.next();
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            let _gecos = f.next();
            let home = f.next().unwrap_or("");
            Some(PasswdEntry {
                name,
                uid,
                gid,
                home,
            })
        })
        .collect()
}

/// Parses `name:password:gid:member,member` lines (malformed lines skipped).
fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let mut f = line.split(':');
            let name = f.next().filter(|n| !n.is_empty())?;
            let _password = f.next();
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|m| !m.is_empty())
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

/// A decimal id in range, or `None` if `s` is not numeric (then it is a name).
fn numeric_id(s: &str, what: &str) -> Result<Option<u32>, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id)),
        _ => Err(format!("{what} {s} is out of range 0-{MAX_ID}")),
    }
}

/// Resolves a `USER` value (`""`, `name`, `uid`, `name:group`, `uid:gid`,
/// `name:gid`, `uid:group`) against the container's `/etc/passwd` and
/// `/etc/group` text (`None` when the file does not exist). The error message is
/// runc's (`unable to find user NAME: no matching entries in passwd file`).
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, String> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let uid_arg = numeric_id(user_arg, "uid")?;
    let found = users.iter().find(|u| match (user_arg, uid_arg) {
        ("", _) => u.uid == 0,
        (_, Some(uid)) => u.uid == uid,
        (name, None) => u.name == name,
    });
    let mut exec = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".into(),
    };
    let matched_name = match (found, uid_arg) {
        (Some(u), _) => {
            exec.uid = u.uid;
            exec.gid = u.gid;
            if !u.home.is_empty() {
                exec.home = u.home.to_owned();
            }
            Some(u.name)
        }
        (None, Some(uid)) => {
            exec.uid = uid;
            None
        }
        (None, None) if user_arg.is_empty() => None,
        (None, None) => {
            return Err(format!(
                "unable to find user {user_arg}: no matching entries in passwd file"
            ))
        }
    };
    let groups = group.map(parse_group).unwrap_or_default();
    match group_arg {
        Some(group_arg) => {
            let gid_arg = numeric_id(group_arg, "gid")?;
            let found = groups.iter().find(|g| match gid_arg {
                Some(gid) => g.gid == gid,
                None => g.name == group_arg,
            });
            exec.gid = match (found, gid_arg) {
                (Some(g), _) => g.gid,
                (None, Some(gid)) => gid,
                (None, None) => {
                    return Err(format!(
                        "unable to find group {group_arg}: no matching entries in group file"
                    ))
                }
            };
        }
        None => {
            if let Some(name) = matched_name {
                exec.groups = groups
                    .iter()
                    .filter(|g| g.members.contains(&name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(exec)
}

/// Resolves a `--chown` value of COPY or ADD (`user`, `user:group`, numeric
/// or names) to `(uid, gid)` against the destination's `/etc/passwd` and
/// `/etc/group` text, with BuildKit's rules (`llb.WithUser` and the file
/// backend's `readUser`), which differ from `USER`'s: a numeric user alone
/// gives `uid:uid` (the gid is the same number, not the passwd one); a user
/// name gives its passwd uid and gid; a group, when given, replaces the gid.
/// A name that is not in the file is an error (`unable to find user NAME`),
/// as in current BuildKit.
pub fn resolve_chown(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), String> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid) = match numeric_id(user_arg, "uid")? {
        Some(uid) => (uid, uid),
        None => {
            let users = passwd.map(parse_passwd).unwrap_or_default();
            let found = users.iter().find(|u| u.name == user_arg).ok_or_else(|| {
                format!("unable to find user {user_arg}: no matching entries in passwd file")
            })?;
            (found.uid, found.gid)
        }
    };
    if let Some(group_arg) = group_arg {
        gid = match numeric_id(group_arg, "gid")? {
            Some(gid) => gid,
            None => {
                let groups = group.map(parse_group).unwrap_or_default();
                groups
                    .iter()
                    .find(|g| g.name == group_arg)
                    .ok_or_else(|| {
                        format!(
                            "unable to find group {group_arg}: no matching entries in group file"
                        )
                    })?
                    .gid
            }
        };
    }
    Ok((uid, gid))
}

/// `env` with `HOME=home` appended if it has no `HOME` (runc does the same).
pub fn with_home(env: &[String], home: &str) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

garbage line
broken:x:notanumber:1::/:/bin/sh
app:x:1000:1000:App,,,:/home/app:/bin/sh
nohome:x:1001:1001:::/bin/sh
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
app:x:1000:
staff:x:50:other,app
nohome:x:1001:
audio:x:29:app
";

    fn user(spec: &str) -> Result<ExecUser, String> {
        resolve_user(spec, Some(PASSWD), Some(GROUP))
    }

    fn eu(uid: u32, gid: u32, groups: &[u32], home: &str) -> ExecUser {
        ExecUser {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        }
    }

    #[test]
    fn empty_is_root_with_its_groups() {
        assert_eq!(user(""), Ok(eu(0, 0, &[10], "/root")));
        assert_eq!(resolve_user("", None, None), Ok(eu(0, 0, &[], "/")));
    }

    #[test]
    fn name_gets_passwd_ids_home_and_memberships() {
        assert_eq!(user("app"), Ok(eu(1000, 1000, &[10, 50, 29], "/home/app")));
        assert_eq!(user("daemon"), Ok(eu(1, 1, &[], "/usr/sbin")));
        assert_eq!(user("nohome"), Ok(eu(1001, 1001, &[], "/")));
    }

    #[test]
    fn numeric_uid_uses_passwd_if_listed() {
        assert_eq!(user("1000"), Ok(eu(1000, 1000, &[10, 50, 29], "/home/app")));
        assert_eq!(user("4242"), Ok(eu(4242, 0, &[], "/")));
        assert_eq!(resolve_user("4242", None, None), Ok(eu(4242, 0, &[], "/")));
    }

    #[test]
    fn explicit_group_replaces_gid_and_drops_memberships() {
        assert_eq!(user("app:staff"), Ok(eu(1000, 50, &[], "/home/app")));
        assert_eq!(user("app:77"), Ok(eu(1000, 77, &[], "/home/app")));
        assert_eq!(user("4242:audio"), Ok(eu(4242, 29, &[], "/")));
        assert_eq!(user("4242:4343"), Ok(eu(4242, 4343, &[], "/")));
        assert_eq!(user("0:0"), Ok(eu(0, 0, &[], "/root")));
        assert_eq!(resolve_user("5:6", None, None), Ok(eu(5, 6, &[], "/")));
        // An empty group part is no group.
        assert_eq!(user("app:"), user("app"));
    }

    #[test]
    fn unknown_names_are_runc_errors() {
        assert_eq!(
            user("nobody"),
            Err("unable to find user nobody: no matching entries in passwd file".into())
        );
        assert_eq!(
            resolve_user("app", None, Some(GROUP)),
            Err("unable to find user app: no matching entries in passwd file".into())
        );
        assert_eq!(
            user("app:nogroup"),
            Err("unable to find group nogroup: no matching entries in group file".into())
        );
        assert_eq!(
            resolve_user("app:staff", Some(PASSWD), None),
            Err("unable to find group staff: no matching entries in group file".into())
        );
        // A malformed line is not a match.
        assert!(user("broken").is_err());
        assert!(user("garbage line").is_err());
    }

    #[test]
    fn ids_out_of_range_are_errors() {
        assert!(user("2147483648").is_err());
        assert!(user("99999999999999999999").is_err());
        assert!(user("0:2147483648").is_err());
        assert_eq!(user("2147483647").map(|u| u.uid), Ok(MAX_ID));
    }

    #[test]
    fn chown_follows_buildkit() {
        let chown = |s| resolve_chown(s, Some(PASSWD), Some(GROUP));
        assert_eq!(chown("app"), Ok((1000, 1000)));
        assert_eq!(chown("daemon:staff"), Ok((1, 50)));
        assert_eq!(chown("1234"), Ok((1234, 1234)));
        assert_eq!(chown("1000"), Ok((1000, 1000)));
        assert_eq!(chown("7:8"), Ok((7, 8)));
        assert_eq!(chown("app:9"), Ok((1000, 9)));
        assert_eq!(chown("5:audio"), Ok((5, 29)));
        assert!(chown("ghost").is_err());
        assert!(chown("app:ghosts").is_err());
        assert!(resolve_chown("app", None, None).is_err());
    }

    #[test]
    fn home_is_added_only_when_missing() {
        let env = vec!["PATH=/bin".to_string()];
        assert_eq!(with_home(&env, "/root"), ["PATH=/bin", "HOME=/root"]);
        let env = vec!["HOME=/x".to_string()];
        assert_eq!(with_home(&env, "/root"), ["HOME=/x"]);
    }
}
