//! Reads images out of an OCI image layout or a `docker save` archive.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::blob::{Blobs, Digest};
use super::reference::Reference;
use super::source::Source;
use super::{ImageConfig, ImageError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// An image found in the import source, its blobs already verified and in the store.
#[derive(Debug)]
pub(crate) struct FoundImage {
    /// Normalized references to tag it with; empty if it is importable by id only.
    pub names: Vec<String>,
    /// Digest of the manifest; `None` for legacy `docker save` archives, which have none.
    pub manifest: Option<Digest>,
    pub config: Digest,
    pub layers: Vec<FoundLayer>,
    pub created: Option<String>,
    pub image: ImageConfig,
}

#[derive(Debug)]
pub(crate) struct FoundLayer {
    /// Digest of the blob as stored, possibly compressed.
    pub digest: Digest,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    pub size: u64,
}

/// Reads every image in `source`: `manifest.json` (docker save) wins over `index.json` (OCI)
/// because only it carries full repository tags in archives that have both.
pub(crate) fn read_images(source: &Source, blobs: &Blobs) -> Result<Vec<FoundImage>, ImageError> {
    if source.exists("manifest.json") {
        read_docker_save(source, blobs)
    } else if source.exists("index.json") {
        read_oci_layout(source, blobs)
    } else {
        Err(ImageError::Format {
            path: source.path().to_path_buf(),
            reason: "not an oci image layout or docker save archive: \
                     neither index.json nor manifest.json found"
                .to_owned(),
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub digest: Digest,
    pub size: Option<u64>,
    pub platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub(crate) struct Platform {
    os: String,
    architecture: String,
}

/// An image index or an image manifest; which one is told by the fields present.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestOrIndex {
    pub media_type: Option<String>,
    pub manifests: Option<Vec<Descriptor>>,
    pub config: Option<Descriptor>,
    pub layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct ConfigFile {
    created: Option<String>,
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The host platform in OCI terms, e.g. `linux/amd64`.
pub(crate) fn host_platform() -> String {
    format!("linux/{}", host_arch())
}

/// `std::env::consts::ARCH` mapped to the OCI (Go) architecture name.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

pub(crate) fn is_host(platform: &Platform) -> bool {
    platform.os == "linux" && platform.architecture == host_arch()
}

fn read_oci_layout(source: &Source, blobs: &Blobs) -> Result<Vec<FoundImage>, ImageError> {
    let index: ManifestOrIndex = source.read_json("index.json", blobs)?;
    let mut images = Vec::new();
    for descriptor in index.manifests.unwrap_or_default() {
        // Manifests for other platforms (and attestations, `unknown/unknown`) are skipped.
        if descriptor.platform.as_ref().is_some_and(|p| !is_host(p)) {
            continue;
        }
        let names = oci_names(&descriptor.annotations);
        let manifest = read_manifest_for_host(source, blobs, &descriptor)?;
        images.push(read_oci_image(source, blobs, names, manifest)?);
    }
    if images.is_empty() {
        return Err(ImageError::Format {
            path: source.path().join("index.json"),
            reason: format!("no image manifest for {}", host_platform()),
        });
    }
    Ok(images)
}

/// Reads the manifest `descriptor` points at, descending through an image index to the
/// manifest for the host platform.
fn read_manifest_for_host(
    source: &Source,
    blobs: &Blobs,
    descriptor: &Descriptor,
) -> Result<(Digest, ManifestOrIndex), ImageError> {
    source.ingest_blob(&descriptor.digest, descriptor.size, blobs)?;
    let document: ManifestOrIndex = blobs.read_json(&descriptor.digest, "manifest")?;
    let Some(manifests) = &document.manifests else {
        return Ok((descriptor.digest.clone(), document));
    };
    let chosen = manifests.iter().find(|m| m.platform.as_ref().is_some_and(is_host)).ok_or_else(|| {
        ImageError::NoPlatform { digest: descriptor.digest.to_string(), platform: host_platform() }
    })?;
    source.ingest_blob(&chosen.digest, chosen.size, blobs)?;
    let manifest: ManifestOrIndex = blobs.read_json(&chosen.digest, "manifest")?;
    if manifest.manifests.is_some() {
        return Err(ImageError::Format {
            path: blobs.path(&chosen.digest),
            reason: "nested image index inside an image index is not supported".to_owned(),
        });
    }
    Ok((chosen.digest.clone(), manifest))
}

/// The reference an OCI layout gives an image: `ref.name` if it is a full reference, else
/// `io.containerd.image.name`; a bare tag in `ref.name` names no repository, so it alone
/// leaves the image importable by id only (as containerd does without `--base-name`).
fn oci_names(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let full_ref = annotations.get(REF_NAME).filter(|name| name.contains(['/', ':', '@']));
    let name = full_ref.or_else(|| annotations.get(CONTAINERD_NAME));
    match name.map(|name| Reference::parse(name)) {
        Some(Ok(reference)) => vec![reference.to_string()],
        Some(Err(err)) => {
            tracing::warn!(%err, "ignoring image name annotation");
            Vec::new()
        }
        None => {
            if let Some(tag) = annotations.get(REF_NAME) {
                tracing::warn!(tag, "image ref.name is a bare tag without repository; importing by id only");
            }
            Vec::new()
        }
    }
}

fn read_oci_image(
    source: &Source,
    blobs: &Blobs,
    names: Vec<String>,
    (manifest_digest, manifest): (Digest, ManifestOrIndex),
) -> Result<FoundImage, ImageError> {
    let not_manifest = |reason: &str| ImageError::Format {
        path: blobs.path(&manifest_digest),
        reason: format!("manifest {manifest_digest}: {reason}"),
    };
    if let Some(media_type) = &manifest.media_type {
        if !media_type.ends_with("manifest.v1+json") && !media_type.ends_with("manifest.v2+json") {
            return Err(not_manifest(&format!("unsupported media type {media_type}")));
        }
    }
    let config = manifest.config.ok_or_else(|| not_manifest("no config"))?;
    let layers = manifest.layers.ok_or_else(|| not_manifest("no layers"))?;
    source.ingest_blob(&config.digest, config.size, blobs)?;
    let mut sizes = Vec::with_capacity(layers.len());
    for layer in &layers {
        sizes.push(source.ingest_blob(&layer.digest, layer.size, blobs)?);
    }
    let layers = layers.into_iter().map(|l| l.digest).zip(sizes).collect();
    image_from_config(blobs, names, Some(manifest_digest), config.digest, layers)
}

fn read_docker_save(source: &Source, blobs: &Blobs) -> Result<Vec<FoundImage>, ImageError> {
    let entries: Vec<DockerManifestEntry> = source.read_json("manifest.json", blobs)?;
    let mut images = Vec::with_capacity(entries.len());
    for entry in entries {
        let (config, _) = source.ingest(&entry.config, blobs)?;
        let mut layers = Vec::with_capacity(entry.layers.len());
        for layer in &entry.layers {
            layers.push(source.ingest(layer, blobs)?);
        }
        let mut names = Vec::new();
        for tag in entry.repo_tags.unwrap_or_default() {
            names.push(Reference::parse(&tag)?.to_string());
        }
        images.push(image_from_config(blobs, names, None, config, layers)?);
    }
    Ok(images)
}

pub(crate) fn image_from_config(
    blobs: &Blobs,
    names: Vec<String>,
    manifest: Option<Digest>,
    config: Digest,
    layers: Vec<(Digest, u64)>,
) -> Result<FoundImage, ImageError> {
    let file: ConfigFile = blobs.read_json(&config, "image config")?;
    if file.rootfs.diff_ids.len() != layers.len() {
        return Err(ImageError::Format {
            path: blobs.path(&config),
            reason: format!(
                "image config {config} lists {} diff ids but the manifest has {} layers",
                file.rootfs.diff_ids.len(),
                layers.len()
            ),
        });
    }
    let run = file.config.unwrap_or_default();
    let image = ImageConfig {
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        working_dir: run.working_dir.filter(|dir| !dir.is_empty()),
        user: run.user.filter(|user| !user.is_empty()),
    };
    let layers = layers
        .into_iter()
        .zip(file.rootfs.diff_ids)
        .map(|((digest, size), diff_id)| FoundLayer { digest, diff_id, size })
        .collect();
    Ok(FoundImage { names, manifest, config, layers, created: file.created, image })
}
