//! Pulls images from an OCI distribution registry into the store, verifying every blob.
//!
//! `oci-client` only carries the bytes: the manifest, config and layers are hashed here while
//! they are written to staging files, and enter `blobs/` only once their sha256 matches the
//! digest they were asked for. The verified image is then recorded exactly as an import
//! records one, so the create path does not know where an image came from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::blob::{read_limited, Digest, JSON_LIMIT};
use super::layout::{host_platform, image_from_config, is_host, ManifestOrIndex};
use super::peers::{Distribution, PeerBlobs};
use super::reference::Reference;
use super::store::{ImageStore, ImageSummary};
use super::ImageError;

/// Media types we accept for a manifest or an index, OCI and Docker schema 2.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach registries, and where else blobs may come from.
#[derive(Clone, Default)]
pub struct PullOptions {
    /// A credentials file in Docker's `config.json` shape; `None` pulls anonymously.
    pub credentials: Option<PathBuf>,
    /// Documents in the same shape (a Kubernetes `kubernetes.io/dockerconfigjson` Secret's
    /// `.dockerconfigjson`), tried in order before `credentials`, as the kubelet tries a
    /// pod's `imagePullSecrets` before the node's own credentials. `what` names each in
    /// error messages (e.g. `secret default/regcred`).
    pub pull_secrets: Vec<PullSecret>,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
    /// Counters the pull keeps up to date while it runs, for `peer describe` and events.
    pub progress: Option<Arc<PullProgress>>,
    /// Where blobs come from: the registry, peers, or peers first.
    pub distribution: Distribution,
    /// The cluster's blobs; `None` on a node in no cluster (or for the CLI's own pulls).
    pub peers: Option<Arc<dyn PeerBlobs>>,
}

/// Registry credentials in Docker's `config.json` shape, and what they came from.
#[derive(Clone, Debug)]
pub struct PullSecret {
    pub what: String,
    pub config_json: Vec<u8>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are named, never printed.
        let secrets: Vec<&str> = self.pull_secrets.iter().map(|s| s.what.as_str()).collect();
        f.debug_struct("PullOptions")
            .field("credentials", &self.credentials)
            .field("pull_secrets", &secrets)
            .field("insecure_registries", &self.insecure_registries)
            .field("distribution", &self.distribution)
            .field("peers", &self.peers.is_some())
            .finish_non_exhaustive()
    }
}

/// How far a pull has got; every counter only grows. Shared between the pull and whoever
/// reports on it.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Bytes of the config and layers the image needs (known once its manifest is read).
    total: AtomicU64,
    /// Bytes of those already in the store or fetched so far.
    done: AtomicU64,
    /// Bytes downloaded from the registry (manifests included).
    from_registry: AtomicU64,
    /// Bytes fetched from other nodes of the cluster.
    from_peers: AtomicU64,
}

/// A reading of [`PullProgress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    pub total: u64,
    pub done: u64,
    pub from_registry: u64,
    pub from_peers: u64,
}

impl PullProgress {
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            from_registry: self.from_registry.load(Ordering::Relaxed),
            from_peers: self.from_peers.load(Ordering::Relaxed),
        }
    }

    fn add(counter: &AtomicU64, bytes: u64) {
        counter.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl std::fmt::Display for ProgressSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        write!(f, "{:.1} MB of {:.1} MB", mb(self.done), mb(self.total))?;
        if self.from_peers > 0 {
            write!(f, " ({:.1} MB from peers)", mb(self.from_peers))?;
        }
        Ok(())
    }
}

