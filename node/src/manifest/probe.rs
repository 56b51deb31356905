//! Kubernetes container probes to peer's: the action, Kubernetes' defaults and its
//! validation rules (exactly one handler; liveness and startup need successThreshold 1).

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use protocol::spec::{ContainerPort, Hook, Probe, ProbeAction, Probes};

use super::diagnostic::{index, FieldError, Note};

/// The three probes of the container at `path`; named ports resolve against `ports`.
pub(crate) fn probes(
    path: &str,
    c: &core::Container,
    ports: &[ContainerPort],
    notes: &mut Vec<Note>,
) -> Result<Probes, FieldError> {
    let one = |field: &str, p: Option<&core::Probe>, notes: &mut Vec<Note>| match p {
        None => Ok(None),
        Some(p) => probe(&format!("{path}.{field}"), field, p, ports, notes),
    };
    Ok(Probes {
        liveness: one("livenessProbe", c.liveness_probe.as_ref(), notes)?,
        readiness: one("readinessProbe", c.readiness_probe.as_ref(), notes)?,
        startup: one("startupProbe", c.startup_probe.as_ref(), notes)?,
    })
}

fn probe(
    path: &str,
    field: &str,
    p: &core::Probe,
    ports: &[ContainerPort],
    notes: &mut Vec<Note>,
) -> Result<Option<Probe>, FieldError> {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()];
    if handlers.iter().filter(|h| **h).count() != 1 {
        return Err(FieldError::new(path, "expected exactly one of exec, httpGet, tcpSocket or grpc"));
    }
    let action = if let Some(exec) = &p.exec {
        let command = exec.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err(FieldError::new(
                format!("{path}.exec.command"),
                "required field is missing, expected a command such as [cat, /tmp/healthy]",
            ));
        }
        ProbeAction::Exec { command }
    } else if let Some(http) = &p.http_get {
        let port = port(&format!("{path}.httpGet.port"), &http.port, ports)?;
        if http.host.as_deref().is_some_and(|h| !h.is_empty()) {
            notes.push((
                format!("{path}.httpGet.host"),
                "not implemented by peer yet, ignored: the probe connects to the pod's own loopback".into(),
            ));
        }
        match http.scheme.as_deref() {
            None | Some("HTTP") => {}
            Some("HTTPS") => {
                notes.push((
                    format!("{path}.httpGet.scheme"),
                    "HTTPS is not implemented by peer yet: the probe only checks that the port accepts TCP connections".into(),
                ));
                return Ok(Some(timing(path, field, p, ProbeAction::TcpSocket { port })?));
            }
            Some(other) => {
                return Err(FieldError::new(
                    format!("{path}.httpGet.scheme"),
                    format!("expected HTTP or HTTPS, got {other:?}"),
                ))
            }
        }
        let mut headers = Vec::new();
        for (i, h) in http.http_headers.iter().flatten().enumerate() {
            let ok = !h.name.is_empty() && h.name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !ok || h.value.contains(['\r', '\n']) {
                return Err(FieldError::new(
                    index(&format!("{path}.httpGet.httpHeaders"), i),
                    format!(
                        "expected an HTTP header name and a one-line value, got {:?}: {:?}",
                        h.name, h.value
                    ),
                ));
            }
            headers.push((h.name.clone(), h.value.clone()));
        }
        let path_value = http.path.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "/".into());
        if !path_value.starts_with('/') || path_value.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(
                format!("{path}.httpGet.path"),
                format!("expected an absolute URL path such as /healthz, got {path_value:?}"),
            ));
        }
        ProbeAction::HttpGet { path: path_value, port, headers }
    } else if let Some(tcp) = &p.tcp_socket {
        if tcp.host.as_deref().is_some_and(|h| !h.is_empty()) {
            notes.push((
                format!("{path}.tcpSocket.host"),
                "not implemented by peer yet, ignored: the probe connects to the pod's own loopback".into(),
            ));
        }
        ProbeAction::TcpSocket { port: port(&format!("{path}.tcpSocket.port"), &tcp.port, ports)? }
    } else {
        notes.push((
            format!("{path}.grpc"),
            "not implemented by peer yet, ignored: the container runs without this probe".into(),
        ));
        return Ok(None);
    };
    Ok(Some(timing(path, field, p, action)?))
}

