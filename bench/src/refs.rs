//! The reference runs: N containers created and started one after the other by raw
//! libcontainer (in process) or by `crun run -d`, in a child process of the benchmark.
//!
//! Protocol between the orchestrator and a batch child, one line each over stdio:
//! the child writes its bundles, prints `ready`; on `go` it times the creates and prints
//! one JSON [`BatchResult`]; on `cleanup` (or end of input) it kills and deletes its
//! containers and exits. Several children can be released by the same `go` at once.

use std::fs::{self, File};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::default::DefaultExecutor;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal as NixSignal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::bundle::{self, Limits};

/// Which runtime a batch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Engine {
    Libcontainer,
    Crun,
}

/// Everything a batch child needs; passed on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchArgs {
    #[arg(long, value_enum)]
    pub engine: Engine,
    /// Scratch folder of this batch (bundles, runtime state); removed at cleanup.
    #[arg(long)]
    pub work: PathBuf,
    /// The shared, already extracted root file system.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Container ids are `<prefix>-<i>`.
    #[arg(long)]
    pub prefix: String,
    #[arg(long)]
    pub count: usize,
    /// Containers get the cgroup `/<cgroup-parent>/<id>` in every hierarchy.
    #[arg(long)]
    pub cgroup_parent: String,
    #[arg(long)]
    pub cpu_millis: u64,
    #[arg(long)]
    pub memory_mib: u64,
    #[arg(long, default_value = "crun")]
    pub crun: PathBuf,
}

/// What a batch child reports after its creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    /// Create+start time of each container, in order.
    pub per_ms: Vec<f64>,
    /// From `go` to the last start returning.
    pub wall_ms: f64,
    /// How many containers were seen running after the batch (untimed check).
    pub running: usize,
}

