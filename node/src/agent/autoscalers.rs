//! Horizontal autoscaling on the node: for every HorizontalPodAutoscaler exactly one live
//! node decides each period (`protocol::duty`: the rendezvous owner, with the handover
//! rule), from the target's pods in the shared view (claims: running, Ready, since when)
//! and their usage (gossiped metrics), with the pure `protocol::autoscale::decide`. The
//! decision is written into the desired state: the target's replica count when it
//! changes, and always the autoscaler's status (`AutoscalerStatus`: the algorithm's state
//! for whichever node decides next, and the heartbeat that holds other nodes back).

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::autoscale::{self, PodSample, Usage};
use protocol::duty;
use protocol::spec::autoscaler::{AutoscalerStatus, DecisionRecord, Resource};
use protocol::spec::{HorizontalPodAutoscaler, Kind, ObjectKey, Workload};
use serde_json::json;

use super::Agent;
use crate::api::Response;
use crate::store::Source;

/// How much longer than a period a node waits before taking a decision over from another
/// node: more than a write needs to reach every node (a gossip round or two).
pub const HANDOVER: Duration = Duration::from_secs(3);

/// The pods of `target` among the claims (pod key → (claim, revision)), as samples.
fn samples(
    target: &Workload,
    claims: &[(&str, &crate::cluster::claims::ClaimState)],
    usage: &BTreeMap<String, crate::metrics::PodMetrics>,
) -> Vec<PodSample> {
    let requests = {
        let (mut cpu, mut memory) = (Some(0u64), Some(0u64));
        for c in &target.template.containers {
            cpu = cpu
                .zip(c.resources.requests.cpu_millis.or(c.resources.limits.cpu_millis))
                .map(|(a, b)| a + b);
            memory = memory
                .zip(c.resources.requests.memory_bytes.or(c.resources.limits.memory_bytes))
                .map(|(a, b)| a + b);
        }
        let mut r = BTreeMap::new();
        if let Some(cpu) = cpu {
            r.insert(Resource::Cpu, cpu);
        }
        if let Some(memory) = memory {
            r.insert(Resource::Memory, memory);
        }
        r
    };
    let ns = &target.key.namespace;
    let name = &target.key.name;
    let mut out: BTreeMap<String, PodSample> = BTreeMap::new();
    for (key, claim) in claims {
        let Some((pod_ns, pod)) = key.split_once('/') else { continue };
        if pod_ns != ns {
            continue;
        }
        let ours = match target.key.kind {
            Kind::Deployment => protocol::rollout::parse_pod_name(name, pod).is_some(),
            Kind::StatefulSet => pod
                .strip_prefix(name.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|i| i.parse::<u32>().is_ok()),
            _ => false,
        };
        if !ours {
            continue;
        }
        let started = claim.running.then_some(claim.since_ms);
        let mut sample = PodSample {
            name: (*key).to_owned(),
            pending: !claim.running,
            ready: claim.is_ready(),
            started_ms: started,
            // Claims carry no Ready transition time: a pod's start stands in for it.
            ready_changed_ms: started,
            usage: BTreeMap::new(),
            requests: requests.clone(),
        };
        if let Some(m) = usage.get(*key) {
            let window_start_ms =
                m.sampled_at_ms.saturating_sub(super::metrics::SAMPLE_EVERY.as_millis() as u64);
            sample.usage.insert(Resource::Cpu, Usage { value: m.cpu_millis, window_start_ms });
            sample.usage.insert(Resource::Memory, Usage { value: m.memory_bytes, window_start_ms });
        }
        out.insert((*key).to_owned(), sample);
    }
    out.into_values().collect()
}

fn status_key(hpa: &ObjectKey) -> ObjectKey {
    ObjectKey { kind: Kind::AutoscalerStatus, namespace: hpa.namespace.clone(), name: hpa.name.clone() }
}

