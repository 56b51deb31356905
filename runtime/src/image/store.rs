//! `ImageStore`: import, list, remove and resolve images in a directory on disk.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::blob::{unique_suffix, Blobs, Digest};
use super::index::{ImageRecord, Index, LayerRecord, StoreLock};
use super::layout::{read_images, FoundImage};
use super::reference::{parse_image_id, Reference};
use super::source::Source;
use super::unpack::unpack_layer;
use super::{ImageError, ResolvedImage};

/// A local content-addressed image store.
///
/// Layout of `dir`: `blobs/sha256/<hex>` (verified blobs), `layers/<diff-id-hex>/`
/// (extracted layers, overlayfs lower dirs), `index.json` (see `index.rs`), `lock` (held
/// with `flock` by writers), `tmp/` (staging on the same file system, emptied by writers).
/// Several processes may use one store: writers serialize on the lock and readers re-read
/// the index on every call.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub(super) dir: PathBuf,
    pub(super) blobs: Blobs,
}

/// One line of `peer image ls`: a reference (or none) and the image it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// Normalized reference; `None` for an image known by id only.
    pub reference: Option<String>,
    /// Image id, the config digest `sha256:…`.
    pub id: String,
    /// Bytes of the image's layer blobs as stored.
    pub size: u64,
    /// The `created` timestamp from the image config, RFC 3339, if it has one.
    pub created: Option<String>,
    /// When this store last recorded the image (ms since the epoch), if known.
    pub added_ms: Option<u64>,
    /// When a container of this node last used it, as the agent's collection passes saw.
    pub last_used_ms: Option<u64>,
}

