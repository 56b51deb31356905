//! Usage metrics, pure: CPU rates from two readings of the runtime's counters
//! ([`Sampler`]), and the cluster-wide view of pods and nodes from every node's sample
//! ([`pods_view`], [`nodes_view`]). The agent reads the counters off its loop
//! (`agent/metrics.rs`) and publishes samples in gossip (`cluster/metrics.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::cluster::metrics::{Metrics, Usage};

/// One read of the usage counters: the node's and those of every running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// Monotonic time of the read (ns since an arbitrary origin): rates use only this.
    pub mono_ns: u64,
    /// Wall-clock time of the read (ms since the epoch): published and shown, never used
    /// for rates.
    pub wall_ms: u64,
    /// The node's counters; `None` when `/proc` could not be read.
    pub node: Option<runtime::Usage>,
    /// Pod key → its running containers.
    pub pods: BTreeMap<String, Vec<ContainerReading>>,
}

/// One running container's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReading {
    /// The runtime's container id.
    pub id: String,
    /// The instance: a restarted container has a new pid and a new cgroup whose counters
    /// start again from 0.
    pub pid: i32,
    /// `None` when its cgroup is gone (it stopped between the listing and the read).
    pub usage: Option<runtime::Usage>,
}

/// Turns readings into samples: a CPU rate is the difference of one container instance's
/// (or the node's) cumulative counter between two readings over the monotonic time between
/// them.
///
/// Call order: [`handle_reading`](Self::handle_reading) with each reading, oldest first.
/// The first reading gives no sample (no rate yet); a pod appears once every one of its
/// running containers has two readings, as metrics-server leaves out pods with a
/// container it has no rate for.
#[derive(Debug, Default)]
pub struct Sampler {
    prev: Option<Prev>,
}

#[derive(Debug)]
struct Prev {
    mono_ns: u64,
    node_cpu_ns: Option<u64>,
    /// (container id, pid) → cumulative CPU ns.
    containers: BTreeMap<(String, i32), u64>,
}

impl Sampler {
    /// Takes a reading; returns the sample it completes, if any.
    pub fn handle_reading(&mut self, r: &Reading) -> Option<Metrics> {
        let containers = r
            .pods
            .values()
            .flatten()
            .filter_map(|c| Some(((c.id.clone(), c.pid), c.usage?.cpu_ns)))
            .collect();
        let now = Prev { mono_ns: r.mono_ns, node_cpu_ns: r.node.map(|n| n.cpu_ns), containers };
        let prev = self.prev.replace(now)?;
        let elapsed = r.mono_ns.checked_sub(prev.mono_ns).filter(|e| *e > 0)?;
        // A counter that went back belongs to another instance: no rate from it.
        let rate = |before: u64, after: u64| {
            let millis = u128::from(after.checked_sub(before)?) * 1000 / u128::from(elapsed);
            Some(u64::try_from(millis).unwrap_or(u64::MAX))
        };
        let node_now = r.node?;
        let node = Usage {
            cpu_millis: rate(prev.node_cpu_ns?, node_now.cpu_ns)?,
            memory_bytes: node_now.memory_bytes,
        };
        let pod_usage = |containers: &[ContainerReading]| {
            let mut sum = Usage::default();
            for c in containers {
                let u = c.usage?;
                let before = prev.containers.get(&(c.id.clone(), c.pid))?;
                sum.cpu_millis = sum.cpu_millis.saturating_add(rate(*before, u.cpu_ns)?);
                sum.memory_bytes = sum.memory_bytes.saturating_add(u.memory_bytes);
            }
            Some(sum)
        };
        let pods = r
            .pods
            .iter()
            .filter(|(_, containers)| !containers.is_empty())
            .filter_map(|(key, containers)| Some((key.clone(), pod_usage(containers)?)))
            .collect();
        Some(Metrics { sampled_at_ms: r.wall_ms, node, pods })
    }
}

/// A pod's usage in the cluster-wide view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetrics {
    /// Millicores, averaged over the node's last sampling interval (5 s).
    pub cpu_millis: u64,
    /// Working set of its containers, bytes.
    pub memory_bytes: u64,
    /// When its node took the sample (ms since the epoch, that node's clock).
    pub sampled_at_ms: u64,
    /// The node that runs it.
    pub node: String,
}

/// A node's own usage in the cluster-wide view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetrics {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub sampled_at_ms: u64,
}

/// Every pod of the samples (node id, its latest sample). A pod two nodes report (a copy
/// moving between nodes) is taken from `owner(pod)`, the node placement gives it, when
/// that is one of them, else from the newer sample (then the smaller node id).
pub fn pods_view<'a>(
    samples: impl IntoIterator<Item = (&'a str, &'a Metrics)>,
    owner: impl Fn(&str) -> Option<&'a str>,
) -> BTreeMap<String, PodMetrics> {
    let mut view: BTreeMap<String, PodMetrics> = BTreeMap::new();
    for (node, m) in samples {
        for (pod, u) in &m.pods {
            let candidate = PodMetrics {
                cpu_millis: u.cpu_millis,
                memory_bytes: u.memory_bytes,
                sampled_at_ms: m.sampled_at_ms,
                node: node.to_owned(),
            };
            let replace = match view.get(pod) {
                None => true,
                Some(have) => {
                    let owner = owner(pod);
                    match (owner == Some(have.node.as_str()), owner == Some(node)) {
                        (true, _) => false,
                        (false, true) => true,
                        (false, false) => {
                            (candidate.sampled_at_ms, have.node.as_str()) > (have.sampled_at_ms, node)
                        }
                    }
                }
            };
            if replace {
                view.insert(pod.clone(), candidate);
            }
        }
    }
    view
}

