//! Kubernetes containers to peer's: image, command, env, ports and cpu/memory resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{self as core, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use protocol::spec::{Container, ContainerPort, EnvVar, Protocol, PullPolicy, ResourceList, Resources};

use super::convert::is_dns_label;
use super::diagnostic::{index, join, FieldError, Note};
use super::quantity;

/// The containers of a pod spec at `prefix`; at least one, with unique names.
pub(crate) fn containers(
    prefix: &str,
    containers: &[core::Container],
    notes: &mut Vec<Note>,
) -> Result<Vec<Container>, FieldError> {
    let list = format!("{prefix}.containers");
    if containers.is_empty() {
        return Err(FieldError::new(list, "required field is missing, expected at least one container"));
    }
    let mut out: Vec<Container> = Vec::with_capacity(containers.len());
    for (i, c) in containers.iter().enumerate() {
        let path = index(&list, i);
        let converted = container(&path, c, notes)?;
        if out.iter().any(|o| o.name == converted.name) {
            return Err(FieldError::new(
                format!("{path}.name"),
                format!("duplicate container name {:?}", converted.name),
            ));
        }
        out.push(converted);
    }
    Ok(out)
}

fn container(path: &str, c: &core::Container, notes: &mut Vec<Note>) -> Result<Container, FieldError> {
    if !is_dns_label(&c.name) {
        let message = if c.name.is_empty() {
            "required field is missing, expected a name such as api".to_owned()
        } else {
            format!("expected lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters, got {:?}", c.name)
        };
        return Err(FieldError::new(format!("{path}.name"), message));
    }
    let image = match c.image.as_deref().map(str::trim) {
        Some(image) if !image.is_empty() => image.to_owned(),
        _ => {
            return Err(FieldError::new(
                format!("{path}.image"),
                "required field is missing, expected a container image such as peer-demo:latest",
            ))
        }
    };
    let image_pull_policy = pull_policy(path, c.image_pull_policy.as_deref())?;
    let ports = ports(path, c.ports.as_deref().unwrap_or_default())?;
    let probes = super::probe::probes(path, c, &ports, notes)?;
    let pre_stop = super::probe::pre_stop(path, c, &ports, notes)?;
    Ok(Container {
        name: c.name.clone(),
        image,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        env: env(path, c.env.as_deref().unwrap_or_default())?,
        working_dir: c.working_dir.clone().filter(|d| !d.is_empty()),
        ports,
        resources: resources(&format!("{path}.resources"), c.resources.as_ref(), notes)?,
        probes,
        pre_stop,
        image_pull_policy,
    })
}

/// `imagePullPolicy`; `None` when it is not given, so Kubernetes' default for the image
/// applies (`Container::pull_policy`).
fn pull_policy(path: &str, value: Option<&str>) -> Result<Option<PullPolicy>, FieldError> {
    match value {
        None | Some("") => Ok(None),
        Some("Always") => Ok(Some(PullPolicy::Always)),
        Some("IfNotPresent") => Ok(Some(PullPolicy::IfNotPresent)),
        Some("Never") => Ok(Some(PullPolicy::Never)),
        Some(other) => Err(FieldError::new(
            format!("{path}.imagePullPolicy"),
            format!("expected Always, IfNotPresent or Never, got {other:?}"),
        )),
    }
}

/// Plain `value` variables. A `valueFrom` variable is left out (the field walk warns
/// about it); one with neither is set to the empty string, as in Kubernetes.
fn env(path: &str, vars: &[core::EnvVar]) -> Result<Vec<EnvVar>, FieldError> {
    let mut out = Vec::with_capacity(vars.len());
    for (i, var) in vars.iter().enumerate() {
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(FieldError::new(
                format!("{}.name", index(&format!("{path}.env"), i)),
                format!("expected a variable name without '=', got {:?}", var.name),
            ));
        }
        match (&var.value, &var.value_from) {
            (None, Some(_)) => {}
            (value, _) => {
                out.push(EnvVar { name: var.name.clone(), value: value.clone().unwrap_or_default() })
            }
        }
    }
    Ok(out)
}

fn ports(path: &str, ports: &[core::ContainerPort]) -> Result<Vec<ContainerPort>, FieldError> {
    let port_number = |n: i32, path: String| {
        u16::try_from(n).ok().filter(|n| *n != 0).ok_or_else(|| {
            FieldError::new(path, format!("expected a port number between 1 and 65535, got {n}"))
        })
    };
    let mut out = Vec::with_capacity(ports.len());
    for (i, p) in ports.iter().enumerate() {
        let path = index(&format!("{path}.ports"), i);
        let container_port = port_number(p.container_port, format!("{path}.containerPort"))?;
        let host_port = match p.host_port {
            None | Some(0) => None,
            Some(n) => Some(port_number(n, format!("{path}.hostPort"))?),
        };
        let protocol = protocol(&path, p.protocol.as_deref())?;
        out.push(ContainerPort { name: p.name.clone(), container_port, protocol, host_port });
    }
    Ok(out)
}

/// CPU and memory requests and limits. As in Kubernetes, a request that is not given
/// defaults to the limit, and a request may not exceed its limit.
fn resources(
    path: &str,
    r: Option<&ResourceRequirements>,
    notes: &mut Vec<Note>,
) -> Result<Resources, FieldError> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    let limits = resource_list(&format!("{path}.limits"), r.limits.as_ref(), notes)?;
    let mut requests = resource_list(&format!("{path}.requests"), r.requests.as_ref(), notes)?;
    requests.cpu_millis = requests.cpu_millis.or(limits.cpu_millis);
    requests.memory_bytes = requests.memory_bytes.or(limits.memory_bytes);
    let over =
        |request: Option<u64>, limit: Option<u64>| matches!((request, limit), (Some(r), Some(l)) if r > l);
    if over(requests.cpu_millis, limits.cpu_millis) {
        return Err(FieldError::new(
            format!("{path}.requests.cpu"),
            "must be less than or equal to the cpu limit",
        ));
    }
    if over(requests.memory_bytes, limits.memory_bytes) {
        return Err(FieldError::new(
            format!("{path}.requests.memory"),
            "must be less than or equal to the memory limit",
        ));
    }
    Ok(Resources { requests, limits })
}

fn resource_list(
    path: &str,
    list: Option<&BTreeMap<String, Quantity>>,
    notes: &mut Vec<Note>,
) -> Result<ResourceList, FieldError> {
    let mut out = ResourceList::default();
    for (name, Quantity(text)) in list.into_iter().flatten() {
        let field = join(path, name);
        match name.as_str() {
            "cpu" => {
                out.cpu_millis = Some(quantity::cpu_millis(text).map_err(|m| FieldError::new(field, m))?);
            }
            "memory" => {
                out.memory_bytes = Some(quantity::memory_bytes(text).map_err(|m| FieldError::new(field, m))?);
            }
            _ => notes.push((
                field,
                format!(
                    "resource {name:?} is not implemented by peer yet, ignored (only cpu and memory are)"
                ),
            )),
        }
    }
    Ok(out)
}

/// A port's `protocol`: TCP (the default) or UDP.
pub(crate) fn protocol(path: &str, value: Option<&str>) -> Result<Protocol, FieldError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some(other) => Err(FieldError::new(
            format!("{path}.protocol"),
            format!("expected TCP or UDP (peer does not support SCTP), got {other:?}"),
        )),
    }
}
