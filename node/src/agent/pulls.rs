//! A container's image before it starts, as the kubelet gets it: the pull policy
//! ([`decide`], pure), pulls shared by the pods that want the same image at once
//! ([`Pulls`], whose progress `peer describe pod` shows), and the kubelet's events
//! (`Pulling`, `Pulled`, `Failed`, `ErrImageNeverPull`, …), sent to the agent loop as
//! [`TaskResult::Event`]s since this runs in start tasks.
//!
//! One deliberate difference from the kubelet: with `imagePullPolicy: Always`, a node that
//! cannot *reach* the registry (connection refused, timeout, name resolution) starts the
//! copy it holds, with a warning event, so a node cut off from its uplink still restarts
//! its workloads. A refusal (401) or a missing image (404) still fails the start.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::spec::PullPolicy;
use runtime::image::{ImageError, ImageStore, ProgressSnapshot, PullOptions, PullProgress};
use runtime::ResolvedImage;
use tokio::sync::{mpsc, watch};

use super::pods::TaskResult;

/// What to do about a container's image before starting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start the copy this node holds.
    UseLocal,
    /// Pull, then start. `local_if_unreachable`: the node holds a copy to fall back on
    /// when the registry cannot be reached.
    Pull { local_if_unreachable: bool },
    /// `Never`, and the node does not hold the image.
    NeverPull,
    /// The node does not hold the image and its name has no registry to pull from.
    Missing,
}

/// The pull policy as the kubelet applies it. `present`: the node holds the image;
/// `pullable`: its name has a registry host. A name without one (an image imported with
/// `peer image import`, such as `peer-demo:latest`) has nowhere to be pulled from, so
/// even `Always` starts the local copy.
pub fn decide(policy: PullPolicy, present: bool, pullable: bool) -> Decision {
    match (policy, present, pullable) {
        (PullPolicy::Never, true, _) | (PullPolicy::IfNotPresent, true, _) => Decision::UseLocal,
        (PullPolicy::Never, false, _) => Decision::NeverPull,
        (PullPolicy::Always, true, false) => Decision::UseLocal,
        (_, false, false) => Decision::Missing,
        (PullPolicy::IfNotPresent, false, true) => Decision::Pull { local_if_unreachable: false },
        (PullPolicy::Always, present, true) => Decision::Pull { local_if_unreachable: present },
    }
}

/// Whether `image` names a registry to pull from: its first path component is a host
/// (has a dot or a port, or is `localhost`), as Docker decides it.
pub fn names_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(host, _)| host.contains(['.', ':']) || host == "localhost")
}

/// Whether a pull failed because the registry could not be reached at all, rather than
/// because it answered no. The store's errors carry the HTTP client's message; reqwest
/// says "error sending request" for connect errors, timeouts and name resolution, and
/// "request or response body error" for a connection lost mid-download (an answer such
/// as 401 or 404 is another error). A peers-only node never asks the registry, so finding
/// no peer that holds the image counts as unreachable too.
pub fn unreachable(err: &ImageError) -> bool {
    match err {
        ImageError::Registry { reason, .. } => {
            let reason = reason.to_ascii_lowercase();
            [
                "error sending request",
                "request or response body error",
                "connection refused",
                "operation timed out",
                "dns error",
                "peers-only distribution",
            ]
            .iter()
            .any(|m| reason.contains(m))
        }
        _ => false,
    }
}

/// How a pull ended, shared with every pod that waited for it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Pulled { size: u64, from_peers: u64 },
    Failed { message: String, unreachable: bool },
}

/// A pull under way and the pods waiting for it.
struct InFlight {
    progress: Arc<PullProgress>,
    done: watch::Sender<Option<Outcome>>,
}

/// A pull's identity: the image and the pull secrets it uses (by what they came from).
type PullKey = (String, Vec<String>);

/// Pulls under way on this node, by image and the pull secrets they use: pods that want
/// the same image with the same credentials at once share one pull and one progress.
/// Entries go when their pull ends (or its task is dropped).
#[derive(Clone, Default)]
pub struct Pulls {
    inner: Arc<Mutex<BTreeMap<PullKey, Arc<InFlight>>>>,
}

impl Pulls {
    /// How far the pull of `image` has got, if one runs.
    pub fn progress(&self, image: &str) -> Option<ProgressSnapshot> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().find(|((i, _), _)| i == image).map(|(_, f)| f.progress.snapshot())
    }

    /// Runs `pull` for `key` unless a pull for it runs already, whose outcome is then
    /// waited for instead.
    async fn shared<F, Fut>(&self, key: PullKey, pull: F) -> Outcome
    where
        F: FnOnce(Arc<PullProgress>) -> Fut,
        Fut: std::future::Future<Output = Outcome>,
    {
        let joined = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(running) => Err(running.done.subscribe()),
                None => {
                    let (done, _) = watch::channel(None);
                    let running = Arc::new(InFlight { progress: Arc::default(), done });
                    map.insert(key.clone(), running.clone());
                    Ok(running)
                }
            }
        };
        match joined {
            Err(mut waiting) => match waiting.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().expect("waited for an outcome"),
                Err(_) => Outcome::Failed {
                    message: "the pull this start waited for was abandoned".to_owned(),
                    unreachable: false,
                },
            },
            Ok(running) => {
                let _entry = Entry { pulls: self, key, running: running.clone() };
                let outcome = pull(running.progress.clone()).await;
                running.done.send_replace(Some(outcome.clone()));
                outcome
            }
        }
    }
}

