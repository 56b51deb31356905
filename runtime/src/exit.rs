//! Watching container processes: pid identity through `/proc/<pid>/stat`, exit
//! notification through pidfds, and reaping the ones that are our children.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::cgroup::CgroupPlace;
use crate::spec::ExitEvent;

/// Start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) and whether
/// the process is still running (not a zombie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub start_time: u64,
    pub alive: bool,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(crate) fn proc_stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses a `stat` line. The command name may hold spaces and parentheses, so fields
/// are counted from the last `)`: state is field 3, start time field 22.
pub(crate) fn parse_stat(line: &str) -> Option<ProcStat> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { start_time, alive: !matches!(state, "Z" | "X" | "x") })
}

/// Whether `pid` is the process that started at `start_time` and has not exited.
pub(crate) fn is_running(pid: i32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.alive && s.start_time == start_time)
}

/// Opens a pidfd for `pid`. It also works for processes that are not our children.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd_open returned an out-of-range fd"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How long a helper whose libcontainer `build()` failed waits for the processes it
/// started to exit (see [`reap_children`]).
pub(crate) const FAILED_BUILD_PATIENCE: Duration = Duration::from_secs(2);

/// Reaps every child of the calling process, waiting at most `patience` for them to
/// exit. For the helper after a failed libcontainer `build()`: the intermediate and
/// init processes were started, libcontainer returns an error without their pids, and
/// unreaped they would become zombies of the agent (a child subreaper) once the helper
/// exits. Call only in a process that has no other children.
pub(crate) fn reap_children(patience: Duration) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + patience;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // ECHILD: none left.
            Err(_) => return,
        }
    }
}

/// How a process ended, as far as we could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ended {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// Reaps the exited process behind `pidfd` if it is our child. `Ok(None)` means it
/// has not exited yet; an `ended` with no code means it is not our child.
fn try_reap(pidfd: &OwnedFd) -> io::Result<Option<Ended>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value for it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // The fd is a non-negative i32, so it fits id_t (u32).
    let id = pidfd.as_raw_fd() as libc::id_t;
    // SAFETY: `info` is a valid, writable siginfo_t that outlives the call.
    let rc = unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ECHILD) {
            return Ok(Some(Ended { exit_code: None, signal: None }));
        }
        return Err(err);
    }
    // SAFETY: waitid succeeded and filled `info`; si_pid and si_status are valid for SIGCHLD info.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => Ended { exit_code: Some(status), signal: None },
        _ => Ended { exit_code: Some(128 + status), signal: Some(status) },
    }))
}

/// What to watch: one container process, known by pid and start time.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    pub id: String,
    pub pid: i32,
    pub start_time: u64,
    pub cgroup: CgroupPlace,
}

/// Waits for the process to exit, reaps it if it is ours, and sends its `ExitEvent`.
/// A process that is already gone (or whose pid was reused) is reported with an
/// unknown exit code at once.
pub(crate) async fn watch(w: Watch, tx: UnboundedSender<ExitEvent>) {
    let ended = match pidfd_open(w.pid) {
        // The pidfd pins the process, so the start time read after opening it is its own.
        Ok(fd) if proc_stat(w.pid).is_some_and(|s| s.start_time == w.start_time) => wait_pidfd(&w, fd).await,
        Ok(_) => Ended { exit_code: None, signal: None },
        Err(e) => {
            if e.raw_os_error() != Some(libc::ESRCH) {
                tracing::warn!(id = %w.id, pid = w.pid, error = %e, "cannot open pidfd; reporting the exit as unknown");
            }
            Ended { exit_code: None, signal: None }
        }
    };
    let oom_kills = w.cgroup.oom_kills().unwrap_or(0);
    let event = ExitEvent {
        id: w.id.clone(),
        pid: w.pid,
        exit_code: ended.exit_code,
        signal: ended.signal,
        // Any OOM kill in the container's cgroup counts, as in Kubernetes; a SIGKILL
        // with a non-zero counter is the common case.
        oom_killed: oom_kills > 0,
    };
    tracing::debug!(?event, "container exited");
    // The receiver may be gone during shutdown; then nobody needs the event.
    let _ = tx.send(event);
}

/// The running watcher task per container id, with the pid it watches. Dropping the
/// table stops every watcher (the containers keep running).
#[derive(Debug, Default)]
pub(crate) struct Watchers {
    table: Arc<Mutex<BTreeMap<String, (i32, AbortHandle)>>>,
}

impl Watchers {
    /// Spawns a watcher for `w` unless one already watches the same id and pid; a
    /// watcher of an older pid of the same id is stopped. Needs a tokio runtime.
    pub fn watch(&self, w: Watch, tx: UnboundedSender<ExitEvent>) {
        let Ok(mut table) = self.table.lock() else {
            tracing::error!(id = %w.id, "watcher table poisoned; cannot watch");
            return;
        };
        if let Some((watched, handle)) = table.get(&w.id) {
            if *watched == w.pid && !handle.is_finished() {
                return;
            }
            handle.abort();
        }
        let (id, pid) = (w.id.clone(), w.pid);
        let shared = Arc::clone(&self.table);
        let task = tokio::spawn(async move {
            let (id, pid) = (w.id.clone(), w.pid);
            watch(w, tx).await;
            if let Ok(mut table) = shared.lock() {
                if table.get(&id).is_some_and(|(p, _)| *p == pid) {
                    table.remove(&id);
                }
            }
        });
        table.insert(id, (pid, task.abort_handle()));
    }

