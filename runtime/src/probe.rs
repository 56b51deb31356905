//! What container probes need from the runtime: exec probes (a command inside a running
//! container, run by the helper process with a deadline and bounded output) and TCP
//! connects from inside a pod's network namespace.

use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{pipe2, Pid};
use serde::{Deserialize, Serialize};

use crate::engine::Runtime;
use crate::error::{validate_id, Error};
use crate::exec::{self, TenantStdio};
use crate::spec::ContainerStatus;
use crate::{exit, netns};

/// How much of an exec probe's output is kept (Kubernetes keeps 10 KiB too); the rest
/// is read and dropped so the command never blocks on a full pipe.
pub const PROBE_OUTPUT_LIMIT: usize = 10 * 1024;

/// How long the agent waits for the helper beyond the probe's own timeout, which the
/// helper enforces, before it kills the helper.
const HELPER_GRACE: Duration = Duration::from_secs(5);

/// How an exec probe's command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecOutcome {
    /// The command exited (`exit_code` is `128 + signal` if a signal killed it).
    /// `output` is its stdout and stderr interleaved, at most [`PROBE_OUTPUT_LIMIT`]
    /// bytes, decoded as lossy UTF-8.
    Exited { exit_code: i32, output: String },
    /// The command did not exit in time; it and its process group were killed.
    TimedOut,
}

/// What the agent asks the helper to run (`exec-probe <json>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExecProbeRequest {
    id: String,
    /// libcontainer's state root (`<root>/state`).
    state_root: PathBuf,
    command: Vec<String>,
    timeout_ms: u64,
}

