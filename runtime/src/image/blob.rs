//! Digests and the content-addressed blob directory `blobs/sha256/<hex>`.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::ImageError;

/// Largest manifest, index or config we read; they are small JSON documents in practice.
pub(crate) const JSON_LIMIT: u64 = 4 << 20;

/// A validated `sha256:<64 lowercase hex>` content digest.
///
/// Validation matters beyond tidiness: the hex part becomes a file name, so a digest from
/// a hostile manifest must never carry `/` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused.
    pub fn parse(digest: &str) -> Result<Digest, ImageError> {
        match digest.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Digest(digest.to_owned())),
            _ => Err(ImageError::InvalidDigest { digest: digest.to_owned() }),
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Digest {
        let hex: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
        Digest(format!("sha256:{hex}"))
    }

    /// The 64 hex digits after `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Computes a [`Digest`] over data fed in pieces (a blob streamed to or from a peer).
#[derive(Default)]
pub struct DigestHasher(Sha256);

impl DigestHasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.0)
    }
}

/// Whether `hex` is exactly 64 lowercase hex digits.
pub(crate) fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TryFrom<String> for Digest {
    type Error = ImageError;
    fn try_from(value: String) -> Result<Digest, ImageError> {
        Digest::parse(&value)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reader that hashes and counts everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader { inner, hasher: Sha256::new(), len: 0 }
    }

    /// Reads whatever is left, then returns the digest and length of everything read.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.len))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Reads a whole file of at most `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).map_err(ImageError::io("opening", path))?;
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data).map_err(ImageError::io("reading", path))?;
    if data.len() as u64 > limit {
        return Err(ImageError::TooLarge { path: path.to_path_buf(), what: what.to_owned(), limit });
    }
    Ok(data)
}

/// Reads and decodes a JSON file of at most [`JSON_LIMIT`] bytes.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, ImageError> {
    let data = read_limited(path, JSON_LIMIT, what)?;
    serde_json::from_slice(&data).map_err(|source| ImageError::Json {
        path: path.to_path_buf(),
        what: what.to_owned(),
        source,
    })
}

/// The blob directory of a store; every file in it is named by the digest of its content.
#[derive(Debug, Clone)]
pub(crate) struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    /// Blobs live in `dir`; partial writes are staged in `tmp` on the same file system.
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf) -> Blobs {
        Blobs { dir, tmp }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Copies `reader` into the store, returning the digest and length of its content.
    ///
    /// The content is hashed while it is written to a temporary file, which is renamed to
    /// its digest only when complete, so a blob file is never partial or mislabelled.
    pub(crate) fn ingest(&self, reader: impl Read) -> Result<(Digest, u64), ImageError> {
        let tmp = self.tmp.join(format!("blob-{}-{}", std::process::id(), unique_suffix()));
        let result = self.ingest_via(&tmp, reader);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn ingest_via(&self, tmp: &Path, reader: impl Read) -> Result<(Digest, u64), ImageError> {
        let mut file = File::create(tmp).map_err(ImageError::io("creating", tmp))?;
        let mut reader = HashingReader::new(reader);
        io::copy(&mut reader, &mut file).map_err(ImageError::io("writing", tmp))?;
        file.flush().map_err(ImageError::io("writing", tmp))?;
        let (digest, len) = reader.finish().map_err(ImageError::io("writing", tmp))?;
        let dest = self.path(&digest);
        if dest.is_file() {
            fs::remove_file(tmp).map_err(ImageError::io("removing", tmp))?;
        } else {
            file.sync_all().map_err(ImageError::io("syncing", tmp))?;
            fs::rename(tmp, &dest).map_err(ImageError::io("renaming into", &dest))?;
        }
        Ok((digest, len))
    }

    /// A fresh path in the staging directory for a blob being written elsewhere (a pull).
    pub(crate) fn staging_path(&self) -> PathBuf {
        self.tmp.join(format!("pull-{}-{}", std::process::id(), unique_suffix()))
    }

    /// Moves a staged file whose content the caller has verified to hash to `digest` into
    /// the store under that digest.
    pub(crate) fn commit_staged(&self, staged: &Path, digest: &Digest) -> Result<(), ImageError> {
        let dest = self.path(digest);
        fs::rename(staged, &dest).map_err(ImageError::io("renaming into", &dest))
    }

    /// Reads a JSON blob of at most [`JSON_LIMIT`] bytes.
    pub(crate) fn read_json<T: DeserializeOwned>(
        &self,
        digest: &Digest,
        what: &str,
    ) -> Result<T, ImageError> {
        read_json(&self.path(digest), &format!("{what} {digest}"))
    }
}

/// A suffix that differs between calls within this process, for temporary file names.
pub(crate) fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_refuses_paths_and_other_algorithms() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(Digest::parse(&good).map(|d| d.hex().len()).ok(), Some(64));
        for bad in [
            "sha256:../../etc/passwd".to_owned(),
            format!("sha512:{}", "ab".repeat(32)),
            format!("sha256:{}", "AB".repeat(32)),
            "sha256:".to_owned(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn digest_of_empty_input() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
