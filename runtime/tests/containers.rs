//! Real containers through the helper process: exit codes, logs, OOM kills, stop and
//! restart, exec, pod network namespaces, and that limits cannot be raised from inside.
//! Needs root; skipped (with a message) otherwise unless `PEER_REQUIRE_ROOT_TESTS=1`.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use runtime::{ContainerStatus, Network};
use support::{fixture, HELPER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_env_and_logs() {
    let Some(mut f) = fixture("exit") else { return };
    let spec = f.spec("exit1", "echo $GREETING from $(hostname) image=$FROM_IMAGE; exit 3");
    let started = f.runtime.run_container(&spec, &f.image).await.expect("run");
    assert!(started.pid > 0);
    let event = f.next_exit("exit1").await;
    assert_eq!(event.pid, started.pid);
    assert_eq!((event.exit_code, event.signal, event.oom_killed), (Some(3), None, false));
    assert_eq!(f.log("exit1"), "hi from exit1-host image=1\n");
    assert_eq!(f.runtime.inspect("exit1").expect("inspect"), ContainerStatus::Stopped);
    assert_eq!(f.runtime.list_containers().expect("list"), ["exit1"]);
    f.cleanup(&["exit1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_is_reported() {
    let Some(mut f) = fixture("oom") else { return };
    let mut spec = f.spec("oom1", "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived");
    spec.limits.memory_bytes = Some(32 << 20);
    f.runtime.run_container(&spec, &f.image).await.expect("run");
    let event = f.next_exit("oom1").await;
    assert!(event.oom_killed, "not reported as oom killed: {event:?}; log: {}", f.log("oom1"));
    assert!(!f.log("oom1").contains("survived"));
    f.cleanup(&["oom1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_in_pod_netns_cannot_raise_its_limits() {
    let Some(mut f) = fixture("limits") else { return };
    let netns = f.runtime.ensure_pod_netns("pod1").await.expect("netns");
    assert_eq!(f.runtime.ensure_pod_netns("pod1").await.expect("netns again"), netns);
    // Another pod's namespace on the node: the create child drops it from its mount table
    // and must still join pod1's.
    f.runtime.ensure_pod_netns("pod2").await.expect("netns of another pod");
    let script = "echo id=$(id -u) nets=$(ls /sys/class/net | tr '\\n' ,) $(readlink /proc/self/ns/net); \
                  mount -t cgroup -o memory cgroup /mnt 2>/dev/null && echo MOUNTED_V1; \
                  mount -t cgroup2 none /mnt 2>/dev/null && echo MOUNTED_V2; \
                  (echo 1073741824 > /sys/fs/cgroup/memory/memory.limit_in_bytes) 2>/dev/null && echo RAISED; \
                  (echo max > /sys/fs/cgroup/memory.max) 2>/dev/null && echo RAISED; \
                  ls /sys/fs/cgroup | grep . && echo CGROUPFS_VISIBLE; echo done";
    let mut spec = f.spec("lim1", script);
    spec.limits.memory_bytes = Some(64 << 20);
    spec.network = Network::Namespace(netns.clone());
    f.runtime.run_container(&spec, &f.image).await.expect("run");
    let event = f.next_exit("lim1").await;
    let log = f.log("lim1");
    assert_eq!(event.exit_code, Some(0), "log: {log}");
    let inode = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&netns).expect("netns file"));
    assert_eq!(log, format!("id=0 nets=lo, net:[{inode}]\ndone\n"));
    let v1 = Path::new("/sys/fs/cgroup/memory").join(&f.cgroup_parent).join("lim1/memory.limit_in_bytes");
    let v2 = Path::new("/sys/fs/cgroup").join(&f.cgroup_parent).join("lim1/memory.max");
    let limit = fs::read_to_string(&v1).or_else(|_| fs::read_to_string(&v2)).expect("container cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());

    f.runtime.remove_pod_netns("pod1").await.expect("remove netns");
    assert!(!netns.exists());
    f.runtime.remove_pod_netns("pod2").await.expect("remove the other netns");
    f.runtime.remove_pod_netns("pod1").await.expect("removing again is fine");
    f.cleanup(&["lim1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_restart_keeps_writes_and_exec_joins() {
    let Some(mut f) = fixture("stop") else { return };
    // Pid 1 without a handler ignores SIGTERM, so stop must escalate to SIGKILL.
    let spec = f.spec("stop1", "echo data > /state; echo ready; exec sleep 1000");
    let started = f.runtime.run_container(&spec, &f.image).await.expect("run");
    f.wait_for_log("stop1", "ready").await;
    // The rootfs overlay lives only in the container's mount namespace (the node's mount
    // table stays short); its writes land in the upper dir on disk all the same.
    let bundle = f.base.join("root/containers/stop1");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&bundle.display().to_string()), "rootfs in the node's mount table");
    assert_eq!(fs::read_to_string(bundle.join("upper/state")).expect("upper/state"), "data\n");
    assert_eq!(
        f.runtime.inspect("stop1").expect("inspect"),
        ContainerStatus::Running { pid: started.pid, start_time: started.start_time }
    );
    let err = f.runtime.run_container(&spec, &f.image).await.expect_err("second run while running");
    assert!(err.to_string().contains("already running"), "{err}");

    let exec = std::process::Command::new(HELPER)
        .args(["exec", f.base.join("root").to_str().expect("utf-8 path"), "stop1", "sh", "-c"])
        .arg("cat /state; echo $GREETING; exit 7")
        .output()
        .expect("run exec");
    assert_eq!(exec.status.code(), Some(7), "stderr: {}", String::from_utf8_lossy(&exec.stderr));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "data\nhi\n");

    f.runtime.stop_container("stop1", Duration::from_millis(300)).await.expect("stop");
    let event = f.next_exit("stop1").await;
    assert_eq!((event.exit_code, event.signal, event.oom_killed), (Some(137), Some(9), false));
    f.runtime.stop_container("stop1", Duration::from_millis(300)).await.expect("stopping again is fine");

    let again = f.spec("stop1", "cat /state");
    f.runtime.run_container(&again, &f.image).await.expect("restart");
    let event = f.next_exit("stop1").await;
    assert_eq!(event.exit_code, Some(0));
    assert_eq!(f.log("stop1"), "ready\ndata\n");
    f.cleanup(&["stop1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_still_unmounts_the_rootfs_and_removes_the_bundle() {
    let Some(mut f) = fixture("faildel") else { return };
    f.runtime.run_container(&f.spec("gone1", "sleep 1000"), &f.image).await.expect("run");
    assert_eq!(runtime::kill_all_under(&f.cgroup_parent), 1);
    f.next_exit("gone1").await;
    // libcontainer cannot read its state any more (a torn write, a disk error): its
    // delete fails, and the rest of the cleanup must still happen.
    let state = fs::read_dir(f.base.join("root"))
        .expect("runtime root")
        .flatten()
        .map(|e| e.path().join("gone1/state.json"))
        .find(|p| p.exists())
        .expect("libcontainer state of gone1");
    fs::write(&state, "{").expect("corrupt the state");
    let result = f.runtime.remove_container("gone1").await;
    assert!(result.is_err(), "the delete error is reported");
    let bundle = f.base.join("root/containers/gone1");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.contains(&bundle.display().to_string()), "rootfs still mounted after {result:?}");
    assert!(!bundle.exists(), "bundle left behind after {result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_leaves_no_zombie_behind() {
    let Some(f) = fixture("failcreate") else { return };
    let mut spec = f.spec("bad1", "true");
    spec.working_dir = Some("/no/such/dir".into());
    let err = f.runtime.run_container(&spec, &f.image).await.expect_err("chdir fails in build");
    assert!(err.to_string().starts_with("container bad1: helper failed"), "{err}");
    // libcontainer returns the error without the pids of the intermediate and init
    // processes it started; the helper must reap them, or this process, a child
    // subreaper like the agent, inherits them as zombies.
    assert_eq!(support::zombie_children_named("youki:"), Vec::<String>::new());
    f.cleanup(&["bad1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_hosts_are_the_callers_and_read_only() {
    let Some(mut f) = fixture("dns") else { return };
    let mut spec = f.spec(
        "dns1",
        "cat /etc/resolv.conf /etc/hosts; echo x >> /etc/resolv.conf || echo resolv-ro; \
         echo x >> /etc/hosts || echo hosts-ro",
    );
    spec.dns = Some(runtime::DnsConfig {
        nameservers: vec![std::net::Ipv4Addr::new(10, 43, 0, 10)],
        searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    spec.hosts = vec![(std::net::Ipv4Addr::new(10, 42, 7, 2), vec!["dns1-host".into()])];
    f.runtime.run_container(&spec, &f.image).await.expect("run");
    assert_eq!(f.next_exit("dns1").await.exit_code, Some(0));
    let log = f.log("dns1");
    assert!(
        log.starts_with(
            "nameserver 10.43.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        ),
        "{log}"
    );
    assert!(log.contains("127.0.0.1\tlocalhost\n") && log.contains("10.42.7.2\tdns1-host\n"), "{log}");
    assert!(log.contains("resolv-ro\n") && log.contains("hosts-ro\n"), "files are writable: {log}");

    // A word with white space would change the file's meaning: refused, nothing runs.
    let mut bad = f.spec("dns2", "true");
    bad.dns = Some(runtime::DnsConfig { searches: vec!["a b".into()], ..Default::default() });
    let err = f.runtime.run_container(&bad, &f.image).await.expect_err("bad search word");
    assert!(err.to_string().starts_with("container dns2: dns search \"a b\""), "{err}");
    f.cleanup(&["dns1", "dns2"]).await;
}

/// A gated create builds the container at once and starts it only when the gate opens;
/// a gate that says no leaves no container, state or zombie behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_container_starts_only_when_its_gate_opens() {
    let Some(mut f) = fixture("gate") else { return };
    let spec = f.spec("gate1", "echo started");
    let gate = f.runtime.start_gate("gate1").expect("gate");
    let path = gate.path().to_owned();
    let fix = &f;
    let opener = async move {
        // Built but waiting: libcontainer's state is there, the process has not run.
        let mut built = false;
        for _ in 0..500 {
            if fix.runtime.inspect("gate1").ok() == Some(ContainerStatus::Stopped) {
                built = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = fix.log("gate1");
        gate.open(Ok(()));
        (built, log)
    };
    let (run, (built, log)) =
        tokio::join!(f.runtime.run_container_gated(&spec, &f.image, Some(&path)), opener);
    assert!(built, "the container was not created while its gate was shut");
    assert_eq!(log, "", "ran before its gate opened");
    let started = run.expect("run");
    let event = f.next_exit("gate1").await;
    assert_eq!((event.pid, event.exit_code), (started.pid, Some(0)));
    assert_eq!(f.log("gate1"), "started\n");

    let spec = f.spec("gate2", "echo started");
    let gate = f.runtime.start_gate("gate2").expect("gate");
    let path = gate.path().to_owned();
    gate.open(Err("pod network: no bridge"));
    let err = f.runtime.run_container_gated(&spec, &f.image, Some(&path)).await.expect_err("refused");
    assert!(err.to_string().contains("not started: pod network: no bridge"), "{err}");
    assert_eq!(
        f.runtime.inspect("gate2").expect("inspect"),
        ContainerStatus::Missing,
        "no libcontainer state"
    );
    assert_eq!(support::zombie_children_named("youki:"), Vec::<String>::new());
    assert_eq!(f.log("gate2"), "");
    f.cleanup(&["gate1", "gate2"]).await;
}
