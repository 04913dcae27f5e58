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
}