/// Entry point of a batch child.
pub fn batch(args: &BatchArgs) -> anyhow::Result<()> {
    // Reap the containers' inits ourselves: crun's are reparented away from crun, and
    // the init of the machine is not known to reap.
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    if args.engine == Engine::Crun {
        private_mounts_without_unified()?;
    }
    fs::create_dir_all(&args.work).with_context(|| format!("creating {}", args.work.display()))?;
    // libcontainer's build() changes the working directory: every path must be absolute.
    let work = args.work.canonicalize().context("resolving the work folder")?;
    let rootfs = args.rootfs.canonicalize().context("resolving the rootfs")?;
    let state = work.join("state");
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let limits = Limits { cpu_millis: args.cpu_millis, memory_mib: args.memory_mib };
    let mut ids = Vec::with_capacity(args.count);
    let mut bundles = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let id = format!("{}-{i}", args.prefix);
        let cgroup = format!("/{}/{id}", args.cgroup_parent);
        bundles.push(bundle::write(&work.join("bundles").join(&id), &id, &rootfs, &cgroup, &limits)?);
        ids.push(id);
    }

    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    say("ready")?;
    match lines.next() {
        Some(Ok(line)) if line == "go" => {}
        other => bail!("batch {}: expected go, got {other:?}", args.prefix),
    }
    let started = Instant::now();
    let mut per_ms = Vec::with_capacity(args.count);
    let mut created = Vec::with_capacity(args.count);
    let mut failure = None;
    for (id, bundle) in ids.iter().zip(&bundles) {
        let t = Instant::now();
        let res = match args.engine {
            Engine::Libcontainer => lc_create(id, bundle, &state),
            Engine::Crun => crun_create(&args.crun, id, bundle, &state, &work),
        };
        per_ms.push(ms(t.elapsed()));
        match res {
            Ok(()) => created.push(id.clone()),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let wall_ms = ms(started.elapsed());
    let running = created
        .iter()
        .filter(|id| match args.engine {
            Engine::Libcontainer => lc_running(id, &state),
            Engine::Crun => crun_running(&args.crun, id, &state),
        })
        .count();
    if failure.is_none() {
        say(&serde_json::to_string(&BatchResult { per_ms, wall_ms, running })
            .context("encoding the result")?)?;
        // Wait for `cleanup`, so that batches released together do not clean up while
        // another one still measures.
        let _ = lines.next();
    }
    for id in &created {
        let res = match args.engine {
            Engine::Libcontainer => lc_remove(id, &state),
            Engine::Crun => crun_remove(&args.crun, id, &state),
        };
        if let Err(e) = res {
            eprintln!("peer-bench: cleanup of {id}: {e:#}");
        }
    }
    reap_all(Duration::from_secs(10));
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to the orchestrator")
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// crun 1.8.1 refuses a hybrid cgroup host; it accepts it as plain v1 once the empty
/// cgroup2 at `/sys/fs/cgroup/unified` is gone, which we do in a private mount namespace.
fn private_mounts_without_unified() -> anyhow::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("unsharing the mount namespace")?;
    // Private first: otherwise the unmount would propagate back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("making / private")?;
    let unified = Path::new("/sys/fs/cgroup/unified");
    let mounted = fs::read_to_string("/proc/self/mounts")
        .context("reading /proc/self/mounts")?
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/cgroup/unified"));
    if mounted {
        umount2(unified, MntFlags::MNT_DETACH).context("unmounting /sys/fs/cgroup/unified")?;
    }
    Ok(())
}

fn lc_create(id: &str, bundle: &Path, state: &Path) -> anyhow::Result<()> {
    let null = || File::options().read(true).write(true).open("/dev/null").context("opening /dev/null");
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_executor(DefaultExecutor {})
        .with_root_path(state)?
        .validate_id()?
        .with_stdin(null()?)
        .with_stdout(null()?)
        .with_stderr(null()?)
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .with_context(|| format!("libcontainer create {id}"))?;
    container.start().with_context(|| format!("libcontainer start {id}"))
}

fn lc_running(id: &str, state: &Path) -> bool {
    Container::load(state.join(id))
        .ok()
        .and_then(|c| c.pid())
        .is_some_and(|pid| crate::procfs::alive(pid.as_raw()))
}

fn lc_remove(id: &str, state: &Path) -> anyhow::Result<()> {
    let mut container = Container::load(state.join(id)).with_context(|| format!("loading {id}"))?;
    let pid = container.pid();
    let _ = container.kill(Signal::from(NixSignal::SIGKILL), true);
    if let Some(pid) = pid {
        wait_gone(pid.as_raw(), Duration::from_secs(10));
    }
    container.delete(true).with_context(|| format!("libcontainer delete {id}"))
}

fn crun_create(crun: &Path, id: &str, bundle: &Path, state: &Path, work: &Path) -> anyhow::Result<()> {
    // The container inherits crun's stdio; a pipe would keep us waiting for its end.
    let err_path = work.join(format!("{id}.crun-err"));
    let err = File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
    let status = Command::new(crun)
        .arg("--root")
        .arg(state)
        .args(["run", "-d", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .status()
        .with_context(|| format!("running {}", crun.display()))?;
    if !status.success() {
        let msg = fs::read_to_string(&err_path).unwrap_or_default();
        bail!("crun run {id}: {status}: {}", msg.trim());
    }
    Ok(())
}

fn crun_running(crun: &Path, id: &str, state: &Path) -> bool {
    let out = Command::new(crun).arg("--root").arg(state).args(["state", id]).stderr(Stdio::null()).output();
    let Ok(out) = out else { return false };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            let running = v.get("status")?.as_str()? == "running";
            let pid = i32::try_from(v.get("pid")?.as_i64()?).ok()?;
            Some(running && crate::procfs::alive(pid))
        })
        .unwrap_or(false)
}

fn crun_remove(crun: &Path, id: &str, state: &Path) -> anyhow::Result<()> {
    let status = Command::new(crun)
        .arg("--root")
        .arg(state)
        .args(["delete", "-f", id])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running {}", crun.display()))?;
    if !status.success() {
        bail!("crun delete -f {id}: {status}");
    }
    Ok(())
}

/// Waits until `pid` is no longer a live process, reaping children meanwhile.
fn wait_gone(pid: i32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while crate::procfs::alive(pid) && Instant::now() < deadline {
        reap_ready();
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn reap_ready() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Reaps children (container inits reparented to us) until none is left or time runs out.
fn reap_all(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
