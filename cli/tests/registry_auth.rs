//! `forge login`, `forge logout` and registries that want credentials: a
//! real docker-registry with htpasswd (Basic) auth, and one with `auth:
//! token` whose tokens come from an issuer this test runs, signing real
//! JWTs (RS256, the certificate in `x5c`) that the registry verifies.
//! Credentials come from forge's auth.json, docker's config.json, podman's
//! auth.json and a credential helper; the issuer's log shows one token per
//! scope per process.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::registry::{http_status, run_tool_bytes, Request, TestRegistry};
use common::{forge_cmd, ok, Fixture, TempDir};

const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

/// The user's files, all in a temp dir: forge's auth.json
/// (`XDG_CONFIG_HOME`), docker's config.json (`DOCKER_CONFIG`), podman's
/// (`REGISTRY_AUTH_FILE`), and a `bin/` put first on `PATH`.
struct Env {
    dir: TempDir,
}

impl Env {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(name);
        for sub in ["config", "docker", "run", "bin"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn forge_auth(&self) -> PathBuf {
        self.path("config/forge/auth.json")
    }

    fn docker_config(&self) -> PathBuf {
        self.path("docker/config.json")
    }

    fn podman_auth(&self) -> PathBuf {
        self.path("podman-auth.json")
    }

    /// `forge ARGS` with the store `home`, these files, and `stdin`.
    fn forge(&self, home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = forge_cmd(home, args);
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("XDG_CONFIG_HOME", self.path("config"))
            .env("DOCKER_CONFIG", self.path("docker"))
            .env("REGISTRY_AUTH_FILE", self.podman_auth())
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("PATH", format!("{}:{path}", self.path("bin").display()));
        match stdin {
            None => cmd.output().expect("forge runs"),
            Some(text) => {
                cmd.stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let mut child = cmd.spawn().expect("forge runs");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(text.as_bytes())
                    .expect("write stdin");
                child.wait_with_output().expect("forge runs")
            }
        }
    }

    fn login(&self, home: &Path, registry: &str, password: &str) -> Output {
        self.forge(
            home,
            &["login", "--password-stdin", "-u", USER, registry],
            Some(&format!("{password}\n")),
        )
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(out)
}

/// docker's `auth` value.
fn auth_value(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A fresh store (no images).
fn fresh(name: &str) -> TempDir {
    TempDir::new(name)
}

#[test]
fn htpasswd_login_logout_and_every_credentials_source() {
    let env = Env::new("auth-basic");
    let htpasswd = env.path("htpasswd");
    let line = run_tool_bytes("htpasswd", &["-Bbn", USER, PASSWORD]);
    std::fs::write(&htpasswd, line).expect("htpasswd file");
    let registry = TestRegistry::start_with(
        "htpasswd",
        &format!(
            "auth:\n  htpasswd:\n    realm: forge-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let addr = registry.addr.clone();
    let fx = Fixture::new("auth-basic");
    let home = fx.home.path();
    let name = format!("{addr}/team/app:1");
    ok(&env.forge(home, &["tag", "base:latest", &name], None));

    // No credentials: a clear 401.
    let err = failed(&env.forge(home, &["push", &name], None));
    assert!(err.contains(&format!("{addr} wants credentials")), "{err}");
    assert!(err.contains(&format!("forge login {addr}")), "{err}");

    // A wrong password is refused by login, and nothing is saved.
    let err = failed(&env.login(home, &addr, "wrong"));
    assert!(
        err.contains(&format!("{addr} refused the credentials of `{USER}`")),
        "{err}"
    );
    assert!(!env.forge_auth().exists());

    // The right one is checked, saved 0600 in docker's format.
    let out = ok(&env.login(home, &addr, PASSWORD));
    assert!(out.contains("Login Succeeded"), "{out}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.forge_auth()).expect("auth.json"))
            .expect("JSON");
    assert_eq!(
        saved["auths"][&addr]["auth"].as_str(),
        Some(auth_value(USER, PASSWORD).as_str()),
        "{saved}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.forge_auth())
            .expect("auth.json")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Push, pull and search with them.
    let mark = registry.mark();
    ok(&env.forge(home, &["push", &name], None));
    let pushed = registry.requests_since(mark);
    // Only the first requests (the two blobs' HEADs, side by side) went
    // without credentials; then Basic went with every request.
    let refused = pushed.iter().filter(|r| r.status == 401).count();
    assert!(
        (1..=2).contains(&refused),
        "{refused} requests refused: {pushed:#?}"
    );
    assert!(pushed.iter().any(|r| r.method == "PUT" && r.status == 201));
    let store = fresh("auth-basic-pull");
    let out = ok(&env.forge(store.path(), &["pull", &name], None));
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    let out = ok(&env.forge(store.path(), &["search", &format!("{addr}/team")], None));
    assert!(out.contains(&format!("{addr}/team/app")), "{out}");

    // Logout removes them; the registry wants them again.
    let out = ok(&env.forge(home, &["logout", &addr], None));
    assert!(
        out.contains(&format!("Removing login credentials for {addr}")),
        "{out}"
    );
    let text = std::fs::read_to_string(env.forge_auth()).expect("auth.json");
    assert!(!text.contains(&addr), "{text}");
    let out = ok(&env.forge(home, &["logout", &addr], None));
    assert!(out.contains(&format!("Not logged in to {addr}")), "{out}");
    let store = fresh("auth-basic-nologin");
    let err = failed(&env.forge(store.path(), &["pull", &name], None));
    assert!(err.contains("wants credentials"), "{err}");

    // docker's config.json (DOCKER_CONFIG).
    let entry = serde_json::json!({"auths": {&addr: {"auth": auth_value(USER, PASSWORD)}}});
    std::fs::write(env.docker_config(), entry.to_string()).expect("docker config");
    let store = fresh("auth-basic-docker");
    ok(&env.forge(store.path(), &["pull", &name], None));
    let out = env.forge(home, &["logout", &addr], None);
    assert!(
        stderr(&out).contains("are still used; forge does not change docker's"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(env.docker_config()).expect("rm");

    // podman's auth.json (REGISTRY_AUTH_FILE), with its user/password form
    // next to docker's `auth`.
    std::fs::write(env.podman_auth(), entry.to_string()).expect("podman auth");
    let store = fresh("auth-basic-podman");
    ok(&env.forge(store.path(), &["pull", &name], None));
    std::fs::remove_file(env.podman_auth()).expect("rm");

    // A credential helper named by docker's `credHelpers`: it answers
    // `get` from a file, as docker-credential-pass would from its store.
    let helper_dir = env.path("helper");
    std::fs::create_dir_all(&helper_dir).expect("mkdir");
    let helper = env.path("bin/docker-credential-testhelper");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n\
             # docker's credential-helper protocol, answered from {dir}/stored.json\n\
             input=$(cat)\n\
             echo \"$1 $input\" >> {dir}/calls.log\n\
             case \"$1\" in\n\
             get) if [ -f {dir}/stored.json ]; then cat {dir}/stored.json; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
             store) printf '%s' \"$input\" > {dir}/stored.json ;;\n\
             erase) if [ -f {dir}/stored.json ]; then rm {dir}/stored.json; else echo 'credentials not found in native keychain'; exit 1; fi ;;\n\
             *) exit 1 ;;\n\
             esac\n",
            dir = helper_dir.display()
        ),
    )
    .expect("helper");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(
        helper_dir.join("stored.json"),
        serde_json::json!({"ServerURL": &addr, "Username": USER, "Secret": PASSWORD}).to_string(),
    )
    .expect("helper's store");
    std::fs::write(
        env.docker_config(),
        serde_json::json!({"credHelpers": {&addr: "testhelper"}}).to_string(),
    )
    .expect("docker config");
    let store = fresh("auth-basic-helper");
    ok(&env.forge(store.path(), &["pull", &name], None));
    let calls = std::fs::read_to_string(helper_dir.join("calls.log")).expect("calls");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [format!("get {addr}")],
        "one `get` per process"
    );
    std::fs::remove_file(env.docker_config()).expect("rm");
    std::fs::remove_file(helper_dir.join("stored.json")).expect("rm");

    // forge's own file naming a `credsStore`: login stores through the
    // helper (nothing in the file), logout erases there.
    std::fs::write(env.forge_auth(), r#"{"credsStore": "testhelper"}"#).expect("auth.json");
    let out = ok(&env.login(home, &addr, PASSWORD));
    assert!(out.contains("Login Succeeded"), "{out}");
    assert!(stderr(&env.login(home, &addr, PASSWORD)).contains("docker-credential-testhelper"));
    let text = std::fs::read_to_string(env.forge_auth()).expect("auth.json");
    assert!(!text.contains("auths"), "{text}");
    let stored = std::fs::read_to_string(helper_dir.join("stored.json")).expect("stored");
    assert!(stored.contains(PASSWORD), "{stored}");
    let store = fresh("auth-basic-store");
    ok(&env.forge(store.path(), &["pull", &name], None));
    let out = ok(&env.forge(home, &["logout", &addr], None));
    assert!(out.contains("Removing login credentials"), "{out}");
    assert!(!helper_dir.join("stored.json").exists());
}

/// One token request the issuer answered (or refused).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenRequest {
    /// The Basic user, if the credentials were right.
    user: Option<String>,
    service: String,
    scopes: Vec<String>,
    /// Whether it carried a Bearer token (it never should).
    bearer: bool,
}

/// A token service: checks Basic credentials and answers
/// `{"token": JWT, "expires_in": 300}`, the JWT signed with `key` (RS256 by
/// `openssl dgst`) and its certificate in `x5c`. Repositories under
/// `locked/` get no access.
struct Issuer {
    addr: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    /// Every request, never emptied.
    history: Arc<Mutex<Vec<TokenRequest>>>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The JWT `access` entry of a scope (`repository:team/app:pull,push`).
fn access(scope: &str) -> serde_json::Value {
    let (kind, rest) = scope.split_once(':').unwrap_or((scope, ""));
    let (name, actions) = rest.rsplit_once(':').unwrap_or((rest, ""));
    let actions: Vec<&str> = if name.starts_with("locked/") {
        Vec::new()
    } else {
        actions.split(',').filter(|a| !a.is_empty()).collect()
    };
    serde_json::json!({"type": kind, "name": name, "actions": actions})
}

impl Issuer {
    fn start(listener: TcpListener, key: PathBuf, cert_der: Vec<u8>) -> Self {
        let addr = listener.local_addr().expect("addr").to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let history = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let all = Arc::clone(&history);
        let x5c = base64::engine::general_purpose::STANDARD.encode(&cert_der);
        std::thread::spawn(move || {
            let mut jti = 0u64;
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let mut service = String::new();
                let mut scopes = Vec::new();
                for pair in query.split('&') {
                    match pair.split_once('=') {
                        Some(("service", v)) => service = percent_decode(v),
                        Some(("scope", v)) => scopes.push(percent_decode(v)),
                        _ => {}
                    }
                }
                let authorization = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("authorization")
                        .then(|| value.trim().to_string())
                });
                let bearer = authorization
                    .as_deref()
                    .is_some_and(|a| a.starts_with("Bearer"));
                let user = authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Basic "))
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok())
                    .filter(|pair| *pair == format!("{USER}:{PASSWORD}"))
                    .map(|_| USER.to_string());
                let request = TokenRequest {
                    user: user.clone(),
                    service: service.clone(),
                    scopes: scopes.clone(),
                    bearer,
                };
                all.lock().expect("log").push(request.clone());
                log.lock().expect("log").push(request);
                let response = match user {
                    None => {
                        let body =
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
                        format!(
                            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    Some(user) => {
                        jti += 1;
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .expect("time")
                            .as_secs();
                        let header =
                            serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
                        let claims = serde_json::json!({
                            "iss": "test-issuer",
                            "sub": user,
                            "aud": "test-registry",
                            "exp": now + 300,
                            "nbf": now - 10,
                            "iat": now,
                            "jti": format!("forge-test-{jti}"),
                            "access": scopes.iter().map(|s| access(s)).collect::<Vec<_>>(),
                        });
                        let signing_input = format!(
                            "{}.{}",
                            b64url(header.to_string().as_bytes()),
                            b64url(claims.to_string().as_bytes())
                        );
                        let mut openssl = Command::new("openssl")
                            .args(["dgst", "-sha256", "-sign"])
                            .arg(&key)
                            .stdin(Stdio::piped())
                            .stdout(Stdio::piped())
                            .spawn()
                            .expect("openssl runs");
                        openssl
                            .stdin
                            .take()
                            .expect("stdin")
                            .write_all(signing_input.as_bytes())
                            .expect("sign");
                        let signature = openssl.wait_with_output().expect("openssl").stdout;
                        let jwt = format!("{signing_input}.{}", b64url(&signature));
                        let body = serde_json::json!({"token": jwt, "expires_in": 300}).to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        Self {
            addr,
            requests,
            history,
        }
    }

    /// The requests so far; `take` empties the log.
    fn take(&self) -> Vec<TokenRequest> {
        std::mem::take(&mut *self.requests.lock().expect("log"))
    }
}

fn scopes_of(requests: &[TokenRequest]) -> Vec<Vec<String>> {
    requests.iter().map(|r| r.scopes.clone()).collect()
}

fn statuses(requests: &[Request]) -> Vec<u16> {
    requests.iter().map(|r| r.status).collect()
}

#[test]
fn token_auth_with_a_real_jwt_issuer() {
    let env = Env::new("auth-token");
    let key = env.path("key.pem");
    let cert = env.path("cert.pem");
    run_tool_bytes(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().expect("utf-8"),
            "-out",
            cert.to_str().expect("utf-8"),
            "-days",
            "2",
            "-subj",
            "/CN=test-issuer",
        ],
    );
    let der = run_tool_bytes(
        "openssl",
        &[
            "x509",
            "-in",
            cert.to_str().expect("utf-8"),
            "-outform",
            "DER",
        ],
    );
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = Issuer::start(listener, key, der);
    let registry = TestRegistry::start_with(
        "token",
        &format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: test-registry\n    issuer: test-issuer\n    rootcertbundle: {}\n",
            issuer.addr,
            cert.display()
        ),
    );
    let addr = registry.addr.clone();
    let fx = Fixture::new("auth-token");
    let home = fx.home.path();
    let name = format!("{addr}/team/app:1");
    ok(&env.forge(home, &["tag", "base:latest", &name], None));

    // Nothing gets in without a token.
    assert_eq!(
        http_status(&addr, "/v2/team/app/tags/list"),
        Some(401),
        "the registry checks tokens"
    );
    let err = failed(&env.forge(home, &["push", &name], None));
    assert!(err.contains(&format!("{addr} wants credentials")), "{err}");
    assert!(
        issuer.take().iter().all(|r| r.user.is_none()),
        "asked anonymously"
    );
    let err = failed(&env.login(home, &addr, "wrong"));
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        err.contains(&format!("the token service http://{}/token", issuer.addr)),
        "{err}"
    );
    issuer.take();

    // Login: a token for no scope, asked for with the credentials.
    let mark = registry.mark();
    ok(&env.login(home, &addr, PASSWORD));
    let asked = issuer.take();
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(asked[0].user.as_deref(), Some(USER));
    assert_eq!(asked[0].service, "test-registry");
    assert!(asked[0].scopes.is_empty(), "{asked:#?}");
    assert_eq!(statuses(&registry.requests_since(mark)), [401, 200]);

    // A push: one token for the push scope, used by every request after
    // the first ones (the two blobs' HEADs, side by side).
    let mark = registry.mark();
    let out = ok(&env.forge(home, &["push", &name], None));
    assert!(out.contains("1: digest: sha256:"), "{out}");
    let asked = issuer.take();
    assert_eq!(
        scopes_of(&asked),
        [["repository:team/app:pull,push"]],
        "{asked:#?}"
    );
    let pushed = registry.requests_since(mark);
    let refused = pushed.iter().filter(|r| r.status == 401).count();
    assert!((1..=2).contains(&refused), "{pushed:#?}");
    assert!(
        pushed[refused..]
            .iter()
            .all(|r| r.status < 400 || r.status == 404),
        "after the first 401s every request had its token: {pushed:#?}"
    );

    // A second tag, and a pull of every tag of the repository in a fresh
    // store: one token for the pull scope serves the tag list and both
    // pulls (the second pull asks for no new token).
    let two = format!("{addr}/team/app:2");
    ok(&env.forge(home, &["tag", "base:latest", &two], None));
    ok(&env.forge(home, &["push", &two], None));
    issuer.take();
    let store = fresh("auth-token-pull");
    let mark = registry.mark();
    let out = ok(&env.forge(
        store.path(),
        &["pull", "-a", &format!("{addr}/team/app")],
        None,
    ));
    assert_eq!(out.matches("Digest: sha256:").count(), 2, "{out}");
    let asked = issuer.take();
    assert_eq!(
        scopes_of(&asked),
        [["repository:team/app:pull"]],
        "{asked:#?}"
    );
    let pulled = registry.requests_since(mark);
    assert_eq!(
        pulled.iter().filter(|r| r.status == 401).count(),
        1,
        "only the first request went without a token: {pulled:#?}"
    );
    assert!(pulled[1..].iter().all(|r| r.status == 200), "{pulled:#?}");

    // Search: the catalog's scope, then the repository's.
    let out = ok(&env.forge(store.path(), &["search", &format!("{addr}/team")], None));
    assert!(out.contains(&format!("{addr}/team/app")), "{out}");
    assert_eq!(
        scopes_of(&issuer.take()),
        [vec!["registry:catalog:*"], vec!["repository:team/app:pull"]]
    );

    // A mount asks for the other repository's pull scope too.
    let other = format!("{addr}/team/other:1");
    ok(&env.forge(home, &["tag", "base:latest", &other], None));
    let mark = registry.mark();
    let out = ok(&env.forge(home, &["push", &other], None));
    assert!(out.contains("Mounted from team/app"), "{out}");
    let scopes = scopes_of(&issuer.take());
    assert!(
        scopes.contains(&vec![
            "repository:team/other:pull,push".to_string(),
            "repository:team/app:pull".to_string()
        ]),
        "{scopes:#?}"
    );
    assert!(registry
        .requests_since(mark)
        .iter()
        .any(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201));

    // A mount from a repository the token does not open is refused; the
    // blob is uploaded instead.
    let locked_home = fresh("auth-token-locked");
    ok(&env.forge(
        locked_home.path(),
        &[
            "import",
            common::rootfs().to_str().expect("utf-8"),
            &format!("{addr}/locked/base:1"),
        ],
        None,
    ));
    let target = format!("{addr}/team/unlocked:1");
    ok(&env.forge(
        locked_home.path(),
        &["tag", &format!("{addr}/locked/base:1"), &target],
        None,
    ));
    let mark = registry.mark();
    let out = ok(&env.forge(locked_home.path(), &["push", &target], None));
    assert!(!out.contains("Mounted"), "{out}");
    let log = registry.requests_since(mark);
    assert!(
        log.iter()
            .any(|r| r.method == "POST" && r.path.contains("from=locked") && r.status == 401),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/") && r.status == 201),
        "{log:#?}"
    );
    issuer.take();

    // The issuer only ever saw Basic credentials (never a registry's
    // token), and every request the registry answered 2xx came after a
    // token was in hand: anonymous requests are refused.
    let all = registry.requests();
    assert!(all.iter().all(|r| r.status != 403), "{all:#?}");
    assert_eq!(http_status(&addr, "/v2/"), Some(401));
    let out = ok(&env.forge(home, &["logout", &addr], None));
    assert!(out.contains("Removing login credentials"), "{out}");
    let store = fresh("auth-token-after");
    let err = failed(&env.forge(store.path(), &["pull", &name], None));
    assert!(err.contains("wants credentials"), "{err}");
    let history = issuer.history.lock().expect("log").clone();
    assert!(history.iter().all(|r| !r.bearer), "{history:#?}");
}
