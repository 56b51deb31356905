//! The helper process: creates and starts containers (or one pod network namespace,
//! or runs an exec probe). libcontainer's `build()` changes the working directory of the
//! whole process and clones without exec, so it never runs inside the multi-threaded
//! agent; its tenant builder (exec probes) has the same constraints.
//!
//! Creates go to a **create server** (`<helper_exe> <helper_args...> create-server`): a
//! helper the agent starts once and keeps, reading one [`CreateRequest`] JSON line at a
//! time on stdin and answering each with one [`ServerReply`] JSON line on stdout. For each
//! request it forks a child that creates and starts the container and exits, so every
//! create runs in a fresh single-threaded process whose exit hands the container's init
//! to the agent (the nearest child subreaper), without an exec, dynamic loading and
//! relocation of the binary per container (≈ 5 ms of CPU each, BENCHMARKS.md). The
//! server answers once the child's answer is whole, before the child has exited.
//!
//! One-shot commands: `... exec-probe <json request>` or `... netns <path>`. On success
//! the helper prints its answer (JSON for `exec-probe`) on stdout and exits 0; on
//! failure it prints one error line on stderr and exits 1.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use serde::{Deserialize, Serialize};

use crate::{exit, gate, netns, overlay, probe};

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
    /// The folder of pod network namespaces, when it is a mount of its own: the child
    /// unmounts it in its own mount namespace, keeping only `netns`.
    #[serde(default)]
    pub netns_dir: Option<PathBuf>,
    /// The pod's network namespace file (in `netns_dir`) that the container joins.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// A start gate (`gate.rs`) to wait for between the create and the start.
    #[serde(default)]
    pub gate: Option<PathBuf>,
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
        // A long-lived create server: requests on stdin, one reply line each on stdout.
        [cmd] if cmd == "create-server" => return serve(),
        [cmd, request] if cmd == "exec-probe" => probe::helper_main(request),
        [cmd, path] if cmd == "netns" => {
            netns::create(Path::new(path)).map(|()| String::new()).map_err(|e| format!("netns {path}: {e}"))
        }
        _ => Err(format!("usage: create-server | exec-probe <request-json> | netns <path>; got {args:?}")),
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

/// A create server's answer to one request: the `create` answer or its error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ServerReply {
    Created(String),
    Failed(String),
}

/// The create server's loop; returns the exit code once stdin ends (the agent is gone).
/// It never starts a thread, so forking it is safe.
fn serve() -> i32 {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in std::io::BufRead::lines(stdin.lock()) {
        let Ok(request) = line else { return 1 };
        if request.trim().is_empty() {
            continue;
        }
        let (answer, child) = fork_create(&request);
        let reply = match answer {
            Ok(answer) => ServerReply::Created(answer),
            Err(message) => ServerReply::Failed(message),
        };
        let Ok(json) = serde_json::to_string(&reply) else { return 1 };
        // The buffer is empty again before the next fork, so no child repeats it.
        let sent = std::io::Write::write_all(&mut out, format!("{json}\n").as_bytes())
            .and_then(|()| std::io::Write::flush(&mut out));
        // The child exits right after its answer; its exit tears down its mount namespace
        // (≈ 0.7 ms), which the agent need not wait for.
        if let Some(child) = child {
            let _ = reap(child);
        }
        if sent.is_err() {
            return 1;
        }
    }
    0
}

/// The longest answer a forked child passes back, in characters (≤ 4 bytes each).
const ANSWER_MAX: usize = 8 * 1024;

