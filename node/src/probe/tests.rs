//! The probe worker under paused time: scripted check results, reports with their times.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::spec::{Probe, ProbeAction, Probes};
use tokio::time::Instant;

use super::*;

/// A checker whose result is a function of the probe (by port) and the paused clock.
#[derive(Clone)]
struct Script {
    t0: Instant,
    #[allow(clippy::type_complexity)]
    f: Arc<dyn Fn(u16, Duration) -> Result<(), Stall> + Send + Sync>,
}

/// A check that never answers.
struct Stall;

impl Checker for Script {
    async fn check(&self, action: &ProbeAction, _timeout: Duration) -> Outcome {
        let ProbeAction::TcpSocket { port } = action else { panic!("the tests use tcpSocket probes") };
        match (self.f)(*port, self.t0.elapsed()) {
            Ok(()) => Outcome::Success,
            Err(Stall) => std::future::pending().await,
        }
    }
}

fn script(f: impl Fn(u16, Duration) -> bool + Send + Sync + 'static) -> Script {
    Script { t0: Instant::now(), f: Arc::new(move |p, t| if f(p, t) { Ok(()) } else { Err(Stall) }) }
}

/// Fails (without stalling) where `f` says false: the check answers "refused".
struct Refuse(Script);

impl Checker for Refuse {
    async fn check(&self, action: &ProbeAction, _timeout: Duration) -> Outcome {
        let ProbeAction::TcpSocket { port } = action else { panic!("the tests use tcpSocket probes") };
        match (self.0.f)(*port, self.0.t0.elapsed()) {
            Ok(()) => Outcome::Success,
            Err(Stall) => Outcome::Failure(format!("dial tcp 127.0.0.1:{port}: connection refused")),
        }
    }
}

const LIVE: u16 = 1;
const READY: u16 = 2;
const STARTUP: u16 = 3;

fn probe(port: u16, period: u32, failure_threshold: u32) -> Probe {
    Probe { period_seconds: period, failure_threshold, ..Probe::new(ProbeAction::TcpSocket { port }) }
}

/// Runs the worker for `secs` of paused time; returns the reports as "t=SECS what".
async fn run_for(
    secs: u64,
    probes: Probes,
    checker: impl Checker,
    running_for: Duration,
    started: bool,
) -> Vec<String> {
    let t0 = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let report = move |r: Report| {
        let what = match r {
            Report::Started => "started".to_owned(),
            Report::Ready(b) => format!("ready={b}"),
            Report::Unhealthy { kind, message } => format!("{} failed: {message}", kind.title()),
            Report::Kill { kind, message, grace } => {
                format!("kill ({}) {message} grace={grace:?}", kind.title())
            }
        };
        sink.lock().expect("not poisoned").push(format!("t={} {what}", t0.elapsed().as_secs()));
    };
    let _ =
        tokio::time::timeout(Duration::from_secs(secs), run(probes, checker, running_for, started, report))
            .await;
    let out = log.lock().expect("not poisoned").clone();
    out
}

#[test]
fn counter_needs_consecutive_results() {
    let p = Probe {
        success_threshold: 2,
        failure_threshold: 3,
        ..Probe::new(ProbeAction::TcpSocket { port: 1 })
    };
    let mut c = Counter::new(&p, false);
    assert_eq!(c.handle(true), None);
    assert_eq!(c.handle(false), None, "a failure resets the successes");
    assert_eq!(c.handle(true), None);
    assert_eq!(c.handle(true), Some(true));
    assert_eq!(c.handle(true), None, "only changes are reported");
    assert_eq!((c.handle(false), c.handle(false)), (None, None));
    assert_eq!(c.handle(true), None, "a success resets the failures");
    assert_eq!((c.handle(false), c.handle(false), c.handle(false)), (None, None, Some(false)));
    assert!(!c.passing());
    assert_eq!(c.failures(), 3);
}

