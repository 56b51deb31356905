//! Image distribution between nodes: the agent's part is advertising which blobs this
//! node holds (and fetches) in gossip; serving and fetching live in `cluster::blobs`.

use super::Agent;

impl Agent {
    /// Advertises the blobs of the image store and the ones pulls fetch now, when that
    /// changed. Reading the blob directory is one `readdir`.
    pub(super) async fn publish_blobs(&mut self) {
        match self.images.blob_digests() {
            Ok(held) => self.cluster.publish_blobs(&held).await,
            Err(e) => tracing::warn!("listing the image store's blobs: {e}"),
        }
    }
}
