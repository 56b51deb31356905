//! Image blobs between nodes (`protocol::blob`): serving this node's verified blobs to
//! peers on streams of kind [`STREAM_BLOB`], and [`ClusterBlobs`], the runtime's
//! [`PeerBlobs`] over the cluster, with which a pull finds who holds or fetches a blob
//! (the peers' gossip advertisements) and fetches it over QUIC.
//!
//! Serving runs in tasks of its own, never on the agent loop, and without the store's
//! lock: a committed blob file never changes, and a blob removed while it is being sent
//! stays readable through the open file.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::blob::{
    Advert, BlobAnswer, BlobRequest, MAX_ANSWER_BYTES, MAX_MANIFEST_BYTES, MAX_REQUEST_BYTES,
};
use protocol::desired::NodeId;
use protocol::transport::{read_message, write_message, TransportHandle};
use quinn::{RecvStream, SendStream};
use runtime::image::{BlobStream, Digest, DigestHasher, ImageStore, PeerBlobs, PeerFuture};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc::UnboundedSender;

use super::STREAM_BLOB;
use crate::agent::Input;

/// Blobs served at once; a further asker is answered [`BlobAnswer::Busy`].
pub const MAX_SERVING: usize = 8;
/// How long reading a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A fetch whose answer does not come in this time (connecting included) fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A blob whose asker takes nothing for this long is given up on.
const SEND_IDLE: Duration = Duration::from_secs(30);
/// Stream reset code: the blob on disk no longer matches its digest.
const RESET_CORRUPT: u32 = 1;

/// Answers one request on a stream `peer` opened. `busy`: the serving limit is reached.
pub async fn serve(
    store: Arc<ImageStore>,
    peer: String,
    mut send: SendStream,
    mut recv: RecvStream,
    busy: bool,
) {
    let request =
        tokio::time::timeout(REQUEST_TIMEOUT, read_message::<BlobRequest>(&mut recv, MAX_REQUEST_BYTES));
    let req = match request.await {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return tracing::debug!(%peer, "bad blob request: {e}"),
        Err(_) => return tracing::debug!(%peer, "blob request timed out"),
    };
    if let Err(e) = req.check() {
        return tracing::warn!(%peer, "refused a blob request: {e}");
    }
    if busy {
        let _ = answer(&mut send, &BlobAnswer::Busy).await;
        return;
    }
    let result = match req {
        BlobRequest::Manifest { reference } => serve_manifest(&store, &reference, &mut send).await,
        BlobRequest::Blob { digest, offset } => match Digest::parse(&digest) {
            Ok(digest) => serve_blob(&store, &digest, offset, &mut send).await,
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "serving a blob: {e}");
    }
}

async fn answer(send: &mut SendStream, answer: &BlobAnswer) -> Result<(), String> {
    write_message(send, answer).await.map_err(|e| format!("writing the answer: {e}"))
}

async fn serve_manifest(store: &ImageStore, reference: &str, send: &mut SendStream) -> Result<(), String> {
    let bytes = {
        let (store, reference) = (store.clone(), reference.to_owned());
        tokio::task::spawn_blocking(move || store.manifest_bytes(&reference))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
    };
    let reply = match bytes {
        Some(bytes) if bytes.len() <= MAX_MANIFEST_BYTES => BlobAnswer::Manifest { bytes },
        _ => BlobAnswer::NotFound,
    };
    answer(send, &reply).await?;
    send.finish().map_err(|e| e.to_string())
}

