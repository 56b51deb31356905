//! The agent's side of cluster-wide events: `peer get events` answered from every live
//! node by a task (the loop never waits on peers), and node liveness changes recorded as
//! `NodeJoined`, `NodeLeft` and `NodeDead` events.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use super::Agent;
use crate::api::Response;
use crate::cluster::events::{self, Liveness};

impl Agent {
    /// Answers `peer get events` from a task owned by `jobs`: this node's log and every
    /// live peer's, read concurrently.
    pub(super) fn answer_events(&mut self, after: BTreeMap<String, u64>, reply: oneshot::Sender<Response>) {
        let local = self.events.reader();
        let transport = self.cluster.transport.clone();
        let peers = self
            .cluster
            .live_peers()
            .map(|p| (protocol::desired::NodeId(p.member.node_id.clone()), p.member.gossip_addr))
            .collect();
        self.jobs.spawn(async move {
            let answer = events::gather(local, transport, peers, after).await;
            let resp = match serde_json::to_value(answer) {
                Ok(data) => Response::Ok { data },
                Err(e) => Response::Error { message: format!("encoding the events: {e}") },
            };
            let _ = reply.send(resp);
        });
    }

    /// Records the liveness changes this node is the one to record.
    pub(super) async fn record_liveness(&mut self, changes: Vec<Liveness>) {
        for change in changes {
            let node = change.node().clone();
            let object = format!("node/{node}");
            match change {
                Liveness::Live { returned: false, .. } => {
                    self.events.normal(&object, "NodeJoined", &format!("node {node} joined the cluster"))
                }
                Liveness::Live { returned: true, .. } => {
                    self.events.normal(&object, "NodeJoined", &format!("node {node} is live again"))
                }
                Liveness::Gone { .. } if self.cluster.files.settings.revoked.contains(&node.0) => self
                    .events
                    .normal(&object, "NodeLeft", &format!("node {node} was removed from the cluster")),
                Liveness::Gone { .. } if self.cluster.departed(&node).await => {
                    self.events.normal(&object, "NodeLeft", &format!("node {node} left the cluster"))
                }
                Liveness::Gone { .. } => self.events.warning(
                    &object,
                    "NodeDead",
                    &format!("node {node} stopped responding and was declared dead"),
                ),
            }
        }
    }
}
