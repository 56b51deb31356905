//! Image garbage collection, decided purely: which unused images to delete and why, from
//! what the store holds, what this node runs, what the cluster may still need and how full
//! the store's file system is. The rules are kubelet's (`imageGCHighThresholdPercent`,
//! `imageGCLowThresholdPercent`, `imageMinimumGCAge`, `imageMaximumGCAge`) plus peer's own
//! spare set: images the cluster's workloads name, which this node may have to run when
//! it takes over another node's pods, possibly offline.
//!
//! Time comes in as `now_ms` and stamps are milliseconds since the epoch on this node's
//! clock; every age saturates at zero, so a clock that went back makes images look fresh
//! (kept), never old.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// When and how much the store collects (`peer up --image-gc-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcPolicy {
    /// Disk usage (percent of the file system) at or above which unused images are
    /// deleted, least recently used first; 100 turns disk-pressure collection off.
    pub high_percent: u8,
    /// Disk usage that disk-pressure collection brings the file system down to.
    pub low_percent: u8,
    /// An image added more recently than this is never deleted: it protects a fresh pull
    /// or import that no container uses yet.
    pub min_age: Duration,
    /// An image unused for longer than this is deleted unless the cluster's workloads
    /// name it; zero turns the rule off.
    pub max_age: Duration,
}

impl Default for GcPolicy {
    /// Kubelet's thresholds (85 %, 80 %, 2 min), and a day for the maximum age, which
    /// kubelet leaves off: an edge box has little disk and nobody to prune it.
    fn default() -> GcPolicy {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

impl GcPolicy {
    /// Checks the thresholds: both at most 100, the low one not above the high one.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_percent > 100 {
            return Err(format!("high threshold {}% is above 100%", self.high_percent));
        }
        if self.low_percent > self.high_percent {
            return Err(format!(
                "low threshold {}% is above the high threshold {}%",
                self.low_percent, self.high_percent
            ));
        }
        Ok(())
    }
}

/// One image of the store as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcImage {
    /// Image id, `sha256:…`.
    pub id: String,
    /// Its tags, for messages.
    pub names: Vec<String>,
    /// Bytes of its layer blobs as stored (what `peer image ls` shows).
    pub size: u64,
    /// When the store recorded it (ms since the epoch).
    pub added_ms: u64,
    /// When a container of this node last used it, if ever.
    pub last_used_ms: Option<u64>,
    /// What deleting it can free, as (content key, bytes): blobs and extracted layers,
    /// which images may share. Deleting an image frees a part only once no kept image
    /// has it.
    pub parts: Vec<(String, u64)>,
}

impl GcImage {
    /// Since when the image has not been used: its last use, or when it was added if it
    /// was not used since.
    pub fn unused_since_ms(&self) -> u64 {
        self.added_ms.max(self.last_used_ms.unwrap_or(0))
    }
}

/// Usage of the file system the store lives on, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    /// Bytes in use.
    pub used: u64,
    /// Bytes in use plus bytes still available (as `df` counts: blocks reserved for root
    /// are left out, so a full disk is 100 %).
    pub total: u64,
}

impl FsUsage {
    /// Usage in whole percent (rounded up, so 84.2 % is 85 % and triggers at 85).
    pub fn percent(&self) -> u64 {
        if self.total == 0 {
            return 0;
        }
        (u128::from(self.used) * 100).div_ceil(u128::from(self.total)) as u64
    }
}

/// What the planner decides from.
#[derive(Debug, Clone, Copy)]
pub struct GcInput<'a> {
    pub images: &'a [GcImage],
    /// Ids of images that containers of this node use: never deleted.
    pub in_use: &'a BTreeSet<String>,
    /// Ids of images the cluster's workloads name: kept past the maximum age, deleted
    /// under disk pressure only when the other images do not free enough.
    pub spare: &'a BTreeSet<String>,
    pub usage: FsUsage,
}

/// Why an image is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Unused for longer than the maximum age, and no workload names it.
    MaxAge,
    /// The disk was at or above the high threshold; `spared` when a workload names the
    /// image and the other images did not free enough.
    DiskPressure { spared: bool },
    /// `peer image prune --all`: every image no container uses.
    Pruned,
}

/// One image to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    /// How long it had been unused at planning time.
    pub unused_ms: u64,
    pub reason: Reason,
    /// Bytes this deletion frees given the deletions before it (shared parts count for
    /// the last image that had them).
    pub freed: u64,
    /// The stamps the plan saw; the store skips the image if they changed since (it was
    /// used or pulled again meanwhile).
    pub(crate) seen: (u64, Option<u64>),
}

/// Disk pressure found by a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// Usage when planning, in percent.
    pub percent: u64,
    /// Bytes to free to get down to the low threshold.
    pub wanted: u64,
    /// Bytes the plan's deletions free.
    pub freed: u64,
}

impl Pressure {
    /// Whether every image that could go does not free enough.
    pub fn short(&self) -> bool {
        self.freed < self.wanted
    }
}

