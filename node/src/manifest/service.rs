//! `v1 Service` to peer's `Service`: Kubernetes' defaults and validation.
//!
//! `type` ClusterIP (default) and NodePort are implemented; LoadBalancer is treated as
//! NodePort with a warning (no external load balancer exists); ExternalName is ignored
//! with a warning before it gets here (`Doc::parse`). Addresses and node ports not given
//! are allocated later, by the same pure rule on every node (`node::services`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{self as core, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use protocol::spec::service::{DEFAULT_AFFINITY_TIMEOUT_SECONDS, DEFAULT_SERVICE_CIDR, NODE_PORT_RANGE};
use protocol::spec::{ClusterIp, Kind, Protocol, Service, ServicePort, ServiceType, TargetPort};

use super::container::protocol;
use super::convert::{is_dns_label, object_key};
use super::diagnostic::{index, FieldError, Note};

#[cfg(test)]
mod tests;

const LOAD_BALANCER_NOTE: &str = "LoadBalancer is not implemented by peer: treated as NodePort (each port is also opened on every node), no external load balancer is provisioned";
const NO_SELECTOR_NOTE: &str = "the service has no selector, so it gets no endpoints (peer does not read Endpoints or EndpointSlice objects)";

/// A Service as peer keeps it.
pub(crate) fn service(s: &core::Service, notes: &mut Vec<Note>) -> Result<Service, FieldError> {
    let key = object_key(Kind::Service, &s.metadata)?;
    let default = ServiceSpec::default();
    let spec = s.spec.as_ref().unwrap_or(&default);
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => {
            notes.push(("spec.type".to_owned(), LOAD_BALANCER_NOTE.to_owned()));
            ServiceType::NodePort
        }
        Some(other) => {
            return Err(FieldError::new(
                "spec.type",
                format!("expected ClusterIP, NodePort, LoadBalancer or ExternalName, got {other:?}"),
            ))
        }
    };
    let cluster_ip = cluster_ip(spec, notes)?;
    if cluster_ip == ClusterIp::Headless && service_type == ServiceType::NodePort {
        return Err(FieldError::new(
            "spec.clusterIP",
            "a headless service (clusterIP: None) cannot have type NodePort or LoadBalancer",
        ));
    }
    let ports = ports(spec.ports.as_deref().unwrap_or_default(), service_type)?;
    if ports.is_empty() && cluster_ip != ClusterIp::Headless {
        return Err(FieldError::new("spec.ports", "required field is missing: a service needs at least one port unless it is headless (clusterIP: None)"));
    }
    let selector = spec.selector.clone().unwrap_or_default();
    if selector.is_empty() {
        notes.push(("spec.selector".to_owned(), NO_SELECTOR_NOTE.to_owned()));
    }
    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECONDS),
                Some(t) if (1..=86_400).contains(&t) => Some(t as u32),
                Some(t) => {
                    return Err(FieldError::new(
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("expected seconds between 1 and 86400, got {t}"),
                    ))
                }
            }
        }
        Some(other) => {
            return Err(FieldError::new(
                "spec.sessionAffinity",
                format!("expected None or ClientIP, got {other:?}"),
            ))
        }
    };
    Ok(Service {
        labels: s.metadata.labels.clone().unwrap_or_default(),
        key,
        service_type,
        cluster_ip,
        ports,
        selector,
        session_affinity,
        created: None,
    })
}

/// `spec.clusterIP` (or the first of `spec.clusterIPs`): empty to allocate, `None` for
/// headless, else an IPv4 address inside the service CIDR.
fn cluster_ip(spec: &ServiceSpec, notes: &mut Vec<Note>) -> Result<ClusterIp, FieldError> {
    let list = spec.cluster_ips.as_deref().unwrap_or_default();
    if list.len() > 1 {
        notes.push((
            "spec.clusterIPs[1]".to_owned(),
            "peer is IPv4 only: only the first cluster address is used".to_owned(),
        ));
    }
    let (path, given) = match (spec.cluster_ip.as_deref(), list.first()) {
        (Some(ip), Some(first)) if !ip.is_empty() && ip != first => {
            return Err(FieldError::new(
                "spec.clusterIPs[0]",
                format!("must equal spec.clusterIP {ip:?} when both are given, got {first:?}"),
            ))
        }
        (Some(ip), _) if !ip.is_empty() => ("spec.clusterIP", ip),
        (_, Some(first)) => ("spec.clusterIPs[0]", first.as_str()),
        _ => return Ok(ClusterIp::Allocate),
    };
    if given.is_empty() {
        return Ok(ClusterIp::Allocate);
    }
    if given == "None" {
        return Ok(ClusterIp::Headless);
    }
    let (net, bits) = DEFAULT_SERVICE_CIDR;
    let ip: Ipv4Addr = given.parse().map_err(|_| {
        FieldError::new(
            path,
            format!("expected an IPv4 address in {net}/{bits}, \"None\" or nothing, got {given:?}"),
        )
    })?;
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    let inside = u32::from(ip) & mask == u32::from(net);
    let host = u32::from(ip) & !mask;
    if !inside || host == 0 || host == !mask {
        return Err(FieldError::new(
            path,
            format!("{ip} is not a usable address of the service CIDR {net}/{bits}"),
        ));
    }
    Ok(ClusterIp::Fixed(ip))
}

