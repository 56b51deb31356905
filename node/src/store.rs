//! The node's copy of the cluster's desired state, persisted crash-safe.
//!
//! The replicated part is `protocol::desired::DesiredState` (an LWW map with tombstones,
//! ordered by Lamport stamps). Next to it the store keeps local-only bookkeeping: where
//! this node's own writes came from (a spec file or `peer apply`) and which content of
//! each spec file it last applied. Everything is one file replaced atomically (write a
//! temp file, fsync, rename, fsync the directory), so `kill -9` at any moment leaves the
//! old or the new state, and a write reported as done is on disk.
//!
//! Writes are saved one by one, or gathered between [`Store::defer`] and
//! [`Store::commit`]: the spec folder's changes are saved once, after the reconcile that
//! starts what they ask for (the save's two fsyncs take ≈ 5 ms on a journaled ext4, as
//! long as a whole container start). Until the commit is done nothing of them is
//! handed to replication, so a peer only ever learns stamps that are on disk here; a
//! commit that fails undoes them.

use std::collections::{BTreeMap, BTreeSet};
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

/// What this node last applied from one file of the spec folder (see `folder`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedFile {
    /// FNV-1a of the file's content.
    pub hash: u64,
    /// The objects the file defines.
    pub keys: BTreeSet<ObjectKey>,
}

/// The spec folder's applied files, by path.
pub type AppliedFiles = BTreeMap<String, AppliedFile>;

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
    /// Absent in files of versions that kept it in `folder.json` next to this one.
    #[serde(default)]
    folder: Option<AppliedFiles>,
}

/// Everything the file holds, as it was before a write that may have to be undone.
#[derive(Debug, Clone)]
struct Snapshot {
    state: DesiredState,
    clock: Clock,
    sources: BTreeMap<ObjectKey, (Stamp, Source)>,
    folder: AppliedFiles,
}

/// Writes gathered since [`Store::defer`].
#[derive(Debug)]
struct Batch {
    before: Snapshot,
    /// `local_writes` had this many entries when the batch began.
    local_writes: usize,
    changed: bool,
}