/// Sends the blob from `offset`, hashing all of it (the part before `offset` too); if the
/// content no longer hashes to `digest`, the stream is reset rather than finished, so the
/// asker never takes it for whole, and the blob leaves the store.
async fn serve_blob(
    store: &ImageStore,
    digest: &Digest,
    offset: u64,
    send: &mut SendStream,
) -> Result<(), String> {
    let opened = store.open_blob(digest).map_err(|e| e.to_string())?;
    let Some((file, len)) = opened.filter(|(_, len)| *len >= offset) else {
        answer(send, &BlobAnswer::NotFound).await?;
        return send.finish().map_err(|e| e.to_string());
    };
    answer(send, &BlobAnswer::Blob { size: len }).await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = DigestHasher::default();
    let mut position = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| format!("reading blob {digest}: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        let start = offset.saturating_sub(position).min(n as u64) as usize;
        position += n as u64;
        if start < n {
            tokio::time::timeout(SEND_IDLE, send.write_all(&buf[start..n]))
                .await
                .map_err(|_| "the asker stopped reading".to_owned())?
                .map_err(|e| format!("sending: {e}"))?;
        }
    }
    let actual = hasher.finish();
    if actual != *digest || position != len {
        let _ = send.reset(RESET_CORRUPT.into());
        let store = store.clone();
        let digest = digest.clone();
        let _ = tokio::task::spawn_blocking(move || store.discard_corrupt_blob(&digest)).await;
        return Err(format!("blob does not match its digest any more (hashes to {actual})"));
    }
    send.finish().map_err(|e| e.to_string())?;
    // Wait until the asker has it all, so the connection is not torn down early.
    let _ = send.stopped().await;
    Ok(())
}

/// What this node knows of the peers' blobs, kept up to date by the agent loop from each
/// membership snapshot, and what it fetches itself.
#[derive(Debug, Default)]
struct Directory {
    /// Live peers that count for placement: address and advertisement.
    peers: BTreeMap<NodeId, (SocketAddr, Advert)>,
    /// Blobs this node is fetching from a registry right now.
    fetching: BTreeSet<Digest>,
}

/// The cluster's blobs as a pull sees them; cheap to clone, shared with pull tasks.
#[derive(Clone)]
pub struct ClusterBlobs {
    me: NodeId,
    transport: TransportHandle,
    directory: Arc<Mutex<Directory>>,
    /// Tells the agent loop to publish this node's advertisement again.
    changed: UnboundedSender<Input>,
}

impl ClusterBlobs {
    pub fn new(me: NodeId, transport: TransportHandle, changed: UnboundedSender<Input>) -> ClusterBlobs {
        ClusterBlobs { me, transport, directory: Arc::default(), changed }
    }

    /// Takes the live peers' addresses and advertisements from a membership snapshot.
    pub fn update(&self, peers: impl IntoIterator<Item = (NodeId, SocketAddr, Advert)>) {
        let peers = peers.into_iter().map(|(id, addr, advert)| (id, (addr, advert))).collect();
        self.lock().peers = peers;
    }

    /// This node's advertisement: the blobs of its store and those it fetches now.
    pub fn advert(&self, held: &[Digest]) -> Advert {
        let directory = self.lock();
        Advert::new(held.iter().map(Digest::as_str), directory.fetching.iter().map(Digest::as_str))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Directory> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.directory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn addr_of(&self, peer: &str) -> Result<SocketAddr, String> {
        let directory = self.lock();
        directory
            .peers
            .get(&NodeId(peer.to_owned()))
            .map(|(addr, _)| *addr)
            .ok_or_else(|| format!("{peer} is not live"))
    }

    /// Opens a blob stream to `peer`, sends `req` and reads the answer header.
    async fn ask(
        &self,
        peer: &str,
        req: BlobRequest,
        offset: u64,
    ) -> Result<(BlobAnswer, RecvStream), String> {
        let addr = self.addr_of(peer)?;
        let exchange = async {
            let (mut send, mut recv) =
                self.transport.open_bi(addr, Some(peer), STREAM_BLOB).await.map_err(|e| e.to_string())?;
            write_message(&mut send, &req).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            let answer = read_message::<BlobAnswer>(&mut recv, MAX_ANSWER_BYTES)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the stream ended before the answer")?;
            Ok::<_, String>((answer.check(offset)?, recv))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange).await.map_err(|_| "no answer in time".to_owned())?
    }
}

impl PeerBlobs for ClusterBlobs {
    fn holders(&self, digest: &Digest) -> Vec<String> {
        let directory = self.lock();
        let mut holders: Vec<&NodeId> =
            directory.peers.iter().filter(|(_, (_, a))| a.holds(digest.as_str())).map(|(id, _)| id).collect();
        // Spread askers over the holders: each asker starts at its own place in the list.
        let start = protocol::spec::fnv1a64(format!("{}{}", self.me, digest).as_bytes()) as usize;
        if !holders.is_empty() {
            let len = holders.len();
            holders.rotate_left(start % len);
        }
        holders.into_iter().map(|id| id.0.clone()).collect()
    }

