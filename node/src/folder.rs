//! The drop-in spec folder: turns files added, changed or removed into store writes.
//!
//! A file writes into the desired state only when its content changed since this node
//! last applied it (content hashes are kept in the store, saved with the objects they
//! produced). So a restart does not re-apply unchanged files, and a stale file cannot
//! undo a newer `peer apply` or `peer delete` of the same object.
//!
//! Bad input loses nothing: a file that is not valid YAML keeps all its objects as they
//! were; a document that is invalid keeps the last good version of its object.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::spec::{fnv1a64, ObjectKey};

use crate::manifest::{self, DocResult};
use crate::store::{AppliedFile, Source, Store};

/// How serious a message about the folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

/// The spec folder. What it last applied lives in the store ([`Store::applied_files`]).
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changed: bool,
    pub messages: Vec<(Level, String)>,
}

impl Folder {
    pub fn open(dir: &Path) -> anyhow::Result<Folder> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating spec folder {}", dir.display()))?;
        Ok(Folder { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder and applies what changed to `store` (saved as the store saves:
    /// at once, or at its commit when its writes are deferred).
    pub fn sync(&self, store: &mut Store) -> Outcome {
        let mut out = Outcome::default();
        let present = match spec_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                out.messages.push((Level::Error, format!("reading spec folder {}: {e}", self.dir.display())));
                return out;
            }
        };
        let mut files = store.applied_files().clone();
        let mut dirty = false;
        for path in &present {
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    out.messages.push((Level::Error, format!("{name}: cannot read: {e}")));
                    continue;
                }
            };
            let hash = fnv1a64(text.as_bytes());
            if files.get(&name).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let old_keys = files.get(&name).map(|f| f.keys.clone()).unwrap_or_default();
            let keys = apply_text(&name, &text, &old_keys, store, &mut out);
            files.insert(name, AppliedFile { hash, keys });
            dirty = true;
        }
        let present: BTreeSet<String> = present.iter().map(|p| p.display().to_string()).collect();
        let gone: Vec<String> = files.keys().filter(|f| !present.contains(*f)).cloned().collect();
        for name in gone {
            let state = files.remove(&name).unwrap_or_default();
            for key in &state.keys {
                remove_if_from(store, key, &name, &mut out);
            }
            out.messages.push((Level::Info, format!("{name}: removed; its objects are deleted")));
            dirty = true;
        }
        if dirty {
            if let Err(e) = store.set_applied_files(files) {
                out.messages
                    .push((Level::Error, format!("{e:#}; the files are read again at the next rescan")));
            }
        }
        out.changed |= dirty;
        out
    }
}

/// Applies one file's new text; returns the keys the file now defines.
fn apply_text(
    name: &str,
    text: &str,
    old_keys: &BTreeSet<ObjectKey>,
    store: &mut Store,
    out: &mut Outcome,
) -> BTreeSet<ObjectKey> {
    let parsed = manifest::parse_file(name, text);
    if let Some(err) = parsed.syntax_error {
        out.messages.push((Level::Error, format!("{err}; the file's objects keep their last good version")));
        return old_keys.clone();
    }
    let mut keys = BTreeSet::new();
    for doc in parsed.documents {
        match doc {
            DocResult::Object { object, warnings } => {
                for w in warnings {
                    out.messages.push((Level::Warning, w.to_string()));
                }
                let key = object.key().clone();
                keys.insert(key.clone());
                match store.put(object, Source::File(name.to_owned())) {
                    Ok(Some(_)) => out.messages.push((Level::Info, format!("{name}: applied {key}"))),
                    Ok(None) => {}
                    Err(e) => out.messages.push((Level::Error, format!("{name}: storing {key}: {e:#}"))),
                }
            }
            DocResult::Ignored { warning, .. } => out.messages.push((Level::Warning, warning.to_string())),
            DocResult::Invalid { key, error } => {
                out.messages.push((Level::Error, format!("{error}; the last good version is kept")));
                if let Some(key) = key {
                    keys.insert(key);
                }
            }
        }
    }
    for key in old_keys.difference(&keys) {
        remove_if_from(store, key, name, out);
    }
    keys
}

