//! Container probes with Kubernetes' semantics: the threshold state machine of one probe
//! ([`Counter`], pure) and the worker that runs one container's probes on their schedules
//! ([`run`]) and reports what changed. The checks themselves (exec, HTTP, TCP) come in
//! through [`Checker`], so the worker is tested with paused time and scripted results.
//!
//! Semantics (as the kubelet's prober):
//! - A startup probe, while it has not passed, holds liveness and readiness back; passing
//!   once is for the life of the container; `failureThreshold` failures in a row kill it.
//! - Liveness starts as passing; `failureThreshold` failures in a row kill the container
//!   (the restart policy and back-off decide what follows).
//! - Readiness starts as failing; `successThreshold` successes in a row make the
//!   container ready, `failureThreshold` failures in a row unready. No restart.
//! - Without a readiness probe a container is ready once started.
//! - Each probe's first check is `initialDelaySeconds` after the container started, then
//!   every `periodSeconds`; a check that takes longer than `timeoutSeconds` fails.

use std::future::Future;
use std::time::Duration;

use protocol::spec::{Probe, ProbeAction, Probes};
use tokio::time::Instant;

/// Which probe a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// As Kubernetes names it in events: "Liveness probe failed: …".
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why it failed, for the `Unhealthy` event.
    Failure(String),
}

/// Runs one check. Implementations bound it by `timeout` themselves (an exec check must
/// kill what it started); the worker gives up a little later as a safety net.
pub trait Checker: Send + Sync + 'static {
    fn check(&self, action: &ProbeAction, timeout: Duration) -> impl Future<Output = Outcome> + Send;
}

/// What the worker tells the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The startup probe passed (or there is none): the container counts as started.
    Started,
    /// The container became ready or unready.
    Ready(bool),
    /// One check failed (an `Unhealthy` event); the probe may not have failed yet.
    Unhealthy { kind: ProbeKind, message: String },
    /// Liveness or startup failed: kill the container (with this grace period, if the
    /// probe sets one). The worker has stopped.
    Kill { kind: ProbeKind, message: String, grace: Option<Duration> },
}

/// The consecutive-results state of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    success_threshold: u32,
    failure_threshold: u32,
    passing: bool,
    successes: u32,
    failures: u32,
}

impl Counter {
    /// A probe whose result starts as `passing`.
    pub fn new(probe: &Probe, passing: bool) -> Counter {
        Counter {
            success_threshold: probe.success_threshold.max(1),
            failure_threshold: probe.failure_threshold.max(1),
            passing,
            successes: 0,
            failures: 0,
        }
    }

    /// Takes one check's result; returns the probe's new result when it changed.
    pub fn handle(&mut self, success: bool) -> Option<bool> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.passing && self.successes >= self.success_threshold {
                self.passing = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.passing && self.failures >= self.failure_threshold {
                self.passing = false;
                return Some(false);
            }
        }
        None
    }

    pub fn passing(&self) -> bool {
        self.passing
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The schedule and checks of one probe.
struct Prober<'a, C> {
    kind: ProbeKind,
    probe: &'a Probe,
    checker: &'a C,
    next: Instant,
}

impl<C: Checker> Prober<'_, C> {
    /// Waits for the next check, runs it, and reports a failed one.
    async fn tick(&mut self, report: &impl Fn(Report)) -> bool {
        tokio::time::sleep_until(self.next).await;
        let timeout = Duration::from_secs(u64::from(self.probe.timeout_seconds.max(1)));
        let outcome = tokio::time::timeout(timeout + Duration::from_secs(2), {
            self.checker.check(&self.probe.action, timeout)
        })
        .await
        .unwrap_or_else(|_| Outcome::Failure(format!("timeout: no answer within {}s", timeout.as_secs())));
        // Checks start a period apart; one that ran long does not make the next come early.
        let period = Duration::from_secs(u64::from(self.probe.period_seconds.max(1)));
        self.next = (self.next + period).max(Instant::now());
        match outcome {
            Outcome::Success => true,
            Outcome::Failure(message) => {
                report(Report::Unhealthy { kind: self.kind, message });
                false
            }
        }
    }
}

fn kill(kind: ProbeKind, probe: &Probe, counter: &Counter) -> Report {
    Report::Kill {
        kind,
        message: format!(
            "{} probe failed {} times in a row; the container will be restarted",
            kind.title(),
            counter.failures()
        ),
        grace: probe.termination_grace_period_seconds.map(Duration::from_secs),
    }
}

/// Runs a container's probes until liveness or startup fails (after a [`Report::Kill`])
/// or the task is aborted (the container stopped).
///
/// `running_for` is how long the container has run already (an adopted container);
/// `started` says its startup probe passed before (it is not run again).
pub async fn run<C: Checker>(
    probes: Probes,
    checker: C,
    running_for: Duration,
    started: bool,
    report: impl Fn(Report) + Send + Sync,
) {
    let start = Instant::now().checked_sub(running_for).unwrap_or_else(Instant::now);
    let prober = |kind, probe| Prober {
        kind,
        probe,
        checker: &checker,
        next: start + Duration::from_secs(u64::from(probe.initial_delay_seconds)),
    };
    if let Some(p) = probes.startup.as_ref().filter(|_| !started) {
        let mut startup = prober(ProbeKind::Startup, p);
        let mut counter = Counter::new(p, false);
        loop {
            let ok = startup.tick(&report).await;
            if counter.handle(ok) == Some(true) {
                break;
            }
            if counter.failures() >= p.failure_threshold {
                report(kill(ProbeKind::Startup, p, &counter));
                return;
            }
        }
    }
    report(Report::Started);
    let liveness = async {
        let Some(p) = &probes.liveness else { return std::future::pending().await };
        let mut liveness = prober(ProbeKind::Liveness, p);
        let mut counter = Counter::new(p, true);
        loop {
            let ok = liveness.tick(&report).await;
            if counter.handle(ok) == Some(false) {
                return kill(ProbeKind::Liveness, p, &counter);
            }
        }
    };
    let readiness = async {
        let Some(p) = &probes.readiness else {
            report(Report::Ready(true));
            return std::future::pending::<()>().await;
        };
        let mut readiness = prober(ProbeKind::Readiness, p);
        let mut counter = Counter::new(p, false);
        loop {
            let ok = readiness.tick(&report).await;
            if let Some(ready) = counter.handle(ok) {
                report(Report::Ready(ready));
            }
        }
    };
    tokio::select! {
        killed = liveness => report(killed),
        () = readiness => {}
    }
}

#[cfg(test)]
mod tests;