    fn fetched_elsewhere(&self, digest: &Digest) -> bool {
        self.lock().peers.values().any(|(_, a)| a.fetches(digest.as_str()))
    }

    fn rank(&self, digest: &Digest) -> usize {
        let directory = self.lock();
        protocol::duty::rank(digest.as_str(), &self.me.0, directory.peers.keys().map(|id| id.0.as_str()))
    }

    fn peers(&self) -> Vec<String> {
        self.lock().peers.keys().map(|id| id.0.clone()).collect()
    }

    fn set_fetching(&self, digest: &Digest, fetching: bool) {
        let changed = {
            let mut directory = self.lock();
            if fetching {
                directory.fetching.insert(digest.clone())
            } else {
                directory.fetching.remove(digest)
            }
        };
        if changed {
            let _ = self.changed.send(Input::BlobsChanged);
        }
    }

    fn stored(&self) {
        let _ = self.changed.send(Input::BlobsChanged);
    }

    fn fetch_blob(
        &self,
        peer: &str,
        digest: &Digest,
        offset: u64,
    ) -> PeerFuture<'_, Option<(u64, BlobStream)>> {
        let req = BlobRequest::Blob { digest: digest.to_string(), offset };
        let peer = peer.to_owned();
        Box::pin(async move {
            match self.ask(&peer, req, offset).await? {
                (BlobAnswer::Blob { size }, recv) => Ok(Some((size, Box::pin(recv) as BlobStream))),
                (BlobAnswer::NotFound, _) => Ok(None),
                (BlobAnswer::Busy, _) => Err("it is busy serving others".to_owned()),
                (BlobAnswer::Manifest { .. }, _) => {
                    Err("it answered a blob request with a manifest".to_owned())
                }
            }
        })
    }

