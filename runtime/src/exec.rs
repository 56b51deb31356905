//! `peer exec`: runs one more process inside a running container, from the
//! single-threaded CLI process, with the CLI's stdio.

use std::fs;
use std::path::Path;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus as LcStatus};
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};

use crate::error::{validate_id, Error};

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
    validate_id(id)?;
    let fail = |message: String| Error::Exec { id: id.to_owned(), message };
    if args.is_empty() {
        return Err(fail("no command given".to_owned()));
    }
    let state_root = root.join("state");
    let container = Container::load(state_root.join(id)).map_err(|source| Error::Libcontainer {
        id: id.to_owned(),
        action: "load state",
        source: Box::new(source),
    })?;
    if container.status() != LcStatus::Running {
        return Err(fail(format!("container is {:?}, not running", container.status())));
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
    let process_file = container.bundle().join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&process).map_err(|e| fail(format!("encode process: {e}")))?;
    fs::write(&process_file, json)
        .map_err(|e| Error::io(format!("container {id}"), "write", &process_file, e))?;

    let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(&state_root)
        .map(|b| b.as_tenant().with_process(Some(&process_file)).with_detach(false))
        .and_then(|b| b.build());
    let _ = fs::remove_file(&process_file);
    let pid = built.map_err(|e| fail(e.to_string()))?;
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(fail(format!("wait for pid {pid}: {e}"))),
        }
    }
}
