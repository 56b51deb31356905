//! Image blobs between peers: what a node advertises in gossip about the blobs it holds,
//! and the messages of a blob stream, on which a node fetches a blob (or the manifest a
//! peer holds for a tag) from a peer. Pure types, encodings and limits; the stream I/O and
//! the store are the node's and the runtime's.
//!
//! **Advertisement** (gossip keys `blobs.0`, `blobs.1`, …): the first [`PREFIX_HEX`] hex
//! digits of each sha256 digest the node holds *verified*, space-separated, and the same
//! prefixed with `~` for a blob it is fetching right now. A prefix is a hint, not a
//! promise: a collision or a stale entry costs one refused fetch, because the fetcher
//! verifies every blob against its full digest before using it.
//!
//! **Blob stream** (one exchange per stream): the asker sends one [`BlobRequest`] and
//! finishes its side. For [`BlobRequest::Blob`] the holder answers a [`BlobAnswer`] frame
//! and, after [`BlobAnswer::Blob`], the blob's raw bytes from the requested offset to its
//! end. The holder hashes the whole blob while it sends and resets the stream instead of
//! finishing it if the content no longer matches its digest, so it never serves a blob it
//! has not verified, and the asker verifies again before the blob enters its store.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};

/// Hex digits of a digest's prefix in an advertisement: 48 bits, so a node holding a few
/// thousand blobs advertises them in tens of KB and a collision is one in 10^14 per pair.
pub const PREFIX_HEX: usize = 12;
/// The most blobs a node advertises (held and fetching); the rest are still served when
/// asked, but no one learns of them from gossip.
pub const MAX_ADVERTISED: usize = 4096;
/// Bytes of one advertisement key's value.
pub const CHUNK_BYTES: usize = 12 * 1024;
/// Gossip key prefix of the advertisement.
pub const KEY_PREFIX: &str = "blobs.";

/// The largest request a node reads: a tag, a digest string and an offset.
pub const MAX_REQUEST_BYTES: usize = 1024;
/// The largest manifest a node sends or accepts in a [`BlobAnswer::Manifest`].
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;
/// The largest answer frame a node reads.
pub const MAX_ANSWER_BYTES: usize = MAX_MANIFEST_BYTES + 1024;
/// The longest image reference a request may carry.
pub const MAX_REFERENCE_BYTES: usize = 512;

/// The gossip key of advertisement chunk `i`.
pub fn key(i: usize) -> String {
    format!("{KEY_PREFIX}{i}")
}

/// What a node advertises: the prefixes of blobs it holds and of blobs it is fetching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advert {
    pub held: BTreeSet<u64>,
    pub fetching: BTreeSet<u64>,
}

/// The advertised prefix of a sha256 digest (`sha256:<hex>` or bare hex), as a number;
/// `None` for anything that is not at least [`PREFIX_HEX`] lowercase hex digits.
pub fn prefix(digest: &str) -> Option<u64> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let head = hex.get(..PREFIX_HEX)?;
    if !head.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(head, 16).ok()
}

impl Advert {
    /// Builds the advertisement of `held` and `fetching` digests, at most
    /// [`MAX_ADVERTISED`] in all (fetching ones first: peers wait on them).
    pub fn new<'a>(
        held: impl IntoIterator<Item = &'a str>,
        fetching: impl IntoIterator<Item = &'a str>,
    ) -> Advert {
        let mut advert = Advert::default();
        for p in fetching.into_iter().filter_map(prefix).take(MAX_ADVERTISED) {
            advert.fetching.insert(p);
        }
        let room = MAX_ADVERTISED - advert.fetching.len();
        for p in held.into_iter().filter_map(prefix).take(room) {
            advert.held.insert(p);
        }
        // A blob that is both (fetched again after a failed verification) counts as fetching.
        advert.held.retain(|p| !advert.fetching.contains(p));
        advert
    }

    /// Whether the node holds the blob `digest`.
    pub fn holds(&self, digest: &str) -> bool {
        prefix(digest).is_some_and(|p| self.held.contains(&p))
    }

    /// Whether the node is fetching the blob `digest`.
    pub fn fetches(&self, digest: &str) -> bool {
        prefix(digest).is_some_and(|p| self.fetching.contains(&p))
    }

    /// The key values (`blobs.0` first), each at most [`CHUNK_BYTES`]. Never empty.
    pub fn encode(&self) -> Vec<String> {
        let words = self
            .fetching
            .iter()
            .map(|p| format!("~{p:0w$x}", w = PREFIX_HEX))
            .chain(self.held.iter().map(|p| format!("{p:0w$x}", w = PREFIX_HEX)));
        let mut chunks = vec![String::new()];
        for word in words {
            let last = chunks.last_mut().expect("never empty");
            if last.len() + word.len() + 1 > CHUNK_BYTES {
                chunks.push(word);
            } else {
                if !last.is_empty() {
                    last.push(' ');
                }
                last.push_str(&word);
            }
        }
        chunks
    }

    /// The advertisement in a node's gossip keys; malformed words are skipped and at most
    /// [`MAX_ADVERTISED`] are read, whatever a peer publishes.
    pub fn decode(keys: &BTreeMap<String, String>) -> Advert {
        let mut advert = Advert::default();
        let chunks = keys.range(KEY_PREFIX.to_owned()..).take_while(|(k, _)| k.starts_with(KEY_PREFIX));
        let words = chunks.flat_map(|(_, chunk)| chunk.split(' ')).take(MAX_ADVERTISED);
        for word in words {
            let (set, hex) = match word.strip_prefix('~') {
                Some(hex) => (&mut advert.fetching, hex),
                None => (&mut advert.held, word),
            };
            if hex.len() == PREFIX_HEX {
                if let Some(p) = prefix(hex) {
                    set.insert(p);
                }
            }
        }
        advert
    }
}

