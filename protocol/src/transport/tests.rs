//! Transport tests over real QUIC on 127.0.0.1; helpers shared with the membership tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::codec;
use crate::tls::{issue_node_cert, ClusterCa, JoinToken};

pub(crate) struct TestNode {
    pub handle: TransportHandle,
    pub incoming: Incoming,
    pub addr: SocketAddr,
}

pub(crate) fn cluster_ca() -> ClusterCa {
    ClusterCa::generate("test").unwrap()
}

pub(crate) fn identity(ca: &ClusterCa, name: &str) -> NodeIdentity {
    NodeIdentity::from_pem(&ca.cert_pem, &issue_node_cert(ca, name).unwrap()).unwrap()
}

pub(crate) fn bind(config: TransportConfig) -> TestNode {
    let (handle, incoming) = TransportHandle::bind(config).unwrap();
    let addr = handle.local_addr().unwrap();
    TestNode { handle, incoming, addr }
}

pub(crate) fn node(ca: &ClusterCa, name: &str) -> TestNode {
    bind(TransportConfig::new(([127, 0, 0, 1], 0).into(), identity(ca, name)))
}

/// Polls `cond` every 20 ms until it holds or `limit` passes.
pub(crate) async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return Err(format!("condition not met within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn next_stream(n: &mut TestNode) -> Option<IncomingStream> {
    tokio::time::timeout(Duration::from_secs(2), n.incoming.recv()).await.ok().flatten()
}

#[tokio::test]
async fn bi_stream_round_trip_names_the_peer() {
    let ca = cluster_ca();
    let a = node(&ca, "a");
    let mut b = node(&ca, "b");
    let (mut send, mut recv) = a.handle.open_bi(b.addr, Some("b"), 7).await.unwrap();
    write_message(&mut send, &"ping".to_string()).await.unwrap();
    let mut s = next_stream(&mut b).await.unwrap();
    assert_eq!((s.node_id.as_str(), s.addr, s.kind), ("a", a.addr, 7));
    let got: String = read_message(&mut s.recv, 1024).await.unwrap().unwrap();
    assert_eq!(got, "ping");
    write_message(&mut s.send, &"pong".to_string()).await.unwrap();
    s.send.finish().unwrap();
    let reply: String = read_message(&mut recv, 1024).await.unwrap().unwrap();
    assert_eq!(reply, "pong");
    assert!(read_message::<String>(&mut recv, 1024).await.unwrap().is_none(), "clean end of stream");

    // The peer at b's address is b, not c: a dial that expects c is refused.
    let c = node(&ca, "c");
    let err = c.handle.open_bi(b.addr, Some("zz"), 1).await.unwrap_err();
    assert!(matches!(err, TransportError::Connection { .. }), "{err}");
    // With a cached connection the node id is checked without a handshake.
    let err = a.handle.open_bi(b.addr, Some("zz"), 1).await.unwrap_err();
    assert!(matches!(err, TransportError::WrongNode { .. }), "{err}");
}

/// An identity whose certificate comes from `cert_ca` but that trusts `trust_ca`.
fn mixed_identity(cert_ca: &ClusterCa, trust_ca: &ClusterCa, name: &str) -> NodeIdentity {
    let mut id = identity(cert_ca, name);
    id.ca = trust_ca.cert_der().unwrap();
    id
}

#[tokio::test]
async fn foreign_revoked_and_missing_client_certs_are_refused() {
    let ca = cluster_ca();
    let mut a = node(&ca, "a");

    let other = ClusterCa::generate("other").unwrap();
    let foreign = bind(TransportConfig::new(([127, 0, 0, 1], 0).into(), mixed_identity(&other, &ca, "x")));
    // In TLS 1.3 the client may finish its side before the server rejects its certificate,
    // so the refusal shows on the server: counted, and no stream reaches the node.
    let _ = foreign.handle.open_bi(a.addr, None, 1).await;
    wait_until(Duration::from_secs(2), || a.handle.stats().refused_connections >= 1).await.unwrap();

    let b = node(&ca, "b");
    a.handle.revoke("b");
    let _ = b.handle.open_bi(a.addr, Some("a"), 1).await;
    wait_until(Duration::from_secs(2), || a.handle.stats().refused_connections >= 2).await.unwrap();

    // No client certificate on the authenticated ALPN: the server closes the connection.
    let token = JoinToken::generate(&ca).unwrap();
    let mut rustls_config = crate::tls::join_client_config(&token).unwrap();
    rustls_config.alpn_protocols = vec![crate::tls::ALPN_PEER.to_vec()];
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    let conn = endpoint
        .connect_with(client_quic_config(rustls_config).unwrap(), a.addr, crate::tls::ANY_NODE_NAME)
        .unwrap()
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await.unwrap();
    assert!(matches!(closed, quinn::ConnectionError::ApplicationClosed(_)), "{closed}");

    assert!(a.handle.stats().refused_connections >= 3, "{:?}", a.handle.stats());
    assert!(next_stream(&mut a).await.is_none(), "nothing reached the node");
}

#[tokio::test]
async fn join_with_the_token_works_and_a_wrong_one_is_refused() {
    let ca = cluster_ca();
    let token = JoinToken::generate(&ca).unwrap();
    let handler = Arc::new(CaJoinHandler::new("test".into(), ca.clone(), token.clone(), Vec::new()));
    let mut config = TransportConfig::new(([127, 0, 0, 1], 0).into(), identity(&ca, "a"));
    config.join_handler = Some(handler.clone());
    let mut a = bind(config);

    let start = Instant::now();
    let response = join(a.addr, &token, "newbie").await.unwrap();
    eprintln!("join took {:?}", start.elapsed());
    assert_eq!(response.cluster_id, "test");
    let id = NodeIdentity::from_pem(
        &response.ca_cert_pem,
        &crate::tls::NodeCert { cert_pem: response.node_cert_pem, key_pem: response.node_key_pem },
    )
    .unwrap();
    assert_eq!(id.node_id, "newbie");
    let newbie = bind(TransportConfig::new(([127, 0, 0, 1], 0).into(), id));
    newbie.handle.open_bi(a.addr, Some("a"), 3).await.unwrap();
    assert_eq!(next_stream(&mut a).await.unwrap().node_id, "newbie");

    let wrong = JoinToken { secret: "00".repeat(16), ..token.clone() };
    assert!(matches!(join(a.addr, &wrong, "evil").await, Err(JoinError::Refused { .. })));
    // Rotation: the old token stops working.
    handler.rotate(JoinToken::generate(&ca).unwrap());
    assert!(matches!(join(a.addr, &token, "late").await, Err(JoinError::Refused { .. })));
    // A token pinning another CA does not trust this cluster.
    let other = JoinToken::generate(&ClusterCa::generate("other").unwrap()).unwrap();
    assert!(matches!(join(a.addr, &other, "lost").await, Err(JoinError::Connect { .. })));
}

#[tokio::test]
async fn hostile_frames_do_not_crash_the_receiver() {
    let ca = cluster_ca();
    let a = node(&ca, "a");
    let mut b = node(&ca, "b");

    // A frame prefix announcing 4 GiB: refused before anything is buffered.
    let (mut send, _recv) = a.handle.open_bi(b.addr, None, 9).await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut s = next_stream(&mut b).await.unwrap();
    let err = read_message::<String>(&mut s.recv, codec::MAX_MESSAGE).await.unwrap_err();
    assert!(matches!(err, StreamError::Codec(codec::CodecError::FrameTooLarge { .. })), "{err}");

    // Garbage inside a well-sized frame is a decode error.
    let (mut send, _recv) = a.handle.open_bi(b.addr, None, 9).await.unwrap();
    write_frame(&mut send, &[0xff; 32], 1024).await.unwrap();
    let mut s = next_stream(&mut b).await.unwrap();
    assert!(read_message::<Vec<String>>(&mut s.recv, 1024).await.is_err());

    // A gossip stream longer than any chitchat message: counted, and the connection closed.
    let conn = a.handle.connection(b.addr, None).await.unwrap();
    let mut uni = conn.open_uni().await.unwrap();
    let _ = uni.write_all(&vec![0xab; MAX_GOSSIP_BYTES + 1]).await;
    let _ = uni.finish();
    wait_until(Duration::from_secs(2), || b.handle.stats().bad_frames >= 1).await.unwrap();
    wait_until(Duration::from_secs(2), || conn.close_reason().is_some()).await.unwrap();

    // The receiver lives on: a new connection and stream work.
    let (mut send, mut recv) = a.handle.open_bi(b.addr, None, 5).await.unwrap();
    write_message(&mut send, &"still alive".to_string()).await.unwrap();
    let mut s = next_stream(&mut b).await.unwrap();
    let got: String = read_message(&mut s.recv, 1024).await.unwrap().unwrap();
    assert_eq!(got, "still alive");
    drop(recv.stop(quinn::VarInt::from_u32(0)));
}
