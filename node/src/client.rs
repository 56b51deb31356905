//! The CLI side of the local API: blocking requests over the agent's Unix socket and
//! kubectl-like output. No tokio here, so `peer exec` may call libcontainer in-process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde_json::Value;

use protocol::spec::Kind;

use crate::api::{
    DeploymentRow, EventRow, EventsAnswer, ExecTarget, LogTarget, NodeRow, NodeStatusAnswer, PodRow, Request,
    Response,
};
use crate::cli::Output;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    /// Sends one request and returns the agent's data, or its error as an error.
    pub fn call(&self, req: &Request) -> anyhow::Result<Value> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the peer agent at {}: {e}\nis it running? start it with `peer up` (and check --data-dir / PEER_DATA_DIR)",
                self.socket.display()
            )
        })?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        stream.write_all(&line).context("sending request to the agent")?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).context("reading the agent's answer")?;
        match serde_json::from_str::<Response>(&answer).context("decoding the agent's answer")? {
            Response::Ok { data } => Ok(data),
            Response::Error { message } => bail!("{message}"),
        }
    }

    pub fn call_as<T: DeserializeOwned>(&self, req: &Request) -> anyhow::Result<T> {
        Ok(serde_json::from_value(self.call(req)?)?)
    }
}

/// Prints `data` as JSON or YAML.
pub fn print_structured(data: &Value, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(data)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(data)?),
    }
    Ok(())
}

/// Prints rows as an aligned table, kubectl style.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print_aligned(header, rows, true);
}

/// Prints rows aligned with each other and the header, which is printed only if asked.
fn print_aligned(header: &[&str], rows: &[Vec<String>], with_header: bool) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    if with_header {
        line(header.to_vec());
    }
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Ages as kubectl shows them: 45s, 3m, 2h, 5d.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub fn get(client: &Client, resource: &str, output: Option<Output>) -> anyhow::Result<()> {
    let req = match resource {
        "pods" | "pod" | "po" => Request::GetPods,
        "deployments" | "deployment" | "deploy" => Request::GetWorkloads { kind: Kind::Deployment },
        "statefulsets" | "statefulset" | "sts" => Request::GetWorkloads { kind: Kind::StatefulSet },
        "daemonsets" | "daemonset" | "ds" => Request::GetWorkloads { kind: Kind::DaemonSet },
        "events" | "event" | "ev" => return events(client, output, false),
        "nodes" | "node" | "no" => Request::GetNodes,
        "services" | "service" | "svc" => Request::GetServices,
        "hpa" | "horizontalpodautoscaler" | "horizontalpodautoscalers" => Request::GetAutoscalers,
        "secrets" | "secret" => Request::GetSecrets,
        other => bail!(
            "unknown resource type {other:?}; expected pods, deployments, statefulsets, daemonsets, services, hpa, secrets, nodes or events"
        ),
    };
    let data = client.call(&req)?;
    if let Some(output) = output {
        return print_structured(&data, output);
    }
    match req {
        Request::GetPods => {
            let rows: Vec<PodRow> = serde_json::from_value(data)?;
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    let age = if r.local || r.age_secs > 0 { age(r.age_secs) } else { "-".into() };
                    let ip = r.ip.map_or("<none>".to_owned(), |ip| ip.to_string());
                    vec![r.name, r.ready, r.status, r.restarts.to_string(), age, ip, r.node]
                })
                .collect();
            print_table(&["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"], &rows);
        }
        Request::GetWorkloads { .. } => {
            let rows: Vec<DeploymentRow> = serde_json::from_value(data)?;
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    vec![r.name, format!("{}/{}", r.ready, r.desired), r.up_to_date.to_string(), r.source]
                })
                .collect();
            print_table(&["NAME", "READY", "UP-TO-DATE", "SOURCE"], &rows);
        }
        Request::GetAutoscalers => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                Value::Null => "<none>".to_owned(),
                other => other.to_string(),
            };
            let rows: Vec<Vec<String>> = data
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    ["name", "reference", "targets", "minPods", "maxPods", "replicas", "decidedBy"]
                        .iter()
                        .map(|k| text(&r[*k]))
                        .collect()
                })
                .collect();
            print_table(
                &["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "DECIDED BY"],
                &rows,
            );
        }
        Request::GetSecrets => {
            let rows: Vec<Vec<String>> = data
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        s["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                        s["type"].as_str().unwrap_or_default().to_owned(),
                        s["data"].as_object().map_or(0, |d| d.len()).to_string(),
                        // Objects carry no wall-clock creation time (stamps are Lamport).
                        "-".to_owned(),
                    ]
                })
                .collect();
            print_table(&["NAME", "TYPE", "DATA", "AGE"], &rows);
        }
        Request::GetServices => {
            let rows: Vec<crate::services::ServiceEntry> = serde_json::from_value(data)?;
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|e| {
                    vec![
                        e.name.clone(),
                        e.kind.as_str().to_owned(),
                        e.cluster_ip.map_or("None".into(), |ip| ip.to_string()),
                        e.ports_column(),
                        e.endpoints_column(),
                        // Objects carry no wall-clock creation time (stamps are Lamport).
                        "-".to_owned(),
                    ]
                })
                .collect();
            print_table(&["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "ENDPOINTS", "AGE"], &rows);
        }
        _ => {
            let rows: Vec<NodeRow> = serde_json::from_value(data)?;
            let rows: Vec<Vec<String>> = rows
                .into_iter()
                .map(|r| {
                    let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        r.name,
                        r.state,
                        r.address,
                        r.age_secs.map_or("-".into(), age),
                        r.cpu_millis.map_or("-".into(), |c| format!("{}m", c)),
                        r.memory_bytes.map_or("-".into(), |m| format!("{}Mi", m >> 20)),
                        r.pods.map_or("-".into(), |p| p.to_string()),
                        if labels.is_empty() { "<none>".into() } else { labels.join(",") },
                    ]
                })
                .collect();
            print_table(&["NAME", "STATE", "ADDRESS", "AGE", "CPU", "MEMORY", "PODS", "LABELS"], &rows);
        }
    }
    Ok(())
}