/// How long a pull waits for a peer that is fetching a blob to finish before fetching
/// it itself.
const WAIT_FOR_FETCHER: Duration = Duration::from_secs(600);
/// How long, per place in a blob's order of nodes ([`PeerBlobs::rank`]), a pull waits
/// for another node to start fetching a blob no one holds before it goes to the registry.
const STAGGER: Duration = Duration::from_millis(1000);
/// Places past this one wait no longer.
const MAX_RANK_WAIT: u32 = 3;
/// How long a peers-only pull waits for a holder of a blob to appear (gossip may lag).
const PEERS_ONLY_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting pull looks at the peers' advertisements again.
const POLL: Duration = Duration::from_millis(200);
/// Blobs one pull downloads at once.
const CONCURRENT_BLOBS: usize = 3;
/// A peer that sends nothing for this long is given up on (the partial file stays).
const PEER_IDLE: Duration = Duration::from_secs(30);
/// Partial downloads older than this go with the store's garbage collection.
const PARTIAL_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Name prefix of partial downloads in the store's `tmp/`.
const PARTIAL_PREFIX: &str = "partial-";

impl ImageStore {
    /// Pulls `reference` (`host/repo:tag` or `host/repo@sha256:…`): picks the linux
    /// manifest for this machine's architecture out of an index, fetches the config and the
    /// layers the store does not hold yet — from peers that hold them, or from the registry,
    /// as `options.distribution` says, several at once, resuming partial downloads — and
    /// verifies each blob's digest before it enters the store. The image is tagged with the
    /// reference (a digest-only reference leaves it findable by that digest).
    ///
    /// Holds the store's lock for the whole pull, so a concurrent import's garbage
    /// collection cannot remove blobs this pull has staged. Serving blobs to peers needs
    /// no lock: a committed blob file never changes.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<ImageSummary, ImageError> {
        let parsed = Reference::parse(reference)?;
        let auth = registry_auth(&options.pull_secrets, options.credentials.as_deref(), parsed.domain())?;
        // `flock` blocks; waiting for another pull must not hold a runtime worker thread.
        let store = self.clone();
        let locked = tokio::task::spawn_blocking(move || store.lock()).await;
        let _lock = locked.map_err(|e| ImageError::io("locking", &self.dir)(std::io::Error::other(e)))??;
        let pull = Pull {
            store: self,
            reference: &parsed,
            remote: Remote::new(&parsed, auth, options),
            peers: options.peers.as_deref(),
            mode: options.distribution,
            progress: options.progress.clone().unwrap_or_default(),
        };
        let result = pull.run().await;
        if let Err(err) = self.collect_garbage() {
            tracing::warn!(%err, "image store garbage collection failed");
        }
        result
    }
}