impl Agent {
    /// Runs every autoscaler whose decision falls to this node now.
    pub(super) fn autoscale(&mut self, now_ms: u64) {
        let me = self.cluster.me().0.clone();
        let mut live: Vec<String> = self.cluster.live_peers().map(|p| p.member.node_id.clone()).collect();
        live.push(me.clone());
        let hpas: Vec<HorizontalPodAutoscaler> =
            self.store.iter().filter_map(|s| s.object.as_autoscaler().cloned()).collect();
        self.autoscale_watch.retain(|k, _| hpas.iter().any(|h| h.key == *k));
        let period = self.cfg.hpa_sync_period.as_millis() as u64;
        for hpa in hpas {
            let status = self.autoscaler_status(&hpa.key);
            let last = status.as_ref().map(|s| duty::Action { seq: s.last.seq, by: s.last.by.clone() });
            let owner = duty::owner(&hpa.key.to_string(), live.iter().map(String::as_str));
            let watch =
                self.autoscale_watch.entry(hpa.key.clone()).or_insert_with(|| duty::Watch::new(now_ms));
            watch.observe(last, now_ms);
            if !watch.may_act(&me, owner, now_ms, period, HANDOVER.as_millis() as u64) {
                continue;
            }
            let seq = watch.next_seq();
            self.decide_autoscaler(&hpa, status, seq, now_ms);
        }
        // The status of a deleted autoscaler goes too, removed by the node that would decide.
        let orphans: Vec<ObjectKey> = self
            .store
            .iter()
            .filter_map(|s| s.object.as_autoscaler_status())
            .filter(|s| {
                let hpa = ObjectKey { kind: Kind::HorizontalPodAutoscaler, ..s.key.clone() };
                self.store.get(&hpa).is_none()
                    && duty::owner(&hpa.to_string(), live.iter().map(String::as_str)) == Some(me.as_str())
            })
            .map(|s| s.key.clone())
            .collect();
        for key in orphans {
            if let Err(e) = self.store.remove(&key) {
                tracing::warn!(%key, "removing the status of a deleted autoscaler: {e:#}");
            }
        }
    }

    fn autoscaler_status(&self, hpa: &ObjectKey) -> Option<AutoscalerStatus> {
        self.store.get(&status_key(hpa)).and_then(|s| s.object.as_autoscaler_status().cloned())
    }

    fn decide_autoscaler(
        &mut self,
        hpa: &HorizontalPodAutoscaler,
        status: Option<AutoscalerStatus>,
        seq: u64,
        now_ms: u64,
    ) {
        let me = self.cluster.me().0.clone();
        let target_key = hpa.target_key();
        let object = format!("horizontalpodautoscaler/{}", hpa.key.name);
        let target = self.store.get(&target_key).and_then(|s| s.object.as_workload().cloned());
        let prev_state = status.as_ref().map(|s| s.state.clone()).unwrap_or_default();
        let (record, state, metrics) = match &target {
            None => {
                let reason = format!(
                    "the target {} {} does not exist",
                    target_key.kind.as_str().to_lowercase(),
                    target_key.name
                );
                let record = DecisionRecord {
                    seq,
                    by: me.clone(),
                    at_ms: now_ms,
                    current_replicas: 0,
                    desired_replicas: 0,
                    reason,
                };
                (record, prev_state, vec![])
            }
            Some(target) => {
                let mine = self.claims();
                let mut claims: Vec<(&str, &crate::cluster::claims::ClaimState)> =
                    mine.iter().map(|(k, c)| (k.as_str(), c)).collect();
                for p in self.cluster.live_peers() {
                    claims.extend(p.claims.iter().map(|(k, c)| (k.as_str(), c)));
                }
                let usage = self.pod_metrics();
                let pods = samples(target, &claims, &usage);
                let (decision, state) = autoscale::decide(hpa, target.replicas, &pods, &prev_state, now_ms);
                if decision.rescale() {
                    let mut scaled = target.clone();
                    scaled.replicas = decision.desired_replicas;
                    let by = Source::Api(format!("autoscaler {}", hpa.key.name));
                    match self.store.put_keeping_source(scaled, by) {
                        Ok(_) => {
                            let msg = format!(
                                "New size: {}; reason: {}",
                                decision.desired_replicas, decision.reason
                            );
                            tracing::info!(hpa = %hpa.key, "{msg}");
                            self.events.normal(&object, "SuccessfulRescale", &msg);
                        }
                        Err(e) => {
                            let msg =
                                format!("New size: {}; could not write it: {e:#}", decision.desired_replicas);
                            self.events.warning(&object, "FailedRescale", &msg);
                        }
                    }
                }
                let record = DecisionRecord {
                    seq,
                    by: me.clone(),
                    at_ms: now_ms,
                    current_replicas: decision.current_replicas,
                    desired_replicas: decision.desired_replicas,
                    reason: decision.reason.clone(),
                };
                (record, state, decision.metrics)
            }
        };
        let mut rescales = status.map(|s| s.rescales).unwrap_or_default();
        if record.desired_replicas != record.current_replicas && target.is_some() {
            rescales.push(record.clone());
            let extra = rescales.len().saturating_sub(AutoscalerStatus::RECENT);
            rescales.drain(..extra);
        }
        let next = AutoscalerStatus { key: status_key(&hpa.key), last: record, rescales, state, metrics };
        if let Err(e) = self.store.put(next, Source::Api(format!("autoscaler {}", hpa.key.name))) {
            tracing::warn!(hpa = %hpa.key, "writing the autoscaler's status: {e:#}");
        }
    }

