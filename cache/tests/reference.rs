//! Docker reference grammar and normalization.

use forge_cache::reference::Reference;

const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// (input, registry, repository, tag, has digest, full form, familiar form)
type Case = (
    String,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
    String,
    String,
);

#[test]
fn normalizes_like_docker() {
    let d = DIGEST;
    let cases: Vec<Case> = vec![
        (
            "ubuntu",
            "docker.io",
            "library/ubuntu",
            Some("latest"),
            false,
            "docker.io/library/ubuntu:latest".into(),
            "ubuntu:latest".into(),
        ),
        (
            "ubuntu:22.04",
            "docker.io",
            "library/ubuntu",
            Some("22.04"),
            false,
            "docker.io/library/ubuntu:22.04".into(),
            "ubuntu:22.04".into(),
        ),
        (
            "library/ubuntu",
            "docker.io",
            "library/ubuntu",
            Some("latest"),
            false,
            "docker.io/library/ubuntu:latest".into(),
            "ubuntu:latest".into(),
        ),
        (
            "docker.io/ubuntu",
            "docker.io",
            "library/ubuntu",
            Some("latest"),
            false,
            "docker.io/library/ubuntu:latest".into(),
            "ubuntu:latest".into(),
        ),
        (
            "index.docker.io/library/ubuntu:x",
            "docker.io",
            "library/ubuntu",
            Some("x"),
            false,
            "docker.io/library/ubuntu:x".into(),
            "ubuntu:x".into(),
        ),
        (
            "user/app",
            "docker.io",
            "user/app",
            Some("latest"),
            false,
            "docker.io/user/app:latest".into(),
            "user/app:latest".into(),
        ),
        (
            "library/a/b",
            "docker.io",
            "library/a/b",
            Some("latest"),
            false,
            "docker.io/library/a/b:latest".into(),
            "library/a/b:latest".into(),
        ),
        (
            "localhost:5000/a/b:t",
            "localhost:5000",
            "a/b",
            Some("t"),
            false,
            "localhost:5000/a/b:t".into(),
            "localhost:5000/a/b:t".into(),
        ),
        (
            "localhost/x",
            "localhost",
            "x",
            Some("latest"),
            false,
            "localhost/x:latest".into(),
            "localhost/x:latest".into(),
        ),
        (
            "127.0.0.1:5000/x",
            "127.0.0.1:5000",
            "x",
            Some("latest"),
            false,
            "127.0.0.1:5000/x:latest".into(),
            "127.0.0.1:5000/x:latest".into(),
        ),
        (
            "[::1]:5000/x:v1",
            "[::1]:5000",
            "x",
            Some("v1"),
            false,
            "[::1]:5000/x:v1".into(),
            "[::1]:5000/x:v1".into(),
        ),
        (
            "registry:5000/path",
            "registry:5000",
            "path",
            Some("latest"),
            false,
            "registry:5000/path:latest".into(),
            "registry:5000/path:latest".into(),
        ),
        (
            "name:tag",
            "docker.io",
            "library/name",
            Some("tag"),
            false,
            "docker.io/library/name:tag".into(),
            "name:tag".into(),
        ),
        (
            "ghcr.io/org/app:1.2.3",
            "ghcr.io",
            "org/app",
            Some("1.2.3"),
            false,
            "ghcr.io/org/app:1.2.3".into(),
            "ghcr.io/org/app:1.2.3".into(),
        ),
        (
            "Registry/x",
            "Registry",
            "x",
            Some("latest"),
            false,
            "Registry/x:latest".into(),
            "Registry/x:latest".into(),
        ),
        (
            "x/a_b__c.d-e---f",
            "docker.io",
            "x/a_b__c.d-e---f",
            Some("latest"),
            false,
            "docker.io/x/a_b__c.d-e---f:latest".into(),
            "x/a_b__c.d-e---f:latest".into(),
        ),
        (
            &format!("example.com/a@{d}"),
            "example.com",
            "a",
            None,
            true,
            format!("example.com/a@{d}"),
            format!("example.com/a@{d}"),
        ),
        (
            &format!("a:b@{d}"),
            "docker.io",
            "library/a",
            Some("b"),
            true,
            format!("docker.io/library/a:b@{d}"),
            format!("a:b@{d}"),
        ),
        (
            &format!("ubuntu@{d}"),
            "docker.io",
            "library/ubuntu",
            None,
            true,
            format!("docker.io/library/ubuntu@{d}"),
            format!("ubuntu@{d}"),
        ),
    ]
    .into_iter()
    .map(|(i, r, p, t, h, f, s)| (i.to_string(), r, p, t, h, f, s))
    .collect();
    for (input, registry, repository, tag, has_digest, full, familiar) in cases {
        let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.registry(), registry, "{input}");
        assert_eq!(r.repository(), repository, "{input}");
        assert_eq!(r.tag(), tag, "{input}");
        assert_eq!(r.digest().is_some(), has_digest, "{input}");
        assert_eq!(r.to_string(), full, "{input}");
        assert_eq!(r.familiar(), familiar, "{input}");
        // Both forms parse back to the same reference.
        assert_eq!(
            Reference::parse(&full).ok().as_ref(),
            Some(&r),
            "{input} full"
        );
        assert_eq!(
            Reference::parse(&familiar).ok().as_ref(),
            Some(&r),
            "{input} familiar"
        );
    }
}

#[test]
fn rejects_what_docker_rejects() {
    let too_long_name = format!("a/{}", "b".repeat(254));
    let too_long_tag = format!("a:{}", "t".repeat(129));
    let id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for bad in [
        "",
        ":tag",
        "Ubuntu",
        "ubuntu/Foo",
        "docker.io/Library/ubuntu",
        "a:",
        "a:-x",
        "a:.x",
        "a@sha256:00",
        "a@",
        "a//b",
        "/a",
        "a/",
        "a..b",
        "a___b",
        "-a",
        "a-",
        "a b",
        "exa_mple.com/a",
        "a_b.c/d", // a `.` makes the first component a registry, and `_` is no host
        "host:port/a",
        too_long_name.as_str(),
        too_long_tag.as_str(),
        id,
    ] {
        assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
    }
    // Just under the limits is fine.
    assert!(Reference::parse(&format!("a/{}", "b".repeat(253))).is_ok());
    assert!(Reference::parse(&format!("a:{}", "t".repeat(128))).is_ok());
}

#[test]
fn errors_name_the_reference() {
    let err = Reference::parse("Ubuntu").expect_err("uppercase");
    assert_eq!(
        err.to_string(),
        "invalid reference `Ubuntu`: the repository name must be lowercase"
    );
}

#[test]
fn accessors() {
    let r = Reference::parse("ubuntu").expect("valid");
    assert_eq!(r.name(), "docker.io/library/ubuntu");
    assert_eq!(r.tagged_name(), "docker.io/library/ubuntu:latest");
    assert_eq!(r.repository_familiar(), "ubuntu");
    assert_eq!(r.tag_or_latest(), "latest");
    let pinned = Reference::parse(&format!("ubuntu@{DIGEST}")).expect("valid");
    assert_eq!(pinned.tag(), None);
    assert_eq!(pinned.tag_or_latest(), "latest");
    assert_eq!(pinned.tagged_name(), "docker.io/library/ubuntu:latest");
    let other = r.with_tag("22.04").expect("valid tag");
    assert_eq!(other.familiar(), "ubuntu:22.04");
    assert!(r.with_tag("-bad").is_err());
    let q = Reference::parse("quay.io/library/x").expect("valid");
    assert_eq!(q.repository_familiar(), "quay.io/library/x");
}