/// A child's answer on its pipe: a status byte (0 created, 1 failed), the text's length
/// (u32, little endian), the text. The pipe's write end also lives on in the container's
/// processes (cloned, not forked and exec'd) until its init execs, so the end of the
/// answer cannot be the end of the pipe.
fn encode_answer(ok: bool, text: &str) -> Vec<u8> {
    let text: String = text.chars().take(ANSWER_MAX).collect();
    let mut frame = Vec::with_capacity(5 + text.len());
    frame.push(if ok { 0 } else { 1 });
    frame.extend_from_slice(&(text.len() as u32).to_le_bytes());
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// The answer in `bytes` once complete: `Some(Ok)` created, `Some(Err)` failed.
fn decode_answer(bytes: &[u8]) -> Option<Result<String, String>> {
    let (&status, rest) = bytes.split_first()?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let text = String::from_utf8_lossy(rest.get(4..4 + len)?).into_owned();
    Some(if status == 0 { Ok(text) } else { Err(text) })
}

/// Runs [`create`] in a forked child and returns what it answered, as soon as it did,
/// and the child to reap (`None` when it was reaped already).
fn fork_create(request: &str) -> (Result<String, String>, Option<nix::unistd::Pid>) {
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::unistd::{fork, pipe, ForkResult};

    let (read_end, write_end): (OwnedFd, OwnedFd) = match pipe() {
        Ok(ends) => ends,
        Err(e) => return (Err(format!("create server: pipe: {e}")), None),
    };
    // SAFETY: the server is single-threaded (it never starts a thread), so the child may
    // run any code; it leaves with `_exit`, never returning into the server's loop.
    match unsafe { fork() } {
        Err(e) => (Err(format!("create server: fork: {e}")), None),
        Ok(ForkResult::Child) => {
            drop(read_end);
            // stdout is the server's answer channel: nothing the child or libcontainer
            // might print may land in it. Answers go through the pipe; stderr stays.
            if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2(null.as_raw_fd(), libc::STDOUT_FILENO);
            }
            let frame = match create(request) {
                Ok(answer) => encode_answer(true, &answer),
                Err(message) => encode_answer(false, &message),
            };
            // Well below a pipe's buffer, so the write never waits for the server.
            let mut pipe = File::from(write_end);
            let written = pipe.write_all(&frame).is_ok();
            drop(pipe);
            // SAFETY: ends this forked child at once, without running the server's
            // destructors or flushing buffers that belong to the server.
            unsafe { libc::_exit(if written { 0 } else { 2 }) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(write_end);
            match read_answer(File::from(read_end), child) {
                Ok(Some(answer)) => (answer, Some(child)),
                // The child ended without a whole answer: say how.
                Ok(None) => {
                    let status = reap(child);
                    (Err(format!("create server: child ended with {status:?} without an answer")), None)
                }
                Err(e) => {
                    let status = reap(child);
                    (Err(format!("create server: reading the child's answer: {e} (child: {status:?})")), None)
                }
            }
        }
    }
}

/// Waits for the child's whole answer on `pipe`, or for the child to end without one
/// (`None`); its pidfd tells the latter, since the pipe may never reach its end.
fn read_answer(mut pipe: File, child: nix::unistd::Pid) -> std::io::Result<Option<Result<String, String>>> {
    use std::io::Read;
    use std::os::fd::{AsFd, AsRawFd};

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
    let pidfd = exit::pidfd_open(child.as_raw())?;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut fds =
            [PollFd::new(pipe.as_fd(), PollFlags::POLLIN), PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ended = fds[1].revents().is_some_and(|r| !r.is_empty());
        // Read what is there (all of it once the child ended: it wrote before exiting).
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            if bytes.len() > 5 + 4 * ANSWER_MAX {
                return Err(std::io::Error::other("answer longer than allowed"));
            }
        }
        if let Some(answer) = decode_answer(&bytes) {
            return Ok(Some(answer));
        }
        if ended {
            return Ok(None);
        }
    }
}

/// Reaps `child`, retrying when interrupted.
fn reap(child: nix::unistd::Pid) -> nix::Result<nix::sys::wait::WaitStatus> {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
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
    private_mount_namespace().map_err(|e| format!("container {id}: {e}"))?;
    if let Some(dir) = &req.netns_dir {
        let own = req.netns.as_deref().filter(|ns| ns.parent() == Some(dir.as_path()));
        netns::keep_only(dir, own)
            .map_err(|e| format!("container {id}: pod network namespaces in {}: {e}", dir.display()))?;
    }
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
    if let Some(gate) = &req.gate {
        if let Err(why) = gate::wait(gate) {
            let _ = container.delete(true);
            exit::reap_children(exit::FAILED_BUILD_PATIENCE);
            discard(&req.state_root, id);
            return Err(format!("container {id}: not started: {why}"));
        }
    }
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

/// Moves this forked child into a mount namespace of its own that still receives the
/// node's mounts (slave) but sends none back, so the rootfs overlay it mounts exists only
/// here and in the container's namespace, which is copied from this one; it goes away with
/// the container's last process.
///
/// Why: libcontainer reads `/proc/self/mountinfo` a dozen times per create (cgroup
/// mount points, the rootfs's parent mount), and the kernel formats every line anew,
/// escaping an overlay's long option string. With each running container's overlay in
/// the node's namespace, perf put ≈ 2 ms of CPU per create there during a 50-pod start;
/// without them ≈ 0.5 ms; the pods' network namespace mounts are dropped next
/// (`netns::keep_only`; BENCHMARKS.md).
fn private_mount_namespace() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("make / a slave mount: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_answer_is_whole_only_with_all_its_bytes() {
        let frame = encode_answer(true, r#"{"pid":7,"start_time":9}"#);
        for cut in 0..frame.len() {
            assert_eq!(decode_answer(&frame[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_answer(&frame), Some(Ok(r#"{"pid":7,"start_time":9}"#.to_owned())));
        let failed = encode_answer(false, "container x: create: ünïcode");
        assert_eq!(decode_answer(&failed), Some(Err("container x: create: ünïcode".to_owned())));
        // A long message is cut to ANSWER_MAX characters, not bytes.
        let long = encode_answer(false, &"é".repeat(ANSWER_MAX + 10));
        assert_eq!(decode_answer(&long), Some(Err("é".repeat(ANSWER_MAX))));
    }
}