#[tokio::test(start_paused = true)]
async fn liveness_kills_after_failure_threshold_periods() {
    // Healthy for 25 s, then every check fails: checks at 0, 10, 20, 30, 40, 50.
    let probes = Probes { liveness: Some(probe(LIVE, 10, 3)), ..Probes::default() };
    let checker = Refuse(script(|_, t| t < Duration::from_secs(25)));
    let log = run_for(120, probes, checker, Duration::ZERO, false).await;
    assert_eq!(
        log,
        [
            "t=0 started",
            "t=0 ready=true",
            "t=30 Liveness failed: dial tcp 127.0.0.1:1: connection refused",
            "t=40 Liveness failed: dial tcp 127.0.0.1:1: connection refused",
            "t=50 Liveness failed: dial tcp 127.0.0.1:1: connection refused",
            "t=50 kill (Liveness) Liveness probe failed 3 times in a row; the container will be restarted grace=None",
        ],
        "the worker stops after the kill"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_without_a_kill() {
    // Not ready from 12 s to 31 s; readiness every 2 s, 2 successes to come back.
    let mut ready = probe(READY, 2, 3);
    ready.success_threshold = 2;
    ready.initial_delay_seconds = 1;
    let probes = Probes { readiness: Some(ready), liveness: Some(probe(LIVE, 1, 1)), ..Probes::default() };
    let checker = Refuse(script(|port, t| {
        port == LIVE || !(Duration::from_secs(12)..Duration::from_secs(31)).contains(&t)
    }));
    let log = run_for(40, probes, checker, Duration::ZERO, false).await;
    let failed = |t: u64| format!("t={t} Readiness failed: dial tcp 127.0.0.1:2: connection refused");
    let mut want = vec!["t=0 started".to_owned(), "t=3 ready=true".to_owned()];
    for t in [13, 15, 17] {
        want.push(failed(t));
    }
    want.push("t=17 ready=false".into());
    for t in [19, 21, 23, 25, 27, 29] {
        want.push(failed(t));
    }
    want.push("t=33 ready=true".into());
    assert_eq!(log, want);
}

#[tokio::test(start_paused = true)]
async fn startup_probe_holds_liveness_back() {
    // The server answers from 25 s on. Liveness alone (1 s, threshold 2) would kill it at 1 s;
    // the startup probe (5 s, threshold 10) gives it 50 s.
    let probes = Probes {
        startup: Some(probe(STARTUP, 5, 10)),
        liveness: Some(probe(LIVE, 1, 2)),
        readiness: Some(probe(READY, 1, 1)),
    };
    let up = |_: u16, t: Duration| t >= Duration::from_secs(25);
    let log = run_for(40, probes.clone(), Refuse(script(up)), Duration::ZERO, false).await;
    let refused = |t: u64| format!("t={t} Startup failed: dial tcp 127.0.0.1:3: connection refused");
    let mut want: Vec<String> = [0, 5, 10, 15, 20].into_iter().map(refused).collect();
    want.extend(["t=25 started".to_owned(), "t=25 ready=true".to_owned()]);
    assert_eq!(log, want, "no liveness or readiness check ran before the startup probe passed");

    // Without the startup probe the same container is killed at 1 s.
    let alone = Probes { startup: None, ..probes };
    let log = run_for(40, alone, Refuse(script(up)), Duration::ZERO, false).await;
    assert!(log.last().is_some_and(|l| l.starts_with("t=1 kill (Liveness)")), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn startup_failure_kills_and_a_passed_startup_is_not_run_again() {
    let mut startup = probe(STARTUP, 2, 3);
    startup.termination_grace_period_seconds = Some(4);
    let probes = Probes { startup: Some(startup), ..Probes::default() };
    let log = run_for(60, probes.clone(), Refuse(script(|_, _| false)), Duration::ZERO, false).await;
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        log[3],
        "t=4 kill (Startup) Startup probe failed 3 times in a row; the container will be restarted grace=Some(4s)"
    );
    // An adopted container that had started before: no startup checks at all.
    let log = run_for(60, probes, Refuse(script(|_, _| false)), Duration::from_secs(100), true).await;
    assert_eq!(log, ["t=0 started", "t=0 ready=true"]);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_never_answers_fails_after_its_timeout() {
    let mut live = probe(LIVE, 10, 1);
    live.timeout_seconds = 3;
    let probes = Probes { liveness: Some(live), ..Probes::default() };
    let log = run_for(60, probes, script(|_, _| false), Duration::ZERO, false).await;
    assert_eq!(log[2], "t=5 Liveness failed: timeout: no answer within 3s");
    assert!(log[3].starts_with("t=5 kill (Liveness)"), "{log:?}");
}

#[tokio::test(start_paused = true)]
async fn initial_delay_counts_from_the_container_start() {
    let mut live = probe(LIVE, 10, 1);
    live.initial_delay_seconds = 30;
    let probes = Probes { liveness: Some(live), ..Probes::default() };
    let checker = || Refuse(script(|_, _| false));
    let log = run_for(100, probes.clone(), checker(), Duration::ZERO, false).await;
    assert!(log[2].starts_with("t=30 Liveness failed"), "{log:?}");
    // Adopted after running 25 s: the first check is 5 s later.
    let log = run_for(100, probes, checker(), Duration::from_secs(25), false).await;
    assert!(log[2].starts_with("t=5 Liveness failed"), "{log:?}");
}
