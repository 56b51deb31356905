//! The store's side of image garbage collection: use stamps, the planner's view of the
//! images, file system usage, and deleting what a plan chose (the decisions are `gc.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::gc::{Deletion, FsUsage, GcImage, GcPlan};
use super::reference::parse_image_id;
use super::store::lookup;
use super::{ImageError, ImageStore};

/// Stamps before 2020 come from a clock that was not set yet (edge boxes without a
/// real-time clock boot in 1970); once the clock is sane such stamps are replaced with
/// the current time, or every image would look decades unused the moment NTP catches up.
const SANE_CLOCK_MS: u64 = 1_577_836_800_000;

impl ImageStore {
    /// The ids of the images these references (tags, digests or ids) name; references the
    /// store does not know, or that do not parse, name none.
    pub fn ids_of<'a>(
        &self,
        references: impl IntoIterator<Item = &'a str>,
    ) -> Result<BTreeSet<String>, ImageError> {
        let index = self.load_index()?;
        Ok(references
            .into_iter()
            .filter_map(|r| lookup(&index, r).ok())
            .map(|(id, _)| id.to_string())
            .collect())
    }

    /// Records that containers of this node use the images `ids` at `now_ms`, and stamps
    /// images without a sane added time (stores from before garbage collection, or a clock
    /// that was not set) as added now. Writes the index only when something changed;
    /// returns whether it did.
    pub fn mark_used(&self, ids: &BTreeSet<String>, now_ms: u64) -> Result<bool, ImageError> {
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        let clock_sane = now_ms >= SANE_CLOCK_MS;
        let mut changed = false;
        for (id, record) in &mut index.images {
            let insane = |t: Option<u64>| t.is_some_and(|t| clock_sane && t < SANE_CLOCK_MS);
            if record.added_ms.is_none() || insane(record.added_ms) {
                record.added_ms = Some(now_ms);
                changed = true;
            }
            if insane(record.last_used_ms) {
                record.last_used_ms = Some(now_ms);
                changed = true;
            }
            if ids.contains(id.as_str()) && record.last_used_ms != Some(now_ms) {
                record.last_used_ms = Some(now_ms);
                changed = true;
            }
        }
        if changed {
            index.save(&self.index_path())?;
        }
        Ok(changed)
    }

    /// Every image as the planner sees it. Its parts are its blobs and extracted layers;
    /// with `measure_layers` the extracted layers' disk use is measured (a walk of every
    /// layer, so only when the bytes matter: under disk pressure), else they count as
    /// zero. An image without an added stamp counts as added at `now_ms`.
    pub fn gc_images(&self, measure_layers: bool, now_ms: u64) -> Result<Vec<GcImage>, ImageError> {
        let index = self.load_index()?;
        let mut images = Vec::with_capacity(index.images.len());
        for (id, record) in &index.images {
            let mut parts = Vec::new();
            for digest in record.manifest.iter().chain([&record.config]) {
                let bytes = fs::metadata(self.blobs.path(digest)).map_or(0, |m| m.len());
                parts.push((format!("blob:{}", digest.hex()), bytes));
            }
            for layer in &record.layers {
                parts.push((format!("blob:{}", layer.digest.hex()), layer.size));
                let bytes = if measure_layers { disk_use(&self.layer_path(&layer.diff_id)) } else { 0 };
                parts.push((format!("layer:{}", layer.diff_id.hex()), bytes));
            }
            images.push(GcImage {
                id: id.to_string(),
                names: index.tags_of(id).cloned().collect(),
                size: record.size(),
                added_ms: record.added_ms.unwrap_or(now_ms),
                last_used_ms: record.last_used_ms,
                parts,
            });
        }
        Ok(images)
    }

    /// Usage of the file system the store lives on (`statvfs`), as `df` shows it: blocks
    /// reserved for root count neither as used nor as available.
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let stat = nix::sys::statvfs::statvfs(&self.dir)
            .map_err(|errno| ImageError::io("measuring the file system of", &self.dir)(errno.into()))?;
        let block = stat.fragment_size() as u64;
        let used = (stat.blocks().saturating_sub(stat.blocks_free()) as u64).saturating_mul(block);
        let available = (stat.blocks_available() as u64).saturating_mul(block);
        Ok(FsUsage { used, total: used.saturating_add(available) })
    }

    /// Deletes the images a plan chose, each with all its tags, under the lock, then the
    /// blobs and layers no image refers to any more. An image whose stamps changed since
    /// the plan (used or recorded again meanwhile) or that is gone already is skipped.
    /// Returns the deletions carried out.
    ///
    /// Layers still mounted by running containers are the caller's concern: the plan
    /// must leave out images in use.
    pub fn collect_images(&self, plan: &GcPlan) -> Result<Vec<Deletion>, ImageError> {
        let _lock = self.lock()?;
        let mut index = self.load_index()?;
        let mut done = Vec::new();
        for deletion in &plan.deletions {
            let Some(id) = parse_image_id(&deletion.id) else { continue };
            let Some(record) = index.images.get(&id) else { continue };
            if (record.added_ms.unwrap_or(deletion.seen.0), record.last_used_ms) != deletion.seen {
                continue;
            }
            index.images.remove(&id);
            index.tags.retain(|_, target| *target != id);
            done.push(deletion.clone());
        }
        if !done.is_empty() {
            index.save(&self.index_path())?;
            self.collect_garbage()?;
        }
        Ok(done)
    }
}

/// Bytes of disk a directory tree takes (allocated blocks; hard links count each time).
/// Unreadable entries count as nothing: this is an estimate for planning.
fn disk_use(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}
