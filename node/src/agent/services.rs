//! The service table as this node sees it: gathering its inputs (every desired pod, where
//! placement put it, what its node claims) and the API answers about services.

use std::collections::BTreeMap;

use protocol::spec::{Kind, ObjectKey, Service};
use serde_json::json;

use super::placement::Planned;
use super::Agent;
use crate::api::Response;
use crate::cluster::claims::Claims;
use crate::reconcile::{self, DesiredPod};
use crate::services::{self, PodInfo, ServiceTable};

/// What the service table knows of each pod of the cluster: every desired pod that
/// placement put on a node, with its readiness from that node's claim (this node's own
/// included in `claims`). A pod that fits nowhere is no endpoint and is left out.
pub fn pod_infos(
    desired: &[DesiredPod],
    planned: &BTreeMap<String, Planned>,
    claims: &BTreeMap<&str, &Claims>,
) -> Vec<PodInfo> {
    desired
        .iter()
        .filter_map(|d| {
            let key = reconcile::pod_key(&d.namespace, &d.name);
            let node = planned.get(&key)?.node.clone()?;
            let claim = claims.get(node.as_str()).and_then(|c| c.get(&key));
            let ports = d
                .template
                .containers
                .iter()
                .flat_map(|c| c.ports.iter())
                .map(|p| (p.name.clone(), p.container_port, p.protocol))
                .collect();
            Some(PodInfo {
                namespace: d.namespace.clone(),
                name: d.name.clone(),
                node,
                ip: claim.and_then(|c| c.ip),
                ready: claim.is_some_and(|c| c.is_ready() && c.revision == d.revision),
                labels: d.template.labels.clone(),
                ports,
            })
        })
        .collect()
}

impl Agent {
    /// Every pod of the cluster with its node, address, labels and readiness, from this
    /// node's view (its own claims and the live peers').
    pub(super) fn pod_view(&self) -> Vec<PodInfo> {
        let me = self.cluster.me().0.clone();
        let mine = self.claims();
        let mut claims: BTreeMap<&str, &Claims> = BTreeMap::from([(me.as_str(), &mine)]);
        claims.extend(self.cluster.live_peers().map(|p| (p.member.node_id.as_str(), &p.claims)));
        let nodes: Vec<String> = claims.keys().map(|n| (*n).to_owned()).collect();
        let copies = protocol::rollout::index_copies(
            claims
                .values()
                .flat_map(|c| c.iter().map(|(k, c)| (k.as_str(), c.revision.as_str(), c.available))),
        );
        let budgets: Vec<_> = self.store.budgets().collect();
        let desired = reconcile::desired_pods(self.store.workloads(), &nodes, &copies, &budgets);
        pod_infos(&desired, &self.placement.planned, &claims)
    }

    /// Every service with its address, ports and endpoints, from this node's view.
    pub(super) fn service_table(&self) -> ServiceTable {
        let pods = self.pod_view();
        let services: Vec<&Service> = self.store.services().collect();
        services::table(&services, &pods, (self.cfg.net.services.addr, self.cfg.net.services.len))
    }

    /// `peer describe service`: the computed entry, what the manifest said, conflicts.
    pub(super) fn describe_service(&self, namespace: String, name: String) -> Response {
        let key = ObjectKey { kind: Kind::Service, namespace, name };
        let Some(stored) = self.store.get(&key) else {
            return Response::Error { message: format!("service {}/{} not found", key.namespace, key.name) };
        };
        let Some(spec) = stored.object.as_service() else {
            return Response::Error { message: format!("{key} is not a service") };
        };
        let mut table = self.service_table();
        let entry = table.services.remove(&(key.namespace.clone(), key.name.clone()));
        let prefix = format!("service {}/{}:", key.namespace, key.name);
        let data = json!({
            "service": entry,
            "selector": spec.selector,
            "targetPorts": spec.ports.iter().map(|p| p.target_port.to_string()).collect::<Vec<_>>(),
            "labels": spec.labels,
            "writtenBy": format!("node {}", stored.stamp.node),
            "conflicts": table.conflicts.iter().filter(|c| c.starts_with(&prefix)).collect::<Vec<_>>(),
        });
        Response::Ok { data }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::spec::{
        Container, ContainerPort, Kind, ObjectKey, PodTemplate, Protocol, Resources, RestartPolicy,
    };

    use super::*;
    use crate::cluster::claims::ClaimState;

    fn desired(name: &str, revision: &str) -> DesiredPod {
        DesiredPod {
            namespace: "default".into(),
            name: name.into(),
            workload: ObjectKey { kind: Kind::Deployment, namespace: "default".into(), name: "web".into() },
            revision: revision.into(),
            template: PodTemplate {
                labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
                containers: vec![Container {
                    name: "main".into(),
                    image: "peer-demo:latest".into(),
                    command: vec![],
                    args: vec![],
                    env: vec![],
                    working_dir: None,
                    ports: vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        protocol: Protocol::Tcp,
                        host_port: None,
                    }],
                    resources: Resources::default(),
                    probes: Default::default(),
                    pre_stop: None,
                    image_pull_policy: None,
                }],
                restart_policy: RestartPolicy::Always,
                termination_grace_period_seconds: 30,
                host_network: false,
                scheduling: Default::default(),
                image_pull_secrets: vec![],
            },
            ordinal: 0,
            node_name: None,
            ordered: false,
            create: true,
        }
    }

    fn claim(revision: &str, ready: bool) -> ClaimState {
        ClaimState {
            running: true,
            revision: revision.into(),
            since_ms: 1,
            status: "Running".into(),
            ready: (u32::from(ready), 1),
            restarts: 0,
            ip: Some(std::net::Ipv4Addr::new(10, 42, 0, 2)),
            available: ready,
        }
    }

    #[test]
    fn pods_take_their_node_and_readiness_from_placement_and_claims() {
        let pods = [desired("a", "r1"), desired("b", "r1"), desired("c", "r1"), desired("d", "r2")];
        let planned: BTreeMap<String, Planned> =
            [("a", Some("n1")), ("b", Some("n2")), ("c", None), ("d", Some("n2"))]
                .into_iter()
                .map(|(p, node)| {
                    let revision = if p == "d" { "r2" } else { "r1" };
                    let workload = pods[0].workload.clone();
                    (
                        format!("default/{p}"),
                        Planned { workload, revision: revision.into(), node: node.map(Into::into) },
                    )
                })
                .collect();
        let n1: Claims = BTreeMap::from([("default/a".to_owned(), claim("r1", true))]);
        // `d` still runs its old revision on n2: not ready as the desired pod.
        let n2: Claims = BTreeMap::from([
            ("default/b".to_owned(), claim("r1", false)),
            ("default/d".to_owned(), claim("r1", true)),
        ]);
        let claims = BTreeMap::from([("n1", &n1), ("n2", &n2)]);
        let infos = pod_infos(&pods, &planned, &claims);
        let seen: Vec<(&str, &str, bool)> =
            infos.iter().map(|p| (p.name.as_str(), p.node.as_str(), p.ready)).collect();
        assert_eq!(seen, vec![("a", "n1", true), ("b", "n2", false), ("d", "n2", false)]);
        assert_eq!(infos[0].ports, vec![(Some("http".to_owned()), 8080, Protocol::Tcp)]);
        assert_eq!(
            infos[0].ip,
            Some(std::net::Ipv4Addr::new(10, 42, 0, 2)),
            "the address comes from the claim"
        );
        assert_eq!(infos[2].ip, infos[0].ip);
    }
}
