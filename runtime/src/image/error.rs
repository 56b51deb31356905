//! The error type of the image store.

use std::io;
use std::path::{Path, PathBuf};

/// Why an image operation failed.
///
/// Import writes nothing visible before it succeeds: on any error the index is unchanged
/// and blobs or layers staged by the failed import are garbage-collected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image answers to the reference; nothing changed.
    #[error("image {reference} not found in the local store")]
    NotFound { reference: String },
    /// The reference is not a valid image reference or id; nothing changed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {digest:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest { digest: String },
    /// A blob's content does not hash to the digest it is stored or referenced under.
    #[error("blob {digest} does not match its digest: content hashes to {actual}")]
    DigestMismatch { digest: String, actual: String },
    /// A blob's length differs from the size its descriptor declares.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    /// An uncompressed layer does not hash to the diff id listed in the image config.
    #[error("layer {digest} does not match diff id {diff_id}: uncompressed content hashes to {actual}")]
    DiffIdMismatch { digest: String, diff_id: String, actual: String },
    /// A file the archive refers to is not in it.
    #[error("{source_path}: {what} is missing")]
    Missing { source_path: PathBuf, what: String },
    /// A JSON document is bigger than we are willing to read.
    #[error("{what} at {} is larger than the limit of {limit} bytes", path.display())]
    TooLarge { path: PathBuf, what: String, limit: u64 },
    /// A JSON document does not have the expected shape.
    #[error("{what} at {} is malformed: {source}", path.display())]
    Json { path: PathBuf, what: String, source: serde_json::Error },
    /// The input is not an OCI image layout or `docker save` archive we understand.
    #[error("{}: {reason}", path.display())]
    Format { path: PathBuf, reason: String },
    /// No manifest of an image index is for the host platform.
    #[error("image index {digest} has no manifest for {platform}")]
    NoPlatform { digest: String, platform: String },
    /// A layer archive is hostile or malformed; the partial extraction was discarded.
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    /// The registry refused the credentials (or their absence); nothing changed.
    #[error("registry {registry} refused the credentials for {repository}: 401 {detail}")]
    Unauthorized { registry: String, repository: String, detail: String },
    /// Talking to a registry failed; blobs already verified may stay until the next
    /// garbage collection, the index is unchanged.
    #[error("pulling {reference} from registry {registry}: {reason}")]
    Registry { registry: String, reference: String, reason: String },
    /// The credentials file cannot be used; nothing changed.
    #[error("credentials file {}: {reason}", path.display())]
    Credentials { path: PathBuf, reason: String },
    /// An image pull secret cannot be used; nothing changed.
    #[error("{what}: {reason}")]
    PullSecret { what: String, reason: String },
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
}

impl ImageError {
    /// Returns a closure that wraps an I/O error with what we were doing to which path.
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
        let path = path.to_path_buf();
        move |source| ImageError::Io { op, path, source }
    }
}