/// Every node of the samples, by node id.
pub fn nodes_view<'a>(
    samples: impl IntoIterator<Item = (&'a str, &'a Metrics)>,
) -> BTreeMap<String, NodeMetrics> {
    samples
        .into_iter()
        .map(|(node, m)| {
            let metrics = NodeMetrics {
                cpu_millis: m.node.cpu_millis,
                memory_bytes: m.node.memory_bytes,
                sampled_at_ms: m.sampled_at_ms,
            };
            (node.to_owned(), metrics)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(cpu_ns: u64, memory_bytes: u64) -> Option<runtime::Usage> {
        Some(runtime::Usage { cpu_ns, memory_bytes })
    }

    fn container(id: &str, pid: i32, usage: Option<runtime::Usage>) -> ContainerReading {
        ContainerReading { id: id.to_owned(), pid, usage }
    }

    fn reading(secs: u64, node_cpu_ns: u64, pods: &[(&str, Vec<ContainerReading>)]) -> Reading {
        Reading {
            mono_ns: secs * 1_000_000_000,
            wall_ms: 1_000_000 + secs * 1000,
            node: counters(node_cpu_ns, 2 << 30),
            pods: pods.iter().map(|(k, c)| (k.to_string(), c.clone())).collect(),
        }
    }

    fn usage(cpu_millis: u64, memory_bytes: u64) -> Usage {
        Usage { cpu_millis, memory_bytes }
    }

    #[test]
    fn rates_over_the_elapsed_time() {
        let mut s = Sampler::default();
        let web = |cpu, app_pid| {
            vec![
                container("default_web_app", app_pid, counters(cpu, 30 << 20)),
                container("default_web_side", 8, counters(0, 1 << 20)),
            ]
        };
        assert_eq!(s.handle_reading(&reading(10, 0, &[("default/web", web(1_000_000_000, 7))])), None);
        // 5 s later: 2.5 s of CPU in the app (500m), the node 6 s over its CPUs (1200m).
        let sample = s.handle_reading(&reading(15, 6_000_000_000, &[("default/web", web(3_500_000_000, 7))]));
        let want = Metrics {
            sampled_at_ms: 1_015_000,
            node: usage(1200, 2 << 30),
            pods: BTreeMap::from([("default/web".to_owned(), usage(500, 31 << 20))]),
        };
        assert_eq!(sample, Some(want));
        // The app restarted (new pid, counter from 0): no rate for the pod this time, and
        // the next reading measures the new instance.
        let sample = s.handle_reading(&reading(20, 6_000_000_000, &[("default/web", web(100_000_000, 9))]));
        assert_eq!(sample.map(|m| m.pods), Some(BTreeMap::new()));
        let sample = s.handle_reading(&reading(22, 6_500_000_000, &[("default/web", web(300_000_000, 9))]));
        let want = BTreeMap::from([("default/web".to_owned(), usage(100, 31 << 20))]);
        assert_eq!(sample.map(|m| (m.node.cpu_millis, m.pods)), Some((250, want)));
    }

    #[test]
    fn incomplete_readings_give_no_rate() {
        let mut s = Sampler::default();
        let pods = |cpu| {
            [
                ("default/a", vec![container("a", 1, counters(cpu, 1))]),
                ("default/gone", vec![container("g", 2, if cpu == 0 { counters(0, 1) } else { None })]),
                ("default/new", if cpu == 0 { vec![] } else { vec![container("n", 3, counters(5, 1))] }),
                ("default/none", vec![]),
            ]
        };
        assert_eq!(s.handle_reading(&reading(1, 0, &pods(0))), None);
        let sample = s.handle_reading(&reading(2, 1_000_000, &pods(10_000_000))).expect("a sample");
        assert_eq!(sample.pods, BTreeMap::from([("default/a".to_owned(), usage(10, 1))]));
        // A node counter that cannot be read, or time that stood still, gives no sample.
        let mut r = reading(3, 0, &pods(20_000_000));
        r.node = None;
        assert_eq!(s.handle_reading(&r), None);
        assert_eq!(s.handle_reading(&reading(4, 2_000_000, &[])), None);
        assert!(s.handle_reading(&reading(4, 3_000_000, &[])).is_none());
        assert!(s.handle_reading(&reading(5, 3_000_000, &[])).is_some());
    }

    #[test]
    fn cluster_view_prefers_the_owner() {
        let sample = |at, pods: &[(&str, u64)]| Metrics {
            sampled_at_ms: at,
            node: usage(at, at),
            pods: pods.iter().map(|(k, cpu)| (k.to_string(), usage(*cpu, 1))).collect(),
        };
        let a = sample(100, &[("default/x", 1), ("default/moving", 2), ("default/twice", 3)]);
        let b = sample(200, &[("default/y", 4), ("default/moving", 5), ("default/twice", 6)]);
        let owner = |pod: &str| (pod == "default/moving").then_some("a");
        let pods = pods_view([("b", &b), ("a", &a)], owner);
        let cpu: Vec<(&str, u64, &str)> =
            pods.iter().map(|(k, p)| (k.as_str(), p.cpu_millis, p.node.as_str())).collect();
        assert_eq!(
            cpu,
            [
                ("default/moving", 2, "a"),
                ("default/twice", 6, "b"),
                ("default/x", 1, "a"),
                ("default/y", 4, "b")
            ]
        );
        assert_eq!(pods_view([("a", &a), ("b", &b)], owner), pods);
        let nodes = nodes_view([("a", &a), ("b", &b)]);
        assert_eq!(nodes["b"], NodeMetrics { cpu_millis: 200, memory_bytes: 200, sampled_at_ms: 200 });
        assert_eq!(nodes.len(), 2);
    }
}
