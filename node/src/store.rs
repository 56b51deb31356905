//! The node's desired state on disk: every workload it should run, where it came from.
//!
//! One JSON file, replaced atomically (write to a temp file, fsync, rename, fsync the
//! directory), so `kill -9` at any moment leaves either the old or the new state and a
//! write reported as done is never lost. Issue 3 replaces this single-node store with
//! the cluster-wide CRDT; the agent only sees `put`/`remove`/`workloads`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::spec::{ObjectKey, Workload};
use serde::{Deserialize, Serialize};

/// Where a stored object came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A file in the drop-in spec folder (its path).
    File(String),
    /// `peer apply` (the file name the user gave, for messages).
    Api(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub workload: Workload,
    pub source: Source,
    /// Increases with every write to the store; the newest write of an object wins.
    pub seq: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    seq: u64,
    objects: Vec<Stored>,
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    seq: u64,
    objects: BTreeMap<ObjectKey, Stored>,
}

impl Store {
    /// Opens (or starts empty) the store at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let disk: OnDisk = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading desired state {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OnDisk::default(),
            Err(e) => return Err(e).with_context(|| format!("reading desired state {}", path.display())),
        };
        let objects = disk.objects.into_iter().map(|s| (s.workload.key.clone(), s)).collect();
        Ok(Store { path: path.to_owned(), seq: disk.seq, objects })
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Stored> {
        self.objects.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Stored> {
        self.objects.values()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.objects.values().map(|s| &s.workload)
    }

    /// Stores `workload`; returns whether anything changed (an identical object from
    /// the same source is not rewritten).
    pub fn put(&mut self, workload: Workload, source: Source) -> anyhow::Result<bool> {
        if let Some(old) = self.objects.get(&workload.key) {
            if old.workload == workload && old.source == source {
                return Ok(false);
            }
        }
        self.seq += 1;
        let stored = Stored { workload, source, seq: self.seq };
        let previous = self.objects.insert(stored.workload.key.clone(), stored.clone());
        if let Err(e) = self.save() {
            // Keep memory and disk in agreement: undo the write that could not be persisted.
            match previous {
                Some(p) => self.objects.insert(p.workload.key.clone(), p),
                None => self.objects.remove(&stored.workload.key),
            };
            return Err(e);
        }
        Ok(true)
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> anyhow::Result<bool> {
        let Some(previous) = self.objects.remove(key) else { return Ok(false) };
        self.seq += 1;
        if let Err(e) = self.save() {
            self.objects.insert(key.clone(), previous);
            return Err(e);
        }
        Ok(true)
    }

    fn save(&self) -> anyhow::Result<()> {
        let disk = OnDisk { seq: self.seq, objects: self.objects.values().cloned().collect() };
        let bytes = serde_json::to_vec_pretty(&disk).context("encoding desired state")?;
        write_atomic(&self.path, &bytes)
            .with_context(|| format!("writing desired state {}", self.path.display()))
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::spec::{Kind, PodTemplate, RestartPolicy, Strategy};

    use super::*;

    fn workload(name: &str, replicas: u32) -> Workload {
        Workload {
            key: ObjectKey { kind: Kind::Deployment, namespace: "default".into(), name: name.into() },
            labels: BTreeMap::new(),
            replicas,
            selector: BTreeMap::new(),
            strategy: Strategy::Recreate,
            template: PodTemplate {
                labels: BTreeMap::new(),
                containers: vec![],
                restart_policy: RestartPolicy::Always,
                termination_grace_period_seconds: 30,
                host_network: false,
            },
        }
    }

    #[test]
    fn survives_reopen_and_skips_identical_writes() {
        let dir = std::env::temp_dir().join(format!("peer-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("desired.json");
        let mut store = Store::open(&path).expect("open empty");
        assert!(store.put(workload("a", 1), Source::Api("a.yaml".into())).expect("put"));
        assert!(!store.put(workload("a", 1), Source::Api("a.yaml".into())).expect("put again"));
        assert!(store.put(workload("b", 2), Source::File("specs/b.yaml".into())).expect("put b"));
        assert!(store.remove(&workload("a", 1).key).expect("remove"));
        let reopened = Store::open(&path).expect("reopen");
        let names: Vec<_> = reopened.workloads().map(|w| w.key.name.clone()).collect();
        assert_eq!(names, vec!["b"]);
        assert_eq!(reopened.seq, 3);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