/// Removes a pull's entry when its leader is done (or dropped mid-pull, which also drops
/// the sender and so wakes the waiters).
struct Entry<'a> {
    pulls: &'a Pulls,
    key: PullKey,
    running: Arc<InFlight>,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut map = self.pulls.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|r| Arc::ptr_eq(r, &self.running)) {
            map.remove(&self.key);
        }
    }
}

/// What a start task needs to get images for one pod.
pub(super) struct ImageJob {
    pub images: Arc<ImageStore>,
    /// How this node pulls, with the pod's pull secrets.
    pub options: PullOptions,
    pub pulls: Pulls,
    /// `imagePullSecrets` the pod names that do not exist or hold no registry credentials.
    pub missing_secrets: Vec<String>,
    /// The pod's key, for events.
    pub pod: String,
    pub tx: mpsc::UnboundedSender<TaskResult>,
}

/// The reason and message a start fails with.
pub(super) type StartError = (String, String);

impl ImageJob {
    fn event(&self, warning: bool, reason: &str, message: String) {
        let event = TaskResult::Event { pod: self.pod.clone(), warning, reason: reason.to_owned(), message };
        let _ = self.tx.send(event);
    }

    /// The image of a container about to start, pulled first if `policy` says so.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<ResolvedImage, StartError> {
        let local = match self.images.resolve(image) {
            Ok(resolved) => Some(resolved),
            Err(ImageError::NotFound { .. }) => None,
            Err(e) => return Err(("CreateContainerError".to_owned(), format!("image {image}: {e}"))),
        };
        match decide(policy, local.is_some(), names_registry(image)) {
            Decision::UseLocal => {
                let message = format!("Container image {image:?} already present on machine");
                self.event(false, "Pulled", message);
                Ok(local.expect("the decision is UseLocal only for an image held"))
            }
            Decision::NeverPull => {
                let message = format!("Container image {image:?} is not present with pull policy of Never (import it with `peer image import` or pull it with `peer image pull`)");
                Err(("ErrImageNeverPull".to_owned(), message))
            }
            Decision::Missing => {
                let message = format!(
                    "image {image} is not on this node and names no registry to pull it from (import it with `peer image import`)"
                );
                self.event(true, "Failed", format!("Failed to pull image {image:?}: {message}"));
                Err(("ImagePullBackOff".to_owned(), message))
            }
            Decision::Pull { local_if_unreachable } => match self.pull(image).await {
                Ok(()) => self.images.resolve(image).map_err(|e| {
                    ("ImagePullBackOff".to_owned(), format!("image {image} after its pull: {e}"))
                }),
                Err((message, true)) if local_if_unreachable => {
                    let message = format!("Failed to pull image {image:?}: {message}; the registry cannot be reached, so the copy already on this node starts (imagePullPolicy Always)");
                    self.event(true, "RegistryUnreachable", message);
                    Ok(local.expect("a fallback is offered only for an image held"))
                }
                Err((message, _)) => Err(("ImagePullBackOff".to_owned(), message)),
            },
        }
    }

    /// Pulls `image` (or waits for the pull of it under way), with the events the kubelet
    /// records. Errors: the message, and whether the registry could not be reached.
    async fn pull(&self, image: &str) -> Result<(), (String, bool)> {
        if !self.missing_secrets.is_empty() {
            let message = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                self.missing_secrets.join(", ")
            );
            self.event(true, "FailedToRetrieveImagePullSecret", message);
        }
        self.event(false, "Pulling", format!("Pulling image {image:?}"));
        let started = Instant::now();
        let secrets: Vec<String> = self.options.pull_secrets.iter().map(|s| s.what.clone()).collect();
        let outcome = self
            .pulls
            .shared((image.to_owned(), secrets), |progress| async move {
                let options = PullOptions { progress: Some(progress.clone()), ..self.options.clone() };
                match self.images.pull(image, &options).await {
                    Ok(summary) => {
                        Outcome::Pulled { size: summary.size, from_peers: progress.snapshot().from_peers }
                    }
                    Err(e) => Outcome::Failed { unreachable: unreachable(&e), message: e.to_string() },
                }
            })
            .await;
        match outcome {
            Outcome::Pulled { size, from_peers } => {
                self.event(false, "Pulled", pulled_message(image, started.elapsed(), size, from_peers));
                Ok(())
            }
            Outcome::Failed { message, unreachable } => {
                self.event(true, "Failed", format!("Failed to pull image {image:?}: {message}"));
                Err((message, unreachable))
            }
        }
    }
}

