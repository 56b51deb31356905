//! Answers to the local API's cluster requests: nodes, tokens, removal, labels, taints;
//! cordon and drain are `node_requests.rs`'s.

use serde_json::json;

use super::{now_ms, Agent};
use crate::api::{NodeRow, Request, Response};
use crate::cluster::{NodeInfo, KEY_NODE};
use crate::nodecfg;

/// Whether the request is one of this module's.
pub fn is_cluster(req: &Request) -> bool {
    matches!(
        req,
        Request::GetNodes
            | Request::Token
            | Request::TokenRotate
            | Request::NodeRemove { .. }
            | Request::Label { .. }
            | Request::Taint { .. }
            | Request::Cordon { .. }
            | Request::Drain { .. }
            | Request::DrainStatus { .. }
            | Request::Block { .. }
    )
}

fn ok(data: serde_json::Value) -> Response {
    Response::Ok { data }
}

fn err(e: impl std::fmt::Display) -> Response {
    Response::Error { message: e.to_string() }
}

fn row(name: &str, addr: String, state: &str, info: Option<NodeInfo>, now: u64) -> NodeRow {
    NodeRow {
        name: name.to_owned(),
        address: addr,
        // kubectl shows a cordoned node as `Ready,SchedulingDisabled`.
        state: if info.as_ref().is_some_and(|i| i.cordoned) {
            format!("{state},SchedulingDisabled")
        } else {
            state.to_owned()
        },
        age_secs: info.as_ref().map(|i| now.saturating_sub(i.started_at_ms) / 1000),
        cpu_millis: info.as_ref().map(|i| i.cpu_millis),
        memory_bytes: info.as_ref().map(|i| i.memory_bytes),
        labels: info.as_ref().map(|i| i.labels.clone()).unwrap_or_default(),
        taints: info.as_ref().map(|i| i.taints.clone()).unwrap_or_default(),
        pods: info.as_ref().map(|i| i.pods),
    }
}

impl Agent {
    pub(super) async fn handle_cluster_api(&mut self, req: Request) -> Response {
        let now = now_ms();
        match req {
            Request::GetNodes => {
                let Some(members) = self.cluster.members().await else {
                    return err("this node has left its cluster");
                };
                let me = self.cluster.me().0.clone();
                let mut rows = Vec::new();
                for m in &members.live {
                    let info = if m.node_id == me {
                        Some(self.node.info(self.started_at_ms, self.pods.len() as u32))
                    } else {
                        self.cluster
                            .live_peers()
                            .find(|p| p.member.node_id == m.node_id)
                            .and_then(|p| p.info.clone())
                    };
                    rows.push(row(&m.node_id, m.gossip_addr.to_string(), "live", info, now));
                }
                for m in &members.dead {
                    if members.live.iter().any(|l| l.node_id == m.node_id) {
                        // An older generation of a node that restarted.
                        continue;
                    }
                    let membership = self.cluster.membership();
                    let (left, info) = match membership {
                        Some(ms) => (
                            ms.node_key(&m.node_id, protocol::membership::LEFT_KEY).await.is_some(),
                            ms.node_key(&m.node_id, KEY_NODE)
                                .await
                                .and_then(|v| serde_json::from_str(&v).ok()),
                        ),
                        None => (false, None),
                    };
                    let state = if left { "left" } else { "dead" };
                    rows.push(row(&m.node_id, m.gossip_addr.to_string(), state, info, now));
                }
                rows.sort_by(|a, b| a.name.cmp(&b.name));
                match serde_json::to_value(rows) {
                    Ok(v) => ok(v),
                    Err(e) => err(e),
                }
            }
            Request::Token => ok(
                json!({ "token": self.cluster.files.settings.token, "cluster": self.cluster.files.cluster_id }),
            ),
            Request::TokenRotate => {
                let me = self.cluster.me().0.clone();
                let token = match self.cluster.files.rotate_token(&me) {
                    Ok(t) => t,
                    Err(e) => return err(format!("{e:#}")),
                };
                if let Err(e) = self.cluster.publish_settings().await {
                    return err(format!("publishing the new token: {e:#}"));
                }
                self.events.normal(
                    "cluster",
                    "TokenRotated",
                    "join token replaced; the old one no longer admits nodes",
                );
                ok(json!({ "token": token.to_string() }))
            }
            Request::NodeRemove { name } => {
                if name == self.cluster.me().0 {
                    return err("a node cannot remove itself; run `peer node remove` on another node");
                }
                self.cluster.files.settings.revoked.insert(name.clone());
                if let Err(e) = self.cluster.publish_settings().await {
                    return err(format!("publishing the removal: {e:#}"));
                }
                self.events.warning(
                    "cluster",
                    "NodeRemoved",
                    &format!("node {name} removed; its certificate is refused"),
                );
                ok(json!({ "removed": name }))
            }
            Request::Label { key, value } => match self.node.set_label(&key, value.as_deref()) {
                Ok(()) => {
                    let info = self.node.info(self.started_at_ms, self.pods.len() as u32);
                    self.cluster.publish(&self.store, Some(&info)).await;
                    ok(json!({ "labels": self.node.labels() }))
                }
                Err(e) => err(format!("{e:#}")),
            },
            Request::Taint { taint, remove } => match self.node.set_taint(&taint, remove) {
                Ok(()) => {
                    let info = self.node.info(self.started_at_ms, self.pods.len() as u32);
                    self.cluster.publish(&self.store, Some(&info)).await;
                    ok(json!({ "taints": self.node.taints() }))
                }
                Err(e) => err(format!("{e:#}")),
            },
            req @ (Request::Drain { .. } | Request::Cordon { .. } | Request::DrainStatus { .. }) => {
                self.handle_node_api(req).await
            }
            Request::Block { addrs } => {
                if !self.cfg.test_hooks {
                    return err("the block test hook needs PEER_TEST_HOOKS=1 on the agent");
                }
                self.cluster.transport.set_blocked(addrs.iter().copied().collect());
                ok(json!({ "blocked": addrs }))
            }
            other => err(format!("not a cluster request: {other:?}")),
        }
    }
}

/// Validates a `key=value` label or `key-` removal as `peer label` takes it.
pub fn parse_label_arg(arg: &str) -> anyhow::Result<(String, Option<String>)> {
    if let Some(key) = arg.strip_suffix('-') {
        return Ok((key.to_owned(), None));
    }
    let (k, v) = nodecfg::parse_label(arg)?;
    Ok((k, Some(v)))
}
