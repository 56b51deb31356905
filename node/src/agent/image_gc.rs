//! Image garbage collection on the node: every `--image-gc-period` (and on `peer image
//! prune`) a pass runs in a blocking task, off the loop, since it reads and deletes files.
//! The loop hands it what only the loop knows — the images of this node's pods (in use,
//! never deleted) and those the cluster's workloads name (spared) — as references; the
//! pass resolves them to ids in the store, stamps use, plans with the pure
//! `runtime::image::gc` and deletes. Its outcome comes back as [`Input::ImageGc`], which
//! logs each deletion and records it as a node event; a failed pass is logged and
//! recorded as `ImageGCFailed`, and the next one runs a period later as usual.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::image::gc::{self, GcInput, GcPolicy, Pressure, Reason};
use runtime::image::{ImageError, ImageStore};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::{now_ms, Agent, Input};
use crate::api::{ImagePruneAnswer, RemovedImage, Response};
use crate::client::age;

/// The agent's image garbage collection state.
pub struct ImageGc {
    period: Duration,
    policy: GcPolicy,
    /// When the next periodic pass is due.
    next_at: Instant,
    /// Whether a periodic pass is under way (a slow one is never doubled up).
    running: bool,
    /// Where finished passes go: the agent loop.
    inputs: UnboundedSender<Input>,
}

impl ImageGc {
    /// The first pass runs a period after the start, once this node's pods are back.
    pub fn new(period: Duration, policy: GcPolicy, inputs: UnboundedSender<Input>) -> ImageGc {
        ImageGc { period, policy, next_at: Instant::now() + period, running: false, inputs }
    }
}

/// A finished pass, reported to the loop.
pub struct PassOutcome {
    /// A periodic pass (else `peer image prune`).
    periodic: bool,
    result: Result<Pass, String>,
}

/// What one pass did.
struct Pass {
    removed: Vec<gc::Deletion>,
    pressure: Option<Pressure>,
    disk_percent: u64,
}

/// One pass, blocking: resolve, stamp, measure, plan, delete.
fn pass(
    images: &ImageStore,
    in_use: &[String],
    spare: &[String],
    policy: &GcPolicy,
    all: bool,
) -> Result<Pass, ImageError> {
    let now = now_ms();
    let in_use = images.ids_of(in_use.iter().map(String::as_str))?;
    let spare = images.ids_of(spare.iter().map(String::as_str))?;
    images.mark_used(&in_use, now)?;
    let usage = images.fs_usage()?;
    let pressured = policy.high_percent < 100 && usage.percent() >= u64::from(policy.high_percent);
    let list = images.gc_images(pressured && !all, now)?;
    let plan = if all {
        gc::plan_all(&list, &in_use, now)
    } else {
        gc::plan(&GcInput { images: &list, in_use: &in_use, spare: &spare, usage }, policy, now)
    };
    let removed = images.collect_images(&plan)?;
    Ok(Pass { removed, pressure: plan.pressure, disk_percent: usage.percent() })
}

/// Why an image went, in words, for logs, events and `peer image prune`.
fn why(reason: Reason, policy: &GcPolicy, disk_percent: u64) -> String {
    match reason {
        Reason::MaxAge => format!(
            "unused for longer than the maximum age {} and no workload names it",
            age(policy.max_age.as_secs())
        ),
        Reason::DiskPressure { spared: false } => format!(
            "disk usage {disk_percent}% reached the high threshold {}%",
            policy.high_percent
        ),
        Reason::DiskPressure { spared: true } => format!(
            "disk usage {disk_percent}% reached the high threshold {}% and images no workload names did not free enough",
            policy.high_percent
        ),
        Reason::Pruned => "peer image prune --all".to_owned(),
    }
}

/// An image's name for messages: its first tag, else its short id.
fn display_name(d: &gc::Deletion) -> String {
    d.names.first().cloned().unwrap_or_else(|| d.id.chars().take(19).collect())
}

impl Agent {
    /// Starts a periodic pass when one is due and none is under way (on every tick).
    pub(super) fn image_gc_tick(&mut self) {
        if self.image_gc.running || Instant::now() < self.image_gc.next_at {
            return;
        }
        self.image_gc.running = true;
        self.start_image_gc(false, None);
    }

    /// `peer image prune [--all]`: a pass now, answered when it finished.
    pub(super) fn prune_images(&mut self, all: bool, reply: oneshot::Sender<Response>) {
        self.start_image_gc(all, Some(reply));
    }

