//! A start gate: holds a container between libcontainer's create and its start until the
//! caller says the pod is ready (its network set up), so that the create — most of a
//! container start — runs while the pod's veth pair is made instead of after it.
//!
//! The gate is a file in the container's bundle that the caller keeps `flock`ed
//! exclusively from before the create request until it writes the outcome into it and
//! lets go. The create child, once the container is built, takes a shared lock (which
//! waits while the caller holds its own), reads the outcome and starts the container only
//! on `ok`; on anything else — a failure, or an empty file because the caller went away
//! without an answer — it deletes the container. Both locks are on open file
//! descriptions, so the kernel lets go of them when their holder dies.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// What the caller writes for "start it".
const READY: &str = "ok";

/// The caller's side: holds the gate shut until [`StartGate::open`].
#[derive(Debug)]
pub struct StartGate {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl StartGate {
    /// Makes the gate file at `path` (replacing an old one) and locks it.
    pub(crate) fn shut(path: PathBuf) -> std::io::Result<StartGate> {
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(StartGate { path, lock: Some(lock) })
    }

    /// Where the create child finds the gate.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets the waiting create go on: it starts the container on `Ok`, and deletes it
    /// with `why` otherwise.
    pub fn open(mut self, outcome: Result<(), &str>) {
        if let Some(mut lock) = self.lock.take() {
            let text = match outcome {
                Ok(()) => READY.to_owned(),
                Err(why) => why.to_owned(),
            };
            // Unwritten, the child reads an empty file: not ready, as when we are gone.
            let _ = lock.write_all(text.as_bytes());
        }
    }
}

/// The create child's side: waits until the gate at `path` is open; `Err` with the
/// caller's reason when the container must not start.
pub(crate) fn wait(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| format!("start gate {}: {e}", path.display()))?;
    let mut lock = loop {
        match Flock::lock(file, FlockArg::LockShared) {
            Ok(lock) => break lock,
            Err((again, nix::errno::Errno::EINTR)) => file = again,
            Err((_, e)) => return Err(format!("start gate {}: lock: {e}", path.display())),
        }
    };
    let mut text = String::new();
    lock.read_to_string(&mut text).map_err(|e| format!("start gate {}: {e}", path.display()))?;
    match text.as_str() {
        READY => Ok(()),
        "" => Err("the agent went away before the pod was ready".to_owned()),
        why => Err(why.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("peer-gate-{name}-{}", std::process::id()))
    }

    #[test]
    fn the_child_waits_until_the_gate_opens_and_reads_the_outcome() {
        let p = path("open");
        let gate = StartGate::shut(p.clone()).expect("shut");
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || wait(&p))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished(), "went through a shut gate");
        gate.open(Ok(()));
        assert_eq!(waiter.join().expect("join"), Ok(()));

        let gate = StartGate::shut(p.clone()).expect("shut again");
        gate.open(Err("pod network: no bridge"));
        assert_eq!(wait(&p), Err("pod network: no bridge".to_owned()));

        // A gate dropped without an outcome stops the start too.
        drop(StartGate::shut(p.clone()).expect("shut a third time"));
        assert!(wait(&p).expect_err("not ready").contains("went away"));
        std::fs::remove_file(&p).expect("clean up");
    }
}
