//! `peer cordon`, `peer uncordon`, `peer drain` and the drain's status for any live node.
//!
//! A node's cordon and drain state is its own (its gossip key `node`, its `nodecfg`), so
//! only the node itself changes it: a request naming this node is applied here, one naming
//! a live peer is sent to that peer (`cluster::node_requests`) by a task that answers the
//! API request, and one naming any other node is refused with the nodes this one knows.

use std::collections::BTreeMap;

use protocol::desired::NodeId;
use protocol::node_request::{NodeAnswer, NodeRequest, NodeStatus};
use protocol::spec::Kind;
use tokio::sync::oneshot;

use super::Agent;
use crate::api::{NodeStatusAnswer, Request, Response};
use crate::cluster::node_requests;

/// The node a request of this module names (`None`: this node) and what it asks.
fn node_request(req: &Request) -> Option<(Option<&str>, NodeRequest)> {
    match req {
        Request::Cordon { name, cordoned } => {
            Some((name.as_deref(), NodeRequest::Cordon { cordoned: *cordoned }))
        }
        Request::Drain { name } => Some((name.as_deref(), NodeRequest::Drain)),
        Request::DrainStatus { name } => Some((name.as_deref(), NodeRequest::DrainStatus)),
        _ => None,
    }
}

/// The API's answer to a node request that `node` answered.
fn answer(node: &str, from_node: NodeAnswer) -> Response {
    match from_node {
        NodeAnswer::Status(status) => {
            match serde_json::to_value(NodeStatusAnswer { node: node.to_owned(), status }) {
                Ok(data) => Response::Ok { data },
                Err(e) => Response::Error { message: format!("encoding the status of node {node}: {e}") },
            }
        }
        NodeAnswer::Refused { message } => Response::Error { message: format!("node {node}: {message}") },
    }
}

impl Agent {
    /// The live peer (id and address) a node request names, when it names one.
    fn peer_named(&self, req: &Request) -> Option<(NodeId, std::net::SocketAddr)> {
        let (Some(name), _) = node_request(req)? else { return None };
        let peer = self.cluster.live_peers().find(|p| p.member.node_id == name)?;
        Some((NodeId(peer.member.node_id.clone()), peer.member.gossip_addr))
    }

    /// Whether `req` is a node request for a live peer (see [`Agent::forward_node_request`]).
    pub(super) fn names_a_peer(&self, req: &Request) -> bool {
        self.peer_named(req).is_some()
    }

    /// Sends a node request to the live peer it names from a task owned by `jobs`, which
    /// answers `reply`: the loop never waits on the peer.
    pub(super) fn forward_node_request(&mut self, req: Request, reply: oneshot::Sender<Response>) {
        let (Some((peer, addr)), Some((_, ask))) = (self.peer_named(&req), node_request(&req)) else {
            let _ =
                reply.send(Response::Error { message: format!("not a request for a live peer: {req:?}") });
            return;
        };
        let transport = self.cluster.transport.clone();
        self.jobs.spawn(async move {
            let resp = match node_requests::ask(&transport, addr, &peer, ask).await {
                Ok(a) => answer(&peer.0, a),
                Err(e) if ask == NodeRequest::DrainStatus => {
                    Response::Error { message: format!("node {peer} is not reachable: {e}") }
                }
                Err(e) => Response::Error {
                    message: format!(
                        "node {peer} is not reachable: {e} (it may have applied the request; asking again is safe)"
                    ),
                },
            };
            let _ = reply.send(resp);
        });
    }

    /// Answers a node request naming this node or a node that is not a live peer.
    pub(super) async fn handle_node_api(&mut self, req: Request) -> Response {
        let Some((name, ask)) = node_request(&req) else {
            return Response::Error { message: format!("not a node request: {req:?}") };
        };
        let me = self.cluster.me().0.clone();
        match name {
            None => answer(&me, self.apply_node_request(ask, None).await),
            Some(n) if n == me => answer(&me, self.apply_node_request(ask, None).await),
            Some(n) => Response::Error { message: self.not_reachable(n).await },
        }
    }

