//! Image distribution between nodes: the agent's part is advertising which blobs this
//! node holds (and fetches) in gossip; serving and fetching live in `cluster::blobs`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use runtime::image::PullProgress;
use tokio::sync::oneshot;

use super::Agent;
use crate::api::Response;

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

impl Agent {
    /// `peer image pull` through the agent: the pull runs in a task, as the agent's own
    /// pulls do, and answers with where the bytes came from.
    pub(super) fn pull_image(
        &mut self,
        reference: String,
        credentials: Option<PathBuf>,
        insecure_registries: Vec<String>,
        reply: oneshot::Sender<Response>,
    ) {
        let mut options = self.pull_options();
        if credentials.is_some() {
            options.credentials = credentials;
        }
        options.insecure_registries = insecure_registries;
        let progress = Arc::new(PullProgress::default());
        options.progress = Some(progress.clone());
        let images = self.images.clone();
        self.jobs.spawn(async move {
            let started = Instant::now();
            let resp = match images.pull(&reference, &options).await {
                Ok(image) => {
                    let p = progress.snapshot();
                    Response::Ok {
                        data: serde_json::json!({
                            "reference": image.reference.unwrap_or(reference),
                            "id": image.id,
                            "seconds": started.elapsed().as_secs_f64(),
                            "bytes": p.total,
                            "from_registry": p.from_registry,
                            "from_peers": p.from_peers,
                        }),
                    }
                }
                Err(e) => Response::Error { message: format!("pulling image {reference}: {e}") },
            };
            let _ = reply.send(resp);
        });
    }
}
