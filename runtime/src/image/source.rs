//! The thing being imported: a directory, or a (possibly gzipped) tar read once into the blob store.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use serde::de::DeserializeOwned;

use super::blob::{read_json, Blobs, Digest, JSON_LIMIT};
use super::ImageError;

/// How many symlinks we follow inside an archive before calling it a loop.
const MAX_LINK_HOPS: usize = 16;

/// Files of an import source, addressed by `/`-separated paths relative to its root.
pub(crate) enum Source {
    /// An unpacked directory; its files are copied into the store on demand.
    Dir(PathBuf),
    /// A tar archive whose regular files have all been copied into the store already.
    Tar { path: PathBuf, entries: BTreeMap<String, TarItem> },
}

/// What a path inside a tar archive is.
#[derive(Debug)]
pub(crate) enum TarItem {
    /// A regular file, now stored as a blob.
    File { digest: Digest, size: u64 },
    /// A symlink or hard link to another archive path (already normalized).
    Link(String),
}

impl Source {
    /// Opens `path`: a directory is used in place; a file is read as a tar archive, gzip or
    /// plain, and every regular file in it is ingested into `blobs`.
    ///
    /// Reading the archive once, straight into the store, avoids unpacking a multi-gigabyte
    /// `docker save` to a scratch directory first; files the import does not reference are
    /// garbage-collected afterwards.
    pub(crate) fn open(path: &Path, blobs: &Blobs) -> Result<Source, ImageError> {
        let meta = std::fs::metadata(path).map_err(ImageError::io("reading", path))?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let file = File::open(path).map_err(ImageError::io("opening", path))?;
        let mut reader = BufReader::new(file);
        let head = reader.fill_buf().map_err(ImageError::io("reading", path))?;
        let reader: Box<dyn Read> =
            if head.starts_with(&[0x1f, 0x8b]) { Box::new(GzDecoder::new(reader)) } else { Box::new(reader) };
        let mut archive = tar::Archive::new(reader);
        let mut entries = BTreeMap::new();
        let read_err = ImageError::io("reading archive", path);
        for entry in archive.entries().map_err(read_err)? {
            let entry = entry.map_err(ImageError::io("reading archive", path))?;
            let name = entry.path().map_err(ImageError::io("reading archive", path))?;
            let Some(name) = normalize(Path::new(""), &name) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let item = if kind.is_file() || kind == tar::EntryType::Continuous {
                let (digest, size) = blobs.ingest(entry)?;
                TarItem::File { digest, size }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Ok(Some(target)) = entry.link_name() else {
                    continue;
                };
                // Symlinks are relative to their directory, hard links to the archive root.
                let base = match (kind.is_symlink(), Path::new(&name).parent()) {
                    (true, Some(parent)) => parent.to_path_buf(),
                    _ => PathBuf::new(),
                };
                match normalize(&base, &target) {
                    Some(target) => TarItem::Link(target),
                    None => continue,
                }
            } else {
                continue;
            };
            entries.insert(name, item);
        }
        Ok(Source::Tar { path: path.to_path_buf(), entries })
    }

    /// The path of the source itself, for messages.
    pub(crate) fn path(&self) -> &Path {
        match self {
            Source::Dir(path) | Source::Tar { path, .. } => path,
        }
    }

    /// Whether the source holds a file at `rel`.
    pub(crate) fn exists(&self, rel: &str) -> bool {
        match self {
            Source::Dir(root) => safe_join(root, rel).is_some_and(|p| p.is_file()),
            Source::Tar { .. } => self.tar_file(rel).is_some(),
        }
    }

    /// Reads and decodes the JSON file at `rel`, at most [`JSON_LIMIT`] bytes.
    pub(crate) fn read_json<T: DeserializeOwned>(&self, rel: &str, blobs: &Blobs) -> Result<T, ImageError> {
        match self {
            Source::Dir(root) => read_json(&self.existing(root, rel)?, rel),
            Source::Tar { path, .. } => match self.tar_file(rel) {
                Some((_, size)) if size > JSON_LIMIT => Err(ImageError::TooLarge {
                    path: path.join(rel),
                    what: rel.to_owned(),
                    limit: JSON_LIMIT,
                }),
                Some((digest, _)) => read_json(&blobs.path(digest), rel),
                None => Err(self.missing(rel)),
            },
        }
    }

