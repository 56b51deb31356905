//! The node's copy of the cluster's desired state, persisted crash-safe.
//!
//! The replicated part is `protocol::desired::DesiredState` (an LWW map with tombstones,
//! ordered by Lamport stamps). Next to it the store keeps local-only bookkeeping: where
//! this node's own writes came from (a spec file or `peer apply`). Everything is one
//! file replaced atomically (write a temp file, fsync, rename, fsync the directory), so
//! `kill -9` at any moment leaves the old or the new state, and a write reported as done
//! is on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::desired::{Clock, DesiredState, Entry, NodeId, Stamp};
use protocol::spec::{Object, ObjectKey, Service, Workload};
use serde::{Deserialize, Serialize};

/// Where this node's write of an object came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A file in the drop-in spec folder (its path).
    File(String),
    /// `peer apply` (the file name the user gave, for messages).
    Api(String),
}

/// A live object as the rest of the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<'a> {
    pub object: &'a Object,
    pub stamp: &'a Stamp,
    /// Set when the current version was written on this node.
    pub source: Option<&'a Source>,
    /// This node's write that a concurrent write from another node replaced.
    pub overwritten: Option<&'a Stamp>,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    state: DesiredState,
    clock: Clock,
    #[serde(with = "protocol::desired::pairs")]
    sources: BTreeMap<ObjectKey, (Stamp, Source)>,
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: DesiredState,
    clock: Clock,
    /// Source of this node's writes, valid while the entry still has that stamp.
    sources: BTreeMap<ObjectKey, (Stamp, Source)>,
    /// This node's writes not yet handed to replication.
    local_writes: Vec<(ObjectKey, Entry)>,
}

impl Store {
    /// Opens the store at `path`, or starts an empty one for `node` with `incarnation`.
    pub fn open(path: &Path, node: &NodeId, incarnation: u64) -> anyhow::Result<Store> {
        let disk: Option<OnDisk> = match std::fs::read(path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading desired state {}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading desired state {}", path.display())),
        };
        let store = match disk {
            Some(d) if d.clock.node == *node && d.clock.incarnation == incarnation => Store {
                path: path.to_owned(),
                state: d.state,
                clock: d.clock,
                sources: d.sources,
                local_writes: vec![],
            },
            Some(d) => {
                // The same disk under a new identity keeps the state but stamps anew.
                let mut clock = Clock::new(node.clone(), incarnation);
                clock.observe(d.state.max_lamport());
                Store {
                    path: path.to_owned(),
                    state: d.state,
                    clock,
                    sources: BTreeMap::new(),
                    local_writes: vec![],
                }
            }
            None => Store {
                path: path.to_owned(),
                state: DesiredState::new(),
                clock: Clock::new(node.clone(), incarnation),
                sources: BTreeMap::new(),
                local_writes: vec![],
            },
        };
        Ok(store)
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Stored<'_>> {
        let entry = self.state.entry(key)?;
        let object = entry.value.as_ref()?;
        Some(self.view(key, entry, object))
    }

