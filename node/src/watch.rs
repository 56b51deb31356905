//! Watches the spec folder with inotify (through `notify`) and wakes the agent.
//!
//! Events are only a hint: the agent rescans the whole folder on each one, and also
//! every 2 s, so a missed or coalesced event delays a change but never loses it. Write
//! spec files atomically (write a temporary file, rename it into the folder) or in one
//! go: a rescan that happens to meet a file mid-write applies what it reads.

use std::path::Path;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::agent::Input;

/// Starts watching `dir`; the watcher stops when the returned value is dropped.
pub fn watch(dir: &Path, tx: UnboundedSender<Input>) -> anyhow::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Act when a writer is done (close after write, rename, remove), not on every
        // write: a file caught half-written would be applied half. Reading the folder
        // raises open and read events itself; waking on those would make every rescan
        // trigger the next one.
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        use notify::EventKind;
        let wanted = res.is_ok_and(|ev| {
            matches!(
                ev.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(_))
                    | EventKind::Remove(_)
            )
        });
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