impl Runtime {
    /// Runs `command` inside the running container `id`, as `peer exec` would (the
    /// container's user, environment, working directory, capabilities, namespaces and
    /// cgroup), with stdin from `/dev/null`, and returns its exit code and output, or
    /// `TimedOut` if it did not exit within `timeout` (then it was killed).
    ///
    /// The command runs in a helper process (libcontainer's tenant builder must not run
    /// in this multi-threaded process). Fails with `NotRunning` if the container does
    /// not run; a helper that does not answer within `timeout` plus a few seconds is
    /// killed and reported as a `Helper` error.
    pub async fn exec_probe(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutcome, Error> {
        validate_id(id)?;
        if command.is_empty() {
            return Err(Error::Exec { id: id.to_owned(), message: "no command given".to_owned() });
        }
        let state = match self.inspect(id)? {
            ContainerStatus::Running { .. } => None,
            ContainerStatus::Stopped => Some("stopped"),
            ContainerStatus::Missing => Some("missing"),
        };
        if let Some(state) = state {
            return Err(Error::NotRunning { id: id.to_owned(), state: state.to_owned() });
        }
        let object = format!("container {id}");
        let failed = |message: String| Error::Helper { object: object.clone(), message };
        let request = ExecProbeRequest {
            id: id.to_owned(),
            state_root: self.state_dir(),
            command: command.to_vec(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let json = serde_json::to_string(&request).map_err(|e| failed(format!("encode request: {e}")))?;
        let child = self
            .helper_command()
            .arg("exec-probe")
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::HelperSpawn {
                object: object.clone(),
                path: self.helper_exe().to_owned(),
                source,
            })?;
        // Dropping the future on timeout drops the child, which kills the helper.
        let output = match tokio::time::timeout(timeout + HELPER_GRACE, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return Err(failed(format!("waiting for the exec probe helper: {e}"))),
            Err(_) => {
                return Err(failed(format!(
                    "exec probe helper gave no answer within {:?}; killed it",
                    timeout + HELPER_GRACE
                )))
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(failed(match stderr.trim() {
                "" => format!("exec probe helper exited with {}", output.status),
                text => text.to_owned(),
            }));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.trim())
            .map_err(|e| failed(format!("bad exec probe reply {stdout:?}: {e}")))
    }

    /// Connects to `addr` over TCP from inside the network namespace at `netns` (a pod's,
    /// see [`Runtime::pod_netns_path`]), or from the host's namespace for `None`, waiting
    /// at most `timeout`.
    ///
    /// The socket keeps the namespace it was created in, so it is created on a
    /// short-lived thread of its own that joins the namespace and exits after. Errors
    /// keep the `io::ErrorKind` (`ConnectionRefused`, `TimedOut`, ...) and name the
    /// namespace and address. Needs a tokio runtime.
    pub async fn connect_tcp(
        &self,
        netns: Option<&Path>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<tokio::net::TcpStream> {
        let Some(path) = netns else {
            let context = |e: io::Error| io::Error::new(e.kind(), format!("connect to {addr}: {e}"));
            return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(result) => result.map_err(context),
                Err(_) => Err(context(io::Error::new(io::ErrorKind::TimedOut, "connection timed out"))),
            };
        };
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("connect to {addr} in network namespace {}: {e}", path.display()),
            )
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let target = path.to_owned();
        // setns moves only the calling thread; a pooled tokio thread would stay in the
        // pod's namespace, so a thread of our own does it and ends.
        std::thread::Builder::new()
            .name("peer-probe-net".into())
            .spawn(move || {
                let _ = tx.send(netns::connect_in(&target, addr, timeout));
            })
            .map_err(context)?;
        let stream = rx
            .await
            .map_err(|_| context(io::Error::other("connect thread ended without an answer")))?
            .map_err(context)?;
        stream.set_nonblocking(true).map_err(context)?;
        tokio::net::TcpStream::from_std(stream).map_err(context)
    }
}

/// The helper's side of `exec-probe <json>`: runs the command until it exits or the
/// deadline passes, and returns the `ExecOutcome` as JSON.
pub(crate) fn helper_main(request: &str) -> Result<String, String> {
    let started = Instant::now();
    let req: ExecProbeRequest =
        serde_json::from_str(request).map_err(|e| format!("bad exec-probe request: {e}"))?;
    let deadline = started + Duration::from_millis(req.timeout_ms);
    let outcome = run_with_deadline(&req, deadline).map_err(|e| e.to_string())?;
    serde_json::to_string(&outcome).map_err(|e| format!("container {}: encode reply: {e}", req.id))
}

/// Starts the command as a tenant of the container with stdout and stderr on one pipe,
/// and collects its output until it exits; kills it at `deadline`.
fn run_with_deadline(req: &ExecProbeRequest, deadline: Instant) -> Result<ExecOutcome, Error> {
    let id = req.id.as_str();
    let object = || format!("container {id}");
    let io_err = |action, path: &str, e: io::Error| Error::io(object(), action, path, e);
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io_err("create", "pipe", e.into()))?;
    let write_end2 = write_end.try_clone().map_err(|e| io_err("duplicate", "pipe", e))?;
    let stdin = File::open("/dev/null").map_err(|e| io_err("open", "/dev/null", e))?;
    // Only our end is non-blocking; the command's end stays as programs expect it.
    fcntl(read_end.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| io_err("set non-blocking", "pipe", e.into()))?;
    let stdio = TenantStdio { stdin: Some(stdin.into()), stdout: Some(write_end), stderr: Some(write_end2) };
    // The builder consumed (and closed) our copies of the write end, so the pipe ends
    // when the command and whatever inherited its stdout have exited.
    let pid = exec::spawn(&req.state_root, id, &req.command, false, stdio)?;
    let result = collect(id, pid, File::from(read_end), deadline);
    if !matches!(result, Ok(ExecOutcome::Exited { .. })) {
        kill_and_reap(pid);
    }
    result
}

/// Reads the command's output until it exits (then reaps it) or `deadline` passes.
fn collect(id: &str, pid: Pid, mut pipe: File, deadline: Instant) -> Result<ExecOutcome, Error> {
    let fail = |message: String| Error::Exec { id: id.to_owned(), message };
    // A pidfd turns "the child exited" into something poll can wait on with the pipe.
    let pidfd: OwnedFd =
        exit::pidfd_open(pid.as_raw()).map_err(|e| fail(format!("pidfd of pid {pid}: {e}")))?;
    let mut output = Capture::new(PROBE_OUTPUT_LIMIT);
    let mut pipe_open = true;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(ExecOutcome::TimedOut);
        }
        let timeout = PollTimeout::try_from(remaining).unwrap_or(PollTimeout::MAX);
        let (exited, readable) = {
            let mut fds = vec![PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            if pipe_open {
                fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(fail(format!("poll: {e}"))),
            }
            let ready = |fd: Option<&PollFd>| fd.and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
            (ready(fds.first()), ready(fds.get(1)))
        };
        if readable {
            pipe_open = output.read_from(&mut pipe).map_err(|e| fail(format!("read output: {e}")))?;
        }
        if exited {
            let exit_code = exec::wait_exit(id, pid)?;
            // What the command wrote before it exited is in the pipe already; later
            // output of children it left behind is not waited for.
            if pipe_open {
                output.read_from(&mut pipe).map_err(|e| fail(format!("read output: {e}")))?;
            }
            return Ok(ExecOutcome::Exited { exit_code, output: output.into_string() });
        }
    }
}

