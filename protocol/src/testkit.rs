//! Test helpers: small workloads, stamps and proptest strategies for random replicas.

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::desired::{DesiredState, Entry, NodeId, Stamp};
use crate::spec::autoscaler::{Behavior, MetricSpec, MetricTarget, Resource, ScaleTarget};
use crate::spec::{
    ClusterIp, Container, HorizontalPodAutoscaler, Kind, ObjectKey, PodTemplate, Protocol, RestartPolicy,
    Service, ServicePort, ServiceType, Strategy as Rollout, TargetPort, Workload,
};

pub fn key(i: u8) -> ObjectKey {
    ObjectKey { kind: Kind::Deployment, namespace: "default".into(), name: format!("app-{i}") }
}

/// A workload whose content depends on `variant`, so different writes differ.
pub fn workload(i: u8, variant: u32) -> Workload {
    Workload {
        key: key(i),
        labels: BTreeMap::from([("app".to_string(), format!("app-{i}"))]),
        replicas: variant,
        selector: BTreeMap::new(),
        strategy: Rollout::Recreate,
        pod_management: Default::default(),
        rollout: Default::default(),
        template: PodTemplate {
            labels: BTreeMap::new(),
            containers: vec![Container::new("main", format!("demo:{variant}"))],
            restart_policy: RestartPolicy::Always,
            termination_grace_period_seconds: 30,
            host_network: false,
            scheduling: Default::default(),
            image_pull_secrets: vec![],
        },
    }
}

/// A ClusterIP service `svc-{i}` selecting `app: app-{i}`, port 80 to the port named http.
pub fn service(i: u8) -> Service {
    Service {
        key: ObjectKey { kind: Kind::Service, namespace: "default".into(), name: format!("svc-{i}") },
        labels: BTreeMap::new(),
        service_type: ServiceType::ClusterIp,
        cluster_ip: ClusterIp::Allocate,
        ports: vec![ServicePort {
            name: None,
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Name("http".into()),
            node_port: None,
        }],
        selector: BTreeMap::from([("app".to_string(), format!("app-{i}"))]),
        session_affinity: None,
        created: None,
    }
}

/// An autoscaler `hpa-{i}` of Deployment `app-{i}`: 1 to 10 replicas at 50 % cpu.
pub fn autoscaler(i: u8) -> HorizontalPodAutoscaler {
    HorizontalPodAutoscaler {
        key: ObjectKey {
            kind: Kind::HorizontalPodAutoscaler,
            namespace: "default".into(),
            name: format!("hpa-{i}"),
        },
        labels: BTreeMap::new(),
        scale_target: ScaleTarget { kind: Kind::Deployment, name: format!("app-{i}") },
        min_replicas: 1,
        max_replicas: 10,
        metrics: vec![MetricSpec { resource: Resource::Cpu, target: MetricTarget::Utilization(50) }],
        behavior: Behavior::default(),
    }
}

pub fn stamp(lamport: u64, node: &str) -> Stamp {
    Stamp { lamport, node: NodeId(node.into()), incarnation: 1 }
}

/// A random (key, entry) over few keys, nodes and lamports so that conflicts are common.
/// The same stamp may carry different values (a tombstone or not), which real clocks never
/// produce; it exercises the value-hash tie-break.
pub fn arb_entry() -> impl proptest::strategy::Strategy<Value = (ObjectKey, Entry)> {
    (0u8..6, 1u64..20, 0u8..3, prop::bool::weighted(0.25)).prop_map(|(k, lamport, node, tomb)| {
        let node_name = ["a", "b", "c"][usize::from(node)];
        let variant = u32::try_from(lamport).unwrap_or(0) * 10 + u32::from(node);
        let value = if tomb { None } else { Some(workload(k, variant).into()) };
        (key(k), Entry { stamp: stamp(lamport, node_name), value })
    })
}

/// A random replica: entries merged in, then (when `floors`) perhaps a GC floor, as if a
/// peer had collected tombstones.
pub fn arb_state(floors: bool) -> impl proptest::strategy::Strategy<Value = DesiredState> {
    (prop::collection::vec(arb_entry(), 0..12), prop::option::weighted(0.3, 1u64..20)).prop_map(
        move |(entries, floor)| {
            let floor = floor.filter(|_| floors);
            let mut s = DesiredState::new();
            for (k, e) in entries {
                s.merge_entry(k, e, None).expect("keys match by construction");
            }
            s.raise_floor(floor.map(|l| stamp(l, "b")).as_ref());
            s
        },
    )
}
