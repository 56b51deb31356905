//! The fixture of the runtime's container tests: a `Runtime` with its own root directory,
//! cgroup parent and busybox image, cleaned up afterwards even when a test fails.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runtime::{
    ContainerSpec, ContainerStatus, ExitEvent, ImageConfig, Limits, Network, ResolvedImage, Runtime,
    RuntimeConfig,
};
use tokio::sync::mpsc::UnboundedReceiver;

pub const HELPER: &str = env!("CARGO_BIN_EXE_runtime-helper");

/// A runtime with its own root directory, cgroup parent and busybox image.
pub struct Fixture {
    pub base: PathBuf,
    pub cgroup_parent: String,
    pub runtime: Runtime,
    pub exits: UnboundedReceiver<ExitEvent>,
    pub image: ResolvedImage,
}

/// `None` (after printing why) when not root and root tests are not required.
pub fn fixture(name: &str) -> Option<Fixture> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("PEER_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!("{name}: needs root, and PEER_REQUIRE_ROOT_TESTS=1 is set");
        }
        eprintln!("skipping {name}: needs root (set PEER_REQUIRE_ROOT_TESTS=1 to make this a failure)");
        return None;
    }
    let base = std::env::temp_dir().join(format!("peer-rt-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    let layer = base.join("layer");
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "mnt"] {
        fs::create_dir_all(layer.join(dir)).expect("create layer dir");
    }
    fs::copy("/usr/bin/busybox", layer.join("bin/busybox")).expect("copy busybox (install busybox-static)");
    let list = std::process::Command::new("/usr/bin/busybox").arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
        symlink("busybox", layer.join("bin").join(applet)).expect("symlink applet");
    }
    let cgroup_parent = format!("peer-test-{}-{name}", std::process::id());
    let runtime = Runtime::new(RuntimeConfig {
        root: base.join("root"),
        helper_exe: PathBuf::from(HELPER),
        helper_args: Vec::new(),
        cgroup_parent: cgroup_parent.clone(),
    })
    .expect("runtime");
    let exits = runtime.exits();
    let image = ResolvedImage {
        reference: "test/busybox:latest".into(),
        id: "sha256:test".into(),
        layers: vec![layer],
        config: ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "FROM_IMAGE=1".into()],
            working_dir: None,
            user: None,
        },
    };
    Some(Fixture { base, cgroup_parent, runtime, exits, image })
}

impl Fixture {
    pub fn spec(&self, id: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            args: vec![],
            env: vec![("GREETING".into(), "hi".into())],
            working_dir: None,
            hostname: format!("{id}-host"),
            limits: Limits::default(),
            network: Network::Host,
            log_path: self.base.join("logs").join(format!("{id}.log")),
            dns: None,
            hosts: Vec::new(),
        }
    }

    pub async fn next_exit(&mut self, id: &str) -> ExitEvent {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(30), self.exits.recv())
                .await
                .expect("an exit event within 30 s")
                .expect("exit channel open");
            if event.id == id {
                return event;
            }
        }
    }

    pub fn log(&self, id: &str) -> String {
        fs::read_to_string(self.base.join("logs").join(format!("{id}.log"))).unwrap_or_default()
    }

    pub async fn wait_for_log(&self, id: &str, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !self.log(id).contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "log of {id} never got {needle:?}: {}",
                self.log(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn cleanup(self, ids: &[&str]) {
        for id in ids {
            self.runtime.remove_container(id).await.expect("remove container");
            self.runtime.remove_container(id).await.expect("removing again is fine");
            assert_eq!(self.runtime.inspect(id).expect("inspect"), ContainerStatus::Missing);
            assert!(!self.base.join("root/containers").join(id).exists(), "bundle of {id} left behind");
        }
        assert!(self.runtime.list_containers().expect("list").is_empty());
        for hierarchy in fs::read_dir("/sys/fs/cgroup").expect("cgroup root").flatten() {
            let dir = hierarchy.path().join(&self.cgroup_parent);
            for id in ids {
                assert!(!dir.join(id).exists(), "cgroup {} left behind", dir.join(id).display());
            }
            let _ = fs::remove_dir(dir);
        }
        // The runtime made its folder of pod network namespaces a mount of its own (as
        // `ip netns` does with /run/netns); that outlives the containers, as on a node.
        nix::mount::umount2(&self.base.join("root/netns"), nix::mount::MntFlags::MNT_DETACH)
            .expect("unmount the pod namespace folder");
        fs::remove_dir_all(&self.base).expect("remove test dir");
    }
}

/// Best-effort cleanup when a test fails half-way: kill what runs in the test's
/// cgroups, unmount what is mounted under the test directory, remove it.
impl Drop for Fixture {
    fn drop(&mut self) {
        if !self.base.exists() {
            return;
        }
        for hierarchy in fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            for container in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let procs = fs::read_to_string(container.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.parse().ok()) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.base))
            .collect();
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        }
        // Container cgroups the runtime could not remove, then the parent.
        for hierarchy in fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            for container in fs::read_dir(&parent).into_iter().flatten().flatten() {
                if container.path().is_dir() {
                    let _ = fs::remove_dir(container.path());
                }
            }
            let _ = fs::remove_dir(parent);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Zombie children of this process (a child subreaper, like the agent) whose command
/// name starts with `prefix`. Live ones are left out: another test's container init
/// may be reparented to us before it has exec'd.
pub fn zombie_children_named(prefix: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
            let mut fields = stat[close + 1..].split_whitespace();
            let (state, ppid) = (fields.next(), fields.next());
            stat[open + 1..close].starts_with(prefix) && state == Some("Z") && ppid == Some(me.as_str())
        })
        .collect()
}