/// Deletes `key` only if its stored version still comes from file `name`.
fn remove_if_from(store: &mut Store, key: &ObjectKey, name: &str, out: &mut Outcome) {
    let from_this_file = store.get(key).is_some_and(|s| s.source == Some(&Source::File(name.to_owned())));
    if !from_this_file {
        return;
    }
    match store.remove(key) {
        Ok(_) => out.messages.push((Level::Info, format!("{name}: deleted {key}"))),
        Err(e) => out.messages.push((Level::Error, format!("{name}: deleting {key}: {e:#}"))),
    }
}

/// The YAML/JSON files directly in `dir` (not recursive, like `kubectl apply -f DIR`),
/// skipping hidden files and editor leftovers.
pub fn spec_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let wanted = [".yaml", ".yml", ".json"].iter().any(|ext| name.ends_with(ext));
        if wanted && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use protocol::desired::NodeId;

    use super::*;

    const SPEC: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  template:\n    spec:\n      containers: [{name: web, image: peer-demo:latest}]\n";

    fn fresh(name: &str) -> (PathBuf, PathBuf, Store, Folder) {
        let dir = std::env::temp_dir().join(format!("peer-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let specs = dir.join("specs");
        let store = Store::open(&dir.join("desired.json"), &NodeId("n1".into()), 1).expect("store");
        let folder = Folder::open(&specs).expect("folder");
        (dir, specs, store, folder)
    }

    #[test]
    fn the_applied_files_are_saved_with_the_store_and_a_reopened_store_remembers_them() {
        let (dir, specs, mut store, folder) = fresh("state");
        std::fs::write(specs.join("web.yaml"), SPEC).expect("spec");
        assert!(folder.sync(&mut store).changed);
        assert_eq!(store.workloads().count(), 1, "applied at once");

        // A restarted agent sees the file as applied, and still deletes its objects
        // when the file goes.
        let mut reopened = Store::open(&dir.join("desired.json"), &NodeId("n1".into()), 1).expect("reopen");
        assert_eq!(reopened.applied_files().len(), 1);
        assert!(!folder.sync(&mut reopened).changed, "nothing new");
        std::fs::remove_file(specs.join("web.yaml")).expect("remove spec");
        assert!(folder.sync(&mut reopened).changed);
        assert_eq!(reopened.workloads().count(), 0, "the file's objects are deleted");
        let again = Store::open(&dir.join("desired.json"), &NodeId("n1".into()), 1).expect("reopen");
        assert!(again.applied_files().is_empty() && again.workloads().count() == 0);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[tokio::test]
    async fn deferred_changes_are_saved_at_the_commit_and_shared_only_then() {
        let (dir, specs, mut store, folder) = fresh("defer");
        let path = dir.join("desired.json");
        std::fs::write(specs.join("web.yaml"), SPEC).expect("spec");
        store.defer();
        assert!(folder.sync(&mut store).changed);
        assert_eq!(store.workloads().count(), 1, "in memory at once");
        assert!(!path.exists(), "nothing written before the commit");
        assert!(store.drain_local_writes().is_empty(), "nothing shared before it is on disk");
        store.commit().await.expect("commit");
        let reopened = Store::open(&path, &NodeId("n1".into()), 1).expect("reopen");
        assert_eq!((reopened.workloads().count(), reopened.applied_files().len()), (1, 1));
        assert_eq!(store.drain_local_writes().len(), 1, "shared once saved");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[tokio::test]
    async fn a_failed_commit_undoes_the_changes_and_the_next_sync_applies_them_again() {
        let (dir, specs, mut store, folder) = fresh("undo");
        let path = dir.join("desired.json");
        std::fs::write(specs.join("web.yaml"), SPEC).expect("spec");
        // The save's temp file cannot be created where a directory is (even for root).
        let blocker = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::create_dir_all(&blocker).expect("blocker");
        store.defer();
        assert!(folder.sync(&mut store).changed);
        let err = store.commit().await.expect_err("the save fails");
        assert!(format!("{err:#}").contains("desired.json"), "{err:#}");
        assert_eq!(store.workloads().count(), 0, "undone");
        assert!(store.applied_files().is_empty(), "the file counts as not applied");
        assert!(store.drain_local_writes().is_empty(), "nothing to share");

        std::fs::remove_dir(&blocker).expect("unblock");
        store.defer();
        assert!(folder.sync(&mut store).changed, "applied again");
        store.commit().await.expect("commit");
        assert_eq!(store.workloads().count(), 1);
        assert_eq!(store.drain_local_writes().len(), 1);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