/// `peer get RESOURCE -w`: only events can be watched for now.
pub fn watch(client: &Client, resource: &str, output: Option<Output>) -> anyhow::Result<()> {
    match resource {
        "events" | "event" | "ev" => events(client, output, true),
        other => bail!("--watch supports events only (got {other:?})"),
    }
}

/// `peer get events [-w]`: every live node's events; with `watch`, then every second the
/// ones recorded since, per node, until interrupted.
pub fn events(client: &Client, output: Option<Output>, watch: bool) -> anyhow::Result<()> {
    let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = true;
    loop {
        let answer: EventsAnswer = client.call_as(&Request::GetEvents { after: cursors.clone() })?;
        for node in &answer.unreachable {
            eprintln!("warning: node {node} did not answer; its events are missing");
        }
        for (node, seq) in answer.cursors {
            let c = cursors.entry(node).or_default();
            *c = (*c).max(seq);
        }
        match output {
            Some(output) if !watch => {
                return print_structured(&serde_json::to_value(&answer.events)?, output)
            }
            Some(_) => {
                for e in &answer.events {
                    println!("{}", serde_json::to_string(e)?);
                }
            }
            None if first || !answer.events.is_empty() => {
                let now = crate::agent::now_ms();
                let rows: Vec<Vec<String>> = answer.events.into_iter().map(|e| event_cells(e, now)).collect();
                print_aligned(&EVENT_COLUMNS, &rows, first);
            }
            None => {}
        }
        if !watch {
            return Ok(());
        }
        first = false;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `peer get events`' columns, as kubectl's plus the node.
const EVENT_COLUMNS: [&str; 6] = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "NODE", "MESSAGE"];

/// One row: LAST SEEN is kubectl's `3m (x5 over 20m)` for a repeated event.
fn event_cells(e: EventRow, now: u64) -> Vec<String> {
    let mut seen = age(now.saturating_sub(e.last_ms) / 1000);
    if e.count > 1 {
        seen = format!("{seen} (x{} over {})", e.count, age(now.saturating_sub(e.first_ms) / 1000));
    }
    vec![seen, e.kind.to_string(), e.reason, e.object, e.node, e.message]
}

/// Reads the YAML files named on the command line; a folder means its spec files.
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for path in paths {
        let files = if path.is_dir() {
            crate::folder::spec_files(path).with_context(|| format!("reading folder {}", path.display()))?
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            out.push((f.display().to_string(), text));
        }
    }
    Ok(out)
}

