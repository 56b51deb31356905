//! Our own `index.json`: which references name which images, and what each image is made of.
//!
//! It is replaced atomically (temporary file, fsync, rename) under the store's `flock`, so
//! readers in other processes see either the old or the new index and need no lock.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::blob::{read_limited, Digest};
use super::{ImageConfig, ImageError};

/// The index is read whole on every lookup; this bounds a corrupt or hostile one.
const INDEX_LIMIT: u64 = 64 << 20;
const INDEX_VERSION: u32 = 1;

/// The on-disk index. Maps are ordered so the file is stable.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub version: u32,
    /// Image id (config digest) → image.
    pub images: BTreeMap<Digest, ImageRecord>,
    /// Normalized reference → image id.
    pub tags: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub manifest: Option<Digest>,
    pub config: Digest,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    pub created: Option<String>,
    pub image: ImageConfig,
    /// When this store last recorded the image (import or pull), ms since the epoch on
    /// this node's clock. `None` in stores written before garbage collection: the first
    /// collection pass stamps it, as kubelet counts from when it first saw an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_ms: Option<u64>,
    /// When a collection pass last found a container of this node using the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    /// Blob digest, possibly of compressed content.
    pub digest: Digest,
    /// Digest of the uncompressed tar; names the extracted directory.
    pub diff_id: Digest,
    pub size: u64,
}

impl ImageRecord {
    /// Bytes of layer blobs as stored (compressed if they were imported compressed).
    pub(crate) fn size(&self) -> u64 {
        self.layers.iter().map(|layer| layer.size).sum()
    }
}

impl Index {
    /// Reads the index at `path`; a missing file is an empty store.
    pub(crate) fn load(path: &Path) -> Result<Index, ImageError> {
        if !path.exists() {
            return Ok(Index { version: INDEX_VERSION, ..Index::default() });
        }
        let data = read_limited(path, INDEX_LIMIT, "image index")?;
        let index: Index = serde_json::from_slice(&data).map_err(|source| ImageError::Json {
            path: path.to_path_buf(),
            what: "image index".to_owned(),
            source,
        })?;
        if index.version != INDEX_VERSION {
            return Err(ImageError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "image index version {} is not the supported version {INDEX_VERSION}",
                    index.version
                ),
            });
        }
        Ok(index)
    }

    /// Replaces the index at `path` atomically. The caller holds the store lock.
    pub(crate) fn save(&self, path: &Path) -> Result<(), ImageError> {
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(|source| ImageError::Json {
            path: path.to_path_buf(),
            what: "image index".to_owned(),
            source,
        })?;
        let mut file = File::create(&tmp).map_err(ImageError::io("creating", &tmp))?;
        file.write_all(&data).and_then(|()| file.sync_all()).map_err(ImageError::io("writing", &tmp))?;
        fs::rename(&tmp, path).map_err(ImageError::io("renaming into", path))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|dir| dir.sync_all()).map_err(ImageError::io("syncing", dir))?;
        }
        Ok(())
    }

    /// Tags that point at `id`.
    pub(crate) fn tags_of<'a>(&'a self, id: &'a Digest) -> impl Iterator<Item = &'a String> + 'a {
        self.tags.iter().filter(move |(_, target)| *target == id).map(|(tag, _)| tag)
    }
}

/// An exclusive `flock` on the store's lock file, released on drop.
///
/// `flock` locks belong to the open file description, so this also excludes other threads
/// of the same process that opened the store separately.
pub(crate) struct StoreLock {
    _lock: Flock<File>,
}

impl StoreLock {
    /// Blocks until the lock at `path` is ours.
    pub(crate) fn acquire(path: &Path) -> Result<StoreLock, ImageError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(ImageError::io("opening", path))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| ImageError::io("locking", path)(errno.into()))?;
        Ok(StoreLock { _lock: lock })
    }
}