    /// Stops watching `id`, if anything watches it.
    pub fn forget(&self, id: &str) {
        if let Some((_, handle)) = self.table.lock().ok().and_then(|mut t| t.remove(id)) {
            handle.abort();
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        if let Ok(table) = self.table.lock() {
            for (_, handle) in table.values() {
                handle.abort();
            }
        }
    }
}

async fn wait_pidfd(w: &Watch, fd: OwnedFd) -> Ended {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the fd stays open and the
    // same until the AsyncFd is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) };
    let afd = match registered {
        Ok(afd) => afd,
        Err(e) => {
            tracing::warn!(id = %w.id, pid = w.pid, error = %e, "cannot register pidfd; polling instead");
            return poll_until_gone(w).await;
        }
    };
    loop {
        // Wait for readability first: waitid on a process that is not our child fails
        // with ECHILD at once, so reaping early would end the watch of an adopted
        // container while it still runs. A pidfd turns readable when the process exits.
        let mut guard = match afd.readable().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::warn!(id = %w.id, pid = w.pid, error = %e, "pidfd wait failed; polling instead");
                return poll_until_gone(w).await;
            }
        };
        match try_reap(afd.get_ref()) {
            Ok(Some(Ended { exit_code: None, .. })) => return reap_once_ours(w, afd.get_ref()).await,
            Ok(Some(ended)) => return ended,
            Ok(None) => guard.clear_ready(),
            Err(e) => {
                tracing::warn!(id = %w.id, pid = w.pid, error = %e, "waitid failed; reporting the exit as unknown");
                return poll_until_gone(w).await;
            }
        }
    }
}

/// How long an exited process that is not (yet) our child is given to become ours.
const REPARENT_PATIENCE: Duration = Duration::from_secs(2);

/// The process exited but is not our child. A container whose init exits at once can
/// get here: the create child that is its parent answers before it exits, and only its
/// exit hands the init over to the agent (the nearest child subreaper). So while the
/// zombie is there, try again for a while; `None` once someone else reaped it.
async fn reap_once_ours(w: &Watch, pidfd: &OwnedFd) -> Ended {
    let unknown = Ended { exit_code: None, signal: None };
    let deadline = tokio::time::Instant::now() + REPARENT_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        match try_reap(pidfd) {
            Ok(Some(ended)) if ended.exit_code.is_some() => return ended,
            Ok(_) if proc_stat(w.pid).is_some_and(|s| s.start_time == w.start_time) => {}
            Ok(_) => return unknown,
            Err(e) => {
                tracing::warn!(id = %w.id, pid = w.pid, error = %e, "waitid failed; reporting the exit as unknown");
                return unknown;
            }
        }
    }
    unknown
}

async fn poll_until_gone(w: &Watch) -> Ended {
    while is_running(w.pid, w.start_time) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ended { exit_code: None, signal: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let line =
            "1234 (sh -c (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 2273280 200 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some(ProcStat { start_time: 98765, alive: true }));
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), Some(ProcStat { start_time: 98765, alive: false }));
        assert_eq!(parse_stat("garbage"), None);
    }

    fn watch_of(pid: i32) -> Watch {
        let start_time = proc_stat(pid).expect("process exists").start_time;
        let cgroup = CgroupPlace::new(crate::cgroup::CgroupVersion::V2, "peer-no-such-parent", "none");
        Watch { id: "c1".into(), pid, start_time, cgroup }
    }

    async fn watched(w: Watch) -> ExitEvent {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(watch(w, tx));
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("event in time").expect("event")
    }

    // The watcher under test is what reaps these children.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn own_child_is_reaped_with_its_status() {
        let child =
            std::process::Command::new("sh").args(["-c", "sleep 0.2; exit 5"]).spawn().expect("spawn");
        let pid = child.id() as i32;
        let event = watched(watch_of(pid)).await;
        assert_eq!((event.exit_code, event.signal, event.oom_killed), (Some(5), None, false));
        assert!(proc_stat(pid).is_none(), "child {pid} was not reaped");

        let child = std::process::Command::new("sleep").arg("10").spawn().expect("spawn");
        let pid = child.id() as i32;
        let w = watch_of(pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).expect("kill");
        let event = watched(w).await;
        assert_eq!((event.exit_code, event.signal), (Some(137), Some(9)));
    }

    #[tokio::test]
    async fn a_stranger_is_watched_until_it_exits() {
        // `sh` exits at once; the backgrounded sleep is reparented away from us.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.5 >/dev/null 2>&1 & echo $!"])
            .output()
            .expect("sh");
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("pid");
        let started = std::time::Instant::now();
        let event = watched(watch_of(pid)).await;
        assert_eq!((event.exit_code, event.signal), (None, None));
        assert!(started.elapsed() >= Duration::from_millis(300), "event came before the process exited");
    }

    #[tokio::test]
    async fn a_reused_pid_is_reported_at_once() {
        let me = std::process::id() as i32;
        let mut w = watch_of(me);
        w.start_time += 1;
        let event = watched(w).await;
        assert_eq!((event.pid, event.exit_code), (me, None));
    }

    #[test]
    fn own_process_is_running() {
        let me = std::process::id() as i32;
        let stat = proc_stat(me).expect("own stat");
        assert!(stat.alive);
        assert!(is_running(me, stat.start_time));
        assert!(!is_running(me, stat.start_time + 1));
    }
}