/// The kubelet's `Pulled` message, with the bytes that came from peers when some did.
pub fn pulled_message(image: &str, took: std::time::Duration, size: u64, from_peers: u64) -> String {
    let peers = if from_peers > 0 { format!(" ({from_peers} bytes from peers)") } else { String::new() };
    format!(
        "Successfully pulled image {image:?} in {:.3}s. Image size: {size} bytes{peers}.",
        took.as_secs_f64()
    )
}

/// The message `peer describe pod` shows for a container whose image is being pulled.
pub fn pulling_message(image: &str, progress: &ProgressSnapshot) -> String {
    format!("pulling image {image}: {progress}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_as_the_kubelet() {
        use PullPolicy::*;
        let mut out = String::new();
        for policy in [Always, IfNotPresent, Never] {
            for present in [true, false] {
                for pullable in [true, false] {
                    let d = decide(policy, present, pullable);
                    out.push_str(&format!("{policy:?} present={present} pullable={pullable}: {d:?}\n"));
                }
            }
        }
        expect_test::expect![[r#"
            Always present=true pullable=true: Pull { local_if_unreachable: true }
            Always present=true pullable=false: UseLocal
            Always present=false pullable=true: Pull { local_if_unreachable: false }
            Always present=false pullable=false: Missing
            IfNotPresent present=true pullable=true: UseLocal
            IfNotPresent present=true pullable=false: UseLocal
            IfNotPresent present=false pullable=true: Pull { local_if_unreachable: false }
            IfNotPresent present=false pullable=false: Missing
            Never present=true pullable=true: UseLocal
            Never present=true pullable=false: UseLocal
            Never present=false pullable=true: NeverPull
            Never present=false pullable=false: NeverPull
        "#]]
        .assert_eq(&out);
    }

    #[test]
    fn only_references_with_a_host_name_a_registry() {
        for image in ["127.0.0.1:5000/demo:v1", "localhost/demo", "registry.example/app@sha256:ab"] {
            assert!(names_registry(image), "{image}");
        }
        for image in ["peer-demo:latest", "library/nginx", "nginx", "sha256:abcd"] {
            assert!(!names_registry(image), "{image}");
        }
    }

    #[test]
    fn only_connect_failures_count_as_unreachable() {
        let registry = |reason: &str| ImageError::Registry {
            registry: "127.0.0.1:5000".into(),
            reference: "127.0.0.1:5000/demo:v1".into(),
            reason: reason.into(),
        };
        assert!(unreachable(&registry(
            "error sending request for url (http://127.0.0.1:5000/v2/demo/manifests/v1)"
        )));
        assert!(unreachable(&registry("no live peer holds this image (peers-only distribution)")));
        assert!(!unreachable(&registry(
            "Server error: url http://127.0.0.1:5000/v2/demo/manifests/v1, code: 404, message: not found"
        )));
        let refused = ImageError::Unauthorized {
            registry: "127.0.0.1:5000".into(),
            repository: "demo".into(),
            detail: "unauthorized".into(),
        };
        assert!(!unreachable(&refused));
    }

    #[test]
    fn messages_read_like_the_kubelets() {
        let took = std::time::Duration::from_millis(1234);
        expect_test::expect![[
            r#"Successfully pulled image "r.example/a:1" in 1.234s. Image size: 9000 bytes."#
        ]]
        .assert_eq(&pulled_message("r.example/a:1", took, 9000, 0));
        expect_test::expect![[r#"Successfully pulled image "r.example/a:1" in 1.234s. Image size: 9000 bytes (4000 bytes from peers)."#]]
            .assert_eq(&pulled_message("r.example/a:1", took, 9000, 4000));
        let progress = ProgressSnapshot {
            total: 9_000_000,
            done: 3_100_000,
            from_registry: 2_100_000,
            from_peers: 1_000_000,
        };
        expect_test::expect!["pulling image r.example/a:1: 3.1 MB of 9.0 MB (1.0 MB from peers)"]
            .assert_eq(&pulling_message("r.example/a:1", &progress));
    }

    #[tokio::test]
    async fn pods_pulling_the_same_image_share_one_pull_and_its_progress() {
        let pulls = Pulls::default();
        let key = ("r.example/a:1".to_owned(), vec![]);
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let pulls = pulls.clone();
            let key = key.clone();
            tokio::spawn(async move {
                pulls
                    .shared(key, |_| async move {
                        let _ = wait.await;
                        Outcome::Pulled { size: 7, from_peers: 0 }
                    })
                    .await
            })
        };
        // The leader's entry is visible (with its progress) while it runs.
        while pulls.progress("r.example/a:1").is_none() {
            tokio::task::yield_now().await;
        }
        let follower = {
            let pulls = pulls.clone();
            tokio::spawn(async move {
                pulls.shared(key, |_| async { panic!("a second pull of the same image started") }).await
            })
        };
        tokio::task::yield_now().await;
        let _ = release.send(());
        for outcome in [leader.await.expect("leader"), follower.await.expect("follower")] {
            assert!(matches!(outcome, Outcome::Pulled { size: 7, .. }), "{outcome:?}");
        }
        assert!(pulls.progress("r.example/a:1").is_none(), "the entry goes when the pull is done");
    }
}
