//! The one module that turns peer messages into bytes and back: bincode 2 with a size limit,
//! plus u32 big-endian length-prefixed framing. No I/O: callers feed and take byte buffers.
//!
//! Bytes from a peer are data, not trust. Without a limit a 9-byte message makes bincode
//! try to allocate 1 TB and the process aborts (NOTES.md), so every decode runs with
//! `with_limit::<MAX_MESSAGE>()`, every frame prefix is checked against a cap before anything
//! is allocated, and trailing bytes are an error (bincode would accept them silently).
//! Swapping the encoding means changing only this file.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// The largest message (frame payload) a peer may send or receive: 1 MiB.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Bytes of the length prefix in front of each frame.
pub const PREFIX_LEN: usize = 4;

/// bincode's standard configuration (varint integers, little-endian) with a decode limit.
/// The frame prefix is separate and big-endian.
type Config = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE>>;

fn config() -> Config {
    config::standard().with_limit::<MAX_MESSAGE>()
}

/// Errors of encoding, decoding and framing. None of them changes any state except
/// [`CodecError::FrameTooLarge`] from a [`FrameDecoder`], which poisons that decoder.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The message could not be encoded; nothing was produced.
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid message (truncated, malformed or over the limit); nothing
    /// was decoded.
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A message decoded but bytes were left over; the message is rejected.
    #[error("malformed message: {trailing} trailing bytes")]
    TrailingBytes { trailing: usize },
    /// A message or frame is larger than allowed; nothing was produced or decoded. A
    /// [`FrameDecoder`] that saw such a prefix stays failed: the stream must be closed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
}

/// Encodes a message. Fails when the encoding would be larger than [`MAX_MESSAGE`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())?;
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::FrameTooLarge { len: bytes.len(), max: MAX_MESSAGE });
    }
    Ok(bytes)
}

/// The encoded size of a value, for chunking messages under a byte cap.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    // Encoding into a sink only counts bytes; no buffer is allocated.
    let mut sink = SizeWriter(0);
    bincode::serde::encode_into_writer(value, &mut sink, config())?;
    Ok(sink.0)
}

struct SizeWriter(usize);

impl bincode::enc::write::Writer for SizeWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0 += bytes.len();
        Ok(())
    }
}

/// Decodes exactly one message from `bytes`, which must be at most `max` bytes long
/// (and never more than [`MAX_MESSAGE`] are considered). Trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let max = max.min(MAX_MESSAGE);
    if bytes.len() > max {
        return Err(CodecError::FrameTooLarge { len: bytes.len(), max });
    }
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes { trailing: bytes.len() - read });
    }
    Ok(value)
}

/// Prefixes `payload` with its length (u32 big-endian). Fails when it exceeds `max`.
pub fn frame(payload: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let len = checked_len(payload.len(), max)?;
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Encodes a message and frames it: what goes on a stream.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    frame(&encode(value)?, MAX_MESSAGE)
}

/// Splits one frame off the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// payload and the number of bytes consumed. The prefix is checked before anything else.
pub fn split_frame(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, CodecError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix) as usize;
    let max = max.min(MAX_MESSAGE);
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    let end = PREFIX_LEN + len;
    Ok(buf.get(PREFIX_LEN..end).map(|payload| (payload, end)))
}

fn checked_len(len: usize, max: usize) -> Result<u32, CodecError> {
    let max = max.min(MAX_MESSAGE);
    match u32::try_from(len) {
        Ok(l) if len <= max => Ok(l),
        _ => Err(CodecError::FrameTooLarge { len, max }),
    }
}

/// Accumulates bytes from a stream and yields whole frames; no I/O.
///
/// Call order: [`FrameDecoder::push`] whatever arrived, then [`FrameDecoder::next_frame`]
/// until it returns `Ok(None)`. Memory stays below `max` plus one pushed chunk, because a
/// prefix over `max` fails before its payload is buffered. After an error the decoder stays
/// failed and the stream must be closed.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
    failed: Option<usize>,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max: max.min(MAX_MESSAGE), failed: None }
    }

    /// Appends bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete frame's payload, or `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if let Some(len) = self.failed {
            return Err(CodecError::FrameTooLarge { len, max: self.max });
        }
        match split_frame(&self.buf, self.max) {
            Ok(Some((payload, used))) => {
                let payload = payload.to_vec();
                self.buf.drain(..used);
                Ok(Some(payload))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                if let CodecError::FrameTooLarge { len, .. } = e {
                    self.failed = Some(len);
                }
                self.buf = Vec::new();
                Err(e)
            }
        }
    }

    /// Bytes buffered but not yet yielded as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests;
