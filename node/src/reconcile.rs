//! The reconciler: a pure function from desired pods and observed pods to actions.
//!
//! No I/O, no clocks: `now_ms` comes in as an argument and effects go out as
//! [`Action`]s that the agent's executor carries out. The executor reports back by
//! changing the observed state (see `agent::pods`), and calls [`reconcile`] again.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::spec::{
    DisruptionBudget, Kind, ObjectKey, PodManagement, PodTemplate, RestartPolicy, Revision, Workload,
};
use serde::{Deserialize, Serialize};

/// A container that ran at least this long before exiting has its back-off reset.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// The first back-off after the immediate first restart; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// One replica the desired state asks this node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPod {
    pub namespace: String,
    pub name: String,
    pub workload: ObjectKey,
    pub revision: String,
    pub template: PodTemplate,
    /// The replica's index in its workload (a StatefulSet's ordinal); 0 for others.
    pub ordinal: u32,
    /// A DaemonSet pod's node.
    pub node_name: Option<String>,
    /// An `OrderedReady` StatefulSet pod: it starts once the lower ordinals run.
    pub ordered: bool,
    /// False for an old revision's copy a rollout keeps for now: it may stay where it
    /// runs but is never created again.
    pub create: bool,
}

/// What the node knows about a pod it runs (or is starting or stopping).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedPod {
    pub namespace: String,
    pub name: String,
    pub workload: ObjectKey,
    pub revision: String,
    pub template: PodTemplate,
    /// Set once a stop was decided; the pod is gone when the executor removes it.
    pub deleting: bool,
    pub created_at_ms: u64,
    pub containers: BTreeMap<String, ObservedContainer>,
    /// The pod's address on the node's bridge; `None` for host-network pods.
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// When the pod last became Ready (this node's clock); `None` while it is not.
    #[serde(default)]
    pub ready_since_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub state: ContainerState,
    pub restart_count: u32,
    /// Consecutive restarts without a run of [`BACKOFF_RESET`]; drives the back-off.
    pub failures: u32,
    pub last_termination: Option<Terminated>,
    /// The startup probe passed (or there is none) since the container last started.
    #[serde(default)]
    pub started: bool,
    /// Running, started, and its readiness probe passes (or there is none).
    #[serde(default)]
    pub ready: bool,
}

impl ObservedContainer {
    /// A container not created yet.
    pub fn creating() -> ObservedContainer {
        ObservedContainer {
            state: ContainerState::Creating,
            restart_count: 0,
            failures: 0,
            last_termination: None,
            started: false,
            ready: false,
        }
    }

