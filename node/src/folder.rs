//! The drop-in spec folder: turns files added, changed or removed into store writes.
//!
//! A file writes into the desired state only when its content changed since this node
//! last applied it (content hashes are persisted next to the store). So a restart does
//! not re-apply unchanged files, and a stale file cannot undo a newer `peer apply` or
//! `peer delete` of the same object.
//!
//! Bad input loses nothing: a file that is not valid YAML keeps all its objects as they
//! were; a document that is invalid keeps the last good version of its object.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use protocol::spec::{fnv1a64, ObjectKey};
use serde::{Deserialize, Serialize};

use crate::manifest::{self, DocResult};
use crate::store::{write_atomic, Source, Store};

/// How serious a message about the folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileState {
    hash: u64,
    keys: BTreeSet<ObjectKey>,
}

/// The folder's last applied state, persisted so restarts do not re-apply old files.
#[derive(Debug)]
pub struct Folder {
    dir: PathBuf,
    state_path: PathBuf,
    files: BTreeMap<String, FileState>,
    /// `files` changed since it was last written (see [`Folder::save`]).
    unsaved: bool,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changed: bool,
    pub messages: Vec<(Level, String)>,
}

impl Folder {
    pub fn open(dir: &Path, state_path: &Path) -> anyhow::Result<Folder> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating spec folder {}", dir.display()))?;
        let files = match std::fs::read(state_path) {
            Ok(bytes) => serde_json::from_slice::<Vec<(String, FileState)>>(&bytes)
                .with_context(|| format!("reading {}", state_path.display()))?
                .into_iter()
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
        };
        Ok(Folder { dir: dir.to_owned(), state_path: state_path.to_owned(), files, unsaved: false })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the folder and applies what changed to `store`.
    pub fn sync(&mut self, store: &mut Store) -> Outcome {
        let mut out = Outcome::default();
        let present = match spec_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                out.messages.push((Level::Error, format!("reading spec folder {}: {e}", self.dir.display())));
                return out;
            }
        };
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
            if self.files.get(&name).is_some_and(|f| f.hash == hash) {
                continue;
            }
            let old_keys = self.files.get(&name).map(|f| f.keys.clone()).unwrap_or_default();
            let keys = apply_text(&name, &text, &old_keys, store, &mut out);
            self.files.insert(name, FileState { hash, keys });
            dirty = true;
        }
        let present: BTreeSet<String> = present.iter().map(|p| p.display().to_string()).collect();
        let gone: Vec<String> = self.files.keys().filter(|f| !present.contains(*f)).cloned().collect();
        for name in gone {
            let state = self.files.remove(&name).unwrap_or_default();
            for key in &state.keys {
                remove_if_from(store, key, &name, &mut out);
            }
            out.messages.push((Level::Info, format!("{name}: removed; its objects are deleted")));
            dirty = true;
        }
        self.unsaved |= dirty;
        out.changed |= dirty;
        out
    }

    /// Writes the folder's state if a sync changed it; the error message otherwise.
    ///
    /// Kept out of `sync` so that the agent starts what a new file asks for before this
    /// second fsync (≈ 1 ms on a journaled ext4): the objects themselves are already in
    /// the store, and the state only says which file defined which objects. A crash
    /// before it is written leaves the previous state, which the next start's rescan
    /// corrects from the files in the folder, as a crash between the two writes always
    /// could.
    pub fn save(&mut self) -> Result<(), String> {
        if !self.unsaved {
            return Ok(());
        }
        let list: Vec<(&String, &FileState)> = self.files.iter().collect();
        serde_json::to_vec(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&self.state_path, &bytes))
            .map_err(|e| format!("writing {}: {e}", self.state_path.display()))?;
        self.unsaved = false;
        Ok(())
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

    #[test]
    fn the_folder_state_is_written_by_save_and_a_reopened_folder_remembers_it() {
        let dir = std::env::temp_dir().join(format!("peer-folder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (specs, state) = (dir.join("specs"), dir.join("folder.json"));
        let mut store = Store::open(&dir.join("desired.json"), &NodeId("n1".into()), 1).expect("store");
        let mut folder = Folder::open(&specs, &state).expect("folder");
        std::fs::write(specs.join("web.yaml"), SPEC).expect("spec");

        assert!(folder.sync(&mut store).changed);
        assert_eq!(store.workloads().count(), 1, "applied at once");
        assert!(!state.exists(), "the state waits for save");
        folder.save().expect("save");
        assert!(state.exists());
        folder.save().expect("nothing to save is fine");

        // A restarted agent sees the file as applied, and still deletes its objects
        // when the file goes.
        let mut reopened = Folder::open(&specs, &state).expect("reopen");
        assert!(!reopened.sync(&mut store).changed, "nothing new");
        std::fs::remove_file(specs.join("web.yaml")).expect("remove spec");
        assert!(reopened.sync(&mut store).changed);
        assert_eq!(store.workloads().count(), 0, "the file's objects are deleted");
        reopened.save().expect("save");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
