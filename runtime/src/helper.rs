//! The helper process: creates and starts one container (or one pod network namespace)
//! and exits. libcontainer's `build()` changes the working directory of the whole
//! process and clones without exec, so it never runs inside the multi-threaded agent.
//!
//! It also runs exec probes: libcontainer's tenant builder has the same constraints.
//!
//! Protocol: the agent runs `<helper_exe> <helper_args...> create <json CreateRequest>`,
//! `... exec-probe <json request>` or `... netns <path>`. On success the helper prints
//! its answer (JSON for `create` and `exec-probe`) on stdout and exits 0; on failure it
//! prints one error line on stderr and exits 1.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use serde::{Deserialize, Serialize};

use crate::{exit, netns, overlay, probe};

/// What the agent asks the helper to create.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CreateRequest {
    pub id: String,
    /// libcontainer's state root (`<root>/state`).
    pub state_root: PathBuf,
    /// Bundle directory with `config.json` and `rootfs/`.
    pub bundle: PathBuf,
    pub log_path: PathBuf,
    /// Image layers, bottom first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// The helper's answer to a successful `create`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct CreateReply {
    pub pid: i32,
    pub start_time: u64,
}

/// Entry point of the helper process. `args` are the arguments after the configured
/// `helper_args` (for `peer`, everything after `__runtime-helper`). Call it before any
/// tokio runtime or other thread exists; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args {
        [cmd, request] if cmd == "create" => create(request),
        // A spare helper started ahead of time: the request arrives on stdin.
        [cmd] if cmd == "create-stdin" => {
            let mut request = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut request) {
                Ok(_) if request.trim().is_empty() => return 0, // released unused
                Ok(_) => create(&request),
                Err(e) => Err(format!("reading the create request: {e}")),
            }
        }
        [cmd, request] if cmd == "exec-probe" => probe::helper_main(request),
        [cmd, path] if cmd == "netns" => {
            netns::create(Path::new(path)).map(|()| String::new()).map_err(|e| format!("netns {path}: {e}"))
        }
        _ => Err(format!("usage: create <request-json> | create-stdin | exec-probe <request-json> | netns <path>; got {args:?}")),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}

fn create(request: &str) -> Result<String, String> {
    let req: CreateRequest = serde_json::from_str(request).map_err(|e| format!("bad create request: {e}"))?;
    let id = req.id.as_str();
    let log = open_log(&req.log_path)
        .map_err(|e| format!("container {id}: log {}: {e}", req.log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| format!("container {id}: dup log fd: {e}"))?;
    let stdin = File::open("/dev/null").map_err(|e| format!("container {id}: open /dev/null: {e}"))?;
    let rootfs = req.bundle.join("rootfs");
    overlay::mount_rootfs(&req.layers, &req.upper, &req.work, &rootfs)
        .map_err(|e| format!("container {id}: rootfs: {e}"))?;
    fs::create_dir_all(&req.state_root)
        .map_err(|e| format!("container {id}: {}: {e}", req.state_root.display()))?;

    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(&req.state_root)
        .and_then(|b| b.validate_id())
        .map(|b| {
            b.with_stdin(stdin)
                .with_stdout(log)
                .with_stderr(log_err)
                .as_init(&req.bundle)
                .with_systemd(false)
                .with_detach(true)
        })
        .and_then(|b| b.build());
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            // The processes libcontainer started are our children; unreaped they would
            // become zombies of the agent (a child subreaper) when we exit.
            exit::reap_children(exit::FAILED_BUILD_PATIENCE);
            discard(&req.state_root, id);
            return Err(format!("container {id}: create: {e}"));
        }
    };
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        exit::reap_children(exit::FAILED_BUILD_PATIENCE);
        discard(&req.state_root, id);
        return Err(format!("container {id}: start: {e}"));
    }
    let Some(pid) = container.pid().map(|p| p.as_raw()) else {
        let _ = container.delete(true);
        return Err(format!("container {id}: started without a pid in its state"));
    };
    // The init process is our child until we exit, so its stat exists (maybe as a zombie).
    let start_time = exit::proc_stat(pid)
        .map(|s| s.start_time)
        .ok_or_else(|| format!("container {id}: pid {pid} has no /proc entry"))?;
    serde_json::to_string(&CreateReply { pid, start_time })
        .map_err(|e| format!("container {id}: encode reply: {e}"))
}

/// Opens the container log for appending; survives rotation by copy-and-truncate.
fn open_log(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

/// Deletes whatever a failed create left in libcontainer's state, so the id can be reused.
fn discard(state_root: &Path, id: &str) {
    let dir = state_root.join(id);
    if let Ok(mut container) = Container::load(dir.clone()) {
        let _ = container.delete(true);
    }
    let _ = fs::remove_dir_all(&dir);
}