/// The timing fields with Kubernetes' defaults and ranges.
fn timing(path: &str, field: &str, p: &core::Probe, action: ProbeAction) -> Result<Probe, FieldError> {
    let mut probe = Probe::new(action);
    let field_value = |name: &str, v: Option<i32>, min: i32, default: u32| match v {
        None => Ok(default),
        Some(n) if n >= min => Ok(n as u32),
        Some(n) => Err(FieldError::new(
            format!("{path}.{name}"),
            format!("expected an integer of at least {min}, got {n}"),
        )),
    };
    probe.initial_delay_seconds = field_value("initialDelaySeconds", p.initial_delay_seconds, 0, 0)?;
    probe.period_seconds = field_value("periodSeconds", p.period_seconds, 1, 10)?;
    probe.timeout_seconds = field_value("timeoutSeconds", p.timeout_seconds, 1, 1)?;
    probe.success_threshold = field_value("successThreshold", p.success_threshold, 1, 1)?;
    probe.failure_threshold = field_value("failureThreshold", p.failure_threshold, 1, 3)?;
    if field != "readinessProbe" && probe.success_threshold != 1 {
        return Err(FieldError::new(
            format!("{path}.successThreshold"),
            format!("expected 1 for a {field} (as Kubernetes requires), got {}", probe.success_threshold),
        ));
    }
    probe.termination_grace_period_seconds = match p.termination_grace_period_seconds {
        None => None,
        Some(n) if field == "readinessProbe" => {
            return Err(FieldError::new(
                format!("{path}.terminationGracePeriodSeconds"),
                format!("expected no value for a readinessProbe (it never kills the container), got {n}"),
            ))
        }
        Some(n) => Some(u64::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            FieldError::new(
                format!("{path}.terminationGracePeriodSeconds"),
                format!("expected a positive integer, got {n}"),
            )
        })?),
    };
    Ok(probe)
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(path: &str, port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, FieldError> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n != 0).ok_or_else(|| {
            FieldError::new(path, format!("expected a port number between 1 and 65535, got {n}"))
        }),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                if n != 0 {
                    return Ok(n);
                }
            }
            ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())).map(|p| p.container_port).ok_or_else(
                || {
                    let names: Vec<&str> = ports.iter().filter_map(|p| p.name.as_deref()).collect();
                    FieldError::new(
                        path,
                        format!(
                            "expected a port number or the name of one of the container's ports ({}), got {name:?}",
                            if names.is_empty() { "it names none".to_owned() } else { names.join(", ") }
                        ),
                    )
                },
            )
        }
    }
}

/// The container's `lifecycle.preStop` hook: `exec`, `httpGet`, `tcpSocket` or `sleep`.
pub(crate) fn pre_stop(
    path: &str,
    c: &core::Container,
    ports: &[ContainerPort],
    notes: &mut Vec<Note>,
) -> Result<Option<Hook>, FieldError> {
    let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else { return Ok(None) };
    let path = format!("{path}.lifecycle.preStop");
    let handlers = [h.exec.is_some(), h.http_get.is_some(), h.tcp_socket.is_some(), h.sleep.is_some()];
    if handlers.iter().filter(|h| **h).count() != 1 {
        return Err(FieldError::new(path, "expected exactly one of exec, httpGet, tcpSocket or sleep"));
    }
    if let Some(sleep) = &h.sleep {
        let seconds = u32::try_from(sleep.seconds).map_err(|_| {
            FieldError::new(
                format!("{path}.sleep.seconds"),
                format!("expected a non-negative number of seconds, got {}", sleep.seconds),
            )
        })?;
        return Ok(Some(Hook::Sleep(seconds)));
    }
    // The same handlers as a probe's, checked the same way.
    let as_probe = core::Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        ..core::Probe::default()
    };
    Ok(probe(&path, "preStop", &as_probe, ports, notes)?.map(|p| Hook::Action(p.action)))
}