    /// Applies a request to this node, as `peer cordon`, `peer uncordon` or `peer drain` on
    /// it, or from peer `from`; persists it and publishes the node's info at once.
    pub(super) async fn apply_node_request(&mut self, req: NodeRequest, from: Option<&NodeId>) -> NodeAnswer {
        let me = self.cluster.me().0.clone();
        let asked_by = from.map(|f| format!(" (asked by node {f})")).unwrap_or_default();
        let result = match req {
            NodeRequest::DrainStatus => return NodeAnswer::Status(self.node_status()),
            NodeRequest::Drain => self.node.set_draining().map(|()| {
                ("NodeDraining", format!("cordoned; evicting its pods within disruption budgets{asked_by}"))
            }),
            NodeRequest::Cordon { cordoned } => self.node.set_cordoned(cordoned).map(|()| {
                let reason = if cordoned { "NodeNotSchedulable" } else { "NodeSchedulable" };
                (reason, format!("node {me} cordoned: {cordoned}{asked_by}"))
            }),
        };
        match result {
            Ok((reason, message)) => {
                if let Some(f) = from {
                    tracing::info!(peer = %f, ?req, "applying a node request from a peer");
                }
                let info = self.node.info(self.started_at_ms, self.pods.len() as u32);
                self.cluster.publish(&self.store, Some(&info)).await;
                self.events.normal(&format!("node/{me}"), reason, &message);
                NodeAnswer::Status(self.node_status())
            }
            Err(e) => NodeAnswer::refused(&format!("{e:#}")),
        }
    }

    /// This node's cordon and drain state and the pods a drain waits for: every pod it
    /// still runs (stopping ones included) except DaemonSet pods.
    fn node_status(&self) -> NodeStatus {
        let pods =
            self.pods.iter().filter(|(_, p)| p.workload.kind != Kind::DaemonSet).map(|(k, _)| k.clone());
        NodeStatus::new(self.node.cordoned(), self.node.draining(), pods)
    }

    /// Why a request for `name`, which is not this node nor a live peer, cannot be sent,
    /// with every node this one knows and its state.
    async fn not_reachable(&self, name: &str) -> String {
        let mut known: BTreeMap<String, &str> = BTreeMap::new();
        for id in &self.cluster.files.members {
            known.insert(id.clone(), "dead");
        }
        if let Some(members) = self.cluster.members().await {
            for m in &members.dead {
                known.insert(m.node_id.clone(), "dead");
            }
            for m in &members.live {
                known.insert(m.node_id.clone(), "live");
            }
        }
        known.insert(self.cluster.me().0.clone(), "live");
        for (id, state) in known.iter_mut().filter(|(_, s)| **s == "dead") {
            let node = NodeId(id.clone());
            if self.cluster.files.settings.revoked.contains(id) {
                *state = "removed";
            } else if self.cluster.departed(&node).await {
                *state = "left";
            }
        }
        let list: Vec<String> = known.iter().map(|(id, state)| format!("{id} ({state})")).collect();
        let list = list.join(", ");
        match known.get(name) {
            // Seen live by gossip a moment ago, before this node's view took it in.
            Some(&"live") => format!("node {name} is not reachable yet: it has just become live; try again"),
            Some(state) => format!("node {name} is not reachable: it is not live ({state}); nodes: {list}"),
            None => format!("node {name} is not a member of this cluster; nodes: {list}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn answers_as_the_api_gives_them() {
        let status = NodeStatus::new(true, true, ["default/web-0".to_owned()]);
        let ok = answer("db", NodeAnswer::Status(status));
        expect![[r#"{"status":"ok","data":{"cordoned":true,"draining":true,"listed":["default/web-0"],"node":"db","pods":1}}"#]]
            .assert_eq(&serde_json::to_string(&ok).unwrap());
        let refused = answer("db", NodeAnswer::refused("writing node-config.json: disk full"));
        expect![[r#"{"status":"error","message":"node db: writing node-config.json: disk full"}"#]]
            .assert_eq(&serde_json::to_string(&refused).unwrap());
    }

    #[test]
    fn only_cordon_drain_and_their_status_are_node_requests() {
        let named = |name: &str| Some(name.to_owned());
        assert_eq!(
            node_request(&Request::Cordon { name: named("db"), cordoned: false }),
            Some((Some("db"), NodeRequest::Cordon { cordoned: false }))
        );
        assert_eq!(node_request(&Request::Drain { name: None }), Some((None, NodeRequest::Drain)));
        assert_eq!(
            node_request(&Request::DrainStatus { name: named("dc") }),
            Some((Some("dc"), NodeRequest::DrainStatus))
        );
        assert_eq!(node_request(&Request::NodeRemove { name: "db".into() }), None);
    }
}
