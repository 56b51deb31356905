//! `peer scale` and `peer rollout status|history|undo|pause|resume`: a Deployment's
//! replica count, where its rollout stands in the shared view (the copies every live node
//! claims), its revisions, and the progress deadline.

use std::collections::BTreeMap;

use protocol::spec::{Kind, ObjectKey, Revision, Workload};
use serde_json::json;

use super::queries::parse_kind;
use super::Agent;
use crate::api::Response;
use crate::store::Source;

fn err(message: impl Into<String>) -> Response {
    Response::Error { message: message.into() }
}

impl Agent {
    /// Sets the replica count of a Deployment or StatefulSet, as a write of this node.
    pub(super) fn scale(&mut self, kind: &str, namespace: String, name: String, replicas: u32) -> Response {
        let kind = match parse_kind(kind) {
            Some(k @ (Kind::Deployment | Kind::StatefulSet)) => k,
            Some(k) => return err(format!("a {k} cannot be scaled (only deployments and statefulsets)")),
            None => return err(format!("unknown kind {kind:?}; expected deployment or statefulset")),
        };
        let key = ObjectKey { kind, namespace, name };
        let Some(stored) = self.store.get(&key) else { return err(format!("{key} not found")) };
        let Some(workload) = stored.object.as_workload() else {
            return err(format!("{key} is not a workload"));
        };
        let before = workload.replicas;
        let file = match stored.source {
            Some(Source::File(f)) => Some(f.clone()),
            _ => None,
        };
        let mut scaled = workload.clone();
        scaled.replicas = replicas;
        if before == replicas {
            return Response::Ok {
                data: json!({ "applied": [], "unchanged": [key.to_string()], "warnings": [], "errors": [] }),
            };
        }
        match self.store.put(scaled, Source::Api("peer scale".into())) {
            Ok(_) => {
                // A file in the spec folder keeps its own count: its next change applies it again.
                let warnings: Vec<String> = file
                    .map(|f| {
                        format!(
                            "{f} still says replicas: {before}; the next change of that file sets it again"
                        )
                    })
                    .into_iter()
                    .collect();
                Response::Ok {
                    data: json!({ "applied": [key.to_string()], "unchanged": [], "warnings": warnings, "errors": [] }),
                }
            }
            Err(e) => err(format!("storing {key}: {e:#}")),
        }
    }

    /// The stored Deployment `namespace/name`.
    fn deployment(
        &self,
        namespace: String,
        name: String,
    ) -> Result<(ObjectKey, Workload, Option<String>), Response> {
        let key = ObjectKey { kind: Kind::Deployment, namespace, name };
        let Some(stored) = self.store.get(&key) else {
            return Err(err(format!("deployment {}/{} not found", key.namespace, key.name)));
        };
        let Some(w) = stored.object.as_workload() else {
            return Err(err(format!("{key} is not a workload")));
        };
        let file = match stored.source {
            Some(Source::File(f)) => Some(f.clone()),
            _ => None,
        };
        Ok((key, w.clone(), file))
    }

    /// Every Deployment replica copy that this node and its live peers claim, indexed once
    /// for all the Deployments a caller looks at.
    fn copies(&self) -> Copies {
        let mine = self.claims();
        let all = std::iter::once(&mine).chain(self.cluster.live_peers().map(|p| &p.claims));
        protocol::rollout::index_copies(
            all.flat_map(|c| c.iter().map(|(k, c)| (k.as_str(), c.revision.as_str(), c.available))),
        )
    }

    /// Where the rollout of `w` stands in the shared view (every live node's claims).
    fn rollout_state(&self, w: &Workload, copies: &Copies) -> RolloutState {
        let revision = w.template.revision_hash();
        let seen = copies.get(&(w.key.namespace.clone(), w.key.name.clone())).cloned().unwrap_or_default();
        let updated: Vec<_> =
            seen.iter().filter(|c| c.revision == revision && c.index < w.replicas).collect();
        let old = seen.iter().filter(|c| c.revision != revision).count() as u32;
        let available = updated.iter().filter(|c| c.ready).count() as u32;
        let updated = updated.len() as u32;
        RolloutState {
            revision,
            updated,
            available,
            old,
            done: updated == w.replicas && available == w.replicas && old == 0,
        }
    }