/// Prints the outcome of apply/delete; fails when any document had an error.
pub fn report_write(data: &Value, verb: &str) -> anyhow::Result<()> {
    let list = |k: &str| -> Vec<String> {
        data.get(k)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    for key in list(verb) {
        println!("{key} {verb}");
    }
    for key in list("unchanged") {
        println!("{key} unchanged");
    }
    for w in list("warnings") {
        eprintln!("warning: {w}");
    }
    let errors = list("errors");
    for e in &errors {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        bail!("{} error(s)", errors.len());
    }
    Ok(())
}

pub fn logs(client: &Client, req: Request, follow: bool) -> anyhow::Result<()> {
    let target: LogTarget = client.call_as(&req)?;
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    loop {
        pos = copy_from(&target.path, pos, &mut out)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // Stop following once the container stopped or was restarted (a new log file).
        let now: LogTarget = match client.call_as(&req) {
            Ok(t) => t,
            Err(_) => return Ok(()),
        };
        if !now.running || now.path != target.path {
            copy_from(&target.path, pos, &mut out)?;
            return Ok(());
        }
    }
}

/// Copies `path` from byte `pos` to `out`; returns the new position. A file that
/// shrank was rotated (copy-truncate), so reading starts again from its beginning.
fn copy_from(path: &Path, pos: u64, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pos),
        Err(e) => return Err(e).with_context(|| format!("opening log {}", path.display())),
    };
    let len = f.metadata()?.len();
    let start = if len < pos { 0 } else { pos };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    Ok(start + buf.len() as u64)
}

pub fn exec(client: &Client, req: Request, command: &[String]) -> anyhow::Result<i32> {
    let target: ExecTarget = client.call_as(&req)?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    runtime::exec(&target.runtime_root, &target.container_id, command, tty)
        .with_context(|| format!("exec in container {}", target.container_id))
}

/// `peer rollout history`: a table of revisions, or one revision's template.
pub fn print_history(name: &str, data: &serde_json::Value) {
    let cause = |v: &serde_json::Value| v["changeCause"].as_str().unwrap_or("<none>").to_owned();
    if let Some(template) = data.get("template") {
        println!("deployment/{name} with revision #{}", data["revision"]);
        println!("Change-Cause: {}", cause(data));
        println!("Pod Template ({}):", data["hash"].as_str().unwrap_or("?"));
        println!("{}", serde_json::to_string_pretty(template).unwrap_or_default());
        return;
    }
    println!("deployment/{name}");
    println!("REVISION  CHANGE-CAUSE");
    for r in data["revisions"].as_array().into_iter().flatten() {
        println!("{:<10}{}", r["revision"].as_u64().unwrap_or(0), cause(r));
    }
}