    /// Makes sure the file at `rel` is in the blob store and returns its digest and size.
    pub(crate) fn ingest(&self, rel: &str, blobs: &Blobs) -> Result<(Digest, u64), ImageError> {
        match self {
            Source::Dir(root) => {
                let path = self.existing(root, rel)?;
                let file = File::open(&path).map_err(ImageError::io("opening", &path))?;
                blobs.ingest(file)
            }
            Source::Tar { .. } => match self.tar_file(rel) {
                Some((digest, size)) => Ok((digest.clone(), size)),
                None => Err(self.missing(rel)),
            },
        }
    }

    /// Makes sure the OCI blob `digest` is in the store, verifying its content and size.
    pub(crate) fn ingest_blob(
        &self,
        digest: &Digest,
        size: Option<u64>,
        blobs: &Blobs,
    ) -> Result<u64, ImageError> {
        let rel = format!("blobs/sha256/{}", digest.hex());
        let actual_size = match self {
            // A blob we already hold was verified when it was stored; skip the copy.
            Source::Dir(_) if blobs.contains(digest) => blob_len(blobs, digest)?,
            _ => {
                let (actual, len) = self.ingest(&rel, blobs)?;
                if actual != *digest {
                    return Err(ImageError::DigestMismatch {
                        digest: digest.to_string(),
                        actual: actual.to_string(),
                    });
                }
                len
            }
        };
        match size {
            Some(expected) if expected != actual_size => {
                Err(ImageError::SizeMismatch { digest: digest.to_string(), expected, actual: actual_size })
            }
            _ => Ok(actual_size),
        }
    }

    fn existing(&self, root: &Path, rel: &str) -> Result<PathBuf, ImageError> {
        safe_join(root, rel).filter(|path| path.is_file()).ok_or_else(|| self.missing(rel))
    }

    fn missing(&self, rel: &str) -> ImageError {
        ImageError::Missing { source_path: self.path().to_path_buf(), what: rel.to_owned() }
    }

    /// Follows links from `rel` to a stored regular file.
    fn tar_file(&self, rel: &str) -> Option<(&Digest, u64)> {
        let Source::Tar { entries, .. } = self else {
            return None;
        };
        let mut name = normalize(Path::new(""), Path::new(rel))?;
        for _ in 0..MAX_LINK_HOPS {
            match entries.get(&name)? {
                TarItem::File { digest, size } => return Some((digest, *size)),
                TarItem::Link(target) => name = target.clone(),
            }
        }
        None
    }
}

fn blob_len(blobs: &Blobs, digest: &Digest) -> Result<u64, ImageError> {
    let path = blobs.path(digest);
    Ok(std::fs::metadata(&path).map_err(ImageError::io("reading", &path))?.len())
}

/// Joins a relative path from an untrusted manifest onto `root`, refusing `..` and absolute
/// paths.
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)).then(|| root.join(rel))
}

/// Resolves `path` against `base` lexically into a `/`-separated archive path.
///
/// Leading `/` means the archive root; `None` if the result would leave the archive or is
/// the root itself.
fn normalize(base: &Path, path: &Path) -> Option<String> {
    let mut parts: Vec<String> = if path.is_absolute() {
        Vec::new()
    } else {
        base.components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_archive_paths() {
        let n = |base: &str, path: &str| normalize(Path::new(base), Path::new(path));
        assert_eq!(n("", "./index.json").as_deref(), Some("index.json"));
        assert_eq!(n("", "/blobs//sha256/x").as_deref(), Some("blobs/sha256/x"));
        assert_eq!(n("abc", "../def/layer.tar").as_deref(), Some("def/layer.tar"));
        assert_eq!(n("", "../x"), None);
        assert_eq!(n("", "."), None);
    }

    #[test]
    fn safe_join_refuses_escapes() {
        assert!(safe_join(Path::new("/r"), "a/b.json").is_some());
        assert!(safe_join(Path::new("/r"), "../etc/passwd").is_none());
        assert!(safe_join(Path::new("/r"), "/etc/passwd").is_none());
    }
}