#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    state: DesiredState,
    clock: Clock,
    /// Source of this node's writes, valid while the entry still has that stamp.
    sources: BTreeMap<ObjectKey, (Stamp, Source)>,
    folder: AppliedFiles,
    /// This node's writes not yet handed to replication.
    local_writes: Vec<(ObjectKey, Entry)>,
    batch: Option<Batch>,
    /// `folder.json` of an earlier version, read at open and removed once saved here.
    legacy_folder: Option<PathBuf>,
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
        let mut store = Store {
            path: path.to_owned(),
            state: DesiredState::new(),
            clock: Clock::new(node.clone(), incarnation),
            sources: BTreeMap::new(),
            folder: AppliedFiles::new(),
            local_writes: vec![],
            batch: None,
            legacy_folder: None,
        };
        let folder = match disk {
            Some(d) if d.clock.node == *node && d.clock.incarnation == incarnation => {
                (store.state, store.clock, store.sources) = (d.state, d.clock, d.sources);
                d.folder
            }
            Some(d) => {
                // The same disk under a new identity keeps the state but stamps anew.
                store.clock.observe(d.state.max_lamport());
                store.state = d.state;
                d.folder
            }
            None => None,
        };
        store.folder = match folder {
            Some(f) => f,
            None => {
                let legacy = path.with_file_name("folder.json");
                match std::fs::read(&legacy) {
                    Ok(bytes) => {
                        let files = serde_json::from_slice::<Vec<(String, AppliedFile)>>(&bytes)
                            .with_context(|| format!("reading {}", legacy.display()))?;
                        store.legacy_folder = Some(legacy);
                        files.into_iter().collect()
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppliedFiles::new(),
                    Err(e) => return Err(e).with_context(|| format!("reading {}", legacy.display())),
                }
            }
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
        let before = self.snapshot();
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
        let before = self.snapshot();
        let Some(entry) = self.state.delete(key, &mut self.clock) else { return Ok(None) };
        self.sources.remove(key);
        self.save_or_restore(before)?;
        self.local_writes.push((key.clone(), entry.clone()));
        Ok(Some((key.clone(), entry)))
    }

    /// Runs `f` on the replicated state (a merge from a peer) and persists the result if
    /// it changed anything. A failed save restores the state as it was before.
    pub fn update<R>(&mut self, f: impl FnOnce(&mut DesiredState) -> R) -> anyhow::Result<R> {
        let before = self.snapshot();
        let digest = self.state.digest();
        let floor = self.state.gc_floor().cloned();
        let r = f(&mut self.state);
        self.clock.observe(self.state.max_lamport());
        if self.state.digest() != digest || self.state.gc_floor().cloned() != floor {
            self.save_or_restore(before)?;
        }
        Ok(r)
    }

    /// What the spec folder last applied, by file.
    pub fn applied_files(&self) -> &AppliedFiles {
        &self.folder
    }

    /// Records what the spec folder applied; saved like a write.
    pub fn set_applied_files(&mut self, files: AppliedFiles) -> anyhow::Result<()> {
        if files == self.folder {
            return Ok(());
        }
        let before = self.snapshot();
        self.folder = files;
        self.save_or_restore(before)
    }

    /// This node's writes since the last call, for pushing to peers: only those on disk,
    /// so none while writes are deferred.
    pub fn drain_local_writes(&mut self) -> Vec<(ObjectKey, Entry)> {
        if self.batch.is_some() {
            return vec![];
        }
        std::mem::take(&mut self.local_writes)
    }

    /// Keeps the writes from now on in memory only, until [`Store::commit`].
    pub fn defer(&mut self) {
        if self.batch.is_none() {
            let before = self.copy();
            self.batch = Some(Batch { before, local_writes: self.local_writes.len(), changed: false });
        }
    }

    /// Saves the writes made since [`Store::defer`] in one write, on a blocking thread
    /// (the caller's runtime goes on meanwhile). When it fails they are undone — objects,
    /// their sources and the applied files — and the error says why.
    pub async fn commit(&mut self) -> anyhow::Result<()> {
        let Some(batch) = self.batch.take() else { return Ok(()) };
        if !batch.changed {
            return Ok(());
        }
        let path = self.path.clone();
        let saved = match self.encode() {
            Ok(bytes) => tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .with_context(|| format!("writing desired state {}", self.path.display())),
            Err(e) => Err(e),
        };
        match saved {
            Ok(()) => {
                self.saved();
                Ok(())
            }
            Err(e) => {
                self.restore(batch.before);
                self.local_writes.truncate(batch.local_writes);
                Err(e)
            }
        }
    }

    /// The state to restore if the write about to be made cannot be saved; `None` while
    /// writes are deferred (the batch keeps its own).
    fn snapshot(&self) -> Option<Snapshot> {
        self.batch.is_none().then(|| self.copy())
    }

    fn copy(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            clock: self.clock.clone(),
            sources: self.sources.clone(),
            folder: self.folder.clone(),
        }
    }

    fn restore(&mut self, s: Snapshot) {
        (self.state, self.clock, self.sources, self.folder) = (s.state, s.clock, s.sources, s.folder);
    }

    fn encode(&self) -> anyhow::Result<Vec<u8>> {
        let disk = OnDisk {
            state: self.state.clone(),
            clock: self.clock.clone(),
            sources: self.sources.clone(),
            folder: Some(self.folder.clone()),
        };
        serde_json::to_vec(&disk).context("encoding desired state")
    }

    /// After a successful save: the earlier version's separate folder file is now stale.
    fn saved(&mut self) {
        if let Some(legacy) = self.legacy_folder.take() {
            if let Err(e) = std::fs::remove_file(&legacy) {
                tracing::warn!("removing {} (now kept in {}): {e}", legacy.display(), self.path.display());
            }
        }
    }

    fn save_or_restore(&mut self, before: Option<Snapshot>) -> anyhow::Result<()> {
        let Some(before) = before else {
            if let Some(batch) = &mut self.batch {
                batch.changed = true;
            }
            return Ok(());
        };
        let saved = self.encode().and_then(|b| {
            write_atomic(&self.path, &b)
                .with_context(|| format!("writing desired state {}", self.path.display()))
        });
        match saved {
            Ok(()) => self.saved(),
            // Keep memory and disk in agreement: undo what could not be persisted.
            Err(_) => self.restore(before),
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

    /// A node of an earlier version kept the spec folder's applied files in `folder.json`:
    /// they are read from there until the store is saved with them, then it goes.
    #[test]
    fn takes_over_the_folder_file_of_an_earlier_version() {
        let dir = std::env::temp_dir().join(format!("peer-store-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("desired.json");
        let node = NodeId("n1".into());
        let mut store = Store::open(&path, &node, 7).expect("open empty");
        store.put(workload("a", 1), Source::File("specs/a.yaml".into())).expect("put");
        // As the earlier version wrote them: no `folder` in desired.json, a list of pairs.
        let mut disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        disk.as_object_mut().expect("object").remove("folder");
        std::fs::write(&path, serde_json::to_vec(&disk).expect("json")).expect("write");
        let legacy = dir.join("folder.json");
        let key = serde_json::to_value(&workload("a", 1).key).expect("key");
        let old = serde_json::json!([["specs/a.yaml", {"hash": 42, "keys": [key]}]]);
        std::fs::write(&legacy, old.to_string()).expect("write legacy");

        let mut reopened = Store::open(&path, &node, 7).expect("reopen");
        let want = AppliedFile { hash: 42, keys: [workload("a", 1).key].into() };
        assert_eq!(reopened.applied_files().get("specs/a.yaml"), Some(&want));
        assert!(legacy.exists(), "kept until saved here");
        reopened.put(workload("b", 1), Source::Api("b.yaml".into())).expect("put b");
        assert!(!legacy.exists(), "removed once saved here");
        let again = Store::open(&path, &node, 7).expect("reopen");
        assert_eq!(again.applied_files().get("specs/a.yaml"), Some(&want));
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