    fn view<'a>(&'a self, key: &ObjectKey, entry: &'a Entry, object: &'a Object) -> Stored<'a> {
        let source = self.sources.get(key).filter(|(s, _)| *s == entry.stamp).map(|(_, src)| src);
        Stored { object, stamp: &entry.stamp, source, overwritten: self.state.overwritten(key) }
    }

    /// Live objects in key order.
    pub fn iter(&self) -> impl Iterator<Item = Stored<'_>> {
        self.state.entries().filter_map(|(k, e)| e.value.as_ref().map(|o| self.view(k, e, o)))
    }

    /// Live workloads: all placement and reconcile see.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.state.workloads()
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.state.services()
    }

    /// The PodDisruptionBudgets of the desired state.
    pub fn budgets(&self) -> impl Iterator<Item = &protocol::spec::DisruptionBudget> {
        self.state.live().filter_map(|o| o.as_budget())
    }

    /// Writes `object` as this node; returns the new entry, or `None` when the live
    /// version is identical (same object, same source), so nothing is rewritten.
    pub fn put(
        &mut self,
        object: impl Into<Object>,
        source: Source,
    ) -> anyhow::Result<Option<(ObjectKey, Entry)>> {
        let mut object = object.into();
        let key = object.key().clone();
        // What the stored version keeps (a creation stamp) is not part of the comparison.
        self.state.inherit(&mut object);
        if let Some(cur) = self.get(&key) {
            if *cur.object == object && cur.source == Some(&source) {
                return Ok(None);
            }
        }
        let before = (self.state.clone(), self.clock.clone(), self.sources.clone());
        let entry = self.state.put(object, &mut self.clock).with_context(|| format!("writing {key}"))?;
        self.sources.insert(key.clone(), (entry.stamp.clone(), source));
        self.save_or_restore(before)?;
        self.local_writes.push((key.clone(), entry.clone()));
        Ok(Some((key, entry)))
    }

    /// Writes `object` as this node on behalf of the cluster (an autoscaler's count): the
    /// source of the version it replaces stays, when this node wrote that version, so a spec
    /// file that defined the object still deletes it when removed.
    pub fn put_keeping_source(
        &mut self,
        object: impl Into<Object>,
        otherwise: Source,
    ) -> anyhow::Result<Option<(ObjectKey, Entry)>> {
        let object = object.into();
        let source = self.get(object.key()).and_then(|s| s.source.cloned()).unwrap_or(otherwise);
        self.put(object, source)
    }

    /// Deletes `key` as this node (a tombstone); `None` when it was not there.
    pub fn remove(&mut self, key: &ObjectKey) -> anyhow::Result<Option<(ObjectKey, Entry)>> {
        let before = (self.state.clone(), self.clock.clone(), self.sources.clone());
        let Some(entry) = self.state.delete(key, &mut self.clock) else { return Ok(None) };
        self.sources.remove(key);
        self.save_or_restore(before)?;
        self.local_writes.push((key.clone(), entry.clone()));
        Ok(Some((key.clone(), entry)))
    }

    /// Runs `f` on the replicated state (a merge from a peer) and persists the result if
    /// it changed anything. A failed save restores the state as it was before.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut DesiredState) -> R) -> anyhow::Result<R> {
        let before = (self.state.clone(), self.clock.clone(), self.sources.clone());
        let digest = self.state.digest();
        let floor = self.state.gc_floor().cloned();
        let r = f(&mut self.state);
        self.clock.observe(self.state.max_lamport());
        if self.state.digest() != digest || self.state.gc_floor().cloned() != floor {
            self.save_or_restore(before)?;
        }
        Ok(r)
    }

    /// This node's writes since the last call, for pushing to peers.
    pub fn drain_local_writes(&mut self) -> Vec<(ObjectKey, Entry)> {
        std::mem::take(&mut self.local_writes)
    }

    fn save_or_restore(
        &mut self,
        before: (DesiredState, Clock, BTreeMap<ObjectKey, (Stamp, Source)>),
    ) -> anyhow::Result<()> {
        let disk =
            OnDisk { state: self.state.clone(), clock: self.clock.clone(), sources: self.sources.clone() };
        let saved = serde_json::to_vec(&disk).context("encoding desired state").and_then(|b| {
            write_atomic(&self.path, &b)
                .with_context(|| format!("writing desired state {}", self.path.display()))
        });
        if saved.is_err() {
            // Keep memory and disk in agreement: undo what could not be persisted.
            (self.state, self.clock, self.sources) = before;
        }
        saved
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
            pod_management: Default::default(),
            rollout: Default::default(),
            template: PodTemplate {
                labels: BTreeMap::new(),
                containers: vec![],
                restart_policy: RestartPolicy::Always,
                termination_grace_period_seconds: 30,
                host_network: false,
                scheduling: Default::default(),
                image_pull_secrets: vec![],
            },
        }
    }

    #[test]
    fn survives_reopen_and_skips_identical_writes() {
        let dir = std::env::temp_dir().join(format!("peer-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("desired.json");
        let node = NodeId("n1".into());
        let mut store = Store::open(&path, &node, 7).expect("open empty");
        assert!(store.put(workload("a", 1), Source::Api("a.yaml".into())).expect("put").is_some());
        assert!(store.put(workload("a", 1), Source::Api("a.yaml".into())).expect("put again").is_none());
        let file = Source::File("specs/b.yaml".into());
        assert!(store.put(workload("b", 2), file.clone()).expect("put b").is_some());
        assert!(store.remove(&workload("a", 1).key).expect("remove").is_some());
        assert!(store.remove(&workload("a", 1).key).expect("remove twice").is_none());

        let reopened = Store::open(&path, &node, 7).expect("reopen");
        let names: Vec<_> = reopened.workloads().map(|w| w.key.name.clone()).collect();
        assert_eq!(names, vec!["b"]);
        let b = reopened.get(&workload("b", 2).key).expect("b is live");
        assert_eq!(b.source, Some(&file));
        assert_eq!(b.stamp.lamport, 2);
        // The clock continues after a restart: the next write is newer than all before.
        let mut reopened = reopened;
        let (_, e) =
            reopened.put(workload("c", 1), Source::Api("c.yaml".into())).expect("put c").expect("new");
        assert_eq!(e.stamp.lamport, 4);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_write_for_the_cluster_keeps_the_file_as_source() {
        let dir = std::env::temp_dir().join(format!("peer-store-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = Store::open(&dir.join("desired.json"), &NodeId("n1".into()), 7).expect("open");
        let file = Source::File("specs/a.yaml".into());
        store.put(workload("a", 3), file.clone()).expect("put");
        let hpa = Source::Api("autoscaler a".into());
        store.put_keeping_source(workload("a", 5), hpa.clone()).expect("scale");
        let stored = store.get(&workload("a", 5).key).expect("live");
        assert_eq!((stored.source, stored.object.as_workload().map(|w| w.replicas)), (Some(&file), Some(5)));
        // Without a source of its own (written elsewhere), the write is the autoscaler's.
        store.put(workload("b", 1), Source::Api("apply".into())).expect("put b");
        store.sources.clear();
        store.put_keeping_source(workload("b", 2), hpa.clone()).expect("scale b");
        assert_eq!(store.get(&workload("b", 2).key).expect("live").source, Some(&hpa));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// A `desired.json` of a version whose values were bare workloads still opens, with
    /// the same content and digest.
    #[test]
    fn opens_a_file_of_bare_workloads() {
        let dir = std::env::temp_dir().join(format!("peer-store-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("desired.json");
        let node = NodeId("n1".into());
        let mut store = Store::open(&path, &node, 7).expect("open empty");
        store.put(workload("a", 3), Source::Api("a.yaml".into())).expect("put");
        let digest = store.state().digest();
        // Rewrite the file as the earlier version wrote it: `value` is the bare workload.
        let mut disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        let slot = &mut disk["state"]["slots"][0][1];
        let bare = slot["entry"]["value"]["Workload"].take();
        assert!(bare.is_object(), "the new file tags the value: {slot}");
        slot["entry"]["value"] = bare;
        std::fs::write(&path, serde_json::to_vec(&disk).expect("json")).expect("write");

        let reopened = Store::open(&path, &node, 7).expect("a legacy file opens");
        let mut want = workload("a", 3);
        want.rollout.revision = 1; // the store numbers a Deployment's first revision
        assert_eq!(reopened.workloads().cloned().collect::<Vec<_>>(), vec![want]);
        assert_eq!(reopened.state().digest(), digest);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