    /// The rollout of a Deployment: its replicas of the current revision (and how many are
    /// available) and the old ones left, cluster-wide; whether it is paused or failed.
    pub(super) fn rollout_status(&self, namespace: String, name: String) -> Response {
        let (key, w, _) = match self.deployment(namespace, name) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let state = self.rollout_state(&w, &self.copies());
        let failed = !state.done && self.progress.get(&key).is_some_and(|p| p.exceeded);
        Response::Ok {
            data: json!({
                "name": key.name,
                "revision": state.revision,
                "number": w.rollout.revision,
                "replicas": w.replicas,
                "updated": state.updated,
                "updatedReady": state.available,
                "old": state.old,
                "done": state.done,
                "paused": w.rollout.paused,
                "failed": failed,
                "progressDeadlineSeconds": w.rollout.progress_deadline_seconds,
            }),
        }
    }

    /// `peer rollout history`: the kept revisions and the current one, or one in full.
    pub(super) fn rollout_history(&self, namespace: String, name: String, revision: Option<u64>) -> Response {
        let (key, w, _) = match self.deployment(namespace, name) {
            Ok(d) => d,
            Err(e) => return e,
        };
        let current = Revision {
            number: w.rollout.revision,
            template: w.template.clone(),
            change_cause: w.rollout.change_cause.clone(),
        };
        let all: Vec<&Revision> = w.rollout.history.iter().chain([&current]).collect();
        let row = |r: &Revision| {
            json!({
                "revision": r.number,
                "hash": r.template.revision_hash(),
                "changeCause": r.change_cause,
                "current": r.number == current.number,
            })
        };
        match revision {
            None => Response::Ok {
                data: json!({ "name": key.name, "revisions": all.iter().map(|r| row(r)).collect::<Vec<_>>() }),
            },
            Some(n) => match all.iter().find(|r| r.number == n) {
                Some(r) => {
                    let mut data = row(r);
                    data["template"] = serde_json::to_value(&r.template).unwrap_or_default();
                    Response::Ok { data }
                }
                None => err(format!(
                    "unable to find the specified revision {n} in the history of deployment {:?}",
                    key.name
                )),
            },
        }
    }

    /// `peer rollout undo`: the template of an earlier revision (the previous one by
    /// default) becomes current again, as a write of this node.
    pub(super) fn rollout_undo(&mut self, namespace: String, name: String, to: Option<u64>) -> Response {
        let (key, w, file) = match self.deployment(namespace, name) {
            Ok(d) => d,
            Err(e) => return e,
        };
        if w.rollout.paused {
            return err(format!(
                "you cannot roll back a paused deployment; resume it first with `peer rollout resume deployment/{}` and try again",
                key.name
            ));
        }
        let target = match to {
            None | Some(0) => w.rollout.history.last(),
            Some(n) => w.rollout.history.iter().find(|r| r.number == n),
        };
        let Some(target) = target else {
            return match to {
                Some(n) if n > 0 && n == w.rollout.revision => Response::Ok {
                    data: json!({ "name": key.name, "skipped": format!("current template already matches revision {n}") }),
                },
                Some(n) if n > 0 => err(format!(
                    "unable to find the specified revision {n} in the history of deployment {:?}",
                    key.name
                )),
                _ => err(format!("no rollout history found for deployment {:?}", key.name)),
            };
        };
        let mut next = w.clone();
        next.template = target.template.clone();
        next.rollout.change_cause = target.change_cause.clone();
        let number = target.number;
        self.write_deployment(
            next,
            file,
            "peer rollout undo",
            json!({ "name": key.name, "rolledBackTo": number }),
        )
    }