/// The outcome of planning: deletions in the order they should happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    pub deletions: Vec<Deletion>,
    /// Set when the disk was at or above the high threshold.
    pub pressure: Option<Pressure>,
}

/// Reference counts of parts over the images still kept, to tell what a deletion frees.
struct Parts<'a> {
    counts: BTreeMap<&'a str, (u64, u32)>,
}

impl<'a> Parts<'a> {
    fn new(images: &'a [GcImage]) -> Parts<'a> {
        let mut counts: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
        for image in images {
            for (key, bytes) in &image.parts {
                let entry = counts.entry(key.as_str()).or_insert((*bytes, 0));
                entry.1 += 1;
            }
        }
        Parts { counts }
    }

    /// Forgets one image's parts; returns the bytes no kept image has any more.
    fn delete(&mut self, image: &'a GcImage) -> u64 {
        let mut freed = 0;
        for (key, _) in &image.parts {
            if let Some((bytes, count)) = self.counts.get_mut(key.as_str()) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    freed += *bytes;
                }
            }
        }
        freed
    }
}

fn deletion(image: &GcImage, reason: Reason, freed: u64, now_ms: u64) -> Deletion {
    Deletion {
        id: image.id.clone(),
        names: image.names.clone(),
        size: image.size,
        unused_ms: now_ms.saturating_sub(image.unused_since_ms()),
        reason,
        freed,
        seen: (image.added_ms, image.last_used_ms),
    }
}

/// Least recently used first; ties by id so the plan is deterministic.
fn lru_order<'a>(images: impl Iterator<Item = &'a GcImage>) -> Vec<&'a GcImage> {
    let mut images: Vec<&GcImage> = images.collect();
    images.sort_by(|a, b| (a.unused_since_ms(), &a.id).cmp(&(b.unused_since_ms(), &b.id)));
    images
}

/// Decides one collection pass.
///
/// Never deletes an image in use or one added less than `min_age` ago. Deletes, first,
/// every image unused for longer than `max_age` that the spare set lacks; then, when the
/// usage is at or above `high_percent`, the least recently used of the others until the
/// projected usage is at or below `low_percent` — images outside the spare set before
/// those in it.
pub fn plan(input: &GcInput<'_>, policy: &GcPolicy, now_ms: u64) -> GcPlan {
    let min_age = policy.min_age.as_millis() as u64;
    let max_age = policy.max_age.as_millis() as u64;
    let candidates: Vec<&GcImage> = input
        .images
        .iter()
        .filter(|i| !input.in_use.contains(&i.id))
        .filter(|i| now_ms.saturating_sub(i.added_ms) >= min_age)
        .collect();
    let mut parts = Parts::new(input.images);
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    let mut deletions = Vec::new();

    if max_age > 0 {
        let expired = candidates
            .iter()
            .copied()
            .filter(|i| !input.spare.contains(&i.id) && now_ms.saturating_sub(i.unused_since_ms()) > max_age);
        for image in lru_order(expired) {
            let freed = parts.delete(image);
            chosen.insert(&image.id);
            deletions.push(deletion(image, Reason::MaxAge, freed, now_ms));
        }
    }

    let usage = input.usage;
    let pressure =
        (policy.high_percent < 100 && usage.total > 0 && usage.percent() >= u64::from(policy.high_percent))
            .then(|| {
                let low = u128::from(usage.total) * u128::from(policy.low_percent) / 100;
                let wanted = u64::try_from(u128::from(usage.used).saturating_sub(low)).unwrap_or(u64::MAX);
                let mut freed: u64 = deletions.iter().map(|d| d.freed).sum();
                for spared in [false, true] {
                    let rest = candidates
                        .iter()
                        .copied()
                        .filter(|i| input.spare.contains(&i.id) == spared && !chosen.contains(i.id.as_str()));
                    for image in lru_order(rest) {
                        if freed >= wanted {
                            break;
                        }
                        let bytes = parts.delete(image);
                        freed += bytes;
                        chosen.insert(&image.id);
                        deletions.push(deletion(image, Reason::DiskPressure { spared }, bytes, now_ms));
                    }
                }
                Pressure { percent: usage.percent(), wanted, freed }
            });
    GcPlan { deletions, pressure }
}

/// `peer image prune --all`: every image no container of this node uses, whatever its
/// age and whether workloads name it (like `docker image prune -a`).
pub fn plan_all(images: &[GcImage], in_use: &BTreeSet<String>, now_ms: u64) -> GcPlan {
    let mut parts = Parts::new(images);
    let unused = lru_order(images.iter().filter(|i| !in_use.contains(&i.id)));
    let deletions = unused
        .into_iter()
        .map(|image| {
            let freed = parts.delete(image);
            deletion(image, Reason::Pruned, freed, now_ms)
        })
        .collect();
    GcPlan { deletions, pressure: None }
}

#[cfg(test)]
mod tests;
