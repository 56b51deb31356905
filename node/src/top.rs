//! `peer top pods|nodes`: CPU and memory use of the cluster's pods and nodes, in
//! kubectl's columns (plus the pod's node), answered by any node from gossip.

use anyhow::bail;

use crate::api::{NodeUsageRow, PodUsageRow, Request};
use crate::cli::Output;
use crate::client::{print_structured, print_table, Client};

/// Asks the agent and prints the table (or `output`). `namespace: None` means every
/// namespace (`-A`).
pub fn top(
    client: &Client,
    resource: &str,
    namespace: Option<String>,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let all = namespace.is_none();
    let scope = namespace.as_ref().map_or(String::new(), |ns| format!(" in namespace {ns}"));
    let req = match resource {
        "pods" | "pod" | "po" => Request::TopPods { namespace },
        "nodes" | "node" | "no" => Request::TopNodes,
        other => bail!("unknown resource type {other:?} for top; expected pods or nodes"),
    };
    let data = client.call(&req)?;
    if let Some(output) = output {
        return print_structured(&data, output);
    }
    let (header, rows) = match req {
        Request::TopPods { .. } => pod_table(serde_json::from_value(data)?, all),
        _ => node_table(serde_json::from_value(data)?),
    };
    if rows.is_empty() {
        eprintln!("no pod metrics{scope}; a pod shows up 5–10 s after it starts running");
        return Ok(());
    }
    print_table(&header, &rows);
    Ok(())
}

/// Millicores as kubectl shows them: `12m`.
fn cpu(millis: u64) -> String {
    format!("{millis}m")
}

/// Bytes as kubectl shows them: `34Mi`.
fn memory(bytes: u64) -> String {
    format!("{}Mi", bytes >> 20)
}

fn pod_table(rows: Vec<PodUsageRow>, all_namespaces: bool) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let mut header = vec!["NAME", "CPU(cores)", "MEMORY(bytes)", "NODE"];
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let rows = rows
        .into_iter()
        .map(|r| {
            let mut row = vec![r.name, cpu(r.cpu_millis), memory(r.memory_bytes), r.node];
            if all_namespaces {
                row.insert(0, r.namespace);
            }
            row
        })
        .collect();
    (header, rows)
}

fn node_table(rows: Vec<NodeUsageRow>) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let unknown = || "<unknown>".to_owned();
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                r.name,
                r.cpu_millis.map_or_else(unknown, cpu),
                r.cpu_percent.map_or_else(unknown, |p| format!("{p}%")),
                r.memory_bytes.map_or_else(unknown, memory),
                r.memory_percent.map_or_else(unknown, |p| format!("{p}%")),
            ]
        })
        .collect();
    (vec!["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_as_kubectl() {
        let pod = PodUsageRow {
            namespace: "default".into(),
            name: "web-1".into(),
            node: "a".into(),
            cpu_millis: 12,
            memory_bytes: (34 << 20) + 5,
            sampled_at_ms: 1,
        };
        let (header, rows) = pod_table(vec![pod.clone()], false);
        assert_eq!(header, ["NAME", "CPU(cores)", "MEMORY(bytes)", "NODE"]);
        assert_eq!(rows, [["web-1", "12m", "34Mi", "a"]]);
        let (header, rows) = pod_table(vec![pod], true);
        assert_eq!(header[0], "NAMESPACE");
        assert_eq!(rows[0][0], "default");
        let node = |name: &str, known: bool| NodeUsageRow {
            name: name.into(),
            cpu_millis: known.then_some(1250),
            cpu_percent: known.then_some(62),
            memory_bytes: known.then_some(3 << 30),
            memory_percent: known.then_some(40),
            cpu_capacity_millis: Some(2000),
            memory_capacity_bytes: Some(8 << 30),
            sampled_at_ms: known.then_some(1),
        };
        let (_, rows) = node_table(vec![node("a", true), node("b", false)]);
        assert_eq!(rows[0], ["a", "1250m", "62%", "3072Mi", "40%"]);
        assert_eq!(rows[1], ["b", "<unknown>", "<unknown>", "<unknown>", "<unknown>"]);
    }
}
