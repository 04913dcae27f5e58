//! `forge login` and `forge logout`: credentials for a registry, checked
//! against it and kept in forge's own `auth.json` (docker's `config.json`
//! format; see `forge_registry::auth` for where credentials are read from).

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};

use clap::Args;
use forge_registry::auth::{self, Credentials, Keychain, Stored};
use forge_registry::Registry;

use crate::images::open_store;
use crate::{usage, Failure};

/// `forge login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry (`host[:port]`); default: docker.io.
    server: Option<String>,
    /// The user name (asked for on a terminal when not given).
    #[arg(short, long)]
    username: Option<String>,
    /// The password. Other users can see it in the process list: prefer
    /// `--password-stdin`.
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input (needs `--username`).
    #[arg(long)]
    password_stdin: bool,
}

/// `forge logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (`host[:port]`); default: docker.io.
    server: Option<String>,
}

fn environment(message: impl Into<String>, help: &str) -> Failure {
    Failure {
        report: miette::miette!(help = help.to_string(), "{}", message.into()),
        code: 2,
    }
}

/// Reads one line from standard input (without its line end).
fn read_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| environment(format!("cannot read standard input: {e}"), "try again"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Asks for a line on the terminal (the prompt on stderr); without echo
/// for a password.
fn prompt(what: &str, echo: bool) -> Result<String, Failure> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    eprint!("{what}: ");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let saved = if echo {
        None
    } else {
        tcgetattr(&stdin).ok().inspect(|saved| {
            let mut quiet = saved.clone();
            quiet.local_flags.remove(LocalFlags::ECHO);
            quiet.local_flags.insert(LocalFlags::ECHONL);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
        })
    };
    let line = read_line();
    if let Some(saved) = saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    }
    line
}

/// The registry a `forge login/logout` argument names.
fn registry_of(server: Option<&str>) -> String {
    auth::registry_name(server.unwrap_or(forge_cache::reference::DEFAULT_REGISTRY))
}

fn auth_file() -> Result<std::path::PathBuf, Failure> {
    auth::forge_auth_file().ok_or_else(|| {
        environment(
            "cannot find a place for forge's auth.json: neither XDG_CONFIG_HOME nor HOME is set",
            "set HOME (credentials go to ~/.config/forge/auth.json)",
        )
    })
}

/// `forge login`.
pub fn login(args: &LoginArgs) -> Result<(), Failure> {
    let registry = registry_of(args.server.as_deref());
    let terminal = std::io::stdin().is_terminal();
    if args.password_stdin && args.username.is_none() {
        return Err(usage(
            "--password-stdin needs --username",
            "e.g. echo \"$PASSWORD\" | forge login --password-stdin -u USER REGISTRY",
        ));
    }
    let username = match &args.username {
        Some(u) => u.clone(),
        None if terminal => prompt("Username", true)?,
        None => {
            return Err(usage(
                "no user name: standard input is not a terminal to ask on",
                "give it with -u USER (and the password with --password-stdin)",
            ))
        }
    };
    let password = if let Some(p) = &args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| environment(format!("cannot read standard input: {e}"), "try again"))?;
        text.trim_end_matches(['\n', '\r']).to_string()
    } else if terminal {
        prompt("Password", false)?
    } else {
        return Err(usage(
            "no password: standard input is not a terminal to ask on",
            "pipe it in with --password-stdin",
        ));
    };
    if username.is_empty() || password.is_empty() {
        return Err(usage(
            "the user name and the password may not be empty",
            "forge login -u USER REGISTRY",
        ));
    }
    let credentials = Credentials { username, password };
    // The registry's answer with these credentials alone, before anything
    // is saved.
    let configured = crate::registry::client(&open_store()?)?;
    let mut options = configured.options().clone();
    options.keychain = Keychain::anonymous().with_credentials(&registry, credentials.clone());
    let client = Registry::new(&forge_http::Client::new(), options);
    client.check_login(&registry)?;
    match auth::store(&auth_file()?, &registry, &credentials)? {
        Stored::File(path) => eprintln!(
            "Credentials for {registry} saved in {} (readable by you only; base64, not encrypted).",
            path.display()
        ),
        Stored::Helper(helper) => {
            eprintln!("Credentials for {registry} saved with docker-credential-{helper}.")
        }
    }
    println!("Login Succeeded");
    Ok(())
}

/// `forge logout`.
pub fn logout(args: &LogoutArgs) -> Result<(), Failure> {
    let registry = registry_of(args.server.as_deref());
    if auth::erase(&auth_file()?, &registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    // docker's and podman's files are theirs: say if they still give some.
    let mut others: Vec<_> = auth::docker_config_file().into_iter().collect();
    others.extend(auth::podman_auth_files());
    if let Ok(Some(found)) = Keychain::with_files(others).lookup(&registry) {
        eprintln!(
            "note: credentials for {registry} (user `{}`, {}) are still used; forge does not change docker's or podman's files (`docker logout {registry}`, `podman logout {registry}`)",
            found.credentials.username, found.origin
        );
    }
    Ok(())
}