    /// Moves to `state`; probe results belong to the instance that ran, so they reset.
    pub fn set_state(&mut self, state: ContainerState) {
        self.state = state;
        self.started = false;
        self.ready = false;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// The executor is creating or starting it.
    Creating,
    Running {
        pid: i32,
        start_time: u64,
        started_at_ms: u64,
    },
    /// Stopping (SIGTERM sent, grace period running).
    Stopping,
    Terminated(Terminated),
    /// Could not be created (bad image, runtime error); retried after `retry_at_ms`.
    Waiting {
        reason: String,
        message: String,
        retry_at_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    /// `None` when the exit status could not be known (e.g. exited while the agent was down).
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Kubernetes' reason: Completed, Error, OOMKilled, Unknown.
    pub reason: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// An effect for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the pod's sandbox and start all its containers.
    CreatePod(Box<DesiredPod>),
    /// (Re)start one container of an existing pod.
    StartContainer { pod: String, container: String },
    /// Stop every container (SIGTERM, grace, SIGKILL), then remove the pod.
    DeletePod { pod: String, grace: Duration },
}

/// The reconciler's output: actions now, and when to call it again at the latest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub wake_at_ms: Option<u64>,
}

/// Expands workloads into every pod the cluster should run, in a deterministic order;
/// placement then picks this node's share.
///
/// Replica `i` of Deployment `api` at template revision `r` is pod `api-r-i`; a bare Pod
/// keeps its own name; StatefulSet `db` has pods `db-0`, `db-1`, … (stable across
/// revisions); DaemonSet `agent` has one pod `agent-NODE` per node in `nodes`. A changed
/// Deployment template gives new names, so old replicas are replaced; a StatefulSet or
/// DaemonSet pod keeps its name and is recreated at the new revision. Scaling down
/// drops the highest indices.
pub fn desired_pods<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    nodes: &[String],
    copies: &BTreeMap<(String, String), Vec<protocol::rollout::Copy>>,
    budgets: &[&DisruptionBudget],
) -> Vec<DesiredPod> {
    let workloads: Vec<&Workload> = workloads.into_iter().collect();
    let mut pods = Vec::new();
    for w in &workloads {
        let revision = w.template.revision_hash();
        let pod = |name: String, ordinal: u32, node_name: Option<String>| DesiredPod {
            namespace: w.key.namespace.clone(),
            name,
            workload: w.key.clone(),
            revision: revision.clone(),
            template: w.template.clone(),
            ordinal,
            node_name,
            ordered: w.key.kind == Kind::StatefulSet && w.pod_management == PodManagement::OrderedReady,
            create: true,
        };
        match w.key.kind {
            Kind::Pod => pods.push(pod(w.key.name.clone(), 0, None)),
            Kind::Deployment => {
                let seen = copies.get(&(w.key.namespace.clone(), w.key.name.clone()));
                let seen = seen.map_or(&[][..], Vec::as_slice);
                let mut gates = protocol::rollout::Gates {
                    paused: w.rollout.paused,
                    disruptions: disruptions(w, &workloads, budgets, copies),
                };
                // Paused after a rollout finished: the revision that runs stays in charge
                // (it scales and replaces lost copies) until the rollout resumes.
                let (revision, template) = match running_revision(w, seen) {
                    Some(r) if gates.paused => {
                        gates.paused = false;
                        (r.template.revision_hash(), &r.template)
                    }
                    _ => (revision.clone(), &w.template),
                };
                let step = protocol::rollout::step(w.replicas, &w.strategy, &revision, seen, &gates);
                let replica = |rev: &str, i: u32, create: bool| DesiredPod {
                    revision: rev.to_owned(),
                    template: template.clone(),
                    create,
                    ..pod(format!("{}-{}-{}", w.key.name, rev, i), i, None)
                };
                pods.extend((0..step.new).map(|i| replica(&revision, i, true)));
                pods.extend(step.keep_old.iter().map(|(old, i)| replica(old, *i, false)));
            }
            Kind::StatefulSet => {
                pods.extend((0..w.replicas).map(|i| pod(format!("{}-{}", w.key.name, i), i, None)))
            }
            Kind::DaemonSet => {
                pods.extend(nodes.iter().map(|n| pod(format!("{}-{}", w.key.name, n), 0, Some(n.clone()))));
            }
            Kind::Service
            | Kind::PodDisruptionBudget
            | Kind::HorizontalPodAutoscaler
            | Kind::AutoscalerStatus
            | Kind::Secret => {}
        }
    }
    pods
}

/// The earlier revision every seen copy of a paused Deployment runs, if there is one
/// such revision and its template is in the history.
fn running_revision<'w>(w: &'w Workload, seen: &[protocol::rollout::Copy]) -> Option<&'w Revision> {
    if !w.rollout.paused {
        return None;
    }
    let first = &seen.first()?.revision;
    if !seen.iter().all(|c| &c.revision == first) {
        return None;
    }
    w.rollout.history.iter().rev().find(|r| &r.template.revision_hash() == first)
}

/// How many Ready copies the PodDisruptionBudgets covering Deployment `w` let a rollout
/// take away now: the least over those budgets of Ready copies of the Deployments each
/// covers, less what it needs Ready of their replicas. `None` when no budget covers `w`.
fn disruptions(
    w: &Workload,
    workloads: &[&Workload],
    budgets: &[&DisruptionBudget],
    copies: &BTreeMap<(String, String), Vec<protocol::rollout::Copy>>,
) -> Option<u32> {
    budgets
        .iter()
        .filter(|b| b.selects(&w.key.namespace, &w.template.labels))
        .map(|b| {
            let covered = workloads.iter().filter(|o| {
                o.key.kind == Kind::Deployment && b.selects(&o.key.namespace, &o.template.labels)
            });
            let (expected, ready) = covered.fold((0u32, 0u32), |(expected, ready), o| {
                let seen = copies.get(&(o.key.namespace.clone(), o.key.name.clone()));
                let r = seen.map_or(0, |c| c.iter().filter(|c| c.ready).count() as u32);
                (expected.saturating_add(o.replicas), ready.saturating_add(r))
            });
            ready.saturating_sub(b.min_ready(expected))
        })
        .min()
}

