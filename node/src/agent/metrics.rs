//! This node's usage metrics: the runtime's counters read off the loop every
//! [`SAMPLE_EVERY`], samples published in gossip when they moved, and the cluster-wide
//! view of pods and nodes for `peer top` and autoscaling.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime::Runtime;
use tokio::sync::mpsc::UnboundedSender;

use super::pods::container_id;
use super::{now_ms, Agent, Input};
use crate::api::{NodeUsageRow, PodUsageRow};
use crate::cluster::metrics::worth_publishing;
use crate::metrics::{self, ContainerReading, Metrics, NodeMetrics, PodMetrics, Reading, Sampler};
use crate::reconcile::ContainerState;

/// How often the counters are read; CPU is the average over this interval.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The agent's metrics state.
pub struct UsageState {
    sampler: Sampler,
    /// This node's latest sample.
    latest: Option<Metrics>,
    /// The sample last published in gossip.
    published: Option<Metrics>,
    /// Whether a read is under way (a slow read is never doubled up).
    reading: bool,
    /// Origin of the readings' monotonic time.
    origin: Instant,
    /// Where finished reads go: the agent loop.
    inputs: UnboundedSender<Input>,
}

impl UsageState {
    pub fn new(inputs: UnboundedSender<Input>) -> UsageState {
        UsageState {
            sampler: Sampler::default(),
            latest: None,
            published: None,
            reading: false,
            origin: Instant::now(),
            inputs,
        }
    }
}

/// Reads the node's counters and those of `containers` (pod key → (container id, pid)).
/// Blocking: a few small files per container.
fn read(rt: &Runtime, origin: Instant, containers: BTreeMap<String, Vec<(String, i32)>>) -> Reading {
    let node = runtime::node_usage().map_err(|e| tracing::warn!("reading the node's usage: {e}")).ok();
    let pods = containers
        .into_iter()
        .map(|(pod, list)| {
            let list = list
                .into_iter()
                .map(|(id, pid)| ContainerReading { usage: rt.container_usage(&id), id, pid })
                .collect();
            (pod, list)
        })
        .collect();
    let mono_ns = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Reading { mono_ns, wall_ms: now_ms(), node, pods }
}

impl Agent {
    /// Starts a read of the counters in a blocking task; it reports as [`Input::Usage`].
    pub(super) fn sample_usage(&mut self) {
        if self.usage.reading {
            return;
        }
        let containers: BTreeMap<String, Vec<(String, i32)>> = self
            .pods
            .iter()
            .map(|(key, p)| {
                let running = p.containers.iter().filter_map(|(name, c)| match c.state {
                    ContainerState::Running { pid, .. } => {
                        Some((container_id(&p.namespace, &p.name, name), pid))
                    }
                    _ => None,
                });
                (key.clone(), running.collect())
            })
            .collect();
        let rt = Arc::clone(&self.runtime);
        let origin = self.usage.origin;
        let tx = self.usage.inputs.clone();
        self.usage.reading = true;
        self.jobs.spawn(async move {
            let reading = match tokio::task::spawn_blocking(move || read(&rt, origin, containers)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("reading usage counters: {e}");
                    let mono_ns = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    Reading { mono_ns, wall_ms: now_ms(), ..Reading::default() }
                }
            };
            let _ = tx.send(Input::Usage(Box::new(reading)));
        });
    }

    /// A finished read: its sample becomes this node's metrics, published when it moved.
    pub(super) async fn handle_usage(&mut self, reading: Reading) {
        self.usage.reading = false;
        let Some(sample) = self.usage.sampler.handle_reading(&reading) else { return };
        if worth_publishing(self.usage.published.as_ref(), &sample) {
            self.cluster.publish_metrics(&sample).await;
            self.usage.published = Some(sample.clone());
        }
        self.usage.latest = Some(sample);
    }

    /// Every node's latest sample in the live view: this node's own and the live peers'
    /// from gossip.
    fn samples(&self) -> impl Iterator<Item = (&str, &Metrics)> {
        let me = self.usage.latest.as_ref().map(|m| (self.cluster.me().0.as_str(), m));
        let peers =
            self.cluster.live_peers().filter_map(|p| Some((p.member.node_id.as_str(), p.metrics.as_ref()?)));
        me.into_iter().chain(peers)
    }

    /// Usage of every pod of the cluster (pod key `namespace/name`), from the live view.
    /// A pod shows up about two samples (5–10 s) after it started running; one that two
    /// nodes report while it moves is taken from the node placement gives it.
    pub fn pod_metrics(&self) -> BTreeMap<String, PodMetrics> {
        let owner = |pod: &str| self.placement.planned.get(pod).and_then(|p| p.node.as_deref());
        metrics::pods_view(self.samples(), owner)
    }

    /// Usage of every live node that has published a sample, by node id.
    pub fn node_metrics(&self) -> BTreeMap<String, NodeMetrics> {
        metrics::nodes_view(self.samples())
    }

    /// `peer top pods`: the pods of `namespace` (every namespace when `None`).
    pub(super) fn top_pods(&self, namespace: Option<&str>) -> Vec<PodUsageRow> {
        self.pod_metrics()
            .into_iter()
            .filter_map(|(key, m)| {
                let (ns, name) = key.split_once('/')?;
                namespace.is_none_or(|want| want == ns).then(|| PodUsageRow {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                    node: m.node,
                    cpu_millis: m.cpu_millis,
                    memory_bytes: m.memory_bytes,
                    sampled_at_ms: m.sampled_at_ms,
                })
            })
            .collect()
    }

    /// `peer top nodes`: every live node, with its usage once it published a sample.
    pub(super) fn top_nodes(&self) -> Vec<NodeUsageRow> {
        let usage = self.node_metrics();
        let me = self.cluster.me().0.clone();
        let own = self.node.info(self.started_at_ms, self.pods.len() as u32);
        let mut nodes = vec![(me, Some(own))];
        nodes.extend(self.cluster.live_peers().map(|p| (p.member.node_id.clone(), p.info.clone())));
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        let percent = |used: u64, capacity: u64| (capacity > 0).then(|| used.saturating_mul(100) / capacity);
        nodes
            .into_iter()
            .map(|(name, info)| {
                let m = usage.get(&name);
                let cpu_capacity_millis = info.as_ref().map(|i| i.cpu_millis);
                let memory_capacity_bytes = info.as_ref().map(|i| i.memory_bytes);
                NodeUsageRow {
                    cpu_millis: m.map(|m| m.cpu_millis),
                    cpu_percent: m.zip(cpu_capacity_millis).and_then(|(m, c)| percent(m.cpu_millis, c)),
                    memory_bytes: m.map(|m| m.memory_bytes),
                    memory_percent: m
                        .zip(memory_capacity_bytes)
                        .and_then(|(m, c)| percent(m.memory_bytes, c)),
                    cpu_capacity_millis,
                    memory_capacity_bytes,
                    sampled_at_ms: m.map(|m| m.sampled_at_ms),
                    name,
                }
            })
            .collect()
    }
}
