//! `peer drain`: the node is cordoned and evicts its pods one at a time, each only while
//! every PodDisruptionBudget covering it allows (from this node's view of which covered
//! pods are Ready anywhere). An evicted pod's claim goes at once, so placement starts it
//! on another node; the next eviction waits until the budget allows again.

use protocol::spec::Kind;

use super::Agent;
use crate::reconcile::Action;

impl Agent {
    /// Evicts at most one of this node's pods if it is draining and a budget allows.
    pub(super) fn drain_step(&mut self) {
        if !self.node.draining() {
            return;
        }
        let candidates: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| !p.deleting && p.workload.kind != Kind::DaemonSet)
            .map(|(k, _)| k.clone())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let view = self.pod_view();
        let budgets: Vec<_> = self.store.budgets().cloned().collect();
        for key in candidates {
            let Some(pod) = self.pods.get(&key) else { continue };
            let pod_ready = crate::status::pod_ready(pod);
            let blocked = budgets.iter().find(|b| {
                if !b.selects(&pod.namespace, &pod.template.labels) {
                    return false;
                }
                let covered: Vec<_> = view.iter().filter(|p| b.selects(&p.namespace, &p.labels)).collect();
                let ready = covered.iter().filter(|p| p.ready).count() as u32;
                !b.allows_eviction(covered.len() as u32, ready, pod_ready)
            });
            if let Some(b) = blocked {
                tracing::debug!(pod = %key, budget = %b.key, "eviction waits for the disruption budget");
                continue;
            }
            let object = super::pod_object(&key);
            tracing::info!(pod = %key, "draining: evicting");
            self.events.normal(&object, "Evicted", "the node is being drained");
            let grace = std::time::Duration::from_secs(pod.template.termination_grace_period_seconds);
            self.execute(Action::DeletePod { pod: key, grace });
            return;
        }
    }
}