/// SIGKILLs the command's process group (the tenant process leads its own session) and
/// the process itself, then reaps it. Errors are moot: it may be gone already.
fn kill_and_reap(pid: Pid) {
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// The first `limit` bytes read; the rest is read and dropped.
struct Capture {
    bytes: Vec<u8>,
    limit: usize,
}

impl Capture {
    fn new(limit: usize) -> Capture {
        Capture { bytes: Vec::new(), limit }
    }

    /// Reads what `source` has now: `Ok(false)` at end of file, `Ok(true)` when it
    /// would block.
    fn read_from(&mut self, source: &mut impl Read) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        loop {
            match source.read(&mut buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let keep = n.min(self.limit - self.bytes.len());
                    self.bytes.extend_from_slice(&buf[..keep]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn into_string(self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields its chunks, then "would block" once, then end of file.
    struct Chunks(Vec<Vec<u8>>, bool);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                if !self.1 {
                    self.1 = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                return Ok(0);
            }
            let chunk = self.0.remove(0);
            buf[..chunk.len()].copy_from_slice(&chunk);
            Ok(chunk.len())
        }
    }

    #[test]
    fn capture_keeps_the_first_bytes_and_drains_the_rest() {
        let mut capture = Capture::new(5);
        let mut source = Chunks(vec![b"abc".to_vec(), b"defg".to_vec(), b"hij".to_vec()], false);
        assert!(capture.read_from(&mut source).expect("read"), "would block is not the end");
        assert!(source.0.is_empty(), "everything was read");
        assert!(!capture.read_from(&mut source).expect("read"), "end of file");
        assert_eq!(capture.into_string(), "abcde");
    }

    #[test]
    fn capture_cut_inside_a_character_is_lossy_not_an_error() {
        let mut capture = Capture::new(4);
        capture.read_from(&mut Chunks(vec!["abcé".as_bytes().to_vec()], true)).expect("read");
        assert_eq!(capture.into_string(), "abc\u{fffd}");
    }

    #[test]
    fn request_round_trips() {
        let req = ExecProbeRequest {
            id: "c1".into(),
            state_root: "/r/state".into(),
            command: vec!["cat".into(), "/ready".into()],
            timeout_ms: 1000,
        };
        let json = serde_json::to_string(&req).expect("encode");
        let back: ExecProbeRequest = serde_json::from_str(&json).expect("decode");
        assert_eq!((back.id, back.command, back.timeout_ms), (req.id, req.command, req.timeout_ms));
    }

    #[test]
    fn a_bad_request_is_an_error_not_a_panic() {
        let err = helper_main("{").expect_err("bad json");
        assert!(err.starts_with("bad exec-probe request"), "{err}");
    }
}
