//! `Runtime`: the agent-side handle that runs, stops, inspects and removes containers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use libcontainer::container::{Container, ContainerStatus as LcStatus};
use libcontainer::signal::Signal;
use nix::sys::signal::Signal as NixSignal;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::bundle::{self, BundlePaths, ReadonlyEtc, SpecInput};
use crate::cgroup::{self, CgroupPlace, CgroupVersion};
use crate::error::{validate_id, Error};
use crate::exit::{self, Watch, Watchers};
use crate::helper::{CreateReply, CreateRequest, ServerReply};
use crate::image::ResolvedImage;
use crate::spec::{ContainerSpec, ContainerStatus, ExitEvent, Started};
use crate::{netns, overlay, process, StartGate};

/// How often `stop_container` looks whether the container is gone.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long to wait for the container to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where the runtime keeps its state and how it reaches its helper process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Root of all runtime state, e.g. `/var/lib/peer/runtime`. Holds `state/`
    /// (libcontainer), `containers/<id>/` (bundles) and `netns/<pod>` (pod namespaces).
    pub root: PathBuf,
    /// Executable that runs `helper::main`, normally the peer binary itself.
    pub helper_exe: PathBuf,
    /// Arguments put before the helper's own, e.g. `["__runtime-helper"]`.
    pub helper_args: Vec<String>,
    /// Parent cgroup of every container, e.g. `peer`: containers get `/<parent>/<id>`.
    pub cgroup_parent: String,
}

/// Runs containers through libcontainer, on cgroup v1 or v2.
///
/// Call order: `new` once (inside a tokio runtime), take `exits()` once, then any of the
/// other calls concurrently. `run_container` starts watching the new process itself;
/// after an agent restart, `list_containers` + `inspect` + `watch` re-adopt survivors.
/// Dropping the `Runtime` stops the watchers but never the containers.
pub struct Runtime {
    cfg: RuntimeConfig,
    cgroups: CgroupVersion,
    swap_accounting: bool,
    /// The folder of pod network namespaces when it is a mount of its own, so that create
    /// children can drop the other pods' namespace mounts from their mount tables.
    own_netns_mount: Option<PathBuf>,
    exit_tx: UnboundedSender<ExitEvent>,
    exit_rx: Mutex<Option<UnboundedReceiver<ExitEvent>>>,
    watchers: Watchers,
    /// Create servers (`helper` module) that wait for a request; a create takes one
    /// and gives it back, so the exec and start-up of a helper is paid once per server.
    create_servers: Mutex<Vec<CreateServer>>,
    /// Bounds the servers in use at once to [`CREATE_SERVERS`].
    create_permits: tokio::sync::Semaphore,
}

/// How many create servers run at most (and are started ahead of time): each does one
/// create at a time, so this is also how many creates run at once.
const CREATE_SERVERS: usize = 4;

/// A running create server and its pipes.
struct CreateServer {
    /// Killed when dropped; otherwise it ends when its stdin closes.
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl Runtime {
    /// Makes this process a child subreaper (so container inits are reparented to it and
    /// can be reaped with their exit status) and creates the state directories.
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime, Error> {
        nix::sys::prctl::set_child_subreaper(true).map_err(Error::Subreaper)?;
        for dir in [cfg.root.join("state"), cfg.root.join("containers"), cfg.root.join("netns")] {
            fs::create_dir_all(&dir).map_err(|e| Error::io("runtime", "create directory", &dir, e))?;
        }
        let cgroups = CgroupVersion::detect()
            .map_err(|e| Error::io("runtime", "detect cgroup version of", "/sys/fs/cgroup", e))?;
        let netns_dir = cfg.root.join("netns");
        let own_netns_mount = match netns::make_own_mount(&netns_dir) {
            Ok(true) => Some(netns_dir),
            Ok(false) => {
                tracing::info!(
                    dir = %netns_dir.display(),
                    "pod network namespaces made before this version; their folder becomes a mount of its own once they are gone (at the latest after a reboot)"
                );
                None
            }
            Err(e) => {
                tracing::warn!(dir = %netns_dir.display(), "cannot make the pod namespace folder a mount: {e}");
                None
            }
        };
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        Ok(Runtime {
            own_netns_mount,
            swap_accounting: cgroup::swap_accounting(cgroups),
            cgroups,
            cfg,
            exit_tx,
            exit_rx: Mutex::new(Some(exit_rx)),
            watchers: Watchers::default(),
            create_servers: Mutex::new(Vec::new()),
            create_permits: tokio::sync::Semaphore::new(CREATE_SERVERS),
        })
    }

    /// libcontainer's state root.
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.cfg.root.join("state")
    }

