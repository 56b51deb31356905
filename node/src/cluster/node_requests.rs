//! Node requests over QUIC (`protocol::node_request`): `peer cordon`, `peer uncordon` and
//! `peer drain` of another node. The asker sends one request on a stream of kind
//! [`STREAM_NODE`]; the target applies it to itself in its agent loop (its cordon flag is
//! its own gossip state, which nothing else writes) and answers with its status.
//!
//! Both sides run in tasks: serving hands the request to the agent loop and waits for its
//! answer off the loop; asking runs in a task of the asker's agent, which answers the API
//! request from there, so neither loop ever waits on the network.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::desired::NodeId;
use protocol::node_request::{NodeAnswer, NodeRequest, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
use protocol::transport::{read_message, write_message, TransportHandle};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::STREAM_NODE;
use crate::agent::Input;

/// How long an asker waits for the whole exchange (connecting included).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long serving one request may take (a slow asker is cut off).
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests served at once; more are refused (the stream is dropped).
pub const MAX_SERVING: usize = 4;

/// Answers one request on a stream `peer` (the node id of its certificate) opened: reads
/// it with its size limit, has the agent loop apply it, writes the answer.
pub async fn serve(peer: String, mut send: SendStream, mut recv: RecvStream, agent: UnboundedSender<Input>) {
    let result = tokio::time::timeout(SERVE_TIMEOUT, async {
        let req = read_message::<NodeRequest>(&mut recv, MAX_REQUEST_BYTES)
            .await
            .map_err(|e| format!("reading the request: {e}"))?
            .ok_or("the stream ended before the request")?;
        let (reply, answer) = oneshot::channel();
        agent
            .send(Input::NodeRequest { from: NodeId(peer.clone()), req, reply })
            .map_err(|_| "the agent is stopping")?;
        let answer = answer.await.map_err(|_| "the agent dropped the request")?;
        write_message(&mut send, &answer).await.map_err(|e| format!("writing the answer: {e}"))?;
        send.finish().map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "node request failed: {e}"),
        Err(_) => tracing::debug!(%peer, "node request timed out"),
    }
}

/// Asks `peer` at `addr` to apply `req` to itself, within [`ASK_TIMEOUT`]. The dial accepts
/// only a server whose certificate names `peer`; an answer that fails its checks is an
/// error.
pub async fn ask(
    transport: &TransportHandle,
    addr: SocketAddr,
    peer: &NodeId,
    req: NodeRequest,
) -> Result<NodeAnswer, String> {
    let exchange = async {
        let (mut send, mut recv) =
            transport.open_bi(addr, Some(&peer.0), STREAM_NODE).await.map_err(|e| e.to_string())?;
        write_message(&mut send, &req).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = read_message::<NodeAnswer>(&mut recv, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended before the answer")?;
        answer.check().map_err(|e| e.to_string())
    };
    tokio::time::timeout(ASK_TIMEOUT, exchange).await.map_err(|_| "no answer in time".to_owned())?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use protocol::node_request::NodeStatus;
    use protocol::tls::ClusterCa;
    use protocol::transport::{write_frame, Incoming, IncomingStream};
    use tokio::sync::mpsc;

    use super::*;

    use crate::cluster::test_node as node;

    async fn next(incoming: &mut Incoming) -> IncomingStream {
        tokio::time::timeout(Duration::from_secs(2), incoming.recv()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn the_target_applies_a_request_from_the_peer_its_certificate_names() {
        let ca = ClusterCa::generate("test").unwrap();
        let (a, _a_in, _) = node(&ca, "a");
        let (_b, mut b_in, b_addr) = node(&ca, "b");
        let (agent_tx, mut agent) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            let s = next(&mut b_in).await;
            assert_eq!(s.kind, STREAM_NODE);
            serve(s.node_id, s.send, s.recv, agent_tx).await;
        });
        let asking =
            tokio::spawn(async move { ask(&a, b_addr, &NodeId("b".into()), NodeRequest::Drain).await });
        // The agent loop's side: the request arrives decoded, from `a`.
        let Some(Input::NodeRequest { from, req, reply }) = agent.recv().await else {
            panic!("no node request reached the agent")
        };
        assert_eq!((from.0.as_str(), req), ("a", NodeRequest::Drain));
        let status = NodeStatus::new(true, true, ["default/web-0".to_owned()]);
        reply.send(NodeAnswer::Status(status.clone())).unwrap();
        assert_eq!(asking.await.unwrap().unwrap(), NodeAnswer::Status(status));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn garbage_and_lies_are_dropped_without_reaching_the_agent() {
        let ca = ClusterCa::generate("test").unwrap();
        let (a, mut a_in, a_addr) = node(&ca, "a");
        let (b, mut b_in, b_addr) = node(&ca, "b");
        // An oversized frame: the server refuses it before reading it, and the agent never
        // hears of it.
        let (agent_tx, mut agent) = mpsc::unbounded_channel();
        let (mut send, _recv) = a.open_bi(b_addr, Some("b"), STREAM_NODE).await.unwrap();
        write_frame(&mut send, &vec![0u8; 1024], 4096).await.unwrap();
        send.finish().unwrap();
        let s = next(&mut b_in).await;
        serve(s.node_id, s.send, s.recv, agent_tx).await;
        assert!(agent.try_recv().is_err(), "an oversized request reached the agent");

        // A server whose answer lists more pods than it counts: the asker refuses it.
        let liar = tokio::spawn(async move {
            let mut s = next(&mut a_in).await;
            let _ = read_message::<NodeRequest>(&mut s.recv, MAX_REQUEST_BYTES).await;
            let lie = NodeStatus { cordoned: true, draining: true, pods: 0, listed: vec!["x/y".into()] };
            write_message(&mut s.send, &NodeAnswer::Status(lie)).await.unwrap();
            s.send.finish().unwrap();
            let _ = s.send.stopped().await;
        });
        let err = ask(&b, a_addr, &NodeId("a".into()), NodeRequest::DrainStatus).await.unwrap_err();
        assert!(err.contains("lists 1 pods but counts 0"), "{err}");
        liar.await.unwrap();

        // A dial to a name the server's certificate does not carry fails.
        let err = ask(&b, a_addr, &NodeId("c".into()), NodeRequest::DrainStatus).await.unwrap_err();
        assert!(!err.is_empty());
    }
}
