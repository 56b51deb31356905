//! This node's labels, taints and capacity: what it tells the cluster about itself.
//!
//! Labels and taints come from `peer up --label/--taint` and from `peer label`/`peer
//! taint` (persisted in `DATA/node-config.json`); only a node edits its own (gossip keys
//! are owned by their node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::cluster::NodeInfo;
use crate::store::write_atomic;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    labels: BTreeMap<String, String>,
    taints: Vec<String>,
    cordoned: bool,
    /// The pod range this node holds (`network::Plan`), kept across restarts.
    #[serde(default)]
    pod_range: Option<crate::network::SlotClaim>,
    /// `peer drain`: evict this node's pods (within disruption budgets) until none is left.
    #[serde(default)]
    draining: bool,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    path: PathBuf,
    saved: Saved,
    /// From the command line; they win over saved ones with the same key.
    flag_labels: BTreeMap<String, String>,
    flag_taints: Vec<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// A taint as kubectl writes it: `key=value:Effect` or `key:Effect`.
pub fn check_taint(taint: &str) -> anyhow::Result<()> {
    let (_, effect) =
        taint.rsplit_once(':').with_context(|| format!("taint {taint:?}: expected key=value:Effect"))?;
    match effect {
        "NoSchedule" | "PreferNoSchedule" | "NoExecute" => Ok(()),
        other => anyhow::bail!(
            "taint {taint:?}: effect {other:?} is not NoSchedule, PreferNoSchedule or NoExecute"
        ),
    }
}

/// `key=value` as kubectl writes a label.
pub fn parse_label(label: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = label.split_once('=').with_context(|| format!("label {label:?}: expected key=value"))?;
    if k.is_empty() {
        anyhow::bail!("label {label:?}: the key is empty");
    }
    Ok((k.to_owned(), v.to_owned()))
}

impl NodeConfig {
    pub fn load(
        data_dir: &Path,
        labels: &BTreeMap<String, String>,
        taints: &[String],
    ) -> anyhow::Result<NodeConfig> {
        let path = data_dir.join("node-config.json");
        let saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for t in taints {
            check_taint(t)?;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Ok(NodeConfig {
            path,
            saved,
            flag_labels: labels.clone(),
            flag_taints: taints.to_vec(),
            cpu_millis: cpus * 1000,
            memory_bytes: mem_total().unwrap_or(0),
        })
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = self.saved.labels.clone();
        l.extend(self.flag_labels.clone());
        l
    }

    pub fn taints(&self) -> Vec<String> {
        let mut t = self.saved.taints.clone();
        for f in &self.flag_taints {
            if !t.contains(f) {
                t.push(f.clone());
            }
        }
        t
    }

    /// Sets (or with `None`, removes) a saved label.
    pub fn set_label(&mut self, key: &str, value: Option<&str>) -> anyhow::Result<()> {
        match value {
            Some(v) => self.saved.labels.insert(key.to_owned(), v.to_owned()),
            None => self.saved.labels.remove(key),
        };
        self.save()
    }

    /// Adds (or with `remove`, removes) a saved taint.
    pub fn set_taint(&mut self, taint: &str, remove: bool) -> anyhow::Result<()> {
        check_taint(taint)?;
        self.saved.taints.retain(|t| t != taint);
        if !remove {
            self.saved.taints.push(taint.to_owned());
        }
        self.save()
    }

    /// Cordons (no new pods placed here) or uncordons this node; persisted. Uncordoning
    /// ends a drain too.
    pub fn set_cordoned(&mut self, cordoned: bool) -> anyhow::Result<()> {
        self.saved.cordoned = cordoned;
        self.saved.draining &= cordoned;
        self.save()
    }

    /// Starts draining: cordoned, and the node evicts its pods; persisted.
    pub fn set_draining(&mut self) -> anyhow::Result<()> {
        self.saved.cordoned = true;
        self.saved.draining = true;
        self.save()
    }

    pub fn cordoned(&self) -> bool {
        self.saved.cordoned
    }

    pub fn draining(&self) -> bool {
        self.saved.draining
    }

    /// The pod range this node holds, if it took one.
    pub fn pod_range(&self) -> Option<crate::network::SlotClaim> {
        self.saved.pod_range
    }

    /// Records the pod range this node holds; persisted.
    pub fn set_pod_range(&mut self, claim: crate::network::SlotClaim) -> anyhow::Result<()> {
        if self.saved.pod_range == Some(claim) {
            return Ok(());
        }
        self.saved.pod_range = Some(claim);
        self.save()
    }

    fn save(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.saved)?;
        write_atomic(&self.path, &bytes).with_context(|| format!("writing {}", self.path.display()))
    }

    pub fn info(&self, started_at_ms: u64, pods: u32) -> NodeInfo {
        NodeInfo {
            started_at_ms,
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            labels: self.labels(),
            taints: self.taints(),
            pods,
            cordoned: self.saved.cordoned,
            pod_range: self.saved.pod_range,
        }
    }
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_taints_parse_like_kubectl() {
        assert_eq!(parse_label("zone=a").expect("label"), ("zone".into(), "a".into()));
        assert!(parse_label("zone").is_err());
        assert!(check_taint("dedicated=gpu:NoSchedule").is_ok());
        assert!(check_taint("dedicated:NoExecute").is_ok());
        assert!(check_taint("dedicated=gpu").is_err());
        assert!(check_taint("dedicated=gpu:Sometimes").is_err());
    }
}
