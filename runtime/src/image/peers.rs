//! Blobs from other nodes: the interface a pull uses to find and fetch blobs that peers
//! hold, and the store's side of serving them. The runtime knows nothing of the cluster:
//! the node implements [`PeerBlobs`] over its QUIC connections and gossip.

use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

use super::blob::{read_limited, Digest};
use super::store::ImageStore;
use super::ImageError;

/// Where a pull takes blobs from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distribution {
    /// Only the registry, as a plain container runtime does.
    RegistryOnly,
    /// Peers that hold a blob first, the registry for the rest. A tag is resolved at the
    /// registry (its truth) unless the registry cannot be reached, then at a peer.
    #[default]
    PeersFirst,
    /// Only peers: for air-gapped fleets. The registry is never contacted; a blob no live
    /// peer holds fails the pull.
    PeersOnly,
}

impl FromStr for Distribution {
    type Err = String;
    fn from_str(s: &str) -> Result<Distribution, String> {
        match s {
            "registry-only" => Ok(Distribution::RegistryOnly),
            "peers-first" => Ok(Distribution::PeersFirst),
            "peers-only" => Ok(Distribution::PeersOnly),
            other => Err(format!("{other:?}: expected registry-only, peers-first or peers-only")),
        }
    }
}

impl std::fmt::Display for Distribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Distribution::RegistryOnly => "registry-only",
            Distribution::PeersFirst => "peers-first",
            Distribution::PeersOnly => "peers-only",
        })
    }
}

/// The rest of a blob, as a peer sends it.
pub type BlobStream = Pin<Box<dyn AsyncRead + Send>>;
/// A fetch from a peer; the error is a message for logs and pull errors.
pub type PeerFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// The cluster as a pull sees it: who holds or fetches which blob, and fetching from them.
pub trait PeerBlobs: Send + Sync {
    /// Live peers whose advertisement says they hold `digest`, in the order to ask them.
    fn holders(&self, digest: &Digest) -> Vec<String>;
    /// Whether a live peer says it is fetching `digest` right now.
    fn fetched_elsewhere(&self, digest: &Digest) -> bool;
    /// This node's place among the live nodes for `digest` (0 = first), the same on every
    /// node: when no one holds a blob, the first goes to the registry at once and the
    /// others wait a little per place, so that one download serves the fleet.
    fn rank(&self, digest: &Digest) -> usize;
    /// Every live peer, for asking which manifest a tag names.
    fn peers(&self) -> Vec<String>;
    /// Tells the cluster that this node starts (`true`) or stops fetching `digest`.
    fn set_fetching(&self, digest: &Digest, fetching: bool);
    /// Tells the cluster that a blob was verified into the store.
    fn stored(&self);
    /// Asks `peer` for the blob `digest` from byte `offset`: its whole size and a stream of
    /// the rest, or `None` when the peer does not hold it.
    fn fetch_blob(
        &self,
        peer: &str,
        digest: &Digest,
        offset: u64,
    ) -> PeerFuture<'_, Option<(u64, BlobStream)>>;
    /// Asks `peer` for the manifest its store records for the tag `reference`.
    fn fetch_manifest(&self, peer: &str, reference: &str) -> PeerFuture<'_, Option<Vec<u8>>>;
}

impl ImageStore {
    /// Every blob in the store. Each entered it only after it hashed to its name.
    pub fn blob_digests(&self) -> Result<Vec<Digest>, ImageError> {
        let dir = self.blobs.dir();
        let entries = std::fs::read_dir(dir).map_err(ImageError::io("reading", dir))?;
        let mut digests = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("reading", dir))?;
            if let Ok(digest) = Digest::parse(&format!("sha256:{}", entry.file_name().to_string_lossy())) {
                digests.push(digest);
            }
        }
        Ok(digests)
    }

    /// Opens the blob `digest` for serving, with its length; `None` when the store lacks
    /// it. The caller hashes what it sends (see `protocol::blob`): a file changed on disk
    /// since it was verified is caught then.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>, ImageError> {
        let path = self.blobs.path(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("opening", &path)(e)),
        };
        let len = file.metadata().map_err(ImageError::io("reading", &path))?.len();
        Ok(Some((file, len)))
    }

    /// Removes a blob found not to match its digest (bit rot, tampering), so it is neither
    /// served nor used again; the next pull of its image fetches it anew.
    pub fn discard_corrupt_blob(&self, digest: &Digest) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let path = self.blobs.path(digest);
        tracing::error!(%digest, path = %path.display(), "blob does not match its digest; removing it");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// The bytes of the manifest the store records for the tag `reference`, if it holds the
    /// image and its manifest (a `docker save` import has none).
    pub fn manifest_bytes(&self, reference: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let Some(digest) = self.manifest_digest(reference)? else { return Ok(None) };
        let path = self.blobs.path(&digest);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = read_limited(&path, protocol_manifest_limit(), "manifest")?;
        // What is served must be what the digest says, like every blob.
        if Digest::of(&bytes) != digest {
            self.discard_corrupt_blob(&digest)?;
            return Ok(None);
        }
        Ok(Some(bytes))
    }
}

/// Manifests served to peers stay well under the peers' answer limit.
const fn protocol_manifest_limit() -> u64 {
    512 * 1024
}
