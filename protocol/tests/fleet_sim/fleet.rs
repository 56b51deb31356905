//! The simulated fleet: nodes as placement sees them, workloads as users write them, and
//! the expansion of desired state into the replicas placement places.

use std::collections::BTreeMap;

use protocol::desired::DesiredState;
use protocol::placement::{
    NodeView, ReplicaReq, Resources, Taint, TaintEffect, Toleration, TolerationOperator, TopologySpread,
};
use protocol::spec::{
    Container, Kind, ObjectKey, PodManagement, PodTemplate, ResourceList, Resources as ContainerResources,
    RestartPolicy, Scheduling, Strategy, Workload,
};

use super::rng::Rng;

/// Node `i`'s id. The simulation finds a node's index from its id (`index_of`).
pub fn node_id(i: usize) -> String {
    format!("n{i:04}")
}

pub fn index_of(id: &str) -> usize {
    id[1..].parse().expect("simulated node ids are n<index>")
}

/// `n` nodes in 5 zones with 2–8 cores of 1,000 m CPU and 1 GiB each; a quarter with
/// `disk=ssd`, one in twenty tainted `gpu=1:NoSchedule`.
pub fn nodes(rng: &mut Rng, n: usize) -> Vec<NodeView> {
    (0..n)
        .map(|i| {
            let cores = 2 + rng.below(7);
            // As the node agent does, the id is also the `kubernetes.io/hostname` label.
            let mut labels = BTreeMap::from([
                ("zone".to_owned(), format!("z{}", rng.below(5))),
                ("kubernetes.io/hostname".to_owned(), node_id(i)),
            ]);
            if rng.below(4) == 0 {
                labels.insert("disk".into(), "ssd".into());
            }
            let taints = if rng.below(20) == 0 {
                vec![Taint { key: "gpu".into(), value: "1".into(), effect: TaintEffect::NoSchedule }]
            } else {
                vec![]
            };
            NodeView {
                id: node_id(i),
                labels,
                taints,
                capacity: Resources { cpu_millis: cores * 1000, memory_bytes: cores << 30 },
                cordoned: false,
            }
        })
        .collect()
}

/// Workload `w` of `kind` with `replicas`: 100–400 m CPU and 64–320 MiB in two containers;
/// every fifth anti-affine, every seventh spread over zones, every eleventh on `disk=ssd`,
/// every thirteenth tolerating `gpu`.
pub fn workload(rng: &mut Rng, kind: Kind, w: usize, replicas: u32) -> Workload {
    let cpu = 100 + 50 * rng.below(7);
    let mem = (64 + 32 * rng.below(9)) << 20;
    let container = |name: &str, cpu: u64, mem: u64| Container {
        name: name.into(),
        image: "peer-demo:latest".into(),
        command: vec![],
        args: vec![],
        env: vec![],
        working_dir: None,
        ports: vec![],
        resources: ContainerResources {
            requests: ResourceList { cpu_millis: Some(cpu), memory_bytes: Some(mem) },
            limits: ResourceList::default(),
        },
        probes: Default::default(),
        pre_stop: None,
        image_pull_policy: None,
    };
    let mut scheduling = Scheduling {
        anti_affinity_by_hostname: w % 5 == 0,
        topology_spread: (w % 7 == 0).then(|| TopologySpread { topology_key: "zone".into(), max_skew: 1 }),
        ..Scheduling::default()
    };
    if w % 11 == 0 {
        scheduling.node_selector.insert("disk".into(), "ssd".into());
    }
    if w % 13 == 0 {
        scheduling.tolerations.push(Toleration {
            key: "gpu".into(),
            operator: TolerationOperator::Exists,
            ..Toleration::default()
        });
    }
    let prefix = if kind == Kind::StatefulSet { "db" } else { "app" };
    Workload {
        key: ObjectKey { kind, namespace: "default".into(), name: format!("{prefix}-{w}") },
        labels: BTreeMap::new(),
        replicas,
        selector: BTreeMap::new(),
        strategy: Strategy::Recreate,
        // The simulated agent starts ordinals in any order.
        pod_management: PodManagement::Parallel,
        rollout: Default::default(),
        template: PodTemplate {
            labels: BTreeMap::new(),
            // The sidecar has no memory request: requests are summed per resource.
            containers: vec![container("main", cpu - 50, mem), container("sidecar", 50, 0)],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            host_network: false,
            scheduling,
            image_pull_secrets: vec![],
        },
    }
}

/// The sum of the containers' requests (a container without a request counts its limit,
/// as the node agent does; without either, 0).
/// Whether a replica belongs to a StatefulSet (fenced: at most one copy at any instant).
pub fn is_stateful(r: &ReplicaReq) -> bool {
    r.workload.starts_with("StatefulSet/")
}

/// The replicas of a desired state, in identity order. Replica `i` of Deployment `D` in
/// namespace `ns` at template revision `rev` is `ns/D-rev-i`; of StatefulSet `S` it is
/// `ns/S-i` (a StatefulSet replica keeps its identity across revisions); a bare Pod is
/// `ns/P`. `workload` is the object key (`Kind/ns/name`). As in the node agent
/// (`node::agent::placement::replica_req`), every replica spreads over hosts
/// (anti-affinity), as Kubernetes' default spread does. DaemonSets are not simulated.
pub fn replicas(state: &DesiredState) -> Vec<ReplicaReq> {
    let mut out = Vec::new();
    for w in state.workloads() {
        let base = w.template.replica_req(w.key.to_string(), String::new(), None);
        let ns = &w.key.namespace;
        let name = &w.key.name;
        let identities: Vec<String> = match w.key.kind {
            Kind::Deployment => {
                let rev = w.template.revision_hash();
                (0..w.replicas).map(|i| format!("{ns}/{name}-{rev}-{i}")).collect()
            }
            Kind::StatefulSet => (0..w.replicas).map(|i| format!("{ns}/{name}-{i}")).collect(),
            Kind::Pod => vec![format!("{ns}/{name}")],
            Kind::DaemonSet
            | Kind::Service
            | Kind::PodDisruptionBudget
            | Kind::HorizontalPodAutoscaler
            | Kind::AutoscalerStatus
            | Kind::Secret => {
                vec![]
            }
        };
        out.extend(identities.into_iter().map(|identity| ReplicaReq { identity, ..base.clone() }));
    }
    out.sort_by(|a, b| a.identity.cmp(&b.identity));
    out
}