fn ports(ports: &[core::ServicePort], service_type: ServiceType) -> Result<Vec<ServicePort>, FieldError> {
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let path = index("spec.ports", i);
        let port = u16::try_from(p.port).ok().filter(|n| *n != 0).ok_or_else(|| {
            FieldError::new(
                format!("{path}.port"),
                format!("expected a port number between 1 and 65535, got {}", p.port),
            )
        })?;
        let name = p.name.clone().filter(|n| !n.is_empty());
        match &name {
            None if ports.len() > 1 => {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    "required field is missing: every port of a service with several ports needs a name",
                ))
            }
            Some(n) if !is_dns_label(n) => {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    format!("expected lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters, got {n:?}"),
                ))
            }
            Some(n) if !names.insert(n.clone()) => {
                return Err(FieldError::new(format!("{path}.name"), format!("duplicate port name {n:?}")))
            }
            _ => {}
        }
        let protocol = protocol(&path, p.protocol.as_deref())?;
        if !seen.insert((port, protocol == Protocol::Udp)) {
            return Err(FieldError::new(
                format!("{path}.port"),
                format!("duplicate port {port} with protocol {}", protocol_name(protocol)),
            ));
        }
        let target_port = target_port(&path, p.target_port.as_ref(), port)?;
        let node_port = match (p.node_port, service_type) {
            (None | Some(0), _) => None,
            (Some(n), ServiceType::ClusterIp) => {
                return Err(FieldError::new(
                    format!("{path}.nodePort"),
                    format!("may not be used when type is ClusterIP, got {n}"),
                ))
            }
            (Some(n), ServiceType::NodePort) => {
                let n = u16::try_from(n).ok().filter(|n| NODE_PORT_RANGE.contains(n)).ok_or_else(|| {
                    FieldError::new(
                        format!("{path}.nodePort"),
                        format!(
                            "expected a port between {} and {}, got {n}",
                            NODE_PORT_RANGE.start(),
                            NODE_PORT_RANGE.end()
                        ),
                    )
                })?;
                if !node_ports.insert(n) {
                    return Err(FieldError::new(
                        format!("{path}.nodePort"),
                        format!("duplicate nodePort {n}"),
                    ));
                }
                Some(n)
            }
        };
        out.push(ServicePort { name, protocol, port, target_port, node_port });
    }
    Ok(out)
}

/// `targetPort`: a number, a container port name, or the service port when absent (or 0
/// or empty, as Kubernetes defaults it).
fn target_port(path: &str, given: Option<&IntOrString>, port: u16) -> Result<TargetPort, FieldError> {
    let path = format!("{path}.targetPort");
    match given {
        None => Ok(TargetPort::Number(port)),
        Some(IntOrString::Int(0)) => Ok(TargetPort::Number(port)),
        Some(IntOrString::Int(n)) => u16::try_from(*n).map(TargetPort::Number).map_err(|_| {
            FieldError::new(path, format!("expected a port number between 1 and 65535, got {n}"))
        }),
        Some(IntOrString::String(s)) if s.is_empty() => Ok(TargetPort::Number(port)),
        Some(IntOrString::String(s)) if s.parse::<u16>().is_ok() => {
            Err(FieldError::new(path, format!("expected a number or a port name, got the string {s:?}: write it without quotes")))
        }
        Some(IntOrString::String(s)) if is_port_name(s) => Ok(TargetPort::Name(s.clone())),
        Some(IntOrString::String(s)) => Err(FieldError::new(
            path,
            format!("expected a container port name (at most 15 lowercase letters, digits and '-', with a letter), got {s:?}"),
        )),
    }
}

/// Kubernetes' IANA_SVC_NAME: a container port name.
fn is_port_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    s.len() <= 15
        && s.chars().all(ok)
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}
