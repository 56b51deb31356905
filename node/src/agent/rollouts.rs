//! `peer scale` and `peer rollout status`: a Deployment's replica count, and where its
//! rollout stands in the shared view (the copies every live node claims).

use protocol::spec::{Kind, ObjectKey};
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

    /// The rollout of a Deployment: its replicas of the current revision (and how many are
    /// Ready) and the old ones left, cluster-wide.
    pub(super) fn rollout_status(&self, namespace: String, name: String) -> Response {
        let key = ObjectKey { kind: Kind::Deployment, namespace, name };
        let Some(stored) = self.store.get(&key) else { return err(format!("{key} not found")) };
        let Some(w) = stored.object.as_workload() else { return err(format!("{key} is not a workload")) };
        let revision = w.template.revision_hash();
        let mine = self.claims();
        let all = std::iter::once(&mine).chain(self.cluster.live_peers().map(|p| &p.claims));
        let copies = protocol::rollout::index_copies(
            all.flat_map(|c| c.iter().map(|(k, c)| (k.as_str(), c.revision.as_str(), c.is_ready()))),
        );
        let seen = copies.get(&(key.namespace.clone(), key.name.clone())).cloned().unwrap_or_default();
        let updated: Vec<_> =
            seen.iter().filter(|c| c.revision == revision && c.index < w.replicas).collect();
        let old = seen.iter().filter(|c| c.revision != revision).count();
        let ready = updated.iter().filter(|c| c.ready).count();
        let done = updated.len() as u32 == w.replicas && ready as u32 == w.replicas && old == 0;
        Response::Ok {
            data: json!({
                "name": key.name,
                "revision": revision,
                "replicas": w.replicas,
                "updated": updated.len(),
                "updatedReady": ready,
                "old": old,
                "done": done,
            }),
        }
    }
}
