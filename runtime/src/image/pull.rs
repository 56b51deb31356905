//! Pulls images from an OCI distribution registry into the store, verifying every blob.
//!
//! `oci-client` only carries the bytes: the manifest, config and layers are hashed here while
//! they are written to staging files, and enter `blobs/` only once their sha256 matches the
//! digest they were asked for. The verified image is then recorded exactly as an import
//! records one, so the create path does not know where an image came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::blob::{read_limited, Digest, JSON_LIMIT};
use super::layout::{host_platform, image_from_config, is_host, ManifestOrIndex};
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

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// A credentials file in Docker's `config.json` shape; `None` pulls anonymously.
    pub credentials: Option<PathBuf>,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback registries always are.
    pub insecure_registries: Vec<String>,
}

impl ImageStore {
    /// Pulls `reference` (`host/repo:tag` or `host/repo@sha256:…`) from its registry: picks
    /// the linux manifest for this machine's architecture out of an index, downloads the
    /// config and the layers the store does not hold yet, verifies each blob's digest before
    /// it enters the store, and tags the image with the reference (a digest-only reference
    /// leaves it findable by that digest).
    ///
    /// Holds the store's lock for the whole pull, so a concurrent import's garbage
    /// collection cannot remove blobs this pull has staged.
    pub async fn pull(&self, reference: &str, options: &PullOptions) -> Result<ImageSummary, ImageError> {
        let parsed = Reference::parse(reference)?;
        let auth = registry_auth(options.credentials.as_deref(), parsed.domain())?;
        let _lock = self.lock()?;
        let result = self.pull_locked(&parsed, &auth, options).await;
        if let Err(err) = self.collect_garbage() {
            tracing::warn!(%err, "image store garbage collection failed");
        }
        result
    }

    async fn pull_locked(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        options: &PullOptions,
    ) -> Result<ImageSummary, ImageError> {
        let remote = Remote::new(reference, auth.clone(), options);
        let (manifest_digest, manifest) = remote.manifest(self).await?;
        let not_manifest = |reason: &str| ImageError::Format {
            path: self.blobs.path(&manifest_digest),
            reason: format!("manifest {manifest_digest}: {reason}"),
        };
        let config = manifest.config.ok_or_else(|| not_manifest("no config"))?;
        let layers = manifest.layers.ok_or_else(|| not_manifest("no layers"))?;
        remote.blob(self, &config.digest, config.size).await?;
        let mut sized = Vec::with_capacity(layers.len());
        for layer in layers {
            let size = remote.blob(self, &layer.digest, layer.size).await?;
            sized.push((layer.digest, size));
        }
        // A tag names the image; a digest-only reference finds it through the manifest digest.
        let names = match reference.digest() {
            None => vec![reference.to_string()],
            Some(_) => Vec::new(),
        };
        let image = image_from_config(&self.blobs, names, Some(manifest_digest), config.digest, sized)?;
        for layer in &image.layers {
            self.unpack(&layer.digest, &layer.diff_id)?;
        }
        let mut summaries = self.record(vec![image])?;
        let mut summary = summaries.pop().ok_or_else(|| remote.error("no image recorded"))?;
        summary.reference.get_or_insert_with(|| reference.to_string());
        Ok(summary)
    }
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
        let actual = Digest::of(&bytes);
        if let Some(expected) = digest {
            if *expected != actual {
                return Err(ImageError::DigestMismatch {
                    digest: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if !store.blobs.contains(&actual) {
            let staged = store.blobs.staging_path();
            tokio::fs::write(&staged, &bytes).await.map_err(ImageError::io("writing", &staged))?;
            store.blobs.commit_staged(&staged, &actual)?;
        }
        let document = store.blobs.read_json(&actual, "manifest")?;
        Ok((actual, document))
    }

    /// Downloads the blob `digest` unless the store holds it, hashing it on the way to a
    /// staging file; it enters the store only if it hashes to `digest` and has `size` bytes.
    /// Returns its length.
    async fn blob(&self, store: &ImageStore, digest: &Digest, size: Option<u64>) -> Result<u64, ImageError> {
        let path = store.blobs.path(digest);
        if store.blobs.contains(digest) {
            let len = std::fs::metadata(&path).map_err(ImageError::io("reading", &path))?.len();
            return check_size(digest, size, len);
        }
        let mut stream = self
            .client
            .pull_blob_stream(&self.oci_reference(None), digest.as_str())
            .await
            .map_err(|err| self.remote_error(err))?
            .stream;
        let staged = store.blobs.staging_path();
        let mut file = tokio::fs::File::create(&staged).await.map_err(ImageError::io("creating", &staged))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| self.error(&format!("downloading blob {digest}: {err}")))?;
            len += chunk.len() as u64;
            if size.is_some_and(|size| len > size) {
                return Err(ImageError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size.unwrap_or_default(),
                    actual: len,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(ImageError::io("writing", &staged))?;
        }
        file.sync_all().await.map_err(ImageError::io("syncing", &staged))?;
        let actual = Digest::from_hasher(hasher);
        if actual != *digest {
            // The staging file goes with the garbage collection that ends every pull.
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        check_size(digest, size, len)?;
        store.blobs.commit_staged(&staged, digest)?;
        Ok(len)
    }

    fn error(&self, reason: &str) -> ImageError {
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

#[derive(Deserialize)]
struct CredentialsEntry {
    auth: Option<String>,
}

/// Basic credentials for `domain` from a Docker `config.json`-shaped file, or anonymous
/// when there is no file or no entry for the registry.
fn registry_auth(path: Option<&Path>, domain: &str) -> Result<RegistryAuth, ImageError> {
    let Some(path) = path else { return Ok(RegistryAuth::Anonymous) };
    let bad = |reason: String| ImageError::Credentials { path: path.to_path_buf(), reason };
    let data = read_limited(path, JSON_LIMIT, "credentials file")?;
    let file: CredentialsFile = serde_json::from_slice(&data).map_err(|err| bad(err.to_string()))?;
    let keys = [domain.to_owned(), format!("https://{domain}"), format!("http://{domain}")];
    let Some(entry) = keys.iter().find_map(|key| file.auths.get(key)) else {
        return Ok(RegistryAuth::Anonymous);
    };
    let Some(encoded) = &entry.auth else { return Ok(RegistryAuth::Anonymous) };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| bad(format!("auths.{domain}.auth is not base64: {err}")))?;
    let text = String::from_utf8(decoded).map_err(|_| bad(format!("auths.{domain}.auth is not utf-8")))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| bad(format!("auths.{domain}.auth is not base64 of user:password")))?;
    Ok(RegistryAuth::Basic(user.to_owned(), pass.to_owned()))
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
        let auth = registry_auth(Some(&path), "127.0.0.1:5000").expect("auth");
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "s3cret:x"));
        let other = registry_auth(Some(&path), "registry.example").expect("auth");
        assert!(matches!(other, RegistryAuth::Anonymous));
        std::fs::write(&path, r#"{"auths": {"127.0.0.1:5000": {"auth": "%%%"}}}"#).expect("write");
        let err = registry_auth(Some(&path), "127.0.0.1:5000").expect_err("bad base64");
        assert!(err.to_string().contains("is not base64"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