/// Prints the `warnings` of a write's answer to stderr.
pub fn print_warnings(data: &serde_json::Value) {
    for w in data["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

/// `peer rollout status`: prints where the rollout stands, as kubectl does, and with `wait`
/// follows it until it is done. Returns the exit code.
pub fn rollout_status(client: &Client, namespace: &str, name: &str, wait: bool) -> anyhow::Result<u8> {
    let mut last = String::new();
    loop {
        let req = Request::RolloutStatus { namespace: namespace.to_owned(), name: name.to_owned() };
        let data = client.call(&req)?;
        let n = |k: &str| data[k].as_u64().unwrap_or(0);
        if data["failed"] == true {
            anyhow::bail!("deployment {name:?} exceeded its progress deadline");
        }
        let line = if data["done"] == true {
            format!("deployment {name:?} successfully rolled out")
        } else if data["paused"] == true {
            format!("Waiting for deployment {name:?} rollout to finish: the rollout is paused (peer rollout resume deployment/{name})...")
        } else if n("updated") < n("replicas") {
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} out of {} new replicas have been updated...",
                n("updated"),
                n("replicas")
            )
        } else if n("old") > 0 {
            format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", n("old"))
        } else {
            format!(
                "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
                n("updatedReady"),
                n("replicas")
            )
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if data["done"] == true {
            return Ok(0);
        }
        if !wait {
            return Ok(1);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// How long `peer drain` keeps asking a node that does not answer before it gives up.
const DRAIN_STATUS_PATIENCE: Duration = Duration::from_secs(15);

/// `peer drain [NAME]`: starts the drain of node `name` (this node when `None`) and with
/// `wait` waits until it runs no pod but DaemonSet pods, asking the node itself, printing
/// each pod as it leaves (of the first `protocol::node_request::MAX_LISTED_PODS` the node
/// lists). Fails when the drain is ended (`peer uncordon`) or the node stops answering.
pub fn drain(client: &Client, name: Option<String>, wait: bool) -> anyhow::Result<()> {
    let started: NodeStatusAnswer = client.call_as(&Request::Drain { name: name.clone() })?;
    println!("node {} cordoned; evicting its pods within disruption budgets", started.node);
    if !wait {
        return Ok(());
    }
    // The answer lists the pods before the first eviction, so every one is printed.
    let mut listed: std::collections::BTreeSet<String> = started.status.listed.into_iter().collect();
    let req = Request::DrainStatus { name };
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let answer: NodeStatusAnswer = match client.call_as(&req) {
            Ok(a) => a,
            Err(e) => {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() >= DRAIN_STATUS_PATIENCE {
                    return Err(e.context("waiting for the drain"));
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        failing_since = None;
        let (node, status) = (answer.node, answer.status);
        let now: std::collections::BTreeSet<String> = status.listed.into_iter().collect();
        for gone in listed.difference(&now) {
            println!("pod/{} evicted", gone.split_once('/').map_or(gone.as_str(), |(_, n)| n));
        }
        if status.pods == 0 {
            println!("node {node} drained");
            return Ok(());
        }
        if !status.draining {
            bail!("node {node} is no longer draining (uncordoned); {} of its pods are left", status.pods);
        }
        listed = now;
        std::io::stdout().flush()?;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `peer image prune [--all]`: asks the agent for a collection pass (only it knows which
/// images its containers use) and prints what went.
pub fn prune_images(client: &Client, all: bool) -> anyhow::Result<()> {
    let answer: crate::api::ImagePruneAnswer = client
        .call_as(&Request::PruneImages { all })
        .context("`peer image prune` runs through the agent, which knows which images are in use")?;
    if answer.removed.is_empty() {
        println!("no image removed (disk usage {}%)", answer.disk_percent);
    }
    let mut total = 0;
    for image in &answer.removed {
        let name = image.names.first().cloned().unwrap_or_else(|| image.id.chars().take(19).collect());
        println!("removed {name} ({}, {:.1}MB): {}", image.id, image.size as f64 / 1e6, image.why);
        total += image.size;
    }
    if !answer.removed.is_empty() {
        println!("total reclaimed: {:.1}MB", total as f64 / 1e6);
    }
    Ok(())
}
