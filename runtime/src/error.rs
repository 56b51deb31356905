//! The error type of the container runtime.

use std::io;
use std::path::PathBuf;

use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::OciSpecError;

/// Everything that can go wrong while running containers.
///
/// Each variant names the container (or pod) and, where there is one, the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A container or pod id is not usable as a path component. Nothing changed.
    #[error("invalid id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },

    /// A file or directory operation failed. Earlier steps of the same call may have
    /// left files behind; `remove_container` cleans them.
    #[error("{object}: cannot {action} {path}: {source}")]
    Io {
        object: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The process could not become a child subreaper. Nothing changed.
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] nix::Error),

    /// Neither the spec nor the image says what to run. Nothing changed.
    #[error("container {id}: no command: neither the spec nor image {image} has an entrypoint or cmd")]
    NoCommand { id: String, image: String },

    /// The image's `User` cannot be resolved to numeric ids. Nothing changed.
    #[error("container {id}: cannot resolve user {user:?}: {reason}")]
    User { id: String, user: String, reason: String },

    /// The OCI runtime spec could not be built. Nothing changed.
    #[error("container {id}: cannot build the oci spec: {source}")]
    Spec {
        id: String,
        #[source]
        source: Box<OciSpecError>,
    },

    /// The helper process could not be started or died without an answer.
    #[error("{object}: cannot run helper {path}: {source}")]
    HelperSpawn {
        object: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The helper process reported a failure; `message` is its stderr. The helper
    /// deletes a half-created container itself, but the bundle stays until `remove_container`.
    #[error("{object}: helper failed: {message}")]
    Helper { object: String, message: String },

    /// A libcontainer operation on existing container state failed.
    #[error("container {id}: {action} failed: {source}")]
    Libcontainer {
        id: String,
        action: &'static str,
        #[source]
        source: Box<LibcontainerError>,
    },

    /// `run_container` was asked to start a container whose process still runs. Nothing changed.
    #[error("container {id} is already running as pid {pid}")]
    AlreadyRunning { id: String, pid: i32 },

    /// The container did not exit even after SIGKILL. The signal was sent.
    #[error("container {id}: pid {pid} still runs after sigkill")]
    StopTimeout { id: String, pid: i32 },

    /// `exec` could not start the process. Nothing runs.
    #[error("container {id}: exec failed: {message}")]
    Exec { id: String, message: String },

    /// An exec or exec probe was asked of a container whose process does not run
    /// (`state` is e.g. `stopped` or `missing`). Nothing runs.
    #[error("container {id} is not running: it is {state}")]
    NotRunning { id: String, state: String },

    /// A network command failed; `command` is what ran and `message` its stderr (or the
    /// system error). Earlier steps of the same call may have taken effect; every network
    /// call is idempotent, so repeating it finishes the job.
    #[error("{object}: {command}: {message}")]
    Net { object: String, command: String, message: String },

    /// A network setting cannot be used (bad name, prefix, duplicate rule). Nothing changed.
    #[error("{object}: {reason}")]
    InvalidNet { object: String, reason: String },

    /// The container's rootfs is still mounted, so its directories were kept.
    #[error("container {id}: rootfs {path} is still mounted")]
    StillMounted { id: String, path: PathBuf },
}

impl Error {
    pub(crate) fn io(
        object: impl Into<String>,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Error {
        Error::Io { object: object.into(), action, path: path.into(), source }
    }
}

/// Checks that `id` is safe as a single path component and as a cgroup name.
pub(crate) fn validate_id(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        Some("empty")
    } else if id.len() > 128 {
        Some("longer than 128 bytes")
    } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        Some("only ascii letters, digits, '-', '_' and '.' are allowed")
    } else if !id.as_bytes()[0].is_ascii_alphanumeric() {
        Some("must start with a letter or digit")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidId { id: id.to_owned(), reason }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("web-1.abc_2").is_ok());
        for bad in ["", ".", "..", "-x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
