//! Running one more process inside a running container through libcontainer's tenant
//! builder: `peer exec` (from the single-threaded CLI process, with the CLI's stdio) and
//! exec probes (from the helper process, with a pipe).

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus as LcStatus};
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::error::{validate_id, Error};
use crate::exit;

/// Runs `args` in the running container `id` (state under `root`, the `RuntimeConfig::root`)
/// with the container's user, environment, working directory and capabilities, stdio
/// inherited from the caller, and returns its exit code (`128 + signal` if killed).
///
/// With `tty`, the process is told it has a terminal and gets `TERM` if unset; it uses
/// the caller's terminal as is (no new pty is allocated).
///
/// Call only from a single-threaded process without tokio: libcontainer's `build()`
/// changes the working directory of the whole process and clones without exec.
pub fn exec(root: &Path, id: &str, args: &[String], tty: bool) -> Result<i32, Error> {
    let pid = spawn(&root.join("state"), id, args, tty, TenantStdio::default())?;
    wait_exit(id, pid)
}

/// Where a tenant process's stdin, stdout and stderr go; `None` inherits the caller's.
#[derive(Debug, Default)]
pub(crate) struct TenantStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl TenantStdio {
    fn apply(self, mut builder: ContainerBuilder) -> ContainerBuilder {
        if let Some(fd) = self.stdin {
            builder = builder.with_stdin(fd);
        }
        if let Some(fd) = self.stdout {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = self.stderr {
            builder = builder.with_stderr(fd);
        }
        builder
    }
}

/// Starts `args` in the running container `id` (libcontainer state under `state_root`)
/// with the container's process settings and returns its host pid.
///
/// The process is a child of the caller (libcontainer clones it with `CLONE_PARENT`
/// from its intermediate process), the leader of a new session and process group,
/// in the container's namespaces and cgroup. When this returns it has already exec'd.
///
/// Call only from a single-threaded process without tokio (see [`exec`]) and without
/// children of its own: when the build fails, every child of the caller is reaped.
pub(crate) fn spawn(
    state_root: &Path,
    id: &str,
    args: &[String],
    tty: bool,
    stdio: TenantStdio,
) -> Result<Pid, Error> {
    validate_id(id)?;
    let fail = |message: String| Error::Exec { id: id.to_owned(), message };
    if args.is_empty() {
        return Err(fail("no command given".to_owned()));
    }
    let container = Container::load(state_root.join(id)).map_err(|source| Error::Libcontainer {
        id: id.to_owned(),
        action: "load state",
        source: Box::new(source),
    })?;
    if container.status() != LcStatus::Running {
        let state = container.status().to_string().to_lowercase();
        return Err(Error::NotRunning { id: id.to_owned(), state });
    }
    let config = container.bundle().join("config.json");
    let spec = Spec::load(&config).map_err(|e| fail(format!("read {}: {e}", config.display())))?;
    let mut process =
        spec.process().clone().ok_or_else(|| fail(format!("{} has no process", config.display())))?;
    process.set_args(Some(args.to_vec()));
    process.set_terminal(Some(tty));
    if tty {
        let env = process.env_mut().get_or_insert_with(Vec::new);
        if !env.iter().any(|kv| kv.starts_with("TERM=")) {
            env.push("TERM=xterm".to_owned());
        }
    }
    // One file per calling process: concurrent execs into one container run in
    // different processes.
    let process_file = container.bundle().join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&process).map_err(|e| fail(format!("encode process: {e}")))?;
    fs::write(&process_file, json)
        .map_err(|e| Error::io(format!("container {id}"), "write", &process_file, e))?;

    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(state_root)
        .map(|b| stdio.apply(b).as_tenant().with_process(Some(&process_file)).with_detach(false))
        .and_then(|b| b.build());
    let _ = fs::remove_file(&process_file);
    built.map_err(|e| {
        // libcontainer started the tenant process (and its intermediate process) before
        // it learned that setup or exec failed, and returns no pid: reap them here, or
        // they become zombies of the agent (a child subreaper) when the helper exits.
        exit::reap_children(exit::FAILED_BUILD_PATIENCE);
        fail(e.to_string())
    })
}

/// Waits for the tenant process `pid` of container `id` and returns its exit code
/// (`128 + signal` if killed).
pub(crate) fn wait_exit(id: &str, pid: Pid) -> Result<i32, Error> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Exec { id: id.to_owned(), message: format!("wait for pid {pid}: {e}") })
            }
        }
    }
}

/// The shell-style exit code of a finished process; `None` for other wait states.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}
