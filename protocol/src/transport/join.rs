//! The join handshake on [`tls::ALPN_JOIN`]: a new node without a certificate dials a member,
//! pins the cluster CA by the token's hash, sends [`JoinRequest`] and receives
//! [`JoinResponse`] with its node certificate.
//!
//! The response carries the CA **key** too: every node can admit joiners, so every node holds
//! the CA key (a compromised node can mint node identities; revocation is by node id). What
//! admits a joiner is pluggable ([`JoinHandler`]); [`CaJoinHandler`] is the plain one.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::frame::{read_message, write_message, StreamError};
use super::{bump, Shared};
use crate::tls::{self, ClusterCa, JoinToken, TlsError};

/// The largest join request or response accepted.
const MAX_JOIN_BYTES: usize = 64 * 1024;
/// How long the whole exchange may take, on either side.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret half of the join token.
    pub token_secret: String,
    /// The id the joiner asks for (a DNS label).
    pub node_id: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub ca_cert_pem: String,
    /// The CA key: every node admits joiners (see the module doc).
    pub ca_key_pem: String,
    pub node_cert_pem: String,
    pub node_key_pem: String,
    /// Members to gossip with first.
    pub seeds: Vec<SocketAddr>,
}

impl std::fmt::Debug for JoinResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs.
        f.debug_struct("JoinResponse")
            .field("cluster_id", &self.cluster_id)
            .field("seeds", &self.seeds)
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum JoinReply {
    Accepted(JoinResponse),
    Refused(String),
}

/// Decides whether to admit a joiner and issues its certificate. Implemented by the node.
#[async_trait::async_trait]
pub trait JoinHandler: Send + Sync + 'static {
    /// Admits `request` from `from`, or says why not (the reason goes back to the joiner).
    async fn admit(&self, request: JoinRequest, from: SocketAddr) -> Result<JoinResponse, String>;
}

/// Admits a joiner whose secret matches the current token; the token can be rotated.
pub struct CaJoinHandler {
    pub cluster_id: String,
    pub ca: ClusterCa,
    token: RwLock<JoinToken>,
    seeds: RwLock<Vec<SocketAddr>>,
}

impl CaJoinHandler {
    pub fn new(cluster_id: String, ca: ClusterCa, token: JoinToken, seeds: Vec<SocketAddr>) -> Self {
        Self { cluster_id, ca, token: RwLock::new(token), seeds: RwLock::new(seeds) }
    }

    /// Replaces the token; the old secret stops working at once.
    pub fn rotate(&self, token: JoinToken) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    pub fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        *self.seeds.write().unwrap_or_else(|e| e.into_inner()) = seeds;
    }
}

#[async_trait::async_trait]
impl JoinHandler for CaJoinHandler {
    async fn admit(&self, request: JoinRequest, _from: SocketAddr) -> Result<JoinResponse, String> {
        let matches =
            self.token.read().unwrap_or_else(|e| e.into_inner()).secret_matches(&request.token_secret);
        if !matches {
            return Err("invalid join token".into());
        }
        let cert = tls::issue_node_cert(&self.ca, &request.node_id).map_err(|e| e.to_string())?;
        Ok(JoinResponse {
            cluster_id: self.cluster_id.clone(),
            ca_cert_pem: self.ca.cert_pem.clone(),
            ca_key_pem: self.ca.key_pem.clone(),
            node_cert_pem: cert.cert_pem,
            node_key_pem: cert.key_pem,
            seeds: self.seeds.read().unwrap_or_else(|e| e.into_inner()).clone(),
        })
    }
}

/// Errors of [`join`]. None changes any state: the joiner got nothing.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The member could not be reached, or its certificate does not chain to the pinned CA.
    #[error("cannot reach {addr} to join: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("join exchange with {addr} failed: {source}")]
    Stream { addr: SocketAddr, source: StreamError },
    /// The member refused: bad token, bad node id.
    #[error("{addr} refused the join: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("join exchange with {0} timed out")]
    Timeout(SocketAddr),
}

/// Joins the cluster through the member at `server`: a one-off endpoint without a certificate.
pub async fn join(server: SocketAddr, token: &JoinToken, node_id: &str) -> Result<JoinResponse, JoinError> {
    tls::check_node_id(node_id)?;
    let client = super::client_quic_config(tls::join_client_config(token)?)?;
    let bind: SocketAddr = if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let connect = |detail: String| JoinError::Connect { addr: server, detail };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| connect(e.to_string()))?;
    let request = JoinRequest { token_secret: token.secret.clone(), node_id: node_id.to_owned() };
    let exchange = async {
        let conn = endpoint
            .connect_with(client, server, &tls::server_name_for(None))
            .map_err(|e| connect(e.to_string()))?
            .await
            .map_err(|e| connect(e.to_string()))?;
        let stream = |source| JoinError::Stream { addr: server, source };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connect(e.to_string()))?;
        write_message(&mut send, &request).await.map_err(stream)?;
        // The stream is ours alone; a finish error means the connection is gone, which the read reports.
        let _ = send.finish();
        let reply = read_message::<JoinReply>(&mut recv, MAX_JOIN_BYTES).await.map_err(stream)?;
        conn.close(quinn::VarInt::from_u32(0), b"joined");
        match reply {
            Some(JoinReply::Accepted(response)) => Ok(response),
            Some(JoinReply::Refused(reason)) => Err(JoinError::Refused { addr: server, reason }),
            None => Err(stream(StreamError::Truncated)),
        }
    };
    let result =
        tokio::time::timeout(JOIN_TIMEOUT, exchange).await.map_err(|_| JoinError::Timeout(server))?;
    endpoint.wait_idle().await;
    result
}

/// Serves one join exchange on an accepted [`tls::ALPN_JOIN`] connection, then closes it.
pub(super) async fn serve(shared: &Arc<Shared>, conn: quinn::Connection) {
    let addr = conn.remote_address();
    let Some(handler) = shared.join_handler.clone() else {
        bump(&shared.counters.refused_connections);
        conn.close(quinn::VarInt::from_u32(1), b"joins are not accepted here");
        return;
    };
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let request = match read_message::<JoinRequest>(&mut recv, MAX_JOIN_BYTES).await {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => {
                bump(&shared.counters.bad_frames);
                return None;
            }
        };
        let node_id = request.node_id.clone();
        let reply = match handler.admit(request, addr).await {
            Ok(response) => {
                info!(%addr, node = %node_id, "admitted joiner");
                JoinReply::Accepted(response)
            }
            Err(reason) => {
                warn!(%addr, node = %node_id, %reason, "refused joiner");
                bump(&shared.counters.refused_connections);
                JoinReply::Refused(reason)
            }
        };
        write_message(&mut send, &reply).await.ok()?;
        send.finish().ok()?;
        // The joiner closes once it has read the reply.
        conn.closed().await;
        Some(())
    };
    if tokio::time::timeout(JOIN_TIMEOUT, exchange).await.is_err() {
        bump(&shared.counters.bad_frames);
    }
    conn.close(quinn::VarInt::from_u32(0), b"done");
}