    fn fetch_manifest(&self, peer: &str, reference: &str) -> PeerFuture<'_, Option<Vec<u8>>> {
        let req = BlobRequest::Manifest { reference: reference.to_owned() };
        let peer = peer.to_owned();
        Box::pin(async move {
            match self.ask(&peer, req, 0).await? {
                (BlobAnswer::Manifest { bytes }, _) => Ok(Some(bytes)),
                (BlobAnswer::NotFound, _) => Ok(None),
                (BlobAnswer::Busy, _) => Err("it is busy serving others".to_owned()),
                (BlobAnswer::Blob { .. }, _) => Err("it answered a manifest request with a blob".to_owned()),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use protocol::tls::ClusterCa;
    use tokio::sync::mpsc;

    use super::*;

    use crate::cluster::test_node as node;

    /// A store with `content` in it under `digest` (its own digest unless forged).
    fn store_with(name: &str, digest: &Digest, content: &[u8]) -> (Arc<ImageStore>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("peer-blobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ImageStore::open(&dir).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(digest.hex()), content).unwrap();
        (Arc::new(store), dir)
    }

    async fn read_all(mut stream: BlobStream) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_holder_serves_a_verified_blob_from_an_offset_and_refuses_a_corrupt_one() {
        let ca = ClusterCa::generate("test").unwrap();
        let (a, _a_in, _) = node(&ca, "a");
        let (_b, mut b_in, b_addr) = node(&ca, "b");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let good = Digest::of(&content);
        let (store, dir) = store_with("serve", &good, &content);
        // A file under a digest its content does not hash to: bit rot, or tampering.
        let forged = Digest::of(b"what the name promises");
        std::fs::write(dir.join("blobs/sha256").join(forged.hex()), b"something else").unwrap();
        let server = tokio::spawn(async move {
            while let Some(s) = b_in.recv().await {
                assert_eq!(s.kind, STREAM_BLOB);
                tokio::spawn(serve(store.clone(), s.node_id, s.send, s.recv, false));
            }
        });
        let (tx, _rx) = mpsc::unbounded_channel();
        let blobs = ClusterBlobs::new(NodeId("a".into()), a, tx);
        let advert = Advert::new([good.as_str(), forged.as_str()], []);
        blobs.update([(NodeId("b".into()), b_addr, advert)]);
        assert_eq!(blobs.holders(&good), vec!["b".to_owned()]);

        let (size, stream) = blobs.fetch_blob("b", &good, 0).await.unwrap().unwrap();
        assert_eq!(size, content.len() as u64);
        assert_eq!(read_all(stream).await.unwrap(), content);
        let (_, stream) = blobs.fetch_blob("b", &good, 123_456).await.unwrap().unwrap();
        assert_eq!(read_all(stream).await.unwrap(), content[123_456..]);

        // The corrupt blob: the stream is reset, never finished, and the holder drops it. A
        // blob this small may be reset before the asker read even the answer.
        match blobs.fetch_blob("b", &forged, 0).await {
            Ok(Some((_, stream))) => {
                assert!(read_all(stream).await.is_err(), "a corrupt blob was sent as whole")
            }
            Ok(None) => panic!("the holder denied holding the blob before it checked it"),
            Err(e) => assert!(e.contains("reset"), "{e}"),
        }
        let gone = dir.join("blobs/sha256").join(forged.hex());
        for _ in 0..50 {
            if !gone.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!gone.exists(), "the corrupt blob stayed in the holder's store");
        // Now it says so.
        assert!(blobs.fetch_blob("b", &forged, 0).await.unwrap().is_none());
        // A peer that is not live cannot be asked.
        assert!(blobs.fetch_blob("c", &good, 0).await.is_err());
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn garbage_requests_get_no_blob() {
        let ca = ClusterCa::generate("test").unwrap();
        let (a, _a_in, _) = node(&ca, "a");
        let (_b, mut b_in, b_addr) = node(&ca, "b");
        let (store, dir) = store_with("garbage", &Digest::of(b"x"), b"x");
        let server = tokio::spawn(async move {
            while let Some(s) = b_in.recv().await {
                tokio::spawn(serve(store.clone(), s.node_id, s.send, s.recv, false));
            }
        });
        // A path in place of a digest: refused before the store is touched.
        let (mut send, mut recv) = a.open_bi(b_addr, Some("b"), STREAM_BLOB).await.unwrap();
        let req = BlobRequest::Blob { digest: "sha256:../../../etc/passwd".into(), offset: 0 };
        write_message(&mut send, &req).await.unwrap();
        send.finish().unwrap();
        let answer = read_message::<BlobAnswer>(&mut recv, MAX_ANSWER_BYTES).await;
        assert!(!matches!(answer, Ok(Some(BlobAnswer::Blob { .. }))), "{answer:?}");
        // An oversized request frame: dropped unread.
        let (mut send, mut recv) = a.open_bi(b_addr, Some("b"), STREAM_BLOB).await.unwrap();
        protocol::transport::write_frame(&mut send, &vec![0u8; 4096], 8192).await.unwrap();
        send.finish().unwrap();
        let answer = read_message::<BlobAnswer>(&mut recv, MAX_ANSWER_BYTES).await;
        assert!(!matches!(answer, Ok(Some(_))), "{answer:?}");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
