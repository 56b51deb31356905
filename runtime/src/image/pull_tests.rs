//! Pulls from peers, with the cluster played by a fake [`PeerBlobs`] that serves blobs out
//! of an OCI layout: the real pull, verification, resume and fallback paths, no network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::blob::Digest;
use super::layout::host_platform;
use super::peers::{BlobStream, Distribution, PeerBlobs, PeerFuture};
use super::tests::{app_layer, base_layer, put_blob, put_image, TempDir};
use super::{ImageStore, PullOptions, PullProgress};

/// Peers that serve blobs from memory; `liar` sends wrong bytes for every blob.
struct FakePeers {
    blobs: BTreeMap<Digest, Vec<u8>>,
    manifests: BTreeMap<String, Vec<u8>>,
    /// (peer, digest, offset) of every blob fetch.
    asked: Mutex<Vec<(String, Digest, u64)>>,
}

impl PeerBlobs for FakePeers {
    fn holders(&self, digest: &Digest) -> Vec<String> {
        if self.blobs.contains_key(digest) {
            vec!["liar".to_owned(), "good".to_owned()]
        } else {
            Vec::new()
        }
    }
    fn fetched_elsewhere(&self, _: &Digest) -> bool {
        false
    }
    fn rank(&self, _: &Digest) -> usize {
        0
    }
    fn peers(&self) -> Vec<String> {
        vec!["liar".to_owned(), "good".to_owned()]
    }
    fn set_fetching(&self, _: &Digest, _: bool) {}
    fn stored(&self) {}
    fn fetch_blob(
        &self,
        peer: &str,
        digest: &Digest,
        offset: u64,
    ) -> PeerFuture<'_, Option<(u64, BlobStream)>> {
        self.asked.lock().expect("lock").push((peer.to_owned(), digest.clone(), offset));
        let found = self.blobs.get(digest).map(|data| {
            let mut data = data.clone();
            if peer == "liar" {
                data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
            }
            let size = data.len() as u64;
            let rest = data.split_off(offset as usize);
            (size, Box::pin(std::io::Cursor::new(rest)) as BlobStream)
        });
        Box::pin(async move { Ok(found) })
    }
    fn fetch_manifest(&self, peer: &str, reference: &str) -> PeerFuture<'_, Option<Vec<u8>>> {
        let found = if peer == "good" { self.manifests.get(reference).cloned() } else { None };
        Box::pin(async move { Ok(found) })
    }
}

fn blob_of(layout: &std::path::Path, descriptor: &Value) -> (Digest, Vec<u8>) {
    let digest = Digest::parse(descriptor["digest"].as_str().expect("digest")).expect("valid digest");
    let data = std::fs::read(layout.join("blobs/sha256").join(digest.hex())).expect("blob");
    (digest, data)
}

#[tokio::test]
async fn peers_only_pull_verifies_resumes_and_skips_a_lying_holder() {
    let tmp = TempDir::new("peer-pull");
    let layout = tmp.join("layout");
    let (manifest, id) = put_image(&layout, &[base_layer(), app_layer(b"v1")], true, "/app/main");
    let (manifest_digest, manifest_bytes) = blob_of(&layout, &manifest);
    let parsed: Value = serde_json::from_slice(&manifest_bytes).expect("manifest");
    let mut blobs = BTreeMap::from([blob_of(&layout, &parsed["config"])]);
    for layer in parsed["layers"].as_array().expect("layers") {
        let (digest, data) = blob_of(&layout, layer);
        blobs.insert(digest, data);
    }
    let reference = "registry.example:5000/app:v1";
    let peers = Arc::new(FakePeers {
        blobs: blobs.clone(),
        manifests: BTreeMap::from([(reference.to_owned(), manifest_bytes)]),
        asked: Mutex::default(),
    });

    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    // An earlier, interrupted download of the first layer: the pull resumes it.
    let (first, first_data) = blob_of(&layout, &parsed["layers"][0]);
    std::fs::write(tmp.join("store/tmp").join(format!("partial-{}", first.hex())), &first_data[..10])
        .expect("partial");
    let progress = Arc::new(PullProgress::default());
    let options = PullOptions {
        distribution: Distribution::PeersOnly,
        peers: Some(peers.clone()),
        progress: Some(progress.clone()),
        ..PullOptions::default()
    };
    let pulled = store.pull(reference, &options).await.expect("pull from peers");
    assert_eq!(pulled.id, id);
    let image = store.resolve(reference).expect("resolve");
    assert_eq!(std::fs::read(image.layers[1].join("app/main")).expect("app"), b"v1");
    assert_eq!(store.manifest_digest(reference).expect("index"), Some(manifest_digest));

    let asked = peers.asked.lock().expect("lock").clone();
    for digest in blobs.keys() {
        // The liar was asked first and refused; the good holder's copy was kept.
        let tries: Vec<&str> =
            asked.iter().filter(|(_, d, _)| d == digest).map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(tries, ["liar", "good"], "{digest}");
    }
    // The first layer resumed at byte 10, from both holders (the liar's bytes were dropped
    // with the whole file once they failed verification, so the good one starts over).
    let offsets: Vec<u64> = asked.iter().filter(|(_, d, _)| *d == first).map(|(_, _, o)| *o).collect();
    assert_eq!(offsets, [10, 0]);
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.from_registry, 0);
    assert_eq!(snapshot.total, blobs.values().map(|b| b.len() as u64).sum::<u64>());
    assert!(snapshot.from_peers >= snapshot.total - 10, "{snapshot:?}");
    assert!(!tmp.join("store/tmp").join(format!("partial-{}", first.hex())).exists());

    // A tag no peer records: peers-only fails at once, naming why.
    let err = store.pull("registry.example:5000/app:v9", &options).await.expect_err("no holder");
    assert!(err.to_string().contains("no live peer holds this image"), "{err}");
}

#[tokio::test]
async fn a_pull_by_index_digest_finds_the_image_by_that_digest_afterwards() {
    let tmp = TempDir::new("peer-pull-index");
    let layout = tmp.join("layout");
    let (mut host, host_id) = put_image(&layout, &[app_layer(b"host")], true, "host");
    let (_, arch) =
        host_platform().split_once('/').map(|(o, a)| (o.to_owned(), a.to_owned())).expect("os/arch");
    host["platform"] = serde_json::json!({ "os": "linux", "architecture": arch });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [host],
    });
    let index = put_blob(
        &layout,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).expect("encode"),
    );
    let mut blobs = BTreeMap::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
        let entry = entry.expect("entry");
        let digest =
            Digest::parse(&format!("sha256:{}", entry.file_name().to_string_lossy())).expect("digest");
        blobs.insert(digest, std::fs::read(entry.path()).expect("blob"));
    }
    let peers = Arc::new(FakePeers { blobs, manifests: BTreeMap::new(), asked: Mutex::default() });
    let store = ImageStore::open(&tmp.join("store")).expect("open store");
    let options = PullOptions {
        distribution: Distribution::PeersOnly,
        peers: Some(peers.clone()),
        ..PullOptions::default()
    };
    let reference = format!("registry.example/app@{}", index["digest"].as_str().expect("digest"));
    assert_eq!(store.pull(&reference, &options).await.expect("pull").id, host_id);
    // IfNotPresent finds it: no second pull.
    assert_eq!(store.resolve(&reference).expect("resolve by index digest").id, host_id);
}
