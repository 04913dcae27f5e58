//! The executor's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the executor.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ExecutorError {
    /// The run spec cannot be used as given.
    #[error("invalid run spec: {0}")]
    #[diagnostic(code(forge::executor::invalid_spec))]
    InvalidSpec(String),

    /// Serializing or parsing the run spec failed.
    #[error("run spec (de)serialization failed")]
    #[diagnostic(code(forge::executor::spec_codec))]
    SpecCodec(#[source] serde_json::Error),

    /// Spawning or talking to the sandbox process failed.
    #[error("sandbox process: {what}")]
    #[diagnostic(code(forge::executor::process))]
    Process {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file-system operation on a path failed.
    #[error("{what} {path}")]
    #[diagnostic(code(forge::executor::io))]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The sandbox could not be set up; the message comes from the sandbox process.
    #[error("setting up the RUN sandbox failed: {0}")]
    #[diagnostic(code(forge::executor::sandbox_setup))]
    SandboxSetup(String),

    /// The overlayfs mount of a RUN's rootfs failed (no overlayfs in the kernel,
    /// an upper dir on a file system overlayfs refuses, no permission in a user
    /// namespace). The build driver falls back to the copy snapshotter.
    #[error("overlayfs cannot be mounted: {0}")]
    #[diagnostic(
        code(forge::executor::overlay_unavailable),
        help("set FORGE_SNAPSHOTTER=copy to copy the image for each RUN instead (slower)")
    )]
    OverlayUnavailable(String),

    /// `FORGE_SNAPSHOTTER` names no snapshotter forge has.
    #[error("FORGE_SNAPSHOTTER={0:?} is not a snapshotter")]
    #[diagnostic(
        code(forge::executor::unknown_snapshotter),
        help("use `overlay` (the default: overlayfs, copying only where it cannot be mounted) or `copy`")
    )]
    UnknownSnapshotter(String),

    /// A system call failed.
    #[error("{what} failed")]
    #[diagnostic(code(forge::executor::syscall))]
    Sys {
        /// The call and its main argument.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The store failed (reading a base image, writing a layer, the step cache).
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(Box<forge_cache::CacheError>),

    /// An image in the store, or the build's plan, is not usable.
    #[error("{0}")]
    #[diagnostic(code(forge::executor::invalid_image))]
    InvalidImage(String),

    /// A step uses something forge cannot run yet.
    #[error("`{step}`: {what} is not supported yet")]
    #[diagnostic(
        code(forge::executor::unsupported),
        help("build this Dockerfile with BuildKit for now, or leave the step out")
    )]
    Unsupported {
        /// The step as written.
        step: String,
        /// The feature.
        what: String,
    },

    /// A `RUN --mount=type=secret,required` whose secret was not given.
    #[error("`{step}`: secret {id:?} not found")]
    #[diagnostic(
        code(forge::executor::missing_secret),
        help("pass it with `--secret id={id},src=FILE` or `--secret id={id},env=VARIABLE`")
    )]
    MissingSecret {
        /// The step as written.
        step: String,
        /// The secret's id.
        id: String,
    },

    /// A `RUN --mount` that cannot be set up (a bad secret, an unknown
    /// source).
    #[error("`{step}`: {message}")]
    #[diagnostic(code(forge::executor::bad_mount))]
    BadMount {
        /// The step as written.
        step: String,
        /// What is wrong.
        message: String,
    },

    /// A stage stopped because another one failed (never the error a build
    /// returns: the other stage's is).
    #[error("stopped: another stage of the build failed")]
    #[diagnostic(code(forge::executor::stopped))]
    Stopped,

    /// A COPY or ADD failed (a missing source, an unknown `--chown` name, an
    /// archive with an entry that would escape, a checksum mismatch).
    #[error("{0}")]
    #[diagnostic(code(forge::executor::file_action))]
    FileAction(String),

    /// A step would give the image more layers than overlayfs can stack.
    #[error("{step} would make the image's layer number {} but an image can have at most {max}", max + 1)]
    #[diagnostic(
        code(forge::executor::too_many_layers),
        help("merge RUN steps (`RUN a && b`) or use a multi-stage build to flatten the image")
    )]
    TooManyLayers {
        /// The step, `[n/N] RUN ...`.
        step: String,
        /// The limit.
        max: usize,
    },

    /// A RUN exited with a non-zero code.
    #[error(
        "{step} failed\n  command: {command}\n  exit code: {code}{}",
        render_tail(tail)
    )]
    #[diagnostic(
        code(forge::executor::run_failed),
        help("{}", last_good_help(last_good.as_deref(), container.as_deref()))
    )]
    RunFailed {
        /// The step, `[n/N] RUN ...`.
        step: String,
        /// The command as run.
        command: String,
        /// Its exit code (`128 + n` when killed by signal `n`).
        code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
        /// The image ID of the last step that succeeded.
        last_good: Option<String>,
        /// The working container holding what the command changed before it
        /// failed ([`crate::build::BuildOptions::keep_failed_run`]).
        container: Option<String>,
    },
}

fn render_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n  last output:");
    for line in tail {
        out.push_str("\n    | ");
        out.push_str(line);
    }
    out
}

fn last_good_help(last_good: Option<&str>, container: Option<&str>) -> String {
    let mut help = match last_good {
        Some(id) => {
            let short = id.strip_prefix("sha256:").unwrap_or(id);
            format!(
                "every step before it is cached; the last good step's image ID:\n{id}\n\
                 a shell there: forge run -it {} sh",
                short.get(..12).unwrap_or(short)
            )
        }
        None => "every step before it is cached".to_string(),
    };
    if let Some(name) = container {
        help.push_str(&format!(
            "\nwhat the command changed is in container {name}"
        ));
    }
    help
}