    /// Spawns a pass in a blocking task owned by `jobs`; it reports as [`Input::ImageGc`]
    /// and answers `reply` if given.
    fn start_image_gc(&mut self, all: bool, reply: Option<oneshot::Sender<Response>>) {
        // Every pod this node holds, stopping ones too: their containers may still exist.
        let in_use: Vec<String> = self
            .pods
            .values()
            .flat_map(|p| p.template.containers.iter().map(|c| c.image.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let spare: Vec<String> = self
            .store
            .workloads()
            .flat_map(|w| w.template.containers.iter().map(|c| c.image.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let images = Arc::clone(&self.images);
        let policy = self.image_gc.policy;
        let tx = self.image_gc.inputs.clone();
        let periodic = reply.is_none();
        self.jobs.spawn(async move {
            let result =
                match tokio::task::spawn_blocking(move || pass(&images, &in_use, &spare, &policy, all)).await
                {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the collection task failed: {e}")),
                };
            if let Some(reply) = reply {
                let resp = match &result {
                    Ok(p) => answer(p, &policy),
                    Err(e) => Response::Error { message: format!("collecting unused images: {e}") },
                };
                let _ = reply.send(resp);
            }
            if result.as_ref().is_ok_and(|p| !p.removed.is_empty()) {
                // Peers should stop asking this node for the blobs that went.
                let _ = tx.send(Input::BlobsChanged);
            }
            let _ = tx.send(Input::ImageGc(Box::new(PassOutcome { periodic, result })));
        });
    }

    /// A finished pass: each deletion logged and recorded as a node event.
    pub(super) fn handle_image_gc(&mut self, outcome: PassOutcome) {
        if outcome.periodic {
            self.image_gc.running = false;
            self.image_gc.next_at = Instant::now() + self.image_gc.period;
        }
        let object = format!("node/{}", self.cluster.me().0);
        let policy = self.image_gc.policy;
        let pass = match outcome.result {
            Ok(pass) => pass,
            Err(e) => {
                let msg = format!("image garbage collection failed: {e}");
                tracing::warn!("{msg}");
                self.events.warning(&object, "ImageGCFailed", &msg);
                return;
            }
        };
        for d in &pass.removed {
            let msg = format!(
                "removed unused image {} ({:.1} MB, unused for {}): {}",
                display_name(d),
                d.size as f64 / 1e6,
                age(d.unused_ms / 1000),
                why(d.reason, &policy, pass.disk_percent)
            );
            tracing::info!(image = %d.id, "{msg}");
            self.events.normal(&object, "ImageGarbageCollected", &msg);
        }
        if let Some(p) = pass.pressure.filter(Pressure::short) {
            let msg = format!(
                "disk usage {}% is at or above the high threshold {}%: wanted to free {:.1} MB of images, only {:.1} MB could go (the rest is in use or younger than the minimum age)",
                p.percent,
                policy.high_percent,
                p.wanted as f64 / 1e6,
                p.freed as f64 / 1e6
            );
            tracing::warn!("{msg}");
            self.events.warning(&object, "FreeDiskSpaceFailed", &msg);
        }
    }
}

/// The API's answer to `peer image prune`.
fn answer(pass: &Pass, policy: &GcPolicy) -> Response {
    let removed = pass
        .removed
        .iter()
        .map(|d| RemovedImage {
            id: d.id.clone(),
            names: d.names.clone(),
            size: d.size,
            unused_secs: d.unused_ms / 1000,
            why: why(d.reason, policy, pass.disk_percent),
        })
        .collect();
    match serde_json::to_value(ImagePruneAnswer { removed, disk_percent: pass.disk_percent }) {
        Ok(data) => Response::Ok { data },
        Err(e) => Response::Error { message: format!("encoding the answer: {e}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_as_the_flags_that_caused_them() {
        let policy = GcPolicy { max_age: Duration::from_secs(25 * 3600), ..GcPolicy::default() };
        let lines: Vec<String> = [
            Reason::MaxAge,
            Reason::DiskPressure { spared: false },
            Reason::DiskPressure { spared: true },
            Reason::Pruned,
        ]
        .into_iter()
        .map(|r| why(r, &policy, 91))
        .collect();
        expect_test::expect![[r#"
            [
                "unused for longer than the maximum age 25h and no workload names it",
                "disk usage 91% reached the high threshold 85%",
                "disk usage 91% reached the high threshold 85% and images no workload names did not free enough",
                "peer image prune --all",
            ]
        "#]]
        .assert_debug_eq(&lines);
    }
}
