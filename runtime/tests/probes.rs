//! Exec probes and TCP connects in pod network namespaces, against real containers:
//! the probe runs inside the container (filesystem, namespaces, cgroup), timeouts kill
//! it, and connects reach the pod's loopback, not the host's.
//! Needs root; skipped (with a message) otherwise unless `PEER_REQUIRE_ROOT_TESTS=1`.

mod support;

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use runtime::{Error, ExecOutcome, Network, PROBE_OUTPUT_LIMIT};
use support::{fixture, Fixture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(10);

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Runs `sh -c script` as an exec probe that must exit; returns its code and output.
async fn probe(f: &Fixture, id: &str, script: &str) -> (i32, String) {
    match f.runtime.exec_probe(id, &args(&["sh", "-c", script]), TIMEOUT).await.expect("exec probe") {
        ExecOutcome::Exited { exit_code, output } => (exit_code, output),
        ExecOutcome::TimedOut => panic!("probe {script:?} timed out"),
    }
}

/// Pids of live processes (not zombies) whose command line is exactly `argv`.
fn live_processes(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// Pids in the container's cgroup (memory controller on v1, the directory on v2).
fn cgroup_pids(f: &Fixture, id: &str) -> Vec<i32> {
    let v1 = Path::new("/sys/fs/cgroup/memory").join(&f.cgroup_parent).join(id).join("cgroup.procs");
    let v2 = Path::new("/sys/fs/cgroup").join(&f.cgroup_parent).join(id).join("cgroup.procs");
    let text = fs::read_to_string(&v1).or_else(|_| fs::read_to_string(&v2)).expect("container cgroup.procs");
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_runs_inside_the_container() {
    let Some(mut f) = fixture("probe") else { return };
    let netns = f.runtime.ensure_pod_netns("probepod").await.expect("netns");
    let mut spec = f.spec("probe1", "echo in-container > /marker; echo ready; exec sleep 1000");
    spec.network = Network::Namespace(netns);
    let started = f.runtime.run_container(&spec, &f.image).await.expect("run");
    f.wait_for_log("probe1", "ready").await;

    // The container's filesystem, not the host's.
    let host_only = f.base.join("host-only");
    fs::write(&host_only, "x").expect("host file");
    assert_eq!(probe(&f, "probe1", "cat /marker").await, (0, "in-container\n".to_owned()));
    let script = format!("test -e {}", host_only.display());
    assert_eq!(probe(&f, "probe1", &script).await, (1, String::new()));
    // Exit codes, and stdout and stderr in one output.
    assert_eq!(probe(&f, "probe1", "echo out; echo err >&2; exit 3").await, (3, "out\nerr\n".to_owned()));
    // The container's user, environment and working directory.
    assert_eq!(probe(&f, "probe1", "echo $GREETING $(id -u) $(pwd)").await, (0, "hi 0 /\n".to_owned()));
    // Its pid namespace (pid 1 is the container's sleep) and network namespace (only lo).
    let (code, cmdline) = probe(&f, "probe1", "cat /proc/1/cmdline").await;
    assert_eq!((code, cmdline.as_str()), (0, "sleep\x001000\x00"));
    let (_, dev) = probe(&f, "probe1", "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '").await;
    assert_eq!(dev, "lo\n");
    // Its cgroup, so the container's limits bound the probe.
    let (_, cgroups) = probe(&f, "probe1", "cat /proc/self/cgroup").await;
    // The memory controller's line on v1 (a hybrid host also lists an empty "0::/"),
    // the unified one on v2.
    let line = cgroups
        .lines()
        .find(|l| l.contains(":memory:"))
        .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
        .unwrap_or_default();
    let own = format!(":/{}/probe1", f.cgroup_parent);
    assert!(line.ends_with(&own), "probe not in the container's cgroup {own:?}: {cgroups}");
    // Output is bounded; the rest is drained, so the command is not blocked.
    let (code, big) = probe(&f, "probe1", "head -c 100000 /dev/zero | tr '\\000' a; echo done >&2").await;
    assert_eq!((code, big.len()), (0, PROBE_OUTPUT_LIMIT));
    assert!(big.bytes().all(|b| b == b'a'));
    // A command that cannot be started is an error, and its half-started process is
    // reaped by the helper (else it would linger as a zombie of this subreaper).
    let missing = f.runtime.exec_probe("probe1", &args(&["/no/such"]), TIMEOUT).await;
    let Err(err @ Error::Helper { .. }) = missing else { panic!("{missing:?}") };
    assert!(err.to_string().contains("/no/such"), "{err}");
    assert_eq!(
        support::zombie_children_named("youki:"),
        Vec::<String>::new(),
        "a failed exec's process reached the subreaper"
    );
    // Nothing was left behind: only the container's init is in its cgroup.
    assert_eq!(cgroup_pids(&f, "probe1"), [started.pid], "a probe's process was left behind");

    f.runtime.stop_container("probe1", Duration::from_millis(100)).await.expect("stop");
    f.next_exit("probe1").await;
    let err = f.runtime.exec_probe("probe1", &args(&["true"]), TIMEOUT).await.expect_err("stopped");
    assert_eq!(err.to_string(), "container probe1 is not running: it is stopped");
    let err = f.runtime.exec_probe("nosuch", &args(&["true"]), TIMEOUT).await.expect_err("missing");
    assert_eq!(err.to_string(), "container nosuch is not running: it is missing");
    f.runtime.remove_pod_netns("probepod").await.expect("remove netns");
    f.cleanup(&["probe1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probe_timeout_kills_the_command() {
    let Some(mut f) = fixture("probetime") else { return };
    let spec = f.spec("slow1", "echo ready; exec sleep 1000");
    let started = f.runtime.run_container(&spec, &f.image).await.expect("run");
    f.wait_for_log("slow1", "ready").await;

    for (command, leftovers) in [
        (args(&["sleep", "31"]), vec![vec!["sleep", "31"]]),
        // The shell does not exec its last command here; the whole group must go.
        (
            args(&["sh", "-c", "sleep 32; echo never"]),
            vec![vec!["sleep", "32"], vec!["sh", "-c", "sleep 32; echo never"]],
        ),
    ] {
        let begin = Instant::now();
        let outcome = f.runtime.exec_probe("slow1", &command, Duration::from_secs(1)).await.expect("probe");
        let took = begin.elapsed();
        assert_eq!(outcome, ExecOutcome::TimedOut, "{command:?}");
        assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(3), "{command:?} took {took:?}");
        for argv in leftovers {
            assert_eq!(live_processes(&argv), Vec::<i32>::new(), "{argv:?} left running");
        }
        assert_eq!(cgroup_pids(&f, "slow1"), [started.pid], "{command:?} left a process in the cgroup");
    }

    f.runtime.stop_container("slow1", Duration::from_millis(100)).await.expect("stop");
    f.next_exit("slow1").await;
    f.cleanup(&["slow1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tcp_reaches_the_pods_loopback_only() {
    let Some(mut f) = fixture("probetcp") else { return };
    // A host listener holds a port; the container serves on the same port of its own
    // loopback. Reaching the server's answer proves the connect ran in the pod.
    let host = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("host listener");
    let port = host.local_addr().expect("host addr").port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let netns = f.runtime.ensure_pod_netns("tcppod").await.expect("netns");
    let script = format!(
        "mkdir /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 127.0.0.1:{port} -h /www"
    );
    let mut spec = f.spec("web1", &script);
    spec.network = Network::Namespace(netns.clone());
    f.runtime.run_container(&spec, &f.image).await.expect("run");

    // httpd binds shortly after the container starts.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match f.runtime.connect_tcp(Some(&netns), addr, Duration::from_secs(1)).await {
            Ok(stream) => break stream,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("connect in the pod: {e}; log: {}", f.log("web1")),
        }
    };
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await.expect("send request");
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.") && answer.ends_with("hello-from-pod\n"), "{answer}");

    // A closed port in the pod is refused, and the error says where.
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, port.wrapping_add(1).max(1)));
    let err =
        f.runtime.connect_tcp(Some(&netns), closed, Duration::from_secs(1)).await.expect_err("closed port");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    let text = err.to_string();
    assert!(text.contains(&closed.to_string()) && text.contains(&netns.display().to_string()), "{text}");

    // The host's namespace reaches the host listener instead.
    let mut on_host =
        f.runtime.connect_tcp(None, addr, Duration::from_secs(1)).await.expect("connect on host");
    let (mut accepted, _) = host.accept().expect("host listener accepts");
    on_host.write_all(b"ping").await.expect("send");
    let mut got = [0u8; 4];
    io::Read::read_exact(&mut accepted, &mut got).expect("host listener reads");
    assert_eq!(&got, b"ping");
    // A host port that is bound but not listening is refused. (A port merely closed
    // again could be taken by any other process on the machine in the meantime.)
    let bound = tokio::net::TcpSocket::new_v4().expect("socket");
    bound.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
    let silent = bound.local_addr().expect("bound addr");
    let err = f.runtime.connect_tcp(None, silent, Duration::from_secs(1)).await.expect_err("not listening");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains(&silent.to_string()), "{err}");

    // A path that is no namespace is an error naming it.
    let bogus = f.base.join("not-a-netns");
    let err =
        f.runtime.connect_tcp(Some(&bogus), addr, Duration::from_secs(1)).await.expect_err("bogus netns");
    assert!(err.to_string().contains(&bogus.display().to_string()), "{err}");

    f.runtime.stop_container("web1", Duration::from_millis(300)).await.expect("stop");
    f.next_exit("web1").await;
    f.runtime.remove_pod_netns("tcppod").await.expect("remove netns");
    f.cleanup(&["web1"]).await;
}