/// Pod names are unique per namespace; the node keys pods by `namespace/name`.
pub fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Back-off before restart number `failures + 1`: none for the first restart, then
/// 10 s doubling up to 5 min (Kubernetes' CrashLoopBackOff).
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = (failures - 1).min(16);
    (BACKOFF_INITIAL * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// Whether a terminated container is restarted under `policy`.
pub fn should_restart(policy: RestartPolicy, t: &Terminated) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => t.exit_code != Some(0),
        RestartPolicy::Never => false,
    }
}

/// When a terminated container is due to restart, if it is to be restarted at all.
pub fn restart_due_ms(policy: RestartPolicy, c: &ObservedContainer) -> Option<u64> {
    match &c.state {
        ContainerState::Terminated(t) if should_restart(policy, t) => {
            Some(t.finished_at_ms + backoff(c.failures).as_millis() as u64)
        }
        ContainerState::Waiting { retry_at_ms, .. } => Some(*retry_at_ms),
        _ => None,
    }
}

/// Decides what to do. `observed` is keyed by [`pod_key`].
pub fn reconcile(desired: &[DesiredPod], observed: &BTreeMap<String, ObservedPod>, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    let wanted: BTreeMap<String, &DesiredPod> =
        desired.iter().map(|d| (pod_key(&d.namespace, &d.name), d)).collect();

    // Stop what is not wanted, or wanted at another revision.
    for (key, pod) in observed {
        if pod.deleting {
            continue;
        }
        let keep = wanted.get(key).is_some_and(|d| d.revision == pod.revision);
        if !keep {
            plan.actions.push(Action::DeletePod {
                pod: key.clone(),
                grace: Duration::from_secs(pod.template.termination_grace_period_seconds),
            });
        }
    }

    for (key, d) in &wanted {
        match observed.get(key) {
            None if !d.create => {}
            None => {
                // A StatefulSet's or DaemonSet's pod keeps its name across revisions: its new
                // revision starts once no pod of another revision is left on this node.
                // (A Deployment's rollout is decided cluster-wide: `rollout::step`.)
                let old_left = d.workload.kind != Kind::Deployment
                    && observed.values().any(|p| p.workload == d.workload && p.revision != d.revision);
                if !old_left {
                    plan.actions.push(Action::CreatePod(Box::new((*d).clone())));
                }
            }
            Some(pod) if pod.deleting || pod.revision != d.revision => {}
            Some(pod) => {
                for (name, c) in &pod.containers {
                    let Some(due) = restart_due_ms(pod.template.restart_policy, c) else {
                        continue;
                    };
                    if due <= now_ms {
                        plan.actions
                            .push(Action::StartContainer { pod: key.clone(), container: name.clone() });
                    } else {
                        plan.wake_at_ms = Some(plan.wake_at_ms.map_or(due, |w| w.min(due)));
                    }
                }
            }
        }
    }
    plan
}

/// Kubernetes' pod phase, derived from the containers.
pub fn pod_phase(pod: &ObservedPod) -> &'static str {
    let states: Vec<&ContainerState> = pod.containers.values().map(|c| &c.state).collect();
    if pod.deleting {
        return "Terminating";
    }
    if states.iter().any(|s| matches!(s, ContainerState::Running { .. })) {
        return "Running";
    }
    let all_done = states.iter().all(|s| matches!(s, ContainerState::Terminated(_)));
    if all_done && !states.is_empty() {
        let restarts =
            pod.containers.values().any(|c| restart_due_ms(pod.template.restart_policy, c).is_some());
        if !restarts {
            let failed =
                states.iter().any(|s| matches!(s, ContainerState::Terminated(t) if t.exit_code != Some(0)));
            return if failed { "Failed" } else { "Succeeded" };
        }
        return "Running";
    }
    "Pending"
}

#[cfg(test)]
mod tests;
