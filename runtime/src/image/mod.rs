//! Local content-addressed image store: imports OCI layouts and `docker save` archives,
//! keeps verified blobs and extracted layers, and resolves references to layer stacks.

mod blob;
mod collect;
mod error;
pub mod gc;
mod index;
mod layout;
mod peers;
mod pull;
#[cfg(test)]
mod pull_tests;
mod reference;
mod source;
mod store;
#[cfg(test)]
mod tests;
mod types;
mod unpack;

pub use blob::{Digest, DigestHasher};
pub use error::ImageError;
pub use peers::{BlobStream, Distribution, PeerBlobs, PeerFuture};
pub use pull::{ProgressSnapshot, PullOptions, PullProgress, PullSecret};
pub use reference::{parse_image_id, Reference};
pub use store::{ImageStore, ImageSummary};
pub use types::*;
