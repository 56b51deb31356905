//! Stream tasks of desired-state replication: they move `SyncMessage`s between a QUIC
//! stream and the agent loop, which alone touches the state.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::codec::MAX_MESSAGE;
use protocol::desired::NodeId;
use protocol::sync::SyncMessage;
use protocol::transport::{read_message, write_message, TransportHandle};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::{ClusterInput, STREAM_PUSH, STREAM_SYNC};
use crate::agent::Input;

/// A push that cannot be delivered in this time is dropped; anti-entropy repairs it.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn send(tx: &UnboundedSender<Input>, input: ClusterInput) {
    let _ = tx.send(Input::Cluster(input));
}

/// Opens a sync stream to `peer` and runs the round's I/O.
pub async fn initiate(
    transport: TransportHandle,
    addr: SocketAddr,
    peer: NodeId,
    sid: u64,
    out: UnboundedReceiver<SyncMessage>,
    tx: UnboundedSender<Input>,
) {
    match transport.open_bi(addr, Some(&peer.0), STREAM_SYNC).await {
        Ok((s, r)) => run(sid, s, r, out, tx).await,
        Err(e) => {
            tracing::debug!(%peer, "opening a sync stream: {e}");
            send(&tx, ClusterInput::SyncEnded { sid });
        }
    }
}

/// Runs one round's I/O: a writer drains `out` (and finishes the stream when the agent
/// drops it); a reader hands every message to the agent. Separate halves, so a read is
/// never cancelled mid-frame.
pub async fn run(
    sid: u64,
    mut send_half: SendStream,
    mut recv_half: RecvStream,
    mut out: UnboundedReceiver<SyncMessage>,
    tx: UnboundedSender<Input>,
) {
    let writer = async {
        while let Some(msg) = out.recv().await {
            if let Err(e) = write_message(&mut send_half, &msg).await {
                tracing::debug!(sid, "writing a sync message: {e}");
                return;
            }
        }
        let _ = send_half.finish();
    };
    let reader = async {
        loop {
            match read_message::<SyncMessage>(&mut recv_half, MAX_MESSAGE).await {
                Ok(Some(msg)) => send(&tx, ClusterInput::SyncMsg { sid, msg }),
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(sid, "reading a sync message: {e}");
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(writer, reader) }).await;
    send(&tx, ClusterInput::SyncEnded { sid });
}

/// Sends one push to `peer`.
pub async fn push(transport: TransportHandle, addr: SocketAddr, peer: NodeId, msg: SyncMessage) {
    let result = tokio::time::timeout(PUSH_TIMEOUT, async {
        let (mut s, _r) =
            transport.open_bi(addr, Some(&peer.0), STREAM_PUSH).await.map_err(|e| e.to_string())?;
        write_message(&mut s, &msg).await.map_err(|e| e.to_string())?;
        s.finish().map_err(|e| e.to_string())?;
        // Wait until the peer has read it all, so the connection is not torn down early.
        let _ = s.stopped().await;
        Ok::<(), String>(())
    })
    .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%peer, "push failed: {e}"),
        Err(_) => tracing::debug!(%peer, "push timed out"),
    }
}

/// Reads the one message of a push stream.
pub async fn read_push(from: NodeId, mut recv: RecvStream, tx: UnboundedSender<Input>) {
    match tokio::time::timeout(PUSH_TIMEOUT, read_message::<SyncMessage>(&mut recv, MAX_MESSAGE)).await {
        Ok(Ok(Some(msg))) => send(&tx, ClusterInput::Push { from, msg }),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(peer = %from, "bad push: {e}"),
        Err(_) => tracing::debug!(peer = %from, "push read timed out"),
    }
}