    /// `peer rollout pause` and `resume`.
    pub(super) fn rollout_pause(&mut self, namespace: String, name: String, paused: bool) -> Response {
        let (key, w, file) = match self.deployment(namespace, name) {
            Ok(d) => d,
            Err(e) => return e,
        };
        if w.rollout.paused == paused {
            let is = if paused { "is already paused" } else { "is not paused" };
            return err(format!("deployment {:?} {is}", key.name));
        }
        let mut next = w.clone();
        next.rollout.paused = paused;
        let by = if paused { "peer rollout pause" } else { "peer rollout resume" };
        self.write_deployment(next, file, by, json!({ "name": key.name, "paused": paused }))
    }

    fn write_deployment(
        &mut self,
        next: Workload,
        file: Option<String>,
        by: &str,
        data: serde_json::Value,
    ) -> Response {
        let key = next.key.clone();
        match self.store.put(next, Source::Api(by.into())) {
            Ok(_) => {
                let mut data = data;
                // A file in the spec folder keeps what it says: its next change applies it again.
                data["warnings"] = json!(file
                    .map(|f| format!(
                        "{f} still says otherwise; the next change of that file sets the deployment again"
                    ))
                    .into_iter()
                    .collect::<Vec<_>>());
                Response::Ok { data }
            }
            Err(e) => err(format!("storing {key}: {e:#}")),
        }
    }

    /// Follows every Deployment's rollout for `progressDeadlineSeconds`: a rollout that
    /// has not moved (no new copy, none more available, no old one gone) for that long is
    /// marked failed, with a `ProgressDeadlineExceeded` event (recorded by one node).
    pub(super) fn observe_rollouts(&mut self, now_ms: u64) {
        let deployments: Vec<Workload> =
            self.store.workloads().filter(|w| w.key.kind == Kind::Deployment).cloned().collect();
        let mut next = BTreeMap::new();
        let copies = self.copies();
        for w in deployments {
            let state = self.rollout_state(&w, &copies);
            if state.done || w.rollout.paused {
                continue;
            }
            let signature = (state.revision.clone(), state.updated, state.available, state.old);
            let mut p = match self.progress.remove(&w.key) {
                Some(p) if p.signature == signature => p,
                _ => Progress { signature, since_ms: now_ms, exceeded: false },
            };
            let deadline = u64::from(w.rollout.progress_deadline_seconds) * 1000;
            if !p.exceeded && now_ms.saturating_sub(p.since_ms) >= deadline {
                p.exceeded = true;
                let me = self.cluster.me().clone();
                let live: Vec<_> = self
                    .cluster
                    .live_peers()
                    .map(|p| protocol::desired::NodeId(p.member.node_id.clone()))
                    .collect();
                let subject = protocol::desired::NodeId(String::new());
                if crate::cluster::events::records(&me, &live, &subject) {
                    let msg = format!(
                        "revision {} of deployment {:?} has timed out progressing ({} of {} updated replicas available, {} old left)",
                        w.rollout.revision, w.key.name, state.available, w.replicas, state.old
                    );
                    tracing::warn!(deployment = %w.key, "{msg}");
                    self.events.warning(
                        &format!("deployment/{}", w.key.name),
                        "ProgressDeadlineExceeded",
                        &msg,
                    );
                }
            }
            next.insert(w.key.clone(), p);
        }
        self.progress = next;
    }
}

type Copies = BTreeMap<(String, String), Vec<protocol::rollout::Copy>>;

/// Where a rollout stands.
struct RolloutState {
    revision: String,
    /// Copies of the current revision (indices below `replicas`).
    updated: u32,
    /// Of those, available ones (Ready for `minReadySeconds`).
    available: u32,
    /// Copies of earlier revisions.
    old: u32,
    done: bool,
}

/// How long a rollout has stood still.
#[derive(Debug)]
pub(super) struct Progress {
    signature: (String, u32, u32, u32),
    since_ms: u64,
    exceeded: bool,
}