/// What a node asks a peer for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The blob `digest` (`sha256:<hex>`), from byte `offset` on (a resumed fetch).
    Blob { digest: String, offset: u64 },
    /// The image manifest the peer's store records for `reference` (a tag), for a pull
    /// whose registry cannot be reached or must not be used. The asker trusts the peer, a
    /// member of its cluster, for which manifest the tag names; every blob the manifest
    /// lists is then verified by digest.
    Manifest { reference: String },
}

impl BlobRequest {
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes, MAX_REQUEST_BYTES)
    }

    /// Refuses requests no honest peer sends (a malformed digest, a huge reference).
    pub fn check(&self) -> Result<(), String> {
        match self {
            BlobRequest::Blob { digest, .. } => {
                let hex = digest.strip_prefix("sha256:").unwrap_or("");
                if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    Ok(())
                } else {
                    Err(format!("not a sha256 digest: {digest:?}"))
                }
            }
            BlobRequest::Manifest { reference } if reference.len() > MAX_REFERENCE_BYTES => {
                Err(format!("reference of {} bytes", reference.len()))
            }
            BlobRequest::Manifest { .. } => Ok(()),
        }
    }
}

/// A holder's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobAnswer {
    /// The blob is `size` bytes in all; its bytes from the requested offset follow.
    Blob { size: u64 },
    /// The manifest's bytes (at most [`MAX_MANIFEST_BYTES`]).
    Manifest { bytes: Vec<u8> },
    /// The peer holds no such blob or no image under that reference.
    NotFound,
    /// The peer serves as many fetches as it will at once; ask another or later.
    Busy,
}

impl BlobAnswer {
    /// Refuses answers that contradict the request or the limits.
    pub fn check(self, offset: u64) -> Result<BlobAnswer, String> {
        match &self {
            BlobAnswer::Blob { size } if *size < offset => {
                Err(format!("a blob of {size} bytes cannot be sent from byte {offset}"))
            }
            BlobAnswer::Manifest { bytes } if bytes.len() > MAX_MANIFEST_BYTES => {
                Err(format!("a manifest of {} bytes is over the limit", bytes.len()))
            }
            _ => Ok(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(fill: char) -> String {
        format!("sha256:{}", fill.to_string().repeat(64))
    }

    #[test]
    fn advert_round_trips_and_marks_fetching() {
        let held = [digest('a'), digest('b')];
        let fetching = [digest('c')];
        let advert = Advert::new(held.iter().map(String::as_str), fetching.iter().map(String::as_str));
        let keys: BTreeMap<String, String> =
            advert.encode().into_iter().enumerate().map(|(i, c)| (key(i), c)).collect();
        assert_eq!(keys[&key(0)], "~cccccccccccc aaaaaaaaaaaa bbbbbbbbbbbb");
        let back = Advert::decode(&keys);
        assert_eq!(back, advert);
        assert!(back.holds(&digest('a')) && !back.holds(&digest('c')));
        assert!(back.fetches(&digest('c')) && !back.fetches(&digest('a')));
    }

    #[test]
    fn many_blobs_split_into_chunks_and_stop_at_the_cap() {
        let digests: Vec<String> =
            (0..MAX_ADVERTISED + 10).map(|i| format!("sha256:{i:012x}{}", "0".repeat(52))).collect();
        let advert = Advert::new(digests.iter().map(String::as_str), []);
        assert_eq!(advert.held.len(), MAX_ADVERTISED);
        let chunks = advert.encode();
        assert!(chunks.len() > 1 && chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        let keys = chunks.into_iter().enumerate().map(|(i, c)| (key(i), c)).collect();
        assert_eq!(Advert::decode(&keys).held.len(), MAX_ADVERTISED);
    }

    #[test]
    fn garbage_in_a_peers_advert_is_skipped() {
        let keys = BTreeMap::from([
            (key(0), "../etc/passwd ~zz ABCDEFABCDEF 0123456789ab ~ 0123".to_owned()),
            ("claims.0".to_owned(), "aaaaaaaaaaaa".to_owned()),
        ]);
        let advert = Advert::decode(&keys);
        assert_eq!(advert.held.into_iter().collect::<Vec<_>>(), vec![0x0123456789ab]);
        assert!(advert.fetching.is_empty());
    }

    #[test]
    fn requests_and_answers_are_checked() {
        let ok = BlobRequest::Blob { digest: digest('a'), offset: 0 };
        assert!(ok.check().is_ok());
        let bytes = codec::encode(&ok).expect("encodes");
        assert_eq!(BlobRequest::decode(&bytes).ok(), Some(ok));
        for bad in [
            "sha256:../../x",
            "sha512:aa",
            "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(BlobRequest::Blob { digest: bad.to_owned(), offset: 0 }.check().is_err(), "{bad}");
        }
        let long = BlobRequest::Manifest { reference: "r".repeat(MAX_REFERENCE_BYTES + 1) };
        assert!(long.check().is_err());
        assert!(BlobRequest::decode(&vec![7u8; MAX_REQUEST_BYTES + 1]).is_err());
        assert!(BlobAnswer::Blob { size: 10 }.check(11).is_err());
        assert!(BlobAnswer::Blob { size: 10 }.check(10).is_ok());
        assert!(BlobAnswer::Manifest { bytes: vec![0; MAX_MANIFEST_BYTES + 1] }.check(0).is_err());
    }
}