impl ImageStore {
    /// Opens the store in `dir`, creating its directories if needed.
    pub fn open(dir: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            dir: dir.to_path_buf(),
            blobs: Blobs::new(dir.join("blobs/sha256"), dir.join("tmp")),
        };
        // Layers hold whole root file systems with set-uid files; only root walks into them.
        let mut private = fs::DirBuilder::new();
        private.recursive(true).mode(0o700);
        for sub in ["blobs/sha256", "layers", "tmp"] {
            let path = dir.join(sub);
            private.create(&path).map_err(ImageError::io("creating", &path))?;
        }
        Ok(store)
    }

    /// Imports every image in an OCI image layout (directory or tar) or a `docker save`
    /// archive, gzipped or not, and returns one summary per reference it now carries.
    pub fn import(&self, path: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let _lock = self.lock()?;
        let result = self.import_locked(path);
        // Whether or not the import worked, drop what it staged but did not keep.
        if let Err(err) = self.collect_garbage() {
            tracing::warn!(%err, "image store garbage collection failed");
        }
        result
    }

    fn import_locked(&self, path: &Path) -> Result<Vec<ImageSummary>, ImageError> {
        let source = Source::open(path, &self.blobs)?;
        let found = read_images(&source, &self.blobs)?;
        for image in &found {
            for layer in &image.layers {
                self.unpack(&layer.digest, &layer.diff_id)?;
            }
        }
        self.record(found)
    }

    /// Adds images whose blobs are verified in the store and whose layers are extracted to
    /// the index, tagging each with its names. The caller holds the lock.
    pub(super) fn record(&self, found: Vec<FoundImage>) -> Result<Vec<ImageSummary>, ImageError> {
        let mut index = self.load_index()?;
        let mut summaries = Vec::new();
        let now = now_ms();
        for image in found {
            let FoundImage { names, manifest, config, layers, created, image } = image;
            // Recording an image again (a re-import or re-pull) keeps its stamps: it is
            // the same content, first seen then (kubelet's "first detected").
            let previous = index.images.get(&config);
            let added_ms = previous.and_then(|r| r.added_ms).or(Some(now));
            let last_used_ms = previous.and_then(|r| r.last_used_ms);
            let record = ImageRecord {
                manifest,
                config: config.clone(),
                layers: layers
                    .into_iter()
                    .map(|l| LayerRecord { digest: l.digest, diff_id: l.diff_id, size: l.size })
                    .collect(),
                created,
                image,
                added_ms,
                last_used_ms,
            };
            if names.is_empty() {
                summaries.push(summary(None, &record));
            }
            for name in names {
                summaries.push(summary(Some(name.clone()), &record));
                index.tags.insert(name, config.clone());
            }
            index.images.insert(config, record);
        }
        index.save(&self.index_path())?;
        Ok(summaries)
    }

    /// Every image with each of its references; an untagged image appears once without one.
    pub fn list(&self) -> Result<Vec<ImageSummary>, ImageError> {
        let index = self.load_index()?;
        let mut summaries = Vec::new();
        for (id, record) in &index.images {
            let before = summaries.len();
            for tag in index.tags_of(id) {
                summaries.push(summary(Some(tag.clone()), record));
            }
            if summaries.len() == before {
                summaries.push(summary(None, record));
            }
        }
        summaries.sort_by(|a, b| (&a.reference, &a.id).cmp(&(&b.reference, &b.id)));
        Ok(summaries)
    }

    /// Removes a tag, or with an id or digest reference the whole image; an image left
    /// without tags is deleted, then blobs and layers no image uses are deleted.
    ///
    /// Layers still mounted by running containers are the caller's concern.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        let (id, tag) = lookup(&index, reference)?;
        match tag {
            Some(tag) => {
                index.tags.remove(&tag);
                if index.tags_of(&id).next().is_none() {
                    index.images.remove(&id);
                }
            }
            None => {
                index.tags.retain(|_, target| *target != id);
                index.images.remove(&id);
            }
        }
        index.save(&self.index_path())?;
        self.collect_garbage()
    }

    /// Looks up an image by reference, id or digest and returns its extracted layers and
    /// config. A layer directory that went missing is extracted again from its blob.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let index = self.load_index()?;
        let (id, tag) = lookup(&index, reference)?;
        let record =
            index.images.get(&id).ok_or_else(|| ImageError::NotFound { reference: reference.to_owned() })?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for layer in &record.layers {
            let path = self.layer_path(&layer.diff_id);
            if !path.is_dir() {
                let _lock = self.lock()?;
                self.unpack(&layer.digest, &layer.diff_id)?;
            }
            layers.push(path);
        }
        Ok(ResolvedImage {
            reference: tag.unwrap_or_else(|| reference.to_owned()),
            id: id.to_string(),
            layers,
            config: record.image.clone(),
        })
    }

    /// The manifest digest of the image a tag or id names, `None` when the store lacks
    /// the image or recorded no manifest for it.
    pub(super) fn manifest_digest(&self, reference: &str) -> Result<Option<Digest>, ImageError> {
        let index = self.load_index()?;
        match lookup(&index, reference) {
            Ok((id, _)) => Ok(index.images.get(&id).and_then(|record| record.manifest.clone())),
            Err(ImageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn unpack(&self, digest: &Digest, diff_id: &Digest) -> Result<(), ImageError> {
        let staging = self.dir.join("tmp").join(format!(
            "layer-{}-{}-{}",
            diff_id.hex(),
            std::process::id(),
            unique_suffix()
        ));
        let blob = self.blobs.path(digest);
        if !blob.is_file() {
            return Err(ImageError::Missing {
                source_path: self.dir.clone(),
                what: format!("blob {digest}"),
            });
        }
        unpack_layer(&blob, digest, diff_id, &staging, &self.layer_path(diff_id))
    }

    /// Deletes blobs, layers and staging files no image in the index refers to.
    /// The caller holds the lock.
    pub(super) fn collect_garbage(&self) -> Result<(), ImageError> {
        let index = self.load_index()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for record in index.images.values() {
            blobs.extend(record.manifest.iter().map(|d| d.hex().to_owned()));
            blobs.insert(record.config.hex().to_owned());
            for layer in &record.layers {
                blobs.insert(layer.digest.hex().to_owned());
                layers.insert(layer.diff_id.hex().to_owned());
            }
        }
        remove_except(self.blobs.dir(), &blobs)?;
        remove_except(&self.dir.join("layers"), &layers)?;
        // Partial downloads stay for a day so an interrupted pull resumes where it stopped.
        let tmp = self.dir.join("tmp");
        remove_except(&tmp, &super::pull::resumable_partials(&tmp))
    }

    pub(super) fn lock(&self) -> Result<StoreLock, ImageError> {
        StoreLock::acquire(&self.dir.join("lock"))
    }

    pub(super) fn load_index(&self) -> Result<Index, ImageError> {
        Index::load(&self.index_path())
    }

    pub(super) fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    pub(super) fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join("layers").join(diff_id.hex())
    }
}

/// Milliseconds since the epoch on this node's clock (0 before 1970), for image stamps.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Finds the image `reference` names: an id, `name@digest` (by manifest digest), or a tag.
/// Returns the id and, for a tag, the normalized tag.
pub(super) fn lookup(index: &Index, reference: &str) -> Result<(Digest, Option<String>), ImageError> {
    let not_found = || ImageError::NotFound { reference: reference.to_owned() };
    if let Some(id) = parse_image_id(reference) {
        return index.images.contains_key(&id).then_some((id, None)).ok_or_else(not_found);
    }
    let parsed = Reference::parse(reference)?;
    if let Some(digest) = parsed.digest() {
        // A pull by the digest of an image index records the platform manifest it chose
        // and names the image by the reference as given.
        if let Some(id) = index.tags.get(&parsed.to_string()) {
            return Ok((id.clone(), Some(parsed.to_string())));
        }
        return index
            .images
            .iter()
            .find(|(id, record)| record.manifest.as_ref() == Some(digest) || *id == digest)
            .map(|(id, _)| (id.clone(), None))
            .ok_or_else(not_found);
    }
    let tag = parsed.to_string();
    match index.tags.get(&tag) {
        Some(id) => Ok((id.clone(), Some(tag))),
        None => Err(not_found()),
    }
}

fn summary(reference: Option<String>, record: &ImageRecord) -> ImageSummary {
    ImageSummary {
        reference,
        id: record.config.to_string(),
        size: record.size(),
        created: record.created.clone(),
        added_ms: record.added_ms,
        last_used_ms: record.last_used_ms,
    }
}

/// Removes every entry of `dir` whose name is not in `keep`.
fn remove_except(dir: &Path, keep: &BTreeSet<String>) -> Result<(), ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io("reading", dir))?;
    for entry in entries {
        let entry = entry.map_err(ImageError::io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map_err(ImageError::io("reading", &path))?.is_dir();
        let removed = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        removed.map_err(ImageError::io("removing", &path))?;
    }
    Ok(())
}