    /// `peer get hpa`: one row per autoscaler.
    pub(super) fn autoscaler_rows(&self) -> Vec<serde_json::Value> {
        let hpas: Vec<HorizontalPodAutoscaler> =
            self.store.iter().filter_map(|s| s.object.as_autoscaler().cloned()).collect();
        hpas.iter()
            .map(|h| {
                let status = self.autoscaler_status(&h.key);
                let replicas =
                    self.store.get(&h.target_key()).and_then(|s| s.object.as_workload().map(|w| w.replicas));
                let targets: Vec<String> = h
                    .metrics
                    .iter()
                    .map(|m| {
                        let current = status.as_ref().and_then(|s| {
                            s.metrics.iter().find(|c| c.resource == m.resource).and_then(|c| c.current)
                        });
                        format_target(m.resource, &m.target, current)
                    })
                    .collect();
                json!({
                    "name": h.key.name,
                    "namespace": h.key.namespace,
                    "reference": format!("{}/{}", h.scale_target.kind, h.scale_target.name),
                    "targets": targets.join(", "),
                    "minPods": h.min_replicas,
                    "maxPods": h.max_replicas,
                    "replicas": replicas,
                    "decidedBy": status.as_ref().map(|s| s.last.by.clone()),
                })
            })
            .collect()
    }

    /// `peer describe hpa NAME`.
    pub(super) fn describe_autoscaler(&self, namespace: String, name: String) -> Response {
        let key = ObjectKey { kind: Kind::HorizontalPodAutoscaler, namespace, name };
        let Some(h) = self.store.get(&key).and_then(|s| s.object.as_autoscaler().cloned()) else {
            return Response::Error {
                message: format!("horizontalpodautoscaler {}/{} not found", key.namespace, key.name),
            };
        };
        let status = self.autoscaler_status(&key);
        let me = self.cluster.me().0.clone();
        let mut live: Vec<String> = self.cluster.live_peers().map(|p| p.member.node_id.clone()).collect();
        live.push(me);
        let owner = duty::owner(&key.to_string(), live.iter().map(String::as_str)).map(str::to_owned);
        let replicas =
            self.store.get(&h.target_key()).and_then(|s| s.object.as_workload().map(|w| w.replicas));
        Response::Ok {
            data: json!({
                "name": h.key.name,
                "namespace": h.key.namespace,
                "reference": format!("{}/{}", h.scale_target.kind, h.scale_target.name),
                "metrics": h.metrics.iter().map(|m| {
                    let current = status.as_ref().and_then(|s| s.metrics.iter().find(|c| c.resource == m.resource).cloned());
                    json!({
                        "resource": m.resource.as_str(),
                        "target": format_target(m.resource, &m.target, current.as_ref().and_then(|c| c.current)),
                        "error": current.and_then(|c| c.error),
                    })
                }).collect::<Vec<_>>(),
                "minReplicas": h.min_replicas,
                "maxReplicas": h.max_replicas,
                "replicas": replicas,
                "behavior": h.behavior,
                "decidingNode": owner,
                "lastDecision": status.as_ref().map(|s| &s.last),
                "conditions": status.as_ref().map(|s| &s.state.conditions),
                "rescales": status.as_ref().map(|s| &s.rescales),
                "events": self.events.for_object(&format!("horizontalpodautoscaler/{}", h.key.name)).collect::<Vec<_>>(),
            }),
        }
    }
}

/// kubectl's TARGETS column: `cpu: 45%/70%`, `memory: 30Mi/100Mi`.
fn format_target(
    resource: Resource,
    target: &protocol::spec::autoscaler::MetricTarget,
    current: Option<autoscale::CurrentMetric>,
) -> String {
    use protocol::spec::autoscaler::MetricTarget;
    let quantity = |v: u64| match resource {
        Resource::Cpu => format!("{v}m"),
        Resource::Memory => format!("{}Mi", v / (1024 * 1024)),
    };
    let (now, want) = match target {
        MetricTarget::Utilization(p) => (
            current.and_then(|c| c.average_utilization).map_or("<unknown>".to_owned(), |u| format!("{u}%")),
            format!("{p}%"),
        ),
        MetricTarget::AverageValue(v) => {
            (current.map_or("<unknown>".to_owned(), |c| quantity(c.average_value)), quantity(*v))
        }
    };
    format!("{resource}: {now}/{want}")
}
