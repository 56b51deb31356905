//! Image types shared by the image store and the container runtime.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An image that is present locally, with its layers extracted and ready to stack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The reference the image was asked for by, e.g. `docker.io/library/busybox:1.36`.
    pub reference: String,
    /// Content id of the image (the config digest).
    pub id: String,
    /// Extracted layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
    /// The image's runtime defaults.
    pub config: ImageConfig,
}

/// The part of an OCI image config that decides how a container starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint` of the image.
    pub entrypoint: Vec<String>,
    /// `Cmd` of the image.
    pub cmd: Vec<String>,
    /// `Env` of the image, each `K=V`.
    pub env: Vec<String>,
    /// `WorkingDir` of the image, if set.
    pub working_dir: Option<String>,
    /// `User` of the image, if set (`uid`, `uid:gid`, or names).
    pub user: Option<String>,
}
