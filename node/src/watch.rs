//! Watches the spec folder with inotify (through `notify`) and wakes the agent.
//!
//! Events are only a hint: the agent rescans the whole folder on each one, and also
//! every 2 s, so a missed or coalesced event delays a change but never loses it.

use std::path::Path;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::agent::Input;

/// Starts watching `dir`; the watcher stops when the returned value is dropped.
pub fn watch(dir: &Path, tx: UnboundedSender<Input>) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Reading the folder raises access events itself; waking on those would make
        // every rescan trigger the next one.
        let wanted = res.is_ok_and(|ev| !matches!(ev.kind, notify::EventKind::Access(_)));
        if wanted {
            let _ = tx.send(Input::FolderChanged);
        }
    })
    .context("starting the spec folder watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching spec folder {}", dir.display()))?;
    Ok(watcher)
}