/// The partial downloads in `tmp` young enough to be resumed.
pub(super) fn resumable_partials(tmp: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(tmp) else { return BTreeSet::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PARTIAL_PREFIX))
        .filter(|e| {
            // An empty one (reset after a failed verification) has nothing to resume.
            let Ok(meta) = e.metadata() else { return false };
            let age = meta.modified().ok().and_then(|t| t.elapsed().ok());
            meta.len() > 0 && age.is_some_and(|age| age < PARTIAL_MAX_AGE)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// One pull: the image, where its blobs may come from, and how far it got.
struct Pull<'a> {
    store: &'a ImageStore,
    reference: &'a Reference,
    remote: Remote<'a>,
    peers: Option<&'a dyn PeerBlobs>,
    mode: Distribution,
    progress: Arc<PullProgress>,
}

impl Pull<'_> {
    async fn run(&self) -> Result<ImageSummary, ImageError> {
        let (manifest_digest, manifest) = self.manifest().await?;
        let not_manifest = |reason: &str| ImageError::Format {
            path: self.store.blobs.path(&manifest_digest),
            reason: format!("manifest {manifest_digest}: {reason}"),
        };
        let config = manifest.config.ok_or_else(|| not_manifest("no config"))?;
        let layers = manifest.layers.ok_or_else(|| not_manifest("no layers"))?;
        // An image may list one blob twice (empty layers); each is fetched once.
        let mut wanted: BTreeMap<Digest, Option<u64>> = BTreeMap::new();
        for d in layers.iter().chain([&config]) {
            wanted.insert(d.digest.clone(), d.size);
        }
        PullProgress::add(&self.progress.total, wanted.values().flatten().sum());
        // Futures built in a loop, not a closure: a closure over borrowed items makes the
        // pull's future fail to be `Send` (rust-lang/rust#102211).
        let mut fetches = Vec::with_capacity(wanted.len());
        for (digest, size) in &wanted {
            fetches.push(self.blob_named(digest.clone(), *size));
        }
        let sizes: BTreeMap<Digest, u64> =
            futures_util::stream::iter(fetches).buffer_unordered(CONCURRENT_BLOBS).try_collect().await?;
        let sized = layers.into_iter().map(|l| (l.digest.clone(), sizes[&l.digest])).collect();
        // A tag names the image; a digest-only reference finds it through the manifest
        // digest, unless it named an index, whose digest the store would not know.
        let names = match self.reference.digest() {
            Some(digest) if *digest == manifest_digest => Vec::new(),
            _ => vec![self.reference.to_string()],
        };
        let store = self.store;
        let image = image_from_config(&store.blobs, names, Some(manifest_digest), config.digest, sized)?;
        for layer in &image.layers {
            store.unpack(&layer.digest, &layer.diff_id)?;
        }
        let mut summaries = store.record(vec![image])?;
        let mut summary = summaries.pop().ok_or_else(|| self.remote.error("no image recorded"))?;
        summary.reference.get_or_insert_with(|| self.reference.to_string());
        Ok(summary)
    }

    /// The image's manifest (for this platform), from the registry or from peers as the
    /// distribution mode says. A digest is content: peers go first for it in peers-first
    /// mode. A tag is the registry's to define: peers answer for it only when the
    /// registry cannot be reached (or must not be asked).
    async fn manifest(&self) -> Result<(Digest, ManifestOrIndex), ImageError> {
        let peers = match (self.mode, self.peers) {
            (Distribution::RegistryOnly, _) => return self.remote.manifest(self.store).await,
            (Distribution::PeersOnly, None) => {
                return Err(self.remote.error("peers-only distribution, but this node is in no cluster"))
            }
            (Distribution::PeersFirst, None) => return self.remote.manifest(self.store).await,
            (_, Some(peers)) => peers,
        };
        if self.mode == Distribution::PeersOnly {
            return self
                .peer_manifest(peers)
                .await?
                .ok_or_else(|| self.remote.error("no live peer holds this image (peers-only distribution)"));
        }
        if self.reference.digest().is_some() {
            if let Some(found) = self.peer_manifest(peers).await? {
                return Ok(found);
            }
            return self.remote.manifest(self.store).await;
        }
        match self.remote.manifest(self.store).await {
            Ok(found) => Ok(found),
            // Refused credentials are the user's to fix, not to route around.
            Err(err @ ImageError::Unauthorized { .. }) => Err(err),
            Err(err) => match self.peer_manifest(peers).await {
                Ok(Some(found)) => {
                    tracing::warn!(reference = %self.reference, %err, "registry unreachable; using the manifest a peer holds for the tag");
                    Ok(found)
                }
                _ => Err(err),
            },
        }
    }

    /// The manifest from peers: by digest from a holder (through an index to this
    /// platform's manifest), by tag from the first peer that records the tag.
    async fn peer_manifest(
        &self,
        peers: &dyn PeerBlobs,
    ) -> Result<Option<(Digest, ManifestOrIndex)>, ImageError> {
        if let Some(digest) = self.reference.digest() {
            let Some(document) = self.peer_document(peers, digest).await? else { return Ok(None) };
            let Some(manifests) = &document.manifests else { return Ok(Some((digest.clone(), document))) };
            let Some(chosen) = manifests.iter().find(|m| m.platform.as_ref().is_some_and(is_host)) else {
                return Err(ImageError::NoPlatform { digest: digest.to_string(), platform: host_platform() });
            };
            let chosen = chosen.digest.clone();
            return Ok(self.peer_document(peers, &chosen).await?.map(|m| (chosen, m)));
        }
        let reference = self.reference.to_string();
        for peer in peers.peers() {
            match peers.fetch_manifest(&peer, &reference).await {
                Ok(Some(bytes)) => {
                    let found = self.store_document(&bytes, None).await?;
                    if found.1.manifests.is_some() || found.1.config.is_none() {
                        tracing::warn!(%peer, %reference, "a peer answered with something other than an image manifest");
                        continue;
                    }
                    return Ok(Some(found));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(%peer, %reference, "asking a peer for a manifest: {e}"),
            }
        }
        Ok(None)
    }

    /// A manifest or index by digest from a peer that holds it, verified.
    async fn peer_document(
        &self,
        peers: &dyn PeerBlobs,
        digest: &Digest,
    ) -> Result<Option<ManifestOrIndex>, ImageError> {
        if !self.store.blobs.contains(digest) {
            let mut partial = Partial::open(self.store, digest).await?;
            if self.fetch_from_peers(peers, &mut partial, digest, None).await?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(self.store.blobs.read_json(digest, "manifest")?))
    }

    /// Stores a manifest or index (verified against `expected` when given) and parses it.
    async fn store_document(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<(Digest, ManifestOrIndex), ImageError> {
        store_document(self.store, bytes, expected).await
    }

    async fn blob_named(&self, digest: Digest, size: Option<u64>) -> Result<(Digest, u64), ImageError> {
        let len = self.blob(&digest, size).await?;
        Ok((digest, len))
    }

    /// Fetches the blob `digest` unless the store holds it; returns its length.
    async fn blob(&self, digest: &Digest, size: Option<u64>) -> Result<u64, ImageError> {
        let path = self.store.blobs.path(digest);
        if self.store.blobs.contains(digest) {
            let len = std::fs::metadata(&path).map_err(ImageError::io("reading", &path))?.len();
            PullProgress::add(&self.progress.done, len);
            return check_size(digest, size, len);
        }
        let mut partial = Partial::open(self.store, digest).await?;
        if size.is_some_and(|size| partial.len >= size) {
            // A whole download that failed its check (a source that verifies as it sends
            // stops only after the last byte): verify it again, else start over.
            if let Ok(len) = partial.finish(self.store, digest, size).await {
                PullProgress::add(&self.progress.done, len);
                return Ok(len);
            }
        }
        PullProgress::add(&self.progress.done, partial.len);
        let peers = self.peers.filter(|_| self.mode != Distribution::RegistryOnly);
        if let Some(peers) = peers {
            if let Some(len) = self.fetch_from_peers(peers, &mut partial, digest, size).await? {
                peers.stored();
                return Ok(len);
            }
        }
        if self.mode == Distribution::PeersOnly {
            return Err(self.remote.error(&format!(
                "no live peer holds blob {digest} (peers-only distribution never asks the registry)"
            )));
        }
        if let Some(peers) = peers {
            peers.set_fetching(digest, true);
        }
        let fetched = self.remote.blob(self.store, &mut partial, digest, size, &self.progress).await;
        if let Some(peers) = peers {
            peers.set_fetching(digest, false);
            if fetched.is_ok() {
                peers.stored();
            }
        }
        fetched
    }

    /// Fetches `digest` from peers that hold it, waiting while a peer fetches it or, when
    /// no one does, for this node's turn ([`PeerBlobs::rank`]). `None`: go to the registry.
    async fn fetch_from_peers(
        &self,
        peers: &dyn PeerBlobs,
        partial: &mut Partial,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<Option<u64>, ImageError> {
        let started = tokio::time::Instant::now();
        let turn = STAGGER * (peers.rank(digest) as u32).min(MAX_RANK_WAIT);
        let mut failed = BTreeSet::new();
        loop {
            for holder in peers.holders(digest) {
                if failed.contains(&holder) {
                    continue;
                }
                match self.fetch_from_peer(peers, &holder, partial, digest, size).await {
                    Ok(len) => {
                        tracing::info!(peer = %holder, %digest, bytes = len, "fetched a blob from a peer");
                        return Ok(Some(len));
                    }
                    Err(e) => {
                        tracing::warn!(peer = %holder, %digest, "fetching a blob from a peer: {e}");
                        failed.insert(holder);
                    }
                }
            }
            let waited = started.elapsed();
            let someone_fetches = peers.fetched_elsewhere(digest) && waited < WAIT_FOR_FETCHER;
            let wait = match self.mode {
                Distribution::PeersOnly => someone_fetches || waited < PEERS_ONLY_WAIT,
                _ => someone_fetches || waited < turn,
            };
            if !wait {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fetches the rest of `digest` from `peer` into `partial` and verifies it.
    async fn fetch_from_peer(
        &self,
        peers: &dyn PeerBlobs,
        peer: &str,
        partial: &mut Partial,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64, String> {
        let (total, mut stream) =
            peers.fetch_blob(peer, digest, partial.len).await?.ok_or("it does not hold the blob")?;
        if let Some(size) = size.filter(|size| *size != total) {
            return Err(format!("it says the blob has {total} bytes, the manifest says {size}"));
        }
        if total < partial.len {
            partial.reset().await.map_err(|e| e.to_string())?;
            return Err("the blob is shorter than the part already fetched".to_owned());
        }
        let mut remaining = total - partial.len;
        let mut buf = vec![0u8; 64 * 1024];
        while remaining > 0 {
            let want = buf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let read = tokio::time::timeout(PEER_IDLE, stream.read(&mut buf[..want])).await;
            let n = read.map_err(|_| "it stalled".to_owned())?.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("the stream ended {remaining} bytes early"));
            }
            partial.write(&buf[..n]).await.map_err(|e| e.to_string())?;
            remaining -= n as u64;
            PullProgress::add(&self.progress.done, n as u64);
            PullProgress::add(&self.progress.from_peers, n as u64);
        }
        partial.finish(self.store, digest, size).await.map_err(|e| e.to_string())
    }
}

/// A download in progress: `tmp/partial-<hex>`, kept when an attempt fails so the next one
/// resumes where it stopped (from the registry with a range request, or from a peer). The
/// content is hashed as it is written; a resumed file is hashed first.
struct Partial {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    len: u64,
}

impl Partial {
    async fn open(store: &ImageStore, digest: &Digest) -> Result<Partial, ImageError> {
        let path = store.dir.join("tmp").join(format!("{PARTIAL_PREFIX}{}", digest.hex()));
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .await
            .map_err(ImageError::io("opening", &path))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await.map_err(ImageError::io("reading", &path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        if len > 0 {
            tracing::info!(%digest, bytes = len, "resuming a partial download");
        }
        Ok(Partial { path, file, hasher, len })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        self.file.write_all(chunk).await.map_err(ImageError::io("writing", &self.path))?;
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Starts over (the source sent the whole blob, or the part held was wrong).
    async fn reset(&mut self) -> Result<(), ImageError> {
        self.file.set_len(0).await.map_err(ImageError::io("truncating", &self.path))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Verifies the complete download and moves it into the store. A mismatch discards
    /// it, so the next attempt starts from nothing.
    async fn finish(
        &mut self,
        store: &ImageStore,
        digest: &Digest,
        size: Option<u64>,
    ) -> Result<u64, ImageError> {
        self.file.sync_all().await.map_err(ImageError::io("syncing", &self.path))?;
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        let len = self.len;
        if actual != *digest {
            self.reset().await?;
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Err(e) = check_size(digest, size, len) {
            self.reset().await?;
            return Err(e);
        }
        store.blobs.commit_staged(&self.path, digest)?;
        Ok(len)
    }
}

/// Stores a manifest or index (verified against `expected` when given) as a blob and parses
/// it. Without `expected`, the bytes define the digest.
async fn store_document(
    store: &ImageStore,
    bytes: &[u8],
    expected: Option<&Digest>,
) -> Result<(Digest, ManifestOrIndex), ImageError> {
    if bytes.len() as u64 > JSON_LIMIT {
        return Err(ImageError::TooLarge {
            path: store.blobs.dir().to_path_buf(),
            what: "manifest".to_owned(),
            limit: JSON_LIMIT,
        });
    }
    let actual = Digest::of(bytes);
    if let Some(expected) = expected {
        if *expected != actual {
            return Err(ImageError::DigestMismatch {
                digest: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    if !store.blobs.contains(&actual) {
        let staged = store.blobs.staging_path();
        tokio::fs::write(&staged, bytes).await.map_err(ImageError::io("writing", &staged))?;
        store.blobs.commit_staged(&staged, &actual)?;
    }
    let document = store.blobs.read_json(&actual, "manifest")?;
    Ok((actual, document))
}

/// One repository on one registry, with the client and credentials to reach it.
struct Remote<'a> {
    reference: &'a Reference,
    client: oci_client::Client,
    auth: RegistryAuth,
}

impl<'a> Remote<'a> {
    fn new(reference: &'a Reference, auth: RegistryAuth, options: &PullOptions) -> Remote<'a> {
        install_crypto_provider();
        let domain = reference.domain().to_owned();
        let mut insecure = options.insecure_registries.clone();
        if is_loopback(&domain) {
            insecure.push(domain);
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure),
            // The index is resolved here, where the platform choice is ours to test.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        };
        Remote { reference, client: oci_client::Client::new(config), auth }
    }

    /// The `oci-client` reference for `digest` (or the tag or digest of the reference).
    fn oci_reference(&self, digest: Option<&Digest>) -> oci_client::Reference {
        let (registry, repository) = (self.reference.domain().to_owned(), self.reference.path().to_owned());
        match (digest.or(self.reference.digest()), self.reference.tag()) {
            (Some(digest), _) => oci_client::Reference::with_digest(registry, repository, digest.to_string()),
            (None, Some(tag)) => oci_client::Reference::with_tag(registry, repository, tag.to_owned()),
            (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".to_owned()),
        }
    }

    /// Fetches the manifest the reference names, descending through an index to the
    /// manifest for the host platform. Each document is verified and stored as a blob.
    async fn manifest(&self, store: &ImageStore) -> Result<(Digest, ManifestOrIndex), ImageError> {
        let (digest, document) = self.document(store, self.reference.digest()).await?;
        let Some(manifests) = &document.manifests else {
            return Ok((digest, document));
        };
        let chosen =
            manifests.iter().find(|m| m.platform.as_ref().is_some_and(is_host)).ok_or_else(|| {
                ImageError::NoPlatform { digest: digest.to_string(), platform: host_platform() }
            })?;
        let (digest, manifest) = self.document(store, Some(&chosen.digest)).await?;
        if manifest.manifests.is_some() {
            return Err(self.error(&format!("manifest {digest}: nested image index is not supported")));
        }
        Ok((digest, manifest))
    }

    /// Fetches one manifest or index, by digest or else by the reference's tag. By digest,
    /// the bytes must hash to it; by tag, the bytes define the digest.
    async fn document(
        &self,
        store: &ImageStore,
        digest: Option<&Digest>,
    ) -> Result<(Digest, ManifestOrIndex), ImageError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&self.oci_reference(digest), &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|err| self.remote_error(err))?;
        if bytes.len() as u64 > JSON_LIMIT {
            return Err(self.error(&format!("manifest is larger than the limit of {JSON_LIMIT} bytes")));
        }
        store_document(store, &bytes, digest).await
    }

    /// Downloads the rest of `digest` into `partial` (a range request when part of it is
    /// there already) and verifies it into the store. Returns its length.
    async fn blob(
        &self,
        store: &ImageStore,
        partial: &mut Partial,
        digest: &Digest,
        size: Option<u64>,
        progress: &PullProgress,
    ) -> Result<u64, ImageError> {
        let reference = self.oci_reference(None);
        let mut stream = if partial.len > 0 {
            let response = self
                .client
                .pull_blob_stream_partial(&reference, digest.as_str(), partial.len, None)
                .await
                .map_err(|err| self.remote_error(err))?;
            match response {
                BlobResponse::Partial(sized) => sized.stream,
                BlobResponse::Full(sized) => {
                    // The registry ignored the range: start over.
                    partial.reset().await?;
                    sized.stream
                }
            }
        } else {
            self.client
                .pull_blob_stream(&reference, digest.as_str())
                .await
                .map_err(|err| self.remote_error(err))?
                .stream
        };
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // The client checks the digest itself and fails after the last byte: ours
                // names the mismatch and drops what cannot be resumed.
                Err(_) if size.is_some_and(|size| partial.len >= size) => {
                    return partial.finish(store, digest, size).await
                }
                // The part fetched so far stays for the next attempt to resume.
                Err(err) => return Err(self.error(&format!("downloading blob {digest}: {err}"))),
            };
            if size.is_some_and(|size| partial.len + chunk.len() as u64 > size) {
                let actual = partial.len + chunk.len() as u64;
                partial.reset().await?;
                return Err(ImageError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size.unwrap_or_default(),
                    actual,
                });
            }
            partial.write(&chunk).await?;
            PullProgress::add(&progress.done, chunk.len() as u64);
            PullProgress::add(&progress.from_registry, chunk.len() as u64);
        }
        partial.finish(store, digest, size).await
    }

    pub(super) fn error(&self, reason: &str) -> ImageError {
        ImageError::Registry {
            registry: self.reference.domain().to_owned(),
            reference: self.reference.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Names a refused login as such; everything else keeps the client's message.
    fn remote_error(&self, err: OciDistributionError) -> ImageError {
        let unauthorized = |detail: String| ImageError::Unauthorized {
            registry: self.reference.domain().to_owned(),
            repository: self.reference.path().to_owned(),
            detail,
        };
        match err {
            OciDistributionError::UnauthorizedError { url } => unauthorized(format!("unauthorized at {url}")),
            OciDistributionError::AuthenticationFailure(detail) => unauthorized(detail),
            OciDistributionError::ServerError { code: 401, url, message } => {
                unauthorized(format!("{message} at {url}"))
            }
            other => {
                let text = other.to_string();
                if text.contains("401") || text.contains("UNAUTHORIZED") {
                    unauthorized(text)
                } else {
                    self.error(&text)
                }
            }
        }
    }
}

fn check_size(digest: &Digest, expected: Option<u64>, actual: u64) -> Result<u64, ImageError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(ImageError::SizeMismatch { digest: digest.to_string(), expected, actual })
        }
        _ => Ok(actual),
    }
}

/// rustls needs one process-wide crypto provider; ring is the one already in the tree.
fn install_crypto_provider() {
    // An error means a provider is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether `domain` (`host[:port]`) is a loopback registry, spoken to over plain HTTP.
pub(crate) fn is_loopback(domain: &str) -> bool {
    let host = match domain.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => domain.rsplit_once(':').map_or(domain, |(host, _)| host),
    };
    host == "localhost"
        || host == "::1"
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(default)]
    auths: BTreeMap<String, CredentialsEntry>,
}

/// One registry's entry: `auth` (base64 of `user:password`), or `username` and `password`
/// as Kubernetes Secrets often carry them, or a `registrytoken` sent as a bearer token.
#[derive(Deserialize)]
struct CredentialsEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials for `domain`: from the first pull secret with an entry for it, else from the
/// credentials file, else anonymous.
fn registry_auth(
    secrets: &[PullSecret],
    path: Option<&Path>,
    domain: &str,
) -> Result<RegistryAuth, ImageError> {
    for secret in secrets {
        let bad = |reason: String| ImageError::PullSecret { what: secret.what.clone(), reason };
        if let Some(auth) = auth_from(&secret.config_json, domain, &bad)? {
            return Ok(auth);
        }
    }
    let Some(path) = path else { return Ok(RegistryAuth::Anonymous) };
    let bad = |reason: String| ImageError::Credentials { path: path.to_path_buf(), reason };
    let data = read_limited(path, JSON_LIMIT, "credentials file")?;
    Ok(auth_from(&data, domain, &bad)?.unwrap_or(RegistryAuth::Anonymous))
}

/// The credentials a `config.json`-shaped document holds for `domain`, if any.
fn auth_from(
    data: &[u8],
    domain: &str,
    bad: &dyn Fn(String) -> ImageError,
) -> Result<Option<RegistryAuth>, ImageError> {
    if data.len() as u64 > JSON_LIMIT {
        return Err(bad(format!("larger than the limit of {JSON_LIMIT} bytes")));
    }
    let file: CredentialsFile = serde_json::from_slice(data).map_err(|err| bad(err.to_string()))?;
    let keys = [domain.to_owned(), format!("https://{domain}"), format!("http://{domain}")];
    let Some(entry) = keys.iter().find_map(|key| file.auths.get(key)) else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), pass.clone())));
    }
    let Some(encoded) = &entry.auth else { return Ok(None) };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| bad(format!("auths.{domain}.auth is not base64: {err}")))?;
    let text = String::from_utf8(decoded).map_err(|_| bad(format!("auths.{domain}.auth is not utf-8")))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| bad(format!("auths.{domain}.auth is not base64 of user:password")))?;
    Ok(Some(RegistryAuth::Basic(user.to_owned(), pass.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        for domain in ["localhost", "localhost:5000", "127.0.0.1:41234", "[::1]:5000"] {
            assert!(is_loopback(domain), "{domain}");
        }
        for domain in ["docker.io", "registry.example:5000", "10.0.0.1:5000", "localhost.example"] {
            assert!(!is_loopback(domain), "{domain}");
        }
    }

    #[test]
    fn credentials_pick_the_registry_entry() {
        let dir = std::env::temp_dir().join(format!("peer-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.json");
        // base64("alice:s3cret:x"): the password keeps everything after the first colon.
        std::fs::write(&path, r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0Ong="}}}"#)
            .expect("write");
        let auth = registry_auth(&[], Some(&path), "127.0.0.1:5000").expect("auth");
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret:x"));
        let other = registry_auth(&[], Some(&path), "registry.example").expect("auth");
        assert!(matches!(other, RegistryAuth::Anonymous));
        std::fs::write(&path, r#"{"auths": {"127.0.0.1:5000": {"auth": "%%%"}}}"#).expect("write");
        let err = registry_auth(&[], Some(&path), "127.0.0.1:5000").expect_err("bad base64");
        assert!(err.to_string().contains("is not base64"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pull_secrets_come_before_the_credentials_file() {
        let secret = |what: &str, json: &str| PullSecret {
            what: what.to_owned(),
            config_json: json.as_bytes().to_vec(),
        };
        let secrets = [
            secret("secret default/other", r#"{"auths": {"registry.example": {"auth": "eDp5"}}}"#),
            secret(
                "secret default/regcred",
                r#"{"auths": {"https://127.0.0.1:5000": {"username": "bob", "password": "pw"}}}"#,
            ),
            secret("secret default/token", r#"{"auths": {"tokens.example": {"registrytoken": "t0k"}}}"#),
        ];
        let auth = registry_auth(&secrets, None, "127.0.0.1:5000").expect("auth");
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "bob" && p == "pw"));
        let auth = registry_auth(&secrets, None, "tokens.example").expect("auth");
        assert!(matches!(auth, RegistryAuth::Bearer(t) if t == "t0k"));
        assert!(matches!(registry_auth(&secrets, None, "docker.io"), Ok(RegistryAuth::Anonymous)));
        let broken = [secret("secret default/broken", "{not json")];
        let err = registry_auth(&broken, None, "docker.io").expect_err("broken secret");
        assert!(err.to_string().starts_with("secret default/broken: "), "{err}");
    }
}
