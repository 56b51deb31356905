//! A Kubernetes `v1 Service` as peer keeps it: a stable virtual address and ports in front
//! of the ready pods its selector matches. Plain data; the addresses and endpoints every
//! node computes from it live in `node::services`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use super::{ObjectKey, Protocol};
use crate::desired::Stamp;

/// The service CIDR when the node configures none (k3s' default).
pub const DEFAULT_SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 43, 0, 0), 16);

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when not given: 3 hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ObjectKey,
    /// Labels of the object itself (metadata.labels).
    pub labels: BTreeMap<String, String>,
    pub service_type: ServiceType,
    pub cluster_ip: ClusterIp,
    pub ports: Vec<ServicePort>,
    /// Pods whose labels include all of these are endpoints. Empty: the service has no
    /// selector and so no endpoints (Kubernetes leaves those to the user).
    pub selector: BTreeMap<String, String>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds; `None` for `None`.
    pub session_affinity: Option<u32>,
    /// The stamp of the write that created the service, carried over by every update
    /// (`DesiredState::put`), so allocation order, and so every address, is stable.
    /// `None` only before the first write.
    pub created: Option<Stamp>,
}

/// What the service is reachable on besides its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    /// A virtual address inside the cluster (or none when headless).
    ClusterIp,
    /// A cluster address plus a port on every node.
    NodePort,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// `spec.clusterIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterIp {
    /// Not given: every node computes the same address from the set of services.
    Allocate,
    /// `None`: headless, the name resolves to the endpoints themselves.
    Headless,
    /// Given in the manifest (inside the service CIDR).
    Fixed(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Required when the service has more than one port.
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    /// Given in the manifest (NodePort services only); otherwise allocated.
    pub node_port: Option<u16>,
}

/// Where a service port goes on each endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod.
    Name(String),
}

impl std::fmt::Display for TargetPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => f.write_str(n),
        }
    }
}