    /// The helper executable, for error messages.
    pub(crate) fn helper_exe(&self) -> &std::path::Path {
        &self.cfg.helper_exe
    }

    /// A command that runs the helper process; add the helper's own arguments.
    pub(crate) fn helper_command(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.cfg.helper_exe);
        command.args(&self.cfg.helper_args);
        command
    }

    fn bundle_paths(&self, id: &str) -> BundlePaths {
        BundlePaths::new(&self.cfg.root.join("containers"), id)
    }

    fn cgroup(&self, id: &str) -> CgroupPlace {
        CgroupPlace::new(self.cgroups, &self.cfg.cgroup_parent, id)
    }

    /// Path of the pod's network namespace file (whether it exists or not).
    pub fn pod_netns_path(&self, pod_id: &str) -> PathBuf {
        self.cfg.root.join("netns").join(pod_id)
    }

    /// Creates the pod's persistent network namespace (only `lo`, up) at
    /// `root/netns/<pod_id>` and returns its path. Idempotent.
    pub async fn ensure_pod_netns(&self, pod_id: &str) -> Result<PathBuf, Error> {
        validate_id(pod_id)?;
        let path = self.pod_netns_path(pod_id);
        if netns::is_netns(&path) {
            return Ok(path);
        }
        let object = format!("pod {pod_id}");
        // unshare(CLONE_NEWNET) moves only the calling thread, so a short-lived thread of
        // our own does it (never a pooled tokio thread, which would stay in the namespace).
        // This saves a helper process per pod; nothing here clones or changes directory.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let target = path.clone();
        std::thread::Builder::new()
            .name("peer-netns".into())
            .spawn(move || {
                let _ = tx.send(netns::create(&target));
            })
            .map_err(|e| Error::io(object.clone(), "spawn netns thread", &path, e))?;
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Error::io(object, "create network namespace", &path, e)),
            Err(_) => {
                return Err(Error::Helper { object, message: "netns thread ended without an answer".into() })
            }
        }
        if !netns::is_netns(&path) {
            return Err(Error::Helper {
                object,
                message: format!("no namespace at {} after creating it", path.display()),
            });
        }
        Ok(path)
    }

    /// Unmounts and deletes the pod's network namespace; fine if it does not exist.
    pub async fn remove_pod_netns(&self, pod_id: &str) -> Result<(), Error> {
        validate_id(pod_id)?;
        let path = self.pod_netns_path(pod_id);
        netns::remove(&path)
            .map_err(|e| Error::io(format!("pod {pod_id}"), "remove network namespace", &path, e))
    }

    /// Creates and starts a container through the helper process and starts watching it.
    /// On error, `remove_container` cleans up what was prepared (bundle, rootfs mount).
    ///
    /// Stale state of an exited container with the same id is deleted first; its upper
    /// dir (the container's writes) is kept. Fails with `AlreadyRunning` if it still runs.
    pub async fn run_container(&self, spec: &ContainerSpec, image: &ResolvedImage) -> Result<Started, Error> {
        self.run_container_gated(spec, image, None).await
    }

    /// A shut [`StartGate`] for container `id`, in its bundle (removed with it): pass
    /// its path to [`Runtime::run_container_gated`] to create the container while the pod
    /// is made ready, and open it once it is.
    pub fn start_gate(&self, id: &str) -> Result<StartGate, Error> {
        validate_id(id)?;
        let dir = self.bundle_paths(id).dir;
        let object = format!("container {id}");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&object, "create directory", &dir, e))?;
        let path = dir.join("start-gate");
        StartGate::shut(path.clone()).map_err(|e| Error::io(&object, "lock", &path, e))
    }

    /// [`Runtime::run_container`]; with `gate`, the container is created at once and
    /// started only once the gate at that path opens (it is deleted if the gate says no).
    pub async fn run_container_gated(
        &self,
        spec: &ContainerSpec,
        image: &ResolvedImage,
        gate: Option<&Path>,
    ) -> Result<Started, Error> {
        let id = spec.id.as_str();
        validate_id(id)?;
        self.clear_stale_state(id).await?;

        let paths = self.bundle_paths(id);
        let plan = process::plan(spec, image)?;
        let input = SpecInput {
            process: &plan,
            hostname: &spec.hostname,
            bundle: &paths.dir,
            network: &spec.network,
            cgroups_path: self.cgroup(id).path,
            limits: spec.limits,
            swap_accounting: self.swap_accounting,
            readonly_etc: ReadonlyEtc::of(spec),
        };
        let oci = bundle::oci_spec(&input)
            .map_err(|source| Error::Spec { id: id.to_owned(), source: Box::new(source) })?;
        bundle::write(&paths, spec, &oci)?;

        let request = CreateRequest {
            id: id.to_owned(),
            state_root: self.state_dir(),
            bundle: paths.dir.clone(),
            log_path: spec.log_path.clone(),
            layers: image.layers.clone(),
            upper: paths.upper.clone(),
            work: paths.work.clone(),
            netns_dir: self.own_netns_mount.clone(),
            netns: match &spec.network {
                crate::Network::Namespace(path) => Some(path.clone()),
                crate::Network::Host => None,
            },
            gate: gate.map(Path::to_path_buf),
        };
        let object = format!("container {id}");
        let json = serde_json::to_string(&request)
            .map_err(|e| Error::Helper { object: object.clone(), message: format!("encode request: {e}") })?;
        let out = self.run_create(&object, json).await?;
        let reply: CreateReply = serde_json::from_str(out.trim())
            .map_err(|e| Error::Helper { object, message: format!("bad reply {out:?}: {e}") })?;
        self.watch(id, reply.pid, reply.start_time);
        Ok(Started { pid: reply.pid, start_time: reply.start_time })
    }

    /// Deletes libcontainer state left by an earlier run of `id`, unless it still runs.
    async fn clear_stale_state(&self, id: &str) -> Result<(), Error> {
        let dir = self.state_dir().join(id);
        if !dir.exists() {
            return Ok(());
        }
        let owned = id.to_owned();
        blocking(move || {
            let mut container = load(&owned, dir)?;
            if container.status() == LcStatus::Running {
                let pid = container.pid().map_or(0, |p| p.as_raw());
                return Err(Error::AlreadyRunning { id: owned, pid });
            }
            container.delete(true).map_err(|source| Error::Libcontainer {
                id: owned,
                action: "delete",
                source: Box::new(source),
            })
        })
        .await
    }

    /// Starts a create server.
    fn spawn_server(&self) -> std::io::Result<CreateServer> {
        let mut child = self
            .helper_command()
            .arg("create-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("create server without pipes"));
        };
        Ok(CreateServer { _child: child, stdin, stdout: tokio::io::BufReader::new(stdout) })
    }

    /// Starts the create servers ahead of time, so the first creates find them ready;
    /// call it once the agent is up. Needs a tokio runtime.
    pub fn start_create_servers(&self) {
        let mut servers = self.create_servers.lock().unwrap_or_else(|e| e.into_inner());
        while servers.len() < CREATE_SERVERS {
            match self.spawn_server() {
                Ok(server) => servers.push(server),
                Err(e) => {
                    tracing::warn!("starting a runtime create server: {e}");
                    break;
                }
            }
        }
    }

    /// Runs one create in a waiting create server (or a new one); returns its answer.
    async fn run_create(&self, object: &str, request: String) -> Result<String, Error> {
        let failed = |message: String| Error::Helper { object: object.to_owned(), message };
        let _permit = self.create_permits.acquire().await.map_err(|e| failed(e.to_string()))?;
        let idle = self.create_servers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut server = match idle {
            Some(s) => s,
            None => self.spawn_server().map_err(|source| Error::HelperSpawn {
                object: object.to_owned(),
                path: self.cfg.helper_exe.clone(),
                source,
            })?,
        };
        // A server that fails here is dropped (and killed); the next create starts anew.
        let reply = server_request(&mut server, &request).await.map_err(failed)?;
        self.create_servers.lock().unwrap_or_else(|e| e.into_inner()).push(server);
        match reply {
            ServerReply::Created(out) => Ok(out),
            ServerReply::Failed(message) => Err(failed(message)),
        }
    }

    /// Sends SIGTERM to every process of the container, waits up to `grace` for it to
    /// exit, then SIGKILLs and waits until it is gone. Fine if it is not running.
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), Error> {
        validate_id(id)?;
        let dir = self.state_dir().join(id);
        if !dir.exists() {
            return Ok(());
        }
        let Some(pid) = self.signal(id, NixSignal::SIGTERM).await? else {
            return Ok(());
        };
        if self.wait_gone(id, pid, grace).await {
            return Ok(());
        }
        tracing::info!(id, pid, ?grace, "container ignored sigterm; killing it");
        if self.signal(id, NixSignal::SIGKILL).await?.is_none() || self.wait_gone(id, pid, KILL_WAIT).await {
            return Ok(());
        }
        Err(Error::StopTimeout { id: id.to_owned(), pid })
    }

    /// Signals all processes of a running container; returns its init pid, or `None`
    /// if it was not running.
    async fn signal(&self, id: &str, signal: NixSignal) -> Result<Option<i32>, Error> {
        let dir = self.state_dir().join(id);
        let owned = id.to_owned();
        blocking(move || {
            let mut container = load(&owned, dir)?;
            let pid = container.pid().map(|p| p.as_raw());
            let (LcStatus::Running | LcStatus::Paused | LcStatus::Created, Some(pid)) =
                (container.status(), pid)
            else {
                return Ok(None);
            };
            container.kill(Signal::from(signal), true).map_err(|source| Error::Libcontainer {
                id: owned,
                action: "kill",
                source: Box::new(source),
            })?;
            Ok(Some(pid))
        })
        .await
    }

    /// Waits until the init process is no longer running or the cgroup holds no process.
    async fn wait_gone(&self, id: &str, pid: i32, timeout: Duration) -> bool {
        let cgroup = self.cgroup(id);
        let gone = || !exit::proc_stat(pid).is_some_and(|s| s.alive) || cgroup.pids().is_empty();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if gone() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }

    /// Deletes the container: kills what is left, removes libcontainer state, unmounts
    /// the rootfs if the node's mount table has it (only containers started by an older
    /// peer: the overlay now lives in the container's own mount namespace, `helper`),
    /// and removes the bundle, upper/work dirs and cgroup directories.
    /// Fine if nothing exists.
    pub async fn remove_container(&self, id: &str) -> Result<(), Error> {
        validate_id(id)?;
        let dir = self.state_dir().join(id);
        let paths = self.bundle_paths(id);
        let cgroup = self.cgroup(id);
        let owned = id.to_owned();
        let result = blocking(move || {
            let object = format!("container {owned}");
            // A failed libcontainer delete (e.g. its cgroup already gone) must not leave the
            // rootfs mounted: the rest of the cleanup runs, then the error is reported.
            let deleted = if dir.exists() {
                load(&owned, dir.clone()).and_then(|mut container| {
                    container.delete(true).map_err(|source| Error::Libcontainer {
                        id: owned.clone(),
                        action: "delete",
                        source: Box::new(source),
                    })
                })
            } else {
                Ok(())
            };
            overlay::unmount(&paths.rootfs).map_err(|e| Error::io(&object, "unmount", &paths.rootfs, e))?;
            if overlay::is_mounted(&paths.rootfs).unwrap_or(true) && paths.rootfs.exists() {
                return Err(Error::StillMounted { id: owned, path: paths.rootfs });
            }
            match fs::remove_dir_all(&paths.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(&object, "remove", &paths.dir, e));
                }
                _ => {}
            }
            cgroup.remove_leftovers().map_err(|e| Error::io(&object, "remove cgroup", &cgroup.path, e))?;
            deleted
        })
        .await;
        self.watchers.forget(id);
        result
    }

    /// Ids of the containers that have libcontainer state or a bundle under the root,
    /// sorted: everything `remove_container` would clean up (a failed `run_container`
    /// leaves a bundle without state).
    pub fn list_containers(&self) -> Result<Vec<String>, Error> {
        let mut ids = std::collections::BTreeSet::new();
        for (dir, marker) in
            [(self.state_dir(), "state.json"), (self.cfg.root.join("containers"), "config.json")]
        {
            let entries = fs::read_dir(&dir).map_err(|e| Error::io("runtime", "list", &dir, e))?;
            ids.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join(marker).is_file())
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        Ok(ids.into_iter().collect())
    }

    /// Whether the container runs (with its pid and start time), stopped, or is unknown.
    /// A container created but never started counts as stopped.
    pub fn inspect(&self, id: &str) -> Result<ContainerStatus, Error> {
        validate_id(id)?;
        let dir = self.state_dir().join(id);
        if !dir.join("state.json").exists() {
            return Ok(ContainerStatus::Missing);
        }
        let container = load(id, dir)?;
        let running = matches!(container.status(), LcStatus::Running | LcStatus::Paused);
        let stat = container.pid().and_then(|p| exit::proc_stat(p.as_raw()).map(|s| (p.as_raw(), s)));
        Ok(match stat {
            Some((pid, s)) if running && s.alive => {
                ContainerStatus::Running { pid, start_time: s.start_time }
            }
            _ => ContainerStatus::Stopped,
        })
    }

    /// The container's CPU time so far and its memory working set, read from its cgroup
    /// (a few small files: cheap, but blocking); `None` when the cgroup is gone.
    pub fn container_usage(&self, id: &str) -> Option<crate::Usage> {
        validate_id(id).ok()?;
        self.cgroup(id).usage()
    }

    /// Watches the container process `pid` (which started at `start_time`); when it
    /// exits an `ExitEvent` goes to the `exits()` channel. A process that is already
    /// gone, or whose pid now belongs to another process, is reported at once with an
    /// unknown exit code. Watching the same id and pid again does nothing.
    /// Must be called inside a tokio runtime.
    pub fn watch(&self, id: &str, pid: i32, start_time: u64) {
        let w = Watch { id: id.to_owned(), pid, start_time, cgroup: self.cgroup(id) };
        self.watchers.watch(w, self.exit_tx.clone());
    }

    /// The channel of exit events. The first call takes it; later calls get a closed one.
    pub fn exits(&self) -> UnboundedReceiver<ExitEvent> {
        match self.exit_rx.lock().ok().and_then(|mut rx| rx.take()) {
            Some(rx) => rx,
            None => {
                tracing::warn!("Runtime::exits called twice; returning a closed channel");
                mpsc::unbounded_channel().1
            }
        }
    }
}

fn load(id: &str, dir: PathBuf) -> Result<Container, Error> {
    Container::load(dir).map_err(|source| Error::Libcontainer {
        id: id.to_owned(),
        action: "load state",
        source: Box::new(source),
    })
}

/// Runs blocking libcontainer and filesystem work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => {
            Err(Error::Helper { object: "runtime".to_owned(), message: format!("blocking task failed: {e}") })
        }
    }
}

/// Sends one create request line to a server and reads its reply line.
async fn server_request(server: &mut CreateServer, request: &str) -> Result<ServerReply, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    // The request is compact JSON: it holds no newline.
    let line = format!("{request}\n");
    server.stdin.write_all(line.as_bytes()).await.map_err(|e| format!("sending the request: {e}"))?;
    server.stdin.flush().await.map_err(|e| format!("sending the request: {e}"))?;
    let mut answer = String::new();
    match server.stdout.read_line(&mut answer).await {
        Ok(0) => Err("the create server exited without an answer".into()),
        Ok(_) => serde_json::from_str(answer.trim()).map_err(|e| format!("bad answer {answer:?}: {e}")),
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}
